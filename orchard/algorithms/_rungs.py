"""The rungs of a multi-fidelity history, kept sorted and extended as the history grows.

:class:`Ladder` groups completed trials by ``(bracket, rung)``, each rung
sorted best first, and records which configurations sit on each rung (by
:func:`config_key`, the hash of the params without the fidelity). ASHA asks it
which trials of a rung are promoted (their configuration is on the next rung)
and which are the best; for the ``stopping`` rule it also keeps each rung in
arrival order (:class:`Arrivals`) and judges each trial against those that
reached the rung before it.

With several objectives (observations carrying ``values``) a rung is ranked
by :func:`pareto_order` instead of by the objective: front index, then crowding
distance, then the configuration's hash.

A :class:`Ladder` is a cache, never a source of truth: :meth:`Ladder.update`
folds in only the observations appended since the last call when it is handed
the same, grown sequence (the worker's history is append-only), and rebuilds
from scratch otherwise. The result is the same either way; only the cost of a
suggestion changes, from the size of the history to the size of what is new.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchard.algorithms.base import Observation
from orchard.objectives import crowding_distance, non_dominated_sort
from orchard.space import params_hash

__all__ = ["Arrivals", "Entry", "Ladder", "Place", "config_key", "pareto_order", "survives"]

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

    @property
    def several(self) -> bool:
        """Whether the entry holds several objectives (it is then ranked by :func:`pareto_order`)."""
        return self.observation.values is not None


def pareto_order(entries: Sequence[Entry]) -> list[Entry]:
    """``entries`` best first by constrained non-dominated sorting, for a rung with several objectives.

    The order is the front index (Deb's constrained domination: feasible before
    infeasible, infeasible by total violation), then, within a front, the
    crowding distance, larger first (the front's extremes first, then the most
    isolated points), then the configuration's hash. It depends on the entries
    only, so every worker holding the same rung ranks it alike.

    Entries without a vector (a pruned trial: its last report is no result at the rung's
    fidelity) come after all the others, by objective: ranked among the vectors, they made
    a rung of several objectives that a pruner had pruned in unrankable.
    """
    ranked = [e for e in entries if e.several]
    vectors = [e.observation.values or () for e in ranked]
    order: list[Entry] = []
    for front in non_dominated_sort(vectors, [e.observation.violation for e in ranked]):
        distance = crowding_distance([vectors[i] for i in front])
        by_distance = sorted(zip(front, distance, strict=True), key=lambda p: (-p[1], ranked[p[0]].key))
        order += [ranked[i] for i, _ in by_distance]
    return order + sorted((e for e in entries if not e.several), key=lambda e: e.rank)


def survives(position: int, arrived: int, eta: float) -> bool:
    """The ``stopping`` rule: whether the trial ranked ``position`` (0 = best) among the ``arrived``
    trials that had reached its rung when it did (itself included) is in their top ``1/eta``.

    The top is ``floor(arrived / eta)`` trials, and at least one, so the first
    trial to reach a rung always continues (as in Optuna's successive-halving pruner).
    """
    return position < max(int(arrived // eta), 1)


class Arrivals:
    """One rung's completed trials in arrival order, each judged by :func:`survives` once.

    The arrival order is ``(end_time, config key)``, the same for every worker;
    observations without an ``end_time`` arrive after those with one, in the
    order they were added. A trial that turns up late in a worker's view (it
    completed before trials already judged) re-judges only those after it.
    """

    def __init__(self, eta: float) -> None:
        self._eta = eta
        self._order: list[tuple[float, str, int]] = []
        self._entries: list[Entry] = []
        self._ranked: list[tuple[float, str]] = []  # ranks of the judged prefix, sorted
        self._verdicts: list[bool] = []  # for the judged prefix of _entries
        self._survivors: list[Entry] | None = []  # cached, best first

    def add(self, entry: Entry, end_time: float | None) -> None:
        """Insert ``entry`` at its place in the arrival order."""
        order = (math.inf, "", len(self._order)) if end_time is None else (end_time, entry.key, 0)
        at = bisect.bisect_right(self._order, order)
        self._order.insert(at, order)
        self._entries.insert(at, entry)
        if at < len(self._verdicts):  # arrived late: the trials after it are judged again
            del self._verdicts[at:]
            self._ranked = sorted(e.rank for e in self._entries[:at])
        self._survivors = None

    def survivors(self) -> list[Entry]:
        """The trials that survived their arrival, best first."""
        if self._survivors is None and any(e.several for e in self._entries):
            for at in range(len(self._verdicts), len(self._entries)):
                arrived = pareto_order(self._entries[: at + 1])
                self._verdicts.append(survives(arrived.index(self._entries[at]), at + 1, self._eta))
            self._survivors = pareto_order([e for e, ok in zip(self._entries, self._verdicts) if ok])
        if self._survivors is None:
            for entry in self._entries[len(self._verdicts):]:
                bisect.insort(self._ranked, entry.rank)
                position = bisect.bisect_left(self._ranked, entry.rank)
                self._verdicts.append(survives(position, len(self._ranked), self._eta))
            self._survivors = sorted((e for e, ok in zip(self._entries, self._verdicts) if ok),
                                     key=lambda e: e.rank)
        return self._survivors


class Ladder:
    """Completed trials by ``(bracket, rung)``, sorted best first, updated incrementally.

    Args:
        locate: ``params -> (bracket, rung, config key)``, or ``None`` for a point
            on no rung of its bracket (it is then ignored).
        eta: the reduction factor, when each rung's :class:`Arrivals` are kept
            too (the ``stopping`` rule); ``None`` keeps none.
    """

    def __init__(self, locate: Callable[[Mapping[str, Any]], tuple[int, int, str] | None],
                 eta: float | None = None) -> None:
        self._locate = locate
        self._eta = eta
        self._reset(None)

    def _reset(self, source: Sequence[Observation] | None) -> None:
        self.rungs: dict[Place, list[Entry]] = {}
        self.keys: dict[Place, set[str]] = {}
        self.arrivals: dict[Place, Arrivals] = {}
        self._unranked: set[Place] = set()  # rungs of several objectives to rank again by pareto_order
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
        for place in self._unranked:  # once per update, however many points it folded in
            self.rungs[place] = pareto_order(self.rungs[place])
        self._unranked.clear()
        self._count = len(completed)
        self._last = completed[-1] if completed else None

    def _add(self, observation: Observation) -> None:
        where = self._locate(observation.params)
        if where is None:
            return
        bracket, rung, key = where
        entry = Entry(observation.objective, key, observation)
        bisect.insort(self.rungs.setdefault((bracket, rung), []), entry, key=lambda e: e.rank)
        if entry.several:  # a new point may push others to a later front: the rung is ranked again
            self._unranked.add((bracket, rung))
        self.keys.setdefault((bracket, rung), set()).add(key)
        if self._eta is not None:
            self.arrivals.setdefault((bracket, rung), Arrivals(self._eta)).add(entry, observation.end_time)

    def survivors(self, place: Place) -> list[Entry]:
        """The trials of ``place`` that survived their arrival (the ``stopping`` rule), best first."""
        arrivals = self.arrivals.get(place)
        return [] if arrivals is None else arrivals.survivors()

    def refined(self) -> list[Observation]:
        """Every configuration once, at the highest rung it completed, placed by refinement, best first.

        Within a bracket the configurations are first ranked at its lowest rung
        (``locate`` places no point below it); then, rung by rung upwards, those that completed
        the rung are re-ranked among themselves by their objective there, keeping
        the places they held. Reaching a rung is thus never merit in itself (under
        the ``stopping`` rule the first arrivals reach it whatever they score), while
        a higher rung's result still decides between the configurations it saw.
        Brackets are merged by the fraction of their own configurations ranked
        ahead (ties: the configuration's hash), so a bracket's size does not matter.
        """
        placed: list[tuple[float, str, Observation]] = []
        for bracket in sorted({b for b, _ in self.rungs}):
            order: list[str] = []
            standing: dict[str, Entry] = {}
            for rung in sorted(r for b, r in self.rungs if b == bracket):
                entries = self.rungs[(bracket, rung)]
                index = {key: i for i, key in enumerate(order)}
                for entry in entries:
                    if entry.key not in index:  # no result below (only at the lowest rung, normally)
                        index[entry.key] = len(order)
                        order.append(entry.key)
                for place, entry in zip(sorted(index[e.key] for e in entries), entries):
                    order[place] = entry.key
                    standing[entry.key] = entry
            placed += [((i + 0.5) / len(order), key, standing[key].observation) for i, key in enumerate(order)]
        return [observation for *_, observation in sorted(placed, key=lambda p: p[:2])]

    def results(self, rung: int) -> list[Observation]:
        """Every completed observation at ``rung``, all brackets."""
        return [e.observation for (_, r), entries in self.rungs.items() if r == rung for e in entries]
