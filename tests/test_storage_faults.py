"""Faults of the storage itself, done for real: hostile MongoDB documents, a wire server down
longer than the lease, a full or read-only disk under the pickle file, a file deleted under
running workers (SPEC §5.9, §5.10)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bson.decimal128 import Decimal128

import orchard
from orchard.cli import main
from orchard.dashboard import StorageView
from orchard.dashboard._payloads import to_json, trial_rows
from orchard.errors import (
    BudgetExhaustedError,
    ExperimentNotFoundError,
    SpaceError,
    StorageCorruptedError,
    StorageUnavailableError,
)
from orchard.space import trial_id
from orchard.storages import get_storage
from orchard.storages.pickled import PickledStorage
from orchard.storages.pickled import writer as writer_module
from orchard.testing._mongo_uri import with_database
from orchard.testing.mongo_server import WireServer
from orchard.trial import Trial, TrialStatus
from tests.conftest import backend_uri
from tests.test_faults import Worker as FaultWorker
from tests.test_faults import assert_finished_normally, assert_one_result_stored, spawn, trials_of, wait_for

__all__ = ["spawn"]  # the fixture, shared with tests/test_faults.py

# -- hostile values in MongoDB documents ------------------------------------------------

#: Values another program could write into a trial document. A 5,000-digit int cannot be one: BSON
#: has no int beyond 64 bits (pymongo refuses to send one); a 6,000-digit Decimal128 stands for it.
HOSTILE: dict[str, tuple[str, Any]] = {
    "an error that is a list": ("error", ["ValueError", "boom"]),
    "an error whose message is a dict": ("error", {"type": "ValueError", "message": {"a": 1}}),
    "a param that is a list": ("params", {"x": [0.1, 0.2]}),
    "a 6,000-digit Decimal128 param": ("params", {"x": Decimal128("1E+6000")}),
}


@pytest.mark.parametrize("backend", [pytest.param("mongomock", id="mongomock"),
                                     pytest.param("mongodb", id="mongodb", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_mongodb_documents_are_skipped_and_named(
        backend: str, case: str, request: pytest.FixtureRequest, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    field, value = HOSTILE[case]
    uri = backend_uri(backend, request, tmp_path)
    storage: Any = get_storage(uri)
    exp = storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random"})
    kept = storage.complete_trial(storage.register_trial(exp, {"x": 0.5}, worker="w").id, "w", 1.0)
    hostile = Trial(id="h" * 32, experiment=exp, params={"x": 0.7}, status=TrialStatus.BROKEN,
                    error={"type": "ValueError", "message": "boom"}).to_dict()
    hostile["_id"] = hostile.pop("id")
    hostile[field] = value
    storage._trials.insert_one(hostile)  # written by another program
    assert [t.id for t in storage.fetch_trials(exp)] == [kept.id]
    assert [t.id for t in get_storage(uri).fetch_changes(exp)[0]] == [kept.id]
    assert "h" * 32 in caplog.text and "not one Orchard writes" in caplog.text
    with pytest.raises(StorageCorruptedError, match="not one Orchard writes"):
        storage.get_trial("h" * 32)
    assert main(["db", "dump", "--storage", uri, "-o", str(tmp_path / "dump.json")]) == 0
    assert main(["plot", "regret", "-n", "exp", "--storage", uri, "-o", str(tmp_path / "r.html")]) == 0
    shown = StorageView(get_storage(uri)).experiment("exp")  # what the dashboard's trials API serves
    assert shown is not None
    rows = json.loads(to_json(trial_rows(shown)))
    assert [t["id"] for t in rows["trials"]] == [kept.id]


def test_a_hostile_waiting_trial_is_broken_not_handed_out(caplog: pytest.LogCaptureFixture) -> None:
    storage: Any = get_storage("mongomock://")
    exp = storage.create_experiment("exp", {})
    doc = Trial(id="h" * 32, experiment=exp, params={"x": [1, 2]}, submit_time=0.0).to_dict()
    doc["_id"] = doc.pop("id")
    storage._trials.insert_one(doc)
    fine = storage.register_trial(exp, {"x": 0.5})
    assert storage.reserve_trial(exp, "w").id == fine.id  # the hostile one, older, is skipped
    assert storage._trials.find_one({"_id": "h" * 32})["status"] == TrialStatus.BROKEN.value
    assert storage.count_trials(exp)[TrialStatus.BROKEN] == 0  # still unreadable: counted as read, not at all
    assert "marked broken instead of evaluated" in caplog.text


def test_a_nested_huge_int_in_params_is_a_clear_error() -> None:
    sys.set_int_max_str_digits(4300)
    with pytest.raises(SpaceError, match="param 'x' cannot identify a trial.*as str or float"):
        trial_id("exp", {"y": 1, "x": {"a": 10**5000}})


# -- an outage longer than the lease ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_wire_server_down_for_twice_the_lease_loses_nothing(
        tmp_path: Path, spawn: Callable[..., FaultWorker]) -> None:
    """A 1.5 s lease, a 4 s outage: the worker waits for the server (storage_patience), then writes."""
    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "long") + "?serverSelectionTimeoutMS=1000"
        worker = spawn(uri, "long", "waits_for_go", max_trials=1, heartbeat=0.5)  # lease: 1.5 s
        wait_for(lambda: (tmp_path / "started").exists() or worker.process.poll() is not None, 60,
                 "the evaluation to start")
        server.kill()
        (tmp_path / "go").touch()  # the result is computed while the server is down
        time.sleep(4.0)  # more than twice the lease
        server.start()
        assert_finished_normally(worker, timeout=60)
        assert_one_result_stored(uri, "long")
    assert "was unavailable for" in worker.log()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_frozen_server_is_an_outage_the_calls_give_up_on_and_the_worker_rides_out(
        tmp_path: Path, spawn: Callable[..., FaultWorker]) -> None:
    """SIGSTOP: the server keeps its connections open and answers nothing. A call waited for it to wake
    (no timeout on a reply; pymongo's monitor, which interrupts calls once its heartbeat times out on
    pymongo 4.7 and later, looks once in 5 minutes here, as a URI may ask): it returned when the server
    woke. Now each try gives up after socketTimeoutMS (20 s by default, which tests/test_mongodb.py checks;
    5 s here, as a URI may set it, to freeze the server for seconds rather than a minute), and one call makes
    up to 3: the command, its retry, and the retry's new connection's handshake. The freeze lasts until this
    call and one of the worker's have given up (the worker logs each call the driver gave up on)."""
    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "frozen") + "?heartbeatFrequencyMS=300000&socketTimeoutMS=5000"
        worker = spawn(uri, "frozen", "steady", max_trials=4, heartbeat=10.0, options=["--log-driver-errors"])

        def running() -> bool:
            with contextlib.suppress(ExperimentNotFoundError):
                return any(t.status is TrialStatus.RESERVED for t in trials_of(uri, "frozen"))
            return False

        wait_for(running, 60, "a trial to start")
        caller = get_storage(uri)
        exp = caller.require_experiment("frozen").id  # it has answered: losing it now is an outage
        outcome: list[tuple[float, BaseException | None]] = []

        def call() -> None:
            start = time.monotonic()
            try:
                caller.count_trials(exp)
            except StorageUnavailableError as err:
                outcome.append((time.monotonic() - start, err))
            else:
                outcome.append((time.monotonic() - start, None))

        gave_up = "MongoDB driver error"  # the line the worker logs for each call the driver gave up on
        before = worker.log().count(gave_up)
        server.pause()
        try:
            calling = threading.Thread(target=call)
            calling.start()
            wait_for(lambda: bool(outcome) and worker.log().count(gave_up) > before, 60,
                     "this call and one of the worker's to give up on the frozen server")
        finally:
            server.pause(False)
        calling.join(30)
        [(took, error)] = outcome
        assert error is not None and "lost MongoDB" in str(error), f"returned after {took:.1f} s: {error}"
        assert took < 25, f"a call to the frozen server gave up after {took:.1f} s (3 tries of 5 s at most)"
        assert_finished_normally(worker, timeout=120)
        trials = trials_of(uri, "frozen")
    assert [(t.status, t.attempts) for t in trials] == [(TrialStatus.COMPLETED, 1)] * 4
    assert "was unavailable for" in worker.log()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_server_down_for_6_s_amid_reports_and_prune_verdicts_stores_each_once_and_breaks_nothing(
        tmp_path: Path) -> None:
    """Three workon workers report every step and are pruned mid-run while the server is killed for 6 s. A report
    applied just before the kill had its reply lost; its retry met it stored and was refused ('report step 13 is
    not after the last reported step 13'), which broke the trial (3 runs in 5 on the code before the fix)."""
    from tests.evaluation_workloads import reports_every_step

    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "amid") + "?serverSelectionTimeoutMS=1000"
        exp = orchard.build_experiment("amid", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=30,
                                       pruner={"threshold": {"upper": 0.9}}, storage=uri)
        watcher = get_storage(uri)

        def outage() -> None:
            wait_for(lambda: sum(len(t.reports) for t in watcher.fetch_trials(exp.id)) >= 20, 120, "reports")
            server.kill()
            time.sleep(6.0)  # the outage itself, shorter than the lease (90 s)
            server.start()

        killer = threading.Thread(target=outage)
        killer.start()
        try:
            exp.workon(reports_every_step, n_workers=3, progress=False)
        finally:
            killer.join()
        trials = exp.fetch_trials()
    counts = {status: sum(t.status is status for t in trials) for status in TrialStatus}
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 30 == len(trials), counts
    assert counts[TrialStatus.PRUNED] > 0
    for trial in trials:
        assert [step for step, _ in trial.reports] == list(range(len(trial.reports))), trial  # each stored once
        assert trial.attempts == 1 and (trial.verdict is not None) == (trial.status is TrialStatus.PRUNED), trial


def _restart_after_a_failed_call(server: WireServer, caplog: pytest.LogCaptureFixture) -> threading.Thread:
    """Start the killed ``server`` again once a call of this process has failed on it (after the driver's
    own selection retry: the client's debug line), in a thread; join it."""
    caplog.set_level(logging.DEBUG, logger="orchard.storages.mongodb.client")

    def restart() -> None:
        deadline = time.monotonic() + 60
        while "MongoDB driver error" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        server.start()

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opening", ["build_experiment", "get_experiment"])
def test_joining_while_the_server_restarts_waits_for_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, opening: str) -> None:
    """A server the driver had found goes away as a worker joins: the join waits for it (seen in chaos runs).
    orchard.get_experiment gave up at once (128 workers opening an experiment on the test server at once:
    3-4 died on its 20 s index creation), where build_experiment waited.

    A storage that never answered still fails at once (a wrong address): only a server that had
    answered (or was lost mid-call) is waited for, for the storage patience.
    """
    open_experiment = getattr(orchard, opening)
    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "join") + "?serverSelectionTimeoutMS=1000"
        orchard.build_experiment("join", space={"x": "uniform(0, 1)"}, storage=uri)
        store = get_storage(uri)
        store.list_experiments()  # the driver has found the server
        server.kill()
        restart = _restart_after_a_failed_call(server, caplog)
        try:
            joined = open_experiment("join", storage=store)
        finally:
            restart.join()
        assert joined.name == "join"
        store.close()
        nobody = "mongodb://127.0.0.1:1/join?serverSelectionTimeoutMS=300"  # nothing listens on port 1
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="cannot reach MongoDB"):
            open_experiment("join", storage=nobody)
        assert time.monotonic() - started < 5, "a storage that never answered must fail at once"


@pytest.mark.timeout(60)
def test_a_worker_started_during_an_outage_waits_for_a_server_its_parent_had_reached(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """workon ships the storage to its workers by pickle; a worker whose first call fell in an outage (the server
    killed as the workers started) died at once with 'cannot reach MongoDB … check that mongod is running',
    as for a wrong address, and workon raised it, though the process that started it had reached the server."""
    import pickle

    from orchard.storages.retrying import RetryingStorage

    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "shipped") + "?serverSelectionTimeoutMS=1000"
        store = get_storage(uri)
        exp = store.create_experiment("e", {})
        shipped = pickle.loads(pickle.dumps(store))  # as an executor hands it to a worker process
        server.kill()
        restart = _restart_after_a_failed_call(server, caplog)
        try:
            counts = RetryingStorage(shipped, 30.0).count_trials(exp)  # the worker's first call
        finally:
            restart.join()
        assert sum(counts.values()) == 0
        store.close()
        shipped.close()
        never = pickle.loads(pickle.dumps(get_storage("mongodb://127.0.0.1:1/e?serverSelectionTimeoutMS=300")))
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="cannot reach MongoDB"):
            RetryingStorage(never, 30.0).count_trials(exp)
        assert time.monotonic() - started < 5, "a storage that never answered must still fail at once"


@pytest.mark.timeout(90)
def test_status_watch_rides_out_a_server_restart(tmp_path: Path) -> None:
    """`orchard status --watch` ended with 'orchard: error: cannot reach MongoDB … check that mongod is running'
    (exit 2) on the first refresh that fell in a 4 s restart: a monitor stopped by the outage it should show."""
    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "watch") + "?serverSelectionTimeoutMS=500"
        exp = orchard.build_experiment("w", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=1, storage=uri)
        exp.workon(lambda x: x, n_workers=1)
        out, err = tmp_path / "watch.out", tmp_path / "watch.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "orchard", "status", "-n", "w", "--watch", "--interval", "0.2",
                                     "--storage", uri], stdout=stdout, stderr=stderr)
        try:
            wait_for(lambda: "1 completed" in out.read_text(), 30, "a first reading")
            server.kill()
            wait_for(lambda: "unavailable" in err.read_text() or proc.poll() is not None, 30, "a refresh in the outage")
            assert proc.poll() is None, err.read_text()
            shown = out.read_text().count("1 completed")
            server.start()
            wait_for(lambda: out.read_text().count("1 completed") > shown, 30, "a reading after the restart")
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
    assert "tries again" in err.read_text()


# -- a full or read-only disk, a deleted file (the pickle storage) ---------------------------


class DiskFull:
    """A pickle file on a 1 MiB tmpfs (needs root: skipped elsewhere) that is filled to the last byte."""

    expected = "[Errno 28] No space left on device"

    def __init__(self, tmp_path: Path) -> None:
        self.disk = tmp_path / "disk"
        self.disk.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.disk)],
                                 capture_output=True, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
        self.path, self.filler = self.disk / "orchard.pkl", self.disk / "filler"

    def start(self) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            for size in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)

    def stop(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.disk)], check=False)


class ReadOnly:
    """A pickle file made immutable (``chattr +i``: even root cannot write it; skipped where unsupported)."""

    expected = "[Errno 1] Operation not permitted"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "orchard.pkl"

    def start(self) -> None:
        done = subprocess.run(["chattr", "+i", str(self.path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make a file immutable here: {done.stderr.decode().strip()}")

    def stop(self) -> None:
        subprocess.run(["chattr", "-i", str(self.path)], capture_output=True, check=False)

    close = stop


class FileTooLarge:
    """The worker's file size limit (``ulimit -f``, set with ``prlimit``) lowered to the file's size: EFBIG.

    The completed result was thrown away: the error was not retried, and the worker died.
    """

    expected = "[Errno 27] File too large"

    def __init__(self, tmp_path: Path) -> None:
        self.path, self.started = tmp_path / "orchard.pkl", tmp_path / "started"

    def _limit(self, soft: str) -> None:
        done = subprocess.run(["prlimit", "--pid", self.started.read_text(), f"--fsize={soft}:unlimited"],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot set a process's file size limit here: {done.stderr.decode().strip()}")

    def start(self) -> None:
        self._limit(str(self.path.stat().st_size))

    def stop(self) -> None:
        self._limit("unlimited")

    def close(self) -> None:
        pass


@pytest.fixture(params=[DiskFull, ReadOnly, FileTooLarge], ids=["disk full", "read-only file", "file too large"])
def refusing_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DiskFull | ReadOnly | FileTooLarge]:
    fault = request.param(tmp_path)
    try:
        yield fault
    finally:
        fault.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_result_computed_while_the_disk_refuses_writes_is_kept_and_written_later(
        refusing_disk: DiskFull | ReadOnly | FileTooLarge, tmp_path: Path, spawn: Callable[..., FaultWorker]) -> None:
    storage = str(refusing_disk.path)
    worker = spawn(storage, "full", "waits_for_go", max_trials=1, heartbeat=0.25)
    wait_for(lambda: (tmp_path / "started").exists() or worker.process.poll() is not None, 60,
             "the evaluation to start")
    refusing_disk.start()
    # the heartbeats use up what the file's last page had left, then fail: the fault is met
    wait_for(lambda: refusing_disk.expected in worker.log() or worker.process.poll() is not None, 30,
             "a write to fail")
    (tmp_path / "go").touch()  # the result is computed while no write can land
    time.sleep(2.0)
    assert worker.process.poll() is None, f"the worker gave up at once:\n{worker.log()[-2000:]}"
    [held] = trials_of(storage, "full")
    assert held.status is TrialStatus.RESERVED
    assert f"cannot write to storage file {storage}: {refusing_disk.expected}" in worker.log(), \
        "one line naming the file and the errno"
    refusing_disk.stop()
    assert_finished_normally(worker, timeout=60)
    assert_one_result_stored(storage, "full")


def test_a_compaction_that_finds_the_disk_full_is_not_retried_after_every_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction failing with ENOSPC was tried again after each further `compact_bytes` (1 MiB) of log,
    each attempt holding the lock while it wrote (1.1 s at 44 MiB), with a warning each time."""
    disk = DiskFull(tmp_path)
    try:
        path = str(disk.path)
        exp_id = PickledStorage(path, fsync=False, compact_bytes=1 << 30).create_experiment("e", {})
        writer = PickledStorage(path, fsync=False, compact_bytes=1 << 30)  # a long log, never compacted
        for i in range(600):
            trial = writer.register_trial(exp_id, {"x": float(i)}, worker="w")
            writer.complete_trial(trial.id, "w", float(i))
        disk.start()
        os.truncate(disk.filler, disk.filler.stat().st_size - 100_000)  # room for appends, not for a snapshot
        worker = PickledStorage(path, fsync=False, compact_bytes=4096)
        with caplog.at_level(logging.DEBUG, logger="orchard.storages.pickled"):
            for i in range(150):  # about 70 KB of log: 17 x compact_bytes
                worker.register_trial(exp_id, {"x": 1000.0 + i}, worker="w")
        attempts = [r for r in caplog.records if "could not compact" in r.getMessage()]
        assert "No space left on device" in attempts[0].getMessage()
        assert [r.levelno for r in attempts].count(logging.WARNING) == 1, "warned once"
        assert len(attempts) == 1, f"{len(attempts)} attempts, each holding the lock"
        assert not [p for p in disk.disk.iterdir() if p.name.endswith(".tmp")]
        disk.stop()
        worker.register_trial(exp_id, {"x": -1.0}, worker="w")
        assert sum("could not compact" in r.getMessage() for r in caplog.records) == 1, \
            "not tried again before the log grew by half or RETRY_AFTER passed"
        later = writer_module._clock() + writer_module.RETRY_AFTER
        monkeypatch.setattr(writer_module, "_clock", lambda: later)
        with caplog.at_level(logging.WARNING, logger="orchard.storages.pickled"):
            worker.register_trial(exp_id, {"x": -2.0}, worker="w")
        assert "compacted storage file" in caplog.records[-1].getMessage()
        assert os.path.getsize(path) < 370_000 / 2
        assert len(PickledStorage(path).fetch_trials(exp_id)) == 752
    finally:
        disk.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_file_deleted_under_a_running_worker_is_named_not_recreated(
        tmp_path: Path, spawn: Callable[..., FaultWorker], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHARD_STORAGE_PATIENCE", "1")  # the lease (1.5 s) then bounds the wait
    path = tmp_path / "orchard.pkl"
    worker = spawn(str(path), "deleted", "steady", max_trials=20, heartbeat=0.5)
    def a_result() -> bool:
        with contextlib.suppress(ExperimentNotFoundError):
            return any(t.status is TrialStatus.COMPLETED for t in trials_of(str(path), "deleted"))
        return False

    wait_for(a_result, 60, "a first result")
    path.unlink()
    code = worker.wait(timeout=60)
    assert code != 0 and not path.exists(), "the file was recreated empty under the running worker"
    assert f"storage file {path} was deleted while this process was using it" in worker.log()


# -- round trips that stay flat as workers are added ---------------------------------------


def _sent_commands() -> list[str]:
    """The names of the commands sent from now on by the clients this process opens (a growing list)."""
    from pymongo import monitoring

    sent: list[str] = []

    class Counter(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            sent.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monitoring.register(Counter())
    return sent


def _register_counting_commands(uri: str, experiment_id: str, n: int, tag: str, *, start: Any) -> int:
    """Register ``n`` trials under a budget once every racer is connected; return the commands sent."""
    sent = _sent_commands()
    with get_storage(uri) as storage:
        storage.count_trials(experiment_id)  # connected, indexes ensured
        before = len(sent)
        start.wait(120)
        for i in range(n):
            storage.register_trial(experiment_id, {"tag": tag, "i": i}, budget=1000)
        return len(sent) - before


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_racing_registrations_cost_two_round_trips_each(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """8 processes registering at once: no retry on a taken slot (a draw, then the insert)."""
    from orchard.testing import races

    uri = backend_uri("mongodb", request, tmp_path)
    with get_storage(uri) as storage:
        exp = storage.create_experiment("flat", {})
    sent = races.run_racing(_register_counting_commands, [(uri, exp, 5, f"p{i}") for i in range(8)])
    assert sum(sent) == 2 * 8 * 5, f"round trips per process: {sent}"


def _commands_at_the_budget(uri: str, experiment_id: str, *, start: Any) -> list[list[str]]:
    """The commands of a registration refused at a full budget, then of one that takes a broken trial's unit."""
    sent = _sent_commands()
    start.wait(120)
    steps: list[list[str]] = []
    with get_storage(uri) as storage:
        first = storage.register_trial(experiment_id, {"i": 0}, worker="w", budget=200)
        for i in range(1, 200):
            storage.register_trial(experiment_id, {"i": i}, budget=200)
        for register in (True, False, True):
            del sent[:]
            if register:
                with contextlib.suppress(BudgetExhaustedError):
                    storage.register_trial(experiment_id, {"i": 200}, budget=200)
            else:
                storage.fail_trial(first.id, "w", {"type": "E", "message": "m"})
            steps.append(list(sent))
    return [steps[0], steps[2]]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_registration_at_the_budget_reads_once_or_twice(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Refused: the failed draw and one read; a broken trial's unit: a read of the slots held, one insert."""
    from orchard.testing import races

    uri = backend_uri("mongodb", request, tmp_path)
    with get_storage(uri) as storage:
        exp = storage.create_experiment("full", {})
    [(refused, freed)] = races.run_racing(_commands_at_the_budget, [(uri, exp)])
    assert refused == ["findAndModify", "aggregate"]
    assert freed == ["findAndModify", "aggregate", "find", "find", "update"]  # the slots held, the experiment


def _twice(x: float) -> float:
    return 2 * x


def _join_counting_commands(uri: str, name: str, *, start: Any) -> dict[str, int]:
    """Join the experiment, run its trials in this one worker, leave; return the commands sent, by name."""
    import collections

    import orchard
    from orchard import worker

    # a suggestion costing over 5 ms of CPU is checked against racers with one more look; the
    # first one of a fresh process (importing the algorithm, compiling it on a fresh clone) can
    worker._RACE_CHECK_AFTER = float("inf")
    sent = _sent_commands()
    start.wait(120)
    exp = orchard.get_experiment(name, storage=uri)
    exp.workon(_twice, executor="single", progress=False)
    exp.storage.close()  # as the process exit does (its sessions ended): workon leaves it open to the caller
    return dict(collections.Counter(sent))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_worker_joining_and_leaving_sends_each_command_once(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Per trial: a draw, the insert, the result, a look; per worker: one index check, one count, a read of
    the budget once it looks met (raised meanwhile?), the final list; reads of the experiment on joining. The
    count and the first look find it empty, which read it again (deleted by another process?) only for an
    experiment the handle saw hold a trial: 2 finds more per worker, at once, when 128 joined."""
    import orchard
    from orchard.testing import races

    uri = backend_uri("mongodb", request, tmp_path)
    orchard.build_experiment("joined", space={"x": "uniform(0, 1)"}, algorithm="random", storage=uri, max_trials=3)
    [sent] = races.run_racing(_join_counting_commands, [(uri, "joined")])
    # the looks (4) are change-feed reads: an aggregate, which brings the server's date along
    assert sent == {"createIndexes": 1, "find": 3 + 2, "aggregate": 1 + 4, "findAndModify": 2 * 3,
                    "update": 3, "endSessions": 1}, sent


def test_a_worker_waiting_for_others_last_trials_only_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wind-down: every unit of budget is held by another worker, so nothing is tried but a look."""
    from orchard.clock import ManualClock
    from orchard.errors import BudgetExhaustedError
    from orchard.objective import Outcome
    from orchard.worker import Worker, WorkerSettings

    storage: Any = get_storage("memory://")
    space = {"x": "uniform(0, 1)"}
    exp = storage.create_experiment("e", {"space": space})
    storage.register_trial(exp, {"x": 0.5}, worker="someone-else", budget=1)
    calls: list[str] = []
    for verb in ("reserve_trial", "register_trial"):
        real = getattr(storage, verb)
        monkeypatch.setattr(storage, verb, lambda *a, _real=real, _verb=verb, **k: (calls.append(_verb), _real(*a, **k))[1])
    worker = Worker(storage, exp, WorkerSettings.from_dict({"space": space, "algorithm": "random", "max_trials": 1}),
                    lambda t: Outcome(), clock=ManualClock())
    with pytest.raises(BudgetExhaustedError):
        worker.next_trial(timeout=10.0)  # many looks, on the manual clock
    worker.pacemaker.close()
    assert calls == []


@pytest.mark.parametrize(("holders", "looks", "longest"), [(1, 13, 0.1), (8, 11, 0.125), (16, 7, 0.25), (64, 4, 0.64)])
def test_a_large_fleet_winding_down_looks_as_often_as_8_workers(
        monkeypatch: pytest.MonkeyPatch, holders: int, looks: int, longest: float) -> None:
    """The first back-off is 20 ms per 8 workers holding trials, then doubles up to holders / 64 s (0.1 to 1 s):
    fewer reads in a large fleet's wind-down, and a small fleet's waiters see the last trial end at most that
    late (doubling to 1 s, 16 workers ending 200 one-second trials waited 0.5 s more than they needed)."""
    from orchard.clock import ManualClock
    from orchard.errors import BudgetExhaustedError
    from orchard.objective import Outcome
    from orchard.worker import Worker, WorkerSettings

    storage: Any = get_storage("memory://")
    space = {"x": "uniform(0, 1)"}
    exp = storage.create_experiment("e", {"space": space})
    for i in range(holders):
        storage.register_trial(exp, {"x": i / holders}, worker=f"other-{i}", budget=holders)
    reads: list[str] = []
    real = storage.fetch_changes
    monkeypatch.setattr(storage, "fetch_changes", lambda *a, **k: (reads.append("look"), real(*a, **k))[1])
    settings = WorkerSettings.from_dict({"space": space, "algorithm": "random", "max_trials": holders})
    clock, sleeps = ManualClock(), list[float]()
    monkeypatch.setattr(clock, "sleep", lambda seconds, _real=clock.sleep: (sleeps.append(seconds), _real(seconds))[1])
    worker = Worker(storage, exp, settings, lambda t: Outcome(), clock=clock)
    with pytest.raises(BudgetExhaustedError):
        worker.next_trial(timeout=1.0)  # 1.26 s of back-off from 20 ms, 1.12 s from 160 ms
    worker.pacemaker.close()
    assert len(reads) == looks
    assert max(sleeps) == pytest.approx(longest)  # 64: 0.16, 0.32, 0.64 within the second (1 s after)


def test_a_write_the_driver_retried_after_it_took_effect_is_not_refused() -> None:
    """A server that does not recognise a retried write lets it meet its own effect: that is success."""
    from orchard import trial as transitions
    from orchard.errors import ReservationLostError

    storage: Any = get_storage("mongomock://")
    exp = storage.create_experiment("e", {})
    trial = storage.register_trial(exp, {"x": 1}, worker="w")
    done = transitions.complete("w", 1.0, {}, 10.0)
    assert storage._apply(trial.id, done).status is TrialStatus.COMPLETED
    assert storage._apply(trial.id, done).objective == 1.0  # the same command again: its own effect
    with pytest.raises(ReservationLostError):
        storage._apply(trial.id, transitions.complete("w", 2.0, {}, 11.0))  # another result: refused


@pytest.mark.parametrize("backend", [pytest.param("mongomock", id="mongomock"),
                                     pytest.param("mongodb", id="mongodb", marks=pytest.mark.slow)])
@pytest.mark.parametrize("value", [0.5, (0.5, -2.0)], ids=["one objective", "two objectives"])
def test_a_report_the_driver_retried_after_it_took_effect_is_stored_once_not_refused(
        backend: str, value: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """SecantusDB restarted (like a mongod that lost its session table) does not recognise the driver's retry
    of a report whose reply was lost: the retry met the report stored and was refused as a lost reservation,
    so the worker gave up a trial it still held (its evaluation lost, the trial waiting out its lease)."""
    from orchard import trial as transitions
    from orchard.errors import ReservationLostError

    storage: Any = get_storage(backend_uri(backend, request, tmp_path))
    exp = storage.create_experiment("e", {})
    trial = storage.register_trial(exp, {"x": 1}, worker="w")
    report = transitions.report(trial.id, "w", 1, value, 10.0, 0, None)
    assert storage._apply(trial.id, report).reports == [(1, value)]
    again = storage._apply(trial.id, report)  # the same command again: its own effect
    assert (again.status, again.worker, again.reports) == (TrialStatus.RESERVED, "w", [(1, value)])
    with pytest.raises(ReservationLostError):  # another report made at the same count: refused
        storage._apply(trial.id, transitions.report(trial.id, "w", 2, value, 11.0, 0, None))
    assert storage.get_trial(trial.id).reports == [(1, value)]


def test_a_report_the_driver_retried_is_found_stored_after_a_heartbeat_landed_meanwhile() -> None:
    """The worker's heartbeat thread beats on while the report's retry waits for the restarted server: a beat
    landing first changes the heartbeat the report set, and the retry, which met its report stored, was refused
    ("trial ... is reserved and owned by w, not reserved by w"), as seen in the chaos test with reporting scripts."""
    from orchard import trial as transitions
    from orchard.errors import ReservationLostError

    storage: Any = get_storage("mongomock://")
    exp = storage.create_experiment("e", {})
    trial = storage.register_trial(exp, {"x": 1}, worker="w")
    storage.report_trial(trial.id, "w", 1, 0.5)
    second = transitions.report(trial.id, "w", 2, 0.25, 10.0, 1, 1)
    assert storage._apply(trial.id, second).reports == [(1, 0.5), (2, 0.25)]
    storage.heartbeat_trial(trial.id, "w")  # the lease renewed between the write and the driver's retry
    assert storage._apply(trial.id, second).reports == [(1, 0.5), (2, 0.25)]  # the same command: its own effect
    with pytest.raises(ReservationLostError):  # the same report by a worker that does not hold the trial
        storage._apply(trial.id, transitions.report(trial.id, "v", 2, 0.25, 10.0, 1, 1))
    assert storage.get_trial(trial.id).reports == [(1, 0.5), (2, 0.25)]
