"""How an interruption stops workers and gives their running trials back.

Ctrl-C, SIGINT, SIGTERM or SIGHUP to the process that called ``workon``
(``orchard hunt`` calls it too), while its workers run in local pool processes::

    the process that called workon              each local worker process
    ──────────────────────────────              ─────────────────────────
    SIGINT, SIGTERM or SIGHUP → Interrupted
    sends STOP_SIGNAL to its children ───────>  STOP_SIGNAL → Interrupted: stops the
                                                evaluation (a script: SIGTERM, then SIGKILL
                                                after its grace), releases the trial
                                                (``interrupted``, not counted against
                                                ``max_attempts``), reports it
    waits for the reports (STOP_TIMEOUT) <────
    raises one Interrupted saying what was released

:data:`STOP_SIGNAL` is SIGURG, whose default action is to be ignored: a pool
process that is not running a worker loop (its loop ended, or it never got
one) is unaffected, so the request never breaks the pool. A worker already
interrupted (Ctrl-C in a terminal reaches every process of its group, and so
does SIGHUP when the terminal closes; a scheduler's SIGTERM may too) ignores
later SIGTERM, SIGHUP and STOP_SIGNAL copies, so
they cannot cut its release short; a second SIGINT still stops it at once (a
script is then killed without its grace). A pool process running no loop
(its loop already stopped) ignores SIGINT (:func:`pool_handlers`): its death
would break the pool under the loops still stopping. An interruption that lands while a
worker stores a result waits for the write (:func:`deferred`), and a worker
that stops gives back every reservation of its own it finds stored, so one
made as the interruption came is not held until its lease runs out.

:func:`interruptible` installs these rules in the main thread only, over
Python's default handlers only (a handler of the user's own is left alone),
and restores the previous handlers when its block ends. Python drops an
exception raised in a finalizer (``__del__``) or an at-fork hook, where a
handler may happen to run (a worker starting a script as the signal came): an
:class:`Interrupted` dropped there is delivered again (``sys.unraisablehook``),
else the worker would run on, ignoring every later copy. No signal reaches
workers running as threads of the caller (``executor="thread"``): they are
told by a request instead (:mod:`orchard.executors.threads`), which reaches
the threads of an in-process Dask ``LocalCluster`` too. Loops on Dask workers in
other processes that outlive ``workon`` (a cluster of the caller's own, a remote
scheduler's) are told by a Dask event (:mod:`orchard.executors.remote`). Ctrl-Z is not an interruption: :func:`interruptible`
also pauses the evaluations' process groups with the worker (:mod:`orchard.suspension`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from types import FrameType
from typing import Any

from orchard import suspension
from orchard.errors import Interrupted

__all__ = ["STOP_SIGNAL", "STOP_TIMEOUT", "default_handlers", "deferred", "interrupt_main", "interruptible",
           "pool_handlers", "raise_swallowed", "stop_workers"]

#: What the process that called ``workon`` sends its pool processes to stop their loops (POSIX only).
STOP_SIGNAL: signal.Signals | None = getattr(signal, "SIGURG", None)
#: Seconds to wait for interrupted workers to stop their evaluations and release their trials.
STOP_TIMEOUT = 30.0
#: Seconds between two stop requests while waiting (a worker already stopping ignores the copies).
_REPEAT = 0.5
#: Seconds after which an interruption Python dropped is sent again.
_REDELIVER = 0.01
#: The signals an :func:`interruptible` block of the main thread handles now (default in a forked child;
#: :func:`interrupt_main` works while :data:`STOP_SIGNAL` is one of them).
_handled: tuple[signal.Signals, ...] = ()
#: How many :func:`deferred` blocks the main thread is in, and the interruption they hold back.
_deferring = 0
_pending: Interrupted | None = None
#: The interruption the main thread's handling :func:`interruptible` block raised, until the block ends.
_raised: Interrupted | None = None


def _defaults() -> dict[signal.Signals, Any]:
    """The signals that interrupt a worker, with the handler each has when nobody changed it."""
    defaults: dict[signal.Signals, Any] = {signal.SIGINT: signal.default_int_handler,
                                           signal.SIGTERM: signal.SIG_DFL}
    if hasattr(signal, "SIGHUP"):  # its terminal closed: the shell sends it to every process of the job
        defaults[signal.SIGHUP] = signal.SIG_DFL
    if STOP_SIGNAL is not None:
        defaults[STOP_SIGNAL] = signal.SIG_DFL
    return defaults


def _between_loops(signum: int, frame: FrameType | None) -> None:
    """SIGINT to a pool's process that runs no worker loop now: ignored (see :func:`pool_handlers`)."""


def pool_handlers() -> None:
    """In a pool's process (``process``, ``joblib``): :func:`default_handlers`, but SIGINT ignored between loops.

    Ctrl-C reaches every process of the terminal's group. A pool process whose loop had
    already stopped for the first Ctrl-C died of the second one in the pool's own code, and a
    dead process breaks the standard library's pool: the reports of the loops still stopping
    were thrown away ("1 of 1 running trial(s) released" for 2), and the pool's SIGTERM to
    them came while they ignored copies, so one of them blocked for ever on a queue lock
    its killed neighbour held, and ``workon`` with it. The caller stops its pool's loops
    (:func:`stop_workers`) and then the pool; a loop handles SIGINT itself
    (:func:`interruptible` replaces this handler, and puts it back when the loop ends). A
    Python handler, not ``SIG_IGN``, which a script started with ``exec`` would inherit.
    """
    default_handlers()
    signal.signal(signal.SIGINT, _between_loops)


def default_handlers() -> None:
    """Give the signals that interrupt a worker Python's default handlers again.

    For a process forked inside an :func:`interruptible` block (a timed child, a
    ``process`` pool's worker): it inherits that block's handlers, whose state is
    its parent's (an interruption already handled there is ignored here for ever).
    """
    for signum, handler in _defaults().items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM, SIGHUP and :data:`STOP_SIGNAL` raise :class:`Interrupted`.

    The first of them raises (``terminated`` for SIGTERM); after it, SIGTERM, SIGHUP
    and STOP_SIGNAL are ignored and SIGINT raises again. Outside the main thread, and
    for a signal whose handler is not Python's default, nothing changes. Nested
    blocks keep the outer block's handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False
    raised: dict[int, int] = {}  # id of the Interrupted raised -> the signal that raised it

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        global _pending, _raised
        if interrupted and signum != signal.SIGINT:
            return  # a copy of an interruption already being handled
        interruption = _raised = Interrupted(terminated=signum == signal.SIGTERM)
        if _deferring and _pending is None:
            interrupted, _pending = True, interruption  # raised when the deferred block ends
            return
        interrupted = True
        raised.clear()
        raised[id(interruption)] = signum
        raise interruption

    def on_unraisable(unraisable: Any) -> None:
        """An Interrupted raised in a finalizer or an at-fork hook is dropped there: deliver it again."""
        nonlocal interrupted
        global _raised
        dropped = unraisable.exc_value
        signum = raised.pop(id(dropped), None) if isinstance(dropped, Interrupted) else None
        if signum is None:
            unraisable_before(unraisable)
            return
        interrupted, _raised = False, None  # it never reached the code it was raised for
        # sent again from another thread once this hook has returned (a signal sent from here would be
        # handled in this hook, and dropped again): handled where the program goes on
        threading.Timer(_REDELIVER, os.kill, (os.getpid(), signum)).start()

    global _handled, _raised
    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for signum, default in _defaults().items():
        if signal.getsignal(signum) in (default, _between_loops):
            previous[signum] = signal.signal(signum, on_signal)
    outer, _handled = _handled, (*_handled, *previous)
    raised_before = _raised
    unraisable_before = sys.unraisablehook
    if previous:
        sys.unraisablehook = on_unraisable
    try:
        with suspension.handled():  # Ctrl-Z pauses the evaluations with the worker
            yield
    finally:
        if previous:
            sys.unraisablehook = unraisable_before
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _handled = outer
        if previous:
            _raised = raised_before


def raise_swallowed(last: str | None = None) -> None:
    """Between two trials of a loop in the main thread: raise again an interruption the objective caught.

    An objective that catches ``KeyboardInterrupt`` to save its state and return early
    (``except KeyboardInterrupt: break``) returns a result, which is recorded; without this
    the loop would go on to the next trial as if nothing had happened, deaf to the copies
    of the interruption that come after (they are ignored while one is handled), and
    ``workon`` would run its whole budget.

    Args:
        last: the id of the trial the loop ran last, whose objective caught it: its result was recorded
            (``None``: no trial ran yet), as the error says.

    Raises:
        Interrupted: the main thread's :func:`interruptible` block raised one already.
    """
    if _raised is not None and threading.current_thread() is threading.main_thread():
        raise Interrupted(terminated=_raised.terminated, caught=() if last is None else [last])


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While the block runs, an interruption waits for its end, then is raised.

    For steps that must not be cut in two: a result being stored is stored, a
    reservation being made is known to the worker that made it. Only the
    interruption an :func:`interruptible` block of the main thread would raise
    is deferred (a second SIGINT still raises at once); outside the main
    thread, nothing changes.

    Raises:
        Interrupted: an interruption arrived while the block ran.
    """
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        pending, _pending = (_pending, None) if not _deferring else (None, _pending)
        if pending is not None:
            raise pending


def _forked() -> None:
    """In a child forked inside a :func:`deferred` block (a pool's worker): nothing is deferred there.

    And one forked inside an :func:`interruptible` block (by the objective: a data loader's worker)
    gets the default handlers back: a SIGTERM ends it as it would at home, not with an
    :class:`Interrupted` raised in code that is no worker's.
    """
    global _deferring, _pending, _handled, _raised
    _deferring, _pending, _raised = 0, None, None
    defaults = _defaults()
    for signum in _handled:
        with contextlib.suppress(ValueError, OSError):  # forked from a thread other than the main one
            signal.signal(signum, defaults[signum])
    _handled = ()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def interrupt_main() -> bool:
    """From another thread: interrupt the main thread as :data:`STOP_SIGNAL` would.

    Only while an :func:`interruptible` block of the main thread handles
    STOP_SIGNAL: :class:`Interrupted` is then raised there (waking a blocking
    wait), and the workers of that block are stopped as for Ctrl-C.

    Returns:
        Whether the main thread was interrupted (``False``: nothing was done).
    """
    main = threading.main_thread()
    if STOP_SIGNAL is None or STOP_SIGNAL not in _handled or main.ident is None:
        return False
    signal.pthread_kill(main.ident, STOP_SIGNAL)
    return True


def stop_workers(interruption: KeyboardInterrupt, futures: Sequence[Future[Any]],
                 timeout: float = STOP_TIMEOUT) -> Interrupted:
    """Pass an interruption of this process on to its local worker processes; wait for their reports.

    Args:
        interruption: what interrupted this process (an :class:`Interrupted` from
            :func:`interruptible` or from a worker loop run in this thread, or a plain
            ``KeyboardInterrupt``).
        futures: the worker loops submitted to the executor.
        timeout: seconds to wait for them to stop.

    Returns:
        The interruption to raise: what every stopped worker released, and how many
        did not stop in time. Loops not started yet are cancelled.
    """
    first = Interrupted.of(interruption)
    for future in futures:
        future.cancel()  # a loop that has not started yet never will
    deadline = time.monotonic() + timeout
    while True:
        _request_stop()  # again each round: a loop that was starting may have missed the last request
        done, running = concurrent.futures.wait(futures, max(min(_REPEAT, deadline - time.monotonic()), 0.0))
        if not running or time.monotonic() >= deadline:
            break
    reports = [future.exception() for future in done if not future.cancelled()]
    return first.joined(reports, unstopped=len(running))


def _request_stop() -> None:
    """Send :data:`STOP_SIGNAL` to every child process (those not running a loop ignore it)."""
    if STOP_SIGNAL is None:
        return
    for child in multiprocessing.active_children():
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child.pid, STOP_SIGNAL)
