"""The public algorithm contract: every registered algorithm passes the conformance kit; plugins by name."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest

import orchard
from orchard.algorithms import ALGORITHMS, algorithm_class, algorithm_names, make_algorithm
from orchard.errors import ConfigurationError
from orchard.space import Space
from orchard.testing.algorithms import DEFAULT_SPACE, check_algorithm, check_algorithm_racing
from tests.test_cli import TRAIN

FIDELITY_SPACE = {**DEFAULT_SPACE, "epochs": "fidelity(1, 27, base=3)"}
MULTI_FIDELITY = {"asha", "hyperband"}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_built_in_algorithm_passes_the_conformance_kit(name: str) -> None:
    space = FIDELITY_SPACE if name in MULTI_FIDELITY else DEFAULT_SPACE

    def factory(space: Space, seed: int | None) -> Any:
        return make_algorithm(name, space, seed)

    check_algorithm(factory, space=space)


NUMERIC_SPACE = {"lr": "loguniform(1e-4, 1.0)", "x": "uniform(-5, 10)", "layers": "randint(1, 8)",
                 "epochs": "fidelity(1, 27)"}
#: Every Optuna sampler the adapter runs, with the objectives of the history it is checked on.
OPTUNA_SAMPLERS = [
    pytest.param({"sampler": "TPESampler", "multivariate": True}, 1, id="TPE"),
    pytest.param({"sampler": "GPSampler"}, 1, id="GP"),
    pytest.param({"sampler": "CmaEsSampler"}, 1, id="CMA-ES"),
    pytest.param({"sampler": "QMCSampler"}, 1, id="QMC"),
    pytest.param({"sampler": "NSGAIISampler", "population_size": 4}, 2, id="NSGA-II-two-objectives"),
]


def _requirements(sampler: dict[str, Any]) -> None:
    pytest.importorskip("optuna")
    if sampler["sampler"] == "GPSampler":
        pytest.importorskip("torch", reason="Optuna's GPSampler needs PyTorch")


@pytest.mark.parametrize(("sampler", "n_objectives"), OPTUNA_SAMPLERS)
def test_optuna_samplers_pass_the_conformance_kit(sampler: dict[str, Any], n_objectives: int) -> None:
    _requirements(sampler)
    space = DEFAULT_SPACE if sampler["sampler"] in ("TPESampler", "NSGAIISampler") else NUMERIC_SPACE
    check_algorithm(lambda space, seed: make_algorithm({"optuna": sampler}, space, seed), space=space,
                    n_objectives=n_objectives)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_algorithm_keeps_the_budget_exact_with_four_racing_processes() -> None:
    pytest.importorskip("optuna")
    optuna = [{"optuna": sampler} for (sampler, _), _marks, _id in OPTUNA_SAMPLERS
              if sampler["sampler"] != "GPSampler"]
    plain = [name for name in ALGORITHMS if name not in MULTI_FIDELITY]
    check_algorithm_racing([*plain, *optuna], max_trials=12)
    check_algorithm_racing(sorted(MULTI_FIDELITY), space=FIDELITY_SPACE, max_trials=12)


@pytest.mark.parametrize("sampler", [{"sampler": "QMCSampler"},
                                     {"sampler": "CmaEsSampler", "consider_pruned_trials": True}])
def test_optuna_runs_without_a_warning_about_its_interface(sampler: dict[str, Any]) -> None:
    """Every worker printed Optuna's "QMCSampler is experimental ... The interface can change": the interface
    is the adapter's, the user writes Orchard's configuration, and the line came back at each rebuilt study.
    "Argument ``consider_pruned_trials`` is an experimental feature" was still printed twice per worker."""
    pytest.importorskip("optuna")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = orchard.build_experiment("q", space={"x": "uniform(0, 1)"}, algorithm={"optuna": sampler},
                                       storage="memory://", max_trials=4, seed=1)
        assert exp.workon(lambda x: x, executor="single", progress=False)["counts"]["completed"] == 4
    assert [str(w.message) for w in caught] == []


def test_a_deprecated_optuna_option_is_warned_of_once_not_at_every_suggestion(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TPE's "`prior_weight` has been deprecated in v4.9.0" came back at every suggestion (a worker makes a
    sampler for each): 2,000 lines for a 1,000-trial run, where Optuna, building its sampler once, says it
    once."""
    pytest.importorskip("optuna")
    from orchard.algorithms import _optuna_cmaes

    monkeypatch.setattr(_optuna_cmaes, "_SHOWN", set(), raising=False)  # as in a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = orchard.build_experiment("d", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=6,
                                       algorithm={"optuna": {"prior_weight": 2.0}}, seed=1)
        assert exp.workon(lambda x: x, executor="single", progress=False)["counts"]["completed"] == 6
    deprecated = [w for w in caught if "prior_weight" in str(w.message)]
    assert len(deprecated) == 1 and deprecated[0].category is FutureWarning


def test_optuna_refuses_what_it_cannot_run() -> None:
    pytest.importorskip("optuna")
    space = Space.from_config(DEFAULT_SPACE)
    with pytest.raises(ConfigurationError, match="no option 'multivariat'"):
        make_algorithm({"optuna": {"multivariat": True}}, space)
    with pytest.raises(ConfigurationError, match=r"takes its seed from the experiment.*give seed=42 to build_"):
        make_algorithm({"optuna": {"sampler": "TPESampler", "seed": 42}}, space)  # said "takes no option 'seed'"
    with pytest.raises(ConfigurationError, match="'CmaEsSampler' cannot take option 'with_margin'"):
        make_algorithm({"optuna": {"sampler": "CmaEsSampler", "with_margin": True}}, space)
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="'GPSampler' needs the torch package; install it with"):
            make_algorithm({"optuna": {"sampler": "GPSampler"}}, space)
    with pytest.raises(ConfigurationError, match="no sampler 'Tpe'"):
        make_algorithm({"optuna": {"sampler": "Tpe"}}, space)
    huge = Space.from_config({"seed": "randint(0, 4611686018427387904)"})  # Optuna drew 2**62, then refused it
    with pytest.raises(ConfigurationError, match=r"cannot sample dimension 'seed' .* exact only up to 2\*\*53"):
        make_algorithm("optuna", huge)


def test_optuna_cmaes_with_several_objectives_is_refused_when_the_experiment_is_built(tmp_path: Path) -> None:
    """It was stored, and every worker failed once its first trial had completed: an experiment no joiner
    could run nor change (CMA-ES optimizes one objective)."""
    pytest.importorskip("optuna")
    store = str(tmp_path / "o.pkl")
    cma = {"optuna": {"sampler": "CmaEsSampler"}}
    with pytest.raises(ConfigurationError, match="'CmaEsSampler' optimizes one objective; this experiment has 2"):
        orchard.build_experiment("cma", space=DEFAULT_SPACE, algorithm=cma,
                                 objectives={"error": "min", "latency": "min"}, storage=store)
    assert orchard.storages.get_storage(store).get_experiment("cma") is None


@pytest.mark.parametrize("prior", ["normal(1e308, 1e300)", "uniform(1e307, 1.7e308)", "uniform(-1.7e308, -9e307)"])
def test_optuna_tpe_refuses_bounds_whose_sum_overflows_when_the_experiment_is_built(prior: str) -> None:
    """TPE centres its prior kernel at 0.5 * (low + high): past a float's range that is inf, and every
    worker failed mid-run (``nan is invalid value``) after its startup trials. Spaces it can run still run."""
    pytest.importorskip("optuna")
    with pytest.raises(ConfigurationError, match=r"'TPESampler' cannot sample dimension 'x' \(.*\): .* overflows"):
        orchard.build_experiment("q", space={"x": prior}, algorithm="optuna", storage="memory://")
    exp = orchard.build_experiment("r", space={"x": "uniform(-1e300, 1e300)"}, algorithm="optuna",
                                   storage="memory://", max_trials=12, seed=1)
    assert exp.workon(lambda x: 0.0, executor="single")["counts"]["completed"] == 12
    random = orchard.build_experiment("s", space={"x": prior}, algorithm={"optuna": {"sampler": "RandomSampler"}},
                                      storage="memory://", max_trials=3, seed=1)
    assert random.workon(lambda x: 0.0, executor="single")["counts"]["completed"] == 3


def test_optuna_gp_refuses_an_integer_dimension_too_wide_to_list_when_the_experiment_is_built() -> None:
    """GPSampler lists every value of an integer dimension per suggestion: MemoryError in every worker."""
    pytest.importorskip("optuna")
    pytest.importorskip("torch")  # without it, GPSampler is refused first for that
    gp = {"optuna": {"sampler": "GPSampler"}}
    with pytest.raises(ConfigurationError, match=r"'GPSampler' cannot sample dimension 'k' \(.*lists every value"):
        orchard.build_experiment("q", space={"k": "uniform(-9e15, 9e15, discrete=True)"}, algorithm=gp,
                                 storage="memory://")
    orchard.build_experiment("r", space={"k": "randint(0, 10000000)"}, algorithm=gp, storage="memory://")


@pytest.mark.parametrize(("sampler", "words"), [
    ({"sampler": "QMCSampler", "qmc_type": "nope"}, "qmc_type='nope'"),
    ({"sampler": "NSGAIISampler", "population_size": 1}, "population_size"),
    ({"sampler": "TPESampler", "n_ei_candidates": 0}, "size of `samples` must be positive"),  # past its startup
])
def test_optuna_options_its_sampler_refuses_are_refused_with_the_experiment(sampler: dict[str, Any],
                                                                          words: str) -> None:
    """They were stored, and every worker's first suggestion failed: an experiment nobody could run or change."""
    pytest.importorskip("optuna")
    with pytest.raises(ConfigurationError, match=f"'{sampler['sampler']}' refused its options .*{words}"):
        orchard.build_experiment("q", space=DEFAULT_SPACE, algorithm={"optuna": sampler}, storage="memory://")


@pytest.mark.parametrize(("sampler", "words"), [
    ({"sampler": "NSGAIISampler", "population_size": 20.0},
     "option 'population_size' must be an integer, got 20.0"),
    ({"sampler": "NSGAIISampler", "elite_population_selection_strategy": "best"},
     "option 'elite_population_selection_strategy' takes a Python object"),
    ({"sampler": "QMCSampler", "independent_sampler": "RandomSampler"},
     "option 'independent_sampler' takes a Python object"),
    ({"sampler": "TPESampler", "multivariate": "false"}, "option 'multivariate' must be true or false, got 'false'"),
    ({"sampler": "CmaEsSampler", "consider_pruned_trials": 0}, "option 'consider_pruned_trials' must be true or false"),
])
def test_optuna_options_its_sampler_would_fail_on_later_are_refused_with_the_experiment(
        sampler: dict[str, Any], words: str) -> None:
    """Optuna's constructors take them; the sampler failed on them once a generation was complete (NSGA-II)
    or at the first suggestion (QMC), on every worker, with the experiment stored. A string or number is
    never the Python object (a sampler, a callable) such an option takes. A switch given as "false" (or 0)
    was taken as true, silently."""
    pytest.importorskip("optuna")
    with pytest.raises(ConfigurationError, match=f"'{sampler['sampler']}' {words}"):
        orchard.build_experiment("q", space=DEFAULT_SPACE, algorithm={"optuna": sampler}, storage="memory://")


@pytest.mark.parametrize("sampler", [{"sampler": "TPESampler", "n_startup_trials": 0},
                                     {"sampler": "NSGAIISampler", "population_size": 10}])
def test_optuna_samplers_are_told_which_trials_broke_the_constraints(sampler: dict[str, Any]) -> None:
    """The adapter told infeasible trials as feasible: TPE and NSGA-II went for the best objectives, all
    infeasible (0 of 20 feasible suggestions for NSGA-II)."""
    pytest.importorskip("optuna")
    import random

    from orchard.algorithms import Observation

    space = Space.from_config({"x": "uniform(0, 1)", "y": "uniform(0, 1)"})  # objective x, feasible from 0.5 on
    rng = random.Random(0)
    done = [Observation({"x": x, "y": rng.random()}, x, float(i), None, x >= 0.5, max(0.0, 0.5 - x))
            for i, x in enumerate(rng.random() for _ in range(60))]
    algorithm = make_algorithm({"optuna": sampler}, space, seed=0)
    drawn: list[float] = []
    for _ in range(20):
        drawn += [point["x"] for point in algorithm.suggest(done, [{"x": x, "y": 0.5} for x in drawn])]
    assert sorted(drawn)[10] > 0.45  # around the best feasible points


@pytest.mark.parametrize("sampler", ["TPESampler", "QMCSampler", "NSGAIISampler", "RandomSampler"])
def test_optuna_is_told_normal_values_past_four_sigma(sampler: str) -> None:
    """Optuna's distribution of ``normal(mu, s)`` ends at mu ± 4s, Orchard's prior does not: a trial at 7.5
    of ``normal(0, 1)`` (a warm start from a wider normal, an insert, a random draw) failed every worker's
    every suggestion with ``The value 7.5 of parameter 'x' isn't contained in the distribution``."""
    pytest.importorskip("optuna")
    from orchard.algorithms import Observation

    space = Space.from_config({"x": "normal(0, 1)", "y": "uniform(0, 1)"})
    xs = [7.5, -0.5, 0.25, 1.0, -12.0]
    done = [Observation({"x": x, "y": 0.5}, abs(x), float(i)) for i, x in enumerate(xs)]
    algorithm = make_algorithm({"optuna": {"sampler": sampler}}, space, seed=0)
    for pending in ([], [{"x": -9.0, "y": 0.25}]):
        (point,) = algorithm.suggest(done, pending)
        assert space.validate(point) == point


@pytest.mark.parametrize(("drawn", "words"), [
    (5.0, "suggested a point outside the space: dimension 'x': value 5.0 is outside uniform(0.0, 1.0)"),
    (math.nan, "failed to suggest dimension 'x' (uniform(0.0, 1.0)): ValueError('`nan` is invalid value.')"),
    (RuntimeError("sampler bug"),
     "failed to suggest dimension 'x' (uniform(0.0, 1.0)): RuntimeError('sampler bug')"),
], ids=["outside", "nan", "raises"])
def test_an_optuna_sampler_breaking_the_contract_is_named_with_the_dimension(
        monkeypatch: pytest.MonkeyPatch, drawn: Any, words: str) -> None:
    """A sampler's point outside the space stopped workon with a bare SpaceError ("dimension 'x': value
    5.0 is outside uniform(0.0, 1.0)"), naming neither the algorithm nor the sampler; its own failure, or
    Optuna's refusal of a NaN it drew, named neither the sampler nor the dimension."""
    optuna = pytest.importorskip("optuna")
    from orchard.errors import AlgorithmError

    def sample(self: Any, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        if isinstance(drawn, Exception):
            raise drawn
        return drawn

    monkeypatch.setattr(optuna.samplers.RandomSampler, "sample_independent", sample)
    exp = orchard.build_experiment("off", space={"x": "uniform(0, 1)"}, max_trials=2, storage="memory://",
                                   algorithm={"optuna": {"sampler": "RandomSampler"}})
    with pytest.raises(AlgorithmError) as caught:
        exp.workon(lambda x: x, progress=False)
    message = str(caught.value)
    assert "algorithm 'optuna' sampler 'RandomSampler' " + words in message and "\n" not in message, message
    assert exp.fetch_trials() == []


def test_an_optuna_suggestion_failing_midway_leaves_no_torn_study(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while the study was told the history (Optuna refusing a trial) left it told in part and
    marked read: the same worker's next suggestion, Experiment.suggest() called again, came from a study
    missing those trials, unlike a fresh worker's (the masterless rule)."""
    optuna = pytest.importorskip("optuna")
    from orchard.algorithms import Observation
    from orchard.errors import AlgorithmError

    space = Space.from_config({"x": "uniform(0, 1)", "y": "uniform(0, 1)"})
    done = [Observation({"x": i / 20, "y": i * 7 % 20 / 20}, abs(i / 20 - 0.3), float(i)) for i in range(20)]
    config = {"optuna": {"sampler": "TPESampler", "n_startup_trials": 5}}
    worker = make_algorithm(config, space, seed=0)
    real = optuna.trial.create_trial
    calls = iter(range(10**6))

    def refusing(**kwargs: Any) -> Any:
        if next(calls) == 10:
            raise ValueError("refused by Optuna")
        return real(**kwargs)

    monkeypatch.setattr(optuna.trial, "create_trial", refusing)
    with pytest.raises(AlgorithmError, match="refused by Optuna"):
        worker.suggest(done, [])
    assert worker.suggest(done, []) == make_algorithm(config, space, seed=0).suggest(done, [])


def test_the_kit_catches_an_algorithm_that_ignores_pending() -> None:
    random_search = algorithm_class("random")

    class Forgetful(random_search):  # type: ignore[misc, valid-type]
        def suggest(self, completed: Any, pending: Any, n: int = 1, seen: Any = None) -> Any:
            return super().suggest(completed, [], n, None)

    with pytest.raises(AssertionError, match="pending"):
        check_algorithm(lambda space, seed: Forgetful(space, seed))


def test_an_unknown_algorithm_lists_the_valid_names() -> None:
    with pytest.raises(ConfigurationError, match="valid algorithms: random, grid, bayes"):
        algorithm_class("no_such_search")
    assert algorithm_names()[: len(ALGORITHMS)] == list(ALGORITHMS)
    with pytest.raises(ConfigurationError, match=r"Optuna's sampler: \{'optuna': \{'sampler': 'CmaEsSampler'\}\}"):
        algorithm_class("cmaessampler")  # an Optuna user's name: said only 'unknown algorithm'



PLUGIN_PACKAGE = Path(__file__).parent / "data" / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin package, installed by pip into a private directory (put on PYTHONPATH to use it)."""
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(PLUGIN_PACKAGE)],
                   check=True, capture_output=True, timeout=300)
    return target


def test_a_third_party_algorithm_is_used_by_name_from_hunt(
    plugin_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), env.get("PYTHONPATH", "")])
    env["HOME"] = str(tmp_path)
    hunt = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "plugged", "--storage", "orchard.pkl",
            "--max-trials", "3", "--algorithm", "center_first",
            sys.executable, "train.py", "--x~uniform(0, 1)", "--y~uniform(0, 4)"]
    done = subprocess.run(hunt, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    import orchard
    from orchard import algorithms

    monkeypatch.syspath_prepend(str(plugin_path))  # this process reads the experiment, so it needs the plugin too
    algorithms._entry_points.cache_clear()
    trials = orchard.get_experiment("plugged", storage=str(tmp_path / "orchard.pkl")).fetch_trials()
    assert {"x": 0.5, "y": 2.0} in [t.params for t in trials]
    assert len(trials) == 3
    assert orchard.get_experiment("plugged", storage=str(tmp_path / "orchard.pkl")).algorithm == {"center_first": {}}

    other = [*hunt[:5], "other", *hunt[6:11], "nowhere_search", *hunt[12:]]
    unknown = subprocess.run(other, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120, check=False)
    assert unknown.returncode != 0
    assert "center_first" in unknown.stderr  # the valid names include the installed plugin
    algorithms._entry_points.cache_clear()


@pytest.mark.parametrize(("target", "words"), [
    ("test_algorithm_contract_plugins:failing_factory", "RuntimeError: no licence server"),
    ("test_algorithm_contract_plugins:exits", "SystemExit: usage: plugin.py"),
])
def test_a_plugin_that_fails_to_load_is_one_clear_line(
    target: str, words: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A factory entry point that raised surfaced its own exception; one that exits on import ended the process."""
    import types
    from importlib import metadata

    import orchard
    from orchard import algorithms

    def failing_factory() -> type:
        raise RuntimeError("no licence server")

    module = types.ModuleType("test_algorithm_contract_plugins")
    module.failing_factory = failing_factory  # type: ignore[attr-defined]
    module.exits = lambda: sys.exit("usage: plugin.py [-h]")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    point = metadata.EntryPoint("broken_search", target, algorithms.ENTRY_POINT_GROUP)
    monkeypatch.setattr(algorithms, "_entry_points", lambda: {"broken_search": point})
    with pytest.raises(ConfigurationError, match=f"algorithm 'broken_search' .* cannot be loaded: {words}"):
        orchard.build_experiment("plugged", space={"x": "uniform(0, 1)"}, algorithm="broken_search",
                                 storage="memory://")


def test_a_plugin_whose_option_check_fails_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin's own _check_values raising ValueError surfaced as is (a traceback under the CLI)."""
    import orchard
    from orchard import algorithms
    from orchard.algorithms import RandomSearch

    class Picky(RandomSearch):  # type: ignore[misc, valid-type]
        name = "picky"
        OPTIONS: ClassVar[dict[str, Any]] = {"depth": 3}

        @classmethod
        def _check_values(cls, options: dict[str, Any]) -> None:
            if int(options["depth"]) < 0:  # int("deep") raises ValueError
                raise ConfigurationError("depth must be >= 0")

    monkeypatch.setattr(algorithms, "algorithm_class", lambda name: Picky)
    with pytest.raises(ConfigurationError, match=r"algorithm 'picky' \(.*Picky\) could not check its options "
                                                 r"\{'depth': 'deep'\}: ValueError: invalid literal"):
        orchard.build_experiment("plugged", space={"x": "uniform(0, 1)"}, algorithm={"picky": {"depth": "deep"}},
                                 storage="memory://")


def test_a_plugin_that_sets_no_name_of_its_own_is_named_by_its_entry_point(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin extending RandomSearch was 'random' in its messages (one setting no name at all was '')."""
    import types
    from importlib import metadata

    from orchard import algorithms
    from orchard.algorithms import RandomSearch

    class Extended(RandomSearch):  # type: ignore[misc, valid-type]
        OPTIONS: ClassVar[dict[str, Any]] = {"depth": 3}

    module = types.ModuleType("test_algorithm_contract_named")
    module.Extended = Extended  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    point = metadata.EntryPoint("my_random", f"{module.__name__}:Extended", algorithms.ENTRY_POINT_GROUP)
    monkeypatch.setattr(algorithms, "_entry_points", lambda: {"my_random": point})
    typo = r"^algorithm 'my_random' has no option 'dept' \(did you mean depth\?\); valid options: depth$"
    with pytest.raises(ConfigurationError, match=typo):
        orchard.build_experiment("plugged", space={"x": "uniform(0, 1)"},
                                 algorithm={"my_random": {"dept": 2}}, storage="memory://")
    assert RandomSearch.name == "random"


def test_a_plugin_option_given_as_a_tuple_joins_when_given_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The storage keeps (1, 2) as [1, 2]: the same script run again was refused (stored [1, 2] != given)."""
    from orchard import algorithms
    from orchard.algorithms import RandomSearch

    class Levels(RandomSearch):  # type: ignore[misc, valid-type]
        name = "levels"
        OPTIONS: ClassVar[dict[str, Any]] = {"levels": None}

    monkeypatch.setattr(algorithms, "algorithm_class", lambda name: Levels)
    setting = {"levels": {"levels": (1, 2)}}
    store = str(tmp_path / "a.pkl")
    first = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm=setting, storage=store)
    again = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm=setting, storage=store)
    assert again.id == first.id and again.algorithm == {"levels": {"levels": [1, 2]}}


@pytest.mark.parametrize("backend", ["pickle", "mongodb"])
def test_a_plugin_option_set_to_nan_joins_when_given_again(
        backend: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    """nan != nan: every join of an experiment stored with a NaN option was refused, the very first
    build too ("option temperature: stored nan != given nan"). Another value is still refused."""
    from orchard import algorithms
    from orchard.algorithms import RandomSearch
    from orchard.errors import ExperimentConflictError
    from tests.conftest import backend_uri

    class Tempered(RandomSearch):  # type: ignore[misc, valid-type]
        name = "tempered"
        OPTIONS: ClassVar[dict[str, Any]] = {"temperature": 1.0, "schedule": None}

    monkeypatch.setattr(algorithms, "algorithm_class", lambda name: Tempered)
    store, nan = backend_uri(backend, request, tmp_path), float("nan")
    setting = {"tempered": {"temperature": nan, "schedule": {"steps": [1.0, nan]}}}
    first = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm=setting, storage=store)
    again = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm=setting, storage=store)
    assert again.id == first.id
    other = {"tempered": {"temperature": 1.0, "schedule": {"steps": [1.0, nan]}}}
    with pytest.raises(ExperimentConflictError, match="option temperature: stored nan != given 1.0"):
        orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm=other, storage=store)


def test_an_experiment_of_a_plugin_not_installed_here_is_read_but_not_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status, info, get_experiment and db load said "unusable stored configuration (unknown algorithm
    'center_first') ...; delete it with `orchard db rm`" wherever the plugin was not installed."""
    import types
    from importlib import metadata

    from orchard import algorithms
    from orchard.algorithms import RandomSearch
    from orchard.cli import main

    module = types.ModuleType("test_algorithm_contract_elsewhere")
    module.CenterFirst = type("CenterFirst", (RandomSearch,), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    point = metadata.EntryPoint("center_first", f"{module.__name__}:CenterFirst",
                                algorithms.ENTRY_POINT_GROUP)
    store = str(tmp_path / "a.pkl")
    with monkeypatch.context() as patched:  # installed where the workers ran
        patched.setattr(algorithms, "_entry_points", lambda: {"center_first": point})
        exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm="center_first",
                                       storage=store)
        exp.workon(lambda x: x, max_trials=2, progress=False)
    here = orchard.get_experiment("e", storage=store)
    assert here.algorithm == {"center_first": {}} and here.best_trial is not None
    dump = str(tmp_path / "d.json")
    for command in (["status", "-n", "e"], ["info", "-n", "e"], ["db", "dump", "-n", "e", "-o", dump],
                    ["db", "load", dump, "-n", "copy"]):
        assert main([*command, "--storage", store]) == 0, capsys.readouterr().err
    assert len(orchard.get_experiment("copy", storage=store).fetch_trials()) == 2
    with pytest.raises(ConfigurationError, match="^unknown algorithm 'center_first'"):
        here.workon(lambda x: x, max_trials=3, progress=False)


def test_a_package_with_damaged_entry_points_is_named_and_the_other_plugins_still_load(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One damaged entry_points.txt of any installed package made every plugin lookup fail with
    "unexpected TypeError: Pair.__new__() missing 1 required positional argument: 'value'"."""
    from orchard import algorithms

    sound = "sound_search = orchard.algorithms._random:RandomSearch"
    for name, points in [("damaged", "no equals sign here"), ("sound", sound)]:
        info = tmp_path / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[orchard.algorithms]\n{points}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    algorithms._entry_points.cache_clear()
    try:
        assert "sound_search" in algorithm_names()
        assert algorithm_class("sound_search").__name__ == "RandomSearch"
    finally:
        algorithms._entry_points.cache_clear()
    assert "installed package 'damaged' declares entry points Orchard cannot read" in caplog.text


def test_a_plugin_written_to_the_documented_suggest_signature_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """suggest(completed, pending, n), as docs/algorithms.md gives it, passed check_algorithm but failed every
    worker: "Doc.suggest() got an unexpected keyword argument 'seen'"."""
    from orchard import algorithms
    from orchard.algorithms.base import BaseAlgorithm

    class Documented(BaseAlgorithm):
        name = "documented"

        def suggest(self, completed: Any, pending: Any, n: int = 1) -> list[dict[str, Any]]:  # type: ignore

            seen = self.seen_points(completed, pending, None)
            return [self.random_unseen(self.rng(completed, pending), seen)]

    check_algorithm(lambda space, seed: Documented(space, seed))
    monkeypatch.setitem(algorithms.ALGORITHMS, "documented", lambda: Documented)
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, algorithm="documented",
                                   storage="memory://")
    exp.workon(lambda x: x, max_trials=3, progress=False)
    assert len(exp.fetch_trials()) == 3
