"""Time-series operators as array programs over an array module ``xp`` (CuPy on the GPU, NumPy
for testing): the GPU twin of ``ts_cpu`` / ``ts_cpu_window``.

Layout ``(n_symbols, n_dates)`` float64. Every windowed operator is a loop over the ``w`` lags:
``lag(x, k)`` is ``x`` shifted ``k`` bars later (NaN padded), and the statistic is built from
whole-array operations on the lags (two-pass moments, no running sums), so each step is one
memory-bound kernel over all symbols and dates. A window with any non-finite value gives NaN
(``_bad``), exactly as the CPU kernels. Sums are taken afresh per window, so Sum/Mean equal the
CPU's (pandas' running sums) to rounding, not bit for bit: values that tie exactly in one may
differ by an ulp in the other and rank differently. ``Quantile`` stacks the lags into an
``(n_symbols, n_dates, w)`` array and sorts it: ``w`` times the memory of its input, which the
engine's memory plan accounts for (:data:`SCRATCH`). ``EMA`` is a recursion over dates on
``(n_symbols,)`` vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: extra working memory of an operator, in multiples of one (n_symbols, n_dates) array
SCRATCH: dict[str, int] = {"Quantile": -1}  # -1: w + 2 arrays (depends on the window)


def lag(xp: Any, x: Any, k: int) -> Any:
    """``x`` shifted ``k >= 0`` bars later along axis 1, NaN padded."""
    if k == 0:
        return x
    out = xp.empty_like(x)
    out[:, :k] = np.nan
    out[:, k:] = x[:, : x.shape[1] - k]
    return out


def _bad(xp: Any, x: Any, w: int) -> Any:
    """True where the window of ``w`` bars ending at t is incomplete or holds a non-finite."""
    nf = (~xp.isfinite(x)).astype(np.int32)
    cnt = xp.cumsum(nf, axis=1)
    prev = lag(xp, cnt.astype(np.float64), w)
    win = cnt - xp.where(xp.isnan(prev), 0.0, prev)
    bad = win > 0
    bad[:, : w - 1] = True
    return bad


def _allsame(xp: Any, x: Any, w: int) -> Any:
    same = xp.ones(x.shape, dtype=bool)
    for k in range(1, w):
        same &= lag(xp, x, k) == x
    return same


def _mean(xp: Any, x: Any, w: int) -> Any:
    acc = xp.zeros_like(x)
    for k in range(w):
        acc += lag(xp, x, k)
    return acc / w


def ts_ref(xp: Any, x: Any, d: int) -> Any:
    return lag(xp, x, d).copy() if d else x.copy()


def ts_delta(xp: Any, x: Any, d: int) -> Any:
    return x - lag(xp, x, d)


def ts_sum(xp: Any, x: Any, w: int, mean: bool) -> Any:
    m = _mean(xp, x, w)
    out = m if mean else m * w
    out[_bad(xp, x, w)] = np.nan
    return out


def ts_var(xp: Any, x: Any, w: int, std: bool) -> Any:
    m = _mean(xp, x, w)
    ss = xp.zeros_like(x)
    for k in range(w):
        d = lag(xp, x, k) - m
        ss += d * d
    var = xp.maximum(ss, 0.0) / (w - 1)
    var[_allsame(xp, x, w)] = 0.0
    out = xp.sqrt(var) if std else var
    out[_bad(xp, x, w)] = np.nan
    return out


def ts_cov(xp: Any, x: Any, y: Any, w: int, corr: bool) -> Any:
    both = xp.isfinite(x) & xp.isfinite(y)
    xm = xp.where(both, x, np.nan)
    ym = xp.where(both, y, np.nan)
    mx, my = _mean(xp, xm, w), _mean(xp, ym, w)
    cxy, m2x, m2y = xp.zeros_like(x), xp.zeros_like(x), xp.zeros_like(x)
    for k in range(w):
        dx = lag(xp, xm, k) - mx
        dy = lag(xp, ym, k) - my
        cxy += dx * dy
        m2x += dx * dx
        m2y += dy * dy
    const = _allsame(xp, xm, w) | _allsame(xp, ym, w)
    if corr:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = xp.clip(cxy / xp.sqrt(m2x * m2y), -1.0, 1.0)
        out[const | (m2x <= 0) | (m2y <= 0)] = np.nan
    else:
        out = cxy / (w - 1)
        out[const] = 0.0
    out[_bad(xp, xm, w)] = np.nan
    return out


def ts_ema(xp: Any, x: Any, span: int) -> Any:
    alpha = 2.0 / (span + 1.0)
    fac = 1.0 - alpha
    s_n, t_n = x.shape
    out = xp.empty_like(x)
    wtd = xp.full(s_n, np.nan)
    old = xp.ones(s_n)
    nobs = xp.zeros(s_n, dtype=np.int64)
    for t in range(t_n):
        c = x[:, t]
        obs = ~xp.isnan(c)
        nobs += obs
        have = ~xp.isnan(wtd)
        old = xp.where(have, old * fac, old)
        upd = have & obs & (wtd != c)
        new = (old * wtd + alpha * c) / (old + alpha)
        wtd = xp.where(upd, new, wtd)
        old = xp.where(have & obs, 1.0, old)
        wtd = xp.where(~have & obs, c, wtd)
        out[:, t] = xp.where(nobs >= span, wtd, np.nan)
    return out


def ts_scan(xp: Any, x: Any, w: int, op: str) -> Any:
    """Min, Max, IdxMax, IdxMin, TsRank, WMA, Slope, Rsquare, Resi, Skew, Kurt (see ts_cpu_window)."""
    bad = _bad(xp, x, w)
    if op in ("Min", "Max", "IdxMax", "IdxMin"):
        best = lag(xp, x, w - 1).copy()
        pos = xp.ones_like(x)
        for j in range(1, w):  # j = offset from the oldest bar
            v = lag(xp, x, w - 1 - j)
            upd = v < best if op in ("Min", "IdxMin") else v > best
            best = xp.where(upd, v, best)
            pos = xp.where(upd, float(j + 1), pos)
        out = best if op in ("Min", "Max") else pos
    elif op == "TsRank":
        less, eq = xp.zeros_like(x), xp.zeros_like(x)
        for k in range(w):
            v = lag(xp, x, k)
            less += v < x
            eq += v == x
        out = (less + (eq + 1.0) / 2.0) / w
    elif op == "WMA":
        acc = xp.zeros_like(x)
        for k in range(w):
            acc += (w - k) * lag(xp, x, k)
        out = acc / (w * (w + 1) / 2.0)
    elif op in ("Skew", "Kurt"):
        m = _mean(xp, x, w)
        m2, m3, m4 = xp.zeros_like(x), xp.zeros_like(x), xp.zeros_like(x)
        for k in range(w):
            d = lag(xp, x, k) - m
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
        n = float(w)
        m2, m3, m4 = m2 / n, m3 / n, m4 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            if op == "Skew":
                out = np.sqrt(n * (n - 1.0)) / (n - 2.0) * m3 / m2**1.5
            else:
                g2 = m4 / (m2 * m2) - 3.0
                out = (n - 1.0) / ((n - 2.0) * (n - 3.0)) * ((n + 1.0) * g2 + 6.0)
        out[_allsame(xp, x, w) | (m2 <= 0)] = np.nan
    elif op in ("Slope", "Rsquare", "Resi"):
        m = _mean(xp, x, w)
        ibar = (w + 1) / 2.0
        sxx = w * (w * w - 1.0) / 12.0
        sxy, syy = xp.zeros_like(x), xp.zeros_like(x)
        for k in range(w):
            d = lag(xp, x, k) - m
            sxy += (w - k - ibar) * d
            syy += d * d
        slope = sxy / sxx
        if op == "Slope":
            out = slope
        elif op == "Rsquare":
            with np.errstate(divide="ignore", invalid="ignore"):
                out = xp.minimum(sxy * sxy / (sxx * syy), 1.0)
            out[_allsame(xp, x, w) | (syy <= 0)] = np.nan
        else:
            out = x - (m + slope * (w - ibar))
    else:  # pragma: no cover - guarded by the engine
        raise KeyError(op)
    out = xp.asarray(out, dtype=np.float64)
    out[bad] = np.nan
    return out


def ts_quantile(xp: Any, x: Any, w: int, q: float) -> Any:
    """Rolling quantile (pandas linear interpolation) from the sorted stack of the ``w`` lags."""
    stack = xp.stack([lag(xp, x, w - 1 - j) for j in range(w)], axis=-1)
    stack.sort(axis=-1)
    idx = q * (w - 1)
    i = int(idx)
    if i == idx:
        out = stack[..., i].copy()
    else:
        lo = stack[..., i]
        out = lo + (stack[..., i + 1] - lo) * (idx - i)
    out[_bad(xp, x, w)] = np.nan
    return out
