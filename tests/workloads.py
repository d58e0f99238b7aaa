"""Objectives and process entry points for worker tests (importable by spawned processes)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orchard


def quadratic(x: float, y: float = 0.0) -> float:
    return (x - 0.3) ** 2 + (y - 0.2) ** 2


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def slow_branin(x: float, y: float) -> float:
    time.sleep(0.5)
    return branin(x, y)


def slow_branin_breaking_low_x(x: float, y: float) -> float:
    if x < 0.0:
        raise ValueError(f"bad x={x:.3f}")
    return slow_branin(x, y)


def slow_quadratic(x: float, y: float = 0.0) -> float:
    time.sleep(0.05)
    return quadratic(x, y)


def always_raises(x: float, y: float = 0.0) -> float:
    raise ValueError(f"bad x={x:.3f}")


def with_metrics(x: float, y: float = 0.0) -> dict[str, float]:
    return {"objective": quadratic(x, y), "accuracy": 1.0 - x}


def sleepy(x: float, y: float = 0.0) -> float:
    time.sleep(30)
    return x


def marker_then_slow(x: float, y: float = 0.0) -> float:
    """Writes a marker with this pid, then sleeps: lets a test SIGKILL the worker mid-trial."""
    marker = Path(os.environ["ORCHARD_TEST_MARKER"])
    if not marker.exists():
        marker.write_text(f"{os.getpid()} {x!r}")
        time.sleep(60)
    return quadratic(x, y)


SPACE = {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}


def workon_process(storage: str, name: str, max_trials: int, fn_name: str = "slow_quadratic",
                   algorithm: str = "random", heartbeat: float = 30.0) -> dict:
    """One independent process joining the experiment and running workon with one worker."""
    exp = orchard.build_experiment(name, space=SPACE, algorithm=algorithm, storage=storage,
                                   max_trials=max_trials, heartbeat=heartbeat)
    return exp.workon(globals()[fn_name], n_workers=1, executor="single", progress=False)


def exits_process(x: float, y: float = 0.0) -> float:
    os._exit(3)


def marker_then_brief(x: float, y: float = 0.0) -> float:
    """Writes a marker (``ORCHARD_TEST_MARKER``), then sleeps 3 s: lets a test break something mid-trial."""
    Path(os.environ["ORCHARD_TEST_MARKER"]).touch()
    time.sleep(3)
    return quadratic(x, y)


@contextlib.contextmanager
def every_file_taken() -> Iterator[None]:
    """This process holds as many open files as it may (``ulimit -n`` lowered, then filled) in the block."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    taken: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
