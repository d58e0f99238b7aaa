"""The Gaussian-process surrogate of ``bayes``, built for a bounded suggestion cost.

:func:`make_gp` returns the GP that ``gp_minimize`` uses (constant x Matern 5/2
with one length scale per dimension, plus fitted white noise, ``normalize_y``)
as a :class:`FastGaussianProcess`, which computes the same quantities with
less work:

* **Likelihood.** scikit-learn's hyperparameter fit evaluates the log marginal
  likelihood 20-100 times; each evaluation rebuilt the kernel through its
  generic machinery (``clone_with_theta``, ``get_params``, ``dir``), ~2 ms of
  overhead at small sizes. :func:`_matern52_lml` computes the likelihood and its
  gradient for this kernel directly.
* **Subsampled hyperparameters.** With ``hyperparameter_points``, a fit on more
  points learns the hyperparameters on a subsample (best half by objective plus
  a random sample of the rest), then conditions the GP on every point with them.
* **Predictive std.** skopt computes it with
  ``np.einsum("ki,kj,ij->k", K_trans, K_trans, K_inv)``, an unblocked loop of
  O(candidates x points^2) scalar steps (0.2 s for 10,000 candidates against
  100 points, 2 s against 400); here it is ``rowsum((K_trans @ K_inv) * K_trans)``.
* **Gradients.** The L-BFGS search of the acquisition function predicts one
  point with gradients ~200 times per suggestion; the kernel and its gradient
  in the point are evaluated directly from the constant and the length scales.

Any other kernel (e.g. skopt's Hamming kernel for all-categorical spaces)
falls back to the skopt/scikit-learn code. ``tests/test_algorithms.py`` checks
the direct computations against skopt's and scikit-learn's numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_solve, cholesky
from scipy.optimize import minimize
from scipy.spatial.distance import cdist
from sklearn.base import clone
from skopt.learning import GaussianProcessRegressor
from skopt.learning.gaussian_process.gpr import _param_for_white_kernel_in_Sum
from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern, Product, Sum, WhiteKernel
from skopt.utils import cook_estimator

__all__ = ["FastGaussianProcess", "make_gp"]

_SQRT5 = math.sqrt(5.0)


def _matern52_parts(kernel: Any) -> tuple[float, NDArray[Any]] | None:
    """``(constant, length_scales)`` if ``kernel`` is constant x Matern 5/2 (+ white), else ``None``."""
    if isinstance(kernel, Sum) and isinstance(kernel.k2, WhiteKernel):
        kernel = kernel.k1
    if not (isinstance(kernel, Product) and isinstance(kernel.k1, ConstantKernel)):
        return None
    matern = kernel.k2
    if not (isinstance(matern, Matern) and matern.nu == 2.5):
        return None
    return float(kernel.k1.constant_value), np.atleast_1d(np.asarray(matern.length_scale, dtype=float))


def _fittable_parts(kernel: Any, n_dims: int) -> bool:
    """Whether ``kernel`` is constant x Matern 5/2 (one length scale per dimension) + white noise,
    all three hyperparameters free, so that its theta is ``log [c, l_1..l_d, noise]``."""
    if not (isinstance(kernel, Sum) and isinstance(kernel.k2, WhiteKernel)):
        return False
    parts = _matern52_parts(kernel)
    hyperparameters = kernel.hyperparameters
    return (
        parts is not None
        and len(parts[1]) == n_dims
        and len(hyperparameters) == 3
        and not any(h.fixed for h in hyperparameters)
        and sum(h.n_elements for h in hyperparameters) == n_dims + 2
    )


def _matern52_lml(
    theta: NDArray[Any], x: NDArray[Any], y: NDArray[Any], nugget: Any, eval_gradient: bool
) -> tuple[float, NDArray[Any]] | float:
    """Log marginal likelihood (and its gradient in log-hyperparameters) of constant x Matern 5/2
    + white noise, computed as scikit-learn's ``GaussianProcessRegressor.log_marginal_likelihood``
    does for that kernel, without its per-call overhead."""
    constant, length_scale, noise = np.exp(theta[0]), np.exp(theta[1:-1]), np.exp(theta[-1])
    n = x.shape[0]
    scaled = x / length_scale
    sq_parts = (scaled[:, None, :] - scaled[None, :, :]) ** 2  # (n, n, d)
    dist = np.sqrt(sq_parts.sum(axis=-1))
    decay = np.exp(-_SQRT5 * dist)
    matern = (1.0 + _SQRT5 * dist + (5.0 / 3.0) * dist**2) * decay
    k = constant * matern
    k[np.diag_indices(n)] += noise + nugget
    try:
        lower = cholesky(k, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return (-np.inf, np.zeros_like(theta)) if eval_gradient else -np.inf
    alpha = cho_solve((lower, True), y, check_finite=False)
    lml = -0.5 * float(y @ alpha) - float(np.log(np.diag(lower)).sum()) - n / 2 * math.log(2 * math.pi)
    if not eval_gradient:
        return float(lml)
    inner = np.outer(alpha, alpha) - cho_solve((lower, True), np.eye(n), check_finite=False)
    weight = inner * (constant * (5.0 / 3.0) * (1.0 + _SQRT5 * dist) * decay)
    gradient = np.empty_like(theta)
    gradient[0] = 0.5 * float(np.sum(inner * (constant * matern)))
    gradient[1:-1] = 0.5 * (weight.reshape(-1) @ sq_parts.reshape(n * n, -1))
    gradient[-1] = 0.5 * noise * float(np.trace(inner))
    return lml, gradient


def _negated(value: Any) -> tuple[float, NDArray[Any]]:
    """``-(lml, gradient)``, the objective L-BFGS minimizes."""
    lml, gradient = value
    return -lml, -gradient


def best_and_random(values: NDArray[Any], size: int, rng: np.random.Generator) -> NDArray[Any]:
    """Sorted indices of ``size`` of ``values``: the ``size // 2`` lowest plus a random sample of the rest."""
    if len(values) <= size:
        return np.arange(len(values))
    order = np.argsort(values, kind="stable")
    n_best = size // 2
    rest = rng.choice(order[n_best:], size=size - n_best, replace=False)
    return np.sort(np.concatenate([order[:n_best], rest]))


class FastGaussianProcess(GaussianProcessRegressor):  # type: ignore[misc]
    """skopt's GP regressor with cheaper fitting and prediction (see the module docstring).

    Args:
        hyperparameter_points: fit the kernel hyperparameters on at most this many
            points (the best half by objective plus a random sample of the rest),
            then condition the GP on all points with those hyperparameters.
            ``None``: fit on all points, as scikit-learn does.
        **params: scikit-optimize's ``GaussianProcessRegressor`` parameters.
    """

    def __init__(
        self,
        kernel: Any = None,
        alpha: Any = 1e-10,
        optimizer: Any = "fmin_l_bfgs_b",
        n_restarts_optimizer: int = 0,
        normalize_y: bool = False,
        copy_X_train: bool = True,
        random_state: Any = None,
        noise: Any = None,
        hyperparameter_points: int | None = None,
        fit_tolerance: float | None = None,
    ) -> None:
        super().__init__(
            kernel=kernel, alpha=alpha, optimizer=optimizer, n_restarts_optimizer=n_restarts_optimizer,
            normalize_y=normalize_y, copy_X_train=copy_X_train, random_state=random_state, noise=noise,
        )
        self.hyperparameter_points = hyperparameter_points
        self.fit_tolerance = fit_tolerance

    def fit(self, X: Any, y: Any) -> FastGaussianProcess:
        """Fit the GP; past ``hyperparameter_points`` points, learn the kernel on a subsample."""
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if self.fit_tolerance is not None and self._fit_direct(X, y):
            return self
        limit = self.hyperparameter_points
        if limit is None or len(y) <= limit or self.optimizer is None:
            super().fit(X, y)
            return self
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else None
        subset = best_and_random(y, limit, np.random.default_rng(seed))
        probe = clone(self).set_params(hyperparameter_points=None)
        probe.fit(X[subset], y[subset])
        kernel = clone(probe.kernel_)
        present, white = _param_for_white_kernel_in_Sum(kernel)
        if present and probe.noise_ is not None:  # skopt zeroes the fitted noise in kernel_
            kernel.set_params(**{white: WhiteKernel(noise_level=probe.noise_)})
        final = clone(self).set_params(kernel=kernel, optimizer=None, hyperparameter_points=None)
        final.fit(X, y)
        params = self.get_params(deep=False)
        self.__dict__.update({k: v for k, v in vars(final).items() if k not in params})
        return self

    def _fit_direct(self, X: NDArray[Any], y: NDArray[Any]) -> bool:
        """The fit of :meth:`fit` computed directly for the kernel of :func:`make_gp` (``False``: another
        kernel, not fitted), with L-BFGS stopped at a relative change of ``fit_tolerance`` in the likelihood.

        The same quantities as skopt's ``fit`` (normalized targets, white noise fitted then
        dropped from ``kernel_`` into ``noise_``, ``K_inv_``) without scikit-learn's per-fit
        validation and cloning, which cost more than a fit on a few dozen points.
        """
        kernel = self.kernel + WhiteKernel() if self.noise == "gaussian" else self.kernel
        if not (self.normalize_y and y.ndim == 1 and _fittable_parts(kernel, X.shape[1])):
            return False
        mean, std = float(np.mean(y)), float(np.std(y)) or 1.0
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else None
        rng = np.random.default_rng(seed)
        limit = self.hyperparameter_points
        subset = np.arange(len(y)) if limit is None or len(y) <= limit else best_and_random(y, limit, rng)
        x_fit, y_fit = X[subset], (y[subset] - np.mean(y[subset])) / (float(np.std(y[subset])) or 1.0)
        bounds = kernel.bounds
        starts = [kernel.theta] + [rng.uniform(bounds[:, 0], bounds[:, 1]) for _ in range(self.n_restarts_optimizer)]
        best: tuple[float, NDArray[Any]] | None = None
        for start in starts:
            result = minimize(lambda t: _negated(_matern52_lml(t, x_fit, y_fit, self.alpha, True)), start,
                              method="L-BFGS-B", jac=True, bounds=bounds, options={"ftol": self.fit_tolerance})
            if best is None or result.fun < best[0]:
                best = (float(result.fun), result.x)
        assert best is not None
        self.kernel_ = kernel.clone_with_theta(best[1])
        self.X_train_, self.y_train_ = X, (y - mean) / std
        self._y_train_mean = self.y_train_mean_ = mean
        self._y_train_std = self.y_train_std_ = std
        k = self.kernel_(X)
        k[np.diag_indices_from(k)] += self.alpha
        self.L_ = cholesky(k, lower=True, check_finite=False)
        self.alpha_ = cho_solve((self.L_, True), self.y_train_, check_finite=False)
        self.K_inv_ = cho_solve((self.L_, True), np.eye(len(y)), check_finite=False)
        self.log_marginal_likelihood_value_ = -best[0]
        self.noise_ = self.kernel_.k2.noise_level if self.noise == "gaussian" else None
        if self.noise == "gaussian":
            self.kernel_.set_params(k2=WhiteKernel(noise_level=0.0))
        return True

    def log_marginal_likelihood(
        self, theta: Any = None, eval_gradient: bool = False, clone_kernel: bool = True
    ) -> Any:
        """scikit-learn's log marginal likelihood; computed directly for the kernel of :func:`make_gp`."""
        y = getattr(self, "y_train_", None)
        if theta is None or y is None or y.ndim != 1 or not self._lml_is_direct():
            return super().log_marginal_likelihood(theta, eval_gradient, clone_kernel)
        return _matern52_lml(np.asarray(theta, dtype=float), self.X_train_, y, self.alpha, eval_gradient)

    def _lml_is_direct(self) -> bool:
        """Whether ``kernel_`` has the form :func:`_matern52_lml` computes (cached per kernel object:
        reading scikit-learn's ``hyperparameters`` costs as much as the likelihood itself)."""
        kernel = self.kernel_
        key = (kernel, getattr(kernel, "k1", None), getattr(kernel, "k2", None))
        cached = getattr(self, "_direct_kernel", None)
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            cached = self._direct_kernel = (key, _fittable_parts(kernel, self.X_train_.shape[1]))
        return bool(cached[1])

    def predict(
        self,
        X: Any,
        return_std: bool = False,
        return_cov: bool = False,
        return_mean_grad: bool = False,
        return_std_grad: bool = False,
    ) -> Any:
        """Predict like skopt's GP: mean, and optionally std and their gradients at one point."""
        parts = None if return_cov or not hasattr(self, "K_inv_") else _matern52_parts(self.kernel_)
        X = np.asarray(X, dtype=float)
        if parts is None or X.ndim != 2 or (return_std_grad and not return_std):
            return super().predict(X, return_std, return_cov, return_mean_grad, return_std_grad)
        if (return_mean_grad or return_std_grad) and X.shape[0] != 1:
            raise ValueError("gradients are only available for a single point")
        constant, length_scale = parts
        scaled_train = self.X_train_ / length_scale
        dist = cdist(X / length_scale, scaled_train)  # (m, n)
        decay = np.exp(-_SQRT5 * dist)
        k_trans = constant * (1.0 + _SQRT5 * dist + (5.0 / 3.0) * dist**2) * decay
        scale = self.y_train_std_
        y_mean = k_trans @ self.alpha_ * scale + self.y_train_mean_
        result: list[Any] = [y_mean]
        if return_std:
            k_inv_k = k_trans @ self.K_inv_
            y_var = constant - np.einsum("ij,ij->i", k_inv_k, k_trans)
            np.maximum(y_var, 0.0, out=y_var)  # rounding can make it slightly negative
            y_std = np.sqrt(y_var) * scale
            result.append(y_std)
        if return_mean_grad:
            # d k(x, x_i) / dx = -(5/3) c (1 + sqrt5 r) exp(-sqrt5 r) (x - x_i) / l^2
            factor = -(5.0 / 3.0) * constant * (1.0 + _SQRT5 * dist[0]) * decay[0]
            diff = X[0] / length_scale - scaled_train  # (n, d)
            grad = factor[:, None] * diff / length_scale
            result.append(grad.T @ self.alpha_ * scale)
            if return_std_grad:
                if np.allclose(y_std, 0.0):
                    result.append(np.zeros(X.shape[1]))
                else:
                    result.append(-(k_inv_k[0] @ grad) / y_std[0] * scale**2)
        return result[0] if len(result) == 1 else tuple(result)


def make_gp(
    dimensions: list[Any], random_state: int, n_restarts_optimizer: int, hyperparameter_points: int | None = None,
    fit_tolerance: float | None = None,
) -> FastGaussianProcess:
    """The GP that ``gp_minimize`` would use, with the given fitting budget.

    Args:
        dimensions: the skopt dimensions of the space.
        random_state: seed of the kernel-hyperparameter restarts and subsample.
        n_restarts_optimizer: extra random restarts of the hyperparameter fit.
        hyperparameter_points: most points the hyperparameters are fitted on.
        fit_tolerance: stop the hyperparameter fit at this relative change of the
            likelihood (computed directly, see :meth:`FastGaussianProcess.fit`); ``None``:
            scikit-learn's fit and tolerance.
    """
    reference = cook_estimator("GP", space=dimensions, random_state=random_state)
    params = reference.get_params(deep=False)
    params["n_restarts_optimizer"] = n_restarts_optimizer
    return FastGaussianProcess(**params, hyperparameter_points=hyperparameter_points, fit_tolerance=fit_tolerance)
