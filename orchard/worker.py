"""The worker loop every Orchard worker runs, however it was started.

There is no master. Each iteration of :meth:`Worker.run` is::

    refresh the history view (incremental)
    stop if the budget is met or max_broken trials are broken
    release stale reservations (rate-limited)
    reserve an interrupted/new trial, or
        claim budget + register a pending-aware suggestion as our reservation
    evaluate it while a thread heartbeats
    complete or fail it (a lost reservation's result is refused by the storage)

Every race is settled by an atomic storage verb; the loop itself keeps no
state another worker depends on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from orchard.algorithms import make_algorithm
from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import (
    BudgetExhaustedError,
    DuplicateTrialError,
    ReservationLostError,
    SpaceExhaustedError,
    StorageError,
)
from orchard.objective import Outcome
from orchard.space import Space
from orchard.space import trial_id as params_trial_id
from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus

__all__ = ["History", "Pacemaker", "Worker", "WorkerReport", "WorkerSettings", "worker_name"]

log = logging.getLogger(__name__)

#: ``evaluate(trial) -> Outcome``; called with a reserved trial.
Evaluator = Callable[[Trial], Outcome]

_MAX_DUPLICATE_RETRIES = 20
_MIN_POLL, _MAX_POLL = 0.02, 1.0
#: Suggestions slower than this (a surrogate fit) are checked against points registered meanwhile;
#: faster ones leave racers no time to register a near-identical point (exact ones are refused anyway).
_RACE_CHECK_AFTER = 0.005


def worker_name() -> str:
    """A unique worker identity: ``host:pid:uuid``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass
class WorkerSettings:
    """Plain settings of one worker (resolved by the caller; never read from the environment)."""

    space: Space
    algorithm: Any
    max_trials: int | None
    max_broken: int = 3
    heartbeat: float = 30.0
    idle_timeout: float | None = None
    seed: int | None = None
    max_trials_per_worker: int | None = None

    @property
    def stale_after(self) -> float:
        """Age of a heartbeat past which a reservation is lost (3 × heartbeat)."""
        return 3.0 * self.heartbeat


@dataclasses.dataclass
class WorkerReport:
    """What one worker did, returned when its loop ends."""

    worker: str
    completed: int = 0
    broken: int = 0
    lost: int = 0
    reason: str = ""


class History:
    """A worker's incrementally refreshed view of one experiment's trials."""

    def __init__(self, storage: BaseStorage, experiment_id: str) -> None:
        self._storage = storage
        self._experiment_id = experiment_id
        self._cursor: Any = None
        self.trials: dict[str, Trial] = {}
        self.observations: list[Observation] = []  # completed trials, in the order they were seen
        self._pending: dict[str, dict[str, Any]] = {}
        self.seen = SeenPoints()  # every trial's params, kept incrementally
        self.counts: dict[TrialStatus, int] = {status: 0 for status in TrialStatus}

    def refresh(self) -> list[dict[str, Any]]:
        """Fold in the trials that changed since the last refresh; return newly pending params."""
        changed, self._cursor = self._storage.fetch_changes(self._experiment_id, self._cursor)
        arrived: list[dict[str, Any]] = []
        for trial in changed:
            old = self.trials.get(trial.id)
            if old is not None:
                self.counts[old.status] -= 1
            else:
                self.seen.add(trial.params)
            newly_completed = old is None or old.status is not TrialStatus.COMPLETED
            self.trials[trial.id] = trial
            self.counts[trial.status] += 1
            if trial.status.is_pending:
                if trial.id not in self._pending:
                    arrived.append(trial.params)
                self._pending[trial.id] = trial.params
            else:
                self._pending.pop(trial.id, None)
            if trial.status is TrialStatus.COMPLETED and trial.objective is not None and newly_completed:
                self.observations.append(Observation(trial.params, trial.objective))
        return arrived

    def pending(self, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Params being, or about to be, evaluated by anyone (plus ``extra``)."""
        return [*self._pending.values(), *(extra or [])]

    def others_reserved(self) -> bool:
        """Whether any trial is waiting or being evaluated (so waiting can pay off)."""
        return any(self.counts[s] for s in (TrialStatus.RESERVED, TrialStatus.NEW, TrialStatus.INTERRUPTED))


class Pacemaker:
    """One daemon thread that heartbeats every reservation it watches.

    Started on the first :meth:`watch`; beats every ``every`` seconds, so a watched
    trial's heartbeat is never older than ``every`` plus one storage write. A trial
    found no longer reserved by ``worker`` is dropped and reported by :meth:`unwatch`.
    """

    def __init__(self, storage: BaseStorage, worker: str, every: float) -> None:
        self._storage, self._worker, self._every = storage, worker, every
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, trial_id: str) -> None:
        """Start heartbeating ``trial_id``."""
        with self._lock:
            self._watched.add(trial_id)
            self._lost.discard(trial_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="orchard-pacemaker", daemon=True)
                self._thread.start()

    def unwatch(self, trial_id: str) -> bool:
        """Stop heartbeating ``trial_id``; return whether its reservation was found lost."""
        with self._lock:
            self._watched.discard(trial_id)
            lost = trial_id in self._lost
            self._lost.discard(trial_id)
            return lost

    def is_lost(self, trial_id: str) -> bool:
        """Whether a heartbeat found ``trial_id`` no longer reserved by this worker."""
        with self._lock:
            return trial_id in self._lost

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                watched = list(self._watched)
            for trial_id in watched:
                try:
                    self._storage.heartbeat_trial(trial_id, self._worker)
                except ReservationLostError:
                    with self._lock:
                        if trial_id in self._watched:
                            self._watched.discard(trial_id)
                            self._lost.add(trial_id)
                except StorageError as err:  # transient: try again next beat
                    log.warning("heartbeat of trial %s failed: %s", trial_id, err)


class Worker:
    """One masterless worker: runs trials of one experiment until there is nothing left to do.

    Args:
        storage: the shared storage.
        experiment_id: the experiment to work on.
        settings: budget, heartbeat and algorithm settings.
        evaluate: called with each reserved trial; returns its :class:`Outcome`.
        name: the worker identity written into reservations (default: host:pid:uuid).
        on_outcome: called after each finished trial with ``(trial, outcome)``.
    """

    def __init__(
        self,
        storage: BaseStorage,
        experiment_id: str,
        settings: WorkerSettings,
        evaluate: Evaluator,
        name: str | None = None,
        on_outcome: Callable[[Trial, Outcome], None] | None = None,
    ) -> None:
        self.storage = storage
        self.experiment_id = experiment_id
        self.settings = settings
        self.evaluate = evaluate
        self.name = name or worker_name()
        self.on_outcome = on_outcome
        self.history = History(storage, experiment_id)
        self.algorithm: BaseAlgorithm = make_algorithm(settings.algorithm, settings.space, settings.seed)
        self.report = WorkerReport(self.name)
        self.pacemaker = Pacemaker(storage, self.name, settings.heartbeat)
        self._last_release = 0.0
        self._poll = _MIN_POLL
        self._idle_since: float | None = None

    # -- the loop --------------------------------------------------------------

    def run(self) -> WorkerReport:
        """Run trials until the budget is met, the experiment is broken, or nothing is left.

        ``KeyboardInterrupt`` releases the current trial as ``interrupted`` and propagates.
        """
        try:
            return self._loop()
        finally:
            self.pacemaker.close()

    def _loop(self) -> WorkerReport:
        while True:
            self.history.refresh()
            reason = self._stop_reason()
            if reason:
                self.report.reason = reason
                return self.report
            self._release_stale()
            trial = self._acquire()
            if trial is None:
                if self._idle_expired():
                    self.report.reason = "idle"
                    return self.report
                time.sleep(self._poll)
                self._poll = min(self._poll * 2, _MAX_POLL, self.settings.heartbeat)
                continue
            self._poll, self._idle_since = _MIN_POLL, None
            self._run_trial(trial)

    def _stop_reason(self) -> str:
        counts, settings = self.history.counts, self.settings
        if settings.max_trials is not None and counts[TrialStatus.COMPLETED] >= settings.max_trials:
            return "budget"
        if counts[TrialStatus.BROKEN] >= settings.max_broken:
            return "broken"
        if settings.max_trials_per_worker is not None:
            if self.report.completed + self.report.broken >= settings.max_trials_per_worker:
                return "worker-budget"
        if self.report.reason == "exhausted" and not self.history.others_reserved():
            return "exhausted"
        return ""

    def _release_stale(self) -> None:
        now = time.time()
        if now - self._last_release < self.settings.heartbeat:
            return
        self._last_release = now
        for trial in self.storage.release_stale(self.experiment_id, self.settings.stale_after, now=now):
            log.info("released trial %s of lost worker %s", trial.id, trial.worker)

    def _idle_expired(self) -> bool:
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        timeout = self.settings.idle_timeout
        return timeout is not None and now - self._idle_since >= timeout

    # -- getting a trial -------------------------------------------------------

    def _acquire(self) -> Trial | None:
        """Reserve a waiting trial, or register a new suggestion as ours; ``None`` if neither."""
        trial = self.storage.reserve_trial(self.experiment_id, self.name)
        if trial is not None:
            return trial
        return self._register_suggestion()

    def _register_suggestion(self) -> Trial | None:
        collided: list[dict[str, Any]] = []
        for _ in range(_MAX_DUPLICATE_RETRIES):
            asked = time.perf_counter()
            params = self._suggest(collided)
            if params is None:
                return None
            slow = time.perf_counter() - asked > _RACE_CHECK_AFTER
            if slow and self._taken_meanwhile(params):
                continue  # another worker registered (nearly) this point while we computed it
            try:
                parent = self.algorithm.parent_of(params)  # a multi-fidelity promotion's parent
                return self.storage.register_trial(
                    self.experiment_id, params, worker=self.name, budget=self.settings.max_trials,
                    parent=None if parent is None else params_trial_id(self.experiment_id, parent),
                )
            except DuplicateTrialError:
                collided.append(params)  # a racing worker registered it: treat it as pending
            except BudgetExhaustedError:
                return None
        log.warning("worker %s: %d suggestions in a row collided", self.name, _MAX_DUPLICATE_RETRIES)
        return None

    def _taken_meanwhile(self, params: dict[str, Any]) -> bool:
        """Refresh the view and check the suggestion against points registered since it was asked.

        Two workers fitting the same surrogate at the same moment converge to the same
        acquisition maximum before either has registered it; exact duplicates are refused
        by the storage, near-duplicates are caught here.
        """
        arrived = self.history.refresh()
        return any(self.settings.space.nearly_equal(params, other) for other in arrived)

    def _suggest(self, collided: list[dict[str, Any]]) -> dict[str, Any] | None:
        if collided:
            self.history.refresh()
        try:
            suggestions = self.algorithm.suggest(
                self.history.observations, self.history.pending(collided), n=1,
                seen=self.history.seen,
            )
        except SpaceExhaustedError:
            self.report.reason = "exhausted"
            return None
        if self.report.reason == "exhausted":
            self.report.reason = ""
        return suggestions[0] if suggestions else None

    # -- running a trial -------------------------------------------------------

    def _run_trial(self, trial: Trial) -> None:
        self.pacemaker.watch(trial.id)
        try:
            outcome = self.evaluate(trial)
        except KeyboardInterrupt:
            self.pacemaker.unwatch(trial.id)
            self._release(trial)
            raise
        if self.pacemaker.unwatch(trial.id):
            log.warning("worker %s lost its reservation of trial %s; result dropped", self.name, trial.id)
        self._record(trial, outcome)

    def _record(self, trial: Trial, outcome: Outcome) -> None:
        try:
            if outcome.ok:
                trial = self.storage.complete_trial(
                    trial.id, self.name, outcome.objective, outcome.results  # type: ignore[arg-type]
                )
                self.report.completed += 1
            else:
                trial = self.storage.fail_trial(trial.id, self.name, outcome.error or {})
                self.report.broken += 1
        except ReservationLostError as err:
            self.report.lost += 1
            log.warning("%s", err)
            return
        if self.on_outcome is not None:
            self.on_outcome(trial, outcome)

    def _release(self, trial: Trial) -> None:
        try:
            self.storage.release_trial(trial.id, self.name)
        except StorageError as err:  # includes ReservationLostError
            log.warning("could not release trial %s: %s", trial.id, err)
