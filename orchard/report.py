"""Reporting from inside an evaluation (imported by user code: keep it light).

**Final results.** ``orchard hunt`` sets ``ORCHARD_RESULTS_PATH`` for each trial;
the script calls :func:`report_objective` or :func:`report_results`, which write
JSON there. Scripts in other languages may write the same JSON themselves::

    {"objective": 0.123, "accuracy": 0.97}

**Intermediate values and pruning.** One idiom, in a Python objective or in a
script under ``orchard hunt``::

    for epoch in range(1, 31):
        loss = train_one_epoch()
        orchard.report(loss, step=epoch)      # stored durably before it returns
        if orchard.should_prune():            # the experiment's pruner said stop
            raise orchard.TrialPruned()       # the trial ends as ``pruned``

:func:`report` hands the value to the worker, which stores it on the trial and
judges it with the experiment's pruner before :func:`report` returns;
:func:`should_prune` answers from that verdict. In the worker's own thread the
call is direct. In a child process (a timed Python objective, a script) the
report is one JSON line appended to ``ORCHARD_REPORT_PATH``
(``{"step": 3, "objective": 0.41}``: any language can write it) and the verdict
comes back in ``ORCHARD_VERDICT_PATH`` (``{"step": 3, "prune": false}``); a line
that carries an ``"id"`` is answered by it under ``"answers"``, which is how
:func:`report` finds its own verdict, or refusal, among other threads'. A
child that ignores a "prune" verdict is stopped by the worker anyway (SIGTERM
to its process group, SIGKILL after a grace) and its trial recorded pruned.

**Several objectives.** In an experiment with several objectives a report
gives every objective by name, ``orchard.report({"error": 0.31, "latency_ms":
12.5}, step=epoch)`` (the report line: ``{"step": 3, "objective": {"error":
0.31, "latency_ms": 12.5}}``). The worker checks the names against the
experiment's objectives and stores one value per objective, in their declared
order and in minimisation form (a ``"max"`` objective negated); the pruner ranks
the reports by non-dominated sorting (see :mod:`orchard.pruners`).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import decimal
import json
import math
import numbers
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, AnyStr, BinaryIO

from orchard.errors import InvalidReportError, shown
from orchard.trial import INT_LIMIT, finite_float, finite_number

__all__ = [
    "REPORT_ENV",
    "RESULTS_ENV",
    "VERDICT_ENV",
    "Reported",
    "TrialPruned",
    "check_report",
    "declared_objectives",
    "each_key_once",
    "finite_only",
    "listed",
    "open_regular",
    "plain",
    "read_at_most",
    "replace_file",
    "report",
    "report_objective",
    "report_results",
    "should_prune",
    "shown",
]

RESULTS_ENV = "ORCHARD_RESULTS_PATH"
REPORT_ENV = "ORCHARD_REPORT_PATH"
VERDICT_ENV = "ORCHARD_VERDICT_PATH"
TRIAL_ENV = "ORCHARD_TRIAL_ID"
#: The objectives the experiment declares (JSON, ``{"accuracy": "max"}``), set for a child; empty if none.
OBJECTIVES_ENV = "ORCHARD_TRIAL_OBJECTIVES"
#: Seconds :func:`report` waits for a child's verdict before going on (the worker is slowed by an outage).
VERDICT_WAIT = 30.0

#: A reported value: a number, or each objective by name (several objectives).
Reported = float | dict[str, float]

#: Where :func:`report` sends a value in the worker's own thread: ``(value, step) -> prune?``.
_SINK: contextvars.ContextVar[Callable[[Reported, int], bool] | None] = contextvars.ContextVar(
    "orchard_report_sink", default=None)
#: The objectives the experiment of this thread's evaluation declares (see :func:`declared_objectives`).
_DECLARED: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "orchard_declared_objectives", default=None)


class _Told:
    """Whether a report of one evaluation got a "prune" verdict, from whichever of its threads it came.

    One object per evaluation, held by a context variable: a thread the objective starts in a
    copy of its context holds the same object, so the objective's own :func:`should_prune`
    sees the verdict on a report that thread made. A "prune" verdict stands: it is never unset.
    """

    __slots__ = ("prune",)

    def __init__(self) -> None:
        self.prune = False


#: What this evaluation was told (``None``: a process evaluating one trial, a script: :data:`_PROCESS_TOLD`).
_TOLD: contextvars.ContextVar[_Told | None] = contextvars.ContextVar("orchard_told", default=None)
_PROCESS_TOLD = _Told()


def _told() -> _Told:
    return _TOLD.get() or _PROCESS_TOLD


class TrialPruned(Exception):
    """Raised by an objective to end its trial as ``pruned`` (after :func:`should_prune` said so).

    Not an :class:`~orchard.errors.OrchardError`: it is the objective's answer, not a failure.
    """


def report(value: float | Mapping[str, float], step: int) -> None:
    """Report an intermediate value (minimized) at ``step`` (an epoch, iteration, samples seen).

    The value is stored on the running trial before this returns, and judged by
    the experiment's pruner; ask :func:`should_prune` for the verdict. With
    several objectives, ``value`` maps each objective's name to its value at
    ``step`` (``{"error": 0.31, "latency_ms": 12.5}``), in its own direction; with
    one declared objective (``objectives={"accuracy": "max"}``) a number is its
    value, in its direction.

    A NaN or infinite value (a diverged training) is not stored: the verdict is "prune",
    with any pruner but ``none``, once the trial holds a report to be pruned at.

    Raises:
        ValueError: ``value`` is not a number (or a mapping of names to numbers), ``step`` is
            not an integer >= 0, or the worker refused the report
            (:class:`~orchard.errors.InvalidReportError`: a step not above the last one, too many
            steps, objectives that are not the experiment's, NaN or an infinity with nothing to
            prune at).
        RuntimeError: called outside an evaluation run by an Orchard worker.
    """
    value, step = check_report(value, step)
    sink = _SINK.get()
    if sink is not None:
        if sink(value, step):
            _told().prune = True
        return
    path = os.environ.get(REPORT_ENV)
    if not path:
        raise RuntimeError(
            f"orchard.report() needs a running trial: call it inside an objective run by a worker "
            f"(workon, hunt), in the objective's own thread (a thread it starts must run in a copy of its "
            f"context: threading.Thread(target=contextvars.copy_context().run, args=(fn,))), or set {REPORT_ENV}"
        )
    line_id = os.urandom(8).hex()  # names this line in the verdict file: several threads may report at once
    fields: dict[str, Any] = {"step": step, "objective": value, "id": line_id}
    if os.environ.get(TRIAL_ENV):  # a file linked to, or shared with, other trials' keeps them apart
        fields["trial"] = os.environ[TRIAL_ENV]
    line = json.dumps(fields) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
    if _await_verdict(step, line_id):  # no verdict within the wait (an outage) leaves a "prune" standing
        _told().prune = True


def declared_objectives() -> dict[str, str] | None:
    """The objectives the running trial's experiment declares (name -> ``"min"``/``"max"``), ``None`` if none.

    What a reported bare number means depends on it: minimized when none is declared, the
    value of the one declared objective, in its direction, otherwise. An integration that
    knows a metric's direction (LightGBM's "higher is better") reads it to report the value
    as the experiment takes it. In a child process it comes from ``ORCHARD_TRIAL_OBJECTIVES``.
    """
    if _SINK.get() is not None:
        declared = _DECLARED.get()
        return None if declared is None else dict(declared)
    text = os.environ.get(OBJECTIVES_ENV)
    if not text:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise ValueError(f"{OBJECTIVES_ENV} is not a JSON object of objective names to 'min' or 'max': "
                         f"{text[:200]!r}; unset it or let the worker set it")
    return found


def should_prune() -> bool:
    """Whether a :func:`report` of this evaluation got a "prune" verdict (``False`` before any).

    A report made from a thread the objective started in a copy of its context counts.
    """
    return _told().prune


def check_report(value: Any, step: Any) -> tuple[Reported, int]:
    """``(value, step)`` as a float (or names to floats) and an int >= 0.

    NaN and the infinities pass, as a diverged training reports them: the worker's judge prunes
    the trial on them, or refuses them (:class:`orchard.verdicts.Judge`).

    Raises:
        ValueError: naming what is wrong.
    """
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("orchard.report() got an empty mapping; give each objective by name")
        checked = {}
        for name, item in value.items():
            number = _reported_number(item)
            if not isinstance(name, str) or number is None:
                raise ValueError(f"orchard.report() needs a finite number for objective {shown(name)}, "
                                 f"got {shown(item)}")
            checked[name] = number
        value = checked
    else:
        number = _reported_number(value)
        if number is None:
            raise ValueError(f"orchard.report() needs a finite number as the value, got {shown(value)}")
        value = number
    step = plain(step)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < INT_LIMIT:  # a stored int is 64-bit
        raise ValueError(f"orchard.report() needs an integer step >= 0 and < 2**63, got {shown(step)}")
    return value, step


def _reported_number(value: Any) -> float | None:
    """A reported value as a float, NaN and the infinities included; ``None`` for what is no number.

    A training that diverged reports NaN or an infinity: the worker's judge prunes the trial
    on it, or refuses it when nothing can (see :class:`orchard.verdicts.Judge`).
    """
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return finite_float(value)


def _await_verdict(step: int, line_id: str) -> bool:
    """The worker's verdict on report line ``line_id`` (``False`` if none comes within :data:`VERDICT_WAIT`).

    The verdict file answers the latest lines by their ``id`` (``"answers"``), so a report refused
    (a step not after the last) is told to its caller even when its step is below one judged before.
    """
    path = os.environ.get(VERDICT_ENV)
    if not path:
        return False
    deadline = time.monotonic() + VERDICT_WAIT
    pause = 0.001
    while time.monotonic() < deadline:
        verdict: Any = None
        with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as handle:
            verdict = json.load(handle)  # OSError: not written yet (it is replaced whole)
        answers = verdict.get("answers") if isinstance(verdict, dict) else None
        answer = answers.get(line_id) if isinstance(answers, dict) else None
        if answer is None and answers is None and isinstance(verdict, dict):  # a worker that names no line
            answer = verdict if verdict.get("step", -1) >= step else None
        if isinstance(answer, dict):
            if answer.get("refused"):
                raise InvalidReportError(str(answer["refused"]))  # what report() in the worker's thread raises
            return bool(answer.get("prune"))
        time.sleep(pause)
        pause = min(pause * 2, 0.002)  # a verdict comes within milliseconds: look often (a small JSON read)
    return False


@contextlib.contextmanager
def reporting_to(sink: Callable[[Reported, int], bool] | None,
                 objectives: Mapping[str, str] | None = None) -> Iterator[None]:
    """Send this thread's :func:`report` calls to ``sink`` for the ``with`` block (``None``: to the files).

    ``objectives`` are the experiment's declared ones, for :func:`declared_objectives`.
    """
    token, told, declared = _SINK.set(sink), _TOLD.set(_Told()), _DECLARED.set(objectives)
    try:
        yield
    finally:
        _SINK.reset(token)
        _TOLD.reset(told)
        _DECLARED.reset(declared)


def report_results(results: Mapping[str, Any]) -> None:
    """Write ``results`` for the running trial.

    ``results`` holds a finite numeric ``"objective"``, or, in an experiment with
    several objectives, each objective by name (checked by the worker).

    Raises:
        TypeError: ``results`` is not a mapping (a bare number: use :func:`report_objective`).
        ValueError: ``results`` is empty, or its ``"objective"`` is not a finite number.
        RuntimeError: not running under ``orchard hunt`` (``ORCHARD_RESULTS_PATH`` unset).
    """
    _write(results, "report_results")


def report_objective(value: float, **extra: Any) -> None:
    """Report the trial's objective (minimized), plus optional extra metrics.

    Raises:
        ValueError: ``value`` is not a finite number.
        RuntimeError: not running under ``orchard hunt`` (``ORCHARD_RESULTS_PATH`` unset).
    """
    _write({"objective": plain(value), **extra}, "report_objective")


def _write(results: Mapping[str, Any], caller: str) -> None:
    """Check and write ``results``; errors name ``caller``, the function the user called."""
    if not isinstance(results, Mapping):
        raise TypeError(f"{caller} takes a dict such as {{'objective': 0.25, 'accuracy': 0.9}}, got "
                        f"{type(results).__name__} {shown(results)}; for one number call report_objective(value)")
    objective = results.get("objective")
    by_name = caller == "report_results" and "objective" not in results and bool(results)  # several objectives
    if not by_name and finite_number(plain(objective)) is None:
        wanted = "a finite number" if caller == "report_objective" else "a finite numeric 'objective'"
        raise ValueError(f"{caller} needs {wanted}, got {shown(objective)}")
    path = os.environ.get(RESULTS_ENV)
    if not path:
        raise RuntimeError(
            f"{RESULTS_ENV} is not set: {caller} only works inside a trial started by "
            "'orchard hunt'; run your script through it"
        )
    replace_file(path, json.dumps({str(k): listed(v) for k, v in results.items()}))  # fails before writing


def replace_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` at once: readers see the old file or the whole new one.

    The temporary file beside it is created exclusively under an unpredictable name, so a
    link planted at a name known in advance is never written through.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_regular(path: str) -> BinaryIO | None:
    """``path`` opened for reading, or ``None`` if it is not a regular file (a FIFO, a link to a device).

    Opened without blocking, so a FIFO a script left there does not hang its worker, and
    a link to ``/dev/zero`` is never read without end.

    Raises:
        OSError: it cannot be opened (``FileNotFoundError``: it is not there).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    return None


def read_at_most(handle: IO[AnyStr], limit: int) -> AnyStr | None:
    """All of ``handle`` if it holds at most ``limit`` bytes (characters, for a text stream), else ``None``.

    A regular file larger than ``limit`` is refused unread; anything else (``/dev/zero``, a
    pipe without end, a data set given by mistake) is read up to ``limit + 1``, so no input
    fills the memory. The caller names the file and the limit in its own message.
    """
    try:
        size = os.fstat(handle.fileno()).st_size  # 0 for a pipe or a device
    except (OSError, ValueError):  # a stream without a file (a StringIO in place of stdin)
        size = 0
    if size > limit:
        return None
    data = handle.read(limit + 1)
    return None if len(data) > limit else data


def each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A :func:`json.loads` ``object_pairs_hook`` refusing an object that names a key twice.

    ``json`` keeps the last value silently; in a file a user or a script wrote (a results file,
    a dump, an insert), the other is a lost value or the wrong objective.

    Raises:
        ValueError: a key named twice (the message names them).
    """
    counts = collections.Counter(name for name, _ in pairs)
    twice = sorted(name for name, count in counts.items() if count > 1)
    if twice:
        raise ValueError(f"an object names {', '.join(map(repr, twice))} twice; keep one")
    return dict(pairs)


def finite_only(value: Any) -> Any:
    """``value`` with every non-finite float in it, at any depth of dicts, lists and tuples, as ``None``: what
    standard JSON holds (``json.dumps`` writes ``NaN``, which ``jq``, browsers and most readers refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_only(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_only(item) for item in value]
    return value


def listed(value: Any) -> Any:
    """A metric as JSON data: a one-value array or tensor as its value (:func:`plain`), one of several values
    (a metric per class, a curve) as its nested list; else ``value``.

    Duck-typed on ``.tolist()`` (numpy arrays, PyTorch tensors): such a metric is data, not a reason to lose
    the trial's objective.
    """
    value = plain(value)
    tolist = getattr(value, "tolist", None)
    if not callable(tolist) or isinstance(value, (list, dict, str, bytes)):
        return value
    try:
        return tolist()
    except Exception:  # noqa: BLE001 -- a foreign tolist(): left to the checks, which name the value
        return value


def plain(value: Any) -> Any:
    """A one-value array or tensor (numpy scalar, 0-d array, torch scalar) as its Python value, a ``Decimal``,
    ``Fraction`` or other real number as its ``float``; else ``value``.

    Duck-typed on ``.item()``, so nothing is imported; an ``item()`` that fails leaves ``value`` as it is.
    A number converts as ``float()`` converts it (what Optuna takes): a ``Decimal`` NaN or one beyond a
    float becomes NaN or an infinity, which the callers refuse as no finite number.
    """
    exact = isinstance(value, (numbers.Real, decimal.Decimal)) and not isinstance(value, numbers.Integral)
    if exact and not isinstance(value, float):
        try:
            return float(value)
        except OverflowError:  # a Fraction beyond a float
            return math.copysign(math.inf, value.numerator) if isinstance(value, numbers.Rational) else value
        except (ValueError, TypeError):  # a signalling NaN, a foreign __float__: refused, named as given
            return value
    item = getattr(value, "item", None)
    if not callable(item) or isinstance(value, (list, dict)):
        return value
    try:
        return item()
    except Exception:  # noqa: BLE001 -- several values (an array of 3), or a foreign item(): left to the checks
        return value
