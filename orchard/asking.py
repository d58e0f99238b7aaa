"""Ask and tell in one process: which worker holds each trial suggested, whichever handle asked.

Each :class:`~orchard.experiment.Experiment` handle asks through a worker of its
own, which reserves the trial under its name and heartbeats it until it is
observed or released. A suggested trial is this process's, not the handle's:
a notebook cell that builds the experiment again before the result comes in
makes a new handle, and its ``observe`` would otherwise be refused (the
reservation is the old worker's) while the old worker kept heartbeating the
trial for as long as the kernel ran. So the worker that holds each trial
suggested and not yet observed or released is kept here, and any handle
records, judges or releases the trial through it::

    old = build_experiment("e", ...)    trial = old.suggest()     held[trial.id] = old's worker
    new = build_experiment("e", ...)    new.observe(trial, 0.5)   old's worker records it, and forgets it

Any handle *of that experiment*: a trial another experiment suggested, handed to this one's
``observe`` (two experiments asked side by side, variables crossed), is refused before anything is
written. Its worker would otherwise have recorded the result on the other experiment, silently.
"""

from __future__ import annotations

from collections.abc import Callable

from orchard.errors import (
    BudgetExhaustedError,
    ExperimentError,
    ReservationLostError,
    StopReason,
    StorageError,
    shown,
)
from orchard.experiment_config import ExperimentConfig
from orchard.objective import Outcome
from orchard.storages import BaseStorage, ExperimentRecord
from orchard.trial import Trial
from orchard.worker import Worker, WorkerSettings

__all__ = ["holder", "new_client", "suggested"]

#: (Storage URI, trial id) -> the worker of this process that suggested it, until it is observed or
#: released. By storage too: a copy loaded with ``db load`` holds the same trial ids.
_HELD: dict[tuple[str, str], Worker] = {}
#: The names of this process's ask-and-tell workers: a trial reserved under another came from elsewhere.
_OURS: set[str] = set()


def new_client(storage: BaseStorage, experiment_id: str, config: ExperimentConfig, label: str) -> Worker:
    """A handle's ask-and-tell worker: the caller evaluates; what it never observes goes back at exit."""
    settings = WorkerSettings.for_experiment(config)
    worker = Worker(storage, experiment_id, settings, evaluate=_told_later, label=label)
    worker.pacemaker.release_at_exit()
    _OURS.add(worker.name)
    return worker


def suggested(worker: Worker) -> Trial:
    """Reserve a trial through ``worker`` without waiting, and remember that ``worker`` holds it.

    Raises:
        BudgetExhaustedError: as :meth:`Worker.next_trial`; when nothing is left because this process holds
            trials it suggested and has not observed (Optuna's batch of asks), the message says so: it told
            the caller to wait for other workers.
    """
    try:
        trial = worker.next_trial(timeout=0)
    except BudgetExhaustedError as err:
        mine = sum(held.experiment_id == worker.experiment_id and uri == worker.storage.uri
                   for (uri, _), held in _HELD.items())
        if err.reason is not StopReason.IDLE or not mine:
            raise
        budget = "" if worker.settings.max_trials is None else f" of {worker.settings.max_trials}"
        raise BudgetExhaustedError(
            f"experiment {worker.label!r} has no trial to run now: the budget{budget} is fully reserved or "
            f"the space is exhausted, and {mine} of the reserved trials were suggested in this process and "
            "not observed yet: observe (or release) them, then suggest again", StopReason.IDLE) from None
    _HELD[worker.storage.uri, trial.id] = worker
    return trial


def holder(trial: Trial, storage: BaseStorage, experiment: ExperimentRecord, own: Callable[[], Worker],
           ending: bool = False) -> Worker:
    """The worker of this process that holds ``trial`` in ``storage`` (``own()`` if none does); ``ending``
    forgets it.

    Raises:
        ExperimentError: ``trial`` is not a trial of ``experiment`` (nothing is forgotten).
        TypeError: ``trial`` is no :class:`Trial` (its id, as Optuna's ``tell`` takes a trial's number).
        ReservationLostError: ``trial`` was reserved by a worker of another process (nothing is written).
    """
    if not isinstance(trial, Trial):  # was "AttributeError: 'str' object has no attribute 'id'"
        raise TypeError(f"experiment {experiment.name!r}: observe, report, should_prune and release take the "
                        f"Trial that suggest() returned, not {type(trial).__name__} {shown(trial, 40)}; keep "
                        "that Trial (it pickles) until its result is observed")
    key = (storage.uri, trial.id)
    if trial.experiment != experiment.id:
        owner = _name_of(trial, storage, _HELD.get(key))
        raise ExperimentError.foreign_trial(trial.id, experiment.name, owner)
    held = _HELD.pop(key, None) if ending else _HELD.get(key)
    if held is None and trial.worker is not None and trial.worker not in _OURS:
        # told in a process that did not suggest it (Optuna's tell works from any process on a shared
        # storage): the storage's refusal said 'released (stale heartbeat?) or taken by another worker'
        raise ReservationLostError(
            f"trial {trial.id} of experiment {experiment.name!r} was reserved by worker {trial.worker}, not "
            "suggested in this process; nothing was stored: observe, report on and release a trial in the "
            "process that suggested it, which keeps its reservation alive (a trial of a process that ended "
            "was given back)")
    return own() if held is None else held


def _name_of(trial: Trial, storage: BaseStorage, held: Worker | None) -> str:
    """The name of ``trial``'s experiment (its id if the storage cannot say)."""
    if held is not None:
        return held.label
    try:
        return storage.experiment(trial.experiment).name
    except (ExperimentError, StorageError):
        return trial.experiment


def _told_later(trial: Trial) -> Outcome:
    """The ask-and-tell client's evaluator: the caller evaluates and calls ``observe``."""
    raise AssertionError("an ask-and-tell worker never evaluates")
