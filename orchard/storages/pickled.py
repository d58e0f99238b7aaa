"""``PATH.pkl`` / ``pickle://PATH``: the embedded default storage, one append-only log file.

The file is a log of the records :class:`~orchard.storages._table.TrialTable`
produces (format in :mod:`orchard.storages._logfile`). Every process keeps a
table in memory plus the byte offset it has replayed up to. A verb that writes
takes the file lock (:mod:`orchard.storages._filelocks`), replays only what
others appended since its offset, computes its records on the table and appends
them in one ``write()``; a verb that reads replays without the lock. The cost of
a verb therefore depends on what changed, not on the size of the history.

Compaction rewrites the log as a snapshot of the current state into a temporary
file that replaces the log with ``os.replace``, under a new generation id;
readers notice the new generation in the header and replay from scratch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import logging
import os
import pickle
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from orchard.errors import (
    ConfigurationError,
    StorageCorruptedError,
    StorageError,
    StorageUnavailableError,
)
from orchard.storages import _filelocks, _logfile
from orchard.storages._logfile import HEADER_SIZE, Header
from orchard.storages._table import Record, TrialTable
from orchard.storages._uri import split_options
from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.trial import Trial, TrialStatus

__all__ = ["PickledStorage"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # no hang on a FIFO
_SNAPSHOT_CHUNK = 1000  # records per frame in a snapshot

# -- the storage ---------------------------------------------------------------------

_LOCKS = ("kernel", "soft")
_URI_OPTIONS = ("lock", "timeout", "fsync")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class PickledStorage(BaseStorage):
    """Experiments and trials in one local file, shared by processes through a file lock.

    Guarantees (beyond :class:`~orchard.storages.base.BaseStorage`'s):

    * **Atomic verbs across processes** on one host, or on a shared filesystem:
      every verb that writes runs under an exclusive lock on ``PATH.lock`` and
      appends its records in one frame, so its effect is all or nothing.
      Reads replay the log without the lock and take it only if they meet a
      damaged frame. All processes sharing a file must use the same lock mode.
    * **Crash safety.** A verb that returned survives ``SIGKILL`` of its process
      at any later instant (the write is in the page cache). A process killed
      mid-write leaves at most a torn last frame, which readers ignore and the
      next writer truncates; a process killed mid-compaction leaves the old file
      or the new one, never a mix. A kernel lock held by a dead process is
      released by the kernel; a soft lock left behind is broken (see ``lock``).
    * **Power loss** is only covered with ``fsync=True``, which flushes every
      write to the disk (typically 1-10 ms more per verb, depending on the disk).
      Without it the last verbs before the power cut may be lost, though the
      file stays readable.
    * **Safe loading.** A file that is not Orchard's is never modified and
      raises :class:`~orchard.errors.StorageCorruptedError`; records are loaded
      with an unpickler that refuses every global, so a tampered file cannot run
      code.
    * **Bounded cost.** Each verb reads only what other processes appended since
      its last call. The log is compacted to a snapshot when it has grown past
      ``max(compact_bytes, 4 × the last snapshot)``, which keeps the file, and
      the cost of a fresh process replaying it, proportional to the live state.

    Errors: lock timeouts raise :class:`~orchard.errors.StorageUnavailableError`;
    OS errors are raised as :class:`~orchard.errors.StorageError` naming the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        lock: str = "kernel",
        timeout: float = 60.0,
        fsync: bool = False,
        compact_bytes: int = 1 << 20,
        stale_lock_after: float = 60.0,
    ) -> None:
        """Open (lazily create) the storage file at ``path``.

        Args:
            path: the log file; its parent directories are created.
            lock: ``"kernel"`` (``flock``, released by the kernel if the holder
                dies) or ``"soft"`` (an existence marker, for NFS/Lustre mounts
                without working ``flock``).
            timeout: seconds to wait for the lock before giving up.
            fsync: flush every write to the disk (survives power loss, slower).
            compact_bytes: log growth below which the file is never compacted.
            stale_lock_after: age in seconds past which a soft lock is broken.

        Raises:
            ConfigurationError: an option is invalid.
            StorageCorruptedError: ``path`` exists and is not an Orchard storage file.
            StorageError: the directory cannot be created.
        """
        # realpath: compaction replaces the file, which must not turn a symlink into a copy
        self._path = os.path.realpath(os.path.expanduser(os.fspath(path)))
        self._options = _validated(lock, timeout, fsync, compact_bytes, stale_lock_after)
        self._lock_kind, self._timeout = lock, float(timeout)
        self._fsync, self._compact_bytes, self._stale_lock_after = bool(fsync), compact_bytes, stale_lock_after
        self._dir, name = os.path.split(self._path)
        self._tmp_prefix = f".{name}."
        self.uri = f"pickle://{self._path}" + self._options
        with self._translate("create the directory of"):
            if os.path.isdir(self._path):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self._path)
            os.makedirs(self._dir, exist_ok=True)
        self._init_process_state()
        with self._translate("read"):
            self._check_header()

    @classmethod
    def from_uri(cls, uri: str) -> PickledStorage:
        """Open the storage named by ``PATH.pkl`` or ``pickle://PATH[?lock=soft&timeout=S&fsync=1]``.

        ``pickle:///abs/path.pkl`` is absolute, ``pickle://runs/x.pkl`` relative
        to the working directory.

        Raises:
            ConfigurationError: the URI has no path or an unknown or invalid option.
        """
        base, options = split_options(uri)
        path = base[len("pickle://") :] if base.lower().startswith("pickle://") else base
        if not path:
            raise ConfigurationError(f"storage URI {uri!r} names no file; use e.g. pickle://runs/orchard.pkl")
        unknown = sorted(set(options) - set(_URI_OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"storage URI {uri!r} has unknown option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(_URI_OPTIONS)}"
            )
        try:
            timeout = float(options.get("timeout", 60.0))
        except ValueError:
            raise ConfigurationError(
                f"storage URI {uri!r}: timeout={options['timeout']!r} is not a number of seconds"
            ) from None
        fsync = options.get("fsync", "0").lower()
        if fsync not in _TRUE + _FALSE:
            raise ConfigurationError(f"storage URI {uri!r}: fsync={fsync!r} is not one of 1, 0, true, false")
        return cls(path, lock=options.get("lock", "kernel"), timeout=timeout, fsync=fsync in _TRUE)

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self._path, self._lock_kind, self._timeout, self._fsync, self._compact_bytes,
                self._stale_lock_after)
        return (type(self), args)

    @property
    def path(self) -> str:
        """The absolute path of the log file."""
        return self._path

    def close(self) -> None:
        """Drop the in-memory replay; the next call replays the file again."""
        with self._exclusive():
            self._reset(None)

    # -- per-process state ---------------------------------------------------------

    def _init_process_state(self) -> None:
        """Fresh state for this process (also after a fork: nothing is shared with the parent)."""
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._lock = _filelocks.make_lock(self._lock_kind, self._path + ".lock", self._stale_lock_after)
        self._reset(None)

    def _reset(self, header: Header | None) -> None:
        """Start over from an empty table, to replay the file (of ``header``'s generation)."""
        self._table = TrialTable()
        self._token = uuid.uuid4().hex  # names this replay in fetch_changes cursors
        self._generation = None if header is None else header.generation
        self._base = HEADER_SIZE if header is None else header.base
        self._offset = HEADER_SIZE
        self._size = 0
        self._compact_floor = 0

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._pid != os.getpid():
            self._init_process_state()
        with self._mutex:
            yield

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            raise self._os_error(err, action) from err

    def _os_error(self, err: OSError, action: str) -> StorageError:
        detail = f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
        if isinstance(err, PermissionError):
            return StorageError(
                f"permission denied trying to {action} storage file {self._path}: {detail}; check "
                "the permissions of the file, its .lock file and its directory, or pass another --storage path"
            )
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return StorageError(f"no space left to {action} storage file {self._path}: {detail}; free some disk space")
        if err.errno in (errno.EIO, getattr(errno, "ESTALE", errno.EIO), errno.ETIMEDOUT):
            return StorageUnavailableError(
                f"could not {action} storage file {self._path}: {detail}; is its filesystem (NFS?) reachable?"
            )
        return StorageError(f"could not {action} storage file {self._path}: {detail}")

    # -- the lock ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._acquire_lock()
        try:
            yield
        finally:
            with self._translate("unlock"):
                self._lock.release()

    def _acquire_lock(self) -> None:
        try:
            acquired = _filelocks.acquire(self._lock, self._timeout, 0.005 if self._lock_kind == "kernel" else 0.05,
                                          while_waiting=self._catch_up)
        except OSError as err:
            raise self._lock_error(err) from err
        if not acquired:
            raise StorageUnavailableError(self._timeout_message())

    def _catch_up(self) -> None:
        """Replay, without the lock, what others append while we wait for it: little is left under it."""
        fd = self._open(os.O_RDONLY)
        if fd is not None:
            try:
                self._sync(fd, locked=False)  # damage is left for the locked replay to judge
            finally:
                os.close(fd)

    def _lock_error(self, err: OSError) -> StorageError:
        unsupported = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
        if self._lock_kind == "kernel" and err.errno in unsupported:
            return StorageUnavailableError(
                f"cannot lock {self._lock.path}: {err.strerror}; this filesystem does not support "
                f"flock (NFS/Lustre?): use pickle://{self._path}?lock=soft"
            )
        return self._os_error(err, "lock")

    def _timeout_message(self) -> str:
        hint = (
            "a stale lock file left by a crashed process on another host (it is broken after "
            f"{self._stale_lock_after:g} s)"
            if self._lock_kind == "soft"
            else "a filesystem without working flock (NFS, Lustre): use ?lock=soft there"
        )
        return (
            f"could not lock storage file {self._path} within {self._timeout:g} s (lock file "
            f"{self._lock.path}). Likely causes: another process holding the lock for a long "
            f"time (a hung or stopped Orchard process, or a very large file being compacted); "
            f"{hint}. Remedies: find the holder (e.g. `fuser {self._lock.path}`), wait and retry, "
            f"raise the wait with pickle://{self._path}?timeout=SECONDS, or, if no Orchard "
            "process uses the file, delete the lock file"
        )

    # -- reading and writing the log -----------------------------------------------

    def _open(self, flags: int) -> int | None:
        try:
            return os.open(self._path, flags | _OPEN_FLAGS)
        except FileNotFoundError:
            return None

    def _size_of(self, fd: int) -> int:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(
                f"storage path {self._path} is not a regular file; pass a file path such as runs/orchard.pkl"
            )
        return info.st_size

    def _check_header(self) -> None:
        fd = self._open(os.O_RDONLY)
        if fd is not None:
            try:
                if self._size_of(fd):
                    _logfile.decode_header(_logfile.pread(fd, HEADER_SIZE, 0), self._path)
            finally:
                os.close(fd)

    def _sync(self, fd: int, locked: bool) -> bool:
        """Replay what was appended since our offset; ``False`` if an unlocked read must be redone locked."""
        size = self._size_of(fd)
        if size == 0:  # nothing stored yet (the writer that creates the file holds the lock)
            if self._generation is not None:
                self._reset(None)
            return True
        header = _logfile.decode_header(_logfile.pread(fd, HEADER_SIZE, 0), self._path)
        if header.generation != self._generation:
            self._reset(header)  # first read, or compacted by another process: replay from scratch
        self._size = size
        if size < self._offset:
            if not locked:
                return False
            raise StorageCorruptedError(
                f"storage file {self._path} shrank below data already read ({size} < {self._offset} "
                "bytes); it was modified by another program. Restore it from a backup"
            )
        if size > self._offset:
            scan = _logfile.scan(_logfile.pread(fd, size - self._offset, self._offset), self._offset, self._path)
            self._apply(scan.batches)
            self._offset = scan.end
            if scan.damage is not None:
                if not locked:
                    return False
                raise StorageCorruptedError(
                    f"storage file {self._path} is corrupted: {scan.damage} (not at the end of the "
                    "file, so not a torn last write). Restore it from a backup or move it away"
                )
        return True

    def _apply(self, batches: list[list[Record]]) -> None:
        try:
            for batch in batches:
                self._table.apply_all(batch)
        except Exception as err:  # a record with valid framing but meaningless content
            self._reset(None)
            raise StorageCorruptedError(
                f"storage file {self._path} holds a record Orchard cannot apply ({err!r}); "
                "restore it from a backup or move it away"
            ) from err

    def _refresh(self) -> None:
        """Catch up with the file, without the lock unless a damaged frame needs a second look."""
        fd = self._open(os.O_RDONLY)
        if fd is None:
            if self._generation is not None:
                self._reset(None)
            return
        try:
            if self._sync(fd, locked=False):
                return
        finally:
            os.close(fd)
        with self._locked():
            fd = self._open(os.O_RDONLY)
            if fd is not None:
                try:
                    self._sync(fd, locked=True)
                finally:
                    os.close(fd)

    def _open_for_write(self) -> int:
        """Open the log for appending (under the lock), creating it if missing or empty."""
        fd = self._open(os.O_RDWR)
        if fd is not None:
            try:
                if self._size_of(fd) > 0:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        self._remove_leftovers()
        self._replace_file([_logfile.encode_header(os.urandom(16), HEADER_SIZE)])
        return os.open(self._path, os.O_RDWR | _OPEN_FLAGS)

    def _encode(self, records: list[Record]) -> bytes:
        try:
            return _logfile.encode_frame(records)
        except (TypeError, pickle.PicklingError, RecursionError) as err:
            raise StorageError(
                f"cannot store {err} in storage file {self._path}: only plain values (numbers, "
                "strings, booleans, None, lists and dicts of them) can be stored; convert params, "
                "results and configuration values to those"
            ) from err

    def _append(self, fd: int, records: list[Record]) -> None:
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
            self._reset(None)  # the table holds records the file does not: rebuild it from the file
            raise
        try:
            _logfile.pwrite_all(fd, frame, self._offset)
        except BaseException:
            self._undo_append(fd, len(frame))
            raise
        self._offset += len(frame)
        self._size = self._offset
        if self._fsync:
            os.fsync(fd)

    def _undo_append(self, fd: int, length: int) -> None:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size >= self._offset + length:
                self._offset += length  # fully written before the interruption: committed
                self._size = self._offset
                return
            os.ftruncate(fd, self._offset)  # a partial frame, which no reader accepts
        self._reset(None)  # the table holds records the file does not: rebuild it from the file

    def _replace_file(self, chunks: Iterable[bytes]) -> None:
        """Write ``chunks`` to a temporary file, flush it to disk and rename it over the log."""
        tmp = os.path.join(self._dir, f"{self._tmp_prefix}{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o666)
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(os.stat(self._path).st_mode))  # keep the old file's mode
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _logfile.fsync_dir(self._dir)

    def _remove_leftovers(self) -> None:
        """Delete temporary files of killed compactions (only called under the lock, so none is live)."""
        with contextlib.suppress(OSError), os.scandir(self._dir) as entries:
            for entry in entries:
                if entry.name.startswith(self._tmp_prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _maybe_compact(self) -> None:
        growth = self._offset - self._base
        if growth <= max(self._compact_bytes, 4 * self._base) or self._offset < self._compact_floor:
            return
        records = self._table.snapshot()
        frames = [self._encode(records[i : i + _SNAPSHOT_CHUNK]) for i in range(0, len(records), _SNAPSHOT_CHUNK)]
        generation, base = os.urandom(16), HEADER_SIZE + sum(map(len, frames))
        try:
            self._remove_leftovers()
            self._replace_file([_logfile.encode_header(generation, base), *frames])
        except OSError as err:
            self._compact_floor = self._offset + self._compact_bytes  # retry later, not on every write
            log.warning("could not compact storage file %s (%s); will retry later", self._path, err)
            return
        self._generation, self._base, self._offset, self._size = generation, base, base, base

    # -- running verbs ------------------------------------------------------------------

    def _read(self, query: Callable[[TrialTable], _T]) -> _T:
        with self._exclusive(), self._translate("read"):
            self._refresh()
            return query(self._table)

    def _write(self, verb: Callable[[TrialTable, float], tuple[_T, list[Record]]]) -> _T:
        """Run ``verb`` on the up-to-date table under the lock and append the records it produced."""
        with self._exclusive(), self._translate("write to"), self._locked():
            fd = self._open_for_write()
            try:
                self._sync(fd, locked=True)
                seq = self._table.seq
                try:
                    result, records = verb(self._table, self.now())
                except BaseException:
                    if self._table.seq != seq:  # applied in memory but not written
                        self._reset(None)
                    raise
                if records:
                    self._append(fd, records)
            finally:
                os.close(fd)
            if records:
                self._maybe_compact()
            return result

    # -- experiments ------------------------------------------------------------------

    def create_experiment(self, name: str, config: Mapping[str, Any]) -> str:
        """See :meth:`BaseStorage.create_experiment`."""
        if (existing := self.get_experiment(name)) is not None:
            return existing.id

        def verb(table: TrialTable, now: float) -> tuple[str, list[Record]]:
            records = table.create_experiment(name, config, now)
            return table.names[name], records

        return self._write(verb)

    def get_experiment(self, name: str) -> ExperimentRecord | None:
        """See :meth:`BaseStorage.get_experiment`."""

        def query(table: TrialTable) -> ExperimentRecord | None:
            exp_id = table.names.get(name)
            return None if exp_id is None else _copy_experiment(table.experiments[exp_id])

        return self._read(query)

    def list_experiments(self) -> list[ExperimentRecord]:
        """See :meth:`BaseStorage.list_experiments`."""
        return self._read(
            lambda table: [_copy_experiment(e) for e in sorted(table.experiments.values(), key=lambda e: e.created)]
        )

    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        """See :meth:`BaseStorage.update_experiment`."""

        def verb(table: TrialTable, now: float) -> tuple[ExperimentRecord, list[Record]]:
            records = table.update_experiment(experiment_id, changes)
            return _copy_experiment(table.experiments[experiment_id]), records

        return self._write(verb)

    def delete_experiment(self, experiment_id: str) -> int:
        """See :meth:`BaseStorage.delete_experiment`."""
        return self._write(lambda table, now: table.delete_experiment(experiment_id))

    # -- trials -------------------------------------------------------------------------

    def register_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        *,
        worker: str | None = None,
        budget: int | None = None,
        parent: str | None = None,
    ) -> Trial:
        """See :meth:`BaseStorage.register_trial`."""
        return self._write(
            lambda table, now: table.register_trial(experiment_id, params, worker, budget, now, parent)
        )

    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        """See :meth:`BaseStorage.restore_trials`."""
        trials = list(trials)
        return self._write(lambda table, now: table.restore_trials(experiment_id, trials))

    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        """See :meth:`BaseStorage.reserve_trial`."""

        def waiting(table: TrialTable) -> int:
            counts = table.count_trials(experiment_id)
            return counts[TrialStatus.NEW] + counts[TrialStatus.INTERRUPTED]

        if not self._read(waiting):  # nothing to reserve right now: no need for the lock
            return None
        return self._write(lambda table, now: table.reserve_trial(experiment_id, worker, now))

    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        """See :meth:`BaseStorage.heartbeat_trial`."""
        self._write(lambda table, now: (None, table.heartbeat_trial(trial_id, worker, now)))

    def complete_trial(
        self, trial_id: str, worker: str, objective: float, results: Mapping[str, Any] | None = None
    ) -> Trial:
        """See :meth:`BaseStorage.complete_trial`."""
        return self._write(lambda table, now: table.complete_trial(trial_id, worker, objective, results, now))

    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        """See :meth:`BaseStorage.fail_trial`."""
        return self._write(lambda table, now: table.fail_trial(trial_id, worker, error, now))

    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        """See :meth:`BaseStorage.release_trial`."""
        return self._write(lambda table, now: table.release_trial(trial_id, worker))

    def release_stale(self, experiment_id: str, timeout: float, now: float | None = None) -> list[Trial]:
        """See :meth:`BaseStorage.release_stale`."""

        def any_stale(table: TrialTable) -> bool:
            cutoff = (self.now() if now is None else now) - timeout
            table.count_trials(experiment_id)  # raises if the experiment does not exist
            trials = table.by_experiment[experiment_id]
            return any((trials.trials[tid].heartbeat or 0.0) < cutoff for tid in trials.reserved)

        if not self._read(any_stale):  # nothing stale right now: no need for the lock
            return []
        return self._write(
            lambda table, t: table.release_stale(experiment_id, (t if now is None else now) - timeout)
        )

    # -- reading --------------------------------------------------------------------------

    def get_trial(self, trial_id: str) -> Trial | None:
        """See :meth:`BaseStorage.get_trial`."""

        def query(table: TrialTable) -> Trial | None:
            trial = table.trial(trial_id)
            return None if trial is None else table._copy(trial)

        return self._read(query)

    def fetch_trials(
        self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None = None
    ) -> list[Trial]:
        """See :meth:`BaseStorage.fetch_trials`."""
        return self._read(lambda table: table.fetch_trials(experiment_id, statuses))

    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        """See :meth:`BaseStorage.fetch_changes`.

        The cursor is ``(replay token, sequence number)``: sequence numbers only
        mean something within one replay of the file in one process, so a cursor
        from another process, or from before this process replayed the file
        from scratch (another process compacted it), yields every trial.
        """

        def query(table: TrialTable) -> tuple[list[Trial], Any]:
            fresh = isinstance(cursor, tuple) and len(cursor) == 2 and cursor[0] == self._token
            since = int(cursor[1]) if fresh else 0
            return table.changes_since(experiment_id, since), (self._token, table.seq)

        return self._read(query)

    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        """See :meth:`BaseStorage.count_trials`."""
        return self._read(lambda table: table.count_trials(experiment_id))


def _copy_experiment(exp: ExperimentRecord) -> ExperimentRecord:
    return dataclasses.replace(exp, config=copy.deepcopy(exp.config))


def _validated(lock: str, timeout: float, fsync: bool, compact_bytes: int, stale_lock_after: float) -> str:
    """Check the options; return their URI query form (empty for the defaults)."""
    if lock not in _LOCKS:
        raise ConfigurationError(f"unknown lock {lock!r} for a pickle storage; valid: {', '.join(_LOCKS)}")
    for name, value in (("timeout", timeout), ("compact_bytes", compact_bytes), ("stale_lock_after", stale_lock_after)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigurationError(f"pickle storage option {name}={value!r} must be a positive number")
    query = [f"lock={lock}"] if lock != "kernel" else []
    query += [f"timeout={float(timeout):g}"] if float(timeout) != 60.0 else []
    query += ["fsync=1"] if fsync else []
    return "?" + "&".join(query) if query else ""
