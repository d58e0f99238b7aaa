"""A worker's incrementally refreshed view of one experiment's trials.

:meth:`History.refresh` folds in only the trials that changed since the last
call, through the storage's change feed (``fetch_changes``), so its cost
follows the changes, not the size of the history. The worker fits its
algorithm on it; the progress monitor draws from it.

Evidence that is not the experiment's own budget reaches the algorithm here
too: trials recorded apart from the budget (``insert(..., objective=...)``)
are observations but are left out of :attr:`History.counts`, and the
``prior`` trials of a warm start (:mod:`orchard.warm_start`) come first in
:attr:`History.observations` without being trials of the experiment at all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

from orchard.algorithms.base import Observation, Pending, SeenPoints
from orchard.constraints import feasibility
from orchard.errors import SpaceError
from orchard.objectives import minimized
from orchard.space import Space
from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus, finite_float

__all__ = ["History", "Observations"]


class _Told:
    """A trial told to the algorithm, made an :class:`Observation` when first read.

    Building one reads the trial's params and results, which a trial read by its
    summary (:class:`~orchard.storages.lazy.LazyTrial`) decodes only then: an
    algorithm that never looks at the observations (random search counts them)
    never decodes another worker's results.
    """

    __slots__ = ("_build", "_made", "_objective", "_trial")

    def __init__(self, build: Callable[[Trial, float], Observation], trial: Trial, objective: float) -> None:
        self._build, self._trial, self._objective = build, trial, objective
        self._made: Observation | None = None

    def observation(self) -> Observation:
        if self._made is None:
            self._made = self._build(self._trial, self._objective)
        return self._made


class Observations(Sequence[Observation]):
    """The observations a :class:`History` tells its algorithm, each built when first read (the same object
    on every read after)."""

    def __init__(self) -> None:
        self._items: list[Observation | _Told] = []

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Observation: ...

    @overload
    def __getitem__(self, index: slice) -> list[Observation]: ...

    def __getitem__(self, index: int | slice) -> Observation | list[Observation]:
        if isinstance(index, slice):
            return [_made(item) for item in self._items[index]]
        return _made(self._items[index])

    def __iter__(self) -> Iterator[Observation]:
        return map(_made, self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, Observations)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list: mutable

    def append(self, item: Observation | _Told) -> None:
        """Tell one more observation (last)."""
        self._items.append(item)

    def drop(self, items: Sequence[Observation | _Told]) -> None:
        """Forget ``items`` (appended before)."""
        if not items:
            return
        dropped = set(map(id, items))
        self._items = [item for item in self._items if id(item) not in dropped]


def _observation(trial: Trial, objective: float, objectives: Mapping[str, str] | None,
                 constraints: Sequence[str] | None) -> Observation:
    """What the algorithm is told of a completed or pruned ``trial`` scored ``objective``."""
    values = None
    if objectives is not None and trial.status is TrialStatus.COMPLETED:
        try:
            values = minimized(trial.results, objectives)
        except (KeyError, TypeError, ValueError):  # recorded before the objectives were checked
            values = None
    standing = feasibility(trial.results, constraints)
    pruned = trial.status is TrialStatus.PRUNED
    step = trial.reports[-1][0] if pruned and trial.reports else None
    return Observation(trial.params, objective, trial.end_time, values, standing.feasible, standing.violation,
                       pruned=pruned, step=step)


def _made(item: Observation | _Told) -> Observation:
    return item if isinstance(item, Observation) else item.observation()


class History:
    """A worker's incrementally refreshed view of one experiment's trials.

    Args:
        storage: the shared storage.
        experiment_id: the experiment.
        objectives: the experiment's several objectives, if any: each completed
            observation then carries its objective vector (``Observation.values``).
        constraints: the experiment's constraints, if any: observations carry their feasibility.
        prior: completed trials of earlier experiments, their params already in this
            experiment's space (a warm start): observations and seen points from the start,
            never counted, never pending.

    :attr:`counts` holds the trials that use the budget, by status; trials recorded
    apart from it (``Trial.in_budget`` false) are counted in :attr:`unbudgeted` instead.
    """

    def __init__(self, storage: BaseStorage, experiment_id: str, objectives: Mapping[str, str] | None = None,
                 constraints: Sequence[str] | None = None, prior: Sequence[Trial] = ()) -> None:
        self._storage = storage
        self._objectives = objectives
        self._constraints = constraints
        self._experiment_id = experiment_id
        self._cursor: Any = None
        self.trials: dict[str, Trial] = {}
        # (a partial, not a bound method: a History the observations referred to would outlive its worker, and
        # its storage with it, until the garbage collector found the cycle)
        self._observation = functools.partial(_observation, objectives=objectives, constraints=constraints)
        self.observations = Observations()  # completed and pruned trials, in the order they were seen
        self._told: dict[str, _Told] = {}  # the observation of each trial, by id
        self._pending: dict[str, dict[str, Any]] = {}
        self._broken: dict[str, dict[str, Any]] = {}  # the broken trials' params, by id
        self.seen = SeenPoints(experiment_id=experiment_id)  # every trial's params, kept incrementally
        self.counts: dict[TrialStatus, int] = {status: 0 for status in TrialStatus}
        self.finished: list[Trial] = []  # trials that became completed/broken in the last refresh
        self.unbudgeted = 0
        self._aside: set[str] = set()  # trials whose params are no point of the space (set_aside)
        for trial in prior:
            objective = self._prior_objective(trial)
            if objective is not None:
                self.observations.append(self._observation(trial, objective))
                self.seen.add(trial.params)

    def refresh(self) -> list[dict[str, Any]]:
        """Fold in the trials that changed since the last refresh.

        Returns:
            The params of trials that became pending (new, reserved or interrupted)
            since the last refresh. :attr:`finished` lists those that became
            completed or broken.
        """
        before = self._cursor
        changed, self._cursor = self._storage.fetch_changes(self._experiment_id, before)
        if before is not None and self._storage.resent_everything(before, self._cursor):
            self._drop_all_but(changed)
        arrived: list[dict[str, Any]] = []
        self.finished = []
        for trial in changed:
            old = self.trials.get(trial.id)
            if old is not None:
                self._count(old, -1)
            else:
                self.seen.add_trial(trial)
            newly_told = old is None or old.status is not trial.status
            if trial.status.is_terminal and (old is None or not old.status.is_terminal):
                self.finished.append(trial)
            self.trials[trial.id] = trial
            self._count(trial, 1)
            if trial.id in self._aside:
                continue
            if trial.status.is_pending:
                if trial.id not in self._pending:
                    arrived.append(trial.params)
                self._pending[trial.id] = trial.params
            else:
                self._pending.pop(trial.id, None)
            status = trial.status
            failed = status is TrialStatus.BROKEN or (status is TrialStatus.PRUNED and _diverged(trial))
            if failed:  # told as a failure (BaseAlgorithm.failed_points), not at its last finite value
                self._broken[trial.id] = trial.params
            elif old is not None and old.status is TrialStatus.BROKEN:  # given another attempt
                self._broken.pop(trial.id, None)
            # a pruned trial is told with its last reported value: what it reached before it was stopped
            if newly_told and not failed and trial.status in (TrialStatus.COMPLETED, TrialStatus.PRUNED):
                objective = finite_float(trial.objective)  # another program's NaN, text or 5,000-digit int: not told
                if objective is not None:
                    self._told[trial.id] = _Told(self._observation, trial, objective)
                    self.observations.append(self._told[trial.id])
        return arrived

    def set_aside(self, space: Space) -> list[str]:
        """Leave out, from now on, the trials whose params are not a point of ``space``; return their ids.

        Only another program stores such a trial (joining with another space is refused), and an
        algorithm told its params fails, or suggests outside the space, on every worker. Checking
        each trial as it arrives would cost every worker about 5 µs per trial: the worker calls
        this once its algorithm has failed. They stay counted; they are no longer observations
        or pending points.
        """
        unfit = []
        for tid, trial in self.trials.items():
            if tid not in self._aside:
                try:
                    space.validate(trial.params)
                except SpaceError:
                    unfit.append(tid)
        self._aside.update(unfit)
        for tid in unfit:
            self._pending.pop(tid, None)
            self._broken.pop(tid, None)
        self.observations.drop([self._told.pop(tid) for tid in unfit if tid in self._told])
        return unfit

    def _drop_all_but(self, trials: list[Trial]) -> None:
        """Forget the trials the storage no longer has (it resent everything: its file was replaced).

        Otherwise a vanished reserved trial looked held by another worker forever,
        and the workers waited for it without end.
        """
        kept = {trial.id for trial in trials}
        gone = [tid for tid in self.trials if tid not in kept]
        dropped = []
        for tid in gone:
            self._count(self.trials.pop(tid), -1)
            self._pending.pop(tid, None)
            self._broken.pop(tid, None)
            if tid in self._told:
                dropped.append(self._told.pop(tid))
        self.observations.drop(dropped)

    def _count(self, trial: Trial, sign: int) -> None:
        if trial.in_budget:
            self.counts[trial.status] += sign
        else:
            self.unbudgeted += sign

    def _prior_objective(self, trial: Trial) -> float | None:
        """A warm-start trial's objective as this experiment scores it, or ``None`` if it cannot be scored.

        With declared objectives it is recomputed from the trial's results in this experiment's
        directions: the source's own objective was told as is, so a source that maximised ``acc``
        steered an experiment minimising it towards its worst points, and one that recorded
        other objectives was told with no objective vector at all.
        """
        if self._objectives is None:
            return finite_float(trial.objective)
        try:
            first = minimized(trial.results, self._objectives)[0]
        except (KeyError, TypeError, ValueError):
            return None
        return first if math.isfinite(first) else None

    def pending(self, extra: list[dict[str, Any]] | None = None,
                seen: SeenPoints | None = None) -> list[dict[str, Any]]:
        """Params being, or about to be, evaluated by anyone (plus ``extra``), with :meth:`completes_after`
        and the broken trials' params (``Pending.broken``, ordered by trial id: the same for every worker).

        ``seen`` is :attr:`seen` or an overlay of it (the set handed to the algorithm with this list).
        """
        broken = [self._broken[tid] for tid in sorted(self._broken)]
        return Pending(self._pending.values(), extra or (), seen or self.seen,  # the first ones: in seen
                       self.completes_after(), broken)

    def completes_after(self) -> float:
        """A time before which no completion this view lacks was recorded (``inf``: none will be).

        A storage that stamps in order (:attr:`BaseStorage.stamps_in_order`) shows
        every completion recorded before one it shows. Otherwise the bound is the
        oldest start of the trials this view holds reserved: a trial's end time is
        stamped by its worker after its reservation came back. Not its heartbeat: the
        worker's pacemaker beats until the completion has landed, so a beat stamped
        after the end time can land before it. A trial this view does not show
        reserved is reserved after the read, and its worker stamps its end after that
        reservation landed, so after every end time this view shows (with clocks that
        agree: a node whose clock is behind can still stamp an earlier one). A
        reservation stamped by no worker (another program's write) bounds nothing, and
        neither does an evaluation inserted with its result while this view is read: it
        is stamped by the inserting client and never reserved (a window of one write).
        """
        if self._storage.stamps_in_order:
            return math.inf
        stamps = [t.start_time if t.start_time is not None else t.heartbeat for t in self.reserved()]
        return min((stamp for stamp in stamps if stamp is not None), default=math.inf)

    def reserved(self) -> list[Trial]:
        """The trials reserved right now, as last seen (costs the pending trials, not the history)."""
        return [trial for tid in self._pending if (trial := self.trials[tid]).status is TrialStatus.RESERVED]

    def others_reserved(self) -> bool:
        """Whether any trial is waiting or being evaluated (so waiting can pay off)."""
        return any(self.counts[s] for s in (TrialStatus.RESERVED, TrialStatus.NEW, TrialStatus.INTERRUPTED))


def _diverged(trial: Trial) -> bool:
    """Whether ``trial`` was pruned for a NaN or infinite report (its training diverged).

    Such a verdict is reached on a value that is not stored, at a step after the trial's last
    report (:meth:`orchard.verdicts.Judge.report`); its last finite report, which may look good, says
    nothing of the region but that training there blows up. Optuna's TPE ranks such a trial worst.
    """
    verdict, reports = trial.verdict, trial.reports
    if trial.status is not TrialStatus.PRUNED or not isinstance(verdict, dict) or not reports:
        return False
    step = verdict.get("step")
    return verdict.get("value") is None and isinstance(step, int) and step > reports[-1][0]
