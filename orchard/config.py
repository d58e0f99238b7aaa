"""Settings and their single resolution: argument > flag > ORCHARD_* env > config file > default.

Only the edges (the Python client's constructors and the command line) read
settings, through :class:`Settings` (or :func:`resolve` for one key); each
value comes back cast and validated, whatever its source (``--seed 3``,
``ORCHARD_SEED=3``, ``seed: 3`` in a file). Storages, algorithms, executors
and the worker take plain arguments and never read the environment.

Every setting is declared once in :data:`SETTINGS`, with its rule and its
default; the defaults of experiment settings come from
:class:`~orchard.experiment_config.ExperimentConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from orchard.algorithms import normalize_algorithm_config
from orchard.constraints import normalize_constraints
from orchard.errors import ConfigurationError, ExperimentConflictError, meant
from orchard.experiment_config import (
    EXPERIMENT_RULES,
    ExperimentConfig,
    Rule,
    check_setting,
    optional,
    positive_int,
    positive_number,
)
from orchard.objectives import normalize_objectives
from orchard.pruners import normalize_pruner_config
from orchard.report import OBJECTIVES_ENV, REPORT_ENV, RESULTS_ENV, TRIAL_ENV, VERDICT_ENV, read_at_most
from orchard.resources import parse_gpus, parse_memory
from orchard.stopping import normalize_stop
from orchard.storages import DEFAULT_STORAGE
from orchard.storages._uri import UNEXPANDED, redact_all
from orchard.strays import RUN_ENV, WORKER_ENV
from orchard.terminal import is_utf8
from orchard.warm_start import normalize_warm_start

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULTS",
    "SETTINGS",
    "Setting",
    "Settings",
    "check",
    "config_files",
    "load_config_file",
    "resolve",
    "unknown_variables",
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one setting is read.

    Attributes:
        rule: casts and checks a value from any source (``None``: taken as given).
        default: the value when no source sets it.
        env: whether ``ORCHARD_<KEY>`` may set it.
        ambient: whether ``./orchard.yaml`` and ``~/.config/orchard/config.yaml`` may set it
            (``name`` and ``space`` describe one experiment: only a ``--config`` file gives them).
    """

    rule: Rule | None = None
    default: Any = None
    env: bool = True
    ambient: bool = True


def name_or_mapping(value: Any) -> Any:
    """A name, a mapping, or a mapping written as YAML/JSON text (``'{bayes: {acq_func: EI}}'``)."""
    if not isinstance(value, str) or not (value.lstrip().startswith("{") or ":" in value):
        return value
    from orchard.yaml_input import load_yaml

    requirement = "a name or a YAML/JSON mapping such as '{bayes: {acq_func: EI}}'"
    try:
        data = load_yaml(value, "the mapping")
    except ConfigurationError as err:
        raise ValueError(f"{requirement} ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(requirement)  # noqa: TRY004 -- rules report every misfit as ValueError
    return data


def objective_mapping(value: Any) -> Any:
    """Several objectives as ``{name: direction}`` from a mapping, ``NAME:DIR`` items or ``"a:min,b:max"``.

    The directions are checked where the experiment is built (:mod:`orchard.objectives`).
    """
    if value is None or isinstance(value, Mapping):
        return value
    items = [value] if isinstance(value, str) else value
    requirement = "NAME:min or NAME:max items, such as error:min (or a mapping {error: min})"
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError(requirement)
    items = [part for item in items for part in item.split(",") if part.strip()]  # --objective a:min,b:max
    unreadable = [item for item in items if not is_utf8(item)]
    if unreadable:  # a byte of a command line that is no UTF-8: no script can report it, MongoDB refused it
        raise ValueError(f"{requirement}, in UTF-8 text ({unreadable[0]!r} holds bytes that are not UTF-8)")
    if not all(":" in item for item in items):
        raise ValueError(requirement)
    pairs = [item.rsplit(":", 1) for item in items]
    names = [name.strip() for name, _ in pairs]
    joined = [name for name in names if ":" in name or ";" in name]  # 'a:min; b:max' read as 'a:min; b'
    if joined:
        raise ValueError(f"{requirement}, separated by ',' ({joined[0]!r} is no objective name)")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # a mapping would keep the last one silently
        raise ValueError(f"{requirement}, each objective once ({', '.join(twice)} given twice)")
    return {name.strip(): direction.strip() for name, direction in pairs}


def expression_list(value: Any) -> Any:
    """Constraint expressions: a list, or one text of ``;``-separated ones (checked by :mod:`orchard.constraints`)."""
    if isinstance(value, str):
        return [part for part in value.split(";") if part.strip()]
    return value


def stop_rules(value: Any) -> Any:
    """Stopping rules: a mapping, YAML/JSON mapping text, ``RULE=VALUE`` items or ``"a=1,b=2"``.

    Checked here (unknown rules, bad values); against the objectives where the experiment is built.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        value = name_or_mapping(value)
    return normalize_stop(value)


def checked_by(check: Callable[[Any], Any], parse: Rule | None = None) -> Rule:
    """``parse``, then ``check`` run on the result, which is kept as given (``None`` passes through).

    So a setting checked fully only where the experiment is built (the algorithm, with its space)
    is refused at once, its error naming the source (``ORCHARD_ALGORITHM``, a config file).
    """

    def rule(value: Any) -> Any:
        value = value if parse is None else parse(value)
        if value is not None:
            check(value)
        return value

    rule.__doc__ = (parse or check).__doc__
    return rule


def storage_location(value: Any) -> Any:
    """A storage URI or path (opened, and checked further, by :func:`orchard.storages.get_storage`) or a storage."""
    from orchard.storages import BaseStorage, storage_opener

    if isinstance(value, BaseStorage):
        return value
    if isinstance(value, str) and value.strip():
        storage_opener(value)  # a malformed URI is refused naming its source (ORCHARD_STORAGE, a file)
        return value
    raise ValueError("a storage URI or a path ending in .pkl, such as runs/orchard.pkl or mongodb://host/db")


def option_mapping(value: Any) -> Any:
    """A mapping of options, or one written as YAML/JSON text (``'{address: tcp://scheduler:8786}'``)."""
    value = name_or_mapping(value)
    if not isinstance(value, Mapping):
        raise ValueError("a YAML/JSON mapping of options, such as '{address: tcp://scheduler:8786}'")
    return value


def executor_name(value: Any) -> Any:
    """A name of :data:`orchard.executors.EXECUTORS` (checked here: ``hunt`` stored the experiment first)."""
    from orchard.executors import EXECUTORS

    if not isinstance(value, str) or value not in EXECUTORS:
        raise ValueError(f"one of {', '.join(EXECUTORS)}")
    return value


def working_folder(value: Any) -> Any:
    """A folder path (checked and made absolute by the ``working_dir`` rule of the experiment) that a user
    wrote: a blank one, or one holding a ``$VARIABLE`` nothing expanded, made a folder named ``" "`` or
    ``$HOME`` in the directory of the hunt, where every trial ran."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("a folder path, not blank")
    unexpanded = UNEXPANDED.search(value) if isinstance(value, str) else None
    if unexpanded is not None:
        raise ValueError(f"a folder path without {unexpanded.group()}, which nothing expanded (a file, a "
                         "variable or single quotes): write the path out, or let the shell expand it")
    return EXPERIMENT_RULES["working_dir"](value)


def _experiment(key: str) -> Setting:
    return Setting(EXPERIMENT_RULES[key], ExperimentConfig.default(key))


#: Every setting Orchard resolves. ``name``, ``space`` and ``executor_config`` come
#: only from flags, arguments and config files.
SETTINGS: dict[str, Setting] = {
    "name": Setting(optional(str), env=False, ambient=False),  # checked by orchard.naming where it is used
    "space": Setting(env=False, ambient=False),
    "storage": Setting(storage_location, DEFAULT_STORAGE),
    # the algorithm's name and options; checked again against the space when the experiment is built
    "algorithm": Setting(checked_by(normalize_algorithm_config, name_or_mapping), ExperimentConfig.default("algorithm")),
    "pruner": Setting(checked_by(normalize_pruner_config, name_or_mapping), ExperimentConfig.default("pruner")),
    **{key: _experiment(key) for key in EXPERIMENT_RULES},
    "working_dir": Setting(optional(working_folder)),
    # several objectives and constraints: checked against each other when the experiment is built
    "objectives": Setting(checked_by(normalize_objectives, objective_mapping)),
    "constraints": Setting(checked_by(normalize_constraints, expression_list)),
    "stop": Setting(stop_rules),  # orchard.stopping
    # sources checked here for their form, against the space where the experiment is built (orchard.warm_start)
    "warm_start": Setting(checked_by(normalize_warm_start), env=False),
    "idle_timeout": Setting(optional(positive_number)),
    # how long a worker waits for an unreachable storage before it gives up (never less than the lease)
    "storage_patience": Setting(positive_number, 600.0),
    "trial_timeout": Setting(optional(positive_number)),
    "executor": Setting(executor_name, "joblib"),
    "executor_config": Setting(option_mapping, env=False),
    "n_workers": Setting(positive_int, 1),
    # resources of the workers: their parsers raise their own one-line ConfigurationError
    "trial_memory_limit": Setting(parse_memory),
    "gpus": Setting(parse_gpus),
    "gpus_per_worker": Setting(positive_int, 1),
}

#: Every setting's default.
DEFAULTS: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}

_ENV_PREFIX = "ORCHARD_"

#: The command-line flags not named after their setting: one item per flag, the flag repeated.
_FLAGS = {"objectives": "--objective", "constraints": "--constraint"}


#: Config files already said to be readable by others while they hold a password (said once per process).
_EXPOSED: set[str] = set()
#: ``ORCHARD_*`` variables a user may guess that set nothing, and what to use instead.
_NOT_VARIABLES = {
    "CONFIG": "give the file with --config, or write ./orchard.yaml",
    **{key.upper(): f"{key} is given by {'a flag, ' if key != 'space' else 'the command, '}an argument or a "
       f"config file only" for key, setting in SETTINGS.items() if not setting.env},
}
#: The variables ``hunt`` sets for a trial's command (a hunt run inside a trial sees them).
_TRIAL_VARIABLES = frozenset({
    RESULTS_ENV, REPORT_ENV, VERDICT_ENV, TRIAL_ENV, OBJECTIVES_ENV, RUN_ENV, WORKER_ENV,
    "ORCHARD_EXPERIMENT_NAME", "ORCHARD_PARENT_TRIAL_ID", "ORCHARD_PARENT_WORKING_DIR",
})
_unknown_seen: set[str] = set()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with each ``ORCHARD_*`` variable of ``environ`` meant as a setting that sets none.

    ``ORCHARD_MAX_TRIAL=10`` (a letter short), ``ORCHARD_NAME`` (read from no variable) or
    ``orchard_seed`` (lower case) was ignored without a word, and a hunt meant to stop after 10
    trials ran until killed. Names far from every setting (a script's own ``ORCHARD_DATA``, the
    variables ``hunt`` sets for a trial) are left alone.
    """
    valid = {_ENV_PREFIX + key.upper(): key for key, setting in SETTINGS.items() if setting.env}
    problems = []
    for variable in sorted(environ):
        if variable in valid or variable in _TRIAL_VARIABLES or not variable.upper().startswith(_ENV_PREFIX) \
                or not environ[variable].strip():
            continue
        suffix = variable.upper()[len(_ENV_PREFIX):]
        if variable.upper() in valid:
            problems.append(f"{variable} sets nothing: variable names are case-sensitive, did you mean "
                            f"{variable.upper()}?")
        elif suffix in _NOT_VARIABLES:
            problems.append(f"{variable} sets nothing: {_NOT_VARIABLES[suffix]}")
        elif close := meant(variable.upper(), valid, cutoff=0.85):
            problems.append(f"{variable} sets nothing: did you mean {close}?")
    return problems


def config_files(cwd: Path | None = None) -> list[Path]:
    """Config files in precedence order: ``./orchard.yaml`` then ``~/.config/orchard/config.yaml``."""
    here = Path.cwd() if cwd is None else cwd
    return [here / "orchard.yaml", Path.home() / ".config" / "orchard" / "config.yaml"]


#: Characters a config file may hold: a space of a thousand dimensions takes 30,000.
MAX_CONFIG_CHARACTERS = 1 << 20


def load_config_file(path: Path) -> dict[str, Any]:
    """Read one YAML config file; a missing file is empty.

    Raises:
        ConfigurationError: the file is a folder, cannot be read, is not UTF-8 or not valid YAML (a
            key given twice is refused, see :mod:`orchard.yaml_input`) or not a mapping, or has unknown keys.
    """
    if not path.is_file():
        if path.is_dir():  # ./orchard.yaml made a folder by mistake: its settings were dropped without a word
            raise ConfigurationError(f"config file {path} is a folder; put the settings in a file, "
                                     "or remove it")
        return {}
    from orchard.yaml_input import load_yaml

    try:
        with path.open(encoding="utf-8") as handle:
            content = read_at_most(handle, MAX_CONFIG_CHARACTERS)
        if content is None:  # a data set given by mistake: YAML read 60 MB of it for a minute
            raise ConfigurationError(f"config file {path} holds more than {MAX_CONFIG_CHARACTERS >> 20} MiB "
                                     "of text; a file of settings is smaller: check --config")
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise ConfigurationError(f"config file {path} is not UTF-8 text (byte {byte:#04x} at offset "
                                 f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigurationError(f"config file {path} cannot be read: {err}") from None
    data = load_yaml(content, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    unknown = sorted(map(repr, set(data) - set(SETTINGS)))  # keys of several types (1, 'foo') do not sort
    if unknown:
        near = [f"{close} for {key}" for key in unknown if (close := meant(key.strip("'").lower(), SETTINGS))]
        raise ConfigurationError(
            f"config file {path} has unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(SETTINGS))}"
            + (f"; did you mean {', '.join(near)}?" if near else "")
        )
    _warn_if_exposed(path, data)
    return data


def _warn_if_exposed(path: Path, data: Mapping[str, Any]) -> None:
    """Say when a file whose storage URI (or a warm-start source's) holds a password can be read by others."""
    secrets = {key: data.get(key) for key in ("storage", "warm_start")}
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o044 and redact_all(secrets) != secrets and str(path) not in _EXPOSED:
        _EXPOSED.add(str(path))
        log.warning("config file %s holds a password and other users can read it (mode %04o); make it "
                    "yours alone: chmod 600 %s", path, mode, path)


class Settings:
    """The settings of one call or command, each resolved on demand.

    Precedence: the Python argument > ``flags`` > ``config_file`` (``--config``) >
    ``ORCHARD_<KEY>`` > ``./orchard.yaml`` > ``~/.config/orchard/config.yaml`` > default.

    Args:
        flags: values given on the command line (``None``: not given).
        config_file: a file named explicitly (``--config``); it must exist.
        environ: the environment (default ``os.environ``).
        files: the ambient config files (default :func:`config_files`).

    Raises:
        ConfigurationError: ``config_file`` does not exist or cannot be read.
    """

    def __init__(
        self,
        flags: Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        files: list[Path] | None = None,
    ) -> None:
        self._flags = dict(flags or {})
        self._environ = os.environ if environ is None else environ
        self._files = config_files() if files is None else files
        self._explicit: dict[str, Any] = {}
        self._explicit_path = str(config_file) if config_file else ""
        if environ is None:  # the process's own environment: each mistyped variable said once
            for problem in unknown_variables(self._environ):
                if problem not in _unknown_seen:
                    _unknown_seen.add(problem)
                    log.warning("environment variable %s (the variables: docs/cli.md#environment-variables)",
                                problem)
        if config_file:
            if not Path(config_file).is_file():
                found = "is a folder" if Path(config_file).is_dir() else \
                    "is not a file" if Path(config_file).exists() else "not found"
                raise ConfigurationError(f"config file {config_file} {found}; check --config")
            self._explicit = load_config_file(Path(config_file))

    def get(self, key: str, argument: Any = None, use_default: bool = True) -> Any:
        """The value of ``key``, cast and checked.

        Args:
            key: a key of :data:`SETTINGS`.
            argument: the value given explicitly in Python (``None``: not given).
            use_default: with ``False``, return ``None`` instead of the default when
                no source sets the key (so a caller joining an experiment passes on
                only what the user asked for).

        Raises:
            ConfigurationError: unknown key, or a value that breaks the setting's rule
                (the message names the source).
        """
        setting = SETTINGS.get(key)
        if setting is None:
            raise ConfigurationError(f"unknown setting {key!r}; valid: {', '.join(sorted(SETTINGS))}")
        for value, source in self._sources(key, argument, setting):
            if value is not None:
                return value if setting.rule is None else check_setting(key, value, setting.rule, source)
        return setting.default if use_default else None

    def check(self) -> None:
        """Resolve every setting once, so an invalid value anywhere is refused now.

        Raises:
            ConfigurationError: the first invalid value, naming its source.
        """
        for key in SETTINGS:
            self.get(key, use_default=False)

    def source(self, key: str, argument: Any = None) -> str:
        """Where the value of ``key`` comes from (``"ORCHARD_SEED"``, ``"config file F"``, ``"--seed"``);
        ``""`` for an argument or the default."""
        found = (source for value, source in self._sources(key, argument, SETTINGS[key]) if value is not None)
        return next(found, "")

    @contextlib.contextmanager
    def naming_conflicts(self, arguments: Mapping[str, Any]) -> Iterator[None]:
        """Name the source of each setting an :class:`ExperimentConflictError` lists, unless given in ``arguments``.

        A joiner refused for ``heartbeat: stored 10 != given 20`` learns the 20 came from
        ``ORCHARD_HEARTBEAT`` (or a config file), which it may not know it set.
        """
        try:
            yield
        except ExperimentConflictError as err:
            named = [f"{key} from {source}" for key in SETTINGS if key in err.settings
                     and (source := self.source(key, arguments.get(key)))]
            if not named:
                raise
            raise ExperimentConflictError(f"{err} (given: {', '.join(named)})", err.settings) from None

    def _sources(self, key: str, argument: Any, setting: Setting) -> Iterator[tuple[Any, str]]:
        """``(value, where it came from)`` in precedence order; files are read only if reached."""
        yield argument, ""
        yield self._flags.get(key), _FLAGS.get(key, "--" + key.replace("_", "-"))
        yield self._explicit.get(key), f"config file {self._explicit_path}"
        if setting.env:
            variable = _ENV_PREFIX + key.upper()
            yield self._environ.get(variable) or None, variable
        for path in self._files if setting.ambient else ():
            yield load_config_file(path).get(key), f"config file {path}"


def check(key: str, value: Any) -> Any:
    """Cast and check ``value`` of setting ``key`` given in Python (``None`` passes through).

    Raises:
        ConfigurationError: the value breaks the setting's rule.
    """
    rule = SETTINGS[key].rule
    return value if value is None or rule is None else check_setting(key, value, rule)


def resolve(
    key: str,
    argument: Any = None,
    flag: Any = None,
    environ: Mapping[str, str] | None = None,
    files: list[Path] | None = None,
    use_default: bool = True,
) -> Any:
    """Resolve one setting: argument > flag > ``ORCHARD_<KEY>`` > config files > default.

    Args:
        key: a key of :data:`SETTINGS`.
        argument: the value given explicitly in Python (``None`` if not given).
        flag: the value given on the command line (``None`` if not given).
        environ: the environment (default ``os.environ``).
        files: config files to consult (default :func:`config_files`).
        use_default: with ``False``, return ``None`` instead of the default when no
            source sets the key.

    Returns:
        The resolved value, cast and checked.

    Raises:
        ConfigurationError: unknown key, or an invalid value.
    """
    return Settings({key: flag}, environ=environ, files=files).get(key, argument, use_default)
