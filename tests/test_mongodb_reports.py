"""MongoDB: counts that agree with the reads."""

from __future__ import annotations

import datetime
import math
import uuid
from typing import Any

import pytest
from bson.decimal128 import Decimal128

from orchard.storages.mongodb import MongoStorage
from orchard.trial import Trial, TrialStatus

W1 = "host:1:w1"


def _mock() -> tuple[MongoStorage, str]:
    storage = MongoStorage(f"mongomock://reports-{uuid.uuid4().hex[:12]}")
    return storage, storage.create_experiment("reports", {})


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
    """``orchard list`` showed 5 trials where 4 are readable: the count included another program's documents."""
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
