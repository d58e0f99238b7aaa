"""Joining a stored experiment while other workers join it too."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import orchard
from orchard.cli import main
from orchard.joining import join_experiment
from orchard.storages import get_storage
from tests import workloads


def test_a_raise_of_max_trials_read_before_a_larger_one_never_lowers_it(tmp_path) -> None:
    """Joiners started at once with --max-trials 16 and 17 each read max_trials=5, then wrote their own value:
    the 16 landing last lowered the budget the other had raised to 17 (the docs: raised, never lowered)."""
    storage = str(tmp_path / "orchard.pkl")
    orchard.build_experiment("exp", space=workloads.SPACE, max_trials=5, storage=storage)
    store = get_storage(storage)
    read_by_the_slower = store.require_experiment("exp")
    orchard.build_experiment("exp", max_trials=17, storage=storage)  # the faster joiner's raise lands first

    joined = join_experiment(store, read_by_the_slower, None, None, {"max_trials": 16, "max_broken": 7})

    assert joined.config["max_trials"] == 17 and joined.config["max_broken"] == 7
    assert orchard.get_experiment("exp", storage=storage).max_trials == 17
    assert join_experiment(store, joined, None, None, {"max_trials": 20}).config["max_trials"] == 20


def test_a_joiner_with_a_stale_max_broken_cannot_undo_a_raise(no_ambient, capsys) -> None:
    """After a fix the user raised --max-broken to 10; a SLURM task resubmitted with its script's
    `--max-broken 3` replaced it, and every worker joining later stopped at once with "raise max_broken"."""
    (no_ambient / "train.py").write_text("import orchard, pathlib, sys\n"
                                         f"if pathlib.Path({str(no_ambient / 'bug')!r}).exists():\n"
                                         "    sys.exit(1)\n"
                                         "orchard.report_objective(0.0)\n")
    (no_ambient / "bug").touch()
    command = [sys.executable, str(no_ambient / "train.py"), "--x~uniform(0, 1)"]
    # 3 broken: stopped
    assert main(["hunt", "-n", "e", "--max-trials", "2", "--max-broken", "3", *command]) == 1
    (no_ambient / "bug").unlink()
    assert main(["hunt", "-n", "e", "--max-broken", "10", *command]) == 0  # fixed, raised: the budget is met
    capsys.readouterr()

    assert main(["hunt", "-n", "e", "--max-trials", "2", "--max-broken", "3", *command]) == 1
    err = capsys.readouterr().err
    assert "max_broken: stored 10 > given 3 (it can only be raised: leave it out to keep 10)" in err
    assert orchard.get_experiment("e").settings.max_broken == 10


def test_a_raise_of_max_broken_read_before_a_larger_one_never_lowers_it(tmp_path) -> None:
    storage = str(tmp_path / "orchard.pkl")
    orchard.build_experiment("exp", space=workloads.SPACE, storage=storage)
    store = get_storage(storage)
    read_by_the_slower = store.require_experiment("exp")
    orchard.build_experiment("exp", max_broken=10, max_attempts=5, storage=storage)  # the faster raise

    joined = join_experiment(store, read_by_the_slower, None, None, {"max_broken": 7, "max_attempts": 4})

    assert joined.config["max_broken"] == 10 and joined.config["max_attempts"] == 5


def test_a_refused_change_of_space_says_how_to_keep_the_results_and_stores_nothing(tmp_path) -> None:
    """The refusal said only "or a new experiment name", and the docs said to carry points over with insert:
    a warm start from the old experiment is what keeps its evidence."""
    storage = str(tmp_path / "orchard.pkl")
    orchard.build_experiment("exp", space=workloads.SPACE, max_trials=5, storage=storage)
    before = orchard.get_experiment("exp", storage=storage).config
    wider = {**workloads.SPACE, "z": "uniform(0, 1)"}
    with pytest.raises(orchard.errors.ExperimentConflictError) as info:
        orchard.build_experiment("exp", space=wider, max_trials=50, max_broken=9, storage=storage)
    assert "space z: (absent) != uniform(0.0, 1.0)" in str(info.value)
    hint = "a new experiment name warm-started from this one (--warm-start exp, warm_start=['exp'])"
    assert hint in str(info.value)
    assert orchard.get_experiment("exp", storage=storage).config == before  # nor were the raises stored


def test_a_conflict_names_the_settings_that_differ_for_callers_to_act_on(tmp_path, monkeypatch) -> None:
    """Callers told the settings apart by searching the message for "KEY: stored" (STYLE: never branch on
    message text): the error carries them, and the source of a setting given by the environment is named."""
    storage = str(tmp_path / "orchard.pkl")
    orchard.build_experiment("exp", space=workloads.SPACE, max_trials=5, heartbeat=10, storage=storage)
    monkeypatch.setenv("ORCHARD_HEARTBEAT", "20")
    with pytest.raises(orchard.errors.ExperimentConflictError) as info:
        orchard.build_experiment("exp", space={**workloads.SPACE, "z": "uniform(0, 1)"}, max_trials=3,
                                 storage=storage)
    assert info.value.settings == ("space", "heartbeat", "max_trials")
    assert "(given: heartbeat from ORCHARD_HEARTBEAT)" in str(info.value)
    assert "warm-started from this one" in str(info.value)  # the space differs: its results are worth keeping


def test_a_budget_raised_on_an_experiment_a_stop_rule_ended_is_not_stored_and_says_so(no_ambient,
                                                                                      caplog) -> None:
    """The raise was stored ("max_trials=20" in orchard info) while hunt said "nothing to do": a budget no
    worker would ever use, shown as the experiment's."""
    (no_ambient / "train.py").write_text("import orchard\norchard.report_objective(0.05)\n")
    command = [sys.executable, str(no_ambient / "train.py"), "--x~uniform(0, 1)"]
    assert main(["hunt", "-n", "e", "--max-trials", "10", "--stop", "target=0.1", *command]) == 0
    caplog.clear()

    assert main(["hunt", "-n", "e", "--max-trials", "20", "--max-broken", "5", *command]) == 0
    err = caplog.text
    assert ("experiment 'e': max_trials=20, max_broken=5 not stored: its stopping rule target fired, and a "
            "stopped experiment stays stopped, whatever its budget; to search on, start an experiment with a "
            "new name") in err
    settings = orchard.get_experiment("e").settings
    assert (settings.max_trials, settings.max_broken) == (10, 3)
    assert orchard.get_experiment("e").stats["counts"]["completed"] == 1


def test_a_budget_below_the_trials_already_used_is_refused_and_stores_nothing(tmp_path) -> None:
    """An experiment run without a budget took ``max_trials=2`` after 3 completed trials, shown as "has
    already completed its 3 trials (max_trials=2)": a budget below what was used (raise-only budgets)."""
    storage = str(tmp_path / "orchard.pkl")
    exp = orchard.build_experiment("exp", space=workloads.SPACE, storage=storage)
    for value in (0.1, 0.2, 0.3):
        exp.observe(exp.suggest(), value)
    with pytest.raises(orchard.errors.ExperimentConflictError) as info:
        orchard.build_experiment("exp", max_trials=2, storage=storage)
    said = str(info.value)
    assert "max_trials: given 2 < the 3 trials already completed or pruned" in said and "\n" not in said
    assert "give at least 3" in said and "warm-start" not in said
    assert orchard.get_experiment("exp", storage=storage).max_trials is None
    assert orchard.build_experiment("exp", max_trials=3, storage=storage).max_trials == 3


def _completed(storage: str) -> int:
    return int(orchard.get_experiment("e", storage=storage).stats["counts"]["completed"])


def test_a_budget_set_on_an_experiment_without_one_stops_its_running_workers(no_ambient) -> None:
    """A hunt started without --max-trials ran on after another set --max-trials 12: `orchard status` said
    "18 completed ... of max_trials=12" while it kept going (workers followed raises only)."""
    script = "import orchard, time\ntime.sleep(0.2)\norchard.report_objective(0.0)\n"
    (no_ambient / "train.py").write_text(script)
    storage = str(no_ambient / "o.pkl")
    worker = subprocess.Popen([sys.executable, "-m", "orchard", "hunt", "-n", "e", "--storage", storage,
                               sys.executable, str(no_ambient / "train.py"), "--x~uniform(0, 1)"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (not os.path.exists(storage) or get_storage(storage).get_experiment("e") is None
               or _completed(storage) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the worker's first results
        budget = _completed(storage) + 4
        orchard.build_experiment("e", max_trials=budget, storage=storage)
        _, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert f"a budget of {budget} trials was set while this worker ran without one; it stops there" in err
    assert _completed(storage) == budget
