"""Two attempts of one script trial at once: a frozen worker wakes while another runs its trial.

A worker frozen (SIGSTOP, a paused VM) for longer than the lease loses its trial to another
worker, which runs the trial's script again in the same trial folder; the frozen worker and its
script wake up before the worker learns that the reservation is gone.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchard.runner import CommandTemplate, ScriptRunner
from orchard.storages import get_storage
from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus
from orchard.worker import Worker, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]

#: The first run of the trial reports 10, then waits for ``go-first``, then 20, 30; the second reports
#: 10.5, waits for ``go-second``, then 20.5, 30.5. Each writes its last value as the result.
SCRIPT = """
import os, sys, time
import orchard

signals = sys.argv[1]
try:
    os.close(os.open(os.path.join(signals, "first"), os.O_CREAT | os.O_EXCL))
    run = "first"
except FileExistsError:
    run = "second"
tag = 0.0 if run == "first" else 0.5
for step in (1, 2, 3):
    orchard.report(10 * step + tag, step)
    while step == 1 and not os.path.exists(os.path.join(signals, "go-" + run)):
        time.sleep(0.01)
orchard.report_objective(30 + tag)
"""


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, f"waited 60 s for {what}"
        time.sleep(0.01)


def _stored(storage: BaseStorage, trial_id: str) -> Trial:
    trial = storage.get_trial(trial_id)
    assert trial is not None
    return trial


@pytest.mark.timeout(120)
def test_a_woken_attempt_of_a_script_never_reports_into_the_attempt_that_took_its_trial_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the chaos test: the woken worker's follower read the new attempt's report file and wrote its
    refusals into the verdict file the new script read (its report() raised "step 3 is not after the last
    reported step 3"); its script's own reports were appended to the new attempt's file and stored as its."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    script, signals = tmp_path / "train.py", tmp_path / "signals"
    script.write_text(SCRIPT)
    signals.mkdir()
    template = CommandTemplate.parse([sys.executable, str(script), str(signals), "--x~uniform(0, 1)"])
    storage = get_storage("memory://")
    space = template.space
    exp = storage.create_experiment("e", {"space": space})
    settings = WorkerSettings.from_dict({"space": space, "algorithm": "random", "max_trials": 1,
                                         "heartbeat": 30.0, "pruner": "none"})
    assert isinstance(settings, WorkerSettings)
    workers = [Worker(storage, exp, settings, ScriptRunner(template, "e", str(tmp_path / "runs")), name=name)
               for name in ("frozen", "taker")]
    frozen, taker = workers
    try:
        trial = frozen.next_trial()
        first = threading.Thread(target=frozen._run_trial, args=(trial,))
        first.start()
        _until(lambda: _stored(storage, trial.id).reports == [(1, 10.0)], "the first run's report")
        lease = _stored(storage, trial.id).lease
        assert lease is not None
        storage.release_lost(exp, {trial.id: lease}, 3)  # the lease ran out: its worker is frozen
        assert taker.next_trial().id == trial.id
        second = threading.Thread(target=taker._run_trial, args=(trial,))
        second.start()
        _until(lambda: _stored(storage, trial.id).reports == [(1, 10.5)], "the second run's report")
        (signals / "go-first").touch()  # the frozen worker and its script wake up
        first.join(60)
        (signals / "go-second").touch()
        second.join(60)
        assert not first.is_alive() and not second.is_alive()
    finally:
        for worker in workers:
            worker.pacemaker.close()
            worker.evaluation.close()
    stored = _stored(storage, trial.id)
    assert stored.reports == [(1, 10.5), (2, 20.5), (3, 30.5)], stored.reports
    assert stored.status is TrialStatus.COMPLETED and stored.worker == "taker", stored.error
