"""CPU (numba) kernels of the factor metrics; twin of ``metrics_xp``. Definitions: ``evaluate``.

Layout ``(n_dates, n_symbols)`` (one date's cross-section contiguous); run in threads on blocks of dates.

Work shared by every factor is done once per evaluator: the forward returns are sorted once per
(horizon, date) (:func:`presort`) into counts of smaller / equal returns (:func:`return_counts`),
from which the returns' ranks within any factor's sample follow by a prefix count over the few
symbols that factor misses. Per factor, every date is sorted by one batched ``np.sort`` of keys
that carry the symbol in their low mantissa bits (:func:`sample_and_sort`; NumPy's SIMD sort,
several times faster than an argsort per date), and that one sort gives the factor's ranks,
quantile edges and labels (:func:`factor_metrics`), reused by turnover and rank autocorrelation
(:func:`lag_metrics`). Every sum is taken in the same order as a plain two-pass Pearson, so the
results do not depend on these shortcuts.
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


@njit(cache=True, nogil=True)
def return_counts(fwd: np.ndarray, order: np.ndarray, rmask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(below, equal)`` int32 ``(H, T, N)``: for each symbol in the returns' sample ``rmask``
    (finite at every horizon), how many sample symbols have a smaller / an equal forward return
    at that horizon and date (0 outside the sample). A factor's sample is ``rmask`` less the
    symbols where the factor is missing, so its return ranks follow from these counts and the
    few symbols left out (:func:`factor_metrics`)."""
    h_n, t_n, s_n = fwd.shape
    below = np.zeros((h_n, t_n, s_n), dtype=np.int32)
    equal = np.zeros((h_n, t_n, s_n), dtype=np.int32)
    for h in range(h_n):
        for t in range(t_n):
            k = 0
            r0 = 0
            while k < s_n:
                s = order[h, t, k]
                if not rmask[t, s]:
                    k += 1
                    continue
                v = fwd[h, t, s]
                k2 = k
                cnt = 0
                while k2 < s_n and fwd[h, t, order[h, t, k2]] == v:
                    if rmask[t, order[h, t, k2]]:
                        cnt += 1
                    k2 += 1
                for kk in range(k, k2):
                    s2 = order[h, t, kk]
                    if rmask[t, s2]:
                        below[h, t, s2] = r0
                        equal[h, t, s2] = cnt
                r0 += cnt
                k = k2
    return below, equal


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
def sample_keys(f: np.ndarray, rmask: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fm, keys)`` of a factor ``f`` ``(T, N)`` (any layout) and the returns' sample mask.

    ``fm``: C-contiguous copy of ``f``, NaN outside the sample (finite factor where ``rmask``).
    ``keys``: ``fm`` with the low ``bits`` mantissa bits of every sample value replaced by its
    symbol index (NaN outside the sample). Replacing low bits keeps the order between values
    that differ above them, so one batched ``np.sort`` of ``keys`` sorts every date at once and
    carries each value's symbol along; values equal above the low bits come out adjacent, ordered
    by symbol, and :func:`factor_metrics` puts them in exact order (see there)."""
    t_n, s_n = f.shape
    fm = np.empty((t_n, s_n), dtype=np.float64)
    keys = np.empty((t_n, s_n), dtype=np.float64)
    uk = keys.reshape(t_n * s_n).view(np.uint64)
    low = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for t in range(t_n):
        for s in range(s_n):
            x = f[t, s]
            if rmask[t, s] and math.isfinite(x):
                fm[t, s] = x
                keys[t, s] = x
                j = t * s_n + s
                uk[j] = (uk[j] & ~low) | np.uint64(s)
            else:
                fm[t, s] = _NAN
                keys[t, s] = _NAN
    return fm, keys


@njit(cache=True, nogil=True, error_model="numpy")
def factor_metrics(
    fm: np.ndarray,
    keys: np.ndarray,
    bits: int,
    fwd: np.ndarray,
    rmask: np.ndarray,
    below: np.ndarray,
    equal: np.ndarray,
    qfrac: np.ndarray,
    drop_unbinnable: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-date metrics of one factor against ``fwd`` ``(H, T, N)``.

    ``fm`` ``(T, N)`` is the factor on its sample (finite factor and finite forward returns at
    every horizon), NaN elsewhere; ``keys`` the rows of :func:`sample_keys` sorted ascending (NaN
    last). Each date's sorted sample is read off its keys (symbol = the low ``bits``; value =
    ``fm``) and finished by an insertion pass, which only moves values whose keys tied above the
    low bits (almost never more than a neighbour). The one sort serves the ranks, the quantile
    edges and labels, and through them turnover and rank autocorrelation. The returns' ranks
    within the factor's sample come from :func:`return_counts` (``below``/``equal``, over the
    returns' sample ``rmask``) less the symbols the factor misses (a prefix count over ``below``),
    so no date's returns are sorted again per factor.

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
    idx = np.empty(s_n, dtype=np.int64)
    fv = np.empty(s_n, dtype=np.float64)
    fr = np.empty(s_n, dtype=np.float64)
    st = np.empty(s_n, dtype=np.float64)
    so = np.empty(s_n, dtype=np.int64)
    lab = np.zeros(s_n, dtype=np.int8)
    rv = np.empty(s_n, dtype=np.float64)
    rr = np.empty(s_n, dtype=np.float64)
    df = np.empty(s_n, dtype=np.float64)
    dr = np.empty(s_n, dtype=np.float64)
    pos = np.empty(s_n, dtype=np.int64)
    xs = np.empty(s_n, dtype=np.int64)
    cum = np.zeros(s_n + 1, dtype=np.int64)
    edges = np.empty(nq + 1, dtype=np.float64)
    qs = np.zeros(nq + 1, dtype=np.float64)
    qc = np.zeros(nq + 1, dtype=np.int64)
    uk = keys.reshape(t_n * s_n).view(np.uint64)
    low = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for t in range(t_n):
        n = 0
        n_x = 0
        for s in range(s_n):
            x = fm[t, s]
            if x == x:
                idx[n] = s
                fv[n] = x
                pos[s] = n
                n += 1
            elif rmask[t, s]:
                xs[n_x] = s
                n_x += 1
        if n == 0:
            continue
        # the sorted sample (value, symbol): keys give the order up to their low bits
        base = t * s_n
        for m in range(n):
            s = np.int64(uk[base + m] & low)  # type: ignore[assignment]  # (numba: an int64 index)
            x = fm[t, s]
            j = m
            while j > 0 and st[j - 1] > x:
                st[j] = st[j - 1]
                so[j] = so[j - 1]
                j -= 1
            st[j] = x
            so[j] = s
        # average rank of each tie group
        i = 0
        while i < n:
            k = i
            while k + 1 < n and st[k + 1] == st[i]:
                k += 1
            r = (i + k) / 2.0 + 1.0
            for m in range(i, k + 1):
                fr[pos[so[m]]] = r
            i = k + 1
        for k in range(nq + 1):
            vi = (n - 1) * qfrac[k]
            lo = int(math.floor(vi))
            hi = min(lo + 1, n - 1)
            edges[k] = _lerp(st[lo], st[hi], vi - lo)
        binnable = True
        for k in range(nq):
            if edges[k + 1] == edges[k]:
                binnable = False
        if not binnable and drop_unbinnable:
            continue
        if binnable:
            # walk the sorted values: label = number of edges < x (x == edges[0] -> 1)
            c = 0
            for m in range(n):
                x = st[m]
                while c <= nq and edges[c] < x:
                    c += 1
                lab[pos[so[m]]] = 1 if x == edges[0] else (c if c <= nq else 0)
        else:
            lab[:n] = 0
        # the factor side of both correlations, shared by every horizon (``_pearson``'s sums)
        mf = 0.0
        mr = 0.0
        for i in range(n):
            rank[t, idx[i]] = fr[i]
            label[t, idx[i]] = lab[i]
            mf += fv[i]
            mr += fr[i]
        mf /= n
        mr /= n
        sff = 0.0
        srr = 0.0
        for i in range(n):
            df[i] = fv[i] - mf
            dr[i] = fr[i] - mr
            sff += df[i] * df[i]
            srr += dr[i] * dr[i]
        for h in range(h_n):
            for i in range(n):
                rv[i] = fwd[h, t, idx[i]]
            # average ranks of the returns within the sample: the counts over the returns'
            # sample less the symbols the factor misses. A missed symbol x has a smaller return
            # than symbol s iff below[x] < below[s], an equal one iff below[x] == below[s].
            if n_x == 0:
                for i in range(n):
                    s = idx[i]
                    rr[i] = below[h, t, s] + (equal[h, t, s] + 1) / 2.0
            else:
                cum[:] = 0
                for j in range(n_x):
                    cum[below[h, t, xs[j]] + 1] += 1
                for p in range(s_n):
                    cum[p + 1] += cum[p]
                for i in range(n):
                    s = idx[i]
                    b = below[h, t, s]
                    el = cum[b]
                    ee = cum[b + 1] - el
                    rr[i] = (b - el) + ((equal[h, t, s] - ee) + 1) / 2.0
            # IC, rank IC and the quantile sums in one pass (same sums, same order as _pearson)
            mv = 0.0
            mq = 0.0
            for i in range(n):
                mv += rv[i]
                mq += rr[i]
            mv /= n
            mq /= n
            s_fv = 0.0
            s_vv = 0.0
            s_rq = 0.0
            s_qq = 0.0
            qs[:] = 0.0
            qc[:] = 0
            for i in range(n):
                dv = rv[i] - mv
                dq = rr[i] - mq
                s_fv += df[i] * dv
                s_vv += dv * dv
                s_rq += dr[i] * dq
                s_qq += dq * dq
                qs[lab[i]] += dv  # label 0 (no quantile) sums into the unused slot 0
                qc[lab[i]] += 1
            if n >= 2:
                if sff > 0.0 and s_vv > 0.0:
                    ic[h, t] = s_fv / math.sqrt(sff * s_vv)
                if srr > 0.0 and s_qq > 0.0:
                    ric[h, t] = s_rq / math.sqrt(srr * s_qq)
            if binnable:
                for q in range(nq):
                    if qc[q + 1] > 0:
                        qret[h, t, q] = qs[q + 1] / qc[q + 1]
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
    a = np.empty(s_n, dtype=np.float64)
    b = np.empty(s_n, dtype=np.float64)
    # counts by label 0..Q (0 = not in a quantile; ignored): no branch per symbol
    now = np.zeros(nq + 1, dtype=np.int64)
    before = np.zeros(nq + 1, dtype=np.int64)
    new = np.zeros(nq + 1, dtype=np.int64)
    span = t1 - t0
    for k in range(l_n * span):
        li = k // span
        t = t0 + k % span
        p = lags[li]
        if t < p:
            continue
        n = 0
        ma = 0.0
        mb = 0.0
        now[:] = 0
        before[:] = 0
        new[:] = 0
        for s in range(s_n):
            x = rank[t, s]
            y = rank[t - p, s]
            if x == x and y == y:
                a[n] = x
                b[n] = y
                ma += x
                mb += y
                n += 1
            q1 = label[t, s]
            q0 = label[t - p, s]
            before[q0] += 1
            now[q1] += 1
            new[q1] += q0 != q1
        if n >= 2:
            # _pearson's sums, the means accumulated during the gather (same order)
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
            if saa > 0.0 and sbb > 0.0:
                ac[li, t] = sab / math.sqrt(saa * sbb)
        for q in range(nq):
            if now[q + 1] > 0 and before[q + 1] > 0:
                to[li, t, q] = new[q + 1] / now[q + 1]
    return ac, to


def sample_mask(fwd: np.ndarray) -> np.ndarray:
    """``(T, N)`` True where the forward returns at every horizon are finite (``fwd`` ``(H, T, N)``)."""
    return np.all(np.isfinite(fwd), axis=0)  # type: ignore[no-any-return]


def sample_and_sort(f: np.ndarray, rmask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(fm, sorted keys, bits)`` of a factor ``(T, N)``: :func:`sample_keys`, then every date
    sorted by one batched ``np.sort`` (NumPy's SIMD sort: several times faster than an argsort
    per date)."""
    bits = max(1, int(f.shape[1] - 1).bit_length())
    fm, keys = sample_keys(f, rmask, bits)
    keys.sort(axis=1)
    return fm, keys, bits
