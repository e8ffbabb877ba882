"""GPU-structured planner: :func:`plan_batch_xp`, the array-program twin of
``schedule_cpu.plan_batch_cpu``, written once against an array module ``xp`` (CuPy on the GPU,
NumPy in the tests).

Orders are rows of (B, n_max) matrices; the loops run over the slice index (n_max iterations of
vector operations over all B orders), never over orders. Every floating-point reduction that
the numba core does sequentially (the weight sum, the score sums, the powers of q) is done here
column by column in the same order, and the largest-remainder ranking uses a stable sort, so the
results equal the CPU twin's bit for bit (same IEEE operations; no exp/log; CuPy's elementwise
kernels do not fuse multiply-adds across separate array operations).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.execution.parent_orders import AC, DEFLATE, POV, TWAP

SECONDS_PER_DAY = 86_400.0


def _argsort_stable(xp: ModuleType, a: Any) -> Any:
    # CuPy sorts are always stable (and reject ``kind``); NumPy needs it asked for
    if xp is np:
        return np.argsort(a, axis=1, kind="stable")
    return xp.argsort(a, axis=1)


def _profile_position(xp: ModuleType, t_ns: Any, cum: Any, row: Any, prof_b: float,
                      prof_open: float) -> tuple[Any, Any]:
    """Vectorised ``schedule_cpu.profile_position``: ``t_ns`` (B, K) int64, ``cum`` (P, M+1)
    cumulative profiles, ``row`` (B,) the profile of each order."""
    s = t_ns / 1e9
    d = s - prof_open
    day = xp.floor(d / SECONDS_PER_DAY)
    r = d - day * SECONDS_PER_DAY
    r = xp.where(r < 0.0, 0.0, r)
    m = cum.shape[1] - 1
    i = xp.floor(r / prof_b)
    inside = i < m
    ii = xp.where(inside, i, 0.0).astype(xp.int64)
    lo = cum[row[:, None], ii]
    hi = cum[row[:, None], ii + 1]
    c = xp.where(inside, lo + (r - i * prof_b) / prof_b * (hi - lo), 1.0)
    return day, c


def plan_batch_xp(xp: ModuleType, strat: Any, L: Any, lot: Any, odd: Any, N: Any, H: Any,
                  start_ns: Any, q: Any, cap: Any, pov: Any, adv: Any, adv_rate: Any,
                  prof_cum: Any, prof_row: Any, prof_b: float, prof_open: float, eta: Any,
                  gamma: Any, eps: Any, sig2: Any, valid: Any, offsets: Any) -> tuple[Any, Any, Any]:
    """Same arguments and results as ``schedule_cpu.plan_batch_cpu``, on arrays of ``xp``
    (computed on (B, n_max) matrices, returned flat in the same CSR layout)."""
    B = int(strat.shape[0])
    n_max = int(xp.where(valid, N, 0).max()) if B else 0
    f64, i64 = xp.float64, xp.int64
    # invalid rows are planned as a harmless 1-slice TWAP of 0 lots, then blanked
    N = xp.where(valid, N, 1).astype(i64)
    H = xp.where(valid, H, 1).astype(i64)
    L = xp.where(valid, L, 0).astype(i64)
    lot = xp.where(valid, lot, 1).astype(i64)
    odd = xp.where(valid, odd, 0).astype(i64)
    strat = xp.where(valid, strat, TWAP)
    q = xp.where(valid, q, 1.0)
    cap = xp.where(valid, cap, 1.0)
    pov = xp.where(valid, pov, 1.0)
    adv = xp.where(valid, adv, 0.0)
    adv_rate = xp.where(valid, adv_rate, 0.0)
    lotf = lot.astype(f64)
    ncol = max(int(n_max), 1)
    cols = xp.arange(ncol, dtype=i64)[None, :]
    active = cols < N[:, None]
    tau = H / N / 1e9
    # 1. expected volume
    vol = xp.broadcast_to((adv_rate * tau)[:, None], (B, ncol)).copy()
    has_prof = (prof_row >= 0) & valid
    if prof_cum.shape[0] > 0 and bool(has_prof.any()):
        kk = xp.arange(ncol + 1, dtype=i64)[None, :]
        hq, hr = (H // N)[:, None], (H % N)[:, None]
        t = start_ns[:, None] + kk * hq + (kk * hr) // N[:, None]
        day, c = _profile_position(xp, t, prof_cum, xp.where(has_prof, prof_row, 0), prof_b, prof_open)
        vp = adv[:, None] * ((day[:, 1:] - day[:, :-1]) + (c[:, 1:] - c[:, :-1]))
        vol = xp.where(has_prof[:, None], vp, vol)
    vol = xp.where(active, vol, 0.0)
    # 2. weights (AC powers of q column by column, as the sequential loop does)
    w_ac = xp.zeros((B, ncol), dtype=f64)
    a = xp.ones(B, dtype=f64)
    qn = xp.ones(B, dtype=f64)
    for k in range(ncol):
        w_ac[:, k] = a
        a = a * q
        qn = xp.where(N == k + 1, a, qn)
    b = qn
    for k in range(ncol - 1, -1, -1):
        m = k < N
        w_ac[:, k] = xp.where(m, w_ac[:, k] + b, w_ac[:, k])
        b = xp.where(m, b * q, b)
    sc = strat[:, None]
    w = xp.where(sc == AC, w_ac, xp.where(sc == TWAP, 1.0, vol))
    w = xp.where(active, w, 0.0)
    W = xp.zeros(B, dtype=f64)
    for k in range(ncol):
        W = W + w[:, k]
    bad = ~(W > 0.0)
    w = xp.where(bad[:, None] & active, 1.0, w)
    W = xp.where(bad, N.astype(f64), W)
    # 3. largest remainder
    t = L[:, None] * w / W[:, None] * DEFLATE
    f = xp.floor(t)
    lots = f.astype(i64)
    frac = xp.where(active, t - f, -1.0)
    R = L - lots.sum(axis=1)
    order = _argsort_stable(xp, -frac)
    rank = _argsort_stable(xp, order)
    lots = lots + (rank < R[:, None]).astype(i64)
    # 4. participation cap
    caps = xp.floor(cap[:, None] * vol / lotf[:, None]).astype(i64)
    capsum = caps.sum(axis=1)
    capped = capsum < L
    carry = xp.zeros(B, dtype=i64)
    for k in range(ncol):
        want = lots[:, k] + carry
        take = xp.minimum(want, caps[:, k])
        lots[:, k] = take
        carry = want - take
    for k in range(ncol - 1, -1, -1):
        add = xp.minimum(caps[:, k] - lots[:, k], carry)
        lots[:, k] = lots[:, k] + add
        carry = carry - add
    # 5. POV
    rate = xp.minimum(pov, cap)
    plots = xp.zeros((B, ncol), dtype=i64)
    done = xp.zeros(B, dtype=i64)
    cumv = xp.zeros(B, dtype=f64)
    for k in range(ncol):
        cumv = cumv + vol[:, k]
        tgt = xp.minimum(xp.floor(rate * cumv / lotf).astype(i64), L)
        take = xp.minimum(tgt - done, caps[:, k])
        plots[:, k] = take
        done = done + take
    is_pov = strat == POV
    lots = xp.where(is_pov[:, None], plots, xp.where(capped[:, None], caps, lots))
    unf = xp.where(is_pov, L - done, xp.where(capped, L - capsum, 0))
    # 6. shares and the odd lot
    shares = lots * lot[:, None]
    trades = lots > 0
    last = (ncol - 1) - xp.argmax(trades[:, ::-1].astype(xp.int8), axis=1)
    k_odd = xp.where(trades.any(axis=1), last, 0)
    rows = xp.arange(B)
    shares[rows, k_odd] = shares[rows, k_odd] + xp.where(unf > 0, 0, odd)
    unf_sh = xp.where(unf > 0, unf * lot + odd, 0)
    # 7. scores, summed column by column like the sequential core
    sf = shares.astype(f64)
    X = xp.zeros(B, dtype=f64)
    for k in range(ncol):
        X = X + sf[:, k]
    rem_x = X
    perm = xp.zeros(B, dtype=f64)
    temp = xp.zeros(B, dtype=f64)
    vs = xp.zeros(B, dtype=f64)
    for k in range(ncol):
        nk = sf[:, k]
        rem_x = rem_x - nk
        perm = perm + rem_x * nk
        temp = temp + nk * nk
        vs = vs + rem_x * rem_x
    part = xp.where(sf > 0.0, xp.where(vol > 0.0, sf / xp.where(vol > 0.0, vol, 1.0), xp.inf), 0.0)
    maxp = part.max(axis=1)
    scores = xp.stack([unf_sh.astype(f64), X, gamma * perm, eta / tau * temp, eps * X,
                       sig2 * tau * vs, maxp], axis=1)
    keep = active & valid[:, None]  # row-major: the CSR order of ``offsets``
    return shares[keep], vol[keep], xp.where(valid[:, None], scores, xp.nan)
