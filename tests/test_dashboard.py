"""The dashboard's folding and payloads, in one process (the server itself: test_dashboard_live.py).

A view must show what the storage holds after any sequence of changes while
asking only for what changed; heartbeat ages must follow the dashboard's own
clock, never the stamps written by the workers' clocks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchard.dashboard import ExperimentView, StorageView, is_loopback
from orchard.dashboard._payloads import experiment_detail, experiment_summary, trial_rows
from orchard.storages import BaseStorage, get_storage
from orchard.trial import TrialStatus


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> BaseStorage:
    return get_storage("memory://")


def make_experiment(store: BaseStorage, name: str = "exp", **config: object) -> str:
    settings = {"space": {"x": "uniform(0, 1)"}, "algorithm": "random", "max_trials": 10, "heartbeat": 1.0}
    return store.create_experiment(name, {**settings, **config})


def test_fold_shows_the_storage_and_then_only_what_changed(store: BaseStorage) -> None:
    exp_id = make_experiment(store)
    done = store.register_trial(exp_id, {"x": 0.1}, worker="w1")
    store.complete_trial(done.id, "w1", 0.5)
    running = store.register_trial(exp_id, {"x": 0.2}, worker="w2")
    store.register_trial(exp_id, {"x": 0.3})
    view = ExperimentView(store, store.require_experiment("exp"))

    assert view.fold() == 3
    summary = experiment_summary(view)
    assert summary["counts"] == {"new": 1, "reserved": 1, "completed": 1, "broken": 0, "interrupted": 0, "pruned": 0}
    assert (summary["best_objective"], summary["progress"], summary["live_workers"]) == (0.5, 0.1, 1)

    seen = view.version
    store.fail_trial(running.id, "w2", {"type": "ValueError", "message": "bad x"})
    assert view.fold() == 1
    delta = trial_rows(view, since=seen)
    assert [row["id"] for row in delta["trials"]] == [running.id]
    assert delta["trials"][0]["error"]["message"] == "bad x"
    assert view.fold() == 0 and view.version == delta["version"]
    assert experiment_summary(view)["broken"] == 1



def test_max_broken_written_by_another_program_is_read_as_the_workers_read_it(store: BaseStorage) -> None:
    """A max_broken of "two" (written by another program) is named and taken at its default, as workers
    take it: 3 broken trials stop the experiment, 2 do not."""
    exp_id = make_experiment(store, max_broken="two")
    for number in range(3):
        trial = store.register_trial(exp_id, {"x": number / 10}, worker="w")
        store.fail_trial(trial.id, "w", {"type": "ValueError", "message": "bad x"})
        view = ExperimentView(store, store.require_experiment("exp"))
        view.fold()
        summary = experiment_summary(view)
        assert (summary["broken_stop"] is not None) == (number == 2), summary["broken_stop"]
    assert "max_broken" in str(summary["problem"]) and summary["broken_stop"]["max_broken"] == 3


def test_progress_counts_the_pruned_trials_against_the_budget_and_not_those_inserted_apart(store: BaseStorage) -> None:
    """An experiment of 3 completed and 5 pruned trials with max_trials=8 is done; it showed 3 / 8 at 37.5 %."""
    exp_id = make_experiment(store, max_trials=4)
    done = store.register_trial(exp_id, {"x": 0.1}, worker="w")
    store.complete_trial(done.id, "w", 0.5)
    cut = store.register_trial(exp_id, {"x": 0.2}, worker="w")
    store.report_trial(cut.id, "w", 1, 0.9)
    store.prune_trial(cut.id, "w", {"pruner": "median", "step": 1})
    store.record_trial(exp_id, {"x": 0.3}, 0.4, {}, in_budget=False)  # inserted apart from the budget
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    summary = experiment_summary(view)
    assert (summary["done"], summary["progress"]) == (2, 0.5)

def test_the_best_shown_is_feasible_as_the_experiments_best_trial(store: BaseStorage) -> None:
    exp_id = make_experiment(store, constraints=["memory_gb <= 8"])
    for x, objective, memory in ((0.1, 0.5, 4.0), (0.2, 0.1, 12.0), (0.3, 0.3, 8.0)):  # the lowest breaks it
        trial = store.register_trial(exp_id, {"x": x}, worker="w")
        store.complete_trial(trial.id, "w", objective, {"objective": objective, "memory_gb": memory})
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    assert experiment_summary(view)["best_objective"] == 0.3
    assert view.best is not None and view.best.params == {"x": 0.3}


def test_heartbeat_age_is_measured_on_the_dashboards_clock(store: BaseStorage) -> None:
    exp_id = make_experiment(store)
    old = store.register_trial(exp_id, {"x": 0.1}, worker="w1")
    clock = FakeClock()
    view = ExperimentView(store, store.require_experiment("exp"), clock)
    view.fold()
    clock.now += 5.0
    new = store.register_trial(exp_id, {"x": 0.2}, worker="w2")
    view.fold()
    clock.now += 2.0

    # Already reserved when the dashboard started: only a lower bound is known.
    assert view.heartbeat_age(view.trials[old.id]) == (7.0, True)
    assert view.heartbeat_age(view.trials[new.id]) == (2.0, False)

    clock.now += 10.0  # > stale_after (3 x 1 s) with no heartbeat seen: lost
    store.heartbeat_trial(new.id, "w2")
    view.fold()
    workers = {w["worker"]: w for w in experiment_detail(view, store.redacted_uri)["workers"]}
    assert workers["w1"]["stale"] and workers["w1"]["heartbeat_age"] == 17.0
    assert not workers["w2"]["stale"] and workers["w2"]["heartbeat_age"] == 0.0
    assert experiment_summary(view)["live_workers"] == 1


def test_storage_view_asks_the_storage_at_most_once_per_interval(store: BaseStorage) -> None:
    exp_id = make_experiment(store)
    clock = FakeClock()
    views = StorageView(store, min_interval=1.0, clock=clock)
    assert views.experiment("exp") is not None
    store.register_trial(exp_id, {"x": 0.1})
    make_experiment(store, "second")

    assert [len(v.trials) for v in views.experiments()] == [0]  # served as folded a moment ago
    clock.now += 1.0
    assert [(v.record.name, len(v.trials)) for v in views.experiments()] == [("exp", 1), ("second", 0)]
    assert views.experiment("missing") is None


def test_rungs_group_trials_by_their_fidelity(store: BaseStorage) -> None:
    exp_id = make_experiment(store, space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"},
                             algorithm={"asha": {}})
    low = [store.register_trial(exp_id, {"x": x, "epochs": 1}, worker="w") for x in (0.1, 0.2, 0.3)]
    for trial, value in zip(low, (3.0, 2.0, 1.0)):
        store.complete_trial(trial.id, "w", value)
    store.register_trial(exp_id, {"x": 0.3, "epochs": 3}, worker="w", parent=low[2].id)
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()

    detail = experiment_detail(view, store.redacted_uri)
    assert detail["algorithm"] == "asha" and detail["fidelity"] == "epochs"
    assert detail["rungs"] == [
        {"fidelity": 1, "label": "1", "completed": 3, "running": 0, "pruned": 0, "broken": 0, "promoted": 0,
         "best_objective": 1.0},
        {"fidelity": 3, "label": "3", "completed": 0, "running": 1, "pruned": 0, "broken": 0, "promoted": 1,
         "best_objective": None},
    ]


def test_a_rung_counts_its_pruned_trials(store: BaseStorage) -> None:
    """With a pruner, a finished rung of 20 trials, 9 of them pruned, showed 11 completed and nothing else."""
    exp_id = make_experiment(store, space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"},
                             algorithm={"asha": {}}, pruner="median")
    done = store.register_trial(exp_id, {"x": 0.1, "epochs": 1}, worker="w")
    store.complete_trial(done.id, "w", 1.0)
    cut = store.register_trial(exp_id, {"x": 0.2, "epochs": 1}, worker="w")
    store.report_trial(cut.id, "w", 1, 3.0)
    store.prune_trial(cut.id, "w", {"pruner": "median", "reason": "worse than the median", "step": 1})
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()

    [low] = experiment_detail(view, store.redacted_uri)["rungs"]
    assert (low["completed"], low["pruned"], low["running"]) == (1, 1, 0)


def test_single_fidelity_experiments_have_no_rungs_and_payloads_are_strict_json(store: BaseStorage) -> None:
    exp_id = make_experiment(store)
    trial = store.register_trial(exp_id, {"x": float("inf")}, worker="w")
    store.complete_trial(trial.id, "w", float("nan"))
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    detail = experiment_detail(view, store.redacted_uri)
    rows = trial_rows(view)
    json.dumps([detail, rows], allow_nan=False)  # raises on NaN/inf
    assert detail["rungs"] is None and detail["best_objective"] is None
    assert rows["trials"][0]["params"] == {"x": None}


def test_an_experiment_whose_best_or_running_params_or_settings_hold_nan_is_still_served(
        store: BaseStorage) -> None:
    """A best trial or a running one with a NaN or infinite param, or such a setting (written by another
    program), made /api/experiments/NAME answer 500: the page showed nothing. They are null, as elsewhere."""
    from orchard.dashboard._payloads import to_json

    exp_id = make_experiment(store, note=float("nan"))
    best = store.register_trial(exp_id, {"x": float("nan")}, worker="w")
    store.complete_trial(best.id, "w", 0.1)
    store.register_trial(exp_id, {"x": float("-inf")}, worker="w2")
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    detail = json.loads(to_json(experiment_detail(view, store.redacted_uri)))
    assert detail["best_params"] == {"x": None} and detail["best_objective"] == 0.1
    assert [w["params"] for w in detail["workers"]] == [{"x": None}]
    assert detail["settings"]["note"] is None


@pytest.mark.parametrize(("host", "local"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                             ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_only_loopback_hosts_count_as_local(host: str, local: bool) -> None:
    assert is_loopback(host) is local


def test_serve_without_the_extra_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "starlette"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('starlette is not installed')\n")
    env = {"PYTHONPATH": str(blocker.parent), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "orchard", "serve", "--storage", str(tmp_path / "o.pkl")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "orchard: error: orchard serve needs the dashboard extra: pip install 'orchard-hpo[dashboard]'"]


def test_cached_rows_are_the_rows_after_every_change(store: BaseStorage) -> None:
    from orchard.dashboard._payloads import RowCache

    exp_id = make_experiment(store)
    cache = RowCache()
    view = ExperimentView(store, store.require_experiment("exp"))
    running = [store.register_trial(exp_id, {"x": x / 10}, worker="w") for x in range(4)]
    for trial in running:
        view.fold()
        assert json.loads(cache.trial_rows(view)) == trial_rows(view)
        store.complete_trial(trial.id, "w", 1.0)
    view.fold()
    assert json.loads(cache.trial_rows(view, since=2)) == trial_rows(view, since=2)
    assert [row["status"] for row in json.loads(cache.trial_rows(view))["trials"]] == ["completed"] * 4


def test_a_workers_devices_come_from_its_name(store: BaseStorage) -> None:
    import importlib.util

    from orchard.dashboard._payloads import devices_of

    exp_id = make_experiment(store)
    trial = store.register_trial(exp_id, {"x": 0.5}, worker="node1:42:ab12/gpus=0,1")
    plain = store.register_trial(exp_id, {"x": 0.6}, worker="node1:43:cd34")
    recorded = importlib.util.find_spec("orchard.resources") is not None  # the GPU assignment's module
    assert devices_of(trial) == (["0", "1"] if recorded else [])
    assert devices_of(plain) == []


@pytest.mark.parametrize("how", ["copied over", "renamed over"])
def test_an_older_copy_of_the_file_restored_is_shown_as_it_is(tmp_path: Path, how: str) -> None:
    """Restoring a backup replaces the file: the view must drop the trials the backup does not hold."""
    import os
    import shutil

    path = tmp_path / "orchard.pkl"
    writer = get_storage(str(path))
    exp_id = make_experiment(writer)
    for x in (0.1, 0.2):
        writer.complete_trial(writer.register_trial(exp_id, {"x": x}, worker="w").id, "w", x)
    writer.close()
    shutil.copy(path, tmp_path / "backup.pkl")
    writer = get_storage(str(path))
    for x in (0.3, 0.4):
        writer.complete_trial(writer.register_trial(exp_id, {"x": x}, worker="w").id, "w", x)
    writer.close()

    clock = FakeClock()
    view = StorageView(get_storage(str(path)), min_interval=0.5, clock=clock)
    assert len(view.experiment("exp").trials) == 4  # type: ignore[union-attr]
    if how == "copied over":
        shutil.copyfile(tmp_path / "backup.pkl", path)  # same inode, shorter file
    else:
        os.replace(tmp_path / "backup.pkl", path)  # a new file at the same path
    clock.now += 1.0
    shown = view.experiment("exp")
    assert shown is not None and sorted(t.params["x"] for t in shown.trials.values()) == [0.1, 0.2]
    assert shown.counts[TrialStatus.COMPLETED] == 2 and shown.best is not None and shown.best.objective == 0.1


def test_a_restored_copy_holding_as_many_trials_is_shown_as_it_is(tmp_path: Path) -> None:
    """A backup taken while a trial ran, restored after it completed: same count, an older state."""
    import shutil

    path = tmp_path / "orchard.pkl"
    writer = get_storage(str(path))
    exp_id = make_experiment(writer)
    running = writer.register_trial(exp_id, {"x": 0.1}, worker="w")
    shutil.copy(path, tmp_path / "backup.pkl")
    writer.complete_trial(running.id, "w", 0.1)
    writer.close()
    clock = FakeClock()
    view = StorageView(get_storage(str(path)), min_interval=0.5, clock=clock)
    assert view.experiment("exp").counts[TrialStatus.COMPLETED] == 1  # type: ignore[union-attr]
    shutil.copyfile(tmp_path / "backup.pkl", path)
    clock.now += 1.0
    shown = view.experiment("exp")
    assert shown is not None and [t.status for t in shown.trials.values()] == [TrialStatus.RESERVED]
    assert shown.counts[TrialStatus.COMPLETED] == 0 and shown.best is None and shown.rebuilt_at > 0


def test_trials_come_in_pages_that_miss_nothing_while_the_storage_changes(store: BaseStorage) -> None:
    """100,000 trials must not be one 39 MB answer: pages of ``limit`` rows, in number order, resumed by ``after``."""
    from orchard.dashboard._payloads import RowCache

    exp_id = make_experiment(store, max_trials=None)
    ids = [store.register_trial(exp_id, {"x": i / 100}).id for i in range(25)]
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    rows = RowCache()
    first = json.loads(rows.trial_rows(view, since=0, limit=10))
    assert [t["number"] for t in first["trials"]] == list(range(1, 11)) and first["more"] and first["after"] == 10
    store.complete_trial(store.reserve_trial(exp_id, "w").id, "w", 0.5)  # type: ignore[union-attr]
    store.register_trial(exp_id, {"x": 0.99})  # a new trial while the pages are read
    view.fold()
    second = json.loads(rows.trial_rows(view, since=0, after=first["after"], limit=10))
    third = json.loads(rows.trial_rows(view, since=0, after=second["after"], limit=10))
    assert [t["number"] for t in second["trials"] + third["trials"]] == list(range(11, 27)) and not third["more"]
    changed = json.loads(rows.trial_rows(view, since=first["version"]))  # the next refresh, from the first page's
    assert {t["id"] for t in changed["trials"]} >= {ids[0]} and not changed["more"]


def test_a_trial_error_stored_by_another_program_as_a_list_is_still_a_row() -> None:
    """A MongoDB document written by something else must not break the trials API for everyone."""
    from orchard.dashboard._payloads import _row
    from orchard.trial import Trial

    broken = Trial(id="t", experiment="e", params={"x": 1}, status=TrialStatus.BROKEN, error=["boom", 10**5000])  # type: ignore[arg-type]
    assert _row(broken, 1)["error"] == {"type": "list", "reason": "", "message": "<unprintable list>"}
    odd = Trial(id="u", experiment="e", params={"x": 1}, status=TrialStatus.BROKEN, error={"type": ["E"], "message": 7})
    assert _row(odd, 2)["error"] == {"type": "['E']", "reason": "", "message": "7"}
    verdicts: list[Any] = [(["cut", 3], "['cut', 3]"), ("worse", "worse"), ({"reason": "<b>x</b>"}, "<b>x</b>")]
    for verdict, shown in verdicts:  # a verdict that is not a mapping raised: no page of trials for anyone
        pruned = Trial(id="p", experiment="e", params={"x": 1}, status=TrialStatus.PRUNED, verdict=verdict)
        assert _row(pruned, 3)["verdict"] == shown


def test_a_trials_row_carries_a_bounded_sample_of_its_curve(store: BaseStorage) -> None:
    """A row sent every report: 2,000 trials of 2,000 steps made a 105 MB page, resent as they reported."""
    from orchard.dashboard._payloads import MAX_ROW_REPORTS
    from orchard.trial import Trial

    exp_id = make_experiment(store)
    reports: list[tuple[int, float | tuple[float, ...]]] = [(s, 2.0 + (s % 5) / 10) for s in range(100_000)]
    reports[777] = (777, 0.123456789)  # the lowest report: always sent
    reports[5] = (5, float("nan"))  # stored by another program
    reports[99_999] = (99_999, (float("inf"), 3.0))  # several objectives: the first is shown
    store.restore_trials(exp_id, [Trial(id="long", experiment=exp_id, params={"x": 0.5},
                                        status=TrialStatus.RESERVED, worker="w", reports=reports)])
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    (row,) = trial_rows(view)["trials"]
    steps = [step for step, _ in row["reports"]]
    assert len(steps) <= MAX_ROW_REPORTS and row["reported"] == 100_000
    assert steps == sorted(steps) and (steps[0], steps[-1]) == (0, 99_999)
    assert [777, 0.123457] in row["reports"]
    assert row["reports"][-1] == [99_999, None]
    assert len(json.dumps(row)) < 3_000


def test_the_front_is_sent_again_only_when_trials_changed(store: BaseStorage) -> None:
    """An open page of 8,000 trials with two objectives was sent their 5,000-point front every 2 s."""
    exp_id = make_experiment(store, objectives={"error": "min", "latency": "min"})
    for i in range(3):
        trial = store.register_trial(exp_id, {"x": i / 10}, worker="w")
        store.complete_trial(trial.id, "w", i / 10, {"error": i / 10, "latency": 1.0 - i / 10})
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    shown = view.version
    assert len(experiment_detail(view, store.redacted_uri)["front"]["points"]) == 3
    assert "front" not in experiment_detail(view, store.redacted_uri, since=shown)
    trial = store.register_trial(exp_id, {"x": 0.9}, worker="w")
    store.complete_trial(trial.id, "w", 0.05, {"error": 0.05, "latency": 0.05})
    view.fold()
    front = experiment_detail(view, store.redacted_uri, since=shown)["front"]
    assert [row["number"] for row in front["trials"]] == [1, 4]


def test_a_long_lived_dashboard_keeps_nothing_of_a_deleted_experiment(store: BaseStorage) -> None:
    """The fronts were cached by experiment id, and the trials' rows by trial id, for the server's life: a
    dashboard left running while experiments were created and deleted grew by each one's points and rows."""
    import gc

    from orchard.dashboard._payloads import RowCache
    from orchard.trial import Trial

    clock = FakeClock()
    view, rows = StorageView(store, min_interval=0.5, clock=clock), RowCache()
    deleted: set[str] = set()
    for round_ in range(3):
        exp_id = make_experiment(store, f"exp{round_}", objectives={"error": "min", "latency": "min"})
        for i in range(3):
            trial_id = store.register_trial(exp_id, {"x": i / 10}, worker="w").id
            store.complete_trial(trial_id, "w", i / 10, {"error": i / 10, "latency": 1.0 - i / 10})
            deleted.add(trial_id)
        clock.now += 1.0
        shown = view.experiment(f"exp{round_}")
        assert shown is not None and len(experiment_detail(shown, "memory://")["front"]["points"]) == 3
        assert len(json.loads(rows.trial_rows(shown))["trials"]) == 3
        del shown
        store.delete_experiment(exp_id)
    clock.now += 1.0
    assert view.experiments() == []
    gc.collect()
    kept = [o for o in gc.get_objects() if isinstance(o, dict) and isinstance(o.get("trials"), list)
            and any(isinstance(row, dict) and row.get("id") in deleted for row in o["trials"])]
    assert not kept, f"{len(kept)} fronts of deleted experiments are still held"
    held = [o for o in gc.get_objects() if isinstance(o, Trial) and o.id in deleted]
    assert not held, f"{len(held)} trials of deleted experiments are still held"


def test_a_row_says_whether_its_trial_breaks_a_constraint(store: BaseStorage) -> None:
    """The page's best-so-far line took infeasible trials (the lowest objective of all), while the best
    card and exp.best_trial took the best feasible one: rows now carry `infeasible`, which the line skips."""
    from orchard.dashboard._payloads import RowCache

    exp_id = make_experiment(store, constraints=["memory_gb <= 16"])
    for x, objective, memory in ((0.1, 0.1, 20.0), (0.2, 0.2, 8.0)):
        store.record_trial(exp_id, {"x": x}, objective, {"memory_gb": memory})
    running = store.register_trial(exp_id, {"x": 0.3}, worker="w")
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    expected = {0.1: True, 0.2: False, 0.3: False}
    assert {row["params"]["x"]: row["infeasible"] for row in trial_rows(view)["trials"]} == expected
    paged = json.loads(RowCache().trial_rows(view))["trials"]
    assert {row["params"]["x"]: row["infeasible"] for row in paged} == expected
    assert experiment_summary(view)["best_objective"] == 0.2 and running.status is TrialStatus.RESERVED


def test_a_rung_s_best_objective_meets_the_constraints(store: BaseStorage) -> None:
    """The rungs table gave each rung's lowest objective, an infeasible trial's included."""
    exp_id = make_experiment(store, space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"},
                             constraints=["memory_gb <= 16"])
    for x, objective, memory in ((0.1, 0.05, 20.0), (0.2, 0.2, 8.0)):
        store.record_trial(exp_id, {"x": x, "epochs": 1}, objective, {"memory_gb": memory})
    view = ExperimentView(store, store.require_experiment("exp"))
    view.fold()
    (rung,) = experiment_detail(view, "memory://")["rungs"]
    assert (rung["fidelity"], rung["completed"], rung["best_objective"]) == (1, 2, 0.2)


@pytest.mark.parametrize("seen_between", [False, True])
def test_an_experiment_deleted_and_created_again_makes_clients_drop_the_old_rows(
        store: BaseStorage, seen_between: bool) -> None:
    """`orchard db rm` then a new hunt of that name while a page was open: the new view started again at
    version 1 with rebuilt_at 0, so the page (at version 1) kept the deleted experiment's rows and plots."""
    clock = FakeClock()
    view = StorageView(store, min_interval=0.5, clock=clock)
    old_id = make_experiment(store)
    store.complete_trial(store.register_trial(old_id, {"x": 0.1}, worker="w").id, "w", 0.1)
    held = trial_rows(view.experiment("exp"))  # type: ignore[arg-type]
    store.delete_experiment(old_id)
    if seen_between:  # the list page asked while no experiment had the name
        clock.now += 1.0
        assert view.experiments() == []
    new_id = make_experiment(store)
    store.complete_trial(store.register_trial(new_id, {"x": 0.7}, worker="w").id, "w", 0.7)
    clock.now += 1.0

    [shown] = view.experiments()  # the list page is open too
    assert shown.record.id == new_id
    detail = experiment_detail(shown, "memory://", since=held["version"])
    assert held["version"] < detail["rebuilt_at"] <= detail["version"]  # the page's rule to drop its rows
    assert [row["params"]["x"] for row in trial_rows(shown, since=0)["trials"]] == [0.7]


def test_an_experiment_page_follows_its_experiment_deleted_and_created_again(store: BaseStorage) -> None:
    """With only the experiment's page open, `orchard db rm` made its API answer 503 ("reading the storage
    failed: ... was deleted") forever, also after a new hunt created the experiment again."""
    clock = FakeClock()
    view = StorageView(store, min_interval=0.5, clock=clock)
    old_id = make_experiment(store)
    assert view.experiment("exp") is not None
    store.delete_experiment(old_id)
    clock.now += 1.0
    assert view.experiment("exp") is None  # the page says there is no such experiment
    new_id = make_experiment(store)
    store.complete_trial(store.register_trial(new_id, {"x": 0.7}, worker="w").id, "w", 0.7)
    clock.now += 1.0
    shown = view.experiment("exp")
    assert shown is not None and shown.record.id == new_id and shown.counts[TrialStatus.COMPLETED] == 1


def test_the_servers_repeated_warnings_show_once_a_minute_with_the_count_and_errors_always() -> None:
    import logging

    from orchard.dashboard._server import RepeatedWarnings

    now = [0.0]
    quieter = RepeatedWarnings(period=60.0, clock=lambda: now[0])

    def shown(message: str, level: int = logging.WARNING) -> str | None:
        record = logging.LogRecord("uvicorn.error", level, __file__, 1, message, (), None)
        return record.getMessage() if quieter.filter(record) else None

    assert shown("Invalid HTTP request received.") == "Invalid HTTP request received."
    assert [shown("Invalid HTTP request received.") for _ in range(3)] == [None] * 3
    assert shown("Exceeded concurrency limit.") == "Exceeded concurrency limit."  # another warning
    assert shown("Exception in ASGI application", logging.ERROR) is not None
    assert shown("Exception in ASGI application", logging.ERROR) is not None
    now[0] = 61.0
    assert shown("Invalid HTTP request received.") == (
        "Invalid HTTP request received. (and 3 more in 61 s, not shown)")
