"""The pickle storage's log: one process's replay of the file, and the mechanics of changing it.

A :class:`LogFile` keeps a :class:`~orchard.storages._table.TrialTable` plus
the byte offset of the file it has replayed up to. It catches up by decoding
only the frames appended since (:meth:`LogFile.sync`), appends a verb's
records as one frame (:meth:`LogFile.append`, undone if cut short), and
rewrites the file as a snapshot when the log has grown
(:meth:`LogFile.maybe_compact`, through :meth:`LogFile.replace_file`:
temporary file, fsync, ``os.replace``). It takes no lock: the storage calls
the writing methods under its file lock. The byte format is
:mod:`orchard.storages._logfile`.

A compaction does not make every other process replay the file from scratch.
The snapshot's generation starts with a tag naming the generation and byte
offset it was taken at; a reader keeps the file it replayed open, reads that
file's last frames through it when the path has been replaced, and, if it
then stands exactly where the snapshot was taken, carries its replay on into
the new file (its table and its ``fetch_changes`` cursors stay valid). A
reader that cannot (the old file could not be read to the same point, or the
file was repaired or recreated) replays the new file from its start, as
before. With hundreds of workers, a compaction used to cost every one of them
a full replay at the same moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from orchard.errors import StorageCorruptedError, StorageError, StorageUnavailableError
from orchard.storages import _logfile
from orchard.storages._logfile import HEADER_SIZE, Damage, Header
from orchard.storages._records import MAX_DEPTH, RecordError, check_batch
from orchard.storages._table import Record, TrialTable

__all__ = ["Fence", "Health", "LogFile"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
Fence = Callable[[], bool]  # whether this process still holds the (soft) lock
_OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # no hang on a FIFO
_SNAPSHOT_CHUNK = 64  # records per frame of a snapshot: a damaged byte costs at most these
_TAG = 8  # bytes of a compacted file's generation that name the replay it continues


def _continuation_tag(generation: bytes, offset: int) -> bytes:
    """What a snapshot of ``generation`` replayed up to byte ``offset`` puts first in its own generation."""
    return hashlib.blake2b(generation + offset.to_bytes(8, "little"), digest_size=_TAG).digest()


class Health(NamedTuple):
    """What a full read of the file found (see :meth:`LogFile.inspect`)."""

    size: int  # bytes in the file
    frames: int  # good frames
    records: int  # records in the good frames
    damaged: list[Damage]  # byte ranges readers skip
    torn_tail: int  # bytes after the last good frame (a write cut short, or one in progress)

    @property
    def clean(self) -> bool:
        """Whether every byte of the file belongs to a good frame."""
        return not self.damaged and not self.torn_tail


class LogFile:
    """One process's replay of a log file, and the operations that change the file.

    Not thread-safe and takes no lock: the caller serialises calls within the
    process and holds the file lock around :meth:`commit`.
    """

    def __init__(self, path: str, fsync: bool, compact_bytes: int) -> None:
        self.path = path
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        self._dir, name = os.path.split(path)
        self._tmp_prefix = f".{name}."
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # names this process in fence records
        self._unflushed: int | None = None
        self._kept: tuple[int, tuple[int, int]] | None = None  # the replayed file, open: (fd, (device, inode))
        self.reset(None)

    def reset(self, header: Header | None) -> None:
        """Start over from an empty table, to replay the file (of ``header``'s generation)."""
        self._forget_kept()
        self.table = TrialTable()
        self.token = uuid.uuid4().hex  # names this replay in fetch_changes cursors
        self._generation = None if header is None else header.generation
        self._base = HEADER_SIZE if header is None else header.base
        self._offset = HEADER_SIZE
        self._size = 0
        self._compact_floor = 0
        self._seen: tuple[int, int, int] | None = None  # (device, inode, size) of the file fully replayed

    # -- opening ---------------------------------------------------------------------

    def open(self, flags: int) -> int | None:
        """Open the file with ``flags``; ``None`` if it does not exist."""
        try:
            return os.open(self.path, flags | _OPEN_FLAGS)
        except FileNotFoundError:
            return None

    def _size_of(self, fd: int) -> int:
        return self._stat_of(fd).st_size

    def _stat_of(self, fd: int) -> os.stat_result:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(
                f"storage path {self.path} is not a regular file; pass a file path such as runs/orchard.pkl"
            )
        return info

    def check_header(self) -> None:
        """Raise :class:`StorageCorruptedError` if the file exists and is not Orchard's."""
        fd = self.open(os.O_RDONLY)
        if fd is not None:
            try:
                if self._size_of(fd):
                    _logfile.decode_header(_logfile.pread(fd, HEADER_SIZE, 0), self.path)
            finally:
                os.close(fd)

    def open_for_write(self, append: bool = False) -> int:
        """Open the log for writing (under the lock), creating it if missing or empty."""
        flags = os.O_RDWR | (os.O_APPEND if append else 0)
        fd = self.open(flags)
        if fd is not None:
            try:
                if self._size_of(fd) > 0:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        self.remove_leftovers()
        self.replace_file([_logfile.encode_header(os.urandom(16), HEADER_SIZE)])
        return os.open(self.path, flags | _OPEN_FLAGS)

    # -- catching up -----------------------------------------------------------------

    def sync(self, fd: int, locked: bool) -> bool:
        """Replay what was appended since our offset; ``False`` if an unlocked read must be redone locked."""
        info = self._stat_of(fd)
        size, seen = info.st_size, (info.st_dev, info.st_ino, info.st_size)
        if seen == self._seen:
            return True  # the same file, of the size we replayed to its end: nothing new
        if size == 0:  # nothing stored yet (the writer that creates the file holds the lock)
            if self._generation is not None:
                self.reset(None)
            return True
        header = _logfile.decode_header(_logfile.pread(fd, HEADER_SIZE, 0), self.path)
        if header.generation != self._generation and not self._continues(header):
            self.reset(header)  # first read, or rewritten by another process: replay from scratch
        if size < self._offset:
            if not locked:
                return False
            log.warning(
                "storage file %s shrank below what this process had read (%d < %d bytes): another "
                "program truncated or restored it; replaying it from the start (records that were in "
                "the lost bytes are gone)", self.path, size, self._offset,
            )
            self.reset(header)
        self._size = size
        if size > self._offset:
            scan = _logfile.scan(_logfile.pread(fd, size - self._offset, self._offset), self._offset, self.path)
            if scan.damaged and not locked:
                return False  # maybe a writer truncating a torn tail under our feet: look again, locked
            self._apply(scan.batches)
            self._offset = scan.end
            for damage in scan.damaged:
                log.warning(
                    "storage file %s: skipped damaged %s; every other record was kept. `orchard db "
                    "check` lists the damage, `orchard db repair` rewrites a clean file", self.path, damage,
                )
        self._seen = seen if self._offset == size else None  # an append replaces a torn tail: look again
        self._keep(fd, info)
        return True

    # -- carrying a replay on across a compaction --------------------------------------

    def _continues(self, header: Header) -> bool:
        """Carry this replay on into a snapshot of the file it replayed (see the module docstring).

        Reads what was appended to the replaced file after our offset through the
        descriptor kept open on it; the snapshot continues our replay only if its
        tag names our generation at exactly the offset we then stand at.
        """
        if self._kept is None or self._generation is None:
            return False
        old = self._kept[0]
        try:
            size = os.fstat(old).st_size
            tail = _logfile.pread(old, size - self._offset, self._offset) if size > self._offset else b""
        except OSError:  # e.g. a stale NFS handle: the old file is gone for us
            return False
        if size < self._offset:
            return False
        if tail:
            scan = _logfile.scan(tail, self._offset, self.path)
            if scan.damaged:
                return False  # let the full replay judge it
            self._apply(scan.batches)
            self._offset = scan.end
        if header.generation[:_TAG] != _continuation_tag(self._generation, self._offset):
            return False
        self._generation, self._base, self._offset, self._size = header.generation, header.base, header.base, 0
        self._compact_floor, self._seen = 0, None
        return True

    def _keep(self, fd: int, info: os.stat_result) -> None:
        """Keep the file just replayed open, to finish reading it if a compaction replaces it."""
        identity = (info.st_dev, info.st_ino)
        if self._kept is not None and self._kept[1] == identity:
            return
        self._forget_kept()
        self._kept = (os.dup(fd), identity)

    def _forget_kept(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(OSError):
                os.close(kept[0])

    def _apply(self, batches: list[list[Record]]) -> None:
        try:
            for batch in batches:
                self.table.apply_all(batch)
        except Exception as err:  # a record with valid framing but meaningless content
            self.reset(None)
            raise StorageCorruptedError(
                f"storage file {self.path} holds a record Orchard cannot apply ({err!r}); "
                "restore it from a backup or move it away"
            ) from err

    def refresh(self, locked: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        """Catch up with the file, without the lock unless a damaged frame needs a second look."""
        fd = self.open(os.O_RDONLY)
        if fd is None:
            if self._generation is not None:
                self.reset(None)
            return
        try:
            if self.sync(fd, locked=False):
                return
        finally:
            os.close(fd)
        with locked():
            fd = self.open(os.O_RDONLY)
            if fd is not None:
                try:
                    self.sync(fd, locked=True)
                finally:
                    os.close(fd)

    def inspect(self) -> Health:
        """Read the whole file afresh and say what is damaged (changes nothing, not even the table).

        Raises:
            StorageCorruptedError: the file is not Orchard's, or its header is damaged.
        """
        fd = self.open(os.O_RDONLY)
        if fd is None:
            return Health(0, 0, 0, [], 0)
        try:
            size = self._size_of(fd)
            if size == 0:
                return Health(0, 0, 0, [], 0)
            _logfile.decode_header(_logfile.pread(fd, HEADER_SIZE, 0), self.path)
            scan = _logfile.scan(_logfile.pread(fd, size - HEADER_SIZE, HEADER_SIZE), HEADER_SIZE, self.path)
        finally:
            os.close(fd)
        records = sum(map(len, scan.batches))
        return Health(size, len(scan.batches), records, scan.damaged, size - scan.end)

    def replay_all(self) -> None:
        """Replay the file from the start (under the lock): every readable record, damage skipped."""
        self.reset(None)
        fd = self.open(os.O_RDONLY)
        if fd is not None:
            try:
                self.sync(fd, locked=True)
            finally:
                os.close(fd)

    # -- writing ---------------------------------------------------------------------

    def catch_up(self, keep: bool) -> int | None:
        """Before the lock: replay what others appended, so the lock holder replays only the tail.

        Returns the open file when ``keep`` (under a kernel lock the same
        descriptor can be written once locked: taking the lock revalidates an
        NFS client's cache; a soft lock does not, so its holder reopens).
        """
        fd = self.open(os.O_RDWR if keep else os.O_RDONLY)
        if fd is None:
            return None
        try:
            self.sync(fd, locked=False)
        except BaseException:
            os.close(fd)
            raise
        if keep:
            return fd
        os.close(fd)
        return None

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at our path (not one compaction replaced), and not empty."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False
        return info.st_size > 0 and os.path.samestat(info, os.fstat(fd))

    def commit(
        self, verb: Callable[[TrialTable], tuple[_T, list[Record]]], owns: Fence | None = None, fd: int | None = None
    ) -> _T:
        """Run ``verb`` on the up-to-date table and append the records it produced (under the lock).

        ``owns`` is given under a soft lock: it says whether this process still
        holds the lock, and the append is fenced (see :meth:`_append_fenced`).
        ``fd`` is the file :meth:`catch_up` opened before the lock (this call
        closes it). With ``fsync``, the flush of a kernel-locked append is left
        to :meth:`flush`, after the lock is released.
        """
        if fd is not None and not self._is_current(fd):
            os.close(fd)
            fd = None
        if fd is None:
            fd = self.open_for_write(append=owns is not None)
        try:
            self.sync(fd, locked=True)
            seq = self.table.seq
            try:
                result, records = verb(self.table)
            except BaseException:
                if self.table.seq != seq:  # applied in memory but not written
                    self.reset(None)
                raise
            if records and owns is not None:
                self._append_fenced(fd, records, owns)
            elif records:
                self.append(fd, records)
        except BaseException:
            os.close(fd)
            raise
        if records and self.fsync and owns is None:
            self._unflushed = fd  # flushed once the lock is free: other writers need not wait for the disk
        else:
            os.close(fd)  # on NFS, close() also sends the appended bytes to the server
        if records:
            self.maybe_compact(owns)
        return result

    def flush(self) -> None:
        """Make the last append durable (``fsync``), outside the lock: concurrent flushes share the disk's work."""
        fd, self._unflushed = self._unflushed, None
        if fd is not None:
            try:
                _fdatasync(fd)
            finally:
                os.close(fd)

    def _encode(self, records: list[Record]) -> bytes:
        try:
            frame = _logfile.encode_frame(records)
            check_batch(records, len(frame))  # what readers would skip as damage is refused here
        except (TypeError, pickle.PicklingError, RecursionError, RecordError) as err:
            raise StorageError(
                f"cannot store {err} in storage file {self.path}: only plain values (numbers, "
                "strings, booleans, None, lists and dicts of them, nested at most "
                f"{MAX_DEPTH} deep; params flat) can be stored; convert params, results and "
                "configuration values to those"
            ) from err
        return frame

    def append(self, fd: int, records: list[Record]) -> None:
        """Append one frame at our offset (under the lock), dropping a torn tail first.

        Once the whole frame is in the file it is committed: lock-free readers
        may have replayed it, so it is never cut off again, even if an
        exception (an interrupt, a failed ``fsync``) arrives afterwards.
        """
        try:
            frame = self._encode(records)
            if self._size > self._offset:
                os.ftruncate(fd, self._offset)  # a writer killed mid-write left a partial frame
        except BaseException:
            self.reset(None)  # the table holds records the file does not: rebuild it from the file
            raise
        try:
            _logfile.pwrite_all(fd, frame, self._offset)
        except BaseException:
            self._undo_append(fd, len(frame))
            raise
        self._offset += len(frame)
        self._size = self._offset

    def _append_fenced(self, fd: int, records: list[Record], owns: Fence) -> None:
        """Append under a soft lock, so that a broken lock never lets two writers interleave unseen.

        Nothing is truncated (a process that lost the lock could cut off a new
        holder's frame); the frame is appended (``O_APPEND``: never over
        another writer's bytes) with a fence record naming the offset it was
        computed for, after checking the lock marker is still ours; then it is
        flushed to the file server and read back through a fresh ``open()``
        (close-to-open revalidation on NFS). A frame that did not land at its
        offset, or in a file that was replaced meanwhile, is ignored by every
        reader, and this write raises instead of returning.
        """
        at = self._size  # after any torn bytes, which readers skip as damage
        try:
            frame = self._encode([{"op": "fence", "at": at, "lock": self._holder}, *records])
            if not owns():
                raise StorageUnavailableError(_fenced_message(self.path, "nothing was written"))
        except BaseException:
            self.reset(None)  # the table holds records the file does not: rebuild it from the file
            raise
        try:
            _logfile.write_all(fd, frame)
            if self.fsync:
                _fdatasync(fd)
            landed = self._landed(fd, frame, at)
        except BaseException:
            self.reset(None)  # whether the frame landed is unknown: rebuild the table from the file
            raise
        if not landed:
            self.reset(None)
            raise StorageUnavailableError(_fenced_message(self.path, "this write was fenced out and is not stored"))
        self._offset = self._size = at + len(frame)

    def _landed(self, fd: int, frame: bytes, at: int) -> bool:
        check = self.open(os.O_RDONLY)
        if check is None:
            return False
        try:
            same_file = os.path.samestat(os.fstat(check), os.fstat(fd))
            return same_file and _logfile.pread(check, len(frame), at) == frame
        finally:
            os.close(check)

    def _undo_append(self, fd: int, length: int) -> None:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size >= self._offset + length:
                self._offset += length  # fully written before the interruption: committed
                self._size = self._offset
                return
            os.ftruncate(fd, self._offset)  # a partial frame, which no reader accepts
        self.reset(None)  # the table holds records the file does not: rebuild it from the file

    def replace_file(self, chunks: Iterable[bytes]) -> None:
        """Write ``chunks`` to a temporary file, flush it to disk and rename it over the log."""
        tmp = os.path.join(self._dir, f"{self._tmp_prefix}{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o666)
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(os.stat(self.path).st_mode))  # keep the old file's mode
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _logfile.fsync_dir(self._dir)

    def remove_leftovers(self) -> None:
        """Delete temporary files of killed compactions (only called under the lock, so none is live)."""
        with contextlib.suppress(OSError), os.scandir(self._dir) as entries:
            for entry in entries:
                if entry.name.startswith(self._tmp_prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def snapshot_frames(self) -> Iterator[bytes]:
        """The current state as frames of at most :data:`_SNAPSHOT_CHUNK` records each."""
        records = self.table.snapshot()
        for i in range(0, len(records), _SNAPSHOT_CHUNK):
            yield self._encode(records[i : i + _SNAPSHOT_CHUNK])

    def maybe_compact(self, owns: Fence | None = None) -> None:
        """Rewrite the file as a snapshot if the log has grown enough since the last one."""
        growth = self._offset - self._base
        if growth <= max(self.compact_bytes, 4 * self._base) or self._offset < self._compact_floor:
            return
        if owns is not None and not owns():
            return  # the lock was broken: replacing the file could drop the new holder's writes
        try:
            self.rewrite(continues=True)
        except OSError as err:
            self._compact_floor = self._offset + self.compact_bytes  # retry later, not on every write
            log.warning("could not compact storage file %s (%s); will retry later", self.path, err)

    def rewrite(self, continues: bool = False) -> None:
        """Replace the file by a snapshot of the table (under the lock): compaction, and repair.

        With ``continues`` (compaction), the new generation is tagged so that
        readers of the replaced file can carry their replay on into it.
        """
        frames = list(self.snapshot_frames())
        fresh = os.urandom(16)
        if continues and self._generation is not None:
            fresh = _continuation_tag(self._generation, self._offset) + fresh[_TAG:]
        generation, base = fresh, HEADER_SIZE + sum(map(len, frames))
        self.remove_leftovers()
        self.replace_file([_logfile.encode_header(generation, base), *frames])
        self._generation, self._base, self._offset, self._size = generation, base, base, base


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _fenced_message(path: str, outcome: str) -> str:
    return (
        f"the soft lock of storage file {path} was broken while this process held it (it stalled "
        f"longer than the lock's stale age, e.g. suspended or on a slow filesystem) and another "
        f"process took it: {outcome}; retry the operation"
    )
