"""The long-short backtest of out-of-sample predictions (through the backtest engine's signal
strategy) against a plain-Python book built here: per-date ranks (pandas), top/bottom quantile
long/short, flat outside the test windows, fills at the label price with the engine's fee rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.processors.training.ls_backtest import bars_per_year, long_short_backtest


def _book(prices: np.ndarray, sig: np.ndarray, thr: float, fees: float, slip: float) -> np.ndarray:
    """Equity per bar of one symbol (capital 1): long while s > thr, short while s < -thr, else flat."""
    cash, units, out = 1.0, 0.0, []
    for p, s in zip(prices, sig, strict=True):
        if math.isfinite(p):
            want = 1 if s > thr else (-1 if s < -thr else 0)
            pos = 0 if units == 0 else (1 if units > 0 else -1)
            if want != pos:
                if pos == 1:
                    proceeds = units * p * (1 - slip)
                    cash += proceeds * (1 - fees)
                elif pos == -1:
                    cost = -units * p * (1 + slip)
                    cash -= cost * (1 + fees)
                units = 0.0
                if want != 0:
                    notional = cash / (1 + fees)
                    fill = p * (1 + slip) if want == 1 else p * (1 - slip)
                    if want == 1:
                        units, cash = notional / fill, cash - notional * (1 + fees)
                    else:
                        units, cash = -notional / fill, cash + notional - fees * notional
        out.append(cash + units * p if math.isfinite(p) else (out[-1] if out else 1.0))
    return np.asarray(out)


@pytest.mark.parametrize("q, fees, slip", [(0.5, 0.0, 0.0), (0.3, 0.001, 0.0005)])
def test_equity_equals_a_plain_python_book(q: float, fees: float, slip: float) -> None:
    rng = np.random.default_rng(8)
    n_sym, n_dates = 7, 80
    dates = np.arange(n_dates, dtype=np.int64) * 86_400 * 10**9 + 1_600_000_000 * 10**9
    price = pd.DataFrame([(s, d, 20 * math.exp(0.02 * rng.standard_normal() + 0.001 * k))
                          for s in range(n_sym) for k, d in enumerate(dates)], columns=["sym", "date", "price"])
    price.loc[rng.choice(len(price), 15, replace=False), "price"] = np.nan
    price["price"] = price.groupby("sym")["price"].transform(lambda x: x.ffill().bfill()) * \
        np.exp(np.cumsum(rng.normal(0, 0.01, len(price))))
    price.loc[rng.choice(len(price), 10, replace=False), "price"] = np.nan  # invalid bars
    windows = list(range(10, 35)) + list(range(40, 75))  # two test windows with an embargo gap
    oos = pd.DataFrame([(s, dates[k], rng.standard_normal()) for k in windows for s in range(n_sym)
                        if rng.random() > 0.15], columns=["sym", "date", "pred"])
    res = long_short_backtest(oos, price, [f"S{i}" for i in range(n_sym)], quantile=q, fees=fees, slippage=slip,
                              step_ns=86_400 * 10**9, backend="cpu")
    # reference
    o = oos.copy()
    g = o.groupby("date")["pred"]
    n = g.transform("size")
    o["s"] = np.where(n > 1, 2 * (g.rank(method="average") - 1) / (n - 1).clip(lower=1) - 1, 0.0)
    span = dates[(dates >= oos["date"].min()) & (dates <= oos["date"].max())]
    P = price.pivot(index="sym", columns="date", values="price").reindex(columns=span).to_numpy()
    Sg = o.pivot(index="sym", columns="date", values="s").reindex(index=range(n_sym), columns=span).fillna(0).to_numpy()
    thr = max(1 - 2 * q, 1e-9)
    want = np.mean([_book(P[i], Sg[i], thr, fees, slip) for i in range(n_sym)], axis=0)
    np.testing.assert_array_equal(res.ts, span)
    np.testing.assert_allclose(res.equity, want, rtol=1e-12, atol=1e-14)
    start = np.r_[1.0, want]
    r = start[1:] / start[:-1] - 1  # from the starting capital: they compound to the total return
    assert np.prod(1 + r) - 1 == pytest.approx(want[-1] - 1, rel=1e-9)
    assert res.stats["total_return"] == pytest.approx(want[-1] - 1, rel=1e-12)
    assert res.stats["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252), rel=1e-9)
    assert res.stats["ann_volatility"] == pytest.approx(r.std(ddof=1) * math.sqrt(252), rel=1e-9)
    peak = np.maximum.accumulate(np.r_[1.0, want])
    assert res.stats["max_drawdown"] == pytest.approx((1 - np.r_[1.0, want] / peak).max(), rel=1e-9, abs=1e-15)
    assert res.stats["symbols"] == n_sym and res.stats["n_trades"] > 0


def test_annualisation() -> None:
    assert bars_per_year(86_400 * 10**9) == 252 and bars_per_year(5 * 86_400 * 10**9) == pytest.approx(50.4)
    assert bars_per_year(60 * 10**9) == 252 * 390 and bars_per_year(None) == 252
