"""random_forest (scikit-learn engine) and gbdt (XGBoost hist) against the libraries called directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn", reason="random_forest needs scikit-learn: pip install -e '.[ml]'")
xgb = pytest.importorskip("xgboost", reason="gbdt needs xgboost: pip install -e '.[ml]'")

from sklearn.ensemble import RandomForestRegressor  # noqa: E402

from mystocks_gpu.gpu_ops.models import (  # noqa: E402
    ProgressEvent,
    TrainingCancelled,
    make_model,
)
from tests.unit.models.model_data import needs_gpu, regression_data  # noqa: E402

RF = {"n_estimators": 9, "max_depth": 6, "min_samples_leaf": 2, "max_features": 0.7, "seed": 5}
GB = {"n_estimators": 15, "max_depth": 4, "learning_rate": 0.2, "subsample": 0.8,
      "colsample_bytree": 0.9, "min_child_weight": 2.0, "reg_lambda": 2.0, "reg_alpha": 0.1,
      "max_bin": 64, "seed": 3}


def _sk_forest(p: dict) -> RandomForestRegressor:
    return RandomForestRegressor(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                                 min_samples_leaf=p["min_samples_leaf"], max_features=p["max_features"],
                                 random_state=p["seed"])


@pytest.mark.parametrize("n_threads", [1, 4])
def test_forest_grown_in_rounds_equals_one_sklearn_fit(n_threads: int) -> None:
    X, y = regression_data(n=600)
    events: list[ProgressEvent] = []
    ours = make_model("random_forest", RF, backend="cpu", n_threads=n_threads).fit(X, y, progress=events.append)
    ref = _sk_forest(RF).fit(pd.DataFrame(X), y)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(pd.DataFrame(X)))
    rounds = -(-RF["n_estimators"] // n_threads)
    assert [e.done for e in events] == [min(RF["n_estimators"], (i + 1) * n_threads) for i in range(rounds)]
    assert all(e.unit == "trees" and e.total == RF["n_estimators"] for e in events)


def test_forest_cancel_stops_within_one_round() -> None:
    X, y = regression_data(n=300)
    events: list[ProgressEvent] = []
    polls = iter([False, False, True])  # before start, after round 1, after round 2
    with pytest.raises(TrainingCancelled) as ei:
        make_model("random_forest", RF, backend="cpu", n_threads=2).fit(
            X, y, progress=events.append, should_stop=lambda: next(polls))
    assert [e.done for e in events] == [2, 4]
    assert ei.value.done == 4 and ei.value.unit == "trees"


def test_gbdt_equals_xgboost_called_directly() -> None:
    X, y = regression_data(n=800)
    ours = make_model("gbdt", GB, backend="cpu", n_threads=1).fit(X, y)
    ref = xgb.XGBRegressor(n_estimators=GB["n_estimators"], max_depth=GB["max_depth"],
                           learning_rate=GB["learning_rate"], subsample=GB["subsample"],
                           colsample_bytree=GB["colsample_bytree"],
                           min_child_weight=GB["min_child_weight"], reg_lambda=GB["reg_lambda"],
                           reg_alpha=GB["reg_alpha"], max_bin=GB["max_bin"], random_state=GB["seed"],
                           tree_method="hist", n_jobs=1)
    ref.fit(pd.DataFrame(X), y)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(pd.DataFrame(X)).astype(np.float64))


def test_gbdt_progress_per_round_and_cancel_within_one_round() -> None:
    X, y = regression_data(n=300)
    events: list[ProgressEvent] = []
    make_model("gbdt", GB, backend="cpu", n_threads=1).fit(X, y, progress=events.append)
    assert [e.done for e in events] == list(range(1, GB["n_estimators"] + 1))
    assert {e.unit for e in events} == {"round"}
    events.clear()
    n_polls = [0]

    def stop() -> bool:
        n_polls[0] += 1
        return n_polls[0] > 4  # poll 1 is before round 1; poll 5 follows round 4

    with pytest.raises(TrainingCancelled) as ei:
        make_model("gbdt", GB, backend="cpu", n_threads=1).fit(X, y, progress=events.append, should_stop=stop)
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert ei.value.done == 4


def test_cancel_before_start() -> None:
    X, y = regression_data(n=100)
    m = make_model("gbdt", GB, backend="cpu", n_threads=1)
    with pytest.raises(TrainingCancelled) as ei:
        m.fit(X, y, should_stop=lambda: True)
    assert ei.value.done == 0 and not m.is_fitted


PARAM_CHANGES = [
    ("random_forest", "n_estimators", 3),
    ("random_forest", "max_depth", 2),
    ("random_forest", "min_samples_leaf", 20),
    ("random_forest", "max_features", 0.3),
    ("random_forest", "bootstrap", False),
    ("random_forest", "seed", 6),
    ("gbdt", "n_estimators", 5),
    ("gbdt", "max_depth", 2),
    ("gbdt", "learning_rate", 0.05),
    ("gbdt", "subsample", 0.5),
    ("gbdt", "colsample_bytree", 0.4),
    ("gbdt", "min_child_weight", 30.0),
    ("gbdt", "reg_lambda", 20.0),
    ("gbdt", "reg_alpha", 5.0),
    ("gbdt", "max_bin", 4),
    ("gbdt", "seed", 4),
]


@pytest.mark.parametrize(("family", "name", "other"), PARAM_CHANGES)
def test_every_parameter_changes_the_model(family: str, name: str, other: object) -> None:
    X, y = regression_data(n=300)
    base = RF if family == "random_forest" else GB
    a = make_model(family, base, backend="cpu", n_threads=1).fit(X, y)
    b = make_model(family, {**base, name: other}, backend="cpu", n_threads=1).fit(X, y)
    assert not np.array_equal(a.predict(X), b.predict(X))


@pytest.mark.gpu
@needs_gpu
def test_gbdt_gpu_close_to_cpu() -> None:
    X, y = regression_data(n=20_000)
    cpu = make_model("gbdt", GB, backend="cpu").fit(X, y)
    gpu = make_model("gbdt", GB, backend="gpu").fit(X, y)
    a, b = cpu.predict(X), gpu.predict(X)
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert np.mean((a - y) ** 2) == pytest.approx(np.mean((b - y) ** 2), rel=0.05)


@pytest.mark.gpu
@needs_gpu
def test_forest_gpu_close_to_cpu() -> None:
    X, y = regression_data(n=20_000)
    cpu = make_model("random_forest", RF, backend="cpu").fit(X, y)
    gpu = make_model("random_forest", RF, backend="gpu").fit(X, y)
    a, b = cpu.predict(X), gpu.predict(X)
    assert np.corrcoef(a, b)[0, 1] > 0.95
