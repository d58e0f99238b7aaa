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
    {"op": "trial", "trial": {"id": str, "experiment": str, "params": {str: SCALAR},
                              "status": a TrialStatus value, "results": {str: PLAIN}, ...}}
    {"op": "drop", "experiment": str}
    {"op": "fence", "at": int, "lock": str}     # first record of a frame written under a soft lock

PLAIN is None, bool, int, float, str, or lists and dicts (str keys) of PLAIN,
nested at most :data:`MAX_DEPTH` deep; SCALAR is a PLAIN that is not a list or dict.
"""

from __future__ import annotations

from typing import Any

from orchard.trial import TrialStatus

__all__ = ["MAX_DEPTH", "MAX_STRING", "RecordError", "check_batch"]

MAX_DEPTH = 32  # nesting of lists and dicts in configuration and results
MAX_STRING = 1 << 20  # characters in one string (a script's stderr tail is far shorter)
_NODE_FLOOR = 10_000  # nodes any frame may hold, beyond its size in bytes
_SCALARS = (bool, int, float, str, type(None))
_STATUSES = frozenset(status.value for status in TrialStatus)
_OPTIONAL_NUMBERS = ("objective", "heartbeat", "submit_time", "start_time", "end_time")


class RecordError(ValueError):
    """A record that is not one Orchard writes (its frame is damaged)."""


class _Budget:
    """Counts the nodes walked in one frame, so shared sub-lists cannot make the walk explode."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise RecordError("it holds more values than its size allows (nested shared lists?)")


def _plain(value: Any, budget: _Budget, depth: int = 0) -> None:
    budget.spend()
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING:
            raise RecordError(f"a string of {len(value)} characters")
        return
    if kind in _SCALARS:
        return
    if depth >= MAX_DEPTH:
        raise RecordError(f"values nested more than {MAX_DEPTH} deep")
    if kind is list:
        for item in value:
            _plain(item, budget, depth + 1)
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise RecordError(f"a dict key of type {type(key).__name__}")
            _plain(item, budget, depth + 1)
    else:
        raise RecordError(f"a value of type {kind.__name__}")


def _field(record: dict[str, Any], name: str, *kinds: type) -> Any:
    value = record.get(name)
    if type(value) not in kinds:
        raise RecordError(f"field {name!r} is {type(value).__name__}")
    return value


def _check_trial(trial: Any, budget: _Budget) -> None:
    if type(trial) is not dict:
        raise RecordError("a trial that is not a dict")
    _field(trial, "id", str)
    _field(trial, "experiment", str)
    if trial.get("status") not in _STATUSES:
        raise RecordError(f"unknown trial status {trial.get('status')!r}")
    params = _field(trial, "params", dict)
    for name, value in params.items():
        budget.spend()
        if type(name) is not str or type(value) not in _SCALARS:
            raise RecordError(f"param {name!r} is not a plain scalar (params must be flat)")
        if type(value) is str and len(value) > MAX_STRING:
            raise RecordError(f"param {name!r} is a string of {len(value)} characters")
    _plain(_field(trial, "results", dict), budget)
    _plain(_field(trial, "error", dict, type(None)), budget)
    for name in _OPTIONAL_NUMBERS:
        _field(trial, name, int, float, type(None))
    _field(trial, "attempts", int)
    _field(trial, "worker", str, type(None))
    _field(trial, "parent", str, type(None))


def _check_record(record: Any, budget: _Budget) -> None:
    budget.spend()
    if type(record) is not dict:
        raise RecordError("a record that is not a dict")
    op = record.get("op")
    if op == "trial":
        _check_trial(record.get("trial"), budget)
    elif op == "experiment":
        exp = _field(record, "record", dict)
        _field(exp, "id", str)
        _field(exp, "name", str)
        _field(exp, "created", int, float)
        _plain(_field(exp, "config", dict), budget)
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
    for position, record in enumerate(batch):
        _check_record(record, budget)
        if record["op"] == "fence" and position != 0:
            raise RecordError("a fence record that is not first in its frame")
