"""Synthetic panels for the factor tests (stable seeds)."""

from __future__ import annotations

import numpy as np

from mystocks_gpu.gpu_ops.factors import Panel


def random_fields(n_dates: int = 120, n_symbols: int = 12, seed: int = 12345,
                  nan_frac: float = 0.03) -> dict[str, np.ndarray]:
    """GBM-like OHLCV + vwap ``(n_dates, n_symbols)`` with scattered NaN bars."""
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_dates, n_symbols)), axis=0))
    o = c * np.exp(rng.normal(0, 0.01, c.shape))
    hi = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.01, c.shape)))
    lo = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.01, c.shape)))
    v = rng.lognormal(12, 0.7, c.shape)
    vw = (o + hi + lo + c) / 4
    out = {"open": o, "high": hi, "low": lo, "close": c, "volume": v, "vwap": vw}
    holes = rng.random(c.shape) < nan_frac
    for k in out:
        out[k] = np.where(holes, np.nan, out[k])
    return out


def random_panel(**kw: int | float) -> Panel:
    return Panel(random_fields(**kw))  # type: ignore[arg-type]


def planted_panel(n_dates: int = 160, n_symbols: int = 40, seed: int = 12345,
                  beta: float = 0.6) -> Panel:
    """Bars whose next-bar return depends on today's (close - open) / open (the planted factor)."""
    rng = np.random.default_rng(seed)
    o = np.empty((n_dates, n_symbols))
    c = np.empty_like(o)
    prev = np.full(n_symbols, 100.0)
    f = np.zeros(n_symbols)
    for t in range(n_dates):
        o[t] = prev * np.exp(rng.normal(0, 0.01, n_symbols))
        z = (f - f.mean()) / (f.std() + 1e-12)
        c[t] = o[t] * np.exp(beta * 0.02 * z + rng.normal(0, 0.02, n_symbols))
        f = (c[t] - o[t]) / o[t]
        prev = c[t]
    hi = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.005, o.shape)))
    lo = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.005, o.shape)))
    v = rng.lognormal(10, 0.5, o.shape)
    return Panel({"open": o, "high": hi, "low": lo, "close": c, "volume": v})
