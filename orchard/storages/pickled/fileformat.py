"""The on-disk format of the pickle storage: a header, then checksummed frames of records.

Layout::

    header  magic (16 bytes) | format version u16 | generation (16 random bytes)
            | base u64 (end of the last snapshot) | crc32 of the above u32
    frame   payload length u32 | crc32(payload) u32 | crc32(the first 8 bytes) u32 | payload
    frame   ...

A payload is a pickled list of :class:`~orchard.storages.table.TrialTable`
records (protocol 5, plain values only), written by one ``write()``; a frame
of one trial record has the trial's scalar fields after the pickle
(:mod:`~orchard.storages.pickled.summaries`), so a worker replaying another
worker's trial does not unpickle it until it reads its params or results
(``scan(lazy=True)``). A frame
cut short at the end of the file is a *torn tail* (a writer killed mid-write):
:func:`scan` stops before it. A bad frame followed by a valid one is *damage*:
:func:`scan` skips it, resynchronising at the next valid frame (a payload
starts with the bytes of pickle protocol 5 and both checksums must match), and
reports the damaged byte range, so a damaged byte costs the records of one
frame. A frame holding anything but Orchard records (see
:mod:`orchard.storages.pickled.records`) is damage too. Loading refuses every
global, so a tampered file cannot run code, and walks a bounded number of
values, so a small frame cannot expand into an unbounded one.

Frames appended under a soft lock start with a *fence* record naming the byte
offset the writer appended it for. A frame found anywhere else was written by
a process that had lost the lock while another wrote (the two interleaved):
it is damage, and its writer, which checks where its frame landed, reports
the write as failed.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from orchard.errors import StorageCorruptedError
from orchard.storages.lazy import DECODED, Decoder, LazyTrial
from orchard.storages.pickled import summaries
from orchard.storages.pickled.records import RecordError, check_batch
from orchard.storages.table import Record
from orchard.trial import Trial

__all__ = [
    "HEADER_SIZE",
    "Damage",
    "Header",
    "Scan",
    "damaged_header_message",
    "decode_header",
    "encode_frame",
    "encode_header",
    "fsync_dir",
    "header_is_damaged",
    "is_log_file",
    "pread",
    "pwrite_all",
    "scan",
    "scan_file",
    "write_all",
]

MAGIC = b"\x89ORCHARD-LOG\r\n\x1a\n"  # binary, recognisable, and broken by text-mode copies
#: The format version this release writes. Version 1 is the format of the releases before reports and
#: pruning (report records, the ``pruned`` status, warm-started and unbudgeted trials): they skip its
#: records as damage, and their compactions, repairs and rewrites of a trial drop them, so this release
#: writes version 2, which they refuse to open (every release reads the header whenever the file grew).
#: A file of version 1 is upgraded by the first write of this release (:meth:`LogFile.commit`).
VERSION = 2
READS = frozenset({1, VERSION})  # the versions this release reads
_HEADER = struct.Struct(f"<{len(MAGIC)}sH16sQ")  # magic, version, generation, base
_U32 = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _U32.size
FRAME = struct.Struct("<III")  # payload length, crc32(payload), crc32(first 8 bytes)
_PROTO = b"\x80\x05"  # every payload is a protocol-5 pickle, which starts with these two bytes


class Header(NamedTuple):
    """What the header of a log file says."""

    generation: bytes  # changes whenever the file is rewritten (created or compacted)
    base: int  # file offset where the snapshot ends and appended frames begin
    version: int = VERSION  # the format version (:data:`READS`)


def encode_header(generation: bytes, base: int) -> bytes:
    """Return the header bytes of a file of ``generation`` whose snapshot ends at ``base``."""
    head = _HEADER.pack(MAGIC, VERSION, generation, base)
    return head + _U32.pack(zlib.crc32(head))


def header_is_damaged(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes) starts like Orchard's header but fails its checksum.

    Only the header is then lost: the frames after it can be read (``orchard db repair``).
    """
    return data.startswith(MAGIC) and (
        len(data) < HEADER_SIZE or zlib.crc32(data[: _HEADER.size]) != _U32.unpack_from(data, _HEADER.size)[0])


def damaged_header_message(path: str) -> str:
    """What to do about a damaged header (:func:`header_is_damaged`)."""
    return (f"the header of storage file {path} is damaged (the records after it are not): run `orchard db repair "
            f"--storage {path}`, which rewrites the file from them, keeping a backup; running workers keep their "
            "results in memory and wait for it (ORCHARD_STORAGE_PATIENCE)")


def decode_header(data: bytes, path: str) -> Header:
    """Parse the first :data:`HEADER_SIZE` bytes of ``path``.

    Raises:
        StorageCorruptedError: the file is not Orchard's, or its header is damaged
            or of another format version.
    """
    if not data.startswith(MAGIC):
        raise StorageCorruptedError(
            f"{path} exists but is not an Orchard storage file (it does not start with Orchard's "
            "header); Orchard will not read or modify it. Pass a different --storage path, or move "
            "the file away"
        )
    if header_is_damaged(data):
        raise StorageCorruptedError(damaged_header_message(path))
    _, version, generation, base = _HEADER.unpack_from(data)
    if version > VERSION:
        raise StorageCorruptedError(
            f"storage file {path} was written by a newer Orchard release (format version {version}; this "
            f"release reads versions 1 to {VERSION}): upgrade Orchard here to the release of the other "
            "workers; this release does not read or modify the file"
        )
    if version not in READS:
        raise StorageCorruptedError(
            f"storage file {path} uses format version {version} but this Orchard reads versions 1 to "
            f"{VERSION}; use the Orchard release that wrote it, or another --storage path"
        )
    return Header(generation, base, version)


def is_log_file(path: str) -> bool:
    """Whether ``path`` is a file that starts like an Orchard storage file (``False`` if it cannot be read)."""
    if not os.path.isfile(path):  # never open a FIFO or a device to look: that can block
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class _RecordPickler(pickle.Pickler):
    """Pickles plain values only: anything that would need a global to load is refused."""

    def reducer_override(self, obj: Any) -> Any:
        # Exact builtins never reach this hook; everything else (numpy scalars, paths,
        # enums, classes, functions) would be written as a global reference.
        raise TypeError(f"a value of type {type(obj).__module__}.{type(obj).__qualname__}")


def encode_frame(records: list[Record]) -> bytes:
    """Return one frame holding ``records``.

    Raises:
        TypeError: a record holds something other than plain values.
    """
    buffer = io.BytesIO()
    _RecordPickler(buffer, protocol=5).dump(records)
    buffer.write(summaries.encode(records))
    payload = buffer.getvalue()
    head = _U32.pack(len(payload)) + _U32.pack(zlib.crc32(payload))
    return head + _U32.pack(zlib.crc32(head)) + payload


class _RecordUnpickler(pickle.Unpickler):
    """Loads plain values only: a global in a record means the file was tampered with."""

    def find_class(self, module: str, name: str) -> Any:
        raise RecordError(f"it refers to {module}.{name} (tampered with? nothing was executed)")


def _load_batch(payload: memoryview, at: int) -> list[Record]:
    """The records of the frame at file offset ``at``, checked (see :mod:`~orchard.storages.pickled.records`).

    Raises:
        RecordError: the payload is not a batch of Orchard records.
    """
    try:
        batch = _RecordUnpickler(io.BytesIO(payload)).load()
    except RecordError:
        raise
    except Exception as err:  # any failure to decode a frame whose checksum is right
        raise RecordError(f"it cannot be decoded ({type(err).__name__})") from err
    check_batch(batch, len(payload))
    if batch and batch[0]["op"] == "fence":
        if batch[0]["at"] != at:
            raise _fenced_out(batch[0]["at"], batch[0]["lock"])
        batch = batch[1:]
    return batch  # type: ignore[no-any-return]


def _fenced_out(fence: int, lock: str | None) -> RecordError:
    """The damage of a frame appended for byte ``fence`` elsewhere: its writer had lost soft lock ``lock``."""
    return RecordError(f"it was written for byte {fence} by a holder of lock {lock} that had lost the lock "
                       "(fenced out)")


class _Frame(Decoder):
    """A summarised frame's payload: unpickled, checked and compared with its summary when first read."""

    __slots__ = ("_at", "_path", "_payload")

    def __init__(self, payload: bytes, at: int, path: str) -> None:
        self._payload, self._at, self._path = payload, at, path

    def decode(self, trial: LazyTrial) -> dict[str, Any]:
        """See :meth:`Decoder.decode`."""
        try:
            payload = memoryview(self._payload)
            summary = summaries.decode(payload)  # as read, not the trial's fields now: a copy's are its own
            stored = _described({} if summary is None else summary[2], _load_batch(payload, self._at))
        except RecordError as err:
            raise StorageCorruptedError(
                f"storage file {self._path}: the record of trial {trial.id} at byte {self._at} is damaged ({err}); "
                f"`orchard db check --storage {self._path}` lists the damage and `orchard db repair` rewrites a "
                "file without it") from err
        return {name: stored[name] for name in DECODED}


def _described(scalars: dict[str, Any], batch: list[Record]) -> dict[str, Any]:
    """The fields of the one trial of ``batch`` (a frame's records), checked against its summary's ``scalars``.

    Raises:
        RecordError: the frame is not one trial record, or the summary differs from it.
    """
    if len(batch) != 1 or batch[0]["op"] != "trial":
        raise RecordError("it is not the one trial record its summary describes")
    stored = Trial.from_record(batch[0]["trial"]).__dict__
    differ = [name for name, value in scalars.items() if name in stored and not _same(stored[name], value)]
    if differ:
        raise RecordError(f"its summary differs from its record in {', '.join(differ)}")
    return stored


def _same(stored: Any, summarised: Any) -> bool:
    """Whether a summary's value is the record's: of its type too (a summary's 1 is no True nor 1.0, though
    equal to both), a NaN is itself, and params name the same params in the same order."""
    if type(stored) is not type(summarised):
        return False
    if type(stored) is dict and (list(stored) != list(summarised) or not all(
            type(a) is type(b) for a, b in zip(stored.values(), summarised.values()))):
        return False
    return bool(stored == summarised) or repr(stored) == repr(summarised)


def _checked(payload: memoryview, at: int) -> list[Record]:
    """:func:`_load_batch`, and a summary (if any) checked against the record (what a check or repair reads)."""
    batch = _load_batch(payload, at)
    if payload[-1] == summaries.MARK:
        summary = summaries.decode(payload)
        if summary is None:
            raise RecordError("its summary cannot be read")
        if summary[0] != -1 and summary[0] != at:
            raise RecordError(f"its summary names byte {summary[0]}, not where it is")
        _described(summary[2], batch)
    return batch


class Damage(NamedTuple):
    """A byte range of the file that holds no valid frame, and why."""

    start: int
    end: int
    reason: str

    def __str__(self) -> str:
        return f"bytes {self.start}-{self.end} ({self.end - self.start} bytes: {self.reason})"


class Scan(NamedTuple):
    """The result of :func:`scan`."""

    batches: list[list[Record]]  # the records of each good frame, in order
    end: int  # file offset just past the last good frame (a torn tail starts here)
    damaged: list[Damage]  # bad byte ranges before ``end``, which readers skip


def _frame_end(view: memoryview, pos: int) -> int | None:
    """Where the frame starting at ``pos`` ends, if a whole frame with valid checksums is there."""
    if len(view) - pos < FRAME.size:
        return None
    length, crc, head_crc = FRAME.unpack_from(view, pos)
    end = pos + FRAME.size + length
    if zlib.crc32(view[pos : pos + 8]) != head_crc or end > len(view):
        return None
    return end if zlib.crc32(view[pos + FRAME.size : end]) == crc else None


def _next_frame(data: bytes, view: memoryview, pos: int) -> int | None:
    """The offset of the next valid frame at or after ``pos`` (every payload starts with PROTO 5)."""
    found = data.find(_PROTO, pos + FRAME.size)
    while found >= 0:
        if _frame_end(view, found - FRAME.size) is not None:
            return found - FRAME.size
        found = data.find(_PROTO, found + 1)
    return None


def scan(data: bytes, start: int, path: str, lazy: bool = False) -> Scan:
    """Decode the frames of ``data`` (read from file offset ``start``), resynchronising after damage.

    A bad frame (wrong checksum, or content that is not Orchard records) is
    skipped up to the next valid frame and reported in :attr:`Scan.damaged`;
    bad bytes with no valid frame after them are a torn tail, where the scan
    stops. ``path`` names the file in messages. With ``lazy``, a frame with a
    summary gives a :class:`~orchard.storages.lazy.LazyTrial`, whose record is
    checked when it is first read (a replay; never a check or a repair).
    """
    view, size, pos = memoryview(data), len(data), 0
    batches: list[list[Record]] = []
    damaged: list[Damage] = []
    while size - pos >= FRAME.size:
        end = _frame_end(view, pos)
        if end is None:
            resume = _next_frame(data, view, pos + 1)
            if resume is None:
                break  # a torn tail (a writer killed mid-write, or power lost before the data reached the disk)
            damaged.append(Damage(start + pos, start + resume, "not a valid record frame"))
            pos = resume
            continue
        try:
            payload = view[pos + FRAME.size : end]
            summary = summaries.decode(payload) if lazy and payload[-1] == summaries.MARK else None
            if summary is None:
                batches.append(_checked(payload, start + pos))  # a summary that does not parse is damage
            else:
                fence, lock, scalars = summary
                if fence >= 0 and fence != start + pos:
                    raise _fenced_out(fence, lock)
                trial = LazyTrial.of(scalars, _Frame(bytes(payload), start + pos, path))
                batches.append([{"op": "trial", "trial": trial}])
        except RecordError as err:
            damaged.append(Damage(start + pos, start + end, f"a frame that is not Orchard's records: {err}"))
        pos = end
    return Scan(batches, start + pos, damaged)


#: Bytes of the file a reader decodes at once (:func:`scan_file`): the decoded records of a piece take about
#: ten times its size, so a process replaying a long history holds its table and one piece, not the whole log.
CHUNK = 1 << 22


def scan_file(fd: int, start: int, size: int, path: str, lazy: bool = False) -> Iterator[Scan]:
    """:func:`scan` bytes ``start`` to ``size`` of ``fd``, a piece of about :data:`CHUNK` bytes at a time.

    Each scan starts where the previous one ended (a frame cut by the end of a piece is read
    again with the next); a piece holding no whole frame is doubled until it does. The last
    scan's ``end`` is where a torn tail starts. Replaying a 92 MiB log in one piece held
    830 MiB of decoded records at once.
    """
    pos, piece = start, CHUNK
    while pos < size:
        want = min(size - pos, piece)
        found = scan(pread(fd, want, pos), pos, path, lazy)
        last = pos + want >= size
        if found.end == pos and not last:  # nothing whole in the piece: a frame longer than it
            piece *= 2
            continue
        yield found
        if last:
            return
        pos, piece = found.end, CHUNK


def pread(fd: int, count: int, offset: int) -> bytes:
    """Read up to ``count`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks: list[bytes] = []
    while count > 0:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, count, offset)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, count)
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (one ``write()`` unless the OS cuts it short)."""
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view, offset = view[written:], offset + written


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at the file position (the end, for a descriptor opened ``O_APPEND``)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform opens directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
