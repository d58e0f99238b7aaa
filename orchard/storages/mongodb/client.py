"""Plumbing for :mod:`orchard.storages.mongodb`: clients, indexes, driver errors, documents.

Nothing here decides anything about trials; :class:`~orchard.storages.mongodb.MongoStorage`
does. This module opens a pymongo (or mongomock) client for a URI without
touching the network, creates the indexes the verbs rely on, turns driver
exceptions into :mod:`orchard.errors` leaves with credential-free messages,
and converts between :class:`~orchard.trial.Trial` and stored documents.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import pymongo
from bson.errors import BSONError
from bson.int64 import Int64
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.uri_parser import parse_uri

from orchard.errors import ConfigurationError, StorageCorruptedError, StorageError, StorageUnavailableError
from orchard.storages._uri import password_of, redact, split_options
from orchard.storages.mongodb.formats import check_format, format_fault, newer_release
from orchard.storages.pickled.records import RecordError, check_trial, experiment_fault
from orchard.trial import Trial, TrialStatus

__all__ = [
    "BATCH", "DEFAULT_DATABASE", "REPORT_COUNT", "STAMP", "TYPE_MISMATCH", "WAITING", "WAITING_ORDER",
    "Client", "break_first_waiting", "break_unreadable", "check_experiment", "doc_to_trial",
    "duplicate_key_field", "ensure_indexes", "insert_stamped", "is_mock", "name_anonymous_mock",
    "open_client", "readable_experiments", "readable_trials", "translate", "translated", "trial_to_doc",
    "unreadable", "unreadable_experiment", "version_of",
]

log = logging.getLogger(__name__)

#: Database used when the URI names none.
DEFAULT_DATABASE = "orchard"

#: Client options applied unless the URI sets them: fail fast when the server is down; give up on a
#: reply after 20 s, so a server frozen with its connections open is an outage the caller rides out
#: on any pymongo (a call tries up to 3 times; the slowest reply measured, a count of 5,000 trials
#: on the SecantusDB test server, took 9 s; ``timeoutMS`` in the URI replaces it); and
#: acknowledge a write only once a majority of the replica set has it in its journal, so an
#: acknowledged result survives a failover and a crash of the server (``w=majority`` is plain
#: ``w=1`` on a standalone server, whose journal is otherwise written every 100 ms).
_CLIENT_DEFAULTS: dict[str, int | str | bool] = {
    "serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000, "socketTimeoutMS": 20000, "w": "majority",
    "journal": True,
}

#: Server codes meaning "who you are" or "what you may do" was refused.
_AUTH_CODES = frozenset({11, 13, 18})  # UserNotFound, Unauthorized, AuthenticationFailed

Client = Any  # pymongo.MongoClient or mongomock.MongoClient (mongomock ships no type hints)

_mock_clients: dict[str, Any] = {}
_mock_lock = threading.Lock()  # guards these two
_indexed: set[tuple[int, str, str]] = set()  # (pid, uri, collection) whose indexes this process ensured

#: Documents per reply of a read of many trials (the default first batch is 101: a round trip more).
BATCH = 1000

#: The update operator that stamps a write with the server's date (a BSON date: millisecond
#: resolution, and range queries on it work on every server and in mongomock).
STAMP: dict[str, Any] = {"$currentDate": {"mtime": True}}

#: Waiting trials, in the order they are reserved: interrupted first (it sorts first), then the oldest.
WAITING = {"status": {"$in": [TrialStatus.INTERRUPTED.value, TrialStatus.NEW.value]}}
WAITING_ORDER = [("status", 1), ("submit_time", 1)]

#: The server's code for an update operator meeting a field of another type (``$inc`` on text).
TYPE_MISMATCH = 14
_UNDEFINED_VARIABLE = 17276  # an aggregation variable the server does not know (``$$NOW`` before 4.2)


# -- opening ------------------------------------------------------------------


def name_anonymous_mock(uri: str) -> str:
    """Give ``mongomock://`` a unique name, so the storage (and its pickles) see one database."""
    if uri.rstrip("/").lower() == "mongomock:":
        return f"mongomock://anonymous-{uuid.uuid4().hex[:12]}"
    return uri


def version_of(doc: Mapping[str, Any]) -> int:
    """How many writes the trial document has had (1 for a version Orchard never writes)."""
    return version if type(version := doc.get("version", 1)) is int else 1


def is_mock(uri: str) -> bool:
    """Whether ``uri`` names an in-process mongomock database."""
    return uri.lower().startswith("mongomock://")


def open_client(uri: str) -> tuple[Client, str]:
    """Return a client for ``uri`` and the database name; never touches the network.

    Raises:
        ConfigurationError: the URI is malformed or has invalid options.
    """
    if is_mock(uri):
        return _mock_client(uri)
    options = split_options(uri)[1]
    given = {key.lower() for key in options}
    if any(key.lower() == "w" and str(value) == "0" for key, value in options.items()):
        given.add("journal")  # refused below with its own reason, not pymongo's about the journal
    if "timeoutms" in given:
        given.add("sockettimeoutms")  # the URI's bound on a whole operation replaces the one on a reply
    defaults = {k: v for k, v in _CLIENT_DEFAULTS.items() if k.lower() not in given}
    try:
        if uri.lower().startswith("mongodb://"):  # strict: typos in options raise instead of warning
            parse_uri(uri)  # (not for +srv, whose parsing resolves DNS; the client only warns there)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, connect=False, **defaults  # type: ignore[arg-type]
        )
        name = client.get_default_database(DEFAULT_DATABASE).name
    except (PyMongoConfigurationError, ValueError, TypeError) as err:
        raise ConfigurationError(
            f"invalid MongoDB URI {redact(uri)!r}: {scrub(str(err), uri)}; expected "
            "mongodb://[user:pass@]host[:port]/dbname[?options] or mongodb+srv://…"
        ) from err
    if not client.write_concern.acknowledged:  # w=0: every conditional write would answer nothing
        raise ConfigurationError(f"MongoDB URI {redact(uri)!r} sets w=0: unacknowledged writes cannot tell whether a "
                                 "reservation or a result was stored; remove w=0 (Orchard uses w=majority) or set w=1")
    return client, name


def _mock_client(uri: str) -> tuple[Client, str]:
    """The process-wide mongomock client for ``mongomock://NAME[/DB]``."""
    try:
        import mongomock  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigurationError(
            "storage mongomock:// needs the mongomock package, which is not installed; "
            "pip install mongomock (it is in orchard-hpo[test])"
        ) from None

    rest = uri.split("://", 1)[1].split("?", 1)[0]
    name, _, database = rest.partition("/")
    with _mock_lock:
        client = _mock_clients.setdefault(name, mongomock.MongoClient())
    return client, urllib.parse.unquote(database) or DEFAULT_DATABASE


_INDEXES = {
    # one experiment per name: only creating an experiment relies on it
    "experiments": [pymongo.IndexModel("name", unique=True, name="name_unique")],
    "trials": [
        # reserve (waiting trials oldest first), fetch by status, count_trials
        pymongo.IndexModel([("experiment", 1), ("status", 1), ("submit_time", 1)],
                           name="experiment_status_submit"),
        # fetch_changes: trials written since a server stamp (orchard.storages.mongodb.changes)
        pymongo.IndexModel([("experiment", 1), ("mtime", 1)], name="experiment_mtime"),
        pymongo.IndexModel([("experiment", 1), ("_id", 1)], name="experiment_id"),  # changes.EVERY_TRIAL
        # budget slots (see orchard.storages.mongodb.slots): one per non-broken trial
        pymongo.IndexModel("slot", name="slot_unique", unique=True, sparse=True),
    ],
}


def ensure_indexes(db: Any, uri: str, collection: str = "trials", again: bool = False) -> None:
    """Create the indexes the verbs on ``collection`` rely on: one round trip, once per process, URI and
    collection (``again``: once more, the collection was dropped and made anew since). The trials'
    indexes are ensured before any verb; the experiments' unique name only before an
    experiment is created (the one verb that relies on it), so joining an experiment costs one.
    """
    key = (os.getpid(), uri, collection)
    with _mock_lock:
        if key in _indexed and not again:
            return
    try:
        db[collection].create_indexes(_INDEXES[collection])
    except DuplicateKeyError as err:  # written while the index was dropped, or by another program
        raise _sharing(db[collection], "name" if collection == "experiments" else "slot", uri) from err
    with _mock_lock:
        _indexed.add(key)


def _sharing(documents: Any, field: str, uri: str) -> StorageCorruptedError:  # what a unique index refuses
    shared = next(documents.aggregate([{"$match": {field: {"$exists": True}}}, {"$group": {
        "_id": f"${field}", "ids": {"$push": "$_id"}}}, {"$match": {"ids.1": {"$exists": True}}}]), None)
    value, ids = (shared["_id"], shared["ids"]) if shared else ("?", [])
    return StorageCorruptedError(
        f"MongoDB at {redact(uri)}: documents {', '.join(map(repr, ids[:5]))} of collection "
        f"{documents.name!r} share the {field} {value!r}, so its unique index cannot be built and Orchard "
        "cannot run there (the index was dropped while Orchard wrote, or another program wrote them): "
        "keep one, delete the others by hand")


# -- errors -------------------------------------------------------------------


def scrub(text: str, uri: str) -> str:
    """Remove the URI's password (plain or percent-encoded) from ``text``."""
    text = redact(text)
    password = password_of(uri)
    for secret in sorted({password, urllib.parse.unquote(password)} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _detail(err: BaseException, uri: str) -> str:  # a server's error by its errmsg, not the whole reply
    reply = err.details if isinstance(err, OperationFailure) and isinstance(err.details, Mapping) else {}
    first_line = (str(reply.get("errmsg") or err).strip().splitlines() or [type(err).__name__])[0]
    return scrub(first_line[:300], uri)


def translate(err: PyMongoError | BSONError | UnicodeEncodeError, uri: str, action: str,
              answered: bool = False, mongo: Client | None = None) -> StorageError:
    """Return the :mod:`orchard.errors` leaf for a driver error raised while doing ``action``.

    ``answered``: the server had answered this storage before; losing it now is an outage
    (:attr:`StorageUnavailableError.reached`), as is a connection lost in the middle of a call.
    ``mongo``: the client that raised it; its driver drops each host answering as no member of replicaSet.
    """
    where, detail = redact(uri), _detail(err, uri)
    if isinstance(err, OperationFailure) and err.code in _AUTH_CODES:
        return StorageUnavailableError(
            f"MongoDB at {where} refused to {action}: {detail}; check the user name, password "
            "and authSource in the URI, and that the user may read and write the database"
        )
    if isinstance(err, ConnectionFailure):  # includes ServerSelectionTimeoutError, NetworkTimeout
        midway = isinstance(err, AutoReconnect) and not isinstance(err, ServerSelectionTimeoutError)
        return _unreachable(err, uri, action, reached=answered or midway, mongo=mongo)
    if isinstance(err, PyMongoConfigurationError):  # a mongodb+srv:// URI's DNS lookup, by the first call
        return StorageUnavailableError(
            f"cannot find MongoDB at {where} to {action}: {detail.rstrip('.')}; check the host name in "
            "the URI (a mongodb+srv:// host needs a DNS SRV record _mongodb._tcp.HOST) and this machine's "
            "DNS",
            reached=answered)
    if isinstance(err, (BSONError, UnicodeEncodeError)):  # the driver's text is UTF-8: no lone surrogate
        return StorageError(f"cannot {action} in MongoDB at {where}: a value is not storable ({detail})")
    if isinstance(err, OperationFailure) and err.code == _UNDEFINED_VARIABLE:  # $$NOW: the change feed's reads
        return StorageError(f"MongoDB at {where} failed to {action}: {detail}; Orchard needs MongoDB 4.2 or later")
    return StorageError(f"MongoDB at {where} failed to {action}: {detail}")


def _unreachable(err: ConnectionFailure, uri: str, action: str, reached: bool,
                 mongo: Client | None = None) -> StorageUnavailableError:
    """One line naming the hosts, the timeout and what to check; the driver's topology dump goes to
    the debug log (``--debug``), not into the message."""
    log.debug("MongoDB driver error while trying to %s: %s", action, scrub(str(err), uri))
    options = {key.lower(): value for key, value in split_options(uri)[1].items()}
    timeout_ms = options.get("serverselectiontimeoutms", _CLIENT_DEFAULTS["serverSelectionTimeoutMS"])
    hosts = redact(split_options(uri)[0]).split("://", 1)[-1].split("/", 1)[0]
    if "replicaset" in options and isinstance(err, ServerSelectionTimeoutError) and isinstance(
            mongo, pymongo.MongoClient) and not mongo.topology_description.server_descriptions():
        return StorageUnavailableError(
            f"MongoDB at {hosts} answered, but not as a member of replica set {options['replicaset']!r} "
            f"(the URI's replicaSet) when trying to {action}; give the set's name (rs.status() shows it), "
            "or remove replicaSet for a standalone server", reached=reached)
    if reached:
        return StorageUnavailableError(
            f"lost MongoDB at {hosts} while trying to {action}: it had answered and cannot be reached now "
            "(a restart, a failover, the network?); --debug shows the driver's details", reached=True)
    client = mongo if isinstance(mongo, pymongo.MongoClient) else None
    tries = client.topology_description.server_descriptions().values() if client is not None else ()
    connect_ms = options.get("connecttimeoutms", _CLIENT_DEFAULTS["connectTimeoutMS"])  # per try
    knob = (f"raise connectTimeoutMS (each try gave up after {float(connect_ms) / 1000:g} s: a slow server?)"
            if any(isinstance(s.error, NetworkTimeout) for s in tries) else "raise serverSelectionTimeoutMS")
    return StorageUnavailableError(
        f"cannot reach MongoDB at {hosts} to {action} (no answer within {float(timeout_ms) / 1000:g} s); "
        "check that mongod is running there and reachable from this host (port, firewall, TLS), "
        f"or {knob} in the URI; --debug shows the driver's details"
    )


class _Located(Protocol):
    uri: str
    answered: bool  # a call of this handle has succeeded (set by the decorator below)
    _client: Client | None  # its driver's client, if connected


_S = TypeVar("_S", bound=_Located)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def translated(action: str) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    """Decorate a storage verb so that driver errors it raises become :mod:`orchard.errors` leaves."""

    def decorate(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(method)
        def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                result = method(self, *args, **kwargs)
            except (PyMongoError, BSONError, UnicodeEncodeError) as err:
                raise translate(err, self.uri, action, self.answered, self._client) from err
            self.answered = True
            return result

        return wrapper

    return decorate


def duplicate_key_field(err: DuplicateKeyError) -> str | None:
    """The field whose unique index ``err`` hit (``"_id"``, ``"slot"``, ``"name"``), if the server says.

    MongoDB (and SecantusDB) report the index's ``keyPattern``; mongomock does
    not, and then ``None`` is returned and the caller must look.
    """
    pattern = (err.details or {}).get("keyPattern") or {}
    fields = [field for field in pattern if field != "experiment"]
    return fields[0] if fields else None


# -- documents ----------------------------------------------------------------


#: Storage-only field: how many reports a trial holds (reports are conditional on it; absent means 0).
REPORT_COUNT = "report_count"


def trial_to_doc(trial: Trial) -> dict[str, Any]:
    """The stored form of ``trial``: its id as ``_id``, plus its version (the server stamps ``mtime``)."""
    doc = trial.to_dict()
    doc["_id"] = doc.pop("id")
    doc["version"] = 1
    doc[REPORT_COUNT] = len(trial.reports)
    return doc


def break_unreadable(trials: Any, doc: Mapping[str, Any], holder: Mapping[str, Any], why: str, now: float,
                     uri: str) -> bool:
    """Mark broken the trial of ``doc``, which holds values Orchard never writes, and say so.

    Only ``$set``: every other write increments ``version``, which the server refuses on a
    version another program stored as text. ``holder`` narrows the update (the worker that just
    reserved it, or a waiting status). Returns whether it matched.
    """
    log.warning("trial %r in MongoDB at %s is not one Orchard writes (%s); marked broken instead of "
                "evaluated", doc["_id"], redact(uri), why)
    broken = {"status": TrialStatus.BROKEN.value, "end_time": now, "version": version_of(doc) + 1,
              "error": {"type": "UnreadableTrial", "message": f"holds values Orchard never writes: {why}"}}
    done = trials.update_one({"_id": doc["_id"], **holder}, {"$set": broken, "$unset": {"slot": ""}, **STAMP})
    return bool(done.matched_count)


def break_first_waiting(trials: Any, experiment_id: str, now: float, uri: str) -> bool:
    """Break the waiting trial a reservation refused by :data:`TYPE_MISMATCH` was about to take.

    Returns whether one was broken (``False``: none waits any more, or it changed meanwhile).
    """
    query = {"experiment": experiment_id, **WAITING}
    doc = trials.find_one(query, sort=WAITING_ORDER)
    if doc is None:
        return False
    why = unreadable(doc) or "a field of a type the server cannot update"
    return break_unreadable(trials, doc, {**WAITING, "version": doc.get("version")}, why, now, uri)


def insert_stamped(trials: Any, doc: dict[str, Any]) -> None:
    """Insert ``doc`` with ``mtime`` stamped by the server, like every update.

    An upsert whose filter can never match an existing trial: an insert
    cannot use ``$currentDate``. A trial with the same ``_id`` makes it fail
    with :class:`~pymongo.errors.DuplicateKeyError`, as ``insert_one`` would.
    """
    fields = {key: value for key, value in doc.items() if key not in ("_id", "mtime")}
    trials.update_one(
        {"_id": doc["_id"], "version": {"$exists": False}},
        {"$setOnInsert": fields, "$currentDate": {"mtime": True}},
        upsert=True,
    )


_BSON_VALUES = 16 * 2**20  # a BSON document (16 MiB at most) shares no sub-list: its size bounds the walk
_STORAGE_ONLY = frozenset({"_id", "mtime", "version", "slot", REPORT_COUNT})
_named: set[tuple[str, str]] = set()  # (uri, trial id) of unreadable trials this process has named


def unreadable(doc: dict[str, Any]) -> str | None:
    """Why ``doc`` holds a trial Orchard never writes (one a reader cannot handle), or ``None``.

    The checks are the pickle log's (:func:`orchard.storages.pickled.records.check_trial`):
    a document written by another program may hold a trial error that is a list, a
    param that is a list or a ``Decimal128``, an int beyond 64 bits (mongomock).
    First, the ints the driver decoded as ``bson.Int64`` (every int the server keeps
    in 64 bits: beyond 32 bits, such as a seed of ``randint(0, 2**32)``) are made
    plain ints in ``doc`` itself, as Orchard wrote them and as readers take them.
    """
    _plain_ints(doc)
    for counter in ("version", REPORT_COUNT):  # every write increments them: the server refuses text
        if counter in doc and type(doc[counter]) is not int:
            return f"field {counter!r} is {type(doc[counter]).__name__}"
    data = {key: value for key, value in doc.items() if key not in _STORAGE_ONLY}
    data["id"] = doc.get("_id")
    try:
        check_trial(data, _BSON_VALUES)
    except RecordError as err:
        return str(err)
    return None


def _plain_ints(value: Any) -> Any:
    """``value`` with every ``Int64`` in it replaced by its plain int (lists and dicts changed in place)."""
    kind = type(value)
    if kind is Int64:
        return int(value)
    if kind is dict:
        for key, item in value.items():
            if type(item) in _NESTED:
                value[key] = _plain_ints(item)
    elif kind is list:
        for index, item in enumerate(value):
            if type(item) in _NESTED:
                value[index] = _plain_ints(item)
    return value


_NESTED = frozenset({Int64, dict, list})  # what _plain_ints looks into or replaces


def doc_to_trial(doc: dict[str, Any], uri: str = "") -> Trial:
    """The trial stored in ``doc`` (storage-only fields such as ``slot`` are dropped).

    Raises:
        StorageCorruptedError: ``doc`` holds values Orchard never writes (see :func:`unreadable`).
    """
    why = unreadable(doc)
    if why is not None:
        raise StorageCorruptedError(
            f"trial {doc.get('_id')!r} in MongoDB at {redact(uri) or 'this database'} is not one Orchard "
            f"writes ({why}); written by another program? Delete or fix that document")
    return _to_trial(doc)


def _to_trial(doc: dict[str, Any]) -> Trial:
    data = {key: value for key, value in doc.items() if key not in _STORAGE_ONLY}
    data["id"] = doc["_id"]
    return Trial.from_dict(data)


def readable_trials(docs: Iterable[dict[str, Any]], uri: str) -> list[Trial]:
    """The trials of ``docs``, skipping (and naming once, in a warning) those :func:`unreadable` refuses."""
    trials = []
    for doc in docs:
        why = unreadable(doc)
        if why is None:
            trials.append(_to_trial(doc))
        elif (uri, str(doc.get("_id"))) not in _named:
            _named.add((uri, str(doc.get("_id"))))
            log.warning("skipped trial %r in MongoDB at %s: it is not one Orchard writes (%s); written by "
                        "another program? Delete or fix that document", doc.get("_id"), redact(uri), why)
    return trials


def unreadable_experiment(doc: Mapping[str, Any]) -> str | None:
    """Why ``doc`` is not an experiment Orchard writes (a field missing or of another type), or ``None``: the
    checks of the pickle log (:func:`orchard.storages.pickled.records.experiment_fault`), and of format."""
    return experiment_fault(doc, "_id") or format_fault(doc)


def check_experiment(doc: Mapping[str, Any], uri: str) -> None:
    """Raise unless ``doc`` is an experiment Orchard writes.

    Raises:
        StorageCorruptedError: it is not (:func:`unreadable_experiment`), or a newer release wrote it.
    """
    why = unreadable_experiment(doc)
    if why is not None:
        raise StorageCorruptedError(
            f"experiment {doc.get('name')!r} (id {doc.get('_id')!r}) in MongoDB at {redact(uri)} is not one "
            f"Orchard writes ({why}); written by another program? Delete or fix that document")
    check_format(doc, uri)


def readable_experiments(docs: Iterable[dict[str, Any]], uri: str) -> list[dict[str, Any]]:
    """The documents of ``docs`` holding an experiment this release reads, skipping (and naming once) the
    others: another program's, and a newer release's (one must not stop ``orchard list`` of the others)."""
    kept = []
    for doc in docs:
        damage = unreadable_experiment(doc)
        why = newer_release(doc) if damage is None else (f"it is not one Orchard writes ({damage}); written "
                                                         "by another program? Delete or fix that document")
        if why is None:
            kept.append(doc)
        elif (uri, repr(doc.get("_id"))) not in _named:
            _named.add((uri, repr(doc.get("_id"))))
            log.warning("skipped experiment %r (id %r) in MongoDB at %s: %s", doc.get("name"), doc.get("_id"),
                        redact(uri), why)
    return kept
