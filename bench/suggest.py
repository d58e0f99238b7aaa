"""Latency of one ``bayes`` suggestion as the history grows, next to scikit-optimize's own cost.

For each history size, random points of a DIMS-dimensional unit cube are
evaluated on a smooth multimodal function; then

* ``orchard``: the median wall time of ``suggest`` (one worker, no pending) over
  ``--repeats`` calls with different seeds;
* ``skopt``: the median wall time of ``Optimizer(dims, "GP").tell(points, values)``
  with skopt's defaults (``gp_hedge``, L-BFGS, 2 kernel restarts), the fit that
  precedes each ``ask()`` of an ask/tell loop; ``--skopt-repeats`` calls
  (it takes tens of seconds at 1,000 points).

    python bench/suggest.py                          # 100, 400, 1000 points, 4 dims
    python bench/suggest.py --dims 2 6 --sizes 100 1000 --repeats 7
    python bench/suggest.py --estimator ET --no-skopt
    python bench/suggest.py --max-gp-points 300 --sizes 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Any

import numpy as np


def objective(x: np.ndarray) -> float:
    return float(np.sum((x - 0.3) ** 2) + 0.1 * np.sin(10 * np.sum(x)))


def history(dims: int, size: int, seed: int = 0) -> tuple[list[dict[str, float]], list[float]]:
    rng = np.random.default_rng(seed)
    points = rng.uniform(size=(size, dims))
    params = [{f"x{i}": float(v) for i, v in enumerate(p)} for p in points]
    return params, [objective(p) for p in points]


def time_orchard(dims: int, size: int, repeats: int, options: dict[str, Any]) -> list[float]:
    from orchard.algorithms import Observation, make_algorithm
    from orchard.space import Space

    space = Space.from_config({f"x{i}": "uniform(0, 1)" for i in range(dims)})
    params, values = history(dims, size)
    completed = [Observation(p, v) for p, v in zip(params, values)]
    times = []
    for seed in range(repeats):
        algo = make_algorithm({"bayes": options}, space, seed)
        start = time.perf_counter()
        algo.suggest(completed, [])
        times.append(time.perf_counter() - start)
    return times


def time_skopt(dims: int, size: int, repeats: int) -> list[float]:
    from skopt import Optimizer
    from skopt.space import Real

    params, values = history(dims, size)
    points = [list(p.values()) for p in params]
    times = []
    for seed in range(repeats):
        optimizer: Any = Optimizer([Real(0.0, 1.0) for _ in range(dims)], "GP", random_state=seed)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.tell(points, values)
            optimizer.ask()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[4])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1000])
    parser.add_argument("--repeats", type=int, default=7, help="orchard calls per size (default 7)")
    parser.add_argument("--skopt-repeats", type=int, default=1, help="skopt fits per size (default 1)")
    parser.add_argument("--estimator", default="GP", choices=["GP", "RF", "ET"])
    parser.add_argument("--max-gp-points", type=int, default=None, help="bayes option (default: its default)")
    parser.add_argument("--no-skopt", action="store_true", help="skip the scikit-optimize comparison")
    args = parser.parse_args()
    options: dict[str, Any] = {"base_estimator": args.estimator}
    if args.max_gp_points is not None:
        options["max_gp_points"] = args.max_gp_points
    print(f"bayes {options} suggestion latency, median of {args.repeats} calls; {os.cpu_count()} cores")
    for dims in args.dims:
        for size in args.sizes:
            ours = time_orchard(dims, size, args.repeats, options)
            line = (f"{dims} dims, {size:>5} completed: orchard median {statistics.median(ours):6.3f} s"
                    f" (max {max(ours):.3f})")
            if not args.no_skopt:
                theirs = time_skopt(dims, size, args.skopt_repeats)
                line += f"   skopt Optimizer.tell+ask {statistics.median(theirs):7.2f} s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
