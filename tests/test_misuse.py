"""The search surface used carelessly: odd objectives, results, reports and plugins.

Whatever a user's objective raises or returns, and whatever a third-party algorithm
answers, no trial is left ``reserved`` by a worker that died, no worker hangs, and the
user reads one line naming the object and what to do.
"""

from __future__ import annotations

import decimal
import fractions
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

import orchard
from orchard.algorithms import ALGORITHMS
from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import (
    AlgorithmError,
    ConfigurationError,
    ExperimentBrokenError,
    ReservationLostError,
    SpaceError,
)
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


def _holding_itself() -> dict[str, object]:
    result: dict[str, object] = {"objective": 0.5}
    result["self"] = result
    return result


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("result, words", [
    (10**400, "an int of 1329 bits; it must be a finite number"),
    ({"objective": 0.5, "count": 10**30}, "result 'count' cannot be stored: it holds an int of 100 bits"),
    ({"objective": 0.5, "curve": _nested(40)}, "nested more than 32 deep"),
    ({"objective": 0.5, "curve": _nested(5000)}, "nested more than 32 deep"),  # a RecursionError in Orchard
    (_holding_itself(), "nested more than 32 deep"),
    ({"objective": 0.5, "cost": 10**400}, "result 'cost' cannot be stored"),  # max_cost sums it
    ({"objective": 0.5, "memory_gb": 10**300}, "result 'memory_gb' cannot be stored"),  # a constraint reads it
    # 5 MB of JSON: MongoDB refused it (27 MB of BSON), the pickle file made every worker read it
    ({"objective": 0.5, "loss": 0.1, "curve": [0.5] * 1_000_000},
     "the results take 5 MB as JSON (the largest is 'curve'), more than the 4.19 MB a trial may hold"),
], ids=["objective", "int", "depth", "depth beyond recursion", "holding itself", "cost", "constraint",
        "size"])
def test_a_result_the_storage_cannot_hold_breaks_the_trial_and_the_worker_goes_on(tmp_path, result, words) -> None:
    exp = orchard.build_experiment("unholdable", space=SPACE, max_trials=3, max_broken=2, stop={"max_cost": 5.0},
                                   constraints=["memory_gb <= 16"], storage=str(tmp_path / "db.pkl"))
    with pytest.raises(ExperimentBrokenError, match=r"last error \(trial \w+\): InvalidResult"):
        exp.workon(lambda x: result, progress=False)
    trials = exp.fetch_trials()
    assert [t.status for t in trials] == [TrialStatus.BROKEN] * 2, "none left reserved"
    assert words in trials[0].error["message"] and "\n" not in trials[0].error["message"]


def test_results_just_under_the_size_limit_are_stored_whole(tmp_path) -> None:
    from orchard.objective import MAX_RESULTS_BYTES

    curve = [0.5] * ((MAX_RESULTS_BYTES - 100) // 5)  # "0.5, " per item
    exp = orchard.build_experiment("large", space=SPACE, max_trials=1, storage=str(tmp_path / "db.pkl"))
    exp.workon(lambda x: {"objective": x, "curve": curve}, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.results["curve"] == curve


def test_an_objective_given_by_name_as_a_huge_int_breaks_the_trial() -> None:
    exp = orchard.build_experiment("huge-named", space=SPACE, objectives={"error": "min", "size": "max"},
                                   max_trials=3, max_broken=1, storage="memory://")
    with pytest.raises(ExperimentBrokenError, match="an int of 1329 bits"):
        exp.workon(lambda x: {"error": 10**400, "size": 1.0}, progress=False)
    assert [t.status for t in exp.fetch_trials()] == [TrialStatus.BROKEN]


def test_results_are_held_to_the_storages_own_depth() -> None:
    from orchard.objective import MAX_RESULT_DEPTH
    from orchard.storages.pickled.records import MAX_DEPTH

    assert MAX_RESULT_DEPTH == MAX_DEPTH


@pytest.mark.parametrize("value, step, words", [
    (10**400, 1, "finite number as the value, got an int of 1329 bits"),
    ({"error": 10**400}, 1, "finite number for objective 'error'"),
    (0.5, 2**63, "integer step >= 0 and < 2**63"),
], ids=["value", "named-value", "step"])
def test_a_report_too_large_for_a_float_or_a_stored_int_is_refused_in_one_line(value, step, words) -> None:
    from orchard.report import check_report

    with pytest.raises(ValueError, match=re.escape(words)):
        check_report(value, step)


def test_a_report_line_with_a_huge_number_is_skipped_and_the_follower_survives() -> None:
    from orchard.verdicts import _parse

    line = b'{"step": 1, "objective": 1' + b"0" * 400 + b"}"
    assert "finite number" in str(_parse(line, "t"))  # a reason to skip it, not an OverflowError in the thread


def test_a_worker_whose_result_the_storage_refuses_breaks_the_trial_instead_of_dying() -> None:
    from orchard.space import Space
    from orchard.storages import get_storage
    from orchard.worker import Worker, WorkerSettings

    storage = get_storage("memory://refusing")
    exp_id = storage.create_experiment("refused", {"space": SPACE})

    def refuse(*args: object, **kwargs: object) -> Trial:
        raise ValueError("document too large")  # a driver's refusal no check foresaw

    storage.complete_trial = refuse  # type: ignore[method-assign]
    settings = WorkerSettings(space=Space.from_config(SPACE), algorithm={"random": {}}, max_trials=2, max_broken=2)
    report = Worker(storage, exp_id, settings, lambda trial: Outcome(objective=0.5)).run()
    assert report.broken == 2 and report.reason == "broken"
    trials = storage.fetch_trials(exp_id)
    assert [t.status for t in trials] == [TrialStatus.BROKEN] * 2
    assert trials[0].error["reason"] == "unstorable" and "document too large" in trials[0].error["message"]


class _Careless(BaseAlgorithm):
    """A plugin that breaks the algorithm contract in the way its option ``answer`` names."""

    OPTIONS: ClassVar[dict[str, Any]] = {"answer": "raise"}

    def suggest(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]], n: int = 1,
                seen: SeenPoints | None = None) -> list[dict[str, Any]]:
        answer = self.options["answer"]
        if answer == "raise":
            raise ValueError("plugin bug")
        if answer == "exit":
            sys.exit(3)  # a plugin's own command-line habit: it ended workon with no message
        if answer == "seen-add":  # keeps its own record in the set it is given (the kit does not pass one)
            point = {"x": (len(completed) + 0.5) / 10}
            if seen is not None:
                seen.add(point)
            return [point]
        huge = 10**5000  # repr refuses ints of more than 4,300 digits: the worker died of its message
        return {"outside": [{"x": 5.0}], "missing": [{}], "empty": [], "none": None, "same": [{"x": 0.5}],
                "huge": [{"x": huge}], "huge-extra": [{"x": 0.5, "w": huge}],
                "huge-name": [{"x": 0.5, huge: 1}]}[answer]  # type: ignore[return-value]


@pytest.mark.parametrize("answer, words", [
    ("raise", "failed to suggest a point: ValueError('plugin bug')"),
    ("outside", "suggested a point outside the space: dimension 'x': value 5.0 is outside"),
    ("missing", "suggested a point outside the space: params {} do not match the space: missing 'x'"),
    ("empty", "answered [] instead of a list of points"),
    ("none", "answered None instead of a list of points"),
    ("same", "suggested 20 points in a row that the experiment already holds (the last: {'x': 0.5})"),
    ("exit", "failed to suggest a point: it called sys.exit(3)"),
    ("huge", "suggested a point outside the space: dimension 'x': value an int of 16610 bits is outside"),
    ("huge-extra", "suggested a point outside the space: params {'x': 0.5, 'w': an int of 16610 bits} do not "
                   "match the space: unknown 'w'"),
    ("huge-name", "do not match the space: unknown an int of 16610 bits"),
], ids=["raise", "outside", "missing", "empty", "none", "same", "exit", "huge", "huge-extra", "huge-name"])
def test_an_algorithm_breaking_its_contract_stops_the_worker_with_one_line(monkeypatch, answer: str,
                                                                          words: str) -> None:
    monkeypatch.setitem(ALGORITHMS, "careless", lambda: _Careless)
    exp = orchard.build_experiment(f"careless-{answer}", space=SPACE, algorithm={"careless": {"answer": answer}},
                                   max_trials=3, storage="memory://")
    with pytest.raises(AlgorithmError) as caught:
        exp.workon(lambda x: x, progress=False, idle_timeout=1)  # it polled forever, or evaluated x=5
    assert words in str(caught.value) and "'careless'" in str(caught.value) and "\n" not in str(caught.value)
    assert [t.params for t in exp.fetch_trials()] == ([{"x": 0.5}] if answer == "same" else [])


def test_an_algorithm_that_adds_its_point_to_the_seen_set_it_is_given_does_not_corrupt_the_worker(
        monkeypatch) -> None:
    """The set was the worker's record of the experiment's points: each point the plugin added there looked
    registered already, and the worker stopped with "suggested 20 points in a row that the experiment already
    holds ... it ignores the completed and pending points", which the plugin did not."""
    monkeypatch.setitem(ALGORITHMS, "careless", lambda: _Careless)
    exp = orchard.build_experiment("careless-seen", space=SPACE, max_trials=3, storage="memory://",
                                   algorithm={"careless": {"answer": "seen-add"}})
    exp.workon(lambda x: x, progress=False)
    done = [t.params["x"] for t in exp.fetch_trials() if t.status is TrialStatus.COMPLETED]
    assert sorted(done) == [0.05, 0.15, 0.25]


class _ParentNaming(BaseAlgorithm):
    """A plugin whose ``parent_of`` breaks the contract in the way its option ``parent`` names."""

    OPTIONS: ClassVar[dict[str, Any]] = {"parent": "raise"}

    def suggest(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]], n: int = 1,
                seen: SeenPoints | None = None) -> list[dict[str, Any]]:
        return [{"x": (len(completed) + len(pending) + 0.5) / 10}]

    def parent_of(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        parent = self.options["parent"]
        if parent == "raise":
            raise KeyError("rung")
        return {"text": "x=0.1", "ghost": {"x": 0.999}, "itself": dict(params)}[parent]  # type: ignore[return-value]


@pytest.mark.parametrize("parent, words", [
    ("raise", "failed to name the parent of point {'x': 0.05}: KeyError('rung')"),
    ("text", "named 'x=0.1' as the parent of point {'x': 0.05}, not the params of a trial"),
    ("ghost", "named {'x': 0.999} as the parent of point {'x': 0.05}, which is no trial of the experiment"),
    ("itself", "named {'x': 0.05} as the parent of point {'x': 0.05}, which is no trial of the experiment"),
], ids=["raise", "text", "ghost", "itself"])
def test_an_algorithm_naming_a_parent_that_is_no_trial_stops_the_worker_with_one_line(
        monkeypatch, parent: str, words: str) -> None:
    """A parent_of that raised killed the worker ("a worker died ...: KeyError ... If the objective crashed its
    process ..."), and one naming no trial of the experiment had its point stored with a dangling parent id
    (a script was handed ORCHARD_PARENT_WORKING_DIR of a trial that never ran)."""
    monkeypatch.setitem(ALGORITHMS, "parent_naming", lambda: _ParentNaming)
    exp = orchard.build_experiment(f"parent-{parent}", space=SPACE, max_trials=3, storage="memory://",
                                   algorithm={"parent_naming": {"parent": parent}})
    with pytest.raises(AlgorithmError) as caught:
        exp.workon(lambda x: x, progress=False)
    assert f"algorithm 'parent_naming' {words}" in str(caught.value) and "\n" not in str(caught.value)
    assert exp.fetch_trials() == []


class _FloatCounter(BaseAlgorithm):
    """A plugin that suggests its integer dimension as floats (3.0), as numpy-minded code does."""

    def suggest(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]], n: int = 1,
                seen: SeenPoints | None = None) -> list[dict[str, Any]]:
        return [{"k": float(len(completed) + len(pending))}]


def test_a_plugin_point_is_run_and_stored_with_the_space_types(monkeypatch) -> None:
    """randint's 3.0 was handed to the objective and stored as a float (range(k) raised TypeError)."""
    monkeypatch.setitem(ALGORITHMS, "float_counter", lambda: _FloatCounter)
    exp = orchard.build_experiment("float-counter", space={"k": "randint(0, 10)"}, algorithm="float_counter",
                                   max_trials=3, storage="memory://")
    exp.workon(lambda k: len(range(k)), progress=False)
    assert sorted((t.params["k"], type(t.params["k"])) for t in exp.fetch_trials()) == [(0, int), (1, int), (2, int)]


class _Unbuildable(_Careless):
    def __init__(self, space: Any, seed: int | None = None, **options: Any) -> None:
        raise RuntimeError("init boom")


class _Exiting(_Careless):
    def __init__(self, space: Any, seed: int | None = None, **options: Any) -> None:
        sys.exit("no GPU found")  # ended the caller's program with no word from Orchard


@pytest.mark.parametrize("plugin, words", [(_Unbuildable, "RuntimeError: init boom"),
                                           (_Exiting, "SystemExit: no GPU found")], ids=["raise", "exit"])
def test_an_algorithm_that_cannot_be_built_is_named(monkeypatch, plugin: type, words: str) -> None:
    monkeypatch.setitem(ALGORITHMS, "unbuildable", lambda: plugin)
    with pytest.raises(ConfigurationError, match=f"algorithm 'unbuildable' .* could not be built .*{words}"):
        orchard.build_experiment("unbuildable", space=SPACE, algorithm="unbuildable", storage="memory://")


def test_a_report_from_a_thread_the_objective_started_says_how_to_make_it_work() -> None:
    import contextvars
    import threading

    outcomes: list[BaseException | None] = []

    def in_thread(target: Any) -> None:
        def run() -> None:
            try:
                target()
                outcomes.append(None)
            except BaseException as err:  # noqa: BLE001 -- handed to the test
                outcomes.append(err)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    def train(x: float) -> float:
        in_thread(lambda: orchard.report(x, 1))  # a plain thread has no trial
        context = contextvars.copy_context()
        in_thread(lambda: context.run(orchard.report, x, 2))  # the advice of the message
        return x

    exp = orchard.build_experiment("threaded-report", space=SPACE, max_trials=1, storage="memory://")
    exp.workon(train, progress=False)
    refused, advised = outcomes
    assert isinstance(refused, RuntimeError) and "copy_context().run" in str(refused) and advised is None
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and [step for step, _ in trial.reports] == [2]


class _TensorLike:
    """What deep-learning frameworks return for a loss: a one-value tensor with ``item()``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


@pytest.mark.parametrize("result", [
    np.array(0.25), _TensorLike(0.25), {"objective": np.array(0.25), "accuracy": np.array(0.9)},
    _TensorLike(np.float32(0.25)),  # type: ignore[arg-type]
], ids=["0-d array", "tensor", "mapping of 0-d arrays", "tensor of a numpy scalar"])
def test_an_objective_returning_what_report_takes_completes(result: object) -> None:
    def train(x: float) -> object:
        orchard.report(result["objective"] if isinstance(result, dict) else result, 1)  # accepted here...
        return result  # ...and so at the end of a whole training

    exp = orchard.build_experiment("tensor-result", space=SPACE, max_trials=1, max_broken=1, storage="memory://")
    exp.workon(train, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.objective == 0.25 and trial.reports == [(1, 0.25)]
    assert trial.results == ({"accuracy": 0.9} if isinstance(result, dict) else {})


@pytest.mark.parametrize("one_value", [np.array, _TensorLike], ids=["0-d arrays", "tensors"])
def test_several_objectives_may_be_0d_arrays_or_tensors(one_value: Callable[[float], object]) -> None:
    """As orchard.report({"error": loss, ...}) takes them: a loss tensor returned as it is."""
    exp = orchard.build_experiment("tensor-objectives", space=SPACE, objectives={"error": "min", "size": "max"},
                                   max_trials=1, max_broken=1, storage="memory://")
    exp.workon(lambda x: {"error": one_value(0.25), "size": one_value(3), "note": "kept"}, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.results == {"error": 0.25, "size": 3, "note": "kept"}


class _Tensor(_TensorLike):
    """A tensor of several values: ``item()`` refuses it, ``tolist()`` gives them (as PyTorch's)."""

    def item(self) -> float:
        raise ValueError("only one element tensors can be converted to Python scalars")

    def tolist(self) -> list[float]:
        return [self.value, self.value]


def test_a_metric_of_several_values_is_stored_as_its_list() -> None:
    """{"objective": loss, "per_class": np.array([...])} broke the trial (not JSON data): the loss was lost."""
    metrics = {"per_class": np.array([0.5, 0.75]), "confusion": np.array([[3, 1], [0, 4]], dtype=np.int64),
               "curve": _Tensor(0.5)}
    exp = orchard.build_experiment("arrays", space=SPACE, max_trials=1, max_broken=1, storage="memory://")
    exp.workon(lambda x: {"objective": 0.25, **metrics}, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.objective == 0.25
    assert trial.results == {"per_class": [0.5, 0.75], "confusion": [[3, 1], [0, 4]], "curve": [0.5, 0.5]}


async def _awaited(x: float) -> float:
    return x


def _yielding(x: float) -> Any:
    yield x


class _AsyncModel:
    async def __call__(self, x: float) -> float:
        return x


@pytest.mark.parametrize("fn", [_awaited, _yielding, _AsyncModel()],
                         ids=["async", "generator", "async-instance"])
def test_an_objective_whose_call_gives_no_value_is_refused_before_any_trial(fn: Any) -> None:
    exp = orchard.build_experiment("no-value", space=SPACE, max_trials=2, storage="memory://")
    with pytest.raises(ConfigurationError, match="is an async or generator function"):
        exp.workon(fn, progress=False)  # each trial was reserved, then broken
    assert exp.fetch_trials() == []


@pytest.mark.parametrize("n_workers", [1.5, "2", 0])
def test_a_worker_count_that_is_not_a_positive_int_is_one_line(n_workers: Any) -> None:
    exp = orchard.build_experiment("counted", space=SPACE, max_trials=2, storage="memory://")
    with pytest.raises(ConfigurationError, match="n_workers must be a positive integer"):
        exp.workon(lambda x: x, n_workers=n_workers, progress=False)


def test_a_numpy_worker_count_is_a_count_and_joblibs_minus_one_is_told_what_to_pass() -> None:
    exp = orchard.build_experiment("numpy-count", space=SPACE, max_trials=2, storage="memory://")
    with pytest.raises(ConfigurationError, match=r"got -1 \(joblib's -1 for one per CPU is n_workers=os.cpu"):
        exp.workon(lambda x: x, n_workers=-1, progress=False)
    stats = exp.workon(lambda x: x, n_workers=np.int64(2), executor="thread", progress=False)  # was refused
    assert stats["counts"]["completed"] == 2


def test_observing_a_trial_twice_says_so() -> None:
    exp = orchard.build_experiment("twice", space=SPACE, max_trials=2, storage="memory://")
    trial = exp.suggest()
    exp.observe(trial, 0.5)
    with pytest.raises(ReservationLostError, match="is already completed, recorded by this worker .* observe each"):
        exp.observe(trial, 0.4)  # said: its reservation was released (stale heartbeat?) or taken by another worker
    assert exp.fetch_trials()[0].objective == 0.5


def test_a_nan_returned_unnamed_for_several_objectives_is_told_to_name_them() -> None:
    exp = orchard.build_experiment("unnamed", space=SPACE, objectives={"error": "min", "size": "max"},
                                   max_trials=2, max_broken=1, storage="memory://")
    with pytest.raises(ExperimentBrokenError):
        exp.workon(lambda x: math.nan, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.error["message"] == ("the result is float nan, but the experiment has objectives error, size: "
                                      "return each by name, e.g. return {'error': ..., 'size': ...}")


@pytest.mark.parametrize("result", [(0.2, 0.8), [0.2, 0.8], np.array([0.2, 0.8])], ids=["tuple", "list", "array"])
def test_several_objectives_returned_in_their_declared_order_are_recorded_by_name(result: object) -> None:
    """Optuna's ``return loss, latency`` broke the trial ("the result is tuple (0.2, 0.8), but the experiment
    has objectives error, size: return each by name") though the experiment declared both, in that order."""
    exp = orchard.build_experiment("ordered", space=SPACE, objectives={"error": "min", "size": "max"},
                                   max_trials=1, max_broken=1, storage="memory://")
    exp.workon(lambda x: result, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and trial.results == {"error": 0.2, "size": 0.8}
    assert trial.objective == 0.2 and [t.id for t in exp.pareto_front()] == [trial.id]


@pytest.mark.parametrize(("result", "returned"), [((0.2, 0.8, 3.0), "tuple (0.2, 0.8, 3.0): 3 value(s)"),
                                                  ([0.2], "list [0.2]: 1 value(s)")])
def test_several_objectives_returned_in_order_but_not_one_each_are_told_how_many(result: object,
                                                                                  returned: str) -> None:
    exp = orchard.build_experiment("miscounted", space=SPACE, objectives={"error": "min", "size": "max"},
                                   max_trials=2, max_broken=1, storage="memory://")
    with pytest.raises(ExperimentBrokenError):
        exp.workon(lambda x: result, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.error["message"] == (f"the result is {returned} for the 2 objectives error, size; return one "
                                      "value per objective in that order, or each by name, e.g. return "
                                      "{'error': ..., 'size': ...}")


def test_a_tuple_returned_by_a_single_objective_is_shown_and_told_how_to_declare_several() -> None:
    exp = orchard.build_experiment("tuple", space=SPACE, max_trials=2, max_broken=1, storage="memory://")
    with pytest.raises(ExperimentBrokenError):
        exp.workon(lambda x: (0.2, 0.8), progress=False)  # Optuna's habit for two objectives
    (trial,) = exp.fetch_trials()
    assert trial.error["message"].startswith("objective must be a number, got tuple (0.2, 0.8); ")
    assert trial.error["message"].endswith("; for several objectives, declare them (build_experiment(..., "
                                           "objectives={'a': 'min', 'b': 'max'})) and return them in that "
                                           "order, or each by name")


def test_a_decimal_or_fraction_objective_is_recorded_as_its_float() -> None:
    """Decimal and Fraction, which ``float()`` takes (and Optuna with it), broke the trial: "objective must be
    a number, got Decimal Decimal('0.25')"."""
    exp = orchard.build_experiment("exact", space=SPACE, max_trials=3, max_broken=1, storage="memory://")
    returned = iter([decimal.Decimal("0.25"), fractions.Fraction(1, 3),
                     {"objective": decimal.Decimal("0.5"), "cost": fractions.Fraction(1, 2)}])
    exp.workon(lambda x: next(returned), progress=False)
    trials = exp.fetch_trials()
    assert [t.status for t in trials] == [TrialStatus.COMPLETED] * 3
    assert [t.objective for t in trials] == [0.25, 1 / 3, 0.5]
    assert trials[2].results == {"cost": 0.5}
    asked = orchard.build_experiment("asked", space=SPACE, max_trials=1, storage="memory://")
    trial = asked.suggest()
    asked.report(trial, decimal.Decimal("0.75"), step=0)
    assert asked.observe(trial, fractions.Fraction(1, 4)).objective == 0.25


def test_a_text_stays_refused_and_the_error_names_the_trial_and_what_to_return() -> None:
    exp = orchard.build_experiment("text", space=SPACE, max_trials=2, max_broken=1, storage="memory://")
    hint = "; return the number, not its text"
    with pytest.raises(ExperimentBrokenError) as info:
        exp.workon(lambda x: "0.5", progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.BROKEN and trial.error["message"].endswith(hint)
    said = str(info.value)
    assert f"last error (trial {trial.id}): InvalidResult: objective must be a number, got " in said
    assert hint in said and "\n" not in said


@pytest.mark.parametrize("objectives", [None, {"accuracy": "max"}], ids=["undeclared", "declared"])
@pytest.mark.parametrize("result", [[0.25], (0.25,), np.array([0.25]), np.array(0.25)],
                         ids=["list", "tuple", "array", "0-d"])
def test_a_one_value_sequence_is_the_one_objective_as_optuna_takes_it(result: object, objectives: object) -> None:
    """``[0.25]`` broke the trial ("return the number, not a list of it") while ``np.array([0.25])`` was
    recorded as 0.25; Optuna takes both for one objective (a sequence is the objectives' values in order)."""
    exp = orchard.build_experiment("one", space=SPACE, objectives=objectives, max_trials=1, max_broken=1,
                                   storage="memory://")
    exp.workon(lambda x: result, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and abs(trial.objective) == 0.25


@pytest.mark.parametrize("prior, words", [
    ("uniform(-1e308, 1e308)", "high - low must be a finite float"),
    ("uniform(0, 1e30, discrete=True)", "discrete uniform bounds must keep its values within 64 bits"),
    ("randint(0, 1000000000000000000000000000000)", "randint bounds must keep its values within 64 bits"),
    ("randint(-9223372036854775808, 0)", "-2**63 < low"),
    (f"uniform(0, 1{'0' * 400})", "both arguments must be finite numbers"),
    ("normal(0, 1e308)", "mu - 4 sigma and mu + 4 sigma must be distinct floats"),  # bayes: 'Input X contains NaN'
    ("normal(1, 1e-300)", "mu - 4 sigma and mu + 4 sigma must be distinct floats"),
], ids=["uniform-range", "discrete", "randint", "randint-low", "huge-literal", "normal-wide", "normal-narrow"])
def test_a_space_no_sampler_or_storage_can_hold_is_refused_when_built(prior: str, words: str) -> None:
    with pytest.raises(SpaceError, match=re.escape(words)):  # the algorithm or the storage failed at the first trial
        orchard.build_experiment("wide", space={"x": prior}, storage="memory://")


def test_a_randint_beyond_2_to_the_53_holds_its_own_values() -> None:
    exp = orchard.build_experiment("seeds", space={"seed": "randint(0, 9223372036854775808)"}, max_trials=3,
                                   storage="memory://")
    exp.workon(lambda seed: 0.5, progress=False)  # a float's rounding judged its draws outside the space
    assert [t.status for t in exp.fetch_trials()] == [TrialStatus.COMPLETED] * 3
    assert exp.space["seed"].contains(2**60 + 1)


@pytest.mark.parametrize("executor", ["joblib", "process"])
def test_an_objective_that_cannot_reach_the_worker_processes_is_refused_before_any_trial(tmp_path,
                                                                                        executor: str) -> None:
    import threading

    lock = threading.Lock()
    exp = orchard.build_experiment("stuck-home", space=SPACE, max_trials=2, storage=str(tmp_path / "db.pkl"))
    with pytest.raises(ConfigurationError, match=f"cannot be sent to the worker processes of executor '{executor}'"):
        exp.workon(lambda x: x if lock else 0.0, n_workers=2, executor=executor, progress=False)
    assert exp.fetch_trials() == []  # said: 'If the objective crashed its process ... run it with trial_timeout'


def test_an_objective_that_cannot_reach_a_process_pool_of_the_callers_own_is_refused_before_any_trial(
        tmp_path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    exp = orchard.build_experiment("own-pool", space=SPACE, max_trials=2, storage=str(tmp_path / "db.pkl"))
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(
            ConfigurationError, match="cannot be sent to the worker processes of your ProcessPoolExecutor: "):
        exp.workon(lambda x: x, executor=pool, progress=False)  # said: 'a worker died ... (segfault'
    assert exp.fetch_trials() == []


def test_an_objective_the_worker_processes_cannot_import_is_named_not_called_a_crash(tmp_path,
                                                                                     monkeypatch) -> None:
    def objective(x: float) -> float:  # a notebook's or `python -c`'s function: in no module one can import
        return x

    objective.__module__, objective.__qualname__ = "__main__", "orchard_notebook_objective"
    monkeypatch.setattr(sys.modules["__main__"], "orchard_notebook_objective", objective, raising=False)
    exp = orchard.build_experiment("notebook", space=SPACE, max_trials=2, storage=str(tmp_path / "db.pkl"))
    words = (r"the objective orchard_notebook_objective cannot be loaded in the worker processes of executor "
             r"'process' \(AttributeError: .*\): they import it by name")
    with pytest.raises(ConfigurationError, match=words):
        exp.workon(objective, executor="process", executor_config={"mp_context": "spawn"}, progress=False)
    assert exp.fetch_trials() == []  # said: 'a worker died ... (segfault, out of memory'



def test_an_objective_using_a_module_only_the_caller_has_says_to_install_it_on_the_workers(
        tmp_path, monkeypatch) -> None:
    """A notebook's objective (sent by value) that calls a module of the caller's alone: the worker processes
    cannot import that module, and workon said the objective must be importable "or use executor='joblib'",
    the executor it was running on."""
    import importlib.machinery
    import types

    helper = types.ModuleType("orchard_caller_only_helper")
    helper.__spec__ = importlib.machinery.ModuleSpec(helper.__name__, None)  # imported by name in the workers
    helper.scale = lambda x: x  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, helper.__name__, helper)

    def objective(x: float) -> float:
        return float(helper.scale(x))

    objective.__module__ = "__main__"  # a notebook's: cloudpickle sends it by value
    exp = orchard.build_experiment("caller-only", space=SPACE, max_trials=2, storage=str(tmp_path / "db.pkl"))
    words = (r"cannot be loaded in the worker processes of executor 'joblib' \(ModuleNotFoundError: .*"
             r"orchard_caller_only_helper.*\): .* the modules it uses .* install them where those processes")
    with pytest.raises(ConfigurationError, match=words) as raised:
        exp.workon(objective, n_workers=1, executor="joblib", progress=False)
    assert "use executor='joblib'" not in str(raised.value)
    assert exp.fetch_trials() == []

def test_an_objective_calling_workon_of_its_own_experiment_breaks_its_trial_instead_of_hanging() -> None:
    exp = orchard.build_experiment("nested", space=SPACE, max_trials=2, max_broken=1, storage="memory://")

    def tune_again(x: float) -> float:
        exp.workon(lambda x: x, progress=False)  # waited for ever for the trial it runs in
        return x

    with pytest.raises(ExperimentBrokenError):
        exp.workon(tune_again, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.error["message"].startswith("workon of experiment 'nested' was called by its own objective")
    outer = orchard.build_experiment("outer", space=SPACE, max_trials=1, storage=exp.storage)
    inner = orchard.build_experiment("inner", space=SPACE, max_trials=1, storage=exp.storage)
    outer.workon(lambda x: inner.workon(lambda x: x, progress=False)["best_objective"], progress=False)
    assert outer.stats["counts"]["completed"] == inner.stats["counts"]["completed"] == 1  # its own runs


def test_a_training_that_reports_past_the_cap_goes_on_to_its_result(monkeypatch, caplog) -> None:
    import orchard.trial
    import orchard.verdicts

    for module in (orchard.trial, orchard.verdicts):  # 10,000 in the release: 5 keeps the test fast
        monkeypatch.setattr(module, "MAX_REPORTS_PER_TRIAL", 5)

    def train(x: float) -> float:
        for batch in range(1, 9):  # every batch, not every epoch
            orchard.report(x + 1.0 / batch, batch)
            assert not orchard.should_prune()
        return x

    exp = orchard.build_experiment("per-batch", space=SPACE, max_trials=1, max_broken=1, storage="memory://",
                                   pruner={"threshold": {"upper": 100.0}})
    exp.workon(train, progress=False)  # broken at the 6th report: the whole training's result lost
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.COMPLETED and [step for step, _ in trial.reports] == [1, 2, 3, 4, 5]
    assert caplog.text.count("neither stored nor judged") == 1


def test_a_memory_uri_names_one_storage_however_its_slashes_and_scheme_are_written() -> None:
    """memory://nb and memory://nb/ were two storages: an experiment built through one was missing from the
    other ("no experiment named ..."). The name is read as mongomock reads its database's."""
    from orchard.errors import ConfigurationError
    from orchard.storages import get_storage

    exp = orchard.build_experiment("slashes", space=SPACE, storage="memory://nb", max_trials=3)
    exp.insert({"x": 0.5}, objective=1.0)
    for uri in ("memory://nb/", "MEMORY://nb", "memory:///nb//"):
        same = orchard.get_experiment("slashes", storage=uri)
        assert [t.params for t in same.fetch_trials()] == [{"x": 0.5}], uri
        assert get_storage(uri) is get_storage("memory://nb")
    assert get_storage("memory://nb/").uri == "memory://nb"
    assert get_storage("memory://") is not get_storage("memory:///")  # no name: always a new one, as before
    with pytest.raises(ConfigurationError, match="memory://NAME takes no options"):
        get_storage("memory://nb?fsync=0")
