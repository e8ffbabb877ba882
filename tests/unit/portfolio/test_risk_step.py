"""The risk step against pandas on the same prices; replay invariance; state bytes; settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.risk import (
    AccountState,
    PriceBatch,
    RiskConfig,
    RiskInputError,
    StateBatch,
    parametric_var,
    risk_step,
)
from mystocks_gpu.gpu_ops.risk.config import NS_PER_DAY

N_SYM, DAYS, TICKS = 5, 40, 3
HOLD = [([0, 1, 2], [100.0, -50.0, 30.0]), ([2, 3], [10.0, 20.0]), ([1, 3, 4], [5.0, 5.0, -8.0])]


def _prices(skip: tuple[int, int] | None = (3, 10)) -> PriceBatch:
    """TICKS prices per symbol per day (GBM); symbol ``skip[0]`` has no price on day ``skip[1]``."""
    rng = np.random.default_rng(12345)
    rows = []
    px = np.full(N_SYM, 100.0)
    for d in range(DAYS):
        for k in range(TICKS):
            px = px * np.exp(rng.normal(0, 0.01, N_SYM))
            for s in range(N_SYM):
                if skip and (s, d) == skip:
                    continue
                rows.append((s, d * NS_PER_DAY + (k + 1) * 3_600_000_000_000 + s, px[s]))
    sym, ts, p = map(np.array, zip(*rows, strict=True))
    return PriceBatch(sym.astype(np.int32), ts.astype(np.int64), p.astype(float))


def _states(cfg: RiskConfig, limits: list[float] | None = None) -> StateBatch:
    return StateBatch.stack([AccountState.new(s, q, np.full(len(s), 100.0), cfg.window,
                                              sector=[x % 2 for x in s], limits=limits)
                             for s, q in HOLD])


def _run(prices: PriceBatch, cfg: RiskConfig, batch: int, limits: list[float] | None = None
         ) -> tuple[dict[str, np.ndarray], StateBatch, list]:
    st = _states(cfg, limits)
    alerts: list = []
    m: dict[str, np.ndarray] = {}
    for i in range(0, len(prices.px), batch):
        sl = slice(i, i + batch)
        m, st, br = risk_step(PriceBatch(prices.sym[sl], prices.ts[sl], prices.px[sl]), st, cfg)
        alerts += br
    return m, st, alerts


def _daily_closes(prices: PriceBatch) -> pd.DataFrame:
    df = pd.DataFrame({"s": prices.sym, "d": prices.ts // NS_PER_DAY, "p": prices.px})
    return df.pivot_table(index="d", columns="s", values="p", aggfunc="last").ffill()


def test_replay_in_any_batch_size_gives_the_same_states_and_metrics() -> None:
    cfg = RiskConfig(window=20)
    prices = _prices()
    m1, s1, _ = _run(prices, cfg, 10**9)
    for b in (7, 64):
        m2, s2, _ = _run(prices, cfg, b)
        assert all(a.equals(b_) for a, b_ in zip(s1.unstack(), s2.unstack(), strict=True))
        for k in m1:
            np.testing.assert_allclose(m2[k], m1[k], rtol=1e-12, equal_nan=True)


def test_ewma_var_pnl_equal_pandas_on_daily_closes() -> None:
    cfg = RiskConfig(window=20, horizon=10.0)
    prices = _prices()
    m, st, _ = _run(prices, cfg, 50)
    closes = _daily_closes(prices)  # the stale day is forward-filled: a zero return
    rets = closes.pct_change().iloc[1:-1]  # intervals closed: up to the second-to-last day
    last = closes.iloc[-1]
    for a, (syms, qty) in enumerate(HOLD):
        r = rets[syms]
        k = len(syms)
        cov = np.array([[(r.iloc[:, i] * r.iloc[:, j]).ewm(alpha=0.06, adjust=False).mean().iloc[-1]
                         for j in range(k)] for i in range(k)])
        np.testing.assert_allclose(st.cov[a, :k, :k], cov, rtol=1e-10)
        e = np.asarray(qty) * last[syms].to_numpy()
        np.testing.assert_allclose(m["by_symbol"][a, :k], e, rtol=1e-12)
        var99, cvar99 = parametric_var(e[None], cov[None], 0.99, 10.0)
        assert m["var_99"][a] == pytest.approx(var99[0], rel=1e-9)
        assert m["cvar_99"][a] == pytest.approx(cvar99[0], rel=1e-9)
        loss = -(r.iloc[-20:].to_numpy() @ e) * np.sqrt(10.0)
        assert m["hvar_95"][a] == pytest.approx(np.quantile(loss, 0.95), rel=1e-9)
        day = (np.asarray(qty) * (last[syms] - closes.iloc[-2][syms]).to_numpy()).sum()
        assert m["pnl_day"][a] == pytest.approx(day, rel=1e-9)
        assert m["pnl_inception"][a] == pytest.approx((np.asarray(qty) * (last[syms].to_numpy() - 100)).sum())


def test_limits_alert_once_with_values() -> None:
    cfg = RiskConfig(window=20)
    _m, _s, alerts = _run(_prices(), cfg, 30, limits=[1.0, 1e9, 0.99, np.nan])
    var_alerts = [b for b in alerts if b.limit == "var"]
    assert sorted(b.account for b in var_alerts) == [0, 1, 2]  # once per account, not per batch
    assert all(b.value > b.threshold == 1.0 for b in var_alerts)


def test_state_bytes_round_trip_and_errors() -> None:
    cfg = RiskConfig(window=20)
    _m, st, _ = _run(_prices(), cfg, 40)
    for s in st.unstack():
        raw = s.to_bytes()
        assert raw[:4] == b"MSRS"
        assert AccountState.from_bytes(raw).equals(s)
    with pytest.raises(RiskInputError, match="length"):
        AccountState.from_bytes(raw[:-1])
    with pytest.raises(RiskInputError, match="magic"):
        AccountState.from_bytes(b"XXXX" + raw[4:])
    with pytest.raises(RiskInputError, match="qty is not finite"):
        AccountState.new([1, 2], [1.0, np.nan], [1.0, 1.0], 5)


def test_new_positions_keep_the_history_of_retained_symbols() -> None:
    cfg = RiskConfig(window=20)
    _m, st, _ = _run(_prices(), cfg, 40)
    old = st.unstack()[0]  # symbols 0, 1, 2
    new = old.with_positions([2, 0, 4], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(new.cov[:2, :2], old.cov[np.ix_([2, 0], [2, 0])])
    np.testing.assert_array_equal(new.window[:, :2], old.window[:, [2, 0]])
    assert np.all(new.cov[2] == 0) and np.isnan(new.last_px[2]) and new.n_obs[2] == 0


def test_every_risk_setting_takes_effect() -> None:
    prices = _prices()
    base_cfg = RiskConfig(window=20)
    base, bst, _ = _run(prices, base_cfg, 10**9)
    changes = {"lam": 0.8, "demean": True, "horizon": 4.0, "window": 10, "returns": "log",
               "interval_ns": 2 * 3_600_000_000_000, "day_ns": NS_PER_DAY * 2, "min_obs": 100,
               "limit_confidence": 0.9, "limit_var": "historical", "n_sectors": 1,
               "confidences": (0.9,)}
    for name, value in changes.items():
        m, st, _ = _run(prices, dataclasses.replace(base_cfg, **{name: value}), 10**9)
        differs = set(m) != set(base) or any(
            np.asarray(m[k]).shape != np.asarray(base[k]).shape
            or not np.allclose(m[k], base[k], rtol=1e-12, equal_nan=True) for k in base)
        assert differs, name
