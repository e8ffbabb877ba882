"""Batched ADMM (OSQP's splitting) for :class:`~mystocks_gpu.gpu_ops.portfolio.qp.QPBatch`.

All ``B`` problems advance together as array programs. With ``z`` the constraint copies (rows
``A x``, the variables for the bounds, ``x - c`` for each L1 ball) and ``y`` their multipliers, one
iteration is (``R`` = per-row step sizes, ``a`` = ``alpha``)::

    x~ = (P + sigma I + A'RA + R_box + sum_k R_k)^-1 (sigma x - q + A'(R zA - yA) + ...)
    v  = a * (A x~) + (1 - a) * z          (per block)
    z  = Proj_C(v + y / R)                 (clip to [l, u] / [lb, ub]; L1-ball projection)
    y  = y + R (v - z);   x = a * x~ + (1 - a) * x

Step sizes: ``R = rho`` on rows with a finite bound (``1e3 * rho`` on equalities,
``ball_rho_factor * rho`` on the copies of an L1 ball, ``1e-6`` on free rows), per problem; the initial
``rho`` is ``cfg.rho``, or ``cfg.rho_quadratic`` for a problem with ``q = 0``. **Stopping rule** (checked every ``check_every`` iterations, scaled
problem, inf-norms): ``r_prim = max|A x - z| <= eps_abs + eps_rel * max(|A x|, |z|)`` and
``r_dual = |P x + q + A'y| <= eps_abs + eps_rel * max(|P x|, |A'y|, |q|)``. **Infeasibility**:
with ``dy = y_k - y_k-1`` normalised to unit inf-norm, ``|A'dy| <= eps_prim_inf`` and the support
function of the constraint set at ``dy`` ``< -eps_prim_inf`` prove primal infeasibility; the
blocks where ``dy`` is non-zero are the conflicting constraints. **Adaptive rho**: every
``adaptive_rho_interval`` iterations ``rho *= sqrt((r_prim / |prim scale|) / (r_dual / |dual
scale|))``, applied (one refactorisation of that problem) when it changes by more than
``adaptive_rho_tolerance``x. **Polish** (``polish.py``) is tried at checks once both residuals
are below ``polish_from`` (and only when the active-set guess changed since the last try); a
verified polish ends the problem (``optimal``). Where polish from ADMM's own guess fails and
``ipm_refine`` is on, ``subspace_ipm.py`` solves the problem restricted to its uncertain
coordinates exactly and polish runs again from that solution's active set (for a problem
whose refinement failed, the next refinement waits until it has run twice the iterations).
A problem that meets the stopping rule ends
``converged`` when polish is off; with polish on ADMM continues (its active-set guess keeps
sharpening) and the problem ends ``converged`` only if ``max_iter`` comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mystocks_gpu.gpu_ops.backend import xp_errstate
from mystocks_gpu.gpu_ops.portfolio import solve_status as S
from mystocks_gpu.gpu_ops.portfolio.config import SolverConfig
from mystocks_gpu.gpu_ops.portfolio.polish import guess_active_set, polish
from mystocks_gpu.gpu_ops.portfolio.qp import QPBatch, array_module
from mystocks_gpu.gpu_ops.portfolio.subspace_ipm import polish_alternative, refine_active_set

Array = Any
RHO_MIN, RHO_MAX, RHO_FREE, EQ_FACTOR = 1e-6, 1e6, 1e-6, 1e3


@dataclass
class AdmmOutput:
    """Per problem: ``x (B, N)`` (NaN where no weights), ``status (B,)`` int codes of
    :mod:`status`, ``iterations (B,)``, ``conflicts`` (names of the constraint blocks in an
    infeasibility certificate, else ``()``)."""

    x: Array
    status: Array
    iterations: Array
    conflicts: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class _Work:
    """The ADMM state of the problems still running (``idx`` = their batch indices). ``qp``
    holds the per-problem vectors of the working set but shares the full ``P``; ``prow`` /
    ``hrow`` address ``qp.P`` and the factor ``handle`` (None = aligned with the working set,
    after a physical compaction)."""

    idx: Array
    qp: QPBatch
    prow: Array | None
    handle: Array
    hrow: Array | None
    x: Array
    zA: Array
    yA: Array
    zb: Array
    yb: Array
    d: list[Array]
    yk: list[Array]
    rho: Array
    it: Array
    last_rho_it: int = 0
    steps: tuple[Array, Array, list[Array]] | None = None  # cached _step_sizes(qp, rho)
    prim_rel: Array | None = None  # relative residuals of the last check
    dual_rel: Array | None = None
    last_guess: Array | None = None  # active-set code of the last polish attempt (B, L) int8
    next_refine: Array | None = None  # (B,) iteration from which the subspace IPM may run again

    def take(self, sel: Array, physical: bool) -> _Work:
        """The sub-state at working-set positions ``sel``; ``physical`` gathers ``P`` and the
        factor (GPU), otherwise only their row indices move (CPU)."""
        xp = array_module(self.x)
        rows_p = xp.arange(self.x.shape[0]) if self.prow is None else self.prow
        rows_h = xp.arange(self.x.shape[0]) if self.hrow is None else self.hrow
        if physical:
            qp = replace(self.qp.take(sel, with_p=False), P=self.qp.P[rows_p[sel]])
            prow, handle, hrow = None, self.handle[rows_h[sel]], None
        else:
            qp = self.qp.take(sel, with_p=False)
            prow, handle, hrow = rows_p[sel], self.handle, rows_h[sel]
        steps = None
        if self.steps is not None:
            steps = (self.steps[0][sel], self.steps[1][sel], [r[sel] for r in self.steps[2]])
        opt = lambda a: None if a is None else a[sel]  # noqa: E731
        return _Work(self.idx[sel], qp, prow, handle, hrow, self.x[sel], self.zA[sel],
                     self.yA[sel], self.zb[sel], self.yb[sel], [a[sel] for a in self.d],
                     [a[sel] for a in self.yk], self.rho[sel], self.it[sel], self.last_rho_it,
                     steps, opt(self.prim_rel), opt(self.dual_rel), opt(self.last_guess),
                     opt(self.next_refine))


def _step_sizes(qp: QPBatch, rho: Array, xp: Any, ball_factor: float
                ) -> tuple[Array, Array, list[Array]]:
    """``(R_rows (B, m), R_box (B, N), [R_ball_k (B, 1)])`` for per-problem ``rho (B,)``;
    L1 balls get ``ball_factor * rho``."""
    r = rho[:, None]
    bounded = xp.isfinite(qp.l) | xp.isfinite(qp.u)
    rA = xp.where(qp.l == qp.u, EQ_FACTOR * r, xp.where(bounded, r, RHO_FREE))
    rb = xp.where(xp.isfinite(qp.lb) | xp.isfinite(qp.ub), r, RHO_FREE)
    rk = [xp.where(xp.isfinite(b.radius)[:, None], ball_factor * r, RHO_FREE) for b in qp.balls]
    return rA, rb, rk


def _kkt_diag(qp: QPBatch, steps: tuple[Array, Array, list[Array]], sigma: float) -> Array:
    """The diagonal part ``sigma + R_box + sum_k R_k mask_k`` of ADMM's matrix ``(B, N)``."""
    _rA, rb, rk = steps
    diag = sigma + rb
    for ball, r in zip(qp.balls, rk, strict=True):
        diag = diag + r * ball.mask[None, :]
    return diag


def _norm(a: Array, xp: Any) -> Array:
    return xp.max(xp.abs(a), axis=1) if a.shape[1] else xp.zeros(a.shape[0])


def _conflict_names(qp: QPBatch, dyA: Array, dyb: Array, dyk: list[Array], xp: Any
                    ) -> list[tuple[str, ...]]:
    scale = xp.maximum(_norm(dyA, xp), _norm(dyb, xp))
    for d in dyk:
        scale = xp.maximum(scale, _norm(d, xp))
    thr = 1e-3 * scale[:, None]
    cols: list[Array] = [xp.abs(dyA) > thr] if qp.n_rows else []
    names: list[str] = list(qp.row_names)
    cols.append(xp.any(xp.abs(dyb) > thr, axis=1)[:, None])
    names.append("asset bounds")
    for ball, d in zip(qp.balls, dyk, strict=True):
        cols.append(xp.any(xp.abs(d) > thr, axis=1)[:, None])
        names.append(ball.name)
    hit = xp.concatenate(cols, axis=1)
    hit_h = hit.get() if hasattr(hit, "get") else hit
    return [tuple(n for n, h in zip(names, row, strict=True) if h) for row in hit_h]


def run_admm(qp: QPBatch, cfg: SolverConfig, ops: Any,
             should_stop: Callable[[], bool] | None = None) -> AdmmOutput:
    """Solve the scaled batch ``qp`` (see module docstring)."""
    xp = ops.xp
    B, N = qp.q.shape
    m = qp.n_rows
    out = AdmmOutput(xp.full((B, N), xp.nan), xp.zeros(B, dtype=xp.int8),
                     xp.zeros(B, dtype=xp.int64), [() for _ in range(B)])
    if B == 0:
        return out
    rho = xp.full(B, float(cfg.rho))
    if cfg.rho_quadratic is not None:  # no linear term (min-variance and the like)
        rho = xp.where(xp.all(qp.q == 0, axis=1), float(cfg.rho_quadratic), rho)
    steps = _step_sizes(qp, rho, xp, cfg.ball_rho_factor)
    handle, ok = ops.kkt_factor(qp.P, qp.pm(), None, _kkt_diag(qp, steps, cfg.sigma), qp.A,
                                steps[0])
    w = _Work(xp.arange(B), qp, None, handle, None, xp.zeros((B, N)),
              xp.clip(xp.zeros((B, m)), qp.l, qp.u), xp.zeros((B, m)),
              xp.clip(xp.zeros((B, N)), qp.lb, qp.ub), xp.zeros((B, N)),
              [xp.zeros((B, N)) for _ in qp.balls], [xp.zeros((B, N)) for _ in qp.balls],
              rho, xp.zeros(B, dtype=xp.int64), steps=steps)
    physical = bool(ops.compact_physically)
    if not bool(xp.all(ok)):
        bad = xp.nonzero(~ok)[0]
        out.status[bad] = S.NUMERICAL
        w = w.take(xp.nonzero(ok)[0], physical)
    a = cfg.alpha
    it = 0
    while w.idx.shape[0]:
        it += 1
        q = w.qp
        if w.steps is None:
            w.steps = _step_sizes(q, w.rho, xp, cfg.ball_rho_factor)
        rA, rb, rk = w.steps
        check = it % cfg.check_every == 0 or it >= cfg.max_iter
        if check:
            prev = (w.yA.copy(), w.yb.copy(), [y.copy() for y in w.yk])
        rhs = cfg.sigma * w.x - q.q + rb * w.zb - w.yb
        if m:
            rhs = rhs + xp.einsum("bmn,bm->bn", q.A, rA * w.zA - w.yA)
        for ball, r, dk, y in zip(q.balls, rk, w.d, w.yk, strict=True):
            rhs = rhs + ball.mask[None, :] * (r * (ball.center + dk) - y)
        xt = ops.solve(w.handle, rhs, w.hrow)
        if m:
            v = a * xp.einsum("bmn,bn->bm", q.A, xt) + (1 - a) * w.zA
            zn = xp.clip(v + w.yA / rA, q.l, q.u)
            w.yA = w.yA + rA * (v - zn)
            w.zA = zn
        v = a * xt + (1 - a) * w.zb
        zn = xp.clip(v + w.yb / rb, q.lb, q.ub)
        w.yb = w.yb + rb * (v - zn)
        w.zb = zn
        for k, (ball, r) in enumerate(zip(q.balls, rk, strict=True)):
            msk = ball.mask[None, :]
            v = a * xt + (1 - a) * (ball.center + w.d[k]) - ball.center
            dn = ops.project_l1(v + w.yk[k] / r, ball.mask, ball.radius)
            w.yk[k] = w.yk[k] + r * (v - dn) * msk
            w.d[k] = dn
        w.x = a * xt + (1 - a) * w.x
        w.it = w.it + 1
        if not check:
            continue
        done = _check(w, prev, cfg, ops, out, it)
        if should_stop is not None and should_stop():
            rest = w.idx[~done]
            out.status[rest] = S.CANCELLED
            out.iterations[rest] = w.it[~done]
            break
        if bool(xp.any(done)):
            w = w.take(xp.nonzero(~done)[0], physical)
        if (cfg.adaptive_rho and w.idx.shape[0]
                and it - w.last_rho_it >= cfg.adaptive_rho_interval):
            _adapt_rho(w, cfg, ops, it)
    return out


def _check(w: _Work, prev: tuple[Array, Array, list[Array]], cfg: SolverConfig, ops: Any,
           out: AdmmOutput, it: int) -> Array:
    """Termination, infeasibility and polish checks; writes finished problems into ``out`` and
    returns their mask over the working set."""
    xp = ops.xp
    q = w.qp
    m = q.n_rows
    Px = ops.matvec(q.P, w.x, w.prow) * q.pm()[:, None]
    aty = w.yb.copy()
    prim = _norm(w.x - w.zb, xp)
    pscale = xp.maximum(_norm(w.x, xp), _norm(w.zb, xp))
    if m:
        ax = xp.einsum("bmn,bn->bm", q.A, w.x)
        aty = aty + xp.einsum("bmn,bm->bn", q.A, w.yA)
        prim = xp.maximum(prim, _norm(ax - w.zA, xp))
        pscale = xp.maximum(pscale, xp.maximum(_norm(ax, xp), _norm(w.zA, xp)))
    for ball, dk, y in zip(q.balls, w.d, w.yk, strict=True):
        aty = aty + y
        prim = xp.maximum(prim, _norm((w.x - ball.center - dk) * ball.mask[None, :], xp))
    dual = _norm(Px + q.q + aty, xp)
    dscale = xp.maximum(xp.maximum(_norm(Px, xp), _norm(aty, xp)), _norm(q.q, xp))
    conv = (prim <= cfg.eps_abs + cfg.eps_rel * pscale) & (dual <= cfg.eps_abs + cfg.eps_rel * dscale)
    w.prim_rel = prim / xp.maximum(pscale, 1e-30)
    w.dual_rel = dual / xp.maximum(dscale, 1e-30)

    # primal infeasibility certificate
    dyA, dyb = w.yA - prev[0], w.yb - prev[1]
    dyk = [y - p for y, p in zip(w.yk, prev[2], strict=True)]
    ndy = xp.maximum(_norm(dyA, xp), _norm(dyb, xp))
    for d in dyk:
        ndy = xp.maximum(ndy, _norm(d, xp))
    inv = 1.0 / xp.maximum(ndy, 1e-300)
    atdy = dyb.copy()
    with xp_errstate(xp, invalid="ignore", over="ignore"):
        supp = _support(dyb, q.lb, q.ub, xp)
        if m:
            atdy = atdy + xp.einsum("bmn,bm->bn", q.A, dyA)
            supp = supp + _support(dyA, q.l, q.u, xp)
        for ball, d in zip(q.balls, dyk, strict=True):
            atdy = atdy + d
            nd = _norm(d, xp)
            rad = xp.where(nd > 0, ball.radius * nd, 0.0)
            supp = supp + xp.sum(ball.center * d, axis=1) + rad
    infeas = (ndy > 1e-30) & (_norm(atdy, xp) * inv <= cfg.eps_prim_inf) & \
        (supp * inv < -cfg.eps_prim_inf) & ~conv

    done = infeas.copy()
    # polish
    polished = xp.zeros_like(conv)
    if cfg.polish:
        cand = ~infeas & (conv | ((prim <= cfg.polish_from) & (dual <= cfg.polish_from)))
        ci = xp.nonzero(cand)[0]
        if ci.shape[0]:
            sub = w.take(ci, physical=False)
            st = guess_active_set(sub.qp, sub.zA, sub.yA, sub.zb, sub.yb, sub.d, sub.yk, xp)
            # polish is deterministic in the active set: skip problems whose guess has not
            # changed since their last failed attempt
            code = _guess_code(st, xp)
            if w.last_guess is None or w.last_guess.shape[1] != code.shape[1]:
                w.last_guess = xp.full((w.idx.shape[0], code.shape[1]), -128, dtype=xp.int8)
            new = xp.any(code != w.last_guess[ci], axis=1) | conv[ci]
            w.last_guess[ci] = code
            ci = ci[new]
            keep = xp.nonzero(new)[0]
            sub, st = sub.take(keep, physical=False), st.take(keep)
        if ci.shape[0]:
            prow = sub.prow if sub.prow is not None else xp.arange(sub.x.shape[0])
            y0 = xp.concatenate([sub.yA] + [xp.max(xp.abs(y), axis=1)[:, None] for y in sub.yk],
                                axis=1)
            okp, xpol = polish(sub.qp, prow, st, y0, cfg, ops)
            if cfg.ipm_refine and not bool(xp.all(okp)):
                if w.next_refine is None:
                    w.next_refine = xp.zeros(w.idx.shape[0], dtype=xp.int64)
                due = ~okp & (sub.it >= w.next_refine[ci])
                if bool(xp.any(due)):
                    okp, xpol = _refined_polish(sub, prow, st, due, okp, xpol, cfg, ops)
                    failed = due & ~okp  # back off: next try at twice this iteration count
                    w.next_refine[ci[failed]] = 2 * sub.it[failed]
            good = ci[okp]
            polished[good] = True
            out.x[w.idx[good]] = xpol[okp]
            out.status[w.idx[good]] = S.OPTIMAL
    # converged but not polished: done when polish is off; otherwise ADMM goes on (tighter
    # iterates sharpen the active-set guess) and the problem ends "converged" only at max_iter
    conv_only = conv & ~polished & (not cfg.polish)
    out.x[w.idx[conv_only]] = w.x[conv_only]
    out.status[w.idx[conv_only]] = S.CONVERGED
    out.status[w.idx[infeas]] = S.INFEASIBLE
    if bool(xp.any(infeas)):
        ii = xp.nonzero(infeas)[0]
        names = _conflict_names(q.take(ii), dyA[ii], dyb[ii], [d[ii] for d in dyk], xp)
        for j, nm in zip((ii.get() if hasattr(ii, "get") else ii).tolist(), names, strict=True):
            out.conflicts[int(w.idx[j])] = nm
    done = done | polished | conv_only
    limit = ~done & (w.it >= cfg.max_iter)
    out.x[w.idx[limit]] = w.x[limit]
    out.status[w.idx[limit]] = xp.where(conv[limit], S.CONVERGED, S.MAX_ITER)
    done = done | limit
    out.iterations[w.idx[done]] = w.it[done]
    return done


def _refined_polish(sub: _Work, prow: Array, st: Any, due: Array, okp: Array, xpol: Array,
                    cfg: SolverConfig, ops: Any) -> tuple[Array, Array]:
    """Polish again, from the active set of ``subspace_ipm.refine_active_set``, the candidates
    ``due`` (their polish from ADMM's own guess failed); returns ``(ok, x)`` over all
    candidates."""
    xp = ops.xp
    bad = xp.nonzero(due)[0]
    s2 = sub.take(bad, physical=False)
    p2 = prow[bad]
    st2, y02, amb = refine_active_set(s2.qp, p2, st.take(bad), s2.x, s2.zb, s2.yb, s2.yk,
                                      cfg.ipm_extra, cfg.ipm_max_iter, cfg.ipm_rounds,
                                      cfg.polish_tol, ops)
    ok2, x2 = polish(s2.qp, p2, st2, y02, cfg, ops)
    alt = ~ok2 & xp.any(amb != 0, axis=1)  # a kink next to a bound: try the bound instead
    if bool(xp.any(alt)):
        ai = xp.nonzero(alt)[0]
        ok3, x3 = polish(s2.qp.take(ai, with_p=False), p2[ai],
                         polish_alternative(st2, amb, xp).take(ai), y02[ai], cfg, ops)
        ok2[ai], x2[ai] = ok3, x3
    okp, xpol = okp.copy(), xpol.copy()
    okp[bad] = ok2
    xpol[bad] = x2
    return okp, xpol


def _guess_code(st: Any, xp: Any) -> Array:
    """The active set as one int8 row per problem (for change detection)."""
    parts = [st.row, st.box]
    for a, sg, k in zip(st.active, st.sign, st.kink, strict=True):
        parts += [a[:, None].astype(xp.int8), (sg + 3 * k).astype(xp.int8)]
    return xp.concatenate([p.astype(xp.int8) for p in parts], axis=1)


def _support(dy: Array, lo: Array, hi: Array, xp: Any) -> Array:
    """Support function of the box ``[lo, hi]`` at ``dy`` (per problem; +inf when unbounded)."""
    pos = xp.where(dy > 0, hi * xp.where(dy > 0, dy, 0.0), 0.0)
    neg = xp.where(dy < 0, lo * xp.where(dy < 0, dy, 0.0), 0.0)
    return xp.sum(pos + neg, axis=1)


def _adapt_rho(w: _Work, cfg: SolverConfig, ops: Any, it: int) -> None:
    xp = ops.xp
    w.last_rho_it = it
    assert w.prim_rel is not None and w.dual_rel is not None
    ratio = xp.sqrt(w.prim_rel / xp.maximum(w.dual_rel, 1e-30))
    new = xp.clip(w.rho * ratio, RHO_MIN, RHO_MAX)
    tol = cfg.adaptive_rho_tolerance
    change = xp.isfinite(new) & ((new > w.rho * tol) | (new < w.rho / tol))
    ci = xp.nonzero(change)[0]
    if not ci.shape[0]:
        return
    sub = w.qp.take(ci, with_p=False)
    steps = _step_sizes(sub, new[ci], xp, cfg.ball_rho_factor)
    prow = ci if w.prow is None else w.prow[ci]
    hrow = ci if w.hrow is None else w.hrow[ci]
    # K is positive definite for PSD P (sigma > 0); where a factor fails the old rho is kept
    w.handle, ok = ops.kkt_factor(w.qp.P, sub.pm(), prow,
                                  _kkt_diag(sub, steps, cfg.sigma), sub.A, steps[0],
                                  w.handle, hrow)
    keep = ci[ok]
    w.rho[keep] = new[keep]
    w.steps = None
