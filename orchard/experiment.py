"""The Experiment client: create or join an experiment, run workers, ask and tell.

``build_experiment`` creates an experiment the first time a name is used and
joins it afterwards; its configuration lives in the storage, so every worker
on every machine runs with the same space, algorithm and budget.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from orchard import config as _config
from orchard.algorithms import explicit_options, normalize_algorithm_config
from orchard.asking import holder, new_client, suggested
from orchard.constraints import normalize_constraints
from orchard.current import refuse_nested
from orchard.dataframe import trials_frame
from orchard.errors import ConfigurationError, ExecutorError, ExperimentBrokenError
from orchard.executors import make_executor, outlasts_workon, reaches_local_processes, shares_environment
from orchard.executors.capacity import workers_to_start
from orchard.executors.fleet import Fleet, raise_failure
from orchard.executors.task import WorkerTask, check_travels
from orchard.experiment_config import ExperimentConfig, kept_through_a_dump
from orchard.fidelity import best_by_fidelity
from orchard.interruption import interruptible
from orchard.joining import join_experiment, patiently
from orchard.monitor import ProgressMonitor
from orchard.naming import check_experiment_name
from orchard.objective import Outcome, Told, check_objective
from orchard.objectives import normalize_objectives
from orchard.pareto import best_of, front_hypervolume, pareto_front, reported_feasible
from orchard.pruners import check_pruner, normalize_pruner_config
from orchard.recording import (budget_held, budget_to_give, finished, queue_trial, record_evaluation,
                               warn_if_budget_met)
from orchard.report import check_report
from orchard.resources import assign_devices, parse_gpus, parse_memory
from orchard.runner import ScriptRunner
from orchard.space import Space
from orchard.stopping import normalize_stop, stop_summary
from orchard.storages import BaseStorage, get_storage
from orchard.storages.base import ExperimentRecord
from orchard.trial import Trial, TrialStatus
from orchard.warm_start import check_sources, normalize_warm_start
from orchard.worker import Worker, WorkerSettings

__all__ = ["Experiment", "build_experiment", "get_experiment"]

log = logging.getLogger(__name__)


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
    max_attempts: int | None = None,
    pruner: str | Mapping[str, Any] | None = None,
    objectives: Mapping[str, str] | None = None,
    constraints: Sequence[str] | None = None,
    stop: Mapping[str, Any] | Sequence[str] | None = None,
    warm_start: Sequence[str | Mapping[str, Any]] | None = None,
) -> Experiment:
    """Create the experiment ``name``, or join it if it exists.

    Each setting not given here is taken from ``ORCHARD_<SETTING>`` or the config
    file (see :mod:`orchard.config`), else from the stored experiment when joining,
    else from :class:`~orchard.experiment_config.ExperimentConfig`'s defaults.

    Args:
        name: the experiment's unique name in the storage.
        space: ``{dimension: prior string}``; may be omitted when joining.
        algorithm: ``"random"`` (the default to create), ``"grid"``, ``"bayes"``, ``{"bayes": {...options}}``.
        storage: a URI or path (see :func:`orchard.storages.get_storage`); default
            ``ORCHARD_STORAGE``, then the config file, then ``./orchard.pkl``.
        max_trials: the budget of completed trials; may be raised when joining.
        max_broken: broken trials after which the experiment stops (default 3).
        heartbeat: seconds between a worker's heartbeats (default 30); a reservation
            whose heartbeat has not changed for 3 × heartbeat is lost.
        seed: seed of the algorithm, an integer >= 0 (one worker with a seed reproduces its trials).
        working_dir: base folder of per-trial folders (scripts' and ``orchard.current_trial()``'s).
        max_attempts: reservations of a trial lost to dead or frozen workers before it is broken (default 3).
        pruner: stops running trials from the values they report with
            :func:`orchard.report`: ``"median"``, ``"asha"``, ``{"hyperband": {"max_step": 50}}``, …
            (see :mod:`orchard.pruners`; default ``"none"`` when creating).
        objectives: several objectives, ``{"error": "min", "latency_ms": "min"}``; the
            objective then returns (or a script reports) a dict with each by name.
        constraints: bounds on reported metrics, ``["memory_gb <= 16"]``.
        stop: stopping rules, ``{"target": 0.1, "patience": 20, "max_time": "2h"}`` (:mod:`orchard.stopping`).
        warm_start: earlier experiments whose completed trials the algorithm is told first,
            ``["old", "mongodb://host/db:other"]`` (see :mod:`orchard.warm_start`).

    Returns:
        The experiment client.

    Raises:
        ExperimentConflictError: joining with a different space, algorithm, pruner, objectives,
            constraints or stop rules, or a lower budget.
        ConfigurationError: an invalid setting (nothing is stored), no space to create
            a new experiment, or a warm-start source that does not fit the space.
        StorageError: the storage cannot be used.
    """
    check_experiment_name(name)
    settings = _config.Settings()
    given = {"max_trials": max_trials, "max_broken": max_broken, "max_attempts": max_attempts,
             "heartbeat": heartbeat, "seed": seed, "working_dir": working_dir}
    chosen = {key: settings.get(key, value, use_default=False) for key, value in given.items()}
    chosen = {key: value for key, value in chosen.items() if value is not None}
    wanted_space = Space.from_config(space) if space is not None else None
    wanted_algo = settings.get("algorithm", algorithm, use_default=False)
    algo_options = explicit_options(wanted_algo) if wanted_algo is not None else frozenset()
    goals = normalize_objectives(settings.get("objectives", objectives, use_default=False))
    if wanted_algo is not None:
        wanted_algo = normalize_algorithm_config(wanted_algo, wanted_space, goals)
    wanted_pruner = settings.get("pruner", pruner, use_default=False)
    wanted_pruner = normalize_pruner_config(wanted_pruner) if wanted_pruner is not None else None
    sources = normalize_warm_start(settings.get("warm_start", warm_start, use_default=False))
    wanted = {"objectives": goals, "stop": normalize_stop(settings.get("stop", stop, use_default=False), goals),
              "constraints": normalize_constraints(settings.get("constraints", constraints, use_default=False),
                                                  goals), "warm_start": sources}
    store = get_storage(settings.get("storage", storage))

    def open_record() -> ExperimentRecord:  # run again from the start if the storage is lost mid-way
        record = store.get_experiment(name)
        if record is None:
            if wanted_space is None:
                raise ConfigurationError(
                    f"experiment {name!r} does not exist in {store.redacted_uri}; give a space to create it"
                )
            fields: dict[str, Any] = {**chosen, "space": wanted_space}
            if wanted_algo is not None:
                fields["algorithm"] = wanted_algo
            if wanted_pruner is not None:
                fields["pruner"] = wanted_pruner
            fields.update(wanted)
            check_pruner(fields.get("pruner"), fields["objectives"], wanted_space)  # on creation only
            check_sources(wanted_space, sources, store, name, fields["objectives"], fields.get("constraints"))
            store.create_experiment(name, ExperimentConfig(**fields).to_dict())
            record = store.require_experiment(name)
        return join_experiment(store, record, wanted_space, wanted_algo, chosen, wanted_pruner, wanted,
                               algorithm_options=algo_options)

    with settings.naming_conflicts({**given, "algorithm": algorithm, "pruner": pruner, "objectives": objectives,
                                    "constraints": constraints, "stop": stop, "warm_start": warm_start}):
        return Experiment(store, patiently(store, open_record), sources, chosen)


def get_experiment(name: str, storage: str | BaseStorage | None = None) -> Experiment:
    """Open an existing experiment by name (a storage lost while it is read is waited for, as on joining).

    Raises:
        ExperimentNotFoundError: no experiment of that name in the storage.
    """
    store = get_storage(_config.resolve("storage", storage))
    return Experiment(store, patiently(store, lambda: store.require_experiment(name)))


class Experiment:
    """A handle on one experiment in a storage (cheap; many may exist at once)."""

    def __init__(self, storage: BaseStorage, record: ExperimentRecord,  # warm_start: the sources given, with
                 warm_start: list[dict[str, Any]] | None = None,  # passwords; asked: the budgets build got
                 asked: Mapping[str, Any] | None = None) -> None:
        self.storage, self._record, self._sources = storage, record, warm_start
        self._asked = dict(asked or {})
        self._settings: ExperimentConfig | None = None  # read on first use: `db rm` needs none
        self._client: Worker | None = None

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, storage={self.storage.redacted_uri!r})"

    def __getstate__(self) -> dict[str, Any]:  # an objective's closure may hold it: its ask-and-tell worker
        return {**self.__dict__, "_client": None}  # (threads, locks) stays here, a copy makes its own

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
        """The stored configuration (space, algorithm, budget, heartbeat, seed, …) as a plain dict."""
        return dict(self._record.config)

    @property
    def settings(self) -> ExperimentConfig:
        """The stored configuration, typed and with every default filled in.

        Raises:
            ConfigurationError: the stored configuration is invalid (written by an older release).
        """
        if self._settings is None:
            try:
                self._settings = ExperimentConfig.from_dict(self._record.config).with_passwords(self._sources)
            except ConfigurationError as err:
                raise ConfigurationError(
                    f"experiment {self.name!r} in {self.storage.redacted_uri} has an unusable stored "
                    f"configuration ({err}); {kept_through_a_dump(self.name)}; else delete it with "
                    f"`orchard db rm -n {self.name}` or use a new name") from None
        return self._settings

    @property
    def space(self) -> Space:
        """The search space."""
        return self.settings.space

    @property
    def max_trials(self) -> int | None:
        """The experiment's budget of completed trials (``None``: unlimited)."""
        return self.settings.max_trials

    @property
    def algorithm(self) -> dict[str, Any]:
        """The normalized algorithm configuration ``{name: options}``."""
        return dict(self.settings.algorithm)

    # -- running workers -------------------------------------------------------

    def workon(
        self,
        fn: Callable[..., Any],
        n_workers: int = 1,
        executor: str | Executor | Any | None = None,
        executor_config: Mapping[str, Any] | None = None,
        max_trials: int | None = None,
        trial_timeout: float | None = None,
        on_result: Callable[[Trial], None] | None = None,
        on_error: Callable[[Trial], None] | None = None,
        progress: bool = True,
        idle_timeout: float | None = None,
        trial_memory_limit: float | str | None = None,
        gpus: str | int | Sequence[int | str] | None = None,
        gpus_per_worker: int = 1,
        storage_patience: float | None = None,
    ) -> dict[str, Any]:
        """Run ``n_workers`` workers on ``fn`` until the budget is met; return :attr:`stats`.

        Args:
            fn: the objective, called as ``fn(**params)``; returns a float or a dict
                with ``"objective"``. An exception marks the trial broken.
            n_workers: how many workers to run; no more start than the trials ``max_trials`` can still hand out.
            executor: ``joblib`` (processes; the default for several workers), ``process``, ``dask``,
                ``thread`` or ``single``; or an executor you already have (a ``concurrent.futures.Executor``
                or a ``dask.distributed.Client``), used as it is and left open. With one worker and no
                executor named, the worker runs in this thread (``single``), so ``fn`` need not be picklable.
            executor_config: options for the executor (Dask: ``Client``'s, ``worker_timeout``, ``resources``;
                see :func:`orchard.executors.make_executor`); without ``executor``, for the default pool even
                with one worker; ``thread``, ``single`` and an executor of your own refuse them.
            max_trials: run at most this many more trials in this call.
            trial_timeout: seconds after which an evaluation is killed and the trial broken.
            on_result: called in this process with each newly completed trial.
            on_error: called in this process with each newly broken trial. A callback that
                raises stops the run as Ctrl-C does, and ``workon`` raises its exception.
            progress: show a progress bar when stderr is a terminal.
            idle_timeout: a worker exits after this many seconds with nothing to do.
            trial_memory_limit: bytes or ``"4GB"``: an evaluation whose process tree's resident
                memory passes it is killed and the trial broken with reason ``memory``.
            gpus: devices (``[0, 1]`` or ``"0,1"``) dealt round-robin to the workers as
                ``CUDA_VISIBLE_DEVICES``; ``None`` leaves the environment alone.
            gpus_per_worker: how many of ``gpus`` each worker gets.
            storage_patience: seconds a worker waits for an unreachable storage (default 600, at least the lease).

        Raises:
            ExperimentBrokenError: ``max_broken`` trials broke; the message shows the last error.
            ConfigurationError: ``fn`` is not callable, cannot take the space's names or be loaded by the
                workers, or calls ``workon`` of its experiment; a bad option, ``gpus`` with threads.
            ExecutorError: a worker process died, or could not run (out of open files), and the experiment
                is not finished; finished (budget or this call's ``max_trials`` used, a stopping rule fired),
                it is a warning.
            Interrupted: Ctrl-C, SIGINT or SIGTERM reached this process (or a worker's); the
                workers in local processes or this thread stopped and released their running
                trials (status ``interrupted``), and the error says so. A ``KeyboardInterrupt``.
        """
        check_objective(fn, self.space)
        refuse_nested(self.id, self.name)
        trial_timeout = _config.check("trial_timeout", trial_timeout)
        idle_timeout = _config.check("idle_timeout", idle_timeout)
        memory_limit = parse_memory(trial_memory_limit)
        if executor is None:
            executor = "single" if n_workers == 1 and gpus is None and not executor_config \
                else _config.DEFAULTS["executor"]  # options are for the pool: 'single' takes none
        self.refresh()  # another process may have raised the budget since this handle was made
        settings = WorkerSettings.for_experiment(self.settings, idle_timeout=idle_timeout, max_trials_per_worker=None,
                                                 storage_patience=_config.resolve("storage_patience", storage_patience))
        settings = dataclasses.replace(settings, **self._call_budget(max_trials))
        n_workers = workers_to_start(n_workers, lambda: budget_to_give(self.storage, self.id, settings.max_trials), self.name)
        pool_manager = make_executor(executor, n_workers, executor_config)  # validates name and size
        devices = assign_devices(parse_gpus(gpus), gpus_per_worker, n_workers, shares_environment(executor, executor_config))
        warn_if_budget_met(self.storage, self.id, self.name, self.max_trials, self.config, self._asked)
        travels = executor not in ("single", "thread") and not shares_environment(executor)
        sent = check_travels(fn, self.storage, executor) if travels else fn  # the pickler's reason, if any
        tasks = [WorkerTask(self.storage, self.id, settings.seeded(i), sent, trial_timeout, self.name,
                            self.settings.working_dir, memory_limit, devices[i]) for i in range(n_workers)]
        monitor = ProgressMonitor(self.storage, self.id, self.name, self.max_trials, on_result, on_error,
                                  show_bar=progress and sys.stderr is not None and sys.stderr.isatty())
        fleet = Fleet(self.storage, self.id, tasks, settings.max_attempts, executor_config)
        isolated = trial_timeout is not None or memory_limit is not None or isinstance(fn, ScriptRunner)
        try:
            with interruptible(), monitor, fleet, pool_manager as pool:
                errors = fleet.run(pool, reachable=reaches_local_processes(executor) or shares_environment(
                    executor, executor_config), lasting=outlasts_workon(executor, executor_config))
            raise_failure(errors, self.name, str(executor), isolated)
        except ExecutorError as err:  # a worker out of open files stopped, the others finished the experiment
            if (done := finished(self.storage, self.id, settings)) is None:
                raise
            log.warning("experiment %r %s, but not every worker started here ran to its end: %s",
                        self.name, done, err)
        trials = self.fetch_trials()  # one read for the broken check and the stats
        self._raise_if_broken(trials)
        fleet.say_if_exhausted(self.name, settings.max_trials)  # a space smaller than the budget: said
        return self.stats_of(trials)

    def refresh(self) -> None:
        """Re-read the experiment's stored configuration (e.g. a budget raised elsewhere)."""
        self._record = self.storage.require_experiment(self.name)
        self._settings = None

    def _call_budget(self, max_trials: int | None) -> dict[str, Any]:
        if max_trials is None:  # the experiment's own: raised meanwhile, the workers go on to it
            return {"max_trials": self.max_trials, "fixed_budget": False}
        max_trials = _config.check("max_trials", max_trials)
        cap = budget_held(self.storage, self.id) + max_trials
        return {"max_trials": cap if self.max_trials is None else min(cap, self.max_trials), "fixed_budget": True}

    def _raise_if_broken(self, trials: list[Trial]) -> None:
        broken = [t for t in trials if t.status is TrialStatus.BROKEN]
        if broken and len(broken) >= (limit := self.settings.max_broken):
            last = broken[-1]
            raise ExperimentBrokenError.limit_reached(self.name, len(broken), limit, last.error, last.id)

    # -- ask and tell ----------------------------------------------------------

    def _client_worker(self, trial: Trial | None = None, ending: bool = False) -> Worker:
        if trial is not None:  # the worker of this process that holds it, whichever handle asked
            return holder(trial, self.storage, self._record, self._client_worker, ending)
        if self._client is None:
            self._client = new_client(self.storage, self.id, self.settings, self.name)
        return self._client

    def suggest(self) -> Trial:
        """Reserve a trial for the caller to evaluate, and heartbeat it until observed.

        This is :meth:`orchard.worker.Worker.next_trial` without waiting.

        Raises:
            BudgetExhaustedError: the budget is met or fully reserved, or the space is exhausted.
            ExperimentBrokenError: ``max_broken`` trials broke.
        """
        return suggested(self._client_worker())

    def observe(self, trial: Trial, result: Told) -> Trial:
        """Record the result of a trial from :meth:`suggest` (any handle's in this process); a non-number breaks it.

        A trial whose last :meth:`report` got a "prune" verdict is recorded ``pruned``
        whatever ``result`` says; pass a :class:`~orchard.TrialPruned` (or Optuna's, or the class) to prune it
        on your own decision (after a report); any other exception breaks it, as if the objective raised it.

        Returns:
            The stored trial, ``completed``, ``pruned`` or ``broken``.

        Raises:
            ReservationLostError: the reservation was lost (heartbeat stale).
            ExperimentError: ``trial`` is another experiment's (so is refused by ``report`` and ``release``).
        """
        return self._client_worker(trial, ending=True).finish(trial, Outcome.told(result))

    def report(self, trial: Trial, value: float | Mapping[str, float], step: int) -> None:
        """Store an intermediate ``value`` at ``step`` on a trial from :meth:`suggest`, and judge it.

        With several objectives ``value`` gives each by name (see :func:`orchard.report`).

        The report is stored before this returns; :meth:`should_prune` gives the verdict.

        Raises:
            ValueError: ``value`` is no number (NaN, inf: see :func:`orchard.report`), ``step`` no int >= 0.
            InvalidReportError: the storage refused it (a step not above the last one). Past 10,000
                reports a trial's reports are neither stored nor judged (see :class:`orchard.verdicts.Judge`).
            ReservationLostError: the reservation was lost (heartbeat stale).
        """
        value, step = check_report(value, step)
        self._client_worker(trial).judge(trial.id, value, step)

    def should_prune(self, trial: Trial) -> bool:
        """Whether a :meth:`report` of ``trial`` got a "prune" verdict (then :meth:`observe` records it pruned)."""
        return self._client_worker(trial).judge.verdict_of(trial.id) is not None

    def release(self, trial: Trial) -> Trial:
        """Give a suggested trial back unevaluated (it becomes ``interrupted``).

        Raises:
            ReservationLostError: the reservation was lost meanwhile.
        """
        return self._client_worker(trial, ending=True).release(trial)

    def insert(self, params: Mapping[str, Any], objective: float | None = None,
               results: Mapping[str, Any] | None = None, count_in_budget: bool = False) -> Trial:
        """Add a ``new`` trial at ``params`` (the next free worker evaluates it first), or, with ``objective``
        or ``results`` (several objectives: each in ``results``), one evaluated elsewhere: ``completed``, evidence
        for the algorithm, apart from ``max_trials`` unless ``count_in_budget`` (see :mod:`orchard.recording`).

        Raises:
            SpaceError: the params are not a point of the space (the message names the dimension).
            ConfigurationError: the objective is missing or not finite, or a result cannot be stored.
            DuplicateTrialError: a trial with those params exists.
            BudgetExhaustedError: the budget is fully used (raise ``max_trials``) or a stopping rule fired.
        """
        if objective is None and results is None:
            return queue_trial(self.storage, self.id, self.settings, params, self.name)
        return record_evaluation(self.storage, self.id, self.settings, params, objective, results,
                                 count_in_budget, f"insert into experiment {self.name!r}")

    # -- reading ---------------------------------------------------------------

    def fetch_trials(self, statuses: Iterable[TrialStatus | str] | None = None) -> list[Trial]:
        """The experiment's trials, oldest first (only ``statuses`` if given)."""
        return self.storage.fetch_trials(self.id, statuses)

    @property
    def best_trial(self) -> Trial | None:
        """The completed trial with the lowest objective (at the highest fidelity that has one), or ``None``.

        Raises:
            ConfigurationError: the experiment has several objectives (use :meth:`pareto_front`).
        """
        objectives = self.settings.objectives
        if objectives is not None and len(objectives) > 1:
            raise ConfigurationError(
                f"experiment {self.name!r} has several objectives ({', '.join(objectives)}), so no single "
                "best trial; use exp.pareto_front() for the trials no other one beats on every objective")
        if objectives is None and not self.settings.constraints and self.space.fidelity is None \
                and reported_feasible(best := self.storage.best_trial(self.id)):  # no trial fetched
            return best
        return self._best_of(self.fetch_trials([TrialStatus.COMPLETED]))

    def _best_of(self, trials: list[Trial]) -> Trial | None:
        s = self.settings
        return best_by_fidelity(trials, s.space.fidelity, lambda t: best_of(t, s.objectives, s.constraints))

    def pareto_front(self) -> list[Trial]:
        """The feasible completed trials that no other feasible completed trial dominates, oldest first.

        On a single-objective experiment, the best feasible trial(s).
        """
        return pareto_front(self.fetch_trials([TrialStatus.COMPLETED]), self.settings.objectives, self.settings.constraints)

    def hypervolume(self, reference: Sequence[float] | None = None) -> tuple[float, tuple[float, ...]]:
        """The hypervolume of :meth:`pareto_front` and its reference point (minimisation form).

        Args:
            reference: one value per objective, in their directions; ``None``: worst feasible + 10 % of range.

        Raises:
            ConfigurationError: ``reference`` is not one finite number per objective.
            HypervolumeError: more than 3 objectives, or a volume beyond the largest float.
        """
        s, trials = self.settings, self.fetch_trials([TrialStatus.COMPLETED])
        return front_hypervolume(trials, s.objectives, s.constraints, reference, f"experiment {self.name!r}")

    @property
    def stats(self) -> dict[str, Any]:
        """Counts by status, :attr:`best_trial`'s objective and params, elapsed seconds, trials/s, stopping
        rules (``stop``), ``inserted_apart``: completed trials recorded apart from the budget (in ``completed``)."""
        return self.stats_of(self.fetch_trials())

    def stats_of(self, trials: list[Trial]) -> dict[str, Any]:
        """:attr:`stats` of ``trials``, the experiment's trials just read (several figures from one read)."""
        counts = {status.value: 0 for status in TrialStatus}
        for trial in trials:
            counts[trial.status.value] += 1
        best = self._best_of(trials)
        starts = [t.submit_time for t in trials if t.submit_time]
        ends = [t.end_time for t in trials if t.end_time]
        elapsed = max(ends) - min(starts) if starts and ends else 0.0
        return {
            "name": self.name, "counts": counts,
            "best_objective": best.objective if best else None, "best_params": dict(best.params) if best else None,
            "elapsed": elapsed, "trials_per_second": counts["completed"] / elapsed if elapsed > 0 else 0.0,
            "max_trials": self.max_trials, "stop": stop_summary(self.storage.experiment(self.id).config),
            "inserted_apart": sum(not t.in_budget for t in trials if t.status is TrialStatus.COMPLETED),
        }

    def to_pandas(self) -> Any:
        """The trials as a ``pandas.DataFrame``, one row each (see :func:`orchard.dataframe.trials_frame`)."""
        return trials_frame(self.fetch_trials(), self.space)
