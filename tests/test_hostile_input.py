"""Hostile data and careless input at the edges: MongoDB documents written by another program,
URIs with typos, and what the dashboard shows of them."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

import orchard
from orchard.storages import get_storage
from orchard.trial import TrialStatus

# -- trial documents another program wrote ------------------------------------------------

#: Trial documents no Orchard release writes, each breaking a reader that trusts the shape.
ODD_TRIALS: dict[str, dict[str, Any]] = {
    "no status": {"_id": "odd-no-status"},
    "a status Orchard does not know": {"_id": "odd-status", "status": "bogus"},
    "a status that is a number": {"_id": "odd-status-int", "status": 3},
    "an _id that is a dict": {"_id": {"made": "elsewhere"}, "status": "completed"},
    "a version that is a string": {"_id": "odd-version", "status": "completed", "version": "9"},
}


@pytest.mark.parametrize("case", list(ODD_TRIALS))
def test_odd_trial_documents_neither_stop_the_workers_nor_the_change_feed(case: str) -> None:
    exp = orchard.build_experiment("odd", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=4,
                                   storage="mongomock://")
    storage: Any = exp.storage
    _, cursor = storage.fetch_changes(exp.id)  # a reader already following the experiment
    doc = {"experiment": exp.id, "params": {"x": 0.5}, "objective": 1.0, "results": {},
           "mtime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), **ODD_TRIALS[case]}
    storage._trials.insert_one(doc)  # written by another program
    storage.fetch_changes(exp.id, cursor)
    storage.fetch_changes(exp.id)
    assert sum(storage.count_trials(exp.id).values()) <= 1
    exp.workon(lambda x: x, n_workers=1)  # every worker used to die on the first read
    assert storage.count_trials(exp.id)[TrialStatus.COMPLETED] >= 4
