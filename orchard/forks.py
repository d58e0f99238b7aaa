"""Processes the user's code starts: what Orchard does so that they never hold a ``workon`` up.

An objective may fork (``os.fork``, a ``multiprocessing.Process``, a data
loader's workers). Two things the user's children could do would otherwise stall
or corrupt the run, and this module stops both::

    the user's code                           what Orchard does
    ────────────────────────────────────────  ─────────────────────────────────────────────
    a child of os.fork() returns (or raises)  :func:`own_process`: it leaves at once with
    out of the objective, into Orchard        ``os._exit`` (0 for a return, 1 for an
                                              exception, SystemExit's code), instead of running
                                              on as a second worker under the same name and
                                              lease, then as a second copy of the pool's
                                              process (taking its work from the pool's queue)
                                              or of the user's own script
    a multiprocessing child never joined      :func:`end_children_at_exit`: as a pool's process
    that never ends                           Orchard started exits, its leftover children get
                                              SIGTERM, then SIGKILL after :data:`LEFTOVER_GRACE`
                                              seconds (multiprocessing itself would join them
                                              for ever, and the pool's shutdown with them)
    a thread never joined that never ends     :func:`outlive_threads_at_exit`: as a pool's process
    (not ``daemon``)                          Orchard started exits, it waits :data:`LEFTOVER_GRACE`
                                              seconds for its leftover threads, then leaves without
                                              them (Python would wait for them for ever, and the
                                              pool's shutdown, or the exit of the script whose
                                              loky pool it is, with them)

A child of ``os.fork`` that stays inside the objective (it sleeps, serves a data
loader, calls ``os._exit``) is the user's: Orchard does not wait for it. It starts
with Python's default signal handlers, not the worker's (:mod:`orchard.interruption`),
and keeps only what the objective's frame held (a flock Orchard takes is released
explicitly by its holder, so an inherited descriptor does not keep it).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator

__all__ = ["LEFTOVER_GRACE", "end_children_at_exit", "outlive_threads_at_exit", "own_process"]

log = logging.getLogger(__name__)

#: Seconds a pool process's leftover multiprocessing children have to end after SIGTERM, before SIGKILL,
#: and its leftover threads have to end before it leaves without them.
LEFTOVER_GRACE = 5.0


@contextlib.contextmanager
def own_process() -> Iterator[None]:
    """Around the user's code: a forked copy of this process that comes out of it exits at once.

    The copy leaves as a process whose main returned or raised would: stdio flushed,
    a traceback printed for an exception, ``SystemExit``'s code, else 0 (returned) or 1 (raised).
    This process itself is not affected.
    """
    pid = os.getpid()
    try:
        yield
    except SystemExit as err:
        if os.getpid() != pid:
            _leave(err.code if isinstance(err.code, int) else int(err.code is not None))
        raise
    except BaseException:
        if os.getpid() != pid:
            traceback.print_exc()
            _leave(1)
        raise
    if os.getpid() != pid:
        _leave(0)


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed or replaced by the user: nothing to flush
            stream.flush()
    os._exit(code)


def end_children_at_exit() -> None:
    """In a pool's process Orchard started: end the multiprocessing children left running when it exits.

    Registered as a multiprocessing finalizer, which runs before multiprocessing
    joins the children (and would wait for ever for one that never ends).
    """
    multiprocessing.util.Finalize(None, _end_leftover_children, exitpriority=0)


def _end_leftover_children() -> None:
    children = multiprocessing.active_children()
    if not children:
        return
    log.warning("process %d: the objective left %d process(es) running (%s); stopping them so that the worker "
                "can exit. Join the processes an objective starts before it returns, or make them daemon=True",
                os.getpid(), len(children), ", ".join(str(child.pid) for child in children))
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    deadline = time.monotonic() + LEFTOVER_GRACE
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
        if child.is_alive():
            with contextlib.suppress(Exception):
                child.kill()
            child.join()


def outlive_threads_at_exit() -> None:
    """In a pool's process Orchard started: threads the objective left running do not keep it from exiting.

    Registered as the last multiprocessing finalizer: it runs after the pool's own
    (its queues flushed), before Python joins the threads that are not daemons.
    """
    multiprocessing.util.Finalize(None, _bound_the_wait_for_threads, exitpriority=-100)


def _leftover_threads() -> list[threading.Thread]:
    here = threading.current_thread()
    return [thread for thread in threading.enumerate()
            if not thread.daemon and thread is not here and thread is not threading.main_thread()]


def _bound_the_wait_for_threads() -> None:
    if _leftover_threads():  # Python joins them once this returns; a daemon thread ends the wait in time
        threading.Thread(target=_leave_past_threads, name="orchard-leftover-threads", daemon=True).start()


def _leave_past_threads() -> None:
    deadline = time.monotonic() + LEFTOVER_GRACE
    for thread in _leftover_threads():
        thread.join(max(deadline - time.monotonic(), 0.0))
    left = _leftover_threads()
    if not left:
        return
    log.warning("process %d: the objective left %d thread(s) running (%s); the worker exits without them. "
                "Join the threads an objective starts before it returns, or make them daemon=True",
                os.getpid(), len(left), ", ".join(thread.name for thread in left))
    _leave(0)
