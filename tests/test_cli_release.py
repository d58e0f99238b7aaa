"""``orchard db release``: a careless release must not throw a live worker's evaluation away.

The command judges the trial's lease by observation, as workers do: a heartbeat
that changes while it watches means a live worker (refused unless ``--force``);
one that stands unchanged for 3 × heartbeat is lost and taken back. The worker
here is a thread heartbeating through its own storage handle, as a worker's
heartbeat thread does; the command runs in-process through :func:`orchard.cli.main`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import orchard
from orchard.cli import main
from orchard.errors import ReservationLostError
from orchard.experiment import Experiment
from orchard.storages import get_storage
from orchard.trial import Trial, TrialStatus
from tests.conftest import backend_uri

WORKER = "gpu-node-7:4242:0123456789abcdef"
HEARTBEAT = 0.2  # seconds: a lease stands unchanged for 0.6 s before it is lost


@pytest.fixture(params=["pickle", "mongomock", pytest.param("mongodb", marks=pytest.mark.slow)])
def uri(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("ORCHARD_"):
            monkeypatch.delenv(key)
    return backend_uri(str(request.param), request, tmp_path)


def reserved_trial(uri: str) -> tuple[Experiment, Trial]:
    experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=uri, heartbeat=HEARTBEAT)
    trial = experiment.storage.register_trial(experiment.id, {"x": 0.5}, worker=WORKER)
    return experiment, trial


@contextlib.contextmanager
def live_worker(uri: str, trial: Trial) -> Iterator[threading.Event]:
    """A worker's heartbeat thread writing every quarter heartbeat until the block ends."""
    stop, beating = threading.Event(), threading.Event()
    storage = get_storage(uri)

    def beat() -> None:
        while not stop.wait(HEARTBEAT / 4):
            try:
                storage.heartbeat_trial(trial.id, WORKER)
            except ReservationLostError:  # released under it (--force): a worker's heartbeat stops there
                return
            beating.set()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        assert beating.wait(10), "the heartbeat thread did not write"
        yield stop
    finally:
        stop.set()
        thread.join()
        storage.close()


def last_line(stderr: str) -> str:
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("orchard: error: "), line
    return line


def test_release_refuses_a_trial_whose_worker_heartbeats(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    experiment, trial = reserved_trial(uri)
    with live_worker(uri, trial):
        assert main(["db", "release", "-n", "e", trial.id[:10], "--storage", uri]) == 2
    line = last_line(capsys.readouterr().err)
    for named in (trial.id, WORKER, "heartbeat less than", "ago", "--force", "stop that worker"):
        assert named in line, (named, line)
    held = experiment.storage.get_trial(trial.id)
    assert held is not None and held.status is TrialStatus.RESERVED and held.worker == WORKER
    done = experiment.storage.complete_trial(trial.id, WORKER, 0.25)  # the evaluation was not thrown away
    assert done.status is TrialStatus.COMPLETED


def test_release_force_takes_a_live_worker_trial_at_once(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    experiment, trial = reserved_trial(uri)
    with live_worker(uri, trial):
        assert main(["db", "release", "-n", "e", trial.id, "--force", "--storage", uri]) == 0
    assert "released trial" in capsys.readouterr().out
    released = experiment.storage.get_trial(trial.id)
    assert released is not None and released.status is TrialStatus.INTERRUPTED and released.worker is None


def test_release_takes_back_a_trial_whose_heartbeat_stands_still(
    uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment, trial = reserved_trial(uri)  # its worker never heartbeats: it died after reserving
    assert main(["db", "release", "-n", "e", trial.id, "--storage", uri]) == 0
    out, err = capsys.readouterr()
    assert "watching its heartbeat" in err and "stood unchanged" in out and "now interrupted" in out
    released = experiment.storage.get_trial(trial.id)
    assert released is not None and released.status is TrialStatus.INTERRUPTED and released.worker is None


def test_an_empty_trial_id_releases_nothing(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``orchard db release -n e "$TRIAL"`` with the variable unset: every id starts with ""."""
    experiment, trial = reserved_trial(uri)
    assert main(["db", "release", "-n", "e", "", "--force", "--storage", uri]) == 2
    assert "TRIAL_ID is empty" in last_line(capsys.readouterr().err)
    held = experiment.storage.get_trial(trial.id)
    assert held is not None and held.status is TrialStatus.RESERVED


@pytest.mark.slow
@pytest.mark.parametrize("uri", ["pickle"], indirect=True)
def test_two_releases_of_one_lost_trial_release_it_once(uri: str, tmp_path: Path) -> None:
    """Two users run ``orchard db release`` on the same dead worker's trial at once (real processes)."""
    import subprocess
    import sys

    experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=uri, heartbeat=1.0)
    trial = experiment.storage.register_trial(experiment.id, {"x": 0.5}, worker=WORKER)  # never heartbeats
    command = [sys.executable, "-m", "orchard", "db", "release", "-n", "e", trial.id, "--storage", uri]
    env = {**os.environ, "PYTHONPATH": str(Path(orchard.__file__).parent.parent)}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    done = sorted((run.wait(60), *run.communicate()) for run in runs)
    (won, out, _), (lost, _, err) = done
    assert (won, lost) == (0, 2), done
    assert "now interrupted" in out
    assert "is now interrupted: it was released" in err.strip().splitlines()[-1]
    released = experiment.storage.get_trial(trial.id)
    assert released is not None and released.status is TrialStatus.INTERRUPTED and released.attempts == 1


def test_a_reservation_without_heartbeat_is_judged_like_any_other_and_costs_no_attempt() -> None:
    """A reserved trial another program (or an older Orchard) wrote without a heartbeat: unchanged for
    3 × heartbeat, it is taken back as every worker would take it back, its attempt not counted."""
    uri = backend_uri("mongomock", None, Path())  # type: ignore[arg-type]
    experiment, trial = reserved_trial(uri)
    experiment.storage._trials.update_one({"_id": trial.id}, {"$unset": {"heartbeat": 1}})  # type: ignore[attr-defined]
    assert main(["db", "release", "-n", "e", trial.id, "--storage", uri]) == 0
    released = experiment.storage.get_trial(trial.id)
    assert released is not None and (released.status, released.attempts) == (TrialStatus.INTERRUPTED, 0)


def test_the_refusal_bounds_the_heartbeat_age_by_the_last_read_that_saw_the_old_one() -> None:
    """The heartbeat landed between two reads a poll apart: it is "less than" a poll old, not 0 s."""
    from orchard.cli._release import release_if_lost
    from orchard.errors import ConfigurationError

    experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="mongomock://", heartbeat=4.0)
    trial = experiment.storage.register_trial(experiment.id, {"x": 0.5}, worker=WORKER)
    now, naps = [0.0], []

    def sleep(seconds: float) -> None:  # the worker heartbeats during the second wait
        now[0] += seconds
        naps.append(seconds)
        if len(naps) == 2:
            experiment.storage.heartbeat_trial(trial.id, WORKER)

    with pytest.raises(ConfigurationError, match="heartbeat less than 1.0 s ago"):
        release_if_lost(experiment, trial, clock=lambda: now[0], sleep=sleep)
    assert naps == [1.0, 1.0]
