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

Because a promotion needs a free slot in its rung's quota, no rung ever holds
more promotions than ``floor(completed below / eta)`` of the view that made
them; racers whose views lag by a registration or two can exceed a rung's final
quota only by what their own views justified.

:class:`~orchard.algorithms._hyperband.Hyperband` runs several of these ladders
(brackets) side by side, each starting at a different rung.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints, space_size
from orchard.errors import ConfigurationError, SpaceExhaustedError
from orchard.space import Space, params_hash

__all__ = ["Asha"]

#: Samplers that may draw the new points of the lowest rung.
SAMPLERS = ("random", "bayes")
#: Draws tried before a sampler's points are taken to be exhausted.
_SAMPLER_RETRIES = 50

#: ``(bracket, rung index) -> completed observations`` of that rung.
Ladder = dict[tuple[int, int], list[Observation]]


class Asha(BaseAlgorithm):
    """Asynchronous successive halving over the space's ``fidelity`` dimension.

    Options:
        reduction_factor: ``eta``: the top ``1/eta`` of a rung is promoted
            (default: the fidelity's ``base``). A number > 1.
        num_rungs: use only the top ``num_rungs`` rungs of the fidelity, which
            raises the lowest fidelity (default: all of them). An int >= 1.
        sampler: the algorithm drawing new points of the lowest rung:
            ``"random"`` (default) or ``"bayes"``, or ``{"bayes": {...options}}``.
            ``bayes`` is fitted on the highest rung with at least ``min_points``
            completed results (as BOHB does), with every pending point told as a lie.
        min_points: completed results a rung needs before ``bayes`` is fitted on
            it (default: the number of dimensions + 1).

    Raises:
        ConfigurationError: the space has no fidelity dimension, or an option is invalid.
    """

    name = "asha"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "reduction_factor": None,
        "num_rungs": None,
        "sampler": "random",
        "min_points": None,
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
        self.min_points = self.options["min_points"] or len(space) + 1

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

    @classmethod
    def _extra_int_options(cls) -> tuple[str, ...]:
        return ()

    # -- brackets (one for ASHA; Hyperband overrides) ---------------------------

    def bracket_of(self, params: Mapping[str, Any]) -> int:
        """The bracket a point belongs to (ASHA has one, bracket 0)."""
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
        ladder = self.ladder(completed)
        suggestions: list[dict[str, Any]] = []
        for _ in range(n):
            try:
                params = self.promotion(ladder, taken) or self._new_point(ladder, completed, pending, taken)
            except SpaceExhaustedError:
                if suggestions:
                    break
                raise
            taken.add(params)
            suggestions.append(params)
        return suggestions

    # -- rungs ------------------------------------------------------------------

    def rung_index(self, params: Mapping[str, Any]) -> int | None:
        """The index (in :attr:`rungs`) of the rung ``params`` is at, or ``None`` if none."""
        value = params.get(self.fidelity_name)
        return next((i for i, rung in enumerate(self.rungs) if rung == value), None)

    def at_rung(self, params: Mapping[str, Any], rung: int) -> dict[str, Any]:
        """``params`` with the fidelity of rung ``rung``."""
        return {**params, self.fidelity_name: self.rungs[rung]}

    def ladder(self, completed: Sequence[Observation]) -> Ladder:
        """Group the completed observations by ``(bracket, rung)``; others are ignored."""
        ladder: Ladder = {}
        for observation in completed:
            rung = self.rung_index(observation.params)
            if rung is None:
                continue
            bracket = self.bracket_of(observation.params)
            if rung >= self.start_rung(bracket):
                ladder.setdefault((bracket, rung), []).append(observation)
        return ladder

    def promotion(self, ladder: Ladder, taken: SeenPoints) -> dict[str, Any] | None:
        """The next promotion, scanning rungs from the top; ``None`` if no rung has a free slot."""
        for rung in reversed(range(len(self.rungs) - 1)):
            for bracket in self.brackets():
                if rung < self.start_rung(bracket):
                    continue
                child = self._promote_from(ladder.get((bracket, rung), []), rung, taken)
                if child is not None:
                    return child
        return None

    def _promote_from(self, results: list[Observation], rung: int, taken: SeenPoints) -> dict[str, Any] | None:
        quota = int(len(results) // self.eta)
        if quota == 0:
            return None
        ranked = sorted(results, key=lambda o: (o.objective, params_hash(o.params)))
        children = [self.at_rung(o.params, rung + 1) for o in ranked]
        if sum(1 for child in children if child in taken) >= quota:
            return None
        return next((child for child in children[:quota] if child not in taken), None)

    # -- new points -------------------------------------------------------------

    def _new_point(
        self,
        ladder: Ladder,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        taken: SeenPoints,
    ) -> dict[str, Any]:
        """A sampler's point, placed at the lowest rung of its bracket, not yet taken."""
        seed = int(self.rng(completed, pending).integers(2**31))
        sampler = _make_sampler(self.options["sampler"], self.space, seed)
        fit = [Observation(self._top(o.params), o.objective) for o in self._fit_rung(ladder)]
        lies = [self._top(p) for p in pending]
        for _ in range(_SAMPLER_RETRIES):
            point = sampler.suggest(fit, lies, n=1)[0]
            params = self.at_rung(point, self.start_rung(self.bracket_of(point)))
            if params not in taken:
                return params
            lies.append(point)
        raise SpaceExhaustedError(self._exhausted_message(taken))

    def _fit_rung(self, ladder: Ladder) -> list[Observation]:
        """The highest rung with at least ``min_points`` results (all brackets); ``[]`` if none."""
        if next(iter(self.options["sampler"])) == "random":
            return []
        for rung in reversed(range(len(self.rungs))):
            results = [o for (_, r), group in ladder.items() if r == rung for o in group]
            if len(results) >= self.min_points:
                return results
        return []

    def _top(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` at the fidelity the sampler's space gives every point (``high``)."""
        return {**params, self.fidelity_name: self.fidelity.high}


def _normalize_sampler(owner: str, sampler: Any) -> dict[str, dict[str, Any]]:
    from orchard.algorithms import normalize_algorithm_config

    name = sampler if isinstance(sampler, str) else next(iter(sampler), None) if isinstance(sampler, Mapping) else None
    if name not in SAMPLERS:
        raise ConfigurationError(
            f"{owner} option sampler must be one of {', '.join(SAMPLERS)} (or {{'bayes': {{...}}}}), "
            f"got {sampler!r}"
        )
    return normalize_algorithm_config(sampler)


def _make_sampler(config: Mapping[str, Any], space: Space, seed: int) -> BaseAlgorithm:
    from orchard.algorithms import make_algorithm

    return make_algorithm(config, space, seed)


def hash_fraction(params: Mapping[str, Any], skip: str) -> float:
    """A number in [0, 1) derived from ``params`` without ``skip``: the same on every worker."""
    digest = params_hash({k: v for k, v in params.items() if k != skip})
    return int(digest[:13], 16) / float(16**13)
