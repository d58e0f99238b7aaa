"""The summary after a one-trial frame's pickle: the trial's scalar fields and params, read without unpickling.

A frame holding one trial record (a worker's registration, reservation,
heartbeat, completion or failure, possibly after a fence) carries, after the
pickle and inside the checksummed payload::

    pickle | fence offset i64 | attempts u32 | status u8 | flags u8 | 5 x f64 | n u16
           | n param kinds | their numbers, 8 bytes each | u16 lengths | UTF-8 text | u16 | b"S"

The five floats are the objective and the four times, each present if its flag
bit is set (bit 0 is ``in_budget``). ``n`` params follow: one kind byte each
(``f`` float, ``i`` int, ``t``/``F`` true/false, ``n`` None, ``s`` string), an
8-byte value for each float and int, then the lengths in characters of the id,
experiment, worker, parent, origin and fence lock (``0xFFFF``: absent), of each
param's name and of each string value, and all those strings' UTF-8 bytes.
Last come the length of the summary and the mark ``S``. A pickle always ends
with its STOP opcode ``.``, so a payload ending with ``S`` has a summary and any
other has none; a reader that unpickles the payload stops at STOP and never sees
it. Readers of the shared file build a :class:`~orchard.storages.lazy.LazyTrial`
from the summary and unpickle the record only when something reads the trial's
results, error or reports (:mod:`orchard.storages.pickled.fileformat`).

A summary is written only when every field it holds has the type and range a
reader would accept in the record itself; one that does not parse, or whose
values are out of range, makes the reader decode the record as before.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from orchard.storages.pickled.records import TIME_LIMIT
from orchard.storages.table import Record
from orchard.storages.values import INT_LIMIT
from orchard.trial import TrialStatus

__all__ = ["MARK", "decode", "encode"]

MARK = ord("S")  # the last byte of a payload that carries a summary (a bare pickle ends with b".")
_FIXED = struct.Struct("<qIBB5dH")
_TAIL = struct.Struct("<HB")
_STATUSES = list(TrialStatus)
_STATUS_INDEX = {status.value: index for index, status in enumerate(_STATUSES)}
_FLOATS = ("objective", "heartbeat", "submit_time", "start_time", "end_time")
_STRINGS = ("id", "experiment", "worker", "parent", "origin")
_ABSENT = 0xFFFF
_KNOWN = frozenset({"status", "params", "results", "error", "reports", "verdict", "attempts", "in_budget",
                    *_FLOATS, *_STRINGS})
_CONSTANTS: dict[int, Any] = {ord("t"): True, ord("F"): False, ord("n"): None}
_STRING = ord("s")
_NUMBERS: dict[bytes, struct.Struct] = {}  # the layout of the numbers of each sequence of param kinds


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
            or type(params) is not dict or len(params) >= _ABSENT):
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
    if kinds is None:
        return b""
    texts: list[str | None] = [trial.get(name) for name in _STRINGS]
    texts += [fence.get("lock"), *params, *strings]
    encoded = _utf8(texts)
    if encoded is None or texts[0] is None or texts[1] is None:
        return b""
    lengths = [_ABSENT if text is None else len(text) for text in texts]
    body = b"".join((_FIXED.pack(at, attempts, status, flags, *floats, len(params)), kinds,
                     _numbers(kinds).pack(*numbers), struct.pack(f"<{len(lengths)}H", *lengths), encoded))
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


def _numbers(kinds: bytes) -> struct.Struct:
    """The layout of the numbers of params of ``kinds``; the first 256 layouts seen are kept (a space gives one
    or a few; a file of another program's making could give one per frame)."""
    layout = _NUMBERS.get(kinds)
    if layout is None:
        layout = struct.Struct("<" + "".join("d" if k == ord("f") else "q" for k in kinds if k in b"fi"))
        if len(_NUMBERS) < 256:
            _NUMBERS[kinds] = layout
    return layout


def _utf8(texts: list[str | None]) -> bytes | None:
    """The UTF-8 bytes of every string of ``texts`` (``None``: one a summary cannot hold)."""
    if any(text is not None and (type(text) is not str or len(text) >= _ABSENT) for text in texts):
        return None
    try:
        return "".join(text for text in texts if text is not None).encode()
    except UnicodeEncodeError:  # a lone surrogate: pickle keeps it, UTF-8 cannot
        return None


def decode(payload: memoryview) -> tuple[int, str | None, dict[str, Any]] | None:
    """``(fence offset or -1, fence lock, fields)`` of a payload ending with :data:`MARK`; ``None`` if it does
    not parse (the record is then decoded instead). Every worker reads every other worker's summaries."""
    size = len(payload)
    end = size - _TAIL.size
    if end < _FIXED.size:
        return None
    start = end - _TAIL.unpack_from(payload, end)[0]
    if start < 2:
        return None
    try:
        at, attempts, status, flags, objective, heartbeat, submit, begun, ended, count = _FIXED.unpack_from(
            payload, start)
        pos = start + _FIXED.size
        kinds = bytes(payload[pos:pos + count])
        numbers = _numbers(kinds)
        values = iter(numbers.unpack_from(payload, pos + count))
        pos += count + numbers.size
        strings = 6 + count + kinds.count(b"s")
        lengths = struct.unpack_from(f"<{strings}H", payload, pos)
        text = str(payload[pos + 2 * strings:end], "utf-8")
    except (struct.error, UnicodeDecodeError):
        return None
    texts: list[str | None] = []
    cut = 0
    for length in lengths:
        if length == _ABSENT:
            texts.append(None)
        else:
            texts.append(text[cut:cut + length])
            cut += length
    if cut != len(text) or status >= len(_STATUSES) or texts[0] is None or texts[1] is None or len(kinds) != count:
        return None
    names, words = texts[6:6 + count], iter(texts[6 + count:])
    if None in texts[6:]:
        return None
    params: dict[Any, Any] = {}  # (every name is a string: checked above)
    for name, kind in zip(names, kinds):
        params[name] = next(values) if kind in b"fi" else next(words) if kind == _STRING else _CONSTANTS.get(kind, ...)
    if ... in params.values() or len(params) != count:  # an unknown kind, or a name twice
        return None
    times = (heartbeat if flags & 4 else None, submit if flags & 8 else None, begun if flags & 16 else None,
             ended if flags & 32 else None)
    for value in times:
        if value is not None and not -TIME_LIMIT < value < TIME_LIMIT:  # NaN fails the comparison too
            return None
    return at, texts[5], {
        "id": texts[0], "experiment": texts[1], "params": params, "status": _STATUSES[status],
        "objective": objective if flags & 2 else None, "worker": texts[2], "heartbeat": times[0],
        "submit_time": times[1], "start_time": times[2], "end_time": times[3], "attempts": attempts,
        "parent": texts[3], "origin": texts[4], "in_budget": bool(flags & 1)}
