"""Small helpers shared by the conformance checks (no pytest tests here)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pytest

from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus

__all__ = [
    "CONFIG",
    "W1",
    "W2",
    "Checks",
    "assert_plain_params",
    "beat",
    "frozen",
    "one_of_each_status",
    "register_many",
    "reserve_as",
    "snapshot",
    "stored",
    "tick",
]

#: The configuration every conformance experiment is created with.
CONFIG: dict[str, Any] = {"space": {"x": "uniform(0, 1)"}, "algorithm": "random", "max_trials": 10}

#: Two worker identities, in the ``host:pid:uuid`` shape real workers use.
W1 = "host-a:101:0000aaaa"
W2 = "host-b:202:0000bbbb"

_PLAIN_TYPES = {"x": float, "n": int, "c": str, "b": bool}


class Checks:
    """Base of every group of checks: provides the ``exp`` fixture they work in."""

    @pytest.fixture
    def exp(self, storage: BaseStorage) -> str:
        """The id of a fresh experiment called ``exp`` in the ``storage`` under test."""
        return storage.create_experiment("exp", CONFIG)


def tick() -> None:
    """Busy-wait about a millisecond so the next storage timestamp is strictly later.

    Not a sleep to let something happen: it only orders timestamps, and
    tolerates backends that store times with millisecond precision.
    """
    start = time.time()
    while time.time() - start < 0.0015:
        pass


def snapshot(trials: Iterable[Trial]) -> dict[str, dict[str, Any]]:
    """Every field of every trial, by id (compares whole records, order-insensitively)."""
    return {trial.id: trial.to_dict() for trial in trials}


def frozen(storage: BaseStorage, experiment_id: str) -> tuple[dict[str, dict[str, Any]], dict[TrialStatus, int]]:
    """The whole visible state of an experiment, to check that a refused write wrote nothing."""
    return snapshot(storage.fetch_trials(experiment_id)), storage.count_trials(experiment_id)


def stored(storage: BaseStorage, trial_id: str) -> Trial:
    """The stored version of a trial that must exist."""
    trial = storage.get_trial(trial_id)
    assert trial is not None, f"trial {trial_id} vanished from the storage"
    return trial


def beat(trial: Trial) -> float:
    """The heartbeat of a reserved trial (which must have one)."""
    assert trial.heartbeat is not None, f"reserved trial {trial.id} has no heartbeat"
    return trial.heartbeat


def register_many(storage: BaseStorage, experiment_id: str, n: int, start: int = 0) -> list[Trial]:
    """Register ``n`` new trials ``{"x": start + i}`` with strictly increasing submit times."""
    trials = []
    for i in range(start, start + n):
        trials.append(storage.register_trial(experiment_id, {"x": float(i)}))
        tick()
    return trials


def reserve_as(storage: BaseStorage, experiment_id: str, worker: str) -> Trial:
    """Reserve a trial for ``worker``, failing the check if none is waiting."""
    trial = storage.reserve_trial(experiment_id, worker)
    assert trial is not None, f"reserve_trial returned None although a trial was waiting in {experiment_id}"
    return trial


def one_of_each_status(storage: BaseStorage, experiment_id: str) -> dict[TrialStatus, Trial]:
    """Make one trial in each status, in this submission order, and return their stored versions.

    Order: completed, broken, reserved (by ``W1``), interrupted, new, pruned.
    """
    ids: dict[TrialStatus, str] = {}
    for i, status in enumerate((TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.RESERVED,
                                TrialStatus.INTERRUPTED, TrialStatus.NEW, TrialStatus.PRUNED)):
        worker = None if status is TrialStatus.NEW else W1
        ids[status] = storage.register_trial(experiment_id, {"x": float(i)}, worker=worker).id
        tick()
    storage.complete_trial(ids[TrialStatus.COMPLETED], W1, 0.5, {"metric": 1})
    storage.fail_trial(ids[TrialStatus.BROKEN], W1, {"type": "ValueError", "message": "boom"})
    storage.release_trial(ids[TrialStatus.INTERRUPTED], W1)
    storage.report_trial(ids[TrialStatus.PRUNED], W1, 1, 0.75)
    storage.prune_trial(ids[TrialStatus.PRUNED], W1, {"pruner": "median", "step": 1})
    made = {status: stored(storage, tid) for status, tid in ids.items()}
    assert all(t.status is s for s, t in made.items()), made
    return made


def assert_plain_params(trial: Trial) -> None:
    """Check that params hold plain ``int``/``float``/``str``/``bool`` (exact types, no numpy)."""
    for name, value in trial.params.items():
        expected = _PLAIN_TYPES.get(name)
        if expected is not None:
            assert type(value) is expected, f"param {name}={value!r} is {type(value)}, not {expected}"
        else:
            assert type(value) in (int, float, str, bool), f"param {name}={value!r} is {type(value)}"
