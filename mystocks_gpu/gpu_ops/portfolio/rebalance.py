"""Rebalancing backtest core (pure functions on host NumPy): estimate, optimise at every
rebalance date, then simulate the portfolio with transaction costs.

Conventions: ``prices (T, n)`` closes; period returns ``r_t = p_t / p_t-1 - 1`` (``t >= 1``). At
rebalance index ``t_k`` (at the close) the optimiser sees the ``lookback`` returns ending at
``t_k`` and the portfolio trades from its drifted weights to the target; ``turnover_k =
sum |w_target - w_drifted|``, ``cost_k = cost_rate * turnover_k * V`` is paid from the value.
Between rebalances the weights drift with returns (``w_i <- w_i (1 + r_i) / (1 + w'r)``, the
residual ``1 - sum w`` is cash earning 0). Before the first rebalance the portfolio is cash.

Batching: every date's problem is independent unless the template has a turnover constraint
(its current weights are the previous date's drifted weights): then dates are solved one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.config import SolverConfig
from mystocks_gpu.gpu_ops.portfolio.estimators import (
    ewma_covariance,
    ledoit_wolf,
    mean_returns,
    sample_cov,
)
from mystocks_gpu.gpu_ops.portfolio.exceptions import PortfolioInputError
from mystocks_gpu.gpu_ops.portfolio.problem import PortfolioProblem, stack_problems
from mystocks_gpu.gpu_ops.portfolio.solve import solve_stacked
from mystocks_gpu.gpu_ops.risk.measures import max_drawdown

ESTIMATORS = ("sample", "ledoit_wolf", "ewma")


@dataclass(frozen=True)
class RebalanceSpec:
    """``template``: the problem at every date (its ``cov``/``mu``/``current_weights`` are
    replaced by the estimates and the drifted weights); ``lookback`` returns per estimate;
    ``estimator`` one of ``sample``, ``ledoit_wolf``, ``ewma`` (decay ``ewma_lambda``);
    ``cost_rate`` fraction of traded value paid as cost (e.g. 0.001 = 10 bp)."""

    template: PortfolioProblem
    lookback: int = 250
    estimator: str = "ledoit_wolf"
    ewma_lambda: float = 0.94
    cost_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise PortfolioInputError(f"estimator must be one of {ESTIMATORS}")
        if self.lookback < 2:
            raise PortfolioInputError("lookback must be >= 2")
        if not 0 <= self.cost_rate < 1:
            raise PortfolioInputError("cost_rate must be in [0, 1)")


@dataclass(frozen=True)
class RebalanceResult:
    """``weights (R, n)`` targets (NaN row where the solve failed: the portfolio then keeps its
    drifted weights), ``status (R,)``, ``equity (T,)``, ``turnover (R,)``, ``costs (R,)`` and
    summary ``stats`` (total_return, ann_volatility, sharpe, max_drawdown, total_costs)."""

    weights: np.ndarray
    status: np.ndarray
    equity: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray
    stats: dict[str, float]


def simple_returns(prices: np.ndarray) -> np.ndarray:
    """``(T - 1, n)`` period returns of ``prices (T, n)``."""
    p = np.asarray(prices, dtype=np.float64)
    return p[1:] / p[:-1] - 1.0


def estimate(returns: np.ndarray, spec: RebalanceSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(cov (B, n, n), mu (B, n))`` from return windows ``(B, L, n)``."""
    if spec.estimator == "sample":
        cov = sample_cov(returns)
    elif spec.estimator == "ledoit_wolf":
        cov, _ = ledoit_wolf(returns)
    else:
        cov = ewma_covariance(returns, spec.ewma_lambda)
    return cov, mean_returns(returns)


def simulate(prices: np.ndarray, rebalance_idx: np.ndarray, weights: np.ndarray,
             cost_rate: float, initial: float = 1.0,
             target_at: Callable[[int, np.ndarray], np.ndarray] | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(equity (T,), turnover (R,), costs (R,))`` for targets ``weights (R, n)`` (module
    docstring). ``target_at(k, drifted)`` may supply target ``k`` lazily (sequential solves)."""
    r = simple_returns(prices)
    T, n = np.asarray(prices).shape
    w = np.zeros(n)
    V = initial
    eq = np.empty(T)
    turn = np.zeros(len(rebalance_idx))
    costs = np.zeros(len(rebalance_idx))
    k = 0
    for t in range(T):
        if t > 0:
            g = float(w @ r[t - 1])
            V *= 1.0 + g
            w = w * (1.0 + r[t - 1]) / (1.0 + g) if 1.0 + g != 0 else w
        while k < len(rebalance_idx) and rebalance_idx[k] == t:
            tgt = target_at(k, w) if target_at is not None else weights[k]
            if np.all(np.isfinite(tgt)):
                turn[k] = float(np.abs(tgt - w).sum())
                costs[k] = cost_rate * turn[k] * V
                V -= costs[k]
                w = tgt.copy()
            k += 1
        eq[t] = V
    return eq, turn, costs


def _stats(equity: np.ndarray, costs: np.ndarray, periods_per_year: float = 252.0) -> dict[str, float]:
    ret = equity[1:] / equity[:-1] - 1.0
    sd = float(np.std(ret, ddof=1)) if len(ret) > 1 else float("nan")
    dd, _ = max_drawdown(equity[None, :])
    return {"total_return": float(equity[-1] / equity[0] - 1.0),
            "ann_volatility": sd * np.sqrt(periods_per_year),
            "sharpe": float(np.mean(ret) / sd * np.sqrt(periods_per_year)) if sd > 0 else 0.0,
            "max_drawdown": float(dd[0]), "total_costs": float(costs.sum())}


def run_rebalance(prices: np.ndarray, rebalance_idx: Any, spec: RebalanceSpec,
                  config: SolverConfig | None = None) -> RebalanceResult:
    """Optimise at every rebalance index (each must be ``>= lookback``) and simulate."""
    p = np.asarray(prices, dtype=np.float64)
    idx = np.asarray(rebalance_idx, dtype=np.int64)
    if p.ndim != 2 or not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise PortfolioInputError("prices must be a finite positive (T, n) array")
    if np.any(np.diff(idx) <= 0) or (len(idx) and (idx[0] < spec.lookback or idx[-1] >= len(p))):
        raise PortfolioInputError(f"rebalance indices must increase within [{spec.lookback}, {len(p) - 1}]")
    r = simple_returns(p)
    windows = np.stack([r[t - spec.lookback:t] for t in idx]) if len(idx) else np.zeros((0, 1, p.shape[1]))
    cov, mu = estimate(windows, spec)
    n = p.shape[1]
    tpl = spec.template
    status = np.array(["" for _ in idx], dtype=object)
    W = np.full((len(idx), n), np.nan)

    def problem(k: int, w0: np.ndarray | None) -> PortfolioProblem:
        return replace(tpl, cov=cov[k], mu=mu[k] if tpl.mu is not None or tpl.objective in (
            "mean_variance", "max_sharpe") else None,
            current_weights=w0 if tpl.turnover is not None else tpl.current_weights)

    if tpl.turnover is None:
        groups = stack_problems([problem(k, None) for k in range(len(idx))])
        for sel, pb in groups:
            res = solve_stacked(pb, config)
            W[sel] = res.weights
            status[sel] = res.status
        eq, turn, costs = simulate(p, idx, W, spec.cost_rate)
    else:
        def target_at(k: int, drifted: np.ndarray) -> np.ndarray:
            [(_, pb)] = stack_problems([problem(k, drifted)])
            res = solve_stacked(pb, config)
            W[k] = res.weights[0]
            status[k] = res.status[0]
            return W[k]

        eq, turn, costs = simulate(p, idx, W, spec.cost_rate, target_at=target_at)
    return RebalanceResult(W, status.astype(str), eq, turn, costs, _stats(eq, costs))
