"""Worker loops in pool processes of the caller, and how one that starts after a stop learns of it.

An interruption of the process that called ``workon`` reaches the loops running
in its pool processes (``process``, ``joblib``, a process pool of the caller's
own) as :data:`~orchard.interruption.STOP_SIGNAL`, sent again every 0.5 s
(:func:`~orchard.interruption.stop_workers`). A loop that starts in between (a
pool process still starting ignores the signal, a task queued in the pool starts
when another ends) would reserve and run trials until the next one: after a
SIGTERM during the pool's start, a budget of short trials ran to its end. The
:class:`~orchard.executors.fleet.Fleet` marks the stop with a file named per
``workon`` call instead, whose name travels in each task, and each loop looks
for it once its signal handlers are in place::

    Fleet                                       a loop starting in a pool process
    ─────                                       ─────────────────────────────────
    interrupted → creates the file              installs its signal handlers, then looks
                  then sends STOP_SIGNAL        for the file: there → it stops before any
                                                reservation; not there → its handler was in
                                                place before the file was made, so the
                                                signal sent after reaches it
    removes the file when ``workon`` ends

The file is empty, created exclusively under an unpredictable name in the
temporary folder; where it cannot be created, loops are stopped by the signal
alone.

The loops on an executor of the caller's own that runs them neither in this
machine's pool processes, nor as threads of the caller, nor on Dask (an
``mpi4py.futures.MPIPoolExecutor``, whose ranks no signal of the caller
reaches) watch the same mark while they run (:func:`watched_mark`): once it
appears they reserve nothing more, and a loop running in its process's main
thread has its evaluation interrupted as :data:`~orchard.interruption.STOP_SIGNAL`
would. Only ranks on the caller's machine see it (the temporary folder is not
shared): others stop when their lease is lost or the budget is met.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from orchard.interruption import interrupt_main

__all__ = ["LocalStop", "stopped_before", "unstartable", "watched_mark"]

#: Seconds between two looks of a watching loop at its stop mark.
_LOOK = 0.25


class LocalStop:
    """The mark that the worker loops of one ``workon`` in the caller's pool processes must stop."""

    def __init__(self, watched: bool = False) -> None:
        self.path = os.path.join(tempfile.gettempdir(), f"orchard-stop-{uuid.uuid4().hex}")
        #: The loops watch the mark while they run (no signal of the caller reaches them).
        self.watched = watched
        self._made = False

    @classmethod
    def of(cls, pool: Executor) -> LocalStop | None:
        """The mark for the loops submitted to ``pool``: if it runs them in this machine's pool processes,
        or in processes of an executor of the caller's own (watched); ``None`` for threads, Dask."""
        module = type(pool).__module__
        if isinstance(pool, ProcessPoolExecutor) or module.startswith(("joblib.externals.loky", "loky.")):
            return cls()
        if isinstance(pool, ThreadPoolExecutor) or module.startswith(("distributed.", "orchard.")):
            return None  # told by a StopRequest or a RemoteStop
        return cls(watched=True)

    def set(self) -> None:
        """Mark the stop (before the loops are signalled)."""
        with contextlib.suppress(OSError):  # a temporary folder that cannot be written: the signal alone
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._made = True

    def close(self) -> None:
        """Remove the mark (when ``workon`` ends)."""
        if self._made:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def stopped_before(path: str | None) -> bool:
    """In a loop starting in a pool process, once its signal handlers are in place: whether its stop is marked."""
    return path is not None and os.path.exists(path)


@contextlib.contextmanager
def watched_mark(path: str | None) -> Iterator[threading.Event | None]:
    """In a loop that no signal of its caller reaches: an event set once the stop mark ``path`` appears.

    A loop running in its process's main thread (an MPI rank's) also has its evaluation interrupted then
    (:func:`~orchard.interruption.interrupt_main`), as a pool process's is by the stop signal; never once
    the block has ended. ``None`` (nothing watched) for no ``path``.
    """
    if path is None:
        yield None
        return
    stop, lock, ended = threading.Event(), threading.Lock(), threading.Event()
    in_main = threading.current_thread() is threading.main_thread()

    def watch() -> None:
        while not ended.wait(_LOOK):
            if os.path.exists(path):
                with lock:
                    if not ended.is_set():
                        stop.set()
                        if in_main:
                            interrupt_main()
                return

    watcher = threading.Thread(target=watch, name="orchard-stop-watch", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        with lock:
            ended.set()
        watcher.join()


def unstartable(pool: Executor) -> bool:
    """Whether ``pool`` is an ``mpi4py.futures`` pool whose thread that starts its ranks and hands them tasks
    ended while it is open: MPI refused to spawn them (more ranks than slots), and every task waits for ever.

    mpi4py fails the tasks of a pool it knows is broken; not those of one whose spawn raised in that thread.
    Private attributes, read with defaults.
    """
    if not type(pool).__module__.startswith("mpi4py."):
        return False
    thread = getattr(getattr(pool, "_pool", None), "thread", None)
    open_pool = not getattr(pool, "_shutdown", True)
    return isinstance(thread, threading.Thread) and not thread.is_alive() and open_pool
