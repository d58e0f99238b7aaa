"""The Gaussian-process surrogate of ``bayes``, built for a bounded suggestion cost.

:func:`make_gp` returns the GP that ``gp_minimize`` uses (constant x Matern 5/2
with one length scale per dimension, plus fitted white noise, ``normalize_y``)
as a :class:`FastGaussianProcess`. Fitting is skopt's; only prediction changes:

* skopt computes the predictive standard deviation with
  ``np.einsum("ki,kj,ij->k", K_trans, K_trans, K_inv)``, an unblocked loop of
  O(candidates x points^2) scalar operations: 0.2 s for 10,000 candidates
  against 100 points, 2 s against 400. Here it is ``rowsum((K_trans @ K_inv) *
  K_trans)``, one BLAS product.
* The L-BFGS search of the acquisition function calls ``predict`` with
  gradients for one point about 200 times per suggestion; each call went
  through scikit-learn's generic kernel machinery (``get_params``, ``dir``) for
  ~2 ms of overhead. For the fitted kernel of :func:`make_gp` the kernel and
  its gradient are evaluated directly from the constant and the length scales.

Any other kernel (e.g. skopt's Hamming kernel for all-categorical spaces)
falls back to skopt's implementation. The fast path is checked against skopt's
numbers in ``tests/test_algorithms.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist
from skopt.learning import GaussianProcessRegressor
from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern, Product, Sum, WhiteKernel
from skopt.utils import cook_estimator

__all__ = ["FastGaussianProcess", "make_gp"]

_SQRT5 = math.sqrt(5.0)


def _matern52_parts(kernel: Any) -> tuple[float, np.ndarray] | None:
    """``(constant, length_scales)`` if ``kernel`` is constant x Matern 5/2 (+ white), else ``None``."""
    if isinstance(kernel, Sum) and isinstance(kernel.k2, WhiteKernel):
        kernel = kernel.k1
    if not (isinstance(kernel, Product) and isinstance(kernel.k1, ConstantKernel)):
        return None
    matern = kernel.k2
    if not (isinstance(matern, Matern) and matern.nu == 2.5):
        return None
    return float(kernel.k1.constant_value), np.atleast_1d(np.asarray(matern.length_scale, dtype=float))


class FastGaussianProcess(GaussianProcessRegressor):  # type: ignore[misc]
    """skopt's GP regressor with vectorized, low-overhead prediction (see the module docstring)."""

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


def make_gp(dimensions: list[Any], random_state: int, n_restarts_optimizer: int) -> FastGaussianProcess:
    """The GP that ``gp_minimize`` would use, with ``n_restarts_optimizer`` kernel-fit restarts.

    Args:
        dimensions: the skopt dimensions of the space.
        random_state: seed of the kernel-hyperparameter restarts.
        n_restarts_optimizer: extra random restarts of the hyperparameter fit.
    """
    reference = cook_estimator("GP", space=dimensions, random_state=random_state)
    params = reference.get_params(deep=False)
    params["n_restarts_optimizer"] = n_restarts_optimizer
    return FastGaussianProcess(**params)
