"""Ctrl-Z pauses a worker's evaluations with it; ``fg``, ``bg`` or SIGCONT resumes them.

A script of ``orchard hunt`` and an objective run under ``trial_timeout`` or
``trial_memory_limit`` run in process groups of their own (:mod:`orchard.isolation`),
so that stopping one reaches its whole tree. The terminal's Ctrl-Z (SIGTSTP) is
sent to the job's group only: the worker stopped while its evaluation trained on,
using the GPU the user had just paused the job to get back.

Within a :func:`handled` block of the main thread (``workon`` and ``hunt`` enter
one through :func:`orchard.interruption.interruptible`), SIGTSTP first pauses
(SIGSTOP) every group registered with :func:`following` in this process, then
stops the process as SIGTSTP's default action would. When the process is
continued (SIGCONT: ``fg``, ``bg``, ``kill -CONT``), the groups it paused are
continued too. A process group the kernel does not stop (an orphaned one, such
as a daemon's) is not stopped, and its evaluations are continued at once.
Seconds spent stopped are not counted against a trial's time limit
(:func:`paused_seconds`). While the worker is stopped it sends no heartbeat: past
its lease, other workers may take its trial back, and the worker learns so when
it resumes, as after any freeze.

Between the start of an evaluation and :func:`following` its group, a Ctrl-Z
found no group to pause: the worker stopped and the evaluation trained on. A
forked child holds its work at a :class:`StartGate` until :func:`following`
opens it; a script, which cannot wait (``Popen`` returns once it runs), is
started within :func:`starting`, where a Ctrl-Z waits until its group is followed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from orchard.strays import signal_group

__all__ = ["StartGate", "following", "handled", "paused_seconds", "starting"]

_SIGTSTP: signal.Signals | None = getattr(signal, "SIGTSTP", None)
_groups: dict[int, str | None] = {}  # process groups of this process's running evaluations, to their runs
_paused = 0.0  # seconds this process has spent stopped by SIGTSTP so far
_handling = False  # whether a handled() block of the main thread is running
_starting = 0  # starting() blocks running: a Ctrl-Z meanwhile is held until they end
_held = False  # whether a Ctrl-Z was held


class StartGate:
    """What a forked evaluation waits at before its work, until its parent follows its group.

    Made before the fork; the child calls :meth:`wait`, the parent passes it to :func:`following`,
    which opens it, and then closes it (:meth:`close` too, where it never followed the child).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def wait(self) -> bool:
        """In the child: wait until the parent opens the gate; False if it closed it without (do no work)."""
        os.close(self._write)
        try:
            return os.read(self._read, 1) == b"g"
        finally:
            os.close(self._read)

    def open(self) -> None:
        """In the parent: let the child start (a child gone is ignored)."""
        if self._write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._write, b"g")
        self.close()

    def close(self) -> None:
        """In the parent: let go of the gate (idempotent); a child still waiting then gives up."""
        for fd in (self._read, self._write):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read = self._write = -1


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """While the block starts an evaluation and follows its group, a Ctrl-Z is held until the block ends.

    The handler is armed before the evaluation starts; a Ctrl-Z it got meanwhile is sent again at the end,
    when it pauses the group followed since (a Ctrl-Z before would have stopped the worker only). In the
    main thread only, where the handler runs (elsewhere, nothing changes).
    """
    global _starting, _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _starting += 1
    _arm()
    try:
        yield
    finally:
        _starting -= 1
        _arm()
        if _held and not _starting and _SIGTSTP is not None:
            _held = False
            os.kill(os.getpid(), _SIGTSTP)


@contextlib.contextmanager
def following(pgid: int, run: str | None = None, gate: StartGate | None = None) -> Iterator[None]:
    """While the block runs, the process group ``pgid`` is paused and resumed with this process.

    So are the processes that left the group but carry its ``run`` token (:mod:`orchard.strays`).
    ``gate``, the group's leader waits at, is opened once the group is followed.
    """
    _groups[pgid] = run
    _arm()
    if gate is not None:
        gate.open()
    try:
        yield
    finally:
        _groups.pop(pgid, None)
        _arm()


def paused_seconds() -> float:
    """Seconds this process has spent stopped by SIGTSTP since it started (a time limit subtracts them)."""
    return _paused


def _signal_groups(groups: dict[int, str | None], sig: signal.Signals) -> None:
    for pgid, run in groups.items():
        signal_group(pgid, sig, run)


def _on_stop(signum: int, frame: FrameType | None) -> None:
    """SIGTSTP: pause the evaluations' groups, stop here as the default action would, resume them on SIGCONT."""
    global _paused, _held
    assert _SIGTSTP is not None
    if _starting:  # an evaluation is starting: stopped once its group is followed (starting())
        _held = True
        return
    groups = dict(_groups)
    _signal_groups(groups, signal.SIGSTOP)  # SIGSTOP: their groups are not a terminal's, SIGTSTP would be dropped
    stopped = time.monotonic()
    signal.signal(_SIGTSTP, signal.SIG_DFL)
    try:
        os.kill(os.getpid(), _SIGTSTP)  # the process stops before this returns, until SIGCONT
    finally:
        _arm()
        _paused += time.monotonic() - stopped
        _signal_groups(groups, signal.SIGCONT)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """While the block runs, SIGTSTP pauses the evaluations with this process (see the module docstring).

    Only in the main thread, and only over SIGTSTP's default handler (a handler of the
    user's own, or ``SIG_IGN`` under launchers that ignore it, is left alone). The handler is
    installed only while an evaluation's group runs: otherwise Ctrl-Z stops the process at
    once, as before, even inside a long call into C that would delay a Python handler.
    """
    global _handling
    if _SIGTSTP is None or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(_SIGTSTP) != signal.SIG_DFL or _handling:
        yield
        return
    _handling = True
    try:
        yield
    finally:
        _handling = False
        _arm()


def _arm() -> None:
    """Install the SIGTSTP handler while a :func:`handled` block has running groups; the default otherwise."""
    if _SIGTSTP is None or not _handling or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(_SIGTSTP, _on_stop if _groups or _starting else signal.SIG_DFL)


def _forked() -> None:
    """In a forked child: the parent's evaluations are not the child's to pause."""
    global _handling, _starting, _held
    _groups.clear()
    _handling, _starting, _held = False, 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
