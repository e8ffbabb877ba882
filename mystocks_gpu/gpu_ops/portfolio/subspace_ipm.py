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
3. **Mehrotra predictor-corrector IPM** (``restricted_ipm.py``), started from ADMM's ``x``.
4. **Active set** of the result: a constraint is active where its slack is below its multiplier
   (strict complementarity separates them by orders of magnitude); ``(row, ball)`` multipliers
   seed polish's reduced KKT solve, which then proves (or not) optimality for the full problem.
   A ball's kink closer to a bound than the IPM resolves (current weight ~1e-8, lower bound 0)
   reads as both: the kink is polished first, the bound second (``polish_alternative``).
5. **Rounds**: the fixed coordinates are checked against the restricted solution's multipliers
   (the normal cone of their bound / kink); up to ``max(extra, 1)`` violators per problem join
   ``U`` and the problem is solved again, ``rounds`` solves at most.

Problems with more than one L1 ball use the first only (the others keep the guess); the result
is only a guess either way: polish's verification decides.
"""

from __future__ import annotations

from typing import Any

from mystocks_gpu.gpu_ops.portfolio.polish import ActiveSet
from mystocks_gpu.gpu_ops.portfolio.qp import QPBatch
from mystocks_gpu.gpu_ops.portfolio.restricted_ipm import solve_restricted_qp

Array = Any
GROUPS, GROUP_MIN = 4, 32  # size groups per refinement (when >= GROUP_MIN problems each)


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
    sol = solve_restricted_qp(H, f, lb, ub, c, mb, m5, r5, AU, lr, ur, is_eq, x0, max_iter, tol,
                              ops)
    xfull = xfix.copy()
    xfull[ar, U] = sol["x"]
    return sol, xfull, xfix


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
