"""Covariance and expected-return estimators on return panels, batched: ``returns (B, T, n)``
(``B`` panels of ``T`` periods x ``n`` assets, no NaN) -> ``(B, n, n)`` / ``(B, n)``, as array
programs on ``xp`` (numpy or cupy).

- :func:`sample_cov`: unbiased sample covariance (``ddof=1``, = ``numpy.cov``).
- :func:`ledoit_wolf`: Ledoit-Wolf (2004) shrinkage to ``mu I`` of the (biased, ``ddof=0``)
  covariance of the demeaned returns, with the shrinkage intensity of
  ``sklearn.covariance.ledoit_wolf_shrinkage`` (``assume_centered=False``); returns
  ``(cov, shrinkage (B,))``, equal to ``sklearn.covariance.LedoitWolf().fit(X)``.
- :func:`ewma_covariance`: the RiskMetrics EWMA covariance after the last period
  (``mystocks_gpu.gpu_ops.risk.ewma``; ``demean`` selects pandas' ``ewm().cov(bias=True)``).
- :func:`mean_returns`: the historical mean per asset (per period).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.exceptions import PortfolioInputError
from mystocks_gpu.gpu_ops.risk.ewma import ewma_cov_update

Array = Any


def _check(returns: Array, xp: ModuleType, min_t: int = 2) -> Array:
    r = xp.asarray(returns, dtype=xp.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or r.shape[1] < min_t:
        raise PortfolioInputError(f"returns must have shape (B, T, n) with T >= {min_t}, got {r.shape}")
    if not bool(xp.all(xp.isfinite(r))):
        raise PortfolioInputError("returns contain NaN or inf (fill or drop them first)")
    return r


def mean_returns(returns: Array, xp: ModuleType = np) -> Array:
    """Historical mean per asset ``(B, n)``."""
    return xp.mean(_check(returns, xp, 1), axis=1)


def sample_cov(returns: Array, xp: ModuleType = np) -> Array:
    """Unbiased sample covariance ``(B, n, n)``."""
    r = _check(returns, xp)
    d = r - xp.mean(r, axis=1, keepdims=True)
    return xp.matmul(xp.swapaxes(d, 1, 2), d) / (r.shape[1] - 1)


def ledoit_wolf(returns: Array, xp: ModuleType = np) -> tuple[Array, Array]:
    """``(shrunk covariance (B, n, n), shrinkage (B,))`` (see module docstring)."""
    r = _check(returns, xp, 1)
    B, T, n = r.shape
    X = r - xp.mean(r, axis=1, keepdims=True)
    emp = xp.matmul(xp.swapaxes(X, 1, 2), X) / T
    X2 = X * X
    tr = xp.sum(X2, axis=1) / T  # (B, n) diagonal of emp
    mu = xp.sum(tr, axis=1) / n
    beta_ = xp.sum(xp.matmul(xp.swapaxes(X2, 1, 2), X2), axis=(1, 2))
    delta_ = xp.sum(emp * emp, axis=(1, 2))  # = sum((X'X)^2) / T^2
    beta = (beta_ / T - delta_) / (n * T)
    delta = (delta_ - 2.0 * mu * xp.sum(tr, axis=1) + n * mu * mu) / n
    beta = xp.minimum(beta, delta)
    shrink = xp.where(beta == 0, 0.0, beta / xp.where(delta == 0, 1.0, delta))
    cov = (1.0 - shrink)[:, None, None] * emp + (shrink * mu)[:, None, None] * xp.eye(n)[None]
    return cov, shrink


def ewma_covariance(returns: Array, lam: float = 0.94, demean: bool = False,
                    xp: ModuleType = np) -> Array:
    """RiskMetrics EWMA covariance after the last period ``(B, n, n)``."""
    r = _check(returns, xp, 1)
    B, T, n = r.shape
    cov = xp.zeros((B, n, n))
    mean = xp.zeros((B, n))
    nobs = xp.zeros((B, n), dtype=xp.int64)
    for t in range(T):
        cov, mean, nobs = ewma_cov_update(cov, mean, nobs, r[:, t, :], lam, demean, xp)
    return cov
