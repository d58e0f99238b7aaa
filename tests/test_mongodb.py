"""MongoStorage: every verb on mongomock, URI and error handling, and the wire protocol for real.

The mongomock tests are single-threaded (mongomock is not atomic under
threads). The ``slow`` tests run against a MongoDB wire-protocol server
process (SecantusDB, or ``$ORCHARD_TEST_MONGODB_URI``), including races
between spawned processes.
"""

from __future__ import annotations

import datetime
import gc
import multiprocessing
import pickle
import re
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pymongo
import pytest
from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

import orchard
from orchard.errors import (
    BudgetExhaustedError,
    ConfigurationError,
    DuplicateTrialError,
    ExperimentNotFoundError,
    ReservationLostError,
    StorageError,
    StorageUnavailableError,
    TrialNotFoundError,
)
from orchard.storages import get_storage
from orchard.storages.mongodb import MongoStorage, client
from orchard.testing._mongo_uri import with_database
from orchard.trial import Lease, Trial, TrialStatus
from tests import workloads

SPAWN = multiprocessing.get_context("spawn")
SECRET = "s3cr3t-Pa55"


def _mock_uri() -> str:
    return f"mongomock://test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def storage() -> Iterator[MongoStorage]:
    store = MongoStorage(_mock_uri())
    yield store
    store.close()


@pytest.fixture
def exp(storage: MongoStorage) -> str:
    return storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}, "max_trials": 5})


def _doc(storage: MongoStorage, trial_id: str) -> dict[str, Any]:
    return dict(storage._trials.find_one({"_id": trial_id}))


def _slot(storage: MongoStorage, trial_id: str) -> int | None:
    """The budget slot a trial holds (``None`` if it holds none)."""
    key = _doc(storage, trial_id).get("slot")
    return None if key is None else int(key.rpartition(":")[2])


def _slots(storage: MongoStorage, exp: str) -> list[int]:
    return sorted(int(d["slot"].rpartition(":")[2])
                  for d in storage._trials.find({"experiment": exp, "slot": {"$exists": True}}))


# -- URIs, connection, errors ---------------------------------------------------


def test_get_storage_opens_mongo_uris_without_connecting() -> None:
    """Timed without the first import of mongomock (0.25-0.35 s under load; 1.0 s once, failing the bound):
    a connection's wait, or the SRV record's lookup, is what it keeps out."""
    import mongomock  # type: ignore[import-untyped]  # noqa: F401

    start = time.monotonic()
    for uri in ("mongodb://127.0.0.1:1/orchard", "mongomock://x", f"mongodb+srv://u:{SECRET}@c0.example.com/db"):
        assert isinstance(get_storage(uri), MongoStorage)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("mongodb://db-host:27017/runs", "runs"),
        ("mongodb://db-host", "orchard"),
        ("mongodb://a:1,b:2/runs?replicaSet=rs0", "runs"),
        (f"mongodb://user:{SECRET}@db-host/runs?authSource=admin", "runs"),
        ("mongomock://shared/other", "other"),
        ("mongomock://shared", "orchard"),
    ],
)
def test_database_comes_from_the_uri_path(uri: str, database: str) -> None:
    assert MongoStorage(uri)._db_name == database


@pytest.mark.parametrize(
    "uri",
    [
        f"mongodb://user:{SECRET}@host:notaport/db",
        "mongodb://",
        "mongodb://host/db?serverSelectionTimeoutMS=soon",
        f"mongodb+srv://user:{SECRET}@host:27017/db",
        "mongodb+srv://a.example.com,b.example.com/db",
        "mongodb://host/bad$name",
    ],
)
def test_malformed_uri_is_a_configuration_error_without_credentials(uri: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_storage(uri)
    assert SECRET not in str(info.value)


def test_srv_uri_is_accepted_offline_and_redacted() -> None:
    storage = MongoStorage(f"mongodb+srv://admin:{SECRET}@cluster0.example.com/prod?retryWrites=true")
    assert storage._db_name == "prod"
    assert SECRET not in repr(storage) and "***" in repr(storage)
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.uri == storage.uri and SECRET not in repr(clone)


def test_srv_host_missing_from_dns_says_what_to_check() -> None:
    # .invalid never resolves (RFC 6761): the DNS lookup pymongo makes at the first call fails
    storage = get_storage(f"mongodb+srv://alice:{SECRET}@no-such-cluster.invalid/x?connectTimeoutMS=2000")
    with pytest.raises(StorageUnavailableError) as info:
        storage.list_experiments()
    message = str(info.value)
    assert SECRET not in message and "alice:***@no-such-cluster.invalid" in message
    assert "DNS" in message and "_mongodb._tcp.HOST" in message and "check" in message


def test_unreachable_server_fails_fast_with_a_redacted_message() -> None:
    storage = get_storage(f"mongodb://alice:{SECRET}@127.0.0.1:1/x?serverSelectionTimeoutMS=500")
    start = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        storage.create_experiment("e", {})
    assert time.monotonic() - start < 2.5
    message = str(info.value)
    assert SECRET not in message and "alice:***@127.0.0.1:1" in message
    assert "reach" in message and isinstance(info.value.__cause__, AutoReconnect)
    assert SECRET not in repr(storage)


def test_a_server_too_slow_to_answer_a_connection_names_connect_timeout_not_server_selection() -> None:
    """A server that takes the connection and answers late (here never: a socket listening, nothing
    accepting) said 'raise serverSelectionTimeoutMS', which only waited longer for the same failure."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes each connection; no reply ever comes
        port = silent.getsockname()[1]
        uri = (f"mongodb://alice:{SECRET}@127.0.0.1:{port}/x"
               "?serverSelectionTimeoutMS=1500&connectTimeoutMS=300")
        with pytest.raises(StorageUnavailableError) as info:
            get_storage(uri).list_experiments()
    message = str(info.value)
    assert SECRET not in message and f"alice:***@127.0.0.1:{port}" in message
    assert "raise connectTimeoutMS" in message and "0.3 s" in message, message


@pytest.mark.parametrize(
    ("error", "leaf", "words"),
    [
        (OperationFailure("Authentication failed.", code=18), StorageUnavailableError, "password"),
        (OperationFailure("not authorized on runs", code=13), StorageUnavailableError, "authSource"),
        (AutoReconnect("connection reset"), StorageUnavailableError, "reach"),
        (OperationFailure("something odd", code=2), StorageError, "failed to"),
        (OperationFailure("Use of undefined variable: NOW", code=17276), StorageError, "needs MongoDB 4.2"),
    ],
)
def test_driver_errors_become_orchard_errors(
    storage: MongoStorage, monkeypatch: pytest.MonkeyPatch, error: Exception, leaf: type, words: str
) -> None:
    def broken_db() -> Any:
        raise error

    monkeypatch.setattr(storage, "_db", broken_db)
    with pytest.raises(leaf) as info:
        storage.get_experiment("exp")
    assert type(info.value) is leaf and words in str(info.value)
    assert info.value.__cause__ is error


@pytest.mark.parametrize(
    ("error", "answered", "reached"),
    [
        (ServerSelectionTimeoutError("no server"), False, False),  # never answered: a wrong address?
        (ServerSelectionTimeoutError("no server"), True, True),  # it had answered: an outage
        (AutoReconnect("connection closed"), False, True),  # lost in the middle of a call
    ],
)
def test_a_server_that_had_answered_is_an_outage_not_a_wrong_address(
    storage: MongoStorage, monkeypatch: pytest.MonkeyPatch, error: Exception, answered: bool, reached: bool
) -> None:
    def broken_db() -> Any:
        raise error

    storage.answered = answered
    monkeypatch.setattr(storage, "_db", broken_db)
    with pytest.raises(StorageUnavailableError) as info:
        storage.get_experiment("exp")
    assert info.value.reached is reached and "reach" in str(info.value)


def test_scrub_removes_plain_and_encoded_passwords() -> None:
    uri = "mongodb://bob:p%40ss@host/db"
    assert "p@ss" not in client.scrub("auth failed for bob with p@ss and p%40ss", uri)


def test_anonymous_mongomock_is_fresh_but_pickles_to_the_same_data() -> None:
    first, second = get_storage("mongomock://"), get_storage("mongomock://")
    exp = first.create_experiment("e", {})
    assert second.list_experiments() == []
    assert pickle.loads(pickle.dumps(first)).get_experiment("e").id == exp  # type: ignore[union-attr]


def test_mongomock_is_refused_for_workers_in_other_processes() -> None:
    # each process would open its own empty mongomock: the workers found no experiment
    exp = orchard.build_experiment("local", space=workloads.SPACE, storage=_mock_uri(), max_trials=2)
    for executor in ("process", "joblib"):
        with pytest.raises(ConfigurationError, match=r"mongomock://test-\w+ lives in this process.*pickle"):
            exp.workon(workloads.quadratic, n_workers=2, executor=executor)
    assert exp.fetch_trials() == []


def test_named_mongomock_is_shared_in_the_process() -> None:
    uri = _mock_uri()
    exp = get_storage(uri).create_experiment("e", {})
    assert get_storage(uri).require_experiment("e").id == exp


def test_close_then_use_reconnects(storage: MongoStorage, exp: str) -> None:
    storage.close()
    assert storage.get_experiment("exp").id == exp  # type: ignore[union-attr]


def test_a_forked_child_gets_its_own_client_and_lock(storage: MongoStorage, exp: str) -> None:
    storage._lock.acquire()  # as if a parent thread held it at the instant of the fork
    storage._pid = -1  # as if this were a child process after fork
    storage.count_trials(exp)
    assert storage._pid > 0 and storage._indexed and not storage._lock.locked()


# -- experiments ----------------------------------------------------------------


def test_create_is_get_or_create_and_keeps_the_first_config(storage: MongoStorage) -> None:
    exp = storage.create_experiment("e", {"a": 1})
    assert storage.create_experiment("e", {"a": 2}) == exp
    record = storage.require_experiment("e")
    assert (record.id, record.config) == (exp, {"a": 1})
    assert [r.name for r in storage.list_experiments()] == ["e"]


def test_update_merges_config_keys(storage: MongoStorage, exp: str) -> None:
    record = storage.update_experiment(exp, {"max_trials": np.int64(9), "new": {"k": 1}})
    assert record.config["max_trials"] == 9 and type(record.config["max_trials"]) is int
    assert record.config["space"] == {"x": "uniform(0, 1)"} and record.config["new"] == {"k": 1}
    with pytest.raises(ExperimentNotFoundError):
        storage.update_experiment("nope", {"a": 1})


def test_update_refuses_option_names_that_would_be_paths(storage: MongoStorage, exp: str) -> None:
    for bad in ("a.b", "$set"):
        with pytest.raises(ConfigurationError, match="rename"):
            storage.update_experiment(exp, {bad: 1})


def test_list_is_oldest_first_and_delete_removes_trials(storage: MongoStorage) -> None:
    first = storage.create_experiment("b-first", {})
    storage.create_experiment("a-second", {})
    storage.register_trial(first, {"x": 1})
    storage.register_trial(first, {"x": 2})
    assert [r.name for r in storage.list_experiments()] == ["b-first", "a-second"]
    assert storage.delete_experiment(first) == 2
    assert storage.delete_experiment(first) == 0
    assert storage.get_experiment("b-first") is None
    assert storage._trials.count_documents({"experiment": first}) == 0


@pytest.mark.parametrize(
    "verb",
    [
        lambda s: s.register_trial("nope", {"x": 1}),
        lambda s: s.reserve_trial("nope", "w"),
        lambda s: s.fetch_trials("nope"),
        lambda s: s.fetch_changes("nope"),
        lambda s: s.count_trials("nope"),
        lambda s: s.release_lost("nope", {}, 3),
        lambda s: s.restore_trials("nope", []),
    ],
)
def test_per_experiment_verbs_reject_an_unknown_experiment(
    storage: MongoStorage, verb: Callable[[MongoStorage], Any]
) -> None:
    with pytest.raises(ExperimentNotFoundError, match="nope"):
        verb(storage)


# -- registering and the budget -------------------------------------------------


def test_register_new_and_reserved_trials(storage: MongoStorage, exp: str) -> None:
    new = storage.register_trial(exp, {"x": np.float64(0.5), "n": np.int64(3)})
    assert new.status is TrialStatus.NEW and new.attempts == 0 and new.worker is None
    stored = _doc(storage, new.id)
    assert stored["params"] == {"x": 0.5, "n": 3} and type(stored["params"]["n"]) is int
    mine = storage.register_trial(exp, {"x": 0.7}, worker="w1")
    assert (mine.status, mine.worker, mine.attempts) == (TrialStatus.RESERVED, "w1", 1)
    assert mine.heartbeat == mine.start_time == mine.submit_time
    assert storage.get_trial(mine.id) == mine
    assert storage.reserve_trial(exp, "w2").id == new.id  # type: ignore[union-attr]


def test_duplicate_params_are_refused_before_the_budget(storage: MongoStorage, exp: str) -> None:
    storage.register_trial(exp, {"x": 1}, budget=1)
    with pytest.raises(DuplicateTrialError, match="already has a trial"):
        storage.register_trial(exp, {"x": 1})
    with pytest.raises(DuplicateTrialError):
        storage.register_trial(exp, {"x": 1}, budget=1)
    with pytest.raises(BudgetExhaustedError, match="1 of max_trials=1"):
        storage.register_trial(exp, {"x": 2}, budget=1)


def test_every_non_broken_trial_holds_one_slot(storage: MongoStorage, exp: str) -> None:
    trials = [storage.register_trial(exp, {"x": i}, worker="w", budget=3) for i in range(3)]
    assert [_slot(storage, t.id) for t in trials] == [0, 1, 2]
    assert _doc(storage, trials[0].id)["slot"] == f"{exp}:0000000000"
    with pytest.raises(BudgetExhaustedError):
        storage.register_trial(exp, {"x": 9}, budget=3)
    storage.fail_trial(trials[1].id, "w", {"type": "E", "message": "m"})
    assert _slot(storage, trials[1].id) is None
    refill = storage.register_trial(exp, {"x": 10}, budget=3)  # takes the freed unit, slot 1
    assert _slot(storage, refill.id) == 1
    with pytest.raises(BudgetExhaustedError, match="3 of max_trials=3"):
        storage.register_trial(exp, {"x": 11}, budget=3)
    storage.register_trial(exp, {"x": 12})  # no budget: admitted, and holds a unit
    assert _slots(storage, exp) == [0, 1, 2, 3]
    with pytest.raises(BudgetExhaustedError, match="4 of max_trials=4"):
        storage.register_trial(exp, {"x": 13}, budget=4)
    assert storage.register_trial(exp, {"x": 14}, budget=5).status is TrialStatus.NEW


def test_a_counter_behind_the_held_slots_catches_up(storage: MongoStorage, exp: str) -> None:
    storage.register_trial(exp, {"x": 0}, budget=3)
    storage.register_trial(exp, {"x": 1}, budget=3)
    db = storage._db()
    db.experiments.update_one({"_id": exp}, {"$unset": {"slots": ""}})  # as written before the counter
    trial = storage.register_trial(exp, {"x": 2}, budget=3)
    assert _slot(storage, trial.id) == 2
    with pytest.raises(DuplicateTrialError):  # a collision on _id is not mistaken for a slot one
        storage.register_trial(exp, {"x": 0}, budget=3)
    with pytest.raises(BudgetExhaustedError):
        storage.register_trial(exp, {"x": 3}, budget=3)
    assert _slots(storage, exp) == [0, 1, 2]


def test_a_slot_drawn_but_never_filled_is_taken_at_the_end(storage: MongoStorage, exp: str) -> None:
    storage.register_trial(exp, {"x": 0}, budget=3)
    with pytest.raises(DuplicateTrialError):  # draws slot 1, then finds the trial exists: slot 1 stays free
        storage.register_trial(exp, {"x": 0}, budget=3)
    storage.register_trial(exp, {"x": 1}, budget=3)
    storage.register_trial(exp, {"x": 2}, budget=3)
    assert _slots(storage, exp) == [0, 1, 2]
    with pytest.raises(BudgetExhaustedError, match="3 of max_trials=3"):
        storage.register_trial(exp, {"x": 3}, budget=3)


def test_budget_zero_admits_nothing(storage: MongoStorage, exp: str) -> None:
    with pytest.raises(BudgetExhaustedError, match="0 of max_trials=0"):
        storage.register_trial(exp, {"x": 1}, budget=0)


def test_restore_keeps_statuses_skips_existing_and_counts_against_the_budget(
    storage: MongoStorage, exp: str
) -> None:
    storage.register_trial(exp, {"x": 0})
    dumped = [
        Trial(id="old", experiment="elsewhere", params={"x": i}, status=status, objective=float(i),
              submit_time=float(i))
        for i, status in enumerate([TrialStatus.NEW, TrialStatus.COMPLETED, TrialStatus.BROKEN])
    ]
    assert storage.restore_trials(exp, dumped) == 2  # {"x": 0} exists already
    restored = {t.params["x"]: t for t in storage.fetch_trials(exp)}
    assert restored[1].status is TrialStatus.COMPLETED and restored[1].experiment == exp
    assert _slot(storage, restored[2].id) is None and _slot(storage, restored[1].id) is not None
    assert storage.restore_trials(exp, dumped) == 0
    with pytest.raises(BudgetExhaustedError, match="2 of max_trials=2"):
        storage.register_trial(exp, {"x": 5}, budget=2)


# -- the reservation lifecycle ----------------------------------------------------


def test_reserve_takes_interrupted_first_then_oldest_new(storage: MongoStorage, exp: str) -> None:
    first, second = (storage.register_trial(exp, {"x": i}) for i in range(2))
    taken = storage.reserve_trial(exp, "w1")
    assert taken is not None and taken.id == first.id
    assert (taken.status, taken.worker, taken.attempts) == (TrialStatus.RESERVED, "w1", 1)
    storage.release_trial(first.id, "w1")
    again = storage.reserve_trial(exp, "w2")
    assert again is not None and (again.id, again.attempts) == (first.id, 1)  # a graceful release gives the attempt back
    assert storage.reserve_trial(exp, "w3").id == second.id  # type: ignore[union-attr]
    assert storage.reserve_trial(exp, "w4") is None


def test_only_the_owner_writes_a_reservation(storage: MongoStorage, exp: str) -> None:
    trial = storage.register_trial(exp, {"x": 1}, worker="owner")
    for write in (
        lambda w: storage.heartbeat_trial(trial.id, w),
        lambda w: storage.complete_trial(trial.id, w, 1.0),
        lambda w: storage.fail_trial(trial.id, w, {"type": "E", "message": "m"}),
        lambda w: storage.release_trial(trial.id, w),
    ):
        with pytest.raises(ReservationLostError, match="owned by owner, not reserved by thief"):
            write("thief")
    assert _doc(storage, trial.id)["version"] == 1  # nothing was written
    storage.heartbeat_trial(trial.id, "owner")
    done = storage.complete_trial(trial.id, "owner", np.float64(0.25), {"acc": np.float32(0.5)})
    assert (done.status, done.objective, done.results) == (TrialStatus.COMPLETED, 0.25, {"acc": 0.5})
    assert done.end_time is not None
    with pytest.raises(ReservationLostError, match="is already completed"):
        storage.complete_trial(trial.id, "owner", 2.0)
    with pytest.raises(TrialNotFoundError):
        storage.heartbeat_trial("missing", "owner")
    with pytest.raises(TrialNotFoundError):
        storage.release_trial("missing", None)


def test_fail_and_release(storage: MongoStorage, exp: str) -> None:
    a = storage.register_trial(exp, {"x": 1}, worker="w")
    b = storage.register_trial(exp, {"x": 2}, worker="w")
    broken = storage.fail_trial(a.id, "w", {"type": "ValueError", "message": "bad", "reason": "x"})
    assert broken.status is TrialStatus.BROKEN and broken.error == {"type": "ValueError", "message": "bad",
                                                                     "reason": "x"}
    released = storage.release_trial(b.id, None)  # administrative: whoever holds it
    assert (released.status, released.worker) == (TrialStatus.INTERRUPTED, None)
    with pytest.raises(ReservationLostError, match="unowned, not reserved by anyone"):
        storage.release_trial(b.id, None)


def test_every_write_is_stamped_by_the_server_not_by_a_client_clock(storage: MongoStorage, exp: str) -> None:
    storage.now = lambda: 1.0  # type: ignore[method-assign]  # a client clock decades behind
    trial = storage.register_trial(exp, {"x": 1}, worker="w")
    stamps = [_doc(storage, trial.id)["mtime"]]
    storage.heartbeat_trial(trial.id, "w")
    stamps.append(_doc(storage, trial.id)["mtime"])
    storage.release_lost(exp, {trial.id: Lease("w", 1.0)}, 3)
    stamps.append(_doc(storage, trial.id)["mtime"])
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert all(isinstance(s, datetime.datetime) and abs((s - now).total_seconds()) < 60 for s in stamps), stamps
    assert _doc(storage, trial.id)["status"] == TrialStatus.INTERRUPTED.value


def test_writes_default_to_majority_journaled_write_concern() -> None:
    """A standalone server acknowledged a write before its journal had it (written every 100 ms), so a crash
    of the server could lose a completed result: writes wait for the journal unless the URI says otherwise."""
    assert MongoStorage("mongodb://localhost/db")._client.write_concern.document == {"w": "majority", "j": True}
    assert MongoStorage("mongodb://localhost/db?w=1")._client.write_concern.document == {"w": 1, "j": True}
    assert MongoStorage("mongodb://localhost/db?journal=false")._client.write_concern.document == {
        "w": "majority", "j": False}



@pytest.mark.parametrize(("options", "timeout"), [("", 20.0), ("?socketTimeoutMS=90000", 90.0),
                                                  ("?sockettimeoutms=0", None), ("?timeoutMS=30000", None)])
def test_a_reply_is_waited_for_20_s_unless_the_uri_says_otherwise(options: str,
                                                                   timeout: float | None) -> None:
    """A server frozen with its connections open (SIGSTOP) held a call until it woke: no reply had a time
    limit. The URI's socketTimeoutMS wins, and its timeoutMS (a bound on a whole operation) replaces it."""
    mongo = MongoStorage(f"mongodb://localhost/db{options}")._client
    assert mongo.options.pool_options.socket_timeout == timeout


# -- reading ----------------------------------------------------------------------


def test_fetch_and_count(storage: MongoStorage, exp: str) -> None:
    trials = [storage.register_trial(exp, {"x": i}, worker="w") for i in range(3)]
    storage.complete_trial(trials[0].id, "w", 3.0)
    storage.complete_trial(trials[2].id, "w", 1.0)
    assert [t.id for t in storage.fetch_trials(exp)] == [t.id for t in trials]
    assert [t.id for t in storage.fetch_trials(exp, ["completed"])] == [trials[0].id, trials[2].id]
    assert storage.best_trial(exp).id == trials[2].id  # type: ignore[union-attr]
    counts = storage.count_trials(exp)
    assert counts == {**{s: 0 for s in TrialStatus}, TrialStatus.COMPLETED: 2, TrialStatus.RESERVED: 1}


def _replay(storage: MongoStorage, exp: str, view: dict[str, Trial], cursor: Any) -> tuple[list[Trial], Any]:
    changed, cursor = storage.fetch_changes(exp, cursor)
    view.update((t.id, t) for t in changed)
    return changed, pickle.loads(pickle.dumps(cursor))


def test_fetch_changes_replays_the_state_incrementally(storage: MongoStorage, exp: str) -> None:
    view: dict[str, Trial] = {}
    a = storage.register_trial(exp, {"x": 1}, worker="w")
    changed, cursor = _replay(storage, exp, view, None)
    assert [t.id for t in changed] == [a.id]
    assert _replay(storage, exp, view, cursor)[0] == []  # nothing changed: nothing returned
    b = storage.register_trial(exp, {"x": 2})
    storage.complete_trial(a.id, "w", 1.0)
    changed, cursor = _replay(storage, exp, view, cursor)
    assert sorted(t.id for t in changed) == sorted([a.id, b.id])
    storage.reserve_trial(exp, "w2")
    storage.heartbeat_trial(b.id, "w2")
    changed, cursor = _replay(storage, exp, view, cursor)
    assert [(t.id, t.status) for t in changed] == [(b.id, TrialStatus.RESERVED)]
    assert view == {t.id: t for t in storage.fetch_trials(exp)}


def test_a_write_hidden_from_the_window_is_recovered_by_the_count_check(exp: str, storage: MongoStorage) -> None:
    trial = storage.register_trial(exp, {"x": 1}, worker="w")
    cursor = storage.fetch_changes(exp)[1]
    storage.complete_trial(trial.id, "w", 1.0)
    # as if the write had stayed in flight for an hour: the window cannot see it
    storage._trials.update_one({"_id": trial.id}, {"$set": {"mtime": datetime.datetime(2000, 1, 1)}})
    assert storage.fetch_changes(exp, cursor)[0] == []  # missed until the next count check
    checking = MongoStorage(storage.uri, check_interval=0.0)
    changed, after = checking.fetch_changes(exp, cursor)
    assert [(t.id, t.status) for t in changed] == [(trial.id, TrialStatus.COMPLETED)]
    assert not checking.resent_everything(cursor, after), "nothing vanished: a caller keeps its view"
    cursor = after
    assert checking.fetch_changes(exp, cursor)[0] == []


@pytest.mark.parametrize(("workers", "first_check"), [(1, 10.0), (8, 10.0), (32, 40.0),
                                                      pytest.param(200, 120.0, marks=pytest.mark.slow)])  # 30 s
def test_the_count_check_stretches_with_the_workers_holding_trials(
        storage: MongoStorage, exp: str, workers: int, first_check: float) -> None:
    """A fleet sends about as many count checks as 8 workers do; a missed write waits 2 minutes at most."""
    from orchard.storages.mongodb.changes import ChangeFeed

    now = [0.0]
    feed = ChangeFeed(5.0, 10.0, clock=lambda: now[0])
    for i in range(workers):
        storage.register_trial(exp, {"x": i}, worker=f"w{i}")
    counted: list[float] = []
    cursor = feed.fetch(storage._trials, exp, None, dict)[1]
    for now[0] in np.arange(0.5, 250.0, 0.5):
        cursor = feed.fetch(storage._trials, exp, cursor, lambda: (counted.append(now[0]), storage.count_trials(exp))[1])[1]
        if len(counted) == 2:
            break  # the two checks asserted
    assert counted[:2] == [first_check, 2 * first_check]


@pytest.mark.parametrize("offset", [3600.0, -3600.0])
def test_writer_clocks_hours_apart_hide_no_writes(storage: MongoStorage, exp: str, offset: float) -> None:
    skewed = MongoStorage(storage.uri)
    skewed.now = lambda: time.time() + offset  # type: ignore[method-assign]
    first = skewed.register_trial(exp, {"x": 1})
    changed, cursor = storage.fetch_changes(exp)
    assert [t.id for t in changed] == [first.id]
    later = storage.register_trial(exp, {"x": 2})
    skewed_later = skewed.register_trial(exp, {"x": 3})
    assert sorted(t.id for t in storage.fetch_changes(exp, cursor)[0]) == sorted([later.id, skewed_later.id])


def test_a_cursor_of_another_experiment_restarts_from_scratch(storage: MongoStorage, exp: str) -> None:
    other = storage.create_experiment("other", {})
    storage.register_trial(other, {"x": 1})
    cursor = storage.fetch_changes(other)[1]
    trial = storage.register_trial(exp, {"x": 1})
    assert [t.id for t in storage.fetch_changes(exp, cursor)[0]] == [trial.id]
    assert [t.id for t in storage.fetch_changes(exp, 17)[0]] == [trial.id]


def test_the_storage_pickles_by_uri(storage: MongoStorage, exp: str) -> None:
    storage.register_trial(exp, {"x": 1})
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, MongoStorage) and clone is not storage
    assert clone.count_trials(exp)[TrialStatus.NEW] == 1
    assert len(pickle.dumps(storage)) < 300  # the URI and two numbers, never a client


# -- over the wire (SecantusDB or $ORCHARD_TEST_MONGODB_URI) ----------------------


@pytest.fixture(scope="module")
def wire_uri(mongo_uri: str, _mongo_admin: Any) -> Iterator[str]:
    """A database of this module's own on the session's wire server (dropped afterwards)."""
    database = f"orchard_test_{uuid.uuid4().hex[:12]}"
    yield with_database(mongo_uri, database)
    _mongo_admin.drop_database(database)


def test_the_test_server_stops_without_waiting_out_its_accept_loop(tmp_path: Any) -> None:
    """SecantusDB's accept loop sees a stop only when a connection comes: each stop of a test server
    (every outage test's, the session's) waited out its 2 s join timeout."""
    from orchard.testing.mongo_server import WireServer

    server = WireServer(tmp_path)
    server.start()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.9, "the stop waited for the server's 2 s join timeout"


def test_a_replica_set_the_server_is_not_a_member_of_is_named_not_taken_for_an_outage(
        wire_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard list` with `?replicaSet=rs9` on a server that is not in set rs9 (a standalone, another set's
    member) said 'cannot reach MongoDB at HOST … check that mongod is running there', though it answered."""
    from orchard.cli import main

    uri = f"{wire_uri}{'&' if '?' in wire_uri else '?'}replicaSet=nosuchset&serverSelectionTimeoutMS=300"
    assert main(["list", "--storage", uri]) != 0
    err = capsys.readouterr().err
    assert "answered, but not as a member of replica set 'nosuchset'" in err, err
    assert "cannot reach" not in err and "mongod is running" not in err
    silent = "mongodb://127.0.0.1:1/orchard?replicaSet=nosuchset&serverSelectionTimeoutMS=300"
    with pytest.raises(StorageUnavailableError, match="cannot reach MongoDB at 127.0.0.1:1"):
        MongoStorage(silent).list_experiments()  # a host that never answered is still unreachable


@pytest.fixture
def wire(wire_uri: str) -> Iterator[MongoStorage]:
    store = MongoStorage(wire_uri)
    yield store
    store.close()


def _run_racers(target: Callable[..., None], args: list[tuple[Any, ...]], timeout: float = 120) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in spawned processes; return what each put."""
    barrier, results = SPAWN.Barrier(len(args)), SPAWN.Queue()
    processes = [SPAWN.Process(target=target, args=(*a, barrier, results)) for a in args]
    for process in processes:
        process.start()
    try:
        out = [results.get(timeout=timeout) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return out


def _reserve_and_complete(storage: MongoStorage, exp: str, worker: str, barrier: Any, results: Any) -> None:
    barrier.wait(60)
    won: list[str] = []
    while (trial := storage.reserve_trial(exp, worker)) is not None:
        storage.complete_trial(trial.id, worker, float(len(won)))
        won.append(trial.id)
    results.put(won)


def _claim_budget(storage: MongoStorage, exp: str, worker: str, points: list[int], budget: int,
                  barrier: Any, results: Any) -> None:
    barrier.wait(60)
    won = []
    for x in points:
        try:
            won.append(storage.register_trial(exp, {"x": x}, worker=worker, budget=budget).id)
        except BudgetExhaustedError:
            continue
    results.put((worker, won))


def _count_in_child(storage: MongoStorage, exp: str, results: Any) -> None:
    results.put(storage.count_trials(exp)[TrialStatus.NEW])


@pytest.mark.slow
def test_every_verb_over_the_wire(wire: MongoStorage) -> None:
    exp = wire.create_experiment("verbs", {"a": 1})
    names = {i["name"] for i in wire._trials.list_indexes()}
    assert {"experiment_status_submit", "experiment_mtime", "experiment_id", "slot_unique"} <= names
    a = wire.register_trial(exp, {"x": 1}, budget=2)
    with pytest.raises(DuplicateTrialError):
        wire.register_trial(exp, {"x": 1}, budget=2)
    held = _doc(wire, a.id)
    for clash, field in (({**held, "slot": f"{exp}:x"}, "_id"), ({**held, "_id": "other"}, "slot")):
        with pytest.raises(pymongo.errors.DuplicateKeyError) as info:
            wire._trials.insert_one(clash)
        assert client.duplicate_key_field(info.value) == field  # the server names the index
    b = wire.register_trial(exp, {"x": 2}, worker="w", budget=2)
    with pytest.raises(BudgetExhaustedError):
        wire.register_trial(exp, {"x": 3}, budget=2)
    changed, cursor = wire.fetch_changes(exp)
    assert {t.id for t in changed} == {a.id, b.id}
    assert wire.reserve_trial(exp, "v").id == a.id  # type: ignore[union-attr]
    wire.heartbeat_trial(a.id, "v")
    with pytest.raises(ReservationLostError):
        wire.complete_trial(a.id, "w", 1.0)
    wire.fail_trial(a.id, "v", {"type": "E", "message": "m"})
    c = wire.register_trial(exp, {"x": 3}, budget=2)  # the broken trial's unit is free again
    wire.complete_trial(b.id, "w", 0.5)
    assert wire.release_lost(exp, {a.id: Lease("v", 0.0)}, 3) == []
    changed, cursor = wire.fetch_changes(exp, cursor)
    assert {t.id: t.status for t in changed} == {
        a.id: TrialStatus.BROKEN, b.id: TrialStatus.COMPLETED, c.id: TrialStatus.NEW}
    assert wire.count_trials(exp) == {TrialStatus.NEW: 1, TrialStatus.RESERVED: 0, TrialStatus.COMPLETED: 1,
                                      TrialStatus.BROKEN: 1, TrialStatus.INTERRUPTED: 0, TrialStatus.PRUNED: 0}
    assert wire.best_trial(exp).id == b.id  # type: ignore[union-attr]
    reserved = wire.reserve_trial(exp, "z")
    assert reserved is not None and reserved.id == c.id and reserved.lease is not None
    [stale] = wire.release_lost(exp, {c.id: reserved.lease}, 3)
    assert (stale.id, stale.status) == (c.id, TrialStatus.INTERRUPTED)
    assert isinstance(_doc(wire, c.id)["mtime"], datetime.datetime), "the wire server stamps writes itself"


class _Sent(pymongo.monitoring.CommandListener):
    """The reads (``find``, ``aggregate``) a client sent."""

    def __init__(self) -> None:
        self.reads: list[dict[str, Any]] = []

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("find", "aggregate"):
            sent = event.command.items()
            self.reads.append({k: v for k, v in sent if k not in ("lsid", "$db", "$clusterTime")})

    def succeeded(self, event: pymongo.monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: pymongo.monitoring.CommandFailedEvent) -> None:
        pass


def _scanned_keys(explained: Any) -> list[list[str]]:
    """The key patterns of the indexes a plan the server explained scans."""
    if isinstance(explained, list):
        return [keys for item in explained for keys in _scanned_keys(item)]
    if not isinstance(explained, dict):
        return []
    here = [list(explained["keyPattern"])] if "keyPattern" in explained else []
    below = [value for key, value in explained.items() if key != "rejectedPlans"]
    return here + [keys for value in below for keys in _scanned_keys(value)]


@pytest.mark.slow
def test_a_read_of_every_trial_scans_an_index_whose_keys_no_write_changes(wire_uri: str) -> None:
    """`fetch_trials` (a `db dump`) was a plain find the server served from the (experiment, mtime) index:
    on mongod a trial written during a read of several batches moves in that index, and is read twice or
    missed (a trial read twice made the dump refuse to load). Hinted to (experiment, _id): each trial once."""
    sent = _Sent()
    storage = MongoStorage(wire_uri)
    storage._client = pymongo.MongoClient(wire_uri, event_listeners=[sent])
    exp = storage.create_experiment("isolated", {})
    registered = [storage.register_trial(exp, {"x": x}, worker="w" if x % 2 else None) for x in range(5)]
    storage.complete_trial(registered[1].id, "w", 1.0)
    del sent.reads[:]
    assert [t.id for t in storage.fetch_trials(exp)] == [t.id for t in registered]  # oldest first
    waiting = [registered[i].id for i in (0, 2, 3, 4)]
    assert [t.id for t in storage.fetch_trials(exp, ["new", "reserved"])] == waiting
    assert len(storage.fetch_changes(exp)[0]) == 5  # a first look: every trial, each once
    db = storage._db()
    for read in sent.reads:
        scanned = _scanned_keys(db.command("explain", read))
        assert scanned and all(set(keys) <= {"experiment", "_id"} for keys in scanned), (read, scanned)
    storage._trials.drop_index("experiment_id")  # a collection restored from a dump of an older release
    assert len(storage.fetch_trials(exp)) == len(MongoStorage(wire_uri).fetch_changes(exp)[0]) == 5
    assert "experiment_id" in {index["name"] for index in storage._trials.list_indexes()}
    storage._client.close()


@pytest.mark.slow
def test_ints_beyond_32_bits_come_back_as_plain_ints(wire: MongoStorage) -> None:
    """The server keeps them as BSON int64, which the driver decodes as ``bson.Int64``: never 'not Orchard's'."""
    exp = wire.create_experiment("wide-ints", {})
    seed = 2**40 + 7
    trial = wire.register_trial(exp, {"seed": seed, "layers": 3}, worker="w", budget=None)
    wire.report_trial(trial.id, "w", 2**33, 0.5)
    wire.complete_trial(trial.id, "w", 1.0, {"samples": 3_000_000_000, "curve": [2**35, {"n": -(2**62)}]})
    for read in (wire.get_trial(trial.id), *wire.fetch_trials(exp), *wire.fetch_changes(exp)[0]):
        assert read is not None and read.params == {"seed": seed, "layers": 3}
        assert read.results == {"samples": 3_000_000_000, "curve": [2**35, {"n": -(2**62)}]}
        assert read.reports == [(2**33, 0.5)]
        assert type(read.params["seed"]) is int and type(read.results["samples"]) is int
    assert wire.count_trials(exp)[TrialStatus.COMPLETED] == 1
    waiting = wire.register_trial(exp, {"seed": seed + 1, "layers": 3}, budget=None)
    assert wire.reserve_trial(exp, "v").params["seed"] == seed + 1  # type: ignore[union-attr]
    assert waiting.id in {t.id for t in wire.fetch_trials(exp)}


@pytest.mark.slow
def test_a_clash_on_both_id_and_slot_is_still_a_duplicate(wire: MongoStorage) -> None:
    exp = wire.create_experiment("double-clash", {})
    wire.register_trial(exp, {"x": 0}, budget=5)  # slot 0
    wire._db().experiments.update_one({"_id": exp}, {"$unset": {"slots": ""}})  # the next draw is slot 0 again
    with pytest.raises(DuplicateTrialError):
        wire.register_trial(exp, {"x": 0}, budget=5)
    assert wire.count_trials(exp)[TrialStatus.NEW] == 1


@pytest.mark.slow
def test_a_forked_child_reconnects_with_its_own_client(wire: MongoStorage) -> None:
    exp = wire.create_experiment("fork", {})
    wire.register_trial(exp, {"x": 1})  # the parent's client is connected now
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    child = fork.Process(target=_count_in_child, args=(wire, exp, results))
    child.start()
    assert results.get(timeout=60) == 1
    child.join(30)
    assert child.exitcode == 0
    assert wire.count_trials(exp)[TrialStatus.NEW] == 1  # the parent's client still works


@pytest.mark.slow
def test_an_ask_and_tell_script_ends_without_a_warning_of_an_unclosed_client(wire_uri: str, tmp_path: Any) -> None:
    """Every script on MongoDB ended with "Exception ignored in MongoClient.__del__ ... ResourceWarning: Unclosed
    MongoClient" (python -X dev, -W error::ResourceWarning, or a test runner showing warnings): no one closed it."""
    script = tmp_path / "ask.py"
    script.write_text(
        "import orchard\n"
        f"exp = orchard.build_experiment('ask', space={{'x': 'uniform(0, 1)'}}, storage={wire_uri!r})\n"
        "exp.observe(exp.suggest(), 0.5)\n"
        "kept = exp.suggest()  # never observed: given back at exit, before the client is closed\n")
    done = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr.startswith("gave back 1 trial(s)"), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    dropped = MongoStorage(wire_uri)
    dropped.list_experiments()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del dropped
        gc.collect()
    assert [str(w.message) for w in caught] == []


_DROPPED_EXPERIMENTS = """
import gc, os, sys, threading, time
import orchard

def sockets():
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed since
            pass
    return sum(link.startswith("socket:") for link in links)

gc.disable()  # what reference counting frees, alone
threads, open_sockets = threading.active_count(), sockets()
for i in range(6):
    exp = orchard.build_experiment(f"dropped{i}", space={"x": "uniform(0, 1)"}, storage=sys.argv[1],
                                   max_trials=2)
    exp.workon(lambda x: x, executor="thread", n_workers=2, on_result=(lambda t: None) if i % 2 else None)
    del exp
deadline = time.monotonic() + 30  # pymongo's threads end shortly after their client is closed
while (threading.active_count(), sockets()) > (threads, open_sockets) and time.monotonic() < deadline:
    time.sleep(0.05)
print("threads", threading.active_count() - threads, "sockets", sockets() - open_sockets)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts sockets in /proc")
def test_a_dropped_experiment_frees_its_client_threads_and_sockets_at_once(wire_uri: str) -> None:
    """Each experiment dropped after workon kept its MongoDB client (3 pymongo threads and its sockets) until
    the garbage collector ran: its workers and progress monitor held themselves in reference cycles
    (31 threads after 10 experiments)."""
    done = subprocess.run([sys.executable, "-c", _DROPPED_EXPERIMENTS, wire_uri],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "threads 0 sockets 0", done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_racing_processes_reserve_and_complete_each_trial_exactly_once(wire: MongoStorage) -> None:
    exp = wire.create_experiment("race", {})
    registered = {wire.register_trial(exp, {"x": i}).id for i in range(50)}
    won = _run_racers(_reserve_and_complete, [(wire, exp, f"racer-{i}") for i in range(4)])
    ids = [tid for per_process in won for tid in per_process]
    assert Counter(ids).most_common(1)[0][1] == 1, "a trial was completed by two processes"
    assert set(ids) == registered
    trials = wire.fetch_trials(exp)
    assert {t.status for t in trials} == {TrialStatus.COMPLETED} and {t.attempts for t in trials} == {1}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_racing_budget_claims_never_exceed_the_budget(wire: MongoStorage) -> None:
    budget, exp = 10, wire.create_experiment("budget", {})
    args = [(wire, exp, f"racer-{i}", list(range(i * 8, i * 8 + 8)), budget) for i in range(4)]
    admitted = dict(_run_racers(_claim_budget, args))
    assert sum(len(ids) for ids in admitted.values()) == budget  # non-broken only grows: the peak
    # break three trials; their units are reclaimed by a second race through the hole-filling path
    victims = [(worker, tid) for worker, ids in admitted.items() for tid in ids][:3]
    for worker, tid in victims:
        wire.fail_trial(tid, worker, {"type": "E", "message": "m"})
    args = [(wire, exp, f"second-{i}", list(range(100 + i * 4, 104 + i * 4)), budget) for i in range(4)]
    refilled = dict(_run_racers(_claim_budget, args))
    assert sum(len(ids) for ids in refilled.values()) == 3
    counts = wire.count_trials(exp)
    assert counts[TrialStatus.RESERVED] == budget and counts[TrialStatus.BROKEN] == 3
    assert _slots(wire, exp) == list(range(budget))


@pytest.mark.slow
def test_a_server_refusing_the_login_is_quoted_by_its_message_not_its_whole_reply(wire_uri: str) -> None:
    """A wrong password said 'refused to list experiments: authentication failed, full error: {'ok':
    0.0, …, '$clusterTime': {… 'signature': {'hash': b'\\x00…', 'keyI; check the user name…' (the
    server's whole reply, cut)."""
    uri = wire_uri.replace("mongodb://", f"mongodb://nobody:{SECRET}@", 1)
    with pytest.raises(StorageUnavailableError) as refused, get_storage(uri) as storage:
        storage.list_experiments()
    said = str(refused.value)
    expected = r"refused to list experiments: authentication failed\.?; check the user name"
    assert re.search(expected, said, re.IGNORECASE), said
    assert "full error" not in said and "$clusterTime" not in said and SECRET not in said
