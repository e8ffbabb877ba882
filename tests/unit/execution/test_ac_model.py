"""Almgren-Chriss: closed form vs scipy minimisation, E/V vs hand sums and Monte Carlo, lambda -> 0
== TWAP, square-root impact, and the scheduler's scores against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from mystocks_gpu.gpu_ops.execution import (
    ParentOrder,
    ac_expected_shortfall,
    ac_trajectory,
    ac_variance,
    prepare,
    schedule,
    sigma_abs_per_sqrt_s,
    sqrt_impact_cost,
)
from tests.unit.execution.exec_helpers import DAY_S, NS, T0, hand_constants, params

CASES = [  # X, T (s), N, lambda, sigma, eta, gamma, eps
    (1e6, 5.0, 5, 2e-6, 0.95, 2.5e-6, 2.5e-7, 0.0625),  # the paper's example (time in days)
    (2e5, 1800.0, 30, 1e-6, 0.0131, 1.17, 2.5e-7, 0.025),
    (5e4, 3600.0, 60, 1e-4, 0.05, 0.2, 1e-6, 0.01),  # urgent: kappa T ~ 10
    (3e5, 600.0, 10, 1e-9, 0.01, 3.0, 1e-7, 0.02),  # patient: nearly TWAP
]


def objective(inner: np.ndarray, X: float, T: float, N: int, lam: float, sigma: float, eta: float,
              gamma: float, eps: float) -> tuple[float, np.ndarray]:
    """E + lambda V of holdings (X, inner..., 0) from the definitions, and its gradient."""
    tau = T / N
    x = np.concatenate([[X], inner, [0.0]])
    n = x[:-1] - x[1:]
    e = gamma * np.sum(x[1:] * n) + eps * X + eta / tau * np.sum(n * n)
    v = sigma**2 * tau * np.sum(x[1:] ** 2)
    # gamma sum x_k n_k = gamma (X^2 - sum n^2) / 2; dn_j/dx_j = -1, dn_{j+1}/dx_j = +1
    dn = n[:-1] - n[1:]
    grad = (gamma - 2 * eta / tau) * dn + lam * 2 * sigma**2 * tau * x[1:-1]
    return e + lam * v, grad


@pytest.mark.parametrize("case", CASES)
def test_closed_form_trajectory_minimises_mean_variance(case: tuple[float, ...]) -> None:
    X, T, N, lam, sigma, eta, gamma, eps = case
    N = int(N)
    x_cf, _ = ac_trajectory(X, T, N, lam, sigma, eta, gamma)

    def scaled(z: np.ndarray) -> tuple[float, np.ndarray]:  # optimise holdings in units of X
        f, g = objective(z * X, X, T, N, lam, sigma, eta, gamma, eps)
        return f, g * X

    x0 = 1 - np.arange(1, N) / N  # start from TWAP
    res = minimize(scaled, x0, jac=True, method="BFGS", options={"gtol": 1e-10 * abs(scaled(x0)[0]),
                                                                  "maxiter": 10_000})
    x_num = res.x * X
    assert np.allclose(x_cf[1:-1], x_num, rtol=1e-5, atol=1e-5 * X)
    f_cf = objective(x_cf[1:-1], X, T, N, lam, sigma, eta, gamma, eps)[0]
    assert f_cf <= res.fun * (1 + 1e-10)


@pytest.mark.parametrize("case", CASES)
def test_closed_form_e_and_v_equal_the_sums(case: tuple[float, ...]) -> None:
    X, T, N, lam, sigma, eta, gamma, eps = case
    N = int(N)
    tau = T / N
    x, n = ac_trajectory(X, T, N, lam, sigma, eta, gamma)
    e_sum = 0.5 * gamma * X**2 + eps * X + (eta - 0.5 * gamma * tau) / tau * np.sum(n**2)
    v_sum = sigma**2 * tau * np.sum(x[1:] ** 2)
    assert ac_expected_shortfall(X, T, N, lam, sigma, eta, gamma, eps) == pytest.approx(e_sum, rel=1e-9)
    rel_v = 1e-9 if case[3] > 1e-8 else 1e-5  # the closed-form V cancels digits for small kappa T
    assert ac_variance(X, T, N, lam, sigma, eta, gamma) == pytest.approx(v_sum, rel=rel_v)


def test_lambda_zero_closed_forms_are_twap() -> None:
    X, T, N, sigma, eta, gamma, eps = 1e5, 3600.0, 12, 0.02, 0.5, 1e-7, 0.01
    x, n = ac_trajectory(X, T, N, 0.0, sigma, eta, gamma)
    assert np.allclose(n, X / N, rtol=1e-12)
    tau = T / N
    assert ac_expected_shortfall(X, T, N, 0.0, sigma, eta, gamma, eps) == pytest.approx(
        0.5 * gamma * X**2 + eps * X + (eta - 0.5 * gamma * tau) * X**2 / T, rel=1e-12)
    assert ac_variance(X, T, N, 0.0, sigma, eta, gamma) == pytest.approx(
        sigma**2 * tau * np.sum((X * (1 - np.arange(1, N + 1) / N)) ** 2), rel=1e-12)


def _order(q: int, minutes: int, strategy: str = "ac", lam: float | None = None, **kw: object) -> ParentOrder:
    return ParentOrder("o", "AAA", "sell", q, T0 + minutes * 60 * NS, strategy=strategy, risk_aversion=lam,
                       max_participation=1.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("lam", [1e-8, 1e-6, 1e-5, 3e-4])
def test_schedule_follows_the_closed_form_within_a_lot(lam: float) -> None:
    p = params(adv=5e8)  # deep liquidity: no cap binds
    h = hand_constants(p)
    s = schedule(_order(1_000_000, 30, lam=lam), p, now_ns=T0)
    assert s.n_slices == 30
    _, n_cf = ac_trajectory(1_000_000, 1800.0, 30, lam, h["sigma_abs"], h["eta"], h["gamma"])
    assert np.max(np.abs(s.quantities - n_cf)) <= p.lot_size
    assert s.quantities.sum() == 1_000_000
    assert np.all(np.diff(s.quantities) <= 0)  # liquidation front-loads monotonically
    tau = 60.0
    kappa = math.acosh(1 + lam * h["sigma_abs"] ** 2 * tau**2 / (2 * (h["eta"] - h["gamma"] * tau / 2))) / tau
    assert s.score.kappa == pytest.approx(kappa, rel=1e-8)


def test_lambda_to_zero_is_twap() -> None:
    p = params(adv=5e7)
    twap = schedule(_order(123_456, 45, "twap"), p, now_ns=T0)
    for lam in (0.0, 1e-15):
        ac = schedule(_order(123_456, 45, "ac", lam=lam), p, now_ns=T0)
        assert np.array_equal(ac.quantities, twap.quantities)
    assert twap.quantities.max() - twap.quantities.min() <= p.lot_size


def test_scores_equal_hand_computation() -> None:
    p = params(price=40.0, sigma=0.03, adv=3e6, spread=0.04, lot=100)
    h = hand_constants(p)
    s = schedule(_order(250_050, 20, lam=2e-6), p, now_ns=T0)
    n = s.quantities.astype(float)
    X = float(s.quantities.sum())
    tau = 20 * 60 / s.n_slices
    x_after = X - np.cumsum(n)
    # E = gamma X^2/2 + eps X + (eta - gamma tau / 2) / tau sum n^2   (the paper's form)
    e = 0.5 * h["gamma"] * X**2 + h["eps"] * X + (h["eta"] - 0.5 * h["gamma"] * tau) / tau * np.sum(n**2)
    v = h["sigma_abs"] ** 2 * tau * np.sum(x_after**2)
    sc = s.score
    assert sc.expected_shortfall == pytest.approx(e, rel=1e-12)
    assert sc.variance == pytest.approx(v, rel=1e-12)
    assert sc.timing_risk == pytest.approx(math.sqrt(v), rel=1e-12)
    assert sc.spread_cost == pytest.approx(h["eps"] * X, rel=1e-12)
    assert sc.temporary_impact == pytest.approx(h["eta"] / tau * np.sum(n**2), rel=1e-12)
    assert sc.impact_cost == pytest.approx(e - h["eps"] * X, rel=1e-12)
    assert sc.expected_shortfall_bps == pytest.approx(e / (250_050 * 40.0) * 1e4, rel=1e-12)
    assert sc.objective == pytest.approx(e + 2e-6 * v, rel=1e-12)
    part = n / (p.adv / DAY_S * tau)
    assert sc.max_participation == pytest.approx(part.max(), rel=1e-12)
    assert np.allclose(s.participation, part, rtol=1e-12)


def test_scores_match_monte_carlo_of_the_price_dynamics() -> None:
    """Simulate S_k = S_{k-1} + sigma sqrt(tau) xi_k - gamma n_k, fills at S_{k-1} - eps - eta n_k/tau
    (a sell), and compare the mean / variance of the shortfall with the scores."""
    p = params(price=50.0, sigma=0.02, adv=2e6, spread=0.05)
    h = hand_constants(p)
    s = schedule(_order(100_000, 15, lam=1e-5), p, now_ns=T0)
    n = s.quantities.astype(float)
    tau = s.tau_s
    rng = np.random.default_rng(12345)
    paths = 200_000
    xi = rng.standard_normal((paths, len(n)))
    moves = h["sigma_abs"] * math.sqrt(tau) * xi - h["gamma"] * n  # S_k - S_{k-1}
    s_prev = p.price + np.concatenate([np.zeros((paths, 1)), np.cumsum(moves, axis=1)[:, :-1]], axis=1)
    fill = s_prev - h["eps"] - h["eta"] * n / tau
    shortfall = n.sum() * p.price - (fill * n).sum(axis=1)
    sc = s.score
    se = math.sqrt(sc.variance / paths)
    assert abs(shortfall.mean() - sc.expected_shortfall) < 5 * se
    assert shortfall.var() == pytest.approx(sc.variance, rel=0.02)


def test_sqrt_impact_matches_the_formula() -> None:
    assert sqrt_impact_cost(10_000, 0.02, 1e6, 50.0, 0.7) == pytest.approx(0.7 * 0.02 * 0.1 * 50.0 * 10_000)
    p = params(price=25.0, sigma=0.015, adv=4e6)
    from mystocks_gpu.gpu_ops.execution import ExecutionConfig

    for y in (1.0, 0.5):
        s = schedule(_order(90_000, 30), prepare(p, ExecutionConfig(sqrt_impact_y=y)), now_ns=T0)
        assert s.score.sqrt_impact_cost == pytest.approx(y * 0.015 * math.sqrt(90_000 / 4e6) * 25.0 * 90_000, rel=1e-12)


def test_sigma_conversion() -> None:
    assert sigma_abs_per_sqrt_s(0.02, 50.0, DAY_S) == pytest.approx(0.02 * 50.0 / math.sqrt(23_400.0))
