"""The storage verbs of the local backends, once, over a :class:`TrialTable` and two hooks.

:class:`TableStorage` implements every verb of
:class:`~orchard.storages.base.BaseStorage` on a
:class:`~orchard.storages.table.TrialTable`. A backend supplies only how the
table is reached:

* ``_read(query)`` runs ``query(table)`` on an up-to-date table;
* ``_write(verb)`` runs ``verb(table, now)`` atomically with respect to every
  other writer, makes the records it returns durable, and returns its result.

``memory://`` implements both with a thread lock; the pickle file with its
file lock and its log. Everything either hook returns passes through
:func:`_detached` here, the one place records are copied on the way out, so a
caller that mutates a returned trial or experiment never changes the storage.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.storages.lazy import LazyTrial
from orchard.storages.table import Record, TrialTable
from orchard.storages.values import check_error, check_params
from orchard.trial import Lease, ReportValue, Trial, TrialStatus

__all__ = ["Query", "TableStorage", "Verb"]

_T = TypeVar("_T")
Query = Callable[[TrialTable], _T]
Verb = Callable[[TrialTable, float], tuple[_T, list[Record]]]


def _plain_copy(value: Any) -> Any:
    """A copy of nested plain dicts and lists (cheaper than ``copy.deepcopy`` on records).

    A dict is copied whole and only its lists and dicts copied again: every trial a refresh returns passes here.
    """
    if type(value) is dict:
        copied = value.copy()
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                copied[key] = _plain_copy(item)
        return copied
    if type(value) is list:
        return [_plain_copy(item) if type(item) is dict or type(item) is list else item for item in value]
    return value


def _detached(value: Any) -> Any:
    """A copy of ``value`` sharing nothing mutable with the table (trials, experiments, lists of them)."""
    if isinstance(value, LazyTrial) and value.undecoded:  # decodes its own fields when read
        return value.lazy_copy()
    if isinstance(value, Trial):  # field by field: dataclasses.replace would re-run __init__
        copied = object.__new__(type(value))
        copied.__dict__.update(value.__dict__)
        copied.params = dict(value.params)
        copied.results = _plain_copy(value.results)
        copied.error = None if value.error is None else _plain_copy(value.error)
        copied.reports = list(value.reports)  # (step, value) tuples: the list is what a caller may change
        copied.verdict = None if value.verdict is None else _plain_copy(value.verdict)
        return copied
    if isinstance(value, ExperimentRecord):
        return dataclasses.replace(value, config=_plain_copy(value.config))
    if isinstance(value, list):
        return [_detached(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_detached(item) for item in value)
    return value


class TableStorage(BaseStorage):
    """A storage whose state is a :class:`TrialTable` reached through ``_read`` and ``_write``.

    Guarantees (given hooks that keep theirs): every verb is atomic, and every
    record returned is a copy the caller owns.
    """

    @abc.abstractmethod
    def _read(self, query: Query[_T]) -> _T:
        """Run ``query`` on the up-to-date table and return its result (not yet copied)."""

    @abc.abstractmethod
    def _write(self, verb: Verb[_T]) -> _T:
        """Run ``verb`` atomically on the up-to-date table, keep its records, return its result."""

    @abc.abstractmethod
    def _replay_token(self) -> str:
        """Names the table's current replay: ``fetch_changes`` cursors from another replay mean nothing."""

    def _view(self, query: Query[_T]) -> _T:
        return _detached(self._read(query))  # type: ignore[no-any-return]

    def _change(self, verb: Verb[_T]) -> _T:
        return _detached(self._write(verb))  # type: ignore[no-any-return]

    # -- experiments -----------------------------------------------------------

    def create_experiment(self, name: str, config: Mapping[str, Any], created: float | None = None,
                          keep_id: str | None = None) -> str:
        """See :meth:`BaseStorage.create_experiment`."""
        if (existing := self.get_experiment(name)) is not None:
            return existing.id
        return self._change(lambda table, now: table.create_experiment(
            name, config, now if created is None else created, keep_id))

    def get_experiment(self, name: str) -> ExperimentRecord | None:
        """See :meth:`BaseStorage.get_experiment`."""
        return self._view(lambda table: table.experiment_named(name))

    def list_experiments(self) -> list[ExperimentRecord]:
        """See :meth:`BaseStorage.list_experiments`."""
        return self._view(lambda table: table.list_experiments())

    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        """See :meth:`BaseStorage.update_experiment`."""
        return self._change(lambda table, now: table.update_experiment(experiment_id, changes))

    def experiment(self, experiment_id: str) -> ExperimentRecord:
        """See :meth:`BaseStorage.experiment`."""
        return self._view(lambda table: table.experiment(experiment_id))

    def swap_experiment(self, experiment_id: str, key: str, expected: Any, value: Any) -> bool:
        """See :meth:`BaseStorage.swap_experiment`."""
        return self._change(lambda table, now: table.swap_experiment(experiment_id, key, expected, value))

    def delete_experiment(self, experiment_id: str) -> int:
        """See :meth:`BaseStorage.delete_experiment`."""
        return self._change(lambda table, now: table.delete_experiment(experiment_id))

    # -- trials: writing -------------------------------------------------------

    def register_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        *,
        worker: str | None = None,
        budget: int | None = None,
        parent: str | None = None,
    ) -> Trial:
        """See :meth:`BaseStorage.register_trial`."""
        check_params(params)
        return self._change(
            lambda table, now: table.register_trial(experiment_id, params, worker, budget, now, parent)
        )

    def record_trial(
        self, experiment_id: str, params: Mapping[str, Any], objective: float, results: Mapping[str, Any], *,
        budget: int | None = None, in_budget: bool = False,
    ) -> Trial:
        """See :meth:`BaseStorage.record_trial`."""
        check_params(params)
        return self._change(lambda table, now: table.record_trial(
            experiment_id, params, objective, results, budget, in_budget, now))

    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        """See :meth:`BaseStorage.restore_trials`."""
        trials = list(trials)
        return self._change(lambda table, now: table.restore_trials(experiment_id, trials))

    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        """See :meth:`BaseStorage.reserve_trial`."""
        if not self._read(lambda table: table.waiting(experiment_id)):
            return None  # nothing to reserve right now: no need to write
        return self._change(lambda table, now: table.reserve_trial(experiment_id, worker, now))

    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        """See :meth:`BaseStorage.heartbeat_trial`."""
        self._write(lambda table, now: (None, table.heartbeat_trial(trial_id, worker, now)))

    def complete_trial(
        self, trial_id: str, worker: str, objective: float, results: Mapping[str, Any] | None = None
    ) -> Trial:
        """See :meth:`BaseStorage.complete_trial`."""
        return self._change(lambda table, now: table.complete_trial(trial_id, worker, objective, results, now))

    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        """See :meth:`BaseStorage.fail_trial`."""
        check_error(error)
        return self._change(lambda table, now: table.fail_trial(trial_id, worker, error, now))

    def report_trial(self, trial_id: str, worker: str, step: int, value: ReportValue) -> Trial:
        """See :meth:`BaseStorage.report_trial`."""
        return self._change(lambda table, now: table.report_trial(trial_id, worker, step, value, now))

    def prune_trial(self, trial_id: str, worker: str, verdict: Mapping[str, Any]) -> Trial:
        """See :meth:`BaseStorage.prune_trial`."""
        return self._change(lambda table, now: table.prune_trial(trial_id, worker, verdict, now))

    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        """See :meth:`BaseStorage.release_trial`."""
        return self._change(lambda table, now: table.release_trial(trial_id, worker))

    def release_lost(self, experiment_id: str, leases: Mapping[str, Lease], max_attempts: int) -> list[Trial]:
        """See :meth:`BaseStorage.release_lost`."""
        if not self._read(lambda table: table.holds_any(experiment_id, leases)):
            return []  # every lease moved on (or none was given): no need to write
        return self._change(lambda table, now: table.release_lost(experiment_id, leases, max_attempts, now))

    # -- trials: reading -------------------------------------------------------

    def get_trial(self, trial_id: str) -> Trial | None:
        """See :meth:`BaseStorage.get_trial`."""
        return self._view(lambda table: table.trial(trial_id))

    def fetch_trials(
        self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None = None
    ) -> list[Trial]:
        """See :meth:`BaseStorage.fetch_trials`."""
        return self._view(lambda table: table.fetch_trials(experiment_id, statuses))

    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        """See :meth:`BaseStorage.fetch_changes`.

        The cursor is ``(replay token, sequence number)``: sequence numbers only
        mean something within one replay of the table, so a cursor from another
        process, or from before this process replayed its file from scratch
        (another process compacted it), yields every trial.
        """

        def query(table: TrialTable) -> tuple[list[Trial], Any]:
            token = self._replay_token()
            fresh = isinstance(cursor, tuple) and len(cursor) == 2 and cursor[0] == token
            since = int(cursor[1]) if fresh else 0
            return table.changes_since(experiment_id, since), (token, table.seq)

        return self._view(query)

    def resent_everything(self, before: Any, after: Any) -> bool:
        """See :meth:`BaseStorage.resent_everything`: a cursor of another replay of the table."""
        return not (isinstance(before, tuple) and isinstance(after, tuple) and before[:1] == after[:1])

    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        """See :meth:`BaseStorage.count_trials`."""
        return self._read(lambda table: table.count_trials(experiment_id))

    def count_unbudgeted(self, experiment_id: str) -> int:
        """See :meth:`BaseStorage.count_unbudgeted` (a counter the table keeps)."""
        return self._read(lambda table: table.unbudgeted(experiment_id))
