"""The simulator: realised shortfall == hand computation on small tapes (quotes, trades only, volume
cap, carry, limit, permanent impact); the job-runner loop's callbacks and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.execution import (
    ParentOrder,
    SimulationStopped,
    Tape,
    prepare,
    run_simulation,
    schedule,
    simulate,
    simulate_order,
)
from mystocks_gpu.gpu_ops.tick_columns import QUOTE, TRADE, TickColumns
from tests.unit.execution.exec_helpers import NS, T0, params

P = params(price=100.0, sigma=0.02, adv=1e6, spread=0.02, lot=10, eta=0.6, gamma=1e-3)


def s(sec: float) -> int:
    return T0 + int(sec * NS)


QUOTED = Tape(trade_ts=[s(5), s(65), s(130)], trade_px=[100.0, 100.0, 100.0], trade_sz=[100.0, 40.0, 1000.0],
              quote_ts=[s(-5), s(10), s(70)], bid=[99.98, 100.08, 99.95], ask=[100.02, 100.12, 100.05])


def buy_order(limit: float | None = None) -> ParentOrder:
    return ParentOrder("b1", "AAA", "buy", 100, s(180), T0, "twap", max_participation=0.5, limit_price=limit)


def test_quoted_tape_hand_computation() -> None:
    sched = schedule(buy_order(), P, now_ns=T0)
    assert sched.quantities.tolist() == [40, 30, 30]
    r = simulate(sched, P, QUOTED, max_participation=0.5)
    # slice 1: mid 100.10 + half 0.02 + eta 0.6 * 40 / 60 s            -> 40 @ 100.52
    # slice 2: tape volume 40 * 0.5 = 20 -> 2 lots; mid 100.00 + 0.05 + 0.6 * 20 / 60 + gamma 1e-3 * 40
    #          -> 20 @ 100.29, 10 carried; slice 3: no quote in [120, 180) -> 40 unfilled
    assert r.fill_qty.tolist() == [40, 20, 0]
    assert r.fill_px[:2] == pytest.approx([100.52, 100.29], abs=1e-12)
    assert r.arrival_price == pytest.approx(100.0)
    assert r.realised_is == pytest.approx(40 * 0.52 + 20 * 0.29, abs=1e-9)
    assert r.realised_is_bps == pytest.approx((40 * 0.52 + 20 * 0.29) / (100.0 * 60) * 1e4, abs=1e-9)
    assert (r.executed_qty, r.unfilled_qty) == (60, 40)
    assert r.avg_price == pytest.approx((40 * 100.52 + 20 * 100.29) / 60)
    assert r.expected_is == sched.score.expected_shortfall
    assert r.z_score == pytest.approx((r.realised_is - sched.score.expected_shortfall) / sched.score.timing_risk)


def test_limit_price_blocks_and_carries() -> None:
    sched = schedule(buy_order(limit=100.40), P, now_ns=T0)
    r = simulate(sched, P, QUOTED, max_participation=0.5)
    # slice 1 would fill at 100.52 > 100.40: carried; slice 2: 20 of 70 @ 100.00 + 0.05 + 0.2 + 0
    assert r.fill_qty.tolist() == [0, 20, 0]
    assert r.fill_px[1] == pytest.approx(100.25)
    assert r.realised_is == pytest.approx(20 * 0.25)
    assert r.unfilled_qty == 80


def test_trades_only_sell_hand_computation() -> None:
    tape = Tape(trade_ts=[s(-1), s(1), s(61)], trade_px=[100.0, 99.9, 100.2], trade_sz=[500.0, 1000.0, 1000.0])
    o = ParentOrder("s1", "AAA", "sell", 50, s(120), T0, "twap", max_participation=0.5)
    sched = schedule(o, P, now_ns=T0)
    assert sched.quantities.tolist() == [30, 20]
    r = simulate(sched, P, tape, max_participation=0.5)
    # ref = first trade in the window, half spread = eps = 0.01
    # slice 1: 99.9 - (0.01 + 0.6 * 30 / 60)        = 99.59
    # slice 2: 100.2 - (0.01 + 0.6 * 20 / 60 + 1e-3 * 30) = 99.96
    assert r.fill_px.tolist() == pytest.approx([99.59, 99.96], abs=1e-12)
    assert r.realised_is == pytest.approx(30 * 0.41 + 20 * 0.04, abs=1e-9)
    assert r.unfilled_qty == 0 and math.isclose(r.arrival_price, 100.0)


def test_simulate_order_runs_every_strategy() -> None:
    rng = np.random.default_rng(12345)
    t = np.sort(rng.integers(s(-60), s(1800), 3000))
    px = 100.0 + np.cumsum(rng.normal(0, 0.01, 3000))
    tape = Tape(t, px, rng.uniform(50, 500, 3000), t, px - 0.01, px + 0.01)
    o = ParentOrder("x", "AAA", "buy", 2000, s(1800), T0, max_participation=0.3)
    res = simulate_order(o, prepare(P), tape)
    assert [r.strategy for r in res] == ["ac", "twap", "vwap", "pov"]
    for r in res:
        assert r.executed_qty + r.unfilled_qty == 2000
        assert np.isfinite(r.realised_is)


def test_run_simulation_callbacks_and_errors() -> None:
    o1 = ParentOrder("a", "AAA", "buy", 100, s(180), T0, "twap", max_participation=0.5)
    o2 = ParentOrder("b", "ZZZ", "buy", 100, s(180), T0)
    o3 = ParentOrder("c", "AAA", "buy", 0, s(180), T0)
    seen: list[tuple[float, str]] = []
    rep = run_simulation([o1, o2, o3], {"AAA": P}, {"AAA": QUOTED}, strategies=("twap", "ac"),
                         progress=lambda f, m: seen.append((f, m)))
    assert [f for f, _ in seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert set(rep.errors) == {"b", "c"} and rep.errors["c"].startswith("quantity")
    assert len(rep.results) == 2 and rep.table()["strategy"].tolist() == ["twap", "ac"]
    assert rep.summary()["twap"]["orders"] == 1.0
    calls = iter([False, True])
    with pytest.raises(SimulationStopped) as ei:
        run_simulation([o1, o1, o1], {"AAA": P}, {"AAA": QUOTED}, should_stop=lambda: next(calls))
    assert len(ei.value.partial.results) == 4  # one order x four strategies


def test_tape_from_ticks() -> None:
    ticks = TickColumns.from_numpy(
        sym=[0, 1, 0, 0], ts=[s(0), s(1), s(2), s(3)], kind=[QUOTE, TRADE, TRADE, TRADE],
        price=[100.0, 5.0, 100.1, 100.2], size=[0, 10, 20, 30],
        bid=[99.9, 4.9, 100.0, np.nan], ask=[100.1, 5.1, 100.2, np.nan])
    tape = Tape.from_ticks(ticks, 0)
    assert tape.trade_px.tolist() == [100.1, 100.2] and tape.trade_sz.tolist() == [20.0, 30.0]
    assert tape.quote_ts.tolist() == [s(0), s(2)] and tape.bid.tolist() == [99.9, 100.0]
