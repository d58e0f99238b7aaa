"""A report as one MongoDB write whose round trips and reply do not grow with the reports stored.

A trial's reports live in its document (``reports``, counted in ``report_count``), and each
report is one ``$push`` conditional on the owner, the count and, here, the reservation
(``start_time``). Within one reservation reports are only appended, so a write that matches
the count a handle knows proves the stored reports are the ones it knows plus the new one.

:class:`KnownReports` keeps, for the last trials a handle stored reports on, the reports it
knows they hold. A report on such a trial is then the write alone, checked against the known
steps, and its reply leaves the reports out (:data:`WITHOUT_REPORTS`): the trial returned has
the known ones. The first report of a trial through a handle, and a write that matches nothing
(the trial lost, reports stored through another handle, a lost reply the driver retried),
read the document whole, as before. The server still rewrites the whole document at each
report: that cost grows with the reports stored (``docs/storages.md``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

from orchard import trial as transitions
from orchard.errors import InvalidReportError
from orchard.trial import Change, ReportValue, Trial

__all__ = ["WITHOUT_REPORTS", "KnownReports", "Known"]

#: The projection of a report's reply: the trial without its reports.
WITHOUT_REPORTS = {"reports": 0}

Known = tuple[tuple[int, ReportValue], ...]  # a trial's reports, as a handle knows them


class KnownReports:
    """The reports this handle knows the last ``size`` trials it reported on hold.

    Only ever a hint: a write built from it is conditional on what it assumes, and a
    write that matches nothing is redone from a read of the trial.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[str | None, float | None, Known]] = OrderedDict()

    def change(self, trial_id: str, worker: str, step: int, value: object,
               now: float) -> tuple[Change, Known] | None:
        """The report's change built on the known reports, and those; ``None`` if none are known.

        Also ``None`` for a report the known steps refuse: the read of the trial says why
        (that the worker lost the trial comes first).
        """
        with self._lock:
            entry = self._known.get(trial_id)
        if entry is None or entry[0] != worker:
            return None
        _, start_time, known = entry
        try:
            change = transitions.report(trial_id, worker, step, value, now, len(known),
                                        known[-1][0] if known else None)
        except InvalidReportError:
            return None
        return dataclasses.replace(change, expects={**change.expects, "start_time": start_time}), known

    def stored(self, trial: Trial, known: Known, change: Change) -> Trial:
        """``trial`` (from a reply without its reports) holding ``known`` and the one ``change`` adds."""
        return self.remember(dataclasses.replace(trial, reports=[*known, change.appends["reports"]]))

    def remember(self, trial: Trial) -> Trial:
        """Remember the reports ``trial`` holds (read whole, or just written); returns it."""
        with self._lock:
            self._known[trial.id] = (trial.worker, trial.start_time, tuple(trial.reports))
            self._known.move_to_end(trial.id)
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return trial

    def forget(self, trial_id: str) -> None:
        """Drop what is known of a trial (it ended, or was given back)."""
        with self._lock:
            self._known.pop(trial_id, None)
