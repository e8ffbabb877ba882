"""Cross-sectional (per date, across symbols) operators and per-date average ranks.

``Rank(x)``: percentile rank per date, ``rank / count`` with average ranks for ties (pandas
``rank(axis=1, pct=True)``); ``ZScore(x)``: ``(x - mean) / std`` (std ddof=1); ``Demean(x)``:
``x - mean``. Statistics are over the date's non-NaN values; NaN stays NaN.

CPU: numba kernels over the ``(n_symbols, n_dates)`` layout, run on blocks of dates in threads. GPU twin:
:func:`cs_xp` / :func:`avg_rank_rows_xp`, array programs for NumPy or CuPy (sort per row,
tie groups from a cumulative sum, group sizes from ``bincount``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

_NAN = np.nan
RANK, ZSCORE, DEMEAN = 0, 1, 2
CS_CODES = {"Rank": RANK, "ZScore": ZSCORE, "Demean": DEMEAN}


@njit(cache=True)
def avg_rank_1d(v: np.ndarray, valid: np.ndarray, out: np.ndarray) -> int:
    """1-based average ranks of ``v[valid]`` written to ``out`` (NaN elsewhere); returns count."""
    n_all = v.shape[0]
    idx = np.empty(n_all, dtype=np.int64)
    n = 0
    for i in range(n_all):
        if valid[i]:
            idx[n] = i
            n += 1
        out[i] = _NAN
    if n == 0:
        return 0
    vals = np.empty(n, dtype=np.float64)
    for j in range(n):
        vals[j] = v[idx[j]]
    order = np.argsort(vals, kind="mergesort")
    j = 0
    while j < n:
        k = j
        while k + 1 < n and vals[order[k + 1]] == vals[order[j]]:
            k += 1
        r = (j + k) / 2.0 + 1.0
        for m in range(j, k + 1):
            out[idx[order[m]]] = r
        j = k + 1
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def cs_cpu(x: np.ndarray, code: int) -> np.ndarray:
    """Cross-sectional op ``code`` (:data:`CS_CODES`) on ``x`` ``(n_symbols, n_dates)``."""
    s_n, t_n = x.shape
    out = np.empty_like(x)
    for t in range(t_n):
        col = np.ascontiguousarray(x[:, t])
        valid = ~np.isnan(col)
        if code == RANK:
            tmp = np.empty(s_n, dtype=np.float64)
            n = avg_rank_1d(col, valid, tmp)
            for s in range(s_n):
                out[s, t] = tmp[s] / n if valid[s] else _NAN
            continue
        n = 0
        acc = 0.0
        for s in range(s_n):
            if valid[s]:
                acc += col[s]
                n += 1
        mean = acc / n if n > 0 else _NAN
        if code == DEMEAN:
            for s in range(s_n):
                out[s, t] = col[s] - mean
            continue
        ss = 0.0
        for s in range(s_n):
            if valid[s]:
                d = col[s] - mean
                ss += d * d
        sd = math.sqrt(ss / (n - 1)) if n > 1 else _NAN
        for s in range(s_n):
            out[s, t] = (col[s] - mean) / sd
    return out


def avg_rank_rows_xp(xp: Any, x: Any, valid: Any) -> tuple[Any, Any]:
    """1-based average ranks of each row's ``valid`` entries (NaN elsewhere) and the count per
    row, for a 2-D array ``x`` ``(rows, cols)``; NumPy or CuPy."""
    r_n, c_n = x.shape
    key = xp.where(valid, x, np.inf)
    order = xp.argsort(key, axis=1, kind="stable") if xp is np else xp.argsort(key, axis=1)
    rows = xp.arange(r_n)[:, None]
    vs = key[rows, order]
    vmask = valid[rows, order]
    n = valid.sum(axis=1)
    start = xp.ones((r_n, c_n), dtype=bool)
    start[:, 1:] = vs[:, 1:] != vs[:, :-1]
    start |= ~vmask  # every invalid slot is its own group (they sort last)
    gid = xp.cumsum(start, axis=1) - 1
    flat = (gid + rows * c_n).ravel()
    cnt = xp.bincount(flat, minlength=r_n * c_n).reshape(r_n, c_n)
    first = xp.cumsum(cnt, axis=1) - cnt
    rk = xp.take_along_axis(first, gid, axis=1) + (xp.take_along_axis(cnt, gid, axis=1) + 1) / 2.0
    rk = xp.where(vmask, rk, np.nan)
    out = xp.empty((r_n, c_n), dtype=np.float64)
    out[rows, order] = rk
    return out, n


def cs_xp(xp: Any, x: Any, op: str) -> Any:
    """GPU twin of :func:`cs_cpu` (``x`` ``(n_symbols, n_dates)``)."""
    valid = ~xp.isnan(x)
    if op == "Rank":
        rk, n = avg_rank_rows_xp(xp, x.T, valid.T)
        with np.errstate(invalid="ignore", divide="ignore"):
            return xp.ascontiguousarray((rk / n[:, None]).T)
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xp.where(valid, x, 0.0).sum(axis=0) / n
        d = x - mean[None, :]
        if op == "Demean":
            return d
        ss = xp.where(valid, d * d, 0.0).sum(axis=0)
        sd = xp.sqrt(ss / (n - 1))
        sd = xp.where(n > 1, sd, np.nan)
        return d / sd[None, :]
