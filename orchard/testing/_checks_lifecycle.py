"""Conformance checks of the reservation lifecycle: reserve, ownership, lost leases.

Collected through :class:`orchard.testing.conformance.StorageConformance`;
the ``exp`` fixture comes from :class:`~orchard.testing._checks.Checks`.
"""

from __future__ import annotations

import uuid

import pytest

from orchard.errors import ExperimentNotFoundError, ReservationLostError, TrialNotFoundError
from orchard.storages.base import BaseStorage
from orchard.testing._checks import (
    W1,
    W2,
    Checks,
    beat,
    frozen,
    one_of_each_status,
    register_many,
    reserve_as,
    stored,
    tick,
)
from orchard.trial import Lease, Trial, TrialStatus

__all__ = ["LostReservationChecks", "OwnershipChecks", "ReservationChecks", "lease_of"]

_ERROR = {"type": "RuntimeError", "message": "late"}


def _assert_every_write_refused(storage: BaseStorage, trial_id: str, worker: str | None) -> None:
    """Every owner-conditional verb by ``worker`` must raise ReservationLostError."""
    if worker is not None:
        with pytest.raises(ReservationLostError):
            storage.heartbeat_trial(trial_id, worker)
        with pytest.raises(ReservationLostError):
            storage.complete_trial(trial_id, worker, 0.0, {"late": True})
        with pytest.raises(ReservationLostError):
            storage.fail_trial(trial_id, worker, _ERROR)
        with pytest.raises(ReservationLostError):
            storage.report_trial(trial_id, worker, 10**6, 0.0)
        with pytest.raises(ReservationLostError):
            storage.prune_trial(trial_id, worker, {"late": True})
    with pytest.raises(ReservationLostError):
        storage.release_trial(trial_id, worker)


class ReservationChecks(Checks):
    """reserve_trial: order, fields, exclusivity, None when nothing waits."""

    def test_reserve_none_when_nothing_waits(self, storage: BaseStorage, exp: str) -> None:
        assert storage.reserve_trial(exp, W1) is None
        done = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        storage.complete_trial(done.id, W1, 1.0)
        failed = storage.register_trial(exp, {"x": 1.0}, worker=W1)
        storage.fail_trial(failed.id, W1, _ERROR)
        storage.register_trial(exp, {"x": 2.0}, worker=W1)
        before = frozen(storage, exp)
        assert storage.reserve_trial(exp, W2) is None
        assert frozen(storage, exp) == before

    def test_reserve_new_trials_oldest_first(self, storage: BaseStorage, exp: str) -> None:
        trials = register_many(storage, exp, 5)
        won = [reserve_as(storage, exp, (W1, W2)[i % 2]) for i in range(5)]
        assert [t.id for t in won] == [t.id for t in trials]
        assert [t.worker for t in won] == [W1, W2, W1, W2, W1]
        assert storage.reserve_trial(exp, W1) is None

    def test_reserve_interrupted_before_new_oldest_first(self, storage: BaseStorage, exp: str) -> None:
        a, b, c, d = register_many(storage, exp, 4)
        for expected in (a, b, c):
            assert reserve_as(storage, exp, W1).id == expected.id
        storage.release_trial(a.id, W1)
        tick()
        storage.release_trial(b.id, W1)
        order = [reserve_as(storage, exp, W2) for _ in range(3)]
        assert [t.id for t in order] == [a.id, b.id, d.id], "interrupted trials go first, oldest first"
        assert [t.attempts for t in order] == [1, 1, 1], "a graceful release gives the attempt back"
        assert storage.reserve_trial(exp, W2) is None

    def test_reserve_sets_owner_heartbeat_and_attempts(self, storage: BaseStorage, exp: str) -> None:
        (trial,) = register_many(storage, exp, 1)
        first = reserve_as(storage, exp, W1)
        assert (first.id, first.status, first.worker, first.attempts) == (
            trial.id, TrialStatus.RESERVED, W1, 1)
        assert first.heartbeat is not None and first.start_time is not None
        assert (stored(storage, trial.id).status, stored(storage, trial.id).worker) == (TrialStatus.RESERVED, W1)
        storage.release_trial(trial.id, W1)
        second = reserve_as(storage, exp, W2)
        assert (second.id, second.worker, second.attempts) == (trial.id, W2, 1)

    def test_reservations_are_exclusive(self, storage: BaseStorage, exp: str) -> None:
        register_many(storage, exp, 6)
        won = [reserve_as(storage, exp, f"host:{i}:w") for i in range(6)]
        assert len({t.id for t in won}) == 6
        for i, trial in enumerate(won):
            assert stored(storage, trial.id).worker == f"host:{i}:w"

    def test_take_up_reserved_returns_the_workers_reservations_only(self, storage: BaseStorage, exp: str) -> None:
        register_many(storage, exp, 4)
        mine = [reserve_as(storage, exp, W1) for _ in range(2)]
        reserve_as(storage, exp, W2)
        storage.complete_trial(mine[0].id, W1, 1.0)
        assert [t.id for t in storage.take_up_reserved(exp, W1)] == [mine[1].id]
        assert storage.take_up_reserved(exp, "host:9:nobody") == []


class OwnershipChecks(Checks):
    """heartbeat/complete/fail/release: only the owner may write; refusals write nothing."""

    def test_owner_heartbeat_refreshes(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        tick()
        assert storage.heartbeat_trial(trial.id, W1) is None
        now = stored(storage, trial.id)
        assert beat(now) >= beat(trial)
        assert (now.status, now.worker) == (TrialStatus.RESERVED, W1)

    def test_non_owner_is_refused_and_nothing_is_written(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        before = frozen(storage, exp)
        _assert_every_write_refused(storage, trial.id, W2)
        assert frozen(storage, exp) == before, "a refused write changed the trial"
        assert storage.complete_trial(trial.id, W1, 2.0).status is TrialStatus.COMPLETED

    def test_writes_to_unreserved_trials_are_refused(self, storage: BaseStorage, exp: str) -> None:
        made = one_of_each_status(storage, exp)
        before = frozen(storage, exp)
        for status in (TrialStatus.NEW, TrialStatus.INTERRUPTED, TrialStatus.COMPLETED, TrialStatus.BROKEN,
                       TrialStatus.PRUNED):
            _assert_every_write_refused(storage, made[status].id, W1)
            _assert_every_write_refused(storage, made[status].id, None)
        assert frozen(storage, exp) == before, "a refused write changed a trial"

    def test_complete_records_the_result_once(self, storage: BaseStorage, exp: str) -> None:
        reserved = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        done = storage.complete_trial(reserved.id, W1, 1.25, {"acc": 0.9})
        assert (done.status, done.objective, done.results) == (TrialStatus.COMPLETED, 1.25, {"acc": 0.9})
        assert done.end_time is not None and done.error is None
        assert stored(storage, reserved.id).to_dict() == done.to_dict()
        with pytest.raises(ReservationLostError):
            storage.complete_trial(reserved.id, W1, 0.0)
        assert stored(storage, reserved.id).objective == 1.25

    def test_fail_records_the_error(self, storage: BaseStorage, exp: str) -> None:
        reserved = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        error = {"type": "ValueError", "message": "bad x", "reason": "exception"}
        broken = storage.fail_trial(reserved.id, W1, error)
        assert broken.status is TrialStatus.BROKEN and broken.end_time is not None
        assert broken.error == error and broken.objective is None
        assert stored(storage, reserved.id).to_dict() == broken.to_dict()
        assert storage.reserve_trial(exp, W1) is None, "a broken trial must not be reserved again"

    def test_owner_release_makes_trial_interrupted(self, storage: BaseStorage, exp: str) -> None:
        reserved = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        released = storage.release_trial(reserved.id, W1)
        assert (released.id, released.status, released.worker) == (reserved.id, TrialStatus.INTERRUPTED, None)
        assert stored(storage, reserved.id).to_dict() == released.to_dict()
        _assert_every_write_refused(storage, reserved.id, W1)
        assert reserve_as(storage, exp, W2).id == reserved.id

    def test_admin_release_without_worker(self, storage: BaseStorage, exp: str) -> None:
        reserved = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        released = storage.release_trial(reserved.id, None)
        assert (released.status, released.worker) == (TrialStatus.INTERRUPTED, None)
        _assert_every_write_refused(storage, reserved.id, W1)
        _assert_every_write_refused(storage, reserved.id, None)

    def test_unknown_trial_ids(self, storage: BaseStorage, exp: str) -> None:
        unknown = uuid.uuid4().hex
        for worker in (W1, None):
            with pytest.raises(TrialNotFoundError):
                storage.release_trial(unknown, worker)
        refused = (lambda: storage.heartbeat_trial(unknown, W1), lambda: storage.fail_trial(unknown, W1, _ERROR),
                   lambda: storage.complete_trial(unknown, W1, 0.0))
        for write in refused:  # said missing, never "deleted while W1 held it": it never existed
            with pytest.raises(TrialNotFoundError, match=f"^no trial with id '{unknown}' in "):
                write()
        assert storage.fetch_trials(exp) == []


class LostReservationChecks(Checks):
    """release_lost: conditional on the exact lease observed; max_attempts; graceful releases are free."""

    def test_release_lost_takes_back_only_the_exact_lease(self, storage: BaseStorage, exp: str) -> None:
        made = one_of_each_status(storage, exp)
        old = made[TrialStatus.RESERVED]
        fresh = storage.register_trial(exp, {"x": 100.0}, worker=W2)
        not_held = {  # each differs from what is stored in one way, or is not reserved at all
            fresh.id: Lease(W2, beat(fresh) + 1.0),
            uuid.uuid4().hex: Lease(W1, beat(old)),
            **{made[s].id: Lease(W1, beat(old)) for s in (TrialStatus.NEW, TrialStatus.INTERRUPTED,
                                                          TrialStatus.COMPLETED, TrialStatus.BROKEN,
                                                          TrialStatus.PRUNED)},
        }
        before = frozen(storage, exp)
        assert storage.release_lost(exp, not_held, 3) == []
        assert storage.release_lost(exp, {fresh.id: Lease(W1, beat(fresh))}, 3) == []
        assert frozen(storage, exp) == before, "release_lost changed a trial whose lease it did not hold"
        released = storage.release_lost(exp, {old.id: lease_of(old)}, 3)
        assert [(t.id, t.status, t.worker) for t in released] == [(old.id, TrialStatus.INTERRUPTED, None)]
        assert stored(storage, old.id).to_dict() == released[0].to_dict()
        assert storage.release_lost(exp, {old.id: lease_of(old)}, 3) == []
        assert stored(storage, fresh.id).worker == W2

    def test_lost_owner_is_refused_and_trial_re_reserved(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        assert [t.id for t in storage.release_lost(exp, {trial.id: lease_of(trial)}, 3)] == [trial.id]
        _assert_every_write_refused(storage, trial.id, W1)
        again = reserve_as(storage, exp, W2)
        assert (again.id, again.worker, again.attempts) == (trial.id, W2, 2), "a lost attempt counts"
        with pytest.raises(ReservationLostError):
            storage.complete_trial(trial.id, W1, -100.0)
        assert storage.complete_trial(trial.id, W2, 3.0).objective == 3.0
        assert stored(storage, trial.id).objective == 3.0

    def test_a_heartbeat_written_after_the_observation_wins(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        tick()
        storage.heartbeat_trial(trial.id, W1)
        assert storage.release_lost(exp, {trial.id: lease_of(trial)}, 3) == []
        assert (stored(storage, trial.id).status, stored(storage, trial.id).worker) == (TrialStatus.RESERVED, W1)
        storage.heartbeat_trial(trial.id, W1)

    def test_lost_max_attempts_times_the_trial_breaks(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1, budget=2)
        assert storage.release_lost(exp, {trial.id: lease_of(trial)}, 2)[0].status is TrialStatus.INTERRUPTED
        again = reserve_as(storage, exp, W2)
        assert again.attempts == 2
        storage.register_trial(exp, {"x": 1.0}, budget=2)
        (broken,) = storage.release_lost(exp, {trial.id: lease_of(again)}, 2)
        assert (broken.id, broken.status, broken.objective) == (trial.id, TrialStatus.BROKEN, None)
        assert broken.error is not None and (broken.error["type"], broken.error["reason"]) == ("TrialLost", "lost")
        assert "OOM" in broken.error["message"] and "segfault" in broken.error["message"]
        assert stored(storage, trial.id).to_dict() == broken.to_dict()
        _assert_every_write_refused(storage, trial.id, W2)
        assert reserve_as(storage, exp, W1).id != trial.id, "a broken trial must not be reserved again"
        assert storage.register_trial(exp, {"x": 2.0}, budget=2).status is TrialStatus.NEW, \
            "a trial broken by lost leases must stop holding budget"

    def test_graceful_releases_give_the_attempt_back(self, storage: BaseStorage, exp: str) -> None:
        storage.register_trial(exp, {"x": 0.0})
        for _ in range(4):
            trial = reserve_as(storage, exp, W1)
            assert trial.attempts == 1
            assert storage.release_trial(trial.id, W1).attempts == 0
        trial = reserve_as(storage, exp, W2)
        released = storage.release_lost(exp, {trial.id: lease_of(trial)}, 2)
        assert [(t.status, t.attempts) for t in released] == [(TrialStatus.INTERRUPTED, 1)]

    def test_a_release_at_zero_attempts_stays_at_zero(self, storage: BaseStorage, exp: str) -> None:
        # a reservation restored (or written by an old version) with no attempt counted: never negative
        held = Trial("", exp, {"x": 0.0}, status=TrialStatus.RESERVED, worker=W1, heartbeat=1.0, attempts=0)
        assert storage.restore_trials(exp, [held]) == 1
        (trial,) = storage.fetch_trials(exp)
        assert (trial.status, trial.attempts) == (TrialStatus.RESERVED, 0)
        assert storage.release_trial(trial.id, W1).attempts == 0
        assert stored(storage, trial.id).attempts == 0

    def test_a_reservation_holding_no_heartbeat_is_taken_back_without_counting_an_attempt(
            self, storage: BaseStorage, exp: str) -> None:
        # another program's write (no heartbeat, maybe no owner): judged as any lease, lost no evaluation of ours
        foreign = [Trial("", exp, {"x": 0.0}, status=TrialStatus.RESERVED, worker=W1, attempts=1),
                   Trial("", exp, {"x": 1.0}, status=TrialStatus.RESERVED, attempts=1)]
        assert storage.restore_trials(exp, foreign) == 2
        leases = {trial.id: lease_of(trial) for trial in storage.fetch_trials(exp)}
        assert set(leases.values()) == {Lease(None, None), Lease(W1, None)}
        assert storage.release_lost(exp, {tid: Lease(W2, None) for tid in leases}, 1) == [], "not the lease held"
        taken = storage.release_lost(exp, leases, max_attempts=1)
        assert sorted((t.status, t.worker, t.attempts) for t in taken) == [(TrialStatus.INTERRUPTED, None, 0)] * 2
        assert [stored(storage, t.id).to_dict() for t in taken] == [t.to_dict() for t in taken]

    def test_a_heartbeat_is_a_change(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 0.0}, worker=W1)
        _, cursor = storage.fetch_changes(exp)
        tick()
        storage.heartbeat_trial(trial.id, W1)
        changed, _ = storage.fetch_changes(exp, cursor)
        assert [(t.id, t.heartbeat) for t in changed] == [(trial.id, stored(storage, trial.id).heartbeat)]
        assert changed[0].heartbeat != trial.heartbeat, "observers judge leases by seeing heartbeats change"

    def test_release_lost_in_unknown_experiment(self, storage: BaseStorage, exp: str) -> None:
        with pytest.raises(ExperimentNotFoundError):
            storage.release_lost(uuid.uuid4().hex, {}, 3)


def lease_of(trial: Trial) -> Lease:
    """The lease of a reserved trial (which must have one)."""
    assert trial.lease is not None, f"trial {trial.id} is {trial.status.value}, not reserved"
    return trial.lease
