"""``orchard hunt`` used carelessly or with hostile scripts: what reaches the script, and what is said.

Each test runs ``hunt`` in-process (:func:`orchard.cli.main`) on a pickle file in ``tmp_path``,
around a tiny Python script; the report follower is driven directly.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orchard
from orchard.cli import main
from orchard.trial import TrialStatus

SCRIPT = r'''
import os, sys, time
mode = sys.argv[1].split("=", 1)[1]
path = os.environ["ORCHARD_RESULTS_PATH"]
if mode == "wait":  # says it runs, then runs until stopped
    with open("../../../running.tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace("../../../running.tmp", "../../../running")
    time.sleep(60)
if mode == "oom":
    sys.exit(137)  # what bash returns when the program it ran was killed by SIGKILL
if mode == "deep":
    with open(path, "w") as handle:
        handle.write('{"objective": 0.5, "curve": ' + "[" * 5000 + "]" * 5000 + "}")
elif mode == "bom":  # as PowerShell's Out-File -Encoding utf8 and R's fileEncoding="UTF-8-BOM" write
    with open(path, "w", encoding="utf-8-sig", newline="\r\n") as handle:
        handle.write('{"objective": 0.5}\n')
else:
    import orchard
    orchard.report_objective(0.5)
'''


@pytest.fixture
def workdir(no_ambient: Path) -> Path:
    """``tmp_path`` as the current directory, with ``script.py`` in it and no ambient config."""
    (no_ambient / "script.py").write_text(SCRIPT)
    return no_ambient


def hunt(*command: str) -> int:
    return main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "1", "--max-broken", "1",
                 *command])


def only_trial() -> orchard.Trial:
    (trial,) = orchard.get_experiment("e", storage="orchard.pkl").fetch_trials()
    return trial


@pytest.mark.parametrize("token", ["--out={trial.hash}", "{exp.working_dir}/model.pt",
                                   "--lr={trial.params.lr}"])
def test_a_placeholder_hunt_does_not_replace_is_refused_before_anything_is_stored(
        workdir: Path, token: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An Orion-style {trial.hash} or a {trial.params.lr} reached every script as it was written."""
    assert hunt(sys.executable, "script.py", "--mode~choices(['ok'])", token) == 2
    error = capsys.readouterr().err
    named = "{" + token.split("{")[1].split("}")[0] + "}"
    assert "does not replace" in error and named in error and "{trial.id}" in error
    assert not (workdir / "orchard.pkl").exists()


def test_the_known_placeholders_and_braces_that_name_none_reach_the_script(workdir: Path) -> None:
    assert hunt(sys.executable, "script.py", "--mode~choices(['ok'])", "--tag={trial.id}-{exp.name}",
                '--json={"trial.x": 1}', "{x}") == 0
    assert only_trial().status is TrialStatus.COMPLETED


def test_an_exit_code_above_128_says_which_signal_killed_the_program_the_shell_ran(workdir: Path) -> None:
    """Exit code 137 (a shell's child killed by SIGKILL, most often by the out-of-memory killer) was
    reported as a bare 'exited with code 137'."""
    assert hunt(sys.executable, "script.py", "--mode~choices(['oom'])") == 1
    error = only_trial().error
    assert error is not None and error["returncode"] == 137
    assert "exited with code 137" in error["message"] and "SIGKILL" in error["message"]
    assert "out-of-memory" in error["message"]


def test_a_results_file_nested_thousands_deep_breaks_the_trial_as_unstorable(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """json's parser recursed past the interpreter's limit: the trial broke on a RecursionError, logged as
    an error of the worker, instead of with the reason every other unstorable result has."""
    with caplog.at_level(logging.WARNING):
        assert hunt(sys.executable, "script.py", "--mode~choices(['deep'])") == 1
    error = only_trial().error
    assert error is not None and error["reason"] == "unstorable", error
    assert "nests lists or dicts more than" in error["message"]
    assert not [r for r in caplog.records if "RecursionError" in r.getMessage()]


def test_a_results_file_that_starts_with_a_byte_order_mark_is_read(workdir: Path) -> None:
    """JSON may be preceded by a UTF-8 byte order mark, which a parser may ignore (RFC 8259): the trial broke
    with 'not JSON (Unexpected UTF-8 BOM …)' on the result it had written."""
    assert hunt(sys.executable, "script.py", "--mode~choices(['bom'])") == 0
    trial = only_trial()
    assert trial.status is TrialStatus.COMPLETED and trial.objective == 0.5, trial.error


def test_a_report_line_nested_thousands_deep_is_skipped_and_the_follower_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The line killed the worker's follower thread: every later report of the script waited 30 s for a
    verdict, and was neither stored nor judged."""
    from orchard.verdicts import ReportFollower

    exp = orchard.build_experiment("deep", space={"x": "uniform(0, 1)"}, max_trials=1, storage="memory://")
    trial = exp.suggest()
    reports, verdict = str(tmp_path / "r.jsonl"), str(tmp_path / "v.json")
    ReportFollower.prepare(reports, verdict)
    follower = ReportFollower(exp._client_worker().judge, trial.id, reports, verdict, stop=lambda: None,
                              grace=1.0)
    with caplog.at_level(logging.WARNING), follower, open(reports, "a") as handle:
        handle.write("[" * 5000 + "]" * 5000 + '\n{"step": 1, "objective": 0.5}\n')
    stored = exp.storage.get_trial(trial.id)
    assert stored is not None and stored.reports == [(1, 0.5)]
    assert any("nested too deeply" in r.getMessage() for r in caplog.records)


def test_a_relative_path_to_a_file_here_that_no_trial_folder_holds_is_warned_about(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Behind a wrapper (env, srun, time), the script stayed relative: every trial broke on 'can't open
    file', and the experiment with them, without a word before it ran."""
    (workdir / "data.csv").write_text("1\n")
    with caplog.at_level(logging.WARNING):
        hunt("env", sys.executable, "script.py", "--mode~choices(['ok'])", "--data=data.csv")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert "'script.py'" in warned[0] and str(workdir / "script.py") in warned[0]
    assert "'--data=data.csv'" in warned[1] and str(workdir / "data.csv") in warned[1]


def test_a_script_an_interpreter_runs_is_made_absolute_and_not_warned_about(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert hunt(sys.executable, "script.py", "--mode~choices(['ok'])", "--data=/dev/null") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("options", [["-X", "dev"], ["-W", "ignore", "-u"], ["-X", "utf8", "-W", "error"]])
def test_a_script_after_interpreter_options_that_take_a_value_is_made_absolute(
        workdir: Path, caplog: pytest.LogCaptureFixture, options: list[str]) -> None:
    """python -X dev train.py: 'dev' was taken for the script, train.py stayed relative, and every trial
    broke on "can't open file" in its own folder."""
    with caplog.at_level(logging.WARNING):
        assert hunt(sys.executable, *options, "script.py", "--mode~choices(['ok'])") == 0
    assert only_trial().status is TrialStatus.COMPLETED
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_julia_script_after_its_thread_count_is_made_absolute(workdir: Path) -> None:
    from orchard.command import resolve_program

    (workdir / "julia").write_text("#!/bin/sh\n")
    (workdir / "julia").chmod(0o755)
    (workdir / "train.jl").write_text("")
    assert resolve_program(["./julia", "-t", "4", "train.jl"])[1] == (3, str(workdir / "train.jl"))


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["single", "thread"])
def test_a_job_stopped_whole_by_its_scheduler_gives_its_trial_back_instead_of_breaking_it(
        workdir: Path, executor: str) -> None:
    """scancel, a SLURM time limit or systemd send SIGTERM to every process of the job at once, the script
    often first: its worker found it killed by SIGTERM and recorded the trial broken before its own SIGTERM
    came (three tasks of an array cancelled broke the experiment of every other task)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    hunt = subprocess.Popen([sys.executable, "-m", "orchard.cli", "hunt", "-n", "e", "--storage", "orchard.pkl",
                             "--max-trials", "2", "--executor", executor, sys.executable, "script.py",
                             "--mode~choices(['wait'])"],
                            cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    marker = workdir / "running"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert hunt.poll() is None and time.monotonic() < deadline, hunt.communicate()
        time.sleep(0.05)
    os.kill(int(marker.read_text()), signal.SIGTERM)
    time.sleep(0.5)  # the scheduler's SIGTERM reaches the worker after the script's (not a wait for a state)
    hunt.send_signal(signal.SIGTERM)
    _, stderr = hunt.communicate(timeout=60)
    assert only_trial().status is TrialStatus.INTERRUPTED, stderr
    assert hunt.returncode == 143 and "1 of 1 running trial(s) released" in stderr, stderr


def test_a_new_experiment_whose_name_is_close_to_a_stored_one_is_said_to_be_new(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A mistyped -n created a second experiment without a word: the worker meant to join ran apart."""
    command = [sys.executable, "script.py", "--mode~choices(['ok'])"]
    assert main(["hunt", "-n", "lr-search", "--storage", "orchard.pkl", "--max-trials", "1", *command]) == 0
    with caplog.at_level(logging.WARNING):
        assert main(["hunt", "-n", "lr-serch", "--storage", "orchard.pkl", "--max-trials", "1", *command]) == 0
        assert main(["hunt", "-n", "lr-serch", "--storage", "orchard.pkl", "--max-trials", "1", *command]) == 0
        for name in ("resnet", "lr-search-2", "lr-search-3", "lr-searches"):  # another name, a series
            assert main(["hunt", "-n", name, "--storage", "orchard.pkl", "--max-trials", "1", *command]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "created experiment 'lr-serch'" in warned[0] and "'lr-search'" in warned[0], warned


def test_a_hunt_started_with_its_standard_streams_closed_runs_its_trials(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with 2>&- (Python's sys.stderr is then None), hunt created the experiment, ran no trial and
    exited 1 on an AttributeError it could not print."""
    for stream in ("stdin", "stdout", "stderr"):
        monkeypatch.setattr(sys, stream, None)
    assert hunt(sys.executable, "script.py", "--mode~choices(['ok'])") == 0
    assert only_trial().status is TrialStatus.COMPLETED


def test_a_dimension_the_command_and_the_config_file_give_differently_is_refused(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command's prior was used and the file's dropped without a word."""
    (workdir / "exp.yaml").write_text("space:\n  mode: choices(['ok', 'oom'])\n")
    command = [sys.executable, "script.py", "--mode~choices(['ok'])"]
    assert main(["hunt", "-n", "e", "--config", "exp.yaml", "--storage", "orchard.pkl", *command]) == 2
    error = capsys.readouterr().err
    assert "dimension 'mode'" in error and "config file exp.yaml" in error and "define it in one place" in error
    assert not (workdir / "orchard.pkl").exists()
    (workdir / "exp.yaml").write_text("space:\n  mode: choices(['ok'])\n")  # the same prior: one dimension
    assert main(["hunt", "-n", "e", "--config", "exp.yaml", "--storage", "orchard.pkl", "--max-trials", "1",
                 *command]) == 0


def test_a_bad_dimension_of_the_config_file_is_refused_naming_the_file(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "exp.yaml").write_text("space:\n  lr: loguniform(1e-5, 1\n")
    assert main(["hunt", "-n", "e", "--config", "exp.yaml", "--storage", "orchard.pkl", sys.executable,
                 "script.py", "--mode~choices(['ok'])"]) == 2
    error = capsys.readouterr().err
    assert "dimension 'lr'" in error and "config file exp.yaml" in error


def test_a_hunt_option_after_the_command_is_said_to_go_to_the_script(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """orchard hunt -n e python train.py --lr~… --max-trials 50: the script got --max-trials, broke on it,
    and the experiment was created without a budget, all without a word before the first trial."""
    with caplog.at_level(logging.WARNING):
        hunt(sys.executable, "script.py", "--mode~choices(['ok'])", "--max-trials=50", "--n-workers", "2")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "'--max-trials=50' comes after the command" in warned[0], warned
    assert "'--n-workers' comes after the command" in warned[1]


@pytest.mark.parametrize("options", [["--gpu", "0"], ["--n=3"], ["--max", "10"], ["--s", "1"], ["--exec=a"]])
def test_a_script_option_that_begins_like_several_hunt_options_reaches_the_script(
        workdir: Path, capsys: pytest.CaptureFixture[str], options: list[str]) -> None:
    """orchard hunt -n e python train.py --lr~… --gpu 0: 'ambiguous option: --gpu could match --gpus,
    --gpus-per-worker' (exit 2), and no trial ran: the command's options were matched against hunt's."""
    (workdir / "argv.py").write_text("import json, sys, orchard\n"
                                     "open('../../../argv.json', 'w').write(json.dumps(sys.argv[1:]))\n"
                                     "orchard.report_objective(0.5)\n")
    assert hunt(sys.executable, "argv.py", "--x~uniform(0, 1)", *options) == 0, capsys.readouterr().err
    assert json.loads((workdir / "argv.json").read_text())[1:] == options
    assert main(["hunt", "-n", "f", "--max-trial", "1", sys.executable, "argv.py", "--x~uniform(0, 1)"]) == 2
    assert "did you mean --max-trials?" in capsys.readouterr().err  # before the command: a typo


@pytest.mark.parametrize(("tokens", "expected"), [
    # "orchard hunt ... --lr~uniform(0, 1)".split() from a script: '('  was never closed, and nothing more
    (["--lr~uniform(0,", "1)"], "the prior was cut at a space: quote it whole so that it stays one word, "
                                "--lr~'uniform(0, 1)' (from Python, one list item)"),
    (["lr~choices(['a',", "'b'])"], "lr~'choices(['a', 'b'])'"),
    # subprocess.run([..., "--lr~'uniform(0, 1)'"]): 'expected one of uniform, … followed by (arguments)'
    (["--lr~'uniform(0, 1)'"], "its quotes reached hunt as part of it: they are for the shell only, "
                               "e.g. --lr~uniform(0, 1)"),
    (["--lr~unifrom(0, 1)"], "unknown prior 'unifrom' (did you mean uniform?); valid priors: uniform,"),
])
def test_a_prior_cut_at_a_space_quoted_twice_or_misspelled_says_so(
        workdir: Path, capsys: pytest.CaptureFixture[str], tokens: list[str], expected: str) -> None:
    assert hunt(sys.executable, "script.py", *tokens) == 2
    assert expected in capsys.readouterr().err
    assert not (workdir / "orchard.pkl").exists()


def test_a_prior_missing_its_parenthesis_is_not_said_to_be_cut(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt(sys.executable, "script.py", "--lr~uniform(0, 1", "--y=2") == 2
    err = capsys.readouterr().err
    assert "'(' was never closed" in err and "cut at a space" not in err


def test_two_config_files_are_refused_not_the_first_dropped(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hunt --config base.yaml --config gpu.yaml` ran with gpu.yaml alone: base.yaml's settings were lost."""
    (workdir / "base.yaml").write_text("max_trials: 1\n")
    (workdir / "gpu.yaml").write_text("gpus_per_worker: 1\n")
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--config", "base.yaml",
                 "--config", "gpu.yaml", sys.executable, "script.py", "--mode~choices(['ok'])"]) == 2
    assert "--config is given twice ('base.yaml', then 'gpu.yaml'); give it once" in capsys.readouterr().err
    assert not (workdir / "orchard.pkl").exists()


def test_a_name_given_after_the_command_is_said_to_go_to_the_script(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """orchard hunt python train.py -n e --lr~…: 'hunt needs an experiment name: -n NAME', which was
    given."""
    assert main(["hunt", "--storage", "orchard.pkl", sys.executable, "script.py", "-n", "e",
                 "--mode~choices(['ok'])"]) == 2
    err = capsys.readouterr().err
    assert "the '-n' after the command is passed to the script: put hunt's options before the command" in err
    assert not (workdir / "orchard.pkl").exists()


def test_a_hunt_joining_with_another_command_is_said_to_mix_results(
        workdir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """A hunt with other fixed arguments (--epochs 10 against 20) or another script joined the experiment
    without a word, and its results were ranked with the others'."""
    def run(*command: str, max_trials: int) -> int:
        return main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", str(max_trials), *command])

    first = [sys.executable, "script.py", "--mode~choices(['ok'])", "--epochs", "10"]
    with caplog.at_level(logging.WARNING):
        assert run(*first, max_trials=1) == 0
        assert run(sys.executable, "script.py", "--epochs", "10", max_trials=2) == 0  # the stored space: same
        assert run(*first, max_trials=3) == 0
    def warned_of_commands() -> list[str]:  # the space of one point is exhausted too: warned apart
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "exhausted" not in
                r.getMessage()]

    assert not warned_of_commands(), caplog.text
    with caplog.at_level(logging.WARNING):
        assert run(*first[:-1], "20", max_trials=4) == 0
    (warned,) = warned_of_commands()
    stored = shlex.join([sys.executable, os.path.abspath("script.py"), "--mode=<mode>", "--epochs", "10"])
    assert f"experiment 'e' was first hunted with `{stored}`" in warned, warned
    assert warned.endswith("--epochs 20`: both go into one history; if their results are not comparable, stop "
                           "this hunt and use another -n"), warned
    capsys.readouterr()
    assert main(["info", "-n", "e", "--storage", "orchard.pkl"]) == 0
    shown = capsys.readouterr().out
    assert f"  command:   {stored}\n" in shown and "hunt_command" not in shown, shown


def test_a_password_in_the_hunted_command_reaches_the_script_but_is_not_recorded(
        workdir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """The command of the first hunt was stored as typed: a script's database URI given in it put its password
    in the experiment (its file, `orchard info`) and in the --debug line of each trial's argv."""
    script = "import json, sys, orchard\njson.dump(sys.argv, open('argv.json', 'w'))\n"
    (workdir / "argv.py").write_text(script + "orchard.report_objective(0.5)\n")
    uri = "mongodb://alice:s3cr%40t@db-host/runs"
    command = [sys.executable, "argv.py", "--db", uri, "--x~uniform(0, 1)"]
    with caplog.at_level(logging.DEBUG):
        assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "1", *command]) == 0
        assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "2", *command]) == 0
    (folder, _) = sorted((workdir / "orchard-runs" / "e").iterdir())
    assert uri in json.loads((folder / "argv.json").read_text())  # the script gets it as given
    assert "s3cr" not in caplog.text and "s3cr" not in str(orchard.get_experiment("e", "orchard.pkl").config)
    assert b"s3cr" not in (workdir / "orchard.pkl").read_bytes()
    assert "first hunted with" not in caplog.text  # the same command: no warning
    capsys.readouterr()
    assert main(["info", "-n", "e", "--storage", "orchard.pkl"]) == 0
    shown = capsys.readouterr().out
    assert "--db 'mongodb://alice:***@db-host/runs'" in shown and "s3cr" not in shown, shown


def test_a_hunt_that_runs_out_of_points_before_max_trials_says_so(
        workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A space of 3 choices with --max-trials 10 ended with "3 completed" and exit 0, and no word of the 7.
    It is workon's warning (workon said nothing), once, whatever the number of workers."""
    command = [sys.executable, "script.py", "--mode~choices(['ok'])", "--k~choices([1, 2, 3])"]
    with caplog.at_level(logging.WARNING):
        assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "10", "--n-workers", "2",
                     "--executor", "thread", *command]) == 0
    out = capsys.readouterr().out
    assert "experiment 'e': 3 completed, 0 broken" in out and "not run" not in out, out
    said = [r.getMessage() for r in caplog.records if "exhausted" in r.getMessage()]
    assert said == [("experiment 'e': the space is exhausted after 3 distinct points; 7 of the 10 trials of "
                     "the budget not run (a space of choices, integers or a grid holds fewer points than "
                     "max_trials)")]
    caplog.clear()
    assert main(["hunt", "-n", "f", "--storage", "orchard.pkl", "--max-trials", "3", *command]) == 0
    assert "not run" not in caplog.text  # the budget was met


@pytest.mark.parametrize("where", ["command", "config file", "stored space"])
def test_choices_a_script_receives_as_one_text_are_refused(
        workdir: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``choices(['ok', 1, '1'])``: two trials ran one command, ``--mode=1``, recorded as two points."""
    prior = "choices(['ok', 1, '1'])"
    command = [sys.executable, "script.py"]
    if where == "command":
        command.append(f"--mode~{prior}")
    elif where == "config file":
        (workdir / "exp.yaml").write_text(f'space:\n  mode: "{prior}"\n')
        command = ["--config", "exp.yaml", *command]
    else:
        orchard.build_experiment("e", space={"mode": prior}, storage="orchard.pkl")
    assert hunt(*command) == 2
    error = capsys.readouterr().err
    assert "dimension 'mode': choices 1 and '1' both reach the script as the text '1'" in error
    if where == "stored space":
        assert not orchard.get_experiment("e", storage="orchard.pkl").fetch_trials()
    else:
        assert not (workdir / "orchard.pkl").exists()


@pytest.mark.parametrize("token", ["x²~uniform(0, 1)", "2x~uniform(0, 1)", "a+b~uniform(0,1)",
                                   "--x²~uniform(0, 1)", "--x²=~uniform(0, 1)", "--=~uniform(0, 1)"])
def test_a_bare_prior_token_with_an_invalid_name_is_refused(
        workdir: Path, token: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``2x~uniform(0, 1)`` reached the script as that text, its prior silently not searched."""
    assert hunt(sys.executable, "script.py", "--mode~choices(['ok'])", token) == 2
    assert f"token {token!r} defines a dimension without a valid name" in capsys.readouterr().err
    assert not (workdir / "orchard.pkl").exists()


@pytest.mark.parametrize(("command", "said"), [
    (["--x=~uniform(0,1)"], "token '--x=~uniform(0,1)' is no dimension (an = before its ~); write "
                            "--x~'uniform(0,1)'"),
    (["--mode~choices(['ok'])", "--x=~uniform(0,1)"], "token '--x=~uniform(0,1)' is no dimension"),
    (["--x", "uniform(0, 1)"], "defines no dimension (token 'uniform(0, 1)' is a prior with no name: "
                               "write it as one token --name~'uniform(0, 1)')"),
    (["--x", "choices(['a', 'b'])"], "write it as one token --name~\"choices(['a', 'b'])\")"),  # shell-quoted
    (["--x=~choices(['a', 'b'])"], "write --x~\"choices(['a', 'b'])\": a dimension is"),
    (["--y~uniform(0,1)", "x=~uniform(0,1)"], "token 'x=~uniform(0,1)' is no dimension (an = before its ~); "
                                              "write --x~'uniform(0,1)' (the script gets --x=VALUE) or "
                                              "x~'uniform(0,1)' (it gets x=VALUE)"),
    (["x=~loguniform(1e-5, 1)"], "token 'x=~loguniform(1e-5, 1)' is no dimension"),
])
def test_a_prior_that_defines_no_dimension_is_named(
        workdir: Path, command: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--x=~uniform(0,1)`` said only "the command defines no dimension" (and beside a dimension it reached
    the script as that text, its prior silently not searched); ``--x uniform(0, 1)`` named no token either."""
    assert hunt(sys.executable, "script.py", *command) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (workdir / "orchard.pkl").exists()


def test_script_arguments_with_an_equals_and_a_tilde_still_reach_the_script(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``x=~uniform(0,1)`` is refused, the script's own ``a=b``, ``home=~/data``, ``f=~g(1)`` and
    ``--expr=~f(x)`` (no prior; the latter was refused) and ``dir/x=~uniform(0,1)`` (a path) are not: they
    reach the script as they were written."""
    texts = ["mode=ok", "a=b", "home=~/data", "f=~g(1)", "dir/x=~uniform(0,1)", "--expr=~f(x)",
             "--msg=~ approx (1)", "--lr=~1e-3", "--opt=~foo"]
    assert hunt(sys.executable, "script.py", *texts, "--y~uniform(0,1)") == 0, capsys.readouterr().err
    command = orchard.get_experiment("e", storage="orchard.pkl").storage.require_experiment("e").config
    assert shlex.split(command["hunt_command"])[2:] == [*texts, "--y=<y>"], command["hunt_command"]
    assert only_trial().status is TrialStatus.COMPLETED


def test_a_dimension_named_in_another_script_than_latin_is_searched_as_the_python_api_does(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--α~'uniform(0, 1)'`` was refused as a name of letters, digits and _, while
    ``build_experiment(space={"α": ...})`` takes it; the storage, status and db dump show it."""
    (workdir / "greek.py").write_text("import sys, orchard\n"
                                      "assert sys.argv[2].startswith('--α='), sys.argv\n"
                                      "orchard.report_objective(float(sys.argv[2].split('=')[1]))\n")
    assert hunt(sys.executable, "greek.py", "--mode~choices(['ok'])", "--α~uniform(0, 1)") == 0
    assert set(only_trial().params) == {"mode", "α"} and only_trial().status is TrialStatus.COMPLETED
    capsys.readouterr()
    assert main(["status", "-n", "e", "--storage", "orchard.pkl", "--json"]) == 0
    assert "α" in json.loads(capsys.readouterr().out)["best_params"]
    assert main(["db", "dump", "-n", "e", "--storage", "orchard.pkl", "-o", "e.json"]) == 0
    assert "α" in json.loads((workdir / "e.json").read_text())["experiments"][0]["config"]["space"]


@pytest.mark.parametrize("token", ["data~backup", "/data/a~uniform(0, 1)", "x=a~uniform(0,1)", "~/file"])
def test_tokens_that_only_hold_a_tilde_reach_the_script_as_they_are(workdir: Path, token: str) -> None:
    assert hunt(sys.executable, "script.py", "--mode~choices(['ok'])", token) == 0
    assert only_trial().status is TrialStatus.COMPLETED


def test_a_prior_among_hunts_own_options_is_said_to_go_after_the_program(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``orchard hunt -n e --lr~'uniform(0,1)' python train.py`` said only "unrecognized arguments".

    (A prior holding a space is taken by argparse for the command's start, which hunt already names.)
    """
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--lr~uniform(0,1)", sys.executable,
                 "script.py"]) == 2
    error = capsys.readouterr().err
    assert "a prior such as '--lr~uniform(0,1)' goes after the program it is passed to" in error
    assert not (workdir / "orchard.pkl").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in Linux's /proc")
def test_a_script_that_cannot_be_started_for_want_of_files_is_given_back_not_broken(tmp_path: Path) -> None:
    """``orchard hunt --n-workers 8 --executor thread`` under ``ulimit -n 24``: a trial was broken with
    "cannot start '...': Too many open files" (reason ``start``); 3 such would stop the experiment."""
    from orchard.command import CommandTemplate
    from orchard.errors import ExecutorError
    from orchard.runner import ScriptRunner
    from orchard.trial import Trial
    from tests import workloads

    runner = ScriptRunner(CommandTemplate.parse(["true", "--x~uniform(0, 1)"]), "e", str(tmp_path / "runs"))
    with workloads.every_file_taken(), pytest.raises(ExecutorError, match="gave the trial back.*ulimit -n"):
        runner(Trial(id="t1", experiment="e", params={"x": 0.5}))
