"""The worker loop every Orchard worker runs, however it was started.

There is no master. :meth:`Worker.run` repeats three public steps::

    next_trial()        stop (raise Interrupted) if the caller's stop event is set
                        refresh the history view (incremental)
                        stop (raise) if the budget (raised meanwhile?) is met, max_broken are broken, ...
                        release stale reservations (rate-limited)
                        reserve an interrupted/new trial, or
                          claim budget + register a pending-aware suggestion as our reservation
                        start heartbeating it (asked again if this process froze since it asked)
    evaluate(trial)     while the pacemaker heartbeats (a lost reservation cancels it)
    finish(trial, o)    complete or fail it (a lost reservation's result is dropped/refused)

``Experiment.suggest/observe/release`` (ask and tell) call the same steps. Every race is settled by an
atomic storage verb; the loop keeps no state another worker depends on (executors run it: ``run_worker``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from orchard.algorithms import make_algorithm
from orchard.algorithms.base import BaseAlgorithm
from orchard.clock import SYSTEM_CLOCK, Clock
from orchard.collector import fewer_collections
from orchard.constraints import feasibility, unusable_hint
from orchard.errors import (BudgetExhaustedError, DuplicateTrialError, ExecutorError, ExperimentBrokenError,
                            Interrupted, ReservationLostError, StopReason, StorageUnavailableError,
                            WorkerStoppedError)
from orchard.experiment_config import WorkerSettings
from orchard.forks import own_process
from orchard.history import History
from orchard.interruption import deferred, raise_swallowed
from orchard.joining import budget_followed
from orchard.leases import LeaseObserver, give_back
from orchard.naming import worker_name
from orchard.named_results import with_objectives
from orchard.objective import Outcome
from orchard.pacemaker import Evaluation, Pacemaker
from orchard.pruners import make_pruner
from orchard.recording import off_the_space
from orchard.stopping import StopGate, StopRules
from orchard.storages.base import BaseStorage
from orchard.storages.retrying import RetryingStorage
from orchard.suggestions import Suggester
from orchard.trial import Trial, TrialStatus
from orchard.verdicts import Judge, judging
from orchard.warm_start import prior_trials

__all__ = [
    "History",  # re-exported: the view the worker keeps (orchard.history)
    "Pacemaker",  # re-exported: the heartbeat thread (orchard.pacemaker)
    "StopReason", "Worker", "WorkerReport",
    "WorkerSettings",  # re-exported: an experiment's settings plus one run's limits (orchard.experiment_config)
    "worker_name",  # re-exported: a worker's identity (orchard.naming)
]

log = logging.getLogger(__name__)

#: ``evaluate(trial)``: an Outcome, or what an objective returns (a number, a dict), as ``finish`` takes.
Evaluator = Callable[[Trial], Any]

_MAX_DUPLICATE_RETRIES = 20
_MIN_POLL, _MAX_POLL = 0.02, 1.0
_FLEET = 8  # workers whose waiting looks a fleet's stay at: the first back-off stretches beyond them
_LOOKERS = 64  # holders below which a waiter's back-off stops short of _MAX_POLL (holders / 64 s, >= 0.1 s)
#: Suggestions costing more CPU than this (a surrogate fit) are checked against points registered
#: meanwhile; cheaper ones (random search, even on a loaded machine) leave racers no time to converge.
_RACE_CHECK_AFTER = 0.005
@dataclasses.dataclass
class WorkerReport:
    """What one worker did, returned when its loop ends."""

    worker: str
    completed: int = 0
    broken: int = 0
    pruned: int = 0
    lost: int = 0
    reason: StopReason | None = None
    released: list[str] = dataclasses.field(default_factory=list)  # trials it gave back when interrupted


class Worker:
    """One masterless worker: runs trials of one experiment until there is nothing left to do.

    The loop is built from public steps, which ask-and-tell clients
    (:meth:`orchard.Experiment.suggest` / ``observe`` / ``release``) use too:

    * :meth:`next_trial` reserves a trial (and heartbeats it from then on), or
      raises a :class:`~orchard.errors.WorkerStoppedError` whose ``reason`` says
      why there is nothing to run;
    * :meth:`finish` records its outcome (complete or broken) and stops the heartbeat;
    * :meth:`release` gives it back unevaluated (``interrupted``).

    :meth:`run` is ``next_trial`` → evaluate → ``finish`` until a stop.

    Args:
        storage: the shared storage.
        experiment_id: the experiment to work on.
        settings: budget, heartbeat and algorithm settings.
        evaluate: called with each reserved trial; returns its :class:`Outcome` or what :meth:`finish` takes.
            If it has a ``cancel(trial)`` method, that is called (from the heartbeat thread) when the trial's
            reservation is found lost (it returns False when it cannot stop it), and the result is dropped.
        name: the worker identity written into reservations (default: host:pid:uuid).
        on_outcome: called after each finished trial with ``(trial, outcome)``.
        label: how messages name the experiment (default: its id).
        clock: what the loop and its pacemaker keep time with (default: the system's).
        stop: set from another thread to stop the loop, which no signal reaches in a thread
            (``executor="thread"``): :meth:`next_trial` checks it before each reservation and
            raises :class:`~orchard.errors.Interrupted` instead of reserving (a trial won as it
            was set is given back). An evaluation under way that can be stopped (a watched child,
            a script) is stopped and its trial given back, as on Ctrl-C; one in the worker's own
            thread runs to its end and is recorded.
    """

    def __init__(self, storage: BaseStorage, experiment_id: str, settings: WorkerSettings, evaluate: Evaluator,
                 name: str | None = None, on_outcome: Callable[[Trial, Outcome], None] | None = None,
                 label: str | None = None, clock: Clock = SYSTEM_CLOCK, stop: threading.Event | None = None) -> None:
        self.storage = RetryingStorage(storage, patience=max(settings.storage_patience, settings.stale_after))
        storage = self.storage
        self.experiment_id, self.settings, self.evaluate = experiment_id, settings, evaluate
        self.name, self.on_outcome, self.label = name or worker_name(), on_outcome, label or experiment_id
        prior = prior_trials(settings.space, settings.warm_start, storage, settings.objectives,  # warm start
                             settings.constraints)
        self.history = History(storage, experiment_id, settings.objectives, settings.constraints, prior)
        self.algorithm: BaseAlgorithm = make_algorithm(settings.algorithm, settings.space, settings.seed)
        self.suggester = Suggester(self.algorithm, settings.algorithm, settings.space)  # held to the contract
        history = self.history  # not self in the lambda: no cycle, a worker dropped is freed at once
        pruner = make_pruner(settings.pruner, settings.objectives, settings.space)
        self.judge = Judge(storage, self.name, lambda: history.trials, history.refresh, pruner,
                           settings.objectives)
        self.report = WorkerReport(self.name)
        rules = StopRules.of(settings.stop, settings.objectives, settings.constraints, settings.space)
        self.stopping = None if rules is None else StopGate(storage, experiment_id, rules, self.label, clock.monotonic)
        # the pacemaker beats on the unwrapped storage: it must never block in an outage's retries
        self.clock = clock
        self.evaluation = Evaluation(evaluate, self.name, stop)  # what the heartbeat thread and the stop reach
        self.pacemaker = Pacemaker(self.storage.storage, self.name, settings.heartbeat,
                                   on_lost=self.evaluation.cancel, on_doubt=self.evaluation.hold, clock=clock)
        self._leases = LeaseObserver(settings.stale_after, clock=clock.monotonic)
        self._unreported: set[str] = set()  # constraint metrics found missing from a trial's results (warned once)
        # the last outage the lease watches were restarted for: (recovered_at, failed_at)
        self._outage_seen: tuple[float | None, float | None] = (None, None)
        self._stop = stop

    # -- the loop --------------------------------------------------------------

    def run(self) -> WorkerReport:
        """Run trials until the budget is met, the experiment is broken, or nothing is left.

        Returns:
            The report; its ``reason`` is the :class:`StopReason`.

        ``KeyboardInterrupt`` releases the current trial as ``interrupted`` and propagates as an
        :class:`~orchard.errors.Interrupted` that says whether it was released. An objective that catches
        it and returns a value has its trial recorded, then the loop stops the same way, saying so.
        """
        try:
            with fewer_collections():
                trial: Trial | None = None  # the last one run
                while True:
                    try:
                        raise_swallowed(None if trial is None else trial.id)  # its objective caught Ctrl-C
                        trial = self.next_trial(self.settings.idle_timeout)
                    except WorkerStoppedError as stop:
                        self.report.reason = stop.reason
                        return self.report
                    self._run_trial(trial)
        finally:
            self.pacemaker.close()
            self.evaluation.close()

    def _run_trial(self, trial: Trial) -> None:
        try:  # orchard.report() inside the evaluation comes to the judge; the heartbeat thread and the stop to it
            with self.evaluation.running(trial), judging(self.judge, trial.id), own_process():
                outcome = Outcome.of(self.evaluate(trial))  # a forked copy that returns leaves
        except KeyboardInterrupt as err:
            interruption = self._given_back(trial, Interrupted.of(err))
            if interruption is err:
                raise
            raise interruption.with_traceback(err.__traceback__) from None
        except ExecutorError:  # no file or process left to start it (resources.no_room): not the trial's fault
            self._release_quietly(trial)
            raise
        except BaseException as err:  # noqa: BLE001 -- a faulty evaluator must not leave the trial reserved
            log.error("worker %s: evaluating trial %s raised %s", self.name, trial.id, type(err).__name__)
            outcome = Outcome.from_exception(err)
        if self.evaluation.stopped(trial.id, outcome.error):  # at the caller's request: given back, not recorded
            raise self._given_back(trial, Interrupted())
        with deferred():  # SIGTERM, Ctrl-C: the outcome is stored first
            try:
                self.finish(trial, outcome)
            except ReservationLostError as err:  # an outcome computed to its end is shown: all that is left
                log.warning("%s%s", err, f" ({outcome} for params {trial.params})" if outcome.ok else "")
            except StorageUnavailableError:  # failing beyond the storage patience: give the trial back, once
                log.error("worker %s could not store %s for trial %s; releasing it", self.name, outcome, trial.id)
                self._release_quietly(trial, self.storage.storage)
                raise
            except Exception as err:  # noqa: BLE001 -- the storage refused the outcome (a value or size it cannot hold)
                message = f"the storage refused the trial's outcome: {type(err).__name__}: {err}"[:2000]
                try:  # recorded broken: a dying worker would leave it reserved until its lease ran out
                    self._record(trial, Outcome.failure("StorageError", message, reason="unstorable"))
                except Exception:  # noqa: BLE001 -- the storage itself is failing: the first error says why
                    log.error("worker %s could not store %s for trial %s (params %s)", self.name, outcome,
                              trial.id, trial.params)  # the one place it is left (a database wiped under it)
                    raise err from None
                log.error("worker %s: %s; trial %s recorded broken", self.name, message, trial.id)

    # -- the steps -------------------------------------------------------------

    def next_trial(self, timeout: float | None = None) -> Trial:
        """Reserve the next trial to evaluate, and heartbeat it until :meth:`finish`/:meth:`release`.

        Interrupted and inserted trials come first; otherwise the algorithm's
        pending-aware suggestion is registered as this worker's reservation. While
        other workers hold the rest of the budget, it polls (with backoff).

        Args:
            timeout: seconds to wait for a trial (``0``: one attempt; ``None``: as long
                as other workers hold trials).

        Returns:
            The reserved trial.

        Raises:
            Interrupted: the worker's ``stop`` event is set (nothing is reserved).
            ExperimentBrokenError: ``max_broken`` trials are broken (reason ``BROKEN``).
            BudgetExhaustedError: nothing to run: the budget is met (``BUDGET``), this
                worker ran its ``max_trials_per_worker`` (``WORKER_BUDGET``), the space is
                exhausted (``EXHAUSTED``), ``timeout`` passed (``IDLE``), or a stopping rule
                fired (``STOPPED``, see :mod:`orchard.stopping`).
            AlgorithmError: the algorithm broke its contract (see :mod:`orchard.suggestions`).
        """
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        poll, longest = 0.0, _MAX_POLL
        while True:
            self._stop_if_asked()
            self.history.refresh()
            self._check_stop()
            self._release_stale()
            trial, asked = self._acquire() or (None, 0.0)
            if trial is not None and self._broke_off_the_space(trial):
                continue  # never evaluated; the refreshed view applies max_broken
            if trial is not None and self.stopping is not None and not self.stopping.admit(trial.id):
                self._release_quietly(trial)  # a stopping rule fired meanwhile: give it back, then stop
                continue
            if trial is not None:
                self._stop_if_asked(trial)
                self.judge.forget(trial.id)  # its reports start over: a verdict on an earlier attempt is void
                self.pacemaker.watch(trial.id, since=asked)  # the lease is no fresher than the asking
                if self.pacemaker.confirm(trial.id):  # else frozen since it asked, and taken back meanwhile
                    return trial
                self.pacemaker.unwatch(trial.id)
            if deadline is not None and self.clock.monotonic() >= deadline:
                budget = "" if self.settings.max_trials is None else f" of {self.settings.max_trials}"
                raise BudgetExhaustedError(
                    f"experiment {self.label!r} has no trial to run now: the budget{budget} is fully "
                    "reserved or the space is exhausted; raise max_trials or wait for other workers",
                    StopReason.IDLE)
            poll, longest = (min(poll * 2, longest), longest) if poll else self._waits()
            self.clock.sleep(min(poll, self.settings.heartbeat))

    def _waits(self) -> tuple[float, float]:
        """The first and longest back-off of a worker with nothing to run, from the fleet (the trials' holders).

        The first, 20 ms, stretches beyond 8 holders: a large fleet's waiters look (one read each) about as
        often as 8 do. It doubles up to holders / 64 s (0.1 to 1 s), how late a waiter sees the budget met or
        a trial given back: 16 workers waited up to 1 s, 4 % of a run of 200 one-second trials."""
        holders = len({trial.worker for trial in self.history.reserved()})
        longest = _MAX_POLL if not holders else min(_MAX_POLL, max(0.1, holders / _LOOKERS))
        return min(longest, _MIN_POLL * max(1.0, holders / _FLEET)), longest

    def finish(self, trial: Trial, outcome: Outcome | Any) -> Trial:
        """Record the outcome of a trial from :meth:`next_trial`, then stop heartbeating it.

        The trial is heartbeaten until the write has landed: a write slowed by an
        outage's retries does not let the lease go stale meanwhile.

        Args:
            trial: the reserved trial.
            outcome: an :class:`Outcome`, or what an objective returns (a number, a dict); an error breaks it.

        Returns:
            The stored trial, ``completed`` or ``broken``.

        Raises:
            ReservationLostError: the reservation was lost (a heartbeat found it taken,
                or the storage refused the write); the outcome is dropped.
        """
        try:
            if (lost := self.pacemaker.lost_error(trial.id, self.name)) is not None:
                raise lost  # found taken back, or deleted, by a heartbeat
            outcome = self._settle(trial.id, Outcome.of(outcome))
            if self.stopping is not None:  # folded before the result is stored: see orchard.stopping
                self.stopping.fold(trial.id, outcome, params=trial.params, reserved_at=trial.start_time)
            stored = self._record(trial, outcome)  # still heartbeating: a slow write must not cost the lease
        except ReservationLostError:
            self.report.lost += 1
            raise
        finally:
            self.pacemaker.unwatch(trial.id)
            self.judge.forget(trial.id)
        if self.on_outcome is not None:
            self.on_outcome(stored, outcome)
        return stored

    def release(self, trial: Trial) -> Trial:
        """Give a trial from :meth:`next_trial` back unevaluated (it becomes ``interrupted``).

        Returns:
            The stored trial.

        Raises:
            ReservationLostError: this worker no longer holds the reservation.
        """
        self.pacemaker.unwatch(trial.id)
        return self.storage.release_trial(trial.id, self.name)

    # -- deciding to stop ------------------------------------------------------

    def _stop_if_asked(self, won: Trial | None = None) -> None:
        """Raise :class:`Interrupted` if the ``stop`` event is set, once ``won`` (reserved as it was set) is given back."""
        if self._stop is not None and self._stop.is_set():
            raise Interrupted() if won is None else self._given_back(won, Interrupted())

    def _check_stop(self) -> None:
        """Raise the stop that applies to the refreshed history, if any."""
        counts, settings = self.history.counts, self.settings
        finished = counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED]
        if settings.max_trials is None or finished >= settings.max_trials:  # raised, or set on one without
            settings = self.settings = budget_followed(self.storage, self.experiment_id, settings, self.label)
        if settings.max_trials is not None and finished >= settings.max_trials:
            raise BudgetExhaustedError(
                f"experiment {self.label!r} has finished its {settings.max_trials} trials (completed or pruned)")
        if counts[TrialStatus.BROKEN] >= settings.max_broken:
            broken = [t for t in self.history.trials.values() if t.status is TrialStatus.BROKEN]
            raise ExperimentBrokenError.limit_reached(
                self.label, counts[TrialStatus.BROKEN], settings.max_broken, broken[-1].error, broken[-1].id)
        if self.stopping is not None:
            self.stopping.check()
        done = self.report.completed + self.report.broken + self.report.pruned
        if settings.max_trials_per_worker is not None and done >= settings.max_trials_per_worker:
            raise BudgetExhaustedError(
                f"worker {self.name} ran its {settings.max_trials_per_worker} trials", StopReason.WORKER_BUDGET)
        if self.suggester.exhausted and not self.history.others_reserved():
            raise BudgetExhaustedError(
                f"experiment {self.label!r}: the algorithm has no new point to suggest", StopReason.EXHAUSTED)

    def _release_stale(self) -> None:
        """Take back reservations whose heartbeat this worker saw stand still for ``stale_after``."""
        # an outage seen by a retried call or by a failed heartbeat of our own: others could not beat either
        outage = (self.storage.recovered_at, self.pacemaker.failed_at)
        if outage != self._outage_seen:
            self._outage_seen = outage
            self._leases.restart()
        self._leases.observe(self.history.reserved())
        lost = self._leases.lost()
        if not lost:
            return
        self._leases.forget(lost)
        for trial in self.storage.release_lost(self.experiment_id, lost, self.settings.max_attempts):
            verb = "broke" if trial.status is TrialStatus.BROKEN else "released"
            log.warning("%s trial %s: worker %s stopped heartbeating it for %g s (attempt %d of %d)",
                        verb, trial.id, lost[trial.id].worker, self.settings.stale_after,
                        trial.attempts, self.settings.max_attempts)
        self.history.refresh()  # the view _acquire judges by must show the trials taken back

    # -- getting a trial -------------------------------------------------------

    def _acquire(self) -> tuple[Trial, float] | None:
        """Reserve a waiting trial or register a suggestion as ours, with when (monotonic) it was asked.

        Each is tried only when the view just refreshed says it can succeed, so a worker waiting
        for others' last trials (the wind-down) costs one read per look. ``None``: neither.
        """
        counts, budget = self.history.counts, self.settings.max_trials
        asked = self.clock.monotonic()
        if counts[TrialStatus.NEW] or counts[TrialStatus.INTERRUPTED]:
            if (trial := self.storage.reserve_trial(self.experiment_id, self.name)) is not None:
                return trial, asked
        held = counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] + counts[TrialStatus.RESERVED]
        return None if budget is not None and held >= budget else self._register_suggestion()  # all held

    def _broke_off_the_space(self, trial: Trial) -> bool:
        """Break a reserved trial whose params another program stored off the space; whether it did."""
        if (error := off_the_space(trial, self.settings.space, self.label)) is None:
            return False
        log.error("worker %s: %s", self.name, error["message"])
        self.storage.fail_trial(trial.id, self.name, error)  # frees its unit of the budget
        return True

    def _register_suggestion(self) -> tuple[Trial, float] | None:
        collided: list[dict[str, Any]] = []
        repeats = 0  # suggestions the view already held: the algorithm ignored them, no racer registered them
        for _ in range(_MAX_DUPLICATE_RETRIES):
            asked = time.thread_time()
            params = self.suggester.next(self.history, collided)
            if params is None:
                return None
            if params in self.history.seen or params in collided:
                repeats += 1
                collided.append(params)
                continue
            slow = time.thread_time() - asked > _RACE_CHECK_AFTER
            if slow and self._taken_meanwhile(params):
                continue  # another worker registered (nearly) this point while we computed it
            try:
                parent = self.suggester.parent_id(params, self.history, self.experiment_id)  # a promotion's
                asked = self.clock.monotonic()
                return self.storage.register_trial(self.experiment_id, params, worker=self.name,
                                                   budget=self.settings.max_trials, parent=parent), asked
            except DuplicateTrialError:
                collided.append(params)  # a racing worker registered it: treat it as pending
            except BudgetExhaustedError:
                return None
        if repeats == _MAX_DUPLICATE_RETRIES:
            raise self.suggester.repeating(collided[-1], repeats)
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

    # -- recording -------------------------------------------------------------

    def _settle(self, trial_id: str, outcome: Outcome) -> Outcome:
        """The outcome to record: pruned if the trial received a "prune" verdict.

        A trial pruned by a verdict is recorded pruned whatever its evaluation then
        returned (it may have ignored the verdict, or been stopped for it). A trial
        whose objective raised ``TrialPruned`` before any report was stored is broken:
        a pruned trial keeps its last reported value, and it has none.
        """
        verdict = self.judge.verdict_of(trial_id)
        if verdict is not None:
            return Outcome.pruned_by(verdict.to_dict())
        if self.settings.objectives is not None:
            outcome = with_objectives(outcome, self.settings.objectives)
        if outcome.ok:  # a reported "constraints" list counts without any declared (status, the front)
            standing = feasibility(outcome.results, self.settings.constraints)
            if not standing.feasible:  # kept and shown, never on the front
                unreported = set(standing.missing) - self._unreported  # a mistake, not a finding: said once
                self._unreported |= unreported
                log.log(logging.WARNING if unreported else logging.INFO, "trial %s is infeasible: %s%s", trial_id,
                        "; ".join(standing.reasons),
                        unusable_hint(outcome.results, unreported) if unreported else "")
        if outcome.pruned is not None and trial_id not in self.judge.reported:
            return Outcome.failure("TrialPruned", "the objective raised TrialPruned before reporting any "
                                   "value; report first, or skip a configuration that cannot run (as Optuna "
                                   "does) by returning {'objective': 0.0, 'constraints': [1.0]} (infeasible)")
        return outcome

    def _record(self, trial: Trial, outcome: Outcome) -> Trial:
        if outcome.pruned is not None:
            stored = self.storage.prune_trial(trial.id, self.name, outcome.pruned)
            self.report.pruned += 1
        elif outcome.ok:
            assert outcome.objective is not None  # an ok Outcome carries its objective
            stored = self.storage.complete_trial(trial.id, self.name, outcome.objective, outcome.results)
            self.report.completed += 1
        else:
            stored = self.storage.fail_trial(trial.id, self.name, outcome.error or {})
            self.report.broken += 1
        return stored

    def _given_back(self, trial: Trial, interruption: Interrupted) -> Interrupted:
        """``interruption``, saying whether ``trial``, given back now, was released or kept (a second Ctrl-C
        cutting the release short instead, the trial kept: :func:`~orchard.executors.task.run_worker` reads it).
        A trial that received a "prune" verdict is recorded pruned instead (unretried: a stop waits for no outage)."""
        try:
            self.pacemaker.unwatch(trial.id)  # before either write: no beat lands on the trial given back
            if self.judge.prune_on_stop(trial.id, self.storage.storage):
                self.report.pruned += 1
                interruption.pruned.append(trial.id)
                return interruption
            released, kept = give_back(self.storage, {trial.id: self.name})  # as _release_quietly, unwatched
        except KeyboardInterrupt as late:
            interruption, released, kept = Interrupted.of(late), [], [trial.id]
        interruption.released += released
        interruption.kept += kept
        self.report.released += released
        return interruption

    def _release_quietly(self, trial: Trial, unretried: BaseStorage | None = None) -> tuple[list[str], list[str]]:
        """Give ``trial`` back by :func:`~orchard.leases.give_back`'s rules: storage errors are logged, not raised."""
        self.pacemaker.unwatch(trial.id)
        return give_back(self.storage if unretried is None else unretried, {trial.id: self.name})
