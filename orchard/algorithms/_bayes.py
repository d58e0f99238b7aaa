"""Bayesian optimization with a scikit-optimize surrogate, pending-aware and bounded in cost.

Each suggestion builds a fresh ``skopt.Optimizer`` (the algorithm is pure: no
model survives between calls), tells it the history in **one** bulk ``tell``
(one surrogate fit) and asks for **one** point. Pending points are told with a
lie value (constant liar: the best, mean or worst completed objective), so the
acquisition function is flat around what other workers are evaluating and
parallel workers spread out. Broken trials are told with the worst completed
objective: untold, they would leave the surrogate unchanged, and a deterministic
acquisition search would land beside the failed point again, trial after trial.
``ask(n_points=k)`` is never used: it refits k times.

The acquisition function is fixed (``EI`` by default). skopt's default
``gp_hedge`` learns weights over ``EI``/``PI``/``LCB`` across calls of one
optimizer; a fresh optimizer per suggestion would throw them away, and would
still pay for three acquisition searches. ``acq_func="portfolio"`` keeps what
hedging contributes without memory: each suggestion draws one of the three
with the seeded stream (one search).

``xi`` defaults to 0 for one objective (:data:`SINGLE_OBJECTIVE_XI`), not skopt's
0.01: skopt's margin is in the objective's units, so ``EI`` gives no value to
a step that gains less than about 0.01 and, once a run is that close to the
minimum, explores instead of refining. That was ``bayes``'s gap to
``gp_minimize`` on Hartmann-6, whose ``gp_hedge`` ends on ``LCB`` or ``PI``
(``bench/algorithms.py``; figures in ``docs/algorithms.md``).

Cost policy
-----------
A suggestion with skopt's own GP (2 kernel restarts, L-BFGS acquisition from
the best of 10,000 samples) took, on 2 cores: 0.7 s at 100 points, 8-12 s at
400, 58-87 s at 1,000 (``bench/suggest.py``). The cost came from

1. the hyperparameter fit: ~20-100 evaluations of the log marginal likelihood,
   each cubic in the points, times ``1 + restarts``; at small sizes each
   evaluation is dominated by scikit-learn's generic kernel overhead;
2. the predictive standard deviation over the sampled candidates, computed by
   skopt with an unblocked ``einsum`` (candidates x points^2 scalar steps);
3. ~200 single-point predictions with gradients during the L-BFGS search of
   the acquisition function, ~2 ms of scikit-learn overhead each;
4. BLAS threads: numpy and scipy each ship an OpenBLAS whose threads contend on
   the tiny matrices involved; one thread is 2-3x faster here.

The policy, chosen so that no information the GP uses is thrown away below
1,000 points:

* **Direct kernel arithmetic** (:mod:`orchard.algorithms._gp`): for skopt's
  constant x Matern 5/2 + noise kernel the likelihood, its gradient, the
  predictions and their gradients are computed directly (same numbers, checked
  against scikit-learn/skopt in the tests). Fixes 1-3 at small sizes.
* **One BLAS thread** during a suggestion (``threadpoolctl``), which also keeps
  co-located workers from oversubscribing the cores (point 4).
* **Hyperparameters from a subsample, posterior from everything**: past 250
  points (:data:`HYPERPARAMETER_POINTS`) the kernel hyperparameters are fitted on
  the best half plus a seeded random sample of the rest, then the GP is
  conditioned on all points with those hyperparameters (one Cholesky). Fitting
  hyperparameters on 40 of 100 Hartmann-6 points, or 20 of 50 Branin points,
  left the regret unchanged, whereas dropping points from the posterior
  (conditioning on 20 of 50 Branin points) made it 100x worse.
* **Kernel restarts taper**: 2 restarts (skopt's default) for fits on up to 50
  points, 1 up to 100, then 0; the restarts did not change the regret on
  Hartmann-6 (100 trials) and cost 2-3x the fit.
* **Fewer candidates for big fits**: the L-BFGS starting points are the best
  of ``min(10,000, 10^6 / points)`` random samples (10,000 up to 100 points).
* **A hard cap** (option ``max_gp_points``, default 1,000): past it the GP sees
  the best half of the cap plus a seeded random sample of the rest, and every
  pending point; the lie value and the duplicate check use the whole history.

Result on the same machine (6 dims): 0.13 s at 100 points, 0.24 s at 400,
0.33 s at 1,000. Trees (``RF``, ``ET``) fit cheaply and use skopt's sampling
acquisition over the same candidate budget and cap.

A **sampled GP search** (``acq_optimizer="sampling"``, what ``asha`` gives its
sampler) is run here, not by ``skopt.Optimizer``, whose per-call overhead alone
was ~13 ms: the GP's input space and an unfitted GP are built once per process
(:class:`UnitBox`); the hyperparameters are fitted directly on at most
:data:`SAMPLED_HYPERPARAMETER_POINTS` points with a loose L-BFGS tolerance
(:data:`SAMPLED_FIT_TOLERANCE`, ~17 likelihood evaluations instead of ~40, same
predictions to three digits), then the GP is conditioned on every point; the
acquisition scores :data:`SAMPLED_CANDIDATES` random candidates and two rounds
of Gaussian steps around the best five (:func:`refine`), ~1,000 predictions
instead of ~8,000. Everything is drawn from the suggestion's seeded stream, so
the suggestion stays a function of the history and the seed. ``asha``'s new
point over a 1,000-trial history: ~200 ms CPU before, ~18 ms after
(``bench/asha_suggest_cost.py``). The thread-pool controller is found once per
process (``threadpoolctl`` rescans the loaded libraries on every call, ~1.4 ms).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from sklearn.base import clone
from threadpoolctl import ThreadpoolController

from orchard.algorithms._gp import best_and_random, make_gp
from orchard.algorithms.base import BaseAlgorithm, Observation, SeenPoints
from orchard.errors import AlgorithmError, ConfigurationError, SpaceExhaustedError
from orchard.space import Space, parse_prior

__all__ = ["BayesianOptimization"]

_ESTIMATORS = ("GP", "RF", "ET")
_ACQ_FUNCS = ("EI", "PI", "LCB", "portfolio")
_PORTFOLIO = ("EI", "PI", "LCB")
_ACQ_OPTIMIZERS = ("auto", "lbfgs", "sampling")
_LIARS: dict[str, Callable[[list[float]], Any]] = {"cl_min": np.min, "cl_mean": np.mean, "cl_max": np.max}
#: Most points the GP kernel hyperparameters are fitted on (see the cost policy).
HYPERPARAMETER_POINTS = 250
#: ``xi`` for one objective unless set: no margin (see the module docstring).
SINGLE_OBJECTIVE_XI = 0.0
#: ``xi`` of ParEGO's expected improvement unless set (its scalarization is on ``[0, 1]``).
SCALARIZED_XI = 0.01
#: Random candidates scored when skopt's pick collides with a seen point.
_FALLBACK_CANDIDATES = 2_000
#: The trees (RF, ET) fit on float32: a dimension past this is rescaled for them.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: A sampled GP search (see the cost policy): random candidates scored first, the best few
#: refined by rounds of Gaussian steps (one scale per round, on the unit box), and the most
#: points its kernel hyperparameters are fitted on.
SAMPLED_CANDIDATES = 500
_REFINED_STARTS = 5
_STEPS_PER_START = 50
_STEP_SCALES = (0.1, 0.03)
SAMPLED_HYPERPARAMETER_POINTS = 48
#: The relative change of the likelihood at which a sampled search's hyperparameter fit stops.
SAMPLED_FIT_TOLERANCE = 1e-3


def kernel_restarts(n_points: int) -> int:
    """Random restarts of the GP hyperparameter fit for a fit on ``n_points`` points."""
    if n_points <= 50:
        return 2
    return 1 if n_points <= 100 else 0


def candidate_count(n_points: int) -> int:
    """Random candidates scored by the acquisition function for a fit on ``n_points`` points."""
    return int(min(10_000, max(1_000, 1_000_000 // max(n_points, 1))))


def select_for_fit(
    completed: Sequence[Observation], cap: int, rng: np.random.Generator
) -> list[Observation]:
    """At most ``cap`` observations: the best ``cap // 2`` plus a random sample of the rest."""
    if len(completed) <= cap:
        return list(completed)
    chosen = best_and_random(np.array([o.objective for o in completed]), cap, rng)
    return [completed[int(i)] for i in chosen]


class BayesianOptimization(BaseAlgorithm):
    """Bayesian optimization: a scikit-optimize surrogate plus a fixed acquisition function.

    Options:
        base_estimator: ``"GP"`` (Gaussian process, default), ``"RF"`` or ``"ET"``
            (random forest, extra trees).
        n_initial_points: random points before the surrogate takes over (default
            10); completed and pending points both count.
        acq_func: ``"EI"`` (default), ``"PI"``, ``"LCB"``, or ``"portfolio"``: each
            suggestion draws one of the three with the seeded stream.
        acq_optimizer: ``"auto"`` (L-BFGS for the GP, sampling for trees),
            ``"lbfgs"`` (GP only; sampling over a space of choices only) or ``"sampling"``.
        xi: the improvement over the best objective that ``EI``/``PI`` ask for, in the
            objective's units (default ``None``: 0 for one objective, see
            :data:`SINGLE_OBJECTIVE_XI`; 0.01 for ParEGO's scalarization, on ``[0, 1]``).
        kappa: exploration of ``LCB`` (default 1.96).
        liar: the value told for pending points: ``"cl_min"`` (default),
            ``"cl_mean"`` or ``"cl_max"`` of the completed objectives.
        max_gp_points: most completed points the surrogate is conditioned on
            (default 1,000); see the cost policy in the module docstring.
    """

    name = "bayes"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "base_estimator": "GP",
        "n_initial_points": 10,
        "acq_func": "EI",
        "acq_optimizer": "auto",
        "xi": None,
        "kappa": 1.96,
        "liar": "cl_min",
        "max_gp_points": 1000,
    }

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        _check_choice(options, "base_estimator", _ESTIMATORS)
        _check_choice(options, "acq_func", _ACQ_FUNCS)
        _check_choice(options, "acq_optimizer", _ACQ_OPTIMIZERS)
        _check_choice(options, "liar", tuple(_LIARS))
        _check_int(options, "n_initial_points", 0)
        _check_int(options, "max_gp_points", 10)
        for key in ("xi", "kappa"):
            value = options[key]
            if key == "xi" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigurationError(f"bayes option {key} must be a number >= 0, got {value!r}")
        if options["acq_optimizer"] == "lbfgs" and options["base_estimator"] != "GP":
            raise ConfigurationError(
                f"bayes option acq_optimizer='lbfgs' needs base_estimator='GP' (tree models have no "
                f"gradient), got base_estimator={options['base_estimator']!r}; use 'auto' or 'sampling'"
            )

    def suggest(
        self,
        completed: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
        n: int = 1,
        seen: SeenPoints | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to ``n`` unseen points; the k-th is chosen with the first k-1 as pending.

        Raises:
            SpaceExhaustedError: no unseen point is left.
            AlgorithmError: the surrogate could not be fitted.
        """
        completed = [o for o in self.at_top_fidelity(completed) if math.isfinite(o.objective)]
        failed = list(self.failed_points(pending))
        pending = list(pending)
        seen = self.seen_points(completed, pending, seen)
        suggestions: list[dict[str, Any]] = []
        for _ in range(n):
            try:
                params = self._suggest_one(completed, pending, seen, failed)
            except SpaceExhaustedError:
                if suggestions:
                    break
                raise
            suggestions.append(params)
            pending.append(params)
            seen.add(params)
        return suggestions

    def _suggest_one(
        self, completed: list[Observation], pending: list[Mapping[str, Any]], seen: SeenPoints,
        failed: list[dict[str, Any]],
    ) -> dict[str, Any]:
        self.check_unseen_left(seen)
        rng = self.rng(completed, pending)
        if not completed or len(completed) + len(pending) < self.options["n_initial_points"]:
            return self.random_unseen(rng, seen)
        with warnings.catch_warnings(), _blas().limit(limits=1, user_api="blas"):
            warnings.simplefilter("ignore")  # skopt's "evaluated at this point before", sklearn's fit notes
            try:
                if self._sampled_gp():
                    return self._sampled_gp_point(completed, pending, failed, rng, seen)
                optimizer = self._fitted_optimizer(completed, pending, failed, rng)
                try:
                    params = self.space.from_skopt_point(optimizer.ask())
                except RuntimeError:  # skopt refused its own pick: an integer past 2**53, rounded as a float,
                    params = None     # fell outside its bounds (randint(2**63 - 1000, 2**63) with RF or ET)
                if params is None or params in seen:
                    params = self._best_unseen_candidate(optimizer, rng, seen)
            except (ValueError, np.linalg.LinAlgError) as err:
                raise AlgorithmError(
                    f"bayes could not fit its {self.options['base_estimator']} surrogate on "
                    f"{len(completed)} completed trials: {err}"
                ) from err
        return params

    def _sampled_gp(self) -> bool:
        """Whether a suggestion is a sampled GP search, done here rather than by ``skopt.Optimizer``."""
        return bool(self.options["base_estimator"] == "GP" and self.options["acq_optimizer"] == "sampling")

    def _sampled_gp_point(
        self, completed: list[Observation], pending: list[Mapping[str, Any]], failed: list[dict[str, Any]],
        rng: np.random.Generator, seen: SeenPoints,
    ) -> dict[str, Any]:
        """The unseen candidate of best acquisition value: random candidates, then local refinement.

        The same fit and acquisition function as skopt's ``Optimizer`` with
        ``acq_optimizer="sampling"``, without its per-call overhead (~13 ms), on
        :data:`SAMPLED_CANDIDATES` candidates whose best are refined by Gaussian steps
        (:func:`refine`) rather than on ~8,000, and with hyperparameters fitted on at most
        :data:`SAMPLED_HYPERPARAMETER_POINTS` points.
        """
        from skopt.acquisition import _gaussian_acquisition

        box = unit_box(self.space)
        points, told = self._training_set(completed, pending, failed, rng)
        values = np.array(told)
        random_state = int(rng.integers(2**31 - 1))
        acq_func = self.options["acq_func"]
        if acq_func == "portfolio":
            acq_func = _PORTFOLIO[int(rng.integers(len(_PORTFOLIO)))]
        model = clone(box.model).set_params(random_state=random_state)
        model.fit(box.space.transform(points), values)

        def score(candidates: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            return np.asarray(_gaussian_acquisition(
                X=candidates, model=model, y_opt=float(np.min(values)), acq_func=acq_func,
                acq_func_kwargs=self._acq_func_kwargs()))

        candidates = box.draw(SAMPLED_CANDIDATES, rng)
        candidates, scores = refine(box, candidates, score(candidates), score, rng)
        for index in np.argsort(scores, kind="stable"):
            params = self.space.from_skopt_point(box.space.inverse_transform(candidates[index:index + 1])[0])
            if params not in seen:
                return params
        return self.random_unseen(rng, seen)

    def _fitted_optimizer(
        self, completed: list[Observation], pending: list[Mapping[str, Any]], failed: list[dict[str, Any]],
        rng: np.random.Generator,
    ) -> Any:
        """A fresh skopt ``Optimizer`` told the (capped) history and the lies, in one fit."""
        points, values = self._training_set(completed, pending, failed, rng)
        optimizer = self._optimizer(len(points), rng)
        optimizer.tell(points, values)
        return optimizer

    def _training_set(
        self, completed: list[Observation], pending: list[Mapping[str, Any]], failed: list[dict[str, Any]],
        rng: np.random.Generator,
    ) -> tuple[list[list[Any]], list[float]]:
        """The surrogate's points and values: the (capped) completed trials, the pending ones told the
        liar's value, and the broken ones told the worst objective, so the next suggestion moves away
        from a point that failed instead of landing beside it again."""
        fit_on = select_for_fit(completed, self.options["max_gp_points"], rng)
        objectives = [o.objective for o in completed]
        lie = float(_LIARS[self.options["liar"]](objectives))
        points = [self.space.to_skopt_point(p) for p in [*(o.params for o in fit_on), *pending, *failed]]
        values = [float(o.objective) for o in fit_on] + [lie] * len(pending) + [max(objectives)] * len(failed)
        return points, values

    def _optimizer(self, n_points: int, rng: np.random.Generator) -> Any:
        from skopt import Optimizer
        from skopt.space import Space as SkoptSpace

        options = self.options
        random_state = int(rng.integers(2**31 - 1))
        acq_func = options["acq_func"]
        if acq_func == "portfolio":
            acq_func = _PORTFOLIO[int(rng.integers(len(_PORTFOLIO)))]
        dimensions = self.space.to_skopt()
        estimator: Any = options["base_estimator"]
        if estimator != "GP" and any(abs(float(getattr(d, bound, 0))) > _FLOAT32_MAX
                                     for d in dimensions for bound in ("low", "high")):
            from skopt.utils import normalize_dimensions

            # RF and ET fit on float32: normal(1e308, 1e300) failed every worker after its initial points.
            # Rescaled to [0, 1] (as skopt does for a GP), only for such spaces: it changes the trees' draws.
            dimensions = normalize_dimensions(dimensions)
        if estimator == "GP":
            restarts = kernel_restarts(min(n_points, HYPERPARAMETER_POINTS))
            estimator = make_gp(dimensions, random_state, restarts, HYPERPARAMETER_POINTS)
        acq_optimizer = options["acq_optimizer"]
        if acq_optimizer == "lbfgs" and SkoptSpace(dimensions).is_categorical:  # as ParEGO does: a GP over
            acq_optimizer = "sampling"  # categories only has no gradient: skopt refused 'lbfgs' later
        return Optimizer(
            dimensions,
            base_estimator=estimator,
            n_initial_points=0,
            acq_func=acq_func,
            acq_optimizer=acq_optimizer,
            random_state=random_state,
            acq_func_kwargs=self._acq_func_kwargs(),
            acq_optimizer_kwargs={"n_points": candidate_count(n_points), "n_restarts_optimizer": 5},
        )

    def _acq_func_kwargs(self) -> dict[str, float]:
        """skopt's ``xi`` and ``kappa`` for one objective."""
        return {"xi": self._xi(SINGLE_OBJECTIVE_XI), "kappa": float(self.options["kappa"])}

    def _xi(self, default: float) -> float:
        """The ``xi`` option, or ``default`` when it is not set (its right value depends on the objective's scale)."""
        xi = self.options["xi"]
        return default if xi is None else float(xi)

    def _best_unseen_candidate(self, optimizer: Any, rng: np.random.Generator, seen: SeenPoints) -> dict[str, Any]:
        """The unseen random candidate with the best acquisition value, else any unseen point.

        skopt's pick lands on a seen point mostly in small discrete spaces, where
        rounding maps the acquisition optimum onto an evaluated point.
        """
        from skopt.acquisition import _gaussian_acquisition

        candidates = optimizer.space.rvs(n_samples=_FALLBACK_CANDIDATES, random_state=int(rng.integers(2**31 - 1)))
        values = _gaussian_acquisition(
            X=optimizer.space.transform(candidates),
            model=optimizer.models[-1],
            y_opt=np.min(optimizer.yi),
            acq_func=optimizer.acq_func,
            acq_func_kwargs=optimizer.acq_func_kwargs,
        )
        for index in np.argsort(values, kind="stable"):
            params = self.space.from_skopt_point(candidates[int(index)])
            if params not in seen:
                return params
        return self.random_unseen(rng, seen)


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's thread pools, found once (scanning the loaded libraries costs ~1.4 ms a call)."""
    return ThreadpoolController()


class UnitBox:
    """skopt's normalized space of a :class:`Space` (the GP's input, one column or more per
    dimension, each in ``[0, 1]``), with the two moves a sampled search makes in it.

    Without integer or (multi-valued) categorical dimensions every point of the box is
    valid and random draws from it are draws from the priors (a log-uniform dimension is
    uniform on its normalized scale); otherwise points are made valid by skopt's inverse
    transform (integers rounded, the largest one-hot column wins), and drawn by skopt.
    """

    def __init__(self, space: Space) -> None:
        from skopt.space import Categorical, Real
        from skopt.space import Space as SkoptSpace
        from skopt.utils import normalize_dimensions

        self.space = SkoptSpace(normalize_dimensions(space.to_skopt()))
        self.model = make_gp(self.space.dimensions, 0, 0, SAMPLED_HYPERPARAMETER_POINTS, SAMPLED_FIT_TOLERANCE)
        fixed = [isinstance(d, Categorical) and len(d.categories) == 1 for d in self.space.dimensions]
        #: Whether every point of the box is a point of the space (no snapping needed).
        self.continuous = all(isinstance(d, Real) or f for d, f in zip(self.space.dimensions, fixed))
        sample = self.space.transform(self.space.rvs(n_samples=1, random_state=0))[0]
        widths = [d.transformed_size for d in self.space.dimensions]
        #: The columns of one-valued dimensions (the ``fidelity`` a sampler is told), with their value.
        self.fixed = np.repeat(fixed, widths)
        self.fixed_values = sample[self.fixed]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
        """``n`` random points of the space, in the box."""
        if not self.continuous:
            drawn = self.space.rvs(n_samples=n, random_state=int(rng.integers(2**31 - 1)))
            return np.asarray(self.space.transform(drawn))
        return self.valid(rng.random((n, len(self.fixed))))

    def valid(self, points: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``points`` moved into the box, then onto the nearest points of the space.

        A coordinate past a face is reflected back (``-0.05`` becomes ``0.05``), not clipped:
        clipping would put every step past a face exactly on it, and a search that scores
        them would favour the faces for that reason alone.
        """
        points = np.clip(1.0 - np.abs(1.0 - np.abs(points)), 0.0, 1.0)
        points[:, self.fixed] = self.fixed_values
        if not self.continuous:
            points = np.asarray(self.space.transform(self.space.inverse_transform(points)))
        return points


def unit_box(space: Space) -> UnitBox:
    """The :class:`UnitBox` of ``space``, built once per process for each space (see :func:`_unit_box`)."""
    return _unit_box(tuple((name, str(prior)) for name, prior in space.items()))


@functools.lru_cache(maxsize=16)
def _unit_box(key: tuple[tuple[str, str], ...]) -> UnitBox:
    """The :class:`UnitBox` of the space whose priors are ``key``, built once per process (building
    skopt's space costs ~10 ms, more than the rest of a sampled search)."""
    return UnitBox(Space({name: parse_prior(name, text) for name, text in key}))


def refine(
    box: UnitBox, candidates: np.ndarray[Any, Any], scores: np.ndarray[Any, Any],
    score: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]], rng: np.random.Generator,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``candidates`` and their ``scores`` (lower is better), grown by rounds of local search.

    Each round draws :data:`_STEPS_PER_START` Gaussian steps (the round's scale in
    :data:`_STEP_SCALES`, on the unit box) around each of the :data:`_REFINED_STARTS`
    best candidates so far, made valid points by :meth:`UnitBox.valid`.
    """
    for scale in _STEP_SCALES:
        starts = candidates[np.argsort(scores, kind="stable")[:_REFINED_STARTS]]
        steps = np.repeat(starts, _STEPS_PER_START, axis=0)
        steps = box.valid(steps + rng.normal(0.0, scale, size=steps.shape))
        candidates = np.vstack([candidates, steps])
        scores = np.concatenate([scores, score(steps)])
    return candidates, scores


def _check_choice(options: dict[str, Any], key: str, valid: tuple[str, ...]) -> None:
    if options[key] not in valid:
        raise ConfigurationError(
            f"bayes option {key} must be one of {', '.join(map(repr, valid))}, got {options[key]!r}"
        )


def _check_int(options: dict[str, Any], key: str, minimum: int) -> None:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"bayes option {key} must be an integer >= {minimum}, got {value!r}")
