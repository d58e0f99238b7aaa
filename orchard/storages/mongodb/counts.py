"""An experiment's trials counted per status on the server, as the readers see them.

Readers skip (and name) the trial documents holding values Orchard never writes
(:func:`orchard.storages.mongodb.client.unreadable`), so a count that included them
would disagree with every list (``orchard list`` showing 5 trials where 4 are read).
:func:`count_by_status` counts in one aggregation the documents whose fields have the
types Orchard writes them with (:data:`READABLE`: the id, status, counters, times and
names, flat params, results, error and verdict dicts, reports a list): the same cost as a
count of every document, no document sent. A value of a type Orchard never writes nested
in the results, an error, a verdict or a report is seen only by reading the document:
such a trial is still counted. On mongomock (in-process) the documents are read and
checked whole. The change feed's count checks count every document (``every=True``):
its view holds the unreadable ones too (:mod:`orchard.storages.mongodb.changes`).
"""

from __future__ import annotations

from typing import Any

from orchard.storages.mongodb import client
from orchard.storages.pickled.records import TIME_LIMIT
from orchard.trial import Trial, TrialStatus

__all__ = ["READABLE", "count_by_status", "count_unbudgeted"]

_NUMBERS = ["double", "int", "long"]  # the BSON types of a Python float or int (not Decimal128)
_ABSENT = ["missing", "null"]


def _typed(field: str, *types: str) -> dict[str, Any]:
    """``field`` is of one of ``types`` (the expression's ``$type``: a list is "array", absent "missing")."""
    return {"$in": [{"$type": f"${field}"}, list(types)]}


def _time(field: str) -> dict[str, Any]:
    """``field`` is absent, null, or a number of seconds within the bound of a time (NaN is not)."""
    within = {"$and": [{"$gt": [f"${field}", -TIME_LIMIT]}, {"$lt": [f"${field}", TIME_LIMIT]}]}
    return {"$and": [_typed(field, *_ABSENT, *_NUMBERS), {"$or": [_typed(field, *_ABSENT), within]}]}


#: The query matching the trial documents whose fields have the types Orchard writes (module docstring).
READABLE: dict[str, Any] = {"$expr": {"$and": [
    _typed("_id", "string"),
    {"$in": ["$status", [status.value for status in TrialStatus]]},
    _typed("params", "object"),
    _typed("results", "object"),
    *(_typed(name, "missing", "int", "long") for name in ("version", client.REPORT_COUNT, "attempts")),
    *(_time(name) for name in ("heartbeat", "submit_time", "start_time", "end_time")),
    _typed("objective", *_ABSENT, *_NUMBERS),
    *(_typed(name, *_ABSENT, "string") for name in ("worker", "parent", "origin")),
    _typed("in_budget", "missing", "bool"),
    *(_typed(name, *_ABSENT, "object") for name in ("error", "verdict")),
    _typed("reports", "missing", "array"),
    {"$allElementsTrue": [{"$map": {  # every param a plain scalar (an expression may not stop at a false)
        "input": {"$objectToArray": {"$cond": [{"$eq": [{"$type": "$params"}, "object"]}, "$params", {}]}},
        "in": {"$in": [{"$type": "$$this.v"}, ["string", "bool", "null", *_NUMBERS]]}}}]},
]}}


def count_by_status(trials: Any, experiment_id: str, uri: str, *,
                    every: bool = False) -> dict[TrialStatus, int]:
    """How many trials of ``experiment_id`` each status has: those readers read, or ``every`` document.

    One round trip; on mongomock, a read of the experiment's documents.
    """
    counts = {status: 0 for status in TrialStatus}
    if client.is_mock(uri) and not every:
        for trial in _mock_readable(trials, {"experiment": experiment_id}, uri):
            counts[trial.status] += 1
        return counts
    known = {status.value: status for status in TrialStatus}
    match = {"experiment": experiment_id} if every else {"experiment": experiment_id, **READABLE}
    for row in trials.aggregate([{"$match": match}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
        if isinstance(row["_id"], str) and row["_id"] in known:  # another program's status: not a trial's
            counts[known[row["_id"]]] = int(row["n"])
    return counts


def count_unbudgeted(trials: Any, experiment_id: str, uri: str) -> int:
    """How many of the trials of ``experiment_id`` readers read were recorded apart from the budget."""
    query = {"experiment": experiment_id, "in_budget": False}
    if client.is_mock(uri):
        return len(_mock_readable(trials, query, uri))
    return int(trials.count_documents({**query, **READABLE}))


def _mock_readable(trials: Any, query: dict[str, Any], uri: str) -> list[Trial]:
    """The trials matching ``query`` that readers read, on mongomock (which knows neither ``$type``
    lists nor ``$allElementsTrue``): read and checked here, in the process that holds them anyway."""
    return client.readable_trials(trials.find(query), uri)
