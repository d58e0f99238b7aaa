"""Masterless workers in real processes: exact budget, executors, crash recovery."""

from __future__ import annotations

import functools
import itertools
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orchard
from orchard.trial import Trial, TrialStatus
from tests import workloads

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
ROOT = Path(__file__).resolve().parent.parent


def _assert_exact(exp: orchard.Experiment, budget: int) -> None:
    trials = exp.fetch_trials()
    completed = [t for t in trials if t.status is TrialStatus.COMPLETED]
    assert len(completed) == budget
    assert len(trials) == budget, [t.status for t in trials]
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)


def _run_independent_processes(storage: str, n: int, budget: int, timeout: float) -> None:
    with SPAWN.Pool(n) as pool:
        results = [pool.apply_async(workloads.workon_process, (storage, "race", budget)) for _ in range(n)]
        reports = [r.get(timeout=timeout) for r in results]  # every process exits by itself
    assert all(r["counts"]["completed"] == budget for r in reports)


def test_six_independent_processes_share_one_pickle_file(tmp_path) -> None:
    storage = str(tmp_path / "orchard.pkl")
    _run_independent_processes(storage, 6, 120, timeout=180)
    _assert_exact(orchard.get_experiment("race", storage=storage), 120)


def test_three_independent_processes_over_mongodb_wire(mongo_uri) -> None:
    _run_independent_processes(mongo_uri, 3, 15, timeout=240)
    _assert_exact(orchard.get_experiment("race", storage=mongo_uri), 15)


@pytest.mark.parametrize("executor", ["joblib", "process", "dask"])
def test_workon_two_workers_with_each_executor(tmp_path, executor: str) -> None:
    exp = orchard.build_experiment("ex", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=16)
    # trial_timeout runs each objective in a child process: this must work inside every executor's workers
    stats = exp.workon(workloads.slow_quadratic, n_workers=2, executor=executor, trial_timeout=60, progress=False)
    assert stats["counts"]["completed"] == 16
    _assert_exact(exp, 16)
    workers = {t.worker.split(":")[1] for t in exp.fetch_trials()}
    assert len(workers) == 2, f"expected two worker processes, saw pids {workers}"


def test_a_raising_callback_stops_pool_workers_and_releases_their_trials(tmp_path) -> None:
    # a third of the trials break at once: with the default max_broken=3 the run could end on its own before
    # the monitor's first look (0.5 s), leaving nothing for the callback to stop (test_experiment.py has that case)
    exp = orchard.build_experiment("cb", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=40,
                                   max_broken=100)
    calls: list[str] = []

    def on_error(trial: Trial) -> None:
        calls.append(trial.id)
        raise ValueError("callback bug")

    with pytest.raises(ValueError, match="callback bug") as info:
        exp.workon(workloads.slow_branin_breaking_low_x, n_workers=2, executor="joblib", progress=False,
                   on_error=on_error)
    assert isinstance(info.value.__context__, orchard.Interrupted)  # says what was released
    trials = exp.fetch_trials()
    assert len(calls) == 1
    assert sum(t.status is TrialStatus.COMPLETED for t in trials) < 40
    assert not [t for t in trials if t.status is TrialStatus.RESERVED]


def test_sigkilled_worker_trial_is_recovered_by_another(tmp_path) -> None:
    storage = str(tmp_path / "orchard.pkl")
    marker = tmp_path / "marker"
    env = {**os.environ, "ORCHARD_TEST_MARKER": str(marker)}
    code = ("from tests import workloads; workloads.workon_process("
            f"{storage!r}, 'crash', 6, fn_name='marker_then_slow', heartbeat=0.5)")
    victim = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    exp = orchard.get_experiment("crash", storage=storage)
    (lost,) = exp.fetch_trials([TrialStatus.RESERVED])
    rescuer = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parent.parent, timeout=120)
    assert rescuer.returncode == 0
    recovered = exp.storage.get_trial(lost.id)
    assert recovered.status is TrialStatus.COMPLETED and recovered.attempts == 2
    assert recovered.worker != lost.worker
    _assert_exact(exp, 6)


def test_always_raising_objective_stops_all_workers_promptly(tmp_path) -> None:
    exp = orchard.build_experiment("broken", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                   max_trials=50, max_broken=3)
    start = time.monotonic()
    with pytest.raises(orchard.ExperimentBrokenError, match="max_broken=3"):
        exp.workon(workloads.always_raises, n_workers=3, progress=False)
    assert time.monotonic() - start < 60
    counts = exp.storage.count_trials(exp.id)
    assert 3 <= counts[TrialStatus.BROKEN] <= 5 and counts[TrialStatus.COMPLETED] == 0
    assert counts[TrialStatus.RESERVED] == 0


def test_parallel_bayes_workers_do_not_collapse(tmp_path) -> None:
    exp = orchard.build_experiment(
        "spread", space={"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}, storage=str(tmp_path / "o.pkl"),
        algorithm={"bayes": {"n_initial_points": 8}}, max_trials=40, seed=5)
    exp.workon(workloads.slow_branin, n_workers=4, progress=False)
    _assert_exact(exp, 40)
    trials = exp.fetch_trials()
    # trials that were being evaluated at the same time must be far apart (pending-aware suggestions)
    concurrent = [(a, b) for a, b in itertools.combinations(trials, 2)
                  if a.start_time < b.end_time and b.start_time < a.end_time]
    assert len(concurrent) >= 12, f"the four workers barely ran in parallel ({len(concurrent)} overlapping pairs)"
    def distance(pair: tuple[Trial, Trial]) -> float:
        a, b = pair
        return math.dist((a.params["x"], a.params["y"]), (b.params["x"], b.params["y"]))

    pair = min(concurrent, key=distance)
    assert distance(pair) > 1e-3, f"two concurrently evaluated trials nearly coincide: {pair}"
    # How good the search is, is not asserted here: 40 racing trials are too few for a stable figure
    # (trials below 3.0: 12 to 23 in 24 local runs, 2 and 6 on two CI-like runs; the best value
    # 1.06 once). It is asserted deterministically, with simulated workers, in test_algorithms.py
    # (test_bayes_beats_random_on_branin, test_bayes_four_simulated_workers_spread_out).


def test_objective_that_kills_its_worker_process_gives_one_clear_error(tmp_path) -> None:
    exp = orchard.build_experiment("dies", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=4)
    with pytest.raises(orchard.ExecutorError, match="died under executor 'joblib'.*trial_timeout"):
        exp.workon(workloads.exits_process, n_workers=1, executor="joblib", progress=False)
    (trial,) = exp.fetch_trials()  # taken back at once as lost (its attempt counts), not held until its lease
    assert trial.status is TrialStatus.INTERRUPTED and trial.attempts == 1
    # with a trial_timeout the objective runs in a child process: its death breaks the trial, not the worker
    exp2 = orchard.build_experiment("dies2", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                    max_trials=4, max_broken=2)
    with pytest.raises(orchard.ExperimentBrokenError, match="WorkerCrashed"):
        exp2.workon(workloads.exits_process, n_workers=1, trial_timeout=30, progress=False)


@pytest.mark.parametrize("executor", ["process", "joblib"])
def test_a_worker_process_that_dies_leaves_no_trial_reserved(tmp_path, executor: str) -> None:
    """One of 3 pool workers dies mid-trial (os._exit); the pool breaks. Its trial is taken back at once as
    lost (its attempt counts: a trial that keeps killing workers still breaks after max_attempts). The others'
    trials are given back too: released (attempt not counted) where the pool stops them with SIGTERM
    (``process``), taken back as lost where it SIGKILLs them (loky)."""
    from tests.evaluation_workloads import crashes_one_worker

    exp = orchard.build_experiment("dies", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=6)
    with pytest.raises(orchard.ExecutorError, match=f"died under executor '{executor}'"):
        exp.workon(functools.partial(crashes_one_worker, folder=str(tmp_path)), n_workers=3, executor=executor,
                   progress=False)
    trials = exp.fetch_trials()
    crashed = float((tmp_path / "crashed").read_text())
    assert len(trials) == 3 and all(t.status is TrialStatus.INTERRUPTED for t in trials), trials
    victims = 0 if executor == "process" else 1
    assert sorted(t.attempts for t in trials if t.params["x"] != crashed) == [victims, victims]
    assert [t.attempts for t in trials if t.params["x"] == crashed] == [1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_a_loky_worker_killed_while_the_others_report_leaves_no_trial_reserved(
        tmp_path, backend: str, request: pytest.FixtureRequest) -> None:
    """loky fails the pool's futures before it SIGKILLs the other workers: workon took back the trials while those
    workers still ran, their reports moved the heartbeats it had read, and the trials stayed reserved until their
    leases ran out (every run on MongoDB, most on a pickle file)."""
    from tests.conftest import backend_uri
    from tests.evaluation_workloads import crashes_one_reporting_worker

    exp = orchard.build_experiment("dies", space={"x": "uniform(0, 1)"}, storage=backend_uri(backend, request, tmp_path),
                                   max_trials=6, pruner="none")
    with pytest.raises(orchard.ExecutorError, match="died under executor 'joblib'"):
        exp.workon(functools.partial(crashes_one_reporting_worker, folder=str(tmp_path)), n_workers=3,
                   executor="joblib", progress=False)
    trials = exp.fetch_trials()
    assert len(trials) == 3 and all(t.status is TrialStatus.INTERRUPTED for t in trials), _states(trials)
    assert sorted(t.attempts for t in trials) == [1, 1, 1], _states(trials)


_FEW_FILES = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (16, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
import orchard
from tests import workloads
exp = orchard.build_experiment("few", space={"x": "uniform(0, 1)"}, storage=sys.argv[1], max_trials=20)
try:
    exp.workon(workloads.quadratic, n_workers=8, executor=sys.argv[2], progress=False)
except orchard.ExecutorError as err:
    print(err)
print(len(exp.fetch_trials()), "trials")
"""


@pytest.mark.parametrize("executor", ["process", "joblib"])
def test_eight_workers_under_ulimit_n_16_fail_with_one_clear_error_and_the_script_ends(
        tmp_path: Path, executor: str) -> None:
    """The standard library's pool that could not fork its second process left the first waiting for work for
    ever, and the script never ended (3 of 3 runs); loky raised "UnboundLocalError: ... 'child_r'"."""
    run = subprocess.run([sys.executable, "-c", _FEW_FILES, str(tmp_path / "o.pkl"), executor], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    said = run.stdout + run.stderr[-3000:]
    assert f"executor {executor!r} failed: OSError: [Errno 24] Too many open files" in run.stdout, said
    assert "this process may have 16 files open (ulimit -n)" in run.stdout, said
    assert run.stdout.endswith("0 trials\n")


_FINISHED_BY_OTHERS = """
import resource, sys, time
import orchard

def slow(x):
    time.sleep(0.2)
    return x

if __name__ == "__main__":
    in_call = sys.argv[3] == "workon"  # the budget is workon's max_trials, the experiment has none
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=sys.argv[1],
                                   max_trials=None if in_call else 3)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
    try:
        exp.workon(slow, n_workers=2, executor="thread", trial_timeout=60, progress=False,
                   max_trials=3 if in_call else None)
    except orchard.ExecutorError as err:
        print("raised:", err)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file limits counted on Linux")
@pytest.mark.parametrize("budget", ["experiment", "workon"])
def test_a_worker_out_of_open_files_does_not_fail_a_workon_the_others_finished(
        tmp_path: Path, budget: str) -> None:
    """Under a low `ulimit -n`, a worker that could not start an evaluation stopped, the other completed the
    budget, and workon raised the out-of-files ExecutorError (hunt was already warning): it warns and returns
    when the experiment is finished, and raises when it is not. With the budget given to the call
    (``workon(max_trials=3)``) it still raised, the experiment's own budget being unlimited."""
    script = tmp_path / "few.py"
    script.write_text(_FINISHED_BY_OTHERS)

    def run(limit: int) -> tuple[bool, subprocess.CompletedProcess[str]]:
        """Whether the budget was completed under at most ``limit`` open files, and the run."""
        storage = tmp_path / f"{limit}-{time.monotonic_ns()}.pkl"
        proc = subprocess.run([sys.executable, str(script), str(storage), str(limit), budget], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        trials = orchard.get_experiment("e", storage=str(storage)).fetch_trials() if storage.exists() else []
        return [t.status for t in trials] == [TrialStatus.COMPLETED] * 3, proc

    lowest = next(limit for limit in range(6, 64) if run(limit)[0])
    finished = []
    for attempt in range(12):  # the lowest limits: one of two evaluations at once is out of files, seldom not
        done, proc = run(lowest + attempt % 3)
        if not done:  # the budget not used: the error is raised
            said = proc.stdout + proc.stderr
            assert "raised: a worker could not start a child process" in proc.stdout, said
            continue
        assert proc.returncode == 0 and "raised:" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
        finished.append(proc)
        if "Too many open files" in proc.stderr:
            break
    warned = [proc.stderr for proc in finished if "Too many open files" in proc.stderr]
    assert warned, [proc.stdout + proc.stderr for proc in finished]
    done = "is finished" if budget == "experiment" else "ran the max_trials of this workon"
    assert (f"experiment 'e' {done}, but not every worker started here ran to its end: a worker could "
            "not start a child process to evaluate its trial (OSError: [Errno 24] Too many open") in warned[0]


def test_thread_workers_sharing_a_mongodb_storage_run_workon_after_workon(mongo_db_uri: str) -> None:
    """A notebook calling workon in a loop with executor='thread': the first loop to end closed the storage
    every loop shares, and another loop's next call failed ("Cannot use MongoClient after close"; within
    2 to 7 calls of 4 workers in each of 3 runs)."""
    exp = orchard.build_experiment("loop", space={"x": "uniform(0, 1)"}, storage=mongo_db_uri)
    for _ in range(20):
        exp.workon(workloads.quadratic, n_workers=4, executor="thread", max_trials=4, progress=False)
    _assert_exact(exp, 80)


@pytest.mark.slow
def test_a_dead_workers_report_landing_after_workon_read_its_lease_leaves_no_trial_reserved(
        tmp_path, mongo_db_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write a killed worker sent before it died can reach the server after its process is gone: one landing
    between workon's read of the leases and its take-back moved the heartbeat the take-back was conditional on,
    and the trial stayed reserved until its lease ran out (2 runs in 100 of the test above, on MongoDB, with
    2 CPU hogs). Here that write lands there every time: a heartbeat under the dead worker's name."""
    from tests.evaluation_workloads import crashes_one_worker

    exp = orchard.build_experiment("late", space={"x": "uniform(0, 1)"}, storage=mongo_db_uri, max_trials=6,
                                   pruner="none")
    storage_type, late = type(exp.storage), []
    release_lost = storage_type.release_lost

    def after_a_late_write(self, experiment_id, leases, max_attempts):  # type: ignore[no-untyped-def]
        if not late:
            trial_id = next(iter(leases))
            self.heartbeat_trial(trial_id, leases[trial_id].worker)
            late.append((leases[trial_id].heartbeat, self.get_trial(trial_id).heartbeat))
        return release_lost(self, experiment_id, leases, max_attempts)

    monkeypatch.setattr(storage_type, "release_lost", after_a_late_write)
    with pytest.raises(orchard.ExecutorError, match="died under executor 'joblib'"):
        exp.workon(functools.partial(crashes_one_worker, folder=str(tmp_path)), n_workers=3, executor="joblib",
                   progress=False)
    trials = exp.fetch_trials()
    assert late and late[0][0] != late[0][1], late  # the lease read moved
    assert len(trials) == 3 and all(t.status is TrialStatus.INTERRUPTED for t in trials), _states(trials)
    assert sorted(t.attempts for t in trials) == [1, 1, 1], _states(trials)


def _states(trials: list[Trial]) -> str:
    """Each trial's status, attempts, worker, heartbeat and report count, one short line each (a trial's
    repr holds every report)."""
    return "".join(f"\n  {t.id[:8]} {t.status.value} attempts={t.attempts} worker={t.worker} heartbeat={t.heartbeat} "
                   f"reports={len(t.reports)}" for t in trials)


MAIN_SCRIPT = """
import sys, orchard
def objective(x, y):          # defined in __main__: loky ships it with cloudpickle
    return (x - 1) ** 2 + y
{guard}exp = orchard.build_experiment("m", space={{"x": "uniform(0, 2)", "y": "uniform(0, 1)"}},
{indent}                           storage=sys.argv[2], max_trials=6)
{indent}exp.workon(objective, n_workers=2, executor=sys.argv[1], progress=False)
{indent}print("completed", exp.stats["counts"]["completed"])
"""


def _run_main_script(tmp_path, executor: str, guarded: bool) -> subprocess.CompletedProcess:
    guard, indent = ('if __name__ == "__main__":\n    ', "    ") if guarded else ("", "")
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT.format(guard=guard, indent=indent))
    return subprocess.run([sys.executable, str(script), executor, str(tmp_path / "o.pkl")],
                          capture_output=True, text=True, timeout=180)


def test_objective_defined_in_main_works_with_loky_without_a_guard(tmp_path) -> None:
    result = _run_main_script(tmp_path, "joblib", guarded=False)
    assert result.returncode == 0, result.stderr
    assert "completed 6" in result.stdout


def test_dask_without_main_guard_fails_with_one_clear_line(tmp_path) -> None:
    result = _run_main_script(tmp_path, "dask", guarded=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "could not start a LocalCluster" in last and 'if __name__ == "__main__":' in last
    guarded = _run_main_script(tmp_path, "dask", guarded=True)
    assert guarded.returncode == 0 and "completed 6" in guarded.stdout, guarded.stderr


def test_an_unreachable_dask_scheduler_is_one_line_that_says_what_to_check(tmp_path: Path) -> None:
    exp = orchard.build_experiment("nosched", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                   max_trials=2)
    with pytest.raises(orchard.ExecutorError) as info:
        exp.workon(workloads.quadratic, n_workers=2, executor="dask",
                   executor_config={"address": "tcp://127.0.0.1:1", "timeout": 1})
    message = str(info.value)
    assert "Dask scheduler tcp://127.0.0.1:1" in message and "check that it runs" in message
    assert "\n" not in message and exp.fetch_trials() == []


SIGTERM_SCRIPT = """
import os, sys, time, orchard
def objective(x):
    marker = os.path.join(sys.argv[1], f"{os.getpid()}-{os.urandom(4).hex()}.running")
    open(marker, "w").close()
    time.sleep(60)  # far longer than the test: only an interruption ends it
    return x
if __name__ == "__main__":  # Dask starts its workers with spawn
    exp = orchard.build_experiment("term", space={"x": "uniform(0, 1)"}, storage=sys.argv[2], max_trials=8)
    in_process = sys.argv[5] == "dask-threads"  # the LocalCluster's workers are threads of this process
    exp.workon(objective, n_workers=int(sys.argv[3]), trial_timeout=float(sys.argv[4]) or None, progress=False,
               executor="dask" if in_process else sys.argv[5],
               executor_config={"dashboard_address": None, "processes": False} if in_process
               else {"dashboard_address": None} if sys.argv[5] == "dask" else None)
"""


BORROWED_CLIENT_SCRIPT = """
import sys, time, orchard
import orchard.executors.fleet
orchard.executors.fleet.STOP_TIMEOUT = 0.5  # as for an evaluation longer than the 30 s workon waits
def objective(x):
    open(sys.argv[2], "a").close()
    time.sleep(2)
    return x
if __name__ == "__main__":
    from dask.distributed import Client
    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    exp = orchard.build_experiment("borrowed", space={"x": "uniform(0, 1)"}, storage=sys.argv[1], max_trials=4)
    try:
        exp.workon(objective, n_workers=1, executor=client, progress=False)
    except orchard.Interrupted as err:
        print(err, flush=True)
    while exp.fetch_trials([orchard.TrialStatus.RESERVED]):  # a notebook goes on: the loop ends its evaluation
        time.sleep(0.05)
    print(*[t.status.value for t in exp.fetch_trials()], flush=True)
"""


def _ctrl_c_once_started(tmp_path: Path, text: str) -> tuple[str, str]:
    """Run the script ``text`` (argv: its storage, the marker its objective makes), Ctrl-C it once the
    marker exists; its stdout and stderr (it must exit 0)."""
    script, marker = tmp_path / "script.py", tmp_path / "started"
    script.write_text(text)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "o.pkl"), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.timeout(120)
def test_ctrl_c_does_not_take_back_the_trial_of_a_loop_still_running_in_a_borrowed_in_process_dask_client(
        tmp_path) -> None:
    """The caller's own Dask client (left open) whose workers are threads of this process: Ctrl-C stops
    its loop after the evaluation under way, whose result is stored. Dask cancels the loop's future at
    once; workon took that for an ended loop and gave its trial back under it, throwing the result away."""
    out, err = _ctrl_c_once_started(tmp_path, BORROWED_CLIENT_SCRIPT)
    said, statuses = out.splitlines()  # it said no trial was running, though its loop still ran one
    assert said.startswith("no trial released yet; 1 worker(s) did not stop in time"), (out, err[-2000:])
    assert statuses == "completed", (out, err[-2000:])


THREAD_SCRIPT = """
import sys, time, orchard
def objective(x):
    open(sys.argv[2], "a").close()
    time.sleep(1.5)
    return x
if __name__ == "__main__":
    exp = orchard.build_experiment("threads", space={"x": "uniform(0, 1)"}, storage=sys.argv[1], max_trials=4)
    try:
        exp.workon(objective, n_workers=1, executor="thread", progress=False)
    except orchard.Interrupted as err:
        print(err, flush=True)
    print(*[t.status.value for t in exp.fetch_trials()], flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_says_that_a_trial_running_in_a_thread_finished_and_was_recorded(tmp_path) -> None:
    """Ctrl-C to workon(executor="thread") while a trial runs: the evaluation in the thread runs to its end and
    is recorded; the interruption said "no trial was running"."""
    out, err = _ctrl_c_once_started(tmp_path, THREAD_SCRIPT)
    assert out.splitlines() == ["the running trial finished and was recorded (an evaluation in a worker's own "
                                "thread cannot be stopped: it runs to its end)",
                                "completed"], (out, err[-2000:])
    assert "interrupted: waiting for 1 worker loop(s) to stop" in err, err[-2000:]  # it said nothing as it waited


REMOTE_DASK_SCRIPT = """
import os, sys, time, orchard
def objective(x):
    open(os.path.join(sys.argv[1], f"{os.getpid()}-{os.urandom(4).hex()}.running"), "w").close()
    time.sleep(60)  # far longer than the test: only a stop ends it
    return x
if __name__ == "__main__":
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        exp = orchard.build_experiment("remote", space={"x": "uniform(0, 1)"}, storage=sys.argv[2], max_trials=8)
        try:
            by_address = {"executor": "dask", "executor_config": {"address": cluster.scheduler_address}}
            exp.workon(objective, n_workers=2, trial_timeout=120, progress=False,
                       **(by_address if sys.argv[4] == "address" else {"executor": client}))
        except orchard.Interrupted as err:
            print(err, flush=True)
        while not os.path.exists(sys.argv[3]):  # the cluster lives on, as a remote one would
            time.sleep(0.05)
        print(*sorted(t.status.value for t in exp.fetch_trials()), flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("given", ["client", "address"])
def test_sigterm_to_workon_stops_its_loops_on_dask_workers_in_other_processes(tmp_path, given: str) -> None:
    """A Dask cluster of the caller's own whose workers are processes (a remote scheduler's are too): no
    signal reaches them and Dask does not stop a running task it cancels. SIGTERM to workon stops its loops
    anyway: their evaluations are stopped, their trials released, and they reserve no other trial."""
    running, done = tmp_path / "running", tmp_path / "done"
    running.mkdir()
    script = tmp_path / "script.py"
    script.write_text(REMOTE_DASK_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(running), str(tmp_path / "o.pkl"), str(done), given],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while len(list(running.glob("*.running"))) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        evaluations = {int(marker.name.split("-")[0]) for marker in running.glob("*.running")}
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "2 of 2 running trial(s) released (status interrupted)"
        deadline = time.monotonic() + 10
        while any(map(_alive, evaluations)):
            assert time.monotonic() < deadline, "an evaluation ran on after workon was stopped"
            time.sleep(0.05)
    finally:
        done.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out.split() == ["interrupted", "interrupted"], (out, err[-2000:])  # nothing reserved after


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("executor", ["process", "joblib"])
def test_pool_workers_of_a_killed_workon_give_their_trials_back_and_exit(tmp_path, executor: str) -> None:
    """``kill -9`` of a process running ``workon``: its pool workers do not run the experiment on as
    orphans (the standard library's then waiting for work for ever); they release their trials and end."""
    running = tmp_path / "running"
    running.mkdir()
    script = tmp_path / "script.py"
    script.write_text(SIGTERM_SCRIPT)
    storage = str(tmp_path / "o.pkl")
    log = tmp_path / "workon.log"
    with log.open("w") as out:  # not a pipe: the orphans would hold it open
        proc = subprocess.Popen([sys.executable, str(script), str(running), storage, "2", "0", executor],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(list(running.glob("*.running"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    exp = orchard.get_experiment("term", storage=storage)
    workers = {int(t.worker.split(":")[1]) for t in exp.fetch_trials([TrialStatus.RESERVED])}
    assert len(workers) == 2
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(map(_alive, workers)):
        assert time.monotonic() < deadline, "a pool worker outlived the workon that was killed"
        time.sleep(0.05)
    trials = exp.fetch_trials()
    assert sorted(t.status.value for t in trials) == ["interrupted", "interrupted"]
    assert all(t.attempts == 0 for t in trials)


KILLED_AS_ITS_POOL_STARTS = """
import os, signal, sys, threading, time, psutil, orchard
from tests import workloads
def kill_me_once_the_pool_spawns(pids_file):  # loky's workers then still import, before their initializer
    me = psutil.Process()
    while not (workers := [c.pid for c in me.children() if "popen_loky_posix" in " ".join(c.cmdline())]):
        time.sleep(0.002)
    open(pids_file, "w").write(" ".join(map(str, workers)))
    os.kill(os.getpid(), signal.SIGKILL)
if __name__ == "__main__":
    exp = orchard.build_experiment("orphans", space=workloads.SPACE, storage=sys.argv[1], max_trials=4)
    threading.Thread(target=kill_me_once_the_pool_spawns, args=(sys.argv[2],), daemon=True).start()
    exp.workon(workloads.marker_then_slow, n_workers=2, executor="joblib", progress=False)
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_pool_workers_starting_after_their_workon_was_killed_exit_instead_of_running_on(tmp_path) -> None:
    """``kill -9`` of ``workon`` (or ``orchard hunt --n-workers``) in the second its loky workers import: they
    found their caller gone at start, did not watch it, and ran the experiment on as orphans, for ever."""
    script, pids = tmp_path / "script.py", tmp_path / "workers"
    script.write_text(KILLED_AS_ITS_POOL_STARTS)
    storage = str(tmp_path / "o.pkl")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ORCHARD_TEST_MARKER": str(tmp_path / "marker"), "PYTHONPATH": str(root)}
    with (tmp_path / "workon.log").open("w") as out:  # not a pipe: orphans would hold it open
        proc = subprocess.run([sys.executable, str(script), storage, str(pids)], stdout=out, stderr=out,
                              env=env, timeout=50, check=False)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "workon.log").read_text()
    workers = [int(pid) for pid in pids.read_text().split()]
    deadline = time.monotonic() + 15
    try:
        while any(map(_alive, workers)):
            assert time.monotonic() < deadline, "a pool worker started after its workon was killed runs on"
            time.sleep(0.05)
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
    assert not orchard.get_experiment("orphans", storage=storage).fetch_trials([TrialStatus.COMPLETED])


@pytest.mark.parametrize(("n_workers", "trial_timeout", "sig", "executor"),
                         [(2, 0, signal.SIGTERM, "joblib"), (1, 120, signal.SIGTERM, "single"),
                          (2, 0, signal.SIGHUP, "joblib"), (2, 0, signal.SIGTERM, "dask"),
                          (2, 120, signal.SIGTERM, "thread"), (2, 120, signal.SIGTERM, "dask-threads"),
                          (2, 120, signal.SIGTERM, "dask")],
                         ids=["two-pool-workers", "one-worker-with-trial-timeout", "SIGHUP-two-pool-workers",
                              "two-dask-local-workers", "two-thread-workers-with-trial-timeout",
                              "two-in-process-dask-workers-with-trial-timeout",
                              "two-dask-local-workers-with-trial-timeout"])  # they release their trials themselves
def test_sigterm_to_workon_stops_its_workers_and_releases_their_trials(
        tmp_path, n_workers: int, trial_timeout: float, sig: signal.Signals, executor: str) -> None:
    """``kill`` on a Python process running ``workon`` (a scheduler's SIGTERM; SIGHUP, its terminal closed):
    its workers stop with it, and the trials they were running are released (``interrupted``), not left
    ``reserved`` or finished later. Dask workers cannot be interrupted, but those of the LocalCluster workon
    started end with it, and their trials are released once they did. Workers running as threads of the
    process (``thread``, an in-process LocalCluster) are told by an event: an evaluation in a watched child
    (trial_timeout) is stopped at once, not run to its timeout and broken."""
    running = tmp_path / "running"
    running.mkdir()
    script = tmp_path / "script.py"
    script.write_text(SIGTERM_SCRIPT)
    storage = str(tmp_path / "o.pkl")
    proc = subprocess.Popen([sys.executable, str(script), str(running), storage, str(n_workers), str(trial_timeout),
                             executor],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(running.glob("*.running"))) < n_workers:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    exp = orchard.get_experiment("term", storage=storage)
    held = exp.fetch_trials([TrialStatus.RESERVED])
    assert len(held) == n_workers
    workers = {int(t.worker.split(":")[1]) for t in held}  # the processes running the loops
    evaluations = {int(marker.name.split("-")[0]) for marker in running.glob("*.running")}
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert f"{n_workers} of {n_workers} running trial(s) released (status interrupted)" in err, err
    deadline = time.monotonic() + 30
    while any(map(_alive, workers | evaluations)):  # the pool processes and the evaluations end too
        assert time.monotonic() < deadline, "a worker or an evaluation outlived the SIGTERM'd workon"
        time.sleep(0.05)
    trials = exp.fetch_trials()
    assert sorted(t.status.value for t in trials) == ["interrupted"] * n_workers
    assert all(t.attempts == 0 for t in trials), "a release does not count against max_attempts"


def _quick(x: float, y: float) -> float:
    time.sleep(0.02)
    return x


@pytest.mark.timeout(60)
def test_a_loop_that_starts_in_a_pool_process_after_ctrl_c_reserves_nothing(tmp_path) -> None:
    """The stop signal reaches the loops running when it is sent; one that starts after it (a pool process
    still starting, a task queued in the pool) ran trials until the next signal, 0.5 s later: after a SIGTERM
    during the pool's start a budget of short trials ran to its end. Here the second loop is queued behind
    the first in a one-process pool of the caller's own, and starts when the interruption has ended the first."""
    from concurrent.futures import ProcessPoolExecutor

    exp = orchard.build_experiment("late", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=200)

    def stop(trial: Trial) -> None:
        raise ValueError("enough")

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool, \
            pytest.raises(ValueError, match="enough"):
        exp.workon(_quick, n_workers=2, executor=pool, progress=False, on_result=stop)
    trials = exp.fetch_trials()
    finished_by = {t.worker for t in trials if t.worker is not None}  # a released trial names no worker
    assert len(finished_by) == 1, [(t.status.value, t.worker) for t in trials]  # the second loop ran none
    assert not [t for t in trials if t.status is TrialStatus.RESERVED]


HALF_IMPORT_SCRIPT = """
import signal, sys, orchard
class InterruptOnce:  # Ctrl-C as loky imports a module its first pool needs
    def find_spec(self, name, path=None, target=None):
        if name == "joblib.externals.loky.backend.resource_tracker":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None
def objective(x):
    return x
if __name__ == "__main__":
    sys.meta_path.insert(0, InterruptOnce())
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=sys.argv[1], max_trials=4)
    try:
        exp.workon(objective, n_workers=2, executor="joblib", progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    exp.workon(objective, n_workers=2, executor="joblib", progress=False)  # the notebook goes on
    print("completed", exp.stats["counts"]["completed"])
"""


@pytest.mark.timeout(120)
def test_ctrl_c_while_loky_is_imported_leaves_the_process_able_to_run_workon_again(tmp_path) -> None:
    """A Ctrl-C early in a notebook's first ``workon(executor="joblib")`` landed among the imports loky makes
    for its first pool: they stayed half-done, and every later workon of that kernel failed ("partially
    initialized module 'joblib.externals.loky.backend.resource_tracker'")."""
    script = tmp_path / "script.py"
    script.write_text(HALF_IMPORT_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "o.pkl")], capture_output=True, text=True,
                            timeout=100)
    assert result.stdout.split() == ["interrupted", "completed", "4"], result.stderr[-2000:]


LOCAL_CLUSTER_SCRIPT = """
import os, sys, time, orchard
def objective(x):
    open(os.path.join(sys.argv[1], f"{os.getpid()}-{os.urandom(4).hex()}.running"), "w").close()
    time.sleep(1.5)  # runs to its end in the Dask worker's thread
    return x
if __name__ == "__main__":  # Dask starts its workers with spawn
    exp = orchard.build_experiment("local", space={"x": "uniform(0, 1)"}, storage=sys.argv[2], max_trials=8)
    exp.workon(objective, n_workers=2, executor="dask", executor_config={"dashboard_address": None}, progress=False)
"""


@pytest.mark.timeout(120)
def test_loops_of_the_local_cluster_workon_started_reserve_nothing_after_sigterm(tmp_path) -> None:
    """SIGTERM to workon(executor="dask"): its LocalCluster closes, but the loops on its worker processes, which
    no signal reaches, went on until it did: each finished its evaluation, then reserved another trial."""
    running = tmp_path / "running"
    running.mkdir()
    script = tmp_path / "script.py"
    script.write_text(LOCAL_CLUSTER_SCRIPT)
    storage = str(tmp_path / "o.pkl")
    proc = subprocess.Popen([sys.executable, str(script), str(running), storage], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while len(list(running.glob("*.running"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Interrupted" in err, err[-2000:]
    trials = orchard.get_experiment("local", storage=storage).fetch_trials()
    assert not [t for t in trials if t.start_time is not None and t.start_time > signalled], \
        [(t.status.value, t.start_time - signalled) for t in trials if t.start_time]
    assert not [t for t in trials if t.status is TrialStatus.RESERVED]


DOUBLE_CTRL_C_SCRIPT = """
import os, sys, time, orchard
def objective(x, y):
    try:  # the first to start cleans up for 2 s when interrupted
        os.close(os.open(sys.argv[2] + ".claim", os.O_CREAT | os.O_EXCL))
        slow = True
    except FileExistsError:
        slow = False
    with open(sys.argv[2] + ".tmp" + str(os.getpid()), "w") as mark:
        mark.write(str(os.getpid()))
    os.replace(mark.name, sys.argv[2] + (".slow" if slow else ".fast"))
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        if slow:
            time.sleep(2)
        raise
    return x
if __name__ == "__main__":
    exp = orchard.build_experiment("dc", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, storage=sys.argv[1],
                                   max_trials=10)
    try:
        exp.workon(objective, n_workers=2, executor="process", progress=False)
    except KeyboardInterrupt as err:
        print("interrupted:", err, flush=True)
"""


@pytest.mark.timeout(90)
def test_a_second_ctrl_c_reaching_a_pool_process_whose_loop_stopped_loses_no_report(tmp_path) -> None:
    """Ctrl-C reaches every process of the terminal's group: a pool process whose loop already stopped for the
    first one died of the second in the pool's own code, which broke the pool under the loop still stopping:
    its report was thrown away ("1 of 1 running trial(s) released" for 2), and the pool's SIGTERM to it came
    while it ignored copies (with a queue lock left held by a killed neighbour, workon waited for ever)."""
    script = tmp_path / "script.py"
    script.write_text(DOUBLE_CTRL_C_SCRIPT)
    storage, marks = str(tmp_path / "o.pkl"), tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, str(script), storage, str(marks)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    fast, slow = Path(f"{marks}.fast"), Path(f"{marks}.slow")
    deadline = time.monotonic() + 60
    while not (fast.exists() and slow.exists()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    exp = orchard.get_experiment("dc", storage=storage)
    os.killpg(proc.pid, signal.SIGINT)  # the first Ctrl-C: the fast loop stops, the slow one cleans up for 2 s
    while not exp.fetch_trials([TrialStatus.INTERRUPTED]):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(int(fast.read_text()), signal.SIGINT)  # the second reaches the pool process whose loop stopped
    out, err = proc.communicate(timeout=30)
    assert "interrupted: 2 of 2 running trial(s) released" in out, (out, err)
    assert sorted(t.status.value for t in exp.fetch_trials()) == ["interrupted", "interrupted"]


_ONE_IMPORT = """
import orchard

def objective(x, y):
    return x + y

if __name__ == "__main__":
    exp = orchard.build_experiment("fk", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"},
                                   storage=PATH, max_trials=4)
    exp.workon(objective, n_workers=2, executor="process", progress=False)
    print(len(exp.fetch_trials()))
"""


@pytest.mark.skipif(sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="the process executor forks only where fork is safe")
def test_forked_workers_share_the_callers_import_of_numpy(tmp_path: Path) -> None:
    """Orchard imports numpy where a generator is made; the process executor imports it before it forks,
    so its workers share it instead of each importing it again (75 ms of CPU and 6 MiB of its own each)."""
    script = tmp_path / "fk.py"
    script.write_text(_ONE_IMPORT.replace("PATH", repr(str(tmp_path / "o.pkl"))))
    run = subprocess.run([sys.executable, "-X", "importtime", str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["4"]
    imports = [line for line in run.stderr.splitlines() if line.rstrip().endswith("| numpy.random")]
    assert len(imports) == 1, imports  # the caller's; before, one per worker
