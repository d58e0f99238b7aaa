"""The inter-process locks of the pickle storage.

``kernel``: an exclusive ``flock`` on the lock file, dropped by the kernel when
its holder dies. ``soft``: :class:`filelock.SoftFileLock`, an existence marker
for filesystems without working ``flock`` (NFS, Lustre), plus breaking of
markers whose holder is gone. Both are polled with a short randomized backoff,
since verbs hold the lock for well under a millisecond.

A waiter gives up only when the lock has not *changed hands* for the whole
timeout: a process that takes a kernel lock touches the lock file's mtime (at
most every 50 ms; the soft lock writes a new marker each time), and a waiter
that sees the lock file change restarts its timeout. Between attempts a
waiter may do useful work (the storage catches up on its log, so that little
is left to replay under the lock however long the wait was). A hung or stopped holder is still detected after the timeout,
but a process that loses many races while hundreds of others make progress
(a hundred workers starting on two busy cores) keeps waiting instead of
dying. Waiting in the kernel's ``flock`` queue instead of polling was
measured, and rejected: on an oversubscribed machine every hand-over then
waits for the woken process to be scheduled while the lock idles, and p99
waits grew 3 to 5 times (see docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import filelock

from orchard.storages.pickled.fileformat import MAGIC

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLockLike", "KernelLock", "SoftLock", "acquire", "make_lock", "pid_alive", "progress_mark"]

log = logging.getLogger(__name__)

#: A process marks its acquisitions of a kernel lock at most this often (seconds).
_TOUCH_EVERY = 0.05
#: A waiter does its work between attempts at most this often (seconds): with hundreds of waiters
#: polling every few milliseconds, catching up on every attempt cost more CPU than it saved.
_WORK_EVERY = 0.02
#: A waiter's pauses (between attempts, and between bouts of work) grow to this share of the time it has
#: already waited, up to _LONGEST_PAUSE: a wait of D seconds then costs about log(D) attempts, not
#: D / max_delay. With hundreds of waiters a wait lasts as long as the queue, and fixed-rate polling
#: made the fleet's polling grow as W² (a fifth of the CPU of 128 workers on 2 cores went to it).
_PATIENCE = 0.1
#: At most 50 ms, 512 workers on 2 cores polled and caught up 20 times a second each through waits of
#: 12-18 s (median): 54-85 ms of CPU per trial each went to polling, the cores were saturated, and lock
#: holders waited for them (hold p99 0.4 s). With 0.5 s, a lock freed while every waiter pauses is taken
#: within 0.5 s / W on average, and a wait adds at most a tenth of itself (docs/scaling.md).
_LONGEST_PAUSE = 0.5


#: The lock file is opened without following a symbolic link: one planted at its name in a shared folder
#: would make the process create, lock and touch whatever file the link names.
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: What a soft lock writes into its marker (filelock's record: pid, host, and a start token).
_SOFT_MARKER = re.compile(rb"[0-9]+\n[^\n]+\n(?:[0-9]+\n)?")


class FileLockLike(Protocol):
    """What the storage needs from a lock: one non-blocking attempt, and release."""

    path: str

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class KernelLock:
    """An exclusive ``flock`` on the lock file; the kernel drops it when the holder dies.

    The same lock as :class:`filelock.FileLock` on POSIX (the two interoperate),
    without its per-acquire bookkeeping, which costs ~50 µs against ~2 µs here.
    """

    def __init__(self, path: str, stale_after: float = 30.0) -> None:
        self.path = path
        self._fd: int | None = None
        self._locked: os.stat_result | None = None  # the lock file as fstat saw it when this process locked it
        self._touched = -math.inf
        self._stale_after = stale_after
        self._marker: SoftLock | None = None  # judges a soft lock's marker met in the lock file

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return whether this call took it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o666)  # a symbolic link: ELOOP
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        try:
            locked = os.fstat(fd)
            same = os.path.samestat(locked, os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:  # the lock file was deleted or replaced between open and flock
            os.close(fd)
            return False
        if locked.st_size > 0:  # a kernel lock file stays empty: a soft lock's marker, or foreign bytes
            try:
                content = os.pread(fd, 1024, 0)
                if _SOFT_MARKER.fullmatch(content):  # its holder is inside
                    self._wait_for_marker()
                else:
                    self._set_aside(content, locked.st_size)
            finally:
                os.close(fd)
            return False
        self._fd, self._locked = fd, locked
        now = time.monotonic()
        if now - self._touched >= _TOUCH_EVERY:  # throttled: a metadata write per verb costs on NFS
            self._touched = now
            with contextlib.suppress(OSError):
                os.utime(fd)  # tells waiters that the lock changed hands (see progress_mark)
        return True

    def _wait_for_marker(self) -> None:
        """Another process holds the storage through a soft lock: wait for it, breaking its marker if stale."""
        if self._marker is None:
            self._marker = SoftLock(self.path, self._stale_after)
            log.warning("lock file %s holds a soft lock's marker: another process uses this storage with "
                        "?lock=soft while this one uses the kernel lock; this process waits for it, but give "
                        "every process the same lock mode", self.path)
        self._marker.break_if_stale()

    def _set_aside(self, content: bytes, size: int) -> None:
        """Move aside a lock file something other than a lock wrote into, while this process holds its flock.

        Only the name moves (a symbolic link's target is left alone), to one
        fixed name, so that nothing a user wrote there by mistake is destroyed
        and repeated writes keep one file. A process waiting on the old file
        finds it replaced and retries on a new one, as when a holder deletes it.
        """
        aside = f"{self.path}.foreign"
        try:
            os.replace(self.path, aside)
            done = f"moved it to {aside}"
        except FileNotFoundError:
            return
        except OSError:  # e.g. a directory of that name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            done = "removed it"
        writer = ("a process used it as its storage path: give that storage another path"
                  if content.startswith(MAGIC) else f"another program wrote into it: do not write into {self.path}")
        log.warning("lock file %s held %d bytes that no lock writes (%r); %s while workers run. This process %s "
                    "and goes on (this storage's data is never in its lock file)",
                    self.path, size, content[:80], writer, done)

    def holds(self) -> bool:
        """Whether this process holds the lock and the lock file is still the one it locked.

        A lock file deleted (or replaced) under its holder lets the next process
        lock a new file of the same name while the holder still writes.
        """
        if self._fd is None or self._locked is None:
            return False
        try:  # the locked file's identity is the one fstat gave when it was taken: one stat per call
            return os.path.samestat(self._locked, os.stat(self.path))
        except OSError:
            return False

    def release(self) -> None:
        """Drop the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child may share the descriptor
            finally:
                os.close(fd)


class _PortableKernelLock:  # pragma: no cover - platforms without fcntl (Windows)
    """:class:`filelock.FileLock` where ``fcntl`` is missing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = filelock.FileLock(path, thread_local=False)

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie counts as dead)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    try:  # a killed but unreaped child still answers kill(0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class SoftLock:
    """:class:`filelock.SoftFileLock` that breaks stale markers, and can tell whether it still holds.

    filelock (3.22 and later) writes the holder's pid and host into the marker,
    plus a random nonce. A marker is stale when its holder is a dead process on
    this host, or when this process has watched it stay exactly the same
    (inode, mtime, content) for ``stale_after`` seconds of its own monotonic
    clock (verbs hold the lock for milliseconds). The marker's mtime is never
    compared with this host's clock: the file server's clock and ours may
    disagree by minutes. Breaking renames the marker to a unique name first,
    so of several breakers only one wins, and puts it back if what it renamed
    turns out to be a fresh marker. A holder whose marker was broken learns it
    from :meth:`owns` (its marker's content is gone), which the storage checks
    before it appends.
    """

    def __init__(self, path: str, stale_after: float) -> None:
        self.path = path
        self.stale_after = stale_after
        self._lock = filelock.SoftFileLock(path, thread_local=False)
        self._mine: bytes | None = None  # the content of the marker this lock wrote (unique: a nonce)
        self._watched: tuple[tuple[int, int, bytes], float] | None = None  # marker seen, since (monotonic)

    def try_acquire(self) -> bool:
        """Take the lock if it is free (breaking a stale marker first); return whether taken.

        Raises:
            OSError: ``ELOOP``, the lock file is a symbolic link (never a marker: its target is not read).
        """
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            if os.path.islink(self.path):
                raise OSError(errno.ELOOP, "the lock file is a symbolic link", self.path) from None
            self.break_if_stale()
            return False
        self._mine = _read_marker(self.path)
        return True

    def owns(self) -> bool:
        """Whether the marker is still the one this lock wrote (it was not broken and retaken)."""
        return self._mine is not None and _read_marker(self.path) == self._mine

    def release(self) -> None:
        """Drop the lock (filelock removes the marker, only if it is still ours)."""
        self._mine = None
        self._lock.release()

    def break_if_stale(self) -> bool:
        """Remove the marker if its holder is gone; return whether this call removed it."""
        try:
            judged = os.lstat(self.path)
            with open(self.path, "rb", opener=lambda path, flags: os.open(path, flags | _NO_FOLLOW)) as f:
                content = f.read(1024)
        except OSError:  # gone, or a symbolic link: what it names is not quoted in a warning
            return False
        if not self._is_stale(judged, content):
            return False
        aside = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except OSError:
            return False  # another breaker won, or the holder released it
        try:
            taken = os.lstat(aside)
            if (taken.st_ino, taken.st_mtime_ns) != (judged.st_ino, judged.st_mtime_ns):
                with contextlib.suppress(OSError):
                    os.link(aside, self.path)  # a fresh marker replaced the stale one: put it back
                return False
            log.warning("broke stale lock %s (holder record: %r)", self.path, content.decode(errors="replace"))
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside)

    def _is_stale(self, marker: os.stat_result, content: bytes) -> bool:
        if self._unchanged_for(marker, content) > self.stale_after:
            return True
        lines = content.decode(errors="replace").splitlines()
        if len(lines) < 2 or not lines[0].isdigit() or lines[1] != socket.gethostname():
            return False  # no owner recorded (yet), or a holder on another host: wait for the age limit
        pid = int(lines[0])
        return 0 < pid < 2**31 and not pid_alive(pid)

    def _unchanged_for(self, marker: os.stat_result, content: bytes) -> float:
        """Seconds of this process's monotonic clock for which the marker has stayed the same."""
        seen, now = (marker.st_ino, marker.st_mtime_ns, content), time.monotonic()
        if self._watched is None or self._watched[0] != seen:
            self._watched = (seen, now)
        return now - self._watched[1]


def _read_marker(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1024)
    except OSError:
        return None


def make_lock(kind: str, path: str, stale_after: float) -> FileLockLike:
    """Return a ``"kernel"`` or ``"soft"`` lock on ``path``."""
    if kind == "soft":
        return SoftLock(path, stale_after)
    if fcntl is not None:
        return KernelLock(path, stale_after)
    return _PortableKernelLock(path)  # pragma: no cover - Windows


def progress_mark(path: str) -> tuple[int, int] | None:
    """What changes whenever the lock at ``path`` changes hands: the lock file's inode and mtime."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def acquire(
    lock: FileLockLike, timeout: float, max_delay: float, while_waiting: Callable[[], object] | None = None
) -> bool:
    """Poll ``lock`` with a randomized exponential backoff.

    Args:
        lock: the lock to take.
        timeout: seconds without a hand-over after which to give up; the
            timeout restarts whenever the lock is seen to change hands.
        max_delay: the longest pause between two attempts while the wait is short;
            a waiter that has waited long pauses up to a tenth of its wait
            (at most ``_LONGEST_PAUSE``), so a long queue is not polled as W².
        while_waiting: called between attempts, at most every ``_WORK_EVERY``
            seconds (or a tenth of the wait so far), e.g. to catch up on the log
            without the lock, so that little is left to do once it is held.

    Returns:
        Whether the lock was taken.

    Raises:
        OSError: the lock file cannot be created or locked at all.
    """
    start = time.monotonic()
    deadline = start + timeout
    seen = progress_mark(lock.path)
    delay = 1e-4
    caught_up = -math.inf
    while not lock.try_acquire():
        patience = min(_LONGEST_PAUSE, _PATIENCE * (time.monotonic() - start))
        if while_waiting is not None and time.monotonic() - caught_up >= max(_WORK_EVERY, patience):
            while_waiting()
            caught_up = time.monotonic()
        now, mark = time.monotonic(), progress_mark(lock.path)
        if mark != seen:  # another process took the lock meanwhile: the holders are alive
            seen, deadline = mark, now + timeout
        left = deadline - now
        if left <= 0:
            return False
        time.sleep(min(delay * random.uniform(0.5, 1.0), left))
        delay = min(delay * 2, max(max_delay, patience))
    return True
