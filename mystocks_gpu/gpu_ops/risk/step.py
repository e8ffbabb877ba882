"""The risk engine's pure step: ``(batch of prices, account states) -> (metrics, new states,
breaches)``, batched over accounts as array programs on ``xp`` (numpy or cupy).

Per batch (prices ``sym``/``ts``/``px``, any order; non-finite or non-positive prices and
negative symbol codes are ignored, the stream processor routes them to the DLQ):

1. Prices are ordered by ``ts`` (stable) and cut into segments of equal return interval
   ``ts // interval_ns`` and day ``ts // day_ns``.
2. When a segment's interval is past an account's current interval, that interval is *closed*:
   each held symbol's return ``last_px / prev_close - 1`` (or ``log``) updates the EWMA
   covariance (``ewma.py``) and the return window, equity (``capital`` + P&L since inception)
   updates the running peak / max drawdown, and ``prev_close`` becomes ``last_px``. Stale price
   policy: a symbol without a new price in the interval keeps its last price, i.e. a zero
   return; several empty intervals in a row make one return (no zeros are inserted). A symbol
   with no price yet has no return (NaN: its EWMA row is left alone).
3. When a segment's day differs from an account's day, ``day_ref`` (the day P&L reference)
   becomes the last price of the previous day; before any previous day it is the first price
   (the price the account held the symbol at, or the first one seen for it).
4. The segment's last price per symbol (by ``ts``) becomes ``last_px``.

State changes happen only at interval closes and day rolls, so replaying the same prices in
batches of any size gives the same states. Metrics are a snapshot at the end of the batch
(``metrics`` keys below, arrays over accounts); limits are checked on them with "once per
breach" alerts (``limits.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.risk.account_state import StateBatch
from mystocks_gpu.gpu_ops.risk.config import RiskConfig
from mystocks_gpu.gpu_ops.risk.ewma import ewma_cov_update
from mystocks_gpu.gpu_ops.risk.limits import Breach, alerts_once, breach_records, check_limits
from mystocks_gpu.gpu_ops.risk.measures import (
    euler_var,
    exposures,
    historical_var_levels,
    max_drawdown,
    parametric_var,
    pnl,
)

Array = Any


@dataclass(frozen=True)
class PriceBatch:
    """Prices of one micro-batch (host arrays): ``sym`` int32 codes, ``ts`` int64 ns, ``px``."""

    sym: np.ndarray
    ts: np.ndarray
    px: np.ndarray


def _last_price_per_symbol(sym: Array, px: Array, n_u: int, xp: ModuleType) -> Array:
    """``(n_u,)`` the last price of each symbol in input order (NaN where none)."""
    last = xp.full(n_u, -1, dtype=xp.int64)
    pos = xp.arange(sym.shape[0], dtype=xp.int64)
    if xp is np:
        np.maximum.at(last, sym, pos)
    else:  # pragma: no cover - GPU
        import cupyx

        cupyx.scatter_max(last, sym, pos)
    return xp.where(last >= 0, px[xp.maximum(last, 0)], xp.nan)


def _first_price_per_symbol(sym: Array, px: Array, n_u: int, xp: ModuleType) -> Array:
    """``(n_u,)`` the first price of each symbol in input order (NaN where none)."""
    big = sym.shape[0]
    first = xp.full(n_u, big, dtype=xp.int64)
    pos = xp.arange(big, dtype=xp.int64)
    if xp is np:
        np.minimum.at(first, sym, pos)
    else:  # pragma: no cover - GPU
        import cupyx

        cupyx.scatter_min(first, sym, pos)
    return xp.where(first < big, px[xp.minimum(first, max(big - 1, 0))], xp.nan)


def _equity(st: StateBatch, xp: ModuleType) -> Array:
    _day, inc = pnl(st.qty, st.last_px, st.day_ref, st.cost, xp)
    return st.capital + inc


def _close_interval(st: StateBatch, mask: Array, cfg: RiskConfig, xp: ModuleType) -> None:
    held = st.symbols >= 0
    ok = held & xp.isfinite(st.last_px) & xp.isfinite(st.prev_close) & mask[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = st.last_px / st.prev_close
        r = xp.log(ratio) if cfg.returns == "log" else ratio - 1.0
    r = xp.where(ok, r, xp.nan)
    cov, mean, n_obs = ewma_cov_update(st.cov, st.mean, st.n_obs, r, cfg.lam, cfg.demean, xp)
    m3 = mask[:, None, None]
    st.arrays["cov"] = xp.where(m3, cov, st.cov)
    st.arrays["mean"] = xp.where(mask[:, None], mean, st.mean)
    st.arrays["n_obs"] = xp.where(mask[:, None], n_obs, st.n_obs)
    W = st.window.shape[1]
    # the historical window takes a row only when the close produced a return (not the first close)
    wmask = mask & xp.any(ok, axis=1)
    row = (xp.arange(W)[None, :] == st.win_pos[:, None]) & wmask[:, None]
    st.arrays["window"] = xp.where(row[:, :, None], r[:, None, :], st.window)
    st.arrays["win_pos"] = xp.where(wmask, (st.win_pos + 1) % W, st.win_pos)
    st.arrays["win_count"] = xp.where(wmask, xp.minimum(st.win_count + 1, W), st.win_count)
    eq = _equity(st, xp)[:, None]
    dd, peak = max_drawdown(eq, st.peak, st.max_dd, xp)
    st.arrays["max_dd"] = xp.where(mask, dd, st.max_dd)
    st.arrays["peak"] = xp.where(mask, peak, st.peak)
    st.arrays["prev_close"] = xp.where(mask[:, None] & xp.isfinite(st.last_px), st.last_px,
                                       st.prev_close)


def risk_step(prices: PriceBatch, states: StateBatch, cfg: RiskConfig, xp: ModuleType = np,
              with_metrics: bool = True, close_until: int | None = None
              ) -> tuple[dict[str, Array], StateBatch, list[Breach]]:
    """One micro-batch (module docstring). ``states`` is not modified (its arrays are replaced in
    the result, never written in place, so the copy is shallow). ``with_metrics=False`` only
    advances the state: no metrics, no limit check (the breach flags stay), ``({}, states, [])``.
    ``close_until`` (ns, optional): after the prices, close every interval that ended at or before
    that time (an emit boundary: the snapshot then includes the finished interval's return).

    ``metrics`` (arrays over accounts, currency units of the prices unless noted): ``gross``,
    ``net``, ``by_symbol (A, K)``, ``by_sector (A, n_sectors)``, ``pnl_day``,
    ``pnl_inception``, ``equity``, ``var_<c>`` / ``cvar_<c>`` (parametric, ``c`` = 95, 99...),
    ``hvar_<c>`` / ``hcvar_<c>`` (historical), ``marginal_var`` / ``component_var (A, K)`` (at
    ``limit_confidence``), ``concentration`` (max ``|e_i|`` / gross, fraction), ``max_drawdown``
    (fraction, including the current mark), ``limit_values`` / ``breached (A, 4)``."""
    st = StateBatch(dict(states.arrays))
    sym_h = np.asarray(prices.sym, dtype=np.int64)
    px_h = np.asarray(prices.px, dtype=np.float64)
    ts_h = np.asarray(prices.ts, dtype=np.int64)
    good = (sym_h >= 0) & np.isfinite(px_h) & (px_h > 0)
    order = np.argsort(ts_h[good], kind="stable")
    sym_h, px_h, ts_h = sym_h[good][order], px_h[good][order], ts_h[good][order]
    held_max = int(xp.max(st.symbols)) if st.symbols.size else -1
    n_u = max(int(sym_h.max()) + 1 if sym_h.size else 0, held_max + 1, 1)
    iv, dv = ts_h // cfg.interval_ns, ts_h // cfg.day_ns
    cuts = np.nonzero((np.diff(iv) != 0) | (np.diff(dv) != 0))[0] + 1
    held = st.symbols >= 0
    gidx = xp.maximum(st.symbols, 0)
    for seg in np.split(np.arange(sym_h.shape[0]), cuts) if sym_h.size else []:
        ivl, day = int(iv[seg[0]]), int(dv[seg[0]])
        close = (st.interval >= 0) & (st.interval < ivl)
        if bool(xp.any(close)):
            _close_interval(st, close, cfg, xp)
        st.arrays["interval"] = xp.maximum(st.interval, ivl)
        roll = (st.day >= 0) & (st.day != day)
        st.arrays["day_ref"] = xp.where(roll[:, None], st.last_px, st.day_ref)
        st.arrays["day"] = xp.full_like(st.day, day)
        s_d, p_d = xp.asarray(sym_h[seg]), xp.asarray(px_h[seg])
        last = _last_price_per_symbol(s_d, p_d, n_u, xp)
        first = _first_price_per_symbol(s_d, p_d, n_u, xp)
        new_px = xp.where(held, last[gidx], xp.nan)
        # no day reference yet: the price held before this segment, else the first one in it
        # (never a later one, so how the stream is cut into batches does not matter)
        ref0 = xp.where(xp.isfinite(st.last_px), st.last_px, xp.where(held, first[gidx], xp.nan))
        st.arrays["day_ref"] = xp.where(xp.isnan(st.day_ref) & held, ref0, st.day_ref)
        st.arrays["last_px"] = xp.where(xp.isfinite(new_px), new_px, st.last_px)
    if close_until is not None:
        # every open interval that ended at or before ``close_until`` closes now; the account then
        # has no open interval until its next price (so no zero return is inserted for a gap)
        done = (st.interval >= 0) & (st.interval < int(close_until) // cfg.interval_ns)
        if bool(xp.any(done)):
            _close_interval(st, done, cfg, xp)
            st.arrays["interval"] = xp.where(done, -1, st.interval)
    if not with_metrics:
        return {}, st, []
    return _metrics(st, cfg, xp)


def _metrics(st: StateBatch, cfg: RiskConfig, xp: ModuleType
             ) -> tuple[dict[str, Array], StateBatch, list[Breach]]:
    held = st.symbols >= 0
    ex = exposures(st.qty, st.last_px, st.sector, cfg.n_sectors, xp)
    e = ex["by_symbol"]
    day, inc = pnl(st.qty, st.last_px, st.day_ref, st.cost, xp)
    equity = st.capital + inc
    dd_now, _ = max_drawdown(equity[:, None], st.peak, st.max_dd, xp)
    enough = xp.all(~held | (st.n_obs >= cfg.min_obs), axis=1) & xp.any(held, axis=1)
    m: dict[str, Array] = {"gross": ex["gross"], "net": ex["net"], "by_symbol": e,
                           "by_sector": ex["by_sector"], "pnl_day": day, "pnl_inception": inc,
                           "equity": equity, "max_drawdown": dd_now}
    mu = st.mean if cfg.demean else None
    # one pass over the (A, W, K) window for every historical level (+ the limit's, if historical)
    h_levels = [*cfg.confidences, *([cfg.limit_confidence] if cfg.limit_var == "historical" else [])]
    hist = historical_var_levels(e, st.window, h_levels, cfg.horizon, xp)
    for c, (hv, hcv) in zip(cfg.confidences, hist, strict=False):
        tag = f"{round(c * 100, 4):g}".replace(".", "_")
        v, cv = parametric_var(e, st.cov, c, cfg.horizon, mu, xp)
        m[f"var_{tag}"] = xp.where(enough, v, xp.nan)
        m[f"cvar_{tag}"] = xp.where(enough, cv, xp.nan)
        m[f"hvar_{tag}"], m[f"hcvar_{tag}"] = hv, hcv
    mv, cv_ = euler_var(e, st.cov, cfg.limit_confidence, cfg.horizon, xp)
    m["marginal_var"] = xp.where(enough[:, None], mv, xp.nan)
    m["component_var"] = xp.where(enough[:, None], cv_, xp.nan)
    gross = ex["gross"]
    m["concentration"] = xp.where(gross > 0, xp.max(xp.abs(e), axis=1) / xp.where(gross > 0, gross, 1.0),
                                  0.0)
    if cfg.limit_var == "parametric":
        lv, _ = parametric_var(e, st.cov, cfg.limit_confidence, cfg.horizon, mu, xp)
        lv = xp.where(enough, lv, xp.nan)
    else:
        lv = hist[-1][0]
    values = xp.stack([lv, gross, m["concentration"], dd_now], axis=1)
    breached = check_limits(values, st.limits, xp)
    alert, flags = alerts_once(st.breached, breached)
    st.arrays["breached"] = flags
    m["limit_values"], m["breached"] = values, breached
    host = lambda a: a.get() if hasattr(a, "get") else np.asarray(a)  # noqa: E731
    return m, st, breach_records(host(alert), host(values), host(st.limits))
