"""What an adversary or a careless user does to a storage under running workers, and what must survive it.

Each test here failed on the code before its fix. Multi-process ones use real OS
processes and are marked ``slow``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchard.errors import ReservationLostError, TrialNotFoundError
from orchard.storages import get_storage
from orchard.storages.pickled import PickledStorage
from orchard.storages.table import REMEMBERED, TrialTable

SPACE = {"space": {"x": "uniform(0, 1)"}}


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "orchard.pkl"


# -- a long-lived process --------------------------------------------------------------


def test_a_process_that_outlives_many_deleted_experiments_stays_bounded() -> None:
    """A dashboard, or a loop creating and deleting experiments, remembered every trial of every one it saw deleted."""
    storage = get_storage("memory://")
    for i in range(REMEMBERED + 200):
        exp_id = storage.create_experiment(f"e{i}", SPACE)
        for k in range(5):
            held = storage.register_trial(exp_id, {"x": k / 10}, worker="w")
            if k:  # finished trials refuse every write whatever happens: nothing to remember for them
                storage.complete_trial(held.id, "w", 1.0)
            else:
                running = held
        storage.delete_experiment(exp_id)
    table: TrialTable = storage._table  # type: ignore[attr-defined]
    assert len(table._deleted) == REMEMBERED
    assert len(table._deleted_trials) == REMEMBERED  # the one unfinished trial of each
    # the worker of the latest deleted experiment is still told what happened to its trial
    with pytest.raises(TrialNotFoundError, match=f"no trial with id '{running.id}'.*experiment 'e{i}'.*was deleted"):
        storage.complete_trial(running.id, "w", 1.0)


# -- a replaced file ---------------------------------------------------------------------


def test_a_replaced_file_is_named_only_for_the_trials_it_took_away(path: Path) -> None:
    """Once the file had been replaced, every later missing trial was blamed on it (and dropped as 'lost')."""
    worker, admin = PickledStorage(path), PickledStorage(path)
    exp_id = worker.create_experiment("exp", SPACE)
    older = path.read_bytes()
    taken = worker.register_trial(exp_id, {"x": 0.5}, worker="w1")
    path.write_bytes(older)  # an older copy copied over it: `taken` is gone
    with pytest.raises(ReservationLostError, match=f"no trial with id '{taken.id}'.*was (replaced|truncated)"):
        worker.complete_trial(taken.id, "w1", 1.0)
    later = worker.register_trial(exp_id, {"x": 0.25}, worker="w1")
    admin.delete_experiment(exp_id)  # later, and unrelated: `orchard db rm`
    with pytest.raises(TrialNotFoundError, match=f"no trial with id '{later.id}'.*was deleted from the storage"):
        worker.complete_trial(later.id, "w1", 1.0)
    with pytest.raises(TrialNotFoundError) as never_there:
        worker.release_trial("0" * 32, None)
    assert not isinstance(never_there.value, ReservationLostError)
    assert "replaced" not in str(never_there.value) and "truncated" not in str(never_there.value)
    assert os.path.getsize(path) > 0


# -- one reading of a pickle URI ---------------------------------------------------------


@pytest.mark.parametrize(("uri", "expected"), [
    ("runs/x.pkl", ("runs/x.pkl", {})),
    ("runs/x.pkl?lock=soft&fsync=0", ("runs/x.pkl", {"lock": "soft", "fsync": "0"})),
    ("pickle://runs/db", ("runs/db", {})),
    ("PICKLE:///abs/x.pkl?timeout=5", ("/abs/x.pkl", {"timeout": "5"})),
    ("runs/db", None),
    ("mongodb://h/x.pkl", None),
    ("memory://x.pkl", None),
])
def test_a_pickle_uri_is_read_one_way(uri: str, expected: object) -> None:
    from orchard.storages._uri import pickle_path

    assert pickle_path(uri) == expected


# -- orchard db load checks a trial as every reader does -----------------------------------


@pytest.mark.parametrize(("field", "value", "words"), [
    ("results", {"n": 2**70}, "an int of 71 bits"),
    ("attempts", "3", "field 'attempts' is of type str, not an int"),
    ("worker", 5, "field 'worker' is of type int, not a string"),
])
def test_db_load_refuses_a_trial_readers_would_skip_before_loading_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        field: str, value: object, words: str) -> None:
    """Such a trial was stored by `db load` (or refused halfway, after the experiments before it were loaded)."""
    import json

    import orchard
    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        exp = orchard.build_experiment(name, space={"x": "uniform(0, 1)"}, storage="src.pkl")
        held = exp.storage.register_trial(exp.id, {"x": 0.5}, worker="w")
        exp.storage.complete_trial(held.id, "w", 0.5)
    assert main(["db", "dump", "-o", "dump.json", "--storage", "src.pkl"]) == 0
    data = json.loads(Path("dump.json").read_text())
    data["experiments"][1]["trials"][0][field] = value
    Path("dump.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["db", "load", "dump.json", "--storage", "target.pkl"]) == 2
    error = capsys.readouterr().err
    assert "experiment 1 ('b'), trial 0 cannot be loaded" in error and words in error
    assert get_storage("target.pkl").list_experiments() == [], "something was stored"


# -- the lock file deleted under running workers ---------------------------------------------


def test_a_compaction_never_drops_a_write_made_under_a_new_lock_file(path: Path) -> None:
    """`rm *.lock` while a worker compacts: another process locks a new lock file and writes, and the
    compaction's rename threw that write away (4 workers, a deletion every 50 ms for 20 s: 63 returned
    results lost)."""
    holder, other = PickledStorage(path, compact_bytes=4096), PickledStorage(path)
    exp_id = holder.create_experiment("exp", SPACE)
    written = []
    snapshot = holder._log.snapshot_frames

    def snapshot_while_the_lock_file_is_deleted() -> Iterator[bytes]:
        if not written:
            os.unlink(f"{path}.lock")
            written.append(other.register_trial(exp_id, {"x": 0.999}, worker="w2"))
        yield from snapshot()

    holder._log.snapshot_frames = snapshot_while_the_lock_file_is_deleted  # type: ignore[method-assign]
    for i in range(100):
        holder.register_trial(exp_id, {"x": i / 1000}, worker="w1")
    assert written, "no compaction happened"
    reader = PickledStorage(path)
    assert reader.get_trial(written[0].id) is not None, "the write made under the new lock file was lost"
    health = reader.check()
    assert len(reader.fetch_trials(exp_id)) == 101 and health.clean
    assert health.frames < 102, "the file is compacted once the lock is held again (102 frames uncompacted)"


# -- a careless user ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "repair"])
def test_db_check_and_repair_of_a_mistyped_path_say_so_and_create_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """`orchard db repair --storage runs/orchrad.pkl` said 'no damage' / 'nothing to repair' and made runs/."""
    from orchard.cli import main

    typo = tmp_path / "runs" / "orchrad.pkl"
    assert main(["db", command, "--storage", str(typo)]) == 1
    assert f"storage file {typo} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_db_test_of_a_new_file_never_removes_what_a_worker_wrote_there_meanwhile(tmp_path: Path) -> None:
    """`orchard db test --storage runs/x.pkl` removes the file it created; a hunt that created it and stored a
    result while the test ran (reproduced with two processes) lost its experiment without a word."""
    from orchard.cli._dbtest import check_storage

    path = tmp_path / "runs" / "x.pkl"
    steps = check_storage(lambda: get_storage(str(path)))
    assert next(steps).startswith("storage ")  # the test is under way
    worker = PickledStorage(path)
    exp = worker.create_experiment("mine", SPACE)
    trial = worker.register_trial(exp, {"x": 0.1}, worker="host:1:w")
    worker.complete_trial(trial.id, "host:1:w", 1.0)
    *_, cleanup, passed = steps
    assert [t.objective for t in PickledStorage(path).fetch_trials(exp)] == [1.0]
    assert passed == "all checks passed" and "test file" in cleanup
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.pkl", "x.pkl.lock"], "the test's file is removed"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_storages_a_long_lived_process_opens_and_drops_leak_no_descriptor(path: Path) -> None:
    """`orchard.get_experiment(...)` in a notebook loop kept one descriptor per call open, up to 'Too many open files'."""
    import orchard

    orchard.build_experiment("exp", space={"x": "uniform(0, 1)"}, storage=str(path))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        orchard.get_experiment("exp", storage=str(path)).fetch_trials()
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_a_file_deleted_with_its_folder_under_a_worker_is_named_and_not_recreated(tmp_path: Path) -> None:
    """`rm -r runs/` under a running worker: its next write said 'could not lock …: No such file or directory',
    a StorageError that is not retried like the file's deletion (a StorageUnavailableError naming it)."""
    import shutil

    from orchard.errors import StorageUnavailableError

    worker = PickledStorage(tmp_path / "runs" / "orchard.pkl")
    exp_id = worker.create_experiment("exp", SPACE)
    held = worker.register_trial(exp_id, {"x": 0.5}, worker="w1")
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(StorageUnavailableError, match="orchard.pkl was deleted with its folder while this process"):
        worker.complete_trial(held.id, "w1", 1.0)
    assert not (tmp_path / "runs").exists(), "recreated under the running worker"


def test_an_append_never_overwrites_a_write_made_under_a_new_lock_file(path: Path) -> None:
    """The holder checked its lock file before encoding its frame; a process that took the new lock file
    in between wrote at the same offset, and the holder's frame overwrote that returned write."""
    from orchard.errors import StorageUnavailableError

    holder, other = PickledStorage(path), PickledStorage(path)
    exp_id = holder.create_experiment("exp", SPACE)
    written = []
    encode = holder._log._encode

    def encode_while_the_lock_file_is_deleted(records: list[dict[str, object]]) -> bytes:
        frame = encode(records)
        if not written:
            os.unlink(f"{path}.lock")
            written.append(other.register_trial(exp_id, {"x": 0.999}, worker="w2"))
        return frame

    holder._log._encode = encode_while_the_lock_file_is_deleted  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailableError, match="lock file .* was deleted or replaced"):
        holder.register_trial(exp_id, {"x": 0.5}, worker="w1")
    assert PickledStorage(path).get_trial(written[0].id) is not None, "the write under the new lock file was lost"
    assert holder.register_trial(exp_id, {"x": 0.5}, worker="w1").worker == "w1"  # retried under the new lock file
    assert PickledStorage(path).check().clean


@pytest.mark.parametrize("created", ["yesterday", 1e300, float("nan")])
def test_db_load_refuses_a_creation_time_no_reader_can_show(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], created: object) -> None:
    """'yesterday' was refused halfway (after the experiments before it were loaded); 1e300 and NaN were
    stored, and `orchard info` then failed on 'unexpected OverflowError' / 'ValueError'."""
    import json

    import orchard
    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        orchard.build_experiment(name, space={"x": "uniform(0, 1)"}, storage="src.pkl")
    assert main(["db", "dump", "-o", "dump.json", "--storage", "src.pkl"]) == 0
    data = json.loads(Path("dump.json").read_text())
    data["experiments"][1]["created"] = created
    Path("dump.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["db", "load", "dump.json", "--storage", "target.pkl"]) == 2
    assert "experiment 1 ('b') cannot be loaded: field 'created' is" in capsys.readouterr().err
    assert get_storage("target.pkl").list_experiments() == [], "something was stored"


@pytest.mark.parametrize("time", [float("nan"), float("inf"), 1e300])
def test_a_trial_record_with_a_time_no_reader_can_use_is_skipped_as_damage(
        path: Path, caplog: pytest.LogCaptureFixture, time: float) -> None:
    """Such a record was kept: a NaN heartbeat never equals itself (leases are judged by equality), and
    1e300 or inf cannot be shown as a date."""
    from orchard.storages.pickled import fileformat

    storage = PickledStorage(path)
    exp_id = storage.create_experiment("exp", SPACE)
    held = storage.register_trial(exp_id, {"x": 0.5}, worker="w1")
    record = {"op": "trial", "trial": {**held.to_record(), "heartbeat": time}}
    with open(path, "ab") as f:  # a well-formed frame written by another program
        f.write(fileformat.encode_frame([record]))
    assert PickledStorage(path).get_trial(held.id) == held
    assert "field 'heartbeat' is" in caplog.text and "not a time" in caplog.text


def test_a_storage_path_with_a_nul_character_is_a_configuration_error() -> None:
    """It raised a bare ValueError ('embedded null byte') from the OS layer, outside Orchard's error tree."""
    from orchard.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="holds a NUL character"):
        get_storage("runs/a\0b.pkl")


def test_an_append_overwritten_under_a_new_lock_file_is_not_reported_stored(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that took a new lock file, and had read the file before the holder wrote, wrote at the
    same offset after it: the holder returned a write that was overwritten (lost)."""
    from orchard.errors import StorageUnavailableError
    from orchard.space import trial_id
    from orchard.storages.pickled import fileformat, writer
    from orchard.trial import Trial

    holder = PickledStorage(path)
    exp_id = holder.create_experiment("exp", SPACE)
    theirs = Trial(id=trial_id(exp_id, {"x": 0.999}), experiment=exp_id, params={"x": 0.999}, submit_time=1.0,
                   results={"pad": "z" * 200})  # a frame longer than the holder's: it covers it
    pwrite_all = fileformat.pwrite_all

    def write_then_be_overwritten(fd: int, data: bytes, offset: int) -> None:
        pwrite_all(fd, data, offset)
        monkeypatch.undo()  # once
        os.unlink(f"{path}.lock")  # and another process, under a new lock file, writes at the same offset
        pwrite_all(fd, fileformat.encode_frame([{"op": "trial", "trial": theirs.to_record()}]), offset)

    monkeypatch.setattr(writer.fileformat, "pwrite_all", write_then_be_overwritten)
    with pytest.raises(StorageUnavailableError, match="this write may not be kept"):
        holder.register_trial(exp_id, {"x": 0.5}, worker="w1")
    assert holder.register_trial(exp_id, {"x": 0.5}, worker="w1").worker == "w1"  # the retry stores it
    assert {t.params["x"] for t in PickledStorage(path).fetch_trials(exp_id)} == {0.5, 0.999}


def test_an_append_never_lands_over_a_frame_written_since_its_writer_read_the_file(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer under a new lock file that read the file before the old holder appended wrote its frame
    over the holder's returned one (the lock file's check passes: its own lock file is the current one)."""
    from orchard.errors import StorageUnavailableError

    holder, other = PickledStorage(path), PickledStorage(path)
    exp_id = holder.create_experiment("exp", SPACE)
    other.fetch_trials(exp_id)  # read up to here
    kept = holder.register_trial(exp_id, {"x": 0.5}, worker="w1")  # then the holder appends (and returns)
    os.unlink(f"{path}.lock")
    monkeypatch.setattr(other._log, "sync", lambda fd, locked: True)  # as if it had read under its lock first
    with pytest.raises(StorageUnavailableError, match="nothing was written"):
        other.register_trial(exp_id, {"x": 0.999}, worker="w2")
    monkeypatch.undo()
    assert PickledStorage(path).get_trial(kept.id) is not None


def test_db_dump_never_writes_through_a_link_planted_at_its_temporary_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file was DUMP.tmpPID, opened without O_EXCL: another user of a shared folder could plant
    a symbolic link there, and the dump overwrote the file it named."""
    import orchard
    from orchard.cli import main

    monkeypatch.chdir(tmp_path)
    orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage="src.pkl")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / f"dump.json.tmp{os.getpid()}").symlink_to(victim)
    assert main(["db", "dump", "-o", "dump.json", "--storage", "src.pkl"]) == 0
    assert victim.read_text() == "precious"
    assert "orchard-dump" in (tmp_path / "dump.json").read_text()


def test_db_repair_never_writes_its_backup_through_a_planted_link(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup (PATH.TIMESTAMP-PID.damaged) was written with shutil.copy2, through a link planted there."""
    from orchard.errors import StorageError
    from orchard.storages.pickled import storage as pickled_storage

    storage = PickledStorage(path)
    storage.create_experiment("exp", SPACE)
    with open(path, "ab") as f:
        f.write(b"\x07" * 64)  # damage
    monkeypatch.setattr(pickled_storage.time, "strftime", lambda fmt: "20261206T000000")
    victim = path.parent / "victim.txt"
    victim.write_text("precious")
    Path(f"{path}.20261206T000000-{os.getpid()}.damaged").symlink_to(victim)
    with pytest.raises(StorageError, match="File exists"):
        storage.repair()
    assert victim.read_text() == "precious"


def test_a_lock_file_made_a_directory_under_a_worker_is_named_and_waited_out(tmp_path: Path) -> None:
    """`rm PATH.lock; mkdir PATH.lock` under a running `orchard hunt`: it stopped at once with 'could not lock storage
    file …: Is a directory', a StorageError that is not retried, and the result of its running trial was lost."""
    from orchard.errors import StorageUnavailableError
    from orchard.storages.retrying import RetryingStorage

    path = tmp_path / "orchard.pkl"
    worker = PickledStorage(path)
    exp_id = worker.create_experiment("exp", SPACE)
    held = worker.register_trial(exp_id, {"x": 0.5}, worker="w1")
    os.remove(f"{path}.lock")
    os.mkdir(f"{path}.lock")
    with pytest.raises(StorageUnavailableError, match=r"orchard.pkl.lock is a directory, .*remove it \(rmdir\)"):
        worker.complete_trial(held.id, "w1", 1.0)
    os.rmdir(f"{path}.lock")
    assert RetryingStorage(worker, patience=5.0).complete_trial(held.id, "w1", 1.0).objective == 1.0
