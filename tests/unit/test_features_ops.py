"""Tick-feature engine: values against the pandas reference, batch-cut invariance, state
round trips and rewinds, symbol growth, config validation; GPU twin tests vs the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from mystocks_gpu.exceptions import ConfigError, MyStocksError
from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.bars import BarBuilder
from mystocks_gpu.gpu_ops.features import (
    FeatureStateError,
    TickFeatureEngine,
    state_bytes_per_symbol,
)
from mystocks_gpu.gpu_ops.features_config import (
    ALL_FEATURES,
    NS_PER_DAY,
    FeatureConfig,
    FeatureConfigError,
)
from mystocks_gpu.gpu_ops.tick_columns import (
    COLUMN_DTYPES,
    ROW_BYTES,
    TickColumns,
    TickColumnsError,
    code_range,
)

try:
    from .reference_features import random_ticks, reference_features, to_columns
except ImportError:  # tests/unit is not a package: pytest put this folder on sys.path
    from reference_features import random_ticks, reference_features, to_columns

RTOL = 1e-9
ATOL = 1e-12
EPS = np.finfo(np.float64).eps

_GPU_OK, _GPU_WHY = gpu_available()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not _GPU_OK, reason=f"no GPU: {_GPU_WHY}")


def _custom_cfg(df) -> FeatureConfig:
    # a session boundary in the middle of the stream
    mid = int(np.median(df["ts"]))
    return FeatureConfig(
        ema_spans=(3, 7, 30),
        window_ticks=5,
        window_ns=200_000_000,
        rsi_period=3,
        macd=(3, 8, 4),
        bollinger_k=1.5,
        rvol_annualization=252.0,
        session_offset_ns=mid % NS_PER_DAY,
    )


def assert_features(got: dict, ref: dict, names: list[str], price: np.ndarray, std=None) -> None:
    """rtol 1e-9 / atol 1e-12 and identical NaN positions; roll_z gets the extra absolute
    slack its conditioning needs (a 1-ulp change of the mean moves z by ulp(p)/std; ``std``:
    the rolling std, by default ``got["roll_std"]``)."""
    assert list(got) == names
    std = got.get("roll_std") if std is None else std
    for k in names:
        a = np.asarray(got[k])
        b = ref[k]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN positions of {k}")
        m = ~np.isnan(b)
        atol = ATOL
        if k == "roll_z" and std is not None:
            atol = ATOL + 16 * EPS * np.abs(price[m]) / np.asarray(std)[m]
        err = np.abs(a[m] - b[m])
        bad = err > atol + RTOL * np.abs(b[m])
        assert not bad.any(), (
            f"{k}: {bad.sum()} rows off, first at {np.flatnonzero(m)[bad][0]}: "
            f"got {a[m][bad][0]!r}, want {b[m][bad][0]!r}"
        )


def run_batches(engine: TickFeatureEngine, cols: TickColumns, cuts, state=None):
    """Process ``cols`` cut at ``cuts``; returns (concatenated host outputs, final state)."""
    state = engine.initial_state(0) if state is None else state
    bounds = [0, *cuts, len(cols)]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out, state = engine.process(cols.take(slice(a, b)), state)
        parts.append({k: np.asarray(v.get() if hasattr(v, "get") else v) for k, v in out.items()})
    merged = {k: np.concatenate([p[k] for p in parts]) for k in engine.output_names}
    return merged, state


def random_cuts(rng: np.random.Generator, n: int, max_size: int) -> list[int]:
    sizes = rng.integers(1, max_size + 1, size=n)
    sizes[: min(20, n)] = 1  # a run of size-1 batches
    return [int(c) for c in np.cumsum(sizes) if c < n]


@pytest.fixture(scope="module")
def data():
    df = random_ticks(seed=7, n=3000, n_symbols=8)
    return df, to_columns(df)


@pytest.fixture(scope="module")
def refs(data):
    df, _ = data
    default = FeatureConfig(window_ns=500_000_000)
    custom = _custom_cfg(df)
    return {
        "default": (default, reference_features(df, default)),
        "custom": (custom, reference_features(df, custom)),
    }


# ---- values ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "custom"])
def test_one_pass_matches_pandas_reference(data, refs, which):
    df, cols = data
    cfg, ref = refs[which]
    eng = TickFeatureEngine(cfg, "cpu")
    out, _ = eng.process(cols, eng.initial_state(0))
    assert all(v.dtype == np.float64 and v.shape == (len(df),) for v in out.values())
    assert_features(out, ref, cfg.output_names(), df["price"].to_numpy())


@pytest.mark.parametrize("which", ["default", "custom"])
@pytest.mark.parametrize("max_size", [1, 7, 300])
def test_batch_cuts_match_reference_and_one_pass(data, refs, which, max_size):
    df, cols = data
    cfg, ref = refs[which]
    eng = TickFeatureEngine(cfg, "cpu")
    rng = np.random.default_rng(max_size)
    n = len(cols) if max_size > 1 else 400  # size-1 batches: a prefix keeps the test quick
    sub = cols.take(slice(0, n))
    one, _ = run_batches(eng, sub, [])
    cut, _ = run_batches(eng, sub, random_cuts(rng, n, max_size))
    for k in cfg.output_names():
        np.testing.assert_array_equal(cut[k], one[k], err_msg=k)  # bit-identical
    assert_features(cut, {k: v[:n] for k, v in ref.items()}, cfg.output_names(),
                    df["price"].to_numpy()[:n])


def test_hand_computed_values():
    # sym 0: trades 100, 110, 99 with a quote between; sym 1 quotes only
    cols = TickColumns.from_numpy(
        sym=[0, 1, 0, 0, 0],
        ts=[1, 2, 3, 4, 5],
        kind=[0, 1, 1, 0, 0],
        price=[100.0, 50.0, 100.5, 110.0, 99.0],
        size=[1.0, 0.0, 0.0, 3.0, 2.0],
        side=[1, 0, 0, -1, 1],
        bid=[99.0, 49.0, 100.0, 109.0, 98.0],
        ask=[101.0, 51.0, 101.0, 111.0, 100.0],
        bid_size=[3.0, 1.0, 0.0, 2.0, 1.0],
        ask_size=[1.0, 1.0, 0.0, 2.0, 3.0],
    )
    cfg = FeatureConfig(window_ticks=2, rsi_period=2, ema_spans=(3,))
    out, _ = TickFeatureEngine(cfg, "cpu").process(cols, TickFeatureEngine(cfg).initial_state())
    nan = np.nan
    np.testing.assert_allclose(out["last_price"], [100, nan, 100, 110, 99])
    np.testing.assert_allclose(out["ret"], [nan, nan, nan, 0.1, 99 / 110 - 1])
    np.testing.assert_allclose(out["vwap_session"], [100, nan, 100, 430 / 4, 628 / 6])
    np.testing.assert_allclose(out["vwap_roll"], [nan, nan, nan, 430 / 4, (330 + 198) / 5])
    np.testing.assert_allclose(out["ema_3"], [100, nan, 100, 105, 102])
    np.testing.assert_allclose(out["roll_mean"], [nan, nan, nan, 105, 104.5])
    np.testing.assert_allclose(out["roll_std"], [nan, nan, nan, np.sqrt(50), np.sqrt(60.5)])
    np.testing.assert_allclose(out["flow_imb"], [nan, nan, nan, -2 / 4, -1 / 5])
    # RSI(2): changes +10, -11 -> avg gain 5, avg loss 5.5
    np.testing.assert_allclose(out["rsi"], [nan, nan, nan, nan, 100 * 5 / 10.5])
    np.testing.assert_allclose(out["spread"], [2, 2, 1, 2, 2])
    np.testing.assert_allclose(out["rel_spread"], [0.02, 0.04, 1 / 100.5, 2 / 110, 2 / 99])
    np.testing.assert_allclose(out["book_imb"], [0.5, 0.0, nan, 0.0, -0.5])
    rv = np.sqrt(np.log(1.1) ** 2 + np.log(99 / 110) ** 2)
    np.testing.assert_allclose(out["rvol"], [nan, nan, nan, nan, rv])


def test_time_window_cap_keeps_newest_trades(data):
    df, cols = data
    cfg = FeatureConfig(features=("time_mean", "time_std"), window_ns=10**12, max_window_ticks=4)
    out, _ = TickFeatureEngine(cfg, "cpu").process(cols, TickFeatureEngine(cfg).initial_state())
    assert_features(out, reference_features(df, cfg), cfg.output_names(), df["price"].to_numpy())


def test_feature_subset_equals_full_run(data, refs):
    _, cols = data
    full_cfg, _ = refs["default"]
    sub_cfg = FeatureConfig(features=("rsi", "ema", "spread"), window_ns=500_000_000)
    assert sub_cfg.output_names() == ["rsi", "ema_10", "ema_50", "spread"]
    full, _ = TickFeatureEngine(full_cfg).process(cols, TickFeatureEngine(full_cfg).initial_state())
    sub, _ = TickFeatureEngine(sub_cfg).process(cols, TickFeatureEngine(sub_cfg).initial_state())
    assert list(sub) == sub_cfg.output_names()
    for k in sub:
        np.testing.assert_array_equal(sub[k], full[k])


# ---- state -----------------------------------------------------------------------------


def test_state_round_trip_mid_stream(data, refs):
    _, cols = data
    cfg, _ = refs["custom"]
    eng = TickFeatureEngine(cfg, "cpu")
    one, _ = run_batches(eng, cols, [])
    h = 1234
    first, st = run_batches(eng, cols.take(slice(0, h)), [500])
    blob = eng.state_to_bytes(st)
    eng2 = TickFeatureEngine(cfg, "cpu")
    st2 = eng2.state_from_bytes(blob)
    for k, v in st.arrays.items():
        np.testing.assert_array_equal(st2.arrays[k], v)
        assert st2.arrays[k].dtype == v.dtype
    second, _ = run_batches(eng2, cols.take(slice(h, None)), [10, 11, 900], state=st2)
    for k in cfg.output_names():
        np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), one[k], err_msg=k)


def test_discarded_state_rerun_gives_identical_results(data, refs):
    _, cols = data
    cfg, _ = refs["default"]
    eng = TickFeatureEngine(cfg, "cpu")
    _, s1 = eng.process(cols.take(slice(0, 1000)), eng.initial_state(0))
    before = eng.state_to_bytes(s1)
    b2 = cols.take(slice(1000, 2000))
    o_a, s_a = eng.process(b2, s1)
    # the runtime aborts: drops s_a, rewinds, re-runs the batch from s1
    o_b, s_b = eng.process(b2, s1)
    assert eng.state_to_bytes(s1) == before  # the old state was not touched
    assert eng.state_to_bytes(s_a) == eng.state_to_bytes(s_b)
    for k in o_a:
        np.testing.assert_array_equal(o_a[k], o_b[k])
    # inplace: same values, and the passed state becomes the new one
    o_c, s_c = eng.process(b2, eng.state_from_bytes(before), inplace=True)
    for k in o_a:
        np.testing.assert_array_equal(o_c[k], o_a[k])
    assert eng.state_to_bytes(s_c) == eng.state_to_bytes(s_a)


def test_new_symbols_grow_state(data, refs):
    df, cols = data
    cfg, ref = refs["default"]
    eng = TickFeatureEngine(cfg, "cpu")
    st = eng.initial_state(2)
    assert st.capacity == 2
    out, st = eng.process(cols.take(slice(0, 1500)), st)
    assert st.capacity >= int(df["sym"][:1500].max()) + 1
    # a never-seen code far above the capacity, then the rest of the stream
    far = TickColumns.from_numpy(sym=[5000], ts=[1], kind=[0], price=[42.0], size=[1.0],
                                 bid=[41.0], ask=[43.0], bid_size=[1.0], ask_size=[1.0])
    o_far, st = eng.process(far, st)
    assert st.capacity >= 5001 and o_far["last_price"][0] == 42.0 and np.isnan(o_far["ret"][0])
    rest, st = eng.process(cols.take(slice(1500, None)), st)
    got = {k: np.concatenate([out[k], rest[k]]) for k in cfg.output_names()}
    assert_features(got, ref, cfg.output_names(), df["price"].to_numpy())
    assert st.nbytes == st.capacity * state_bytes_per_symbol(cfg)


def test_state_bytes_per_symbol_defaults():
    assert state_bytes_per_symbol(FeatureConfig()) == 9120
    assert state_bytes_per_symbol(FeatureConfig(features=("rsi",))) == 928


def test_empty_batch_keeps_state(data, refs):
    _, cols = data
    cfg, _ = refs["default"]
    eng = TickFeatureEngine(cfg, "cpu")
    _, st = eng.process(cols.take(slice(0, 100)), eng.initial_state())
    out, st2 = eng.process(cols.take(slice(0, 0)), st)
    assert all(v.shape == (0,) for v in out.values())
    assert eng.state_to_bytes(st2) == eng.state_to_bytes(st)


def test_state_from_other_config_is_rejected(data):
    df, cols = data
    a = TickFeatureEngine(FeatureConfig(window_ticks=20))
    b = TickFeatureEngine(FeatureConfig(window_ticks=21))
    blob = a.state_to_bytes(a.process(cols.take(slice(0, 50)), a.initial_state())[1])
    with pytest.raises(FeatureStateError, match="different feature config"):
        b.state_from_bytes(blob)
    with pytest.raises(FeatureStateError):
        a.state_from_bytes(b"not a state")
    # the output selection differs but the same buffers / statistics are kept: compatible. The
    # restored state is a's state exactly, and c continues from it as if it had seen the first 50
    # ticks itself: its outputs for the rest match the pandas reference over the whole stream.
    c_cfg = FeatureConfig(features=("rsi", "time_std", "roll_z"))
    c = TickFeatureEngine(c_cfg)
    restored = c.state_from_bytes(blob)
    saved = a.state_from_bytes(blob)
    assert restored.capacity == saved.capacity >= int(df["sym"][:50].max()) + 1
    for name, arr in saved.arrays.items():
        np.testing.assert_array_equal(restored.arrays[name], arr, err_msg=name)
    rest, _ = c.process(cols.take(slice(50, None)), restored)
    ref = reference_features(df, c_cfg)
    ref_std = reference_features(df, FeatureConfig(features=("roll_std",)))["roll_std"]
    assert_features(rest, {k: v[50:] for k, v in ref.items()}, c_cfg.output_names(), df["price"].to_numpy()[50:],
                    std=ref_std[50:])
    # and a state that lost a symbol's history does not match it (the comparison has teeth)
    fresh, _ = c.process(cols.take(slice(50, None)), c.initial_state())
    assert not all(np.array_equal(fresh[k], rest[k], equal_nan=True) for k in rest)
    # no trade-window statistics kept: their carried values would be stale, so rejected
    d = TickFeatureEngine(FeatureConfig(features=("rsi", "time_std")))
    with pytest.raises(FeatureStateError):
        d.state_from_bytes(blob)


# ---- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"features": ("rsi", "bogus")}, "unknown feature name"),
        ({"features": ()}, "empty"),
        ({"features": ("rsi", "rsi")}, "duplicate"),
        ({"ema_spans": (0,)}, "ema_spans"),
        ({"window_ticks": 1}, "window_ticks"),
        ({"window_ns": 0}, "window_ns"),
        ({"max_window_ticks": 1}, "max_window_ticks"),
        ({"rsi_period": 0}, "rsi_period"),
        ({"macd": (26, 12, 9)}, "macd"),
        ({"bollinger_k": -1.0}, "bollinger_k"),
        ({"rvol_annualization": 0.0}, "rvol_annualization"),
        ({"session_offset_ns": NS_PER_DAY}, "session_offset_ns"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(FeatureConfigError, match=match) as info:
        FeatureConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, MyStocksError)


def test_unknown_feature_message_lists_known_names():
    with pytest.raises(FeatureConfigError) as info:
        FeatureConfig(features=("vwap",))
    assert "'vwap'" in str(info.value) and "vwap_session" in str(info.value)
    assert set(FeatureConfig().features) == set(ALL_FEATURES)


def test_code_range_matches_numpy_and_the_kernels_refuse_a_negative_code():
    """The compiled (min, max) of a batch's codes equals NumPy's on random batches (one row, repeats,
    negatives, int32 and int64); a batch built by the trusting constructor with a negative code is
    refused by the feature engine and the bar builder, not indexed from the end of the state."""
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 70, 1000):
        for dt in (np.int32, np.int64):
            a = rng.integers(-50, 5000, n).astype(dt)
            assert code_range(a) == (a.min(), a.max())
    cols = TickColumns.from_numpy(sym=[0, 1], ts=[1, 2], price=[1.0, 2.0], size=[1.0, 1.0], bid=[1.0, 2.0],
                                  ask=[1.0, 2.0], bid_size=[1.0, 1.0], ask_size=[1.0, 1.0])
    bad = TickColumns(**{**{f: getattr(cols, f) for f in COLUMN_DTYPES}, "sym": np.array([0, -1], np.int32)})
    eng = TickFeatureEngine(FeatureConfig(), backend="cpu")
    with pytest.raises(TickColumnsError, match=">= 0"):
        eng.process_host_matrix(bad, eng.initial_state(4), inplace=True)
    builder = BarBuilder(10**9, 0, "cpu")
    with pytest.raises(TickColumnsError, match=">= 0"):
        builder.process(bad, builder.initial_state(4), inplace=True)


def test_tick_columns_validation():
    with pytest.raises(TickColumnsError, match="shape"):
        TickColumns.from_numpy(sym=[0, 1], ts=[1], price=[1.0, 2.0])
    with pytest.raises(TickColumnsError, match=">= 0"):
        TickColumns.from_numpy(sym=[-1], ts=[1], price=[1.0])
    with pytest.raises(TickColumnsError, match="unknown"):
        TickColumns.from_numpy(sym=[0], ts=[1], price=[1.0], volume=[1.0])
    c = TickColumns.from_numpy(sym=[0, 1, 2], ts=[1, 2, 3], price=[1.0, 2.0, 3.0])
    assert len(c) == 3 and c.backend == "cpu" and c.sym.dtype == np.int32
    assert list(c.take(np.array([2, 0])).price) == [3.0, 1.0]
    assert c.to("cpu") is c and c.nbytes() == 3 * 62 == 3 * ROW_BYTES


# ---- GPU twins -------------------------------------------------------------------------


def _gpu_vs_cpu(cpu: dict, gpu_out: dict, names: list[str], price: np.ndarray) -> None:
    ref = {k: np.asarray(v) for k, v in cpu.items()}
    assert_features({k: np.asarray(v) for k, v in gpu_out.items()}, ref, names, price)


@gpu
@needs_gpu
@pytest.mark.parametrize("which", ["default", "custom"])
def test_gpu_one_pass_matches_cpu_and_reference(data, refs, which):
    df, cols = data
    cfg, ref = refs[which]
    cpu_eng = TickFeatureEngine(cfg, "cpu")
    gpu_eng = TickFeatureEngine(cfg, "gpu")
    c_out, _ = cpu_eng.process(cols, cpu_eng.initial_state(0))
    g_out, g_st = gpu_eng.process(cols.to("gpu"), gpu_eng.initial_state(0))
    assert type(g_out[cfg.output_names()[0]]).__module__.startswith("cupy")
    g_host = {k: v.get() for k, v in g_out.items()}
    _gpu_vs_cpu(c_out, g_host, cfg.output_names(), df["price"].to_numpy())
    assert_features(g_host, ref, cfg.output_names(), df["price"].to_numpy())


@gpu
@needs_gpu
@pytest.mark.parametrize("max_size", [1, 300])
def test_gpu_batch_cuts_and_process_host(data, refs, max_size):
    df, cols = data
    cfg, _ = refs["custom"]
    n = 300 if max_size == 1 else len(cols)
    sub = cols.take(slice(0, n))
    cuts = random_cuts(np.random.default_rng(3), n, max_size)
    c_out, c_st = run_batches(TickFeatureEngine(cfg, "cpu"), sub, cuts)
    g_eng = TickFeatureEngine(cfg, "gpu")
    g_out, g_st = run_batches(g_eng, sub, cuts)
    _gpu_vs_cpu(c_out, g_out, cfg.output_names(), df["price"].to_numpy()[:n])
    # pinned-staging path, host in / host out
    st = g_eng.initial_state(0)
    parts = []
    for a, b in zip([0, *cuts], [*cuts, n], strict=True):
        o, st = g_eng.process_host(sub.take(slice(a, b)), st)
        assert isinstance(o[cfg.output_names()[0]], np.ndarray)
        parts.append(o)
    h_out = {k: np.concatenate([p[k] for p in parts]) for k in cfg.output_names()}
    for k in cfg.output_names():
        np.testing.assert_array_equal(h_out[k], g_out[k], err_msg=k)


@gpu
@needs_gpu
def test_gpu_state_round_trips_to_cpu(data, refs):
    df, cols = data
    cfg, _ = refs["default"]
    c_eng = TickFeatureEngine(cfg, "cpu")
    g_eng = TickFeatureEngine(cfg, "gpu")
    h = 1500
    _, g_st = g_eng.process(cols.take(slice(0, h)).to("gpu"), g_eng.initial_state(0))
    _, c_st = c_eng.process(cols.take(slice(0, h)), c_eng.initial_state(0))
    as_cpu = c_eng.state_from_bytes(g_eng.state_to_bytes(g_st))
    for k in c_st.arrays:
        np.testing.assert_allclose(as_cpu.arrays[k], c_st.arrays[k], rtol=RTOL, atol=ATOL,
                                   err_msg=k)
    # GPU state -> bytes -> GPU state -> bytes is bit-exact; continue on the CPU from it
    assert g_eng.state_to_bytes(g_eng.state_from_bytes(g_eng.state_to_bytes(g_st))) == \
        g_eng.state_to_bytes(g_st)
    rest = cols.take(slice(h, None))
    o_from_gpu_state, _ = c_eng.process(rest, as_cpu)
    o_cpu, _ = c_eng.process(rest, c_st)
    _gpu_vs_cpu(o_cpu, o_from_gpu_state, cfg.output_names(), df["price"].to_numpy()[h:])
    # CPU state -> GPU continues like the CPU
    g_from_cpu = g_eng.state_from_bytes(c_eng.state_to_bytes(c_st))
    o_g, _ = g_eng.process(rest.to("gpu"), g_from_cpu)
    _gpu_vs_cpu(o_cpu, {k: v.get() for k, v in o_g.items()}, cfg.output_names(),
                df["price"].to_numpy()[h:])


@gpu
@needs_gpu
def test_gpu_discard_and_rerun_and_growth(data, refs):
    _, cols = data
    cfg, _ = refs["default"]
    eng = TickFeatureEngine(cfg, "gpu")
    _, s1 = eng.process(cols.take(slice(0, 1000)).to("gpu"), eng.initial_state(1))
    before = eng.state_to_bytes(s1)
    b2 = cols.take(slice(1000, 2000)).to("gpu")
    o_a, s_a = eng.process(b2, s1)
    o_b, s_b = eng.process(b2, s1)
    assert eng.state_to_bytes(s1) == before
    assert eng.state_to_bytes(s_a) == eng.state_to_bytes(s_b)
    for k in o_a:
        np.testing.assert_array_equal(o_a[k].get(), o_b[k].get())
    far = TickColumns.from_numpy(sym=[4000], ts=[1], kind=[0], price=[7.0], size=[1.0])
    o, s = eng.process_host(far, s_a)
    assert s.capacity >= 4001 and o["last_price"][0] == 7.0
