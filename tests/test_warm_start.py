"""Evaluations recorded with ``insert`` and warm starts from earlier experiments.

What users rely on: an inserted evaluation is evidence for the algorithm and
uses no unit of the budget unless asked; a warm-started experiment is told the
earlier experiments' completed trials first, so on Branin it reaches early a
regret its cold twin reaches only later, while its budget and best trial stay
its own; bad input (a param outside the space, a non-finite objective, a
source whose space does not fit) is refused with the culprit named and nothing
stored. The last test runs two real ``orchard hunt`` processes on one pickle file.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard import warm_start
from orchard.cli import main
from orchard.errors import (
    BudgetExhaustedError,
    ConfigurationError,
    ExperimentConflictError,
    ExperimentNotFoundError,
    StorageError,
)
from orchard.history import History
from orchard.storages._uri import lend_password, redact
from orchard.trial import Trial, TrialStatus
from orchard.worker import Worker, WorkerSettings

BRANIN_SPACE = {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}
BRANIN_MIN = 0.397887


def branin(x: float, y: float) -> float:
    return float((y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2
                 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "db.pkl")


def finished(store: str, name: str = "old", n: int = 12, space: dict[str, str] | None = None) -> orchard.Experiment:
    old = orchard.build_experiment(name, space=space or BRANIN_SPACE, max_trials=n, storage=store, seed=7)
    old.workon(branin, progress=False)
    return old


def nothing_stored(exp: orchard.Experiment) -> bool:
    return sum(exp.storage.count_trials(exp.id).values()) == 0


# -- insert ------------------------------------------------------------------------------------


def test_inserted_evaluation_is_evidence_apart_from_the_budget(store: str) -> None:
    exp = orchard.build_experiment("e", space=BRANIN_SPACE, max_trials=4, storage=store)
    given = exp.insert({"x": 1.0, "y": 2.0}, objective=21.5, results={"gpu_hours": 3})
    assert (given.status, given.objective, given.results) == (TrialStatus.COMPLETED, 21.5, {"gpu_hours": 3})
    assert (given.origin, given.in_budget) == ("inserted", False)
    exp.workon(branin, progress=False)
    done = exp.fetch_trials([TrialStatus.COMPLETED])
    assert len(done) == 5 and sum(t.origin is None for t in done) == 4  # the budget bought 4 evaluations
    history = History(exp.storage, exp.id)
    history.refresh()
    assert any(o.params == {"x": 1.0, "y": 2.0} for o in history.observations)
    assert history.counts[TrialStatus.COMPLETED] == 4 and history.unbudgeted == 1


def test_inserted_evaluation_counted_in_the_budget_when_asked(store: str) -> None:
    exp = orchard.build_experiment("e", space=BRANIN_SPACE, max_trials=3, storage=store)
    exp.insert({"x": 1.0, "y": 2.0}, objective=21.5, count_in_budget=True)
    exp.workon(branin, progress=False)
    assert len(exp.fetch_trials([TrialStatus.COMPLETED])) == 3
    with pytest.raises(BudgetExhaustedError):
        exp.insert({"x": 2.0, "y": 2.0}, objective=1.0, count_in_budget=True)
    exp.insert({"x": 2.0, "y": 2.0}, objective=1.0)  # apart from the budget: still welcome


def test_status_and_list_say_how_many_completed_trials_were_inserted_apart(
        store: str, capsys: pytest.CaptureFixture[str]) -> None:
    exp = orchard.build_experiment("e", space=BRANIN_SPACE, max_trials=2, storage=store)
    exp.insert({"x": 1.0, "y": 2.0}, objective=21.5)
    exp.workon(branin, progress=False)
    assert exp.stats["inserted_apart"] == 1 and exp.stats["counts"]["completed"] == 3
    assert main(["status", "-n", "e", "--storage", store]) == 0
    assert "of max_trials=2 (1 of the completed inserted apart from the budget)" in capsys.readouterr().out
    assert main(["list", "--storage", store]) == 0
    assert "3/2 completed (1 inserted apart)" in capsys.readouterr().out
    exp.insert({"x": -3.14, "y": 12.27}, objective=0.3)  # the best now: info said 'worker None'
    assert main(["info", "-n", "e", "--storage", store]) == 0
    assert "best:      0.3 at x=-3.14, y=12.27 (trial " in (out := capsys.readouterr().out)
    assert out.split("best:")[1].splitlines()[0].endswith(", inserted)")


@pytest.mark.parametrize(("params", "objective", "results", "culprit"), [
    ({"x": 11.0, "y": 1.0}, 1.0, None, "dimension 'x'"),
    ({"x": 1.0}, 1.0, None, "missing 'y'"),
    ({"x": 1.0, "y": 1.0, "z": 0}, 1.0, None, "unknown 'z'"),
    ({"x": 1.0, "y": 1.0}, float("nan"), None, "objective is nan"),
    ({"x": 1.0, "y": 1.0}, "0.3", None, "objective must be a number"),
    ({"x": 1.0, "y": 1.0}, None, {"acc": 0.9}, "no objective given"),
    ({"x": 1.0, "y": 1.0}, 1.0, {"blob": object()}, "blob"),
])
def test_bad_insert_is_refused_naming_the_culprit_and_stores_nothing(
    store: str, params: dict[str, object], objective: object, results: dict[str, object] | None, culprit: str,
) -> None:
    exp = orchard.build_experiment("e", space=BRANIN_SPACE, storage=store)
    with pytest.raises(ConfigurationError, match=culprit):  # SpaceError is a ConfigurationError
        exp.insert(params, objective=objective, results=results)  # type: ignore[arg-type]
    assert nothing_stored(exp)


def test_insert_with_several_objectives_reads_each_from_results(store: str) -> None:
    exp = orchard.build_experiment("e", space=BRANIN_SPACE, storage=store,
                                   objectives={"error": "min", "accuracy": "max"})
    trial = exp.insert({"x": 1.0, "y": 1.0}, results={"error": 0.2, "accuracy": 0.9})
    assert trial.objective == 0.2 and exp.pareto_front()[0].id == trial.id
    with pytest.raises(ConfigurationError, match="'accuracy' is missing"):
        exp.insert({"x": 2.0, "y": 1.0}, results={"error": 0.2})
    with pytest.raises(ConfigurationError, match="objectives error, accuracy; give each once, in results"):
        exp.insert({"x": 2.0, "y": 1.0}, objective=0.2, results={"error": 0.2, "accuracy": 0.9})


def test_insert_with_one_declared_objective_takes_objective_as_its_value(store: str) -> None:
    """It was refused as 'the experiment has several objectives (accuracy)'; a worker takes a bare number so."""
    exp = orchard.build_experiment("e", space=BRANIN_SPACE, storage=store, objectives={"accuracy": "max"})
    trial = exp.insert({"x": 1.0, "y": 1.0}, objective=0.9, results={"epochs": 3})
    assert trial.results == {"accuracy": 0.9, "epochs": 3} and trial.objective == -0.9
    assert exp.best_trial.id == trial.id
    with pytest.raises(ConfigurationError, match="give each once"):
        exp.insert({"x": 2.0, "y": 1.0}, objective=0.9, results={"accuracy": 0.8})


def test_old_trial_records_read_as_ordinary_trials() -> None:
    old = Trial.from_dict({"id": "t", "experiment": "e", "params": {"x": 1}, "status": "completed",
                           "objective": 1.0})
    assert (old.origin, old.in_budget, old.holds_budget) == (None, True, True)


def test_cli_insert_records_one_evaluation_and_a_file(tmp_path: Path, store: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    exp = orchard.build_experiment("e", space={"lr": "loguniform(1e-4, 1)", "opt": "choices(['adam', 'sgd'])"},
                                   max_trials=5, storage=store)
    base = ["insert", "-n", "e", "--storage", store]
    assert main([*base, "lr=0.01", "opt=adam", "--objective", "0.31", "--result", "epochs=12"]) == 0
    assert "apart from the budget" in capsys.readouterr().out
    rows = tmp_path / "rows.csv"
    rows.write_text("lr,opt,objective,epochs\n0.1,sgd,0.4,10\n0.001,adam,0.35,10\n")
    assert main([*base, "--file", str(rows), "--count-in-budget"]) == 0
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"lr": 0.2, "opt": "sgd", "objective": 0.5}\n{"lr": 5, "opt": "sgd", "objective": 0.5}\n')
    assert main([*base, "--file", str(lines)]) == 2  # row 2: lr outside its prior; row 1 not stored either
    assert "row 2" in capsys.readouterr().err
    done = exp.fetch_trials()
    assert sorted((t.params["lr"], t.objective, t.in_budget) for t in done) == [
        (0.001, 0.35, True), (0.01, 0.31, False), (0.1, 0.4, True)]
    assert all(t.origin == "inserted" and t.results["epochs"] in (10, 12) for t in done)
    assert main([*base, "--file", str(rows)]) != 0  # already there: refused, nothing stored
    assert "already has a trial" in capsys.readouterr().err and len(exp.fetch_trials()) == 3


def test_cli_insert_of_a_file_larger_than_the_budget_left_stores_no_row(
        tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With --count-in-budget, the rows up to the budget were stored, then one error line saying only
    that the budget was used: not that some rows were recorded, nor which."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, max_trials=3, storage=store)
    exp.insert({"x": 0.01})  # waiting for a worker: it holds a unit of the budget
    rows = tmp_path / "rows.csv"
    rows.write_text("x,objective\n0.1,1\n0.2,1\n0.3,1\n")
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows), "--count-in-budget"]) == 1
    error = capsys.readouterr().err
    assert "has 3 rows to record in the budget, but experiment 'e' has room for 2 (max_trials=3)" in error
    assert "raise max_trials to at least 4" in error and error.rstrip().endswith("nothing was stored")
    assert [t.params for t in exp.fetch_trials()] == [{"x": 0.01}]
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 0  # apart from it: all


def test_cli_insert_skips_the_blank_rows_a_csv_file_ends_or_is_cut_by(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trailing blank line (or ",," as a spreadsheet saves an empty row) was 'row 2: params {} do not match the
    space', and no row of the file was stored."""
    store = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, max_trials=3, storage=store)
    rows = tmp_path / "rows.csv"
    rows.write_text("x,objective\n0.1,1\n\n , \n0.2,2\n,\n\n")
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 0, capsys.readouterr().err
    assert sorted(t.params["x"] for t in exp.fetch_trials()) == [0.1, 0.2]
    assert "recorded 2 evaluated trials in experiment 'e'" in capsys.readouterr().out
    rows.write_text("x,objective\n0.1,1\n0.5,1\n")  # one new row: said in the singular
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 0
    assert "recorded 1 evaluated trial in experiment 'e' (apart from the budget); 1 row recorded before was " \
           "skipped" in capsys.readouterr().out
    rows.write_text("x,objective\n0.3,1\n\n0.4\n")  # rows are counted as in a .jsonl file: blank ones not
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 2
    assert "row 2 of" in capsys.readouterr().err


@pytest.mark.parametrize(("objectives", "content"), [
    ({"acc": "max"}, "x,objective\n0.1,0.9\n"),  # stored negated: -0.9
    ({"acc": "max"}, "x,acc\n0.1,0.9\n"),  # its one objective given by name
    ({"err": "min", "ms": "min"}, "x,err,ms\n0.1,0.2,3\n"),  # several, in results: no objective in the row
])
def test_cli_insert_run_again_skips_rows_recorded_for_declared_objectives(
        tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str], objectives: dict[str, str],
        content: str) -> None:
    """Run again (after a Ctrl-C), a file recorded into an experiment with declared objectives was refused
    ('already has a trial at x=0.1; nothing was stored'): its rows were compared unconverted."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, objectives=objectives, storage=store)
    rows = tmp_path / "rows.csv"
    rows.write_text(content)
    args = ["insert", "-n", "e", "--storage", store, "--file", str(rows)]
    assert main(args) == 0
    rows.write_text(content + content.splitlines()[1].replace("0.1", "0.5", 1) + "\n")
    assert main(args) == 0, capsys.readouterr().err
    assert "recorded 1 evaluated trial in experiment 'e' (apart from the budget); 1 row recorded before " \
           "was skipped" in capsys.readouterr().out
    assert sorted(t.params["x"] for t in exp.fetch_trials()) == [0.1, 0.5]


def test_cli_insert_reads_optunas_trials_dataframe_as_its_columns_mean(
        tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A study exported with Optuna's trials_dataframe().to_csv() was refused ("row 1 of study.csv: params {}
    do not match the space: missing 'lr', 'layers'"): its params are params_NAME columns, its value
    'value'."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("pandas")
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def objective(trial: Any) -> tuple[float, int]:
        lr, layers = trial.suggest_float("lr", 1e-4, 1, log=True), trial.suggest_int("layers", 1, 5)
        trial.set_user_attr("epochs", 10)
        if layers == 5:
            raise optuna.TrialPruned()
        return lr, layers

    study = optuna.create_study(directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=20)
    study.trials_dataframe().to_csv(tmp_path / "study.csv")  # with its index column, as to_csv writes it
    complete = {(t.params["lr"], t.params["layers"]): t.values for t in study.trials if t.values is not None}
    pruned = len(study.trials) - len(complete)
    assert complete and pruned
    exp = orchard.build_experiment("e", space={"lr": "loguniform(1e-4, 1)", "layers": "randint(1, 6)"},
                                   objectives={"error": "min", "size": "max"}, storage=store)
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(tmp_path / "study.csv")]) == 0, \
        capsys.readouterr().err
    assert f"recorded {len(complete)} evaluated trials in experiment 'e' (apart from the budget); rows of " \
           f"Optuna's export not COMPLETE skipped: {pruned} PRUNED" in capsys.readouterr().out
    recorded = {(t.params["lr"], t.params["layers"]): t for t in exp.fetch_trials()}
    assert set(recorded) == set(complete)
    for point, trial in recorded.items():
        assert trial.results == {"error": complete[point][0], "size": complete[point][1], "epochs": 10}
    one = orchard.build_experiment("one", space={"lr": "loguniform(1e-4, 1)", "layers": "randint(1, 6)"},
                                   storage=store)
    assert main(["insert", "-n", "one", "--storage", store, "--file", str(tmp_path / "study.csv")]) == 2
    assert "study.csv is Optuna's trials_dataframe() of several objectives (values_0, values_1): declare " \
           "the experiment's objectives" in capsys.readouterr().err and one.fetch_trials() == []


def test_cli_insert_reads_an_experiments_to_pandas_export_as_its_columns_mean(
        tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """exp.to_pandas().to_csv() of one experiment, inserted into another, was refused ("params {} do not match
    the space"): its params are params.NAME columns; its objective column is minimized (-acc for acc:max)."""
    pytest.importorskip("pandas")
    space = {"x": "uniform(0, 1)", "opt": "choices(['adam', 1, True])"}
    old = orchard.build_experiment("old", space=space, objectives={"acc": "max"}, max_trials=8, seed=2,
                                   max_broken=8, storage=store)
    old.workon(lambda x, opt: {"acc": x, **({"epochs": 3} if x < 0.3 else {})} if x < 0.7 else float("nan"),
               progress=False)
    old.to_pandas().to_csv(tmp_path / "old.csv")
    old.to_pandas().to_json(tmp_path / "old.jsonl", orient="records", lines=True, date_format="iso")
    broken = len(old.fetch_trials([TrialStatus.BROKEN]))
    done = old.fetch_trials([TrialStatus.COMPLETED])
    assert broken and done
    new = orchard.build_experiment("new", space=space, objectives={"acc": "max"}, storage=store)
    assert main(["insert", "-n", "new", "--storage", store, "--file", str(tmp_path / "old.csv")]) == 0, \
        capsys.readouterr().err
    assert f"recorded {len(done)} evaluated trials in experiment 'new' (apart from the budget); rows of " \
           f"Orchard's export not completed skipped: {broken} broken" in capsys.readouterr().out
    assert sorted((t.params["x"], repr(t.params["opt"]), t.objective, t.results) for t in new.fetch_trials()) == \
        sorted((t.params["x"], repr(t.params["opt"]), t.objective, t.results) for t in done)
    assert {"epochs": 3} in [{k: v for k, v in t.results.items() if k == "epochs"} for t in done]
    assert len({len(t.results) for t in done}) == 2  # a metric some trials lack: NaN in the frame, null in JSON
    lines = orchard.build_experiment("lines", space=space, objectives={"acc": "max"}, storage=store)
    assert main(["insert", "-n", "lines", "--storage", store, "--file", str(tmp_path / "old.jsonl")]) == 0
    # pandas writes JSON floats to 10 digits: the metrics each trial has are compared, and no None stored
    assert sorted(sorted(t.results) for t in lines.fetch_trials()) == sorted(sorted(t.results) for t in done)
    assert all(None not in t.results.values() for t in lines.fetch_trials())


@pytest.mark.parametrize(("name", "content", "expected"), [
    # each was recorded with one of the values dropped silently
    ("rows.csv", "x,x,objective\n0.1,0.2,1\n", "rows.csv names column(s) 'x' twice; keep one"),
    ("rows.csv", "x,objective\n0.1,1,0.2\n", "rows.csv has 3 cells but the header names 2 columns"),
    ("rows.jsonl", '{"x": 0.1, "x": 0.2, "objective": 1}\n', "rows.jsonl: an object names 'x' twice; keep one"),
    # 'unexpected RecursionError' and 'unexpected UnicodeDecodeError' (exit 1)
    ("rows.jsonl", "[" * 100_000 + "\n", "rows.jsonl is nested too deeply to be a row"),
    ("rows.csv", b"\x89PNG\r\n", "rows.csv: it is not UTF-8 text (byte 0)"),
    # 'row 1 of rows.csv: params {} do not match the space: missing 'x'' (as Excel saves CSV in Europe)
    ("rows.csv", "x;objective\n0.1;1\n", "is one column, 'x;objective': its columns are separated by ';'"),
    ("rows.csv", "x\tobjective\n0.1\t1\n", "separated by '\\t', not commas"),
    # 'objective must be a number, got str 'nan'; … return the number, not its text'
    ("rows.csv", "x,objective\n0.1,NaN\n", "row 1 of"),
    ("rows.csv", "x,objective\n0.1,NaN\n", "rows.csv: objective is nan; it must be a finite number"),
    ("rows.csv", "x,objective\n0.1,-inf\n", "rows.csv: objective is -inf; it must be a finite number"),
    # 'line 1 of dump.json is not JSON (Expecting property name enclosed in double quotes)'
    ("dump.json", json.dumps({"format": "orchard-dump", "version": 1, "experiments": []}, indent=1),
     "dump.json is an Orchard dump (orchard db dump), not rows of evaluations; restore it with 'orchard db"),
    ("rows.json", '[{"x": 0.1, "objective": 1}]', "rows.json is one JSON array, not JSON Lines: write one"),
    ("rows.json", '{\n "x": 0.1,\n "objective": 1\n}\n', "rows.json is one JSON object written over several"),
])
def test_cli_insert_refuses_a_file_whose_values_it_would_drop_or_cannot_read(
        tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str], name: str, content: str | bytes,
        expected: str) -> None:
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=store)
    rows = tmp_path / name
    rows.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 2
    line = capsys.readouterr().err.strip()
    assert expected in line and len(line.splitlines()) == 1 and exp.fetch_trials() == []


def test_cli_insert_refuses_a_result_without_a_value(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--result loss=$LOSS` with LOSS unset recorded the text '' as the result."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=store)
    capsys.readouterr()
    assert main(["insert", "-n", "e", "--storage", store, "x=0.5", "--objective", "1",
                 "--result", "loss="]) == 2
    assert capsys.readouterr().err == ("orchard: error: result 'loss' has no value ('loss=': an unset shell "
                                       "variable?); give loss=VALUE (loss='\"\"' for an empty text)\n")
    assert exp.fetch_trials() == []


def test_cli_insert_reads_a_csv_file_saved_with_a_byte_order_mark(tmp_path: Path, store: str) -> None:
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=store)
    rows = tmp_path / "rows.csv"
    rows.write_bytes("x,objective\n0.1,1\n".encode("utf-8-sig"))  # as Excel saves it: was "missing 'x'"
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 0
    assert [t.params for t in exp.fetch_trials()] == [{"x": 0.1}]


# -- warm start: validation ------------------------------------------------------------------------


@pytest.mark.parametrize(("space", "culprit"), [
    ({**BRANIN_SPACE, "z": "uniform(0, 1)"}, "'z' is new in this space"),
    ({"x": "uniform(-5, 10)"}, "'y' is not in this space"),
    ({"x": "uniform(20, 30)", "y": "uniform(0, 15)"}, r"none of its 12 completed trials fits .*x: 12 value"),
])
def test_a_source_that_does_not_fit_is_refused_naming_the_dims(store: str, space: dict[str, str],
                                                               culprit: str) -> None:
    finished(store)
    with pytest.raises(ConfigurationError, match=culprit):
        orchard.build_experiment("new", space=space, storage=store, warm_start=["old"])
    assert orchard.get_storage(store).get_experiment("new") is None  # nothing stored


@pytest.mark.parametrize(("sources", "error", "culprit"), [
    (["nope"], ExperimentNotFoundError, "nope"),
    (["new"], ConfigurationError, "from itself"),
    (["old", "old"], ConfigurationError, "twice"),
    (["runs/x.pkl"], ConfigurationError, "no experiment"),
    # a dump or a folder before the ':' said "experiment name 'old.json:old' is not allowed"
    (["runs/old.json:old"], ConfigurationError,
     "'runs/old.json' is neither a storage URI nor a .pkl path; write STORAGE:NAME, .* \\(load a dump into"),
    # the same as a mapping said "storage 'runs/old.json' is neither a URI nor ...", as if it were --storage
    ([{"experiment": "old", "storage": "runs/old.json"}], ConfigurationError,
     "^warm_start source .*'runs/old.json' is neither a storage URI nor a .pkl path; write e.g. {experiment"),
    ([{"experiment": "old", "fill": 3}], ConfigurationError, "fill"),
    # a mapping without 'experiment' said "experiment name None is empty or not text"
    ([{"storage": "runs/x.pkl", "fill": {}}], ConfigurationError, "runs/x.pkl.*names no experiment; e.g."),
    ([{"experiment": "old", "fill": {"x": 1.0}}], ConfigurationError, "'x' is in both spaces"),
    ([{"experiment": "old", "fill": {"q": 1.0}}], ConfigurationError, "fill names 'q', which is not in this space"),
    # as --warm-start '{...}': the second experiment silently won
    (["{experiment: old, experiment: other}"], ConfigurationError, "gives key 'experiment' twice"),
])
def test_bad_sources_are_refused(store: str, sources: list[object], error: type[Exception], culprit: str) -> None:
    finished(store)
    with pytest.raises(error, match=culprit):
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=sources)  # type: ignore[arg-type]
    assert orchard.get_storage(store).get_experiment("new") is None


@pytest.mark.parametrize("source", [
    {"experiment": "old", "storage": "mongodb://alice:s3cret@db-host/runs", "fil": {}},
    {"experiment": "old", "storage": "mongodb://alice:s3cret@db-host/runs", "fill": 3},
    '{experiment: old, storage: "mongodb://alice:s3cret@db-host/runs", fill: [1',
    ["mongodb://alice:s3cret@db-host/runs:old"],
])
def test_a_malformed_source_is_refused_without_its_password(store: str, source: object) -> None:
    """The message showed the source as written, its storage's password with it."""
    with pytest.raises(ConfigurationError) as refused:
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store,
                                 warm_start=[source])  # type: ignore[list-item]
    assert "s3cret" not in str(refused.value) and "***@db-host" in str(refused.value), refused.value


def test_a_source_in_a_storage_that_cannot_be_read_is_named_when_the_experiment_is_created(
        store: str, tmp_path: Path) -> None:
    """'cannot reach MongoDB at 127.0.0.1:1 to read an experiment': which one, the experiment's own storage
    or its source's, the message did not say."""
    (tmp_path / "a-folder.pkl").mkdir()
    named = re.escape(f"warm start source '{tmp_path}/a-folder.pkl:old' cannot be read: ")
    with pytest.raises(StorageError, match=named):
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store,
                                 warm_start=[f"{tmp_path}/a-folder.pkl:old"])
    assert orchard.get_storage(store).get_experiment("new") is None


def test_a_missing_source_is_named_as_the_warm_start_source_not_blamed_on_storage(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The message was require_experiment's: "no experiment named 'old' in storage ...; check the name and
    --storage"."""
    train = tmp_path / "f.py"
    train.write_text("import orchard\norchard.report_objective(1.0)\n")
    other, gone = tmp_path / "other.pkl", tmp_path / "typo.pkl"
    finished(str(other), "older", n=1)
    here = (f"warm start source 'nope' does not exist: no experiment named 'nope' in this experiment's "
            f"storage pickle://{store} (experiments there: none); check its name, or write STORAGE:NAME")
    there = (f"warm start source '{other}:old' does not exist: no experiment named 'old' in its storage "
             f"pickle://{other} (experiments there: older); check its name and its storage")
    # it said "(experiments there: none)": a typo in the path read as an empty storage
    typo = f"warm start source '{gone}:old' does not exist: its storage file {gone} does not exist; check its path"
    for source, words in [("nope", here), (f"{other}:old", there), (f"{gone}:old", typo)]:
        assert main(["hunt", "-n", "new", "--storage", store, "--warm-start", source, sys.executable,
                     str(train), "--x~uniform(0, 1)"]) != 0
        err = capsys.readouterr().err
        assert words in err and "--storage" not in err, err


def test_one_source_named_twice_in_two_spellings_is_refused(store: str) -> None:
    """'old' and 'PATH:old' (the same file) were both read: every trial of old was told twice."""
    finished(store)
    twice = f"^warm_start names one experiment twice: 'old' and '{store}:old'"
    with pytest.raises(ConfigurationError, match=twice):
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=["old", f"{store}:old"])
    assert orchard.get_storage(store).get_experiment("new") is None


def test_a_source_is_told_with_this_experiments_objectives(store: str) -> None:
    """A source maximising acc was told as is (-acc) to one minimising it: steered to its worst points."""
    old = orchard.build_experiment("old", space=BRANIN_SPACE, max_trials=4, storage=store,
                                   objectives={"acc": "max", "ms": "min"})
    old.workon(lambda x, y: {"acc": x, "ms": y}, progress=False)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, objectives={"acc": "min"},
                                   warm_start=["old"])
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    told = sorted((o.params["x"], o.objective, o.values) for o in worker.history.observations)
    assert told == sorted((t.params["x"], t.params["x"], (t.params["x"],)) for t in old.fetch_trials())


def test_info_counts_only_the_source_trials_that_recorded_the_objectives(
    store: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """info said "4 of 4" for a source whose trials half lacked the objective: the search is told only 2."""
    old = orchard.build_experiment("old", space=BRANIN_SPACE, max_trials=4, storage=store)
    calls = itertools.count()
    old.workon(lambda x, y: {"objective": x, **({"acc": x} if next(calls) % 2 else {})}, progress=False)
    scored = sum("acc" in t.results for t in old.fetch_trials())
    assert scored == 2
    new = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, objectives={"acc": "max"},
                                   warm_start=["old"])
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    assert len(worker.history.observations) == scored
    assert main(["info", "-n", "new", "--storage", store]) == 0
    assert f"old ({scored} of 4 completed trials)" in capsys.readouterr().out


def measured_source(store: str) -> orchard.Experiment:
    """A source of four trials: two recorded mem (one within 16, one beyond), two did not measure it."""
    old = orchard.build_experiment("old", space=BRANIN_SPACE, max_trials=4, storage=store)
    for x, mem in [(1.0, 8.0), (2.0, 32.0), (3.0, None), (4.0, None)]:
        old.insert({"x": x, "y": 1.0}, objective=x, results={} if mem is None else {"mem": mem})
    return old


def test_source_trials_without_a_constraints_metric_are_left_out_not_told_infeasible(
        store: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """A source that did not measure mem had each trial told infeasible (violation inf) to an experiment
    constraining mem: the search shunned every point the source had evaluated."""
    measured_source(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, constraints=["mem <= 16"],
                                   warm_start=["old"])
    prior = warm_start.prior_trials(new.space, new.settings.warm_start, new.storage, None, ["mem <= 16"])
    history = History(new.storage, new.id, None, ["mem <= 16"], prior)
    told = sorted((o.params["x"], o.feasible, o.violation) for o in history.observations)
    assert told == [(1.0, True, 0.0), (2.0, False, 16.0)]
    warned = [r.getMessage() for r in caplog.records if "did not record" in r.getMessage()]
    assert warned == ["warm start source 'old': 2 of its 4 completed trials did not record 'mem' (read by "
                      "'mem <= 16'), so they say nothing of their points' feasibility; they are left out"]
    assert main(["info", "-n", "new", "--storage", store]) == 0
    assert "warm start: old (2 of 4 completed trials; 2 without mem)" in capsys.readouterr().out


def test_a_worker_is_told_only_the_source_trials_that_recorded_the_constraints_metrics(store: str) -> None:
    measured_source(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, constraints=["mem <= 16"],
                                   warm_start=["old"])
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    assert sorted(o.violation for o in worker.history.observations) == [0.0, 16.0]


def test_a_source_that_recorded_no_metric_a_constraint_reads_is_refused(store: str) -> None:
    measured_source(store)
    refused = ("warm start from 'old': none of its 4 completed trials recorded 'gpu' (read by 'gpu <= 1'), so "
               "none says whether its point is feasible; drop the source or those constraints")
    with pytest.raises(ConfigurationError, match=re.escape(refused)):
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, constraints=["gpu <= 1"],
                                 warm_start=["old"])
    assert orchard.get_storage(store).get_experiment("new") is None


@pytest.mark.parametrize("objectives", [{"objective": "max"}, {"objective": "min", "size": "max"}])
def test_a_source_of_one_unnamed_objective_gives_it_to_an_objective_declared_by_that_name(
    store: str, objectives: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    """Maximising what scripts report with report_objective (objectives={'objective': 'max'}), warm-started
    from the run that minimised it, was refused: "none of its 4 completed trials recorded the objectives
    'objective'", though each had recorded it (as its objective, kept apart from its results)."""
    old = orchard.build_experiment("old", space=BRANIN_SPACE, max_trials=4, storage=store, seed=7)
    old.workon(lambda x, y: {"objective": x, "size": y}, progress=False)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, objectives=objectives,
                                   warm_start=["old"])
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    sign = -1 if objectives["objective"] == "max" else 1
    told = sorted((o.params["x"], o.objective) for o in worker.history.observations)
    assert told == sorted((t.params["x"], sign * t.params["x"]) for t in old.fetch_trials())
    assert main(["info", "-n", "new", "--storage", store]) == 0
    assert "warm start: old (4 of 4 completed trials)" in capsys.readouterr().out


@pytest.mark.parametrize(("objectives", "culprit"), [
    (None, r"it measured the objectives \{'acc': 'max'\}, this experiment one unnamed objective"),
    ({"loss": "min"}, r"its 4 completed trials recorded the objectives 'loss' this experiment optimises;"),
    ({"acc": "max", "ms": "min"}, r"recorded the objectives 'acc', 'ms' this experiment optimises \('ms' in"),
])
def test_a_source_scored_on_other_objectives_is_refused(store: str, objectives: dict[str, str] | None,
                                                        culprit: str) -> None:
    old = orchard.build_experiment("old", space=BRANIN_SPACE, max_trials=4, storage=store, objectives={"acc": "max"})
    old.workon(lambda x, y: {"acc": x}, progress=False)
    with pytest.raises(ConfigurationError, match=culprit):
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, objectives=objectives, warm_start=["old"])
    assert orchard.get_storage(store).get_experiment("new") is None


def test_a_process_keeps_one_read_of_a_growing_source(store: str) -> None:
    """Each count of the source's completed trials kept its own full copy in the process for good."""
    from orchard import warm_start

    old = finished(store, n=2)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=["old"])
    for n in (3, 4, 5):
        orchard.build_experiment("old", storage=store, max_trials=n).workon(branin, progress=False)
        assert len(warm_start.prior_trials(new.space, new.settings.warm_start, new.storage)) == n
    assert [key for key in warm_start._CACHE if old.id in key] == [(new.storage.uri, old.id)]


def test_mapping_fills_added_dims_and_drops_trials_outside_a_narrowed_range(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str],
) -> None:
    other = str(tmp_path / "other.pkl")
    old = finished(other)
    inside = sum(t.params["x"] >= 0 for t in old.fetch_trials())
    new = orchard.build_experiment(
        "new", space={"x": "uniform(0, 10)", "y": "uniform(0, 15)", "z": "choices(['a', 'b'])"}, storage=store,
        warm_start=[{"experiment": "old", "storage": other, "fill": {"z": "b"}}])
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    prior = worker.history.observations
    assert len(prior) == inside and all(o.params["z"] == "b" and o.params["x"] >= 0 for o in prior)
    assert main(["info", "-n", "new", "--storage", store]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if "warm start" in li)
    assert f"other.pkl:old ({inside} of 12 completed trials; {12 - inside} outside x)" in line


def test_a_relative_source_path_means_the_same_file_to_workers_started_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Each worker resolved 'runs/old.pkl' in its own directory: elsewhere it warned 'no longer exists',
    went on without the source, and made an empty 'runs' folder there."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    finished("runs/old.pkl")
    store = str(tmp_path / "db.pkl")
    orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=["runs/old.pkl:old"])
    assert orchard.build_experiment("new", storage=store, warm_start=["runs/old.pkl:old"])  # the same sources
    monkeypatch.chdir(tmp_path / "b")
    new = orchard.build_experiment("new", storage=store)
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    assert len(worker.history.observations) == 12 and "no longer exists" not in caplog.text
    assert list((tmp_path / "b").iterdir()) == []


@pytest.mark.parametrize("written", ["{store}:new", "pickle://{store}:new"])
def test_an_experiment_named_as_its_own_source_by_its_storage_path_is_refused_as_such(
        store: str, written: str) -> None:
    """It was reported as missing from its own storage ("no experiment named 'new' in storage ...")."""
    finished(store)
    with pytest.raises(ConfigurationError, match="'new' cannot warm-start from itself"):
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=[written.format(store=store)])
    assert orchard.get_storage(store).get_experiment("new") is None


@pytest.mark.parametrize("budgets", ["fidelity(1, 9, base=3)", "fidelity(1, 27, base=3)"])
def test_asha_warm_started_from_a_fidelity_source_promotes_its_trials(store: str, budgets: str) -> None:
    """ASHA promoted a source's trial and named it as the parent; the worker refused the point as
    naming no trial of the experiment and stopped with an AlgorithmError."""
    old = orchard.build_experiment("old", space={"x": "uniform(0, 10)", "e": "fidelity(1, 9, base=3)"},
                                   storage=store, algorithm="asha", seed=1)
    old.workon(lambda x, e: x / e, max_trials=20)
    new = orchard.build_experiment("new", space={"x": "uniform(0, 10)", "e": budgets}, storage=store,
                                   algorithm="asha", seed=1, warm_start=["old"])
    assert new.workon(lambda x, e: x / e, max_trials=6)["counts"]["completed"] == 6
    promoted = [t for t in new.fetch_trials() if t.params["e"] > 1]
    assert promoted and all(t.parent is None or t.parent in {p.id for p in new.fetch_trials()} for t in promoted)


def test_joining_agrees_on_the_sources(store: str) -> None:
    finished(store)
    finished(store, "older")
    orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=["old"])
    assert orchard.build_experiment("new", storage=store).settings.warm_start == [
        {"experiment": "old", "storage": None, "fill": {}}]
    with pytest.raises(ExperimentConflictError, match="warm_start"):
        orchard.build_experiment("new", storage=store, warm_start=["older"])


def test_a_conflict_over_the_sources_never_shows_a_password(store: str) -> None:
    finished(store)
    exp = orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=["old"])
    hidden = {"experiment": "old", "storage": "mongodb://alice:s3cret@db-host/orchard", "fill": {}}
    assert exp.storage.swap_experiment(exp.id, "warm_start", exp.settings.warm_start, [hidden])  # stored with one
    with pytest.raises(ExperimentConflictError) as conflict:  # and given with one
        orchard.build_experiment("new", space=BRANIN_SPACE, storage=store, warm_start=["mongodb://bob:pa55@h/db:old"])
    assert "s3cret" not in str(conflict.value) and "pa55" not in str(conflict.value)
    assert "mongodb://alice:***@db-host/orchard" in str(conflict.value), conflict.value
    assert "mongodb://bob:***@h/db" in str(conflict.value), conflict.value


PASSWORD = "p@ss:wörd/Zq9%"


@pytest.fixture
def secret_uri(mongo_uri: str, _mongo_admin: Any) -> Iterator[Callable[[str], str]]:
    """URIs of databases of the test server that log in a user of its own, whose password is PASSWORD."""
    user, databases = f"u{uuid.uuid4().hex[:10]}", []
    _mongo_admin.admin.command("createUser", user, pwd=PASSWORD, roles=[{"role": "root", "db": "admin"}])
    host = urllib.parse.urlsplit(mongo_uri).netloc.rpartition("@")[2]

    def uri(name: str) -> str:
        databases.append(database := f"orchard_test_{uuid.uuid4().hex[:12]}_{name}")
        return f"mongodb://{user}:{urllib.parse.quote(PASSWORD, safe='')}@{host}/{database}?authSource=admin"

    yield uri
    for database in databases:
        _mongo_admin.drop_database(database)
    _mongo_admin.admin.command("dropUser", user)


def _leaks(text: str | bytes) -> bool:
    raw = text if isinstance(text, bytes) else text.encode()
    return any(form.encode() in raw for form in ("Zq9", urllib.parse.quote(PASSWORD, safe="")))


def test_a_sources_password_is_not_stored_yet_the_workers_given_it_read_the_source(
    store: str, secret_uri: Callable[[str], str], caplog: pytest.LogCaptureFixture,
) -> None:
    """The storage URI of a source in another database was stored whole: whoever could read the
    experiment (its pickle file, its MongoDB document, pymongo's debug log) read that database's password."""
    source = secret_uri("old")
    finished(source)
    written = f"{source}:old"
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=14, storage=store,
                                   warm_start=[written])
    assert not _leaks(Path(store).read_bytes()) and not _leaks(repr(new.config))
    assert new.config["warm_start"][0]["storage"] == redact(source)
    new.workon(branin, progress=False)  # its workers were given the password: they read the source
    assert "cannot be read" not in caplog.text
    assert not _leaks(repr(new.settings)) and not _leaks(repr(WorkerSettings.for_experiment(new.settings)))
    uses = warm_start.source_uses(new.space, new.settings.warm_start, new.storage)
    assert [use.used for use in uses] == [12]
    joiner = orchard.build_experiment("new", storage=store, warm_start=[written])  # same source: no conflict
    assert joiner.settings.warm_start == [{"experiment": "old", "storage": source, "fill": {}}]
    reader = orchard.get_experiment("new", store)  # given no password, the source gives nothing and says why
    assert warm_start.source_uses(reader.space, reader.settings.warm_start, reader.storage)[0].used == 0
    assert "give the source again" in caplog.text and not _leaks(caplog.text)
    assert not _leaks(Path(store).read_bytes())


def test_a_source_on_the_same_server_for_the_same_user_is_read_with_the_storages_own_password(
    secret_uri: Callable[[str], str],
) -> None:
    """A worker joining without the sources (orchard hunt -n new) reads a source kept beside its own."""
    source, own = secret_uri("old"), secret_uri("new")
    finished(source)
    orchard.build_experiment("new", space=BRANIN_SPACE, storage=own, warm_start=[f"{source}:old"])
    joiner = orchard.get_experiment("new", own)
    assert not _leaks(repr(joiner.config))
    assert warm_start.source_uses(joiner.space, joiner.settings.warm_start, joiner.storage)[0].used == 12


@pytest.mark.parametrize("source", [
    "mongodb://bob:***@db:27017/old?authSource=admin",  # another user
    "mongodb://alice:***@elsewhere:27017/old?authSource=admin",  # another server
    "mongodb://alice:***@db:27017/old",  # another authentication database (old)
    "mongodb+srv://alice:***@db:27017/old?authSource=admin",  # another scheme
])
def test_a_storages_password_is_lent_to_no_other_account(source: str) -> None:
    own = "mongodb://alice:s3cret@db:27017/runs?authSource=admin"
    assert lend_password(source, own) == source
    assert lend_password("mongodb://alice:***@DB:27017/old?authSource=admin", own) == (
        "mongodb://alice:s3cret@DB:27017/old?authSource=admin")


def test_a_deleted_source_never_stops_the_experiment_it_warm_started(
    store: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    """info said 'old (0 of 0 completed trials)', as of a source that has none yet."""
    old = finished(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store, warm_start=["old"])
    old.storage.delete_experiment(old.id)
    new.workon(branin, progress=False)
    assert len(new.fetch_trials([TrialStatus.COMPLETED])) == 2
    assert "warm start source 'old' no longer exists" in caplog.text
    assert main(["info", "-n", "new", "--storage", store]) == 0
    gone = "warm start: old (0 of 0 completed trials; gives nothing: it no longer exists)"
    assert gone in capsys.readouterr().out
    assert main(["info", "-n", "new", "--storage", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warm_start"][0]["unused"] == "it no longer exists"


def test_a_source_recreated_with_another_space_never_stops_the_experiment_it_warm_started(
    store: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    """Its sources cannot be changed: workon, hunt and info failed for good with 'Fix the space or the source'."""
    old = finished(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store, warm_start=["old"])
    old.storage.delete_experiment(old.id)
    again = orchard.build_experiment("old", space={"z": "uniform(0, 1)"}, max_trials=2, storage=store)  # another space
    again.workon(lambda z: z, progress=False)
    new.workon(branin, progress=False)
    assert len(new.fetch_trials([TrialStatus.COMPLETED])) == 2
    assert "warm start source 'old' no longer fits this space ('x' is new in this space" in caplog.text
    assert main(["info", "-n", "new", "--storage", store]) == 0
    unfit = "old (0 of 2 completed trials; gives nothing: it no longer fits this space)"
    assert unfit in capsys.readouterr().out


def test_a_source_recreated_with_declared_objectives_is_not_told_as_one_unnamed_objective(
    store: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    """'old' deleted and created again maximising acc (same space): each worker of 'new' (one unnamed
    objective, minimised) was told its trials at -acc, about -100 (far better than any of its own), and
    info said 'old (12 of 12 completed trials)'; creating 'new' from such a source is refused."""
    old = finished(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store, warm_start=["old"])
    old.storage.delete_experiment(old.id)
    again = orchard.build_experiment("old", space=BRANIN_SPACE, max_trials=12, storage=store,
                                     objectives={"acc": "max", "ms": "min"})
    again.workon(lambda x, y: {"acc": 100 + x, "ms": y}, progress=False)
    worker = Worker(new.storage, new.id, WorkerSettings.for_experiment(new.settings),
                    evaluate=lambda trial: None)  # type: ignore[arg-type, return-value]
    assert worker.history.observations == []
    assert "warm start source 'old' now measures the objectives {'acc': 'max', 'ms': 'min'}" in caplog.text
    assert main(["info", "-n", "new", "--storage", store]) == 0
    unscored = "old (0 of 12 completed trials; gives nothing: it measures other objectives now)"
    assert unscored in capsys.readouterr().out


def test_a_source_whose_stored_space_cannot_be_read_never_stops_the_experiment_it_warm_started(
    store: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker starting afterwards, and info, failed with 'warm start source 'old' has no usable space'."""
    old = finished(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store, warm_start=["old"])
    space = old.storage.experiment(old.id).config["space"]
    assert old.storage.swap_experiment(old.id, "space", space, {"x": "wibble(1, 2)"})  # another program's record
    monkeypatch.setattr(warm_start, "_CACHE", {})  # as a worker process started now reads it
    new.workon(branin, progress=False)
    assert len(new.fetch_trials([TrialStatus.COMPLETED])) == 2
    assert "warm start source 'old' has no usable space (dimension 'x'" in caplog.text
    assert "going on without it" in caplog.text
    assert main(["info", "-n", "new", "--storage", store]) == 0
    unreadable = "old (0 of 0 completed trials; gives nothing: its space cannot be read)"
    assert unreadable in capsys.readouterr().out


def test_source_trials_another_program_stored_without_a_dimension_are_left_out(
        store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A source trial lacking a param made every worker of the warm-started experiment die of KeyError: 'x',
    and 'orchard info' with it."""
    old = finished(store)
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store, warm_start=["old"])
    odd = [Trial(f"odd{i}", old.id, params, TrialStatus.COMPLETED, objective=1.0)
           for i, params in enumerate([{"y": 1.0}, {"x": "abc", "y": 1.0}])]
    assert old.storage.restore_trials(old.id, odd) == 2
    new.workon(branin, progress=False)
    assert len(new.fetch_trials([TrialStatus.COMPLETED])) == 2
    assert main(["info", "-n", "new", "--storage", store]) == 0
    assert "old (12 of 14 completed trials; 2 outside x)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["overwritten", "a directory"])
def test_a_source_in_another_storage_that_cannot_be_read_never_stops_the_experiment(
    tmp_path: Path, store: str, damage: str, caplog: pytest.LogCaptureFixture,
) -> None:
    elsewhere = tmp_path / "old-runs.pkl"
    finished(str(elsewhere))
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store,
                                   warm_start=[f"{elsewhere}:old"])
    elsewhere.unlink()
    if damage == "overwritten":
        elsewhere.write_bytes(b"not an orchard file\n" * 10)
    else:
        elsewhere.mkdir()
    new.workon(branin, progress=False)  # every worker exited at start, for good
    assert len(new.fetch_trials([TrialStatus.COMPLETED])) == 2
    assert f"warm start source '{elsewhere}:old' cannot be read" in caplog.text


def test_a_source_whose_file_was_moved_is_said_to_be_gone_not_deleted(
    tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    """The runs folder moved: every worker and info said the source 'no longer exists', as if deleted."""
    elsewhere = tmp_path / "runs" / "old-runs.pkl"
    elsewhere.parent.mkdir()
    finished(str(elsewhere))
    new = orchard.build_experiment("new", space=BRANIN_SPACE, max_trials=2, storage=store,
                                   warm_start=[f"{elsewhere}:old"])
    (tmp_path / "runs").rename(tmp_path / "runs-2026")
    new.workon(branin, progress=False)
    assert len(new.fetch_trials([TrialStatus.COMPLETED])) == 2
    assert f"cannot be read: its file {elsewhere} does not exist (moved or deleted?)" in caplog.text
    assert main(["info", "-n", "new", "--storage", store]) == 0
    assert "(0 of 0 completed trials; gives nothing: its storage file is gone)" in capsys.readouterr().out


# -- warm start: what it buys ----------------------------------------------------------------------


def _regret_curve(exp: orchard.Experiment) -> list[float]:
    best, curve = math.inf, []
    for trial in sorted(exp.fetch_trials([TrialStatus.COMPLETED]), key=lambda t: t.end_time or 0.0):
        best = min(best, trial.objective if trial.objective is not None else math.inf)
        curve.append(best - BRANIN_MIN)
    return curve


def test_warm_started_bayes_reaches_early_what_cold_bayes_reaches_later() -> None:
    """Over 3 seeds: ``bayes`` warm-started from a finished 30-trial random search, after 5 trials, has
    a median regret the cold ``bayes`` (10 random points first) has not reached after 15 (measured:
    0.03 against 1.6). The warm experiment's own budget and best trial stay its own."""
    warm_curves, cold_curves = [], []
    for seed in range(3):
        storage = f"memory://warm-start-branin-{seed}"
        old = finished(storage, n=30)
        warm = orchard.build_experiment("warm", space=BRANIN_SPACE, algorithm="bayes", max_trials=5,
                                        storage=storage, seed=100 + seed, warm_start=["old"])
        warm.workon(branin, progress=False)
        cold = orchard.build_experiment("cold", space=BRANIN_SPACE, algorithm="bayes", max_trials=15,
                                        storage=storage, seed=100 + seed)
        cold.workon(branin, progress=False)
        warm_curves.append(_regret_curve(warm))
        cold_curves.append(_regret_curve(cold))
        own = warm.fetch_trials()
        assert len(own) == 5 and warm.best_trial is not None and warm.best_trial.id in {t.id for t in own}
        assert len(old.fetch_trials()) == 30
    warm_at_5 = statistics.median(c[4] for c in warm_curves)
    assert warm_at_5 < statistics.median(c[14] for c in cold_curves), (warm_curves, cold_curves)
    assert warm_at_5 < 0.5 * statistics.median(c[4] for c in cold_curves)


@pytest.mark.slow
def test_two_hunts_warm_started_on_one_pickle_skip_the_known_points(tmp_path: Path) -> None:
    """Two real ``hunt`` processes join one grid experiment warm-started from 3 inserted evaluations
    of a 6-point space: both read the stored sources, so together they evaluate exactly the 3 other points."""
    store = str(tmp_path / "db.pkl")
    old = orchard.build_experiment("old", space={"x": "choices([1, 2, 3, 4, 5, 6])"}, storage=store)
    for x in (1, 2, 3):
        old.insert({"x": x}, objective=float(x))
    (tmp_path / "train.py").write_text(
        "import argparse, orchard\np = argparse.ArgumentParser()\np.add_argument('--x', type=int)\n"
        "orchard.report_objective(float(p.parse_args().x))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "new", "--storage", store, "--algorithm", "grid",
               "--max-trials", "3", "--warm-start", "old", sys.executable, "train.py",
               "--x~choices([1, 2, 3, 4, 5, 6])"]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    done = orchard.get_experiment("new", storage=store).fetch_trials()
    assert sorted(t.params["x"] for t in done) == [4, 5, 6]
    assert all(t.status is TrialStatus.COMPLETED for t in done)
