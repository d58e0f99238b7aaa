"""The Experiment client: create or join an experiment, run workers, ask and tell.

``build_experiment`` creates an experiment the first time a name is used and
joins it afterwards; its configuration lives in the storage, so every worker
on every machine runs with the same space, algorithm and budget.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchard import config as _config
from orchard.algorithms import normalize_algorithm_config
from orchard.errors import (
    BudgetExhaustedError,
    ConfigurationError,
    ExecutorError,
    ExperimentBrokenError,
    ExperimentConflictError,
    OrchardError,
)
from orchard.executors import make_executor
from orchard.naming import check_experiment_name
from orchard.objective import Outcome, TrialEvaluator, call_objective, check_objective, interpret_result
from orchard.space import Space
from orchard.storages import BaseStorage, get_storage
from orchard.storages.base import ExperimentRecord
from orchard.trial import Trial, TrialStatus
from orchard.worker import History, Worker, WorkerReport, WorkerSettings

__all__ = ["Experiment", "build_experiment", "get_experiment", "run_worker"]

log = logging.getLogger(__name__)

_TIME_COLUMNS = frozenset({"submit_time", "start_time", "end_time", "heartbeat"})


def build_experiment(
    name: str,
    space: Mapping[str, str] | None = None,
    algorithm: str | Mapping[str, Any] | None = None,
    storage: str | BaseStorage | None = None,
    max_trials: int | None = None,
    max_broken: int | None = None,
    heartbeat: float | None = None,
    seed: int | None = None,
    working_dir: str | None = None,
) -> Experiment:
    """Create the experiment ``name``, or join it if it exists.

    Args:
        name: the experiment's unique name in the storage.
        space: ``{dimension: prior string}``; may be omitted when joining.
        algorithm: ``"random"``, ``"grid"``, ``"bayes"`` or ``{"bayes": {...options}}``
            (default ``"random"`` when creating).
        storage: a URI or path (see :func:`orchard.storages.get_storage`); default
            ``ORCHARD_STORAGE``, then the config file, then ``./orchard.pkl``.
        max_trials: the budget of completed trials; may be raised when joining.
        max_broken: broken trials after which the experiment stops (default 3).
        heartbeat: seconds between a worker's heartbeats (default 30); a reservation
            whose heartbeat is older than 3 × heartbeat is lost.
        seed: seed of the algorithm (one worker with a seed reproduces its trials).
        working_dir: base folder for per-trial working directories (scripts).

    Returns:
        The experiment client.

    Raises:
        ExperimentConflictError: joining with a different space or algorithm, or a lower budget.
        ConfigurationError: invalid options, or no space to create a new experiment.
        StorageError: the storage cannot be used.
    """
    check_experiment_name(name)
    store = get_storage(_config.resolve("storage", storage))
    wanted_space = Space.from_config(space) if space is not None else None
    wanted_algo = normalize_algorithm_config(algorithm) if algorithm is not None else None
    _check_positive("max_trials", max_trials)
    _check_positive("max_broken", max_broken)
    _check_positive("heartbeat", heartbeat)
    record = store.get_experiment(name)
    if record is None:
        if wanted_space is None:
            raise ConfigurationError(
                f"experiment {name!r} does not exist in {store.redacted_uri}; give a space to create it"
            )
        fresh = {
            "space": wanted_space.config(),
            "algorithm": wanted_algo or normalize_algorithm_config(_config.DEFAULTS["algorithm"]),
            "max_trials": max_trials,
            "max_broken": max_broken or _config.DEFAULTS["max_broken"],
            "heartbeat": float(heartbeat or _config.DEFAULTS["heartbeat"]),
            "seed": seed,
            "working_dir": working_dir,
        }
        store.create_experiment(name, fresh)
        record = store.require_experiment(name)
    record = _join(store, record, wanted_space, wanted_algo, max_trials, max_broken)
    return Experiment(store, record)


def get_experiment(name: str, storage: str | BaseStorage | None = None) -> Experiment:
    """Open an existing experiment by name.

    Raises:
        ExperimentNotFoundError: no experiment of that name in the storage.
    """
    store = get_storage(_config.resolve("storage", storage))
    return Experiment(store, store.require_experiment(name))


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


def _join(
    store: BaseStorage,
    record: ExperimentRecord,
    space: Space | None,
    algorithm: dict[str, Any] | None,
    max_trials: int | None,
    max_broken: int | None,
) -> ExperimentRecord:
    """Check a joiner's settings against the stored ones; raise budgets if asked."""
    stored = record.config
    problems: list[str] = []
    if space is not None:
        problems += [f"space {line}" for line in Space.from_config(stored["space"]).diff(space)]
    if algorithm is not None and algorithm != stored["algorithm"]:
        problems.append(f"algorithm: stored {stored['algorithm']} != given {algorithm}")
    old_max = stored.get("max_trials")
    if max_trials is not None and old_max is not None and max_trials < old_max:
        problems.append(f"max_trials: stored {old_max} > given {max_trials} (it can only be raised)")
    if problems:
        raise ExperimentConflictError(
            f"experiment {record.name!r} exists with a different configuration: "
            + "; ".join(problems)
            + ". Use the stored settings, or a new experiment name"
        )
    changes: dict[str, Any] = {}
    if max_trials is not None and max_trials != old_max:
        changes["max_trials"] = max_trials
    if max_broken is not None and max_broken != stored.get("max_broken"):
        changes["max_broken"] = max_broken
    return store.update_experiment(record.id, changes) if changes else record


@dataclasses.dataclass
class WorkerTask:
    """Everything one worker process needs; picklable so executors can ship it."""

    storage: BaseStorage
    experiment_id: str
    settings: WorkerSettings
    fn: Callable[..., Any]
    trial_timeout: float | None = None


def run_worker(task: WorkerTask) -> WorkerReport:
    """Run one worker loop to its end (the function executors run remotely).

    A :class:`~orchard.objective.TrialEvaluator` ``fn`` (``orchard hunt``'s script
    runner) is called with the whole reserved trial and returns the Outcome itself.
    """

    def evaluate(trial: Trial) -> Outcome:
        return call_objective(task.fn, trial.params, task.trial_timeout)

    fn = task.fn
    worker = Worker(task.storage, task.experiment_id, task.settings,
                    fn if isinstance(fn, TrialEvaluator) else evaluate)
    try:
        return worker.run()
    finally:
        task.storage.close()


def _log_if_budget_met(experiment: Experiment) -> None:
    """Say so when ``workon`` has nothing to do, instead of returning silently."""
    done = experiment.storage.count_trials(experiment.id)[TrialStatus.COMPLETED]
    if experiment.max_trials is not None and done >= experiment.max_trials:
        log.warning("experiment %r has already completed its %d trials (max_trials=%d); nothing to do. "
                    "Raise max_trials, or use a new experiment name", experiment.name, done,
                    experiment.max_trials)


class Experiment:
    """A handle on one experiment in a storage (cheap; many may exist at once)."""

    def __init__(self, storage: BaseStorage, record: ExperimentRecord) -> None:
        self.storage = storage
        self._record = record
        self.space = Space.from_config(record.config["space"])
        self._client: Worker | None = None

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, storage={self.storage.redacted_uri!r})"

    # -- configuration ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The experiment's unique name."""
        return self._record.name

    @property
    def id(self) -> str:
        """The experiment's id in the storage."""
        return self._record.id

    @property
    def config(self) -> dict[str, Any]:
        """The stored configuration (space, algorithm, budget, heartbeat, seed, …)."""
        return dict(self._record.config)

    @property
    def max_trials(self) -> int | None:
        """The experiment's budget of completed trials (``None``: unlimited)."""
        return self._record.config.get("max_trials")  # type: ignore[no-any-return]

    @property
    def algorithm(self) -> dict[str, Any]:
        """The normalized algorithm configuration ``{name: options}``."""
        return dict(self._record.config["algorithm"])

    def _settings(self, **overrides: Any) -> WorkerSettings:
        cfg = self._record.config
        values: dict[str, Any] = {
            "space": self.space, "algorithm": cfg["algorithm"], "max_trials": cfg.get("max_trials"),
            "max_broken": cfg.get("max_broken", 3), "heartbeat": cfg.get("heartbeat", 30.0),
            "seed": cfg.get("seed"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return WorkerSettings(**values)

    # -- running workers -------------------------------------------------------

    def workon(
        self,
        fn: Callable[..., Any],
        n_workers: int = 1,
        executor: str = "joblib",
        executor_config: Mapping[str, Any] | None = None,
        max_trials: int | None = None,
        trial_timeout: float | None = None,
        on_result: Callable[[Trial], None] | None = None,
        on_error: Callable[[Trial], None] | None = None,
        progress: bool = True,
        idle_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run ``n_workers`` workers on ``fn`` until the budget is met; return :attr:`stats`.

        Args:
            fn: the objective, called as ``fn(**params)``; returns a float or a dict
                with ``"objective"``. An exception marks the trial broken.
            n_workers: how many worker processes to run.
            executor: ``joblib`` (default), ``process``, ``dask``, ``thread`` or ``single``.
            executor_config: options for the executor (Dask: passed to ``Client``).
            max_trials: run at most this many more trials in this call.
            trial_timeout: seconds after which an evaluation is killed and the trial broken.
            on_result: called in this process with each newly completed trial.
            on_error: called in this process with each newly broken trial.
            progress: show a progress bar when stderr is a terminal.
            idle_timeout: a worker exits after this many seconds with nothing to do.

        Raises:
            ExperimentBrokenError: ``max_broken`` trials broke; the message shows the last error.
            ConfigurationError: ``fn`` is not callable or cannot take the space's names; bad options.
        """
        check_objective(fn, self.space)
        _check_positive("trial_timeout", trial_timeout)
        pool_manager = make_executor(executor, n_workers, executor_config)  # validates name and size
        self.refresh()  # another process may have raised the budget since this handle was made
        budget = self._call_budget(max_trials)
        _log_if_budget_met(self)
        settings = self._settings(max_trials=budget, idle_timeout=idle_timeout)
        task = WorkerTask(self.storage, self.id, settings, fn, trial_timeout)
        if executor not in ("single", "thread"):
            pickle.dumps(self.storage)  # fail fast, with the storage's own message, if it cannot travel
        tasks = [dataclasses.replace(task, settings=self._seeded(settings, i)) for i in range(n_workers)]
        monitor = _Monitor(self, on_result, on_error, progress and sys.stderr.isatty())
        with monitor, pool_manager as pool:
            futures = [pool.submit(run_worker, t) for t in tasks]
            errors = [f.exception() for f in futures]
        self._raise_worker_failure([e for e in errors if e is not None], executor)
        self._raise_if_broken()
        return self.stats

    def refresh(self) -> None:
        """Re-read the experiment's stored configuration (e.g. a budget raised elsewhere)."""
        self._record = self.storage.require_experiment(self.name)

    def _raise_worker_failure(self, failures: list[BaseException], executor: str) -> None:
        if not failures:
            return
        err = failures[0]
        if isinstance(err, (OrchardError, KeyboardInterrupt)):
            raise err
        summary = (str(err).strip().splitlines() or [""])[0].rstrip(".")
        raise ExecutorError(
            f"a worker of experiment {self.name!r} died under executor {executor!r}: "
            f"{type(err).__name__}: {summary}. If the objective crashed its process (segfault, out of "
            "memory, os._exit), run it with trial_timeout=... so it runs in a child process"
        ) from err

    @staticmethod
    def _seeded(settings: WorkerSettings, index: int) -> WorkerSettings:
        if settings.seed is None or index == 0:
            return settings
        return dataclasses.replace(settings, seed=settings.seed * 1_000_003 + index)

    def _call_budget(self, max_trials: int | None) -> int | None:
        if max_trials is None:
            return self.max_trials
        _check_positive("max_trials", max_trials)
        counts = self.storage.count_trials(self.id)
        held = sum(counts.values()) - counts[TrialStatus.BROKEN]
        cap = held + max_trials
        return cap if self.max_trials is None else min(cap, self.max_trials)

    def _raise_if_broken(self) -> None:
        counts = self.storage.count_trials(self.id)
        limit = self._record.config.get("max_broken", 3)
        if counts[TrialStatus.BROKEN] >= limit:
            broken = self.storage.fetch_trials(self.id, [TrialStatus.BROKEN])
            last = broken[-1].error or {} if broken else {}
            raise ExperimentBrokenError(
                f"experiment {self.name!r} stopped: {counts[TrialStatus.BROKEN]} trials are broken "
                f"(max_broken={limit}); last error: {last.get('type')}: {last.get('message')}. "
                "Fix the objective, then raise max_broken or start a new experiment"
            )

    # -- ask and tell ----------------------------------------------------------

    def _client_worker(self) -> Worker:
        if self._client is None:
            self._client = Worker(self.storage, self.id, self._settings(), evaluate=lambda t: Outcome())
        return self._client

    def suggest(self) -> Trial:
        """Reserve a trial for the caller to evaluate, and heartbeat it until observed.

        Raises:
            BudgetExhaustedError: the budget is met or fully reserved.
            ExperimentBrokenError: ``max_broken`` trials broke.
        """
        worker = self._client_worker()
        worker.history.refresh()
        reason = worker._stop_reason()
        if reason == "broken":
            self._raise_if_broken()
        if reason == "budget":
            raise BudgetExhaustedError(f"experiment {self.name!r} has completed its {self.max_trials} trials")
        trial = worker._acquire()
        if trial is None:
            raise BudgetExhaustedError(
                f"experiment {self.name!r} has no trial to suggest: the budget of {self.max_trials} "
                "is fully reserved or the space is exhausted; raise max_trials or wait for other workers"
            )
        worker.pacemaker.watch(trial.id)
        return trial

    def observe(self, trial: Trial, result: float | Mapping[str, Any]) -> Trial:
        """Record the result of a trial from :meth:`suggest`; a non-numeric result breaks it.

        Raises:
            ReservationLostError: the reservation was lost (heartbeat stale).
        """
        self._stop_beat(trial)
        worker = self._client_worker()
        outcome = interpret_result(result)
        if outcome.ok:
            return self.storage.complete_trial(trial.id, worker.name, outcome.objective, outcome.results)  # type: ignore[arg-type]
        return self.storage.fail_trial(trial.id, worker.name, outcome.error or {})

    def release(self, trial: Trial) -> Trial:
        """Give a suggested trial back unevaluated (it becomes ``interrupted``)."""
        self._stop_beat(trial)
        return self.storage.release_trial(trial.id, self._client_worker().name)

    def _stop_beat(self, trial: Trial) -> None:
        if self._client is not None:
            self._client.pacemaker.unwatch(trial.id)

    def insert(self, params: Mapping[str, Any]) -> Trial:
        """Add a ``new`` trial at ``params``; the next free worker evaluates it first.

        Raises:
            SpaceError: the params are not a point of the space.
            DuplicateTrialError: a trial with those params exists.
            BudgetExhaustedError: the budget is fully used; raise ``max_trials``.
        """
        point = self.space.validate(params)
        return self.storage.register_trial(self.id, point, budget=self.max_trials)

    # -- reading ---------------------------------------------------------------

    def fetch_trials(self, statuses: Iterable[TrialStatus | str] | None = None) -> list[Trial]:
        """The experiment's trials, oldest first (only ``statuses`` if given)."""
        return self.storage.fetch_trials(self.id, statuses)

    @property
    def best_trial(self) -> Trial | None:
        """The completed trial with the lowest objective, or ``None``."""
        return self.storage.best_trial(self.id)

    @property
    def stats(self) -> dict[str, Any]:
        """Counts by status, best objective and params, elapsed seconds and trials/s."""
        trials = self.fetch_trials()
        counts = {status.value: 0 for status in TrialStatus}
        for trial in trials:
            counts[trial.status.value] += 1
        best = min((t for t in trials if t.objective is not None), key=lambda t: t.objective, default=None)  # type: ignore[arg-type, return-value]
        starts = [t.submit_time for t in trials if t.submit_time]
        ends = [t.end_time for t in trials if t.end_time]
        elapsed = max(ends) - min(starts) if starts and ends else 0.0
        return {
            "name": self.name,
            "counts": counts,
            "best_objective": best.objective if best else None,
            "best_params": dict(best.params) if best else None,
            "elapsed": elapsed,
            "trials_per_second": counts["completed"] / elapsed if elapsed > 0 else 0.0,
            "max_trials": self.max_trials,
        }

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per trial (params prefixed ``params.``).

        The times (``submit_time``, ``start_time``, ``end_time``, ``heartbeat``) are
        timezone-aware UTC datetimes (``NaT`` when unset).

        Raises:
            ConfigurationError: pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ConfigurationError("to_pandas needs pandas: pip install 'orchard-hpo[pandas]'") from None
        rows = []
        for trial in self.fetch_trials():
            row = {k: v for k, v in trial.to_dict().items() if k not in ("params", "results")}
            row.update({f"params.{k}": v for k, v in trial.params.items()})
            row.update({f"results.{k}": v for k, v in trial.results.items()})
            rows.append(row)
        frame = pd.DataFrame(rows)
        for column in _TIME_COLUMNS.intersection(frame.columns):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame


class _Monitor:
    """Watches the experiment from the calling process: progress bar and callbacks."""

    def __init__(
        self,
        experiment: Experiment,
        on_result: Callable[[Trial], None] | None,
        on_error: Callable[[Trial], None] | None,
        show_bar: bool,
    ) -> None:
        self._experiment = experiment
        self._callbacks = {TrialStatus.COMPLETED: on_result, TrialStatus.BROKEN: on_error}
        self._show_bar = show_bar
        self._active = show_bar or on_result is not None or on_error is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="orchard-monitor", daemon=True)
        self._seen: set[str] = set()
        self._bar: Any = None

    def __enter__(self) -> _Monitor:
        if self._active:
            self._history = History(self._experiment.storage, self._experiment.id)
            self._history.refresh()
            self._seen = {t.id for t in self._history.trials.values() if t.status.is_terminal}
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
        while not self._stop.wait(0.5):
            try:
                self._tick()
            except OrchardError:  # the workers report storage problems themselves
                pass

    def _tick(self) -> None:
        history = self._history
        history.refresh()
        for trial in history.trials.values():
            callback = self._callbacks.get(trial.status)
            if trial.status.is_terminal and trial.id not in self._seen:
                self._seen.add(trial.id)
                if callback is not None:
                    callback(trial)
        if self._show_bar:
            self._draw(history)

    def _draw(self, history: History) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self._experiment.max_trials, desc=self._experiment.name, unit="trial")
        counts = history.counts
        self._bar.n = counts[TrialStatus.COMPLETED]
        best = min((o.objective for o in history.observations), default=None)
        self._bar.set_postfix(best=best, running=counts[TrialStatus.RESERVED],
                              broken=counts[TrialStatus.BROKEN], refresh=False)
        self._bar.refresh()
