"""The pacemaker: one thread that keeps a worker's reservations alive.

A reservation is held only as long as its heartbeat keeps changing; the
pacemaker writes it every ``heartbeat`` seconds while the worker evaluates.
When the storage says the reservation is gone (another worker judged it lost),
the pacemaker tells the worker at once so it can stop the evaluation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from orchard.errors import ReservationLostError, StorageError
from orchard.storages.base import BaseStorage

__all__ = ["Pacemaker"]

log = logging.getLogger(__name__)


class Pacemaker:
    """One daemon thread that heartbeats every reservation it watches.

    Started on the first :meth:`watch`; beats every ``every`` seconds, so a watched
    trial's heartbeat is never older than ``every`` plus one storage write. A trial
    found no longer reserved by ``worker`` is dropped, handed to ``on_lost`` (from
    the heartbeat thread) and reported by :meth:`unwatch`.
    """

    def __init__(self, storage: BaseStorage, worker: str, every: float,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self._storage, self._worker, self._every = storage, worker, every
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, trial_id: str) -> None:
        """Start heartbeating ``trial_id``."""
        with self._lock:
            self._watched.add(trial_id)
            self._lost.discard(trial_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="orchard-pacemaker", daemon=True)
                self._thread.start()

    def unwatch(self, trial_id: str) -> bool:
        """Stop heartbeating ``trial_id``; return whether its reservation was found lost."""
        with self._lock:
            self._watched.discard(trial_id)
            lost = trial_id in self._lost
            self._lost.discard(trial_id)
            return lost

    def is_lost(self, trial_id: str) -> bool:
        """Whether a heartbeat found ``trial_id`` no longer reserved by this worker."""
        with self._lock:
            return trial_id in self._lost

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                watched = list(self._watched)
            for trial_id in watched:
                try:
                    self._storage.heartbeat_trial(trial_id, self._worker)
                except ReservationLostError:
                    self._mark_lost(trial_id)
                except StorageError as err:  # transient: try again next beat
                    log.warning("heartbeat of trial %s failed: %s", trial_id, err)

    def _mark_lost(self, trial_id: str) -> None:
        with self._lock:
            if trial_id not in self._watched:
                return  # finished meanwhile
            self._watched.discard(trial_id)
            self._lost.add(trial_id)
        if self._on_lost is not None:
            self._on_lost(trial_id)
