"""EWMA covariance of returns (RiskMetrics), as an incremental batched update.

RiskMetrics (J.P. Morgan 1996), decay ``lam`` (default 0.94, daily), ``a = 1 - lam``:

- zero-mean (``demean=False``, the RiskMetrics recursion): ``S_t = lam S_t-1 + a r_t r_t'``,
  seeded with ``S_0 = r_0 r_0'``. This is exactly pandas'
  ``DataFrame(r_i * r_j).ewm(alpha=1 - lam, adjust=False).mean()`` for every pair ``(i, j)``.
  No setting of pandas' ``ewm(...).cov()`` reproduces it, because ``cov`` always subtracts an
  exponentially weighted mean.
- demeaned (``demean=True``): ``m_t = lam m_t-1 + a r_t``, ``C_t = lam (C_t-1 + d d') +
  a (r_t - m_t)(r_t - m_t)'`` with ``d = m_t-1 - m_t``, seeded with ``m_0 = r_0``, ``C_0 = 0``:
  pandas' ``DataFrame(r).ewm(alpha=1 - lam, adjust=False).cov(bias=True)``. With ``bias=False``
  pandas multiplies by ``1 / (1 - w2_t)``, ``w2_t = lam^2 w2_t-1 + a^2``, ``w2_0 = 1`` (NaN at
  t = 0); :func:`ewma_cov` applies it with ``bias=False``.

Shapes: a batch of ``A`` accounts (or any leading axis) with ``K`` series each; ``xp`` = numpy or
cupy. Missing returns are the caller's policy (the risk step carries stale prices forward, i.e.
a zero return, see ``step.py``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any


def ewma_cov_update(cov: Array, mean: Array, n_obs: Array, r: Array, lam: float, demean: bool,
                    xp: ModuleType = np) -> tuple[Array, Array, Array]:
    """One step for a batch: ``cov (A, K, K)``, ``mean (A, K)`` and per-series update counts
    ``n_obs (A, K)`` updated with returns ``r (A, K)``; returns new ``(cov, mean, n_obs)``.

    A NaN return leaves that series' row and column unchanged. A series with ``n_obs == 0`` is
    seeded at its first return: zero-mean pairs involving it start at ``r_i r_j`` (pandas'
    pairwise behaviour); demeaned, its mean starts at ``r_i`` and its covariances at 0 (equal to
    pandas when the series start together)."""
    a = 1.0 - lam
    ok = xp.isfinite(r)
    rz = xp.where(ok, r, 0.0)
    first = n_obs == 0
    pair_ok = ok[:, :, None] & ok[:, None, :]
    pair_first = first[:, :, None] | first[:, None, :]
    if demean:
        m_new = xp.where(ok, xp.where(first, rz, lam * mean + a * rz), mean)
        dm = xp.where(first, 0.0, mean - m_new)
        dev = rz - m_new
        upd = lam * (cov + dm[:, :, None] * dm[:, None, :]) + a * dev[:, :, None] * dev[:, None, :]
        c_new = xp.where(pair_ok, xp.where(pair_first, 0.0, upd), cov)
    else:
        m_new = mean
        outer = rz[:, :, None] * rz[:, None, :]
        c_new = xp.where(pair_ok, xp.where(pair_first, outer, lam * cov + a * outer), cov)
    return c_new, m_new, n_obs + ok


def ewma_cov(returns: Array, lam: float = 0.94, demean: bool = False, bias: bool = True,
             xp: ModuleType = np) -> Array:
    """The EWMA covariance after each of ``T`` return vectors ``returns (T, K)`` (no NaN):
    ``(T, K, K)``; ``bias=False`` applies pandas' correction ``1 / (1 - w2_t)`` (NaN at t = 0)."""
    T, K = returns.shape
    cov = xp.zeros((1, K, K))
    mean = xp.zeros((1, K))
    n = xp.zeros((1, K), dtype=xp.int64)
    out = xp.empty((T, K, K))
    w2 = 1.0
    a = 1.0 - lam
    for t in range(T):
        cov, mean, n = ewma_cov_update(cov, mean, n, returns[t][None, :], lam, demean, xp)
        if t:
            w2 = lam * lam * w2 + a * a
        out[t] = cov[0] if bias else (cov[0] / (1.0 - w2) if w2 < 1.0 else cov[0] * xp.nan)
    return out
