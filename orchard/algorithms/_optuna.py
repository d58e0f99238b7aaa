"""Optuna's samplers as an Orchard algorithm: ``{"optuna": {"sampler": "TPESampler", ...}}``.

Every worker keeps a private in-memory Optuna study that mirrors the shared
history: completed trials are told as ``COMPLETE`` (with every objective when
the experiment has several), pruned ones as ``PRUNED`` with their last report
(as Optuna records them), pending ones as ``RUNNING`` (so samplers that look
at running trials, such as TPE with ``constant_liar``, avoid them). The study
lives in the worker process only; a fresh worker rebuilds the same study from
the storage.

* ``TPESampler`` and ``RandomSampler`` (:data:`INCREMENTAL`) depend only on the
  finished and running trials, so their study is grown: a call adds the completed
  trials it has not seen (the worker's history only grows, so this costs the new
  trials, not the history) and retires, as ``FAIL``, which samplers ignore, the
  running ones that are no longer pending.
* ``GPSampler`` and ``QMCSampler`` number their state by trial (QMC sequence
  points) or refit on everything anyway (GP), so they get a study rebuilt each call.
* ``NSGAIISampler`` reads its generations from trial attributes: the rebuilt
  study gives the completed trials, in completion order, generation
  ``index // population_size``, as Orchard's own ``nsga2`` does.
* ``CmaEsSampler`` keeps its search distribution in trial attributes Orchard
  does not store; the adapter rebuilds it from the completed trials in
  completion order (:mod:`orchard.algorithms._optuna_cmaes`).

Space mapping:

=====================  =================================================
Orchard prior          Optuna distribution
=====================  =================================================
``uniform(a, b)``      ``FloatDistribution(a, b)``
``uniform(a, b,        ``IntDistribution(a, b)``
discrete=True)``
``loguniform(a, b)``   ``FloatDistribution(a, b, log=True)``
``randint(a, b)``      ``IntDistribution(a, b - 1)`` (``b`` is excluded)
``choices([...])``     ``CategoricalDistribution`` of the choices'
                       indexes (Optuna tells ``True`` from ``1`` by
                       ``list.index``, which finds ``1`` for both)
``normal(mu, s)``      ``FloatDistribution(mu - 4s, mu + 4s)`` (a trial
                       beyond is told at the nearer bound)
``fidelity(a, b)``     not sampled: fixed at ``b``, its high end
=====================  =================================================

Each sampler is seeded per call from ``(seed, completed, pending)`` like every
Orchard algorithm, so the same history gives the same suggestion, in whatever order it
is given: the study is told the completed trials in completion order, then the pending ones by
hash (TPE reads trial numbers as age), and starts again when a late arrival breaks that order.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from orchard.algorithms._optuna_checks import check_listable, check_midpoints, check_types
from orchard.algorithms._optuna_cmaes import CmaEsState, completion_key, make_sampler
from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import (
    AlgorithmError,
    ConfigurationError,
    OrchardError,
    SpaceError,
    SpaceExhaustedError,
)
from orchard.priors import Choices, LogUniform, Normal, Prior, RandInt, Uniform
from orchard.report import shown
from orchard.space import Space, params_hash

__all__ = ["OptunaSampler"]

_INSTALL_HINT = "install it with: pip install 'orchard-hpo[optuna]'"
#: The samplers the adapter runs (``NSGAIISampler`` is meant for several objectives).
SAMPLERS = ("TPESampler", "GPSampler", "CmaEsSampler", "QMCSampler", "NSGAIISampler", "RandomSampler")
#: Samplers whose suggestion depends only on the finished and running trials, not on trial
#: numbers or attributes: their study is grown incrementally. ``CmaEsSampler`` keeps its own
#: incremental state; the others get a study rebuilt each call, so a long-lived worker
#: suggests what a fresh one would.
INCREMENTAL = ("TPESampler", "RandomSampler")
#: Options Orchard cannot honour, by sampler, with the reason.
_REFUSED = {"CmaEsSampler": {"with_margin": "its margin state lives in trial attributes Orchard does not store",
                             "source_trials": "Optuna trials cannot be given; the sampler learns from the experiment's history"},
            "NSGAIISampler": {"constraints_func": "declare the experiment's constraints instead"}}
#: The largest integer bound Optuna samples exactly (its integers go through floats).
_EXACT_INTS = 2**53
#: Bounds of a violation told to Optuna: an infeasible trial's is positive, and finite (a missing metric is ``inf``).
_TINY_VIOLATION, _HUGE_VIOLATION = 1e-12, 1e300
#: What to do when one of Optuna's samplers fails inside the adapter.
_REPORT_IT = ("choose another sampler or algorithm, and report it with the experiment's history "
              "(orchard db dump)")
#: Retired (``FAIL``) trials a study may hold beyond four per completed trial before it is rebuilt.
_RETIRED_LIMIT = 1000
#: The system attribute of NSGA-II's generation number.
_GENERATION = "NSGAIISampler:generation"
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
            return _integers(dists, name, prior, int(prior.low), int(prior.high))
        return dists.FloatDistribution(prior.low, prior.high)
    if isinstance(prior, LogUniform):
        return dists.FloatDistribution(prior.low, prior.high, log=True)
    if isinstance(prior, RandInt):
        return _integers(dists, name, prior, prior.low, prior.high - 1)
    if isinstance(prior, Choices):  # indexes: Optuna's list.index() took True for 1 and told the model so
        return dists.CategoricalDistribution(list(range(len(prior.values))))
    if isinstance(prior, Normal):
        return dists.FloatDistribution(prior.mu - 4 * prior.sigma, prior.mu + 4 * prior.sigma)
    raise ConfigurationError(f"algorithm 'optuna' cannot map dimension {name!r} ({prior}); use another prior")


def _integers(dists: Any, name: str, prior: Prior, low: int, high: int) -> Any:
    """``IntDistribution(low, high)``, refused past 2**53, where Optuna's floats no longer hold every integer.

    Optuna samples integers through floats: at ``randint(2**53 + 1, 2**53 + 11)`` it drew
    2**53 and then refused its own value, failing the worker in the middle of the experiment.
    """
    if max(abs(low), abs(high)) > _EXACT_INTS:
        raise ConfigurationError(
            f"algorithm 'optuna' cannot sample dimension {name!r} ({prior}): Optuna draws integers through "
            f"floats, exact only up to 2**53; narrow it, or use another algorithm (random, bayes, nsga2)")
    return dists.IntDistribution(low, high)


def _build_once(sampler: str, kwargs: Mapping[str, Any]) -> None:
    """Build ``sampler`` with ``kwargs`` once, so a value it refuses is refused with the experiment.

    The sampler is built afresh on each suggestion: ``QMCSampler(qmc_type="nope")`` or
    ``NSGAIISampler(population_size=1)`` was stored with the experiment and failed every worker's
    first suggestion, an experiment no joiner could run nor change. TPE checks ``gamma``,
    ``prior_weight`` or ``n_ei_candidates`` only once its startup trials are done, so it is
    also asked once past them, on a two-trial study (about a millisecond).
    """
    optuna = _optuna()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a warning of Optuna's about an option: said when the workers build it
            getattr(optuna.samplers, sampler)(seed=0, **kwargs)
            if sampler == "TPESampler":
                _ask_past_startup(optuna, optuna.samplers.TPESampler(seed=0, **{**kwargs, "n_startup_trials": 0}))
    except Exception as err:  # noqa: BLE001 -- any refusal of Optuna's sampler, named
        raise ConfigurationError(f"algorithm 'optuna' sampler {sampler!r} refused its options {dict(kwargs)!r}: "
                                 f"{type(err).__name__}: {err}") from None


def _ask_past_startup(optuna: Any, sampler: Any) -> None:
    """One suggestion of ``sampler`` on a study of two completed trials of one float dimension."""
    x = optuna.distributions.FloatDistribution(0.0, 1.0)
    study = optuna.create_study(sampler=sampler)
    for value in (0.25, 0.75):
        study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions={"x": x}, value=value))
    study.ask({"x": x})


def _violation(observation: Observation) -> float:
    """The trial's total constraint violation as Optuna reads it (``<= 0``: feasible; finite, as NSGA-II needs).

    Told to the study as the trial's constraint, so TPE, NSGA-II and GP rank infeasible trials
    as Optuna does with ``constraints_func``: the adapter told them as feasible, and the
    experiment's constraints were silently ignored by the search.
    """
    return 0.0 if observation.feasible else min(max(observation.violation, _TINY_VIOLATION), _HUGE_VIOLATION)


def _keyed(completed: Sequence[Observation]) -> list[tuple[tuple[float, str], Observation]]:
    """``completed`` in completion order, each with its :func:`completion_key`."""
    return sorted(((completion_key(o), o) for o in completed), key=lambda row: row[0])


def _one_objective_only(several: int) -> ConfigurationError:
    return ConfigurationError(f"algorithm 'optuna' sampler 'CmaEsSampler' optimizes one objective; this "
                              f"experiment has {several}: use NSGAIISampler or TPESampler")


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
        if sampler not in SAMPLERS:
            raise ConfigurationError(f"algorithm 'optuna' has no sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        accepted = set(inspect.signature(getattr(_optuna().samplers, sampler)).parameters) - {"seed"}
        if "seed" in merged:  # Optuna's habit: TPESampler(seed=42)
            raise ConfigurationError(
                f"algorithm 'optuna' sampler {sampler!r} takes its seed from the experiment, not from option "
                f"'seed': give seed={shown(merged['seed'])} to build_experiment (--seed on the command line); "
                "each worker then seeds the sampler from it and the history, so a run reproduces")
        unknown = sorted(set(merged) - accepted - {"sampler"})
        if unknown:
            raise ConfigurationError(
                f"algorithm 'optuna' sampler {sampler!r} takes no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(sorted(accepted))}"
            )
        for option, reason in _REFUSED.get(sampler, {}).items():
            if merged.get(option):
                raise ConfigurationError(
                    f"algorithm 'optuna' sampler {sampler!r} cannot take option {option!r} in Orchard: {reason}")
        needs = {"GPSampler": ("torch", "pip install torch"), "CmaEsSampler": ("cmaes", "pip install cmaes")}
        if sampler in needs:
            module, hint = needs[sampler]
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"algorithm 'optuna' sampler {sampler!r} needs the {module} package; install it with: {hint}"
                ) from exc
        _build_once(sampler, {k: v for k, v in merged.items() if k != "sampler"})
        return merged

    @classmethod
    def check_objectives(cls, options: Mapping[str, Any], objectives: Mapping[str, str]) -> None:
        """Refuse ``CmaEsSampler`` for several objectives (see :meth:`BaseAlgorithm.check_objectives`)."""
        if options.get("sampler") == "CmaEsSampler" and len(objectives) > 1:
            raise _one_objective_only(len(objectives))

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, **options)
        self._optuna = _optuna()
        check_types(self.options, inspect.signature(getattr(self._optuna.samplers, self.options["sampler"])))
        fidelity = space.fidelity
        self._fixed: dict[str, Any] = {fidelity[0]: fidelity[1].high} if fidelity else {}
        self._distributions = {
            name: _distribution(self._optuna, name, prior) for name, prior in space.items() if name not in self._fixed
        }
        if self.options["sampler"] == "TPESampler":
            check_midpoints(space, self._distributions)
        if self.options["sampler"] == "GPSampler":
            check_listable(space, self._distributions)
        self._kwargs = {k: v for k, v in self.options.items() if k != "sampler"}
        self._cmaes = (CmaEsState(self._optuna, self._distributions, self._kwargs)
                       if self.options["sampler"] == "CmaEsSampler" else None)
        self._n_objectives = 1
        self._reset()

    def _reset(self) -> None:
        self._study = self._optuna.create_study(directions=["minimize"] * self._n_objectives)
        self._told: set[str] = set()
        self._completes = 0  # completed trials told (NSGA-II's generations)
        self._consumed: tuple[int, Observation | None] = (0, None)  # how far the completed list was read
        self._running: dict[str, int] = {}  # the pending trials told, by digest, in the order told
        self._last: tuple[float, str] | None = None  # the completion key of the last completed trial told
        self._retired = 0  # trials of the study told FAIL

    def _sampler(self, completed: Sequence[Observation], pending: Sequence[Any]) -> Any:
        seed = int(self.rng(completed, pending).integers(2**31 - 1))
        return make_sampler(self._optuna, self.options["sampler"], seed=seed, **self._kwargs)

    def _extends(self, completed: Sequence[Observation]) -> bool:
        """Whether ``completed`` is the list the study was last synced with, grown at its end."""
        count, last = self._consumed
        return count <= len(completed) and (count == 0 or completed[count - 1] is last)

    def _sync(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]]) -> None:
        """Bring the private study up to date: new completed trials, the current pending ones.

        The study is told the completed trials in completion order (end time, then the params'
        hash), then the pending ones by hash, so its trial numbers, which TPE reads as the trials'
        age (it weighs the older ones down and picks kernels by position), are the same whatever
        order a worker saw the history in: two workers, or a long-lived and a fresh one, given the
        same trials in different orders suggested different points. New trials that sort before
        one already told (a completion seen late) or pending ones that come after a new completion
        make the study start again from the whole history; so does a study holding many retired
        trials (the ones asked and the pending ones no longer pending, told ``FAIL``).
        """
        unread = _keyed(completed[self._consumed[0]:])
        stale = self._retired > _RETIRED_LIMIT + 4 * len(self._told)
        if stale or (unread and self._last is not None and unread[0][0] < self._last):
            self._reset()
            unread = _keyed(completed)
        self._consumed = (len(completed), completed[-1] if completed else None)
        for key, observation in unread:
            if key[1] in self._told:
                continue
            frozen = self._frozen(observation)
            if frozen is not None:
                self._told.add(key[1])
                self._study.add_trial(frozen)
        if unread:
            self._last = unread[-1][0]
        self._sync_pending(pending, renumber=bool(unread))

    def _sync_pending(self, pending: Sequence[Mapping[str, Any]], renumber: bool) -> None:
        """Tell the pending trials as ``RUNNING``, by hash, after every completed one (see :meth:`_sync`)."""
        hashed = sorted(((params_hash(p), p) for p in pending), key=lambda row: row[0])
        wanted = {digest: point for digest, point in hashed if digest not in self._told}
        running = list(self._running)  # in the order told
        if renumber or running != list(wanted)[: len(running)]:
            for digest in running:
                self._retire(self._running.pop(digest))
        for digest, point in wanted.items():
            if digest not in self._running:
                trial = self._optuna.trial.create_trial(
                    params=self._as_told(point),
                    distributions=self._distributions, state=self._optuna.trial.TrialState.RUNNING)
                self._running[digest] = self._study._storage.create_new_trial(self._study._study_id,
                                                                              template_trial=trial)

    def _frozen(self, observation: Observation) -> Any:
        """The Optuna trial ``observation`` is told as, or ``None`` (a pruned trial of several objectives).

        A pruned trial is told ``PRUNED`` as Optuna records one: its last report as its value and
        intermediate value. It was told ``COMPLETE`` at its early report: TPE ranked it among the
        finished trials, where Optuna ranks pruned trials after them, by the step they reached.
        Optuna prunes one-objective studies only. NSGA-II's generation numbers count the completed
        trials, the only ones its generations hold.
        """
        trial = self._optuna.trial
        told = {"params": self._as_told(observation.params), "distributions": self._distributions,
                "constraints": {"violation": _violation(observation)}}
        if observation.pruned:
            step = 0 if observation.step is None else observation.step
            return None if self._n_objectives > 1 else trial.create_trial(
                state=trial.TrialState.PRUNED, value=observation.objective,
                intermediate_values={step: observation.objective}, **told)
        values = observation.values if self._n_objectives > 1 else (observation.objective,)
        if values is None:
            return None
        size = int(self.options.get("population_size", 50))
        self._completes += 1
        generation = {_GENERATION: (self._completes - 1) // size}
        return trial.create_trial(values=list(values), system_attrs=generation, **told)

    def _as_told(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` as the study is told them: the sampled dims, a choice as its index, a ``normal`` value
        clipped to mu ± 4 sigma.

        Optuna's distribution of ``normal(mu, s)`` ends at ``mu ± 4s``, the prior does not: a trial
        beyond (a warm start from a wider normal, an insert, a random search's tail) made Optuna
        refuse it, failing every worker's every suggestion. Orchard's ``bayes`` clips it the same way.
        """
        return {k: self.space[k].encode(v) for k, v in params.items() if k in self._distributions}

    def _retire(self, trial_id: int) -> None:
        self._study._storage.set_trial_state_values(trial_id, self._optuna.trial.TrialState.FAIL)
        self._retired += 1

    def _study_drawer(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]],
                      asked: list[int]) -> Callable[[], dict[str, Any]]:
        """A function asking the private study for a point (its trial id goes to ``asked``)."""
        n_objectives = next((len(o.values) for o in completed if o.values is not None), 1)
        incremental = self.options["sampler"] in INCREMENTAL and self._extends(completed)
        if n_objectives != self._n_objectives or not incremental:
            self._n_objectives = n_objectives
            self._reset()
        self._sync(completed, pending)
        self._study.sampler = self._sampler(completed, pending)

        def draw() -> dict[str, Any]:
            trial = self._study.ask()
            asked.append(trial._trial_id)
            for name, distribution in self._distributions.items():  # as ask(distributions) does, naming each
                try:
                    trial._suggest(name, distribution)
                except Exception as err:  # noqa: BLE001 -- Optuna's refusal of its own value (nan), named
                    raise AlgorithmError(
                        f"algorithm 'optuna' sampler {self.options['sampler']!r} failed to suggest dimension "
                        f"{name!r} ({self.space[name]}): {shown(err, 200)}; {_REPORT_IT}") from err
            return self._decoded(trial.params)

        return draw

    def _cmaes_drawer(self, cmaes: CmaEsState, completed: Sequence[Observation],
                      pending: Sequence[Mapping[str, Any]]) -> Callable[[], dict[str, Any]]:
        """Draws from the CMA-ES distribution, or at random during its start (as Optuna does)."""
        several = next((len(o.values) for o in completed if o.values is not None and len(o.values) > 1), 0)
        if several:  # refused when the experiment is created: here for an experiment stored before that check
            raise _one_objective_only(several)
        rng = self.rng(completed, pending)
        if cmaes.fold(self.settled(completed, pending)):
            draw = cmaes.drawer(rng)
            return lambda: self._decoded(draw())
        return lambda: self.space.sample(rng)

    def _decoded(self, told: Mapping[str, Any]) -> dict[str, Any]:
        """A point drawn from the study's distributions as values of the space (a choice from its index)."""
        return {name: self.space[name].decode(value) for name, value in told.items()}

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to ``n`` unseen points from the sampler (see :meth:`BaseAlgorithm.suggest`).

        Raises:
            SpaceExhaustedError: no unseen point is left.
            AlgorithmError: the sampler failed, or suggested a point outside the space; the
                message names the sampler (and the dimension).
        """
        label = f"algorithm 'optuna' sampler {self.options['sampler']!r}"
        try:  # objectives near 1e308 overflow Optuna's hypervolumes: numpy's warnings help no user
            with np.errstate(over="ignore"):
                return self._suggest(self.at_top_fidelity(completed), pending, n, seen)
        except SpaceExhaustedError:
            raise
        except BaseException as err:  # noqa: BLE001 -- Ctrl-C too: a torn study must not outlive the call
            self._reset()  # the study may hold part of the history, marked read: the next call starts afresh
            if isinstance(err, SpaceError):  # from _first_unseen: Optuna drew outside its distribution
                raise AlgorithmError(f"{label} suggested a point outside the space: {err}; "
                                     f"{_REPORT_IT}") from None
            if isinstance(err, Exception) and not isinstance(err, OrchardError):  # Optuna's own failure
                raise AlgorithmError(f"{label} failed to suggest a point: {shown(err, 200)}; "
                                     f"{_REPORT_IT}") from err
            raise

    def _suggest(self, completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]], n: int,
                 seen: SeenPoints | None) -> list[dict[str, Any]]:
        asked: list[int] = []
        if self._cmaes is not None:
            draw = self._cmaes_drawer(self._cmaes, completed, pending)
        else:
            draw = self._study_drawer(completed, pending, asked)
        taken = self.seen_points(completed, pending, seen)
        rng = self.rng(completed, [*pending, None])
        suggestions: list[dict[str, Any]] = []
        try:
            for _ in range(n):
                params = self._first_unseen(draw, taken) or self.random_unseen(rng, taken)
                taken.add(params)
                suggestions.append(dict(params))
        finally:
            for trial_id in asked:  # the worker registers them; they come back as pending
                self._retire(trial_id)
        return suggestions

    def _first_unseen(self, draw: Callable[[], dict[str, Any]], taken: SeenPoints) -> dict[str, Any] | None:
        """The sampler's first point within :data:`_RETRIES` draws that is not taken, if any."""
        for _ in range(_RETRIES):
            candidate = dict(self.space.validate({**draw(), **self._fixed}))
            if candidate not in taken:
                return candidate
        return None
