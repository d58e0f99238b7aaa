"""Experiments with several objectives and constraints: declaring, recording, the front, bad input."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

import orchard
from orchard.errors import ConfigurationError, ExperimentConflictError, HypervolumeError, OrchardError
from orchard.experiment_config import ExperimentConfig
from orchard.objectives import dominates, minimized
from orchard.space import Space
from orchard.trial import TrialStatus

SPACE = {"x": "uniform(0, 1)", "y": "uniform(0, 1)"}
GOALS = {"f1": "min", "f2": "min"}


def zdt1(x: float, y: float) -> dict[str, float]:
    """ZDT1 on two variables, plus a memory metric that breaks ``memory_gb <= 16`` when x > 0.8."""
    g = 1 + 9 * y
    return {"f1": x, "f2": g * (1 - math.sqrt(x / g)), "memory_gb": 20 * x}


def accuracy_and_size(x: float, y: float) -> dict[str, float]:
    return {"accuracy": x, "size": y}


def misses_f2(x: float, y: float) -> dict[str, float]:
    return {"f1": x}


def nan_f2(x: float, y: float) -> dict[str, float]:
    return {"f1": x, "f2": float("nan")}


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "orchard.pkl")


def build(store: str, **options) -> orchard.Experiment:
    options.setdefault("space", SPACE)
    options.setdefault("max_trials", 12)
    return orchard.build_experiment("exp", storage=store, **options)


def test_settings_are_stored_and_old_configs_load_unchanged() -> None:
    config = ExperimentConfig(space=Space.from_config(SPACE), objectives=GOALS, constraints=["memory_gb<=16"])
    again = ExperimentConfig.from_dict(config.to_dict())
    assert again.objectives == GOALS and again.constraints == ["memory_gb <= 16"]
    plain = ExperimentConfig(space=Space.from_config(SPACE)).to_dict()
    assert "objectives" not in plain and "constraints" not in plain
    assert ExperimentConfig.from_dict(plain).objectives is None


def test_each_objective_is_recorded_and_the_first_is_the_scalar(store) -> None:
    exp = build(store, objectives={"accuracy": "max", "size": "min"}, seed=1)
    exp.workon(accuracy_and_size, executor="single", progress=False)
    for trial in exp.fetch_trials():
        assert trial.status is TrialStatus.COMPLETED
        assert trial.objective == -trial.results["accuracy"]
        assert set(trial.results) == {"accuracy", "size"}


def test_front_is_non_dominated_and_feasible(store) -> None:
    exp = build(store, objectives=GOALS, constraints=["memory_gb <= 16"], max_trials=30, seed=2)
    exp.workon(zdt1, executor="single", progress=False)
    front = exp.pareto_front()
    assert front
    assert all(t.results["memory_gb"] <= 16 for t in front)
    feasible = [t for t in exp.fetch_trials() if t.results["memory_gb"] <= 16]
    vectors = {t.id: minimized(t.results, GOALS) for t in feasible}
    for trial in front:
        assert not any(dominates(v, vectors[trial.id]) for v in vectors.values())
    volume, reference = exp.hypervolume()
    assert volume > 0 and len(reference) == 2
    assert exp.hypervolume(reference=(2.0, 11.0)) == (pytest.approx(volume, abs=30), (2.0, 11.0))
    assert exp.hypervolume(reference=(2.0, 11.0))[0] > volume  # a farther reference covers more
    with pytest.raises(ConfigurationError, match="pareto_front"):
        _ = exp.best_trial


@pytest.mark.parametrize("reference", [np.array([2.0, 11.0]), [np.float32(2.0), np.int64(11)],
                                       {"f2": 11.0, "f1": 2.0}, (v for v in (2.0, 11.0))])
def test_a_hypervolume_reference_is_taken_as_a_numpy_array_or_by_objective_name(store, reference: object) -> None:
    """``exp.hypervolume(np.array([2.0, 11.0]))`` was refused as "not one finite number per objective"."""
    exp = build(store, objectives=GOALS, max_trials=6, seed=2)
    exp.workon(zdt1, executor="single", progress=False)
    assert exp.hypervolume(reference=reference) == exp.hypervolume(reference=(2.0, 11.0))  # type: ignore[arg-type]
    assert exp.hypervolume(reference=(2.0, 11.0))[1] == (2.0, 11.0)


@pytest.mark.parametrize("reference", [(2.0,), (2.0, 11.0, 3.0), (math.nan, 11.0), ("2", 11.0), 2.0, "ab",
                                       np.array(2.0), {2.0, 11.0}, {"f1": 2.0}, {"f1": 2.0, "f3": 11.0},
                                       iter(range(10**9))])
def test_a_hypervolume_reference_that_is_not_one_number_per_objective_is_one_clear_line(
    store, reference: object,
) -> None:
    """It gave zip()'s 'argument 2 is shorter than argument 1', or 0.0 for a NaN."""
    exp = build(store, objectives=GOALS, max_trials=3, seed=2)
    exp.workon(zdt1, executor="single", progress=False)
    with pytest.raises(ConfigurationError, match=r"one finite number per objective \(f1, f2\)"):
        exp.hypervolume(reference=reference)  # type: ignore[arg-type]


def test_a_hypervolume_reference_no_trial_beats_warns_naming_the_reference(
        caplog: pytest.LogCaptureFixture) -> None:
    """A reference on the wrong side of the front (here: given as if "acc" were minimised) returned 0.0
    without a word; the volume is still 0.0, and a warning names the experiment and the reference as given."""
    exp = orchard.build_experiment("unreached", space={"x": "uniform(0, 1)"}, storage="memory://",
                                   max_trials=4, objectives={"err": "min", "acc": "max"}, seed=1)
    exp.workon(lambda x: {"err": x, "acc": x}, executor="single", progress=False)
    caplog.clear()
    assert exp.hypervolume(reference=[2.0, 2.0]) == (0.0, (2.0, -2.0))
    (said,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert said.getMessage().startswith(
        "experiment 'unreached': no feasible completed trial is better than the reference point "
        "(err=2, acc=2) in every objective, so the hypervolume is 0.0")
    caplog.clear()
    assert exp.hypervolume(reference=(v for v in (2.0, 2.0)))[0] == 0.0  # read once, as any reference
    assert "reference point (err=2, acc=2)" in caplog.text
    caplog.clear()
    assert exp.hypervolume(reference=[2.0, -1.0])[0] > 0 and not caplog.records  # a reachable one: no warning


def test_the_hypervolume_of_four_objectives_is_an_orchard_error_naming_the_experiment() -> None:
    """exp.hypervolume() with 4 objectives raised a plain ValueError naming no experiment nor what to do."""
    exp = orchard.build_experiment("four", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=3,
                                   objectives={"a": "min", "b": "max", "c": "min", "d": "min"})
    exp.workon(lambda x: {"a": x, "b": x, "c": 1 - x, "d": x * x}, progress=False)
    with pytest.raises(OrchardError, match=r"experiment 'four' has 4 objectives \(a, b, c, d\); .* up to 3: "
                                           r"compare fronts \(pareto_front\(\)\) on 3 of them") as caught:
        exp.hypervolume()
    assert isinstance(caught.value, (HypervolumeError, ValueError))


def test_constraint_on_single_objective_keeps_infeasible_trials_but_never_returns_them(store) -> None:
    exp = build(store, constraints=["x >= 0.5"], max_trials=10, seed=4)
    exp.workon(lambda x, y: {"objective": x, "x": x}, executor="single", progress=False)
    assert len(exp.fetch_trials([TrialStatus.COMPLETED])) == 10
    best = exp.best_trial
    assert best is not None and best.results["x"] >= 0.5
    assert best.objective == min(t.objective for t in exp.fetch_trials() if t.results["x"] >= 0.5)


def test_a_constraint_on_a_metric_never_returned_is_a_warning_once_per_worker(store, caplog) -> None:
    """``constraints=["x >= 0.5"]`` on a dimension the objective does not return made every trial infeasible,
    said only at INFO level: the experiment then had no best trial and nobody was told why."""
    exp = build(store, constraints=["x >= 0.5"], max_trials=4, seed=4)
    with caplog.at_level(logging.INFO, logger="orchard.worker"):
        exp.workon(lambda x, y: x, executor="single", progress=False)
    infeasible = [r for r in caplog.records if "is infeasible" in r.getMessage()]
    assert [r.levelno for r in infeasible] == [logging.WARNING] + [logging.INFO] * 3
    assert "did not report metric 'x'" in infeasible[0].getMessage()
    assert "return each metric a constraint names" in infeasible[0].getMessage()
    assert exp.best_trial is None


@pytest.mark.parametrize("value", [math.nan, math.inf, "12"])
def test_a_constraint_metric_reported_as_no_finite_number_is_named_as_such_not_as_missing(
    store, caplog, value: object,
) -> None:
    """A ``memory_gb`` returned as NaN made the trial infeasible (right) with the reason "the trial did not
    report metric 'memory_gb'", though it had: the user looked for a metric the objective did return."""
    exp = build(store, constraints=["memory_gb <= 16"], max_trials=2, seed=4)
    with caplog.at_level(logging.WARNING, logger="orchard.worker"):
        exp.workon(lambda x, y: {"objective": x, "memory_gb": value}, executor="single", progress=False)
    said = [r.getMessage() for r in caplog.records if "is infeasible" in r.getMessage()]
    assert said and f"reported metric 'memory_gb' as {value!r}, not a finite number" in said[0]
    assert "did not report" not in said[0]
    # its hint said "return each metric a constraint names", which the objective had done
    assert "return each metric" not in said[0] and said[0].endswith(
        "(a metric that is no finite number (a diverged run's NaN, a text) keeps the trial infeasible: "
        "return a finite number, or break the trial instead: raise, or exit non-zero from a script)")
    assert exp.best_trial is None and len(exp.fetch_trials([TrialStatus.COMPLETED])) == 2


@pytest.mark.parametrize("objectives", [None, {"loss": "min"}, {"loss": "min", "f2": "min"}])
def test_a_constraint_on_the_objective_itself_is_refused_when_no_objective_has_that_name(store, objectives) -> None:
    """constraints=["objective <= 0.5"] was stored; constraints read the results beside the objective, so
    every trial was infeasible ("did not report metric 'objective'", though it had) and best_trial None."""
    with pytest.raises(ConfigurationError, match=r"'objective <= 0.5' names the objective.*constrain that name"):
        build(store, objectives=objectives, constraints=["objective <= 0.5"])
    with pytest.raises(orchard.errors.ExperimentNotFoundError):
        orchard.get_experiment("exp", storage=store)
    exp = build(store, objectives={"objective": "min", "f2": "min"}, constraints=["objective <= 0.5"], max_trials=6)
    exp.insert({"x": 0.25, "y": 0.5})  # one feasible trial at least: 6 random ones all miss 1 time in 64
    exp.workon(lambda x, y: {"objective": x, "f2": y}, executor="single", progress=False)
    assert {t.results["objective"] <= 0.5 for t in exp.pareto_front()} == {True}


@pytest.mark.parametrize(("fn", "words"), [(misses_f2, "'f2' is missing"), (nan_f2, "'f2' is nan")])
def test_a_missing_or_non_finite_objective_breaks_the_trial_naming_it(store, fn, words) -> None:
    exp = build(store, objectives=GOALS, max_trials=3, max_broken=1)
    with pytest.raises(orchard.errors.ExperimentBrokenError):
        exp.workon(fn, executor="single", progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.BROKEN and words in trial.error["message"]


@pytest.mark.parametrize("leftover", [float("nan"), "n/a", None, [0.5, 0.25], 0.75])
def test_an_objective_key_beside_every_objective_by_name_is_one_more_metric(store, leftover) -> None:
    """A script's single-objective habit ({"objective": loss, ...} beside f1 and f2) broke every trial when
    that loss was NaN or not a number ("objective is nan; it must be a finite number"), losing f1 and f2,
    and dropped it when it was one."""
    exp = build(store, objectives=GOALS, max_trials=3, max_broken=1)
    exp.workon(lambda x, y: {"objective": leftover, "f1": x, "f2": y}, executor="single", progress=False)
    trials = exp.fetch_trials()
    assert [t.status for t in trials] == [TrialStatus.COMPLETED] * 3
    assert all(t.objective == t.params["x"] and t.results["f2"] == t.params["y"] for t in trials)
    kept = [t.results["objective"] for t in trials]
    assert all(math.isnan(k) for k in kept) if leftover != leftover else kept == [leftover] * 3


@pytest.mark.parametrize(("fn", "given"), [
    (lambda x, y: x, "the result is float 0."),
    (lambda x, y: np.float32(x), "the result is float32 0."),
    (lambda x, y: {"objective": [x, y]}, "the result gives 'objective' [0."),
    (lambda x, y: {"objective": x, "loss": y}, "the result gives 'objective' 0."),
])
def test_one_value_where_several_objectives_are_read_by_name_is_said_so(store, fn, given) -> None:
    """One number (report_objective in a script) broke the trial with "objective 'f1' is missing"; a list
    under 'objective' with "for several objectives, declare them (objectives={'a': 'min', 'b': 'max'})",
    declared already."""
    exp = build(store, objectives=GOALS, max_trials=3, max_broken=1)
    with pytest.raises(orchard.errors.ExperimentBrokenError):
        exp.workon(fn, executor="single", progress=False)
    (trial,) = exp.fetch_trials()
    message = trial.error["message"]
    assert message.startswith(given) and message.endswith(
        ", but the experiment has objectives f1, f2: return each by name, e.g. return {'f1': ..., 'f2': ...}")


@pytest.mark.parametrize(("objectives", "fn"), [
    ({"objective": "max"}, lambda x, y: x),
    ({"objective": "max"}, lambda x, y: {"objective": x}),
    ({"objective": "max", "f2": "min"}, lambda x, y: {"objective": x, "f2": y}),
])
def test_an_objective_named_objective_is_read_from_the_result(store, objectives, fn) -> None:
    """Every trial broke with "objective 'objective' is missing; ... e.g. return {'objective': ...}"."""
    exp = build(store, objectives=objectives, max_trials=3)
    exp.workon(fn, executor="single", progress=False)
    trials = exp.fetch_trials()
    assert [t.status for t in trials] == [TrialStatus.COMPLETED] * 3
    assert all(t.objective == -t.params["x"] and t.results["objective"] == t.params["x"] for t in trials)
    assert max(t.params["x"] for t in trials) in [t.results["objective"] for t in exp.pareto_front()]


@pytest.mark.parametrize("fn", [
    lambda x, y: x,
    lambda x, y: np.float32(x),
    lambda x, y: {"objective": x, "y": y},
])
def test_one_declared_objective_returned_as_a_number_is_its_value(store, fn) -> None:
    """How an Optuna study's direction="maximize" is declared; orchard.report(x, step) took the bare number
    as the accuracy, but a bare number returned broke every trial ("objective 'accuracy' is missing")."""
    exp = build(store, objectives={"accuracy": "max"}, max_trials=3)
    exp.workon(fn, executor="single", progress=False)
    trials = exp.fetch_trials()
    assert [t.status for t in trials] == [TrialStatus.COMPLETED] * 3
    assert all(t.results["accuracy"] == pytest.approx(t.params["x"]) for t in trials)
    assert all(t.objective == -t.results["accuracy"] for t in trials)
    assert exp.best_trial.params["x"] == max(t.params["x"] for t in trials)


@pytest.mark.parametrize(("fn", "shown"), [
    (lambda x, y: float("nan"), "nan"),
    (lambda x, y: np.float32("-inf"), "-inf"),
])
def test_one_declared_objective_returned_as_nan_is_named_not_asked_by_name(store, fn, shown) -> None:
    """A NaN returned for objectives={'accuracy': 'max'} broke the trial with "the result is float nan, but
    the experiment has objectives accuracy: return each by name", which {'accuracy': nan} would not mend."""
    exp = build(store, objectives={"accuracy": "max"}, max_trials=3, max_broken=1)
    with pytest.raises(orchard.errors.ExperimentBrokenError):
        exp.workon(fn, executor="single", progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.error["message"].startswith(f"objective 'accuracy' is {shown}, not a finite number")


@pytest.mark.parametrize(("options", "words"), [
    ({"objectives": {"f1": "minimise"}}, "'min' or 'max'"),
    ({"objectives": {}}, "empty"),
    ({"objectives": {"f1": "min", "f1 ": "max"}}, "'f1' is named twice"),  # one was silently dropped
    ({"constraints": ["memory_gb < 16"]}, "'memory_gb < 16'"),
    ({"constraints": ["__import__('os') <= 1"]}, "not understood"),
])
def test_bad_declarations_store_nothing(store, options, words) -> None:
    with pytest.raises(ConfigurationError, match=words):
        build(store, **options)
    with pytest.raises(orchard.errors.ExperimentNotFoundError):
        orchard.get_experiment("exp", storage=store)


def test_joining_with_other_objectives_lists_the_difference(store) -> None:
    build(store, objectives=GOALS)
    with pytest.raises(ExperimentConflictError, match="objectives: stored"):
        build(store, objectives={"f1": "min", "f2": "max"})
    with pytest.raises(ExperimentConflictError, match="constraints"):
        build(store, objectives=GOALS, constraints=["f1 <= 1"])
    with pytest.raises(ExperimentConflictError, match="stored in the order f1, f2 != given f2, f1"):
        build(store, objectives={"f2": "min", "f1": "min"})  # was joined, f1 staying each trial's objective
    assert build(store).settings.objectives == GOALS  # joining without them keeps them


def test_a_constraint_naming_no_reported_metric_makes_trials_infeasible(store, caplog) -> None:
    exp = build(store, objectives=GOALS, constraints=["watts <= 3"], max_trials=4)
    with caplog.at_level("INFO", logger="orchard.worker"):
        exp.workon(zdt1, executor="single", progress=False)
    assert exp.pareto_front() == []
    assert "'watts'" in caplog.text


@pytest.mark.slow
def test_four_processes_find_a_non_dominated_feasible_front(store) -> None:
    """4 loky workers breeding NSGA-II children from the shared pickle file."""
    exp = build(store, objectives=GOALS, constraints=["memory_gb <= 16"], max_trials=40,
                algorithm={"nsga2": {"population_size": 8}})
    exp.workon(zdt1, n_workers=4, progress=False)
    completed = exp.fetch_trials([TrialStatus.COMPLETED])
    assert len(completed) == 40
    front = exp.pareto_front()
    feasible = [minimized(t.results, GOALS) for t in completed if t.results["memory_gb"] <= 16]
    assert front and all(t.results["memory_gb"] <= 16 for t in front)
    for trial in front:
        assert not any(dominates(v, minimized(trial.results, GOALS)) for v in feasible)


SCRIPT = '''
import argparse, math
import orchard
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
parser.add_argument("--y", type=float)
args = parser.parse_args()
orchard.report_results({"error": (args.x - 0.3) ** 2, "latency_ms": 1 + args.y, "memory_gb": 20 * args.x})
'''


def test_hunt_declares_objectives_and_constraints(tmp_path, monkeypatch, capsys) -> None:
    import sys

    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "train.py").write_text(SCRIPT)
    command = [sys.executable, "train.py", "--x~uniform(0, 1)", "--y~uniform(0, 1)"]
    options = ["--objective", "error:min", "--objective", "latency_ms:min", "--constraint", "memory_gb <= 16"]
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "4", *options, *command]) == 0
    assert "on the Pareto front" in capsys.readouterr().out
    exp = orchard.get_experiment("e", storage="orchard.pkl")
    assert exp.settings.objectives == {"error": "min", "latency_ms": "min"}
    assert exp.settings.constraints == ["memory_gb <= 16"]
    assert all(t.status is TrialStatus.COMPLETED and "latency_ms" in t.results for t in exp.fetch_trials())
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--objective", "error:max", *command]) == 1
    assert "objectives: stored" in capsys.readouterr().err


def test_hunt_with_one_objective_to_maximise_ends_with_its_best_value(tmp_path, monkeypatch, capsys) -> None:
    """hunt --objective latency_ms:max ended with "1 trials on the Pareto front" (one objective has none)."""
    import sys

    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "train.py").write_text(SCRIPT)
    command = [sys.executable, "train.py", "--x~uniform(0, 1)", "--y~uniform(0, 1)"]
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "3", "--objective", "latency_ms:max",
                 *command]) == 0
    best = max(t.results["latency_ms"] for t in orchard.get_experiment("e", storage="orchard.pkl").fetch_trials())
    assert f"; best latency_ms {best:.6g} at " in capsys.readouterr().out


def test_an_objective_given_twice_on_the_command_line_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """--objective err:min --objective err:max kept the last one silently (and ORCHARD_OBJECTIVES='a:min,a:max')."""
    import sys

    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "train.py").write_text(SCRIPT)
    options = ["--objective", "err:min", "--objective", "err:max"]
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "1", *options,
                 sys.executable, "train.py", "--x~uniform(0, 1)"]) != 0
    assert "each objective once (err given twice)" in capsys.readouterr().err
    assert not (tmp_path / "orchard.pkl").exists() or not orchard.get_storage("orchard.pkl").get_experiment("e")


def test_status_and_info_show_one_max_objective_as_declared(store, capsys) -> None:
    """They printed 'best: -0.9' for objectives={'accuracy': 'max'} (the stored, minimised form)."""
    from orchard.cli import main

    exp = build(store, objectives={"accuracy": "max"}, max_trials=3, seed=5)
    exp.workon(lambda x, y: {"accuracy": x}, executor="single", progress=False)
    best = max(t.results["accuracy"] for t in exp.fetch_trials())
    for command in ("status", "info"):
        assert main([command, "-n", "exp", "--storage", store]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if "best:" in line)
        assert line.split()[1] == f"accuracy={best:.6g}"


def test_status_and_info_show_the_front_instead_of_a_best_trial(store, capsys) -> None:
    from orchard.cli import main

    exp = build(store, objectives=GOALS, max_trials=6, seed=5)
    exp.workon(zdt1, executor="single", progress=False)
    size = len(exp.pareto_front())
    for command in ("status", "info"):
        assert main([command, "-n", "exp", "--storage", store]) == 0
        out = capsys.readouterr().out
        assert f"{size} trial{'' if size == 1 else 's'} on the Pareto front" in out and "f1=" in out
        assert "best:" not in out


def test_status_shows_a_front_whose_objectives_are_named_like_a_trials_fields(tmp_path, capsys) -> None:
    """Objectives named `id` and `params` overwrote the front entries' own keys: `orchard status` failed with
    "unexpected TypeError" and its --json gave the objective's value as the trial's id."""
    from orchard.cli import main

    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("ids", space={"x": "uniform(0, 1)"}, storage=storage, max_trials=3, seed=1,
                                   objectives={"id": "min", "params": "max"})
    exp.workon(lambda x: {"id": x, "params": x * x}, executor="single", progress=False)
    assert main(["status", "-n", "ids", "--storage", storage]) == 0
    assert "id=" in capsys.readouterr().out
    assert main(["status", "-n", "ids", "--storage", storage, "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["pareto_front"]
    assert {entry["id"] for entry in front} <= {t.id for t in exp.fetch_trials()}
    assert all(set(entry["values"]) == {"id", "params"} and "x" in entry["params"] for entry in front)


def test_cli_insert_prints_the_value_of_one_declared_objective_as_given(tmp_path, capsys) -> None:
    """orchard insert --objective 0.99 into objectives={"acc": "max"} printed "objective -0.99" (as stored)."""
    from orchard.cli import main

    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("acc", space={"x": "uniform(0, 1)"}, storage=storage, objectives={"acc": "max"})
    assert main(["insert", "-n", "acc", "--storage", storage, "x=0.25", "--objective", "0.99"]) == 0
    assert "acc 0.99 (apart from the budget)" in capsys.readouterr().out
    assert exp.best_trial.results == {"acc": 0.99}


def test_observe_takes_a_bare_number_as_the_value_of_one_declared_objective(tmp_path) -> None:
    """Ask-and-tell: observe(trial, acc) with objectives={"acc": "max"} broke the trial ("objective 'acc' is
    missing"); with several objectives a bare number is still no objective's value."""
    several = orchard.build_experiment("two", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                       max_trials=2, objectives={"acc": "max", "cost": "min"})
    trial = several.suggest()
    assert several.observe(trial, 0.5).status is TrialStatus.BROKEN  # which of two? still refused
    asked = orchard.build_experiment("ask", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                     max_trials=2, objectives={"acc": "max"})
    trial = asked.suggest()
    assert asked.observe(trial, 0.75).results == {"acc": 0.75}


@pytest.mark.parametrize(("constraint", "metric", "feasible", "infeasible"), [
    ("accuracy >= 0.9999999", "accuracy", 0.99999995, 0.99999985),
    ("size_bytes <= 1234567", "size_bytes", 1234567, 1234569),
])
def test_a_constraint_keeps_its_bound_to_the_last_digit(store, constraint, metric, feasible,
                                                        infeasible) -> None:
    exp = build(store, objectives={"f1": "min"}, constraints=[constraint])
    assert exp.settings.constraints == [constraint]
    exp.insert({"x": 0.1, "y": 0.1}, results={"f1": 1.0, metric: feasible})
    exp.insert({"x": 0.2, "y": 0.2}, results={"f1": 0.5, metric: infeasible})
    assert [t.results[metric] for t in exp.pareto_front()] == [feasible]
    again = build(store, objectives={"f1": "min"}, constraints=[constraint])
    assert again.settings.constraints == [constraint]


def test_objectives_given_in_one_flag_are_read_as_the_environment_reads_them(tmp_path, monkeypatch,
                                                                             capsys) -> None:
    """--objective error:min,latency_ms:min declared one objective 'error:min,latency_ms' to maximise."""
    import sys

    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "train.py").write_text(SCRIPT)
    command = [sys.executable, "train.py", "--x~uniform(0, 1)", "--y~uniform(0, 1)"]
    assert main(["hunt", "-n", "e", "--storage", "orchard.pkl", "--max-trials", "2",
                 "--objective", "error:min,latency_ms:min", *command]) == 0
    exp = orchard.get_experiment("e", storage="orchard.pkl")
    assert exp.settings.objectives == {"error": "min", "latency_ms": "min"}
    assert main(["hunt", "-n", "f", "--storage", "orchard.pkl", "--objective", "error", *command]) != 0
    assert "(from --objective)" in capsys.readouterr().err


def test_reported_constraints_that_are_not_a_list_break_the_trial_with_a_message(store) -> None:
    """{"constraints": x - 0.5} (one number, not a list) made every trial infeasible, silently: no front."""
    exp = build(store, objectives=GOALS, max_trials=2, max_broken=1)
    with pytest.raises(orchard.ExperimentBrokenError, match=r"results\['constraints'\] is -?0\.\d+, not a"):
        exp.workon(lambda x, y: {**zdt1(x, y), "constraints": x - 0.5}, executor="single", progress=False)
    nan = build(store.replace(".pkl", "-nan.pkl"), objectives=GOALS, max_trials=2, max_broken=1)
    with pytest.raises(orchard.ExperimentBrokenError, match="not a list of numbers"):
        nan.workon(lambda x, y: {**zdt1(x, y), "constraints": [math.nan]}, executor="single", progress=False)
    listed = build(store.replace(".pkl", "-list.pkl"), objectives=GOALS, max_trials=4)
    listed.workon(lambda x, y: {**zdt1(x, y), "constraints": [x - 2.0]}, executor="single", progress=False)
    assert len(listed.pareto_front()) >= 1


@pytest.mark.parametrize("where", ["pickle", "memory"])
def test_a_trial_breaking_the_constraints_it_reported_is_never_best_without_declared_constraints(
        store, where: str) -> None:
    """With one objective and no constraints declared, best_trial and stats took the lowest objective (the
    storage's query), so a trial reporting {"constraints": [0.5]} was the best though infeasible, where the
    Pareto front and the dashboard left it out."""
    exp = build(store if where == "pickle" else "memory://", max_trials=3)
    for value, constraints in [(0.4, [-1.0, 0.5]), (0.6, [-1.0]), (0.7, None)]:
        trial = exp.suggest()
        exp.observe(trial, {"objective": value, **({"constraints": constraints} if constraints else {})})
    best = exp.best_trial
    assert best is not None and best.objective == 0.6
    assert exp.stats["best_objective"] == 0.6 and [t.id for t in exp.pareto_front()] == [best.id]


def test_an_objective_or_a_constraint_on_the_key_constraints_is_refused(store) -> None:
    """Its value was read as the reported constraint list: every trial infeasible, the front empty."""
    with pytest.raises(ConfigurationError, match="clashes with the results key 'constraints'"):
        build(store, objectives={"constraints": "min", "f2": "min"})
    with pytest.raises(ConfigurationError, match="names 'constraints', the results key of a reported list"):
        build(store, objectives=GOALS, constraints=["constraints <= 0"])


def test_the_front_of_a_long_history_costs_the_front_s_size_not_the_history_s_square() -> None:
    """exp.pareto_front() ranked every trial against every other one: `orchard status` on 20,000 trials of two
    objectives took a minute and half a gigabyte; exp.hypervolume() of 3,000 trials of three took 8 s."""
    import time

    from orchard.trial import recorded

    rng = np.random.default_rng(0)
    for count, names in ((10_000, ("f1", "f2")), (3_000, ("f1", "f2", "f3"))):
        exp = orchard.build_experiment("long", space={"x": "uniform(0, 1)"}, storage="memory://",
                                       objectives=dict.fromkeys(names, "min"))
        values = rng.random((count, len(names)))
        exp.storage.restore_trials(exp.id, [
            recorded(f"t{i}", exp.id, {"x": i / count}, row[0], dict(zip(names, row)), i, in_budget=False)
            for i, row in enumerate(values.tolist())])
        started = time.process_time()
        front = {t.params["x"] for t in exp.pareto_front()}
        volume, _ = exp.hypervolume()
        assert time.process_time() - started < 5.0
        assert volume > 0
        if len(names) == 2:  # no ties: a trial is on the front if its f2 beats every trial's of smaller f1
            order = np.argsort(values[:, 0])
            best_before = np.minimum.accumulate(np.concatenate([[np.inf], values[order, 1]]))[:-1]
            assert front == {i / count for i in order[values[order, 1] < best_before]}


def test_status_and_info_say_why_the_front_is_empty_when_every_trial_is_infeasible(store, capsys) -> None:
    """With a constraint on a metric the objective did not return, they printed '0 trials on the Pareto front'
    (and no best line for one objective) with no word of why."""
    from orchard.cli import main

    exp = build(store, objectives=GOALS, constraints=["memory_mb <= 16"], max_trials=3, seed=2)
    exp.workon(zdt1, executor="single", progress=False)
    for command in ("status", "info"):
        assert main([command, "-n", "exp", "--storage", store]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if "infeasible:" in line)
        assert "3 completed trial(s) break a constraint" in line and "metric 'memory_mb'" in line
        assert main([command, "-n", "exp", "--storage", store, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["infeasible"]["count"] == 3


def test_the_regret_plot_s_best_so_far_is_the_best_feasible_trial(store) -> None:
    """It was the lowest objective of any trial, infeasible ones included: 'best 0.05' in the plot's title
    while status and exp.best_trial gave 0.2."""
    from orchard.plotting import make_figure

    exp = build(store, constraints=["memory_gb <= 16"])
    exp.insert({"x": 0.1, "y": 0.1}, objective=0.1, results={"memory_gb": 20.0})
    exp.insert({"x": 0.2, "y": 0.2}, objective=0.2, results={"memory_gb": 8.0})
    exp.insert({"x": 0.3, "y": 0.3}, objective=0.05, results={"memory_gb": 32.0})
    assert exp.best_trial is not None and exp.best_trial.objective == 0.2
    figure = make_figure("regret", exp.fetch_trials(), "exp", exp.space, exp.settings.objectives,
                         exp.settings.constraints)
    assert "best 0.2 after 3 completed, 0 broken, 2 infeasible" in figure.title
    assert math.isnan(figure.best[0]) and figure.best[1:] == [0.2, 0.2]


def test_the_learning_curves_draw_the_best_feasible_trial_thick(store) -> None:
    """The curve drawn as the best was that of the lowest objective, an infeasible trial's."""
    from orchard.plotting import make_figure

    exp = build(store, constraints=["memory_gb <= 16"])
    for x, objective, memory in ((0.1, 0.05, 20.0), (0.2, 0.2, 8.0)):
        trial = exp.storage.register_trial(exp.id, {"x": x, "y": x}, worker="w")
        exp.storage.report_trial(trial.id, "w", 1, objective)
        exp.storage.complete_trial(trial.id, "w", objective, {"memory_gb": memory})
    figure = make_figure("curves", exp.fetch_trials(), "exp", exp.space, exp.settings.objectives,
                         exp.settings.constraints)
    assert [curve.values for curve in figure.curves if curve.best] == [[0.2]]


def test_a_trial_breaking_only_its_reported_constraints_list_is_logged_infeasible(store, caplog) -> None:
    """A trial reporting ``{"constraints": [0.5]}`` (Optuna's convention) with no constraint declared was
    counted infeasible by ``orchard status`` and never best, but its worker logged nothing, as it does for a
    declared constraint broken."""
    exp = build(store, max_trials=2, seed=4)
    with caplog.at_level(logging.INFO, logger="orchard.worker"):
        exp.workon(lambda x, y: {"objective": x, "constraints": [0.5]}, executor="single", progress=False)
    said = [r.getMessage() for r in caplog.records if "is infeasible" in r.getMessage()]
    assert len(said) == 2 and "reported constraints[0]=0.5 > 0" in said[0], said
    assert exp.best_trial is None
