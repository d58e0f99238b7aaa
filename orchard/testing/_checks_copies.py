"""Conformance checks: every record a storage hands out is the caller's own copy.

A caller that mutates a returned :class:`~orchard.trial.Trial` or
:class:`~orchard.storages.base.ExperimentRecord` (its fields, or the dicts
inside it) must never change what the storage holds, whichever verb returned it.
"""

from __future__ import annotations

from typing import Any

from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.testing._checks import CONFIG, W1, W2, Checks, frozen, register_many, reserve_as, stored
from orchard.trial import Trial, TrialStatus

__all__ = ["CopyChecks"]


def _vandalise_trial(trial: Trial | None) -> None:
    assert trial is not None
    trial.params["x"] = -1
    trial.params["injected"] = True
    trial.results["injected"] = {"nested": [1]}
    trial.status = TrialStatus.BROKEN
    trial.worker = "intruder"
    if trial.error is not None:
        trial.error["message"] = "changed"


def _vandalise_experiment(record: ExperimentRecord | None) -> None:
    assert record is not None
    record.name = "renamed"
    record.config["max_trials"] = -1
    record.config["injected"] = True
    space: Any = record.config.get("space")
    if isinstance(space, dict):
        space["x"] = "uniform(-9, 9)"


def _experiments(storage: BaseStorage) -> list[dict[str, Any]]:
    return [e.to_dict() for e in storage.list_experiments()]


class CopyChecks(Checks):
    """Records returned by every verb are copies: mutating them leaves the storage unchanged."""

    def test_returned_experiments_are_copies(self, storage: BaseStorage, exp: str) -> None:
        before = _experiments(storage)
        handed_out = [
            storage.get_experiment("exp"),
            storage.require_experiment("exp"),
            *storage.list_experiments(),
        ]
        for record in handed_out:
            _vandalise_experiment(record)
        assert _experiments(storage) == before, "mutating a returned ExperimentRecord changed the storage"
        updated = storage.update_experiment(exp, {"max_trials": 20})
        before = _experiments(storage)
        _vandalise_experiment(updated)
        assert _experiments(storage) == before, "mutating update_experiment's record changed the storage"
        assert storage.require_experiment("exp").config == {**CONFIG, "max_trials": 20}

    def test_trials_returned_by_every_write_verb_are_copies(self, storage: BaseStorage, exp: str) -> None:
        register_many(storage, exp, 4)
        handed_out: list[Trial | None] = [storage.register_trial(exp, {"x": 10.0}, worker=W1)]
        done, failed, released = (reserve_as(storage, exp, W2) for _ in range(3))
        handed_out += [done, failed, released]
        handed_out.append(storage.complete_trial(done.id, W2, 1.0, {"metric": {"a": [1, 2]}}))
        handed_out.append(storage.fail_trial(failed.id, W2, {"type": "ValueError", "message": "boom"}))
        handed_out.append(storage.release_trial(released.id, W2))
        stale = reserve_as(storage, exp, W1)
        assert stale.lease is not None
        lost = storage.release_lost(exp, {stale.id: stale.lease}, max_attempts=3)
        assert [t.id for t in lost] == [stale.id]
        handed_out += lost
        before = frozen(storage, exp)
        for trial in handed_out:
            _vandalise_trial(trial)
        assert frozen(storage, exp) == before, "mutating a Trial returned by a write verb changed the storage"

    def test_trials_returned_by_every_read_verb_are_copies(self, storage: BaseStorage, exp: str) -> None:
        register_many(storage, exp, 2)
        trial = reserve_as(storage, exp, W1)
        storage.complete_trial(trial.id, W1, 0.5, {"metric": {"nested": [1, 2]}})
        handed_out: list[Trial | None] = [
            stored(storage, trial.id),
            storage.best_trial(exp),
            *storage.fetch_trials(exp),
            *storage.fetch_trials(exp, [TrialStatus.COMPLETED]),
            *storage.fetch_changes(exp)[0],
        ]
        before = frozen(storage, exp)
        for copy in handed_out:
            _vandalise_trial(copy)
            if copy is not None and copy.results.get("metric"):
                copy.results["metric"]["nested"].append(3)
        assert frozen(storage, exp) == before, "mutating a Trial returned by a read verb changed the storage"
        assert stored(storage, trial.id).results == {"metric": {"nested": [1, 2]}}

    def test_reports_and_verdicts_returned_are_copies(self, storage: BaseStorage, exp: str) -> None:
        """A pruner sorting a trial's reports in place changed the stored ones, which the next write persisted."""
        trial = storage.register_trial(exp, {"x": 1.0}, worker=W1)
        reported = storage.report_trial(trial.id, W1, 1, 0.5)
        handed_out = [reported, stored(storage, trial.id), *storage.fetch_trials(exp)]
        for copy in handed_out:
            copy.reports.append((99, 9.9))
            copy.reports[0] = (0, -1.0)
        pruned = storage.prune_trial(trial.id, W1, {"rule": "median"})
        assert pruned.verdict is not None
        pruned.verdict["rule"] = "changed"
        for copy in storage.fetch_trials(exp):
            assert copy.verdict is not None
            copy.verdict["rule"] = "changed"
        kept = stored(storage, trial.id)
        assert (kept.reports, kept.verdict) == ([(1, 0.5)], {"rule": "median"}), "a caller's copy changed the storage"
