"""Several objectives and constraints: declarations, Pareto ranking, hypervolume, the constraint grammar.

Pure functions only; the module runs in well under a second.
"""

from __future__ import annotations

import math
import random
import sys
import time

import pytest

from orchard.constraints import feasibility, normalize_constraints, parse_constraint
from orchard.errors import ConfigurationError
from orchard.objectives import (
    crowding_distance,
    dominates,
    first_front,
    hypervolume,
    minimized,
    non_dominated_sort,
    normalize_objectives,
    pairwise_fronts,
    reference_point,
)


def test_optunas_words_for_the_directions_are_taken_and_stored_normalised() -> None:
    """objectives={'acc': 'maximize'} was refused ('must be 'min' or 'max'') though 'MAX' was taken."""
    assert normalize_objectives({"acc": "maximize", "err": " Minimize "}) == {"acc": "max", "err": "min"}


def test_objectives_are_normalized_in_order() -> None:
    assert normalize_objectives({"error": "min", "latency_ms": "MAX"}) == {"error": "min", "latency_ms": "max"}
    assert list(normalize_objectives({"b": "min", "a": "min"}) or {}) == ["b", "a"]
    assert normalize_objectives(None) is None


@pytest.mark.parametrize(("value", "words"), [
    ({"error": "lowest"}, "'min' or 'max'"),
    ({}, "empty"),
    ({3: "min"}, "non-empty string"),
    ({"": "min"}, "non-empty string"),
    (["error"], "mapping"),
])
def test_bad_objectives_are_one_clear_error(value: object, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        normalize_objectives(value)


def test_maximised_objectives_are_negated() -> None:
    assert minimized({"acc": 0.9, "size": 3}, {"acc": "max", "size": "min"}) == (-0.9, 3.0)


def test_a_stored_objective_that_is_no_finite_number_leaves_its_trial_out_instead_of_failing() -> None:
    """Another program's completed trial with a 5,000-digit int as an objective: OverflowError (which no
    caller expects) in pareto_front, hypervolume and every nsga2 worker's history."""
    import dataclasses

    import orchard

    exp = orchard.build_experiment("m", space={"x": "uniform(0, 1)"}, objectives={"a": "min", "b": "max"},
                                   storage="memory://", algorithm={"nsga2": {"population_size": 4}}, max_trials=6)
    good = exp.insert({"x": 0.5}, results={"a": 1.0, "b": 2.0})
    hostile = [{"a": 10**5000, "b": 1.0}, {"a": math.nan, "b": 1.0}, {"a": 1.0, "b": -math.inf}, {"a": True, "b": 1.0}]
    exp.storage.restore_trials(exp.id, [dataclasses.replace(good, params={"x": (i + 1) / 100}, results=results)
                                        for i, results in enumerate(hostile)])
    assert [t.id for t in exp.pareto_front()] == [good.id]
    assert math.isfinite(exp.hypervolume()[0])
    assert exp.workon(lambda x: {"a": x, "b": x}, executor="single")["counts"]["completed"] == 6 + 1 + len(hostile)  # the inserted: apart
    with pytest.raises(ValueError, match="objective 'a' is not a finite number"):
        minimized({"a": 10**5000}, {"a": "min"})



    assert dominates((1, 2), (1, 3))
    assert not dominates((1, 2), (1, 2))
    assert not dominates((1, 3), (2, 2))


def test_fronts_of_a_known_set() -> None:
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (6, 6), (2, 4)]
    assert non_dominated_sort(points) == [[0, 1, 2], [3, 5], [4]]


def test_feasible_beats_infeasible_and_less_violation_beats_more() -> None:
    points = [(0, 0), (5, 5), (1, 1)]
    # the dominating point is infeasible: the feasible (5, 5) ranks first
    assert non_dominated_sort(points, [2.0, 0.0, 1.0]) == [[1], [2], [0]]


def test_sorting_agrees_with_brute_force() -> None:
    rng = random.Random(3)
    points = [(rng.randint(0, 6), rng.randint(0, 6), rng.randint(0, 6)) for _ in range(40)]
    first = set(non_dominated_sort(points)[0])
    assert first == {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}
    assert sorted(i for front in non_dominated_sort(points) for i in front) == list(range(40))


def test_fronts_of_two_objectives_agree_with_pairwise_domination_ties_included() -> None:
    """Two objectives are sorted in n log n (no pairwise matrix): the same fronts, in index order."""
    rng = random.Random(4)
    for _ in range(300):
        points = [(float(rng.randint(0, 5)), float(rng.randint(-3, 2))) for _ in range(rng.randint(1, 40))]
        left, fronts = set(range(len(points))), []
        while left:  # peel: the points no remaining point dominates
            front = sorted(i for i in left if not any(dominates(points[j], points[i]) for j in left))
            fronts.append(front)
            left -= set(front)
        assert non_dominated_sort(points) == fronts
        assert non_dominated_sort(points, [0.0] * len(points)) == fronts
        assert first_front(points) == fronts[0]


def test_fronts_of_three_objectives_agree_with_the_pairwise_sort_ties_included() -> None:
    """Three objectives are sorted in n log² n, no longer by comparing every pair: the same fronts, in index
    order, as the pairwise sort (still used with constraints and for more objectives)."""
    rng = random.Random(6)
    for _ in range(300):
        grid = rng.random() < 0.6  # ties, repeated points and points equal on one or two objectives
        points = [tuple(float(rng.randint(-2, 3)) if grid else rng.random() for _ in range(3))
                  for _ in range(rng.randint(1, 80))]
        assert non_dominated_sort(points) == pairwise_fronts(points)
        assert non_dominated_sort(points, [0.0] * len(points)) == pairwise_fronts(points)
    points = [(0.0, math.nan, 1.0), (1.0, 1.0, 1.0), (0.5, 2.0, 0.5)]  # NaN has no order: pairwise, as before
    assert non_dominated_sort(points) == pairwise_fronts(points)


def test_ranking_10000_points_of_three_objectives_is_quick() -> None:
    """The pairwise sort took 10 s and a 10,000 x 10,000 matrix for the pruner's ranking at a crowded rung."""
    rng = random.Random(3)
    points = [(rng.random(), rng.random(), rng.random()) for _ in range(10_000)]
    started = time.process_time()
    fronts = non_dominated_sort(points)
    assert time.process_time() - started < 2.0
    assert sorted(i for front in fronts for i in front) == list(range(10_000))
    assert fronts[0] == first_front(points)


@pytest.mark.parametrize("objectives", [2, 3])
def test_the_first_front_of_a_large_front_is_quick(objectives: int) -> None:
    """Each point was compared with the front found so far: 12 s for a 20,000-trial front of two
    objectives, 7 s for 10,000 of three."""
    rng = random.Random(objectives)
    front = []
    for _ in range(10_000):  # on the unit sphere's positive part: none dominates another
        v = [abs(rng.gauss(0, 1)) for _ in range(objectives)]
        front.append(tuple(x / math.sqrt(sum(y * y for y in v)) for x in v))
    started = time.process_time()
    assert first_front([*front, (1.0,) * objectives]) == list(range(10_000))
    assert time.process_time() - started < 1.5


def test_the_first_front_of_three_objectives_agrees_with_pairwise_domination_ties_included() -> None:
    rng = random.Random(7)
    for _ in range(500):
        points = [tuple(rng.randint(0, 3) for _ in range(3)) for _ in range(rng.randint(1, 40))]
        brute = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
        assert first_front(points) == brute


def test_crowding_distance_favours_isolated_points() -> None:
    distance = crowding_distance([(0, 4), (1, 3), (3, 1), (4, 0)])
    assert distance[0] == distance[3] == math.inf
    assert distance[1] == pytest.approx(distance[2])
    crowded = crowding_distance([(0, 4), (0.1, 3.9), (2, 2), (4, 0)])
    assert crowded[1] < crowded[2]


def test_hypervolume_2d_and_3d_exact() -> None:
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(1, 1)], (0, 5)) == 0.0  # not inside the reference box
    assert hypervolume([(1, 1, 1)], (2, 3, 4)) == pytest.approx(1 * 2 * 3)
    # two boxes of volume 2 and 4 overlapping in a unit cube
    assert hypervolume([(0, 1, 1), (1, 0, 0)], (2, 2, 2)) == pytest.approx(2 + 4 - 1)


def test_hypervolume_3d_matches_monte_carlo() -> None:
    rng = random.Random(0)
    points = [(rng.random(), rng.random(), rng.random()) for _ in range(15)]
    samples = [(rng.random(), rng.random(), rng.random()) for _ in range(40_000)]
    covered = sum(any(all(p[k] <= s[k] for k in range(3)) for p in points) for s in samples)
    assert hypervolume(points, (1, 1, 1)) == pytest.approx(covered / len(samples), abs=0.01)


def test_hypervolume_3d_is_exact_on_integer_points_with_ties_and_dominated_ones() -> None:
    """Counted cell by cell: a unit cell is covered when a point lies at or below its lower corner."""
    rng = random.Random(5)
    for _ in range(300):
        points = [tuple(rng.randint(0, 4) for _ in range(3)) for _ in range(rng.randint(1, 25))]
        cells = sum(any(all(p[k] <= c[k] for k in range(3)) for p in points)
                    for c in ((i, j, k) for i in range(5) for j in range(5) for k in range(5)))
        assert hypervolume(points, (5, 5, 5)) == cells


def test_hypervolume_of_a_large_3d_front_is_fast() -> None:
    """Each slice along the third objective was sorted anew, after a pairwise sort of the front: 44 s for
    a 10,000-point front, so ``orchard plot hypervolume`` of 1,000 trials on a front took 99 s."""
    rng = random.Random(1)
    front = []
    for _ in range(5000):  # points on the unit sphere's positive octant: none dominates another
        v = [abs(rng.gauss(0, 1)) for _ in range(3)]
        front.append(tuple(x / math.sqrt(sum(y * y for y in v)) for x in v))
    started = time.process_time()
    volume = hypervolume(front, (1.1, 1.1, 1.1))
    assert time.process_time() - started < 1.0
    assert volume == pytest.approx(1.1**3 - math.pi / 6, abs=0.05)  # the box but the ball's octant, nearly


def test_reference_point_is_worst_plus_a_tenth_of_the_range() -> None:
    assert reference_point([(0, 10), (10, 0)]) == pytest.approx((11, 11))
    assert reference_point([(2, 0)]) == pytest.approx((2.2, 0.1))


def test_values_at_the_ends_of_the_float_range_give_a_finite_volume_or_one_clear_error() -> None:
    # the differences and products overflowed: reference (inf, inf) and a volume of inf
    edges = [(1e308, -1e308), (-1e308, 1e308)]
    assert reference_point(edges) == pytest.approx((1.2e308, 1.2e308))
    assert reference_point([(1.7e308, 0.0)])[0] == sys.float_info.max  # capped, never inf
    # a volume within the float range is measured: 0.1 * (max + 1.7e308) + 1.0 * (max - 1.7e308)
    near = [(-1.7e308, 1.0), (1.7e308, 0.0)]
    top = sys.float_info.max
    assert hypervolume(near, reference_point(near)) == pytest.approx(top / 10 + 1.7e307 + (top - 1.7e308))
    assert hypervolume([(-1e308, 0.5, 0.0)], (1e308, 1.0, 0.5)) == pytest.approx(5e307)  # 2e308 * 0.5 * 0.5
    # one beyond it is refused in one line
    with pytest.raises(ValueError, match=r"beyond the largest float .*a smaller scale") as info:
        hypervolume(edges, reference_point(edges))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("expression", "expected"), [
    ("memory_gb <= 16", ("memory_gb", "<=", 16.0)),
    ("  latency_ms>=5.5 ", ("latency_ms", ">=", 5.5)),
    ("val.loss <= -1e-3", ("val.loss", "<=", -0.001)),
    ("val/latency_ms <= 50", ("val/latency_ms", "<=", 50.0)),  # Lightning's and TensorBoard's metric names
])
def test_constraints_parse(expression: str, expected: tuple[str, str, float]) -> None:
    constraint = parse_constraint(expression)
    assert (constraint.metric, constraint.operator, constraint.bound) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os').system('x') <= 1", "memory_gb < 16", "memory_gb <= 16 or 1", "16 >= memory_gb",
    "memory_gb <= inf", "", 3,
])
def test_unsafe_or_unknown_expressions_are_refused_quoting_them(expression: object) -> None:
    with pytest.raises(ConfigurationError, match="is not understood|finite bound") as info:
        parse_constraint(expression)
    assert repr(expression) in str(info.value)


def test_a_metric_name_outside_the_grammar_is_named_with_the_characters_it_may_hold() -> None:
    with pytest.raises(ConfigurationError, match=r"not understood: a metric name \(here 'memory gb'\) may hold only letters, digits") as info:
        parse_constraint("memory gb <= 16")
    assert "\n" not in str(info.value)


def test_normalized_constraints_are_canonical() -> None:
    assert normalize_constraints(["memory_gb<=16", "latency_ms >= 5"]) == ["memory_gb <= 16", "latency_ms >= 5"]
    with pytest.raises(ConfigurationError, match="list of expressions"):
        normalize_constraints("memory_gb <= 16")


def test_violation_sums_how_far_each_bound_is_broken() -> None:
    constraints = ["memory_gb <= 16", "latency_ms >= 5"]
    assert feasibility({"memory_gb": 12, "latency_ms": 7}, constraints).feasible
    result = feasibility({"memory_gb": 18, "latency_ms": 4}, constraints)
    assert result.violation == pytest.approx(3.0)
    assert not result.feasible


def test_a_metric_not_reported_makes_the_trial_infeasible_and_is_named() -> None:
    result = feasibility({"latency_ms": 7}, ["memory_gb <= 16"])
    assert result.violation == math.inf
    assert "memory_gb" in result.reasons[0]


def test_reported_constraint_values_follow_optunas_convention() -> None:
    assert feasibility({"constraints": [-1.0, 0.0]}, None).feasible
    assert feasibility({"constraints": [0.5, -2.0, 1.0]}, None).violation == pytest.approx(1.5)
    assert feasibility({"constraints": ["x"]}, None).violation == math.inf


def test_the_first_front_is_that_of_the_full_sort() -> None:
    rng = random.Random(7)
    for _ in range(500):
        dims, count = rng.choice([1, 2, 3, 4]), rng.randint(0, 25)
        points = [tuple(rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(dims)) for _ in range(count)]
        points += points[:rng.randint(0, 3)]  # duplicates: neither dominates the other
        assert first_front(points) == (non_dominated_sort(points)[0] if points else [])
