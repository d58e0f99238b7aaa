"""The search surface used carelessly: odd objectives, results, reports and plugins.

Whatever a user's objective raises or returns, and whatever a third-party algorithm
answers, no trial is left ``reserved`` by a worker that died, no worker hangs, and the
user reads one line naming the object and what to do.
"""

from __future__ import annotations

import pytest

import orchard
from orchard.errors import ExperimentBrokenError
from orchard.objective import Outcome, TrialEvaluator
from orchard.trial import Trial, TrialStatus

SPACE = {"x": "uniform(0, 1)"}


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ broke")


def _exits(x: float) -> float:
    raise SystemExit(3)


def _closes(x: float) -> float:
    raise GeneratorExit


def _unprintable(x: float) -> float:
    raise _UnprintableError


@pytest.mark.parametrize("fn, kind", [(_exits, "SystemExit"), (_closes, "GeneratorExit"),
                                      (_unprintable, "_UnprintableError")])
def test_an_objective_raising_an_odd_exception_breaks_its_trial_and_the_worker_goes_on(fn, kind: str) -> None:
    exp = orchard.build_experiment(f"odd-{kind}", space=SPACE, max_trials=3, max_broken=2, storage="memory://")
    with pytest.raises(ExperimentBrokenError):
        exp.workon(fn, progress=False)  # in this thread: nothing may escape the evaluation
    trials = exp.fetch_trials()
    assert [t.status for t in trials] == [TrialStatus.BROKEN] * 2, "none left reserved"
    assert all(t.error is not None and t.error["type"] == kind for t in trials)
    if kind == "_UnprintableError":
        assert "str() of the exception raised RuntimeError" in trials[0].error["message"]


class _Faulty(TrialEvaluator):
    """An evaluator that breaks its contract by raising."""

    def __call__(self, trial: Trial) -> Outcome:
        raise RuntimeError("evaluator bug")


def test_an_evaluator_that_raises_leaves_no_trial_reserved() -> None:
    exp = orchard.build_experiment("faulty-evaluator", space=SPACE, max_trials=3, max_broken=1, storage="memory://")
    with pytest.raises(ExperimentBrokenError, match="evaluator bug"):
        exp.workon(_Faulty(), progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.BROKEN and trial.error["type"] == "RuntimeError"
