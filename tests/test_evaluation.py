"""Evaluations with real processes: interruption, cancellation, memory limits, GPUs, executors you own."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard.cli import main
from orchard.errors import ExecutorError
from orchard.resources import devices_of
from orchard.trial import TrialStatus
from tests import evaluation_workloads as loads
from tests import workloads

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LIMIT = "400MB"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}


def _wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc is None or proc.poll() is None, proc.communicate() if proc else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` has exited (a zombie counts as gone) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# -- interruption and left-over processes (issue 9 items 5 and 6) -----------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_a_worker_during_a_timeout_evaluation_kills_its_child(tmp_path: Path, sig: int) -> None:
    storage = str(tmp_path / "o.pkl")
    code = f"from tests import evaluation_workloads as w; w.workon_until_interrupted({storage!r}, {str(tmp_path)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child = int(_wait_for(tmp_path / "child.pid", proc))
    started = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10, "the worker must exit promptly"
    assert "UnboundLocalError" not in stderr, stderr
    assert _gone(child), "the objective's child process outlived its worker"
    (trial,) = orchard.get_experiment("stop", storage=storage).fetch_trials()
    assert trial.status is TrialStatus.INTERRUPTED, stderr  # given back at once, on SIGTERM too
    assert "Interrupted: 1 of 1 running trial(s) released (status interrupted)" in stderr


_TICKS_SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
from tests.evaluation_workloads import ticks
ticks(0.5, {folder!r})
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({{"objective": 1.0}}, handle)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


_LAUNCHING_SCRIPT = """
import json, os, subprocess, sys
ticks = ("import sys; sys.path.insert(0, {root!r}); "
         "from tests.evaluation_workloads import ticks; ticks(0.5, {folder!r})")
subprocess.run([sys.executable, "-c", ticks], start_new_session=True, check=True)  # as torchrun starts one
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({{"objective": 1.0}}, handle)
"""


@pytest.mark.parametrize("how", ["hunt-script", "hunt-launcher", "workon-trial-timeout"])
def test_ctrl_z_pauses_the_evaluation_with_its_worker_and_fg_resumes_it(tmp_path: Path, how: str) -> None:
    """Ctrl-Z in a terminal (SIGTSTP to the job's process group) stops the worker and its evaluation, which
    runs in a process group of its own: before, the script or timed objective trained on while the job was
    stopped. SIGCONT (``fg``) resumes both, and the seconds stopped do not count against the 4 s time limit
    (the evaluation needs about 2.5 s of running; the test keeps the job stopped for 2.5 s). A launcher's
    worker in a session of its own is paused too: it trained on."""
    storage = str(tmp_path / "o.pkl")
    if how.startswith("hunt"):
        script = _TICKS_SCRIPT if how == "hunt-script" else _LAUNCHING_SCRIPT
        (tmp_path / "work.py").write_text(script.format(root=str(ROOT), folder=str(tmp_path)))
        command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "ticks", "--storage", storage,
                   "--max-trials", "1", "--trial-timeout", "4", sys.executable, str(tmp_path / "work.py"),
                   "--x~uniform(0, 1)"]
    else:
        command = [sys.executable, "-c",
                   f"from tests import evaluation_workloads as w; w.workon_ticks({storage!r}, {str(tmp_path)!r})"]
    with _job(command) as proc:
        deadline = time.monotonic() + 60
        while not _wait_for(tmp_path / "ticks", proc).split():  # the file exists before its first line
            assert time.monotonic() < deadline, "the evaluation never ticked"
            time.sleep(0.01)
        evaluation = int((tmp_path / "ticks").read_text().split()[0])
        assert os.getpgid(evaluation) != proc.pid  # the evaluation is not in the job's group: the terminal misses it
        os.killpg(proc.pid, signal.SIGTSTP)  # Ctrl-Z
        deadline = time.monotonic() + 10
        while _state(proc.pid) != "T" or _state(evaluation) != "T":
            assert time.monotonic() < deadline, (f"job {_state(proc.pid)}, evaluation {_state(evaluation)}: "
                                                 "both must be stopped")
            time.sleep(0.05)
        before = (tmp_path / "ticks").read_text()
        time.sleep(2.5)
        assert (tmp_path / "ticks").read_text() == before, "the evaluation ran on while its job was stopped"
        _fg_runs_its_trial_to_the_end(proc, tmp_path, storage)


@contextlib.contextmanager
def _job(command: list[str]) -> Iterator[subprocess.Popen[str]]:
    """``command`` as a job of the test's session, as a shell starts one (SIGTSTP stops only a group that is
    not orphaned); killed if the test fails."""
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), text=True, process_group=0,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _fg_runs_its_trial_to_the_end(proc: subprocess.Popen[str], folder: Path, storage: str) -> None:
    """``fg`` the stopped job: its one trial (50 ticks) completes."""
    os.killpg(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert len((folder / "ticks").read_text().split()) == 50
    (trial,) = orchard.get_experiment("ticks", storage=storage).fetch_trials()
    assert trial.status is TrialStatus.COMPLETED, (trial.error, stderr)


_CTRL_Z_AS_IT_FORKS = """
import os, signal, sys, time
from tests import evaluation_workloads as w
fork = os.fork
def fork_then_ctrl_z():  # Ctrl-Z once the evaluation's child has a group of its own, before it is followed
    os.fork = fork
    pid = fork()
    if pid:
        while os.getpgid(pid) == os.getpgrp():
            time.sleep(0.001)
        os.killpg(os.getpgrp(), signal.SIGTSTP)  # the worker stops here, until SIGCONT
    return pid
os.fork = fork_then_ctrl_z
w.workon_ticks(sys.argv[1], sys.argv[2])
"""


def test_ctrl_z_as_the_timed_evaluation_starts_holds_it_until_fg(tmp_path: Path) -> None:
    """Ctrl-Z in the moment between the fork of a timed objective's child and the worker following its group:
    the worker stopped, and the child, in a group of its own the terminal does not reach, trained on while the
    job was stopped. It starts its work only once its worker follows it, so it waits for ``fg``."""
    storage = str(tmp_path / "o.pkl")
    with _job([sys.executable, "-c", _CTRL_Z_AS_IT_FORKS, storage, str(tmp_path)]) as proc:
        deadline = time.monotonic() + 60
        while _state(proc.pid) != "T":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job was never stopped"
            time.sleep(0.01)
        time.sleep(1.0)  # as long as the job stays stopped: the child must not start its work meanwhile
        ticks = tmp_path / "ticks"
        assert not ticks.exists() or not ticks.read_text(), "the evaluation ran while its job was stopped"
        _fg_runs_its_trial_to_the_end(proc, tmp_path, storage)


_CTRL_Z_AS_THE_SCRIPT_STARTS = """
import os, signal, subprocess, sys
from orchard.cli import main
Popen = subprocess.Popen
def popen_then_ctrl_z(*args, **kwargs):  # Ctrl-Z once the script runs, before the worker follows its group
    subprocess.Popen = Popen
    proc = Popen(*args, **kwargs)
    os.killpg(os.getpgrp(), signal.SIGTSTP)
    return proc
subprocess.Popen = popen_then_ctrl_z
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_z_as_hunt_starts_the_script_pauses_it_with_the_worker(tmp_path: Path) -> None:
    """Ctrl-Z in the moment between the start of ``hunt``'s script, in a session of its own, and the worker
    following its group: the worker stopped and the script trained on. The Ctrl-Z now waits for the group to
    be followed, and pauses both."""
    storage = str(tmp_path / "o.pkl")
    (tmp_path / "work.py").write_text(_TICKS_SCRIPT.format(root=str(ROOT), folder=str(tmp_path)))
    hunt = ["hunt", "-n", "ticks", "--storage", storage, "--max-trials", "1", "--trial-timeout", "4",
            sys.executable, str(tmp_path / "work.py"), "--x~uniform(0, 1)"]
    with _job([sys.executable, "-c", _CTRL_Z_AS_THE_SCRIPT_STARTS, *hunt]) as proc:
        deadline = time.monotonic() + 60
        while _state(proc.pid) != "T":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job was never stopped"
            time.sleep(0.01)
        ticks = tmp_path / "ticks"
        before = ticks.read_text() if ticks.exists() else ""
        time.sleep(1.5)  # as long as the job stays stopped: the script must not tick meanwhile
        after = ticks.read_text() if ticks.exists() else ""
        assert after == before, "the script ran on while its job was stopped"
        _fg_runs_its_trial_to_the_end(proc, tmp_path, storage)


@pytest.mark.parametrize("objective", [loads.leaves_a_process_running, loads.leaves_a_session_running])
def test_an_objective_that_leaves_a_process_running_still_completes(tmp_path: Path, objective: Any) -> None:
    """A process the objective left running, in its process group or in a session of its own, is killed."""
    exp = orchard.build_experiment("left", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=1)
    started = time.monotonic()
    stats = exp.workon(functools.partial(objective, folder=str(tmp_path)),
                       executor="single", trial_timeout=8, progress=False)
    assert stats["counts"]["completed"] == 1, exp.fetch_trials()[0].error
    assert time.monotonic() - started < 6, "the result must be read when the objective returns"
    left = int((tmp_path / "left.pid").read_text())
    try:
        assert _gone(left, timeout=5), "what the objective left running is killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(left, signal.SIGKILL)


LEAVES_A_PROCESS = r'''
import json, os, subprocess, sys
left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # never waited for
with open(os.path.join(sys.argv[1], f"left-{left.pid}"), "w"):
    pass
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({"objective": 1.0}, handle)
'''


def test_a_script_that_leaves_a_process_running_completes_and_the_process_ends_with_its_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with a Python objective: what the command left in its process group does not outlive its trial."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leaves.py").write_text(LEAVES_A_PROCESS)
    code = main(["hunt", "-n", "left", "--storage", "o.pkl", "--max-trials", "2",
                 sys.executable, str(tmp_path / "leaves.py"), str(tmp_path), "--x~uniform(0, 1)"])
    assert code == 0
    assert [t.status for t in orchard.get_experiment("left", storage="o.pkl").fetch_trials()] == [
        TrialStatus.COMPLETED] * 2
    left = [int(path.name.split("-")[1]) for path in tmp_path.glob("left-*")]
    assert len(left) == 2 and all(_gone(pid, timeout=5) for pid in left), "a process the script left outlived it"



LAUNCHER = r"""
import json, os, subprocess, sys, time
# as torchrun does: each worker in a session of its own, which the script's process group does not hold
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
with open(os.path.join(sys.argv[1], f"worker-{worker.pid}"), "w"):
    pass
if sys.argv[2] == "--then=run":
    time.sleep(60)  # until its trial's timeout ends the launcher: SIGTERM, which ends it at once
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({"objective": 1.0}, handle)
"""


@pytest.mark.parametrize(("then", "timeout", "status"), [
    ("exit", [], TrialStatus.COMPLETED), ("run", ["--trial-timeout", "1"], TrialStatus.BROKEN)])
def test_a_process_a_script_started_in_a_session_of_its_own_ends_with_its_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str, timeout: list[str],
        status: TrialStatus) -> None:
    """A launcher (torchrun) starts its workers with ``setsid``: out of the script's process group, and no
    longer its descendants once it exits. Its trial ended, they ran on, holding their GPUs, trial after
    trial."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    code = main(["hunt", "-n", "launch", "--storage", "o.pkl", "--max-trials", "1", "--max-broken", "1",
                 *timeout, sys.executable, str(tmp_path / "launcher.py"), str(tmp_path), f"--then={then}",
                 "--x~uniform(0, 1)"])
    assert code == (0 if status is TrialStatus.COMPLETED else 1)
    (trial,) = orchard.get_experiment("launch", storage="o.pkl").fetch_trials()
    assert trial.status is status, trial.error
    (worker,) = [int(path.name.split("-")[1]) for path in tmp_path.glob("worker-*")]
    try:
        assert _gone(worker, timeout=5), "the launcher's worker outlived its trial"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)



WRAPPER = r"""#!/bin/sh
# a wrapper that runs the training as its child, as most do (no exec): the first attempt trains on
if [ ! -e "$1/first" ]; then
    touch "$1/first"
    {python} "$1/trainer.py" "$1"
fi
echo '{{"objective": 1.0}}' > "$ORCHARD_RESULTS_PATH"
"""
TRAINER = """
import os, sys, time
with open(os.path.join(sys.argv[1], "trainer.tmp"), "w") as handle:
    handle.write(str(os.getpid()))
os.replace(os.path.join(sys.argv[1], "trainer.tmp"), os.path.join(sys.argv[1], "trainer"))
time.sleep(60)
"""


def test_the_next_attempt_of_a_trial_kills_what_a_worker_killed_outright_left_running(tmp_path: Path) -> None:
    """hunt killed with SIGKILL takes its script with it (PR_SET_PDEATHSIG), not the training the script runs:
    the trial's next attempt on this machine ran beside it, in the same folder."""
    (tmp_path / "train.sh").write_text(WRAPPER.format(python=sys.executable))
    (tmp_path / "train.sh").chmod(0o755)
    (tmp_path / "trainer.py").write_text(TRAINER)
    command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "e", "--storage", str(tmp_path / "o.pkl"),
               "--max-trials", "1", "--heartbeat", "0.5", str(tmp_path / "train.sh"), str(tmp_path),
               "--x~uniform(0, 1)"]
    first = subprocess.Popen(command, cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    trainer = int(_wait_for(tmp_path / "trainer", first))
    first.kill()
    first.communicate(timeout=30)
    try:
        assert not _gone(trainer, timeout=0.5), "the training died with its worker: nothing to test"
        second = subprocess.run(command, cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=90,
                                check=False)
        assert second.returncode == 0, second.stderr
        assert "killed 1 process(es) an earlier attempt left running" in second.stderr
        assert _gone(trainer, timeout=5), "the first attempt's training ran on beside the second"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer, signal.SIGKILL)
    (trial,) = orchard.get_experiment("e", storage=str(tmp_path / "o.pkl")).fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.attempts == 2  # the lost one counted


def test_what_a_live_worker_started_in_the_trial_folder_is_left_to_it(tmp_path: Path) -> None:
    """Only a gone worker's leftovers are killed: a copy of the experiment loaded into another storage
    (``db load`` keeps trial ids) may run the same trial in the same folder while its worker is alive."""
    from orchard.strays import WORKER_ENV, kill_earlier_attempts

    folder = str(tmp_path / "trial")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    alive_worker = {**os.environ, "ORCHARD_WORKING_DIR": folder, WORKER_ENV: str(os.getpid())}
    dead_worker = {**os.environ, "ORCHARD_WORKING_DIR": folder, WORKER_ENV: str(gone.pid)}
    kept, left = subprocess.Popen(sleeper, env=alive_worker), subprocess.Popen(sleeper, env=dead_worker)
    try:
        assert _wait_until(lambda: kill_earlier_attempts(folder) == 1)
        assert left.wait(timeout=10) == -signal.SIGKILL
        assert kept.poll() is None, "a running worker's training was killed"
    finally:
        kept.kill()
        left.kill()
        kept.wait()


def _wait_until(condition: Any, timeout: float = 10) -> bool:
    """Whether ``condition()`` came true within ``timeout`` (a new process's environment is readable once it runs)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- cancellation: a worker that lost its reservation stops its evaluation (issue 9 item 4) --

WORK = r'''
import json, os, sys, time
folder = sys.argv[1]
marker = os.path.join(folder, "started")
if not os.path.exists(marker):
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
for step in range(60):  # 6 s of work in small steps (one long sleep would end during a SIGSTOP)
    time.sleep(0.1)
with open(os.path.join(folder, "finished.log"), "a") as log:
    log.write(os.environ["ORCHARD_TRIAL_ID"] + "\n")
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({"objective": 1.0}, handle)
'''


def _hunt(folder: Path, storage: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "e", "--storage", storage,
               "--max-trials", "1", "--heartbeat", "0.5",
               sys.executable, str(folder / "work.py"), str(folder), "--x~uniform(0, 1)"]
    return subprocess.Popen(command, cwd=folder, env=_env(), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_frozen_hunt_that_lost_its_trial_does_not_finish_the_script_again(
    tmp_path: Path, mongo_db_uri: str
) -> None:
    # MongoDB, not the pickle file: a hunt frozen while holding the file's lock would block the other
    (tmp_path / "work.py").write_text(WORK)
    first = _hunt(tmp_path, mongo_db_uri)
    script = int(_wait_for(tmp_path / "started", first))
    os.killpg(first.pid, signal.SIGSTOP)  # the node freezes: the hunt and its script
    os.killpg(script, signal.SIGSTOP)
    try:
        second = _hunt(tmp_path, mongo_db_uri)  # takes the trial once its lease is lost, runs it to its end
        _, err = second.communicate(timeout=90)
        assert second.returncode == 0, err
        assert (tmp_path / "finished.log").read_text().count("\n") == 1
    finally:
        os.killpg(first.pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):  # the second attempt killed it before it started
            os.killpg(script, signal.SIGCONT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert _gone(script)
    (trial,) = orchard.get_experiment("e", storage=mongo_db_uri).fetch_trials()
    assert trial.status is TrialStatus.COMPLETED
    assert (tmp_path / "finished.log").read_text().splitlines() == [trial.id], "the script's work ran twice"


FROZEN_AS_RESERVED = r"""
import os, signal, sys, time
import orchard
from orchard.worker import Worker

folder, storage, freeze = sys.argv[1], sys.argv[2], sys.argv[3] == "freeze"
acquire = Worker._acquire

def frozen_as_it_lands(self):
    trial = acquire(self)
    if freeze and trial is not None and not os.path.exists(os.path.join(folder, "frozen")):
        open(os.path.join(folder, "frozen"), "w").close()
        os.kill(os.getpid(), signal.SIGSTOP)  # the node freezes as the reservation's answer arrives
    return trial

Worker._acquire = frozen_as_it_lands

def work(x):
    for step in range(8):  # 0.8 s in small steps, less than a heartbeat: the trial is never beaten
        time.sleep(0.1)
    with open(os.path.join(folder, "finished.log"), "a") as log:
        log.write(f"{os.getppid()} {x!r}\n")
    return x

experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=storage, max_trials=1,
                                      heartbeat=1.0)
experiment.workon(work, n_workers=1, trial_timeout=60, progress=False)
"""


def test_a_worker_frozen_as_its_reservation_landed_does_not_evaluate_the_trial_taken_meanwhile(
    tmp_path: Path
) -> None:
    """The lease's watch began when the reservation's answer was read, not when it was sent: a worker
    frozen in between (the chaos test's SIGSTOP) woke believing a lease already taken back was fresh,
    and ran the whole evaluation beside the attempt that had taken the trial over."""
    storage = f"pickle://{tmp_path / 'orchard.pkl'}"
    run = [sys.executable, "-c", FROZEN_AS_RESERVED, str(tmp_path), storage]
    first = subprocess.Popen([*run, "freeze"], env=_env(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / "frozen", first)
        second = subprocess.run([*run, "no-freeze"], env=_env(), text=True, capture_output=True, timeout=90)
        assert second.returncode == 0, second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    (trial,) = orchard.get_experiment("e", storage=storage).fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.attempts == 2
    finished = (tmp_path / "finished.log").read_text().splitlines()
    assert len(finished) == 1, f"the trial's work ran twice, the second time by the worker that lost it: {finished}"


def test_cancelling_a_python_evaluation_kills_its_child_at_once(tmp_path: Path) -> None:
    import threading

    from orchard.objective import ObjectiveEvaluator, Outcome
    from orchard.trial import Trial

    evaluate = ObjectiveEvaluator(functools.partial(loads.pid_then_sleep, folder=str(tmp_path)), timeout=120)
    trial = Trial(id="t1", experiment="e", params={"x": 0.5})
    outcomes: list[Outcome] = []
    runner = threading.Thread(target=lambda: outcomes.append(evaluate(trial)))
    runner.start()
    child = int(_wait_for(tmp_path / "child.pid"))
    started = time.monotonic()
    evaluate.cancel(trial)  # what the worker's heartbeat thread does when the lease is lost
    runner.join(30)
    assert not runner.is_alive() and time.monotonic() - started < 5
    assert outcomes[0].error is not None and outcomes[0].error["reason"] == "cancelled"
    assert _gone(child)



@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in Linux's /proc")
def test_a_timed_evaluation_ending_with_every_file_taken_keeps_its_value() -> None:
    """8 workers under ``ulimit -n 16``: the search for the processes a run left out of its group could not
    read /proc once the value was in hand, and the trial was broken with OSError (its result lost)."""
    from orchard.isolation import ForkedCall

    call = ForkedCall(lambda: 42)
    with workloads.every_file_taken():
        assert call.result(timeout=60, memory_limit=None) == 42


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in Linux's /proc")
def test_a_timed_evaluation_that_cannot_start_for_want_of_files_is_not_the_trials_fault() -> None:
    """8 workers under ``ulimit -n 16``: os.pipe failed as the evaluation started, the trial was broken
    with OSError, and 3 such stopped the experiment ("Fix the objective")."""
    from orchard.objective import ObjectiveEvaluator
    from orchard.trial import Trial

    evaluate = ObjectiveEvaluator(lambda x: x, timeout=60)
    with workloads.every_file_taken(), pytest.raises(ExecutorError, match=r"gave the trial back.*ulimit -n"):
        evaluate(Trial(id="t1", experiment="e", params={"x": 0.5}))


# -- memory limits ---------------------------------------------------------------------


def _memory_experiment(storage: str, name: str = "mem") -> orchard.Experiment:
    exp = orchard.build_experiment(name, space={"x": "uniform(0, 1)"}, storage=storage, max_trials=3, seed=3)
    exp.insert({"x": loads.HUNGRY_X})
    return exp


def _assert_broken_for_memory(exp: orchard.Experiment) -> None:
    trials = exp.fetch_trials()
    (broken,) = [t for t in trials if t.status is TrialStatus.BROKEN]
    assert broken.params == {"x": loads.HUNGRY_X} and broken.error is not None
    assert broken.error["reason"] == "memory", broken.error
    assert broken.error["memory_limit"] == 400_000_000 and broken.error["peak_memory"] > 400_000_000
    assert "trial_memory_limit=400 MB" in broken.error["message"]
    assert len([t for t in trials if t.status is TrialStatus.COMPLETED]) == 3


@pytest.mark.parametrize("executor", ["single", "dask"])
def test_a_trial_past_its_memory_limit_is_broken_and_the_worker_goes_on(tmp_path: Path, executor: str) -> None:
    exp = _memory_experiment(str(tmp_path / "o.pkl"))
    started = time.monotonic()
    stats = exp.workon(loads.hungry_or_small, n_workers=1, executor=executor, trial_memory_limit=LIMIT,
                       progress=False)
    assert stats["counts"] == {**stats["counts"], "completed": 3, "broken": 1}
    assert time.monotonic() - started < 25, "the hungry trial must be killed, not run to its end"
    _assert_broken_for_memory(exp)


HUNGRY_SCRIPT = r'''
import json, os, sys, time
x = float(sys.argv[1].split("=")[1])
if x == 0.9995:
    block = b"x" * int(1.5e9)
    time.sleep(30)
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({"objective": x}, handle)
'''


def test_hunt_breaks_a_script_past_its_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hungry.py").write_text(HUNGRY_SCRIPT)
    exp = _memory_experiment("o.pkl")
    code = main(["hunt", "-n", "mem", "--storage", "o.pkl", "--trial-memory-limit", LIMIT,
                 sys.executable, "hungry.py", "--x~uniform(0, 1)"])
    assert code == 0
    _assert_broken_for_memory(exp)


# -- GPUs per worker -------------------------------------------------------------------


def test_two_workers_see_one_device_each(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    exp = orchard.build_experiment("gpu", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=2)
    exp.workon(functools.partial(loads.devices_barrier, folder=str(seen)), n_workers=2, gpus=[0, 1],
               progress=False)
    assert sorted(p.read_text() for p in seen.iterdir()) == ["0", "1"]
    for trial in exp.fetch_trials():
        assert devices_of(trial.worker) == trial.results["devices"], trial.worker
    if "CUDA_VISIBLE_DEVICES" not in os.environ:  # the reused worker processes got their environment back
        exp = orchard.build_experiment("gpu", storage=str(tmp_path / "o.pkl"), max_trials=4)
        stats = exp.workon(loads.visible_devices, n_workers=2, progress=False)
        assert stats["counts"]["completed"] == 4
        assert {t.results["devices"] for t in exp.fetch_trials()[2:]} == {"<unset>"}


DEVICES_SCRIPT = r'''
import json, os, sys, time
folder = sys.argv[1]
with open(os.path.join(folder, str(os.getpid())), "w") as handle:
    handle.write(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
deadline = time.monotonic() + 90
while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({"objective": 1.0}, handle)
'''


def test_hunt_gives_two_workers_one_device_each(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    (tmp_path / "devices.py").write_text(DEVICES_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "orchard.cli", "hunt", "-n", "g", "--storage", "o.pkl", "--max-trials", "2",
         "--n-workers", "2", "--gpus", "0,1", sys.executable, "devices.py", str(seen), "--x~uniform(0, 1)"],
        cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.read_text() for p in seen.iterdir()) == ["0", "1"]
    workers = {devices_of(t.worker) for t in orchard.get_experiment("g", storage=str(tmp_path / "o.pkl"))
               .fetch_trials()}
    assert workers == {"0", "1"}


# -- executors you already have --------------------------------------------------------


def test_a_dask_client_you_own_is_used_and_left_open(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    exp = orchard.build_experiment("d", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=4)
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        stats = exp.workon(loads.visible_devices, n_workers=1, executor=client, progress=False)
        assert stats["counts"]["completed"] == 4
        assert client.status == "running"
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3  # still open and usable


def test_dask_without_workers_fails_within_the_timeout(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    exp = orchard.build_experiment("d0", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=2)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        started = time.monotonic()
        with pytest.raises(ExecutorError, match=r"no Dask worker joined the scheduler .* within 2 s"):
            exp.workon(loads.visible_devices, executor=client, executor_config={"worker_timeout": 2},
                       progress=False)
        assert time.monotonic() - started < 15
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="no Dask worker joined"):
        exp.workon(loads.visible_devices, executor="dask",
                   executor_config={"n_workers": 0, "processes": False, "worker_timeout": 2}, progress=False)
    assert time.monotonic() - started < 30
    assert exp.fetch_trials() == []


@pytest.mark.parametrize(("config", "taker", "named"), [
    ({"dashboard_addres": None}, "LocalCluster", "dashboard_addres"),  # its worker processes refuse it
    ({"address": "tcp://127.0.0.1:1", "dashboard_address": None}, "Client", "dashboard_address"),
], ids=["misspelled-for-the-local-cluster", "a-local-cluster-option-with-an-address"])
def test_dask_options_dask_refuses_are_one_configuration_error(tmp_path: Path, config: dict, taker: str,
                                                               named: str) -> None:
    """A misspelled LocalCluster option failed its worker processes' start, and workon blamed a missing
    ``if __name__ == "__main__":``; an option Client does not take raised Dask's bare ValueError."""
    exp = orchard.build_experiment("opts", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=2)
    with pytest.raises(orchard.errors.ConfigurationError, match=f"dask.distributed.{taker} refused") as raised:
        exp.workon(loads.visible_devices, n_workers=1, executor="dask", executor_config=config, progress=False)
    message = str(raised.value)
    assert named in message and "__main__" not in message and "\n" not in message
    assert exp.fetch_trials() == []


def test_dask_worker_resources_are_asked_for_each_worker(tmp_path: Path) -> None:
    exp = orchard.build_experiment("dr", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=4)
    stats = exp.workon(loads.visible_devices, n_workers=2, executor="dask", progress=False,
                       executor_config={"processes": False, "resources": {"GPU": 1}, "worker_timeout": 60})
    assert stats["counts"]["completed"] == 4



@pytest.mark.timeout(60)
def test_dask_resources_no_worker_offers_are_one_error_not_a_hang(tmp_path: Path) -> None:
    """executor_config={"resources": {"GPU": 1}} on a cluster whose workers were started without
    ``--resources GPU=1``: Dask held the loops for ever, and workon waited silently."""
    distributed = pytest.importorskip("distributed")
    exp = orchard.build_experiment("no-gpu", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=2)
    words = (r"no Dask worker .* offers the resources \{'GPU': 1\} .* within 1 s \(its workers offer none\); "
             r"start workers with .*--resources GPU=1")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with pytest.raises(ExecutorError, match=words):
            exp.workon(loads.visible_devices, n_workers=1, executor=client, progress=False,
                       executor_config={"resources": {"GPU": 1}, "worker_timeout": 1})
    assert exp.fetch_trials() == []

MPI_MAIN = r'''
import sys
from mpi4py.futures import MPIPoolExecutor
import orchard
from tests import workloads

if __name__ == "__main__":
    exp = orchard.build_experiment("mpi", space=workloads.SPACE, storage=sys.argv[1], max_trials=12)
    with MPIPoolExecutor() as pool:
        stats = exp.workon(workloads.slow_quadratic, n_workers=2, executor=pool, progress=False)
        print("completed", stats["counts"]["completed"], "open", pool.submit(pow, 2, 5).result())
'''


def test_mpi_pool_executor_runs_the_workers_under_mpiexec(tmp_path: Path, mpiexec: list[str]) -> None:
    (tmp_path / "main.py").write_text(MPI_MAIN)
    env = {**_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*mpiexec, "-n", "3", sys.executable, "-m", "mpi4py.futures",
                           str(tmp_path / "main.py"), str(tmp_path / "o.pkl")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "completed 12 open 32" in proc.stdout  # the pool ran the workers and was left open
    trials = orchard.get_experiment("mpi", storage=str(tmp_path / "o.pkl")).fetch_trials()
    assert len({t.worker.split(":")[1] for t in trials}) == 2, "two MPI worker processes shared the work"


def test_a_dask_run_leaves_port_8787_to_a_dask_dashboard_already_there(tmp_path: Path) -> None:
    """Orchard's LocalCluster has no dashboard, but its scheduler's HTTP server still took port 8787: with a
    Dask dashboard of the user's (or a second run) there, every run printed "Port 8787 is already in use"."""
    import warnings

    exp = orchard.build_experiment("p", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=2)
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 8787))
        except OSError:
            pass  # already held by some server here: the run must leave it alone all the same
        taken.listen()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            stats = exp.workon(loads.visible_devices, n_workers=1, executor="dask",
                               executor_config={"processes": False, "worker_timeout": 60}, progress=False)
    assert stats["counts"]["completed"] == 2
    assert not [w for w in seen if "8787" in str(w.message)], [str(w.message) for w in seen]
