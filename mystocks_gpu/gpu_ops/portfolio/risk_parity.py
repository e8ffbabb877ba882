"""Risk parity (risk budgeting) by Spinu's convex formulation, batched damped Newton.

For budgets ``b > 0`` (``sum b = 1``; equal by default) the long-only portfolio with risk
contributions ``w_i (Sigma w)_i / w'Sigma w = b_i`` is ``w = x / sum(x)`` where ``x`` minimises
the strictly convex ``f(x) = 1/2 x'Sigma x - sum_i b_i log x_i`` (Spinu 2013). Newton step
``dx = -(Sigma + diag(b / x^2))^-1 (Sigma x - b / x)`` (one batched Cholesky per iteration),
step length halved until ``x + t dx > 0`` and the Armijo condition ``f(x + t dx) <= f(x) +
t g'dx / 4`` hold; stop when the Newton decrement ``-g'dx / 2 <= rp_tol`` (then ``f`` is within
``rp_tol`` of its minimum). ``Sigma`` is scaled by ``1 / mean(diag)`` first (weights unchanged).
"""

from __future__ import annotations

from typing import Any

from mystocks_gpu.gpu_ops.portfolio import solve_status as S

Array = Any
MAX_HALVINGS = 40


def _f(cov: Array, x: Array, b: Array, ops: Any) -> Array:
    xp = ops.xp
    with_pos = xp.where(x > 0, x, 1.0)
    val = 0.5 * xp.sum(x * ops.matvec(cov, x), axis=1) - xp.sum(b * xp.log(with_pos), axis=1)
    return xp.where(xp.all(x > 0, axis=1), val, xp.inf)


def risk_parity(cov: Array, budgets: Array, tol: float, max_iter: int, ops: Any
                ) -> tuple[Array, Array, Array]:
    """``(weights (B, n), status (B,), iterations (B,))`` for ``cov (B, n, n)`` (positive
    definite) and ``budgets (B, n)``."""
    xp = ops.xp
    B, n = budgets.shape
    c = cov / xp.mean(xp.diagonal(cov, axis1=1, axis2=2), axis=1)[:, None, None]
    b = budgets / xp.sum(budgets, axis=1, keepdims=True)
    x = xp.sqrt(b / xp.diagonal(c, axis1=1, axis2=2))
    status = xp.full(B, S.MAX_ITER, dtype=xp.int8)
    iters = xp.zeros(B, dtype=xp.int64)
    run = xp.arange(B)
    eye = xp.eye(n)[None]
    for _ in range(max_iter):
        if not run.shape[0]:
            break
        cr, br, xr = c[run], b[run], x[run]
        g = ops.matvec(cr, xr) - br / xr
        H = cr + eye * (br / xr**2)[:, :, None]
        handle, ok = ops.factor(H)
        dx = -ops.solve(handle, g)
        dec = -xp.sum(g * dx, axis=1) / 2.0
        iters[run] += 1
        done = (dec <= tol) | ~ok
        status[run[done & ok]] = S.OPTIMAL
        status[run[~ok]] = S.NUMERICAL
        f0 = _f(cr, xr, br, ops)
        t = xp.ones(run.shape[0])
        pending = ~done
        for _h in range(MAX_HALVINGS):
            if not bool(xp.any(pending)):
                break
            cand = xr + t[:, None] * dx
            good = _f(cr, cand, br, ops) <= f0 - 0.5 * t * dec  # f0 + t g'dx / 4 (g'dx = -2 dec)
            pending = pending & ~good
            t = xp.where(pending, 0.5 * t, t)
        step = ~done
        x[run[step]] = xr[step] + t[step][:, None] * dx[step]
        run = run[~done]
    w = x / xp.sum(x, axis=1, keepdims=True)
    return w, status, iters
