"""Trials known by their scalar fields and params, whose results and reports are decoded when first read.

With hundreds of workers on one pickle file every worker replays every other
worker's trials, and most of what it decodes it never reads: a random-search
worker needs another trial's id, params (to know what is taken), status,
budget flag, holder, heartbeat and attempts, not its results. A backend that can read a trial's scalar fields
cheaply (:mod:`orchard.storages.pickled.summaries`) stores a :class:`LazyTrial`:
those fields are set, and the first read of any other field (:data:`DECODED`)
decodes them all through the backend's :class:`Decoder`.

A :class:`LazyTrial` is a :class:`~orchard.trial.Trial` to every reader: every
field reads the same, it compares equal to the plain trial it stands for, and it
pickles, copies and prints as that plain trial.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from orchard.errors import StorageError
from orchard.trial import Trial, TrialStatus

__all__ = ["DECODED", "Decoder", "LazyTrial", "plain", "set_aside"]
log = logging.getLogger(__name__)

#: The fields a :class:`LazyTrial` decodes on first use; every other field is set when it is made.
DECODED = ("results", "error", "reports", "verdict")
_FIELDS = tuple(field.name for field in dataclasses.fields(Trial))


class Decoder(abc.ABC):
    """Where a lazy trial's other fields come from.

    Guarantees: :meth:`decode` returns fresh objects on every call (a caller may change
    them), the values :meth:`~orchard.trial.Trial.from_record` would give, or raises
    a :class:`~orchard.errors.StorageError` naming the storage and the trial.
    """

    __slots__ = ()

    @abc.abstractmethod
    def decode(self, trial: LazyTrial) -> Mapping[str, Any]:
        """The :data:`DECODED` fields of ``trial`` (whose scalar fields are set)."""


class _Decoded:
    """A field of a :class:`LazyTrial` that is decoded on first read (then the instance's own value wins)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, trial: LazyTrial | None, owner: type | None = None) -> Any:
        if trial is None:
            return self
        trial.decode()
        return trial.__dict__[self._name]


class LazyTrial(Trial):
    """A stored trial whose :data:`DECODED` fields are read from its :class:`Decoder` when first used.

    Every other field is an instance attribute from the start. Once decoded, the fields are
    the instance's own and the decoder is dropped; a field set before (a table appending a
    report to a trial it built) is kept.
    """

    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: trials are not hashable

    @classmethod
    def of(cls, scalars: dict[str, Any], decoder: Decoder) -> LazyTrial:
        """A lazy trial with the fields ``scalars`` (every field but :data:`DECODED`); it takes the dict over
        as its own (every worker builds one per record of every other worker: no copy)."""
        trial = object.__new__(cls)
        scalars["_decoder"] = decoder
        trial.__dict__ = scalars
        return trial

    @property
    def undecoded(self) -> bool:
        """Whether no :data:`DECODED` field has been read or set yet (:meth:`lazy_copy` may then be used)."""
        fields = self.__dict__
        return "_decoder" in fields and fields.keys().isdisjoint(DECODED)

    def decode(self) -> None:
        """Decode the fields not read yet (nothing if they all were)."""
        fields = self.__dict__
        decoder = fields.get("_decoder")
        if decoder is None:
            return
        for name, value in decoder.decode(self).items():
            fields.setdefault(name, value)
        fields.pop("_decoder", None)  # (two threads decoding one trial both set the same values)

    def lazy_copy(self) -> LazyTrial:
        """A copy of an :attr:`undecoded` trial, sharing nothing mutable: the copy decodes its own fields."""
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        copied.params = dict(self.params)  # flat: its values are immutable
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trial):
            return NotImplemented
        return plain(self) == plain(other)  # the dataclass's own comparison of two plain trials

    def __repr__(self) -> str:
        return repr(plain(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return Trial.from_dict, (self.to_dict(),)


for _name in DECODED:
    setattr(LazyTrial, _name, _Decoded(_name))


def plain(trial: Trial) -> Trial:
    """``trial`` as a plain :class:`~orchard.trial.Trial` (itself if it is one), sharing its field values."""
    if type(trial) is Trial:
        return trial
    copied = object.__new__(Trial)
    copied.__dict__.update({name: getattr(trial, name) for name in _FIELDS})
    return copied


def set_aside(trial: Trial, now: float) -> Trial | None:
    """The broken trial to store instead of ``trial`` if its record is found damaged when decoded, else None.

    A frame whose summary reads but whose record does not (a value nested in its results that no
    reader accepts, written by another program) would otherwise keep its trial in the table, holding
    a unit of the budget, while every reservation or take-back of it fails: no worker could finish the
    experiment. Broken (reason ``damaged``), it holds none, as a frame skipped whole holds none.
    """
    if not isinstance(trial, LazyTrial):
        return None
    try:
        trial.decode()
    except StorageError as err:
        log.warning("%s; trial %s is set aside as broken, so that it holds no unit of the budget", err,
                    trial.id)
        error = {"type": type(err).__name__, "reason": "damaged", "message": str(err)}
        return Trial(id=trial.id, experiment=trial.experiment, params=dict(trial.params),
                     status=TrialStatus.BROKEN, submit_time=trial.submit_time, start_time=trial.start_time,
                     end_time=now, error=error, attempts=trial.attempts, parent=trial.parent,
                     origin=trial.origin, in_budget=trial.in_budget)
    return None
