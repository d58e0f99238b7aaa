"""Watching an experiment from the process that called ``workon``: progress bar and callbacks.

The workers may run in other processes or on other machines, so the monitor
reads the shared storage like any worker does: through a
:class:`~orchard.history.History` fed by the storage's change feed. Each tick
folds in only the trials that changed since the last one, so watching a long
experiment costs what changes, not what is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchard.clock import SYSTEM_CLOCK, Clock
from orchard.errors import OrchardError
from orchard.history import History
from orchard.storages.base import BaseStorage
from orchard.trial import Trial, TrialStatus

__all__ = ["ProgressMonitor"]

#: Seconds between two looks at the storage.
TICK = 0.5


class ProgressMonitor:
    """Calls ``on_result``/``on_error`` for trials finished while it runs, and draws a bar.

    Use it as a context manager around the workers' run; trials finished before
    it was entered are not reported. On exit it takes one last look, so every
    trial finished during the run is reported exactly once.

    Args:
        storage: the experiment's storage.
        experiment_id: the experiment to watch.
        label: the bar's title (the experiment's name).
        max_trials: the bar's total.
        on_result: called with each newly completed trial.
        on_error: called with each newly broken trial.
        show_bar: draw a ``tqdm`` progress bar.
        clock: what its ticks are timed with (default: the system's).
    """

    def __init__(
        self,
        storage: BaseStorage,
        experiment_id: str,
        label: str,
        max_trials: int | None,
        on_result: Callable[[Trial], None] | None = None,
        on_error: Callable[[Trial], None] | None = None,
        show_bar: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self._history = History(storage, experiment_id)
        self._label, self._total = label, max_trials
        self._callbacks = {TrialStatus.COMPLETED: on_result, TrialStatus.BROKEN: on_error}
        self._show_bar = show_bar
        self._active = show_bar or on_result is not None or on_error is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="orchard-monitor", daemon=True)
        self._bar: Any = None
        self._best: float | None = None

    def __enter__(self) -> ProgressMonitor:
        if self._active:
            self._history.refresh()  # what is already finished is not news
            self._best = min((o.objective for o in self._history.observations), default=None)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._active:
            self._stop.set()
            self._thread.join()
            self._tick()
            if self._bar is not None:
                self._bar.close()

    def _watch(self) -> None:
        while not self._clock.wait(self._stop, TICK):
            try:
                self._tick()
            except OrchardError:  # the workers report storage problems themselves
                pass

    def _tick(self) -> None:
        self._history.refresh()
        for trial in self._history.finished:
            if trial.status is TrialStatus.COMPLETED and trial.objective is not None:
                self._best = trial.objective if self._best is None else min(self._best, trial.objective)
            callback = self._callbacks.get(trial.status)
            if callback is not None:
                callback(trial)
        if self._show_bar:
            self._draw()

    def _draw(self) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self._total, desc=self._label, unit="trial")
        counts = self._history.counts
        self._bar.n = counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED]
        pruned = {"pruned": counts[TrialStatus.PRUNED]} if counts[TrialStatus.PRUNED] else {}
        self._bar.set_postfix(best=self._best, running=counts[TrialStatus.RESERVED],
                              broken=counts[TrialStatus.BROKEN], **pruned, refresh=False)
        self._bar.refresh()
