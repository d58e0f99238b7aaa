"""Asynchronous successive halving (ASHA), decided from the shared history by whichever worker asks.

A space with a ``fidelity`` dimension has rungs ``r_0 < r_1 < … < r_top``
(:meth:`orchard.fidelity.Fidelity.rungs`). Each call of :meth:`Asha.suggest`
is a pure function of the history::

    for each rung k from the one below the top down to the lowest:
        R   = the completed trials at rung k (real objectives only: pending
              trials, and the constant-liar values a sampler tells, never rank)
        q   = floor(len(R) / eta)                      the rung's promotion quota
        P   = trials of R already promoted             (a pending promotion counts)
        if len(P) < q: promote the best trial among the q best of R not in P
    otherwise: sample a new point at the lowest rung

A promotion is a new trial with its parent's params and the next rung's
fidelity; its ``parent`` is the parent's trial id (:meth:`Asha.parent_of`).
Two workers promoting the same trial register the same params, so the
storage's unique constraint lets exactly one of them win; the loser sees the
winner's trial as pending when it asks again, and moves on. No lock, no
master. Ties in a ranking are broken by the params' hash, so two workers with
the same view choose the same trial (and collide) rather than two different ones.
With several objectives (or constraints) "best" is the order of
:func:`orchard.algorithms._rungs.pareto_order`: constrained non-dominated front first,
then larger crowding distance, then the params' hash.

The rungs are kept by a :class:`~orchard.algorithms._rungs.Ladder`, a cache
that folds in only the trials completed since the last call, so a suggestion
costs what is new (plus the pending points and the head of each rung's
ranking), not the whole history.

Because a promotion needs a free slot in its rung's quota, no rung ever holds
more promotions than ``floor(completed below / eta)`` of the view that made
them; racers whose views lag by a registration or two can exceed a rung's final
quota only by what their own views justified. Once a finite space has no new point,
a rung nothing can still reach promotes its top ``max(1, floor(n / eta))`` too.

The ``stopping`` rule (option ``rule="stopping"``) replaces the quota by a
verdict each trial gets when it reaches a rung: it is promotable if it ranks in
the top ``max(floor(m / eta), 1)`` of the ``m`` trials that had completed at
that rung by then, itself included (:func:`~orchard.algorithms._rungs.survives`).
The first trials at a rung continue, so good configurations reach full
fidelity sooner, at the price of more promotions early on. This is the rule of
Optuna's successive-halving pruner and Ray Tune's ASHA, and Syne Tune's
``type="stopping"``; here it is still a pure function of the history, because
the arrival order is that of the trials' recorded ``end_time`` (ties broken by
the params' hash), which every worker reads alike. A trial that survived is
promoted once, the best first, scanning rungs from the top as above; pending
promotions count as promoted and constant-liar values never rank, as above.

New points come from the ``sampler``. The default, ``bayes``, is fitted on
every configuration once, ranked by refinement (``sampler_fit="refined"``,
:meth:`Ladder.refined`): ranked at the lowest rung, then re-ranked among those
that reached each higher rung, in the places they held; it is told the normal
scores of that order (:func:`normal_scores`), so every evaluation informs the
model and the objective's scale does not matter. Under the ``stopping`` rule,
where the first arrivals at a rung go on whatever they score, reaching a rung
is no evidence of merit, and this order does not count it as such.
``sampler_fit="highest_rung"`` fits the objectives of the highest rung with
``min_points`` results instead (BOHB's choice). The sampler draws from the
interior of the space (:func:`interior`) and scores random candidates rather
than running L-BFGS to the box's faces. Either way it is a pure function of the
history, like the promotions. ``bench/multifidelity_lcbench.py`` measures the
options (``docs/benchmarks.md``).

:class:`~orchard.algorithms._hyperband.Hyperband` runs several of these ladders
(brackets) side by side, each starting at a different rung.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any, ClassVar, TypeVar

import numpy as np

from orchard.algorithms._rungs import Ladder, Place, config_key
from orchard.algorithms.base import BaseAlgorithm, Observation, Pending, SeenPoints, space_size
from orchard.errors import ConfigurationError, SpaceExhaustedError
from orchard.priors import LogUniform, Uniform
from orchard.space import Space

__all__ = ["Asha"]

T = TypeVar("T")

#: Samplers that may draw the new points of the lowest rung.
SAMPLERS = ("random", "bayes")
#: Promotion rules: a quota per rung, or a verdict per arrival (see the module docstring).
RULES = ("promotion", "stopping")
#: What a ``bayes`` sampler is fitted on: one rung's objectives, or every configuration's standing
#: (by promotions earned, or by refinement rung by rung).
SAMPLER_FITS = ("refined", "highest_rung")
#: Draws tried before a sampler's points are taken to be exhausted.
_SAMPLER_RETRIES = 50
#: Options ``asha`` gives its ``bayes`` sampler unless told otherwise: the acquisition function is
#: maximized over random candidates and small steps around the best (from the interior), not by
#: L-BFGS, which is slower and runs to the box's faces; ``xi`` stays 0.01, the margin the LCBench
#: figures were measured with (``bayes`` alone defaults to 0 for one objective).
SAMPLER_DEFAULTS: dict[str, Any] = {"acq_optimizer": "sampling", "xi": 0.01}
#: Most observations a ``bayes`` sampler is told (see :func:`bounded`): a suggestion's cost stays bounded.
FIT_POINTS = 128
#: The fraction of each continuous dimension's range (on its search scale) kept clear at either
#: end when a ``bayes`` sampler draws new points (see :func:`interior`).
INTERIOR_MARGIN = 0.02



class Asha(BaseAlgorithm):
    """Asynchronous successive halving over the space's ``fidelity`` dimension.

    Options:
        reduction_factor: ``eta``: the top ``1/eta`` of a rung is promoted
            (default: the fidelity's ``base``). A number > 1.
        num_rungs: use only the top ``num_rungs`` rungs of the fidelity, which
            raises the lowest fidelity (default: all of them). An int >= 1.
        sampler: the algorithm drawing new points of the lowest rung:
            ``"bayes"`` (default) or ``"random"``, or ``{"bayes": {...options}}``;
            ``asha`` gives ``bayes`` ``acq_optimizer="sampling"`` unless set
            (:data:`SAMPLER_DEFAULTS`), and every pending point is told as a lie.
        min_points: completed results needed before ``bayes`` is fitted
            (default: the number of dimensions + 1, or ``bayes``'s
            ``n_initial_points`` if larger). ``bayes`` only.
        rule: ``"stopping"`` (default): a trial is promoted if it was in the top
            ``1/eta`` of its rung when it arrived (the first trials always are),
            as Optuna's pruner decides; ``"promotion"``: a rung promotes at most
            ``floor(completed / eta)`` trials, its best.
        sampler_fit: what a ``bayes`` sampler is fitted on (``bayes`` only):
            ``"refined"`` (default): every configuration, ranked by refinement
            rung by rung (:meth:`Ladder.refined`) and told as normal scores;
            ``"highest_rung"``: the objectives of the highest rung with
            ``min_points`` results.

    Raises:
        ConfigurationError: the space has no fidelity dimension, or an option is invalid.
    """

    name = "asha"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "reduction_factor": None,
        "num_rungs": None,
        "sampler": "bayes",
        "min_points": None,
        "rule": "stopping",
        "sampler_fit": None,
    }

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, **options)
        found = space.fidelity
        if found is None:
            raise ConfigurationError(
                f"algorithm {self.name!r} needs a fidelity dimension in the space {space.config()}; "
                "add one such as epochs='fidelity(1, 81, base=3)'"
            )
        self.fidelity_name, self.fidelity = found
        rungs = self.fidelity.rungs()
        num_rungs = self.options["num_rungs"] or len(rungs)
        if num_rungs > len(rungs):
            raise ConfigurationError(
                f"{self.name} option num_rungs={num_rungs} exceeds the {len(rungs)} rungs of "
                f"{self.fidelity} ({list(rungs)}); lower num_rungs or widen the fidelity"
            )
        #: The fidelity of each rung used, lowest first.
        self.rungs = rungs[len(rungs) - num_rungs:]
        self.eta = float(self.options["reduction_factor"] or self.fidelity.base)
        sampler_options = next(iter(self.options["sampler"].values()))
        self.min_points = self.options["min_points"] or max(
            len(space) + 1, sampler_options.get("n_initial_points", 0))
        self.stopping = self.options["rule"] == "stopping"
        #: The space the sampler draws from: the interior of :attr:`space` for ``bayes`` (see :func:`interior`).
        self.sampler_space = space if next(iter(self.options["sampler"])) == "random" else interior(space)
        #: ``(name, low, high)`` of each dimension :meth:`_top` clips into :attr:`sampler_space`.
        self._clipped = [] if self.sampler_space is space else [
            (name, prior.low, prior.high) for name, prior in self.sampler_space.items()
            if isinstance(prior, (Uniform, LogUniform))]
        #: The completed trials by rung: a cache extended as the history grows (see :mod:`._rungs`).
        self.ladder = Ladder(self.locate, self.eta if self.stopping else None)

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        eta = options["reduction_factor"]
        if eta is not None and (isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 1):
            raise ConfigurationError(f"{cls.name} option reduction_factor must be a number > 1, got {eta!r}")
        for key in ("num_rungs", "min_points", *cls._extra_int_options()):
            value = options[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"{cls.name} option {key} must be an int >= 1, got {value!r}")
        options["sampler"] = _normalize_sampler(cls.name, options["sampler"])
        for key, valid in (("rule", RULES), ("sampler_fit", (None, *SAMPLER_FITS))):
            if options[key] not in valid:
                raise ConfigurationError(
                    f"{cls.name} option {key} must be one of {', '.join(map(str, valid))}, got {options[key]!r}"
                    + ("; 'all_rungs' was superseded by 'refined'" if options[key] == "all_rungs" else ""))
        _check_sampler_options(cls.name, options)

    @classmethod
    def _extra_int_options(cls) -> tuple[str, ...]:
        return ()

    # -- brackets (one for ASHA; Hyperband overrides) ---------------------------

    def bracket_of(self, params: Mapping[str, Any]) -> int:
        """The bracket a point belongs to, the same on every worker."""
        return self.bracket_of_key(config_key(params, self.fidelity_name))

    def bracket_of_key(self, key: str) -> int:
        """The bracket of the configuration whose :func:`config_key` is ``key`` (ASHA: bracket 0)."""
        return 0

    def start_rung(self, bracket: int) -> int:
        """The index of the lowest rung of ``bracket``."""
        return bracket

    def brackets(self) -> range:
        """Every bracket's number."""
        return range(1)

    # -- the contract -----------------------------------------------------------

    def parent_of(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The params of the trial ``params`` was promoted from; ``None`` for a new point."""
        rung = self.rung_index(params)
        if rung is None or rung <= self.start_rung(self.bracket_of(params)):
            return None
        return self.at_rung(params, rung - 1)

    def max_suggestions(self) -> int | None:
        """Every point of a finite space at every rung."""
        size = space_size(self.space)
        return None if size is None else size * len(self.rungs)

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to ``n`` promotions or new lowest-rung points (see the module docstring).

        Raises:
            SpaceExhaustedError: nothing is left to promote and no unseen new point turned up.
        """
        taken = self.seen_points(completed, pending, seen)
        self.ladder.update(completed)
        pending_keys = self._pending_keys(pending)
        suggestions: list[dict[str, Any]] = []
        for _ in range(n):
            params: dict[str, Any] | None
            try:
                params = self.promotion(pending_keys, taken) or self._new_point(completed, pending, taken)
            except SpaceExhaustedError:
                params = None if self.stopping else self._closing_promotion(pending_keys, taken)
                if params is None and suggestions:
                    break
                if params is None:  # the sampler's error counts the points at the top fidelity only
                    raise SpaceExhaustedError(self._exhausted_message(taken)) from None
            taken.add(params)
            suggestions.append(params)
        return suggestions

    # -- rungs ------------------------------------------------------------------

    def rung_index(self, params: Mapping[str, Any]) -> int | None:
        """The index (in :attr:`rungs`) of the rung ``params`` is at, or ``None`` if none."""
        value = params.get(self.fidelity_name)  # or a float stored unrounded, 0.1 * 3 for 0.3
        return next((i for i, rung in enumerate(self.rungs) if rung == value or (
            isinstance(value, float) and math.isclose(float(rung), value, rel_tol=1e-9))), None)

    def at_rung(self, params: Mapping[str, Any], rung: int) -> dict[str, Any]:
        """``params`` with the fidelity of rung ``rung``."""
        return {**params, self.fidelity_name: self.rungs[rung]}

    def locate(self, params: Mapping[str, Any]) -> tuple[int, int, str] | None:
        """``(bracket, rung, config key)`` of a point, or ``None`` if it is on no rung of its bracket."""
        rung = self.rung_index(params)
        if rung is None:
            return None
        key = config_key(params, self.fidelity_name)
        bracket = self.bracket_of_key(key)
        return None if rung < self.start_rung(bracket) else (bracket, rung, key)

    def _pending_keys(self, pending: Sequence[Mapping[str, Any]]) -> dict[Place, set[str]]:
        keys: dict[Place, set[str]] = {}
        for params in pending:
            where = self.locate(params)
            if where is not None:
                keys.setdefault(where[:2], set()).add(where[2])
        return keys

    def promotion(self, pending_keys: dict[Place, set[str]], taken: SeenPoints) -> dict[str, Any] | None:
        """The next promotion, scanning rungs from the top; ``None`` if no rung has a free slot.

        Args:
            pending_keys: the configurations of pending trials by ``(bracket, rung)``.
            taken: every point completed, pending or otherwise registered.
        """
        for rung in reversed(range(len(self.rungs) - 1)):
            for bracket in self.brackets():
                if rung >= self.start_rung(bracket):
                    child = self._promote_from(bracket, rung, pending_keys.get((bracket, rung + 1), set()), taken)
                    if child is not None:
                        return child
        return None

    def _closing_promotion(self, pending_keys: dict[Place, set[str]], taken: SeenPoints) -> dict[str, Any] | None:
        """A promotion once no new point is left (a finite space), from a rung no trial can still reach.

        Such a rung promotes its top ``max(1, floor(n / eta))`` as synchronous successive halving
        would: under the plain quota six configurations with ``eta=3`` promoted two, whose rung
        (quota 0) stopped them, and no result reached the top fidelity. Scanned from the bottom,
        each bracket up to its first rung with a pending trial (a better one may still arrive above).
        """
        for bracket in self.brackets():
            for rung in range(self.start_rung(bracket), len(self.rungs) - 1):
                if pending_keys.get((bracket, rung)):
                    break
                above = pending_keys.get((bracket, rung + 1), set())
                child = self._promote_from(bracket, rung, above, taken, closing=True)
                if child is not None:
                    return child
        return None

    def _promote_from(self, bracket: int, rung: int, pending: set[str], taken: SeenPoints,
                      closing: bool = False) -> dict[str, Any] | None:
        if self.stopping:
            return self._promote_survivor(bracket, rung, pending, taken)
        entries = self.ladder.rungs.get((bracket, rung), [])
        quota = int(len(entries) // self.eta)
        above = self.ladder.keys.get((bracket, rung + 1), set())
        promoted = len(above) + len(pending - above)  # every trial above is a promotion from here
        if closing:  # a final rung: its top max(1, n / eta) go on, whatever was promoted before
            quota, promoted = max(quota, 1), 0
        for entry in entries[:quota]:
            if promoted >= quota:
                return None
            if entry.key in above or entry.key in pending or entry.observation.pruned:  # a pruner stopped it
                continue
            child = self.at_rung(entry.observation.params, rung + 1)
            if child not in taken:
                return child
            promoted += 1  # registered but neither completed nor pending (broken): its slot is used
        return None

    def _promote_survivor(self, bracket: int, rung: int, pending: set[str], taken: SeenPoints) -> dict[str, Any] | None:
        """The best trial of the rung that survived its arrival and is not promoted yet (``stopping``)."""
        above = self.ladder.keys.get((bracket, rung + 1), set())
        for entry in self.ladder.survivors((bracket, rung)):
            if entry.key in above or entry.key in pending or entry.observation.pruned:  # a pruner stopped it
                continue
            child = self.at_rung(entry.observation.params, rung + 1)
            if child not in taken:  # else registered but neither completed nor pending (broken)
                return child
        return None

    # -- new points -------------------------------------------------------------

    def _new_point(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        taken: SeenPoints,
    ) -> dict[str, Any]:
        """A sampler's point, placed at the lowest rung of its bracket, not yet taken."""
        seed = int(self.rng(completed, pending).integers(2**31))
        sampler = _make_sampler(self.options["sampler"], self.sampler_space, seed)
        fit = self._fit_observations()
        lies = [self._top(p) for p in pending]
        failed = [self._top(p) for p in self.failed_points(pending)]  # told the worst: the sampler moves on
        for _ in range(_SAMPLER_RETRIES):
            point = sampler.suggest(fit, Pending([], lies, SeenPoints(), broken=failed), n=1)[0]
            params = self.at_rung(point, self.start_rung(self.bracket_of(point)))
            if params not in taken:
                return params
            lies.append(point)
        raise SpaceExhaustedError(self._exhausted_message(taken))

    def _fit_observations(self) -> list[Observation]:
        """What the sampler is told, at the top fidelity; ``[]`` while too little is known (see ``sampler_fit``)."""
        if next(iter(self.options["sampler"])) == "random":
            return []
        if self.options["sampler_fit"] == "highest_rung":
            ranked = sorted(self._fit_rung(), key=lambda o: o.objective)
            return [Observation(self._top(o.params), o.objective) for o in bounded(ranked)]
        ordered = self.ladder.refined()
        if len(ordered) < self.min_points:
            return []
        scores = normal_scores(len(ordered))
        return [Observation(self._top(ordered[i].params), scores[i]) for i in bounded(list(range(len(ordered))))]

    def _fit_rung(self) -> list[Observation]:
        """The highest rung with at least ``min_points`` results (all brackets); ``[]`` if none."""
        for rung in reversed(range(len(self.rungs))):
            results = self.ladder.results(rung)
            if len(results) >= self.min_points:
                return results
        return []

    def _top(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` as the sampler sees them: at the fidelity ``high``, clipped into :attr:`sampler_space`."""
        told = {**params, self.fidelity_name: self.fidelity.high}
        for name, low, high in self._clipped:
            if isinstance(told.get(name), (int, float)):
                told[name] = min(max(told[name], low), high)
        return told


def bounded(ranked: list[T], most: int | None = None) -> list[T]:
    """At most ``most`` (default :data:`FIT_POINTS`) of ``ranked`` (best first): the best half, then
    the rest evenly spaced by rank, worst included, so the model still sees the whole range.

    Deterministic (no random draw), so the sampler's fit, like the promotions, is a
    function of the history; it bounds the cost of a suggestion whatever the history's size.
    """
    most = FIT_POINTS if most is None else most
    if len(ranked) <= most:
        return ranked
    head = most // 2
    rest = ranked[head:]
    picks = np.linspace(0, len(rest) - 1, most - head).round().astype(int)
    return ranked[:head] + [rest[int(i)] for i in picks]


@functools.lru_cache(maxsize=4)
def normal_scores(count: int) -> tuple[float, ...]:
    """The standard normal quantiles of ``count`` ranks, best (lowest) first: ``Phi^-1((i + 1/2) / count)``.

    The Gaussian copula of a ranking: evenly spread, symmetric, and the same for
    any objective with the same order.
    """
    normal = NormalDist()
    return tuple(normal.inv_cdf((i + 0.5) / count) for i in range(count))


def _check_sampler_options(owner: str, options: dict[str, Any]) -> None:
    """Refuse what a ``random`` sampler would ignore; fill ``sampler_fit`` in for ``bayes``.

    The previous release stored ``sampler_fit="highest_rung"`` with every
    ``random`` sampler (its default); that one is read as unset, so its experiments open.
    """
    if next(iter(options["sampler"])) == "bayes":
        options["sampler_fit"] = options["sampler_fit"] or "refined"
        return
    if options["sampler_fit"] == "highest_rung":
        options["sampler_fit"] = None
    for key in ("sampler_fit", "min_points"):
        if options[key] is not None:
            raise ConfigurationError(
                f"{owner} option {key}={options[key]!r} only applies to sampler='bayes' (a random sampler "
                f"fits nothing); remove it or set sampler='bayes'")


def interior(space: Space) -> Space:
    """``space`` with each continuous dimension's bounds moved in by :data:`INTERIOR_MARGIN` of its range.

    A Gaussian process extrapolates beyond its points, and its acquisition
    function is often highest on the box's faces: on LCBench the model-based
    sampler's suggestions sat within 1 % of a bound of a dimension about a third
    of the time (random sampling: 2 %), where a surrogate benchmark has
    artefacts and a real training rarely has its optimum. The margin is on the
    dimension's search scale (log for ``loguniform``); discrete and categorical
    dimensions, and the fidelity, are kept as they are.
    """
    priors = {}
    for name, prior in space.items():
        if isinstance(prior, (Uniform, LogUniform)) and not getattr(prior, "discrete", False):
            log = isinstance(prior, LogUniform)
            low, high = (math.log(prior.low), math.log(prior.high)) if log else (prior.low, prior.high)
            margin = (high - low) * INTERIOR_MARGIN
            low, high = low + margin, high - margin
            prior = dataclasses.replace(prior, low=math.exp(low) if log else low, high=math.exp(high) if log else high)
        priors[name] = prior
    return Space(priors)


def _normalize_sampler(owner: str, sampler: Any) -> dict[str, dict[str, Any]]:
    # import circle: the registry in orchard.algorithms lists asha, whose sampler comes from the registry
    from orchard.algorithms import normalize_algorithm_config

    name = sampler if isinstance(sampler, str) else next(iter(sampler), None) if isinstance(sampler, Mapping) else None
    if name not in SAMPLERS:
        raise ConfigurationError(
            f"{owner} option sampler must be one of {', '.join(SAMPLERS)} (or {{'bayes': {{...}}}}), "
            f"got {sampler!r}"
        )
    if name == "bayes":  # candidates scored by sampling, not L-BFGS (see SAMPLER_DEFAULTS), unless set
        given = dict(sampler["bayes"]) if isinstance(sampler, Mapping) else {}
        sampler = {"bayes": {**SAMPLER_DEFAULTS, **given}}
    return normalize_algorithm_config(sampler)


def _make_sampler(config: Mapping[str, Any], space: Space, seed: int) -> BaseAlgorithm:
    # import circle: the registry in orchard.algorithms lists asha, whose sampler comes from the registry
    from orchard.algorithms import make_algorithm

    return make_algorithm(config, space, seed)
