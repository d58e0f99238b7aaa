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

1. Normally it draws ``k`` from the experiment's slot counter (the field
   ``slots`` of its experiment document): one conditional ``$inc`` that
   matches only while the counter is below ``M``, so racers never draw the
   same ``k`` and nobody retries. Every held slot is then below ``k < M``
   (or was drawn from the counter too), so fewer than ``M`` are held.
2. When the counter has reached ``M`` (the ``$inc`` matches nothing), it
   looks for slots broken trials freed, and slots whose drawer never inserted
   (a duplicate, a process that died), and slots held by documents readers skip
   (another program's edits: :func:`_strays`, taken back before they are used):
   it refuses if the trial's id exists
   (duplicates are reported before the budget), refuses if ``M`` non-broken
   trials exist, else tries two of the free slots below ``M`` at random, so
   racers spread over them; when both are taken and more remain, the rest are
   most likely slots drawn by racers whose insert is in flight, and it refuses
   (:class:`~orchard.errors.BudgetExhaustedError`) rather than try them all.

The unique index settles every race all the same: an insert at a ``k`` held by
another trial fails with a duplicate key on ``slot``; that only happens when the
counter is behind the slots held (an experiment written before the counter
existed, a restore of held slots), and then the counter is raised past the
highest held slot (one read, one ``$max``) and ``k`` drawn again. A duplicate
key on ``_id`` is a duplicate trial. Registrations without a budget, and
restored trials, draw from the counter unconditionally and count against later
budgets like any other trial; only such an insertion running at the same
instant as budgeted ones (or having pushed the experiment past ``M`` before)
can leave more than ``M`` non-broken trials.

Round trips: two per registration (the draw and the insert), whatever the
number of racers; the path of step 2 adds one read (one more when documents
readers skip hold slots), and two more when fewer than ``M`` trials hold a
slot (the slots held, and whether the experiment still exists and its counter
is a count: a deleted experiment's counter matches nothing and all its slots
look free).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from orchard.errors import BudgetExhaustedError, DuplicateTrialError, ExperimentNotFoundError, StorageError
from orchard.space import to_builtin, trial_id
from orchard.storages.mongodb.client import (BATCH, duplicate_key_field, insert_stamped, trial_to_doc,
                                             unreadable)
from orchard.storages.mongodb.counts import READABLE
from orchard.storages.mongodb.writes import refuse_unreadable
from orchard.trial import Trial, TrialStatus, recorded

__all__ = ["duplicate_trial", "insert_holding_slot", "record_holding_slot", "slot_key"]

log = logging.getLogger(__name__)
_DIGITS = 10
_HOLDING = [s.value for s in TrialStatus if s is not TrialStatus.BROKEN]
_MAX_ROUNDS = 100
_FREE_TRIES = 2  # free slots one registration tries at the end (others are likely being filled)
_COUNTER = "slots"  # field of the experiment document: the next slot number to draw
_SANE = {"$type": "number", "$gte": 0, "$lte": 2**53}  # a counter $inc and int() take (no NaN, text, null)


def slot_key(experiment_id: str, k: int) -> str:
    """The stored form of slot ``k`` of an experiment."""
    return f"{experiment_id}:{k:0{_DIGITS}d}"


def _slot_range(experiment_id: str, low: int, high: int | None = None) -> dict[str, str]:
    """A query on ``slot`` matching the experiment's slots ``low <= k < high``."""
    end = slot_key(experiment_id, high) if high is not None else f"{experiment_id};"  # ';' follows ':'
    return {"$gte": slot_key(experiment_id, low), "$lt": end}


def _number(key: str) -> int:
    return int(key.rpartition(":")[2])


def insert_holding_slot(db: Any, doc: Mapping[str, Any], budget: int | None | Literal[False], name: str) -> None:
    """Insert ``doc`` holding a free slot (one below ``budget`` if given).

    Args:
        db: the database (its ``experiments`` hold the counters, its ``trials`` the slots).
        doc: the trial document, without a slot.
        budget: the experiment's ``max_trials``, ``None`` for no limit, or ``False``: the trial
            holds no slot (recorded apart from the budget).
        name: the experiment's name, for messages.

    Raises:
        DuplicateTrialError: a trial with the same id exists (checked before the budget).
        BudgetExhaustedError: ``budget`` non-broken trials exist.
        ExperimentNotFoundError: the experiment was deleted (by another process, since it was read).
        StorageError: slots kept being taken by others for 100 rounds, or ``doc`` holds values
            readers would skip (:func:`.writes.refuse_unreadable`).
    """
    refuse_unreadable(doc)
    experiment_id = doc["experiment"]
    if budget is False:
        try:
            insert_stamped(db.trials, dict(doc))
        except DuplicateKeyError as err:
            raise duplicate_trial(doc, name) from err
        if db.experiments.find_one({"_id": experiment_id}, projection={"_id": 1}) is None:  # deleted since
            db.trials.delete_one({"_id": doc["_id"]})  # a trial no one can see: deletion deletes it anyway
            raise _deleted(name)
        return
    for _ in range(_MAX_ROUNDS):
        k = _draw(db.experiments, experiment_id, budget, name)
        if k is not None:
            if _insert_at(db.trials, doc, k, name):
                return
            _catch_up(db, experiment_id)  # the counter was behind the slots held
            continue
        if budget is None:  # an unconditional draw matches any existing experiment with a sound counter
            if _reset_if_spoiled(db.experiments, experiment_id, name) is None:
                raise _deleted(name)
            continue  # its counter was spoiled (now removed), or a racer had just mended it
        free, held, strays = _freed(db.trials, doc, budget, name)
        if _reset_if_spoiled(db.experiments, experiment_id, name) is None:
            # every slot of a deleted experiment looks free: a worker that knew it would go on
            # registering trials no one can see, up to its whole budget
            raise _deleted(name)
        if any(_insert_at(db.trials, doc, k, name, strays.get(k, {}).get("_id")) for k in free[:_FREE_TRIES]):
            return
        if len(free) > _FREE_TRIES:  # the rest are most likely drawn by racers still inserting
            raise _exhausted(name, held, budget, claimed=True)
    raise StorageError(
        f"could not claim a budget slot for a trial of experiment {name!r} after "
        f"{_MAX_ROUNDS} rounds of contention; try again"
    )


def _deleted(name: str) -> ExperimentNotFoundError:
    return ExperimentNotFoundError(f"experiment {name!r} was deleted (orchard db rm?) while this process "
                                   "registered a trial in it; nothing was registered")


def record_holding_slot(db: Any, experiment_id: str, name: str, params: Mapping[str, Any], objective: float,
                        results: Mapping[str, Any], now: float, budget: int | None | Literal[False]) -> Trial:
    """Insert a trial born completed (:func:`orchard.trial.recorded`), holding a slot unless ``budget`` is False.

    Raises:
        DuplicateTrialError, BudgetExhaustedError: as :func:`insert_holding_slot`.
    """
    plain: dict[str, Any] = to_builtin(dict(params))
    trial = recorded(trial_id(experiment_id, plain), experiment_id, plain, objective, to_builtin(dict(results)),
                     now, in_budget=budget is not False)
    insert_holding_slot(db, trial_to_doc(trial), budget, name)
    return trial


def _freed(trials: Any, doc: Mapping[str, Any], budget: int,
           name: str) -> tuple[list[int], int, dict[int, dict[str, Any]]]:
    """Free slots below ``budget``, shuffled, how many trials hold one, and the slots held by documents
    readers skip (:func:`_strays`), free too; refuses when none is free.

    One read answers "does the trial exist", "how many hold a slot" and "do documents readers likely skip
    hold some"; a second lists the slots held, when fewer than ``budget`` are; a third lists those
    documents, only when some hold a slot.
    """
    experiment_id = doc["experiment"]
    holding = {"status": {"$in": _HOLDING}, "in_budget": {"$ne": False}}
    mock = type(trials).__module__.startswith("mongomock")  # knows no $type list: every stray is looked for
    own = {"$eq": ["$_id", doc["_id"]]}  # true: the trial itself
    groups = {(row["_id"], True) if mock else (row["_id"]["own"], row["_id"]["likely"]): int(row["n"])
              for row in trials.aggregate([
                  {"$match": {"experiment": experiment_id, "$or": [{"_id": doc["_id"]}, holding]}},
                  {"$group": {"_id": own if mock else {"own": own, "likely": READABLE["$expr"]},
                              "n": {"$sum": 1}}},
              ])}
    if groups.get((True, True)) or groups.get((True, False)):
        raise duplicate_trial(doc, name)
    strays: dict[int, dict[str, Any]] = {}
    if mock or groups.get((False, False)):  # holders readers likely skip: read them (rare) to be sure
        strays = _strays(trials, experiment_id, budget)
    held = groups.get((False, True), 0) + groups.get((False, False), 0) - sum(
        d.get("status") in _HOLDING and d.get("in_budget") is not False for d in strays.values())
    if held < budget:
        taken = {_number(d["slot"]) for d in trials.find(
            {"slot": _slot_range(experiment_id, 0, budget)}, projection={"slot": 1, "_id": 0}, batch_size=BATCH
        )} - set(strays)
        if len(taken) >= budget and not strays:  # held by more than hold a unit: a stray without a status?
            strays = _strays(trials, experiment_id, budget)
            taken -= set(strays)
        free = [k for k in range(budget) if k not in taken]
        if free:
            random.shuffle(free)  # racers for the last units spread over them
            return free, held, strays
        held = budget  # they were taken between the two reads
    raise _exhausted(name, held, budget)


def _strays(trials: Any, experiment_id: str, budget: int) -> dict[int, dict[str, Any]]:
    """The slots below ``budget`` held by trial documents readers skip (another program's edits: a status
    or params Orchard never writes), by slot number. No reader counts such a trial, nor
    does any worker: its unit of budget is free, else workers seeing fewer trials than ``max_trials`` would
    wait for the last one forever."""
    query: dict[str, Any] = {"slot": _slot_range(experiment_id, 0, budget)}
    if not type(trials).__module__.startswith("mongomock"):  # (see _freed)
        query["$expr"] = {"$not": [READABLE["$expr"]]}  # only the likely strays; unreadable() decides
    found = trials.find(query, batch_size=BATCH)
    return {_number(d["slot"]): d for d in found if unreadable(d) is not None}


def _exhausted(name: str, held: int, budget: int, claimed: bool = False) -> BudgetExhaustedError:
    if claimed:
        return BudgetExhaustedError(
            f"experiment {name!r} has no free unit of budget now: {held} of max_trials={budget} trials "
            "exist and other processes are registering the rest; raise max_trials to add more")
    return BudgetExhaustedError(
        f"experiment {name!r} has used its budget: {held} of max_trials={budget} trials "
        "exist; raise max_trials to add more"
    )


def _insert_at(trials: Any, doc: Mapping[str, Any], k: int, name: str, stray: Any = None) -> bool:
    """Insert ``doc`` holding slot ``k``; ``False`` if another trial holds it. ``stray``: the id of a document
    readers skip that holds ``k`` (:func:`_strays`), whose slot is taken back first."""
    key = slot_key(doc["experiment"], k)
    if stray is not None and trials.update_one({"_id": stray, "slot": key},
                                               {"$unset": {"slot": ""}}).modified_count:
        log.warning("experiment %r: trial document %r, which readers skip, no longer holds unit %d of the "
                    "budget; a new trial takes it", name, stray, k)
    try:
        insert_stamped(trials, {**doc, "slot": key})
    except DuplicateKeyError as err:
        field = duplicate_key_field(err)
        if field is None:  # the server did not name the index (mongomock): look
            found = trials.find_one({"_id": doc["_id"]}, projection={"_id": 1})
            field = "_id" if found is not None else "slot"
        if field != "slot":
            raise duplicate_trial(doc, name) from err
        return False
    return True


def _draw(experiments: Any, experiment_id: str, budget: int | None, name: str) -> int | None:
    """Take the next slot number from the counter; ``None`` when it has reached ``budget``.

    A counter another program made other than a count (text, null, NaN, negative) matches nothing (the
    server refuses to ``$inc`` it, which failed every registration): the registration goes on by the free
    slots, which reads the experiment anyway, and :func:`_reset_if_spoiled` removes it there.
    """
    counter = {**_SANE, "$lt": budget} if budget is not None else _SANE
    query = {"_id": experiment_id, "$or": [{_COUNTER: {"$exists": False}}, {_COUNTER: counter}]}
    drawn = experiments.find_one_and_update(
        query, {"$inc": {_COUNTER: 1}}, projection={_COUNTER: 1}, return_document=ReturnDocument.AFTER
    )
    k = None if drawn is None else int(drawn[_COUNTER]) - 1
    return None if k is None or (budget is not None and k >= budget) else k  # a missing counter matches budget 0


def _reset_if_spoiled(experiments: Any, experiment_id: str, name: str) -> bool | None:
    """Remove the experiment's counter if another program made it other than a count; whether it did
    (``None``: the experiment is gone). One read, on a registration's path past the counter only."""
    found = experiments.find_one({"_id": experiment_id}, projection={_COUNTER: 1})
    if found is None:
        return None
    value = found.get(_COUNTER, 0)
    if type(value) in (int, float) and 0 <= value <= 2**53:  # (NaN fails too)
        return False
    experiments.update_one({"_id": experiment_id, "$nor": [{_COUNTER: {"$exists": False}}, {_COUNTER: _SANE}]},
                           {"$unset": {_COUNTER: ""}})  # (unless a racer did)
    log.warning("experiment %r: its budget counter %r was not a count (another program's edit?); it was "
                "reset, and is rebuilt from the trials' slots", name, _COUNTER)
    return True


def _catch_up(db: Any, experiment_id: str) -> None:
    """Raise the counter above the highest held slot (it was behind: see the module docstring)."""
    highest = db.trials.find_one(
        {"slot": _slot_range(experiment_id, 0)}, projection={"slot": 1, "_id": 0}, sort=[("slot", -1)]
    )
    if highest is not None:
        db.experiments.update_one({"_id": experiment_id}, {"$max": {_COUNTER: _number(highest["slot"]) + 1}})


def duplicate_trial(doc: Mapping[str, Any], name: str) -> DuplicateTrialError:
    """The error for a trial whose params the experiment already has."""
    return DuplicateTrialError(
        f"experiment {name!r} already has a trial with params {doc['params']!r} (trial {doc['_id']})"
    )
