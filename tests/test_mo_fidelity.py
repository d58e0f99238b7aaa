"""Multi-fidelity with several objectives: rungs ranked by non-dominated sorting.

``asha``/``hyperband`` promote by :func:`orchard.algorithms._rungs.pareto_order`
(front, then crowding distance, then the configuration's hash) when the
observations carry several objectives; the step pruners rank reports the same way.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import orchard
import orchard.storages
from orchard.algorithms import Asha, Observation, make_algorithm
from orchard.algorithms._rungs import Entry, pareto_order
from orchard.errors import ConfigurationError, InvalidReportError
from orchard.objectives import dominates
from orchard.pruners import Verdict, make_pruner
from orchard.space import Space
from orchard.trial import TrialStatus

SPACE = {"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"}


def two(x: float, epochs: int, error: float, size: float, end_time: float | None = None,
        violation: float = 0.0) -> Observation:
    return Observation({"x": x, "epochs": epochs}, error, end_time, values=(error, size),
                       feasible=violation <= 0, violation=violation)


def asha(**options: Any) -> Asha:
    algo = make_algorithm({"asha": {"sampler": "random", "rule": "promotion", **options}},
                          Space.from_config(SPACE), seed=0)
    assert isinstance(algo, Asha)
    return algo


def test_promotion_follows_the_front_not_the_first_objective() -> None:
    # 0.1 is best on error, 0.2 best on size: both on the first front; 0.3 is dominated by 0.2 but
    # better on error than 0.2. With the first objective alone 0.1 then 0.3 would be promoted.
    rung = [two(0.1, 1, 1.0, 9.0), two(0.2, 1, 5.0, 1.0), two(0.3, 1, 2.0, 8.0),
            two(0.4, 1, 6.0, 6.0), two(0.5, 1, 7.0, 7.0), two(0.6, 1, 8.0, 9.5)]
    algo = asha()
    pending: list[dict[str, Any]] = []
    for _ in range(2):  # quota floor(6 / 3) = 2
        (params,) = algo.suggest(rung, pending)
        pending.append(params)
    assert sorted(p["x"] for p in pending if p["epochs"] == 3) == [0.1, 0.2]


def test_an_infeasible_trial_ranks_after_every_feasible_one() -> None:
    rung = [two(0.1, 1, 0.0, 0.0, violation=2.0), two(0.2, 1, 5.0, 5.0), two(0.3, 1, 6.0, 6.0)]
    assert asha().suggest(rung, []) == [{"x": 0.2, "epochs": 3}]


def test_the_order_does_not_depend_on_the_order_trials_were_seen() -> None:
    rung = [two(i / 10, 1, float(i % 4), float(7 - i % 5)) for i in range(1, 10)]
    entries = [Entry(o.objective, f"k{o.params['x']}", o) for o in rung]
    shuffled = [random.Random(seed).sample(entries, len(entries)) for seed in range(20)]
    assert len({tuple(e.key for e in pareto_order(p)) for p in shuffled}) == 1
    front = {o.params["x"] for o in rung if not any(dominates(p.values, o.values) for p in rung)}  # type: ignore[arg-type]
    assert {e.observation.params["x"] for e in pareto_order(entries)[: len(front)]} == front


def test_stopping_rule_judges_each_arrival_by_its_front() -> None:
    # Arrival order by end_time: 0.1 is first (survives); 0.2 and 0.3 are dominated by 0.1 (top 1 of
    # 2 and of 3: they stop); 0.4 dominates everything: it survives.
    history = [two(0.1, 1, 1.0, 5.0, 1.0), two(0.2, 1, 2.0, 6.0, 2.0), two(0.3, 1, 6.0, 6.0, 3.0),
               two(0.4, 1, 0.5, 0.5, 4.0)]
    algo = asha(rule="stopping")
    algo.ladder.update(history)
    survivors = [e.observation.params["x"] for e in algo.ladder.survivors((0, 0))]
    assert set(survivors) == {0.1, 0.4} and survivors[0] == 0.4
    backwards = asha(rule="stopping")
    backwards.ladder.update(list(reversed(history)))
    assert [e.observation.params["x"] for e in backwards.ladder.survivors((0, 0))] == survivors


def test_hyperband_ranks_each_bracket_by_fronts() -> None:
    algo = make_algorithm({"hyperband": {"sampler": "random"}}, Space.from_config(SPACE), seed=0)
    history: list[Observation] = []
    pending: list[dict[str, Any]] = []
    for k in range(30):  # a deterministic stream: every suggestion computed twice agrees
        (params,) = algo.suggest(history, pending)
        again = make_algorithm({"hyperband": {"sampler": "random"}}, Space.from_config(SPACE), seed=0)
        assert again.suggest(history, pending) == [params]
        x = float(params["x"])
        history.append(two(x, int(params["epochs"]), (x - 0.3) ** 2 + 1 / params["epochs"], abs(x - 0.8), float(k)))


def test_one_objective_keeps_the_scalar_order() -> None:
    rung = [Observation({"x": 0.1, "epochs": 1}, 5.0), Observation({"x": 0.2, "epochs": 1}, 1.0),
            Observation({"x": 0.3, "epochs": 1}, 3.0)]
    assert asha().suggest(rung, []) == [{"x": 0.2, "epochs": 3}]


def test_a_pruned_trial_on_a_rung_of_several_objectives_ranks_after_the_others() -> None:
    """A pruned trial has no vector: ranked among the vectors, the rung failed to sort ('setting an array element
    with a sequence'), and asha with a pruner and several objectives stopped suggesting after its first prune."""
    pruned = Observation({"x": 0.9, "epochs": 1}, 0.0, pruned=True)
    rung = [two(0.1, 1, 1.0, 9.0), pruned, two(0.2, 1, 5.0, 1.0), two(0.3, 1, 6.0, 9.5)]
    entries = [Entry(o.objective, f"k{o.params['x']}", o) for o in rung]
    assert [e.observation.params["x"] for e in pareto_order(entries)][-1] == 0.9
    (promoted,) = asha().suggest(rung, [])
    assert promoted["epochs"] == 3 and promoted["x"] in (0.1, 0.2)  # the first front; never the pruned one


def _fidelity_curves(x: float, epochs: int) -> dict[str, float]:
    return _two_curves(x)


def test_asha_with_the_asha_pruner_and_several_objectives_runs_to_its_budget() -> None:
    exp = orchard.build_experiment("mo-asha", space=SPACE, storage="memory://", max_trials=20, seed=4,
                                   objectives={"error": "min", "accuracy": "max"}, algorithm="asha", pruner="asha")
    exp.workon(_fidelity_curves, progress=False)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 20 and counts[TrialStatus.PRUNED] > 0


# -- the step pruners ---------------------------------------------------------------------


def test_asha_pruner_keeps_the_best_of_a_rung_by_fronts() -> None:
    pruner = make_pruner({"asha": {"min_step": 1, "reduction_factor": 2}})
    others = {"a": [(1, (1.0, 5.0))], "b": [(1, (5.0, 1.0))], "c": [(1, (6.0, 6.0))]}
    # among 4 values, the best 2 go on: a and b form the first front with the judged trial's rivals
    assert pruner.judge("z", [(1, (7.0, 7.0))], others).prune
    kept = pruner.judge("z", [(1, (0.5, 0.5))], others)
    assert not kept.prune and "front 1" in kept.reason and kept.compared == ("a", "b", "c")
    # the judged trial on the first front (an extreme point): kept before the crowded middle ones
    assert not pruner.judge("z", [(1, (0.1, 9.0))], {**others, "d": [(1, (3.0, 3.0))]}).prune


def test_pruner_verdicts_recompute_from_the_stored_history() -> None:
    pruner = make_pruner({"hyperband": {"min_step": 1, "reduction_factor": 3}})
    stored = {f"t{i}": [(s, ((i % 5) + 1 / s, ((7 * i) % 5) + 1 / s)) for s in range(1, 10)] for i in range(30)}
    for tid, curve in stored.items():
        for k in range(1, len(curve) + 1):
            verdict = pruner.judge(tid, curve[:k], {o: c for o, c in stored.items() if o != tid})
            assert pruner.recompute(tid, verdict, stored) == verdict


def test_patience_with_several_objectives_asks_for_a_matched_report() -> None:
    pruner = make_pruner({"patience": {"patience": 2}})
    flat = [(1, (1.0, 2.0)), (2, (1.0, 2.0)), (3, (1.5, 2.0))]
    assert pruner.judge("t", flat, {}).prune
    trading = [(1, (1.0, 2.0)), (2, (1.2, 1.9)), (3, (1.5, 2.0))]  # step 2 improves the second objective
    assert not pruner.judge("t", trading, {}).prune


@pytest.mark.parametrize("pruner", ["median", "percentile", "threshold", {"patience": {"wrapped": "median"}}])
def test_pruners_of_one_value_are_refused_for_several_objectives(pruner: Any, tmp_path: Path) -> None:
    config = {"threshold": {"upper": 1.0}} if pruner == "threshold" else pruner
    uri = str(tmp_path / "db.pkl")
    with pytest.raises(ConfigurationError, match="cannot rank the several objectives.*asha"):
        orchard.build_experiment("mo-refused", space={"x": "uniform(0, 1)"}, storage=uri, pruner=config,
                                 objectives={"error": "min", "size": "min"})
    assert not (tmp_path / "db.pkl").exists() or orchard.storages.get_storage(uri).get_experiment("mo-refused") is None


def test_an_experiment_stored_with_such_a_pruner_still_opens(tmp_path: Path) -> None:
    """The refusal is made when an experiment is created: one stored before it (or by hand) still loads."""
    uri = str(tmp_path / "db.pkl")
    store = orchard.storages.get_storage(uri)
    store.create_experiment("mo-old", {"space": {"x": "uniform(0, 1)"}, "pruner": {"median": {}},
                                       "objectives": {"error": "min", "size": "min"}})
    exp = orchard.get_experiment("mo-old", storage=uri)
    assert exp.settings.objectives == {"error": "min", "size": "min"} and "median" in exp.settings.pruner


def _two_curves(x: float) -> dict[str, float]:
    for step in range(1, 10):
        orchard.report({"error": x + 1.0 / step, "accuracy": 1.0 - abs(x - 0.7) - 1.0 / step}, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return {"error": x + 0.1, "accuracy": 0.9 - abs(x - 0.7)}


def test_workon_prunes_on_named_reports_stored_in_minimisation_form() -> None:
    exp = orchard.build_experiment("mo-prune", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=15,
                                   seed=2, objectives={"error": "min", "accuracy": "max"},
                                   pruner={"asha": {"min_step": 1, "reduction_factor": 3}})
    exp.workon(_two_curves, progress=False)
    trials = exp.storage.fetch_trials(exp.id)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 15 and counts[TrialStatus.PRUNED] > 0
    first = trials[0]
    x = first.params["x"]
    assert first.reports[0] == (1, (x + 1.0, -(1.0 - abs(x - 0.7) - 1.0)))  # accuracy negated
    stored = {t.id: t.reports for t in trials}
    pruner = make_pruner(exp.settings.pruner, exp.settings.objectives)  # as info does: reasons name them
    for trial in trials:
        if trial.status is TrialStatus.PRUNED:
            assert trial.verdict is not None and trial.objective == trial.reports[-1][1][0]  # type: ignore[index]
            verdict = Verdict.from_dict(trial.verdict)
            assert pruner.recompute(trial.id, verdict, stored) == verdict
    assert all(t.status is TrialStatus.COMPLETED for t in exp.pareto_front())


@pytest.mark.parametrize(("value", "objectives", "words"), [
    (0.5, {"error": "min", "size": "min"}, "gives a single number.*'error': ..., 'size'"),
    ({"error": 0.5}, {"error": "min", "size": "min"}, "gives error, but the experiment's objectives are error, size"),
    ({"error": 0.5, "size": 1.0}, None, "has one objective; report a number"),
])
def test_reports_that_are_not_the_experiments_objectives_are_refused(
        value: Any, objectives: dict[str, str] | None, words: str) -> None:
    pruner = "asha"
    exp = orchard.build_experiment("mo-bad", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=1,
                                   objectives=objectives, pruner=pruner)
    trial = exp.suggest()
    with pytest.raises(InvalidReportError, match=words):
        exp.report(trial, value, 1)
    assert exp.storage.fetch_trials(exp.id)[0].reports == []  # nothing stored


def test_a_bare_number_is_stored_when_no_pruner_ranks_it() -> None:
    exp = orchard.build_experiment("mo-none", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=1,
                                   objectives={"error": "min", "size": "min"})
    trial = exp.suggest()
    exp.report(trial, 0.5, 1)
    exp.report(trial, {"error": 0.4, "size": 2.0}, 2)
    assert exp.storage.fetch_trials(exp.id)[0].reports == [(1, 0.5), (2, (0.4, 2.0))]


def test_info_explains_a_trial_pruned_on_both_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """info showed 'last (1.56, -0.0053)' and 'why: values (1.56, -0.0053)': the 'max' accuracy negated (its
    minimised, stored form); each objective is now shown by name, as returned."""
    from orchard.cli import main

    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("mo-info", space={"x": "uniform(0, 1)"}, storage=uri, max_trials=12, seed=2,
                                   objectives={"error": "min", "accuracy": "max"},
                                   pruner={"asha": {"min_step": 1, "reduction_factor": 3}})
    exp.workon(_two_curves, progress=False)
    pruned = next(t for t in exp.fetch_trials() if t.status is TrialStatus.PRUNED)
    assert main(["info", "-n", "mo-info", "--storage", uri, "--trial", pruned.id]) == 0
    out = capsys.readouterr().out
    error, accuracy = pruned.reports[-1][1]  # type: ignore[misc]
    shown = f"(error {error:.6g}, accuracy {-accuracy:.6g})"
    assert f"last {shown} at step" in out and f"why:       values {shown} at rung" in out
    assert f"objective: error {error:.6g}\n" in out
    assert "recomputed from the stored history: prune" in out and "(front " in out


def _accuracy(x: float) -> float:
    for step in range(1, 10):
        orchard.report(1.0 - abs(x - 0.7) - 1.0 / step, step)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return 0.9 - abs(x - 0.7)


def test_info_shows_a_max_objective_as_returned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One 'max' objective: info's objective, last report, reason and cut-off were its negation."""
    from orchard.cli import main

    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("max-info", space={"x": "uniform(0, 1)"}, storage=uri, max_trials=12,
                                   seed=2, objectives={"accuracy": "max"}, pruner="asha")
    exp.workon(_accuracy, progress=False)
    pruned = next(t for t in exp.fetch_trials() if t.status is TrialStatus.PRUNED)
    assert main(["info", "-n", "max-info", "--storage", uri, "--trial", pruned.id]) == 0
    out = capsys.readouterr().out
    accuracy, cutoff = -pruned.reports[-1][1], -pruned.verdict["cutoff"]  # type: ignore[operator,index]
    assert f"objective: accuracy {accuracy:.6g}\n" in out and f"last accuracy {accuracy:.6g} at step" in out
    assert f"why:       value {accuracy:.6g} at rung" in out and f"(cut-off {cutoff:.6g})" in out
    assert f"cut-off:   accuracy {cutoff:.6g}, compared with" in out


_RUNS: list[float] = []


def _long_then_short(x: float) -> dict[str, float]:
    _RUNS.append(x)
    steps = 40 if len(_RUNS) == 1 else 6  # an improving curve (every report trades size for error): never pruned
    for step in range(1, steps + 1):
        orchard.report({"error": x + 1.0 / step, "size": 1.0 + step}, step)
    return {"error": x, "size": 1.0 + steps}


def test_patience_judges_a_short_trial_after_a_long_one_in_the_same_worker() -> None:
    """One worker's patience pruner kept its front by the index reached in the previous trial's curve: the
    next trial's first judged report looked that index up in its own, shorter curve and raised IndexError in the
    objective, so every trial after a long one broke."""
    exp = orchard.build_experiment("mo-patience", space={"x": "choices([0.25, 0.75])"}, storage="memory://",
                                   max_trials=2, objectives={"error": "min", "size": "min"},
                                   pruner={"patience": {"patience": 3}})
    _RUNS.clear()
    exp.workon(_long_then_short, progress=False)  # one worker, in this thread: the long trial first
    trials = exp.storage.fetch_trials(exp.id)
    assert sorted((len(t.reports), t.status) for t in trials) == [(6, TrialStatus.COMPLETED),
                                                                  (40, TrialStatus.COMPLETED)]
