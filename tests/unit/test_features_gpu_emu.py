"""The GPU tick-feature kernels, compiled as C and run serially (``features_emu``), against the
CPU twin: the GPU backend's host code and kernel source run here without a GPU.

Within one row block (every batch of at most 2**16 rows) the replay is the CPU's arithmetic, so
outputs and state must be bit-identical; batches cut into many row blocks (small ``log_r``)
start chunks from composed affine maps and must agree to rounding: rtol 1e-9 / atol 1e-12, plus
64 ulps of the price on the EMA differences (``macd``, ``macd_signal``, ``macd_hist``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.features import FeatureState, TickFeatureEngine
from mystocks_gpu.gpu_ops.features_config import NS_PER_DAY, FeatureConfig
from mystocks_gpu.gpu_ops.features_gpu import process_batch_gpu

try:
    from .features_emu import emu_launcher
    from .reference_features import random_ticks, to_columns
except ImportError:  # tests/unit is not a package: pytest put this folder on sys.path
    from features_emu import emu_launcher
    from reference_features import random_ticks, to_columns

RTOL = 1e-9
ATOL = 1e-12
EPS = np.finfo(np.float64).eps
CANCELLING = ("macd", "macd_signal", "macd_hist")
_GPU_OK, _GPU_WHY = gpu_available()


def _configs(df) -> dict[str, FeatureConfig]:
    mid = int(np.median(df["ts"]))
    return {
        "default": FeatureConfig(),
        "custom": FeatureConfig(
            ema_spans=(3, 7, 30), window_ticks=5, window_ns=200_000_000, rsi_period=3,
            macd=(3, 8, 4), bollinger_k=1.5, rvol_annualization=252.0,
            session_offset_ns=mid % NS_PER_DAY, max_disorder_ns=60_000_000,
        ),
        "no_windows": FeatureConfig(features=("last_price", "ema", "rsi", "spread"),
                                    ema_spans=(4,), max_disorder_ns=10**9),
        "time_only": FeatureConfig(features=("time_mean", "time_std", "vwap_session"),
                                   window_ns=300_000_000, max_window_ticks=7),
    }


def _disordered(seed: int, n: int) -> tuple[object, object]:
    """random_ticks with about 5 % of the trades stamped 0-150 ms earlier: some inside the
    configs' disorder bounds (clamped to the clock), some beyond (rejected)."""
    df = random_ticks(seed=seed, n=n, n_symbols=8)
    rng = np.random.default_rng(seed + 1)
    back = (rng.random(n) < 0.05) & (df["kind"].to_numpy() == 0)
    ts = df["ts"].to_numpy().copy()
    ts[back] -= rng.integers(0, 150_000_000, int(back.sum()))
    df = df.assign(ts=ts)
    return df, to_columns(df)


@pytest.fixture(scope="module")
def data():
    return _disordered(11, 3000)


def _emu_process(eng: TickFeatureEngine, cols, state: FeatureState, log_r: int, where="emu",
                 sub_log2: int = 13, tuning=()):
    """One batch through the GPU host code (NumPy state in and out): kernels emulated in C
    (``where="emu"``; ``"emu-sort"``: grouped by the host's sort instead of the fused grouping
    kernels), on the GPU (``"gpu"``) or on the GPU with the sort-based grouping (``"gpu-sort"``)."""
    need = int(cols.sym.max()) + 1
    if need > state.capacity:
        state = eng._grown(state, need)
    cfg = eng.cfg
    if where in ("emu", "emu-sort"):
        xp, launcher = np, emu_launcher(len(cfg.ema_spans), cfg.window_ticks,
                                        tuple(cfg.column_index()), fused=where == "emu",
                                        tuning=tuning)
    else:
        import cupy as xp

        from mystocks_gpu.gpu_ops.features_gpu import gpu_launcher

        launcher = gpu_launcher(len(cfg.ema_spans), cfg.window_ticks, tuple(cfg.column_index()))
        if where == "gpu-sort":
            launcher = replace(launcher, blocks=None)
        cols = cols.to("gpu")
    arrays = {k: xp.asarray(v) for k, v in state.arrays.items()}
    out, rej = process_batch_gpu(
        cols, arrays, xp.asarray(eng._ema_alpha), xp.asarray(eng._macd_alpha), eng._params,
        eng._col_idx_host, len(eng.output_names), log_r=log_r, launcher=launcher,
        sub_log2=sub_log2,
    )
    host = (lambda a: a) if xp is np else (lambda a: a.get())
    arrays = {k: host(v) for k, v in arrays.items()}
    return ({k: host(out[i]) for i, k in enumerate(eng.output_names)}, host(rej),
            FeatureState("cpu", state.capacity, arrays))


def _run(eng, cols, cuts, log_r=None, where="emu", sub_log2=13, tuning=(), state=None):
    """Process ``cols`` cut at ``cuts`` on the CPU (log_r None) or the GPU host code, from ``state``
    (default: an empty one)."""
    state = eng.initial_state(0) if state is None else state
    outs, rejs = [], []
    for a, b in zip([0, *cuts], [*cuts, len(cols)], strict=True):
        part = cols.take(slice(a, b))
        if log_r is None:
            o, r, state = eng.process_host_full(part, state)
            r = r.astype(np.int8)
        else:
            o, r, state = _emu_process(eng, part, state, log_r, where, sub_log2, tuning)
        outs.append(o)
        rejs.append(np.asarray(r))
    merged = {k: np.concatenate([o[k] for o in outs]) for k in eng.output_names}
    return merged, np.concatenate(rejs), state


def _assert_close(got, want, names, price, exact):
    for k in names:
        a, b = got[k], want[k]
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=k)
            continue
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN positions of {k}")
        m = ~np.isnan(b)
        atol = ATOL + (64 * EPS * np.abs(price[m]) if k in CANCELLING else 0.0)
        err = np.abs(a[m] - b[m])
        bad = err > atol + RTOL * np.abs(b[m])
        assert not bad.any(), f"{k}: {bad.sum()} rows off, worst {err.max():.3g}"


def _assert_state(got: FeatureState, want: FeatureState, exact: bool) -> None:
    for k, w in want.arrays.items():
        g = got.arrays[k][: w.shape[0]]
        if exact or w.dtype.kind == "i":
            np.testing.assert_array_equal(g, w, err_msg=k)
        else:
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("which", ["default", "custom", "no_windows", "time_only"])
def test_one_batch_one_block_is_bit_identical(data, which):
    df, cols = data
    cfg = _configs(df)[which]
    eng = TickFeatureEngine(cfg, "cpu")
    want, want_rej, want_st = _run(eng, cols, [])
    got, got_rej, got_st = _run(eng, cols, [], log_r=16, sub_log2=9)  # 6 grouping sub-blocks
    if which == "custom":  # 60 ms: some back-stamped trades clamped, some rejected
        assert 0 < want_rej.sum() < (df["ts"].diff() < 0).sum()
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=True)
    _assert_state(got_st, want_st, exact=True)


@pytest.mark.parametrize("which", ["default", "custom", "time_only"])
@pytest.mark.parametrize("log_r", [2, 5, 9])
@pytest.mark.parametrize("where", ["emu", "emu-sort"])
def test_many_row_blocks_agree_to_rounding(data, which, log_r, where):
    df, cols = data
    cfg = _configs(df)[which]
    eng = TickFeatureEngine(cfg, "cpu")
    want, want_rej, want_st = _run(eng, cols, [])
    # the fused grouping with four sub-blocks per row block
    got, got_rej, got_st = _run(eng, cols, [], log_r=log_r, where=where, sub_log2=log_r - 2)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=False)
    _assert_state(got_st, want_st, exact=False)


@pytest.mark.parametrize("tuning", [(("FX_SUMMARY_PF", 0),), (("FX_WINDOW_SPLIT", 0),),
                                    (("FX_SUMMARY_PF", 0), ("FX_WINDOW_SPLIT", 0))])
def test_tuning_switches_keep_the_results(data, tuning):
    """Every value of the kernels' tuning switches computes the same outputs and state."""
    df, cols = data
    eng = TickFeatureEngine(_configs(df)["custom"], "cpu")
    want, want_rej, want_st = _run(eng, cols, [1000])
    got, got_rej, got_st = _run(eng, cols, [1000], log_r=16, tuning=tuning)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=True)
    _assert_state(got_st, want_st, exact=True)
    got, got_rej, got_st = _run(eng, cols, [1000], log_r=5, sub_log2=3, tuning=tuning)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=False)


@pytest.mark.parametrize("which", ["default", "custom", "time_only"])
def test_batches_carry_state_like_the_cpu(data, which):
    df, cols = data
    cfg = _configs(df)[which]
    eng = TickFeatureEngine(cfg, "cpu")
    rng = np.random.default_rng(5)
    cuts = [int(c) for c in np.cumsum(rng.integers(1, 400, 60)) if c < len(cols)]
    want, want_rej, want_st = _run(eng, cols, cuts)
    got, got_rej, got_st = _run(eng, cols, cuts, log_r=16)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=True)
    _assert_state(got_st, want_st, exact=True)
    got, got_rej, got_st = _run(eng, cols, cuts, log_r=3)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=False)
    _assert_state(got_st, want_st, exact=False)


def test_sparse_symbols_and_empty_rows_blocks():
    """Many symbols with few ticks each, most chunks empty, a symbol code beyond the rest."""
    df = random_ticks(seed=3, n=800, n_symbols=40)
    cols = to_columns(df)
    eng = TickFeatureEngine(FeatureConfig(window_ticks=3, max_window_ticks=4), "cpu")
    want, _, want_st = _run(eng, cols, [300])
    got, _, got_st = _run(eng, cols, [300], log_r=4)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy(), exact=False)
    _assert_state(got_st, want_st, exact=False)


@pytest.mark.gpu
@pytest.mark.skipif(not _GPU_OK, reason=f"no GPU: {_GPU_WHY}")
@pytest.mark.parametrize("where", ["gpu", "gpu-sort"])
@pytest.mark.parametrize("which", ["default", "custom", "time_only"])
def test_gpu_kernels_match_the_cpu_in_blocks_and_batches(data, which, where):
    """The same comparisons on the device (to rounding: the device's ``log`` may differ from the
    CPU's by an ulp), with the fused grouping kernel and with the sort-based grouping."""
    df, cols = data
    cfg = _configs(df)[which]
    eng = TickFeatureEngine(cfg, "cpu")
    price = df["price"].to_numpy()
    want, want_rej, want_st = _run(eng, cols, [])
    for log_r in (16, 4):
        got, got_rej, got_st = _run(eng, cols, [], log_r=log_r, where=where)
        np.testing.assert_array_equal(got_rej, want_rej)
        _assert_close(got, want, eng.output_names, price, exact=False)
        _assert_state(got_st, want_st, exact=False)
    cuts = [int(c) for c in np.cumsum(np.random.default_rng(2).integers(1, 500, 30)) if c < len(cols)]
    want, want_rej, want_st = _run(eng, cols, cuts)
    got, got_rej, got_st = _run(eng, cols, cuts, log_r=3, where=where)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, price, exact=False)
    _assert_state(got_st, want_st, exact=False)


@pytest.mark.parametrize("which", ["default", "time_only"])
def test_a_state_restored_from_compact_changelog_values_runs_on_like_the_cpu(data, which):
    """A compact changelog value keeps only the time-window trades a later window can count; its
    restore leaves the other ring slots at the smallest int64. From such a state the GPU kernels must
    go on exactly as the CPU twin does from the untouched state."""
    from mystocks_gpu.processors.features_changelog import DEAD_TS, FeaturesChangelogCodec

    df, cols = data
    cfg = _configs(df)[which]
    eng = TickFeatureEngine(cfg, "cpu")
    half = len(cols) // 2
    _, _, state = _run(eng, cols.take(slice(0, half)), [])
    layout = [("f", k, v.dtype, v.shape[1:]) for k, v in sorted(state.arrays.items())]
    codec = FeaturesChangelogCodec(layout, cfg.window_ns)
    n = state.capacity
    values = codec.encode({("f", k): v for k, v in state.arrays.items()}, n)
    host = {"f": {k: v.copy() for k, v in eng.initial_state(n).arrays.items()}}
    codec.decode_into([b"s%d" % i for i in range(n)], values, np.arange(n), host)
    restored = FeatureState("cpu", n, host["f"])
    assert (restored.arrays["t_ts"] == DEAD_TS).any()  # some slots were stale, and are marked so
    rest = cols.take(slice(half, len(cols)))
    cuts = [int(c) for c in np.cumsum(np.random.default_rng(4).integers(1, 300, 20)) if c < len(rest)]
    want, want_rej, _ = _run(eng, rest, cuts, state=state)
    got, got_rej, _ = _run(eng, rest, cuts, log_r=16, state=restored)
    np.testing.assert_array_equal(got_rej, want_rej)
    _assert_close(got, want, eng.output_names, df["price"].to_numpy()[half:], exact=True)

