"""What the dashboard knows about a storage: experiments folded in from their change feeds.

The server never reads a whole history twice. Each :class:`ExperimentView`
keeps the last version of every trial it was shown and asks the storage only
for what changed since its cursor (:meth:`BaseStorage.fetch_changes`), so a
refresh costs what changed, and a pickle file is read without its lock. Views
refresh at most once per ``min_interval`` however many pages poll, and every
storage call of one :class:`StorageView` is serialized by its lock (a storage
handle is not promised to be thread-safe; the web server answers from threads).

Nothing here writes: the only verbs called are ``list_experiments`` and
``fetch_changes``.

A configuration is shown as Orchard would have stored it (:func:`shown_config`): a
setting another program wrote that Orchard refuses is left out and named in the
view's ``problem``, so one odd experiment never hides the others.

Heartbeat ages never compare two machines' clocks (SPEC §5.8): a heartbeat's
age is the time since *this* process saw its value change, on this process's
monotonic clock. A value already there at the first fold has an age known only
from below (``heartbeat_age_is_lower_bound``).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from orchard.constraints import feasibility
from orchard.errors import ConfigurationError, ExperimentNotFoundError
from orchard.experiment_config import ExperimentConfig
from orchard.fidelity import best_key, fidelity_param
from orchard.stopping import LEDGER_KEY, unreadable_ledger
from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.trial import Trial, TrialStatus

__all__ = ["ExperimentView", "HeartbeatSighting", "StorageView", "shown_config"]

#: what the pages compute with
_CHECKED = ("objectives", "space", "constraints", "stop", "max_trials", "max_broken", "heartbeat")
_ANY_SPACE = {"x": "uniform(0, 1)"}  # stands for the space while another setting is checked


def shown_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``config`` as the pages read it, and which settings in it Orchard would refuse (``None``: none).

    A storage holds what was written, possibly by another program: a ``max_trials`` of
    ``"ten"``, a space that is a list, a stopping ledger that is text. Each setting the pages
    compute with is checked (and cast) as :class:`~orchard.experiment_config.ExperimentConfig`
    checks it before it is stored; one that fails is left out (the pages show its default) and
    named in the returned text.
    """
    shown = dict(config)
    problems = []
    for key in _CHECKED:
        if shown.get(key) is None:
            continue
        try:
            checked = ExperimentConfig.from_dict({"space": _ANY_SPACE, "objectives": shown.get("objectives"),
                                                  key: shown[key]})
        except (ConfigurationError, TypeError, ValueError) as err:
            problems.append(f"{key}: {' '.join(str(err).split())[:300]}")
            del shown[key]
            continue
        if key in ("max_trials", "max_broken", "heartbeat"):
            shown[key] = getattr(checked, key)
    why = unreadable_ledger(shown[LEDGER_KEY]) if shown.get(LEDGER_KEY) else None
    if why is not None:
        problems.append(f"the stopping rules' ledger {LEDGER_KEY!r} is unreadable ({why})")
        del shown[LEDGER_KEY]
    if not problems:
        return shown, None
    return shown, "settings Orchard would refuse, shown at their defaults: " + "; ".join(problems)

Clock = Callable[[], float]


class HeartbeatSighting(NamedTuple):
    """When this process first saw a reservation's current heartbeat value."""

    worker: str | None
    heartbeat: float | None
    seen_at: float
    lower_bound: bool


class ExperimentView:
    """One experiment's trials, kept current by folding in its change feed.

    Attributes:
        record: the experiment as stored (name, id, configuration).
        config: its configuration as the pages read it (:func:`shown_config`).
        problem: the settings of that configuration Orchard would refuse, or ``None``.
        trials: the last version of every trial, by id, in the order first seen.
        numbers: each trial's rank in that order (1 for the first seen), stable across folds.
        counts: how many trials are in each status.
        done: how many trials used a unit of ``max_trials`` (completed or pruned, not recorded apart).
        best: the completed trial with the lowest finite objective (at the highest fidelity), or ``None``.
        reserved: the reserved trials, by id.

    The aggregates are updated by each fold from what changed, so reading them
    costs nothing however long the history (a completed trial never changes
    again, so the best one can only be displaced by a newer one).
        version: how many folds changed something; trial rows carry the
            version that last changed them so clients can ask for the rest.
        rebuilt_at: the version at which the view was last rebuilt from scratch
            (0: never); a client holding rows of an earlier version must drop them.
        front: the Pareto front's payload and the version it was built at, or ``None``
            (:func:`orchard.dashboard._payloads.pareto_front` keeps it here: it goes with the view).
    """

    def __init__(self, storage: BaseStorage, record: ExperimentRecord, clock: Clock = time.monotonic,
                 replaces: int = 0) -> None:
        """Start an empty view; nothing is read until :meth:`fold`.

        Args:
            storage: the storage to read (only ``fetch_changes`` and ``count_trials`` are called).
            record: the experiment to follow.
            clock: a monotonic clock, for heartbeat ages and throttling.
            replaces: the last version of an earlier view of the same name (an experiment deleted,
                then created again): this view's versions continue after it, and it counts as
                rebuilt, so a client holding that view's rows drops them instead of merging.
        """
        self.config: dict[str, Any] = {}
        self.problem: str | None = None
        self._fidelity: str | None = None  # the config's fidelity dimension: the best is at its highest value
        self._record: ExperimentRecord | None = None
        self.record = record
        self.trials: dict[str, Trial] = {}
        self.version = 0
        self.numbers: dict[str, int] = {}
        self.counts: dict[TrialStatus, int] = {status: 0 for status in TrialStatus}
        self.done = 0
        self.best: Trial | None = None
        self.reserved: dict[str, Trial] = {}
        self._changed_at: dict[str, int] = {}
        self._sightings: dict[str, HeartbeatSighting] = {}
        self._storage = storage
        self._clock = clock
        self._cursor: object = None
        self._folded_at: float | None = None
        self.rebuilt_at = 0
        self.front: tuple[int, dict[str, Any]] | None = None
        if replaces:
            self.version = self.rebuilt_at = replaces + 1

    @property
    def record(self) -> ExperimentRecord:
        """The experiment as stored; :attr:`config` and :attr:`problem` follow its configuration."""
        assert self._record is not None
        return self._record

    @record.setter
    def record(self, record: ExperimentRecord) -> None:
        if self._record is None or record.config != self._record.config:
            self.config, self.problem = shown_config(record.config)
            self._fidelity = fidelity_param(self.config)
        self._record = record

    @property
    def stale_after(self) -> float:
        """Seconds without a new heartbeat after which a reservation counts as lost (3 x heartbeat)."""
        return 3.0 * float(self.config.get("heartbeat", 30.0))

    def fold(self) -> int:
        """Fetch what changed since the last fold and apply it; return how many trials changed.

        A storage that started over (an older copy of its file was restored, or
        trials were deleted) is found by the storage itself where it can tell
        (:meth:`~orchard.storages.base.BaseStorage.resent_everything`), else by holding
        fewer trials than the view has: the view is rebuilt from everything it holds
        now, and :attr:`rebuilt_at` moves to the new version so that clients drop the
        rows they hold.
        """
        before = self._cursor
        changed_trials, cursor = self._storage.fetch_changes(self.record.id, before)
        if before is not None and self._storage.resent_everything(before, cursor):
            self._forget_everything()
            changed = self._apply(changed_trials, cursor)
            self.rebuilt_at = self.version
            return changed
        changed = self._apply(changed_trials, cursor)
        if self.trials and sum(self._storage.count_trials(self.record.id).values()) < len(self.trials):
            self._forget_everything()
            changed = self._apply(*self._storage.fetch_changes(self.record.id, None))
            self.rebuilt_at = self.version
        return changed

    def _apply(self, changed: list[Trial], cursor: object) -> int:
        first = self._cursor is None
        self._cursor = cursor
        now = self._clock()
        fresh = [t for t in changed if self.trials.get(t.id) != t]
        if fresh:
            self.version += 1
        for trial in fresh:
            self._count(self.trials.get(trial.id), trial)
            self.numbers.setdefault(trial.id, len(self.numbers) + 1)
            self.trials[trial.id] = trial
            self._changed_at[trial.id] = self.version
            self._sight(trial, now, lower_bound=first)
        self._folded_at = now
        return len(fresh)

    def _forget_everything(self) -> None:
        """Empty the view (its version still moves forward), to fold the storage in again from scratch."""
        self.version += 1
        self.trials, self.numbers, self._changed_at, self._sightings, self.reserved = {}, {}, {}, {}, {}
        self.counts = {status: 0 for status in TrialStatus}
        self.done = 0
        self.best = None
        self._cursor = None

    def due(self, min_interval: float) -> bool:
        """Whether the last fold is older than ``min_interval`` seconds (or there was none)."""
        return self._folded_at is None or self._clock() - self._folded_at >= min_interval

    def changed_since(self, version: int) -> list[Trial]:
        """The trials whose last change came after ``version``, in the order first seen."""
        return [t for t in self.trials.values() if self._changed_at[t.id] > version]

    def heartbeat_age(self, trial: Trial) -> tuple[float | None, bool]:
        """Seconds since this process saw the reservation's heartbeat change, and whether that is a lower bound."""
        sighting = self._sightings.get(trial.id)
        if sighting is None:
            return None, True
        return max(self._clock() - sighting.seen_at, 0.0), sighting.lower_bound

    def _count(self, old: Trial | None, new: Trial) -> None:
        if old is not None:
            self.counts[old.status] -= 1
            self.done -= _used(old)
        self.counts[new.status] += 1
        self.done += _used(new)
        if new.status is TrialStatus.RESERVED:
            self.reserved[new.id] = new
        else:
            self.reserved.pop(new.id, None)
        if self._beats_best(new):
            self.best = new

    def _beats_best(self, trial: Trial) -> bool:
        objective = trial.objective
        if trial.status is not TrialStatus.COMPLETED or objective is None or not math.isfinite(objective):
            return False
        # the highest fidelity first, as Experiment.best_trial ranks
        if self.best is not None and best_key(trial, self._fidelity) >= best_key(self.best, self._fidelity):
            return False
        return feasibility(trial.results, self.config.get("constraints")).feasible  # as Experiment.best_trial

    def _sight(self, trial: Trial, now: float, lower_bound: bool) -> None:
        if trial.status is not TrialStatus.RESERVED:
            self._sightings.pop(trial.id, None)
            return
        old = self._sightings.get(trial.id)
        if old is None or (old.worker, old.heartbeat) != (trial.worker, trial.heartbeat):
            self._sightings[trial.id] = HeartbeatSighting(trial.worker, trial.heartbeat, now, lower_bound)


class StorageView:
    """Every experiment of one storage, refreshed on demand at most once per ``min_interval``."""

    def __init__(self, storage: BaseStorage, min_interval: float = 0.5, clock: Clock = time.monotonic) -> None:
        """Follow ``storage``.

        Args:
            storage: the storage to read; the view never writes to it.
            min_interval: seconds during which a refreshed view is served as it is.
            clock: a monotonic clock.
        """
        self.storage = storage
        self.min_interval = float(min_interval)
        self._clock = clock
        self._lock = threading.RLock()
        self._views: dict[str, ExperimentView] = {}
        self._last_versions: dict[str, int] = {}  # of every name that had a view: versions never go back
        self._listed_at: float | None = None

    @contextlib.contextmanager
    def reading(self) -> Iterator[StorageView]:
        """Hold the view still: no fold runs in another thread until the block ends.

        Build payloads inside this block; a view's trials change under a fold.
        """
        with self._lock:
            yield self

    def experiments(self) -> list[ExperimentView]:
        """Every experiment, each refreshed if due, oldest first."""
        with self._lock:
            self._relist()
            try:
                self._fold_due(self._views)
            except ExperimentNotFoundError:  # deleted since the storage was listed
                self._relist(force=True)
                self._fold_due(self._views)
            return list(self._views.values())

    def experiment(self, name: str) -> ExperimentView | None:
        """The experiment called ``name``, refreshed if due, or ``None`` if there is none.

        The storage is listed again when due, as for :meth:`experiments`: an experiment
        deleted (``orchard db rm``) is ``None``, and one created again under its name is
        the new one, even when no one asks for the whole list.
        """
        with self._lock:
            self._relist(force=name not in self._views)
            try:
                self._fold_due([name])
            except ExperimentNotFoundError:  # deleted since the storage was listed
                self._relist(force=True)
                self._fold_due([name])
            return self._views.get(name)

    def _fold_due(self, names: Iterable[str]) -> None:
        """Fold the views of ``names`` (those that have one) last folded over ``min_interval`` ago."""
        for view in [self._views[name] for name in names if name in self._views]:
            if view.due(self.min_interval):
                view.fold()

    def _relist(self, force: bool = False) -> None:
        """Pick up new experiments and drop deleted ones (views of kept ones stay folded).

        An experiment deleted and created again under its name (``orchard db rm``, then a new
        hunt) gets a new view whose versions continue after the old one's, with ``rebuilt_at``
        past them: a page or script holding the old experiment's rows drops them.
        """
        now = self._clock()
        if not force and self._listed_at is not None and now - self._listed_at < self.min_interval:
            return
        records = self.storage.list_experiments()
        self._last_versions.update((name, view.version) for name, view in self._views.items())
        views = {}
        for record in records:
            view = self._views.get(record.name)
            if view is None or view.record.id != record.id:
                replaces = self._last_versions.get(record.name, 0)
                view = ExperimentView(self.storage, record, self._clock, replaces)
            view.record = record  # max_trials may have been raised
            views[record.name] = view
        self._views = views
        self._listed_at = now


def _used(trial: Trial) -> int:
    """1 if ``trial`` used a unit of ``max_trials`` (completed or pruned, not recorded apart from it), else 0."""
    return int(trial.in_budget and trial.status in (TrialStatus.COMPLETED, TrialStatus.PRUNED))
