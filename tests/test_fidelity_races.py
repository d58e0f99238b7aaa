"""Multi-fidelity with real processes: four workers racing on ASHA and Hyperband, no lock, no master.

Each worker decides promotions from its own view of the shared history. The
checks are the invariants a user relies on: the exact budget (evaluations at
every fidelity count), every promotion has a completed parent one rung down
with the same other params, no trial is promoted twice, and no rung holds more
promotions than its quota ``floor(completed below / eta)`` plus what the
views of the three racing workers can justify (a racer that has not yet seen
another's fresh promotion may fill the same slot with a different trial).

With ASHA's ``stopping`` rule the quota gives way to a verdict per arrival:
every promotion's parent ranked in the top ``1/eta`` of the trials that had
completed at its rung when it did (by recorded ``end_time``). A result
recorded just before the parent's may not have been visible yet to the
promoter; a verdict that holds without the results recorded in the last
``VISIBILITY`` seconds before the promotion is also accepted.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

import orchard
from orchard.algorithms import Asha, make_algorithm
from orchard.algorithms._rungs import config_key, survives
from orchard.space import Space
from orchard.trial import Trial, TrialStatus
from tests import fidelity_workloads

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 4
BUDGET = 120
VISIBILITY = 1.0  # seconds: how recent a result may be and still be unseen by a promoter
# random new points: the races are about promotions, and a model's fit would only slow the workers
QUOTA = {"asha": {"sampler": "random", "rule": "promotion"}}
QUOTA_HYPERBAND = {"hyperband": {"sampler": "random", "rule": "promotion"}}
STOPPING = {"asha": {"sampler": "random", "rule": "stopping"}}


def race(storage: str, algorithm: Any) -> orchard.Experiment:
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
    if algo.stopping:
        for child in promotions:
            assert_survived(algo, trials[child.parent], child, trials.values())  # type: ignore[index]
        assert len(promotions) < sum(completed.values()) - completed[0, len(algo.rungs) - 1], "nothing stopped"
        return
    for key, count in promoted.items():
        assert count <= completed[key] // algo.eta + (WORKERS - 1), (key, count, completed[key])


def assert_survived(algo: Asha, parent: Trial, child: Trial, trials: Iterable[Trial]) -> None:
    """``parent`` was in the top 1/eta of its rung when it arrived, as the promoter of ``child`` could see it."""
    def arrival(t: Trial) -> tuple[float, str]:
        return t.end_time or 0.0, config_key(t.params, algo.fidelity_name)

    rung = [t for t in trials if t.params[algo.fidelity_name] == parent.params[algo.fidelity_name]
            and algo.bracket_of(t.params) == algo.bracket_of(parent.params) and arrival(t) <= arrival(parent)]
    assert child.submit_time is not None
    visible = [t for t in rung if t is parent or (t.end_time or 0.0) < child.submit_time - VISIBILITY]
    verdicts = []
    for seen in (rung, visible):
        ranks = sorted((t.objective, config_key(t.params, algo.fidelity_name)) for t in seen)
        position = ranks.index((parent.objective, config_key(parent.params, algo.fidelity_name)))
        verdicts.append(survives(position, len(seen), algo.eta))
    assert any(verdicts), (parent.params, parent.objective, len(rung), len(visible))


ALGORITHMS = pytest.mark.parametrize("algorithm", [QUOTA, QUOTA_HYPERBAND, STOPPING],
                                     ids=["asha", "hyperband", "stopping"])


@ALGORITHMS
def test_four_workers_race_over_pickle(tmp_path: Any, algorithm: Any) -> None:
    assert_promotions_are_sound(race(str(tmp_path / "orchard.pkl"), algorithm))


@ALGORITHMS
def test_four_workers_race_over_mongodb_wire(mongo_db_uri: str, algorithm: Any) -> None:
    assert_promotions_are_sound(race(mongo_db_uri, algorithm))
