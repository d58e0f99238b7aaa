"""The cost of one durable ``report`` with 10,000 reports already in the experiment, beside Optuna's.

Orchard: ``Judge`` (what ``orchard.report`` calls in a worker: one durable ``report_trial`` write
on the pickle file, fsync'd, a refresh of the worker's view, and the ``median`` pruner's verdict).
Optuna: ``trial.report`` + ``trial.should_prune`` with ``MedianPruner`` on a
``JournalFileBackend`` (which also writes each call through to the file). Both fill the
experiment with ``--trials`` × ``--steps`` reports first (200 × 50 = 10,000), then time
``--samples`` more reports, alternating the two tools sample by sample.

Usage::

    python bench/report_cost.py --samples 300

prints the median and 90th percentile per report (milliseconds) and the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orchard


def orchard_setup(folder: Path, trials: int, steps: int) -> tuple[Any, Any, str]:
    exp = orchard.build_experiment("report-cost", space={"x": "uniform(0, 1)"}, storage=str(folder / "db.pkl"),
                                   pruner="median")
    worker = exp._client_worker()
    for i in range(trials):
        trial = exp.suggest()
        for step in range(1, steps + 1):
            worker.judge(trial.id, i / trials + 1.0 / step, step)
        if i < trials - 1:
            exp.observe(trial, i / trials)
    return exp, worker, trial.id


def optuna_setup(folder: Path, trials: int, steps: int) -> tuple[Any, Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.MedianPruner())
    for i in range(trials):
        trial = study.ask()
        for step in range(1, steps + 1):
            trial.report(i / trials + 1.0 / step, step)
        if i < trials - 1:
            study.tell(trial, i / trials)
    return study, trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--dir", default=".", help="where the files go (a real disk: fsync on tmpfs costs nothing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        started = time.monotonic()
        _, worker, trial_id = orchard_setup(folder, args.trials, args.steps)
        _, optuna_trial = optuna_setup(folder, args.trials, args.steps)
        print(f"filled both with {args.trials * args.steps:,} reports in {time.monotonic() - started:.0f} s")
        times: dict[str, list[float]] = {"orchard": [], "optuna": []}
        for k in range(args.samples):
            step = args.steps + 1 + k
            t0 = time.perf_counter()
            worker.judge(trial_id, 0.5, step)
            t1 = time.perf_counter()
            optuna_trial.report(0.5, step)
            optuna_trial.should_prune()
            t2 = time.perf_counter()
            times["orchard"].append(t1 - t0)
            times["optuna"].append(t2 - t1)
    for tool, values in times.items():
        values.sort()
        print(f"{tool:8s} median {1000 * statistics.median(values):6.2f} ms   p90 "
              f"{1000 * values[int(0.9 * len(values))]:6.2f} ms   ({len(values)} reports)")
    print(f"median of per-sample ratios optuna/orchard: "
          f"{statistics.median(b / a for a, b in zip(times['orchard'], times['optuna'])):.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
