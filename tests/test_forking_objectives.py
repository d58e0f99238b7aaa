"""Objectives that fork: whatever their children do, ``workon`` ends, loses no trial and leaves no copy running.

Each run is a process of its own (``python -m tests.fork_workloads``) in a session of its
own, so that a hang is a timeout here and every process it left is found and killed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable

import psutil
import pytest

from orchard.forks import own_process
from tests.fork_workloads import BUDGET

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Seconds a run may take; each takes about 2 s.
RUN_TIMEOUT = 40
#: Seconds the processes of a run have to end on their own once its script ended.
LEFT_GRACE = 10


def _left_running(session: int) -> list[psutil.Process]:
    """The processes of ``session`` still running (zombies waiting for a reaper are not)."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except (OSError, psutil.Error):
            continue
    return left


def _command(process: psutil.Process) -> list[str] | str:
    try:
        return process.cmdline()
    except psutil.Error as err:
        return type(err).__name__


def _run(tmp_path: pathlib.Path, behaviour: str, executor: str, n_workers: int) -> tuple[str, str]:
    """Run the workload; its stdout and stderr. Fails on a hang, a failure, or a process left running."""
    storage = str(tmp_path / "orchard.pkl")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fork_workloads", storage, behaviour, executor, str(n_workers)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        for left in _left_running(process.pid):
            left.kill()
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"workon with an objective whose child {behaviour} hung for {RUN_TIMEOUT} s:\n{err[-3000:]}")
    # a pool's processes notice their parent's exit and end on their own (loky's, a moment after the script)
    left = psutil.wait_procs(_left_running(process.pid), timeout=LEFT_GRACE)[1]
    commands = [_command(p) for p in left]
    for process_left in left:
        process_left.kill()
    assert process.returncode == 0, err[-3000:]
    assert left == [], f"processes still running {LEFT_GRACE} s after the script ended: {commands}"
    return out, err


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 20)
@pytest.mark.parametrize("behaviour, executor, n_workers", [
    ("returns", "process", 2), ("returns", "joblib", 2), ("returns", "thread", 2), ("returns", "single", 1),
    ("raises", "process", 2),
])
def test_a_forked_child_coming_out_of_the_objective_leaves_instead_of_running_as_a_second_worker(
        tmp_path: pathlib.Path, behaviour: str, executor: str, n_workers: int) -> None:
    out, _ = _run(tmp_path, behaviour, executor, n_workers)
    ends = [line for line in out.splitlines() if line.startswith("workon ended")]
    assert len(ends) == 1, f"the rest of the user's script ran {len(ends)} times"
    assert json.loads(ends[0].removeprefix("workon ended")) == {"completed": BUDGET}


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 20)
@pytest.mark.parametrize("behaviour, executor", [("never-joined", "process"), ("joined", "joblib")])
def test_a_multiprocessing_child_of_the_objective_starts_and_never_holds_the_pool_shutdown(
        tmp_path: pathlib.Path, behaviour: str, executor: str) -> None:
    out, err = _run(tmp_path, behaviour, executor, 2)  # under joblib, multiprocessing.Process used loky's start method
    assert out.startswith("workon ended") and json.loads(out.removeprefix("workon ended")) == {"completed": BUDGET}
    assert "Interrupted" not in err, f"the stopped child raised the worker's interruption:\n{err[-2000:]}"
    said = sum(int(count) for count in re.findall(r"the objective left (\d+) process\(es\) running", err))
    assert said == (BUDGET if behaviour == "never-joined" else 0), "the workers did not say what they stopped"


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 20)
@pytest.mark.parametrize("executor", ["process", "joblib"])
def test_a_thread_the_objective_never_joins_holds_neither_workon_nor_the_scripts_exit(
        tmp_path: pathlib.Path, executor: str) -> None:
    out, err = _run(tmp_path, "thread-left", executor, 2)
    assert out.startswith("workon ended") and json.loads(out.removeprefix("workon ended")) == {"completed": BUDGET}
    said = sum(int(count) for count in re.findall(r"the objective left (\d+) thread\(s\) running \(left-behind", err))
    assert said == BUDGET, f"the workers did not say what they left:\n{err[-2000:]}"



def _fork_inside(leaving: Callable[[], None]) -> int | None:
    """Fork inside :func:`own_process`, the child doing ``leaving``; the child's exit code (``None`` in the child)."""
    with own_process():
        pid = os.fork()
        if pid == 0:
            leaving()
    if pid == 0:  # only a child that got out of the block: own_process failed
        os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _raise(error: BaseException) -> Callable[[], None]:
    def leaving() -> None:
        raise error
    return leaving


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("leaving, code", [
    (lambda: None, 0), (_raise(ValueError("child")), 1), (_raise(SystemExit(3)), 3), (_raise(SystemExit()), 0),
    (_raise(KeyboardInterrupt()), 1),
])
def test_a_forked_copy_leaving_the_users_code_exits_as_a_main_that_returned_or_raised_would(
        leaving: Callable[[], None], code: int) -> None:
    assert _fork_inside(leaving) == code
    with own_process():
        pass  # this process itself goes on
