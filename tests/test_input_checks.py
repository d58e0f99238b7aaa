"""Bad input is refused before anything is stored or reserved, with one line that says what to do.

What a new user meets first: names that would become paths, objectives that cannot be called
with the space's names, results no storage can hold, a finished experiment joined again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard.errors import ConfigurationError, StorageUnavailableError
from orchard.naming import MAX_NAME_LENGTH, check_experiment_name, folder_in
from orchard.objective import interpret_result
from orchard.runner import CommandTemplate, ScriptRunner
from orchard.trial import Trial, TrialStatus

SPACE = {"x": "uniform(0, 1)", "y": "uniform(0, 1)"}


def quadratic(x: float, y: float) -> float:
    return (x - 0.3) ** 2 + (y - 0.2) ** 2


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../evil", "/abs/dir", "", "x" * (MAX_NAME_LENGTH + 1), "a/b", "..",
                                  ".hidden", "-rf", "tab\\there", "nul\\0", 3])
def test_unsafe_names_are_refused_before_anything_is_stored(tmp_path: Path, name: object) -> None:
    storage = orchard.get_storage(str(tmp_path / "orchard.pkl"))
    with pytest.raises(ConfigurationError, match="experiment name") as info:
        orchard.build_experiment(name, space=SPACE, storage=storage)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and "letters, digits" in str(info.value)
    assert storage.list_experiments() == []


@pytest.mark.parametrize("where", ["pickle", "mongomock"])
def test_an_option_of_an_int_no_storage_holds_is_refused_by_name_before_anything_is_stored(
        tmp_path: Path, where: str) -> None:
    """--algorithm '{bayes: {n_initial_points: 99999999999999999999999}}' was taken by the algorithm and
    refused by the storage: 'cannot store an int of 77 bits ... convert params, results and configuration
    values', naming no option; MongoDB raised its bare OverflowError 'can only handle up to 8-byte ints'."""
    storage = orchard.get_storage(str(tmp_path / "orchard.pkl") if where == "pickle" else "mongomock://h/db")
    with pytest.raises(ConfigurationError) as info:
        orchard.build_experiment("e", space=SPACE, storage=storage,
                                 algorithm={"bayes": {"n_initial_points": 10**23}})
    assert str(info.value).startswith("algorithm.bayes.n_initial_points is an int of 77 bits")
    assert "give a smaller value" in str(info.value) and "\n" not in str(info.value)
    assert storage.list_experiments() == []
    largest = {"bayes": {"n_initial_points": 2**63 - 1}}
    assert orchard.build_experiment("e", space=SPACE, storage=storage, algorithm=largest).name == "e"


@pytest.mark.parametrize("name", ["e", "lr-search_2", "bohb.v2", "a+b=c@d", "_x", "x" * MAX_NAME_LENGTH])
def test_plain_names_are_accepted(name: str) -> None:
    assert check_experiment_name(name) == name


@pytest.mark.parametrize("part", ["..", ".", "", "../x", "/etc", "a/b"])
def test_folder_in_never_leaves_its_base(part: str) -> None:
    with pytest.raises(ConfigurationError, match="folder name"):
        folder_in("/base", part)


def test_a_tampered_trial_id_breaks_the_trial_instead_of_writing_outside(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runner = ScriptRunner(CommandTemplate.parse(["true", "--x~uniform(0, 1)"]), "e", str(runs))
    outcome = runner(Trial(id="../../evil", experiment="e", params={"x": 0.5}))
    assert outcome.error is not None and outcome.error["reason"] == "setup"
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()


# -- objectives and results ------------------------------------------------------------------------


def test_an_unstorable_result_breaks_its_trial_and_the_worker_goes_on(tmp_path: Path) -> None:
    calls = []

    def objective(x: float, y: float) -> dict[str, object]:
        calls.append(x)
        extra = object() if len(calls) == 1 else "fine"
        return {"objective": quadratic(x, y), "obj": extra}

    exp = orchard.build_experiment("e", space=SPACE, max_trials=3, storage=str(tmp_path / "orchard.pkl"))
    exp.workon(objective, executor="single", progress=False)
    statuses = sorted(t.status.value for t in exp.fetch_trials())
    assert statuses == ["broken", "completed", "completed", "completed"]
    (broken,) = exp.fetch_trials([TrialStatus.BROKEN])
    assert broken.error is not None and broken.error["reason"] == "unstorable"
    assert "'obj'" in broken.error["message"]


def test_interpret_result_names_the_unstorable_key() -> None:
    outcome = interpret_result({"objective": 1.0, "obj": object(), "ok": [1, "a", {"b": 2.5}]})
    assert outcome.error is not None and "'obj'" in outcome.error["message"]
    assert interpret_result({"objective": 1.0, "ok": [1, "a", {"b": 2.5}]}).ok


def test_a_result_in_another_tools_format_is_refused_with_what_to_write_instead() -> None:
    orion_style = [{"name": "loss", "type": "objective", "value": 0.25}]
    outcome = interpret_result(orion_style)
    assert outcome.error is not None and outcome.error["type"] == "InvalidResult"
    assert "got list" in outcome.error["message"] and '{"objective": 0.25}' in outcome.error["message"]


@pytest.mark.parametrize(("fn", "words"), [
    (42, "not callable"),
    (lambda a: a, "cannot be called with the space's parameters"),
    (lambda x: x, "unexpected keyword argument 'y'"),
    (lambda x, y, z: x, "missing a required argument: 'z'"),
])
def test_an_objective_that_cannot_take_the_space_is_refused_before_any_trial(
    tmp_path: Path, fn: object, words: str
) -> None:
    exp = orchard.build_experiment("e", space=SPACE, max_trials=5, storage=str(tmp_path / "orchard.pkl"))
    with pytest.raises(ConfigurationError, match=words):
        exp.workon(fn, executor="single", progress=False)  # type: ignore[arg-type]
    assert exp.fetch_trials() == [], "no trial may be reserved for an objective that cannot run"


@pytest.mark.parametrize("fn", [quadratic, lambda **params: 1.0, lambda x, y, z=0: 1.0, lambda *, x, y: 1.0])
def test_objectives_that_take_the_names_are_accepted(tmp_path: Path, fn: object) -> None:
    exp = orchard.build_experiment("e", space=SPACE, max_trials=1, storage=str(tmp_path / "orchard.pkl"))
    exp.workon(fn, executor="single", progress=False)  # type: ignore[arg-type]
    assert [t.status for t in exp.fetch_trials()] == [TrialStatus.COMPLETED]


def test_workon_says_when_the_budget_is_already_met(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp = orchard.build_experiment("e", space=SPACE, max_trials=2, storage=str(tmp_path / "orchard.pkl"))
    exp.workon(quadratic, executor="single", progress=False)
    with caplog.at_level(logging.WARNING, logger="orchard"):
        exp.workon(quadratic, executor="single", progress=False)
    assert any("already completed its 2 trials" in r.getMessage() for r in caplog.records), caplog.text


# -- reading and reporting -----------------------------------------------------------------------------


def test_to_pandas_times_are_datetimes(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    exp = orchard.build_experiment("e", space=SPACE, max_trials=2, storage=str(tmp_path / "orchard.pkl"))
    exp.workon(quadratic, executor="single", progress=False)
    frame = exp.to_pandas()
    for column in ("submit_time", "start_time", "end_time"):
        assert pd.api.types.is_datetime64_any_dtype(frame[column]), column
    assert (frame["end_time"] >= frame["start_time"]).all()


def test_report_objective_errors_name_report_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHARD_RESULTS_PATH", raising=False)
    with pytest.raises(ValueError, match="^report_objective needs a finite number"):
        orchard.report_objective(float("nan"))
    with pytest.raises(RuntimeError, match="report_objective only works inside a trial"):
        orchard.report_objective(1.0)
    with pytest.raises(RuntimeError, match="report_results only works inside a trial"):
        orchard.report_results({"objective": 1.0})


@pytest.mark.parametrize("results", [0.5, [("objective", 0.5)], "0.5"])
def test_report_results_of_a_bare_value_says_to_pass_a_dict(results: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHARD_RESULTS_PATH", str(tmp_path / "results.json"))
    with pytest.raises(TypeError) as info:
        orchard.report_results(results)
    message = str(info.value)
    assert message.startswith("report_results takes a dict such as {'objective': ") and "report_objective" in message
    assert "\n" not in message and not (tmp_path / "results.json").exists()


def test_a_script_reports_arrays_among_its_results_as_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """report_objective(loss, per_class=np.array([...])) raised "Object of type ndarray is not JSON serializable"
    (a TypeError the docs do not name) and the script lost its result."""
    import numpy as np

    monkeypatch.setenv("ORCHARD_RESULTS_PATH", str(tmp_path / "results.json"))
    orchard.report_objective(np.float32(0.25), per_class=np.array([0.5, 0.75]), epochs=np.int64(3))
    assert json.loads((tmp_path / "results.json").read_text()) == {"objective": 0.25, "per_class": [0.5, 0.75],
                                                                    "epochs": 3}


def test_results_are_never_written_through_a_link_planted_beside_them(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The results file was written through ``results.json.tmp``, a name known in advance: a symbolic link
    planted there by whoever can write the folder made the script overwrite the link's target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "results.json.tmp").symlink_to(victim)
    monkeypatch.setenv("ORCHARD_RESULTS_PATH", str(tmp_path / "results.json"))
    orchard.report_objective(0.25)
    assert victim.read_text() == "keep me"
    assert json.loads((tmp_path / "results.json").read_text()) == {"objective": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.json.tmp", "victim.txt"]


def test_an_unreachable_mongodb_is_one_short_line() -> None:
    storage = orchard.get_storage("mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300")
    with pytest.raises(StorageUnavailableError) as info:
        storage.list_experiments()
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    assert "127.0.0.1:1" in message and "0.3 s" in message and "Topology" not in message
    assert os.linesep not in message


# -- config files --------------------------------------------------------------------------------


def test_a_config_file_the_size_of_a_data_set_is_refused_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config` given a 60 MB file (a data set, a log) was parsed as YAML for a minute before anything
    was said."""
    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    big = tmp_path / "train.jsonl"
    big.write_text("max_trials: 1\n" + "# a comment line of the kind a data file is full of\n" * 30_000)
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--config", str(big), "true",
                 "x~uniform(0, 1)"]) == 2
    err = capsys.readouterr().err
    assert "holds more than 1 MiB of text; a file of settings is smaller: check --config" in err, err
    assert not (tmp_path / "orchard.pkl").exists()


def test_a_config_file_of_many_values_without_aliases_is_not_blamed_on_aliases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list of 110,000 values was refused for its 'aliases (*name)', which it did not have."""
    from orchard import yaml_input
    from orchard.config import load_config_file

    monkeypatch.setattr(yaml_input, "MAX_NODES", 1_000)  # the same count, read in a 100th of the time
    many = tmp_path / "many.yaml"
    many.write_text("warm_start: [" + ",".join("1" for _ in range(1_100)) + "]\n")
    with pytest.raises(ConfigurationError, match="more than 1,000 values; settings take far fewer") as err:
        load_config_file(many)
    assert "alias" not in str(err.value)
    aliased = tmp_path / "aliased.yaml"
    forty = ",".join("1" for _ in range(40))
    aliased.write_text(f"a: &a [{forty}]\nwarm_start: [" + ",".join(["*a"] * 40) + "]\n")
    with pytest.raises(ConfigurationError, match="once its aliases"):
        load_config_file(aliased)
