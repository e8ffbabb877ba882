"""The train job's panel, labels and row policy (no broker: replayed frames built here) against
a pandas reference: last row per (symbol, step), outer join, forward returns by bars and by
seconds, exact label end, NaN policy counts; the bad-input errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.models import TrainingDataError
from mystocks_gpu.processors.training.train_spec import TrainSpec
from mystocks_gpu.processors.training.training_data import InputFrame, build_training_data
from mystocks_gpu.schemas.symbols import SymbolTable

S = 10**9
NAMES = ["ZED", "ALF", "MID", "BEE"]  # interned in this order: codes are not name order


def _frames(seed: int = 0, nan_rows: int = 0) -> tuple[dict[str, InputFrame], SymbolTable, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    table = SymbolTable()
    for s in NAMES:
        table.code(s)
    n = 3000
    fs = rng.integers(0, 4, n).astype(np.int32)
    fts = np.sort(rng.integers(0, 120 * S, n))
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    if nan_rows:
        a[rng.choice(n, nan_rows, replace=False)] = np.nan
    feat = InputFrame("t.f", "mystocks.features.FeatureVector", fs, fts, {"a": a, "b": b}, n, 2, ("a", "b"))
    rows = [(s, t * S) for s in range(4) for t in range(120) if rng.random() > 0.1]  # some seconds lack a bar
    bs = np.array([r[0] for r in rows], np.int32)
    bts = np.array([r[1] for r in rows], np.int64) + 5  # inside the second
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, len(rows))))
    bars = InputFrame("md.bars.1s", "mystocks.md.Bar", bs, bts, {"close": close, "volume": np.ones(len(rows))},
                      len(rows), 0, ("close", "volume"))
    fdf = pd.DataFrame({"sym": fs, "ts": fts, "a": a, "b": b, "arr": np.arange(n)})
    bdf = pd.DataFrame({"sym": bs, "ts": bts, "close": close})
    return {"t.f": feat, "md.bars.1s": bars}, table, fdf, bdf


def _spec(**kw: Any) -> TrainSpec:
    base = {"name": "p", "inputs": ["t.f", "md.bars.1s"], "features": ["b", "a"], "frequency": "1s",
            "label_column": "md.bars.1s:close", "horizon": 3}
    return TrainSpec.from_dict({**base, **kw})


def _reference(fdf: pd.DataFrame, bdf: pd.DataFrame, horizon: int, unit: str, policy_drop: bool = True) -> pd.DataFrame:
    f = fdf.assign(date=fdf["ts"] // S * S).sort_values(["sym", "date", "ts", "arr"])
    f = f.groupby(["sym", "date"], as_index=False).tail(1)[["sym", "date", "a", "b"]]
    p = bdf.assign(date=bdf["ts"] // S * S).sort_values(["sym", "date", "ts"]).groupby(["sym", "date"]).tail(1)
    p = p[["sym", "date", "close"]].sort_values(["sym", "date"])
    if unit == "bars":
        g = p.groupby("sym")
        p = p.assign(label=np.log(g["close"].shift(-horizon) / p["close"]), label_end=g["date"].shift(-horizon))
    else:
        ahead = p.assign(date=p["date"] - horizon * S).rename(columns={"close": "c1"})
        p = p.merge(ahead, on=["sym", "date"], how="left")
        p = p.assign(label=np.log(p["c1"] / p["close"]), label_end=p["date"] + horizon * S)
    panel = f.merge(p[["sym", "date", "label", "label_end"]], on=["sym", "date"], how="left")
    panel["name"] = np.asarray(NAMES)[panel["sym"]]
    panel = panel.sort_values(["name", "date"]).reset_index(drop=True)
    return panel.dropna(subset=["a", "b", "label"]) if policy_drop else panel


@pytest.mark.parametrize("unit, horizon", [("bars", 3), ("seconds", 4)])
def test_panel_labels_and_row_policy_equal_pandas(unit: str, horizon: int) -> None:
    frames, table, fdf, bdf = _frames(nan_rows=40)
    td = build_training_data(_spec(horizon=horizon, horizon_unit=unit), frames, table)
    ref = _reference(fdf, bdf, horizon, unit)
    np.testing.assert_array_equal(td.X, ref[["b", "a"]].to_numpy())  # spec order of the features
    np.testing.assert_array_equal(td.y, ref["label"].to_numpy())
    np.testing.assert_array_equal(td.dates, ref["date"].to_numpy())
    np.testing.assert_array_equal(td.label_end, ref["label_end"].to_numpy(np.int64))
    assert [td.symbols[c] for c in td.sym] == ref["name"].tolist()
    full = _reference(fdf, bdf, horizon, unit, policy_drop=False)
    no_label = int(full["label"].isna().sum())
    assert td.counts["panel_rows"] == len(full) and td.counts["rows_used"] == len(ref)
    assert td.counts["rows_dropped"] == {"label_undefined": no_label,
                                         "nonfinite_features": int((full["label"].notna() & full["a"].isna()).sum())}
    assert td.counts["rows_dropped"]["nonfinite_features"] > 0
    assert td.columns == ["b", "a"] and td.feature_inputs == {"a": "t.f", "b": "t.f"} and td.step_ns == S
    assert (td.label_end > td.dates).all()  # a label is known only after its row: never from before


def test_universe_and_bars_without_frequency() -> None:
    frames, table, fdf, bdf = _frames()
    bars = frames["md.bars.1s"]
    spec = TrainSpec.from_dict({"name": "q", "inputs": ["md.bars.1s"], "features": ["volume", "close"],
                                "universe": ["MID", "ALF"], "horizon": 2})
    td = build_training_data(spec, {"md.bars.1s": bars}, table)
    p = bdf[bdf["sym"].isin([1, 2])].assign(name=lambda d: np.asarray(NAMES)[d["sym"]]).sort_values(["name", "ts"])
    p["label"] = np.log(p.groupby("sym")["close"].shift(-2) / p["close"])
    p = p.dropna(subset=["label"])
    np.testing.assert_array_equal(td.dates, p["ts"].to_numpy())
    np.testing.assert_array_equal(td.y, p["label"].to_numpy())
    assert set(td.symbols[c] for c in td.sym) == {"MID", "ALF"}


@pytest.mark.parametrize("kw, message", [
    ({"features": ["a", "nope"]}, "unknown feature column 'nope': t.f carries a, b; md.bars.1s carries close, volume"),
    ({"features": ["t.f:volume"]}, "unknown feature column 'volume': t.f carries a, b"),
    ({"horizon": 500}, "label horizon 500 bars is longer than the data"),
    ({"horizon": 200, "horizon_unit": "seconds"}, "label horizon 200 s is longer than the data"),
    ({"nan_policy": "reject"}, "row(s) have NaN/inf features (nan_policy='reject'); first: symbol"),
    ({"universe": ["NOPE"]}, "empty range: no rows of the universe"),
    ({"max_rows": 10}, "more than max_rows=10"),
])
def test_bad_input_is_a_clear_error(kw: dict[str, Any], message: str) -> None:
    frames, table, _, _ = _frames(nan_rows=300)
    with pytest.raises(TrainingDataError) as ei:
        build_training_data(_spec(**kw), frames, table)
    assert message in str(ei.value), str(ei.value)


def test_an_ambiguous_column_must_name_its_topic() -> None:
    frames, table, _, _ = _frames()
    frames["t.f"].cols["close"] = frames["t.f"].cols["a"]
    with pytest.raises(TrainingDataError, match="column 'close' is in t.f, md.bars.1s: write it as 'topic:close'"):
        build_training_data(_spec(features=["close"]), frames, table)
    td = build_training_data(_spec(features=["t.f:close"]), frames, table)
    assert td.columns == ["close"]
