"""Closed forms of the cost models (scalar reference functions, NumPy; not on the hot path).

Almgren & Chriss (2000), "Optimal execution of portfolio transactions", discrete model: trade
``X`` shares in ``N`` slices of ``tau = T / N`` seconds; holdings ``x_0 = X .. x_N = 0``, trades
``n_k = x_{k-1} - x_k``. With arithmetic price volatility ``sigma`` (currency / share /
sqrt(s)), permanent impact ``gamma`` (currency / share^2), temporary impact
``h(v) = eps + eta v`` (``v`` in shares / s) and ``eta_t = eta - gamma tau / 2``:

* ``E[IS] = gamma X^2 / 2 + eps X + eta_t / tau * sum n_k^2``
  (= ``gamma sum x_k n_k + eps X + eta / tau sum n_k^2``);
* ``V[IS] = sigma^2 tau sum_{k=1..N} x_k^2``;
* the minimiser of ``E + lambda V`` is ``x_j = X sinh(kappa (T - t_j)) / sinh(kappa T)`` with
  ``cosh(kappa tau) = 1 + lambda sigma^2 tau^2 / (2 eta_t)``.

Square-root impact: ``cost = Y * sigma_daily * sqrt(Q / ADV) * price`` per share.
"""

from __future__ import annotations

import math

import numpy as np


def sigma_abs_per_sqrt_s(sigma_daily: float, price: float, day_seconds: float) -> float:
    """Daily log-return volatility (fraction) -> arithmetic price volatility in currency / share /
    sqrt(second): ``sigma_daily * price / sqrt(day_seconds)``."""
    return sigma_daily * price / math.sqrt(day_seconds)


def ac_kappa(lam: float, sigma: float, eta: float, gamma: float, tau: float) -> float:
    """The AC urgency ``kappa`` (1 / s): ``acosh(1 + lam sigma^2 tau^2 / (2 eta_t)) / tau``."""
    eta_t = eta - 0.5 * gamma * tau
    if eta_t <= 0:
        raise ValueError(f"eta - gamma*tau/2 = {eta_t} must be > 0")
    return math.acosh(1.0 + lam * sigma * sigma * tau * tau / (2.0 * eta_t)) / tau


def ac_trajectory(X: float, T: float, N: int, lam: float, sigma: float, eta: float,
                  gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-quantity AC optimum: holdings ``x`` (N+1,) and trades ``n`` (N,), from the
    sinh closed form (evaluated as ``exp(-kappa t) expm1(-2 kappa (T - t)) / expm1(-2 kappa T)``
    so large ``kappa T`` does not overflow; ``kappa = 0`` gives the straight line, TWAP)."""
    tau = T / N
    kappa = ac_kappa(lam, sigma, eta, gamma, tau)
    t = np.arange(N + 1) * tau
    if kappa == 0.0:
        x = X * (1.0 - t / T)
    else:
        x = X * np.exp(-kappa * t) * np.expm1(-2.0 * kappa * (T - t)) / math.expm1(-2.0 * kappa * T)
    x[-1] = 0.0
    return x, x[:-1] - x[1:]


def ac_expected_shortfall(X: float, T: float, N: int, lam: float, sigma: float, eta: float,
                          gamma: float, eps: float) -> float:
    """E[IS] of the AC optimum, closed form (AC 2000):
    ``gamma X^2/2 + eps X + eta_t X^2 tanh(kappa tau/2) (tau sinh(2 kappa T) + 2 T sinh(kappa tau))
    / (2 tau^2 sinh^2(kappa T))``; the kappa -> 0 limit ``... + eta_t X^2 / T`` at kappa = 0.
    Valid while ``sinh(2 kappa T)`` is finite (kappa T < ~350)."""
    tau = T / N
    kappa = ac_kappa(lam, sigma, eta, gamma, tau)
    eta_t = eta - 0.5 * gamma * tau
    base = 0.5 * gamma * X * X + eps * X
    if kappa == 0.0:
        return base + eta_t * X * X / T
    kt = kappa * T
    return base + eta_t * X * X * math.tanh(0.5 * kappa * tau) * (
        tau * math.sinh(2.0 * kt) + 2.0 * T * math.sinh(kappa * tau)) / (2.0 * tau * tau * math.sinh(kt) ** 2)


def ac_variance(X: float, T: float, N: int, lam: float, sigma: float, eta: float, gamma: float) -> float:
    """V[IS] of the AC optimum, closed form (AC 2000):
    ``sigma^2 X^2 / 2 * (tau sinh(kappa T) cosh(kappa (T - tau)) - T sinh(kappa tau))
    / (sinh^2(kappa T) sinh(kappa tau))``; at kappa = 0 the TWAP value
    ``sigma^2 X^2 T (1 - 1/N)(1 - 1/(2N)) / 3``. Loses digits to cancellation for kappa T << 1."""
    tau = T / N
    kappa = ac_kappa(lam, sigma, eta, gamma, tau)
    if kappa == 0.0:
        return sigma * sigma * X * X * T * (1.0 - 1.0 / N) * (1.0 - 0.5 / N) / 3.0
    kt = kappa * T
    num = tau * math.sinh(kt) * math.cosh(kappa * (T - tau)) - T * math.sinh(kappa * tau)
    return 0.5 * sigma * sigma * X * X * num / (math.sinh(kt) ** 2 * math.sinh(kappa * tau))


def sqrt_impact_cost(quantity: float, sigma_daily: float, adv: float, price: float, y: float = 1.0) -> float:
    """Square-root model total impact cost (currency) of trading ``quantity`` shares:
    ``y * sigma_daily * sqrt(quantity / adv) * price * quantity``."""
    return y * sigma_daily * math.sqrt(quantity / adv) * price * quantity
