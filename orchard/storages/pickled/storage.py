"""``PATH.pkl`` / ``pickle://PATH``: the embedded default storage, one append-only log file.

The file is a log of the records :class:`~orchard.storages.table.TrialTable`
produces (format in :mod:`orchard.storages.pickled.fileformat`). Every process keeps a
table in memory plus the byte offset it has replayed up to
(:class:`~orchard.storages.pickled.writer.LogFile`). A verb that writes replays what
others appended since its offset, then takes the file lock
(:mod:`orchard.storages.pickled.locks`), replays only what was appended while it
waited, computes its records on the table and appends them in one ``write()``;
a verb that reads replays without the lock. The cost of a verb therefore
depends on what changed, not on the size of the history, and the lock is held
for as little work as possible. The verbs themselves are
:class:`~orchard.storages.table_storage.TableStorage`'s, shared with ``memory://``.

Compaction rewrites the log as a snapshot of the current state into a temporary
file that replaces the log with ``os.replace``, under a new generation id naming the
replay it continues: a reader that had replayed the old file to its end carries its
replay on into the new one; others replay it (:mod:`~orchard.storages.pickled.reader`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, TypeVar

from orchard.errors import ConfigurationError, StorageError, StorageUnavailableError
from orchard.resources import OUT_OF_FILES
from orchard.storages._uri import UNEXPANDED, pickle_file
from orchard.storages.pickled import fileformat, locks
from orchard.storages.pickled.writer import Fence, Health, LogFile
from orchard.storages.table_storage import Query, TableStorage, Verb

__all__ = ["PickledStorage"]

_T = TypeVar("_T")

_LOCKS = ("kernel", "soft")
_URI_OPTIONS = ("lock", "timeout", "fsync")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class PickledStorage(TableStorage):
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
    * **Durable by default.** Every verb that writes returns only once its
      frame is on the disk (one ``fdatasync`` per verb, made after the lock is
      released so concurrent writers share the disk's work; under a soft lock,
      before, so the file server has it before the next holder reads). A
      returned verb then survives power loss and a crashed NFS client.
      ``fsync=False`` gives that up for speed: the file stays readable, but the
      last verbs before a power cut may be lost.
    * **Damage costs only the damaged records.** Readers skip a damaged frame,
      resynchronise at the next valid one and log a warning naming the byte
      range; :meth:`check` lists damage and :meth:`repair` rewrites a clean
      file. A file that is not Orchard's is never modified and raises
      :class:`~orchard.errors.StorageCorruptedError`; records are loaded with an
      unpickler that refuses every global, and checked for shape and size, so a
      tampered file cannot run code or hang a worker.
    * **Soft locks are fenced.** A soft lock is broken only after this process
      watched it unchanged for ``stale_lock_after`` seconds (never by comparing
      clocks); a writer re-checks that it still holds it before it appends, and
      every frame names the offset it was written for, so a writer whose lock
      was broken is fenced out and raises instead of interleaving unseen.
    * **Bounded cost.** Each verb reads only what other processes appended since
      its last call. The log is compacted to a snapshot when it has grown past
      ``max(compact_bytes, the last snapshot's size)``, which keeps the file, and
      the cost of a fresh process replaying it, proportional to the live state.

    Errors: lock timeouts raise :class:`~orchard.errors.StorageUnavailableError`;
    OS errors are raised as :class:`~orchard.errors.StorageError` naming the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        lock: str = "kernel",
        timeout: float = 60.0,
        fsync: bool = True,
        compact_bytes: int = 1 << 20,
        stale_lock_after: float = 30.0,
    ) -> None:
        """Open (lazily create) the storage file at ``path``.

        Args:
            path: the log file; its parent directories are created.
            lock: ``"kernel"`` (``flock``, released by the kernel if the holder
                dies) or ``"soft"`` (an existence marker, for NFS/Lustre mounts
                without working ``flock``).
            timeout: seconds to wait for the lock before giving up.
            fsync: flush every write to the disk before returning (survives power
                loss and NFS client crashes); ``False`` is faster and survives
                only the death of processes.
            compact_bytes: log growth below which the file is never compacted.
            stale_lock_after: seconds a waiter must watch a soft lock stay
                unchanged before it breaks it (below ``timeout``, so a waiter
                breaks a dead holder's lock before it gives up).

        Raises:
            ConfigurationError: an option is invalid, or ``path`` holds an unexpanded ``$VARIABLE``.
            StorageCorruptedError: ``path`` exists and is not an Orchard storage file.
            StorageError: ``path`` is a directory (its directory is made by the first write).
        """
        if "\0" in os.fspath(path):  # no OS takes it: os.* raise a bare ValueError
            raise ConfigurationError(f"storage path {os.fspath(path)!r} holds a NUL character; give a file path")
        unexpanded = UNEXPANDED.search(os.fspath(path))
        if unexpanded is not None:  # else a folder named "$SCRATCH" is made in each worker's directory
            raise ConfigurationError(
                f"storage path {os.fspath(path)!r} holds {unexpanded.group()}, which nothing expanded (a config "
                "file, ORCHARD_STORAGE, or single quotes in the shell): Orchard does not read environment "
                "variables in paths; write the path out, or let the shell expand it (double quotes)")
        # realpath: compaction replaces the file, which must not turn a symlink into a copy
        self._path = os.path.realpath(os.path.expanduser(os.fspath(path)))
        self._options = _validated(lock, timeout, fsync, compact_bytes, stale_lock_after)
        self._lock_kind, self._timeout = lock, float(timeout)
        self._fsync, self._compact_bytes, self._stale_lock_after = bool(fsync), compact_bytes, stale_lock_after
        self.uri = f"pickle://{self._path}" + self._options
        if os.path.isdir(self._path):
            raise StorageError(
                f"storage path {self._path} is a directory, not a storage file; "
                f"give a file path, e.g. --storage {os.path.join(self._path, 'orchard.pkl')}"
            )
        _check_not_a_lock_file(self._path)
        self._folder_made = False  # made by the first write: reading a path that does not exist changes nothing
        self._init_process_state()
        with self._translate("read"):
            self._log.check_header()

    @classmethod
    def from_uri(cls, uri: str) -> PickledStorage:
        """Open the storage named by ``PATH.pkl`` or ``pickle://PATH[?lock=soft&timeout=S&fsync=0]``.

        ``pickle:///abs/path.pkl`` is absolute, ``pickle://runs/x.pkl`` relative
        to the working directory.

        Raises:
            ConfigurationError: the URI has no path or an unknown or invalid option.
        """
        path, options = pickle_file(uri)
        unknown = sorted(set(options) - set(_URI_OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"storage URI {uri!r} has unknown option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(_URI_OPTIONS)}")
        try:
            timeout = float(options.get("timeout", 60.0))
        except ValueError:
            raise ConfigurationError(
                f"storage URI {uri!r}: timeout={options['timeout']!r} is not a number of seconds"
            ) from None
        fsync = options.get("fsync", "1").lower()
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
        """Close the file this process keeps open; the replay is kept: the next call reads only what changed.

        A storage may be closed while other threads use it (a worker loop closing its copy): dropping
        the replay would make them all replay the whole file again."""
        with self._exclusive():
            self._log.release()

    # -- checking and repairing the file -----------------------------------------------

    def check(self) -> Health:
        """Read the whole file and report its damage (without the lock; changes nothing).

        Raises:
            StorageCorruptedError: the file is not Orchard's, or its header is damaged.
            StorageError: the file cannot be read.
        """
        with self._exclusive(), self._translate("check"):
            return self._log.inspect()

    def repair(self) -> tuple[Health, str | None]:
        """Rewrite a damaged file with every readable record, keeping the original as a backup.

        Returns:
            What was found, and the path of the backup (``None``: the file was
            clean and is left as it is).

        Raises:
            StorageCorruptedError: the file is not Orchard's, or its header is damaged.
            StorageUnavailableError: the lock could not be taken.
            StorageError: the file or its backup cannot be written.
        """
        with self._exclusive(), self._translate("repair"), self._locked():
            health = self._log.inspect(replay=True)
            if health.clean:
                self._log.reset(None)  # its offsets were not kept: the next verb replays the file
                return health, None
            backup = f"{self._path}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.damaged"
            with open(self._path, "rb") as damaged, open(backup, "xb") as kept:  # "x": never through a planted link
                with self._dropped_if_unneeded(backup, os.fstat(damaged.fileno())):
                    shutil.copyfileobj(damaged, kept)
                    shutil.copystat(self._path, backup)
                    if not self._log.rewrite(fence=self._still_held()):
                        raise StorageUnavailableError(
                            f"the lock of storage file {self._path} was taken from this repair (broken as stale, "
                            "or its lock file deleted) while it read the file, so another process may have "
                            "written meanwhile: nothing was replaced; run the repair again, with the workers "
                            "stopped if it happens again (a soft lock held past its stale age looks abandoned)")
            return health, backup

    def compact(self) -> tuple[int, int]:
        """Rewrite the file now as a snapshot of what it holds (a deleted experiment's records dropped).

        Under the lock, as an automatic compaction: running workers carry their replay on into the new file.

        Returns:
            The file's size in bytes before and after.

        Raises:
            StorageError: the file does not exist, holds damaged bytes (:meth:`repair` it: that keeps a
                backup), or no copy of it fits beside it (a full disk).
            StorageUnavailableError: the lock could not be taken, or was lost meanwhile (nothing replaced).
        """
        with self._exclusive(), self._translate("compact"):
            self._catch_up()  # without the lock: under it, only what is appended meanwhile is read
            sizes = None
            if os.path.exists(self._path):  # else the lock would make its folder and lock file
                with self._locked():
                    sizes = self._log.compact(self._still_held())
        if sizes is None and not os.path.exists(self._path):  # an empty file was also said not to exist
            raise StorageError(f"storage file {self._path} does not exist, so there is nothing to compact; "
                               "check the path (--storage) and the folder you run from")
        return sizes or (0, 0)

    def _fences(self) -> tuple[Fence | None, Fence | None]:
        """Whether this process still holds the soft lock (``owns``), or the kernel lock's file (``holds``)."""
        owns = self._lock.owns if isinstance(self._lock, locks.SoftLock) else None  # after a fork: the new lock
        holds = self._lock.holds if isinstance(self._lock, locks.KernelLock) else None
        return owns, holds

    def _still_held(self) -> Fence | None:
        owns, holds = self._fences()
        return owns or holds

    @contextlib.contextmanager
    def _dropped_if_unneeded(self, backup: str, original: os.stat_result) -> Iterator[None]:
        """Remove the backup if the repair fails while the original is still in place (a full disk).

        A partial copy left behind filled the disk that running workers write to, and was named nowhere.
        """
        try:
            yield
        except BaseException:
            with contextlib.suppress(OSError):
                if os.path.samestat(original, os.stat(self._path)):
                    os.unlink(backup)
            raise

    # -- per-process state ---------------------------------------------------------

    def _init_process_state(self, inherited: LogFile | None = None) -> None:
        """Fresh state for this process; after a fork, the parent's replay of the file if it was whole.

        A forked worker carries on from what its parent had replayed (its table is a copy of
        the parent's) instead of replaying the whole file again: with hundreds of workers
        forked from a parent that read a long history, that replay was most of their start-up.
        A storage unpickled in a forked child (a process pool's task) takes over a replay of
        the same file its parent forked with, if no other storage of the child took it first.
        The lock, the mutex and the name in fence records are always the child's own.
        """
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._in_verb = 0  # verbs running in this process (any thread)
        self._lock = locks.make_lock(self._lock_kind, self._path + ".lock", self._stale_lock_after)
        log = (inherited or _INHERITED.pop(self._log_key(), None) or _NO_LOG).forked()
        self._log = log or LogFile(self._path, self._fsync, self._compact_bytes)
        _OPEN.add(self)

    def _log_key(self) -> tuple[str, bool, int]:
        return self._path, self._fsync, self._compact_bytes

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._pid != os.getpid():
            # forked while no thread of the parent was inside a verb: the replay it copied is whole
            self._init_process_state(self._log if self._in_verb == 0 else None)
        with self._mutex:
            self._in_verb += 1
            try:
                yield
            finally:
                self._in_verb -= 1

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            raise self._os_error(err, action) from err

    def _os_error(self, err: OSError, action: str) -> StorageError:
        detail = f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
        if action == "write to" and err.errno in _FULL_OR_READ_ONLY:  # became so under running workers?
            return StorageUnavailableError(
                f"cannot write to storage file {self._path}: [Errno {err.errno}] {detail}; free disk space "
                "(or raise the file size limit, `ulimit -f`), or make the file writable: workers keep their "
                "results in memory and retry for a while (ORCHARD_STORAGE_PATIENCE)")
        if isinstance(err, PermissionError):
            return StorageError(
                f"permission denied trying to {action} storage file {self._path}: {detail}; check "
                "the permissions of the file, its .lock file and its directory, or pass another --storage path"
            )
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return StorageError(f"no space left to {action} storage file {self._path}: {detail}; free some disk space")
        if err.errno in (errno.EIO, getattr(errno, "ESTALE", errno.EIO), errno.ETIMEDOUT):
            return StorageUnavailableError(
                f"could not {action} storage file {self._path}: {detail}; is its filesystem (NFS?) reachable?")
        if err.errno in OUT_OF_FILES:  # other workers of this process hold them for a moment
            return StorageUnavailableError(
                f"could not {action} storage file {self._path}: {detail}; this process has as many files "
                "open as it may (ulimit -n): raise the limit or run fewer workers; workers retry for a while")
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
        if not self._folder_made:
            with self._translate("create the directory of"):
                os.makedirs(os.path.dirname(self._path), exist_ok=True)
            self._folder_made = True
        try:
            acquired = locks.acquire(self._lock, self._timeout, 0.005 if self._lock_kind == "kernel" else 0.05,
                                          while_waiting=self._catch_up)
        except OSError as err:
            raise self._lock_error(err) from err
        if not acquired:
            raise StorageUnavailableError(self._timeout_message())

    def _catch_up(self) -> None:
        """Replay, without the lock, what others append while we wait for it: little is left under it.

        Damage, and a file this process cannot read now (a damaged header a waiting repair is about
        to rewrite), are left for the locked replay to judge.
        """
        with contextlib.suppress(StorageError):
            self._log.catch_up(keep=False)

    def _lock_error(self, err: OSError) -> StorageError:
        if isinstance(err, FileNotFoundError) and self._log.has_replayed:  # its folder was deleted (rm -r runs/)
            return self._log.vanished("deleted with its folder")
        if err.errno == errno.ELOOP and os.path.islink(self._lock.path):
            return StorageError(
                f"lock file {self._lock.path} is a symbolic link; Orchard never makes one and does not "
                "lock the file it names (planted in a shared folder, it names another user's file): "
                "remove the link")
        unsupported = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
        if self._lock_kind == "kernel" and err.errno in unsupported:
            return StorageUnavailableError(
                f"cannot lock {self._lock.path}: {err.strerror}; this filesystem does not support "
                f"flock (NFS/Lustre?): use pickle://{self._path}?lock=soft"
            )
        if err.errno == errno.EISDIR:  # made by hand (a clean-up script?): workers wait for its removal
            return StorageUnavailableError(f"lock file {self._lock.path} is a directory, which Orchard never "
                                           "makes: remove it (rmdir); workers retry for a while")
        return self._os_error(err, "lock")

    def _timeout_message(self) -> str:
        hint = ("a stale lock file left by a crashed process on another host (it is broken once a waiter has "
                f"watched it unchanged for {self._stale_lock_after:g} s)" if self._lock_kind == "soft"
                else "a filesystem without working flock (NFS, Lustre): use ?lock=soft there")
        return (
            f"could not lock storage file {self._path}: the lock did not change hands for "
            f"{self._timeout:g} s (lock file {self._lock.path}). Likely causes: another process holding the lock for a long "
            f"time (a hung or stopped Orchard process, or a very large file being compacted); "
            f"{hint}. Remedies: find the holder (e.g. `fuser {self._lock.path}`), wait and retry, "
            f"raise the wait with pickle://{self._path}?timeout=SECONDS, or, if no Orchard "
            "process uses the file, delete the lock file"
        )

    # -- the two hooks of TableStorage ------------------------------------------------

    def _read(self, query: Query[_T]) -> _T:
        with self._exclusive(), self._translate("read"):
            self._log.refresh(self._locked)
            return query(self._log.table)

    def _write(self, verb: Verb[_T]) -> _T:
        """Run ``verb`` on the up-to-date table under the lock and append the records it produced.

        The log is caught up before the lock is taken, so the holder replays
        only what was appended while it waited.
        """
        with self._exclusive(), self._translate("write to"):
            owns, holds = self._fences()
            fd = self._log.catch_up(keep=owns is None)
            try:
                with self._locked():
                    now = self.now()
                    opened, fd = fd, None  # commit() closes it
                    return self._log.commit(lambda table: verb(table, now), owns, opened, holds)
            finally:
                if fd is not None:
                    os.close(fd)
                self._log.flush()

    def _replay_token(self) -> str:
        return self._log.token


_OPEN: weakref.WeakSet[PickledStorage] = weakref.WeakSet()  # this process's storages, for the fork hook
_INHERITED: dict[tuple[str, bool, int], LogFile] = {}  # in a forked child: the parent's whole replays, by file


class _NoLog:
    @staticmethod
    def forked() -> None:
        return None


_NO_LOG = _NoLog()


def _offer_replays_to_the_child() -> None:
    """In a forked child: the replays of storages that were in no verb at the fork, for storages opened here."""
    _INHERITED.clear()
    for storage in list(_OPEN):
        if storage._in_verb == 0:
            _INHERITED.setdefault(storage._log_key(), storage._log)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_offer_replays_to_the_child)


#: Write errors retried like an outage: a full disk or quota, a file size limit (``ulimit -f``, the
#: filesystem's largest file: EFBIG), a read-only file or filesystem.
_FULL_OR_READ_ONLY = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EROFS,
                                errno.EACCES, errno.EPERM})


def _check_not_a_lock_file(path: str) -> None:
    """Refuse a path that is another storage's lock file, or whose lock file is another storage's data.

    A process taking a kernel lock moves aside what it finds written in the lock file: the other
    storage's data, had the two been allowed (before, a soft lock waiter deleted it as a stale marker).
    """
    if path.endswith(".lock") and fileformat.is_log_file(path[: -len(".lock")]):
        raise ConfigurationError(f"storage path {path} is the lock file of storage {path[: -len('.lock')]}; "
                                 "give the storage's own path, or another file name")
    if fileformat.is_log_file(f"{path}.lock"):
        raise ConfigurationError(f"the lock file {path}.lock of storage {path} holds another storage's data (a "
                                 f"process used it as its storage path?); move {path}.lock to another name")


def _validated(lock: str, timeout: float, fsync: bool, compact_bytes: int, stale_lock_after: float) -> str:
    """Check the options; return their URI query form (empty for the defaults)."""
    if lock not in _LOCKS:
        raise ConfigurationError(f"unknown lock {lock!r} for a pickle storage; valid: {', '.join(_LOCKS)}")
    for name, value in (("timeout", timeout), ("compact_bytes", compact_bytes), ("stale_lock_after", stale_lock_after)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigurationError(f"pickle storage option {name}={value!r} must be a positive number")
    query = [f"lock={lock}"] if lock != "kernel" else []
    query += [f"timeout={float(timeout):g}"] if float(timeout) != 60.0 else []
    query += [] if fsync else ["fsync=0"]
    return "?" + "&".join(query) if query else ""
