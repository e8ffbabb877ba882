"""Bad input gets a clear MyStocksError naming what is wrong."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.exceptions import BackendUnavailable
from mystocks_gpu.gpu_ops.models import (
    FAMILIES,
    MissingLibraryError,
    ModelParamError,
    TrainingDataError,
    UnknownModelFamily,
    make_model,
)
from mystocks_gpu.gpu_ops.models.model_params import MlpParams, RidgeParams
from tests.unit.models.model_data import GPU_OK, regression_data


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelFamily, match="'xgb'.*ridge, lasso, elastic_net") as ei:
        make_model("xgb")
    assert isinstance(ei.value, MyStocksError)


@pytest.mark.parametrize(("family", "params", "pattern"), [
    ("ridge", {"alpha": "1"}, "ridge parameter 'alpha' must be a number, got str"),
    ("ridge", {"alpha": -1.0}, "ridge parameter 'alpha' must be finite and >= 0.0, got -1.0"),
    ("ridge", {"alpha": float("nan")}, "'alpha' must be finite"),
    ("ridge", {"fit_intercept": 1}, "'fit_intercept' must be true or false"),
    ("lasso", {"max_iter": 0}, "lasso parameter 'max_iter' must be >= 1, got 0"),
    ("lasso", {"max_iter": 10.0}, "'max_iter' must be an int, got float"),
    ("lasso", {"tol": 0}, "'tol' must be finite and > 0"),
    ("elastic_net", {"l1_ratio": 1.5}, r"'l1_ratio' must be finite and in \[0.0, 1.0\]"),
    ("random_forest", {"n_estimators": True}, "'n_estimators' must be an int, got bool"),
    ("random_forest", {"max_features": 0.0}, r"'max_features' must be finite and in \(0.0, 1.0\]"),
    ("gbdt", {"learning_rate": 0}, r"gbdt parameter 'learning_rate'"),
    ("gbdt", {"max_depth": 100}, r"'max_depth' must be in \[1, 64\]"),
    ("gbdt", {"subsample": 1.2}, "'subsample'"),
    ("gbdt", {"n_estimators": 10, "eta": 0.1}, "gbdt has no parameter 'eta'; valid: n_estimators"),
    ("mlp", {"hidden_sizes": []}, "'hidden_sizes' must be a non-empty list"),
    ("mlp", {"hidden_sizes": [8, 0]}, r"'hidden_sizes\[1\]' must be >= 1"),
    ("mlp", {"accum_steps": 0}, "'accum_steps' must be >= 1"),
    ("mlp", {"mixed_precision": "fp8"}, "'mixed_precision' must be one of auto, bf16, off"),
    ("gru", {"dropout": 1.0}, r"'dropout' must be finite and in \[0.0, 1.0\)"),
])
def test_bad_hyper_parameter_is_named(family: str, params: dict, pattern: str) -> None:
    with pytest.raises(ModelParamError, match=pattern):
        make_model(family, params, backend="cpu")


def test_params_dataclass_validates_directly_and_is_frozen() -> None:
    with pytest.raises(ModelParamError, match="'alpha'"):
        RidgeParams(alpha=-2)
    p = MlpParams(hidden_sizes=[4, 2])  # type: ignore[arg-type]
    assert p.hidden_sizes == (4, 2)
    with pytest.raises(AttributeError):
        p.epochs = 3  # type: ignore[misc]


def test_params_of_another_family_are_rejected() -> None:
    with pytest.raises(ModelParamError, match="ridge params must be RidgeParams"):
        make_model("ridge", MlpParams(), backend="cpu")


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"n_threads": 0}, "'n_threads' must be None or an int >= 1"),
    ({"devices": (0, 0)}, "'devices' must be distinct"),
    ({"devices": (-1,)}, "'devices' must be distinct CUDA ordinals >= 0"),
])
def test_bad_placement_setting(kw: dict, pattern: str) -> None:
    with pytest.raises(ModelParamError, match=pattern):
        make_model("ridge", backend="cpu", **kw)


@pytest.mark.skipif(GPU_OK, reason="a GPU is present")
def test_gpu_backend_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailable, match="backend 'gpu' requested but unavailable"):
        make_model("ridge", backend="gpu")


@pytest.mark.parametrize("family", ["ridge", "lasso", "gbdt"])
def test_empty_training_set(family: str) -> None:
    pytest.importorskip("xgboost") if family == "gbdt" else None
    with pytest.raises(TrainingDataError, match=f"empty training set: {family} got 0 rows"):
        make_model(family, backend="cpu").fit(np.zeros((0, 4)), np.zeros(0))


def test_nan_features_or_labels_are_rejected_with_the_row() -> None:
    X, y = regression_data(n=50)
    X[17, 2] = np.nan
    with pytest.raises(TrainingDataError, match="X has 1 row.*NaN/inf.*first at row 17.*drop_nonfinite"):
        make_model("ridge", backend="cpu").fit(X, y)
    X, y = regression_data(n=50)
    y[[3, 9]] = np.inf
    with pytest.raises(TrainingDataError, match="y has 2 row.*first at row 3"):
        make_model("ridge", backend="cpu").fit(X, y)


@pytest.mark.parametrize(("X", "y", "pattern"), [
    (np.zeros(5), np.zeros(5), r"X must be 2-D \(n_rows, n_features\); got shape \(5,\)"),
    (np.zeros((5, 2), dtype=np.int64), np.zeros(5), "X must be float32 or float64, got int64"),
    (np.zeros((5, 2)), np.zeros(4), "y must be 1-D with 5 rows"),
    (np.zeros((5, 0)), np.zeros(5), "no feature columns"),
])
def test_malformed_training_input(X: np.ndarray, y: np.ndarray, pattern: str) -> None:
    with pytest.raises(TrainingDataError, match=pattern):
        make_model("ridge", backend="cpu").fit(X, y)


def test_predict_checks_the_feature_count() -> None:
    X, y = regression_data(n=50, p=4)
    m = make_model("ridge", backend="cpu").fit(X, y)
    with pytest.raises(TrainingDataError, match="X has 3 features, the ridge model was fitted with 4"):
        m.predict(X[:, :3])
    assert m.predict(X[:0]).shape == (0,)


def test_predict_rejects_nan_rows_unless_the_caller_checked() -> None:
    X, y = regression_data(n=50, p=4)
    m = make_model("ridge", backend="cpu").fit(X, y)
    Xn = X.copy()
    Xn[7, 1] = np.nan
    with pytest.raises(TrainingDataError, match="X has 1 row.*first at row 7"):
        m.predict(Xn)
    got = m.predict(Xn, assume_finite=True)  # the check is skipped: NaN propagates to that row only
    assert np.isnan(got[7])
    np.testing.assert_array_equal(np.delete(got, 7), np.delete(m.predict(X), 7))
    with pytest.raises(TrainingDataError, match="X has 3 features"):
        m.predict(X[:, :3], assume_finite=True)  # shape is still checked


@pytest.mark.parametrize(("family", "module", "hint"), [
    ("gbdt", "xgboost", r'pip install xgboost.*pip install -e "\.\[ml\]"'),
    ("random_forest", "sklearn", r'pip install scikit-learn.*pip install -e "\.\[ml\]"'),
    ("random_forest", "skops", r'pip install skops.*"\.\[ml\]"'),
    ("mlp", "torch", r'pip install torch.*pip install -e "\.\[dl\]"'),
    ("gru", "torch", r'"\.\[dl\]"'),
])
def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch, family: str, module: str,
                                         hint: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingLibraryError, match=hint) as ei:
        make_model(family, backend="cpu")
    assert f"'{family}' needs {module}" in str(ei.value)
    assert isinstance(ei.value, MyStocksError)


def test_core_families_need_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("xgboost", "sklearn", "skops", "torch"):
        monkeypatch.setitem(sys.modules, mod, None)
    X, y = regression_data(n=60)
    for family in ("ridge", "lasso", "elastic_net"):
        assert make_model(family, backend="cpu").fit(X, y).predict(X).shape == (60,)
    assert set(FAMILIES) >= {"ridge", "lasso", "elastic_net"}
