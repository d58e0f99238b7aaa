"""The worker loops of one ``workon`` call, and the reservations they leave behind.

Each loop's worker carries its task's token in its name (``host:pid:TOKEN``,
see :class:`~orchard.executors.task.WorkerTask`), so the process that called
``workon`` knows which reservations are its own workers'. A loop whose future
is done (it returned, raised, was cancelled, or its process died) holds no
trial any more; one still reserved under its name is held by nobody. Once the
pool is closed, :class:`Fleet` gives such trials back at once instead of
leaving them ``reserved`` until their lease runs out::

    the run ended because            a trial its ended loops still hold
    ───────────────────────────      ─────────────────────────────────────────────
    this process was interrupted     released: ``interrupted``, the attempt not
                                     counted (a Dask LocalCluster closed under its
                                     loops, a reservation stored as the stop came)
    anything else                    taken back as lost: ``interrupted``, the attempt
                                     counted, ``broken`` at ``max_attempts``, as when
                                     a lease runs out (a crash, the OOM killer)

A process that dies takes its pool down with it: the standard library's pool
(``process``) stops the other workers with SIGTERM, so they release their
trials themselves and only the dead worker's trial counts an attempt; loky
(``joblib``) SIGKILLs them, so every trial of the pool counts one. A trial
that keeps killing its worker is therefore broken after ``max_attempts``
runs, never handed out for ever. A broken pool is shut down before its trials are looked
at: loky fails the futures before it kills the other workers, whose reports and heartbeats would
otherwise move the leases being taken back. A write a killed worker sent just before it died can
still reach a MongoDB server after the leases were read: a lease it moved is read again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any

from orchard.errors import ExecutorError, Interrupted, OrchardError, StopReason, StorageError
from orchard.executors.children import LocalStop, unstartable
from orchard.executors.remote import RemoteStop, reported, worker_timeout
from orchard.executors.task import WorkerTask, run_worker
from orchard.executors.threads import StopRequest
from orchard.interruption import STOP_TIMEOUT, deferred, stop_workers
from orchard.leases import give_back
from orchard.recording import exhausted_note
from orchard.resources import token_of
from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus
from orchard.worker import WorkerReport

__all__ = ["Fleet", "raise_failure"]

log = logging.getLogger(__name__)

#: Seconds between two wake-ups of the thread waiting for the loops (so that it handles a signal).
_WAKE = 0.5

#: How many times a take-back reads again the leases that writes of dead workers moved after its read: a dead
#: worker left at most one write on the way per thread of it that writes (its evaluation's reports, its pacemaker).
_LATE_WRITES = 3


class Fleet:
    """Runs one worker loop per task and, on leaving its block, gives back what ended loops hold.

    Use it as a context manager around the pool's, so its exit runs once the pool is closed.

    Args:
        storage: the experiment's storage (as this process reaches it).
        experiment_id: the experiment the loops work on.
        tasks: one per worker loop.
        max_attempts: the experiment's ``max_attempts`` (a trial taken back as lost that reached it breaks).
        executor_config: the executor's options; Dask's ``worker_timeout`` (default 300 s) is how long
            the loops wait on a scheduler left without any worker before ``run`` gives up on them.
    """

    def __init__(self, storage: BaseStorage, experiment_id: str, tasks: Sequence[WorkerTask],
                 max_attempts: int, executor_config: Mapping[str, Any] | None = None) -> None:
        self.storage, self.experiment_id = storage, experiment_id
        self.tasks, self.max_attempts = list(tasks), max_attempts
        self._worker_timeout = worker_timeout(executor_config or {})
        self._resources = (executor_config or {}).get("resources")  # what each loop needs of a Dask worker
        self._futures: list[Future[WorkerReport]] = []
        self._stop = StopRequest()  # tells the loops running as threads of this process
        self._running_at_stop: list[str] = []  # the trials the loops held once told to stop
        self._unreached: set[str] = set()  # the tokens of loops on Dask workers not stopped in time, or cancelled
        self._exits = contextlib.ExitStack()

    def run(self, pool: Executor, reachable: bool = True, lasting: bool = False) -> list[BaseException | None]:
        """Run one worker loop per task on ``pool`` and wait for them all.

        Args:
            pool: the executor.
            reachable: the loops run in this thread, in child processes of this one or as its
                threads, which an interruption of this process can stop (else it does not wait for them).
            lasting: the pool's workers may run on once it is closed (a Dask cluster Orchard did not
                start): workon then waits for the loops on Dask workers, told to stop by an event
                (:mod:`orchard.executors.remote`), to report; those of a cluster Orchard started are told
                too, and end with it.

        Returns:
            What each loop raised (``None`` for a loop that ended normally), in task order.

        Raises:
            Interrupted: this process was interrupted (Ctrl-C, SIGINT, SIGTERM or SIGHUP within
                :func:`~orchard.interruption.interruptible`); the loops in local worker
                processes were told to stop, and the error says what they released.
        """
        remote = RemoteStop.of(pool, self._resources)  # loops on Dask workers, which no signal reaches
        if remote is not None:
            self.tasks = [dataclasses.replace(task, remote_stop=remote.name) for task in self.tasks]
        attempts = self._attempts() if remote is not None else None  # Dask re-runs a loop whose worker died
        local = LocalStop.of(pool)  # loops in pool processes that start after the stop signal was sent
        if local is not None:
            self.tasks = [dataclasses.replace(task, local_stop=local.path, watch_local_stop=local.watched)
                          for task in self.tasks]
            reachable = reachable or local.watched  # an executor of the caller's own (MPI): loops watch it
        try:
            # the standard library's pool forks its processes as tasks are submitted, and an interruption
            # handled in fork's at-fork hooks would be dropped there (an inline pool runs whole loops here)
            with deferred() if isinstance(pool, ProcessPoolExecutor) else contextlib.nullcontext():
                for task in self.tasks:
                    self._futures.append(pool.submit(run_worker, task))
            # woken every _WAKE seconds: Python runs a signal's handler in this thread only, and a Ctrl-C the
            # kernel delivered to another thread would otherwise wait for the first loop to end
            while concurrent.futures.wait(self._futures, _WAKE).not_done:
                if remote is not None:
                    self._raise_if_workerless(remote)
                if unstartable(pool) and not all(future.done() for future in self._futures):
                    reachable = False  # no loop runs, and their futures never end: none is waited for
                    raise ExecutorError.unstartable(self.tasks[0].label, type(pool).__name__)
            self._raise_if_cancelled(dask=remote is not None)
            if attempts is not None:
                self._tell_lost(attempts)
            if any(isinstance(future.exception(), BrokenProcessPool) for future in self._futures):
                pool.shutdown(wait=True)  # loky fails the futures first, then kills the other workers: wait for that
            return [reported(future.exception()) for future in self._futures]
        except KeyboardInterrupt as interruption:
            raise self._stop_loops(interruption, remote, local, reachable, lasting) from None
        except Exception:  # the pool refused a loop (no process or thread could start, its scheduler went away):
            self._stop_loops(Interrupted(), remote, local, reachable, lasting)  # those it started would run on
            raise
        finally:
            if remote is not None:  # however the run ended: nothing left on a scheduler that outlives it
                remote.close(loops_ended=all(future.done() for future in self._futures) and not self._unreached)
            if local is not None:
                local.close()

    def say_if_exhausted(self, name: str, max_trials: int | None) -> None:
        """Log, once for the run, that a loop stopped because its algorithm had no new point to suggest."""
        reasons = {future.result().reason for future in self._futures
                   if future.done() and not future.cancelled() and future.exception() is None}
        if StopReason.EXHAUSTED in reasons:
            log.log(*exhausted_note(self.storage, self.experiment_id, name, max_trials))

    def _attempts(self) -> dict[str, int] | None:
        """Each trial's attempts now (``None``: the storage cannot tell)."""
        try:
            return {trial.id: trial.attempts for trial in self.storage.fetch_trials(self.experiment_id)}
        except StorageError:
            return None

    def _tell_lost(self, before: dict[str, int]) -> None:
        """Say which trials the loops ran again after a Dask worker died under them.

        Dask runs the loop of a worker that died again elsewhere, so its future says nothing; the trial it
        held was taken back once its lease ran out: an attempt counted beyond the one that finished it.
        """
        tokens = {task.token for task in self.tasks}
        try:
            trials = self.storage.fetch_trials(self.experiment_id, [
                TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.PRUNED])
        except StorageError:
            return
        lost = sorted(trial.id for trial in trials if trial.worker is not None
                      and token_of(trial.worker) in tokens and trial.attempts - before.get(trial.id, 0) > 1)
        if lost:
            log.warning("%d trial(s) of experiment %r lost a Dask worker that died under them (killed, out "
                        "of memory, its node lost) and were taken back once their leases ran out (then run "
                        "again, or broken at max_attempts): %s",
                        len(lost), self.tasks[0].label, ", ".join(lost))

    def _raise_if_cancelled(self, dask: bool) -> None:
        """Raise if the pool cancelled loops that had not ended; leave their trials to their leases.

        A Dask client that loses its scheduler cancels every future, while the loops run on on the
        workers: a trial one holds is no trial of an ended loop, to take back under it.
        """
        cancelled = [task.token for task, future in zip(self.tasks, self._futures) if future.cancelled()]
        if cancelled:
            self._unreached.update(cancelled)
            raise ExecutorError.loops_cancelled(self.tasks[0].label, len(cancelled), len(self.tasks), dask)

    def _raise_if_workerless(self, remote: RemoteStop) -> None:
        """Give up on loops whose scheduler has had no worker for ``worker_timeout`` seconds (none offering
        the resources they need, while others stay).

        Dask would hold them for ever (every job of a SLURMCluster reached its walltime): their
        futures are cancelled and their trials left to their leases, as a worker cut off from
        the scheduler may still run one.
        """
        if self._worker_timeout is None or remote.workerless_for() < self._worker_timeout:
            return
        for task, future in zip(self.tasks, self._futures):
            if future.cancel():
                self._unreached.add(task.token)
        raise ExecutorError.workerless(self.tasks[0].label, remote.scheduler, self._worker_timeout,
                                       remote.resources)

    def _stop_loops(self, interruption: KeyboardInterrupt, remote: RemoteStop | None, local: LocalStop | None,
                    reachable: bool, lasting: bool) -> Interrupted:
        """Tell every loop submitted to stop, and wait for their reports; the interruption to raise."""
        self._stop.set()
        if local is not None:
            local.set()  # before the signals
        else:  # threads and Dask workers, whose evaluations may run to their end: what they hold now
            if remote is not None:
                remote.set()
            with contextlib.suppress(StorageError):  # nothing said of them then
                self._running_at_stop = [trial.id for trial in self._held({task.token for task in self.tasks})]
        waiting = sum(not future.done() for future in self._futures) if remote is not None and lasting else (
            len(self._stop.still_running()) if reachable else 0)
        if waiting:  # else a Ctrl-C looks ignored for as long as an evaluation runs on
            log.warning("interrupted: waiting for %d worker loop(s) to stop and give their trials back; an evaluation "
                        "running in a worker's own thread cannot be stopped and runs to its end first", waiting)
        if remote is not None and lasting:
            stopped = self._stop_remote(remote, interruption)
        else:
            if remote is not None:  # a LocalCluster workon started, closed next: its loops reserve nothing meanwhile
                remote.set()
            stopped = stop_workers(interruption, self._futures, STOP_TIMEOUT if reachable else 0.0)
        if reachable:  # and the loops running as threads, whose futures a Dask client cancels
            self._stop.wait(STOP_TIMEOUT)
        return stopped

    def _stop_remote(self, remote: RemoteStop, interruption: KeyboardInterrupt) -> Interrupted:
        """Tell the loops on Dask workers to stop and wait for their reports; then cancel those that did not stop.

        Their futures are not cancelled first: Dask would drop what they report, not stop them.
        """
        remote.set()
        done, running = concurrent.futures.wait(self._futures, STOP_TIMEOUT)
        threads = self._stop.still_running()  # loops running as threads of this process: counted by their request
        for task, future in zip(self.tasks, self._futures):
            if future in running and future.cancel() and task.token not in threads:
                self._unreached.add(task.token)  # it may run on, holding its trial: its lease runs out
        return Interrupted.of(interruption).joined(
            [reported(future.exception()) for future in done if not future.cancelled()])

    def __enter__(self) -> Fleet:
        self._exits.enter_context(self._stop.covering(task.token for task in self.tasks))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._exits.close()  # the pool is closed: every loop has looked its stop request up
        try:
            with deferred():  # a second Ctrl-C waits for the accounting: the message counts every trial released
                self._settle(error)
        except KeyboardInterrupt:
            if not isinstance(error, Interrupted):
                raise  # the run had ended: the Ctrl-C is the caller's

    def _settle(self, error: BaseException | None) -> None:
        """Count what stopped loops reported to the interruption ``error``; give back what ended loops hold."""
        # a Dask client cancels the future of a loop still running as a thread of this process: not ended
        ended = {task.token for task, future in zip(self.tasks, self._futures) if future.done()}
        ended -= self._stop.still_running() | self._unreached
        if isinstance(error, Interrupted):
            self._count_late_stops(error)
        elif not any(future.cancelled() or future.exception() for future in self._futures if future.done()):
            return  # every loop returned: a loop finishes or gives back its trial before it returns
        if not ended:
            return
        try:
            held = self._held(ended)
            if not held:
                return
            if isinstance(error, Interrupted):
                self._give_back(held, error)
            elif not isinstance(error, KeyboardInterrupt):
                self._take_back(held, ended)
        except StorageError as err:  # their leases run out instead
            log.warning("could not give back the trials of workers that ended: %s", err)

    def _count_late_stops(self, interruption: Interrupted) -> None:
        """Add what loops that stopped once the pool closed (threads, a LocalCluster's) reported."""
        reports = [reported(future.exception()) for future in self._futures if future.done() and not future.cancelled()]
        late = interruption.joined([*reports, *self._stop.reports])
        interruption.released[:], interruption.kept[:], interruption.pruned[:] = late.released, late.kept, late.pruned
        # a thread whose Dask future was cancelled runs on too
        running = {task.token for task, future in zip(self.tasks, self._futures) if not future.done()}
        interruption.unstopped = len(running | self._unreached | self._stop.still_running())
        self._count_settled(interruption)

    def _count_settled(self, interruption: Interrupted) -> None:
        """Count how the trials the loops held once told to stop were settled since, by their status now.

        A loop whose evaluation ran to its end in its thread recorded it (``finished``); a loop whose report
        was dropped (a LocalCluster closed under it, a future cancelled) may have released its trial itself.
        """
        if not self._running_at_stop:
            return
        try:
            now = {trial.id: trial.status for trial in self.storage.fetch_trials(self.experiment_id, [
                TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.PRUNED, TrialStatus.INTERRUPTED])}
        except StorageError:
            return
        counted = {*interruption.released, *interruption.pruned}
        settled = [tid for tid in self._running_at_stop if tid in now and tid not in counted]
        released = [tid for tid in settled if now[tid] is TrialStatus.INTERRUPTED]
        interruption.released += released
        interruption.kept[:] = [tid for tid in interruption.kept if tid not in released]
        interruption.finished[:] = [tid for tid in settled if now[tid] is not TrialStatus.INTERRUPTED]

    def _held(self, tokens: set[str]) -> list[Trial]:
        """The trials the loops of ``tokens`` hold now (one read)."""
        return [trial for trial in self.storage.fetch_trials(self.experiment_id, [TrialStatus.RESERVED])
                if token_of(trial.worker) in tokens]

    def _give_back(self, held: list[Trial], interruption: Interrupted) -> None:
        """Release what ended loops hold; a trial a loop could not give back but this process could moves to released."""
        released, kept = give_back(self.storage, {trial.id: trial.worker for trial in held if trial.worker is not None})
        interruption.released += released
        interruption.kept[:] = dict.fromkeys([*(tid for tid in interruption.kept if tid not in released), *kept])

    def _take_back(self, held: list[Trial], ended: set[str]) -> None:
        """Take back what ended loops hold, each trial conditional on the lease read.

        A write a worker sent before its process died can still reach the storage after the read (a report,
        a heartbeat on its way to a MongoDB server): the leases such writes moved are read again.
        """
        for _ in range(_LATE_WRITES + 1):
            leases = {trial.id: trial.lease for trial in held if trial.lease is not None}
            for trial in self.storage.release_lost(self.experiment_id, leases, self.max_attempts):
                leases.pop(trial.id)
                verb = "broke" if trial.status is TrialStatus.BROKEN else "took back"
                log.warning("%s trial %s: its worker's process died under it (attempt %d of %d)",
                            verb, trial.id, trial.attempts, self.max_attempts)
            held = [trial for trial in self._held(ended) if trial.id in leases] if leases else []
            if not held:
                return


def raise_failure(errors: Sequence[BaseException | None], name: str, executor: str, isolated: bool) -> None:
    """Raise what the loops of experiment ``name`` raised (:meth:`Fleet.run`'s list), if any.

    An Orchard error (or an objective's ``KeyboardInterrupt``: all released) as it is, every
    interruption joined in one; anything else as the :class:`ExecutorError` of a worker that died,
    saying what to try (``isolated``: the evaluations ran in child processes).
    """
    failures = [err for err in errors if err is not None]
    if not failures:
        return
    if isinstance(err := failures[0], (OrchardError, KeyboardInterrupt)):
        raise err.joined(failures[1:]) if isinstance(err, Interrupted) else err
    summary = (str(err).strip().splitlines() or [""])[0].rstrip(".")
    hint = ("Its evaluations ran in child processes, so the worker's own process was killed (kill -9, the "
            "out-of-memory killer); its trials were given back: run again to resume" if isolated else
            "If the objective crashed its process (segfault, out of memory, os._exit), run it with "
            "trial_timeout=... so it runs in a child process")
    raise ExecutorError(f"a worker of experiment {name!r} died under executor {executor!r}: "
                        f"{type(err).__name__}: {summary}. {hint}") from err
