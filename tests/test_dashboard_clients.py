"""Clients that try to hold the dashboard: silent, slow to send, never reading (real sockets, real server process).

The server runs with timeouts of 1 s (request) and 2 s (answer; 4 s for slow readers)
instead of 10 s and 30 s, and makes room for a newcomer after 1 s instead of 5 s,
so that each case is decided within a few seconds.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SERVER = r"""
import sys
from orchard.dashboard import bind, serve
from orchard.storages import get_storage

storage = get_storage(sys.argv[1])
serve(storage, bind("127.0.0.1", 0), announce=lambda url: print(url, flush=True),
      request_timeout=float(sys.argv[2]), send_timeout=float(sys.argv[4]), evict_after=float(sys.argv[3]))
"""
#: A request for plotly.js (4.8 MB): more than the kernel's buffers hold, so an answer to a
#: client that reads nothing must wait.
BUNDLE = b"GET /static/plotly.min.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@contextlib.contextmanager
def server(tmp_path: Path, request_timeout: float = 1.0, evict_after: float = 5.0,
           send_timeout: float = 2.0) -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "o.pkl"), str(request_timeout),
                             str(evict_after), str(send_timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + (proc.stdout.read() if proc.stdout else "")
        yield found.group(0), int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def connect(port: int, send: bytes = b"", source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server must wait on it
    sock.bind((source, 0))  # another address of the loopback network (127.0.0.2) is another machine
    sock.connect(("127.0.0.1", port))
    sock.sendall(send)
    return sock


def ended_by_server(sock: socket.socket, within: float) -> tuple[bool, int]:
    """Whether the server closed or reset ``sock`` within ``within`` seconds, and the bytes read meanwhile."""
    sock.settimeout(0.2)
    deadline, received = time.monotonic() + within, 0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not data:
            return True, received
        received += len(data)
        time.sleep(0.05)  # a reader of a few hundred KiB/s at most
    return False, received


def test_silent_slow_and_non_reading_clients_are_dropped_while_others_are_served(tmp_path: Path) -> None:
    with server(tmp_path) as (url, port):
        silent = connect(port)
        slowloris = connect(port, b"GET /api/experiments HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends its head
        reads_nothing = connect(port, BUNDLE * 3)
        time.sleep(0.5)
        started = time.monotonic()
        with urllib.request.urlopen(url + "api/experiments", timeout=10) as answer:
            assert answer.status == 200  # another client is answered at once meanwhile
        assert time.monotonic() - started < 2
        for sock in (silent, slowloris):  # before: held open for as long as the client wished
            assert ended_by_server(sock, within=4)[0]
        time.sleep(3)  # the answer waits on a client that reads nothing for more than 2 s
        ended, received = ended_by_server(reads_nothing, within=10)
        assert ended and received < 1_000_000  # dropped with what the kernel held, not three bundles of 4.8 MB
        with urllib.request.urlopen(url + "static/plotly.min.js", timeout=10) as answer:
            assert len(answer.read()) > 4_000_000  # a client that reads gets the whole bundle


def test_many_connections_that_send_nothing_or_half_a_request_do_not_shut_out_other_clients(
        tmp_path: Path) -> None:
    """70 half-open connections (the server serves 64 at once) made every other client get 503 until they
    timed out, and a client reconnecting them kept it so; the ones waiting longest now make room."""
    from orchard.dashboard._server import MAX_CONNECTIONS

    with server(tmp_path, request_timeout=60.0) as (url, port), contextlib.ExitStack() as stack:
        for round_ in range(3):  # the attacker opens its connections again and again
            for number in range(MAX_CONNECTIONS + 6):
                half = b"GET /api/experiments HTTP/1.1\r\nHost: 127.0.0.1\r\n" if number % 2 else b""
                stack.enter_context(connect(port, half))
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(url + "api/experiments", timeout=10) as answer:
                    status = answer.status
            except urllib.error.HTTPError as err:
                status = err.code
            assert status == 200, f"round {round_}: {status}"  # was 503


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_a_header_sent_a_byte_at_a_time_is_dropped_while_it_still_trickles(tmp_path: Path) -> None:
    with server(tmp_path) as (url, port):
        sock = connect(port)
        head = b"GET /api/experiments HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 100
        started = time.monotonic()
        with pytest.raises(OSError):  # reset (or broken pipe) while a byte still goes every 0.2 s
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                assert time.monotonic() - started < 6, "the server kept a head trickling in for 6 s"
        sock.close()
        assert status_of(url + "api/experiments") == 200


class SlowReaders:
    """Clients each reading ``chunk`` bytes every 30 ms (2 KiB: 64 KiB/s, four times the 64 KiB per 4 s
    asked), in a thread."""

    def __init__(self, port: int, request: bytes, count: int, source: str = "127.0.0.1",
                 chunk: int = 2048) -> None:
        self.readers = [connect(port, request, source) for _ in range(count)]
        self.chunk = chunk
        for sock in self.readers:
            sock.setblocking(False)
        self.ended: set[int] = set()
        self.received = [0] * count
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)

    def read(self) -> None:
        while not self.stop.wait(0.03):
            for number, sock in enumerate(self.readers):
                if number in self.ended:
                    continue
                try:
                    data = sock.recv(self.chunk)
                    self.received[number] += len(data)
                    if not data:
                        self.ended.add(number)
                except BlockingIOError:
                    pass
                except OSError:
                    self.ended.add(number)

    def __enter__(self) -> SlowReaders:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.readers:
            sock.close()


def test_clients_reading_just_fast_enough_do_not_hold_every_connection(tmp_path: Path) -> None:
    """64 clients reading plotly.js just above the minimum rate (64 KiB per 30 s, 2 KiB/s: 40 minutes
    for the bundle) held every connection, and everyone else got 503; a newcomer now takes the place
    of the slowest of them, once they have been answered for evict_after (1 s here) seconds."""
    from orchard.dashboard._server import MAX_CONNECTIONS

    with server(tmp_path, request_timeout=60.0, evict_after=1.0, send_timeout=4.0) as (url, port), \
            SlowReaders(port, BUNDLE, MAX_CONNECTIONS - 1) as slow:  # all the connections the server answers
        time.sleep(3)
        assert not slow.ended, f"{len(slow.ended)} readers above the minimum rate were dropped with room left"
        assert status_of(url + "api/experiments") == 200  # was 503 for as long as they read
        with urllib.request.urlopen(url + "static/plotly.min.js", timeout=20) as answer:
            assert len(answer.read()) > 4_000_000  # a client reading at its own pace gets the page
        assert len(slow.ended) <= 4, "more readers were dropped than the newcomers needed"


def test_slow_readers_of_pages_of_trials_past_the_keep_alive_do_not_hold_every_connection(
        tmp_path: Path) -> None:
    """Answers of the API are written whole; 5 s on, uvicorn closes such a connection gracefully (no new
    request came), and the answer goes on out. Those closing connections were not seen as candidates
    to make room for a newcomer, yet counted against the limit: everyone else got 503."""
    from orchard.dashboard._server import MAX_CONNECTIONS
    from orchard.storages import get_storage
    from orchard.trial import Trial, TrialStatus

    storage = get_storage(str(tmp_path / "o.pkl"))
    exp_id = storage.create_experiment("big", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random"})
    now = time.time()
    storage.restore_trials(exp_id, [
        Trial(id=f"{i:032x}", experiment=exp_id, params={"x": i / 8000}, status=TrialStatus.COMPLETED,
              objective=float(i), worker="host:1:w", submit_time=now, start_time=now, end_time=now + 1,
              heartbeat=now + 1, attempts=1, reports=[(step, 1 / (1 + step)) for step in range(30)])
        for i in range(8000)])
    page = b"GET /api/experiments/big/trials?limit=8000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # about 6 MB
    with server(tmp_path, request_timeout=60.0, evict_after=1.0, send_timeout=4.0) as (url, port), \
            SlowReaders(port, page, MAX_CONNECTIONS - 1) as slow:
        deadline = time.monotonic() + 60
        while not all(slow.received):  # each answer has been written whole
            assert time.monotonic() < deadline, "the server did not answer every reader within 60 s"
            time.sleep(0.1)
        time.sleep(6)  # past uvicorn's keep-alive of 5 s: it has closed them, their answers still going out
        assert not slow.ended, f"{len(slow.ended)} readers above the minimum rate were dropped with room left"
        assert status_of(url + "api/experiments") == 200  # was 503 until they had read 6 MB each
        assert len(slow.ended) <= 4, "more readers were dropped than the newcomers needed"


def test_plotly_goes_gzipped_and_not_again_to_a_client_that_has_it(tmp_path: Path) -> None:
    """On a slow link plotly.js (4.8 MB) was the page's cost, sent whole on every load: no compression,
    and a browser revalidating its copy (If-None-Match) got all of it again."""
    with server(tmp_path) as (url, _):
        with urllib.request.urlopen(url + "static/plotly.min.js", timeout=20) as answer:
            plain = answer.read()
        zipped = urllib.request.Request(url + "static/plotly.min.js", headers={"Accept-Encoding": "gzip, br"})
        with urllib.request.urlopen(zipped, timeout=20) as answer:
            assert answer.headers["Content-Encoding"] == "gzip"
            body, etag = answer.read(), answer.headers["ETag"]
        assert len(body) < len(plain) / 2 and gzip.decompress(body) == plain
        again = urllib.request.Request(url + "static/plotly.min.js",
                                       headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(again, timeout=20)
        assert not_modified.value.code == 304 and not_modified.value.read() == b""
        plain_again = urllib.request.Request(url + "static/plotly.min.js", headers={"If-None-Match": etag})
        with urllib.request.urlopen(plain_again, timeout=20) as answer:  # its copy is the gzipped one
            assert answer.read() == plain and "Content-Encoding" not in answer.headers


def test_room_is_made_from_the_address_holding_the_most_connections(tmp_path: Path) -> None:
    """With the server full, a newcomer reset the slowest answer whoever held it: one machine holding 62
    connections pushed out the one download of another machine on a slower link."""
    from orchard.dashboard._server import MAX_CONNECTIONS

    with server(tmp_path, request_timeout=60.0, evict_after=1.0, send_timeout=4.0) as (url, port), \
            SlowReaders(port, BUNDLE, MAX_CONNECTIONS - 2) as many, \
            SlowReaders(port, BUNDLE, 1, source="127.0.0.2", chunk=1024) as other:  # half their pace
        time.sleep(3)
        newcomer = connect(port, b"GET /api/experiments HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        newcomer.settimeout(10)
        assert newcomer.recv(12) == b"HTTP/1.1 200"
        newcomer.close()
        time.sleep(0.5)
        assert not other.ended, "the one connection of 127.0.0.2 was reset to make room"  # was: slowest
        assert 1 <= len(many.ended) <= 2


def test_a_flood_of_malformed_requests_does_not_flood_the_terminal(tmp_path: Path) -> None:
    """uvicorn printed one warning per malformed request: 300 lines for 300 requests, enough to fill a
    pipe nobody reads, where the server then blocks writing; one per minute shows now, with the count."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "o.pkl"), "1.0", "5.0", "2.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        port = int(re.search(r":(\d+)/", proc.stdout.readline()).group(1))  # type: ignore[union-attr]
        for _ in range(300):
            with connect(port, b"NOT HTTP AT ALL\r\n\r\n") as sock:
                sock.settimeout(10)
                assert sock.recv(100).startswith(b"HTTP/1.1 400")
        assert status_of(f"http://127.0.0.1:{port}/api/experiments") == 200
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert output.count("Invalid HTTP request received") == 1, output[:2000]
