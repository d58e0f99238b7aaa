"""``none``, ``threshold`` and the ``patience`` wrapper: verdicts from the trial's own curve."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from orchard.errors import ConfigurationError
from orchard.pruners.base import BasePruner, BestSoFar, Curve, Verdict, check_int, check_number
from orchard.trial import ReportValue, first_value

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
        interval_steps: judge only every this many steps after the warm-up (default 1).
    """

    name: ClassVar[str] = "threshold"
    OPTIONS: ClassVar[dict[str, Any]] = {"upper": None, "lower": None, "warmup_steps": 0, "interval_steps": 1}

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

    sign: float = 1.0  # -1 when the one objective is maximised: reports arrive negated

    def facing(self, objectives: Mapping[str, str] | None) -> BasePruner:
        self.sign = -1.0 if objectives is not None and list(objectives.values()) == ["max"] else 1.0
        return self

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        step, value = own[-1][0], first_value(own[-1][1])  # the last report alone: not the whole curve again
        warmup, interval = self.options["warmup_steps"], self.options["interval_steps"]
        if step < warmup or (step - warmup) % interval:
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

    #: Builds the wrapped pruner from its configuration (set by the registry, which knows every name).
    build: ClassVar[Callable[[Any], BasePruner] | None] = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        build = type(self).build
        wrapped = self.options["wrapped"]
        self.wrapped: BasePruner | None = build(wrapped) if wrapped is not None and build is not None else None
        self._best = BestSoFar()  # the best before the last `patience` reports, not read at every report
        self._front = _FrontSoFar()  # the same with several objectives

    def facing(self, objectives: Mapping[str, str] | None) -> BasePruner:
        if self.wrapped is not None:
            self.wrapped.facing(objectives)
        return self

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
            return self._going_on(own, f"improved to {recent:.6g} in the last {patience} reports", value=recent)
        if self.wrapped is not None:
            return self.wrapped.judge(trial_id, own, others)
        reason = (
            f"no improvement over {before:.6g} by more than min_delta={self.options['min_delta']:g} "
            f"in the last {patience} reports"
        )
        return Verdict(True, self.name, step, value=recent, cutoff=before - self.options["min_delta"], reason=reason)

    def _judge_several(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        patience, delta, step = self.options["patience"], self.options["min_delta"], own[-1][0]
        before = self._front.before(own, len(own) - patience)  # an earlier report matches iff one of these does
        recent = [_vector(own[index][1]) for index in range(len(own) - patience, len(own))]
        improving = [v for v in recent if not any(all(x - delta <= y for x, y in zip(u, v, strict=True))
                                                  for u in before)]
        if improving:
            return self._going_on(own, f"{len(improving)} of the last {patience} reports improve on every "
                                       f"earlier one in some objective by more than min_delta={delta:g}")
        if self.wrapped is not None:
            return self.wrapped.judge(trial_id, own, others)
        reason = (f"each of the last {patience} reports is matched, within min_delta={delta:g}, on every "
                  "objective by an earlier report")
        return Verdict(True, self.name, step, reason=reason)


class _FrontSoFar:
    """The reports among a curve's first ``index`` that no other is as good as everywhere, kept and extended.

    An earlier report that matches a recent one within ``min_delta`` on every objective exists
    exactly when one of these does (a report that another is as good as, everywhere, matches
    less). Kept for the latest curve, by identity, and extended as ``index`` grows, as
    :class:`~orchard.pruners.base.BestSoFar` does: each report is read once, not at every report.
    """

    def __init__(self) -> None:
        self._curve: Curve | None = None
        self._index = 0
        self._last: tuple[int, ReportValue] | None = None
        self._front: list[tuple[float, ...]] = []

    def before(self, curve: Curve, index: int) -> list[tuple[float, ...]]:
        """The front of ``curve[:index]``."""
        changed = self._index > 0 and curve[self._index - 1] != self._last
        if self._curve is not curve or index < self._index or changed:  # another curve, or changed: read whole
            self._curve, self._index, self._front = curve, 0, []
        for position in range(self._index, index):
            point = _vector(curve[position][1])
            if not any(_as_good(kept, point) for kept in self._front):
                self._front = [kept for kept in self._front if not _as_good(point, kept)] + [point]
        if index > self._index:
            self._index, self._last = index, curve[index - 1]
        return self._front

    def __getstate__(self) -> dict[str, Any]:
        """Nothing kept crosses a process: curve identities mean nothing there."""
        return {"_curve": None, "_index": 0, "_last": None, "_front": []}


def _as_good(u: tuple[float, ...], v: tuple[float, ...]) -> bool:
    """Whether ``u`` is at least as good as ``v`` on every objective (minimised)."""
    return all(x <= y for x, y in zip(u, v, strict=True))


def _vector(value: ReportValue) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)
