"""Child-process isolation: an evaluation in a process group of its own, watched and stopped.

Both ways Orchard evaluates under a limit use this module: a Python objective
in a forked child (:class:`ForkedCall`, for ``workon``'s ``trial_timeout`` and
``trial_memory_limit``) and a script's process group
(:class:`orchard.runner.ScriptRunner`, for ``orchard hunt``). What they share:

* :class:`LimitWatch`: a time limit and a memory limit on one process tree
  (its *resident* memory, every process of the tree summed, sampled every
  :data:`SAMPLE_INTERVAL` seconds, so address space mapped but never touched,
  such as a GPU's, does not count);
* :class:`GroupWatch`: a daemon thread enforcing a :class:`LimitWatch` on a
  process group started elsewhere (a script);
* stopping: :func:`kill_tree` (SIGKILL to the group and every descendant at
  once: a memory limit, a lost reservation), :func:`stop_group` (SIGTERM, then
  SIGKILL after a grace period: a script's timeout, an interruption), and
  :func:`hold_group` (SIGSTOP / SIGCONT while a lease is in doubt); given a
  script's run token, both also reach the processes that left its group and its
  tree but carry its mark (:mod:`orchard.strays`).

A forked call sends its value back as one length-prefixed frame::

    worker ──fork──> child: setpgid, PR_SET_PDEATHSIG, wait until followed, job(), write frame, _exit
      └─ reads the frame as soon as it is whole (not at end-of-file: a process the
         job left running may hold the pipe), watches the limits; kills the whole
         group on return, limit, cancellation or KeyboardInterrupt

This module knows processes, not objectives: a call's value comes back as it
is, and why it produced none as a :class:`Stopped`. POSIX only, except
:func:`call_spawned`, the fallback where ``os.fork`` does not exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import pickle
import select
import signal
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from orchard.clock import SYSTEM_CLOCK
from orchard.interruption import default_handlers, deferred
from orchard.resources import format_bytes, no_room
from orchard.strays import RUN_ENV, signal_group, signal_marked
from orchard.suspension import StartGate, following, paused_seconds

__all__ = [
    "SAMPLE_INTERVAL",
    "ForkedCall",
    "GroupWatch",
    "LimitWatch",
    "MemoryWatch",
    "Stopped",
    "call_spawned",
    "death_hook",
    "die_with_parent",
    "hold_group",
    "kill_tree",
    "signal_group",
    "stop_group",
]

#: Seconds between two samples of an evaluation's resident memory.
SAMPLE_INTERVAL = 0.1
#: Seconds between checks that a forked child is still alive, when nothing else wakes the reader.
_EXIT_CHECK = 0.5
_FRAME_HEADER = struct.Struct(">Q")


@dataclasses.dataclass(frozen=True)
class Stopped:
    """Why a watched evaluation produced no value.

    Attributes:
        reason: ``"timeout"``, ``"memory"``, ``"cancelled"`` (its owner lost the
            trial) or ``"crashed"`` (it died without sending a value).
        how: for ``crashed``, how the process ended (``"signal SIGSEGV"``, ``"exit code 3"``).
        peak_memory: for ``memory``, the peak resident memory seen, in bytes.
        memory_limit: for ``memory``, the limit it passed, in bytes.
    """

    reason: str
    how: str = ""
    peak_memory: int = 0
    memory_limit: int = 0

    def memory_failure(self, what: str) -> tuple[str, dict[str, Any]]:
        """The message and error fields of an evaluation killed for its memory (``what`` used ...)."""
        message = (f"{what} used {format_bytes(self.peak_memory)} of resident memory, more than "
                   f"trial_memory_limit={format_bytes(self.memory_limit)}, and was killed")
        return message, {"reason": "memory", "peak_memory": self.peak_memory, "memory_limit": self.memory_limit}


# -- watching -----------------------------------------------------------------------


class MemoryWatch:
    """Samples the resident memory of a process and all its descendants.

    Args:
        pid: the root of the process tree (an evaluation's child or script).
        limit: bytes; :meth:`sample` reports when the tree's total passes it.
    """

    def __init__(self, pid: int, limit: int) -> None:
        import psutil

        self.limit = limit
        self.peak = 0
        self._root = psutil.Process(pid)

    def sample(self) -> bool:
        """Measure the tree once, keep the peak; return whether the limit is passed."""
        import psutil

        total = 0
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:  # the root is gone: nothing left to measure
            return False
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # exited between the listing and the reading
                continue
        self.peak = max(self.peak, total)
        return total > self.limit


class LimitWatch:
    """A time limit and a memory limit on one process tree, checked when asked.

    Args:
        pid: the root of the tree.
        timeout: seconds from now (``None``: no time limit).
        memory_limit: bytes of resident memory of the whole tree (``None``: no limit).
    """

    def __init__(self, pid: int, timeout: float | None, memory_limit: int | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._paused = paused_seconds()  # time this process then spends stopped (Ctrl-Z) moves the deadline
        self.memory: MemoryWatch | None = None
        if memory_limit is not None:
            with contextlib.suppress(Exception):  # psutil: a script may have exited already
                self.memory = MemoryWatch(pid, memory_limit)

    @property
    def active(self) -> bool:
        """Whether there is any limit to watch."""
        return self.deadline is not None or self.memory is not None

    def wait(self, longest: float) -> float:
        """Seconds until the next :meth:`check` is due, at most ``longest``."""
        wait = SAMPLE_INTERVAL if self.memory is not None else longest
        if self.deadline is not None:
            wait = min(wait, self.deadline - self._now())
        return max(wait, 0.0)

    def _now(self) -> float:
        """The monotonic clock, less the seconds this process was stopped since the watch began."""
        return time.monotonic() - (paused_seconds() - self._paused)

    def check(self) -> Stopped | None:
        """Sample the tree's memory and read the clock; return the limit passed, if any."""
        if self.memory is not None and self.memory.sample():
            return Stopped("memory", peak_memory=self.memory.peak, memory_limit=self.memory.limit)
        if self.deadline is not None and self._now() >= self.deadline:
            return Stopped("timeout")
        return None


class GroupWatch:
    """Enforces a :class:`LimitWatch` on a running process group, from a daemon thread.

    Past the memory limit the group is killed at once; past the time limit it is
    stopped with :func:`stop_group` (SIGTERM, then SIGKILL after ``grace``).
    :attr:`stopped` then says which. Call :meth:`stop` once the group's leader has exited.

    Args:
        pid: the group's leader (its pid is the group's id).
        timeout: seconds from now.
        memory_limit: bytes of resident memory of the whole tree.
        grace: seconds between SIGTERM and SIGKILL on a timeout.
        run: the run token its processes carry (:mod:`orchard.strays`), stopped with the group.
    """

    def __init__(self, pid: int, timeout: float | None, memory_limit: int | None, grace: float,
                 run: str | None = None) -> None:
        self.stopped: Stopped | None = None
        self._pid, self._grace, self._run = pid, grace, run
        self._limits = LimitWatch(pid, timeout, memory_limit)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if self._limits.active:
            self._thread = threading.Thread(target=self._watch, name="orchard-trial-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not SYSTEM_CLOCK.wait(self._done, self._limits.wait(longest=3600.0)):
            stopped = self._limits.check()
            if stopped is None:
                continue
            self.stopped = stopped
            if stopped.reason == "memory":
                kill_tree(self._pid, run=self._run)
            else:
                waiting = functools.partial(SYSTEM_CLOCK.wait, self._done)
                stop_group(self._pid, self._grace, waiting, self._run)
            return

    def stop(self) -> None:
        """Stop watching (the leader has exited) and wait for the thread."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()


# -- stopping -----------------------------------------------------------------------


def hold_group(pgid: int, held: bool, run: str | None = None) -> None:
    """Pause (SIGSTOP) or resume (SIGCONT) a whole process group, and the processes of ``run`` out of it.

    A group that is gone is ignored.
    """
    signal_group(pgid, signal.SIGSTOP if held else signal.SIGCONT, run)


def stop_group(pgid: int, grace: float, exited: Callable[[float], object], run: str | None = None) -> None:
    """Stop a process group: SIGTERM, then SIGKILL to whatever is left after ``grace`` seconds.

    Args:
        pgid: the group (its leader's pid).
        grace: seconds the group has to exit after SIGTERM.
        exited: waits up to its argument in seconds for the leader to exit (returns early
            when it has). A ``KeyboardInterrupt`` while it waits (a second Ctrl-C) kills at once.
        run: a run token: the processes carrying it outside the group are stopped too
            (:func:`orchard.strays.marked_processes`).
    """
    signal_group(pgid, signal.SIGTERM, run)
    with contextlib.suppress(KeyboardInterrupt):
        exited(grace)
    signal_group(pgid, signal.SIGKILL, run)


def kill_tree(pid: int, group: bool = True, run: str | None = None) -> None:
    """SIGKILL the process group led by ``pid``, every descendant of ``pid``, and the processes of ``run``.

    Descendants are listed before anything is killed, so those that left the group
    (``setsid``) are found while they are still the tree's.
    """
    try:
        import psutil

        descendants = psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing, the process gone, or refused: the group is still killed
        descendants = []
    if group:
        signal_group(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    for process in descendants:
        with contextlib.suppress(Exception):
            process.kill()
    signal_marked(run, signal.SIGKILL, pid if group else None)


# -- a call in a forked child -------------------------------------------------------


class ForkedCall:
    """``job()`` in a bare ``os.fork`` child, in a process group of its own.

    ``os.fork`` needs no pickling of ``job`` and works inside daemonic processes such
    as Dask workers, where multiprocessing refuses children. The child sends one
    length-prefixed frame (``job``'s pickled value) and exits, so the value is read as
    soon as ``job`` returns, even if it left processes running that inherited the pipe.
    ``job`` should not raise: a child that sends no frame is reported ``crashed``. On
    Linux the child dies with the worker (``PR_SET_PDEATHSIG``). The programs it runs carry
    its run token (:mod:`orchard.strays`): one that left its group ends with it too.
    """

    def __init__(self, job: Callable[[], Any]) -> None:
        _prctl()  # looked up before the fork: the child imports nothing to die with the worker
        pid, self.run = 0, os.urandom(6).hex()  # the token of the programs it runs (orchard.strays)
        fds: list[int] = []
        try:
            fds.extend(os.pipe())
            self._gate = StartGate()  # the job starts once result() follows the child: a Ctrl-Z before pauses it
        except OSError as err:
            for fd in fds:
                os.close(fd)
            raise no_room(err) from None
        read_fd, write_fd = fds
        try:
            with deferred():  # an interruption handled in fork's at-fork hooks would be dropped there
                pid = os.fork()
                if pid == 0:
                    _child_main(job, read_fd, write_fd, self.run, self._gate)
        except BaseException as err:  # interrupted as the child started (or no fork): it has done nothing
            if pid:
                kill_tree(pid)
                os.waitpid(pid, 0)
            os.close(read_fd)
            os.close(write_fd)
            self._gate.close()
            if isinstance(err, OSError):
                raise no_room(err) from None
            raise
        os.close(write_fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        self.pid, self._fd = pid, read_fd
        self._buffer = bytearray()
        self._cancelled = False

    def cancel(self) -> None:
        """Kill the call's process group now; :meth:`result` then reports it ``cancelled``."""
        self._cancelled = True
        kill_tree(self.pid, run=self.run)

    def result(self, timeout: float | None, memory_limit: int | None) -> object:
        """Wait for ``job``'s value, enforcing the limits; the child and its group are gone on return.

        Returns:
            What ``job`` returned, or a :class:`Stopped` saying why there is no value.

        ``KeyboardInterrupt`` (and any other exception) kills the child before it propagates.
        """
        try:
            with following(self.pid, self.run, self._gate):  # Ctrl-Z pauses the child with the worker
                return self._collect(LimitWatch(self.pid, timeout, memory_limit))
        finally:
            self._gate.close()
            kill_tree(self.pid, run=self.run)  # processes the job left running, or the child itself
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            os.close(self._fd)

    def _collect(self, limits: LimitWatch) -> object:
        while True:
            frame = self._frame()
            if frame is not None:
                return pickle.loads(frame)
            if self._cancelled:
                return Stopped("cancelled")
            stopped = limits.check()
            if stopped is not None:
                kill_tree(self.pid, run=self.run)
                return stopped
            if not self._read(limits.wait(_EXIT_CHECK)):
                return self._value_or_crash()

    def _read(self, wait: float) -> bool:
        """Read what arrives within ``wait`` seconds; return False once the child is gone."""
        if select.select([self._fd], [], [], max(wait, 0.0))[0]:
            chunk = os.read(self._fd, 1 << 16)
            self._buffer += chunk
            return bool(chunk)
        return not self._exited()

    def _exited(self) -> bool:
        """Whether the child has exited (it stays a zombie, so its pid cannot be reused yet)."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _frame(self) -> bytes | None:
        if len(self._buffer) < _FRAME_HEADER.size:
            return None
        (size,) = _FRAME_HEADER.unpack_from(self._buffer)
        end = _FRAME_HEADER.size + size
        return bytes(self._buffer[_FRAME_HEADER.size:end]) if len(self._buffer) >= end else None

    def _value_or_crash(self) -> object:
        """The child is gone: read what it left in the pipe; without a whole frame, it crashed."""
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            self._buffer += chunk
        frame = self._frame()
        if frame is not None:
            return pickle.loads(frame)
        return Stopped("cancelled") if self._cancelled else Stopped("crashed", how=self._exit_status())

    def _exit_status(self) -> str:
        """How the child ended, without reaping it (so ``kill_tree`` cannot hit a reused pid)."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return "an unknown status"
        if info is not None and info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return f"signal {signal.Signals(info.si_status).name}"
        return f"exit code {info.si_status if info is not None else '?'}"


def _child_main(job: Callable[[], Any], read_fd: int, write_fd: int, run: str, gate: StartGate) -> None:
    """The forked child: run the job, send one frame, leave without cleanup (never returns)."""
    try:
        os.environ[RUN_ENV] = run  # what the programs it runs inherit (a process it forks keeps the worker's)
        os.close(read_fd)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        die_with_parent()
        default_handlers()  # the worker's, inherited through fork: the child is stopped by its parent
        if not gate.wait():  # until its worker follows it (a Ctrl-Z meanwhile stopped the worker only)
            return
        payload = pickle.dumps(job())
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(_FRAME_HEADER.pack(len(payload)) + payload)
    finally:
        os._exit(0)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that forked it dies (no-op elsewhere).

    Kept across ``exec``: a script started with :func:`death_hook` as ``preexec_fn`` dies with its worker.
    """
    prctl = _prctl()
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def death_hook() -> Callable[[], None] | None:
    """:func:`die_with_parent` for ``subprocess.Popen(preexec_fn=...)``, or ``None`` where it does nothing.

    Its C function is looked up here, in the parent: between ``fork`` and ``exec``
    the child then runs no import and no ``dlopen``, either of which could wait
    for ever on a lock another thread of the parent held when it forked.
    """
    return die_with_parent if _prctl() is not None else None


@functools.cache
def _prctl() -> Any:
    """Linux's prctl, looked up once (``None`` where there is none)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# -- the fallback without fork ------------------------------------------------------


def _spawned_child_main(job: Callable[[], Any], conn: Any) -> None:
    conn.send(job())
    conn.close()


def call_spawned(job: Callable[[], Any], timeout: float) -> object:
    """``job()`` in a spawned process, where ``os.fork`` does not exist (``job`` must pickle).

    Returns:
        What ``job`` returned, or a :class:`Stopped` (``timeout`` or ``crashed``).
    """
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_spawned_child_main, args=(job, sender))  # type: ignore[attr-defined]
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            return Stopped("timeout")
        try:
            return receiver.recv()
        except EOFError:
            child.join(5)
            return Stopped("crashed", how=f"exit code {child.exitcode}")
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        receiver.close()
