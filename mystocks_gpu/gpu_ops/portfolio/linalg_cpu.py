"""CPU twin of the solver's batched linear algebra: ``nogil`` numba loops over problems, run
on one slice of the batch per CPU thread (plain ``njit`` compiles far faster than ``prange``).

- :func:`kkt_chol_batch`: forms ``K = pm P + diag(d) + A' diag(rA) A`` per problem in a local
  buffer and factors it (Cholesky-Banachiewicz, row-oriented so the inner dot products read
  contiguous rows and vectorise), with a per-problem flag that is False when a pivot is not
  positive (not positive definite). Every factorisation of the package goes through it.
- :func:`chol_solve_batch`: ``x = K^-1 b`` by forward then column-oriented back substitution;
  ``L`` may be float32 (products accumulate in float64).
- :func:`kkt_reduced_batch`: the polish step's reduced KKT solve, per problem without padding.
- :func:`matvec_batch`: ``P x`` per problem.

The GPU path (``linalg_xp.py``) reaches the same results with array programs: an explicit
inverse and batched matmuls, and a padded reduced KKT solve.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numba import njit

from mystocks_gpu.gpu_ops.portfolio.l1 import project_l1


@njit(cache=True, nogil=True)
def kkt_chol_batch(lo: int, hi: int, P: np.ndarray, pm: np.ndarray, prow: np.ndarray,
                   d: np.ndarray, A: np.ndarray, rA: np.ndarray, L: np.ndarray, lrow: np.ndarray,
                   ok: np.ndarray) -> None:  # pragma: no cover - numba
    """For each ``b``: ``K = pm_b P[prow_b] + diag(d_b) + A_b' diag(rA_b) A_b`` (formed in a
    local buffer, ``P`` is only read) and its Cholesky factor into ``L[lrow_b]`` (any float
    dtype); ``ok[b]`` False where ``K`` is not positive definite."""
    for b in range(lo, hi):
        ok[b] = _kkt_chol_one(P[prow[b]], pm[b], d[b], A[b], rA[b], L[lrow[b]])


@njit(cache=True, fastmath=True)
def _kkt_chol_one(Pb: np.ndarray, pm: float, d: np.ndarray, A: np.ndarray, rA: np.ndarray,
                  out: np.ndarray) -> bool:  # pragma: no cover - numba
    N, m = d.shape[0], A.shape[0]
    K = np.empty((N, N))
    for i in range(N):
        for j in range(N):
            K[i, j] = pm * Pb[i, j]
        K[i, i] += d[i]
    for r in range(m):
        w = rA[r]
        Ar = A[r]
        for i in range(N):
            ai = w * Ar[i]
            if ai != 0.0:
                for j in range(N):
                    K[i, j] += ai * Ar[j]
    W = np.empty((N, N))
    good = _chol_one(K, W, 0.0)
    if good:
        for i in range(N):
            for j in range(N):
                out[i, j] = W[i, j]
    return good


@njit(cache=True, fastmath=True)
def _chol_one(Kb: np.ndarray, out: np.ndarray, shift: float) -> bool:  # pragma: no cover - numba
    """Cholesky of ``Kb - shift I`` into ``out``; False if a pivot is not positive. A local
    buffer keeps the inner dot products free of aliasing (so they vectorise)."""
    N = Kb.shape[0]
    W = np.zeros((N, N))
    for i in range(N):
        Wi = W[i]
        for j in range(i + 1):
            Wj = W[j]
            s = Kb[i, j]
            for k in range(j):
                s -= Wi[k] * Wj[k]
            if i == j:
                s -= shift
                if not s > 0.0:
                    return False
                Wi[i] = math.sqrt(s)
            else:
                Wi[j] = s / Wj[j]
    out[:, :] = W
    return True


@njit(cache=True, nogil=True)
def chol_solve_batch(lo: int, hi: int, L: np.ndarray, lrow: np.ndarray, rhs: np.ndarray,
                     out: np.ndarray) -> None:  # pragma: no cover
    """``out[b] = (L L')^-1 rhs[b]`` with ``L = L[lrow_b]`` lower-triangular, ``rhs (B, N)``."""
    N = rhs.shape[1]
    for b in range(lo, hi):
        _tri_solve(L[lrow[b]], N, rhs[b], out[b])


@njit(cache=True, nogil=True, fastmath=True)
def matvec_batch(lo: int, hi: int, P: np.ndarray, prow: np.ndarray, x: np.ndarray,
                 out: np.ndarray) -> None:  # pragma: no cover - numba
    """``out[b] = P[prow_b] @ x[b]``."""
    N = x.shape[1]
    for b in range(lo, hi):
        Pb = P[prow[b]]
        xb = x[b].copy()
        o = np.empty(N)
        for i in range(N):
            Pi = Pb[i]
            s = 0.0
            for j in range(N):
                s += Pi[j] * xb[j]
            o[i] = s
        out[b] = o


@njit(cache=True, fastmath=True)
def _tri_solve(L: np.ndarray, n: int, rhs: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out = (L L')^-1 rhs`` for the leading ``n x n`` block of ``L`` (``L`` may be float32;
    a local float64 buffer keeps the loops free of aliasing)."""
    y = np.empty(n)
    for i in range(n):
        s = rhs[i]
        Li = L[i]
        for k in range(i):
            s -= Li[k] * y[k]
        y[i] = s / Li[i]
    for j in range(n - 1, -1, -1):
        Lj = L[j]
        yj = y[j] / Lj[j]
        y[j] = yj
        for i in range(j):
            y[i] -= Lj[i] * yj
    out[:n] = y


@njit(cache=True, nogil=True)
def kkt_reduced_batch(lo: int, hi: int, P: np.ndarray, prow: np.ndarray, pm: np.ndarray,
                      q: np.ndarray,
                      free: np.ndarray, xfix: np.ndarray, E: np.ndarray, e_rhs: np.ndarray,
                      e_act: np.ndarray, y0: np.ndarray, delta: float, refine: int,
                      x_out: np.ndarray, y_out: np.ndarray, ok: np.ndarray) -> None:  # pragma: no cover - numba
    """Polish's reduced KKT solve per problem, with no padding (see ``polish.py`` step 2):
    ``[H, EF'; EF, -dI] [x_F; y] = [-q_F - pm P_FX x_X; b - E_X x_X]``, ``H = pm P_FF + dI``,
    by the Schur complement ``S = EF H^-1 EF' + dI`` and ``refine`` refinement steps against
    the unregularised system, started from the multiplier estimates ``y0`` (so multipliers the
    equations leave undetermined, e.g. at a vertex with no free variable, keep ADMM's values)."""
    for b in range(lo, hi):
        ok[b] = _kkt_reduced_one(P[prow[b]], pm[b], q[b], free[b], xfix[b], E[b], e_rhs[b],
                                 e_act[b], y0[b], delta, refine, x_out[b], y_out[b])


@njit(cache=True, fastmath=True)
def _kkt_reduced_one(Pb: np.ndarray, pmb: float, qb: np.ndarray, freeb: np.ndarray,
                     xfixb: np.ndarray, Eb: np.ndarray, e_rhsb: np.ndarray, e_actb: np.ndarray,
                     y0b: np.ndarray, delta: float, refine: int, x_out: np.ndarray,
                     y_out: np.ndarray
                     ) -> bool:  # pragma: no cover - numba
    N, ne = qb.shape[0], Eb.shape[0]
    F = np.nonzero(freeb)[0]
    R = np.nonzero(e_actb)[0]
    k, r = F.shape[0], R.shape[0]
    H = np.empty((k, k))
    g = np.empty(k)
    for ii in range(k):
        i = F[ii]
        s = 0.0
        for j in range(N):
            s += Pb[i, j] * xfixb[j]
        g[ii] = qb[i] + pmb * s
        for jj in range(k):
            H[ii, jj] = pmb * Pb[i, F[jj]]
    EF = np.empty((r, k))
    bE = np.empty(r)
    for rr in range(r):
        row = Eb[R[rr]]
        s = 0.0
        for j in range(N):
            s += row[j] * xfixb[j]
        bE[rr] = e_rhsb[R[rr]] - s
        for jj in range(k):
            EF[rr, jj] = row[F[jj]]
    Hd = H.copy()
    for ii in range(k):
        Hd[ii, ii] += delta
    LH = np.empty((k, k))
    good = _chol_one(Hd, LH, 0.0)
    HiE = np.empty((r, k))  # row rr = H^-1 EF[rr]
    S = np.empty((r, r))
    LS = np.empty((r, r))
    if good:
        for rr in range(r):
            _tri_solve(LH, k, EF[rr], HiE[rr])
        for a in range(r):
            for c in range(r):
                s = 0.0
                for jj in range(k):
                    s += EF[a, jj] * HiE[c, jj]
                S[a, c] = s + (delta if a == c else 0.0)
        if r > 0:
            good = _chol_one(S, LS, 0.0)
    if not good:
        for i in range(N):
            x_out[i] = np.nan
        return False
    x = np.zeros(k)
    y = np.empty(r)
    for rr in range(r):
        y[rr] = y0b[R[rr]]
    h1 = np.empty(k)
    t2 = np.empty(r)
    dy = np.empty(r)
    e1 = np.empty(k)
    e2 = np.empty(r)
    for _step in range(refine + 1):
        # residual of the unregularised system (the right-hand side itself at step 0)
        for jj in range(k):
            s = -g[jj]
            for ii in range(k):
                s -= H[jj, ii] * x[ii]
            for rr in range(r):
                s -= EF[rr, jj] * y[rr]
            e1[jj] = s
        for rr in range(r):
            s = bE[rr]
            for jj in range(k):
                s -= EF[rr, jj] * x[jj]
            e2[rr] = s
        _tri_solve(LH, k, e1, h1)
        for rr in range(r):
            s = 0.0
            for jj in range(k):
                s += EF[rr, jj] * h1[jj]
            t2[rr] = s - e2[rr]
        if r > 0:
            _tri_solve(LS, r, t2, dy)
        for jj in range(k):
            s = h1[jj]
            for rr in range(r):
                s -= HiE[rr, jj] * dy[rr]
            x[jj] += s
        for rr in range(r):
            y[rr] += dy[rr]
    for i in range(N):
        x_out[i] = xfixb[i]
    for jj in range(k):
        x_out[F[jj]] = x[jj]
    for e in range(ne):
        y_out[e] = 0.0
    for rr in range(r):
        y_out[R[rr]] = y[rr]
    return True


_POOL: ThreadPoolExecutor | None = None


_N_THREADS: int | None = None


def _threads() -> int:
    """Worker threads: the CPU count capped by ``NUMBA_NUM_THREADS`` (read once; this is called
    several times per ADMM iteration)."""
    global _N_THREADS
    if _N_THREADS is None:
        _N_THREADS = max(1, min(os.cpu_count() or 1,
                                int(os.environ.get("NUMBA_NUM_THREADS", "0") or 64)))
    return _N_THREADS


def _run(kernel: Callable[..., None], n: int, *args: Any) -> None:
    """Run ``kernel(lo, hi, *args)`` over ``[0, n)`` split into one slice per CPU thread (the
    kernels are ``nogil``, so the slices run in parallel without numba's parallel compiler)."""
    global _POOL
    t = min(_threads(), max(n, 1))
    if t <= 1 or n < 2:
        kernel(0, n, *args)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="portfolio")
    bounds = np.linspace(0, n, t + 1).astype(np.int64)
    futs = [_POOL.submit(kernel, int(bounds[i]), int(bounds[i + 1]), *args) for i in range(t)]
    for f in futs:
        f.result()


def _rows(rows: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)


class CpuOps:
    """The solver's kernel set on the CPU: numba Cholesky factorisation / solves and the
    polish's reduced KKT solve; NumPy for the rest (``project_l1`` is the shared array program
    of ``l1.py``). Same methods as :class:`~mystocks_gpu.gpu_ops.portfolio.linalg_xp.XpOps`.

    Row arguments (``prow``, ``hrow``) address the big ``(., N, N)`` arrays indirectly, so the
    solver's working set shrinks without copying matrices (``compact_physically = False``)."""

    name = "cpu"
    xp = np
    compact_physically = False

    def __init__(self, factor_dtype: str = "float64") -> None:
        self.factor_dtype = np.dtype(factor_dtype)

    def _chol(self, P: np.ndarray, pm: np.ndarray, prow: np.ndarray | None, d: np.ndarray,
              A: np.ndarray, rA: np.ndarray, handle: np.ndarray, hrow: np.ndarray | None
              ) -> np.ndarray:
        B = d.shape[0]
        ok = np.empty(B, dtype=np.bool_)
        _run(kkt_chol_batch, B, P, np.ascontiguousarray(pm, dtype=np.float64), _rows(prow, B),
                       np.ascontiguousarray(d, dtype=np.float64), np.ascontiguousarray(A),
                       np.ascontiguousarray(rA), handle, _rows(hrow, B), ok)
        return ok

    def factor(self, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(handle, ok)``: float64 Cholesky factors of ``K (B, N, N)`` and success flags."""
        B, N = K.shape[0], K.shape[1]
        L = np.empty_like(K)
        ok = self._chol(np.ascontiguousarray(K), np.ones(B), None, np.zeros((B, N)),
                        np.zeros((B, 0, N)), np.zeros((B, 0)), L, None)
        return L, ok

    def kkt_factor(self, P: np.ndarray, pm: np.ndarray, prow: np.ndarray | None, d: np.ndarray,
                   A: np.ndarray, rA: np.ndarray, handle: np.ndarray | None = None,
                   hrow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Factor ``K_b = pm_b P[prow_b] + diag(d_b) + A_b' diag(rA_b) A_b`` (ADMM's matrix) in
        ``factor_dtype``, written into ``handle[hrow_b]`` (a new handle when None)."""
        B, N = d.shape
        if handle is None:
            handle = np.empty((B, N, N), dtype=self.factor_dtype)
        ok = self._chol(P, pm, prow, d, A, rA, handle, hrow)
        return handle, ok

    def solve(self, handle: np.ndarray, rhs: np.ndarray, hrow: np.ndarray | None = None) -> np.ndarray:
        out = np.empty_like(rhs)
        _run(chol_solve_batch, rhs.shape[0], handle, _rows(hrow, rhs.shape[0]),
             np.ascontiguousarray(rhs), out)
        return out

    def solve_multi(self, handle: np.ndarray, R: np.ndarray) -> np.ndarray:
        """``K^-1 R`` for ``R (B, N, k)`` (one batched solve per column)."""
        out = np.zeros_like(R)
        for c in range(R.shape[2]):
            out[:, :, c] = self.solve(handle, R[:, :, c])
        return out

    def matvec(self, P: np.ndarray, x: np.ndarray, prow: np.ndarray | None = None) -> np.ndarray:
        out = np.empty_like(x)
        _run(matvec_batch, x.shape[0], P, _rows(prow, x.shape[0]), np.ascontiguousarray(x), out)
        return out

    def project_l1(self, v: np.ndarray, mask: np.ndarray, r: np.ndarray) -> np.ndarray:
        return project_l1(np, v, mask, r)

    def kkt_reduced(self, P: np.ndarray, prow: np.ndarray, pm: np.ndarray, q: np.ndarray,
                    free: np.ndarray, xfix: np.ndarray, E: np.ndarray, e_rhs: np.ndarray,
                    e_act: np.ndarray, y0: np.ndarray, delta: float, refine: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Polish's reduced KKT solve (``polish.py`` step 2): ``(x (B, N), y (B, ne), ok)``;
        ``y0 (B, ne)`` are the starting multiplier estimates."""
        B, N = q.shape
        x = np.empty((B, N))
        y = np.zeros((B, E.shape[1]))
        ok = np.empty(B, dtype=np.bool_)
        _run(kkt_reduced_batch, B, P, _rows(prow, B), np.ascontiguousarray(pm, dtype=np.float64),
                          np.ascontiguousarray(q), np.ascontiguousarray(free),
                          np.ascontiguousarray(xfix), np.ascontiguousarray(E),
                          np.ascontiguousarray(e_rhs), np.ascontiguousarray(e_act),
                          np.ascontiguousarray(y0, dtype=np.float64), float(delta), int(refine),
                          x, y, ok)
        return x, y, ok

    def pd_scan(self, C: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per matrix: ``(all finite, max|C - C'|, C - shift I positive definite)``."""
        B, N = C.shape[0], C.shape[1]
        fin = np.isfinite(C).reshape(B, -1).all(axis=1)
        asym = np.zeros(B)
        pd = np.zeros(B, dtype=np.bool_)
        if fin.any():
            idx = np.nonzero(fin)[0]
            Cf = C if fin.all() else C[idx]
            asym[idx] = np.abs(Cf - Cf.transpose(0, 2, 1)).reshape(len(idx), -1).max(axis=1)
            L = np.empty((len(idx), N, N))
            pd[idx] = self._chol(Cf, np.ones(len(idx)), None,
                                 -np.broadcast_to(shift[idx][:, None], (len(idx), N)),
                                 np.zeros((len(idx), 0, N)), np.zeros((len(idx), 0)), L, None)
        return fin, asym, pd
