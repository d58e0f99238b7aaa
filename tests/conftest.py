"""Shared fixtures: every storage backend, and one MongoDB wire server per session.

* ``storage`` — a fresh, empty storage, parametrized over the backends
  (ids ``memory``, ``pickle``, ``mongomock``, ``mongodb``; the last is marked
  slow and talks to a real server process over the wire).
* ``mongo_uri`` — the session's MongoDB: ``$ORCHARD_TEST_MONGODB_URI`` if set,
  else a SecantusDB server started once in a temporary directory. If it
  cannot start, every test that needs it fails loudly; nothing is skipped.
* ``mongo_db_uri`` — ``mongo_uri`` pointing at a database of its own, dropped
  after the test, so tests never see each other's data.
* ``browser`` — the session's headless Chromium (one start for every page test), on a
  blank page, its console log read: a test sees what its own pages logged.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchard.storages import BaseStorage, get_storage
from orchard.testing._mongo_uri import with_database

faulthandler.enable()
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # pytest run as a background job of a non-interactive shell (``cmd &`` in a script): SIGINT was ignored,
    # and so by every process a test started, so the Ctrl-C tests timed out (or were skipped: "SIGINT has a
    # handler already"). A Python handler is not inherited through exec: they start as from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("pickle", id="pickle"),
    pytest.param("mongomock", id="mongomock"),
    pytest.param("mongodb", id="mongodb", marks=pytest.mark.slow),
]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URI for the whole session (see the module docstring)."""
    from orchard.testing import mongo_server

    uri = mongo_server.test_mongodb_uri()
    if uri:
        yield uri
        return
    with contextlib.ExitStack() as stack:
        try:
            uri = stack.enter_context(mongo_server.running_mongo_server(tmp_path_factory.mktemp("mongo")))
        except Exception as err:  # noqa: BLE001 - the server must run: fail and say why
            pytest.fail(f"could not start the SecantusDB test server ({type(err).__name__}: {err}); "
                        "install SecantusDB or set ORCHARD_TEST_MONGODB_URI", pytrace=False)
        yield uri


@pytest.fixture(scope="session")
def _mongo_admin(mongo_uri: str) -> Iterator[Any]:
    import pymongo

    client: Any = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=20000)
    yield client
    client.close()


@pytest.fixture
def mongo_db_uri(mongo_uri: str, _mongo_admin: Any) -> Iterator[str]:
    """``mongo_uri`` with a database used by this test only (dropped afterwards)."""
    database = f"orchard_test_{uuid.uuid4().hex[:12]}"
    yield with_database(mongo_uri, database)
    _mongo_admin.drop_database(database)


@pytest.fixture
def no_ambient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as current and home directory, and no ORCHARD_* variables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in list(os.environ):
        if key.startswith("ORCHARD_"):
            monkeypatch.delenv(key)
    return tmp_path


def backend_uri(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URI of a fresh, empty storage of the named backend."""
    if backend == "memory":
        return "memory://"
    if backend == "pickle":
        return str(tmp_path / "db.pkl")
    if backend == "mongomock":
        return f"mongomock://test-{uuid.uuid4().hex[:12]}"
    if backend == "mongodb":
        return str(request.getfixturevalue("mongo_db_uri"))
    raise ValueError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseStorage]:
    """A fresh, empty storage of each backend."""
    store = get_storage(backend_uri(request.param, request, tmp_path))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="session")
def _chromium() -> Iterator[Any]:
    from tests.test_dashboard_live import CHROMEDRIVER, CHROMIUM, start_chromium

    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(program):
            pytest.fail(f"{program} is missing: apt-get install -y chromium chromium-driver", pytrace=False)
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def browser(_chromium: Any) -> Any:
    """The session's Chromium (see the module docstring)."""
    _chromium.get("about:blank")
    _chromium.get_log("browser")  # what earlier tests' pages logged is theirs
    return _chromium


@pytest.fixture
def mpiexec() -> list[str]:
    """The ``mpiexec`` command to start MPI ranks with (Open MPI's: as root, more ranks than cores); the test
    is skipped where MPI or mpi4py is missing, and fails in CI, which installs both (.ci/run)."""
    found = shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs openmpi-bin and mpi4py (.ci/run): mpiexec or mpi4py is missing")
        pytest.skip("needs an MPI runtime (apt-get install openmpi-bin) and mpi4py")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=False).stdout
    open_mpi = "Open MPI" in version or "OpenRTE" in version
    return [found, *(["--allow-run-as-root", "--oversubscribe"] if open_mpi else [])]
