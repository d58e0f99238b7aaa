"""Tune a scikit-learn SVC on the digits data set (shipped with scikit-learn) with ``bayes``.

    python examples/sklearn_svm.py                                  # 30 trials, 2 workers
    python examples/sklearn_svm.py --max-trials 60 --n-workers 4 --storage mongodb://db/orchard

The objective is the 3-fold cross-validated error rate, minimized over ``C`` and ``gamma``
on log scales. ``ORCHARD_EXAMPLE_TRIALS`` and ``ORCHARD_STORAGE`` set the defaults of
``--max-trials`` and ``--storage``. Start it again with the same storage (or in another
terminal) and it joins the same experiment.
"""

from __future__ import annotations

import argparse
import os

import orchard


def cv_error(C: float, gamma: float) -> dict[str, float]:
    """3-fold cross-validated error of ``SVC(C, gamma)``; the accuracy is kept as an extra metric."""
    # Imports and data loading live inside the objective so that it travels to worker processes
    # by value (it is defined in __main__); load_digits reads a file shipped with scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    accuracy = float(cross_val_score(SVC(C=C, gamma=gamma), X, y, cv=3).mean())
    return {"objective": 1.0 - accuracy, "accuracy": accuracy}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=int(os.environ.get("ORCHARD_EXAMPLE_TRIALS", "30")))
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--storage", default=os.environ.get("ORCHARD_STORAGE", "runs/orchard.pkl"))
    parser.add_argument("--name", default="sklearn-svm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    exp = orchard.build_experiment(
        args.name,
        space={"C": "loguniform(1e-2, 1e3)", "gamma": "loguniform(1e-5, 1e1)"},
        algorithm={"bayes": {"base_estimator": "GP", "n_initial_points": 8, "acq_func": "EI"}},
        max_trials=args.max_trials,
        storage=args.storage,
        seed=0,
    )
    stats = exp.workon(cv_error, n_workers=args.n_workers)
    best = exp.best_trial
    assert best is not None and best.objective is not None
    print(f"completed {stats['counts']['completed']} trials in {stats['elapsed']:.1f} s")
    print(f"best CV error {best.objective:.4f} (accuracy {1 - best.objective:.4f}) "
          f"at C={best.params['C']:.4g}, gamma={best.params['gamma']:.4g}")
    return best.objective


if __name__ == "__main__":
    main()
