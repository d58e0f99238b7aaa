"""The trial record, its statuses and the transitions between them.

This module imports nothing else from Orchard but :mod:`orchard.errors` so that
every layer (storages, algorithms, the worker) can depend on it.

Lifecycle (SPEC §4), one function per arrow below the drawing::

    new ──reserve──> reserved ──complete──> completed
     ^                  │ ──fail─────────> broken
     │                  │ ──prune────────> pruned (objective: the last reported value)
     │                  │ ──report(step, value)──> reserved (one more report; renews the lease)
     │                  │
     └──────────────────┴ ──lost/release─> interrupted ──reserve──> reserved …
                        └──lost for the max_attempts-th time──> broken (reason "lost")

Reports survive a lost or released reservation (the trial keeps them while
interrupted); the next reservation starts them over, since its evaluation runs
from the start again.

Each arrow is a pure function (:func:`reserve`, :func:`complete`, :func:`fail`, :func:`release`,
:func:`take_back`, :func:`prune`, plus :func:`heartbeat` and :func:`report`, which stay on
``reserved``) returning a :class:`Change`: the state the trial must be in before (status, owner,
exact values) and the fields it gets. Every backend applies the same :class:`Change`: the table
storage checks it against the stored trial (:meth:`Change.applied_to`); MongoDB turns it into one
conditional update and, when that matches nothing, asks the same change why (:meth:`Change.refusal`).
The messages are built in :mod:`orchard.errors`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from orchard.errors import (InvalidReportError, OrchardError, ReservationLostError, StorageError,
                            TrialNotFoundError)

__all__ = [
    "INSERTED", "INT_LIMIT", "MAX_DEPTH", "MAX_REPORTS_PER_TRIAL", "Change", "Lease", "ReportValue", "Trial",
    "TrialStatus", "complete", "fail", "finite_float", "finite_number", "first_value", "heartbeat",
    "held_by", "prune", "recorded", "release", "report", "report_value", "reserve", "take_back",
]

#: :attr:`Trial.origin` of an evaluation made elsewhere and recorded with its result (``insert``).
INSERTED = "inserted"

#: How many values one trial may report (one per step); a report beyond is refused.
MAX_REPORTS_PER_TRIAL = 10_000
#: Every stored int is a 64-bit one (what MongoDB stores too): ``-INT_LIMIT < n < INT_LIMIT``.
INT_LIMIT = 2**63
#: How deep lists and dicts may nest in a stored configuration or result.
MAX_DEPTH = 32

#: A reported value: one number, or (several objectives) one per objective, in minimisation form.
ReportValue = float | tuple[float, ...]


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float; ``None`` for a bool, a non-number, NaN, infinity, or an int beyond a float.

    ``math.isfinite`` and ``float`` raise ``OverflowError`` on an int beyond a float's range
    (``10**400``); a check of a user's value must not.
    """
    if type(value) is float:  # (most calls: every other worker's objective a history folds in)
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finite_number(value: Any) -> float | None:
    """:func:`finite_float` of a plain ``int`` or ``float`` (a user's metric or setting), else ``None``."""
    return finite_float(value) if isinstance(value, (int, float)) else None


def report_value(value: Any) -> ReportValue | None:
    """``value`` as a report stores it: a finite float, or a non-empty tuple of finite floats; else ``None``."""
    if isinstance(value, (list, tuple)):
        items = [report_value(item) for item in value]
        floats = [item for item in items if isinstance(item, float)]
        return tuple(floats) if floats and len(floats) == len(value) else None
    return finite_float(value)


def first_value(value: ReportValue) -> float:
    """The scalar of a report: the value itself, or its first objective (the trial's ``objective``)."""
    return value[0] if isinstance(value, tuple) else value


class TrialStatus(str, enum.Enum):
    """Where a trial is in its lifecycle. Values are the strings stored on disk."""

    NEW = "new"
    RESERVED = "reserved"
    COMPLETED = "completed"
    BROKEN = "broken"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"

    @property
    def is_terminal(self) -> bool:
        """Whether no transition leaves this status (completed, broken or pruned)."""
        return self in (TrialStatus.COMPLETED, TrialStatus.BROKEN, TrialStatus.PRUNED)

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
    comparing the value with a clock (see :mod:`orchard.leases`). Orchard's workers
    always write both; a reservation another program wrote may hold neither
    (``None``): it is judged the same way, and taken back without counting an
    attempt (:func:`take_back`).
    """

    worker: str | None
    heartbeat: float | None


@dataclasses.dataclass
class Trial:
    """One evaluation of the objective at one point of the search space.

    Times are POSIX timestamps (seconds). ``params`` hold plain Python values
    only (``int``, ``float``, ``str``, ``bool``). ``error`` is ``None`` unless
    the trial is broken, then ``{"type": ..., "message": ...}`` plus optional
    details such as ``"reason"`` (e.g. ``"timeout"``) or ``"stderr"``.
    ``reports`` are the ``(step, value)`` pairs reported during the evaluation,
    steps strictly increasing (with several objectives a value is a tuple, one
    per objective in minimisation form, see :data:`ReportValue`); ``verdict`` says why a pruned trial was pruned
    (the pruner's own mapping), else ``None``.
    ``origin`` is ``"inserted"`` for an evaluation made elsewhere and recorded
    with its result (:func:`recorded`), else ``None``; ``in_budget`` is false for
    such a trial recorded apart from the budget (it then never holds a unit of
    ``max_trials``). Records of older releases lack both and read as the defaults.
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
    reports: list[tuple[int, ReportValue]] = dataclasses.field(default_factory=list)
    verdict: dict[str, Any] | None = None
    origin: str | None = None
    in_budget: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return a plain ``dict`` of builtins (status as its string value)."""
        # Hand-written rather than dataclasses.asdict: this is on every storage write's path.
        return {
            "id": self.id, "experiment": self.experiment, "params": dict(self.params),
            "status": self.status.value, "objective": self.objective, "results": dict(self.results),
            "worker": self.worker, "heartbeat": self.heartbeat, "submit_time": self.submit_time,
            "start_time": self.start_time, "end_time": self.end_time,
            "error": dict(self.error) if self.error is not None else None, "attempts": self.attempts,
            "parent": self.parent, "reports": [[step, list(value) if isinstance(value, tuple) else value] for step, value in self.reports],
            "verdict": dict(self.verdict) if self.verdict is not None else None,
            "origin": self.origin, "in_budget": self.in_budget,
        }

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields at their default, as a storage record keeps it.

        ``id``, ``experiment``, ``params``, ``status`` and ``results`` are always kept;
        :meth:`from_dict` restores the rest, in this release and the earlier ones, and
        every process replaying a shared file decodes fewer values per record.
        """
        fields = self.to_dict()
        for name, default in _OMITTED_AT.items():
            value = fields[name]
            if type(value) is type(default) and value == default:
                del fields[name]
        return fields

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """Build a trial from :meth:`to_dict` output (its dicts copied); unknown keys are ignored."""
        known = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        if "id" not in known or "experiment" not in known:
            return cls(params={}, **{k: v for k, v in known.items() if k != "params"})  # its error
        return cls.from_record({**known, "params": dict(known.get("params") or {}),
                                "results": dict(known.get("results") or {})})

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Trial:
        """Build a trial from a stored record (:meth:`to_record`) whose dicts it takes over, not copies.

        Every process replays every trial record of a shared file through here (the trial
        table hands over records nobody else changes): the fields are set straight into the
        instance dict, not through ``__init__``, which costs three times more.
        """
        if "id" not in data or "experiment" not in data or not _FIELD_NAMES.issuperset(data):
            return cls.from_dict(data)
        trial = object.__new__(cls)
        fields = trial.__dict__
        fields.update(_DEFAULTS)
        fields.update(data)
        fields["status"] = _STATUSES.get(fields["status"]) or TrialStatus(fields["status"])
        fields["params"] = fields["params"] or {}
        fields["results"] = fields["results"] or {}
        reports = fields["reports"]
        fields["reports"] = [(int(step), tuple(map(float, value)) if isinstance(value, (list, tuple)) else float(value))
                             for step, value in reports] if reports else []
        return trial

    @property
    def holds_budget(self) -> bool:
        """Whether the trial holds a unit of ``max_trials`` (every one but broken and unbudgeted ones)."""
        return self.in_budget and self.status is not TrialStatus.BROKEN

    @property
    def lease(self) -> Lease | None:
        """The reservation's owner and heartbeat (as stored, even ``None``), or ``None`` unless the trial is reserved."""
        return Lease(self.worker, self.heartbeat) if self.status is TrialStatus.RESERVED else None

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, when both are known."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Trial))
_STATUSES: dict[Any, TrialStatus] = {status.value: status for status in TrialStatus}
_DEFAULTS: dict[str, Any] = {  # of every field but id and experiment (from_dict gives fresh params, results, reports)
    field.name: field.default for field in dataclasses.fields(Trial) if field.default is not dataclasses.MISSING}
_DEFAULTS.update(params=None, results=None, reports=None)
#: The fields :meth:`Trial.to_record` leaves out at these values (as :meth:`Trial.to_dict` writes them).
_OMITTED_AT: dict[str, Any] = {
    **{name: value for name, value in _DEFAULTS.items() if name not in ("status", "params", "results")}, "reports": []}


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
        appends: list fields that get one more item (``reports``).
        lengths: list fields that must hold exactly this many items.
    """

    before: frozenset[TrialStatus]
    owner: str | None = None
    expects: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    adds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    appends: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def holds(self, trial: Trial) -> bool:
        """Whether ``trial`` is in the state this change requires."""
        return (
            self._admits(trial.status, trial.worker)
            and all(getattr(trial, name) == value for name, value in self.expects.items())
            and all(len(getattr(trial, name)) == count for name, count in self.lengths.items())
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

    def seen_refusal(
        self, trial_id: str, seen: Mapping[str, Any] | None, where: str = "the storage"
    ) -> OrchardError | None:
        """:meth:`refusal` from a trial's stored ``status`` and ``worker`` alone (``seen``; ``None``: no trial).

        Checks the status and owner only, all :func:`held_by` asks: for a backend that reads
        no more before its conditional write.
        """
        if seen is None:
            return TrialNotFoundError.missing(trial_id, where)
        status, holder = seen.get("status"), seen.get("worker")
        if self._admits(_STATUSES.get(status) if isinstance(status, str) else None, holder):
            return None
        return ReservationLostError.refused(trial_id, str(status), holder, self.owner)

    def _admits(self, status: TrialStatus | None, worker: Any) -> bool:
        """The status and owner this change requires (the rule :meth:`refusal` and :meth:`seen_refusal` share)."""
        return status in self.before and (self.owner is None or worker == self.owner)

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
        added.update({name: [*getattr(trial, name), item] for name, item in self.appends.items()})
        return dataclasses.replace(trial, **self.sets, **added)


def reserve(worker: str, now: float) -> Change:
    """new/interrupted -> reserved by ``worker``: one more attempt, a fresh heartbeat and start."""
    return Change(
        _WAITING,
        sets={"status": TrialStatus.RESERVED, "worker": worker, "heartbeat": now, "start_time": now,
              "end_time": None, "reports": []},
        adds={"attempts": 1},
    )


def held_by(worker: str) -> Change:
    """No arrow: the check alone that ``worker`` holds the reservation (made before reading further)."""
    return Change(_RESERVED, worker)


def heartbeat(worker: str, now: float) -> Change:
    """reserved -> reserved: the owner's lease renewed."""
    return Change(_RESERVED, worker, sets={"heartbeat": now})


def complete(worker: str, objective: float, results: Mapping[str, Any], now: float) -> Change:
    """reserved -> completed, by its owner, with the objective and extra results."""
    return Change(_RESERVED, worker, sets={
        "status": TrialStatus.COMPLETED, "objective": _stored(objective), "results": dict(results),
        "end_time": now, "heartbeat": now,
    })


def _stored(objective: Any) -> float:
    """``objective`` as the float a trial stores (:meth:`StorageError.unstorable` if it is none)."""
    try:
        return float(objective)
    except (OverflowError, TypeError, ValueError):
        raise StorageError.unstorable(objective) from None


def fail(worker: str, error: Mapping[str, Any], now: float) -> Change:
    """reserved -> broken, by its owner, with the error (it no longer holds budget)."""
    return Change(_RESERVED, worker, sets={
        "status": TrialStatus.BROKEN, "error": dict(error), "end_time": now, "heartbeat": now,
    })


def report(
    trial_id: str, worker: str, step: Any, value: Any, now: float, reported: int, last_step: int | None
) -> Change:
    """reserved -> reserved, by its owner: one more ``(step, value)`` report; it renews the lease too.

    Args:
        trial_id: the trial (for messages).
        worker: the worker that must hold the reservation.
        step: an ``int`` greater than ``last_step``, ``0 <= step < INT_LIMIT`` (what every backend stores).
        value: a finite number (the objective at that step, to minimize), or a sequence of
            them (several objectives, in minimisation form).
        now: the storage's clock.
        reported: how many reports the trial holds (the change is conditional on it).
        last_step: the step of its last report, ``None`` if none.

    Raises:
        InvalidReportError: ``step`` or ``value`` is not one that can be stored; nothing is written.
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= int(step) < INT_LIMIT:
        raise InvalidReportError.bad_step(trial_id, step)
    stored = report_value(value)
    if stored is None:
        raise InvalidReportError.bad_value(trial_id, value)
    if last_step is not None and step <= last_step:
        raise InvalidReportError.not_after(trial_id, int(step), last_step)
    if reported >= MAX_REPORTS_PER_TRIAL:
        raise InvalidReportError.too_many(trial_id, MAX_REPORTS_PER_TRIAL)
    return Change(
        _RESERVED, worker, sets={"heartbeat": now}, appends={"reports": (int(step), stored)},
        lengths={"reports": reported},
    )


def prune(trial: Trial, worker: str, verdict: Mapping[str, Any], now: float) -> Change:
    """reserved -> pruned, by its owner: the objective is its last reported value (its first objective); the verdict says why.

    A pruned trial keeps its unit of budget, like a completed one. Conditional
    on the reports ``trial`` holds (the objective is taken from them).

    Raises:
        InvalidReportError: ``trial`` reported nothing, so it has no value to be pruned with.
    """
    if not trial.reports:
        raise InvalidReportError.nothing_reported(trial.id)
    return Change(_RESERVED, worker, lengths={"reports": len(trial.reports)}, sets={
        "status": TrialStatus.PRUNED, "objective": first_value(trial.reports[-1][1]), "verdict": dict(verdict),
        "end_time": now, "heartbeat": now,
    })


def recorded(
    trial_id: str, experiment: str, params: dict[str, Any], objective: float, results: Mapping[str, Any],
    now: float, in_budget: bool,
) -> Trial:
    """No arrow: a trial born ``completed``, an evaluation made elsewhere and recorded with its result.

    Its ``origin`` is :data:`INSERTED`; ``in_budget=False`` keeps it apart from ``max_trials``.
    """
    return Trial(
        id=trial_id, experiment=experiment, params=dict(params), status=TrialStatus.COMPLETED,
        objective=_stored(objective), results=dict(results), submit_time=now, end_time=now,
        origin=INSERTED, in_budget=in_budget,
    )


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
    A lease never heartbeaten (``heartbeat`` ``None``: no Orchard worker wrote it, as
    every reservation of theirs holds one) lost no evaluation of ours: it is given
    back as :func:`release` does, its attempt not counted, never broken.
    """
    held = {"worker": lease.worker, "heartbeat": lease.heartbeat, "attempts": trial.attempts}
    if lease.heartbeat is None:
        return Change(_RESERVED, lease.worker, held, sets={
            "status": TrialStatus.INTERRUPTED, "worker": None, "attempts": max(trial.attempts - 1, 0)})
    if trial.attempts >= max_attempts:
        return Change(_RESERVED, lease.worker, held, sets={
            "status": TrialStatus.BROKEN, "error": lost_error(trial.attempts), "end_time": now,
        })
    return Change(_RESERVED, lease.worker, held, sets={"status": TrialStatus.INTERRUPTED, "worker": None})


def lost_error(attempts: int) -> dict[str, Any]:
    """``{"type": "TrialLost", "reason": "lost", "message": ...}``: the ``error`` of a trial whose
    reservation was lost ``attempts`` times, the last allowed."""
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
