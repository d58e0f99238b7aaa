"""The trial record and its lifecycle."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from orchard import trial as transitions
from orchard.errors import ReservationLostError, TrialNotFoundError
from orchard.trial import Lease, Trial, TrialStatus


def test_to_dict_covers_every_field_and_round_trips() -> None:
    trial = Trial("t", "e", {"x": 1.5}, TrialStatus.BROKEN, 2.0, {"acc": 0.9}, "h:1:u", 3.0, 1.0, 2.0, 4.0,
                  {"type": "ValueError", "message": "m"}, 2)
    data = trial.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(Trial)]
    assert data["status"] == "broken" and Trial.from_dict(data) == trial
    data["params"]["x"] = 9  # the dict is a copy
    assert trial.params == {"x": 1.5}
    assert Trial.from_dict({**data, "_id": "ignored", "slot": "e:1"}).id == "t"


def test_reports_and_verdict_round_trip_and_old_records_load() -> None:
    trial = Trial("t", "e", {"x": 1.5}, TrialStatus.PRUNED, 0.4, reports=[(1, 0.5), (3, 0.4)],
                  verdict={"pruner": "median", "cutoff": 0.3})
    data = trial.to_dict()
    assert data["reports"] == [[1, 0.5], [3, 0.4]] and data["status"] == "pruned"
    assert Trial.from_dict(data) == trial
    assert pickle.loads(pickle.dumps(trial)) == trial
    old = {k: v for k, v in data.items() if k not in ("reports", "verdict", "parent", "attempts")}
    assert (Trial.from_dict(old).reports, Trial.from_dict(old).verdict) == ([], None)


def _arrows() -> dict[str, transitions.Change]:
    reserved = Trial("t", "e", {}, status=TrialStatus.RESERVED, worker="w", heartbeat=1.0, attempts=1)
    return {
        "reserve": transitions.reserve("w", 1.0),
        "heartbeat": transitions.heartbeat("w", 1.0),
        "complete": transitions.complete("w", 0.5, {}, 1.0),
        "fail": transitions.fail("w", {"type": "E"}, 1.0),
        "release": transitions.release(reserved, "w"),
        "take back": transitions.take_back(reserved, Lease("w", 1.0), 3, 1.0),
        "break as lost": transitions.take_back(reserved, Lease("w", 1.0), 1, 1.0),
    }


def test_lifecycle_transitions_match_the_spec() -> None:
    moves = {(name, frozenset(change.before), change.sets.get("status")) for name, change in _arrows().items()}
    waiting, reserved = frozenset({TrialStatus.NEW, TrialStatus.INTERRUPTED}), frozenset({TrialStatus.RESERVED})
    assert moves == {
        ("reserve", waiting, TrialStatus.RESERVED), ("heartbeat", reserved, None),
        ("complete", reserved, TrialStatus.COMPLETED), ("fail", reserved, TrialStatus.BROKEN),
        ("release", reserved, TrialStatus.INTERRUPTED), ("take back", reserved, TrialStatus.INTERRUPTED),
        ("break as lost", reserved, TrialStatus.BROKEN),
    }
    left = set().union(*(change.before for change in _arrows().values()))
    assert not left & {TrialStatus.COMPLETED, TrialStatus.BROKEN}  # terminal: no arrow leaves them


def test_a_refused_arrow_names_the_trial_its_owner_and_the_writer() -> None:
    done = Trial("t1", "e", {}, status=TrialStatus.COMPLETED, worker="a")
    with pytest.raises(ReservationLostError, match="trial t1 is completed and owned by a, not reserved by b"):
        transitions.complete("b", 1.0, {}, 2.0).applied_to(done)
    with pytest.raises(TrialNotFoundError, match="no trial with id 't2'"):
        transitions.fail("b", {}, 2.0).applied_to(None, "t2")


def test_a_graceful_release_gives_its_attempt_back_never_below_zero() -> None:
    for attempts, after in ((2, 1), (1, 0), (0, 0)):
        trial = Trial("t", "e", {}, status=TrialStatus.RESERVED, worker="w", attempts=attempts)
        assert transitions.release(trial, "w").applied_to(trial).attempts == after


def test_statuses() -> None:
    assert [s for s in TrialStatus if s.is_terminal] == [TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.PRUNED]
    assert {s for s in TrialStatus if s.is_reservable} == {TrialStatus.NEW, TrialStatus.INTERRUPTED}


def test_a_report_on_mongodb_is_refused_by_held_by_s_rule_on_the_two_fields_it_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MongoDB's report path checked "reserved by this worker" with a rule of its own beside held_by's: one
    rule now, so a change to it reaches both (here: a rule that also lets an interrupted trial's last owner in)."""
    from orchard.storages.mongodb import writes

    for status in TrialStatus:
        for holder in ("w1", "w2", None):
            trial = Trial(id="t", experiment="e", params={}, status=status, worker=holder)
            want = transitions.held_by("w1").refusal("t", trial, "db")
            got = writes.report_refusal("t", {"status": status.value, "worker": holder}, "w1", "db")
            assert (type(got), str(got)) == (type(want), str(want))
    assert isinstance(writes.report_refusal("t", None, "w1", "db"), TrialNotFoundError)
    hostile = writes.report_refusal("t", {"status": ["reserved"], "worker": "w1"}, "w1", "db")
    assert isinstance(hostile, ReservationLostError)  # another program's document: refused, named
    lenient = transitions.Change(frozenset({TrialStatus.RESERVED, TrialStatus.INTERRUPTED}), "w1")
    monkeypatch.setattr(transitions, "held_by", lambda worker: lenient)
    assert writes.report_refusal("t", {"status": "interrupted", "worker": "w1"}, "w1", "db") is None
