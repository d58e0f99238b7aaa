"""A damaged pickle file loses only the damaged records (SPEC §5.10), with real bytes on disk.

Garbage written into the middle of a real file, a file cut short under a
process that had read it, and a tiny frame of nested shared lists: readers keep
everything else and say what they skipped; ``orchard db check`` reports the
damage and ``orchard db repair`` rewrites a clean file, keeping a backup.
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from orchard.cli import main
from orchard.errors import StorageUnavailableError
from orchard.storages.pickled import PickledStorage, fileformat
from orchard.storages.pickled.locks import KernelLock
from orchard.trial import Trial, TrialStatus
from tests.test_pickled import counting_scans


def _frame(payload: bytes) -> bytes:
    """A frame built from the documented layout (independently of the module's encoder)."""
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _fill(storage: PickledStorage, size: int) -> tuple[str, list[Trial]]:
    """An experiment whose trials make the file at least ``size`` bytes, each written in one frame.

    (A trial registered, then completed, is written whole twice: damage to its
    first frame alone would lose nothing.)
    """
    exp_id = storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})
    trials, i = [], 0
    while os.path.getsize(storage.path) < size:
        trials.append(storage.register_trial(exp_id, {"x": i / 10_000}))
        i += 1
    return exp_id, trials


def _by_id(trials: list[Trial]) -> dict[str, Trial]:
    return {t.id: t for t in trials}


@pytest.mark.parametrize("layout", ["log", "snapshot"])
def test_garbage_in_the_middle_costs_only_the_records_it_touches(
    tmp_path: Path, layout: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orchard.pkl"
    # "log": every write appended as its own frame; "snapshot": compacted into frames of many records
    storage = PickledStorage(path, fsync=False, compact_bytes=1 << 30 if layout == "log" else 60_000)
    exp_id, _ = _fill(storage, 200_000)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if layout == "snapshot":  # the middle of the snapshot that starts the file
        middle = fileformat.decode_header(bytes(data[: fileformat.HEADER_SIZE]), str(path)).base // 2
        assert middle > 20_000
    before = _by_id(storage.fetch_trials(exp_id))
    data[middle : middle + 64] = os.urandom(64)
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        after = _by_id(PickledStorage(path).fetch_trials(exp_id))
    lost = [tid for tid in before if after.get(tid) != before[tid]]
    # 64 bytes touch at most two frames, of at most 64 records each in a snapshot
    assert 0 < len(lost) <= 128, f"{len(lost)} records lost to 64 damaged bytes"
    assert all(after[tid] == trial for tid, trial in before.items() if tid not in lost)
    assert "skipped damaged bytes" in caplog.text
    start, end = (int(b) for b in caplog.text.split("damaged bytes ")[1].split(" ")[0].split("-"))
    assert start <= middle and middle + 64 <= end, "the warning names the damaged range"

    writer = PickledStorage(path)  # writes go on, after the damage
    added = writer.register_trial(exp_id, {"x": 5.0})
    assert added.id in _by_id(PickledStorage(path).fetch_trials(exp_id))

    assert main(["db", "check", "--storage", str(path)]) == 1
    assert f"damaged: bytes {start}-{end}" in capsys.readouterr().out
    assert main(["db", "repair", "--storage", str(path)]) == 0
    backups = [p for p in tmp_path.iterdir() if p.name.endswith(".damaged")]
    assert len(backups) == 1 and backups[0].read_bytes()[: len(data)] == bytes(data)
    assert main(["db", "check", "--storage", str(path)]) == 0
    repaired = _by_id(PickledStorage(path).fetch_trials(exp_id))
    assert repaired == {**after, added.id: repaired[added.id]}, "repair kept every readable record"


def test_a_file_cut_short_under_a_reader_keeps_what_remains(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "orchard.pkl"
    storage = PickledStorage(path, fsync=False, compact_bytes=1 << 30)
    exp_id, trials = _fill(storage, 50_000)
    reader = PickledStorage(path)
    assert len(reader.fetch_trials(exp_id)) == len(trials)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)  # e.g. restored from an older copy, or lost by a server
    remaining = PickledStorage(path).fetch_trials(exp_id)
    assert 0 < len(remaining) < len(trials)
    assert _by_id(reader.fetch_trials(exp_id)) == _by_id(remaining), "the reader replays what is left"
    assert "shrank below what this process had read" in caplog.text
    added = reader.register_trial(exp_id, {"x": 7.0})
    assert added.id in _by_id(storage.fetch_trials(exp_id)) and storage.check().clean


def _skipped_between_two_trials(path: Path, odd_id: str, field: str, value: object) -> tuple[PickledStorage, str]:
    """Append a trial record whose ``field`` is ``value`` between two good trials, and check that a fresh
    reader and the writer both skip it; return the writer and the experiment's id."""
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {})
    kept = storage.register_trial(exp_id, {"x": 1.0})
    odd = Trial(id=odd_id, experiment=exp_id, params={"x": 2.0}).to_dict()
    odd[field] = value
    with path.open("ab") as f:
        f.write(_frame(pickle.dumps([{"op": "trial", "trial": odd}], protocol=5)))
    after = storage.register_trial(exp_id, {"x": 3.0})  # a frame after it, so it is not a torn tail
    for reader in (PickledStorage(path), storage):
        assert [t.id for t in reader.fetch_trials(exp_id)] == [kept.id, after.id]
    return storage, exp_id


def _nested_shared_lists(depth: int) -> list[object]:
    """``depth`` levels of a list holding its child twice: tiny as a pickle, 2**depth leaves when walked."""
    node: list[object] = [0]
    for _ in range(depth):
        node = [node, node]
    return node


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["params", "results"])
def test_a_tiny_frame_of_nested_shared_lists_is_a_damaged_record(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    bomb = {"x": _nested_shared_lists(100)}
    assert len(pickle.dumps(bomb, protocol=5)) < 1000
    storage, exp_id = _skipped_between_two_trials(tmp_path / "orchard.pkl", "b" * 32, where, bomb)
    assert "not Orchard's records" in caplog.text
    assert storage.get_trial("b" * 32) is None
    assert [t.status for t in storage.fetch_trials(exp_id)] == [TrialStatus.NEW, TrialStatus.NEW]


def test_a_repair_reads_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair decoded the whole file twice under the lock (once to find the damage, once to replay it):
    42 s for a 245 MiB history, while every worker of every experiment of the file waited."""
    path = tmp_path / "orchard.pkl"
    storage = PickledStorage(path, fsync=False)
    exp_id, trials = _fill(storage, 60_000)
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 8)
    scan = fileformat.scan
    scanned = counting_scans(monkeypatch)
    size = path.stat().st_size
    health, backup = PickledStorage(path).repair()
    assert backup is not None and not health.clean and health.records > 0
    assert sum(scanned) < size * 1.2, f"decoded {sum(scanned)} bytes of a {size}-byte file"
    monkeypatch.setattr(fileformat, "scan", scan)
    assert PickledStorage(path).check().clean
    assert 0 < len(PickledStorage(path).fetch_trials(exp_id)) < len(trials) + 1


def test_db_check_and_repair_on_a_clean_file_and_other_storages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orchard.pkl"
    PickledStorage(path).create_experiment("exp", {})
    assert main(["db", "check", "--storage", str(path)]) == 0
    assert main(["db", "repair", "--storage", str(path)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".damaged")]
    assert main(["db", "check", "--storage", "memory://"]) != 0
    assert "pickle files" in capsys.readouterr().err


def test_db_compact_refuses_a_damaged_file_and_points_at_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A compaction drops what readers skip: on a damaged file it must not throw those bytes away unkept."""
    path = tmp_path / "orchard.pkl"
    _fill(PickledStorage(path, fsync=False, compact_bytes=1 << 30), 40_000)
    with path.open("r+b") as f:
        f.seek(20_000)
        f.write(b"\xde\xad" * 16)
    damaged = path.read_bytes()
    assert main(["db", "compact", "--storage", str(path)]) == 1
    err = capsys.readouterr().err
    assert "holds damaged bytes" in err and "run `orchard db repair`" in err, err
    assert path.read_bytes() == damaged, "nothing was compacted"
    assert main(["db", "repair", "--storage", str(path)]) == 0
    assert main(["db", "compact", "--storage", str(path)]) == 0


def test_db_compact_on_other_storages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mongo_db_uri: str
) -> None:
    assert main(["db", "compact", "--storage", str(tmp_path / "missing.pkl")]) == 1
    assert "does not exist, so there is nothing to compact" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "no folder or lock file made for a mistyped path"
    assert main(["db", "compact", "--storage", "memory://"]) == 2
    assert "has no file" in capsys.readouterr().err
    assert main(["db", "compact", "--storage", mongo_db_uri]) == 0
    assert "nothing to compact: MongoDB keeps no log" in capsys.readouterr().out


@pytest.mark.slow
def test_a_repair_that_runs_out_of_space_leaves_no_partial_backup(tmp_path: Path) -> None:
    """On a nearly full disk (here a file size limit, as `prlimit --fsize`), `orchard db repair` left a partial
    copy of the file beside it, named nowhere, which filled what space the running workers had left."""
    path = tmp_path / "orchard.pkl"
    _fill(PickledStorage(path, compact_bytes=1 << 30), 60_000)
    with open(path, "r+b") as f:
        f.seek(30_000)
        f.write(b"\xde\xad" * 16)
    limit = 40_000  # the backup copy stops here

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "orchard", "db", "repair", "--storage", str(path)],
                          capture_output=True, text=True, preexec_fn=limited, timeout=120)
    assert done.returncode == 1 and "could not repair storage file" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchard.pkl", "orchard.pkl.lock"]
    assert main(["db", "check", "--storage", str(path)]) == 1, "the damaged original is untouched"


@pytest.mark.parametrize("at", [20, 2], ids=["generation", "magic"])
def test_a_damaged_header_costs_no_record_once_repaired(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], at: int) -> None:
    """Four bytes written into the 46-byte header made the whole file unreadable: every real worker exited
    (results in memory lost), and check and repair refused it too: 'restore the file from a backup or move
    it away'. Now a worker waits as for an outage, and the repair keeps every record."""
    path = tmp_path / "orchard.pkl"
    worker = PickledStorage(path)
    exp_id, trials = _fill(worker, 20_000)
    held = worker.reserve_trial(exp_id, "host:1:w")
    assert held is not None
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\x00\xff\x00\xff")
    with pytest.raises(StorageUnavailableError, match="orchard db repair"):  # an outage: workers wait it out
        PickledStorage(path).fetch_trials(exp_id)
    assert main(["db", "check", "--storage", str(path)]) == 1
    assert "bytes 0-46" in capsys.readouterr().out
    assert main(["db", "repair", "--storage", str(path)]) == 0
    assert worker.complete_trial(held.id, "host:1:w", 0.5).status is TrialStatus.COMPLETED
    assert _by_id(PickledStorage(path).fetch_trials(exp_id)).keys() == _by_id(trials).keys()
    assert main(["db", "check", "--storage", str(path)]) == 0


def test_a_repair_waiting_for_the_lock_is_not_stopped_by_the_damaged_header(tmp_path: Path) -> None:
    """What a repair replays while it waits for the lock met the header it was about to rewrite, and failed."""
    path = tmp_path / "orchard.pkl"
    exp_id, trials = _fill(PickledStorage(path), 5_000)
    repairer = PickledStorage(path, timeout=10)  # `orchard db repair`: a process that has read nothing yet
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\x00\xff\x00\xff")
    holder = KernelLock(f"{path}.lock")
    assert holder.try_acquire()  # a worker in the middle of a verb
    threading.Timer(0.3, holder.release).start()
    _, backup = repairer.repair()
    assert backup is not None
    assert _by_id(PickledStorage(path).fetch_trials(exp_id)).keys() == _by_id(trials).keys()


@pytest.mark.parametrize("lock", ["soft", "kernel"])
def test_a_repair_whose_lock_was_taken_meanwhile_replaces_nothing(tmp_path: Path, lock: str) -> None:
    """A repair runs long under its lock (it copies, replays and rewrites the whole file). A soft lock unchanged
    for its stale age (a slow NFS copy, a stopped process) is broken by a waiter, which then appends; the
    repair then put its file in place all the same, and the waiter's acknowledged result was gone."""
    path = tmp_path / "orchard.pkl"
    repairer = PickledStorage(path, lock=lock, compact_bytes=1 << 30)
    exp_id, _ = _fill(repairer, 20_000)
    with open(path, "r+b") as f:
        f.seek(10_000)
        f.write(b"\xde\xad" * 16)
    from orchard.storages.pickled.reader import Health

    waiter = PickledStorage(path, lock=lock, timeout=5)
    read = repairer._log.inspect

    def stalled(replay: bool = False) -> Health:
        health = read(replay)  # the repair's read of the whole file
        os.unlink(f"{path}.lock")  # broken as stale (soft), or deleted by a careless user (kernel)
        waiter.register_trial(exp_id, {"x": 0.999}, worker="host:1:w")  # acknowledged to its worker
        return health

    repairer._log.inspect = stalled  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailableError, match="nothing was replaced; run the repair again"):
        repairer.repair()
    assert 0.999 in [t.params["x"] for t in PickledStorage(path, lock=lock).fetch_trials(exp_id)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".damaged")], "its backup is not needed"


def test_records_readers_would_skip_are_refused_when_written(tmp_path: Path) -> None:
    """A write never returns for a record that readers would treat as damage."""
    from orchard.errors import StorageError

    path = tmp_path / "orchard.pkl"
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {})
    size = path.stat().st_size
    with pytest.raises(StorageError, match="params flat"):
        storage.register_trial(exp_id, {"x": [1, 2]})
    trial = storage.register_trial(exp_id, {"x": 1}, worker="w")
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(StorageError, match="nested at most"):
        storage.complete_trial(trial.id, "w", 1.0, deep)
    assert path.stat().st_size > size and storage.check().clean
    assert PickledStorage(path).get_trial(trial.id).status is TrialStatus.RESERVED  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [["completed"], {"completed": 1}])
def test_a_trial_whose_status_is_a_list_or_a_dict_is_a_damaged_record(
    tmp_path: Path, status: object, caplog: pytest.LogCaptureFixture
) -> None:
    """An unhashable status is named like any unknown one; it made every reader fail with TypeError."""
    _skipped_between_two_trials(tmp_path / "orchard.pkl", "s" * 32, "status", status)
    assert "unknown trial status" in caplog.text


def test_a_report_of_a_trial_the_file_does_not_hold_is_skipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed report record of an unknown trial (another program's write) made every reader of the
    file fail with StorageCorruptedError: every worker of every experiment in it stopped."""
    path = tmp_path / "orchard.pkl"
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {})
    kept = storage.register_trial(exp_id, {"x": 1.0}, worker="w")
    stray = {"op": "report", "trial": "u" * 32, "step": 1, "value": 0.5, "heartbeat": 1.7e9}
    with path.open("ab") as f:
        f.write(_frame(pickle.dumps([stray], protocol=5)))
    storage.report_trial(kept.id, "w", 1, 0.25)  # the file goes on after it
    for reader in (PickledStorage(path), storage):
        [trial] = reader.fetch_trials(exp_id)
        assert trial.id == kept.id and trial.reports == [(1, 0.25)]
    assert f"skipped a report of unknown trial {'u' * 32!r}" in caplog.text


HOSTILE = {
    "a 5,000-digit int param": ("params", {"x": 10**5000}),
    "an error that is a list": ("error", ["ValueError", "boom"]),
    "an error whose message is a dict": ("error", {"type": "ValueError", "message": {"a": 1}}),
    "a 5,000-digit int result": ("results", {"n": [10**5000]}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_well_formed_records_with_hostile_values_are_skipped_and_named(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid frame holding a value no reader can handle costs that frame, not every reader."""
    import sys

    sys.set_int_max_str_digits(4300)  # Python's default: a 5,000-digit int cannot become text
    field, value = HOSTILE[case]
    path = tmp_path / "orchard.pkl"
    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})
    kept = storage.complete_trial(storage.register_trial(exp_id, {"x": 0.5}, worker="w").id, "w", 1.0)
    hostile = Trial(id="h" * 32, experiment=exp_id, params={"x": 0.7}, status=TrialStatus.BROKEN,
                    error={"type": "ValueError", "message": "boom"}).to_dict()
    hostile[field] = value
    with path.open("ab") as f:
        f.write(_frame(pickle.dumps([{"op": "trial", "trial": hostile}], protocol=5)))
    after = storage.register_trial(exp_id, {"x": 0.9})
    for reader in (PickledStorage(path), storage):
        assert [t.id for t in reader.fetch_trials(exp_id)] == [kept.id, after.id]
    assert "not Orchard's records" in caplog.text
    assert main(["db", "dump", "--storage", str(path), "-o", str(tmp_path / "dump.json")]) == 0
    assert main(["plot", "regret", "-n", "exp", "--storage", str(path), "-o", str(tmp_path / "r.html")]) == 0
    # ... and the same values are refused when written, in one line, with nothing written
    from orchard.errors import StorageError

    size = path.stat().st_size
    with pytest.raises(StorageError, match="bits|must be a str|must be a dict"):
        if field == "params":
            storage.register_trial(exp_id, value)
        elif field == "error":
            storage.fail_trial(storage.reserve_trial(exp_id, "w").id, "w", value)  # type: ignore[union-attr]
        else:
            storage.complete_trial(storage.reserve_trial(exp_id, "w").id, "w", 1.0, value)  # type: ignore[union-attr]
    assert field != "params" or path.stat().st_size == size
