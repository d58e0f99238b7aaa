"""Storages written by the previous release (d09b582) open and read correctly with this code.

The fixtures in ``tests/data`` were written by that release with
``tests/data/make_previous_release.py`` (its docstring has the command): one
trial in each status it knew, and a promoted trial whose ``parent`` is set.
"""

from __future__ import annotations

import shutil
import uuid
import zlib
from pathlib import Path

import pytest
from bson import json_util

import orchard
from orchard.cli import main
from orchard.errors import StorageCorruptedError
from orchard.storages import BaseStorage, get_storage
from orchard.storages.pickled.fileformat import HEADER_SIZE, MAGIC, VERSION
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


def _version(path: Path) -> int:
    """The format version in a pickle file's header (the field older releases refuse a file by)."""
    data = path.read_bytes()
    return int.from_bytes(data[len(MAGIC):len(MAGIC) + 2], "little")


def test_the_first_write_of_this_release_locks_the_previous_release_out_of_a_pickle_file(
        tmp_path: Path) -> None:
    """The previous release skipped this release's records (reports, pruned trials) as damage: its
    compaction or `db repair` dropped them, and a worker of it re-ran pruned trials as lost and stored them
    completed over the verdict. It refuses a header of another version, and reads it whenever the file
    grew."""
    path = tmp_path / "previous_release.pkl"
    shutil.copy(DATA / "previous_release.pkl", path)
    storage = get_storage(str(path))
    record = storage.get_experiment("previous")
    assert record is not None and len(storage.fetch_trials(record.id)) == 7
    assert _version(path) == 1  # reading leaves the file to the previous release's workers
    (held,) = [t for t in storage.fetch_trials(record.id) if t.status is TrialStatus.RESERVED]
    assert held.worker is not None
    storage.report_trial(held.id, held.worker, 1, 0.7)
    storage.prune_trial(held.id, held.worker, {"pruner": "median"})
    assert _version(path) == VERSION == 2
    reopened = get_storage(str(path))
    trials = reopened.fetch_trials(record.id)
    assert len(trials) == 7 and reopened.check().clean  # type: ignore[attr-defined]
    (pruned,) = [t for t in trials if t.status is TrialStatus.PRUNED]
    assert pruned.reports == [(1, 0.7)]


def test_a_pickle_file_of_a_newer_format_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "newer.pkl"
    get_storage(str(path)).create_experiment("e", {"space": {"x": "uniform(0, 1)"}})
    head = bytearray(path.read_bytes()[:HEADER_SIZE - 4])
    head[len(MAGIC):len(MAGIC) + 2] = (VERSION + 1).to_bytes(2, "little")
    path.write_bytes(bytes(head) + zlib.crc32(head).to_bytes(4, "little") + path.read_bytes()[HEADER_SIZE:])
    before = path.read_bytes()
    newer = "written by a newer Orchard release .* upgrade Orchard here"
    with pytest.raises(StorageCorruptedError, match=newer):
        get_storage(str(path)).create_experiment("f", {"space": {"x": "uniform(0, 1)"}})
    assert path.read_bytes() == before


def _mixed_front(tmp_path: Path) -> str:
    """Two objectives: a trial completed by this release, one stored as the previous release does."""
    storage = str(tmp_path / "mixed.pkl")
    exp = orchard.build_experiment("mixed", space={"x": "uniform(0, 1)"}, storage=storage,
                                   objectives={"objective": "min", "latency": "min"})
    new = exp.storage.register_trial(exp.id, {"x": 0.5}, worker="new:1:aaaa")
    exp.storage.complete_trial(new.id, "new:1:aaaa", 0.5, {"objective": 0.5, "latency": 1.0})
    old = exp.storage.register_trial(exp.id, {"x": 0.25}, worker="old:2:bbbb")
    exp.storage.complete_trial(old.id, "old:2:bbbb", 0.25, {"latency": 2.0})  # no `objective`
    return storage


def test_status_shows_the_front_with_trials_a_previous_release_worker_completed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker of the previous release that joins a several-objective experiment takes ``objective`` out of
    the results into the trial's objective, as it did for one objective: `orchard status` then failed with
    'unexpected KeyError: 'objective'' for the whole experiment."""
    storage = _mixed_front(tmp_path)
    assert main(["status", "-n", "mixed", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "2 trials on the Pareto front" in out and "objective=0.25, latency=2" in out


def test_a_dump_with_trials_a_previous_release_worker_completed_loads(tmp_path: Path) -> None:
    """`orchard db load` refused such a dump whole: 'objective 'objective' is None, not a finite number;
    nothing was loaded'."""
    dump, target = tmp_path / "mixed.json", tmp_path / "loaded.pkl"
    assert main(["db", "dump", "--storage", _mixed_front(tmp_path), "-o", str(dump)]) == 0
    assert main(["db", "load", str(dump), "--storage", str(target)]) == 0
    loaded = orchard.get_experiment("mixed", storage=str(target))
    assert sorted(t.objective for t in loaded.fetch_trials()) == [0.25, 0.5]
    assert len(loaded.pareto_front()) == 2


def test_a_mongodb_experiment_of_a_newer_format_is_refused_untouched(mongo_db_uri: str) -> None:
    """The previous release has no marker to refuse by: it crashed on a pruned trial ('pruned' is not a
    valid TrialStatus) and ran a several-objective experiment as one objective. This release stamps the
    experiments it creates, and refuses one a newer release stamped with a higher format."""
    storage = get_storage(mongo_db_uri)
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=mongo_db_uri)
    db = storage._db()  # type: ignore[attr-defined]
    assert db.experiments.find_one({"name": "e"})["format"] == 2
    storage.register_trial(exp.id, {"x": 0.5})
    db.experiments.update_one({"name": "e"}, {"$set": {"format": 3}})
    before = list(db.trials.find())
    newer = "experiment 'e' in MongoDB at .* was written by a newer Orchard release .* upgrade Orchard here"
    for reader in (get_storage(mongo_db_uri), exp.storage):
        with pytest.raises(StorageCorruptedError, match=newer):
            reader.get_experiment("e")
    with pytest.raises(StorageCorruptedError, match=newer):
        orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=mongo_db_uri)
    assert list(db.trials.find()) == before
