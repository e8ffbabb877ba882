"""Batched Mehrotra predictor-corrector interior-point method for the restricted QPs of
``subspace_ipm.py`` (one array program for NumPy and CuPy; factorisations through ``ops``).

Problem per batch entry (``k`` variables ``x``, shapes ``(B, k)`` unless noted)::

    minimise    1/2 x'Hx + f'x                       H (B, k, k) positive semi-definite
    subject to  lb <= x <= ub                         (+-inf: no bound)
                sum_{i: mb_i} |x_i - c_i| <= r5       (one L1 ball, where m5)
                lr <= A x <= ur                       A (B, m, k); equalities where is_eq

The ball is split with ``t_i >= |x_i - c_i|``; all inequalities are stacked as ``G v + s = h``,
``v = (x, t)``, ``s >= 0`` with multipliers ``z >= 0`` (rows that do not exist are inert:
``s = 1, z = 0``). Each iteration solves the Newton system twice (predictor, then Mehrotra's
corrector with ``sigma = (mu_aff / mu)^3``), one common step length ``0.99 * max step``. The
Newton matrix is reduced to the Schur complement ``M`` onto ``x`` (the ``t`` block is diagonal
plus rank one, eliminated by Sherman-Morrison), diagonally scaled and factored by
``ops.factor`` (the CPU twin's numba Cholesky) or inverted explicitly with ``REFINE`` steps of
iterative refinement (the array program, as on the GPU). **Stopping rule**: a problem stops
when the largest residual of stationarity, the equalities and ``G v + s = h`` is ``<= tol``
and the mean complementarity ``s'z / rows <= MU_FACTOR * tol``, or after ``max_iter``
iterations (``ok`` False), or when its matrix is not positive definite (``ok`` False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mystocks_gpu.gpu_ops.backend import xp_errstate

Array = Any
Z_START = 0.1  # initial multipliers (scaled problem: multipliers are O(0.01..1))
S_MIN = 1e-2  # smallest initial slack
REG = 1e-12  # diagonal regularisation of the Newton matrix (LP-like subproblems: H = 0)
REFINE = 2  # iterative-refinement steps of a Newton solve by an explicit inverse (GPU)
MU_FACTOR = 1e-3  # stop at a complementarity gap tol * MU_FACTOR: slack and multiplier of
# every constraint then differ by orders of magnitude, so "slack < multiplier" is unambiguous


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
    with xp_errstate(xp, divide="ignore", invalid="ignore"):
        a_s = xp.where(ds < 0, -s / ds, xp.inf)
        a_z = xp.where(dz < 0, -z / dz, xp.inf)
    return xp.minimum(1.0, xp.minimum(xp.min(a_s, axis=1), xp.min(a_z, axis=1)))


def solve_restricted_qp(H: Array, f: Array, lb: Array, ub: Array, c: Array, mb: Array, m5: Array, r5: Array,
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
