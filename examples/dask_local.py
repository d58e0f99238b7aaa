"""Run Orchard's workers as Dask tasks on a local Dask cluster.

    python examples/dask_local.py                      # 20 trials on a 2-process LocalCluster

With ``executor="dask"`` and no address, Orchard starts a ``LocalCluster`` of ``n_workers``
single-threaded processes and runs one worker loop in each; Dask only runs the loops, every
decision is taken by the workers against the shared storage. To use a cluster that already
runs (``dask scheduler`` + ``dask worker`` on other nodes, or a ``dask_jobqueue`` cluster),
give its address; the storage must then be reachable from the Dask workers (MongoDB, or a
pickle file on a shared filesystem)::

    exp.workon(rosenbrock, n_workers=16, executor="dask",
               executor_config={"address": "tcp://scheduler-host:8786"})
    # or: executor_config={"scheduler_file": "/shared/scheduler.json"}

``ORCHARD_EXAMPLE_TRIALS`` and ``ORCHARD_STORAGE`` set the budget and the storage.
Needs the Dask extra: ``pip install 'orchard-hpo[dask]'``.
"""

from __future__ import annotations

import os

import orchard


def rosenbrock(x: float, y: float) -> float:
    """The Rosenbrock valley; minimum 0 at (1, 1)."""
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def main(storage: str | None = None, max_trials: int | None = None, n_workers: int = 2) -> float:
    storage = storage or os.environ.get("ORCHARD_STORAGE", "runs/orchard.pkl")
    budget = max_trials or int(os.environ.get("ORCHARD_EXAMPLE_TRIALS", "20"))
    exp = orchard.build_experiment(
        "dask-rosenbrock",
        space={"x": "uniform(-2, 2)", "y": "uniform(-1, 3)"},
        algorithm="random",
        max_trials=budget,
        storage=storage,
    )
    # executor_config={} -> Orchard starts a LocalCluster(n_workers=n_workers, threads_per_worker=1)
    stats = exp.workon(rosenbrock, n_workers=n_workers, executor="dask", executor_config={})
    best = exp.best_trial
    assert best is not None and best.objective is not None
    print(f"completed {stats['counts']['completed']} trials with {n_workers} Dask workers")
    print(f"best objective {best.objective:.4f} at {best.params}")
    return best.objective


if __name__ == "__main__":
    main()
