"""Factor metrics against alphalens-reloaded and scipy; the GPU code path against the CPU twin."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mystocks_gpu.gpu_ops.factors import EngineConfig, EvalConfig, Evaluator, Panel, run_factors
from mystocks_gpu.gpu_ops.factors.evaluate import MetricsCpu, MetricsXp, forward_returns
from tests.unit.factors.conftest_data import random_fields

al = pytest.importorskip("alphalens")

T, N = 110, 25
HORIZONS = (1, 5, 20)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12345)
    flds = random_fields(n_dates=T, n_symbols=N, nan_frac=0.03)
    f = rng.normal(size=(T, N)) + 0.3 * np.nan_to_num(np.log(flds["close"] / 100))
    f[rng.random((T, N)) < 0.05] = np.nan
    f[12] = np.round(f[12])  # ties: quantile edges not unique -> date dropped (Alphalens)
    return {"close": flds["close"], "f": f}


@pytest.fixture(scope="module")
def alphalens_data(data: dict[str, np.ndarray]) -> pd.DataFrame:
    dates = pd.bdate_range("2021-01-04", periods=T)
    syms = [f"S{i:02d}" for i in range(N)]
    fs = pd.DataFrame(data["f"], index=dates, columns=syms).stack()
    fs.index.names = ["date", "asset"]
    prices = pd.DataFrame(data["close"], index=dates, columns=syms)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return al.utils.get_clean_factor_and_forward_returns(
            fs, prices, periods=HORIZONS, quantiles=5, filter_zscore=None, max_loss=1.0)


@pytest.fixture(scope="module")
def ours(data: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    return Evaluator(data["close"], EvalConfig(horizons=HORIZONS), backend="cpu").evaluate(
        {"f": data["f"]}, keep_ranks=True)


def _on_dates(x: np.ndarray, idx: pd.Index) -> np.ndarray:
    dates = pd.bdate_range("2021-01-04", periods=T)
    return pd.Series(x, index=dates).reindex(idx).to_numpy()


def test_rank_ic_matches_alphalens(alphalens_data: pd.DataFrame, ours) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ic = al.performance.factor_information_coefficient(alphalens_data)
    assert ic.shape[0] > 80
    for hi in range(3):
        ref = ic.iloc[:, hi].to_numpy()
        got = _on_dates(ours.rank_ic[0, hi], ic.index)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    # the tie date was dropped by Alphalens and by us
    tie_date = pd.bdate_range("2021-01-04", periods=T)[12]
    assert tie_date not in ic.index or ic.loc[tie_date].isna().all()
    assert np.isnan(ours.rank_ic[0, :, 12]).all()


def test_quantile_returns_spread_turnover_autocorr_match_alphalens(
        alphalens_data: pd.DataFrame, ours) -> None:  # type: ignore[no-untyped-def]
    mr, _ = al.performance.mean_return_by_quantile(alphalens_data, by_date=True)
    for hi in range(3):
        q = mr.iloc[:, hi].unstack(0)  # date x quantile
        got = np.stack([_on_dates(ours.quantile_returns[0, hi, :, k], q.index) for k in range(5)], 1)
        np.testing.assert_allclose(got, q.to_numpy(), rtol=1e-10, atol=1e-14)
        spread, _ = al.performance.compute_mean_returns_spread(mr.iloc[:, [hi]], 5, 1)
        assert ours.summary.loc[hi, "spread"] == pytest.approx(float(spread.iloc[:, 0].mean()), rel=1e-10)
        for qn in range(1, 6):
            assert ours.summary.loc[hi, f"q{qn}"] == pytest.approx(float(q[qn].mean()), rel=1e-9)
    fq = alphalens_data["factor_quantile"]
    for hi, p in enumerate(HORIZONS):
        for qn in (1, 5):
            to = al.performance.quantile_turnover(fq, qn, period=p)
            got = _on_dates(ours.turnover[0, hi, :, qn - 1], to.index)
            np.testing.assert_allclose(got, to.to_numpy(dtype=float), rtol=1e-12, equal_nan=True)
        ac = al.performance.factor_rank_autocorrelation(alphalens_data, period=p)
        got = _on_dates(ours.autocorr[0, hi], ac.index)
        np.testing.assert_allclose(got, ac.to_numpy(dtype=float), rtol=1e-10, atol=1e-12, equal_nan=True)
        assert ours.summary.loc[hi, "turnover_top"] == pytest.approx(np.nanmean(ours.turnover[0, hi, :, 4]))


def test_ic_stats_match_scipy(data: dict[str, np.ndarray], ours) -> None:  # type: ignore[no-untyped-def]
    fwd = forward_returns(data["close"], HORIZONS)
    f = data["f"]
    mask = np.isfinite(f) & np.isfinite(fwd).all(axis=0)
    n_checked = 0
    for t in range(T):
        m = mask[t]
        if m.sum() < 3 or np.isnan(ours.rank_ic[0, 0, t]):
            continue
        rho = stats.spearmanr(f[t, m], fwd[0, t, m]).statistic
        r = stats.pearsonr(f[t, m], fwd[0, t, m]).statistic
        assert ours.rank_ic[0, 0, t] == pytest.approx(rho, abs=1e-12)
        assert ours.ic[0, 0, t] == pytest.approx(r, abs=1e-12)
        n_checked += 1
    assert n_checked > 80
    ric = ours.rank_ic[0, 0][np.isfinite(ours.rank_ic[0, 0])]
    tt = stats.ttest_1samp(ric, 0.0)
    row = ours.summary.iloc[0]
    assert row["rank_ic_tstat"] == pytest.approx(tt.statistic, rel=1e-10)
    assert row["rank_icir"] == pytest.approx(ric.mean() / ric.std(ddof=1), rel=1e-12)


def test_gpu_code_path_matches_cpu(data: dict[str, np.ndarray], ours) -> None:  # type: ignore[no-untyped-def]
    gx = Evaluator(data["close"], EvalConfig(horizons=HORIZONS), impl=MetricsXp(np)).evaluate(
        {"f": data["f"]})
    for a, b in [(gx.ic, ours.ic), (gx.rank_ic, ours.rank_ic), (gx.quantile_returns,
                 ours.quantile_returns), (gx.turnover, ours.turnover), (gx.autocorr, ours.autocorr)]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_factors_sharing_a_sample_match_the_array_program(data: dict[str, np.ndarray]) -> None:
    """Factors with the same missing bars share the return side of their sample (CPU): in any
    order, and mixed with other samples, each factor's metrics equal those of the array program
    (``MetricsXp`` with NumPy, which ranks every factor's sample from scratch)."""
    rng = np.random.default_rng(12345)
    f = data["f"]
    miss = ~np.isfinite(f)
    g = rng.normal(size=(T, N))
    g[miss] = np.nan  # same sample as f
    g[30] = np.round(g[30])  # ties within the shared sample
    h = rng.normal(size=(T, N))
    h[rng.random((T, N)) < 0.2] = np.nan  # a sample of its own
    k = f * 2.0 + 1.0  # same sample and ranks as f, other values
    values = {"f": f, "h": h, "g": g, "empty": np.full((T, N), np.nan), "k": k}
    cfg = EvalConfig(horizons=HORIZONS)
    ours = Evaluator(data["close"], cfg, impl=MetricsCpu(threads=2)).evaluate(values, keep_ranks=True)
    ref = Evaluator(data["close"], cfg, impl=MetricsXp(np)).evaluate(values, keep_ranks=True)
    assert ours.names == list(values) and ours.status == ref.status
    pd.testing.assert_frame_equal(ours.summary, ref.summary, rtol=1e-10)
    for a, b in [(ours.ic, ref.ic), (ours.rank_ic, ref.rank_ic), (ours.quantile_returns,
                 ref.quantile_returns), (ours.turnover, ref.turnover),
                 (ours.autocorr, ref.autocorr), (ours.ranks, ref.ranks)]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, equal_nan=True)
    np.testing.assert_array_equal(ours.rank_ic[3], np.nan)


def test_unbinnable_dates_setting_and_all_nan_factor(data: dict[str, np.ndarray]) -> None:
    keep = Evaluator(data["close"], EvalConfig(horizons=(1,), drop_unbinnable_dates=False),
                     backend="cpu")
    rep = keep.evaluate({"f": data["f"], "empty": np.full((T, N), np.nan)})
    assert np.isfinite(rep.rank_ic[0, 0, 12]) and np.isnan(rep.quantile_returns[0, 0, 12]).all()
    assert rep.status == ["ok", "all_nan"]
    row = rep.summary.set_index("factor").loc["empty"]
    assert row["status"] == "all_nan" and np.isnan(row["rank_ic_mean"])


def test_run_factors_correlation_and_batches(data: dict[str, np.ndarray]) -> None:
    flds = random_fields(n_dates=T, n_symbols=N)
    exprs = {"a": "Delta($close, 5)", "b": "-Delta($close, 5) + $open * 0", "c": "Std($close, 10)",
             "nan": "Log(-$volume)"}
    panel = Panel(flds)
    seen: list[dict[str, np.ndarray]] = []
    rep = run_factors(exprs, panel, EngineConfig(backend="cpu"), EvalConfig(factor_batch=2),
                      on_values=seen.append)
    assert [len(s) for s in seen] == [2, 2]
    corr = rep.correlation_frame()
    assert corr.loc["a", "b"] == pytest.approx(-1.0)
    assert corr.loc["a", "a"] == pytest.approx(1.0)
    assert rep.status[3] == "all_nan" and np.isnan(corr.loc["nan", "a"])
    # reference: per date, rank each factor over its own sample (finite value and forward
    # returns), Pearson of the ranks over the symbols both rank; mean over dates
    fwd = forward_returns(flds["close"], HORIZONS)
    ok_ret = np.isfinite(fwd).all(axis=0)
    a, c = seen[0]["a"], seen[1]["c"]
    vals = []
    for t in range(T):
        ma, mc = np.isfinite(a[t]) & ok_ret[t], np.isfinite(c[t]) & ok_ret[t]
        ra, rc = np.full(N, np.nan), np.full(N, np.nan)
        ra[ma], rc[mc] = stats.rankdata(a[t, ma]), stats.rankdata(c[t, mc])
        both = ma & mc
        if both.sum() >= 2:
            vals.append(stats.pearsonr(ra[both], rc[both]).statistic)
        if both.sum() >= 2 and ma.sum() == mc.sum() == both.sum():  # same sample: Spearman
            assert vals[-1] == pytest.approx(stats.spearmanr(a[t, both], c[t, both]).statistic)
    assert corr.loc["a", "c"] == pytest.approx(np.nanmean(vals), abs=1e-9)
    same = run_factors(exprs, panel, EngineConfig(backend="cpu"), EvalConfig(factor_batch=0))
    pd.testing.assert_frame_equal(same.summary, rep.summary)
