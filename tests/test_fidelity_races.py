"""Multi-fidelity with real processes: four workers racing on ASHA and Hyperband, no lock, no master.

Each worker decides promotions from its own view of the shared history. The
checks are the invariants a user relies on: the exact budget (evaluations at
every fidelity count), every promotion has a completed parent one rung down
with the same other params, no trial is promoted twice, and no rung holds more
promotions than its quota ``floor(completed below / eta)`` plus what the
views of the three racing workers can justify (a racer that has not yet seen
another's fresh promotion may fill the same slot with a different trial).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import pytest

import orchard
from orchard.algorithms import Asha, make_algorithm
from orchard.space import Space
from orchard.trial import TrialStatus
from tests import fidelity_workloads

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 4
BUDGET = 120


def race(storage: str, algorithm: str) -> orchard.Experiment:
    with SPAWN.Pool(WORKERS) as pool:
        results = [pool.apply_async(fidelity_workloads.race_process, (storage, "mf", algorithm, BUDGET))
                   for _ in range(WORKERS)]
        reports = [r.get(timeout=240) for r in results]  # every process exits by itself
    assert all(r["counts"]["completed"] == BUDGET for r in reports)
    return orchard.get_experiment("mf", storage=storage)


def assert_promotions_are_sound(exp: orchard.Experiment) -> None:
    algo = make_algorithm(exp.algorithm, Space.from_config(exp.config["space"]))
    assert isinstance(algo, Asha)
    trials = {t.id: t for t in exp.fetch_trials()}
    statuses = Counter(t.status for t in trials.values())
    assert statuses == {TrialStatus.COMPLETED: BUDGET}, statuses  # exact budget, nothing broken
    assert len({t.worker for t in trials.values()}) >= 2, "the workers did not race"
    promotions = [t for t in trials.values() if t.parent is not None]
    assert promotions, "no trial was ever promoted"
    for child in promotions:
        parent = trials[child.parent]  # type: ignore[index]
        assert parent.status is TrialStatus.COMPLETED
        assert algo.rung_index(child.params) == algo.rung_index(parent.params) + 1  # type: ignore[operator]
        assert {k: v for k, v in child.params.items() if k != "epochs"} == \
               {k: v for k, v in parent.params.items() if k != "epochs"}
        assert algo.parent_of(child.params) == parent.params
    for trial in trials.values():  # a trial above its bracket's first rung is always a promotion
        assert (trial.parent is not None) == (algo.parent_of(trial.params) is not None)
    parents = [t.parent for t in promotions]
    assert len(parents) == len(set(parents)), "a trial was promoted twice"
    completed: Counter[tuple[int, int]] = Counter()
    promoted: Counter[tuple[int, int]] = Counter()
    for trial in trials.values():
        rung, bracket = algo.rung_index(trial.params), algo.bracket_of(trial.params)
        assert rung is not None
        completed[bracket, rung] += 1
        if trial.parent is not None:
            promoted[bracket, rung - 1] += 1
    for key, count in promoted.items():
        assert count <= completed[key] // algo.eta + (WORKERS - 1), (key, count, completed[key])


@pytest.mark.parametrize("algorithm", ["asha", "hyperband"])
def test_four_workers_race_over_pickle(tmp_path: Any, algorithm: str) -> None:
    assert_promotions_are_sound(race(str(tmp_path / "orchard.pkl"), algorithm))


@pytest.mark.parametrize("algorithm", ["asha", "hyperband"])
def test_four_workers_race_over_mongodb_wire(mongo_db_uri: str, algorithm: str) -> None:
    assert_promotions_are_sound(race(mongo_db_uri, algorithm))
