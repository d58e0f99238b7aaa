"""A third-party algorithm: the middle of every numeric range first, then random points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from orchard.algorithms import RandomSearch
from orchard.algorithms.base import Observation, SeenPoints


class CenterFirst(RandomSearch):
    """Suggest the center of a space of ``uniform`` dims when unseen, else random points."""

    name = "center_first"
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        taken = self.seen_points(completed, pending, seen)
        center = {name: self._center(prior) for name, prior in self.space.items()}
        if center in taken:
            return super().suggest(completed, pending, n, seen)
        taken.add(center)
        rest = super().suggest(completed, [*pending, center], n - 1, seen) if n > 1 else []
        return [center, *rest]

    @staticmethod
    def _center(prior: Any) -> Any:
        if getattr(prior, "discrete", False):
            return (int(prior.low) + int(prior.high)) // 2
        return (float(prior.low) + float(prior.high)) / 2.0
