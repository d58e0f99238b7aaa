"""Joining a stored experiment: a joiner's settings checked against the stored ones.

A worker that joins an experiment may leave any setting out (it then uses the
stored one); a setting it gives must match the stored one (``seed`` and
``heartbeat`` included), except the budgets (``max_trials``, ``max_broken`` and
``max_attempts`` may only be raised) and ``working_dir`` (the stored one is used).
A ``max_trials`` set where there was none may not be below the trials already used.
A stopping rule that fired ends the experiment whatever its budgets: a raise then
changes nothing, so it is not stored, and the joiner is told.
A joiner waits for a storage that went away as it joined (:func:`patiently`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from orchard import config
from orchard.errors import ExperimentConflictError
from orchard.experiment_config import ExperimentConfig, WorkerSettings
from orchard.recording import RAISABLE, budget_used
from orchard.space import Space
from orchard.stopping import LEDGER_KEY, SEARCH_ON, Ledger
from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.storages._uri import redact_all
from orchard.storages.retrying import RetryingStorage

__all__ = ["budget_followed", "join_experiment", "patiently"]

T = TypeVar("T")

log = logging.getLogger(__name__)


def join_experiment(
    store: BaseStorage,
    record: ExperimentRecord,
    space: Space | None,
    algorithm: dict[str, Any] | None,
    chosen: Mapping[str, Any],
    pruner: dict[str, Any] | None = None,
    goals: Mapping[str, Any] | None = None,
    algorithm_options: frozenset[str] | None = None,
) -> ExperimentRecord:
    """Check a joiner's settings against the stored experiment's; raise budgets if asked.

    Args:
        store: the storage holding ``record``.
        record: the stored experiment.
        space: the joiner's space, if given.
        algorithm: the joiner's normalized algorithm, if given.
        chosen: the joiner's budgets and other settings (unset ones left out or ``None``).
        pruner: the joiner's normalized pruner, if given.
        goals: the joiner's ``objectives`` and ``constraints`` (``None``: not given).
        algorithm_options: the algorithm options the joiner set itself (``None``: all of
            them). Only these must match: an option left at its default agrees with the stored
            value, so an experiment stored before a release changed a default can be joined.

    Returns:
        The record, updated when a budget was raised.

    Raises:
        ExperimentConflictError: a given setting differs from the stored one, listing every difference.
    """
    stored = ExperimentConfig.from_dict(record.config)
    problems: list[str] = []
    differing: list[str] = []  # the setting each problem is about

    def differ(key: str, problem: str) -> None:
        differing.append(key)
        problems.append(problem)

    if space is not None:
        for line in stored.space.diff(space):
            differ("space", f"space {line}")
    if algorithm is not None:
        for problem in _algorithm_differences(stored.algorithm, algorithm, algorithm_options):
            differ("algorithm", problem)
    if pruner is not None and not _same(pruner, stored.pruner):
        differ("pruner", f"pruner: stored {stored.pruner} != given {pruner}")
    for key, value in (goals or {}).items():
        theirs = getattr(stored, key)  # a warm-start source's URI is stored with its password hidden
        if value is not None and redact_all(value) != redact_all(theirs):
            differ(key, f"{key}: stored {redact_all(theirs)} != given {redact_all(value)}")
        elif key == "objectives" and value is not None and list(value) != list(stored.objectives or ()):
            differ(key, f"objectives: stored in the order {', '.join(stored.objectives or ())} != given "
                        f"{', '.join(value)} (the first is each trial's objective)")
    for key in _FIXED:  # a joiner's other seed or heartbeat was dropped without a word
        if chosen.get(key) is not None and chosen[key] != getattr(stored, key):
            differ(key, f"{key}: stored {getattr(stored, key)} != given {chosen[key]} (fixed when the "
                        "experiment was created: leave it out to use the stored one)")
    for key in RAISABLE:
        given, kept = chosen.get(key), getattr(stored, key)
        if given is not None and kept is not None and given < kept:
            differ(key, f"{key}: stored {kept} > given {given} (it can only be raised: leave it out "
                        f"to keep {kept})")
    if chosen.get("max_trials") is not None and stored.max_trials is None:  # set where there was none
        used = budget_used(store, record.id)
        if chosen["max_trials"] < used:
            differ("max_trials", f"max_trials: given {chosen['max_trials']} < the {used} trials already "
                                 "completed or pruned (a budget cannot be below what was used: give at least "
                                 f"{used}, or leave it out to keep it unlimited)")
    if problems:
        raise ExperimentConflictError(
            f"experiment {record.name!r} exists with a different configuration: "
            + "; ".join(problems)
            + f". Use the stored settings, or a new experiment name{_carry_over(differing, record.name)}",
            settings=differing,
        )
    raised = [key for key in RAISABLE if chosen.get(key) is not None and chosen[key] != getattr(stored, key)]
    fired = Ledger.from_dict(record.config.get(LEDGER_KEY), record.name).fired if raised else None
    if fired is not None:  # stored, it would show a budget no worker ever uses
        log.warning("experiment %r: %s not stored: its stopping rule %s fired, and a stopped experiment "
                    "stays stopped, whatever its budget; %s", record.name,
                    ", ".join(f"{key}={chosen[key]}" for key in raised), fired.get("rule"), SEARCH_ON)
        return record
    for key in raised:
        record = _raised_budget(store, record.id, key, getattr(stored, key), chosen[key])
    return record


def _carry_over(settings: list[str], name: str) -> str:
    """How to keep an experiment's results when its space, algorithm, goals or pruner must change."""
    if all(key in RAISABLE + _FIXED for key in settings):
        return ""
    return (f" warm-started from this one (--warm-start {name}, warm_start=[{name!r}]), which tells the "
            "algorithm its completed trials")


def _raised_budget(store: BaseStorage, experiment_id: str, key: str, seen: int | None,
                   wanted: int) -> ExperimentRecord:
    """The experiment once its budget ``key`` is at least ``wanted`` (``seen``: the value its joiner read).

    A compare-and-swap, repeated while others change the budget: of joiners raising it at
    once (a SLURM array resubmitted with larger budgets), the largest raise stands. A plain
    write of each would let a smaller raise land last and lower the budget under the others.
    """
    while seen is None or seen < wanted:
        if store.swap_experiment(experiment_id, key, seen, wanted):
            break
        seen = store.experiment(experiment_id).config.get(key)
    return store.experiment(experiment_id)


#: Settings every worker must share, so a joiner giving another value is refused (the working
#: directory is left out: a relative one given by workers started elsewhere differs and is ignored).
_FIXED = ("seed", "heartbeat")


def _algorithm_differences(stored: Mapping[str, Any], given: Mapping[str, Any],
                           options: frozenset[str] | None) -> list[str]:
    """How a normalized ``given`` algorithm differs from the ``stored`` one: its name, or each option set
    (``options``; ``None``: every option) to another value, named (the whole configurations ran to 700
    characters, and the user had to find the one option that differed)."""
    if stored.keys() != given.keys():
        return [f"algorithm: stored {', '.join(stored)} != given {', '.join(given)}"]
    ((name, wanted),) = given.items()
    keys = sorted(wanted.keys() | stored[name].keys()) if options is None else sorted(options)
    return [f"algorithm {name} option {key}: stored {stored[name].get(key)!r} != given {wanted.get(key)!r}"
            for key in keys if not _same(stored[name].get(key), wanted.get(key))]


def _same(stored: Any, given: Any) -> bool:
    """Whether two settings in their stored form are equal, a NaN to a NaN (Python's ``nan != nan``
    refused every joiner of an experiment created with a NaN option: "stored nan != given nan")."""
    if isinstance(stored, float) and isinstance(given, float) and math.isnan(stored) and math.isnan(given):
        return True
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        return stored.keys() == given.keys() and all(_same(stored[key], given[key]) for key in stored)
    if isinstance(stored, (list, tuple)) and type(stored) is type(given):
        return len(stored) == len(given) and all(map(_same, stored, given))
    return bool(stored == given)


def patiently(store: BaseStorage, join: Callable[[], T]) -> T:
    """Run ``join`` (reading, creating and joining an experiment); wait for a storage lost mid-way.

    A storage that never answered fails at once (a wrong address, most likely). One that
    had answered and went away (:attr:`orchard.errors.StorageUnavailableError.reached`: a restart, a
    failover) is waited for by the rule running workers follow (:class:`RetryingStorage`, up
    to ``ORCHARD_STORAGE_PATIENCE``): ``join`` is run again from its start, with backoff, so a
    worker joining at that moment does not die of it. Reading and creating by name are safe
    to repeat (a creation that took effect is read back by the next try).
    """
    return RetryingStorage(store, config.resolve("storage_patience", None)).retry("join the experiment", join)


def budget_followed(store: BaseStorage, experiment_id: str, settings: WorkerSettings,
                    label: str) -> WorkerSettings:
    """``settings`` with the experiment's stored ``max_trials`` if a joiner raised it past theirs, or set one.

    A worker asks once the budget it started with looks met: ``max_trials`` may be raised while
    workers run (``orchard hunt --max-trials 30``, or ``build_experiment(..., max_trials=30)``, beside
    them), and they go on to it instead of stopping under a budget the storage no longer holds. A
    run's own cap (``workon(max_trials=N)``: ``settings.fixed_budget``) is kept.

    A worker with no budget asks each time it looks for a trial: a joiner may set one on an experiment
    created without (a forgotten ``--max-trials``). Such workers ran on and on, while ``orchard status``
    said "18 completed ... of max_trials=5".
    """
    stored = store.experiment(experiment_id).config.get("max_trials")
    if settings.fixed_budget or not isinstance(stored, int) or isinstance(stored, bool) \
            or settings.max_trials is not None and stored <= settings.max_trials:
        return settings
    if settings.max_trials is None:
        log.warning("experiment %r: a budget of %d trials was set while this worker ran without one; "
                    "it stops there", label, stored)
    else:
        log.info("experiment %r: its budget was raised to %d trials while this worker ran; going on",
                 label, stored)
    return dataclasses.replace(settings, max_trials=stored)
