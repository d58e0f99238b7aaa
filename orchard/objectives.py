"""Several objectives: declaring them, ranking points by Pareto dominance (their hypervolume is in
:mod:`orchard.hypervolume`).

Everything here is pure arithmetic on tuples of floats. Objective vectors are
always in *minimisation form*: an objective declared ``"max"`` is negated by
:func:`minimized` before it reaches sorting or hypervolume.

Ranking uses *constrained domination* (Deb's rule): a feasible point beats an
infeasible one; of two infeasible points the one with the smaller total
violation wins; two feasible points compare by Pareto dominance.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from orchard.constraints import REPORTED_KEY
from orchard.errors import ConfigurationError
from orchard.hypervolume import HYPERVOLUME_OBJECTIVES, hypervolume, reference_point
from orchard.trial import finite_float

__all__ = [
    "DIRECTIONS",
    "HYPERVOLUME_OBJECTIVES",
    "Shown",
    "Vector",
    "crowding_distance",
    "dominates",
    "first_front",
    "hypervolume",
    "minimized",
    "named_values",
    "non_dominated_sort",
    "normalize_objectives",
    "pairwise_fronts",
    "reference_point",
    "returned",
    "shown_value",
]

#: The directions an objective may take.
DIRECTIONS = ("min", "max")
#: Other words taken for them (Optuna's), stored as the direction they name.
DIRECTION_ALIASES = {"minimize": "min", "maximize": "max"}
#: An objective vector in minimisation form.
Vector = Sequence[float]
#: Rows of the pairwise comparison computed at once by :func:`non_dominated_sort` (bounds its memory).
_BLOCK = 512


def normalize_objectives(value: Any) -> dict[str, str] | None:
    """Check a declaration of several objectives; ``None`` stays ``None`` (one objective).

    Args:
        value: ``{"error": "min", "latency_ms": "max"}``, names in their order of
            importance (the first is the trial's scalar ``objective``).

    Returns:
        A new dict of name -> ``"min"``/``"max"`` (directions lower-cased, Optuna's ``"minimize"``
        and ``"maximize"`` taken for them), in order.

    Raises:
        ConfigurationError: not a mapping, empty, a name that is not a non-empty
            string or is given twice (``"a"`` and ``"a "``), a name ``"constraints"`` (the key of
            reported constraint values), or a direction other than min/max.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"objectives must be a mapping of name to 'min' or 'max', got {type(value).__name__}; "
            "for example objectives={'error': 'min', 'latency_ms': 'min'}")
    if not value:
        raise ConfigurationError("objectives is empty; name at least one objective, or leave it unset")
    checked: dict[str, str] = {}
    for name, direction in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"objective name {name!r} must be a non-empty string")
        word = direction.strip().lower() if isinstance(direction, str) else None
        word = DIRECTION_ALIASES.get(word, word) if word is not None else None
        if word not in DIRECTIONS:
            raise ConfigurationError(
                f"objective {name!r} has direction {direction!r}; it must be 'min' or 'max' "
                "(or 'minimize', 'maximize')")
        if name.strip() == REPORTED_KEY:
            raise ConfigurationError(
                f"objective {name!r} clashes with the results key {REPORTED_KEY!r}, where a trial reports "
                "its list of constraint values; name the objective otherwise")
        if name.strip() in checked:
            raise ConfigurationError(f"objective {name.strip()!r} is named twice ({name!r}); name each objective once")
        checked[name.strip()] = str(word)
    return checked


def minimized(values: Mapping[str, float], objectives: Mapping[str, str]) -> tuple[float, ...]:
    """The objective vector of ``values`` in minimisation form (``"max"`` objectives negated).

    Raises:
        KeyError: an objective is missing from ``values``.
        ValueError: an objective is not a finite number (NaN, infinite, an int past a float, a bool, a text);
            a stored record holds one only if another program wrote it, and its callers leave it out.
    """
    vector = []
    for name, direction in objectives.items():
        number = finite_float(values[name])
        if number is None:
            raise ValueError(f"objective {name!r} is not a finite number")
        vector.append(-number if direction == "max" else number)
    return tuple(vector)


def returned(vector: Vector, objectives: Mapping[str, str]) -> list[float]:
    """A minimisation-form ``vector`` back in the objectives' own directions (as the objective gave it)."""
    return [-v if d == "max" else v for v, d in zip(vector, objectives.values(), strict=True)]


def named_values(vector: Vector, objectives: Mapping[str, str]) -> str:
    """A minimisation-form ``vector`` shown as returned, each value by name: ``"acc 0.917, err 0.0741"``."""
    return ", ".join(f"{name} {value:.6g}" for name, value in zip(objectives, returned(vector, objectives),
                                                                   strict=True))


def shown_value(value: float | tuple[float, ...], objectives: Mapping[str, str] | None) -> str:
    """A stored (minimised) value as the objectives gave it: a vector in parentheses, each value by
    name (:func:`named_values`); one number under the first objective's name, if declared (``"acc 0.97"``)."""
    if isinstance(value, tuple):
        if objectives is not None and len(objectives) == len(value):
            return f"({named_values(value, objectives)})"
        return f"({', '.join(f'{v:.6g}' for v in value)})"
    shown = Shown.of(objectives)
    return f"{shown.name} {shown.value(value):.6g}" if objectives else f"{value:.6g}"


def dominates(a: Vector, b: Vector) -> bool:
    """Whether ``a`` Pareto-dominates ``b``: no worse anywhere, strictly better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated_sort(points: Sequence[Vector], violations: Sequence[float] | None = None) -> list[list[int]]:
    """Split ``points`` into fronts under constrained domination (fast non-dominated sort).

    Two or three objectives without constraints are sorted in ``n log n`` / ``n log² n``
    (:func:`_two_objective_fronts`, :func:`_three_objective_fronts`); otherwise every pair is
    compared by numpy, a block of rows at a time (:func:`pairwise_fronts`).

    Args:
        points: objective vectors in minimisation form.
        violations: each point's total constraint violation (``<= 0``: feasible);
            all feasible when ``None``.

    Returns:
        Fronts of indices into ``points``, best first; each front keeps index order.
    """
    n = len(points)
    if n == 0:
        return []
    if len(points[0]) == 2 and (violations is None or max(violations) <= 0):
        return _two_objective_fronts([(float(p[0]), float(p[1])) for p in points])
    if len(points[0]) == 3 and (violations is None or max(violations) <= 0):
        triples = [(float(p[0]), float(p[1]), float(p[2])) for p in points]
        if all(math.isfinite(x) for p in triples for x in p):  # NaN has no order to sort by
            return _three_objective_fronts(triples)
    return pairwise_fronts(points, violations)


def pairwise_fronts(points: Sequence[Vector], violations: Sequence[float] | None = None) -> list[list[int]]:
    """:func:`non_dominated_sort` comparing every pair (numpy): any number of objectives, constraints too."""
    import numpy as np  # not at the top: `orchard list` needs no numpy (0.15 s)

    n = len(points)
    if n == 0:
        return []
    values = np.asarray(points, dtype=float).reshape(n, -1)
    violation = np.zeros(n) if violations is None else np.maximum(np.asarray(violations, dtype=float), 0.0)
    feasible = violation <= 0
    beats = np.empty((n, n), dtype=bool)  # beats[i, j]: i beats j (Deb's rule, see the module docstring)
    for start in range(0, n, _BLOCK):
        rows = slice(start, start + _BLOCK)
        mine, others = values[rows, None, :], values[None, :, :]
        dominated = (mine <= others).all(axis=2) & (mine < others).any(axis=2)
        f_i, f_j = feasible[rows, None], feasible[None, :]
        beats[rows] = (f_i & f_j & dominated) | (f_i & ~f_j) | (~f_i & ~f_j & (violation[rows, None] < violation[None, :]))
    beaten_by = beats.sum(axis=0)
    left = np.ones(n, dtype=bool)
    fronts: list[list[int]] = []
    while left.any():
        front = np.flatnonzero(left & (beaten_by == 0))
        fronts.append([int(i) for i in front])
        left[front] = False
        beaten_by -= beats[front].sum(axis=0)
    return fronts


def _two_objective_fronts(points: list[tuple[float, float]]) -> list[list[int]]:
    """:func:`non_dominated_sort` of feasible points of two objectives, in ``n log n``.

    In lexicographic order, whatever dominates a point comes before it, and the lowest second
    objective of each front found so far grows with the front's number: a point joins the first
    front whose lowest second objective is above its own (identical points share a front). The
    pairwise comparison cost each verdict of an ``asha`` pruner 5 s with 6,000 trials at a rung.
    """
    lowest: list[float] = []  # per front, the lowest second objective among its points so far
    front_of = [0] * len(points)
    previous, placed = None, -1
    for i in sorted(range(len(points)), key=points.__getitem__):
        if points[i] != previous:
            previous, placed = points[i], bisect.bisect_right(lowest, points[i][1])
            if placed == len(lowest):
                lowest.append(points[i][1])
            else:
                lowest[placed] = points[i][1]
        front_of[i] = placed
    fronts: list[list[int]] = [[] for _ in lowest]
    for i, number in enumerate(front_of):
        fronts[number].append(i)
    return fronts


def _three_objective_fronts(points: list[tuple[float, float, float]]) -> list[list[int]]:
    """:func:`non_dominated_sort` of feasible points of three objectives, in ``n log² n`` (plus list moves).

    In lexicographic order, whatever dominates a point comes before it; an earlier point dominates it when it
    is as good on the last two objectives, which each front's staircase on those two answers. A front that
    dominates the point is preceded by fronts that do too, so the point's front (the first that does not) is
    found by bisection. Comparing every pair cost 100 MB and seconds for 10,000 points.
    """
    stairs: list[tuple[list[float], list[float]]] = []  # per front: the last two objectives, y up and z down
    front_of = [0] * len(points)
    previous, placed = None, -1
    for i in sorted(range(len(points)), key=points.__getitem__):
        if points[i] != previous:  # an identical point shares its twin's front
            _, y, z = points[i]
            low, high = 0, len(stairs)
            while low < high:
                middle = (low + high) // 2
                ys, zs = stairs[middle]
                at = bisect.bisect_right(ys, y)
                low, high = (middle + 1, high) if at > 0 and zs[at - 1] <= z else (low, middle)
            previous, placed = points[i], low
            if placed == len(stairs):
                stairs.append(([], []))
            ys, zs = stairs[placed]
            start = end = bisect.bisect_left(ys, y)
            while end < len(ys) and zs[end] >= z:  # now dominated on the last two
                end += 1
            ys[start:end], zs[start:end] = [y], [z]
        front_of[i] = placed
    fronts: list[list[int]] = [[] for _ in stairs]
    for i, number in enumerate(front_of):
        fronts[number].append(i)
    return fronts


def _three_objective_front(points: list[tuple[float, float, float]]) -> list[int]:
    """:func:`first_front` of three objectives: in lexicographic order, a point is dominated when an earlier
    one is as good on the last two objectives, which a staircase of the front's last two answers."""
    ys: list[float] = []  # the front so far on the last two objectives: y ascending, z descending
    zs: list[float] = []
    front: list[int] = []
    previous, kept = None, False
    for i in sorted(range(len(points)), key=points.__getitem__):
        _, y, z = points[i]
        if points[i] != previous:  # an identical point shares its twin's standing
            at = bisect.bisect_right(ys, y)
            previous, kept = points[i], not (at > 0 and zs[at - 1] <= z)
            if kept:
                start = end = bisect.bisect_left(ys, y)
                while end < len(ys) and zs[end] >= z:  # now dominated on the last two
                    end += 1
                ys[start:end], zs[start:end] = [y], [z]
        if kept:
            front.append(i)
    return sorted(front)


def first_front(points: Sequence[Vector]) -> list[int]:
    """The indices of the points no other point dominates, in index order (all feasible).

    ``non_dominated_sort(points)[0]`` without ranking the rest: the points are taken in
    lexicographic order, where whatever dominates a point comes before it, and each is
    compared with the front found so far only (a dominated point's dominators are
    dominated by a point of the front too). The cost grows with the points times the
    front's size, not with their square: 20,000 trials with a front of tens take a
    fraction of a second, where ranking them all took a minute and half a gigabyte.
    """
    import numpy as np

    n = len(points)
    if n == 0:
        return []
    if len(points[0]) == 2:  # a front of 20,000 (a converged search) took 12 s compared point by point
        return _two_objective_fronts([(float(p[0]), float(p[1])) for p in points])[0]
    if len(points[0]) == 3:  # 10,000: 7 s
        return _three_objective_front([(float(p[0]), float(p[1]), float(p[2])) for p in points])
    values = np.asarray(points, dtype=float).reshape(n, -1)
    kept = np.empty_like(values)
    front: list[int] = []
    for i in np.lexsort(values.T[::-1]):
        value, members = values[i], kept[:len(front)]
        if ((members <= value).all(axis=1) & (members < value).any(axis=1)).any():
            continue
        kept[len(front)] = value
        front.append(int(i))
    return sorted(front)


def crowding_distance(points: Sequence[Vector]) -> list[float]:
    """NSGA-II's crowding distance of each point within one front (boundary points: ``inf``)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    distance = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][m], i))
        low, high = points[order[0]][m], points[order[-1]][m]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for k in range(1, n - 1):
            distance[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (high - low)
    return distance


@dataclasses.dataclass(frozen=True)
class Shown:
    """How figures, pages and progress bars show the trials' objective: the first declared one, named.

    A trial's ``objective`` and its reports are stored minimised (a ``"max"`` objective
    negated, see :func:`minimized`); they are shown as the objective returned them, so
    ``objectives={"accuracy": "max"}`` is drawn as accuracy 0.97, not as an "objective"
    of -0.97, and its best is the highest.
    """

    name: str = "objective"
    sign: float = 1.0  # -1.0 for a "max" objective
    of_several: int = 0  # how many objectives the experiment declares, when more than one

    @classmethod
    def of(cls, objectives: Mapping[str, str] | None) -> Shown:
        """How to show the objective of an experiment declaring ``objectives`` (``None``: one, unnamed)."""
        if not objectives:
            return cls()
        name, direction = next(iter(objectives.items()))
        return cls(name, -1.0 if direction == "max" else 1.0, len(objectives) if len(objectives) > 1 else 0)

    @classmethod
    def stored(cls, objectives: Any) -> Shown:
        """How to show the objective of a stored configuration's ``objectives``, whatever is there: a value
        Orchard does not accept as a declaration (another program's) is shown as stored, unnamed."""
        try:
            return cls.of(normalize_objectives(objectives))
        except ConfigurationError:
            return cls()

    @property
    def higher_is_better(self) -> bool:
        return self.sign < 0

    @property
    def label(self) -> str:
        """The axis label: the objective's name, and which of several it is."""
        return self.name + (f" (the first of {self.of_several} objectives)" if self.of_several else "")

    def value(self, minimised: float) -> float:
        """The value the objective returned, from its stored (minimised) form."""
        return self.sign * minimised
