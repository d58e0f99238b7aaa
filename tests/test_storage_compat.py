"""Storages written by the previous release (d09b582) open and read correctly with this code.

The fixtures in ``tests/data`` were written by that release with
``tests/data/make_previous_release.py`` (its docstring has the command): one
trial in each status it knew, and a promoted trial whose ``parent`` is set.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from bson import json_util

from orchard.storages import BaseStorage, get_storage
from orchard.trial import TrialStatus

DATA = Path(__file__).parent / "data"
OLD_STATUSES = {TrialStatus.NEW, TrialStatus.RESERVED, TrialStatus.COMPLETED, TrialStatus.BROKEN,
                TrialStatus.INTERRUPTED}


def _reads_the_previous_release(storage: BaseStorage) -> None:
    record = storage.get_experiment("previous")
    assert record is not None and record.config["space"]["epochs"] == "fidelity(1, 9, base=3)"
    trials = storage.fetch_trials(record.id)
    assert {t.status for t in trials} == OLD_STATUSES and len(trials) == 7
    counts = storage.count_trials(record.id)
    assert counts[TrialStatus.COMPLETED] == 2 and counts[TrialStatus.BROKEN] == 2 and counts[TrialStatus.PRUNED] == 0
    by_params = {(t.params["x"], t.params["epochs"]): t for t in trials}
    first, promoted = by_params[(0.25, 1)], by_params[(0.25, 3)]
    assert promoted.parent == first.id and (first.objective, promoted.objective) == (0.5, 0.4)
    assert promoted.results == {"acc": 0.95}
    assert {(t.error or {}).get("reason") for t in trials if t.status is TrialStatus.BROKEN} == {None, "lost"}
    assert all(t.reports == [] and t.verdict is None for t in trials)
    best = storage.best_trial(record.id)
    assert best is not None and best.id == promoted.id

    # and this code goes on writing to it: reports, pruning, a re-reservation
    (held,) = [t for t in trials if t.status is TrialStatus.RESERVED]
    assert held.worker is not None
    storage.report_trial(held.id, held.worker, 1, 0.7)
    pruned = storage.prune_trial(held.id, held.worker, {"pruner": "median"})
    assert (pruned.status, pruned.objective) == (TrialStatus.PRUNED, 0.7)
    again = storage.reserve_trial(record.id, "host-e:5:eeee")
    assert again is not None and again.params == {"x": 0.125, "epochs": 1} and again.attempts == 1
    assert storage.report_trial(again.id, "host-e:5:eeee", 1, 0.3).reports == [(1, 0.3)]


def test_a_pickle_file_of_the_previous_release_opens(tmp_path: Path) -> None:
    path = tmp_path / "previous_release.pkl"
    shutil.copy(DATA / "previous_release.pkl", path)
    storage = get_storage(str(path))
    assert storage.check().clean  # type: ignore[attr-defined]
    _reads_the_previous_release(storage)
    reopened = get_storage(str(path))
    record = reopened.get_experiment("previous")
    assert record is not None and reopened.count_trials(record.id)[TrialStatus.PRUNED] == 1


def test_a_mongodb_database_of_the_previous_release_opens() -> None:
    name = f"previous-{uuid.uuid4().hex[:8]}"
    storage = get_storage(f"mongomock://{name}")
    docs = json_util.loads((DATA / "previous_release_mongo.json").read_text())
    db = storage._db()  # type: ignore[attr-defined]
    db.experiments.insert_many(docs["experiments"])
    db.trials.insert_many(docs["trials"])
    _reads_the_previous_release(storage)
    record = storage.get_experiment("previous")
    assert record is not None
    changed, _ = storage.fetch_changes(record.id)
    assert len(changed) == 7
