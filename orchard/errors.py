"""Orchard's exceptions: one root, one leaf per thing a user can act on.

Every error Orchard raises on purpose is an :class:`OrchardError`. Driver
errors (pymongo, filelock, OS errors) are translated at the storage boundary
with ``raise ... from err`` so callers never need to import a driver to catch
a failure. Messages say what happened, to which object, and what to try.

::

    OrchardError
    ├── ConfigurationError            bad user input: options, URIs, algorithm names
    │   └── SpaceError                a prior string that cannot be parsed
    ├── StorageError                  anything the shared storage could not do
    │   ├── StorageUnavailableError   unreachable server, lock not obtained in time
    │   ├── StorageCorruptedError     unreadable, foreign or tampered storage file
    │   ├── DuplicateTrialError       params already registered in the experiment
    │   ├── ReservationLostError      the worker no longer owns the trial it writes
    │   └── TrialNotFoundError        no trial with that id
    ├── InvalidReportError            an intermediate value or step that cannot be stored
    ├── WorkerStoppedError            a worker has no trial to run; ``reason`` (a StopReason) says why
    │   ├── BudgetExhaustedError      every unit of ``max_trials`` is taken, or nothing is left to run
    │   └── ExperimentBrokenError     ``max_broken`` trials failed (also an ExperimentError)
    ├── ExperimentError
    │   ├── ExperimentNotFoundError   no experiment with that name in the storage
    │   ├── ExperimentConflictError   joined with a different space or algorithm
    │   └── ExperimentBrokenError     (see above)
    ├── AlgorithmError
    │   └── SpaceExhaustedError       the algorithm has nothing new to suggest
    └── ExecutorError                 an executor backend could not run the workers

    KeyboardInterrupt
    └── Interrupted                   Ctrl-C, SIGINT, SIGTERM or SIGHUP stopped workers; says what they gave back

An :class:`Interrupted` is a ``KeyboardInterrupt``, not an ``OrchardError``, so
that ``except Exception`` in user code does not swallow it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "AlgorithmError",
    "BudgetExhaustedError",
    "ConfigurationError",
    "DuplicateTrialError",
    "ExecutorError",
    "ExperimentBrokenError",
    "ExperimentConflictError",
    "ExperimentError",
    "ExperimentNotFoundError",
    "HypervolumeError",
    "Interrupted",
    "InvalidReportError",
    "OrchardError",
    "ReservationLostError",
    "SpaceError",
    "SpaceExhaustedError",
    "StopReason",
    "StorageCorruptedError",
    "StorageError",
    "StorageUnavailableError",
    "TrialNotFoundError",
    "WorkerStoppedError",
]


def near_names(given: str, valid: Iterable[str], n: int = 1, cutoff: float = 0.75) -> list[str]:
    """The names of ``valid`` that ``given`` likely mistypes: each one equal to it but for case, else the
    ``n`` closest whose likeness (``difflib``'s ratio, 0 to 1) reaches ``cutoff``, closest first."""
    choices = list(valid)
    same = [choice for choice in choices if choice.lower() == given.lower()]
    if same:
        return same
    import difflib

    return difflib.get_close_matches(given, choices, n=n, cutoff=cutoff)


def meant(given: object, valid: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The one of ``valid`` that ``given`` likely mistypes (``bayse``: ``bayes``; ``--Json``: ``--json``)."""
    near = near_names(given, valid, cutoff=cutoff) if isinstance(given, str) else []
    return near[0] if near else None


def did_you_mean(given: object, valid: Iterable[str]) -> str:
    """`` (did you mean bayes?)`` for a mistyped name, else ``""``: ends a message refusing ``given``."""
    near = meant(given, valid)
    return f" (did you mean {near}?)" if near else ""


def shown(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters, for a message; never raises.

    ``repr`` refuses ints of more than 4,300 digits, and a user's ``__repr__`` may fail.
    """
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 -- a message must not fail on the value it describes
        return f"a {type(value).__name__} that cannot be shown"
    return text[:width]


class OrchardError(Exception):
    """Root of every error Orchard raises on purpose."""


class ConfigurationError(OrchardError):
    """An option, URI or name given by the user is invalid."""


class SpaceError(ConfigurationError):
    """A search-space definition (a prior string) is invalid."""


class StorageError(OrchardError):
    """The storage could not carry out an operation."""

    @classmethod
    def unstorable(cls, objective: Any) -> StorageError:
        """A trial's objective that is no float (an int of 5,000 digits, a text); nothing was written."""
        return cls(f"cannot store objective {shown(objective, 60)} ({type(objective).__name__}): a trial's "
                   "objective is a float; pass float(value), or a number within a float's range")


class StorageUnavailableError(StorageError):
    """The storage cannot be reached (server down, lock not obtained in time).

    ``reached`` is true when the storage had answered this process before (or was lost in
    the middle of a call): it exists, so it is down for a while, not misaddressed.
    """

    def __init__(self, message: str = "", *, reached: bool = False) -> None:
        super().__init__(message)
        self.reached = reached


class StorageCorruptedError(StorageError):
    """The storage holds data Orchard cannot read safely."""


class DuplicateTrialError(StorageError):
    """A trial with the same params already exists in the experiment."""


class ReservationLostError(StorageError):
    """The worker does not own the reservation it tried to write to."""

    @classmethod
    def refused(cls, trial_id: str, status: str, owner: str | None, worker: str | None) -> ReservationLostError:
        """The storage's refusal of a write by ``worker`` to a trial it does not hold."""
        if owner is not None and owner == worker and status in ("completed", "broken", "pruned"):
            return cls(f"trial {trial_id} is already {status}, recorded by this worker ({worker}); a trial "
                       "takes one result and its reports come before it: report before the objective returns "
                       "(join a thread that reports), or in ask-and-tell before observe(), and observe each "
                       "trial once")
        held = f"owned by {owner}" if owner else "unowned"
        return cls(
            f"trial {trial_id} is {status} and {held}, not reserved by {worker or 'anyone'}; its "
            "reservation was released (stale heartbeat?) or taken by another worker, so this write was refused"
        )

    @classmethod
    def vanished(cls, trial_id: str, where: str, worker: str) -> ReservationLostError:
        """Trial ``trial_id``, reserved by ``worker``, is gone from ``where`` while its experiment is still there."""
        return cls(f"trial {trial_id} vanished from {where} while worker {worker} held it, though its experiment is "
                   "still there: the database was restored from an older copy, or its server lost writes in a crash "
                   "(a server without a journal?); this write was refused and the trial may run again")

    @classmethod
    def dropped(cls, trial_id: str, worker: str) -> ReservationLostError:
        """A worker's heartbeat found its reservation taken, so the result is not written."""
        return cls(
            f"worker {worker} lost its reservation of trial {trial_id} during the evaluation (released by "
            "`orchard db release`, or found stale by another worker, or taken over); the result was dropped. "
            "If nobody released it, raise heartbeat: the objective may starve the worker's heartbeat thread"
        )


class TrialNotFoundError(StorageError):
    """No trial with the given id exists."""

    @classmethod
    def missing(cls, trial_id: str, where: str = "the storage") -> TrialNotFoundError:
        """No trial ``trial_id`` in ``where`` (a storage's redacted URI, or "the storage")."""
        return cls(f"no trial with id {trial_id!r} in {where}")

    @classmethod
    def deleted(cls, trial_id: str, where: str, worker: str) -> TrialNotFoundError:
        """Trial ``trial_id``, reserved by ``worker``, vanished from ``where`` (a redacted URI) with its experiment."""
        return cls(f"trial {trial_id} was deleted from {where} while worker {worker} held it: its experiment was "
                   "deleted (orchard db rm?) or the database restored from an older copy; this write was refused")


class InvalidReportError(OrchardError, ValueError):
    """A report (intermediate value at a step) was refused; nothing was written.

    Also a ``ValueError``: what :func:`orchard.report` raises for a bad value or step, wherever it runs.
    """

    @classmethod
    def objectives_expected(cls, trial_id: str, given: str, objectives: Any) -> InvalidReportError:
        """A report does not give the experiment's objectives by name (``given`` says what it gave)."""
        names = ", ".join(f"{name!r}: ..." for name in objectives)
        return cls(f"trial {trial_id}: the report gives {given}, but the experiment's objectives are "
                   f"{', '.join(objectives)}; report each by name, orchard.report({{{names}}}, step)")

    @classmethod
    def one_objective(cls, trial_id: str) -> InvalidReportError:
        """A report by name in an experiment with one objective."""
        return cls(f"trial {trial_id}: the report maps names to values, but the experiment has one "
                   "objective; report a number, orchard.report(value, step)")

    @classmethod
    def bad_step(cls, trial_id: str, step: Any) -> InvalidReportError:
        """``step`` is not a non-negative integer below ``2**63``."""
        return cls(f"trial {trial_id}: report step {shown(step)} is not an integer >= 0 and < 2**63; "
                   "report the epoch, iteration or samples seen as an int")

    @classmethod
    def bad_value(cls, trial_id: str, value: Any) -> InvalidReportError:
        """``value`` is not a finite number."""
        return cls(f"trial {trial_id}: reported value {shown(value)} is not a finite number; "
                   "report the objective at that step as a float, or one float per objective (not NaN or inf)")

    @classmethod
    def not_after(cls, trial_id: str, step: int, last: int) -> InvalidReportError:
        """``step`` does not come after the last one reported."""
        return cls(f"trial {trial_id}: report step {step} is not after the last reported step {last}; "
                   "report each step once, in increasing order")

    @classmethod
    def too_many(cls, trial_id: str, limit: int) -> InvalidReportError:
        """The trial already holds ``limit`` reports."""
        return cls(f"trial {trial_id} already holds {limit} reports, the most a trial may hold; "
                   "report less often (e.g. every k-th step)")

    @classmethod
    def nothing_reported(cls, trial_id: str) -> InvalidReportError:
        """A trial cannot be pruned before it reported a value."""
        return cls(f"trial {trial_id} has reported no value, so it cannot be pruned; "
                   "report at least one value before pruning it")


class StopReason(str, enum.Enum):
    """Why a worker stops asking for trials (carried by :class:`WorkerStoppedError`)."""

    BUDGET = "budget"
    """``max_trials`` trials are completed (or, for a storage refusal, all held)."""
    BROKEN = "broken"
    """``max_broken`` trials are broken."""
    WORKER_BUDGET = "worker-budget"
    """This worker ran its own ``max_trials_per_worker``."""
    EXHAUSTED = "exhausted"
    """The algorithm has nothing new to suggest and no other trial is pending."""
    IDLE = "idle"
    """Nothing could be reserved within the caller's timeout."""
    STOPPED = "stopped"
    """A stopping rule (target, patience, max_cost, max_time) fired (see :mod:`orchard.stopping`)."""

    def __str__(self) -> str:
        return self.value


class WorkerStoppedError(OrchardError):
    """A worker has no trial to run; :attr:`reason` says why.

    Args:
        message: the one-line explanation.
        reason: the :class:`StopReason`.
    """

    def __init__(self, message: str, reason: StopReason) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Executors ship errors between processes; subclasses take fewer arguments.
        return _restore_stop, (type(self), str(self), self.reason)


def _restore_stop(cls: type[WorkerStoppedError], message: str, reason: StopReason) -> WorkerStoppedError:
    err = cls.__new__(cls)
    WorkerStoppedError.__init__(err, message, reason)
    return err


class BudgetExhaustedError(WorkerStoppedError):
    """No unit of the experiment's ``max_trials`` budget is left to claim, or nothing is left to run."""

    def __init__(self, message: str, reason: StopReason = StopReason.BUDGET) -> None:
        super().__init__(message, reason)


class ExperimentError(OrchardError):
    """Base class for errors about an experiment as a whole."""

    @classmethod
    def foreign_trial(cls, trial_id: str, experiment: str, owner: str) -> ExperimentError:
        """Trial ``trial_id`` of experiment ``owner`` was handed to a method of experiment ``experiment``."""
        return cls(f"trial {trial_id} is a trial of experiment {owner!r}, not of {experiment!r}; nothing was "
                   f"stored: pass it to a handle of {owner!r}, such as orchard.get_experiment({owner!r})")


class ExperimentNotFoundError(ExperimentError):
    """No experiment with the given name exists in the storage."""


class ExperimentConflictError(ExperimentError):
    """An experiment was joined with a configuration that differs from the stored one.

    ``settings`` names the settings that differ (``space``, ``algorithm``, ``max_trials``...),
    one per difference listed in the message; empty where the differences are not settings.
    """

    def __init__(self, message: str, settings: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.settings = tuple(settings)


class ExperimentBrokenError(ExperimentError, WorkerStoppedError):
    """The experiment reached ``max_broken`` broken trials and stops."""

    def __init__(self, message: str) -> None:
        super().__init__(message, StopReason.BROKEN)

    @classmethod
    def limit_reached(cls, experiment: str, broken: int, max_broken: int,
                      last_error: Mapping[str, Any] | None,
                      last_trial: str | None = None) -> ExperimentBrokenError:
        """The error for ``broken`` >= ``max_broken``, showing the last trial's (``last_trial``'s) error."""
        last = last_error or {}
        of = "" if last_trial is None else f" (trial {last_trial})"
        return cls(
            f"experiment {experiment!r} stopped: {broken} {'trial is' if broken == 1 else 'trials are'} broken "
            f"(max_broken={max_broken}); "
            f"last error{of}: {last.get('type')}: {last.get('message')}. "
            "Fix the objective, then raise max_broken or start a new experiment"
        )


class HypervolumeError(ExperimentError, ValueError):
    """An experiment's hypervolume cannot be computed (4 objectives or more, a volume past the largest float).

    Also a ``ValueError``, what it was before it named the experiment.
    """


class AlgorithmError(OrchardError):
    """An optimization algorithm could not produce a suggestion."""


class SpaceExhaustedError(AlgorithmError):
    """The algorithm has no unseen point left to suggest (e.g. a finished grid)."""


class ExecutorError(OrchardError):
    """An executor backend could not start or run the workers."""

    @classmethod
    def loops_cancelled(cls, experiment: str | None, cancelled: int, total: int, dask: bool) -> ExecutorError:
        """The executor cancelled worker loops that had not ended (a Dask client that lost its scheduler)."""
        cause = ("the Dask client lost its scheduler, or something cancelled its futures" if dask
                 else "the pool was shut down")
        return cls(f"{cancelled} of the {total} worker loop(s) of experiment {experiment!r} were cancelled before "
                   f"they ended ({cause}): a loop still running goes on against the storage until it ends, and a "
                   "trial held by one that died is taken back once its lease runs out; check the executor, then "
                   "run workon again to go on")

    @classmethod
    def unstartable(cls, experiment: str | None, pool: str) -> ExecutorError:
        """The executor of the caller's own ``pool`` (mpi4py's) could not start processes to run loops in."""
        return cls(f"executor {pool!r} could not start its worker processes, so the worker loops of "
                   f"experiment {experiment!r} never ran (MPI refused to spawn them: see its message above, "
                   "such as not enough slots); start the program under `mpiexec -n N python -m mpi4py.futures` "
                   "with N at least n_workers + 1, or ask the pool for fewer workers (max_workers)")

    @classmethod
    def workerless(cls, experiment: str | None, scheduler: str, timeout: float,
                   resources: Mapping[str, float] | None = None) -> ExecutorError:
        """Every Dask worker (offering ``resources``, if given) left the scheduler, and none joined within
        ``worker_timeout``."""
        if resources:
            return cls(f"the Dask scheduler {scheduler} has had no worker offering the resources "
                       f"{dict(resources)} that executor_config asks each worker loop for, for {timeout:g} "
                       f"s, so the worker loops of experiment {experiment!r} cannot run (every worker "
                       "offering them died, retired or reached its walltime; its other workers cannot run "
                       "them); their trials are taken back once their leases run out. Start workers with "
                       f"`dask worker ADDRESS --resources {_flag(resources)}` and run workon again, or raise "
                       "executor_config={'worker_timeout': SECONDS}")
        return cls(f"the Dask scheduler {scheduler} has had no worker for {timeout:g} s, so the worker loops "
                   f"of experiment {experiment!r} cannot run (every worker died or reached its walltime); "
                   "their trials are taken back once their leases run out. Start workers (dask worker "
                   "ADDRESS, or cluster.scale(N)) and run workon again, or raise "
                   "executor_config={'worker_timeout': SECONDS}")

    @classmethod
    def unoffered(cls, scheduler: str, resources: Mapping[str, float], timeout: float,
                  offers: str) -> ExecutorError:
        """No worker of the Dask scheduler offered ``resources`` within ``worker_timeout`` of the start."""
        return cls(f"no Dask worker of the scheduler {scheduler} offers the resources {dict(resources)} that "
                   f"executor_config asks each worker loop for, within {timeout:g} s (its workers offer "
                   f"{offers}); start workers with `dask worker ... --resources {_flag(resources)}`, or drop "
                   "'resources' from executor_config")


def _flag(resources: Mapping[str, float]) -> str:
    """``resources`` as ``dask worker --resources`` takes them (``GPU=1,MEMORY=2e+09``)."""
    return ",".join(f"{key}={need:g}" for key, need in resources.items())


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGINT, SIGTERM or SIGHUP stopped workers; the trials they were running were given back.

    Each worker stopped this way releases its running trial (status ``interrupted``,
    not counted against ``max_attempts``) and reports it here; ``workon`` joins the
    reports of all its workers into the one it raises. ``str()`` says what happened
    to the running trials.

    Args:
        terminated: the interruption was SIGTERM (``kill``, ``scancel``), not Ctrl-C or SIGINT.
        released: ids of the running trials given back.
        kept: ids of running trials that could not be given back (the storage failed):
            they are taken back once their lease runs out.
        pruned: ids of running trials recorded ``pruned`` instead of given back: their
            pruner had already told them to stop, and that verdict stands.
        finished: ids of running trials whose evaluation could not be stopped (it runs in a
            worker's own thread) and ran to its end: recorded like any other.
        unstopped: workers that were not stopped (unreachable, or too slow to answer).
        caught: ids of running trials whose objective caught the interruption and returned: their
            result was recorded, then the worker stopped (:func:`orchard.interruption.raise_swallowed`).
    """

    def __init__(self, *args: object, terminated: bool = False, released: Iterable[str] = (),
                 kept: Iterable[str] = (), unstopped: int = 0, pruned: Iterable[str] = (),
                 finished: Iterable[str] = (), caught: Iterable[str] = ()) -> None:
        super().__init__(*args)
        self.terminated = terminated
        self.released = list(released)
        self.kept = list(kept)
        self.pruned = list(pruned)
        self.finished = list(finished)
        self.caught = list(caught)
        self.unstopped = unstopped

    @classmethod
    def of(cls, interruption: KeyboardInterrupt) -> Interrupted:
        """``interruption`` itself if it is an :class:`Interrupted`, else one for it (a plain Ctrl-C)."""
        return interruption if isinstance(interruption, Interrupted) else cls()

    def joined(self, others: Iterable[BaseException | None], unstopped: int = 0) -> Interrupted:
        """This interruption together with what other workers it stopped reported."""
        released, kept, pruned = list(self.released), list(self.kept), list(self.pruned)
        caught = list(self.caught)
        for other in others:
            if isinstance(other, Interrupted):
                released += other.released
                kept += other.kept
                pruned += other.pruned
                caught += other.caught
        return Interrupted(terminated=self.terminated, released=dict.fromkeys(released), kept=dict.fromkeys(kept),
                           unstopped=self.unstopped + unstopped, pruned=dict.fromkeys(pruned),  # counted once each
                           finished=dict.fromkeys(self.finished), caught=dict.fromkeys(caught))

    def __str__(self) -> str:
        """What became of the running trials, each counted once; led by the releases only if there were any
        ("0 of 2 running trial(s) released" before "2 finished and recorded" read as a failure)."""
        if self.args:
            return super().__str__()
        running = sum(map(len, (self.released, self.kept, self.pruned, self.finished, self.caught)))
        objective = "its objective" if len(self.caught) == 1 else "their objectives"
        recorded = [(len(ids), why) for ids, why in (
            (self.caught, f"{objective} caught KeyboardInterrupt and returned a value"),
            (self.finished, "an evaluation in a worker's own thread cannot be stopped: it runs to its end")) if ids]
        idle = "no trial was running" if not self.unstopped else "no trial released yet"
        parts = [f"{len(self.released)} of {running} running trial(s) released (status interrupted)" if running
                 else idle] if self.released or self.kept or not running else []
        if recorded and sum(n for n, _ in recorded) == running:  # every one ran to its end
            whys = "; ".join(why if len(recorded) == 1 else f"{n}: {why}" for n, why in recorded)
            parts.append(f"the {running} running trials finished and were recorded ({whys})" if running > 1
                         else f"the running trial finished and was recorded ({whys})")
        else:
            parts += [f"{n} finished and recorded ({why})" for n, why in recorded]
        if self.pruned:
            told = "its pruner had told it" if len(self.pruned) == 1 else "their pruners had told them"
            parts.append(f"{len(self.pruned)} recorded pruned ({told} to stop)")
        if not parts[0].startswith(("no trial", "the ")) and not self.released and not self.kept:
            parts[0] = f"of the {running} running trial(s), {parts[0]}"  # none released: what became of them
        if self.kept:
            parts.append(f"could not release {', '.join(self.kept)}: taken back when its lease runs out")
        if self.unstopped:
            parts.append(f"{self.unstopped} worker(s) did not stop in time (an evaluation that cannot be "
                         "stopped, such as one running in a worker's own thread, finishes first): a trial such a "
                         "worker still holds is settled when it stops, or taken back once its lease runs out")
        return "; ".join(parts)

