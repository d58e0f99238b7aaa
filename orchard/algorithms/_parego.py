"""``bayes`` with several objectives or constraints: ParEGO scalarizations, probability of feasibility.

An experiment with one objective and no infeasible trial is handed to
:class:`~orchard.algorithms._bayes.BayesianOptimization` unchanged. Otherwise each
suggestion is one step of ParEGO (Knowles, 2006) on the same surrogates:

1. **Scalarize.** Every completed objective vector is normalized to ``[0, 1]``
   by the range observed so far, then reduced to one number with the augmented
   Chebyshev function ``max_i(w_i f_i) + 0.05 sum_i(w_i f_i)``. The weight vector
   ``w`` is drawn uniformly from the simplex with the worker's seeded stream
   (seed and history size), so the suggestion stays a pure function of the
   history and the seed, and successive suggestions (and workers) aim at
   different parts of the front.
2. **Fit.** The surrogate of ``base_estimator`` (the GP of
   :mod:`orchard.algorithms._gp` by default) is fitted on the scalarized values
   in one fit; pending points are told with the lie of the ``liar`` option
   computed over the feasible scalarized values, as for a single objective, so
   parallel workers spread out. Past ``max_gp_points`` the surrogate sees the best
   half of the cap plus a seeded random sample of the rest.
3. **Constraints.** When some completed trial is infeasible, a second surrogate
   is fitted on the trials' total violation, and the acquisition is expected
   improvement over the best feasible scalarized value times the probability of
   feasibility ``P(violation <= t)``, where the threshold ``t`` is half the
   smallest violation observed (so the feasible region, where the violation is
   exactly 0, reads as feasible and not as a coin toss). Before any feasible
   trial the acquisition is the probability of feasibility alone.
4. **Maximize.** The acquisition (always expected improvement, with the ``xi``
   option; ``acq_func`` applies to a single objective) is scored on
   :func:`~orchard.algorithms._bayes.candidate_count` random candidates; with a GP
   the best 5 are refined by L-BFGS with analytic gradients, as skopt does.

Cost: one surrogate fit per suggestion (two with infeasible trials), with the
single-objective cost policy (hyperparameters fitted on at most 250 points,
tapering restarts); ``bench/multiobjective.py`` reports the seconds per suggestion.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import fmin_l_bfgs_b
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from orchard.algorithms._bayes import (
    _LIARS,
    HYPERPARAMETER_POINTS,
    SCALARIZED_XI,
    BayesianOptimization,
    candidate_count,
    kernel_restarts,
    unit_box,
)
from orchard.algorithms._gp import best_and_random, make_gp
from orchard.algorithms.base import Observation, SeenPoints
from orchard.errors import AlgorithmError

__all__ = ["ParEgoBayes", "chebyshev", "random_weights"]

#: Weight of the sum term of the augmented Chebyshev function (ParEGO's value).
RHO = 0.05
#: Best random candidates refined by L-BFGS, and its iterations (skopt's settings).
_LBFGS_STARTS = 5
_LBFGS_ITERATIONS = 20
#: Smallest predictive deviation used when dividing by it.
_MIN_STD = 1e-9


def chebyshev(vectors: NDArray[Any], weights: NDArray[Any]) -> NDArray[Any]:
    """The augmented Chebyshev scalarization of objective vectors normalized by their observed range.

    Args:
        vectors: ``(n, m)`` objective vectors in minimisation form.
        weights: ``m`` non-negative weights summing to 1.

    Returns:
        ``n`` values, lower is better; a point on every objective's best value scores 0.
    """
    low, high = vectors.min(axis=0), vectors.max(axis=0)
    with np.errstate(over="ignore"):
        wide = not np.isfinite(high - low).all()
    if wide:  # a range past the largest float (-1e308 to 1e308): measured in halves, else inf / inf is nan
        vectors, low, high = vectors / 2, low / 2, high / 2
    span = np.where(high > low, high - low, 1.0)
    weighted = (vectors - low) / span * weights
    return np.asarray(weighted.max(axis=1) + RHO * weighted.sum(axis=1))


def random_weights(count: int, rng: np.random.Generator) -> NDArray[Any]:
    """``count`` weights drawn uniformly from the simplex."""
    return np.asarray(rng.dirichlet(np.ones(count)))


class _Acquisition:
    """Expected improvement of the scalarization times the probability of feasibility (maximized)."""

    def __init__(self, model: Any, y_best: float | None, xi: float,
                 constraint: Any = None, threshold: float = 0.0) -> None:
        self.model, self.y_best, self.xi = model, y_best, xi
        self.constraint, self.threshold = constraint, threshold

    def __call__(self, x: NDArray[Any]) -> NDArray[Any]:
        from skopt.acquisition import gaussian_ei

        value = np.ones(len(x))
        if self.y_best is not None:
            value = np.asarray(gaussian_ei(x, self.model, self.y_best, self.xi))
        if self.constraint is not None:
            mu, std = self.constraint.predict(x, return_std=True)
            value = value * norm.cdf((self.threshold - mu) / np.maximum(std, _MIN_STD))
        return value

    def negative_with_gradient(self, x: NDArray[Any]) -> tuple[float, NDArray[Any]]:
        """``-acquisition`` at one point and its gradient, for L-BFGS."""
        from skopt.acquisition import gaussian_ei

        point = x.reshape(1, -1)
        value, gradient = 1.0, np.zeros(len(x))
        if self.y_best is not None:
            ei, ei_gradient = gaussian_ei(point, self.model, self.y_best, self.xi, return_grad=True)
            value, gradient = float(np.ravel(ei)[0]), np.ravel(ei_gradient)
        if self.constraint is not None:
            mu, std, mu_grad, std_grad = self.constraint.predict(
                point, return_std=True, return_mean_grad=True, return_std_grad=True)
            mu, std = float(mu[0]), max(float(std[0]), _MIN_STD)
            z = (self.threshold - mu) / std
            z_grad = (-np.ravel(mu_grad) * std - (self.threshold - mu) * np.ravel(std_grad)) / std**2
            feasible = float(norm.cdf(z))
            gradient = gradient * feasible + value * float(norm.pdf(z)) * z_grad
            value *= feasible
        return -value, -gradient


class ParEgoBayes(BayesianOptimization):
    """``bayes``: single-objective Bayesian optimization, or ParEGO with several objectives or constraints.

    Same options as :class:`~orchard.algorithms._bayes.BayesianOptimization`; see
    the module docstring for what they mean when the history carries objective
    vectors or infeasible trials. It replaces the parent's one-point step
    (``_suggest_one``), so the parent's loop over ``n`` and its pending handling apply.
    """

    def _suggest_one(
        self, completed: list[Observation], pending: list[Mapping[str, Any]], seen: SeenPoints,
        failed: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """One point: the parent's for one objective and no infeasible trial, else one ParEGO step."""
        used = _scalarizable(completed)
        if not any(len(vector) > 1 or violation > 0 for _, vector, violation in used):
            return super()._suggest_one(completed, pending, seen, failed)
        return self._scalarized_step(completed, used, pending, seen, failed)

    def _scalarized_step(
        self, completed: list[Observation], used: list[tuple[dict[str, Any], tuple[float, ...], float]],
        pending: list[Mapping[str, Any]], taken: SeenPoints, failed: list[dict[str, Any]],
    ) -> dict[str, Any]:
        self.check_unseen_left(taken)
        rng = self.rng(completed, pending)
        if len(completed) + len(pending) < self.options["n_initial_points"]:
            return self.random_unseen(rng, taken)
        weights = random_weights(len(used[0][1]), rng)
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore")
            try:
                return self._maximize(used, [*pending, *failed], weights, rng, taken, len(failed))
            except (ValueError, np.linalg.LinAlgError) as err:
                raise AlgorithmError(
                    f"bayes could not fit its {self.options['base_estimator']} surrogates on "
                    f"{len(used)} completed trials with several objectives or constraints: {err}"
                ) from err

    def _maximize(
        self, used: list[tuple[dict[str, Any], tuple[float, ...], float]], pending: list[Mapping[str, Any]],
        weights: NDArray[Any], rng: np.random.Generator, taken: SeenPoints, failed: int = 0,
    ) -> dict[str, Any]:
        """The next point; the last ``failed`` of ``pending`` are broken trials, told the worst value."""
        space = unit_box(self.space).space  # skopt's normalized space, built once per process
        scalar = chebyshev(np.array([vector for _, vector, _ in used]), weights)
        violation = _finite(np.array([v for _, _, v in used]))
        feasible = violation <= 0
        chosen = best_and_random(scalar, self.options["max_gp_points"], rng)
        lie = float(_LIARS[self.options["liar"]]((scalar[feasible] if feasible.any() else scalar).tolist()))
        x = space.transform([self.space.to_skopt_point(used[i][0]) for i in chosen]
                            + [self.space.to_skopt_point(p) for p in pending])
        lies = np.full(len(pending) - failed, lie)
        y = np.concatenate([scalar[chosen], lies, np.full(failed, scalar.max())])
        acquisition = _Acquisition(self._surrogate(len(y), rng).fit(x, y),
                                   float(scalar[feasible].min()) if feasible.any() else None, self._xi(SCALARIZED_XI))
        if not feasible.all():
            acquisition.constraint = self._surrogate(len(chosen), rng).fit(x[:len(chosen)], violation[chosen])
            acquisition.threshold = 0.5 * float(violation[~feasible].min())
        candidates = space.transform(space.rvs(n_samples=candidate_count(len(y)),
                                               random_state=int(rng.integers(2**31 - 1))))
        scores = acquisition(candidates)
        order = np.argsort(-scores, kind="stable")
        best = candidates[order[0]]
        if self._refines(space):
            best = _refine(acquisition, candidates[order[:_LBFGS_STARTS]], np.array(space.transformed_bounds), best)
        params = self.space.from_skopt_point(space.inverse_transform(best.reshape(1, -1))[0])
        if params not in taken:
            return params
        for index in order:  # rounding mapped the optimum onto a seen point (small discrete spaces)
            params = self.space.from_skopt_point(space.inverse_transform(candidates[index].reshape(1, -1))[0])
            if params not in taken:
                return params
        return self.random_unseen(rng, taken)

    def _surrogate(self, n_points: int, rng: np.random.Generator) -> Any:
        from skopt.utils import cook_estimator

        dimensions = unit_box(self.space).space.dimensions
        random_state = int(rng.integers(2**31 - 1))
        if self.options["base_estimator"] == "GP":
            restarts = kernel_restarts(min(n_points, HYPERPARAMETER_POINTS))
            return make_gp(dimensions, random_state, restarts, HYPERPARAMETER_POINTS)
        return cook_estimator(self.options["base_estimator"], space=dimensions, random_state=random_state)

    def _refines(self, space: Any) -> bool:
        """Whether L-BFGS refines the acquisition: a GP (gradients), not all-categorical, not ``sampling``."""
        return (self.options["base_estimator"] == "GP" and self.options["acq_optimizer"] != "sampling"
                and not space.is_categorical)


def _refine(acquisition: _Acquisition, starts: NDArray[Any], bounds: NDArray[Any],
            best: NDArray[Any]) -> NDArray[Any]:
    """The best point L-BFGS reaches from ``starts``, or ``best`` if none beats it."""
    best_value = float(acquisition(best.reshape(1, -1))[0])
    for start in starts:
        x, value, _ = fmin_l_bfgs_b(acquisition.negative_with_gradient, start, bounds=bounds,
                                    maxiter=_LBFGS_ITERATIONS)
        if -float(value) > best_value:
            best, best_value = np.clip(x, bounds[:, 0], bounds[:, 1]), -float(value)
    return best


def _finite(violation: NDArray[Any]) -> NDArray[Any]:
    """Violations with ``inf`` (a constraint's metric not reported) set to twice the largest finite one
    (to the largest float past half of it: a surrogate refuses ``inf``)."""
    finite = violation[np.isfinite(violation)]
    worst = min(2.0 * float(finite.max()), sys.float_info.max) if finite.size and finite.max() > 0 else 1.0
    return np.where(np.isfinite(violation), violation, worst)


def _scalarizable(completed: Sequence[Observation]) -> list[tuple[dict[str, Any], tuple[float, ...], float]]:
    """``(params, objective vector, violation)`` of the observations with a finite vector.

    With several objectives only observations carrying every objective count (a
    pruned trial carries only its first); with one, the scalar objective is the vector.
    """
    several = any(o.values is not None and len(o.values) > 1 for o in completed)
    rows = []
    for o in completed:
        vector = o.values if several else (o.objective,)
        if vector is not None and all(math.isfinite(v) for v in vector):
            rows.append((o.params, tuple(vector), max(0.0, o.violation)))
    return rows
