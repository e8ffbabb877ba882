"""Event-time bars: values against pandas ``resample``, emission timing, lateness, batch-cut
invariance, flush, state round trips; GPU backend twin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.bars import (
    BAR_COLUMNS,
    DEFAULT_BAR_INTERVALS_NS,
    BarBuilder,
    BarConfigError,
    BarStateError,
)
from mystocks_gpu.gpu_ops.tick_columns import TickColumns

try:
    from .reference_features import random_ticks, reference_bars, reference_late_mask, to_columns
except ImportError:  # tests/unit is not a package: pytest put this folder on sys.path
    from reference_features import random_ticks, reference_bars, reference_late_mask, to_columns

SEC = 1_000_000_000
_GPU_OK, _GPU_WHY = gpu_available()


def _disorder(df: pd.DataFrame, seed: int, frac: float = 0.15, max_delay: int = 3 * SEC):
    """Delay some trades' arrival: their ts moves back by up to ``max_delay``."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    hit = (df["kind"].to_numpy() == 0) & (rng.random(len(df)) < frac)
    df.loc[hit, "ts"] = df.loc[hit, "ts"] - rng.integers(0, max_delay, hit.sum())
    return df


def _frame(bars: dict) -> pd.DataFrame:
    return pd.DataFrame({k: np.asarray(v) for k, v in bars.items()})


def _run(builder: BarBuilder, cols: TickColumns, cuts, state=None):
    """Process in batches; returns (emitted bars frame in order, late mask, state)."""
    state = builder.initial_state(0) if state is None else state
    bounds = [0, *cuts, len(cols)]
    frames, lates = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        bars, late, state = builder.process(cols.take(slice(a, b)), state)
        frames.append(_frame(bars))
        lates.append(np.asarray(late))
    return pd.concat(frames, ignore_index=True), np.concatenate(lates), state


def _assert_bars_equal(got: pd.DataFrame, ref: pd.DataFrame, interval_ns: int) -> None:
    got = got.sort_values(["sym", "ts_open"], kind="stable").reset_index(drop=True)
    assert list(got.columns) == list(BAR_COLUMNS)
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got["sym"], ref["sym"])
    np.testing.assert_array_equal(got["ts_open"], ref["ts_open"])
    np.testing.assert_array_equal(got["trades"], ref["trades"])
    assert (got["interval_ns"] == interval_ns).all()
    for k in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    for k in ("volume", "vwap"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=0, err_msg=k)
    assert got["sym"].dtype == np.int32 and got["ts_open"].dtype == np.int64


@pytest.fixture(scope="module")
def ordered():
    df = random_ticks(seed=11, n=3000, n_symbols=6)
    return df, to_columns(df)


@pytest.mark.parametrize("interval_ns", [*DEFAULT_BAR_INTERVALS_NS, SEC // 10])
def test_bars_match_resample(ordered, interval_ns):
    df, cols = ordered
    b = BarBuilder(interval_ns, 0, "cpu")
    emitted, late, st = _run(b, cols, [])
    assert not late.any()
    flushed, _ = b.flush(st)
    got = pd.concat([emitted, _frame(flushed)], ignore_index=True)
    _assert_bars_equal(got, reference_bars(df, interval_ns), interval_ns)
    assert (got["ts_open"] % interval_ns == 0).all()


@pytest.mark.parametrize("lateness", [0, 700_000_000, 2 * SEC])
def test_emission_happens_exactly_when_watermark_passes(ordered, lateness):
    df, cols = ordered
    ivl = SEC // 2
    b = BarBuilder(ivl, lateness, "cpu")
    st = b.initial_state(0)
    wm: dict[int, int] = {}
    seen = []
    for i in range(len(cols)):
        s, t = int(df["sym"][i]), int(df["ts"][i])
        bars, _, st = b.process(cols.take(slice(i, i + 1)), st)
        prev = wm.get(s)
        wm[s] = t if prev is None else max(prev, t)
        for sym_, t0 in zip(bars["sym"], bars["ts_open"], strict=True):
            assert sym_ == s  # only the row's own symbol can close bars
            assert t0 + ivl + lateness <= t and (prev is None or t0 + ivl + lateness > prev)
            seen.append((int(sym_), int(t0)))
    assert len(seen) == len(set(seen))
    ref = reference_bars(df, ivl)
    due = ref[[t0 + ivl + lateness <= wm[s] for s, t0 in zip(ref["sym"], ref["ts_open"], strict=True)]]
    assert sorted(seen) == sorted(zip(due["sym"].tolist(), due["ts_open"].tolist(), strict=True))


@pytest.mark.parametrize("lateness", [0, 700_000_000, 2 * SEC])
def test_late_trades_flagged_and_not_counted(ordered, lateness):
    df = _disorder(ordered[0], seed=lateness % 97)
    cols = to_columns(df)
    ivl = SEC // 2
    b = BarBuilder(ivl, lateness, "cpu")
    emitted, late, st = _run(b, cols, [])
    want_late = reference_late_mask(df, ivl, lateness)
    assert want_late.sum() > 10
    np.testing.assert_array_equal(late, want_late)
    assert not late[df["kind"].to_numpy() == 1].any()
    flushed, _ = b.flush(st)
    got = pd.concat([emitted, _frame(flushed)], ignore_index=True)
    _assert_bars_equal(got, reference_bars(df, ivl, want_late), ivl)


@pytest.mark.parametrize("max_size", [1, 9, 500])
def test_batch_cut_invariance(ordered, max_size):
    df = _disorder(ordered[0], seed=5)
    n = 600 if max_size == 1 else len(df)
    cols = to_columns(df).take(slice(0, n))
    b = BarBuilder(SEC // 2, 700_000_000, "cpu")
    one_bars, one_late, one_st = _run(b, cols, [])
    rng = np.random.default_rng(max_size)
    cuts = [int(c) for c in np.cumsum(rng.integers(1, max_size + 1, n)) if c < n]
    cut_bars, cut_late, cut_st = _run(b, cols, cuts)
    pd.testing.assert_frame_equal(cut_bars, one_bars)  # same bars, same order
    np.testing.assert_array_equal(cut_late, one_late)
    assert b.state_to_bytes(cut_st) == b.state_to_bytes(one_st)


def test_state_round_trip_rerun_and_growth(ordered):
    df = _disorder(ordered[0], seed=9)
    cols = to_columns(df)
    b = BarBuilder(SEC, SEC, "cpu")
    one_bars, one_late, _ = _run(b, cols, [])
    h = 1700
    bars1, late1, st = _run(b, cols.take(slice(0, h)), [300], state=b.initial_state(1))
    blob = b.state_to_bytes(st)
    # a re-run of the next batch from the same state gives the same result, state untouched
    nxt = cols.take(slice(h, None))
    r1 = b.process(nxt, st)
    r2 = b.process(nxt, b.state_from_bytes(blob))
    assert b.state_to_bytes(st) == blob
    pd.testing.assert_frame_equal(_frame(r1[0]), _frame(r2[0]))
    np.testing.assert_array_equal(r1[1], r2[1])
    got = pd.concat([bars1, _frame(r2[0])], ignore_index=True)
    pd.testing.assert_frame_equal(got, one_bars)
    np.testing.assert_array_equal(np.concatenate([late1, r2[1]]), one_late)
    # a new symbol far above the capacity
    far = TickColumns.from_numpy(sym=[900, 900], ts=[5 * SEC, 8 * SEC], price=[1.0, 2.0],
                                 size=[1.0, 1.0])
    bars, late, st2 = b.process(far, r2[2])
    assert st2.capacity >= 901 and not late.any()
    assert list(bars["sym"]) == [900] and list(bars["ts_open"]) == [5 * SEC]
    with pytest.raises(BarStateError):
        BarBuilder(SEC, 0).state_from_bytes(blob)


def test_flush_closes_windows():
    b = BarBuilder(SEC, 0, "cpu")
    cols = TickColumns.from_numpy(
        sym=[1, 0, 1, 0], ts=[SEC + 5, 2 * SEC + 1, SEC + 9, 2 * SEC + 3],
        price=[10.0, 20.0, 11.0, 19.0], size=[1.0, 2.0, 3.0, 0.0],
    )
    bars, late, st = b.process(cols, b.initial_state())
    assert len(bars["sym"]) == 0 and not late.any()
    fl, st = b.flush(st)
    assert list(fl["sym"]) == [0, 1] and list(fl["ts_open"]) == [2 * SEC, SEC]
    assert list(fl["open"]) == [20.0, 10.0] and list(fl["close"]) == [19.0, 11.0]
    assert list(fl["volume"]) == [2.0, 4.0] and list(fl["trades"]) == [2, 2]
    np.testing.assert_allclose(fl["vwap"], [20.0, (10 + 33) / 4])
    again, st = b.flush(st)
    assert len(again["sym"]) == 0
    # a trade inside a flushed bar is late; one in the next bar is not
    more = TickColumns.from_numpy(sym=[1, 1], ts=[SEC + 20, 2 * SEC], price=[1.0, 2.0],
                                  size=[1.0, 1.0])
    _, late, st = b.process(more, st)
    assert list(late) == [True, False]
    # zero-volume bar: vwap NaN
    z = TickColumns.from_numpy(sym=[3], ts=[0], price=[5.0], size=[0.0])
    _, _, s3 = b.process(z, b.initial_state())
    assert np.isnan(b.flush(s3)[0]["vwap"][0])


def test_bar_config_validation():
    with pytest.raises(BarConfigError, match="interval_ns"):
        BarBuilder(0)
    with pytest.raises(BarConfigError, match="allowed_lateness_ns") as info:
        BarBuilder(SEC, -1)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert BarBuilder(SEC, 2500 * 10**6).slots == 4


@pytest.mark.gpu
@pytest.mark.skipif(not _GPU_OK, reason=f"no GPU: {_GPU_WHY}")
def test_gpu_backend_bars_equal_cpu(ordered):
    df = _disorder(ordered[0], seed=3)
    cols = to_columns(df)
    c = BarBuilder(SEC // 2, 700_000_000, "cpu")
    g = BarBuilder(SEC // 2, 700_000_000, "gpu")
    cb, cl, cs = c.process(cols, c.initial_state())
    gb, gl, gs = g.process(cols.to("gpu"), g.initial_state())
    assert type(gl).__module__.startswith("cupy")
    np.testing.assert_array_equal(gl.get(), cl)
    pd.testing.assert_frame_equal(_frame({k: v.get() for k, v in gb.items()}), _frame(cb))
    assert g.state_to_bytes(gs) == c.state_to_bytes(cs)
