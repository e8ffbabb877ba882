"""Estimate per-symbol :class:`MarketParams` and :class:`VolumeProfile` from a bar panel.

Input: one symbol's bars as arrays sorted by time: ``ts_ns`` (int64 ns since the epoch, e.g. the
bar open), ``close`` (currency), ``volume`` (shares), and optionally ``bid``/``ask`` (the quote
at the bar, currency) or ``spread`` (``ask - bid`` per row, e.g. the tick-feature engine's
``spread`` feature). Days are UTC days shifted by ``session_offset_s`` (seconds after UTC
midnight where a trading day starts), i.e. ``day = floor((ts / 1e9 - offset) / 86400)``.

* ``price``  = the last close.
* ``sigma``  = sample standard deviation (ddof 1) of daily log returns of the last close of each
  day, when the panel spans >= ``min_days`` days; otherwise the bar-to-bar log-return standard
  deviation scaled to a day, ``* sqrt(day_seconds / bar_seconds)`` (bar_seconds = median bar
  spacing).
* ``adv``    = mean of the daily volume sums (same day rule); with fewer than ``min_days`` days,
  total volume / (bars * bar_seconds) * day_seconds.
* ``spread`` = mean of ``ask - bid`` over bars whose quote is finite with ``0 < bid <= ask``
  (or the mean of the finite, non-negative ``spread`` values); with no usable quote, ``fallback_spread_bps * price / 1e4`` if given, else an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.execution.exceptions import ExecutionInputError
from mystocks_gpu.gpu_ops.execution.execution_config import ExecutionConfig
from mystocks_gpu.gpu_ops.execution.market_params import (
    SECONDS_PER_DAY,
    MarketParams,
    VolumeProfile,
)


def _day_index(ts_ns: np.ndarray, offset_s: float) -> np.ndarray:
    return np.floor((ts_ns / 1e9 - offset_s) / SECONDS_PER_DAY).astype(np.int64)


def estimate_params(symbol: str, ts_ns: Any, close: Any, volume: Any, *, bid: Any = None,
                    ask: Any = None, spread: Any = None, lot_size: int = 100, session_offset_s: float = 0.0,
                    min_days: int = 3, fallback_spread_bps: float | None = None,
                    profile: VolumeProfile | None = None,
                    config: ExecutionConfig | None = None) -> MarketParams:
    """:class:`MarketParams` of one symbol from its bars (see the module docstring).

    ``config.day_seconds`` scales the intraday fallback. Raises :class:`ExecutionInputError`
    naming the field when the bars cannot give it (too few bars, no volume, no quotes)."""
    cfg = config or ExecutionConfig()
    ts = np.asarray(ts_ns, dtype=np.int64)
    px = np.asarray(close, dtype=np.float64)
    vol = np.asarray(volume, dtype=np.float64)
    if not (ts.shape == px.shape == vol.shape and ts.ndim == 1):
        raise ExecutionInputError("bars", f"ts_ns, close and volume must be 1-D of one length, got "
                                          f"{ts.shape}, {px.shape}, {vol.shape}")
    if len(ts) < 3:
        raise ExecutionInputError("sigma", f"{symbol}: need >= 3 bars to estimate volatility, got {len(ts)}")
    if np.any(np.diff(ts) < 0):
        raise ExecutionInputError("ts_ns", f"{symbol}: bars must be sorted by time")
    if not (np.all(np.isfinite(px)) and np.all(px > 0)):
        raise ExecutionInputError("close", f"{symbol}: closes must be finite and > 0")
    vol = np.where(np.isfinite(vol), vol, 0.0)
    day = _day_index(ts, session_offset_s)
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    if len(starts) >= min_days:
        sigma = float(np.std(np.diff(np.log(px[ends])), ddof=1))
        adv = float(np.mean(np.add.reduceat(vol, starts)))
    else:
        bar_s = float(np.median(np.diff(ts))) / 1e9
        if not bar_s > 0:
            raise ExecutionInputError("ts_ns", f"{symbol}: bars need distinct times to scale volatility")
        sigma = float(np.std(np.diff(np.log(px)), ddof=1)) * math.sqrt(cfg.day_seconds / bar_s)
        adv = float(vol.sum()) / (len(ts) * bar_s) * cfg.day_seconds
    if not adv > 0:
        raise ExecutionInputError("adv", f"{symbol}: the bars have no volume")
    price = float(px[-1])
    spr = math.nan
    if bid is not None and ask is not None:
        b = np.asarray(bid, dtype=np.float64)
        a = np.asarray(ask, dtype=np.float64)
        ok = np.isfinite(b) & np.isfinite(a) & (b > 0) & (a >= b)
        if ok.any():
            spr = float(np.mean(a[ok] - b[ok]))
    elif spread is not None:
        sp = np.asarray(spread, dtype=np.float64)
        ok = np.isfinite(sp) & (sp >= 0)
        if ok.any():
            spr = float(np.mean(sp[ok]))
    if math.isnan(spr):
        if fallback_spread_bps is None:
            raise ExecutionInputError("spread", f"{symbol}: no usable bid/ask or spread in the bars; "
                                                "pass fallback_spread_bps")
        spr = fallback_spread_bps * price / 1e4
    return MarketParams(symbol, price, sigma, adv, spr, lot_size, profile=profile)


def estimate_profile(ts_ns: Any, volume: Any, *, bucket_seconds: float, n_buckets: int,
                     open_offset_s: float) -> VolumeProfile:
    """Intraday volume profile: the share of total volume that falls in each of ``n_buckets``
    buckets of ``bucket_seconds`` from ``open_offset_s`` (seconds after UTC midnight), pooled
    over all days (volume outside the buckets is ignored)."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    vol = np.asarray(volume, dtype=np.float64)
    r = np.mod(ts / 1e9 - open_offset_s, SECONDS_PER_DAY)
    idx = np.floor(r / bucket_seconds).astype(np.int64)
    inside = (idx >= 0) & (idx < n_buckets) & np.isfinite(vol)
    sums = np.bincount(idx[inside], weights=vol[inside], minlength=n_buckets)[:n_buckets]
    return VolumeProfile(tuple(sums.tolist()), bucket_seconds, open_offset_s)


def estimate_panel(panel: Mapping[str, Any], symbols: Sequence[str],
                   **kwargs: Any) -> tuple[dict[str, MarketParams], dict[str, str]]:
    """:func:`estimate_params` per symbol of a panel of columns ``sym`` (dense codes indexing
    ``symbols``), ``ts``, ``close``, ``volume`` and optional ``bid``/``ask`` or ``spread`` (rows in time order
    per symbol); ``kwargs`` go to :func:`estimate_params`. Returns the parameters by symbol and,
    for symbols whose estimate failed, the reason (``"field: message"``)."""
    sym = np.asarray(panel["sym"])
    out: dict[str, MarketParams] = {}
    errors: dict[str, str] = {}
    for code in np.unique(sym):
        rows = np.flatnonzero(sym == code)
        quotes: dict[str, Any] = {k: np.asarray(panel[k])[rows] for k in ("bid", "ask", "spread")
                                if k in panel}
        try:
            out[symbols[int(code)]] = estimate_params(
                symbols[int(code)], np.asarray(panel["ts"])[rows], np.asarray(panel["close"])[rows],
                np.asarray(panel["volume"])[rows], **quotes, **kwargs)
        except ExecutionInputError as exc:
            errors[symbols[int(code)]] = str(exc)
    return out, errors
