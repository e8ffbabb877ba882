"""The single-order API: exact integer-lot schedules, caps, baselines, bad input, config effects."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.execution import (
    ExecutionConfig,
    ExecutionConfigError,
    ExecutionInputError,
    MarketParams,
    ParentOrder,
    Schedule,
    VolumeProfile,
    prepare,
    schedule,
    warm_up,
)
from mystocks_gpu.gpu_ops.execution import schedule_api as api_mod
from tests.unit.execution.exec_helpers import DAY_S, NS, OPEN_S, T0, params, u_shaped_profile


def order(q: int = 100_000, minutes: float = 30, strategy: str = "ac", **kw: object) -> ParentOrder:
    return ParentOrder("o", "AAA", kw.pop("side", "buy"), q, T0 + int(minutes * 60 * NS),  # type: ignore[arg-type]
                       strategy=strategy, **kw)  # type: ignore[arg-type]


def hamilton(L: int, w: list[Fraction]) -> list[int]:
    """Largest-remainder apportionment in exact arithmetic (ties: earlier slice)."""
    W = sum(w)
    t = [L * x / W for x in w]
    f = [math.floor(x) for x in t]
    extra = sorted(range(len(w)), key=lambda k: (-(t[k] - f[k]), k))[: L - sum(f)]
    for k in extra:
        f[k] += 1
    return f


def expected_volume_by_overlap(p: MarketParams, prof: VolumeProfile, start_ns: int, H: int, N: int) -> np.ndarray:
    """Market volume per slice by summing bucket overlaps (an independent integration)."""
    edges = [start_ns + (k * H) // N for k in range(N + 1)]
    out = np.zeros(N)
    day0 = math.floor((start_ns / 1e9 - OPEN_S) / 86400.0) - 1
    for k in range(N):
        a, b = edges[k] / 1e9, edges[k + 1] / 1e9
        for day in range(day0, day0 + 4):
            base = day * 86400.0 + prof.open_offset_s
            for i, fr in enumerate(prof.fractions):
                lo, hi = base + i * prof.bucket_seconds, base + (i + 1) * prof.bucket_seconds
                ov = max(0.0, min(b, hi) - max(a, lo))
                out[k] += p.adv * fr * ov / prof.bucket_seconds
    return out


# ---- exact sums, lots, caps (property test) ------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(q=st.integers(1, 5_000_000), lot=st.sampled_from([1, 7, 100, 1000]),
       minutes=st.integers(1, 600), strategy=st.sampled_from(["ac", "twap", "vwap", "pov"]),
       lam=st.floats(0, 1e-3), cap=st.floats(0.001, 1.0), adv=st.floats(1e4, 1e8),
       profiled=st.booleans(), side=st.sampled_from(["buy", "sell"]))
def test_schedule_is_exact_in_lots(q: int, lot: int, minutes: int, strategy: str, lam: float, cap: float,
                                   adv: float, profiled: bool, side: str) -> None:
    p = params(adv=adv, lot=lot, profile=u_shaped_profile() if profiled else None)
    s = schedule(order(q, minutes, strategy, risk_aversion=lam, max_participation=cap, side=side), p, now_ns=T0)
    n = s.quantities
    sc = s.score
    assert n.dtype == np.int64 and np.all(n >= 0)
    assert int(n.sum()) + sc.unfilled_qty == q and sc.executed_qty == int(n.sum())
    odd = q % lot
    lots = n // lot
    assert np.count_nonzero(n % lot) <= (1 if odd else 0)
    caps = np.floor(cap * s.expected_volume / lot).astype(np.int64)
    assert np.all(lots <= caps)
    if strategy == "pov":  # participation of the expected volume to date, at most the rate
        rate = min(cap, 0.10)
        assert np.all(np.cumsum(lots) <= np.floor(rate * np.cumsum(s.expected_volume) / lot))
    elif sc.unfilled_qty > 0:  # capped: the schedule is the caps, and they cannot fill the lots
        assert caps.sum() < q // lot
        assert np.array_equal(lots, caps)
    else:
        assert caps.sum() >= q // lot or q // lot == 0
    assert s.side == (1 if side == "buy" else -1)
    assert np.array_equal(s.signed_quantities, n * s.side)


def test_largest_remainder_equals_exact_apportionment() -> None:
    rng = np.random.default_rng(12345)
    prof = VolumeProfile(tuple(rng.uniform(0.1, 3.0, 78).tolist()), 300.0, OPEN_S)
    p = params(adv=1e9, lot=10, profile=prof)
    for _ in range(20):
        q = int(rng.integers(1, 10_000)) * 10
        minutes = int(rng.integers(5, 300))
        s = schedule(order(q, minutes, "vwap", max_participation=1.0), p, now_ns=T0)
        w = [Fraction(v) for v in s.expected_volume.tolist()]
        assert (s.quantities // 10).tolist() == hamilton(q // 10, w)
    for q in (1, 99, 1000, 12_345):  # TWAP: equal targets, ties go to earlier slices
        s = schedule(order(q * 10, 13, "twap", max_participation=1.0), p, now_ns=T0)
        assert (s.quantities // 10).tolist() == hamilton(q, [Fraction(1)] * 13)
        assert np.all(np.diff(s.quantities) <= 0)


def test_vwap_follows_the_profile_and_times() -> None:
    prof = u_shaped_profile()
    p = params(adv=1e8, lot=1, profile=prof)
    start = T0 + 17 * NS  # 389 slices of 60.04 s
    s = schedule(order(1_000_000, 390, "vwap", max_participation=1.0, start_ns=start), p, now_ns=T0)
    H = s.end_ns - start
    assert s.n_slices == 389 and s.start_ns == start
    assert np.array_equal(s.times_ns, [start + (k * H) // 389 for k in range(389)])
    ref = expected_volume_by_overlap(p, prof, start, H, 389)
    assert np.allclose(s.expected_volume, ref, rtol=1e-9, atol=1e-6)
    assert np.allclose(s.quantities, 1_000_000 * ref / ref.sum(), atol=1.0)


def test_flat_volume_without_profile() -> None:
    s = schedule(order(50_000, 30, "twap"), params(adv=2e6), now_ns=T0)
    assert np.allclose(s.expected_volume, 2e6 / DAY_S * 60.0, rtol=1e-12)


def test_pov_participates_until_done_or_unfilled() -> None:
    p = params(adv=2e6, lot=100)  # 5128.2 shares per minute
    s = schedule(order(20_000, 30, "pov", pov_rate=0.2, max_participation=0.5), p, now_ns=T0)
    cumvol = np.cumsum(np.full(30, 2e6 / DAY_S * 60.0))
    done = np.minimum(np.floor(0.2 * cumvol / 100), 200)  # lots traded by the end of each slice
    assert s.quantities.tolist() == (np.diff(np.r_[0, done]) * 100).astype(int).tolist()
    assert s.quantities[:4].tolist() == [1000, 1000, 1000, 1100] and s.quantities[-1] == 0
    capped = schedule(order(20_000, 30, "pov", pov_rate=0.2, max_participation=0.05), p, now_ns=T0)
    # the cap wins over the rate, and binds per slice: floor(0.05 * 5128.2 / 100) = 2 lots each
    assert capped.quantities.tolist() == [200] * 30
    assert capped.score.unfilled_qty == 20_000 - 6000 and capped.score.capped


def test_cap_carries_excess_to_later_slices() -> None:
    p = params(adv=2e6, lot=100)
    s = schedule(order(60_000, 30, "ac", risk_aversion=1e-3, max_participation=0.5), p, now_ns=T0)
    free = schedule(order(60_000, 30, "ac", risk_aversion=1e-3, max_participation=1.0), p, now_ns=T0)
    cap_lots = math.floor(0.5 * 2e6 / DAY_S * 60 / 100)
    assert free.quantities[0] > cap_lots * 100  # the cap binds ...
    assert s.quantities.max() == cap_lots * 100 and s.quantities.sum() == 60_000  # ... and all is placed
    assert s.score.unfilled_qty == 0
    assert s.score.max_participation <= 0.5


def test_unfillable_cap_flags_unfilled() -> None:
    p = params(adv=1e5, lot=100)  # 256 shares per minute
    s = schedule(order(100_050, 10, "ac", max_participation=0.5), p, now_ns=T0)
    assert s.quantities.tolist() == [100] * 10  # floor(0.5 * 256.4 / 100) = 1 lot per slice
    assert s.score.unfilled_qty == 100_050 - 1000 and s.score.capped


def test_odd_lot_goes_to_the_last_trading_slice() -> None:
    s = schedule(order(1_234, 5, "twap", max_participation=1.0), params(lot=100, adv=1e8), now_ns=T0)
    assert s.quantities.tolist() == [300, 300, 200, 200, 234]
    tiny = schedule(order(37, 5, "ac", max_participation=1.0), params(lot=100, adv=1e8), now_ns=T0)
    assert tiny.quantities.tolist() == [37, 0, 0, 0, 0]


def test_start_in_the_past_starts_now_and_limit_is_kept() -> None:
    now = T0 + 120 * NS
    s = schedule(order(1000, 30, start_ns=T0 - 3600 * NS, limit_price=49.5), params(), now_ns=now)
    assert s.start_ns == now and s.n_slices == 28 and s.limit_price == 49.5
    assert s.tau_s == pytest.approx((s.end_ns - now) / 28 / 1e9)


def test_sell_and_buy_schedules_mirror() -> None:
    p = params()
    b = schedule(order(77_700, 30, side="buy"), p, now_ns=T0)
    s = schedule(order(77_700, 30, side="sell"), p, now_ns=T0)
    assert np.array_equal(b.quantities, s.quantities) and b.side == 1 and s.side == -1
    assert b.score.expected_shortfall == s.score.expected_shortfall


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "field"), [
    ({"q": 0}, "quantity"), ({"q": -5}, "quantity"), ({"q": 2.5}, "quantity"),
    ({"side": "hold"}, "side"), ({"strategy": "moon"}, "strategy"),
    ({"minutes": -1}, "end_ns"), ({"minutes": 0.5}, "end_ns"),
    ({"risk_aversion": float("nan")}, "risk_aversion"), ({"risk_aversion": -1.0}, "risk_aversion"),
    ({"risk_aversion": float("inf")}, "risk_aversion"),
    ({"max_participation": 0.0}, "max_participation"), ({"max_participation": 1.5}, "max_participation"),
    ({"max_participation": float("nan")}, "max_participation"), ({"pov_rate": float("nan")}, "pov_rate"),
    ({"limit_price": -1.0}, "limit_price"), ({"limit_price": float("nan")}, "limit_price"),
])
def test_bad_orders_name_the_field(kw: dict[str, object], field: str) -> None:
    args = {"q": kw.pop("q", 1000), "minutes": kw.pop("minutes", 30)}
    with pytest.raises(ExecutionInputError) as ei:
        schedule(order(args["q"], args["minutes"], **kw), params(), now_ns=T0)  # type: ignore[arg-type]
    assert ei.value.field == field and field in str(ei.value)
    assert isinstance(ei.value, MyStocksError)


@pytest.mark.parametrize(("kw", "field"), [
    ({"sigma": float("nan")}, "sigma"), ({"price": 0.0}, "price"), ({"adv": -1.0}, "adv"),
    ({"spread": float("nan")}, "spread"), ({"price": None}, "price"), ({"lot": 0}, "lot_size"),
    ({"eta": float("nan")}, "eta"), ({"gamma": -1.0}, "gamma"),
])
def test_bad_market_params_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ExecutionInputError) as ei:
        params(**kw)  # type: ignore[arg-type]
    assert ei.value.field == field


def test_symbol_mismatch_and_degenerate_impact() -> None:
    with pytest.raises(ExecutionInputError) as ei:
        schedule(ParentOrder("o", "BBB", "buy", 100, T0 + 3600 * NS), params(), now_ns=T0)
    assert ei.value.field == "symbol"
    with pytest.raises(ExecutionInputError) as ei:  # zero spread -> eta = 0: no AC solution
        schedule(order(1000), params(spread=0.0), now_ns=T0)
    assert ei.value.field == "eta"
    twap = schedule(order(1000, strategy="twap"), params(spread=0.0), now_ns=T0)  # fine for TWAP
    assert twap.score.spread_cost == 0.0
    with pytest.raises(ExecutionInputError) as ei:
        schedule(order(1000), prepare(params()), ExecutionConfig(slice_ns=30 * NS), now_ns=T0)
    assert ei.value.field == "config"
    with pytest.raises(ExecutionInputError):
        VolumeProfile((1.0, float("nan")), 60.0)


# ---- kernels and config ------------------------------------------------------------------------
def test_python_kernel_equals_numba_kernel() -> None:
    rng = np.random.default_rng(12345)
    from tests.unit.execution.exec_helpers import random_orders, random_params

    ps = random_params(rng, 6, u_shaped_profile())
    by = {p.symbol: p for p in ps}
    for o in random_orders(rng, 120, list(by), T0):
        try:
            a = schedule(o, prepare(by[o.symbol]), now_ns=T0)
        except ExecutionInputError:
            continue
        b = schedule(o, prepare(by[o.symbol], ExecutionConfig(kernel="python")), now_ns=T0)
        assert np.array_equal(a.quantities, b.quantities)
        assert np.array_equal(a.expected_volume, b.expected_volume)
        assert a.score == b.score


def test_every_config_setting_has_an_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    p = params(adv=2e6)
    base = schedule(order(30_000, 60), p, now_ns=T0)
    assert base.score.unfilled_qty == 0

    def run(o: ParentOrder | None = None, **kw: object) -> Schedule:
        return schedule(o or order(30_000, 60), prepare(p, ExecutionConfig(**kw)), now_ns=T0)  # type: ignore[arg-type]

    assert run(day_seconds=6 * 3600.0).expected_volume[0] != base.expected_volume[0]
    assert run(slice_ns=120 * NS).n_slices == 30
    assert run(max_slices=7).n_slices == 7
    assert not np.array_equal(run(risk_aversion=1e-4).quantities, base.quantities)
    assert run(max_participation=0.01).score.unfilled_qty > 0
    pov = order(300_000, 60, "pov", max_participation=1.0)
    assert run(pov, pov_rate=0.3).quantities[0] > run(pov, pov_rate=0.1).quantities[0]
    assert run(sqrt_impact_y=2.0).score.sqrt_impact_cost == pytest.approx(2 * base.score.sqrt_impact_cost)
    assert run(eta_participation=0.02).score.temporary_impact < base.score.temporary_impact
    assert run(gamma_fraction=0.2).score.permanent_impact < base.score.permanent_impact
    calls: list[int] = []
    real = api_mod.plan_core_py
    monkeypatch.setattr(api_mod, "plan_core_py", lambda *a: calls.append(1) or real(*a))
    run(kernel="python")
    run()
    assert calls == [1]


@pytest.mark.parametrize("kw", [{"day_seconds": 0}, {"slice_ns": 0}, {"max_slices": 0},
                                {"max_slices": 10_001}, {"risk_aversion": -1.0},
                                {"max_participation": 0.0}, {"pov_rate": 2.0}, {"sqrt_impact_y": float("nan")},
                                {"eta_participation": 0.0}, {"gamma_fraction": -1.0}, {"kernel": "cuda"}])
def test_config_validation(kw: dict[str, object]) -> None:
    with pytest.raises(ExecutionConfigError):
        ExecutionConfig(**kw)  # type: ignore[arg-type]


def test_warm_up_compiles_the_core() -> None:
    from mystocks_gpu.gpu_ops.execution.schedule_cpu import plan_core

    warm_up()
    assert len(plan_core.signatures) >= 1
