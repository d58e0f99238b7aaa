"""Multi-fidelity with several objectives: rungs ranked by non-dominated sorting.

``asha``/``hyperband`` promote by :func:`orchard.algorithms._rungs.pareto_order`
(front, then crowding distance, then the configuration's hash) when the
observations carry several objectives; the step pruners rank reports the same way.
"""

from __future__ import annotations

import random
from typing import Any

from orchard.algorithms import Asha, Observation, make_algorithm
from orchard.algorithms._rungs import Entry, pareto_order
from orchard.objectives import dominates
from orchard.space import Space

SPACE = {"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"}


def two(x: float, epochs: int, error: float, size: float, end_time: float | None = None,
        violation: float = 0.0) -> Observation:
    return Observation({"x": x, "epochs": epochs}, error, end_time, values=(error, size),
                       feasible=violation <= 0, violation=violation)


def asha(**options: Any) -> Asha:
    algo = make_algorithm({"asha": {"sampler": "random", "rule": "promotion", **options}},
                          Space.from_config(SPACE), seed=0)
    assert isinstance(algo, Asha)
    return algo


def test_promotion_follows_the_front_not_the_first_objective() -> None:
    # 0.1 is best on error, 0.2 best on size: both on the first front; 0.3 is dominated by 0.2 but
    # better on error than 0.2. With the first objective alone 0.1 then 0.3 would be promoted.
    rung = [two(0.1, 1, 1.0, 9.0), two(0.2, 1, 5.0, 1.0), two(0.3, 1, 2.0, 8.0),
            two(0.4, 1, 6.0, 6.0), two(0.5, 1, 7.0, 7.0), two(0.6, 1, 8.0, 9.5)]
    algo = asha()
    pending: list[dict[str, Any]] = []
    for _ in range(2):  # quota floor(6 / 3) = 2
        (params,) = algo.suggest(rung, pending)
        pending.append(params)
    assert sorted(p["x"] for p in pending if p["epochs"] == 3) == [0.1, 0.2]


def test_an_infeasible_trial_ranks_after_every_feasible_one() -> None:
    rung = [two(0.1, 1, 0.0, 0.0, violation=2.0), two(0.2, 1, 5.0, 5.0), two(0.3, 1, 6.0, 6.0)]
    assert asha().suggest(rung, []) == [{"x": 0.2, "epochs": 3}]


def test_the_order_does_not_depend_on_the_order_trials_were_seen() -> None:
    rung = [two(i / 10, 1, float(i % 4), float(7 - i % 5)) for i in range(1, 10)]
    entries = [Entry(o.objective, f"k{o.params['x']}", o) for o in rung]
    shuffled = [random.Random(seed).sample(entries, len(entries)) for seed in range(20)]
    assert len({tuple(e.key for e in pareto_order(p)) for p in shuffled}) == 1
    front = {o.params["x"] for o in rung if not any(dominates(p.values, o.values) for p in rung)}  # type: ignore[arg-type]
    assert {e.observation.params["x"] for e in pareto_order(entries)[: len(front)]} == front


def test_stopping_rule_judges_each_arrival_by_its_front() -> None:
    # Arrival order by end_time: 0.1 is first (survives); 0.2 and 0.3 are dominated by 0.1 (top 1 of
    # 2 and of 3: they stop); 0.4 dominates everything: it survives.
    history = [two(0.1, 1, 1.0, 5.0, 1.0), two(0.2, 1, 2.0, 6.0, 2.0), two(0.3, 1, 6.0, 6.0, 3.0),
               two(0.4, 1, 0.5, 0.5, 4.0)]
    algo = asha(rule="stopping")
    algo.ladder.update(history)
    survivors = [e.observation.params["x"] for e in algo.ladder.survivors((0, 0))]
    assert set(survivors) == {0.1, 0.4} and survivors[0] == 0.4
    backwards = asha(rule="stopping")
    backwards.ladder.update(list(reversed(history)))
    assert [e.observation.params["x"] for e in backwards.ladder.survivors((0, 0))] == survivors


def test_hyperband_ranks_each_bracket_by_fronts() -> None:
    algo = make_algorithm({"hyperband": {"sampler": "random"}}, Space.from_config(SPACE), seed=0)
    history: list[Observation] = []
    pending: list[dict[str, Any]] = []
    for k in range(30):  # a deterministic stream: every suggestion computed twice agrees
        (params,) = algo.suggest(history, pending)
        again = make_algorithm({"hyperband": {"sampler": "random"}}, Space.from_config(SPACE), seed=0)
        assert again.suggest(history, pending) == [params]
        x = float(params["x"])
        history.append(two(x, int(params["epochs"]), (x - 0.3) ** 2 + 1 / params["epochs"], abs(x - 0.8), float(k)))


def test_one_objective_keeps_the_scalar_order() -> None:
    rung = [Observation({"x": 0.1, "epochs": 1}, 5.0), Observation({"x": 0.2, "epochs": 1}, 1.0),
            Observation({"x": 0.3, "epochs": 1}, 3.0)]
    assert asha().suggest(rung, []) == [{"x": 0.2, "epochs": 3}]
