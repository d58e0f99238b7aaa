"""MongoDB under a careless user: experiments deleted (``orchard db rm``) under running workers.

A worker process knows its experiment (its handle caches the name). When the
experiment is deleted under it, nothing it does afterwards may write trials no
one can see: each registration that would land in the deleted experiment is
refused and names what happened.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchard.errors import ExperimentNotFoundError, StorageError
from orchard.storages.mongodb import MongoStorage
from orchard.trial import TrialStatus
from tests.conftest import backend_uri


@pytest.fixture(params=["mongomock", pytest.param("mongodb", marks=pytest.mark.slow)])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_uri(str(request.param), request, tmp_path)


@pytest.fixture
def handles(uri: str) -> Iterator[tuple[MongoStorage, MongoStorage]]:
    """The user's handle (``orchard db rm``) and a running worker's."""
    user, worker = MongoStorage(uri), MongoStorage(uri)
    yield user, worker
    user.close()
    worker.close()


@pytest.fixture
def exp(handles: tuple[MongoStorage, MongoStorage]) -> str:
    return handles[0].create_experiment("e", {"space": {"x": "uniform(0, 1)"}, "max_trials": 5})


def test_a_worker_registers_nothing_in_an_experiment_deleted_under_it(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    user, worker = handles
    first = worker.register_trial(exp, {"x": 0.1}, worker="w", budget=5)
    worker.complete_trial(first.id, "w", 0.1)
    assert user.delete_experiment(exp) == 1
    for x in (0.2, 0.3):
        with pytest.raises(ExperimentNotFoundError, match="'e' was deleted"):
            worker.register_trial(exp, {"x": x}, worker="w", budget=5)
    assert user._trials.count_documents({}) == 0, "trials were written into the deleted experiment"


@pytest.mark.slow
def test_a_load_cut_by_an_outage_says_so_and_runs_again_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mongo_db_uri: str
) -> None:
    """``orchard db load`` loses the server after 4 trials: the error says what stays and what to do."""
    from pymongo.errors import AutoReconnect

    import orchard
    from orchard.cli import main
    from orchard.storages.mongodb import client

    source = str(tmp_path / "source.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=source)
    for i in range(10):
        exp.insert({"x": i / 10}, objective=float(i))
    dump, target = str(tmp_path / "dump.json"), mongo_db_uri  # not mongomock: db load refuses it (lost at exit)
    assert main(["db", "dump", "--storage", source, "-o", dump]) == 0
    insert = client.insert_stamped  # the trials inserted with their result hold no unit of budget
    inserted: list[str] = []

    def until_lost(trials: object, doc: dict[str, object]) -> None:
        if len(inserted) == 4:
            raise AutoReconnect("connection closed")
        insert(trials, doc)
        inserted.append(str(doc["_id"]))

    monkeypatch.setattr(client, "insert_stamped", until_lost)
    assert main(["db", "load", dump, "--storage", target]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lost MongoDB" in line and "the same command adds the rest" in line, line
    monkeypatch.setattr(client, "insert_stamped", insert)
    assert main(["db", "load", dump, "--storage", target]) == 0
    assert "6 of 10 trials added (4 were already there)" in capsys.readouterr().out


@pytest.mark.parametrize("options", ["w=0", "w=0&journal=false", "W=0"])
def test_unacknowledged_writes_are_refused_when_the_storage_is_opened(options: str) -> None:
    """With ``w=0`` no write answers: a reservation, a result or an experiment's creation cannot be told apart
    from nothing (joining said the experiment "was created and deleted repeatedly")."""
    from orchard.errors import ConfigurationError
    from orchard.storages import get_storage

    with pytest.raises(ConfigurationError, match="sets w=0: unacknowledged writes") as refused:
        get_storage(f"mongodb://orchard:secret@localhost:1/orchard?{options}")
    assert "secret" not in str(refused.value)


def test_a_result_for_a_trial_deleted_under_its_worker_says_what_happened(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    """``orchard hunt`` ended on ``no trial with id '…'`` when the experiment was deleted mid-evaluation."""
    from orchard.errors import TrialNotFoundError

    user, worker = handles
    held = worker.register_trial(exp, {"x": 0.1}, worker="host:1:w", budget=5)
    user.delete_experiment(exp)
    with pytest.raises(TrialNotFoundError, match=r"deleted from .* while worker host:1:w held it: its experiment "
                                                  r"was deleted \(orchard db rm\?\)"):
        worker.complete_trial(held.id, "host:1:w", 0.5)


def test_a_result_for_a_trial_a_restore_took_away_is_dropped_and_the_worker_goes_on(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    """A server killed without a journal (SecantusDB, probed) lost a registration acknowledged to a worker; the
    worker then died on TrialNotFoundError while its experiment went on (a pickle file's worker drops and goes on)."""
    from orchard.errors import ReservationLostError

    user, worker = handles
    held = worker.register_trial(exp, {"x": 0.1}, worker="host:1:w", budget=5)
    user._trials.delete_one({"_id": held.id})  # what a restored or crashed database no longer has
    with pytest.raises(ReservationLostError, match=r"vanished from .* while worker host:1:w held it, though its "
                                                    r"experiment is still there"):
        worker.complete_trial(held.id, "host:1:w", 0.5)
    assert worker.register_trial(exp, {"x": 0.2}, worker="host:1:w", budget=5).status is TrialStatus.RESERVED


def test_a_trial_a_restore_took_away_is_judged_by_its_own_experiment(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    """The worker's handle had read another experiment (a warm-start source), later deleted: a held trial the
    restore took away was then reported deleted with its experiment, and the worker stopped."""
    from orchard.errors import ReservationLostError

    user, worker = handles
    source = user.create_experiment("old", {"space": {"x": "uniform(0, 1)"}})
    assert worker.get_experiment("old") is not None  # read as a warm-start source
    user.delete_experiment(source)
    held = worker.register_trial(exp, {"x": 0.1}, worker="host:1:w", budget=5)
    user._trials.delete_one({"_id": held.id})  # what a restored or crashed database no longer has
    with pytest.raises(ReservationLostError, match="though its experiment is still there"):
        worker.complete_trial(held.id, "host:1:w", 0.5)


def _nested(depth: int) -> list[object]:
    value: list[object] = [1]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [b"bytes", datetime.datetime(2020, 1, 1), _nested(40), 2**70],
                         ids=["bytes", "datetime", "nested", "int71"])
def test_a_value_readers_would_skip_is_refused_before_it_is_written(
    handles: tuple[MongoStorage, MongoStorage], exp: str, value: object
) -> None:
    """A result holding bytes, a datetime or deep nesting was stored, then called 'written by another
    program': readers skipped the trial while counts held it; an int beyond 64 bits raised a raw
    OverflowError. The pickle file refuses all four before writing; so does MongoDB."""
    worker = handles[1]
    held = worker.register_trial(exp, {"x": 0.1}, worker="w")
    refused = "^cannot store .* in MongoDB: only plain values"
    with pytest.raises(StorageError, match=refused):
        worker.complete_trial(held.id, "w", 1.0, {"m": value})
    with pytest.raises(StorageError, match=refused):
        worker.record_trial(exp, {"x": 0.2}, 1.0, {"m": value})
    assert [(t.id, t.status) for t in worker.fetch_trials(exp)] == [(held.id, TrialStatus.RESERVED)]
    assert worker.count_trials(exp)[TrialStatus.RESERVED] == 1
    assert worker.complete_trial(held.id, "w", 1.0, {"m": 1}).status is TrialStatus.COMPLETED


def test_a_reader_of_an_experiment_deleted_by_another_process_is_told_so(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    """After `orchard db rm` in another process, a running reader (a dashboard, `status --watch`, a
    worker) read the experiment as empty and went on: no trials, zero counts. The pickle file raises."""
    user, reader = handles
    reader.register_trial(exp, {"x": 0.1})
    assert len(reader.fetch_trials(exp)) == 1
    assert user.delete_experiment(exp) == 1
    with pytest.raises(ExperimentNotFoundError, match=f"id '{exp}' in storage .*: 'e' was deleted \\(orchard db rm"):
        reader.fetch_trials(exp)
    for read in (reader.count_trials, reader.fetch_changes, reader.best_trial):
        with pytest.raises(ExperimentNotFoundError):
            read(exp)
    with pytest.raises(ExperimentNotFoundError):
        reader.reserve_trial(exp, "w")


def test_a_fresh_experiment_read_empty_is_not_read_again_and_its_deletion_stops_the_first_registration(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    """A joiner's count and first look of an empty experiment each read the experiment once more (deleted
    by another process?): 2 finds per worker, 256 at once when 128 joined. A handle that never saw it hold
    a trial reads it no more; a deletion stops the worker at its first registration, which writes nothing."""
    user, worker = handles
    assert worker.require_experiment("e").id == exp  # joined
    assert user.delete_experiment(exp) == 0
    assert not any(worker.count_trials(exp).values()) and worker.fetch_changes(exp)[0] == []
    for budget in (5, None):
        with pytest.raises(ExperimentNotFoundError, match="'e' was deleted"):
            worker.register_trial(exp, {"x": 0.1}, worker="w", budget=budget)
    assert user._trials.count_documents({}) == 0
    with pytest.raises(ExperimentNotFoundError, match="nope"):  # an id never seen is read: it does not exist
        worker.count_trials("nope")


def test_an_insert_outside_the_budget_lands_nothing_in_an_experiment_deleted_under_it(
    handles: tuple[MongoStorage, MongoStorage], exp: str
) -> None:
    """exp.insert (recorded apart from the budget) into an experiment another process deleted wrote a trial
    no one could see, and an unbudgeted registration raised a bare StorageError; the pickle file refuses
    both with ExperimentNotFoundError."""
    user, worker = handles
    worker.register_trial(exp, {"x": 0.1})  # the worker knows the experiment
    assert user.delete_experiment(exp) == 1
    deleted = "experiment 'e' was deleted \\(orchard db rm\\?\\).*nothing was registered"
    with pytest.raises(ExperimentNotFoundError, match=deleted):
        worker.record_trial(exp, {"x": 0.2}, 1.0, {}, in_budget=False)
    with pytest.raises(ExperimentNotFoundError, match=deleted):
        worker.register_trial(exp, {"x": 0.3}, worker="w")
    assert user._trials.count_documents({}) == 0, "a trial was written into the deleted experiment"


@pytest.mark.parametrize("case", ["no status", "params in a list", "a version that is text"])
def test_a_trial_document_readers_skip_frees_its_unit_of_the_budget(uri: str, case: str) -> None:
    """A trial document another program edited into one readers skip kept its unit of the budget: the workers
    saw 7 of max_trials=8 trials, could register none, and waited for the eighth forever (orchard hunt hung)."""
    from orchard.errors import BudgetExhaustedError
    from tests.test_mongodb_reports import UNREADABLE

    store = MongoStorage(uri)
    exp = store.create_experiment("e", {"space": {"x": "uniform(0, 1)"}, "max_trials": 4})
    first, *_ = [store.register_trial(exp, {"x": x / 10}, worker="w", budget=4) for x in range(4)]
    edit = {"$unset": {"status": ""}} if case == "no status" else {"$set": UNREADABLE[case]}
    store._trials.update_one({"_id": first.id}, edit)  # another program's edit
    assert len(store.fetch_trials(exp)) == 3
    store.register_trial(exp, {"x": 0.9}, worker="w", budget=4)
    with pytest.raises(BudgetExhaustedError):
        store.register_trial(exp, {"x": 0.95}, worker="w", budget=4)
    assert len(store.fetch_trials(exp)) == 4
    assert store._trials.count_documents({"experiment": exp}) == 5  # the edited document is kept
    store.close()


@pytest.mark.parametrize("counter", ["many", None, float("nan"), -5, 1e300])
@pytest.mark.parametrize("budget", [4, None])
def test_a_budget_counter_another_program_spoiled_is_rebuilt(uri: str, counter: object, budget: int | None) -> None:
    """An experiment document whose slot counter another program set to text failed every registration of every
    worker ('failed to register a trial: … Cannot apply $inc to a value of non-numeric type')."""
    from orchard.errors import BudgetExhaustedError

    store = MongoStorage(uri)
    exp = store.create_experiment("e", {"space": {"x": "uniform(0, 1)"}, "max_trials": 4})
    for x in range(2):
        store.register_trial(exp, {"x": x / 10}, worker="w", budget=budget)
    store._db().experiments.update_one({"_id": exp}, {"$set": {"slots": counter}})  # another program's edit
    store.register_trial(exp, {"x": 0.5}, worker="w", budget=budget)
    store.register_trial(exp, {"x": 0.6}, worker="w", budget=budget)
    if budget is not None:
        with pytest.raises(BudgetExhaustedError):
            store.register_trial(exp, {"x": 0.7}, worker="w", budget=budget)
    slots = [d["slot"] for d in store._trials.find({"experiment": exp})]
    assert len(slots) == len(set(slots)) == 4
    store.close()


@pytest.mark.parametrize("stamp", ["2", 2.0, True, [2]])
def test_an_experiment_whose_format_is_not_a_number_is_skipped_as_another_programs_not_a_newer_release(
        uri: str, stamp: object) -> None:
    """`format: "2"` (another program's edit) made `orchard list`, `status` and `db dump` of the whole storage fail
    with '… was written by a newer Orchard release (format '2'; this release reads formats 1 to 2): upgrade'."""
    from orchard.errors import StorageCorruptedError

    store = MongoStorage(uri)
    odd = store.create_experiment("odd", {"space": {"x": "uniform(0, 1)"}})
    store.create_experiment("fine", {"space": {"x": "uniform(0, 1)"}})
    store._db().experiments.update_one({"_id": odd}, {"$set": {"format": stamp}})
    assert [record.name for record in store.list_experiments()] == ["fine"]
    with pytest.raises(StorageCorruptedError, match="not one Orchard writes \\(field 'format' is") as refused:
        store.get_experiment("odd")
    assert "newer" not in str(refused.value)
    store.close()


@pytest.mark.parametrize("command", [["list"], ["status"], ["db", "dump", "-o", "DUMP"]])
def test_an_experiment_of_a_newer_release_is_skipped_and_named_by_list_status_and_dump(
        uri: str, command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """One experiment stamped `format: 3` (a newer release's) made `orchard list`, `status` and `db dump` of
    the whole storage fail with 'experiment 'new' … was written by a newer Orchard release'; the others went
    unseen."""
    from orchard.cli import main

    store = MongoStorage(uri)
    newer = store.create_experiment("newer", {"space": {"x": "uniform(0, 1)"}})
    store.create_experiment("fine", {"space": {"x": "uniform(0, 1)"}})
    store._db().experiments.update_one({"_id": newer}, {"$set": {"format": 3}})  # a later release's stamp
    dump = tmp_path / "dump.json"
    assert main([*[str(dump) if part == "DUMP" else part for part in command], "--storage", uri]) == 0
    out, said = capsys.readouterr().out, caplog.text  # the warning goes to stderr through logging
    assert "skipped experiment 'newer'" in said and "newer Orchard release (format 3" in said
    assert "upgrade" in said
    if dump.exists():
        assert [entry["name"] for entry in json.loads(dump.read_text())["experiments"]] == ["fine"]
    else:
        assert "fine" in out and "newer" not in out
    store.close()


@pytest.mark.parametrize("field", ["name", "slot"])
def test_two_documents_sharing_a_unique_value_are_named_not_a_failed_index_build(
        uri: str, field: str) -> None:
    """Two experiments named alike (or two trials holding one budget slot), written while the unique index
    was dropped by hand or by another program, made every verb of every new process (creating any
    experiment, or any call at all) fail with 'failed to create an experiment: Index build failed: …
    E11000 duplicate key'."""
    from orchard.errors import StorageCorruptedError

    from orchard.storages.mongodb import client

    other, database = client.open_client(uri)  # another program: no index made
    collection = other[database]["experiments" if field == "name" else "trials"]
    collection.insert_many([{"_id": "first", field: "same"}, {"_id": "second", field: "same"}])
    store = MongoStorage(uri)
    with pytest.raises(StorageCorruptedError) as refused:
        store.create_experiment("fresh", {"space": {"x": "uniform(0, 1)"}})
    said = str(refused.value)
    assert "'first'" in said and "'second'" in said and f"{field} 'same'" in said and "delete" in said, said
    store.close()
    if not client.is_mock(uri):
        other.close()
