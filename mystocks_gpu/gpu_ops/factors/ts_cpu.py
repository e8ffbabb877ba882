"""CPU (numba) time-series kernels, O(1) per bar: Ref, Delta, Sum, Mean, Std, Var, Corr, Cov, EMA.

Layout: every array is ``(n_symbols, n_dates)`` float64, C-contiguous (one row per symbol, so a
symbol's history is contiguous); each kernel fills its last argument ``out`` (the shape of ``x``)
and returns it; kernels are serial and release the GIL; the engine runs them on blocks of symbols
in threads (``threads.run_blocks``), each block writing its rows of one output. Twin of ``ts_xp`` (same
results to rounding; the tests compare the two and both against pandas).

Window semantics (``w`` bars): the output at bar ``t`` is NaN unless ``t >= w - 1`` and every
value in ``x[t-w+1 .. t]`` is finite (pandas ``rolling(w, min_periods=w)``, with ±inf treated as
missing). Sum/Mean follow pandas' online algorithm exactly (see ``ts_sum``); the running variance
uses Welford add/remove; a window of ``w`` identical values has variance exactly 0 (and a
correlation of NaN), as in pandas.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_NAN = np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def ts_ref(x: np.ndarray, d: int, out: np.ndarray) -> np.ndarray:
    """``x`` shifted ``d`` bars later (NaN for the first ``d`` bars)."""
    s_n, t_n = x.shape
    for s in range(s_n):
        for t in range(t_n):
            out[s, t] = x[s, t - d] if t >= d else _NAN
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def ts_delta(x: np.ndarray, d: int, out: np.ndarray) -> np.ndarray:
    """``x[t] - x[t - d]``."""
    s_n, t_n = x.shape
    for s in range(s_n):
        for t in range(t_n):
            out[s, t] = x[s, t] - x[s, t - d] if t >= d else _NAN
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def ts_sum(x: np.ndarray, w: int, mean: bool, out: np.ndarray) -> np.ndarray:
    """Rolling sum (``mean=False``) or mean (``mean=True``) over ``w`` bars, ``(n_symbols,
    n_dates)`` -> same shape.

    The same online algorithm as pandas' ``roll_sum`` / ``roll_mean`` (fixed window), so the
    result equals ``rolling(w, min_periods=w).sum()`` / ``.mean()`` bit for bit: per bar the
    leaving value is removed first, then the new one added, each with its own Kahan compensation
    (one for adds, one for removes); a window whose last ``w`` observed values are all equal
    gives ``value * w`` (mean: ``value``); a mean of all non-negative (non-positive) values is
    clipped at 0. Bit-level agreement matters: a ratio of two sums such as
    ``Sum(Greater(dx, 0), d) / Sum(Abs(dx), d)`` is a tie (1.0 or 0.0) for many symbols, and a
    different rounding of the sums breaks those ties and changes rank metrics by ~1e-3.
    """
    s_n, t_n = x.shape
    for s in range(s_n):
        acc = 0.0
        comp_add = 0.0
        comp_rem = 0.0
        nobs = 0
        neg = 0
        run = 0
        prev = _NAN
        bad = 0
        for t in range(t_n):
            if t >= w:
                u = x[s, t - w]
                if math.isfinite(u):
                    nobs -= 1
                    y = -u - comp_rem
                    tt = acc + y
                    comp_rem = tt - acc - y
                    acc = tt
                    if math.copysign(1.0, u) < 0.0:
                        neg -= 1
                else:
                    bad -= 1
            v = x[s, t]
            if math.isfinite(v):
                nobs += 1
                y = v - comp_add
                tt = acc + y
                comp_add = tt - acc - y
                acc = tt
                if math.copysign(1.0, v) < 0.0:
                    neg += 1
                run = run + 1 if v == prev else 1
                prev = v
            else:
                bad += 1
            if t >= w - 1 and bad == 0:
                if mean:
                    r = acc / nobs
                    if run >= nobs:
                        r = prev
                    elif neg == 0 and r < 0.0:
                        r = 0.0
                    elif neg == nobs and r > 0.0:
                        r = 0.0
                    out[s, t] = r
                else:
                    out[s, t] = prev * nobs if run >= nobs else acc
            else:
                out[s, t] = _NAN
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def ts_var(x: np.ndarray, w: int, std: bool, out: np.ndarray) -> np.ndarray:
    """Rolling variance (ddof=1), or its square root with ``std=True``."""
    s_n, t_n = x.shape
    for s in range(s_n):
        n = 0
        mean = 0.0
        ssq = 0.0
        bad = 0
        run = 0
        for t in range(t_n):
            v = x[s, t]
            if math.isfinite(v):
                n += 1
                delta = v - mean
                mean += delta / n
                ssq += delta * (v - mean)
                run = run + 1 if (t > 0 and v == x[s, t - 1]) else 1
            else:
                bad += 1
                run = 0
            if t >= w:
                u = x[s, t - w]
                if math.isfinite(u):
                    n -= 1
                    if n == 0:
                        mean = 0.0
                        ssq = 0.0
                    else:
                        delta = u - mean
                        mean -= delta / n
                        ssq -= delta * (u - mean)
                else:
                    bad -= 1
            if t >= w - 1 and bad == 0:
                var = 0.0 if run >= w else max(ssq, 0.0) / (w - 1)
                out[s, t] = math.sqrt(var) if std else var
            else:
                out[s, t] = _NAN
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def ts_cov(x: np.ndarray, y: np.ndarray, w: int, corr: bool, out: np.ndarray) -> np.ndarray:
    """Rolling covariance (ddof=1) or Pearson correlation of ``x`` and ``y`` over ``w`` bars.

    A bar counts when both are finite. Correlation is NaN when either side is constant over the
    window (zero variance)."""
    s_n, t_n = x.shape
    for s in range(s_n):
        n = 0
        mx = 0.0
        my = 0.0
        cxy = 0.0
        m2x = 0.0
        m2y = 0.0
        bad = 0
        runx = 0
        runy = 0
        for t in range(t_n):
            a = x[s, t]
            b = y[s, t]
            if math.isfinite(a) and math.isfinite(b):
                n += 1
                dx = a - mx
                dy = b - my
                mx += dx / n
                my += dy / n
                cxy += dx * (b - my)
                m2x += dx * (a - mx)
                m2y += dy * (b - my)
                runx = runx + 1 if (t > 0 and a == x[s, t - 1]) else 1
                runy = runy + 1 if (t > 0 and b == y[s, t - 1]) else 1
            else:
                bad += 1
                runx = 0
                runy = 0
            if t >= w:
                a = x[s, t - w]
                b = y[s, t - w]
                if math.isfinite(a) and math.isfinite(b):
                    n -= 1
                    if n == 0:
                        mx = my = cxy = m2x = m2y = 0.0
                    else:
                        dx = a - mx
                        dy = b - my
                        mx -= dx / n
                        my -= dy / n
                        cxy -= dx * (b - my)
                        m2x -= dx * (a - mx)
                        m2y -= dy * (b - my)
                else:
                    bad -= 1
            if t >= w - 1 and bad == 0:
                const = runx >= w or runy >= w
                if corr:
                    if const or m2x <= 0.0 or m2y <= 0.0:
                        out[s, t] = _NAN
                    else:
                        r = cxy / math.sqrt(m2x * m2y)
                        out[s, t] = min(1.0, max(-1.0, r))
                else:
                    out[s, t] = 0.0 if const else cxy / (w - 1)
            else:
                out[s, t] = _NAN
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def ts_ema(x: np.ndarray, span: int, out: np.ndarray) -> np.ndarray:
    """``ewm(span, adjust=False, ignore_na=False, min_periods=span).mean()`` per symbol.

    alpha = 2 / (span + 1). A missing bar outputs the previous average (once ``span`` bars have
    been observed) and decays the old weight: after ``[x0, NaN, x2]`` the average is
    ``((1-a)^2 x0 + a x2) / ((1-a)^2 + a)`` (pandas' documented absolute-position weights)."""
    s_n, t_n = x.shape
    alpha = 2.0 / (span + 1.0)
    fac = 1.0 - alpha
    for s in range(s_n):
        wtd = _NAN
        old = 1.0
        nobs = 0
        for t in range(t_n):
            c = x[s, t]
            obs = not math.isnan(c)
            if obs:
                nobs += 1
            if not math.isnan(wtd):
                old *= fac
                if obs:
                    if wtd != c:
                        wtd = (old * wtd + alpha * c) / (old + alpha)
                    old = 1.0
            elif obs:
                wtd = c
            out[s, t] = wtd if nobs >= span else _NAN
    return out
