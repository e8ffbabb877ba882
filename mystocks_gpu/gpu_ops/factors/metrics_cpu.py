"""CPU (numba) kernels of the factor metrics; twin of ``metrics_xp``. Definitions: ``evaluate``.

Layout ``(n_dates, n_symbols)`` (one date's cross-section contiguous); run in threads on blocks of dates.
Forward returns are pre-sorted once per (horizon, date) (:func:`presort`), so ranking the returns
within a factor's sample is a linear walk instead of a sort.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_NAN = np.nan


@njit(cache=True, nogil=True)
def presort(fwd: np.ndarray) -> np.ndarray:
    """``argsort`` of every ``fwd[h, t]`` row (NaN last): int64 ``(H, T, N)``."""
    h_n, t_n, s_n = fwd.shape
    out = np.empty((h_n, t_n, s_n), dtype=np.int64)
    for k in range(h_n * t_n):
        h = k // t_n
        t = k % t_n
        out[h, t] = np.argsort(fwd[h, t], kind="mergesort")
    return out


@njit(cache=True, error_model="numpy")
def _pearson(a: np.ndarray, b: np.ndarray, n: int) -> float:
    if n < 2:
        return _NAN
    ma = 0.0
    mb = 0.0
    for i in range(n):
        ma += a[i]
        mb += b[i]
    ma /= n
    mb /= n
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    for i in range(n):
        da = a[i] - ma
        db = b[i] - mb
        sab += da * db
        saa += da * da
        sbb += db * db
    if saa <= 0.0 or sbb <= 0.0:
        return _NAN
    return sab / math.sqrt(saa * sbb)


@njit(cache=True, error_model="numpy")
def _lerp(a: float, b: float, g: float) -> float:
    d = b - a
    return b - d * (1.0 - g) if g >= 0.5 else a + d * g


@njit(cache=True, nogil=True, error_model="numpy")
def factor_metrics(
    f: np.ndarray,
    fwd: np.ndarray,
    order: np.ndarray,
    qfrac: np.ndarray,
    drop_unbinnable: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-date metrics of one factor ``f`` ``(T, N)`` against ``fwd`` ``(H, T, N)``.

    Returns ``ic (H, T)``, ``rank_ic (H, T)``, ``qret (H, T, Q)`` (mean demeaned forward return
    per quantile), ``rank (T, N)`` (average rank within the date's sample, NaN outside) and
    ``label (T, N)`` int8 (quantile 1..Q, 0 outside / unbinnable)."""
    h_n, t_n, s_n = fwd.shape
    nq = qfrac.shape[0] - 1
    ic = np.full((h_n, t_n), _NAN)
    ric = np.full((h_n, t_n), _NAN)
    qret = np.full((h_n, t_n, nq), _NAN)
    rank = np.full((t_n, s_n), _NAN)
    label = np.zeros((t_n, s_n), dtype=np.int8)
    for t in range(t_n):
        mask = np.empty(s_n, dtype=np.bool_)
        n = 0
        for s in range(s_n):
            ok = math.isfinite(f[t, s])
            if ok:
                for h in range(h_n):
                    if not math.isfinite(fwd[h, t, s]):
                        ok = False
                        break
            mask[s] = ok
            if ok:
                n += 1
        if n == 0:
            continue
        idx = np.empty(n, dtype=np.int64)
        fv = np.empty(n, dtype=np.float64)
        j = 0
        for s in range(s_n):
            if mask[s]:
                idx[j] = s
                fv[j] = f[t, s]
                j += 1
        o = np.argsort(fv)
        sv = np.empty(n, dtype=np.float64)
        for i in range(n):
            sv[i] = fv[o[i]]
        fr = np.empty(n, dtype=np.float64)
        i = 0
        while i < n:
            k = i
            while k + 1 < n and sv[k + 1] == sv[i]:
                k += 1
            r = (i + k) / 2.0 + 1.0
            for m in range(i, k + 1):
                fr[o[m]] = r
            i = k + 1
        edges = np.empty(nq + 1, dtype=np.float64)
        for k in range(nq + 1):
            vi = (n - 1) * qfrac[k]
            lo = int(math.floor(vi))
            hi = min(lo + 1, n - 1)
            edges[k] = _lerp(sv[lo], sv[hi], vi - lo)
        binnable = True
        for k in range(nq):
            if edges[k + 1] == edges[k]:
                binnable = False
        if not binnable and drop_unbinnable:
            continue
        lab = np.zeros(n, dtype=np.int8)
        if binnable:
            # walk the sorted values: label = number of edges < x (x == edges[0] -> 1)
            c = 0
            for m in range(n):
                x = sv[m]
                while c <= nq and edges[c] < x:
                    c += 1
                lab[o[m]] = 1 if x == edges[0] else (c if c <= nq else 0)
        for i in range(n):
            rank[t, idx[i]] = fr[i]
            label[t, idx[i]] = lab[i]
        rv = np.empty(n, dtype=np.float64)
        rr = np.empty(n, dtype=np.float64)
        pos = np.empty(s_n, dtype=np.int64)
        for i in range(n):
            pos[idx[i]] = i
        qs = np.zeros(nq, dtype=np.float64)
        qc = np.zeros(nq, dtype=np.int64)
        for h in range(h_n):
            for i in range(n):
                rv[i] = fwd[h, t, idx[i]]
            # average ranks of the returns within the sample: walk the presorted order
            k = 0
            r0 = 0
            while k < s_n:
                s = order[h, t, k]
                if not mask[s]:
                    k += 1
                    continue
                v = fwd[h, t, s]
                # collect the tie group of v among sample members
                k2 = k
                cnt = 0
                while k2 < s_n and fwd[h, t, order[h, t, k2]] == v:
                    if mask[order[h, t, k2]]:
                        cnt += 1
                    k2 += 1
                r = r0 + (cnt + 1) / 2.0
                for kk in range(k, k2):
                    s2 = order[h, t, kk]
                    if mask[s2]:
                        rr[pos[s2]] = r
                r0 += cnt
                k = k2
            ic[h, t] = _pearson(fv, rv, n)
            ric[h, t] = _pearson(fr, rr, n)
            if binnable:
                mean = 0.0
                for i in range(n):
                    mean += rv[i]
                mean /= n
                qs[:] = 0.0
                qc[:] = 0
                for i in range(n):
                    if lab[i] > 0:
                        qs[lab[i] - 1] += rv[i] - mean
                        qc[lab[i] - 1] += 1
                for q in range(nq):
                    if qc[q] > 0:
                        qret[h, t, q] = qs[q] / qc[q]
    return ic, ric, qret, rank, label


@njit(cache=True, nogil=True, error_model="numpy")
def lag_metrics(
    rank: np.ndarray, label: np.ndarray, lags: np.ndarray, nq: int, t0: int, t1: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank autocorrelation ``(L, T)`` and quantile turnover ``(L, T, Q)`` at each lag (dates).

    autocorr[l, t]: Pearson correlation of ``rank[t]`` and ``rank[t - lag]`` over symbols ranked
    on both dates. turnover[l, t, q]: share of date t's quantile-q names not in quantile q at
    ``t - lag``; NaN when either date has no quantile-q names. Only dates ``[t0, t1)`` are
    computed (the rest stay NaN)."""
    t_n, s_n = rank.shape
    l_n = lags.shape[0]
    ac = np.full((l_n, t_n), _NAN)
    to = np.full((l_n, t_n, nq), _NAN)
    span = t1 - t0
    for k in range(l_n * span):
        li = k // span
        t = t0 + k % span
        p = lags[li]
        if t < p:
            continue
        a = np.empty(s_n, dtype=np.float64)
        b = np.empty(s_n, dtype=np.float64)
        n = 0
        for s in range(s_n):
            x = rank[t, s]
            y = rank[t - p, s]
            if x == x and y == y:
                a[n] = x
                b[n] = y
                n += 1
        ac[li, t] = _pearson(a, b, n)
        now = np.zeros(nq, dtype=np.int64)
        before = np.zeros(nq, dtype=np.int64)
        new = np.zeros(nq, dtype=np.int64)
        for s in range(s_n):
            q1 = label[t, s]
            q0 = label[t - p, s]
            if q0 > 0:
                before[q0 - 1] += 1
            if q1 > 0:
                now[q1 - 1] += 1
                if q0 != q1:
                    new[q1 - 1] += 1
        for q in range(nq):
            if now[q] > 0 and before[q] > 0:
                to[li, t, q] = new[q] / now[q]
    return ac, to
