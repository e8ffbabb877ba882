"""The long-short backtest of a model's out-of-sample predictions, through the backtest engine's
``signal`` strategy (``gpu_ops.backtest``, the same engine as the ``backtest`` job).

The book (one cell per symbol, each with the same capital ``1``):

* **Signal**: per date, the predictions of the symbols predicted that date are ranked (average
  ranks for ties) and mapped to ``s = 2 (rank - 1) / (n - 1) - 1`` in [-1, 1] (``s = 0`` when
  ``n = 1``); dates outside the walk-forward test windows (training spans, embargoes) and symbols
  without a prediction get ``s = 0``.
* **Rule**: the ``signal`` strategy with ``threshold_long = threshold_exit = t`` where
  ``t = max(1 - 2 q, 1e-9)`` (``q`` = ``ls_quantile``): a symbol is long while ``s > t`` (the top
  ``q`` share of the cross-section), short while ``s < -t`` (the bottom ``q``), flat otherwise
  (so flat outside the test windows). ``direction = long_short``, fraction sizing 1.0.
* **Prices and fills**: the label's price series for open, high, low and close, and
  ``execution = "close"``: a position is taken at the price the label starts from (the
  prediction uses only features known at that time, so there is no look-ahead), like the label.
  ``fees`` and ``slippage`` as the engine defines them.
* **Portfolio**: equity = mean of the symbols' equity curves (each starts at 1); returns (per bar,
  the first from the starting capital 1, so they compound to the total return), Sharpe
  (annualised with :func:`bars_per_year`), maximum drawdown of that curve; trades and fees summed
  over the symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

DAY_NS = 86_400 * 10**9
#: trading seconds per year used to annualise intraday steps (252 sessions of 6.5 h)
TRADING_SECONDS_PER_YEAR = 252 * 23_400


def bars_per_year(step_ns: int | None) -> float:
    """252 per year for daily (or longer: 252 / days) steps; 252 x 23 400 s / step for intraday."""
    if step_ns is None or step_ns <= 0:
        return 252.0
    if step_ns >= DAY_NS:
        return 252.0 * DAY_NS / step_ns
    return TRADING_SECONDS_PER_YEAR * 10**9 / step_ns


def threshold(quantile: float) -> float:
    """The ``signal`` strategy threshold that holds the top / bottom ``quantile`` of ranks."""
    return max(1.0 - 2.0 * quantile, 1e-9)


def rank_signal(dates: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-date rank of ``pred`` mapped to [-1, 1] (see the module docstring)."""
    out = np.zeros(pred.size)
    order = np.argsort(dates, kind="stable")
    d = dates[order]
    bounds = np.flatnonzero(np.r_[True, d[1:] != d[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        n = b - a
        if n > 1:
            out[idx] = 2.0 * (rankdata(pred[idx]) - 1.0) / (n - 1) - 1.0
    return out


@dataclass(frozen=True)
class LongShortResult:
    """Portfolio statistics (``stats``) and its equity curve (``ts`` ns, ``equity``, start 1)."""

    stats: dict[str, Any]
    ts: np.ndarray
    equity: np.ndarray


def _curve_stats(eq: np.ndarray, bpy: float) -> dict[str, float]:
    # per-bar returns from the starting capital 1 (as the engine's statistics: the first bar's
    # fills and fees are a return too), so the returns compound to ``total_return``
    path = np.r_[1.0, eq]
    r = path[1:] / path[:-1] - 1.0
    sd = float(np.std(r, ddof=1)) if r.size > 1 else math.nan
    mean = float(np.mean(r)) if r.size else math.nan
    dd = 1.0 - path / np.maximum.accumulate(path)
    n = eq.size
    total = float(eq[-1] - 1.0) if n else 0.0
    return {"total_return": total,
            "cagr": float(eq[-1] ** (bpy / n) - 1.0) if n and eq[-1] > 0 else -1.0,
            "ann_volatility": sd * math.sqrt(bpy) if r.size > 1 else math.nan,
            "sharpe": (mean / sd * math.sqrt(bpy) if sd > 0 else 0.0) if r.size > 1 else math.nan,
            "max_drawdown": float(dd.max())}


def long_short_backtest(oos: pd.DataFrame, price: pd.DataFrame, symbols: list[str], *, quantile: float,
                        fees: float, slippage: float, step_ns: int | None, backend: str = "auto") -> LongShortResult:
    """Backtest ``oos`` predictions (columns ``sym``, ``date``, ``pred``) on ``price`` (``sym``,
    ``date``, ``price``) from the first to the last predicted date. ``symbols``: names by code."""
    from mystocks_gpu.gpu_ops.backtest import run_backtest
    from mystocks_gpu.processors.backtest.spec import BacktestSpec

    first, last = int(oos["date"].min()), int(oos["date"].max())
    px = price[(price["date"] >= first) & (price["date"] <= last)]
    codes = np.unique(oos["sym"].to_numpy())
    px = px[px["sym"].isin(codes)]
    ts = np.unique(np.concatenate([px["date"].to_numpy(np.int64), oos["date"].to_numpy(np.int64)]))
    wide = px.pivot_table(index="sym", columns="date", values="price", aggfunc="last")
    P = wide.reindex(index=codes, columns=ts).to_numpy(np.float64)
    sig = oos.assign(s=rank_signal(oos["date"].to_numpy(np.int64), oos["pred"].to_numpy(np.float64)))
    S = sig.pivot_table(index="sym", columns="date", values="s", aggfunc="last") \
        .reindex(index=codes, columns=ts).fillna(0.0).to_numpy(np.float64)
    names = [symbols[int(c)] for c in codes]
    t = threshold(quantile)
    bpy = bars_per_year(step_ns)
    spec = BacktestSpec(universe="all", strategy="signal", params={"threshold_long": [t], "threshold_exit": [t]},
                        signal_topic="(out-of-sample predictions)", signal_column="prediction", initial_cash=1.0,
                        fees=fees, slippage=slippage, direction="long_short", execution="close",
                        bars_per_year=bpy, metric="total_return", n_curves=len(names), max_cells=10**13,
                        memory_budget_bytes=1 << 30)
    out = run_backtest({"open": P, "high": P, "low": P, "close": P, "signal": S}, names, ts, spec, backend=backend)
    by_sym = {c.symbol: c.equity for c in out.curves}
    eq_mat = np.vstack([np.asarray(by_sym[s], np.float64) for s in names])
    equity = eq_mat.mean(axis=0)
    stats: dict[str, Any] = dict(_curve_stats(equity, bpy))
    stats.update({"symbols": len(names), "bars": int(ts.size), "n_trades": int(out.stats["n_trades"].sum()),
                  "fees_paid": float(out.stats["fees_paid"].sum() / len(names)),
                  "exposure": float(np.nanmean(out.stats["exposure"].to_numpy(np.float64))),
                  "threshold": t, "quantile": quantile, "bars_per_year": bpy, "fees": fees, "slippage": slippage,
                  "backend": out.backend})
    return LongShortResult(stats, ts, equity)
