"""Labels (forward returns), the NaN row policy and lag stacking, against pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.models import (
    TrainingDataError,
    drop_nonfinite,
    forward_returns,
    stack_lags,
)
from mystocks_gpu.gpu_ops.models.forward_labels import LABEL_END_UNKNOWN
from tests.unit.models.model_data import panel


def _pandas_forward(d: dict[str, np.ndarray], h: int, kind: str) -> pd.DataFrame:
    df = pd.DataFrame({"sym": d["sym"], "ts": d["ts"], "close": d["close"]})
    df["row"] = np.arange(len(df))
    df = df.sort_values(["sym", "ts"])
    fut = df.groupby("sym")["close"].shift(-h)
    df["end"] = df.groupby("sym")["ts"].shift(-h)
    df["label"] = np.log(fut / df["close"]) if kind == "log" else fut / df["close"] - 1
    return df.sort_values("row")


@pytest.mark.parametrize(("h", "kind"), [(1, "log"), (5, "log"), (3, "simple")])
def test_forward_returns_equal_pandas_groupby_shift(h: int, kind: str) -> None:
    d = panel(60, 7)
    ours = forward_returns(d["sym"], d["ts"], d["close"], h, kind)
    ref = _pandas_forward(d, h, kind)
    np.testing.assert_allclose(ours.label, ref["label"].to_numpy(), rtol=1e-15, atol=0, equal_nan=True)
    end_ref = ref["end"].to_numpy()
    have = ~np.isnan(end_ref)
    np.testing.assert_array_equal(ours.label_end[have], end_ref[have].astype(np.int64))
    assert (ours.label_end[~have] == LABEL_END_UNKNOWN).all()
    # exactly the last h bars of every symbol are unlabeled: nothing past the data is used
    assert int(np.isnan(ours.label).sum()) == 7 * h


def test_labels_never_use_prices_past_the_window() -> None:
    """Labels computed on a truncated window equal the full-data labels where defined, and are
    NaN where the horizon would need bars past the window's end."""
    d = panel(80, 5)
    cut = d["ts"] < 50 * 86_400_000_000_000
    part = {k: v[cut] for k, v in d.items()}
    full = forward_returns(d["sym"], d["ts"], d["close"], 4)
    win = forward_returns(part["sym"], part["ts"], part["close"], 4)
    ok = ~np.isnan(win.label)
    np.testing.assert_array_equal(win.label[ok], full.label[cut][ok])
    assert (win.label_end[ok] < 50 * 86_400_000_000_000).all()
    changed = np.isnan(win.label) & ~np.isnan(full.label[cut])
    assert changed.sum() == 5 * 4


def test_non_positive_prices_give_nan_labels() -> None:
    sym = np.zeros(5, dtype=np.int32)
    ts = np.arange(5, dtype=np.int64)
    price = np.array([10.0, 0.0, 12.0, np.nan, 13.0])
    lab = forward_returns(sym, ts, price, 1).label
    assert np.isnan(lab).all()  # each row touches a zero, NaN or missing price
    lab2 = forward_returns(sym, ts, np.array([10.0, 11.0, 12.0, 13.0, 14.0]), 2).label
    np.testing.assert_allclose(lab2[:3], np.log([12 / 10, 13 / 11, 14 / 12]), rtol=1e-15)


@pytest.mark.parametrize(("h", "pattern"), [
    (0, "horizon must be an int >= 1"),
    (2.0, "horizon must be an int >= 1"),
    (60, "horizon 60 bars is longer than the data: the longest symbol history has"),
])
def test_bad_horizon(h: object, pattern: str) -> None:
    d = panel(30, 3)
    with pytest.raises(TrainingDataError, match=pattern):
        forward_returns(d["sym"], d["ts"], d["close"], h)  # type: ignore[arg-type]


def test_empty_range_and_duplicate_bars() -> None:
    e = np.zeros(0)
    with pytest.raises(TrainingDataError, match="empty range"):
        forward_returns(e.astype(np.int32), e.astype(np.int64), e, 1)
    with pytest.raises(TrainingDataError, match="two rows at time 5"):
        forward_returns(np.array([1, 1, 1]), np.array([4, 5, 5]), np.ones(3), 1)
    with pytest.raises(TrainingDataError, match="kind must be one of log, simple"):
        forward_returns(np.array([1, 1]), np.array([4, 5]), np.ones(2), 1, kind="pct")


def test_drop_nonfinite_equals_pandas_dropna() -> None:
    rng = np.random.default_rng(12345)
    X = rng.normal(size=(200, 4))
    y = rng.normal(size=200)
    X[rng.integers(0, 200, 15), rng.integers(0, 4, 15)] = np.nan
    X[3, 1] = np.inf
    y[rng.integers(0, 200, 10)] = np.nan
    df = pd.DataFrame(np.column_stack([X, y])).replace([np.inf, -np.inf], np.nan)
    ref = df.dropna()
    got = drop_nonfinite(X, y)
    np.testing.assert_array_equal(got.X, ref.iloc[:, :4].to_numpy())
    np.testing.assert_array_equal(got.y, ref.iloc[:, 4].to_numpy())
    assert got.n_dropped == len(df) - len(ref)
    np.testing.assert_array_equal(np.flatnonzero(got.keep), ref.index.to_numpy())
    assert drop_nonfinite(X[got.keep]).n_dropped == 0


def test_stack_lags_equals_pandas_shifts() -> None:
    d = panel(20, 4)
    rng = np.random.default_rng(12345)
    X = rng.normal(size=(d["sym"].size, 3))
    got = stack_lags(d["sym"], d["ts"], X, 3)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["sym"], df["ts"] = d["sym"], d["ts"]
    df = df.sort_values(["sym", "ts"])
    parts = [df.groupby("sym")[["a", "b", "c"]].shift(lag) for lag in (2, 1, 0)]
    ref = pd.concat(parts, axis=1).sort_index().to_numpy()
    np.testing.assert_array_equal(got, ref)
