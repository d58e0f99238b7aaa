"""Minimize the Branin function with 4 masterless workers sharing a pickle file.

Run it twice at the same time, or stop and restart it: every run joins the same
experiment in ``runs/orchard.pkl`` and the budget of 50 trials is never exceeded.
"""

from __future__ import annotations

import math
import sys

import orchard


def branin(x: float, y: float) -> float:
    """Branin-Hoo; global minimum 0.397887 at three points."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def main(storage: str = "runs/orchard.pkl", max_trials: int = 50, n_workers: int = 4) -> float:
    exp = orchard.build_experiment(
        "branin",
        space={"x": "uniform(-5, 10)", "y": "uniform(0, 15)"},
        algorithm={"bayes": {"n_initial_points": 10}},
        max_trials=max_trials,
        storage=storage,
        seed=1,
    )
    stats = exp.workon(branin, n_workers=n_workers)
    best = exp.best_trial
    assert best is not None and best.objective is not None
    print(f"completed {stats['counts']['completed']} trials in {stats['elapsed']:.1f} s "
          f"with {n_workers} workers")
    print(f"best objective {best.objective:.6f} (global minimum 0.397887) at {best.params}")
    return best.objective


if __name__ == "__main__":
    main(*sys.argv[1:2])
