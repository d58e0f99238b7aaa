"""Trade a random forest's validation error against its size on the digits data set (scikit-learn).

    python examples/sklearn_pareto.py                               # 40 trials, 2 workers, nsga2
    python examples/sklearn_pareto.py --early-stopping --name sklearn-pareto-asha   # random sampling, asha pruning
    python examples/sklearn_pareto.py --max-trials 120 --n-workers 4 --storage mongodb://db/orchard

Two objectives, both minimised: the validation error rate and the size of the pickled model
in kB; a constraint keeps the prediction latency at most 50 ms for the 450 validation digits.
Each trial grows its forest 8 trees at a time and reports both objectives after each step. By
default ``nsga2`` breeds the configurations and every trial runs to its end. With
``--early-stopping`` the configurations are drawn at random and the ``asha`` pruner stops a
trial whose (error, size) pair ranks low among those that reached the same step, ranked by
non-dominated sorting (multi-objective early stopping). The front (the trials no other trial
beats on both objectives) and its hypervolume are printed at the end.
``ORCHARD_EXAMPLE_TRIALS`` and ``ORCHARD_STORAGE`` set the defaults of ``--max-trials`` and
``--storage``.
"""

from __future__ import annotations

import argparse
import os

import orchard

STEPS, TREES_PER_STEP = 5, 8


def train(max_depth: int, min_samples_leaf: int, max_features: float) -> dict[str, float]:
    """Grow a forest step by step, reporting (error, size_kb); return both and the latency."""
    # Imports and data loading live inside the objective so that it travels to worker processes
    # by value (it is defined in __main__); load_digits reads a file shipped with scikit-learn.
    import pickle
    import time

    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(X / 16.0, y, test_size=0.25, random_state=0)
    forest = RandomForestClassifier(max_depth=max_depth, min_samples_leaf=min_samples_leaf,
                                    max_features=max_features, warm_start=True, random_state=0)
    for step in range(1, STEPS + 1):
        forest.set_params(n_estimators=TREES_PER_STEP * step)
        forest.fit(X_train, y_train)  # warm start: only the new trees are grown
        error = 1.0 - float(forest.score(X_val, y_val))
        size_kb = len(pickle.dumps(forest)) / 1024
        orchard.report({"error": error, "size_kb": size_kb}, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    start = time.perf_counter()
    forest.predict(X_val)
    latency_ms = (time.perf_counter() - start) * 1000
    return {"error": error, "size_kb": size_kb, "latency_ms": latency_ms}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=int(os.environ.get("ORCHARD_EXAMPLE_TRIALS", "40")))
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--storage", default=os.environ.get("ORCHARD_STORAGE", "runs/orchard.pkl"))
    parser.add_argument("--name", default="sklearn-pareto")
    parser.add_argument("--early-stopping", action="store_true",
                        help="random sampling and asha pruning on both objectives, instead of nsga2")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[orchard.Trial]:
    args = parse_args(argv)
    exp = orchard.build_experiment(
        args.name,
        space={"max_depth": "randint(2, 20)", "min_samples_leaf": "randint(1, 20)",
               "max_features": "uniform(0.05, 1.0)"},
        objectives={"error": "min", "size_kb": "min"},
        constraints=["latency_ms <= 50"],
        algorithm="random" if args.early_stopping else {"nsga2": {"population_size": 8}},
        pruner={"asha": {"min_step": 1, "reduction_factor": 3, "max_step": STEPS}}  # the last step: no rung
        if args.early_stopping else "none",
        max_trials=args.max_trials,
        storage=args.storage,
        seed=0,
    )
    stats = exp.workon(train, n_workers=args.n_workers)
    counts = stats["counts"]
    print(f"{counts['completed']} trials completed and {counts.get('pruned', 0)} pruned in {stats['elapsed']:.1f} s")
    front = sorted(exp.pareto_front(), key=lambda t: t.results["error"])
    volume, reference = exp.hypervolume()
    print(f"{len(front)} trial{'' if len(front) == 1 else 's'} on the Pareto front (hypervolume {volume:.4g}, "
          f"reference {reference}):")
    for trial in front:
        r = trial.results
        print(f"  error {r['error']:.4f}  size {r['size_kb']:8.1f} kB  latency {r['latency_ms']:5.1f} ms  "
              + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()))
    return front


if __name__ == "__main__":
    main()
