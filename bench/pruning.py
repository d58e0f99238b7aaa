"""Pruning on the LCBench surrogate: Orchard's pruners against Optuna's, on a simulated clock.

Every method trains configurations for up to 52 epochs and reports each epoch; a pruner may
stop a training after any epoch, freeing its worker at that epoch's simulated time
(``bench/_lcbench.py`` defines the clock, the budget and the normalized regret). Methods, all in
one run, alternated per (instance, seed):

* ``orchard-random-P`` and ``orchard-bayes-P``: Orchard's ``random`` and ``bayes`` algorithms
  with the pruner ``P`` in ``none``, ``median``, ``asha``, ``hyperband`` (``max_step=52``) and
  ``hyperbanddefault`` (``pruner="hyperband"``, every option at its default). A pruned trial is told
  to the sampler with its last reported value.
* ``orchard-bayes-hyperband-untold``: the control for "the sampler learns from pruned trials":
  pruned trials are not told to ``bayes`` (they are only kept from being suggested again).
* ``optuna-tpe-P``: Optuna's TPESampler (``constant_liar=True``, its setting for parallel
  workers) with ``MedianPruner()``, ``SuccessiveHalvingPruner()`` or
  ``HyperbandPruner(min_resource=1, max_resource=52)``.
* ``dehb``: DEHB (``pip install dehb``; 0.1.2, default settings, ``min_fidelity=1``,
  ``max_fidelity=52``, ``eta=3``) through its ask-and-tell interface. DEHB trains each
  configuration from scratch to the epoch budget it picks (no step reports, no checkpoints), as
  its own examples do.

Usage::

    python bench/pruning.py --seeds 5 --jobs 2 --json bench/logs/pruning/lcbench.json

prints, per method, the mean normalized regret (± standard error over instance×seed) at 10, 25,
50 and 100 % of a 20-full-training budget, and the average rank among the methods.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lcbench import DEV_INSTANCES, DIMENSIONS, EPOCHS, SPACE, Job, LCBench, simulate

from orchard.algorithms import make_algorithm
from orchard.algorithms.base import Observation
from orchard.pruners import make_pruner
from orchard.space import Space

FRACTIONS = (0.10, 0.25, 0.50, 1.00)
ORCHARD_PRUNERS: dict[str, Any] = {
    "none": "none",
    "median": "median",
    "asha": "asha",
    "hyperband": {"hyperband": {"max_step": EPOCHS}},
    "hyperbanddefault": "hyperband",  # every option at its default (the brackets then decide the steps)
}
OPTUNA_PRUNERS = ("median", "sh", "hyperband")
BAYES = {"bayes": {"base_estimator": "GP", "acq_optimizer": "sampling"}}


class OrchardPruned:
    """An Orchard algorithm plus a pruner, driven as a worker would: the history in, a verdict out."""

    def __init__(self, algorithm: Any, pruner: Any, seed: int, tell_pruned: bool = True) -> None:
        self.tell_pruned = tell_pruned
        space = Space.from_config({name: prior for name, prior in SPACE.items() if name != "epoch"})
        self.algorithm = make_algorithm(algorithm, space, seed=seed)
        self.pruner = make_pruner(pruner)
        self.reports: dict[str, list[tuple[int, float]]] = {}
        self.completed: list[Observation] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.untold: list[dict[str, Any]] = []
        self.count = 0

    def ask(self, now: float) -> Job | None:
        params = self.algorithm.suggest(self.completed, [*self.pending.values(), *self.untold])[0]
        token = f"trial-{self.count}"
        self.count += 1
        self.pending[token] = params
        self.reports[token] = []
        return Job(dict(params), 0, EPOCHS, token=token, report_every_epoch=True)

    def on_epoch(self, job: Job, epoch: int, error: float, now: float) -> bool:
        own = self.reports[job.token]
        own.append((epoch, error))
        others = {tid: curve for tid, curve in self.reports.items() if tid != job.token}
        return not self.pruner.judge(job.token, own, others).prune

    def done(self, job: Job, epoch: int, error: float, now: float) -> None:
        own = self.reports[job.token]
        if not own or own[-1][0] != epoch:
            own.append((epoch, error))
        params = self.pending.pop(job.token)
        if epoch == job.stop or self.tell_pruned:
            self.completed.append(Observation(params, own[-1][1]))
        else:  # the control: a pruned trial is not told (only kept from being suggested again)
            self.untold.append(params)


class OptunaPruned:
    """Optuna's TPE with one of its pruners, through ask-and-tell."""

    def __init__(self, pruner: str, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruners = {
            "median": lambda: optuna.pruners.MedianPruner(),
            "sh": lambda: optuna.pruners.SuccessiveHalvingPruner(),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS),
        }
        self.optuna = optuna
        self.study = optuna.create_study(
            sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True), pruner=pruners[pruner]()
        )
        self.distributions = {
            name: optuna.distributions.IntDistribution(int(low), int(high), log=log)
            if integer
            else optuna.distributions.FloatDistribution(low, high, log=log)
            for name, low, high, log, integer in DIMENSIONS
        }
        self.told: set[int] = set()

    def ask(self, now: float) -> Job | None:
        trial = self.study.ask(self.distributions)
        return Job(dict(trial.params), 0, EPOCHS, token=trial, report_every_epoch=True)

    def on_epoch(self, job: Job, epoch: int, error: float, now: float) -> bool:
        trial = job.token
        trial.report(error, epoch)
        if trial.should_prune():
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            self.told.add(trial.number)
            return False
        return True

    def done(self, job: Job, epoch: int, error: float, now: float) -> None:
        if job.token.number not in self.told:
            self.study.tell(job.token, error)


class Dehb:
    """DEHB (differential evolution + Hyperband) through its ask-and-tell interface.

    ``n_workers=1``: the simulator runs the workers; more would make DEHB start a Dask cluster.
    """

    def __init__(self, seed: int) -> None:
        import tempfile

        import ConfigSpace
        from dehb import DEHB

        space = ConfigSpace.ConfigurationSpace(seed=seed)
        for name, low, high, log, integer in DIMENSIONS:
            kind = ConfigSpace.UniformIntegerHyperparameter if integer else ConfigSpace.UniformFloatHyperparameter
            space.add_hyperparameter(kind(name, lower=low, upper=high, log=log))
        self.logs = tempfile.TemporaryDirectory(prefix="dehb-")  # DEHB writes a log file; removed with this object
        self.dehb = DEHB(cs=space, dimensions=len(DIMENSIONS), min_fidelity=1, max_fidelity=EPOCHS, eta=3,
                         n_workers=1, seed=seed, output_path=self.logs.name,
                         log_level="ERROR")

    def ask(self, now: float) -> Job | None:
        job = self.dehb.ask()
        epochs = min(EPOCHS, max(1, round(float(job["fidelity"]))))
        return Job(dict(job["config"]), 0, epochs, token=job)

    def on_epoch(self, job: Job, epoch: int, error: float, now: float) -> bool:
        return True  # not called: DEHB jobs do not report each epoch

    def done(self, job: Job, epoch: int, error: float, now: float) -> None:
        self.dehb.tell(job.token, {"fitness": error, "cost": float(epoch)})


def methods() -> list[str]:
    names = [f"orchard-{alg}-{p}" for alg in ("random", "bayes") for p in ORCHARD_PRUNERS]
    return names + [f"optuna-tpe-{p}" for p in OPTUNA_PRUNERS] + ["orchard-bayes-hyperband-untold", "dehb"]


def make_scheduler(method: str, seed: int) -> Any:
    if method == "dehb":
        return Dehb(seed)
    tool, sampler, pruner = method.split("-", 2)
    if tool == "optuna":
        return OptunaPruned(pruner, seed)
    pruner, _, control = pruner.partition("-")
    return OrchardPruned("random" if sampler == "random" else BAYES, ORCHARD_PRUNERS[pruner], seed,
                         tell_pruned=control != "untold")


_BENCHES: dict[str, LCBench] = {}


def run_one(task: tuple[str, int, str, int, float]) -> dict[str, Any]:
    instance, seed, method, workers, full_trainings = task
    bench = _BENCHES.setdefault(instance, LCBench(instance))
    budget = bench.budget(full_trainings)
    started = time.process_time()
    trace = simulate(bench, make_scheduler(method, seed), workers, budget)
    return {
        "instance": instance,
        "seed": seed,
        "method": method,
        "jobs": trace.jobs,
        "cpu_s": time.process_time() - started,
        "regret": [bench.normalized_regret(trace.at(budget * f)) for f in FRACTIONS],
    }


def summarize(rows: list[dict[str, Any]], names: list[str]) -> str:
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in rows:
        cells.setdefault((row["instance"], row["seed"]), {})[row["method"]] = row["regret"]
    complete = {key: cell for key, cell in cells.items() if all(m in cell for m in names)}
    lines = [
        f"{len(complete)} instance x seed cells; mean normalized regret ± standard error; average rank (1 = best)",
        "method".ljust(24) + "".join(f"{int(f * 100):>4d} % regret   rank " for f in FRACTIONS),
    ]
    for name in names:
        text = name.ljust(24)
        for i in range(len(FRACTIONS)):
            values = [cell[name][i] for cell in complete.values()]
            ranks = []
            for cell in complete.values():
                ordered = sorted(cell[m][i] for m in names)
                mine = cell[name][i]
                ranks.append(1 + sum(v < mine for v in ordered) + (sum(v == mine for v in ordered) - 1) / 2)
            mean = statistics.fmean(values) if values else math.nan
            err = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
            text += f"  {mean:6.3f} ±{err:5.3f} {statistics.fmean(ranks) if ranks else math.nan:5.2f}"
        lines.append(text)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", nargs="+", default=list(DEV_INSTANCES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=methods(), choices=methods())
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--full-trainings", type=float, default=20.0)
    parser.add_argument("--jobs", type=int, default=1, help="processes running (instance, seed) cells")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args(argv)
    tasks = [
        (instance, seed, method, args.workers, args.full_trainings)
        for instance, seed in itertools.product(args.instances, range(args.first_seed, args.first_seed + args.seeds))
        for method in args.methods
    ]
    started = time.time()
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            rows = pool.map(run_one, tasks, chunksize=len(args.methods))
    else:
        rows = [run_one(task) for task in tasks]
    print(summarize(rows, args.methods))
    cpu = {m: statistics.fmean(r["cpu_s"] for r in rows if r["method"] == m) for m in args.methods}
    print("CPU seconds per run: " + ", ".join(f"{m} {c:.1f}" for m, c in cpu.items()))
    print(f"wall {time.time() - started:.0f} s, {len(tasks)} runs, {args.workers} simulated workers")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, default=str))


if __name__ == "__main__":
    main()
