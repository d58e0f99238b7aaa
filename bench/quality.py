"""Search quality: median simple regret over seeds on Branin and Hartmann-6.

Simple regret = best objective found - the known global minimum. Methods:

* ``bayes``      Orchard's bayes (GP, EI), one worker
* ``bayes-4``    Orchard's bayes, 4 simulated parallel workers: each round, worker k
                 suggests with the k-1 earlier suggestions of the round as pending
                 (constant liar), then the 4 points are evaluated and observed
* ``bayes-portfolio``, ``bayes-portfolio-4``  the same with ``acq_func="portfolio"``
                 (each suggestion draws one of EI, PI, LCB)
* ``random``     Orchard's random search
* ``tpe``        Optuna's TPE sampler (seeded)
* ``gp_minimize`` scikit-optimize's gp_minimize (its defaults: gp_hedge, 10 random points)

Every run uses one BLAS thread (``threadpoolctl``), so ``--jobs 2`` on 2 cores
does not oversubscribe; seconds per run are printed for orientation only.

    python bench/quality.py                         # 10 seeds, both problems, all methods
    python bench/quality.py --quick                 # 3 seeds, Branin only
    python bench/quality.py --seeds 5 --problems hartmann6 --methods bayes gp_minimize --jobs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

# -- problems ----------------------------------------------------------------------

_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * np.pi**2), 5 / np.pi, 1 / (8 * np.pi)
    return float((y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * np.cos(x) + 10)


def hartmann6(**params: float) -> float:
    x = np.array([params[f"x{i}"] for i in range(6)])
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


PROBLEMS: dict[str, dict[str, Any]] = {
    "branin": {"fn": branin, "space": {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"},
               "minimum": 0.397887, "trials": 50},
    "hartmann6": {"fn": hartmann6, "space": {f"x{i}": "uniform(0, 1)" for i in range(6)},
                  "minimum": -3.32237, "trials": 100},
}

# -- methods: each returns the best objective found ----------------------------------


_PORTFOLIO = {"bayes": {"acq_func": "portfolio"}}


def run_orchard(problem: dict[str, Any], seed: int, algorithm: Any, workers: int = 1) -> float:
    from orchard.algorithms import Observation, make_algorithm
    from orchard.space import Space

    space = Space.from_config(problem["space"])
    algos = [make_algorithm(algorithm, space, seed * 100 + k) for k in range(workers)]
    fn, trials = problem["fn"], problem["trials"]
    completed: list[Observation] = []
    while len(completed) < trials:
        batch: list[dict[str, Any]] = []
        for algo in algos[: trials - len(completed)]:
            batch += algo.suggest(completed, batch)
        completed += [Observation(p, fn(**p)) for p in batch]
    return min(o.objective for o in completed)


def run_tpe(problem: dict[str, Any], seed: int) -> float:
    import optuna

    from orchard.space import LogUniform, Space, Uniform

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = Space.from_config(problem["space"])

    def objective(trial: Any) -> float:
        params = {}
        for name, prior in space.items():
            assert isinstance(prior, (Uniform, LogUniform)) and not getattr(prior, "discrete", False)
            params[name] = trial.suggest_float(name, prior.low, prior.high, log=isinstance(prior, LogUniform))
        return problem["fn"](**params)  # type: ignore[no-any-return]

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=problem["trials"])
    return float(study.best_value)


def run_gp_minimize(problem: dict[str, Any], seed: int) -> float:
    from skopt import gp_minimize

    from orchard.space import Space

    space = Space.from_config(problem["space"])
    names = list(space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gp_minimize(lambda x: problem["fn"](**dict(zip(names, x))), space.to_skopt(),
                             n_calls=problem["trials"], n_initial_points=10, random_state=seed)
    return float(result.fun)


METHODS: dict[str, Callable[[dict[str, Any], int], float]] = {
    "bayes": lambda problem, seed: run_orchard(problem, seed, "bayes"),
    "bayes-4": lambda problem, seed: run_orchard(problem, seed, "bayes", workers=4),
    "bayes-portfolio": lambda problem, seed: run_orchard(problem, seed, _PORTFOLIO),
    "bayes-portfolio-4": lambda problem, seed: run_orchard(problem, seed, _PORTFOLIO, workers=4),
    "random": lambda problem, seed: run_orchard(problem, seed, "random"),
    "tpe": run_tpe,
    "gp_minimize": run_gp_minimize,
}


def one_run(problem_name: str, method: str, seed: int) -> tuple[str, str, int, float, float]:
    from threadpoolctl import threadpool_limits

    problem = PROBLEMS[problem_name]
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # every method alike; --jobs runs side by side
        best = METHODS[method](problem, seed)
    return problem_name, method, seed, best - problem["minimum"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 seeds and Branin only, unless given")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    args = parser.parse_args()
    seeds = 3 if args.quick and args.seeds == 10 else args.seeds
    problems = args.problems or (["branin"] if args.quick else list(PROBLEMS))
    runs = [(p, m, s) for p in problems for m in args.methods for s in range(seeds)]
    print(f"{seeds} seeds, {len(runs)} runs, {args.jobs} job(s), {os.cpu_count()} cores", flush=True)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for problem, method, _seed, regret, seconds in pool.map(one_run, *zip(*runs)):
            results.setdefault((problem, method), []).append((regret, seconds))
            if len(results[(problem, method)]) == seeds:
                report(problem, method, results[(problem, method)])


def report(problem: str, method: str, runs: list[tuple[float, float]]) -> None:
    regrets = sorted(r for r, _ in runs)
    q1, median, q3 = np.percentile(regrets, [25, 50, 75])
    seconds = statistics.median(s for _, s in runs)
    hits = sum(r < 0.01 for r in regrets)
    print(f"{problem:<10} {PROBLEMS[problem]['trials']:>4} trials  {method:<17} median regret {median:.2e}"
          f"  (IQR {q1:.1e}..{q3:.1e}, worst {regrets[-1]:.1e}, {hits}/{len(regrets)} below 0.01)"
          f"  {seconds:6.1f} s/run", flush=True)


if __name__ == "__main__":
    main()
