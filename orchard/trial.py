"""The trial record, its statuses and the transitions between them.

This module imports nothing else from Orchard but :mod:`orchard.errors` so that
every layer (storages, algorithms, the worker) can depend on it.

Lifecycle (SPEC §4), one function per arrow below the drawing::

    new ──reserve──> reserved ──complete──> completed
     ^                  │ ──fail─────────> broken
     │                  │
     └──────────────────┴ ──lost/release─> interrupted ──reserve──> reserved …
                        └──lost for the max_attempts-th time──> broken (reason "lost")

Each arrow is a pure function (:func:`reserve`, :func:`complete`, :func:`fail`,
:func:`release`, :func:`take_back`, plus :func:`heartbeat`, which stays on
``reserved``) returning a :class:`Change`: the state the trial must be in
before (status, owner, exact values) and the fields it gets. Every backend
applies the same :class:`Change`: the table storage checks it against the
stored trial (:meth:`Change.applied_to`); MongoDB turns it into one
conditional update and, when that matches nothing, asks the same change why
(:meth:`Change.refusal`). The messages are built in :mod:`orchard.errors`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, NamedTuple

from orchard.errors import OrchardError, ReservationLostError, TrialNotFoundError

__all__ = [
    "Change", "Lease", "Trial", "TrialStatus",
    "complete", "fail", "heartbeat", "release", "reserve", "take_back",
]


class TrialStatus(str, enum.Enum):
    """Where a trial is in its lifecycle. Values are the strings stored on disk."""

    NEW = "new"
    RESERVED = "reserved"
    COMPLETED = "completed"
    BROKEN = "broken"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        """Whether no transition leaves this status (completed or broken)."""
        return self in (TrialStatus.COMPLETED, TrialStatus.BROKEN)

    @property
    def is_pending(self) -> bool:
        """Whether the trial holds a point that is being, or will be, evaluated."""
        return self in (TrialStatus.NEW, TrialStatus.RESERVED, TrialStatus.INTERRUPTED)

    @property
    def is_reservable(self) -> bool:
        """Whether a worker may reserve the trial (new or interrupted)."""
        return self in (TrialStatus.NEW, TrialStatus.INTERRUPTED)

    def __str__(self) -> str:
        return self.value


class Lease(NamedTuple):
    """A reservation as an observer saw it: its owner and the exact heartbeat value stored.

    A lease is judged lost by watching its heartbeat value not change, never by
    comparing the value with a clock (see :mod:`orchard.leases`).
    """

    worker: str
    heartbeat: float


@dataclasses.dataclass
class Trial:
    """One evaluation of the objective at one point of the search space.

    Times are POSIX timestamps (seconds). ``params`` hold plain Python values
    only (``int``, ``float``, ``str``, ``bool``). ``error`` is ``None`` unless
    the trial is broken, then ``{"type": ..., "message": ...}`` plus optional
    details such as ``"reason"`` (e.g. ``"timeout"``) or ``"stderr"``.
    """

    id: str
    experiment: str
    params: dict[str, Any]
    status: TrialStatus = TrialStatus.NEW
    objective: float | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    worker: str | None = None
    heartbeat: float | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a plain ``dict`` of builtins (status as its string value)."""
        # Hand-written rather than dataclasses.asdict: this is on every storage write's path.
        return {
            "id": self.id, "experiment": self.experiment, "params": dict(self.params),
            "status": self.status.value, "objective": self.objective, "results": dict(self.results),
            "worker": self.worker, "heartbeat": self.heartbeat, "submit_time": self.submit_time,
            "start_time": self.start_time, "end_time": self.end_time,
            "error": dict(self.error) if self.error is not None else None, "attempts": self.attempts,
            "parent": self.parent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """Build a trial from :meth:`to_dict` output; unknown keys are ignored."""
        names = _FIELD_NAMES
        kwargs = {k: v for k, v in data.items() if k in names}
        status = kwargs.get("status", "new")
        kwargs["status"] = _STATUSES.get(status) or TrialStatus(status)  # the dict: on every replayed record
        kwargs["params"] = dict(kwargs.get("params") or {})
        kwargs["results"] = dict(kwargs.get("results") or {})
        return cls(**kwargs)

    @property
    def lease(self) -> Lease | None:
        """The reservation's owner and heartbeat, or ``None`` unless the trial is reserved."""
        if self.status is not TrialStatus.RESERVED or self.worker is None or self.heartbeat is None:
            return None
        return Lease(self.worker, self.heartbeat)

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, when both are known."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Trial))
_STATUSES: dict[Any, TrialStatus] = {status.value: status for status in TrialStatus}


# -- the arrows ------------------------------------------------------------------------------

_WAITING = frozenset({TrialStatus.NEW, TrialStatus.INTERRUPTED})
_RESERVED = frozenset({TrialStatus.RESERVED})


@dataclasses.dataclass(frozen=True)
class Change:
    """One arrow of the lifecycle, as every backend applies it.

    Attributes:
        before: the statuses the trial must be in.
        owner: the worker that must hold the reservation (``None``: any).
        expects: further fields that must hold exactly these values.
        sets: the fields the trial gets (plain values; ``status`` a :class:`TrialStatus`).
        adds: fields incremented by these amounts (``attempts``).
    """

    before: frozenset[TrialStatus]
    owner: str | None = None
    expects: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    adds: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def holds(self, trial: Trial) -> bool:
        """Whether ``trial`` is in the state this change requires."""
        return (
            trial.status in self.before
            and (self.owner is None or trial.worker == self.owner)
            and all(getattr(trial, name) == value for name, value in self.expects.items())
        )

    def refusal(self, trial_id: str, trial: Trial | None, where: str = "the storage") -> OrchardError | None:
        """Why this change cannot apply to ``trial`` (``None`` if it can).

        Returns:
            :class:`TrialNotFoundError` if there is no trial,
            :class:`ReservationLostError` if it is not in the required state, else ``None``.
        """
        if trial is None:
            return TrialNotFoundError.missing(trial_id, where)
        if self.holds(trial):
            return None
        return ReservationLostError.refused(trial_id, trial.status.value, trial.worker, self.owner)

    def applied_to(self, trial: Trial | None, trial_id: str = "") -> Trial:
        """The trial after this change.

        Raises:
            TrialNotFoundError: ``trial`` is ``None``.
            ReservationLostError: ``trial`` is not in the required state.
        """
        error = self.refusal(trial_id or (trial.id if trial else ""), trial)
        if error is not None:
            raise error
        assert trial is not None
        added = {name: getattr(trial, name) + amount for name, amount in self.adds.items()}
        return dataclasses.replace(trial, **self.sets, **added)


def reserve(worker: str, now: float) -> Change:
    """new/interrupted -> reserved by ``worker``: one more attempt, a fresh heartbeat and start."""
    return Change(
        _WAITING,
        sets={"status": TrialStatus.RESERVED, "worker": worker, "heartbeat": now, "start_time": now, "end_time": None},
        adds={"attempts": 1},
    )


def heartbeat(worker: str, now: float) -> Change:
    """reserved -> reserved: the owner's lease renewed."""
    return Change(_RESERVED, worker, sets={"heartbeat": now})


def complete(worker: str, objective: float, results: Mapping[str, Any], now: float) -> Change:
    """reserved -> completed, by its owner, with the objective and extra results."""
    return Change(_RESERVED, worker, sets={
        "status": TrialStatus.COMPLETED, "objective": float(objective), "results": dict(results),
        "end_time": now, "heartbeat": now,
    })


def fail(worker: str, error: Mapping[str, Any], now: float) -> Change:
    """reserved -> broken, by its owner, with the error (it no longer holds budget)."""
    return Change(_RESERVED, worker, sets={
        "status": TrialStatus.BROKEN, "error": dict(error), "end_time": now, "heartbeat": now,
    })


def release(trial: Trial, worker: str | None) -> Change:
    """reserved -> interrupted, gracefully (Ctrl-C, SIGTERM): the attempt is given back, never below 0.

    Conditional on ``trial``'s attempts, which the new count is computed from.
    """
    return Change(
        _RESERVED, worker, expects={"attempts": trial.attempts},
        sets={"status": TrialStatus.INTERRUPTED, "worker": None, "attempts": max(trial.attempts - 1, 0)},
    )


def take_back(trial: Trial, lease: Lease, max_attempts: int, now: float) -> Change:
    """reserved -> interrupted after ``lease`` was lost; -> broken (reason "lost") at ``max_attempts``.

    Conditional on the trial still holding exactly ``lease`` and ``trial``'s attempts.
    """
    held = {"heartbeat": lease.heartbeat, "attempts": trial.attempts}
    if trial.attempts >= max_attempts:
        return Change(_RESERVED, lease.worker, held, sets={
            "status": TrialStatus.BROKEN, "error": lost_error(trial.attempts), "end_time": now,
        })
    return Change(_RESERVED, lease.worker, held, sets={"status": TrialStatus.INTERRUPTED, "worker": None})


def lost_error(attempts: int) -> dict[str, Any]:
    """The ``error`` of a trial whose reservation was lost for the last allowed time.

    Args:
        attempts: how many of its reservations were lost.

    Returns:
        ``{"type": "TrialLost", "reason": "lost", "message": ...}``.
    """
    return {
        "type": "TrialLost",
        "reason": "lost",
        "message": (
            f"the reservation of this trial was lost {attempts} times: each worker that evaluated "
            "it died or froze before finishing. Likely causes: the evaluation crashed its worker "
            "(a segfault in native code), the OOM killer, or the job step was taken down (a "
            "wall-time or memory limit); check the workers' logs and the evaluation's memory use, "
            "or raise max_attempts"
        ),
    }
