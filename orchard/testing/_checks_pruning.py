"""Conformance checks of step-wise reports and pruning: report_trial, prune_trial, the pruned status.

Collected through :class:`orchard.testing.conformance.StorageConformance`;
the ``exp`` fixture comes from :class:`~orchard.testing._checks.Checks`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from orchard.errors import BudgetExhaustedError, InvalidReportError, ReservationLostError, TrialNotFoundError
from orchard.storages.base import BaseStorage
from orchard.testing._checks import W1, W2, Checks, frozen, reserve_as, stored, tick
from orchard.trial import MAX_REPORTS_PER_TRIAL, Trial, TrialStatus

__all__ = ["PruningChecks"]

_VERDICT = {"pruner": "median", "step": 2, "value": 0.9, "cutoff": 0.5, "compared_with": 3}


def _reporting(storage: BaseStorage, exp: str, values: list[float], worker: str = W1) -> Trial:
    trial = storage.register_trial(exp, {"x": float(len(values))}, worker=worker)
    for step, value in enumerate(values, start=1):
        trial = storage.report_trial(trial.id, worker, step, value)
    return trial


class PruningChecks(Checks):
    """Reports are durable, owner-checked and validated; pruned is terminal and holds budget."""

    def test_reports_are_stored_in_order_and_renew_the_lease(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        tick()
        after = storage.report_trial(trial.id, W1, 0, 0.9)
        storage.report_trial(trial.id, W1, 3, 0.7)
        assert stored(storage, trial.id).reports == [(0, 0.9), (3, 0.7)]
        assert after.reports == [(0, 0.9)] and after.status is TrialStatus.RESERVED
        assert after.heartbeat != trial.heartbeat, "a report counts as a heartbeat"

    def test_a_report_from_a_worker_without_the_reservation_is_refused(
        self, storage: BaseStorage, exp: str
    ) -> None:
        trial = _reporting(storage, exp, [0.9])
        before = frozen(storage, exp)
        with pytest.raises(ReservationLostError):
            storage.report_trial(trial.id, W2, 2, 0.5)
        storage.release_trial(trial.id, W1)
        released = frozen(storage, exp)
        with pytest.raises(ReservationLostError):
            storage.report_trial(trial.id, W1, 2, 0.5)
        with pytest.raises(TrialNotFoundError):
            storage.report_trial("no-such-trial", W1, 2, 0.5)
        assert frozen(storage, exp) == released and before[0][trial.id]["reports"] == [[1, 0.9]]

    def test_a_worker_that_lost_the_trial_hears_so_whatever_step_it_reports(
        self, storage: BaseStorage, exp: str
    ) -> None:
        """A worker woken after its lease ran out reports a step the next attempt has reported already:
        it is told that it lost the trial, not that its step is not after the last."""
        trial = _reporting(storage, exp, [0.9, 0.8])
        lease = stored(storage, trial.id).lease
        assert lease is not None
        storage.release_lost(exp, {trial.id: lease}, 3)
        reserve_as(storage, exp, W2)
        storage.report_trial(trial.id, W2, 1, 0.7)
        storage.report_trial(trial.id, W2, 2, 0.6)
        with pytest.raises(ReservationLostError, match="owned by"):
            storage.report_trial(trial.id, W1, 1, 0.9)
        assert stored(storage, trial.id).reports == [(1, 0.7), (2, 0.6)]

    @pytest.mark.parametrize("step, value", [
        (2, math.nan), (2, math.inf), (2, -math.inf), (2, "0.5"), (2, None), (2, True),
        (-1, 0.5), (1.5, 0.5), ("2", 0.5), (True, 0.5), (1, 0.5), (0, 0.5),
    ])
    def test_bad_reports_are_refused_and_nothing_is_lost(
        self, storage: BaseStorage, exp: str, step: Any, value: Any
    ) -> None:
        trial = _reporting(storage, exp, [0.9])
        before = frozen(storage, exp)
        with pytest.raises(InvalidReportError, match=f"trial {trial.id}"):
            storage.report_trial(trial.id, W1, step, value)
        assert frozen(storage, exp) == before
        assert storage.report_trial(trial.id, W1, 2, 0.5).reports == [(1, 0.9), (2, 0.5)]

    def test_numpy_numbers_are_stored_as_plain_values(self, storage: BaseStorage, exp: str) -> None:
        np = pytest.importorskip("numpy")
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        storage.report_trial(trial.id, W1, np.int64(4), np.float32(0.25))
        ((step, value),) = stored(storage, trial.id).reports
        assert (type(step), type(value), step, value) == (int, float, 4, 0.25)

    def test_a_report_of_several_objectives_is_kept_as_a_tuple(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        assert storage.report_trial(trial.id, W1, 1, (0.25, -3)).reports == [(1, (0.25, -3.0))]
        storage.report_trial(trial.id, W1, 2, (0.2, -3.5))
        bad: list[Any] = [(), (0.1, math.nan), [0.1, "2"], [[0.1]], (True, 0.1)]
        for value in bad:
            before = frozen(storage, exp)
            with pytest.raises(InvalidReportError, match=f"trial {trial.id}"):
                storage.report_trial(trial.id, W1, 3, value)
            assert frozen(storage, exp) == before
        storage.complete_trial(trial.id, W1, 0.2, {"error": 0.2, "accuracy": 3.5})
        reports = stored(storage, trial.id).reports
        assert reports == [(1, (0.25, -3.0)), (2, (0.2, -3.5))]
        assert all(type(v) is float for _, value in reports for v in value)  # type: ignore[union-attr]

    def test_reports_are_bounded(self, storage: BaseStorage, exp: str) -> None:
        held = Trial("", exp, {"x": 0.0}, status=TrialStatus.RESERVED, worker=W1, heartbeat=1.0, attempts=1,
                     reports=[(i, 1.0) for i in range(MAX_REPORTS_PER_TRIAL - 1)])
        storage.restore_trials(exp, [held])
        (trial,) = storage.fetch_trials(exp)
        storage.report_trial(trial.id, W1, MAX_REPORTS_PER_TRIAL, 0.5)
        with pytest.raises(InvalidReportError, match=f"already holds {MAX_REPORTS_PER_TRIAL} reports"):
            storage.report_trial(trial.id, W1, MAX_REPORTS_PER_TRIAL + 1, 0.5)
        assert len(stored(storage, trial.id).reports) == MAX_REPORTS_PER_TRIAL

    def test_prune_records_the_last_value_and_the_verdict(self, storage: BaseStorage, exp: str) -> None:
        trial = _reporting(storage, exp, [0.9, 0.8])
        pruned = storage.prune_trial(trial.id, W1, _VERDICT)
        assert (pruned.status, pruned.objective, pruned.verdict) == (TrialStatus.PRUNED, 0.8, _VERDICT)
        assert pruned.end_time is not None and pruned.reports == [(1, 0.9), (2, 0.8)]
        assert stored(storage, trial.id).to_dict() == pruned.to_dict()
        assert storage.count_trials(exp)[TrialStatus.PRUNED] == 1
        assert [t.id for t in storage.fetch_trials(exp, [TrialStatus.PRUNED])] == [trial.id]

    def test_pruned_is_terminal(self, storage: BaseStorage, exp: str) -> None:
        trial = _reporting(storage, exp, [0.9])
        storage.prune_trial(trial.id, W1, _VERDICT)
        before = frozen(storage, exp)
        for write in (lambda: storage.complete_trial(trial.id, W1, 0.1),
                      lambda: storage.fail_trial(trial.id, W1, {"type": "E", "message": "late"}),
                      lambda: storage.report_trial(trial.id, W1, 5, 0.1),
                      lambda: storage.prune_trial(trial.id, W1, _VERDICT),
                      lambda: storage.heartbeat_trial(trial.id, W1)):
            with pytest.raises(ReservationLostError):
                write()
        assert storage.reserve_trial(exp, W2) is None
        assert frozen(storage, exp) == before

    def test_prune_is_owner_checked_and_needs_a_report(self, storage: BaseStorage, exp: str) -> None:
        silent = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        trial = _reporting(storage, exp, [0.9])
        before = frozen(storage, exp)
        with pytest.raises(ReservationLostError):
            storage.prune_trial(trial.id, W2, _VERDICT)
        with pytest.raises(InvalidReportError, match=f"trial {silent.id} has reported no value"):
            storage.prune_trial(silent.id, W1, _VERDICT)
        assert frozen(storage, exp) == before

    def test_pruned_trials_hold_budget_like_completed_ones(self, storage: BaseStorage, exp: str) -> None:
        done = storage.register_trial(exp, {"i": 0}, worker=W1, budget=2)
        storage.complete_trial(done.id, W1, 0.1)
        cut = storage.register_trial(exp, {"i": 1}, worker=W1, budget=2)
        storage.report_trial(cut.id, W1, 1, 0.05)
        storage.prune_trial(cut.id, W1, _VERDICT)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 2}, budget=2)
        counts = storage.count_trials(exp)
        assert counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED] == 2

    def test_best_trial_ranks_completed_trials_only(self, storage: BaseStorage, exp: str) -> None:
        done = storage.register_trial(exp, {"i": 0}, worker=W1)
        storage.complete_trial(done.id, W1, 0.5)
        cut = _reporting(storage, exp, [0.01])
        storage.prune_trial(cut.id, W1, _VERDICT)
        best = storage.best_trial(exp)
        assert best is not None and best.id == done.id

    def test_reports_survive_a_lost_lease_and_restart_with_the_next_reservation(
        self, storage: BaseStorage, exp: str
    ) -> None:
        trial = _reporting(storage, exp, [0.9, 0.8])
        lease = stored(storage, trial.id).lease
        assert lease is not None
        (taken,) = storage.release_lost(exp, {trial.id: lease}, 3)
        assert taken.status is TrialStatus.INTERRUPTED and taken.reports == [(1, 0.9), (2, 0.8)]
        again = reserve_as(storage, exp, W2)
        assert again.id == trial.id and again.reports == []
        assert storage.report_trial(trial.id, W2, 1, 0.7).reports == [(1, 0.7)]
