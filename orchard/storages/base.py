"""The storage contract every backend implements.

A storage is the only thing Orchard workers share. There is no master: every
race between workers is settled by one of the atomic verbs below, each
conditional on the state the caller expects (the owner of a reservation, the
status a trial must be in) and each returning what was won or raising a
specific :mod:`orchard.errors` leaf when it was not.

Guarantees every backend gives (the conformance suite in
:mod:`orchard.testing` checks them, with real processes where it matters):

* **Process safety.** Every verb is atomic with respect to every other verb
  called from any thread or process sharing the storage (``memory://`` is
  shared by threads of one process only).
* **Durability.** Once a verb returns, its effect survives the death of the
  calling process at any later instant.
* **Unique params.** An experiment never holds two trials with the same
  params: the trial id is a hash of the experiment id and the params
  (:func:`orchard.space.trial_id`), and the storage enforces uniqueness.
* **Exclusive reservations.** Only the worker named in a reservation may
  heartbeat, complete, fail or release it; anyone else gets
  :class:`~orchard.errors.ReservationLostError`.
* **Exact budget.** ``register_trial(..., budget=M)`` admits a trial only
  while fewer than ``M`` trials of the experiment hold a unit of budget. Every
  trial holds one unit except broken ones and those recorded apart from the
  budget (``record_trial(..., in_budget=False)``), so racing workers can never
  push the number of completed trials beyond ``M``.
* **Picklable.** ``pickle.loads(pickle.dumps(storage))`` reconnects to the
  same data from any process (through the URI), so executors can ship a
  storage to workers.
* **Driver errors are translated**: callers only ever see
  :class:`~orchard.errors.OrchardError` subclasses.
* **Transient failures say so.** A verb that could not reach the storage
  (server down, lock not obtained in time) raises
  :class:`~orchard.errors.StorageUnavailableError`; a write may then have
  taken effect or not. Callers retry such errors
  (:class:`orchard.storages.retrying.RetryingStorage`); every other error is
  an answer.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from orchard.trial import Lease, ReportValue, Trial, TrialStatus, finite_float

__all__ = ["BaseStorage", "ExperimentRecord", "finishes", "new_experiment_id"]

_FINISHED = frozenset({TrialStatus.COMPLETED, TrialStatus.PRUNED})


def finishes(stored: Trial, restored: Trial) -> bool:
    """Whether ``restored`` (a dump's trial) brings ``stored``, of the same id, up to date.

    It does when ``stored`` waits to run (``new`` or ``interrupted``: held by no worker,
    so no evaluation is thrown away) and ``restored`` holds its result (``completed`` or
    ``pruned``), both in the budget or both apart: it then holds the same unit of budget.
    """
    return (stored.status in (TrialStatus.NEW, TrialStatus.INTERRUPTED) and restored.status in _FINISHED
            and stored.in_budget == restored.in_budget)


def new_experiment_id(keep_id: Any = None, taken: Any = ()) -> str:
    """The id of an experiment being created: ``keep_id`` if it is one (32 lowercase hex digits, as
    every experiment id) and not in ``taken``, else a new random one."""
    if isinstance(keep_id, str) and _EXPERIMENT_ID.fullmatch(keep_id) and keep_id not in taken:
        return keep_id
    return uuid.uuid4().hex


_EXPERIMENT_ID = re.compile(r"[0-9a-f]{32}")
#: How many stored names the error of a missing experiment lists (a storage may hold thousands).
_LISTED = 20
_Storage = TypeVar("_Storage", bound="BaseStorage")  # `with PickledStorage(...) as s` keeps its type


@dataclasses.dataclass
class ExperimentRecord:
    """An experiment as stored: its id, unique name and configuration."""

    id: str
    name: str
    config: dict[str, Any]
    created: float

    def to_dict(self) -> dict[str, Any]:
        """Return a plain ``dict`` (for dumps and JSON output)."""
        return dataclasses.asdict(self)


class BaseStorage(abc.ABC):
    """A shared trial history that many worker processes read and write.

    Subclasses implement the abstract verbs; the concrete helpers defined
    here are built on them. Times are POSIX timestamps from ``time.time()``,
    for people to read: no verb decides anything by comparing one host's
    clock with another's (SPEC §5.8). Ownership is settled by conditional
    writes; lost reservations are judged by observers
    (:class:`orchard.leases.LeaseObserver`) and taken back with
    :meth:`release_lost`, conditional on the exact lease they saw.
    """

    #: The URI this storage was opened with (credentials included; never print it).
    uri: str
    #: Whether trials become visible in the order of the times they are stamped with: true
    #: where every write is stamped while the storage serializes writes (one lock), false where
    #: clients stamp a write before the storage orders it (MongoDB). A reader of the latter can
    #: see a completion before an earlier-stamped one (:meth:`History.completes_after`).
    stamps_in_order: bool = True
    #: Whether the data lives in this process's memory (``memory://``, ``mongomock://``): nothing of it
    #: outlives the process, and workers in other processes are refused (they would find none).
    process_local: bool = False

    # -- experiments -----------------------------------------------------------

    @abc.abstractmethod
    def create_experiment(self, name: str, config: Mapping[str, Any], created: float | None = None,
                          keep_id: str | None = None) -> str:
        """Create the experiment ``name`` unless it exists; return its id.

        Get-or-create, atomic across processes: N processes racing to create
        the same name all receive the same id and exactly one record exists.
        ``config`` is stored only by the call that creates the record, with
        ``created`` as its creation time (default: now; ``db load`` keeps the dumped one).
        The record gets the id ``keep_id`` (:func:`new_experiment_id`) when no experiment of the storage
        holds it, else a new one: ``db load`` keeps the dumped id, so every trial keeps its own
        (:func:`~orchard.space.trial_id`), and with it the hyperband bracket and the rank that
        decided each verdict.

        Raises:
            StorageError: the storage could not be written.
        """

    @abc.abstractmethod
    def get_experiment(self, name: str) -> ExperimentRecord | None:
        """Return the experiment called ``name``, or ``None`` if there is none."""

    @abc.abstractmethod
    def list_experiments(self) -> list[ExperimentRecord]:
        """Return every experiment in the storage, oldest first."""

    @abc.abstractmethod
    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        """Merge ``changes`` into the experiment's config (top-level keys) atomically.

        Raises:
            ExperimentNotFoundError: no experiment has that id.
        """

    @abc.abstractmethod
    def experiment(self, experiment_id: str) -> ExperimentRecord:
        """Return the experiment with that id.

        Raises:
            ExperimentNotFoundError: no experiment has that id.
        """

    @abc.abstractmethod
    def swap_experiment(self, experiment_id: str, key: str, expected: Any, value: Any) -> bool:
        """Set the config's top-level ``key`` to ``value`` iff it holds exactly ``expected`` now.

        A compare-and-swap, atomic with respect to every other verb: of racers that
        read the same ``expected``, one wins. ``expected=None`` means "unset".
        ``expected`` must be the value as read from this storage (a mapping
        compares with its keys in the stored order).

        Returns:
            Whether ``value`` was written.

        Raises:
            ExperimentNotFoundError: no experiment has that id.
        """

    @abc.abstractmethod
    def delete_experiment(self, experiment_id: str) -> int:
        """Delete the experiment and all its trials; return how many trials went."""

    # -- trials: creation ------------------------------------------------------

    @abc.abstractmethod
    def register_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        *,
        worker: str | None = None,
        budget: int | None = None,
        parent: str | None = None,
    ) -> Trial:
        """Store a new trial for ``params`` and return it.

        With ``worker=None`` the trial is ``new``; otherwise it is created
        already ``reserved`` by ``worker`` (fresh heartbeat, one attempt), in
        the same atomic step, so no other worker can take it.

        With ``budget=M`` the insertion also claims one unit of a budget of
        ``M``: it is refused when ``M`` trials of the experiment that are not
        broken already exist. Both checks and the insertion are one atomic
        step.

        ``parent`` is the id of the trial this one was promoted from by a
        multi-fidelity algorithm (stored as :attr:`Trial.parent`), else ``None``.

        Raises:
            DuplicateTrialError: a trial with the same params exists
                (checked before the budget).
            BudgetExhaustedError: ``budget`` units are all held.
        """

    @abc.abstractmethod
    def record_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        objective: float,
        results: Mapping[str, Any],
        *,
        budget: int | None = None,
        in_budget: bool = False,
    ) -> Trial:
        """Store an evaluation made elsewhere: a trial born ``completed``, and return it.

        The trial is built by :func:`orchard.trial.recorded` (``origin="inserted"``); no
        worker ever reserves it. With ``in_budget=False`` it holds no unit of budget
        (``budget`` is then ignored); with ``in_budget=True`` it claims one of ``budget``
        like :meth:`register_trial`. The checks and the insertion are one atomic step.

        Raises:
            DuplicateTrialError: a trial with the same params exists (checked before the budget).
            BudgetExhaustedError: ``in_budget`` and ``budget`` units are all held.
        """

    @abc.abstractmethod
    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        """Insert trials as they are (status, times, results), for loading dumps.

        Trials whose id already exists are skipped, unless the restored one
        :func:`finishes` the stored one: it then replaces it (a dump taken while
        the trial ran was loaded before). The trials' ``experiment`` field is
        rewritten to ``experiment_id``. Returns how many were added or replaced.
        """

    # -- trials: the reservation lifecycle -------------------------------------

    @abc.abstractmethod
    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        """Atomically reserve one ``interrupted`` or ``new`` trial for ``worker``.

        Interrupted trials go first, then new ones, oldest first. The trial
        becomes ``reserved`` with ``worker`` as owner, a fresh heartbeat, a
        start time and one more attempt. Returns ``None`` if none is waiting.
        Two callers never win the same trial.
        """

    def take_up_reserved(self, experiment_id: str, worker: str) -> list[Trial]:
        """Return the experiment's trials reserved by ``worker``, taken up as reservations handed out here.

        For a worker whose reservation reply was lost (an outage): the
        reservation was made, and is found here instead of being held by
        nobody until its lease runs out. A storage that remembers the trials
        it handed out (to name what happened to one that vanishes) remembers
        these too. The default reads the reserved trials and remembers nothing.
        """
        return [t for t in self.fetch_trials(experiment_id, [TrialStatus.RESERVED]) if t.worker == worker]

    @abc.abstractmethod
    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        """Refresh the heartbeat of a trial ``worker`` has reserved.

        Raises:
            ReservationLostError: the trial is not reserved by ``worker``
                (it was released as stale, or completed by someone else).
        """

    @abc.abstractmethod
    def complete_trial(
        self,
        trial_id: str,
        worker: str,
        objective: float,
        results: Mapping[str, Any] | None = None,
    ) -> Trial:
        """Record the result of a trial ``worker`` has reserved; it becomes ``completed``.

        Raises:
            ReservationLostError: the trial is not reserved by ``worker``;
                nothing is written.
        """

    @abc.abstractmethod
    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        """Mark a trial ``worker`` has reserved as ``broken`` with ``error``.

        ``error`` holds at least ``type`` and ``message``. The trial stops
        holding a unit of budget.

        Raises:
            ReservationLostError: the trial is not reserved by ``worker``.
        """

    @abc.abstractmethod
    def report_trial(self, trial_id: str, worker: str, step: int, value: ReportValue) -> Trial:
        """Store one intermediate ``value`` at ``step`` on a trial ``worker`` has reserved.

        One durable write per report: once this returns, the report survives
        the worker (a SIGKILL, a lost lease). A report renews the lease like a
        heartbeat (it writes ``heartbeat``). Steps are strictly increasing; a
        trial holds at most :data:`~orchard.trial.MAX_REPORTS_PER_TRIAL`
        reports. The next reservation of the trial starts its reports over.
        With several objectives ``value`` is a sequence of finite numbers (one
        per objective), stored as a tuple.

        Returns:
            The trial with the report appended to ``reports``.

        Raises:
            InvalidReportError: ``value`` is not a finite number (or a non-empty
                sequence of them), ``step`` not
                a non-negative int greater than the last reported step, or the
                trial holds the most reports allowed; nothing is written.
            ReservationLostError: the trial is not reserved by ``worker`` (a
                late report is refused like a late result, whatever its step: this
                is checked first); nothing is written.
            TrialNotFoundError: no trial with that id.
        """

    @abc.abstractmethod
    def prune_trial(self, trial_id: str, worker: str, verdict: Mapping[str, Any]) -> Trial:
        """Stop a trial ``worker`` has reserved early: it becomes ``pruned`` (terminal).

        Its ``objective`` is its last reported value and ``verdict`` (plain
        values: why it was pruned) is stored with it. A pruned trial keeps its
        unit of budget, like a completed one (completed + pruned never exceed
        ``max_trials``), but is never the best trial.

        Raises:
            ReservationLostError: the trial is not reserved by ``worker``; nothing is written.
            InvalidReportError: the trial has reported no value yet; nothing is written.
            TrialNotFoundError: no trial with that id.
        """

    @abc.abstractmethod
    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        """Give a reservation back: the trial becomes ``interrupted``, unowned.

        A graceful release (Ctrl-C, SIGTERM, preemption) gives the attempt
        back: ``attempts`` goes down by one, so only reservations lost to dead
        or frozen workers count towards ``max_attempts``.

        ``worker=None`` releases whoever holds it (administrative use, e.g.
        ``orchard db release``).

        Raises:
            ReservationLostError: the trial is not reserved (by ``worker``).
            TrialNotFoundError: no trial has that id.
        """

    @abc.abstractmethod
    def release_lost(
        self, experiment_id: str, leases: Mapping[str, Lease], max_attempts: int
    ) -> list[Trial]:
        """Take back reservations an observer judged lost; return the trials changed.

        ``leases`` maps trial ids to the :class:`~orchard.trial.Lease` the
        observer saw (see :class:`orchard.leases.LeaseObserver`). Each trial
        is taken back only if it is still reserved by exactly that worker with
        exactly that heartbeat value, atomically per trial, so a heartbeat
        written meanwhile wins and no clock is compared. A taken-back trial
        with ``attempts < max_attempts`` becomes ``interrupted`` and unowned;
        one with ``attempts >= max_attempts`` becomes ``broken`` with
        ``error = {"type": "TrialLost", "reason": "lost", "message": ...}``
        (:func:`orchard.leases.lost_error`) and stops holding budget. Either
        way a late heartbeat or result from the old owner is then refused.
        Ids that are unknown, or whose lease changed, are skipped.

        Raises:
            ExperimentNotFoundError: no experiment has that id.
        """

    # -- trials: reading -------------------------------------------------------

    @abc.abstractmethod
    def get_trial(self, trial_id: str) -> Trial | None:
        """Return the trial with that id, or ``None``."""

    @abc.abstractmethod
    def fetch_trials(
        self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None = None
    ) -> list[Trial]:
        """Return the experiment's trials (only those in ``statuses`` if given), oldest first."""

    @abc.abstractmethod
    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        """Return the trials that changed since ``cursor``, and a new cursor.

        ``cursor=None`` returns every trial. Feeding each returned cursor to
        the next call and keeping the last version of each trial by id
        reproduces the experiment's current state, at a cost that depends on
        how much changed, not on the size of the history. A trial may be
        returned again even if it did not change; cursors are opaque,
        picklable, and only meaningful to the storage that issued them.
        A storage that cannot go on from ``cursor`` returns every trial, and
        says so through :meth:`resent_everything`.
        """

    def resent_everything(self, before: Any, after: Any) -> bool:
        """Whether :meth:`fetch_changes` from cursor ``before`` (returning ``after``) returned every trial.

        The storage could not go on from ``before`` (its data was replaced, e.g. a
        file restored from an older copy): the caller must then drop the trials
        it holds that were not returned, which no longer exist. The default:
        only ``before=None`` does.
        """
        return before is None

    @abc.abstractmethod
    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        """Return how many trials the experiment has in each status (all statuses present)."""

    # -- lifecycle of the handle -----------------------------------------------

    def close(self) -> None:
        """Release connections and file handles. The storage may be reopened by URI."""

    def __enter__(self: _Storage) -> _Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers built on the verbs --------------------------------------------

    @property
    def redacted_uri(self) -> str:
        """The URI with any password replaced by ``***``, safe to print or log."""
        from orchard.storages._uri import redact

        return redact(self.uri)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted_uri!r})"

    def best_trial(self, experiment_id: str) -> Trial | None:
        """Return the completed trial with the lowest objective, or ``None``.

        A trial whose stored objective is not a finite number (NaN, a text: another
        program's write) is skipped, on every backend, as :func:`orchard.pareto.best_of` skips it.
        """
        completed = self.fetch_trials(experiment_id, [TrialStatus.COMPLETED])
        scored = [t for t in completed if finite_float(t.objective) is not None]
        return min(scored, key=lambda t: t.objective, default=None)  # type: ignore[arg-type, return-value]

    def count_unbudgeted(self, experiment_id: str) -> int:
        """How many trials of the experiment were recorded apart from the budget (``in_budget=False``).

        Those trials are completed and hold no unit of ``max_trials``: the budget used is
        ``completed + pruned - count_unbudgeted``.
        """
        return sum(not t.in_budget for t in self.fetch_trials(experiment_id, [TrialStatus.COMPLETED]))

    def require_experiment(self, name: str) -> ExperimentRecord:
        """Return the experiment called ``name``.

        Raises:
            ExperimentNotFoundError: no such experiment; the message lists those that exist.
        """
        from orchard.errors import ExperimentNotFoundError, near_names

        record = self.get_experiment(name)
        if record is None:
            stored = sorted(r.name for r in self.list_experiments())
            near = near_names(name, stored, n=3)
            more = f" and {len(stored) - _LISTED} more" if stored[_LISTED:] else ""
            names = ", ".join(stored[:_LISTED]) + more
            raise ExperimentNotFoundError(
                f"no experiment named {name!r} in storage {self.redacted_uri}"
                + (f"; did you mean {' or '.join(map(repr, near))}?" if near else "")
                + f" (experiments there: {names or 'none'}); check the name and --storage"
            )
        return record

    @staticmethod
    def now() -> float:
        """The clock every backend stamps times with."""
        return time.time()
