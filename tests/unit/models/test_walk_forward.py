"""Walk-forward splits: scikit-learn's TimeSeriesSplit as the reference without embargo, and a
hypothesis property test of no overlap, purge and embargo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sklearn.model_selection import TimeSeriesSplit

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.models import (
    TrainingDataError,
    WalkForwardConfig,
    forward_returns,
    walk_forward_splits,
)
from mystocks_gpu.gpu_ops.models.walk_forward import WalkForwardConfigError, window_starts
from tests.unit.models.model_data import panel


def _rows(n_dates: int, per_date: int, seed: int = 12345) -> np.ndarray:
    """Row dates: ``per_date`` rows on each of ``n_dates`` dates (spaced 10 apart), shuffled."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(n_dates, dtype=np.int64) * 10, per_date))


@pytest.mark.parametrize(("scheme", "train_dates"), [("expanding", None), ("rolling", 15)])
@pytest.mark.parametrize(("n_splits", "test", "purge"), [(4, 7, 3), (2, 10, 1), (6, 5, 5)])
def test_matches_sklearn_time_series_split_without_embargo(scheme: str, train_dates: int | None,
                                                           n_splits: int, test: int, purge: int) -> None:
    n_dates = 70
    dates = _rows(n_dates, 3)
    cfg = WalkForwardConfig(n_splits=n_splits, test_dates=test, label_horizon=purge,
                            purge_dates=purge, scheme=scheme, train_dates=train_dates)
    gap = cfg.purge
    ref = TimeSeriesSplit(n_splits=n_splits, test_size=test, gap=gap, max_train_size=train_dates)
    u = np.unique(dates)
    ours = walk_forward_splits(dates, cfg)
    assert len(ours) == n_splits
    for sp, (tr, te) in zip(ours, ref.split(u), strict=True):
        np.testing.assert_array_equal(np.unique(dates[sp.train]), u[tr])
        np.testing.assert_array_equal(np.unique(dates[sp.test]), u[te])
        np.testing.assert_array_equal(sp.train, np.flatnonzero(np.isin(dates, u[tr])))
        assert (sp.test_first, sp.test_last) == (u[te][0], u[te][-1])


@settings(max_examples=150, deadline=None)
@given(
    n_dates=st.integers(10, 120),
    per_date=st.integers(1, 4),
    n_splits=st.integers(1, 6),
    test=st.integers(1, 12),
    horizon=st.integers(1, 6),
    extra_purge=st.integers(0, 4),
    embargo=st.integers(0, 6),
    rolling=st.booleans(),
    train_dates=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_no_overlap_purge_and_embargo_hold(n_dates: int, per_date: int, n_splits: int, test: int,
                                           horizon: int, extra_purge: int, embargo: int,
                                           rolling: bool, train_dates: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dates = _rows(n_dates, per_date, seed)
    # irregular labels: each label ends 'horizon' dates later, or later still (gaps)
    label_end = dates + 10 * (horizon + rng.integers(0, 3, dates.size))
    cfg = WalkForwardConfig(n_splits=n_splits, test_dates=test, label_horizon=horizon,
                            purge_dates=horizon + extra_purge, embargo_dates=embargo,
                            scheme="rolling" if rolling else "expanding",
                            train_dates=train_dates if rolling else None)
    u = np.unique(dates)
    di = np.searchsorted(u, dates)
    starts = window_starts(n_dates, cfg)
    embargoed: set[int] = set()
    for s in starts[:-1]:
        embargoed |= set(range(s + test, s + test + embargo))
    # the reference: rows each split may train on, from the rules alone
    allowed = []
    for s in starts:
        lo = max(0, s - cfg.purge - train_dates) if rolling else 0
        allowed.append((di >= lo) & (di < s - cfg.purge) & ~np.isin(di, list(embargoed))
                       & (label_end < u[s]) if s >= 0 else np.zeros(dates.size, dtype=bool))
    feasible = starts[0] - cfg.purge >= 1 and all(a.any() for a in allowed)
    event("feasible" if feasible else "too few dates")
    if not feasible:
        with pytest.raises(TrainingDataError):
            walk_forward_splits(dates, cfg, label_end=label_end)
        return
    splits = walk_forward_splits(dates, cfg, label_end=label_end)
    seen_test: set[int] = set()
    for k, sp in enumerate(splits):
        tr, te = di[sp.train], di[sp.test]
        assert np.intersect1d(sp.train, sp.test).size == 0
        assert set(te) == set(range(starts[k], starts[k] + test))
        assert not (set(sp.test.tolist()) & seen_test)  # test windows never overlap
        seen_test |= set(sp.test.tolist())
        assert tr.max() < starts[k] - cfg.purge  # purge gap in dates (>= horizon)
        assert (label_end[sp.train] < u[starts[k]]).all()  # no training label reaches the test window
        assert not (set(tr.tolist()) & embargoed)  # embargoed dates are never trained on
        assert not (set(te.tolist()) & embargoed)  # ... nor tested
        if rolling:
            assert tr.min() >= starts[k] - cfg.purge - train_dates
        np.testing.assert_array_equal(sp.train, np.flatnonzero(allowed[k]))  # every allowed row is used
    assert starts[-1] + test == n_dates


def test_label_end_purges_rows_whose_label_reaches_the_test_window() -> None:
    d = panel(60, 4)
    lab = forward_returns(d["sym"], d["ts"], d["close"], 3)
    ok = ~np.isnan(lab.label)
    dates, end = d["date"][ok], lab.label_end[ok]
    cfg = WalkForwardConfig(n_splits=3, test_dates=8, label_horizon=3)
    with_end = walk_forward_splits(dates, cfg, label_end=end)
    without = walk_forward_splits(dates, cfg)
    for a, b in zip(with_end, without, strict=True):
        assert set(a.train) <= set(b.train)
        assert (end[a.train] < a.test_first).all()
    # with 10 % of bars missing some labels span more than 3 dates: the exact purge removes them
    assert sum(len(b.train) - len(a.train) for a, b in zip(with_end, without, strict=True)) > 0


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"purge_dates": 2, "label_horizon": 5}, r"'purge_dates' \(2\) must be >= the label horizon \(5\)"),
    ({"n_splits": 0}, "'n_splits' must be an int >= 1"),
    ({"test_dates": 2.5}, "'test_dates' must be an int"),
    ({"scheme": "sliding"}, "'scheme' must be one of expanding, rolling"),
    ({"scheme": "rolling"}, "'train_dates' must be an int >= 1"),
    ({"train_dates": 10}, "'train_dates' applies to scheme='rolling' only"),
    ({"embargo_dates": -1}, "'embargo_dates' must be an int >= 0"),
])
def test_config_errors(kw: dict, pattern: str) -> None:
    with pytest.raises(WalkForwardConfigError, match=pattern) as ei:
        WalkForwardConfig(**kw)
    assert isinstance(ei.value, MyStocksError)


def test_purge_defaults_to_the_horizon() -> None:
    assert WalkForwardConfig(label_horizon=4).purge == 4


def test_too_few_dates_is_a_clear_error() -> None:
    with pytest.raises(TrainingDataError, match="needs at least 27 distinct dates.*the data has 20"):
        walk_forward_splits(_rows(20, 2), WalkForwardConfig(n_splits=2, test_dates=10, label_horizon=2,
                                                            embargo_dates=4, min_train_dates=1))
    with pytest.raises(TrainingDataError, match="non-empty"):
        walk_forward_splits(np.zeros(0, dtype=np.int64), WalkForwardConfig())


def test_each_setting_changes_the_splits() -> None:
    dates = _rows(100, 2)
    base = dict(n_splits=3, test_dates=10, label_horizon=2, embargo_dates=0, min_train_dates=5)

    def layout(**kw: object) -> list[tuple[int, ...]]:
        cfg = WalkForwardConfig(**{**base, **kw})  # type: ignore[arg-type]
        return [tuple(s.train) + (-1,) + tuple(s.test) for s in walk_forward_splits(dates, cfg)]

    ref = layout()
    for kw in ({"n_splits": 4}, {"test_dates": 8}, {"label_horizon": 3}, {"purge_dates": 4},
               {"embargo_dates": 3}, {"scheme": "rolling", "train_dates": 30}):
        assert layout(**kw) != ref, kw
    with pytest.raises(TrainingDataError, match="needs at least 122 distinct dates"):
        layout(min_train_dates=90)
    # rolling window of 10 dates minus an embargoed date in split 1: 9 < min_train_dates
    assert len(layout(scheme="rolling", train_dates=10, embargo_dates=3, min_train_dates=9)) == 3
    with pytest.raises(TrainingDataError, match="split 1 has 9 training dates, fewer than min_train_dates=10"):
        layout(scheme="rolling", train_dates=10, embargo_dates=3, min_train_dates=10)
