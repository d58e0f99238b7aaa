"""Objectives and entry points for the evaluation tests (importable by spawned processes)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orchard

#: The ``x`` of the trial that allocates 1.5 GB (inserted by the memory tests; random search never hits it).
HUNGRY_X = 0.9995


def hungry_or_small(x: float) -> float:
    """Allocates (and touches) 1.5 GB when ``x == HUNGRY_X``, else returns at once."""
    if x == HUNGRY_X:
        import numpy as np

        block = np.ones(int(1.5e9 // 8))
        time.sleep(30)
        return float(block[0])
    return x


def pid_then_sleep(x: float, folder: str) -> float:
    """Writes this pid to ``folder/child.pid``, then sleeps: a test interrupts the worker meanwhile."""
    path = Path(folder) / "child.pid"
    path.with_suffix(".tmp").write_text(str(os.getpid()))
    os.replace(path.with_suffix(".tmp"), path)
    time.sleep(60)
    return x


def leaves_a_process_running(x: float, folder: str) -> float:
    """Starts a forked multiprocessing child that outlives the call (a DataLoader worker, say)."""
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    (Path(folder) / "left.pid").write_text(str(child.pid))
    return x


def leaves_a_session_running(x: float, folder: str) -> float:
    """Starts a program in a session of its own (a launcher's worker, a daemon), never waited for."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    (Path(folder) / "left.pid").write_text(str(child.pid))
    return x


def devices_barrier(x: float, folder: str, workers: int = 2) -> dict[str, object]:
    """Records this process's CUDA_VISIBLE_DEVICES, then waits until ``workers`` processes have.

    The wait makes every worker evaluate at the same time, so each one's devices are seen.
    """
    seen = Path(folder)
    (seen / f"{os.getpid()}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    deadline = time.monotonic() + 90
    while len(list(seen.iterdir())) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"objective": x, "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}


def visible_devices(x: float) -> dict[str, object]:
    return {"objective": x, "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}


def workon_until_interrupted(storage: str, folder: str) -> None:
    """A process whose one worker evaluates ``pid_then_sleep`` in a timeout child (for Ctrl-C tests)."""
    import functools

    exp = orchard.build_experiment("stop", space={"x": "uniform(0, 1)"}, storage=storage, max_trials=1)
    exp.workon(functools.partial(pid_then_sleep, folder=folder), executor="single", trial_timeout=120,
               progress=False)


def crashes_one_worker(x: float, folder: str, workers: int = 3) -> float:
    """The first call exits its process (a segfault, the OOM killer) once every worker runs a trial.

    Each call leaves ``folder/PID.running``; the crashing one writes its ``x`` to ``folder/crashed``.
    The others sleep until their pool is torn down.
    """
    Path(folder, f"{os.getpid()}.running").write_text(repr(x))
    try:
        descriptor = os.open(Path(folder, "crashed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        time.sleep(60)
        return x
    deadline = time.monotonic() + 60
    while len(list(Path(folder).glob("*.running"))) < workers and time.monotonic() < deadline:
        time.sleep(0.02)
    os.write(descriptor, repr(x).encode())
    os.close(descriptor)
    os._exit(3)


def crashes_one_reporting_worker(x: float, folder: str, workers: int = 3) -> float:
    """Like :func:`crashes_one_worker`, but every call reports a value at each step (the others until their pool
    is torn down, so their trials' heartbeats move as it is), and the crashing one is SIGKILLed between reports."""
    Path(folder, f"{os.getpid()}.running").write_text(repr(x))
    try:
        descriptor = os.open(Path(folder, "crashed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        descriptor = -1
    deadline = time.monotonic() + 60
    for step in range(100_000):
        orchard.report(x + 1.0 / (step + 1), step)
        if descriptor >= 0 and len(list(Path(folder).glob("*.running"))) >= workers:
            os.write(descriptor, repr(x).encode())
            os.close(descriptor)
            os.kill(os.getpid(), signal.SIGKILL)
        if time.monotonic() > deadline:
            break
    return x


def reports_every_step(x: float, steps: int = 40) -> float:
    """Reports ``x * step / 20`` at each of ``steps`` steps, a few milliseconds apart; stops when pruned."""
    value = 0.0
    for step in range(steps):
        value = x * step / 20
        orchard.report(value, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
        time.sleep(0.005)
    return value


def ticks(x: float, folder: str, count: int = 50) -> float:
    """Append a line to ``folder/ticks`` every 0.05 s, ``count`` times (about 2.5 s while it runs), then return ``x``."""
    with open(os.path.join(folder, "ticks"), "a") as out:
        for _ in range(count):
            out.write(f"{os.getpid()}\n")
            out.flush()
            time.sleep(0.05)
    return x


def workon_ticks(storage: str, folder: str) -> None:
    """A program running one trial of :func:`ticks` under a 4 s ``trial_timeout``."""
    import functools

    exp = orchard.build_experiment("ticks", space={"x": "uniform(0, 1)"}, storage=storage, max_trials=1)
    exp.workon(functools.partial(ticks, folder=folder), executor="single", trial_timeout=4, progress=False)
