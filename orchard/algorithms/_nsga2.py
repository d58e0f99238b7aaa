"""NSGA-II computed from the shared history, so any worker can produce the next child.

The completed trials, in completion order (recorded end time, ties broken by
the params' hash), form the generations: with population size ``P``,
generation ``g`` is trials ``[g·P, (g+1)·P)``. Generation 0 is drawn at
random. The parent population after generation ``g`` is the best ``P`` of
the previous population and generation ``g`` by (constrained non-dominated
rank, crowding distance): NSGA-II's elitist survival. Trials of the
generation still filling are not parents yet. Because this depends only on
the completed trials, every worker computes the same population from the
same history; each child then comes from the worker's own seeded stream.
Only settled completions count (:meth:`BaseAlgorithm.settled`): where a
completion can become visible after a later-stamped one (MongoDB), a
generation waits until every trial that could still end before its last
member has completed, so a worker's generations are always those of the
final history, never a neighbour's members in a late member's place.

A child: two parents by binary tournament on (rank, crowding), simulated
binary crossover (SBX) and polynomial mutation on the unit-scaled space
(log scale for ``loguniform``; integers rounded); a categorical value is
one parent's, picked uniformly, or with the mutation probability a random one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import ConfigurationError
from orchard.fidelity import Fidelity
from orchard.objectives import crowding_distance, non_dominated_sort
from orchard.priors import LogUniform, Normal, Prior, RandInt, Uniform
from orchard.space import Space, params_hash

__all__ = ["Member", "Nsga2", "generations", "population", "survivors"]

#: Children drawn before falling back to a random unseen point.
_CHILD_RETRIES = 20
#: Populations a worker's algorithm keeps computed (a cache: see :func:`population`).
_MEMO_LIMIT = 256


@dataclasses.dataclass(frozen=True)
class Member:
    """One evaluated point as NSGA-II sees it: params, objective vector, constraint violation."""

    params: dict[str, Any]
    values: tuple[float, ...]
    violation: float = 0.0


def generations(completed: Sequence[Observation], size: int) -> list[list[Member]]:
    """The complete generations of ``size`` members, in completion order.

    Observations with an objective vector are used when any has one (pruned
    trials have none); otherwise the scalar objective is the vector.
    """
    several = any(o.values is not None for o in completed)
    members = [Member(o.params, o.values if o.values is not None else (o.objective,), max(0.0, o.violation))
               for o in _in_completion_order(completed) if not several or o.values is not None]
    return [members[g * size:(g + 1) * size] for g in range(len(members) // size)]


def _in_completion_order(completed: Sequence[Observation]) -> list[Observation]:
    """By recorded end time; equal times (and unknown ones, last) by the params' hash."""
    def end(observation: Observation) -> float:
        return observation.end_time if observation.end_time is not None else math.inf

    ordered: list[Observation] = []
    for _, tied in itertools.groupby(sorted(completed, key=end), key=end):
        group = list(tied)
        ordered += sorted(group, key=lambda o: params_hash(o.params)) if len(group) > 1 else group
    return ordered


def survivors(members: Sequence[Member], size: int) -> list[Member]:
    """The best ``size`` of ``members`` by constrained rank, then crowding distance."""
    fronts = non_dominated_sort([m.values for m in members], [m.violation for m in members])
    chosen: list[Member] = []
    for front in fronts:
        if len(chosen) + len(front) <= size:
            chosen += [members[i] for i in front]
            continue
        distance = crowding_distance([members[i].values for i in front])
        order = sorted(range(len(front)), key=lambda k: (-distance[k], front[k]))
        chosen += [members[front[k]] for k in order[:size - len(chosen)]]
        break
    return chosen


def population(completed: Sequence[Observation], size: int,
               memo: dict[str, list[Member]] | None = None) -> list[Member]:
    """The current parent population: generation 0, then each later generation's survivors.

    Args:
        completed: the completed observations, in any order.
        size: the population size.
        memo: populations already computed, by a digest of the generations they
            come from; filled in. Only a cache: the answer is the same without it.
    """
    gens = generations(completed, size)
    if not gens:
        return []
    digest = hashlib.sha256()
    current: list[Member] = []
    for g, generation in enumerate(gens):
        for member in generation:  # a cache key: a miss only costs time
            digest.update(repr((member.params, member.values, member.violation)).encode())
        key = digest.hexdigest()
        cached = memo.get(key) if memo is not None else None
        if cached is None:
            cached = survivors(current + generation, size) if g else generation
            if memo is not None:
                memo[key] = cached
        current = cached
    if memo is not None and len(memo) > _MEMO_LIMIT:  # keep the newest populations only
        for key in list(memo)[:-len(gens)]:
            del memo[key]
    return current


def _ranked(members: Sequence[Member]) -> list[tuple[int, float]]:
    """Each member's (rank, crowding distance) within ``members``."""
    keys = [(0, 0.0)] * len(members)
    for rank, front in enumerate(non_dominated_sort([m.values for m in members], [m.violation for m in members])):
        for i, distance in zip(front, crowding_distance([members[i].values for i in front]), strict=True):
            keys[i] = (rank, distance)
    return keys


class Nsga2(BaseAlgorithm):
    """NSGA-II (Deb et al., 2002) with constrained domination, from the shared history.

    Options:
        population_size: ``P``, members per generation (>= 4).
        crossover_prob: probability that a child is a crossover of its parents.
        eta_crossover: SBX distribution index (larger: children nearer their parents).
        eta_mutation: polynomial mutation distribution index.
        mutation_prob: per-dimension mutation probability (``None``: 1 / dimensions).
    """

    name: ClassVar[str] = "nsga2"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "population_size": 20, "crossover_prob": 0.9, "eta_crossover": 15.0, "eta_mutation": 20.0,
        "mutation_prob": None,
    }

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, **options)
        self._memo: dict[str, list[Member]] = {}  # a cache of past populations: suggest stays a pure function

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        size = options["population_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 4:
            raise ConfigurationError(f"nsga2's population_size must be an integer >= 4, got {size!r}")
        for key in ("crossover_prob", "mutation_prob"):
            value = options[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise ConfigurationError(f"nsga2's {key} must be a probability in [0, 1], got {value!r}")
        for key in ("eta_crossover", "eta_mutation"):
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1000:
                raise ConfigurationError(f"nsga2's {key} must be a number in [0, 1000), got {value!r}")

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Children of the current population (random points while generation 0 fills)."""
        taken = self.seen_points(completed, pending, seen)
        self.check_unseen_left(taken)
        completed = self.at_top_fidelity(completed)
        rng = self.rng(completed, pending)
        parents = population(self.settled(completed, pending), self.options["population_size"], self._memo)
        keys = _ranked(parents)
        suggestions: list[dict[str, Any]] = []
        for _ in range(n):
            child = self._child(parents, keys, rng, taken) if parents else None
            if child is None:
                child = self.random_unseen(rng, taken)
            taken.add(child)
            suggestions.append(child)
        return suggestions

    def _child(self, parents: Sequence[Member], keys: Sequence[tuple[int, float]], rng: np.random.Generator,
               taken: SeenPoints) -> dict[str, Any] | None:
        for _ in range(_CHILD_RETRIES):
            a, b = (parents[self._tournament(keys, rng)] for _ in range(2))
            child = self._breed(a.params, b.params, rng)
            if child not in taken:
                return child
        return None

    @staticmethod
    def _tournament(keys: Sequence[tuple[int, float]], rng: np.random.Generator) -> int:
        i, j = (int(k) for k in rng.integers(len(keys), size=2))
        (rank_i, crowd_i), (rank_j, crowd_j) = keys[i], keys[j]
        return i if (rank_i, -crowd_i) <= (rank_j, -crowd_j) else j

    def _breed(self, a: Mapping[str, Any], b: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        options = self.options
        cross = rng.random() < options["crossover_prob"]
        mutation = options["mutation_prob"] if options["mutation_prob"] is not None else 1 / len(self.space)
        child: dict[str, Any] = {}
        for name in self.space:
            prior = self.space[name]
            axis = _axis(prior)
            if axis is None:  # categorical (or a fidelity, always its high end): one parent's, or a mutation
                value = a[name] if rng.random() < 0.5 else b[name]
                # a warm-start or inserted parent run at a lower fidelity passed it on: children were evaluated there
                fixed = isinstance(prior, Fidelity)
                child[name] = prior.sample(rng) if rng.random() < mutation or fixed else value
                continue
            x, y = axis.unit(a[name]), axis.unit(b[name])
            u = _sbx(x, y, options["eta_crossover"], rng) if cross and rng.random() < 0.5 else x
            if rng.random() < mutation:
                u = _polynomial_mutation(u, options["eta_mutation"], rng)
            child[name] = axis.value(u, prior)
        return child


@dataclasses.dataclass(frozen=True)
class _Axis:
    """A numeric dimension mapped onto [0, 1]."""

    low: float
    high: float
    log: bool
    integer: bool

    def unit(self, value: Any) -> float:
        low, high, v = (math.log(self.low), math.log(self.high), math.log(value)) if self.log else (
            self.low, self.high, float(value))
        return min(1.0, max(0.0, (v - low) / (high - low))) if high > low else 0.5

    def value(self, u: float, prior: Prior) -> Any:
        if self.integer:  # in exact ints: through floats, a range past 2**53 gave values outside it
            low, high = int(self.low), int(self.high)
            return prior.cast(min(high, max(low, low + round(u * (high - low)))))
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        x = min(self.high, max(self.low, x))
        return prior.cast(x)


def _axis(prior: Prior) -> _Axis | None:
    if isinstance(prior, Uniform):
        return _Axis(prior.low, prior.high, False, prior.discrete)
    if isinstance(prior, LogUniform):
        return _Axis(prior.low, prior.high, True, False)
    if isinstance(prior, RandInt):
        return _Axis(prior.low, prior.high - 1, False, True)
    if isinstance(prior, Normal):
        return _Axis(prior.mu - 4 * prior.sigma, prior.mu + 4 * prior.sigma, False, False)
    return None


def _sbx(x: float, y: float, eta: float, rng: np.random.Generator) -> float:
    """One child of simulated binary crossover on [0, 1] (Deb and Agrawal's bounded form)."""
    if abs(x - y) < 1e-14:
        return x
    low, high = min(x, y), max(x, y)
    u = rng.random()

    def spread(gap: float) -> float:
        beta = 1.0 + 2.0 * gap / (high - low)
        alpha = 2.0 - beta ** -(eta + 1.0)
        if u <= 1.0 / alpha:
            return float((u * alpha) ** (1.0 / (eta + 1.0)))
        return float((1.0 / (2.0 - u * alpha)) ** (1.0 / (eta + 1.0)))

    if rng.random() < 0.5:
        child = 0.5 * (low + high - spread(low) * (high - low))
    else:
        child = 0.5 * (low + high + spread(1.0 - high) * (high - low))
    return min(1.0, max(0.0, child))


def _polynomial_mutation(x: float, eta: float, rng: np.random.Generator) -> float:
    """Deb's bounded polynomial mutation on [0, 1]."""
    u = rng.random()
    power = 1.0 / (eta + 1.0)
    if u < 0.5:
        delta = (2.0 * u + (1.0 - 2.0 * u) * (1.0 - x) ** (eta + 1.0)) ** power - 1.0
    else:
        delta = 1.0 - (2.0 * (1.0 - u) + 2.0 * (u - 0.5) * x ** (eta + 1.0)) ** power
    return float(min(1.0, max(0.0, x + delta)))
