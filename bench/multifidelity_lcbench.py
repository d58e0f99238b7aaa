"""Multi-fidelity on the LCBench surrogate: Orchard's ``asha``/``hyperband`` options against baselines.

Every method runs on :mod:`_lcbench`'s simulated clock with 4 asynchronous workers, for a budget
of 20 full trainings (20 times an instance's median 52-epoch training time, spent by the
workers), on the 10 development instances, with several seeds each. Orchard's algorithm objects
are driven directly (history in, suggestions out, as a worker does): a free worker asks for one
suggestion given the completed trials and the pending ones (the other workers' jobs); a promoted
trial resumes its parent's checkpoint, so it costs only the epochs from the parent's rung to its
own. The objective is the validation error at the trial's fidelity.

Methods (``--methods``, comma separated; ``all`` by default):

==================  ==========================================================================
random              Orchard ``random``: every trial at 52 epochs
bayes               Orchard ``bayes`` (full fidelity, 52 epochs)
asha:OPTS           Orchard ``asha`` with options ``key=value`` joined by ``/`` (e.g.
                    ``asha:sampler=bayes/rule=stopping``); ``asha`` alone is the default
hyperband:OPTS      the same for ``hyperband``
optuna-tpe-hb       Optuna ``TPESampler`` + ``HyperbandPruner(min_resource=1, max_resource=52,
                    reduction_factor=3)``: trials train on, reporting every epoch, and stop when pruned
optuna-tpe-sha      Optuna ``TPESampler`` + ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)``
==================  ==========================================================================

The figures: mean normalized regret (:mod:`_lcbench`) at 25 % and 100 % of the budget, over
instance x seed, with its standard error (the standard deviation over the instance x seed runs
divided by their number's square root), and the mean rank (1 = best; per instance and seed, the
methods ranked by regret at 100 %, ties averaged). Two methods are within noise when their mean
regrets differ by less than twice the larger standard error. Also the fraction of the
configurations an Orchard method evaluated whose value lies within 1 % of a bound of its
dimension (on the dimension's search scale), averaged over the dimensions: random sampling
gives about 2 %.

Run: ``python bench/multifidelity_lcbench.py --seeds 5`` (about N minutes per Orchard ``bayes``
method on one core; the others are quicker). ``--jobs 2`` runs two processes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lcbench as L

WORKERS = 4
BUDGET = 20  # full trainings
FRACTIONS = (0.25, 1.0)
DEFAULT_METHODS = (
    "random", "bayes", "asha", "hyperband",
    "asha:sampler=random", "asha:sampler=bayes", "asha:sampler=bayes/rule=stopping",
    "asha:sampler=bayes/rule=stopping/sampler_fit=refined", "asha:sampler=bayes/sampler_fit=refined",
    "asha:sampler=bayes/reduction_factor=2", "hyperband:sampler=bayes",
    "hyperband:sampler=bayes/rule=stopping/sampler_fit=refined",
    "optuna-tpe-hb", "optuna-tpe-sha",
)


def parse_options(text: str) -> dict[str, Any]:
    """``key=value/...`` as options; ``bayes.KEY=VALUE`` sets an option of the ``bayes`` sampler."""
    options: dict[str, Any] = {}
    sampler: dict[str, Any] = {}
    for item in filter(None, text.split("/")):
        key, value = item.split("=")
        if key.startswith("bayes."):
            sampler[key.removeprefix("bayes.")] = int(value) if value.isdigit() else value
        else:
            options[key] = float(value) if key == "reduction_factor" else value
    if sampler:
        options["sampler"] = {"bayes": sampler}
    return options


class OrchardScheduler:
    """An Orchard algorithm object as the workers of a hunt use it: history in, one suggestion out."""

    def __init__(self, name: str, options: Mapping[str, Any], seed: int) -> None:
        from orchard.algorithms import make_algorithm
        from orchard.space import Space

        space = dict(L.SPACE)
        if name in ("random", "bayes"):  # full fidelity: every trial trains 52 epochs
            space.pop("epoch")
        self.space = Space.from_config(space)
        self.algorithm = make_algorithm({name: dict(options)}, self.space, seed)
        self.completed: list[Any] = []
        self.pending: dict[int, dict[str, Any]] = {}
        self.suggested: list[dict[str, Any]] = []
        self.ask_seconds: list[float] = []

    def ask(self, now: float) -> L.Job | None:
        from orchard.errors import SpaceExhaustedError

        started = time.process_time()
        try:
            params = self.algorithm.suggest(self.completed, list(self.pending.values()), n=1)[0]
        except SpaceExhaustedError:
            return None
        self.ask_seconds.append(time.process_time() - started)
        parent = self.algorithm.parent_of(params)
        stop = int(params.get("epoch", L.EPOCHS))
        start = int(parent["epoch"]) if parent is not None else 0
        job = L.Job(dict(params), start, stop, token=params)
        self.pending[id(job)] = params
        if parent is None:
            self.suggested.append(params)
        return job

    def on_epoch(self, job: L.Job, epoch: int, error: float, now: float) -> bool:
        return True

    def done(self, job: L.Job, epoch: int, error: float, now: float) -> None:
        from orchard.algorithms import Observation

        params = self.pending.pop(id(job))
        self.completed.append(Observation(params, error, end_time=now))


class OptunaScheduler:
    """Optuna ask-and-tell with a pruner: each trial trains toward 52 epochs, reporting every epoch."""

    def __init__(self, pruner: str, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.optuna = optuna
        pruners = {
            "hb": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=L.EPOCHS, reduction_factor=3),
            "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        }
        self.study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruners[pruner]())
        d = optuna.distributions
        self.distributions = {
            name: (d.IntDistribution(int(low), int(high), log=log) if integer
                   else d.FloatDistribution(low, high, log=log))
            for name, low, high, log, integer in L.DIMENSIONS
        }
        self.suggested: list[dict[str, Any]] = []

    def ask(self, now: float) -> L.Job:
        trial = self.study.ask(self.distributions)
        self.suggested.append(dict(trial.params))
        return L.Job(dict(trial.params), 0, L.EPOCHS, token=trial, report_every_epoch=True)

    def on_epoch(self, job: L.Job, epoch: int, error: float, now: float) -> bool:
        job.token.report(error, epoch)
        if job.token.should_prune():
            self.study.tell(job.token, state=self.optuna.trial.TrialState.PRUNED)
            job.token = None
            return False
        return True

    def done(self, job: L.Job, epoch: int, error: float, now: float) -> None:
        if job.token is not None:
            job.token.report(error, epoch)
            self.study.tell(job.token, error)


def make_scheduler(method: str, seed: int) -> Any:
    if method.startswith("optuna-tpe-"):
        return OptunaScheduler(method.removeprefix("optuna-tpe-"), seed)
    name, _, options = method.partition(":")
    return OrchardScheduler(name, parse_options(options), seed)


def near_bound_fraction(configs: list[dict[str, Any]], within: float = 0.01) -> float:
    """The fraction of values within ``within`` (1 %) of a bound of their dimension (search scale), over dimensions."""
    if not configs:
        return math.nan
    fractions = []
    for name, low, high, log, _ in L.DIMENSIONS:
        lo, hi = (math.log(low), math.log(high)) if log else (low, high)
        near = 0
        for config in configs:
            value = float(config[name])
            u = ((math.log(value) if log else value) - lo) / (hi - lo)
            near += u <= within or u >= 1 - within
        fractions.append(near / len(configs))
    return statistics.fmean(fractions)


def run_one(method: str, instance: str, seed: int) -> dict[str, Any]:
    bench = L.LCBench(instance)
    scheduler = make_scheduler(method, seed)
    budget = bench.budget(BUDGET)
    started = time.process_time()
    trace = L.simulate(bench, scheduler, WORKERS, budget)
    asks = getattr(scheduler, "ask_seconds", [])
    return {
        "method": method, "instance": instance, "seed": seed,
        "regret": [bench.normalized_regret(trace.at(budget * f)) for f in FRACTIONS],
        "jobs": trace.jobs, "cpu": time.process_time() - started,
        "near_bound": near_bound_fraction(scheduler.suggested),
        # within 1 % of the faces of the box a bayes sampler draws from (asha's INTERIOR_MARGIN, 2 %)
        "near_face": near_bound_fraction(scheduler.suggested, 0.03),
        "ask_median": statistics.median(asks) if asks else math.nan,
    }


def ranks(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, float]:
    by_run: dict[tuple[str, int], dict[str, float]] = {}
    for row in rows:
        by_run.setdefault((row["instance"], row["seed"]), {})[row["method"]] = row["regret"][-1]
    totals = {m: [] for m in methods}  # type: dict[str, list[float]]
    for values in by_run.values():
        if len(values) != len(methods):
            continue
        ordered = sorted(values.values())
        for m, v in values.items():
            first = ordered.index(v)
            totals[m].append(first + 1 + (ordered.count(v) - 1) / 2)
    return {m: statistics.fmean(r) if r else math.nan for m, r in totals.items()}


def table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    rank = ranks(rows, methods)
    lines = ["| method | regret @25 % | regret @100 % | mean rank | near a bound (1 %) | within 3 % | jobs | median suggestion, promotions included (ms CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    for method in sorted(methods, key=lambda m: rank[m]):
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for i in range(len(FRACTIONS)):
            values = [r["regret"][i] for r in mine]
            se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
            cells.append(f"{statistics.fmean(values):.3f} ± {se:.3f}")
        near = statistics.fmean(r["near_bound"] for r in mine)
        face = statistics.fmean(r.get("near_face", math.nan) for r in mine)
        jobs = statistics.fmean(r["jobs"] for r in mine)
        ask = statistics.median(r["ask_median"] for r in mine)
        lines.append(f"| `{method}` | {cells[0]} | {cells[1]} | {rank[method]:.2f} | {near:.1%} | {face:.1%} | {jobs:.0f} | "
                     f"{ask * 1000:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all")
    parser.add_argument("--instances", default=",".join(L.DEV_INSTANCES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--log", type=Path, help="append each run as a JSON line to this file")
    parser.add_argument("--from-logs", type=Path, nargs="*", help="print the table of these logs, run nothing")
    args = parser.parse_args()
    methods = list(DEFAULT_METHODS) if args.methods == "all" else args.methods.split(",")
    if args.from_logs:
        import json

        logged = [json.loads(line) for path in args.from_logs for line in path.read_text().splitlines()]
        logged = [r for r in logged if r["method"] in methods or args.methods == "all"]
        print(table(logged, sorted({r["method"] for r in logged})))
        return
    runs = [(m, i, s) for i in args.instances.split(",") for s in range(args.seeds) for m in methods]
    rows: list[dict[str, Any]] = []
    import json

    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(run_one, *zip(*runs)):
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.log:
                with args.log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"LCBench surrogate, {len(args.instances.split(','))} instances x {args.seeds} seeds, "
          f"{WORKERS} workers, budget {BUDGET} full trainings; regret: mean ± standard error")
    print(table(rows, methods))


if __name__ == "__main__":
    main()
