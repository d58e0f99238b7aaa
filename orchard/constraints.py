"""Constraints on reported metrics: ``"memory_gb <= 16"``, parsed by a tiny grammar, never ``eval``.

A constraint is ``<metric name> <= <number>`` or ``<metric name> >= <number>``.
A trial's *violation* is the sum, over the constraints, of how far its metrics
are on the wrong side (``0.0``: feasible). A trial may also report a
``"constraints"`` list of numbers where each value ``<= 0`` is satisfied
(Optuna's convention); its positive values add to the violation.

A constraint naming a metric the trial did not report, or reported as no finite
number (NaN, infinity, a text), makes the trial infeasible (violation ``inf``), with a
message naming the metric and saying which.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orchard.errors import ConfigurationError
from orchard.trial import finite_number

__all__ = [
    "REPORTED_KEY",
    "Constraint",
    "Feasibility",
    "feasibility",
    "normalize_constraints",
    "parse_constraint",
    "reported_problem",
    "unrecorded",
    "unusable_hint",
]

#: The results key of a reported list of constraint values (each ``<= 0``: satisfied).
REPORTED_KEY = "constraints"

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_METRIC = r"[A-Za-z_][A-Za-z0-9_.\-/]*"  # val/loss: the names Lightning and TensorBoard log
_GRAMMAR = re.compile(rf"^\s*({_METRIC})\s*(<=|>=)\s*({_NUMBER})\s*$")
#: The right form around a metric name the grammar refuses (``memory gb <= 16``), to say what a name may hold.
_SHAPE = re.compile(rf"^\s*([^<>=]*?)\s*(<=|>=)\s*{_NUMBER}\s*$")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """One bound on a reported metric: ``metric <= bound`` or ``metric >= bound``."""

    metric: str
    operator: str
    bound: float

    def violation(self, value: float) -> float:
        """How far ``value`` is on the wrong side of the bound (``0.0``: satisfied)."""
        excess = value - self.bound if self.operator == "<=" else self.bound - value
        return max(0.0, excess)

    def __str__(self) -> str:
        """The canonical form stored with the experiment: the bound exactly, as short as it reads."""
        return f"{self.metric} {self.operator} {_exact(self.bound)}"


def _exact(number: float) -> str:
    """``number`` in the fewest significant digits (six at least, as ``:g``) that give it back exactly.

    ``:g`` alone keeps six, so ``acc >= 0.9999999`` would be stored as ``acc >= 1``.
    """
    return next(text for digits in range(6, 18) if float(text := f"{number:.{digits}g}") == number)


@dataclasses.dataclass(frozen=True)
class Feasibility:
    """A trial's standing against the constraints: total violation and why."""

    violation: float
    reasons: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # metrics a constraint names that the trial gave no finite number for

    @property
    def feasible(self) -> bool:
        """Whether every constraint holds."""
        return self.violation <= 0


_UNCONSTRAINED = Feasibility(0.0)


def parse_constraint(expression: Any) -> Constraint:
    """Parse ``"memory_gb <= 16"`` into a :class:`Constraint`.

    Raises:
        ConfigurationError: anything but ``<metric> <= <number>`` or ``<metric> >= <number>``.
    """
    match = _GRAMMAR.match(expression) if isinstance(expression, str) else None
    shape = _SHAPE.match(expression) if match is None and isinstance(expression, str) else None
    if shape is not None and shape.group(1) and not shape.group(1)[0].isdigit():
        raise ConfigurationError(
            f"constraint {expression!r} is not understood: a metric name (here {shape.group(1)!r}) may "
            "hold only letters, digits, '_', '.', '-' and '/', starting with a letter or '_'; report the "
            "metric so named")
    if match is None:
        raise ConfigurationError(
            f"constraint {expression!r} is not understood; write '<metric> <= <number>' or "
            "'<metric> >= <number>', for example 'memory_gb <= 16'")
    bound = float(match.group(3))
    if not math.isfinite(bound):
        raise ConfigurationError(f"constraint {expression!r} needs a finite bound")
    return Constraint(match.group(1), match.group(2), bound)


#: No ``objectives`` given to :func:`normalize_constraints`: a stored configuration read back (it loads).
UNCHECKED: Any = object()


def normalize_constraints(value: Any, objectives: Mapping[str, str] | None = UNCHECKED) -> list[str] | None:
    """Check a list of constraint expressions; ``None`` stays ``None``.

    Args:
        value: the expressions.
        objectives: the declared objectives of the experiment being built (``None``: one, unnamed);
            a constraint on ``objective`` is checked against them only when they are given.

    Returns:
        The expressions in canonical form (``"memory_gb <= 16"``), in order.

    Raises:
        ConfigurationError: not a list of strings, an expression that does not parse, or one on
            ``objective`` when no objective has that name (constraints read the metrics beside
            the objective, so it could never hold) or on ``constraints`` (a list, never a number).
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigurationError(
            f"constraints must be a list of expressions such as ['memory_gb <= 16'], got {value!r}")
    parsed = [parse_constraint(expression) for expression in value]
    named = objectives is UNCHECKED or "objective" in (objectives or {})
    for constraint in parsed:
        if constraint.metric == "objective" and not named:
            raise ConfigurationError(
                f"constraint '{constraint}' names the objective, which constraints do not read (they read "
                "the metrics returned beside it), so no trial would be feasible; return the value under a "
                "name of its own too, e.g. {'objective': loss, 'loss': loss}, and constrain that name")
        if constraint.metric == REPORTED_KEY:
            raise ConfigurationError(
                f"constraint '{constraint}' names {REPORTED_KEY!r}, the results key of a reported list of "
                "constraint values (each satisfied when <= 0), never one number; report the values there, or "
                "constrain a metric of another name")
    return [str(constraint) for constraint in parsed]


def feasibility(results: Mapping[str, Any], constraints: Sequence[str] | None) -> Feasibility:
    """How far the metrics in ``results`` break ``constraints`` and the reported ``"constraints"`` list.

    Args:
        results: the metrics a trial reported.
        constraints: constraint expressions (already checked), or ``None``.

    Returns:
        The total violation; a missing or non-numeric metric counts as ``inf``.
    """
    if not constraints and REPORTED_KEY not in results:  # every worker judges every other worker's trial
        return _UNCONSTRAINED
    total, reasons, missing = 0.0, [], []
    for constraint in map(parse_constraint, constraints or ()):
        value = finite_number(results.get(constraint.metric))
        if value is None:
            total = math.inf
            missing.append(constraint.metric)
            reasons.append(_unusable(constraint, results.get(constraint.metric)))
            continue
        excess = constraint.violation(value)
        if excess > 0:
            total += excess
            reasons.append(f"{constraint.metric}={_exact(value)} breaks '{constraint}'")
    reported = results.get(REPORTED_KEY)
    if reported is not None:
        values = [finite_number(v) for v in reported] if isinstance(reported, (list, tuple)) else [None]
        for k, value in enumerate(values):
            if value is None:
                total = math.inf
                reasons.append(f"reported constraints[{k}] is not a finite number")
            elif value > 0:
                total += value
                reasons.append(f"reported constraints[{k}]={value:g} > 0")
    return Feasibility(total, tuple(reasons), tuple(missing))


def _unusable(constraint: Constraint, value: Any) -> str:
    """Why ``value`` of ``constraint``'s metric says nothing of it: absent, or there but no finite number.

    A NaN reported (a diverged measure) was said to be "not reported", sending the user to look for a
    metric the objective did return.
    """
    if value is None:
        return f"the trial did not report metric {constraint.metric!r} named by constraint '{constraint}'"
    return (f"the trial reported metric {constraint.metric!r} as {value!r:.40}, not a finite number, so "
            f"constraint '{constraint}' cannot hold")


def unusable_hint(results: Mapping[str, Any], metrics: Collection[str]) -> str:
    """What to do about constraint ``metrics`` that ``results`` left unusable: absent, or no finite number.

    Said once per metric (see :meth:`orchard.worker.Worker.finish`). A NaN metric was told "return each
    metric a constraint names", which it had: a diverged run's NaN is a value, and the remedy differs.
    """
    absent = [m for m in metrics if results.get(m) is None]
    hints = [] if not absent else [("constraints read the results the objective returns, not its params: "
                                    "return each metric a constraint names")]
    if len(absent) < len(metrics):
        hints.append("a metric that is no finite number (a diverged run's NaN, a text) keeps the trial "
                     "infeasible: return a finite number, or break the trial instead: raise, or exit "
                     "non-zero from a script")
    return f" ({'; '.join(hints)})"


def unrecorded(results: Mapping[str, Any], constraints: Sequence[str] | None) -> list[str]:
    """The metrics ``constraints`` read that ``results`` lack (absent or ``None``), in order, once each.

    Unlike a value on the wrong side, or not a number, an absence is no evidence of infeasibility:
    a warm-start source that did not measure the metric (:mod:`orchard.warm_start`).
    """
    metrics = dict.fromkeys(parse_constraint(expression).metric for expression in constraints or ())
    return [metric for metric in metrics if results.get(metric) is None]


def reported_problem(results: Mapping[str, Any]) -> str | None:
    """Why the ``"constraints"`` a trial reported are not a list of numbers (none NaN), or ``None``.

    A trial reporting them otherwise (one number, a text, NaN) is broken with this message rather
    than judged infeasible: no limit it meant to set could be read from them.
    """
    if REPORTED_KEY not in results:
        return None
    reported = results[REPORTED_KEY]
    if isinstance(reported, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in reported):
        return None
    return (f"results[{REPORTED_KEY!r}] is {reported!r:.60}, not a list of numbers; report the constraints "
            f"as a list, each satisfied when <= 0 (e.g. {{{REPORTED_KEY!r}: [memory_gb - 16]}}), or name the "
            "metric otherwise")
