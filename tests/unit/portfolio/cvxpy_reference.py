"""Independent references for the optimiser tests: each problem written directly in CVXPY and
solved by Clarabel at tight tolerances, plus random problem generators (stable seeds)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.problem import ProblemBatch

CLARABEL_TIGHT = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11,
                  "tol_ktratio": 1e-9, "max_iter": 500}


def random_covariances(rng: np.random.Generator, B: int, n: int, k: int = 4) -> np.ndarray:
    """Factor-model covariances of daily returns (vol ~1-2 %), ``(B, n, n)``."""
    F = rng.standard_normal((B, n, k)) * 0.01
    d = rng.uniform(1e-4, 4e-4, (B, n))
    return F @ F.transpose(0, 2, 1) + d[:, :, None] * np.eye(n)[None]


def reference(pb: ProblemBatch, b: int) -> tuple[float, np.ndarray]:
    """``(objective, weights)`` of problem ``b`` of ``pb`` by CVXPY + Clarabel, in the
    optimiser's objective conventions (``problem.py``)."""
    import cvxpy as cp

    n = pb.n_assets
    o = pb.objective
    cov = None if pb.cov is None else pb.cov[b]
    if o == "max_sharpe":
        assert cov is not None and pb.mu is not None and pb.risk_free is not None
        y = cp.Variable(n)
        kappa = cp.Variable(nonneg=True)
        cons = [(pb.mu[b] - pb.risk_free[b]) @ y == 1, cp.sum(y) == pb.budget[b] * kappa]  # type: ignore[index]
        lo, hi = pb.lower[b], pb.upper[b]
        for i in range(n):
            if np.isfinite(lo[i]):
                cons.append(y[i] >= lo[i] * kappa)
            if np.isfinite(hi[i]):
                cons.append(y[i] <= hi[i] * kappa)
        if pb.groups is not None:
            assert pb.group_lower is not None and pb.group_upper is not None
            G = pb.groups[b]
            for k in range(G.shape[0]):
                if np.isfinite(pb.group_lower[b, k]):
                    cons.append(G[k] @ y >= pb.group_lower[b, k] * kappa)
                if np.isfinite(pb.group_upper[b, k]):
                    cons.append(G[k] @ y <= pb.group_upper[b, k] * kappa)
        cp.Problem(cp.Minimize(cp.quad_form(y, cp.psd_wrap(cov))), cons).solve(
            solver=cp.CLARABEL, **CLARABEL_TIGHT)
        w = y.value / kappa.value
        sharpe = (pb.mu[b] - pb.risk_free[b]) @ w / np.sqrt(w @ cov @ w)
        return -float(sharpe), w
    if o == "risk_parity":
        assert cov is not None
        bud = np.full(n, 1.0 / n) if pb.risk_budget is None else pb.risk_budget[b] / pb.risk_budget[b].sum()
        x = cp.Variable(n, pos=True)
        cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(cov)) - bud @ cp.log(x))).solve(
            solver=cp.CLARABEL, **CLARABEL_TIGHT)
        w = x.value / x.value.sum()
        return float(w @ cov @ w), w
    w = cp.Variable(n)
    extra: list[Any] = []
    if o == "min_cvar":
        assert pb.scenarios is not None
        R = pb.scenarios[b]
        S = R.shape[0]
        beta = 0.95 if pb.cvar_beta is None else pb.cvar_beta[b]
        alpha = cp.Variable()
        obj = alpha + cp.sum(cp.pos(-R @ w - alpha)) / ((1 - beta) * S)
    elif o == "mean_variance" and pb.target_return is None:
        assert pb.mu is not None and pb.risk_aversion is not None
        obj = 0.5 * pb.risk_aversion[b] * cp.quad_form(w, cp.psd_wrap(cov)) - pb.mu[b] @ w
    else:
        obj = cp.quad_form(w, cp.psd_wrap(cov))
    lo_i = np.nonzero(np.isfinite(pb.lower[b]))[0]
    hi_i = np.nonzero(np.isfinite(pb.upper[b]))[0]
    cons = [w[lo_i] >= pb.lower[b][lo_i], w[hi_i] <= pb.upper[b][hi_i]] + extra
    if pb.budget is not None:
        cons.append(cp.sum(w) == pb.budget[b])
    if pb.target_return is not None:
        assert pb.mu is not None
        cons.append(pb.mu[b] @ w >= pb.target_return[b])
    if pb.groups is not None:
        assert pb.group_lower is not None and pb.group_upper is not None
        cons += [pb.groups[b] @ w >= pb.group_lower[b], pb.groups[b] @ w <= pb.group_upper[b]]
    if pb.leverage is not None:
        cons.append(cp.norm1(w) <= pb.leverage[b])
    if pb.turnover is not None:
        assert pb.current_weights is not None
        cons.append(cp.norm1(w - pb.current_weights[b]) <= pb.turnover[b])
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    return float(prob.value), np.asarray(w.value)
