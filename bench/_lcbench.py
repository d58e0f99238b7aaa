"""YAHPO Gym's LCBench surrogate with a simulated clock: multi-fidelity benchmarks without training.

LCBench (YAHPO Gym 1.0.2, data in ``/work/shared/benchdata/yahpo``, or ``$ORCHARD_YAHPO_DATA``) is
a surrogate of the learning curves of MLPs on 34 OpenML tasks: for a configuration and an epoch
(1-52) it predicts the validation accuracy and the cumulative training time. Nothing is
trained, so a benchmark of many methods, seeds and instances runs in minutes on one core, and
its figures do not depend on the machine's load.

Definitions (the same for every method)
---------------------------------------
* **Objective**: the validation error, ``1 - val_accuracy / 100``, minimized.
* **Time**: the surrogate's cumulative training time up to an epoch, made a running maximum over
  epochs (the surrogate's is not always monotone). Training a configuration from epoch ``e0``
  (``0``: from scratch) to epoch ``e`` costs ``time[e] - time[e0]`` seconds of one worker: a
  promoted trial resumes its parent's checkpoint.
* **Budget**: "``k`` full trainings" is ``k`` times the median 52-epoch time of
  :data:`REFERENCE_SAMPLE` random configurations, counted as the total simulated time the
  workers spent training (idle workers spend nothing).
* **Normalized regret** of an error ``v``: ``(v - best) / (median - best)``, clipped at 0, where
  ``best`` is the lowest error at any epoch of :data:`REFERENCE_SAMPLE` random configurations
  (seed 0), and ``median`` is the median over them of the 52-epoch error. 0 is as good as the
  best of a large random sample, 1 as good as a typical random configuration.

API
---
``LCBench(instance)``
    :attr:`LCBench.space` (Orchard prior strings, fidelity ``epoch``), :data:`DIMENSIONS`
    (``name, low, high, log, integer``: enough for Optuna's distributions or any other tool),
    :meth:`LCBench.curve` ``(config) -> (errors, times)``: 52 values each, for epochs 1..52,
    computed in one batched surrogate call and cached; :meth:`LCBench.normalized_regret`;
    :meth:`LCBench.budget` ``(full_trainings)``.
``simulate(bench, scheduler, workers, budget)``
    The event loop (in the style of Syne Tune's simulator back-end): a heap of per-epoch events
    of ``workers`` asynchronous workers. A free worker asks the :class:`Scheduler` for a
    :class:`Job` (train ``config`` from ``start`` to ``stop`` epochs); each epoch trained is
    an event at the simulated time it completes, where :meth:`Scheduler.on_epoch` may stop the
    job (a step-wise pruner), freeing the worker at that epoch's time; a job ended either way is
    told with :meth:`Scheduler.done`. The run ends when the workers have spent ``budget``
    seconds. Returns a :class:`Trace`: the incumbent (lowest error the method has been told:
    every epoch for jobs with ``report_every_epoch``, the last epoch otherwise) against the
    budget spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import io
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Where the LCBench data lives (the folder holding ``lcbench/``).
DATA = Path(os.environ.get("ORCHARD_YAHPO_DATA", "/work/shared/benchdata/yahpo"))
#: The development instances (OpenML task ids) of the project's benchmarks.
DEV_INSTANCES = ("3945", "7593", "34539", "126025", "126026", "146212", "167104", "167149", "168908", "189908")
EPOCHS = 52
#: Random configurations (seed 0) that define an instance's regret scale and budget unit.
REFERENCE_SAMPLE = 1000
#: The reference figures, computed once per instance and kept here (delete to recompute).
REFERENCE_FILE = Path(__file__).resolve().parent / "logs" / "lcbench_reference.json"

#: ``(name, low, high, log, integer)`` of each hyperparameter.
DIMENSIONS: tuple[tuple[str, float, float, bool, bool], ...] = (
    ("batch_size", 16, 512, True, True),
    ("learning_rate", 1e-4, 1e-1, True, False),
    ("max_dropout", 0.0, 1.0, False, False),
    ("max_units", 64, 1024, True, True),
    ("momentum", 0.1, 0.99, False, False),
    ("num_layers", 1, 5, False, True),
    ("weight_decay", 1e-5, 0.1, False, False),
)
#: Orchard's search space; integers are searched on their (log-)scale and rounded by :func:`clean`.
SPACE: dict[str, str] = {
    **{name: f"{'loguniform' if log else 'uniform'}({low!r}, {high!r})" for name, low, high, log, _ in DIMENSIONS},
    "epoch": f"fidelity(1, {EPOCHS}, base=3)",
}


def clean(config: Mapping[str, Any]) -> dict[str, Any]:
    """The seven hyperparameters of ``config`` (other keys dropped), integers rounded, in bounds."""
    out: dict[str, Any] = {}
    for name, low, high, _, integer in DIMENSIONS:
        value = min(max(float(config[name]), low), high)
        # the surrogate's float bounds are a hair inside the nominal ones (1.0000000000000009e-4)
        out[name] = round(value) if integer else min(max(value, low * (1 + 1e-12)), high * (1 - 1e-12))
    return out


def sample_configs(count: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``count`` random configurations, uniform on each dimension's (log-)scale."""
    configs = []
    for _ in range(count):
        point = {}
        for name, low, high, log, _ in DIMENSIONS:
            u = rng.uniform(np.log(low), np.log(high)) if log else rng.uniform(low, high)
            point[name] = float(np.exp(u)) if log else float(u)
        configs.append(clean(point))
    return configs


class LCBench:
    """One LCBench instance: cached learning curves and the regret scale (see the module docstring)."""

    space = SPACE

    def __init__(self, instance: str) -> None:
        from yahpo_gym import benchmark_set, local_config

        local_config.init_config()
        local_config.set_data_path(str(DATA))
        self.instance = str(instance)
        with contextlib.redirect_stdout(io.StringIO()):  # yahpo prints citations
            self._bench = benchmark_set.BenchmarkSet("lcbench", instance=self.instance, multithread=False)
        self._curves: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}
        self.best, self.median_error, self.median_time = self._reference()

    def curves(self, configs: Sequence[Mapping[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`curve` of many configurations, the uncached ones in one surrogate call."""
        cleaned = [clean(c) for c in configs]
        keys = [tuple(c.values()) for c in cleaned]
        missing = list({k: c for k, c in zip(keys, cleaned) if k not in self._curves}.items())
        if missing:
            rows = [{**c, "epoch": e, "OpenML_task_id": self.instance} for _, c in missing for e in range(1, EPOCHS + 1)]
            results = self._bench.objective_function(rows)
            for i, (key, _) in enumerate(missing):
                chunk = results[i * EPOCHS:(i + 1) * EPOCHS]
                errors = np.array([1.0 - r["val_accuracy"] / 100.0 for r in chunk])
                times = np.maximum.accumulate(np.array([max(r["time"], 0.0) for r in chunk]))
                self._curves[key] = (errors, times)
        return [self._curves[k] for k in keys]

    def curve(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(errors, times)`` of ``config``: index ``e - 1`` holds epoch ``e`` (cumulative time, running max)."""
        return self.curves([config])[0]

    def normalized_regret(self, value: float) -> float:
        """``(value - best) / (median - best)``, clipped at 0 (see the module docstring)."""
        return max(0.0, (value - self.best) / (self.median_error - self.best))

    def budget(self, full_trainings: float) -> float:
        """Simulated worker seconds worth ``full_trainings`` median 52-epoch trainings."""
        return full_trainings * self.median_time

    def _reference(self) -> tuple[float, float, float]:
        table = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {}
        if self.instance not in table:
            configs = sample_configs(REFERENCE_SAMPLE, np.random.default_rng(0))
            curves = self.curves(configs)
            table[self.instance] = {
                "best": float(min(errors.min() for errors, _ in curves)),
                "median_error": float(statistics.median(errors[-1] for errors, _ in curves)),
                "median_time": float(statistics.median(times[-1] for _, times in curves)),
            }
            REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
            REFERENCE_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
            self._curves.clear()  # the sample is not the methods' to reuse for free (memory only)
        row = table[self.instance]
        return row["best"], row["median_error"], row["median_time"]


@dataclasses.dataclass
class Job:
    """Train ``config`` from epoch ``start`` (0: from scratch) to epoch ``stop``; ``token`` is the scheduler's."""

    config: dict[str, Any]
    start: int
    stop: int
    token: Any = None
    report_every_epoch: bool = False


class Scheduler(Protocol):
    """What :func:`simulate` drives: a method that hands out jobs and hears their results."""

    def ask(self, now: float) -> Job | None:
        """The next job for a free worker, or ``None`` to leave it idle until another job ends."""

    def on_epoch(self, job: Job, epoch: int, error: float, now: float) -> bool:
        """Told each epoch before ``job.stop`` (when ``report_every_epoch``): ``False`` stops the job there."""

    def done(self, job: Job, epoch: int, error: float, now: float) -> None:
        """The job ended at ``epoch`` (``job.stop``, or earlier if stopped) with ``error``."""


@dataclasses.dataclass
class Trace:
    """The incumbent against the budget spent: ``spent[i]`` seconds gave ``best[i]`` (both increasing/decreasing)."""

    spent: list[float] = dataclasses.field(default_factory=list)
    best: list[float] = dataclasses.field(default_factory=list)
    jobs: int = 0

    def record(self, spent: float, error: float) -> None:
        if not self.best or error < self.best[-1]:
            self.spent.append(spent)
            self.best.append(error)

    def at(self, spent: float) -> float:
        """The incumbent once ``spent`` seconds were spent (``inf`` before the first result)."""
        index = int(np.searchsorted(self.spent, spent, side="right")) - 1
        return self.best[index] if index >= 0 else float("inf")


def simulate(bench: LCBench, scheduler: Scheduler, workers: int, budget: float) -> Trace:
    """Run ``scheduler`` on ``workers`` simulated workers until they spent ``budget`` seconds."""
    trace = Trace()
    events: list[tuple[float, int, int, float, Job]] = []  # (time, sequence, epoch, time trained before, job)
    sequence = 0
    spent = 0.0

    def push(at: float, epoch: int, trained: float, job: Job) -> None:
        nonlocal sequence
        heapq.heappush(events, (at, sequence, epoch, trained, job))
        sequence += 1

    def start(now: float) -> bool:
        job = scheduler.ask(now)
        if job is None:
            return False
        job.config = clean(job.config)
        _, times = bench.curve(job.config)
        first = job.start + 1 if job.report_every_epoch else job.stop
        trained = float(times[job.start - 1]) if job.start > 0 else 0.0
        push(now + float(times[first - 1]) - trained, first, trained, job)
        trace.jobs += 1
        return True

    for _ in range(workers):
        if not start(0.0):
            break
    while events and spent < budget:
        now, _, epoch, trained, job = heapq.heappop(events)
        errors, times = bench.curve(job.config)
        spent += float(times[epoch - 1]) - trained
        error = float(errors[epoch - 1])
        if job.report_every_epoch or epoch == job.stop:
            trace.record(min(spent, budget), error)
        if epoch < job.stop and scheduler.on_epoch(job, epoch, error, now):
            push(now + float(times[epoch] - times[epoch - 1]), epoch + 1, float(times[epoch - 1]), job)
            continue
        scheduler.done(job, epoch, error, now)
        while len(events) < workers and spent < budget and start(now):
            pass
    return trace
