"""Binding the socket and running the dashboard under uvicorn until Ctrl-C."""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable

from orchard.dashboard._views import StorageView
from orchard.errors import ConfigurationError
from orchard.storages.base import BaseStorage

__all__ = [
    "EVICT_AFTER", "MAX_CONNECTIONS", "REQUEST_TIMEOUT", "SEND_TIMEOUT", "SHUTDOWN_GRACE", "bind",
    "REPEAT_PERIOD", "RepeatedWarnings", "is_loopback", "serve", "url_of",
]

#: Seconds Ctrl-C (or SIGTERM) waits for responses under way before closing their connections:
#: a client that stopped reading (a stalled download of plotly.js) would otherwise hold the server.
SHUTDOWN_GRACE = 2
#: Seconds a client has to send a whole request (after connecting, or after its previous answer).
REQUEST_TIMEOUT = 10.0
#: Seconds in which a client must take 64 KiB of its answer (MIN_PROGRESS), or its connection is reset.
SEND_TIMEOUT = 30.0
#: Seconds between two showings of one warning of the server's (a malformed request, a 503).
REPEAT_PERIOD = 60.0
#: Connections served at once; beyond, the one waiting longest for its request is dropped, or else the
#: slowest answer waiting on its client for EVICT_AFTER seconds, and new requests get 503 only if
#: every connection is being computed or taken fast or briefly. With the two timeouts it bounds the
#: memory clients can hold (at most one answer each: a page of trials is a few MiB).
MAX_CONNECTIONS = 64
#: Seconds an answer waits on its client before, the server being full, it may be reset for a newcomer
#: (the slowest such answer is): a client cannot hold a connection by reading just fast enough.
EVICT_AFTER = 5.0


class RepeatedWarnings(logging.Filter):
    """Lets a warning through once per ``period`` seconds, saying then how many like it were not shown.

    uvicorn warns once per malformed request ("Invalid HTTP request received.") and
    per request refused as the server is full: a client sending thousands of them
    would flood the terminal, or fill a pipe nobody reads until the server blocks
    writing to it. Errors (an exception in the application) all go through.
    """

    def __init__(self, period: float = REPEAT_PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period, self.clock = period, clock
        self.shown: dict[str, tuple[float, int]] = {}  # message -> when last shown, how many hidden since

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        message, now = record.getMessage(), self.clock()
        shown_at, hidden = self.shown.get(message, (-math.inf, 0))
        if now - shown_at < self.period:
            self.shown[message] = (shown_at, hidden + 1)
            return False
        if len(self.shown) >= 1000:  # messages holding a client's text: forget the old ones
            self.shown.clear()
        self.shown[message] = (now, 0)
        if hidden:
            record.msg = f"{message} (and {hidden} more in {now - shown_at:.0f} s, not shown)"
            record.args = ()
        return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``127.0.0.1``, ``::1``, ``[::1]``, ``localhost``)."""
    host = _unbracketed(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unbracketed(host: str) -> str:
    """``::1`` for ``[::1]``: an IPv6 address as written in a URL is still the address."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


_BIND_HINTS = {  # what to do when the kernel refuses the address, by errno
    errno.EADDRINUSE: "another program (another orchard serve?) listens there; give another --port, or --port 0 "
                      "for any free port",
    errno.EACCES: "ports below 1024 need privileges; give a --port from 1024 up, or --port 0 for any free port",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address; give 127.0.0.1, 0.0.0.0 or one of its "
                         "addresses",
}


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one).

    Raises:
        ConfigurationError: ``port`` is not a TCP port (0 to 65535), or ``host`` is neither an
            address nor a name this machine resolves (a scheme or a port written into it, a typo).
            Or the address cannot be bound (in use, not this machine's, a port below 1024).
    """
    if not 0 <= port <= 65535:  # the kernel would take it modulo 65536: another port, silently
        raise ConfigurationError(f"--port {port} is not a TCP port; give 1 to 65535, or 0 for any free port")
    try:
        found = socket.getaddrinfo(_unbracketed(host), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:  # UnicodeError: a label of 64+ characters, an empty one
        reason = err.strerror if isinstance(err, socket.gaierror) else None
        raise ConfigurationError(
            f"cannot listen on --host {host!r}: {reason or 'it is not a valid host name'}; give an address "
            "(127.0.0.1, ::1, 0.0.0.0) or a name of this machine, with no scheme and no port (the port is --port)"
        ) from err
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        hint = _BIND_HINTS.get(err.errno or 0, "give another --host or --port")
        raise ConfigurationError(f"cannot listen on {host}:{port}: {err.strerror or err}; {hint}") from err
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT/`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    storage: BaseStorage,
    sock: socket.socket,
    announce: Callable[[str], None] = print,
    min_interval: float = 0.5,
    allowed_hosts: Iterable[str] = (),
    request_timeout: float = REQUEST_TIMEOUT,
    send_timeout: float = SEND_TIMEOUT,
    evict_after: float = EVICT_AFTER,
) -> None:
    """Serve the dashboard of ``storage`` on ``sock`` until interrupted (SIGINT/SIGTERM).

    Once interrupted, responses under way get :data:`SHUTDOWN_GRACE` seconds to finish. A client
    cannot hold the server: see :mod:`orchard.dashboard._connections`.

    Args:
        storage: the storage to show; it is only read.
        sock: a socket from :func:`bind`.
        announce: called once with the URL, after the app is built and before serving.
        min_interval: seconds a folded experiment is served before the storage is asked again.
        allowed_hosts: host names answered besides ``localhost``, ``127.0.0.1`` and ``::1``
            (the ``--host`` listened on and every ``--allowed-host``); any other ``Host`` gets 400.
        request_timeout: seconds a client has to send a request before its connection is dropped.
        send_timeout: seconds an answer may wait on a client that does not read it.
        evict_after: seconds an answer may wait on its client before, the server being full, the
            slowest such answer is reset to make room for a new connection.

    Raises:
        ConfigurationError: plotly's bundle is missing.
    """
    import uvicorn

    from orchard.dashboard._app import build_app
    from orchard.dashboard._connections import guarded_protocol

    app = build_app(StorageView(storage, min_interval=min_interval), allowed_hosts)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE, limit_concurrency=MAX_CONNECTIONS,
                            http=guarded_protocol(request_timeout, send_timeout, SHUTDOWN_GRACE - 0.5,
                                                  evict_after))
    server_log = logging.getLogger("uvicorn.error")  # after Config set the logging up
    if not any(isinstance(known, RepeatedWarnings) for known in server_log.filters):
        server_log.addFilter(RepeatedWarnings())
    server = uvicorn.Server(config)
    announce(url_of(sock))
    server.run(sockets=[sock])
