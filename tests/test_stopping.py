"""Stopping rules (target, patience, max_cost, max_time): what fires them, and that they are exact.

Fast tests drive one or two ask-and-tell clients on ``memory://`` so the values
folded are known. The slow tests race 4 spawned worker processes on one
experiment per rule, on a pickle file and on a MongoDB wire server, and check
from the stored history that no trial was reserved after the completion that
fired the rule.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard import config
from orchard.cli import main
from orchard.errors import (
    BudgetExhaustedError,
    ConfigurationError,
    ExperimentConflictError,
    ReservationLostError,
    StopReason,
    WorkerStoppedError,
)
from orchard.objective import Outcome
from orchard.stopping import LEDGER_KEY, StopGate, StopRules, parse_duration, stop_summary
from orchard.storages import get_storage
from orchard.testing import races
from orchard.trial import TrialStatus
from tests.conftest import backend_uri

SPACE = {"x": "uniform(0, 1)"}


def _experiment(stop: Any, storage: Any = "memory://", name: str = "e", **options: Any) -> orchard.Experiment:
    return orchard.build_experiment(name, **{"space": SPACE, **options}, storage=storage, stop=stop)


def _tell(exp: orchard.Experiment, *results: Any) -> None:
    for result in results:
        exp.observe(exp.suggest(), result)


def _stopped(exp: orchard.Experiment) -> dict[str, Any]:
    with pytest.raises(WorkerStoppedError) as stop:
        exp.suggest()
    assert stop.value.reason is StopReason.STOPPED
    assert isinstance(stop.value, BudgetExhaustedError), "an ask-and-tell loop ending on BudgetExhaustedError ends"
    fired = exp.storage.experiment(exp.id).config[LEDGER_KEY]["fired"]
    assert fired["rule"] in str(stop.value)
    return dict(fired)


def _runs(exp: orchard.Experiment) -> None:
    trial = exp.suggest()  # no rule fired yet: a trial is handed out
    exp.release(trial)


# -- each rule ---------------------------------------------------------------------------------


def test_target_fires_on_the_first_trial_that_reaches_it() -> None:
    exp = _experiment({"target": 0.1})
    _tell(exp, 0.5, 0.2)
    _runs(exp)
    _tell(exp, 0.1)
    fired = _stopped(exp)
    assert (fired["rule"], fired["finished"]) == ("target", 3)


def test_target_of_a_maximized_objective_is_reached_from_below() -> None:
    exp = _experiment({"target": 0.9}, objectives={"accuracy": "max"})
    _tell(exp, {"accuracy": 0.5}, {"accuracy": 0.89})
    _runs(exp)
    _tell(exp, {"accuracy": 0.91})
    assert _stopped(exp)["finished"] == 3


def test_target_ignores_infeasible_trials() -> None:
    exp = _experiment({"target": 0.1}, constraints=["memory_gb <= 16"])
    _tell(exp, {"objective": 0.0, "memory_gb": 32})
    _runs(exp)
    _tell(exp, {"objective": 0.05, "memory_gb": 8})
    assert _stopped(exp)["finished"] == 2


def test_patience_counts_completed_trials_without_an_improvement_of_min_delta() -> None:
    exp = _experiment({"patience": {"trials": 2, "min_delta": 0.01}})
    _tell(exp, 1.0, 0.98, 0.975)  # 0.975 improves on 0.98 by less than min_delta
    _runs(exp)
    _tell(exp, 0.99)
    fired = _stopped(exp)
    assert (fired["rule"], fired["completed"]) == ("patience", 4)


def test_patience_does_not_count_broken_or_pruned_trials() -> None:
    exp = _experiment({"patience": 1})
    _tell(exp, 1.0, "not a number")  # broken: not a completed trial
    _runs(exp)
    _tell(exp, 2.0)
    assert _stopped(exp)["finished"] == 3


def test_patience_with_a_fidelity_compares_each_trial_with_the_best_at_its_fidelity() -> None:
    """Multi-fidelity trials at a low budget never beat a full-budget best: counted against it, any N of
    them fired patience while every rung was still improving (ASHA stopped after its first full trials)."""
    exp = _experiment({"patience": 2}, space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"}, max_trials=20)

    def tell(x: float, epochs: int, loss: float) -> None:
        exp.insert({"x": x, "epochs": epochs}, objective=loss, count_in_budget=True)

    tell(0.1, 9, 0.1)
    for i, loss in enumerate([1.5, 1.2, 1.0]):  # each one the best of one epoch so far
        tell(0.2 + i / 10, 1, loss)
    _runs(exp)
    tell(0.6, 3, 0.5)  # the first at 3 epochs: an improvement there
    tell(0.7, 1, 1.3)
    _runs(exp)
    tell(0.8, 1, 1.4)
    fired = _stopped(exp)
    assert (fired["rule"], fired["completed"]) == ("patience", 7)
    assert "at their fidelity" in fired["reason"]


def test_max_cost_sums_the_reported_cost_metric() -> None:
    exp = _experiment({"max_cost": 10})
    _tell(exp, {"objective": 1.0, "cost": 4}, {"objective": 1.0})  # no cost reported: adds nothing
    _tell(exp, {"objective": 1.0, "cost": 4.5})
    _runs(exp)
    _tell(exp, {"objective": 1.0, "cost": 2})
    fired = _stopped(exp)
    assert (fired["rule"], fired["finished"]) == ("max_cost", 4)
    other = _experiment({"max_cost": 3, "cost_metric": "gpu_hours"}, name="gpu")
    _tell(other, {"objective": 1.0, "gpu_hours": -100.0})  # a cost is spent, never refunded: adds nothing
    _runs(other)
    _tell(other, {"objective": 1.0, "gpu_hours": 3.5})
    assert _stopped(other)["rule"] == "max_cost"


def test_a_trial_without_its_cost_is_said_once_when_its_fold_loses_a_swap_to_another_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """With 4 workers, "trial … reported no finite 'cost' metric" was logged twice for some trials: each
    retry of a swap another worker's fold had won recomputed the fold, warning again."""
    store = str(tmp_path / "db.pkl")
    exp = _experiment({"max_cost": 100}, storage=store)
    mine, theirs = get_storage(store), get_storage(store)
    rules = StopRules(max_cost=100)
    rival = StopGate(theirs, exp.id, rules, "e", clock=time.monotonic)
    reads = [0]
    read = mine.experiment

    def read_then_lose(experiment_id: str) -> Any:  # another worker folds between this read and the swap
        record = read(experiment_id)
        reads[0] += 1
        if reads[0] == 1:
            rival.fold("rival", Outcome(objective=1.0, results={"cost": 1.0}))
        return record

    mine.experiment = read_then_lose  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="orchard.stopping"):
        ledger = StopGate(mine, exp.id, rules, "e", clock=time.monotonic).fold("costless", Outcome(objective=1.0))
    assert reads[0] >= 2 and ledger.finished == 2 and ledger.cost == 1.0  # the swap was lost, then retried
    said = [r.getMessage() for r in caplog.records if "costless" in r.getMessage()]
    assert len(said) == 1 and "no finite 'cost' metric" in said[0]


def test_sums_past_a_float_stay_a_ledger_orchard_reads() -> None:
    exp = _experiment({"max_cost": 1.7e308})
    _tell(exp, {"objective": 1.0, "cost": 1e308})
    _runs(exp)
    _tell(exp, {"objective": 1.0, "cost": 1e308})  # the sum is past a float: fired, and still read as fired
    assert _stopped(exp)["rule"] == "max_cost"


@pytest.mark.parametrize("ledger", [["junk"], "junk", {"finished": "3"}, {"recent": [1, 2]}, {"fired": [1]}])
def test_a_ledger_another_program_wrote_is_read_as_empty_and_replaced(tmp_path: Path, ledger: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    exp = _experiment({"target": 0.1}, storage=str(tmp_path / "o.pkl"))
    _tell(exp, 0.5)
    exp.storage.update_experiment(exp.id, {LEDGER_KEY: ledger})
    assert "not fired" in stop_summary(exp.storage.experiment(exp.id).config)["line"]
    _tell(exp, 0.4)  # the workers go on; the fold replaces the odd value with a ledger
    assert exp.storage.experiment(exp.id).config[LEDGER_KEY]["finished"] == 1
    assert "stopping ledger of experiment 'e' holds values Orchard never writes" in caplog.text
    _tell(exp, 0.05)
    assert _stopped(exp)["finished"] == 2


@pytest.mark.parametrize("ledger", [
    {"finished": 10**5000}, {"fired": {"rule": "target", "trial": "t", "finished": 10**5000, "reason": "r"}},
    {"fired": {}}, {"fired": {"rule": "deadline", "trial": "t", "finished": 1, "completed": 1, "reason": "r"}},
    {"best": math.nan}, {"best": -math.inf}, {"time": math.inf}, {"cost": -1.0}, {"best_at": -5},
    {"completed": 3, "finished": 1}, {"levels": {"1": math.nan}}, {"recent": ["t"] * 1000},
], ids=["huge-count", "fired-huge-count", "fired-empty", "fired-unknown-rule", "nan-best", "minus-inf-best",
        "inf-time", "negative-cost", "negative-best-at", "completed-over-finished", "nan-level", "long-recent"])
def test_a_ledger_with_values_orchard_never_writes_is_read_as_empty(ledger: Any, caplog: pytest.LogCaptureFixture,
                                                                  request: pytest.FixtureRequest) -> None:
    """Well-formed, hostile values: a 5,000-digit count crashed every worker's fold and every summary
    (int to text), a NaN best or a negative best_at fired patience at once, an infinite time max_time."""
    name = f"hostile-{request.node.callspec.id}"  # each named once per process and experiment
    exp = _experiment({"target": 0.1, "patience": 3, "max_time": 100}, name=name)
    exp.storage.update_experiment(exp.id, {LEDGER_KEY: ledger})
    assert "not fired" in stop_summary(exp.storage.experiment(exp.id).config)["line"]
    _tell(exp, 0.5, 0.4)
    _runs(exp)  # the fold replaced the hostile value with a ledger, and no rule fired
    assert exp.storage.experiment(exp.id).config[LEDGER_KEY]["finished"] == 2
    assert f"stopping ledger of experiment {name!r} holds values Orchard never writes" in caplog.text


def test_max_time_sums_the_trials_own_evaluation_times() -> None:
    exp = _experiment({"max_time": 10})
    now = [100.0]
    gate = StopGate(exp.storage, exp.id, StopRules(max_time=10), "e", clock=lambda: now[0])  # a worker's clock
    for seconds, fired in ((6.0, None), (3.9, None), (0.2, "max_time")):
        assert gate.admit(f"t{seconds}")
        now[0] += seconds
        assert (gate.fold(f"t{seconds}", Outcome(objective=1.0)).fired or {}).get("rule") == fired
    assert not gate.admit("late"), "a reservation made after the rule fired is refused"
    timed = _experiment({"max_time": 0.05}, name="timed")
    trial = timed.suggest()
    time.sleep(0.06)  # the evaluation takes at least this long, measured by the worker
    timed.observe(trial, 1.0)
    assert _stopped(timed)["rule"] == "max_time"


def test_a_trial_running_when_the_rule_fires_finishes_and_nothing_is_reserved_after() -> None:
    storage = get_storage("memory://")
    first, second = _experiment({"target": 0.1}, storage), _experiment({"target": 0.1}, storage)
    running = second.suggest()
    _tell(first, 0.05)  # fires
    second.observe(running, 0.01)  # running when it fired: recorded, not folded
    _stopped(second)
    _stopped(first)
    counts = storage.count_trials(first.id)
    assert counts[TrialStatus.COMPLETED] == 2
    assert counts[TrialStatus.RESERVED] == counts[TrialStatus.NEW] == 0
    assert storage.experiment(first.id).config[LEDGER_KEY]["finished"] == 1


def test_a_trial_evaluated_again_after_its_reservation_was_lost_is_judged_again() -> None:
    """The first evaluation was folded, then its write refused (its lease was taken back); the worker
    that took the trial up evaluated it again and reached the target. That fold was skipped as a
    retry of the first, so the target never fired and the workers kept searching."""
    exp = _experiment({"target": 0.1})
    trial = exp.suggest()
    exp.storage.release_trial(trial.id, None)  # its lease taken back, as from a frozen worker
    with pytest.raises(ReservationLostError):
        exp.observe(trial, 0.5)  # folded, then refused: it still counts
    again = exp.suggest()
    assert again.id == trial.id
    exp.observe(again, 0.01)
    fired = _stopped(exp)
    assert (fired["rule"], fired["finished"]) == ("target", 2)


def test_workon_ends_when_a_rule_fires() -> None:
    exp = _experiment({"max_cost": 5})
    stats = exp.workon(lambda x: {"objective": x, "cost": 1.0}, max_trials=50)
    assert stats["counts"]["completed"] == 5
    assert stats["stop"]["fired"]["rule"] == "max_cost"


def test_workon_on_a_stopped_experiment_says_so_and_how_to_search_on(caplog: pytest.LogCaptureFixture) -> None:
    """It returned the same counts without a word, as if the larger max_trials had been run."""
    exp = _experiment({"max_cost": 2})
    exp.workon(lambda x: {"objective": x, "cost": 1.0})
    stats = exp.workon(lambda x: {"objective": x, "cost": 1.0}, max_trials=50)
    assert stats["counts"]["completed"] == 2
    assert "experiment 'e' was stopped by rule max_cost after 2 finished trials" in caplog.text
    assert "nothing to do: to search on, start an experiment with a new name" in caplog.text


def test_a_raised_budget_on_a_stopped_experiment_says_how_to_search_on_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """build_experiment('st', max_trials=20) on a stopped experiment warned 'to search on, …', then workon
    warned it again (hunt says it once)."""
    storage = str(tmp_path / "o.pkl")
    _experiment({"max_cost": 2}, storage, max_trials=5).workon(lambda x: {"objective": x, "cost": 1.0})
    caplog.clear()
    exp = _experiment({"max_cost": 2}, storage, max_trials=20)
    assert exp.workon(lambda x: {"objective": x, "cost": 1.0})["counts"]["completed"] == 2
    assert caplog.text.count("to search on, start an experiment with a new name") == 1, caplog.text
    assert "max_trials=20 not stored" in caplog.text and caplog.text.rstrip().endswith("nothing to do")
    caplog.clear()
    exp.workon(lambda x: {"objective": x, "cost": 1.0})  # this handle's build said it: not again
    assert "nothing to do" in caplog.text and "to search on" not in caplog.text
    caplog.clear()
    _experiment({"max_cost": 2}, storage).workon(lambda x: {"objective": x, "cost": 1.0})  # no raise: said
    assert caplog.text.count("to search on, start an experiment with a new name") == 1, caplog.text


# -- inserted evaluations ----------------------------------------------------------------------


def test_a_trial_inserted_to_run_after_a_rule_fired_is_refused_and_nothing_is_stored() -> None:
    exp = _experiment({"target": 0.1}, max_trials=10)
    _tell(exp, 0.05)
    with pytest.raises(BudgetExhaustedError) as refused:
        exp.insert({"x": 0.3})  # no worker would ever run it
    assert refused.value.reason is StopReason.STOPPED
    message = str(refused.value)
    assert "'e'" in message and "target" in message and "nothing was stored" in message and "objective=" in message
    assert exp.stats["counts"]["new"] == 0
    exp.insert({"x": 0.3}, objective=0.5)  # an evaluation made elsewhere is still recorded


def test_a_trial_inserted_into_a_broken_experiment_is_stored_with_a_warning_saying_what_to_do(
        caplog: pytest.LogCaptureFixture) -> None:
    exp = orchard.build_experiment("b", space=SPACE, storage="memory://", max_trials=10, max_broken=1)
    exp.observe(exp.suggest(), float("nan"))  # broken: the experiment's max_broken is reached
    exp.insert({"x": 0.3})
    assert exp.stats["counts"]["new"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'b'" in m and "max_broken" in m and "will not run" in m for m in warned), warned


@pytest.mark.parametrize("in_budget", [False, True], ids=["apart", "in-budget"])
def test_an_inserted_evaluation_that_reaches_the_target_stops_the_experiment(in_budget: bool) -> None:
    """An evaluation made elsewhere that already meets the target: workers have nothing left to find."""
    exp = _experiment({"target": 0.1}, max_trials=10)
    _tell(exp, 0.5)
    exp.insert({"x": 0.3}, objective=0.5, count_in_budget=in_budget)  # not reaching it changes nothing
    _runs(exp)
    inserted = exp.insert({"x": 0.2}, objective=0.05, count_in_budget=in_budget)
    fired = _stopped(exp)
    assert (fired["rule"], fired["trial"]) == ("target", inserted.id)
    assert "inserted" in fired["reason"]
    assert fired["finished"] == (3 if in_budget else 1)  # apart from the budget: not one of the workers' trials
    assert exp.fetch_trials([TrialStatus.COMPLETED])[-1].id == inserted.id  # recorded too


def test_orchard_insert_of_a_result_reaching_the_target_stops_hunt(tmp_path: Path) -> None:
    storage = str(tmp_path / "db.pkl")
    exp = _experiment({"target": 0.1}, storage, name="cli")
    assert main(["insert", "-n", "cli", "--storage", storage, "x=0.4", "--objective", "0.01"]) == 0
    assert _stopped(exp)["rule"] == "target"


def test_inserted_evaluations_set_the_bar_for_patience_without_using_it_up_unless_in_budget() -> None:
    exp = _experiment({"patience": 2})
    _tell(exp, 1.0)
    for i in range(3):  # evidence apart from the budget: no evaluation of this experiment was spent
        exp.insert({"x": 0.1 * (i + 1)}, objective=2.0 + i)
    _runs(exp)
    exp.insert({"x": 0.9}, objective=0.5)  # a better baseline: the workers get 2 trials to beat it
    _tell(exp, 0.7)
    _runs(exp)
    _tell(exp, 0.6)
    fired = _stopped(exp)
    assert (fired["rule"], fired["completed"]) == ("patience", 3)
    counted = _experiment({"patience": 2}, name="counted")
    _tell(counted, 1.0)
    counted.insert({"x": 0.5}, objective=2.0, count_in_budget=True)  # one of the experiment's trials
    _runs(counted)
    counted.insert({"x": 0.6}, objective=3.0, count_in_budget=True)
    assert _stopped(counted)["rule"] == "patience"


def test_max_cost_counts_an_inserted_evaluation_only_in_the_budget() -> None:
    exp = _experiment({"max_cost": 5}, max_trials=10)
    exp.insert({"x": 0.1}, objective=1.0, results={"cost": 100.0})  # spent elsewhere, apart from the budget
    _runs(exp)
    exp.insert({"x": 0.2}, objective=1.0, results={"cost": 5.0}, count_in_budget=True)
    assert _stopped(exp)["rule"] == "max_cost"


def test_a_refused_insert_folds_nothing() -> None:
    exp = _experiment({"target": 0.1})
    trial = exp.suggest()
    exp.observe(trial, 0.5)
    with pytest.raises(orchard.errors.DuplicateTrialError):
        exp.insert(trial.params, objective=0.0)  # those params were evaluated: refused, so nothing fires
    _runs(exp)
    assert exp.storage.experiment(exp.id).config[LEDGER_KEY]["finished"] == 1


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [
    {"target": "low"}, {"target": float("nan")}, {"patience": 0}, {"patience": 2.5},
    {"patience": {"trials": 3, "delta": 1}}, {"min_delta": 0.1}, {"patience": 3, "min_delta": -1},
    {"max_cost": 0}, {"max_cost": "x"}, {"cost_metric": "gpu"}, {"max_time": "2 hours"}, {"max_time": -5},
    {"max_time": True}, {"deadline": 3}, "target", ["target:0.1"],
    "target=0.1,target=0.5", ["patience=3", "patience=5"],  # the last one was kept silently
], ids=str)
def test_bad_rules_are_refused_before_anything_is_stored(stop: Any) -> None:
    storage = get_storage("memory://")
    with pytest.raises(ConfigurationError) as err:
        _experiment(stop, storage)
    assert "\n" not in str(err.value)
    assert storage.list_experiments() == []


def test_min_delta_given_both_in_patience_and_beside_it_is_refused() -> None:
    """{'patience': {'trials': 3, 'min_delta': 0.1}, 'min_delta': 0.5} dropped 0.5 silently."""
    with pytest.raises(ConfigurationError, match="give min_delta twice; give it once"):
        _experiment({"patience": {"trials": 3, "min_delta": 0.1}, "min_delta": 0.5})


def test_target_and_patience_are_refused_with_several_objectives() -> None:
    storage = get_storage("memory://")
    for stop in ({"target": 0.1}, {"patience": 5}):
        with pytest.raises(ConfigurationError, match="one objective"):
            _experiment(stop, storage, objectives={"error": "min", "latency": "min"})
    assert storage.list_experiments() == []
    exp = _experiment({"max_cost": 2, "max_time": "1h"}, storage, objectives={"error": "min", "latency": "min"})
    assert exp.settings.stop == {"max_cost": 2.0, "max_time": 3600.0}


def test_rules_are_stored_and_joining_with_other_rules_is_refused() -> None:
    storage = get_storage("memory://")
    exp = _experiment({"patience": 20, "min_delta": 1e-3, "max_time": "1h30m"}, storage)
    assert exp.config["stop"] == {"patience": 20, "min_delta": 0.001, "max_time": 5400.0}
    assert orchard.build_experiment("e", storage=storage).settings.stop == exp.settings.stop
    same = {"patience": {"trials": 20, "min_delta": 0.001}, "max_time": 5400}
    assert orchard.build_experiment("e", storage=storage, stop=same).id == exp.id
    with pytest.raises(ExperimentConflictError, match="stop"):
        orchard.build_experiment("e", storage=storage, stop={"patience": 21})


def test_joining_with_an_option_spelled_out_at_its_default_joins() -> None:
    """A joiner giving cost_metric=cost or min_delta=0 was refused: 'exists with a different configuration'."""
    storage = get_storage("memory://")
    exp = _experiment({"max_cost": 5, "patience": 3}, storage)
    for same in ({"max_cost": 5, "cost_metric": "cost", "patience": 3}, "max_cost=5,patience=3,min_delta=0"):
        assert orchard.build_experiment("e", storage=storage, stop=same).id == exp.id
    stored = {"max_cost": 5.0, "cost_metric": "cost", "patience": 3, "min_delta": 0.0}  # as another release wrote it
    assert storage.swap_experiment(exp.id, "stop", exp.config["stop"], stored)
    assert orchard.build_experiment("e", storage=storage, stop={"max_cost": 5, "patience": 3}).id == exp.id
    with pytest.raises(ConfigurationError, match="min_delta needs the rule patience"):
        _experiment({"target": 1, "min_delta": 0}, name="f")


def test_rules_come_from_flags_the_environment_and_config_files(tmp_path: Path) -> None:
    assert config.resolve("stop", flag=["target=0.1", "max-time=2h"], environ={}, files=[]) == {
        "target": 0.1, "max_time": 7200.0}
    assert config.resolve("stop", environ={"ORCHARD_STOP": "{patience: 5}"}, files=[]) == {"patience": 5}
    assert config.resolve("stop", environ={"ORCHARD_STOP": "max_cost=3,cost_metric=usd"}, files=[]) == {
        "max_cost": 3.0, "cost_metric": "usd"}
    (tmp_path / "orchard.yaml").write_text("stop:\n  target: 0.5\n")
    assert config.resolve("stop", environ={}, files=[tmp_path / "orchard.yaml"]) == {"target": 0.5}
    assert parse_duration("1h30m") == 5400.0 and parse_duration(90) == 90.0


@pytest.mark.parametrize("typo", ["1h1h", "30m1h", "1h 2h", "5s10s"])
def test_a_duration_naming_a_unit_twice_or_out_of_order_is_refused_not_summed(typo: str) -> None:
    """max_time='1h1h' was taken as 2 h and '30m1h' as 1.5 h: a typo ran for a time nobody wrote."""
    with pytest.raises(ValueError, match="each unit once, largest first"):
        parse_duration(typo)
    assert parse_duration("1d2h30m15s") == 86400 + 7200 + 1800 + 15


def test_one_stop_flag_takes_several_comma_separated_rules_as_the_docs_show(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.py").write_text("import orchard\norchard.report_objective(1.0)\n")
    assert main(["hunt", "-n", "e", "--storage", "db.pkl", "--stop", "target=0.05,patience=2",
                 "--stop", "max_time=2h", sys.executable, "f.py", "--x~uniform(0, 1)"]) == 0
    stored = get_storage("db.pkl").get_experiment("e")
    assert stored is not None and stored.config["stop"] == {"target": 0.05, "patience": 2, "max_time": 7200.0}
    assert stored.config[LEDGER_KEY]["fired"]["rule"] == "patience"  # 1.0, 1.0, 1.0: no improvement in 2


@pytest.mark.parametrize(("stop", "said"), [
    (sys.executable, f"{sys.executable!r} is the start of the command, taken as the stopping rule; --stop"),
    ("f.py", "'f.py' is the start of the command"),
    ("target", "stop rule 'target' has no value; give it as target=VALUE, e.g. target=0.1"),
    ("tarrget", "'tarrget' is not a stopping rule (did you mean target?); a rule is RULE=VALUE: target=0.1"),
    ("target=0.1,", "an empty stopping rule (an unset shell variable, a trailing comma?); a rule is"),
    ("data", "'data' is not a stopping rule; a rule is RULE=VALUE"),  # a folder: no command starts with it
    ("target=0.1 patience=3", "must be a finite number (rules are separated by commas: target=0.1,patience=...)"),
])
def test_a_stop_value_that_is_no_rule_is_named_with_what_a_rule_looks_like(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop: str,
        said: str) -> None:
    """`orchard hunt --stop python f.py` said "stop=['python'] is not a set of stopping rules": it named no
    word, and not that --stop had taken the start of the command as its rule."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.py").write_text("import orchard\norchard.report_objective(1.0)\n")
    (tmp_path / "data").mkdir()
    assert main(["hunt", "-n", "e", "--storage", "db.pkl", "--stop", stop, "f.py", "--x~uniform(0, 1)"]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "db.pkl").exists()


# -- what is shown -----------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [["--stop", "max_cost=2"], ["--max-trials", "2"]])
def test_hunt_and_workon_say_nothing_is_left_to_do_in_the_same_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, stop: list[str]) -> None:
    """hunt wrote its own line for an experiment a rule stopped ('experiment 'e': stopped by max_cost
    after ... (trial 1adf127012fa)'), workon another ('experiment 'e' was stopped by rule max_cost ...
    (trial <its whole id>)'); a met budget, the same words but the remedy (a flag, an argument)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.py").write_text(
        "import sys, orchard\nx = float(sys.argv[1].split('=')[1])\n"
        "orchard.report_results({'objective': x, 'cost': 1.0})\n")
    hunt = ["hunt", "-n", "e", "--storage", "db.pkl", *stop, sys.executable, "f.py", "--x~uniform(0, 1)"]
    assert main(hunt) == 0
    capsys.readouterr()
    assert main(hunt) == 0
    said = capsys.readouterr().out.strip()
    caplog.clear()
    orchard.get_experiment("e", storage="db.pkl").workon(lambda x: x, progress=False)
    warned = [record.getMessage() for record in caplog.records if "nothing to do" in record.getMessage()]
    remedy = ("Raise max_trials, or use a new experiment name", "Raise --max-trials to run more")
    assert warned and said == warned[0].replace(*remedy), said


def test_hunt_status_and_info_say_which_rule_stopped_the_experiment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.py").write_text(
        "import sys, orchard\nx = float(sys.argv[1].split('=')[1])\n"
        "orchard.report_results({'objective': x, 'cost': 1.0})\n")
    hunt = ["hunt", "-n", "e", "--storage", "db.pkl", "--stop", "max_cost=2", sys.executable, "f.py",
            "--x~uniform(0, 1)"]
    assert main(hunt) == 0
    out = capsys.readouterr().out
    assert "stopped by max_cost after 2 finished trials" in out and "nothing to do" not in out
    assert main([*hunt[:5], "--max-trials", "50", *hunt[5:]]) == 0  # a larger budget does not resume it
    out = capsys.readouterr().out
    assert out.startswith("experiment 'e' was stopped by rule max_cost after 2 finished trials"), out
    assert out.rstrip().endswith("; nothing to do"), out  # the warning that 50 is not stored says what to do
    assert len(get_storage("db.pkl").fetch_trials(get_storage("db.pkl").get_experiment("e").id)) == 2
    assert main(["status", "-n", "e", "--storage", "db.pkl"]) == 0
    assert "stop:    stopped by max_cost after 2 finished trials" in capsys.readouterr().out
    assert main(["list", "--storage", "db.pkl"]) == 0  # it read as an experiment with budget left
    assert capsys.readouterr().out.rstrip().endswith("0 waiting  stopped by max_cost")
    assert main(["list", "--storage", "db.pkl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["stopped"]["rule"] == "max_cost"
    assert main(["info", "-n", "e", "--storage", "db.pkl", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stop"]["fired"]["rule"] == "max_cost"
    assert LEDGER_KEY not in info["config"]
    assert main(["hunt", "-n", "e2", "--storage", "db.pkl", "--stop", "max_cost=-1", sys.executable, "f.py",
                 "--x~uniform(0, 1)"]) != 0
    assert "max_cost" in capsys.readouterr().err
    assert get_storage("db.pkl").get_experiment("e2") is None


def test_the_dashboard_experiment_page_says_which_rule_stopped_the_experiment() -> None:
    from orchard.dashboard import ExperimentView
    from orchard.dashboard._payloads import experiment_detail

    exp = _experiment({"target": 0.1})
    _tell(exp, 0.05)
    view = ExperimentView(exp.storage, exp.storage.require_experiment("e"))
    view.fold()
    detail = experiment_detail(view, exp.storage.redacted_uri)
    assert detail["stopping"]["line"].startswith("stopped by target after 1 finished trials")
    assert LEDGER_KEY not in detail["settings"]


def test_the_summary_lists_rules_not_yet_fired() -> None:
    exp = _experiment({"target": 0.1, "max_time": "2h"})
    _tell(exp, {"objective": 0.5})
    summary = stop_summary(exp.storage.experiment(exp.id).config)
    assert summary is not None and summary["fired"] is None
    assert summary["line"].startswith("target 0.1, max_time 7200 s; not fired (1 trials finished")


@pytest.mark.parametrize(("stored", "line"), [
    ({"target": 0.1, "deadline": 3}, "unusable stored rules (unknown stopping rule 'deadline'"),
    ({"target": "abc"}, "unusable stored rules (invalid stop rule target='abc'"),
    ({"patience": "x"}, "unusable stored rules (invalid stop rule patience='x'"),
    ("target=0.1", "target 0.1; not fired (2 trials finished"),  # as the rules are given: read as such
    ({"max_time": None, "target": 1}, "target 1; not fired (2 trials finished"),
], ids=str)
def test_the_summary_of_rules_another_program_stored_names_them_instead_of_failing(stored: Any, line: str) -> None:
    """Read by status, info, hunt's last line, exp.stats and the dashboard's experiment page: a TypeError here
    broke each of them for the experiment (the dashboard page answered 500)."""
    summary = stop_summary({"stop": stored, LEDGER_KEY: {"finished": 2}})
    assert summary is not None and summary["fired"] is None and summary["finished"] == 2
    assert summary["line"].startswith(line), summary["line"]


# -- exact with racing workers -----------------------------------------------------------------

RULES = {  # the rule, and what each trial reports: fast trials so reservations crowd the firing
    "target": ({"target": 0.03}, {}),
    "patience": ({"patience": 6}, {}),
    "max_cost": ({"max_cost": 12}, {"cost": 1.0}),
    "max_time": ({"max_time": 0.06}, {"sleep": 0.004}),
}


def _race_worker(uri: str, experiments: dict[str, str], index: int, *, start: Any = None) -> list[str]:
    """One racing process: a real worker loop on each experiment (rule -> id) in turn; its stop reasons."""
    from orchard.experiment_config import ExperimentConfig
    from orchard.objective import Outcome
    from orchard.worker import Worker, WorkerSettings

    storage = get_storage(uri)
    reasons = []
    races._go(start)
    for rule, exp_id in experiments.items():
        extra = RULES[rule][1]

        def evaluate(trial: Any, extra: dict[str, float] = extra) -> Outcome:
            time.sleep(extra.get("sleep", 0.0))  # the trial's work, measured by the worker
            return Outcome(objective=trial.params["x"], results={k: v for k, v in extra.items() if k == "cost"})

        stored = ExperimentConfig.from_dict(storage.experiment(exp_id).config)
        settings = dataclasses.replace(WorkerSettings.for_experiment(stored, idle_timeout=30.0), seed=index)
        report = Worker(storage, exp_id, settings, evaluate, name=f"host:{index}:racer").run()
        reasons.append(str(report.reason))
    storage.close()
    return reasons


def _assert_nothing_reserved_after_the_rule_fired(uri: str, exp_id: str, rule: str, n_workers: int) -> None:
    with get_storage(uri) as storage:
        fired = storage.experiment(exp_id).config[LEDGER_KEY]["fired"]
        trials = storage.fetch_trials(exp_id)
    assert fired["rule"] == rule
    firing = next(t for t in trials if t.id == fired["trial"])
    assert firing.status is TrialStatus.COMPLETED and firing.end_time is not None
    evaluated = [t for t in trials if t.status.is_terminal]
    late = [t.id for t in evaluated if t.start_time is not None and t.start_time >= firing.end_time]
    assert not late, f"{len(late)} trials were reserved after the completion that fired {rule}"
    assert len(evaluated) <= fired["finished"] + n_workers - 1, "only trials running at the firing may finish"
    statuses = collections.Counter(t.status for t in trials)
    assert statuses[TrialStatus.RESERVED] == statuses[TrialStatus.NEW] == 0
    assert all(t.attempts == 0 for t in trials if t.status is TrialStatus.INTERRUPTED), \
        "a reservation refused by the rule is given back, its attempt not counted"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_no_trial_is_reserved_after_a_rule_fired_with_four_racing_workers(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    uri, n_workers = backend_uri(backend, request, tmp_path), 4
    ids = {rule: orchard.build_experiment(f"race-{rule}", space=SPACE, storage=uri, stop=stop, heartbeat=5).id
           for rule, (stop, _) in RULES.items()}
    reasons = races.run_racing(_race_worker, [(uri, ids, i) for i in range(n_workers)],
                               timeout=150.0)
    assert all(reason == "stopped" for per_worker in reasons for reason in per_worker), reasons
    for rule, exp_id in ids.items():
        _assert_nothing_reserved_after_the_rule_fired(uri, exp_id, rule, n_workers)
