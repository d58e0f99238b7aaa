"""Algorithms: the registry, the suggest contract, and each algorithm's own promises.

Everything runs in-process on small histories; the whole module takes well
under a minute.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

import orchard
from orchard.algorithms import (
    ALGORITHMS,
    BaseAlgorithm,
    Observation,
    make_algorithm,
    normalize_algorithm_config,
)
from orchard.algorithms._grid import GridSearch, choose_n_values
from orchard.errors import ConfigurationError, SpaceExhaustedError
from orchard.space import Space, params_hash

BRANIN_SPACE = {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}
BRANIN_MIN = 0.397887
#: Branin with a training budget: every algorithm accepts it (multi-fidelity ones need it).
FIDELITY_BRANIN_SPACE = {**BRANIN_SPACE, "epochs": "fidelity(1, 9)"}
MIXED_SPACE = {
    "kind": "choices(['adam', 'sgd', 'rmsprop'])",
    "flag": "choices([True, False])",
    "layers": "randint(1, 6)",
    "lr": "loguniform(1e-5, 1.0)",
    "shift": "normal(0, 2)",
    "units": "uniform(8, 64, discrete=True)",
    "dropout": "uniform(0, 0.5)",
}
PLAIN_TYPES = (int, float, str, bool)
ALGO_CONFIGS: list[Any] = [
    "random",
    {"grid": {"n_values": 4}},
    {"bayes": {"n_initial_points": 4}},
    {"bayes": {"n_initial_points": 4, "base_estimator": "ET"}},
]
ALGO_IDS = ["random", "grid", "bayes-gp", "bayes-et"]


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def mixed_objective(params: Mapping[str, Any]) -> float:
    penalty = {"adam": 0.0, "sgd": 1.0, "rmsprop": 0.5}[params["kind"]] + (0.3 if params["flag"] else 0.0)
    return (
        penalty
        + (params["layers"] - 3) ** 2 * 0.1
        + (math.log10(params["lr"]) + 3) ** 2
        + params["shift"] ** 2 * 0.1
        + abs(params["units"] - 32) / 32
        + params["dropout"]
    )


def run(algo: BaseAlgorithm, fn: Callable[[Mapping[str, Any]], float], trials: int) -> list[Observation]:
    """Sequential ask/observe loop of one worker."""
    completed: list[Observation] = []
    for _ in range(trials):
        (params,) = algo.suggest(completed, [])
        completed.append(Observation(params, fn(params)))
    return completed


def skopt_twin(fast: Any) -> Any:
    """skopt's own GP regressor with the parameters of ``fast`` (a FastGaussianProcess)."""
    from skopt.learning import GaussianProcessRegressor

    params = fast.get_params(deep=False)
    del params["hyperparameter_points"], params["fit_tolerance"]
    return GaussianProcessRegressor(**params)


def assert_plain_point(space: Space, params: dict[str, Any]) -> None:
    assert set(params) == set(space)
    for name, value in params.items():
        assert type(value) in PLAIN_TYPES, f"{name}={value!r} is a {type(value).__name__}"
    assert space.validate(params) == params


def hashes(points: list[Mapping[str, Any]]) -> set[str]:
    return {params_hash(p) for p in points}


# -- registry -----------------------------------------------------------------------


def test_registry_lists_the_algorithms() -> None:
    assert list(ALGORITHMS) == ["random", "grid", "bayes", "asha", "hyperband", "optuna", "nsga2"]
    space = Space.from_config(FIDELITY_BRANIN_SPACE)
    for name in ALGORITHMS:
        algo = make_algorithm(name, space, seed=1)
        assert isinstance(algo, BaseAlgorithm)
        assert algo.name == name


def test_unknown_algorithm_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match="unknown algorithm 'tpe'.*random, grid, bayes"):
        make_algorithm("tpe", Space.from_config(BRANIN_SPACE))
    with pytest.raises(ConfigurationError, match="unknown algorithm"):
        normalize_algorithm_config({"tpe": {}})


def test_unknown_option_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"no option 'n_random'.*valid options: .*n_initial_points"):
        normalize_algorithm_config({"bayes": {"n_random": 3}})
    with pytest.raises(ConfigurationError, match="no option 'seed'.*valid options: budget, n_values, shuffle"):
        make_algorithm({"grid": {"seed": 3}}, Space.from_config(BRANIN_SPACE))


@pytest.mark.parametrize("config, match", [
    ({"bayes": {"base_estimator": "GBRT"}}, "base_estimator must be one of 'GP', 'RF', 'ET'"),
    ({"bayes": {"acq_func": "gp_hedge"}}, "acq_func must be one of"),
    ({"bayes": {"n_initial_points": -1}}, "n_initial_points must be an integer >= 0"),
    ({"bayes": {"xi": "big"}}, "xi must be a number"),
    ({"bayes": {"liar": "cl_median"}}, "liar must be one of"),
    ({"bayes": {"base_estimator": "ET", "acq_optimizer": "lbfgs"}}, "needs base_estimator='GP'"),
    ({"grid": {"n_values": 1}}, "n_values must be an integer >= 2"),
    ({"grid": {"shuffle": "yes"}}, "shuffle must be True or False"),
    ({"bayes": 3}, "must be a mapping"),
    ({"bayes": {}, "random": {}}, "one-key mapping"),
])
def test_invalid_configurations_are_rejected(config: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        normalize_algorithm_config(config)


def test_normalized_config_spells_out_defaults_and_is_stable() -> None:
    short = normalize_algorithm_config("bayes")
    explicit = normalize_algorithm_config({"bayes": {"base_estimator": "GP", "n_initial_points": 10, "acq_func": "EI"}})
    assert short == explicit
    assert short["bayes"]["acq_func"] == "EI" and short["bayes"]["max_gp_points"] == 1000
    assert normalize_algorithm_config(short) == short  # stored form normalizes to itself
    assert json.loads(json.dumps(short)) == short  # storable as JSON/BSON
    assert normalize_algorithm_config({"bayes": {"n_initial_points": 5}}) != short  # a conflict shows
    assert normalize_algorithm_config("random") == {"random": {}}
    assert normalize_algorithm_config({"grid": None}) == {"grid": {"n_values": None, "budget": None, "shuffle": False}}


# -- the suggest contract, for every algorithm ----------------------------------------


@pytest.mark.parametrize("config", ALGO_CONFIGS, ids=ALGO_IDS)
def test_suggestions_are_plain_unseen_points_of_a_mixed_space(config: Any) -> None:
    space = Space.from_config(MIXED_SPACE)
    algo = make_algorithm(config, space, seed=3)
    completed: list[Observation] = []
    pending: list[dict[str, Any]] = []
    for step in range(12):
        suggestions = algo.suggest(completed, pending, n=2)
        assert len(suggestions) == 2
        for params in suggestions:
            assert_plain_point(space, params)
        seen = hashes([*(o.params for o in completed), *pending])
        assert not hashes(suggestions) & seen
        assert len(hashes(suggestions)) == 2
        # one suggestion is evaluated, the other stays pending for a while
        completed.append(Observation(suggestions[0], mixed_objective(suggestions[0])))
        pending.append(suggestions[1])
        if step % 3 == 2:
            done = pending.pop(0)
            completed.append(Observation(done, mixed_objective(done)))


@pytest.mark.parametrize("config", [*ALGO_CONFIGS, {"bayes": {"n_initial_points": 4, "acq_func": "portfolio"}}],
                         ids=[*ALGO_IDS, "bayes-portfolio"])
def test_same_seed_same_history_gives_same_suggestions(config: Any) -> None:
    space = Space.from_config(MIXED_SPACE)
    first = run(make_algorithm(config, space, seed=11), mixed_objective, 8)
    second = run(make_algorithm(config, space, seed=11), mixed_objective, 8)
    assert [o.params for o in first] == [o.params for o in second]


@pytest.mark.parametrize("config", ["random", {"grid": {"shuffle": True}}, "bayes"], ids=["random", "grid", "bayes"])
def test_different_seeds_explore_differently(config: Any) -> None:
    space = Space.from_config(BRANIN_SPACE)
    runs = [run(make_algorithm(config, space, seed=seed), lambda p: branin(**p), 5) for seed in (1, 2)]
    assert not hashes([o.params for o in runs[0]]) & hashes([o.params for o in runs[1]])


@pytest.mark.parametrize("config", ALGO_CONFIGS, ids=ALGO_IDS)
def test_a_collision_gives_a_new_point_when_asked_again(config: Any) -> None:
    """The worker's retry: the suggestion was registered by a racer, so it is now pending."""
    space = Space.from_config(BRANIN_SPACE)
    algo = make_algorithm(config, space, seed=5)
    completed = run(make_algorithm(config, space, seed=6), lambda p: branin(**p), 8)
    (first,) = algo.suggest(completed, [])
    (second,) = algo.suggest(completed, [first])
    assert params_hash(second) != params_hash(first)
    assert params_hash(second) not in hashes([o.params for o in completed])


@pytest.mark.parametrize("config", ["random", "grid", {"bayes": {"n_initial_points": 2}}], ids=["random", "grid", "bayes"])
def test_a_tiny_discrete_space_is_covered_once_then_exhausted(config: Any) -> None:
    space = Space.from_config({"opt": "choices(['a', 'b', True])", "k": "randint(0, 2)"})
    algo = make_algorithm(config, space, seed=0)
    completed: list[Observation] = []
    for _ in range(6):
        (params,) = algo.suggest(completed, [])
        completed.append(Observation(params, float(params["k"]) + (params["opt"] == "a")))
    assert len(hashes([o.params for o in completed])) == 6
    with pytest.raises(SpaceExhaustedError):
        algo.suggest(completed, [])
    with pytest.raises(SpaceExhaustedError):  # pending points count as seen too
        algo.suggest(completed[:4], [o.params for o in completed[4:]])
    assert algo.suggest(completed[:5], [], n=3) == [completed[5].params]  # up to n: what is left


@pytest.mark.parametrize("config", [
    {"one": "choices(['only'])", "x": "uniform(0, 1)"},
    {"one": "randint(3, 4)", "x": "uniform(0, 1)"},
    {"a": "choices(['x', 'y', 'z'])", "b": "choices([1, 2.5, False])"},  # GP with skopt's Hamming kernel
], ids=["single-choice", "single-int", "all-categorical"])
def test_bayes_handles_degenerate_and_all_categorical_spaces(config: dict[str, str]) -> None:
    space = Space.from_config(config)
    algo = make_algorithm({"bayes": {"n_initial_points": 3}}, space, seed=1)
    completed = run(algo, lambda p: float(len(str(p))), 8)
    for observation in completed:
        assert_plain_point(space, observation.params)
    assert len(hashes([o.params for o in completed])) == 8


def test_seedless_algorithms_still_work() -> None:
    space = Space.from_config(FIDELITY_BRANIN_SPACE)
    for name in ALGORITHMS:
        assert len(run(make_algorithm(name, space, seed=None), lambda p: branin(p["x"], p["y"]), 3)) == 3


# -- grid ----------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_grid_covers_every_point_exactly_once_then_is_exhausted(shuffle: bool) -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "c": "choices(['a', 'b'])", "k": "randint(0, 3)"})
    algo = make_algorithm({"grid": {"n_values": 4, "shuffle": shuffle}}, space, seed=2)
    assert algo.max_suggestions() == 4 * 2 * 3
    expected = {
        params_hash({"x": x, "c": c, "k": k})
        for x in np.linspace(0, 1, 4).tolist() for c in ("a", "b") for k in range(3)
    }
    completed: list[Observation] = []
    pending: list[dict[str, Any]] = []
    while True:
        try:
            batch = algo.suggest(completed, pending, n=5)
        except SpaceExhaustedError as err:
            assert "exhausted" in str(err)
            break
        assert not hashes(batch) & hashes([*(o.params for o in completed), *pending])
        completed += [Observation(p, 0.0) for p in pending]
        pending = batch
    seen = [*(o.params for o in completed), *pending]
    assert len(seen) == 24 and hashes(seen) == expected


def test_grid_order_is_lexicographic_unless_shuffled() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "y": "randint(0, 2)"})
    plain = make_algorithm({"grid": {"n_values": 3}}, space).suggest([], [], n=6)
    assert plain == [{"x": x, "y": y} for x in (0.0, 0.5, 1.0) for y in (0, 1)]
    shuffled = make_algorithm({"grid": {"n_values": 3, "shuffle": True}}, space, seed=4).suggest([], [], n=6)
    assert shuffled != plain and hashes(shuffled) == hashes(plain)


def test_grid_resolution_follows_the_budget() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "y": "loguniform(1e-3, 1)", "c": "choices([1, 2])"})
    assert choose_n_values(space, 50) == 5  # 5 * 5 * 2 = 50
    algo = make_algorithm({"grid": {"budget": 100}}, space)
    assert isinstance(algo, GridSearch) and algo.n_values == 7 and algo.max_suggestions() == 98
    assert make_algorithm("grid", space).max_suggestions() == 200  # 10 per continuous dimension
    assert make_algorithm("random", space).max_suggestions() is None


@pytest.mark.timeout(20)
def test_a_huge_grid_resolution_is_refused_or_capped_not_listed() -> None:
    """n_values or budget 10**9 over one dimension listed 10**9 values: creation never returned."""
    space = Space.from_config({"x": "uniform(0, 1)"})
    with pytest.raises(ConfigurationError, match="grid option n_values must be at most 100,000"):
        normalize_algorithm_config({"grid": {"n_values": 10**6}}, space)
    assert make_algorithm({"grid": {"budget": 10**12}}, space).max_suggestions() == 100_000


def test_grid_over_a_range_of_few_floats_suggests_each_once() -> None:
    """uniform(1.0, 1.0000000000000004) holds 3 floats: the grid's 10 values repeated them, and the worker stopped
    with 'suggested 20 points in a row that the experiment already holds'."""
    exp = orchard.build_experiment("narrow", space={"x": "uniform(1.0, 1.0000000000000004)"}, algorithm="grid",
                                   max_trials=8, storage="memory://")
    exp.workon(lambda x: x, progress=False)
    assert sorted(t.params["x"] for t in exp.fetch_trials()) == [1.0, 1.0000000000000002, 1.0000000000000004]


def test_grid_over_a_huge_integer_range_stays_inside_it() -> None:
    """Spread through floats, randint(0, 2**62)'s last grid value was 2**62, outside it: the worker stopped."""
    space = Space.from_config({"k": "randint(0, 4611686018427387904)", "j": "randint(9007199254740993, 9007199254741003)"})
    algorithm = make_algorithm({"grid": {"n_values": 3}}, space)
    points = algorithm.suggest([], [], n=9)
    assert {p["k"] for p in points} == {0, 2**61, 2**62 - 1} and {p["j"] for p in points} == {2**53 + 1, 2**53 + 5, 2**53 + 10}
    for point in points:
        space.validate(point)


def test_grid_skips_seen_points_given_as_equal_numbers_of_another_type() -> None:
    space = Space.from_config({"x": "uniform(0, 2)", "k": "uniform(0, 1, discrete=True)"})
    algo = make_algorithm({"grid": {"n_values": 3}}, space)
    seen = [Observation({"x": 0, "k": 0}, 1.0), Observation({"x": 0.0, "k": 1.0}, 1.0)]
    assert algo.suggest(seen, [], n=1) == [{"x": 1.0, "k": 0}]


# -- bayes ---------------------------------------------------------------------------


def test_bayes_does_not_suggest_pending_points_and_moves_away_from_them() -> None:
    space = Space.from_config(BRANIN_SPACE)
    algo = make_algorithm({"bayes": {"n_initial_points": 8}}, space, seed=0)
    completed = run(algo, lambda p: branin(**p), 12)
    (favourite,) = algo.suggest(completed, [])
    (next_best,) = algo.suggest(completed, [favourite])
    distance = math.hypot((favourite["x"] - next_best["x"]) / 15, (favourite["y"] - next_best["y"]) / 15)
    assert distance > 0.01, "the lie at the pending point should push the acquisition elsewhere"


def test_bayes_four_simulated_workers_spread_out() -> None:
    space = Space.from_config(BRANIN_SPACE)
    workers = [make_algorithm({"bayes": {"n_initial_points": 8}}, space, seed=k) for k in range(4)]
    completed: list[Observation] = []
    for _ in range(5):
        batch: list[dict[str, Any]] = []
        for worker in workers:
            batch += worker.suggest(completed, batch)
        assert len(batch) == 4
        assert not hashes(batch) & hashes([o.params for o in completed])
        unit = [((p["x"] + 5) / 15, p["y"] / 15) for p in batch]
        closest = min(math.dist(a, b) for a, b in itertools.combinations(unit, 2))
        assert closest > 0.01, f"parallel suggestions piled up: {batch}"
        completed += [Observation(p, branin(**p)) for p in batch]
    assert len(hashes([o.params for o in completed])) == 20


def test_bayes_four_simulated_workers_still_search() -> None:
    """Batches of 4, each suggestion made with the batch's earlier ones pending: 40 trials converge."""
    space = Space.from_config(BRANIN_SPACE)
    workers = [make_algorithm({"bayes": {"n_initial_points": 8}}, space, seed=k) for k in range(4)]
    completed: list[Observation] = []
    while len(completed) < 40:
        batch: list[dict[str, Any]] = []
        for worker in workers:
            batch += worker.suggest(completed, batch)
        completed += [Observation(p, branin(**p)) for p in batch]
    near = sum(o.objective < 3.0 for o in completed)  # random search: 4.9 % of the box, 2 of 40 expected
    assert near >= 10 and min(o.objective for o in completed) - BRANIN_MIN < 0.05, near


def test_bayes_beats_random_on_branin() -> None:
    space = Space.from_config(BRANIN_SPACE)

    def regret(config: Any, seed: int) -> float:
        completed = run(make_algorithm(config, space, seed=seed), lambda p: branin(**p), 30)
        return min(o.objective for o in completed) - BRANIN_MIN

    seeds = range(5)
    bayes = [regret({"bayes": {"n_initial_points": 10}}, s) for s in seeds]
    rand = [regret("random", s) for s in seeds]
    assert np.median(bayes) < 0.05
    assert np.mean(np.log10(bayes)) < np.mean(np.log10(rand)) - 1  # ten times closer, on average


def test_bayes_refines_an_optimum_closer_than_an_absolute_margin() -> None:
    """With skopt's ``xi=0.01`` (a margin in the objective's units) EI stopped refining near the
    minimum; the default asks for no margin (median best of 3 seeded runs: ~1e-5 against ~1.5e-4)."""
    space = Space.from_config({"x": "uniform(0, 1)", "y": "uniform(0, 1)"})

    def bowl(p: Mapping[str, Any]) -> float:
        return float((p["x"] - 0.3) ** 2 + (p["y"] - 0.6) ** 2)

    best = [min(o.objective for o in run(make_algorithm("bayes", space, seed=s), bowl, 20)) for s in range(3)]
    assert np.median(best) < 5e-5


def test_bayes_random_phase_counts_pending_points() -> None:
    space = Space.from_config(BRANIN_SPACE)
    algo = make_algorithm({"bayes": {"n_initial_points": 5}}, space, seed=0)
    random = make_algorithm("random", space, seed=0)
    completed = run(random, lambda p: branin(**p), 2)
    pending = [random.suggest(completed, [])[0]]
    # 2 completed + 1 pending < 5: the random phase uses the same seeded stream as ``random``
    assert algo.suggest(completed, pending) == random.suggest(completed, pending)


def test_bayes_caps_the_points_its_surrogate_sees() -> None:
    from orchard.algorithms._bayes import select_for_fit

    rng = np.random.default_rng(0)
    completed = [Observation({"x": float(i)}, float((i * 37) % 101)) for i in range(101)]
    chosen = select_for_fit(completed, 20, rng)
    assert len(chosen) == 20 and len({o.params["x"] for o in chosen}) == 20
    best = sorted(o.objective for o in completed)[:10]
    assert sorted(o.objective for o in chosen)[:10] == best
    assert select_for_fit(completed[:20], 20, rng) == completed[:20]
    # and a capped suggestion is still a valid unseen point
    space = Space.from_config({"x": "uniform(0, 200)"})
    (params,) = make_algorithm({"bayes": {"max_gp_points": 20}}, space, seed=1).suggest(completed, [])
    assert_plain_point(space, params) and params_hash(params) not in hashes([o.params for o in completed])


def test_fast_gp_predicts_like_skopt() -> None:
    from orchard.algorithms._gp import make_gp

    dims = Space.from_config({"a": "uniform(0, 1)", "b": "uniform(0, 1)", "c": "uniform(0, 1)"}).to_skopt()
    rng = np.random.default_rng(0)
    x, query = rng.uniform(size=(40, 3)), rng.uniform(size=(500, 3))
    y = np.sin(5 * x).sum(axis=1)
    fast = make_gp(dims, random_state=0, n_restarts_optimizer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast.fit(x, y)
    reference = skopt_twin(fast)
    for name in ("kernel_", "X_train_", "alpha_", "K_inv_", "y_train_std_", "y_train_mean_", "L_", "noise_"):
        setattr(reference, name, getattr(fast, name))
    mean, std = fast.predict(query, return_std=True)
    ref_mean, ref_std = reference.predict(query, return_std=True)
    assert mean.shape == ref_mean.shape and std.shape == ref_std.shape
    np.testing.assert_allclose(fast.predict(query), reference.predict(query), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(std, ref_std, rtol=1e-6, atol=1e-8)
    assert std.max() > 0.01  # not a degenerate comparison


@pytest.mark.parametrize("dims", [1, 3])
def test_fast_gp_gradients_match_skopt(dims: int) -> None:
    from skopt.acquisition import gaussian_acquisition_1D

    from orchard.algorithms._gp import make_gp

    space = Space.from_config({f"x{i}": "uniform(0, 1)" for i in range(dims)})
    rng = np.random.default_rng(dims)
    x = rng.uniform(size=(30, dims))
    y = np.cos(4 * x).sum(axis=1) + 0.01 * rng.normal(size=30)
    fast = make_gp(space.to_skopt(), random_state=0, n_restarts_optimizer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast.fit(x, y)
    reference = skopt_twin(fast)
    reference.__dict__.update({k: v for k, v in fast.__dict__.items() if k.endswith("_")})
    for point in rng.uniform(size=(5, dims)):
        ours = fast.predict(point[None, :], return_std=True, return_mean_grad=True, return_std_grad=True)
        theirs = reference.predict(point[None, :], return_std=True, return_mean_grad=True, return_std_grad=True)
        for a, b in zip(ours, theirs):
            assert np.shape(a) == np.shape(b)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
        for acq in ("EI", "PI", "LCB"):
            a_val, a_grad = gaussian_acquisition_1D(point, fast, y.min(), acq, {"xi": 0.01, "kappa": 1.96})
            b_val, b_grad = gaussian_acquisition_1D(point, reference, y.min(), acq, {"xi": 0.01, "kappa": 1.96})
            assert np.shape(a_grad) == np.shape(b_grad)
            np.testing.assert_allclose(np.hstack([a_val, np.ravel(a_grad)]), np.hstack([b_val, np.ravel(b_grad)]),
                                       rtol=1e-6, atol=1e-7)


def test_fast_gp_log_marginal_likelihood_matches_scikit_learn() -> None:
    from sklearn.gaussian_process import GaussianProcessRegressor as SkGP

    from orchard.algorithms._gp import make_gp

    space = Space.from_config({f"x{i}": "uniform(0, 1)" for i in range(3)})
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(25, 3))
    y = np.sin(3 * x).sum(axis=1)
    fast = make_gp(space.to_skopt(), random_state=0, n_restarts_optimizer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast.fit(x, y)
        fitted = fast.kernel_.theta  # log(0): the fitted kernel_ has its noise zeroed
    fitted[-1] = -4.0
    for theta in (fitted, rng.uniform(-2, 2, size=len(fitted))):
        ours = fast.log_marginal_likelihood(theta, eval_gradient=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cloning kernel_ reads log(0) of its zeroed noise
            theirs = SkGP.log_marginal_likelihood(fast, theta, eval_gradient=True)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-8)
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-8)


def test_fast_gp_direct_fit_matches_scikit_learns_fit() -> None:
    from orchard.algorithms._gp import make_gp

    dims = Space.from_config({f"x{i}": "uniform(0, 1)" for i in range(3)}).to_skopt()
    rng = np.random.default_rng(11)
    x, query = rng.uniform(size=(50, 3)), rng.uniform(size=(200, 3))
    y = np.sin(3 * x).sum(axis=1) + 0.05 * rng.normal(size=50)
    fits = []
    for tolerance in (None, 1e-12):  # scikit-learn's fit, then the direct one run to convergence
        model = make_gp(dims, random_state=2, n_restarts_optimizer=0, hyperparameter_points=30,
                        fit_tolerance=tolerance)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(model.fit(x, y))
    sklearn_fit, direct = fits
    np.testing.assert_allclose(direct.kernel_.k1.theta, sklearn_fit.kernel_.k1.theta, rtol=1e-3, atol=1e-3)
    assert direct.noise_ == pytest.approx(sklearn_fit.noise_, rel=1e-2, abs=1e-6)
    assert direct.X_train_.shape == (50, 3)  # conditioned on every point
    for a, b in zip(direct.predict(query, return_std=True), sklearn_fit.predict(query, return_std=True)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_seen_overlay_matches_history_and_never_mutates_the_base() -> None:
    from orchard.algorithms import make_algorithm
    from orchard.algorithms.base import Observation, SeenPoints
    from orchard.space import Space

    space = Space.from_config({"k": "randint(0, 6)"})
    completed = [Observation({"k": k}, float(k)) for k in range(4)]
    base = SeenPoints(o.params for o in completed)
    overlay = SeenPoints([{"k": 4}], base=base)
    assert {"k": 4} in overlay and {"k": 0} in overlay and {"k": 4} not in base
    assert len(overlay) == 5 and len(base) == 4
    for name in ("random", "bayes"):
        with_seen = make_algorithm(name, space, seed=3).suggest(completed, [{"k": 4}], n=1, seen=base)
        without = make_algorithm(name, space, seed=3).suggest(completed, [{"k": 4}], n=1)
        assert with_seen == without == [{"k": 5}]
    assert len(base) == 4


def test_the_workers_seen_set_knows_stored_and_pending_trials_by_id_and_suggests_as_a_plain_history() -> None:
    """The worker's view keys points by trial id and hands its pending points over unhashed: same answers."""
    import uuid

    from orchard.algorithms import make_algorithm
    from orchard.algorithms.base import Pending, SeenPoints
    from orchard.history import History
    from orchard.space import Space
    from orchard.storages import get_storage

    storage = get_storage(f"memory://{uuid.uuid4().hex}")
    exp = storage.create_experiment("seen", {})
    done = storage.register_trial(exp, {"k": 0}, worker="w", budget=None)
    storage.complete_trial(done.id, "w", 1.0, {})
    storage.register_trial(exp, {"k": 1.0}, worker="v", budget=None)  # pending; 1.0 is the point 1
    history = History(storage, exp)
    history.refresh()
    pending = history.pending([{"k": 2}])  # a collided suggestion: not yet in the history
    assert isinstance(pending, Pending) and pending.known == 1 and pending == [{"k": 1}, {"k": 2}]
    assert {"k": 0} in history.seen and {"k": 1} in history.seen and {"k": 2} not in history.seen
    overlay = make_algorithm("random", Space.from_config({"k": "randint(0, 4)"})).seen_points([], pending, history.seen)
    assert all({"k": k} in overlay for k in range(3)) and {"k": 3} not in overlay and len(overlay) == 3
    plain = SeenPoints([{"k": 0}, *pending])
    space = Space.from_config({"k": "randint(0, 5)"})
    for name in ("random", "bayes"):
        via_view = make_algorithm(name, space, seed=3).suggest(history.observations, pending, n=2, seen=history.seen)
        from_lists = make_algorithm(name, space, seed=3).suggest(history.observations, list(pending), n=2, seen=plain)
        assert via_view == from_lists and not any(point in plain for point in via_view)


def test_fast_gp_learns_hyperparameters_on_a_subsample_and_conditions_on_all_points() -> None:
    from orchard.algorithms._gp import best_and_random, make_gp

    dims = Space.from_config({"a": "uniform(0, 1)", "b": "uniform(0, 1)"}).to_skopt()
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(60, 2))
    y = np.sin(4 * x[:, 0]) + x[:, 1] ** 2
    subsampled = make_gp(dims, random_state=5, n_restarts_optimizer=0, hyperparameter_points=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subsampled.fit(x, y)
        subset = best_and_random(y, 20, np.random.default_rng(5))
        on_subset = make_gp(dims, random_state=5, n_restarts_optimizer=0).fit(x[subset], y[subset])
    assert len(subset) == 20 and set(np.argsort(y)[:10]) <= set(subset)
    assert subsampled.X_train_.shape == (60, 2)  # the posterior uses every point
    np.testing.assert_allclose(subsampled.kernel_.k1.k2.length_scale, on_subset.kernel_.k1.k2.length_scale)
    assert subsampled.noise_ == pytest.approx(on_subset.noise_)
    mean = subsampled.predict(x)
    np.testing.assert_allclose(mean, y, atol=0.05)  # interpolates all 60 points, not only the 20
    assert subsampled.get_params()["hyperparameter_points"] == 20


@pytest.mark.parametrize("algorithm", ["random", "bayes", "asha", "nsga2", "optuna"])
def test_stored_objectives_that_are_no_finite_number_are_not_told(algorithm: str) -> None:
    """Completed trials another program stored with a 5,000-digit int, NaN, inf or a text as objective:
    every worker's suggestion failed (OverflowError, TypeError comparing str and float)."""
    import dataclasses

    space = {"x": "uniform(0, 1)", "e": "fidelity(1, 9)"}
    exp = orchard.build_experiment("h", space=space, storage="memory://", algorithm=algorithm, max_trials=6, seed=1)
    good = exp.insert({"x": 0.5, "e": 9}, objective=1.0)
    hostile = [10**5000, math.nan, math.inf, -math.inf, "x", True, [1]]
    exp.storage.restore_trials(exp.id, [dataclasses.replace(good, params={"x": (i + 1) / 100, "e": 9}, objective=value)
                                        for i, value in enumerate(hostile)])
    stats = exp.workon(lambda x, e: x, executor="single")
    assert stats["counts"]["completed"] == 6 + 1 + len(hostile)  # the inserted and restored ones: apart


@pytest.mark.parametrize("algorithm", ["bayes", "asha", "optuna", {"optuna": {"sampler": "CmaEsSampler"}}])
def test_stored_params_outside_the_space_are_set_aside_and_named(algorithm: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Trials another program stored with a text, NaN, a missing or unknown dimension, a value out of its prior:
    every worker's suggestion failed (KeyError, "'abc' is not a valid type")."""
    import dataclasses

    space = {"x": "uniform(0, 1)", "k": "randint(0, 5)", "e": "fidelity(1, 9)"}
    exp = orchard.build_experiment("h", space=space, storage="memory://", algorithm=algorithm, max_trials=10, seed=1)
    good = exp.insert({"x": 0.5, "k": 1, "e": 9}, objective=1.0)
    hostile = [{"x": "abc", "k": 1, "e": 9}, {"x": math.nan, "k": 1, "e": 9}, {"k": 1, "e": 9},
               {"x": 0.3, "k": 10**30, "e": 9}, {"x": 0.3, "k": 1, "e": 9, "extra": 1}, {"x": 7.0, "k": 1, "e": 9}]
    exp.storage.restore_trials(exp.id, [dataclasses.replace(good, params=params, objective=0.5 + i / 100)
                                        for i, params in enumerate(hostile)])
    stats = exp.workon(lambda x, k, e: x, executor="single")
    assert stats["counts"]["completed"] == 10 + 1 + len(hostile)
    assert "6 trial(s) of the experiment hold params that are not a point of its space" in caplog.text


@pytest.mark.parametrize("estimator", ["RF", "ET"])
def test_bayes_trees_fit_a_dimension_past_float32(estimator: str) -> None:
    """RF and ET fit on float32: normal(1e308, 1e300) failed every worker once the initial points were done."""
    exp = orchard.build_experiment("t", space={"x": "normal(1e308, 1e300)", "y": "uniform(0, 1)"}, storage="memory://",
                                   algorithm={"bayes": {"base_estimator": estimator, "n_initial_points": 2}},
                                   max_trials=5, seed=1)
    assert exp.workon(lambda x, y: y, executor="single")["counts"]["completed"] == 5


@pytest.mark.parametrize("estimator", ["RF", "ET"])
def test_bayes_trees_search_an_integer_range_near_2_to_the_63(tmp_path: Any, estimator: str) -> None:
    """randint(2**63 - 1000, 2**63) beside a float: skopt's pick, rounded through a float, fell outside
    the bounds and its own check raised, stopping every worker once the initial points were done."""
    top = 2**63
    exp = orchard.build_experiment(
        "big", space={"x": f"randint({top - 1000}, {top})", "y": "uniform(0, 1)"},
        storage=str(tmp_path / "o.pkl"), algorithm={"bayes": {"base_estimator": estimator, "n_initial_points": 3}}, max_trials=6, seed=0)
    assert exp.workon(lambda x, y: (x - top + 1000) / 1000 + y, executor="single")["counts"]["completed"] == 6


def test_bayes_lbfgs_over_a_space_of_choices_only_samples_its_acquisition(tmp_path: Any) -> None:
    """A GP over categories only has no gradient: skopt refused acq_optimizer='lbfgs' once the initial
    points were done ("should run with acq_optimizer='sampling'"), stopping every worker."""
    exp = orchard.build_experiment(
        "cats", space={"c": "choices(['a', 'b', 'c', 'd'])", "d": "choices([1, 2.5, 'x'])"},
        storage=str(tmp_path / "o.pkl"), max_trials=6, seed=0,
        algorithm={"bayes": {"acq_optimizer": "lbfgs", "n_initial_points": 2}})
    assert exp.workon(lambda c, d: len(c + str(d)), executor="single")["counts"]["completed"] == 6


@pytest.mark.parametrize("algorithm, objectives", [
    ({"bayes": {"n_initial_points": 2}}, 1), ({"bayes": {"n_initial_points": 2}}, 2),
    ({"nsga2": {"population_size": 4}}, 2), ({"optuna": {"sampler": "TPESampler", "n_startup_trials": 2}}, 1),
    ({"optuna": {"sampler": "CmaEsSampler", "n_startup_trials": 2}}, 1),
])
def test_results_below_the_top_fidelity_are_not_told_as_results_at_it(algorithm: Any, objectives: int) -> None:
    """bayes warm-started from a hyperband experiment was told its 1-epoch trials as results at 9 epochs
    (every fidelity value reads as the top one to it) and fitted their 1-epoch losses as full trainings'."""
    space = Space.from_config({"x": "uniform(0, 1)", "y": "uniform(0, 1)", "e": "fidelity(1, 9)"})

    def seen(x: float, y: float, e: int, end: float) -> Observation:
        values = (x, 1 - x + y) if objectives > 1 else None
        return Observation({"x": x, "y": y, "e": e}, x + y, end_time=end, values=values)

    full = [seen((7 * i % 10) / 10, (3 * i % 10) / 10, 9, 100.0 + i) for i in range(8)]
    early = [seen(0.05 * i, 0.9, 1, float(i)) for i in range(1, 5)]  # a source's 1-epoch runs, oddly good
    early = [dataclasses.replace(o, objective=-100.0, values=(-100.0, -100.0) if objectives > 1 else None)
             for o in early]

    def suggested(completed: list[Observation]) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make_algorithm(algorithm, space, seed=3).suggest(completed, [], n=1)[0]

    assert suggested([*early, *full]) == suggested(full)
