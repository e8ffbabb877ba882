"""Active-set refinement for polish: an exact interior-point solve on the uncertain coordinates.

ADMM's active-set guess (``polish.guess_active_set``) is usually wrong in a few coordinates long
before ADMM itself converges, and polish's primal-dual corrections (``polish.py`` step 4) do not
recover reliably when the rows and an L1 ball interact (mean-variance with a turnover limit:
~140 of 200 assets sit at the ball's kinks, ~50 at a bound, ~10 are free). This module
replaces the guess by the active set of an exact solution of a *restricted* problem:

1. **Subspace** ``U`` (``k = min(N, free + extra)`` coordinates per problem): every coordinate the
   guess leaves free, then those whose classification is least certain. Margins (scaled units):
   at a bound ``-y - (z - lb)`` (lower) or ``y - (ub - z)`` (upper); at a ball's kink ``nu - |y_i|``
   with ``nu = max |y|`` the ball multiplier estimate. Coordinates outside ``U`` keep their
   guessed value (bound or kink centre).
2. **Restricted QP** in ``x_U``: ``min 1/2 x'(pm P_UU)x + (q_U + pm P_UX x_X)'x`` subject to
   the general rows (right-hand sides shifted by ``A_X x_X``), the bounds of ``U`` and, for the
   first L1 ball, ``sum_U |x_i - c_i| <= r - sum_X |x_i - c_i|`` (``t_i >= |x_i - c_i|``).
3. **Mehrotra predictor-corrector IPM** (infeasible start from ADMM's ``x``; one common step
   length; ``max_iter`` iterations at most; a problem stops when the residuals of the restricted
   KKT system are below ``tol`` and the complementarity gap below ``MU_FACTOR * tol``). The
   Newton matrix is reduced to the ``k x k`` Schur complement onto ``x`` (the ``t`` block is
   diagonal plus rank one and is eliminated in closed form) and factored by ``ops.factor``
   (numba Cholesky on the CPU, an explicit inverse on the GPU); everything else is batched
   array code written once for NumPy and CuPy.
4. **Active set** of the result: a constraint is active where its slack is below its multiplier
   (strict complementarity separates them by orders of magnitude); ``(row, ball)`` multipliers
   seed polish's reduced KKT solve, which then proves (or not) optimality for the full problem.
5. **Rounds**: the fixed coordinates are checked against the restricted solution's multipliers
   (the normal cone of their bound / kink); up to ``max(extra, 1)`` violators per problem join
   ``U`` and the problem is solved again, ``rounds`` solves at most.

Problems with more than one L1 ball use the first only (the others keep the guess); the result
is only a guess either way: polish's verification decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mystocks_gpu.gpu_ops.portfolio.polish import ActiveSet
from mystocks_gpu.gpu_ops.portfolio.qp import QPBatch

Array = Any
Z_START = 0.1  # initial multipliers (scaled problem: multipliers are O(0.01..1))
S_MIN = 1e-2  # smallest initial slack
REG = 1e-12  # diagonal regularisation of the Newton matrix (LP-like subproblems: P_UU = 0)
REFINE = 2  # iterative-refinement steps of a Newton solve by an explicit inverse (GPU)
GROUPS, GROUP_MIN = 4, 32  # size groups per refinement (when >= GROUP_MIN problems each)
MU_FACTOR = 1e-3  # stop at a complementarity gap tol * MU_FACTOR: slack and multiplier of
# every constraint then differ by orders of magnitude, so "slack < multiplier" is unambiguous


def uncertain_coords(qp: QPBatch, st: ActiveSet, zb: Array, yb: Array, yk: list[Array],
                     extra: int, xp: Any, force: Array | None = None) -> Array:
    """``U (B, k)``: per problem the ``k`` coordinates of step 1 (distinct indices); ``force
    (B, N)`` marks coordinates that must be in ``U`` (counted on top of ``extra``)."""
    B, N = zb.shape
    inf = xp.inf
    lo_m = xp.where(st.box == -1, -yb - (zb - qp.lb), inf)
    up_m = xp.where(st.box == 1, yb - (qp.ub - zb), inf)
    margin = xp.minimum(lo_m, up_m)
    margin = xp.where(st.box == 2, inf, margin)  # lb == ub: never uncertain
    kink_m = xp.full((B, N), inf)
    for kk, y in zip(st.kink, yk, strict=True):
        nu = xp.max(xp.abs(y), axis=1, keepdims=True)
        kink_m = xp.minimum(kink_m, xp.where(kk, nu - xp.abs(y), inf))
    margin = xp.minimum(margin, kink_m)
    free = (st.box == 0) & ~_any(st.kink, (B, N), xp)
    if force is not None:
        free = free | force
    margin = xp.where(free, -inf, margin)
    k = min(N, int(xp.max(xp.sum(free, axis=1))) + extra) if B else 0
    return xp.argsort(margin, axis=1)[:, :k]


def _any(masks: list[Array], shape: tuple[int, int], xp: Any) -> Array:
    out = xp.zeros(shape, dtype=bool)
    for m in masks:
        out = out | m
    return out


def _fixed_values(qp: QPBatch, st: ActiveSet, x: Array, xp: Any) -> Array:
    """The guessed value of every coordinate: its bound, else its kink centre, else ``x``."""
    val = x
    for ball, kk in zip(qp.balls, st.kink, strict=True):
        val = xp.where(kk, ball.center, val)
    val = xp.where((st.box == -1) | (st.box == 2), qp.lb, val)
    return xp.where(st.box == 1, qp.ub, val)


def refine_active_set(qp: QPBatch, prow: Array, st: ActiveSet, x: Array, zb: Array, yb: Array,
                      yk: list[Array], extra: int, max_iter: int, rounds: int, tol: float,
                      ops: Any) -> tuple[ActiveSet, Array, Array]:
    """``(active set, y0 (B, m + K), ambiguous (B, N) int8)`` from the restricted IPM (module
    docstring; ``ambiguous`` feeds :func:`polish_alternative`). ``qp`` is the
    scaled sub-batch whose problem ``b`` has matrix ``qp.pm()[b] * qp.P[prow[b]]``; ``x (B, N)``
    is ADMM's iterate; ``st`` its active-set guess. After each solve the fixed coordinates are
    checked against the restricted solution's multipliers; problems with violators solve again
    with the violators added to ``U`` (at most ``rounds`` solves in all).

    The batch is solved in up to ``GROUPS`` groups of similar subspace size (sorted by the
    number of guessed-free coordinates), so few large subspaces do not pad all the others."""
    xp = ops.xp
    B = x.shape[0]
    nfree = xp.sum((st.box == 0) & ~_any(st.kink, st.box.shape, xp), axis=1)
    g = GROUPS if B >= GROUP_MIN * GROUPS else 1
    if g == 1:
        return _refine(qp, prow, st, x, zb, yb, yk, extra, max_iter, rounds, tol, ops)
    order = xp.argsort(nfree)
    st_out = st.take(xp.arange(B))  # a copy to write into
    y0_out = xp.zeros((B, qp.n_rows + len(qp.balls)))
    amb_out = xp.zeros(st.box.shape, dtype=xp.int8)
    bounds = [B * j // g for j in range(g + 1)]
    for j in range(g):
        idx = order[bounds[j]:bounds[j + 1]]
        st_j, y0_j, amb_j = _refine(qp.take(idx, with_p=False), prow[idx], st.take(idx), x[idx],
                             zb[idx], yb[idx], [y[idx] for y in yk], extra, max_iter, rounds,
                             tol, ops)
        st_out = _merge(st_out, st_j, idx, xp)
        y0_out[idx] = y0_j
        amb_out[idx] = amb_j
    return st_out, y0_out, amb_out


def polish_alternative(st: ActiveSet, amb: Array, xp: Any) -> ActiveSet:
    """The active set with the ambiguous coordinates at their bound instead of the kink (the
    second choice where polish from the first fails)."""
    box = xp.where(amb != 0, amb, st.box).astype(xp.int8)
    return ActiveSet(st.row, box, st.active, st.sign, st.kink)


def _refine(qp: QPBatch, prow: Array, st: ActiveSet, x: Array, zb: Array, yb: Array,
            yk: list[Array], extra: int, max_iter: int, rounds: int, tol: float, ops: Any
            ) -> tuple[ActiveSet, Array, Array]:
    """:func:`refine_active_set` for one group."""
    xp = ops.xp
    B, N = x.shape
    force = xp.zeros((B, N), dtype=bool)
    st_out, y0_out = st, xp.zeros((B, qp.n_rows + len(qp.balls)))
    amb_out = xp.zeros((B, N), dtype=xp.int8)
    todo = xp.arange(B)
    for rnd in range(rounds):
        sub = qp if rnd == 0 else qp.take(todo, with_p=False)
        sst = st if rnd == 0 else st.take(todo)
        U = uncertain_coords(sub, sst, zb[todo], yb[todo], [y[todo] for y in yk], extra, xp,
                             force[todo])
        sol, xfull, xfix = _solve_restricted(sub, prow[todo], sst, U, x[todo], max_iter, tol, ops)
        st_new, y0, amb = _classify(sub, sst, U, sol, xfix, xp)
        st_out = st_new if rnd == 0 else _merge(st_out, st_new, todo, xp)
        y0_out[todo] = y0
        amb_out[todo] = amb
        if rnd == rounds - 1:
            break
        viol = _outside_violations(sub, prow[todo], st_new, U, xfull, y0, tol, max(extra, 1),
                                    ops)
        again = xp.any(viol, axis=1)
        if not bool(xp.any(again)):
            break
        force[todo] = force[todo] | viol
        todo = todo[again]
    return st_out, y0_out, amb_out


def _merge(st: ActiveSet, part: ActiveSet, idx: Array, xp: Any) -> ActiveSet:
    """``st`` with the problems at ``idx`` replaced by ``part``."""
    row, box = st.row.copy(), st.box.copy()
    row[idx], box[idx] = part.row, part.box
    active, sign, kink = [a.copy() for a in st.active], [s.copy() for s in st.sign], \
        [k.copy() for k in st.kink]
    for j in range(len(active)):
        active[j][idx], sign[j][idx], kink[j][idx] = part.active[j], part.sign[j], part.kink[j]
    return ActiveSet(row, box, active, sign, kink)


def _outside_violations(qp: QPBatch, prow: Array, st: ActiveSet, U: Array, x: Array, y0: Array,
                        tol: float, limit: int, ops: Any) -> Array:
    """``(B, N)``: the (at most ``limit`` most) fixed coordinates outside ``U`` whose reduced
    gradient at the restricted solution ``x`` (multipliers ``y0``) leaves the normal cone of
    their bound / kink."""
    xp = ops.xp
    B, N = x.shape
    m = qp.n_rows
    h = ops.matvec(qp.P, x, prow) * qp.pm()[:, None] + qp.q
    if m:
        h = h + xp.einsum("bmn,bm->bn", qp.A, y0[:, :m])
    slack = xp.zeros((B, N))
    for j, (sg, kk) in enumerate(zip(st.sign, st.kink, strict=True)):
        nu = xp.maximum(y0[:, m + j], 0.0)[:, None]
        h = h + sg * nu
        slack = slack + kk * nu
    td = tol * (1.0 + xp.max(xp.abs(h), axis=1, keepdims=True))
    lo = xp.where((st.box == -1) | (st.box == 2), -xp.inf, 0.0) - slack
    hi = xp.where((st.box == 1) | (st.box == 2), xp.inf, 0.0) + slack
    excess = xp.maximum(lo - td + h, -h - hi - td)  # > 0: outside the cone
    inU = xp.zeros((B, N), dtype=bool)
    inU[xp.arange(B)[:, None], U] = True
    excess = xp.where(inU, 0.0, excess)
    # the `limit` most violated per problem (bounds the growth of U)
    kth = -xp.sort(-excess, axis=1)[:, min(limit, N) - 1:min(limit, N)]
    return (excess > 0) & (excess >= kth)


def _solve_restricted(qp: QPBatch, prow: Array, st: ActiveSet, U: Array, x: Array,
                      max_iter: int, tol: float, ops: Any
                      ) -> tuple[dict[str, Array], Array, Array]:
    """Steps 2-3: ``(IPM solution, x over all coordinates, the guessed fixed values)``."""
    xp = ops.xp
    B, N = x.shape
    m = qp.n_rows
    k = U.shape[1]
    ar = xp.arange(B)[:, None]
    xfix = _fixed_values(qp, st, x, xp)
    inU = xp.zeros((B, N), dtype=bool)
    inU[ar, U] = True
    xX = xp.where(inU, 0.0, xfix)
    pm = qp.pm()
    H = qp.P[prow[:, None, None], U[:, :, None], U[:, None, :]] * pm[:, None, None]
    f = xp.take_along_axis(qp.q + ops.matvec(qp.P, xX, prow) * pm[:, None], U, axis=1)
    lb, ub = xp.take_along_axis(qp.lb, U, axis=1), xp.take_along_axis(qp.ub, U, axis=1)
    if m:
        AU = xp.take_along_axis(qp.A, U[:, None, :], axis=2)
        shift = xp.einsum("bmn,bn->bm", qp.A, xX)
        lr, ur = qp.l - shift, qp.u - shift
        is_eq = qp.l == qp.u
    else:
        AU = xp.zeros((B, 0, k))
        lr = ur = xp.zeros((B, 0))
        is_eq = xp.zeros((B, 0), dtype=bool)
    if qp.balls:
        ball = qp.balls[0]
        c = xp.take_along_axis(ball.center, U, axis=1)
        mb = ball.mask[U] & xp.isfinite(ball.radius)[:, None]
        rest = xp.sum(xp.abs(xX - ball.center) * ball.mask[None, :] * ~inU, axis=1)
        m5 = xp.isfinite(ball.radius)
        r5 = xp.where(m5, ball.radius - rest, 1.0)
    else:
        c = xp.zeros((B, k))
        mb = xp.zeros((B, k), dtype=bool)
        m5 = xp.zeros(B, dtype=bool)
        r5 = xp.ones(B)
    x0 = xp.take_along_axis(x, U, axis=1)
    sol = _ipm(H, f, lb, ub, c, mb, m5, r5, AU, lr, ur, is_eq, x0, max_iter, tol, ops)
    xfull = xfix.copy()
    xfull[ar, U] = sol["x"]
    return sol, xfull, xfix


@dataclass
class _Layout:
    """The stacked inequalities ``G v + s = h`` of the restricted QP, ``v = (x (k), t (k))``:
    blocks ``x <= ub``, ``-x <= -lb``, ``x - t <= c``, ``-x - t <= -c`` (``k`` each), ``sum t <=
    r`` (1), ``A x <= u``, ``-A x <= -l`` (``m`` each); ``fm (B, 4k + 1 + 2m)`` is 1 on the rows
    that exist and 0 on inert ones."""

    k: int
    m: int
    A: Array  # (B, m, k)
    fm: Array
    mbf: Array  # (B, k) ball coordinates (float)
    xp: Any

    def sl(self, block: int) -> slice:
        """Block ``0..6`` of the stacked rows."""
        k, m = self.k, self.m
        starts = [0, k, 2 * k, 3 * k, 4 * k, 4 * k + 1, 4 * k + 1 + m, 4 * k + 1 + 2 * m]
        return slice(starts[block], starts[block + 1])

    def G(self, x: Array, t: Array) -> Array:
        xp = self.xp
        ax = xp.einsum("bmk,bk->bm", self.A, x)
        return self.fm * xp.concatenate([x, -x, x - t, -x - t,
                                         xp.sum(self.mbf * t, axis=1)[:, None], ax, -ax], axis=1)

    def Gt(self, w: Array) -> tuple[Array, Array]:
        w = w * self.fm
        b = [w[:, self.sl(i)] for i in range(7)]
        gx = b[0] - b[1] + b[2] - b[3]
        if self.m:
            gx = gx + self.xp.einsum("bmk,bm->bk", self.A, b[5] - b[6])
        return gx, -b[2] - b[3] + self.mbf * b[4]


@dataclass
class _Newton:
    """One iteration's factored Newton matrix ``[K, Aeq'; Aeq, 0]`` with ``K = [Kxx, diag(e);
    diag(e), Ktt]``, ``Ktt = diag(1 / phi) + d5 mb mb'`` (Sherman-Morrison: ``Ktt^-1 w = phi w
    - gam (phi mb)(phi mb)'w``); ``Mh`` is the factor of the Schur complement ``M`` onto ``x``
    after the symmetric scaling ``diag(sc) M diag(sc)``."""

    ops: Any
    Mh: Array
    sc: Array  # (B, k)
    e: Array
    phi: Array
    gam: Array
    mbf: Array
    Aeq: Array
    Wx: Array | None = None
    Wt: Array | None = None
    Sc: Array | None = None
    Ms: Array | None = None  # the scaled matrix, kept where ``Mh`` is an explicit inverse

    def m_solve_multi(self, R: Array) -> Array:
        """``M^-1 R`` for ``R (B, k, c)``; with an explicit inverse, ``REFINE`` steps of
        iterative refinement against the scaled matrix (its error is amplified by the
        conditioning, the Cholesky solve's is not)."""
        sc = self.sc[:, :, None]
        Rs = R * sc
        X = self.ops.solve_multi(self.Mh, Rs)
        if self.Ms is not None:
            for _ in range(REFINE):
                X = X + self.ops.solve_multi(self.Mh, Rs - self.ops.xp.matmul(self.Ms, X))
        return X * sc

    def ktt(self, w: Array) -> Array:
        pm = self.phi * self.mbf
        return self.phi * w - (self.gam * self.ops.xp.sum(pm * w, axis=1))[:, None] * pm

    def prepare_eq(self, eye_pad: Array) -> None:
        """``K^-1 [Aeq'; 0]`` and the equality rows' Schur complement (``eye_pad`` on rows that
        are not equalities)."""
        xp = self.ops.xp
        self.Wx = self.m_solve_multi(xp.swapaxes(self.Aeq, 1, 2))
        cols = [self.ktt(self.e * self.Wx[:, :, j]) for j in range(self.Wx.shape[2])]
        self.Wt = -xp.stack(cols, axis=2)
        self.Sc = xp.matmul(self.Aeq, self.Wx) + eye_pad

    def solve(self, bx: Array, bt: Array, rp: Array) -> tuple[Array, Array, Array]:
        """``(dx, dt, dy)`` with ``K dv + Aeq' dy = (bx, bt)``, ``Aeq dx = -rp``."""
        xp = self.ops.xp
        vx = self.m_solve_multi((bx - self.e * self.ktt(bt))[:, :, None])[:, :, 0]
        vt = self.ktt(bt - self.e * vx)
        if self.Sc is None:
            return vx, vt, xp.zeros((vx.shape[0], 0))
        rhs = xp.einsum("bmk,bk->bm", self.Aeq, vx) + rp
        dy = xp.linalg.solve(self.Sc, rhs[:, :, None])[:, :, 0]
        return (vx - xp.einsum("bkm,bm->bk", self.Wx, dy),
                vt - xp.einsum("bkm,bm->bk", self.Wt, dy), dy)


def _factor(M: Array, ops: Any) -> tuple[Array, Array]:
    """``(handle, ok)`` for the scaled Newton matrices ``M (B, k, k)``: the CPU twin's Cholesky
    (``ops.factor``); on an array backend (``ops.compact_physically``: the GPU program) an
    explicit inverse, accepted where finite. Near convergence ``M`` is positive definite but
    ill-conditioned (the ball's sum row adds a rank-one term ~1e12): a Cholesky-based definiteness
    test would reject it, while the inverse's error stays in the direction the constraints pin."""
    if not ops.compact_physically:
        return ops.factor(M)
    xp = ops.xp
    try:
        inv = xp.linalg.inv(M)
    except Exception:  # noqa: BLE001 - NumPy raises on a singular matrix; CuPy returns inf/nan
        inv = xp.full(M.shape, xp.nan)
        for b in range(M.shape[0]):
            try:
                inv[b] = xp.linalg.inv(M[b])
            except Exception:  # noqa: BLE001, PERF203 - stays NaN: reported as not ok
                pass
    ok = xp.all(xp.isfinite(inv.reshape(M.shape[0], -1)), axis=1)
    return xp.where(ok[:, None, None], 0.5 * (inv + xp.swapaxes(inv, 1, 2)), 0.0), ok


def _max_step(s: Array, z: Array, ds: Array, dz: Array, xp: Any) -> Array:
    """Largest ``a <= 1`` per problem with ``s + a ds >= 0`` and ``z + a dz >= 0``."""
    with _ignore(xp):
        a_s = xp.where(ds < 0, -s / ds, xp.inf)
        a_z = xp.where(dz < 0, -z / dz, xp.inf)
    return xp.minimum(1.0, xp.minimum(xp.min(a_s, axis=1), xp.min(a_z, axis=1)))


def _ipm(H: Array, f: Array, lb: Array, ub: Array, c: Array, mb: Array, m5: Array, r5: Array,
         A: Array, lr: Array, ur: Array, is_eq: Array, x0: Array, max_iter: int, tol: float,
         ops: Any) -> dict[str, Array]:
    """Mehrotra IPM for ``min 1/2 x'Hx + f'x`` s.t. ``lb <= x <= ub``, ``|x - c| <= t`` and
    ``sum t <= r5`` where ``mb`` (ball coordinates; ``m5`` ball present), ``lr <= A x <= ur``
    (equalities where ``is_eq``); shapes ``H (B, k, k)``, vectors ``(B, k)``, ``A (B, m, k)``.
    Constraints that do not exist (infinite bounds, no ball) are inert rows (``s = 1, z = 0``).
    Returns the primal-dual point, the row mask, and ``ok`` (converged, factor never failed)."""
    xp = ops.xp
    B, k = f.shape
    m = A.shape[1]
    ik = xp.arange(k)
    m1, m2 = xp.isfinite(ub), xp.isfinite(lb)
    m6 = xp.isfinite(ur) & ~is_eq
    m7 = xp.isfinite(lr) & ~is_eq
    mask = xp.concatenate([m1, m2, mb, mb, m5[:, None], m6, m7], axis=1)
    fm = mask.astype(float)
    lay = _Layout(k, m, A, fm, mb.astype(float), xp)
    h = xp.concatenate([xp.where(m1, ub, 1.0), xp.where(m2, -lb, 1.0), xp.where(mb, c, 1.0),
                        xp.where(mb, -c, 1.0), r5[:, None], xp.where(m6, ur, 1.0),
                        xp.where(m7, -lr, 1.0)], axis=1)
    Aeq = A * is_eq[:, :, None]
    beq = xp.where(is_eq, lr, 0.0)
    qt = xp.where(mb, 0.0, 1.0)  # t without a ball row: curvature 1, so t = 0
    eye_pad = xp.eye(m)[None] * (~is_eq)[:, :, None].astype(float)
    x = x0.copy()
    t = lay.mbf * xp.abs(x - c)
    s = xp.where(mask, xp.maximum(h - lay.G(x, t), S_MIN), 1.0)
    z = fm * Z_START
    y = xp.zeros((B, m))
    nrows = xp.maximum(xp.sum(fm, axis=1), 1.0)
    done = xp.zeros(B, dtype=bool)
    failed = xp.zeros(B, dtype=bool)
    iters = 0
    for iters in range(1, max_iter + 1):  # noqa: B007 - reported
        gx, gt = lay.Gt(z)
        rdx = xp.einsum("bij,bj->bi", H, x) + f + gx + xp.einsum("bmk,bm->bk", Aeq, y)
        rdt = qt * t + gt
        rp = xp.einsum("bmk,bk->bm", Aeq, x) - beq
        rg = fm * (lay.G(x, t) + s - h)
        mu = xp.sum(s * z * fm, axis=1) / nrows
        res = xp.maximum(xp.max(xp.abs(rdx), axis=1), xp.max(xp.abs(rdt), axis=1))
        res = xp.maximum(res, xp.max(xp.abs(rg), axis=1))
        if m:
            res = xp.maximum(res, xp.max(xp.abs(rp), axis=1))
        done = done | ((res <= tol) & (mu <= MU_FACTOR * tol))
        if bool(xp.all(done)):
            break
        d = fm * z / s
        d3, d4 = d[:, lay.sl(2)], d[:, lay.sl(3)]
        e = d4 - d3
        phi = 1.0 / (qt + d3 + d4)
        d5 = d[:, 4 * k]
        gam = d5 / (1.0 + d5 * xp.sum(lay.mbf * phi, axis=1))
        psi = e * phi * lay.mbf
        Mx = H.copy()
        if m:
            Mx = Mx + xp.matmul(xp.swapaxes(A * (d[:, lay.sl(5)] + d[:, lay.sl(6)])[:, :, None],
                                            1, 2), A)
        # d3 + d4 - e^2 phi, written without the cancellation when d3 or d4 is huge
        ball_diag = (qt * (d3 + d4) + 4.0 * d3 * d4) * phi
        Mx[:, ik, ik] += d[:, lay.sl(0)] + d[:, lay.sl(1)] + ball_diag + REG
        Mx = Mx + gam[:, None, None] * psi[:, :, None] * psi[:, None, :]
        Mx[done | ~xp.all(xp.isfinite(Mx.reshape(B, -1)), axis=1)] = xp.eye(k)
        # symmetric diagonal scaling: the barrier terms make the diagonal span ~1e12
        sc = 1.0 / xp.sqrt(xp.maximum(Mx[:, ik, ik], 1e-300))
        Mx = Mx * sc[:, :, None] * sc[:, None, :]
        Mh, okf = _factor(Mx, ops)
        if not bool(xp.all(okf)):  # not positive definite: stop that problem (identity factor)
            failed = failed | (~okf & ~done)
            done = done | ~okf
            Mx[~okf] = xp.eye(k)
            Mh, _ok = _factor(Mx, ops)
        nt = _Newton(ops, Mh, sc, e, phi, gam, lay.mbf, Aeq,
                     Ms=Mx if ops.compact_physically else None)
        if m:
            nt.prepare_eq(eye_pad)

        def direction(rsz: Array, nt: _Newton = nt, rg: Array = rg, rdx: Array = rdx,
                      rdt: Array = rdt, rp: Array = rp, s: Array = s, z: Array = z
                      ) -> tuple[Array, Array, Array, Array, Array]:
            wx, wt = lay.Gt(fm * (rsz - z * rg) / s)
            dx, dtt, dy = nt.solve(-rdx + wx, -rdt + wt, rp)
            gdv = lay.G(dx, dtt)
            return dx, dtt, dy, fm * (-rg - gdv), fm * (-rsz + z * rg + z * gdv) / s

        dx, dtt, dy, ds, dz = direction(s * z)  # predictor (affine scaling)
        a = _max_step(s, z, ds, dz, xp)
        mu_aff = xp.sum(fm * (s + a[:, None] * ds) * (z + a[:, None] * dz), axis=1) / nrows
        sigma = (mu_aff / xp.maximum(mu, 1e-300)) ** 3
        dx, dtt, dy, ds, dz = direction(s * z + ds * dz - (sigma * mu)[:, None] * fm)
        a = xp.minimum(1.0, 0.99 * _max_step(s, z, ds, dz, xp))[:, None]
        act = ~done[:, None]
        x = x + xp.where(act, a * dx, 0.0)
        t = t + xp.where(act, a * dtt, 0.0)
        y = y + xp.where(act, a * dy, 0.0)
        s = xp.where(mask, s + xp.where(act, a * ds, 0.0), 1.0)
        z = fm * (z + xp.where(act, a * dz, 0.0))
    return {"x": x, "t": t, "y": y, "s": s, "z": z, "mask": mask, "k": k, "m": m,
            "is_eq": is_eq, "ok": done & ~failed, "iters": iters}


class _ignore:
    """``numpy.errstate(divide='ignore', invalid='ignore')`` on NumPy; nothing on CuPy."""

    def __init__(self, xp: Any) -> None:
        import numpy as np

        self._cm = np.errstate(divide="ignore", invalid="ignore") if xp is np else None

    def __enter__(self) -> None:
        if self._cm is not None:
            self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


def _classify(qp: QPBatch, st: ActiveSet, U: Array, sol: dict[str, Array], xfix: Array, xp: Any
              ) -> tuple[ActiveSet, Array, Array]:
    """Step 4: the refined active set over all coordinates, the multiplier seeds and the
    ambiguous coordinates ``(B, N)`` int8 (the bound code of a kink that is also at a bound)."""
    B, N = xfix.shape
    k, m = sol["k"], sol["m"]
    s, z = sol["s"], sol["z"]
    act = sol["mask"] & (s < z)
    ar = xp.arange(B)[:, None]
    box = st.box.copy()
    bu = xp.where(act[:, :k], 1, xp.where(act[:, k:2 * k], -1, 0))
    bu = xp.where(xp.take_along_axis(st.box, U, axis=1) == 2, 2, bu)
    box[ar, U] = bu.astype(box.dtype)
    row = st.row
    y0_rows = xp.zeros((B, m))
    if m:
        s6, s7 = slice(4 * k + 1, 4 * k + 1 + m), slice(4 * k + 1 + m, 4 * k + 1 + 2 * m)
        row = xp.where(sol["is_eq"], 2, xp.where(act[:, s6], 1, xp.where(act[:, s7], -1, 0)))
        y0_rows = xp.where(sol["is_eq"], sol["y"], z[:, s6] - z[:, s7])
    active, sign, kink = list(st.active), list(st.sign), list(st.kink)
    y0_balls = [xp.zeros((B, 1)) for _ in qp.balls]
    if qp.balls:
        ball = qp.balls[0]
        bm = ball.mask[None, :]
        a5 = act[:, 4 * k]
        up, dn = act[:, 2 * k:3 * k], act[:, 3 * k:4 * k]
        sg = xp.where(a5[:, None], xp.sign(xfix - ball.center) * bm, 0.0)
        kk = bm & a5[:, None] & (xfix == ball.center)
        sg[ar, U] = xp.where(a5[:, None], xp.where(up & dn, 0.0, xp.where(up, 1.0, xp.where(dn, -1.0, 0.0))), 0.0)
        kk[ar, U] = a5[:, None] & up & dn
        sg = sg * bm
        kk = kk & bm
        active[0], sign[0], kink[0] = a5, sg, kk
        y0_balls[0] = z[:, 4 * k:4 * k + 1]
        # a kink next to a bound (|c - bound| below what the IPM resolves): the kink wins here,
        # the bound is kept in `amb` for a second polish (see polish_alternative)
        clash = kk & ((box == 1) | (box == -1))
        amb = xp.where(clash, box, 0).astype(xp.int8)
        box = xp.where(clash, 0, box)
    else:
        amb = xp.zeros((B, N), dtype=xp.int8)
    y0 = xp.concatenate([y0_rows] + y0_balls, axis=1)
    return ActiveSet(row.astype(xp.int8), box.astype(xp.int8), active, sign, kink), y0, amb
