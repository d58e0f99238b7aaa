"""The worker's side of pruning: store each report, reach the verdict, stop what ignores it.

A :class:`Judge` belongs to one worker. For each report of the trial it
evaluates it makes one durable storage write (``report_trial``, refused if the
worker lost the reservation), refreshes its view of the experiment, and asks
the experiment's pruner for a verdict on the trial's stored curve against the
other trials' stored curves. Nothing else is consulted, so any worker holding
the same history reaches the same verdict: there is no scheduler.

Reports from a child process (a script under ``orchard hunt``, a Python
objective run with a time or memory limit) arrive as JSON lines in a report
file; a :class:`ReportFollower` thread reads them while the child runs, writes
each verdict back to the verdict file (see :mod:`orchard.report`), and stops the
child's process group if it goes on past a "prune" verdict.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from orchard.clock import SYSTEM_CLOCK
from orchard.errors import InvalidReportError, OrchardError, StorageError
from orchard.interruption import deferred
from orchard.pruners import BasePruner, NopPruner, Verdict
from orchard.report import Reported, check_report, open_regular, replace_file, shown
from orchard.storages.base import BaseStorage
from orchard.trial import MAX_REPORTS_PER_TRIAL, ReportValue, Trial, TrialStatus

__all__ = [
    "MAX_LINE_WARNINGS", "MAX_REPORT_LINE", "Judge", "ReportFollower", "current_judge", "judging", "stored_value",
]

log = logging.getLogger(__name__)

#: Seconds between two reads of a report file that gave no line; after a read that did, the next comes
#: after :data:`FOLLOW_BUSY`, doubling back up to this: a script that waits for each verdict waits less.
FOLLOW_INTERVAL = 0.01
FOLLOW_BUSY = 0.001
#: The longest report line taken, in bytes (one with 1,000 objectives is ~30 KB); a longer one is skipped
#: unread, so a child writing gigabytes without a newline cannot exhaust its worker's memory.
MAX_REPORT_LINE = 1 << 20
#: Problems with a report file (a line skipped or refused, the file replaced) a worker warns about one by
#: one; the rest are counted and their number said when the child ends, so junk written there (binary
#: output, a file rewritten whole at each step) cannot flood the worker's log.
MAX_LINE_WARNINGS = 10
#: Answers to the latest report lines that carry an ``"id"`` kept in the verdict file (each waiting
#: :func:`orchard.report` call finds its own, whatever lines other threads wrote since).
MAX_ANSWERS = 64


class Judge:
    """Stores the reports of one worker's trials and reaches their verdicts.

    Args:
        storage: the worker's storage.
        worker: the worker's name (the owner every report write is checked against).
        trials: a callable returning the experiment's trials as last refreshed
            (the worker's history, refreshed before each verdict).
        refresh: refreshes that history.
        pruner: the experiment's pruner.
        objectives: the experiment's objectives (``None``: one); a report gives
            them by name and is stored as their vector (see :func:`stored_value`).
    """

    def __init__(self, storage: BaseStorage, worker: str, trials: Callable[[], dict[str, Trial]],
                 refresh: Callable[[], object], pruner: BasePruner,
                 objectives: Mapping[str, str] | None = None) -> None:
        self.storage, self.worker, self.pruner, self.objectives = storage, worker, pruner, objectives
        self._trials, self._refresh = trials, refresh
        self._lock = threading.Lock()
        #: The "prune" verdict of each trial that received one, by trial id.
        self.pruned: dict[str, Verdict] = {}
        #: Trials with at least one report stored by this judge.
        self.reported: set[str] = set()
        self._held: dict[str, int] = {}  # reports each of them holds, as its last write returned
        self._last_step: dict[str, int] = {}  # the step of the last of them
        self._curves = _Curves()

    def __call__(self, trial_id: str, value: Reported, step: int) -> Verdict:
        """Store ``value`` at ``step`` on ``trial_id`` and return the verdict on it.

        A trial that holds :data:`~orchard.trial.MAX_REPORTS_PER_TRIAL` reports goes on:
        later reports are neither stored nor judged (the log says so once), so a training
        that reports every batch is not broken, its result lost, at the 10,001st.

        Raises:
            ReservationLostError: the worker no longer holds the trial.
            InvalidReportError: the storage refused the report (a step not above the last), or its
                objectives are not the experiment's; nothing is stored.
        """
        kept = stored_value(trial_id, value, self.objectives, ranked=not isinstance(self.pruner, NopPruner))
        with self._lock:  # a follower thread and the worker's thread never refresh the history together
            if not all(map(math.isfinite, kept if isinstance(kept, tuple) else (kept,))):
                return self._diverged(trial_id, value, step)
            if self._held.get(trial_id, 0) >= MAX_REPORTS_PER_TRIAL:
                return self._unjudged(trial_id, step)
            stored = self.storage.report_trial(trial_id, self.worker, step, kept)
            self._held[trial_id], self._last_step[trial_id] = len(stored.reports), stored.reports[-1][0]
            self.reported.add(trial_id)
            self._refresh()
            own, others = self._curves.of(stored, self._trials())
            verdict = self.pruner.at_its_end(stored.params, self.pruner.judge(trial_id, own, others))
            if verdict.prune:
                self.pruned.setdefault(trial_id, verdict)
            # a "prune" verdict stands (the trial is recorded pruned whatever follows): a later report judged
            # "go on" answered should_prune() False, and an objective that went on had its result dropped
            return self.pruned.get(trial_id, verdict)

    def _diverged(self, trial_id: str, value: Reported, step: int) -> Verdict:
        """The verdict on a NaN or infinite report (a diverged training): "prune", at its last stored report.

        The value is not stored (a report is a finite number). Every pruner but ``none`` prunes
        on it, as Optuna's do, so a diverged training stops instead of breaking its trial.

        Raises:
            InvalidReportError: the pruner is ``none``, the trial holds no report to be pruned at, or
                ``step`` is not after its last one.
        """
        if isinstance(self.pruner, NopPruner) or not self._held.get(trial_id):
            raise InvalidReportError.bad_value(trial_id, value)
        if step <= self._last_step[trial_id]:
            raise InvalidReportError.not_after(trial_id, step, self._last_step[trial_id])
        return self.pruned.setdefault(trial_id, Verdict(True, self.pruner.name, step, reason=(
            f"value {shown(value)} at step {step} is not a finite number: the training diverged "
            "(the value is not stored)")))

    def _unjudged(self, trial_id: str, step: int) -> Verdict:
        """The answer to a report past the cap: the trial's "prune" verdict if it got one, else go on."""
        if self._held[trial_id] == MAX_REPORTS_PER_TRIAL:
            self._held[trial_id] += 1  # warned once
            log.warning("trial %s holds %d reports, the most a trial may hold; its later reports (from step %d) "
                        "are neither stored nor judged, and it goes on: report less often (e.g. every k-th step)",
                        trial_id, MAX_REPORTS_PER_TRIAL, step)
        return self.pruned.get(trial_id) or Verdict(False, self.pruner.name, step, reason=(
            f"not judged: the trial holds {MAX_REPORTS_PER_TRIAL} reports, the most a trial may hold"))

    def verdict_of(self, trial_id: str) -> Verdict | None:
        """The "prune" verdict ``trial_id`` received from this judge, if any."""
        return self.pruned.get(trial_id)

    def prune_on_stop(self, trial_id: str, storage: BaseStorage) -> bool:
        """Record ``trial_id`` pruned in ``storage`` if it received a "prune" verdict; whether it was.

        For a worker stopping (Ctrl-C, SIGTERM) in the middle of the trial: its verdict
        stands whatever stopped it, so it is not given back to be run again. One write,
        a second Ctrl-C deferred until it lands; a storage that fails it returns ``False``
        (the trial is then given back like any other).
        """
        verdict = self.pruned.get(trial_id)
        with deferred(), contextlib.suppress(StorageError):
            if verdict is not None:
                storage.prune_trial(trial_id, self.worker, verdict.to_dict())
                return True
        return False

    def forget(self, trial_id: str) -> None:
        """Drop what the judge kept of a trial once its outcome is recorded."""
        self.pruned.pop(trial_id, None)
        self.reported.discard(trial_id)
        self._held.pop(trial_id, None)
        self._last_step.pop(trial_id, None)


_Kept = tuple[Trial, tuple[Any, ...], list[tuple[int, ReportValue]]]  # the trial last seen, its reservation, its list


class _Curves:
    """Each trial's reports as one list per reservation, only ever appended to, as the history grows.

    A pruner is handed the same list for a trial from one verdict to the next, so it can extend
    what it derived from it instead of reading every report of every trial at each report
    (:class:`~orchard.pruners.base.BestSoFar`). A trial reserved again starts a new list (its
    reports start over). A trial whose record did not change since the last call costs a lookup.
    Only the trials of the latest call are kept: memory follows the history.
    """

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}

    def of(self, judged: Trial, history: Mapping[str, Trial]) -> tuple[list[tuple[int, ReportValue]],
                                                                      dict[str, list[tuple[int, ReportValue]]]]:
        """The kept list of ``judged``'s reports and those of the other trials with reports (broken ones left out)."""
        kept, others = self._kept, {}
        for tid, trial in history.items():
            entry = kept.get(tid)
            if entry is None or entry[0] is not trial:  # new or changed since the last call
                if not trial.reports or trial.status is TrialStatus.BROKEN:
                    kept.pop(tid, None)
                    continue
                entry = kept[tid] = _followed(trial, entry)
            others[tid] = entry[2]
        own = kept[judged.id] = _followed(judged, kept.get(judged.id))
        others.pop(judged.id, None)
        if len(kept) > len(others) + 1:  # trials gone from the history (an experiment deleted): forget them
            self._kept = {tid: kept[tid] for tid in (*others, judged.id)}
        return own[2], others


def _followed(trial: Trial, entry: _Kept | None) -> _Kept:
    """``entry``'s list extended by the reports ``trial`` gained, or a new one for another reservation."""
    reservation = (trial.start_time, trial.attempts, trial.worker)
    held = [] if entry is None else entry[2]
    reports, count = trial.reports, len(held)
    if entry is None or entry[1] != reservation or count > len(reports) or (count and reports[count - 1] != held[-1]):
        held = []  # another reservation's reports (they start over), or a history read again
    held.extend(reports[len(held):])  # the new reports only (the slice copies no more)
    return trial, reservation, held


def stored_value(trial_id: str, value: Reported, objectives: Mapping[str, str] | None,
                 ranked: bool = True) -> ReportValue:
    """What a report stores: a number, or with several objectives their vector, in minimisation form.

    With one declared objective (``objectives={"accuracy": "max"}``) a bare number is its value,
    in its direction, like ``{"accuracy": value}``.

    Args:
        trial_id: the reporting trial (for messages).
        value: a number, or each objective by name.
        objectives: the experiment's objectives (``None``: one objective).
        ranked: whether the pruner ranks the reports (with several objectives a bare
            number is then refused: it cannot be ranked against the others' vectors).

    The values are floats (:func:`orchard.report.check_report`); NaN and infinities stay, for the judge.

    Raises:
        InvalidReportError: names that are not exactly the experiment's objectives, names in a
            single-objective experiment, or a bare number that a pruner would have to rank.
    """
    if not isinstance(value, Mapping):
        if objectives is not None and len(objectives) > 1 and ranked:
            raise InvalidReportError.objectives_expected(trial_id, "a single number", objectives)
        if objectives is None or len(objectives) > 1:
            return value
        value = {name: value for name in objectives}  # the one declared objective, in its direction
    if objectives is None:
        raise InvalidReportError.one_objective(trial_id)
    if set(value) != set(objectives):
        raise InvalidReportError.objectives_expected(trial_id, ", ".join(map(str, value)), objectives)
    vector = tuple(-value[name] if way == "max" else value[name] for name, way in objectives.items())
    return vector if len(vector) > 1 else vector[0]


_JUDGE: contextvars.ContextVar[tuple[Judge, str] | None] = contextvars.ContextVar("orchard_judge", default=None)


def current_judge() -> tuple[Judge, str] | None:
    """The judge and trial id of the evaluation running in this thread, if the worker set one."""
    return _JUDGE.get()


@contextlib.contextmanager
def judging(judge: Judge, trial_id: str) -> Iterator[None]:
    """Make ``judge`` the one reports of ``trial_id`` go to, in this thread, for the ``with`` block."""
    from orchard.report import reporting_to

    token = _JUDGE.set((judge, trial_id))
    try:
        with reporting_to(lambda value, step: judge(trial_id, value, step).prune, judge.objectives):
            yield
    finally:
        _JUDGE.reset(token)


class ReportFollower:
    """Follows a child's report file while it runs: store, judge, answer, stop it if it ignores "prune".

    Args:
        judge: the worker's judge.
        trial_id: the trial the child evaluates.
        report_path: the file the child appends ``{"step": S, "objective": V}`` lines to.
        verdict_path: the file each verdict is written to (replaced whole).
        stop: called once, from the follower's thread, when the child is still running
            ``grace`` seconds after a "prune" verdict (it should stop the child's process group).
        grace: seconds a child has to end by itself after a "prune" verdict.
    """

    def __init__(self, judge: Judge, trial_id: str, report_path: str, verdict_path: str,
                 stop: Callable[[], None], grace: float) -> None:
        self.judge, self.trial_id = judge, trial_id
        self.report_path, self.verdict_path = report_path, verdict_path
        self._stop_child, self.grace = stop, grace
        self._file: BinaryIO | None = None  # the report file being read, held open (see _drain)
        self._partial = b""
        self._overlong = False  # skipping the rest of a line longer than MAX_REPORT_LINE
        self._done = threading.Event()
        self._pruned_event = threading.Event()
        self.skipped = 0
        self.refused = 0
        self._taken = 0  # lines read (the follower reads again sooner after a read that found some)
        self._problems = 0  # skipped, refused, replaced: warned about one by one up to MAX_LINE_WARNINGS
        self._last_step: int | None = None  # of the last report stored: a step not after it is refused here
        self._answers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()  # by line id
        self._irregular = False  # whether the report file was found not to be a regular file (said once)
        self._thread = threading.Thread(target=self._follow, name=f"orchard-reports-{trial_id[:8]}", daemon=True)

    @staticmethod
    def environment(report_path: str, verdict_path: str, trial_id: str,
                    objectives: Mapping[str, str] | None) -> dict[str, str]:
        """The variables that point a child's :func:`orchard.report` at these files, for ``trial_id``.

        The trial's id too: a worker run inside another trial (a script under ``orchard hunt``)
        inherits that one's, and the lines would name it. The experiment's declared
        ``objectives`` (always set, empty when none: never the enclosing trial's) say what a
        bare number means (:func:`orchard.report.declared_objectives`).
        """
        from orchard.report import OBJECTIVES_ENV, REPORT_ENV, TRIAL_ENV, VERDICT_ENV

        return {REPORT_ENV: report_path, VERDICT_ENV: verdict_path, TRIAL_ENV: trial_id,
                OBJECTIVES_ENV: json.dumps(dict(objectives)) if objectives else ""}

    @staticmethod
    def prepare(report_path: str, verdict_path: str) -> None:
        """Empty the files before the child starts (an earlier attempt of the trial may have left some)."""
        for path in (report_path, verdict_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        open(report_path, "ab").close()

    def __enter__(self) -> ReportFollower:
        """Start following (the files were :meth:`prepare`-d before the child started)."""
        with contextlib.suppress(OSError):  # opened now, so a child deleting it at once loses no line
            self._file = self._open()  # held across reads, closed in __exit__
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self._drain()  # lines written just before the child ended
        self._feed(b"\n")  # and its last one, complete without a newline now that its writer is gone
        if self._file is not None:
            self._file.close()
        if self._problems > MAX_LINE_WARNINGS:
            log.warning("trial %s: %d lines of %s were skipped and %d refused in all (only the first %d "
                        "problems were shown): a report line is {\"step\": S, \"objective\": V}, S "
                        "growing; append one per report",
                        self.trial_id, self.skipped, self.report_path, self.refused, MAX_LINE_WARNINGS)

    def _warn(self, message: str, *args: object) -> None:
        """Log a problem with the report file, up to :data:`MAX_LINE_WARNINGS` of them; count the rest."""
        self._problems += 1
        if self._problems <= MAX_LINE_WARNINGS:
            log.warning(message, *args)
        if self._problems == MAX_LINE_WARNINGS:
            log.warning("trial %s: further problems with %s are counted, not shown; their number is said "
                        "when the trial ends", self.trial_id, self.report_path)

    def _follow(self) -> None:
        pruned_at: float | None = None
        interval = FOLLOW_INTERVAL
        while not SYSTEM_CLOCK.wait(self._done, interval):
            taken = self._taken
            self._drain()
            interval = FOLLOW_BUSY if self._taken > taken else min(2 * interval, FOLLOW_INTERVAL)
            if self._pruned_event.is_set() and pruned_at is None:
                pruned_at = time.monotonic()
            if pruned_at is not None and time.monotonic() - pruned_at >= self.grace:
                log.info("trial %s goes on past its prune verdict; stopping it", self.trial_id)
                self._stop_child()
                return

    def _drain(self) -> None:
        """Take the lines appended to the report file since the last read.

        The file is held open, so a script that deletes or replaces it (cleaning its folder
        mid-training) loses no line: the old file is read to its end, then the new one from its
        start. A file truncated in place is read again from its start.
        """
        try:
            if self._file is not None:
                held = os.fstat(self._file.fileno())
                if held.st_size < self._file.tell():  # truncated in place
                    self._file.seek(0)
                self._feed_file(self._file)
                if os.path.samestat(os.stat(self.report_path), held):  # the same device and inode
                    return
                self._warn("trial %s: %s was deleted or replaced while the trial ran; reading the new one",
                           self.trial_id, self.report_path)
                self._file.close()
                self._file = None
                self._feed(b"\n")  # the old file's last line ends with it
            self._file = self._open()
            if self._file is not None:
                self._feed_file(self._file)
        except OSError:  # not there (deleted and not yet written again): the next read looks again
            return

    def _open(self) -> BinaryIO | None:
        """The report file opened for reading, or ``None`` (said once) if it is not a regular file.

        A script that makes it a link to ``/dev/zero`` or a FIFO would otherwise have its worker
        read without end, or block, when the trial ends; it is opened without blocking and not read.
        """
        handle = open_regular(self.report_path)
        if handle is not None:
            return handle
        if not self._irregular:
            self._irregular = True
            log.warning("trial %s: %s is not a regular file (a link to a device, a FIFO?); its reports are not "
                        "read: let orchard.report() write that file", self.trial_id, self.report_path)
        return None

    def _feed_file(self, handle: BinaryIO) -> None:
        while chunk := handle.read(MAX_REPORT_LINE):
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if self._overlong:  # the end of a line skipped already
                self._overlong = False
            elif len(line) > MAX_REPORT_LINE:
                self._skip_overlong()
            elif line.strip():
                self._take(line)
        if len(self._partial) > MAX_REPORT_LINE:
            if not self._overlong:
                self._skip_overlong()
            self._overlong, self._partial = True, b""

    def _skip_overlong(self) -> None:
        self.skipped += 1
        self._warn("trial %s: skipped a line of %s longer than %d bytes (a report line is one small JSON "
                   "object)", self.trial_id, self.report_path, MAX_REPORT_LINE)

    def _take(self, line: bytes) -> None:
        self._taken += 1
        parsed = _parse(line, self.trial_id)
        if isinstance(parsed, str):
            self.skipped += 1
            self._warn("trial %s: skipped a line of %s: %s", self.trial_id, self.report_path, parsed)
            return
        step, value, line_id = parsed
        answer: dict[str, Any] = {"step": step, "prune": False}
        try:
            if self._last_step is not None and step <= self._last_step:  # a file rewritten whole: no write
                raise InvalidReportError.not_after(self.trial_id, step, self._last_step)
            verdict = self.judge(self.trial_id, value, step)
            answer["prune"], self._last_step = verdict.prune, step
        except OrchardError as err:  # refused (bad step, lost reservation): said to the child, nothing stored
            self.refused += 1
            self._warn("trial %s: report at step %s refused: %s", self.trial_id, step, err)
            answer["refused"] = str(err)
        if line_id is not None:
            self._answers[line_id] = answer
            while len(self._answers) > MAX_ANSWERS:
                self._answers.popitem(last=False)
        try:
            written = {**answer, "answers": self._answers} if self._answers else answer
            _write_verdict(self.verdict_path, written)
        except OSError as err:  # the child's folder removed under it: the verdict still stands (and stops it)
            log.warning("trial %s: cannot write the verdict on step %s to %s: %s", self.trial_id, step,
                        self.verdict_path, err)
        if answer["prune"]:
            self._pruned_event.set()


def _parse(line: bytes, trial_id: str) -> tuple[int, Reported, str | None] | str:
    """``(step, value, id)`` of a report line of ``trial_id``, or why it is not one.

    ``id`` is what :func:`orchard.report` names its line by (``None`` if the line has none).
    """
    try:
        data = json.loads(line)
    except RecursionError:  # [[[[…]]]] a thousand deep: skipped, or the follower thread died of it
        return f"JSON nested too deeply: {line[:80]!r}"
    except ValueError:
        return f"not JSON: {line[:80]!r}"
    if not isinstance(data, dict) or "step" not in data or "objective" not in data:
        return f'not a {{"step": S, "objective": V}} object: {line[:80]!r}'
    if data.get("trial", trial_id) != trial_id:
        return (f"it reports trial {shown(data['trial'])}, not this one: each trial has its own report file "
                "(is it a link to another trial's, or a file they share?)")
    try:
        value, step = check_report(data["objective"], data["step"])
    except ValueError as err:
        return str(err)
    line_id = data.get("id")
    return step, value, line_id if isinstance(line_id, str) and len(line_id) <= 64 else None


def _write_verdict(path: str, answer: dict[str, Any]) -> None:
    replace_file(path, json.dumps(answer))
