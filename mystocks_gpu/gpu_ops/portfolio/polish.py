"""Polish: turn an approximate ADMM iterate into an exact KKT point of the (scaled) QP.

1. **Active set** from the ADMM iterate (OSQP's rule): a row is at its lower bound when
   ``z - l < -y``, at its upper bound when ``u - z < y``, always when ``l == u``; the same for the
   variable bounds. An L1 ball is active when ``r - |d|_1 < |y|_inf`` (``d = z - c``, the projected
   offset); its sign pattern is ``s = sign(d)``, and coordinates with ``d_i == 0`` (exact zeros of
   the soft-threshold) are *kinks*, fixed at the centre.
2. **Reduced KKT**: variables at a bound or a kink are fixed; for the free ones solve
   ``[P_FF + dI, E_F'; E_F, -dI] [x_F; y] = [-q_F - P_FX x_X; b - E_X x_X]`` where ``E`` stacks
   the active rows and one row ``s'x = r + s'c`` per active ball, by the Schur complement
   (two Cholesky factorisations of positive-definite matrices) plus ``polish_refine_iter`` steps
   of iterative refinement against the unregularised system, started from ADMM's multipliers
   (multipliers the equations leave undetermined, e.g. at a vertex, keep those estimates).
3. **Verification** (tolerance ``polish_tol``, scaled units): stationarity on the free set;
   primal feasibility of every row, bound and ball; correct multiplier signs (``y >= 0`` at an
   upper bound, ``<= 0`` at a lower one, ``nu >= 0`` for a ball); for each fixed coordinate, the
   residual gradient lies in the bound's normal cone plus ``[-nu, nu]`` for each ball kinked there.
4. **Correction**: where verification fails, the active set is updated primal-dual active-set
   style (violated constraints enter, wrong-sign multipliers leave, a ball coordinate whose sign
   flips becomes a kink, a kink whose subgradient is exceeded is released with the sign of the
   descent direction) and step 2 repeats, at most ``polish_rounds`` times.

A problem is *polished* only if verification passes; otherwise ADMM continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mystocks_gpu.gpu_ops.portfolio.qp import QPBatch

Array = Any


@dataclass
class ActiveSet:
    """Working active set of a sub-batch: ``row`` (B, m) in {-1 lower, 0, 1 upper, 2 equality},
    ``box`` (B, N) likewise, per ball ``active`` (B,), ``sign`` (B, N) in {-1, 0, 1} and
    ``kink`` (B, N) bool."""

    row: Array
    box: Array
    active: list[Array]
    sign: list[Array]
    kink: list[Array]

    def take(self, idx: Array) -> ActiveSet:
        return ActiveSet(self.row[idx], self.box[idx], [a[idx] for a in self.active],
                         [s[idx] for s in self.sign], [k[idx] for k in self.kink])


def guess_active_set(qp: QPBatch, zA: Array, yA: Array, zb: Array, yb: Array,
                     d: list[Array], yk: list[Array], xp: Any) -> ActiveSet:
    """Step 1 of the module docstring, from the ADMM iterate."""
    eq = qp.l == qp.u
    row = xp.where(eq, 2, xp.where(zA - qp.l < -yA, -1, xp.where(qp.u - zA < yA, 1, 0)))
    beq = qp.lb == qp.ub
    box = xp.where(beq, 2, xp.where(zb - qp.lb < -yb, -1, xp.where(qp.ub - zb < yb, 1, 0)))
    active, sign, kink = [], [], []
    for ball, dk, y in zip(qp.balls, d, yk, strict=True):
        m = ball.mask[None, :]
        slack = ball.radius - xp.sum(xp.abs(dk) * m, axis=1)
        act = xp.isfinite(ball.radius) & (slack < xp.max(xp.abs(y), axis=1))
        active.append(act)
        sign.append(xp.sign(dk) * m * act[:, None])
        kink.append(m & (dk == 0) & act[:, None])
    return ActiveSet(row.astype(xp.int8), box.astype(xp.int8), active, sign, kink)


def _normalize(qp: QPBatch, st: ActiveSet, xp: Any) -> None:
    """A coordinate at a bound that differs from a ball's centre cannot be that ball's kink: it
    gets the sign of ``bound - centre`` in the ball's row instead (in place)."""
    at_lb = (st.box == -1) | (st.box == 2)
    at_ub = st.box == 1
    bound = xp.where(at_lb, qp.lb, xp.where(at_ub, qp.ub, 0.0))
    for k, ball in enumerate(qp.balls):
        clash = st.kink[k] & (at_lb | at_ub) & (bound != ball.center)
        if bool(xp.any(clash)):
            st.kink[k] = st.kink[k] & ~clash
            st.sign[k] = xp.where(clash, xp.sign(bound - ball.center), st.sign[k])


def _solve_reduced(qp: QPBatch, prow: Array, st: ActiveSet, y0: Array, delta: float,
                   refine: int, ops: Any) -> tuple[Array, Array]:
    """Step 2: ``(x (B, N), y (B, m + K))`` with ``y`` the multipliers of the active rows and
    balls (0 elsewhere). Problem ``b``'s matrix is ``qp.pm()[b] * qp.P[prow[b]]``."""
    xp = ops.xp
    B, N = qp.q.shape
    m = qp.n_rows
    _normalize(qp, st, xp)
    # fixed coordinates and their values (a bound wins over a kink)
    kink_any = xp.zeros((B, N), dtype=bool)
    kink_val = xp.zeros((B, N))
    for ball, k in zip(qp.balls, st.kink, strict=True):
        kink_val = xp.where(k & ~kink_any, ball.center, kink_val)
        kink_any = kink_any | k
    at_lb = (st.box == -1) | (st.box == 2)
    at_ub = st.box == 1
    fixed = at_lb | at_ub | kink_any
    val = xp.where(at_lb, qp.lb, xp.where(at_ub, qp.ub, kink_val))
    xfix = xp.where(fixed, val, 0.0)
    # equality rows: active general rows and one sign row per active ball
    rows = [qp.A] if m else []
    rhs_rows = [xp.where(st.row == 1, qp.u, qp.l)] if m else []
    act_rows = [st.row != 0] if m else []
    for ball, a, s in zip(qp.balls, st.active, st.sign, strict=True):
        rows.append(s[:, None, :])
        rhs_rows.append((ball.radius + xp.sum(s * ball.center, axis=1))[:, None])
        act_rows.append(a[:, None])
    E = xp.concatenate(rows, axis=1) if rows else xp.zeros((B, 0, N))
    e_rhs = xp.concatenate(rhs_rows, axis=1) if rows else xp.zeros((B, 0))
    e_act = xp.concatenate(act_rows, axis=1) if rows else xp.zeros((B, 0), dtype=bool)
    e_rhs = xp.where(e_act, e_rhs, 0.0)
    x, y, ok = ops.kkt_reduced(qp.P, prow, qp.pm(), qp.q, ~fixed, xfix, E, e_rhs, e_act,
                               xp.where(e_act, y0, 0.0), delta, refine)
    return xp.where(ok[:, None], x, xp.nan), y


def _verify(qp: QPBatch, prow: Array, st: ActiveSet, x: Array, y: Array, tol: float, ops: Any
            ) -> tuple[Array, dict[str, Array]]:
    """Step 3: ``(ok (B,), diagnostics)``; the diagnostics feed the correction step."""
    xp = ops.xp
    B, N = qp.q.shape
    m = qp.n_rows
    finite = xp.all(xp.isfinite(x), axis=1)
    x = xp.where(finite[:, None], x, 0.0)
    Px = ops.matvec(qp.P, x, prow) * qp.pm()[:, None]
    h = Px + qp.q
    if m:
        h = h + xp.einsum("bmn,bm->bn", qp.A, y[:, :m])
    nu = [y[:, m + k] for k in range(len(qp.balls))]
    for s, v in zip(st.sign, nu, strict=True):
        h = h + s * v[:, None]
    scale_p = 1.0 + xp.max(xp.abs(x), axis=1)
    scale_d = 1.0 + xp.maximum(xp.max(xp.abs(qp.q), axis=1), xp.max(xp.abs(Px), axis=1))
    tp, td = tol * scale_p[:, None], tol * scale_d[:, None]
    ok = finite
    diag: dict[str, Array] = {"h": h}
    if m:
        ax = xp.einsum("bmn,bn->bm", qp.A, x)
        low_v, up_v = ax < qp.l - tp, ax > qp.u + tp
        wrong_up = (st.row == 1) & (y[:, :m] < -td)
        wrong_lo = (st.row == -1) & (y[:, :m] > td)
        ok = ok & ~xp.any(low_v | up_v | wrong_up | wrong_lo, axis=1)
        diag.update(row_low=low_v, row_up=up_v, row_wrong=wrong_up | wrong_lo)
    blo, bup = x < qp.lb - tp, x > qp.ub + tp
    ok = ok & ~xp.any(blo | bup, axis=1)
    diag.update(box_low=blo, box_up=bup)
    # fixed coordinates: -h in (normal cone of the bound) + sum over kinked balls of [-nu, nu]
    V = xp.zeros((B, N))
    for k_, v in zip(st.kink, nu, strict=True):
        V = V + k_ * xp.maximum(v, 0.0)[:, None]
    kink_any = V > 0
    for k_ in st.kink:
        kink_any = kink_any | k_
    # normal cone of [lb, ub]: (-inf, 0] at lb, [0, inf) at ub, R when lb == ub
    lo = xp.where((st.box == -1) | (st.box == 2), -xp.inf, 0.0) - V
    hi = xp.where((st.box == 1) | (st.box == 2), xp.inf, 0.0) + V
    fixed = (st.box != 0) | kink_any
    g = -h
    dual_fixed = fixed & ((g < lo - td) | (g > hi + td))
    stat_free = ~fixed & (xp.abs(h) > td)
    ok = ok & ~xp.any(dual_fixed | stat_free, axis=1)
    diag.update(dual_fixed=dual_fixed)
    for k, ball in enumerate(qp.balls):
        dev = (x - ball.center) * ball.mask[None, :]
        over = xp.sum(xp.abs(dev), axis=1) > ball.radius + tp[:, 0]
        flip = st.active[k][:, None] & ~st.kink[k] & ball.mask[None, :] & (st.sign[k] * dev < -tp)
        neg = st.active[k] & (nu[k] < -td[:, 0])
        ok = ok & ~over & ~xp.any(flip, axis=1) & ~neg
        diag[f"ball{k}"] = (over, flip, neg, dev)
    return ok, diag


def _correct(qp: QPBatch, st: ActiveSet, diag: dict[str, Array], xp: Any) -> ActiveSet:
    """Step 4: the next active set for the problems that failed verification."""
    row = st.row
    if qp.n_rows:
        row = xp.where((row == 0) & diag["row_low"], -1, row)
        row = xp.where((row == 0) & diag["row_up"], 1, row)
        row = xp.where(diag["row_wrong"], 0, row)
    box = st.box
    box = xp.where((box == 0) & diag["box_low"], -1, box)
    box = xp.where((box == 0) & diag["box_up"], 1, box)
    h = diag["h"]
    release = diag["dual_fixed"] & ((box == -1) | (box == 1))
    box = xp.where(release, 0, box)
    active, sign, kink = [], [], []
    for k, ball in enumerate(qp.balls):
        over, flip, neg, dev = diag[f"ball{k}"]
        a, s, kk = st.active[k], st.sign[k], st.kink[k]
        m = ball.mask[None, :]
        newly = ~a & over
        s = xp.where(newly[:, None], xp.sign(dev) * m, s)
        kk = xp.where(newly[:, None], False, kk)
        kk = kk | flip
        s = xp.where(flip, 0.0, s)
        unkink = kk & diag["dual_fixed"] & ~((box == -1) | (box == 1))
        s = xp.where(unkink, xp.sign(-h), s)
        kk = kk & ~unkink
        a = (a | newly) & ~neg
        s = s * a[:, None]
        kk = kk & a[:, None]
        active.append(a)
        sign.append(s)
        kink.append(kk)
    return ActiveSet(row.astype(xp.int8), box.astype(xp.int8), active, sign, kink)


def polish(qp: QPBatch, prow: Array, st: ActiveSet, y0: Array, cfg: Any, ops: Any
           ) -> tuple[Array, Array]:
    """``(ok (B,), x (B, N))``: the verified KKT points (``x`` is NaN where not ok). ``qp``
    holds the sub-batch's vectors; problem ``b``'s matrix is ``qp.P[prow[b]]`` (times
    ``p_mult``); ``y0 (B, m + K)`` are ADMM's multiplier estimates of the rows and balls."""
    xp = ops.xp
    B, N = qp.q.shape
    ok_all = xp.zeros(B, dtype=bool)
    x_all = xp.full((B, N), xp.nan)
    idx = xp.arange(B)
    sub, st_sub, rows, y_est = qp, st, prow, y0
    for rnd in range(cfg.polish_rounds + 1):
        x, y = _solve_reduced(sub, rows, st_sub, y_est, cfg.polish_delta, cfg.polish_refine_iter,
                              ops)
        ok, diag = _verify(sub, rows, st_sub, x, y, cfg.polish_tol, ops)
        ok_all[idx[ok]] = True
        x_all[idx[ok]] = x[ok]
        if bool(xp.all(ok)) or rnd == cfg.polish_rounds:
            break
        keep = xp.nonzero(~ok)[0]
        st_next = _correct(sub, st_sub, diag, xp).take(keep)
        sub, st_sub, idx, rows = sub.take(keep, with_p=False), st_next, idx[keep], rows[keep]
        y_est = y[keep]
    return ok_all, x_all
