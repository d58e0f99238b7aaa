"""Which trial the running objective is evaluating: :func:`current_trial`.

A worker makes each reserved trial the current one around the call of a
Python objective (:func:`evaluating`), in the objective's own process when it
runs in a watched child, so a promoted multi-fidelity trial can find its
parent's checkpoint. Scripts run by ``orchard hunt`` read the same facts from
``ORCHARD_*`` environment variables instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from orchard.errors import ConfigurationError
from orchard.trial import Trial

__all__ = ["CurrentTrial", "current_trial", "evaluating", "refuse_nested"]


@dataclasses.dataclass(frozen=True)
class CurrentTrial:
    """The trial an objective is evaluating (see :func:`current_trial`).

    Attributes:
        id: the trial's id.
        params: its params (the fidelity included).
        parent: the id of the trial it was promoted from by ``asha``/``hyperband``, else ``None``.
        working_dir: the trial's own folder (created), or ``None`` when the
            experiment has no ``working_dir``.
        parent_working_dir: the parent's folder (where it saved its checkpoint), or ``None``.
        experiment: the id of the trial's experiment.
    """

    id: str
    params: dict[str, Any]
    parent: str | None
    working_dir: str | None
    parent_working_dir: str | None
    experiment: str = ""


_CURRENT: contextvars.ContextVar[CurrentTrial | None] = contextvars.ContextVar("orchard_trial", default=None)


def current_trial() -> CurrentTrial | None:
    """The trial the calling objective is evaluating; ``None`` outside an evaluation.

    Workers set it around each call of a Python objective (in the objective's
    own process when it runs with a timeout). Scripts run by ``orchard hunt``
    read the same facts from ``ORCHARD_TRIAL_ID``, ``ORCHARD_WORKING_DIR``,
    ``ORCHARD_PARENT_TRIAL_ID`` and ``ORCHARD_PARENT_WORKING_DIR``.
    """
    return _CURRENT.get()


@contextlib.contextmanager
def evaluating(trial: Trial, working_dir: str | None = None) -> Iterator[CurrentTrial]:
    """Make ``trial`` the :func:`current_trial` of this thread for the ``with`` block.

    Args:
        trial: the reserved trial about to be evaluated.
        working_dir: the folder under which each trial gets ``TRIAL_ID/`` (created
            here; relative to the current directory), or ``None`` for no folders.

    Raises:
        OSError: the trial's folder cannot be created.
    """
    folder = parent_folder = None
    if working_dir is not None:
        working_dir = os.path.abspath(working_dir)
        folder = os.path.join(working_dir, trial.id)
        os.makedirs(folder, exist_ok=True)
        parent_folder = None if trial.parent is None else os.path.join(working_dir, trial.parent)
    info = CurrentTrial(trial.id, dict(trial.params), trial.parent, folder, parent_folder, trial.experiment)
    token = _CURRENT.set(info)
    try:
        yield info
    finally:
        _CURRENT.reset(token)


def refuse_nested(experiment_id: str, name: str) -> None:
    """Refuse a ``workon`` of experiment ``name`` called by an objective it is evaluating.

    The inner call's workers would wait for ever for the budget the trial of the outer
    call holds, and the outer trial for the inner call: nothing ends, and no signal reaches
    a thread worker's objective. A search nested in an objective needs an experiment of its own.

    Raises:
        ConfigurationError: the calling objective evaluates a trial of this experiment.
    """
    running = current_trial()
    if running is not None and running.experiment == experiment_id:
        raise ConfigurationError(
            f"workon of experiment {name!r} was called by its own objective, evaluating trial {running.id}: "
            "it would wait for ever for the trial it runs in; call workon once, outside the objective "
            "(a search inside an objective needs an experiment of its own)")
