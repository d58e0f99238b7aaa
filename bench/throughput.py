"""Coordination overhead: trials/s with a trivial objective and random search.

Orchard (pickle file) next to Optuna's JournalFileBackend, both with N
independent processes racing on one file, measured in the same run. Also the
per-trial cost early (trials 100-600) and late (10,000-10,500) in one long
single-process run on the pickle file.

    python bench/throughput.py                 # 1, 2, 4, 8 processes, 2,000 trials each
    python bench/throughput.py --quick         # fewer trials, no 10k run
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

SPACE = {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}


def trivial(x: float, y: float) -> float:
    return x * x + y


def _orchard_process(path: str, budget: int, barrier) -> tuple[float, float, int]:
    import orchard
    from orchard.objective import call_objective
    from orchard.worker import Worker, WorkerSettings

    exp = orchard.build_experiment("tp", space=SPACE, algorithm="random", storage=path, max_trials=budget)
    settings = WorkerSettings.for_experiment(exp.settings)
    worker = Worker(exp.storage, exp.id, settings, lambda t: call_objective(trivial, t.params))
    barrier.wait()
    start = time.perf_counter_ns() / 1e9
    report = worker.run()
    return start, time.perf_counter_ns() / 1e9, report.completed


def _optuna_process(path: str, n_trials: int, barrier) -> tuple[float, float, int]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(path))
    study = optuna.create_study(study_name="tp", storage=storage, load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler())

    def objective(trial) -> float:
        return trivial(trial.suggest_float("x", -5, 10), trial.suggest_float("y", 0, 15))

    barrier.wait()
    start = time.perf_counter_ns() / 1e9
    study.optimize(objective, n_trials=n_trials)
    return start, time.perf_counter_ns() / 1e9, n_trials


def _race(target, args_for, n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            results = [pool.apply_async(target, (*args_for(i), barrier)) for i in range(n)]
            spans = [r.get(timeout=1800) for r in results]
    start = min(s for s, _, _ in spans)
    end = max(e for _, e, _ in spans)
    return sum(c for _, _, c in spans) / (end - start)


def _prepare_optuna(path: str) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="tp", storage=JournalStorage(JournalFileBackend(path)))


def throughput(workers: list[int], trials: int) -> None:
    print(f"{'processes':>9} {'orchard trials/s':>17} {'optuna trials/s':>16} {'ratio':>6}")
    for n in workers:
        with tempfile.TemporaryDirectory() as tmp:
            orch_path = os.path.join(tmp, "orchard.pkl")
            import orchard

            orchard.build_experiment("tp", space=SPACE, algorithm="random", storage=orch_path, max_trials=trials)
            ours = _race(_orchard_process, lambda i: (orch_path, trials), n)
            opt_path = os.path.join(tmp, "optuna.log")
            _prepare_optuna(opt_path)
            theirs = _race(_optuna_process, lambda i: (opt_path, trials // n), n)
        print(f"{n:>9} {ours:>17.0f} {theirs:>16.0f} {ours / theirs:>5.1f}x", flush=True)


def flatness(total: int = 11_000, window: int = 1_000) -> None:
    """Per-trial cost around 100 and around 10,000 trials of one single-process run.

    Means include the amortized cost of the pickle log's compactions; medians show
    the typical trial without them.
    """
    import statistics

    import orchard
    from orchard.objective import call_objective
    from orchard.worker import Worker, WorkerSettings

    with tempfile.TemporaryDirectory() as tmp:
        exp = orchard.build_experiment("flat", space=SPACE, algorithm="random",
                                       storage=os.path.join(tmp, "o.pkl"), max_trials=total)
        stamps: list[float] = []
        settings = WorkerSettings.for_experiment(exp.settings)
        worker = Worker(exp.storage, exp.id, settings, lambda t: call_objective(trivial, t.params),
                        on_outcome=lambda t, o: stamps.append(time.perf_counter()))
        worker.run()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    early, late = gaps[100:100 + window], gaps[10_000:10_000 + window]
    for label, pick in (("mean", statistics.fmean), ("median", statistics.median)):
        a, b = pick(early), pick(late)
        print(f"per-trial cost ({label}), 1 process, pickle: {a * 1e3:.3f} ms at 100-{100 + window} trials, "
              f"{b * 1e3:.3f} ms at 10,000-{10_000 + window} (ratio {b / a:.2f}; target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.trials = 400
    print(f"random search, trivial objective, {args.trials} trials per run, {os.cpu_count()} cores")
    throughput(args.workers, args.trials)
    if not args.quick:
        flatness()


if __name__ == "__main__":
    main()
