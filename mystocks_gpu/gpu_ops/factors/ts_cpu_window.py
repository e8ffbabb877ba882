"""CPU (numba) time-series kernels over the window: TsRank, WMA, Slope, Rsquare, Resi, Skew, Kurt
scan it (O(w) per bar); Min, Max, IdxMax, IdxMin keep a monotonic deque (O(1) amortised,
:func:`ts_extreme`); Quantile keeps the window sorted (O(w) per bar, fewer moves on average).

Same layout, ``out`` argument and window semantics as ``ts_cpu``: ``(n_symbols, n_dates)``
float64, NaN output unless the ``w`` bars ending at ``t`` are all finite. Twin of ``ts_xp``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_NAN = np.nan

# op codes of ts_scan
MIN, MAX, IDXMAX, IDXMIN, TSRANK, WMA, SLOPE, RSQUARE, RESI, SKEW, KURT = range(11)
SCAN_CODES = {
    "Min": MIN, "Max": MAX, "IdxMax": IDXMAX, "IdxMin": IDXMIN, "TsRank": TSRANK, "WMA": WMA,
    "Slope": SLOPE, "Rsquare": RSQUARE, "Resi": RESI, "Skew": SKEW, "Kurt": KURT,
}


@njit(cache=True, error_model="numpy")
def _bad_prefix(row: np.ndarray) -> np.ndarray:
    """``c[t]`` = number of non-finite values in ``row[:t]``."""
    c = np.zeros(row.shape[0] + 1, dtype=np.int64)
    for t in range(row.shape[0]):
        c[t + 1] = c[t] + (0 if math.isfinite(row[t]) else 1)
    return c


@njit(cache=True, error_model="numpy")
def _scan(xs: np.ndarray, t0: int, w: int, code: int) -> float:
    """The statistic of ``xs[t0 : t0 + w]`` (all finite)."""
    if code == MIN or code == MAX or code == IDXMAX or code == IDXMIN:
        best = xs[t0]
        pos = 0
        for i in range(1, w):
            v = xs[t0 + i]
            if (code == MIN or code == IDXMIN) and v < best:
                best = v
                pos = i
            elif (code == MAX or code == IDXMAX) and v > best:
                best = v
                pos = i
        return best if (code == MIN or code == MAX) else float(pos + 1)
    if code == TSRANK:
        last = xs[t0 + w - 1]
        less = 0
        eq = 0
        for i in range(w):
            v = xs[t0 + i]
            if v < last:
                less += 1
            elif v == last:
                eq += 1
        return (less + (eq + 1) / 2.0) / w
    if code == WMA:
        acc = 0.0
        for i in range(w):
            acc += (i + 1) * xs[t0 + i]
        return acc / (w * (w + 1) / 2.0)
    mean = 0.0
    for i in range(w):
        mean += xs[t0 + i]
    mean /= w
    allsame = True
    for i in range(1, w):
        if xs[t0 + i] != xs[t0]:
            allsame = False
            break
    if code == SKEW or code == KURT:
        if allsame:
            return _NAN
        m2 = 0.0
        m3 = 0.0
        m4 = 0.0
        for i in range(w):
            d = xs[t0 + i] - mean
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
        n = float(w)
        m2 /= n
        m3 /= n
        m4 /= n
        if m2 <= 0.0:
            return _NAN
        if code == SKEW:
            return math.sqrt(n * (n - 1.0)) / (n - 2.0) * m3 / m2**1.5
        g2 = m4 / (m2 * m2) - 3.0
        return (n - 1.0) / ((n - 2.0) * (n - 3.0)) * ((n + 1.0) * g2 + 6.0)
    # regression of x on 1..w
    ibar = (w + 1) / 2.0
    sxx = w * (w * w - 1.0) / 12.0
    sxy = 0.0
    syy = 0.0
    for i in range(w):
        d = xs[t0 + i] - mean
        sxy += (i + 1 - ibar) * d
        syy += d * d
    slope = sxy / sxx
    if code == SLOPE:
        return slope
    if code == RSQUARE:
        if allsame or syy <= 0.0:
            return _NAN
        return min(1.0, sxy * sxy / (sxx * syy))
    return xs[t0 + w - 1] - (mean + slope * (w - ibar))  # RESI


@njit(cache=True, nogil=True, error_model="numpy")
def ts_extreme(x: np.ndarray, w: int, code: int, out: np.ndarray) -> np.ndarray:
    """Min / Max / IdxMin / IdxMax (``code``) over ``w`` bars, ``(n_symbols, n_dates)`` -> same
    shape, O(1) amortised per bar (a monotonic deque of window positions).

    The deque holds the positions whose value no later bar beats (for Max: positions with
    strictly decreasing values, an equal later value kept behind the earlier one), so its front
    is the window's extreme and, among equal extremes, the oldest: IdxMax/IdxMin are the 1-based
    position of the first extreme (1 = oldest), as :func:`_scan`. A non-finite bar empties the
    deque (every window holding it is NaN)."""
    s_n, t_n = x.shape
    dq = np.empty(t_n, dtype=np.int64)
    want_max = code == MAX or code == IDXMAX
    want_pos = code == IDXMAX or code == IDXMIN
    for s in range(s_n):
        row = x[s]
        head = 0
        tail = 0  # deque = dq[head:tail]
        last_bad = -1
        for t in range(t_n):
            v = row[t]
            if not math.isfinite(v):
                last_bad = t
                head = 0
                tail = 0
                out[s, t] = _NAN
                continue
            if want_max:
                while tail > head and row[dq[tail - 1]] < v:
                    tail -= 1
            else:
                while tail > head and row[dq[tail - 1]] > v:
                    tail -= 1
            dq[tail] = t
            tail += 1
            if dq[head] <= t - w:
                head += 1
            if t >= w - 1 and t - last_bad >= w:
                p = dq[head]
                out[s, t] = float(p - (t - w + 1) + 1) if want_pos else row[p]
            else:
                out[s, t] = _NAN
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def ts_scan(x: np.ndarray, w: int, code: int, out: np.ndarray) -> np.ndarray:
    """Rolling statistic ``code`` (see :data:`SCAN_CODES`) over ``w`` bars.

    IdxMax/IdxMin: 1-based position of the first extreme, 1 = oldest bar of the window.
    TsRank: (number below + (number equal + 1) / 2) / w, the last bar's average-rank percentile.
    WMA: weights 1..w, newest = w. Slope/Rsquare/Resi: OLS of x on 1..w (Resi = last bar's
    residual; Rsquare NaN for a constant window). Skew/Kurt: pandas' bias-corrected sample
    skewness and excess kurtosis (NaN for a constant window)."""
    s_n, t_n = x.shape
    for s in range(s_n):
        row = x[s]
        bad = _bad_prefix(row)
        for t in range(t_n):
            if t >= w - 1 and bad[t + 1] - bad[t + 1 - w] == 0:
                out[s, t] = _scan(row, t + 1 - w, w, code)
            else:
                out[s, t] = _NAN
    return out


@njit(cache=True, error_model="numpy")
def _sorted_remove(buf: np.ndarray, n: int, v: float) -> int:
    lo = np.searchsorted(buf[:n], v)
    for i in range(lo, n - 1):
        buf[i] = buf[i + 1]
    return n - 1


@njit(cache=True, error_model="numpy")
def _sorted_insert(buf: np.ndarray, n: int, v: float) -> int:
    pos = np.searchsorted(buf[:n], v)
    for i in range(n, pos, -1):
        buf[i] = buf[i - 1]
    buf[pos] = v
    return n + 1


@njit(cache=True, error_model="numpy")
def _sorted_replace(buf: np.ndarray, n: int, old: float, new: float) -> None:
    """Replace one ``old`` in the sorted ``buf[:n]`` by ``new``, keeping it sorted: only the
    values between the two slots move (a third of the window on average, not all of it)."""
    i = np.searchsorted(buf[:n], old)
    if new > old:
        while i + 1 < n and buf[i + 1] < new:
            buf[i] = buf[i + 1]
            i += 1
    else:
        while i > 0 and buf[i - 1] > new:
            buf[i] = buf[i - 1]
            i -= 1
    buf[i] = new


@njit(cache=True, nogil=True, error_model="numpy")
def ts_quantile(x: np.ndarray, w: int, q: float, out: np.ndarray) -> np.ndarray:
    """Rolling quantile ``q`` with pandas' linear interpolation: ``idx = q (w - 1)``,
    ``lo + (hi - lo) (idx - floor(idx))`` over the sorted window."""
    s_n, t_n = x.shape
    for s in range(s_n):
        row = x[s]
        buf = np.empty(w + 1, dtype=np.float64)
        n = 0
        bad = 0
        for t in range(t_n):
            v = row[t]
            u = row[t - w] if t >= w else _NAN
            if math.isfinite(v) and math.isfinite(u):
                _sorted_replace(buf, n, u, v)
            else:
                if math.isfinite(v):
                    n = _sorted_insert(buf, n, v)
                else:
                    bad += 1
                if t >= w:
                    if math.isfinite(u):
                        n = _sorted_remove(buf, n, u)
                    else:
                        bad -= 1
            if t >= w - 1 and bad == 0:
                idx = q * (w - 1)
                i = int(idx)
                if i == idx:
                    out[s, t] = buf[i]
                else:
                    lo = buf[i]
                    out[s, t] = lo + (buf[i + 1] - lo) * (idx - i)
            else:
                out[s, t] = _NAN
    return out
