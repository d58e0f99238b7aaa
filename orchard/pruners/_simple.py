"""``none``, ``threshold`` and the ``patience`` wrapper: verdicts from the trial's own curve."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from orchard.errors import ConfigurationError
from orchard.pruners.base import BasePruner, BestSoFar, Curve, Verdict, check_int, check_number, judged
from orchard.trial import ReportValue, first_value

if TYPE_CHECKING:
    import numpy as np

__all__ = ["NopPruner", "PatiencePruner", "ThresholdPruner"]


class NopPruner(BasePruner):
    """Never prunes: reports are stored and plotted, every trial runs to its end."""

    name: ClassVar[str] = "none"
    SEVERAL_OBJECTIVES: ClassVar[bool] = True

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        return self._going_on(own, "no pruner is set")


class ThresholdPruner(BasePruner):
    """Stops a trial whose value leaves ``[lower, upper]`` (a diverging loss, a dead run).

    The bounds are in the objective's own direction: with ``objectives={"accuracy": "max"}``,
    ``lower=0.5`` prunes an accuracy below 0.5 (see :meth:`facing`).

    Options:
        upper: prune a value above this (default ``None``: no upper bound).
        lower: prune a value below this (default ``None``: no lower bound).
        warmup_steps: steps before which nothing is pruned (default 0).
        interval_steps: judge the first report at or past each ``warmup_steps + k·interval_steps``
            (default 1: every report from the warm-up on).
    """

    name: ClassVar[str] = "threshold"
    OPTIONS: ClassVar[dict[str, Any]] = {"upper": None, "lower": None, "warmup_steps": 0, "interval_steps": 1}
    OPTUNA_NAMES: ClassVar[dict[str, str]] = {"n_warmup_steps": "warmup_steps"}

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        check_number("upper", cls.name, options["upper"], -math.inf, math.inf, optional=True)
        check_number("lower", cls.name, options["lower"], -math.inf, math.inf, optional=True)
        check_int("warmup_steps", cls.name, options["warmup_steps"], 0)
        check_int("interval_steps", cls.name, options["interval_steps"], 1)
        lower, upper = options["lower"], options["upper"]
        if lower is None and upper is None:
            raise ConfigurationError("pruner 'threshold' needs 'upper', 'lower' or both, e.g. {'threshold': {'upper': 2.0}}")
        if lower is not None and upper is not None and lower > upper:
            raise ConfigurationError(f"pruner 'threshold': lower={lower} is above upper={upper}; swap them")

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        step, value = own[-1][0], first_value(own[-1][1])  # the last report alone: not the whole curve again
        warmup, interval = self.options["warmup_steps"], self.options["interval_steps"]
        if not judged(own, warmup, interval):
            return self._going_on(own, f"step {step} is not judged (warm-up {warmup}, interval {interval})")
        lower, upper, shown = self.options["lower"], self.options["upper"], value * self.sign  # as reported
        if upper is not None and shown > upper:
            return Verdict(True, self.name, step, value=value, cutoff=upper * self.sign,
                           reason=f"value {shown:.6g} is above upper={upper:g}")
        if lower is not None and shown < lower:
            return Verdict(True, self.name, step, value=value, cutoff=lower * self.sign,
                           reason=f"value {shown:.6g} is below lower={lower:g}")
        return self._going_on(own, f"value {shown:.6g} is within the thresholds", value=value)


class PatiencePruner(BasePruner):
    """Prunes a trial that stopped improving, optionally only where a wrapped pruner agrees.

    The trial is *stagnant* when the best of its last ``patience`` reports does not
    beat the best before them by more than ``min_delta``. A stagnant trial is
    pruned (with no ``wrapped`` pruner) or handed to the wrapped pruner's verdict;
    a trial still improving always goes on.

    With several objectives a recent report is an improvement when no earlier
    report is as good on every objective to within ``min_delta`` (it improves
    some objective by more than ``min_delta`` over each earlier report).

    Options:
        patience: reports without improvement before the trial counts as stagnant (default 10).
        min_delta: the least decrease that counts as an improvement (default 0.0).
        wrapped: another pruner's configuration, or ``None`` (default).
    """

    name: ClassVar[str] = "patience"
    SEVERAL_OBJECTIVES: ClassVar[bool] = True
    OPTIONS: ClassVar[dict[str, Any]] = {"patience": 10, "min_delta": 0.0, "wrapped": None}
    OPTUNA_NAMES: ClassVar[dict[str, str]] = {"wrapped_pruner": "wrapped"}

    #: Builds the wrapped pruner from its configuration (set by the registry, which knows every name).
    build: ClassVar[Callable[[Any], BasePruner] | None] = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        build = type(self).build
        wrapped = self.options["wrapped"]
        self.wrapped: BasePruner | None = build(wrapped) if wrapped is not None and build is not None else None
        self._best = BestSoFar()  # the best before the last `patience` reports, not read at every report
        self._front = _FrontSoFar()  # the same with several objectives

    def facing(self, objectives: Mapping[str, str] | None, last_step: int | None = None) -> BasePruner:
        if self.wrapped is not None:
            self.wrapped.facing(objectives, last_step)
        return super().facing(objectives, last_step)

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        check_int("patience", cls.name, options["patience"], 1)
        check_number("min_delta", cls.name, options["min_delta"], 0.0, math.inf)

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        patience = self.options["patience"]
        step = own[-1][0]
        if len(own) <= patience:
            return self._going_on(own, f"{len(own)} reports, patience needs more than {patience}")
        if isinstance(own[-1][1], tuple):
            return self._judge_several(trial_id, own, others)
        self._best.new_round(1)
        before = self._best.before(own, len(own) - patience)
        recent = min(first_value(own[index][1]) for index in range(len(own) - patience, len(own)))
        if recent < before - self.options["min_delta"]:
            return self._going_on(own, f"improved to {self.sign * recent:.6g} in the last {patience} reports",
                                  value=recent)
        if self.wrapped is not None:
            return self.wrapped.judge(trial_id, own, others)
        reason = (
            f"no improvement over {self.sign * before:.6g} by more than "
            f"min_delta={self.options['min_delta']:g} in the last {patience} reports"
        )
        return Verdict(True, self.name, step, value=recent, cutoff=before - self.options["min_delta"], reason=reason)

    def _judge_several(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        patience, delta, step = self.options["patience"], self.options["min_delta"], own[-1][0]
        improving = self._front.unmatched(own, patience, delta)
        if improving:
            return self._going_on(own, f"{improving} of the last {patience} reports improve on every "
                                       f"earlier one in some objective by more than min_delta={delta:g}")
        if self.wrapped is not None:
            return self.wrapped.judge(trial_id, own, others)
        reason = (f"each of the last {patience} reports is matched, within min_delta={delta:g}, on every "
                  "objective by an earlier report")
        return Verdict(True, self.name, step, reason=reason)


class _FrontSoFar:
    """Which of a curve's last ``patience`` reports no earlier report matches, kept and extended.

    A recent report is *matched* when a report before the window is as good on every
    objective to within ``min_delta``; the set before the window only grows, so a matched
    report stays matched. Each report is checked once when it enters the window (against
    :class:`_Front`, the earlier reports no other is as good as everywhere), then against
    each report that leaves the window after it, until it is matched or leaves too: a
    report costs one query of the front plus ``patience`` comparisons, not ``patience``
    scans of the front. Kept for the latest curve, by identity, as
    :class:`~orchard.pruners.base.BestSoFar` does; a curve not seen before, shortened, or
    whose last known report changed is read whole.
    """

    def __init__(self) -> None:
        self._curve: Curve | None = None
        self._settings: tuple[int, float] = (0, 0.0)
        self._index = 0  # the reports before the window: curve[:index], in the front
        self._entered = 0  # the reports checked on entering the window: curve[:entered]
        self._last: tuple[int, ReportValue] | None = None
        self._front = _Front()
        self._unmatched: dict[int, tuple[float, ...]] = {}  # index in the curve -> value, of recent reports

    def unmatched(self, curve: Curve, patience: int, delta: float) -> int:
        """How many of the last ``patience`` reports of ``curve`` no earlier report matches within ``delta``."""
        start = len(curve) - patience
        if (self._curve is not curve or len(curve) < self._entered or self._settings != (patience, delta)
                or (self._entered and curve[self._entered - 1] != self._last)):  # another curve, or changed
            self._curve, self._settings, self._index, self._entered = curve, (patience, delta), 0, 0
            self._front, self._unmatched = _Front(), {}
        for position in range(self._index, start):  # reports leaving the window join the earlier ones
            point = _vector(curve[position][1])
            self._unmatched.pop(position, None)
            self._unmatched = {index: value for index, value in self._unmatched.items()
                               if not all(x - delta <= y for x, y in zip(point, value, strict=True))}
            self._front.add(point)
        self._index = max(self._index, start)
        for position in range(max(self._entered, start), len(curve)):  # reports entering the window
            value = _vector(curve[position][1])
            if not self._front.matches(value, delta):
                self._unmatched[position] = value
        self._entered, self._last = len(curve), curve[-1]
        return len(self._unmatched)

    def __getstate__(self) -> dict[str, Any]:
        """Nothing kept crosses a process: curve identities mean nothing there."""
        fresh = _FrontSoFar()
        return fresh.__dict__


class _Front:
    """Points no other is as good as on every objective (minimised), and whether one matches a value.

    With two objectives the points are kept sorted by the first (the second then falls): a
    query is a binary search, an insertion a search plus the points it replaces. With more
    there is no such order, and the front has no bound below the number of points (a curve
    whose every report trades one objective for others keeps them all): a query compares
    the value with every point, in one numpy expression (the same float comparisons).
    """

    def __init__(self) -> None:
        self._points: list[tuple[float, ...]] = []  # with two objectives: by ascending first value
        self._firsts: list[float] = []  # with two objectives: the first value of each point
        self._array: np.ndarray[Any, np.dtype[np.float64]] | None = None  # with more: one row per point

    def matches(self, value: tuple[float, ...], delta: float) -> bool:
        """Whether a point is as good as ``value`` on every objective to within ``delta`` (``x - delta <= v``)."""
        if len(value) != 2:
            import numpy as np  # not at the top: `orchard list` needs no numpy (0.15 s)

            return self._array is not None and bool(np.any(np.all(self._array - delta <= value, axis=1)))
        # the last point whose first value passes has the lowest second value of those that pass
        index = bisect.bisect_right(self._firsts, value[0], key=lambda x: x - delta) - 1
        return index >= 0 and self._points[index][1] - delta <= value[1]

    def add(self, point: tuple[float, ...]) -> None:
        """Add ``point`` unless a point is as good everywhere; drop the points it is as good as."""
        if self.matches(point, 0.0):
            return
        if len(point) != 2:
            import numpy as np

            row = np.array([point], dtype=np.float64)
            kept = self._array
            self._array = row if kept is None else np.concatenate([kept[~np.all(row <= kept, axis=1)], row])
            return
        start = end = bisect.bisect_left(self._firsts, point[0])
        while end < len(self._points) and self._points[end][1] >= point[1]:  # those it is as good as follow it
            end += 1
        self._points[start:end] = [point]
        self._firsts[start:end] = [point[0]]


def _vector(value: ReportValue) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)
