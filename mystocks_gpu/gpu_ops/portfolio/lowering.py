"""Lower a :class:`ProblemBatch` to the canonical :class:`QPBatch` and map solutions back.

Variable layouts: ``w (n)`` for min-variance / mean-variance; ``(y (n), kappa)`` for max-Sharpe;
``(w (n), alpha, u (S))`` for min-CVaR. Row names (used in infeasibility reports): ``budget``,
``target_return``, ``group:<name>``, ``excess_return`` (max-Sharpe normalisation), ``asset bounds``
(max-Sharpe's homogenised bounds), ``cvar_scenarios``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.problem import ProblemBatch
from mystocks_gpu.gpu_ops.portfolio.qp import L1Ball, QPBatch

Array = Any


@dataclass(frozen=True)
class Lowered:
    """The QP and how to read weights from its solution."""

    qp: QPBatch
    n_assets: int
    layout: str  # "w", "sharpe" or "cvar"

    def weights(self, x: Array, xp: ModuleType) -> Array:
        n = self.n_assets
        if self.layout == "sharpe":
            kappa = x[:, n:n + 1]
            return x[:, :n] / xp.where(kappa > 0, kappa, xp.nan)
        return x[:, :n]


def _rows(parts: list[tuple[str, Array, Array, Array]], B: int, N: int, xp: ModuleType
          ) -> tuple[Array, Array, Array, tuple[str, ...]]:
    if not parts:
        return xp.zeros((B, 0, N)), xp.zeros((B, 0)), xp.zeros((B, 0)), ()
    A = xp.concatenate([p[1] for p in parts], axis=1)
    lo = xp.concatenate([p[2] for p in parts], axis=1)
    hi = xp.concatenate([p[3] for p in parts], axis=1)
    names: list[str] = []
    for p in parts:
        names.extend([p[0]] * p[1].shape[1])
    return A, lo, hi, tuple(names)


def lower(pb: ProblemBatch, xp: ModuleType) -> Lowered:
    """The QP of ``pb`` on backend ``xp`` (objective conventions in ``problem.py``)."""
    B, n = pb.n_problems, pb.n_assets
    a = xp.asarray
    o = pb.objective
    if o == "max_sharpe":
        return _lower_sharpe(pb, xp)
    if o == "min_cvar":
        assert pb.scenarios is not None
        S = pb.scenarios.shape[1]
        N = n + 1 + S
        beta = a(pb.cvar_beta if pb.cvar_beta is not None else np.full(B, 0.95))
        P = xp.zeros((B, N, N))
        pmult = xp.ones(B)
        q = xp.zeros((B, N))
        q[:, n] = 1.0
        q[:, n + 1:] = 1.0 / ((1.0 - beta) * S)[:, None]
    else:
        assert pb.cov is not None
        N = n
        cov = a(pb.cov)
        P = cov  # shared, never copied: the multiplier goes to p_mult
        if o == "mean_variance" and pb.target_return is None:
            assert pb.mu is not None and pb.risk_aversion is not None
            pmult = a(pb.risk_aversion).astype(float)
            q = -a(pb.mu)
        else:
            pmult = xp.full(B, 2.0)
            q = xp.zeros((B, N))
    pad = N - n
    parts: list[tuple[str, Array, Array, Array]] = []

    def wrow(coef: Array) -> Array:  # (B, k, n) -> (B, k, N)
        return xp.concatenate([coef, xp.zeros((B, coef.shape[1], pad))], axis=2) if pad else coef

    if pb.budget is not None:
        bud = a(pb.budget)[:, None]
        parts.append(("budget", wrow(xp.ones((B, 1, n))), bud, bud))
    if pb.target_return is not None:
        assert pb.mu is not None
        parts.append(("target_return", wrow(a(pb.mu)[:, None, :]), a(pb.target_return)[:, None],
                      xp.full((B, 1), xp.inf)))
    if pb.groups is not None:
        for k, name in enumerate(pb.group_names):
            parts.append((f"group:{name}", wrow(a(pb.groups)[:, k:k + 1, :]),
                          a(pb.group_lower)[:, k:k + 1], a(pb.group_upper)[:, k:k + 1]))
    lb = xp.full((B, N), -xp.inf)
    ub = xp.full((B, N), xp.inf)
    lb[:, :n] = a(pb.lower)
    ub[:, :n] = a(pb.upper)
    if o == "min_cvar":
        assert pb.scenarios is not None
        S = pb.scenarios.shape[1]
        # -c r_s'w - alpha - u_s <= 0 with c = 1 / std(r): CVaR is positively homogeneous, so
        # scaling the scenarios scales alpha, u and the objective by c and leaves w unchanged
        R = a(pb.scenarios)
        c = 1.0 / xp.maximum(xp.std(R.reshape(B, -1), axis=1), 1e-300)
        A = xp.concatenate([-R * c[:, None, None], -xp.ones((B, S, 1)),
                            -xp.broadcast_to(xp.eye(S)[None], (B, S, S))], axis=2)
        parts.append(("cvar_scenarios", A, xp.full((B, S), -xp.inf), xp.zeros((B, S))))
        lb[:, n + 1:] = 0.0
    A, lo, hi, names = _rows(parts, B, N, xp)
    mask = xp.zeros(N, dtype=bool)
    mask[:n] = True
    balls = []
    if pb.turnover is not None:
        assert pb.current_weights is not None
        c = xp.zeros((B, N))
        c[:, :n] = a(pb.current_weights)
        balls.append(L1Ball("turnover", mask, c, a(pb.turnover)))
    if pb.leverage is not None:
        balls.append(L1Ball("leverage", mask, xp.zeros((B, N)), a(pb.leverage)))
    qp = QPBatch(P, q, A, lo, hi, lb, ub, tuple(balls), names, p_mult=pmult)
    return Lowered(qp, n, "cvar" if o == "min_cvar" else "w")


def _lower_sharpe(pb: ProblemBatch, xp: ModuleType) -> Lowered:
    """``min y'Sigma y`` s.t. ``(mu - rf)'y = 1``, ``sum y = budget * kappa``, ``lower * kappa <= y
    <= upper * kappa``, ``group_lower * kappa <= G y <= group_upper * kappa``, ``kappa >= 0``."""
    assert pb.cov is not None and pb.mu is not None and pb.budget is not None
    a = xp.asarray
    B, n = pb.n_problems, pb.n_assets
    N = n + 1
    P = xp.zeros((B, N, N))
    P[:, :n, :n] = 2.0 * a(pb.cov)
    q = xp.zeros((B, N))
    rf = a(pb.risk_free if pb.risk_free is not None else np.zeros(B))
    ex = a(pb.mu) - rf[:, None]
    one = xp.ones((B, 1))
    parts: list[tuple[str, Array, Array, Array]] = [
        ("excess_return", xp.concatenate([ex, xp.zeros((B, 1))], axis=1)[:, None, :], one, one),
        ("budget", xp.concatenate([xp.ones((B, n)), -a(pb.budget)[:, None]], axis=1)[:, None, :],
         0 * one, 0 * one),
    ]
    lower, upper = a(pb.lower), a(pb.upper)
    # bounds that are 0 or infinite stay variable bounds; others become rows y_i - b_i kappa
    lb = xp.where(lower == 0, 0.0, -xp.inf)
    lb = xp.where(xp.isneginf(lower), -xp.inf, lb)
    ub = xp.where(upper == 0, 0.0, xp.inf)
    lb = xp.concatenate([lb, xp.zeros((B, 1))], axis=1)
    ub = xp.concatenate([ub, xp.full((B, 1), xp.inf)], axis=1)
    lo_rows = np.nonzero(np.any(np.isfinite(pb.lower) & (pb.lower != 0), axis=0))[0]
    hi_rows = np.nonzero(np.any(np.isfinite(pb.upper) & (pb.upper != 0), axis=0))[0]
    eye = xp.eye(n)
    for idx, bound, is_low in ((lo_rows, lower, True), (hi_rows, upper, False)):
        if not len(idx):
            continue
        k = len(idx)
        ii = xp.asarray(idx)
        bnd = bound[:, ii]
        fin = xp.isfinite(bnd)
        coef = xp.concatenate([xp.broadcast_to(eye[ii][None], (B, k, n)),
                               -xp.where(fin, bnd, 0.0)[:, :, None]], axis=2)
        inf = xp.full((B, k), xp.inf)
        zero = xp.zeros((B, k))
        if is_low:
            parts.append(("asset bounds", coef, xp.where(fin, zero, -inf), inf))
        else:
            parts.append(("asset bounds", coef, -inf, xp.where(fin, zero, inf)))
    if pb.groups is not None:
        G = a(pb.groups)
        for k, name in enumerate(pb.group_names):
            gl, gu = a(pb.group_lower)[:, k], a(pb.group_upper)[:, k]
            for bnd, is_low in ((gl, True), (gu, False)):
                fin = xp.isfinite(bnd)
                coef = xp.concatenate([G[:, k, :], -xp.where(fin, bnd, 0.0)[:, None]], axis=1)
                inf = xp.full((B, 1), xp.inf)
                zero = xp.where(fin[:, None], 0.0, xp.inf)
                parts.append((f"group:{name}", coef[:, None, :], -zero if is_low else -inf,
                              inf if is_low else zero))
    A, lo, hi, names = _rows(parts, B, N, xp)
    return Lowered(QPBatch(P, q, A, lo, hi, lb, ub, (), names), n, "sharpe")
