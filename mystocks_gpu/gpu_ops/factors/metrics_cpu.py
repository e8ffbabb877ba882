"""CPU (numba) kernels of the factor metrics; twin of ``metrics_xp``. Definitions: ``evaluate``.

Layout ``(n_dates, n_symbols)`` (one date's cross-section contiguous); run in threads on blocks of dates.

Work shared by every factor is done once per evaluator: the forward returns are sorted once per
(horizon, date) (:func:`presort`) into counts of smaller / equal returns (:func:`return_counts`).
Work shared by every factor with the same *sample* (the symbols where the factor is finite and
the returns are finite at every horizon; factors with the same windows miss the same bars) is done
once per sample (:func:`sample_returns`): the demeaned forward returns, their sum of squares and
their (twice average) ranks within the sample. Per factor, every date is sorted by one batched
``np.sort`` of keys that carry the symbol in their low mantissa bits (:func:`sample_keys`; NumPy's
SIMD sort, several times faster than an argsort per date), and that one sort gives the factor's
ranks, quantile edges and labels (:func:`factor_metrics`), reused by turnover and rank
autocorrelation (:func:`lag_metrics`).

Sums: the IC's and the quantile returns' are taken in the same order as a plain two-pass Pearson
/ mean (symbol order). Rank correlations are computed exactly: twice an average rank is an
integer, so their sums are exact integers and the correlation is rounded once at the end.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

_NAN = np.nan


def presort(fwd: np.ndarray) -> np.ndarray:
    """``argsort`` of every ``fwd[h, t]`` row (NaN last): int64 ``(H, T, N)`` (NumPy's batched
    sort; :func:`return_counts` only needs the order of unequal values)."""
    return np.argsort(fwd, axis=-1).astype(np.int64, copy=False)


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
def _lerp(a: float, b: float, g: float) -> float:
    d = b - a
    return b - d * (1.0 - g) if g >= 0.5 else a + d * g


@njit(cache=True, nogil=True, error_model="numpy")
def sample_keys(
    f: np.ndarray, rmask: np.ndarray, bits: int, fm: np.ndarray, keys: np.ndarray, smask: np.ndarray
) -> None:
    """Fill ``fm``, ``keys`` and ``smask`` (``(T, N)`` C-contiguous buffers) from a factor ``f``
    ``(T, N)`` (any layout) and the returns' sample mask ``rmask``.

    ``smask``: the factor's sample (finite factor where ``rmask``). ``fm``: ``f`` on the sample,
    NaN elsewhere. ``keys``: ``fm`` with the low ``bits`` mantissa bits of every sample value
    replaced by its symbol index (NaN outside the sample). Replacing low bits keeps the order
    between values that differ above them, so one batched ``np.sort`` of ``keys`` sorts every
    date at once and carries each value's symbol along; values equal above the low bits come out
    adjacent, ordered by symbol, and :func:`factor_metrics` puts them in exact order (see there)."""
    t_n, s_n = f.shape
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
                smask[t, s] = True
            else:
                fm[t, s] = _NAN
                keys[t, s] = _NAN
                smask[t, s] = False


@njit(cache=True, nogil=True, error_model="numpy")
def sample_returns(
    fwd: np.ndarray, rmask: np.ndarray, smask: np.ndarray, below: np.ndarray, equal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The return side of every correlation over a sample ``smask`` ``(T, N)`` (within the
    returns' sample ``rmask``), shared by every factor with that sample.

    Returns ``dv`` ``(H, T, N)`` float64: the forward return less its mean over the date's sample
    (0 outside it); ``y2`` ``(H, T, N)`` int32: twice the average rank of the forward return
    within the sample (0 outside); ``svv`` ``(H, T)``: the sum of ``dv**2`` (sums in symbol
    order); ``syy`` ``(H, T)`` int64: the sum of ``y2**2``. The ranks come from
    :func:`return_counts` (``below``/``equal`` over ``rmask``) less the symbols of ``rmask`` the
    sample misses: a missed symbol x has a smaller return than symbol s iff
    ``below[x] < below[s]``, an equal one iff ``below[x] == below[s]``."""
    h_n, t_n, s_n = fwd.shape
    dv = np.zeros((h_n, t_n, s_n), dtype=np.float64)
    y2 = np.zeros((h_n, t_n, s_n), dtype=np.int32)
    svv = np.zeros((h_n, t_n), dtype=np.float64)
    syy = np.zeros((h_n, t_n), dtype=np.int64)
    idx = np.empty(s_n, dtype=np.int64)
    xs = np.empty(s_n, dtype=np.int64)
    cnt = np.zeros(s_n + 1, dtype=np.int64)
    for t in range(t_n):
        n = 0
        n_x = 0
        for s in range(s_n):
            if smask[t, s]:
                idx[n] = s
                n += 1
            elif rmask[t, s]:
                xs[n_x] = s
                n_x += 1
        if n == 0:
            continue
        for h in range(h_n):
            # cnt[b]: missed symbols whose return is below b (returns-sample) ranks
            cnt[:] = 0
            for j in range(n_x):
                cnt[below[h, t, xs[j]]] += 1
            acc = 0
            for p in range(s_n + 1):
                c0 = cnt[p]
                cnt[p] = acc
                acc += c0
            mv = 0.0
            yy = 0
            for i in range(n):
                s = idx[i]
                mv += fwd[h, t, s]
                b = below[h, t, s]
                el = cnt[b]
                ee = cnt[b + 1] - el
                y = 2 * (b - el) + (equal[h, t, s] - ee) + 1
                y2[h, t, s] = y
                yy += y * y
            syy[h, t] = yy
            mv /= n
            vv = 0.0
            for i in range(n):
                s = idx[i]
                d = fwd[h, t, s] - mv
                dv[h, t, s] = d
                vv += d * d
            svv[h, t] = vv
    return dv, y2, svv, syy


@njit(cache=True, nogil=True, error_model="numpy")
def factor_metrics(
    fm: np.ndarray,
    keys: np.ndarray,
    bits: int,
    dv: np.ndarray,
    y2: np.ndarray,
    svv: np.ndarray,
    syy: np.ndarray,
    qfrac: np.ndarray,
    drop_unbinnable: bool,
    rank: np.ndarray,
    label: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-date metrics of one factor against the return side of its sample
    (:func:`sample_returns` ``dv, y2, svv, syy``, ``(H, T, N)`` / ``(H, T)``).

    ``fm`` ``(T, N)`` is the factor on its sample, NaN elsewhere; ``keys`` the rows of
    :func:`sample_keys` sorted ascending (NaN last). Each date's sorted sample is read off its
    keys (symbol = the low ``bits``; value = ``fm``) and finished by an insertion pass, which only
    moves values whose keys tied above the low bits (almost never more than a neighbour). One
    pass over the sorted sample gives the average ranks and the quantile labels, which also serve
    turnover and rank autocorrelation. Horizons are taken three at a time in one pass over the
    sample (independent sums side by side).

    Fills ``rank`` ``(T, N)`` float64 (average rank within the date's sample, NaN outside) and
    ``label`` ``(T, N)`` int8 (quantile 1..Q, 0 outside / unbinnable); returns ``ic (H, T)``,
    ``rank_ic (H, T)`` and ``qret (H, T, Q)`` (mean demeaned forward return per quantile)."""
    h_n, t_n, s_n = dv.shape
    nq = qfrac.shape[0] - 1
    ic = np.full((h_n, t_n), _NAN)
    ric = np.full((h_n, t_n), _NAN)
    qret = np.full((h_n, t_n, nq), _NAN)
    idx = np.empty(s_n, dtype=np.int64)
    fv = np.empty(s_n, dtype=np.float64)
    df = np.empty(s_n, dtype=np.float64)
    st = np.empty(s_n, dtype=np.float64)
    so = np.empty(s_n, dtype=np.int64)
    # by symbol (read on the sample only): twice the average rank, the label
    f2s = np.zeros(s_n, dtype=np.int64)
    labs = np.zeros(s_n, dtype=np.int64)
    edges = np.empty(nq + 1, dtype=np.float64)
    first = np.zeros(nq + 2, dtype=np.int64)  # first[0] unused
    qs = np.zeros((3, nq + 1), dtype=np.float64)
    uk = keys.reshape(t_n * s_n).view(np.uint64)
    low = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for t in range(t_n):
        n = 0
        for s in range(s_n):
            x = fm[t, s]
            idx[n] = s
            fv[n] = x
            n += x == x
        if n == 0:
            rank[t] = _NAN
            label[t] = 0
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
            rank[t] = _NAN
            label[t] = 0
            continue
        # twice the average ranks (integers) by symbol, 0 outside the sample: 2m + 2 at sorted
        # position m, then the (rare) tie groups get their average
        for s in range(s_n):
            f2s[s] = 0
            labs[s] = 0
        for m in range(n):
            f2s[so[m]] = 2 * m + 2
        m = 0
        while m < n - 1:
            if st[m + 1] == st[m]:
                k = m + 1
                while k + 1 < n and st[k + 1] == st[m]:
                    k += 1
                for j in range(m, k + 1):
                    f2s[so[j]] = m + k + 2
                m = k + 1
            else:
                m += 1
        # labels never decrease along the sorted sample: label(x) = number of edges < x, at
        # least 1 (x == edges[0], the minimum); first[q] = sorted position of the first label q
        if binnable:
            p = 0
            first[1] = 0
            for q in range(2, nq + 1):
                e = edges[q - 1]
                while p < n and st[p] <= e:
                    p += 1
                first[q] = p
            first[nq + 1] = n
            for q in range(1, nq + 1):
                for m in range(first[q], first[q + 1]):
                    labs[so[m]] = q
        sxx = 0
        for s in range(s_n):
            r = f2s[s]
            rank[t, s] = r * 0.5 if r > 0 else _NAN
            label[t, s] = labs[s]
            sxx += r * r
        # the factor side of the IC (two-pass Pearson sums, symbol order)
        mf = 0.0
        for i in range(n):
            mf += fv[i]
        mf /= n
        sff = 0.0
        for i in range(n):
            d = fv[i] - mf
            df[i] = d
            sff += d * d
        # rank IC from exact integer sums of twice the ranks, centred on their mean n + 1
        cc = n * (n + 1) * (n + 1)
        vx = sxx - cc
        for g in range(0, h_n, 3):
            h0 = g
            h1 = min(g + 1, h_n - 1)
            h2 = min(g + 2, h_n - 1)
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            p0 = 0
            p1 = 0
            p2 = 0
            qs[:] = 0.0
            for i in range(n):
                s = idx[i]
                d = df[i]
                r = f2s[s]
                lb = labs[s]
                e0 = dv[h0, t, s]
                e1 = dv[h1, t, s]
                e2 = dv[h2, t, s]
                s0 += d * e0
                s1 += d * e1
                s2 += d * e2
                p0 += r * y2[h0, t, s]
                p1 += r * y2[h1, t, s]
                p2 += r * y2[h2, t, s]
                qs[0, lb] += e0  # label 0 (no quantile) sums into the unused slot 0
                qs[1, lb] += e1
                qs[2, lb] += e2
            for j in range(min(3, h_n - g)):
                h = g + j
                s_fv = s0 if j == 0 else (s1 if j == 1 else s2)
                sxy = p0 if j == 0 else (p1 if j == 1 else p2)
                if n >= 2:
                    vv = svv[h, t]
                    if sff > 0.0 and vv > 0.0:
                        ic[h, t] = s_fv / math.sqrt(sff * vv)
                    vy = syy[h, t] - cc
                    if vx > 0 and vy > 0:
                        ric[h, t] = (sxy - cc) / math.sqrt(float(vx) * float(vy))
                if binnable:
                    for q in range(1, nq + 1):
                        cq = first[q + 1] - first[q]
                        if cq > 0:
                            qret[h, t, q - 1] = qs[j, q] / cq
    return ic, ric, qret


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _rank_sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """``(n, sum x, sum y, sum xx, sum yy, sum xy)`` over the symbols ranked in both rows ``a`` and
    ``b`` (NaN = not ranked). Ranks are multiples of 0.5, so every term and partial sum is exact
    (below 2**53) and reassociating the sums (``fastmath`` reassoc: SIMD lanes) changes nothing."""
    n = 0.0
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for s in range(a.shape[0]):
        x = a[s]
        y = b[s]
        ok = (x == x) & (y == y)
        x = x if ok else 0.0
        y = y if ok else 0.0
        n += 1.0 if ok else 0.0
        sx += x
        sy += y
        sxx += x * x
        syy += y * y
        sxy += x * y
    return n, sx, sy, sxx, syy, sxy


@njit(cache=True, nogil=True, error_model="numpy")
def _popcount(x: np.uint64) -> np.uint64:
    """Set bits of a 64-bit word (the SWAR count; LLVM emits ``popcnt``)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)  # type: ignore[no-any-return]


@njit(cache=True, nogil=True, error_model="numpy")
def _label_bits(label: np.ndarray, nq: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bits, count)`` of dates ``[lo, hi)``: ``bits[t - lo, q]`` the quantile-q names of date
    t as a bit set (64 symbols a word), ``count[t - lo, q]`` how many."""
    s_n = label.shape[1]
    n_w = (s_n + 63) // 64
    bits = np.zeros((hi - lo, nq + 1, n_w), dtype=np.uint64)
    count = np.zeros((hi - lo, nq + 1), dtype=np.int64)
    for t in range(lo, hi):
        row = label[t]
        for w in range(n_w):
            s0 = w * 64
            for q in range(1, nq + 1):
                word = np.uint64(0)
                for s in range(s0, min(s_n, s0 + 64)):
                    word |= np.uint64(row[s] == q) << np.uint64(s - s0)
                bits[t - lo, q, w] = word
                count[t - lo, q] += np.int64(_popcount(word))
    return bits, count


@njit(cache=True, nogil=True, error_model="numpy")
def lag_metrics(
    rank: np.ndarray, label: np.ndarray, lags: np.ndarray, nq: int, t0: int, t1: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank autocorrelation ``(L, T)`` and quantile turnover ``(L, T, Q)`` at each lag (dates).

    autocorr[l, t]: Pearson correlation of ``rank[t]`` and ``rank[t - lag]`` over symbols ranked
    on both dates (exact sums, :func:`_rank_sums`; one rounding each for the centred sums).
    turnover[l, t, q]: share of date t's quantile-q names not in quantile q at ``t - lag``
    (counted on bit sets, :func:`_label_bits`); NaN when either date has no quantile-q names.
    Only dates ``[t0, t1)`` are computed (the rest stay NaN)."""
    t_n, s_n = rank.shape
    l_n = lags.shape[0]
    ac = np.full((l_n, t_n), _NAN)
    to = np.full((l_n, t_n, nq), _NAN)
    if l_n == 0 or t1 <= t0:
        return ac, to
    lo = max(0, t0 - lags.max())
    bits, count = _label_bits(label, nq, lo, t1)
    for li in range(l_n):
        p = lags[li]
        for t in range(max(t0, p), t1):
            n, sx, sy, sxx, syy, sxy = _rank_sums(rank[t], rank[t - p])
            if n >= 2.0:
                vx = n * sxx - sx * sx
                vy = n * syy - sy * sy
                if vx > 0.0 and vy > 0.0:
                    ac[li, t] = (n * sxy - sx * sy) / math.sqrt(vx * vy)
            for q in range(1, nq + 1):
                now = count[t - lo, q]
                if now > 0 and count[t - p - lo, q] > 0:
                    same = np.int64(0)
                    for w in range(bits.shape[2]):
                        same += np.int64(_popcount(bits[t - lo, q, w] & bits[t - p - lo, q, w]))
                    to[li, t, q - 1] = (now - same) / now
    return ac, to


def sample_mask(fwd: np.ndarray) -> np.ndarray:
    """``(T, N)`` True where the forward returns at every horizon are finite (``fwd`` ``(H, T, N)``)."""
    return np.all(np.isfinite(fwd), axis=0)  # type: ignore[no-any-return]


class DateBlock:
    """One block of dates of an evaluator, run by one thread.

    Holds what every factor shares on these dates: the forward returns ``fwd`` ``(H, T_b, N)``,
    their sample mask and :func:`return_counts`; the return side of the last sample seen
    (:func:`sample_returns`, reused while factors share their sample: pass factors with the same
    missing bars one after the other); and the ``(T_b, N)`` buffers every factor's sort reuses.
    Calls are serialised by a lock (one factor at a time per block).
    """

    def __init__(self, a: int, b: int, fwd: np.ndarray) -> None:
        self.a, self.b = a, b
        self.fwd = np.ascontiguousarray(fwd)
        self.rmask = sample_mask(self.fwd)
        self.below, self.equal = return_counts(self.fwd, presort(self.fwd), self.rmask)
        shape = self.rmask.shape
        self.bits = max(1, int(shape[1] - 1).bit_length())
        self.fm = np.empty(shape, dtype=np.float64)
        self.keys = np.empty(shape, dtype=np.float64)
        self.smask = np.empty(shape, dtype=np.bool_)
        self.sample: np.ndarray | None = None
        self.returns: tuple[np.ndarray, ...] = ()
        self.lock = threading.Lock()

    def metrics(self, f: np.ndarray, qfrac: np.ndarray, drop: bool, rank: np.ndarray,
                label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ic, rank_ic, qret)`` of the factor's block ``f`` ``(T_b, N)``; fills ``rank`` and
        ``label`` (see :func:`factor_metrics`)."""
        with self.lock:
            sample_keys(f, self.rmask, self.bits, self.fm, self.keys, self.smask)
            self.keys.sort(axis=1)
            if self.sample is None or not np.array_equal(self.sample, self.smask):
                self.sample = self.smask.copy()
                self.returns = sample_returns(self.fwd, self.rmask, self.sample, self.below,
                                              self.equal)
            dv, y2, svv, syy = self.returns
            return factor_metrics(self.fm, self.keys, self.bits, dv, y2, svv, syy,  # type: ignore[no-any-return]
                                  qfrac, drop, rank, label)
