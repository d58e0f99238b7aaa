"""Several objectives with real processes: 4 workers on a pickle file and on the wire server.

* ``hunt`` with 4 workers runs a script that reports both objectives at each
  step by name and is pruned by ``asha`` ranking the reports by non-dominated
  sorting: completed + pruned = max_trials, every stored verdict is reached
  again from the stored history, the front is non-dominated and feasible.
* ``workon`` with 4 loky processes breeds NSGA-II children: each evaluation
  recomputes, inside its worker process and from that worker's own read of the
  storage, the parent population after every complete generation, and every
  process finds the same populations as the stored history gives at the end
  (on MongoDB, where a completion can show up after a later-stamped one, this
  holds because nsga2 reads only the settled completions).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard.algorithms._nsga2 import generations, survivors
from orchard.algorithms.base import BaseAlgorithm
from orchard.history import History
from orchard.objectives import dominates, minimized
from orchard.pruners import Verdict, make_pruner
from orchard.space import params_hash
from orchard.trial import TrialStatus

pytestmark = pytest.mark.slow

GOALS = {"error": "min", "latency_ms": "min"}
LIMIT = "memory_gb <= 16"
POPULATION = 4

SCRIPT = '''
import argparse, math
import orchard
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
parser.add_argument("--y", type=float)
args = parser.parse_args()
g = 1 + 9 * args.y
for step in range(1, 7):
    error, latency = args.x + 1.0 / step, g * (1 - math.sqrt(args.x / g)) + 1.0 / step
    orchard.report({"error": error, "latency_ms": latency}, step)
    if orchard.should_prune():
        raise SystemExit(0)
orchard.report_results({"error": args.x, "latency_ms": g * (1 - math.sqrt(args.x / g)), "memory_gb": 20 * args.x})
'''


def assert_front_is_non_dominated_and_feasible(exp: orchard.Experiment) -> None:
    completed = exp.fetch_trials([TrialStatus.COMPLETED])
    feasible = [minimized(t.results, GOALS) for t in completed if t.results["memory_gb"] <= 16]
    front = exp.pareto_front()
    # empty exactly when no completed trial is feasible (asha may complete a single, infeasible one
    # of 12: the first trial at each rung always continues)
    assert bool(front) == bool(feasible) and all(t.results["memory_gb"] <= 16 for t in front)
    for trial in front:
        assert not any(dominates(v, minimized(trial.results, GOALS)) for v in feasible)


@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_hunt_with_four_workers_prunes_on_both_objectives(backend: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    from tests.conftest import backend_uri

    uri = backend_uri(backend, request, tmp_path)
    (tmp_path / "train.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    hunt = subprocess.run(
        [sys.executable, "-m", "orchard", "hunt", "-n", "mo-hunt", "--storage", uri, "--max-trials", "12",
         "--n-workers", "4", "--seed", "0", "--objective", "error:min", "--objective", "latency_ms:min",
         "--constraint", LIMIT, "--pruner", "{asha: {min_step: 1, reduction_factor: 3}}",
         "--working-dir", str(tmp_path / "runs"), sys.executable, str(tmp_path / "train.py"),
         "--x~uniform(0, 1)", "--y~uniform(0, 1)"],
        env=env, capture_output=True, text=True, timeout=300)
    assert hunt.returncode == 0, hunt.stdout[-2000:] + hunt.stderr[-2000:]
    exp = orchard.get_experiment("mo-hunt", storage=uri)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 12  # the budget, exactly
    assert counts[TrialStatus.PRUNED] > 0 and counts[TrialStatus.BROKEN] == 0
    trials = exp.storage.fetch_trials(exp.id)
    assert len({t.worker for t in trials}) > 1
    stored = {t.id: t.reports for t in trials if t.reports}
    pruner = make_pruner(exp.settings.pruner, exp.settings.objectives)  # as info does: reasons name them
    for trial in trials:
        assert all(isinstance(value, tuple) and len(value) == 2 for _, value in trial.reports)
        if trial.status is TrialStatus.PRUNED:
            verdict = Verdict.from_dict(trial.verdict or {})
            assert verdict.prune and pruner.recompute(trial.id, verdict, stored) == verdict
    assert_front_is_non_dominated_and_feasible(exp)


def population_digests(uri: str, name: str) -> list[str]:
    """The digest of NSGA-II's parent population after each complete generation, from a fresh read."""
    exp = orchard.get_experiment(name, storage=uri)
    history = History(exp.storage, exp.id, exp.settings.objectives, exp.settings.constraints)
    history.refresh()
    digests, current = [], []
    settled = BaseAlgorithm.settled(history.observations, history.pending())  # what nsga2 reads
    for g, generation in enumerate(generations(settled, POPULATION)):
        current = survivors(current + generation, POPULATION) if g else generation
        digests.append(hashlib.sha256(json.dumps([params_hash(m.params) for m in current]).encode()).hexdigest())
    return digests


def _writers(log: str) -> set[int]:
    return {json.loads(line)["pid"] for line in Path(log).read_text(encoding="utf-8").splitlines()}


def zdt1_logging(x: float, y: float, uri: str, name: str, log: str) -> dict[str, float]:
    """ZDT1 plus memory_gb; first writes the populations this worker process computes from its own read
    of the storage, then waits until another process has written too (up to 60 s), so that however
    slowly the processes start, more than one of them computes populations."""
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "digests": population_digests(uri, name)}) + "\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _writers(log) == {os.getpid()}:
        time.sleep(0.05)
    g = 1 + 9 * y
    return {"error": x, "latency_ms": g * (1 - math.sqrt(x / g)), "memory_gb": 20 * x}


@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_workon_with_four_processes_computes_the_same_generations(backend: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    from tests.conftest import backend_uri

    uri, log = backend_uri(backend, request, tmp_path), str(tmp_path / "populations.jsonl")
    exp = orchard.build_experiment("mo-nsga2", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, storage=uri,
                                   max_trials=24, seed=4, objectives=GOALS, constraints=[LIMIT],
                                   algorithm={"nsga2": {"population_size": POPULATION}})
    exp.workon(functools.partial(zdt1_logging, uri=uri, name="mo-nsga2", log=log), n_workers=4, progress=False)
    assert exp.storage.count_trials(exp.id)[TrialStatus.COMPLETED] == 24  # the budget, exactly
    final = population_digests(uri, "mo-nsga2")
    assert len(final) == 24 // POPULATION
    seen: list[dict[str, Any]] = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert len(_writers(log)) > 1  # several processes computed populations
    later = [entry for entry in seen if entry["digests"]]
    assert later and max(len(entry["digests"]) for entry in later) >= 3
    for entry in seen:  # whatever process computed them, from its own view: the stored history's populations
        assert entry["digests"] == final[:len(entry["digests"])]
    assert_front_is_non_dominated_and_feasible(exp)
