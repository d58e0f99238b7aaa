"""The on-disk format of the pickle storage: a header, then checksummed frames of records.

Layout::

    header  magic (16 bytes) | format version u16 | generation (16 random bytes)
            | base u64 (end of the last snapshot) | crc32 of the above u32
    frame   payload length u32 | crc32(payload) u32 | crc32(the first 8 bytes) u32 | payload
    frame   ...

A payload is a pickled list of :class:`~orchard.storages._table.TrialTable`
records (protocol 5, plain values only), written by one ``write()``. A frame
cut short at the end of the file is a *torn tail* (a writer killed mid-write):
:func:`scan` stops before it. A bad frame followed by more data is *damage*.
The header's own checksum keeps a flipped length from passing for a torn tail.
Loading refuses every global, so a tampered file cannot run code.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import zlib
from typing import Any, NamedTuple

from orchard.errors import StorageCorruptedError
from orchard.storages._table import Record

__all__ = [
    "HEADER_SIZE",
    "Header",
    "Scan",
    "decode_header",
    "encode_frame",
    "encode_header",
    "fsync_dir",
    "pread",
    "pwrite_all",
    "scan",
]

MAGIC = b"\x89ORCHARD-LOG\r\n\x1a\n"  # binary, recognisable, and broken by text-mode copies
VERSION = 1
_HEADER = struct.Struct(f"<{len(MAGIC)}sH16sQ")  # magic, version, generation, base
_U32 = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _U32.size
FRAME = struct.Struct("<III")  # payload length, crc32(payload), crc32(first 8 bytes)
_OPS = frozenset({"experiment", "trial", "drop"})


class Header(NamedTuple):
    """What the header of a log file says."""

    generation: bytes  # changes whenever the file is rewritten (created or compacted)
    base: int  # file offset where the snapshot ends and appended frames begin


def encode_header(generation: bytes, base: int) -> bytes:
    """Return the header bytes of a file of ``generation`` whose snapshot ends at ``base``."""
    head = _HEADER.pack(MAGIC, VERSION, generation, base)
    return head + _U32.pack(zlib.crc32(head))


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
    if len(data) < HEADER_SIZE or zlib.crc32(data[: _HEADER.size]) != _U32.unpack_from(data, _HEADER.size)[0]:
        raise StorageCorruptedError(
            f"the header of storage file {path} is damaged; restore the file from a backup or move it away"
        )
    _, version, generation, base = _HEADER.unpack_from(data)
    if version != VERSION:
        raise StorageCorruptedError(
            f"storage file {path} uses format version {version} but this Orchard reads version "
            f"{VERSION}; use the Orchard release that wrote it, or another --storage path"
        )
    return Header(generation, base)


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
    payload = buffer.getvalue()
    head = _U32.pack(len(payload)) + _U32.pack(zlib.crc32(payload))
    return head + _U32.pack(zlib.crc32(head)) + payload


class _RecordUnpickler(pickle.Unpickler):
    """Loads plain values only; a global in a record means the file was tampered with."""

    def __init__(self, payload: memoryview, path: str) -> None:
        super().__init__(io.BytesIO(payload))
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        raise StorageCorruptedError(
            f"refusing to load {module}.{name} from storage file {self._path}: Orchard records "
            "hold plain values only, so the file was tampered with or written by another "
            "program. Nothing was executed; move the file away or restore it from a backup"
        )


def _load_batch(payload: memoryview, path: str) -> list[Record]:
    try:
        batch = _RecordUnpickler(payload, path).load()
    except StorageCorruptedError:
        raise
    except Exception as err:  # any failure to decode a frame whose checksum is right
        raise StorageCorruptedError(
            f"storage file {path} holds a record Orchard cannot decode ({err!r}); "
            "restore the file from a backup or move it away"
        ) from err
    if not (isinstance(batch, list) and all(isinstance(r, dict) and r.get("op") in _OPS for r in batch)):
        raise StorageCorruptedError(
            f"storage file {path} holds a record that is not an Orchard record; "
            "restore the file from a backup or move it away"
        )
    return batch


class Scan(NamedTuple):
    """The result of :func:`scan`."""

    batches: list[list[Record]]  # the records of each good frame, in order
    end: int  # file offset just past the last good frame
    damage: str | None  # what is wrong with a bad frame that is not a torn tail


def scan(data: bytes, start: int, path: str) -> Scan:
    """Decode the frames of ``data`` (read from file offset ``start``), stopping at a torn tail.

    Raises:
        StorageCorruptedError: a frame with a valid checksum does not hold
            Orchard records (tampering).
    """
    view, size, pos = memoryview(data), len(data), 0
    batches: list[list[Record]] = []
    while size - pos >= FRAME.size:
        length, crc, head_crc = FRAME.unpack_from(data, pos)
        body, end = pos + FRAME.size, pos + FRAME.size + length
        if zlib.crc32(view[pos : pos + 8]) != head_crc:
            if data.count(0, pos) == size - pos:
                break  # a zero-filled tail (power loss before the data reached the disk)
            return Scan(batches, start + pos, f"a damaged record header at byte {start + pos}")
        if end > size:
            break  # the last frame was cut short
        if zlib.crc32(view[body:end]) != crc:
            if end == size:
                break  # the last frame was not fully written
            return Scan(batches, start + pos, f"a record with a bad checksum at byte {start + pos}")
        batches.append(_load_batch(view[body:end], path))
        pos = end
    return Scan(batches, start + pos, None)


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


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform opens directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
