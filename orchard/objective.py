"""Evaluating a Python objective: result validation, errors, per-trial time and memory limits.

An objective ``fn(**params)`` returns a float, or a mapping with key
``"objective"`` plus any extra metrics. Anything else, an exception, a
timeout or too much memory produces an :class:`Outcome` carrying an error
record instead, and the trial is marked broken by the worker.

Under a limit (``trial_timeout``, ``trial_memory_limit``) the objective runs
in a forked child in a process group of its own (:mod:`orchard.isolation`),
which is killed past the limit or when the worker loses the trial.

While it runs, :func:`current_trial` tells the objective which trial it is
evaluating (id, params, the ``parent`` a multi-fidelity promotion came from,
and the working directories of both), so a promoted trial can resume from
its parent's checkpoint.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from orchard.constraints import reported_problem
from orchard.current import CurrentTrial, current_trial, evaluating
from orchard.errors import ConfigurationError, Interrupted
from orchard.forks import own_process
from orchard.isolation import ForkedCall, Stopped, call_spawned, hold_group, kill_tree
from orchard.report import TrialPruned, listed, plain, reporting_to, shown
from orchard.resources import format_bytes, no_room
from orchard.space import to_builtin
from orchard.storages.values import int_fits
from orchard.trial import MAX_DEPTH, Trial, finite_float, finite_number
from orchard.verdicts import ReportFollower, current_judge

__all__ = [
    "MAX_RESULTS_BYTES",
    "MAX_RESULT_DEPTH",
    "CurrentTrial",
    "ObjectiveEvaluator",
    "Outcome",
    "Told",
    "TrialEvaluator",
    "call_objective",
    "check_objective",
    "current_trial",
    "evaluating",
    "interpret_result",
    "unstorable",
]


#: Characters of an exception's message kept in a broken trial's error (the traceback tail is kept too).
_MESSAGE_LIMIT = 10_000
#: What ``observe(trial, result)`` takes (see :meth:`Outcome.told`).
Told: TypeAlias = "float | Mapping[str, Any] | BaseException | type[BaseException]"
#: How deep lists and dicts in results may nest: what every storage holds.
MAX_RESULT_DEPTH = MAX_DEPTH
#: How large a trial's results may be, as JSON: every worker reads every trial's results, and
#: MongoDB refuses a document over 16 MB (a list of small ints takes 4-5 times its JSON size in BSON).
MAX_RESULTS_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass
class Outcome:
    """What one evaluation produced: an objective (and extra results), or an error."""

    objective: float | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: dict[str, Any] | None = None
    #: Why the trial was pruned (a pruner's verdict as a dict), when it was.
    pruned: dict[str, Any] | None = None
    #: What a result that was not a mapping was (``"list [0.1, 0.2]"``), for messages; never stored.
    returned: str | None = None
    #: What the result gave as its objective (in a 1-tuple): the value returned whole, or a mapping's
    #: ``"objective"``, a metric like any other in an experiment whose declared objectives, read by name,
    #: do not include that name (:mod:`orchard.named_results`).
    given: tuple[Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the evaluation produced a usable objective."""
        return self.error is None and self.pruned is None

    @classmethod
    def of(cls, value: Any) -> Outcome:
        """``value`` if it is an outcome, else what an objective returning it produced (:func:`interpret_result`)."""
        return value if isinstance(value, Outcome) else interpret_result(value)

    @classmethod
    def pruned_by(cls, verdict: Mapping[str, Any]) -> Outcome:
        """An outcome that ends the trial ``pruned``, for ``verdict``."""
        return cls(pruned=dict(verdict))

    @classmethod
    def pruned_by_objective(cls) -> Outcome:
        """The objective raised :class:`~orchard.report.TrialPruned` without a pruner's verdict."""
        return cls(pruned={"pruner": "objective", "reason": "the objective raised TrialPruned", "prune": True})

    @classmethod
    def told(cls, result: Any) -> Outcome:
        """What ``observe(trial, result)`` records: a number or a mapping as an objective's return; an
        exception, or its class (``observe(trial, optuna.TrialPruned)``, as ``raise`` takes it), as if the
        objective raised it."""
        if isinstance(result, type) and issubclass(result, BaseException):
            return cls.pruned_by_objective() if is_prune_signal(result) else cls.failure(result.__name__, "")
        return cls.from_exception(result) if isinstance(result, BaseException) else interpret_result(result)

    @classmethod
    def failure(cls, type_: str, message: str, **details: Any) -> Outcome:
        """An outcome that marks the trial broken with ``type_`` and ``message``."""
        return cls(error={"type": type_, "message": message, **details})

    @classmethod
    def from_exception(cls, err: BaseException) -> Outcome:
        """An outcome for an exception raised by the objective (type, message, traceback tail).

        Never raises: an exception whose ``__str__`` fails is described by its type. Optuna's
        ``TrialPruned`` (an objective ported from Optuna) prunes the trial as Orchard's does: it broke
        the trial with the message "TrialPruned: ", and three of them stopped the experiment.
        """
        if is_prune_signal(err):
            return cls.pruned_by_objective()
        tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
        try:
            message = str(err)
        except Exception as broken:  # noqa: BLE001 -- the user's __str__ must not cost the trial
            message = f"<str() of the exception raised {type(broken).__name__}>"
        return cls.failure(type(err).__name__, message[:_MESSAGE_LIMIT], traceback=tail[-2000:])


def is_prune_signal(err: BaseException | type[BaseException]) -> bool:
    """Whether ``err`` (or an exception of that class) asks to prune its trial: Orchard's ``TrialPruned`` or
    Optuna's (known by name, so Optuna need not be imported)."""
    kind = err if isinstance(err, type) else type(err)
    return issubclass(kind, TrialPruned) or any(
        c.__name__ == "TrialPruned" and c.__module__.partition(".")[0] == "optuna" for c in kind.__mro__)


class TrialEvaluator(abc.ABC):
    """An objective that takes the whole reserved trial instead of ``**params``.

    ``workon`` calls it as ``evaluator(trial)``; it returns the :class:`Outcome`
    itself, handles its own timeout, and must let ``KeyboardInterrupt``
    propagate so the worker can release the trial. ``orchard hunt``'s script
    runner is one. It must be picklable to run in worker processes.

    The worker calls :meth:`cancel` from its heartbeat thread, while ``__call__``
    runs, when it finds the trial's reservation lost (another worker owns the
    trial now); the worker drops whatever ``__call__`` then returns, and says
    whether the evaluation could be stopped.
    """

    @abc.abstractmethod
    def __call__(self, trial: Trial) -> Outcome:
        """Evaluate ``trial``; never raise for a failure of the objective itself."""

    def cancel(self, trial: Trial) -> bool | None:
        """Stop ``trial``'s evaluation at once, if it can be stopped (default: it cannot).

        Called from another thread than ``__call__``; must be idempotent and must not
        raise. ``__call__`` should then return soon (its outcome is dropped).

        Returns:
            False when the evaluation cannot be stopped (it runs to its end; the worker
            says so); anything else (``True``, or ``None`` from an evaluator written
            before this answer existed) means it is being stopped.
        """
        return False

    def hold(self, trial: Trial, held: bool) -> bool | None:
        """Pause (``held=True``) or resume ``trial``'s evaluation (default: it cannot be).

        The worker holds an evaluation while its lease is in doubt (it could not
        heartbeat for longer than the lease: it was frozen, or the storage was
        down), so that a second attempt another worker may have started never
        runs beside it; it resumes it once a heartbeat lands, or cancels it.
        Called from another thread than ``__call__``; must not raise.

        Returns:
            False when the evaluation cannot be paused (the worker's log then says so);
            anything else means it was.
        """
        return False


def check_objective(fn: object, names: Iterable[str]) -> None:
    """Refuse, before any trial is reserved, an objective that cannot be called as ``fn(**params)``.

    A :class:`TrialEvaluator` takes the whole trial and is not checked further;
    a callable without an inspectable signature is left to the call.

    Args:
        fn: what was given as the objective.
        names: the space's dimension names.

    Raises:
        ConfigurationError: ``fn`` is not callable, is an async or generator function (its
            call gives no value), or its signature cannot take exactly those keyword arguments
            (a required parameter the space lacks, a dimension it does not accept, a
            positional-only parameter).
    """
    if isinstance(fn, TrialEvaluator):
        return
    if not callable(fn):
        raise ConfigurationError(
            f"the objective {fn!r:.60} ({type(fn).__name__}) is not callable; pass a function "
            "called as fn(**params) that returns a number or a dict with 'objective'"
        )
    label = getattr(fn, "__qualname__", None) or type(fn).__name__
    calls = (fn, getattr(type(fn), "__call__", None))  # an instance's own async __call__ too
    if any(inspect.iscoroutinefunction(c) or inspect.isasyncgenfunction(c) or inspect.isgeneratorfunction(c)
           for c in calls):
        raise ConfigurationError(
            f"the objective {label} is an async or generator function: calling it gives a coroutine or a "
            "generator, never a value; pass a plain function that returns the value (an async one "
            "wrapped: lambda **params: asyncio.run(fn(**params)))")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C extensions have none: the call decides
        return
    names = list(names)
    try:
        signature.bind(**{name: None for name in names})
    except TypeError as err:
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
    original = value
    given = None
    if isinstance(value, Mapping):
        try:
            results = {str(k): to_builtin(listed(v)) for k, v in value.items() if k != "objective"}
            given = (to_builtin(listed(value["objective"])),) if "objective" in value else None
        except RecursionError:  # a result that holds itself, or lists thousands deep
            return Outcome.failure("InvalidResult", "the results cannot be stored: they are nested more than "
                                   f"{MAX_RESULT_DEPTH} deep (or hold themselves); {_STORABLE}",
                                   reason="unstorable")
        why = unstorable(results)
        if why is not None:
            return Outcome.failure("InvalidResult", why, reason="unstorable")
        unreadable = reported_problem(results)
        if unreadable is not None:
            return Outcome.failure("InvalidResult", unreadable, reason="constraints")
        if "objective" not in value:  # the metrics are kept: several objectives are read from them
            failure = Outcome.failure(
                "InvalidResult", f"result mapping has no 'objective' key (keys: {sorted(map(str, value))})",
                reason="no-objective")
            failure.results = results
            return failure
        value = value["objective"]
    # Optuna's form: a sequence of the objectives' values in order, so one value for one objective (a 1-value
    # array already is its number); a 1-value tuple or list was refused, where Optuna and np.array([x]) pass
    one = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
    raw, value = value, to_builtin(plain(one))  # the 0-d array or tensor orchard.report() takes too
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        sequence = isinstance(raw, (tuple, list))
        several = sequence and len(raw) > 1 and all(finite_number(v) is not None for v in to_builtin(raw))
        got = f"{type(raw).__name__} {shown(raw if sequence else value)}"
        hint = ("; for several objectives, declare them (build_experiment(..., objectives={'a': 'min', 'b': "
                "'max'})) and return them in that order, or each by name" if several
                else "; return the number, not its text" if isinstance(value, str) else "")
        outcome = Outcome.failure(
            "InvalidResult", f"objective must be a number, got {got}; return a finite number or a dict with "
            "a numeric 'objective' (a script's results file: {\"objective\": 0.25})" + hint)
    else:
        number = finite_float(value)
        outcome = (Outcome(objective=number, results=results) if number is not None else Outcome.failure(
            "InvalidResult", f"objective is {shown(value)}; it must be a finite number"))
    if isinstance(original, Mapping):  # kept, failed or not: with_objectives may read the objectives by name
        outcome.results, outcome.given = results, given
    else:
        with contextlib.suppress(RecursionError):  # a list thousands deep: said as returned, not kept
            outcome.given = (to_builtin(listed(original)),)
        alone = isinstance(value, (int, float)) and one is raw
        number_or_not = value if alone else original  # np.float32(0.5) shown as 0.5
        outcome.returned = f"{type(original).__name__} {shown(number_or_not)}"
    return outcome


def unstorable(results: Mapping[str, Any]) -> str | None:
    """Why ``results`` cannot be stored, or ``None``.

    Every storage and ``db dump`` take JSON data whose ints fit in 64 bits, nested at most
    :data:`MAX_RESULT_DEPTH` deep, at most :data:`MAX_RESULTS_BYTES` in all; a result the
    storage would refuse (or every worker would read at great cost) breaks the trial here,
    before the write, the same on every storage, instead of failing the write.
    """
    sizes: dict[str, int] = {}  # bytes of each result's JSON
    for key, item in results.items():
        beyond = _beyond_storage(item, 1)  # the results dict is the first level
        if beyond is not None:
            return f"result {key!r} cannot be stored: it holds {beyond}; {_STORABLE}"
        try:
            sizes[key] = len(json.dumps(item))
        except (TypeError, ValueError) as err:
            return (f"result {key!r} cannot be stored: {type(item).__name__} {shown(item, 60)} is not JSON data "
                    f"({err}); return numbers, strings, lists or dicts")
    size = sum(sizes.values()) + sum(map(len, sizes))
    if size > MAX_RESULTS_BYTES:
        largest = max(sizes, key=sizes.__getitem__)
        return (f"the results take {format_bytes(size)} as JSON (the largest is {largest!r}), more than the "
                f"{format_bytes(MAX_RESULTS_BYTES)} a trial may hold: every worker reads every trial's results. "
                "Return summary numbers, and save arrays and curves to files (e.g. in the trial's working_dir)")
    return None


_STORABLE = "return numbers (ints within 64 bits), strings, and lists or dicts of them nested at most 32 deep"


def _beyond_storage(value: Any, depth: int = 0) -> str | None:
    """What in a JSON ``value`` a storage cannot hold (an int beyond 64 bits, too deep a nesting), or ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if int_fits(value) else f"an int of {value.bit_length()} bits"
    if isinstance(value, (list, tuple, dict)):
        if depth >= MAX_RESULT_DEPTH:
            return f"lists or dicts nested more than {MAX_RESULT_DEPTH} deep"
        for item in value.values() if isinstance(value, dict) else value:
            found = _beyond_storage(item, depth + 1)
            if found is not None:
                return found
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
    (reason ``memory``). ``KeyboardInterrupt``, in this process or raised by ``fn``
    in the child, kills the child and propagates so the worker can release the trial.
    """
    if timeout is None and memory_limit is None:
        try:
            with own_process():  # a child the objective forked leaves here, not as a second worker
                value = fn(**params)
            return interpret_result(value)
        except TrialPruned:
            return Outcome.pruned_by_objective()
        except KeyboardInterrupt:
            raise  # Ctrl-C, SIGTERM: the worker releases the trial
        except BaseException as err:  # noqa: BLE001 -- sys.exit() too: the trial breaks, the worker goes on
            return Outcome.from_exception(err)
    job = functools.partial(_evaluate_for_parent, fn, dict(params))
    if not hasattr(os, "fork"):
        if memory_limit is not None:
            raise ConfigurationError("trial_memory_limit needs os.fork (Linux, macOS); drop it on this platform")
        return _outcome_of(call_spawned(job, timeout), timeout)  # type: ignore[arg-type]
    return _outcome_of(ForkedCall(job).result(timeout, memory_limit), timeout)


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
        self._running: dict[str, ForkedCall] = {}

    def __call__(self, trial: Trial) -> Outcome:
        """Evaluate ``trial``'s params (see :func:`call_objective`) as the :func:`current_trial`."""
        with evaluating(trial, self.working_dir):  # a forked child inherits it
            if (self.timeout is None and self.memory_limit is None) or not hasattr(os, "fork"):
                return call_objective(self.fn, trial.params, self.timeout, self.memory_limit)
            with contextlib.ExitStack() as reports:
                judging = current_judge()
                paths: tuple[str, str] | None = None
                if judging is not None:  # the child's reports go through files the worker follows
                    folder = tempfile.mkdtemp(prefix="orchard-reports-")
                    reports.callback(shutil.rmtree, folder, ignore_errors=True)
                    paths = (os.path.join(folder, "reports.jsonl"), os.path.join(folder, "verdict.json"))
                    try:
                        ReportFollower.prepare(*paths)
                    except OSError as err:
                        raise no_room(err) from None
                environment = None if paths is None or judging is None else ReportFollower.environment(
                    *paths, trial.id, judging[0].objectives)
                child = ForkedCall(functools.partial(_evaluate_for_parent, self.fn, dict(trial.params), environment))
                self._running[trial.id] = child
                if judging is not None and paths is not None:  # started after the fork: no thread is forked
                    reports.enter_context(ReportFollower(judging[0], judging[1], *paths, grace=PRUNE_GRACE,
                                                         stop=lambda: kill_tree(child.pid, run=child.run)))
                try:
                    return _outcome_of(child.result(self.timeout, self.memory_limit), self.timeout)
                finally:
                    self._running.pop(trial.id, None)

    def cancel(self, trial: Trial) -> bool:
        """Kill ``trial``'s evaluation child (thread-safe; idempotent); False if it runs in the worker's thread."""
        child = self._running.get(trial.id)
        if child is None:
            return False  # Python cannot stop a thread safely: the call runs to its end
        child.cancel()
        return True

    def hold(self, trial: Trial, held: bool) -> bool:
        """Pause or resume ``trial``'s evaluation child; False if it runs in the worker's thread (it cannot be)."""
        child = self._running.get(trial.id)
        if child is None:
            return False
        hold_group(child.pid, held, child.run)
        return True


def _evaluate_for_parent(fn: Callable[..., Any], params: dict[str, Any],
                         reporting: dict[str, str] | None = None) -> Outcome | _ChildInterrupted:
    if reporting is not None:  # this child's reports go to the files its parent follows, not to the parent's judge
        os.environ.update(reporting)
    try:
        with reporting_to(None), own_process():  # a grandchild leaves here: it sends no second frame
            value = fn(**params)
        return interpret_result(value)
    except TrialPruned:
        return Outcome.pruned_by_objective()
    except KeyboardInterrupt:
        return _INTERRUPTED  # the parent raises it again: the trial is released, as in the worker's thread
    except BaseException as err:  # noqa: BLE001 - report everything, including SystemExit, to the parent
        return Outcome.from_exception(err)


#: Seconds a child evaluation has to end by itself after a "prune" verdict before it is killed.
PRUNE_GRACE = 5.0


@dataclasses.dataclass(frozen=True)
class _ChildInterrupted:
    """What a child sends back when the objective raised ``KeyboardInterrupt`` (never stored)."""


_INTERRUPTED = _ChildInterrupted()


def _outcome_of(value: object, timeout: float | None) -> Outcome:
    """The outcome of an isolated call: the child's own, or why it gave none.

    Raises:
        Interrupted: the objective raised ``KeyboardInterrupt`` in the child; the worker
            releases the trial (``interrupted``), as when it is raised in the worker's thread.
    """
    if isinstance(value, _ChildInterrupted):
        raise Interrupted
    if not isinstance(value, Stopped):
        return value  # type: ignore[return-value]  # the child ran _evaluate_for_parent
    if value.reason == "timeout":
        return Outcome.failure(
            "TimeoutError", f"objective ran longer than trial_timeout={timeout:g} s and was killed",
            reason="timeout")
    if value.reason == "memory":
        message, details = value.memory_failure("the objective's process tree")
        return Outcome.failure("MemoryError", message, **details)
    if value.reason == "cancelled":
        return Outcome.failure("Cancelled", "the evaluation was killed because the worker lost its reservation",
                               reason="cancelled")
    return Outcome.failure("WorkerCrashed", f"the objective's process died with {value.how}")
