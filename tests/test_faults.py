"""What clusters do to workers, done to real worker processes (SPEC §4 max_attempts, §5.8, §5.9).

Each test starts workers as separate processes (``python -m tests.fault_workers``)
and does the fault for real: the MongoDB wire server is SIGKILLed and started
again on its port and data; the pickle file's lock is held by another
process's kernel ``flock``; an objective SIGKILLs its own worker; workers run
under ``faketime`` with wall clocks 100 s ahead and behind.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import orchard
from orchard.storages import get_storage
from orchard.testing._mongo_uri import with_database
from orchard.testing.mongo_server import WireServer
from orchard.trial import Trial, TrialStatus
from tests.conftest import backend_uri
from tests.fault_workers import POISON

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]

#: Takes the pickle file's kernel lock, says so, holds it for argv[2] seconds.
HOLD_LOCK = (
    "import fcntl, sys, time\n"
    "f = open(sys.argv[1], 'a')\n"
    "fcntl.flock(f, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


class Worker:
    """One worker process and its output files."""

    def __init__(self, tmp: Path, tag: str, args: Sequence[str], prefix: Sequence[str] = ()) -> None:
        self.out, self.err = tmp / f"{tag}.out", tmp / f"{tag}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "tests.fault_workers", *args],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.err.read_text()

    def stats(self) -> dict[str, object]:
        return json.loads(self.out.read_text().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts worker processes; kills whatever is left of them after the test."""
    started: list[Worker] = []

    def start(storage: str, name: str, objective: str, *, max_trials: int, heartbeat: float,
              prefix: Sequence[str] = (), max_broken: int = 3, options: Sequence[str] = ()) -> Worker:
        args = [storage, name, objective, "--dir", str(tmp_path), "--max-trials", str(max_trials),
                "--heartbeat", str(heartbeat), "--max-broken", str(max_broken), *options]
        started.append(Worker(tmp_path, f"worker-{len(started)}", args, prefix))
        return started[-1]

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def trials_of(storage_uri: str, name: str) -> list[Trial]:
    with get_storage(storage_uri) as storage:
        return storage.fetch_trials(storage.require_experiment(name).id)


def assert_finished_normally(worker: Worker, timeout: float) -> None:
    code = worker.wait(timeout)
    assert code == 0, f"worker exited with {code}; end of its log:\n{worker.log()[-3000:]}"


def assert_one_result_stored(storage_uri: str, name: str) -> None:
    [trial] = trials_of(storage_uri, name)
    assert (trial.status, trial.attempts) == (TrialStatus.COMPLETED, 1)
    assert trial.objective == trial.params["x"], "the result the evaluation returned is the one stored"


# -- outages shorter than the lease lose nothing (SPEC §5.9) ----------------------------------


def test_a_wire_server_down_for_8_s_as_an_evaluation_ends_loses_nothing(
        tmp_path: Path, spawn: Callable[..., Worker]) -> None:
    with WireServer(tmp_path, durable=True) as server:  # acknowledged writes survive its SIGKILL
        uri = with_database(server.uri, "outage")
        worker = spawn(uri, "outage", "waits_for_go", max_trials=1, heartbeat=10.0)  # lease: 30 s
        wait_for(lambda: (tmp_path / "started").exists() or worker.process.poll() is not None, 60,
                 "the evaluation to start")
        server.kill()  # SIGKILL, as a crash or an OOM kill of mongod would
        (tmp_path / "go").touch()  # the evaluation ends while the server is down
        time.sleep(8.0)  # the outage itself
        server.start()  # same port, same data directory
        assert_finished_normally(worker, timeout=120)
        assert_one_result_stored(uri, "outage")
    assert worker.stats()["counts"] == {**{s.value: 0 for s in TrialStatus}, "completed": 1}
    assert "was unavailable for" in worker.log(), "the worker says in one line what happened"


def test_a_pickle_lock_held_elsewhere_for_5_s_as_an_evaluation_ends_loses_nothing(
        tmp_path: Path, spawn: Callable[..., Worker]) -> None:
    path = tmp_path / "db.pkl"
    uri = f"pickle://{path}?timeout=1"  # a lock wait of 1 s: the 5 s hold is an outage to this worker
    worker = spawn(uri, "locked", "waits_for_go", max_trials=1, heartbeat=10.0)
    wait_for(lambda: (tmp_path / "started").exists() or worker.process.poll() is not None, 60,
             "the evaluation to start")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, f"{path}.lock", "5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (tmp_path / "go").touch()  # the evaluation ends while another process holds the lock
        assert_finished_normally(worker, timeout=90)
    finally:
        holder.kill()
        holder.wait()
    assert_one_result_stored(str(path), "locked")
    assert "was unavailable for" in worker.log()


# -- a trial that kills its workers is broken after max_attempts (SPEC §4) -----------------


def test_a_trial_that_kills_its_worker_breaks_after_3_losses_and_the_experiment_finishes(
        tmp_path: Path, spawn: Callable[..., Worker]) -> None:
    uri, n_trials = str(tmp_path / "db.pkl"), 10
    exp = orchard.build_experiment("poison", space={"x": "uniform(0, 1)"}, algorithm="random",
                                   storage=uri, max_trials=n_trials, heartbeat=0.5)
    exp.insert({"x": POISON})  # reserved first, by whichever worker comes first
    workers = [spawn(uri, "poison", "poison", max_trials=n_trials, heartbeat=0.5) for _ in range(6)]
    codes = [w.wait(timeout=180) for w in workers]
    assert sorted(codes) == [-9, -9, -9, 0, 0, 0], "exactly three workers died on the poison trial"
    trials = trials_of(uri, "poison")
    [poisoned] = [t for t in trials if t.params["x"] == POISON]
    assert (poisoned.status, poisoned.attempts) == (TrialStatus.BROKEN, 3)
    assert poisoned.error is not None and (poisoned.error["type"], poisoned.error["reason"]) == ("TrialLost", "lost")
    assert "OOM killer" in poisoned.error["message"]
    assert collections.Counter(t.status for t in trials) == {TrialStatus.COMPLETED: n_trials, TrialStatus.BROKEN: 1}
    assert len((tmp_path / "poisoned").read_text().split()) == 3


def test_a_reservation_holding_no_heartbeat_is_taken_back_without_an_attempt_and_the_experiment_finishes(
        tmp_path: Path, spawn: Callable[..., Worker]) -> None:
    """The last trial of the budget is reserved by another program, with no heartbeat: the workers judge it
    by observation like any lease (unchanged for 3 × heartbeat), take it back without counting an attempt
    (max_attempts=1 would break it), evaluate it and finish. They used to wait for it for ever."""
    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("foreign", space={"x": "uniform(0, 1)"}, algorithm="random", storage=uri,
                                   max_trials=1, heartbeat=0.2, max_attempts=1)
    held = Trial("", exp.id, {"x": 0.25}, status=TrialStatus.RESERVED, worker="another-program", attempts=1)
    assert exp.storage.restore_trials(exp.id, [held]) == 1
    workers = [spawn(uri, "foreign", "steady", max_trials=1, heartbeat=0.2) for _ in range(2)]
    for worker in workers:
        assert_finished_normally(worker, timeout=30)
    [trial] = trials_of(uri, "foreign")
    assert (trial.status, trial.params, trial.attempts) == (TrialStatus.COMPLETED, {"x": 0.25}, 1)


# -- skewed clocks release nothing live (SPEC §5.8) ---------------------------------------


@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_workers_with_clocks_100_s_apart_reserve_every_trial_once(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path, spawn: Callable[..., Worker]) -> None:
    """Trials outlast the lease, and a worker left without one watches the others': the faked workers'
    heartbeats keep theirs (their heartbeat thread's timed waits never ended under libfaketime, so their
    trials were taken back from them as lost and run twice)."""
    uri = backend_uri(backend, request, tmp_path)
    n_trials = 2  # fewer than the workers: one waits, watching the leases of the others' trials
    skews = [(), ("faketime", "-f", "+100s"), ("faketime", "-f", "-100s")]
    workers = [spawn(uri, "skew", "outlasting", max_trials=n_trials, heartbeat=1.0, prefix=skew)
               for skew in skews]
    for worker in workers:
        assert_finished_normally(worker, timeout=150)
    trials = trials_of(uri, "skew")
    assert collections.Counter(t.status for t in trials) == {TrialStatus.COMPLETED: n_trials}
    assert collections.Counter(t.attempts for t in trials) == {1: n_trials}, "a live trial was released"
    for worker in workers:
        assert "refused" not in worker.log() and "stopped heartbeating" not in worker.log(), worker.log()


def test_a_trial_timeout_stops_a_script_of_a_worker_under_faketime(tmp_path: Path) -> None:
    """A worker under faketime (a node's skewed clock) never stopped a script at its --trial-timeout (nor at
    its --trial-memory-limit): the thread watching it timed its waits with a clock libfaketime fakes, and a
    hung script ran on for as long as it liked."""
    hunt = ["faketime", "-f", "+100s", sys.executable, "-m", "orchard", "hunt", "-n", "hung", "--storage",
            str(tmp_path / "o.pkl"), "--max-trials", "1", "--max-broken", "1", "--trial-timeout", "1"]
    started = time.monotonic()
    result = subprocess.run([*hunt, sys.executable, "-c", "import time; time.sleep(40)", "--x~uniform(0, 1)"],
                            cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert "TimeoutError: script ran longer than --trial-timeout=1 s" in result.stderr, result.stderr
    assert time.monotonic() - started < 30


# -- a server restarted empty: nothing recreated, the result in hand not lost silently ----------


@pytest.mark.parametrize("heartbeat", [10.0, 0.5], ids=["its write finds it", "a heartbeat finds it first"])
def test_a_server_restarted_empty_under_a_worker_is_named_and_the_result_in_hand_is_shown(
        tmp_path: Path, spawn: Callable[..., Worker], heartbeat: float) -> None:
    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "wiped")
        worker = spawn(uri, "wiped", "waits_for_go", max_trials=3, heartbeat=heartbeat)
        wait_for(lambda: (tmp_path / "started").exists() or worker.process.poll() is not None, 60,
                 "the evaluation to start")
        [held] = trials_of(uri, "wiped")
        server.kill()
        shutil.rmtree(server.home / "data")  # the data directory wiped, as a server reinstalled
        server.start()  # same port, no data
        if heartbeat < 1:  # the objective (in the worker's own thread) cannot be stopped: it runs to its end
            wait_for(lambda: "lost its reservation" in worker.log() or worker.process.poll() is not None, 60,
                     "a heartbeat to find the trial gone")
        (tmp_path / "go").touch()
        code = worker.wait(timeout=120)
        with get_storage(uri) as storage:
            assert storage.list_experiments() == [], "the experiment was recreated in the empty server"
    log = worker.log()
    assert code != 0 and "was deleted" in log, log[-3000:]
    x = held.params["x"]
    assert f"objective={x!r}" in log and f"'x': {x!r}" in log, f"no result in hand:\n{log[-3000:]}"


def test_a_script_whose_experiment_is_deleted_under_it_is_stopped_not_held_forever(
        tmp_path: Path, mongo_db_uri: str) -> None:
    """`orchard db rm` (or a server restarted empty) under `orchard hunt` evaluating a script: each heartbeat
    failed with 'trial … was deleted', taken for an outage, so the script was paused after two and the
    worker waited for a storage that would never confirm the reservation, forever."""
    script = tmp_path / "long.py"
    script.write_text("import sys, time, orchard\n"
                      "open(sys.argv[2], 'w').close()\n"
                      "time.sleep(60)\n"
                      "orchard.report_objective(float(sys.argv[1].split('=')[1]))\n")
    started = tmp_path / "started"
    hunt = subprocess.Popen(
        [sys.executable, "-m", "orchard", "hunt", "-n", "rm", "--storage", mongo_db_uri, "--max-trials", "2",
         "--heartbeat", "0.5", sys.executable, str(script), "--x~uniform(0, 1)", str(started)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: started.exists() or hunt.poll() is not None, 60, "the script to start")
        with get_storage(mongo_db_uri) as storage:
            storage.delete_experiment(storage.require_experiment("rm").id)  # what orchard db rm does
        out, _ = hunt.communicate(timeout=60)
    finally:
        if hunt.poll() is None:
            os.killpg(hunt.pid, 9)
            hunt.wait()
    assert hunt.returncode == 1 and "'rm' was deleted" in out, out[-3000:]
    assert "raise heartbeat" not in out and "was deleted while worker" in out, out[-3000:]  # not a lease to blame
