"""GPU path of the solver's batched kernels, written once against an array module ``xp``.

With ``xp = cupy`` these are batched cuSOLVER/cuBLAS calls (``linalg.inv`` -> getrf/getri batched,
``matmul`` -> strided-batched gemm); with ``xp = numpy`` the same program runs on the CPU, which is
how the tests check it against the numba twin (``linalg_cpu.py``).

- ``factor``: the explicit inverse ``K^-1`` per problem (one batched inversion per refactorisation;
  each ADMM iteration is then one batched matrix-vector product).
- ``project_l1``: the shared array program of ``l1.py``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.l1 import project_l1

Array = Any


class XpOps:
    """The solver's kernel set as array programs on ``xp`` (``cupy`` or ``numpy``); same
    methods as :class:`~mystocks_gpu.gpu_ops.portfolio.linalg_cpu.CpuOps`. Row arguments
    gather (``a[rows]``); the solver compacts its working set physically
    (``compact_physically = True``) so the per-iteration calls pass ``None``."""

    compact_physically = True

    def __init__(self, xp: ModuleType, factor_dtype: str = "float64") -> None:
        self.xp = xp
        self.name = "gpu" if xp is not np else "xp-numpy"
        self.factor_dtype = factor_dtype

    def factor(self, K: Array) -> tuple[Array, Array]:
        """``(K^-1, ok)`` in float64; ``ok[b]`` is False where ``K[b]`` is not positive definite."""
        return self._inverse(K, "float64")

    def _inverse(self, K: Array, dtype: str) -> tuple[Array, Array]:
        xp = self.xp
        ok = self.pd_flags(K)
        Ks = xp.where(ok[:, None, None], K, xp.eye(K.shape[1])[None])  # keep inv() nonsingular
        Kinv = xp.linalg.inv(Ks)
        Kinv = 0.5 * (Kinv + xp.swapaxes(Kinv, 1, 2))
        return (Kinv if dtype == "float64" else Kinv.astype(dtype)), ok

    def kkt_factor(self, P: Array, pm: Array, prow: Array | None, d: Array, A: Array, rA: Array,
                   handle: Array | None = None, hrow: Array | None = None) -> tuple[Array, Array]:
        """Invert ``K_b = pm_b P[prow_b] + diag(d_b) + A_b' diag(rA_b) A_b`` in ``factor_dtype``,
        written into ``handle[hrow]`` (a new handle when None)."""
        xp = self.xp
        Pb = P if prow is None else P[prow]
        K = pm[:, None, None] * Pb + d[:, :, None] * xp.eye(d.shape[1])[None]
        if A.shape[1]:
            K = K + xp.matmul(xp.swapaxes(A * rA[:, :, None], 1, 2), A)
        Kinv, ok = self._inverse(K, self.factor_dtype)
        if handle is None:
            return Kinv, ok
        rows = xp.arange(d.shape[0]) if hrow is None else hrow
        keep = xp.nonzero(ok)[0]
        handle[rows[keep]] = Kinv[keep]
        return handle, ok

    def solve(self, handle: Array, rhs: Array, hrow: Array | None = None) -> Array:
        H = handle if hrow is None else handle[hrow]
        out = self.xp.matmul(H, rhs.astype(H.dtype)[:, :, None])[:, :, 0]
        return out.astype(rhs.dtype)

    def solve_multi(self, handle: Array, R: Array) -> Array:
        """``K^-1 R`` for ``R (B, N, k)``."""
        return self.xp.matmul(handle, R)

    def matvec(self, P: Array, x: Array, prow: Array | None = None) -> Array:
        Pb = P if prow is None else P[prow]
        return self.xp.matmul(Pb, x[:, :, None])[:, :, 0]

    def project_l1(self, v: Array, mask: Array, r: Array) -> Array:
        return project_l1(self.xp, v, mask, r)

    def kkt_reduced(self, P: Array, prow: Array, pm: Array, q: Array, free: Array, xfix: Array,
                    E: Array, e_rhs: Array, e_act: Array, y0: Array, delta: float, refine: int
                    ) -> tuple[Array, Array, Array]:
        """Polish's reduced KKT solve (``polish.py`` step 2) as one padded array program: free
        variables and active rows are compacted to the front (``kmax``/``rmax`` = the batch's
        largest counts; padding is an identity block), then the Schur complement."""
        xp = self.xp
        B, N = q.shape
        n_e = E.shape[1]
        nf = xp.sum(free, axis=1)
        kmax = max(int(xp.max(nf)) if B else 0, 1)
        fidx = xp.argsort(~free, axis=1)[:, :kmax]
        fvalid = xp.arange(kmax)[None, :] < nf[:, None]
        na = xp.sum(e_act, axis=1) if n_e else xp.zeros(B, dtype=int)
        rmax = int(xp.max(na)) if (B and n_e) else 0
        ridx = xp.argsort(~e_act, axis=1)[:, :rmax] if n_e else xp.zeros((B, 0), dtype=int)
        rvalid = xp.arange(rmax)[None, :] < na[:, None]
        g0 = q + self.matvec(P, xfix, prow) * pm[:, None]
        PF = P[prow[:, None, None], fidx[:, :, None], fidx[:, None, :]] * pm[:, None, None]
        eye = xp.eye(kmax)[None]
        PF = xp.where(fvalid[:, :, None] & fvalid[:, None, :], PF, 0.0) + eye * (~fvalid)[:, :, None]
        gF = xp.where(fvalid, xp.take_along_axis(g0, fidx, axis=1), 0.0)
        if rmax:
            Es = xp.take_along_axis(E, ridx[:, :, None], axis=1)
            EF = xp.take_along_axis(Es, fidx[:, None, :], axis=2)
            EF = EF * (rvalid[:, :, None] & fvalid[:, None, :])
            bE = xp.take_along_axis(e_rhs, ridx, axis=1) - xp.einsum("brn,bn->br", Es, xfix)
            bE = xp.where(rvalid, bE, 0.0)
        else:
            EF, bE = xp.zeros((B, 0, kmax)), xp.zeros((B, 0))
        Hh, ok = self.factor(PF + delta * eye)
        HiE = xp.matmul(Hh, xp.swapaxes(EF, 1, 2))
        if rmax:
            Sh, okS = self.factor(xp.matmul(EF, HiE) + delta * xp.eye(rmax)[None])
            ok = ok & okS

        def kkt_solve(r1: Array, r2: Array) -> tuple[Array, Array]:
            h1 = self.solve(Hh, r1)
            if not rmax:
                return h1, xp.zeros((B, 0))
            y = self.solve(Sh, xp.einsum("brk,bk->br", EF, h1) - r2)
            return h1 - xp.einsum("bkr,br->bk", HiE, y), y

        xF = xp.zeros((B, kmax))
        y = xp.where(rvalid, xp.take_along_axis(y0, ridx, axis=1), 0.0) if rmax else xp.zeros((B, 0))
        for _ in range(refine + 1):  # from (0, y0), refine against the unregularised system
            e1 = -gF - self.matvec(PF, xF) - xp.einsum("brk,br->bk", EF, y)
            e2 = bE - xp.einsum("brk,bk->br", EF, xF)
            dx, dy = kkt_solve(e1, e2)
            xF, y = xF + dx, y + dy
        ar = xp.arange(B)[:, None]
        x = xfix.copy()
        x[ar, fidx] = xp.where(fvalid, xF, x[ar, fidx])  # fidx rows are distinct: no write races
        y_full = xp.zeros((B, n_e))
        if rmax:
            y_full[ar, ridx] = xp.where(rvalid, y, 0.0)
        return x, y_full, ok

    def pd_scan(self, C: Array, shift: Array) -> tuple[Array, Array, Array]:
        """Per matrix: ``(all finite, max|C - C'|, C - shift I positive definite)``."""
        xp = self.xp
        B, n = C.shape[0], C.shape[1]
        fin = xp.all(xp.isfinite(C.reshape(B, -1)), axis=1)
        Cz = xp.where(fin[:, None, None], C, 0.0)
        asym = xp.max(xp.abs(Cz - xp.swapaxes(Cz, 1, 2)).reshape(B, -1), axis=1)
        M = xp.where(fin[:, None, None], Cz - shift[:, None, None] * xp.eye(n)[None], xp.eye(n)[None])
        return fin, asym, self.pd_flags(M) & fin

    def pd_flags(self, M: Array) -> Array:
        """True per problem where ``M[b]`` is positive definite (its Cholesky is finite)."""
        xp = self.xp
        if xp is np:
            try:
                np.linalg.cholesky(M)
                return np.ones(M.shape[0], dtype=bool)
            except np.linalg.LinAlgError:
                out = np.empty(M.shape[0], dtype=bool)
                for b in range(M.shape[0]):
                    try:
                        np.linalg.cholesky(M[b])
                        out[b] = True
                    except np.linalg.LinAlgError:
                        out[b] = False
                return out
        # cuSOLVER potrfBatched leaves an unusable factor (not always NaN) where a pivot fails:
        # accept a factor only if it is finite and reproduces M.
        L = xp.tril(xp.linalg.cholesky(M))
        scale = xp.max(xp.abs(xp.diagonal(M, axis1=1, axis2=2)), axis=1)
        err = xp.max(xp.abs(xp.matmul(L, xp.swapaxes(L, 1, 2)) - M).reshape(M.shape[0], -1), axis=1)
        finite = xp.all(xp.isfinite(L.reshape(L.shape[0], -1)), axis=1)
        return finite & (err <= 1e-9 * M.shape[1] * scale)
