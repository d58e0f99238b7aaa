"""``percentile`` and ``median``: stop a trial worse than most others at the same step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from orchard.pruners.base import BasePruner, BestSoFar, Curve, Verdict, check_int, check_number, judged

__all__ = ["MedianPruner", "PercentilePruner"]


class PercentilePruner(BasePruner):
    """Stops a trial whose best value so far is worse than a percentile of the others' at that step.

    At a judged step ``s`` (from ``warmup_steps`` on, the first report past every ``interval_steps``),
    each other trial that has reported at ``s`` or later contributes its best value
    up to ``s``; the trial goes on if its own best up to ``s`` is no worse than
    the ``percentile``-th percentile of those values (linear interpolation). With
    fewer than ``min_trials`` such trials nothing is pruned.

    Options:
        percentile: in [0, 100]; 50 is the median, lower prunes more (default 25).
        warmup_steps: steps before which no trial is pruned (default 0).
        min_trials: other trials that must have reached the step first (default 5).
        interval_steps: judge the first report at or past each ``warmup_steps + k·interval_steps``
            (default 1: every report from the warm-up on).
    """

    name: ClassVar[str] = "percentile"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "percentile": 25.0,
        "warmup_steps": 0,
        "min_trials": 5,
        "interval_steps": 1,
    }
    OPTUNA_NAMES: ClassVar[dict[str, str]] = {
        "n_startup_trials": "min_trials", "n_min_trials": "min_trials", "n_warmup_steps": "warmup_steps"}

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        check_number("percentile", cls.name, options["percentile"], 0.0, 100.0)
        check_int("warmup_steps", cls.name, options["warmup_steps"], 0)
        check_int("min_trials", cls.name, options["min_trials"], 1)
        check_int("interval_steps", cls.name, options["interval_steps"], 1)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._best = BestSoFar()  # each curve read once, not at every report (see BestSoFar)

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        step = own[-1][0]
        warmup, interval = self.options["warmup_steps"], self.options["interval_steps"]
        if not judged(own, warmup, interval):
            return self._going_on(own, f"step {step} is not judged (warm-up {warmup}, interval {interval})")
        self._best.new_round(len(others) + 1)
        mine = self._best.until(own, step)
        assert mine is not None  # own reached its own last step
        peers = {tid: self._best.until(curve, step) for tid, curve in others.items() if tid != trial_id}
        values = {tid: value for tid, value in peers.items() if value is not None}
        compared = tuple(sorted(values))
        if len(compared) < self.options["min_trials"]:
            return self._going_on(
                own,
                f"only {len(compared)} other trials reached step {step}, "
                f"fewer than min_trials={self.options['min_trials']}",
                value=mine,
                compared=compared,
            )
        import numpy as np  # not at the top: `orchard list` needs no numpy (0.15 s)

        cutoff = float(np.percentile([values[tid] for tid in compared], self.options["percentile"]))
        prune = mine > cutoff
        verb = "is worse than" if prune else "is within"
        percentile = self.options["percentile"]
        percentile = percentile if self.sign > 0 else 100 - percentile  # of the values as returned
        reason = (
            f"best value {self.sign * mine:.6g} up to step {step} {verb} the {percentile:g}th percentile "
            f"{self.sign * cutoff:.6g} of {len(compared)} other trials"
        )
        return Verdict(prune, self.name, step, value=mine, cutoff=cutoff, compared=compared, reason=reason)


class MedianPruner(PercentilePruner):
    """:class:`PercentilePruner` at the 50th percentile (no ``percentile`` option)."""

    name: ClassVar[str] = "median"
    OPTIONS: ClassVar[dict[str, Any]] = {
        key: value for key, value in PercentilePruner.OPTIONS.items() if key != "percentile"
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options = {**self.options, "percentile": 50.0}

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        check_int("warmup_steps", cls.name, options["warmup_steps"], 0)
        check_int("min_trials", cls.name, options["min_trials"], 1)
        check_int("interval_steps", cls.name, options["interval_steps"], 1)
