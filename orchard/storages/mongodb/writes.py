"""A trial's transitions as MongoDB writes: each :class:`orchard.trial.Change` is one conditional update.

:func:`expected` is the filter that matches the trial only in the state the
change requires (its statuses, its owner, the fields it expects), and
:func:`update` the update document that applies it, stamped by the server
(``mtime``, read by :mod:`orchard.storages.mongodb.changes`) and counted
(``version``). A write whose filter matches nothing changed nothing: the
storage then reads the trial to say why (:meth:`orchard.trial.Change.refusal`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import bson
from bson.errors import BSONError

from orchard import trial as transitions
from orchard.errors import ConfigurationError, OrchardError, StorageError
from orchard.storages.base import finishes
from orchard.storages._uri import redact
from orchard.storages.mongodb.client import REPORT_COUNT, STAMP, check_experiment, doc_to_trial, unreadable
from orchard.storages.pickled.records import MAX_DEPTH, plain_fault
from orchard.terminal import is_utf8, storable_text
from orchard.trial import Change, Trial, TrialStatus

__all__ = ["config_fields", "config_of", "expected", "finish_waiting", "refuse_unreadable", "report_refusal",
           "restorable", "stored_paths", "swap_config", "took_effect", "update"]

_BSON_VALUES = 2**24  # values one document (16 MiB at most) can hold: the walk's bound
_CALLERS_VALUES = ("results", "error", "verdict")  # the fields a transition writes with the caller's values


def expected(trial_id: str, change: Change) -> dict[str, Any]:
    """The filter matching trial ``trial_id`` only in the state ``change`` requires."""
    query: dict[str, Any] = {"_id": trial_id, "status": {"$in": sorted(s.value for s in change.before)}}
    if change.owner is not None:
        query["worker"] = change.owner
    for name, value in change.expects.items():
        query[name] = {"$in": [0, None]} if name == "attempts" and value == 0 else value  # None: stored before attempts
    for name, count in change.lengths.items():  # only reports: counted in a field of their own
        assert name == "reports", name
        query[REPORT_COUNT] = {"$in": [0, None]} if count == 0 else count  # None: stored before reports
    return query


def update(change: Change) -> dict[str, Any]:
    """The update applying ``change``; a trial that breaks frees its unit of budget in it.

    Raises:
        StorageError: it would store a value readers skip (see :func:`refuse_unreadable`).
    """
    for name in _CALLERS_VALUES:
        why = plain_fault(change.sets.get(name), _BSON_VALUES)
        if why is not None:
            raise _unstorable(f"{why} in the trial's {name}")
    fields = _stored_sets(change)
    if "reports" in fields:
        fields[REPORT_COUNT] = len(fields["reports"])
    written: dict[str, Any] = {"$set": fields, "$inc": {**dict(change.adds), "version": 1}, **STAMP}
    if change.sets.get("status") is TrialStatus.BROKEN:
        written["$unset"] = {"slot": ""}
    if change.appends:
        written["$push"] = {name: list(item) for name, item in change.appends.items()}
        written["$inc"][REPORT_COUNT] = 1
    return written


def _stored_sets(change: Change) -> dict[str, Any]:
    """The fields ``change`` sets as MongoDB stores them: statuses as text, and the text in the caller's
    values that is no UTF-8 (lone surrogates: a script reporting ``os.getcwd()`` in a folder named
    ``b"x\\xff"``) with those bytes written ``\\xff``, as the recorded command is: the driver refused the
    whole result."""
    return {name: value.value if isinstance(value, TrialStatus) else
            _utf8_texts(value) if name in _CALLERS_VALUES else value for name, value in change.sets.items()}


def _utf8_texts(value: Any) -> Any:
    """``value`` (a plain value: :func:`update` checked it) with each text, key or value, made UTF-8."""
    if isinstance(value, str):
        return value if is_utf8(value) else storable_text(value)
    if isinstance(value, list):
        return [_utf8_texts(item) for item in value]
    if isinstance(value, dict):
        return {_utf8_texts(key): _utf8_texts(item) for key, item in value.items()}
    return value


def took_effect(doc: Mapping[str, Any], trial: Trial, change: Change) -> bool:
    """Whether ``doc`` (read as ``trial``) shows ``change`` applied by its owner.

    Every field it sets holds the value set (but the heartbeat a report set, which the worker's
    beats overwrite while it waits for the retry), and each item it appends is the last one, right
    after the items it was conditional on (a report). The driver retries a write whose reply
    was lost; a server that does not recognise the retry (restarted meanwhile) applies it
    again, and it meets its own effect: that is the write's success, not a refusal.
    """
    stored = {key: value for key, value in _stored_sets(change).items()
              if not (change.appends and key == "heartbeat")}  # a report's: the beats since overwrite it
    if change.owner is None or doc.get("worker") != change.owner or any(doc.get(k) != v for k, v in stored.items()):
        return False
    return not change.appends or trial.status in change.before and all(
        len(items := getattr(trial, name)) == change.lengths.get(name, -1) + 1 and items[-1] == item
        for name, item in change.appends.items())


def report_refusal(trial_id: str, seen: Mapping[str, Any] | None, worker: str,
                   where: str) -> OrchardError | None:
    """Why ``worker`` may not report on the trial ``seen`` (its status and worker), checked before the step.

    :func:`orchard.trial.held_by`'s rule, on the two fields read. A worker that lost the trial
    hears so, not that its step is not after the next attempt's reports.
    """
    return transitions.held_by(worker).seen_refusal(trial_id, seen, where)


def finish_waiting(trials: Any, restored: Trial, doc: Mapping[str, Any]) -> bool:
    """Store ``doc``, the stored form of a dump's ``restored`` trial, over the trial of its id if
    :func:`~orchard.storages.base.finishes` says it brings it up to date; whether it did.

    Conditional on the version read: a worker that reserves the trial meanwhile keeps it. The
    stored trial's unit of budget (its ``slot``) stays with it.
    """
    stored = trials.find_one({"_id": doc["_id"]})
    if stored is None or not finishes(doc_to_trial(stored), restored):
        return False
    fields = {name: value for name, value in doc.items() if name not in ("_id", "version")}
    done = trials.update_one({"_id": doc["_id"], "version": stored.get("version")},
                             {"$set": fields, "$inc": {"version": 1}, **STAMP})
    return bool(done.matched_count)


def config_fields(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The ``$set`` of an experiment's ``changes`` (top-level config keys), their names checked.

    Raises:
        ConfigurationError: a name holds '.' or starts with '$' (MongoDB would read a path or an operator).
    """
    bad = [key for key in changes if "." in key or key.startswith("$")]
    if bad:
        raise ConfigurationError(
            f"experiment option names {bad!r} contain '.' or start with '$'; rename them")
    return {f"config.{key}": value for key, value in changes.items()}


#: Config keys holding a folder path, which may be no UTF-8 text (a folder named b"x\xff").
_PATHS = ("working_dir",)


def stored_paths(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each folder path that is no UTF-8 text stored as its bytes (BSON binary).

    A folder named in Latin-1 (``b"x\\xff"``) reaches Python as ``'x\\udcff'``; MongoDB stores UTF-8 text
    only, and every hunt started in such a folder (its default ``working_dir`` under it) stopped on an
    ``unexpected UnicodeEncodeError``. :func:`config_of` gives the text back.
    """
    stored = dict(config)
    for key in _PATHS:
        if isinstance(stored.get(key), str) and not is_utf8(stored[key]):
            stored[key] = os.fsencode(stored[key])
    return stored


def config_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the experiment document ``doc``, each folder path :func:`stored_paths` stored as bytes
    as its text again."""
    read = dict(doc.get("config") or {})
    for key in _PATHS:
        if isinstance(read.get(key), bytes):
            read[key] = os.fsdecode(read[key])
    return read


def swap_config(experiments: Any, experiment_id: str, key: str, expected: Any, value: Any, uri: str
                ) -> bool | None:
    """Set the experiment's ``config.key`` to ``value`` iff it equals ``expected`` now; ``None``: none.

    Equal as on every backend (Python's ``==``): a query on the key itself would also match a
    stored list that merely holds ``expected``. The write is conditional on the whole config as
    read, so a change of any other key in between makes it read and compare again.
    """
    while True:
        doc = experiments.find_one({"_id": experiment_id})
        if doc is None:
            return None
        check_experiment(doc, uri)
        if (doc.get("config") or {}).get(key) != expected:
            return False
        as_read = {"_id": experiment_id, "config": doc.get("config")}
        if experiments.update_one(as_read, {"$set": {f"config.{key}": value}}).matched_count:
            return True


def refuse_unreadable(doc: Mapping[str, Any]) -> None:
    """Refuse a trial document readers would skip as one Orchard never writes, before it is inserted.

    A datetime, bytes, a set, an int beyond 64 bits or values nested beyond ``MAX_DEPTH`` would
    be stored (or refused by the driver with a raw error) and then skipped by every reader,
    while counted: the pickle writer refuses the same values (:func:`.pickled.records.check_batch`).

    Raises:
        StorageError: one line saying what is wrong.
    """
    why = unreadable(dict(doc))
    if why is not None:
        raise _unstorable(why)


def _unstorable(why: str) -> StorageError:
    return StorageError(f"cannot store {why} in MongoDB: only plain values (numbers, strings, booleans, "
                        f"None, lists and dicts of them, nested at most {MAX_DEPTH} deep; params flat) can "
                        "be stored; convert params, results and errors to those")


def restorable(docs: list[dict[str, Any]], experiment: str, uri: str) -> list[dict[str, Any]]:
    """``docs``, once each is known to hold a trial readers can read (a dump may have been edited by hand)
    and one MongoDB can store (a results key holding a NUL character, which a pickle file keeps, cannot be).

    Raises:
        StorageError: one does not (see :func:`unreadable`); it is named, and nothing is stored.
    """
    for doc in docs:  # the callers' values made UTF-8, as :func:`update` writes them
        why = unreadable(doc)
        why = None if why is None else f"it is not one Orchard writes ({why})"
        if why is None:
            doc.update({name: _utf8_texts(doc[name]) for name in _CALLERS_VALUES if name in doc})
            try:
                bson.encode(doc)
            except (BSONError, UnicodeEncodeError) as err:  # the driver refused it at its insert: the trials
                # before it were stored
                why = f"MongoDB cannot store it ({err})"
        if why is not None:
            raise StorageError(
                f"cannot restore trial {doc['_id']!r} into experiment {experiment!r} in MongoDB at "
                f"{redact(uri)}: {why}; nothing was restored. Fix or remove that trial in the dump")
    return docs
