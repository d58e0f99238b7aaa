"""The command line: ``orchard hunt`` around real scripts, and the inspection and db tools.

Scripts are tiny Python files written to ``tmp_path``; ``hunt`` runs them with
``sys.executable``. Multi-process behaviour (racing hunts, Ctrl-C) uses real
``orchard`` processes; everything else calls :func:`orchard.cli.main` in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard.cli import main
from orchard.runner import CommandTemplate
from orchard.trial import TrialStatus

TRAIN = r'''
import argparse, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float, required=True)
parser.add_argument("--y", type=float, default=0.0)
parser.add_argument("--mode", default="ok")
parser.add_argument("--tag", default="")
parser.add_argument("--marker", default="")
args = parser.parse_args()
path = os.environ["ORCHARD_RESULTS_PATH"]
def write(text):
    with open(path, "w") as handle:
        handle.write(text)
if args.marker and not os.path.exists(args.marker):
    import subprocess  # the first trial to get here hangs, with a child, until stopped
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(args.marker + ".tmp", "w") as handle:
        handle.write(f"{os.getpid()} {child.pid}")
    os.replace(args.marker + ".tmp", args.marker)
    time.sleep(60)
if args.mode == "fail":
    print("step 1 fine", file=sys.stderr)
    print("RuntimeError: the loss exploded", file=sys.stderr)
    sys.exit(3)
if args.mode == "missing":
    sys.exit(0)
if args.mode == "empty":
    write("")
elif args.mode == "not-json":
    write("objective = 1")
elif args.mode == "twice":
    write('{"objective": 0.5, "objective": 0.1}')
elif args.mode == "nan":
    write('{"objective": NaN}')
elif args.mode == "not-a-number":
    write('{"objective": "low"}')
elif args.mode == "unstorable":
    write('{"objective": 0.5, "deep": ' + "[" * 40 + "]" * 40 + "}")
elif args.mode == "infinite":
    write('{"objective": ' + "9" * 400 + "}")
elif args.mode == "pipe":
    os.mkfifo(path)  # opened for reading, it blocked the worker until a writer came: never
elif args.mode == "device":
    os.symlink("/dev/zero", path)  # read whole: every byte of memory of the machine
elif args.mode == "huge":
    write('{"objective": 0.5, "curve": "' + "x" * (65 << 20) + '"}')
else:
    import orchard
    orchard.report_objective((args.x - 0.3) ** 2 + (args.y - 0.2) ** 2, tag=args.tag,
                             cwd=os.getcwd(), trial=os.environ["ORCHARD_TRIAL_ID"],
                             experiment=os.environ["ORCHARD_EXPERIMENT_NAME"])
'''

PRIORS = ["--x~uniform(0, 1)", "--y~uniform(0, 1)"]


@pytest.fixture
def workdir(no_ambient: Path) -> Path:
    """``tmp_path`` as the current directory, with ``train.py`` in it and no ambient config."""
    (no_ambient / "train.py").write_text(TRAIN)
    return no_ambient


def train(*extra: str) -> list[str]:
    return [sys.executable, "train.py", *PRIORS, *extra]


def hunt(name: str, *options: str, command: list[str] | None = None) -> int:
    return main(["hunt", "-n", name, "--storage", "orchard.pkl", *options, *(command or train())])


def cli(*args: str, cwd: Path, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    env["HOME"] = str(cwd)
    return subprocess.run([sys.executable, "-m", "orchard.cli", *args], cwd=cwd, env=env, text=True,
                          check=False, capture_output=True, timeout=timeout,
                          **kwargs)  # type: ignore[call-overload]


def trials(name: str, storage: str = "orchard.pkl") -> list[orchard.Trial]:
    return orchard.get_experiment(name, storage=storage).fetch_trials()


def interrupted_line(stderr: str) -> str:
    """The one line an interrupted hunt prints."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchard: "), stderr
    return lines[0]


def assert_dead(marker: Path) -> None:
    """The script and its child, whose pids the marker holds, are gone (zombies count as gone)."""
    deadline = time.monotonic() + 10
    for pid in map(int, marker.read_text().split()):
        while True:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                break
            if state == "Z":
                break
            assert time.monotonic() < deadline, f"process {pid} of the trial is still running"
            time.sleep(0.05)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    assert lines[0].startswith("orchard: error: "), lines[0]
    return lines[0]


# -- the command template ------------------------------------------------------------------


def test_command_template_finds_priors_in_every_form() -> None:
    template = CommandTemplate.parse([
        "python", "t.py", "--learning-rate~loguniform(1e-5, 1)", "-k~randint(1, 4)",
        "opt~choices(['adam', 'sgd'])", "--data=~/data", "~/other", "--id={trial.id}",
    ])
    assert template.space == {"learning_rate": "loguniform(1e-5, 1)", "k": "randint(1, 4)",
                              "opt": "choices(['adam', 'sgd'])"}
    argv = template.render({"learning_rate": 0.001, "k": 2, "opt": "sgd"}, {"trial.id": "abc"})
    assert argv == ["python", "t.py", "--learning-rate=0.001", "-k", "2", "opt=sgd", "--data=~/data",
                    "~/other", "--id=abc"]


def test_command_template_rejects_bad_and_duplicate_priors() -> None:
    with pytest.raises(orchard.SpaceError, match=r"'x'.*uniform\(1, 0\)"):
        CommandTemplate.parse(["python", "t.py", "--x~uniform(1, 0)"])
    with pytest.raises(orchard.SpaceError, match="defined twice"):
        CommandTemplate.parse(["python", "t.py", "--x~uniform(0, 1)", "-x~uniform(0, 2)"])


# -- hunt ---------------------------------------------------------------------------------------


def test_hunt_runs_the_script_per_trial_in_its_folder(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hunt("e", "--max-trials", "4", command=train("--tag={trial.id}/{exp.name}")) == 0
    assert "4 completed" in capsys.readouterr().out
    done = trials("e")
    assert [t.status for t in done] == [TrialStatus.COMPLETED] * 4
    for trial in done:
        folder = workdir / "orchard-runs" / "e" / trial.id
        assert trial.results["tag"] == f"{trial.id}/e"
        assert trial.results["trial"] == trial.id and trial.results["experiment"] == "e"
        assert Path(trial.results["cwd"]) == folder
        assert (folder / "stdout.log").exists() and (folder / "stderr.log").exists()
        x, y = trial.params["x"], trial.params["y"]
        assert trial.objective == pytest.approx((x - 0.3) ** 2 + (y - 0.2) ** 2)


def test_hunts_started_from_other_directories_share_the_trial_folders(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the default ./orchard-runs/NAME was each hunt's own: checkpoints split between folders."""
    storage, script = str(workdir / "orchard.pkl"), str(workdir / "train.py")
    command = [sys.executable, script, *PRIORS]
    for where, budget in (("a", "2"), ("b", "4")):
        (workdir / where).mkdir()
        monkeypatch.chdir(workdir / where)  # a second terminal, a SLURM job started elsewhere
        assert main(["hunt", "-n", "e", "--storage", storage, "--max-trials", budget, *command]) == 0
    done = trials("e", storage)
    assert orchard.get_experiment("e", storage=storage).settings.working_dir == str(workdir / "a" / "orchard-runs" / "e")
    assert {Path(t.results["cwd"]).parent for t in done} == {workdir / "a" / "orchard-runs" / "e"}
    assert len(done) == 4 and not (workdir / "b" / "orchard-runs").exists()


def test_a_trial_folder_this_machine_cannot_create_stops_hunt_before_any_trial_breaks(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, every trial broke on it ("cannot prepare trial folder") until the experiment was broken."""
    (workdir / "a-file").write_text("")
    assert hunt("e", "--max-trials", "4", "--working-dir", str(workdir / "a-file" / "runs")) == 2
    line = error_line(capsys.readouterr().err)
    assert "cannot create the folder of experiment 'e'" in line and "--working-dir" in line
    assert main(["list", "--storage", "orchard.pkl"]) == 0 and "no experiments" in capsys.readouterr().out
    orchard.build_experiment("e", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, storage="orchard.pkl",
                             working_dir=str(workdir / "a-file" / "x"))
    assert hunt("e", "--max-trials", "4") == 2  # stored by another machine or program: refused the same way
    assert "a-file/x" in error_line(capsys.readouterr().err) and trials("e") == []


def test_hunt_on_a_finished_experiment_exits_at_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hunt("e", "--max-trials", "2") == 0
    capsys.readouterr()
    assert hunt("e") == 0
    assert "already completed its 2 trials" in capsys.readouterr().out
    assert len(trials("e")) == 2


def test_hunt_joining_with_another_space_is_one_clear_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hunt("e", "--max-trials", "1") == 0
    capsys.readouterr()
    code = hunt("e", command=[sys.executable, "train.py", "--x~uniform(0, 2)", "--y~uniform(0, 1)"])
    line = error_line(capsys.readouterr().err)
    assert code == 1 and "different configuration" in line and "uniform(0.0, 2.0)" in line


@pytest.mark.parametrize("storage", ["memory://", "mongomock://cli-hunt"])
def test_hunt_into_a_storage_in_its_own_memory_is_refused_before_any_trial(
        workdir: Path, capsys: pytest.CaptureFixture[str], storage: str) -> None:
    """`orchard hunt --storage memory:// ...` (or mongomock://, as in-process) ran its trials, printed the best,
    and lost every one at exit."""
    assert main(["hunt", "-n", "e", "--max-trials", "2", "--storage", storage, *train()]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"orchard: error: {storage} lives in the memory of this command only, so every trial hunt runs would be "
        "lost when it exits; give a pickle file (e.g. --storage runs/orchard.pkl) or a MongoDB URI; nothing was "
        "run")
    assert not (workdir / "orchard-runs").exists()  # no trial folder: no trial ran


def test_hunt_reads_settings_from_a_config_file(workdir: Path) -> None:
    (workdir / "exp.yaml").write_text("name: fromfile\nmax_trials: 3\nalgorithm: {random: {}}\nseed: 7\n")
    assert main(["hunt", "--config", "exp.yaml", "--storage", "orchard.pkl", *train()]) == 0
    experiment = orchard.get_experiment("fromfile", storage="orchard.pkl")
    assert experiment.max_trials == 3 and experiment.config["seed"] == 7
    assert len(experiment.fetch_trials([TrialStatus.COMPLETED])) == 3


def test_hunt_takes_the_whole_space_from_a_config_file(workdir: Path) -> None:
    # docs/cli.md: "orchard hunt --config lr-search.yaml python train.py", the command holding no
    # dimension; it was refused with "the search space is empty".
    (workdir / "exp.yaml").write_text("name: spacefile\nmax_trials: 2\nspace:\n  x: uniform(0, 1)\n")
    assert main(["hunt", "--config", "exp.yaml", "--storage", "orchard.pkl", sys.executable, "train.py"]) == 0
    experiment = orchard.get_experiment("spacefile", storage="orchard.pkl")
    assert set(experiment.space) == {"x"}
    assert len(experiment.fetch_trials([TrialStatus.COMPLETED])) == 2


def test_failing_script_breaks_trials_and_stops_at_max_broken(workdir: Path) -> None:
    proc = cli("hunt", "-n", "e", "--max-trials", "5", "--max-broken", "2", *train("--mode=fail"),
               cwd=workdir)
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert "stopped: 2 trials are broken" in line and "the loss exploded" in line
    broken = trials("e")
    assert [t.status for t in broken] == [TrialStatus.BROKEN] * 2
    for trial in broken:
        assert trial.error is not None
        assert trial.error["reason"] == "exit-code" and trial.error["returncode"] == 3
        assert trial.error["stderr"].splitlines()[-2:] == ["step 1 fine", "RuntimeError: the loss exploded"]


def test_trial_timeout_kills_the_process_group(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = workdir / "started"
    start = time.monotonic()
    code = hunt("e", "--max-trials", "1", "--max-broken", "1", "--trial-timeout", "2",
                command=train(f"--marker={marker}"))
    assert code == 1 and time.monotonic() - start < 10
    (trial,) = trials("e")
    assert trial.status is TrialStatus.BROKEN and trial.error is not None
    assert trial.error["reason"] == "timeout"
    assert_dead(marker)


@pytest.mark.parametrize("mode", ["missing", "empty", "not-json", "nan", "not-a-number", "unstorable", "infinite"])
def test_bad_results_break_the_trial_with_the_reason(workdir: Path, mode: str) -> None:
    assert hunt("e", "--max-trials", "1", "--max-broken", "1", command=train(f"--mode={mode}")) == 1
    (trial,) = trials("e")
    assert trial.status is TrialStatus.BROKEN and trial.error is not None
    assert trial.error["reason"] == mode, trial.error


@pytest.mark.parametrize(("mode", "reason", "said"), [("pipe", "unreadable", "is not a regular file"),
                                                     ("device", "unreadable", "is not a regular file"),
                                                     ("huge", "unstorable", "holds more than 67.1 MB")])
def test_a_results_file_that_is_no_file_or_too_large_breaks_the_trial_unread(
        workdir: Path, mode: str, reason: str, said: str) -> None:
    assert hunt("e", "--max-trials", "1", "--max-broken", "1", command=train(f"--mode={mode}")) == 1
    (trial,) = trials("e")
    assert trial.status is TrialStatus.BROKEN and trial.error is not None
    assert trial.error["reason"] == reason and said in trial.error["message"], trial.error


def test_a_results_file_naming_the_objective_twice_breaks_the_trial_instead_of_keeping_one(workdir: Path) -> None:
    """`{"objective": 0.5, "objective": 0.1}` was stored as 0.1 without a word (json keeps the last)."""
    assert hunt("e", "--max-trials", "1", "--max-broken", "1", command=train("--mode=twice")) == 1
    (trial,) = trials("e")
    assert trial.status is TrialStatus.BROKEN and trial.error is not None
    assert "names 'objective' twice; keep one" in trial.error["message"], trial.error


def test_a_raised_budget_on_a_stopped_experiment_says_how_to_search_on_once(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`hunt --max-trials 10` on an experiment a stopping rule stopped said 'to search on, …' twice: in the
    warning that the budget was not stored, then in its own line."""
    assert hunt("e", "--max-trials", "5", "--stop", "target=2") == 0  # the first trial reaches the target
    capsys.readouterr()
    assert hunt("e", "--max-trials", "10") == 0
    said = capsys.readouterr().out + caplog.text
    assert said.count("to search on, start an experiment with a new name") == 1, said
    assert "max_trials=10 not stored" in caplog.text and "stopped by rule target" in said
    assert hunt("e") == 0  # no budget given: the line itself says it
    assert capsys.readouterr().out.rstrip().endswith(
        "nothing to do: to search on, start an experiment with a new name (it can warm-start from this one)")


@pytest.mark.parametrize(("options", "expected"), [
    (["--executor", "thread", "--n-workers", "2"], "executor 'thread' takes no executor_config (given: bog"),
    (["--executor", "single"], "executor 'single' takes no executor_config (given: bogus); drop it"),
    ([], "executor 'joblib': get_reusable_executor refused executor_config (TypeError:"),  # even one worker
])
def test_executor_options_are_given_to_the_executor_or_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    """`--executor-config` was dropped without a word with --executor thread or single, and with one worker
    (run in the hunt's own process, not in the pool it was meant for)."""
    assert hunt("e", "--max-trials", "1", *options, "--executor-config", "{bogus: 1}") == 2
    line = error_line(capsys.readouterr().err)
    assert expected in line
    assert line.endswith("(executor_config from --executor-config)") == bool(options)  # a config file's: named
    assert (workdir / "orchard.pkl").exists() == (not options)  # thread, single: refused before it is stored
    if not options:
        assert orchard.get_experiment("e", storage="orchard.pkl").fetch_trials() == []


@pytest.mark.slow
def test_hunt_with_dask_prints_its_line_not_dasks_info_logs(workdir: Path) -> None:
    """`hunt --executor dask --n-workers 2` printed some 30 lines 'orchard: INFO: State start', 'Start Nanny
    at …': Dask sets its loggers to INFO, and the one handler of the command line printed them."""
    done = cli("hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "2", "--executor", "dask",
               "--n-workers", "2", *train(), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr, done.stderr
    assert done.stdout.startswith("experiment 'e': 2 completed"), done.stdout


def test_executor_single_with_several_workers_is_refused_before_the_experiment_is_stored(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--executor single --n-workers 2` was refused by the executor, after the experiment was stored with
    the settings of that command, in Python's words (use executor='thread')."""
    assert hunt("e", "--max-trials", "4", "--executor", "single", "--n-workers", "2") == 2
    line = error_line(capsys.readouterr().err)
    assert "executor 'single' (from --executor) runs one worker in the hunt process, not 2" in line, line
    assert "--executor thread" in line and not (workdir / "orchard.pkl").exists()
    assert hunt("e", "--max-trials", "1", "--executor", "single", "--n-workers", "2") == 0  # one is started


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file limits counted on Linux")
def test_workers_out_of_open_files_do_not_fail_a_hunt_the_others_finished(workdir: Path) -> None:
    """Under a low `ulimit -n`, a worker that could not start an evaluation stopped, the other completed the
    budget, and hunt exited 1 with only the out-of-files error. The lowest limit that completes the budget
    fits one evaluation, not two at once."""
    import resource

    COMPLETED = TrialStatus.COMPLETED  # noqa: N806
    (workdir / "slow.py").write_text("import sys, time, orchard\ntime.sleep(0.2)\n"
                                     "orchard.report_objective(float(sys.argv[1].split('=')[1]))\n")

    def hunt_under(limit: int) -> subprocess.CompletedProcess[str] | None:
        """The hunt run with at most ``limit`` open files, if it completed the budget."""
        shutil.rmtree(workdir / "orchard-runs", ignore_errors=True)
        for stale in workdir.glob("orchard.pkl*"):
            stale.unlink()
        proc = cli("hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "3", "--n-workers", "2",
                   "--executor", "thread", sys.executable, "slow.py", "--x~uniform(0, 1)", cwd=workdir,
                   preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
        done = (workdir / "orchard.pkl").exists() and [t.status for t in trials("e")] == [COMPLETED] * 3
        return proc if done else None

    lowest = next(limit for limit in range(8, 64) if (first := hunt_under(limit)) is not None)
    runs = [first]
    while "Too many open files" not in runs[-1].stderr and len(runs) < 4:  # 2 evaluations at once: seldom not
        runs.append(hunt_under(lowest))
        assert runs[-1] is not None, f"the budget was completed once, not again, under {lowest} open files"
    for proc in runs:
        assert proc.returncode == 0, proc.stderr  # the experiment is finished: not a failed hunt
    assert ("orchard: WARNING: experiment 'e' is finished, but not every worker started here ran to its end: "
            "a worker could not start a child process to evaluate its trial (OSError: [Errno 24] Too many"
            in runs[-1].stderr), [proc.stderr for proc in runs]
    assert "experiment 'e': 3 completed, 0 broken" in runs[-1].stdout


@pytest.mark.slow
def test_three_hunts_started_together_complete_exactly_the_budget(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "race", "--max-trials", "24", *train()]
    procs = [subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    done = trials("race")
    assert len(done) == 24 and all(t.status is TrialStatus.COMPLETED for t in done)
    assert len({t.id for t in done}) == 24
    assert len({t.worker for t in done}) >= 2, "the three hunts should share the work"


@pytest.mark.slow
def test_a_script_dies_with_its_sigkilled_hunt(workdir: Path) -> None:
    """A SIGKILLed hunt left its script running: after the lease, a second attempt of the trial ran beside it."""
    (workdir / "long.py").write_text(
        "import os, sys, time\n"
        "open('script.pid.tmp', 'w').write(str(os.getpid())); os.replace('script.pid.tmp', 'script.pid')\n"
        "time.sleep(60)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    proc = subprocess.Popen([sys.executable, "-m", "orchard.cli", "hunt", "-n", "e", "--max-trials", "1",
                             sys.executable, str(workdir / "long.py"), "--x~uniform(0, 1)"],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(workdir.rglob("script.pid")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=20)
    (pid_file,) = workdir.rglob("script.pid")
    assert_dead(pid_file)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])  # Ctrl-C: dies of SIGINT once it cleaned up, $? = 130
def test_ctrl_c_releases_the_trial_and_the_next_hunt_takes_it(workdir: Path, sig: int, code: int) -> None:
    marker = workdir / "started"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "e", "--max-trials", "2",
               *train(f"--marker={marker}")]
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert "released" in interrupted_line(err)
    assert_dead(marker)
    (trial,) = trials("e")
    assert trial.status is TrialStatus.INTERRUPTED and trial.worker is None
    follow = cli("hunt", "-n", "e", *train(f"--marker={marker}"), cwd=workdir)
    assert follow.returncode == 0, follow.stderr
    done = {t.id: t for t in trials("e")}
    # a graceful release (Ctrl-C, SIGTERM) gives its attempt back: only lost reservations count
    assert done[trial.id].status is TrialStatus.COMPLETED and done[trial.id].attempts == 1
    assert len(done) == 2


LOOP = """for i in 1 2; do "$ORCHARD" hunt -n e --max-trials 4 "$PYTHON" train.py "--x~uniform(0, 1)" \
    "--y~uniform(0, 1)" --marker="$PWD/started-$i"; echo "next after $?"; done"""


@pytest.mark.slow
def test_ctrl_c_stops_a_shell_loop_running_hunt_again_and_again(workdir: Path) -> None:
    """``for i in 1 2; do orchard hunt ...; done`` went on to the next hunt after Ctrl-C: a shell that gets
    the Ctrl-C too stops only if its command died of it, and hunt exited 130 (it had handled it)."""
    script = Path(sys.executable).with_name("orchard")
    assert script.exists(), f"no orchard script beside {sys.executable}: install the package"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    env.update(ORCHARD=str(script), PYTHON=sys.executable)
    shell = subprocess.Popen(["bash", "-c", LOOP], cwd=workdir, env=env, text=True, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "started-1").exists():
            assert time.monotonic() < deadline and shell.poll() is None, shell.communicate()
            time.sleep(0.05)
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        out, err = shell.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
    assert "orchard: interrupted" in err, err
    assert shell.returncode == -signal.SIGINT and "next" not in out, (shell.returncode, out, err)
    assert not (workdir / "started-2").exists(), "the loop ran the next hunt"


SECOND = r'''
import os, sys, time
import orchard
marker = os.path.join(sys.argv[1], f"{os.getpid()}.pid")
with open(marker + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.replace(marker + ".tmp", marker)
time.sleep(1.0)
os.remove(marker)
orchard.report_objective(float(sys.argv[2].partition("=")[2]))
'''


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "said"), [(signal.SIGINT, -signal.SIGINT, "interrupted"),
                                                   (signal.SIGTERM, 143, "stopped by SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_a_multi_worker_hunt_stops_its_workers_within_2_s(
        workdir: Path, sig: int, code: int, said: str) -> None:
    """``kill -INT`` or ``kill -TERM`` on the hunt's pid alone (a scheduler, a supervisor) stops every
    local worker at once: their scripts are stopped and their trials released, not left reserved.

    Timed to the line saying what was released (0.3-0.5 s under load 8; it came after 10.4-12 s
    before the fix), not to the exit: three interpreters ending (the hunt, its two loky workers)
    take 0.3 s of CPU, which a loaded machine stretched to 1-4 s of waiting for a core (2.3-2.5 s failed)."""
    (workdir / "second.py").write_text(SECOND)
    running = workdir / "running"
    running.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    command = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "e", "--max-trials", "40", "--n-workers", "2",
               sys.executable, "second.py", str(running), "--x~uniform(0, 1)"]
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while len(list(running.glob("*.pid"))) < 2:  # both workers are in the middle of a 1 s trial
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    scripts = [int(marker.read_text()) for marker in running.glob("*.pid")]
    lines: list[str] = []
    told = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "running trial(s) released" in line:
                told.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    signalled = time.monotonic()
    proc.send_signal(sig)
    told.wait(60)
    took = time.monotonic() - signalled
    proc.wait(60)
    reader.join(10)
    err = "".join(lines)
    assert proc.returncode == code, err
    assert told.is_set() and took < 2.0, \
        f"the hunt took {took:.1f} s to stop its workers after {signal.Signals(sig).name}"
    stopped = [t for t in trials("e") if t.status is not TrialStatus.COMPLETED]
    assert stopped and all(t.status is TrialStatus.INTERRUPTED for t in stopped), stopped  # none left reserved
    assert all(t.attempts == 0 for t in stopped), "a release does not count against max_attempts"
    assert err.strip().splitlines()[-1] == (
        f"orchard: {said}; {len(stopped)} of {len(stopped)} running trial(s) released (status interrupted)")
    for pid in scripts:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the scripts were stopped (and reaped) with their workers


@pytest.mark.slow
def test_n_workers_runs_local_workers_through_the_executor(workdir: Path) -> None:
    proc = cli("hunt", "-n", "e", "--max-trials", "8", "--n-workers", "2", *train(), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    done = trials("e")
    assert len(done) == 8 and all(t.status is TrialStatus.COMPLETED for t in done)
    assert len({t.worker.split(":")[1] for t in done if t.worker}) == 2


# -- status, list, info, insert -----------------------------------------------------------------


def test_status_list_and_info(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "3") == 0
    experiment = orchard.get_experiment("e", storage="orchard.pkl")
    experiment.storage.register_trial(experiment.id, {"x": 0.5, "y": 0.5}, worker="node7:42:abcd")
    capsys.readouterr()
    assert main(["status", "--storage", "orchard.pkl"]) == 0
    out = capsys.readouterr().out
    assert "experiment 'e'" in out and "3 completed" in out and "1 reserved" in out
    assert "node7:42:abcd" in out and "heartbeat" in out
    assert main(["status", "-n", "e", "--json", "--storage", "orchard.pkl"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["completed"] == 3 and status["best_objective"] == min(
        t.objective for t in trials("e") if t.objective is not None)
    assert status["workers"][0]["worker"] == "node7:42:abcd" and status["workers"][0]["stale"] is False
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    assert "3/3 completed" in capsys.readouterr().out
    assert main(["info", "-n", "e", "--storage", "orchard.pkl"]) == 0
    out = capsys.readouterr().out
    assert "x: uniform(0.0, 1.0)" in out and "max_trials=3" in out and "best:" in out
    assert main(["info", "-n", "e", "--json", "--storage", "orchard.pkl"]) == 0
    assert json.loads(capsys.readouterr().out)["space"]["y"] == "uniform(0.0, 1.0)"


def test_list_keeps_its_rows_narrow_beside_a_long_name_and_json_keeps_it_whole(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One experiment named with 300 characters (another program, an older release; 128 today) padded every
    row of `orchard list` to 300 characters and more."""
    storage = orchard.get_storage("orchard.pkl")
    config = orchard.build_experiment("short", space={"x": "uniform(0, 1)"}, storage="orchard.pkl",
                                      max_trials=5).storage.require_experiment("short").config
    long_name = "x" * 300
    storage.create_experiment(long_name, config)
    storage.create_experiment("tiny", config)
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert long_name in lines  # whole, on its own line: it can be copied for -n
    assert max(len(line) for line in lines if line != long_name) < 120, lines
    rows = [line for line in lines if "completed" in line]
    assert len(rows) == 3 and len({line.index("0/5 completed") for line in rows}) == 1  # one column
    assert main(["list", "--json", "--storage", "orchard.pkl"]) == 0
    assert long_name in [row["name"] for row in json.loads(capsys.readouterr().out)]


def test_a_name_starting_with_a_dash_is_given_joined_by_equals_and_apart_says_so(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard status -n -exp` said only "argument -n/--name: expected one argument"."""
    config = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl",
                                      max_trials=5).storage.require_experiment("e").config
    orchard.get_storage("orchard.pkl").create_experiment("-exp", config)  # by another program, an old release
    for given in (["--name=-exp"], ["-n=-exp"]):
        assert main(["status", *given, "--json", "--storage", "orchard.pkl"]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == "-exp"
        assert main(["info", *given, "--storage", "orchard.pkl"]) == 0
        assert "experiment '-exp'" in capsys.readouterr().out
    for given in (["-n", "-exp"], ["--name", "-exp"]):
        assert main(["status", *given, "--json", "--storage", "orchard.pkl"]) == 2
        assert "a value that starts with '-' is joined to its option by '=': --name=-exp" in error_line(
            capsys.readouterr().err)
    assert main(["status", "-n", "--json", "--storage", "orchard.pkl"]) == 2  # a name forgotten: no hint
    assert "'='" not in error_line(capsys.readouterr().err)


def test_status_list_and_info_say_max_broken_stopped_the_experiment(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An experiment max_broken stopped looked like any other, with a few broken trials: nothing said no
    worker would start a trial of it."""
    def fail(x: float) -> float:
        raise ValueError("bad objective")

    space = {"x": "uniform(0, 1)"}
    orchard.build_experiment("b", space=space, storage="orchard.pkl", max_trials=9, max_broken=2)
    with pytest.raises(orchard.errors.ExperimentBrokenError):
        orchard.get_experiment("b", storage="orchard.pkl").workon(fail, max_trials=9, progress=False)
    orchard.build_experiment("ok", space=space, storage="orchard.pkl", max_trials=1, max_broken=2)
    capsys.readouterr()
    assert main(["status", "--storage", "orchard.pkl"]) == 0
    out = capsys.readouterr().out
    assert out.count("stopped: 2 broken trials (max_broken=2)") == 1 and "raised" in out, out
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    stopped = [line.endswith("stopped: 2 broken trials (max_broken=2)") for line in lines]
    assert stopped == [True, False], lines
    assert main(["status", "-n", "b", "--json", "--storage", "orchard.pkl"]) == 0
    assert json.loads(capsys.readouterr().out)["broken_stop"]["max_broken"] == 2
    assert main(["list", "--json", "--storage", "orchard.pkl"]) == 0
    assert [row["broken_stop"] is None for row in json.loads(capsys.readouterr().out)] == [False, True]
    assert main(["info", "-n", "b", "--storage", "orchard.pkl"]) == 0
    assert "stopped: 2 broken trials" in capsys.readouterr().out


def test_list_applies_the_default_max_broken_to_an_experiment_stored_without_one(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another program's experiment without max_broken: its workers (and status) apply the default, 3;
    list read the missing value and showed no stop."""
    from orchard.storages.pickled import PickledStorage

    storage = PickledStorage("orchard.pkl")
    exp = storage.create_experiment("other", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random",
                                              "max_trials": 10})
    for i in range(3):
        trial = storage.register_trial(exp, {"x": i / 10}, worker="w", budget=10)
        storage.fail_trial(trial.id, "w", {"type": "ValueError", "message": "bad"})
    capsys.readouterr()
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("stopped: 3 broken trials (max_broken=3)")


@pytest.mark.parametrize("stored", ["5", 5.0])
def test_list_and_status_read_a_max_broken_stored_as_text_or_float_as_the_workers_do(
    workdir: Path, capsys: pytest.CaptureFixture[str], stored: object
) -> None:
    """Another program's max_broken of "5" (or 5.0): its workers and status apply 5; list applied the
    default 3 and said 'stopped: 4 broken trials (max_broken=3)' of an experiment still running."""
    from orchard.storages.pickled import PickledStorage

    storage = PickledStorage("orchard.pkl")
    exp = storage.create_experiment("other", {"space": {"x": "uniform(0, 1)"}, "max_broken": stored})
    for i in range(4):
        trial = storage.register_trial(exp, {"x": i / 10}, worker="w", budget=None)
        storage.fail_trial(trial.id, "w", {"type": "ValueError", "message": "bad"})
    capsys.readouterr()
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    assert "stopped" not in capsys.readouterr().out
    assert main(["list", "--storage", "orchard.pkl", "--json"]) == 0
    assert [e["broken_stop"] for e in json.loads(capsys.readouterr().out)] == [None]
    assert main(["status", "-n", "other", "--storage", "orchard.pkl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["broken_stop"] is None
    storage.fail_trial(storage.register_trial(exp, {"x": 0.9}, worker="w", budget=None).id, "w",
                       {"type": "ValueError", "message": "bad"})
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("stopped: 5 broken trials (max_broken=5)")


@pytest.mark.parametrize("stored", [0, -1, "ten", 2.5])
def test_list_names_a_stored_max_broken_the_workers_refuse(
    workdir: Path, capsys: pytest.CaptureFixture[str], stored: object
) -> None:
    """Another program's max_broken of 0 (or -1, "ten", 2.5): hunt, status and info refuse the experiment as
    unusable, and list showed it as a sound one, with nothing to say why no worker would run it."""
    from orchard.storages.pickled import PickledStorage

    storage = PickledStorage("orchard.pkl")
    storage.create_experiment("other", {"space": {"x": "uniform(0, 1)"}, "max_broken": stored})
    storage.create_experiment("fine", {"space": {"x": "uniform(0, 1)"}})
    capsys.readouterr()
    assert main(["status", "-n", "other", "--storage", "orchard.pkl"]) == 2
    refused = capsys.readouterr().err
    assert f"max_broken={stored!r}" in refused, refused
    assert "to keep its trials, dump it (orchard db dump -n other -o other.json)" in refused, refused  # not rm
    assert main(["list", "--storage", "orchard.pkl"]) == 0
    shown = capsys.readouterr()
    other, fine = shown.out.splitlines()
    assert f"unusable: invalid setting max_broken={stored!r}" in other and "unusable" not in fine, shown.out
    assert "orchard db dump -n NAME" in shown.err and "db load NAME.json -n NEWNAME" in shown.err, shown.err
    assert main(["list", "--storage", "orchard.pkl", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert f"max_broken={stored!r}" in rows[0]["unusable"] and rows[1]["unusable"] is None, rows


def test_status_watch_refreshes_until_ctrl_c(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    proc = subprocess.Popen([sys.executable, "-m", "orchard.cli", "status", "--watch", "--interval", "0.2"],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while sum("no experiments" in line for line in seen) < 2:  # wait for two refreshes, not a fixed time
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen.append(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Ctrl-C to stop" in "".join(seen) + out


def test_status_watch_json_prints_one_json_document_a_line(workdir: Path) -> None:
    """`orchard status -n e --watch --json | jq` failed: '(updated 08:24:25; Ctrl-C to stop)' came next."""
    assert hunt("e", "--max-trials", "1") == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    proc = subprocess.Popen([sys.executable, "-m", "orchard.cli", "status", "-n", "e", "--watch", "--json",
                             "--interval", "0.2"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]  # two refreshes, each one line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    for line in [*lines, *out.splitlines()]:
        assert json.loads(line)["counts"]["completed"] == 1, line


def test_status_of_an_empty_storage(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 0
    assert "no experiments" in capsys.readouterr().out


def test_hunt_starts_no_more_workers_than_max_trials(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchard.experiment import Experiment

    started: list[int] = []
    workon = Experiment.workon

    def counting(self: Experiment, fn: Any, n_workers: int = 1, **options: Any) -> dict[str, Any]:
        started.append(n_workers)
        return workon(self, fn, n_workers=1, **{**options, "executor": "single"})  # never 100,000 processes here

    monkeypatch.setattr(Experiment, "workon", counting)
    assert hunt("e", "--max-trials", "2", "--n-workers", "100000") == 0  # started processes for minutes
    assert started == [2] and len(trials("e")) == 2


def test_a_script_named_in_latin_1_is_hunted_on_mongodb(
        workdir: Path, capsys: pytest.CaptureFixture[str], mongo_db_uri: str) -> None:
    """A file name with a byte that is no UTF-8 (b\\xffd.py, saved by a Latin-1 system) reaches Python as
    '\\udcff'; MongoDB refused the command hunt records, and every hunt stopped on 'unexpected
    UnicodeEncodeError' after creating the experiment."""
    script = "b\udcffd.py"  # what os.fsdecode makes of the bytes b"b\xffd.py"
    (workdir / script).write_text(TRAIN)
    assert main(["hunt", "-n", "e", "--storage", mongo_db_uri, "--max-trials", "1", sys.executable, script,
                 "--x~uniform(0, 1)"]) == 0, capsys.readouterr().err
    assert [t.status for t in trials("e", mongo_db_uri)] == [TrialStatus.COMPLETED]
    capsys.readouterr()
    assert main(["info", "-n", "e", "--storage", mongo_db_uri]) == 0
    assert "b\\xffd.py" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_hunt_runs_in_a_directory_named_in_latin_1(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], backend: str,
        request: pytest.FixtureRequest) -> None:
    """A directory whose name is no UTF-8 (b"x\\xff") reaches Python as 'x\\udcff', and with it the default
    working_dir and the cwd a script reports: MongoDB refused the experiment ("unexpected UnicodeEncodeError")
    and on a pickle file every trial broke (the search for strays of earlier attempts encoded it as UTF-8)."""
    folder = os.fsdecode(os.fsencode(workdir) + b"/x\xff")
    os.mkdir(folder)
    shutil.copy(workdir / "train.py", folder)
    monkeypatch.chdir(folder)
    storage = str(request.getfixturevalue("mongo_db_uri")) if backend == "mongodb" else "orchard.pkl"
    assert main(["hunt", "-n", "e", "--storage", storage, "--max-trials", "2", *train()]) == 0, \
        capsys.readouterr().err
    runs = os.path.join(folder, "orchard-runs", "e")
    assert orchard.get_experiment("e", storage=storage).settings.working_dir == runs
    done = trials("e", storage)
    assert [t.status for t in done] == [TrialStatus.COMPLETED] * 2
    shown = runs if backend == "pickle" else runs.replace("x\udcff", "x\\xff")  # MongoDB holds UTF-8 only
    assert {t.results["cwd"] for t in done} == {os.path.join(shown, t.id) for t in done}
    capsys.readouterr()
    assert main(["hunt", "-n", "e", "--storage", storage, "--max-trials", "3", *train()]) == 0  # joined
    assert len(trials("e", storage)) == 3
    assert sorted(os.listdir(runs)) == sorted(t.id for t in trials("e", storage))
    if backend == "pickle":  # its dump loads into MongoDB (it stopped on the first such trial)
        mongo = str(request.getfixturevalue("mongo_db_uri"))
        assert main(["db", "dump", "-o", "dump.json", "--storage", storage]) == 0
        assert main(["db", "load", "dump.json", "--storage", mongo]) == 0, capsys.readouterr().err
        assert orchard.get_experiment("e", storage=mongo).settings.working_dir == runs
        assert {t.results["cwd"] for t in trials("e", mongo)} == {
            os.path.join(runs.replace("x\udcff", "x\\xff"), t.id) for t in trials("e", mongo)}


def test_info_of_an_empty_trial_id_is_refused_not_taken_for_no_trial(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "2") == 0
    capsys.readouterr()
    assert main(["info", "-n", "e", "--trial", ""]) == 2  # was the experiment's info, exit 0
    assert "--trial is empty (an unset shell variable?)" in error_line(capsys.readouterr().err)
    assert main(["info", "-n", "e", "--trial", "zz"]) == 1
    assert "no trial of experiment 'e' has an id starting with 'zz'" in error_line(capsys.readouterr().err)


def test_info_of_a_trial_id_that_matches_none_says_to_check_it(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No id started with it, and the error said 'give more of the id' (which can never match), echoing a
    pasted 5,000-character text whole."""
    assert hunt("e", "--max-trials", "2") == 0
    capsys.readouterr()
    assert main(["info", "-n", "e", "--trial", "zz" * 2500]) == 1
    line = error_line(capsys.readouterr().err)
    assert "no trial of experiment 'e' has an id" in line and "; check it" in line and "give more" not in line
    assert len(line) < 300, line


def test_info_of_a_trial_shows_its_results_nan_as_stored_and_says_json_writes_null(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A script's results {"aux": NaN, "big": Infinity}: info --trial --json writes null (jq refuses NaN) and
    the text showed no results at all, so nothing but db dump said the value was NaN and not missing."""
    from orchard.storages.pickled import PickledStorage

    storage = PickledStorage("orchard.pkl")
    exp = storage.create_experiment("e", {"space": {"x": "uniform(0, 1)"}})
    trial = storage.register_trial(exp, {"x": 0.5}, worker="w", budget=None)
    storage.complete_trial(trial.id, "w", 1.0, {"aux": math.nan, "big": math.inf, "curve": list(range(100))})
    capsys.readouterr()
    assert main(["info", "-n", "e", "--trial", trial.id[:8], "--storage", "orchard.pkl"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "results:" in line)
    assert "aux=nan, big=inf, curve=[0, 1, 2" in line and line.endswith("…") and len(line) < 120, line
    assert main(["info", "-n", "e", "--trial", trial.id[:8], "--storage", "orchard.pkl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"]["results"]["aux"] is None
    info = " ".join((Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
                    .split("## `orchard info`")[1].split("## ")[0].split())
    assert "NaN" in info and "null" in info and "db dump" in info, info


def test_status_of_every_experiment_names_an_unusable_one_and_shows_the_others(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "2") == 0
    storage = orchard.get_storage("orchard.pkl")
    storage.create_experiment("old", {"space": {"x": "uniform(0, 1)"}, "seed": -1})  # as an older release stored it
    capsys.readouterr()
    assert main(["status"]) == 0  # was exit 2: one line about 'old', nothing about 'e'
    out = capsys.readouterr().out
    assert "experiment 'e'" in out and "2 completed" in out
    assert "experiment 'old'" in out and "problem: experiment 'old'" in out and "orchard db rm -n old" in out
    assert main(["status", "--json"]) == 0
    statuses = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert statuses["e"]["counts"]["completed"] == 2 and "seed=-1" in statuses["old"]["problem"]


def test_inserted_point_is_evaluated_first(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orchard.build_experiment("e", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, storage="orchard.pkl",
                             max_trials=3)
    assert main(["insert", "-n", "e", "x=0.3", "y=0.2"]) == 0
    assert "inserted trial" in capsys.readouterr().out
    assert hunt("e") == 0
    first = min(trials("e"), key=lambda t: t.start_time or 0)
    assert first.params == {"x": 0.3, "y": 0.2} and first.objective == pytest.approx(0.0)
    assert main(["insert", "-n", "e", "x=7", "y=0.2"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "'x'" in line and "outside" in line


# -- db ------------------------------------------------------------------------------------------


def test_db_dump_and_load_round_trip(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "3") == 0
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 0
    assert main(["db", "load", "dump.json", "-n", "copy", "--storage", "other.pkl"]) == 0
    assert "3 of 3 trials added" in capsys.readouterr().out
    original, copy = trials("e"), trials("copy", "other.pkl")
    assert sorted((t.objective, t.status) for t in original) == sorted((t.objective, t.status) for t in copy)
    assert main(["db", "load", "dump.json", "-n", "copy", "--storage", "other.pkl"]) == 0
    assert "0 of 3 trials added" in capsys.readouterr().out



def test_db_load_reads_a_dump_saved_with_a_byte_order_mark(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A dump opened and saved again in an editor that writes a BOM (Notepad, PowerShell's Out-File) was
    refused: 'it is not JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) ...)', an option load has not."""
    assert hunt("e", "--max-trials", "2") == 0
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 0
    text = (workdir / "dump.json").read_text(encoding="utf-8")
    (workdir / "bom.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    capsys.readouterr()
    assert main(["db", "load", "bom.json", "--storage", "other.pkl"]) == 0, capsys.readouterr().err
    assert "2 of 2 trials added" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ufeff" + text))  # Get-Content dump.json | db load -
    assert main(["db", "load", "-", "-n", "copy", "--storage", "other.pkl"]) == 0, capsys.readouterr().err
    assert "2 of 2 trials added" in capsys.readouterr().out


def test_db_load_reads_a_dump_from_stdin_as_dump_writes_one_to_stdout(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`orchard db dump -o - | orchard db load -`: load said 'cannot read dump -: No such file'."""
    assert hunt("e", "--max-trials", "2") == 0
    capsys.readouterr()
    assert main(["db", "dump", "-n", "e", "-o", "-"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(capsys.readouterr().out))
    assert main(["db", "load", "-", "--storage", "other.pkl"]) == 0
    assert "2 of 2 trials added" in capsys.readouterr().out


@pytest.mark.parametrize(("source", "expected"), [
    ("-", "cannot read dump -: nothing came on stdin: did the command before the pipe fail?; "
          "nothing was loaded"),
    ("empty.json", "cannot read dump empty.json: the file is empty; nothing was loaded"),
])
def test_db_load_of_nothing_says_so(workdir: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, source: str, expected: str) -> None:
    """`orchard db dump -n typo -o - | orchard db load -` said 'Expecting value: line 1 column 1 (char 0)'."""
    (workdir / "empty.json").write_text("")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["db", "load", source]) == 2
    assert error_line(capsys.readouterr().err) == f"orchard: error: {expected}"


def test_db_load_of_a_storage_file_or_a_text_file_says_what_it_is(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db load runs/orchard.pkl` said "'utf-8' codec can't decode byte 0x89 in position 0", a text file
    "Expecting value: line 1 column 1 (char 0)"."""
    assert hunt("e", "--max-trials", "1") == 0
    (workdir / "notes.txt").write_text("hello\n")
    capsys.readouterr()
    assert main(["db", "load", "orchard.pkl", "--storage", "other.pkl"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "orchard: error: orchard.pkl is an Orchard storage file, not a dump; to copy its experiments, dump them "
        "first (orchard db dump --storage orchard.pkl -o orchard.json) and load that; nothing was loaded")
    assert main(["db", "load", "notes.txt", "--storage", "other.pkl"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "orchard: error: cannot read dump notes.txt: it is not JSON (Expecting value: line 1 column 1 (char 0)), "
        "so no file written by 'orchard db dump'; nothing was loaded")
    assert not (workdir / "other.pkl").exists()


_Edit = Callable[[dict[str, Any], dict[str, Any]], object]  # (the dump, its experiment) -> edits them

_HOSTILE_DUMPS: dict[str, tuple[_Edit, str]] = {  # an edit of a good dump, and what the one error line says
    "no experiments": (lambda d, e: d.pop("experiments"), "has no list of experiments"),
    "bad prior": (lambda d, e: e["config"].update(space={"x": "bogus(1)"}), "invalid configuration: dimension 'x'"),
    "bad setting": (lambda d, e: e["config"].update(max_trials=-4), "invalid setting max_trials=-4"),
    "path as name": (lambda d, e: e.update(name="../../etc"), "experiment name '../../etc' is not allowed"),
    "foreign params": (lambda d, e: e["trials"][1].update(params={"y": 0.5}),
                       "trial 1 cannot be loaded: params {'y': 0.5} do not match the space"),
    "param outside": (lambda d, e: e["trials"][1].update(params={"x": 55.0}),
                      "trial 1 cannot be loaded: dimension 'x': value 55.0 is outside"),
    "bad status": (lambda d, e: e["trials"][1].update(status="weird"), "unknown trial status 'weird'"),
    "error a list": (lambda d, e: e["trials"][1].update(error=[1, 2]), "a trial error that is a list, not a dict"),
    "text objective": (lambda d, e: e["trials"][1].update(objective="abc"), "field 'objective' is of type str, not a number"),
    # JSON holds NaN and Infinity: a NaN objective loaded was the best trial
    "nan objective": (lambda d, e: e["trials"][1].update(objective=math.nan), "objective nan is not a finite number"),
    "inf report": (lambda d, e: e["trials"][1].update(reports=[[1, 0.5], [2, -math.inf]]),
                   "its report at step 2 is -inf, not finite numbers"),
    "nan named objective": (lambda d, e: (e["config"].update(objectives={"err": "min"}),
                                          e["trials"][0]["results"].update(err=0.5),
                                          e["trials"][1]["results"].update(err=math.nan)),
                            "objective 'err' is nan, not a finite number"),
    "trial a number": (lambda d, e: e["trials"].__setitem__(1, 5), "trial 1 cannot be loaded"),
    "trials a number": (lambda d, e: e.update(trials=5), "is not an object with a name, a config and a list of"),
}


@pytest.mark.parametrize("edit", list(_HOSTILE_DUMPS))
def test_db_load_of_a_malformed_or_hostile_dump_is_one_error_and_stores_nothing(
        workdir: Path, capsys: pytest.CaptureFixture[str], edit: str) -> None:
    """A hand-edited dump gave 'unexpected KeyError' tracebacks, or stored configurations and trials
    that no worker could use (a space that does not parse, params outside it, a path as a name)."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    for x in (0.25, 0.5):
        held = exp.storage.register_trial(exp.id, {"x": x}, worker="w")
        exp.storage.complete_trial(held.id, "w", x)
    orchard.build_experiment("live", space={"y": "uniform(0, 1)"}, storage="other.pkl")
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 0
    data = json.loads(Path("dump.json").read_text())
    change, message = _HOSTILE_DUMPS[edit]
    change(data, data["experiments"][0])
    Path("dump.json").write_text(json.dumps(data))
    before = Path("other.pkl").read_bytes()
    capsys.readouterr()
    assert main(["db", "load", "dump.json", "--storage", "other.pkl"]) == 2
    assert message in error_line(capsys.readouterr().err)
    assert Path("other.pkl").read_bytes() == before, "something was stored"
    if edit == "path as name":  # a name is only checked if the experiment keeps it
        assert main(["db", "load", "dump.json", "-n", "renamed", "--storage", "other.pkl"]) == 0


def test_db_load_of_a_dump_naming_a_key_twice_is_one_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "1") == 0
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 0
    text = Path("dump.json").read_text()
    Path("dump.json").write_text(text.replace('"objective": ', '"objective": 99.0, "objective": ', 1))  # by hand
    capsys.readouterr()
    assert main(["db", "load", "dump.json", "-n", "copy"]) == 2  # was loaded with one of the two, silently
    assert "cannot read dump dump.json: an object names 'objective' twice; keep one" in error_line(
        capsys.readouterr().err)
    assert [r.name for r in orchard.get_storage("orchard.pkl").list_experiments()] == ["e"]


def test_db_load_of_a_dump_nested_too_deeply_is_one_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("deep.json").write_text('{"format": "orchard-dump", "version": 1, "experiments": '
                                 + "[" * 100_000 + "]" * 100_000 + "}")  # was 'unexpected RecursionError' (exit 1)
    assert main(["db", "load", "deep.json", "--storage", "other.pkl"]) == 2
    assert "cannot read dump deep.json: it is nested too deeply" in error_line(capsys.readouterr().err)
    assert not Path("other.pkl").exists()


def test_db_rm_asks_unless_yes(workdir: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert hunt("e", "--max-trials", "1") == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal to ask on
    assert main(["db", "rm", "-n", "e"]) == 2
    assert "add --yes" in error_line(capsys.readouterr().err)
    assert main(["db", "rm", "-n", "e", "--yes"]) == 0
    assert "deleted experiment 'e'" in capsys.readouterr().out
    assert orchard.get_storage("orchard.pkl").get_experiment("e") is None


def test_db_release_sets_a_reserved_trial_back(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl", heartbeat=0.1)
    stuck = experiment.storage.register_trial(experiment.id, {"x": 0.5}, worker="dead:1:beef")  # never heartbeats
    assert main(["db", "release", "-n", "e", stuck.id[:10]]) == 0
    assert "released trial" in capsys.readouterr().out
    trial = experiment.storage.get_trial(stuck.id)
    assert trial is not None and trial.status is TrialStatus.INTERRUPTED and trial.worker is None
    assert main(["db", "release", "-n", "e", "ffff"]) == 1
    assert "trial 'ffff' does not exist in experiment 'e'" in error_line(capsys.readouterr().err)
    assert main(["db", "release", "-n", "e", stuck.id]) == 2  # a known trial that is not reserved
    line = error_line(capsys.readouterr().err)
    assert "is interrupted, not reserved" in line and "reservation" not in line


@pytest.mark.parametrize("storage", ["orchard.pkl", "mongomock://dbtest", "new/runs/orchard.pkl"])
def test_db_test_checks_and_cleans_up(
    workdir: Path, capsys: pytest.CaptureFixture[str], storage: str
) -> None:
    assert main(["db", "test", "--storage", storage]) == 0
    out = capsys.readouterr().out
    for step in ("connect", "write", "reserve", "lock", "cleanup", "all checks passed"):
        assert step in out
    if storage.endswith(".pkl"):
        assert not (workdir / storage).exists(), "db test should remove the file it created"
        assert sorted(p.name for p in workdir.iterdir() if p.name != "train.py") == [], "nor leave its lock or folders"
    assert orchard.get_storage(storage).list_experiments() == []


@pytest.mark.parametrize(("storage", "code", "expected"), [
    ("runs", 2, "db test failed at step 'open' on the storage: --storage: storage 'runs' is neither a URI"),
    ("foo://x", 2, "unknown scheme 'foo'"),
    ("memory://", 2, "db test failed at step 'reopen' on memory://: storage memory:// lives in one process"),
    ("mongodb://127.0.0.1:1/db?serverSelectionTimeoutMS=200", 1, "db test failed at step 'connect'"),
])
def test_db_test_exits_2_for_a_storage_uri_that_cannot_work_and_1_for_a_storage_that_fails(
    workdir: Path, capsys: pytest.CaptureFixture[str], storage: str, code: int, expected: str
) -> None:
    """A script reads `orchard db test`'s code as any command's: 2 a bad configuration, 1 a failure."""
    assert main(["db", "test", "--storage", storage]) == code
    assert expected in error_line(capsys.readouterr().err)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "code", "expected"), [
    (["hunt", "-n", "e", sys.executable, "train.py", "--x~uniform(1, 0)"], 2,
     "cannot parse prior 'uniform(1, 0)'"),
    (["hunt", "-n", "e", sys.executable, "train.py", "--x~gauss(0, 1)"], 2, "unknown prior 'gauss'"),
    (["hunt", "-n", "e", sys.executable, "nothere.py", "--x~uniform(0, 1)"], 2, "'nothere.py' not found"),
    (["hunt", "-n", "e", "no-such-program-xyz", "--x~uniform(0, 1)"], 2, "not found on PATH"),
    (["hunt", "-n", "e", "--bogus", "1", sys.executable, "train.py"], 2, "unrecognized arguments: --bogus"),
    (["hunt", "-n", "e", sys.executable, "train.py"], 2, "defines no dimension"),
    (["list", "--storage", "foo://bar"], 2, "unknown scheme 'foo'"),
    (["info", "-n", "nope"], 1, "no experiment named 'nope'"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_errors_are_one_line(workdir: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], code: int, expected: str) -> None:
    assert main(args) == code
    captured = capsys.readouterr()
    assert expected in error_line(captured.err)
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(("command", "expected"), [
    (["", "train.py"], "the command's program is empty ('')"),
    ([sys.executable, ""], "the script python"),
    ([sys.executable, "-u", " "], "is empty (' ')"),
    ([sys.executable, "folder"], "the script 'folder' is a directory, which python"),
    (["./folder"], "the program './folder' is a directory"),
    (["folder"], "the program 'folder' is a directory"),
    ([sys.executable], "is given no script to run"),
    (["sh"], "sh is given no script to run"),
    (["./train.py"], "script './train.py' is not executable"),
    (["./noline.sh"], "script './noline.sh' has no '#!' line naming its interpreter"),  # 'Exec format error'
    (["./crlf.sh"], "script './crlf.sh' has Windows line ends"),  # 'No such file or directory: ./crlf.sh'
    (["./py2.py"], "names the interpreter '/nonexistent/python2.7' in its '#!' line"),  # the same
    (["./off.sh"], "e.g. 'bash ./off.sh'"),  # was told to run it as 'python ./off.sh'
    (["./off"], "e.g. 'python3 ./off'"),  # #!/usr/bin/env python3
    (["./run"], "e.g. 'bash ./run' or 'python ./run'"),  # neither a #! line nor a suffix: no one guess
])
def test_a_command_that_cannot_run_is_one_line_before_anything_is_stored(
    workdir: Path, capsys: pytest.CaptureFixture[str], command: list[str], expected: str
) -> None:
    (workdir / "folder").mkdir()
    (workdir / "noline.sh").write_text('echo \'{"objective": 1}\' > "$ORCHARD_RESULTS_PATH"\n')  # bash runs
    (workdir / "crlf.sh").write_bytes(b'#!/bin/sh\r\necho \'{"objective": 1}\' > "$ORCHARD_RESULTS_PATH"\r\n')
    (workdir / "py2.py").write_text("#!/nonexistent/python2.7\nprint(1)\n")
    for script in ("noline.sh", "crlf.sh", "py2.py"):
        (workdir / script).chmod(0o755)
    (workdir / "off.sh").write_text('echo \'{"objective": 1}\' > "$ORCHARD_RESULTS_PATH"\n')  # not executable
    (workdir / "off").write_text("#!/usr/bin/env python3\nimport orchard\norchard.report_objective(1)\n")
    (workdir / "run").write_text('echo \'{"objective": 1}\' > "$ORCHARD_RESULTS_PATH"\n')
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", *command, "--x~uniform(0, 1)"]) == 2
    assert expected in error_line(capsys.readouterr().err)
    assert not (workdir / "orchard.pkl").exists(), "the experiment was stored before its command was refused"


def test_python_runs_a_folder_with_a_main_module_by_its_absolute_path(workdir: Path) -> None:
    from orchard.command import resolve_program

    (workdir / "app").mkdir()
    (workdir / "app" / "__main__.py").write_text("")
    assert resolve_program([sys.executable, "app", "--x~uniform(0, 1)"])[1] == (1, str(workdir / "app"))


def test_errors_in_a_real_process_are_one_line(workdir: Path) -> None:
    unreachable = "mongodb://user:secret@127.0.0.1:1/db?serverSelectionTimeoutMS=300"
    proc = cli("hunt", "-n", "e", "--storage", unreachable, *train(), cwd=workdir)
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert "secret" not in line and "127.0.0.1" in line
    debug = cli("info", "-n", "nope", "--debug", cwd=workdir)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_command_run_in_a_deleted_directory_says_so(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Every command, `list --storage /abs/orchard.pkl` too, said only "[Errno 2] No such file or directory
    (FileNotFoundError)" in a directory deleted since the shell entered it."""
    assert hunt("e", "--max-trials", "1") == 0
    gone = workdir / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    monkeypatch.setenv("PWD", str(gone))
    gone.rmdir()
    capsys.readouterr()
    for command in (["list", "--storage", str(workdir / "orchard.pkl")], ["status"]):
        assert main(command) == 2
        assert error_line(capsys.readouterr().err) == (
            f"orchard: error: the current directory ({gone}, as the shell names it) no longer exists: it was "
            "deleted or moved away; cd to an existing directory and run the command again")
    assert main(["--version"]) == 0


def test_python_dash_m_orchard_and_version(workdir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchard", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("orchard ")


#: A frame of Orchard's own code (the package, or the launcher the ``orchard`` script imports) in a traceback.
_ORCHARD_FRAME = re.compile(r'File "[^"]*(/orchard/|_orchard_launch\.py)')


@pytest.mark.slow
def test_ctrl_c_while_the_orchard_command_starts_is_one_line_and_exit_130(workdir: Path) -> None:
    """Ctrl-C in the first tenth of a second of any ``orchard`` command (Python importing the package, before
    main could catch it) printed a traceback and exited 1 or -2. What the interpreter prints while it starts
    itself, before any of Orchard's code runs (its site module), is not Orchard's to change."""
    script = Path(sys.executable).with_name("orchard")
    assert script.exists(), f"no orchard script beside {sys.executable}: install the package"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    caught = 0
    for attempt in range(45):
        proc = subprocess.Popen([str(script), "list", "--storage", "o.pkl"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=workdir)
        time.sleep(0.02 + attempt % 15 * 0.03)  # 0.02 .. 0.44 s: a loaded machine starts Python later
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert not _ORCHARD_FRAME.search(err), err
        if "Traceback" in err:  # the interpreter's own start (site, the script's first imports), not Orchard
            continue
        assert (proc.returncode, err.strip()) in (  # -2 and silent: killed before the interpreter took Ctrl-C over
            (-signal.SIGINT, "orchard: interrupted"), (0, ""), (-signal.SIGINT, "")), (proc.returncode, err)
        caught += err.strip() == "orchard: interrupted"
    assert caught, "no Ctrl-C landed while the command ran: start it later or sooner"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["status", "--help"],
                                  ["list", "--storage", "o.pkl"], ["list", "--json", "--storage", "o.pkl"],
                                  ["status", "--storage", "o.pkl"],
                                  ["status", "-n", "e", "--json", "--storage", "o.pkl"]])
def test_the_command_line_starts_without_numpy_where_it_needs_none(workdir: Path, args: list[str]) -> None:
    """Every `orchard` command imported numpy (0.1-0.3 s): `orchard --version` took 0.3-0.4 s. `orchard list`
    still did (reading the settings imported every algorithm's base, the priors and the pruners), 0.15 s of
    its 0.4 s of CPU. `orchard status` did after that (the Experiment it builds imports the worker, which
    imported the algorithms' base)."""
    reads = args[0] in ("list", "status") and "--help" not in args
    if reads:
        space = {"x": "uniform(0, 1)", "n": "randint(1, 5)", "c": "choices(['a'])", "e": "fidelity(1, 9)"}
        exp = orchard.build_experiment("e", space=space, storage="o.pkl", max_trials=3, pruner="median")
        exp.workon(lambda x, n, c, e: x, max_trials=1, progress=False)
    code = ("import runpy, sys\nsys.argv = ['orchard', *sys.argv[1:]]\ntry:\n"
            "    runpy.run_module('orchard', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('numpy' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr
    assert not reads or "e" in proc.stdout, proc.stdout  # the experiment was listed
    assert args[0] != "status" or not reads or '"completed": 1' in proc.stdout or "1 completed" in proc.stdout


@pytest.mark.parametrize("position", ["before", "after"])
def test_storage_option_is_accepted_before_or_after_db_subcommand(
    workdir: Path, position: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = str(workdir / f"{position}.pkl")
    argv = ["db", "--storage", target, "test"] if position == "before" else ["db", "test", "--storage", target]
    assert main(argv) == 0
    assert target in capsys.readouterr().out  # the named storage was tested, not the default one


# -- the newcomer's path: bad input refused up front with one line ---------------------------------


@pytest.mark.parametrize("name", ["../../evil", "ABSOLUTE", "", "x" * 129, "a b", ".hidden", "a/b"])
def test_hunt_refuses_names_that_are_not_one_safe_folder_name(
    workdir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    outside = workdir.parent / "abs-target"
    name = str(outside) if name == "ABSOLUTE" else name
    before = set(workdir.parent.iterdir())
    assert hunt(name, "--max-trials", "1") == 2
    line = error_line(capsys.readouterr().err)
    assert "name" in line and ("letters, digits" in line or "-n NAME" in line)
    assert set(workdir.parent.iterdir()) == before, "nothing may be created next to the working folder"
    assert not (workdir / "orchard-runs").exists() and not outside.exists()


def test_a_name_with_a_letter_beyond_ascii_is_told_why(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'naïve' was refused as 'use … letters, digits and . _ - + = @': ï is a letter."""
    assert hunt("naïve", "--max-trials", "1") == 2
    assert "use 1 to 128 characters among ASCII letters, digits" in error_line(capsys.readouterr().err)


def test_read_only_commands_do_not_create_a_missing_storage(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = workdir / "nowhere" / "runs.pkl"
    assert main(["list", "--storage", str(missing)]) == 0
    assert f"no experiments in {missing}" in capsys.readouterr().out
    assert main(["status", "--storage", str(missing)]) == 0
    assert main(["info", "-n", "e", "--storage", str(missing)]) == 1
    assert "does not exist" in error_line(capsys.readouterr().err)
    assert main(["plot", "regret", "-n", "e", "-o", "r.html", "--storage", str(missing)]) == 1
    assert "does not exist" in error_line(capsys.readouterr().err)
    assert main(["db", "dump", "-o", "d.json", "--storage", str(missing)]) == 1
    assert "nothing to dump" in error_line(capsys.readouterr().err)
    assert not missing.parent.exists()


def test_a_directory_given_as_storage_file_is_one_clear_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "d.pkl").mkdir()
    assert main(["list", "--storage", "d.pkl"]) == 1
    line = error_line(capsys.readouterr().err)
    assert "is a directory" in line and "d.pkl/orchard.pkl" in line and "could not create" not in line


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "soon", "1e-300"])  # 1e-300: read the storage in a busy loop
def test_status_interval_must_be_positive(
    workdir: Path, capsys: pytest.CaptureFixture[str], interval: str
) -> None:
    assert main(["status", "--watch", "--interval", interval]) == 2
    assert "--interval" in error_line(capsys.readouterr().err)


def test_status_interval_without_watch_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard status --interval 5` printed one report and exited 0: the interval was silently ignored."""
    assert hunt("e", "--max-trials", "1") == 0
    capsys.readouterr()
    assert main(["status", "-n", "e", "--interval", "5"]) == 2
    captured = capsys.readouterr()
    assert "add --watch" in error_line(captured.err) and "--interval 5" in captured.err and captured.out == ""


def test_unknown_option_points_at_the_command_help(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--jsn"]) == 2
    assert "see 'orchard status --help'" in error_line(capsys.readouterr().err)
    assert main(["db", "dump", "-o", "x.json", "--frobnicate"]) == 2
    assert "see 'orchard db dump --help'" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("args", "expected"), [
    (["status", "--jsn"], "(--jsn: did you mean --json?)"),
    (["status", "--JSON"], "(--JSON: did you mean --json?)"),
    (["hunt", "-n", "e", "--max-trails=5", sys.executable, "train.py"], "did you mean --max-trials?"),
    (["info", "-n", "e", "--trail", "ab"], "(--trail: did you mean --trial?)"),
    (["stauts"], "invalid choice: 'stauts' (choose from 'hunt', 'status',"),
    (["stauts"], "; did you mean 'status'?; see 'orchard --help'"),
    (["db", "dupm"], "did you mean 'dump'?; see 'orchard db --help'"),
    (["plot", "regert", "-n", "e", "-o", "r.html"], "did you mean 'regret'?"),
    (["hunt", "-n", "e", "--algorithm", "bayse", *train()], "unknown algorithm 'bayse'; valid algorithms: "),
    (["hunt", "-n", "e", "--algorithm", "bayse", *train()], "(did you mean bayes?)"),
    (["hunt", "-n", "e", "--algorithm", "{bayes: {acq_fun: EI}}", *train()],
     "has no option 'acq_fun' (did you mean acq_func?); valid options:"),
    (["hunt", "-n", "e", "--pruner", "medain", *train()], "(did you mean median?)"),
    (["hunt", "-n", "e", "--stop", "tagret=0.1", *train()], "stopping rule 'tagret' (did you mean target?)"),
    (["hunt", "-n", "e", sys.executable, "train.py", "--x~unifrom(0, 1)"], "(did you mean uniform?)"),
])
def test_a_mistyped_option_or_command_names_the_one_meant(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    """`orchard hunt --max-trails 5` said only 'unrecognized arguments: --max-trails'."""
    assert main(args) == 2
    assert expected in error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("args", "expected"), [
    (["insert", "-n", "e", "--objectiv", "1", "x=0.5"],
     "unrecognized arguments: --objectiv (--objectiv: did you mean --objective?); see 'orchard insert"),
    (["status", "--stor", "orchard.pkl"], "(--stor: did you mean --storage?); see 'orchard status --help'"),
    (["--vers"], "unrecognized arguments: --vers (--vers: did you mean --version?)"),
    (["db", "dump", "--outptu", "x.json"],
     "unrecognized arguments: --outptu (--outptu: did you mean --output?); see 'orchard db dump --help'"),
    (["--stoage", "orchard.pkl", "status"], "unrecognized arguments: --stoage (--stoage: did you mean --st"),
])
def test_an_abbreviated_or_unknown_option_is_named_by_every_command(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    """`orchard insert --objectiv 1 x=0.5` recorded the point as if --objective were given (hunt alone refused
    abbreviations); `db dump --outptu x.json` said only that -o/--output was missing."""
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    assert main(args) == 2
    assert expected in error_line(capsys.readouterr().err)
    assert orchard.get_experiment("e", storage="orchard.pkl").fetch_trials() == []
    assert not (workdir / "x.json").exists()


def test_a_name_given_twice_is_refused_not_the_last_taken(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db rm -n keep --yes ... -n old` (a script's options joined) deleted 'old' without a word."""
    for name in ("keep", "old"):
        orchard.build_experiment(name, space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    assert main(["db", "rm", "-n", "keep", "--yes", "-n", "old"]) == 2
    assert "-n/--name is given twice ('keep', then 'old')" in error_line(capsys.readouterr().err)
    assert orchard.get_experiment("old", storage="orchard.pkl").name == "old"
    assert main(["status", "-n", "old", "-n", "old", "--json"]) == 0  # the same name twice is harmless
    assert json.loads(capsys.readouterr().out)["name"] == "old"
    assert main(["db", "dump", "-n", "old", "-o", "old.json"]) == 0
    assert main(["db", "load", "old.json", "-n", "copy", "-n", "copy2", "--storage", "copy.pkl"]) == 2
    assert "-n/--name is given twice ('copy', then 'copy2')" in error_line(capsys.readouterr().err)
    assert not (workdir / "copy.pkl").exists()


@pytest.mark.parametrize("argv", [["status", "--json"], ["db", "dump", "-o", "all.json"], ["info"],
                                  ["db", "rm", "-y"]])
def test_an_empty_name_is_refused_not_taken_for_every_experiment(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`orchard status -n "$EXP" --json` with EXP unset printed the list of every experiment, exit 0."""
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    assert main([*argv, "-n", ""]) == 2
    assert "-n/--name is empty (an unset shell variable?)" in error_line(capsys.readouterr().err)
    assert not (workdir / "all.json").exists()


def test_a_missing_experiment_names_the_stored_ones_it_looks_like(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Among 40 experiments, `info -n lr-serch` listed them all (cut in the middle), none pointed at."""
    storage = orchard.get_storage("orchard.pkl")
    for name in ["lr-search", "LR", *(f"run-{i:02}" for i in range(38))]:
        orchard.build_experiment(name, space={"x": "uniform(0, 1)"}, storage=storage)
    assert main(["info", "-n", "lr-serch"]) == 1
    line = error_line(capsys.readouterr().err)
    assert "no experiment named 'lr-serch' in storage" in line and "did you mean 'lr-search'?" in line
    assert "(experiments there: LR, lr-search, run-00," in line and "run-17 and 20 more)" in line
    assert main(["status", "-n", "lr"]) == 1
    assert "did you mean 'LR'?" in error_line(capsys.readouterr().err)
    assert main(["status", "-n", "zzzz"]) == 1
    assert "did you mean" not in error_line(capsys.readouterr().err)


def test_status_of_a_missing_storage_file_says_the_file_does_not_exist(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --storage runs/orchrad.pkl` said 'no experiments in this storage', as for an empty one."""
    assert main(["status", "--storage", "runs/orchrad.pkl"]) == 0
    assert capsys.readouterr().out.strip() == "no experiments in runs/orchrad.pkl (the file does not exist)"


def test_db_dump_to_a_reader_that_stops_early_exits_141_quietly(workdir: Path) -> None:
    """`orchard db dump -o - | head -c 10` exited 2: 'cannot write dump stdout: Broken pipe; …'."""
    experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    for i in range(400):  # a dump far larger than a pipe's buffer
        experiment.insert({"x": i / 400}, objective=float(i))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    proc = subprocess.Popen([sys.executable, "-m", "orchard.cli", "db", "dump", "-o", "-"], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10).startswith(b"{")
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["status"], ["status", "-n", "e", "--json"],
                                  ["info", "-n", "e"], ["--help"], ["--version"]])
def test_a_full_standard_output_is_one_line_naming_it_and_a_closed_pipe_ends_quietly(
        workdir: Path, args: list[str]) -> None:
    """`orchard info -n e > /dev/full` said 'error: [Errno 28] No space left on device (OSError)', as if the
    storage's disk were full, and `orchard --help > /dev/full` exited 0 having written nothing."""
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl").insert({"x": 0.5}, 1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    command = [sys.executable, "-m", "orchard.cli", *args]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, cwd=workdir, env=env, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (
        1, "orchard: error: cannot write to standard output: No space left on device\n")
    read, write = os.pipe()
    os.close(read)  # `orchard list | head -0`: the reader is gone before the first write
    try:
        proc = subprocess.run(command, cwd=workdir, env=env, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0 if args[0].startswith("--") else 141, "")


@pytest.mark.parametrize(("args", "said"), [
    (["insert", "-n", "e", "x=0.25"], "inserted trial "),
    (["db", "load", "e.json", "-n", "copy"], "loaded experiment 'copy' into "),
    (["db", "rm", "-n", "e", "--yes"], "deleted experiment 'e' and its 1 trials from "),
])
def test_a_change_stored_before_standard_output_failed_is_said_stored(
        workdir: Path, args: list[str], said: str) -> None:
    """`orchard insert -n e x=1 > /dev/full` inserted the trial and said only 'cannot write to standard
    output', as if nothing had been stored: run again, it failed on the trial it had inserted."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    exp.insert({"x": 0.5}, 1.0)
    assert main(["db", "dump", "-n", "e", "-o", "e.json"]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "orchard.cli", *args], cwd=workdir, env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert proc.returncode == 1  # what it was to print is lost
    assert error_line(proc.stderr).startswith(
        "orchard: error: cannot write to standard output: No space left on device; the change was stored all "
        f"the same: {said}"), proc.stderr
    storage = orchard.get_storage("orchard.pkl")
    stored = {"insert": lambda: len(exp.fetch_trials()) == 2, "load": lambda: storage.get_experiment("copy"),
              "rm": lambda: storage.get_experiment("e") is None}
    assert stored[args[0] if args[0] != "db" else args[1]]()


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_a_strict_standard_output_shows_what_it_cannot_encode_escaped(workdir: Path, encoding: str) -> None:
    """With PYTHONIOENCODING=utf-8 (errors: strict), a storage path holding b"\\xff" (a folder named in
    Latin-1) ended `orchard status` in 'unexpected UnicodeEncodeError'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    env["PYTHONIOENCODING"] = encoding
    path = os.fsdecode(b"r\xff\xe9.pkl")
    proc = subprocess.run([sys.executable, "-m", "orchard.cli", "status", "--storage", path], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "no experiments in r\\udcff\\udce9.pkl (the file does not exist)\n"


def test_help_texts_name_every_storage_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "mongodb+srv://" in text and "~/.config/orchard/config.yaml" in text
    assert "(default: 2.0)" in text


def test_an_empty_dimension_name_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", command=[sys.executable, "train.py", "--x~uniform(0, 1)", "--~uniform(0, 1)"]) == 2
    assert "without a valid name" in error_line(capsys.readouterr().err)
    assert not (workdir / "orchard-runs").exists()


def test_insert_names_what_is_wrong(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orchard.build_experiment("e", space={"x": "uniform(0, 1)", "c": "choices(['a', 'b'])"},
                             storage="orchard.pkl")
    assert main(["insert", "-n", "e", "x=0.5"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "missing 'c'" in line and "unknown" not in line and "[]" not in line
    assert main(["insert", "-n", "e", "x=abc", "c=a"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "is a str, not a finite number" in line and "outside" not in line
    assert main(["insert", "-n", "e", "x=0.5", "c=z"]) == 2
    assert "is not one of" in error_line(capsys.readouterr().err)


def test_insert_refuses_a_number_written_with_a_comma_instead_of_storing_a_list(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spreadsheet of a locale with a decimal comma wrote an accuracy of 0.93 as "0,93", and insert stored
    the result as the list [0, 93] without a word (so did --result acc=0,93); x=0,7 said '[0, 7] is a list'."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    (workdir / "rows.csv").write_text('x,objective,acc\n0.5,1,"0,93"\n0.25,2,0.91\n')
    assert main(["insert", "-n", "e", "--file", "rows.csv"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "orchard: error: row 1 of rows.csv: column 'acc' is '0,93', digits with a comma between them, which "
        "would be read as a list; write a number with a decimal point and no thousands separator "
        "(0.93, 1000), or a list as [0, 93]; nothing was stored")
    for tokens in (["x=0.5", "--objective", "1", "--result", "acc=0,93"], ["x=0,7"], ["x=0.5", "--result",
                                                                                   "n=1,000"]):
        assert main(["insert", "-n", "e", *tokens]) == 2
        assert "digits with a comma between them" in error_line(capsys.readouterr().err)
    assert exp.fetch_trials() == []
    assert main(["insert", "-n", "e", "x=0.5", "--objective", "1", "--result", "acc=[0, 93]",
                 "--result", "n='1,000'"]) == 0
    assert [t.results for t in exp.fetch_trials()] == [{"acc": [0, 93], "n": "1,000"}]


@pytest.mark.parametrize("token", ["note=caf\udce9", "caf\udce9=1"])  # b"caf\xe9": Latin-1 in a UTF-8 shell
def test_insert_of_a_result_that_is_no_utf_8_is_one_line_on_mongodb(
        workdir: Path, capsys: pytest.CaptureFixture[str], mongo_db_uri: str, token: str) -> None:
    """--result note=caf\\xe9 stopped on 'unexpected UnicodeEncodeError' on MongoDB (and a pickle file stored a
    text no other storage takes: db load into MongoDB failed the same way)."""
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=mongo_db_uri)
    capsys.readouterr()
    assert main(["insert", "-n", "e", "--storage", mongo_db_uri, "x=0.5", "--objective", "1",
                 "--result", token]) == 2
    assert "holds bytes that are not UTF-8 text" in error_line(capsys.readouterr().err)
    assert trials("e", mongo_db_uri) == []


def test_an_objective_name_that_is_no_utf_8_is_refused_before_anything_is_stored(
        workdir: Path, capsys: pytest.CaptureFixture[str], mongo_db_uri: str) -> None:
    """hunt --objective 'acc\\xff:max' stopped on 'unexpected UnicodeEncodeError' on MongoDB (on a pickle file
    it was stored, and no script can report that name in its results JSON)."""
    assert hunt("e", "--storage", mongo_db_uri, "--objective", "acc\udcff:max") == 2
    assert "holds bytes that are not UTF-8" in error_line(capsys.readouterr().err)
    assert orchard.get_storage(mongo_db_uri).list_experiments() == []


def test_insert_into_an_experiment_stopped_by_broken_trials_says_how_to_raise_max_broken_here(
        workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """The warning gave the remedy in Python only (orchard.build_experiment('e', max_broken=2))."""
    (workdir / "bad.py").write_text("raise SystemExit(3)\n")
    assert hunt("e", "--max-broken", "1", command=[sys.executable, "bad.py", "--x~uniform(0, 1)"]) == 1
    caplog.clear()
    assert main(["insert", "-n", "e", "x=0.5"]) == 0
    assert "will not run until max_broken is raised, e.g. to 2 (orchard hunt --max-broken 2, or " in caplog.text


@pytest.mark.parametrize("given", [["objective=0.3"], ["--result", "objective=0.3"], ["--result", "acc=0.9"]])
def test_insert_says_the_objective_is_given_with_the_objective_flag(
        workdir: Path, capsys: pytest.CaptureFixture[str], given: list[str]) -> None:
    """The API's words reached the command line: 'give the objective as objective=..., not as a result named
    'objective'', then `objective=0.3` was refused as a dimension the space does not have."""
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    assert main(["insert", "-n", "e", "x=0.5", *given]) == 2
    line = error_line(capsys.readouterr().err)
    assert "experiment 'e'" in line and "--objective VALUE" in line and "objective=..., not" not in line, line
    assert trials("e") == []


@pytest.mark.parametrize(("objectives", "expected"), [
    (["nan"], "argument --objective: 'nan' is not a finite number"),  # was: 'return the number, not its text'
    (["inf"], "argument --objective: 'inf' is not a finite number"),
    (["low"], "argument --objective: 'low' is not a number"),
    (["1", "2"], "--objective is given twice (1, then 2); give it once"),  # 2 was recorded
])
def test_insert_objective_must_be_one_finite_number(
    workdir: Path, capsys: pytest.CaptureFixture[str], objectives: list[str], expected: str
) -> None:
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    given = [token for value in objectives for token in ("--objective", value)]
    assert main(["insert", "-n", "e", "x=0.5", *given]) == 2
    assert expected in error_line(capsys.readouterr().err)
    assert trials("e") == []
    assert main(["insert", "-n", "e", "x=0.5", "--objective", "1e-3", "--objective", "1e-3"]) == 0
    assert [t.objective for t in trials("e")] == [0.001]


@pytest.mark.parametrize("blank", ["", " "])
def test_db_dump_and_load_refuse_a_blank_file_name(
        workdir: Path, capsys: pytest.CaptureFixture[str], blank: str) -> None:
    """`db dump -o "$OUT"` with OUT unset said 'cannot write dump : No such file or directory; the dump is
    incomplete', and with OUT=' ' wrote a file named ' '; `db load ''` said 'cannot read dump : [Errno 2]'."""
    assert hunt("e", "--max-trials", "1") == 0
    capsys.readouterr()
    before = set(workdir.iterdir())
    assert main(["db", "dump", "-o", blank]) == 2
    assert "-o/--output is empty (an unset shell variable?)" in error_line(capsys.readouterr().err)
    assert set(workdir.iterdir()) == before
    assert main(["db", "load", blank]) == 2
    assert "FILE.json is empty (an unset shell variable?)" in error_line(capsys.readouterr().err)


def test_db_dump_to_a_directory_or_a_missing_folder(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "1") == 0
    (workdir / "out").mkdir()
    before = set(workdir.iterdir())
    assert main(["db", "dump", "-o", "out"]) == 2
    assert "is a directory" in error_line(capsys.readouterr().err)
    assert main(["db", "dump", "-o", "missing/dump.json"]) == 2
    assert "does not exist" in error_line(capsys.readouterr().err)
    assert set(workdir.iterdir()) == before and not list((workdir / "out").iterdir()), "no temp file left"


def test_db_dump_hides_the_password_of_a_warm_start_source(workdir: Path) -> None:
    store = orchard.get_storage(str(workdir / "orchard.pkl"))
    source = {"experiment": "src", "storage": "mongodb://u:s3cret@db-host/x", "fill": {}}
    store.create_experiment("w", {"space": {"x": "uniform(0, 1)"}, "warm_start": [source]})
    assert main(["db", "dump", "-n", "w", "-o", "dump.json"]) == 0
    text = (workdir / "dump.json").read_text()
    assert "s3cret" not in text and "mongodb://u:***@db-host/x" in text
    assert store.require_experiment("w").config["warm_start"] == [source]  # the storage keeps it


def test_db_dump_never_writes_over_a_storage_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o orchard.pkl` (the storage itself, or another one) replaced every experiment in it by JSON."""
    assert hunt("e", "--max-trials", "1") == 0
    assert hunt("f", "--max-trials", "1", "--storage", "other.pkl") == 0
    kept = {name: (workdir / name).read_bytes() for name in ("orchard.pkl", "other.pkl")}
    for target in kept:
        assert main(["db", "dump", "-n", "e", "-o", target]) == 2
        assert f"-o {target} is an Orchard storage file" in error_line(capsys.readouterr().err)
    assert {name: (workdir / name).read_bytes() for name in kept} == kept
    (workdir / "dump.json").symlink_to("orchard.pkl")  # was told to give a new name: 'e.g. -o dump.json'
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"(a link to {workdir / 'orchard.pkl'})" in line and line.endswith("e.g. -o dump-dump.json"), line
    (workdir / "dump.json").unlink()
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 0


def test_db_dump_never_replaces_the_lock_file_of_a_storage(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o orchard.pkl.lock` (a name a shell completes from orchard.pkl) replaced the lock file the storage's
    workers take, under them; the next process set the dump aside as orchard.pkl.lock.foreign."""
    assert hunt("e", "--max-trials", "1") == 0
    lock = workdir / "orchard.pkl.lock"
    before = os.stat(lock)
    assert main(["db", "dump", "-o", "orchard.pkl.lock"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "orchard: error: -o orchard.pkl.lock is the lock file of storage orchard.pkl; writing the dump there "
        "would replace it under the storage's workers: give a new file name, e.g. -o orchard.json")
    assert os.path.samestat(os.stat(lock), before) and lock.read_bytes() == b""
    (workdir / "notes.lock").write_text("mine")  # a .lock file of no storage is the user's to write
    assert main(["db", "dump", "-o", "notes.lock"]) == 0


@pytest.mark.timeout(30)
def test_db_dump_writes_into_special_files_and_reports_failed_writes(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o` a FIFO (or /dev/null, as root) was replaced by a regular file; `-o - > full-disk` said 'dumped'."""
    assert hunt("e", "--max-trials", "1") == 0
    os.mkfifo("out.fifo")
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(Path("out.fifo").read_text()))
    reader.start()
    assert main(["db", "dump", "-o", "out.fifo"]) == 0
    reader.join(timeout=20)
    assert Path("out.fifo").is_fifo() and json.loads(received[0])["experiments"][0]["name"] == "e"
    capsys.readouterr()
    full = open("/dev/full", "w")  # noqa: SIM115 - a full disk behind `orchard db dump -o - > dump.json`
    monkeypatch.setattr(sys, "stdout", full)
    assert main(["db", "dump", "-o", "-"]) == 2
    with contextlib.suppress(OSError):  # what is left in its buffer cannot be written either
        full.close()
    assert "cannot write dump stdout: No space left on device" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replaced"])
def test_a_dump_on_a_disk_without_room_says_an_earlier_dump_there_is_unchanged(
        workdir: Path, capsys: pytest.CaptureFixture[str], existing: bool) -> None:
    """On a full disk (here a file size limit, as `ulimit -f`), `db dump -o dump.json` over last week's
    dump said 'the dump is incomplete', as if that good file were now damaged: the new dump goes to a
    temporary file first, so the file there is untouched."""
    import resource

    assert hunt("e", "--max-trials", "3") == 0
    if existing:
        assert main(["db", "dump", "-o", "dump.json", "--storage", "orchard.pkl"]) == 0
    before = (workdir / "dump.json").read_text() if existing else None

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # a dump of 3 trials takes about 4 KB

    done = cli("db", "dump", "-o", "dump.json", "--storage", "orchard.pkl", cwd=workdir, preexec_fn=limited)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot write dump dump.json: File too large; " in done.stderr
    said = "dump.json is unchanged" if existing else "no file was written"
    assert said in done.stderr and "incomplete" not in done.stderr, done.stderr
    assert sorted(p.name for p in workdir.iterdir() if "dump" in p.name) == ["dump.json"] * existing
    assert not existing or (workdir / "dump.json").read_text() == before


def test_db_load_keeps_the_creation_time(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hunt("e", "--max-trials", "1") == 0
    created = orchard.get_storage("orchard.pkl").require_experiment("e").created
    assert main(["db", "dump", "-n", "e", "-o", "dump.json"]) == 0
    time.sleep(0.01)  # a fresh record would get a later time
    assert main(["db", "load", "dump.json", "--storage", "other.pkl"]) == 0
    assert orchard.get_storage("other.pkl").require_experiment("e").created == created


def test_db_rm_suggests_a_dump_first(workdir: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert hunt("e", "--max-trials", "1") == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["db", "rm", "-n", "e"]) == 2
    assert "orchard db dump -n e -o e.json" in error_line(capsys.readouterr().err)


def test_db_rm_of_a_warm_start_source_names_the_experiments_it_warm_starts(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db rm old` said only "deleted": the experiments warm-started from it were told nothing from it
    from then on, which only their workers' warnings said, later."""
    old = orchard.build_experiment("old", space={"x": "uniform(0, 1)"}, max_trials=1)
    old.workon(lambda x: x, progress=False)
    for name, source in [("new", "old"), ("by-path", f"{workdir}/orchard.pkl:old"), ("other", "new")]:
        orchard.build_experiment(name, space={"x": "uniform(0, 1)"}, warm_start=[source])
    capsys.readouterr()
    assert main(["db", "rm", "-n", "old", "--yes"]) == 0
    assert capsys.readouterr().err == ("orchard: WARNING: experiment(s) 'by-path', 'new' warm-start from "
                                       "'old': once it is deleted, their workers are told nothing from it\n")


def test_db_rm_of_an_experiment_with_running_trials_says_their_results_are_lost(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`db rm` asked "delete experiment 'e' and its 3 trials?" of an experiment two workers were evaluating:
    nothing said that they would stop and their results be lost."""
    experiment = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    for x in (0.1, 0.2):
        experiment.storage.register_trial(experiment.id, {"x": x}, worker=f"host:{int(x * 10)}:beef")
    experiment.storage.register_trial(experiment.id, {"x": 0.3})
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["db", "rm", "-n", "e"]) == 2
    assert "2 trial(s) of 'e' are running now" in capsys.readouterr().err
    assert main(["db", "rm", "-n", "e", "--yes"]) == 0
    assert "their results are lost; stop them first" in capsys.readouterr().err


# -- the reference page ---------------------------------------------------------------------------------


def test_every_key_of_status_and_list_json_is_documented(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scripts read `status --json` and `list --json`: 'objectives', 'rungs', 'inserted_apart', 'infeasible'
    (status) and 'inserted_apart' (list) were printed but documented nowhere."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    monitoring = " ".join((docs / "plots-and-monitoring.md").read_text().split())
    listing = " ".join((docs / "cli.md").read_text().split("## `orchard list`")[1].split("## ")[0].split())
    assert hunt("e", "--max-trials", "1") == 0
    capsys.readouterr()
    assert main(["status", "-n", "e", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert main(["list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert [key for key in status if f"`{key}`" not in monitoring] == []
    assert [key for key in row if f"`{key}`" not in listing] == []


def test_docs_cli_option_tables_match_the_help() -> None:
    """docs/cli.md's option tables are generated from the parsers; regenerate them when this fails:
    python -m orchard.cli._reference docs/cli.md"""
    from orchard.cli import build_parser
    from orchard.cli._reference import command_parsers, render_page

    page = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    assert render_page(page, build_parser()) == page, "run: python -m orchard.cli._reference docs/cli.md"
    documented = set(re.findall(r"<!-- options: ([a-z ]+) -->", page))
    commands = {c for c, p in command_parsers(build_parser()).items() if c != "db"}
    assert commands <= documented, f"commands without an option table in docs/cli.md: {commands - documented}"


def test_reference_tables_follow_a_changed_help() -> None:
    import argparse

    from orchard.cli._reference import render_page

    parser = argparse.ArgumentParser(prog="orchard")
    commands = parser.add_subparsers()
    sub = commands.add_parser("demo")
    sub.add_argument("--every", type=float, default=2.0, metavar="S", help="period (default: %(default)s)")
    page = "x\n<!-- options: demo -->\n| stale |\n<!-- /options -->\ny\n"
    assert render_page(page, parser) == (
        "x\n<!-- options: demo -->\n| option | meaning |\n|---|---|\n| `--every S` | period (default: 2.0) |\n"
        "<!-- /options -->\ny\n"
    )


def test_an_unreachable_mongodb_shows_the_driver_details_only_with_debug(workdir: Path) -> None:
    unreachable = "mongodb://127.0.0.1:1/db?serverSelectionTimeoutMS=300"
    plain = cli("list", "--storage", unreachable, cwd=workdir)
    line = error_line(plain.stderr)
    assert plain.returncode == 1 and "127.0.0.1:1" in line and "0.3 s" in line and "--debug" in line
    assert len(line) < 300 and "Topology" not in line
    debug = cli("list", "--storage", unreachable, "--debug", cwd=workdir)
    assert debug.returncode == 1 and "Topology" in debug.stderr


def test_ctrl_c_pressed_again_does_not_say_no_trial_was_running_while_workers_still_hold_theirs() -> None:
    """A second Ctrl-C stops waiting for the workers: nothing is released yet, but trials were running."""
    from orchard.errors import Interrupted

    said = str(Interrupted().joined([], unstopped=2))
    assert "no trial was running" not in said and said.startswith("no trial released yet; 2 worker(s)"), said
    assert str(Interrupted()) == "no trial was running"


def test_insert_file_interrupted_midway_says_how_far_it_got_and_the_same_command_records_the_rest(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C stored 2,233 of 20,000 rows; the same command then refused row 1 ('already has a trial')."""
    from orchard.experiment import Experiment

    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    rows = workdir / "rows.csv"
    rows.write_text("x,objective,epochs\n" + "".join(f"0.{i},{i},3\n" for i in range(1, 7)))
    insert, calls = Experiment.insert, []

    def interrupted_at_the_fourth(self: Experiment, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return insert(self, *args, **kwargs)

    monkeypatch.setattr(Experiment, "insert", interrupted_at_the_fourth)
    base = ["insert", "-n", "e", "--storage", "orchard.pkl", "--file", str(rows)]
    assert main(base) == 130
    assert "at least 3 of the 6 rows to record were recorded; run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(Experiment, "insert", insert)
    assert main(base) == 0
    assert "recorded 3 evaluated trials" in capsys.readouterr().out
    assert sorted(t.objective for t in exp.fetch_trials()) == [1, 2, 3, 4, 5, 6]
    rows.write_text("x,objective,epochs\n0.1,1,3\n0.2,2.5,3\n")  # another value at the same point: refused
    assert main(base) == 1 and "row 2 of" in capsys.readouterr().err


@pytest.mark.parametrize(("piped", "stored"), [
    ("x,objective,epochs\n0.25,1.5,3\n0.5,2,3\n", [(0.25, 1.5), (0.5, 2)]),
    ('\ufeff{"x": 0.25, "objective": 1.5}\n\n{"x": 0.75, "objective": 0.5}\n', [(0.25, 1.5), (0.75, 0.5)]),
])
def test_insert_file_dash_reads_the_rows_from_stdin(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, piped: str,
        stored: list[tuple[float, float]]) -> None:
    """`make_rows | orchard insert -n e --file -` said 'cannot read --file -: No such file or directory'."""
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="orchard.pkl")
    base = ["insert", "-n", "e", "--storage", "orchard.pkl", "--file", "-"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped.encode())))
    assert main(base) == 0
    assert f"recorded {len(stored)} evaluated trials" in capsys.readouterr().out
    assert sorted((t.params["x"], t.objective) for t in exp.fetch_trials()) == stored
    monkeypatch.setattr(sys, "stdin", io.StringIO("x,objective\n0.9,nan\n"))
    assert main(base) == 2 and "row 1 of stdin" in error_line(capsys.readouterr().err)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(base) == 2
    assert error_line(capsys.readouterr().err) == ("orchard: error: --file -: nothing came on stdin: did the "
                                                   "command before the pipe fail?; nothing was stored")
    assert len(exp.fetch_trials()) == 2


@pytest.mark.parametrize("command", [["list"], ["status"], ["info", "-n", "e"],
                                     ["plot", "regret", "-n", "e", "-o", "r.html"]])
def test_a_pickle_uri_naming_no_file_is_said_by_reading_commands(
        workdir: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """ORCHARD_STORAGE=pickle:// printed 'no experiments in  (the file does not exist)', exit 0."""
    for uri in ("pickle://", "pickle://?fsync=0"):
        assert main([*command, "--storage", uri]) == 2
        assert "names no file; use e.g. pickle://runs/orchard.pkl" in error_line(capsys.readouterr().err)


def test_a_pickle_uri_ending_in_a_slash_is_refused_instead_of_becoming_a_file_named_like_the_folder(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pickle://runs/ wrote the experiment into a file named runs (and runs.lock)."""
    assert main(["list", "--storage", "pickle://runs/"]) == 2
    said = error_line(capsys.readouterr().err)
    assert "names a folder; give a file in it, e.g. pickle://runs/orchard.pkl" in said
    with pytest.raises(orchard.ConfigurationError, match="names a folder"):
        orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="pickle://runs/?fsync=0")
    assert not (workdir / "runs").exists() and not (workdir / "runs.lock").exists()


@pytest.mark.parametrize(("signum", "code", "said"), [(signal.SIGTERM, 143, "orchard: stopped by SIGTERM"),
                                                      (signal.SIGHUP, 130, "orchard: interrupted")])
def test_sigterm_or_sighup_to_db_dump_leaves_no_temporary_file_and_says_so(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        signum: int, code: int, said: str) -> None:
    """Killed at once, db dump left DUMP.json.<hex>.tmp (as big as the dump) behind, and said nothing."""
    from orchard.cli import _dumps

    assert hunt("e", "--max-trials", "2") == 0
    write_into = _dumps._write_into

    def signalled_midway(handle: Any, *args: Any) -> None:
        handle.write("{")
        os.kill(os.getpid(), signum)  # handled before kill() returns
        write_into(handle, *args)

    monkeypatch.setattr(_dumps, "_write_into", signalled_midway)
    capsys.readouterr()
    assert main(["db", "dump", "-o", "d.json", "--storage", "orchard.pkl"]) == code
    assert capsys.readouterr().err.strip() == said
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("d.json")) == []
