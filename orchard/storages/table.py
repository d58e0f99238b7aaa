"""The trial table shared by the local backends (memory and pickle file).

:class:`TrialTable` holds experiments and trials in memory and implements the
semantics of every storage verb, with no locking and no I/O. Each mutation is
expressed as *records* (plain dicts of builtins) that are applied to the
table; the pickle backend appends the same records to its log, and replaying
a log into an empty table rebuilds the state exactly.

Records::

    {"op": "experiment", "record": {...ExperimentRecord...}}
    {"op": "trial", "trial": {...Trial.to_dict(), without the fields at their default...}}
    {"op": "drop", "experiment": experiment_id}
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from orchard import trial as transitions
from orchard.errors import (
    BudgetExhaustedError,
    DuplicateTrialError,
    ExperimentNotFoundError,
    ReservationLostError,
    StorageError,
    TrialNotFoundError,
)
from orchard.space import to_builtin, trial_id
from orchard.storages.base import ExperimentRecord, finishes, new_experiment_id
from orchard.storages.lazy import set_aside
from orchard.trial import Lease, Trial, TrialStatus

__all__ = ["REMEMBERED", "SCALARS", "Record", "TrialTable"]

Record = dict[str, Any]
SCALARS = (bool, int, float, str, type(None))  # the plain values a record holds besides lists and dicts
#: How many deleted experiments (and vanished trials) a table remembers, to name what happened to
#: them: the latest ones, so a long-lived process (a dashboard, a loop that creates and deletes
#: experiments) does not grow without bound.
REMEMBERED = 1024


class _ExperimentTrials:
    """Per-experiment indexes that keep every verb's cost independent of history size."""

    def __init__(self) -> None:
        self.trials: dict[str, Trial] = {}
        self.changed: dict[str, int] = {}  # trial id -> seq, last change last (moved by popping and re-inserting)
        self.waiting: dict[TrialStatus, dict[str, None]] = {TrialStatus.INTERRUPTED: {}, TrialStatus.NEW: {}}
        self.reserved: dict[str, None] = {}
        self.counts: dict[TrialStatus, int] = {status: 0 for status in TrialStatus}
        self.unbudgeted = 0  # trials that are not broken yet hold no budget (recorded apart from it)


class TrialTable:
    """In-memory experiments and trials; every verb returns the records it applied.

    The objects it returns are the stored ones (never mutated in place once
    returned: a change replaces them; only a batch of records changes in place
    the trials it built itself, see :meth:`replay`), so a storage must copy them
    before handing them out (:class:`~orchard.storages.table_storage.TableStorage`
    does, in one place).
    """

    def __init__(self, vanished: OrderedDict[str, str] | None = None) -> None:
        """An empty table.

        Args:
            vanished: trial id -> why it is gone, for trials held before the table was
                rebuilt from a file that lacks them (kept by the caller across rebuilds;
                :meth:`_missing` names the reason instead of "no trial").
        """
        self._experiments: dict[str, ExperimentRecord] = {}
        self._names: dict[str, str] = {}
        self._by_experiment: dict[str, _ExperimentTrials] = {}
        self._owner_of: dict[str, str] = {}  # trial id -> experiment id
        # id -> (name, ids of its unfinished trials) of the latest experiments deleted under this table's eyes
        self._deleted: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()
        self._deleted_trials: dict[str, str] = {}  # unfinished trial id -> id of its deleted experiment
        self.vanished: OrderedDict[str, str] = OrderedDict() if vanished is None else vanished
        self.seq = 0
        #: Well-formed records that could not be applied and were skipped (what a reader names, then clears).
        self.unapplied: list[str] = []
        #: Trial ids whose stored object the batch being applied built (``None``: no batch): nothing outside
        #: the table has seen them, so the batch may change them in place; every other stored object is never
        #: mutated, a change replaces it.
        self._unseen: set[str] | None = None

    # -- applying records (the only place state changes) -------------------------

    def apply(self, record: Record) -> None:
        """Apply one record to the table."""
        self.seq += 1
        op = record["op"]
        if op == "experiment":
            exp = ExperimentRecord(**record["record"])
            self._experiments[exp.id] = exp
            self._names[exp.name] = exp.id
            if exp.id not in self._by_experiment:
                self._by_experiment[exp.id] = _ExperimentTrials()
        elif op == "trial":
            stored = record["trial"]  # a LazyTrial from a replay that reads summaries (pickled.fileformat)
            trial = stored if isinstance(stored, Trial) else Trial.from_record(stored)
            self._put_trial(trial)
            if self._unseen is not None:
                self._unseen.add(trial.id)
        elif op == "report":  # one report appended: not the whole trial again (10,000 of them may come)
            self._report(record)
        elif op == "drop":
            self._drop(record["experiment"])
        else:  # pragma: no cover - guarded by the pickle loader
            raise ValueError(f"unknown record op {op!r}")

    def _report(self, record: Record) -> None:
        """Append one report to its trial: in place if this batch built the stored trial, else on a copy.

        A stored trial that nothing outside the batch can have seen is the batch's own to change,
        so a replay of 10,000 reports of one trial copies its list once, not 10,000 times.
        """
        tid = record["trial"]
        trial = self.trial(tid)
        if trial is None:  # a writer appends reports to trials it holds: another program's record
            self.unapplied.append(f"a report of unknown trial {tid!r}")
            return
        if self._unseen is None or tid not in self._unseen:  # a trial others may hold: changed on a copy
            trial = _copied(trial)
            if self._unseen is not None:
                self._unseen.add(tid)
        value = record["value"]  # a tuple of objectives comes back from JSON as a list
        trial.reports.append((record["step"], tuple(value) if type(value) is list else value))
        trial.heartbeat = record["heartbeat"]
        self._put_trial(trial)

    def _drop(self, exp_id: str) -> None:
        """Forget an experiment, remembering (boundedly) what its running workers need to be told."""
        dropped = self._experiments.pop(exp_id, None)
        table = self._by_experiment.pop(exp_id, _ExperimentTrials())
        for tid in table.trials:
            self._owner_of.pop(tid, None)
        if dropped is None:
            return
        self._names.pop(dropped.name, None)
        # only unfinished trials can still be written to by id (a finished one refuses every write)
        unfinished = (*table.reserved, *table.waiting[TrialStatus.INTERRUPTED], *table.waiting[TrialStatus.NEW])
        self._deleted[exp_id] = (dropped.name, unfinished)
        self._deleted_trials.update(dict.fromkeys(unfinished, exp_id))
        while len(self._deleted) > REMEMBERED:
            for tid in self._deleted.popitem(last=False)[1][1]:
                self._deleted_trials.pop(tid, None)

    def forget_vanished(self, why: str) -> None:
        """Remember this table's unfinished trials as vanished for ``why``, before it is rebuilt from another file.

        The caller passes :attr:`vanished` to the rebuilt table: a write to one of these trials
        that the new file lacks is refused with ``why`` (a :class:`ReservationLostError`, so
        the worker holding it drops that result and goes on), and to no other trial.
        """
        for table in self._by_experiment.values():
            for tid in (*table.reserved, *table.waiting[TrialStatus.INTERRUPTED]):
                self.vanished[tid] = why
                self.vanished.move_to_end(tid)
        while len(self.vanished) > REMEMBERED:
            self.vanished.popitem(last=False)

    def _put_trial(self, trial: Trial) -> None:
        table = self._by_experiment.get(trial.experiment)
        if table is None:  # not setdefault(…, _ExperimentTrials()): that builds indexes on every record
            table = self._by_experiment[trial.experiment] = _ExperimentTrials()
        tid, status = trial.id, trial.status
        old = table.trials.get(tid)
        if old is not None:
            table.counts[old.status] -= 1
            table.unbudgeted -= old.status is not TrialStatus.BROKEN and not old.in_budget
            if old.status in table.waiting:
                table.waiting[old.status].pop(tid, None)
            elif old.status is TrialStatus.RESERVED:
                table.reserved.pop(tid, None)
            table.changed.pop(tid, None)
        table.trials[tid] = trial
        table.counts[status] += 1
        table.unbudgeted += status is not TrialStatus.BROKEN and not trial.in_budget
        if status in table.waiting:
            table.waiting[status][tid] = None
        elif status is TrialStatus.RESERVED:
            table.reserved[tid] = None
        table.changed[tid] = self.seq
        self._owner_of[tid] = trial.experiment

    def apply_all(self, records: Iterable[Record]) -> list[Record]:
        """Apply records in order, as one batch (see :meth:`replay`), and return them as a list."""
        applied: list[Record] = []
        with self._batch():
            for record in records:
                self.apply(record)
                applied.append(record)
        return applied

    def replay(self, batches: Iterable[Iterable[Record]]) -> None:
        """Apply the records of a log, as one batch: nothing is handed out before it ends.

        A trial stored by an earlier record of the batch is then changed in place by the
        later ones (its reports appended to, not copied), since no one else holds it.
        """
        with self._batch():
            for batch in batches:
                for record in batch:
                    self.apply(record)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """Records applied inside may change the trials built inside in place (see :meth:`_report`)."""
        if self._unseen is not None:  # already in one
            yield
            return
        self._unseen = set()
        try:
            yield
        finally:
            self._unseen = None

    def snapshot(self) -> Iterator[Record]:
        """Records that rebuild the current state from an empty table (for compaction), made one at a time."""
        yield from ({"op": "experiment", "record": exp.to_dict()} for exp in self._experiments.values())
        for table in self._by_experiment.values():
            yield from (_trial_record(table.trials[tid]) for tid in table.changed)

    # -- lookups ---------------------------------------------------------------

    def _experiment(self, experiment_id: str) -> _ExperimentTrials:
        if experiment_id not in self._experiments:
            if experiment_id in self._deleted:
                raise ExperimentNotFoundError(self._deleted_under_us(experiment_id))
            raise ExperimentNotFoundError(f"no experiment with id {experiment_id!r} in the storage")
        return self._by_experiment[experiment_id]

    def _deleted_under_us(self, experiment_id: str) -> str:
        return (f"experiment {self._deleted[experiment_id][0]!r} (id {experiment_id}) was deleted from the storage "
                "(`orchard db rm`?) while this process was using it; its trials and results are gone")

    def _missing(self, trial_id_: str) -> StorageError:
        """The error for a trial that does not exist, saying so if its experiment was deleted or its file replaced."""
        if trial_id_ in self._deleted_trials:
            return TrialNotFoundError(
                f"no trial with id {trial_id_!r} in the storage: {self._deleted_under_us(self._deleted_trials[trial_id_])}")
        if trial_id_ in self.vanished:
            return ReservationLostError(f"no trial with id {trial_id_!r} in the storage: {self.vanished[trial_id_]}")
        return TrialNotFoundError.missing(trial_id_)

    def experiment_named(self, name: str) -> ExperimentRecord | None:
        """The experiment called ``name``, or ``None``."""
        exp_id = self._names.get(name)
        return None if exp_id is None else self._experiments[exp_id]

    def experiment(self, experiment_id: str) -> ExperimentRecord:
        """The experiment with that id (raises :class:`ExperimentNotFoundError`)."""
        self._experiment(experiment_id)
        return self._experiments[experiment_id]

    def list_experiments(self) -> list[ExperimentRecord]:
        """Every experiment, oldest first."""
        return sorted(self._experiments.values(), key=lambda e: e.created)

    def waiting(self, experiment_id: str) -> int:
        """How many trials of the experiment a worker could reserve now."""
        table = self._experiment(experiment_id)
        return len(table.waiting[TrialStatus.NEW]) + len(table.waiting[TrialStatus.INTERRUPTED])

    def holds_any(self, experiment_id: str, leases: Mapping[str, Lease]) -> bool:
        """Whether any of ``leases`` still holds: its trial reserved with that worker and heartbeat."""
        table = self._experiment(experiment_id)
        return any(tid in table.reserved and table.trials[tid].lease == lease for tid, lease in leases.items())

    def trial(self, trial_id_: str) -> Trial | None:
        exp_id = self._owner_of.get(trial_id_)
        if exp_id is None:
            return None
        return self._by_experiment[exp_id].trials.get(trial_id_)

    def _stored(self, trial_id_: str) -> Trial:
        return self._by_experiment[self._owner_of[trial_id_]].trials[trial_id_]

    def _change(self, trial_id_: str, change: transitions.Change) -> tuple[Trial, list[Record]]:
        """Apply one arrow of the lifecycle to the stored trial (raises its refusal)."""
        trial = self.trial(trial_id_)
        if trial is None:
            raise self._missing(trial_id_)
        fresh = change.applied_to(trial, trial_id_)
        record = _trial_record(fresh)
        self.apply(record)
        return self._stored(trial_id_), [record]

    # -- verbs: each returns the records to apply (and apply() them) -------------

    def create_experiment(self, name: str, config: Mapping[str, Any], now: float,
                          keep_id: str | None = None) -> tuple[str, list[Record]]:
        if name in self._names:
            return self._names[name], []
        experiment_id = new_experiment_id(keep_id, self._experiments.keys() | self._deleted.keys())
        record = ExperimentRecord(experiment_id, name, to_builtin(dict(config)), now)
        return record.id, self.apply_all([{"op": "experiment", "record": record.to_dict()}])

    def update_experiment(
        self, experiment_id: str, changes: Mapping[str, Any]
    ) -> tuple[ExperimentRecord, list[Record]]:
        exp = self.experiment(experiment_id)
        config = {**exp.config, **to_builtin(dict(changes))}
        record = dataclasses.replace(exp, config=config)
        records = self.apply_all([{"op": "experiment", "record": record.to_dict()}])
        return self._experiments[experiment_id], records

    def swap_experiment(
        self, experiment_id: str, key: str, expected: Any, value: Any
    ) -> tuple[bool, list[Record]]:
        if self.experiment(experiment_id).config.get(key) != expected:
            return False, []
        return True, self.update_experiment(experiment_id, {key: value})[1]

    def delete_experiment(self, experiment_id: str) -> tuple[int, list[Record]]:
        table = self._by_experiment.get(experiment_id)
        count = 0 if table is None else len(table.trials)
        if experiment_id not in self._experiments:
            return 0, []
        return count, self.apply_all([{"op": "drop", "experiment": experiment_id}])

    def _admit(self, experiment_id: str, params: Mapping[str, Any], budget: int | None) -> tuple[str, dict[str, Any]]:
        """The id and plain params of a trial the experiment can take (duplicates checked before the budget)."""
        table = self._experiment(experiment_id)
        point: dict[str, Any] = to_builtin(dict(params))
        tid = trial_id(experiment_id, point)
        if tid in table.trials:
            raise DuplicateTrialError(
                f"experiment {self._experiments[experiment_id].name!r} already has a trial "
                f"with params {point!r} (trial {tid})"
            )
        if budget is not None:
            held = sum(table.counts.values()) - table.counts[TrialStatus.BROKEN] - table.unbudgeted
            if held >= budget:
                raise BudgetExhaustedError(
                    f"experiment {self._experiments[experiment_id].name!r} has used its budget: "
                    f"{held} of max_trials={budget} trials exist; raise max_trials to add more"
                )
        return tid, point

    def register_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        worker: str | None,
        budget: int | None,
        now: float,
        parent: str | None = None,
    ) -> tuple[Trial, list[Record]]:
        tid, point = self._admit(experiment_id, params, budget)
        trial = Trial(id=tid, experiment=experiment_id, params=point, submit_time=now, parent=parent)
        if worker is not None:
            trial = transitions.reserve(worker, now).applied_to(trial)  # registered and reserved at once
        records = self.apply_all([_trial_record(trial)])
        return trial, records

    def record_trial(self, experiment_id: str, params: Mapping[str, Any], objective: float, results: Mapping[str, Any],
                     budget: int | None, in_budget: bool, now: float) -> tuple[Trial, list[Record]]:
        tid, point = self._admit(experiment_id, params, budget if in_budget else None)
        trial = transitions.recorded(tid, experiment_id, point, objective, to_builtin(dict(results)), now, in_budget)
        return trial, self.apply_all([_trial_record(trial)])

    def unbudgeted(self, experiment_id: str) -> int:
        """How many trials of the experiment were recorded apart from the budget."""
        return self._experiment(experiment_id).unbudgeted

    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> tuple[int, list[Record]]:
        table = self._experiment(experiment_id)
        records: list[Record] = []
        for trial in trials:
            tid = trial_id(experiment_id, trial.params)
            if tid in table.trials and not finishes(table.trials[tid], trial):
                continue
            fresh = dataclasses.replace(trial, id=tid, experiment=experiment_id)
            records.append(self.apply_all([_trial_record(fresh)])[0])
        return len(records), records

    def reserve_trial(self, experiment_id: str, worker: str, now: float) -> tuple[Trial | None, list[Record]]:
        table, aside = self._experiment(experiment_id), list[Record]()  # waiting trials set aside: damaged
        for status in (TrialStatus.INTERRUPTED, TrialStatus.NEW):
            while table.waiting[status]:
                tid = next(iter(table.waiting[status]))
                if (broken := set_aside(table.trials[tid], now)) is None:
                    won, records = self._change(tid, transitions.reserve(worker, now))
                    return won, aside + records
                aside += self.apply_all([_trial_record(broken)])
        return None, aside

    def heartbeat_trial(self, trial_id_: str, worker: str, now: float) -> list[Record]:
        return self._change(trial_id_, transitions.heartbeat(worker, now))[1]

    def complete_trial(
        self, trial_id_: str, worker: str, objective: float, results: Mapping[str, Any] | None, now: float
    ) -> tuple[Trial, list[Record]]:
        return self._change(
            trial_id_, transitions.complete(worker, objective, to_builtin(dict(results or {})), now)
        )

    def fail_trial(
        self, trial_id_: str, worker: str, error: Mapping[str, Any], now: float
    ) -> tuple[Trial, list[Record]]:
        return self._change(trial_id_, transitions.fail(worker, to_builtin(dict(error)), now))

    def report_trial(
        self, trial_id_: str, worker: str, step: Any, value: Any, now: float
    ) -> tuple[Trial, list[Record]]:
        trial = self.trial(trial_id_)
        if trial is None:
            raise self._missing(trial_id_)
        refusal = transitions.held_by(worker).refusal(trial_id_, trial)  # the owner first, then the step
        if refusal is not None:
            raise refusal
        last = trial.reports[-1][0] if trial.reports else None
        change = transitions.report(trial_id_, worker, step, value, now, len(trial.reports), last)
        (step_, value_) = change.appends["reports"]
        stored = list(value_) if isinstance(value_, tuple) else value_  # records hold plain JSON values
        record = {"op": "report", "trial": trial_id_, "step": step_, "value": stored, "heartbeat": now}
        self.apply(record)
        return self._stored(trial_id_), [record]

    def prune_trial(
        self, trial_id_: str, worker: str, verdict: Mapping[str, Any], now: float
    ) -> tuple[Trial, list[Record]]:
        trial = self.trial(trial_id_)
        if trial is None:
            raise self._missing(trial_id_)
        refusal = transitions.held_by(worker).refusal(trial_id_, trial)  # the owner first, then its reports
        if refusal is not None:
            raise refusal
        return self._change(trial_id_, transitions.prune(trial, worker, to_builtin(dict(verdict)), now))

    def release_trial(self, trial_id_: str, worker: str | None) -> tuple[Trial, list[Record]]:
        trial = self.trial(trial_id_)
        if trial is None:
            raise self._missing(trial_id_)
        return self._change(trial_id_, transitions.release(trial, worker))

    def release_lost(
        self, experiment_id: str, leases: Mapping[str, Lease], max_attempts: int, now: float
    ) -> tuple[list[Trial], list[Record]]:
        table = self._experiment(experiment_id)
        taken: list[Trial] = []
        records: list[Record] = []
        for tid, lease in leases.items():
            trial = table.trials.get(tid)
            change = None if trial is None else transitions.take_back(trial, lease, max_attempts, now)
            if trial is not None and change is not None and change.holds(trial):
                if (broken := set_aside(trial, now)) is not None:  # its record is damaged
                    records += self.apply_all([_trial_record(broken)])
                    continue
                fresh, applied = self._change(tid, change)
                taken.append(fresh)
                records.extend(applied)
        return taken, records

    # -- reads -----------------------------------------------------------------

    def fetch_trials(self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None) -> list[Trial]:
        table = self._experiment(experiment_id)
        trials = table.trials.values()
        if statuses is not None:
            wanted = {TrialStatus(s) for s in statuses}
            trials = [t for t in trials if t.status in wanted]  # type: ignore[assignment]
        return sorted(trials, key=lambda t: (t.submit_time or 0.0))

    def changes_since(self, experiment_id: str, seq: int) -> list[Trial]:
        """Trials of the experiment changed after global sequence number ``seq``."""
        table = self._experiment(experiment_id)
        changed: list[Trial] = []
        for tid in reversed(table.changed):
            if table.changed[tid] <= seq:
                break
            changed.append(table.trials[tid])
        changed.reverse()
        return changed

    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        return dict(self._experiment(experiment_id).counts)


def _trial_record(trial: Trial) -> Record:
    """The record that stores ``trial`` (:meth:`Trial.to_record`: its fields at their default left out)."""
    return {"op": "trial", "trial": trial.to_record()}


def _copied(trial: Trial) -> Trial:
    """A copy of the stored ``trial`` with its own reports list (the rest is never mutated: shared)."""
    copied = object.__new__(type(trial))  # field by field: dataclasses.replace would re-run __init__
    copied.__dict__.update(trial.__dict__)
    copied.reports = list(trial.reports)  # (reading a lazy trial's reports decodes the stored one)
    return copied
