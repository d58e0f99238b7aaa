"""What an algorithm learns from broken trials: a point whose evaluation failed is one to move away from.

The objective fails on half of the space; a model that is not told its failures sees no change
after one and suggests the failed point's neighbour again, until ``max_broken`` stops the experiment.
"""

from __future__ import annotations

from typing import Any

import pytest

import orchard
from orchard.algorithms import make_algorithm
from orchard.algorithms.base import Observation, Pending, SeenPoints
from orchard.space import Space


def crashes_right_half(x: float, y: float) -> float:
    if x > 0.5:
        raise ValueError("diverged")
    return (x - 0.3) ** 2 + (y - 0.7) ** 2


@pytest.mark.parametrize("options", [{}, {"acq_optimizer": "sampling"}, {"base_estimator": "RF"}],
                         ids=["lbfgs", "sampling", "RF"])
def test_bayes_moves_away_from_broken_trials(tmp_path: Any, options: dict[str, Any]) -> None:
    exp = orchard.build_experiment(
        "crashy", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, max_trials=16, max_broken=8, seed=3,
        algorithm={"bayes": {"n_initial_points": 3, **options}}, storage=str(tmp_path / "o.pkl"))
    exp.workon(crashes_right_half, progress=False)  # raises ExperimentBrokenError at 8 broken
    broken = [t for t in exp.fetch_trials() if t.status is orchard.TrialStatus.BROKEN]
    assert len(broken) < 8


def test_bayes_broken_points_steer_the_suggestion() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "y": "uniform(0, 1)"})
    completed = [Observation({"x": x, "y": y}, (x - 0.3) ** 2 + (y - 0.7) ** 2, float(i))
                 for i, (x, y) in enumerate([(0.1, 0.1), (0.2, 0.4), (0.05, 0.9), (0.4, 0.2)])]
    algorithm = make_algorithm({"bayes": {"n_initial_points": 3}}, space, seed=0)
    first = algorithm.suggest(completed, [])[0]
    seen = SeenPoints([o.params for o in completed] + [first])
    after = algorithm.suggest(completed, Pending([], [], seen, broken=[first]), seen=seen)[0]
    assert abs(after["x"] - first["x"]) + abs(after["y"] - first["y"]) > 0.05



def two_objectives_crashing_right_half(x: float, y: float) -> dict[str, float]:
    return {"a": x, "b": crashes_right_half(x, y) + 1 - x}


def test_bayes_with_two_objectives_moves_away_from_broken_trials(tmp_path: Any) -> None:
    exp = orchard.build_experiment(
        "crashy", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, objectives={"a": "min", "b": "min"},
        max_trials=16, max_broken=8, seed=3, algorithm={"bayes": {"n_initial_points": 3}},
        storage=str(tmp_path / "o.pkl"))
    exp.workon(two_objectives_crashing_right_half, progress=False)  # raises ExperimentBrokenError at 8 broken
    broken = [t for t in exp.fetch_trials() if t.status is orchard.TrialStatus.BROKEN]
    assert len(broken) < 8


def crashes_right_half_at_fidelity(x: float, y: float, epochs: int) -> float:
    return crashes_right_half(x, y) + 1 / epochs


@pytest.mark.parametrize("algorithm", ["asha", "hyperband"])
def test_multi_fidelity_samplers_move_away_from_broken_trials(tmp_path: Any, algorithm: str) -> None:
    exp = orchard.build_experiment(
        "crashy", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)", "epochs": "fidelity(1, 9)"},
        algorithm=algorithm, max_trials=40, max_broken=25, seed=1, storage=str(tmp_path / "o.pkl"))
    exp.workon(crashes_right_half_at_fidelity, progress=False)  # raises ExperimentBrokenError at 25 broken
    broken = [t for t in exp.fetch_trials() if t.status is orchard.TrialStatus.BROKEN]
    assert len(broken) < 25


def diverges_right_half(x: float) -> float:
    orchard.report(0.01, step=1)  # looks excellent, then blows up
    if x > 0.5:
        orchard.report(float("nan"), step=2)
        if orchard.should_prune():
            raise orchard.TrialPruned()
    return 0.5 + x


def test_a_training_pruned_because_it_diverged_is_told_as_a_failure_not_at_its_last_value(tmp_path: Any) -> None:
    """A NaN report prunes the trial at its last finite report (0.01 here, better than any result): told to an
    algorithm at that value, the region where training blows up looked the best of the space."""
    from orchard.history import History
    from orchard.trial import TrialStatus

    exp = orchard.build_experiment("nan", space={"x": "uniform(0, 1)"}, max_trials=12, seed=2, pruner="median",
                                   storage=str(tmp_path / "o.pkl"))
    exp.workon(diverges_right_half, executor="single", progress=False)
    history = History(exp.storage, exp.id)
    history.refresh()
    diverged = [t.params for t in exp.fetch_trials([TrialStatus.PRUNED])]
    assert diverged and all(p["x"] > 0.5 for p in diverged)
    assert sorted(p["x"] for p in history.pending().broken) == sorted(p["x"] for p in diverged)
    assert all(o.params["x"] <= 0.5 for o in history.observations)  # only the completed ones, at their results
