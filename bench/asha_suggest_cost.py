"""The CPU cost of one ``asha`` suggestion with its default ``bayes`` sampler, against the history's size.

A history of ``N`` completed trials is built by running ``asha`` with a random sampler on the
LCBench space (7 dimensions and the epoch fidelity) against a cheap synthetic objective (a
quadratic bowl plus ``1/epoch``), so its rungs look like a real run's. Then the default
``asha`` (``sampler="bayes"``, ``rule="stopping"``, ``sampler_fit="refined"``) is asked for one new
point ``--repeats`` times on that history, with 4 pending points (a different set each time),
and the median process CPU time is printed (CPU, not wall time: the figure does not depend on
other processes' load; BLAS runs on one thread during a suggestion), two ways:

* **worker**: as a worker asks: its algorithm object kept from its previous ask (the rungs
  cache holds the history) and its set of taken points passed as ``seen``;
* **fresh**: a new algorithm object per ask and no ``seen``, so the rungs and the taken set are
  rebuilt from the whole history (what a worker pays once, when it starts).

Promotions cost well under a millisecond and are not what is measured: every promotion is
made pending until the ask draws a new point (the last ask's time is the one kept).

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
import _lcbench as L

from orchard.algorithms import Observation, make_algorithm
from orchard.algorithms.base import SeenPoints
from orchard.space import Space


def objective(params: dict) -> float:
    u = [(np.log(params[n]) - np.log(lo)) / (np.log(hi) - np.log(lo)) if log else (params[n] - lo) / (hi - lo)
         for n, lo, hi, log, _ in L.DIMENSIONS]
    return float(sum((x - 0.4) ** 2 for x in u) + 1 / params["epoch"])


def history(size: int, space: Space) -> list[Observation]:
    algo = make_algorithm({"asha": {"sampler": "random"}}, space, seed=0)  # the default rule: stopping
    completed: list[Observation] = []
    while len(completed) < size:
        (params,) = algo.suggest(completed, [])
        completed.append(Observation(params, objective(params), end_time=float(len(completed))))
    return completed


def new_point_cost(algo, completed: list[Observation], pending: list[dict], seen: SeenPoints | None) -> float:
    """CPU seconds of the ask that draws a new point (promotions before it are made pending)."""
    while True:
        start = time.process_time()
        (params,) = algo.suggest(completed, pending, seen=seen)
        elapsed = time.process_time() - start
        if algo.parent_of(params) is None:
            return elapsed
        pending.append(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    space = Space.from_config(L.SPACE)
    print("| completed trials | worker: median CPU per new point (ms) | min | max | fresh algorithm: median (ms) |")
    print("|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        completed = history(size, space)
        seen = SeenPoints(o.params for o in completed)
        worker = make_algorithm("asha", space, seed=0)
        worker.suggest(completed, [], seen=seen)  # the worker's earlier asks filled its cache
        kept, fresh = [], []
        for repeat in range(args.repeats):
            configs = L.sample_configs(4, np.random.default_rng(repeat))
            kept.append(new_point_cost(worker, completed, [worker.at_rung(p, 0) for p in configs], seen))
            algo = make_algorithm("asha", space, seed=repeat)
            fresh.append(new_point_cost(algo, completed, [algo.at_rung(p, 0) for p in configs], None))
        print(f"| {size} | {statistics.median(kept) * 1000:.1f} | {min(kept) * 1000:.1f} | {max(kept) * 1000:.1f} "
              f"| {statistics.median(fresh) * 1000:.1f} |")


if __name__ == "__main__":
    main()
