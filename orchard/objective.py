"""Evaluating a Python objective: result validation, errors, per-trial time and memory limits.

An objective ``fn(**params)`` returns a float, or a mapping with key
``"objective"`` plus any extra metrics. Anything else, an exception, a
timeout or too much memory produces an :class:`Outcome` carrying an error
record instead, and the trial is marked broken by the worker.

Under a limit the objective runs in a forked child, in a process group of its
own, that sends its outcome back as one length-prefixed frame::

    worker ──fork──> child: setpgid, PR_SET_PDEATHSIG, fn(**params), write frame, _exit
      └─ reads the frame as soon as it is whole (not at end-of-file: a process the
         objective left running may hold the pipe), samples the tree's memory,
         watches the clock; kills the whole group on return, timeout, memory,
         cancellation or KeyboardInterrupt

While it runs, :func:`current_trial` tells the objective which trial it is
evaluating (id, params, the ``parent`` a multi-fidelity promotion came from,
and the working directories of both), so a promoted trial can resume from
its parent's checkpoint.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import pickle
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchard.current import CurrentTrial, current_trial, evaluating
from orchard.errors import ConfigurationError
from orchard.resources import SAMPLE_INTERVAL, MemoryWatch, hold_group, kill_tree
from orchard.space import to_builtin
from orchard.trial import Trial

__all__ = [
    "CurrentTrial",
    "ObjectiveEvaluator",
    "Outcome",
    "TrialEvaluator",
    "call_objective",
    "check_objective",
    "current_trial",
    "evaluating",
    "interpret_result",
]


@dataclasses.dataclass
class Outcome:
    """What one evaluation produced: an objective (and extra results), or an error."""

    objective: float | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the evaluation produced a usable objective."""
        return self.error is None

    @classmethod
    def failure(cls, type_: str, message: str, **details: Any) -> Outcome:
        """An outcome that marks the trial broken with ``type_`` and ``message``."""
        return cls(error={"type": type_, "message": message, **details})

    @classmethod
    def from_exception(cls, err: BaseException) -> Outcome:
        """An outcome for an exception raised by the objective (type, message, traceback tail)."""
        tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
        return cls.failure(type(err).__name__, str(err), traceback=tail[-2000:])


class TrialEvaluator(abc.ABC):
    """An objective that takes the whole reserved trial instead of ``**params``.

    ``workon`` calls it as ``evaluator(trial)``; it returns the :class:`Outcome`
    itself, handles its own timeout, and must let ``KeyboardInterrupt``
    propagate so the worker can release the trial. ``orchard hunt``'s script
    runner is one. It must be picklable to run in worker processes.

    The worker calls :meth:`cancel` from its heartbeat thread, while ``__call__``
    runs, when it finds the trial's reservation lost (another worker owns the
    trial now); the worker drops whatever ``__call__`` then returns.
    """

    @abc.abstractmethod
    def __call__(self, trial: Trial) -> Outcome:
        """Evaluate ``trial``; never raise for a failure of the objective itself."""

    def cancel(self, trial: Trial) -> None:
        """Stop ``trial``'s evaluation at once, if it can be stopped (default: do nothing).

        Called from another thread than ``__call__``; must be idempotent and must not
        raise. ``__call__`` should then return soon (its outcome is dropped).
        """

    def hold(self, trial: Trial, held: bool) -> None:
        """Pause (``held=True``) or resume ``trial``'s evaluation (default: do nothing).

        The worker holds an evaluation while its lease is in doubt (it could not
        heartbeat for longer than the lease: it was frozen, or the storage was
        down), so that a second attempt another worker may have started never
        runs beside it; it resumes it once a heartbeat lands, or cancels it.
        Called from another thread than ``__call__``; must not raise.
        """


def check_objective(fn: object, names: Iterable[str]) -> None:
    """Refuse, before any trial is reserved, an objective that cannot be called as ``fn(**params)``.

    A :class:`TrialEvaluator` takes the whole trial and is not checked further;
    a callable without an inspectable signature is left to the call.

    Args:
        fn: what was given as the objective.
        names: the space's dimension names.

    Raises:
        ConfigurationError: ``fn`` is not callable, or its signature cannot take exactly
            those keyword arguments (a required parameter the space lacks, a dimension it
            does not accept, a positional-only parameter).
    """
    if isinstance(fn, TrialEvaluator):
        return
    if not callable(fn):
        raise ConfigurationError(
            f"the objective {fn!r:.60} ({type(fn).__name__}) is not callable; pass a function "
            "called as fn(**params) that returns a number or a dict with 'objective'"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C extensions have none: the call decides
        return
    names = list(names)
    try:
        signature.bind(**{name: None for name in names})
    except TypeError as err:
        label = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise ConfigurationError(
            f"objective {label}{signature} cannot be called with the space's parameters "
            f"{', '.join(names)}: {err}; make its parameters the space's names (or add **params)"
        ) from None


def interpret_result(value: Any) -> Outcome:
    """Turn what an objective returned into an :class:`Outcome`.

    A finite number is the objective; a mapping must hold a finite numeric
    ``"objective"``, and its other keys become extra results. NaN, infinity,
    strings, ``None``, mappings without ``"objective"`` and extra results that are
    not JSON data (so no storage could hold them) are errors.
    """
    results: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if "objective" not in value:
            return Outcome.failure(
                "InvalidResult", f"result mapping has no 'objective' key (keys: {sorted(map(str, value))})"
            )
        results = {str(k): to_builtin(v) for k, v in value.items() if k != "objective"}
        unstorable = _unstorable(results)
        if unstorable is not None:
            return Outcome.failure("InvalidResult", unstorable, reason="unstorable")
        value = value["objective"]
    value = to_builtin(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Outcome.failure(
            "InvalidResult", f"objective must be a number, got {type(value).__name__} {value!r:.80}; "
            "return a finite number or a dict with a numeric 'objective' (a script's results file: "
            '{"objective": 0.25})'
        )
    if not math.isfinite(value):
        return Outcome.failure("InvalidResult", f"objective is {value!r}; it must be a finite number")
    return Outcome(objective=float(value), results=results)


def _unstorable(results: Mapping[str, Any]) -> str | None:
    """Why ``results`` cannot be stored (every storage and ``db dump`` take JSON data), or ``None``."""
    for key, item in results.items():
        try:
            json.dumps(item)
        except (TypeError, ValueError) as err:
            return (f"result {key!r} cannot be stored: {type(item).__name__} {item!r:.60} is not JSON data "
                    f"({err}); return numbers, strings, lists or dicts")
    return None


def call_objective(
    fn: Callable[..., Any],
    params: Mapping[str, Any],
    timeout: float | None = None,
    memory_limit: int | None = None,
) -> Outcome:
    """Call ``fn(**params)`` and interpret the result; never raises for objective failures.

    With ``timeout`` or ``memory_limit`` (bytes), the call runs in a child process
    (see :class:`ObjectiveEvaluator`) that is killed when the time is up (reason
    ``timeout``) or when its process tree's resident memory passes the limit
    (reason ``memory``). ``KeyboardInterrupt`` kills the child and propagates so
    the worker can release the trial.
    """
    if timeout is None and memory_limit is None:
        try:
            return interpret_result(fn(**params))
        except Exception as err:  # the objective's own failure marks the trial broken
            return Outcome.from_exception(err)
    if not hasattr(os, "fork"):
        if memory_limit is not None:
            raise ConfigurationError("trial_memory_limit needs os.fork (Linux, macOS); drop it on this platform")
        return _call_in_spawned_child(fn, dict(params), timeout)  # type: ignore[arg-type]
    return _ForkedEvaluation(fn, dict(params)).result(timeout, memory_limit)


class ObjectiveEvaluator(TrialEvaluator):
    """Evaluates a Python objective ``fn(**params)`` for each trial ``workon`` reserves.

    Without limits the objective runs in the worker's own thread, and
    :meth:`cancel` cannot stop it (Python offers no safe way to kill a thread):
    the worker drops its result. With ``timeout`` or ``memory_limit`` each
    evaluation runs in a forked child in its own process group, and
    :meth:`cancel` kills that group at once.

    Args:
        fn: the objective.
        timeout: seconds after which the evaluation is killed (reason ``timeout``).
        memory_limit: bytes of resident memory (whole process tree) past which it is
            killed (reason ``memory``).
        working_dir: the folder of per-trial folders :func:`current_trial` reports
            (``None``: no folders).
    """

    def __init__(self, fn: Callable[..., Any], timeout: float | None = None,
                 memory_limit: int | None = None, working_dir: str | None = None) -> None:
        self.fn, self.timeout, self.memory_limit = fn, timeout, memory_limit
        self.working_dir = working_dir
        self._running: dict[str, _ForkedEvaluation] = {}

    def __call__(self, trial: Trial) -> Outcome:
        """Evaluate ``trial``'s params (see :func:`call_objective`) as the :func:`current_trial`."""
        with evaluating(trial, self.working_dir):  # a forked child inherits it
            if (self.timeout is None and self.memory_limit is None) or not hasattr(os, "fork"):
                return call_objective(self.fn, trial.params, self.timeout, self.memory_limit)
            child = _ForkedEvaluation(self.fn, dict(trial.params))
            self._running[trial.id] = child
            try:
                return child.result(self.timeout, self.memory_limit)
            finally:
                self._running.pop(trial.id, None)

    def cancel(self, trial: Trial) -> None:
        """Kill ``trial``'s evaluation child, if it has one (thread-safe; idempotent)."""
        child = self._running.get(trial.id)
        if child is not None:
            child.cancel()

    def hold(self, trial: Trial, held: bool) -> None:
        """Pause or resume ``trial``'s evaluation child, if it has one (an in-thread call cannot be)."""
        child = self._running.get(trial.id)
        if child is not None:
            hold_group(child.pid, held)


def _evaluate_for_parent(fn: Callable[..., Any], params: dict[str, Any]) -> Outcome:
    try:
        return interpret_result(fn(**params))
    except BaseException as err:  # report everything, including SystemExit, to the parent
        return Outcome.from_exception(err)


_FRAME_HEADER = struct.Struct(">Q")
#: Seconds between checks that the child is still alive, when nothing else wakes the reader.
_EXIT_CHECK = 0.5


class _ForkedEvaluation:
    """One evaluation in a bare ``os.fork`` child, in a process group of its own.

    ``os.fork`` needs no pickling of ``fn`` and works inside daemonic processes such
    as Dask workers, where multiprocessing refuses children. The child sends one
    length-prefixed frame and exits, so the result is read as soon as the objective
    returns, even if it left processes running that inherited the pipe. On Linux the
    child dies with the worker (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, fn: Callable[..., Any], params: dict[str, Any]) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child_main(fn, params, read_fd, write_fd)
        os.close(write_fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        self.pid, self._fd = pid, read_fd
        self._buffer = bytearray()
        self._cancelled = False

    def cancel(self) -> None:
        """Kill the evaluation's process group now; :meth:`result` then reports it cancelled."""
        self._cancelled = True
        kill_tree(self.pid)

    def result(self, timeout: float | None, memory_limit: int | None) -> Outcome:
        """Wait for the outcome, enforcing the limits; the child and its group are gone on return.

        ``KeyboardInterrupt`` (and any other exception) kills the child before it propagates.
        """
        try:
            return self._collect(timeout, memory_limit)
        finally:
            kill_tree(self.pid)  # processes the objective left running, or the child itself
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            os.close(self._fd)

    def _collect(self, timeout: float | None, memory_limit: int | None) -> Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = MemoryWatch(self.pid, memory_limit) if memory_limit is not None else None
        while True:
            frame = self._frame()
            if frame is not None:
                return pickle.loads(frame)  # type: ignore[no-any-return]
            if self._cancelled:
                return _cancelled()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                kill_tree(self.pid)
                return _timed_out(timeout)  # type: ignore[arg-type]
            wait = SAMPLE_INTERVAL if watch is not None else _EXIT_CHECK
            if deadline is not None:
                wait = min(wait, deadline - now)
            if not self._read(wait):
                return self._frame_or_crash()
            if watch is not None and self._frame() is None and watch.sample():
                kill_tree(self.pid)
                message, details = watch.failure_details("the objective's process tree")
                return Outcome.failure("MemoryError", message, **details)

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

    def _frame_or_crash(self) -> Outcome:
        """The child is gone: read what it left in the pipe; without a whole frame, it crashed."""
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            self._buffer += chunk
        frame = self._frame()
        if frame is not None:
            return pickle.loads(frame)  # type: ignore[no-any-return]
        if self._cancelled:
            return _cancelled()
        return Outcome.failure("WorkerCrashed", f"the objective's process died with {self._exit_status()}")

    def _exit_status(self) -> str:
        """How the child ended, without reaping it (so ``kill_tree`` cannot hit a reused pid)."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return "an unknown status"
        if info is not None and info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return f"signal {signal.Signals(info.si_status).name}"
        return f"exit code {info.si_status if info is not None else '?'}"


def _child_main(fn: Callable[..., Any], params: dict[str, Any], read_fd: int, write_fd: int) -> None:
    """The forked child: evaluate, send one frame, leave without cleanup (never returns)."""
    try:
        os.close(read_fd)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        _die_with_parent()
        payload = pickle.dumps(_evaluate_for_parent(fn, params))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(_FRAME_HEADER.pack(len(payload)) + payload)
    finally:
        os._exit(0)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that forked it dies (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _timed_out(timeout: float) -> Outcome:
    return Outcome.failure(
        "TimeoutError", f"objective ran longer than trial_timeout={timeout:g} s and was killed",
        reason="timeout",
    )


def _cancelled() -> Outcome:
    return Outcome.failure("Cancelled", "the evaluation was killed because the worker lost its reservation",
                           reason="cancelled")


def _spawned_child_main(fn: Callable[..., Any], params: dict[str, Any], conn: Any) -> None:
    conn.send(_evaluate_for_parent(fn, params))
    conn.close()


def _call_in_spawned_child(fn: Callable[..., Any], params: dict[str, Any], timeout: float) -> Outcome:
    """The fallback where ``os.fork`` does not exist: a spawned process (``fn`` must pickle)."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_spawned_child_main, args=(fn, params, sender))  # type: ignore[attr-defined]
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            return _timed_out(timeout)
        try:
            return receiver.recv()  # type: ignore[no-any-return]
        except EOFError:
            child.join(5)
            return Outcome.failure(
                "WorkerCrashed", f"the objective's process died with exit code {child.exitcode}"
            )
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        receiver.close()
