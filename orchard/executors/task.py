"""What an executor runs: one worker loop per :class:`WorkerTask`.

``Experiment.workon`` builds one picklable task per worker and submits
:func:`run_worker` with it to the executor; wherever it lands (this thread, a
pool process, a Dask worker), it builds the evaluator and the
:class:`~orchard.worker.Worker` there and runs the loop to its end.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from orchard.objective import ObjectiveEvaluator, TrialEvaluator
from orchard.resources import DEVICES_ENV, visible_devices, worker_label
from orchard.storages.base import BaseStorage
from orchard.worker import Worker, WorkerReport, WorkerSettings

__all__ = ["WorkerTask", "run_worker"]


@dataclasses.dataclass
class WorkerTask:
    """Everything one worker process needs; picklable so executors can ship it."""

    storage: BaseStorage
    experiment_id: str
    settings: WorkerSettings
    fn: Callable[..., Any]
    trial_timeout: float | None = None
    label: str | None = None
    working_dir: str | None = None  # per-trial folders of orchard.current_trial()
    memory_limit: int | None = None  # bytes, for a Python fn (a TrialEvaluator has its own)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES of this worker; None leaves the environment alone


def run_worker(task: WorkerTask) -> WorkerReport:
    """Run one worker loop to its end (the function executors run remotely).

    A :class:`~orchard.objective.TrialEvaluator` ``fn`` (``orchard hunt``'s script
    runner) is called with the whole reserved trial and returns the Outcome itself;
    any other callable is called as ``fn(**params)``, in a watched child when a
    timeout or memory limit is set. The worker sees ``task.devices`` as
    ``CUDA_VISIBLE_DEVICES`` for its lifetime and carries them in its name.

    Args:
        task: the storage, experiment, settings, objective and resources.

    Returns:
        The worker's report.
    """
    fn = task.fn
    evaluate = fn if isinstance(fn, TrialEvaluator) else ObjectiveEvaluator(
        fn, task.trial_timeout, task.memory_limit, task.working_dir)
    with visible_devices(task.devices):
        worker = Worker(task.storage, task.experiment_id, task.settings, evaluate,
                        name=worker_label(os.environ.get(DEVICES_ENV)), label=task.label)
        try:
            return worker.run()
        finally:
            task.storage.close()
