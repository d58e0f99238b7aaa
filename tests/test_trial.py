"""The trial record and its lifecycle."""

from __future__ import annotations

import dataclasses

from orchard.trial import ALLOWED_TRANSITIONS, Trial, TrialStatus, can_transition


def test_to_dict_covers_every_field_and_round_trips() -> None:
    trial = Trial("t", "e", {"x": 1.5}, TrialStatus.BROKEN, 2.0, {"acc": 0.9}, "h:1:u", 3.0, 1.0, 2.0, 4.0,
                  {"type": "ValueError", "message": "m"}, 2)
    data = trial.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(Trial)]
    assert data["status"] == "broken" and Trial.from_dict(data) == trial
    data["params"]["x"] = 9  # the dict is a copy
    assert trial.params == {"x": 1.5}
    assert Trial.from_dict({**data, "_id": "ignored", "slot": "e:1"}).id == "t"


def test_lifecycle_transitions_match_the_spec() -> None:
    assert can_transition(TrialStatus.NEW, TrialStatus.RESERVED)
    assert can_transition(TrialStatus.INTERRUPTED, TrialStatus.RESERVED)
    assert {s for s in TrialStatus if can_transition(TrialStatus.RESERVED, s)} == {
        TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.INTERRUPTED}
    assert not ALLOWED_TRANSITIONS[TrialStatus.COMPLETED] and not ALLOWED_TRANSITIONS[TrialStatus.BROKEN]
    assert not can_transition(TrialStatus.NEW, TrialStatus.COMPLETED)
    assert [s for s in TrialStatus if s.is_terminal] == [TrialStatus.COMPLETED, TrialStatus.BROKEN]
    assert {s for s in TrialStatus if s.is_reservable} == {TrialStatus.NEW, TrialStatus.INTERRUPTED}
