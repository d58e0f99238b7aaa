"""Several objectives: hypervolume of the front after a budget, Orchard against Optuna, same run.

Problems (their published definitions): ZDT1, ZDT2, ZDT3 (Zitzler, Deb and Thiele 2000; 30
variables in [0, 1], two objectives), DTLZ2 (Deb, Thiele, Laumanns and Zitzler 2002; three
objectives, k = 10, so 12 variables), ``zdt1c``: ZDT1 under the constraint ``f1 >= 0.2``, and
``lcbench:ID``: LCBench (YAHPO Gym surrogate, ``bench/_lcbench.py``) validation error against
training time at the fixed fidelity of epoch 52, each divided by its median over 1,000 random
configurations of the instance (reference point (1.5, 3)); ``lcbench`` stands for every ``--instances``
(default: the 10 development instances).

Methods, each with 4 simulated parallel workers (4 trials always in flight; the oldest is
evaluated and told first, the next suggestion sees the other 3 as pending):

* ``bayes``        Orchard's bayes, defaults (ParEGO with several objectives or constraints)
* ``nsga2``        Orchard's nsga2 (population 20)
* ``random``       Orchard's random search
* ``optuna-nsga2`` Optuna's NSGAIISampler (population 20; seeded)
* ``optuna-tpe``   Optuna's TPESampler (multi-objective TPE, ``constant_liar=True``; seeded)

Optuna's GPSampler supports several objectives in Optuna 5 but needs PyTorch, which is not
installed here (a large dependency); it is not run.

The figure is the hypervolume of the feasible non-dominated trials after ``--trials`` trials
against a fixed reference point per problem, median and min-max over seeds, and the mean CPU
seconds (``time.process_time``) per suggestion (Optuna: ``ask`` and ``tell``). Simulated
clock: the hypervolumes do not depend on the machine's load.

    python bench/multiobjective.py                          # 5 seeds, 100 trials, all problems
    python bench/multiobjective.py --trials 100 300 --problems zdt1 lcbench --instances 3945 7593
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from _harness import machine_load
from _lcbench import DEV_INSTANCES

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


@dataclasses.dataclass
class Problem:
    """A minimisation problem: its dimensions, its objective vector, a fixed reference point."""

    evaluate: Callable[[dict[str, float]], Vector]
    dimensions: Sequence[tuple[str, float, float, bool]]  # name, low, high, log scale
    reference: Vector
    violation_of: Callable[[Vector], float] | None = None

    def space(self) -> dict[str, str]:
        return {name: f"{'loguniform' if log else 'uniform'}({low!r}, {high!r})"
                for name, low, high, log in self.dimensions}


def _function(fn: Callable[[Sequence[float]], Vector], dims: int, reference: Vector,
              violation_of: Callable[[Vector], float] | None = None) -> Problem:
    names = [f"x{i}" for i in range(dims)]
    return Problem(lambda p: fn([p[n] for n in names]), [(n, 0.0, 1.0, False) for n in names], reference,
                   violation_of)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "zdt1": lambda: _function(zdt1, 30, (1.1, 11.0)),
    "zdt2": lambda: _function(zdt2, 30, (1.1, 11.0)),
    "zdt3": lambda: _function(zdt3, 30, (1.1, 11.0)),
    "dtlz2": lambda: _function(dtlz2, 12, (3.5, 3.5, 3.5)),
    "zdt1c": lambda: _function(zdt1, 30, (1.1, 11.0), lambda f: max(0.0, 0.2 - f[0])),
}


@functools.cache
def lcbench(instance: str) -> Problem:
    """Validation error against training time at epoch 52, each divided by its median over random configs."""
    from _lcbench import DIMENSIONS, LCBench

    bench = LCBench(instance)

    def evaluate(params: dict[str, float]) -> Vector:
        errors, times = bench.curve(params)
        return float(errors[-1]) / bench.median_error, float(times[-1]) / bench.median_time

    return Problem(evaluate, [(name, low, high, log) for name, low, high, log, _ in DIMENSIONS], (1.5, 3.0))


def problem(name: str) -> Problem:
    return lcbench(name.split(":", 1)[1]) if name.startswith("lcbench:") else PROBLEMS[name]()


#: Orchard's algorithm configurations.
ORCHARD = {"bayes": "bayes", "nsga2": {"nsga2": {"population_size": 20}}, "random": "random"}


def run_orchard(name: str, task: Problem, seed: int, trials: int) -> tuple[float, float]:
    """Hypervolume after ``trials`` and the CPU seconds per suggestion."""
    algo = make_algorithm(ORCHARD[name], Space.from_config(task.space()), seed=seed)
    observed: list[Observation] = []
    seen = SeenPoints()
    flight: collections.deque[dict[str, Any]] = collections.deque()
    results: list[tuple[Vector, float]] = []
    cpu = 0.0
    while len(results) < trials:
        while len(flight) < IN_FLIGHT and len(results) + len(flight) < trials:
            start = time.process_time()
            (params,) = algo.suggest(observed, list(flight), n=1, seen=seen)
            cpu += time.process_time() - start
            seen.add(params)
            flight.append(params)
        params = flight.popleft()
        values = task.evaluate(params)
        violation = task.violation_of(values) if task.violation_of else 0.0
        observed.append(Observation(params, values[0], float(len(observed)), values, violation <= 0, violation))
        results.append((values, violation))
    return front_hypervolume(results, task.reference), cpu / trials


def run_optuna(name: str, task: Problem, seed: int, trials: int) -> tuple[float, float]:
    import optuna

    if name == "optuna-nsga2":  # constraints: Trial.set_constraint, Optuna 5's way
        sampler: Any = optuna.samplers.NSGAIISampler(population_size=20, seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study = optuna.create_study(directions=["minimize"] * len(task.reference), sampler=sampler)
    flight: collections.deque[Any] = collections.deque()
    results: list[tuple[Vector, float]] = []
    cpu = 0.0
    while len(results) < trials:
        while len(flight) < IN_FLIGHT and len(results) + len(flight) < trials:
            start = time.process_time()
            trial = study.ask()
            params = {n: trial.suggest_float(n, low, high, log=log) for n, low, high, log in task.dimensions}
            cpu += time.process_time() - start
            flight.append((trial, params))
        trial, params = flight.popleft()
        values = task.evaluate(params)
        violation = task.violation_of(values) if task.violation_of else 0.0
        if task.violation_of:
            trial.set_constraint("violation", violation)
        start = time.process_time()
        study.tell(trial, list(values))
        cpu += time.process_time() - start
        results.append((values, violation))
    return front_hypervolume(results, task.reference), cpu / trials


def front_hypervolume(results: Sequence[tuple[Vector, float]], reference: Vector) -> float:
    feasible = [values for values, violation in results if violation <= 0]
    if not feasible:
        return 0.0
    front = non_dominated_sort(feasible)[0]
    return hypervolume([feasible[i] for i in front], reference)


METHODS: dict[str, Callable[[str, Problem, int, int], tuple[float, float]]] = {
    "bayes": run_orchard, "nsga2": run_orchard, "random": run_orchard, "optuna-nsga2": run_optuna,
    "optuna-tpe": run_optuna,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, nargs="+", default=[100])
    parser.add_argument("--problems", nargs="+", default=["zdt1", "zdt2", "zdt3", "dtlz2", "zdt1c", "lcbench"],
                        help="'lcbench' stands for lcbench:ID of every --instances")
    parser.add_argument("--instances", nargs="+", default=list(DEV_INSTANCES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    logging.getLogger("optuna").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    names = [p for name in args.problems for p in ([f"lcbench:{i}" for i in args.instances] if name == "lcbench"
                                                   else [name])]
    print(f"{machine_load()}; 4 in flight, {args.seeds} seeds; hypervolume median [min, max]; "
          "CPU seconds per suggestion (mean)")
    print(f"{'problem':16} {'trials':>6} " + " ".join(f"{m:>30}" for m in args.methods), flush=True)
    for trials in args.trials:
        for name in names:
            task = problem(name)
            cells = []
            for method in args.methods:
                runs = [METHODS[method](method, task, seed, trials) for seed in range(args.seeds)]
                volumes = [v for v, _ in runs]
                cost = statistics.mean(c for _, c in runs)
                cells.append(f"{statistics.median(volumes):.3f} [{min(volumes):.3f}, {max(volumes):.3f}] {cost:.3f}s")
            print(f"{name:16} {trials:6d} " + " ".join(f"{c:>30}" for c in cells), flush=True)
    print(machine_load())


if __name__ == "__main__":
    main()
