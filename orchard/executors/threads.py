"""Worker loops that run as threads of the process that called ``workon``, and how they are told to stop.

No signal reaches a thread (``executor="thread"``, a Dask ``LocalCluster`` with
``processes=False``, a thread pool of the caller's own), so an interruption of
that process cannot stop them as it stops pool processes
(:mod:`orchard.interruption`). Their :class:`~orchard.executors.fleet.Fleet`
sets a :class:`StopRequest` instead. A request cannot travel in a task (Dask
pickles tasks even for its in-process workers): each loop finds it here by its
task's token when it starts, and reports to it what it gave back, because the
loop's future may have been cancelled meanwhile (a Dask future is cancelled even
while its task runs)::

    Fleet                                    each loop running as its thread
    ─────                                    ───────────────────────────────
    with request.covering(tasks):            finds the request by its token
      interrupted → request.set()    ───>    reserves no trial after it; stops an evaluation
                                             it can stop (a watched child, a script) and gives
                                             its trial back; one in the thread runs to its end
      request.wait(timeout)          <───    reports what it gave back, ends

Loops in other processes find no request (the table is emptied in a forked child).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator

from orchard.errors import Interrupted

__all__ = ["StopRequest", "request_for"]

#: The requests covering the loops that may run as threads of this process, by their task's token.
_REQUESTS: dict[str, StopRequest] = {}
if hasattr(os, "register_at_fork"):  # a forked pool process is stopped by signals, not by its parent's requests
    os.register_at_fork(after_in_child=_REQUESTS.clear)


class StopRequest:
    """The request to stop the worker loops of one ``workon`` that run as threads of this process."""

    def __init__(self) -> None:
        self.event = threading.Event()
        #: What each loop stopped by the request gave back.
        self.reports: list[Interrupted] = []
        self._running: set[str] = set()  # the tokens of the loops that found the request and still run
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def covering(self, tokens: Iterable[str]) -> Iterator[StopRequest]:
        """While the block runs, the loops of the tasks with these tokens find this request (:func:`request_for`)."""
        tokens = list(tokens)
        _REQUESTS.update(dict.fromkeys(tokens, self))
        try:
            yield self
        finally:
            for token in tokens:
                _REQUESTS.pop(token, None)

    def set(self) -> None:
        """Tell every loop that found the request to stop."""
        self.event.set()

    def wait(self, timeout: float) -> bool:
        """Wait until no loop that found the request runs any more; return whether none does."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._running, timeout)

    def still_running(self) -> frozenset[str]:
        """The tokens of the loops that found the request and have not ended (whatever their futures say)."""
        with self._changed:
            return frozenset(self._running)

    @contextlib.contextmanager
    def running(self, token: str) -> Iterator[threading.Event]:
        """For the loop of the task with ``token``, while it runs: the event that tells it to stop."""
        with self._changed:
            self._running.add(token)
        try:
            yield self.event
        finally:
            with self._changed:
                self._running.discard(token)
                self._changed.notify_all()


def request_for(token: str) -> StopRequest | None:
    """The request covering the loop of the task with ``token``, if it runs as a thread of the requester."""
    return _REQUESTS.get(token)
