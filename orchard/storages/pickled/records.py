"""The shape of the records in a pickle log, checked when they are loaded.

A frame whose checksum is right may still hold something Orchard never
writes: a tampered or foreign record, or a pathological one (a 534-byte
pickle of nested lists sharing each other expands to 2**100 nodes when
walked, and would hang every worker that hashes its params). Every record is
checked against the shapes below, walking at most a bounded number of nodes,
before it reaches the table; anything else makes the whole frame *damaged*
(skipped, with a warning, like a frame with a bad checksum).

Shapes::

    {"op": "experiment", "record": {"id": str, "name": str, "config": PLAIN, "created": number}}
    {"op": "report", "trial": str, "step": int, "value": number or [number, ...], "heartbeat": number}
    {"op": "trial", "trial": {"id": str, "experiment": str, "params": {str: SCALAR},
                              "status": a TrialStatus value, "results": {str: PLAIN}, ...}}
    {"op": "drop", "experiment": str}
    {"op": "fence", "at": int, "lock": str}     # first record of a frame written under a soft lock

PLAIN is None, bool, int, float, str, or lists and dicts (str keys) of PLAIN,
nested at most :data:`MAX_DEPTH` deep; SCALAR is a PLAIN that is not a list or dict.
Every int is a 64-bit one (``|n| < 2**63``, what MongoDB stores too): a
5,000-digit int cannot even be printed (Python refuses to convert it to text),
so one would break every ``str``, JSON dump and plot of its trial. A trial's
``error`` is ``None`` or a dict whose ``type``, ``message`` and ``reason``,
when present, are strings (every reader formats them as text). A time (an
experiment's ``created``, a trial's ``heartbeat``, ``submit_time``, ``start_time``,
``end_time``) is finite and within :data:`TIME_LIMIT` seconds of 1970.
Writers check their records the same way before appending them, so a record
that returned is never one that readers would skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard.storages.table import SCALARS
from orchard.storages.values import ERROR_TEXTS, INT_LIMIT, MAX_DEPTH
from orchard.trial import TrialStatus

__all__ = ["INT_LIMIT", "MAX_DEPTH", "SCALARS", "TIME_LIMIT", "RecordError", "check_batch", "check_trial",
           "experiment_fault", "plain_fault", "time_fault"]

_NODE_FLOOR = 10_000  # nodes any frame may hold, beyond its size in bytes
_STATUSES = frozenset(status.value for status in TrialStatus)
_TIMES = ("heartbeat", "submit_time", "start_time", "end_time")
#: A stored time is seconds since 1970 within this bound (years 1426 to 2514), and finite: NaN or 1e300
#: cannot be shown as a date (`orchard info` of its experiment failed), and a NaN heartbeat never
#: equals itself, which leases are judged by.
TIME_LIMIT = 2**34
_NONE = type(None)
_NAMES = (str, type(None))
#: The fields of an experiment record every reader relies on, and the types Orchard writes them with.
_EXPERIMENT_TYPES: dict[str, tuple[type, ...]] = {"id": (str,), "name": (str,), "created": (int, float),
                                                  "config": (dict,)}
_EXPERIMENT_FIELDS = frozenset(_EXPERIMENT_TYPES)
_ERROR_TEXTS = ERROR_TEXTS


_PLAIN_SCALARS = frozenset(kind for kind in SCALARS if kind is not int)  # ints are checked for their size


class RecordError(ValueError):
    """A record that is not one Orchard writes (its frame is damaged)."""


class _Budget:
    """Counts the values walked in one frame, so shared sub-lists cannot make the walk explode."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise RecordError("it holds more values than its size allows (nested shared lists?)")


def _int(value: int) -> None:
    if not -INT_LIMIT < value < INT_LIMIT:
        raise RecordError(f"an int of {value.bit_length()} bits (at most 63: -2**63 < n < 2**63)")


def _plain(value: Any, budget: _Budget, depth: int = 0) -> None:
    """Check a PLAIN value. Every worker checks every record it replays: items are checked inline."""
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise RecordError(f"values nested more than {MAX_DEPTH} deep")
        budget.spend(len(value))
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    raise RecordError(f"a dict key of type {type(key).__name__}")
            value = value.values()
        for item in value:
            kind = type(item)
            if kind is int:
                if not -INT_LIMIT < item < INT_LIMIT:
                    _int(item)
            elif kind not in _PLAIN_SCALARS:
                _plain(item, budget, depth + 1)
    elif kind is int:
        _int(value)
    elif kind not in SCALARS:
        raise RecordError(f"a value of type {kind.__name__}")


def _check_error(error: Any, budget: _Budget) -> None:
    if error is None:
        return
    if type(error) is not dict:
        raise RecordError(f"a trial error that is a {type(error).__name__}, not a dict")
    for name in _ERROR_TEXTS:
        if name in error and type(error[name]) is not str:
            raise RecordError(f"a trial error whose {name!r} is a {type(error[name]).__name__}, not a string")
    _plain(error, budget)


def _check_trial(trial: Any, budget: _Budget) -> None:
    """Check a trial: one pass over its fields (the simple ones by a table of accepted types), then the rest."""
    if type(trial) is not dict:
        raise RecordError("a trial that is not a dict")
    if type(trial.get("id")) is not str or type(trial.get("experiment")) is not str:
        raise RecordError("a trial without a string id and experiment")
    status = trial.get("status")
    if type(status) is not str or status not in _STATUSES:  # its type first: a list is not even hashable
        raise RecordError(f"unknown trial status {status!r}")
    params, results = trial.get("params"), trial.get("results")
    if type(params) is not dict:
        raise RecordError("trial params that are not a dict")
    if type(results) is not dict:
        raise RecordError("trial results that are not a dict")
    budget.spend(len(params))
    for name, value in params.items():
        kind = type(value)
        if type(name) is not str or kind not in SCALARS:
            raise RecordError(f"param {name!r} is not a plain scalar (params must be flat)")
        if kind is int and not -INT_LIMIT < value < INT_LIMIT:
            _int(value)
    if results:
        _plain(results, budget)
    for name, value in trial.items():  # fields absent from records of older releases read as their defaults
        kinds = _FIELD_TYPES.get(name)
        if kinds is None:
            if name in _CHECKED_APART:
                _CHECKED_APART[name](value, budget)
        elif type(value) not in kinds:
            raise RecordError(f"field {name!r} is of type {type(value).__name__}, not {_KIND_NAMES[kinds]}")
        elif kinds is _TIME:
            if value is not None and not -TIME_LIMIT < value < TIME_LIMIT:
                raise RecordError(time_fault(name, value))
        elif type(value) is int:
            _int(value)


def _check_reports(reports: Any, budget: _Budget) -> None:
    if type(reports) is not list:
        raise RecordError("trial reports that are not a list")
    if reports:
        budget.spend(len(reports))
        for pair in reports:
            _check_report(pair)


def _check_verdict(verdict: Any, budget: _Budget) -> None:
    if verdict is not None:
        if type(verdict) is not dict:
            raise RecordError(f"field 'verdict' is {type(verdict).__name__}")
        _plain(verdict, budget)


_NUMBER: frozenset[type] = frozenset({float, int, _NONE})
_TIME: frozenset[type] = frozenset({float, int, _NONE})  # the same types, another object: times are bounded too
_NAME: frozenset[type] = frozenset({str, _NONE})
#: The accepted types of a trial's simple fields (ints are also checked for their size).
_FIELD_TYPES: dict[str, frozenset[type]] = {
    "objective": _NUMBER, **dict.fromkeys(_TIMES, _TIME), **dict.fromkeys(("worker", "parent", "origin"), _NAME),
    "in_budget": frozenset({bool}), "attempts": frozenset({int}),
}
_KIND_NAMES = {_NUMBER: "a number", _NAME: "a string", frozenset({bool}): "a bool", frozenset({int}): "an int"}
_CHECKED_APART = {"error": _check_error, "reports": _check_reports, "verdict": _check_verdict}


def _check_report(pair: Any) -> None:
    if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not int:
        raise RecordError("a trial report that is not [int step, value]")
    _int(pair[0])
    values = pair[1] if type(pair[1]) is list and pair[1] else [pair[1]]  # several objectives: a list
    for value in values:
        if type(value) not in (int, float):
            raise RecordError("a trial report whose value is not a number or a list of numbers")
        if type(value) is int:
            _int(value)


def _field(record: dict[str, Any], name: str, *kinds: type) -> Any:
    value = record.get(name)
    if type(value) not in kinds:
        raise RecordError(f"field {name!r} is {type(value).__name__}")
    return value


def _check_record(record: Any, budget: _Budget) -> None:
    if type(record) is not dict:
        raise RecordError("a record that is not a dict")
    op = record.get("op")
    if op == "trial":
        _check_trial(record.get("trial"), budget)
    elif op == "experiment":
        exp = _field(record, "record", dict)
        if not set(exp) <= _EXPERIMENT_FIELDS:
            raise RecordError(f"an experiment with unknown fields {sorted(set(exp) - _EXPERIMENT_FIELDS)}")
        fault = experiment_fault(exp)
        if fault is not None:
            raise RecordError(fault)
        _plain(exp["config"], budget)
    elif op == "report":
        _field(record, "trial", str)
        _check_report([_field(record, "step", int), _field(record, "value", int, float, list)])
        fault = time_fault("heartbeat", _field(record, "heartbeat", int, float))
        if fault is not None:
            raise RecordError(fault)
    elif op == "drop":
        _field(record, "experiment", str)
    elif op == "fence":
        _field(record, "at", int)
        _field(record, "lock", str)
    else:
        raise RecordError(f"unknown record op {op!r}")


def check_batch(batch: Any, payload_size: int) -> None:
    """Check that ``batch`` (a decoded frame of ``payload_size`` bytes) holds only Orchard records.

    Raises:
        RecordError: it does not; the message says what is wrong.
    """
    if type(batch) is not list:
        raise RecordError("a frame that is not a list of records")
    budget = _Budget(_NODE_FLOOR + 2 * payload_size)
    budget.spend(len(batch))
    for position, record in enumerate(batch):
        _check_record(record, budget)
        if record["op"] == "fence" and position != 0:
            raise RecordError("a fence record that is not first in its frame")


def experiment_fault(experiment: Mapping[str, Any], id_field: str = "id") -> str | None:
    """Why ``experiment`` is not an experiment Orchard writes, or ``None``; its config's values are not walked.

    Its ``id`` (under ``id_field``: MongoDB's ``_id``) and ``name`` are strings, ``created``
    a time (:data:`TIME_LIMIT`), ``config`` a dict. Every backend checks what it reads with
    this, so they all skip the same experiments.
    """
    for field, kinds in _EXPERIMENT_TYPES.items():
        key = id_field if field == "id" else field
        value: Any = experiment.get(key)
        if type(value) not in kinds:
            return f"field {key!r} is {'missing' if key not in experiment else type(value).__name__}"
        fault = time_fault(key, value) if field == "created" else None
        if fault is not None:
            return fault
    return None


def time_fault(name: str, value: float) -> str | None:
    """Why ``value`` is not a time Orchard stores (see :data:`TIME_LIMIT`), or ``None``."""
    if -TIME_LIMIT < value < TIME_LIMIT:
        return None
    shown = f"an int of {value.bit_length()} bits" if type(value) is int else repr(value)
    return f"field {name!r} is {shown}, not a time (finite seconds since 1970, at most 2**34)"


def check_trial(trial: Any, max_values: int = _NODE_FLOOR) -> None:
    """Check one trial dict (the shape of :meth:`Trial.to_dict`) as a frame's trial records are checked.

    Other backends use it on what they read, so every storage skips the same records.
    ``max_values`` bounds the values walked (a document that cannot share sub-lists, such as
    a BSON one, is bounded by its size instead).

    Raises:
        RecordError: it is not a trial Orchard writes; the message says what is wrong.
    """
    _check_trial(trial, _Budget(max_values))


def plain_fault(value: Any, max_values: int = _NODE_FLOOR) -> str | None:
    """Why ``value`` is not a plain value readers take in a trial's results, error or verdict (else None)."""
    try:
        _plain(value, _Budget(max_values))
    except RecordError as err:
        return str(err)
    return None
