"""Budget slots: how :class:`~orchard.storages.mongodb.MongoStorage` keeps ``max_trials`` exact.

A trial holds a unit of budget iff its document has a ``slot``: the string
``"<experiment id>:<k>"`` with ``k`` zero-padded to ten digits, so that string
order is numeric order within an experiment. A unique sparse index on
``slot`` makes each ``k`` holdable by one trial at a time. Every trial holds a
slot except broken ones: the trial and its slot are inserted by one
write (:func:`~orchard.storages.mongodb.client.insert_stamped`; a process dying at any instant holds nothing it did not
insert), and ``fail_trial`` unsets the slot in the same update that marks the
trial broken. A trial recorded apart from the budget (``in_budget: false``) is
inserted without one.

A registration with ``budget=M`` only claims ``k < M``:

1. Normally it takes ``k`` = the highest held slot + 1, found by reading the
   index range above a per-process floor (the slots claimed since this
   process last looked; on MongoDB one key, as the sort reads the index end).
   Every held slot is then below ``k < M``, so fewer than ``M`` are held.
2. When that ``k`` reaches ``M``, it looks for slots broken trials freed: it
   refuses if the trial's id exists (duplicates are reported before the
   budget), refuses if ``M`` non-broken trials exist, else tries the free
   slots below ``M``.

Racers that pick the same ``k`` are settled by the unique index: the loser's
insert fails with a duplicate key on ``slot`` and it moves on; a duplicate
key on ``_id`` is a duplicate trial. Registrations without a budget, and
restored trials, take ``k`` = the highest held slot + 1 and count against
later budgets like any other trial; only such an insertion running at the
same instant as budgeted ones (or having pushed the experiment past ``M``
before) can leave more than ``M`` non-broken trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pymongo.errors import DuplicateKeyError

from orchard.errors import BudgetExhaustedError, DuplicateTrialError, StorageError
from orchard.space import to_builtin, trial_id
from orchard.storages.mongodb.client import duplicate_key_field, insert_stamped, trial_to_doc
from orchard.trial import Trial, TrialStatus, recorded

__all__ = ["BudgetSlots", "duplicate_trial", "slot_key"]

_DIGITS = 10
_HOLDING = [s.value for s in TrialStatus if s is not TrialStatus.BROKEN]
_MAX_ROUNDS = 100


def slot_key(experiment_id: str, k: int) -> str:
    """The stored form of slot ``k`` of an experiment."""
    return f"{experiment_id}:{k:0{_DIGITS}d}"


def _slot_range(experiment_id: str, low: int, high: int | None = None) -> dict[str, str]:
    """A query on ``slot`` matching the experiment's slots ``low <= k < high``."""
    end = slot_key(experiment_id, high) if high is not None else f"{experiment_id};"  # ';' follows ':'
    return {"$gte": slot_key(experiment_id, low), "$lt": end}


def _number(key: str) -> int:
    return int(key.rpartition(":")[2])


class BudgetSlots:
    """Inserts trial documents together with a free slot; remembers where to look next."""

    def __init__(self) -> None:
        self._floor: dict[str, int] = {}  # experiment id -> no slot below it needs reading

    def forget(self, experiment_id: str) -> None:
        """Drop what is cached about an experiment (after deleting it)."""
        self._floor.pop(experiment_id, None)

    def insert(self, trials: Any, doc: Mapping[str, Any], budget: int | None | Literal[False], name: str) -> None:
        """Insert ``doc`` holding a free slot (one below ``budget`` if given).

        Args:
            trials: the trials collection.
            doc: the trial document, without a slot.
            budget: the experiment's ``max_trials``, ``None`` for no limit, or ``False``: the trial
                holds no slot (recorded apart from the budget).
            name: the experiment's name, for messages.

        Raises:
            DuplicateTrialError: a trial with the same id exists (checked before the budget).
            BudgetExhaustedError: ``budget`` non-broken trials exist.
            StorageError: slots kept being taken by others for 100 rounds.
        """
        if budget is False:
            try:
                insert_stamped(trials, dict(doc))
            except DuplicateKeyError as err:
                raise duplicate_trial(doc, name) from err
            return
        for _ in range(_MAX_ROUNDS):
            for k in self._candidates(trials, doc, budget, name):
                if self._insert_at(trials, doc, k, name):
                    return
        raise StorageError(
            f"could not claim a budget slot for a trial of experiment {name!r} after "
            f"{_MAX_ROUNDS} rounds of contention; try again"
        )

    def record(self, trials: Any, experiment_id: str, name: str, params: Mapping[str, Any], objective: float,
               results: Mapping[str, Any], now: float, budget: int | None | Literal[False]) -> Trial:
        """Insert a trial born completed (:func:`orchard.trial.recorded`), holding a slot unless ``budget`` is False.

        Raises:
            DuplicateTrialError, BudgetExhaustedError: as :meth:`insert`.
        """
        plain: dict[str, Any] = to_builtin(dict(params))
        trial = recorded(trial_id(experiment_id, plain), experiment_id, plain, objective, to_builtin(dict(results)),
                         now, in_budget=budget is not False)
        self.insert(trials, trial_to_doc(trial), budget, name)
        return trial

    def _candidates(self, trials: Any, doc: Mapping[str, Any], budget: int | None, name: str) -> list[int]:
        top = self._top(trials, doc["experiment"])
        if budget is None or top < budget:
            return [top]
        return self._freed(trials, doc, budget, name)

    def _top(self, trials: Any, experiment_id: str) -> int:
        """A slot number above every held one (the highest held + 1, or the floor)."""
        floor = self._floor.get(experiment_id, 0)
        highest = trials.find_one(
            {"slot": _slot_range(experiment_id, floor)}, projection={"slot": 1, "_id": 0},
            sort=[("slot", -1)],
        )
        return floor if highest is None else _number(highest["slot"]) + 1

    def _freed(self, trials: Any, doc: Mapping[str, Any], budget: int, name: str) -> list[int]:
        """Free slots below ``budget`` (left by broken trials); refuses when there are none."""
        if trials.find_one({"_id": doc["_id"]}, projection={"_id": 1}) is not None:
            raise duplicate_trial(doc, name)
        experiment_id = doc["experiment"]
        held = trials.count_documents(
            {"experiment": experiment_id, "status": {"$in": _HOLDING}, "in_budget": {"$ne": False}})
        if held < budget:
            taken = {_number(d["slot"]) for d in trials.find(
                {"slot": _slot_range(experiment_id, 0, budget)}, projection={"slot": 1, "_id": 0}
            )}
            free = [k for k in range(budget) if k not in taken]
            if free:
                return free
            held = budget  # they were taken between the two reads
        raise BudgetExhaustedError(
            f"experiment {name!r} has used its budget: {held} of max_trials={budget} trials "
            "exist; raise max_trials to add more"
        )

    def _insert_at(self, trials: Any, doc: Mapping[str, Any], k: int, name: str) -> bool:
        """Insert ``doc`` holding slot ``k``; ``False`` if another trial holds it."""
        experiment_id = doc["experiment"]
        try:
            insert_stamped(trials, {**doc, "slot": slot_key(experiment_id, k)})
        except DuplicateKeyError as err:
            field = duplicate_key_field(err)
            if field is None:  # the server did not name the index (mongomock): look
                found = trials.find_one({"_id": doc["_id"]}, projection={"_id": 1})
                field = "_id" if found is not None else "slot"
            if field != "slot":
                raise duplicate_trial(doc, name) from err
            taken = False
        else:
            taken = True
        self._floor[experiment_id] = max(self._floor.get(experiment_id, 0), k + 1)
        return taken


def duplicate_trial(doc: Mapping[str, Any], name: str) -> DuplicateTrialError:
    """The error for a trial whose params the experiment already has."""
    return DuplicateTrialError(
        f"experiment {name!r} already has a trial with params {doc['params']!r} (trial {doc['_id']})"
    )
