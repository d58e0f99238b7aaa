"""The Python client in one process: create/join, ask and tell, workon, errors."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import orchard
from orchard.errors import (
    BudgetExhaustedError,
    ConfigurationError,
    DuplicateTrialError,
    ExperimentBrokenError,
    ExperimentConflictError,
    ExperimentError,
    ExperimentNotFoundError,
    ReservationLostError,
    SpaceError,
    StopReason,
)
from orchard.trial import Trial, TrialStatus
from tests import workloads


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "orchard.pkl")


def build(store: str, **options) -> orchard.Experiment:
    options.setdefault("space", workloads.SPACE)
    options.setdefault("max_trials", 10)
    return orchard.build_experiment("exp", storage=store, **options)


def test_workon_single_completes_exact_budget_with_plain_params(store) -> None:
    exp = build(store, max_trials=12, seed=3)
    stats = exp.workon(workloads.quadratic, executor="single", progress=False)
    assert stats["counts"]["completed"] == 12
    trials = exp.fetch_trials()
    assert len(trials) == 12 and len({t.id for t in trials}) == 12
    for trial in trials:
        assert trial.status is TrialStatus.COMPLETED and trial.attempts == 1
        assert all(type(v) is float for v in trial.params.values())
        assert trial.objective == pytest.approx(workloads.quadratic(**trial.params))
    assert exp.best_trial.objective == min(t.objective for t in trials)
    # a second workon on a finished experiment returns at once
    assert exp.workon(workloads.quadratic, executor="single", progress=False)["counts"]["completed"] == 12


def test_join_uses_stored_config_and_detects_conflicts(store) -> None:
    build(store, algorithm="random", max_trials=5)
    joined = orchard.build_experiment("exp", storage=store)
    assert joined.max_trials == 5 and joined.space.config()["x"] == "uniform(-5.0, 10.0)"
    with pytest.raises(ExperimentConflictError) as info:
        build(store, space={"x": "uniform(-5, 11)", "y": "uniform(0, 15)"})
    assert "x: uniform(-5.0, 10.0) != uniform(-5.0, 11.0)" in str(info.value)
    with pytest.raises(ExperimentConflictError, match="algorithm"):
        build(store, algorithm="grid", max_trials=5)
    with pytest.raises(ExperimentConflictError, match="only be raised"):
        build(store, max_trials=3)
    assert build(store, max_trials=8).max_trials == 8
    assert orchard.get_experiment("exp", storage=store).max_trials == 8
    with pytest.raises(ExperimentNotFoundError, match="exp"):
        orchard.get_experiment("nope", storage=store)
    with pytest.raises(ConfigurationError, match="give a space"):
        orchard.build_experiment("other", storage=store)


def test_an_algorithm_given_by_name_joins_an_experiment_stored_under_another_default(store) -> None:
    """`bayes`'s xi default changed (0.01 -> 0): experiments stored before stay joinable by name."""
    build(store, algorithm={"bayes": {"xi": 0.01}})  # as an earlier release stored every default
    assert build(store, algorithm="bayes").settings.algorithm["bayes"]["xi"] == 0.01  # the stored one runs
    assert build(store, algorithm={"bayes": {"xi": 0.01, "n_initial_points": 10}}).settings.algorithm["bayes"]["xi"] == 0.01
    with pytest.raises(ExperimentConflictError, match="algorithm"):
        build(store, algorithm={"bayes": {"xi": 0.0}})  # a value set explicitly must match
    with pytest.raises(ExperimentConflictError, match="algorithm"):
        build(store, algorithm="random")


def test_suggest_observe_release_insert(store) -> None:
    exp = build(store, max_trials=3)
    inserted = exp.insert({"x": 1.0, "y": 2.0})
    with pytest.raises(DuplicateTrialError):
        exp.insert({"x": 1.0, "y": 2.0})
    with pytest.raises(SpaceError):
        exp.insert({"x": 100.0, "y": 2.0})
    first = exp.suggest()
    assert first.id == inserted.id and first.status is TrialStatus.RESERVED  # inserted trials go first
    exp.release(first)
    again = exp.suggest()
    assert again.id == first.id and again.attempts == 1  # a graceful release gives the attempt back
    done = exp.observe(again, {"objective": 1.5, "loss": 0.1})
    assert done.status is TrialStatus.COMPLETED and done.results == {"loss": 0.1}
    with pytest.raises(ReservationLostError):
        exp.observe(again, 2.0)
    broken = exp.observe(exp.suggest(), float("nan"))
    assert broken.status is TrialStatus.BROKEN and "nan" in broken.error["message"]
    exp.observe(exp.suggest(), 0.5)
    exp.observe(exp.suggest(), 0.7)
    with pytest.raises(BudgetExhaustedError):
        exp.suggest()
    assert exp.stats["counts"] == {"new": 0, "reserved": 0, "completed": 3, "broken": 1, "interrupted": 0, "pruned": 0}


def test_a_trial_suggested_through_one_handle_is_this_processs_to_observe_through_any_other(store) -> None:
    """A notebook cell run again builds a new handle: its observe was refused and the result lost, while the
    old handle's heartbeats kept the trial reserved for as long as the kernel ran."""
    old = build(store, max_trials=3)
    observed, released, reported = old.suggest(), old.suggest(), old.suggest()
    new = build(store, max_trials=3)  # the cell run again
    new.report(reported, 0.4, step=0)
    assert not new.should_prune(reported)
    assert new.observe(observed, 0.5).status is TrialStatus.COMPLETED
    assert orchard.get_experiment("exp", storage=store).release(released).status is TrialStatus.INTERRUPTED
    assert len(new.observe(reported, 0.3).reports) == 1
    with pytest.raises(ReservationLostError):
        old.observe(observed, 0.6)  # still one result per trial
    assert new.stats["counts"]["reserved"] == 0


def test_a_trial_of_another_experiment_is_refused_by_each_ask_and_tell_verb_and_stores_nothing(store) -> None:
    """``e.observe(e2.suggest(), 0.1)`` (two experiments asked side by side, variables crossed) recorded
    the result on e2, silently: the trial's worker was found by its id alone."""
    first = build(store, max_trials=3)
    other = orchard.build_experiment("other", space=workloads.SPACE, storage=store, max_trials=3)
    theirs = other.suggest()
    foreign = "trial .* is a trial of experiment 'other', not of 'exp'; nothing was stored"
    for verb in (lambda: first.observe(theirs, 0.1), lambda: first.report(theirs, 0.1, step=0),
                 lambda: first.should_prune(theirs), lambda: first.release(theirs)):
        with pytest.raises(ExperimentError, match=foreign):
            verb()
    stored = other.fetch_trials()
    assert [(t.status, t.reports) for t in stored] == [(TrialStatus.RESERVED, [])]
    assert first.fetch_trials() == []
    assert other.observe(theirs, 0.2).objective == 0.2  # still its own experiment's to record


def test_a_trials_id_given_to_an_ask_and_tell_verb_is_refused_saying_to_pass_the_trial(store) -> None:
    """``exp.observe(trial.id, 0.1)`` (Optuna's tell takes a trial's number) raised "AttributeError: 'str'
    object has no attribute 'id'", naming neither the verb's argument nor what it takes."""
    exp = build(store, max_trials=3)
    trial = exp.suggest()
    wanted = (r"experiment 'exp': observe, report, should_prune and release take the Trial that suggest\(\) "
              rf"returned, not str '{trial.id}'; keep that Trial")
    for verb in (lambda: exp.observe(trial.id, 0.1), lambda: exp.report(trial.id, 0.1, step=0),
                 lambda: exp.should_prune(trial.id), lambda: exp.release(trial.id)):
        with pytest.raises(TypeError, match=wanted):
            verb()
    assert [(t.status, t.reports) for t in exp.fetch_trials()] == [(TrialStatus.RESERVED, [])]
    assert exp.observe(trial, 0.2).objective == 0.2


def test_a_suggest_past_the_trials_this_process_holds_says_to_observe_them_first(store) -> None:
    """Optuna's batch of asks ported ([exp.suggest() for _ in range(4)] with 2 trials of budget left): the
    third suggest said 'the budget of 2 is fully reserved ...; raise max_trials or wait for other workers',
    though no other worker held anything: the trials were this process's own, waiting for its observe."""
    exp = build(store, max_trials=2)
    held = [exp.suggest(), exp.suggest()]
    with pytest.raises(BudgetExhaustedError, match=r"has no trial to run now: the budget of 2 is fully "
                       r"reserved or the space is exhausted, and 2 of the reserved trials were suggested in "
                       r"this process and not observed yet: observe \(or release\) them") as info:
        exp.suggest()
    assert info.value.reason is StopReason.IDLE
    for trial in held:
        exp.observe(trial, 0.5)
    with pytest.raises(BudgetExhaustedError) as info:
        exp.suggest()
    assert info.value.reason is StopReason.BUDGET


def test_always_raising_objective_stops_at_max_broken(store) -> None:
    exp = build(store, max_trials=20, max_broken=3)
    with pytest.raises(ExperimentBrokenError) as info:
        exp.workon(workloads.always_raises, executor="single", progress=False)
    assert "3 trials are broken" in str(info.value) and "ValueError: bad x=" in str(info.value)
    broken = exp.fetch_trials([TrialStatus.BROKEN])
    assert len(broken) == 3 and broken[0].error["type"] == "ValueError"
    assert len(exp.fetch_trials()) == 3


def test_dict_results_callbacks_and_pandas(store) -> None:
    exp = build(store, max_trials=4)
    seen: list[str] = []
    exp.workon(workloads.with_metrics, executor="single", progress=False, on_result=lambda t: seen.append(t.id))
    assert sorted(seen) == sorted(t.id for t in exp.fetch_trials())
    frame = exp.to_pandas()
    assert len(frame) == 4 and {"params.x", "params.y", "results.accuracy", "objective"} <= set(frame.columns)


def test_to_pandas_keeps_every_int_a_float_column_would_round(store) -> None:
    """A result holding an int beyond 2**53 (a seed, a hash, a byte count) that some trial lacks made a
    float64 column: 2**62 + 1 read 4611686018427387904, and -(2**63 - 1) an int64 cannot hold."""
    exp = build(store)
    big, low = 2**62 + 1, -(2**63 - 1)
    exp.insert({"x": 0.5, "y": 1}, objective=1.0, results={"seed": big, "mixed": big})
    exp.insert({"x": 0.25, "y": 2}, objective=2.0, results={"seed": low, "mixed": 0.5, "small": 3})
    exp.insert({"x": 0.75, "y": 3}, objective=3.0)
    frame = exp.to_pandas().sort_values("objective")
    assert frame["results.seed"].tolist()[:2] == [big, low] and frame["results.seed"].isna().tolist()[2]
    assert frame["results.mixed"].tolist()[:2] == [big, 0.5]
    assert str(frame["results.small"].dtype) == "float64"  # small ints stay as pandas makes them


def test_to_pandas_of_an_experiment_without_trials_has_the_columns_to_select(store) -> None:
    """Before its first trial, to_pandas() was a frame without columns: the quickstart's
    df[["status", "objective", "params.x"]].sort_values("objective") raised KeyError in a notebook."""
    frame = build(store).to_pandas()
    assert len(frame) == 0
    assert {"id", "status", "objective", "end_time", "params.x", "params.y"} <= set(frame.columns)
    assert frame[["status", "objective", "params.x", "params.y"]].sort_values("objective").empty
    assert str(frame["end_time"].dt.tz) == "UTC"  # a datetime column, as with trials


def _raises_on_second_call(calls: list[str]) -> Callable[[Trial], None]:
    def callback(trial: Trial) -> None:
        calls.append(trial.id)
        if len(calls) == 2:
            raise ValueError("callback bug")
    return callback


def test_a_callback_that_raises_stops_the_run_and_its_error_reaches_the_caller(store) -> None:
    exp = build(store, max_trials=40)
    calls: list[str] = []
    with pytest.raises(ValueError, match="callback bug"):
        exp.workon(workloads.slow_branin, executor="single", progress=False, on_result=_raises_on_second_call(calls))
    trials = exp.fetch_trials()
    assert len(calls) == 2  # no callback after the one that raised
    assert 2 <= sum(t.status is TrialStatus.COMPLETED for t in trials) < 40  # stopped, not run to the budget
    assert not [t for t in trials if t.status is TrialStatus.RESERVED]  # the running trial was given back


def test_a_callback_raising_after_the_run_ended_on_its_own_reaches_the_caller_uninterrupted(store, monkeypatch) -> None:
    """The run ends (max_broken) before the monitor looks: its last look, as workon ends, calls the callback.

    Nothing is left to stop, so nothing is interrupted: workon raises the callback's exception, with no
    Interrupted behind it claiming a stop. (Objectives that break at once reach max_broken in well under
    a look's 0.5 s; the look is pushed back here so that it always does.)"""
    from orchard import monitor

    monkeypatch.setattr(monitor, "TICK", 3600.0)
    exp = build(store, max_trials=40, max_broken=3)
    calls: list[str] = []
    with pytest.raises(ValueError, match="callback bug") as caught:
        exp.workon(workloads.always_raises, executor="single", progress=False, on_error=_raises_on_second_call(calls))
    assert not isinstance(caught.value.__context__, orchard.Interrupted)
    assert len(calls) == 2  # no callback after the one that raised
    assert exp.storage.count_trials(exp.id)[TrialStatus.BROKEN] == 3
    assert not exp.fetch_trials([TrialStatus.RESERVED])


def test_trial_timeout_breaks_with_reason(store) -> None:
    exp = build(store, max_trials=1, max_broken=1)
    with pytest.raises(ExperimentBrokenError, match="timeout"):
        exp.workon(workloads.sleepy, executor="single", trial_timeout=0.5, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.error["reason"] == "timeout" and trial.duration < 10


def test_workon_max_trials_caps_one_call(store) -> None:
    exp = build(store, max_trials=10)
    exp.workon(workloads.quadratic, executor="single", max_trials=4, progress=False)
    assert exp.stats["counts"]["completed"] == 4
    exp.workon(workloads.quadratic, executor="single", progress=False)
    assert exp.stats["counts"]["completed"] == 10


class _CountingPool(ThreadPoolExecutor):
    """A thread pool of the caller's own that counts the worker loops submitted to it, and cannot start the
    ``refused``-th (no thread can start)."""

    def __init__(self, refused: int | None = None) -> None:
        super().__init__(max_workers=8)
        self.loops, self.refused = 0, refused

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.loops += 1
        if self.loops == self.refused:
            raise RuntimeError("can't start new thread")
        return super().submit(fn, *args, **kwargs)


def test_workon_starts_no_more_workers_than_the_budget_has_trials_left(caplog: pytest.LogCaptureFixture) -> None:
    """Workers beyond the trials the budget can still hand out would start and stop at once: a new trial
    still needs one, a completed or reserved one does not. It was 8 loops for 4 trials."""
    from orchard.executors.capacity import workers_to_start
    from orchard.recording import budget_to_give

    exp = orchard.build_experiment("left", space=workloads.SPACE, storage="memory://left", max_trials=5, seed=1)
    exp.observe(exp.suggest(), 1.0)
    exp.insert({"x": 1.0, "y": 2.0})  # new: holds a unit of the budget, waits for a worker
    held = exp.suggest()
    assert budget_to_give(exp.storage, exp.id, 5) == 3  # neither the completed nor the reserved one
    exp.release(held)
    caplog.set_level(logging.INFO, logger="orchard.executors.capacity")
    with _CountingPool() as pool:
        exp.workon(workloads.quadratic, n_workers=8, executor=pool, progress=False)
    assert pool.loops == 4 and exp.stats["counts"]["completed"] == 5
    assert "experiment 'left': starting 4 of 8 workers: only 4 trial(s) of the budget are left" in caplog.text
    orchard.build_experiment("left", storage="memory://left", max_trials=15)  # 10 more, of which this call runs 2
    with _CountingPool() as pool:
        exp.workon(workloads.quadratic, n_workers=8, executor=pool, max_trials=2, progress=False)
    assert pool.loops == 2 and exp.stats["counts"]["completed"] == 7
    assert workers_to_start(8, lambda: None, "no budget") == 8 and workers_to_start(8, lambda: 0, "met") == 1


def test_a_pool_that_refuses_a_loop_leaves_none_of_the_others_running(store) -> None:
    """workon raised the pool's error while the loop it had started ran the experiment on, unwatched, to its
    budget (the standard library's process pool: workon waited for that before raising)."""
    from orchard.errors import ExecutorError

    exp = orchard.build_experiment("refused", space=workloads.SPACE, storage="memory://refused", max_trials=200)
    pool = _CountingPool(refused=2)
    with pytest.raises(ExecutorError, match="can't start new thread"):
        exp.workon(workloads.quadratic, n_workers=3, executor=pool, progress=False)
    when_raised = exp.stats["counts"]
    pool.shutdown(wait=True)  # whatever still runs in it ends
    assert exp.stats["counts"] == when_raised and when_raised["reserved"] == 0, when_raised


def test_bad_options_are_clear(store) -> None:
    exp = build(store)
    with pytest.raises(ConfigurationError, match="unknown executor 'nope'; valid executors: joblib"):
        exp.workon(workloads.quadratic, executor="nope")
    with pytest.raises(ConfigurationError, match="n_workers"):
        exp.workon(workloads.quadratic, n_workers=0)
    with pytest.raises(ConfigurationError, match="max_trials"):
        build(store, max_trials=-1)
    with pytest.raises(ConfigurationError, match="memory://"):
        orchard.build_experiment("m", space=workloads.SPACE, storage="memory://x", max_trials=2).workon(
            workloads.quadratic, n_workers=2, executor="process")


@pytest.mark.parametrize("options, words", [
    ({"on_result": 3}, "on_result 3 is not callable"),
    ({"on_error": "print"}, "on_error 'print' is not callable"),
    ({"n_workers": 2, "executor": "process", "executor_config": {"bogus": 1}},
     r"executor .process.: ProcessPoolExecutor refused executor_config \(TypeError: .*bogus"),
    ({"n_workers": 2, "executor": "joblib", "executor_config": {"max_workers": 5}},
     "executor 'joblib': get_reusable_executor refused executor_config .*n_workers gives max_workers"),
    ({"n_workers": 2, "executor": "process", "executor_config": {"mp_context": "nope"}},
     "executor 'process': ProcessPoolExecutor refused executor_config"),
    # dropped without a word: thread and single take no options, one worker ran in this thread
    ({"n_workers": 2, "executor": "thread", "executor_config": {"thread_name_prefix": "x"}},
     r"executor 'thread' takes no executor_config \(given: thread_name_prefix\); drop it, or name an"),
    ({"executor": "single", "executor_config": {"bogus": 1}}, "executor 'single' takes no executor_config"),
    ({"executor_config": {"bogus": 1}}, "executor 'joblib': get_reusable_executor refused executor_config"),
    ({"executor": concurrent.futures.ThreadPoolExecutor(1), "executor_config": {"bogus": 1}},
     r"executor_config \(given: bogus\) is not used with an executor of your own \(ThreadPoolExecutor\)"),
])
def test_a_mistyped_workon_option_is_one_line_before_any_trial(store, options: dict[str, Any],
                                                               words: str) -> None:
    """They raised a bare TypeError (a callback's once the first trial had ended, stopping the run)."""
    exp = build(store, max_trials=2)
    with pytest.raises(ConfigurationError, match=words) as info:
        exp.workon(workloads.quadratic, progress=False, **options)
    assert "\n" not in str(info.value) and exp.fetch_trials() == []


def test_an_mp_context_may_be_named(store) -> None:
    exp = build(store, max_trials=2)
    exp.workon(workloads.quadratic, n_workers=2, executor="process", executor_config={"mp_context": "spawn"},
               progress=False)
    assert exp.stats["counts"]["completed"] == 2


def test_memory_storage_with_threads() -> None:
    exp = orchard.build_experiment("t", space=workloads.SPACE, storage="memory://threads", max_trials=30)
    exp.workon(workloads.quadratic, n_workers=4, executor="thread", progress=False)
    trials = exp.fetch_trials()
    assert len(trials) == 30 and all(t.status is TrialStatus.COMPLETED for t in trials)
    assert not math.isnan(exp.best_trial.objective)


def test_an_objective_holding_a_handle_that_asked_and_told_still_reaches_the_worker_processes(store) -> None:
    exp = build(store, max_trials=3)
    exp.observe(exp.suggest(), 0.5)  # the handle's ask-and-tell worker has threads and locks

    def objective(x: float, y: float) -> float:  # a closure over the handle, as in a notebook
        return x + y + 0 * len(exp.name)

    stats = exp.workon(objective, n_workers=2, executor="joblib", progress=False)  # was: cannot pickle lock
    assert stats["counts"]["completed"] == 3


def test_one_worker_runs_in_the_calling_process_so_unpicklable_objectives_work(store) -> None:
    import os
    import socket
    import threading

    exp = build(store, max_trials=3)
    lock, calls = threading.Lock(), []
    with socket.socket() as sock:  # neither a lock nor a socket can be pickled

        def objective(x: float, y: float) -> float:
            with lock:
                calls.append((os.getpid(), sock.fileno()))
            return x + y

        stats = exp.workon(objective, progress=False)  # n_workers=1, no executor named
    assert stats["counts"]["completed"] == 3
    assert calls and {pid for pid, _ in calls} == {os.getpid()}


def _raises_keyboard_interrupt(x: float, y: float = 0.0) -> float:
    raise KeyboardInterrupt  # what Ctrl-C raises inside the objective, or a library that gives up on it


@pytest.mark.parametrize("trial_timeout", [None, 30.0], ids=["in-thread", "timed-child"])
def test_an_objective_raising_keyboard_interrupt_releases_its_trial_as_ctrl_c_does(
        store, trial_timeout: float | None) -> None:
    """With or without trial_timeout (the objective then runs in a child): interrupted, not broken."""
    exp = build(store, max_trials=3)
    with pytest.raises(orchard.errors.Interrupted, match="1 of 1 running trial"):
        exp.workon(_raises_keyboard_interrupt, executor="single", trial_timeout=trial_timeout, progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.INTERRUPTED and trial.error is None  # not a failure of the objective


@pytest.mark.slow
def test_an_objective_raising_keyboard_interrupt_on_a_dask_worker_process_releases_its_trial(store) -> None:
    """It ended Dask's worker process: Dask ran the loop again on 4 new ones, then said a worker died."""
    pytest.importorskip("distributed")
    exp = build(store, max_trials=3)
    with pytest.raises(orchard.errors.Interrupted, match="^1 of 1 running trial"):
        exp.workon(_raises_keyboard_interrupt, executor="dask", executor_config={"dashboard_address": None},
                   progress=False)
    (trial,) = exp.fetch_trials()
    assert trial.status is TrialStatus.INTERRUPTED and trial.attempts == 0


def _catches_ctrl_c(x: float, y: float = 0.0, marker: str = "") -> float:
    """A training loop that saves its state on Ctrl-C and returns what it reached (Ctrl-C at its first)."""
    if os.path.exists(marker):
        return x
    open(marker, "w").close()
    try:
        os.kill(os.getppid() if marker.endswith("parent") else os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass  # the checkpoint is saved here
    return x


@pytest.mark.parametrize("executor", ["single", "process"])
def test_an_objective_that_catches_ctrl_c_and_returns_is_recorded_and_the_run_stops(store, tmp_path,
                                                                                     executor: str) -> None:
    """The loop went on to the next trial, deaf to later stop requests: workon ran the whole budget. Then it
    stopped, but said "no trial was running" of the trial it had just recorded."""
    exp = build(store, max_trials=20)
    marker = str(tmp_path / ("ctrl-c-to-" + ("self" if executor == "single" else "parent")))
    with pytest.raises(orchard.errors.Interrupted) as stopped:
        exp.workon(functools.partial(_catches_ctrl_c, marker=marker), executor=executor, progress=False)
    assert [t.status for t in exp.fetch_trials()] == [TrialStatus.COMPLETED]
    assert str(stopped.value) == ("the running trial finished and was recorded (its objective caught "
                                  "KeyboardInterrupt and returned a value)")


_THREAD = "an evaluation in a worker's own thread cannot be stopped: it runs to its end"
_CAUGHT = "caught KeyboardInterrupt and returned a value"


@pytest.mark.parametrize(("reports", "said"), [
    ({"finished": ["a", "b"]}, f"the 2 running trials finished and were recorded ({_THREAD})"),
    ({"caught": ["a"], "finished": ["b"]},
     f"the 2 running trials finished and were recorded (1: its objective {_CAUGHT}; 1: {_THREAD})"),
    ({"pruned": ["a", "b"]}, "of the 2 running trial(s), 2 recorded pruned (their pruners had told them to stop)"),
    ({"pruned": ["a"], "finished": ["b"]},
     f"of the 2 running trial(s), 1 finished and recorded ({_THREAD}); 1 recorded pruned (its pruner had told it "
     "to stop)"),
    ({"released": ["a"], "finished": ["b"]},
     f"1 of 2 running trial(s) released (status interrupted); 1 finished and recorded ({_THREAD})"),
    ({"kept": ["k"]}, "0 of 1 running trial(s) released (status interrupted); could not release k: taken back when "
                      "its lease runs out"),
])
def test_what_an_interruption_says_of_the_running_trials_counts_each_once_and_leads_with_what_happened(
        reports: dict[str, list[str]], said: str) -> None:
    """workon(executor="thread") interrupted while two evaluations ran in their threads said "0 of 2 running
    trial(s) released (status interrupted); 2 finished and recorded": a failure to release, contradicted by the
    next clause, where both trials had run to their end and been recorded as intended."""
    assert str(orchard.errors.Interrupted(**reports)) == said


def test_objectives_of_several_workers_raising_keyboard_interrupt_count_every_trial_released(store) -> None:
    """workon joins what each stopped worker reports, not only the first one's."""
    import threading

    both_running = threading.Barrier(2, timeout=20)

    def interrupted(x: float, y: float) -> float:
        both_running.wait()
        raise KeyboardInterrupt

    exp = build(store, max_trials=4)
    with pytest.raises(orchard.errors.Interrupted, match="2 of 2 running trial"):
        exp.workon(interrupted, n_workers=2, executor="thread", progress=False)
    assert [trial.status for trial in exp.fetch_trials()] == [TrialStatus.INTERRUPTED] * 2


def test_ctrl_c_stops_thread_workers_after_their_running_evaluations(store) -> None:
    """Threads cannot be interrupted, but they stop at their next trial: Ctrl-C does not wait for the budget."""
    import os
    import signal
    import threading
    import time

    started = threading.Event()

    def objective(x: float, y: float = 0.0) -> float:
        started.set()
        time.sleep(0.2)
        return x

    def press_ctrl_c() -> None:
        started.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    exp = build(store, max_trials=60)  # 6 s of trials for 2 threads
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    begun = time.monotonic()
    with pytest.raises(orchard.errors.Interrupted) as caught:
        exp.workon(objective, n_workers=2, executor="thread", progress=False)
    assert time.monotonic() - begun < 3, "workon waited for the thread workers to run the whole budget"
    trials = exp.fetch_trials()
    assert not [t for t in trials if t.status is TrialStatus.RESERVED]
    assert len([t for t in trials if t.status is TrialStatus.COMPLETED]) < 20
    assert "not stopped" not in str(caught.value), caught.value


def test_ctrl_c_delivered_to_another_thread_stops_workon_promptly(store) -> None:
    """The kernel gives a process's SIGINT to any thread not blocking it (the main thread, unless it has a
    signal pending); Python runs the handler in the main thread only when that thread wakes. workon's
    wait for its loops did not wake: a Ctrl-C that landed on another thread waited for the whole budget."""
    import os
    import signal
    import threading
    import time

    started = threading.Event()

    def objective(x: float, y: float = 0.0) -> float:
        started.set()
        time.sleep(0.2)
        return x

    def press_ctrl_c() -> None:  # started before the main thread blocks SIGINT: the kernel delivers it here
        started.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    exp = build(store, max_trials=60)  # 6 s of trials for 2 threads
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the main thread, and the pool's threads, block it
    begun = time.monotonic()
    try:
        with pytest.raises(orchard.errors.Interrupted):
            exp.workon(objective, n_workers=2, executor="thread", progress=False)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    assert time.monotonic() - begun < 3, "workon waited for the thread workers to run the whole budget"
    assert not [t for t in exp.fetch_trials() if t.status is TrialStatus.RESERVED]


@pytest.mark.parametrize("end", ["return", "raise"])
def test_trials_suggested_and_never_observed_go_back_when_the_script_ends(tmp_path, end: str) -> None:
    """A script or notebook that ends after suggest() leaves nothing reserved and no attempt spent."""
    store = str(tmp_path / "o.pkl")
    script = tmp_path / "ask.py"
    script.write_text(
        "import orchard, sys\n"
        f"exp = orchard.build_experiment('ask', space={{'x': 'uniform(0, 1)'}}, max_trials=5, storage={store!r})\n"
        "kept = exp.suggest()\n"
        "exp.observe(exp.suggest(), 0.5)\n"
        "print(kept.id, flush=True)\n"
        + ("raise SystemExit('the script failed')\n" if end == "raise" else ""))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == (1 if end == "raise" else 0), done.stderr
    kept = done.stdout.split()[0]
    trials = {t.id: t for t in orchard.get_experiment("ask", storage=store).fetch_trials()}
    assert sorted(t.status.value for t in trials.values()) == ["completed", "interrupted"]
    assert trials[kept].status is TrialStatus.INTERRUPTED and trials[kept].attempts == 0
    assert "gave back 1 trial(s) suggested and never observed" in done.stderr


@pytest.mark.timeout(120)
def test_a_trial_told_in_a_process_that_did_not_suggest_it_is_refused_saying_where_it_belongs(
        tmp_path) -> None:
    """Optuna's tell works from any process on a shared storage; here the trial suggested by a live script and
    observed in another process was refused with 'its reservation was released (stale heartbeat?) or taken by
    another worker', though neither had happened."""
    import pickle

    store = str(tmp_path / "o.pkl")
    script, told = tmp_path / "ask.py", tmp_path / "trial.pickle"
    script.write_text(
        "import orchard, pickle, sys\n"
        f"exp = orchard.build_experiment('ask', space={{'x': 'uniform(0, 1)'}}, max_trials=5,\n"
        f"                               storage={store!r})\n"
        f"pickle.dump(exp.suggest(), open({str(told)!r}, 'wb'))\n"
        "print('suggested', flush=True)\n"
        "sys.stdin.read()\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    with subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as asker:
        assert asker.stdout is not None and asker.stdout.readline() == "suggested\n"
        trial = pickle.loads(told.read_bytes())
        exp = orchard.get_experiment("ask", storage=store)
        wanted = (rf"trial {trial.id} of experiment 'ask' was reserved by worker {trial.worker}, not "
                  "suggested in this process; nothing was stored: observe, report on and release a trial in "
                  "the process that")
        with pytest.raises(ReservationLostError, match=wanted):
            exp.observe(trial, 0.5)
        with pytest.raises(ReservationLostError, match=wanted):
            exp.report(trial, 0.5, step=1)
        assert [(t.status, t.reports, t.worker) for t in exp.fetch_trials()] == [
            (TrialStatus.RESERVED, [], trial.worker)]
        asker.communicate("", timeout=60)


@pytest.mark.parametrize("setting", [{"seed": 4}, {"heartbeat": 5.0}])
def test_joining_with_another_seed_or_heartbeat_is_refused(setting: dict[str, float]) -> None:
    """The joiner's value was dropped without a word: its workers ran with the stored one."""
    storage = orchard.get_storage("memory://")
    orchard.build_experiment("fixed", space={"x": "uniform(0, 1)"}, storage=storage, seed=3, heartbeat=30)
    ((key, value),) = setting.items()
    with pytest.raises(ExperimentConflictError, match=f"{key}: stored .* != given {value}"):
        orchard.build_experiment("fixed", storage=storage, **setting)  # type: ignore[arg-type]
    assert orchard.build_experiment("fixed", storage=storage, seed=3, heartbeat=30.0).settings.seed == 3


def test_best_trial_of_one_objective_without_fidelity_is_the_storages_query_not_every_trial(
        store, monkeypatch: pytest.MonkeyPatch) -> None:
    """best_trial fetched every completed trial once multi-fidelity ranking came in (100,000 documents from
    MongoDB for one answer): without a fidelity, constraints or declared objectives it is the storage's query."""
    exp = build(store)
    exp.workon(workloads.quadratic, executor="single", progress=False)
    expected = min(exp.fetch_trials([TrialStatus.COMPLETED]), key=lambda t: t.objective)

    def fetched(*args: object, **kwargs: object) -> None:
        raise AssertionError("best_trial fetched the trials")

    monkeypatch.setattr(exp, "fetch_trials", fetched)  # the storage's best_trial: MongoDB sorts and takes one
    best = exp.best_trial
    assert best is not None and best.id == expected.id


def test_best_trial_on_memory_skips_a_completed_trial_whose_stored_objective_is_a_text_or_nan() -> None:
    exp = orchard.build_experiment("odd-best", {"x": "uniform(0, 1)"}, storage=f"memory://{uuid.uuid4().hex}")
    odd = [Trial(id=uuid.uuid4().hex, experiment=exp.id, params={"x": i / 10}, status=TrialStatus.COMPLETED,
                 objective=value) for i, value in enumerate(["abc", float("nan"), 0.5, [0.1]])]
    exp.storage.restore_trials(exp.id, odd)  # another program's write: memory stores it as it is
    best = exp.best_trial
    assert best is not None and best.objective == 0.5
    assert exp.stats["best_objective"] == 0.5


def _choice(k: int) -> float:
    return float(k)


@pytest.mark.parametrize("n_workers, executor", [(1, "single"), (3, "thread")])
def test_workon_says_once_that_the_space_is_exhausted_and_how_much_of_the_budget_was_not_run(
        caplog: pytest.LogCaptureFixture, n_workers: int, executor: str) -> None:
    """A space of 4 points with max_trials=10 ended workon silently with 4 completed trials."""
    exp = orchard.build_experiment("tiny", {"k": "randint(0, 4)"}, max_trials=10,
                                   storage=f"memory://{uuid.uuid4().hex}")
    with caplog.at_level(logging.INFO):
        exp.workon(_choice, n_workers=n_workers, executor=executor, progress=False)
    said = [r for r in caplog.records if "exhausted" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING]
    assert said[0].getMessage() == (
        "experiment 'tiny': the space is exhausted after 4 distinct points; 6 of the 10 trials of the budget "
        "not run (a space of choices, integers or a grid holds fewer points than max_trials)")


def test_workon_on_a_space_exactly_as_large_as_the_budget_warns_of_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    exp = orchard.build_experiment("fits", {"k": "randint(0, 4)"}, max_trials=4,
                                   storage=f"memory://{uuid.uuid4().hex}")
    with caplog.at_level(logging.WARNING):
        exp.workon(_choice, executor="single", progress=False)
    assert len(exp.fetch_trials()) == 4 and not caplog.records
