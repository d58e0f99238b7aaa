"""Grid search: every combination of a few values per dimension, each suggested once."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import ConfigurationError, SpaceExhaustedError
from orchard.space import Space

__all__ = ["GridSearch"]

#: ``n_values`` when neither it nor ``budget`` is given.
DEFAULT_N_VALUES = 10
#: A shuffled grid keeps a permutation of its indices, so it must stay this small.
MAX_SHUFFLED_GRID = 10_000_000
#: Most values per dimension: each worker lists them all (``n_values=10**9``, or ``budget=10**9`` over
#: one dimension, held every worker and the experiment's creation for ever, filling memory).
MAX_N_VALUES = 100_000


def _value_key(value: Any) -> tuple[bool, bool, Any]:
    """Dict key of a value: 1 and 1.0 match (as in ``params_hash``), True and 1 do not."""
    return isinstance(value, bool), isinstance(value, str), value


def grid_values(space: Space, n_values: int) -> dict[str, list[Any]]:
    """The distinct values of each dimension: ``n_values`` spread values, or all of a small discrete prior.

    Spread values can coincide: ``uniform(1.0, 1.0000000000000004)`` holds three floats, so ten
    spread over it repeat; a repeated value made the grid suggest points it had already run.
    """
    return {name: list({_value_key(v): v for v in prior.grid(n_values)}.values()) for name, prior in space.items()}


def _grid_size(space: Space, n_values: int) -> int:
    return math.prod(len(values) for values in grid_values(space, n_values).values())


def choose_n_values(space: Space, budget: int) -> int:
    """The largest ``n_values`` in ``[2, MAX_N_VALUES]`` whose grid has at most ``budget`` points (else 2)."""
    low, high = 2, min(max(2, budget), MAX_N_VALUES)
    if _grid_size(space, low) > budget:
        return low
    while low < high:  # invariant: the grid of ``low`` values fits the budget
        mid = (low + high + 1) // 2
        if _grid_size(space, mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


class GridSearch(BaseAlgorithm):
    """Suggest the points of a regular grid in a fixed order, skipping seen ones.

    Options:
        n_values: values per continuous (or large discrete) dimension; ``choices``
            and small integer ranges always contribute all their values.
        budget: when ``n_values`` is not given, pick it so that the grid has about
            ``budget`` points (at most ``budget`` when possible); else 10 per dimension.
        shuffle: visit the grid in an order shuffled by the seed instead of
            lexicographic order (useful when the budget ends before the grid).

    Parallel workers walk the same order and skip each other's pending points.
    When every grid point is completed or pending, :meth:`suggest` raises
    :class:`~orchard.errors.SpaceExhaustedError`.
    """

    name = "grid"
    OPTIONS: ClassVar[dict[str, Any]] = {"n_values": None, "budget": None, "shuffle": False}

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, **options)
        n_values = self.options["n_values"]
        if n_values is None:
            budget = self.options["budget"]
            n_values = DEFAULT_N_VALUES if budget is None else choose_n_values(space, budget)
        self.n_values: int = n_values
        self._names = list(space)
        self._values = list(grid_values(space, n_values).values())
        self._positions = [{_value_key(v): i for i, v in enumerate(values)} for values in self._values]
        self.size = math.prod(len(values) for values in self._values)
        self._order = self._make_order()

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        for key, minimum in (("n_values", 2), ("budget", 1)):
            value = options[key]
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
                raise ConfigurationError(f"grid option {key} must be an integer >= {minimum}, got {value!r}")
        if options["n_values"] is not None and options["n_values"] > MAX_N_VALUES:
            raise ConfigurationError(f"grid option n_values must be at most {MAX_N_VALUES:,} (values per dimension), "
                                     f"got {options['n_values']!r}; use random search for a finer sampling")
        if not isinstance(options["shuffle"], bool):
            raise ConfigurationError(f"grid option shuffle must be True or False, got {options['shuffle']!r}")

    def _make_order(self) -> NDArray[Any] | None:
        if not self.options["shuffle"]:
            return None
        if self.size > MAX_SHUFFLED_GRID:
            raise ConfigurationError(
                f"a shuffled grid of {self.size} points is too large (max {MAX_SHUFFLED_GRID}); "
                "lower n_values or give a budget"
            )
        return np.random.default_rng(self.seed).permutation(self.size)

    def max_suggestions(self) -> int:
        """The number of grid points."""
        return self.size

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return the next ``n`` (or fewer) unseen grid points in the grid's order.

        A grid is bounded by its size, so it indexes the history itself and ignores ``seen``.

        Raises:
            SpaceExhaustedError: every grid point is completed or pending.
        """
        points = [*(o.params for o in completed), *pending]
        taken = {i for i in map(self._index_of, points) if i is not None}
        suggestions = [self._point(index) for index in itertools.islice(self._walk(taken), n)]
        if suggestions:
            return suggestions
        raise SpaceExhaustedError(
            f"the grid of {self.size} points ({self.n_values} values per dimension) is exhausted: "
            f"every point is completed or pending; raise n_values for a finer grid"
        )

    def _walk(self, taken: set[int]) -> Iterator[int]:
        for position in range(self.size):
            index = position if self._order is None else int(self._order[position])
            if index not in taken:
                yield index

    def _index_of(self, params: Mapping[str, Any]) -> int | None:
        """The grid index of ``params``, or ``None`` if it is not a grid point."""
        index = 0
        for name, values, positions in zip(self._names, self._values, self._positions):
            if name not in params:
                return None
            position = positions.get(_value_key(params[name]))
            if position is None:
                return None
            index = index * len(values) + position
        return index

    def _point(self, index: int) -> dict[str, Any]:
        digits = []
        for values in reversed(self._values):
            index, position = divmod(index, len(values))
            digits.append(values[position])
        return dict(zip(self._names, reversed(digits)))
