"""``mongodb://``, ``mongodb+srv://`` and ``mongomock://``: trials in MongoDB via pymongo.

Two collections in the URI's database (default ``orchard``)::

    experiments  {_id: uuid hex, name (unique), config, created, slots (the budget slot counter)}
    trials       {_id: trial id, experiment, params, status, …Trial fields…,
                  mtime, version, slot (unless broken)}

``_id`` of a trial is :func:`orchard.space.trial_id` of its experiment and
params, so the primary key itself forbids duplicate params. Every write is one
single-document operation conditional on the state it expects; there are no
multi-document transactions, so nothing is left half-done when a process dies
(each transition as a filter and an update: :mod:`orchard.storages.mongodb.writes`).

**Budget.** A trial holds a unit of budget iff it holds a ``slot``, unique
per experiment by a unique index; every trial holds one except broken ones,
and a registration with ``budget=M`` only claims slots below ``M``. The trial
and its slot are one insert; ``fail_trial`` frees the slot in the update that
marks the trial broken. Details in :mod:`orchard.storages.mongodb.slots`.

**Change feed.** Every write has the server stamp ``mtime`` and increments ``version``, which
:mod:`.changes` reads by (trial times are the clients': ``stamps_in_order``). **Lost leases:**
:meth:`MongoStorage.release_lost` takes a trial back only if it still holds the worker and heartbeat
an observer saw (:mod:`orchard.leases`). **Reports** are one write each, answered without the
reports (:mod:`.reports`); **counts** are those of the trials readers read (:mod:`.counts`).

**Durability.** Writes use ``w=majority`` and ``journal=true`` unless the URI sets them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import pymongo
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from orchard import trial as transitions
from orchard.errors import (
    DuplicateTrialError,
    ExperimentNotFoundError,
    ReservationLostError,
    StorageError,
    TrialNotFoundError,
)
from orchard.space import to_builtin, trial_id
from orchard.storages.base import BaseStorage, ExperimentRecord, new_experiment_id
from orchard.storages.mongodb import client, formats, writes
from orchard.storages.mongodb.changes import ChangeFeed, find_trials
from orchard.storages.mongodb.counts import count_by_status, count_unbudgeted
from orchard.storages.mongodb.reports import WITHOUT_REPORTS, KnownReports
from orchard.storages.mongodb.slots import insert_holding_slot, record_holding_slot
from orchard.storages.table import REMEMBERED
from orchard.storages.values import check_error, check_params
from orchard.trial import Lease, ReportValue, Trial, TrialStatus

__all__ = ["MongoStorage"]

log = logging.getLogger(__name__)

_AFTER, _translated = ReturnDocument.AFTER, client.translated


def _reopen(uri: str, change_margin: float, check_interval: float, answered: bool = False) -> MongoStorage:
    storage = MongoStorage(uri, change_margin=change_margin, check_interval=check_interval)
    storage.answered = answered  # a server that answered the process shipping the handle is not a wrong address
    return storage


def _close(mongo: client.Client) -> None:
    with pymongo.timeout(0.5):  # its endSessions, a courtesy (they expire), must not hold up an exit in an outage
        mongo.close()


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
            newest server stamp it returned, to cover writes still in flight.
        check_interval: seconds between the count checks that make
            :meth:`fetch_changes` self-correcting, with up to 8 workers holding
            trials; stretched with the fleet beyond (:mod:`orchard.storages.mongodb.changes`).

    Raises:
        ConfigurationError: the URI is malformed.
    """

    stamps_in_order = False  # each client stamps a trial's times before the server orders its write

    def __init__(self, uri: str, *, change_margin: float = 5.0, check_interval: float = 10.0) -> None:
        self.uri = client.name_anonymous_mock(uri)
        self.process_local = client.is_mock(self.uri)
        self._margin = change_margin
        self._check_interval = check_interval
        self._changes = ChangeFeed(change_margin, check_interval, uri=self.uri)
        self._lock = threading.Lock()
        self._client: client.Client | None = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._connect()
        self._pid = os.getpid()
        self._indexed = False
        self.answered = False  # whether a call has succeeded: losing the server is then an outage
        self._names: dict[str, str] = {}  # experiment id -> name, for ids known to exist
        self._filled: set[str] = set()  # ids of the experiments this handle saw hold a trial (:meth:`_found`)
        self._held: OrderedDict[str, str] = OrderedDict()  # the latest trials handed out reserved here -> experiment
        self._reports = KnownReports()  # the reports of the latest trials reported on here

    @classmethod
    def from_uri(cls, uri: str) -> MongoStorage:
        """Open the storage named by ``uri`` (no connection is made until first use)."""
        return cls(uri)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.uri, self._margin, self._check_interval, self.answered))

    def close(self) -> None:
        """Close the connection pool; the next verb reconnects.

        A storage never closed is closed when it is collected or the interpreter exits (after
        the trials an ask-and-tell script left are given back): pymongo warns of a client left open.
        """
        with self._lock:
            if self._closer is not None:
                self._closer()
            self._client = None

    # -- connection -------------------------------------------------------------

    def _connect(self) -> client.Client:
        mongo, self._db_name = client.open_client(self.uri)
        self._client, self._indexed = mongo, False
        if not client.is_mock(self.uri):  # a mongomock client is the process's, shared by its storages
            self._closer = weakref.finalize(self, _close, mongo)
        return mongo

    def _db(self) -> Any:
        """The database, (re)connecting after a close (also the one at exit) or in a forked child; indexes ensured."""
        if self._pid != os.getpid():  # forked: the parent's client and lock (maybe held) are not ours
            if self._closer is not None:
                self._closer.detach()
            self._client, self._lock, self._pid = None, threading.Lock(), os.getpid()
            self._reports = KnownReports()  # and its lock
        with self._lock:
            mongo = self._client
            if mongo is None or self._closer is not None and not self._closer.alive:
                mongo = self._connect()
            db = mongo[self._db_name]
            if not self._indexed:
                client.ensure_indexes(db, self.uri)
                self._indexed = True
            return db

    @property
    def _trials(self) -> Any:
        return self._db().trials

    # -- experiments ------------------------------------------------------------

    @_translated("create an experiment")
    def create_experiment(self, name: str, config: Mapping[str, Any], created: float | None = None,
                          keep_id: str | None = None) -> str:
        fresh = {"_id": new_experiment_id(keep_id), "config": writes.stored_paths(to_builtin(dict(config))),
                 "format": formats.FORMAT, "created": self.now() if created is None else created}
        db = self._db()
        client.ensure_indexes(db, self.uri, "experiments")  # the unique name settles racing creators
        experiments = db.experiments
        for _ in range(3):
            try:
                doc = experiments.find_one_and_update({"name": name}, {"$setOnInsert": fresh}, upsert=True,
                                                      return_document=_AFTER)
            except DuplicateKeyError:  # a racing process inserted the name first: read its record
                doc = experiments.find_one({"name": name})
                fresh["_id"] = uuid.uuid4().hex  # or another experiment holds keep_id: a new one
            if doc is not None:
                self._names[doc["_id"]] = name
                return str(doc["_id"])
        raise StorageError(f"experiment {name!r} in {self.redacted_uri} was created and deleted repeatedly "
                           "while this process tried to join it; try again")

    @_translated("read an experiment")
    def get_experiment(self, name: str) -> ExperimentRecord | None:
        doc = self._db().experiments.find_one({"name": name})
        return None if doc is None else self._record(doc)

    @_translated("list experiments")
    def list_experiments(self) -> list[ExperimentRecord]:
        docs = client.readable_experiments(self._db().experiments.find(), self.uri)
        return sorted((self._record(doc) for doc in docs), key=lambda record: record.created)

    @_translated("update an experiment")
    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        fields = writes.config_fields(writes.stored_paths(to_builtin(dict(changes))))
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

    @_translated("read an experiment")
    def experiment(self, experiment_id: str) -> ExperimentRecord:
        doc = self._db().experiments.find_one({"_id": experiment_id})
        if doc is None:
            raise self._no_experiment(experiment_id)
        return self._record(doc)

    @_translated("update an experiment")
    def swap_experiment(self, experiment_id: str, key: str, expected: Any, value: Any) -> bool:
        experiments = self._db().experiments
        swapped = writes.swap_config(experiments, experiment_id, key, expected, to_builtin(value), self.uri)
        if swapped is None:
            raise self._no_experiment(experiment_id)
        return swapped

    @_translated("delete an experiment")
    def delete_experiment(self, experiment_id: str) -> int:
        db = self._db()
        if db.experiments.find_one({"_id": experiment_id}, projection={"_id": 1}) is None:
            return 0
        deleted = db.trials.delete_many({"experiment": experiment_id}).deleted_count  # first: a crash leaves it empty
        db.experiments.delete_one({"_id": experiment_id})  # then trials registered meanwhile (refused after: .slots)
        deleted += db.trials.delete_many({"experiment": experiment_id}).deleted_count
        self._names.pop(experiment_id, None)
        self._filled.discard(experiment_id)
        return int(deleted)

    def _record(self, doc: Mapping[str, Any]) -> ExperimentRecord:
        client.check_experiment(doc, self.uri)
        self._names[doc["_id"]] = doc["name"]
        return ExperimentRecord(doc["_id"], doc["name"], writes.config_of(doc), doc["created"])

    def _experiment_name(self, experiment_id: str, cached: bool = True) -> str:
        """The experiment's name; one read the first time an id is seen, then cached (``cached=False``: read
        again, for a reader that must notice an experiment another process deleted)."""
        name = self._names.get(experiment_id) if cached else None
        if name is None:
            doc = self._db().experiments.find_one({"_id": experiment_id})
            if doc is None:
                raise self._no_experiment(experiment_id)
            name = self._record(doc).name
        return name

    def _found(self, experiment_id: str, any_trial: bool) -> None:
        """A read found none of its trials: read the experiment again (deleted by another process?), unless
        this handle knows it exists and never saw it hold a trial (a joiner's first looks read no more)."""
        if any_trial:
            self._filled.add(experiment_id)
        elif experiment_id in self._filled or experiment_id not in self._names:
            self._experiment_name(experiment_id, cached=False)

    def _no_experiment(self, experiment_id: str) -> ExperimentNotFoundError:
        known, where = self._names.pop(experiment_id, None), self.redacted_uri  # known: deleted since
        gone = f": {known!r} was deleted (orchard db rm?) while this process was using it" if known else ""
        return ExperimentNotFoundError(f"no experiment with id {experiment_id!r} in storage {where}{gone}")

    # -- trials: creation -------------------------------------------------------

    @_translated("register a trial")
    def register_trial(self, experiment_id: str, params: Mapping[str, Any], *, worker: str | None = None,
                       budget: int | None = None, parent: str | None = None) -> Trial:
        check_params(params)
        name = self._experiment_name(experiment_id)
        plain: dict[str, Any] = to_builtin(dict(params))
        now = self.now()
        trial = Trial(id=trial_id(experiment_id, plain), experiment=experiment_id, params=plain,
                      submit_time=now, parent=parent)
        if worker is not None:
            trial = transitions.reserve(worker, now).applied_to(trial)  # registered and reserved at once
        insert_holding_slot(self._db(), client.trial_to_doc(trial), budget, name)
        return trial if worker is None else self._handed(trial)

    @_translated("record a trial")
    def record_trial(self, experiment_id: str, params: Mapping[str, Any], objective: float, results: Mapping[str, Any],
                     *, budget: int | None = None, in_budget: bool = False) -> Trial:
        check_params(params)
        return record_holding_slot(self._db(), experiment_id, self._experiment_name(experiment_id), params,
                                   objective, results, self.now(), budget if in_budget else False)

    @_translated("restore trials")
    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        name = self._experiment_name(experiment_id)
        added = 0
        restored = [dataclasses.replace(t, id=trial_id(experiment_id, t.params), experiment=experiment_id) for t in trials]
        docs = writes.restorable([client.trial_to_doc(fresh) for fresh in restored], name, self.uri)
        for fresh, doc in zip(restored, docs, strict=True):
            try:
                if not fresh.holds_budget:
                    client.insert_stamped(self._trials, doc)
                else:
                    insert_holding_slot(self._db(), doc, None, name)
                added += 1
            except (DuplicateKeyError, DuplicateTrialError):
                added += writes.finish_waiting(self._trials, fresh, doc)
        return added

    # -- trials: the reservation lifecycle --------------------------------------

    def _apply(self, trial_id: str, change: transitions.Change) -> Trial:
        """One conditional update applying ``change``; when it matches nothing, the change says why."""
        if not change.appends:  # the reservation ends (or is another's): what was known of its reports is old
            self._reports.forget(trial_id)
        doc = self._trials.find_one_and_update(writes.expected(trial_id, change), writes.update(change),
                                               return_document=_AFTER)
        return self._settled(trial_id, change) if doc is None else client.doc_to_trial(doc, self.uri)

    def _settled(self, trial_id: str, change: transitions.Change) -> Trial:
        """The trial if ``change`` took effect all the same (:func:`.writes.took_effect`), else raise why not."""
        doc = self._trials.find_one({"_id": trial_id})
        trial = None if doc is None else client.doc_to_trial(doc, self.uri)
        if trial is not None and writes.took_effect(doc, trial, change):
            return trial  # the driver's own retry of a write whose reply was lost met the write's effect
        error = change.refusal(trial_id, trial, self.redacted_uri)
        if trial is None and change.owner is not None and trial_id in self._held:  # handed out: it existed
            error = self._vanished(trial_id, change.owner)
        if error is None:  # it changed back between the update and this read: refuse all the same
            assert trial is not None
            error = ReservationLostError.refused(trial_id, trial.status.value, trial.worker, change.owner)
        raise error

    def _vanished(self, trial_id: str, worker: str) -> StorageError:
        """A held trial gone with its experiment (the worker stops), or from a restored or crashed database
        while its experiment is still there (it drops the result and goes on)."""
        experiment = self._held.get(trial_id)
        if experiment is not None and self._db().experiments.count_documents({"_id": experiment}) == 1:
            return ReservationLostError.vanished(trial_id, self.redacted_uri, worker)
        return TrialNotFoundError.deleted(trial_id, self.redacted_uri, worker)

    def _handed(self, trial: Trial) -> Trial:
        self._held[trial.id] = trial.experiment
        while len(self._held) > REMEMBERED:
            self._held.popitem(last=False)
        return trial

    def _current(self, trial_id: str) -> Trial:
        doc = self._trials.find_one({"_id": trial_id})
        if doc is None:
            raise TrialNotFoundError.missing(trial_id, self.redacted_uri)
        return client.doc_to_trial(doc, self.uri)

    @_translated("reserve a trial")
    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        while True:  # a trial holding values Orchard never writes is broken, not handed out: next one
            try:
                doc = self._trials.find_one_and_update(
                    {"experiment": experiment_id, **client.WAITING},
                    writes.update(transitions.reserve(worker, self.now())),
                    sort=client.WAITING_ORDER, return_document=_AFTER)
            except OperationFailure as err:  # another program's field the update cannot apply to (a version in text)
                if err.code == client.TYPE_MISMATCH and client.break_first_waiting(
                        self._trials, experiment_id, self.now(), self.uri):
                    continue
                raise
            if doc is None:
                self._experiment_name(experiment_id)  # raise if the experiment does not exist
                return None
            why = client.unreadable(doc)
            if why is None:
                return self._handed(client.doc_to_trial(doc))
            client.break_unreadable(self._trials, doc, {"worker": worker}, why, self.now(), self.uri)

    @_translated("read reserved trials")
    def take_up_reserved(self, experiment_id: str, worker: str) -> list[Trial]:
        """See :meth:`BaseStorage.take_up_reserved`: each trial found is remembered as handed out."""
        docs = self._trials.find({"experiment": experiment_id, "status": TrialStatus.RESERVED.value, "worker": worker})
        return [self._handed(trial) for trial in client.readable_trials(docs, self.uri)]

    @_translated("record a heartbeat")
    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        change = transitions.heartbeat(worker, self.now())
        if self._trials.update_one(writes.expected(trial_id, change), writes.update(change)).matched_count == 0:
            self._settled(trial_id, change)

    @_translated("complete a trial")
    def complete_trial(self, trial_id: str, worker: str, objective: float,
                       results: Mapping[str, Any] | None = None) -> Trial:
        return self._apply(trial_id, transitions.complete(worker, objective, to_builtin(dict(results or {})), self.now()))

    @_translated("mark a trial broken")
    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        check_error(error)
        return self._apply(trial_id, transitions.fail(worker, to_builtin(dict(error)), self.now()))

    @_translated("store a report")
    def report_trial(self, trial_id: str, worker: str, step: int, value: ReportValue) -> Trial:
        """One write, its reply without the reports this handle knows the trial holds (:mod:`.reports`)."""
        tried = self._reports.change(trial_id, worker, step, value, self.now())
        if tried is not None and (doc := self._trials.find_one_and_update(
                writes.expected(trial_id, tried[0]), writes.update(tried[0]), projection=WITHOUT_REPORTS,
                return_document=_AFTER)) is not None:
            return self._reports.stored(client.doc_to_trial(doc, self.uri), tried[1], tried[0])
        doc = self._trials.find_one({"_id": trial_id})
        if (refusal := writes.report_refusal(trial_id, doc, worker, self.redacted_uri)) is not None:
            raise refusal  # the owner first, then the step
        trial = client.doc_to_trial(doc, self.uri)
        if tried is not None and writes.took_effect(doc, trial, tried[0]):
            return self._reports.remember(trial)  # the driver retried a write that had taken effect
        count, last = int(doc.get(client.REPORT_COUNT) or 0), trial.reports[-1][0] if trial.reports else None
        change = transitions.report(trial_id, worker, step, value, self.now(), count, last)
        return self._reports.remember(self._apply(trial_id, change))

    @_translated("prune a trial")
    def prune_trial(self, trial_id: str, worker: str, verdict: Mapping[str, Any]) -> Trial:
        trial = self._current(trial_id)
        refusal = transitions.held_by(worker).refusal(trial_id, trial, self.redacted_uri)  # the owner first
        if refusal is not None:
            raise refusal
        return self._apply(trial_id, transitions.prune(trial, worker, to_builtin(dict(verdict)), self.now()))

    @_translated("release a trial")
    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        return self._apply(trial_id, transitions.release(self._current(trial_id), worker))

    @_translated("release lost trials")
    def release_lost(self, experiment_id: str, leases: Mapping[str, Lease], max_attempts: int) -> list[Trial]:
        self._experiment_name(experiment_id)  # raise if the experiment does not exist
        taken = (self._take_back(experiment_id, tid, lease, max_attempts) for tid, lease in leases.items())
        return [trial for trial in taken if trial is not None]

    def _take_back(self, experiment_id: str, trial_id: str, lease: Lease, max_attempts: int) -> Trial | None:
        """Interrupt or break one trial if it still holds ``lease``; the write conditional on it."""
        doc = self._trials.find_one({"_id": trial_id, "experiment": experiment_id})
        if doc is None:
            return None
        change = transitions.take_back(client.doc_to_trial(doc, self.uri), lease, max_attempts, self.now())
        doc = self._trials.find_one_and_update(writes.expected(trial_id, change), writes.update(change),
                                               return_document=_AFTER)
        return None if doc is None else client.doc_to_trial(doc, self.uri)

    # -- trials: reading --------------------------------------------------------

    @_translated("read a trial")
    def get_trial(self, trial_id: str) -> Trial | None:
        doc = self._trials.find_one({"_id": trial_id})
        return None if doc is None else client.doc_to_trial(doc, self.uri)

    @_translated("fetch trials")
    def fetch_trials(self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None = None) -> list[Trial]:
        wanted = None if statuses is None else [TrialStatus(s).value for s in statuses]
        docs = find_trials(self._trials, experiment_id, wanted, self.uri)  # each trial read once
        trials = client.readable_trials(docs, self.uri)
        self._found(experiment_id, bool(trials))  # none: deleted by another process?
        return sorted(trials, key=lambda t: t.submit_time or 0.0)

    @_translated("count trials")
    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        counts = count_by_status(self._trials, experiment_id, self.uri)
        self._found(experiment_id, any(counts.values()))
        return counts

    @_translated("count unbudgeted trials")
    def count_unbudgeted(self, experiment_id: str) -> int:
        return count_unbudgeted(self._trials, experiment_id, self.uri)

    @_translated("fetch changed trials")
    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        """See :meth:`BaseStorage.fetch_changes`; the guarantee is in :mod:`orchard.storages.mongodb.changes`."""
        every = functools.partial(count_by_status, self._trials, experiment_id, self.uri, every=True)
        trials, cursor = self._changes.fetch(self._trials, experiment_id, cursor, every)  # it holds every doc
        self._found(experiment_id, bool(cursor.seen))
        return trials, cursor

    def resent_everything(self, before: Any, after: Any) -> bool:
        """See :meth:`BaseStorage.resent_everything`: ``after`` comes from a read of every trial made
        because trials of the view vanished (a restore or a deletion, :mod:`.changes`)."""
        return before is None or bool(getattr(after, "resent", False))
