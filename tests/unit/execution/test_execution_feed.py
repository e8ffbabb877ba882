"""The parameter feed and the execsim spec without a broker: bars built from ticks equal a
by-hand aggregation, the estimation settings take effect (spread fallback, lot, profile, day
rule), tapes follow the documented trade/quote rule, and execsim specs parse and reject with
reasons; the report writes its plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.processors.exceptions import InvalidSpec, JobSpecError
from mystocks_gpu.processors.execution.execsim_job import ExecSimSpec
from mystocks_gpu.processors.execution.execsim_report import format_summary, write_report
from mystocks_gpu.processors.execution.market_params_feed import (
    EstimateSpec,
    bars_from_ticks,
    estimate_from_bars,
    tapes_from_ticks,
)

NS = 1_000_000_000
T0 = 1_699_972_200 * NS


def _ticks(seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 3000
    ts = np.sort(T0 + rng.integers(0, 1800 * NS, n))
    sym = rng.choice(["AA", "BB"], n)
    kind = rng.choice([0, 1], n)
    mid = 20 + np.cumsum(rng.normal(0, 0.01, n))
    half = rng.choice([0.005, 0.01], n)
    bid, ask = mid - half, mid + half
    bid[rng.random(n) < 0.05] = np.nan  # some rows without a usable quote
    return pd.DataFrame({"symbol": sym, "ts": ts, "kind": kind, "price": mid, "size": np.where(kind == 0, 100.0, 0.0),
                         "bid": bid, "ask": ask})


def test_bars_from_ticks_equal_a_by_hand_aggregation() -> None:
    ticks = _ticks()
    bar = 60 * NS
    got = bars_from_ticks(ticks, bar).set_index(["symbol", "ts"])
    want: dict[tuple[str, int], dict[str, float]] = {}
    spreads: dict[tuple[str, int], list[float]] = {}
    for r in ticks.itertuples(index=False):
        key = (r.symbol, (r.ts // bar) * bar)
        if r.kind == 0:
            w = want.setdefault(key, {"close": 0.0, "volume": 0.0})
            w["close"] = r.price  # rows are in time order: the last trade wins
            w["volume"] += r.size
        if math.isfinite(r.bid) and math.isfinite(r.ask) and 0 < r.bid <= r.ask:
            spreads.setdefault(key, []).append(r.ask - r.bid)
    assert sorted(got.index) == sorted(want)
    for key, w in want.items():
        assert got.loc[key, "close"] == w["close"] and got.loc[key, "volume"] == w["volume"]
        assert got.loc[key, "spread"] == pytest.approx(sum(spreads[key]) / len(spreads[key]), rel=1e-12)


def test_estimation_settings_take_effect() -> None:
    days = pd.bdate_range("2024-03-04", periods=6, tz="UTC")
    rows = []
    rng = np.random.default_rng(4)
    for d in days:
        for m in range(0, 390, 30):  # 13 half-hour bars from 14:30 UTC
            ts = int((d + pd.Timedelta(hours=14, minutes=30 + m)).value)
            rows.append(("AA", ts, 50 * math.exp(rng.normal(0, 0.01)), 1000.0 + m))
    bars = pd.DataFrame(rows, columns=["symbol", "ts", "close", "volume"])
    with pytest.raises(InvalidSpec):
        EstimateSpec(source_topic="md.quotes", source_kind="quotes")
    assert EstimateSpec(source_topic="md.bars.1d").source_kind == "bars" and EstimateSpec().source_kind == "ticks"
    out, errors = estimate_from_bars(bars, EstimateSpec(source_topic="md.bars.30m"))
    assert not out and "spread" in errors["AA"]  # bars carry no quotes and no fallback was given
    spec = EstimateSpec(source_topic="md.bars.30m", spread_bps=5.0, lot_size=10, profile_buckets=13,
                        profile_bucket_s=1800.0, profile_open_offset_s=52_200.0)
    out, errors = estimate_from_bars(bars, spec)
    p = out["AA"]
    last_close = bars.groupby(bars["ts"] // (86_400 * NS))["close"].last().to_numpy()
    assert p.sigma == pytest.approx(np.std(np.diff(np.log(last_close)), ddof=1), rel=1e-12)
    assert p.adv == pytest.approx(bars["volume"].sum() / 6, rel=1e-12)
    assert p.spread == pytest.approx(5.0 * p.price / 1e4) and p.lot_size == 10
    assert p.profile is not None
    vols = bars.groupby((bars["ts"] // NS - 52_200) % 86_400 // 1800)["volume"].sum().to_numpy()
    np.testing.assert_allclose(p.profile.fractions, vols / vols.sum(), rtol=1e-12)
    # min_days above the panel's 6 days: the intraday rule (bar-to-bar returns scaled to a day)
    intraday = estimate_from_bars(bars, EstimateSpec(source_topic="md.bars.30m", spread_bps=5.0, min_days=10))[0]["AA"]
    bar_to_bar = np.std(np.diff(np.log(bars["close"].to_numpy())), ddof=1) * math.sqrt(23_400 / 1800)
    assert intraday.sigma == pytest.approx(bar_to_bar, rel=1e-12) and intraday.sigma != p.sigma


def test_tapes_follow_the_trade_and_quote_rule() -> None:
    ticks = _ticks(3)
    tapes = tapes_from_ticks(ticks)
    for sym, tape in tapes.items():
        g = ticks[ticks["symbol"] == sym]
        tr = g[g["kind"] == 0]
        assert np.array_equal(tape.trade_ts, tr["ts"].to_numpy()) and np.array_equal(tape.trade_sz, tr["size"].to_numpy())
        ok = g["bid"].notna() & g["ask"].notna()
        assert tape.quote_ts is not None and np.array_equal(tape.quote_ts, g[ok]["ts"].to_numpy())


def _order(**kw: object) -> dict[str, object]:
    return {"order_id": "a", "symbol": "AA", "side": "buy", "quantity": 1000, "start": "2023-11-14T14:30",
            "horizon_s": 600, **kw}


def test_execsim_spec_parses_and_its_settings_take_effect() -> None:
    spec = ExecSimSpec.from_dict({"orders": [_order(), _order(order_id="b", side="sell", end=T0 + 1200 * NS,
                                                              horizon_s=None)],
                                  "model": {"slice_ns": 30 * NS, "max_participation": 0.5}, "lookback_s": 90,
                                  "strategies": ["twap", "pov"]})
    assert isinstance(spec, ExecSimSpec)
    a, b = spec.parent_orders()
    assert (a.start_ns, a.end_ns) == (T0, T0 + 600 * NS) and b.end_ns == T0 + 1200 * NS and b.side == "sell"
    assert spec.config().slice_ns == 30 * NS and spec.config().max_participation == 0.5
    assert spec.window() == (T0 - 90 * NS, T0 + 1200 * NS)
    assert spec.data_range()["symbols"] == ["AA"]
    for bad, text in (({"orders": [_order(), _order()]}, "unique"),
                      ({"orders": [_order(colour="red")]}, "unknown field"),
                      ({"orders": [_order(quantity=1.5)]}, "integer"),
                      ({"orders": [_order(side="hold")]}, "buy or sell"),
                      ({"orders": [_order(horizon_s=-1)]}, "horizon_s"),
                      ({"orders": [_order()], "model": {"kernel": "python"}}, "unknown setting"),
                      ({"orders": [_order()], "lookback_s": -1}, "lookback_s"),
                      ({"orders": [_order()], "params": {"AA": {"price": 1.0}}}, "sigma")):
        with pytest.raises(JobSpecError, match=text):
            ExecSimSpec.from_dict(bad)


def test_summary_and_report(tmp_path: Path) -> None:
    rows = [{"order_id": "a", "symbol": "AA", "strategy": s, "side": 1, "quantity": 100, "executed_qty": 100,
             "unfilled_qty": 0, "arrival_price": 10.0, "avg_price": 10.01, "realised_is": 1.0, "realised_is_bps": 10.0,
             "expected_is": 0.5, "expected_is_bps": 5.0 + i, "timing_risk": 1.0, "z_score": 0.5} for i, s in enumerate(("ac", "twap"))]
    result = {"orders": 1, "strategies": ["ac", "twap"], "symbols": 1, "ticks": 10, "simulated": 2,
              "summary": [{"strategy": r["strategy"], "orders": 1, "fill_rate": 1.0, "realised_is_bps": 10.0,
                           "expected_is_bps": r["expected_is_bps"], "z_score": 0.5, "realised_is": 1.0,
                           "expected_is": 0.5} for r in rows], "rows": rows, "rows_total": 2,
              "errors": {"x": "symbol: no tape for 'ZZ'"},
              "fills": [{"order_id": "a", "symbol": "AA", "strategy": "ac", "side": 1, "quantity": 100,
                         "ts": [T0, T0 + 60 * NS], "fill_qty": [60, 40], "fill_px": [10.0, 10.02]}]}
    text = format_summary(result)
    assert "implementation shortfall by strategy" in text and "no tape for 'ZZ'" in text
    assert [ln.split()[0] for ln in text.splitlines() if ln.split()[:1] in (["ac"], ["twap"])][:2] == ["ac", "twap"]
    page = write_report(result, tmp_path / "r")
    assert "<table>" in page.read_text()
    for png in ("shortfall_by_strategy.png", "realised_vs_expected.png", "fills.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
