"""``mongodb://``, ``mongodb+srv://`` and ``mongomock://``: trials in MongoDB via pymongo.

Two collections in the URI's database (default ``orchard``)::

    experiments  {_id: uuid hex, name (unique), config, created}
    trials       {_id: trial id, experiment, params, status, …Trial fields…,
                  mtime, version, slot (unless broken)}

``_id`` of a trial is :func:`orchard.space.trial_id` of its experiment and
params, so the primary key itself forbids duplicate params. Every write is one
single-document operation conditional on the state it expects; there are no
multi-document transactions, so nothing is left half-done when a process dies.

**Budget.** A trial holds a unit of budget iff it holds a ``slot``, unique
per experiment by a unique index; every trial holds one except broken ones,
and a registration with ``budget=M`` only claims slots below ``M``. The trial
and its slot are one insert; ``fail_trial`` frees the slot in the update that
marks the trial broken. Details in :mod:`orchard.storages._mongo_slots`.

**Change feed.** Every write stamps ``mtime`` (the writer's ``time.time()``)
and increments ``version``. See :meth:`MongoStorage.fetch_changes` for the
cursor and its guarantee.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from bson.errors import BSONError
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from orchard.errors import (
    ConfigurationError,
    DuplicateTrialError,
    ExperimentNotFoundError,
    ReservationLostError,
    StorageError,
    TrialNotFoundError,
)
from orchard.space import to_builtin, trial_id
from orchard.storages import _mongo
from orchard.storages._mongo_slots import BudgetSlots
from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.trial import Trial, TrialStatus

__all__ = ["MongoStorage"]

P = ParamSpec("P")
R = TypeVar("R")

_AFTER = ReturnDocument.AFTER
_WAITING = [TrialStatus.INTERRUPTED.value, TrialStatus.NEW.value]  # sorts interrupted first
_WINDOW_BATCH = 1000  # change windows usually fit one reply (the default first batch is 101 docs)


_Verb = Callable[Concatenate["MongoStorage", P], R]


def _translated(action: str) -> Callable[[_Verb[P, R]], _Verb[P, R]]:
    """Translate driver errors raised by a verb into :mod:`orchard.errors` leaves."""

    def decorate(method: _Verb[P, R]) -> _Verb[P, R]:
        @functools.wraps(method)
        def wrapper(self: MongoStorage, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(self, *args, **kwargs)
            except (PyMongoError, BSONError) as err:
                raise _mongo.translate(err, self.uri, action) from err

        return wrapper

    return decorate


@dataclasses.dataclass(frozen=True)
class _ChangeCursor:
    """Where a reader of :meth:`MongoStorage.fetch_changes` stands."""

    experiment: str
    since: float  # highest mtime returned so far
    checked: float  # when the reader's view was last checked against the server's counts
    seen: Mapping[str, tuple[int, str]]  # trial id -> (version, status) last returned


def _reopen(uri: str, change_margin: float, check_interval: float) -> MongoStorage:
    return MongoStorage(uri, change_margin=change_margin, check_interval=check_interval)


class MongoStorage(BaseStorage):
    """Experiments and trials in a MongoDB database, shared by any number of processes and hosts.

    Guarantees (beyond :class:`~orchard.storages.base.BaseStorage`'s):

    * Every write is one single-document atomic operation conditional on the
      state it expects (a verb may read first, or retry another candidate),
      so a process killed at any instant leaves nothing half-written, and
      there is no lock to leave held.
    * Exact budget through unique slots (see the module docstring): racing
      budgeted registrations never admit more than ``M`` non-broken trials.
    * Duplicate params are refused by the unique ``_id``, never by a local check.
    * Constructing or unpickling connects to nothing; the first verb connects
      (a fresh client after ``fork``). An unreachable server raises
      :class:`~orchard.errors.StorageUnavailableError` after
      ``serverSelectionTimeoutMS`` (default 5000, settable in the URI).
    * Credentials never appear in messages, ``repr`` or logs.

    ``mongomock://[NAME]`` uses an in-process mongomock database shared by
    every storage of this process opened with the same ``NAME``; it is for
    single-threaded tests only (mongomock is not atomic under threads).

    Args:
        uri: ``mongodb://[user:pass@]host[:port]/dbname[?options]``,
            ``mongodb+srv://…`` or ``mongomock://[NAME]``.
        change_margin: seconds :meth:`fetch_changes` looks back before the
            newest write it returned, to cover clock skew between writers and
            writes still in flight.
        check_interval: seconds between the count checks that make
            :meth:`fetch_changes` self-correcting.

    Raises:
        ConfigurationError: the URI is malformed.
    """

    def __init__(self, uri: str, *, change_margin: float = 5.0, check_interval: float = 10.0) -> None:
        self.uri = _mongo.name_anonymous_mock(uri)
        self._margin = change_margin
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._client, self._db_name = _mongo.open_client(self.uri)
        self._pid = os.getpid()
        self._indexed = False
        self._names: dict[str, str] = {}  # experiment id -> name, for ids known to exist
        self._slots = BudgetSlots()

    @classmethod
    def from_uri(cls, uri: str) -> MongoStorage:
        """Open the storage named by ``uri`` (no connection is made until first use)."""
        return cls(uri)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.uri, self._margin, self._check_interval))

    def close(self) -> None:
        """Close the connection pool; the next verb reconnects."""
        with self._lock:
            if self._client is not None and not self.uri.lower().startswith("mongomock://"):
                self._client.close()
            self._client = None

    # -- connection -------------------------------------------------------------

    def _db(self) -> Any:
        """The database, (re)connecting after ``close`` or in a forked child; indexes ensured."""
        if self._pid != os.getpid():  # forked: the parent's client and lock (maybe held) are not ours
            self._client, self._lock, self._pid = None, threading.Lock(), os.getpid()
        with self._lock:
            if self._client is None:
                self._client, self._db_name = _mongo.open_client(self.uri)
                self._indexed = False
            db = self._client[self._db_name]
            if not self._indexed:
                _mongo.ensure_indexes(db)
                self._indexed = True
            return db

    @property
    def _trials(self) -> Any:
        return self._db().trials

    def _stamp(
        self, changes: Mapping[str, Any], unset: Iterable[str] = (), inc: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """An update setting ``changes`` plus the write stamp every write carries."""
        update: dict[str, Any] = {
            "$set": {**changes, "mtime": self.now()},
            "$inc": {**(inc or {}), "version": 1},
        }
        if unset:
            update["$unset"] = {field: "" for field in unset}
        return update

    # -- experiments ------------------------------------------------------------

    @_translated("create an experiment")
    def create_experiment(self, name: str, config: Mapping[str, Any], created: float | None = None) -> str:
        fresh = {"_id": uuid.uuid4().hex, "config": to_builtin(dict(config)),
                 "created": self.now() if created is None else created}
        experiments = self._db().experiments
        for _ in range(3):
            try:
                doc = experiments.find_one_and_update(
                    {"name": name}, {"$setOnInsert": fresh}, upsert=True, return_document=_AFTER
                )
            except DuplicateKeyError:  # a racing process inserted the name first: read its record
                doc = experiments.find_one({"name": name})
            if doc is not None:
                self._names[doc["_id"]] = name
                return str(doc["_id"])
        raise StorageError(
            f"experiment {name!r} in {self.redacted_uri} was created and deleted repeatedly "
            "while this process tried to join it; try again"
        )

    @_translated("read an experiment")
    def get_experiment(self, name: str) -> ExperimentRecord | None:
        doc = self._db().experiments.find_one({"name": name})
        return None if doc is None else self._record(doc)

    @_translated("list experiments")
    def list_experiments(self) -> list[ExperimentRecord]:
        return [self._record(doc) for doc in self._db().experiments.find().sort("created", 1)]

    @_translated("update an experiment")
    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        bad = [key for key in changes if "." in key or key.startswith("$")]
        if bad:
            raise ConfigurationError(
                f"experiment option names {bad!r} contain '.' or start with '$'; rename them"
            )
        fields = {f"config.{key}": value for key, value in to_builtin(dict(changes)).items()}
        experiments = self._db().experiments
        if fields:
            doc = experiments.find_one_and_update(
                {"_id": experiment_id}, {"$set": fields}, return_document=_AFTER
            )
        else:
            doc = experiments.find_one({"_id": experiment_id})
        if doc is None:
            raise self._no_experiment(experiment_id)
        return self._record(doc)

    @_translated("delete an experiment")
    def delete_experiment(self, experiment_id: str) -> int:
        db = self._db()
        if db.experiments.find_one({"_id": experiment_id}, projection={"_id": 1}) is None:
            return 0
        deleted = db.trials.delete_many({"experiment": experiment_id}).deleted_count
        db.experiments.delete_one({"_id": experiment_id})
        self._names.pop(experiment_id, None)
        self._slots.forget(experiment_id)
        return int(deleted)

    def _record(self, doc: Mapping[str, Any]) -> ExperimentRecord:
        self._names[doc["_id"]] = doc["name"]
        return ExperimentRecord(doc["_id"], doc["name"], dict(doc.get("config") or {}), doc["created"])

    def _experiment_name(self, experiment_id: str) -> str:
        """The experiment's name; one read the first time an id is seen, then cached."""
        name = self._names.get(experiment_id)
        if name is None:
            doc = self._db().experiments.find_one({"_id": experiment_id}, projection={"name": 1})
            if doc is None:
                raise self._no_experiment(experiment_id)
            name = self._names[experiment_id] = doc["name"]
        return name

    def _no_experiment(self, experiment_id: str) -> ExperimentNotFoundError:
        return ExperimentNotFoundError(
            f"no experiment with id {experiment_id!r} in storage {self.redacted_uri}"
        )

    # -- trials: creation -------------------------------------------------------

    @_translated("register a trial")
    def register_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        *,
        worker: str | None = None,
        budget: int | None = None,
        parent: str | None = None,
    ) -> Trial:
        name = self._experiment_name(experiment_id)
        plain: dict[str, Any] = to_builtin(dict(params))
        now = self.now()
        trial = Trial(id=trial_id(experiment_id, plain), experiment=experiment_id, params=plain,
                      submit_time=now, parent=parent)
        if worker is not None:
            trial = dataclasses.replace(trial, status=TrialStatus.RESERVED, worker=worker,
                                        heartbeat=now, start_time=now, attempts=1)
        self._slots.insert(self._trials, _mongo.trial_to_doc(trial, now), budget, name)
        return trial

    @_translated("restore trials")
    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        name = self._experiment_name(experiment_id)
        added = 0
        for trial in trials:
            tid = trial_id(experiment_id, trial.params)
            fresh = dataclasses.replace(trial, id=tid, experiment=experiment_id)
            doc = _mongo.trial_to_doc(fresh, self.now())
            try:
                if fresh.status is TrialStatus.BROKEN:
                    self._trials.insert_one(doc)
                else:
                    self._slots.insert(self._trials, doc, None, name)
            except (DuplicateKeyError, DuplicateTrialError):
                continue
            added += 1
        return added

    # -- trials: the reservation lifecycle --------------------------------------

    @_translated("reserve a trial")
    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        now = self.now()
        doc = self._trials.find_one_and_update(
            {"experiment": experiment_id, "status": {"$in": _WAITING}},
            self._stamp({"status": TrialStatus.RESERVED.value, "worker": worker, "heartbeat": now,
                         "start_time": now, "end_time": None}, inc={"attempts": 1}),
            sort=[("status", 1), ("submit_time", 1)],
            return_document=_AFTER,
        )
        if doc is None:
            self._experiment_name(experiment_id)  # raise if the experiment does not exist
            return None
        return _mongo.doc_to_trial(doc)

    @_translated("record a heartbeat")
    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        update = self._stamp({"heartbeat": self.now()})
        result = self._trials.update_one(self._owned(trial_id, worker), update)
        if result.matched_count == 0:
            raise self._refusal(trial_id, worker)

    @_translated("complete a trial")
    def complete_trial(
        self, trial_id: str, worker: str, objective: float, results: Mapping[str, Any] | None = None
    ) -> Trial:
        now = self.now()
        return self._owned_update(trial_id, worker, self._stamp({
            "status": TrialStatus.COMPLETED.value, "objective": float(objective),
            "results": to_builtin(dict(results or {})), "end_time": now, "heartbeat": now,
        }))

    @_translated("mark a trial broken")
    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        now = self.now()
        return self._owned_update(trial_id, worker, self._stamp({
            "status": TrialStatus.BROKEN.value, "error": to_builtin(dict(error)),
            "end_time": now, "heartbeat": now,
        }, unset=["slot"]))  # frees its unit of budget in the same atomic update

    @_translated("release a trial")
    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        return self._owned_update(
            trial_id, worker, self._stamp({"status": TrialStatus.INTERRUPTED.value, "worker": None})
        )

    @_translated("release stale trials")
    def release_stale(self, experiment_id: str, timeout: float, now: float | None = None) -> list[Trial]:
        cutoff = (self.now() if now is None else now) - timeout
        trials = self._trials
        reserved = list(trials.find(  # few (about one per live worker): filter them here
            {"experiment": experiment_id, "status": TrialStatus.RESERVED.value},
            projection={"worker": 1, "heartbeat": 1},
        ))
        if not reserved:
            self._experiment_name(experiment_id)
        stale = [doc for doc in reserved if (doc.get("heartbeat") or 0.0) < cutoff]
        released = []
        for seen in stale:  # each conditional on the stale heartbeat: a late heartbeat wins cleanly
            doc = trials.find_one_and_update(
                {"_id": seen["_id"], "status": TrialStatus.RESERVED.value,
                 "worker": seen.get("worker"), "heartbeat": seen.get("heartbeat")},
                self._stamp({"status": TrialStatus.INTERRUPTED.value, "worker": None}),
                return_document=_AFTER,
            )
            if doc is not None:
                released.append(_mongo.doc_to_trial(doc))
        return released

    @staticmethod
    def _owned(trial_id: str, worker: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {"_id": trial_id, "status": TrialStatus.RESERVED.value}
        if worker is not None:
            query["worker"] = worker
        return query

    def _owned_update(self, trial_id: str, worker: str | None, update: Mapping[str, Any]) -> Trial:
        doc = self._trials.find_one_and_update(self._owned(trial_id, worker), update, return_document=_AFTER)
        if doc is None:
            raise self._refusal(trial_id, worker)
        return _mongo.doc_to_trial(doc)

    def _refusal(self, trial_id: str, worker: str | None) -> TrialNotFoundError | ReservationLostError:
        """Why a conditional write matched nothing: no such trial, or not reserved by ``worker``."""
        doc = self._trials.find_one({"_id": trial_id}, projection={"status": 1, "worker": 1})
        if doc is None:
            return TrialNotFoundError(f"no trial with id {trial_id!r} in storage {self.redacted_uri}")
        owner = f"owned by {doc['worker']}" if doc.get("worker") else "unowned"
        return ReservationLostError(
            f"trial {trial_id} is {doc['status']} and {owner}, not reserved by {worker or 'anyone'}; "
            "its reservation was released (stale heartbeat?) or taken by another worker, so this "
            "write was refused"
        )

    # -- trials: reading --------------------------------------------------------

    @_translated("read a trial")
    def get_trial(self, trial_id: str) -> Trial | None:
        doc = self._trials.find_one({"_id": trial_id})
        return None if doc is None else _mongo.doc_to_trial(doc)

    @_translated("fetch trials")
    def fetch_trials(
        self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None = None
    ) -> list[Trial]:
        query: dict[str, Any] = {"experiment": experiment_id}
        if statuses is not None:
            query["status"] = {"$in": [TrialStatus(s).value for s in statuses]}
        trials = [_mongo.doc_to_trial(doc) for doc in self._trials.find(query)]
        if not trials:
            self._experiment_name(experiment_id)
        return sorted(trials, key=lambda t: t.submit_time or 0.0)

    @_translated("count trials")
    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        counts = {status: 0 for status in TrialStatus}
        for row in self._trials.aggregate([
            {"$match": {"experiment": experiment_id}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ]):
            counts[TrialStatus(row["_id"])] = int(row["n"])
        if not any(counts.values()):
            self._experiment_name(experiment_id)
        return counts

    @_translated("fetch changed trials")
    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        """Return the trials written since ``cursor``, and the next cursor.

        Every write stamps the trial with its writer's clock (``mtime``) and
        bumps its ``version``. A call reads the trials whose ``mtime`` is at
        least the newest one already returned minus ``change_margin`` (an
        index range: the cost follows the recent writes, not the history) and
        returns those whose version the cursor has not seen.

        Guarantee: a write is returned by the first call made after it is
        visible, unless it became visible more than ``change_margin`` seconds
        after a write stamped later (writer clocks apart by more than the
        margin, or a write stalled in flight that long). Such a miss is
        repaired when the trial is written again, and at the latest by the
        next count check: every ``check_interval`` seconds the call first
        counts the trials per status on the server; if the reader's view then
        holds fewer trials, or fewer completed or broken ones (both only ever
        grow) than were counted, it returns every trial (a full resync).
        The window ends no later than the reader's own clock, so a writer
        whose clock runs ahead cannot hide the others' writes. Deleted trials
        are not reported. The cursor holds the version and status of each
        trial returned (memory, and a copy per call, grow with the experiment;
        no I/O does).
        """
        now = self.now()
        if not isinstance(cursor, _ChangeCursor) or cursor.experiment != experiment_id:
            return self._full_changes(experiment_id, now)
        counts = self.count_trials(experiment_id) if now - cursor.checked >= self._check_interval else None
        docs = list(self._trials.find(
            {"experiment": experiment_id, "mtime": {"$gte": cursor.since - self._margin}},
            batch_size=_WINDOW_BATCH,
        ))
        fresh = [d for d in docs if cursor.seen.get(d["_id"], (0, ""))[0] < d.get("version", 1)]
        seen = {**cursor.seen, **{d["_id"]: (d.get("version", 1), d["status"]) for d in fresh}}
        if counts is not None and _misses_writes(seen, counts):
            return self._full_changes(experiment_id, now)
        # a writer whose clock runs ahead must not push the window past everyone else's writes
        since = min(max([cursor.since, *(d.get("mtime", 0.0) for d in docs)]), now)
        checked = cursor.checked if counts is None else now
        return [_mongo.doc_to_trial(d) for d in fresh], _ChangeCursor(experiment_id, since, checked, seen)

    def _full_changes(self, experiment_id: str, now: float) -> tuple[list[Trial], _ChangeCursor]:
        docs = list(self._trials.find({"experiment": experiment_id}))
        if not docs:
            self._experiment_name(experiment_id)
        seen = {d["_id"]: (d.get("version", 1), d["status"]) for d in docs}
        since = min(max((d.get("mtime", 0.0) for d in docs), default=0.0), now)
        trials = sorted((_mongo.doc_to_trial(d) for d in docs), key=lambda t: t.submit_time or 0.0)
        return trials, _ChangeCursor(experiment_id, since, now, seen)


def _misses_writes(seen: Mapping[str, tuple[int, str]], counts: Mapping[TrialStatus, int]) -> bool:
    """Whether a view built after ``counts`` were taken lacks trials the counts prove exist."""
    if len(seen) < sum(counts.values()):
        return True
    held = {status: 0 for status in (TrialStatus.COMPLETED.value, TrialStatus.BROKEN.value)}
    for _, status in seen.values():
        if status in held:
            held[status] += 1
    return any(held[s.value] < counts[s] for s in (TrialStatus.COMPLETED, TrialStatus.BROKEN))
