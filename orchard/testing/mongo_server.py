"""A MongoDB wire-protocol server for tests, started and stopped around a block.

There is rarely a ``mongod`` on a developer machine or CI runner, so tests use
SecantusDB (a pip-installable server speaking the MongoDB wire protocol, on
WiredTiger) run as a separate process. It is correct under contention but slow
(tens of operations per second with several processes racing): keep trial
counts small in tests that use it. Set ``ORCHARD_TEST_MONGODB_URI`` to run the
same tests against a real ``mongod`` instead::

    ORCHARD_TEST_MONGODB_URI=mongodb://localhost:27017/orchard_test pytest -m slow

Typical fixture::

    @pytest.fixture(scope="session")
    def mongodb_uri(tmp_path_factory):
        with mongodb_for_tests(tmp_path_factory.mktemp("mongo")) as uri:
            yield uri
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ENV_VAR", "WireServer", "mongodb_for_tests", "running_mongo_server", "test_mongodb_uri"]

#: Environment variable naming a real MongoDB server to test against.
ENV_VAR = "ORCHARD_TEST_MONGODB_URI"

_LISTENING = re.compile(r"secantus listening on (?P<host>[^\s:]+):(?P<port>\d+)")


def test_mongodb_uri() -> str | None:
    """Return the URI in ``ORCHARD_TEST_MONGODB_URI`` (a real server), or ``None``."""
    return os.environ.get(ENV_VAR) or None


test_mongodb_uri.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect


class WireServer:
    """A SecantusDB server process that a test can kill and start again on the same port and data.

    Used by the outage tests: :meth:`kill` takes the server down at once
    (SIGKILL by default, as a crash would), :meth:`pause` freezes it with its
    connections open, :meth:`start` brings it back on
    the port it had and the data directory it wrote. Each start logs to a new
    file in the server's directory.

    Args:
        tmpdir: a directory under which the server's data and logs are kept.
        database: the database named in :attr:`uri`.
        startup_timeout: seconds to wait for the server to listen.
        durable: flush the server's log on every commit (``--sync-on-commit``), as a
            journaled ``mongod`` does for acknowledged writes; without it a
            SIGKILL loses the writes since the last checkpoint.
    """

    def __init__(self, tmpdir: str | os.PathLike[str], *, database: str = "orchard_test",
                 startup_timeout: float = 60.0, durable: bool = False) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="secantus-", dir=tmpdir))
        self.database = database
        self.startup_timeout = startup_timeout
        self.durable = durable
        self.host, self.port = "127.0.0.1", "0"
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def uri(self) -> str:
        """``mongodb://HOST:PORT/DATABASE`` (the port is known after the first :meth:`start`)."""
        return f"mongodb://{self.host}:{self.port}/{self.database}"

    def start(self) -> str:
        """Start the server (on the port it had, if it ran before) and return :attr:`uri`.

        Raises:
            RuntimeError: the server exited or did not listen in time; the
                message quotes the end of its log.
        """
        self._starts += 1
        log_path = self.home / f"server-{self._starts}.log"
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "secantus", "--host", self.host, "--port", self.port,
                 "--storage-path", str(self.home / "data"), "--log-level", "INFO",
                 *(["--sync-on-commit"] if self.durable else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.host, self.port = _wait_listening(self._process, log_path, self.startup_timeout)
        return self.uri

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the server and wait for it to exit."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait()

    def pause(self, paused: bool = True) -> None:
        """Freeze the server (SIGSTOP: its connections stay open, nothing answers), or go on (SIGCONT)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
            stat, deadline = Path(f"/proc/{self._process.pid}/stat"), time.monotonic() + 10
            while paused and stat.exists() and stat.read_text().rpartition(")")[2].split()[0] != "T":
                if time.monotonic() > deadline:  # a signal is delivered at once: this is a stuck machine
                    raise RuntimeError(f"the SecantusDB test server (pid {self._process.pid}) did not stop")
                time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after 10 s); idempotent."""
        if self._process is not None:
            _stop(self._process, (self.host, int(self.port)))

    def __enter__(self) -> WireServer:  # noqa: PYI034 - Self needs Python 3.11
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_mongo_server(
    tmpdir: str | os.PathLike[str], *, database: str = "orchard_test", startup_timeout: float = 60.0
) -> Iterator[str]:
    """Run a SecantusDB server for the duration of the block and yield its URI.

    The server runs as a separate process (``sys.executable -m secantus``) on
    an OS-assigned port of 127.0.0.1, with its data and log in a fresh
    directory under ``tmpdir``. On exit it is sent SIGTERM and waited for,
    then killed if it does not stop within 10 s.

    Args:
        tmpdir: a directory for the server's data and log.
        database: the database named in the yielded URI.
        startup_timeout: seconds to wait for the server to listen.

    Yields:
        ``mongodb://127.0.0.1:PORT/DATABASE``.

    Raises:
        RuntimeError: the server exited or did not listen in time; the
            message quotes the end of its log.
    """
    with WireServer(tmpdir, database=database, startup_timeout=startup_timeout) as server:
        yield server.uri


def _wait_listening(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> tuple[str, str]:
    """Poll the server's log for its listening line (it logs to stderr)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        match = _LISTENING.search(text)
        if match:
            return match["host"], match["port"]
        if process.poll() is not None:
            raise RuntimeError(
                f"the SecantusDB test server exited with code {process.returncode} before "
                f"listening; end of {log_path}:\n{text[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the SecantusDB test server did not listen within {timeout:.0f} s; "
                f"end of {log_path}:\n{text[-2000:]}"
            )
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], address: tuple[str, int]) -> None:
    """SIGTERM, then SIGKILL after 10 s.

    SecantusDB's stop closes its listening socket, then waits 2 s for its accept loop, which
    stays blocked in ``accept`` until a connection comes: once the socket is closed (on Linux,
    where ``/proc`` shows it), one connection ends that wait. Not before: one that comes as the
    server handles the signal can leave it waiting for ever.
    """
    if process.poll() is not None:
        return
    listening = _listening_socket(address[1])
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        if listening is not None and not _holds(process.pid, listening):
            with contextlib.suppress(OSError):
                socket.create_connection(address, timeout=0.2).close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.05)
    if process.poll() is None:
        process.kill()
        process.wait()


def _listening_socket(port: int) -> str | None:
    """``socket:[INODE]``, the listening TCP socket on ``port`` (``None`` without Linux's ``/proc``)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    return f"socket:[{fields[9]}]"
    return None


def _holds(pid: int, target: str) -> bool:
    """Whether process ``pid`` has a file descriptor open on ``target`` (as ``/proc/PID/fd`` shows it)."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
        return False
    return True  # unreadable: as if still open (no connection is made)


@contextlib.contextmanager
def mongodb_for_tests(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """Yield ``ORCHARD_TEST_MONGODB_URI`` if set, else the URI of a SecantusDB server run for the block."""
    uri = test_mongodb_uri()
    if uri is not None:
        yield uri
        return
    with running_mongo_server(tmpdir) as uri:
        yield uri
