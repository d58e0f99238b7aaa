"""How many worker loops a local executor can start on this machine, checked before any starts.

A named local executor starts one OS process (``process``, ``joblib``) or one
thread (``thread``) per worker loop, all at once. Past what the machine holds,
starting them is not slow but harmful: forks by the ten thousand drive the
load up for minutes and eat the memory before the first of them fails.
:func:`check_capacity` refuses such an ``n_workers`` in one line, before
anything is stored. Two limits, each a floor the workers cannot go under:

========== ===========================================================================
limit      how many workers fit
========== ===========================================================================
tasks      every process and thread is a kernel task: the tasks still free under the
           kernel's ``pid_max`` and ``threads-max``, and under the user's ``RLIMIT_NPROC``
           (not enforced for root)
memory     the memory available now (``psutil``), over what one worker holds of its own
           (:data:`WORKER_MEMORY`)
interpreter loops running as threads take turns on one interpreter: at most
           :data:`THREAD_LOOPS` of them, whatever the machine (``n_workers=10_000`` threads
           were admitted, and spent their time coordinating)
========== ===========================================================================

Nor is the ``LocalCluster`` of worker processes that ``executor="dask"`` starts
without an address (:func:`counted_as`). A Dask cluster of one's own and
executors of the caller's own are not checked: they place their workers
themselves, possibly on other machines.

Nor is a worker started that would find nothing to do: every running trial
holds a unit of ``max_trials``, so :func:`workers_to_start` (``workon``,
``orchard hunt``) starts no more loops than the budget can still hand out,
whatever the executor.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
from collections.abc import Callable, Mapping
from typing import Any

from orchard.errors import ConfigurationError

__all__ = ["LOCAL_CLUSTER", "THREAD_LOOPS", "WORKER_MEMORY", "Machine", "check_capacity", "check_n_workers",
           "counted_as", "workers_to_start"]

log = logging.getLogger(__name__)

_MiB = 2**20
#: What :func:`counted_as` calls the workers of the Dask ``LocalCluster`` Orchard starts (processes of this machine).
LOCAL_CLUSTER = "dask LocalCluster"
#: Memory of its own (unshared) one busy worker holds, by executor: a forked ``process`` worker
#: 7.8 MiB with a small history, growing with it (7.8–25.9 MiB, docs/scaling.md, 64 to 512 workers); a loky worker is a fresh interpreter importing
#: numpy and Orchard, 37.5 MiB (psutil's ``uss`` of ``python -c "import numpy, orchard,
#: orchard.worker, joblib.externals.loky"``); a thread's loop 0.38 MiB (the resident memory a
#: ``workon`` of 128 thread workers on ``memory://`` added, over 128). The lower figures: only what
#: cannot fit is refused.
WORKER_MEMORY = {"process": 8 * _MiB, "joblib": 36 * _MiB, "loky": 36 * _MiB, "thread": 3 * _MiB // 8,
                 # a process of the LocalCluster `executor="dask"` starts without an address: 46.2 MiB (psutil's uss of
                 # each worker of LocalCluster(n_workers=2, processes=True) once it imported orchard.worker)
                 LOCAL_CLUSTER: 46 * _MiB}

#: Worker loops one process runs as threads at most: each folds every other loop's trials into its history
#: under one interpreter lock; 5 s trials kept it busy 98.8 / 86.9 / 31.5 % at 64 / 256 / 512 loops
#: (docs/scaling.md, bench/logs/scale/threads-64-512.txt).
THREAD_LOOPS = 256


@dataclasses.dataclass(frozen=True)
class Machine:
    """What this machine has free for new workers; ``None`` where it cannot be known."""

    available_memory: int | None
    free_tasks: int | None

    @classmethod
    def now(cls) -> Machine:
        """The machine as it is now."""
        return cls(_available_memory(), _free_tasks())

    def workers_that_fit(self, executor: str) -> tuple[int | None, str]:
        """How many workers of ``executor`` fit, and which limit says so (``None``: no known limit)."""
        fits: list[tuple[int, str]] = []
        if self.free_tasks is not None:
            fits.append((max(self.free_tasks, 0), f"{self.free_tasks} kernel tasks are free"))
        per_worker = WORKER_MEMORY.get(executor)
        if self.available_memory is not None and per_worker is not None:
            reason = (f"{self.available_memory / 2**30:.1f} GiB of memory is available and each "
                      f"{executor!r} worker holds about {per_worker / _MiB:g} MiB")
            fits.append((self.available_memory // per_worker, reason))
        if executor == "thread":
            fits.append((THREAD_LOOPS, f"loops running as threads take turns on one interpreter, which more "
                                       f"than {THREAD_LOOPS} keep busy coordinating (use executor='process' for "
                                       "more)"))
        return min(fits) if fits else (None, "")


def check_capacity(executor: str, n_workers: int, machine: Machine | None = None) -> None:
    """Refuse more workers of a named local executor than this machine can hold.

    Args:
        executor: a name of :data:`orchard.executors.EXECUTORS` as :func:`counted_as` gives it; only
            ``process``, ``joblib``/``loky``, ``thread`` and :data:`LOCAL_CLUSTER` are checked.
        n_workers: how many worker loops would start.
        machine: the machine's free resources (default: :meth:`Machine.now`).

    Raises:
        ConfigurationError: naming ``n_workers``, the limit it passes and what to do.
    """
    if executor not in WORKER_MEMORY or n_workers <= 1:
        return
    fit, reason = (machine or Machine.now()).workers_that_fit(executor)
    if fit is None or n_workers <= fit:
        return
    raise ConfigurationError(
        f"n_workers={n_workers} {executor!r} workers do not fit this machine: {reason}, room for {fit}; "
        "run fewer workers (each finishes trials in turn), or spread them over machines "
        "(executor='dask' with a cluster, or orchard hunt on each machine against one storage)")


def counted_as(executor: str, config: Mapping[str, Any]) -> str:
    """The name a named executor's workers are counted under: :data:`LOCAL_CLUSTER` for a Dask cluster Orchard starts here.

    Args:
        executor: a name of :data:`orchard.executors.EXECUTORS`.
        config: its options (Dask's ``address`` or ``scheduler_file``: a cluster elsewhere; ``processes=False``: threads).
    """
    if executor != "dask" or "address" in config or "scheduler_file" in config:
        return executor
    return "thread" if config.get("processes") is False else LOCAL_CLUSTER


def check_n_workers(n_workers: object) -> int:
    """``n_workers`` as an ``int`` (from a numpy integer too); ``ConfigurationError`` if not positive."""
    try:
        count = operator.index(n_workers)  # type: ignore[arg-type]  # no integer: refused below
    except TypeError:
        count = 0
    if isinstance(n_workers, bool) or count < 1:
        hint = " (joblib's -1 for one per CPU is n_workers=os.cpu_count() here)" if count < 0 else ""
        raise ConfigurationError(f"n_workers must be a positive integer, got {n_workers!r}{hint}")
    return count


def workers_to_start(n_workers: int, to_give: Callable[[], int | None], name: str) -> int:
    """How many of ``n_workers`` worker loops are worth starting when the budget can hand out ``to_give`` trials.

    Workers beyond those trials would start and stop at once (``--n-workers 100000 --max-trials 1``
    started processes for minutes). At least one starts: it says when the budget is met, and takes
    over the trials of others' workers that die. Says so at INFO when it starts fewer.

    Args:
        n_workers: how many the caller asked for.
        to_give: returns :func:`orchard.recording.budget_to_give` (``None``: no budget, every worker
            starts); asked only for more than one worker (it costs the storage a count).
        name: the experiment's name, for the log.

    Raises:
        ConfigurationError: ``n_workers`` is not a positive integer.
    """
    n_workers = check_n_workers(n_workers)
    left = to_give() if n_workers > 1 else None
    if left is None or n_workers <= max(left, 1):
        return n_workers
    started = max(left, 1)
    log.info("experiment %r: starting %d of %d workers: only %d trial(s) of the budget are left", name, started,
             n_workers, left)
    return started


def _available_memory() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _free_tasks() -> int | None:
    """Kernel tasks (processes and threads) that can still start, on Linux; else ``None``."""
    try:
        with open("/proc/loadavg") as file:  # "0.5 0.4 0.3 RUNNING/TASKS LAST_PID"
            tasks = int(file.read().split()[3].split("/")[1])
        limits = [_read_int("/proc/sys/kernel/pid_max"), _read_int("/proc/sys/kernel/threads-max")]
    except (OSError, ValueError, IndexError):
        return None
    free = min(limits) - tasks
    if os.geteuid() != 0:
        free = min(free, _free_under_nproc())
    return free


def _free_under_nproc() -> int:
    """Tasks the user may still start under ``RLIMIT_NPROC`` (which counts all of the user's threads)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return 2**62
    uid, own = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    own += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:  # exited meanwhile
                continue
    return soft - own


def _read_int(path: str) -> int:
    with open(path) as file:
        return int(file.read())
