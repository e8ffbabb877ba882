"""The pure train-job core: labels -> row policy -> walk-forward fit/predict -> metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error

from mystocks_gpu.gpu_ops.models import (
    SplitProgress,
    TrainingCancelled,
    WalkForwardConfig,
    drop_nonfinite,
    forward_returns,
    run_walk_forward,
)
from tests.unit.models.model_data import panel


def _job_inputs(horizon: int = 2) -> tuple[np.ndarray, ...]:
    """Features from past prices only (1- and 5-bar momentum, noise) and the forward label."""
    d = panel(90, 12)
    order = np.lexsort((d["ts"], d["sym"]))
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    s, c = d["sym"][order], d["close"][order]
    feats = []
    for lag in (1, 5):
        prev = np.roll(c, lag)
        ok = np.roll(s, lag) == s
        ok[:lag] = False
        feats.append(np.where(ok, np.log(c / prev), np.nan))
    rng = np.random.default_rng(12345)
    feats.append(rng.normal(size=c.size))
    X = np.column_stack(feats)[inv]
    lab = forward_returns(d["sym"], d["ts"], d["close"], horizon)
    rows = drop_nonfinite(X, lab.label)
    return rows.X, rows.y, d["date"][rows.keep], lab.label_end[rows.keep], np.array(rows.n_dropped)


def test_each_split_equals_sklearn_on_the_same_rows() -> None:
    X, y, dates, end, dropped = _job_inputs()
    assert dropped > 0
    cfg = WalkForwardConfig(n_splits=3, test_dates=10, label_horizon=2, embargo_dates=1)
    res = run_walk_forward("ridge", {"alpha": 0.5}, X, y, dates, cfg, label_end=end, backend="cpu")
    assert len(res.splits) == 3
    u = np.unique(dates)
    # the date right after each earlier test window is embargoed (embargo_dates=1)
    embargoed = [u[np.searchsorted(u, sp.test_last) + 1] for sp in res.splits[:-1]]
    start = 0
    for sp in res.splits:
        tr = ((dates <= sp.train_last) & (dates >= sp.train_first) & (end < sp.test_first)
              & ~np.isin(dates, embargoed))
        te = (dates >= sp.test_first) & (dates <= sp.test_last)
        ref = Ridge(alpha=0.5).fit(X[tr], y[tr])
        rows = res.oos_rows[start:start + sp.n_test]
        np.testing.assert_array_equal(rows, np.flatnonzero(te))
        np.testing.assert_allclose(res.oos_pred[start:start + sp.n_test], ref.predict(X[te]), atol=1e-12)
        assert sp.metrics.mse == pytest.approx(mean_squared_error(y[te], ref.predict(X[te])), rel=1e-9)
        assert sp.fit_info is not None and sp.fit_info.n_rows == tr.sum() == sp.n_train
        start += sp.n_test
    # pooled out-of-sample metrics: rank IC of the first test date against scipy
    first = res.daily.dates[0]
    m = dates[res.oos_rows] == first
    rho = stats.spearmanr(res.oos_pred[m], y[res.oos_rows][m]).statistic
    assert res.daily.rank_ic[0] == pytest.approx(rho, abs=1e-12)
    assert res.overall.n_rows == res.oos_rows.size


def test_progress_is_tagged_with_the_split_and_cancel_propagates() -> None:
    pytest.importorskip("xgboost")
    X, y, dates, end, _ = _job_inputs()
    cfg = WalkForwardConfig(n_splits=2, test_dates=10, label_horizon=2)
    seen: list[SplitProgress] = []
    run_walk_forward("gbdt", {"n_estimators": 3, "max_depth": 2}, X, y, dates, cfg, label_end=end,
                     backend="cpu", n_threads=1, progress=seen.append)
    assert [(p.split, p.n_splits, p.event.done) for p in seen] == [(0, 2, 1), (0, 2, 2), (0, 2, 3),
                                                                   (1, 2, 1), (1, 2, 2), (1, 2, 3)]
    polls = [0]

    def stop() -> bool:
        polls[0] += 1
        return polls[0] > 5  # split 0: 1 + 3 polls; split 1: stop after its first round

    seen.clear()
    with pytest.raises(TrainingCancelled):
        run_walk_forward("gbdt", {"n_estimators": 3, "max_depth": 2}, X, y, dates, cfg, label_end=end,
                         backend="cpu", n_threads=1, progress=seen.append, should_stop=stop)
    assert [(p.split, p.event.done) for p in seen] == [(0, 1), (0, 2), (0, 3), (1, 1)]
