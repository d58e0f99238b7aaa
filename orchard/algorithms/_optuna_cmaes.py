"""CMA-ES for the ``optuna`` adapter, its search distribution rebuilt from the shared history.

Optuna's ``CmaEsSampler`` keeps its search distribution pickled in system
attributes of the trials it suggested; Orchard stores no such attributes, so
a worker rebuilds the distribution from what every worker sees, the completed
trials:

* the settled ones (:meth:`~orchard.algorithms.base.BaseAlgorithm.settled`) are put
  in completion order (recorded end time, then the params' hash);
* pruned trials are left out unless ``consider_pruned_trials`` (then told with their
  last reported value), as Optuna's sampler does;
* the first ``n_startup_trials`` (Optuna's default 1) are drawn at random, as in
  Optuna, and not told;
* the rest form the generations: with population size ``λ`` (Optuna's default
  ``4 + ⌊3 ln d⌋``), generation ``g`` is the next ``λ`` trials in that order;
* the distribution is Optuna's initial one (built by the sampler itself, so
  ``x0``, ``sigma0``, ``popsize``, ``use_separable_cma`` and ``lr_adapt`` act
  as in Optuna) told each full generation in turn.

A CMA-ES ``tell`` is deterministic, so every worker holds the same
distribution for the same history; each worker then draws from it with its own
seeded stream. The worker keeps the distribution it computed and the ordered
trials it was told, and continues from there while the new history extends
that order, so a call costs the new generations only. Categorical dims are
outside CMA-ES (Optuna samples them independently): they are drawn uniformly.
Pending trials are not told (Optuna's CMA-ES ignores running trials too); the
worker's stream depends on their number, so a racing worker draws another point.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from orchard.algorithms.base import Observation
from orchard.space import params_hash

__all__ = ["CmaEsState", "completion_key", "completion_order", "make_sampler"]


#: Optuna's warnings this process has shown, by category and text (see :func:`make_sampler`).
_SHOWN: set[tuple[type[Warning], str]] = set()


def make_sampler(optuna: Any, name: str, **options: Any) -> Any:
    """Optuna's sampler ``name``, without its ``ExperimentalWarning``s; its other warnings once per process.

    "QMCSampler is experimental", "Argument consider_pruned_trials is an experimental feature. The
    interface can change": the interface is the adapter's concern, not the user's (who writes
    Orchard's configuration). Any other warning (a deprecated option: "`prior_weight` has been
    deprecated in v4.9.0") is shown as Optuna shows it, once, where it came back at every
    suggestion, since a worker makes a sampler for each.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = getattr(optuna.samplers, name)(**options)
    for warning in caught:
        key = (warning.category, str(warning.message))
        if key not in _SHOWN:
            _SHOWN.add(key)
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return sampler


def completion_key(observation: Observation) -> tuple[float, str]:
    """An observation's place in the completion order: end time (unknown: last), then the params' hash."""
    end = observation.end_time if observation.end_time is not None else math.inf
    return end, params_hash(observation.params)


def completion_order(completed: Sequence[Observation]) -> list[Observation]:
    """The observations by recorded end time (unknown last), ties broken by the params' hash."""
    return sorted(completed, key=completion_key)


class CmaEsState:
    """One worker's CMA-ES distribution, folded from the completed trials (see the module docstring).

    Args:
        optuna: the imported ``optuna`` module.
        distributions: the Optuna distribution of every sampled dim.
        options: ``CmaEsSampler`` keyword arguments (``seed`` excepted).
    """

    def __init__(self, optuna: Any, distributions: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        from optuna._transform import _SearchSpaceTransform

        categorical = optuna.distributions.CategoricalDistribution
        self._choices = {k: d.choices for k, d in distributions.items() if isinstance(d, categorical)}
        numeric = {k: d for k, d in distributions.items() if k not in self._choices}
        self._names = set(numeric)
        self._transform = _SearchSpaceTransform(numeric, transform_step=True, transform_0_1=True) if numeric else None
        self._sampler = make_sampler(optuna, "CmaEsSampler", seed=0, **options)
        self._pruned = bool(options.get("consider_pruned_trials", False))  # Optuna's default: leave them out
        self._direction = optuna.study.StudyDirection.MINIMIZE
        self._told: list[str] = []  # digests of the trials folded in, in order
        self._optimizer = self._initial()

    def _initial(self) -> Any:
        return None if self._transform is None else self._sampler._init_optimizer(self._transform, self._direction)

    @property
    def generation(self) -> int:
        """How many generations the distribution has been told."""
        return 0 if self._optimizer is None else int(self._optimizer.generation)

    def fold(self, completed: Sequence[Observation]) -> bool:
        """Tell the distribution every full generation of ``completed``; ``False`` during the random start.

        Pruned trials (told with their last report) count only with ``consider_pruned_trials``, as in
        Optuna: the option was passed to the sampler and ignored, every pruned trial joining a generation.
        """
        ordered = completion_order([o for o in completed if self._pruned or not o.pruned])
        startup = self._sampler._n_startup_trials
        if len(ordered) < max(startup, 1):
            return False
        if self._optimizer is None:
            return True
        members = ordered[startup:]
        digests = [params_hash(o.params) for o in members[: len(self._told) + self._optimizer.population_size]]
        if digests[: len(self._told)] != self._told:  # the order changed under the cache: start again
            self._told, self._optimizer = [], self._initial()
        size = self._optimizer.population_size
        while len(self._told) + size <= len(members):
            chunk = members[len(self._told): len(self._told) + size]
            assert self._transform is not None
            self._optimizer.tell([(self._transform.transform({k: o.params[k] for k in self._names}), o.objective)
                                  for o in chunk])
            self._told += [params_hash(o.params) for o in chunk]
        return True

    def drawer(self, rng: np.random.Generator) -> Callable[[], dict[str, Any]]:
        """A function drawing points from the distribution with the stream ``rng``."""
        if self._optimizer is not None:
            self._optimizer._rng = np.random.RandomState(int(rng.integers(2**31 - 1)))

        def draw() -> dict[str, Any]:
            params: dict[str, Any] = {}
            if self._optimizer is not None and self._transform is not None:
                params.update(self._transform.untransform(self._optimizer.ask()))
            for name, choices in self._choices.items():
                params[name] = choices[int(rng.integers(len(choices)))]
            return params

        return draw
