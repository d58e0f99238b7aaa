"""Changing the pickle storage's log: appending a verb's records, and compacting the file.

:class:`LogFile` is a :class:`~orchard.storages.pickled.reader.LogReader` that
also writes: it appends a verb's records as one frame (:meth:`LogFile.append`,
undone if cut short), and rewrites the file as a snapshot when the log has
grown (:meth:`LogFile.maybe_compact`, through :meth:`LogFile.replace_file`:
temporary file, fsync, ``os.replace``), tagged so that readers carry their
replay on into it. It takes no lock: the storage calls the writing methods
under its file lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from orchard.errors import StorageError, StorageUnavailableError
from orchard.storages.pickled import fileformat
from orchard.storages.pickled.fileformat import HEADER_SIZE
from orchard.storages.pickled.reader import LINEAGE, OPEN_FLAGS, TAG, Health, LogReader, continuation_tag
from orchard.storages.pickled.records import MAX_DEPTH, RecordError, check_batch
from orchard.storages.table import Record, TrialTable

__all__ = ["GROWTH_RATIO", "RETRY_AFTER", "Fence", "Health", "LogFile"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
Fence = Callable[[], bool]  # whether this process still holds the (soft) lock
_SNAPSHOT_CHUNK = 64  # records per frame of a snapshot: a damaged byte costs at most these
#: The log is compacted once it has grown past this many times the last snapshot (and ``compact_bytes``): the
#: file stays within twice its snapshot (with 4, five times: a lab's file opened in 6.0 s of CPU, not 2.8 s
#: compacted), for one snapshot written per snapshot's worth of appends (a lab's 80,000 trials: 18 compactions
#: holding the lock 5.6 s in all, against 8 and 2.6 s). See docs/storages.md.
GROWTH_RATIO = 1
#: Seconds after which a compaction that failed (a full disk) is tried again, if the log has not grown enough.
RETRY_AFTER = 600.0
_clock = time.monotonic  # seconds, for RETRY_AFTER (a test moves it on)


class LogFile(LogReader):
    """One process's replay of a log file, and the operations that change the file.

    Not thread-safe and takes no lock: the caller serialises calls within the
    process and holds the file lock around :meth:`commit`.
    """

    def __init__(self, path: str, fsync: bool, compact_bytes: int) -> None:
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        self._dir, name = os.path.split(path)
        self._tmp_prefix = f".{name}."
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # names this process in fence records
        self._unflushed: int | None = None
        self._taken_by = os.getpid()  # the process whose storage uses this replay
        self._failed_compactions = 0  # in a row: the first is warned of, the next ones logged at debug level
        #: After a failed compaction: the generation it failed on, the offset and the _clock() time from which
        #: it is tried again (kept when a failed append makes the replay start over: the file is the same).
        self._retry: tuple[bytes | None, int, float] | None = None
        super().__init__(path)

    def forked(self) -> LogFile | None:
        """This replay, carried on in a forked child by one storage (``None`` if one already took it).

        Called in the child; the replay names itself anew in fence records.
        """
        if self._taken_by == os.getpid():
            return None
        self._taken_by = os.getpid()
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._unflushed = None  # the parent's descriptor: the parent flushes it
        return self

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
        if self._generation is not None:  # this process read a file here: it was deleted or emptied
            raise self.vanished("deleted" if fd is None else "emptied")
        self.remove_leftovers()
        self.replace_file([fileformat.encode_header(os.urandom(16), HEADER_SIZE)])
        return os.open(self.path, flags | OPEN_FLAGS)

    # -- writing ---------------------------------------------------------------------

    def catch_up(self, keep: bool) -> int | None:
        """Before the lock: replay what others appended, so the lock holder replays only the tail.

        Returns the open file when ``keep`` (under a kernel lock the same
        descriptor can be written once locked: taking the lock revalidates an
        NFS client's cache; a soft lock does not, so its holder reopens).
        """
        if not keep and self.unchanged():
            return None
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
        self, verb: Callable[[TrialTable], tuple[_T, list[Record]]], owns: Fence | None = None, fd: int | None = None,
        holds: Fence | None = None,
    ) -> _T:
        """Run ``verb`` on the up-to-date table and append the records it produced (under the lock).

        ``owns`` is given under a soft lock: it says whether this process still
        holds the lock, and the append is fenced (see :meth:`_append_fenced`).
        ``holds`` is given under a kernel lock: whether its lock file is still the
        one locked; if not (deleted under us), nothing is written and this raises
        :class:`~orchard.errors.StorageUnavailableError`, to be retried.
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
                self.append(fd, records, holds)
        except BaseException:
            os.close(fd)
            raise
        if records and self.fsync and owns is None:
            self._unflushed = fd  # flushed once the lock is free: other writers need not wait for the disk
        else:
            os.close(fd)  # on NFS, close() also sends the appended bytes to the server
        if records and self._version < fileformat.VERSION:
            self._upgrade(owns or holds)
        elif records:
            self.maybe_compact(owns or holds)
        return result

    def _upgrade(self, fence: Fence | None) -> None:
        """Rewrite a file of an older format version in this release's (under the lock, after a write).

        Older releases read this release's records as damage and drop them when they compact or repair the
        file, or write a trial back: the new header's version makes them refuse the file instead (every
        release reads the header whenever the file grew). The rewrite is a compaction, so that this
        release's readers carry their replay on.
        """
        try:
            if self.rewrite(continues=True, fence=fence):
                self._upgraded()
        except OSError as err:  # retried at the next write, which also leaves the old readers the file
            log.warning("could not upgrade storage file %s to format version %d (%s); will retry",
                        self.path, fileformat.VERSION, err)

    def _upgraded(self) -> None:
        log.warning("storage file %s was upgraded to format version %d: Orchard releases that read "
                    "version 1 only can no longer open it (run this release on every worker of "
                    "the file)", self.path, fileformat.VERSION)

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
            frame = fileformat.encode_frame(records)
            check_batch(records, len(frame))  # what readers would skip as damage is refused here
        except (TypeError, pickle.PicklingError, RecursionError, RecordError) as err:
            raise StorageError(
                f"cannot store {err} in storage file {self.path}: only plain values (numbers, "
                "strings, booleans, None, lists and dicts of them, nested at most "
                f"{MAX_DEPTH} deep; params flat) can be stored; convert params, results and "
                "configuration values to those"
            ) from err
        return frame

    def append(self, fd: int, records: list[Record], holds: Fence | None = None) -> None:
        """Append one frame at our offset (under the lock), dropping a torn tail first.

        Once the whole frame is in the file it is committed: lock-free readers
        may have replayed it, so it is never cut off again, even if an
        exception (an interrupt, a failed ``fsync``) arrives afterwards.
        ``holds`` is asked once the frame is encoded, just before the file is
        touched: if the lock file was deleted or replaced, another process may
        hold a new one and write at our offset, so nothing is written and this
        raises :class:`~orchard.errors.StorageUnavailableError`, to be retried;
        so does a file that grew since it was read under the lock (such a
        process wrote). It is asked again once the frame is written: a process
        that took a new lock file meanwhile may write over it, so this raises
        too (the frame may be kept or not: a retry finds out, as after a lost
        reply).
        """
        try:
            frame = self._encode(records)
            if holds is not None and (not holds() or os.fstat(fd).st_size != self._size):
                raise StorageUnavailableError(_lock_file_lost_message(self.path, "nothing was written"))
            if self._size > self._offset:
                os.ftruncate(fd, self._offset)  # a writer killed mid-write left a partial frame
        except BaseException:
            self.reset(None)  # the table holds records the file does not: rebuild it from the file
            raise
        try:
            fileformat.pwrite_all(fd, frame, self._offset)
        except BaseException:
            self._undo_append(fd, len(frame))
            raise
        self._appended(len(frame))
        if holds is not None and not holds():
            self.reset(None)  # whether the frame stays is unknown: rebuild the table from the file
            raise StorageUnavailableError(_lock_file_lost_message(self.path, "this write may not be kept"))

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
            fileformat.write_all(fd, frame)
            if self.fsync:
                _fdatasync(fd)
            landed = self._landed(fd, frame, at)
        except BaseException:
            self.reset(None)  # whether the frame landed is unknown: rebuild the table from the file
            raise
        if not landed:
            self.reset(None)
            raise StorageUnavailableError(_fenced_message(self.path, "this write was fenced out and is not stored"))
        self._offset = self._size = at
        self._appended(len(frame))

    def _appended(self, length: int) -> None:
        """Stand after our own frame of ``length`` bytes, as if the next read had replayed it.

        The size of the file last seen moves with it: a file put back to that
        size (an older copy copied over it) must not look unchanged.
        """
        self._offset += length
        self._size = self._offset
        if self._seen is not None:  # the file our last read replayed to its end, which we appended to
            self._seen = (*self._seen[:2], self._offset)

    def _landed(self, fd: int, frame: bytes, at: int) -> bool:
        check = self.open(os.O_RDONLY)
        if check is None:
            return False
        try:
            same_file = os.path.samestat(os.fstat(check), os.fstat(fd))
            return same_file and fileformat.pread(check, len(frame), at) == frame
        finally:
            os.close(check)

    def _undo_append(self, fd: int, length: int) -> None:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size >= self._offset + length:
                self._appended(length)  # fully written before the interruption: committed
                return
            os.ftruncate(fd, self._offset)  # a partial frame, which no reader accepts
        self.reset(None)  # the table holds records the file does not: rebuild it from the file

    def replace_file(self, chunks: Iterable[bytes], fence: Fence | None = None,
                     generation: bytes | None = None) -> int | None:
        """Write ``chunks`` to a temporary file, flush it to disk and rename it over the log; return its size.

        With ``generation``, the file starts with the header of that generation, whose
        snapshot ends where the chunks do: written once they all are, so that a snapshot
        is written as it is encoded (a list of its frames held them all at once).

        ``fence`` is asked once the new file is on the disk, just before the rename: if the lock
        is no longer this process's (its lock file was deleted while the file was written, which
        can take seconds), another process may have appended to the log meanwhile, and the
        rename would throw its write away. The new file is then dropped and this returns
        ``None``, having changed nothing.
        """
        tmp = os.path.join(self._dir, f"{self._tmp_prefix}{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o666)
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(os.stat(self.path).st_mode))  # keep the old file's mode
            with os.fdopen(fd, "wb") as f:
                f.seek(0 if generation is None else HEADER_SIZE)
                for chunk in chunks:
                    f.write(chunk)
                size = f.tell()
                if generation is not None:
                    f.seek(0)
                    f.write(fileformat.encode_header(generation, size))
                f.flush()
                os.fsync(f.fileno())
            if fence is not None and not fence():
                os.unlink(tmp)
                return None
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fileformat.fsync_dir(self._dir)
        return size

    def remove_leftovers(self) -> None:
        """Delete temporary files of killed compactions (only called under the lock, so none is live)."""
        with contextlib.suppress(OSError), os.scandir(self._dir) as entries:
            for entry in entries:
                if self._is_leftover(entry.name):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _is_leftover(self, name: str) -> bool:
        """Whether ``name`` is one of this file's temporary files (``.NAME.HEX.tmp``), not another
        storage's whose name starts with this one's (``.NAME.v2.HEX.tmp``)."""
        middle = name[len(self._tmp_prefix):-len(".tmp")]
        return (name.startswith(self._tmp_prefix) and name.endswith(".tmp") and len(middle) == 32
                and all(c in "0123456789abcdef" for c in middle))

    def snapshot_frames(self) -> Iterator[bytes]:
        """The current state as frames of at most :data:`_SNAPSHOT_CHUNK` records each."""
        records = self.table.snapshot()
        while batch := list(itertools.islice(records, _SNAPSHOT_CHUNK)):
            yield self._encode(batch)

    def maybe_compact(self, owns: Fence | None = None) -> None:
        """Rewrite the file as a snapshot if the log has grown enough since the last one.

        A compaction that failed (a full disk: the snapshot is written beside the log) is tried again
        only once the log has grown by half its size, or :data:`RETRY_AFTER` seconds later: each attempt
        holds the lock while it writes (1.1 s at 44 MiB), and was made again after every MiB appended.
        """
        growth = self._offset - self._base
        if growth <= max(self.compact_bytes, GROWTH_RATIO * self._base):
            return
        if self._waiting_to_retry():
            return
        try:  # the lock broken or its file deleted: replacing the file could drop the new holder's writes
            compacted = self.rewrite(continues=True, fence=owns)
        except OSError as err:
            self._failed_compactions += 1
            wait = max(self.compact_bytes, self._offset // 2)
            self._retry = (self._generation, self._offset + wait, _clock() + RETRY_AFTER)
            log.log(logging.WARNING if self._failed_compactions == 1 else logging.DEBUG,
                    "could not compact storage file %s (%s; attempt %d): will try again once the log has "
                    "grown by %.1f MiB, or in %d minutes; free disk space for a copy of the file beside it "
                    "(`orchard db compact` compacts at once)", self.path, err, self._failed_compactions,
                    wait / 2**20, RETRY_AFTER // 60)
            return
        if compacted:
            if self._failed_compactions:
                log.warning("compacted storage file %s after %d failed attempt(s)", self.path,
                            self._failed_compactions)
            self._failed_compactions, self._retry = 0, None

    def _waiting_to_retry(self) -> bool:
        """Whether a compaction of this file failed and neither enough log nor time has gone by since."""
        if self._retry is None or self._retry[0] != self._generation:
            return False
        return self._offset < self._retry[1] and _clock() < self._retry[2]

    def compact(self, fence: Fence | None) -> tuple[int, int] | None:
        """Rewrite the file as a snapshot now (under the lock): readers carry their replay on, as after
        an automatic compaction. Returns its size before and after (``None``: there is no file).

        Raises:
            StorageError: this replay skipped damaged bytes, which a compaction would drop without the
                backup a repair keeps.
            StorageUnavailableError: the lock was lost while the snapshot was written (nothing replaced).
        """
        fd = self.open(os.O_RDONLY)
        if fd is None:
            return None
        try:
            if self._size_of(fd) == 0:
                return None
            self.sync(fd, locked=True)
        finally:
            os.close(fd)
        before = self._size
        if self.skipped_damage:
            raise StorageError(
                f"storage file {self.path} holds damaged bytes (`orchard db check` lists them), which a "
                "compaction would drop for good: run `orchard db repair`, which keeps a backup of the file "
                "and rewrites it compacted; nothing was compacted")
        upgrading = self._version < fileformat.VERSION
        if not self.rewrite(continues=True, fence=fence):
            raise StorageUnavailableError(
                f"the lock of storage file {self.path} was taken from this compaction (broken as stale, or "
                "its lock file deleted) while it wrote the new file, so another process may have written "
                "meanwhile: nothing was replaced; run the compaction again")
        if upgrading:
            self._upgraded()
        self._failed_compactions, self._retry = 0, None
        return before, self._base

    def rewrite(self, continues: bool = False, fence: Fence | None = None) -> bool:
        """Replace the file by a snapshot of the table (under the lock): compaction, and repair.

        With ``continues`` (compaction), the new generation is tagged so that
        readers of the replaced file can carry their replay on into it. With
        ``fence``, nothing is replaced unless it still holds once the snapshot is
        written (see :meth:`replace_file`). Returns whether the file was replaced.
        """
        if fence is not None and not fence():
            return False
        generation = os.urandom(16)
        if continues and self._generation is not None:  # the tag, the file's lineage, then random bytes
            tag = continuation_tag(self._generation, self._offset)
            generation = tag + self._generation[TAG:TAG + LINEAGE] + generation[TAG + LINEAGE:]
        self.remove_leftovers()
        base = self.replace_file(self.snapshot_frames(), fence, generation)
        if base is None:
            return False
        self._generation, self._base, self._offset, self._size = generation, base, base, base
        self._version = fileformat.VERSION
        return True


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _lock_file_lost_message(path: str, outcome: str) -> str:
    return (
        f"the lock file {path}.lock was deleted or replaced while this process held the lock, so another "
        f"process may hold a new one: {outcome}; retry the operation, and never delete the lock "
        "file of a storage that processes are using"
    )


def _fenced_message(path: str, outcome: str) -> str:
    return (
        f"the soft lock of storage file {path} was broken while this process held it (it stalled "
        f"longer than the lock's stale age, e.g. suspended or on a slow filesystem) and another "
        f"process took it: {outcome}; retry the operation"
    )
