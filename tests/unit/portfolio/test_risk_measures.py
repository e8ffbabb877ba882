"""Risk measures against closed forms, scipy, numpy and pandas on the same data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mystocks_gpu.gpu_ops.risk import (
    alerts_once,
    check_limits,
    euler_var,
    ewma_cov,
    exposures,
    historical_var,
    historical_var_levels,
    max_drawdown,
    parametric_var,
    pnl,
)
from mystocks_gpu.gpu_ops.risk.ewma import ewma_cov_update

RNG = 12345


def _returns(T: int = 80, K: int = 4) -> np.ndarray:
    rng = np.random.default_rng(RNG)
    L = rng.standard_normal((K, K)) * 0.01
    return rng.standard_normal((T, K)) @ L.T + 2e-4


def test_riskmetrics_recursion_equals_pandas_ewm_mean_of_cross_products() -> None:
    r = _returns()
    ours = ewma_cov(r, lam=0.94)
    df = pd.DataFrame(r)
    for i in range(4):
        for j in range(4):
            ref = (df[i] * df[j]).ewm(alpha=0.06, adjust=False).mean().to_numpy()
            np.testing.assert_allclose(ours[:, i, j], ref, rtol=1e-12, atol=1e-18)
    # pandas' cov() always demeans: it is NOT the RiskMetrics recursion
    demeaned = df.ewm(alpha=0.06, adjust=False).cov(bias=True).to_numpy().reshape(-1, 4, 4)
    assert np.max(np.abs(demeaned[-1] - ours[-1])) > 1e-8


@pytest.mark.parametrize("bias", [True, False])
def test_demeaned_ewma_equals_pandas_ewm_cov(bias: bool) -> None:
    r = _returns()
    ours = ewma_cov(r, lam=0.9, demean=True, bias=bias)
    ref = pd.DataFrame(r).ewm(alpha=0.1, adjust=False).cov(bias=bias).to_numpy().reshape(-1, 4, 4)
    np.testing.assert_allclose(ours[1:], ref[1:], rtol=1e-10, atol=1e-18)
    assert np.isnan(ref[0]).all() == np.isnan(ours[0]).all()


def test_incremental_batched_update_equals_series() -> None:
    r = _returns(30, 3)
    accounts = np.stack([r, 2 * r])  # two accounts
    cov = np.zeros((2, 3, 3))
    mean = np.zeros((2, 3))
    n = np.zeros((2, 3), dtype=np.int64)
    for t in range(30):
        cov, mean, n = ewma_cov_update(cov, mean, n, accounts[:, t], 0.94, False)
    np.testing.assert_allclose(cov[0], ewma_cov(r)[-1], rtol=1e-12)
    np.testing.assert_allclose(cov[1], ewma_cov(2 * r)[-1], rtol=1e-12)


def test_parametric_var_cvar_equal_normal_closed_forms() -> None:
    rng = np.random.default_rng(RNG)
    e = rng.normal(1e5, 5e4, (3, 4))
    cov = ewma_cov(_returns())[-1][None].repeat(3, 0)
    mu = np.full((3, 4), 3e-4)
    for c in (0.95, 0.99):
        for h in (1.0, 10.0):
            var, cvar = parametric_var(e, cov, c, h, mu)
            sig = np.sqrt(np.einsum("ai,aij,aj->a", e, cov, e)) * np.sqrt(h)
            drift = (e * mu).sum(axis=1) * h
            # the loss -P&L ~ N(-drift, sig): VaR is its c-quantile, CVaR its tail mean
            np.testing.assert_allclose(var, stats.norm(-drift, sig).ppf(c), rtol=1e-10)
            # tail mean = mean of the loss truncated below at its c-quantile (scipy's truncnorm)
            z = stats.norm.ppf(c)
            tail = -drift + sig * stats.truncnorm(z, np.inf).mean()
            np.testing.assert_allclose(cvar, tail, rtol=1e-9)


def test_euler_components_sum_to_var_and_marginals_are_derivatives() -> None:
    rng = np.random.default_rng(RNG)
    e = rng.normal(1e5, 5e4, (2, 4))
    cov = ewma_cov(_returns())[-1][None].repeat(2, 0)
    var, _ = parametric_var(e, cov, 0.99, 2.0)
    marginal, component = euler_var(e, cov, 0.99, 2.0)
    np.testing.assert_allclose(component.sum(axis=1), var, rtol=1e-12)
    for i in range(4):
        h = 1.0
        up, dn = e.copy(), e.copy()
        up[:, i] += h
        dn[:, i] -= h
        fd = (parametric_var(up, cov, 0.99, 2.0)[0] - parametric_var(dn, cov, 0.99, 2.0)[0]) / (2 * h)
        np.testing.assert_allclose(marginal[:, i], fd, rtol=1e-6)


def test_historical_var_cvar_equal_numpy() -> None:
    r = _returns(250, 4)
    rng = np.random.default_rng(RNG)
    e = rng.normal(1e5, 5e4, (2, 4))
    win = np.stack([r, r[::-1]])
    win[1, :7] = np.nan  # unfilled rows are ignored
    for c in (0.95, 0.99):
        var, cvar = historical_var(e, win, c, horizon=4.0)
        for a in range(2):
            rows = win[a][~np.isnan(win[a]).all(axis=1)]
            loss = -(rows @ e[a]) * 2.0
            q = np.quantile(loss, c)
            assert var[a] == pytest.approx(q, rel=1e-12)
            assert cvar[a] == pytest.approx(loss[loss >= q].mean(), rel=1e-12)
    # several levels in one pass: the same numpy quantiles / tail means; an empty window is NaN
    win3 = np.concatenate([win, np.full((1, 250, 4), np.nan)])
    win3[0, 10, 2] = np.nan  # a NaN in a filled row counts as a 0 return
    e3 = np.concatenate([e, e[:1]])
    levels = (0.5, 0.95, 0.975, 0.99)
    for c, (var, cvar) in zip(levels, historical_var_levels(e3, win3, levels, horizon=4.0), strict=True):
        for a in range(2):
            rows = win3[a][~np.isnan(win3[a]).all(axis=1)]
            loss = -(np.nan_to_num(rows, nan=0.0) @ e3[a]) * 2.0
            q = np.quantile(loss, c)
            assert var[a] == pytest.approx(q, rel=1e-12)
            assert cvar[a] == pytest.approx(loss[loss >= q].mean(), rel=1e-12)
        assert np.isnan(var[2]) and np.isnan(cvar[2])


def test_max_drawdown_equals_pandas_and_streams() -> None:
    rng = np.random.default_rng(RNG)
    eq = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (3, 300)), axis=1))
    dd, _ = max_drawdown(eq)
    ref = [(1 - s / s.cummax()).max() for s in map(pd.Series, eq)]
    np.testing.assert_allclose(dd, ref, rtol=1e-12)
    d1, p1 = max_drawdown(eq[:, :120])
    d2, _ = max_drawdown(eq[:, 120:], p1, d1)
    np.testing.assert_allclose(d2, dd, rtol=1e-12)


def test_exposures_and_pnl_equal_pandas() -> None:
    rng = np.random.default_rng(RNG)
    qty = rng.integers(-50, 50, (2, 6)).astype(float)
    px = rng.uniform(10, 100, (2, 6))
    ref_px = px * rng.uniform(0.95, 1.05, (2, 6))
    cost = px * rng.uniform(0.8, 1.2, (2, 6))
    sector = rng.integers(0, 3, (2, 6))
    ex = exposures(qty, px, sector, 3)
    d, inc = pnl(qty, px, ref_px, cost)
    for a in range(2):
        df = pd.DataFrame({"e": qty[a] * px[a], "s": sector[a]})
        assert ex["gross"][a] == pytest.approx(df.e.abs().sum())
        assert ex["net"][a] == pytest.approx(df.e.sum())
        np.testing.assert_allclose(ex["by_sector"][a], df.groupby("s").e.sum().reindex(range(3), fill_value=0))
        assert d[a] == pytest.approx((qty[a] * (px[a] - ref_px[a])).sum())
        assert inc[a] == pytest.approx((qty[a] * (px[a] - cost[a])).sum())


def test_limits_alert_once_per_breach_and_rearm() -> None:
    limits = np.array([[10.0, np.inf, 0.5, 0.2]])
    seq = [[5.0, 1.0, 0.4, 0.1], [11.0, 1.0, 0.4, 0.1], [12.0, 1.0, 0.6, 0.1], [9.0, 1.0, 0.6, 0.1],
           [13.0, 1.0, 0.4, np.nan]]
    prev = np.zeros((1, 4), dtype=bool)
    alerts = []
    for v in seq:
        br = check_limits(np.array([v]), limits)
        a, prev = alerts_once(prev, br)
        alerts.append(a[0].tolist())
    assert alerts == [[False] * 4, [True, False, False, False], [False, False, True, False],
                      [False] * 4, [True, False, False, False]]
