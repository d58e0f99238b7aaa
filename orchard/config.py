"""Settings and their single resolution: argument > flag > ORCHARD_* env > config file > default.

Only the edges (the Python client's constructors and the command line) call
:func:`resolve`; storages, algorithms, executors and the worker take plain
arguments and never read the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchard.errors import ConfigurationError

__all__ = ["DEFAULTS", "config_files", "load_config_file", "resolve"]

#: Every setting Orchard resolves, with its default.
DEFAULTS: dict[str, Any] = {
    "storage": "orchard.pkl",
    "algorithm": "random",
    "max_trials": None,
    "max_broken": 3,
    "heartbeat": 30.0,
    "idle_timeout": None,
    "trial_timeout": None,
    "executor": "joblib",
    "n_workers": 1,
    "seed": None,
    "working_dir": None,
    # resources of the workers (orchard.resources)
    "trial_memory_limit": None,
    "gpus": None,
    "gpus_per_worker": 1,
}

_ENV_PREFIX = "ORCHARD_"
_NUMERIC = {"max_trials": int, "max_broken": int, "n_workers": int, "seed": int, "gpus_per_worker": int,
            "heartbeat": float, "idle_timeout": float, "trial_timeout": float}


def config_files(cwd: Path | None = None) -> list[Path]:
    """Config files in precedence order: ``./orchard.yaml`` then ``~/.config/orchard/config.yaml``."""
    here = Path.cwd() if cwd is None else cwd
    return [here / "orchard.yaml", Path.home() / ".config" / "orchard" / "config.yaml"]


def load_config_file(path: Path) -> dict[str, Any]:
    """Read one YAML config file; a missing file is empty.

    Raises:
        ConfigurationError: the file is not valid YAML or not a mapping, or has unknown keys.
    """
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigurationError(f"config file {path} cannot be read: {err}") from err
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(DEFAULTS) - {"space", "name"})
    if unknown:
        raise ConfigurationError(
            f"config file {path} has unknown setting(s) {unknown}; valid: {', '.join(sorted(DEFAULTS))}"
        )
    return data


def _from_env(key: str, environ: Mapping[str, str]) -> Any:
    raw = environ.get(_ENV_PREFIX + key.upper())
    if raw is None or raw == "":
        return None
    cast = _NUMERIC.get(key)
    if cast is None:
        return raw
    try:
        return cast(raw)
    except ValueError:
        raise ConfigurationError(
            f"environment variable {_ENV_PREFIX + key.upper()}={raw!r} is not a valid {cast.__name__}"
        ) from None


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
        key: a key of :data:`DEFAULTS`.
        argument: the value given explicitly in Python (``None`` if not given).
        flag: the value given on the command line (``None`` if not given).
        environ: the environment (default ``os.environ``).
        files: config files to consult (default :func:`config_files`).
        use_default: with ``False``, return ``None`` instead of the default when no
            source sets the key (so a caller joining an experiment passes on only
            what the user asked for).

    Returns:
        The resolved value.
    """
    if key not in DEFAULTS:
        raise ConfigurationError(f"unknown setting {key!r}; valid: {', '.join(sorted(DEFAULTS))}")
    for value in (argument, flag, _from_env(key, os.environ if environ is None else environ)):
        if value is not None:
            return value
    for path in config_files() if files is None else files:
        data = load_config_file(path)
        if data.get(key) is not None:
            return data[key]
    return DEFAULTS[key] if use_default else None
