"""Linear-model solvers on the centred Gram matrix: ridge closed form and elastic-net coordinate
descent, written once against an array module ``xp`` (NumPy or CuPy), with a numba twin of the
coordinate-descent sweep.

Both families reduce the data to the centred Gram system in one pass over the rows
(:func:`centered_gram`, O(n p^2), the GPU's work), after which the solve is O(p^3) (ridge) or
O(p^2) per sweep (coordinate descent), independent of n. This suits many rows and up to a few
thousand features; it is the ``precompute=True`` path of scikit-learn's solver.

Objectives (n rows, intercept by centring X and y when ``fit_intercept``):

* ridge: ``||y - Xw - b||^2 + alpha ||w||^2`` -> ``(G + alpha I) w = q``.
* elastic net: ``1/(2n) ||y - Xw - b||^2 + alpha r ||w||_1 + alpha (1-r)/2 ||w||^2``; multiplied
  by n this is ``1/2 w'Gw - q'w + a ||w||_1 + b/2 ||w||^2`` with ``a = alpha r n`` and
  ``b = alpha (1-r) n``, solved by cyclic coordinate descent with the soft-threshold update
  ``w_j = S(q_j - (Gw)_j + G_jj w_j, a) / (G_jj + b)`` keeping ``Gw`` up to date.

Stopping rule (scikit-learn's): after a sweep whose largest update is at most ``tol`` times the
largest coefficient (or after the last sweep), the duality gap (scikit-learn's formulations: A for
``a > 0``, B for ``a = 0 < b``, the gradient norm for OLS) is computed; the solver stops when it is
at most ``tol * ||y - ȳ||^2``.

GPU: :func:`cd_sweep_xp` runs on CuPy device arrays with no host synchronisation inside a sweep
(one launch sequence per coordinate); the sweep-level stopping check syncs once per sweep. CPU:
:func:`cd_sweep_numba` is the same loop, statement for statement. Both give identical results on
the CPU (the tests run the xp program with NumPy against the numba twin).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from numba import njit

from mystocks_gpu.gpu_ops.models.exceptions import TrainingDataError

#: rows per chunk when forming the Gram matrix (bounds the float64 temporary: chunk x p x 8 bytes)
GRAM_CHUNK_ROWS = 1 << 18


def centered_gram(X: Any, y: Any, fit_intercept: bool, xp: ModuleType,
                  chunk_rows: int = GRAM_CHUNK_ROWS) -> tuple[Any, Any, Any, Any, Any]:
    """``(G, q, yy, x_mean, y_mean)`` of the centred data in float64 on ``xp``.

    ``X`` (n, p) float32/float64 and ``y`` (n,) live on ``xp``. ``G = Xc'Xc`` (p, p), exactly
    symmetric; ``q = Xc'yc`` (p,); ``yy = yc'yc`` (0-d); means are zeros without intercept.
    Rows are processed in chunks of ``chunk_rows`` (upcast to float64 per chunk).
    """
    n, p = X.shape
    if fit_intercept:
        x_mean = X.mean(axis=0, dtype=xp.float64)
        y_mean = y.mean(dtype=xp.float64)
    else:
        x_mean = xp.zeros(p, dtype=xp.float64)
        y_mean = xp.zeros((), dtype=xp.float64)
    G = xp.zeros((p, p), dtype=xp.float64)
    q = xp.zeros(p, dtype=xp.float64)
    yy = xp.zeros((), dtype=xp.float64)
    for s in range(0, n, chunk_rows):
        Xc = X[s:s + chunk_rows].astype(xp.float64) - x_mean
        yc = y[s:s + chunk_rows].astype(xp.float64) - y_mean
        G += Xc.T @ Xc
        q += Xc.T @ yc
        yy += yc @ yc
    G = 0.5 * (G + G.T)
    return G, q, yy, x_mean, y_mean


def ridge_solve(G: Any, q: Any, alpha: float, xp: ModuleType) -> Any:
    """Solve ``(G + alpha I) w = q`` (float64 on ``xp``); singular systems raise
    :class:`TrainingDataError` (use ``alpha > 0`` or drop collinear features)."""
    A = G + alpha * xp.eye(G.shape[0], dtype=xp.float64)
    try:
        w = xp.linalg.solve(A, q)
    except np.linalg.LinAlgError as exc:
        raise TrainingDataError(f"ridge system is singular (alpha={alpha}); use alpha > 0 or drop "
                                "constant / collinear features") from exc
    if not bool(xp.isfinite(w).all()):
        raise TrainingDataError(f"ridge system is singular (alpha={alpha}); use alpha > 0")
    return w


def duality_gap(G: Any, q: Any, yy: Any, w: Any, a: float, b: float, xp: ModuleType) -> float:
    """Duality gap of the n-scaled elastic net at ``w`` (scikit-learn's ``gap_enet_gram``), with
    ``Gw`` recomputed from scratch. Returns a host float."""
    Gw = G @ w
    qw = q @ w
    R2 = yy + w @ Gw - 2.0 * qw
    if a == 0.0:
        XtA = q - Gw
        dn = XtA @ XtA
        if b == 0.0:
            return float(dn)  # OLS: first-order condition
        return float(R2 + 0.5 * b * (w @ w) - (yy - qw) + dn / (2.0 * b))
    XtA = q - Gw - b * w
    dual_norm = xp.abs(XtA).max()
    w_l2 = w @ w
    primal = 0.5 * (R2 + b * w_l2) + a * xp.abs(w).sum()
    scale = xp.where(dual_norm > a, a / xp.maximum(dual_norm, a), 1.0)
    dual = -0.5 * scale ** 2 * (R2 + b * w_l2) + scale * (yy - qw)
    return float(primal - dual)


def cd_sweep_xp(G: Any, q: Any, w: Any, Gw: Any, active: list[int], a: float, b: float,
                xp: ModuleType) -> tuple[Any, Any]:
    """One cyclic coordinate-descent sweep over the ``active`` coordinates (those with
    ``G_jj > 0``), updating ``w`` and ``Gw`` in place. Returns 0-d ``(max |dw|, max |w|)``.

    Device-side only (no host sync on CuPy); mirrors :func:`cd_sweep_numba`."""
    d_w_max = xp.zeros((), dtype=xp.float64)
    w_max = xp.zeros((), dtype=xp.float64)
    for j in active:
        w_j = w[j].copy()
        tmp = q[j] - Gw[j] + w_j * G[j, j]
        new = xp.sign(tmp) * xp.maximum(xp.abs(tmp) - a, 0.0) / (G[j, j] + b)
        delta = new - w_j
        Gw += delta * G[j]
        w[j] = new
        d_w_max = xp.maximum(d_w_max, xp.abs(delta))
        w_max = xp.maximum(w_max, xp.abs(new))
    return d_w_max, w_max


@njit(cache=True)
def cd_sweep_numba(G: np.ndarray, q: np.ndarray, w: np.ndarray, Gw: np.ndarray, a: float,
                   b: float) -> tuple[float, float]:  # pragma: no cover - compiled
    """CPU twin of :func:`cd_sweep_xp` (coordinates with ``G_jj == 0`` are skipped)."""
    p = G.shape[0]
    d_w_max = 0.0
    w_max = 0.0
    for j in range(p):
        if G[j, j] == 0.0:
            continue
        w_j = w[j]
        tmp = q[j] - Gw[j] + w_j * G[j, j]
        if tmp > a:
            new = (tmp - a) / (G[j, j] + b)
        elif tmp < -a:
            new = (tmp + a) / (G[j, j] + b)
        else:
            new = 0.0
        delta = new - w_j
        if delta != 0.0:
            for k in range(p):
                Gw[k] += delta * G[j, k]
        w[j] = new
        if abs(delta) > d_w_max:
            d_w_max = abs(delta)
        if abs(new) > w_max:
            w_max = abs(new)
    return d_w_max, w_max


def coordinate_descent(G: Any, q: Any, yy: Any, a: float, b: float, max_iter: int, tol: float,
                       xp: ModuleType, use_numba: bool, on_sweep: Any = None
                       ) -> tuple[Any, int, float, bool]:
    """Minimise ``1/2 w'Gw - q'w + a|w|_1 + b/2 |w|^2`` from ``w = 0``.

    ``use_numba`` picks the sweep (numba on NumPy arrays, else :func:`cd_sweep_xp` on ``xp``).
    ``on_sweep(k)`` is called after sweep ``k`` (1-based) and may raise to cancel.
    Returns ``(w, sweeps, gap, converged)``.
    """
    p = G.shape[0]
    w = xp.zeros(p, dtype=xp.float64)
    Gw = xp.zeros(p, dtype=xp.float64)
    active = [j for j, d in enumerate(np.asarray(_host(xp.diagonal(G)))) if d > 0.0]
    tol_gap = tol * float(yy)
    gap = float("inf")
    converged = False
    sweeps = 0
    for it in range(max_iter):
        if use_numba:
            d_w_max, w_max = cd_sweep_numba(G, q, w, Gw, a, b)
        else:
            dw, wm = cd_sweep_xp(G, q, w, Gw, active, a, b, xp)
            d_w_max, w_max = float(dw), float(wm)
        sweeps = it + 1
        if w_max == 0.0 or d_w_max / w_max <= tol or it == max_iter - 1:
            gap = duality_gap(G, q, yy, w, a, b, xp)
            converged = gap <= tol_gap
        if on_sweep is not None:
            on_sweep(sweeps)
        if converged:
            break
    return w, sweeps, gap, converged


def _host(a: Any) -> Any:
    return a.get() if hasattr(a, "get") else a
