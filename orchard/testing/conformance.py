"""The storage conformance suite: every guarantee of :class:`~orchard.storages.base.BaseStorage`.

Every Orchard backend runs this suite; a third-party backend should too. It
needs only pytest (and numpy, an Orchard dependency). Subclass
:class:`StorageConformance` in a test module whose scope provides a
``storage`` fixture yielding a **fresh, empty** storage::

    # tests/test_my_storage.py
    import pytest
    from orchard.testing.conformance import StorageConformance

    @pytest.fixture
    def storage(tmp_path):
        with MyStorage(f"my://{tmp_path}/db") as store:
            yield store

    class TestMyStorage(StorageConformance):
        '''Runs every conformance check against MyStorage.'''

The fixture may also be defined as a method of the subclass, or in a
``conftest.py`` (Orchard's own parametrizes it over every backend). The
groups of checks (``ExperimentChecks``, ``BudgetChecks``, ...) are exported
too, for a backend that wants to run a subset while it grows. Every
check is single-process and uses no sleeps: lost leases are tested by
passing ``release_lost`` the leases an observer would report. Races between real processes are
exercised with :mod:`orchard.testing.races`.

A ``memory://`` storage is the one backend that may refuse to be pickled; it
must then raise an :class:`~orchard.errors.OrchardError` that says so.
"""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from orchard.errors import (
    BudgetExhaustedError,
    DuplicateTrialError,
    ExperimentNotFoundError,
)
from orchard.storages import BaseStorage
from orchard.storages.base import ExperimentRecord
from orchard.testing._checks import (
    CONFIG,
    W1,
    W2,
    Checks,
    assert_plain_params,
    one_of_each_status,
    register_many,
    reserve_as,
    snapshot,
    stored,
    tick,
)
from orchard.testing._checks_copies import CopyChecks
from orchard.testing._checks_handles import HandleChecks
from orchard.testing._checks_lifecycle import (
    LostReservationChecks,
    OwnershipChecks,
    ReservationChecks,
)
from orchard.testing._checks_pruning import PruningChecks
from orchard.trial import Trial, TrialStatus

__all__ = [
    "BudgetChecks",
    "ChangeFeedChecks",
    "CopyChecks",
    "ExperimentChecks",
    "HandleChecks",
    "LostReservationChecks",
    "OwnershipChecks",
    "ReadingChecks",
    "RegistrationChecks",
    "ReservationChecks",
    "StorageConformance",
]


class ExperimentChecks(Checks):
    """Experiments: get-or-create, lookup, listing, update, deletion."""

    def test_create_experiment_is_get_or_create(self, storage: BaseStorage) -> None:
        first = storage.create_experiment("exp", CONFIG)
        again = storage.create_experiment("exp", {"max_trials": 99, "other": True})
        assert again == first
        record = storage.get_experiment("exp")
        assert isinstance(record, ExperimentRecord)
        assert (record.id, record.name) == (first, "exp")
        assert record.config == CONFIG, "the config of the first call must be kept"
        assert isinstance(record.created, float)
        assert len(storage.list_experiments()) == 1

    def test_create_experiment_keeps_a_given_creation_time(self, storage: BaseStorage) -> None:
        storage.create_experiment("restored", CONFIG, created=1_700_000_000.5)
        record = storage.require_experiment("restored")
        assert record.created == 1_700_000_000.5, "db load must keep the dumped creation time"

    def test_create_experiment_keeps_a_given_id_unless_it_is_taken(self, storage: BaseStorage) -> None:
        kept = "0123456789abcdef0123456789abcdef"
        assert storage.create_experiment("restored", CONFIG, keep_id=kept) == kept, "db load keeps dumped ids"
        other = storage.create_experiment("renamed", CONFIG, keep_id=kept)
        assert other != kept and storage.require_experiment("renamed").id == other
        assert storage.create_experiment("odd", CONFIG, keep_id="../x") != "../x"

    def test_get_experiment_unknown_name_is_none(self, storage: BaseStorage) -> None:
        assert storage.get_experiment("nope") is None
        storage.create_experiment("exp", CONFIG)
        assert storage.get_experiment("nope") is None

    def test_list_experiments_oldest_first(self, storage: BaseStorage) -> None:
        assert storage.list_experiments() == []
        ids = []
        for name in ("b", "c", "a"):
            ids.append(storage.create_experiment(name, CONFIG))
            tick()
        assert [r.id for r in storage.list_experiments()] == ids
        assert [r.name for r in storage.list_experiments()] == ["b", "c", "a"]

    def test_update_experiment_merges_top_level_keys(self, storage: BaseStorage) -> None:
        exp = storage.create_experiment("exp", CONFIG)
        record = storage.update_experiment(exp, {"max_trials": 20, "seed": 3})
        expected = {**CONFIG, "max_trials": 20, "seed": 3}
        assert record.config == expected
        assert storage.require_experiment("exp").config == expected
        assert storage.require_experiment("exp").id == exp

    def test_update_unknown_experiment_raises(self, storage: BaseStorage) -> None:
        with pytest.raises(ExperimentNotFoundError):
            storage.update_experiment(uuid.uuid4().hex, {"max_trials": 1})

    def test_experiment_by_id_and_swap_are_a_compare_and_swap(self, storage: BaseStorage) -> None:
        exp = storage.create_experiment("exp", CONFIG)
        assert storage.experiment(exp).name == "exp"
        assert storage.swap_experiment(exp, "ledger", None, {"n": 1, "ids": ["a"]}), "unset is expected as None"
        assert not storage.swap_experiment(exp, "ledger", None, {"n": 9}), "a stale expectation must lose"
        stored = storage.experiment(exp).config["ledger"]
        assert stored == {"n": 1, "ids": ["a"]}
        assert storage.swap_experiment(exp, "ledger", stored, {"n": 2, "ids": ["a", "b"]})
        assert not storage.swap_experiment(exp, "ledger", stored, {"n": 3})
        assert storage.require_experiment("exp").config == {**CONFIG, "ledger": {"n": 2, "ids": ["a", "b"]}}
        with pytest.raises(ExperimentNotFoundError):
            storage.experiment(uuid.uuid4().hex)
        with pytest.raises(ExperimentNotFoundError):
            storage.swap_experiment(uuid.uuid4().hex, "ledger", None, 1)

    def test_swap_compares_the_whole_value_never_an_element_of_a_list(self, storage: BaseStorage) -> None:
        exp = storage.create_experiment("exp", CONFIG)
        storage.update_experiment(exp, {"ids": [1, 2], "nested": [[1, 2]], "holes": [None]})
        assert not storage.swap_experiment(exp, "ids", 1, "taken"), "a list holding the value is not it"
        assert not storage.swap_experiment(exp, "nested", [1, 2], "taken")
        assert not storage.swap_experiment(exp, "holes", None, "taken"), "a list holding None is not unset"
        assert storage.swap_experiment(exp, "ids", [1, 2], [3])
        assert storage.experiment(exp).config == {**CONFIG, "ids": [3], "nested": [[1, 2]], "holes": [None]}

    def test_delete_experiment_removes_it_and_only_its_trials(self, storage: BaseStorage) -> None:
        doomed = storage.create_experiment("doomed", CONFIG)
        kept = storage.create_experiment("kept", CONFIG)
        gone = register_many(storage, doomed, 3)
        survivors = register_many(storage, kept, 2)
        assert storage.delete_experiment(doomed) == 3
        assert storage.get_experiment("doomed") is None
        assert [r.name for r in storage.list_experiments()] == ["kept"]
        assert all(storage.get_trial(t.id) is None for t in gone)
        assert snapshot(storage.fetch_trials(kept)) == snapshot(survivors)
        again = storage.create_experiment("doomed", CONFIG)
        assert storage.fetch_trials(again) == []

    def test_same_params_in_two_experiments_are_distinct_trials(self, storage: BaseStorage) -> None:
        a = storage.create_experiment("a", CONFIG)
        b = storage.create_experiment("b", CONFIG)
        ta = storage.register_trial(a, {"x": 1.0})
        tb = storage.register_trial(b, {"x": 1.0})
        assert ta.id != tb.id
        assert (ta.experiment, tb.experiment) == (a, b)
        assert [t.id for t in storage.fetch_trials(a)] == [ta.id]
        assert reserve_as(storage, a, W1).id == ta.id
        assert storage.reserve_trial(a, W1) is None

    def test_require_experiment_lists_known_names(self, storage: BaseStorage) -> None:
        exp = storage.create_experiment("known", CONFIG)
        assert storage.require_experiment("known").id == exp
        with pytest.raises(ExperimentNotFoundError, match="known"):
            storage.require_experiment("unknown")


class RegistrationChecks(Checks):
    """register_trial: new vs reserved, deterministic ids, unique params, plain values."""

    def test_register_new_trial(self, storage: BaseStorage, exp: str) -> None:
        from orchard.space import trial_id

        trial = storage.register_trial(exp, {"x": 1.5, "c": "a"})
        assert isinstance(trial, Trial)
        assert trial.id == trial_id(exp, {"x": 1.5, "c": "a"})
        assert (trial.experiment, trial.params) == (exp, {"x": 1.5, "c": "a"})
        assert (trial.status, trial.worker, trial.attempts) == (TrialStatus.NEW, None, 0)
        assert trial.objective is None and trial.submit_time is not None
        assert snapshot([stored(storage, trial.id)]) == snapshot([trial])

    def test_register_reserved_for_worker(self, storage: BaseStorage, exp: str) -> None:
        trial = storage.register_trial(exp, {"x": 1.5}, worker=W1)
        assert (trial.status, trial.worker, trial.attempts) == (TrialStatus.RESERVED, W1, 1)
        assert trial.heartbeat is not None and trial.start_time is not None
        assert storage.reserve_trial(exp, W2) is None, "a trial registered for W1 was reserved by W2"
        kept = stored(storage, trial.id)
        assert (kept.status, kept.worker) == (TrialStatus.RESERVED, W1)
        storage.complete_trial(trial.id, W1, 0.5)

    def test_register_keeps_the_parent(self, storage: BaseStorage, exp: str) -> None:
        parent = storage.register_trial(exp, {"x": 1.5, "epochs": 1})
        child = storage.register_trial(exp, {"x": 1.5, "epochs": 3}, worker=W1, parent=parent.id)
        assert child.parent == parent.id and parent.parent is None
        assert stored(storage, child.id).parent == parent.id
        assert stored(storage, parent.id).parent is None

    def test_duplicate_params_are_refused(self, storage: BaseStorage, exp: str) -> None:
        first = storage.register_trial(exp, {"x": 1.5, "n": 2, "c": "a"})
        variants: list[dict[str, Any]] = [
            {"x": 1.5, "n": 2, "c": "a"},
            {"c": "a", "n": 2, "x": 1.5},
            {"x": np.float64(1.5), "n": np.int64(2), "c": np.str_("a")},
        ]
        for params in variants:
            with pytest.raises(DuplicateTrialError):
                storage.register_trial(exp, params)
            with pytest.raises(DuplicateTrialError):
                storage.register_trial(exp, params, worker=W1)
        assert snapshot(storage.fetch_trials(exp)) == snapshot([first]), "a refused duplicate wrote"

    def test_integral_float_and_int_are_the_same_point(self, storage: BaseStorage, exp: str) -> None:
        storage.register_trial(exp, {"n": 2})
        with pytest.raises(DuplicateTrialError):
            storage.register_trial(exp, {"n": 2.0})

    def test_params_and_results_come_back_as_plain_python(self, storage: BaseStorage, exp: str) -> None:
        params = {"x": np.float64(1.5), "n": np.int64(3), "c": np.str_("a"), "b": np.bool_(True)}
        registered = storage.register_trial(exp, params)
        assert_plain_params(registered)
        reserved = reserve_as(storage, exp, W1)
        assert_plain_params(reserved)
        results = {"acc": np.float32(0.5), "n": np.int64(3), "curve": [np.float64(0.25)], "tag": "t"}
        objective: Any = np.float32(0.25)
        done = storage.complete_trial(reserved.id, W1, objective, results)
        for trial in (done, stored(storage, reserved.id), *storage.fetch_trials(exp),
                      *storage.fetch_changes(exp)[0]):
            assert_plain_params(trial)
            assert type(trial.objective) is float and trial.objective == 0.25
            assert trial.results == {"acc": 0.5, "n": 3, "curve": [0.25], "tag": "t"}
            assert [type(trial.results[k]) for k in ("acc", "n", "tag")] == [float, int, str]
            assert type(trial.results["curve"][0]) is float

    def test_storage_keeps_its_own_copy_of_inputs(self, storage: BaseStorage, exp: str) -> None:
        params: dict[str, Any] = {"x": 1.0}
        trial = storage.register_trial(exp, params, worker=W1)
        params["x"] = 2.0
        results: dict[str, Any] = {"acc": 0.5}
        storage.complete_trial(trial.id, W1, 1.0, results)
        results["acc"] = 0.0
        kept = stored(storage, trial.id)
        assert (kept.params, kept.results) == ({"x": 1.0}, {"acc": 0.5})


class BudgetChecks(Checks):
    """register_trial(..., budget=M): exactly M units; broken trials free theirs."""

    def test_exactly_budget_trials_are_admitted(self, storage: BaseStorage, exp: str) -> None:
        for i in range(5):
            storage.register_trial(exp, {"i": i}, budget=5)
        before = snapshot(storage.fetch_trials(exp))
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 5}, budget=5)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 6}, worker=W1, budget=5)
        assert snapshot(storage.fetch_trials(exp)) == before, "a refused claim wrote a trial"
        storage.register_trial(exp, {"i": 5}, budget=6)
        storage.register_trial(exp, {"i": 6})  # no budget, no limit
        assert len(storage.fetch_trials(exp)) == 7

    def test_every_status_but_broken_holds_a_unit(self, storage: BaseStorage, exp: str) -> None:
        one_of_each_status(storage, exp)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"x": 100}, budget=5)
        storage.register_trial(exp, {"x": 100}, budget=6)

    def test_broken_trial_frees_its_unit(self, storage: BaseStorage, exp: str) -> None:
        held = storage.register_trial(exp, {"i": 0}, worker=W1, budget=2)
        assert held.status is TrialStatus.RESERVED
        storage.register_trial(exp, {"i": 1}, budget=2)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 2}, budget=2)
        storage.fail_trial(held.id, W1, {"type": "ValueError", "message": "boom"})
        storage.register_trial(exp, {"i": 2}, worker=W2, budget=2)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 3}, budget=2)

    def test_duplicate_is_reported_before_budget(self, storage: BaseStorage, exp: str) -> None:
        storage.register_trial(exp, {"i": 0}, budget=1)
        with pytest.raises(DuplicateTrialError):
            storage.register_trial(exp, {"i": 0}, budget=1)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 1}, budget=1)

    def test_budgets_are_per_experiment(self, storage: BaseStorage, exp: str) -> None:
        other = storage.create_experiment("other", CONFIG)
        storage.register_trial(exp, {"i": 0}, budget=1)
        storage.register_trial(other, {"i": 0}, budget=1)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(other, {"i": 1}, budget=1)


    def test_recorded_trial_is_completed_and_apart_from_the_budget(self, storage: BaseStorage, exp: str) -> None:
        storage.register_trial(exp, {"i": 0}, budget=2)
        free = storage.record_trial(exp, {"i": 1}, 0.5, {"loss": 0.5}, budget=2)
        assert (free.status, free.objective, free.results, free.origin, free.in_budget) == (
            TrialStatus.COMPLETED, 0.5, {"loss": 0.5}, "inserted", False)
        assert snapshot([stored(storage, free.id)]) == snapshot([free])
        storage.register_trial(exp, {"i": 2}, budget=2)  # the recorded trial held no unit
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 3}, budget=2)
        assert storage.count_unbudgeted(exp) == 1
        assert storage.reserve_trial(exp, W1) is not None and storage.reserve_trial(exp, W1) is not None
        assert storage.reserve_trial(exp, W1) is None  # never handed out

    def test_recorded_trial_in_budget_claims_a_unit(self, storage: BaseStorage, exp: str) -> None:
        storage.record_trial(exp, {"i": 0}, 1.0, {}, budget=1, in_budget=True)
        with pytest.raises(DuplicateTrialError):
            storage.record_trial(exp, {"i": 0}, 1.0, {}, budget=1, in_budget=True)
        with pytest.raises(BudgetExhaustedError):
            storage.record_trial(exp, {"i": 1}, 1.0, {}, budget=1, in_budget=True)
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"i": 2}, budget=1)
        assert storage.count_unbudgeted(exp) == 0
        assert storage.count_trials(exp)[TrialStatus.COMPLETED] == 1


class ReadingChecks(Checks):
    """fetch_trials, get_trial, count_trials, best_trial, restore_trials."""

    def test_fetch_trials_oldest_first_with_status_filter(self, storage: BaseStorage, exp: str) -> None:
        assert storage.fetch_trials(exp) == []
        made = one_of_each_status(storage, exp)
        assert [t.id for t in storage.fetch_trials(exp)] == [t.id for t in made.values()]
        done = [made[TrialStatus.COMPLETED].id]
        assert [t.id for t in storage.fetch_trials(exp, [TrialStatus.COMPLETED])] == done
        assert [t.id for t in storage.fetch_trials(exp, ["completed"])] == done
        pending = storage.fetch_trials(exp, ["new", TrialStatus.INTERRUPTED, "reserved"])
        assert sorted(t.status.value for t in pending) == ["interrupted", "new", "reserved"]
        assert storage.fetch_trials(exp, []) == []

    def test_get_trial(self, storage: BaseStorage, exp: str) -> None:
        assert storage.get_trial(uuid.uuid4().hex) is None
        made = one_of_each_status(storage, exp)
        for trial in storage.fetch_trials(exp):
            assert snapshot([stored(storage, trial.id)]) == snapshot([trial])
        assert stored(storage, made[TrialStatus.BROKEN].id).status is TrialStatus.BROKEN

    def test_count_trials_has_every_status(self, storage: BaseStorage, exp: str) -> None:
        assert storage.count_trials(exp) == {status: 0 for status in TrialStatus}
        one_of_each_status(storage, exp)
        storage.register_trial(exp, {"x": 100})
        counts = storage.count_trials(exp)
        assert counts == {**{status: 1 for status in TrialStatus}, TrialStatus.NEW: 2}
        assert all(type(n) is int for n in counts.values())

    def test_best_trial(self, storage: BaseStorage, exp: str) -> None:
        assert storage.best_trial(exp) is None
        for value in (3.0, -1.0, 2.0):
            trial = storage.register_trial(exp, {"v": value}, worker=W1)
            storage.complete_trial(trial.id, W1, value)
        best = storage.best_trial(exp)
        assert best is not None and best.objective == -1.0

    def test_best_trial_skips_an_objective_another_program_stored_not_finite(self, storage: BaseStorage, exp: str) -> None:
        odd = [Trial(id=uuid.uuid4().hex, experiment=exp, params={"v": i}, status=TrialStatus.COMPLETED,
                     objective=value, submit_time=1.0, end_time=2.0)
               for i, value in enumerate([float("nan"), 2.0, float("-inf"), 1.0, float("inf")])]
        storage.restore_trials(exp, odd)  # a dump written by another program: NaN and infinities are stored
        best = storage.best_trial(exp)
        assert best is not None and best.objective == 1.0

    def test_restore_trials_keeps_records_and_skips_existing(self, storage: BaseStorage, exp: str) -> None:
        source = list(one_of_each_status(storage, exp).values())
        dest = storage.create_experiment("restored", CONFIG)
        assert storage.restore_trials(dest, source) == len(source)
        assert storage.restore_trials(dest, source) == 0
        restored = storage.fetch_trials(dest)
        assert [t.params for t in restored] == [t.params for t in source]
        assert all(t.experiment == dest for t in restored)
        kept = ("status", "objective", "results", "error", "attempts", "submit_time", "end_time", "reports",
                "verdict")
        for old, new in zip(source, restored):
            assert {k: getattr(new, k) for k in kept} == {k: getattr(old, k) for k in kept}
        assert storage.count_trials(dest) == storage.count_trials(exp)
        with pytest.raises(DuplicateTrialError):
            storage.register_trial(dest, source[0].params)
        extra = storage.register_trial(exp, {"x": 100})
        assert storage.restore_trials(dest, [*source, extra]) == 1

    def test_restore_trials_gives_a_waiting_trial_its_dumped_result(self, storage: BaseStorage, exp: str) -> None:
        """A dump taken while trials ran, loaded first, left them waiting: a later dump's results reach them
        (and the change feed), never a trial a worker has reserved since."""
        early = [Trial(id="", experiment=exp, params={"x": x}, status=status, submit_time=1.0)
                 for x, status in ((1, TrialStatus.NEW), (2, TrialStatus.INTERRUPTED), (3, TrialStatus.NEW))]
        assert storage.restore_trials(exp, early) == 3
        taken = storage.reserve_trial(exp, W1)
        assert taken is not None and taken.params == {"x": 2}
        _, cursor = storage.fetch_changes(exp)
        late = [dataclasses.replace(t, status=TrialStatus.COMPLETED, objective=float(t.params["x"]), end_time=2.0)
                for t in early]
        assert storage.restore_trials(exp, late) == 2
        assert storage.restore_trials(exp, late) == 0
        by_x = {t.params["x"]: t for t in storage.fetch_trials(exp)}
        assert [(by_x[x].status, by_x[x].objective) for x in (1, 3)] == [(TrialStatus.COMPLETED, 1.0),
                                                                         (TrialStatus.COMPLETED, 3.0)]
        assert by_x[2].status is TrialStatus.RESERVED and by_x[2].worker == W1
        page, _ = storage.fetch_changes(exp, cursor)
        assert sorted(t.params["x"] for t in page) == [1, 3]
        with pytest.raises(BudgetExhaustedError):
            storage.register_trial(exp, {"x": 4}, budget=3)  # each holds its one unit of budget still


class ChangeFeedChecks(Checks):
    """fetch_changes: pages applied by id reproduce fetch_trials."""

    def _follow(self, storage: BaseStorage, exp: str, state: dict[str, Trial], cursor: Any) -> Any:
        cursor = pickle.loads(pickle.dumps(cursor))  # cursors are picklable
        page, cursor = storage.fetch_changes(exp, cursor)
        for trial in page:
            assert trial.experiment == exp
            state[trial.id] = trial
        assert snapshot(state.values()) == snapshot(storage.fetch_trials(exp))
        return page, cursor

    def test_pages_reproduce_fetch_trials(self, storage: BaseStorage, exp: str) -> None:
        other = storage.create_experiment("other", CONFIG)
        register_many(storage, other, 2)
        state: dict[str, Trial] = {}
        page, cursor = self._follow(storage, exp, state, None)
        assert page == []
        trials = register_many(storage, exp, 4)
        page, cursor = self._follow(storage, exp, state, cursor)
        assert {t.id for t in trials} <= {t.id for t in page}
        steps: list[Callable[[], object]] = [
            lambda: reserve_as(storage, exp, W1),
            lambda: storage.complete_trial(trials[0].id, W1, 1.0, {"m": 2}),
            lambda: reserve_as(storage, exp, W2),
            lambda: storage.heartbeat_trial(trials[1].id, W2),
            lambda: storage.release_trial(trials[1].id, W2),
            lambda: reserve_as(storage, exp, W1),
            lambda: storage.fail_trial(trials[1].id, W1, {"type": "E", "message": "m"}),
            lambda: storage.register_trial(exp, {"x": 100}, worker=W2),
        ]
        for step in steps:
            changed = step()
            page, cursor = self._follow(storage, exp, state, cursor)
            if isinstance(changed, Trial):
                assert changed.id in {t.id for t in page}, "a changed trial is missing from the page"

    def test_none_cursor_returns_everything(self, storage: BaseStorage, exp: str) -> None:
        made = one_of_each_status(storage, exp)
        _, cursor = storage.fetch_changes(exp)
        storage.complete_trial(made[TrialStatus.RESERVED].id, W1, 0.0)
        storage.fetch_changes(exp, cursor)
        page, _ = storage.fetch_changes(exp, None)
        assert snapshot(page) == snapshot(storage.fetch_trials(exp))
        assert len(page) == len(made)


class StorageConformance(
    ExperimentChecks,
    RegistrationChecks,
    BudgetChecks,
    ReservationChecks,
    OwnershipChecks,
    LostReservationChecks,
    PruningChecks,
    ReadingChecks,
    ChangeFeedChecks,
    HandleChecks,
    CopyChecks,
):
    """Every guarantee of :class:`~orchard.storages.base.BaseStorage`, as pytest tests.

    Subclass it as ``Test...`` in a module where a ``storage`` fixture yields a
    fresh, empty storage (see the module docstring). Each check also gets an
    ``exp`` fixture: the id of a fresh experiment in that storage.
    """

