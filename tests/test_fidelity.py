"""Multi-fidelity: the fidelity prior, ASHA's rung logic and Hyperband's brackets, on hand-built histories.

In-process and fast; the races between real worker processes are in
``tests/test_fidelity_races.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard import plotting
from orchard.algorithms import Asha, Hyperband, Observation, make_algorithm, normalize_algorithm_config
from orchard.algorithms._hyperband import bracket_weights
from orchard.algorithms._rungs import survives
from orchard.cli import main
from orchard.dashboard._payloads import experiment_summary
from orchard.dashboard._views import ExperimentView
from orchard.errors import ConfigurationError, SpaceError, SpaceExhaustedError
from orchard.fidelity import Fidelity
from orchard.history import History
from orchard.monitor import ProgressMonitor
from orchard.space import Space, parse_prior
from orchard.trial import TrialStatus

SPACE = {"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"}


def obs(x: float, epochs: int, objective: float) -> Observation:
    return Observation({"x": x, "epochs": epochs}, objective)


def asha(**options: Any) -> Asha:
    """An ``asha`` on SPACE; random sampler and quota rule unless given (the mechanics tested here)."""
    options = {"sampler": "random", "rule": "promotion", **options}
    algo = make_algorithm({"asha": options}, Space.from_config(SPACE), seed=0)
    assert isinstance(algo, Asha)
    return algo


# -- the prior ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rungs"),
    [
        ("fidelity(1, 81, base=3)", (1, 3, 9, 27, 81)),
        ("fidelity(1, 100)", (1, 3, 9, 27, 81, 100)),
        ("fidelity(2, 16, base=2)", (2, 4, 8, 16)),
        ("fidelity(0.5, 4.0, base=2)", (0.5, 1.0, 2.0, 4.0)),
        ("fidelity(0.1, 0.9, base=3)", (0.1, 0.3, 0.9)),  # not 0.30000000000000004
        ("fidelity(0.1234567890123, 1.0)", (0.1234567890123, 0.370370367037, 1.0)),  # low is kept whole
        ("fidelity(0.01, 1.0, base=1.1)", tuple(float(f"{0.01 * 1.1**k:.12g}") for k in range(49)) + (1.0,)),
        ("fidelity(1, 10, base=1.5)", (1, 2, 3, 5, 8, 10)),  # 1.5 and 2.25 both round to 2: one rung
        ("fidelity(1, 9, base=9)", (1, 9)),
    ],
)
def test_rungs_are_low_times_base_powers_capped_at_high(text: str, rungs: tuple[Any, ...]) -> None:
    prior = parse_prior("epochs", text)
    assert isinstance(prior, Fidelity)
    assert prior.rungs() == rungs
    assert all(type(r) is type(rungs[0]) for r in prior.rungs())
    assert parse_prior("epochs", str(prior)) == prior


@pytest.mark.parametrize("text", ["fidelity(1, 1e12, base=1.000001)", "fidelity(1, 2, base=1.0000000000000002)",
                                  "fidelity(5e-324, 1.7e308, base=2)"])
def test_a_fidelity_with_too_many_rungs_is_refused_in_one_line(text: str) -> None:
    """27 million rungs (a base just above 1) cost each asha worker 1.7 GB and 80 s for 5 trials."""
    with pytest.raises(SpaceError, match=r"dimension 'epochs'.* rungs from .* more than 1,000; raise base"):
        parse_prior("epochs", text)


def test_rungs_of_extreme_bounds_stop_at_high() -> None:
    prior = parse_prior("epochs", "fidelity(1e-300, 1e300, base=1e300)")
    assert isinstance(prior, Fidelity) and prior.rungs() == (1e-300, 1.0, 1e300)  # base**2 overflowed


def _diverges_below_0_3(x: float, epochs: int) -> float:
    orchard.report(-1.0 if x < 0.3 else x, 1)  # a diverged loss, which the threshold pruner stops
    if orchard.should_prune():
        raise orchard.TrialPruned()
    return x


@pytest.mark.parametrize("algorithm", ["asha", "hyperband"])
@pytest.mark.parametrize("rule", ["stopping", "promotion"])
def test_a_trial_a_pruner_stopped_is_never_promoted(algorithm: str, rule: str) -> None:
    """asha took a pruned trial's last report (-1.0, the diverged loss) as the best result of its rung:
    8 of 10 promotions retrained trials the pruner had stopped, each pruned again at the next rung."""
    exp = orchard.build_experiment(
        "pruned-promotions", space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9)"},
        algorithm={algorithm: {"sampler": "random", "rule": rule}}, pruner={"threshold": {"lower": 0.0}},
        max_trials=40, storage="memory://", seed=1)
    exp.workon(_diverges_below_0_3, progress=False)
    trials = {t.id: t for t in exp.fetch_trials()}
    promoted = [t for t in trials.values() if t.parent is not None]
    assert promoted and any(t.status is TrialStatus.PRUNED for t in trials.values())
    assert all(trials[t.parent].status is TrialStatus.COMPLETED for t in promoted)  # type: ignore[index]


def test_a_space_holds_at_most_one_fidelity() -> None:
    with pytest.raises(SpaceError, match="at most one fidelity"):
        Space.from_config({"a": "fidelity(1, 9)", "b": "fidelity(1, 27)"})


@pytest.mark.parametrize("name", ["random", "grid", "bayes"])
def test_other_algorithms_evaluate_the_fidelity_at_high(name: str) -> None:
    space = Space.from_config(SPACE)
    algo = make_algorithm(name, space, seed=3)
    completed: list[Observation] = []
    for _ in range(8):  # within the grid's 10 points
        (params,) = algo.suggest(completed, [])
        assert params["epochs"] == 9 and type(params["epochs"]) is int
        completed.append(Observation(params, (params["x"] - 0.3) ** 2))


def test_multi_fidelity_algorithms_need_a_fidelity() -> None:
    for name in ("asha", "hyperband"):
        with pytest.raises(ConfigurationError, match=f"algorithm '{name}' needs a fidelity dimension"):
            make_algorithm(name, Space.from_config({"x": "uniform(0, 1)"}))


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"reduction_factor": 1}, "reduction_factor must be a number > 1"),
        ({"num_rungs": 0}, "num_rungs must be an int >= 1"),
        ({"sampler": "grid"}, "sampler must be one of random, bayes"),
        ({"sampler": {"bayes": {"nope": 1}}}, "no option 'nope'"),
    ],
)
def test_bad_asha_options_are_rejected(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        normalize_algorithm_config({"asha": options})


def test_num_rungs_beyond_the_fidelity_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="num_rungs=4 exceeds the 3 rungs"):
        asha(num_rungs=4)


def test_sampler_options_are_normalized() -> None:
    config = normalize_algorithm_config({"asha": {"sampler": "bayes"}})
    assert config["asha"]["sampler"]["bayes"]["n_initial_points"] == 10


# -- ASHA's rung logic ----------------------------------------------------------------


def test_empty_history_samples_at_the_lowest_rung() -> None:
    (params,) = asha().suggest([], [])
    assert params["epochs"] == 1


def test_promotes_the_best_of_a_rung_once_it_has_eta_results() -> None:
    algo = asha()
    two = [obs(0.1, 1, 5.0), obs(0.2, 1, 1.0)]
    assert algo.suggest(two, [])[0]["epochs"] == 1  # quota floor(2/3) = 0: sample
    three = [*two, obs(0.3, 1, 3.0)]
    assert algo.suggest(three, []) == [{"x": 0.2, "epochs": 3}]
    assert algo.parent_of({"x": 0.2, "epochs": 3}) == {"x": 0.2, "epochs": 1}
    assert algo.parent_of({"x": 0.2, "epochs": 1}) is None


def test_a_float_fidelity_whose_low_has_more_than_12_digits_runs_at_low() -> None:
    """Rounding every rung to 12 digits made the lowest rung of fidelity(0.1234567890123, 1.0) fall below low,
    outside the space: asha's first suggestion stopped the worker with an AlgorithmError."""
    space = {"x": "uniform(0, 1)", "f": "fidelity(0.1234567890123, 1.0)"}
    exp = orchard.build_experiment("long-low", space=space, algorithm={"asha": {"sampler": "random"}},
                                   max_trials=6, storage="memory://", seed=1)
    exp.workon(lambda x, f: x / f, executor="single", progress=False)
    assert {t.status for t in exp.fetch_trials()} == {TrialStatus.COMPLETED}
    assert min(t.params["f"] for t in exp.fetch_trials()) == 0.1234567890123


def test_a_promotion_stored_before_float_rungs_were_rounded_is_not_made_again() -> None:
    """Trials stored at the rung 0.30000000000000004 (0.1 * 3, before rungs were rounded to 0.3) are on
    that rung: the best of the lowest rung, already promoted there, is not promoted to 0.3 a second time."""
    space = Space.from_config({"x": "uniform(0, 1)", "f": "fidelity(0.1, 0.9, base=3)"})
    algo = make_algorithm({"asha": {"sampler": "random", "rule": "promotion"}}, space, seed=0)
    low = [Observation({"x": x, "f": 0.1}, y) for x, y in [(0.1, 5.0), (0.2, 1.0), (0.3, 3.0)]]
    assert algo.suggest(low, []) == [{"x": 0.2, "f": 0.3}]
    (params,) = algo.suggest([*low, Observation({"x": 0.2, "f": 0.1 * 3}, 0.5)], [])
    assert params["f"] == 0.1 and params["x"] not in (0.1, 0.2, 0.3)


def test_an_experiment_resumed_after_float_rungs_were_rounded_promotes_from_its_old_rung() -> None:
    """Trials stored at 0.30000000000000004 (0.1 * 3) before rungs were rounded: promoting one to 0.9 named
    the parent {'f': 0.3}, which no trial had, and the AlgorithmError stopped the worker; nothing is promoted
    twice."""
    space = {"x": "uniform(0, 1)", "f": "fidelity(0.1, 0.9, base=3)"}
    exp = orchard.build_experiment("resumed", space=space, max_trials=30, storage="memory://", seed=1,
                                   algorithm={"asha": {"sampler": "random", "rule": "promotion"}})
    for x, f, y in [*((i / 10, 0.1, y) for i, y in enumerate([5, 1, 3, 4, 6, 7, 8, 9, 2], start=1)),
                    (0.2, 0.1 * 3, 0.5), (0.9, 0.1 * 3, 0.7), (0.3, 0.1 * 3, 0.9)]:
        trial = exp.storage.register_trial(exp.id, {"x": x, "f": f}, worker="host:1:a")
        exp.storage.complete_trial(trial.id, "host:1:a", float(y))
    exp.workon(lambda x, f: x / f, executor="single", progress=False)
    trials = exp.fetch_trials()
    assert len(trials) == 30 and {t.status for t in trials} == {TrialStatus.COMPLETED}
    old = {t.id: t for t in trials if t.params["f"] == 0.1 * 3}
    promoted = [t for t in trials if t.params["f"] == 0.9 and t.parent in old]
    assert promoted and all(t.params["x"] == old[t.parent].params["x"] for t in promoted)
    middle = [t.params["x"] for t in trials if math.isclose(t.params["f"], 0.3)]
    assert len(middle) == len(set(middle))  # none promoted to 0.3 again


def test_a_pending_promotion_counts_as_promoted() -> None:
    algo = asha()
    three = [obs(0.1, 1, 5.0), obs(0.2, 1, 1.0), obs(0.3, 1, 3.0)]
    (params,) = algo.suggest(three, [{"x": 0.2, "epochs": 3}])
    assert params["epochs"] == 1 and params["x"] not in (0.1, 0.2, 0.3)


def test_quota_counts_promotions_of_trials_no_longer_on_top() -> None:
    algo = asha()
    # 0.2 was promoted when it led; three better trials arrived since. Quota floor(6/3) = 2,
    # one slot left: it goes to the best not yet promoted, and then the rung is full.
    rung0 = [obs(0.2, 1, 1.0), obs(0.1, 1, 5.0), obs(0.3, 1, 3.0),
             obs(0.4, 1, 0.5), obs(0.5, 1, 0.4), obs(0.6, 1, 0.3)]
    history = [*rung0, obs(0.2, 3, 2.0)]
    assert algo.suggest(history, []) == [{"x": 0.6, "epochs": 3}]
    (params,) = algo.suggest(history, [{"x": 0.6, "epochs": 3}])
    assert params["epochs"] == 1


def test_rungs_are_scanned_from_the_top() -> None:
    algo = asha()
    rung0 = [obs(x / 10, 1, float(x)) for x in range(1, 10)]  # quota 3
    rung1 = [obs(0.1, 3, 1.0), obs(0.2, 3, 2.0), obs(0.3, 3, 0.5)]  # quota 1
    assert algo.suggest([*rung0, *rung1], []) == [{"x": 0.3, "epochs": 9}]


def test_liar_values_never_rank() -> None:
    """Only completed objectives rank; pending points (whatever a sampler lies about them) do not."""
    algo = asha(sampler={"bayes": {"n_initial_points": 2, "liar": "cl_min"}}, min_points=2)
    rung0 = [obs(0.1, 1, 5.0), obs(0.2, 1, 4.0)]
    pending = [{"x": 0.9, "epochs": 1}, {"x": 0.8, "epochs": 1}, {"x": 0.7, "epochs": 1}]
    (params,) = algo.suggest(rung0, pending)
    assert params["epochs"] == 1  # two completed: quota 0, whatever is pending


def test_ties_break_the_same_way_for_every_worker() -> None:
    rung0 = [obs(0.1, 1, 1.0), obs(0.2, 1, 1.0), obs(0.3, 1, 1.0)]
    first = asha().suggest(rung0, [])
    assert first == asha().suggest(list(reversed(rung0)), [])
    assert make_algorithm("asha", Space.from_config(SPACE), seed=99).suggest(rung0, []) == first


def test_top_rung_trials_are_never_promoted() -> None:
    algo = asha()
    top = [obs(x / 10, 9, float(x)) for x in range(1, 7)]
    assert algo.suggest(top, [])[0]["epochs"] == 1


def test_num_rungs_raises_the_lowest_fidelity() -> None:
    algo = asha(num_rungs=2)
    assert algo.rungs == (3, 9)
    assert algo.suggest([], [])[0]["epochs"] == 3
    assert algo.parent_of({"x": 0.5, "epochs": 3}) is None


def test_reduction_factor_sets_the_quota() -> None:
    algo = asha(reduction_factor=2)
    two = [obs(0.1, 1, 5.0), obs(0.2, 1, 1.0)]
    assert algo.suggest(two, []) == [{"x": 0.2, "epochs": 3}]


def test_several_suggestions_in_one_call_are_distinct() -> None:
    algo = asha()
    rung0 = [obs(x / 10, 1, float(x)) for x in range(1, 7)]  # quota 2
    points = algo.suggest(rung0, [], n=4)
    assert points[:2] == [{"x": 0.1, "epochs": 3}, {"x": 0.2, "epochs": 3}]
    assert [p["epochs"] for p in points[2:]] == [1, 1] and points[2] != points[3]


def test_bayes_sampler_fits_on_the_highest_rung_with_enough_results() -> None:
    algo = asha(sampler={"bayes": {"n_initial_points": 3}}, min_points=3)
    algo.ladder.update([obs(0.1, 1, 1.0), obs(0.2, 1, 2.0), obs(0.3, 1, 3.0), obs(0.1, 3, 1.0)])
    assert algo._fit_rung() == [obs(0.1, 1, 1.0), obs(0.2, 1, 2.0), obs(0.3, 1, 3.0)]
    # the rung-1 fit is then used: the surrogate's point lands at the lowest rung, unseen
    history = [obs(x / 20, 1, (x / 20 - 0.7) ** 2) for x in range(1, 7)] + [obs(0.05, 3, 0.4)]
    (params,) = algo.suggest(history, [{"x": 0.3, "epochs": 3}, {"x": 0.25, "epochs": 3}])
    assert params["epochs"] == 1


# -- the stopping rule ------------------------------------------------------------------


def arrived(x: float, epochs: int, objective: float, end_time: float) -> Observation:
    return Observation({"x": x, "epochs": epochs}, objective, end_time)


def survivors_x(algo: Asha) -> list[float]:
    return [e.observation.params["x"] for e in algo.ladder.survivors((0, 0))]


def test_stopping_promotes_the_first_trial_to_reach_a_rung_at_once() -> None:
    first = [arrived(0.4, 1, 5.0, end_time=1.0)]
    assert asha(rule="stopping").suggest(first, []) == [{"x": 0.4, "epochs": 3}]
    assert asha().suggest(first, [])[0]["epochs"] == 1  # the quota rule waits for eta results


def test_stopping_judges_a_trial_against_those_that_arrived_before_it() -> None:
    algo = asha(rule="stopping")
    # Arrival order (end_time): 0.1 (5.0) survives as the first; 0.2 (1.0) is the best of two;
    # 0.3 (3.0) is second of three (top 1); 0.4 (0.5) is the best of four (top 1).
    history = [arrived(0.4, 1, 0.5, 4.0), arrived(0.3, 1, 3.0, 3.0),
               arrived(0.1, 1, 5.0, 1.0), arrived(0.2, 1, 1.0, 2.0)]
    algo.ladder.update(history)
    assert survivors_x(algo) == [0.4, 0.2, 0.1]  # best first
    promoted = {0.4, 0.2, 0.1}
    pending: list[dict[str, Any]] = []
    for _ in range(3):  # each survivor once, the best first, then new points
        (params,) = algo.suggest(history, pending)
        assert params["epochs"] == 3 and params["x"] in promoted
        pending.append(params)
    assert [p["x"] for p in pending] == [0.4, 0.2, 0.1]
    (params,) = algo.suggest(history, pending)
    assert params["epochs"] == 1 and params["x"] not in (0.1, 0.2, 0.3, 0.4)


def test_stopping_verdicts_follow_end_times_not_the_order_a_worker_saw() -> None:
    history = [arrived(x / 10, 1, float(10 - x), end_time=float(x)) for x in range(1, 8)]
    seen_in_order = asha(rule="stopping").suggest(history, [], n=4)
    seen_backwards = asha(rule="stopping").suggest(list(reversed(history)), [], n=4)
    assert seen_in_order == seen_backwards


def test_stopping_rejudges_the_trials_after_one_that_turns_up_late() -> None:
    algo = asha(rule="stopping")
    early = [arrived(0.1, 1, 2.0, 1.0), arrived(0.2, 1, 3.0, 3.0), arrived(0.3, 1, 1.5, 4.0)]
    algo.ladder.update(early)
    assert survivors_x(algo) == [0.3, 0.1]  # 0.2 was second of two
    late = [*early, arrived(0.4, 1, 1.0, 2.0)]  # completed second, seen last: 0.3 is now 2nd of 4
    algo.ladder.update(late)
    assert survivors_x(algo) == [0.4, 0.1]
    with_a_fifth = [*late, arrived(0.5, 1, 0.1, 1.5)]  # completed second of all: 0.4 is now 2nd of 3
    algo.ladder.update(with_a_fifth)
    assert survivors_x(algo) == [0.5, 0.1]


def test_survives_keeps_the_top_fraction_and_at_least_one() -> None:
    assert [survives(0, m, 3) for m in (1, 2, 3)] == [True, True, True]
    assert [survives(1, m, 3) for m in (2, 3, 5)] == [False, False, False]
    assert survives(1, 6, 3) and not survives(2, 6, 3)


def test_a_bad_rule_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="rule must be one of promotion, stopping, got 'quota'"):
        normalize_algorithm_config({"asha": {"rule": "quota"}})


def assert_stopping_invariants(algo: Asha, history: list[Observation]) -> None:
    """Every promotion's parent was in the top 1/eta of its rung (in its bracket) when it arrived;
    none promoted twice."""
    keys = [tuple(sorted(o.params.items())) for o in history]
    assert len(keys) == len(set(keys))
    for child in history:
        parent = algo.parent_of(child.params)
        if parent is None:
            continue
        (entry,) = [o for o in history if o.params == parent]
        assert algo.bracket_of(child.params) == algo.bracket_of(parent)
        rung = [o for o in history if o.params["epochs"] == parent["epochs"]
                and algo.bracket_of(o.params) == algo.bracket_of(parent)
                and (o.end_time, o.params["x"]) <= (entry.end_time, entry.params["x"])]
        position = sorted((o.objective, o.params["x"]) for o in rung).index((entry.objective, entry.params["x"]))
        assert survives(position, len(rung), algo.eta), (child.params, position, len(rung))


def run_stopping(name: str, seed: int, count: int) -> tuple[Asha, list[Observation]]:
    """``name`` with ``rule="stopping"`` on x and a 1-27 fidelity: ``count`` suggestions evaluated
    one after another, each finishing one clock tick after the last."""
    space = Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 27)"})
    algo = make_algorithm({name: {"rule": "stopping"}}, space, seed=seed)
    assert isinstance(algo, Asha)
    completed: list[Observation] = []
    for clock in range(count):
        (params,) = algo.suggest(completed, [])
        objective = (params["x"] - 0.3) ** 2 + 1 / params["epochs"]
        completed.append(Observation(params, objective, end_time=float(clock)))
    return algo, completed


def test_sequential_stopping_asha_promotes_only_survivors() -> None:
    algo, completed = run_stopping("asha", seed=4, count=80)
    assert_stopping_invariants(algo, completed)
    assert [o.params["epochs"] for o in completed[:4]] == [1, 3, 9, 27]  # the first trains straight on
    stopped = [o for o in completed if o.params["epochs"] < 27
               and {**o.params, "epochs": o.params["epochs"] * 3} not in [c.params for c in completed]]
    assert stopped, "no trial was ever stopped"


def test_sequential_stopping_hyperband_promotes_only_survivors_in_every_bracket() -> None:
    algo, completed = run_stopping("hyperband", seed=6, count=150)
    assert isinstance(algo, Hyperband)
    assert_stopping_invariants(algo, completed)
    promoted_in = {algo.bracket_of(o.params) for o in completed if algo.parent_of(o.params) is not None}
    assert promoted_in == {0, 1, 2}  # bracket 3 starts at the top rung: nothing to promote
    assert any(algo.rung_index(o.params) == 0 and algo.bracket_of(o.params) == 0
               and {**o.params, "epochs": 3} not in [c.params for c in completed] for o in completed)


def test_bayes_is_never_fitted_on_a_rung_too_small_for_its_model() -> None:
    """A rung with fewer results than ``n_initial_points`` would make ``bayes`` draw at random."""
    algo = asha(sampler="bayes")
    assert algo.min_points == 10  # bayes's n_initial_points, above dimensions + 1
    rung1 = [obs(x / 20, 3, x / 20) for x in range(12)]
    top = [obs(x / 20, 9, x / 20) for x in range(5)]
    algo.ladder.update([*rung1, *top])
    assert algo._fit_rung() == rung1
    assert asha(sampler={"bayes": {"n_initial_points": 3}}).min_points == 3  # dimensions + 1
    assert asha(sampler="bayes", min_points=4).min_points == 4


def test_refined_fit_is_blind_to_the_objective_scale() -> None:
    """Any objective with the same order gives the same suggestions; the raw objectives of one rung do not."""
    rung0 = [obs(x / 40, 1, (x / 40 - 0.65) ** 2) for x in range(0, 40, 3)]  # 14: quota 4
    best = sorted(rung0, key=lambda o: o.objective)[:4]
    rung1 = [obs(o.params["x"], 3, (o.params["x"] - 0.6) ** 2) for o in best]  # all promoted; quota 1
    history = rung0 + rung1
    stretched = [Observation(o.params, math.exp(40 * o.objective)) for o in history]
    pending = [{"x": min(best, key=lambda o: abs(o.params["x"] - 0.6)).params["x"], "epochs": 9}]

    def suggestion(fit: str, seen: list[Observation]) -> dict[str, Any]:
        algo = asha(sampler={"bayes": {"n_initial_points": 4}}, min_points=4, sampler_fit=fit)
        (params,) = algo.suggest(seen, pending)
        assert params["epochs"] == 1  # a new point: no promotion is free
        return params

    assert suggestion("refined", history) == suggestion("refined", stretched)
    assert suggestion("highest_rung", history) != suggestion("highest_rung", stretched)


def hyperband_by_bracket(sampler_fit: str) -> tuple[Hyperband, dict[int, list[float]]]:
    """A ``hyperband`` with a ``bayes`` sampler fitted as ``sampler_fit``, and x values by bracket."""
    algo = make_algorithm({"hyperband": {"sampler": "bayes", "sampler_fit": sampler_fit}},
                          Space.from_config(SPACE), seed=0)
    assert isinstance(algo, Hyperband)
    by_bracket: dict[int, list[float]] = {}
    for x in range(200):
        by_bracket.setdefault(algo.bracket_of({"x": x / 200, "epochs": 1}), []).append(x / 200)
    return algo, by_bracket


def test_refined_fit_ranks_at_the_lowest_rung_and_re_ranks_in_place() -> None:
    """``sampler_fit="refined"``: reaching a rung earns nothing; a higher rung decides between those it saw."""
    history = [obs(0.1, 1, 0.9), obs(0.2, 1, 0.3), obs(0.3, 1, 0.5), obs(0.4, 1, 0.1), obs(0.5, 1, 0.7),
               obs(0.1, 3, 0.8),  # went on although poor (the first arrival, under the stopping rule)
               obs(0.2, 3, 0.6), obs(0.3, 3, 0.4), obs(0.3, 9, 0.2)]
    algo = asha(sampler={"bayes": {"n_initial_points": 3}}, min_points=3, sampler_fit="refined", rule="stopping")
    algo.ladder.update(history)
    told = algo._fit_observations()
    # lowest rung: 0.4, 0.2, 0.3, 0.5, 0.1; the places of 0.2, 0.3 and 0.1 (2nd, 3rd, 5th) go to 0.3, 0.2, 0.1
    assert [o.params["x"] for o in told] == [0.4, 0.3, 0.2, 0.5, 0.1]
    assert {o.params["epochs"] for o in told} == {9}
    assert [o.objective for o in told] == pytest.approx([-1.2816, -0.5244, 0.0, 0.5244, 1.2816], abs=1e-4)
    (params,) = algo.suggest(history, [])
    assert algo.rung_index(params) is not None


def test_refined_fit_merges_brackets_by_the_fraction_ranked_ahead() -> None:
    """In Hyperband each bracket is refined on its own, then merged by place within the bracket."""
    algo, by_bracket = hyperband_by_bracket("refined")
    low, high = by_bracket[0][:3], by_bracket[1][:2]  # bracket 1 starts at rung 1 (3 epochs)
    history = [obs(low[0], 1, 0.5), obs(low[1], 1, 0.2), obs(low[2], 1, 0.9), obs(low[1], 3, 0.4),
               obs(high[0], 3, 0.1), obs(high[1], 3, 0.3)]
    algo.ladder.update(history)
    # bracket 0 places low[1], low[0], low[2] at 1/6, 3/6, 5/6; bracket 1 high[0], high[1] at 1/4, 3/4
    assert [o.params["x"] for o in algo.ladder.refined()] == [low[1], high[0], low[0], high[1], low[2]]


def test_sampler_fit_must_be_one_of_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="sampler_fit must be one of None, refined, highest_rung, got 'top'"):
        asha(sampler="bayes", sampler_fit="top")
    with pytest.raises(ConfigurationError, match="'all_rungs' was superseded by 'refined'"):
        asha(sampler="bayes", sampler_fit="all_rungs")


@pytest.mark.parametrize("option", [{"sampler_fit": "refined"}, {"min_points": 4}])
def test_options_a_random_sampler_ignores_are_refused(option: dict[str, Any]) -> None:
    """A combination that would do nothing is refused with one line naming the option and the fix."""
    key = next(iter(option))
    with pytest.raises(ConfigurationError, match=f"asha option {key}=.* only applies to sampler='bayes'.*remove it"):
        asha(sampler="random", **option)


def test_the_default_is_bayes_refined_stopping_from_the_interior() -> None:
    """The recommended setting is the default; the previous release's stored default still opens."""
    algo = make_algorithm("asha", Space.from_config(SPACE), seed=0)
    assert isinstance(algo, Asha)
    assert algo.options["rule"] == "stopping" and algo.options["sampler_fit"] == "refined"
    assert algo.options["sampler"]["bayes"]["acq_optimizer"] == "sampling"
    assert (algo.sampler_space["x"].low, algo.sampler_space["x"].high) == pytest.approx((0.02, 0.98))
    previous = {"sampler": {"random": {}}, "rule": "promotion", "sampler_fit": "highest_rung", "min_points": None,
                "reduction_factor": None, "num_rungs": None}
    assert normalize_algorithm_config({"asha": previous})["asha"]["sampler_fit"] is None


def test_bayes_suggestions_stay_off_the_bounds() -> None:
    """New points of the bayes sampler come from the interior: none within 1 % of a bound."""
    algo = make_algorithm("asha", Space.from_config(SPACE), seed=1)
    history = [obs(x / 20, 1, (x / 20) ** 2) for x in range(1, 20)]  # the optimum is on the lower bound
    for _ in range(5):
        (params,) = algo.suggest(history, [])
        if params["epochs"] == 1:
            assert 0.01 < params["x"] < 0.99
            history.append(Observation(params, params["x"] ** 2))


def run_sequential(algo: Asha, trials: int) -> list[Observation]:
    completed: list[Observation] = []
    for _ in range(trials):
        (params,) = algo.suggest(completed, [])
        completed.append(Observation(params, (params["x"] - 0.3) ** 2 + 1 / params["epochs"]))
    return completed


def assert_rung_invariants(algo: Asha, history: list[Observation]) -> None:
    """Every promotion has a completed parent one rung down; each rung's promotions fit its quota."""
    by_params = {tuple(sorted(o.params.items())): o for o in history}
    for bracket in algo.brackets():
        for rung in range(algo.start_rung(bracket), len(algo.rungs) - 1):
            below = [o for o in history if algo.rung_index(o.params) == rung and algo.bracket_of(o.params) == bracket]
            above = [o for o in history if algo.rung_index(o.params) == rung + 1
                     and algo.bracket_of(o.params) == bracket]
            assert len(above) <= len(below) // algo.eta
            for child in above:
                parent = algo.parent_of(child.params)
                assert parent is not None and tuple(sorted(parent.items())) in by_params


def test_sequential_asha_keeps_the_rung_invariants() -> None:
    algo = make_algorithm({"asha": {"sampler": "random", "rule": "promotion"}},
                          Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 27)"}), seed=4)
    assert isinstance(algo, Asha)
    history = run_sequential(algo, 60)
    assert_rung_invariants(algo, history)
    assert any(o.params["epochs"] == 27 for o in history)


SIX = {"a": "choices([1, 2, 3, 4, 5, 6])", "epochs": "fidelity(1, 27)"}


@pytest.mark.parametrize("name", ["asha", "hyperband"])
def test_a_finite_space_brings_each_bracket_s_best_configuration_to_the_top_fidelity(name: str) -> None:
    """Six configurations, eta 3: the quota promoted two, stopped them at the next rung (quota 0),
    and the experiment ended with no result at the top fidelity."""
    algo = make_algorithm({name: {"sampler": "random", "rule": "promotion"}}, Space.from_config(SIX), seed=0)
    assert isinstance(algo, Asha)
    completed: list[Observation] = []
    while True:
        try:
            (params,) = algo.suggest(completed, [])
        except SpaceExhaustedError:
            break
        completed.append(Observation(params, float(params["a"]), end_time=float(len(completed))))
    for bracket in {algo.bracket_of(o.params) for o in completed}:
        best = min(o.params["a"] for o in completed if algo.bracket_of(o.params) == bracket)
        assert {"a": best, "epochs": 27} in [o.params for o in completed], (bracket, completed)


def test_a_finite_space_promotes_past_the_quota_only_from_rungs_nothing_can_still_reach() -> None:
    algo = make_algorithm({"asha": {"sampler": "random", "rule": "promotion"}}, Space.from_config(SIX), seed=0)
    rung0 = [Observation({"a": a, "epochs": 1}, float(a)) for a in range(1, 7)]
    history = [*rung0, Observation({"a": 2, "epochs": 3}, 2.0)]
    with pytest.raises(SpaceExhaustedError):  # a=1 still runs at epochs 3: waited for, not passed over
        algo.suggest(history, [{"a": 1, "epochs": 3}])
    assert algo.suggest([*history, Observation({"a": 1, "epochs": 3}, 1.0)], []) == [{"a": 1, "epochs": 9}]


# -- Hyperband -------------------------------------------------------------------------


def test_bracket_weights_follow_the_paper() -> None:
    # R = 81, eta = 3 (five rungs): n = 81, 34, 15, 8, 5 for s = 4 .. 0.
    assert bracket_weights(5, 3) == [81, 34, 15, 8, 5]


def test_brackets_are_a_function_of_the_params_without_fidelity() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 81)"})
    one, two = make_algorithm("hyperband", space, seed=1), make_algorithm("hyperband", space, seed=2)
    assert isinstance(one, Hyperband) and isinstance(two, Hyperband)
    counts = [0] * 5
    for i in range(2000):
        point = {"x": i / 2000, "epochs": 1}
        assert one.bracket_of(point) == two.bracket_of(point) == one.bracket_of({**point, "epochs": 27})
        counts[one.bracket_of(point)] += 1
    expected = [2000 * w / 143 for w in bracket_weights(5, 3)]
    for seen, want in zip(counts, expected):
        assert abs(seen - want) < 5 * math.sqrt(want) + 5


def test_hyperband_new_points_start_at_their_brackets_rung() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 81)"})
    algo = make_algorithm("hyperband", space, seed=5)
    assert isinstance(algo, Hyperband)
    starts = set()
    pending: list[dict[str, Any]] = []
    for _ in range(200):
        (params,) = algo.suggest([], pending)
        pending.append(params)
        assert algo.rung_index(params) == algo.bracket_of(params)
        assert algo.parent_of(params) is None
        starts.add(params["epochs"])
    assert starts == {1, 3, 9, 27, 81}


def test_sequential_hyperband_keeps_the_rung_invariants_in_every_bracket() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 27)"})
    algo = make_algorithm({"hyperband": {"sampler": "random", "rule": "promotion"}}, space, seed=6)
    assert isinstance(algo, Hyperband)
    history = run_sequential(algo, 80)
    assert_rung_invariants(algo, history)
    assert {algo.bracket_of(o.params) for o in history} == {0, 1, 2, 3}


def test_num_brackets_keeps_the_most_aggressive() -> None:
    algo = make_algorithm({"hyperband": {"num_brackets": 2}}, Space.from_config(SPACE), seed=0)
    assert isinstance(algo, Hyperband)
    assert list(algo.brackets()) == [0, 1]
    assert {algo.bracket_of({"x": i / 100, "epochs": 1}) for i in range(100)} == {0, 1}


# -- status, info and the rungs plot ------------------------------------------------------


def run_small_asha(storage: str) -> orchard.Experiment:
    exp = orchard.build_experiment("mf", space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 27)"},
                                   algorithm="asha", storage=storage, max_trials=30, seed=1)
    exp.workon(lambda x, epochs: (x - 0.3) ** 2 + 1 / epochs, executor="single", progress=False)
    return exp


def test_status_and_info_show_rung_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = str(tmp_path / "o.pkl")
    exp = run_small_asha(storage)
    assert main(["status", "-n", "mf", "--storage", storage, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    rows = status["rungs"]["rungs"]
    assert status["rungs"]["dimension"] == "epochs"
    assert [r["fidelity"] for r in rows] == [1, 3, 9, 27]
    assert sum(r["completed"] for r in rows) == 30
    assert rows[0]["promoted"] == 0
    promoted = sum(t.parent is not None for t in exp.fetch_trials())
    assert sum(r["promoted"] for r in rows) == promoted > 0
    for command in ("status", "info"):
        assert main([command, "-n", "mf", "--storage", storage]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "rungs:" in ln)
        assert f"1: {rows[0]['completed']} completed" in line and "(by epochs)" in line


def test_status_counts_a_rung_s_pruned_trials_as_pruned_not_pending(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished experiment with a pruner said "rungs: 1: 11 completed, 9 pending": the 9 were pruned."""
    storage = str(tmp_path / "o.pkl")

    def train(x: float, epochs: int) -> float:
        orchard.report(x, step=1)
        if x > 0.5:
            raise orchard.TrialPruned()
        return x

    exp = orchard.build_experiment("mf", space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 27)"},
                                   algorithm="asha", pruner={"threshold": {"upper": 0.5}}, storage=storage,
                                   max_trials=12, seed=1)
    exp.workon(train, executor="single", progress=False)
    pruned = sum(t.status is TrialStatus.PRUNED for t in exp.fetch_trials())
    assert main(["status", "-n", "mf", "--storage", storage, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rungs"]["rungs"]
    assert (sum(r["pruned"] for r in rows), sum(r["pending"] for r in rows)) == (pruned, 0) and pruned > 0
    assert main(["status", "-n", "mf", "--storage", storage]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "rungs:" in ln)
    assert f"{pruned} pruned" in line and "pending" not in line


def test_status_reads_counts_rungs_and_workers_from_one_history(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers finishing trials while ``orchard status`` reads must not make its lines disagree."""
    from orchard.cli.status import experiment_status

    storage = str(tmp_path / "o.pkl")
    run_small_asha(storage)
    exp = orchard.build_experiment("mf", storage=storage, max_trials=60)
    real, racing, held = exp.fetch_trials, [False], []

    def read_while_a_worker_races(*args: Any, **kwargs: Any) -> Any:
        if not racing[0]:  # a worker completes a trial and reserves the next before each read
            racing[0] = True
            exp.observe(exp.suggest(), 0.5)
            held.append(exp.suggest())
            racing[0] = False
        return real(*args, **kwargs)

    monkeypatch.setattr(exp, "fetch_trials", read_while_a_worker_races)
    status = experiment_status(exp)
    rows = status["rungs"]["rungs"]
    assert sum(r["completed"] for r in rows) == status["counts"]["completed"]
    assert sum(r["pending"] for r in rows) == status["counts"]["reserved"] == len(status["workers"])
    for trial in held:
        exp.observe(trial, 0.5)


def test_rungs_plot_draws_promotions_as_lines(tmp_path: Path) -> None:
    exp = run_small_asha(str(tmp_path / "o.pkl"))
    trials = exp.fetch_trials()
    figure = plotting.make_figure("rungs", trials, "mf", exp.space)
    assert isinstance(figure, plotting.RungsFigure)
    assert sorted(figure.x) == sorted(float(t.params["epochs"]) for t in trials)
    by_id = {t.id: t for t in trials}
    expected = sorted(((float(by_id[t.parent].params["epochs"]), by_id[t.parent].objective),
                       (float(t.params["epochs"]), t.objective)) for t in trials if t.parent)
    assert sorted(figure.promotions) == expected and expected
    for suffix in (".png", ".html"):
        out = tmp_path / f"rungs{suffix}"
        assert main(["plot", "rungs", "-n", "mf", "--storage", str(tmp_path / "o.pkl"), "-o", str(out)]) == 0
        assert out.stat().st_size > 10_000


def test_the_rungs_plot_labels_its_rungs_as_status_does(tmp_path: Path) -> None:
    """Its ticks were written with 6 significant digits: fidelity(1000, 1234567)'s top rung read 1.23457e+06."""
    exp = orchard.build_experiment("big", space={"x": "uniform(0, 1)", "n": "fidelity(1000, 1234567)"},
                                   storage=str(tmp_path / "o.pkl"), algorithm="asha", max_trials=4)
    for n in (1000, 1234567):
        exp.insert({"x": 0.5, "n": n}, objective=1.0)
    out = tmp_path / "rungs.html"
    assert main(["plot", "rungs", "-n", "big", "--storage", str(tmp_path / "o.pkl"), "-o", str(out)]) == 0
    assert '"ticktext":["1000","1234567"]' in out.read_text()


def test_the_incremental_ladder_suggests_what_a_fresh_one_does() -> None:
    """The worker hands the same, growing list each time: the cache must change no suggestion."""
    space = Space.from_config({"x": "uniform(0, 1)", "y": "uniform(0, 1)", "epochs": "fidelity(1, 27)"})
    for name in ("asha", "hyperband"):
        cached = make_algorithm(name, space, seed=7)
        history: list[Observation] = []  # one list, appended to, as the worker's
        for _ in range(80):
            pending = [{"x": 0.5, "y": 0.5, "epochs": 1}]
            (params,) = cached.suggest(history, pending)
            assert make_algorithm(name, space, seed=7).suggest(list(history), pending) == [params]
            history.append(Observation(params, (params["x"] - 0.3) ** 2 + params["y"] / params["epochs"]))
        shuffled = history[::-1]  # another sequence: rebuilt, same answer
        assert cached.suggest(shuffled, []) == make_algorithm(name, space, seed=7).suggest(shuffled, [])


def test_a_registered_but_not_completed_promotion_uses_its_slot() -> None:
    """A promotion that broke is neither completed nor pending, but it is taken: no second slot for it."""
    from orchard.algorithms.base import SeenPoints

    algo = asha()
    rung0 = [obs(0.1, 1, 5.0), obs(0.2, 1, 1.0), obs(0.3, 1, 3.0)]
    seen = SeenPoints([o.params for o in rung0] + [{"x": 0.2, "epochs": 3}])
    (params,) = algo.suggest(rung0, [], seen=seen)
    assert params["epochs"] == 1


def test_ask_and_tell_register_promotions_with_their_parent() -> None:
    exp = orchard.build_experiment("ask", space=SPACE, algorithm="asha", storage="memory://", max_trials=12)
    for _ in range(12):
        trial = exp.suggest()
        exp.observe(trial, (trial.params["x"] - 0.3) ** 2 + 1 / trial.params["epochs"])
    trials = {t.id: t for t in exp.fetch_trials()}
    promoted = [t for t in trials.values() if t.parent is not None]
    assert promoted
    for child in promoted:
        parent = trials[child.parent]  # type: ignore[index]
        assert parent.params == {**child.params, "epochs": child.params["epochs"] // 3}


def test_bohb_style_sampler_runs_a_whole_experiment() -> None:
    algorithm = {"hyperband": {"sampler": {"bayes": {"n_initial_points": 4}}, "min_points": 4}}
    exp = orchard.build_experiment("bohb", space=SPACE, algorithm=algorithm, storage="memory://",
                                   max_trials=30, seed=3)
    exp.workon(lambda x, epochs: (x - 0.3) ** 2 + 1 / epochs, executor="single", progress=False)
    trials = exp.fetch_trials()
    assert len(trials) == 30 and all(t.status.value == "completed" for t in trials)
    assert any(t.parent is not None for t in trials)


def test_joining_with_another_asha_option_names_that_option(tmp_path: Path) -> None:
    """The refusal printed both whole configurations (746 characters) for one changed option."""
    storage, space = str(tmp_path / "o.pkl"), {"x": "uniform(0, 1)", "epochs": "fidelity(1, 27)"}
    orchard.build_experiment("mf", space=space, algorithm="asha", storage=storage)
    with pytest.raises(orchard.ExperimentConflictError) as refused:
        orchard.build_experiment("mf", space=space, algorithm={"asha": {"num_rungs": 2}}, storage=storage)
    assert "algorithm asha option num_rungs: stored None != given 2" in str(refused.value)
    assert "sampler" not in str(refused.value)
    with pytest.raises(orchard.ExperimentConflictError, match="algorithm: stored asha != given hyperband"):
        orchard.build_experiment("mf", space=space, algorithm="hyperband", storage=storage)


def test_an_experiment_whose_algorithm_needs_a_fidelity_is_refused_before_it_is_stored() -> None:
    with pytest.raises(ConfigurationError, match="algorithm 'asha' needs a fidelity dimension"):
        orchard.build_experiment("nofid", space={"x": "uniform(0, 1)"}, algorithm="asha", storage="memory://")


def test_the_bayes_sampler_is_told_a_bounded_subset_keeping_the_full_ranking() -> None:
    """Past FIT_POINTS configurations the sampler sees the best half and the rest evenly by rank,
    with the normal scores of the whole ranking (so the subset's scores still say where each stands)."""
    from orchard.algorithms._asha import FIT_POINTS, bounded, normal_scores

    ranked = [obs(i / 1000, 1, i) for i in range(300)]
    subset = bounded(ranked)
    assert len(subset) == FIT_POINTS
    assert subset[:FIT_POINTS // 2] == ranked[:FIT_POINTS // 2]
    assert subset[FIT_POINTS // 2] == ranked[FIT_POINTS // 2] and subset[-1] == ranked[-1]
    assert bounded(ranked[:FIT_POINTS]) == ranked[:FIT_POINTS]
    algo = asha(sampler={"bayes": {"n_initial_points": 3}}, min_points=3, sampler_fit="refined", rule="stopping")
    algo.ladder.update(ranked)
    told = algo._fit_observations()
    scores = normal_scores(len(ranked))
    assert len(told) == FIT_POINTS
    assert [o.objective for o in told[:3]] == pytest.approx(scores[:3]) and told[-1].objective == pytest.approx(scores[-1])


def test_a_new_point_of_the_default_asha_costs_well_under_100_ms_of_cpu_at_1000_trials() -> None:
    """The bound that lets hundreds of workers with short trials ask without being CPU-bound
    (``bench/asha_suggest_cost.py`` measures ~20 ms; CPU time, so other processes' load hardly counts)."""
    import statistics
    import time

    import numpy as np

    from orchard.algorithms.base import SeenPoints

    space = Space.from_config({
        "lr": "loguniform(1e-4, 1e-1)", "width": "loguniform(16, 1024)", "decay": "uniform(0, 0.1)",
        "momentum": "uniform(0.1, 0.99)", "dropout": "uniform(0, 1)", "epochs": "fidelity(1, 81, base=3)"})
    builder = make_algorithm({"asha": {"sampler": "random"}}, space, seed=0)
    completed: list[Observation] = []
    built = SeenPoints()  # kept up to date as a worker keeps its own: no suggestion re-hashes the history
    while len(completed) < 1000:
        (params,) = builder.suggest(completed, [], seen=built)
        built.add(params)
        loss = (math.log(params["lr"]) + 5) ** 2 + params["decay"] + 1 / params["epochs"]
        completed.append(Observation(params, loss, end_time=float(len(completed))))
    seen = SeenPoints(o.params for o in completed)
    worker = make_algorithm("asha", space, seed=1)
    worker.suggest(completed, [], seen=seen)  # a worker's cache holds the history
    costs = []
    for repeat in range(5):
        rng = np.random.default_rng(repeat)
        pending = [worker.at_rung(space.sample(rng), 0) for _ in range(4)]
        while True:
            start = time.process_time()
            (params,) = worker.suggest(completed, pending, seen=seen)
            elapsed = time.process_time() - start
            if worker.parent_of(params) is None:
                break
            pending.append(params)
        costs.append(elapsed)
    assert statistics.median(costs) < 0.1


def test_the_best_trial_is_at_the_highest_fidelity_that_has_a_result(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A constant objective under asha made a one-epoch trial the best (the oldest of the ties); a better
    objective at a lower fidelity neither wins over a full-budget result, in best_trial, stats, status, the
    dashboard and the progress bar."""
    uri = str(tmp_path / "orchard.pkl")
    exp = orchard.build_experiment("flat", space=SPACE, algorithm={"asha": {"sampler": "random"}},
                                   max_trials=20, storage=uri, seed=1)
    exp.workon(lambda x, epochs: 1.0, n_workers=1, executor="single", progress=False)
    assert exp.best_trial is not None and exp.best_trial.params["epochs"] == 9
    exp.insert({"x": 0.5, "epochs": 3}, objective=0.0)  # better, at a lower fidelity
    best = exp.best_trial
    assert best is not None and (best.params["epochs"], best.objective) == (9, 1.0)
    assert (exp.stats["best_params"], exp.stats["best_objective"]) == (best.params, 1.0)
    capsys.readouterr()
    assert main(["status", "-n", "flat", "--storage", uri, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["best_trial"], status["best_params"]) == (best.id, best.params)
    view = ExperimentView(exp.storage, exp.storage.require_experiment("flat"))
    view.fold()
    assert experiment_summary(view)["best_trial"] == best.id  # the dashboard's
    with ProgressMonitor(exp.storage, exp.id, "flat", 20, show_bar=True) as monitor:  # workon's progress bar
        monitor._tick()
        assert monitor._bar.postfix.startswith("best=1"), monitor._bar.postfix
    lower = orchard.build_experiment("lower", space=SPACE, storage=uri)  # no result at the top yet
    lower.insert({"x": 0.1, "epochs": 1}, objective=0.0)
    lower.insert({"x": 0.2, "epochs": 3}, objective=2.0)
    assert lower.best_trial is not None and lower.best_trial.params == {"x": 0.2, "epochs": 3}


@pytest.mark.parametrize("sampler", ["random", "bayes"])
def test_no_new_point_is_said_by_asha_counting_every_rung(sampler: str) -> None:
    """It was said by the sampler inside (algorithm 'random' ... 3 points), counting the configurations
    at the top fidelity, of an experiment holding 5 trials."""
    space = {"k": "choices([1, 2, 3])", "epochs": "fidelity(1, 9, base=3)"}
    exp = orchard.build_experiment("few", space=space, algorithm={"asha": {"sampler": sampler}},
                                   max_trials=40, storage="memory://", seed=1)
    exp.workon(lambda k, epochs: float(k) / epochs, n_workers=1, executor="single", progress=False)
    history = History(exp.storage, exp.id)
    history.refresh()
    count = len(exp.fetch_trials())
    said = rf"^algorithm 'asha' .* \({count} points completed or pending\)"
    with pytest.raises(SpaceExhaustedError, match=said):
        make_algorithm(exp.algorithm, exp.space, seed=1).suggest(history.observations, history.pending())


def test_float_rungs_are_shown_without_float_noise(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fidelity(0.1, 0.9)'s middle rung, 0.1 * 3, printed as "0.30000000000000004: 5 completed"."""
    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("frac", space={"x": "uniform(0, 1)", "frac": "fidelity(0.1, 0.9, base=3)"},
                                   algorithm={"asha": {"sampler": "random"}}, max_trials=15, storage=storage,
                                   seed=1)
    exp.workon(lambda x, frac: x / frac, n_workers=1, executor="single", progress=False)
    assert {t.params["frac"] for t in exp.fetch_trials()} == {0.1, 0.3, 0.9}  # stored rounded, not 0.1 * 3
    for command in ("status", "info"):
        assert main([command, "-n", "frac", "--storage", storage]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "rungs:" in ln)
        assert "| 0.3: " in line and "0000" not in line, line
