"""Several objectives: hypervolume of the front after a budget, Orchard against Optuna, same run.

Problems (their published definitions): ZDT1, ZDT2, ZDT3 (Zitzler, Deb and Thiele 2000; 30
variables in [0, 1], two objectives) and DTLZ2 (Deb, Thiele, Laumanns and Zitzler 2002; three
objectives, k = 10, so 12 variables). Optionally a constrained ZDT1 (``zdt1c``: ``f1 >= 0.2``).

Methods, each with 4 simulated parallel workers (4 trials always in flight; the oldest is
evaluated and told first, the next suggestion sees the other 3 as pending):

* ``nsga2``        Orchard's nsga2 (population 20)
* ``random``       Orchard's random search
* ``optuna-nsga2`` Optuna's NSGAIISampler (population 20; seeded)
* ``optuna-tpe``   Optuna's TPESampler (multi-objective TPE, ``constant_liar=True``; seeded)

The figure is the hypervolume of the feasible non-dominated trials after ``--trials`` trials
against a fixed reference point per problem (printed), median and min-max over seeds.
Simulated clock: no wall-clock figure is measured.

    python bench/multiobjective.py                          # 5 seeds, 100 trials, all problems
    python bench/multiobjective.py --seeds 3 --problems zdt1 --methods nsga2 optuna-nsga2
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from orchard.algorithms import Observation, make_algorithm
from orchard.algorithms.base import SeenPoints
from orchard.objectives import hypervolume, non_dominated_sort
from orchard.space import Space

Vector = tuple[float, ...]
IN_FLIGHT = 4


def _zdt_g(x: Sequence[float]) -> float:
    return 1.0 + 9.0 * sum(x[1:]) / (len(x) - 1)


def zdt1(x: Sequence[float]) -> Vector:
    g = _zdt_g(x)
    return x[0], g * (1.0 - math.sqrt(x[0] / g))


def zdt2(x: Sequence[float]) -> Vector:
    g = _zdt_g(x)
    return x[0], g * (1.0 - (x[0] / g) ** 2)


def zdt3(x: Sequence[float]) -> Vector:
    g = _zdt_g(x)
    return x[0], g * (1.0 - math.sqrt(x[0] / g) - x[0] / g * math.sin(10.0 * math.pi * x[0]))


def dtlz2(x: Sequence[float], objectives: int = 3) -> Vector:
    g = sum((xi - 0.5) ** 2 for xi in x[objectives - 1:])
    angles = [xi * math.pi / 2 for xi in x[:objectives - 1]]
    values = []
    for m in range(objectives):
        value = 1.0 + g
        for angle in angles[:objectives - 1 - m]:
            value *= math.cos(angle)
        if m > 0:
            value *= math.sin(angles[objectives - 1 - m])
        values.append(value)
    return tuple(values)


#: name -> (function, variables, reference point, violation of a vector or None)
PROBLEMS: dict[str, tuple[Callable[[Sequence[float]], Vector], int, Vector, Callable[[Vector], float] | None]] = {
    "zdt1": (zdt1, 30, (1.1, 11.0), None),
    "zdt2": (zdt2, 30, (1.1, 11.0), None),
    "zdt3": (zdt3, 30, (1.1, 11.0), None),
    "dtlz2": (dtlz2, 12, (3.5, 3.5, 3.5), None),
    "zdt1c": (zdt1, 30, (1.1, 11.0), lambda f: max(0.0, 0.2 - f[0])),
}


def run_orchard(name: str, problem: str, seed: int, trials: int) -> float:
    fn, dims, reference, violation_of = PROBLEMS[problem]
    space = Space.from_config({f"x{i}": "uniform(0, 1)" for i in range(dims)})
    algo = make_algorithm({"nsga2": {"population_size": 20}} if name == "nsga2" else name, space, seed=seed)
    observed: list[Observation] = []
    seen = SeenPoints()
    flight: collections.deque[dict[str, Any]] = collections.deque()
    results: list[tuple[Vector, float]] = []
    while len(results) < trials:
        while len(flight) < IN_FLIGHT and len(results) + len(flight) < trials:
            (params,) = algo.suggest(observed, list(flight), n=1, seen=seen)
            seen.add(params)
            flight.append(params)
        params = flight.popleft()
        values = fn([params[f"x{i}"] for i in range(dims)])
        violation = violation_of(values) if violation_of else 0.0
        observed.append(Observation(params, values[0], float(len(observed)), values, violation <= 0, violation))
        results.append((values, violation))
    return front_hypervolume(results, reference)


def run_optuna(name: str, problem: str, seed: int, trials: int) -> float:
    import optuna

    fn, dims, reference, violation_of = PROBLEMS[problem]
    if name == "optuna-nsga2":  # constraints: Trial.set_constraint, Optuna 5's way
        sampler: Any = optuna.samplers.NSGAIISampler(population_size=20, seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study = optuna.create_study(directions=["minimize"] * len(reference), sampler=sampler)
    flight: collections.deque[Any] = collections.deque()
    results: list[tuple[Vector, float]] = []
    while len(results) < trials:
        while len(flight) < IN_FLIGHT and len(results) + len(flight) < trials:
            trial = study.ask()
            flight.append((trial, [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(dims)]))
        trial, x = flight.popleft()
        values = fn(x)
        violation = violation_of(values) if violation_of else 0.0
        if violation_of:
            trial.set_constraint("violation", violation)
        study.tell(trial, list(values))
        results.append((values, violation))
    return front_hypervolume(results, reference)


def front_hypervolume(results: Sequence[tuple[Vector, float]], reference: Vector) -> float:
    feasible = [values for values, violation in results if violation <= 0]
    if not feasible:
        return 0.0
    front = non_dominated_sort(feasible)[0]
    return hypervolume([feasible[i] for i in front], reference)


METHODS: dict[str, Callable[[str, str, int, int], float]] = {
    "nsga2": run_orchard, "random": run_orchard, "optuna-nsga2": run_optuna, "optuna-tpe": run_optuna,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--problems", nargs="+", default=["zdt1", "zdt2", "zdt3", "dtlz2", "zdt1c"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    logging.getLogger("optuna").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"hypervolume after {args.trials} trials, 4 in flight, {args.seeds} seeds: median [min, max]")
    print(f"{'problem':8} {'reference':22} " + " ".join(f"{m:>24}" for m in args.methods))
    for problem in args.problems:
        cells = []
        for method in args.methods:
            volumes = [METHODS[method](method, problem, seed, args.trials) for seed in range(args.seeds)]
            cells.append(f"{statistics.median(volumes):8.3f} [{min(volumes):.3f}, {max(volumes):.3f}]")
        reference = ", ".join(f"{r:g}" for r in PROBLEMS[problem][2])
        print(f"{problem:8} ({reference}){'':{max(0, 20 - len(reference))}} " + " ".join(f"{c:>24}" for c in cells),
              flush=True)


if __name__ == "__main__":
    main()
