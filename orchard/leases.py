"""Judging reservations lost without trusting any clock but the observer's own.

A worker that reserved a trial keeps writing a new ``heartbeat`` value into
it every ``heartbeat`` seconds. Nodes' wall clocks may disagree by minutes
(SPEC §5.8), so the value is never compared with a clock: an observer only
notes *when, on its own monotonic clock,* it first saw each value. A lease
whose value has not changed for ``stale_after`` seconds of the observer's
time belongs to a dead, frozen or partitioned worker; the observer reports
it, and :meth:`~orchard.storages.base.BaseStorage.release_lost` takes the
trial back only if it still holds exactly that lease, so a heartbeat that
lands meanwhile wins. Observing late or rarely only delays a release, never
makes it early: the observer can only under-estimate how long a value has
stood. What it cannot see is an outage it did not meet itself; so a worker
restarts its watches (:meth:`LeaseObserver.restart`) after every outage one of
its own calls rode out *and* after every heartbeat of its own that failed.
A reservation holding no heartbeat at all (another program wrote it: every
reservation of Orchard's holds one) is watched the same way, its value
``None``, and taken back without counting an attempt.

A holder that is a running process of the observer's own host (its worker name
``host:pid:token`` names this host and a live pid that is not stopped) is given
:data:`RUNNING_HOLDER_PATIENCE` times as long. Such a holder is not dead; its
heartbeats are queued behind a congested storage: with 512 workers on 2
cores, waits for the pickle file's lock reach 60-115 s, and an observer that
got the lock sooner took back trials whose workers were alive and about to
write their results, which were refused and evaluated again. A stopped
(``SIGSTOP``), dead or zombie holder, one on another host, and one of the
observer's own process (whose storage the observer just reached) are judged
as before.

A trial lost ``max_attempts`` times is not handed out again but marked
broken with :func:`lost_error`, so a trial that kills every worker that
evaluates it (a segfault, the OOM killer) cannot take the cluster down one
worker at a time.

A worker that stops before finishing its trials (Ctrl-C, SIGTERM, a stop
event, the end of an ask-and-tell script), or the process that watched its
workers end, gives them back gracefully with :func:`give_back`: the trials
become ``interrupted`` without counting an attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from orchard.errors import ReservationLostError, StorageError
from orchard.trial import Lease, Trial, lost_error

if TYPE_CHECKING:  # pragma: no cover
    from orchard.storages.base import BaseStorage

__all__ = ["RUNNING_HOLDER_PATIENCE", "LeaseObserver", "give_back", "lost_error"]

log = logging.getLogger(__name__)

#: How many times ``stale_after`` a lease held by a running process of this host is watched before it is lost.
RUNNING_HOLDER_PATIENCE = 4


def give_back(storage: BaseStorage, held: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Release trials still reserved (``interrupted``, the attempt not counted), each on its own.

    The one policy of every graceful release: a trial that is no longer
    reserved by its worker (finished, taken back or released meanwhile) is
    skipped, as there is nothing to give back; a trial the storage fails to
    release (:class:`~orchard.errors.StorageError`) is logged and kept, and
    its lease runs out instead; any other error propagates.

    Args:
        storage: where the trials are (retrying or not, as the caller chooses).
        held: trial id -> the worker holding it.

    Returns:
        The ids released, and the ids kept (still reserved) because the storage failed.
    """
    released: list[str] = []
    kept: list[str] = []
    for trial_id, worker in held.items():
        try:
            storage.release_trial(trial_id, worker)
        except ReservationLostError:
            log.debug("trial %s is no longer reserved by %s: nothing to give back", trial_id, worker)
        except StorageError as err:
            log.warning("could not give back trial %s of %s (its lease runs out instead): %s", trial_id, worker, err)
            kept.append(trial_id)
        else:
            released.append(trial_id)
    return released, kept


class LeaseObserver:
    """Watches reservations and reports those whose heartbeat stopped changing.

    Args:
        stale_after: seconds of the observer's own clock a heartbeat value
            must stand unchanged before its lease counts as lost.
        clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self._since: dict[str, tuple[Lease, float]] = {}  # trial id -> (lease, first seen at)

    def observe(self, reserved: Iterable[Trial]) -> None:
        """Fold in what is reserved now: pass every trial currently reserved, and only those.

        A trial whose lease differs from the one last seen starts a new watch
        at the observer's current time; a watched trial not passed (completed,
        released, or no longer reserved) is forgotten.
        """
        now = self._clock()
        watched: dict[str, tuple[Lease, float]] = {}
        for trial in reserved:
            lease = trial.lease
            if lease is None:
                continue
            before = self._since.get(trial.id)
            watched[trial.id] = before if before is not None and before[0] == lease else (lease, now)
        self._since = watched

    def lost(self) -> dict[str, Lease]:
        """The leases whose heartbeat has stood unchanged for ``stale_after`` seconds, by trial id
        (:data:`RUNNING_HOLDER_PATIENCE` times as long for a holder running on this host)."""
        now = self._clock()
        cutoff, patient = now - self.stale_after, now - self.stale_after * RUNNING_HOLDER_PATIENCE
        return {tid: lease for tid, (lease, seen) in self._since.items()
                if seen <= patient or (seen <= cutoff and not _running_here(lease.worker))}

    def restart(self) -> None:
        """Start every watch over from now: the storage was unreachable, so no heartbeat could land.

        An owner that could not heartbeat through an outage is not dead; its
        lease is judged again over a fresh ``stale_after`` of reachable storage.
        """
        now = self._clock()
        self._since = {tid: (lease, now) for tid, (lease, _) in self._since.items()}

    def forget(self, trial_ids: Iterable[str]) -> None:
        """Stop watching trials (e.g. once they were released)."""
        for trial_id in trial_ids:
            self._since.pop(trial_id, None)

    def __len__(self) -> int:
        return len(self._since)


def _running_here(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid:token``) is another process of this host, alive and not stopped."""
    host, _, rest = (worker or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError, ValueError):  # no such process, or no /proc: judged as before
        return False
    return state not in (b"T", b"t", b"Z", b"X")  # stopped, traced, zombie, dead
