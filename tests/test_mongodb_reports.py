"""MongoDB: what a report costs as reports pile up, and counts that agree with the reads.

The cost tests watch the commands a storage sends to the wire server (SecantusDB, or
``$ORCHARD_TEST_MONGODB_URI``) and the size of the replies; the hint a handle keeps of
the reports it stored is checked on mongomock (one process) against the writes of
another handle, which it cannot see.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pymongo
import pytest
from bson.decimal128 import Decimal128
from pymongo import monitoring

from orchard.errors import InvalidReportError, ReservationLostError
from orchard.storages.mongodb import MongoStorage
from orchard.trial import Trial, TrialStatus

W1, W2 = "host:1:w1", "host:2:w2"


def _mock() -> tuple[MongoStorage, str]:
    storage = MongoStorage(f"mongomock://reports-{uuid.uuid4().hex[:12]}")
    return storage, storage.create_experiment("reports", {})


class _Replies(monitoring.CommandListener):
    """The commands a client sent and the BSON size of each reply."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.seen.append((event.command_name, len(bson.encode(event.reply))))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.seen.append((event.command_name, 0))


@pytest.fixture
def watched(mongo_db_uri: str) -> Iterator[tuple[MongoStorage, _Replies]]:
    """A storage on the wire server whose client reports every command it sends."""
    storage, replies = MongoStorage(mongo_db_uri), _Replies()
    storage._client = pymongo.MongoClient(mongo_db_uri, event_listeners=[replies], w="majority", journal=True)
    yield storage, replies
    storage._client.close()


@pytest.mark.slow
def test_a_report_is_one_round_trip_whose_reply_does_not_grow_with_the_reports(
        watched: tuple[MongoStorage, _Replies]) -> None:
    """It was a read and a write whose reply held the whole trial: 2 round trips, 29 KB at 1,000 reports."""
    storage, replies = watched
    exp = storage.create_experiment("reports", {})
    trial = storage.register_trial(exp, {"x": 1.0}, worker=W1)
    costs = []
    for step in range(300):
        del replies.seen[:]
        reported = storage.report_trial(trial.id, W1, step, 1.0 / (step + 1))
        costs.append(list(replies.seen))
    assert reported.reports == [(step, 1.0 / (step + 1)) for step in range(300)]  # the contract: every report
    assert reported == storage.get_trial(trial.id)
    assert all(len(cost) == 1 and cost[0][0] == "findAndModify" for cost in costs[1:]), costs[-1]
    assert costs[-1][0][1] <= costs[1][0][1] + 16, (costs[1], costs[-1])  # a heartbeat's digits at most


def test_a_report_stored_through_another_handle_is_read_not_overwritten() -> None:
    """A handle's hint of the reports stored is conditional on their count: another's report is read."""
    mine, exp = _mock()
    other = MongoStorage(mine.uri)
    trial = mine.register_trial(exp, {"x": 1.0}, worker=W1)
    mine.report_trial(trial.id, W1, 1, 0.9)
    other.report_trial(trial.id, W1, 2, 0.8)
    with pytest.raises(InvalidReportError):  # step 2 is stored: the step is checked against the stored ones
        mine.report_trial(trial.id, W1, 2, 0.7)
    assert mine.report_trial(trial.id, W1, 3, 0.7).reports == [(1, 0.9), (2, 0.8), (3, 0.7)]
    assert mine.report_trial(trial.id, W1, 4, 0.6).reports == [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]


def test_a_report_whose_reply_was_lost_settles_as_stored() -> None:
    """The write landed (here through another handle) but this handle never heard: its retry is a success."""
    mine, exp = _mock()
    other = MongoStorage(mine.uri)
    trial = mine.register_trial(exp, {"x": 1.0}, worker=W1)
    mine.report_trial(trial.id, W1, 1, 0.9)
    other.report_trial(trial.id, W1, 2, 0.8)  # the write this handle's reply was lost for
    assert mine.report_trial(trial.id, W1, 2, 0.8).reports == [(1, 0.9), (2, 0.8)]
    assert mine.get_trial(trial.id).reports == [(1, 0.9), (2, 0.8)]  # type: ignore[union-attr]


def test_the_same_worker_reserving_again_starts_its_reports_over_even_at_the_same_count() -> None:
    """The hint names the reservation: the same worker and count in a new reservation are other reports."""
    mine, exp = _mock()
    other = MongoStorage(mine.uri)
    trial = mine.register_trial(exp, {"x": 1.0}, worker=W1)
    mine.report_trial(trial.id, W1, 1, 0.9)
    other.release_trial(trial.id, W1)
    again = other.reserve_trial(exp, W1)
    assert again is not None and again.id == trial.id
    other.report_trial(trial.id, W1, 5, 0.5)
    assert mine.report_trial(trial.id, W1, 6, 0.4).reports == [(5, 0.5), (6, 0.4)]


def test_a_lost_trial_is_refused_before_a_step_the_hint_refuses() -> None:
    mine, exp = _mock()
    trial = mine.register_trial(exp, {"x": 1.0}, worker=W1)
    mine.report_trial(trial.id, W1, 3, 0.9)
    MongoStorage(mine.uri).release_trial(trial.id, None)
    with pytest.raises(ReservationLostError):
        mine.report_trial(trial.id, W1, 2, 0.8)


def test_a_returned_trial_is_a_copy_of_the_reports_the_handle_keeps() -> None:
    mine, exp = _mock()
    trial = mine.register_trial(exp, {"x": 1.0}, worker=W1)
    mine.report_trial(trial.id, W1, 1, 0.9).reports.append((7, 7.0))
    assert mine.report_trial(trial.id, W1, 2, 0.8).reports == [(1, 0.9), (2, 0.8)]


# -- counts --------------------------------------------------------------------------------


#: Documents another program wrote into an experiment, each one readers skip.
UNREADABLE: dict[str, dict[str, Any]] = {
    "no status": {},
    "an unknown status": {"status": "bogus"},
    "a version that is text": {"version": "9"},
    "a version in a list": {"version": [3]},
    "a report count that is text": {"report_count": "2"},
    "params in a list": {"params": [{"x": 1.0}]},
    "a param that is a list": {"params": {"x": [1.0]}},
    "a param that is a Decimal128": {"params": {"x": Decimal128("0.5")}},
    "no params": {"params": None},
    "a time that is NaN": {"end_time": math.nan},
    "a time far beyond any date": {"end_time": 1e300},
    "a worker that is a number": {"worker": 7},
    "results that are a list": {"results": [1]},
    "reports that are a dict": {"reports": {"1": 0.5}},
    "an error that is text": {"error": "boom"},
}


def _odd(experiment: str, case: str) -> dict[str, Any]:
    doc = Trial(id=f"odd-{uuid.uuid4().hex[:8]}", experiment=experiment, params={"x": 0.25},
                status=TrialStatus.COMPLETED, objective=1.0, submit_time=1.0, end_time=2.0).to_dict()
    doc["_id"] = doc.pop("id")
    doc.update({"mtime": datetime.datetime(2020, 1, 1), "version": 2, **UNREADABLE[case]})
    if case == "no status":
        del doc["status"]
    return doc


def _counts_agree_with_reads(storage: MongoStorage, exp: str) -> None:
    read = {status: 0 for status in TrialStatus}
    for trial in storage.fetch_trials(exp):
        read[trial.status] += 1
    assert storage.count_trials(exp) == read
    unbudgeted = sum(1 for trial in storage.fetch_trials(exp) if not trial.in_budget)
    assert storage.count_unbudgeted(exp) == unbudgeted


def _fill(storage: MongoStorage) -> str:
    exp = storage.create_experiment("odd", {})
    for x in range(4):
        trial = storage.register_trial(exp, {"x": float(x)}, worker=W1)
        storage.complete_trial(trial.id, W1, float(x))
    storage.record_trial(exp, {"x": 9.0}, 0.5, {})  # recorded apart from the budget
    storage.register_trial(exp, {"x": 10.0})
    storage._trials.insert_many([_odd(exp, case) for case in UNREADABLE])  # written by another program
    storage._trials.insert_one({**_odd(exp, "no status"), "status": "completed", "in_budget": False,
                                "params": {"x": [2]}})
    return exp


@pytest.mark.slow
def test_counts_on_the_wire_leave_out_the_trials_readers_skip(mongo_db_uri: str) -> None:
    """``orchard list`` showed 5 trials where 4 are readable: counts included another program's documents."""
    storage = MongoStorage(mongo_db_uri, check_interval=0.0)
    exp = _fill(storage)
    _, cursor = storage.fetch_changes(exp)
    _counts_agree_with_reads(storage, exp)
    assert storage.count_trials(exp)[TrialStatus.COMPLETED] == 5
    for _ in range(2):  # the feed's count check (due at every call) counts what its view holds: no resync
        _, later = storage.fetch_changes(exp, cursor)
        assert not storage.resent_everything(cursor, later) and later.seen == cursor.seen
        cursor = later


def test_counts_on_mongomock_leave_out_the_trials_readers_skip() -> None:
    storage, _ = _mock()
    _counts_agree_with_reads(storage, _fill(storage))
