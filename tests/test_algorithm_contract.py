"""The public algorithm contract: every registered algorithm passes the conformance kit; plugins by name."""

from __future__ import annotations

from typing import Any

import pytest

from orchard.algorithms import ALGORITHMS, algorithm_class, algorithm_names, make_algorithm
from orchard.errors import ConfigurationError
from orchard.space import Space
from orchard.testing.algorithms import DEFAULT_SPACE, check_algorithm

FIDELITY_SPACE = {**DEFAULT_SPACE, "epochs": "fidelity(1, 27, base=3)"}
MULTI_FIDELITY = {"asha", "hyperband"}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_built_in_algorithm_passes_the_conformance_kit(name: str) -> None:
    space = FIDELITY_SPACE if name in MULTI_FIDELITY else DEFAULT_SPACE

    def factory(space: Space, seed: int | None) -> Any:
        return make_algorithm(name, space, seed)

    check_algorithm(factory, space=space)


def test_the_kit_catches_an_algorithm_that_ignores_pending() -> None:
    random_search = algorithm_class("random")

    class Forgetful(random_search):  # type: ignore[misc, valid-type]
        def suggest(self, completed: Any, pending: Any, n: int = 1, seen: Any = None) -> Any:
            return super().suggest(completed, [], n, None)

    with pytest.raises(AssertionError, match="pending"):
        check_algorithm(lambda space, seed: Forgetful(space, seed))


def test_an_unknown_algorithm_lists_the_valid_names() -> None:
    with pytest.raises(ConfigurationError, match="valid algorithms: random, grid, bayes"):
        algorithm_class("no_such_search")
    assert algorithm_names()[: len(ALGORITHMS)] == list(ALGORITHMS)
