"""Optuna's samplers as an Orchard algorithm: ``{"optuna": {"sampler": "TPESampler", ...}}``.

Every worker keeps a private in-memory Optuna study that mirrors the shared
history: completed trials are told as ``COMPLETE``, pending ones as
``RUNNING`` (so samplers that look at running trials, such as TPE with
``constant_liar``, avoid them). The study lives in the worker process only and
is grown incrementally for TPE and random sampling (:data:`INCREMENTAL`), rebuilt
each call for the others: each call adds the completed trials it has not seen
and retires (as ``FAIL``, which samplers ignore) the running ones that are no
longer pending. No state leaves the process; a fresh worker rebuilds the same
study from the storage.

Space mapping:

=====================  =================================================
Orchard prior          Optuna distribution
=====================  =================================================
``uniform(a, b)``      ``FloatDistribution(a, b)``
``uniform(a, b,        ``IntDistribution(a, b)``
discrete=True)``
``loguniform(a, b)``   ``FloatDistribution(a, b, log=True)``
``randint(a, b)``      ``IntDistribution(a, b - 1)`` (``b`` is excluded)
``choices([...])``     ``CategoricalDistribution([...])``
``normal(mu, s)``      ``FloatDistribution(mu - 4s, mu + 4s)``
``fidelity(a, b)``     not sampled: fixed at ``b``, its high end
=====================  =================================================

Known limitation: ``CmaEsSampler`` keeps its search distribution in the system
attributes of the trials it suggested, which Orchard does not store, so here it
restarts from its first generation on every call (it conforms, but optimizes
far worse than plain Optuna's CMA-ES).

Each sampler is seeded per call from ``(seed, completed, pending)`` like every
Orchard algorithm, so the same history gives the same suggestion.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import ConfigurationError
from orchard.priors import Choices, LogUniform, Normal, Prior, RandInt, Uniform
from orchard.space import Space, params_hash

__all__ = ["OptunaSampler"]

_INSTALL_HINT = "install it with: pip install 'orchard-hpo[optuna]'"
#: Samplers that run on one objective; ``NSGAIISampler`` needs several and is refused here.
SAMPLERS = ("TPESampler", "GPSampler", "CmaEsSampler", "QMCSampler", "RandomSampler")
#: Samplers whose suggestion depends only on the finished and running trials, not on trial
#: numbers: their study is grown incrementally. The others (CMA-ES and QMC number their
#: generations and sequence points by trial; GP is cubic in the history anyway) get a
#: study rebuilt each call, so a long-lived worker suggests what a fresh one would.
INCREMENTAL = ("TPESampler", "RandomSampler")
#: Optuna's suggestion retries before a duplicate is replaced by a random unseen point.
_RETRIES = 3


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ConfigurationError(f"algorithm 'optuna' needs the optuna package; {_INSTALL_HINT}") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distribution(optuna: Any, name: str, prior: Prior) -> Any:
    dists = optuna.distributions
    if isinstance(prior, Uniform):
        if prior.discrete:
            return dists.IntDistribution(int(prior.low), int(prior.high))
        return dists.FloatDistribution(prior.low, prior.high)
    if isinstance(prior, LogUniform):
        return dists.FloatDistribution(prior.low, prior.high, log=True)
    if isinstance(prior, RandInt):
        return dists.IntDistribution(prior.low, prior.high - 1)
    if isinstance(prior, Choices):
        return dists.CategoricalDistribution(list(prior.values))
    if isinstance(prior, Normal):
        return dists.FloatDistribution(prior.mu - 4 * prior.sigma, prior.mu + 4 * prior.sigma)
    raise ConfigurationError(f"algorithm 'optuna' cannot map dimension {name!r} ({prior}); use another prior")


class OptunaSampler(BaseAlgorithm):
    """An Optuna sampler run on Orchard's shared history (see the module docstring).

    Options: ``sampler`` (one of :data:`SAMPLERS`, default ``TPESampler``) and
    any keyword argument that sampler's constructor takes except ``seed``
    (``{"sampler": "TPESampler", "multivariate": True}``).
    """

    name = "optuna"
    OPTIONS: ClassVar[dict[str, Any]] = {"sampler": "TPESampler"}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``sampler`` and its keyword arguments against the sampler's constructor."""
        merged = {**cls.OPTIONS, **options}
        sampler = merged["sampler"]
        if sampler == "NSGAIISampler":
            raise ConfigurationError(
                "algorithm 'optuna' sampler 'NSGAIISampler' needs several objectives; this experiment has one: "
                f"use one of {', '.join(SAMPLERS)}"
            )
        if sampler not in SAMPLERS:
            raise ConfigurationError(f"algorithm 'optuna' has no sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        accepted = set(inspect.signature(getattr(_optuna().samplers, sampler)).parameters) - {"seed"}
        unknown = sorted(set(merged) - accepted - {"sampler"})
        if unknown:
            raise ConfigurationError(
                f"algorithm 'optuna' sampler {sampler!r} takes no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(sorted(accepted))}"
            )
        needs = {"GPSampler": ("torch", "pip install torch"), "CmaEsSampler": ("cmaes", "pip install cmaes")}
        if sampler in needs:
            module, hint = needs[sampler]
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"algorithm 'optuna' sampler {sampler!r} needs the {module} package; install it with: {hint}"
                ) from exc
        return merged

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, **options)
        self._optuna = _optuna()
        fidelity = space.fidelity
        self._fixed: dict[str, Any] = {fidelity[0]: fidelity[1].high} if fidelity else {}
        self._distributions = {
            name: _distribution(self._optuna, name, prior) for name, prior in space.items() if name not in self._fixed
        }
        self._reset()

    def _reset(self) -> None:
        self._study = self._optuna.create_study(direction="minimize")
        self._told: set[str] = set()
        self._running: dict[str, int] = {}

    def _sampler(self, completed: Sequence[Observation], pending: Sequence[Any]) -> Any:
        seed = int(self.rng(completed, pending).integers(2**31 - 1))
        kwargs = {k: v for k, v in self.options.items() if k != "sampler"}
        return getattr(self._optuna.samplers, self.options["sampler"])(seed=seed, **kwargs)

    def _sync(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]]) -> None:
        """Bring the private study up to date: new completed trials, the current pending ones."""
        optuna = self._optuna
        for observation in completed:
            digest = params_hash(observation.params)
            if digest in self._told:
                continue
            self._told.add(digest)
            params = {k: v for k, v in observation.params.items() if k in self._distributions}
            self._study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self._distributions, value=observation.objective))
        wanted = {params_hash(p): p for p in pending}
        for digest in [d for d in self._running if d not in wanted]:
            self._retire(self._running.pop(digest))
        for digest, point in wanted.items():
            if digest not in self._running and digest not in self._told:
                trial = optuna.trial.create_trial(
                    params={k: v for k, v in point.items() if k in self._distributions},
                    distributions=self._distributions, state=optuna.trial.TrialState.RUNNING)
                self._running[digest] = self._study._storage.create_new_trial(self._study._study_id, template_trial=trial)

    def _retire(self, trial_id: int) -> None:
        self._study._storage.set_trial_state_values(trial_id, self._optuna.trial.TrialState.FAIL)

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to ``n`` unseen points from the sampler (see :meth:`BaseAlgorithm.suggest`)."""
        if self.options["sampler"] not in INCREMENTAL:
            self._reset()
        self._sync(completed, pending)
        self._study.sampler = self._sampler(completed, pending)
        taken = self.seen_points(completed, pending, seen)
        rng = self.rng(completed, [*pending, None])
        suggestions: list[dict[str, Any]] = []
        asked: list[int] = []
        for _ in range(n):
            params: dict[str, Any] | None = None
            for _ in range(_RETRIES):
                trial = self._study.ask(self._distributions)
                asked.append(trial._trial_id)
                candidate = dict(self.space.validate({**trial.params, **self._fixed}))
                if candidate not in taken:
                    params = candidate
                    break
            if params is None:
                params = self.random_unseen(rng, taken)
            taken.add(params)
            suggestions.append(dict(params))
        for trial_id in asked:  # the worker registers them; they come back as pending
            self._retire(trial_id)
        return suggestions
