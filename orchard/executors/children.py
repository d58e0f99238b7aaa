"""Worker loops in pool processes of the caller, and how one that starts after a stop learns of it.

An interruption of the process that called ``workon`` reaches the loops running
in its pool processes (``process``, ``joblib``, a process pool of the caller's
own) as :data:`~orchard.interruption.STOP_SIGNAL`, sent again every 0.5 s
(:func:`~orchard.interruption.stop_workers`). A loop that starts in between (a
pool process still starting ignores the signal, a task queued in the pool starts
when another ends) would reserve and run trials until the next one: after a
SIGTERM during the pool's start, a budget of short trials ran to its end. The
:class:`~orchard.executors.fleet.Fleet` marks the stop with a file named per
``workon`` call instead, whose name travels in each task, and each loop looks
for it once its signal handlers are in place::

    Fleet                                       a loop starting in a pool process
    ─────                                       ─────────────────────────────────
    interrupted → creates the file              installs its signal handlers, then looks
                  then sends STOP_SIGNAL        for the file: there → it stops before any
                                                reservation; not there → its handler was in
                                                place before the file was made, so the
                                                signal sent after reaches it
    removes the file when ``workon`` ends

The file is empty, created exclusively under an unpredictable name in the
temporary folder; where it cannot be created, loops are stopped by the signal
alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from concurrent.futures import Executor, ProcessPoolExecutor

__all__ = ["LocalStop", "stopped_before"]


class LocalStop:
    """The mark that the worker loops of one ``workon`` in the caller's pool processes must stop."""

    def __init__(self) -> None:
        self.path = os.path.join(tempfile.gettempdir(), f"orchard-stop-{uuid.uuid4().hex}")
        self._made = False

    @classmethod
    def of(cls, pool: Executor) -> LocalStop | None:
        """The mark for the loops submitted to ``pool``, if it runs them in this machine's processes, else ``None``."""
        local = isinstance(pool, ProcessPoolExecutor) or type(pool).__module__.startswith(
            ("joblib.externals.loky", "loky."))
        return cls() if local else None

    def set(self) -> None:
        """Mark the stop (before the loops are signalled)."""
        with contextlib.suppress(OSError):  # a temporary folder that cannot be written: the signal alone
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._made = True

    def close(self) -> None:
        """Remove the mark (when ``workon`` ends)."""
        if self._made:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def stopped_before(path: str | None) -> bool:
    """In a loop starting in a pool process, once its signal handlers are in place: whether its stop is marked."""
    return path is not None and os.path.exists(path)
