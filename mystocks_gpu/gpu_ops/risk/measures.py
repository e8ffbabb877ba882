"""Risk measures, batched over accounts, as array programs on ``xp`` (numpy or cupy).

Conventions: positions are ``qty (A, K)`` units of ``K`` symbol slots at prices ``px (A, K)``
(a slot with no symbol has ``qty = 0``); the exposure (market value) of a slot is ``e = qty *
px``; returns per interval (day by default) are simple returns unless the caller passes log
returns; P&L over an interval is ``e' r``. Losses are ``-P&L`` and VaR/CVaR are reported as
positive amounts of money (currency units of the prices).

- Parametric (normal) at confidence ``c``, horizon ``h`` intervals, covariance ``S`` of one
  interval's returns, optional mean return ``mu``: ``sigma = sqrt(e'S e)``, ``z = Phi^-1(c)``,
  ``VaR = z sigma sqrt(h) - e'mu h``, ``CVaR = sigma sqrt(h) phi(z) / (1 - c) - e'mu h``.
- Euler decomposition (``mu = 0``): marginal VaR ``dVaR/de_i = z sqrt(h) (S e)_i / sigma``,
  component VaR ``e_i * marginal_i``; the components sum to the VaR.
- Historical over a window of ``W`` past return vectors ``R (A, W, K)`` (an all-NaN row is not
  filled yet; a NaN entry, e.g. a symbol added after that day, counts as a zero return): scenario
  P&L ``p_w = e' R_w`` (scaled by ``sqrt(h)``), losses ``L = -p``;
  ``VaR = quantile(L, c)`` with linear interpolation between order statistics (``numpy.quantile``'s
  default), ``CVaR`` = mean of the losses ``>= VaR``.
- Max drawdown of an equity series: ``max_t (1 - E_t / max_{s<=t} E_s)`` as a fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from types import ModuleType
from typing import Any

import numba
import numpy as np

Array = Any
_N = NormalDist()


def z_score(confidence: float) -> float:
    """``Phi^-1(confidence)`` (standard normal quantile)."""
    return float(_N.inv_cdf(confidence))


def exposures(qty: Array, px: Array, sector: Array, n_sectors: int, xp: ModuleType = np
              ) -> dict[str, Array]:
    """``gross (A,)``, ``net (A,)``, ``by_symbol (A, K)`` and ``by_sector (A, n_sectors)`` net
    exposure; ``sector (A, K)`` int codes (``-1`` = no sector: counted in no sector)."""
    e = xp.where(qty != 0, qty * px, 0.0)
    e = xp.where(xp.isfinite(e), e, 0.0)
    onehot = (sector[:, :, None] == xp.arange(n_sectors)[None, None, :])
    return {
        "gross": xp.sum(xp.abs(e), axis=1),
        "net": xp.sum(e, axis=1),
        "by_symbol": e,
        "by_sector": xp.sum(e[:, :, None] * onehot, axis=1),
    }


def pnl(qty: Array, px: Array, day_ref: Array, cost: Array, xp: ModuleType = np
        ) -> tuple[Array, Array]:
    """``(day (A,), since_inception (A,))``: ``sum qty (px - day_ref)`` and ``sum qty (px -
    cost)`` (mark-to-market; slots without a price contribute 0)."""
    held = qty != 0
    day = xp.where(held & xp.isfinite(px) & xp.isfinite(day_ref), qty * (px - day_ref), 0.0)
    inc = xp.where(held & xp.isfinite(px) & xp.isfinite(cost), qty * (px - cost), 0.0)
    return xp.sum(day, axis=1), xp.sum(inc, axis=1)


def parametric_var(e: Array, cov: Array, confidence: float, horizon: float = 1.0,
                   mu: Array | None = None, xp: ModuleType = np) -> tuple[Array, Array]:
    """``(VaR (A,), CVaR (A,))`` of exposures ``e (A, K)`` under ``N(mu, cov)`` returns."""
    sig = xp.sqrt(xp.maximum(xp.einsum("ai,aij,aj->a", e, cov, e), 0.0)) * math.sqrt(horizon)
    z = z_score(confidence)
    drift = 0.0 if mu is None else xp.sum(e * mu, axis=1) * horizon
    var = z * sig - drift
    cvar = sig * _N.pdf(z) / (1.0 - confidence) - drift
    return var, cvar


def euler_var(e: Array, cov: Array, confidence: float, horizon: float = 1.0,
              xp: ModuleType = np) -> tuple[Array, Array]:
    """``(marginal (A, K), component (A, K))`` parametric VaR (zero mean); components sum to
    the VaR; 0 where the portfolio variance is 0."""
    se = xp.einsum("aij,aj->ai", cov, e)
    sig = xp.sqrt(xp.maximum(xp.sum(e * se, axis=1), 0.0))
    k = z_score(confidence) * math.sqrt(horizon)
    marginal = xp.where(sig[:, None] > 0, k * se / xp.where(sig > 0, sig, 1.0)[:, None], 0.0)
    return marginal, e * marginal


@numba.njit(cache=True, nogil=True)
def _scenario_pnl_cpu(window: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - numba
    """CPU twin of the array expression in :func:`historical_var_levels`: ``(pnl (A, W), filled
    (A, W) bool)`` = ``sum_k where(finite, window, 0) * e`` and ``any_k finite`` in one pass over
    ``window (A, W, K)`` (the NumPy form makes four)."""
    A, W, K = window.shape
    pnl = np.empty((A, W))
    filled = np.zeros((A, W), np.bool_)
    for a in range(A):
        for w in range(W):
            acc = 0.0
            f = False
            for k in range(K):
                v = window[a, w, k]
                if np.isfinite(v):
                    f = True
                else:
                    v = 0.0
                acc += v * e[a, k]
            pnl[a, w] = acc
            filled[a, w] = f
    return pnl, filled


def historical_var(e: Array, window: Array, confidence: float, horizon: float = 1.0,
                   xp: ModuleType = np) -> tuple[Array, Array]:
    """``(VaR (A,), CVaR (A,))`` from the return window ``window (A, W, K)`` (all-NaN rows are
    unfilled and ignored, other NaNs count as 0; NaN where an account has no filled row)."""
    return historical_var_levels(e, window, (confidence,), horizon, xp)[0]


def historical_var_levels(e: Array, window: Array, confidences: Sequence[float], horizon: float = 1.0,
                          xp: ModuleType = np) -> list[tuple[Array, Array]]:
    """:func:`historical_var` at each of ``confidences``: the scenario losses ``(A, W)`` are
    computed and sorted once (the ``(A, W, K)`` pass dominates), then each level's quantile and tail."""
    A = window.shape[0]
    if xp is np and window.dtype == np.float64 and np.asarray(e).dtype == np.float64:
        pnl_s, filled = _scenario_pnl_cpu(window, np.asarray(e))
    else:
        fin = xp.isfinite(window)
        filled = xp.any(fin, axis=2)
        pnl_s = xp.einsum("awk,ak->aw", xp.where(fin, window, 0.0), e)
    loss = -pnl_s * math.sqrt(horizon)
    n = xp.sum(filled, axis=1)
    srt = xp.sort(xp.where(filled, loss, xp.inf), axis=1)  # unfilled sort last
    nan = xp.full(A, xp.nan)
    out = []
    for confidence in confidences:
        pos = confidence * (xp.maximum(n, 1) - 1).astype(float)
        lo = xp.floor(pos).astype(xp.int64)
        hi = xp.minimum(lo + 1, xp.maximum(n - 1, 0))
        frac = pos - lo
        vlo = xp.take_along_axis(srt, lo[:, None], axis=1)[:, 0]
        vhi = xp.take_along_axis(srt, hi[:, None], axis=1)[:, 0]
        vlo_f = xp.where(xp.isfinite(vlo), vlo, 0.0)  # unfilled accounts: masked below
        vhi_f = xp.where(xp.isfinite(vhi), vhi, vlo_f)
        var = xp.where(frac > 0, vlo_f + frac * (vhi_f - vlo_f), vlo)
        tail = filled & (loss >= var[:, None])
        cvar = xp.sum(xp.where(tail, loss, 0.0), axis=1) / xp.maximum(xp.sum(tail, axis=1), 1)
        out.append((xp.where(n > 0, var, nan), xp.where(n > 0, cvar, nan)))
    return out


def max_drawdown(equity: Array, peak0: Array | None = None, dd0: Array | None = None,
                 xp: ModuleType = np) -> tuple[Array, Array]:
    """``(max_dd (A,), peak (A,))`` over ``equity (A, T)`` continuing from a running ``peak0``
    and ``dd0`` (streaming); NaN equity values are skipped. One pass over ``T`` (columns)."""
    A, T = equity.shape
    peak = xp.full(A, -xp.inf) if peak0 is None else peak0.copy()
    dd = xp.zeros(A) if dd0 is None else dd0.copy()
    for t in range(T):
        v = equity[:, t]
        ok = xp.isfinite(v)
        peak = xp.where(ok, xp.maximum(peak, v), peak)
        cur = xp.where(ok & (peak > 0), 1.0 - v / xp.where(peak > 0, peak, 1.0), 0.0)
        dd = xp.maximum(dd, cur)
    return dd, peak
