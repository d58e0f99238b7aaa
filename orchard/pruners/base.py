"""The pruner contract: a verdict on a running trial from the reports stored so far.

A pruner decides, after each report of a trial, whether the trial goes on or is
stopped ("pruned"). Every pruner is a pure function of plain data:

* ``own``: the trial's own reports, ``(step, value)`` pairs with strictly
  increasing steps, values minimised;
* ``others``: the reports of the experiment's other trials *as the worker read
  them from the storage*, by trial id.

With several objectives a value is a tuple, one number per objective in
minimisation form (see :data:`orchard.trial.ReportValue`); the pruners that
rank (``asha``, ``hyperband``, ``patience``) then use Pareto dominance, the
others refuse such an experiment when it is built (:attr:`BasePruner.SEVERAL_OBJECTIVES`).

Nothing else goes in: no clock, no lock, no state kept between calls, no
storage. So any worker that read the same history reaches the same verdict, and
there is no scheduler to ask (SPEC §5, masterless). Reports are append-only in
the storage, so a trial's value at a step never changes once stored: a
:class:`Verdict` lists the ids of the trials it compared the trial with, and
:meth:`BasePruner.recompute` reaches the same verdict again from the stored
history at any later time (``orchard info --trial`` uses it to explain a pruned
trial, the tests to check every stored verdict).
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from orchard.errors import ConfigurationError
from orchard.options import Configurable
from orchard.report import shown
from orchard.trial import INT_LIMIT, ReportValue, finite_number, first_value

__all__ = ["BasePruner", "BestSoFar", "Curve", "Verdict", "judged", "value_at"]

#: A trial's reports: ``(step, value)`` pairs, steps strictly increasing.
Curve = Sequence[tuple[int, ReportValue]]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A pruner's answer for one report, with what it was based on.

    Attributes:
        prune: whether the trial is to be stopped.
        pruner: the registry name of the pruner that decided.
        step: the step of the report judged.
        value: the trial's value the pruner compared (``None`` when nothing was compared).
        cutoff: the value the trial had to beat to go on (``None`` when no cut-off applied).
        compared: ids of the other trials whose values set the cut-off.
        reason: one line a person can read ("value 0.41 at step 9 is worse than ...").
        rung: the rung (step threshold) judged, for rung-based pruners.
    """

    prune: bool
    pruner: str
    step: int
    value: float | None = None
    cutoff: float | None = None
    compared: tuple[str, ...] = ()
    reason: str = ""
    rung: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form: plain JSON/BSON values only."""
        data = dataclasses.asdict(self)
        data["compared"] = list(self.compared)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Rebuild a verdict from :meth:`to_dict`'s output (unknown keys are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in fields}
        kept["compared"] = tuple(kept.get("compared", ()))
        return cls(**kept)


class _Kept:
    """What :class:`BestSoFar` derived from one curve: its steps and running minimum, up to ``len(steps)``."""

    __slots__ = ("curve", "last", "minima", "steps")

    def __init__(self, curve: Curve) -> None:
        self.curve = curve
        self.steps: list[int] = []
        self.minima: list[float] = []
        self.last: tuple[int, ReportValue] | None = None


class BestSoFar:
    """The best (lowest) value of each curve up to a step or an index, read once per report.

    Comparing best values so far (``median``, ``percentile``, ``patience``) reads
    every report of every trial; done afresh at each report, a trial of ``n``
    reports would cost ``n²`` reads. What was derived from a curve is kept by the
    curve object's identity and extended by the reports appended to it since:
    the worker's :class:`~orchard.verdicts.Judge` hands a pruner one list per
    trial and reservation, only ever appended to. A curve not seen before, or
    one shortened or whose last known report changed, is read whole; reports are
    never changed once stored, so the answers never depend on what is kept and
    the pruner stays a pure function of its arguments. What is kept is forgotten
    when it holds far more curves than a verdict reads (:meth:`new_round`), so
    memory follows the history. Not thread-safe: the judge calls its pruner
    under a lock.
    """

    def __init__(self) -> None:
        self._kept: dict[int, _Kept] = {}

    def new_round(self, curves: int) -> None:
        """Start a verdict that reads up to ``curves`` curves (forget what is kept if it holds far more)."""
        if len(self._kept) > 2 * curves + 16:  # lists the judge no longer hands (trials reserved again, gone)
            self._kept = {}

    def until(self, curve: Curve, step: int) -> float | None:
        """The best value ``curve`` reported up to ``step``; ``None`` if it has not reached ``step``.

        A curve whose first report lies beyond ``step`` counts with that first value.
        """
        if not curve or curve[-1][0] < step:  # not there yet
            return None
        kept = self._extended(curve)
        index = bisect.bisect_right(kept.steps, step)
        return kept.minima[max(index - 1, 0)]

    def before(self, curve: Curve, index: int) -> float:
        """The best value among ``curve[:index]`` (``0 < index <= len(curve)``)."""
        return self._extended(curve).minima[index - 1]

    def _extended(self, curve: Curve) -> _Kept:
        key = id(curve)
        kept = self._kept.get(key)
        count = len(curve)
        if kept is None or kept.curve is not curve or len(kept.steps) > count or (
                kept.last is not None and curve[len(kept.steps) - 1] != kept.last):
            kept = self._kept[key] = _Kept(curve)  # a new curve, or one changed in place: read whole
        if len(kept.steps) < count:
            best = kept.minima[-1] if kept.minima else math.inf
            for index in range(len(kept.steps), count):  # by index: only the new reports are read
                step, value = curve[index]
                best = min(best, first_value(value))
                kept.steps.append(step)
                kept.minima.append(best)
            kept.last = curve[count - 1]
        return kept

    def __getstate__(self) -> dict[str, Any]:
        """Nothing kept crosses a process: curve identities mean nothing there."""
        return {"_kept": {}}


def judged(own: Curve, warmup: int, interval: int) -> bool:
    """Whether the last report of ``own`` is judged: the first at or past a judging step ``warmup + k·interval``.

    As Optuna's pruners decide it. Judging only a report that falls on such a step never judged
    a curve whose steps miss them all: one reporting every 1,000 samples with ``warmup_steps=500``
    and ``interval_steps=1000``, or every other epoch with ``warmup_steps=5, interval_steps=2``,
    was never pruned. Its first report past each judging step is judged (2,000, 3,000, …).
    """
    step = own[-1][0]
    if step < warmup:
        return False
    before = own[-2][0] if len(own) > 1 else -1
    return before < warmup + (step - warmup) // interval * interval


def value_at(curve: Curve, step: int) -> ReportValue | None:
    """The value a curve holds at ``step``: its first report at or after ``step``.

    A trial that reports every step has its value at exactly ``step``; one that
    reports every few steps is judged at the first report that reached it.
    ``None`` when the curve has not reached ``step``.
    """
    for reported_step, value in curve:
        if reported_step >= step:
            return value
    return None


class BasePruner(Configurable, abc.ABC):
    """Decides whether a running trial goes on, from the reports stored so far.

    Guarantees every implementation keeps:

    * **Pure.** :meth:`judge` depends only on the options and its arguments: the
      same history gives the same verdict on every worker, with no lock, clock or
      state carried between calls.
    * **Explained.** A verdict names the trials it compared with (``compared``), so
      restricting ``others`` to them and ``own`` to the reports up to the verdict's
      step gives the same verdict again (:meth:`recompute`).
    * **Minimised values.** Lower is better, as for the objective.

    Args:
        **options: pruner options, checked against :attr:`OPTIONS`.

    Raises:
        ConfigurationError: an unknown option, or an invalid option value.
    """

    KIND: ClassVar[str] = "pruner"
    #: -1 when the experiment's one objective is maximised: reports arrive negated, and a reason shows
    #: values as the objective returned them (:meth:`facing`).
    sign: float = 1.0
    #: The experiment's integer fidelity dimension, if any: a trial's value there is the last step it reports
    #: (under ``asha`` and ``hyperband``, a trial at 3 epochs of 27 ends at step 3), which no verdict stops.
    fidelity: str | None = None
    #: Whether the pruner ranks several objectives (tuples of values); those that do not are
    #: refused for an experiment with several objectives (:func:`orchard.pruners.check_objectives`).
    SEVERAL_OBJECTIVES: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = self.check_options(options)

    @abc.abstractmethod
    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        """Return the verdict on ``trial_id``'s latest report (the last of ``own``).

        Args:
            trial_id: the judged trial's id (bracketed pruners place it by a hash of it).
            own: the trial's reports so far, the one being judged last; never empty.
            others: the other trials' reports as read from the storage, by id
                (``trial_id`` itself, if present, is ignored).
        """

    def facing(self, objectives: Mapping[str, str] | None, last_step: int | None = None) -> BasePruner:
        """This pruner, set up for an experiment of ``objectives`` (name -> ``"min"``/``"max"``; ``None``: one, minimised).

        Reports arrive minimised whatever the direction, which is all a pruner that
        ranks trials needs; one that compares with values the user gave in the
        objective's own direction (``threshold``) turns them here, and those that
        explain a verdict show the values as the objectives returned them.
        ``last_step`` is the last step a trial reports when the experiment says so
        (the ``high`` of its integer fidelity): ``asha`` and ``hyperband`` stop no
        training there.
        """
        self.sign = -1.0 if objectives is not None and list(objectives.values()) == ["max"] else 1.0
        return self

    def at_its_end(self, params: Mapping[str, Any], verdict: Verdict) -> Verdict:
        """``verdict`` on a trial of ``params``, but "go on" at its last step (its :attr:`fidelity` value).

        Under ``asha`` or ``hyperband`` (the algorithms) a trial at 1 or 3 epochs of 27 reports its last
        step there: pruned at it, it lost its result at that fidelity (never promoted) and saved nothing.
        """
        end = params.get(self.fidelity) if self.fidelity is not None else None
        if not verdict.prune or type(end) is not int or verdict.step < end:
            return verdict
        return dataclasses.replace(verdict, prune=False, reason=(
            f"step {verdict.step} is the last this trial reports ({self.fidelity}={end}): a training that "
            f"ran all its steps is not stopped (else: {verdict.reason})"))

    def recompute(self, trial_id: str, verdict: Verdict, stored: Mapping[str, Curve]) -> Verdict:
        """Reach ``verdict`` again from the stored history, as any worker could later.

        Args:
            trial_id: the judged trial's id.
            verdict: a verdict this pruner returned for it.
            stored: every trial's stored reports by id, ``trial_id``'s included.

        A verdict on a report that is not stored, a NaN or infinite value every pruner
        prunes on (:class:`orchard.verdicts.Judge`), is reached again as it is.

        Raises:
            ValueError: the verdict's step comes before the trial's first stored report (no
                pruner of Orchard's wrote it).
        """
        own = [(step, value) for step, value in stored.get(trial_id, ()) if step <= verdict.step]
        if not own:
            raise ValueError(f"its step {verdict.step} comes before the trial's first stored report")
        if verdict.prune and own[-1][0] < verdict.step:
            return verdict
        others = {tid: stored[tid] for tid in verdict.compared if tid in stored}
        return self.judge(trial_id, own, others)

    def _going_on(self, own: Curve, reason: str, **details: Any) -> Verdict:
        return Verdict(False, self.name, own[-1][0], reason=reason, **details)


def check_int(name: str, pruner: str, value: Any, minimum: int) -> None:
    """Refuse an integer option below ``minimum`` or beyond 64 bits (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < INT_LIMIT:
        raise ConfigurationError(
            f"pruner {pruner!r}: option {name!r} must be an integer >= {minimum} and < 2**63, got {shown(value)}"
        )


def check_number(name: str, pruner: str, value: Any, low: float, high: float, optional: bool = False) -> None:
    """Refuse a number that is not finite (an int beyond a float's range included) or outside ``[low, high]``.

    ``None`` is allowed if ``optional``.
    """
    if optional and value is None:
        return
    number = finite_number(value)
    if number is None or not low <= number <= high:
        raise ConfigurationError(
            f"pruner {pruner!r}: option {name!r} must be a finite number in [{low}, {high}], got {shown(value)}"
        )
