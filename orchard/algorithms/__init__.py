"""Search algorithms: a registry of name -> class, and the one way to build one from a config.

An algorithm configuration is a name (``"bayes"``) or a one-key mapping of a
name to options (``{"bayes": {"base_estimator": "GP", "n_initial_points": 10,
"acq_func": "EI"}}``). The experiment stores its *normalized* form, every option
spelled out with its default, so a worker joining with a different setting is
caught even when one side relied on a default.

========  ======================================================  ===================
name      what                                                    options
========  ======================================================  ===================
random    independent draws from the priors                       none
grid      a regular grid, each point once                         n_values, budget, shuffle
bayes     scikit-optimize surrogate + acquisition, constant liar  see ``BayesianOptimization``
asha      asynchronous successive halving over a ``fidelity``     see ``Asha``
hyperband several ASHA brackets starting at different rungs       see ``Hyperband``
nsga2     NSGA-II: several objectives, constraints            see ``Nsga2``
========  ======================================================  ===================

``bayes`` imports scikit-optimize (and scikit-learn) only when first used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchard.algorithms._asha import Asha
from orchard.algorithms._grid import GridSearch
from orchard.algorithms._hyperband import Hyperband
from orchard.algorithms._nsga2 import Nsga2
from orchard.algorithms._random import RandomSearch
from orchard.algorithms.base import BaseAlgorithm, Observation
from orchard.errors import ConfigurationError
from orchard.space import Space

__all__ = [
    "ALGORITHMS",
    "Asha",
    "BaseAlgorithm",
    "GridSearch",
    "Hyperband",
    "Nsga2",
    "Observation",
    "RandomSearch",
    "algorithm_class",
    "make_algorithm",
    "normalize_algorithm_config",
]

AlgorithmConfig = str | Mapping[str, Any]


def _bayes() -> type[BaseAlgorithm]:
    from orchard.algorithms._bayes import BayesianOptimization

    return BayesianOptimization


#: Every algorithm by name: a zero-argument callable returning its class (lazy for skopt).
ALGORITHMS: dict[str, Callable[[], type[BaseAlgorithm]]] = {
    "random": lambda: RandomSearch,
    "grid": lambda: GridSearch,
    "bayes": _bayes,
    "asha": lambda: Asha,
    "hyperband": lambda: Hyperband,
    "nsga2": lambda: Nsga2,
}


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """Return the class registered under ``name``.

    Raises:
        ConfigurationError: no algorithm has that name; the message lists the valid ones.
    """
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise ConfigurationError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]()


def _split(config: AlgorithmConfig) -> tuple[str, Mapping[str, Any]]:
    if isinstance(config, str):
        return config, {}
    if isinstance(config, Mapping) and len(config) == 1:
        ((name, options),) = config.items()
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                f"options of algorithm {name!r} must be a mapping, got {type(options).__name__} {options!r}"
            )
        return name, options
    raise ConfigurationError(
        f"an algorithm is a name or a one-key mapping such as {{'bayes': {{'n_initial_points': 10}}}}, "
        f"got {config!r}"
    )


def normalize_algorithm_config(config: AlgorithmConfig, space: Space | None = None) -> dict[str, dict[str, Any]]:
    """Return the canonical ``{name: {option: value}}`` form, defaults filled in.

    Args:
        config: ``"bayes"`` or ``{"bayes": {...options}}``.
        space: the experiment's space, if known: the algorithm is then built once
            for it, so a setting that does not fit the space (``asha`` without a
            ``fidelity`` dimension, more rungs than the fidelity has) is refused here.

    Returns:
        A new dict with one key, the algorithm's name, mapped to all its options.

    Raises:
        ConfigurationError: unknown algorithm, unknown option, invalid option value,
            or an algorithm that does not fit ``space``.
    """
    name, options = _split(config)
    normalized = {name: algorithm_class(name).check_options(options)}
    if space is not None:
        make_algorithm(normalized, space)
    return normalized


def make_algorithm(config: AlgorithmConfig, space: Space, seed: int | None = None) -> BaseAlgorithm:
    """Build the algorithm described by ``config`` for ``space``.

    Args:
        config: ``"bayes"`` or ``{"bayes": {...options}}`` (normalized or not).
        space: the search space.
        seed: seed of the algorithm's random streams.

    Raises:
        ConfigurationError: unknown algorithm, unknown option or invalid option value.
    """
    name, options = _split(config)
    cls = algorithm_class(name)
    return cls(space, seed, **cls.check_options(options))
