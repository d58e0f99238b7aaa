"""Evaluating a Python objective: result validation, errors, and per-trial timeouts.

An objective ``fn(**params)`` returns a float, or a mapping with key
``"objective"`` plus any extra metrics. Anything else, an exception, or a
timeout produces an :class:`Outcome` carrying an error record instead, and
the trial is marked broken by the worker.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchard.errors import ConfigurationError
from orchard.space import to_builtin
from orchard.trial import Trial

__all__ = ["Outcome", "TrialEvaluator", "call_objective", "check_objective", "interpret_result"]


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
    """

    @abc.abstractmethod
    def __call__(self, trial: Trial) -> Outcome:
        """Evaluate ``trial``; never raise for a failure of the objective itself."""


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
            "InvalidResult", f"objective must be a number, got {type(value).__name__} {value!r:.80}"
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
    fn: Callable[..., Any], params: Mapping[str, Any], timeout: float | None = None
) -> Outcome:
    """Call ``fn(**params)`` and interpret the result; never raises for objective failures.

    With ``timeout``, the call runs in a child process that is killed when
    the time is up; the outcome is then an error with ``reason="timeout"``.
    ``KeyboardInterrupt`` propagates so the worker can release the trial.
    """
    if timeout is None:
        try:
            return interpret_result(fn(**params))
        except Exception as err:  # the objective's own failure marks the trial broken
            return Outcome.from_exception(err)
    return _call_in_child(fn, dict(params), timeout)


def _evaluate_for_parent(fn: Callable[..., Any], params: dict[str, Any]) -> Outcome:
    try:
        return interpret_result(fn(**params))
    except BaseException as err:  # report everything, including SystemExit, to the parent
        return Outcome.from_exception(err)


def _call_in_child(fn: Callable[..., Any], params: dict[str, Any], timeout: float) -> Outcome:
    """Run the objective in a killable child process.

    On POSIX a bare ``os.fork`` is used (no pickling of ``fn``, and it works inside
    daemonic processes such as Dask workers, where multiprocessing refuses children).
    """
    if not hasattr(os, "fork"):
        return _call_in_spawned_child(fn, params, timeout)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: evaluate, send the pickled outcome, leave without cleanup
        os.close(read_fd)
        try:
            payload = pickle.dumps(_evaluate_for_parent(fn, params))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        payload, finished = _read_until(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
        if not finished:
            _kill(pid)
        _, status = os.waitpid(pid, 0)
    if not finished:
        return _timed_out(timeout)
    if not payload:
        return Outcome.failure(
            "WorkerCrashed", f"the objective's process died with {_describe_status(status)}"
        )
    return pickle.loads(payload)  # type: ignore[no-any-return]


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Read ``fd`` to EOF; return what was read and whether EOF came before ``deadline``."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b"".join(chunks), False
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def _timed_out(timeout: float) -> Outcome:
    return Outcome.failure(
        "TimeoutError", f"objective ran longer than trial_timeout={timeout:g} s and was killed",
        reason="timeout",
    )


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
