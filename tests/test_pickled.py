"""The pickle-file storage: format, crash safety, locks, compaction, hostile files.

Multi-process tests use real processes (spawn context) and SIGKILL; they are
marked ``slow``.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import pickle
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from orchard.cli import main
from orchard.errors import (
    ConfigurationError,
    ExperimentNotFoundError,
    ReservationLostError,
    StorageCorruptedError,
    StorageError,
    StorageUnavailableError,
)
from orchard.storages import get_storage
from orchard.storages.pickled import PickledStorage, fileformat
from orchard.storages.pickled.locks import KernelLock, SoftLock
from orchard.trial import TrialStatus

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")
WAIT = 60.0  # generous bound on a child getting ready (spawn imports take a while on loaded CI)


# -- helpers ------------------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    """A frame built from the documented layout (independently of the module's encoder)."""
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _generation(path: Path) -> bytes:
    return fileformat.decode_header(path.read_bytes()[: fileformat.HEADER_SIZE], str(path)).generation


def _scan_file(path: Path) -> fileformat.Scan:
    data = path.read_bytes()
    return fileformat.scan(data[fileformat.HEADER_SIZE :], fileformat.HEADER_SIZE, str(path))


def _populate(storage: PickledStorage, n: int, name: str = "exp") -> str:
    """An experiment with ``n`` trials in a mix of statuses."""
    exp_id = storage.create_experiment(name, {"space": {"x": "uniform(0, 1)"}})
    for i in range(n):
        trial = storage.register_trial(exp_id, {"x": i / n}, worker="w1")
        if i % 4 == 0:
            storage.complete_trial(trial.id, "w1", float(i), {"i": i})
        elif i % 4 == 1:
            storage.fail_trial(trial.id, "w1", {"type": "ValueError", "message": "no"})
        elif i % 4 == 2:
            storage.release_trial(trial.id, "w1")
    return exp_id


def counting_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each call of ``fileformat.scan`` decodes from now on (what a process reads of a file)."""
    scanned: list[int] = []
    scan = fileformat.scan

    def counting(data: bytes, start: int, name: str, lazy: bool = False) -> fileformat.Scan:
        scanned.append(len(data))
        return scan(data, start, name, lazy)

    monkeypatch.setattr(fileformat, "scan", counting)
    return scanned


def counting_builds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The records each trial built from a stored record from now on was built from (what a process decoded)."""
    from orchard.trial import Trial

    built: list[dict[str, Any]] = []
    from_record = Trial.from_record

    def counting(data: dict[str, Any]) -> Trial:
        built.append(data)
        return from_record(data)

    monkeypatch.setattr(Trial, "from_record", counting)
    return built


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "orchard.pkl"


# -- opening, URIs, pickling ------------------------------------------------------------


def test_uri_forms_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    plain = get_storage("runs/a.pkl")
    assert isinstance(plain, PickledStorage)
    assert plain.path == str(tmp_path / "runs" / "a.pkl")
    assert not (tmp_path / "runs").exists()
    plain.create_experiment("exp", {})
    assert (tmp_path / "runs").is_dir()  # parent directories are created by the first write
    relative = get_storage("pickle://rel/b.pkl")
    assert relative.path == str(tmp_path / "rel" / "b.pkl")  # type: ignore[attr-defined]
    absolute = get_storage(f"pickle://{tmp_path}/abs/c.pkl?lock=soft&timeout=5")
    assert absolute.path == str(tmp_path / "abs" / "c.pkl")  # type: ignore[attr-defined]
    assert absolute.uri == f"pickle://{tmp_path}/abs/c.pkl?lock=soft&timeout=5"
    assert get_storage(absolute.uri).uri == absolute.uri
    assert plain.uri == f"pickle://{tmp_path}/runs/a.pkl"
    for bad in ("pickle://x.pkl?lock=nfs", "pickle://x.pkl?timeout=soon", "pickle://x.pkl?colour=red", "pickle://"):
        with pytest.raises(ConfigurationError):
            get_storage(bad)
    with pytest.raises(ConfigurationError):
        PickledStorage(tmp_path / "d.pkl", timeout=0)
    for unexpanded in ("$SCRATCH/e.pkl", "runs/${JOB}/e.pkl"):  # from a config file: a "$SCRATCH" folder was made
        with pytest.raises(ConfigurationError, match="which nothing expanded"):
            get_storage(unexpanded)
    assert not any(tmp_path.glob("*$*"))


def test_reads_do_not_create_the_file(path: Path) -> None:
    storage = PickledStorage(path)
    assert storage.get_experiment("nope") is None
    assert storage.list_experiments() == [] and storage.get_experiment("exp") is None
    with pytest.raises(ExperimentNotFoundError):
        storage.fetch_trials("nope")
    assert not path.exists()
    storage.create_experiment("exp", {})
    assert path.exists()


def test_round_trip_between_two_storage_objects(path: Path) -> None:
    first, second = PickledStorage(path), PickledStorage(path)
    exp_id = first.create_experiment("exp", {"max_trials": 3})
    assert second.create_experiment("exp", {"ignored": True}) == exp_id
    registered = first.register_trial(exp_id, {"x": 1})
    reserved = second.reserve_trial(exp_id, "w2")
    assert reserved is not None and reserved.id == registered.id
    with pytest.raises(ReservationLostError):
        first.complete_trial(registered.id, "w1", 0.5)
    second.complete_trial(registered.id, "w2", 0.5, {"loss": 0.5})
    assert first.get_trial(registered.id).status is TrialStatus.COMPLETED  # type: ignore[union-attr]
    first.update_experiment(exp_id, {"max_trials": 5})
    assert second.get_experiment("exp").config == {"max_trials": 5}  # type: ignore[union-attr]
    first.close()
    second.close()
    reopened = PickledStorage(path)
    assert reopened.fetch_trials(exp_id) == first.fetch_trials(exp_id)
    assert reopened.best_trial(exp_id).objective == 0.5  # type: ignore[union-attr]
    assert reopened.delete_experiment(exp_id) == 1
    assert first.list_experiments() == []


def test_fetch_changes_cursor(path: Path) -> None:
    writer, reader = PickledStorage(path), PickledStorage(path)
    exp_id = writer.create_experiment("exp", {})
    a = writer.register_trial(exp_id, {"x": 1})
    changed, cursor = reader.fetch_changes(exp_id)
    assert [t.id for t in changed] == [a.id]
    assert reader.fetch_changes(exp_id, cursor)[0] == []
    b = writer.register_trial(exp_id, {"x": 2})
    writer.reserve_trial(exp_id, "w")
    changed, cursor = reader.fetch_changes(exp_id, cursor)
    assert sorted(t.id for t in changed) == sorted([a.id, b.id])
    assert pickle.loads(pickle.dumps(cursor)) == cursor
    # a cursor issued by another storage object means nothing here: everything comes back
    _, foreign = writer.fetch_changes(exp_id)
    assert len(reader.fetch_changes(exp_id, foreign)[0]) == 2


def test_threads_share_one_storage(path: Path) -> None:
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {})
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(40):
                trial = storage.register_trial(exp_id, {"k": k, "i": i}, worker=f"t{k}")
                storage.heartbeat_trial(trial.id, f"t{k}")
                storage.complete_trial(trial.id, f"t{k}", float(i))
        except Exception as err:  # noqa: BLE001  # pragma: no cover - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert PickledStorage(path).count_trials(exp_id)[TrialStatus.COMPLETED] == 160


def test_non_plain_values_are_refused_and_nothing_is_written(path: Path) -> None:
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {})
    trial = storage.register_trial(exp_id, {"x": 1}, worker="w")
    size = path.stat().st_size
    with pytest.raises(StorageError, match="only plain values"):
        storage.complete_trial(trial.id, "w", 1.0, {"when": datetime.datetime.now()})
    assert path.stat().st_size == size
    assert storage.get_trial(trial.id).status is TrialStatus.RESERVED  # type: ignore[union-attr]
    assert storage.complete_trial(trial.id, "w", 1.0, {"when": "today"}).results == {"when": "today"}


def test_os_errors_are_translated_and_name_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="a-file"):
        PickledStorage(blocker / "orchard.pkl")
    with pytest.raises(StorageError, match="directory"):
        PickledStorage(tmp_path)
    fifo = tmp_path / "fifo.pkl"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="not a regular file"):
        PickledStorage(fifo)


def test_symlinked_path_stays_a_symlink(tmp_path: Path) -> None:
    target, link = tmp_path / "real" / "orchard.pkl", tmp_path / "link.pkl"
    target.parent.mkdir()
    link.symlink_to(target)
    storage = PickledStorage(link, compact_bytes=1024)
    exp_id = _populate(storage, 20)  # compacts several times
    assert link.is_symlink() and len(PickledStorage(target).fetch_trials(exp_id)) == 20


def test_a_hard_linked_file_is_refused_by_either_name(tmp_path: Path) -> None:
    """Two names for one file took two lock files: writers through each interleaved their frames."""
    first, second = tmp_path / "a.pkl", tmp_path / "b.pkl"
    running = PickledStorage(first)
    exp_id = _populate(running, 3)
    os.link(first, second)  # while a process uses the file
    for name in (first, second):  # no process opens it any more, by either name
        with pytest.raises(StorageError, match="has 2 hard links"):
            PickledStorage(name)
    running.register_trial(exp_id, {"x": 0.5}, worker="w1")  # a running worker is not failed (its result kept)
    second.unlink()
    assert len(PickledStorage(first).fetch_trials(exp_id)) == 4  # one name again: usable, nothing lost


def test_a_lock_file_deleted_under_its_holder_never_lets_two_writers_in(path: Path) -> None:
    """Deleting PATH.lock while a process held it let the next one lock a new file: both appended at one offset."""
    holder, other = PickledStorage(path), PickledStorage(path)
    exp_id = holder.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})
    other.fetch_trials(exp_id)

    def verb_while_the_lock_file_is_deleted(table: Any, now: float) -> Any:
        os.unlink(f"{path}.lock")  # e.g. `rm *.lock` under running workers
        other.register_trial(exp_id, {"x": 0.9}, worker="w2")  # takes a new lock file: returns, stored
        return table.register_trial(exp_id, {"x": 0.1}, "w1", None, now, None)

    with pytest.raises(StorageUnavailableError, match="lock file .* was deleted or replaced"):
        holder._write(verb_while_the_lock_file_is_deleted)
    holder.register_trial(exp_id, {"x": 0.1}, worker="w1")  # a retry, under the new lock file
    fresh = PickledStorage(path)
    assert sorted(t.params["x"] for t in fresh.fetch_trials(exp_id)) == [0.1, 0.9]
    assert fresh.check().clean


@pytest.mark.parametrize("restore", ["copied over", "renamed over"])
def test_a_trial_missing_from_a_restored_file_is_a_lost_reservation(path: Path, restore: str) -> None:
    """A worker's write to a trial an older copy lacks said only "no trial with id …", and killed the worker."""
    worker = PickledStorage(path)
    exp_id = worker.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})
    older = path.read_bytes()
    held = worker.register_trial(exp_id, {"x": 0.5}, worker="w1")
    if restore == "copied over":  # `cp backup.pkl orchard.pkl`: the same file, rewritten shorter
        path.write_bytes(older)
    else:  # a restore tool writing a new file and renaming it over the old one
        (path.parent / "restored").write_bytes(older)
        os.replace(path.parent / "restored", path)
    with pytest.raises(ReservationLostError, match=f"no trial with id '{held.id}'.*was (replaced|truncated)"):
        worker.complete_trial(held.id, "w1", 1.0)
    with pytest.raises(ReservationLostError):
        worker.heartbeat_trial(held.id, "w1")
    assert worker.fetch_trials(exp_id) == []


def test_a_worker_whose_experiment_is_deleted_is_told_so(path: Path) -> None:
    """`orchard db rm` under running workers: they died with a bare "no trial with id …"."""
    worker, admin = PickledStorage(path), PickledStorage(path)
    exp_id = worker.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})
    held = worker.register_trial(exp_id, {"x": 0.5}, worker="w1")
    admin.delete_experiment(exp_id)
    deleted = "experiment 'exp' .* was deleted from the storage"
    with pytest.raises(StorageError, match=f"no trial with id '{held.id}' in the storage: {deleted}"):
        worker.complete_trial(held.id, "w1", 1.0)
    with pytest.raises(ExperimentNotFoundError, match=deleted):
        worker.reserve_trial(exp_id, "w1")


@pytest.mark.timeout(60)
def test_workers_go_on_after_their_file_is_restored_from_an_older_copy(path: Path) -> None:
    """The trials the older copy lacks are forgotten: a vanished reserved trial looked held forever (a hang)."""
    import orchard

    exp = orchard.build_experiment("exp", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=2,
                                   storage=str(path))
    older = path.read_bytes()  # the experiment, no trial yet
    calls: list[float] = []

    def objective(x: float) -> float:
        calls.append(x)
        if len(calls) == 2:
            path.write_bytes(older)  # restored under the worker, while it evaluates its second trial
        return x

    done = threading.Thread(target=exp.workon, args=(objective,), kwargs={"executor": "single"}, daemon=True)
    done.start()
    done.join(timeout=30)
    assert not done.is_alive(), "the worker waited forever for trials the restored file does not have"
    statuses = [t.status for t in PickledStorage(path).fetch_trials(exp.id)]
    assert statuses == [TrialStatus.COMPLETED] * 2 and len(calls) == 4


def _count_flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    flushed: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        flushed.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return flushed


def test_writes_are_flushed_to_disk_by_default_once_each(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = get_storage(str(path))
    assert get_storage(f"pickle://{path}?fsync=1").uri == storage.uri == f"pickle://{path}"  # the default
    exp_id = storage.create_experiment("exp", {})
    flushed = _count_flushes(monkeypatch)
    trial = storage.register_trial(exp_id, {"x": 1}, worker="w")
    storage.complete_trial(trial.id, "w", 1.0)
    storage.fetch_trials(exp_id)
    assert storage.reserve_trial(exp_id, "w") is None
    assert len(flushed) == 2, "one flush per write that returns, none for reads"


def test_fsync_opt_out(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = get_storage(f"pickle://{path}?fsync=0")
    assert storage.uri.endswith("?fsync=0")
    exp_id = storage.create_experiment("exp", {})
    flushed = _count_flushes(monkeypatch)
    storage.register_trial(exp_id, {"x": 1})
    assert not flushed
    assert len(PickledStorage(path).fetch_trials(exp_id)) == 1


@pytest.mark.parametrize("complete", [True, False])
def test_write_interrupted_mid_append(path: Path, monkeypatch: pytest.MonkeyPatch, complete: bool) -> None:
    """A frame fully written before an interruption stays (readers may have seen it); a partial one goes."""
    writer, reader = PickledStorage(path), PickledStorage(path)
    exp_id = writer.create_experiment("exp", {})
    real = fileformat.pwrite_all

    def write_then_interrupt(fd: int, data: bytes, offset: int) -> None:
        real(fd, data if complete else data[: len(data) // 2], offset)
        reader.fetch_trials(exp_id)  # a lock-free reader replays meanwhile
        raise KeyboardInterrupt

    monkeypatch.setattr(fileformat, "pwrite_all", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer.register_trial(exp_id, {"x": 1})
    monkeypatch.undo()
    expected = 1 if complete else 0
    assert len(reader.fetch_trials(exp_id)) == len(writer.fetch_trials(exp_id)) == expected
    writer.register_trial(exp_id, {"x": 2})
    assert len(reader.fetch_trials(exp_id)) == len(PickledStorage(path).fetch_trials(exp_id)) == expected + 1
    assert _scan_file(path).damaged == []


# -- hostile and damaged files ------------------------------------------------------


@pytest.mark.parametrize("content", [os.urandom(4096), pickle.dumps({"my": "own data"}), b"x"])
def test_foreign_file_is_refused_and_left_untouched(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(StorageCorruptedError) as info:
        PickledStorage(path)
    assert str(path) in str(info.value) and "not an Orchard storage file" in str(info.value)
    assert path.read_bytes() == content


def test_file_turned_foreign_is_not_overwritten(path: Path) -> None:
    storage = PickledStorage(path)
    content = pickle.dumps(["someone", "else's", "pickle"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(StorageCorruptedError, match="not an Orchard storage file"):
        storage.create_experiment("exp", {})
    with pytest.raises(StorageCorruptedError):
        storage.get_experiment("exp")
    assert path.read_bytes() == content


def test_empty_file_is_initialised(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    storage = PickledStorage(path)
    storage.create_experiment("exp", {})
    assert path.read_bytes().startswith(fileformat.MAGIC)


class _Evil:
    """Unpickling this runs a shell command: what a tampered record would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("followed_by_more", [False, True])
def test_tampered_record_never_runs_code(
    path: Path, tmp_path: Path, followed_by_more: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame that refers to a function is a damaged record: skipped, reported, never executed."""
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {})
    kept = storage.register_trial(exp_id, {"x": 0.5})
    marker = tmp_path / "pwned"
    evil = pickle.dumps([{"op": "trial", "trial": _Evil(marker)}], protocol=5)
    with path.open("ab") as f:
        f.write(_frame(evil))
    if followed_by_more:
        with path.open("ab") as f:
            f.write(_frame(pickle.dumps([{"op": "experiment", "record": {
                "id": "e2", "name": "after", "config": {}, "created": 1.0}}], protocol=5)))
    for victim in (PickledStorage(path), storage):
        assert kept.id in [t.id for t in victim.fetch_trials(exp_id)]
        assert (victim.get_experiment("after") is not None) == followed_by_more
        victim.register_trial(exp_id, {"x": float(len(victim.fetch_trials(exp_id)))})
    assert not marker.exists()
    assert "refers to posix.system" in caplog.text or "refers to os.system" in caplog.text


def test_torn_tail_is_ignored_then_truncated(path: Path) -> None:
    storage = PickledStorage(path)
    exp_id = _populate(storage, 8)
    before = storage.fetch_trials(exp_id)
    size = path.stat().st_size
    frame = _frame(pickle.dumps([{"op": "drop", "experiment": exp_id}], protocol=5))
    reader = PickledStorage(path)
    for tail in (frame[:5], frame[:20], frame[:-1], frame[:-1] + bytes([frame[-1] ^ 1]), bytes(300)):
        with path.open("ab") as f:
            f.write(tail)
        assert reader.fetch_trials(exp_id) == before  # readers ignore the torn last frame
        assert PickledStorage(path).fetch_trials(exp_id) == before
        assert path.stat().st_size == size + len(tail)  # ... and do not modify the file
        writer = PickledStorage(path)
        added = writer.register_trial(exp_id, {"x": 2.0 + size})  # the next writer truncates it
        size = path.stat().st_size
        scan = _scan_file(path)
        assert scan.damaged == [] and scan.end == size
        before = [*before, added]
        assert reader.fetch_trials(exp_id) == before


@pytest.mark.parametrize("where", ["payload", "header"])
def test_damage_before_the_tail_costs_one_frame(path: Path, where: str, caplog: pytest.LogCaptureFixture) -> None:
    storage = PickledStorage(path)
    exp_id = _populate(storage, 4)
    expected = storage.fetch_trials(exp_id)
    data = bytearray(path.read_bytes())
    frames = [fileformat.HEADER_SIZE]  # experiment, first trial registered, first trial completed, ...
    for _ in range(2):
        frames.append(frames[-1] + fileformat.FRAME.size + struct.unpack_from("<I", data, frames[-1])[0])
    second = frames[2]
    offset = second + (fileformat.FRAME.size + 3 if where == "payload" else 1)
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    survivors = PickledStorage(path).fetch_trials(exp_id)
    assert [t.id for t in survivors] == [t.id for t in expected]
    assert survivors[0].status is TrialStatus.RESERVED, "the damaged frame (its completion) is skipped"
    assert survivors[1:] == expected[1:], "every other record is kept"
    assert f"bytes {second}-" in caplog.text
    PickledStorage(path).register_trial(exp_id, {"x": 9})
    assert path.read_bytes()[: len(data)] == bytes(data), "the damage is left for `orchard db repair`"


# -- compaction -------------------------------------------------------------------------


def test_compaction_keeps_state_and_old_readers_catch_up(path: Path) -> None:
    compacting = PickledStorage(path, compact_bytes=4096)
    exp_id = _populate(compacting, 10)
    other = compacting.create_experiment("other", {"n": 1})
    lagging = PickledStorage(path)
    seen, cursor = lagging.fetch_changes(exp_id)
    assert len(seen) == 10
    first_generation = _generation(path)
    for i in range(150):
        trial = compacting.register_trial(exp_id, {"x": 10.0 + i}, worker="w")
        compacting.heartbeat_trial(trial.id, "w")
        compacting.complete_trial(trial.id, "w", float(i))
    assert _generation(path) != first_generation
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    expected = compacting.fetch_trials(exp_id)
    assert len(expected) == 160
    assert lagging.fetch_trials(exp_id) == expected
    assert PickledStorage(path).fetch_trials(exp_id) == expected
    assert lagging.get_experiment("other").id == other  # type: ignore[union-attr]
    changed, _ = lagging.fetch_changes(exp_id, cursor)  # replayed from scratch: everything again
    assert {t.id for t in changed} == {t.id for t in expected}
    assert lagging.register_trial(exp_id, {"x": -1.0}).id in {t.id for t in compacting.fetch_trials(exp_id)}
    assert path.stat().st_size < 160 * 3 * 400  # far less than the log of every write


def test_a_reader_carries_its_replay_on_across_one_compaction(path: Path) -> None:
    """Readers behind a compaction read the replaced file's last frames and go on, not from scratch.

    With hundreds of workers, every compaction made each of them replay the whole file (and
    re-read every trial through the change feed) at the same moment: a stall of seconds.
    """
    compacting = PickledStorage(path, compact_bytes=20_000)
    exp_id = _populate(compacting, 10)
    lagging = PickledStorage(path)
    _, cursor = lagging.fetch_changes(exp_id)
    first_generation, written = _generation(path), []
    while _generation(path) == first_generation:  # the lagging reader misses the last frames, then the compaction
        trial = compacting.register_trial(exp_id, {"x": 10.0 + len(written)}, worker="w")
        written.append(compacting.complete_trial(trial.id, "w", 1.0).id)
    late = compacting.register_trial(exp_id, {"x": -5.0}, worker="w")
    changed, cursor = lagging.fetch_changes(exp_id, cursor)
    assert [t.id for t in changed] == [*written, late.id]  # only what changed: the cursor is still valid
    assert lagging.fetch_trials(exp_id) == compacting.fetch_trials(exp_id) == PickledStorage(path).fetch_trials(exp_id)
    assert lagging.register_trial(exp_id, {"x": -6.0}).id in {t.id for t in compacting.fetch_trials(exp_id)}


def test_a_repaired_file_is_replayed_from_scratch(path: Path) -> None:
    storage = PickledStorage(path)
    exp_id = _populate(storage, 8)
    reader = PickledStorage(path)
    _, cursor = reader.fetch_changes(exp_id)
    storage._log.rewrite()  # what `orchard db repair` does once it has read around the damage
    changed, _ = reader.fetch_changes(exp_id, cursor)
    assert len(changed) == 8  # not a continuation: the reader's view may differ from the repairer's


def test_workon_in_this_process_reads_no_other_experiment_again(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker loop run as a thread of workon closes the storage it was given when it ends, and the pickle
    storage's close dropped its replay: with a shared lab file (80,000 trials of 300 experiments, 15 MiB),
    workon(n_workers=2) on a 20-trial experiment replayed the whole file twice more (5 s of CPU, every other
    experiment's trials built again), and the caller's next call once more. Close now keeps the replay."""
    import orchard

    storage = PickledStorage(path)
    other = _populate(storage, 40, name="other")
    exp = orchard.build_experiment("small", space={"x": "uniform(0, 1)"}, max_trials=6, storage=storage)
    records = counting_builds(monkeypatch)
    exp.workon(lambda x: x, n_workers=2, executor="thread")
    assert len(exp.fetch_trials()) == 6 and len(storage.fetch_trials(other)) == 40
    built = [data["experiment"] for data in records]
    assert other not in built, f"{built.count(other)} trials of another experiment built again"
    storage.close()
    after_close = storage.fetch_trials(exp.id)
    assert other not in [data["experiment"] for data in records]
    assert after_close == PickledStorage(path).fetch_trials(exp.id)


def test_a_replay_decodes_a_long_history_a_piece_at_a_time(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process opening a file decoded the whole log before applying any of it: a lab's 92 MiB history
    (300 experiments, 80,000 trials) held 830 MiB of decoded records, for a table of 250 MiB."""
    storage = PickledStorage(path, compact_bytes=1 << 30)
    exps = [_populate(storage, 30, name=f"e{i}") for i in range(4)]
    trial = storage.register_trial(exps[0], {"x": 5.0}, worker="w1")
    storage.complete_trial(trial.id, "w1", 1.0, {"blob": "x" * 10_000})  # one frame longer than a piece
    scanned = counting_scans(monkeypatch)
    monkeypatch.setattr(fileformat, "CHUNK", 4096, raising=False)
    reader = PickledStorage(path)
    assert [reader.fetch_trials(e) for e in exps] == [storage.fetch_trials(e) for e in exps]
    assert reader.check().clean and reader.check().records == storage.check().records
    size = path.stat().st_size
    assert max(scanned) <= 4 * 4096 < size / 4, f"decoded {max(scanned)} of {size} bytes at once"


def test_a_compaction_writes_its_snapshot_as_it_encodes_it(path: Path) -> None:
    """A compaction built every record of the snapshot, then encoded every frame, before writing any:
    compacting a 245 MiB history into a 163 MiB snapshot took 390 MiB more than the process's own replay."""
    import tracemalloc

    storage = PickledStorage(path, compact_bytes=1 << 30, fsync=False)
    exp_id = storage.create_experiment("exp", {})
    results = {f"metric_{i}": float(i) for i in range(40)}
    for i in range(2000):
        storage.record_trial(exp_id, {"x": float(i)}, float(i), results)
    tracemalloc.start()
    try:
        assert storage._log.rewrite(continues=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    snapshot = path.stat().st_size
    assert peak < snapshot / 3, f"{peak} bytes held to write a snapshot of {snapshot}"
    assert PickledStorage(path).fetch_trials(exp_id) == storage.fetch_trials(exp_id)


def test_compaction_leftovers_do_not_matter(path: Path) -> None:
    """A process killed mid-compaction leaves a temporary file beside an intact log."""
    storage = PickledStorage(path, compact_bytes=4096)
    exp_id = _populate(storage, 4)
    leftover = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    leftover.write_bytes(fileformat.encode_header(os.urandom(16), 0)[:10])
    assert len(PickledStorage(path).fetch_trials(exp_id)) == 4
    for i in range(100):
        storage.register_trial(exp_id, {"x": 100.0 + i})
    assert not leftover.exists()  # removed by the next compaction
    assert len(PickledStorage(path).fetch_trials(exp_id)) == 104


def test_a_compaction_leaves_the_temporary_files_of_another_storage_alone(path: Path) -> None:
    """Storages runs/x.pkl and runs/x.pkl.v2: x.pkl took the in-flight compaction file of x.pkl.v2
    (.x.pkl.v2.HEX.tmp) for one of its own leftovers and deleted it, and x.pkl.v2's write failed."""
    path.parent.mkdir(parents=True)
    other = path.parent / f".{path.name}.v2.{uuid.uuid4().hex}.tmp"
    other.write_bytes(b"being written")
    PickledStorage(path).create_experiment("exp", {})  # creating the file clears its own leftovers
    assert other.exists()


def test_the_file_stays_within_twice_its_snapshot(path: Path) -> None:
    """The log was compacted only once it had grown past 4 x the last snapshot: a file ranged up to 5 times
    its snapshot, and every process opening a lab's file read 2.2 times what the compacted file holds."""
    storage = PickledStorage(path, fsync=False, compact_bytes=4096)
    exp_id = storage.create_experiment("exp", {})
    for i in range(60):
        storage.register_trial(exp_id, {"x": float(i)}, worker="w")
    trials = storage.fetch_trials(exp_id)
    worst = 0.0
    for _ in range(4):  # heartbeats: the log grows, the snapshot does not
        for trial in trials:
            storage.heartbeat_trial(trial.id, "w")
            snapshot = fileformat.decode_header(path.read_bytes()[: fileformat.HEADER_SIZE], str(path)).base
            worst = max(worst, path.stat().st_size / snapshot)
    assert 1.8 < worst <= 2.1, f"the file reached {worst:.1f} times its snapshot"


def _register_trials(path: str, exp_id: str, n: int, started: Any) -> None:
    storage = PickledStorage(path, fsync=False)
    started.set()
    for i in range(n):
        storage.register_trial(exp_id, {"x": 1000.0 + i}, worker="writer")


def test_db_compact_drops_a_deleted_experiment_now_and_running_workers_carry_on(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After `orchard db rm` of a large experiment the file kept its size, and every process opening it
    replayed the deleted trials, until its log had grown 4 x its last snapshot: nothing compacted on
    demand."""
    worker = PickledStorage(path, fsync=False)
    _populate(worker, 400, "big")
    small = _populate(worker, 20, "small")
    _, cursor = worker.fetch_changes(small)
    worker.delete_experiment(worker.require_experiment("big").id)
    size = path.stat().st_size
    writer = SPAWN.Process(target=_register_trials, args=(str(path), small, 200, (started := SPAWN.Event())))
    writer.start()
    try:
        assert started.wait(WAIT)
        assert main(["db", "compact", "--storage", str(path)]) == 0  # while another process writes
    finally:
        writer.join(WAIT)
    assert writer.exitcode == 0
    out = capsys.readouterr().out
    assert re.fullmatch(rf"{re.escape(str(path))}: compacted from [\d.]+ KiB to [\d.]+ KiB\n", out), out
    late = worker.register_trial(small, {"x": -1.0}, worker="w")
    assert path.stat().st_size < size / 2, "the deleted experiment's records are gone from the file"
    changed, _ = worker.fetch_changes(small, cursor)  # only what changed: its replay was carried on
    assert len(changed) == 201 and changed[-1].id == late.id
    assert PickledStorage(path).fetch_trials(small) == worker.fetch_trials(small)
    assert len(worker.fetch_trials(small)) == 221
    assert PickledStorage(path).get_experiment("big") is None


def test_db_compact_of_an_empty_file_does_not_say_it_does_not_exist(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db compact` of a 0-byte storage file said "storage file ... does not exist", while `db check` read it."""
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"")
    assert main(["db", "compact", "--storage", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: compacted from 0.0 KiB to 0.0 KiB\n"
    assert path.read_bytes() == b""


def test_db_rm_compacts_when_the_experiment_was_a_large_part_of_the_file(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db rm` of an experiment holding most of the file appended one record: the file kept its size."""
    storage = PickledStorage(path, fsync=False)
    _populate(storage, 300, "big")
    _populate(storage, 30, "kept")
    _populate(storage, 10, "tiny")
    size = path.stat().st_size
    assert main(["db", "rm", "-n", "tiny", "--yes", "--storage", str(path)]) == 0
    assert "`orchard db compact --storage" in capsys.readouterr().out  # 10 of 340 trials: not worth the lock
    assert path.stat().st_size > size
    assert main(["db", "rm", "-n", "big", "--yes", "--storage", str(path)]) == 0
    assert "compacted from" in capsys.readouterr().out
    assert path.stat().st_size < size / 4
    assert [e.name for e in PickledStorage(path).list_experiments()] == ["kept"]
    assert len(storage.fetch_trials(storage.require_experiment("kept").id)) == 30


# -- locks --------------------------------------------------------------------------------


def _hold_lock(path: str, lock: str, ready: Any) -> None:
    storage = PickledStorage(path, lock=lock)
    storage._acquire_lock()
    ready.set()
    time.sleep(120)


def _start_holder(path: Path, lock: str) -> Any:
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_lock, args=(str(path), lock, ready), daemon=True)
    holder.start()
    assert ready.wait(WAIT), "lock holder did not start"
    return holder


@pytest.mark.slow
def test_kernel_lock_of_a_dead_process_does_not_block(path: Path) -> None:
    PickledStorage(path).create_experiment("exp", {})
    holder = _start_holder(path, "kernel")
    with pytest.raises(StorageUnavailableError, match="lock=soft") as info:
        PickledStorage(path, timeout=0.3).create_experiment("other", {})
    assert str(path) in str(info.value) and "Likely causes" in str(info.value)
    assert PickledStorage(path, timeout=0.3).get_experiment("exp") is not None  # reads need no lock
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    start = time.monotonic()
    PickledStorage(path, timeout=5).create_experiment("other", {})
    assert time.monotonic() - start < 1.0


@pytest.mark.slow
def test_soft_lock_of_a_dead_process_is_broken(path: Path) -> None:
    PickledStorage(path, lock="soft").create_experiment("exp", {})
    holder = _start_holder(path, "soft")
    lock_file = Path(f"{path}.lock")
    assert lock_file.exists()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    start = time.monotonic()
    PickledStorage(path, lock="soft", timeout=10).create_experiment("other", {})
    assert time.monotonic() - start < 5.0
    assert not lock_file.exists()


def test_a_kernel_lock_waits_for_a_soft_lock_holder_of_the_same_file(path: Path) -> None:
    """Processes mixing ?lock=soft and the kernel lock: a kernel locker took the soft holder's marker file
    with flock and both appended at once."""
    soft = SoftLock(f"{path}.lock", stale_after=30.0)
    assert soft.try_acquire()  # a ?lock=soft process is inside
    kernel = KernelLock(f"{path}.lock")
    assert not kernel.try_acquire()
    soft.release()
    assert kernel.try_acquire()
    kernel.release()
    SoftLock(f"{path}.lock", stale_after=30.0).try_acquire()  # then killed: a marker whose holder is gone
    Path(f"{path}.lock").write_text(f"{_dead_pid()}\n{socket.gethostname()}\n")
    assert not kernel.try_acquire()  # breaks the stale marker
    assert kernel.try_acquire()
    kernel.release()


def test_bytes_written_into_a_kernel_lock_file_are_removed_at_once(path: Path, caplog: Any) -> None:
    """`echo junk > x.pkl.lock` under running workers: they took it for a soft lock's marker and stalled
    until it looked stale (30 s), with a warning about the soft lock."""
    storage = PickledStorage(path, timeout=5)
    exp_id = storage.create_experiment("exp", {})
    lock_file = Path(f"{path}.lock")
    lock_file.write_text("junk\n")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="orchard.storages.pickled.locks"):
        storage.register_trial(exp_id, {"x": 1.0})
    assert time.monotonic() - start < 1.0
    assert len(storage.fetch_trials(exp_id)) == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert "junk" in message and "another program wrote into it" in message and "soft" not in message
    assert lock_file.read_bytes() == b""  # a new, empty lock file
    assert Path(f"{path}.lock.foreign").read_text() == "junk\n", "nothing written there is destroyed"


def test_a_storage_at_another_storages_lock_file_is_refused_both_ways(path: Path, caplog: Any) -> None:
    """`--storage runs/orchard.pkl.lock` (a tab completion too far): its data went into the lock file of
    runs/orchard.pkl, whose kernel-lock workers then took it for a stale soft lock's marker and deleted it."""
    PickledStorage(path).create_experiment("exp", {})
    with pytest.raises(ConfigurationError, match="is the lock file of storage"):
        PickledStorage(f"{path}.lock")
    other = path.parent / "fresh.pkl"
    PickledStorage(f"{other}.lock").create_experiment("exp", {})  # made first, while fresh.pkl did not exist
    with pytest.raises(ConfigurationError, match="holds another storage's data"):
        PickledStorage(other)
    assert PickledStorage(f"{other}.lock").get_experiment("exp") is not None
    lock = KernelLock(f"{other}.lock")  # a storage made at fresh.pkl.lock while fresh.pkl ran: set aside, named
    with caplog.at_level(logging.WARNING, logger="orchard.storages.pickled.locks"):
        assert not lock.try_acquire()
    assert "used it as its storage path" in caplog.text
    assert PickledStorage(f"{other}.lock.foreign").get_experiment("exp") is not None, "moved, never deleted"


def test_a_lock_file_planted_as_a_symbolic_link_is_refused_and_its_target_left_alone(
        path: Path, caplog: Any) -> None:
    """A link planted at PATH.lock in a shared folder made every worker create the file it named (in
    another user's home, say), lock it, and quote its first bytes in a warning; under the soft lock,
    the link was broken as a stale marker, quoting its target's first kilobyte."""
    shared, home = path.parent, path.parent.parent / "home"
    shared.mkdir(parents=True)
    home.mkdir()
    (home / "rc").write_text("export TOKEN=s3cret\n")
    planted = (("a.pkl", home / "rc", "kernel"), ("b.pkl", home / "made-by-orchard", "kernel"),
               ("c.pkl", home / "rc", "soft"))
    for name, target, lock in planted:
        (shared / f"{name}.lock").symlink_to(target)
        storage = PickledStorage(shared / name, timeout=5, lock=lock, stale_lock_after=0.1)
        with pytest.raises(StorageError, match=r"\.lock is a symbolic link.*remove the link"):
            storage.create_experiment("exp", {})
        assert (shared / f"{name}.lock").is_symlink()
    assert sorted(p.name for p in home.iterdir()) == ["rc"]
    assert (home / "rc").read_text() == "export TOKEN=s3cret\n"
    assert "s3cret" not in caplog.text


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def test_stale_soft_lock_markers_are_broken(path: Path) -> None:
    path.parent.mkdir(parents=True)
    lock_file = Path(f"{path}.lock")
    lock = SoftLock(str(lock_file), stale_after=0.3)
    lock_file.write_text(f"{os.getpid()}\n{socket.gethostname()}\n")
    assert not lock.break_if_stale()  # a live holder on this host
    lock_file.write_text(f"{_dead_pid()}\n{socket.gethostname()}\n")
    assert lock.break_if_stale()  # a dead holder on this host
    assert not lock_file.exists()
    lock_file.write_text(f"{os.getpid()}\nsome-other-host\n")
    old = time.time() - 600
    os.utime(lock_file, (old, old))
    first_look = time.monotonic()
    assert not lock.break_if_stale()  # an old mtime says nothing: the server's clock is not ours
    while time.monotonic() < first_look + 0.2:
        assert not lock.break_if_stale()  # watched unchanged for less than stale_after
    time.sleep(0.15)  # the passing of time is what is tested: past stale_after since the first look
    assert lock.break_if_stale()  # watched unchanged for stale_after: its holder is gone
    assert not [p for p in path.parent.iterdir() if ".stale-" in p.name]


def test_a_refreshed_soft_lock_marker_is_not_stale(path: Path) -> None:
    path.parent.mkdir(parents=True)
    lock_file = Path(f"{path}.lock")
    lock = SoftLock(str(lock_file), stale_after=0.3)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        lock_file.write_text(f"1\nsome-other-host\n{time.monotonic()}\n")  # a holder that changes it
        assert not lock.break_if_stale()


def test_soft_lock_timeout_and_old_marker(path: Path) -> None:
    storage = PickledStorage(path, lock="soft", timeout=0.3)
    lock_file = Path(f"{path}.lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text(f"{os.getpid()}\n{socket.gethostname()}\n")
    with pytest.raises(StorageUnavailableError, match="stale lock") as info:
        storage.create_experiment("exp", {})
    assert str(lock_file) in str(info.value)
    lock_file.write_text(f"{os.getpid()}\nsome-other-host\n")
    PickledStorage(path, lock="soft", timeout=5, stale_lock_after=0.2).create_experiment("exp", {})
    assert storage.get_experiment("exp") is not None


# -- processes -----------------------------------------------------------------------------


def _register_from_child(storage: PickledStorage, exp_id: str, x: float) -> None:
    storage.register_trial(exp_id, {"x": x})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_storage_travels_to_other_processes(path: Path, method: str) -> None:
    storage = PickledStorage(path, lock="soft", timeout=30)
    exp_id = storage.create_experiment("exp", {})
    storage.register_trial(exp_id, {"x": 0.0})
    context = SPAWN if method == "spawn" else FORK
    child = context.Process(target=_register_from_child, args=(storage, exp_id, 1.0))
    child.start()
    child.join(WAIT)
    assert child.exitcode == 0
    assert sorted(t.params["x"] for t in storage.fetch_trials(exp_id)) == [0.0, 1.0]
    assert pickle.loads(pickle.dumps(storage)).uri == storage.uri


def _reserve_all(path: str, exp_id: str, worker: str, out: Any) -> None:
    storage = PickledStorage(path)
    won = []
    while (trial := storage.reserve_trial(exp_id, worker)) is not None:
        won.append(trial.id)
        storage.complete_trial(trial.id, worker, 0.0)
    out.put(won)


@pytest.mark.slow
def test_racing_processes_reserve_each_trial_once(path: Path) -> None:
    storage = PickledStorage(path, compact_bytes=16384)
    exp_id = storage.create_experiment("exp", {})
    for i in range(300):
        storage.register_trial(exp_id, {"x": i})
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=_reserve_all, args=(str(path), exp_id, f"w{k}", out)) for k in range(4)]
    for proc in procs:
        proc.start()
    won = [trial_id for _ in procs for trial_id in out.get(timeout=WAIT)]
    for proc in procs:
        proc.join(WAIT)
    assert len(won) == len(set(won)) == 300
    assert storage.count_trials(exp_id)[TrialStatus.COMPLETED] == 300


def _crash_loop(path: str, log_path: str, name: str, ready: Any) -> None:
    """Register, reserve and complete trials forever, noting each op once it returned."""
    storage = PickledStorage(path, compact_bytes=8192)
    exp_id = storage.create_experiment(name, {})
    worker = f"w{os.getpid()}"
    with open(log_path, "a", buffering=1) as log:
        ready.set()
        while True:
            trial = storage.register_trial(exp_id, {"x": uuid.uuid4().hex})
            log.write(f"reg {trial.id}\n")
            got = storage.reserve_trial(exp_id, worker)
            assert got is not None
            log.write(f"res {got.id}\n")
            storage.complete_trial(got.id, worker, 1.5, {"by": worker})
            log.write(f"done {got.id}\n")


def _check_log(storage: PickledStorage, exp_id: str, log_path: Path) -> int:
    """Every op the child saw return is in the storage; return how many ops were checked."""
    trials = {t.id: t for t in storage.fetch_trials(exp_id)}
    lines = [line.split() for line in log_path.read_text().split("\n")[:-1]]  # drop a partial last line
    for op, trial_id in lines:
        trial = trials[trial_id]
        if op == "res":
            assert trial.status in (TrialStatus.RESERVED, TrialStatus.COMPLETED)
        elif op == "done":
            assert trial.status is TrialStatus.COMPLETED and trial.objective == 1.5
    return len(lines)


@pytest.mark.slow
def test_sigkilled_writer_loses_nothing_that_returned(path: Path, tmp_path: Path) -> None:
    """20 writers SIGKILLed at random instants, some of them mid-compaction.

    Every 5 rounds the experiment is deleted, which keeps the live state small
    so that compactions are frequent and short enough for kills to land in them.
    """
    generations: set[bytes] = set()
    checked = 0
    for round_ in range(20):
        name, log_path = f"crash-{round_ // 5}", tmp_path / f"returned-{round_ // 5}.log"
        ready = FORK.Event()  # a copy of this process starts in milliseconds; spawn imports for 0.4 s
        child = FORK.Process(target=_crash_loop, args=(str(path), str(log_path), name, ready), daemon=True)
        child.start()
        assert ready.wait(WAIT), "writer did not start"
        time.sleep(random.uniform(0.02, 0.3))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        start = time.monotonic()
        storage = PickledStorage(path, timeout=5)
        exp_id = storage.get_experiment(name).id  # type: ignore[union-attr]
        checked += _check_log(storage, exp_id, log_path)
        storage.register_trial(exp_id, {"x": f"parent-{round_}"})  # writes after the torn tail, if any
        assert time.monotonic() - start < 5.0
        assert _scan_file(path).damaged == []
        generations.add(_generation(path))
        if round_ % 5 == 4:
            storage.delete_experiment(exp_id)
    assert checked > 100
    assert len(generations) >= 3, "compaction did not happen while writers were being killed"


def test_a_compaction_while_a_writer_waits_for_the_lock_loses_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer opens and replays the file before it takes the lock; if another process replaces
    the file meanwhile (compaction), the writer must append to the new file, not the old one."""
    waiting = PickledStorage(path)
    compacting = PickledStorage(path, compact_bytes=4096)
    exp_id = _populate(compacting, 4)
    waiting.fetch_trials(exp_id)
    generation = _generation(path)
    real = PickledStorage._acquire_lock

    def compact_first(self: PickledStorage) -> None:
        if self is waiting:
            for i in range(40):  # grows the log past compact_bytes: replaces the file
                compacting.register_trial(exp_id, {"x": 100.0 + i})
        real(self)

    monkeypatch.setattr(PickledStorage, "_acquire_lock", compact_first)
    added = waiting.register_trial(exp_id, {"x": -1.0})
    monkeypatch.undo()
    assert _generation(path) != generation, "the file was not compacted while the writer waited"
    assert added.id in {t.id for t in PickledStorage(path).fetch_trials(exp_id)}
    assert len(PickledStorage(path).fetch_trials(exp_id)) == 45


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_keep_the_replayed_file_open(path: Path) -> None:
    # issue 32: one kept descriptor per forked worker held the old file's space until they exited
    storage = PickledStorage(path)
    exp = storage.create_experiment("exp", {})
    storage.register_trial(exp, {"x": 1})
    storage.fetch_trials(exp)
    kept = storage._log._kept  # the file just replayed, kept open to carry the replay across a compaction
    assert kept is not None
    pid = os.fork()
    if pid == 0:  # the child: the inherited copy must be closed, and the storage still works
        try:
            try:
                os.fstat(kept[0])
                code = 3
            except OSError:
                code = 0 if len(storage.fetch_trials(exp)) == 1 else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child still held the parent's kept descriptor"
    os.fstat(kept[0])  # the parent's own stays open
    assert len(storage.fetch_trials(exp)) == 1


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/io"), reason="needs os.fork and /proc")
def test_a_forked_worker_carries_on_its_parents_replay_instead_of_reading_the_file_again(path: Path) -> None:
    # 512 pool workers forked from a parent that had read 2,700 trials each replayed them all: 0.2 s of CPU apiece
    storage = PickledStorage(path, fsync=False)
    exp = storage.create_experiment("exp", {})
    for i in range(200):
        trial = storage.register_trial(exp, {"x": i}, worker="w")
        storage.complete_trial(trial.id, "w", float(i), {"text": "x" * 200})
    assert len(storage.fetch_trials(exp)) == 200
    size = path.stat().st_size
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: waits for the parent's next write, then reads and writes through a pickled copy
        code = 1
        try:
            os.close(write)
            os.read(read, 1)
            shipped = pickle.loads(pickle.dumps(storage))  # as a process pool ships it to its workers
            before = _bytes_read()
            seen = len(shipped.fetch_trials(exp))
            read_bytes = _bytes_read() - before
            mine = shipped.register_trial(exp, {"x": "child"}, worker="child")
            shipped.complete_trial(mine.id, "child", 0.5, {})
            also = len(storage.fetch_trials(exp))  # the parent's own object: replays afresh, and agrees
            code = 0 if seen == 201 == also - 1 and read_bytes < size // 10 else 10 + (seen != 201)
        finally:
            os._exit(code)
    os.close(read)
    storage.register_trial(exp, {"x": "after the fork"})  # appended after the child's copy was taken
    os.write(write, b"go")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "exit 10: the child re-read the file; 11: it missed a trial"
    trials = {str(t.params["x"]): t for t in PickledStorage(path).fetch_trials(exp)}
    assert len(trials) == 202 and trials["child"].status is TrialStatus.COMPLETED
    assert len(storage.fetch_trials(exp)) == 202  # the parent reads the child's frames


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_replays_quietly_a_file_compacted_since_its_parent_read_it(path: Path) -> None:
    storage = PickledStorage(path, fsync=False, compact_bytes=4096)
    exp = storage.create_experiment("exp", {})
    storage.register_trial(exp, {"x": -1})
    storage.fetch_trials(exp)
    generation = _generation(path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the file it carries a replay of is compacted before it reads again
        code = 1
        try:
            os.close(write)
            os.read(read, 1)
            warnings: list[logging.LogRecord] = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = warnings.append  # type: ignore[method-assign]
            logging.getLogger("orchard.storages.pickled").addHandler(handler)
            seen = len(pickle.loads(pickle.dumps(storage)).fetch_trials(exp))
            code = 0 if seen == 41 and not warnings else 10 + bool(warnings)
        finally:
            os._exit(code)
    os.close(read)
    for i in range(40):
        storage.register_trial(exp, {"x": i, "pad": "p" * 200})
    assert _generation(path) != generation, "the file was not compacted"
    os.write(write, b"go")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "exit 11: a warning that the file was replaced by another one"


def test_a_reader_that_missed_several_compactions_replays_without_calling_the_file_replaced(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A process that read nothing while others compacted the file twice or more (the main process of a
    workon whose workers report thousands of steps; a dashboard) warned that the file "was replaced by
    another file (restored from an older copy, repaired, or copied over) ... trials this process held may
    not exist". The compacted files keep the lineage of the file they compact, so it is told apart."""
    writer = PickledStorage(path, fsync=False, compact_bytes=4096)
    exp = writer.create_experiment("exp", {})
    reader = PickledStorage(path)
    assert reader.fetch_trials(exp) == []
    generations = {_generation(path)}
    for i in range(200):
        writer.register_trial(exp, {"x": i, "pad": "p" * 200})
        generations.add(_generation(path))
    assert len(generations) >= 3, "the file was not compacted twice"
    with caplog.at_level(logging.WARNING, logger="orchard.storages.pickled"):
        assert len(reader.fetch_trials(exp)) == 200
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    other = path.parent / "other.pkl"
    PickledStorage(other).create_experiment("exp", {})
    os.replace(other, path)  # another file copied over it: still said
    with caplog.at_level(logging.WARNING, logger="orchard.storages.pickled"):
        reader.get_experiment("exp")
    assert any("replaced by another file" in r.getMessage() for r in caplog.records)


def test_reading_a_path_that_does_not_exist_makes_no_folder(tmp_path: Path) -> None:
    """A moved warm-start source or a mistyped --storage read by `orchard list` leaves nothing behind."""
    path = tmp_path / "moved" / "runs" / "orchard.pkl"
    storage = PickledStorage(str(path))
    assert storage.list_experiments() == [] and storage.get_experiment("exp") is None
    assert not (tmp_path / "moved").exists()
    storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})  # the first write makes it
    assert path.is_file() and PickledStorage(str(path)).require_experiment("exp").name == "exp"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in Linux's /proc")
def test_a_storage_file_that_cannot_be_opened_for_want_of_files_is_unavailable(tmp_path: Path) -> None:
    """8 thread workers under ``ulimit -n 16``: the lock file could not be opened while the other workers held
    their files, and a computed result was recorded broken ("the storage refused the trial's outcome");
    as unavailable, the write is retried for ORCHARD_STORAGE_PATIENCE."""
    from tests import workloads

    storage = get_storage(str(tmp_path / "o.pkl"))
    exp_id = storage.create_experiment("e", {"space": {"x": "uniform(0, 1)"}})
    storage.close()
    with workloads.every_file_taken(), pytest.raises(StorageUnavailableError, match=r"\(ulimit -n\)"):
        storage.count_trials(exp_id)
    assert storage.count_trials(exp_id)[TrialStatus.NEW] == 0
