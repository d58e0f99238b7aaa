"""Conformance checks on the storage object itself: pickled, reopened by URI, copies handed out."""

from __future__ import annotations

import pickle

import pytest

from orchard.errors import OrchardError
from orchard.storages import BaseStorage, get_storage
from orchard.testing._checks import W1, W2, Checks, frozen, one_of_each_status, reserve_as, snapshot, stored
from orchard.trial import TrialStatus

__all__ = ["HandleChecks"]


class HandleChecks(Checks):
    """The storage object itself: pickling, reopening by URI, copies handed out."""

    def test_pickled_storage_sees_the_same_data(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 1.0})
        if storage.uri.startswith("memory:"):
            with pytest.raises(OrchardError, match="memory"):
                pickle.dumps(storage)
            pytest.skip("memory:// is shared by threads only (it refused to pickle, as it must)")
        copy = pickle.loads(pickle.dumps(storage))
        try:
            assert copy.require_experiment("exp").id == exp
            assert snapshot(copy.fetch_trials(exp)) == snapshot([trial])
            assert reserve_as(copy, exp, W2).id == trial.id
            assert stored(storage, trial.id).worker == W2, "a write through the copy is not visible"
            storage.complete_trial(trial.id, W2, 1.0)
            assert stored(copy, trial.id).status is TrialStatus.COMPLETED
        finally:
            copy.close()

    def test_reopen_by_uri_and_close_one_handle(self, storage: BaseStorage, exp: str) -> None:
        if storage.uri.rstrip("/") == "memory:":
            pytest.skip("a bare memory:// URI opens a new, empty storage by design")
        trial = storage.register_trial(exp, {"x": 1.0})
        other = get_storage(storage.uri)
        assert snapshot(other.fetch_trials(exp)) == snapshot([trial])
        other.close()
        assert reserve_as(storage, exp, W1).id == trial.id, "closing a second handle broke the first"

    def test_returned_trials_are_copies(self, storage: BaseStorage, exp: str) -> None:
        made = one_of_each_status(storage, exp)
        handed_out = [
            *made.values(),
            stored(storage, made[TrialStatus.NEW].id),
            *storage.fetch_trials(exp),
            *storage.fetch_changes(exp)[0],
            storage.register_trial(exp, {"x": 100}, worker=W2),
        ]
        before = frozen(storage, exp)
        for trial in handed_out:
            assert trial is not None
            trial.params["x"] = -1
            trial.params["injected"] = True
            trial.results["injected"] = True
            trial.status = TrialStatus.BROKEN
            trial.worker = "intruder"
            if trial.error is not None:
                trial.error["message"] = "changed"
        assert frozen(storage, exp) == before, "mutating a returned Trial changed the stored state"
