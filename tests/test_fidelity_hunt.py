"""Checkpoint handoff: promoted trials resume from their parent's folder, under `hunt` and `workon`.

The script below refuses to run a promoted trial whose parent's checkpoint it
cannot find (exit 1, so the trial would be broken); it also checks that the
checkpoint is its parent's (same params, one rung down) and that the
``{trial.parent_working_dir}`` placeholder names the same folder as
``ORCHARD_PARENT_WORKING_DIR``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard.cli import main
from orchard.trial import TrialStatus

pytestmark = pytest.mark.slow

RESUME = r'''
import argparse, json, os, sys
import orchard
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float, required=True)
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--parent-dir", default="")
args = parser.parse_args()
parent, parent_dir = os.environ.get("ORCHARD_PARENT_TRIAL_ID"), os.environ.get("ORCHARD_PARENT_WORKING_DIR")
done = 0
if parent:
    path = os.path.join(parent_dir, "ckpt.json")
    if args.parent_dir != parent_dir or not os.path.exists(path):
        sys.exit(f"promoted from {parent} but no checkpoint at {path!r} (placeholder {args.parent_dir!r})")
    with open(path) as handle:
        state = json.load(handle)
    if state["trial"] != parent or state["x"] != args.x or state["epochs"] >= args.epochs:
        sys.exit(f"checkpoint {state} is not this trial's parent")
    done = state["epochs"]
elif args.parent_dir:
    sys.exit("a new trial was given a parent folder")
with open(os.path.join(os.environ["ORCHARD_WORKING_DIR"], "ckpt.json"), "w") as handle:
    json.dump({"trial": os.environ["ORCHARD_TRIAL_ID"], "x": args.x, "epochs": args.epochs}, handle)
orchard.report_results({"objective": (args.x - 0.3) ** 2 + 1.0 / args.epochs, "resumed_from": done})
'''


def assert_every_promotion_resumed(exp: orchard.Experiment, budget: int) -> None:
    trials = {t.id: t for t in exp.fetch_trials()}
    assert [t.status for t in trials.values()] == [TrialStatus.COMPLETED] * budget, \
        [t.error for t in trials.values() if t.error]
    promoted = [t for t in trials.values() if t.parent is not None]
    assert promoted, "nothing was promoted"
    for trial in promoted:
        assert trial.results["resumed_from"] == trials[trial.parent].params["epochs"]  # type: ignore[index]


def test_hunt_hands_each_promotion_its_parents_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "resume.py").write_text(RESUME)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("ORCHARD_")]:
        monkeypatch.delenv(key)
    assert main(["hunt", "-n", "mf", "--storage", "orchard.pkl", "--max-trials", "24", "--n-workers", "2",
                 "--algorithm", "asha", sys.executable, "resume.py", "--x~uniform(0, 1)",
                 "--epochs~fidelity(1, 9, base=3)", "--parent-dir={trial.parent_working_dir}"]) == 0
    assert_every_promotion_resumed(orchard.get_experiment("mf", storage="orchard.pkl"), 24)


def resuming_objective(x: float, epochs: int) -> dict[str, Any]:
    trial = orchard.current_trial()
    assert trial is not None and trial.working_dir is not None
    assert trial.params == {"x": x, "epochs": epochs}
    done = 0
    if trial.parent is not None:
        assert trial.parent_working_dir == os.path.join(os.path.dirname(trial.working_dir), trial.parent)
        done = int(Path(trial.parent_working_dir, "ckpt").read_text())
    Path(trial.working_dir, "ckpt").write_text(str(epochs))
    return {"objective": (x - 0.3) ** 2 + 1.0 / epochs, "resumed_from": done}


@pytest.mark.parametrize("executor", ["single", "joblib"])
def test_workon_objectives_read_the_parent_from_current_trial(tmp_path: Path, executor: str) -> None:
    exp = orchard.build_experiment("mf", space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"},
                                   algorithm="hyperband", storage=str(tmp_path / "o.pkl"), max_trials=30,
                                   working_dir=str(tmp_path / "runs"))
    exp.workon(resuming_objective, n_workers=1 if executor == "single" else 2, executor=executor,
               progress=False)
    assert_every_promotion_resumed(exp, 30)
    assert orchard.current_trial() is None


KILLS_ITS_WORKER = r'''
import os, signal, sys
import orchard
x, epochs = float(sys.argv[2].split("=")[1]), int(sys.argv[3].split("=")[1])
if os.environ.get("ORCHARD_PARENT_TRIAL_ID") and os.getppid() != int(sys.argv[1]):
    try:
        os.close(os.open(os.path.join(os.path.dirname(__file__), "killed"), os.O_CREAT | os.O_EXCL))  # once
        os.kill(os.getppid(), signal.SIGKILL)  # its worker dies mid-promotion
    except FileExistsError:
        pass
orchard.report_objective((x - 0.3) ** 2 + 1.0 / epochs)
'''


def test_a_worker_killed_mid_promotion_is_reported_as_such_and_the_hunt_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The error told a hunt to set trial_timeout "so it runs in a child process": its scripts already do."""
    (tmp_path / "kill.py").write_text(KILLS_ITS_WORKER)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("ORCHARD_")]:
        monkeypatch.delenv(key)
    command = ["hunt", "-n", "mf", "--storage", "orchard.pkl", "--max-trials", "12", "--n-workers", "2",
               "--executor", "process", "--algorithm", "asha", sys.executable, "kill.py", str(os.getpid()),
               "--x~uniform(0, 1)", "--epochs~fidelity(1, 9, base=3)"]
    assert main(command) != 0
    error = capsys.readouterr().err
    assert (tmp_path / "killed").exists() and "died under executor 'process'" in error
    assert "trial_timeout" not in error and "run again to resume" in error, error
    assert main(command) == 0
    trials = orchard.get_experiment("mf", storage="orchard.pkl").fetch_trials()
    assert sorted(t.status.value for t in trials) == ["completed"] * 12
    parents = [t.parent for t in trials if t.parent is not None]
    assert parents and len(parents) == len(set(parents))


def test_a_worker_with_its_own_working_dir_finds_the_parents_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCHARD_PARENT_WORKING_DIR named this worker's --working-dir/PARENT_ID, a folder that never existed."""
    (tmp_path / "resume.py").write_text(RESUME)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("ORCHARD_")]:
        monkeypatch.delenv(key)
    command = [sys.executable, "resume.py", "--x~uniform(0, 1)", "--epochs~fidelity(1, 9, base=3)",
               "--parent-dir={trial.parent_working_dir}"]
    first = ["--max-trials", "3", "--max-broken", "1", "--working-dir", "created", "--algorithm",
             "{asha: {sampler: random, rule: promotion}}"]  # 3 new points: the 4th trial is a promotion
    assert main(["hunt", "-n", "mf", "--storage", "orchard.pkl", *first, *command]) == 0
    assert main(["hunt", "-n", "mf", "--storage", "orchard.pkl", "--max-trials", "4",
                 "--working-dir", "joined", *command]) == 0
    assert_every_promotion_resumed(orchard.get_experiment("mf", storage="orchard.pkl"), 4)
