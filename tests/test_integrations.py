"""The LightGBM callback, with a real LightGBM training."""

from __future__ import annotations

from pathlib import Path

import pytest

import orchard
from orchard.errors import ConfigurationError
from orchard.trial import TrialStatus

lgb = pytest.importorskip("lightgbm")
np = pytest.importorskip("numpy")


def _data() -> tuple[object, object]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=600) > 0).astype(int)
    train = lgb.Dataset(x[:400], y[:400])
    return train, lgb.Dataset(x[400:], y[400:], reference=train)


def test_lightgbm_callback_reports_each_round_and_stops_pruned_trainings(tmp_path: Path) -> None:
    from orchard.integrations.lightgbm import pruning_callback

    train, valid = _data()

    def objective(learning_rate: float) -> float:
        booster = lgb.train({"objective": "binary", "metric": "binary_logloss", "learning_rate": learning_rate,
                             "num_leaves": 7, "verbosity": -1, "seed": 0},
                            train, num_boost_round=30, valid_sets=[valid], valid_names=["valid"],
                            callbacks=[pruning_callback("binary_logloss")])
        return float(booster.best_score["valid"]["binary_logloss"])

    exp = orchard.build_experiment("lgb", space={"learning_rate": "loguniform(1e-4, 0.5)"}, max_trials=8,
                                   storage=str(tmp_path / "db.pkl"), seed=0,
                                   pruner={"median": {"min_trials": 1, "warmup_steps": 2}})
    exp.workon(objective, progress=False)
    trials = exp.storage.fetch_trials(exp.id)
    counts = exp.storage.count_trials(exp.id)
    assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 8
    assert counts[TrialStatus.PRUNED] >= 1, [(t.params, t.status) for t in trials]
    for trial in trials:
        steps = [step for step, _ in trial.reports]
        assert steps == list(range(1, len(steps) + 1))
        if trial.status is TrialStatus.COMPLETED:
            assert len(steps) == 30
        else:
            assert trial.status is TrialStatus.PRUNED and len(steps) < 30


def test_lightgbm_callback_names_the_metrics_it_saw() -> None:
    from orchard.integrations.lightgbm import pruning_callback

    train, valid = _data()
    exp = orchard.build_experiment("lgb-bad", space={"x": "uniform(0, 1)"}, max_trials=1, storage="memory://")
    trial = exp.suggest()
    from orchard.verdicts import judging

    with judging(exp._client_worker().judge, trial.id), pytest.raises(ConfigurationError, match="valid/binary_logloss"):
        lgb.train({"objective": "binary", "metric": "binary_logloss", "verbosity": -1}, train,
                  num_boost_round=2, valid_sets=[valid], valid_names=["valid"], callbacks=[pruning_callback("auc")])


@pytest.mark.parametrize("trial_timeout", [None, 60.0], ids=["in-thread", "timed-child"])
def test_lightgbm_callback_reports_a_declared_objective_to_maximise_in_its_direction(
        tmp_path: Path, trial_timeout: float | None) -> None:
    """With ``objectives={"auc": "max"}`` the reports are the AUC as the experiment takes it, like its result.

    The callback used to negate a "higher is better" metric on its own, which the declared direction
    negated again: every report was stored as the opposite of the objective, and the pruner stopped
    the best trainings.
    """
    from orchard.integrations.lightgbm import pruning_callback

    train, valid = _data()

    def objective(learning_rate: float) -> float:
        seen: dict[str, dict[str, list[float]]] = {}
        lgb.train({"objective": "binary", "metric": "auc", "learning_rate": learning_rate,
                   "num_leaves": 7, "verbosity": -1, "seed": 0, "num_threads": 1},
                  train, num_boost_round=5, valid_sets=[valid], valid_names=["valid"],
                  callbacks=[pruning_callback("auc"), lgb.record_evaluation(seen)])
        return seen["valid"]["auc"][-1]  # the last round's AUC, as its last report

    exp = orchard.build_experiment("lgb-max", space={"learning_rate": "loguniform(1e-3, 0.5)"}, max_trials=2,
                                   storage=str(tmp_path / "db.pkl"), seed=0, objectives={"auc": "max"},
                                   pruner={"threshold": {"upper": 10.0}})
    exp.workon(objective, progress=False, trial_timeout=trial_timeout)
    for trial in exp.storage.fetch_trials(exp.id):
        assert trial.status is TrialStatus.COMPLETED
        assert [step for step, _ in trial.reports] == [1, 2, 3, 4, 5]
        assert all(-1.0 <= value < -0.5 for _, value in trial.reports), trial.reports  # -AUC: minimized form
        assert trial.reports[-1][1] == pytest.approx(trial.objective)
