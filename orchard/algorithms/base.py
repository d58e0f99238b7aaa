"""The algorithm contract: history in, suggestions out.

An algorithm is a pure function of the history it is handed. It never touches
a storage, a file, the network or the environment, so every worker can run
its own copy on its own view of the shared history and the workers still
cooperate: what one worker is evaluating reaches the others as ``pending``.

**The masterless rule.** A suggestion is a function of the space, the options,
the history (``completed`` and ``pending``) and the worker's own seed stream.
An algorithm may keep a cache inside its worker's process (the ``optuna``
adapter keeps its study there, growing it incrementally) only if a fresh
instance built from the same storage suggests the same points: nothing another
worker needs lives outside the storage. Third-party algorithms register
through the ``orchard.algorithms`` entry-point group (see
:mod:`orchard.algorithms`) and check themselves with
:func:`orchard.testing.algorithms.check_algorithm`.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from orchard.errors import SpaceExhaustedError
from orchard.options import Configurable
from orchard.space import Prior, Space, params_hash, trial_id
from orchard.trial import Trial

if TYPE_CHECKING:  # a generator is made with it: `orchard status` builds a worker, needs no numpy
    import numpy as np

__all__ = ["BaseAlgorithm", "Observation", "Pending", "SeenPoints"]

#: Finite spaces up to this many points are enumerated to find what is left.
_ENUMERATION_LIMIT = 100_000
#: Random draws tried before concluding that a finite space is (nearly) covered.
_RANDOM_RETRIES = 100


@dataclasses.dataclass(frozen=True)
class Observation:
    """One completed evaluation: the params, the objective (minimized), and when it completed.

    ``end_time`` is the trial's recorded completion time (the storage's record,
    the same for every worker), or ``None`` when unknown; ASHA's ``stopping``
    rule reads it to order a rung's arrivals, ``nsga2`` to form its generations.

    In an experiment with several objectives, ``values`` holds every objective in
    minimisation form (``objective`` is its first), ``None`` otherwise (and for a
    pruned trial). ``feasible`` says whether the experiment's constraints hold;
    ``violation`` is by how much they are broken in total (``0.0``: feasible).
    ``pruned`` says a pruner stopped the trial: ``objective`` is then its last
    reported value, evidence for a model but no result at its fidelity, and ``step``
    the step of that report (``None``: unknown).
    """

    params: dict[str, Any]
    objective: float
    end_time: float | None = None
    values: tuple[float, ...] | None = None
    feasible: bool = True
    violation: float = 0.0
    pruned: bool = False
    step: int | None = None


class SeenPoints:
    """The set of points that are completed or pending, compared by :func:`params_hash`.

    With ``base``, the set is an overlay: it holds ``points`` plus everything in
    ``base``, and additions never touch ``base``. A caller that keeps one
    :class:`SeenPoints` up to date incrementally (the worker does) passes it as
    ``seen`` to :meth:`BaseAlgorithm.suggest`, so no suggestion re-hashes the
    whole history.

    With ``experiment_id`` (inherited by overlays), points are compared by the id
    of the trial they would be in that experiment (:func:`~orchard.space.trial_id`,
    as equal as :func:`params_hash`), so a trial read from the storage is added by
    its id, without hashing its params again (:meth:`add_trial`).
    """

    def __init__(self, points: Iterable[Mapping[str, Any]] = (), base: SeenPoints | None = None,
                 experiment_id: str | None = None) -> None:
        self._experiment: str | None = base._experiment if base is not None else experiment_id
        self._base = base
        self._hashes = {self._digest(p) for p in points}

    def _digest(self, params: Mapping[str, Any]) -> str:
        return params_hash(params) if self._experiment is None else trial_id(self._experiment, params)

    def __contains__(self, params: object) -> bool:
        if not isinstance(params, Mapping):
            return False
        return self.has_hash(self._digest(params))

    def has_hash(self, digest: str) -> bool:
        """Whether a point with this digest (:func:`params_hash`, or its trial id) is in the set."""
        return digest in self._hashes or (self._base is not None and self._base.has_hash(digest))

    def __len__(self) -> int:
        if self._base is None:
            return len(self._hashes)
        return len(self._base) + sum(1 for h in self._hashes if not self._base.has_hash(h))

    def add(self, params: Mapping[str, Any]) -> None:
        """Mark ``params`` as seen."""
        self._hashes.add(self._digest(params))

    def add_trial(self, trial: Trial) -> None:
        """Mark a trial's params as seen: by its id if it is one of this set's experiment."""
        if self._experiment is not None and trial.experiment == self._experiment:
            self._hashes.add(trial.id)  # every backend names a trial trial_id(experiment, params)
        else:
            self.add(trial.params)


class Pending(list[dict[str, Any]]):
    """Pending params, the first ``known`` of which the :class:`SeenPoints` ``seen_by`` already holds.

    :meth:`BaseAlgorithm.seen_points` then adds only the others to its overlay of
    ``seen_by``: with hundreds of workers, hashing every pending point on every
    suggestion would cost as much as the rest of the worker's loop.

    ``completes_after`` bounds the ``end_time`` of every completion not yet in the
    caller's view: none will be recorded earlier (see :meth:`BaseAlgorithm.settled`).
    ``broken`` holds the params of the experiment's broken trials (see :meth:`BaseAlgorithm.failed_points`).
    """

    def __init__(self, known: Iterable[dict[str, Any]], extra: Iterable[dict[str, Any]], seen_by: SeenPoints,
                 completes_after: float = math.inf, broken: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(known)
        self.known = len(self)
        self.extend(extra)
        self.seen_by = seen_by
        self.completes_after = completes_after
        self.broken = broken


class BaseAlgorithm(Configurable, abc.ABC):
    """A search algorithm: turns a history into new points to evaluate.

    Guarantees every implementation keeps:

    * **Pure.** :meth:`suggest` depends only on the space, the seed, the options
      and its arguments. No storage, no I/O, no environment reads; state carried
      from one call to the next is at most a cache that changes no suggestion.
    * **Plain values.** Suggested params are dicts of plain Python ``int``,
      ``float``, ``str`` and ``bool`` values inside the space, never numpy scalars.
    * **Unseen.** A suggestion equals no completed and no pending point, nor
      another suggestion of the same call.
    * **Pending-aware.** ``pending`` holds the points other workers are evaluating
      (new, reserved or interrupted trials). Growing ``pending`` changes the
      suggestions, so a worker whose suggestion collided with a racing worker's
      registration gets a different point when it asks again with that point in
      ``pending``.
    * **Reproducible.** With a seed, the same history gives the same suggestions;
      the random stream is derived from the seed *and* the history size, so one
      seeded worker replays its run exactly and workers with different seeds
      explore differently.
    * **Exhaustion is an error.** When no unseen point is left (a finished grid,
      a fully covered small discrete space) :meth:`suggest` raises
      :class:`~orchard.errors.SpaceExhaustedError` rather than returning nothing.

    Args:
        space: the search space.
        seed: seed of the algorithm's random streams (``None``: fresh entropy).
        **options: algorithm options, checked against :attr:`OPTIONS`.

    Raises:
        ConfigurationError: an unknown option, or an invalid option value.
    """

    KIND: ClassVar[str] = "algorithm"

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        self.space = space
        self.seed = seed
        self.options = self.check_options(options)

    @abc.abstractmethod
    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to ``n`` new points to evaluate.

        Args:
            completed: the completed trials (params and objective).
            pending: params of trials being, or about to be, evaluated by anyone; the
                worker's (a :class:`Pending`) also holds the broken trials' (:meth:`failed_points`).
            n: how many points to return.
            seen: optional points known to be taken (at least every completed
                point; pending ones are added); kept by the caller so the cost
                of a suggestion does not grow with the history. Not modified.

        Returns:
            Between 1 and ``n`` params dicts of plain Python values, none equal
            to a completed or pending point, nor to each other.

        Raises:
            SpaceExhaustedError: no unseen point is left.
        """

    @classmethod
    def check_objectives(cls, options: Mapping[str, Any], objectives: Mapping[str, str]) -> None:
        """Refuse ``options`` that cannot optimise ``objectives``, an experiment's several objectives.

        Called when the experiment is created, so the experiment is not stored with an algorithm
        that fails its workers once the first results come in. The default accepts any number.

        Raises:
            ConfigurationError: this configuration optimizes one objective only.
        """

    def parent_of(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The params of the trial a suggestion was promoted from, if it is a promotion.

        Multi-fidelity algorithms (``asha``, ``hyperband``) promote a trial by
        suggesting its params at the next fidelity; the worker registers the
        suggestion with ``parent`` set to this point's trial id. A pure function of
        ``params``. Others never promote: ``None``.
        """
        return None

    def max_suggestions(self) -> int | None:
        """The number of distinct points this algorithm can ever suggest, if finite."""
        return space_size(self.space)

    # -- helpers shared by the implementations ---------------------------------

    def at_top_fidelity(self, completed: Sequence[Observation]) -> Sequence[Observation]:
        """``completed`` without the observations made below the space's fidelity ``high``.

        For the algorithms that evaluate at ``high`` only (all but ``asha`` and ``hyperband``): a
        warm-start source's or an inserted trial run at 1 epoch of 27 was told as a result at 27
        (every fidelity value reads as ``high`` to them), its one-epoch loss fitted as a full
        training's. A space without a fidelity keeps every observation.
        """
        fidelity = self.space.fidelity
        if fidelity is None:
            return completed
        name, prior = fidelity
        return [o for o in completed if o.params.get(name) == prior.high]

    @staticmethod
    def seen_points(
        completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]], seen: SeenPoints | None
    ) -> SeenPoints:
        """A private set of taken points: an overlay on ``seen`` if given, else built from the history."""
        if seen is not None:
            fresh = pending[pending.known:] if isinstance(pending, Pending) and pending.seen_by is seen else pending
            return SeenPoints(fresh, base=seen)
        return SeenPoints([*(o.params for o in completed), *pending])

    @staticmethod
    def settled(completed: Sequence[Observation], pending: Sequence[Mapping[str, Any]]) -> list[Observation]:
        """The completed observations whose place in the completion order (by ``end_time``) is final.

        Where a storage's clients stamp their writes before the storage orders them
        (MongoDB), a completion can become visible after one recorded later: a view
        that holds the later one only would put the earlier one's successors in its
        place. A completion is settled when it ended before ``pending.completes_after``
        (:class:`Pending`): no completion still unseen can then come before it, so
        the settled observations in completion order only ever grow at their end.
        Algorithms that cut the completion order into generations (``nsga2``,
        CMA-ES) read only these, so every worker's generations are those of the
        final history. A plain ``pending`` sequence bounds nothing: everything with an end
        time is settled. An observation without one (another program's record) has no place
        in the order, never settles: placed last, each new completion would move it.
        """
        bound = pending.completes_after if isinstance(pending, Pending) else math.inf
        return [o for o in completed if o.end_time is not None and o.end_time < bound]

    @staticmethod
    def failed_points(pending: Sequence[Mapping[str, Any]]) -> Sequence[dict[str, Any]]:
        """The params of the experiment's broken trials, in the same order for every worker.

        Neither completed nor pending, they reach an algorithm only here (a :class:`Pending`'s
        ``broken``; a plain ``pending`` sequence has none). A model that is not told them sees
        nothing new after a failure and suggests the failed point's neighbour next.
        """
        return pending.broken if isinstance(pending, Pending) else ()

    def rng(self, completed: Sequence[Any], pending: Sequence[Any]) -> np.random.Generator:
        """A generator derived from the seed and the history size (see the class docstring)."""
        import numpy as np

        sequence = np.random.SeedSequence(self.seed, spawn_key=(len(completed), len(pending)))
        return np.random.default_rng(sequence)

    def random_unseen(self, rng: np.random.Generator, seen: SeenPoints) -> dict[str, Any]:
        """Draw a random point of the space that is not in ``seen``.

        Raises:
            SpaceExhaustedError: every point of a finite space has been seen, or
                no unseen point turned up in many draws.
        """
        for _ in range(_RANDOM_RETRIES):
            params = self.space.sample(rng)
            if params not in seen:
                return params
        left = unseen_points(self.space, seen)
        if left:
            return left[int(rng.integers(len(left)))]
        raise SpaceExhaustedError(self._exhausted_message(seen))

    def check_unseen_left(self, seen: SeenPoints) -> None:
        """Raise if ``seen`` covers every point of a finite space (cheap otherwise).

        Raises:
            SpaceExhaustedError: no unseen point is left.
        """
        size = space_size(self.space)
        if size is not None and len(seen) >= size and not unseen_points(self.space, seen):
            raise SpaceExhaustedError(self._exhausted_message(seen))

    def _exhausted_message(self, seen: SeenPoints) -> str:
        return (
            f"algorithm {self.name!r} found no unseen point in the space {self.space.config()} "
            f"({len(seen)} points completed or pending); widen the space or lower max_trials"
        )


# -- finite spaces ----------------------------------------------------------------


def prior_size(prior: Prior) -> int | None:
    """The number of values of a discrete prior; ``None`` for a continuous one."""
    return prior.size()


def space_size(space: Space) -> int | None:
    """The number of points of an all-discrete space; ``None`` if any dimension is continuous."""
    sizes = [prior_size(prior) for prior in space.values()]
    if any(size is None for size in sizes):
        return None
    return math.prod(sizes)  # type: ignore[arg-type]


def _all_values(prior: Prior) -> list[Any]:
    size = prior_size(prior)
    assert size is not None
    return prior.grid(size)


def iter_points(space: Space) -> Iterator[dict[str, Any]]:
    """Every point of an all-discrete space, in a deterministic order."""
    names = list(space)
    for values in itertools.product(*(_all_values(space[name]) for name in names)):
        yield dict(zip(names, values))


def unseen_points(space: Space, seen: SeenPoints) -> list[dict[str, Any]]:
    """The unseen points of a finite space of at most 100,000 points, in a deterministic order.

    A continuous or larger space gives ``[]``: callers ask only after many random
    draws all hit seen points, and then treat ``[]`` as exhaustion.
    """
    size = space_size(space)
    if size is None or size > _ENUMERATION_LIMIT:
        return []
    return [point for point in iter_points(space) if point not in seen]
