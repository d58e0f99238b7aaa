"""Parallel efficiency with 1-second objectives: wall time against the ideal.

With W workers and T trials of S seconds, the ideal wall time is
ceil(T / W) × S. Efficiency = ideal / measured (start of workon to its return,
process start-up included).

    python bench/parallel.py                       # 200 trials, 8 and 16 workers, 1 s
    python bench/parallel.py --trials 64 --workers 8 --seconds 0.5
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time


def one_second(x: float, y: float, seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return x * x + y


def run(workers: int, trials: int, seconds: float, executor: str) -> float:
    import functools

    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        exp = orchard.build_experiment(
            "par", space={"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}, algorithm="random",
            storage=os.path.join(tmp, "o.pkl"), max_trials=trials)
        start = time.perf_counter()
        exp.workon(functools.partial(one_second, seconds=seconds), n_workers=workers,
                   executor=executor, progress=False)
        wall = time.perf_counter() - start
        assert exp.stats["counts"]["completed"] == trials
    ideal = math.ceil(trials / workers) * seconds
    return ideal / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--executor", default="joblib")
    args = parser.parse_args()
    print(f"{args.trials} trials of {args.seconds:g} s, executor {args.executor}, {os.cpu_count()} cores")
    for workers in args.workers:
        efficiency = run(workers, args.trials, args.seconds, args.executor)
        print(f"{workers:>3} workers: efficiency {efficiency * 100:.1f} % of ideal", flush=True)


if __name__ == "__main__":
    main()
