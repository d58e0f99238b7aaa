"""The CPU cost of one ``asha`` suggestion with its default ``bayes`` sampler, against the history's size.

A history of ``N`` completed trials is built by running ``asha`` with a random sampler on the
LCBench space (7 dimensions and the epoch fidelity) against a cheap synthetic objective (a
quadratic bowl plus ``1/epoch``), so its rungs look like a real run's. Then the default
``asha`` (``sampler="bayes"``, ``rule="stopping"``, ``sampler_fit="refined"``) is asked for one new
point ``--repeats`` times on that history, with 4 pending points, each ask a fresh algorithm
object (no cache carried over), and the median process CPU time is printed (CPU, not wall time:
the figure does not depend on other processes' load; BLAS runs on one thread during a
suggestion). Promotions cost well under a millisecond and are not what is measured: the history
is arranged so that none is free.

Run: ``python bench/asha_suggest_cost.py --sizes 100,1000``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lcbench as L  # noqa: E402

from orchard.algorithms import Observation, make_algorithm  # noqa: E402
from orchard.space import Space  # noqa: E402


def objective(params: dict) -> float:
    u = [(np.log(params[n]) - np.log(lo)) / (np.log(hi) - np.log(lo)) if log else (params[n] - lo) / (hi - lo)
         for n, lo, hi, log, _ in L.DIMENSIONS]
    return float(sum((x - 0.4) ** 2 for x in u) + 1 / params["epoch"])


def history(size: int, space: Space) -> list[Observation]:
    algo = make_algorithm({"asha": {"sampler": "random", "rule": "promotion"}}, space, seed=0)
    completed: list[Observation] = []
    while len(completed) < size:
        (params,) = algo.suggest(completed, [])
        completed.append(Observation(params, objective(params), end_time=float(len(completed))))
    return completed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    space = Space.from_config(L.SPACE)
    print("| completed trials | median CPU per new-point suggestion (ms) | min | max |")
    print("|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        completed = history(size, space)
        costs = []
        for repeat in range(args.repeats):
            algo = make_algorithm("asha", space, seed=repeat)
            pending = [algo.at_rung(p, 0) for p in L.sample_configs(4, np.random.default_rng(repeat))]
            # every promotion pending or taken, so the ask draws a new point
            while True:
                start = time.process_time()
                (params,) = algo.suggest(completed, pending)
                elapsed = time.process_time() - start
                if algo.parent_of(params) is None:
                    break
                pending.append(params)
            costs.append(elapsed)
        print(f"| {size} | {statistics.median(costs) * 1000:.1f} | {min(costs) * 1000:.1f} | {max(costs) * 1000:.1f} |")


if __name__ == "__main__":
    main()
