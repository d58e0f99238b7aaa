"""The worker loop's parts in one process: pacemaker, history view, interrupts, idle exit."""

from __future__ import annotations

import time
import uuid

import pytest

from orchard.objective import Outcome
from orchard.space import Space
from orchard.storages import get_storage
from orchard.trial import Trial, TrialStatus
from orchard.worker import History, Pacemaker, Worker, WorkerSettings

SPACE = Space.from_config({"x": "uniform(0, 1)"})


@pytest.fixture
def storage():
    return get_storage(f"memory://{uuid.uuid4().hex}")


@pytest.fixture
def exp_id(storage) -> str:
    return storage.create_experiment("e", {"space": SPACE.config()})


def settings(**overrides) -> WorkerSettings:
    values = {"space": SPACE, "algorithm": {"random": {}}, "max_trials": 5, "heartbeat": 30.0}
    values.update(overrides)
    return WorkerSettings(**values)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_pacemaker_refreshes_heartbeats_and_reports_lost_reservations(storage, exp_id) -> None:
    trial = storage.register_trial(exp_id, {"x": 0.5}, worker="w1")
    pacemaker = Pacemaker(storage, "w1", every=0.02)
    pacemaker.watch(trial.id)
    wait_for(lambda: storage.get_trial(trial.id).heartbeat > trial.heartbeat)
    storage.release_trial(trial.id, None)  # someone declared the reservation stale
    wait_for(lambda: pacemaker.is_lost(trial.id))
    assert pacemaker.unwatch(trial.id) is True
    pacemaker.close()


def test_history_view_is_incremental_and_reports_new_pending_points(storage, exp_id) -> None:
    history = History(storage, exp_id)
    assert history.refresh() == []
    a = storage.register_trial(exp_id, {"x": 0.1}, worker="w1")
    assert history.refresh() == [{"x": 0.1}]
    assert history.refresh() == []  # nothing new
    storage.complete_trial(a.id, "w1", 1.0)
    storage.register_trial(exp_id, {"x": 0.2})
    assert history.refresh() == [{"x": 0.2}]
    assert [o.params for o in history.observations] == [{"x": 0.1}]
    history._cursor = None  # a full re-read re-sends every trial: completed ones are not observed twice
    history.refresh()
    assert len(history.observations) == 1 and history.counts[TrialStatus.COMPLETED] == 1
    assert history.pending() == [{"x": 0.2}]
    assert history.counts[TrialStatus.COMPLETED] == 1 and history.counts[TrialStatus.NEW] == 1


def test_ctrl_c_releases_the_running_trial(storage, exp_id) -> None:
    def interrupted(trial: Trial) -> Outcome:
        raise KeyboardInterrupt

    worker = Worker(storage, exp_id, settings(), interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    (trial,) = storage.fetch_trials(exp_id)
    assert trial.status is TrialStatus.INTERRUPTED and trial.worker is None
    # the next worker takes that very trial first
    done = Worker(storage, exp_id, settings(max_trials=1), lambda t: Outcome(objective=1.0)).run()
    assert done.completed == 1 and storage.get_trial(trial.id).status is TrialStatus.COMPLETED


def test_worker_waits_for_others_then_exits_on_idle_timeout(storage, exp_id) -> None:
    storage.register_trial(exp_id, {"x": 0.9}, worker="someone-else", budget=1)
    start = time.monotonic()
    report = Worker(storage, exp_id, settings(max_trials=1, idle_timeout=0.3), lambda t: Outcome(objective=0.0)).run()
    assert report.reason == "idle" and report.completed == 0
    assert time.monotonic() - start < 5


def test_worker_stops_when_budget_met_and_records_outcomes(storage, exp_id) -> None:
    seen: list[tuple[str, bool]] = []
    outcomes = iter([Outcome(objective=1.0), Outcome.failure("ValueError", "boom"), Outcome(objective=2.0)] * 3)
    worker = Worker(storage, exp_id, settings(max_trials=4), lambda t: next(outcomes),
                    on_outcome=lambda t, o: seen.append((t.status.value, o.ok)))
    report = worker.run()
    assert report.reason == "budget" and report.completed == 4 and report.broken == 2
    assert storage.count_trials(exp_id)[TrialStatus.COMPLETED] == 4
    assert ("broken", False) in seen and len(seen) == 6


def test_exhausted_grid_ends_the_worker(storage) -> None:
    space = Space.from_config({"k": "randint(0, 3)"})
    exp_id = storage.create_experiment("g", {"space": space.config()})
    worker = Worker(storage, exp_id, WorkerSettings(space=space, algorithm={"grid": {}}, max_trials=10),
                    lambda t: Outcome(objective=float(t.params["k"])))
    report = worker.run()
    assert report.reason == "exhausted" and report.completed == 3
