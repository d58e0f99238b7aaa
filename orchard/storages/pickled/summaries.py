"""The summary after a one-trial frame's pickle: the trial's scalar fields and params, read without unpickling.

A frame holding one trial record (a worker's registration, reservation,
heartbeat, completion or failure, possibly after a fence) carries, after the
pickle and inside the checksummed payload::

    pickle | fence offset i64 | attempts u32 | status u8 | flags u16 | 5 x f64 | n u16
           | n param kinds | their numbers, 8 bytes each | texts, UTF-8, NUL-separated | u16 | b"S"

The five floats are the objective and the four times, each present if its flag
bit is set (bit 0 is ``in_budget``, bits 1–5 the floats); bits 6–9 say which of
the worker, parent, origin and fence lock are present. ``n`` params follow: one
kind byte each (``f`` float, ``i`` int, ``t``/``F`` true/false, ``n`` None,
``s`` string) and an 8-byte value for each float and int. The texts are the id,
the experiment, those of the worker, parent, origin and fence lock that are
present, each param's name and each string value, joined by NUL (a text holding
NUL gets no summary). Last come the length of the summary and the mark ``S``. A
pickle always ends with its STOP opcode ``.``, so a payload ending with ``S``
has a summary and any other has none; a reader that unpickles the payload stops
at STOP and never sees it, and a summary is only read where a STOP precedes it.
Readers of the shared file build a :class:`~orchard.storages.lazy.LazyTrial`
from the summary and unpickle the record only when something reads the trial's
results, error or reports (:mod:`orchard.storages.pickled.fileformat`).

Every worker reads every other worker's summaries (512 workers: each reads about
500 per trial of its own), so :func:`decode` is one unpack of the fixed fields,
one of the numbers, one split of the texts, and a dict: about a third of
decoding the length-prefixed texts it replaced.

A summary is written only when every field it holds has the type and range a
reader would accept in the record itself; one that does not parse, or whose
values are out of range, makes the reader decode the record as before.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from orchard.storages.pickled.records import TIME_LIMIT
from orchard.storages.table import Record
from orchard.storages.values import INT_LIMIT
from orchard.trial import TrialStatus

__all__ = ["MARK", "decode", "encode"]

MARK = ord("S")  # the last byte of a payload that carries a summary (a bare pickle ends with b".")
_STOP = ord(".")  # the last byte of a pickle: what precedes every summary
_FIXED = struct.Struct("<qIBH5dH")
_TAIL = struct.Struct("<HB")
_LENGTH = struct.Struct("<H")
_STATUSES = list(TrialStatus)
_STATUS_INDEX = {status.value: index for index, status in enumerate(_STATUSES)}
_FLOATS = ("objective", "heartbeat", "submit_time", "start_time", "end_time")
_OPTIONAL = ("worker", "parent", "origin")  # then the fence lock: bits 6, 7, 8 and 9 of the flags
_SEPARATOR = "\x00"
_MOST = 0xFFFF  # params, and bytes of a summary
_KNOWN = frozenset({"status", "params", "results", "error", "reports", "verdict", "attempts", "in_budget",
                    "id", "experiment", *_FLOATS, *_OPTIONAL})
_CONSTANTS: dict[int, Any] = {ord("t"): True, ord("F"): False, ord("n"): None}
_STRING = ord("s")
_PRESENT = [bin(bits).count("1") for bits in range(16)]  # how many optional texts flags' bits 6-9 announce


class _Shape(NamedTuple):
    """How the params of one sequence of kinds are laid out."""

    numbers: struct.Struct  # the floats' and ints' layout
    strings: int  # how many string values
    numeric: bool  # every param a float or an int (their names zip with the numbers)
    ints: tuple[int, ...]  # where the ints are among the numbers (-2**63 fits the layout, not a stored int)


_SHAPES: dict[bytes, _Shape | None] = {}  # the first 256 sequences of kinds seen (``None``: an unknown kind)


def encode(records: list[Record]) -> bytes:
    """The summary of a frame of ``records`` (``[trial]`` or ``[fence, trial]``), or ``b""`` if it gets none."""
    fence: Mapping[str, Any] = {}
    if len(records) == 2 and records[0]["op"] == "fence":
        fence = records[0]
        records = records[1:]
    if len(records) != 1 or records[0]["op"] != "trial":
        return b""
    trial = records[0]["trial"]
    status = _STATUS_INDEX.get(trial.get("status"))
    attempts, in_budget, params = trial.get("attempts", 0), trial.get("in_budget", True), trial.get("params")
    at = fence.get("at", -1)
    if (status is None or not _KNOWN.issuperset(trial) or type(attempts) is not int or not 0 <= attempts < 2**32
            or type(in_budget) is not bool or type(at) is not int or not -1 <= at < 2**63
            or type(params) is not dict or len(params) >= _MOST):
        return b""
    flags, floats = int(in_budget), []
    for bit, name in enumerate(_FLOATS, 1):
        value = trial.get(name)
        if value is not None:
            if type(value) is not float or (name != "objective" and not -TIME_LIMIT < value < TIME_LIMIT):
                return b""
            flags |= 1 << bit
        floats.append(0.0 if value is None else value)
    kinds, numbers, strings = _params(params)
    texts = [trial.get("id"), trial.get("experiment")]
    for bit, text in enumerate((*(trial.get(name) for name in _OPTIONAL), fence.get("lock")), 6):
        if text is not None:
            texts.append(text)
            flags |= 1 << bit
    texts += [*params, *strings]
    encoded = _utf8(texts)
    shape = None if kinds is None else _shape(kinds)
    if kinds is None or shape is None or encoded is None:
        return b""
    body = b"".join((_FIXED.pack(at, attempts, status, flags, *floats, len(params)), kinds,
                     shape.numbers.pack(*numbers), encoded))
    if len(body) > _MOST:  # (two 40,000-character string params)
        return b""
    return body + _TAIL.pack(len(body), MARK)


def _params(params: dict[Any, Any]) -> tuple[bytes | None, list[float | int], list[str]]:
    """Each param's kind, the numbers and the string values (``None`` kinds: a param no summary holds)."""
    kinds, numbers, strings = bytearray(), list[float | int](), list[str]()
    for name, value in params.items():
        kind = type(value)
        if type(name) is not str:
            return None, [], []
        if kind is float or (kind is int and -INT_LIMIT < value < INT_LIMIT):
            kinds.append(ord("f" if kind is float else "i"))
            numbers.append(value)
        elif kind is bool or value is None:
            kinds.append(ord("n" if value is None else "t" if value else "F"))
        elif kind is str:
            kinds.append(ord("s"))
            strings.append(value)
        else:
            return None, [], []
    return bytes(kinds), numbers, strings


def _shape(kinds: bytes) -> _Shape | None:
    """The layout of params of ``kinds`` (``None`` if one is unknown); the first 256 are kept (a space gives
    one or a few; a file of another program's making could give one per frame)."""
    try:
        return _SHAPES[kinds]
    except KeyError:
        pass
    shape = None
    if all(kind in b"fitFns" for kind in kinds):
        numbers = bytes(kind for kind in kinds if kind in b"fi")
        shape = _Shape(struct.Struct("<" + numbers.replace(b"f", b"d").replace(b"i", b"q").decode()),
                       kinds.count(b"s"), len(numbers) == len(kinds),
                       tuple(at for at, kind in enumerate(numbers) if kind == ord("i")))
    if len(_SHAPES) < 256:
        _SHAPES[kinds] = shape
    return shape


def _utf8(texts: list[Any]) -> bytes | None:
    """The UTF-8 bytes of ``texts`` joined by NUL (``None``: one a summary cannot hold)."""
    if any(type(text) is not str or _SEPARATOR in text for text in texts):
        return None
    try:
        return _SEPARATOR.join(texts).encode()
    except UnicodeEncodeError:  # a lone surrogate: pickle keeps it, UTF-8 cannot
        return None


def decode(payload: memoryview) -> tuple[int, str | None, dict[str, Any]] | None:
    """``(fence offset or -1, fence lock, fields)`` of a payload ending with :data:`MARK`; ``None`` if it does
    not parse (the record is then decoded instead). ``fields`` is a new dict, the caller's to keep."""
    end = len(payload) - _TAIL.size
    if end < _FIXED.size:
        return None
    start = end - _LENGTH.unpack_from(payload, end)[0]
    if start < 2 or payload[start - 1] != _STOP:
        return None
    try:
        at, attempts, status, flags, objective, heartbeat, submit, begun, ended, count = _FIXED.unpack_from(
            payload, start)
        pos = start + _FIXED.size + count
        if pos > end:
            return None
        shape = _shape(bytes(payload[pos - count:pos]))
        if shape is None or status >= len(_STATUSES) or pos + shape.numbers.size > end:
            return None
        numbers = shape.numbers.unpack_from(payload, pos)
        if shape.ints and -INT_LIMIT in numbers and any(numbers[at] == -INT_LIMIT for at in shape.ints):
            return None  # (a float param may be -2.0**63)
        texts = str(payload[pos + shape.numbers.size:end], "utf-8").split(_SEPARATOR)
    except (struct.error, UnicodeDecodeError):
        return None
    i = 2 + _PRESENT[flags >> 6 & 15]  # where the names start
    if len(texts) != i + count + shape.strings or flags >> 10:
        return None
    worker = parent = origin = lock = None
    if flags & 64:
        worker = texts[2]
    if flags & 0x380:  # the rare ones
        at_text = 2 + (flags >> 6 & 1)
        if flags & 128:
            parent, at_text = texts[at_text], at_text + 1
        if flags & 256:
            origin, at_text = texts[at_text], at_text + 1
        if flags & 512:
            lock = texts[at_text]
    if shape.numeric:
        params = dict(zip(texts[i:i + count], numbers))
    else:
        params = _mixed(texts[i:i + count], bytes(payload[pos - count:pos]), numbers, texts[i + count:])
    if len(params) != count:  # a name twice
        return None
    if not (-TIME_LIMIT < heartbeat < TIME_LIMIT and -TIME_LIMIT < submit < TIME_LIMIT
            and -TIME_LIMIT < begun < TIME_LIMIT and -TIME_LIMIT < ended < TIME_LIMIT):  # NaN fails too
        return None
    return at, lock, {
        "id": texts[0], "experiment": texts[1], "params": params, "status": _STATUSES[status],
        "objective": objective if flags & 2 else None, "worker": worker,
        "heartbeat": heartbeat if flags & 4 else None, "submit_time": submit if flags & 8 else None,
        "start_time": begun if flags & 16 else None, "end_time": ended if flags & 32 else None,
        "attempts": attempts, "parent": parent, "origin": origin, "in_budget": bool(flags & 1)}


def _mixed(names: list[str], kinds: bytes, numbers: tuple[Any, ...], words: list[str]) -> dict[str, Any]:
    """The params of names of ``kinds``: numbers, strings and constants in order."""
    values, strings = iter(numbers), iter(words)
    return {name: next(values) if kind in b"fi" else next(strings) if kind == _STRING else _CONSTANTS[kind]
            for name, kind in zip(names, kinds)}
