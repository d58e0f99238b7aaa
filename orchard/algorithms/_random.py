"""Random search: independent draws from the priors, skipping seen points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import SpaceExhaustedError

__all__ = ["RandomSearch"]


class RandomSearch(BaseAlgorithm):
    """Draw points from the space's priors (``normal`` priors are unbounded here).

    The stream is seeded by ``(seed, number of completed, number of pending)``,
    so a seeded worker replays its run and a collision retry (one more pending
    point) draws something else. No options.
    """

    name = "random"
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to ``n`` unseen random points (see :meth:`BaseAlgorithm.suggest`)."""
        rng = self.rng(completed, pending)
        seen = self.seen_points(completed, pending, seen)
        suggestions: list[dict[str, Any]] = []
        for _ in range(n):
            try:
                params = self.random_unseen(rng, seen)
            except SpaceExhaustedError:
                if suggestions:
                    break
                raise
            seen.add(params)
            suggestions.append(params)
        return suggestions
