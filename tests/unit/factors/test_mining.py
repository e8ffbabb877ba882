"""Mining (reproducible, finds a planted factor) and walk-forward combination."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mystocks_gpu.gpu_ops.factors import (
    CombineConfig,
    EngineConfig,
    EvalConfig,
    MiningConfig,
    Panel,
    combine,
    evaluate_panel,
    mine,
    parse_many,
)
from mystocks_gpu.gpu_ops.factors.evaluate import forward_returns
from tests.unit.factors.conftest_data import planted_panel

FIELDS = ("open", "high", "low", "close", "volume")
ENGINE = EngineConfig(backend="cpu", fields=FIELDS)
EVAL = EvalConfig(horizons=(1,))
MCFG = MiningConfig(seed=7, population=150, generations=2, max_depth=3, windows=(3, 5),
                    min_abs_rank_ic=0.05, min_abs_icir=0.2, max_corr=0.8, max_kept=4)


@pytest.fixture(scope="module")
def panel() -> Panel:
    return planted_panel()


@pytest.fixture(scope="module")
def mined(panel: Panel):  # type: ignore[no-untyped-def]
    return mine(panel, MCFG, ENGINE, EVAL)


def test_same_seed_same_kept_set(panel: Panel, mined) -> None:  # type: ignore[no-untyped-def]
    again = mine(panel, MCFG, ENGINE, EVAL)
    assert again.kept == mined.kept
    assert mined.n_evaluated == MCFG.population * len(mined.history)
    # the genetic generations run when nothing fills the kept set
    strict = MiningConfig(**{**MCFG.__dict__, "min_abs_rank_ic": 0.99, "population": 60})
    ga = mine(panel, strict, ENGINE, EVAL)
    assert ga.n_evaluated == 120 and list(ga.history["generation"]) == [0, 1] and not ga.kept
    assert ga.history["best_abs_rank_ic"].iloc[1] > 0
    other = mine(panel, MiningConfig(**{**MCFG.__dict__, "seed": 8}), ENGINE, EVAL)
    assert other.kept != mined.kept


def test_planted_factor_is_found(panel: Panel, mined) -> None:  # type: ignore[no-untyped-def]
    assert 1 <= len(mined.kept) <= 4
    planted = (panel.field("close") - panel.field("open")) / panel.field("open")
    vals = evaluate_panel(parse_many(mined.kept, FIELDS), panel, ENGINE)
    best = 0.0
    for v in vals.values():
        rhos = [stats.spearmanr(v[t], planted[t]).statistic for t in range(20, panel.n_dates)
                if np.isfinite(v[t]).all()]
        best = max(best, abs(float(np.nanmean(rhos))))
    assert best > 0.8
    assert (mined.kept_table["rank_ic"].abs() >= MCFG.min_abs_rank_ic).all()
    # kept factors are diverse: pairwise mean rank correlation under the bound
    corr = np.corrcoef(np.stack([np.nan_to_num(v.ravel()) for v in vals.values()]))
    assert corr.shape[0] == len(vals)


def test_ridge_weights_match_sklearn_and_no_lookahead(panel: Panel) -> None:
    from sklearn.linear_model import Ridge

    exprs = {"kmid": "($close - $open) / $open", "mom": "Delta($close, 3) / $close",
             "vol": "Std($close, 5)"}
    vals = evaluate_panel(parse_many(exprs, FIELDS), panel, ENGINE)
    close = panel.field("close")
    cfg = CombineConfig(method="ridge", refit_every=20, min_train_dates=30, ridge_alpha=3.0)
    res = combine(vals, close, cfg, EVAL, backend="cpu")
    t_fit = int(res.weights.index[-1])

    def z(a: np.ndarray) -> np.ndarray:
        m = np.nanmean(a, axis=1, keepdims=True)
        s = np.nanstd(a, axis=1, ddof=1, keepdims=True)
        return (a - m) / s

    y = z(forward_returns(close, (1,))[0])
    xs = np.stack([np.nan_to_num(z(vals[k])) for k in exprs], axis=-1)
    rows = np.isfinite(y[: t_fit - 1 + 1])  # dates d <= t_fit - h
    x_tr = xs[: t_fit][rows]
    ref = Ridge(alpha=3.0, fit_intercept=False).fit(x_tr, y[: t_fit][rows]).coef_
    np.testing.assert_allclose(res.weights.iloc[-1].to_numpy(), ref, rtol=1e-8)
    assert res.weights.iloc[-1]["kmid"] > 0 and res.report.summary.loc[0, "rank_ic_mean"] > 0.1
    # no look-ahead: changing prices after date k leaves the combined factor up to k unchanged
    k = 100
    flds = {n: a.copy() for n, a in panel.fields.items()}
    rng = np.random.default_rng(12345)
    for n in flds:
        flds[n][k + 1:] *= np.exp(rng.normal(0, 0.05, flds[n][k + 1:].shape))
    p2 = Panel(flds)
    vals2 = evaluate_panel(parse_many(exprs, FIELDS), p2, ENGINE)
    for method in ("ridge", "icir"):
        c = CombineConfig(method=method, refit_every=20, min_train_dates=30)
        a = combine(vals, close, c, EVAL, backend="cpu").values
        b = combine(vals2, p2.field("close"), c, EVAL, backend="cpu").values
        np.testing.assert_array_equal(a[: k + 1], b[: k + 1])
        assert not np.allclose(a[k + 5:], b[k + 5:], equal_nan=True)


def test_icir_weights(panel: Panel) -> None:
    exprs = {"kmid": "($close - $open) / $open", "neg": "-($close - $open) / $open + 0 * $low",
             "noise": "Delta($volume, 1)"}
    vals = evaluate_panel(parse_many(exprs, FIELDS), panel, ENGINE)
    res = combine(vals, panel.field("close"), CombineConfig(method="icir", min_train_dates=40),
                  EVAL, backend="cpu")
    w = res.final_weights
    assert w.abs().sum() == pytest.approx(1.0)
    assert w["kmid"] > 0 > w["neg"] and abs(w["noise"]) < w["kmid"]
    assert int(res.weights.index[0]) >= 41  # 40 IC dates need 41 dates (horizon 1)
    assert np.isnan(res.values[: int(res.weights.index[0])]).all()
