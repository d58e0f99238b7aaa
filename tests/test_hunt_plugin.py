"""orchard hunt on an experiment whose algorithm is a plugin not installed where it runs."""

from __future__ import annotations

import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import orchard
from orchard import algorithms
from orchard.algorithms import RandomSearch
from orchard.cli import main
from tests.test_cli import TRAIN


def test_a_hunt_refused_for_a_plugin_not_installed_leaves_the_budget_as_stored(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """hunt --max-trials 10 where the plugin is not installed failed with 'unknown algorithm', exit
    status 2, yet had stored max_trials=10: the failed command changed the experiment."""
    module = types.ModuleType("test_hunt_plugin_elsewhere")
    module.CenterFirst = type("CenterFirst", (RandomSearch,), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    group = algorithms.ENTRY_POINT_GROUP
    point = metadata.EntryPoint("center_first", f"{module.__name__}:CenterFirst", group)
    store = str(tmp_path / "a.pkl")
    with monkeypatch.context() as patched:  # installed where the experiment was created
        patched.setattr(algorithms, "_entry_points", lambda: {"center_first": point})
        orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm="center_first",
                                 max_trials=2, storage=store)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    monkeypatch.chdir(tmp_path)
    status = main(["hunt", "-n", "e", "--max-trials", "10", "--storage", store, sys.executable, str(script)])
    err = capsys.readouterr().err
    assert status == 2 and "unknown algorithm 'center_first'" in err, err
    assert orchard.get_experiment("e", storage=store).max_trials == 2
