"""Strategy indicators and signals: CPU kernels (numba) and the CPU/GPU dispatcher.

Indicators are computed once per unique window/period and symbol and shared by the whole grid.
Every indicator at absolute bar ``t`` depends only on the input values inside its window and on
``t`` itself, never on where a chunk starts, so a time chunk that brings ``plan.lead`` bars of
history reproduces an unchunked run bit for bit (RSI, which is recursive, carries its state instead).

Rolling sums use an exact, chunk-invariant *block* order (van Herk / Gil-Werman): the time axis is cut
into blocks ``[b*w, (b+1)*w)`` aligned to absolute bar 0. The window ``[a, t]`` (``a = t-w+1``) is
either one whole block (sum = prefix of the block up to ``t``, left to right) or the suffix of block
``b-1`` from ``a`` (summed right to left from the block's last bar) plus the prefix of block ``b``
up to ``t``. The CPU computes this in O(1) per bar with two scans; the GPU sums the same terms in the
same order directly, so both give identical doubles. NaN anywhere in a window gives NaN (as pandas'
``rolling(w).mean()`` with ``min_periods=w``).

- SMA_w[t] = window sum / w.
- HH_w[t] = max(high[t-w .. t-1]), LL_w[t] = min(low[t-w .. t-1]) (previous ``w`` bars).
- z_w[t] = (close[t] - m) / sd with m = SMA_w[t], sd = sqrt(sum((x_i - m)^2) / w) over the window in
  ascending order (population std); NaN when ``sd <= 1e-12 * |m|``.
- RSI_P (Wilder): with ``d = close[t] - close[t-1]`` over consecutive finite closes, the first ``P``
  gains/losses are averaged (``sum / P``), then ``avg = (avg * (P-1) + x) / P``. RSI =
  ``100 * g / (g + l)`` (50 when ``g + l == 0``), defined once ``P`` consecutive valid differences
  were seen. A non-finite close resets the state (the next RSI needs ``P`` fresh differences).
  Carry per (period, symbol): ``(k, g, l)`` float64.

Arrays: prices/signal ``(n_s, L)`` float64 C-contiguous (a chunk including its lead bars); indicator
stack ``ind`` float64 ``(n_ind, n_s, L)``; ``base`` = absolute bar index of column 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from mystocks_gpu.gpu_ops.backtest.state import (
    A_CLOSE_LONG,
    A_CLOSE_SHORT,
    A_NONE,
    A_OPEN_LONG,
    A_OPEN_SHORT,
    A_REV_TO_LONG,
    A_REV_TO_SHORT,
    EL,
    ES,
    XL,
    XS,
    ZSCORE_FLAT_REL,
)
from mystocks_gpu.gpu_ops.backtest.strategies import (
    BREAKOUT,
    MA_CROSS,
    RSI,
    SIGNAL,
    ZSCORE,
    GridPlan,
)

# ---------------------------------------------------------------------------------------------
# CPU indicator kernels
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _block_sum_row(x: np.ndarray, w: int, base: int, out: np.ndarray, tmp: np.ndarray) -> None:
    """Rolling sum of window ``w`` of row ``x`` into ``out`` (NaN where the window leaves the row).

    ``q`` tracks ``(base + j) % w`` incrementally (no integer division per bar)."""
    n = x.shape[0]
    p = 0.0
    q = base % w
    for j in range(n):  # prefix sums within blocks, left to right
        if q == 0:
            p = x[j]
        else:
            p = p + x[j]
        out[j] = p
        q += 1
        if q == w:
            q = 0
    s = 0.0
    q = (base + n - 1) % w
    for j in range(n - 1, -1, -1):  # suffix sums within blocks, right to left from the block end
        if q == w - 1:
            s = x[j]
        else:
            s = s + x[j]
        tmp[j] = s
        q -= 1
        if q < 0:
            q = w - 1
    q = base % w
    for j in range(n):
        a = j - w + 1
        if a < 0:
            out[j] = np.nan
        elif q != w - 1:  # window not one whole block: suffix of the previous block + prefix
            out[j] = tmp[a] + out[j]
        q += 1
        if q == w:
            q = 0


@njit(cache=True)
def _sma_row(x: np.ndarray, w: int, base: int, out: np.ndarray, tmp: np.ndarray) -> None:
    """SMA_w of row ``x`` into ``out`` (``tmp``: scratch of the row's length)."""
    _block_sum_row(x, w, base, out, tmp)
    for j in range(x.shape[0]):
        out[j] = out[j] / w


@njit(cache=True, parallel=True, nogil=True)
def sma_cpu(x: np.ndarray, windows: np.ndarray, base: int, out: np.ndarray) -> None:
    """SMA rows: ``out[i, s, :]`` = SMA_{windows[i]} of ``x[s]``. ``out`` (n_w, n_s, L)."""
    n_s, n = x.shape
    n_w = windows.shape[0]
    for r in prange(n_w * n_s):
        i = r // n_s
        s = r - i * n_s
        tmp = np.empty(n)
        _sma_row(x[s], windows[i], base, out[i, s], tmp)


@njit(cache=True)
def _nanmax(a: float, b: float) -> float:
    if a != a or b != b:
        return np.nan
    return a if a >= b else b


@njit(cache=True)
def _nanmin(a: float, b: float) -> float:
    if a != a or b != b:
        return np.nan
    return a if a <= b else b


@njit(cache=True)
def _block_ext_row(
    x: np.ndarray, w: int, base: int, is_max: bool, out: np.ndarray, tmp: np.ndarray
) -> None:
    """``out[j]`` = max (or min) of ``x`` over the previous ``w`` bars ``[j-w, j-1]``; NaN-propagating."""
    n = x.shape[0]
    p = 0.0
    q = base % w
    for j in range(n):
        if q == 0:
            p = x[j]
        else:
            p = _nanmax(p, x[j]) if is_max else _nanmin(p, x[j])
        out[j] = p
        q += 1
        if q == w:
            q = 0
    s = 0.0
    q = (base + n - 1) % w
    for j in range(n - 1, -1, -1):
        if q == w - 1:
            s = x[j]
        else:
            s = _nanmax(s, x[j]) if is_max else _nanmin(s, x[j])
        tmp[j] = s
        q -= 1
        if q < 0:
            q = w - 1
    # window [j-w, j-1] ends at e = j-1; walk backwards so out[e] is read before it is replaced.
    # It is one whole block iff e is a block's last bar: (base + j) % w == 0.
    q = (base + n - 1) % w
    for j in range(n - 1, -1, -1):
        e = j - 1
        a = e - w + 1
        if a < 0:
            out[j] = np.nan
        elif q == 0:
            out[j] = out[e]
        else:
            out[j] = _nanmax(tmp[a], out[e]) if is_max else _nanmin(tmp[a], out[e])
        q -= 1
        if q < 0:
            q = w - 1


@njit(cache=True, parallel=True, nogil=True)
def channel_cpu(
    high: np.ndarray, low: np.ndarray, windows: np.ndarray, base: int, out: np.ndarray
) -> None:
    """Breakout channel rows: ``out[i]`` = HH_{windows[i]}, ``out[n_w + i]`` = LL_{windows[i]}."""
    n_s, n = high.shape
    n_w = windows.shape[0]
    for r in prange(2 * n_w * n_s):
        i = r // n_s
        s = r - i * n_s
        if i < n_w:
            tmp = np.empty(n)
            _block_ext_row(high[s], windows[i], base, True, out[i, s], tmp)
        else:
            tmp = np.empty(n)
            _block_ext_row(low[s], windows[i - n_w], base, False, out[i, s], tmp)


@njit(cache=True, parallel=True, nogil=True)
def zscore_cpu(x: np.ndarray, windows: np.ndarray, base: int, out: np.ndarray) -> None:
    """z-score rows (population std over the window; NaN for flat windows)."""
    n_s, n = x.shape
    n_w = windows.shape[0]
    for r in prange(n_w * n_s):
        i = r // n_s
        s = r - i * n_s
        tmp = np.empty(n)
        _zscore_row(x[s], windows[i], base, out[i, s], tmp)


@njit(cache=True)
def _zscore_row(xs: np.ndarray, w: int, base: int, row: np.ndarray, tmp: np.ndarray) -> None:
    """z-score of window ``w`` of row ``xs`` into ``row`` (``tmp``: scratch of the row's length)."""
    n = xs.shape[0]
    _block_sum_row(xs, w, base, row, tmp)
    for j in range(n):
        if j - w + 1 < 0:
            continue
        m = row[j] / w
        v = 0.0
        for q in range(j - w + 1, j + 1):
            d = xs[q] - m
            v += d * d
        sd = np.sqrt(v / w)
        if sd > ZSCORE_FLAT_REL * abs(m):
            row[j] = (xs[j] - m) / sd
        else:
            row[j] = np.nan


@njit(cache=True, parallel=True, nogil=True)
def rsi_cpu(
    close: np.ndarray, periods: np.ndarray, j0: int, carry: np.ndarray, out: np.ndarray
) -> None:
    """Wilder RSI rows for bars ``j >= j0`` (earlier columns NaN), state carried in ``carry``
    float64 ``(n_p, n_s, 3)`` = (k, g, l); updated in place."""
    n_s, n = close.shape
    n_p = periods.shape[0]
    for r in prange(n_p * n_s):
        i = r // n_s
        s = r - i * n_s
        per = periods[i]
        k = carry[i, s, 0]
        g = carry[i, s, 1]
        lo = carry[i, s, 2]
        for j in range(j0):
            out[i, s, j] = np.nan
        for j in range(j0, n):
            c = close[s, j]
            if j >= 1 and np.isfinite(c) and np.isfinite(close[s, j - 1]):
                d = c - close[s, j - 1]
                gain = d if d > 0.0 else 0.0
                loss = -d if d < 0.0 else 0.0
                if k < per:
                    g = g + gain
                    lo = lo + loss
                    k = k + 1.0
                    if k == per:
                        g = g / per
                        lo = lo / per
                else:
                    g = (g * (per - 1) + gain) / per
                    lo = (lo * (per - 1) + loss) / per
                if k == per:
                    den = g + lo
                    out[i, s, j] = 100.0 * g / den if den > 0.0 else 50.0
                else:
                    out[i, s, j] = np.nan
            else:
                k = 0.0
                g = 0.0
                lo = 0.0
                out[i, s, j] = np.nan
        carry[i, s, 0] = k
        carry[i, s, 1] = g
        carry[i, s, 2] = lo


@njit(cache=True)
def indicator_row(
    code: int, r: int, s: int, close: np.ndarray, high: np.ndarray, low: np.ndarray, windows: np.ndarray,
    base: int, row: np.ndarray, tmp: np.ndarray,
) -> None:
    """Row ``r`` of symbol ``s``'s indicator stack into ``row`` (length ``L``), for the stateless
    indicators (``MA_CROSS``, ``ZSCORE``, ``BREAKOUT``): the same doubles as :func:`sma_cpu`,
    :func:`zscore_cpu` and :func:`channel_cpu` give for ``out[r, s]``. ``tmp``: scratch ``(L,)``."""
    if code == MA_CROSS:
        _sma_row(close[s], windows[r], base, row, tmp)
    elif code == ZSCORE:
        _zscore_row(close[s], windows[r], base, row, tmp)
    else:
        n_w = windows.shape[0]
        if r < n_w:
            _block_ext_row(high[s], windows[r], base, True, row, tmp)
        else:
            _block_ext_row(low[s], windows[r - n_w], base, False, row, tmp)


# ---------------------------------------------------------------------------------------------
# signal evaluation and order resolution (called by the CPU simulation kernel; separate functions,
# not numba-inlined: see ``sim_cpu._kernel``)
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def signal_flags(
    code: int, a_t: float, a_p: float, b_t: float, b_p: float, c: float, th0: float, th1: float
) -> int:
    """EL|XL|ES|XS bits at a bar from indicator values (``_t`` now, ``_p`` the bar before)."""
    if code == MA_CROSS or code == BREAKOUT:
        if code == MA_CROSS:
            up = a_t > b_t and a_p <= b_p
            dn = a_t < b_t and a_p >= b_p
        else:
            up = c > a_t
            dn = c < b_t
        f = 0
        if up:
            f |= EL | XS
        if dn:
            f |= XL | ES
        return f
    if code == ZSCORE:
        el = a_t < -th0
        xl = a_t > -th1
        es = a_t > th0
        xs = a_t < th1
    elif code == RSI:
        el = a_t < th0
        xl = a_t > th1
        es = a_t > th1
        xs = a_t < th0
    else:  # SIGNAL
        el = a_t > th0
        xl = a_t < th1
        es = a_t < -th0
        xs = a_t > -th1
    return (EL if el else 0) | (XL if xl else 0) | (ES if es else 0) | (XS if xs else 0)


@njit(cache=True)
def resolve_action(flags: int, units: float, long_short: bool) -> int:
    """The action for signal ``flags`` given the position (see ``engine`` module doc)."""
    el = (flags & EL) != 0
    xl = (flags & XL) != 0
    es = long_short and (flags & ES) != 0
    xs = long_short and (flags & XS) != 0
    if el and xl:
        el = False
        xl = False
    if es and xs:
        es = False
        xs = False
    if el and es:
        el = False
        es = False
    if units > 0.0:
        if es:
            return A_REV_TO_SHORT
        if xl:
            return A_CLOSE_LONG
        return A_NONE
    if units < 0.0:
        if el:
            return A_REV_TO_LONG
        if xs:
            return A_CLOSE_SHORT
        return A_NONE
    if el:
        return A_OPEN_LONG
    if es:
        return A_OPEN_SHORT
    return A_NONE


@njit(cache=True, parallel=True, nogil=True)
def _materialize_cpu(
    code: int,
    open_: np.ndarray,
    close: np.ndarray,
    ind: np.ndarray,
    pidx: np.ndarray,
    pval: np.ndarray,
    out: np.ndarray,
) -> None:
    n_s, n = close.shape
    n_par = pidx.shape[0]
    for cell in prange(n_par * n_s):
        p = cell // n_s
        s = cell - p * n_s
        ia = pidx[p, 0]
        ib = pidx[p, 1]
        for j in range(n):
            if not (np.isfinite(open_[s, j]) and np.isfinite(close[s, j])):
                out[p, s, j] = 0
                continue
            a_p = ind[ia, s, j - 1] if j > 0 else np.nan
            b_p = ind[ib, s, j - 1] if j > 0 else np.nan
            out[p, s, j] = signal_flags(
                code, ind[ia, s, j], a_p, ind[ib, s, j], b_p, close[s, j], pval[p, 0], pval[p, 1]
            )


# ---------------------------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------------------------


def new_carry(xp: Any, plan: GridPlan, n_s: int) -> Any:
    """Fresh indicator carry: RSI state ``(n_p, n_s, 3)`` zeros; an empty array for the others."""
    if plan.code == RSI:
        return xp.zeros((len(plan.ind_windows), n_s, 3), dtype=xp.float64)
    return xp.zeros((0, n_s, 3), dtype=xp.float64)


def compute_indicators_cpu(
    plan: GridPlan, data: dict[str, Any], base: int, j0: int, carry: Any
) -> Any:
    """The indicator stack ``(n_ind, n_s, L)`` for a chunk; ``carry`` (RSI) is updated in place.

    ``data``: ``open``, ``high``, ``low``, ``close`` (and ``signal`` for the signal strategy) arrays
    ``(n_s, L)`` of the backend; ``base``: absolute bar of column 0; ``j0``: first column simulated
    (columns before it are the lead).
    """
    close = data["close"]
    n_s, n = close.shape
    wins = plan.ind_windows
    if plan.code == SIGNAL:
        return np.ascontiguousarray(data["signal"], dtype=np.float64).reshape(1, n_s, n)
    out = np.empty((plan.n_ind, n_s, n), dtype=np.float64)
    if plan.code == MA_CROSS:
        sma_cpu(close, wins, base, out)
    elif plan.code == BREAKOUT:
        channel_cpu(data["high"], data["low"], wins, base, out)
    elif plan.code == ZSCORE:
        zscore_cpu(close, wins, base, out)
    else:
        rsi_cpu(close, wins, j0, carry, out)
    return out


def materialize_signals(
    plan: GridPlan, prices: dict[str, np.ndarray], long_short: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean EL, XL, ES, XS arrays ``(n_par, n_s, n_bars)`` on the CPU, as the kernels see them
    (False at invalid bars; ES/XS all False unless ``long_short``). For tests and comparisons."""
    data = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in prices.items()}
    carry = new_carry(np, plan, data["close"].shape[0])
    ind = compute_indicators_cpu(plan, data, 0, 0, carry)
    flags = np.zeros((plan.n_par, *data["close"].shape), dtype=np.int64)
    _materialize_cpu(plan.code, data["open"], data["close"], ind, plan.pidx, plan.pval, flags)
    el = (flags & EL) != 0
    xl = (flags & XL) != 0
    es = ((flags & ES) != 0) & long_short
    xs = ((flags & XS) != 0) & long_short
    return el, xl, es, xs
