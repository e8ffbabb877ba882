"""Pure-Python twin of :func:`mystocks_gpu.gpu_ops.execution.schedule_cpu.plan_core` (math module
and lists, no JIT): the same operations in the same order, so the same results. Selected with
``ExecutionConfig(kernel="python")``; ``bench/execution.py`` times it against the numba core."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mystocks_gpu.gpu_ops.execution.parent_orders import AC, DEFLATE, POV, TWAP

SECONDS_PER_DAY = 86_400.0


def _position(t_ns: int, cum: Sequence[float], b: float, open_s: float) -> tuple[float, float]:
    d = t_ns / 1e9 - open_s
    day = math.floor(d / SECONDS_PER_DAY)
    r = d - day * SECONDS_PER_DAY
    if r < 0.0:
        r = 0.0
    i = math.floor(r / b)
    if i >= len(cum) - 1:
        return float(day), 1.0
    return float(day), cum[i] + (r - i * b) / b * (cum[i + 1] - cum[i])


def plan_core_py(strat: int, L: int, lot: int, odd: int, N: int, H: int, start_ns: int, q: float,
                 cap: float, pov: float, adv: float, adv_rate: float, prof_cum: np.ndarray,
                 prof_b: float, prof_open: float, eta: float, gamma: float, eps: float, sig2: float,
                 n_out: np.ndarray, vol_out: np.ndarray
                 ) -> tuple[int, float, float, float, float, float, float]:
    """Same signature and result as ``schedule_cpu.plan_core``."""
    tau = H / N / 1e9
    floor = math.floor
    if len(prof_cum) == 0:
        vol = [adv_rate * tau] * N
    else:
        cum = prof_cum.tolist()
        hq, hr = divmod(H, N)
        d0, c0 = _position(start_ns, cum, prof_b, prof_open)
        vol = [0.0] * N
        for k in range(N):
            d1, c1 = _position(start_ns + (k + 1) * hq + ((k + 1) * hr) // N, cum, prof_b, prof_open)
            vol[k] = adv * ((d1 - d0) + (c1 - c0))
            d0, c0 = d1, c1
    if strat == POV:
        rate = min(pov, cap)
        done = 0
        cumv = 0.0
        lots = [0] * N
        for k in range(N):
            cumv = cumv + vol[k]
            take = min(min(floor(rate * cumv / lot), L) - done, floor(cap * vol[k] / lot))
            lots[k] = take
            done += take
        unf = L - done
    else:
        if strat == AC:
            w = [0.0] * N
            a = 1.0
            for k in range(N):
                w[k] = a
                a = a * q
            b = a
            for k in range(N - 1, -1, -1):
                w[k] = w[k] + b
                b = b * q
        elif strat == TWAP:
            w = [1.0] * N
        else:
            w = vol
        W = 0.0
        for x in w:
            W = W + x
        if not W > 0.0:
            w = [1.0] * N
            W = float(N)
        lots = [0] * N
        frac = [0.0] * N
        tot = 0
        for k in range(N):
            t = L * w[k] / W * DEFLATE
            f = floor(t)
            lots[k] = f
            frac[k] = t - f
            tot += f
        R = L - tot
        if R > 0:
            for j in sorted(range(N), key=frac.__getitem__, reverse=True)[:R]:
                lots[j] += 1
        caps = [floor(cap * v / lot) for v in vol]
        capsum = sum(caps)
        if capsum < L:
            lots = caps
            unf = L - capsum
        else:
            carry = 0
            for k in range(N):
                want = lots[k] + carry
                take = min(want, caps[k])
                lots[k] = take
                carry = want - take
            k = N - 1
            while carry > 0:
                add = min(caps[k] - lots[k], carry)
                lots[k] += add
                carry -= add
                k -= 1
            unf = 0
    shares = [x * lot for x in lots]
    k_odd = 0
    for k in range(N - 1, -1, -1):
        if lots[k] > 0:
            k_odd = k
            break
    if unf > 0:
        unf_sh = unf * lot + odd
    else:
        shares[k_odd] += odd
        unf_sh = 0
    X = 0.0
    for s in shares:
        X = X + s
    rem_x = X
    perm = temp = vs = maxp = 0.0
    for k in range(N):
        nk = float(shares[k])
        rem_x = rem_x - nk
        perm = perm + rem_x * nk
        temp = temp + nk * nk
        vs = vs + rem_x * rem_x
        if nk > 0.0:
            p = nk / vol[k] if vol[k] > 0.0 else math.inf
            if p > maxp:
                maxp = p
    n_out[:N] = shares
    vol_out[:N] = vol
    return unf_sh, X, gamma * perm, eta / tau * temp, eps * X, sig2 * tau * vs, maxp
