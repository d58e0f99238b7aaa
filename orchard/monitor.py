"""Watching an experiment from the process that called ``workon``: progress bar and callbacks.

The workers may run in other processes or on other machines, so the monitor
reads the shared storage like any worker does: through a
:class:`~orchard.history.History` fed by the storage's change feed. Each tick
folds in only the trials that changed since the last one, so watching a long
experiment costs what changes, not what is stored.

A callback that raises stops the run: the monitor calls no callback after it,
interrupts the main thread (whose ``workon`` stops its workers and releases
their running trials, as for Ctrl-C) and raises the callback's exception when
its block ends. Every finished trial is already stored; nothing is lost but
the calls not made. A run that ended on its own before the callback raised
(its budget met, ``max_broken`` trials broken before the monitor's look) has
nothing left to stop: the exception is raised alone, no
:class:`~orchard.errors.Interrupted` behind it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from orchard.clock import SYSTEM_CLOCK, Clock
from orchard.constraints import feasibility, normalize_constraints
from orchard.errors import ConfigurationError, OrchardError
from orchard.fidelity import best_key, fidelity_param
from orchard.history import History
from orchard.objectives import Shown
from orchard.interruption import interrupt_main
from orchard.storages.base import BaseStorage
from orchard.terminal import printable
from orchard.trial import Trial, TrialStatus

__all__ = ["ProgressMonitor"]

log = logging.getLogger(__name__)

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

    Raises:
        ConfigurationError: ``on_result`` or ``on_error`` is not callable (before any worker starts).
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
        for name, callback in (("on_result", on_result), ("on_error", on_error)):
            if callback is not None and not callable(callback):
                raise ConfigurationError(
                    f"{name} {callback!r} is not callable; give a function that takes the finished Trial, or None")
        self._clock = clock
        self._history = History(storage, experiment_id)
        self._storage, self._experiment_id = storage, experiment_id
        self._label, self._total = label, max_trials
        self._callbacks = {TrialStatus.COMPLETED: on_result, TrialStatus.BROKEN: on_error}
        self._show_bar = show_bar
        self._active = show_bar or on_result is not None or on_error is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # made on entry: a monitor never entered holds no cycle
        self._bar: Any = None
        self._best: Trial | None = None  # of the feasible completed trials, as best_trial
        self._fidelity: str | None = None  # the space's fidelity dimension: the best is at the highest one
        self._shown = Shown()  # how the bar shows it: the first declared objective, as returned
        self._constraints: Any = None  # the experiment's: a trial breaking them is never the best
        self.failure: Exception | None = None  # what a callback raised
        self._failed_on: Trial | None = None  # the trial it raised on
        self._interrupted = False  # the main thread was interrupted for it
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressMonitor:
        if self._active:
            self._shown, self._constraints, self._fidelity = _shown(self._storage, self._experiment_id)
            self._history.refresh()  # what is already finished is not news
            self._fold_best(self._history.trials.values())
            self._thread = threading.Thread(target=self._watch, name="orchard-monitor", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._active:
            try:
                self._close()
            except KeyboardInterrupt:
                if not self._interrupted:
                    raise
                self._close()  # our own interruption, sent as the run was ending: finish closing
            if self.failure is not None:
                raise self.failure

    def _close(self) -> None:
        with self._lock:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._tick()
        finally:
            if self._bar is not None:
                self._bar.close()

    def _watch(self) -> None:
        while not self._clock.wait(self._stop, TICK):
            try:
                self._tick()
            except OrchardError:  # the workers report storage problems themselves
                pass
            if self.failure is not None:
                with self._lock:  # not once the run is ending: the exception is raised on exit anyway
                    # marked before the signal goes: a main thread waiting for this lock in _close may handle
                    # it before interrupt_main returns, and must know it as ours (else it escapes workon)
                    self._interrupted = not self._stop.is_set()
                    if self._interrupted:
                        self._interrupted = interrupt_main()
                then = ("interrupting the run as Ctrl-C would; it is raised once the workers stopped"
                        if self._interrupted else "no callback is called again; it is raised when the run ends")
                trial = self._failed_on
                callback = "on_result" if trial is not None and trial.status is TrialStatus.COMPLETED else "on_error"
                log.error("%s raised %s on trial %s of experiment %r: %s", callback,
                          type(self.failure).__name__, trial.id if trial else "?", self._label, then)
                return

    def _tick(self) -> None:
        self._history.refresh()
        self._fold_best(self._history.finished)
        for trial in self._history.finished:
            callback = self._callbacks.get(trial.status)
            if callback is not None and self.failure is None:
                try:
                    callback(trial)
                except Exception as err:  # noqa: BLE001 - the user's code: raised when the run ends, workers stopped
                    self.failure, self._failed_on = err, trial
        if self._show_bar:
            self._draw()

    def _fold_best(self, trials: Iterable[Trial]) -> None:
        """Fold ``trials`` into the best: completed feasible ones only (not a pruned trial's last report)."""
        for trial in trials:
            if (trial.status is TrialStatus.COMPLETED and trial.objective is not None
                    and feasibility(trial.results, self._constraints).feasible
                    and (self._best is None
                         or best_key(trial, self._fidelity) < best_key(self._best, self._fidelity))):
                self._best = trial

    def _draw(self) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self._total, desc=self._label, unit="trial")
        counts = self._history.counts
        self._bar.n = counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED]
        pruned = {"pruned": counts[TrialStatus.PRUNED]} if counts[TrialStatus.PRUNED] else {}
        key = "best" if self._shown == Shown() else printable(f"best {self._shown.name}")  # stored by anyone
        objective = None if self._best is None else self._best.objective
        best = None if objective is None else self._shown.value(objective)
        self._bar.set_postfix({key: best, "running": counts[TrialStatus.RESERVED],
                               "broken": counts[TrialStatus.BROKEN], **pruned}, refresh=False)
        self._bar.refresh()


def _shown(storage: BaseStorage, experiment_id: str) -> tuple[Shown, Any, str | None]:
    """How the bar shows the best objective (``best acc=0.97`` for ``objectives={"acc": "max"}``, not -0.97),
    the constraints a trial meets to be best (``None`` where the stored ones do not read as such), and
    the fidelity dimension (the best is at the highest fidelity, as ``best_trial``)."""
    try:
        config = storage.experiment(experiment_id).config
    except OrchardError:  # the refresh that follows says what the storage could not do
        return Shown(), None, None
    try:
        constraints = normalize_constraints(config.get("constraints"))
    except ConfigurationError:  # another program's value: the workers refuse the experiment themselves
        constraints = None
    return Shown.stored(config.get("objectives")), constraints, fidelity_param(config)
