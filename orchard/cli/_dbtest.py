"""``orchard db test``: check a storage end to end and time each step.

The check works on a throw-away experiment ``_orchard_db_test_<random>``,
deleted at the end whatever happens. A pickle file that does not exist yet is
not created: the check runs on a file of its own beside it, in the same folder
(``PATH.db-test-<random>``, removed at the end), so that a worker creating the
named file meanwhile never has it removed under it. A second handle, obtained by pickling the
first (as executors do), plays a competing worker.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from orchard.errors import ConfigurationError, OrchardError, ReservationLostError, StorageError
from orchard.storages import BaseStorage, get_storage

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["check_storage"]

_CONFIG = {"space": {"x": "uniform(0.0, 1.0)"}, "algorithm": {"random": {}}, "max_trials": 1,
           "max_broken": 3, "heartbeat": 30.0, "seed": None, "working_dir": None}


class _Step:
    """Times one step and turns its failure into one StorageError naming the step."""

    def __init__(self, name: str, uri: str) -> None:
        self.name, self.uri, self.detail = name, uri, ""

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        return self

    def __exit__(self, kind: object, err: BaseException | None, tb: object) -> None:
        self.ms = (time.perf_counter() - self.start) * 1000
        if isinstance(err, (OrchardError, OSError, AssertionError)):  # a bad URI stays one: exit 2
            failed = ConfigurationError if isinstance(err, ConfigurationError) else StorageError
            raise failed(f"db test failed at step {self.name!r} on {self.uri}: {err}") from err

    @property
    def line(self) -> str:
        return f"  {self.name:<9} {self.ms:9.1f} ms  ok  {self.detail}"


def check_storage(open_storage: Callable[[], BaseStorage]) -> Iterator[str]:
    """Run the checks, yielding one line per step; raise :class:`StorageError` at the first failure.

    Args:
        open_storage: opens the storage under test (timed as the connect step).
    """
    with _Step("open", "the storage") as opened:
        storage = open_storage()
        opened.detail = "(includes loading the backend's modules)"
    uri = storage.redacted_uri
    path = getattr(storage, "path", None)  # a file-based storage: remove it again if the test creates it
    fresh_file = None
    if isinstance(path, str) and not os.path.exists(path):
        # test a file of its own beside it: removing the named file afterwards threw away the experiments
        # of a worker that created it meanwhile (a hunt started as the test ran)
        fresh_file = f"{path}.db-test-{uuid.uuid4().hex[:8]}"
        storage.close()
        storage = get_storage(storage.uri.replace(path, fresh_file, 1))
    fresh_dirs = _missing_folders(os.path.dirname(os.path.abspath(fresh_file))) if fresh_file else []
    with _Step("connect", uri) as step:
        count = len(storage.list_experiments())
        step.detail = f"{count} experiment(s) found"
    yield f"storage {uri} ({type(storage).__name__})"
    yield opened.line
    yield step.line
    name = f"_orchard_db_test_{uuid.uuid4().hex[:8]}"
    experiment_id = None
    try:
        with _Step("write", uri) as step:
            experiment_id = storage.create_experiment(name, _CONFIG)
            storage.register_trial(experiment_id, {"x": 0.5})
            step.detail = "created a test experiment and a new trial"
        yield step.line
        yield from _races(storage, experiment_id, uri)
    finally:
        if experiment_id is not None:
            with _Step("cleanup", uri) as step:
                storage.delete_experiment(experiment_id)
                step.detail = f"deleted {name}"
                if fresh_file is not None:
                    storage.close()
                    for leftover in (fresh_file, f"{fresh_file}.lock"):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(leftover)
                    for folder in fresh_dirs:  # deepest first; one something else was put in meanwhile stays
                        with contextlib.suppress(OSError):
                            os.rmdir(folder)
                    step.detail += f" and the test file {fresh_file} it created beside {path}"
    yield step.line
    yield "all checks passed"


def _missing_folders(folder: str) -> list[str]:
    """The folders of ``folder``'s path that do not exist yet, deepest first (the test's file would make them)."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _races(storage: BaseStorage, experiment_id: str, uri: str) -> Iterator[str]:
    with _Step("reopen", uri) as step:
        other = pickle.loads(pickle.dumps(storage))
        step.detail = "a second handle reconnected by URI"
    yield step.line
    with _Step("reserve", uri) as step:
        won = storage.reserve_trial(experiment_id, "db-test-a")
        lost = other.reserve_trial(experiment_id, "db-test-b")
        assert won is not None and lost is None, "both handles reserved, or neither did"
        step.detail = "exactly one of two workers reserved the trial"
    yield step.line
    with _Step("lock", uri) as step:
        try:
            other.complete_trial(won.id, "db-test-b", 1.0)
        except ReservationLostError:
            pass
        else:
            raise AssertionError("a worker that does not own the trial completed it")
        storage.heartbeat_trial(won.id, "db-test-a")
        storage.complete_trial(won.id, "db-test-a", 0.25)
        step.detail = "the owner's writes pass, another worker's are refused"
    yield step.line
    with _Step("read", uri) as step:
        trials = other.fetch_trials(experiment_id)
        assert [t.objective for t in trials] == [0.25], f"read back {trials!r}"
        step.detail = "the second handle sees the completed trial"
    yield step.line
