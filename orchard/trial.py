"""The trial record, its statuses and the transitions between them.

This module imports nothing else from Orchard so that every layer (storages,
algorithms, the worker) can depend on it.

Lifecycle (SPEC §4)::

    new ──reserve──> reserved ──complete──> completed
     ^                  │ ──fail─────────> broken
     │                  │
     └──────────────────┴ ──lost/release─> interrupted ──reserve──> reserved …
                        └──lost for the max_attempts-th time──> broken (reason "lost")
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple

__all__ = ["ALLOWED_TRANSITIONS", "Lease", "Trial", "TrialStatus", "can_transition"]


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


ALLOWED_TRANSITIONS: dict[TrialStatus, frozenset[TrialStatus]] = {
    TrialStatus.NEW: frozenset({TrialStatus.RESERVED}),
    TrialStatus.RESERVED: frozenset(
        {TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.INTERRUPTED}
    ),
    TrialStatus.INTERRUPTED: frozenset({TrialStatus.RESERVED}),
    TrialStatus.COMPLETED: frozenset(),
    TrialStatus.BROKEN: frozenset(),
}


def can_transition(old: TrialStatus, new: TrialStatus) -> bool:
    """Return whether the lifecycle allows moving a trial from ``old`` to ``new``."""
    return new in ALLOWED_TRANSITIONS[old]


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
