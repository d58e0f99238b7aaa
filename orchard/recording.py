"""Evaluations made elsewhere, recorded into an experiment, and the budget they leave.

``exp.insert(params, objective=0.3)`` (``orchard insert -n NAME x=1 --objective 0.3``)
stores a result obtained outside Orchard (an earlier run, a paper, a
spreadsheet) as a trial born ``completed``, with ``origin="inserted"``. The
algorithm sees it as evidence like any completed trial; it holds no unit of
``max_trials`` unless asked (``count_in_budget=True``), so a budget of 50 still
buys 50 evaluations. Everything is checked before the one storage write
(:meth:`~orchard.storages.base.BaseStorage.record_trial`): the params against
the space, the objective (or each of several objectives) a finite number, the
results storable; bad input stores nothing. With stopping rules, the
evaluation is folded into the stopping ledger before it is stored (see
:mod:`orchard.stopping`): one that reaches ``target`` stops the experiment.

The budget used is ``completed + pruned`` minus the trials recorded apart from
it (:func:`budget_used`); every caller that judges "is the budget met" reads it here.

A trial inserted to be run (``exp.insert(params)``) is refused when a stopping
rule has fired (no worker would ever run it), and stored with a warning when
``max_broken`` trials are broken (:func:`check_will_run`).

A trial another program stored ``new`` is checked by the worker that reserves it
before it is evaluated (:func:`off_the_space`): params that are not a point of
the space are never handed to the objective; the trial is broken instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from orchard.errors import BudgetExhaustedError, ConfigurationError, SpaceError, StopReason
from orchard.experiment_config import ExperimentConfig, WorkerSettings
from orchard.named_results import with_objectives
from orchard.objective import Outcome, interpret_result
from orchard.space import Space, trial_id
from orchard.stopping import LEDGER_KEY, SEARCH_ON, Ledger, StopGate, StopRules, stop_message, stop_summary
from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus

__all__ = [
    "RAISABLE", "budget_held", "budget_to_give", "budget_used", "check_evaluation", "check_will_run",
    "finished", "nothing_to_do", "off_the_space", "queue_trial", "raise_refused", "record_evaluation",
    "warn_if_budget_met",
]

log = logging.getLogger(__name__)

#: Budgets a joiner may raise, never lower (:func:`orchard.joining.join_experiment`). ``max_broken`` was
#: replaced: a SLURM task resubmitted with the ``--max-broken 3`` of its script undid the 10 the user had
#: raised it to after a fix, and stopped every worker that joined later with "raise max_broken".
RAISABLE = ("max_trials", "max_broken", "max_attempts")


def check_evaluation(
    objective: Any, results: Mapping[str, Any] | None, objectives: Mapping[str, str] | None, label: str,
) -> Outcome:
    """The completed outcome of an evaluation made elsewhere, checked as a worker checks its own.

    Args:
        objective: the objective (minimized); with one declared objective, its value in its own
            direction (``objectives={"acc": "max"}``: the accuracy); ``None`` with several
            ``objectives``, which are read from ``results`` by name.
        results: extra metrics (and, with several objectives, each of them).
        objectives: the experiment's several objectives, if any.
        label: how the message names what is inserted (``"experiment 'x'"``, ``"row 3 of rows.csv"``).

    Raises:
        ConfigurationError: the objective is missing or not a finite number, or a result cannot be stored.
    """
    results = dict(results or {})
    if "objective" in results:
        raise ConfigurationError(f"{label}: give the objective as objective=..., not as a result named 'objective'")
    if objectives is not None:
        if objective is not None and (len(objectives) > 1 or set(objectives) & set(results)):
            raise ConfigurationError(
                f"{label}: the experiment has the objectives {', '.join(objectives)}; give each once, in "
                "results by name, not objective=...")
        # one declared objective given as objective=... is its value, in its direction, as a worker takes it
        outcome = with_objectives(interpret_result({**results, "objective": objective} if objective is not None
                                                   else results), objectives)
    elif objective is None:
        raise ConfigurationError(f"{label}: no objective given; an evaluated trial needs objective=<finite number>")
    else:
        outcome = interpret_result({**results, "objective": objective})
    if not outcome.ok:
        why = (outcome.error or {}).get("message", "invalid result")
        raise ConfigurationError(f"{label}: {why}; nothing was stored")
    return outcome


def record_evaluation(
    storage: BaseStorage,
    experiment_id: str,
    settings: ExperimentConfig,
    params: Mapping[str, Any],
    objective: Any,
    results: Mapping[str, Any] | None,
    count_in_budget: bool,
    label: str,
) -> Trial:
    """Check and store one evaluation made elsewhere as a completed trial (see the module docstring).

    Raises:
        SpaceError: the params are not a point of the space; the message names the dimension.
        ConfigurationError: see :func:`check_evaluation`.
        DuplicateTrialError: a trial with those params exists.
        BudgetExhaustedError: ``count_in_budget`` and the budget is fully used.
    """
    point = settings.space.validate(params)
    outcome = check_evaluation(objective, results, settings.objectives, label)
    assert outcome.objective is not None  # a completed outcome carries its objective
    _fold(storage, experiment_id, settings, point, outcome, count_in_budget)
    return storage.record_trial(experiment_id, point, outcome.objective, outcome.results,
                                budget=settings.max_trials, in_budget=count_in_budget)


def _fold(storage: BaseStorage, experiment_id: str, settings: ExperimentConfig, point: Mapping[str, Any],
          outcome: Outcome, in_budget: bool) -> None:
    """Fold the evaluation into the stopping ledger before it is stored, as a worker folds its result.

    An evaluation the storage will refuse (its params were taken, or the budget is fully
    held) is not folded, so a refused insert fires no rule (a refusal won by a racing write
    between this check and the store still folds: rare, and it only stops sooner).
    """
    rules = StopRules.of(settings.stop, settings.objectives, settings.constraints, settings.space)
    if rules is None:
        return
    tid = trial_id(experiment_id, point)
    full = in_budget and settings.max_trials is not None and budget_held(storage, experiment_id) >= settings.max_trials
    if full or storage.get_trial(tid) is not None:
        return  # record_trial raises the refusal
    gate = StopGate(storage, experiment_id, rules, storage.experiment(experiment_id).name, time.monotonic)
    gate.fold(tid, outcome, "inserted" if in_budget else "apart", point)


def queue_trial(storage: BaseStorage, experiment_id: str, settings: ExperimentConfig, params: Mapping[str, Any],
                name: str) -> Trial:
    """Store a ``new`` trial at ``params`` for the next free worker (``exp.insert(params)``).

    Raises:
        SpaceError: the params are not a point of the space; the message names the dimension.
        BudgetExhaustedError: the budget is fully used, or a stopping rule fired (see :func:`check_will_run`).
        DuplicateTrialError: a trial with those params exists.
    """
    point = settings.space.validate(params)
    check_will_run(storage, experiment_id, settings, name)
    return storage.register_trial(experiment_id, point, budget=settings.max_trials)


def check_will_run(storage: BaseStorage, experiment_id: str, settings: ExperimentConfig, name: str) -> None:
    """Before a ``new`` trial is inserted: refuse it if no worker will ever run it, warn if none will now.

    Raises:
        BudgetExhaustedError: a stopping rule has fired (reason ``STOPPED``): a trial stored
            ``new`` would wait forever and show as work left; nothing is stored.
    """
    if settings.stop:
        fired = Ledger.from_dict(storage.experiment(experiment_id).config.get(LEDGER_KEY), name).fired
        if fired is not None:
            raise BudgetExhaustedError(
                f"{stop_message(name, fired)}; no worker runs a trial inserted into it, so nothing was stored. "
                "Record an evaluation made elsewhere with its result (exp.insert(params, objective=...)), "
                "or search on in an experiment with a new name", StopReason.STOPPED)
    broken = storage.count_trials(experiment_id)[TrialStatus.BROKEN]
    if broken >= settings.max_broken:
        raised = broken + settings.max_broken
        log.warning("experiment %r has %d broken trials (max_broken=%d): the trial inserted will not run until "
                    "max_broken is raised, e.g. to %d (orchard hunt --max-broken %d, or "
                    "orchard.build_experiment(%r, max_broken=%d))",
                    name, broken, settings.max_broken, raised, raised, name, raised)


def off_the_space(trial: Trial, space: Space, label: str) -> dict[str, Any] | None:
    """The error to break ``trial`` with if its params are not a point of ``space``, else ``None``.

    Orchard checks every point it stores (a suggestion, ``insert``); another program
    writing to the storage may not, and a text for a ``uniform`` once reached the objective.
    """
    try:
        space.validate(trial.params)
    except SpaceError as err:
        why = str(err)
    except Exception as err:  # noqa: BLE001 -- a hostile value can break the message itself (a 5,000-digit int)
        why = f"a value the space cannot read ({type(err).__name__})"
    else:
        return None
    return {"type": "SpaceError", "reason": "params", "message": (
        f"trial {trial.id} of experiment {label!r} was stored with params that are not a point of its space "
        f"({why[:300]}); it was not evaluated. Another program stored it: insert the point with exp.insert(params) "
        "or `orchard insert`, which check it")}


def budget_used(storage: BaseStorage, experiment_id: str) -> int:
    """Trials that used a unit of the budget: completed or pruned, not recorded apart from it."""
    return _used(storage, experiment_id, storage.count_trials(experiment_id))


def _used(storage: BaseStorage, experiment_id: str, counts: Mapping[TrialStatus, int]) -> int:
    """:func:`budget_used` from counts already read (trials recorded apart are completed ones)."""
    done = counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED]
    return done - storage.count_unbudgeted(experiment_id) if done else 0


def budget_held(storage: BaseStorage, experiment_id: str) -> int:
    """Trials that hold a unit of the budget now: every one but broken ones and those recorded apart."""
    counts = storage.count_trials(experiment_id)
    held = sum(counts.values()) - counts[TrialStatus.BROKEN]
    return held - storage.count_unbudgeted(experiment_id) if counts[TrialStatus.COMPLETED] else held


def budget_to_give(storage: BaseStorage, experiment_id: str, max_trials: int | None) -> int | None:
    """Trials ``max_trials`` can still hand out to workers: neither used nor reserved now (``None``: no budget).

    ``new`` and ``interrupted`` trials count: they hold a unit of the budget but wait for a worker.
    """
    if max_trials is None:
        return None
    counts = storage.count_trials(experiment_id)
    return max(max_trials - _used(storage, experiment_id, counts) - counts[TrialStatus.RESERVED], 0)


def raise_refused(config: Mapping[str, Any], asked: Mapping[str, Any]) -> bool:
    """Whether a budget of ``asked`` (:data:`RAISABLE`) is not the stored ``config``'s: a raise of a
    stopped experiment's, not stored, and the joiner was told how to search on (:mod:`orchard.joining`)."""
    return any(asked.get(key) not in (None, config.get(key)) for key in RAISABLE)


def nothing_to_do(storage: BaseStorage, experiment_id: str, name: str, max_trials: int | None,
                  config: Mapping[str, Any], asked: Mapping[str, Any], remedy: str) -> str | None:
    """Why no worker has work (the budget is met, or a stopping rule fired), or ``None``: ``workon``'s
    warning and ``hunt``'s line, which ends with ``remedy`` when a larger budget is one.

    ``config`` is the experiment's stored configuration, just read (the stopping ledger is in it).
    Counts the trials recorded apart from the budget only when the completed and pruned ones alone
    reach it. How to search on is said once: not again after a raise of ``asked`` (the budgets the
    handle was built with, or the command given) was refused saying it.
    """
    fired = Ledger.from_dict(config.get(LEDGER_KEY), name).fired
    if fired is not None:  # a larger max_trials is no remedy
        said = raise_refused(config, asked)
        return f"{stop_message(name, fired)}; nothing to do" + ("" if said else f": {SEARCH_ON}")
    if max_trials is None:
        return None
    counts = storage.count_trials(experiment_id)
    done = counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED]
    if done >= max_trials:  # only then can the trials recorded apart make a difference
        done -= storage.count_unbudgeted(experiment_id)
    if done < max_trials:
        return None
    return (f"experiment {name!r} has already completed its {done} trials (max_trials={max_trials}); "
            f"nothing to do. {remedy}")


def warn_if_budget_met(storage: BaseStorage, experiment_id: str, name: str, max_trials: int | None,
                       config: Mapping[str, Any], asked: Mapping[str, Any] | None = None) -> bool:
    """Say so (a warning, :func:`nothing_to_do`) when the budget is met or a stopping rule fired, instead of
    returning silently; return whether either is so."""
    said = nothing_to_do(storage, experiment_id, name, max_trials, config, asked or {},
                         "Raise max_trials, or use a new experiment name")
    if said is not None:
        log.warning("%s", said)
    return said is not None


def finished(storage: BaseStorage, experiment_id: str, settings: WorkerSettings) -> str | None:
    """How the run's work ended, if it did: the budget used up, or a stopping rule ended it; ``None``: not.

    ``workon`` (and so ``hunt``) then warns, and returns, when one of its workers could not run to
    its end (out of open files, its executor gone) while the others finished the experiment, or the
    trials of the call's own cap (``workon(max_trials=2)``: ``settings.fixed_budget``).
    """
    config = storage.experiment(experiment_id).config
    stopping = stop_summary(config)
    if stopping is not None and stopping["fired"] is not None:
        return "is finished"
    budget, used = config.get("max_trials"), budget_used(storage, experiment_id)
    if budget is not None and used >= budget:
        return "is finished"
    if settings.fixed_budget and settings.max_trials is not None and used >= settings.max_trials:
        return "ran the max_trials of this workon"
    return None


def exhausted_note(storage: BaseStorage, experiment_id: str, name: str,
                   max_trials: int | None) -> tuple[int, str]:
    """The log level and line that say a run ended because the algorithm had no new point to suggest.

    A space of choices or integers, or a grid, smaller than ``max_trials`` ended ``workon`` without a word
    (``hunt`` with "3 completed" and exit 0), leaving the user to guess why the rest of the budget never ran.
    A warning when budget is left, else (no ``max_trials``) a note.
    """
    counts = storage.count_trials(experiment_id)
    said = f"experiment {name!r}: the space is exhausted after {sum(counts.values())} distinct points"
    used = _used(storage, experiment_id, counts)
    if max_trials is None or used >= max_trials:
        return logging.INFO, said
    return logging.WARNING, (f"{said}; {max_trials - used} of the {max_trials} trials of the budget not run "
                             "(a space of choices, integers or a grid holds fewer points than max_trials)")
