"""The rungs of a multi-fidelity history, kept sorted and extended as the history grows.

:class:`Ladder` groups completed trials by ``(bracket, rung)``, each rung
sorted best first, and records which configurations sit on each rung (by
:func:`config_key`, the hash of the params without the fidelity). ASHA asks it
which trials of a rung are promoted (their configuration is on the next rung)
and which are the best.

A :class:`Ladder` is a cache, never a source of truth: :meth:`Ladder.update`
folds in only the observations appended since the last call when it is handed
the same, grown sequence (the worker's history is append-only), and rebuilds
from scratch otherwise. The result is the same either way; only the cost of a
suggestion changes, from the size of the history to the size of what is new.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchard.algorithms.base import Observation
from orchard.space import params_hash

__all__ = ["Entry", "Ladder", "Place", "config_key"]

#: ``(bracket, rung index)``.
Place = tuple[int, int]


def config_key(params: Mapping[str, Any], fidelity: str) -> str:
    """The hash of ``params`` without the fidelity: one configuration at every rung."""
    return params_hash({k: v for k, v in params.items() if k != fidelity})


@dataclasses.dataclass(frozen=True)
class Entry:
    """One completed trial on a rung."""

    objective: float
    key: str
    observation: Observation

    @property
    def rank(self) -> tuple[float, str]:
        """Best first; ties broken by the configuration's hash, the same on every worker."""
        return self.objective, self.key


class Ladder:
    """Completed trials by ``(bracket, rung)``, sorted best first, updated incrementally.

    Args:
        locate: ``params -> (bracket, rung, config key)``, or ``None`` for a point
            on no rung of its bracket (it is then ignored).
    """

    def __init__(self, locate: Callable[[Mapping[str, Any]], tuple[int, int, str] | None]) -> None:
        self._locate = locate
        self._reset(None)

    def _reset(self, source: Sequence[Observation] | None) -> None:
        self.rungs: dict[Place, list[Entry]] = {}
        self.keys: dict[Place, set[str]] = {}
        self._source = source
        self._count = 0
        self._last: Observation | None = None

    def update(self, completed: Sequence[Observation]) -> None:
        """Fold in ``completed``: only its new tail when it is the sequence seen last time, grown."""
        grown = completed is self._source and len(completed) >= self._count and (
            self._count == 0 or completed[self._count - 1] is self._last)
        if not grown:
            self._reset(completed)
        for observation in completed[self._count:]:
            self._add(observation)
        self._count = len(completed)
        self._last = completed[-1] if completed else None

    def _add(self, observation: Observation) -> None:
        where = self._locate(observation.params)
        if where is None:
            return
        bracket, rung, key = where
        entry = Entry(observation.objective, key, observation)
        bisect.insort(self.rungs.setdefault((bracket, rung), []), entry, key=lambda e: e.rank)
        self.keys.setdefault((bracket, rung), set()).add(key)

    def results(self, rung: int) -> list[Observation]:
        """Every completed observation at ``rung``, all brackets."""
        return [e.observation for (_, r), entries in self.rungs.items() if r == rung for e in entries]
