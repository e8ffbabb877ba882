"""Market-parameter and volume-profile estimators against pandas computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.execution import (
    ExecutionConfig,
    ExecutionInputError,
    estimate_panel,
    estimate_params,
    estimate_profile,
)
from tests.unit.execution.exec_helpers import NS, OPEN_S, T0


def minute_bars(days: int, seed: int = 12345) -> pd.DataFrame:
    """390 one-minute bars per day from the 14:30 UTC open, GBM closes, random volume / quotes."""
    rng = np.random.default_rng(seed)
    ts = np.concatenate([T0 + d * 86_400 * NS + np.arange(390) * 60 * NS for d in range(days)])
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.001, len(ts))))
    vol = rng.integers(100, 5000, len(ts)).astype(float)
    half = rng.uniform(0.005, 0.02, len(ts))
    bid, ask = close - half, close + half
    bid[::7] = np.nan  # some bars without a quote
    return pd.DataFrame({"ts": ts, "close": close, "volume": vol, "bid": bid, "ask": ask})


def test_daily_estimates_match_pandas() -> None:
    df = minute_bars(10)
    p = estimate_params("AAA", df.ts, df.close, df.volume, bid=df.bid, ask=df.ask, lot_size=10)
    by_day = df.set_index(pd.to_datetime(df.ts, unit="ns")).resample("1D")
    daily_close = by_day["close"].last().dropna()
    sigma = np.log(daily_close).diff().dropna().std(ddof=1)
    adv = by_day["volume"].sum()[by_day["volume"].count() > 0].mean()
    q = df.dropna(subset=["bid", "ask"])
    assert p.sigma == pytest.approx(sigma, rel=1e-12)
    assert p.adv == pytest.approx(adv, rel=1e-12)
    assert p.spread == pytest.approx((q.ask - q.bid).mean(), rel=1e-12)
    assert p.price == df.close.iloc[-1] and p.lot_size == 10
    feat = estimate_params("AAA", df.ts, df.close, df.volume, spread=(df.ask - df.bid).to_numpy())
    assert feat.spread == pytest.approx((q.ask - q.bid).mean(), rel=1e-12)  # NaN rows skipped


def test_intraday_fallback_scales_to_a_day() -> None:
    df = minute_bars(1)
    cfg = ExecutionConfig(day_seconds=23_400.0)
    p = estimate_params("AAA", df.ts, df.close, df.volume, fallback_spread_bps=5.0, config=cfg)
    r = np.log(df.close).diff().dropna()
    assert p.sigma == pytest.approx(r.std(ddof=1) * math.sqrt(23_400.0 / 60.0), rel=1e-12)
    assert p.adv == pytest.approx(df.volume.sum() / (390 * 60.0) * 23_400.0, rel=1e-12)
    assert p.spread == pytest.approx(5.0 * df.close.iloc[-1] / 1e4)


def test_missing_quotes_and_bad_bars_name_the_field() -> None:
    df = minute_bars(3)
    with pytest.raises(ExecutionInputError) as ei:
        estimate_params("AAA", df.ts, df.close, df.volume)
    assert ei.value.field == "spread"
    with pytest.raises(ExecutionInputError) as ei:
        estimate_params("AAA", df.ts, df.close, df.volume * 0, fallback_spread_bps=1.0)
    assert ei.value.field == "adv"
    with pytest.raises(ExecutionInputError) as ei:
        estimate_params("AAA", df.ts[:2], df.close[:2], df.volume[:2])
    assert ei.value.field == "sigma"
    bad = df.close.to_numpy().copy()
    bad[5] = np.nan
    with pytest.raises(ExecutionInputError) as ei:
        estimate_params("AAA", df.ts, bad, df.volume, fallback_spread_bps=1.0)
    assert ei.value.field == "close"


def test_profile_matches_pandas_groupby() -> None:
    df = minute_bars(4)
    prof = estimate_profile(df.ts, df.volume, bucket_seconds=1800.0, n_buckets=13, open_offset_s=OPEN_S)
    t = pd.to_datetime(df.ts, unit="ns")
    secs = (t - t.dt.normalize()).dt.total_seconds() - OPEN_S
    ref = df.volume.groupby((secs // 1800).astype(int)).sum()
    ref = (ref / ref.sum()).reindex(range(13), fill_value=0.0)
    assert np.allclose(prof.fractions, ref.to_numpy(), rtol=1e-12)
    assert prof.cum[-1] == 1.0 and prof.cum[0] == 0.0


def test_panel_estimates_every_symbol_and_reports_failures() -> None:
    a, b = minute_bars(5, 1), minute_bars(5, 2)
    panel = {k: np.concatenate([a[k], b[k][:2]]) for k in ("ts", "close", "volume", "bid", "ask")}
    panel["sym"] = np.r_[np.zeros(len(a), int), np.ones(2, int)]
    got, errors = estimate_panel(panel, ["AAA", "BBB"])
    assert set(got) == {"AAA"} and errors["BBB"].startswith("sigma")
    assert got["AAA"].sigma == estimate_params("AAA", a.ts, a.close, a.volume, bid=a.bid, ask=a.ask).sigma
