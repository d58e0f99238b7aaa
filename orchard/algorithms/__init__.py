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
          (several objectives or constraints: ParEGO, ``ParEgoBayes``)
asha      asynchronous successive halving over a ``fidelity``     see ``Asha``
hyperband several ASHA brackets starting at different rungs       see ``Hyperband``
optuna    an Optuna sampler (TPE, GP, CMA-ES, QMC, NSGA-II)      sampler, its options
nsga2     NSGA-II: several objectives, constraints            see ``Nsga2``
========  ======================================================  ===================

``bayes`` imports scikit-optimize (and scikit-learn) only when first used,
``optuna`` imports Optuna (the ``[optuna]`` extra) likewise.

Third-party algorithms register through the entry-point group
``orchard.algorithms``: each entry point is named after the algorithm and
points at its :class:`~orchard.algorithms.base.BaseAlgorithm` subclass (or a
zero-argument callable returning it)::

    [project.entry-points."orchard.algorithms"]
    my_search = "my_package.search:MySearch"

Once the package is installed, ``my_search`` is usable by name wherever a
built-in one is: ``hunt --algorithm my_search``, ``workon``, config files. A
built-in name always wins over an entry point of the same name. Entry points
are read (not loaded) the first time a name is looked up; the class itself is
imported only when that algorithm is used.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from orchard.errors import ConfigurationError, OrchardError, did_you_mean
from orchard.priors import to_builtin
from orchard.space import Space

if TYPE_CHECKING:  # the base imports numpy, which `orchard list` and the settings need not (0.15 s)
    from importlib import metadata

    from orchard.algorithms._asha import Asha
    from orchard.algorithms._grid import GridSearch
    from orchard.algorithms._hyperband import Hyperband
    from orchard.algorithms._nsga2 import Nsga2
    from orchard.algorithms._random import RandomSearch
    from orchard.algorithms.base import BaseAlgorithm, Observation

__all__ = [
    "ALGORITHMS",
    "ENTRY_POINT_GROUP",
    "Asha",
    "BaseAlgorithm",
    "GridSearch",
    "Hyperband",
    "Nsga2",
    "Observation",
    "RandomSearch",
    "algorithm_class",
    "algorithm_names",
    "explicit_options",
    "make_algorithm",
    "normalize_algorithm_config",
]

AlgorithmConfig = str | Mapping[str, Any]

log = logging.getLogger(__name__)


def _lazy(module: str, name: str) -> Callable[[], type[BaseAlgorithm]]:
    """The class ``name`` of ``orchard.algorithms.<module>``, imported when first asked for.

    A worker imports only the algorithm it runs (and scikit-optimize or Optuna
    only for ``bayes`` or ``optuna``): every worker process started afresh pays
    for what it imports.
    """

    def load() -> type[BaseAlgorithm]:
        cls: type[BaseAlgorithm] = getattr(importlib.import_module(f"orchard.algorithms.{module}"), name)
        return cls

    return load


#: Every algorithm by name: a zero-argument callable returning its class (imported on first use).
ALGORITHMS: dict[str, Callable[[], type[BaseAlgorithm]]] = {
    "random": _lazy("_random", "RandomSearch"),
    "grid": _lazy("_grid", "GridSearch"),
    "bayes": _lazy("_parego", "ParEgoBayes"),  # one objective: plain BayesianOptimization
    "asha": _lazy("_asha", "Asha"),
    "hyperband": _lazy("_hyperband", "Hyperband"),
    "optuna": _lazy("_optuna", "OptunaSampler"),
    "nsga2": _lazy("_nsga2", "Nsga2"),
}

_EXPORTED = {"Asha": "_asha", "GridSearch": "_grid", "Hyperband": "_hyperband", "Nsga2": "_nsga2",
             "RandomSearch": "_random", "BaseAlgorithm": "base", "Observation": "base"}


def __getattr__(name: str) -> Any:
    """The re-exported classes (the algorithms, their base), imported when first used (PEP 562)."""
    if name in _EXPORTED:
        return _lazy(_EXPORTED[name], name)()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The entry-point group third-party packages declare their algorithms in.
ENTRY_POINT_GROUP = "orchard.algorithms"


@functools.cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed packages' algorithm entry points by name (read once per process).

    A package whose entry points cannot be read (a damaged ``entry_points.txt``) is left out with a
    warning naming it: reading them all at once failed every plugin lookup with the parser's error.
    """
    from importlib import metadata  # importing it costs a fresh worker process ~20 ms: only when needed

    found: dict[str, metadata.EntryPoint] = {}
    for distribution in metadata.distributions():
        try:
            points = distribution.entry_points.select(group=ENTRY_POINT_GROUP)
        except Exception as err:  # noqa: BLE001 -- any damage to another package's metadata
            log.warning("installed package %r declares entry points Orchard cannot read (%s: %s); its "
                        "algorithms, if any, are left out: reinstall it", distribution.metadata["Name"],
                        type(err).__name__, err)
            continue
        for point in points:
            found.setdefault(point.name, point)  # the first on sys.path, as an import would find it
    return found


def algorithm_names() -> list[str]:
    """Every usable algorithm name: the built-in ones, then the installed plugins' (sorted)."""
    return [*ALGORITHMS, *sorted(set(_entry_points()) - set(ALGORITHMS))]


def _load_plugin(entry_point: metadata.EntryPoint) -> type[BaseAlgorithm]:
    from orchard.algorithms.base import BaseAlgorithm

    where = f"algorithm {entry_point.name!r} (entry point {entry_point.value!r} of group {ENTRY_POINT_GROUP!r})"
    try:
        loaded = entry_point.load()
        if not (isinstance(loaded, type) and issubclass(loaded, BaseAlgorithm)) and callable(loaded):
            loaded = loaded()  # a factory returning the class
    except (Exception, SystemExit) as exc:  # any failure of a third-party package (one may parse argv on import)
        raise ConfigurationError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}; fix or "
                                 "reinstall the package providing it") from exc
    if not (isinstance(loaded, type) and issubclass(loaded, BaseAlgorithm)):
        raise ConfigurationError(f"{where} is not a BaseAlgorithm subclass: got {loaded!r}")
    if not vars(loaded).get("name"):  # messages name it as the user does, not '' or the class it extends
        loaded.name = entry_point.name
    return loaded


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """Return the class registered under ``name``, built-in or from an installed plugin.

    Raises:
        ConfigurationError: no algorithm has that name (the message lists the valid
            ones), or a plugin's entry point does not load a ``BaseAlgorithm`` subclass.
    """
    if isinstance(name, str) and name in ALGORITHMS:
        return ALGORITHMS[name]()
    plugin = _entry_points().get(name) if isinstance(name, str) else None
    if plugin is None:
        from orchard.algorithms._optuna import SAMPLERS

        sampler = next((s for s in SAMPLERS if isinstance(name, str) and s.lower() == name.lower()), None)
        hint = f" (Optuna's sampler: {{'optuna': {{'sampler': {sampler!r}}}}})" if sampler else \
            did_you_mean(name, algorithm_names())
        raise ConfigurationError(
            f"unknown algorithm {name!r}; valid algorithms: {', '.join(algorithm_names())}{hint}")
    return _load_plugin(plugin)


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


def explicit_options(config: AlgorithmConfig) -> frozenset[str]:
    """The option names ``config`` sets itself; the others take this release's defaults.

    Raises:
        ConfigurationError: ``config`` is not a name or a one-key mapping.
    """
    return frozenset(_split(config)[1])


def normalize_algorithm_config(config: AlgorithmConfig, space: Space | None = None,
                               objectives: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Return the canonical ``{name: {option: value}}`` form, defaults filled in.

    Args:
        config: ``"bayes"`` or ``{"bayes": {...options}}``.
        space: the experiment's space, if known: the algorithm is then built once
            for it, so a setting that does not fit the space (``asha`` without a
            ``fidelity`` dimension, more rungs than the fidelity has) is refused here.
        objectives: the experiment's objectives, if known: a setting that optimizes one
            only is refused for several (:meth:`BaseAlgorithm.check_objectives`).

    Returns:
        A new dict with one key, the algorithm's name, mapped to all its options.

    Raises:
        ConfigurationError: unknown algorithm, unknown option, invalid option value,
            or an algorithm that does not fit ``space`` or ``objectives``.
    """
    name, options = _split(config)
    cls = algorithm_class(name)
    # as a storage keeps them (a tuple as a list): the same options given again join, and every worker,
    # rebuilt from the storage, builds the algorithm from the values the first one checked
    normalized = {name: _checked_options(cls, name, to_builtin(options))}
    if objectives is not None and len(objectives) > 1:
        with _plugin_step(cls, name, f"check the objectives {dict(objectives)!r}"):
            cls.check_objectives(normalized[name], objectives)
    if space is not None:
        make_algorithm(normalized, space)
    return normalized


@contextlib.contextmanager
def _plugin_step(cls: type[BaseAlgorithm], name: str, what: str) -> Iterator[None]:
    """A plugin's own failure while it does ``what``, named as a ConfigurationError (Orchard's errors pass)."""
    try:
        yield
    except OrchardError:
        raise
    except (Exception, SystemExit) as err:  # a plugin's code (sys.exit too): name it rather than end silently
        raise ConfigurationError(f"algorithm {name!r} ({cls.__module__}.{cls.__qualname__}) could not {what}: "
                                 f"{type(err).__name__}: {err}") from err


def _checked_options(cls: type[BaseAlgorithm], name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``cls.check_options(options)``, a plugin's own failure there named as a ConfigurationError."""
    with _plugin_step(cls, name, f"check its options {dict(options)!r}"):
        return cls.check_options(options)


def make_algorithm(config: AlgorithmConfig, space: Space, seed: int | None = None) -> BaseAlgorithm:
    """Build the algorithm described by ``config`` for ``space``.

    Args:
        config: ``"bayes"`` or ``{"bayes": {...options}}`` (normalized or not).
        space: the search space.
        seed: seed of the algorithm's random streams.

    Raises:
        ConfigurationError: unknown algorithm, unknown option or invalid option value, or the
            algorithm (a plugin's constructor) failed to build.
    """
    name, options = _split(config)
    cls = algorithm_class(name)
    options = _checked_options(cls, name, options)
    with _plugin_step(cls, name, "be built for this space"):
        return cls(space, seed, **options)
