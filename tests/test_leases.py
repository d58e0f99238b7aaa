"""LeaseObserver (an injected clock, no sleeps) and RetryingStorage's retry rules.

The faults themselves (outages, skewed clocks, killed workers) are shown with
real processes in tests/test_faults.py; these tests pin the rules those rely on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from orchard.errors import InvalidReportError, ReservationLostError, StorageError, StorageUnavailableError
from orchard.leases import RUNNING_HOLDER_PATIENCE, LeaseObserver, give_back, lost_error
from orchard.storages import get_storage
from orchard.storages.base import BaseStorage
from orchard.storages.retrying import RetryingStorage
from orchard.trial import Lease, Trial, TrialStatus

W = "host:1:w"


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reserved(tid: str, heartbeat: float, worker: str = W) -> Trial:
    return Trial(id=tid, experiment="e", params={}, status=TrialStatus.RESERVED, worker=worker,
                 heartbeat=heartbeat)


# -- LeaseObserver -----------------------------------------------------------------


def test_a_heartbeat_standing_still_for_stale_after_is_lost() -> None:
    clock = FakeClock()
    observer = LeaseObserver(30.0, clock=clock)
    observer.observe([reserved("a", 5.0), reserved("b", 7.0)])
    clock.now += 29.9
    observer.observe([reserved("a", 5.0), reserved("b", 7.5)])  # b beat, a did not
    assert observer.lost() == {}
    clock.now += 0.1
    assert observer.lost() == {"a": Lease(W, 5.0)}
    clock.now += 29.8
    assert observer.lost() == {"a": Lease(W, 5.0)}
    clock.now += 0.2
    assert observer.lost() == {"a": Lease(W, 5.0), "b": Lease(W, 7.5)}


def test_a_holder_running_on_this_host_is_watched_longer_and_a_stopped_or_dead_one_is_not() -> None:
    """With 512 workers on 2 cores the pickle file's lock was waited for 60-115 s: an observer took
    back trials whose live workers' heartbeats and results were queued behind it (their results
    refused, evaluated again). A real process of this host holds these leases."""
    clock = FakeClock()
    observer = LeaseObserver(30.0, clock=clock)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = f"{socket.gethostname()}:{holder.pid}:w"
        elsewhere, mine = f"other-{socket.gethostname()}:{holder.pid}:w", f"{socket.gethostname()}:{os.getpid()}:w"
        observer.observe([reserved("here", 5.0, here), reserved("elsewhere", 5.0, elsewhere),
                          reserved("mine", 5.0, mine)])
        clock.now += 30.0
        assert set(observer.lost()) == {"elsewhere", "mine"}  # a running holder of this host: not yet
        holder.send_signal(signal.SIGSTOP)  # frozen: judged as before
        _wait_for_state(holder.pid, b"T")
        assert set(observer.lost()) == {"here", "elsewhere", "mine"}
        holder.send_signal(signal.SIGCONT)
        _wait_for_state(holder.pid, b"S", b"R")
        assert "here" not in observer.lost()
        clock.now += 30.0 * (RUNNING_HOLDER_PATIENCE - 1) - 0.1
        assert "here" not in observer.lost()
        clock.now += 0.1  # a running holder that never beats (hung) is lost after all
        assert "here" in observer.lost()
        clock.now -= 30.0 * (RUNNING_HOLDER_PATIENCE - 1)
        holder.kill()
        holder.wait()
        assert "here" in observer.lost()  # dead
    finally:
        holder.kill()
        holder.wait()


def _wait_for_state(pid: int, *states: bytes) -> None:
    """Until the kernel shows process ``pid`` in one of ``states`` (a signal is delivered asynchronously)."""
    for _ in range(500):
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[1].split()[0] in states:
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never reached state {states}")


def test_an_outage_restarts_the_watch_so_owners_that_could_not_beat_are_not_lost() -> None:
    clock = FakeClock()
    observer = LeaseObserver(6.0, clock=clock)
    observer.observe([reserved("a", 5.0)])
    clock.now += 5.0  # the storage goes down: nobody's heartbeat can land
    observer.restart()  # ... and comes back
    clock.now += 5.9
    observer.observe([reserved("a", 5.0)])
    assert observer.lost() == {}, "an outage was counted as time the heartbeat stood still"
    clock.now += 0.1
    assert observer.lost() == {"a": Lease(W, 5.0)}


def test_heartbeat_values_are_never_compared_with_a_clock() -> None:
    """Values from clocks far ahead of, or behind, the observer's are judged alike."""
    clock = FakeClock()
    observer = LeaseObserver(3.0, clock=clock)
    observer.observe([reserved("ahead", clock.now + 1e6), reserved("behind", -1e6)])
    assert observer.lost() == {}
    clock.now += 3.0
    assert set(observer.lost()) == {"ahead", "behind"}


def test_a_new_owner_or_a_finished_trial_starts_over() -> None:
    clock = FakeClock()
    observer = LeaseObserver(3.0, clock=clock)
    observer.observe([reserved("a", 5.0), reserved("b", 5.0)])
    clock.now += 2.0
    observer.observe([reserved("a", 5.0, worker="host:2:other")])  # re-reserved by another; b finished
    clock.now += 2.0
    assert observer.lost() == {} and len(observer) == 1
    clock.now += 1.0
    assert observer.lost() == {"a": Lease("host:2:other", 5.0)}
    observer.forget(["a"])
    assert observer.lost() == {} and len(observer) == 0


def test_unreserved_trials_are_not_watched() -> None:
    observer = LeaseObserver(0.0, clock=FakeClock())
    observer.observe([Trial(id="n", experiment="e", params={}),
                      Trial(id="c", experiment="e", params={}, status=TrialStatus.COMPLETED, worker=W,
                            heartbeat=1.0)])
    assert observer.lost() == {}


def test_lost_error_names_the_likely_causes() -> None:
    error = lost_error(3)
    assert (error["type"], error["reason"]) == ("TrialLost", "lost")
    for cause in ("3 times", "segfault", "OOM killer", "job step", "max_attempts"):
        assert cause in error["message"]


def test_give_back_releases_each_trial_skips_finished_ones_and_keeps_those_the_storage_failed_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """The one policy of every graceful release (a stopped worker, workon's ended loops, an ask-and-tell exit)."""
    storage = get_storage("memory://")
    exp = storage.create_experiment("e", {})
    failing, finished, held = (storage.register_trial(exp, {"x": i}, worker=W) for i in range(3))
    storage.complete_trial(finished.id, W, 1.0)
    outage = Outage(storage)
    outage.wrap("release_trial")
    outage.down = 1  # the first release fails; the others are still tried
    with caplog.at_level(logging.WARNING, logger="orchard.leases"):
        released, kept = give_back(storage, {failing.id: W, finished.id: W, held.id: W})
    assert (released, kept) == ([held.id], [failing.id])
    statuses = {t.id: (t.status, t.attempts) for t in storage.fetch_trials(exp)}
    assert statuses == {failing.id: (TrialStatus.RESERVED, 1), finished.id: (TrialStatus.COMPLETED, 1),
                        held.id: (TrialStatus.INTERRUPTED, 0)}
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"could not give back trial {failing.id} of {W}"]


# -- RetryingStorage ---------------------------------------------------------------


class Outage:
    """Makes the wrapped storage's verbs raise StorageUnavailableError while ``down``."""

    def __init__(self, storage: BaseStorage, applied_before_failing: bool = False,
                 failing_takes: Callable[[], None] | None = None) -> None:
        self.storage = storage
        self.down = 0  # how many more calls fail
        self.applied_before_failing = applied_before_failing  # the reply, not the write, was lost
        self.failing_takes = failing_takes  # what a failing call waits first (a server selection timeout)

    def wrap(self, verb: str) -> None:
        real: Callable[..., Any] = getattr(self.storage, verb)

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.down -= 1
                if self.failing_takes is not None:
                    self.failing_takes()
                if self.applied_before_failing:
                    real(*args, **kwargs)
                raise StorageUnavailableError("server gone")
            return real(*args, **kwargs)

        setattr(self.storage, verb, flaky)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _retrying(clock: FakeClock, patience: float = 30.0) -> tuple[RetryingStorage, str]:
    inner = get_storage("memory://")
    storage = RetryingStorage(inner, patience, clock=clock, sleep=clock.sleep)
    return storage, storage.create_experiment("e", {})


def test_an_outage_shorter_than_the_patience_costs_time_and_one_log_line(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    storage, exp = _retrying(clock)
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    outage = Outage(storage.storage)
    outage.wrap("complete_trial")
    outage.down = 6
    with caplog.at_level(logging.INFO, logger="orchard.storages.retrying"):
        done = storage.complete_trial(trial.id, W, 1.5)
    assert (done.status, done.objective) == (TrialStatus.COMPLETED, 1.5)
    assert 0 < clock.now - 1000.0 < 30.0
    assert storage.recovered_at == clock.now, "the end of the outage is what lease observers restart from"
    [line] = caplog.messages
    assert f"complete trial {trial.id}" in line and "unavailable" in line and "6 retries" in line


def test_the_outage_logged_is_measured_from_the_start_of_the_first_failed_attempt(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A call to a MongoDB that is down fails only after its server selection timeout (5 s here): the outage
    began when that call was made, not when it failed (a 6.5 s outage was logged as 1.5 s). The patience
    still counts from the first failure: a slow failure (or a freeze during the call) does not shorten it."""
    storage, exp = _retrying(clock, patience=6.0)
    outage = Outage(storage.storage, failing_takes=lambda: clock.sleep(5.0))
    outage.wrap("count_trials")
    outage.down = 2
    began = clock.now
    with caplog.at_level(logging.INFO, logger="orchard.storages.retrying"):
        storage.count_trials(exp)
    [line] = caplog.messages
    assert f"unavailable for {clock.now - began:.1f} s" in line, line
    assert clock.now - began >= 10.0


def test_an_outage_longer_than_the_patience_raises(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    storage, exp = _retrying(clock, patience=10.0)
    outage = Outage(storage.storage)
    outage.wrap("count_trials")
    outage.down = 10**6
    with pytest.raises(StorageUnavailableError):
        storage.count_trials(exp)
    assert 10.0 <= clock.now - 1000.0 < 10.5
    assert len(caplog.messages) == 1 and "giving up" in caplog.messages[0]


def test_a_result_whose_reply_was_lost_is_settled_not_refused(clock: FakeClock) -> None:
    storage, exp = _retrying(clock)
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    outage = Outage(storage.storage, applied_before_failing=True)
    for verb in ("complete_trial", "register_trial"):
        outage.wrap(verb)
    outage.down = 1
    assert storage.complete_trial(trial.id, W, 2.0).status is TrialStatus.COMPLETED
    outage.down = 1
    again = storage.register_trial(exp, {"x": 2}, worker=W)
    assert (again.status, again.worker) == (TrialStatus.RESERVED, W)


def test_a_result_whose_reply_was_lost_is_settled_when_the_check_meets_the_outage_too(clock: FakeClock) -> None:
    """A result whose reply was lost, retried and refused as already recorded, is checked by reading the
    trial; that read met the same overloaded server (a socket timeout) and its StorageUnavailableError
    killed the worker with patience left (bench/mongodb_round_trips.py, 128 workers, 2,048 trials)."""
    storage, exp = _retrying(clock)
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    written = Outage(storage.storage, applied_before_failing=True)
    written.wrap("complete_trial")
    read = Outage(storage.storage)
    read.wrap("get_trial")
    written.down, read.down = 1, 2
    done = storage.complete_trial(trial.id, W, 2.0)
    assert (done.status, done.objective) == (TrialStatus.COMPLETED, 2.0) and read.down == 0


def test_a_report_whose_reply_was_lost_is_stored_once_and_the_trial_goes_on(clock: FakeClock) -> None:
    """The retry of a report the storage had stored met it as a step already reported and was refused
    (InvalidReportError): orchard.report() raised in the objective, which broke a trial its worker still held."""
    storage, exp = _retrying(clock)
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    outage = Outage(storage.storage, applied_before_failing=True)
    outage.wrap("report_trial")
    outage.down = 1
    assert storage.report_trial(trial.id, W, 1, 0.5).reports == [(1, 0.5)]
    assert storage.report_trial(trial.id, W, 2, 0.4).reports == [(1, 0.5), (2, 0.4)]
    outage.down = 1
    with pytest.raises(InvalidReportError, match="not after"):  # a step reported with another value: refused
        storage.report_trial(trial.id, W, 2, 0.3)
    with pytest.raises(InvalidReportError, match="not after"):  # and a step reported twice without an outage
        storage.report_trial(trial.id, W, 2, 0.4)
    assert storage.complete_trial(trial.id, W, 0.4).reports == [(1, 0.5), (2, 0.4)]


def test_a_reservation_whose_reply_was_lost_is_taken_up_not_left_to_count_as_a_lost_attempt(
        clock: FakeClock) -> None:
    # issue 32: held by nobody until its lease ran out, then counted against max_attempts
    storage, exp = _retrying(clock)
    first, second = (storage.register_trial(exp, {"x": x}) for x in (1, 2))
    outage = Outage(storage.storage, applied_before_failing=True)
    outage.wrap("reserve_trial")
    outage.down = 1
    got = storage.reserve_trial(exp, W)
    assert got is not None and (got.id, got.attempts) == (first.id, 1), "the reservation made is the one used"
    assert storage.count_trials(exp)[TrialStatus.RESERVED] == 1, "no second trial reserved"
    assert stored_status(storage, second.id) is TrialStatus.NEW
    storage.complete_trial(got.id, W, 1.0)
    again = storage.reserve_trial(exp, W)  # a later outage-free reservation is not mistaken for an orphan
    assert again is not None and again.id == second.id


def test_a_trial_refused_after_a_long_outage_is_taken_up_when_reserved_again_and_the_reply_is_lost(
        clock: FakeClock) -> None:
    """The handle kept remembering a trial whose result was refused (taken back during an outage longer than
    the lease), so when its worker reserved it again (interrupted trials go first) and that reply was lost, it
    was not taken up: held by nobody until its lease ran out, then counted as a lost attempt."""
    storage, exp = _retrying(clock)
    storage.register_trial(exp, {"x": 1})
    first = storage.reserve_trial(exp, W)
    assert first is not None and first.lease is not None
    storage.release_lost(exp, {first.id: first.lease}, 3)  # another worker's observer, during the outage
    with pytest.raises(ReservationLostError):
        storage.complete_trial(first.id, W, 1.0)
    outage = Outage(storage.storage, applied_before_failing=True)
    outage.wrap("reserve_trial")
    outage.down = 1
    again = storage.reserve_trial(exp, W)
    assert again is not None and again.id == first.id


def test_a_reservation_taken_up_after_a_lost_reply_is_one_the_storage_handed_out(clock: FakeClock) -> None:
    """MongoDB names a held trial that vanished from a restored or crashed database as a lost reservation (the
    worker drops its result and goes on), but it did not count one taken up after a lost reply as held: the
    trial was then reported deleted with its experiment, which stops the worker."""
    uri = f"mongomock://take-up-{uuid.uuid4().hex[:12]}"
    inner, server = get_storage(uri), get_storage(uri)  # the server's side: a handle that remembers nothing
    storage = RetryingStorage(inner, 30.0, clock=clock, sleep=clock.sleep)
    exp = storage.create_experiment("e", {})
    storage.register_trial(exp, {"x": 1})

    def reply_lost(experiment_id: str, worker: str) -> None:
        del inner.reserve_trial  # type: ignore[method-assign]  # once: the next try reaches the storage
        server.reserve_trial(experiment_id, worker)  # applied by the server, its reply lost on the way back
        raise StorageUnavailableError("server gone")

    inner.reserve_trial = reply_lost  # type: ignore[method-assign,assignment]
    got = storage.reserve_trial(exp, W)
    assert got is not None
    server._trials.delete_one({"_id": got.id})  # type: ignore[attr-defined]  # a restore took it away
    with pytest.raises(ReservationLostError, match="vanished from .* though its experiment is still there"):
        storage.complete_trial(got.id, W, 1.0)


def stored_status(storage: BaseStorage, tid: str) -> TrialStatus:
    trial = storage.get_trial(tid)
    assert trial is not None
    return trial.status


def test_a_real_refusal_after_an_outage_is_still_refused(clock: FakeClock) -> None:
    storage, exp = _retrying(clock)
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    storage.complete_trial(trial.id, W, 2.0)
    outage = Outage(storage.storage)
    outage.wrap("complete_trial")
    outage.down = 2
    with pytest.raises(ReservationLostError):
        storage.complete_trial(trial.id, W, 3.0)  # a different result: not ours, refused


def test_other_errors_and_errors_before_the_first_answer_are_not_retried(clock: FakeClock) -> None:
    inner = get_storage("memory://")
    outage = Outage(inner)
    outage.wrap("list_experiments")
    outage.down = 1
    storage = RetryingStorage(inner, 30.0, clock=clock, sleep=clock.sleep)
    with pytest.raises(StorageUnavailableError):  # never answered: likely misconfigured, say so now
        storage.list_experiments()
    exp = storage.create_experiment("e", {})
    with pytest.raises(StorageError):
        storage.heartbeat_trial("nope", W)
    assert clock.now == 1000.0
    assert storage.count_trials(exp)[TrialStatus.NEW] == 0


# -- Pacemaker: holding an evaluation whose lease is in doubt ---------------------------


def test_an_evaluation_is_held_while_no_heartbeat_lands_for_the_lease_and_resumed_after() -> None:
    import threading
    import time

    from orchard.pacemaker import Pacemaker

    storage = get_storage("memory://")
    exp = storage.create_experiment("e", {})
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    outage = Outage(storage)
    outage.wrap("heartbeat_trial")
    outage.down = 10**6  # the storage is down: no heartbeat lands
    calls: list[tuple[str, bool]] = []
    held, resumed = threading.Event(), threading.Event()

    def on_doubt(trial_id: str, hold: bool) -> None:
        calls.append((trial_id, hold))
        (held if hold else resumed).set()

    pacemaker = Pacemaker(storage, W, every=0.02, on_doubt=on_doubt, doubt_after=0.1)
    pacemaker.watch(trial.id)
    try:
        assert held.wait(10), "the evaluation was not held although no heartbeat landed for the lease"
        time.sleep(0.1)  # several watchdog ticks while in doubt: the hold is repeated, never lifted
        assert not resumed.is_set() and len(calls) > 1 and set(calls) == {(trial.id, True)}
        outage.down = 0  # the storage is back and the reservation is still ours
        assert resumed.wait(10), "the evaluation was not resumed once a heartbeat landed"
        time.sleep(0.1)  # confirmed: no hold after the resume
        assert calls[-1] == (trial.id, False) and calls.count((trial.id, False)) == 1
        assert not pacemaker.is_lost(trial.id)
    finally:
        pacemaker.close()


def test_an_answer_older_than_the_doubt_does_not_resume_the_evaluation() -> None:
    """A heartbeat answered after ``doubt_after`` proves the lease was ours when it was sent, not now.

    (The process froze with the answer on its way: meanwhile others may have taken
    the trial.) The evaluation stays held until a heartbeat sent after that answer lands.
    """
    import threading
    import time

    from orchard.pacemaker import Pacemaker

    storage = get_storage("memory://")
    exp = storage.create_experiment("e", {})
    trial = storage.register_trial(exp, {"x": 1}, worker=W)
    events: list[str] = []
    slow = threading.Event()
    real_heartbeat = storage.heartbeat_trial

    def heartbeat(*args: Any) -> None:
        events.append("sent")
        if not slow.is_set():
            slow.set()
            time.sleep(0.5)  # the answer comes five times doubt_after late
        real_heartbeat(*args)
        events.append("answered")

    storage.heartbeat_trial = heartbeat  # type: ignore[method-assign]
    resumed = threading.Event()

    def on_doubt(trial_id: str, hold: bool) -> None:
        events.append("hold" if hold else "resume")
        if not hold:
            resumed.set()

    pacemaker = Pacemaker(storage, W, every=0.02, on_doubt=on_doubt, doubt_after=0.1)
    pacemaker.watch(trial.id)
    try:
        assert resumed.wait(10), "the evaluation was not resumed once a fresh heartbeat landed"
    finally:
        pacemaker.close()
    assert "hold" in events[:events.index("answered")], "the evaluation was held while the answer was late"
    beats = [event for event in events if event != "hold"]  # the watchdog re-holds from its own thread
    assert beats[:5] == ["sent", "answered", "sent", "answered", "resume"], (
        f"the late answer resumed the evaluation before a fresh heartbeat landed: {events}")
