"""CPU (numba) planner: one parent order -> integer-lot child slices + Almgren-Chriss scores.

:func:`plan_core` is the algorithm, written once: the single-order API calls it directly (outputs
preallocated by the caller: cheaper than returning arrays from numba) and :func:`plan_batch_cpu`
runs it over B orders in parallel (``prange``). The GPU-structured
twin in ``schedule_xp.py`` and the pure-Python twin in ``schedule_py.py`` perform the same
floating-point operations in the same order (only +, -, *, /, sqrt and floor: no ``exp``/``log``),
so all three give identical schedules and scores.

Algorithm (``L = quantity // lot`` lots, ``N`` slices of ``tau = H / N / 1e9`` s):

1. Expected market volume per slice: ``adv_rate * tau`` (flat), or with a volume profile
   ``adv * (F(t_{k+1}) - F(t_k))`` with ``F`` the cumulative profile (days + linear
   interpolation inside the bucket).
2. Weights ``w_k``: AC ``q^k + q^(2N-1-k)`` with ``q = exp(-kappa tau)`` (proportional to
   ``cosh(kappa (T - t_{k+1/2}))``, the closed-form AC trade list; q = 1 gives TWAP), TWAP 1,
   VWAP the expected volume.
3. Targets ``t_k = L w_k / W * DEFLATE`` (``W = sum w``), rounded by largest remainder: floors,
   then one extra lot to the ``L - sum floors`` largest fractional parts (ties: earlier slice).
   Monotone targets stay monotone.
4. Participation cap: ``c_k = floor(cap * vol_k / lot)`` lots. If ``sum c < L`` the schedule is
   ``c`` and the rest is unfilled; otherwise lots above a cap are carried to the next slices,
   and what is left at the end fills the latest slices with room.
5. POV instead tracks participation of the expected volume to date: after slice k it has traded
   ``min(floor(min(pov, cap) * sum_{j<=k} vol_j / lot), L)`` lots, each slice also within its
   cap ``c_k``; what is not reached by the end is unfilled.
6. Shares = lots * lot; the odd lot (``quantity % lot``) goes to the last trading slice (to the
   first slice when none trades), or to ``unfilled`` when the cap left lots unfilled.
7. Scores: with ``x_k`` the shares left after slice k: ``perm = gamma sum x_k n_k``,
   ``temp = eta / tau sum n_k^2``, ``spread = eps sum n_k``, ``var = sig2 tau sum x_k^2``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from mystocks_gpu.gpu_ops.execution.parent_orders import AC, DEFLATE, POV, TWAP

SECONDS_PER_DAY = 86_400.0


@njit(cache=True)
def profile_position(t_ns: int, prof_cum: np.ndarray, prof_b: float,
                     prof_open: float) -> tuple[float, float]:
    """``(day, fraction)`` of the cumulative volume profile at ``t_ns``: whole days since the
    first session open before the epoch, and the share of the day's volume traded by then."""
    s = t_ns / 1e9
    d = s - prof_open
    day = math.floor(d / SECONDS_PER_DAY)
    r = d - day * SECONDS_PER_DAY
    if r < 0.0:
        r = 0.0
    m = prof_cum.shape[0] - 1
    i = math.floor(r / prof_b)
    if i >= m:
        c = 1.0
    else:
        c = prof_cum[i] + (r - i * prof_b) / prof_b * (prof_cum[i + 1] - prof_cum[i])
    return float(day), c


@njit(cache=True)
def plan_core(strat: int, L: int, lot: int, odd: int, N: int, H: int, start_ns: int, q: float,
              cap: float, pov: float, adv: float, adv_rate: float, prof_cum: np.ndarray,
              prof_b: float, prof_open: float, eta: float, gamma: float, eps: float, sig2: float,
              n_out: np.ndarray, vol_out: np.ndarray
              ) -> tuple[int, float, float, float, float, float, float]:
    """Plan one order into ``n_out`` (int64 (N,), shares) and ``vol_out`` (float64 (N,),
    expected market volume); returns ``(unfilled shares, executed shares, permanent impact,
    temporary impact, spread cost, variance, max participation)``. See the module docstring."""
    tau = H / N / 1e9
    # 1. expected market volume per slice
    if prof_cum.shape[0] == 0:
        v = adv_rate * tau
        for k in range(N):
            vol_out[k] = v
    else:
        hq = H // N
        hr = H % N
        d0, c0 = profile_position(start_ns, prof_cum, prof_b, prof_open)
        for k in range(N):
            t1 = start_ns + (k + 1) * hq + ((k + 1) * hr) // N
            d1, c1 = profile_position(t1, prof_cum, prof_b, prof_open)
            vol_out[k] = adv * ((d1 - d0) + (c1 - c0))
            d0 = d1
            c0 = c1
    lots = np.zeros(N, dtype=np.int64)
    if strat == POV:
        rate = min(pov, cap)
        done = 0
        cumv = 0.0
        for k in range(N):
            cumv = cumv + vol_out[k]
            tgt = min(int(math.floor(rate * cumv / lot)), L)
            take = min(tgt - done, int(math.floor(cap * vol_out[k] / lot)))
            lots[k] = take
            done += take
        unf = L - done
    else:
        # 2. weights
        w = np.empty(N, dtype=np.float64)
        if strat == AC:
            a = 1.0
            for k in range(N):
                w[k] = a
                a = a * q
            b = a
            for k in range(N - 1, -1, -1):
                w[k] = w[k] + b
                b = b * q
        elif strat == TWAP:
            for k in range(N):
                w[k] = 1.0
        else:
            for k in range(N):
                w[k] = vol_out[k]
        W = 0.0
        for k in range(N):
            W = W + w[k]
        if not W > 0.0:
            for k in range(N):
                w[k] = 1.0
            W = float(N)
        # 3. largest remainder
        frac = np.empty(N, dtype=np.float64)
        tot = 0
        for k in range(N):
            t = L * w[k] / W * DEFLATE
            f = math.floor(t)
            lots[k] = f
            frac[k] = t - f
            tot += f
        R = L - tot
        if R > 0:
            order = np.argsort(-frac, kind="mergesort")
            for j in range(R):
                lots[order[j]] += 1
        # 4. participation cap
        caps = np.empty(N, dtype=np.int64)
        capsum = 0
        for k in range(N):
            c = int(math.floor(cap * vol_out[k] / lot))
            caps[k] = c
            capsum += c
        if capsum < L:
            for k in range(N):
                lots[k] = caps[k]
            unf = L - capsum
        else:
            carry = 0
            for k in range(N):
                want = lots[k] + carry
                take = min(want, caps[k])
                lots[k] = take
                carry = want - take
            for k in range(N - 1, -1, -1):
                add = min(caps[k] - lots[k], carry)
                lots[k] += add
                carry -= add
            unf = 0
    # 6. shares and the odd lot
    k_odd = 0
    for k in range(N):
        n_out[k] = lots[k] * lot
        if lots[k] > 0:
            k_odd = k
    if unf > 0:
        unf_sh = unf * lot + odd
    else:
        n_out[k_odd] += odd
        unf_sh = 0
    # 7. scores
    X = 0.0
    for k in range(N):
        X = X + n_out[k]
    rem_x = X
    perm = 0.0
    temp = 0.0
    vs = 0.0
    maxp = 0.0
    for k in range(N):
        nk = float(n_out[k])
        rem_x = rem_x - nk
        perm = perm + rem_x * nk
        temp = temp + nk * nk
        vs = vs + rem_x * rem_x
        if nk > 0.0:
            p = nk / vol_out[k] if vol_out[k] > 0.0 else math.inf
            if p > maxp:
                maxp = p
    return (unf_sh, X, gamma * perm, eta / tau * temp, eps * X, sig2 * tau * vs, maxp)


@njit(cache=True, parallel=True)
def plan_batch_cpu(strat: np.ndarray, L: np.ndarray, lot: np.ndarray, odd: np.ndarray,
                   N: np.ndarray, H: np.ndarray, start_ns: np.ndarray, q: np.ndarray,
                   cap: np.ndarray, pov: np.ndarray, adv: np.ndarray, adv_rate: np.ndarray,
                   prof_cum: np.ndarray, prof_row: np.ndarray, prof_b: float, prof_open: float,
                   eta: np.ndarray, gamma: np.ndarray, eps: np.ndarray, sig2: np.ndarray,
                   valid: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B orders at once (one ``prange`` iteration each). Arrays are (B,) except ``prof_cum``
    (P, M+1) with ``prof_row`` (B,) selecting a row (-1: flat volume), and ``offsets`` (B+1,):
    row i's slices are ``[offsets[i], offsets[i+1])`` of the flat outputs (N[i] slices for a valid
    row, none for an invalid one, which is skipped). Returns ``shares`` int64 (total,),
    ``volume`` float64 (total,) and ``scores`` float64 (B, 7) in the order of :func:`plan_core`'s
    result (NaN for invalid rows)."""
    B = strat.shape[0]
    total = offsets[B]
    shares = np.empty(total, dtype=np.int64)
    volume = np.empty(total, dtype=np.float64)
    scores = np.full((B, 7), np.nan)
    empty = np.zeros(0, dtype=np.float64)
    for i in prange(B):
        if not valid[i]:
            continue
        a = offsets[i]
        b = offsets[i + 1]
        pc = empty if prof_row[i] < 0 else prof_cum[prof_row[i]]
        unf, X, perm, temp, spread, var, maxp = plan_core(
            strat[i], L[i], lot[i], odd[i], b - a, H[i], start_ns[i], q[i], cap[i], pov[i], adv[i],
            adv_rate[i], pc, prof_b, prof_open, eta[i], gamma[i], eps[i], sig2[i],
            shares[a:b], volume[a:b])
        scores[i, 0] = unf
        scores[i, 1] = X
        scores[i, 2] = perm
        scores[i, 3] = temp
        scores[i, 4] = spread
        scores[i, 5] = var
        scores[i, 6] = maxp
    return shares, volume, scores


@njit(cache=True)
def plan_batch_serial(strat: np.ndarray, L: np.ndarray, lot: np.ndarray, odd: np.ndarray,
                      N: np.ndarray, H: np.ndarray, start_ns: np.ndarray, q: np.ndarray,
                      cap: np.ndarray, pov: np.ndarray, adv: np.ndarray, adv_rate: np.ndarray,
                      prof_cum: np.ndarray, prof_row: np.ndarray, prof_b: float, prof_open: float,
                      eta: np.ndarray, gamma: np.ndarray, eps: np.ndarray, sig2: np.ndarray,
                      valid: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`plan_batch_cpu` on one thread: for the small batches of a stream, where waking the
    parallel thread pool costs more than the work (milliseconds on a busy machine). Same results."""
    B = strat.shape[0]
    total = offsets[B]
    shares = np.empty(total, dtype=np.int64)
    volume = np.empty(total, dtype=np.float64)
    scores = np.full((B, 7), np.nan)
    empty = np.zeros(0, dtype=np.float64)
    for i in range(B):
        if not valid[i]:
            continue
        a = offsets[i]
        b = offsets[i + 1]
        pc = empty if prof_row[i] < 0 else prof_cum[prof_row[i]]
        unf, X, perm, temp, spread, var, maxp = plan_core(
            strat[i], L[i], lot[i], odd[i], b - a, H[i], start_ns[i], q[i], cap[i], pov[i], adv[i],
            adv_rate[i], pc, prof_b, prof_open, eta[i], gamma[i], eps[i], sig2[i],
            shares[a:b], volume[a:b])
        scores[i, 0] = unf
        scores[i, 1] = X
        scores[i, 2] = perm
        scores[i, 3] = temp
        scores[i, 4] = spread
        scores[i, 5] = var
        scores[i, 6] = maxp
    return shares, volume, scores


@njit(cache=True)
def ac_kappa_cpu(is_ac: np.ndarray, q: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """AC urgency per row, ``kappa = -log(q) / tau`` (1/s; +inf at ``q = 0``, 0 for other
    strategies), float64 ``(B,)``. One C-library ``log`` per row, as the single-order API's
    ``math.log``: NumPy's own SIMD ``log`` (AVX-512 machines) can differ from it in the last bit."""
    out = np.empty(q.shape[0])
    for i in range(q.shape[0]):
        if not is_ac[i]:
            out[i] = 0.0
        elif q[i] > 0.0:
            out[i] = -math.log(q[i]) / tau[i]
        else:
            out[i] = np.inf
    return out
