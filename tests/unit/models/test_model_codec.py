"""Serialisation: native payloads in a hashed envelope, bit-identical predictions after a round
trip, identical bytes for identical training (every family, CPU), and clear errors on tampering."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile

import numpy as np
import pytest

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.models import (
    FAMILIES,
    Model,
    ModelIntegrityError,
    NotFittedError,
    content_hash,
    load_model,
    make_model,
)
from mystocks_gpu.gpu_ops.models.linear_models import LassoModel, RidgeModel
from mystocks_gpu.gpu_ops.models.model_codec import MAGIC, unpack
from tests.unit.models.model_data import regression_data

SMALL = {
    "ridge": {"alpha": 2.0},
    "lasso": {"alpha": 0.05},
    "elastic_net": {"alpha": 0.05, "l1_ratio": 0.4},
    "random_forest": {"n_estimators": 6, "max_depth": 5, "seed": 1},
    "gbdt": {"n_estimators": 10, "max_depth": 3, "subsample": 0.8, "seed": 1},
    "mlp": {"hidden_sizes": [16], "epochs": 2, "batch_size": 64, "dropout": 0.1, "seed": 1},
    "gru": {"seq_len": 4, "hidden_size": 8, "epochs": 2, "batch_size": 64, "seed": 1},
}
LIB = {"random_forest": "sklearn", "gbdt": "xgboost", "mlp": "torch", "gru": "torch"}
EXTRA = {"sklearn": "ml", "xgboost": "ml", "torch": "dl"}


def _skip_without_library(family: str) -> None:
    lib = LIB.get(family)
    if lib and importlib.util.find_spec(lib) is None:
        pytest.skip(f"{family} needs {lib}: pip install -e '.[{EXTRA[lib]}]'")


def _fit(family: str, n_threads: int | None = 1) -> tuple[Model, np.ndarray]:
    X, y = regression_data(n=256, p=8, dtype=np.float32)
    return make_model(family, SMALL[family], backend="cpu", n_threads=n_threads).fit(X, y), X


def test_every_family_is_covered() -> None:
    assert set(SMALL) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_predictions_are_bit_identical(family: str) -> None:
    _skip_without_library(family)
    model, X = _fit(family)
    blob = model.to_bytes()
    back = load_model(blob, backend="cpu", expected_sha256=content_hash(blob))
    assert type(back) is type(model) and back.family == family
    assert back.params == model.params and back.n_features == X.shape[1]
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    assert back.predict(X).dtype == np.float64
    fmt = unpack(blob).payload_format
    assert fmt == type(model).payload_format


@pytest.mark.parametrize("family", FAMILIES)
def test_same_data_and_seed_give_the_same_bytes(family: str) -> None:
    _skip_without_library(family)
    a, _ = _fit(family)
    b, _ = _fit(family)
    assert a.to_bytes() == b.to_bytes()
    assert a.content_hash() == b.content_hash() == hashlib.sha256(a.to_bytes()).hexdigest()


@pytest.mark.parametrize("family", ["ridge", "gbdt", "random_forest", "mlp"])
def test_a_different_seed_or_data_gives_a_different_hash(family: str) -> None:
    _skip_without_library(family)
    a, X = _fit(family)
    other = make_model(family, SMALL[family], backend="cpu", n_threads=1)
    other.fit(X[:200], regression_data(n=256, p=8)[1][:200])
    assert other.content_hash() != a.content_hash()


def test_native_payloads_load_with_their_own_libraries() -> None:
    """The payload is the library's own format: npz via numpy, UBJSON via xgboost."""
    ridge, X = _fit("ridge")
    env = unpack(ridge.to_bytes())
    with np.load(io.BytesIO(env.payload)) as z:
        np.testing.assert_array_equal(z["coef"], ridge.coef_)
    if importlib.util.find_spec("xgboost") is not None:
        import xgboost as xgb

        gb, X = _fit("gbdt")
        booster = xgb.Booster()
        booster.load_model(bytearray(unpack(gb.to_bytes()).payload))
        np.testing.assert_array_equal(booster.inplace_predict(X).astype(np.float64), gb.predict(X))


def test_tampered_payload_is_rejected() -> None:
    model, _ = _fit("ridge")
    blob = bytearray(model.to_bytes())
    blob[-5] ^= 0xFF
    with pytest.raises(ModelIntegrityError, match="payload hash mismatch"):
        load_model(bytes(blob), backend="cpu")
    assert issubclass(ModelIntegrityError, MyStocksError)


def test_expected_hash_mismatch_is_rejected() -> None:
    a, _ = _fit("ridge")
    b = make_model("ridge", {"alpha": 9.0}, backend="cpu").fit(*regression_data(n=256, p=8))
    with pytest.raises(ModelIntegrityError, match="content hash mismatch"):
        load_model(a.to_bytes(), expected_sha256=b.content_hash())


@pytest.mark.parametrize("cut", [0, 5, 20, -1])
def test_truncated_blob_is_rejected(cut: int) -> None:
    blob = _fit("ridge")[0].to_bytes()
    with pytest.raises(ModelIntegrityError):
        load_model(blob[:cut], backend="cpu")


def test_not_a_model() -> None:
    with pytest.raises(ModelIntegrityError, match="not a mystocks-gpu model"):
        load_model(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(ModelIntegrityError):
        load_model(MAGIC + b"\x01\x00" + (10**6).to_bytes(4, "little") + b"{}")


def test_family_class_must_match() -> None:
    blob = _fit("ridge")[0].to_bytes()
    assert isinstance(RidgeModel.from_bytes(blob, backend="cpu"), RidgeModel)
    with pytest.raises(ModelIntegrityError, match="holds a 'ridge' model, not 'lasso'"):
        LassoModel.from_bytes(blob, backend="cpu")


def test_npz_payload_is_deterministic_zip() -> None:
    env = unpack(_fit("ridge")[0].to_bytes())
    with zipfile.ZipFile(io.BytesIO(env.payload)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_unfitted_model_cannot_be_serialised_or_used() -> None:
    m = make_model("ridge", backend="cpu")
    with pytest.raises(NotFittedError):
        m.to_bytes()
    with pytest.raises(NotFittedError):
        m.predict(np.zeros((2, 3)))
