"""What an executor runs: one worker loop per :class:`WorkerTask`.

``Experiment.workon`` builds one picklable task per worker and hands them to
a :class:`~orchard.executors.fleet.Fleet`, which submits :func:`run_worker`
with each to the executor; wherever it lands (this thread, a pool process, a
Dask worker), it builds the evaluator and the :class:`~orchard.worker.Worker`
there and runs the loop to its end. An interruption while they run stops them and gives their running
trials back (see :mod:`orchard.interruption`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from orchard.errors import ConfigurationError, Interrupted, StorageError
from orchard.executors.children import stopped_before, watched_mark
from orchard.executors.remote import RemoteStopped, Watch, watched
from orchard.executors.threads import request_for
from orchard.interruption import deferred, interruptible
from orchard.leases import give_back
from orchard.objective import ObjectiveEvaluator, TrialEvaluator
from orchard.resources import DEVICES_ENV, visible_devices, worker_label
from orchard.storages.base import BaseStorage
from orchard.terminal import escape_unconfigured_logs
from orchard.trial import TrialStatus
from orchard.worker import Worker, WorkerReport, WorkerSettings

__all__ = ["PackedObjective", "WorkerTask", "check_travels", "run_worker"]


@dataclasses.dataclass
class WorkerTask:
    """Everything one worker process needs; picklable so executors can ship it."""

    storage: BaseStorage
    experiment_id: str
    settings: WorkerSettings
    fn: Callable[..., Any] | PackedObjective
    trial_timeout: float | None = None
    label: str | None = None
    working_dir: str | None = None  # per-trial folders of orchard.current_trial()
    memory_limit: int | None = None  # bytes, for a Python fn (a TrialEvaluator has its own)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES of this worker; None leaves the environment alone
    #: The last part of the worker's name (``host:pid:TOKEN``): how its caller knows its reservations
    #: and, for a loop running as its thread, tells it to stop (:mod:`orchard.executors.threads`).
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])
    #: The name of the request that stops the loop on a Dask worker in another process
    #: (:mod:`orchard.executors.remote`); ``None`` elsewhere.
    remote_stop: str | None = None
    #: The file whose existence stops the loop in a pool process of the caller's machine
    #: (:mod:`orchard.executors.children`); ``None`` elsewhere.
    local_stop: str | None = None
    #: Whether the loop watches ``local_stop`` while it runs: no signal of its caller reaches it (MPI ranks).
    watch_local_stop: bool = False
    #: Whether the loop closes ``storage`` when it ends: only a copy the task was shipped with
    #: (:meth:`__setstate__`). Threads of the caller share its storage object, which another loop,
    #: the progress monitor or the caller may be using at that moment: a MongoDB client closed
    #: under them failed their call ("Cannot use MongoClient after close").
    owns_storage: bool = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.owns_storage = True  # unpickled: the storage is this process's own copy


@dataclasses.dataclass(frozen=True)
class PackedObjective:
    """An objective pickled once by ``workon``'s caller, unpickled by :func:`run_worker` in each worker.

    Unpickled as part of the task, an objective the worker's process cannot load (a function of a
    notebook's or ``python -c``'s ``__main__`` under ``spawn``, of a module that is not installed there)
    killed that process before any loop ran ("a worker died ... segfault, out of memory"); loaded here,
    the worker raises what went wrong instead.
    """

    data: bytes
    label: str
    #: The executor, for messages: ``executor 'process'``, ``your ProcessPoolExecutor``.
    executor: str
    #: Pickled with cloudpickle (joblib, Dask), which sends a function of ``__main__`` by value: only the
    #: modules it uses are imported by name.
    by_value: bool = False

    def load(self) -> Callable[..., Any]:
        """The objective.

        Raises:
            ConfigurationError: it cannot be unpickled in this process; the message says why and what to do.
        """
        try:
            fn: Callable[..., Any] = pickle.loads(self.data)
        except Exception as err:  # noqa: BLE001 -- whatever unpickling raised: AttributeError, ImportError
            if self.by_value and isinstance(err, ImportError):
                raise ConfigurationError(
                    f"the objective {self.label} cannot be loaded in the worker processes of {self.executor} "
                    f"({type(err).__name__}: {err}): a function of your script or notebook is sent by value, "
                    "but the modules it uses (and the module of an imported function) are imported by name "
                    "there; install them where those processes run, at the versions of this process, or put "
                    "them on their PYTHONPATH (Dask: client.upload_file(PATH) sends one file)") from None
            raise ConfigurationError(
                f"the objective {self.label} cannot be loaded in the worker processes of {self.executor} "
                f"({type(err).__name__}: {err}): they import it by name, so it must be "
                "defined at the top level of a module or script that they can import (not in a notebook, "
                "`python -c` or under `if __name__ == \"__main__\":`); or use executor='joblib', which sends "
                "a function of your script or notebook by value") from None
        return fn


def check_travels(fn: Callable[..., Any], storage: BaseStorage,
                  executor: str | Any) -> Callable[..., Any] | PackedObjective:
    """Refuse, before any trial is reserved, a storage or an objective that cannot reach the executor's processes.

    The storage must pickle (it reconnects by URI in each process); it raises its own message
    otherwise; a ``mongomock://`` storage, whose data is in this process, is refused. An objective
    for a named executor is checked too: ``process`` sends it with the standard library's pickle (a
    lambda or a closure does not travel); joblib and Dask with cloudpickle when it is installed (they
    do, but not over a lock, a socket or an open file).

    Returns:
        What the tasks carry: for a named executor or a ``ProcessPoolExecutor`` of the caller's own,
        the objective pickled once (:class:`PackedObjective`); for another executor of the caller's
        own, whose pickler is unknown, ``fn`` itself.

    Raises:
        ConfigurationError: naming the objective, the executor and the pickler's reason.
    """
    pickle.dumps(storage)
    if storage.process_local:
        raise ConfigurationError(
            f"storage {storage.redacted_uri} lives in this process's memory: worker processes would each "
            "open an empty one; use a pickle file (e.g. runs/orchard.pkl) or MongoDB for several workers, or "
            "executor='thread' / 'single'")
    if isinstance(executor, ProcessPoolExecutor):  # the caller's own, with the standard library's pickle
        executor, where = "process", f"your {type(executor).__name__}"
    elif isinstance(executor, str):
        where = f"executor {executor!r}"
    else:
        return fn  # an executor of the caller's own: its pickler is unknown
    dumps: Callable[[Any], bytes] = pickle.dumps
    if executor != "process":
        with contextlib.suppress(ImportError):  # joblib's loky falls back to pickle without it
            import cloudpickle

            dumps = cloudpickle.dumps
    label = getattr(fn, "__qualname__", None) or type(fn).__name__
    try:
        return PackedObjective(dumps(fn), label, where, by_value=dumps is not pickle.dumps)
    except Exception as err:  # noqa: BLE001 -- any pickler failure: PicklingError, TypeError, AttributeError
        raise ConfigurationError(
            f"the objective {label} cannot be sent to the worker processes of {where}: "
            f"{type(err).__name__}: {err}; define it at the top level of a module, keep locks, sockets and "
            "open files out of it, or run it with n_workers=1 (this thread) or executor='thread'") from None


def run_worker(task: WorkerTask) -> WorkerReport:
    """Run one worker loop to its end (the function executors run remotely).

    A :class:`~orchard.objective.TrialEvaluator` ``fn`` (``orchard hunt``'s script
    runner) is called with the whole reserved trial and returns the Outcome itself;
    any other callable is called as ``fn(**params)``, in a watched child when a
    timeout or memory limit is set. The worker sees ``task.devices`` as
    ``CUDA_VISIBLE_DEVICES`` for its lifetime and carries them in its name.
    SIGINT, SIGTERM and the stop request of the process that submitted the task
    interrupt it (:func:`~orchard.interruption.interruptible`): it releases its
    trial and raises :class:`~orchard.errors.Interrupted`. A loop running as a
    thread of that process is told by its request instead
    (:mod:`orchard.executors.threads`), reports that error to it, and returns;
    one on a Dask worker in another process is told by a Dask event
    (:mod:`orchard.executors.remote`) and raises the error in a
    :class:`~orchard.executors.remote.RemoteStopped`, as it does when its
    objective raised ``KeyboardInterrupt`` (Dask would end its worker and run the loop again).

    Its warnings print escaped where nothing configured logging (a pool's or a Dask worker's
    process: :func:`~orchard.terminal.escape_unconfigured_logs`), since they quote stored names.

    Args:
        task: the storage, experiment, settings, objective and resources.

    Returns:
        The worker's report.
    """
    escape_unconfigured_logs()
    fn = task.fn.load() if isinstance(task.fn, PackedObjective) else task.fn
    evaluate: TrialEvaluator = fn if isinstance(fn, TrialEvaluator) else ObjectiveEvaluator(
        fn, task.trial_timeout, task.memory_limit, task.working_dir)
    request = request_for(task.token)
    worker: Worker | None = None
    try:
        watching = task.watch_local_stop and request is None and task.remote_stop is None
        marked = task.local_stop if watching else None
        with request.running(task.token) if request else watched(task.remote_stop) as stop, interruptible(), \
                visible_devices(task.devices), watched_mark(marked) as told:
            if stopped_before(task.local_stop):  # its handlers are in place: a stop not marked yet will reach it
                raise Interrupted()  # before any reservation: nothing to give back
            worker = Worker(task.storage, task.experiment_id, task.settings, evaluate, stop=stop or told,
                            name=worker_label(os.environ.get(DEVICES_ENV), task.token), label=task.label)
            try:
                return worker.run()
            except KeyboardInterrupt as interruption:
                stopped = _given_back(worker, interruption)
                if request is not None and request.event.is_set():
                    request.reports.append(stopped)  # and returned: Dask's worker threads die of a KeyboardInterrupt
                    return worker.report
                if isinstance(stop, Watch) and stop.leaving:  # its Dask worker is leaving: on to another
                    raise stop.rerun() from None
                if request is None and stop is not None:  # stopped by the caller, or the objective raised it:
                    raise RemoteStopped(stopped) from None  # through Dask, whose worker it would end
                raise stopped from None
            finally:
                if task.owns_storage:
                    task.storage.close()
    except KeyboardInterrupt as late:  # a second Ctrl-C as the loop was ending: it still reports what it released
        if worker is None:
            raise
        raise _counting_releases(worker, Interrupted.of(late)) from None


def _given_back(worker: Worker, interruption: KeyboardInterrupt) -> Interrupted:
    """The interruption, once every trial the stopped worker still holds in the storage is given back.

    A reservation whose write landed as the interruption came (the worker never saw
    it) is given back now, not taken back when its lease runs out as a lost attempt.
    A trial the worker could not give back (the storage failed, or a second Ctrl-C cut
    its release short) is tried again, or counted released if the read shows its release
    landed. One read, without the outage retries: a failing storage leaves it to the lease.
    """
    stopped = _counting_releases(worker, Interrupted.of(interruption))
    storage = worker.storage.storage
    # a second Ctrl-C waits for this read and these writes (the loop is stopping anyway): else what it cut is not counted
    with contextlib.suppress(KeyboardInterrupt), deferred():
        try:
            held = {trial.id: worker.name for trial in storage.fetch_trials(worker.experiment_id, [TrialStatus.RESERVED])
                    if trial.worker == worker.name and trial.id not in stopped.released}
        except StorageError:
            return stopped
        landed = [trial_id for trial_id in stopped.kept if trial_id not in held]
        released, kept = give_back(storage, held)
        stopped.released += [*landed, *released]
        stopped.kept[:] = kept
    return stopped


def _counting_releases(worker: Worker, interruption: Interrupted) -> Interrupted:
    """``interruption``, also listing the trials ``worker`` gave back before it came.

    A second Ctrl-C that lands after a stopping worker's release was stored (while its
    heartbeat thread is joined, or its loop returns) raises a new interruption in place
    of the one that said so: without this, ``workon`` counted that trial as never running.
    """
    released = [tid for tid in worker.report.released if tid not in interruption.released]
    interruption.released += released
    interruption.kept[:] = [tid for tid in interruption.kept if tid not in released]
    return interruption
