"""Settings: the typed experiment record, and the one resolver for Python and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orchard
from orchard import config
from orchard.cli import main
from orchard.errors import ConfigurationError
from orchard.experiment_config import ExperimentConfig
from orchard.space import Space
from orchard.storages import get_storage

SPACE = {"x": "uniform(0, 1)"}


def test_experiment_config_round_trips_through_the_stored_dict() -> None:
    cfg = ExperimentConfig(Space.from_config(SPACE), algorithm="grid", max_trials="7", seed=0)
    stored = cfg.to_dict()
    assert list(stored["algorithm"]) == ["grid"]
    assert stored["max_trials"] == 7 and stored["max_broken"] == 3 and stored["max_attempts"] == 3
    assert ExperimentConfig.from_dict(stored) == cfg
    assert cfg.stale_after == 3 * cfg.heartbeat == 90.0
    # an older record without the newer keys gets the defaults; unknown keys are ignored
    old = {"space": stored["space"], "algorithm": {"random": {}}, "max_trials": 5, "future": 1}
    assert ExperimentConfig.from_dict(old).max_attempts == 3


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("seed", -1, "seed=-1: it must be an integer >= 0 (or unset)"),
    ("heartbeat", 0, "heartbeat=0: it must be a number of seconds from 0.01 to 86,400"),
    ("heartbeat", 1e308, "heartbeat=1e+308: it must be a number of seconds from 0.01"),  # overflowed every timer
    ("heartbeat", 1e-9, "heartbeat=1e-09: it must be"),  # every lease lost at once
    ("heartbeat", float("nan"), "heartbeat=nan"),
    ("max_broken", 0, "max_broken=0: it must be a positive integer"),
    ("max_attempts", -2, "max_attempts=-2: it must be a positive integer"),
    ("max_trials", 2.5, "max_trials=2.5"),
    ("max_trials", 2**63, "max_trials=9223372036854775808: it must be a positive integer below 2**63"),
    ("seed", 2**64, "seed=18446744073709551616: it must be an integer >= 0 below 2**63"),
    ("working_dir", "runs\x00x", "working_dir='runs\\x00x': it must be a folder path (without a NUL character)"),
    ("stop", {"patience": 2**64}, "patience=18446744073709551616: it must be a positive number of trials below 2**63"),
])
def test_build_experiment_refuses_bad_settings_and_stores_nothing(tmp_path, key, value, expected) -> None:
    store = str(tmp_path / "o.pkl")
    with pytest.raises(ConfigurationError) as info:
        orchard.build_experiment("e", space=SPACE, storage=store, **{key: value})
    message = str(info.value)
    assert expected in message and "correct it" in message and "\n" not in message
    assert get_storage(store).list_experiments() == []


def test_hunt_refuses_a_negative_seed_before_storing_anything(no_ambient: Path, capsys) -> None:
    (no_ambient / "train.py").write_text("import orchard, sys; orchard.report_objective(0.0)\n")
    code = main(["hunt", "-n", "e", "--storage", "o.pkl", "--seed", "-1",
                 sys.executable, "train.py", "--x~uniform(0, 1)"])
    line = capsys.readouterr().err.strip()
    assert code != 0 and "seed=" in line and "(from --seed)" in line and len(line.splitlines()) == 1
    assert get_storage(str(no_ambient / "o.pkl")).list_experiments() == []


def test_hunt_refuses_an_unknown_executor_before_storing_anything(no_ambient: Path, capsys) -> None:
    (no_ambient / "train.py").write_text("import orchard, sys; orchard.report_objective(0.0)\n")
    code = main(["hunt", "-n", "e", "--storage", "o.pkl", "--executor", "lokky", "--n-workers", "2",
                 sys.executable, "train.py", "--x~uniform(0, 1)"])
    line = capsys.readouterr().err.strip()
    assert code == 2 and "executor='lokky' (from --executor): it must be one of joblib, loky" in line
    assert not (no_ambient / "o.pkl").exists()  # was stored, with no trial, before the executor was refused


def test_hunt_refuses_a_bad_timeout_before_storing_anything(no_ambient: Path, capsys) -> None:
    (no_ambient / "train.py").write_text("import orchard, sys; orchard.report_objective(0.0)\n")
    code = main(["hunt", "-n", "e", "--storage", "o.pkl", "--trial-timeout", "-5",
                 sys.executable, "train.py", "--x~uniform(0, 1)"])
    assert code != 0 and "trial_timeout='-5' (from --trial-timeout)" in capsys.readouterr().err
    assert get_storage(str(no_ambient / "o.pkl")).list_experiments() == []


def test_one_resolver_casts_every_source_in_precedence_order(no_ambient: Path) -> None:
    (no_ambient / "orchard.yaml").write_text("max_trials: 9\nheartbeat: '2.5'\nn_workers: 2\n")
    explicit = no_ambient / "exp.yaml"
    explicit.write_text("max_trials: 8\n")
    env = {"ORCHARD_MAX_TRIALS": "7", "ORCHARD_SEED": "11"}
    settings = config.Settings(flags={"max_trials": "6"}, config_file=explicit, environ=env)
    assert settings.get("max_trials", argument=5) == 5   # argument
    assert settings.get("max_trials") == 6               # flag (a string from the command line, cast)
    assert config.Settings(config_file=explicit, environ=env).get("max_trials") == 8   # --config file
    assert config.Settings(environ=env).get("max_trials") == 7                          # ORCHARD_*
    assert config.Settings(environ={}).get("max_trials") == 9                           # ./orchard.yaml
    assert settings.get("seed") == 11 and settings.get("heartbeat") == 2.5 and settings.get("n_workers") == 2
    assert config.Settings(environ={}, files=[]).get("max_broken") == 3                 # default
    assert config.Settings(environ={}, files=[]).get("max_broken", use_default=False) is None
    with pytest.raises(ConfigurationError, match=r"heartbeat='soon' \(from ORCHARD_HEARTBEAT\)"):
        config.Settings(environ={"ORCHARD_HEARTBEAT": "soon"}).get("heartbeat")


def test_a_whole_number_is_taken_however_written_from_every_source(no_ambient: Path, capsys) -> None:
    """``max_trials=3.0`` in Python and ``max_trials: 3.0`` in a file were taken, while
    ``ORCHARD_MAX_TRIALS=2.0``, ``--max-trials 2.0`` and ``max_trials: 1e3`` in a file (text to YAML)
    were "not a positive integer"."""
    (no_ambient / "orchard.yaml").write_text("max_trials: 1e3\nmax_broken: 4.0\n")
    assert config.Settings(environ={}).get("max_trials") == 1000
    assert config.Settings(environ={}).get("max_broken") == 4
    for text, expected in (("2.0", 2), ("1e3", 1000), (" 7 ", 7), ("9223372036854775807.0", 2**63 - 1)):
        assert config.Settings(environ={"ORCHARD_MAX_TRIALS": text}, files=[]).get("max_trials") == expected
    assert config.Settings(flags={"seed": "0.0"}, environ={}, files=[]).get("seed") == 0
    for text in ("2.5", "1e-3", "nan", "inf", "1e999999999", "-1e999999999"):  # no billion-digit int made
        with pytest.raises(ConfigurationError, match=r"max_trials=.* it must be a positive integer"):
            config.Settings(environ={"ORCHARD_MAX_TRIALS": text}, files=[]).get("max_trials")
    (no_ambient / "train.py").write_text("import orchard, sys; orchard.report_objective(0.0)\n")
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--max-trials", "2.0",
                 sys.executable, "train.py", "--x~uniform(0, 1)"]) == 0, capsys.readouterr().err
    assert orchard.get_experiment("e", storage="o.pkl").stats["counts"]["completed"] == 2


def test_python_and_cli_share_the_defaults() -> None:
    assert config.DEFAULTS["max_broken"] == ExperimentConfig.default("max_broken") == 3
    assert config.DEFAULTS["heartbeat"] == ExperimentConfig.default("heartbeat") == 30.0
    assert config.DEFAULTS["storage"] == "orchard.pkl"


def test_an_experiment_stored_with_a_bad_setting_says_so_and_can_be_deleted(no_ambient: Path) -> None:
    store = str(no_ambient / "o.pkl")
    storage = get_storage(store)
    storage.create_experiment("old", {"space": SPACE, "seed": -1})  # as an older release stored it
    with pytest.raises(ConfigurationError, match=r"unusable stored configuration .*seed=-1.*db rm -n old"):
        orchard.get_experiment("old", storage=store).workon(lambda x: x, progress=False)
    assert main(["db", "rm", "-n", "old", "--storage", store, "--yes"]) == 0
    assert get_storage(store).list_experiments() == []


def test_build_experiment_uses_the_same_resolver_as_hunt(no_ambient: Path, monkeypatch) -> None:
    (no_ambient / "orchard.yaml").write_text("max_broken: 5\nstorage: from-file.pkl\n")
    monkeypatch.setenv("ORCHARD_MAX_TRIALS", "4")
    exp = orchard.build_experiment("e", space=SPACE, max_broken=2)
    assert exp.max_trials == 4 and exp.settings.max_broken == 2  # env, then the argument wins over the file
    assert exp.storage.redacted_uri.endswith("from-file.pkl")


def test_a_relative_working_dir_is_the_same_folder_for_workers_started_elsewhere(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "o.pkl")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    orchard.build_experiment("e", space=SPACE, storage=store, working_dir="runs")
    monkeypatch.chdir(tmp_path / "b")  # a SLURM job or a second terminal elsewhere
    assert orchard.get_experiment("e", storage=store).settings.working_dir == str(tmp_path / "a" / "runs")


def _laughs(indent: str) -> str:
    """A "billion laughs" document: nine lists of nine aliases of the one before, 9**9 strings expanded."""
    rows = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"{indent}{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize(("text", "expected"), [
    # the last one silently won: 1,000 trials ran
    ("max_trials: 10\nseed: 1\nmax_trials: 1000\n", "gives key 'max_trials' twice (lines 1 and 3); keep one"),
    ("algorithm:\n  random:\n    seed: 1\n    seed: 2\n", "gives key 'seed' twice (lines 3 and 4)"),
    # loaded as shared references, it hung whatever walked it (hunt was still running after 20 s)
    ("algorithm:\n  random:\n" + _laughs("    "), "holds more than 100,000 values once its aliases (*name) are expanded"),
    ("space: &s {x: *s}\n", "refers to itself through an alias"),
    # reached os.makedirs / open as a path: 'unexpected ValueError: embedded null byte' (exit 1)
    ('working_dir: "runs\\0x"\n', "holds a NUL character (\\0) in the value at line 1"),
    ('warm_start: ["old\\0.pkl:e"]\n', "holds a NUL character"),
    ("max_trials: 1" + "0" * 5000 + "\n", "is not valid YAML at line 1, column 13: Exceeds the limit"),
    ("max_trials: 5\x07\n", "is not valid YAML at character 14: '\\x07' is a character YAML does not allow"),
    ("1: 1\nmax_trial: 2\n", "has unknown setting(s) 'max_trial', 1; valid: algorithm"),  # was a TypeError
    # named the valid keys only: which was meant was left to the reader
    ("max_trial: 2\nMax-Broken: 3\n",
     "; did you mean max_broken for 'Max-Broken', max_trials for 'max_trial'?"),
])
def test_a_config_file_with_a_key_twice_an_alias_bomb_or_odd_text_is_one_line(no_ambient: Path, text: str, expected: str) -> None:
    path = no_ambient / "exp.yaml"
    path.write_text(text)
    started = time.process_time()
    with pytest.raises(ConfigurationError) as info:
        config.Settings(config_file=path, environ={}, files=[]).check()
    assert time.process_time() - started < 1.0
    message = str(info.value)
    assert message.startswith(f"config file {path} ") and expected in message and "\n" not in message


@pytest.mark.parametrize(("text", "mode", "warned"), [
    ("storage: mongodb://alice:s3cret@db-host/runs?authSource=admin\n", 0o644, True),
    ("warm_start: ['mongodb://alice:s3cret@db-host/old:lr']\n", 0o640, True),
    ("storage: mongodb://alice:s3cret@db-host/runs?authSource=admin\n", 0o600, False),
    ("storage: mongodb://db-host/runs\n", 0o644, False),
])
def test_a_config_file_holding_a_password_that_others_can_read_is_said_once(
        no_ambient: Path, caplog: pytest.LogCaptureFixture, text: str, mode: int, warned: bool) -> None:
    """A password in a config file the umask left readable by every user was read without a word."""
    path = no_ambient / "orchard.yaml"
    path.write_text(text)
    path.chmod(mode)
    config.load_config_file(path)
    config.load_config_file(path)
    said = [r.getMessage() for r in caplog.records if "holds a password" in r.getMessage()]
    expected = (f"config file {path} holds a password and other users can read it (mode {mode:04o}); "
                f"make it yours alone: chmod 600 {path}")
    assert said == ([expected] if warned else []), caplog.text
    assert "s3cret" not in caplog.text


def test_a_config_file_that_is_a_folder_or_no_file_says_so(no_ambient: Path) -> None:
    (no_ambient / "runs.yaml").mkdir()
    for given, said in [("runs.yaml", "config file runs.yaml is a folder"), ("/dev/null", "is not a file"),
                        ("nope.yaml", "config file nope.yaml not found")]:  # the first two were 'not found'
        with pytest.raises(ConfigurationError, match=said):
            config.Settings(config_file=given)


def test_yaml_merges_still_apply_and_may_be_overridden(no_ambient: Path) -> None:
    (no_ambient / "orchard.yaml").write_text(
        "algorithm:\n  bayes:\n    <<: &defaults {acq_func: EI, n_initial_points: 4}\n    n_initial_points: 2\n")
    settings = config.Settings(environ={})
    assert settings.get("algorithm") == {"bayes": {"acq_func": "EI", "n_initial_points": 2}}
    # a mapping that overrides a merged key, merged into another and then used again: its key is not twice
    (no_ambient / "orchard.yaml").write_text(
        "executor_config:\n  <<: &mine\n    <<: &base {min_trials: 5}\n    min_trials: 3\n  cores: 1\n"
        "pruner:\n  median: *mine\n")
    assert config.Settings(environ={}).get("pruner") == {"median": {"min_trials": 3}}


def test_a_key_twice_in_an_option_given_as_yaml_is_refused_naming_the_option(no_ambient: Path, capsys) -> None:
    code = main(["hunt", "-n", "e", "--storage", "o.pkl", "--algorithm", "{random: {seed: 1, seed: 2}}",
                 sys.executable, "train.py", "--x~uniform(0, 1)"])
    line = capsys.readouterr().err.strip()
    assert code != 0 and "(from --algorithm)" in line and "gives key 'seed' twice (line 1)" in line
    assert len(line.splitlines()) == 1 and not (no_ambient / "o.pkl").exists()
    # a byte that is not UTF-8 on the command line comes as a lone surrogate
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--algorithm", "{random: {seed: \udcff}}",
                 sys.executable, "train.py", "--x~uniform(0, 1)"]) == 2
    assert "'\\udcff' is a character YAML does not allow" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["config file", "ORCHARD_STOP", "--stop"])
def test_a_bad_stop_rule_names_where_it_was_given(no_ambient: Path, where: str) -> None:
    """Every other bad setting named its file, variable or flag; a stop rule's did not."""
    path = no_ambient / "exp.yaml"
    path.write_text("stop:\n  target: abc\n")
    settings = {"config file": config.Settings(config_file=path, environ={}, files=[]),
                "ORCHARD_STOP": config.Settings(environ={"ORCHARD_STOP": "target=abc"}, files=[]),
                "--stop": config.Settings(flags={"stop": ["target=abc"]}, environ={}, files=[])}[where]
    with pytest.raises(ConfigurationError) as info:
        settings.check()
    source = f"config file {path}" if where == "config file" else where
    assert str(info.value) == (f"{source}: invalid stop rule target='abc': it must be a finite number; correct it "
                               "and try again")


# -- probe-settings: every source named, ambient files keep to their keys, secrets hidden -----------


def test_name_and_space_in_an_ambient_config_file_are_ignored(no_ambient: Path, capsys) -> None:
    (no_ambient / "train.py").write_text("import orchard, sys; orchard.report_objective(0.0)\n")
    # docs/cli.md: only a --config file gives name and space; ./orchard.yaml gave both, the space
    # adding --y=... to every script's arguments
    (no_ambient / "orchard.yaml").write_text("name: from-file\nspace: {y: 'uniform(0, 1)'}\n")
    assert main(["hunt", "--max-trials", "1", sys.executable, "train.py", "--x~uniform(0, 1)"]) == 2
    assert "needs an experiment name" in capsys.readouterr().err
    assert main(["hunt", "-n", "e", "--max-trials", "1", sys.executable, "train.py", "--x~uniform(0, 1)"]) == 0
    assert list(orchard.get_experiment("e").space.config()) == ["x"]


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("algorithm", "grdi", "unknown algorithm 'grdi'"),
    ("algorithm", "{bayes: {xi: 1e-3}}", "bayes option xi must be a number"),  # YAML 1.1 reads 1e-3 as text
    ("pruner", "medain", "unknown pruner 'medain'"),
    ("objectives", "error:up", "direction 'up'"),
    ("constraints", "memory <<= 3", "'memory <<= 3' is not understood"),
    ("storage", 123, "invalid setting storage=123"),
])
def test_a_setting_checked_where_the_experiment_is_built_names_its_source(tmp_path, key, value, expected) -> None:
    file = tmp_path / "orchard.yaml"
    file.write_text(f"{key}: {value}\n")
    sources = [(config.Settings(environ={}, files=[file]), f"config file {file}")]
    if isinstance(value, str):  # any text is a storage path
        sources.append((config.Settings(environ={f"ORCHARD_{key.upper()}": value}, files=[]), f"ORCHARD_{key.upper()}"))
    for settings, source in sources:
        with pytest.raises(ConfigurationError) as info:
            settings.check()
        assert expected in str(info.value) and source in str(info.value)


def test_a_storage_of_the_wrong_type_is_refused_without_its_password(tmp_path) -> None:
    file = tmp_path / "orchard.yaml"
    file.write_text("storage: [mongodb://bob:hunter2@db-host/orchard]\n")
    with pytest.raises(ConfigurationError) as info:
        config.Settings(environ={}, files=[file]).get("storage")
    assert f"from config file {file}" in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize(("where", "expected"), [
    ("env", "ORCHARD_STORAGE: storage 'runs' is neither a URI nor a path ending in .pkl"),
    ("file", "orchard.yaml: storage 'foo://db' has unknown scheme 'foo'"),
])
def test_a_malformed_storage_names_the_variable_or_file_that_gave_it(
        no_ambient: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        where: str, expected: str) -> None:
    """ORCHARD_STORAGE=runs (set in a shell profile) said only "storage 'runs' is neither a URI …"."""
    if where == "env":
        monkeypatch.setenv("ORCHARD_STORAGE", "runs")
    else:
        (no_ambient / "orchard.yaml").write_text("storage: foo://db\n")
    assert main(["list"]) == 2
    assert expected in capsys.readouterr().err


def test_a_user_info_escaped_whole_keeps_its_password_hidden(no_ambient: Path, capsys) -> None:
    # 'bob:hunter2' escaped with quote_plus: the driver finds no password and says so, with the URI
    uri = "mongodb://bob%3Ahunter2@db-host/orchard"
    assert main(["--storage", uri, "list"]) == 2
    err = capsys.readouterr().err
    assert "A password is required" in err and "hunter2" not in err


def test_joining_with_a_different_setting_names_the_source_that_gave_it(no_ambient: Path, monkeypatch) -> None:
    orchard.build_experiment("e", space=SPACE, heartbeat=10)
    monkeypatch.setenv("ORCHARD_HEARTBEAT", "20")
    with pytest.raises(orchard.errors.ExperimentConflictError) as info:
        orchard.build_experiment("e")
    assert "heartbeat: stored 10.0 != given 20.0" in str(info.value)
    assert "(given: heartbeat from ORCHARD_HEARTBEAT)" in str(info.value)
    (no_ambient / "train.py").write_text("import orchard; orchard.report_objective(0.0)\n")
    assert main(["hunt", "-n", "e", sys.executable, "train.py", "--x~uniform(0, 1)"]) == 1


def test_an_executor_config_that_is_not_a_mapping_is_refused_naming_its_source(no_ambient: Path, capsys) -> None:
    (no_ambient / "train.py").write_text("import orchard; orchard.report_objective(0.0)\n")
    (no_ambient / "orchard.yaml").write_text("executor_config: 5\n")  # was dropped without a word (one worker)
    assert main(["hunt", "-n", "e", "--max-trials", "1", sys.executable, "train.py", "--x~uniform(0, 1)"]) == 2
    err = capsys.readouterr().err
    assert "executor_config=5" in err and f"config file {no_ambient / 'orchard.yaml'}" in err


def test_errors_name_the_repeatable_flags_as_typed(no_ambient: Path, capsys) -> None:
    """A bad `--objective acc:mux` was reported as `--objectives: …`, and a joiner's conflicting objectives as
    'given: objectives from --objectives': flags hunt does not have (`--objectives` is refused as unknown)."""
    (no_ambient / "train.py").write_text("import orchard, sys; orchard.report_objective(0.0)\n")
    command = [sys.executable, "train.py", "--x~uniform(0, 1)"]
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--objective", "acc:mux", *command]) == 2
    assert capsys.readouterr().err.startswith("orchard: error: --objective: objective 'acc' has direction 'mux'")
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--constraint", "acc = 3", *command]) == 2
    assert capsys.readouterr().err.startswith("orchard: error: --constraint: constraint 'acc = 3'")
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="o.pkl")
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--objective", "acc:max", *command]) == 1
    assert capsys.readouterr().err.strip().endswith("(given: objectives from --objective)")


@pytest.mark.parametrize("objectives", ["err:min; acc:max", "err:min acc:max"])
def test_objectives_not_separated_by_commas_are_refused_before_anything_is_stored(
    no_ambient: Path, capsys, monkeypatch, objectives: str,
) -> None:
    """ORCHARD_OBJECTIVES='err:min; acc:max' (';' as ORCHARD_CONSTRAINTS separates) built an experiment of one
    objective named 'err:min; acc', to maximise: every trial broke, and the name stayed taken."""
    (no_ambient / "train.py").write_text("import orchard; orchard.report_results({'err': 0.5, 'acc': 0.5})\n")
    monkeypatch.setenv("ORCHARD_OBJECTIVES", objectives)
    command = [sys.executable, "train.py", "--x~uniform(0, 1)"]
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--max-trials", "1", *command]) == 2
    err = capsys.readouterr().err
    assert "ORCHARD_OBJECTIVES" in err and "separated by ','" in err
    assert f"({objectives.split(':max')[0]!r} is no objective name)" in err
    assert get_storage("o.pkl").get_experiment("e") is None
    monkeypatch.setenv("ORCHARD_OBJECTIVES", "err:min, acc:max,")  # spaces and a last comma are fine
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--max-trials", "1", *command]) == 0
    assert orchard.get_experiment("e", storage="o.pkl").settings.objectives == {"err": "min", "acc": "max"}


def test_minimize_and_maximize_are_taken_wherever_objectives_are_given(no_ambient: Path, monkeypatch) -> None:
    """--objective acc:maximize (and the same in Python, YAML, ORCHARD_OBJECTIVES) was refused: 'must be
    'min' or 'max''; it is stored as 'max'."""
    (no_ambient / "train.py").write_text("import orchard; orchard.report_results({'err': 0.5, 'acc': 0.5})\n")
    command = [sys.executable, "train.py", "--x~uniform(0, 1)"]
    assert main(["hunt", "-n", "cli", "--storage", "o.pkl", "--max-trials", "1",
                 "--objective", "err:minimize", "--objective", "acc:MAXIMIZE", *command]) == 0
    (no_ambient / "orchard.yaml").write_text("objectives: {err: minimize, acc: maximize}\n")
    assert main(["hunt", "-n", "yaml", "--storage", "o.pkl", "--max-trials", "1", *command]) == 0
    (no_ambient / "orchard.yaml").unlink()
    monkeypatch.setenv("ORCHARD_OBJECTIVES", "err:minimize, acc:maximize")
    assert main(["hunt", "-n", "env", "--storage", "o.pkl", "--max-trials", "1", *command]) == 0
    monkeypatch.delenv("ORCHARD_OBJECTIVES")
    orchard.build_experiment("py", space={"x": "uniform(0, 1)"}, storage="o.pkl",
                             objectives={"err": "minimize", "acc": "maximize"})
    for name in ("cli", "yaml", "env", "py"):
        stored = orchard.get_experiment(name, storage="o.pkl").settings.objectives
        assert stored == {"err": "min", "acc": "max"}
    assert orchard.get_experiment("cli", storage="o.pkl").fetch_trials()[0].status.value == "completed"


def test_a_mistyped_orchard_variable_is_named_not_silently_ignored(no_ambient: Path) -> None:
    """`ORCHARD_MAX_TRIAL=2 orchard hunt ...` (a letter short) set nothing without a word: the hunt meant to
    stop after 2 trials ran until it was killed."""
    (no_ambient / "train.py").write_text("import orchard; orchard.report_objective(0.0)\n")
    env = {**os.environ, "ORCHARD_MAX_TRIAL": "2", "ORCHARD_NAME": "e", "ORCHARD_DATA": "/data"}
    done = subprocess.run([sys.executable, "-m", "orchard", "hunt", "-n", "e", "--max-trials", "1",
                           sys.executable, "train.py", "--x~uniform(0, 1)"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "environment variable ORCHARD_MAX_TRIAL sets nothing: did you mean ORCHARD_MAX_TRIALS?" in err
    assert "ORCHARD_NAME sets nothing: name is given by a flag, an argument or a config file only" in err
    assert "ORCHARD_DATA" not in err  # a script's own variable, near no setting


@pytest.mark.parametrize(("variable", "said"), [
    ("orchard_seed", "variable names are case-sensitive, did you mean ORCHARD_SEED?"),
    ("ORCHARD_CONFIG", "give the file with --config, or write ./orchard.yaml"),
    ("ORCHARD_STORGE", "did you mean ORCHARD_STORAGE?"),
    ("ORCHARD_WARM_START", "warm_start is given by a flag, an argument or a config file only"),
])
def test_each_kind_of_mistyped_variable_says_what_to_use(variable: str, said: str) -> None:
    assert config.unknown_variables({variable: "1"}) == [f"{variable} sets nothing: {said}"]
    # set by hunt for a trial's command, or empty: nothing to say
    quiet = {"ORCHARD_PARENT_WORKING_DIR": "/x", "ORCHARD_TRIAL_ID": "1", variable: ""}
    assert config.unknown_variables(quiet) == []


@pytest.mark.parametrize(("where", "folder", "said"), [
    ("orchard.yaml", "$HOME/runs", "working_dir='$HOME/runs' (from config file"),
    ("ORCHARD_WORKING_DIR", "${SCRATCH}/runs", "working_dir='${SCRATCH}/runs' (from ORCHARD_WORKING_DIR)"),
    ("--working-dir", " ", "working_dir=' ' (from --working-dir): it must be a folder path, not blank"),
])
def test_a_working_dir_with_an_unexpanded_variable_or_blank_is_refused(
        no_ambient: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        where: str, folder: str, said: str) -> None:
    """A folder named `$HOME` (or ` `) was made in the hunt's directory and every trial ran there, while the
    same `$HOME` in `storage:` was refused."""
    (no_ambient / "train.py").write_text("import orchard; orchard.report_objective(0.0)\n")
    flags = ["--working-dir", folder] if where == "--working-dir" else []
    if where == "orchard.yaml":
        (no_ambient / where).write_text(f"working_dir: {folder}\n")
    elif where.startswith("ORCHARD_"):
        monkeypatch.setenv(where, folder)
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--max-trials", "1", *flags,
                 sys.executable, "train.py", "--x~uniform(0, 1)"]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert sorted(path.name for path in no_ambient.iterdir()) == sorted(["train.py", *(
        ["orchard.yaml"] if where == "orchard.yaml" else [])])
    with pytest.raises(ConfigurationError, match="without \\$HOME, which nothing expanded"):
        orchard.build_experiment("e", space=SPACE, storage="o.pkl", working_dir="$HOME/runs")


def test_an_ambient_config_file_that_is_a_folder_or_not_utf8_says_so(no_ambient: Path) -> None:
    """A folder ./orchard.yaml was skipped without a word (its settings, a budget, were never read), and a
    Latin-1 file said only "'utf-8' codec can't decode byte 0xe9 in position 19"."""
    (no_ambient / "orchard.yaml").mkdir()
    with pytest.raises(ConfigurationError, match="orchard.yaml is a folder; put the settings in a file"):
        config.Settings(environ={}).check()
    (no_ambient / "orchard.yaml").rmdir()
    (no_ambient / "orchard.yaml").write_bytes("max_trials: 3  # café\n".encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"not UTF-8 text \(byte 0xe9 at offset 20\); save it as"):
        config.Settings(environ={}).check()
