"""A dozen Alpha158 factors from the shipped library against hand-written pandas versions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.factors import (
    EngineConfig,
    Panel,
    evaluate_panel,
    load_library,
    parse_many,
)
from tests.unit.factors.conftest_data import random_fields

NAMES = ["KMID", "KSFT2", "VWAP0", "ROC5", "MA10", "STD20", "BETA10", "RSQR5", "RESI10", "QTLU10",
         "RSV5", "IMXD10", "CORR5", "CNTD10", "SUMP5", "WVMA5", "VSUMD10", "RANK5"]


def hand_written(f: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    o, h, lo, c, v, vw = (f[k] for k in ("open", "high", "low", "close", "volume", "vwap"))
    eps = 1e-12
    ret = c / c.shift(1)
    up = c > c.shift(1)
    valid = c.notna() & c.shift(1).notna()
    dc = c - c.shift(1)
    dv = v - v.shift(1)

    def slope(s: pd.Series) -> float:
        return float(np.polyfit(np.arange(1, len(s) + 1), s, 1)[0])

    def rsq(s: np.ndarray) -> float:
        return float(np.corrcoef(np.arange(len(s)), s)[0, 1] ** 2)

    def resi(s: np.ndarray) -> float:
        x = np.arange(1, len(s) + 1)
        b, a = np.polyfit(x, s, 1)
        return float(s[-1] - (a + b * x[-1]))

    def rv(d: pd.DataFrame, w: int) -> pd.core.window.rolling.Rolling:
        return d.rolling(w, min_periods=w)

    return {
        "KMID": (c - o) / o,
        "KSFT2": (2 * c - h - lo) / (h - lo + eps),
        "VWAP0": vw / c,
        "ROC5": c.shift(5) / c,
        "MA10": rv(c, 10).mean() / c,
        "STD20": rv(c, 20).std() / c,
        "BETA10": rv(c, 10).apply(slope, raw=True) / c,
        "RSQR5": rv(c, 5).apply(rsq, raw=True),
        "RESI10": rv(c, 10).apply(resi, raw=True) / c,
        "QTLU10": rv(c, 10).quantile(0.8) / c,
        "RSV5": (c - rv(lo, 5).min()) / (rv(h, 5).max() - rv(lo, 5).min() + eps),
        "IMXD10": (rv(h, 10).apply(np.argmax, raw=True) - rv(lo, 10).apply(np.argmin, raw=True)) / 10,
        "CORR5": rv(c, 5).corr(np.log(v + 1)),
        "CNTD10": rv(up.astype(float).where(valid), 10).mean()
        - rv((c < c.shift(1)).astype(float).where(valid), 10).mean(),
        "SUMP5": rv(dc.clip(lower=0), 5).sum() / (rv(dc.abs(), 5).sum() + eps),
        "WVMA5": rv((ret - 1).abs() * v, 5).std() / (rv((ret - 1).abs() * v, 5).mean() + eps),
        "VSUMD10": (rv(dv.clip(lower=0), 10).sum() - rv((-dv).clip(lower=0), 10).sum())
        / (rv(dv.abs(), 10).sum() + eps),
        "RANK5": rv(c, 5).apply(lambda a: (np.sum(a < a[-1]) + (np.sum(a == a[-1]) + 1) / 2) / 5,
                                raw=True),
    }


def test_alpha158_factors_match_hand_written_pandas() -> None:
    fields = random_fields(n_dates=80, n_symbols=6, nan_frac=0.02)
    lib = load_library("alpha158")
    ours = evaluate_panel(parse_many({k: lib[k] for k in NAMES}), Panel(fields),
                          EngineConfig(backend="cpu"))
    ref = hand_written({k: pd.DataFrame(v) for k, v in fields.items()})
    for k in NAMES:
        r = ref[k].to_numpy()
        assert np.array_equal(np.isnan(ours[k]), np.isnan(r)), k
        assert np.isfinite(r).sum() > 0.3 * r.size, k
        np.testing.assert_allclose(ours[k], r, rtol=1e-7, atol=1e-10, equal_nan=True, err_msg=k)


@pytest.mark.parametrize("name", ["KLEN", "KUP", "KLOW2", "OPEN0", "MIN5", "IMIN20"])
def test_more_alpha158_closed_forms(name: str) -> None:
    fields = random_fields(n_dates=40, n_symbols=4, nan_frac=0.0)
    f = {k: pd.DataFrame(v) for k, v in fields.items()}
    o, h, lo, c = f["open"], f["high"], f["low"], f["close"]
    ref = {"KLEN": (h - lo) / o, "KUP": (h - np.maximum(o, c)) / o,
           "KLOW2": (np.minimum(o, c) - lo) / (h - lo + 1e-12), "OPEN0": o / c,
           "MIN5": lo.rolling(5).min() / c,
           "IMIN20": lo.rolling(20).apply(lambda a: np.argmin(a) + 1, raw=True) / 20}[name]
    ours = evaluate_panel(parse_many({name: load_library()[name]}), Panel(fields),
                          EngineConfig(backend="cpu"))[name]
    np.testing.assert_allclose(ours, ref.to_numpy(), rtol=1e-9, equal_nan=True)
