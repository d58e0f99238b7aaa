"""The stop request of the loops ``workon`` runs on a Dask cluster that outlives it (:mod:`orchard.executors.remote`).

One in-process ``LocalCluster`` (its scheduler runs in this process), shared by the tests of the module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import pytest

import orchard
from orchard.errors import ExecutorError
from orchard.trial import Trial, TrialStatus
from tests import workloads

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


def _orchard_events(dask_client: Any) -> list[str]:
    """The names of Orchard's events the scheduler holds."""
    def names(dask_scheduler: Any) -> list[str]:
        return [str(name) for name in dask_scheduler.extensions["events"]._events]

    return [name for name in dask_client.run_on_scheduler(names) if name.startswith("orchard-")]


def _wait_for_none_left(dask_client: Any, before: list[str]) -> None:
    """Until the scheduler holds no Orchard event but ``before``; a watch whose wait was under way (a race of
    its loop's end with its 5 s wait) lets go of it within that wait."""
    deadline = time.monotonic() + 10
    while (left := set(_orchard_events(dask_client)) - set(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, "an Orchard stop event was left on the scheduler"


def _slow(x: float, y: float) -> float:
    time.sleep(0.1)
    return x


def test_an_interrupted_workon_leaves_no_stop_event_on_the_scheduler(client: Any, tmp_path) -> None:
    """Each interrupted workon left its (set) stop event on a scheduler that outlives it, for ever."""
    exp = orchard.build_experiment("stop", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=50)

    def stop(trial: Trial) -> None:
        raise ValueError("enough")

    before = _orchard_events(client)
    with pytest.raises(ValueError, match="enough"):
        exp.workon(_slow, n_workers=2, executor=client, progress=False, on_result=stop)
    assert not exp.fetch_trials([TrialStatus.RESERVED])
    _wait_for_none_left(client, before)


def test_a_workon_that_ends_normally_leaves_no_stop_event_on_the_scheduler(client: Any, tmp_path) -> None:
    exp = orchard.build_experiment("done", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=6)
    before = _orchard_events(client)
    exp.workon(_slow, n_workers=2, executor=client, progress=False)
    assert exp.stats["counts"]["completed"] == 6
    _wait_for_none_left(client, before)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_dask_scheduler_that_goes_away_leaves_the_running_trial_to_its_loop(tmp_path, monkeypatch) -> None:
    """The scheduler workon's loops run under goes away mid-trial: its client cancels every future, while the
    loops run on on the workers. workon took them for ended loops: it took their trials back under them ("its
    worker's process died under it", an attempt counted, the result then refused) and raised a bare
    CancelledError. It raises one line, and the loop stores its result."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))  # the worker process inherits it
    with _cluster(scheduler_file) as (scheduler, worker):
        _kill_mid_trial(scheduler, marker)
        exp = orchard.build_experiment("gone", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=1)
        with pytest.raises(ExecutorError, match="cancelled before they ended") as raised:
            exp.workon(workloads.marker_then_brief, n_workers=1, executor="dask", progress=False,
                       executor_config={"scheduler_file": str(scheduler_file), "timeout": 2})
        assert "\n" not in str(raised.value)
        assert [t.status for t in exp.fetch_trials()] == [TrialStatus.RESERVED]  # not taken back under its loop
        deadline = time.monotonic() + 30
        while exp.fetch_trials([TrialStatus.RESERVED]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(t.status, t.attempts) for t in exp.fetch_trials()] == [(TrialStatus.COMPLETED, 1)]



def _scheduler_and_worker(scheduler_file: Path, *worker_options: str) -> tuple[subprocess.Popen[bytes], ...]:
    """A Dask scheduler process writing ``scheduler_file`` and one single-threaded worker process of it."""
    return _dask(scheduler_file, "dask_scheduler", "--port", "0"), _worker(scheduler_file, *worker_options)


def _worker(scheduler_file: Path, *options: str) -> subprocess.Popen[bytes]:
    """A single-threaded Dask worker process of the scheduler that wrote ``scheduler_file``."""
    return _dask(scheduler_file, "dask_worker", "--nthreads", "1", *options)


def _dask(scheduler_file: Path, cli: str, *options: str) -> subprocess.Popen[bytes]:
    root = Path(__file__).resolve().parents[1]  # the worker imports tests.workloads from here
    found = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    return subprocess.Popen([sys.executable, "-m", f"distributed.cli.{cli}", *found, *options],
                            cwd=root, stdout=DEVNULL, stderr=DEVNULL)


@contextlib.contextmanager
def _cluster(scheduler_file: Path, *worker_options: str) -> Iterator[tuple[subprocess.Popen[bytes], ...]]:
    """:func:`_scheduler_and_worker`, once the scheduler wrote its file; both killed when the block ends."""
    scheduler, worker = _scheduler_and_worker(scheduler_file, *worker_options)
    try:
        while not scheduler_file.exists():
            assert scheduler.poll() is None
            time.sleep(0.05)
        yield scheduler, worker
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait()


def _kill_mid_trial(process: subprocess.Popen[bytes], marker: Path) -> None:
    """Kill ``process`` from a thread once the objective wrote ``marker``."""
    def kill() -> None:
        while not marker.exists() and process.poll() is None:
            time.sleep(0.05)
        process.kill()

    threading.Thread(target=kill, daemon=True).start()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_workon_gives_up_on_a_scheduler_left_without_workers(tmp_path, monkeypatch) -> None:
    """Every Dask worker died mid-run (a SLURMCluster's jobs reaching their walltime): Dask holds the loops
    for a worker that never comes, and workon waited silently for ever. It raises one line after
    worker_timeout."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))
    with _cluster(scheduler_file, "--no-nanny") as (scheduler, worker):  # killed, it stays dead
        _kill_mid_trial(worker, marker)
        exp = orchard.build_experiment("left", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                       max_trials=2)
        with pytest.raises(ExecutorError, match="has had no worker for 1 s") as raised:
            exp.workon(workloads.marker_then_brief, n_workers=1, executor="dask", progress=False,
                       executor_config={"scheduler_file": str(scheduler_file), "worker_timeout": 1})
        assert "\n" not in str(raised.value)
        assert [t.status for t in exp.fetch_trials()] == [TrialStatus.RESERVED]  # left to its lease


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_workon_gives_up_once_every_worker_offering_its_resources_left(tmp_path, monkeypatch) -> None:
    """The only Dask worker offering the resources the loops ask for ({"GPU": 1}) died mid-run while
    another worker stayed: Dask holds the loops for a worker that never comes, and workon waited for
    ever (its check counted every worker). It raises one line after worker_timeout."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))
    with _cluster(scheduler_file), distributed.Client(scheduler_file=str(scheduler_file)) as dask_client:
        gpu = _worker(scheduler_file, "--no-nanny", "--resources", "GPU=1")  # killed, it stays dead
        try:
            dask_client.wait_for_workers(2, timeout=30)  # it, and the cluster's (no GPU, and it stays)
            _kill_mid_trial(gpu, marker)
            exp = orchard.build_experiment("gpu", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                           max_trials=2)
            with pytest.raises(ExecutorError, match=r"no worker offering the resources \{'GPU': 1\}.* for 1 s"
                               ) as raised:
                exp.workon(workloads.marker_then_brief, n_workers=1, executor="dask", progress=False,
                           executor_config={"scheduler_file": str(scheduler_file), "worker_timeout": 1,
                                            "resources": {"GPU": 1}})
        finally:
            gpu.kill()
            gpu.wait()
    assert "\n" not in str(raised.value) and "--resources GPU=1" in str(raised.value)
    assert [t.status for t in exp.fetch_trials()] == [TrialStatus.RESERVED]  # left to its lease


def _retire(dask_worker: Any) -> int:
    """Start retiring ``dask_worker`` as ``retire_workers`` does (its scheduler then moves its data off)."""
    from distributed.core import Status

    dask_worker.status = Status.closing_gracefully
    return os.getpid()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_loop_on_a_retiring_dask_worker_goes_on_on_another(tmp_path, monkeypatch) -> None:
    """A Dask worker being retired (closing_gracefully: retire_workers, an adaptive cluster scaling down)
    runs no new task, yet the loop on it ran the whole experiment on, to be lost with it when it closes.
    The loop sees its worker retiring: it reserves no other trial and Dask runs it on another worker."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))
    with _cluster(scheduler_file), distributed.Client(scheduler_file=str(scheduler_file)) as dask_client:
        other = _worker(scheduler_file)
        retired: list[int] = []

        def retire_the_busy_worker() -> None:
            while not marker.exists():
                time.sleep(0.05)
            busy = [address for address, keys in dask_client.processing().items() if keys]
            retired.extend(dask_client.run(_retire, workers=busy).values())

        try:
            dask_client.wait_for_workers(2, timeout=30)
            threading.Thread(target=retire_the_busy_worker, daemon=True).start()
            exp = orchard.build_experiment("retired", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                           max_trials=3)
            exp.workon(workloads.marker_then_brief, n_workers=1, executor="dask", progress=False,
                       executor_config={"scheduler_file": str(scheduler_file)})
        finally:
            other.kill()
            other.wait()
    trials = sorted(exp.fetch_trials(), key=lambda trial: trial.start_time or 0.0)
    assert [(t.status, t.attempts) for t in trials] == [(TrialStatus.COMPLETED, 1)] * 3
    assert len(retired) == 1 and trials[-1].worker is not None
    assert trials[-1].worker.split(":")[1] != str(retired[0])  # run by the loop moved to the other worker


_CLIENT = """
import sys
import orchard
from tests import workloads
exp = orchard.build_experiment("orphan", space=workloads.SPACE, storage=sys.argv[1], max_trials=50)
exp.workon(workloads.marker_then_brief, n_workers=1, executor="dask", progress=False,
           executor_config={"scheduler_file": sys.argv[2]})
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loops_on_dask_workers_stop_once_the_process_that_called_workon_is_killed(tmp_path,
                                                                                    monkeypatch) -> None:
    """The process running workon was SIGKILLed (a notebook's kernel restarted, the OOM killer): Dask cancels
    its tasks but runs their threads on, so its loops ran the whole experiment on for nobody, holding the
    worker's slots from the next workon. A loop stops once its client released it: it reserves no other
    trial."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    storage = str(tmp_path / "o.pkl")
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))
    with _cluster(scheduler_file) as (scheduler, worker):
        root = Path(__file__).resolve().parents[1]
        caller = subprocess.Popen([sys.executable, "-c", _CLIENT, storage, str(scheduler_file)], cwd=root,
                                  stdout=DEVNULL, stderr=DEVNULL)
        _kill_mid_trial(caller, marker)
        assert caller.wait(60) == -9
        with distributed.Client(scheduler_file=str(scheduler_file)) as dask_client:
            def running() -> bool:  # the worker's own view: the scheduler forgot the task with its client
                return any(dask_client.run(lambda dask_worker: len(dask_worker.state.executing)).values())

            deadline = time.monotonic() + 30
            while running() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not running(), "the orphaned loop runs on"
        trials = orchard.get_experiment("orphan", storage=storage).fetch_trials()
        assert 1 <= len(trials) <= 2  # the trial it ran, and one it may have reserved before it saw
        assert {t.status for t in trials} == {TrialStatus.COMPLETED}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workon_says_which_trials_a_killed_dask_worker_lost(tmp_path, monkeypatch, caplog) -> None:
    """A Dask worker SIGKILLed mid-trial (the OOM killer): its nanny restarts it and Dask runs the loop
    again, so workon ended as if nothing had happened. The budget stays exact, and workon names the trial
    run again."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))

    def kill_the_worker_process() -> None:
        while not marker.exists() or not marker.read_text():
            time.sleep(0.05)
        os.kill(int(marker.read_text().split()[0]), signal.SIGKILL)

    with _cluster(scheduler_file):  # with a nanny, which restarts the worker
        threading.Thread(target=kill_the_worker_process, daemon=True).start()
        exp = orchard.build_experiment("oom", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                       max_trials=2, heartbeat=1)
        with caplog.at_level("WARNING", logger="orchard.executors.fleet"):
            stats = exp.workon(workloads.marker_then_slow, n_workers=1, executor="dask", progress=False,
                               executor_config={"scheduler_file": str(scheduler_file)})
        assert stats["counts"]["completed"] == 2 and len(exp.fetch_trials()) == 2
        (lost,) = [t for t in exp.fetch_trials() if t.attempts == 2]
        assert "1 trial(s) of experiment 'oom' lost a Dask worker that died under them" in caplog.text
        assert lost.id in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_loop_whose_dask_worker_lost_its_scheduler_gives_back_the_trial_its_child_evaluates(
        tmp_path, monkeypatch) -> None:
    """Dask closes a worker that lost its scheduler, and its process dies with the evaluation's child: the
    loop kept reserving trials meanwhile, and the trial it held stayed reserved until its lease ran out.
    The loop sees its worker closing: it stops the child and gives the trial back (no attempt counted)."""
    scheduler_file, marker = tmp_path / "scheduler.json", tmp_path / "running"
    monkeypatch.setenv("ORCHARD_TEST_MARKER", str(marker))
    with _cluster(scheduler_file) as (scheduler, worker):
        _kill_mid_trial(scheduler, marker)
        exp = orchard.build_experiment("closing", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"),
                                       max_trials=1)
        with pytest.raises(ExecutorError, match="cancelled before they ended"):
            exp.workon(workloads.marker_then_slow, n_workers=1, executor="dask", progress=False,
                       trial_timeout=100,
                       executor_config={"scheduler_file": str(scheduler_file), "timeout": 2})
        deadline = time.monotonic() + 30
        while exp.fetch_trials([TrialStatus.RESERVED]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(t.status, t.attempts) for t in exp.fetch_trials()] == [(TrialStatus.INTERRUPTED, 0)]
