"""The change feed of :class:`~orchard.storages.mongodb.MongoStorage`: trials written since a cursor.

Every write to a trial document is stamped by the *server*: ``mtime`` is set
to the server's date with ``$currentDate`` (inserts go through an upsert for
the same reason) and ``version`` is incremented. No client clock is involved
(SPEC §5.8), so a worker whose clock is minutes off neither hides its writes
from the others nor misses theirs.

A call reads the trials whose ``mtime`` is at least the newest stamp already
returned minus ``margin`` seconds (an index range: the cost follows the recent
writes, not the history), and returns those whose version the cursor has not
seen. The margin covers writes stamped before, but made visible after, a
write stamped later (writes in flight; after a failover, the clocks of two
servers).

The read is an aggregate that adds the server's date (``$$NOW``, MongoDB 4.2+)
to every document it returns, so it costs no round trip more than a ``find``.
The cursor's stamp never goes past that date: a document stamped in the future
(by another program, or before the server's clock was stepped back) cannot hide
the writes that follow it; it is read again, unchanged, while it stays in the
window. A read whose server date is earlier than the cursor's stamp (the clock
went back since the last read) reads once more from that date minus the
reader's time since its last read. A read that finds nothing in its window
learns no date: a clock stepped back under a reader whose window then holds no
document is repaired by the count check below.

Guarantee: a write is returned by the first call made after it is visible,
unless it became visible more than ``margin`` seconds after a later-stamped
write. Such a miss is repaired when the trial is written again, and at the
latest by the next count check: every ``check_interval`` seconds (of the
reader's monotonic clock) times the fleet's stretch, the call first counts the
trials per status; if the reader's view then holds fewer trials, or fewer
completed or broken ones (both only ever grow) than were counted, it returns
every trial (a full resync). The stretch is the number of workers the view
shows holding a reservation divided by 8, between 1 and 12: a fleet of any
size sends about as many counts as 8 workers do (each count scans the
experiment's index keys), and a missed write waits at most
``12 × check_interval`` (2 minutes by default) once 96 workers or more run.
Trials are never deleted one by one, their versions never go back, and a trial
never leaves a terminal status; so data restored from an older dump
(``mongorestore --drop``) under a reader shows as a version lower than one the
cursor saw (at the first write to a restored trial), or at the count check as a
view holding more trials, or more of a terminal status, than counted. Either
makes the call read everything again, and that cursor says so
(:meth:`MongoStorage.resent_everything`): the caller forgets the trials the dump
lacks. Deleted trials are not reported otherwise. The cursor holds the version and status of
each trial returned, and the worker of a reserved one (memory, and a copy per
call, grow with the experiment; no I/O does).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pymongo.errors import OperationFailure

from orchard.storages.mongodb import client
from orchard.storages.mongodb.client import STAMP, version_of
from orchard.trial import Trial, TrialStatus

__all__ = ["EVERY_TRIAL", "STAMP", "ChangeCursor", "ChangeFeed", "find_trials"]


#: The index a read of all the trials of an experiment is hinted to (``fetch_trials``, a full read here):
#: its keys, ``(experiment, _id)``, never change, so each trial is read once. Through another index
#: (status, mtime), a trial written while a read of several batches runs moves in that index, and is
#: read twice or missed: MongoDB reads are not isolated (a repeated trial made a dump refuse to load).
EVERY_TRIAL = "experiment_id"
_BAD_VALUE = 2  # the server's code for a hint naming no index of the collection
_T = TypeVar("_T")
_ORIGIN = datetime.datetime(1970, 1, 1)  # naive UTC, as pymongo returns dates
_FLEET = 8  # workers whose count checks the fleet's stay at: the interval stretches beyond them
_MAX_STRETCH = 12  # the longest interval, in check intervals: how long a missed write can wait
_RESERVED = TrialStatus.RESERVED.value
#: The field a read adds to each document: the server's date (``$$NOW``). It takes the place of
#: ``slot`` (a reader needs no budget slot), so a trial stored near the 16 MiB limit of a BSON
#: document is still returned: the slot takes 54 bytes of BSON, the date 14.
_NOW = "_now"


@dataclasses.dataclass(frozen=True)
class ChangeCursor:
    """Where a reader of the change feed stands."""

    experiment: str
    since: datetime.datetime  # highest server stamp returned so far, never past the server's date
    checked: float  # reader's monotonic time of the last count check
    read_at: float  # reader's monotonic time of the last read
    seen: Mapping[str, tuple[int, str, str]]  # trial id -> (version, status, worker if reserved) last returned
    resent: bool = False  # this cursor's read returned every trial, after trials of the view vanished


class ChangeFeed:
    """Reads the trials of one collection changed since a :class:`ChangeCursor`.

    Args:
        margin: seconds the window reaches back before the newest stamp seen.
        check_interval: seconds between count checks (see the module docstring).
        clock: the reader's monotonic clock (injectable for tests).
        uri: the storage's URI, for messages (and to know a mongomock database).

    Trials holding values Orchard never writes are skipped (and named once), but
    counted as seen: :func:`orchard.storages.mongodb.client.readable_trials`.
    """

    def __init__(self, margin: float, check_interval: float,
                 clock: Callable[[], float] = time.monotonic, uri: str = "") -> None:
        self.uri = uri  # named in the warning about a trial skipped as unreadable
        self.margin = margin
        self.check_interval = check_interval
        self._clock = clock

    def fetch(self, trials: Any, experiment_id: str, cursor: Any,
              count: Callable[[], dict[TrialStatus, int]]) -> tuple[list[Trial], ChangeCursor]:
        """Return the trials changed since ``cursor`` and the next cursor.

        Args:
            trials: the trials collection.
            experiment_id: the experiment read.
            cursor: a cursor from an earlier call, or anything else for every trial.
            count: counts the experiment's trials per status on the server.

        Returns:
            The changed trials and the cursor to pass next time.
        """
        now = self._clock()
        if not isinstance(cursor, ChangeCursor) or cursor.experiment != experiment_id:
            return self.full(trials, experiment_id)
        counts = count() if self._check_due(now - cursor.checked, cursor.seen) else None
        docs, server_now = self._read(trials, self._window(experiment_id, cursor.since))
        if server_now is not None and server_now < cursor.since:
            # the server's clock went back since the cursor's stamp: the writes made since the
            # last read are stamped at most that long before the server's date
            lag = datetime.timedelta(seconds=now - cursor.read_at)
            docs, server_now = self._read(trials, self._window(experiment_id, server_now - lag))
        if any(cursor.seen.get(_key(d), (0, "", ""))[0] > version_of(d) for d in docs):
            return self.full(trials, experiment_id, resent=True)  # a version went back: data restored from a dump
        if counts is not None and holds_vanished(cursor.seen, counts):
            return self.full(trials, experiment_id, resent=True)
        fresh = [d for d in docs if cursor.seen.get(_key(d), (0, "", ""))[0] < version_of(d)]
        seen = {**cursor.seen, **_seen(fresh)}
        if counts is not None and misses_writes(seen, counts):
            return self.full(trials, experiment_id)  # writes the window missed: the view is merely behind
        since = _bounded(max([cursor.since, *_stamps(docs)]), server_now)
        checked = cursor.checked if counts is None else now
        return client.readable_trials(fresh, self.uri), ChangeCursor(experiment_id, since, checked, now, seen)

    def full(self, trials: Any, experiment_id: str, resent: bool = False) -> tuple[list[Trial], ChangeCursor]:
        """Every trial of the experiment, oldest first, and a cursor after them.

        ``resent``: the data changed under the reader's view (trials vanished), so the
        caller must drop what it holds that is not returned (the cursor says so).
        """
        now = self._clock()
        query = {"experiment": experiment_id}
        docs, server_now = _hinted(trials, self.uri, lambda: self._read(trials, query, hint=EVERY_TRIAL))
        seen = _seen(docs)
        since = _bounded(max(_stamps(docs), default=_ORIGIN), server_now)
        ordered = sorted(client.readable_trials(docs, self.uri), key=lambda t: t.submit_time or 0.0)
        return ordered, ChangeCursor(experiment_id, since, now, now, seen, resent)

    def _window(self, experiment_id: str, since: datetime.datetime) -> dict[str, Any]:
        """The query of the trials stamped at least ``margin`` seconds before ``since``."""
        return {"experiment": experiment_id, "mtime": {"$gte": since - datetime.timedelta(seconds=self.margin)}}

    def _read(self, trials: Any, query: dict[str, Any],
              **hint: str) -> tuple[list[dict[str, Any]], datetime.datetime | None]:
        """The documents matching ``query``, and the server's date when the read began (one round trip).

        The date rides on every document read (``$$NOW``, MongoDB 4.2+), so a read that finds
        nothing has none, and needs none: it moves no cursor. Where the server does not
        evaluate ``$$NOW`` (mongomock, whose server is this process), this process's clock stands in.
        """
        docs = list(trials.aggregate([{"$match": query}, {"$project": {"slot": 0}}, {"$addFields": {_NOW: "$$NOW"}}],
                                     batchSize=client.BATCH, **hint))
        dates = [date for date in (d.pop(_NOW, None) for d in docs) if isinstance(date, datetime.datetime)]
        if dates:
            return docs, min(dates)
        return docs, _mongomock_date() if docs and client.is_mock(self.uri) else None

    def _check_due(self, elapsed: float, seen: Mapping[str, tuple[int, str, str]]) -> bool:
        """Whether ``elapsed`` seconds since the last count check reach the interval stretched by the fleet."""
        if elapsed < self.check_interval:
            return False  # the view is not even looked at: most calls cost nothing here
        workers = len({worker for _, status, worker in seen.values() if status == _RESERVED})
        return elapsed >= self.check_interval * min(_MAX_STRETCH, max(1.0, workers / _FLEET))


def find_trials(trials: Any, experiment_id: str, statuses: list[str] | None,
                uri: str) -> list[dict[str, Any]]:
    """The documents of the trials of ``experiment_id`` (those in ``statuses`` if given), each once.

    Hinted to :data:`EVERY_TRIAL` unless one status is asked for: a trial changing status then leaves
    or enters the range read, at the same place, so the status index returns it at most once.
    """
    query: dict[str, Any] = {"experiment": experiment_id}
    if statuses is not None:
        query["status"] = {"$in": statuses}
    if statuses is not None and len(set(statuses)) == 1:
        return list(trials.find(query, batch_size=client.BATCH))
    return _hinted(trials, uri, lambda: list(trials.find(query, batch_size=client.BATCH).hint(EVERY_TRIAL)))


def _hinted(trials: Any, uri: str, read: Callable[[], _T]) -> _T:
    """``read()``, a read hinted to :data:`EVERY_TRIAL`; run again once the indexes are made again if the
    server refused it (the hint names an index the collection lacks: dropped, restored from an older dump)."""
    try:
        return read()
    except OperationFailure as err:
        if err.code != _BAD_VALUE:
            raise
    client.ensure_indexes(trials.database, uri, again=True)
    return read()


def _mongomock_date() -> datetime.datetime:
    """The date mongomock stamps writes with (``$currentDate``)."""
    import mongomock

    return mongomock.utcnow()  # type: ignore[attr-defined,no-any-return]  # not in mongomock's stubs


def _seen(docs: list[dict[str, Any]]) -> dict[str, tuple[int, str, str]]:
    """What a cursor keeps of each document: its version, status, and worker while it is reserved.

    Read from documents not yet checked (:func:`~orchard.storages.mongodb.client.readable_trials`
    checks them after): a document another program wrote without a status, with a version that is
    not an int or an ``_id`` that is not a string is kept under a stand-in, never raised on.
    """
    return {_key(d): (version_of(d), str(d.get("status")), _holder(d)) for d in docs}


def _key(doc: dict[str, Any]) -> str:
    """The document's ``_id`` (Orchard's are strings; another program's may be a dict or a number)."""
    key = doc.get("_id")
    return key if isinstance(key, str) else repr(key)


def _holder(doc: dict[str, Any]) -> str:
    """The worker holding ``doc``'s reservation, or "" when it is not reserved."""
    return str(doc.get("worker") or "") if doc.get("status") == _RESERVED else ""


def _stamps(docs: list[dict[str, Any]]) -> list[datetime.datetime]:
    """The server stamps of ``docs`` (documents written by older versions hold a client time)."""
    return [d["mtime"] for d in docs if isinstance(d.get("mtime"), datetime.datetime)]


def _bounded(since: datetime.datetime, server_now: datetime.datetime | None) -> datetime.datetime:
    """``since``, but not past the server's date when a read learnt it.

    A stamp later than the server's date (another program's write, or a server clock
    stepped back since) must not move the cursor past the writes still to come.
    """
    return since if server_now is None else min(since, server_now)


def _held(seen: Mapping[str, tuple[int, str, str]]) -> dict[str, int]:
    """How many trials of each status a view holds."""
    held = {status.value: 0 for status in TrialStatus}
    for _, status, _ in seen.values():
        if status in held:
            held[status] += 1
    return held


def holds_vanished(seen: Mapping[str, tuple[int, str, str]], counts: Mapping[TrialStatus, int]) -> bool:
    """Whether a view built before ``counts`` were taken holds trials that no longer exist.

    Trials are never deleted one by one and never leave a terminal status, so a view holding
    more trials, or more of a terminal status, than the server counts after it saw them was
    built on data since replaced (``mongorestore --drop`` of an older dump) or deleted.
    """
    held = _held(seen)
    if sum(held.values()) > sum(counts.values()):
        return True
    return any(held[status.value] > counts[status] for status in TrialStatus if status.is_terminal)


def misses_writes(seen: Mapping[str, tuple[int, str, str]], counts: Mapping[TrialStatus, int]) -> bool:
    """Whether a view built after ``counts`` were taken lacks trials the counts prove exist."""
    if len(seen) < sum(counts.values()):
        return True
    held = _held(seen)  # a trial never leaves a terminal status
    return any(held[status.value] < counts[status] for status in TrialStatus if status.is_terminal)
