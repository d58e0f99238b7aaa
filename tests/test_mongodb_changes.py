"""The MongoDB change feed against documents and restores no Orchard worker writes.

``fetch_changes`` reads the trials stamped (by the server) since the newest stamp
it returned. A trial document stamped in the future, by another program or by a
server whose clock was stepped back since, must not push that cursor past the
writes still to come; and a database restored from an older dump
(``mongorestore --drop``) under running readers must make them forget the
trials that no longer exist. Each runs on mongomock and on the SecantusDB
wire server (marked slow).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchard.storages.mongodb import MongoStorage
from orchard.trial import Trial, TrialStatus
from tests.conftest import backend_uri

A_YEAR = datetime.timedelta(days=365)


@pytest.fixture(params=["mongomock", pytest.param("mongodb", marks=pytest.mark.slow)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MongoStorage]:
    store = MongoStorage(backend_uri(str(request.param), request, tmp_path))
    yield store
    store.close()


@pytest.fixture
def exp(storage: MongoStorage) -> str:
    return storage.create_experiment("exp", {"space": {"x": "uniform(0, 10)"}})


def stamp_ahead(storage: MongoStorage, trial: Trial) -> None:
    """Rewrite ``trial``'s document as another program would, stamped a year ahead of the server."""
    doc: Any = storage._trials.find_one({"_id": trial.id})
    storage._trials.update_one({"_id": trial.id}, {"$set": {"mtime": doc["mtime"] + A_YEAR}, "$inc": {"version": 1}})


def ids(trials: list[Trial]) -> list[str]:
    return sorted(t.id for t in trials)


def test_a_document_stamped_in_the_future_hides_no_later_write(storage: MongoStorage, exp: str) -> None:
    first = storage.register_trial(exp, {"x": 1})
    cursor = storage.fetch_changes(exp)[1]
    stamp_ahead(storage, first)
    changed, cursor = storage.fetch_changes(exp, cursor)  # an incremental read meets it
    assert ids(changed) == [first.id]
    later = storage.register_trial(exp, {"x": 2})
    changed, cursor = storage.fetch_changes(exp, cursor)
    assert ids(changed) == [later.id], "the write after the future stamp was hidden"
    storage.complete_trial(storage.reserve_trial(exp, "w").id, "w", 1.0)  # type: ignore[union-attr]
    assert len(storage.fetch_changes(exp, cursor)[0]) == 1


def test_a_full_read_meeting_a_future_stamp_hides_no_later_write(storage: MongoStorage, exp: str) -> None:
    first = storage.register_trial(exp, {"x": 1})
    stamp_ahead(storage, first)
    changed, cursor = storage.fetch_changes(exp)
    assert ids(changed) == [first.id]
    later = storage.register_trial(exp, {"x": 2})
    assert ids(storage.fetch_changes(exp, cursor)[0]) == [later.id], "the write after the future stamp was hidden"


def test_a_server_clock_stepped_back_hides_no_later_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """mongomock's server is this process: its clock is stepped back an hour after the first writes.

    The read after the step meets the trials last written before it (still in its window),
    learns the server's date from them, and reaches back to the writes made since.
    """
    import mongomock

    storage = MongoStorage(backend_uri("mongomock", None, Path()))  # type: ignore[arg-type]
    exp = storage.create_experiment("exp", {"space": {"x": "uniform(0, 10)"}})
    first = storage.register_trial(exp, {"x": 1}, worker="w")
    storage.register_trial(exp, {"x": 3})  # waiting: not written again
    cursor = storage.fetch_changes(exp)[1]
    stepped = mongomock.utcnow() - datetime.timedelta(hours=1)
    monkeypatch.setattr(mongomock, "utcnow", lambda: stepped)
    storage.complete_trial(first.id, "w", 1.0)
    later = storage.register_trial(exp, {"x": 2})
    assert ids(storage.fetch_changes(exp, cursor)[0]) == ids([first, later]), "writes after the step were hidden"


def test_a_restore_of_an_older_dump_is_noticed_and_vanished_trials_forgotten(
    storage: MongoStorage, exp: str
) -> None:
    """``mongorestore --drop`` of a dump taken before the last writes, under a running reader."""
    from orchard.history import History

    kept = storage.register_trial(exp, {"x": 1}, worker="w")
    dump = list(storage._trials.find({"experiment": exp}))  # mongodump
    storage.complete_trial(kept.id, "w", 1.0)
    gone = storage.register_trial(exp, {"x": 2})
    reader = MongoStorage(storage.uri, check_interval=0.0)  # its count check is due at every read
    history = History(reader, exp)
    history.refresh()
    assert history.trials[kept.id].status is TrialStatus.COMPLETED and gone.id in history.trials
    storage._trials.drop()  # mongorestore --drop
    storage._trials.insert_many(dump)
    history.refresh()
    assert list(history.trials) == [kept.id], "the history kept a trial the restore removed"
    assert history.trials[kept.id].status is TrialStatus.RESERVED
    assert history.counts[TrialStatus.COMPLETED] == 0
    reader.close()


def test_a_restore_is_noticed_at_the_first_write_to_a_restored_trial(storage: MongoStorage, exp: str) -> None:
    """No count check is due (10 s): a version lower than one the reader saw gives the restore away."""
    from orchard.history import History

    held = storage.register_trial(exp, {"x": 1}, worker="w")
    dump = list(storage._trials.find({"experiment": exp}))  # mongodump
    storage.heartbeat_trial(held.id, "w")
    storage.heartbeat_trial(held.id, "w")
    gone = storage.register_trial(exp, {"x": 2})
    history = History(storage, exp)
    history.refresh()
    assert set(history.trials) == {held.id, gone.id}
    storage._trials.drop()  # mongorestore --drop
    storage._trials.insert_many(dump)
    storage.heartbeat_trial(held.id, "w")  # the worker goes on: its trial's version is one behind what was seen
    history.refresh()
    assert list(history.trials) == [held.id], "the history kept a trial the restore removed"
