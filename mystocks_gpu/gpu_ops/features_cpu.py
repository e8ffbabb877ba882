"""CPU twin of the tick-feature kernel: one sequential numba pass over a batch.

:func:`process_batch` walks the rows in arrival order and updates the per-symbol state
arrays **in place** (the engine hands it copies). The arithmetic is mirrored statement by
statement in the CUDA kernels of ``features_chunks.cu`` / ``features_trades.cu`` (host side
``features_gpu.py``); keep
the two in step (``tests/unit/test_features_gpu_emu.py`` runs those kernels as C against this).

State arrays (S = symbol capacity, F = cfg.n_slots, C = cfg.n_scalars, N = window_ticks,
M = max_window_ticks; see ``features_config`` for the column meanings):

=============  =============  ==========================================================
array          shape, dtype   content
=============  =============  ==========================================================
``feat``       (S, F) f64     the symbol's current feature vector (carried on quotes)
``sc``         (S, C) f64     running scalars: last price, VWAP sums, EMAs, RSI averages
``ist``        (S, 3) i64     trades seen, VWAP session id, trade clock (ns)
``r_price``    (S, N) f64     ring of the last N trade prices (slot = trade# mod N)
``r_size``     (S, N) f64     ring of the last N trade sizes
``r_flow``     (S, N) f64     ring of the last N side * size
``r_ret``      (S, N) f64     ring of the last N log returns (slot = trade# mod N)
``t_ts``       (S, M) i64     ring of the last M trade times (time window)
``t_price``    (S, M) f64     ring of the last M trade prices (time window)
=============  =============  ==========================================================
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from mystocks_gpu.gpu_ops.features_config import (
    IS_NTRADES,
    IS_SESSION,
    IS_TCLOCK,
    N_FIXED,
    NS_PER_DAY,
    SC_CUM_PV,
    SC_CUM_V,
    SC_EMA0,
    SC_MACD_FAST,
    SC_MACD_SIG,
    SC_MACD_SLOW,
    SC_PREV,
    SC_RSI_GAIN,
    SC_RSI_LOSS,
    SLOT,
)

_F_LAST = SLOT["last_price"]
_F_RET = SLOT["ret"]
_F_LOGRET = SLOT["log_ret"]
_F_VWAP_S = SLOT["vwap_session"]
_F_VWAP_R = SLOT["vwap_roll"]
_F_MEAN = SLOT["roll_mean"]
_F_STD = SLOT["roll_std"]
_F_Z = SLOT["roll_z"]
_F_TMEAN = SLOT["time_mean"]
_F_TSTD = SLOT["time_std"]
_F_RSI = SLOT["rsi"]
_F_MACD = SLOT["macd"]
_F_MACD_SIG = SLOT["macd_signal"]
_F_MACD_HIST = SLOT["macd_hist"]
_F_BOLL_UP = SLOT["boll_upper"]
_F_BOLL_LO = SLOT["boll_lower"]
_F_RVOL = SLOT["rvol"]
_F_FLOW = SLOT["flow_imb"]
_F_SPREAD = SLOT["spread"]
_F_REL_SPREAD = SLOT["rel_spread"]
_F_BOOK_IMB = SLOT["book_imb"]
_NAN = np.nan
_DAY = NS_PER_DAY


@njit(cache=True, inline="always", error_model="numpy")
def _ema_step(e: float, x: float, a: float) -> float:
    # pandas ewm(adjust=False): w = ((1-a) w + a x) / ((1-a) + a), skipped when w == x
    if e != x:
        om = 1.0 - a
        e = (om * e + a * x) / (om + a)
    return e


@njit(cache=True, error_model="numpy")
def _trade(
    s, t, p, v, sd, feat, sc, ist, r_price, r_size, r_flow, r_ret, t_ts, t_price,
    ema_alpha, macd_alpha, n_win, window_ns, cap, rsi_p, sess_on, sess_off, do_time,
    do_roll, boll_k, rvol_scale,
):  # pragma: no cover - compiled
    n = ist[s, IS_NTRADES]
    prev = sc[s, SC_PREV]
    # --- returns
    if n >= 1:
        ratio = p / prev
        ret = ratio - 1.0
        lr = math.log(ratio)
    else:
        ret = _NAN
        lr = _NAN
    feat[s, _F_LAST] = p
    feat[s, _F_RET] = ret
    feat[s, _F_LOGRET] = lr
    # --- session VWAP
    if sess_on:
        sid = (t - sess_off) // _DAY
        if sid != ist[s, IS_SESSION]:
            ist[s, IS_SESSION] = sid
            sc[s, SC_CUM_PV] = 0.0
            sc[s, SC_CUM_V] = 0.0
    sc[s, SC_CUM_PV] += p * v
    sc[s, SC_CUM_V] += v
    if sc[s, SC_CUM_V] != 0.0:
        feat[s, _F_VWAP_S] = sc[s, SC_CUM_PV] / sc[s, SC_CUM_V]
    else:
        feat[s, _F_VWAP_S] = _NAN
    # --- EMAs and MACD
    for j in range(ema_alpha.shape[0]):
        if n == 0:
            e = p
        else:
            e = _ema_step(sc[s, SC_EMA0 + j], p, ema_alpha[j])
        sc[s, SC_EMA0 + j] = e
        feat[s, N_FIXED + j] = e
    if n == 0:
        fast = p
        slow = p
        macd = 0.0
        sig = 0.0
    else:
        fast = _ema_step(sc[s, SC_MACD_FAST], p, macd_alpha[0])
        slow = _ema_step(sc[s, SC_MACD_SLOW], p, macd_alpha[1])
        macd = fast - slow
        sig = _ema_step(sc[s, SC_MACD_SIG], macd, macd_alpha[2])
    sc[s, SC_MACD_FAST] = fast
    sc[s, SC_MACD_SLOW] = slow
    sc[s, SC_MACD_SIG] = sig
    feat[s, _F_MACD] = macd
    feat[s, _F_MACD_SIG] = sig
    feat[s, _F_MACD_HIST] = macd - sig
    # --- RSI (Wilder; seeded with the simple mean of the first p gains / losses)
    rsi = _NAN
    if n >= 1:
        d = p - prev
        g = d if d > 0.0 else 0.0
        lo = -d if d < 0.0 else 0.0
        if n <= rsi_p:
            sc[s, SC_RSI_GAIN] += g
            sc[s, SC_RSI_LOSS] += lo
            if n == rsi_p:
                sc[s, SC_RSI_GAIN] = sc[s, SC_RSI_GAIN] / rsi_p
                sc[s, SC_RSI_LOSS] = sc[s, SC_RSI_LOSS] / rsi_p
        else:
            sc[s, SC_RSI_GAIN] = (sc[s, SC_RSI_GAIN] * (rsi_p - 1) + g) / rsi_p
            sc[s, SC_RSI_LOSS] = (sc[s, SC_RSI_LOSS] * (rsi_p - 1) + lo) / rsi_p
        if n >= rsi_p:
            ag = sc[s, SC_RSI_GAIN]
            al = sc[s, SC_RSI_LOSS]
            if ag + al > 0.0:
                rsi = 100.0 * ag / (ag + al)
            else:
                rsi = 50.0
    feat[s, _F_RSI] = rsi
    # --- trade-count rings
    slot = n % n_win
    r_price[s, slot] = p
    r_size[s, slot] = v
    r_flow[s, slot] = sd * v
    if n >= 1:
        r_ret[s, slot] = lr
    n1 = n + 1
    ist[s, IS_NTRADES] = n1
    ist[s, IS_TCLOCK] = t
    sc[s, SC_PREV] = p
    if not do_roll:
        pass
    elif n1 >= n_win:
        acc = 0.0
        spv = 0.0
        sv = 0.0
        sf = 0.0
        for j in range(n_win):
            x = r_price[s, j]
            acc += x - p
            spv += x * r_size[s, j]
            sv += r_size[s, j]
            sf += r_flow[s, j]
        mean = p + acc / n_win
        ss = 0.0
        cc = 0.0
        for j in range(n_win):
            dd = r_price[s, j] - mean
            ss += dd * dd
            cc += dd
        var = (ss - cc * cc / n_win) / (n_win - 1)
        if var < 0.0:
            var = 0.0
        std = math.sqrt(var)
        feat[s, _F_MEAN] = mean
        feat[s, _F_STD] = std
        feat[s, _F_Z] = (p - mean) / std if std > 0.0 else _NAN
        feat[s, _F_BOLL_UP] = mean + boll_k * std
        feat[s, _F_BOLL_LO] = mean - boll_k * std
        if sv != 0.0:
            feat[s, _F_VWAP_R] = spv / sv
            feat[s, _F_FLOW] = sf / sv
        else:
            feat[s, _F_VWAP_R] = _NAN
            feat[s, _F_FLOW] = _NAN
    else:
        feat[s, _F_MEAN] = _NAN
        feat[s, _F_STD] = _NAN
        feat[s, _F_Z] = _NAN
        feat[s, _F_BOLL_UP] = _NAN
        feat[s, _F_BOLL_LO] = _NAN
        feat[s, _F_VWAP_R] = _NAN
        feat[s, _F_FLOW] = _NAN
    if not do_roll:
        pass
    elif n1 - 1 >= n_win:
        sr = 0.0
        for j in range(n_win):
            sr += r_ret[s, j] * r_ret[s, j]
        feat[s, _F_RVOL] = math.sqrt(rvol_scale * sr)
    else:
        feat[s, _F_RVOL] = _NAN
    # --- time window (t - W, t], at most `cap` most recent trades
    if do_time:
        tslot = n % cap
        t_ts[s, tslot] = t
        t_price[s, tslot] = p
        cnt = n1 if n1 < cap else cap
        lo_t = t - window_ns
        m = 0
        j = tslot
        acc = 0.0
        while m < cnt:
            if t_ts[s, j] <= lo_t:
                break
            acc += t_price[s, j] - p
            m += 1
            j = j - 1 if j > 0 else cap - 1
        mean = p + acc / m
        feat[s, _F_TMEAN] = mean
        if m >= 2:
            ss = 0.0
            cc = 0.0
            j = tslot
            for _ in range(m):
                dd = t_price[s, j] - mean
                ss += dd * dd
                cc += dd
                j = j - 1 if j > 0 else cap - 1
            var = (ss - cc * cc / m) / (m - 1)
            if var < 0.0:
                var = 0.0
            feat[s, _F_TSTD] = math.sqrt(var)
        else:
            feat[s, _F_TSTD] = _NAN


@njit(cache=True, error_model="numpy")
def process_batch(
    sym, ts, kind, price, size, side, bid, ask, bid_size, ask_size,
    feat, sc, ist, r_price, r_size, r_flow, r_ret, t_ts, t_price,
    ema_alpha, macd_alpha, n_win, window_ns, cap, rsi_p, sess_on, sess_off, do_time,
    do_roll, boll_k, rvol_scale, max_disorder, col_idx, out, rej,
):  # pragma: no cover - compiled
    """Update state in place over ``n`` rows and write ``out[col_idx[f], i]`` (shape (K, n)).

    Integer parameters: ``n_win`` = N, ``window_ns`` = W, ``cap`` = M, ``rsi_p``,
    ``sess_on`` (0/1), ``sess_off`` (ns of day), ``do_time`` (0/1: keep the time window),
    ``do_roll`` (0/1: compute the trade-window statistics), ``max_disorder`` (ns: how far a
    trade may be stamped behind its symbol's trade clock). ``col_idx`` is
    ``FeatureConfig.column_index()``.

    Event time going backwards: a trade stamped before its symbol's trade clock (the time of
    its last accepted trade) by at most ``max_disorder`` is used in arrival order at the
    clock's time (``t = clock``: the time window and session see it as simultaneous with the
    previous trade); one stamped further back is rejected: ``rej[i] = 1``, no state changes
    and ``out[:, i]`` repeats the symbol's current values.
    """
    n_slots = feat.shape[1]
    for i in range(sym.shape[0]):
        s = sym[i]
        if kind[i] == 0:
            t = ts[i]
            if ist[s, IS_NTRADES] > 0 and t < ist[s, IS_TCLOCK]:
                if ist[s, IS_TCLOCK] - t > max_disorder:
                    rej[i] = 1
                    for f in range(n_slots):
                        c = col_idx[f]
                        if c >= 0:
                            out[c, i] = feat[s, f]
                    continue
                t = ist[s, IS_TCLOCK]
            _trade(
                s, t, price[i], size[i], float(side[i]), feat, sc, ist, r_price, r_size,
                r_flow, r_ret, t_ts, t_price, ema_alpha, macd_alpha, n_win, window_ns, cap,
                rsi_p, sess_on, sess_off, do_time, do_roll, boll_k, rvol_scale,
            )
        b = bid[i]
        a = ask[i]
        sp = a - b
        mid = 0.5 * (a + b)
        feat[s, _F_SPREAD] = sp
        feat[s, _F_REL_SPREAD] = sp / mid if mid != 0.0 else _NAN
        den = bid_size[i] + ask_size[i]
        feat[s, _F_BOOK_IMB] = (bid_size[i] - ask_size[i]) / den if den != 0.0 else _NAN
        for f in range(n_slots):
            c = col_idx[f]
            if c >= 0:
                out[c, i] = feat[s, f]
