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
from orchard.trial import Trial
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
