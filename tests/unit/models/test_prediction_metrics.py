"""Metrics against scipy, scikit-learn and pandas."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mean_squared_error, r2_score

from mystocks_gpu.gpu_ops.models import TrainingDataError, evaluate, ic_by_date
from mystocks_gpu.gpu_ops.models.prediction_metrics import group_ranks


def _cross_sections(n_dates: int = 40, seed: int = 12345, ties: bool = False) -> tuple[np.ndarray, ...]:
    """Unequal cross-sections (1..30 rows per date, dates unsorted), a weak signal; with
    ``ties`` values are rounded so ranks tie."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 31, n_dates)
    dates = np.repeat(rng.permutation(n_dates).astype(np.int64) * 7 + 3, sizes)
    y = rng.normal(size=dates.size)
    f = 0.3 * y + rng.normal(size=dates.size)
    if ties:
        y, f = np.round(y, 0), np.round(f * 2, 0)
    order = rng.permutation(dates.size)
    return y[order], f[order], dates[order]


@pytest.mark.parametrize("ties", [False, True])
def test_ic_and_rank_ic_per_date_equal_scipy(ties: bool) -> None:
    y, f, d = _cross_sections(ties=ties)
    daily = ic_by_date(y, f, d)
    assert list(daily.dates) == sorted(set(d.tolist()))
    n_checked = 0
    for k, date in enumerate(daily.dates):
        m = d == date
        assert daily.n[k] == m.sum()
        if m.sum() < 2 or np.ptp(y[m]) == 0 or np.ptp(f[m]) == 0:
            assert np.isnan(daily.ic[k]) and np.isnan(daily.rank_ic[k])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = stats.spearmanr(f[m], y[m]).statistic
            r = stats.pearsonr(f[m], y[m]).statistic
        assert daily.rank_ic[k] == pytest.approx(rho, abs=1e-12)
        assert daily.ic[k] == pytest.approx(r, abs=1e-12)
        n_checked += 1
    assert n_checked > 30


def test_group_ranks_equal_scipy_rankdata() -> None:
    y, _, d = _cross_sections(ties=True)
    r = group_ranks(y, np.unique(d, return_inverse=True)[1])
    for date in np.unique(d):
        m = d == date
        np.testing.assert_array_equal(r[m], stats.rankdata(y[m], method="average"))


def test_pooled_metrics_equal_sklearn_and_pandas() -> None:
    y, f, d = _cross_sections()
    m, daily = evaluate(y, f, d)
    assert m.mse == pytest.approx(mean_squared_error(y, f), rel=1e-12)
    assert m.r2 == pytest.approx(r2_score(y, f), rel=1e-12)
    df = pd.DataFrame({"y": y, "f": f, "d": d})
    per_date = df.groupby("d").apply(
        lambda g: pd.Series({"ic": g["f"].corr(g["y"]), "ric": g["f"].corr(g["y"], method="spearman")}),
        include_groups=False)
    ic = per_date["ic"].dropna()
    ric = per_date["ric"].dropna()
    assert m.n_ic_dates == len(ic)
    assert m.ic_mean == pytest.approx(ic.mean(), abs=1e-12)
    assert m.rank_ic_mean == pytest.approx(ric.mean(), abs=1e-12)
    assert m.icir == pytest.approx(ic.mean() / ic.std(), abs=1e-12)
    assert m.rank_icir == pytest.approx(ric.mean() / ric.std(), abs=1e-12)
    assert m.hit_rate == pytest.approx((np.sign(df["f"]) == np.sign(df["y"])).mean(), abs=0)
    assert (m.n_rows, m.n_dates) == (len(y), df["d"].nunique())


def test_r2_edge_cases_follow_sklearn() -> None:
    y = np.ones(6)
    d = np.zeros(6, dtype=np.int64)
    assert evaluate(y, y.copy(), d)[0].r2 == r2_score(y, y)
    assert evaluate(y, y + 1, d)[0].r2 == r2_score(y, y + 1)


def test_hit_rate_counts_zero_only_against_zero() -> None:
    y = np.array([0.0, 1.0, -1.0, 0.5])
    f = np.array([0.0, 0.0, -2.0, -0.1])
    ref = float(np.mean(np.sign(f) == np.sign(y)))
    assert evaluate(y, f, np.arange(4))[0].hit_rate == ref


def test_bad_shapes() -> None:
    with pytest.raises(TrainingDataError, match="equal length"):
        evaluate(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(TrainingDataError, match="no rows"):
        evaluate(np.zeros(0), np.zeros(0), np.zeros(0))
