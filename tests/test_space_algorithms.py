"""What algorithms make of awkward spaces: choices that compare equal across types, and the like.

In-process, on small hand-made histories.
"""

from __future__ import annotations

import collections

import pytest

from orchard.algorithms import Observation, make_algorithm
from orchard.space import Space

pytest.importorskip("optuna")


def test_optuna_learns_which_of_true_and_1_is_better() -> None:
    """``choices([1, True])``: every ``True`` trial scored 1, every ``1`` trial 0; the sampler must prefer 1.

    Optuna finds a categorical value by ``list.index``, so a trial at ``True`` was told to its
    model as one at ``1``: TPE then suggested the bad choice, ``True``, every time.
    """
    space = Space.from_config({"c": "choices([1, True])", "x": "uniform(0, 1)"})
    history = [Observation({"c": c, "x": (i + 0.5) / 12}, 1.0 if c is True else 0.0, end_time=float(i))
               for i in range(12) for c in (True, 1)]
    picked = collections.Counter()
    for seed in range(10):
        algorithm = make_algorithm({"optuna": {"sampler": "TPESampler"}}, space, seed=seed)
        (point,) = algorithm.suggest(history, [], n=1)
        picked[repr(point["c"])] += 1
    assert picked["1"] >= 8, picked


@pytest.mark.parametrize("sampler", ["TPESampler", "RandomSampler", "QMCSampler", "NSGAIISampler", "CmaEsSampler"])
def test_optuna_suggests_each_choice_as_the_object_given(sampler: str) -> None:
    """A suggested choice is the listed object itself (``True`` stays a bool, ``'1'`` a str), past the start too."""
    if sampler == "CmaEsSampler":
        pytest.importorskip("cmaes")
    choices = ["1", 1, True, 2.5, "é $HOME;`ls`"]
    space = Space.from_config({"c": f"choices({choices!r})", "x": "uniform(0, 1)"})
    history = [Observation({"c": choices[i % 5], "x": i / 40}, float(i % 7), end_time=float(i)) for i in range(40)]
    algorithm = make_algorithm({"optuna": {"sampler": sampler}}, space, seed=3)
    for point in algorithm.suggest(history, [], n=8):
        assert any(type(point["c"]) is type(c) and point["c"] == c for c in choices), point


@pytest.mark.parametrize("sampler", ["TPESampler", "QMCSampler", "NSGAIISampler", "CmaEsSampler"])
def test_optuna_runs_a_space_of_choices_only(sampler: str) -> None:
    """Through the random start and past it, every suggestion is a point of the space."""
    if sampler == "CmaEsSampler":
        pytest.importorskip("cmaes")
    space = Space.from_config({"c": "choices(['a', 1, True, 2.5])", "k": "choices([False, 0])"})
    startup = {"n_startup_trials": 2} if sampler in ("TPESampler", "CmaEsSampler") else {}
    algorithm = make_algorithm({"optuna": {"sampler": sampler, **startup}}, space, seed=0)
    history: list[Observation] = []
    for i in range(7):
        (point,) = algorithm.suggest(history, [], n=1)
        assert space.validate(point) == point
        history.append(Observation(point, float(i), end_time=float(i)))
    assert len({(repr(o.params["c"]), repr(o.params["k"])) for o in history}) == 7
