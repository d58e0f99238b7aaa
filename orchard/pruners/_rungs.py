"""``asha`` and ``hyperband`` over steps: successive halving of running trials, no waiting.

A rung is a step ``min_step · η^(k + s)`` (``η`` the reduction factor, ``s`` the
bracket's early-stopping rate). When a trial's report first reaches a rung, its
value there is ranked among the values every other trial of its bracket stored
at that rung so far; it goes on if it is among the best ``max(1, n // η)`` of
those ``n`` values (its own included), and is pruned otherwise. Nobody waits for
a rung to fill: the first trial at a rung always goes on, which is the
asynchronous rule of ASHA (Li et al., 2020) applied to one running training.

With several objectives (each value a tuple, one per objective) the values at
a rung are ranked by non-dominated sorting: front index first,
then, within a front, crowding distance (larger first: a front's extremes and
its most isolated points go on first), then the trial id, so every worker
ranks alike (:func:`pareto_position`). The best ``max(1, n // η)`` go on.

``hyperband`` runs several such brackets (``s = 0, 1, …``): a trial's bracket is
fixed by a hash of its id, so every worker places it the same way, and it is
compared only with the trials of its own bracket.

The last step a trial reports (``max_step``, or else the ``high`` of the experiment's integer
fidelity, see :meth:`BasePruner.facing`) is no rung: rungs lie below it, and a report at or past
it is never stopped by a rung decision, so a training that ran all its steps ends completed, as
one under Optuna's ``SuccessiveHalvingPruner`` does when its objective returns (the rungs of
Oríon's ASHA likewise stop below the fidelity's maximum).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from orchard.errors import ConfigurationError
from orchard.objectives import crowding_distance, non_dominated_sort, shown_value
from orchard.pruners.base import BasePruner, Curve, Verdict, check_int, value_at
from orchard.trial import INT_LIMIT, ReportValue

__all__ = ["AshaPruner", "HyperbandPruner", "RungPruner", "bracket_of", "pareto_position"]


def _first_rung(min_step: int, eta: int, rate: int) -> int | None:
    """``min_step · η^rate``, or ``None`` when it is beyond every step a report can have (``2**63``).

    Multiplied out rung by rung (at most 63 times, ``η >= 2``): ``η**rate`` for a rate of
    a billion took minutes and gigabytes, at every report.
    """
    rung = min_step
    for _ in range(rate):
        rung *= eta
        if rung >= INT_LIMIT:
            return None
    return rung


def _rungs_crossed(own: Curve, min_step: int, eta: int, rate: int) -> list[int]:
    """The rungs the last report reached that the previous report had not."""
    last = own[-1][0]
    before = own[-2][0] if len(own) > 1 else -1
    rungs: list[int] = []
    rung = _first_rung(min_step, eta, rate)
    if rung is None:  # no step reaches it
        return rungs
    while rung <= last:
        if rung > before:
            rungs.append(rung)
        rung *= eta
    return rungs


def _halving(
    pruner: RungPruner, own: Curve, others: Mapping[str, Curve], trial_id: str, rate: int
) -> Verdict:
    """Judge ``own`` at the highest rung its last report reached, against ``others`` there."""
    min_step, eta = pruner.options["min_step"], pruner.options["reduction_factor"]
    crossed = _rungs_crossed(own, min_step, eta, rate)
    step = own[-1][0]
    if pruner.end is not None and step >= pruner.end:
        return Verdict(False, pruner.name, step, reason=(
            f"step {step} is the last ({pruner.ending}): a training that ran all its steps is not stopped"))
    if not crossed:
        return Verdict(False, pruner.name, step, reason=f"step {step} reached no new rung")
    rung = crossed[-1]
    mine = value_at(own, rung)
    assert mine is not None
    values = {tid: value_at(curve, rung) for tid, curve in others.items() if tid != trial_id}
    if isinstance(mine, tuple):
        return _pareto_halving(pruner, trial_id, mine, values, step, rung)
    reached = {tid: value for tid, value in values.items() if value is not None and not isinstance(value, tuple)}
    compared = tuple(sorted(reached))
    ranked = sorted([mine, *reached.values()])
    kept = max(1, len(ranked) // eta)
    cutoff = ranked[kept - 1]
    prune = mine > cutoff
    verb = "is not" if prune else "is"
    reason = (
        f"value {pruner.sign * mine:.6g} at rung {rung} {verb} among the best {kept} of {len(ranked)} values "
        f"there (cut-off {pruner.sign * cutoff:.6g})"
    )
    return Verdict(prune, pruner.name, step, value=mine, cutoff=cutoff, compared=compared, reason=reason, rung=rung)


def pareto_position(values: Mapping[str, tuple[float, ...]], trial_id: str) -> tuple[int, int]:
    """Where ``trial_id`` ranks among ``values``: ``(position, front)``, both from 0.

    The order is the front index (non-dominated sorting), then crowding distance
    within the front, larger first, then the trial id.
    """
    ids = sorted(values)
    vectors = [values[tid] for tid in ids]
    order: list[tuple[int, str]] = []
    for number, front in enumerate(non_dominated_sort(vectors)):
        distance = crowding_distance([vectors[i] for i in front])
        ranked = sorted(zip(front, distance, strict=True), key=lambda p: (-p[1], ids[p[0]]))
        order += [(number, ids[i]) for i, _ in ranked]
    position = [tid for _, tid in order].index(trial_id)
    return position, order[position][0]


def _pareto_halving(pruner: RungPruner, trial_id: str, mine: tuple[float, ...],
                    values: Mapping[str, ReportValue | None], step: int, rung: int) -> Verdict:
    """The rung rule with several objectives: go on if among the best ``n // η`` by :func:`pareto_position`."""
    reached = {tid: v for tid, v in values.items() if isinstance(v, tuple) and len(v) == len(mine)}
    position, front = pareto_position({**reached, trial_id: mine}, trial_id)
    kept = max(1, (len(reached) + 1) // pruner.options["reduction_factor"])
    prune = position >= kept
    reason = (
        f"values {shown_value(mine, pruner.objectives)} at rung {rung} rank {position + 1} of "
        f"{len(reached) + 1} there (front {front + 1}); the best {kept} go on"
    )
    return Verdict(prune, pruner.name, step, compared=tuple(sorted(reached)), reason=reason, rung=rung)


class RungPruner(BasePruner):
    """What ``asha`` and ``hyperband`` share: the last step, and the objectives to show values in."""

    #: The last step a trial reports (``max_step``, else the fidelity's), ``None`` if unknown.
    end: int | None = None
    #: Where :attr:`end` comes from, for a verdict's reason.
    ending: str = ""
    objectives: Mapping[str, str] | None = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.facing(None)

    def facing(self, objectives: Mapping[str, str] | None, last_step: int | None = None) -> BasePruner:
        self.objectives = objectives if objectives and len(objectives) > 1 else None
        if self.options["max_step"] is not None:
            self.end, self.ending = self.options["max_step"], f"max_step {self.options['max_step']}"
        elif last_step is not None:
            self.end, self.ending = last_step, f"the fidelity's high, {last_step}"
        else:
            self.end, self.ending = None, ""
        return super().facing(objectives, last_step)


class AshaPruner(RungPruner):
    """Asynchronous successive halving over the reported steps (see the module docstring).

    Options:
        min_step: the first rung (default 1).
        reduction_factor: ``η``, the factor between rungs; the best ``1/η`` go on (default 3).
        min_early_stopping_rate: ``s``, rungs start at ``min_step · η^s`` (default 0).
        max_step: the last step a trial reports: no rung there, a report there goes on (default
            ``None``: the ``high`` of the experiment's integer fidelity, if it has one).
    """

    name: ClassVar[str] = "asha"
    SEVERAL_OBJECTIVES: ClassVar[bool] = True
    OPTIONS: ClassVar[dict[str, Any]] = {"min_step": 1, "reduction_factor": 3, "min_early_stopping_rate": 0,
                                         "max_step": None}
    OPTUNA_NAMES: ClassVar[dict[str, str]] = {"min_resource": "min_step", "max_resource": "max_step"}

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        check_int("min_step", cls.name, options["min_step"], 1)
        check_int("reduction_factor", cls.name, options["reduction_factor"], 2)
        check_int("min_early_stopping_rate", cls.name, options["min_early_stopping_rate"], 0)
        rate = options["min_early_stopping_rate"]
        first = _first_rung(options["min_step"], options["reduction_factor"], rate)
        if first is None:
            raise ConfigurationError(
                f"pruner 'asha': the first rung, min_step·η^min_early_stopping_rate = {options['min_step']}·"
                f"{options['reduction_factor']}^{options['min_early_stopping_rate']}, is beyond every step a "
                "trial can report (2**63), so no trial would ever be judged; lower min_early_stopping_rate")
        if options["max_step"] is not None:
            check_int("max_step", cls.name, options["max_step"], 1)
            if options["max_step"] <= first:
                raise ConfigurationError(
                    f"pruner 'asha': max_step={options['max_step']} (the last step) is not above the first "
                    f"rung, min_step·η^min_early_stopping_rate = {first}, so no trial would ever be judged; "
                    "lower min_step or min_early_stopping_rate, or give the last step your training reports")

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        return _halving(self, own, others, trial_id, self.options["min_early_stopping_rate"])


def bracket_of(trial_id: str, brackets: int) -> int:
    """The bracket of a trial: a hash of its id, the same on every worker and Python process."""
    digest = hashlib.sha256(trial_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % brackets


class HyperbandPruner(RungPruner):
    """Several :class:`AshaPruner` brackets; a trial's bracket is fixed by a hash of its id.

    Options:
        min_step: the first rung of bracket 0 (default 1).
        reduction_factor: ``η`` (default 3).
        max_step: the last step a trial reports: no rung there, a report there goes on, and
            brackets whose first rung lies beyond it are not used (default ``None``: the ``high``
            of the experiment's integer fidelity, if it has one, else ``brackets`` decides).
        brackets: how many brackets (default ``None``: as many first rungs as fit up to
            the last step, or 4 without one; a bracket whose first rung is the last step
            stops nobody, as Hyperband's last bracket).
    """

    name: ClassVar[str] = "hyperband"
    SEVERAL_OBJECTIVES: ClassVar[bool] = True
    OPTIONS: ClassVar[dict[str, Any]] = {"min_step": 1, "reduction_factor": 3, "max_step": None, "brackets": None}
    OPTUNA_NAMES: ClassVar[dict[str, str]] = {"min_resource": "min_step", "max_resource": "max_step"}

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        check_int("min_step", cls.name, options["min_step"], 1)
        check_int("reduction_factor", cls.name, options["reduction_factor"], 2)
        if options["max_step"] is not None:
            check_int("max_step", cls.name, options["max_step"], options["min_step"])
        if options["brackets"] is not None:
            check_int("brackets", cls.name, options["brackets"], 1)
            if _first_rung(options["min_step"], options["reduction_factor"], options["brackets"] - 1) is None:
                raise ConfigurationError(
                    f"pruner 'hyperband': brackets={options['brackets']} but the first rung of the last one, "
                    f"min_step·η^{options['brackets'] - 1}, is beyond every step a trial can report (2**63): "
                    "its trials would never be judged; lower brackets")
        if options["max_step"] is not None and options["brackets"] is not None:
            fit = cls._fitting(options["min_step"], options["reduction_factor"], options["max_step"])
            if options["brackets"] > fit:
                raise ConfigurationError(
                    f"pruner 'hyperband': brackets={options['brackets']} but only {fit} first rungs "
                    f"min_step·η^s fit below max_step={options['max_step']}; lower brackets or raise max_step"
                )

    @staticmethod
    def _fitting(min_step: int, eta: int, max_step: int) -> int:
        return math.floor(math.log(max_step / min_step, eta) + 1e-9) + 1

    @property
    def brackets(self) -> int:
        """The number of brackets in use."""
        if self.options["brackets"] is not None:
            return int(self.options["brackets"])
        if self.end is not None:  # at least one bracket: a fidelity's high below min_step prunes nobody
            return max(1, self._fitting(self.options["min_step"], self.options["reduction_factor"], self.end))
        return 4

    def judge(self, trial_id: str, own: Curve, others: Mapping[str, Curve]) -> Verdict:
        bracket = bracket_of(trial_id, self.brackets)
        peers = {tid: curve for tid, curve in others.items() if bracket_of(tid, self.brackets) == bracket}
        return _halving(self, own, peers, trial_id, bracket)
