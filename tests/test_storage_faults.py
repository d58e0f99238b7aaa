"""Faults of the storage itself, done for real: hostile MongoDB documents, a wire server down
longer than the lease, a full or read-only disk under the pickle file, a file deleted under
running workers (SPEC §5.9, §5.10)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from bson.decimal128 import Decimal128

from orchard.cli import main
from orchard.dashboard import StorageView
from orchard.dashboard._payloads import to_json, trial_rows
from orchard.errors import SpaceError, StorageCorruptedError
from orchard.space import trial_id
from orchard.storages import get_storage
from orchard.trial import Trial, TrialStatus
from tests.conftest import backend_uri

# -- hostile values in MongoDB documents ------------------------------------------------

#: Values another program could write into a trial document. A 5,000-digit int cannot be one: BSON
#: has no int beyond 64 bits (pymongo refuses to send one); a 6,000-digit Decimal128 stands for it.
HOSTILE: dict[str, tuple[str, Any]] = {
    "an error that is a list": ("error", ["ValueError", "boom"]),
    "an error whose message is a dict": ("error", {"type": "ValueError", "message": {"a": 1}}),
    "a param that is a list": ("params", {"x": [0.1, 0.2]}),
    "a 6,000-digit Decimal128 param": ("params", {"x": Decimal128("1E+6000")}),
}


@pytest.mark.parametrize("backend", [pytest.param("mongomock", id="mongomock"),
                                     pytest.param("mongodb", id="mongodb", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_mongodb_documents_are_skipped_and_named(
        backend: str, case: str, request: pytest.FixtureRequest, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    field, value = HOSTILE[case]
    uri = backend_uri(backend, request, tmp_path)
    storage: Any = get_storage(uri)
    exp = storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random"})
    kept = storage.complete_trial(storage.register_trial(exp, {"x": 0.5}, worker="w").id, "w", 1.0)
    hostile = Trial(id="h" * 32, experiment=exp, params={"x": 0.7}, status=TrialStatus.BROKEN,
                    error={"type": "ValueError", "message": "boom"}).to_dict()
    hostile["_id"] = hostile.pop("id")
    hostile[field] = value
    storage._trials.insert_one(hostile)  # written by another program
    assert [t.id for t in storage.fetch_trials(exp)] == [kept.id]
    assert [t.id for t in get_storage(uri).fetch_changes(exp)[0]] == [kept.id]
    assert "h" * 32 in caplog.text and "not one Orchard writes" in caplog.text
    with pytest.raises(StorageCorruptedError, match="not one Orchard writes"):
        storage.get_trial("h" * 32)
    assert main(["db", "dump", "--storage", uri, "-o", str(tmp_path / "dump.json")]) == 0
    assert main(["plot", "regret", "-n", "exp", "--storage", uri, "-o", str(tmp_path / "r.html")]) == 0
    shown = StorageView(get_storage(uri)).experiment("exp")  # what the dashboard's trials API serves
    assert shown is not None
    rows = json.loads(to_json(trial_rows(shown)))
    assert [t["id"] for t in rows["trials"]] == [kept.id]


def test_a_hostile_waiting_trial_is_broken_not_handed_out(caplog: pytest.LogCaptureFixture) -> None:
    storage: Any = get_storage("mongomock://")
    exp = storage.create_experiment("exp", {})
    doc = Trial(id="h" * 32, experiment=exp, params={"x": [1, 2]}, submit_time=0.0).to_dict()
    doc["_id"] = doc.pop("id")
    storage._trials.insert_one(doc)
    fine = storage.register_trial(exp, {"x": 0.5})
    assert storage.reserve_trial(exp, "w").id == fine.id  # the hostile one, older, is skipped
    assert storage.count_trials(exp)[TrialStatus.BROKEN] == 1
    assert "marked broken instead of evaluated" in caplog.text


def test_a_nested_huge_int_in_params_is_a_clear_error() -> None:
    sys.set_int_max_str_digits(4300)
    with pytest.raises(SpaceError, match="param 'x' cannot identify a trial.*as str or float"):
        trial_id("exp", {"y": 1, "x": {"a": 10**5000}})
