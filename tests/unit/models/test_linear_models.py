"""ridge / lasso / elastic_net against scikit-learn, and the xp (GPU-structured) coordinate descent
against its numba twin."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import ElasticNet, Lasso, Ridge

from mystocks_gpu.gpu_ops.models import make_model
from mystocks_gpu.gpu_ops.models.linear_models import ConvergenceWarning
from mystocks_gpu.gpu_ops.models.linear_solvers import (
    cd_sweep_numba,
    cd_sweep_xp,
    centered_gram,
    coordinate_descent,
)
from tests.unit.models.model_data import needs_gpu, regression_data

TIGHT = {"tol": 1e-12, "max_iter": 100_000}


def _sk(family: str, params: dict) -> object:
    p = dict(params)
    if family == "ridge":
        return Ridge(solver="cholesky", **p)
    if family == "lasso":
        return Lasso(**p)
    return ElasticNet(**p)


CASES = [
    ("ridge", {"alpha": 3.0}),
    ("ridge", {"alpha": 0.0}),
    ("ridge", {"alpha": 50.0, "fit_intercept": False}),
    ("lasso", {"alpha": 0.02, **TIGHT}),
    ("lasso", {"alpha": 0.3, **TIGHT}),
    ("lasso", {"alpha": 0.05, "fit_intercept": False, **TIGHT}),
    ("elastic_net", {"alpha": 0.05, "l1_ratio": 0.3, **TIGHT}),
    ("elastic_net", {"alpha": 0.5, "l1_ratio": 0.9, **TIGHT}),
    ("elastic_net", {"alpha": 0.1, "l1_ratio": 0.0, **TIGHT}),
    ("elastic_net", {"alpha": 0.1, "l1_ratio": 0.5, "fit_intercept": False, **TIGHT}),
]


@pytest.mark.parametrize(("family", "params"), CASES)
def test_coefficients_equal_sklearn(family: str, params: dict) -> None:
    X, y = regression_data()
    ours = make_model(family, params, backend="cpu").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _sk(family, params).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-8)
    assert abs(ours.intercept_ - float(ref.intercept_)) < 1e-8
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=0, atol=1e-8)
    if family != "ridge":
        assert ours.fit_info is not None and ours.fit_info.converged


def test_lasso_zeroes_coefficients_like_sklearn() -> None:
    X, y = regression_data(p=20)
    ours = make_model("lasso", {"alpha": 0.2, **TIGHT}, backend="cpu").fit(X, y)
    ref = Lasso(alpha=0.2, **TIGHT).fit(X, y)
    assert (ours.coef_ == 0).any()
    np.testing.assert_array_equal(ours.coef_ == 0, ref.coef_ == 0)


def test_float32_input_matches_float64_fit_of_the_same_values() -> None:
    X, y = regression_data(dtype=np.float32)
    ours = make_model("elastic_net", {"alpha": 0.05, **TIGHT}, backend="cpu").fit(X, y)
    ref = ElasticNet(alpha=0.05, **TIGHT).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-8)
    assert ours.coef_.dtype == np.float64


def test_gram_is_centred_cross_product() -> None:
    X, y = regression_data(n=1000, p=6)
    G, q, yy, xm, ym = centered_gram(X, y, True, np, chunk_rows=97)  # several chunks
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    np.testing.assert_allclose(G, Xc.T @ Xc, rtol=1e-12)
    np.testing.assert_allclose(q, Xc.T @ yc, rtol=1e-12)
    assert abs(float(yy) - yc @ yc) < 1e-9 * (yc @ yc)
    np.testing.assert_array_equal(G, G.T)


@pytest.mark.parametrize(("a", "b"), [(20.0, 5.0), (0.0, 40.0), (60.0, 0.0)])
def test_xp_sweep_is_the_numba_sweep(a: float, b: float) -> None:
    """The GPU-structured array program, run with NumPy, equals the numba CPU twin bit for bit."""
    X, y = regression_data(n=300, p=10)
    G, q, yy, _, _ = centered_gram(X, y, True, np)
    w1, Gw1 = np.zeros(10), np.zeros(10)
    w2, Gw2 = np.zeros(10), np.zeros(10)
    for _ in range(5):
        d1 = cd_sweep_numba(G, q, w1, Gw1, a, b)
        d2 = cd_sweep_xp(G, q, w2, Gw2, list(range(10)), a, b, np)
        assert d1 == (float(d2[0]), float(d2[1]))
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(Gw1, Gw2)
    full1 = coordinate_descent(G, q, yy, a, b, 10_000, 1e-12, np, use_numba=True)
    full2 = coordinate_descent(G, q, yy, a, b, 10_000, 1e-12, np, use_numba=False)
    np.testing.assert_array_equal(full1[0], full2[0])
    assert full1[1] == full2[1]


def test_non_convergence_warns_and_reports() -> None:
    X, y = regression_data()
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        m = make_model("lasso", {"alpha": 0.01, "max_iter": 2, "tol": 1e-12}, backend="cpu").fit(X, y)
    assert m.fit_info is not None and m.fit_info.converged is False and m.fit_info.units_done == 2


PARAM_CHANGES = [
    ("ridge", "alpha", 1.0, 200.0),
    ("ridge", "fit_intercept", True, False),
    ("lasso", "alpha", 0.05, 0.4),
    ("lasso", "fit_intercept", True, False),
    ("lasso", "max_iter", 1000, 1),
    ("lasso", "tol", 1e-12, 0.5),
    ("elastic_net", "alpha", 0.05, 0.4),
    ("elastic_net", "l1_ratio", 0.5, 0.95),
    ("elastic_net", "fit_intercept", True, False),
    ("elastic_net", "max_iter", 1000, 1),
    ("elastic_net", "tol", 1e-12, 0.5),
]


@pytest.mark.parametrize(("family", "name", "base", "other"), PARAM_CHANGES)
def test_every_parameter_changes_the_model(family: str, name: str, base: object, other: object) -> None:
    X, y = regression_data()
    fixed = {"tol": 1e-12} if family != "ridge" and name != "tol" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = make_model(family, {**fixed, name: base}, backend="cpu").fit(X, y)
        b = make_model(family, {**fixed, name: other}, backend="cpu").fit(X, y)
    assert not np.array_equal(a.predict(X), b.predict(X))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("family", "params"), CASES)
def test_gpu_twin_equals_cpu_twin(family: str, params: dict) -> None:
    X, y = regression_data(n=5000)
    cpu = make_model(family, params, backend="cpu").fit(X, y)
    gpu = make_model(family, params, backend="gpu").fit(X, y)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), rtol=0, atol=1e-8)
