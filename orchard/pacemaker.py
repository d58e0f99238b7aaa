"""The pacemaker: one thread that keeps a worker's reservations alive.

A reservation is held only as long as its heartbeat keeps changing; the
pacemaker writes it every ``heartbeat`` seconds while the worker evaluates.
When the storage says the reservation is gone (another worker judged it lost),
the pacemaker tells the worker at once so it can stop the evaluation.

When no heartbeat of a reservation has landed for ``doubt_after`` seconds
(two beats by default: this process was frozen, or the storage is
unreachable), other workers are about to judge the lease lost, or already
have, and may start the trial again. The pacemaker then tells the worker to
*hold* the evaluation (a script's process group is paused) before it asks the
storage again, and to let it go on only once a heartbeat lands: two attempts
of one trial never run side by side. The pacemaker tries once per beat and
never blocks in retries, so an outage cannot keep it from holding.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from orchard.clock import SYSTEM_CLOCK, Clock
from orchard.errors import ReservationLostError, StorageError, TrialNotFoundError
from orchard.leases import give_back
from orchard.storages.base import BaseStorage
from orchard.trial import Trial

__all__ = ["Evaluation", "Pacemaker"]

log = logging.getLogger(__name__)

#: Seconds between two looks of an evaluation's stop watch at whether its caller asked to stop.
_STOP_LOOK = 0.1


class Pacemaker:
    """One daemon thread that heartbeats every reservation it watches.

    Started on the first :meth:`watch`; beats each watched trial ``every`` seconds
    after it was reserved and after each beat, so a watched trial's heartbeat is
    never older than ``every`` plus one storage write. Beats follow each trial's
    own reservation, not the thread's start: workers started together do not all
    write at the same instant, and a trial shorter than ``every`` is never beaten. A trial
    found no longer reserved by ``worker``, or gone (deleted with its experiment), is dropped,
    handed to ``on_lost`` (from the heartbeat thread) and reported by :meth:`unwatch`. A heartbeat
    counts from when it was *sent*. A trial none of whose heartbeats sent in the last
    ``doubt_after`` seconds of this process's monotonic clock has landed (default
    ``2 × every``, one beat before others may judge the lease lost) is handed to
    ``on_doubt(trial_id, True)`` before the next try (it returns False when the
    evaluation cannot be paused, which the log then says), and to
    ``on_doubt(trial_id, False)`` once a heartbeat sent within ``doubt_after``
    lands (a later answer only triggers another beat at once); while in doubt, the
    hold is repeated every watchdog tick. :attr:`failed_at` tells when a heartbeat
    last failed to reach the storage. Give it a storage that does
    not retry: it tries again every beat by itself. All its times are read from
    and waited on ``clock`` (default: the system's).
    """

    def __init__(self, storage: BaseStorage, worker: str, every: float,
                 on_lost: Callable[[str], None] | None = None,
                 on_doubt: Callable[[str, bool], object] | None = None,
                 doubt_after: float | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._storage, self._worker, self._every = storage, worker, every
        self._clock = clock
        self._on_lost, self._on_doubt = on_lost, on_doubt
        self._doubt_after = 2.0 * every if doubt_after is None else doubt_after
        self._confirmed: dict[str, float] = {}  # trial id -> when its lease was last known good
        self._doubted: set[str] = set()
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._due: dict[str, float] = {}  # trial id -> when its next beat is due (monotonic)
        self._lost: dict[str, bool] = {}  # trial id -> whether it was found deleted (not taken back)
        #: When (monotonic) a heartbeat last failed to reach the storage (``None``: never). The
        #: storage was unreachable from here then: other owners' heartbeats may not have landed
        #: either, which the worker's lease observer must not count against them.
        self.failed_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._doubt_lock = threading.Lock()  # holds and resumes happen in the order they were decided

    def watch(self, trial_id: str, since: float | None = None) -> None:
        """Start heartbeating ``trial_id``, reserved by a call sent at ``since`` (monotonic; default: now).

        Its lease is no fresher than that call: a process frozen before the answer was read may
        wake with the lease judged lost meanwhile (:meth:`confirm` asks the storage then).
        """
        with self._lock:
            self._watched.add(trial_id)
            self._lost.pop(trial_id, None)
            self._confirmed[trial_id] = since = self._clock.monotonic() if since is None else since
            self._due[trial_id] = since + self._every
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="orchard-pacemaker", daemon=True)
                self._thread.start()
                # a heartbeat can block (a server being selected, a file lock): doubts are checked apart
                self._watchdog = threading.Thread(target=self._watch_doubts, name="orchard-lease-watchdog",
                                                  daemon=True)
                self._watchdog.start()

    def confirm(self, trial_id: str) -> bool:
        """Whether the watched ``trial_id`` may be evaluated now: False if it was found taken back.

        A lease confirmed within ``doubt_after`` is taken as ours; an older one (the process froze
        between asking for the reservation and watching it) is heartbeaten at once. A storage that
        does not answer leaves it to the watchdog, which holds the evaluation as it starts.
        """
        with self._lock:
            confirmed = self._confirmed.get(trial_id)
        if confirmed is None or self._clock.monotonic() - confirmed <= self._doubt_after:
            return True
        if self._beat_once(trial_id):
            return True
        log.warning("trial %s was taken back (or deleted) while this process was stopped after reserving it: "
                    "not evaluated here", trial_id)
        return False

    def unwatch(self, trial_id: str) -> bool:
        """Stop heartbeating ``trial_id``; return whether its reservation was found lost."""
        with self._lock:
            self._watched.discard(trial_id)
            self._due.pop(trial_id, None)
            self._confirmed.pop(trial_id, None)
            self._doubted.discard(trial_id)
            return self._lost.pop(trial_id, None) is not None

    def is_lost(self, trial_id: str) -> bool:
        """Whether a heartbeat found ``trial_id`` no longer reserved by this worker (or deleted)."""
        with self._lock:
            return trial_id in self._lost

    def lost_error(self, trial_id: str, worker: str) -> ReservationLostError | None:
        """Why ``worker`` may not record ``trial_id``'s result: a heartbeat found it taken or deleted."""
        with self._lock:
            deleted = self._lost.get(trial_id)
        if deleted is None:
            return None
        if not deleted:
            return ReservationLostError.dropped(trial_id, worker)
        return ReservationLostError(f"trial {trial_id} was deleted while worker {worker} evaluated it (its "
                                    "experiment removed by `orchard db rm`, or the database emptied); the "
                                    "result was dropped")

    def release_at_exit(self) -> None:
        """Give back the trials still watched when this interpreter exits normally (``interrupted``, not counted).

        For trials handed to a caller who may never finish them (ask-and-tell: a script or
        notebook that ends after ``suggest``): each would otherwise stay reserved until its
        lease ran out and then count as a lost attempt. ``os._exit`` and signals skip it.
        """
        atexit.register(_release_watched, weakref.ref(self))

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join()

    def _beat(self) -> None:
        pause = self._every  # a trial watched meanwhile is due no sooner than this
        while not self._clock.wait(self._stop, pause):
            now = self._clock.monotonic()
            with self._lock:
                due = [trial_id for trial_id, at in self._due.items() if at <= now]
                for trial_id in due:
                    self._due[trial_id] = now + self._every
            for trial_id in due:
                self._beat_once(trial_id)
            with self._lock:
                next_due = min(self._due.values(), default=None)
            pause = self._every if next_due is None else min(self._every, max(0.0, next_due - self._clock.monotonic()))

    def _beat_once(self, trial_id: str) -> bool:
        """Heartbeat ``trial_id`` once; False if it was found taken back or deleted (handed to ``on_lost``).

        A storage that fails is transient: :attr:`failed_at` is set, the failure logged, and the next
        beat tries again (True: not known lost).
        """
        sent = self._clock.monotonic()
        try:
            self._storage.heartbeat_trial(trial_id, self._worker)
        except (ReservationLostError, TrialNotFoundError) as err:  # taken back, or deleted with it
            self._mark_lost(trial_id, deleted=isinstance(err, TrialNotFoundError))
            return False
        except StorageError as err:
            self.failed_at = self._clock.monotonic()
            log.warning("heartbeat of trial %s failed: %s", trial_id, err)
            return True
        self._confirm(trial_id, sent)
        return True

    def _watch_doubts(self) -> None:
        while not self._clock.wait(self._stop, min(self._every, self._doubt_after) / 8):
            with self._lock:
                watched = list(self._watched)
            for trial_id in watched:
                self._doubt_if_overdue(trial_id)

    def _doubt_if_overdue(self, trial_id: str) -> None:
        with self._doubt_lock:
            with self._lock:
                confirmed = self._confirmed.get(trial_id)
                already = trial_id in self._doubted
                overdue = (confirmed is not None and not already
                           and self._clock.monotonic() - confirmed > self._doubt_after)
                if overdue:
                    self._doubted.add(trial_id)
            if already and self._on_doubt is not None:
                # hold again every tick: whatever woke a frozen node (SIGCONT to every process) may
                # have resumed the evaluation after this thread paused it
                self._on_doubt(trial_id, True)
            if not overdue:
                return
            held = self._on_doubt(trial_id, True) if self._on_doubt is not None else False
            if held is False:
                log.warning("no heartbeat of trial %s landed for over %g s (frozen, or the storage was down), "
                            "and its evaluation cannot be paused (a Python objective in the worker's own thread, "
                            "or one the caller evaluates): it goes on, and its result is refused if another "
                            "worker has taken the trial meanwhile", trial_id, self._doubt_after)
            else:
                log.warning("no heartbeat of trial %s landed for over %g s (frozen, or the storage was "
                            "down): holding its evaluation until the storage confirms the reservation",
                            trial_id, self._doubt_after)

    def _confirm(self, trial_id: str, sent: float) -> None:
        """A heartbeat sent at ``sent`` landed: the lease was ours *when it was sent*, no later.

        The write took effect somewhere between ``sent`` and its answer, so no observer
        can judge the lease lost before ``sent + stale_after``. An answer that arrives
        more than ``doubt_after`` after ``sent`` (this process was frozen with the answer
        on its way, or the storage answered that late) proves nothing about now:
        the evaluation stays held and the trial is beaten again at once.
        """
        with self._doubt_lock:
            with self._lock:
                if trial_id not in self._watched:
                    return
                self._confirmed[trial_id] = max(self._confirmed.get(trial_id, sent), sent)
                now = self._clock.monotonic()
                if now - sent > self._doubt_after:
                    self._due[trial_id] = now
                    return
                doubted = trial_id in self._doubted
                self._doubted.discard(trial_id)
            if doubted and self._on_doubt is not None:
                self._on_doubt(trial_id, False)

    def _mark_lost(self, trial_id: str, deleted: bool = False) -> None:
        with self._lock:
            if trial_id not in self._watched:
                return  # finished meanwhile
            self._watched.discard(trial_id)
            self._due.pop(trial_id, None)
            self._lost[trial_id] = deleted
        if self._on_lost is not None:
            self._on_lost(trial_id)


class Evaluation:
    """The evaluation a worker runs now, as its :class:`Pacemaker` and its caller's stop request reach it.

    Give :meth:`cancel` as the pacemaker's ``on_lost`` and :meth:`hold` as its ``on_doubt``;
    they act on the evaluator only while it evaluates the trial they are called for (the
    worker evaluates within :meth:`running`), and never raise: the heartbeat thread must
    survive a faulty evaluator. Once ``stop`` is set during an evaluation, the evaluation
    is stopped if it can be (:meth:`stopped` then says so).

    Args:
        evaluate: the worker's evaluator; its ``cancel(trial)`` and ``hold(trial, held)``, if it
            has them, answer False when they cannot act (see :class:`~orchard.objective.TrialEvaluator`).
        worker: the worker's name, for the log.
        stop: the caller's request to stop a worker running as its thread (``None``: none).
    """

    def __init__(self, evaluate: Callable[[Trial], object], worker: str,
                 stop: threading.Event | None = None) -> None:
        self.evaluate, self.worker, self._stop = evaluate, worker, stop
        self.trial: Trial | None = None
        self._stopping: str | None = None  # the trial whose evaluation the stop request asked to stop
        self._stopped: str | None = None  # ... and whose evaluator said it stops it (not asked again)
        self._closed = threading.Event()
        self._watch: threading.Thread | None = None

    @contextlib.contextmanager
    def running(self, trial: Trial) -> Iterator[None]:
        """While the block evaluates ``trial``, the callbacks and the stop request reach its evaluation."""
        self.trial, self._stopping, self._stopped = trial, None, None
        if self._stop is not None and self._watch is None:
            self._watch = threading.Thread(target=self._stop_when_asked, args=(self._stop,),
                                           name="orchard-stop-watch", daemon=True)
            self._watch.start()
        try:
            yield
        finally:
            self.trial = None

    def stopped(self, trial_id: str, error: Mapping[str, Any] | None) -> bool:
        """Whether the stop request stopped ``trial_id``'s evaluation (its outcome's ``error`` says it was cancelled).

        An evaluation that ended by itself as the request came keeps its outcome.
        """
        return self._stopping == trial_id and error is not None and error.get("reason") == "cancelled"

    def close(self) -> None:
        """End the stop request's watch (the worker evaluates no more)."""
        self._closed.set()

    def _stop_when_asked(self, stop: threading.Event) -> None:
        """Once ``stop`` is set, ask the evaluator to stop the evaluation under way until it can
        (a child not forked yet cannot), until :meth:`close`."""
        while not SYSTEM_CLOCK.wait(self._closed, _STOP_LOOK):
            trial = self.trial
            if not stop.is_set() or trial is None or self._stopped == trial.id:
                continue
            # marked before the call: the killed evaluation's end can reach the worker before the call
            # returns (it still looks for the child's strays in /proc), which recorded it broken
            self._stopping = trial.id
            if self._tell(trial, "cancel") is not False:
                self._stopped = trial.id

    def hold(self, trial_id: str, held: bool) -> object:
        """Pause the evaluation while its lease is in doubt, or resume it; False when it cannot be paused."""
        trial = self.trial
        if trial is None or trial.id != trial_id:
            return False  # evaluated by the caller (ask and tell), or finished meanwhile
        return self._tell(trial, "hold", held)

    def cancel(self, trial_id: str) -> None:
        """The reservation was found lost: stop its evaluation now if it can be (its result is dropped)."""
        trial = self.trial
        if trial is None or trial.id != trial_id:
            return  # finished meanwhile: the worker's finish() drops the result
        if self._tell(trial, "cancel") is False:
            log.warning("worker %s lost its reservation of trial %s; its evaluation cannot be stopped (it runs "
                        "in the worker's own thread), so it runs to its end and its result is dropped. Set "
                        "trial_timeout to evaluate in a child process, which is stopped at once", self.worker, trial_id)
        else:
            log.warning("worker %s lost its reservation of trial %s; stopped its evaluation (its result is "
                        "dropped)", self.worker, trial_id)

    def _tell(self, trial: Trial, method: str, *args: Any) -> object:
        """Call the evaluator's ``method(trial, *args)``; return its answer, or False if it has none or it failed."""
        call = getattr(self.evaluate, method, None)
        if call is None:
            return False
        try:
            return call(trial, *args)
        except Exception as err:  # noqa: BLE001 -- the heartbeat thread must survive a faulty evaluator
            log.warning("%s of trial %s failed: %s: %s", method, trial.id, type(err).__name__, err)
            return False


def _release_watched(ref: weakref.ref[Pacemaker]) -> None:
    pacemaker = ref()
    if pacemaker is None:
        return
    pacemaker.close()
    with pacemaker._lock:
        held = dict.fromkeys(sorted(pacemaker._watched), pacemaker._worker)
    released, _ = give_back(pacemaker._storage, held)  # what it kept is logged: its lease runs out instead
    if released:
        log.warning("gave back %d trial(s) suggested and never observed, at exit (interrupted, not counted as "
                    "attempts): %s", len(released), ", ".join(released))
