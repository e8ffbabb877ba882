"""Covariance checks and the documented repair of non-PSD / singular matrices.

Per matrix ``C`` (``(B, n, n)`` batch, floor ``f = eig_floor * mean(diag C)``):

1. Rejected (always) when it has a non-finite entry, a non-positive mean diagonal, or
   ``max|C - C'| > 1e-10 * max|C|`` (asymmetric); a symmetric matrix within that tolerance is
   symmetrised ``(C + C') / 2``.
2. ``C - f I`` is Cholesky-factorised (batched): success proves ``lambda_min(C) > f`` and ``C`` is
   used as is. Otherwise (non-PSD, or PSD but singular / nearly so):

   - ``psd_repair = "clip"``: eigen-decompose ``C = V diag(lambda) V'`` and use
     ``V diag(max(lambda, f)) V'`` (the nearest matrix in Frobenius norm with eigenvalues >= f);
     the result records ``repaired = True`` and the smallest original eigenvalue.
   - ``psd_repair = "reject"``: the problem is rejected with its smallest eigenvalue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any


@dataclass
class PsdReport:
    """``cov`` (the matrices to use, on the backend), ``repaired (B,)``, ``rejected (B,)``,
    ``min_eig (B,)`` (NaN where not computed) and a message per rejected problem."""

    cov: Array
    repaired: np.ndarray
    rejected: np.ndarray
    min_eig: np.ndarray
    messages: list[str]


def check_and_repair(cov: Array, repair: str, eig_floor: float, ops: Any) -> PsdReport:
    """Apply the rules of the module docstring to ``cov (B, n, n)`` with kernel set ``ops``.
    ``cov`` itself is returned (not copied) when nothing needs changing."""
    xp = ops.xp
    B = cov.shape[0]
    msgs = ["" for _ in range(B)]
    host = lambda a: a.get() if hasattr(a, "get") else np.asarray(a)  # noqa: E731
    diag = xp.diagonal(cov, axis1=1, axis2=2)
    dmean = xp.mean(diag, axis=1)
    floor = eig_floor * xp.where(dmean > 0, dmean, 1.0)
    fin, asym, pd = (host(a) for a in ops.pd_scan(cov, floor))
    amax = host(xp.max(xp.abs(diag), axis=1))  # max|C| of a PSD matrix is on its diagonal
    dpos = host(dmean > 0) & fin
    asymmetric = fin & (asym > 1e-10 * np.maximum(amax, 1e-300))
    rejected = ~fin | asymmetric | ~dpos
    for b in np.nonzero(rejected)[0]:
        msgs[b] = ("covariance has non-finite entries" if not fin[b] else
                   f"covariance is not symmetric (max |C - C'| = {asym[b]:.3g})" if asymmetric[b] else
                   "covariance has a non-positive mean variance")
    c = cov
    sym = np.nonzero(~rejected & (asym > 0))[0]
    need = ~pd & ~rejected
    repaired = np.zeros(B, dtype=bool)
    min_eig = np.full(B, np.nan)
    if len(sym) or need.any():
        c = cov.copy()
    if len(sym):
        ii = xp.asarray(sym)
        c[ii] = 0.5 * (c[ii] + xp.swapaxes(c[ii], 1, 2))
    if need.any():
        idx = np.nonzero(need)[0]
        ii = xp.asarray(idx)
        lam, V = xp.linalg.eigh(c[ii])
        min_eig[idx] = host(lam[:, 0])
        if repair == "clip":
            lam = xp.maximum(lam, floor[ii][:, None])
            fixed = xp.matmul(V * lam[:, None, :], xp.swapaxes(V, 1, 2))
            c[ii] = 0.5 * (fixed + xp.swapaxes(fixed, 1, 2))
            repaired[idx] = True
        else:
            rejected[idx] = True
            fl = host(floor)
            for b in idx:
                msgs[b] = (f"covariance is not positive definite (smallest eigenvalue "
                           f"{min_eig[b]:.3g} <= floor {fl[b]:.3g}); psd_repair='reject'")
    return PsdReport(c, repaired, rejected, min_eig, msgs)
