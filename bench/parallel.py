"""Parallel efficiency with 1-second objectives, Orchard and Oríon 0.2.7 alternated in one run.

With W workers and T trials of S seconds, the ideal wall time is
ceil(T / W) × S. Efficiency = ideal / measured (start of ``workon`` to its
return, process start-up included). Both use random search, a pickle file and
joblib/loky processes; Oríon runs from its own venv (``bench/.venvs/orion``,
created on first use) because it pins older libraries.

    python bench/parallel.py                       # 200 trials, 8 and 16 workers, 1 s, 3 pairs
    python bench/parallel.py --trials 64 --workers 8 --seconds 0.5 --pairs 2
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

from _harness import alternate, machine_load, orion_python, run_python


def sleeper(x: float, y: float, seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return x * x + y


ORION = """
import sys, time
from orion.client import build_experiment
trials, workers, seconds, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def f(x, y):
    time.sleep(seconds)
    return [{"name": "o", "type": "objective", "value": x * x + y}]
exp = build_experiment("par", space={"x": "uniform(-5, 10)", "y": "uniform(0, 15)"},
    algorithm={"random": {"seed": 1}}, max_trials=trials,
    storage={"type": "legacy", "database": {"type": "pickleddb", "host": path}})
start = time.perf_counter()
with exp.tmp_executor("joblib", n_workers=workers):
    exp.workon(f, n_workers=workers, max_trials=trials)
wall = time.perf_counter() - start
print(wall, len(exp.fetch_trials_by_status("completed")))
"""


def orchard_wall(workers: int, trials: int, seconds: float) -> float:
    import functools

    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        exp = orchard.build_experiment(
            "par", space={"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}, algorithm="random",
            storage=os.path.join(tmp, "o.pkl"), max_trials=trials)
        start = time.perf_counter()
        exp.workon(functools.partial(sleeper, seconds=seconds), n_workers=workers, progress=False)
        wall = time.perf_counter() - start
        completed = exp.stats["counts"]["completed"]
    assert completed == trials, f"orchard completed {completed} of {trials}"
    return wall


def orion_wall(python: str, workers: int, trials: int, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = run_python(python, ORION, [str(trials), str(workers), str(seconds), os.path.join(tmp, "db.pkl")], tmp)
    wall, completed = out.split()[-2:]
    if int(completed) != trials:
        print(f"  (oríon completed {completed} trials for max_trials={trials})", flush=True)
    return float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    python = orion_python()
    print(f"{args.trials} trials of {args.seconds:g} s, random search, pickle file, joblib/loky; "
          f"{machine_load()}", flush=True)
    for workers in args.workers:
        ideal = math.ceil(args.trials / workers) * args.seconds
        pairs = alternate(lambda ideal=ideal, workers=workers: 100 * ideal / orchard_wall(workers, args.trials, args.seconds),
                          lambda ideal=ideal, workers=workers: 100 * ideal / orion_wall(python, workers, args.trials,
                                                                                        args.seconds),
                          args.pairs)
        effs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(pairs.ours, pairs.theirs))
        print(f"{workers:>3} workers: efficiency Orchard/Oríon per pair {effs} %; "
              f"median {pairs.summary(' %')}", flush=True)
    print(f"after: {machine_load()}")


if __name__ == "__main__":
    main()
