"""The algorithm conformance kit: the guarantees of :class:`~orchard.algorithms.base.BaseAlgorithm`.

A third-party algorithm checks itself with one call in a test::

    from orchard.testing.algorithms import check_algorithm

    def test_my_search_conforms():
        check_algorithm(lambda space, seed: MySearch(space, seed))

Each check raises ``AssertionError`` naming the broken guarantee. The checks
run in-process on a synthetic history (no storage, no worker): determinism
for the same history (also for an instance that answered earlier calls), values inside the space, pending awareness, and no
duplicate among workers racing on one history (each worker sees the others'
suggestions as pending, as the storage shows them).

:func:`check_algorithm_racing` adds the check with real OS processes: four
workers racing on one pickle file (or any storage URI) with the experiment's
budget, which must end with exactly that many completed trials and no params
twice. Each process builds the algorithm from its configuration, so it must be
usable by name (built in, or installed through its entry point)::

    def test_my_search_races():
        check_algorithm_racing("my_search")
"""

from __future__ import annotations

import collections
import dataclasses
import math
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchard.algorithms.base import BaseAlgorithm, Observation
from orchard.space import Space, params_hash
from orchard.testing import races
from orchard.trial import Trial, TrialStatus

__all__ = ["DEFAULT_SPACE", "AlgorithmFactory", "check_algorithm", "check_algorithm_racing"]

#: An algorithm's configuration, as an experiment takes it: a name or ``{name: options}``.
AlgorithmConfig = str | Mapping[str, Any]

#: Builds an algorithm for a space and a seed (``lambda space, seed: MySearch(space, seed)``).
AlgorithmFactory = Callable[[Space, int | None], BaseAlgorithm]

#: Seconds a racing process waits for the others to be ready.
_START_TIMEOUT = 120.0

#: A small mixed space (log-uniform real, integer, categorical) used when none is given.
DEFAULT_SPACE: dict[str, str] = {
    "lr": "loguniform(1e-4, 1.0)",
    "x": "uniform(-5, 10)",
    "layers": "randint(1, 8)",
    "act": "choices(['relu', 'tanh', 'gelu'])",
}


def _objective(params: Mapping[str, Any]) -> float:
    """A deterministic, cheap objective over any params (the kit only needs some numbers)."""
    return float(int(params_hash(params)[:8], 16) % 10_000) / 100.0


def _evaluate(**params: Any) -> float:
    """The objective the racing workers run (top-level, so a spawned process can import it)."""
    return _objective(params)


def _observation(params: dict[str, Any], index: int, n_objectives: int) -> Observation:
    values = tuple(_objective({**params, "_": k}) for k in range(n_objectives)) if n_objectives > 1 else None
    return Observation(params, values[0] if values else _objective(params), end_time=float(index), values=values)


def _history(space: Space, n_completed: int, n_pending: int,
             n_objectives: int = 1) -> tuple[list[Observation], list[dict[str, Any]]]:
    """A history drawn by a fixed-seed random stream, the same on every call."""
    import numpy as np

    rng = np.random.default_rng(12345)
    points = [space.sample(rng) for _ in range(n_completed + n_pending)]
    completed = [_observation(dict(p), i, n_objectives) for i, p in enumerate(points[:n_completed])]
    return completed, [dict(p) for p in points[n_completed:]]


def _check_inside(space: Space, name: str, suggestions: list[dict[str, Any]]) -> None:
    assert suggestions, f"{name}: suggest() returned nothing (it must raise SpaceExhaustedError instead)"
    for params in suggestions:
        assert set(params) == set(space), f"{name}: suggestion {params} has not exactly the dims {sorted(space)}"
        try:
            space.validate(params)
        except Exception as exc:
            raise AssertionError(f"{name}: suggestion {params} is outside the space: {exc}") from exc
        for key, value in params.items():
            assert type(value) in (int, float, str, bool), (
                f"{name}: {key}={value!r} is a {type(value).__name__}, not a plain Python value"
            )
            assert not (isinstance(value, float) and math.isnan(value)), f"{name}: {key} is NaN"


@dataclasses.dataclass(frozen=True)
class _Subject:
    """The algorithm under check: its factory, the space, its name, how many objectives its history has."""

    factory: AlgorithmFactory
    space: Space
    name: str
    n_objectives: int

    def build(self, seed: int) -> BaseAlgorithm:
        return self.factory(self.space, seed)

    def history(self, n_completed: int, n_pending: int) -> tuple[list[Observation], list[dict[str, Any]]]:
        return _history(self.space, n_completed, n_pending, self.n_objectives)


def _check_deterministic(subject: _Subject, sizes: tuple[int, int]) -> None:
    completed, pending = subject.history(*sizes)
    first = subject.build(7).suggest(completed, pending, n=2)
    again = subject.build(7).suggest(completed, pending, n=2)
    assert first == again, f"{subject.name}: two instances with seed 7 gave {first} then {again} for the same history"
    _check_inside(subject.space, subject.name, first)


def _check_cache_changes_nothing(subject: _Subject, n_completed: int) -> None:
    """A worker that already answered a shorter history suggests what a fresh one suggests."""
    completed, pending = subject.history(n_completed, 2)
    reused = subject.build(9)
    reused.suggest(completed[: n_completed // 2], pending[:1], n=1)
    fresh = subject.build(9).suggest(completed, pending, n=1)
    again = reused.suggest(completed, pending, n=1)
    assert again == fresh, (
        f"{subject.name}: a worker that had answered a shorter history suggested {again}, a fresh one {fresh}: "
        "state kept between calls changes suggestions (the masterless rule)"
    )


def _check_unseen(subject: _Subject, sizes: tuple[int, int]) -> None:
    completed, pending = subject.history(*sizes)
    taken = {params_hash(o.params) for o in completed} | {params_hash(p) for p in pending}
    suggestions = subject.build(3).suggest(completed, pending, n=3)
    digests = [params_hash(p) for p in suggestions]
    assert len(set(digests)) == len(digests), f"{subject.name}: one call suggested a point twice: {suggestions}"
    assert not taken & set(digests), f"{subject.name}: a suggestion equals a completed or pending point"


def _check_pending_aware(subject: _Subject, n_completed: int) -> None:
    completed, _ = subject.history(n_completed, 0)
    algorithm = subject.build(5)
    (first,) = algorithm.suggest(completed, [], n=1)[:1]
    (retry,) = algorithm.suggest(completed, [first], n=1)[:1]
    assert params_hash(retry) != params_hash(first), (
        f"{subject.name}: with its own suggestion {first} pending, it suggested it again"
    )


def _check_racing_workers(subject: _Subject, n_completed: int) -> None:
    """Four workers with different seeds take turns; each sees the others' points as pending."""
    completed, _ = subject.history(n_completed, 0)
    workers = [subject.build(seed) for seed in (11, 12, 13, 14)]
    pending: list[dict[str, Any]] = []
    for _ in range(3):
        for worker in workers:
            (params,) = worker.suggest(completed, list(pending), n=1)[:1]
            pending.append(params)
    digests = [params_hash(p) for p in pending]
    assert len(set(digests)) == len(digests), f"{subject.name}: racing workers suggested the same point twice"
    _check_inside(subject.space, subject.name, pending)


def check_algorithm(
    factory: AlgorithmFactory, space: Mapping[str, str] | Space | None = None, *, n_completed: int = 12,
    n_objectives: int = 1,
) -> None:
    """Run every in-process conformance check against the algorithm ``factory`` builds.

    Args:
        factory: builds the algorithm for a space and a seed.
        space: the space to test on (a config mapping or a :class:`Space`); default
            :data:`DEFAULT_SPACE`. A multi-fidelity algorithm needs a ``fidelity`` dim.
        n_completed: size of the synthetic completed history for the "after
            initial points" checks (model-based algorithms should be past their
            random start; raise it if yours needs more).
        n_objectives: objectives of the synthetic history; above 1, each
            observation carries an objective vector (``Observation.values``).

    Raises:
        AssertionError: a guarantee is broken; the message names it.
    """
    resolved = space if isinstance(space, Space) else Space.from_config(space or DEFAULT_SPACE)
    subject = _Subject(factory, resolved, type(factory(resolved, 0)).__name__, n_objectives)
    for sizes in ((0, 0), (0, 2), (n_completed, 3)):
        _check_deterministic(subject, sizes)
        _check_unseen(subject, sizes)
    _check_cache_changes_nothing(subject, n_completed)
    for size in (0, n_completed):
        _check_pending_aware(subject, size)
        _check_racing_workers(subject, size)


def _race(uri: str, names: list[str], *, start: Any = None) -> list[dict[str, int]]:
    """One racing worker (a spawned process): pass the start, then work on each experiment until its budget is met."""
    import orchard

    experiments = [orchard.get_experiment(name, storage=uri) for name in names]
    if start is not None:
        start.wait(_START_TIMEOUT)
    return [dict(e.workon(_evaluate, n_workers=1, executor="single", progress=False)["counts"]) for e in experiments]


def check_algorithm_racing(
    algorithms: AlgorithmConfig | Sequence[AlgorithmConfig], space: Mapping[str, str] | None = None, *,
    storage: str | None = None, workers: int = 4, max_trials: int = 16, timeout: float = 120.0,
) -> None:
    """Race ``workers`` real processes running each algorithm on one storage; check the budget and duplicates.

    Args:
        algorithms: an algorithm's configuration (``"my_search"`` or ``{"my_search": {...}}``),
            or a list of them; each spawned process builds them by name. Each gets an
            experiment of its own, raced in turn by the same processes (so checking
            several costs one start of the processes).
        space: the space (a config mapping); default :data:`DEFAULT_SPACE`.
        storage: the storage URI raced on; default a pickle file in a temporary directory.
        workers: how many processes race.
        max_trials: each experiment's budget.
        timeout: seconds before a hung process dumps its stacks and the check fails.

    Raises:
        AssertionError: a budget was not exact, params were stored twice, a
            value is outside the space, or a process failed (its traceback is included).
    """
    import orchard

    configs = [algorithms] if isinstance(algorithms, (str, Mapping)) else list(algorithms)
    config = dict(space or DEFAULT_SPACE)
    names = [f"kit-{i}-{uuid.uuid4().hex[:8]}" for i in range(len(configs))]
    with tempfile.TemporaryDirectory() as directory:
        uri = storage or str(Path(directory) / "race.pkl")
        for name, algorithm in zip(names, configs):
            orchard.build_experiment(name, space=config, algorithm=algorithm, storage=uri, max_trials=max_trials)
        races.run_racing(_race, [(uri, names)] * workers, timeout=timeout)
        stored = {name: orchard.get_experiment(name, storage=uri).fetch_trials() for name in names}
    for name, algorithm in zip(names, configs):
        _check_raced(f"{algorithm} with {workers} racing processes", Space.from_config(config), stored[name],
                     max_trials)


def _check_raced(label: str, space: Space, trials: list[Trial], max_trials: int) -> None:
    statuses = collections.Counter(t.status.value for t in trials)
    assert statuses == {TrialStatus.COMPLETED.value: max_trials}, (
        f"{label}: budget {max_trials}, stored {dict(statuses)}")
    digests = collections.Counter(params_hash(t.params) for t in trials)
    assert max(digests.values()) == 1, f"{label}: {sum(n > 1 for n in digests.values())} params stored twice"
    _check_inside(space, label, [dict(t.params) for t in trials])
