"""Objective, risk and constraint violation of given weights, in each problem's own units
(host NumPy; conventions in ``problem.py``)."""

from __future__ import annotations

import math

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.problem import ProblemBatch


def scenario_cvar(losses: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Rockafellar-Uryasev CVaR at level ``beta (B,)`` of equally likely ``losses (B, S)``:
    ``min_a a + sum_s (L_s - a)_+ / ((1 - beta) S)``, evaluated exactly (the minimum is at an
    order statistic near the ``beta`` quantile)."""
    B, S = losses.shape
    srt = np.sort(losses, axis=1)
    best = np.full(B, np.inf)
    for b in range(B):
        k = beta[b] * S
        for j in {max(0, min(S - 1, int(math.floor(k)) + d)) for d in (-2, -1, 0, 1)}:
            a = srt[b, j]
            val = a + np.maximum(srt[b] - a, 0.0).sum() / ((1.0 - beta[b]) * S)
            best[b] = min(best[b], val)
    return best


def violation(pb: ProblemBatch, w: np.ndarray) -> np.ndarray:
    """Largest violation over every constraint of ``pb`` at weights ``w (B, n)`` (0 = feasible;
    NaN rows give NaN)."""
    v = np.maximum(np.max(pb.lower - w, axis=1), np.max(w - pb.upper, axis=1))
    if pb.budget is not None:
        v = np.maximum(v, np.abs(w.sum(axis=1) - pb.budget))
    if pb.target_return is not None and pb.mu is not None:
        v = np.maximum(v, pb.target_return - np.sum(pb.mu * w, axis=1))
    if pb.groups is not None:
        assert pb.group_lower is not None and pb.group_upper is not None
        gw = np.einsum("bgn,bn->bg", pb.groups, w)
        v = np.maximum(v, np.max(np.maximum(pb.group_lower - gw, gw - pb.group_upper), axis=1))
    if pb.leverage is not None:
        v = np.maximum(v, np.abs(w).sum(axis=1) - pb.leverage)
    if pb.turnover is not None:
        assert pb.current_weights is not None
        v = np.maximum(v, np.abs(w - pb.current_weights).sum(axis=1) - pb.turnover)
    return np.maximum(v, 0.0)


def evaluate(pb: ProblemBatch, w: np.ndarray, variance: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(objective, variance, expected_return, violation)`` per problem (NaN without weights);
    ``variance`` may be given (computed where the covariances live, e.g. on the GPU)."""
    B = pb.n_problems
    has = ~np.isnan(w).any(axis=1)
    wz = np.where(has[:, None], w, 0.0)
    nan = np.full(B, np.nan)
    if variance is not None:
        var = np.asarray(variance, dtype=np.float64)
    else:
        var = np.einsum("bi,bij,bj->b", wz, pb.cov, wz) if pb.cov is not None else nan.copy()
    ret = np.sum(pb.mu * wz, axis=1) if pb.mu is not None else nan.copy()
    o = pb.objective
    if o == "mean_variance" and pb.target_return is None:
        assert pb.risk_aversion is not None
        obj = 0.5 * pb.risk_aversion * var - ret
    elif o == "max_sharpe":
        assert pb.risk_free is not None and pb.mu is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            obj = -np.sum((pb.mu - pb.risk_free[:, None]) * wz, axis=1) / np.sqrt(var)
    elif o == "min_cvar":
        assert pb.scenarios is not None
        beta = pb.cvar_beta if pb.cvar_beta is not None else np.full(B, 0.95)
        obj = scenario_cvar(-np.einsum("bsn,bn->bs", pb.scenarios, wz), beta)
    else:
        obj = var.copy()
    viol = violation(pb, wz)
    return (np.where(has, obj, np.nan), np.where(has, var, np.nan), np.where(has, ret, np.nan),
            np.where(has, viol, np.nan))
