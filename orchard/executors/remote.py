"""Worker loops on Dask workers in other processes, and how they are told to stop.

No signal of the process that called ``workon`` reaches a Dask worker process
(a ``LocalCluster(processes=True)`` of the caller's own, a remote scheduler's
workers), and Dask does not stop a running task it cancels: the loops would
run the experiment on. Their :class:`~orchard.executors.fleet.Fleet` sets a
:class:`RemoteStop` instead, a ``distributed.Event`` named per ``workon``
call, whose name travels in each task; the loop watches it as a loop running
as a thread of the caller watches its :class:`~orchard.executors.threads.StopRequest`::

    Fleet                                    each loop on a Dask worker
    ─────                                    ──────────────────────────
    interrupted → stop.set()       ───>      its watch sees the event set (the scheduler
                                             tells every waiter at once): it reserves no trial
                                             after it; stops an evaluation it can stop (a watched
                                             child, a script) and gives its trial back; one in
                                             the worker's thread runs to its end
    waits for the loops' futures   <───      raises :class:`RemoteStopped` with what it gave back
    (not cancelled: Dask would                (a KeyboardInterrupt would end Dask's worker thread)
    drop what they report)

The loops on the worker processes of a ``LocalCluster`` Orchard started are told
by the same event, but not waited for: the cluster is closed next, which ends
them (they reserve no trial meanwhile).

When ``workon`` ends (however it ends) and every loop has ended, the Fleet
closes the request: set (a watch still waiting wakes and lets go of it), then
cleared, which removes it from the scheduler, so ``workon`` calls on a
long-lived cluster leave nothing behind. A request whose loops may still run
(one that did not stop in time) is left set instead, so that they stop when
they look at it: a few bytes on the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from typing import Any

from orchard.errors import Interrupted

__all__ = ["DASK_WORKER_TIMEOUT", "RemoteStop", "RemoteStopped", "Watch", "offering", "reported", "watched",
           "worker_timeout"]

log = logging.getLogger(__name__)

#: Seconds a loop's watch waits on the scheduler at once (it ends at the first wait after its loop ended).
_WATCH = 5.0
#: Seconds ``workon`` waits for a Dask worker when the scheduler has none, by default.
DASK_WORKER_TIMEOUT = 300.0
#: Seconds between two looks at the workers offering the resources the loops need (each asks the scheduler).
_LOOK = 2.0
#: The statuses of a Dask worker that runs no task it is given (its scheduler's view, or its own).
_LEAVING = ("closing", "closing_gracefully", "closed", "failed")


def offering(workers: Mapping[str, Any], resources: Mapping[str, float]) -> list[str]:
    """The addresses of the Dask workers (the ``workers`` of ``scheduler_info()``) that offer
    ``resources``, not counting those leaving (retired, closing)."""
    return [address for address, worker in workers.items() if worker.get("status") not in _LEAVING
            and all((worker.get("resources") or {}).get(key, 0) >= need for key, need in resources.items())]


def worker_timeout(config: Mapping[str, Any]) -> float | None:
    """``executor_config``'s ``worker_timeout``: seconds to wait for a Dask worker (``None``: for ever)."""
    timeout: float | None = config.get("worker_timeout", DASK_WORKER_TIMEOUT)
    return timeout


class RemoteStopped(Exception):
    """What a loop on a Dask worker stopped by its :class:`RemoteStop` raises: the interruption it reports.

    Args:
        interruption: what the loop gave back.
    """

    def __init__(self, interruption: Interrupted) -> None:
        super().__init__(interruption)
        self.interruption = interruption


def reported(error: BaseException | None) -> BaseException | None:
    """A loop's future's exception, with the interruption a :class:`RemoteStopped` carries in its place."""
    return error.interruption if isinstance(error, RemoteStopped) else error


class RemoteStop:
    """The request to stop the worker loops of one ``workon`` that run on a Dask client's workers.

    Args:
        client: the ``dask.distributed.Client`` the loops are submitted with.
        resources: what each loop needs of a Dask worker (``executor_config``'s, e.g. ``{"GPU": 1}``).
    """

    def __init__(self, client: Any, resources: Mapping[str, float] | None = None) -> None:
        from distributed import Event

        self.name = f"orchard-stop-{uuid.uuid4().hex}"
        self._event = Event(self.name, client=client)  # type: ignore[no-untyped-call]
        self._client = client
        self.resources = dict(resources or {})
        self._alone_since: float | None = None  # when (monotonic) the scheduler was first seen workerless
        self._looked_at: float | None = None  # when (monotonic) the workers offering them were last counted
        self._none_offered = False  # what that count found

    @classmethod
    def of(cls, pool: Executor, resources: Mapping[str, float] | None = None) -> RemoteStop | None:
        """The request for the loops submitted to ``pool``, if it is a Dask client's executor, else ``None``."""
        client = getattr(pool, "_client", None)  # distributed's ClientExecutor keeps its client there
        if not type(pool).__module__.startswith("distributed.") or client is None:
            return None
        return cls(client, resources)

    @property
    def scheduler(self) -> str:
        """The scheduler's address, for messages."""
        return str(getattr(self._client.scheduler, "address", "?"))

    def workerless_for(self) -> float:
        """Seconds for which the scheduler has had no worker the loops can run on (0: it has one, or the
        client cannot tell): none at all, or none offering :attr:`resources` while others stay.

        Read from what the client last heard from the scheduler (it asks every few seconds by
        itself), so a scheduler that cannot be reached does not block the caller; the scheduler
        itself is asked only when that copy first says it has none, or every few seconds for the
        workers offering the resources (which that copy does not list).
        """
        info = getattr(self._client, "_scheduler_identity", None) or {}
        if info.get("n_workers", 1) != 0:
            alone = bool(self.resources) and self._none_offer()
        else:
            alone = self._alone_since is not None or self._asked_workerless()
        if not alone:
            self._alone_since = None
            return 0.0
        now = time.monotonic()
        self._alone_since = now if self._alone_since is None else self._alone_since
        return now - self._alone_since

    def _none_offer(self) -> bool:
        """Whether the scheduler, asked every :data:`_LOOK` seconds, has no worker offering the resources
        (``False`` if its client lost it: the client then cancels the loops' futures itself)."""
        now = time.monotonic()
        if self._looked_at is not None and now - self._looked_at < _LOOK:
            return self._none_offered
        self._looked_at, self._none_offered = now, False
        if getattr(self._client, "status", None) != "running":
            return False
        try:
            workers = self._client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 -- a scheduler gone: the client cancels the loops' futures
            return False
        self._none_offered = not offering(workers, self.resources)
        return self._none_offered

    def _asked_workerless(self) -> bool:
        """Whether the scheduler itself says it has no worker (the client's copy can be seconds old: a
        ``LocalCluster`` whose workers joined since); ``False`` if it cannot be asked."""
        try:
            info = self._client.scheduler_info(n_workers=0)
        except Exception:  # noqa: BLE001 -- a scheduler gone: the client cancels the loops' futures
            return False
        return bool(info.get("n_workers", 1) == 0)

    def set(self) -> None:
        """Tell every loop watching the request to stop (a scheduler that cannot be reached is not told)."""
        with contextlib.suppress(Exception):  # a scheduler gone: its workers are too
            self._event.set()  # type: ignore[no-untyped-call]

    def close(self, loops_ended: bool) -> None:
        """Remove the request from the scheduler once ``loops_ended``; else leave it set, so that they stop.

        A cleared event the scheduler deletes only when nobody waits on it: it is set first, which wakes
        the watches of ended loops still waiting on it (they let go), then cleared.
        """
        self.set()
        if loops_ended:
            with contextlib.suppress(Exception):  # a scheduler gone took its events with it
                self._event.clear()  # type: ignore[no-untyped-call]


class Watch(threading.Event):
    """The stop event :func:`watched` gives a loop on a Dask worker."""

    #: Set for the worker leaving (closing, retired): the loop is to run on elsewhere (:meth:`rerun`).
    leaving = False

    @staticmethod
    def rerun() -> BaseException:
        """What the loop raises, its trial given back, to be run again on another worker (Dask's
        ``Reschedule``: a worker retired by ``retire_workers`` or an adaptive cluster still reports it; a
        failed task would end ``workon``)."""
        from distributed import Reschedule

        return Reschedule()


@contextlib.contextmanager
def watched(name: str | None) -> Iterator[Watch | None]:
    """In a loop on a Dask worker: an event set once the :class:`RemoteStop` called ``name`` is (``None``: no request).

    It is set too once nobody waits for the loop (:func:`_abandoned`): the process that called ``workon`` died
    (SIGKILL, the OOM killer, a notebook's kernel restarted), or the Dask worker is closing or retiring (it
    lost its scheduler, or ``retire_workers`` took it out: then :attr:`Watch.leaving`). Outside a Dask worker
    (the task was sent elsewhere), nothing is watched.
    """
    if name is None:
        yield None
        return
    try:
        from distributed import Event, get_client, get_worker
        from distributed.utils import thread_state  # type: ignore[attr-defined]

        event = Event(name, client=get_client())  # type: ignore[no-untyped-call]
        worker, key = get_worker(), getattr(thread_state, "key", None)  # of this thread: the task's
    except (ImportError, ValueError):  # no Dask, or not in a Dask worker
        yield None
        return
    stop, ended = Watch(), threading.Event()

    def watch() -> None:
        while not ended.is_set():
            try:
                told = event.wait(_WATCH)  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001 -- the scheduler cannot be reached: look at the worker instead
                told = False
                ended.wait(_WATCH)
            reason = None if told else _abandoned(worker, key)
            if reason is not None:
                log.warning("stopping Orchard's worker loop (Dask task %s): %s; it reserves no other trial",
                            key, reason)
            if told or reason is not None:
                stop.leaving = reason is not None and _status(worker) in _LEAVING
                stop.set()
                return

    threading.Thread(target=watch, name="orchard-remote-stop-watch", daemon=True).start()
    try:
        yield stop
    finally:
        ended.set()


def _abandoned(worker: Any, key: object) -> str | None:
    """Why the loop running as task ``key`` of Dask ``worker`` runs for nobody (``None``: it does not).

    Its client released it (the scheduler marks a running task whose client went away ``cancelled``,
    while its thread runs on: the loop would run the experiment to its end, holding the worker's slot
    for the next ``workon``), or the worker is closing (it lost its scheduler, and its process ends
    soon, with the trial the loop holds) or retiring (``closing_gracefully``: the scheduler moves its
    data off and closes it, or leaves it out of the cluster; it runs no task of the loop's again).
    """
    status = _status(worker)
    if status in _LEAVING:
        return f"this Dask worker is {status} (it lost its scheduler, or was told to close or retire)"
    task = getattr(getattr(worker, "state", None), "tasks", {}).get(key) if key is not None else None
    if getattr(task, "state", None) == "cancelled":
        return "its Dask client released it (the process that called workon is gone)"
    return None


def _status(worker: Any) -> str:
    """The Dask worker's status (``running``, ``closing_gracefully``…)."""
    return str(getattr(getattr(worker, "status", None), "name", ""))
