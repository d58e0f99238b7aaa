"""Connections that cannot hold the dashboard: a client must send its request, and take its answer, in time.

uvicorn's HTTP protocol keeps a connection open for as long as its client
wants: one that connects and sends nothing, or its headers a byte at a time
(slowloris), is kept forever; one that asks for a page of trials and never
reads keeps the whole answer in the server's memory forever (50 such clients
on a page of 20,000 trials: 0.5 GiB). :class:`GuardedProtocol` bounds both:

- **request**: from the moment a connection opens, or its previous answer was
  all delivered, the client has ``request_timeout`` seconds to send a whole request;
- **answer**: while an answer is going out, the client must take at least
  :data:`MIN_PROGRESS` bytes of it every ``send_timeout`` seconds (one that reads
  nothing, or a byte now and then, does not).

Connections waiting on their client do not fill the server either: when a new
connection finds it full (``limit_concurrency`` connections, beyond which uvicorn
answers 503), the connection that has waited longest for its client's request
is reset to make room. Seventy clients that connect and send nothing, or half a
request, thus cost the server nothing but their own connections, instead of a
503 to everyone else for as long as they reconnect. If none waits for a request,
the answer going out slowest is reset instead, among those that have been
waiting on their client for at least ``evict_after`` seconds (their rate: bytes
the client took since its request, per second). A minimum rate alone does not
free the server: 64 clients each reading plotly.js (4.8 MB) at just over 2 KiB/s
held every connection for 40 minutes; now a newcomer takes the place of the
slowest of them, and an attacker has to read faster than the users it would shut
out. Only answers being computed, or taken faster than every other one, or for
less than ``evict_after`` seconds, can fill the server. Either way, the
connections of an address holding more than a browser opens
(:data:`BROWSER_CONNECTIONS`) go first, the most holding first: one machine
opening dozens of connections makes room from its own before anyone else's.

Either way the connection is reset (``SO_LINGER`` 0, then closed): its answer is
dropped at once, from the server's memory and from the kernel's send queue (a
plain close would leave the kernel holding megabytes for a client that reads
nothing). One timer a second per connection checks both. When the server stops,
a connection still open ``shutdown_abort`` seconds later is reset, so that its
answer ends quietly within uvicorn's grace instead of being cancelled with a
traceback on the terminal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import socket
import struct
import sys
import termios
from collections.abc import Iterable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BROWSER_CONNECTIONS", "CHECK_PERIOD", "MIN_PROGRESS", "GuardedProtocol", "guarded_protocol"]

#: Seconds between two checks of a connection.
CHECK_PERIOD = 1.0
#: Bytes a client must take from its answer in every ``send_timeout`` seconds (about 2 KiB/s at 30 s).
MIN_PROGRESS = 64 * 1024
#: Connections a browser opens to one server at most (6 in Chromium and Firefox), and some: an address
#: holding more (a script, or a proxy before several users) gives room first, the most holding first.
BROWSER_CONNECTIONS = 8
#: The ioctl giving the bytes still in a socket's send queue (``SIOCOUTQ``, Linux only).
_OUTQ: int | None = termios.TIOCOUTQ if sys.platform == "linux" else None
#: The client is still sending its request (or has not begun it) in these h11 states.
_CLIENT_SENDING = (h11.IDLE, h11.SEND_BODY)


class _CountedTransport(asyncio.Transport):
    """A transport counting the bytes written to it (:attr:`written`), passing everything on to ``inner``."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self.inner = inner
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self.inner.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol, resetting a connection that makes the server wait on its client too long.

    Guarantees: a connection is reset once its client has taken more than
    :attr:`request_timeout` seconds to send a request (counted from the
    connection's opening, or from the moment its previous answer was all
    delivered), or once its answer's unsent bytes have gone down by less than
    :data:`MIN_PROGRESS` for :attr:`send_timeout` seconds; never while the
    server itself is computing an answer. While the server is full, a new
    connection resets the one waiting longest for its request, or else the
    slowest answer waiting on its client for :attr:`evict_after` seconds; those of
    an address holding over :data:`BROWSER_CONNECTIONS` first. After
    :meth:`shutdown`, within :attr:`shutdown_abort` seconds.
    """

    request_timeout: float = 10.0
    send_timeout: float = 30.0
    evict_after: float = 5.0
    shutdown_abort: float = 1.5
    transport: _CountedTransport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CountedTransport(transport))
        self._waiting_since = self._progress_at = self._asked_at = self.loop.time()
        self._unsent_mark = self._taken_mark = 0
        self._dropped = False
        self._check_handle = self.loop.call_later(CHECK_PERIOD, self._check)
        self._make_room()

    def data_received(self, data: bytes) -> None:
        if self._waiting_on_client():  # a request begins: its answer's rate counts from now
            self._asked_at, self._taken_mark = self.loop.time(), self._taken()
        super().data_received(data)

    def _make_room(self) -> None:
        """While the server is full, reset the connections waiting longest for their client's request,
        or else those whose answers, long waiting on their client, go out slowest."""
        if self.limit_concurrency is None:
            return
        open_ = [other for other in self.connections if not _dropped(other)]
        excess = len(open_) - self.limit_concurrency + 1
        if excess <= 0:
            return
        now = self.loop.time()
        others = [other for other in open_ if other is not self and isinstance(other, GuardedProtocol)]
        held = collections.Counter(other._peer() for other in others)

        def excessive(other: GuardedProtocol) -> int:  # connections of its address beyond a browser's
            return max(held[other._peer()] - BROWSER_CONNECTIONS, 0)

        waiting = sorted((other for other in others if other._waiting_on_client()),
                         key=lambda other: (-excessive(other), other._waiting_since))
        slow = sorted((other for other in others if other._slow_candidate(now)),
                      key=lambda other: (-excessive(other), other._rate(now)))
        for other in (waiting + slow)[:excess]:
            other._reset()

    def _peer(self) -> str:
        """The client's address (its host, without the port)."""
        return str(self.client[0]) if self.client else ""

    def _slow_candidate(self, now: float) -> bool:
        """Whether an answer is going out and has been waiting on its client for :attr:`evict_after` s."""
        return (not self._waiting_on_client() and now - self._asked_at >= self.evict_after
                and self._unsent() > 0)

    def _rate(self, now: float) -> float:
        """Bytes per second the client took since its request began."""
        return (self._taken() - self._taken_mark) / max(now - self._asked_at, 1e-3)

    def _taken(self) -> int:
        """Bytes of answers the client took (all written, less those still unsent)."""
        return self.transport.written - self._unsent()

    def _waiting_on_client(self) -> bool:
        """Whether this connection waits for its client's next request, with no answer under way."""
        answering = self.cycle is not None and not self.cycle.response_complete
        return not answering and self.conn.their_state in _CLIENT_SENDING and not self._unsent()

    def connection_lost(self, exc: Exception | None) -> None:
        self._check_handle.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()  # the next request's time starts now
        super().on_response_complete()

    def shutdown(self) -> None:
        super().shutdown()
        self.loop.call_later(self.shutdown_abort, self._reset)

    def _check(self) -> None:
        now, unsent = self.loop.time(), self._unsent()
        if not unsent or unsent > self._unsent_mark or unsent <= self._unsent_mark - MIN_PROGRESS:
            self._progress_at, self._unsent_mark = now, unsent  # all taken, more written, or enough taken
        if unsent:
            self._waiting_since = now  # an answer is still going out: no request is due yet
        slow_request = self.conn.their_state in _CLIENT_SENDING and now - self._waiting_since > self.request_timeout
        stalled = unsent and now - self._progress_at > self.send_timeout
        if slow_request or stalled:
            self._reset()
            return
        self._check_handle = self.loop.call_later(CHECK_PERIOD, self._check)

    def _unsent(self) -> int:
        """Bytes of answers not yet taken by the client: in asyncio's buffer and in the kernel's send queue."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if _OUTQ is not None and sock is not None:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0" * 4))[0]
        return unsent

    def _reset(self) -> None:
        """Close the connection at once, with a reset: nothing it had buffered is sent."""
        self._dropped = True
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # already closed: nothing left to drop
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def _dropped(connection: Any) -> bool:
    """Whether ``connection`` was reset, and is gone but for its bookkeeping.

    A connection merely closing still counts: uvicorn closes a connection whose
    client sent no new request within 5 s (keep-alive) gracefully, its answer
    still going out, and counts it against ``limit_concurrency`` until it is gone.
    """
    if isinstance(connection, GuardedProtocol):
        return connection._dropped
    return bool(connection.transport.is_closing())


def guarded_protocol(request_timeout: float, send_timeout: float, shutdown_abort: float,
                     evict_after: float = 5.0) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class with these timeouts, for ``uvicorn.Config(http=...)``."""
    settings: dict[str, Any] = {
        "request_timeout": request_timeout, "send_timeout": send_timeout, "shutdown_abort": shutdown_abort,
        "evict_after": evict_after,
    }
    return type("GuardedProtocol", (GuardedProtocol,), settings)
