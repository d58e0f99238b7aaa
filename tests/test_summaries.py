"""Other workers' trials read by their summaries, decoded only when a field beyond them is read.

With hundreds of workers on one file, each worker replays every other worker's
trials; these tests pin what that replay may skip (unpickling a trial's params,
results and reports until something reads them) and what it must still do
(refuse a frame whose summary and record disagree, fence out a lost lock's
frames, read files written before summaries existed).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest

from orchard.cli import main
from orchard.errors import StorageCorruptedError
from orchard.history import History
from orchard.storages.lazy import LazyTrial
from orchard.storages.pickled import PickledStorage, fileformat, summaries
from orchard.trial import Trial, TrialStatus
from tests.test_pickled import _frame, counting_builds

RESULTS = {"objective": 0.25, "loss": [0.5, 0.25], "host": "n1", "cpu": 0.1}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "orchard.pkl"


def _other_workers_trials(path: Path, count: int) -> tuple[str, list[Trial]]:
    """``count`` trials registered, reserved and completed by another process's storage object."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    done = []
    for i in range(count):
        trial = writer.register_trial(exp, {"x": i / 10, "kind": "a"}, worker=f"w{i}", budget=None)
        done.append(writer.complete_trial(trial.id, f"w{i}", i / 10, {**RESULTS, "objective": i / 10}))
    return exp, done


def test_a_worker_decodes_no_other_workers_results_until_its_algorithm_reads_them(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random-search worker counts others' completed trials; it never unpickles their results to do so."""
    exp, done = _other_workers_trials(path, 20)
    records = counting_builds(monkeypatch)
    history = History(PickledStorage(str(path), fsync=False), exp)
    history.refresh()
    assert len(history.observations) == 20 and history.counts[TrialStatus.COMPLETED] == 20
    assert records == []  # nothing decoded: ids, statuses and budget come from the summaries
    assert [t.params for t in history.trials.values()] == [t.params for t in done]  # in the summaries
    assert records == []
    assert [o.params for o in history.observations] == [t.params for t in done]  # observations read results:
    assert sorted(data["id"] for data in records) == sorted(t.id for t in done)  # decoded, once each
    assert [o.objective for o in history.observations] == [t.objective for t in done]


def test_a_trial_read_by_its_summary_reads_as_the_trial_it_stands_for(path: Path) -> None:
    exp, done = _other_workers_trials(path, 3)
    reader = PickledStorage(str(path), fsync=False)
    read = reader.fetch_trials(exp)
    assert all(type(t) is LazyTrial for t in read)
    assert read == done and done == read  # every field, either way round
    assert [pickle.loads(pickle.dumps(t)) for t in read] == done
    assert type(pickle.loads(pickle.dumps(read[0]))) is Trial
    assert repr(read[0]) == repr(done[0])
    read[0].params["x"] = 99.0  # a copy: the storage's trial is not changed
    read[0].results.clear()
    assert reader.fetch_trials(exp) == done
    fresh = reader.fetch_trials(exp)[1]  # changed before anything is decoded: still its own, and no damage
    fresh.params["x"], fresh.heartbeat = -1.0, 5.0
    assert fresh.results == done[1].results and (fresh.params, fresh.heartbeat) == ({"x": -1.0, "kind": "a"}, 5.0)


def test_a_summary_that_disagrees_with_its_record_is_named_when_read_and_repaired_away(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tampered summary cannot make a worker see a trial that is not in the record: reading it fails,
    naming the trial and the repair, and ``db check`` / ``db repair`` treat the frame as damage."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    kept = writer.register_trial(exp, {"x": 0.5}, worker="w0", budget=None)
    record = {"op": "trial", "trial": {**kept.to_record(), "id": "f" * 32, "params": {"x": 0.75}}}
    told = {**record["trial"], "status": "completed", "objective": 0.0}
    buffer = io.BytesIO()
    pickle.Pickler(buffer, protocol=5).dump([record])
    payload = buffer.getvalue() + summaries.encode([{"op": "trial", "trial": told}])
    with path.open("ab") as f:
        f.write(_frame(payload))
    reader = PickledStorage(str(path), fsync=False)
    (lied,) = [t for t in reader.fetch_trials(exp) if t.id == "f" * 32]
    with pytest.raises(StorageCorruptedError, match=r"trial f{32} at byte \d+ is damaged .*differs.*db repair"):
        _ = lied.results
    assert main(["db", "check", "--storage", str(path)]) != 0
    assert "summary differs from its record in status, objective" in capsys.readouterr().out
    assert main(["db", "repair", "--storage", str(path)]) == 0
    assert [t.id for t in PickledStorage(str(path)).fetch_trials(exp)] == [kept.id]


def test_a_frame_of_a_lost_lock_is_fenced_out_by_its_summary_too(path: Path) -> None:
    """A frame written for another offset (its writer had lost a soft lock) is damage to a summary reader."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    trial = writer.register_trial(exp, {"x": 0.5}, worker="w0", budget=None)
    fenced = [{"op": "fence", "at": 12, "lock": "1-abc"}, {"op": "trial", "trial": {**trial.to_record(), "id": "e" * 32}}]
    with path.open("ab") as f:
        f.write(fileformat.encode_frame(fenced))
    found = fileformat.scan(path.read_bytes()[fileformat.HEADER_SIZE:], fileformat.HEADER_SIZE, str(path), lazy=True)
    assert [d.reason for d in found.damaged] == [
        "a frame that is not Orchard's records: it was written for byte 12 by a holder of lock 1-abc that had lost "
        "the lock (fenced out)"]
    assert [t.id for t in PickledStorage(str(path)).fetch_trials(exp)] == [trial.id]


def test_frames_without_summaries_are_read_as_before(path: Path) -> None:
    """Files written before summaries (and snapshots, whose frames hold many records) are decoded whole."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    trial = writer.register_trial(exp, {"x": 0.5}, worker="w0", budget=None)
    bare = pickle.dumps([{"op": "trial", "trial": {**trial.to_record(), "id": "d" * 32}}], protocol=5)
    with path.open("ab") as f:
        f.write(_frame(bare))
    read = {t.id: t for t in PickledStorage(str(path)).fetch_trials(exp)}
    assert type(read["d" * 32]) is Trial and read["d" * 32].params == {"x": 0.5}


def test_only_values_a_reader_accepts_get_a_summary() -> None:
    base = {"id": "a" * 32, "experiment": "b", "params": {}, "status": "reserved", "results": {}}
    assert summaries.encode([{"op": "trial", "trial": base}])
    for odd in ({"objective": 1}, {"heartbeat": float("nan")}, {"attempts": -1}, {"worker": "\udc80"},
                {"status": "gone"}, {"unknown": 1}, {"in_budget": 1}, {"params": {"x": 2**70}}, {"params": {1: 0.5}},
                {"params": {"x": [1]}}):
        assert summaries.encode([{"op": "trial", "trial": {**base, **odd}}]) == b"", odd
    assert summaries.encode([{"op": "drop", "experiment": "b"}]) == b""



def test_a_trial_whose_texts_a_summary_cannot_hold_is_stored_and_read_whole(path: Path) -> None:
    """Params of 80,000 characters, or holding NUL, are a user's to store: such a frame gets no summary (the
    first raised ``struct.error`` from every write of the trial) and every reader decodes its record."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    odd = [{"a": "x" * 40_000, "b": "y" * 40_000}, {"a": "nul\x00inside", "b": "z"}]
    for i, params in enumerate(odd):
        trial = writer.register_trial(exp, params, worker="w", budget=None)
        writer.complete_trial(trial.id, "w", float(i), dict(RESULTS))
    read = PickledStorage(str(path), fsync=False).fetch_trials(exp)
    assert [t.params for t in read] == odd and [t.status for t in read] == [TrialStatus.COMPLETED] * 2
    assert all(not isinstance(t, LazyTrial) for t in read)


def test_a_summary_holds_every_kind_of_param_a_space_gives() -> None:
    params = {"lr": 0.5, "layers": 3, "big": -(2**62), "on": True, "off": False, "none": None, "act": "relu",
              "é": "ünï", "nan": float("nan")}
    record = {"id": "a" * 32, "experiment": "b", "params": params, "status": "completed", "results": {},
              "objective": 0.25, "worker": "w", "heartbeat": 2.0, "attempts": 2, "in_budget": False, "origin": "x"}
    payload = pickle.dumps([{"op": "trial", "trial": record}], protocol=5) + summaries.encode(
        [{"op": "fence", "at": 7, "lock": "l"}, {"op": "trial", "trial": record}])
    at, lock, fields = summaries.decode(memoryview(payload)) or (None, None, {})
    assert (at, lock) == (7, "l")
    assert repr(fields["params"]) == repr(params) and [type(v) for v in fields["params"].values()] == [
        type(v) for v in params.values()]
    assert {k: fields[k] for k in ("objective", "worker", "heartbeat", "attempts", "in_budget", "origin",
                                   "parent", "end_time")} == {
        "objective": 0.25, "worker": "w", "heartbeat": 2.0, "attempts": 2, "in_budget": False, "origin": "x",
        "parent": None, "end_time": None}
    for cut in range(1, 40):  # a summary cut short or shifted never parses as another one
        damaged = payload[:-cut - 3] + payload[-3:]
        assert summaries.decode(memoryview(damaged)) is None or cut == 0


def test_a_history_with_untold_observations_is_freed_without_the_garbage_collector(path: Path) -> None:
    """The observations built when first read refer to no history: a dropped one (and its storage) is
    freed at once, as a MongoDB client held by it must be."""
    import gc
    import weakref

    exp, _ = _other_workers_trials(path, 3)
    history = History(PickledStorage(str(path), fsync=False), exp)
    history.refresh()
    assert len(history.observations) == 3
    gone = weakref.ref(history)
    gc.disable()
    try:
        del history
        assert gone() is None
    finally:
        gc.enable()


def test_a_summary_that_does_not_parse_makes_its_frame_damage_to_workers_and_checks_alike(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    kept = writer.register_trial(exp, {"x": 0.5}, worker="w0", budget=None)
    record = {"op": "trial", "trial": {**kept.to_record(), "id": "c" * 32, "params": {"x": 0.25}}}
    payload = pickle.dumps([record], protocol=5) + b"\x00" * 40 + b"\xff\xffS"  # a length past the payload
    with path.open("ab") as f:
        f.write(_frame(payload))
    assert [t.id for t in PickledStorage(str(path)).fetch_trials(exp)] == [kept.id]
    assert main(["db", "check", "--storage", str(path)]) != 0
    assert "its summary cannot be read" in capsys.readouterr().out


def test_no_change_to_a_summary_makes_its_reader_raise() -> None:
    """A frame passes its checksum whoever wrote it: a summary of another program's making, whatever its
    bytes, reads as a summary or as none (the record is then decoded), never as an error of the reader."""
    full = {"id": "a" * 32, "experiment": "b", "params": {"x": 0.5, "act": "relu", "on": True},
            "status": "reserved", "results": {}, "worker": "w", "parent": "p", "heartbeat": 2.0}
    bare = {"id": "a" * 32, "experiment": "b", "params": {}, "status": "new"}  # two texts; flags may claim more
    for records in ([{"op": "fence", "at": 7, "lock": "l"}, {"op": "trial", "trial": full}],
                    [{"op": "trial", "trial": bare}]):
        pickled = pickle.dumps(records[-1:], protocol=5)
        summary = summaries.encode(records)
        assert summaries.decode(memoryview(pickled + summary)) is not None
        for at in range(len(summary) - 1):
            for value in (0, 1, 0x40, 0x7F, 0xFF, summary[at] ^ 0x80, summary[at] + 1 & 0xFF):
                changed = bytearray(summary)
                changed[at] = value
                summaries.decode(memoryview(pickled + bytes(changed)))  # None or fields; never raises


def test_a_summary_gives_no_int_param_a_stored_record_could_not_hold() -> None:
    """-2**63 fits the summary's 8 bytes but not a stored int (-2**63 < n < 2**63): such a summary is none."""
    record = {"id": "a" * 32, "experiment": "b", "params": {"n": -(2**63) + 1}, "status": "new"}
    pickled = pickle.dumps([{"op": "trial", "trial": record}], protocol=5)
    summary = bytearray(summaries.encode([{"op": "trial", "trial": record}]))
    read = summaries.decode(memoryview(pickled + bytes(summary)))
    assert read is not None and read[2]["params"] == {"n": -(2**63) + 1}
    at = bytes(summary).find((-(2**63) + 1).to_bytes(8, "little", signed=True))
    summary[at] = 0  # -2**63
    assert summaries.decode(memoryview(pickled + bytes(summary))) is None


def test_a_float_param_of_minus_two_to_the_63_beside_an_int_one_is_read_not_skipped_as_damage(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-2.0**63 is a float any space may give; only an int of that value is one no record holds. Beside an
    int param it made every reader skip the trial's frames as damage (and `db repair` drop them)."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    trial = writer.register_trial(exp, {"layers": 3, "x": -(2.0**63)}, worker="w", budget=None)
    done = writer.complete_trial(trial.id, "w", 0.5, dict(RESULTS))
    read = PickledStorage(str(path), fsync=False).fetch_trials(exp)
    assert read == [done] and type(read[0]) is LazyTrial
    assert [type(v) for v in read[0].params.values()] == [int, float]
    assert main(["db", "check", "--storage", str(path)]) == 0
    assert "no damage" in capsys.readouterr().out


@pytest.mark.parametrize(("told", "read"), [(1, True), (1.0, 1), (0, False), (0.0, False)])
def test_a_summary_that_gives_a_param_another_type_than_its_record_is_damage(
        path: Path, capsys: pytest.CaptureFixture[str], told: object, read: object) -> None:
    """A summary's ``1`` for the record's ``True`` (or ``1.0`` for ``1``) compared equal: a worker read one
    type by the summary, another by decoding, and ``db check`` found no damage."""
    writer = PickledStorage(str(path), fsync=False)
    exp = writer.create_experiment("e", {})
    kept = writer.register_trial(exp, {"x": 0.5}, worker="w0", budget=None)
    record = {"op": "trial", "trial": {**kept.to_record(), "id": "f" * 32, "params": {"x": read}}}
    payload = pickle.dumps([record], protocol=5) + summaries.encode(
        [{"op": "trial", "trial": {**record["trial"], "params": {"x": told}}}])
    with path.open("ab") as f:
        f.write(_frame(payload))
    (lied,) = [t for t in PickledStorage(str(path), fsync=False).fetch_trials(exp) if t.id == "f" * 32]
    with pytest.raises(StorageCorruptedError, match="its summary differs from its record in params"):
        _ = lied.results
    assert main(["db", "check", "--storage", str(path)]) != 0
    assert "summary differs from its record in params" in capsys.readouterr().out


def _damaged_inside(path: Path, exp: str, trial_id: str, status: str, **fields: object) -> None:
    """Append a trial frame whose summary reads but whose record holds a result no reader accepts (an int of
    100 bits, nested in a list): another program's write, which a reader finds only when it decodes it."""
    record = {**Trial(id=trial_id, experiment=exp, params={"x": 0.9 if status == "new" else 0.8}).to_record(),
              "status": status, "results": {"n": [10**30]}, **fields}
    with path.open("ab") as f:
        f.write(fileformat.encode_frame([{"op": "trial", "trial": record}]))


def test_a_trial_whose_record_is_damaged_inside_is_set_aside_and_frees_its_unit_of_the_budget(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A waiting trial (and a reservation of a dead worker) whose record was damaged inside its results held a
    unit of max_trials=3, and every reservation or take-back of it failed with StorageCorruptedError: every
    worker stopped, the experiment never finished. Each is now set aside as broken, and the budget is met."""
    import orchard

    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=3,
                                   heartbeat=1, storage=str(path))
    store = PickledStorage(str(path), fsync=False)
    exp_id = store.require_experiment("e").id
    _damaged_inside(path, exp_id, "a" * 32, "new")
    _damaged_inside(path, exp_id, "b" * 32, "reserved", worker="gone:1:w", heartbeat=1.7e9, start_time=1.7e9,
                    attempts=1)
    exp.workon(lambda x: x, n_workers=1, executor="single")  # before: stopped at the first damaged trial
    counts = {s.value: n for s, n in PickledStorage(str(path)).count_trials(exp_id).items() if n}
    assert counts == {"completed": 3, "broken": 2}
    broken = PickledStorage(str(path)).fetch_trials(exp_id, [TrialStatus.BROKEN])
    assert {t.id for t in broken} == {"a" * 32, "b" * 32}
    assert all(t.error is not None and t.error["reason"] == "damaged" and "db repair" in t.error["message"]
               for t in broken)
    assert "set aside as broken, so that it holds no unit of the budget" in caplog.text
