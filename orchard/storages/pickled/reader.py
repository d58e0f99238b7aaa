"""Replaying the pickle storage's log: one process's table, caught up by reading only what was appended.

A :class:`LogReader` keeps a :class:`~orchard.storages.table.TrialTable` plus
the byte offset of the file it has replayed up to. It catches up by decoding
only the frames appended since (:meth:`LogReader.sync`); it never writes
(:class:`~orchard.storages.pickled.writer.LogFile` adds the writing half).
The byte format is :mod:`orchard.storages.pickled.fileformat`.

A compaction does not make every other process replay the file from scratch.
The snapshot's generation starts with a tag naming the generation and byte
offset it was taken at; a reader keeps the file it replayed open, reads that
file's last frames through it when the path has been replaced, and, if it
then stands exactly where the snapshot was taken, carries its replay on into
the new file (its table and its ``fetch_changes`` cursors stay valid). A
reader that cannot (the old file could not be read to the same point, or the
file was repaired or recreated) replays the new file from its start, as
before. A compaction also keeps the file's lineage (:data:`LINEAGE` bytes of
the generation), so a reader that missed several compactions replays quietly,
and warns only of a file that is not the one it read, compacted. With
hundreds of workers, a compaction used to cost every one of them a full
replay at the same moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from orchard.errors import StorageCorruptedError, StorageError, StorageUnavailableError
from orchard.storages.pickled import fileformat
from orchard.storages.pickled.fileformat import HEADER_SIZE, Damage, Header
from orchard.storages.table import Record, TrialTable

__all__ = ["LINEAGE", "OPEN_FLAGS", "TAG", "Health", "LogReader", "continuation_tag"]

log = logging.getLogger(__name__)

OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # no hang on a FIFO
TAG = 8  # bytes of a compacted file's generation that name the replay it continues
#: Bytes after the tag that a compaction keeps from the generation it compacts: the file's lineage, new when
#: the file is created or repaired. A reader that missed several compactions tells them from another file.
LINEAGE = 4


_READERS: weakref.WeakSet[LogReader] = weakref.WeakSet()  # this process's readers, for the fork hook


def _after_fork_in_child() -> None:
    for reader in list(_READERS):
        reader._drop_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def continuation_tag(generation: bytes, offset: int) -> bytes:
    """What a snapshot of ``generation`` replayed up to byte ``offset`` puts first in its own generation."""
    return hashlib.blake2b(generation + offset.to_bytes(8, "little"), digest_size=TAG).digest()


#: Bytes after a header whose first bytes are not Orchard's read to find Orchard frames (the snapshot's first).
_LOOK_AHEAD = 1 << 16


class Health(NamedTuple):
    """What a full read of the file found (see :meth:`LogReader.inspect`)."""

    size: int  # bytes in the file
    frames: int  # good frames
    records: int  # records in the good frames
    damaged: list[Damage]  # byte ranges readers skip
    torn_tail: int  # bytes after the last good frame (a write cut short, or one in progress)

    @property
    def clean(self) -> bool:
        """Whether every byte of the file belongs to a good frame."""
        return not self.damaged and not self.torn_tail


class LogReader:
    """One process's replay of a log file.

    Not thread-safe and takes no lock: the caller serialises calls within the
    process (and takes the file lock where a method says so).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._kept: tuple[int, tuple[int, int]] | None = None  # the replayed file, open: (fd, (device, inode))
        self._close_kept: Callable[[], object] | None = None  # closes it, also if this reader is dropped
        self._forked_from: bytes | None = None  # the generation whose kept file a fork closed
        self._vanished: OrderedDict[str, str] = OrderedDict()  # trials a replaced file took away: why, each
        self.reset(None)
        _READERS.add(self)

    def _drop_inherited(self) -> None:
        """In a forked child: close the copy of the kept descriptor (the parent keeps its own).

        Otherwise every forked worker holds the replaced file's space until it exits.
        The child replays from its own reads on; after a compaction it starts over.
        """
        if self._kept is not None:
            self._forked_from = self._generation  # its compaction can no longer be followed: replayed quietly
        self._forget_kept()

    def reset(self, header: Header | None) -> None:
        """Start over from an empty table, to replay the file (of ``header``'s generation)."""
        self._forget_kept()
        self.table = TrialTable(self._vanished)
        self.token = uuid.uuid4().hex  # names this replay in fetch_changes cursors
        self._generation = None if header is None else header.generation
        self._base = HEADER_SIZE if header is None else header.base
        self._version = fileformat.VERSION if header is None else header.version  # the file's format version
        self._offset = HEADER_SIZE
        self._size = 0
        self.skipped_damage = False  # whether this replay skipped damaged bytes of the file
        self._seen: tuple[int, int, int] | None = None  # (device, inode, size) of the file fully replayed

    @property
    def has_replayed(self) -> bool:
        """Whether this replay has read a file at its path (one that vanishes is then not recreated)."""
        return self._generation is not None

    def vanished(self, how: str) -> StorageUnavailableError:
        """The error for a file this process had read that is now gone: never recreated empty under it."""
        return StorageUnavailableError(
            f"storage file {self.path} was {how} while this process was using it; it is not recreated empty "
            "under running workers: restore it (e.g. from a backup), or stop the workers and start again")

    # -- opening ---------------------------------------------------------------------

    def open(self, flags: int) -> int | None:
        """Open the file with ``flags``; ``None`` if it does not exist."""
        try:
            return os.open(self.path, flags | OPEN_FLAGS)
        except FileNotFoundError:
            return None

    def _size_of(self, fd: int) -> int:
        return self._stat_of(fd).st_size

    def _stat_of(self, fd: int) -> os.stat_result:
        """``fstat`` of the file, refused unless it is a regular file with one name.

        The name is checked only for a file this process is not already reading: a
        hard link made to it under running workers refuses every process that opens
        the file from then on (whichever name it uses), but never fails a running
        worker's call, which would throw its result away; the running workers all
        use the name they opened, so they still share one lock file.
        """
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(
                f"storage path {self.path} is not a regular file; pass a file path such as runs/orchard.pkl"
            )
        reading = self._kept is not None and self._kept[1] == (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and not reading:  # its other names would take other lock files: writers would interleave
            raise StorageError(
                f"storage file {self.path} has {info.st_nlink} hard links (other names for the same file); "
                "processes that open it by another name lock another .lock file, so their writes would "
                "interleave and a compaction would split the file in two: remove the other names and "
                "use one path (a symbolic link is fine, it is resolved)")
        return info

    def check_header(self) -> None:
        """Raise :class:`StorageCorruptedError` if the file exists and is not Orchard's.

        A damaged header of Orchard's is let through: the verbs wait for it to be repaired
        (an outage, named), and ``orchard db repair`` opens the file to rewrite it.
        """
        fd = self.open(os.O_RDONLY)
        if fd is not None:
            try:
                head = fileformat.pread(fd, HEADER_SIZE, 0) if self._size_of(fd) else b""
                if head and not self._header_is_damaged(fd, head):
                    fileformat.decode_header(head, self.path)
            finally:
                os.close(fd)

    # -- catching up -----------------------------------------------------------------

    def sync(self, fd: int, locked: bool) -> bool:
        """Replay what was appended since our offset; ``False`` if an unlocked read must be redone locked."""
        info = self._stat_of(fd)
        size, seen = info.st_size, (info.st_dev, info.st_ino, info.st_size)
        if seen == self._seen:
            return True  # the same file, of the size we replayed to its end: nothing new
        if size == 0:  # nothing stored yet (the writer that creates the file holds the lock)
            if self._generation is not None:
                raise self.vanished("emptied")
            return True
        head = fileformat.pread(fd, HEADER_SIZE, 0)
        if self._header_is_damaged(fd, head):  # an outage to running workers: they wait for the repair
            raise StorageUnavailableError(fileformat.damaged_header_message(self.path))
        header = fileformat.decode_header(head, self.path)
        self._version = header.version
        if header.generation != self._generation and not self._continues(header):
            if self._generation is not None and self._generation != self._forked_from:
                if header.generation[TAG:TAG + LINEAGE] == self._generation[TAG:TAG + LINEAGE]:
                    how = ("compacted again since this process last read it (or restored from an older copy "
                           "of itself)")
                    log.info("storage file %s was %s; replaying it", self.path, how)
                else:
                    how = "replaced by another file (restored from an older copy, repaired, or copied over)"
                    log.warning("storage file %s was %s; replaying the new file, in which trials this "
                                "process held may not exist", self.path, how)
                self._replaced(how)
            self.reset(header)  # first read, or rewritten by another process: replay from scratch
        if size < self._offset:
            if not locked:
                return False
            log.warning(
                "storage file %s shrank below what this process had read (%d < %d bytes): another "
                "program truncated or restored it; replaying it from the start (records that were in "
                "the lost bytes are gone)", self.path, size, self._offset,
            )
            self._replaced("truncated or overwritten by another program (an older copy copied over it?)")
            self.reset(header)
        self._size = size
        for scan in fileformat.scan_file(fd, self._offset, size, self.path, lazy=True):  # good frames stay applied
            if scan.damaged and not locked:
                return False  # maybe a writer truncating a torn tail under our feet: look again, locked
            self._apply(scan.batches)
            self._offset = scan.end
            for damage in scan.damaged:
                self.skipped_damage = True
                log.warning(
                    "storage file %s: skipped damaged %s; every other record was kept. `orchard db "
                    "check` lists the damage, `orchard db repair` rewrites a clean file", self.path, damage,
                )
        self._seen = seen if self._offset == size else None  # an append replaces a torn tail: look again
        self._keep(fd, info)
        return True

    def _replaced(self, how: str) -> None:
        """Remember the trials this replay held as taken away by the file's replacement, if the new file lacks them."""
        self.table.forget_vanished(
            f"storage file {self.path} was {how} while this process held the trial, and the new file does "
            "not have it; this write was refused")

    def unchanged(self) -> bool:
        """Whether the path still names the file we replayed to its end, at the same size (one ``stat``).

        Cheaper than opening the file, for a waiter that catches up every few
        milliseconds; an NFS client may answer from its attribute cache, so
        only an opportunistic catch-up may trust it (the locked replay opens
        the file).
        """
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino, info.st_size) == self._seen

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
            if size < self._offset:
                return False
            for scan in fileformat.scan_file(old, self._offset, size, self.path, lazy=True):
                if scan.damaged:
                    return False  # let the full replay judge it
                self._apply(scan.batches)
                self._offset = scan.end
        except OSError:  # e.g. a stale NFS handle: the old file is gone for us
            return False
        if header.generation[:TAG] != continuation_tag(self._generation, self._offset):
            return False
        self._generation, self._base, self._offset, self._size = header.generation, header.base, header.base, 0
        self._seen, self.skipped_damage = None, False
        return True

    def _keep(self, fd: int, info: os.stat_result) -> None:
        """Keep the file just replayed open, to finish reading it if a compaction replaces it."""
        identity = (info.st_dev, info.st_ino)
        if self._kept is not None and self._kept[1] == identity:
            return
        self._forget_kept()
        kept = os.dup(fd)
        self._kept = (kept, identity)
        # a storage dropped by a long-lived process (get_experiment in a loop) leaked it: one per storage, to EMFILE
        close = weakref.finalize(self, _close_quietly, kept)
        close.atexit = False
        self._close_kept = close

    def release(self) -> None:
        """Close the replayed file kept open (a compaction meanwhile then costs a replay from the start)."""
        self._forget_kept()

    def _forget_kept(self) -> None:
        close, self._close_kept, self._kept = self._close_kept, None, None
        if close is not None:
            close()

    def _apply(self, batches: list[list[Record]]) -> None:
        try:
            self.table.replay(batches)
        except Exception as err:  # a record with valid framing but meaningless content
            self.reset(None)
            raise StorageCorruptedError(
                f"storage file {self.path} holds a record Orchard cannot apply ({err!r}); "
                "restore it from a backup or move it away"
            ) from err
        for what in self.table.unapplied:
            log.warning("storage file %s: skipped %s (no Orchard writer makes such a record; another program "
                        "wrote into the file?)", self.path, what)
        self.table.unapplied.clear()

    def refresh(self, locked: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        """Catch up with the file, without the lock unless a damaged frame needs a second look."""
        fd = self.open(os.O_RDONLY)
        if fd is None:
            if self._generation is not None:
                raise self.vanished("deleted")
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

    def inspect(self, replay: bool = False) -> Health:
        """Read the whole file afresh and say what is damaged (changes nothing, not even the table).

        With ``replay`` (a repair, under the lock), the table is rebuilt from every readable
        record in the same read, damage skipped, for :meth:`rewrite`; the caller rewrites the
        file or resets the replay (:meth:`reset`). A repair read the file twice under the lock.

        Raises:
            StorageCorruptedError: the file is not Orchard's, or its header is damaged.
        """
        if replay:
            self.reset(None)
        fd = self.open(os.O_RDONLY)
        if fd is None:
            return Health(0, 0, 0, [], 0)
        try:
            size = self._size_of(fd)
            if size == 0:
                return Health(0, 0, 0, [], 0)
            damaged = self._header_damage(fd)
            frames = records = 0
            end = HEADER_SIZE
            for scan in fileformat.scan_file(fd, HEADER_SIZE, size, self.path):
                frames, records = frames + len(scan.batches), records + sum(map(len, scan.batches))
                damaged, end = damaged + scan.damaged, scan.end
                if replay:
                    self._apply(scan.batches)
        finally:
            os.close(fd)
        return Health(size, frames, records, damaged, size - end)

    def _header_damage(self, fd: int) -> list[fileformat.Damage]:
        """The header as damage if it is damaged (the frames after it stand); raise if the file is not Orchard's."""
        head = fileformat.pread(fd, HEADER_SIZE, 0)
        if self._header_is_damaged(fd, head):
            return [fileformat.Damage(0, HEADER_SIZE, "the file's header")]
        fileformat.decode_header(head, self.path)
        return []

    def _header_is_damaged(self, fd: int, head: bytes) -> bool:
        """Whether ``head`` is Orchard's header, damaged: its checksum fails, or its first bytes are not
        Orchard's in a file whose first frames are (a file that is not Orchard's never passes for one)."""
        if head.startswith(fileformat.MAGIC) or len(head) < HEADER_SIZE:
            return fileformat.header_is_damaged(head)
        after = fileformat.pread(fd, _LOOK_AHEAD, HEADER_SIZE)
        return bool(fileformat.scan(after, HEADER_SIZE, self.path).batches)
