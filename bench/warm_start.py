"""Warm start: ``bayes`` cold against ``bayes`` warm-started from a finished experiment.

For each problem (Branin, Hartmann6) and seed, a *source* experiment runs
``--source-trials`` trials of ``bayes`` on the function. Then four new experiments
run ``--trials`` trials of ``bayes`` each, one worker, through the real path
(``build_experiment(..., warm_start=["source"])``, a ``memory://`` storage):

* ``cold`` and ``warm`` on the same function;
* ``cold shifted`` and ``warm shifted`` on a shifted variant, ``f(x - 5 % of each range)``
  (its minimum value is the same, at a moved point), warm-started from the same source.

Printed: the median simple regret over the seeds of each experiment's own
trials after 10, 20 and 50 of them, and the CPU seconds of each run
(``time.process_time``). Counted in trials, so the regret figures do not depend
on the machine's load.

    python bench/warm_start.py --seeds 10
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from _harness import machine_load
from algorithms import PROBLEMS

import orchard
from orchard.space import Space

CHECKPOINTS = (10, 20, 50)
SHIFT = 0.05  # of each dimension's range


def _shifted(space_config: dict[str, str], objective: Callable[[dict[str, Any]], float]) -> Callable[..., float]:
    priors = Space.from_config(space_config)  # every problem here is uniform(low, high) in each dimension
    offsets = {name: SHIFT * (prior.high - prior.low) for name, prior in priors.items()}  # type: ignore[attr-defined]

    def shifted(**params: float) -> float:
        return objective({name: value - offsets[name] for name, value in params.items()})

    return shifted


def _curve(exp: orchard.Experiment, optimum: float) -> list[float]:
    best, curve = math.inf, []
    for trial in sorted(exp.fetch_trials(["completed"]), key=lambda t: t.end_time or 0.0):
        best = min(best, trial.objective if trial.objective is not None else math.inf)
        curve.append(best - optimum)
    return curve


def _run(name: str, space: dict[str, str], fn: Callable[..., float], storage: str, trials: int, seed: int,
         warm: bool) -> tuple[orchard.Experiment, float]:
    start = time.process_time()
    exp = orchard.build_experiment(name, space=space, algorithm="bayes", max_trials=trials, storage=storage,
                                   seed=seed, warm_start=["source"] if warm else None)
    exp.workon(fn, progress=False)
    return exp, time.process_time() - start


def _called_with(objective: Callable[[dict[str, float]], float], **params: float) -> float:
    return objective(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--source-trials", type=int, default=50)
    parser.add_argument("--problems", nargs="+", default=["branin", "hartmann6"], choices=sorted(PROBLEMS))
    args = parser.parse_args()
    print(f"# {machine_load()} (before)")
    variants = ("cold", "warm", "cold shifted", "warm shifted")
    for problem in args.problems:
        space, objective, optimum = PROBLEMS[problem]
        same = functools.partial(_called_with, objective)
        functions = {"cold": same, "warm": same, "cold shifted": _shifted(space, objective),
                     "warm shifted": _shifted(space, objective)}
        curves: dict[str, list[list[float]]] = {v: [] for v in variants}
        seconds: dict[str, list[float]] = {v: [] for v in ("source", *variants)}
        for seed in range(args.seeds):
            storage = f"memory://bench-warm-start-{problem}-{seed}"
            source, spent = _run("source", space, same, storage, args.source_trials, 1000 + seed, warm=False)
            seconds["source"].append(spent)
            for variant in variants:
                exp, spent = _run(variant.replace(" ", "-"), space, functions[variant], storage, args.trials, seed,
                                  warm=variant.startswith("warm"))
                curves[variant].append(_curve(exp, optimum))
                seconds[variant].append(spent)
            print(f"# {problem} seed {seed}: source best regret {_curve(source, optimum)[-1]:.3g}", flush=True)
        print(f"\n{problem}: median simple regret over {args.seeds} seeds (source: {args.source_trials} trials "
              "of bayes on the unshifted function)\n")
        marks = [n for n in CHECKPOINTS if n <= args.trials]
        print("| experiment | " + " | ".join(f"{n} trials" for n in marks) + " | CPU s per run |")
        print("|---|" + "---|" * (len(marks) + 1))
        for variant in variants:
            cells = [f"{statistics.median(c[n - 1] for c in curves[variant]):.3g}" for n in marks]
            print(f"| {variant} | " + " | ".join(cells) + f" | {statistics.median(seconds[variant]):.1f} |")
        print(f"\nsource runs: {statistics.median(seconds['source']):.1f} CPU s each\n", flush=True)
    print(f"# {machine_load()} (after)")


if __name__ == "__main__":
    main()
