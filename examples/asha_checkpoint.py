"""ASHA on a real training run that resumes from its parent's checkpoint (digits, SGDClassifier).

A promoted trial continues training its parent's model instead of starting
over: the parent saved ``checkpoint.pkl`` in its working directory, and the
promoted trial is told where that is. Two ways to run it:

As a script under ``orchard hunt`` (each trial is one run of this file; the
parent's folder comes in ``ORCHARD_PARENT_WORKING_DIR``)::

    orchard hunt -n digits --max-trials 40 --algorithm asha \\
        python examples/asha_checkpoint.py \\
        --lr~'loguniform(1e-4, 1e-1)' --alpha~'loguniform(1e-6, 1e-2)' --epochs~'fidelity(1, 27, base=3)'

From Python with ``workon`` (the objective reads ``orchard.current_trial()``)::

    python examples/asha_checkpoint.py --workon --max-trials 40 --n-workers 2

The objective is the validation error rate. A promoted trial that cannot find
its parent's checkpoint refuses to run (exit 2 / an exception) rather than
silently training from scratch and reporting a misleading score.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Any

import orchard

CHECKPOINT = "checkpoint.pkl"


def train(lr: float, alpha: float, epochs: int, folder: str | None, parent_folder: str | None) -> float:
    """Train ``epochs`` epochs in all (resuming the parent's model), save a checkpoint, return the error."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)  # a file shipped with scikit-learn
    X_train, X_valid, y_train, y_valid = train_test_split(X / 16.0, y, test_size=0.3, random_state=0)
    model, done = SGDClassifier(learning_rate="constant", eta0=lr, alpha=alpha, random_state=0), 0
    if parent_folder:
        path = os.path.join(parent_folder, CHECKPOINT)
        if not os.path.exists(path):
            raise FileNotFoundError(f"promoted trial: the parent's checkpoint {path} is missing")
        with open(path, "rb") as handle:
            model, done = pickle.load(handle)  # this example's own file, written below
    rng = np.random.default_rng(done)
    for _ in range(done, epochs):
        order = rng.permutation(len(X_train))
        model.partial_fit(X_train[order], y_train[order], classes=np.arange(10))
    if folder:
        with open(os.path.join(folder, CHECKPOINT), "wb") as handle:
            pickle.dump((model, epochs), handle)
    return float(1.0 - model.score(X_valid, y_valid))


def objective(lr: float, alpha: float, epochs: int) -> float:
    """The ``workon`` objective: the trial's folders come from ``orchard.current_trial()``."""
    trial = orchard.current_trial()
    assert trial is not None, "called outside an Orchard evaluation"
    return train(lr, alpha, epochs, trial.working_dir, trial.parent_working_dir)


def run_as_script(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--alpha", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        error = train(args.lr, args.alpha, args.epochs, os.environ.get("ORCHARD_WORKING_DIR"),
                      os.environ.get("ORCHARD_PARENT_WORKING_DIR"))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    orchard.report_objective(error)
    return 0


def run_workon(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workon", action="store_true")
    parser.add_argument("--max-trials", type=int, default=40)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--storage", default=os.environ.get("ORCHARD_STORAGE", "runs/orchard.pkl"))
    parser.add_argument("--working-dir", default="runs/asha-checkpoint")
    args = parser.parse_args(argv)
    exp = orchard.build_experiment(
        "asha-checkpoint",
        space={"lr": "loguniform(1e-4, 1e-1)", "alpha": "loguniform(1e-6, 1e-2)",
               "epochs": "fidelity(1, 27, base=3)"},
        algorithm="asha", max_trials=args.max_trials, storage=args.storage, working_dir=args.working_dir,
    )
    stats = exp.workon(objective, n_workers=args.n_workers, progress=False)
    best = exp.best_trial
    if best is not None:
        print(f"best validation error {best.objective:.4f} at {best.params}")
    return stats


if __name__ == "__main__":
    if "--workon" in sys.argv[1:]:
        run_workon(sys.argv[1:])
    else:
        sys.exit(run_as_script(sys.argv[1:]))
