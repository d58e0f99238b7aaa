"""Coordination overhead at equal durability: trials/s with a trivial objective and random search.

Orchard (pickle file) next to Optuna's ``JournalFileBackend``, both with N
independent processes racing on one file, both flushing every write to disk
(Orchard's default; Optuna's journal fsyncs each append), alternated run by
run in the same invocation: the table gives the median of the pair ratios and
their range. Study sizes are equal (N processes share the same total). Also:

* fsyncs per trial for both, counted by ``strace -c -f`` on a one-process run
  (``apt-get install strace``; skipped with a note where strace is missing);
* Orchard with ``?fsync=0`` (not durable: labelled, never compared with a durable peer);
* per-trial cost early (trials 100-1,100) and late (10,000-11,000) in one long run;
* with ``--cpu``: CPU time (user + system) per durable trial, 1 process, which a loaded
  machine does not inflate as it does wall-clock rates.

    python bench/throughput.py                 # 1, 2, 4, 8 processes, 2,000 trials, 3 pairs
    python bench/throughput.py --quick         # 400 trials, 2 pairs, no 10k run
    python bench/throughput.py --cpu --pairs 5 # CPU time per trial, 1 process: the ratio a loaded machine keeps
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _harness import alternate, machine_load

SPACE = {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}


def trivial(x: float, y: float) -> float:
    return x * x + y


def _orchard_process(uri: str, budget: int, barrier) -> tuple[float, float, int]:
    import orchard

    exp = orchard.build_experiment("tp", space=SPACE, algorithm="random", storage=uri, max_trials=budget)
    barrier.wait()
    start = time.perf_counter_ns() / 1e9
    exp.workon(trivial, n_workers=1, executor="single", progress=False)
    return start, time.perf_counter_ns() / 1e9, 0


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


def _race(target, args: tuple, n: int) -> float:
    """Wall time from the barrier every process passes after connecting to the last one's end."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            results = [pool.apply_async(target, (*args, barrier)) for _ in range(n)]
            spans = [r.get(timeout=1800) for r in results]
    return max(e for _, e, _ in spans) - min(s for s, _, _ in spans)


def orchard_rate(n: int, trials: int, fsync: bool = True) -> float:
    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"pickle://{os.path.join(tmp, 'orchard.pkl')}?fsync={int(fsync)}"
        exp = orchard.build_experiment("tp", space=SPACE, algorithm="random", storage=uri, max_trials=trials)
        wall = _race(_orchard_process, (uri, trials), n)
        completed = exp.stats["counts"]["completed"]
    assert completed == trials, f"orchard completed {completed} of {trials}"
    return trials / wall


def optuna_rate(n: int, trials: int) -> float:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optuna.log")
        optuna.create_study(study_name="tp", storage=JournalStorage(JournalFileBackend(path)))
        wall = _race(_optuna_process, (path, trials // n), n)
    return (trials // n) * n / wall


def throughput(workers: list[int], trials: int, pairs: int) -> None:
    print(f"durable (both fsync every write), {trials} trials per run, {pairs} alternated pairs")
    for n in workers:
        measured = alternate(lambda n=n: orchard_rate(n, trials), lambda n=n: optuna_rate(n, trials), pairs)
        print(f"  {n} processes: Orchard vs Optuna trials/s {measured.summary()}", flush=True)
    loose = [orchard_rate(1, trials, fsync=False) for _ in range(pairs)]
    print(f"  NOT durable, Orchard ?fsync=0 alone (Optuna's journal has no such mode): 1 process "
          f"{statistics.median(loose):,.0f} trials/s [{min(loose):,.0f}-{max(loose):,.0f}]", flush=True)


FSYNC_CHILD = """
import sys
sys.path.insert(0, {bench!r})
import throughput
throughput.{func}({args})
"""


def _one_process_orchard(trials: int) -> None:
    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        exp = orchard.build_experiment("tp", space=SPACE, algorithm="random",
                                       storage=os.path.join(tmp, "o.pkl"), max_trials=trials)
        exp.workon(trivial, n_workers=1, executor="single", progress=False)


def _one_process_optuna(trials: int) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=JournalStorage(JournalFileBackend(os.path.join(tmp, "j.log"))),
                                    sampler=optuna.samplers.RandomSampler())
        study.optimize(lambda t: trivial(t.suggest_float("x", -5, 10), t.suggest_float("y", 0, 15)),
                       n_trials=trials)


def _cpu_child(func: str, trials: int, queue) -> None:
    """In a fresh process: imports and set-up first (a 10-trial run), then CPU seconds per trial of a run."""
    run = {"orchard": _one_process_orchard, "optuna": _one_process_optuna}[func]
    run(10)
    start = time.process_time()  # this process's CPU (user + system): what a loaded machine does not inflate
    run(trials)
    queue.put((time.process_time() - start) / trials)


def cpu_per_trial(trials: int, pairs: int) -> None:
    """CPU time per durable trial, 1 process (both fsync every write), alternated; the set-up of the
    experiment or study (creating the file) is inside the measured run for both."""
    ctx = multiprocessing.get_context("spawn")

    def measure(func: str) -> float:
        queue = ctx.Queue()
        proc = ctx.Process(target=_cpu_child, args=(func, trials, queue))
        proc.start()
        seconds = queue.get(timeout=1800)
        proc.join()
        return 1.0 / seconds  # trials per CPU second: higher is better, as Pairs expects

    measured = alternate(lambda: measure("orchard"), lambda: measure("optuna"), pairs)
    print(f"CPU per durable trial, 1 process: Orchard {1e3 / statistics.median(measured.ours):.3f} ms, "
          f"Optuna {1e3 / statistics.median(measured.theirs):.3f} ms; Orchard trials per CPU second "
          f"{measured.summary()}", flush=True)


def _fsyncs(func: str, trials: int) -> int:
    code = FSYNC_CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), func=func, args=trials)
    proc = subprocess.run(["strace", "-c", "-f", "-e", "trace=fsync,fdatasync", sys.executable, "-c", code],
                          capture_output=True, text=True, check=True)
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync",
                                                       proc.stderr, re.MULTILINE))


def fsync_counts(trials: int = 200) -> None:
    if shutil.which("strace") is None:
        print("fsyncs per trial: not counted (strace missing: apt-get install strace)")
        return
    # Each count includes the set-up's writes (creating the experiment or study): subtract a 10-trial run.
    for label, func in (("Orchard", "_one_process_orchard"), ("Optuna", "_one_process_optuna")):
        base, full = _fsyncs(func, 10), _fsyncs(func, 10 + trials)
        print(f"fsyncs per trial, 1 process: {label} {(full - base) / trials:.2f} "
              f"({full - base} over {trials} trials)", flush=True)


def flatness(total: int = 11_000, window: int = 1_000) -> None:
    """Per-trial cost around 100 and around 10,000 trials of one single-process run.

    Means include the amortized cost of the pickle log's compactions; medians show
    the typical trial without them.
    """
    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        exp = orchard.build_experiment("flat", space=SPACE, algorithm="random",
                                       storage=os.path.join(tmp, "o.pkl"), max_trials=total)
        exp.workon(trivial, n_workers=1, executor="single", progress=False)
        ends = sorted(t.end_time for t in exp.fetch_trials() if t.end_time is not None)
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    early, late = gaps[100:100 + window], gaps[10_000:10_000 + window]
    for label, pick in (("mean", statistics.fmean), ("median", statistics.median)):
        a, b = pick(early), pick(late)
        print(f"per-trial cost ({label}), 1 process, pickle (durable): {a * 1e3:.3f} ms at 100-{100 + window} "
              f"trials, {b * 1e3:.3f} ms at 10,000-{10_000 + window} (ratio {b / a:.2f}; target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", action="store_true",
                        help="only CPU time per durable trial, 1 process (load-independent)")
    args = parser.parse_args()
    if args.cpu:
        print(f"random search, trivial objective; {machine_load()}", flush=True)
        cpu_per_trial(args.trials, args.pairs)
        print(f"after: {machine_load()}")
        return
    if args.quick:
        args.trials, args.pairs = 400, 2
    print(f"random search, trivial objective; {machine_load()}", flush=True)
    throughput(args.workers, args.trials, args.pairs)
    fsync_counts()
    if not args.quick:
        flatness()
    print(f"after: {machine_load()}")


if __name__ == "__main__":
    main()
