"""Checks of a space and of sampler options the ``optuna`` adapter makes before any suggestion.

Each refuses, when the experiment is created or a worker starts, what would otherwise fail every
worker's suggestions in the middle of the experiment (measured with Optuna 5.1).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from orchard.errors import ConfigurationError
from orchard.report import shown
from orchard.space import Space

__all__ = ["check_listable", "check_midpoints", "check_types"]

#: Words of Optuna's annotations naming a Python object (only a ``memory://`` storage keeps one).
_OBJECT_TYPES = ("Callable", "BaseSampler", "BaseMutation", "BaseCrossover", "FrozenTrial")
#: The most values of an integer dimension ``GPSampler`` is given (it lists them all: ~220 MB at this count).
_LISTABLE = 10**7


def check_midpoints(space: Space, distributions: Mapping[str, Any]) -> None:
    """Refuse a float dimension whose bounds' sum overflows: TPE centres its prior at ``0.5 * (low + high)``.

    That sum is ``inf`` at ``uniform(1e307, 1.7e308)`` or ``normal(1e308, 1e300)``
    (bounds ``mu ± 4 sigma``), and Optuna's TPE then drew ``nan`` and refused it,
    failing every worker once its startup trials were done. Optuna's other samplers
    run such spaces (measured with Optuna 5.1).
    """
    for name, dist in distributions.items():
        low, high = getattr(dist, "low", 0), getattr(dist, "high", 0)
        if isinstance(low, float) and not getattr(dist, "log", False) and not math.isfinite(low + high):
            raise ConfigurationError(
                f"algorithm 'optuna' sampler 'TPESampler' cannot sample dimension {name!r} "
                f"({space[name]}): TPE centres its prior at (low + high) / 2, which overflows a float for "
                f"bounds {low:.8g} and {high:.8g}; shift the dimension nearer 0 (and add the offset back in "
                "the objective), or use another sampler (RandomSampler, QMCSampler, CmaEsSampler, GPSampler) "
                "or algorithm")


def check_listable(space: Space, distributions: Mapping[str, Any]) -> None:
    """Refuse an integer dimension too wide for ``GPSampler``: it lists every value of it on each suggestion.

    Measured with Optuna 5.1: about 22 bytes a value (``randint(0, 3e7)``: 1 GB per worker);
    ``randint(-9e15, 9e15)`` failed every worker with ``MemoryError``, and a range the machine
    could just allocate would have had the kernel kill workers for memory.
    """
    for name, dist in distributions.items():
        step = getattr(dist, "step", None)
        if isinstance(dist.low, int) and step and (dist.high - dist.low) // step + 1 > _LISTABLE:
            raise ConfigurationError(
                f"algorithm 'optuna' sampler 'GPSampler' cannot sample dimension {name!r} "
                f"({space[name]}): it lists every value of an integer dimension on each suggestion (about "
                f"22 bytes a value), and this one has more than {_LISTABLE:,}; narrow it, use uniform(...) "
                "and round in the objective, or use another sampler (TPESampler, CmaEsSampler) or algorithm")


def check_types(options: Mapping[str, Any], signature: inspect.Signature) -> None:
    """Refuse what the sampler's constructor takes but its suggestions fail on, in every worker.

    ``NSGAIISampler(population_size=20.0)`` is built, then slices its generations with the float
    once the first one is complete; a switch given as a text (``multivariate: "false"``) was taken
    as true; an option taking a Python object (``independent_sampler``,
    ``elite_population_selection_strategy``) was given a string, which the sampler called.
    Optuna's annotations say which is which. Checked when the sampler is built for a space (the
    experiment created, a worker started), not when a stored configuration is read: an experiment
    stored with such an option still shows its trials.
    """
    for option, value in options.items():
        parameter = signature.parameters.get(option)
        annotation = "" if parameter is None else str(parameter.annotation)
        where = f"algorithm 'optuna' sampler {options['sampler']!r} option {option!r}"
        plain = isinstance(value, (str, int, float, list, dict))
        if plain and any(word in annotation for word in _OBJECT_TYPES):
            raise ConfigurationError(f"{where} takes a Python object ({annotation}), not {shown(value)}; "
                                     "leave it unset (only a memory:// storage keeps an object)")
        if annotation in ("int", "int | None") and value is not None and type(value) is not int:
            raise ConfigurationError(f"{where} must be an integer, got {shown(value)}")
        if annotation in ("bool", "bool | None") and value is not None and type(value) is not bool:  # "false"
            raise ConfigurationError(f"{where} must be true or false, got {shown(value)}")
