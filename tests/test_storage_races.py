"""The coordination invariants (SPEC §5) under real races between spawned processes.

Every racer opens the storage from its URI, then all pass one start barrier
(:func:`orchard.testing.races.run_racing`). Only correctness is asserted,
never speed. The MongoDB cases talk to a real server process over the wire
(slow under contention, so they use fewer processes and trials).
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from orchard.errors import ReservationLostError
from orchard.storages import get_storage
from orchard.testing import races
from orchard.trial import TrialStatus
from tests.conftest import backend_uri

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CONFIG = {"space": {"i": "randint(0, 100000)"}, "algorithm": "random"}


def _experiment(uri: str, n_trials: int = 0) -> str:
    with get_storage(uri) as storage:
        exp = storage.create_experiment("race", CONFIG)
        for i in range(n_trials):
            storage.register_trial(exp, {"i": i})
    return exp


def _racer(index: int) -> str:
    return f"host:{index}:racer"


def _assert_completed_exactly_once(uri: str, exp: str, won: list[list[str]], n_trials: int) -> None:
    ids = [tid for per_process in won for tid in per_process]
    twice = [tid for tid, n in collections.Counter(ids).items() if n > 1]
    assert not twice, f"{len(twice)} trials were completed by two processes, e.g. {twice[:3]}"
    with get_storage(uri) as storage:
        trials = storage.fetch_trials(exp)
    assert len(trials) == n_trials
    assert set(ids) == {t.id for t in trials}, "some trials were never completed"
    assert collections.Counter(t.status for t in trials) == {TrialStatus.COMPLETED: n_trials}
    assert {t.attempts for t in trials} == {1}, "a trial was reserved more than once"
    winner = {tid: _racer(i) for i, per_process in enumerate(won) for tid in per_process}
    for trial in trials:  # the stored owner and result are those of the process that reported it
        assert trial.worker == trial.results["worker"] == winner[trial.id]


@pytest.mark.parametrize(("backend", "n_procs", "n_trials"), [
    pytest.param("pickle", 8, 300, id="pickle-8x300"),
    pytest.param("mongodb", 4, 50, id="mongodb-4x50"),
])
def test_every_trial_reserved_and_completed_exactly_once(
        backend: str, n_procs: int, n_trials: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    uri = backend_uri(backend, request, tmp_path)
    exp = _experiment(uri, n_trials)
    won = races.run_racing(races.reserve_and_complete_loop, [(uri, exp, _racer(i)) for i in range(n_procs)])
    _assert_completed_exactly_once(uri, exp, won, n_trials)


def test_same_params_registered_by_eight_processes_are_stored_once(tmp_path: Path) -> None:
    uri, n_procs, n_params = str(tmp_path / "race.pkl"), 8, 60
    exp = _experiment(uri)
    params = [{"i": i} for i in range(n_params)]
    outcomes = races.run_racing(races.register_same_params, [(uri, exp, params)] * n_procs)
    stored = sum(s for s, _ in outcomes)
    duplicates = sum(d for _, d in outcomes)
    assert (stored, duplicates) == (n_params, n_procs * n_params - n_params)
    with get_storage(uri) as storage:
        assert sorted(t.params["i"] for t in storage.fetch_trials(exp)) == list(range(n_params))


@pytest.mark.parametrize(("backend", "n_procs", "n_attempts", "budget"), [
    pytest.param("pickle", 8, 12, 40, id="pickle-8-procs"),
    pytest.param("mongodb", 4, 5, 8, id="mongodb-4-procs"),
])
def test_budget_claims_admit_exactly_the_budget(
        backend: str, n_procs: int, n_attempts: int, budget: int,
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    uri = backend_uri(backend, request, tmp_path)
    exp = _experiment(uri)
    outcomes = races.run_racing(races.claim_budget, [(uri, exp, n_attempts, budget, f"p{i}")
                                                     for i in range(n_procs)])
    admitted = sum(a for a, _ in outcomes)
    exhausted = sum(e for _, e in outcomes)
    assert (admitted, exhausted) == (budget, n_procs * n_attempts - budget)
    with get_storage(uri) as storage:
        assert len(storage.fetch_trials(exp)) == budget


@pytest.mark.parametrize(("backend", "n_procs"), [
    pytest.param("pickle", 8, id="pickle-8-procs"),
    pytest.param("mongodb", 4, id="mongodb-4-procs"),
])
def test_concurrent_create_experiment_gives_one_id(
        backend: str, n_procs: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    uri = backend_uri(backend, request, tmp_path)
    ids = races.run_racing(races.create_same_experiment, [(uri, "one", {"by": i}) for i in range(n_procs)])
    assert len(set(ids)) == 1, f"{len(set(ids))} different ids for one name"
    with get_storage(uri) as storage:
        records = storage.list_experiments()
    assert [(r.id, r.name) for r in records] == [(ids[0], "one")]
    assert records[0].config in [{"by": i} for i in range(n_procs)]


@pytest.mark.parametrize(("backend", "n_procs"), [
    pytest.param("pickle", 4, id="pickle-4-procs"),
    pytest.param("mongodb", 3, id="mongodb-3-procs"),
])
def test_lost_reservation_is_released_once_and_re_reserved_by_another_process(
        backend: str, n_procs: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    uri, dead = backend_uri(backend, request, tmp_path), "host:1:dead-worker"
    exp = _experiment(uri, 1)
    (held,) = races.run_racing(races.reserve_and_hold, [(uri, exp, dead)])
    assert held is not None and held["worker"] == dead
    # every racer observed the same lost lease; only its exact (worker, heartbeat) is released
    leases = {held["id"]: (dead, held["heartbeat"])}
    outcomes = races.run_racing(races.recover_lost, [(uri, exp, leases, 3)] * n_procs)
    released = [tid for o in outcomes for tid in o["released"]]
    winners = [o for o in outcomes if o["won"] is not None]
    assert released == [held["id"]], "the lost trial must be released by exactly one call"
    assert [w["won"] for w in winners] == [held["id"]], "exactly one process re-reserves it"
    with get_storage(uri) as storage:
        with pytest.raises(ReservationLostError):
            storage.complete_trial(held["id"], dead, -1.0)
        trial = storage.get_trial(held["id"])
    assert trial is not None and trial.status is TrialStatus.COMPLETED
    assert (trial.worker, trial.attempts, trial.objective) == (winners[0]["worker"], 2, 0.0)
