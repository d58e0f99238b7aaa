"""The algorithm conformance kit: the guarantees of :class:`~orchard.algorithms.base.BaseAlgorithm`.

A third-party algorithm checks itself with one call in a test::

    from orchard.testing.algorithms import check_algorithm

    def test_my_search_conforms():
        check_algorithm(lambda space, seed: MySearch(space, seed))

Each check raises ``AssertionError`` naming the broken guarantee. The checks
run in-process on a synthetic history (no storage, no worker): determinism
for the same history (also for an instance that answered earlier calls), values inside the space, pending awareness, and no
duplicate among workers racing on one history (each worker sees the others'
suggestions as pending, as the storage shows them). The exact-budget check
with real processes is not part of this kit yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from orchard.algorithms.base import BaseAlgorithm, Observation
from orchard.space import Space, params_hash

__all__ = ["DEFAULT_SPACE", "AlgorithmFactory", "check_algorithm"]

#: Builds an algorithm for a space and a seed (``lambda space, seed: MySearch(space, seed)``).
AlgorithmFactory = Callable[[Space, int | None], BaseAlgorithm]

#: A small mixed space (log-uniform real, integer, categorical) used when none is given.
DEFAULT_SPACE: dict[str, str] = {
    "lr": "loguniform(1e-4, 1.0)",
    "x": "uniform(-5, 10)",
    "layers": "randint(1, 8)",
    "act": "choices(['relu', 'tanh', 'gelu'])",
}


def _objective(params: Mapping[str, Any]) -> float:
    """A deterministic, cheap objective over any params (the kit only needs some numbers)."""
    return float(int(params_hash(params)[:8], 16) % 10_000) / 100.0


def _history(space: Space, n_completed: int, n_pending: int) -> tuple[list[Observation], list[dict[str, Any]]]:
    """A history drawn by a fixed-seed random stream, the same on every call."""
    import numpy as np

    rng = np.random.default_rng(12345)
    points = [space.sample(rng) for _ in range(n_completed + n_pending)]
    completed = [Observation(dict(p), _objective(p), end_time=float(i)) for i, p in enumerate(points[:n_completed])]
    return completed, [dict(p) for p in points[n_completed:]]


def _check_inside(space: Space, name: str, suggestions: list[dict[str, Any]]) -> None:
    assert suggestions, f"{name}: suggest() returned nothing (it must raise SpaceExhaustedError instead)"
    for params in suggestions:
        assert set(params) == set(space), f"{name}: suggestion {params} has not exactly the dims {sorted(space)}"
        try:
            space.validate(params)
        except Exception as exc:
            raise AssertionError(f"{name}: suggestion {params} is outside the space: {exc}") from exc
        for key, value in params.items():
            assert type(value) in (int, float, str, bool), (
                f"{name}: {key}={value!r} is a {type(value).__name__}, not a plain Python value"
            )
            assert not (isinstance(value, float) and math.isnan(value)), f"{name}: {key} is NaN"


def _check_deterministic(factory: AlgorithmFactory, space: Space, name: str, sizes: tuple[int, int]) -> None:
    completed, pending = _history(space, *sizes)
    first = factory(space, 7).suggest(completed, pending, n=2)
    again = factory(space, 7).suggest(completed, pending, n=2)
    assert first == again, f"{name}: two instances with seed 7 gave {first} then {again} for the same history"
    _check_inside(space, name, first)


def _check_cache_changes_nothing(factory: AlgorithmFactory, space: Space, name: str, n_completed: int) -> None:
    """A worker that already answered a shorter history suggests what a fresh one suggests."""
    completed, pending = _history(space, n_completed, 2)
    reused = factory(space, 9)
    reused.suggest(completed[: n_completed // 2], pending[:1], n=1)
    fresh = factory(space, 9).suggest(completed, pending, n=1)
    again = reused.suggest(completed, pending, n=1)
    assert again == fresh, (
        f"{name}: a worker that had answered a shorter history suggested {again}, a fresh one {fresh}: "
        "state kept between calls changes suggestions (the masterless rule)"
    )


def _check_unseen(factory: AlgorithmFactory, space: Space, name: str, sizes: tuple[int, int]) -> None:
    completed, pending = _history(space, *sizes)
    taken = {params_hash(o.params) for o in completed} | {params_hash(p) for p in pending}
    suggestions = factory(space, 3).suggest(completed, pending, n=3)
    digests = [params_hash(p) for p in suggestions]
    assert len(set(digests)) == len(digests), f"{name}: one call suggested a point twice: {suggestions}"
    assert not taken & set(digests), f"{name}: a suggestion equals a completed or pending point"


def _check_pending_aware(factory: AlgorithmFactory, space: Space, name: str, n_completed: int) -> None:
    completed, _ = _history(space, n_completed, 0)
    algorithm = factory(space, 5)
    (first,) = algorithm.suggest(completed, [], n=1)[:1]
    (retry,) = algorithm.suggest(completed, [first], n=1)[:1]
    assert params_hash(retry) != params_hash(first), (
        f"{name}: with its own suggestion {first} pending, it suggested it again"
    )


def _check_racing_workers(factory: AlgorithmFactory, space: Space, name: str, n_completed: int) -> None:
    """Four workers with different seeds take turns; each sees the others' points as pending."""
    completed, _ = _history(space, n_completed, 0)
    workers = [factory(space, seed) for seed in (11, 12, 13, 14)]
    pending: list[dict[str, Any]] = []
    for _ in range(3):
        for worker in workers:
            (params,) = worker.suggest(completed, list(pending), n=1)[:1]
            pending.append(params)
    digests = [params_hash(p) for p in pending]
    assert len(set(digests)) == len(digests), f"{name}: racing workers suggested the same point twice"
    _check_inside(space, name, pending)


def check_algorithm(
    factory: AlgorithmFactory, space: Mapping[str, str] | Space | None = None, *, n_completed: int = 12
) -> None:
    """Run every in-process conformance check against the algorithm ``factory`` builds.

    Args:
        factory: builds the algorithm for a space and a seed.
        space: the space to test on (a config mapping or a :class:`Space`); default
            :data:`DEFAULT_SPACE`. A multi-fidelity algorithm needs a ``fidelity`` dim.
        n_completed: size of the synthetic completed history for the "after
            initial points" checks (model-based algorithms should be past their
            random start; raise it if yours needs more).

    Raises:
        AssertionError: a guarantee is broken; the message names it.
    """
    resolved = space if isinstance(space, Space) else Space.from_config(space or DEFAULT_SPACE)
    name = type(factory(resolved, 0)).__name__
    for sizes in ((0, 0), (0, 2), (n_completed, 3)):
        _check_deterministic(factory, resolved, name, sizes)
        _check_unseen(factory, resolved, name, sizes)
    _check_cache_changes_nothing(factory, resolved, name, n_completed)
    for size in (0, n_completed):
        _check_pending_aware(factory, resolved, name, size)
        _check_racing_workers(factory, resolved, name, size)
