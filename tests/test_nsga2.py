"""NSGA-II from the shared history: generations, elitist survival, children, determinism."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from orchard.algorithms import Observation, make_algorithm
from orchard.algorithms._nsga2 import generations, population
from orchard.algorithms.base import BaseAlgorithm, SeenPoints
from orchard.errors import ConfigurationError
from orchard.objectives import dominates, hypervolume, non_dominated_sort
from orchard.space import Space, params_hash

SPACE = Space.from_config({
    "x": "uniform(0, 1)", "y": "uniform(0, 1)", "lr": "loguniform(1e-4, 1)", "k": "randint(1, 5)",
    "kind": "choices(['a', 'b', 'c'])",
})


def zdt1(params: dict[str, Any]) -> tuple[float, float]:
    g = 1 + 9 * params["y"]
    return params["x"], g * (1 - math.sqrt(params["x"] / g))


def observe(params: dict[str, Any], when: float, violation: float = 0.0) -> Observation:
    values = zdt1(params)
    return Observation(params, values[0], when, values, violation <= 0, violation)


def history(n: int, seed: int = 0) -> list[Observation]:
    rng = random.Random(seed)
    points = [{"x": rng.random(), "y": rng.random(), "lr": 10 ** rng.uniform(-4, 0), "k": rng.randint(1, 4),
               "kind": rng.choice("abc")} for _ in range(n)]
    return [observe(p, float(i)) for i, p in enumerate(points)]


def test_generations_follow_completion_order_not_arrival_order() -> None:
    observed = history(25)
    shuffled = random.Random(1).sample(observed, len(observed))
    gens = generations(shuffled, 10)
    assert len(gens) == 2  # the 5 of the third generation still filling are no parents yet
    assert [m.params for m in gens[0]] == [o.params for o in observed[:10]]


def test_every_worker_computes_the_same_population_from_the_same_history() -> None:
    observed = history(47)
    for order in (observed, list(reversed(observed)), random.Random(2).sample(observed, 47)):
        assert [params_hash(m.params) for m in population(order, 10)] == \
            [params_hash(m.params) for m in population(observed, 10)]


def test_survival_is_elitist_and_prefers_feasible_members() -> None:
    observed = history(40)
    survivors = population(observed, 10)
    first_front = non_dominated_sort([o.values for o in observed[:40]])[0]  # type: ignore[misc]
    best = {params_hash(observed[i].params) for i in first_front}
    kept = {params_hash(m.params) for m in survivors}
    assert best <= kept or kept <= best  # the non-dominated points are never dropped for worse ones
    infeasible = [observe(o.params, o.end_time or 0.0, violation=1.0) for o in observed[:5]]
    mixed = population([*infeasible, *observed[5:]], 10)
    assert all(m.violation == 0 for m in mixed)


def test_same_history_and_seed_give_the_same_children_and_children_are_unseen_and_valid() -> None:
    observed = history(30)
    pending = [{"x": 0.5, "y": 0.5, "lr": 0.01, "k": 2, "kind": "a"}]
    algo = make_algorithm({"nsga2": {"population_size": 10}}, SPACE, seed=7)
    children = algo.suggest(observed, pending, n=4)
    assert children == make_algorithm({"nsga2": {"population_size": 10}}, SPACE, seed=7).suggest(
        list(reversed(observed)), pending, n=4)
    taken = {params_hash(p) for p in [*(o.params for o in observed), *pending]}
    assert len({params_hash(c) for c in children} | taken) == len(taken) + 4
    for child in children:
        assert SPACE.validate(child) == child
        assert type(child["k"]) is int and child["kind"] in "abc"
    assert algo.suggest(observed, pending[:0], n=1) != make_algorithm(
        {"nsga2": {"population_size": 10}}, SPACE, seed=8).suggest(observed, pending[:0], n=1)


def test_nsga2_beats_random_search_on_zdt1() -> None:
    space = Space.from_config({f"x{i}": "uniform(0, 1)" for i in range(5)})

    def zdt1_5(p: dict[str, Any]) -> tuple[float, float]:
        g = 1 + 9 * sum(p[f"x{i}"] for i in range(1, 5)) / 4
        return p["x0"], g * (1 - math.sqrt(p["x0"] / g))

    def run(name: str, seed: int) -> float:
        algo = make_algorithm({name: {"population_size": 20}} if name == "nsga2" else name, space, seed=seed)
        observed: list[Observation] = []
        seen = SeenPoints()  # kept incrementally, as the worker does
        for step in range(200):
            (params,) = algo.suggest(observed, [], n=1, seen=seen)
            seen.add(params)
            values = zdt1_5(params)
            observed.append(Observation(params, values[0], float(step), values))
        front = [o.values for o in observed if not any(dominates(p.values, o.values) for p in observed)]  # type: ignore[arg-type]
        return hypervolume(front, (1.1, 11.0))  # type: ignore[arg-type]

    wins = sum(run("nsga2", seed) > run("random", seed) for seed in range(3))
    assert wins == 3


@pytest.mark.parametrize("options", [{"population_size": 2}, {"crossover_prob": 1.5}, {"eta_mutation": -1}])
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="nsga2's"):
        make_algorithm({"nsga2": options}, SPACE)


def test_children_run_at_the_high_fidelity_whatever_their_parents_ran_at() -> None:
    """Parents from a warm start at fidelity 1 or 3 passed it on: nsga2's own trials ran at low fidelity."""
    space = Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 9)"})
    rng = random.Random(0)
    completed = [Observation({"x": rng.random(), "epochs": rng.choice([1, 3])}, 0.0, float(i),
                             (rng.random(), rng.random())) for i in range(16)]
    children = make_algorithm({"nsga2": {"population_size": 4}}, space, seed=1).suggest(completed, [], n=20)
    assert {child["epochs"] for child in children} == {9}


def test_children_of_a_huge_integer_range_stay_inside_it() -> None:
    """Bred through floats, a randint past 2**53 gave children outside it (2**53 for 2**53 + 1 .. 2**53 + 10)."""
    space = Space.from_config({"k": "randint(9007199254740993, 9007199254741003)",
                               "s": "randint(0, 4611686018427387904)"})
    ends = [{"k": 2**53 + 1, "s": 0}, {"k": 2**53 + 10, "s": 2**62 - 1}]
    completed = [Observation(ends[i % 2], 0.0, float(i), (float(i), float(-i))) for i in range(8)]
    algorithm = make_algorithm({"nsga2": {"population_size": 4, "mutation_prob": 1.0}}, space, seed=3)
    for child in algorithm.suggest(completed, [], n=30):
        space.validate(child)


def test_a_generation_not_yet_settled_changes_no_child() -> None:
    """Children of a history whose second generation ended after ``completes_after`` come from generation 0:
    whatever that generation holds, so a view that lacks one of its members breeds as the final history does."""
    from orchard.algorithms.base import Pending

    first, later, other = history(4, seed=1), history(4, seed=2), history(4, seed=3)
    later = [observe(o.params, 10.0 + i) for i, o in enumerate(later)]
    other = [observe(o.params, 10.0 + i) for i, o in enumerate(other)]

    def children(completed: list[Observation], bound: float) -> list[dict[str, Any]]:
        pending = Pending([], [], SeenPoints(), completes_after=bound)
        return make_algorithm({"nsga2": {"population_size": 4}}, SPACE, seed=5).suggest(completed, pending, n=3)

    settled_first = children([*first, *later], bound=10.0)
    assert settled_first == children([*first, *other], bound=10.0)  # generation 1 is not a parent population yet
    assert children([*first, *later], bound=math.inf) != children([*first, *other], bound=math.inf)
    assert make_algorithm({"nsga2": {"population_size": 4}}, SPACE, seed=5).suggest(
        [*first, *later], [], n=3) == children([*first, *later], bound=math.inf)  # a plain list bounds nothing


@pytest.mark.parametrize(("beat", "b_ends"), [(None, 4.0), (3.5, 3.2)], ids=["late-write", "beat-in-flight"])
def test_a_completion_shown_after_a_later_stamped_one_never_reorders_what_nsga2_reads(
        beat: float | None, b_ends: float) -> None:
    """Worker A stamps its completion at t=3 but its write lands after B's, stamped later (MongoDB: clients
    stamp before the server orders). A view read in between must not put B where A ends up. With ``beat``,
    A's pacemaker (which beats until the completion lands) sent a heartbeat stamped after A's end time that
    landed first: the view then holds A reserved with a heartbeat later than its end."""
    from orchard.algorithms.base import BaseAlgorithm
    from orchard.history import History
    from orchard.storages import get_storage
    from tests.conftest import backend_uri

    storage = get_storage(backend_uri("mongomock", None, None))  # type: ignore[arg-type]
    clock = [1.0]
    storage.now = lambda: clock[0]  # type: ignore[method-assign]
    exp = storage.create_experiment("e", {"space": SPACE.config()})
    point = history(2)
    a = storage.register_trial(exp, point[0].params, worker="A")
    clock[0] = 2.0
    b = storage.register_trial(exp, point[1].params, worker="B")
    view = History(storage, exp)

    def settled_order() -> list[str]:
        view.refresh()
        ordered = sorted(BaseAlgorithm.settled(view.observations, view.pending()), key=lambda o: o.end_time or 0)
        return [params_hash(o.params) for o in ordered]

    if beat is not None:
        clock[0] = beat
        storage.heartbeat_trial(a.id, "A")
    clock[0] = b_ends
    storage.complete_trial(b.id, "B", 1.0)  # B's completion is visible first
    shown_first = settled_order()
    assert view.completes_after() == 1.0  # A's start: A's end cannot be stamped before it
    clock[0] = 3.0  # stamped before B's by A's worker, written after it
    storage.complete_trial(a.id, "A", 2.0)
    final = settled_order()
    assert final == [params_hash(point[0].params), params_hash(point[1].params)]
    assert shown_first == final[:len(shown_first)] == []
    storage.close()


def test_a_storage_that_stamps_under_its_lock_settles_every_completion_at_once(tmp_path: Any) -> None:
    from orchard.history import History
    from orchard.storages import get_storage

    storage = get_storage(str(tmp_path / "db.pkl"))
    exp = storage.create_experiment("e", {"space": SPACE.config()})
    point = history(2)
    storage.register_trial(exp, point[0].params, worker="A")
    b = storage.register_trial(exp, point[1].params, worker="B")
    storage.complete_trial(b.id, "B", 1.0)
    view = History(storage, exp)
    view.refresh()
    assert view.completes_after() == math.inf and len(view.observations) == 1
    storage.close()



def test_an_observation_without_an_end_time_is_never_a_generation_member() -> None:
    """It sorted last, so each new completion moved it: with 3 completions it completed generation 0 in one
    view, and the final history put a later completion there. Left out, the generations only grow at their end."""
    timeless = Observation(history(1, seed=9)[0].params, 0.5, None, (0.5, 0.5))
    completed = history(5)
    early = population(BaseAlgorithm.settled([*completed[:3], timeless], []), 4)  # what nsga2 breeds from
    final = population(BaseAlgorithm.settled([*completed, timeless], []), 4)
    assert final == population(completed, 4) and early == []
