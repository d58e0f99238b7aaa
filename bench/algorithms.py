"""Orchard's algorithms against plain Optuna, and the Optuna adapter's cost per suggestion.

Two parts, each in one invocation:

* ``regret``: on Branin, Hartmann6, Ackley-10 and Rosenbrock-10,
  Orchard ``bayes`` (and with skopt's ``xi=0.01``), Orchard's ``optuna`` adapter (TPE, CMA-ES, GP when PyTorch
  is installed), plain Optuna (the same samplers) with 4 workers and
  sequentially, and scikit-optimize's ``gp_minimize`` (sequential) run for
  ``--trials`` trials over ``--seeds`` seeds. "4 workers" are simulated
  asynchronous workers: each suggestion is made with the 3 other workers' points
  pending (Orchard: passed as ``pending``; plain Optuna: asked and not yet told,
  so ``RUNNING`` in its in-memory study), and the oldest pending point completes
  next (no real processes; the clock is the trial count, so regret does not
  depend on the machine's load). Prints the median simple regret at 50/100/200
  trials and the median CPU seconds per suggestion, one line per (problem,
  method) as soon as it is done.
* ``cost``: CPU seconds of one TPE suggestion after 100, 1,000 and 10,000
  completed trials: the adapter's first call in a worker (the study is built),
  a later call (one more completed trial: only it is added), and plain Optuna's
  ``ask`` on a study holding the same trials.

CPU time (``time.process_time``) is reported, not wall time: the machine is shared.

    python bench/algorithms.py cost
    python bench/algorithms.py regret --seeds 10 --trials 200
    python bench/algorithms.py regret --methods "orchard bayes" --problems hartmann6 --out bayes.jsonl
    python bench/algorithms.py summary optuna.jsonl bayes.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from orchard.algorithms import make_algorithm
from orchard.algorithms.base import Observation, SeenPoints
from orchard.space import Space

Problem = tuple[dict[str, str], Callable[[dict[str, Any]], float], float]

_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def _branin(p: dict[str, Any]) -> float:
    x, y = p["x0"], p["x1"]
    return float((y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2
                 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10)


def _vector(p: dict[str, Any], d: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array([p[f"x{i}"] for i in range(d)], dtype=float)


def _hartmann6(p: dict[str, Any]) -> float:
    x = _vector(p, 6)
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


def _ackley(p: dict[str, Any]) -> float:
    x = _vector(p, 10)
    return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(x**2))) - np.exp(np.mean(np.cos(2 * np.pi * x))) + 20 + np.e)


def _rosenbrock(p: dict[str, Any]) -> float:
    x = _vector(p, 10)
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


PROBLEMS: dict[str, Problem] = {
    "branin": ({"x0": "uniform(-5, 10)", "x1": "uniform(0, 15)"}, _branin, 0.397887),
    "hartmann6": ({f"x{i}": "uniform(0, 1)" for i in range(6)}, _hartmann6, -3.32237),
    "ackley10": ({f"x{i}": "uniform(-32.768, 32.768)" for i in range(10)}, _ackley, 0.0),
    "rosenbrock10": ({f"x{i}": "uniform(-5, 10)" for i in range(10)}, _rosenbrock, 0.0),
}


def _orchard_run(config: Any, problem: Problem, seed: int, trials: int, workers: int) -> tuple[list[float], float]:
    """Best-so-far after each completion, and CPU seconds per suggestion, with ``workers`` simulated workers."""
    space_config, objective, _ = problem
    space = Space.from_config(space_config)
    algorithms = [make_algorithm(config, space, seed * 100 + w) for w in range(workers)]
    completed: list[Observation] = []
    pending: list[dict[str, Any]] = []
    best: list[float] = []
    spent = 0.0
    suggestions = 0
    turn = 0
    while len(completed) < trials:
        while len(pending) < workers and len(completed) + len(pending) < trials:
            start = time.process_time()
            (params,) = algorithms[turn % workers].suggest(completed, pending, n=1)[:1]
            spent += time.process_time() - start
            suggestions += 1
            turn += 1
            pending.append(params)
        params = pending.pop(0)
        completed.append(Observation(params, objective(params), float(len(completed))))
        best.append(min(best[-1], completed[-1].objective) if best else completed[-1].objective)
    return best, spent / suggestions


def _optuna_run(sampler: str, problem: Problem, seed: int, trials: int, workers: int) -> tuple[list[float], float]:
    """Plain Optuna with ``workers`` simulated workers: ask until that many are running, tell the oldest."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space_config, objective, _ = problem
    study = optuna.create_study(sampler=getattr(optuna.samplers, sampler)(seed=seed))
    spent = 0.0
    best: list[float] = []
    running: list[tuple[Any, dict[str, Any]]] = []
    while len(best) < trials:
        while len(running) < workers and len(best) + len(running) < trials:
            start = time.process_time()
            trial = study.ask()
            params = {name: trial.suggest_float(name, *_bounds(text)) for name, text in space_config.items()}
            spent += time.process_time() - start
            running.append((trial, params))
        trial, params = running.pop(0)
        value = objective(params)
        study.tell(trial, value)
        best.append(min(best[-1], value) if best else value)
    return best, spent / trials


def _gp_minimize_run(problem: Problem, seed: int, trials: int) -> tuple[list[float], float]:
    """scikit-optimize's ``gp_minimize`` with its defaults (gp_hedge, 10 random points), sequential."""
    import warnings

    from skopt import gp_minimize

    space_config, objective, _ = problem
    names = list(space_config)
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gp_minimize(lambda x: objective(dict(zip(names, x))), Space.from_config(space_config).to_skopt(),
                             n_calls=trials, n_initial_points=10, random_state=seed)
    spent = time.process_time() - start  # includes the objective, negligible here
    return list(np.minimum.accumulate(result.func_vals)), spent / trials


def _bounds(text: str) -> tuple[float, float]:
    low, high = text[len("uniform("):-1].split(",")
    return float(low), float(high)


#: Optuna sampler per short name; GP needs PyTorch.
SAMPLERS = {"TPE": "TPESampler", "CMA-ES": "CmaEsSampler", "GP": "GPSampler"}


def _contenders(trials: int, workers: int) -> dict[str, Callable[[Problem, int], tuple[list[float], float]]]:
    contenders: dict[str, Callable[[Problem, int], tuple[list[float], float]]] = {
        "orchard bayes": lambda pb, s: _orchard_run("bayes", pb, s, trials, workers),
        "orchard bayes xi=0.01": lambda pb, s: _orchard_run({"bayes": {"xi": 0.01}}, pb, s, trials, workers)}
    for short, sampler in SAMPLERS.items():
        def adapter(pb: Problem, s: int, sampler: str = sampler) -> tuple[list[float], float]:
            return _orchard_run({"optuna": {"sampler": sampler}}, pb, s, trials, workers)

        def plain(pb: Problem, s: int, sampler: str = sampler) -> tuple[list[float], float]:
            return _optuna_run(sampler, pb, s, trials, workers)

        def sequential(pb: Problem, s: int, sampler: str = sampler) -> tuple[list[float], float]:
            return _optuna_run(sampler, pb, s, trials, 1)

        contenders[f"orchard optuna {short}"] = adapter
        contenders[f"optuna {short}"] = plain
        contenders[f"optuna {short} (sequential)"] = sequential
    contenders["gp_minimize (sequential)"] = lambda pb, s: _gp_minimize_run(pb, s, trials)
    return contenders


def regret(args: argparse.Namespace) -> None:
    contenders = _contenders(args.trials, args.workers)
    names = args.methods or [name for name in contenders if not name.startswith("gp_minimize")]
    unknown = sorted(set(names) - set(contenders))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(contenders)}")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("GPSampler skipped: PyTorch is not installed")
        names = [name for name in names if not name.endswith(("GP", "GP (sequential)"))]
    print(f"{args.seeds} seeds from {args.first_seed}, {args.trials} trials, {args.workers} simulated async workers unless sequential; "
          "median simple regret at 50/100/200 trials [quartiles]; median CPU s per suggestion", flush=True)
    for problem_name in args.problems:
        problem = PROBLEMS[problem_name]
        for name in names:
            runs = [contenders[name](problem, seed) for seed in range(args.first_seed, args.first_seed + args.seeds)]
            record = {"problem": problem_name, "method": name, "cost": statistics.median(r[1] for r in runs),
                      "regret": [[b - problem[2] for b in r[0]] for r in runs]}
            print(_line(record), flush=True)
            if args.out:
                with open(args.out, "a") as out:
                    out.write(json.dumps(record) + "\n")


def _line(record: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """One method on one problem: median [quartiles] at each mark, CPU s per suggestion, and against
    ``reference`` the two-sided Mann-Whitney p-values of the regrets at each mark."""
    cells = []
    for mark in (50, 100, 200):
        values = [r[mark - 1] for r in record["regret"] if len(r) >= mark]
        if values:
            q1, q2, q3 = np.quantile(values, [0.25, 0.5, 0.75])
            cells.append(f"{q2:.2g} [{q1:.2g}-{q3:.2g}]")
    line = f"{record['problem']:13s} {record['method']:28s} " + "  ".join(cells) + f"  {record['cost']:.4f} s"
    if reference is not None:
        from scipy.stats import mannwhitneyu

        tests = []
        for mark in (50, 100, 200):
            mine = [r[mark - 1] for r in record["regret"] if len(r) >= mark]
            theirs = [r[mark - 1] for r in reference["regret"] if len(r) >= mark]
            if mine and theirs:
                tests.append(f"{mannwhitneyu(mine, theirs).pvalue:.2f}")
        line += f"  p={'/'.join(tests)} vs {reference['method']}"
    return line


def summary(args: argparse.Namespace) -> None:
    """Print the records of ``regret --out`` files; each adapter against plain Optuna with the same sampler."""
    records = [json.loads(line) for path in args.files for line in Path(path).read_text().splitlines() if line.strip()]
    found = {(r["problem"], r["method"]): r for r in records}
    for (problem, method), record in found.items():
        plain = method.replace("orchard optuna", "optuna") if method.startswith("orchard optuna") else None
        print(_line(record, found.get((problem, plain)) if plain else None))


def _plain_ask(space_config: dict[str, str], completed: list[Observation]) -> float:
    """CPU seconds of plain Optuna TPE's ``ask`` (the params sampled) on a study holding ``completed``."""
    import optuna

    distributions: dict[str, Any] = {
        name: optuna.distributions.FloatDistribution(*_bounds(text)) for name, text in space_config.items()}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    study.add_trials([optuna.trial.create_trial(params=o.params, distributions=distributions, value=o.objective)
                      for o in completed])
    study.ask(distributions)  # the first ask fills Optuna's own caches, as a running study's would be
    start = time.process_time()
    study.ask(distributions)
    return time.process_time() - start


def cost(args: argparse.Namespace) -> None:
    space_config, objective, _ = PROBLEMS["hartmann6"]
    space = Space.from_config(space_config)
    rng = np.random.default_rng(0)
    print("TPE on Hartmann6, CPU seconds of one suggestion (the worker passes its incrementally kept seen set)")
    for size in args.sizes:
        points = [space.sample(rng) for _ in range(size + 2)]
        completed = [Observation(dict(p), objective(p), float(i)) for i, p in enumerate(points)]
        seen = SeenPoints(o.params for o in completed)
        algorithm = make_algorithm({"optuna": {"sampler": "TPESampler"}}, space, 1)
        start = time.process_time()
        algorithm.suggest(completed[:size], [], n=1, seen=seen)
        first = time.process_time() - start
        later = []
        for extra in (1, 2):
            start = time.process_time()
            algorithm.suggest(completed[: size + extra], [], n=1, seen=seen)
            later.append(time.process_time() - start)
        plain = _plain_ask(space_config, completed[:size])
        print(f"{size:6d} completed: adapter first call {first:7.3f} s (builds the study), later call "
              f"{min(later):7.3f} s; plain Optuna ask {plain:7.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part")
    r = sub.add_parser("regret")
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1 (default 0)")
    r.add_argument("--trials", type=int, default=200)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    r.add_argument("--methods", nargs="+", help="default: all but gp_minimize")
    r.add_argument("--out", help="append each (problem, method) record, every seed's regret curve, to this file")
    u = sub.add_parser("summary")
    u.add_argument("files", nargs="+")
    c = sub.add_parser("cost")
    c.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    if args.part is None:
        parser.error("name a part: regret, summary or cost")
    {"cost": cost, "regret": regret, "summary": summary}[args.part](args)


if __name__ == "__main__":
    main()
