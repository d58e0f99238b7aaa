"""The clock a worker and its pacemaker keep time with, injectable so timing tests need no sleeps.

A :class:`Clock` reads monotonic time and waits: :meth:`Clock.sleep` for a
pause, :meth:`Clock.wait` for a pause that a :class:`threading.Event` cuts
short (a thread's stop). :data:`SYSTEM_CLOCK` is the real one;
:class:`ManualClock` is moved forward by hand (or by the sleeps of the code
under test), so a test of a 30 s lease runs in milliseconds and every
"later" is exactly as late as the test says.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time and waiting. Thread-safe."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (its origin means nothing)."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` have passed; return whether it is set."""


class SystemClock:
    """The process's own monotonic clock."""

    def __init__(self) -> None:
        self._sliced = _timed_waits_hang()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """``time.sleep(seconds)``."""
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """``event.wait(seconds)``; in sleeps of at most :data:`_SLICE` where that would never end
        (:func:`_timed_waits_hang`), so a worker's heartbeats go on there."""
        if not self._sliced:
            return event.wait(seconds)
        deadline = time.monotonic() + seconds
        while not event.is_set() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, _SLICE))
        return event.is_set()


def _timed_waits_hang() -> bool:
    """Whether this process runs under libfaketime faking its monotonic clock (``faketime``, as used to
    simulate a node's skewed clock, without ``FAKETIME_DONT_FAKE_MONOTONIC=1``).

    Python times a lock's wait to a deadline computed from ``CLOCK_MONOTONIC``, which libfaketime fakes,
    while the kernel keeps the real one (libfaketime issue #390): a timed ``Event.wait`` there lasts
    for decades. ``time.sleep`` is faked consistently.
    """
    kept = ("FAKETIME_DONT_FAKE_MONOTONIC", "DONT_FAKE_MONOTONIC")  # its switch, by its current and old name
    return "faketime" in os.environ.get("LD_PRELOAD", "") and "1" not in map(os.environ.get, kept)


#: Seconds of one sleep of :meth:`SystemClock.wait` where timed waits hang.
_SLICE = 0.05

#: The clock every worker uses unless given another.
SYSTEM_CLOCK: Clock = SystemClock()

#: Real seconds between two looks at a waited event (only a :class:`ManualClock` polls).
_POLL = 0.005


class ManualClock:
    """A clock that moves only when told: :meth:`advance`, or a :meth:`sleep` of the code under test.

    :meth:`wait` returns once the clock has been moved past its end, or its event is set.
    :meth:`settle` lets a test wait until the threads under test are all waiting
    again, so that what an :meth:`advance` set off has been done before it looks.

    Args:
        start: the first reading of :meth:`monotonic`.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._moved = threading.Condition()
        self._ends: dict[object, float] = {}  # one entry per wait in progress: when it ends

    def monotonic(self) -> float:
        """The clock's time."""
        with self._moved:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, waking the waits that end by then."""
        with self._moved:
            self._now += max(seconds, 0.0)
            self._moved.notify_all()

    def sleep(self, seconds: float) -> None:
        """A sleep takes no real time: it moves the clock forward by ``seconds``."""
        self.advance(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait (in real time) until the clock passes ``seconds`` from now, or ``event`` is set."""
        token = object()
        with self._moved:
            end = self._ends[token] = self._now + seconds
            self._moved.notify_all()
            try:
                while not event.is_set() and self._now < end:
                    self._moved.wait(_POLL)  # an event set elsewhere does not notify this condition
            finally:
                del self._ends[token]
        return event.is_set()

    def settle(self, waiters: int, timeout: float = 10.0) -> None:
        """Block until ``waiters`` threads wait on this clock for a time still to come.

        A thread woken by :meth:`advance` counts again only once it waits anew, so
        whatever it does between two waits (a heartbeat) is done when this returns.

        Raises:
            TimeoutError: not within ``timeout`` real seconds.
        """
        with self._moved:
            if not self._moved.wait_for(
                    lambda: sum(end > self._now for end in self._ends.values()) >= waiters, timeout):
                raise TimeoutError(f"{waiters} thread(s) were not all waiting on the clock "
                                   f"within {timeout:g} s ({len(self._ends)} wait(s) in progress)")
