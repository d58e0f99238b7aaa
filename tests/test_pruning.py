"""Step-wise reports and pruning: in the worker's thread, in a timed child, in ask/tell, in scripts."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import orchard
from orchard.errors import ConfigurationError, InvalidReportError, OrchardError
from orchard.pruners import Verdict
from orchard.trial import TrialStatus
from tests.verdict_checks import assert_verdicts_recompute

SPACE = {"x": "uniform(0, 1)"}


def curve_objective(x: float) -> float:
    """Reports 10 steps of a curve whose level is x; stops when told."""
    for step in range(1, 11):
        orchard.report(x + 1.0 / step, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return x + 0.1


def stubborn_objective(x: float) -> float:
    """Reports 40 steps, never asks for the verdict, sleeps a little per step."""
    for step in range(1, 41):
        orchard.report(x + 1.0 / step, step)
        time.sleep(0.05)
    return x


def test_workon_in_thread_prunes_and_keeps_the_budget_exact(tmp_path: Path) -> None:
    exp = orchard.build_experiment("p-thread", space=SPACE, max_trials=12, storage=str(tmp_path / "db.pkl"),
                                   pruner={"median": {"min_trials": 2}}, seed=1)
    exp.workon(curve_objective, progress=False)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 12
    assert counts[TrialStatus.PRUNED] > 0
    pruned = assert_verdicts_recompute(exp.storage.fetch_trials(exp.id), exp.settings.pruner)
    assert all(t.verdict["pruner"] == "median" for t in pruned)
    completed = exp.storage.fetch_trials(exp.id, [TrialStatus.COMPLETED])
    assert all(len(t.reports) == 10 for t in completed)
    assert exp.best_trial is not None and exp.best_trial.status is TrialStatus.COMPLETED


def test_objective_that_raises_trial_pruned_before_any_report_is_broken(tmp_path: Path) -> None:
    def early(x: float) -> float:
        raise orchard.TrialPruned()

    exp = orchard.build_experiment("p-early", space=SPACE, max_trials=1, storage="memory://", max_broken=1)
    with pytest.raises(OrchardError):
        exp.workon(early, progress=False)
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.BROKEN
    assert "before reporting any value" in trial.error["message"]
    # Optuna's way to skip a configuration that cannot run; the message says Orchard's, checked next
    assert "by returning {'objective': 0.0, 'constraints': [1.0]} (infeasible)" in \
        trial.error["message"]

    def skips(x: float) -> Any:
        return {"objective": 0.0, "constraints": [1.0]} if x > 0.5 else x

    other = orchard.build_experiment("p-skip", space=SPACE, max_trials=12, storage="memory://", max_broken=1,
                                     seed=3)
    assert other.workon(skips, progress=False)["counts"]["completed"] == 12
    assert other.best_trial is not None and other.best_trial.params["x"] <= 0.5 < max(
        t.params["x"] for t in other.fetch_trials())


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_optunas_trial_pruned_raised_by_a_ported_objective_prunes_the_trial(tmp_path: Path,
                                                                            timeout: float | None) -> None:
    """An objective ported from Optuna that kept its own ``raise optuna.TrialPruned()`` broke its trials with
    the message "TrialPruned: ", and the third stopped the experiment ("Fix the objective")."""
    optuna = pytest.importorskip("optuna")

    def ported(x: float) -> float:
        for step in range(1, 4):
            orchard.report(x + 1.0 / step, step)
            if x > 0.5:  # its own early stop, as Optuna objectives often do
                raise optuna.TrialPruned(f"x={x} is hopeless")
        return x

    exp = orchard.build_experiment("p-optuna", space=SPACE, max_trials=8, storage=str(tmp_path / "db.pkl"),
                                   seed=1)
    exp.workon(ported, progress=False, trial_timeout=timeout)
    trials = exp.storage.fetch_trials(exp.id)
    assert {t.status for t in trials if t.params["x"] > 0.5} == {TrialStatus.PRUNED}
    assert {t.status for t in trials if t.params["x"] <= 0.5} == {TrialStatus.COMPLETED}
    assert all(t.objective == t.reports[0][1] for t in trials if t.status is TrialStatus.PRUNED)


def test_observe_with_optunas_trial_pruned_prunes_the_trial() -> None:
    """``exp.observe(trial, optuna.TrialPruned())``, as Optuna users tell a pruned trial, broke it with
    "objective must be a number, got TrialPruned"; another exception passed to observe now breaks the trial
    with its own type and message."""
    optuna = pytest.importorskip("optuna")
    exp = orchard.build_experiment("p-optuna-tell", space=SPACE, max_trials=5, storage="memory://")
    trial = exp.suggest()
    exp.report(trial, 0.7, 1)
    stored = exp.observe(trial, optuna.TrialPruned("hopeless"))
    assert stored.status is TrialStatus.PRUNED and stored.objective == 0.7
    for told in (optuna.TrialPruned, orchard.TrialPruned):  # the class, as `raise` takes it
        trial = exp.suggest()
        exp.report(trial, 0.6, 1)
        assert exp.observe(trial, told).status is TrialStatus.PRUNED
    other = exp.suggest()
    broken = exp.observe(other, ValueError("loss went NaN"))
    assert broken.status is TrialStatus.BROKEN
    assert (broken.error["type"], broken.error["message"]) == ("ValueError", "loss went NaN")


@pytest.mark.parametrize("value, step, words", [
    (math.nan, 1, "finite number"), (math.inf, 1, "finite number"), ("0.3", 1, "finite number"),
    (0.5, -1, "integer step >= 0"), (0.5, 1.5, "integer step >= 0"),
])
def test_bad_reports_are_refused_with_one_clear_line(value: Any, step: Any, words: str) -> None:
    exp = orchard.build_experiment("p-bad", space=SPACE, max_trials=1, storage="memory://")
    trial = exp.suggest()
    exp.report(trial, 0.9, 0)
    with pytest.raises(ValueError) as info:
        exp.report(trial, value, step)
    assert words in str(info.value) and "\n" not in str(info.value)
    stored = exp.storage.get_trial(trial.id)
    assert stored is not None and stored.reports == [(0, 0.9)]  # nothing lost


def test_a_step_going_backwards_is_refused_and_nothing_is_lost() -> None:
    exp = orchard.build_experiment("p-back", space=SPACE, max_trials=1, storage="memory://")
    trial = exp.suggest()
    exp.report(trial, 0.9, 1)
    exp.report(trial, 0.8, 2)
    with pytest.raises(InvalidReportError) as info:
        exp.report(trial, 0.7, 2)
    assert trial.id in str(info.value)
    assert isinstance(info.value, ValueError)  # what report() is documented to raise for a refused report
    stored = exp.storage.get_trial(trial.id)
    assert stored is not None and stored.reports == [(1, 0.9), (2, 0.8)]
    assert exp.observe(trial, 0.8).status is TrialStatus.COMPLETED


def test_ask_and_tell_prunes_on_the_verdict() -> None:
    exp = orchard.build_experiment("p-ask", space=SPACE, max_trials=3, storage="memory://",
                                   pruner={"threshold": {"upper": 1.0}})
    trial = exp.suggest()
    exp.report(trial, 0.5, 1)
    assert not exp.should_prune(trial)
    exp.report(trial, 3.0, 2)
    assert exp.should_prune(trial)
    stored = exp.observe(trial, 3.0)
    assert stored.status is TrialStatus.PRUNED and stored.objective == 3.0
    assert stored.verdict is not None and "above upper" in stored.verdict["reason"]
    mine = exp.suggest()
    exp.report(mine, 0.2, 1)
    assert exp.observe(mine, orchard.TrialPruned()).status is TrialStatus.PRUNED


def test_the_judge_hands_its_pruner_one_growing_list_per_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verdict handed the pruner new copies of every trial's reports, so it could only read them all
    again: a trial's n reports cost n² reads. One list per trial and reservation, appended to, lets the
    pruner read each report once (test_pruners.py counts those reads)."""
    exp = orchard.build_experiment("p-lists", space=SPACE, max_trials=3, storage="memory://",
                                   pruner={"median": {"min_trials": 1}})
    first, second = exp.suggest(), exp.suggest()
    pruner = exp._client_worker().judge.pruner
    handed: dict[str, list[Any]] = {first.id: [], second.id: []}
    judge = pruner.judge

    def spy(trial_id: str, own: Any, others: Any) -> Verdict:
        handed[trial_id].append(own)
        for tid, curve in others.items():
            handed[tid].append(curve)
        return judge(trial_id, own, others)

    monkeypatch.setattr(pruner, "judge", spy)
    for step in range(1, 6):
        exp.report(first, 1.0 + step, step)
        exp.report(second, 2.0 + step, step)
    for tid, value in ((first.id, 1.0), (second.id, 2.0)):
        assert len({id(curve) for curve in handed[tid]}) == 1, tid
        assert handed[tid][-1] == [(step, value + step) for step in range(1, 6)]


def test_a_report_from_a_thread_that_outlives_its_objective_says_what_to_do() -> None:
    """A thread the objective started (in a copy of its context) reporting after the objective returned was
    told to "observe each suggested trial once, and report before observing it": ask-and-tell words for
    a workon user, who never observes."""
    import contextvars
    import threading

    returned, errors = threading.Event(), []

    def late() -> None:
        returned.wait(10)
        try:
            orchard.report(0.1, 2)
        except OrchardError as err:
            errors.append(str(err))

    threads = []

    def objective(x: float) -> float:
        orchard.report(x, 1)
        threads.append(threading.Thread(target=contextvars.copy_context().run, args=(late,)))
        threads[-1].start()
        return x

    exp = orchard.build_experiment("p-late", space=SPACE, max_trials=1, storage="memory://")
    exp.workon(objective, progress=False)
    returned.set()
    threads[0].join(10)
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.COMPLETED and len(trial.reports) == 1
    (message,) = errors
    assert "before the objective returns" in message and "join" in message and "\n" not in message


@pytest.mark.parametrize("setting", ["pruned", "infeasible"])
def test_a_pruned_or_infeasible_trial_is_never_shown_as_best(setting: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """stats, workon's return and ``orchard status`` gave the lowest objective of any trial: a pruned
    one's last report, or one that broke a constraint, beside the id of the real best trial."""
    from orchard.cli import main

    storage = str(tmp_path / "db.pkl")
    options: dict[str, Any] = ({"pruner": {"threshold": {"lower": 0.0}}} if setting == "pruned"
                               else {"constraints": ["memory <= 1"]})
    exp = orchard.build_experiment("p-best", space=SPACE, max_trials=3, storage=storage, **options)
    for value in (2.0, 1.0):
        exp.observe(exp.suggest(), {"objective": value, "memory": 0.5})
    odd = exp.suggest()
    if setting == "pruned":
        exp.report(odd, -5.0, 1)
        assert exp.observe(odd, orchard.TrialPruned()).status is TrialStatus.PRUNED
    else:
        exp.observe(odd, {"objective": -5.0, "memory": 9.0})
    best = exp.best_trial
    assert best is not None and best.objective == 1.0
    assert (exp.stats["best_objective"], exp.stats["best_params"]) == (1.0, best.params)
    capsys.readouterr()
    assert main(["status", "-n", "p-best", "--storage", storage]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "best:" in line)
    assert line.split()[1] == "1" and best.id[:12] in line


def three_steps(x: float, epochs: int = 3, several: bool = False) -> Any:
    """Reports 3 steps (the last the end of the training); stops when told."""
    for step in range(1, epochs + 1):
        value = (x - 0.3) ** 2 + 1.0 / step
        orchard.report({"a": value, "b": x} if several else value, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return {"a": value, "b": x} if several else value


@pytest.mark.parametrize("several", [False, True])
@pytest.mark.parametrize("end", ["max_step", "fidelity"])
def test_a_training_that_ran_all_its_steps_is_completed_not_pruned(end: str, several: bool) -> None:
    """asha with 3 steps pruned trials at rung 3, their last step ('rank 3 of 3; the best 1 go on'):
    finished trainings ended pruned instead of completed, with one objective or several."""
    space = {**SPACE, "epochs": "fidelity(1, 3)"} if end == "fidelity" else SPACE
    exp = orchard.build_experiment(
        f"p-end-{end}-{several}", space=space, algorithm="random", max_trials=20, storage="memory://", seed=1,
        objectives={"a": "min", "b": "max"} if several else None,
        pruner={"asha": {"max_step": 3}} if end == "max_step" else "asha")
    exp.workon(functools.partial(three_steps, several=several))
    trials = exp.fetch_trials()
    assert any(t.status is TrialStatus.PRUNED for t in trials)  # rung 1 still prunes
    assert all(t.status is TrialStatus.COMPLETED for t in trials if len(t.reports) == 3)


@pytest.mark.parametrize("pruner", ["asha", "median"])
def test_a_trial_of_a_multi_fidelity_algorithm_is_never_pruned_at_the_last_step_of_its_fidelity(
    tmp_path: Path, pruner: str,
) -> None:
    """algorithm='asha' runs trials at 1, 3, 9 and 27 epochs; its pruner took 27 as every trial's last step
    and pruned 9 of 40 trials at their own last step (a 1-epoch trial at step 1): each lost its result at
    its fidelity, so asha could not promote it, and stopping it saved nothing."""
    exp = orchard.build_experiment(f"p-fid-{pruner}", space={**SPACE, "epochs": "fidelity(1, 27)"},
                                   algorithm="asha", pruner=pruner, max_trials=40, seed=1,
                                   storage=str(tmp_path / "db.pkl"))

    def train(x: float, epochs: int) -> float:
        for step in range(1, epochs + 1):
            orchard.report(x + 1.0 / step, step)
            if orchard.should_prune():
                raise orchard.TrialPruned()
        return x + 1.0 / epochs

    exp.workon(train, progress=False)
    trials = exp.storage.fetch_trials(exp.id)
    assert [t for t in trials if t.status is TrialStatus.PRUNED and t.reports[-1][0] >= t.params["epochs"]] == []
    assert {t.params["epochs"] for t in trials if t.status is TrialStatus.COMPLETED} == {1, 3, 9, 27}


def test_a_number_reported_for_one_max_objective_is_judged_in_its_direction() -> None:
    """objectives={"accuracy": "max"} with orchard.report(accuracy, step): the better trials were pruned."""
    exp = orchard.build_experiment("p-max", space=SPACE, max_trials=4, storage="memory://",
                                   objectives={"accuracy": "max"}, pruner={"median": {"min_trials": 1}})
    first = exp.suggest()
    exp.report(first, 0.5, 1)
    exp.observe(first, {"accuracy": 0.5})
    better, worse, named = exp.suggest(), exp.suggest(), exp.suggest()
    exp.report(better, 0.95, 1)
    exp.report(worse, 0.1, 1)
    exp.report(named, {"accuracy": 0.95}, 1)
    assert (exp.should_prune(better), exp.should_prune(worse), exp.should_prune(named)) == (False, True, False)
    assert [exp.storage.get_trial(t.id).reports for t in (better, named)] == [[(1, -0.95)]] * 2  # type: ignore[union-attr]


def test_hunt_says_how_many_trials_were_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Its last line said '0 completed, 0 broken' for a budget spent on pruned trials."""
    from orchard.cli import main

    script = tmp_path / "train.py"
    script.write_text("import sys, orchard\norchard.report(5.0, step=1)\nsys.exit(0 if orchard.should_prune() else 1)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["hunt", "-n", "p-said", "--storage", "db.pkl", "--max-trials", "2", "--pruner",
                 "{threshold: {upper: 1.0}}", sys.executable, str(script), "--x~uniform(0, 1)"]) == 0
    assert "experiment 'p-said': 0 completed, 2 pruned, 0 broken" in capsys.readouterr().out


def test_a_verdict_on_a_released_attempt_does_not_prune_the_next_one() -> None:
    """Suggested again after a release, the trial was 'pruned' before any report of the new attempt, and
    recorded pruned on a verdict citing a report it no longer held (its result 0.5 thrown away)."""
    exp = orchard.build_experiment("p-again", space=SPACE, max_trials=1, storage="memory://",
                                   pruner={"threshold": {"upper": 1.0}})
    trial = exp.suggest()
    exp.report(trial, 5.0, 1)
    assert exp.should_prune(trial)
    exp.release(trial)
    again = exp.suggest()
    assert again.id == trial.id and not exp.should_prune(again)
    exp.report(again, 0.5, 1)
    assert not exp.should_prune(again)
    assert exp.observe(again, 0.5).status is TrialStatus.COMPLETED


def test_report_outside_a_trial_says_how_to_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHARD_REPORT_PATH", raising=False)
    with pytest.raises(RuntimeError, match="needs a running trial"):
        orchard.report(0.1, 1)
    assert orchard.should_prune() is False


def test_pruner_settings_are_checked_before_anything_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "db.pkl"
    with pytest.raises(ConfigurationError, match="unknown pruner 'meadian'"):
        orchard.build_experiment("p-cfg", space=SPACE, storage=str(path), pruner="meadian")
    assert orchard.get_storage(str(path)).get_experiment("p-cfg") is None
    orchard.build_experiment("p-cfg", space=SPACE, storage=str(path), pruner="median")
    with pytest.raises(orchard.ExperimentConflictError, match="pruner"):
        orchard.build_experiment("p-cfg", space=SPACE, storage=str(path), pruner="asha")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="timed evaluations fork")
def test_timed_child_that_ignores_the_verdict_is_stopped_and_recorded_pruned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchard.objective

    monkeypatch.setattr(orchard.objective, "PRUNE_GRACE", 0.5)
    exp = orchard.build_experiment("p-child", space=SPACE, max_trials=4, storage=str(tmp_path / "db.pkl"),
                                   pruner={"threshold": {"upper": 0.0}}, seed=3)
    started = time.monotonic()
    exp.workon(stubborn_objective, trial_timeout=60, progress=False)
    took = time.monotonic() - started
    trials = exp.storage.fetch_trials(exp.id)
    assert [t.status for t in trials] == [TrialStatus.PRUNED] * 4
    assert all(len(t.reports) < 40 for t in trials)  # stopped, not run to the end
    assert took < 4 * (0.5 + 1.5)  # each one stopped within the grace (2 s of the 40 x 0.05 s run)
    assert_verdicts_recompute(exp.storage.fetch_trials(exp.id), exp.settings.pruner)


def diverges_then_recovers(x: float, answers: str) -> float:
    """Above threshold 1.5 at step 1 only; asks for the verdict once, after the last report."""
    for step in range(1, 6):
        orchard.report(2.0 if step == 1 else x, step)
    with open(answers, "a") as out:
        out.write(f"{orchard.should_prune()}\n")
    if orchard.should_prune():
        raise orchard.TrialPruned()
    return x


def reports_from_a_thread(x: float, answers: str) -> float:
    """Reports each epoch from a thread started in a copy of its context (as docs/pruning.md shows), and
    asks for the verdict in its own thread (above threshold 1.5 from step 1)."""
    import contextvars
    import threading

    for step in range(1, 6):
        thread = threading.Thread(target=contextvars.copy_context().run, args=(orchard.report, 2.0 + x, step))
        thread.start()
        thread.join()
        with open(answers, "a") as out:
            out.write(f"{step}\n")
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return x


def two_trials_under_a_threshold(objective: Any, where: str, tmp_path: Path) -> tuple[Any, list[str]]:
    """The experiment after two trials of ``objective(x, answers)`` under a threshold of 1.5 (in the worker's
    thread, or a timed child), and the lines the objective wrote to ``answers``."""
    exp = orchard.build_experiment("p-answers", space=SPACE, max_trials=2, storage=str(tmp_path / "db.pkl"),
                                   pruner={"threshold": {"upper": 1.5}}, seed=3)
    answers = tmp_path / "answers.txt"
    exp.workon(functools.partial(objective, answers=str(answers)),
               trial_timeout=60 if where == "timed child" else None, progress=False)
    return exp, answers.read_text().split()


@pytest.mark.parametrize("where", ["thread", "timed child"])
def test_a_verdict_on_a_report_made_from_a_thread_is_seen_by_the_objective(where: str, tmp_path: Path) -> None:
    """The thread's report got a "prune" verdict, but orchard.should_prune() in the objective's own thread
    answered False: the training ran all its epochs and was then recorded pruned, its result dropped."""
    exp, epochs = two_trials_under_a_threshold(reports_from_a_thread, where, tmp_path)
    assert epochs == ["1", "1"]  # each training stopped after its first epoch
    assert [len(t.reports) for t in exp.storage.fetch_trials(exp.id, [TrialStatus.PRUNED])] == [1, 1]


@pytest.mark.parametrize("where", ["thread", "timed child"])
def test_a_prune_verdict_stands_for_the_later_reports_of_the_trial(where: str, tmp_path: Path) -> None:
    """A later report judged "go on" made should_prune() False: the objective went on to its end and
    returned, and its trial was recorded pruned anyway, its result dropped (in the thread and a child)."""
    exp, answers = two_trials_under_a_threshold(diverges_then_recovers, where, tmp_path)
    assert answers == ["True", "True"]
    trials = exp.storage.fetch_trials(exp.id)
    assert [t.status for t in trials] == [TrialStatus.PRUNED] * 2
    assert all(t.verdict["step"] == 1 and len(t.reports) == 5 for t in trials)
    assert_verdicts_recompute(trials, exp.settings.pruner)


def diverges(x: float, bad: float) -> float:
    """A training whose loss turns ``bad`` (NaN, infinite) at step 3, asking for the verdict at each report."""
    for step in range(1, 6):
        orchard.report(x if step < 3 else bad, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return x


@pytest.mark.parametrize("where", ["thread", "timed child"])
@pytest.mark.parametrize("pruner, bad", [({"threshold": {"upper": 10.0}}, math.nan), ("median", math.inf),
                                         ({"asha": {"min_step": 3}}, -math.inf)])
def test_a_loss_that_turns_nan_or_infinite_is_pruned_not_broken(pruner: Any, bad: float, where: str,
                                                                 tmp_path: Path) -> None:
    """A diverged training (a NaN or infinite loss) raised ValueError in the objective: each such trial
    broke, and three of them stopped the experiment (max_broken=3), under the threshold pruner documented
    for "a loss that diverges". It is pruned at its last finite report, as Optuna's pruners do."""
    exp = orchard.build_experiment("p-nan", space=SPACE, max_trials=4, storage=str(tmp_path / "db.pkl"),
                                   pruner=pruner)
    exp.workon(functools.partial(diverges, bad=bad), trial_timeout=60 if where == "timed child" else None,
               progress=False)
    trials = exp.storage.fetch_trials(exp.id)
    assert [t.status for t in trials] == [TrialStatus.PRUNED] * 4
    assert all(t.reports == [(1, t.params["x"]), (2, t.params["x"])] and t.objective == t.params["x"]
               for t in trials)
    assert all(t.verdict["step"] == 3 and "not a finite number" in t.verdict["reason"] for t in trials)
    assert_verdicts_recompute(trials, exp.settings.pruner)


@pytest.mark.parametrize("language", ["python", "sh"])
def test_a_script_whose_loss_turns_nan_is_pruned_under_hunt(language: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """orchard.report(nan) raised ValueError in the script (every trial broken, the hunt stopped at
    max_broken), and a shell script's NaN line was skipped as not a report, the training run to its end."""
    from orchard.cli import main

    if language == "python":
        script = tmp_path / "train.py"
        script.write_text("import sys, orchard\nfor step, loss in enumerate([0.5, 0.4, float('nan')], 1):\n"
                          "    orchard.report(loss, step=step)\n    if orchard.should_prune():\n"
                          "        sys.exit(0)\nsys.exit(3)\n")
        command = [sys.executable, str(script)]
    else:
        script = tmp_path / "train.sh"
        script.write_text('for line in \'"step": 1, "objective": 0.5\' \'"step": 2, "objective": 0.4\' '
                          '\'"step": 3, "objective": NaN\'; do\n  echo "{$line}" >> "$ORCHARD_REPORT_PATH"\n'
                          "done\n")  # exits 0 without a result: a verdict to prune, or a broken trial
        command = ["sh", str(script)]
    monkeypatch.chdir(tmp_path)
    assert main(["hunt", "-n", "p-nan-hunt", "--storage", "db.pkl", "--max-trials", "2", "--pruner",
                 "{threshold: {upper: 1.0}}", *command, "--x~uniform(0, 1)"]) == 0
    assert "experiment 'p-nan-hunt': 0 completed, 2 pruned, 0 broken" in capsys.readouterr().out
    exp = orchard.get_experiment("p-nan-hunt", storage="db.pkl")
    assert all(t.reports == [(1, 0.5), (2, 0.4)] and t.verdict["step"] == 3 for t in exp.fetch_trials())


def test_a_nan_report_in_ask_and_tell_prunes_and_a_first_or_unjudged_one_is_refused() -> None:
    exp = orchard.build_experiment("p-nan-ask", space=SPACE, max_trials=3, storage="memory://", pruner="median")
    trial = exp.suggest()
    with pytest.raises(InvalidReportError, match="not a finite number"):  # nothing to be pruned at
        exp.report(trial, math.nan, 1)
    exp.report(trial, 0.5, 1)
    exp.report(trial, math.nan, 2)
    assert exp.should_prune(trial)
    stored = exp.observe(trial, math.nan)
    assert stored.status is TrialStatus.PRUNED and stored.reports == [(1, 0.5)] and stored.objective == 0.5
    unpruned = orchard.build_experiment("p-nan-none", space=SPACE, max_trials=1, storage="memory://")
    trial = unpruned.suggest()
    unpruned.report(trial, 0.5, 1)
    with pytest.raises(InvalidReportError, match="not a finite number"):  # no pruner to stop it
        unpruned.report(trial, math.nan, 2)
    unpruned.release(trial)


@pytest.mark.parametrize("objectives, good, bad", [
    ({"accuracy": "max"}, 0.5, math.nan),
    ({"accuracy": "max"}, {"accuracy": 0.5}, {"accuracy": -math.inf}),
    ({"error": "min", "accuracy": "max"}, {"error": 0.5, "accuracy": 0.5}, {"error": 0.4, "accuracy": math.nan}),
])
def test_a_nan_report_with_declared_objectives_prunes(objectives: dict[str, str], good: Any, bad: Any) -> None:
    exp = orchard.build_experiment("p-nan-objectives", space=SPACE, max_trials=1, storage="memory://",
                                   objectives=objectives, pruner="asha")
    trial = exp.suggest()
    exp.report(trial, good, 1)
    exp.report(trial, bad, 2)
    assert exp.should_prune(trial)
    stored = exp.observe(trial, orchard.TrialPruned())
    assert stored.status is TrialStatus.PRUNED and len(stored.reports) == 1


def test_ask_and_tell_and_a_report_in_the_thread_agree_on_a_prune_verdict() -> None:
    exp = orchard.build_experiment("p-agree", space=SPACE, max_trials=1, storage="memory://",
                                   pruner={"threshold": {"upper": 1.5}})
    trial = exp.suggest()
    exp.report(trial, 2.0, 1)
    exp.report(trial, 0.5, 2)
    assert exp.should_prune(trial)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="timed evaluations fork")
def test_a_timed_child_of_a_worker_run_inside_a_trial_reports_its_own_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workon in a script run by `orchard hunt` inherits that trial's ORCHARD_TRIAL_ID: its timed child's
    report lines named the outer trial, and its worker skipped them all as another trial's."""
    monkeypatch.setenv("ORCHARD_TRIAL_ID", "the-outer-hunt-trial")
    exp = orchard.build_experiment("p-nested", space=SPACE, max_trials=1, storage=str(tmp_path / "db.pkl"))
    exp.workon(curve_objective, trial_timeout=60, progress=False)
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.COMPLETED and len(trial.reports) == 10


def test_a_garbage_line_in_the_report_file_is_skipped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from orchard.verdicts import ReportFollower

    exp = orchard.build_experiment("p-garbage", space=SPACE, max_trials=1, storage="memory://")
    trial = exp.suggest()
    worker = exp._client_worker()
    reports, verdict = str(tmp_path / "r.jsonl"), str(tmp_path / "v.json")
    with caplog.at_level(logging.WARNING), \
            ReportFollower(worker.judge, trial.id, reports, verdict, stop=lambda: None, grace=1.0), \
            open(reports, "a") as handle:
        handle.write('{"step": 1, "objective": 0.5}\nnot json at all\n{"step": 2}\n'
                     '{"step": 3, "objective": "x"}\n{"step": 4, "objective": 0.25}\n')
    stored = exp.storage.get_trial(trial.id)
    assert stored is not None and stored.reports == [(1, 0.5), (4, 0.25)]
    assert sum("skipped a line" in r.message for r in caplog.records) == 3
    assert json.loads(Path(verdict).read_text()) == {"step": 4, "prune": False}


def test_a_report_file_full_of_junk_gets_a_bounded_number_of_warnings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each skipped or refused line was one warning: a script writing 1 MB of binary junk there (4,149 lines)
    made its worker print 1.5 MB of warnings, and one rewriting the file whole at each step (3,000 steps)
    5.9 MB, with one storage write per line read again. The first few problems are shown, then one line
    says how many lines were skipped and refused; old steps are refused without a storage write."""
    followed = _followed(tmp_path, "p-junk")
    judged: list[Any] = []
    judge = followed.follower.judge
    followed.follower.judge = lambda *args: judged.append(args) or judge(*args)
    with caplog.at_level(logging.WARNING), followed.follower, open(followed.reports, "a") as handle:
        handle.write('{"step": 5, "objective": 0.5}\n' + "junk\n" * 500 + '{"step": 1, "objective": 0.5}\n' * 500
                     + '{"step": 6, "objective": 0.25}\n')
    stored = followed.exp.storage.get_trial(followed.trial_id)
    assert stored is not None and stored.reports == [(5, 0.5), (6, 0.25)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 20, len(warnings)
    assert "500 lines" in warnings[-1] and "500 refused" in warnings[-1], warnings[-1]
    assert str(followed.reports) in warnings[-1]
    assert len(judged) == 2  # a step not after the last stored one is refused without a storage write


class _Followed(NamedTuple):
    exp: Any
    trial_id: str
    reports: Path
    verdict: Path
    follower: Any  # orchard.verdicts.ReportFollower, imported where used


def _followed(tmp_path: Path, name: str) -> _Followed:
    """A suggested trial of a new one-trial experiment, its report and verdict files prepared, and the
    follower (entered by the test) that stores the trial's reports and writes its verdicts."""
    from orchard.verdicts import ReportFollower

    exp = orchard.build_experiment(name, space=SPACE, max_trials=1, storage="memory://")
    trial = exp.suggest()
    reports, verdict = tmp_path / "r.jsonl", tmp_path / "v.json"
    ReportFollower.prepare(str(reports), str(verdict))
    follower = ReportFollower(exp._client_worker().judge, trial.id, str(reports), str(verdict),
                              stop=lambda: None, grace=1.0)
    return _Followed(exp, trial.id, reports, verdict, follower)


def test_the_last_report_line_of_a_script_that_ends_without_a_newline_is_stored(tmp_path: Path) -> None:
    """A script's last report written without a newline (printf '{...}' >> "$ORCHARD_REPORT_PATH") was
    dropped without a word when the script ended: a line is complete once its writer is gone."""
    followed = _followed(tmp_path, "p-unended")
    with followed.follower:
        followed.reports.write_text('{"step": 1, "objective": 0.5}\n{"step": 2, "objective": 0.4}')
    stored = followed.exp.storage.get_trial(followed.trial_id)
    assert stored is not None and stored.reports == [(1, 0.5), (2, 0.4)]


def test_a_script_whose_step_goes_backwards_is_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a script, orchard.report() waited for a verdict on a step at least its own: a step not after the
    last one found the last one's verdict and returned, its report refused by the worker and lost without
    a word to the script (a step counter reset each epoch lost every epoch but the first). From several
    threads, one thread took another's refusal, or waited 30 s for a verdict overwritten by a lower step's."""
    import importlib
    import threading

    module = importlib.import_module("orchard.report")  # orchard.report is the function
    followed = _followed(tmp_path, "p-backwards")
    monkeypatch.setenv(module.REPORT_ENV, str(followed.reports))
    monkeypatch.setenv(module.VERDICT_ENV, str(followed.verdict))
    monkeypatch.setattr(module, "VERDICT_WAIT", 5.0)
    returned: list[int] = []

    def reporting(steps: range) -> None:
        for step in steps:
            try:
                orchard.report(1.0 / (step + 1), step)
                returned.append(step)
            except ValueError as err:
                assert f"report step {step} is not after" in str(err)

    with followed.follower:
        orchard.report(0.5, 5)
        for step in (3, 5):
            with pytest.raises(InvalidReportError, match=f"report step {step} is not after the last reported step 5"):
                orchard.report(0.4, step)  # the error an in-thread report() raises (a script raised ValueError)
        started = time.monotonic()
        threads = [threading.Thread(target=reporting, args=(range(6 + k, 200, 4),)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.monotonic() - started < 5.0  # no thread waited out VERDICT_WAIT
    stored = followed.exp.storage.get_trial(followed.trial_id)
    assert stored is not None
    assert sorted(returned) == [step for step, _ in stored.reports][1:]  # returned exactly when stored


def test_a_report_file_shared_with_other_trials_keeps_their_reports_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripts that made their report file a link to one file (to collect every curve in one place), or to
    another trial's, had each trial store the reports of all: three trials held the first one's curve.
    orchard.report() names its trial in the line; a line of another trial is skipped."""
    import importlib

    module = importlib.import_module("orchard.report")  # orchard.report is the function
    followed = _followed(tmp_path, "p-shared")
    monkeypatch.setenv(module.REPORT_ENV, str(followed.reports))
    monkeypatch.delenv(module.VERDICT_ENV, raising=False)  # no verdict awaited: written by the test's "scripts"
    with followed.follower:
        monkeypatch.setenv("ORCHARD_TRIAL_ID", "another-trial")
        orchard.report(0.9, 1)
        monkeypatch.setenv("ORCHARD_TRIAL_ID", followed.trial_id)
        orchard.report(0.5, 2)
        with open(followed.reports, "a") as handle:  # another language's line names no trial: taken
            handle.write('{"step": 3, "objective": 0.25}\n{"step": 4, "objective": 0.2, "trial": 12}\n')
    stored = followed.exp.storage.get_trial(followed.trial_id)
    assert stored is not None and stored.reports == [(2, 0.5), (3, 0.25)]
    assert followed.follower.skipped == 2


def test_a_script_waits_milliseconds_for_each_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """orchard.report() in a script took 12-13 ms a report, 2 minutes for 10,000, most of it waiting: the
    follower read the file every 10 ms and the script looked for its verdict at 1, 3, 7, 15, 35 ms...
    The follower reads again within a millisecond while lines come, the script looks every 2 ms: 1.3-3.5 ms
    a report here (median; quiet or under 3 busy loops), 8 ms before. Wall time cannot tell the two apart on a
    loaded machine (batch medians 4-16 ms for either at load 10; a 6 ms bound failed in CI), so the waits
    themselves are asserted: what the follower and the script sleep between looks, which no load changes."""
    import importlib
    import threading

    import orchard.verdicts as verdicts

    module = importlib.import_module("orchard.report")  # orchard.report is the function
    follower_waits: list[tuple[float, int]] = []  # each wait of the follower, and the lines it had read then
    script_pauses: list[float] = []
    clock, sleep, script = verdicts.SYSTEM_CLOCK, time.sleep, threading.get_ident()

    class RecordingClock:
        def wait(self, event: threading.Event, seconds: float) -> bool:
            follower_waits.append((seconds, followed.follower._taken))
            return clock.wait(event, seconds)

    def recorded_sleep(seconds: float) -> None:
        if threading.get_ident() == script:
            script_pauses.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(verdicts, "SYSTEM_CLOCK", RecordingClock())
    monkeypatch.setattr(module.time, "sleep", recorded_sleep)
    followed = _followed(tmp_path, "p-latency")
    monkeypatch.setenv(module.REPORT_ENV, str(followed.reports))
    monkeypatch.setenv(module.VERDICT_ENV, str(followed.verdict))
    with followed.follower:
        for step in range(50):
            orchard.report(1.0 / (step + 1), step)
            assert len(followed.exp.storage.get_trial(followed.trial_id).reports) == step + 1  # stored, judged
    assert max(script_pauses, default=0.0) <= 0.002, f"the script paused {max(script_pauses) * 1000:.0f} ms"
    after_lines = [seconds for (_, before), (seconds, taken) in zip(follower_waits, follower_waits[1:])
                   if taken > before]  # the wait after each read that found lines (one read may take two)
    assert len(after_lines) >= 10 and max(after_lines) <= 0.001, \
        f"after a read that found lines the follower waited {sorted(set(after_lines))} s"


@pytest.mark.parametrize("cleanup", ["deleted", "replaced", "truncated"])
def test_a_report_file_the_script_deletes_or_replaces_loses_no_report(
        cleanup: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A script cleaning its folder mid-training lost the next reports and waited 30 s for each verdict."""
    exp, trial_id, reports, verdict, follower = _followed(tmp_path, "p-cleanup")
    with caplog.at_level(logging.WARNING), follower:
        with open(reports, "a") as handle:
            handle.write('{"step": 1, "objective": 0.5}\n{"step": 2, "objective": 0.4}\n')
        while cleanup == "truncated" and _verdict_step(verdict) != 2:  # truncation destroys what is unread
            time.sleep(0.005)
        if cleanup == "deleted":
            reports.unlink()
        elif cleanup == "replaced":
            (tmp_path / "other").write_text("")
            os.replace(tmp_path / "other", reports)
        with open(reports, "w" if cleanup == "truncated" else "a") as handle:
            handle.write('{"step": 3, "objective": 0.3}\n')
    stored = exp.storage.get_trial(trial_id)
    assert stored is not None and stored.reports == [(1, 0.5), (2, 0.4), (3, 0.3)]
    assert json.loads(verdict.read_text()) == {"step": 3, "prune": False}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("odd", ["a link to /dev/zero", "a FIFO"])
def test_a_report_file_the_script_makes_no_regular_file_is_not_read(
        odd: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A link to /dev/zero was read without end when the trial ended (its worker hung); a FIFO blocked it."""
    exp, trial_id, reports, verdict, follower = _followed(tmp_path, "p-odd")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), follower:
        with open(reports, "a") as handle:
            handle.write('{"step": 1, "objective": 0.5}\n')
        while _verdict_step(verdict) != 1:
            time.sleep(0.005)
        reports.unlink()
        if odd == "a FIFO":
            os.mkfifo(reports)
        else:
            reports.symlink_to("/dev/zero")
        time.sleep(0.3)  # the follower looks every FOLLOW_INTERVAL: let it meet the odd file while it runs
    assert time.monotonic() - started < 10
    stored = exp.storage.get_trial(trial_id)
    assert stored is not None and stored.reports == [(1, 0.5)]
    assert sum("is not a regular file" in r.message for r in caplog.records) == 1


def test_an_overlong_report_line_is_skipped_unread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A child writing 400 MB without a newline took its worker to 900 MB (10 GB would kill it)."""
    import tracemalloc

    limit = 1 << 20  # orchard.verdicts.MAX_REPORT_LINE
    exp, trial_id, reports, _, follower = _followed(tmp_path, "p-long")
    piece, rest = b"1," * limit, b'1]\n{"step": 1, "objective": 0.5}\n' + b"x" * (limit + 1)
    tracemalloc.start()  # after making the pieces written: what is measured is the follower's
    try:
        with caplog.at_level(logging.WARNING), follower, open(reports, "ab") as handle:
            for _ in range(3):
                handle.write(piece)  # one line of 6 MB, written in pieces
                handle.flush()
            handle.write(rest)
            handle.write(b'\n{"step": 2, "objective": 0.4}\n')
            handle.flush()
            peak_before_exit = tracemalloc.get_traced_memory()[1]
        peak = max(peak_before_exit, tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    stored = exp.storage.get_trial(trial_id)
    assert stored is not None and stored.reports == [(1, 0.5), (2, 0.4)]
    assert follower.skipped == 2 and sum("longer than" in r.message for r in caplog.records) == 2
    assert peak < 8 * limit  # a line is never held whole (4.2 MB here; 21 MB when it was read whole)


def _verdict_step(verdict: Path) -> int | None:
    try:
        return int(json.loads(verdict.read_text())["step"])
    except (OSError, ValueError, KeyError):  # not written yet (it is replaced whole)
        return None


SCRIPT = """
import sys, time
import orchard
x = float(sys.argv[1].split("=")[1])
for step in range(1, 31):
    orchard.report(x + 1.0 / step, step)
    if "--stubborn" in sys.argv:
        time.sleep(0.3)  # a long epoch that never asks for the verdict
    elif orchard.should_prune():
        sys.exit(0)
    time.sleep(0.02)
orchard.report_objective(x)
"""


def _hunt(uri: str, script: Path, name: str, *extra: str, budget: int = 16) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "orchard", "hunt", "-n", name, "--storage", uri, "--max-trials", str(budget),
         "--n-workers", "2", "--pruner", "{asha: {min_step: 1, reduction_factor: 3}}", "--seed", "0",
         "--working-dir", str(script.parent / "runs"),
         sys.executable, str(script), "--x~uniform(0, 1)", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_two_concurrent_hunts_prune_scripts_exactly(backend: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    """2 hunts x 2 workers, scripts reporting 30 steps: budget exact, verdicts recompute, reports kept."""
    from tests.conftest import backend_uri

    uri = backend_uri(backend, request, tmp_path)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    hunts = [_hunt(uri, script, "p-hunt"), _hunt(uri, script, "p-hunt")]
    for hunt in hunts:
        out, _ = hunt.communicate(timeout=240)
        assert hunt.returncode == 0, out.decode()[-2000:]
    exp = orchard.get_experiment("p-hunt", storage=uri)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 16
    assert counts[TrialStatus.PRUNED] > 0 and counts[TrialStatus.RESERVED] == 0
    assert_verdicts_recompute(exp.storage.fetch_trials(exp.id), exp.settings.pruner)
    for trial in exp.storage.fetch_trials(exp.id, [TrialStatus.COMPLETED]):
        assert [step for step, _ in trial.reports] == list(range(1, 31))  # no report lost
    for trial in exp.storage.fetch_trials(exp.id, [TrialStatus.PRUNED]):
        steps = [step for step, _ in trial.reports]
        assert steps == list(range(1, len(steps) + 1))


@pytest.mark.slow
def test_a_script_that_ignores_the_verdict_is_stopped_within_the_grace(tmp_path: Path) -> None:
    uri = str(tmp_path / "db.pkl")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    hunt = _hunt(uri, script, "p-stubborn", "--stubborn", budget=6)
    out, _ = hunt.communicate(timeout=240)
    assert hunt.returncode == 0, out.decode()[-2000:]
    exp = orchard.get_experiment("p-stubborn", storage=uri)
    pruned = exp.storage.fetch_trials(exp.id, [TrialStatus.PRUNED])
    assert pruned
    grace_epochs = 5.0 / 0.3 + 3  # the 5 s grace, in epochs of 0.3 s (+ the epoch in flight and slack)
    for trial in pruned:
        # pruned at step s, the script goes on for the grace, then is stopped; pruned at rung 27 of
        # 30 epochs it may rightly end on its own within the grace (3 epochs later: seen once on CI)
        rung = Verdict.from_dict(trial.verdict).step
        assert len(trial.reports) - rung <= grace_epochs
        if rung + grace_epochs < 30:
            assert len(trial.reports) < 30, "a stubborn script ran to its end after a prune verdict"


KILLED_WORKER = """
import sys, time
import orchard
marker = sys.argv[2]

def train(x):
    for step in range(1, 11):
        orchard.report(x + 1.0 / step, step)
        if step == 5 and marker != "-":
            open(marker, "w").close()
            time.sleep(600)  # killed here
    return x

exp = orchard.build_experiment("p-kill", space={"x": "uniform(0, 1)"}, max_trials=1, storage=sys.argv[1],
                               heartbeat=0.5, pruner="median")
exp.workon(train, progress=False)
"""


@pytest.mark.slow
def test_reports_of_a_worker_killed_mid_training_survive_and_the_trial_is_taken_over(tmp_path: Path) -> None:
    import signal

    uri, marker = str(tmp_path / "db.pkl"), tmp_path / "at-step-5"
    script = tmp_path / "worker.py"
    script.write_text(KILLED_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    victim = subprocess.Popen([sys.executable, str(script), uri, str(marker)], env=env)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and victim.poll() is None, "the worker never reached step 5"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    exp = orchard.get_experiment("p-kill", storage=uri)
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.RESERVED
    assert [step for step, _ in trial.reports] == [1, 2, 3, 4, 5]  # every report stored before the kill
    survivor = subprocess.run([sys.executable, str(script), uri, "-"], env=env, timeout=120, check=False)
    assert survivor.returncode == 0
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.COMPLETED and trial.attempts >= 1
    assert [step for step, _ in trial.reports] == list(range(1, 11))  # the new attempt's whole curve


def _curve_for_pool(x: float, started: str) -> float:
    """Module-level (picklable for loky): 20 steps of a curve whose level is x.

    Each trial first waits (60 s at most) until two pool processes have started one: loky starts
    its workers one after another, and on busy cores the first could otherwise run all 24 alone.
    """
    markers = Path(started)
    (markers / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(markers.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    for step in range(1, 21):
        orchard.report(x + 1.0 / step, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return x + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_workon_with_four_processes_prunes_with_an_exact_budget(backend: str, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    """4 loky workers report 20 steps each: completed + pruned = max_trials, verdicts recompute, reports kept."""
    from tests.conftest import backend_uri

    (tmp_path / "started").mkdir()

    uri = backend_uri(backend, request, tmp_path)
    exp = orchard.build_experiment("p-workon", space=SPACE, max_trials=24, storage=uri, seed=5,
                                   pruner={"asha": {"min_step": 1, "reduction_factor": 3}})
    curve = functools.partial(_curve_for_pool, started=str(tmp_path / "started"))
    exp.workon(curve, n_workers=4, progress=False)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 24
    assert counts[TrialStatus.PRUNED] > 0 and counts[TrialStatus.RESERVED] == 0
    assert len({t.worker for t in exp.storage.fetch_trials(exp.id)}) > 1  # several processes took part
    assert_verdicts_recompute(exp.storage.fetch_trials(exp.id), exp.settings.pruner)
    for trial in exp.storage.fetch_trials(exp.id, [TrialStatus.COMPLETED]):
        assert [step for step, _ in trial.reports] == list(range(1, 21))


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT has a handler already")
def test_ctrl_c_after_a_prune_verdict_records_the_trial_pruned_not_interrupted(tmp_path: Path) -> None:
    """The verdict stands whatever stopped the trial: given back, it would be run again to be pruned again."""
    def ignores_the_verdict(x: float) -> float:
        orchard.report(x + 1.0, 1)  # pruned by the threshold at once
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C before the objective looks at the verdict
        time.sleep(30)
        return x

    exp = orchard.build_experiment("p-ctrl-c", space=SPACE, max_trials=3, storage=str(tmp_path / "db.pkl"),
                                   pruner={"threshold": {"upper": 0.0}})
    with pytest.raises(orchard.Interrupted) as raised:
        exp.workon(ignores_the_verdict, progress=False)
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.PRUNED and trial.verdict is not None
    assert raised.value.pruned == [trial.id] and raised.value.released == []
    assert "1 recorded pruned" in str(raised.value)
    assert_verdicts_recompute(exp.storage.fetch_trials(exp.id), exp.settings.pruner)


GRACE_SCRIPT = """
import sys, time
import orchard, orchard.objective
orchard.objective.PRUNE_GRACE = 60.0  # the window a Ctrl-C lands in

def stubborn(x):
    for step in range(1, 1000):
        orchard.report(x + 1.0, step)  # pruned by the threshold at step 1; never asks
        time.sleep(0.05)
    return x

exp = orchard.build_experiment("p-grace", space={"x": "uniform(0, 1)"}, max_trials=2, storage=sys.argv[1],
                               pruner={"threshold": {"upper": 0.0}})
exp.workon(stubborn, trial_timeout=300, progress=False)
"""


@pytest.mark.slow
def test_ctrl_c_while_a_script_ignores_its_prune_verdict_records_it_pruned(tmp_path: Path) -> None:
    """A real SIGINT during the grace a timed child has to end after its "prune" verdict."""
    uri = str(tmp_path / "db.pkl")
    script = tmp_path / "worker.py"
    script.write_text(GRACE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    run = subprocess.Popen([sys.executable, str(script), uri], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:  # past its verdict (step 1) and well inside the 60 s grace
        assert time.monotonic() < deadline and run.poll() is None, "the trial never reported 3 steps"
        exp = orchard.get_experiment("p-grace", storage=uri) if Path(uri).exists() else None
        trials = [] if exp is None else exp.storage.fetch_trials(exp.id)
        if trials and len(trials[0].reports) >= 3:
            break
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0 and b"1 recorded pruned" in err, err.decode()[-2000:]
    assert exp is not None
    (trial,) = exp.storage.fetch_trials(exp.id)
    assert trial.status is TrialStatus.PRUNED and Verdict.from_dict(trial.verdict).step == 1
