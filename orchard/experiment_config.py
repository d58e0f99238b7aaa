"""An experiment's settings as one typed, validated, frozen record.

The storage keeps an experiment's configuration as a plain dict
(:meth:`ExperimentConfig.to_dict`); everything that reads it goes through
:meth:`ExperimentConfig.from_dict`, so each default is written once, here, and
every value is checked before it is stored.

The checks are small *rules*, ``rule(value) -> cast value``, that raise
``ValueError`` naming what the value must be; :func:`check_setting` turns that
into one :class:`~orchard.errors.ConfigurationError` line that names the
setting, where it came from, and what to do. :mod:`orchard.config` applies the
same rules to settings that do not belong to an experiment (``n_workers``,
timeouts).
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from orchard.algorithms import normalize_algorithm_config
from orchard.constraints import normalize_constraints
from orchard.errors import ConfigurationError
from orchard.objectives import normalize_objectives
from orchard.pruners import normalize_pruner_config
from orchard.space import Space
from orchard.stopping import normalize_stop
from orchard.storages._uri import redact_all
from orchard.storages.values import int_fits
from orchard.trial import INT_LIMIT
from orchard.warm_start import hide_passwords, normalize_warm_start, with_passwords

__all__ = [
    "applied_max_broken",
    "EXPERIMENT_RULES",
    "HEARTBEAT_RANGE",
    "ExperimentConfig",
    "Rule",
    "WorkerSettings",
    "check_setting",
    "heartbeat_seconds",
    "kept_through_a_dump",
    "non_negative_int",
    "optional",
    "positive_int",
    "positive_number",
    "text",
]

#: ``rule(value) -> cast value``; raises ``ValueError("<what the value must be>")``.
Rule = Callable[[Any], Any]


#: The range of ``heartbeat`` (seconds): below it a worker writes its heartbeat hundreds of times a
#: second and every lease is lost at once; above it a lost trial waits days, and timers overflow.
HEARTBEAT_RANGE = (0.01, 86_400.0)


def heartbeat_seconds(value: Any) -> float:
    """``value`` as a heartbeat period in :data:`HEARTBEAT_RANGE` (strings are parsed)."""
    low, high = HEARTBEAT_RANGE
    requirement = f"a number of seconds from {low:g} to {high:,.0f} (a day)"
    try:
        number = positive_number(value)
    except ValueError:
        raise ValueError(requirement) from None
    if not low <= number <= high:
        raise ValueError(requirement)
    return number


def positive_int(value: Any) -> int:
    """``value`` as an int >= 1 (strings are parsed; a whole number written ``3.0`` or ``1e3`` is one)."""
    return _integer(value, 1, "a positive integer")


def non_negative_int(value: Any) -> int:
    """``value`` as an int >= 0 (strings are parsed; a whole number written ``3.0`` or ``1e3`` is one)."""
    return _integer(value, 0, "an integer >= 0")


def positive_number(value: Any) -> float:
    """``value`` as a finite float > 0 (strings are parsed)."""
    requirement = "a positive number of seconds"
    if isinstance(value, bool):
        raise ValueError(requirement)  # noqa: TRY004 -- rules report every misfit as ValueError
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # an int beyond a float's range too
        raise ValueError(requirement) from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(requirement)
    return number


def text(value: Any) -> str:
    """``value`` as a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def folder(value: Any) -> str:
    """``value`` as a folder's absolute path (``~`` expanded), resolved where the experiment is created.

    A relative one would be resolved in each worker's own directory: workers started elsewhere
    (SLURM jobs, a second terminal) would each use their own folder, and a promoted trial would not
    find its parent's. A stored relative path (older releases) still resolves where it is read.
    """
    path = text(value)
    if "\x00" in path:  # os.makedirs would raise a bare ValueError at the first trial
        raise ValueError("a folder path (without a NUL character)")
    return os.path.abspath(os.path.expanduser(path))


def optional(rule: Rule) -> Rule:
    """``rule``, letting ``None`` (unset) through."""

    def check(value: Any) -> Any:
        return None if value is None else rule(value)

    check.__doc__ = rule.__doc__
    return check


def _integer(value: Any, minimum: int, requirement: str) -> int:
    """One rule for every source: ``max_trials=3.0`` was taken while ``ORCHARD_MAX_TRIALS=2.0``,
    ``--max-trials 1e3`` and ``max_trials: 1e3`` in a file (text to YAML) were refused. A whole number
    is taken however written, exactly (text is read as a ``Decimal``, not rounded through a float)."""
    if isinstance(value, str):
        try:
            value = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise ValueError(requirement) from None
    if isinstance(value, (float, decimal.Decimal)):  # bounded before int(): int(Decimal("1e999999999")) hangs
        finite = value.is_finite() if isinstance(value, decimal.Decimal) else math.isfinite(value)
        if finite and value >= INT_LIMIT:
            raise ValueError(f"{requirement} below 2**63 (what every storage holds)")
        if not finite or value <= -INT_LIMIT or value != int(value):
            raise ValueError(requirement)
    if isinstance(value, bool):
        raise ValueError(requirement)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(requirement) from None
    if number < minimum:
        raise ValueError(requirement)
    if number >= INT_LIMIT:
        raise ValueError(f"{requirement} below 2**63 (what every storage holds)")
    return number


def check_setting(key: str, value: Any, rule: Rule, source: str = "") -> Any:
    """Apply ``rule`` to ``value``; return the cast value.

    Args:
        key: the setting's name (for the message).
        value: the value given.
        rule: the setting's rule.
        source: where the value came from (``"--seed"``, ``"ORCHARD_SEED"``, a file), if known.

    Raises:
        ConfigurationError: the value breaks the rule.
    """
    try:
        return rule(value)
    except ConfigurationError as err:  # a rule that words its own message (stop rules): the source goes first
        if not source:
            raise
        raise ConfigurationError(f"{source}: {err}") from None
    except ValueError as err:
        where = f" (from {source})" if source else ""
        unset = " (or unset)" if _allows_unset(rule) else ""
        raise ConfigurationError(
            f"invalid setting {key}={redact_all(value)!r}{where}: it must be {err}{unset}; correct it and try again"
        ) from None


def _allows_unset(rule: Rule) -> bool:
    try:
        return rule(None) is None
    except ValueError:
        return False


#: Rules of the experiment settings; ``space`` and ``algorithm`` check themselves.
EXPERIMENT_RULES: dict[str, Rule] = {
    "max_trials": optional(positive_int),
    "max_broken": positive_int,
    "max_attempts": positive_int,
    "heartbeat": heartbeat_seconds,
    "seed": optional(non_negative_int),
    "working_dir": optional(folder),
}


def _algorithm_setting(value: Any, stored: bool) -> dict[str, dict[str, Any]]:
    """``value`` normalized; a stored one this installation cannot build, as it was stored.

    A plugin installed only where the workers run (or in another version there) made the
    experiment an "unusable stored configuration ... delete it" for status, info and plots,
    although only a worker needs the algorithm; a worker's settings still refuse it.
    """
    try:
        return normalize_algorithm_config(value)
    except ConfigurationError:
        if not (stored and isinstance(value, Mapping) and len(value) == 1
                and all(isinstance(options, Mapping) for options in value.values())):
            raise
        return {str(name): dict(options) for name, options in value.items()}


def _refuse_a_huge_int(value: Any, where: str) -> None:
    """Refuse an int no storage holds among options (``{bayes: {n_initial_points: 1e30}}`` read as YAML).

    The algorithm took it, and the storage refused it: "cannot store an int of 77 bits ... convert params,
    results and configuration values", naming no option, or MongoDB's bare OverflowError.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_a_huge_int(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for at, item in enumerate(value):
            _refuse_a_huge_int(item, f"{where}[{at}]")
    elif type(value) is int and not int_fits(value):
        raise ConfigurationError(f"{where} is an int of {value.bit_length()} bits, more than any storage "
                                 "holds (-2**63 < n < 2**63); give a smaller value")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The settings of one experiment, shared by every worker through the storage.

    Constructing one validates and casts every field (``ConfigurationError``
    naming the bad setting), so a stored configuration is always usable.

    Args:
        space: the search space.
        algorithm: ``"random"``, ``"bayes"`` or ``{name: {options}}``; kept normalized.
        max_trials: the budget of completed trials (``None``: unlimited).
        max_broken: broken trials after which the experiment stops.
        max_attempts: reservations of one trial lost to dead or frozen workers
            after which the trial is broken (graceful releases do not count).
        heartbeat: seconds between a worker's heartbeats.
        seed: seed of the algorithm (``None``: fresh entropy).
        working_dir: base folder of per-trial working directories.
        pruner: ``"median"``, ``{"asha": {options}}``, ... (see :mod:`orchard.pruners`);
            kept normalized; ``{"none": {}}`` by default.
        objectives: several objectives, ``{"error": "min", "latency_ms": "max"}`` in order of
            importance (see :mod:`orchard.objectives`); ``None``: one objective, ``"objective"``.
        constraints: bounds on reported metrics, ``["memory_gb <= 16"]`` (see
            :mod:`orchard.constraints`); ``None``: none.
        stop: stopping rules, ``{"target": 0.1, "patience": 20, "max_cost": 10.0, "max_time": 7200.0}``
            (see :mod:`orchard.stopping`); kept normalized; ``None``: none.
        warm_start: earlier experiments whose completed trials are told to the algorithm as
            prior evidence, ``[{"experiment": ..., "storage": ..., "fill": {...}}]`` (see
            :mod:`orchard.warm_start`); ``None``: none.
    """

    space: Space
    algorithm: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {"random": {}})
    max_trials: int | None = None
    max_broken: int = 3
    max_attempts: int = 3
    heartbeat: float = 30.0
    seed: int | None = None
    working_dir: str | None = None
    pruner: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {"none": {}})
    objectives: dict[str, str] | None = None
    constraints: list[str] | None = None
    stop: dict[str, Any] | None = None
    warm_start: list[dict[str, Any]] | None = None
    #: A configuration read from the storage (see :meth:`from_dict`), not a field.
    stored: dataclasses.InitVar[bool] = False

    def __post_init__(self, stored: bool = False) -> None:
        if not isinstance(self.space, Space):
            raise ConfigurationError(
                f"space must be a Space, got {type(self.space).__name__}; "
                "use ExperimentConfig.from_dict for a mapping of priors")
        object.__setattr__(self, "algorithm", _algorithm_setting(self.algorithm, stored))
        object.__setattr__(self, "pruner", normalize_pruner_config(self.pruner))
        object.__setattr__(self, "objectives", normalize_objectives(self.objectives))
        object.__setattr__(self, "constraints", normalize_constraints(self.constraints))
        object.__setattr__(self, "stop", normalize_stop(self.stop, self.objectives))
        object.__setattr__(self, "warm_start", normalize_warm_start(self.warm_start))
        for key, rule in EXPERIMENT_RULES.items():
            object.__setattr__(self, key, check_setting(key, getattr(self, key), rule))
        if not stored:
            for key in ("algorithm", "pruner"):
                _refuse_a_huge_int(getattr(self, key), key)

    def __repr__(self) -> str:  # a warm-start source's password: not in a log line or a traceback's locals
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["warm_start"] = hide_passwords(self.warm_start)
        return f"{type(self).__name__}({', '.join(f'{key}={value!r}' for key, value in values.items())})"

    @property
    def stale_after(self) -> float:
        """Seconds a reservation's heartbeat may stay unchanged before it is lost (3 × heartbeat)."""
        return 3.0 * self.heartbeat

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], stored: bool = True) -> ExperimentConfig:
        """Read a stored (or, ``stored=False``, a user-given) configuration; missing keys take their defaults.

        Keys this version does not know are ignored, so a record written by a newer
        release can still be read. A stored algorithm this installation cannot load (a plugin
        installed only where the workers run) is kept as stored: ``status``, ``info``, plots and
        dumps read the experiment; a worker's settings (:class:`WorkerSettings`) still refuse it.

        Raises:
            ConfigurationError: a value is invalid, or ``space`` is missing.
        """
        if "space" not in data:
            raise ConfigurationError("an experiment configuration needs a space")
        known = {field.name for field in dataclasses.fields(cls)} - {"space"}
        values = {key: data[key] for key in known if data.get(key) is not None}
        space = data["space"] if isinstance(data["space"], Space) else Space.from_config(data["space"])
        return cls(space=space, **values, stored=stored)

    def with_passwords(self, sources: list[dict[str, Any]] | None) -> ExperimentConfig:
        """This stored configuration with the password of each warm-start source's storage (not stored)
        taken from the same source in ``sources`` (as given to this process)."""
        return dataclasses.replace(self, stored=True, warm_start=with_passwords(self.warm_start, sources))

    def to_dict(self) -> dict[str, Any]:
        """The plain dict the storage keeps (JSON/BSON-friendly; a warm-start source's password hidden)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["space"] = self.space.config()
        values["algorithm"] = {name: dict(options) for name, options in self.algorithm.items()}
        values["pruner"] = {name: dict(options) for name, options in self.pruner.items()}
        values["warm_start"] = hide_passwords(values["warm_start"])  # its readers: not the source's
        for key in ("objectives", "constraints", "stop", "warm_start"):  # unset: left out, so single-objective records stay as they were
            value = values.pop(key)
            if value is not None:
                values[key] = type(value)(value)
        return values

    @classmethod
    def default(cls, key: str) -> Any:
        """The default of field ``key`` (``None`` for ``space``)."""
        for field in dataclasses.fields(cls):
            if field.name == key:
                if field.default_factory is not dataclasses.MISSING:
                    return field.default_factory()
                return None if field.default is dataclasses.MISSING else field.default
        raise KeyError(key)


@dataclasses.dataclass(frozen=True, repr=False)  # ExperimentConfig's repr, which hides passwords
class WorkerSettings(ExperimentConfig):
    """An experiment's settings plus the limits of one worker's run.

    Resolved by the caller; never read from the environment. Validated like
    :class:`~orchard.experiment_config.ExperimentConfig`.

    Args:
        idle_timeout: seconds :meth:`orchard.worker.Worker.run` waits for a trial before it stops
            (``None``: as long as other workers hold trials).
        max_trials_per_worker: trials (completed or broken) after which this worker stops.
        storage_patience: seconds a call is retried while the storage is unreachable (at least the lease).
        fixed_budget: whether ``max_trials`` is this run's own cap (``workon(max_trials=N)``), kept when
            the experiment's budget is raised meanwhile; otherwise the worker goes on to a raised budget.
    """

    idle_timeout: float | None = None
    max_trials_per_worker: int | None = None
    storage_patience: float = 600.0
    fixed_budget: bool = False

    def __post_init__(self, stored: bool = False) -> None:
        super().__post_init__(stored)
        for key, rule in (("idle_timeout", optional(positive_number)),
                          ("max_trials_per_worker", optional(positive_int)),
                          ("storage_patience", positive_number)):
            object.__setattr__(self, key, check_setting(key, getattr(self, key), rule))

    @classmethod
    def for_experiment(cls, config: ExperimentConfig, **limits: Any) -> WorkerSettings:
        """``config`` plus this run's ``limits`` (``idle_timeout``, ``max_trials_per_worker``, ``storage_patience``)."""
        fields = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
        return cls(**fields, **limits)

    def seeded(self, index: int) -> WorkerSettings:
        """The settings of the ``index``-th worker of one run: its own seed, derived from the experiment's."""
        if self.seed is None or index == 0:
            return self
        return dataclasses.replace(self, seed=self.seed * 1_000_003 + index)


def applied_max_broken(config: Mapping[str, Any]) -> int:
    """The ``max_broken`` workers apply to a stored experiment's ``config``: its own, read as they read it
    (``"5"`` or ``5.0`` is 5), else the default (none, or one they refuse: the dashboard names it).

    Another program may store none, or text: ``orchard list`` read the raw value and showed a stop at the
    default 3 where ``status`` and the workers, reading ``"5"`` as 5, had not stopped.
    """
    try:
        return positive_int(config["max_broken"])
    except (KeyError, ValueError):
        return int(ExperimentConfig.default("max_broken"))


def kept_through_a_dump(name: str) -> str:
    """How to keep the trials of an experiment whose stored configuration Orchard refuses: its error and
    ``orchard list`` said only to delete it (``orchard db rm``), which deletes them."""
    return (f"to keep its trials, dump it (orchard db dump -n {name} -o {name}.json), correct the setting in "
            f"the file and load it under a new name (orchard db load {name}.json -n NEWNAME)")
