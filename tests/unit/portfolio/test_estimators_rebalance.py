"""Estimators against scikit-learn / numpy / pandas, and the rebalancing backtest core."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.portfolio import PortfolioProblem, SolverConfig
from mystocks_gpu.gpu_ops.portfolio.estimators import (
    ewma_covariance,
    ledoit_wolf,
    mean_returns,
    sample_cov,
)
from mystocks_gpu.gpu_ops.portfolio.rebalance import RebalanceSpec, run_rebalance, simulate

from .cvxpy_reference import reference


def _panel(B: int = 3, T: int = 60, n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(12345)
    L = rng.standard_normal((n, 3)) * 0.01
    return rng.standard_normal((B, T, 3)) @ L.T + rng.standard_normal((B, T, n)) * 0.004


def test_ledoit_wolf_equals_scikit_learn() -> None:
    from sklearn.covariance import LedoitWolf

    X = _panel()
    cov, shrink = ledoit_wolf(X)
    for b in range(X.shape[0]):
        lw = LedoitWolf().fit(X[b])
        np.testing.assert_allclose(cov[b], lw.covariance_, rtol=1e-10, atol=1e-18)
        assert shrink[b] == pytest.approx(lw.shrinkage_, rel=1e-10)
        assert 0 < shrink[b] < 1  # a non-trivial shrinkage


def test_sample_cov_mean_and_ewma_equal_numpy_pandas() -> None:
    X = _panel()
    for b in range(X.shape[0]):
        np.testing.assert_allclose(sample_cov(X)[b], np.cov(X[b].T), rtol=1e-12)
        np.testing.assert_allclose(mean_returns(X)[b], X[b].mean(axis=0), rtol=1e-12)
        ref = pd.DataFrame(X[b]).ewm(alpha=0.06, adjust=False).cov(bias=True).to_numpy()[-8:]
        np.testing.assert_allclose(ewma_covariance(X, 0.94, demean=True)[b], ref, rtol=1e-10)


def test_simulate_equals_a_direct_holdings_computation() -> None:
    rng = np.random.default_rng(12345)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (30, 3)), axis=0))
    idx = np.array([5, 15])
    W = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.5]])
    eq, turn, costs = simulate(prices, idx, W, cost_rate=0.001)
    # independent: track share holdings and cash
    V, shares, cash = 1.0, np.zeros(3), 1.0
    for t in range(30):
        V = cash + shares @ prices[t]
        if t in idx:
            k = int(np.nonzero(idx == t)[0][0])
            cur = shares * prices[t] / V
            tr = np.abs(W[k] - cur).sum()
            assert turn[k] == pytest.approx(tr, rel=1e-12)
            V -= 0.001 * tr * V
            shares = W[k] * V / prices[t]
            cash = V * (1 - W[k].sum())
        assert eq[t] == pytest.approx(V, rel=1e-12)
    assert costs.sum() == pytest.approx(0.001 * (turn * eq[idx] / (1 - 0.001 * turn)).sum(), rel=1e-12)


def test_rebalance_weights_equal_per_date_cvxpy_solutions() -> None:
    rng = np.random.default_rng(12345)
    prices = 100 * np.exp(np.cumsum(_panel(1, 200, 6)[0] + 3e-4, axis=0))
    spec = RebalanceSpec(PortfolioProblem("min_variance", upper=0.4), lookback=60,
                         estimator="sample", cost_rate=0.0005)
    res = run_rebalance(prices, [60, 120, 180], spec, SolverConfig(backend="cpu"))
    assert list(res.status) == ["optimal"] * 3
    rets = prices[1:] / prices[:-1] - 1
    from mystocks_gpu.gpu_ops.portfolio.problem import stack_problems

    for k, t in enumerate([60, 120, 180]):
        cov = np.cov(rets[t - 60:t].T)
        [(_, pb)] = stack_problems([PortfolioProblem("min_variance", cov=cov, upper=0.4)])
        _obj, w = reference(pb, 0)
        np.testing.assert_allclose(res.weights[k], w, atol=1e-4)
    assert res.costs.sum() > 0 and res.stats["total_costs"] == pytest.approx(res.costs.sum())
    assert res.equity[59] == 1.0  # cash before the first rebalance
    del rng
