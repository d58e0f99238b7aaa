"""The worker loop's parts in one process: pacemaker, history view, interrupts, idle exit.

Timing is driven by a :class:`~orchard.clock.ManualClock`: no test here sleeps.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import uuid
from pathlib import Path

import pytest

import orchard
from orchard.clock import ManualClock
from orchard.errors import (
    BudgetExhaustedError,
    ExecutorError,
    ExperimentBrokenError,
    Interrupted,
    ReservationLostError,
    StopReason,
)
from orchard.executors.task import WorkerTask, run_worker
from orchard.objective import Outcome
from orchard.space import Space
from orchard.storages import get_storage
from orchard.storages.memory import MemoryStorage
from orchard.trial import Trial, TrialStatus
from orchard.worker import History, Pacemaker, Worker, WorkerSettings

SPACE = Space.from_config({"x": "uniform(0, 1)"})


@pytest.fixture
def storage():
    return get_storage(f"memory://{uuid.uuid4().hex}")


@pytest.fixture
def exp_id(storage) -> str:
    return storage.create_experiment("e", {"space": SPACE.config()})


def settings(**overrides) -> WorkerSettings:
    values = {"space": SPACE, "algorithm": {"random": {}}, "max_trials": 5, "heartbeat": 30.0}
    values.update(overrides)
    return WorkerSettings(**values)


def test_pacemaker_refreshes_heartbeats_and_reports_lost_reservations(storage, exp_id) -> None:
    clock = ManualClock()
    trial = storage.register_trial(exp_id, {"x": 0.5}, worker="w1")
    pacemaker = Pacemaker(storage, "w1", every=1.0, clock=clock)
    pacemaker.watch(trial.id)
    clock.settle(2)  # the heartbeat thread and the lease watchdog
    clock.advance(1.0)
    clock.settle(2)
    assert storage.get_trial(trial.id).heartbeat > trial.heartbeat
    storage.release_trial(trial.id, None)  # someone declared the reservation stale
    clock.advance(1.0)
    clock.settle(2)
    assert pacemaker.is_lost(trial.id)
    assert pacemaker.unwatch(trial.id) is True
    pacemaker.close()


class _CountingStorage:
    """Counts heartbeats per trial, passing everything else to the wrapped storage."""

    def __init__(self, storage) -> None:
        self._storage, self.beats = storage, {}

    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        self.beats[trial_id] = self.beats.get(trial_id, 0) + 1
        self._storage.heartbeat_trial(trial_id, worker)

    def __getattr__(self, name):
        return getattr(self._storage, name)


def test_pacemaker_beats_each_trial_on_its_own_schedule(storage, exp_id) -> None:
    """Beats follow each reservation: a trial shorter than a beat is never written again, and
    workers started together do not all beat at the same instant (256 of them did, before)."""
    clock = ManualClock()
    counting = _CountingStorage(storage)
    pacemaker = Pacemaker(counting, "w1", every=0.5, clock=clock)
    first = storage.register_trial(exp_id, {"x": 0.1}, worker="w1")
    pacemaker.watch(first.id)
    clock.settle(2)
    clock.advance(0.25)  # the thread's first beat (0.5 s after it started) would catch a trial watched now
    clock.settle(2)
    short = storage.register_trial(exp_id, {"x": 0.2}, worker="w1")
    pacemaker.watch(short.id)
    clock.advance(0.25)
    clock.settle(2)
    assert counting.beats == {first.id: 1}  # reserved 0.25 s before that beat: its own is due at 0.75 s
    pacemaker.unwatch(short.id)
    clock.advance(0.5)
    clock.settle(2)
    clock.advance(0.5)
    clock.settle(2)
    assert counting.beats == {first.id: 3}
    pacemaker.close()


def test_a_running_worker_collects_the_young_generation_less_often_and_restores_it(storage, exp_id) -> None:
    import gc

    seen = []
    before = gc.get_threshold()

    def evaluate(trial: Trial) -> Outcome:
        seen.append(gc.get_threshold())
        return Outcome(objective=trial.params["x"])

    Worker(storage, exp_id, settings(max_trials=2), evaluate).run()
    assert seen and all(threshold[0] >= 50_000 for threshold in seen)
    assert gc.get_threshold() == before


def test_history_view_is_incremental_and_reports_new_pending_points(storage, exp_id) -> None:
    history = History(storage, exp_id)
    assert history.refresh() == []
    a = storage.register_trial(exp_id, {"x": 0.1}, worker="w1")
    assert history.refresh() == [{"x": 0.1}]
    assert history.refresh() == []  # nothing new
    storage.complete_trial(a.id, "w1", 1.0)
    storage.register_trial(exp_id, {"x": 0.2})
    assert history.refresh() == [{"x": 0.2}]
    assert [o.params for o in history.observations] == [{"x": 0.1}]
    history._cursor = None  # a full re-read re-sends every trial: completed ones are not observed twice
    history.refresh()
    assert len(history.observations) == 1 and history.counts[TrialStatus.COMPLETED] == 1
    assert history.pending() == [{"x": 0.2}]
    assert history.counts[TrialStatus.COMPLETED] == 1 and history.counts[TrialStatus.NEW] == 1


def test_ctrl_c_releases_the_running_trial(storage, exp_id) -> None:
    def interrupted(trial: Trial) -> Outcome:
        raise KeyboardInterrupt

    worker = Worker(storage, exp_id, settings(), interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED and trial.worker is None
    # the next worker takes that very trial first
    done = Worker(storage, exp_id, settings(max_trials=1), lambda t: Outcome(objective=1.0)).run()
    assert done.completed == 1 and storage.get_trial(trial.id).status is TrialStatus.COMPLETED


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in Linux's /proc")
def test_a_worker_that_cannot_start_an_evaluation_gives_its_trial_back_and_stops(storage, exp_id) -> None:
    """Under ``ulimit -n 16`` with 8 workers the trial was broken with OSError (3 stopped the experiment)."""
    from orchard.objective import ObjectiveEvaluator
    from tests import workloads

    timed = ObjectiveEvaluator(lambda x: x, timeout=60)

    def with_every_file_taken(trial: Trial) -> Outcome:
        with workloads.every_file_taken():
            return timed(trial)

    with pytest.raises(ExecutorError, match="gave the trial back"):
        Worker(storage, exp_id, settings(), with_every_file_taken).run()
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED and trial.worker is None and trial.error is None


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="SIGTERM has a handler already")
def test_interruptible_turns_the_first_signal_into_one_interruption_and_restores_the_handlers() -> None:
    from orchard.interruption import STOP_SIGNAL, interruptible

    watched = [signal.SIGINT, signal.SIGTERM, *([STOP_SIGNAL] if STOP_SIGNAL is not None else [])]
    before = {signum: signal.getsignal(signum) for signum in watched}
    with pytest.raises(Interrupted) as caught, interruptible():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered before kill() returns, handled right after
        except Interrupted as first:
            for copy in watched[1:]:
                os.kill(os.getpid(), copy)  # the parent's stop request, a scheduler's second SIGTERM: ignored
            raise first
    assert caught.value.terminated and str(caught.value) == "no trial was running"
    assert {signum: signal.getsignal(signum) for signum in watched} == before


def test_an_interruption_travels_between_processes_and_sums_what_workers_released() -> None:
    mine = Interrupted(terminated=True)
    theirs = [pickle.loads(pickle.dumps(Interrupted(released=["a"]))), Interrupted(released=["b"], kept=["c"]),
              None, ValueError("not an interruption")]
    joined = mine.joined(theirs, unstopped=1)
    assert joined.terminated and (joined.released, joined.kept, joined.unstopped) == (["a", "b"], ["c"], 1)
    assert str(joined).startswith("2 of 3 running trial(s) released (status interrupted); could not release c")
    assert isinstance(joined, KeyboardInterrupt), "user code's `except Exception` does not swallow it"


def test_ctrl_c_during_an_evaluation_says_which_trial_was_released(storage, exp_id, monkeypatch) -> None:
    """... and stops its heartbeat once (the give-back stopped it, then the release it called stopped it again)."""
    stopped: list[str] = []
    real = Pacemaker.unwatch
    monkeypatch.setattr(Pacemaker, "unwatch", lambda self, trial_id: stopped.append(trial_id) or real(self, trial_id))

    def interrupted(trial: Trial) -> Outcome:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        Worker(storage, exp_id, settings(), interrupted).run()
    (trial,) = storage.fetch_trials(exp_id)
    assert caught.value.released == [trial.id] and trial.status is TrialStatus.INTERRUPTED
    assert stopped == [trial.id]


def test_thread_workers_told_to_stop_reserve_no_trial_after(storage, exp_id) -> None:
    """executor="thread": no signal reaches a thread, so the fleet sets an event; each worker finishes the
    evaluation under way (recorded) and reserves nothing more (it used to reserve a trial and give it back)."""
    from concurrent.futures import ThreadPoolExecutor

    from orchard.executors.task import WorkerTask, run_worker
    from orchard.executors.threads import StopRequest

    stop = StopRequest()
    evaluating = threading.Barrier(2)

    def objective(x: float) -> float:
        evaluating.wait(30)  # both workers are evaluating when the stop comes
        stop.set()
        return x

    tasks = [WorkerTask(storage, exp_id, settings(max_trials=20), objective) for _ in range(2)]
    with stop.covering(task.token for task in tasks), ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run_worker, task) for task in tasks]
    assert [future.exception() for future in futures] == [None, None]  # returned: Dask's threads die of a raise
    assert len(stop.reports) == 2, stop.reports
    assert all(not end.released and not end.kept for end in stop.reports), stop.reports
    assert [t.status for t in storage.fetch_trials(exp_id)] == [TrialStatus.COMPLETED] * 2


def test_a_thread_worker_waiting_for_trials_held_elsewhere_stops_when_told(storage, exp_id) -> None:
    """The budget is held by a live worker of another process: the thread worker waits for it, and the
    stop event ends the wait (it waited for ever: Ctrl-C of workon(executor="thread") hung, ignoring SIGTERM)."""
    from orchard.executors.task import WorkerTask, run_worker
    from orchard.executors.threads import StopRequest

    storage.register_trial(exp_id, {"x": 0.5}, worker="elsewhere:1:alive", budget=1)  # its lease lasts 90 s
    stop = StopRequest()
    task = WorkerTask(storage, exp_id, settings(max_trials=1), lambda x: x)
    waiting = threading.Thread(target=run_worker, args=(task,), daemon=True)
    with stop.covering([task.token]):
        waiting.start()
        stop.set()  # checked before each look at the storage
        waiting.join(20)
    assert not waiting.is_alive(), "the worker went on waiting after it was told to stop"
    assert len(stop.reports) == 1 and not stop.reports[0].released, stop.reports


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a timed evaluation runs in a forked child")
def test_a_thread_worker_told_to_stop_releases_an_evaluation_killed_before_the_kill_returned(
        storage, exp_id, tmp_path) -> None:
    """executor="thread" (or an in-process Dask LocalCluster) with trial_timeout, stopped by SIGTERM: the stop
    request kills the evaluation's child. When the child's end reached the worker before the kill returned (it
    still looks for the child's strays in /proc, slow on a loaded machine), the trial was recorded broken
    ("killed because the worker lost its reservation"), and workon said "1 of 2 released; 1 finished"."""
    import time

    from orchard.executors.threads import StopRequest
    from orchard.objective import ObjectiveEvaluator

    marker = tmp_path / "evaluating"

    def objective(x: float) -> float:
        marker.touch()
        time.sleep(60)  # only the stop ends it
        return x

    class SlowToReturnFromTheKill(ObjectiveEvaluator):
        def cancel(self, trial: Trial) -> bool:
            killed = super().cancel(trial)
            deadline = time.monotonic() + 10  # returns once the worker has settled the killed trial
            while killed and storage.get_trial(trial.id).status is TrialStatus.RESERVED:
                assert time.monotonic() < deadline, "the worker never settled the killed evaluation"
                time.sleep(0.01)
            return killed

    stop = StopRequest()
    evaluate = SlowToReturnFromTheKill(objective, timeout=120)
    task = WorkerTask(storage, exp_id, settings(max_trials=4), evaluate)
    loop = threading.Thread(target=run_worker, args=(task,), daemon=True)
    with stop.covering([task.token]):
        loop.start()
        _poll(marker.exists, timeout=30)
        stop.set()
        loop.join(30)
    assert not loop.is_alive(), "the stopped worker did not end"
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED and trial.attempts == 0, (trial.status, trial.error)
    assert len(stop.reports) == 1 and stop.reports[0].released == [trial.id], stop.reports


def test_worker_waits_for_others_then_exits_on_idle_timeout(storage, exp_id) -> None:
    storage.register_trial(exp_id, {"x": 0.9}, worker="someone-else", budget=1)
    clock = ManualClock()
    start = clock.monotonic()
    report = Worker(storage, exp_id, settings(max_trials=1, idle_timeout=60), lambda t: Outcome(objective=0.0),
                    clock=clock).run()  # the other's lease is judged lost after 90 s, later than that
    assert report.reason == "idle" and report.completed == 0
    assert 60 <= clock.monotonic() - start <= 61  # it polled (backing off to 1 s) until the idle timeout


def test_worker_stops_when_budget_met_and_records_outcomes(storage, exp_id) -> None:
    seen: list[tuple[str, bool]] = []
    outcomes = iter([Outcome(objective=1.0), Outcome.failure("ValueError", "boom"), Outcome(objective=2.0)] * 3)
    worker = Worker(storage, exp_id, settings(max_trials=4), lambda t: next(outcomes),
                    on_outcome=lambda t, o: seen.append((t.status.value, o.ok)))
    report = worker.run()
    assert report.reason == "budget" and report.completed == 4 and report.broken == 2
    assert storage.count_trials(exp_id)[TrialStatus.COMPLETED] == 4
    assert ("broken", False) in seen and len(seen) == 6


def test_exhausted_grid_ends_the_worker(storage) -> None:
    space = Space.from_config({"k": "randint(0, 3)"})
    exp_id = storage.create_experiment("g", {"space": space.config()})
    worker = Worker(storage, exp_id, WorkerSettings(space=space, algorithm={"grid": {}}, max_trials=10),
                    lambda t: Outcome(objective=float(t.params["k"])))
    report = worker.run()
    assert report.reason == "exhausted" and report.completed == 3


# -- the public steps ---------------------------------------------------------------------------


def test_steps_reserve_finish_and_release(storage, exp_id) -> None:
    clock = ManualClock()
    worker = Worker(storage, exp_id, settings(max_trials=2, heartbeat=0.5), lambda t: Outcome(), clock=clock)
    first = worker.next_trial()
    assert storage.get_trial(first.id).status is TrialStatus.RESERVED
    clock.settle(2)
    clock.advance(0.5)
    clock.settle(2)
    assert storage.get_trial(first.id).heartbeat > first.heartbeat  # heartbeated until finished
    assert worker.release(first).status is TrialStatus.INTERRUPTED
    again = worker.next_trial()
    assert again.id == first.id  # interrupted trials come first
    done = worker.finish(again, Outcome(objective=0.5))
    assert done.status is TrialStatus.COMPLETED and worker.report.completed == 1
    broken = worker.finish(worker.next_trial(), Outcome.failure("ValueError", "boom"))
    assert broken.status is TrialStatus.BROKEN and broken.error["message"] == "boom"
    with pytest.raises(ReservationLostError):
        worker.finish(again, Outcome(objective=1.0))  # already recorded: the storage refuses
    worker.pacemaker.close()


def test_finish_takes_what_an_objective_returns(storage, exp_id) -> None:
    """``finish(trial, 0.5)`` as a user driving the steps writes it: recorded as the objective would be.
    It raised AttributeError ('float' object has no attribute 'ok') and left the trial reserved with its
    heartbeat stopped, to be taken back later as a lost attempt."""
    worker = Worker(storage, exp_id, settings(max_trials=3), lambda t: Outcome(), clock=ManualClock())
    assert worker.finish(worker.next_trial(), 0.5).objective == 0.5
    done = worker.finish(worker.next_trial(), {"objective": 0.25, "epochs": 3})
    assert done.status is TrialStatus.COMPLETED and done.results == {"epochs": 3}
    broken = worker.finish(worker.next_trial(), "0.5")
    assert broken.status is TrialStatus.BROKEN and "objective must be a number" in broken.error["message"]
    worker.pacemaker.close()


def test_a_slow_result_write_keeps_the_lease_alive(storage, exp_id) -> None:
    """The trial is heartbeaten until its result has landed, not just until the evaluation ended.

    A result write slowed by an outage's retries must not let the lease go stale meanwhile:
    another worker would take the trial back and run the finished evaluation again.
    """
    from orchard.leases import LeaseObserver

    clock = ManualClock()
    real_complete = storage.complete_trial
    worker_settings = settings(max_trials=1, heartbeat=0.5)  # a lease is lost after 1.5 s standing still
    observer, lost = LeaseObserver(worker_settings.stale_after, clock=clock.monotonic), set()

    def watch_the_lease() -> None:  # another worker's view of the lease while the result is being written
        observer.observe(t for t in storage.fetch_trials(exp_id) if t.status is TrialStatus.RESERVED)
        lost.update(observer.lost())

    def slow_complete(*args, **kwargs):
        for _ in range(16):  # the write takes over five leases to land
            watch_the_lease()
            clock.advance(0.5)
            clock.settle(2)
        watch_the_lease()
        return real_complete(*args, **kwargs)

    storage.complete_trial = slow_complete
    worker = Worker(storage, exp_id, worker_settings, lambda t: Outcome(), clock=clock)
    trial = worker.next_trial()
    clock.settle(2)
    worker.finish(trial, Outcome(objective=0.5))
    worker.pacemaker.close()
    assert not lost, "the lease went stale while the result was being written"
    assert storage.get_trial(trial.id).status is TrialStatus.COMPLETED


def test_a_failed_heartbeat_of_its_own_restarts_a_workers_lease_watches(storage, exp_id) -> None:
    """A worker busy evaluating meets an outage only through its own heartbeats failing.

    Others could not beat through that outage either, so the time before it is not held
    against their leases: the watches start over, as after a call that rode out an outage.
    """
    clock = ManualClock()
    other = storage.register_trial(exp_id, {"x": 0.9}, worker="someone-else", budget=1)
    worker = Worker(storage, exp_id, settings(max_trials=1, heartbeat=0.5), lambda t: Outcome(), clock=clock)
    with pytest.raises(BudgetExhaustedError):
        worker.next_trial(timeout=0)  # starts watching the other worker's lease
    clock.advance(2 * worker.settings.stale_after)
    worker.pacemaker.failed_at = clock.monotonic()  # a heartbeat of this worker's own just failed
    with pytest.raises(BudgetExhaustedError):
        worker.next_trial(timeout=0)
    assert storage.get_trial(other.id).status is TrialStatus.RESERVED, "a lease was judged across an outage"
    clock.advance(2 * worker.settings.stale_after)  # a lease that then stands still is still judged lost
    assert worker.next_trial(timeout=0).id == other.id, "taken back, then reserved by this worker"
    worker.pacemaker.close()


def test_next_trial_raises_a_stop_carrying_its_reason(storage, exp_id) -> None:
    worker = Worker(storage, exp_id, settings(max_trials=1), lambda t: Outcome())
    worker.finish(worker.next_trial(), Outcome(objective=1.0))
    with pytest.raises(BudgetExhaustedError) as budget:
        worker.next_trial()
    assert budget.value.reason is StopReason.BUDGET
    other = storage.create_experiment("b", {"space": SPACE.config()})
    breaker = Worker(storage, other, settings(max_trials=5, max_broken=1), lambda t: Outcome())
    breaker.finish(breaker.next_trial(), Outcome.failure("ValueError", "bad x"))
    with pytest.raises(ExperimentBrokenError, match="stopped: 1 trial is broken .max_broken=1.; last error.*ValueError: bad x") as broken:
        breaker.next_trial()
    assert broken.value.reason is StopReason.BROKEN
    busy = storage.create_experiment("c", {"space": SPACE.config()})
    storage.register_trial(busy, {"x": 0.5}, worker="someone-else", budget=1)
    waiter = Worker(storage, busy, settings(max_trials=1), lambda t: Outcome())
    with pytest.raises(BudgetExhaustedError) as idle:
        waiter.next_trial(timeout=0)  # the only unit of budget is held by another worker
    assert idle.value.reason is StopReason.IDLE
    for w in (worker, breaker, waiter):
        w.pacemaker.close()


class CancellableEvaluation:
    """An evaluation that runs until cancelled, like a script the runner can kill."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.started = threading.Event()
        self._stop = threading.Event()

    def __call__(self, trial: Trial) -> Outcome:
        self.started.set()
        assert self._stop.wait(20), "the evaluation was never cancelled"
        return Outcome(objective=0.0)

    def cancel(self, trial: Trial) -> None:
        self.cancelled.append(trial.id)
        self._stop.set()


def test_lost_reservation_cancels_the_evaluation_and_drops_its_result(storage, exp_id) -> None:
    clock = ManualClock()
    evaluation = CancellableEvaluation()
    worker = Worker(storage, exp_id, settings(max_trials=1, heartbeat=0.5), evaluation, clock=clock)
    reports = []
    runner = threading.Thread(target=lambda: reports.append(worker.run()))
    runner.start()
    assert evaluation.started.wait(10)
    (trial,) = storage.fetch_trials(exp_id)
    assert storage.release_lost(exp_id, {trial.id: trial.lease}, max_attempts=3)  # another worker judged it lost
    clock.settle(2)
    clock.advance(0.5)  # the next heartbeat finds the reservation gone
    runner.join(20)
    assert not runner.is_alive() and evaluation.cancelled == [trial.id]
    # the cancelled attempt's result was dropped; the trial was then reserved again and completed once
    (report,) = reports
    assert report.lost == 1 and report.completed == 1 and report.reason is StopReason.BUDGET
    done = storage.get_trial(trial.id)
    assert done.status is TrialStatus.COMPLETED and done.attempts == 2


def test_a_lost_reservation_of_an_in_thread_objective_says_it_cannot_be_stopped(
        storage, exp_id, caplog: pytest.LogCaptureFixture) -> None:
    """Python cannot stop a thread: the log says the evaluation runs on and its result is dropped,
    not that it was stopped (it said "stopped its evaluation")."""
    import logging

    from orchard.objective import ObjectiveEvaluator

    started, go_on = threading.Event(), threading.Event()

    def objective(x: float) -> float:
        started.set()
        assert go_on.wait(20)
        return x

    clock = ManualClock()
    worker = Worker(storage, exp_id, settings(max_trials=1, heartbeat=0.5), ObjectiveEvaluator(objective),
                    clock=clock)
    runner = threading.Thread(target=worker.run)
    with caplog.at_level(logging.WARNING, logger="orchard.pacemaker"):
        runner.start()
        assert started.wait(10)
        (trial,) = storage.fetch_trials(exp_id)
        assert storage.release_lost(exp_id, {trial.id: trial.lease}, max_attempts=3)
        clock.settle(2)
        clock.advance(0.5)  # the next heartbeat finds the reservation gone
        clock.settle(2)
        go_on.set()
        runner.join(20)
    assert not runner.is_alive()
    said = [m for m in caplog.messages if "lost its reservation" in m and "evaluation" in m]
    assert not any("stopped its evaluation" in m for m in said), said
    assert any("cannot be stopped" in m and "result is dropped" in m and "trial_timeout" in m for m in said), said


def test_a_lease_in_doubt_of_an_in_thread_objective_says_it_cannot_be_paused(
        storage, exp_id, caplog: pytest.LogCaptureFixture) -> None:
    """No heartbeat lands for two beats: a script is paused, but a call in the worker's thread cannot be,
    and the log says so instead of "holding its evaluation"."""
    import logging

    from orchard.errors import StorageUnavailableError
    from orchard.objective import ObjectiveEvaluator

    def unreachable(trial_id: str, worker: str) -> None:
        raise StorageUnavailableError("server gone")

    started, go_on = threading.Event(), threading.Event()

    def objective(x: float) -> float:
        started.set()
        assert go_on.wait(20)
        return x

    storage.heartbeat_trial = unreachable
    clock = ManualClock()
    worker = Worker(storage, exp_id, settings(max_trials=1, heartbeat=0.5), ObjectiveEvaluator(objective),
                    clock=clock)
    runner = threading.Thread(target=worker.run)
    with caplog.at_level(logging.WARNING, logger="orchard.pacemaker"):
        runner.start()
        assert started.wait(10)
        for _ in range(3):  # 1.5 s without a heartbeat landing: more than two beats
            clock.settle(2)
            clock.advance(0.5)
        clock.settle(2)
        go_on.set()
        runner.join(20)
    assert not runner.is_alive()
    doubts = [m for m in caplog.messages if "landed for over" in m]
    assert doubts and all("cannot be paused" in m and "holding" not in m for m in doubts), doubts


def test_progress_monitor_reports_each_trial_finished_while_it_runs_once(storage, exp_id) -> None:
    from orchard.monitor import TICK, ProgressMonitor

    before = storage.register_trial(exp_id, {"x": 0.1}, worker="w")
    storage.complete_trial(before.id, "w", 1.0)
    completed: list[Trial] = []
    broken: list[Trial] = []
    clock = ManualClock()
    with ProgressMonitor(storage, exp_id, "e", 5, on_result=completed.append, on_error=broken.append,
                         clock=clock):
        good = storage.register_trial(exp_id, {"x": 0.2}, worker="w")
        storage.complete_trial(good.id, "w", 0.5)
        bad = storage.register_trial(exp_id, {"x": 0.3}, worker="w")
        storage.fail_trial(bad.id, "w", {"type": "ValueError", "message": "boom"})
        clock.settle(1)
        clock.advance(TICK)
        clock.settle(1)
        assert completed and broken  # seen by the monitor's thread, not only at exit
    assert [t.id for t in completed] == [good.id] and [t.id for t in broken] == [bad.id]


def test_the_progress_bar_shows_an_objective_to_maximise_as_returned(storage, capsys) -> None:
    """objectives={"acc": "max"}: workon's bar said best=-0.97, the stored (negated) accuracy."""
    from orchard.monitor import ProgressMonitor

    exp_id = storage.create_experiment("acc", {"space": SPACE.config(), "objectives": {"acc": "max"}})
    clock = ManualClock()
    with ProgressMonitor(storage, exp_id, "acc", 5, show_bar=True, clock=clock) as monitor:
        for x, acc in ((0.1, 0.91), (0.2, 0.97), (0.3, 0.5)):
            trial = storage.register_trial(exp_id, {"x": x}, worker="w")
            storage.complete_trial(trial.id, "w", -acc, {"acc": acc})
        monitor._tick()
        assert monitor._bar.postfix.startswith("best acc=0.97,"), monitor._bar.postfix


def _poll(condition, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the main thread never got there"
        time.sleep(0.001)


def test_a_raising_callback_whose_interruption_lands_as_the_run_ends_still_raises_its_error(
        storage, exp_id, monkeypatch) -> None:
    """The monitor interrupts the main thread while holding the lock the main thread's ``_close`` waits for:
    the main thread may handle the signal before ``interrupt_main`` has returned. That interruption is the
    monitor's own, so the callback's exception reaches the caller, not an ``Interrupted`` of nothing."""
    import sys

    from orchard import monitor as monitoring
    from orchard.interruption import interrupt_main, interruptible
    from orchard.monitor import TICK, ProgressMonitor

    main = threading.main_thread()

    def closing():  # the frame of ProgressMonitor._close the main thread runs, if any
        frame = sys._current_frames().get(main.ident)
        while frame is not None and frame.f_code is not ProgressMonitor._close.__code__:
            frame = frame.f_back
        return frame

    interrupting = threading.Event()

    def interrupt_as_the_run_ends() -> bool:
        interrupting.set()  # the body ends now
        _poll(lambda: closing() is not None)  # and _close waits for the lock held here
        waiting = closing()
        sent = interrupt_main()
        _poll(lambda: closing() is not waiting)  # the main thread handled the signal before the answer
        return sent

    def on_error(trial: Trial) -> None:
        raise ValueError("callback bug")

    monkeypatch.setattr(monitoring, "interrupt_main", interrupt_as_the_run_ends)
    clock = ManualClock()
    monitor = ProgressMonitor(storage, exp_id, "e", 5, on_error=on_error, clock=clock)
    with pytest.raises(BaseException) as caught, interruptible(), monitor:  # an Interrupted: not pytest's Ctrl-C
        bad = storage.register_trial(exp_id, {"x": 0.3}, worker="w")
        storage.fail_trial(bad.id, "w", {"type": "ValueError", "message": "boom"})
        clock.settle(1)
        clock.advance(TICK)  # the monitor looks, its callback raises
        assert interrupting.wait(10)  # the run ends as the monitor interrupts it
    assert caught.type is ValueError, caught.value


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="SIGTERM has a handler already")
@pytest.mark.parametrize("verb", ["register_trial", "complete_trial"])
def test_sigterm_while_a_worker_writes_to_the_storage_leaves_no_trial_reserved_and_keeps_the_result(
        storage, exp_id, monkeypatch, verb: str) -> None:
    """SIGTERM (or the stop request of workon's process) landing as a reservation or a result is written:
    the reservation is given back (not held until its lease runs out), the result is stored."""
    from orchard.executors.task import WorkerTask, run_worker

    write = getattr(storage, verb)

    def signalled(*args, **kwargs):
        if verb == "complete_trial":
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the write could start
        stored = write(*args, **kwargs)
        if verb == "register_trial":
            os.kill(os.getpid(), signal.SIGTERM)  # handled once the reservation is stored, before it returns
        return stored

    monkeypatch.setattr(storage, verb, signalled)
    monkeypatch.setattr(storage, "close", lambda: None)  # run_worker closes the storage the test reads
    with pytest.raises(Interrupted) as caught:
        run_worker(WorkerTask(storage, exp_id, settings(), lambda x: x))
    (trial,) = storage.fetch_trials(exp_id)
    if verb == "complete_trial":
        assert trial.status is TrialStatus.COMPLETED and caught.value.released == []
    else:
        assert trial.status is TrialStatus.INTERRUPTED and caught.value.released == [trial.id]
        assert trial.attempts == 0, "a release does not count against max_attempts"


def test_a_trial_released_by_two_stopped_workers_is_counted_once() -> None:
    """A worker starting as the stop came may reserve the trial another just gave back, then give it back too."""
    joined = Interrupted(released=["a"]).joined([Interrupted(released=["a", "b"]), Interrupted(kept=["c"])])
    assert joined.released == ["a", "b"] and joined.kept == ["c"]
    assert str(joined).startswith("2 of 3 running trial(s) released")


class _SignalsWhenCollected:
    """Sends SIGTERM to this process from ``__del__``: its handler then runs where Python drops exceptions."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="SIGTERM has a handler already")
def test_an_interruption_raised_where_python_drops_exceptions_is_delivered_again() -> None:
    """A signal handled inside a finalizer or an at-fork hook (a worker starting a script as SIGTERM came):
    the Interrupted raised there is dropped ("Exception ignored in"), and the worker used to run on for ever,
    ignoring every later copy. It is raised again where the program goes on."""
    import time

    from orchard.interruption import interruptible

    with pytest.raises(Interrupted) as caught, interruptible():
        _SignalsWhenCollected()  # collected at once
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert caught.value.terminated


@pytest.mark.skipif(not hasattr(os, "fork") or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL,
                    reason="needs fork and SIGTERM's default handler")
def test_an_interruption_as_a_timed_evaluation_forks_leaves_no_child_running(monkeypatch, tmp_path) -> None:
    """SIGTERM landing as the child is forked: Interrupted is raised once the child is known, and it is killed."""
    import time

    from orchard.interruption import interruptible
    from orchard.isolation import ForkedCall

    fork, children = os.fork, []

    def fork_then_signal() -> int:
        pid = fork()
        if pid:
            children.append(pid)
            os.kill(os.getpid(), signal.SIGTERM)
        return pid

    marker = tmp_path / "ran"
    monkeypatch.setattr(os, "fork", fork_then_signal)
    with pytest.raises(Interrupted), interruptible():
        ForkedCall(lambda: (time.sleep(0.5), marker.write_text("the job ran on")))
    monkeypatch.undo()
    (child,) = children
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped: killed and waited for, so it cannot write later
    assert not marker.exists()


@pytest.mark.parametrize("params", [{"x": "abc"}, {}, {"x": 0.5, "y": 1}, {"x": 2.0}],
                         ids=["a text", "a missing dimension", "an unknown dimension", "out of its prior"])
def test_a_waiting_trial_stored_off_the_space_is_broken_unevaluated_and_the_worker_goes_on(
        storage, exp_id, params, caplog) -> None:
    bad = storage.register_trial(exp_id, params)  # another program's write: no space check
    good = storage.register_trial(exp_id, {"x": 0.25})
    evaluated: list[dict] = []
    worker = Worker(storage, exp_id, settings(max_trials=3), lambda t: evaluated.append(t.params) or Outcome(objective=1.0))
    report = worker.run()
    assert bad.params not in evaluated and {"x": 0.25} in evaluated
    assert report.reason == "budget" and report.completed == 3  # the broken trial freed its unit of the budget
    stored = storage.get_trial(bad.id)
    assert stored.status is TrialStatus.BROKEN and stored.error["reason"] == "params"
    assert bad.id in stored.error["message"] and "not a point of its space" in stored.error["message"]
    assert "exp.insert" in stored.error["message"] and len(stored.error["message"]) < 1000
    assert storage.get_trial(good.id).status is TrialStatus.COMPLETED
    assert any(bad.id in r.getMessage() for r in caplog.records)


class _SecondCtrlCAsTheReleaseLands(MemoryStorage):
    """The second Ctrl-C comes as the release of the trial the first one stopped has been written."""

    cut = False

    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        released = super().release_trial(trial_id, worker)
        if not self.cut:
            self.cut = True
            raise Interrupted()
        return released


def _stopped_by_a_ctrl_c_in_the_first_trial(storage: MemoryStorage) -> tuple[str, Interrupted]:
    """The experiment a worker ran on ``storage`` until its first trial got Ctrl-C, and how it stopped."""
    exp_id = storage.create_experiment("e", {"space": SPACE.config()})

    def first_ctrl_c(x: float) -> float:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        run_worker(WorkerTask(storage, exp_id, settings(), first_ctrl_c))
    return exp_id, stopped.value


def test_a_second_ctrl_c_cutting_the_release_short_still_reports_the_trial_released() -> None:
    storage = _SecondCtrlCAsTheReleaseLands()
    exp_id, stopped = _stopped_by_a_ctrl_c_in_the_first_trial(storage)
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED
    assert stopped.released == [trial.id] and not stopped.kept
    assert str(stopped).startswith("1 of 1 running trial(s) released")


class _SecondCtrlCAsTheLoopLooksForWhatItHolds(MemoryStorage):
    """A real SIGINT arrives as the stopping loop reads which reservations it still holds."""

    sent = False

    def fetch_trials(self, experiment_id: str, statuses=None) -> list[Trial]:
        if statuses == [TrialStatus.RESERVED] and not self.sent:
            self.sent = True
            signal.raise_signal(signal.SIGINT)
        return super().fetch_trials(experiment_id, statuses)


def test_a_second_ctrl_c_as_a_stopping_loop_reads_what_it_holds_waits_for_the_read() -> None:
    storage = _SecondCtrlCAsTheLoopLooksForWhatItHolds()
    exp_id, stopped = _stopped_by_a_ctrl_c_in_the_first_trial(storage)
    assert storage.sent
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED and stopped.released == [trial.id]


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT has a handler already")
@pytest.mark.parametrize("moment", ["joining its heartbeat thread", "closing its storage"])
def test_a_second_ctrl_c_as_a_stopped_worker_ends_still_reports_the_trial_it_released(
        storage, exp_id, monkeypatch, moment: str) -> None:
    """The first Ctrl-C stops the evaluation and the trial is released; a second one landing while the loop ends
    raised a new interruption in place of the one that said so: workon counted "1 of 1 released" for 2."""
    def second_ctrl_c(close):
        def closing(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread before the close starts
            return close(*args, **kwargs)
        return closing

    def objective(x: float) -> float:
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, during the evaluation
        return x

    if moment == "joining its heartbeat thread":
        monkeypatch.setattr(Pacemaker, "close", second_ctrl_c(Pacemaker.close))
        monkeypatch.setattr(storage, "close", lambda: None)  # run_worker closes the storage the test reads
    else:
        monkeypatch.setattr(storage, "close", second_ctrl_c(lambda: None))
    with pytest.raises(Interrupted) as caught:
        run_worker(WorkerTask(storage, exp_id, settings(), objective))
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED
    assert caught.value.released == [trial.id] and caught.value.kept == []


def test_the_progress_bar_s_best_is_the_best_feasible_completed_trial(storage) -> None:
    """It took infeasible trials, and (for a run joining an experiment) pruned trials' last reports: best=0.05
    on the bar while exp.best_trial was the trial of 0.2."""
    from orchard.monitor import ProgressMonitor

    exp_id = storage.create_experiment("c", {"space": SPACE.config(), "constraints": ["memory_gb <= 16"]})
    pruned = storage.register_trial(exp_id, {"x": 0.05}, worker="w")
    storage.report_trial(pruned.id, "w", 1, 0.01)
    storage.prune_trial(pruned.id, "w", {"prune": True, "pruner": "median", "step": 1})
    clock = ManualClock()
    with ProgressMonitor(storage, exp_id, "c", 5, show_bar=True, clock=clock) as monitor:
        for x, objective, memory in ((0.1, 0.05, 20.0), (0.2, 0.2, 8.0), (0.3, 0.1, 32.0)):
            trial = storage.register_trial(exp_id, {"x": x}, worker="w")
            storage.complete_trial(trial.id, "w", objective, {"memory_gb": memory})
        monitor._tick()
        assert monitor._bar.postfix.startswith("best=0.2,"), monitor._bar.postfix


@pytest.mark.parametrize("call_cap", [None, 3])
def test_running_workers_go_on_to_a_budget_raised_while_they_run(tmp_path: Path, call_cap: int | None) -> None:
    """max_trials may be raised later (SPEC): a worker that started under the old budget ran to it and
    stopped, status 0, while the stored budget said more. A `workon(max_trials=N)` call keeps its own cap."""
    storage = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=storage, max_trials=4)

    def objective(x: float) -> float:
        if exp.storage.count_trials(exp.id)[TrialStatus.COMPLETED] == 1:  # raised by another handle, as a user does
            orchard.build_experiment("e", storage=storage, max_trials=7)
        return x

    exp.workon(objective, n_workers=1, executor="single", progress=False, max_trials=call_cap)
    assert exp.storage.count_trials(exp.id)[TrialStatus.COMPLETED] == (7 if call_cap is None else call_cap)


def test_run_records_what_an_evaluator_returns_as_finish_does(storage, exp_id) -> None:
    """docs/python-api.md drives one evaluator through finish() and run(): a number, a dict, or an Outcome.

    run() took Outcome only, and an evaluator returning a number (as finish() takes it) failed the loop
    with AttributeError: 'float' object has no attribute 'error'.
    """
    returns = iter([0.5, "not a number", {"objective": 0.25, "accuracy": 0.9}, Outcome(objective=0.125)])
    worker = Worker(storage, exp_id, settings(max_trials=3, max_broken=5), lambda t: next(returns))
    report = worker.run()
    assert report.reason == "budget" and report.completed == 3 and report.broken == 1
    trials = storage.fetch_trials(exp_id)
    assert sorted(t.objective for t in trials if t.status is TrialStatus.COMPLETED) == [0.125, 0.25, 0.5]
    assert [t.results.get("accuracy") for t in trials if t.objective == 0.25] == [0.9]
    assert [t.status for t in trials if t.objective is None] == [TrialStatus.BROKEN]


def test_a_result_dropped_after_orchard_db_release_names_the_release(storage, exp_id) -> None:
    """`orchard db release --force` gives a running trial back; its worker's drop message says it may have been that.

    The message named only a stale heartbeat or another worker, and told the user to raise heartbeat.
    """
    clock = ManualClock()
    worker = Worker(storage, exp_id, settings(max_trials=1, heartbeat=0.5), lambda t: Outcome(), clock=clock)
    trial = worker.next_trial()
    storage.release_trial(trial.id, None)  # what `orchard db release -n NAME ID --force` does
    clock.settle(2)
    clock.advance(1.0)  # the next heartbeat finds the reservation gone
    clock.settle(2)
    with pytest.raises(ReservationLostError, match="released by `orchard db release`.*If nobody released it"):
        worker.finish(trial, Outcome(objective=1.0))
    worker.pacemaker.close()
