"""Linear families: ``ridge`` (closed form), ``lasso`` and ``elastic_net`` (coordinate descent).

Objectives and solver: see ``linear_solvers``. Coefficients are float64 whatever X's dtype;
``predict`` is ``X @ coef + intercept`` in float64 on the model's backend; on the CPU each row is
summed in feature order by one compiled loop (:func:`predict_rows`), so a row's score does not
depend on the other rows of the batch (BLAS ``gemv`` blocks rows differently for different batch
sizes and changes the last bits): live scoring in micro-batches equals the training job's
``predict`` bit for bit. GPU: the Gram matrix,
the solve and the sweeps run on CuPy; CPU: NumPy (BLAS) for the Gram matrix and the ridge solve,
numba for the sweeps. The payload is an ``.npz`` with ``coef`` (p,) and ``intercept`` (1,).
"""

from __future__ import annotations

import warnings
from typing import Any

import numba
import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, to_host, xp
from mystocks_gpu.gpu_ops.models.exceptions import ModelIntegrityError
from mystocks_gpu.gpu_ops.models.linear_solvers import (
    centered_gram,
    coordinate_descent,
    ridge_solve,
)
from mystocks_gpu.gpu_ops.models.model_base import Model, Reporter
from mystocks_gpu.gpu_ops.models.model_codec import arrays_to_npz, npz_to_arrays
from mystocks_gpu.gpu_ops.models.model_params import ElasticNetParams, LassoParams, RidgeParams


@numba.njit(cache=True, nogil=True)
def predict_rows(X, coef, intercept):  # pragma: no cover - numba
    """``X @ coef + intercept`` for float64 ``X`` (n, p): each row summed in feature order, so a
    row's result depends only on that row (no reassociation: numba's default strict FP)."""
    n, p = X.shape
    out = np.empty(n, np.float64)
    for i in range(n):
        acc = 0.0
        for j in range(p):
            acc += X[i, j] * coef[j]
        out[i] = acc + intercept
    return out


class ConvergenceWarning(UserWarning):
    """Coordinate descent stopped at ``max_iter`` before the duality gap reached ``tol``."""


class _LinearModel(Model):
    payload_format = "npz"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coef_: np.ndarray | None = None  # host float64 (p,)
        self.intercept_: float = 0.0
        self._coef_dev: Any = None  # on the backend

    def _libraries(self) -> list[str]:
        return [] if self.backend == GPU else ["numba"]

    def _xp_data(self, X: Any, y: Any) -> tuple[Any, Any, Any]:
        m = xp(self.backend)
        return m, m.asarray(X), m.asarray(y)

    def _set(self, w: Any, b: float) -> None:
        self.coef_ = np.ascontiguousarray(to_host(w), dtype=np.float64)
        self.intercept_ = float(b)
        self._coef_dev = xp(self.backend).asarray(self.coef_)

    def _predict(self, X: Any) -> Any:
        m = xp(self.backend)
        Xd = m.asarray(X)
        if Xd.dtype != m.float64:
            Xd = Xd.astype(m.float64)
        if self.backend != GPU:
            return predict_rows(np.ascontiguousarray(Xd), self.coef_, self.intercept_)
        return Xd @ self._coef_dev + self.intercept_

    def _payload(self) -> tuple[bytes, dict[str, Any]]:
        assert self.coef_ is not None
        return arrays_to_npz({"coef": self.coef_, "intercept": np.array([self.intercept_])}), {}

    def _load_payload(self, payload: bytes, n_features: int, extra: dict[str, Any]) -> None:
        arrs = npz_to_arrays(payload)
        coef, icpt = arrs.get("coef"), arrs.get("intercept")
        if coef is None or icpt is None or coef.shape != (n_features,) or icpt.shape != (1,):
            raise ModelIntegrityError(f"{self.family} payload lacks coef ({n_features},) / intercept (1,)")
        self._set(coef.astype(np.float64), float(icpt[0]))


class RidgeModel(_LinearModel):
    """``ridge``: ``min ||y - Xw - b||^2 + alpha ||w||^2`` in closed form (scikit-learn ``Ridge``)."""

    family = "ridge"
    params_type = RidgeParams

    def _fit(self, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        p: RidgeParams = self.params
        rep.start("solve", 1)
        m, Xd, yd = self._xp_data(X, y)
        G, q, _, x_mean, y_mean = centered_gram(Xd, yd, p.fit_intercept, m)
        w = ridge_solve(G, q, float(p.alpha), m)
        self._set(w, float(y_mean - x_mean @ w) if p.fit_intercept else 0.0)
        rep.step(1)
        return ("cupy-solve" if self.backend == GPU else "numpy-solve"), None


class _CoordinateDescentModel(_LinearModel):
    """Shared fit of ``lasso`` / ``elastic_net`` (params with alpha, l1_ratio, tol, max_iter)."""

    def _fit(self, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        p = self.params
        rep.start("sweep", p.max_iter)
        m, Xd, yd = self._xp_data(X, y)
        n = X.shape[0]
        G, q, yy, x_mean, y_mean = centered_gram(Xd, yd, p.fit_intercept, m)
        a = float(p.alpha) * float(p.l1_ratio) * n
        b = float(p.alpha) * (1.0 - float(p.l1_ratio)) * n
        w, sweeps, gap, converged = coordinate_descent(
            G, q, yy, a, b, p.max_iter, float(p.tol), m, use_numba=self.backend != GPU,
            on_sweep=rep.step)
        if not converged:
            warnings.warn(f"{self.family}: coordinate descent did not converge in {sweeps} sweeps "
                          f"(duality gap {gap:.3e} > tol x ||y - mean||^2 = "
                          f"{float(p.tol) * float(yy):.3e}); raise max_iter or tol",
                          ConvergenceWarning, stacklevel=3)
        self._set(w, float(y_mean - x_mean @ w) if p.fit_intercept else 0.0)
        return ("cupy-cd" if self.backend == GPU else "numba-cd"), converged


class ElasticNetModel(_CoordinateDescentModel):
    """``elastic_net``: scikit-learn ``ElasticNet``'s objective by coordinate descent."""

    family = "elastic_net"
    params_type = ElasticNetParams


class LassoModel(_CoordinateDescentModel):
    """``lasso``: the elastic net with ``l1_ratio = 1`` (scikit-learn ``Lasso``)."""

    family = "lasso"
    params_type = LassoParams
