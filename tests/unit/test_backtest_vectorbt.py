"""The engine against ``vectorbt.Portfolio.from_signals`` on the same signals, prices and costs.

Convention mapping (see ``gpu_ops.backtest.engine``): our materialised signals, shifted one bar
forward with ``price=open`` for ``next_open`` (unshifted, close price, for ``close``); fraction sizing
-> ``size_type='percent'``; fixed sizing -> ``size_type='value'``; ``accumulate=False``; conflicts
ignored; opposite entries reverse. long_short cases use fixed sizing with ``fixed_fees=0`` and
enough cash, because vectorbt reverses with one order (one fixed fee) and forbids percent sizing
with reversals; everything else matches as configured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.backtest import compile_grid, materialize_signals, run_backtest
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from tests.unit.reference_backtest import GRIDS, random_bars

vbt = pytest.importorskip("vectorbt", reason="vectorbt (the 'bench' extra) is not installed")

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
N_BARS = 300
TS = np.arange(N_BARS, dtype=np.int64) * 86_400_000_000_000


# strategy, direction, sizing, size, execution, fees, fixed_fees, slippage
CASES = [
    ("ma_cross", "long_only", "fraction", 1.0, "next_open", 0.001, 0.0, 0.0005),
    ("ma_cross", "long_only", "fraction", 1.0, "next_open", 0.0, 0.0, 0.0),
    ("breakout", "long_only", "fraction", 0.5, "next_open", 0.002, 1.0, 0.001),
    ("zscore", "long_only", "fixed", 30_000.0, "next_open", 0.001, 2.0, 0.0005),
    ("rsi", "long_only", "fraction", 1.0, "close", 0.001, 0.5, 0.0),
    ("signal", "long_only", "fixed", 250_000.0, "next_open", 0.0015, 1.0, 0.0002),
    ("ma_cross", "long_short", "fixed", 20_000.0, "next_open", 0.001, 0.0, 0.0005),
    ("breakout", "long_short", "fixed", 15_000.0, "close", 0.0005, 0.0, 0.001),
    ("zscore", "long_short", "fixed", 25_000.0, "next_open", 0.001, 0.0, 0.0),
]


def _cols(a: np.ndarray) -> np.ndarray:
    """(n_par, n_s, n_bars) -> (n_bars, n_s * n_par), column = s * n_par + p (our row order)."""
    return np.ascontiguousarray(a.transpose(2, 1, 0).reshape(a.shape[2], -1))


def _shift(a: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    out[1:] = a[:-1]
    return out


@pytest.fixture(scope="module")
def bars() -> dict[str, np.ndarray]:
    return random_bars(seed=11, n_bars=N_BARS)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[4]}" for c in CASES])
def test_total_return_and_trades_match_vectorbt(bars, case):
    strategy, direction, sizing, size, execution, fees, fixed, slip = case
    extra = {"signal_topic": "features.x", "signal_column": "ema"} if strategy == "signal" else {}
    spec = BacktestSpec(
        strategy=strategy,
        params=GRIDS[strategy],
        direction=direction,
        sizing=sizing,
        size=size,
        execution=execution,
        fees=fees,
        fixed_fees=fixed,
        slippage=slip,
        **extra,
    )
    ours = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu").stats

    plan = compile_grid(strategy, GRIDS[strategy])
    long_short = direction == "long_short"
    sigs = [_cols(a) for a in materialize_signals(plan, bars, long_short)]
    rep = lambda a: np.repeat(a.T, plan.n_par, axis=1)  # noqa: E731 - (n_s, n_bars) -> columns
    close = pd.DataFrame(rep(bars["close"]))
    kw = dict(
        close=close,
        init_cash=100_000.0,
        fees=fees,
        fixed_fees=fixed,
        slippage=slip,
        size=size,
        size_type="percent" if sizing == "fraction" else "value",
        accumulate=False,
        upon_long_conflict="ignore",
        upon_short_conflict="ignore",
        upon_dir_conflict="ignore",
        upon_opposite_entry="reverse",
        freq="1D",
    )
    if execution == "next_open":
        sigs = [_shift(a) for a in sigs]
        kw["price"] = pd.DataFrame(rep(bars["open"]))
    else:
        kw["price"] = close
    # always the four direction-aware arrays (short ones all False for long_only): one numba
    # specialisation of vectorbt's simulator for every case keeps the test's compile time down
    kw.update(entries=sigs[0], exits=sigs[1], short_entries=sigs[2], short_exits=sigs[3])
    pf = vbt.Portfolio.from_signals(**kw)

    theirs_tr = np.asarray(pf.total_return(), dtype=np.float64)
    theirs_n = np.asarray(pf.trades.closed.count(), dtype=np.int64)
    assert ours["n_trades"].sum() > 10
    np.testing.assert_array_equal(ours["n_trades"].to_numpy(), theirs_n)
    np.testing.assert_allclose(ours["total_return"].to_numpy(), theirs_tr, rtol=1e-9, atol=1e-9)
