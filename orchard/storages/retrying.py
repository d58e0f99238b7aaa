"""A storage wrapper that rides out outages: transient errors are retried with backoff.

A MongoDB restart or election, an NFS stall, a lock held a few seconds too
long: each raises :class:`~orchard.errors.StorageUnavailableError` for a
while, then the storage works again. A worker must not lose a finished
result to that (SPEC §5.9), so the worker wraps its storage in
:class:`RetryingStorage`, which retries every verb that failed that way,
waiting longer each time, until it succeeds or ``patience`` seconds have
passed (the worker's ``storage_patience``, ``ORCHARD_STORAGE_PATIENCE``,
default 10 minutes, never less than the lease ``3 × heartbeat``: a
reservation cannot be proved lost sooner). A result computed meanwhile is
kept in memory and its write tried until the storage answers; the storage
then says whether the reservation is still the worker's (the result is
written) or was taken back during an outage longer than the lease (the write
is refused like any late result: :class:`~orchard.errors.ReservationLostError`,
and the trial runs again elsewhere). Each outage a call rode out
costs one log line saying what happened, and sets :attr:`RetryingStorage.recovered_at`:
no worker's heartbeat could land during the outage, so the worker's lease
observer starts its watches over instead of taking an outage for a dead owner.

A write whose reply was lost may have been applied: its retry then meets its
own effect (the trial already completed by this worker, the params already
registered and reserved by it, the report already stored at its step). Such a
retry is *settled*: the stored trial is read, and returned if it shows the write
took effect. A reservation whose reply
was lost is taken up by the retry (a trial reserved by the worker that this
handle never returned), instead of being held by nobody until its lease runs
out and then counted as a lost attempt; the wrapped storage takes it up as a
reservation it handed out (:meth:`BaseStorage.take_up_reserved`).

Errors before the first call that succeeded are not retried, unless the
storage says it had been reached (:attr:`StorageUnavailableError.reached`: it
answered this process before, or was lost in the middle of a call): a storage
that never answered is misconfigured (a wrong host, password or lock kind)
more likely than down, and the user should hear so at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from orchard.errors import DuplicateTrialError, InvalidReportError, ReservationLostError, StorageUnavailableError
from orchard.space import to_builtin, trial_id
from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.trial import Lease, ReportValue, Trial, TrialStatus, report_value

__all__ = ["RetryingStorage"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Reads the storage after a retry was refused; returns the write's result if it had taken effect.
Settle = Callable[[], "Trial | None"]

_FIRST_DELAY, _MAX_DELAY = 0.1, 2.0


class RetryingStorage(BaseStorage):
    """Wraps a storage; retries its :class:`~orchard.errors.StorageUnavailableError` with backoff.

    Guarantees: a verb returns what the wrapped storage's verb returns, once
    it succeeds within ``patience`` seconds of its first transient failure;
    otherwise the last :class:`~orchard.errors.StorageUnavailableError` is
    raised. Every other error passes through at once, except a
    refusal met by the retry of a write that had in fact been applied (it
    is settled, see the module docstring).

    Args:
        storage: the storage to wrap.
        patience: seconds to keep retrying one call (at least the lease, ``3 × heartbeat``).
        clock: a monotonic clock (injectable for tests).
        sleep: waits between tries (injectable for tests).
    """

    def __init__(self, storage: BaseStorage, patience: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.storage = storage
        self.uri = storage.uri
        self.stamps_in_order = storage.stamps_in_order
        self.patience = patience
        self._clock, self._sleep = clock, sleep
        self._answered = False
        self._handed: set[str] = set()  # trials this handle returned reserved (see reserve_trial)
        #: The ``clock`` time at which the last outage this handle rode out ended (``None``: none yet).
        #: Other workers' heartbeats could not land meanwhile either, so a lease observer must not
        #: count an outage as time in which a heartbeat stood still (:meth:`LeaseObserver.restart`).
        self.recovered_at: float | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (RetryingStorage, (self.storage, self.patience))

    def close(self) -> None:
        """Close the wrapped storage."""
        self.storage.close()

    # -- the retry loop ---------------------------------------------------------

    def retry(self, action: str, call: Callable[[], T]) -> T:
        """Run ``call`` (several verbs of the wrapped storage, safe to run again from its start)
        under the rule every verb of this wrapper follows (see the class docstring)."""
        return self._retry(action, call)

    def _retry(self, action: str, call: Callable[[], T], settle: Settle | None = None) -> T:
        """Run ``call`` until it succeeds or ``patience`` runs out (see the class docstring).

        The outage logged starts when the first failed attempt was made (a call to a server
        that is down fails only after its selection timeout); patience counts from its failure.
        """
        outage: tuple[float, float] | None = None  # (first failed attempt made, its failure seen)
        tries, delay = 0, _FIRST_DELAY

        def once() -> T:
            try:
                return call()
            except (ReservationLostError, DuplicateTrialError, InvalidReportError):  # maybe its own effect
                settled = settle() if settle is not None and outage is not None else None  # may meet the outage
                if settled is None:
                    raise
                return settled  # type: ignore[return-value]  # the settled verbs return a Trial

        while True:
            attempt = self._clock()
            try:
                result = once()
            except StorageUnavailableError as err:
                if not (self._answered or err.reached):
                    raise
                self._answered = True  # it exists: a later "no answer" is the same outage
                tries += 1
                now = self._clock()
                outage = outage or (attempt, now)
                left = outage[1] + self.patience - now
                if left <= 0:
                    log.error("storage %s: could not %s for %.1f s (%d tries), giving up after the "
                              "storage patience of %g s (ORCHARD_STORAGE_PATIENCE): %s",
                              self.redacted_uri, action, now - outage[0], tries, self.patience, err)
                    raise
                self._sleep(min(delay * random.uniform(0.5, 1.0), left))
                delay = min(2 * delay, _MAX_DELAY)
                continue
            self._answered = True
            if outage is not None:
                self.recovered_at = self._clock()
                log.warning("storage %s was unavailable for %.1f s while trying to %s; "
                            "succeeded after %d retries", self.redacted_uri, self.recovered_at - outage[0],
                            action, tries)
            return result

    def _stored(self, trial_id_: str, expect: Callable[[Trial], bool]) -> Trial | None:
        trial = self.storage.get_trial(trial_id_)
        return trial if trial is not None and expect(trial) else None

    # -- experiments ------------------------------------------------------------

    def create_experiment(self, name: str, config: Mapping[str, Any], created: float | None = None,
                          keep_id: str | None = None) -> str:
        """See :meth:`BaseStorage.create_experiment`."""
        return self._retry(f"create experiment {name!r}",
                           lambda: self.storage.create_experiment(name, config, created, keep_id))

    def get_experiment(self, name: str) -> ExperimentRecord | None:
        """See :meth:`BaseStorage.get_experiment`."""
        return self._retry(f"read experiment {name!r}", lambda: self.storage.get_experiment(name))

    def list_experiments(self) -> list[ExperimentRecord]:
        """See :meth:`BaseStorage.list_experiments`."""
        return self._retry("list experiments", self.storage.list_experiments)

    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        """See :meth:`BaseStorage.update_experiment`."""
        return self._retry("update an experiment", lambda: self.storage.update_experiment(experiment_id, changes))

    def experiment(self, experiment_id: str) -> ExperimentRecord:
        """See :meth:`BaseStorage.experiment`."""
        return self._retry("read an experiment", lambda: self.storage.experiment(experiment_id))

    def swap_experiment(self, experiment_id: str, key: str, expected: Any, value: Any) -> bool:
        """See :meth:`BaseStorage.swap_experiment`; a retried swap that had landed returns ``False``."""
        return self._retry("update an experiment",
                           lambda: self.storage.swap_experiment(experiment_id, key, expected, value))

    def delete_experiment(self, experiment_id: str) -> int:
        """See :meth:`BaseStorage.delete_experiment`."""
        return self._retry("delete an experiment", lambda: self.storage.delete_experiment(experiment_id))

    # -- trials -----------------------------------------------------------------

    def register_trial(self, experiment_id: str, params: Mapping[str, Any], *, worker: str | None = None,
                       budget: int | None = None, parent: str | None = None) -> Trial:
        """See :meth:`BaseStorage.register_trial`."""
        tid = trial_id(experiment_id, to_builtin(dict(params)))
        trial = self._retry(
            "register a trial",
            lambda: self.storage.register_trial(experiment_id, params, worker=worker, budget=budget, parent=parent),
            None if worker is None else lambda: self._stored(tid, lambda t: t.lease is not None and t.worker == worker),
        )
        if worker is not None:
            self._handed.add(trial.id)
        return trial

    def record_trial(self, experiment_id: str, params: Mapping[str, Any], objective: float,
                     results: Mapping[str, Any], *, budget: int | None = None, in_budget: bool = False) -> Trial:
        """See :meth:`BaseStorage.record_trial`; a try whose reply was lost is found stored, not repeated."""
        tid = trial_id(experiment_id, to_builtin(dict(params)))
        return self._retry(
            "record a trial",
            lambda: self.storage.record_trial(experiment_id, params, objective, results, budget=budget,
                                              in_budget=in_budget),
            lambda: self._stored(tid, lambda t: t.origin is not None and t.status is TrialStatus.COMPLETED),
        )

    def count_unbudgeted(self, experiment_id: str) -> int:
        """See :meth:`BaseStorage.count_unbudgeted`."""
        return self._retry("count trials", lambda: self.storage.count_unbudgeted(experiment_id))

    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        """See :meth:`BaseStorage.restore_trials`."""
        trials = list(trials)
        return self._retry("restore trials", lambda: self.storage.restore_trials(experiment_id, trials))

    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        """See :meth:`BaseStorage.reserve_trial`.

        A reservation whose reply was lost is not left held by nobody until its
        lease runs out (and then counted as a lost attempt): once a try has
        failed, the next one first looks for a trial reserved by ``worker`` that
        this handle never handed out, and returns it instead of reserving another.
        """
        failed = False

        def attempt() -> Trial | None:
            nonlocal failed
            if failed:
                orphan = self._orphan(experiment_id, worker)
                if orphan is not None:
                    log.warning("storage %s: the reply reserving trial %s for %s was lost in the outage; "
                                "the reservation is taken up", self.redacted_uri, orphan.id, worker)
                    return orphan
            try:
                return self.storage.reserve_trial(experiment_id, worker)
            except StorageUnavailableError:
                failed = True
                raise

        trial = self._retry("reserve a trial", attempt)
        if trial is not None:
            self._handed.add(trial.id)
        return trial

    def _finishing(self, trial_id_: str, action: str, call: Callable[[], Trial], settle: Settle) -> Trial:
        """A write ending this worker's hold on the trial: done or refused, the trial is forgotten.

        A refused one (taken back after an outage longer than the lease) stayed remembered, so its next
        reservation by this worker, often the very next (interrupted trials go first), was never taken up
        when its reply was lost.
        """
        try:
            return self._retry(action, call, settle)
        finally:
            self._handed.discard(trial_id_)

    def _orphan(self, experiment_id: str, worker: str) -> Trial | None:
        """A trial reserved by ``worker`` that this handle never returned: its reply was lost.

        Worker names are unique to one worker, which reserves through one handle.
        """
        held = self.storage.take_up_reserved(experiment_id, worker)
        return next((t for t in held if t.id not in self._handed), None)

    def take_up_reserved(self, experiment_id: str, worker: str) -> list[Trial]:
        """See :meth:`BaseStorage.take_up_reserved`."""
        return self._retry("read reserved trials",
                           lambda: self.storage.take_up_reserved(experiment_id, worker))

    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        """See :meth:`BaseStorage.heartbeat_trial`."""
        self._retry(f"heartbeat trial {trial_id}", lambda: self.storage.heartbeat_trial(trial_id, worker))

    def complete_trial(self, trial_id: str, worker: str, objective: float,
                       results: Mapping[str, Any] | None = None) -> Trial:
        """See :meth:`BaseStorage.complete_trial`."""
        return self._finishing(
            trial_id, f"complete trial {trial_id}",
            lambda: self.storage.complete_trial(trial_id, worker, objective, results),
            lambda: self._stored(trial_id, lambda t: t.status is TrialStatus.COMPLETED
                                 and t.worker == worker and t.objective == float(objective)),
        )

    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        """See :meth:`BaseStorage.fail_trial`."""
        return self._finishing(
            trial_id, f"mark trial {trial_id} broken",
            lambda: self.storage.fail_trial(trial_id, worker, error),
            lambda: self._stored(trial_id, lambda t: t.status is TrialStatus.BROKEN and t.worker == worker
                                 and (t.error or {}).get("type") == error.get("type")),
        )

    def report_trial(self, trial_id: str, worker: str, step: int, value: ReportValue) -> Trial:
        """See :meth:`BaseStorage.report_trial`."""
        return self._retry(
            f"store a report of trial {trial_id}",
            lambda: self.storage.report_trial(trial_id, worker, step, value),
            lambda: self._stored(trial_id, lambda t: t.status is TrialStatus.RESERVED and t.worker == worker
                                 and bool(t.reports) and t.reports[-1] == (step, report_value(value))),
        )

    def prune_trial(self, trial_id: str, worker: str, verdict: Mapping[str, Any]) -> Trial:
        """See :meth:`BaseStorage.prune_trial`."""
        return self._finishing(
            trial_id, f"prune trial {trial_id}",
            lambda: self.storage.prune_trial(trial_id, worker, verdict),
            lambda: self._stored(trial_id, lambda t: t.status is TrialStatus.PRUNED and t.worker == worker),
        )

    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        """See :meth:`BaseStorage.release_trial`."""
        return self._finishing(
            trial_id, f"release trial {trial_id}",
            lambda: self.storage.release_trial(trial_id, worker),
            lambda: self._stored(trial_id, lambda t: t.status is TrialStatus.INTERRUPTED),
        )

    def release_lost(self, experiment_id: str, leases: Mapping[str, Lease], max_attempts: int) -> list[Trial]:
        """See :meth:`BaseStorage.release_lost`."""
        return self._retry("release lost trials",
                           lambda: self.storage.release_lost(experiment_id, leases, max_attempts))

    def get_trial(self, trial_id: str) -> Trial | None:
        """See :meth:`BaseStorage.get_trial`."""
        return self._retry(f"read trial {trial_id}", lambda: self.storage.get_trial(trial_id))

    def fetch_trials(self, experiment_id: str,
                     statuses: Iterable[TrialStatus | str] | None = None) -> list[Trial]:
        """See :meth:`BaseStorage.fetch_trials`."""
        wanted = None if statuses is None else list(statuses)
        return self._retry("fetch trials", lambda: self.storage.fetch_trials(experiment_id, wanted))

    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        """See :meth:`BaseStorage.fetch_changes`."""
        return self._retry("fetch changed trials", lambda: self.storage.fetch_changes(experiment_id, cursor))

    def resent_everything(self, before: Any, after: Any) -> bool:
        """See :meth:`BaseStorage.resent_everything`."""
        return self.storage.resent_everything(before, after)

    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        """See :meth:`BaseStorage.count_trials`."""
        return self._retry("count trials", lambda: self.storage.count_trials(experiment_id))
