"""Sum and Mean equal pandas' ``rolling(w, min_periods=w).sum() / .mean()`` bit for bit.

Rounding matters here: in Alpha158's ``VSUMP5 = Sum(Greater(dv, 0), 5) / (Sum(Abs(dv), 5) + 1e-12)``
the exact value is 1.0 (0.0 for VSUMN5) for every symbol whose volume rose (fell) on each of the
5 bars, a tie across many symbols. Running sums that round differently from pandas break those
ties in a different order, which moved the rank IC by up to 7e-4 against a pandas implementation.
The references below are pandas itself (and scipy for the rank correlation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mystocks_gpu.gpu_ops.factors import EngineConfig, Panel, evaluate_panel, parse_many

CPU = EngineConfig(backend="cpu")


def _hard_series(n_dates: int = 400, n_symbols: int = 12, seed: int = 7) -> np.ndarray:
    """Magnitudes over 8 decades (big values leave the window next to small ones), signs,
    exact zeros and -0.0, constant runs, NaN and ±inf."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(13, 2.0, (n_dates, n_symbols))
    x *= rng.choice([1.0, -1.0, 1e-6, 0.0], size=x.shape, p=[0.6, 0.2, 0.1, 0.1])
    x[rng.random(x.shape) < 0.005] = np.nan
    x[rng.random(x.shape) < 0.002] = np.inf
    x[100:130, 3] = 7.25
    x[200:210, 4] = -0.0
    x[300:340, 5] = 0.0
    x[50:80, 6] = -3.5
    return x


def _bits(a: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(a), 0, a.view(np.int64))


@pytest.mark.parametrize("w", [1, 2, 5, 20, 60])
def test_sum_and_mean_equal_pandas_bit_for_bit(w: int) -> None:
    x = _hard_series()
    dv = np.vstack([np.full((1, x.shape[1]), np.nan), np.diff(x, axis=0)])
    ours = evaluate_panel(parse_many({"s": f"Sum($close, {w})", "m": f"Mean($close, {w})",
                                      "g": f"Sum(Greater($open, 0), {w})"}),
                          Panel({"close": x, "open": dv}), CPU)
    roll = pd.DataFrame(x).rolling(w, min_periods=w)  # pandas maps ±inf to NaN, as we do
    g = pd.DataFrame(np.maximum(dv, 0.0))  # Greater(-inf, 0) = 0; NaN stays NaN
    ref = {"s": roll.sum().to_numpy(), "m": roll.mean().to_numpy(),
           "g": g.rolling(w, min_periods=w).sum().to_numpy()}
    for k, r in ref.items():
        assert np.array_equal(np.isnan(ours[k]), np.isnan(r)), k
        assert np.isfinite(r).sum() > 0.2 * r.size, k
        assert np.array_equal(_bits(ours[k]), _bits(r)), k  # same bits, signed zeros included


def test_ratio_of_sums_keeps_pandas_ties_and_rank_ic() -> None:
    rng = np.random.default_rng(42)
    t_n, s_n = 300, 100
    v = rng.lognormal(13, 0.8, (t_n, s_n))
    v[rng.random(v.shape) < 0.01] = np.nan
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.02, (t_n, s_n)), axis=0))
    exprs = {
        "p": "Sum(Greater($volume - Ref($volume, 1), 0), 5) / (Sum(Abs($volume - Ref($volume, 1)), 5) + 1e-12)",
        "n": "Sum(Greater(Ref($volume, 1) - $volume, 0), 5) / (Sum(Abs($volume - Ref($volume, 1)), 5) + 1e-12)",
    }
    ours = evaluate_panel(parse_many(exprs), Panel({"volume": v, "close": c}), CPU)
    d = pd.DataFrame(v).diff()
    den = d.abs().rolling(5, min_periods=5).sum() + 1e-12
    ref = {"p": (d.clip(lower=0).rolling(5, min_periods=5).sum() / den).to_numpy(),
           "n": ((-d).clip(lower=0).rolling(5, min_periods=5).sum() / den).to_numpy()}
    fwd = pd.DataFrame(c).pct_change(1).shift(-1).to_numpy()
    ups = (d > 0).astype(float).rolling(5, min_periods=5).sum().to_numpy()
    downs = (d < 0).astype(float).rolling(5, min_periods=5).sum().to_numpy()
    for k, r in ref.items():
        np.testing.assert_array_equal(ours[k], r)
        # the exact-arithmetic ties this test is about occur: 5 rises (falls) in a row give
        # exactly 1.0 and 0.0 (~1 in 720 iid bars), which rolling sums round to within ulps
        one, zero = (ups == 5, downs == 5) if k == "p" else (downs == 5, ups == 5)
        assert one.sum() > 20 and zero.sum() > 20, k
        np.testing.assert_allclose(r[one], 1.0, rtol=0, atol=1e-13)
        np.testing.assert_allclose(r[zero], 0.0, rtol=0, atol=1e-13)
        for t in range(10, t_n - 1, 7):
            ok = np.isfinite(r[t]) & np.isfinite(fwd[t])
            assert stats.spearmanr(ours[k][t, ok], fwd[t, ok])[0] == pytest.approx(
                stats.spearmanr(r[t, ok], fwd[t, ok])[0], abs=1e-15)
