"""Backtest engine: values against the independent reference, exact chunking, GPU vs CPU twins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.backtest import (
    STAT_COLUMNS,
    BacktestInputError,
    collect_stats,
    compile_grid,
    materialize_signals,
    plan_chunks,
    run_backtest,
    run_chunk,
    run_curves,
)
from mystocks_gpu.gpu_ops.backtest.engine import (
    best_cells,
    chunk_bytes,
    compute_indicators,
    prepare_inputs,
)
from mystocks_gpu.gpu_ops.backtest.signals import new_carry
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from tests.unit.reference_backtest import GRIDS, random_bars, ref_backtest, ref_signals

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
TS = np.arange(260, dtype=np.int64) * 86_400_000_000_000 + 1_600_000_000_000_000_000


# (sizing, size, execution, fees, fixed_fees, slippage)
MONEY = [
    ("fraction", 1.0, "next_open", 0.001, 0.0, 0.0005),
    ("fixed", 40_000.0, "next_open", 0.002, 1.5, 0.001),
    ("fraction", 0.6, "close", 0.0005, 2.0, 0.0),
]


def _spec(strategy: str, direction: str, money: tuple, **kw) -> BacktestSpec:
    sizing, size, execution, fees, fixed, slip = money
    extra = {"signal_topic": "features.x", "signal_column": "ema"} if strategy == "signal" else {}
    return BacktestSpec(
        strategy=strategy,
        params=GRIDS[strategy],
        direction=direction,
        sizing=sizing,
        size=size,
        execution=execution,
        fees=fees,
        fixed_fees=fixed,
        slippage=slip,
        **extra,
        **kw,
    )


def _assert_stats_close(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(ours["symbol"]) == list(ref["symbol"])
    assert [dict(p) for p in ours["params"]] == [dict(p) for p in ref["params"]]
    for col in STAT_COLUMNS:
        a = ours[col].to_numpy(dtype=np.float64)
        b = ref[col].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=col)


@pytest.fixture(scope="module")
def bars() -> dict[str, np.ndarray]:
    return random_bars(seed=7)


@pytest.mark.parametrize("strategy", sorted(GRIDS))
@pytest.mark.parametrize("direction", ["long_only", "long_short"])
@pytest.mark.parametrize(
    "money", MONEY, ids=["fraction-next_open", "fixed-next_open", "fraction-close"]
)
def test_matches_reference(bars, strategy, direction, money):
    spec = _spec(strategy, direction, money)
    out = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    sizing, size, execution, fees, fixed, slip = money
    ref, ref_curves = ref_backtest(
        bars,
        SYMBOLS,
        strategy,
        GRIDS[strategy],
        direction=direction,
        execution=execution,
        fee=fees,
        fixed_fee=fixed,
        slip=slip,
        sizing=sizing,
        size=size,
    )
    _assert_stats_close(out.stats, ref)
    assert out.stats["n_trades"].sum() > 0
    # the best curves equal the reference's equity/drawdown series
    assert len(out.curves) == 5
    for c in out.curves:
        pid = next(
            i for i, p in enumerate(ref["params"][: len(out.stats) // 4]) if dict(p) == c.params
        )
        eq, dd = ref_curves[(c.symbol, pid)]
        np.testing.assert_allclose(c.equity, eq, rtol=1e-12)
        np.testing.assert_allclose(c.drawdown, dd, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(c.ts, TS)


def test_signals_match_reference(bars):
    for strategy, grid in GRIDS.items():
        plan = compile_grid(strategy, grid)
        el, xl, es, xs = materialize_signals(plan, bars, long_short=True)
        for p_id, p in enumerate(plan.params):
            for s in range(len(SYMBOLS)):
                ref = ref_signals(
                    strategy,
                    p,
                    *(bars[k][s] for k in ("open", "high", "low", "close")),
                    bars["signal"][s],
                    True,
                )
                for ours, theirs in zip((el, xl, es, xs), ref, strict=True):
                    np.testing.assert_array_equal(ours[p_id, s], theirs, err_msg=f"{strategy} {p}")


def test_stats_edge_values(bars):
    # a grid whose signals never fire on a short window: no trades, flat equity
    spec = BacktestSpec(strategy="rsi", params={"period": [5], "lower": [0.0], "upper": [100.0]})
    out = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    st = out.stats
    assert (st["n_trades"] == 0).all() and (st["total_return"] == 0).all()
    assert st["win_rate"].isna().all() and (st["sharpe"] == 0).all() and (st["sortino"] == 0).all()
    assert (
        (st["max_drawdown"] == 0).all() and (st["exposure"] == 0).all() and (st["cagr"] == 0).all()
    )


def _tiny_budget_spec(strategy: str, direction: str) -> BacktestSpec:
    """Half of what one symbol's whole history needs: forces symbol ranges *and* time chunks."""
    spec = _spec(strategy, direction, MONEY[0])
    need = chunk_bytes(compile_grid(spec.strategy, spec.params), 1, len(TS))
    return BacktestSpec.from_dict({**spec.to_dict(), "memory_budget_bytes": need // 2})


@pytest.mark.parametrize("strategy", sorted(GRIDS))
def test_chunked_equals_unchunked(bars, strategy):
    direction = "long_short" if strategy in ("ma_cross", "rsi") else "long_only"
    whole = run_backtest(bars, SYMBOLS, TS, _spec(strategy, direction, MONEY[0]), backend="cpu")
    tiny = _tiny_budget_spec(strategy, direction)
    chunks = plan_chunks(tiny, len(SYMBOLS), len(TS))
    assert len({c.group for c in chunks}) > 1, chunks
    assert len({c.bar_start for c in chunks}) > 2, chunks
    calls: list[float] = []
    parts = run_backtest(bars, SYMBOLS, TS, tiny, backend="cpu", progress_cb=calls.append)
    assert parts.n_chunks == len(chunks)
    assert len(calls) == len(chunks) and calls == sorted(calls) and calls[-1] == pytest.approx(1.0)
    pd.testing.assert_frame_equal(parts.stats, whole.stats, check_exact=True)
    for a, b in zip(parts.curves, whole.curves, strict=True):
        assert (a.symbol, a.params) == (b.symbol, b.params)
        np.testing.assert_array_equal(a.equity, b.equity)
        np.testing.assert_array_equal(a.drawdown, b.drawdown)


def test_chunk_api_spread_and_merge(bars):
    """The job plane's path: plan, run each symbol range's time chunks in order (states moved
    through the host), merge, then curves — equals run_backtest."""
    spec = _tiny_budget_spec("ma_cross", "long_only")
    data, syms, ts = prepare_inputs(bars, SYMBOLS, TS, spec)
    plan = compile_grid(spec.strategy, spec.params)
    chunks = plan_chunks(spec, len(syms), len(ts), plan)
    finals = []
    for g in sorted({c.group for c in chunks}, reverse=True):  # any order across ranges
        st = None
        for ch in [c for c in chunks if c.group == g]:
            st = run_chunk(ch, data, spec, "cpu", st, plan).to_host()
        finals.append(st)
    stats = collect_stats(finals, syms, len(ts), spec, plan)
    whole = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    pd.testing.assert_frame_equal(stats, whole.stats, check_exact=True)
    cells = best_cells(stats, "sharpe", 3)
    curves = run_curves(data, syms, ts, spec, cells, "cpu", plan)
    assert [(c.symbol, c.params) for c in curves] == [
        (c.symbol, c.params) for c in whole.curves[:3]
    ]
    with pytest.raises(BacktestInputError, match="previous time chunk"):
        run_chunk(next(c for c in chunks if c.bar_start > 0), data, spec, "cpu", None, plan)
    with pytest.raises(BacktestInputError, match="tile"):
        collect_stats(finals[:-1], syms, len(ts), spec, plan)


def test_universe_time_range_and_top(bars):
    spec = BacktestSpec(
        universe=["CCC", "AAA"],
        start=int(TS[20]),
        end=int(TS[200]),
        strategy="ma_cross",
        params={"fast": [3, 8], "slow": [21]},
        metric="total_return",
        top_n=3,
        n_curves=2,
    )
    out = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    assert sorted(set(out.stats["symbol"])) == ["AAA", "CCC"] and len(out.stats) == 4
    sub = {k: v[[0, 2]][:, 20:200] for k, v in bars.items()}
    ref, _ = ref_backtest(sub, ["AAA", "CCC"], "ma_cross", {"fast": [3, 8], "slow": [21]})
    _assert_stats_close(out.stats, ref)
    top = out.top()
    assert (
        len(top) == 3
        and list(top["total_return"]) == sorted(out.stats["total_return"], reverse=True)[:3]
    )
    assert len(out.curves) == 2 and out.curves[0].ts[0] == TS[20] and len(out.curves[0].ts) == 180
    assert out.top(2, "max_drawdown")["max_drawdown"].is_monotonic_increasing
    rows = out.rows()
    assert (
        len(rows) == 3
        and isinstance(rows[0]["n_trades"], int)
        and isinstance(rows[0]["params"]["fast"], float)
    )
    assert out.curve_rows()[0]["equity"][0] == pytest.approx(100_000.0)


def test_input_errors(bars):
    spec = _spec("ma_cross", "long_only", MONEY[0])
    with pytest.raises(BacktestInputError, match="lack"):
        run_backtest({k: bars[k] for k in ("close",)}, SYMBOLS, TS, spec, backend="cpu")
    # ma_cross reads open and close only: high and low change nothing (absent or garbage)
    two = run_backtest({k: bars[k] for k in ("open", "close")}, SYMBOLS, TS, spec, backend="cpu")
    garbage = {**bars, "high": np.full_like(bars["high"], np.nan), "low": -bars["low"]}
    pd.testing.assert_frame_equal(two.stats, run_backtest(garbage, SYMBOLS, TS, spec, backend="cpu").stats,
                                  check_exact=True)
    with pytest.raises(BacktestInputError, match=r"lack \['high', 'low'\]"):
        run_backtest({k: bars[k] for k in ("open", "close")}, SYMBOLS, TS, _spec("breakout", "long_only", MONEY[0]),
                     backend="cpu")
    with pytest.raises(BacktestInputError, match="shape"):
        run_backtest({k: v[:, :-1] for k, v in bars.items()}, SYMBOLS, TS, spec, backend="cpu")
    with pytest.raises(BacktestInputError, match="not in the data"):
        run_backtest(
            bars,
            SYMBOLS,
            TS,
            BacktestSpec.from_dict({**spec.to_dict(), "universe": ["ZZZ"]}),
            backend="cpu",
        )
    with pytest.raises(BacktestInputError, match="max_cells"):
        run_backtest(
            bars,
            SYMBOLS,
            TS,
            BacktestSpec.from_dict({**spec.to_dict(), "max_cells": 1000}),
            backend="cpu",
        )
    with pytest.raises(BacktestInputError, match="too small"):
        big = {"fast": list(range(1, 31)), "slow": list(range(31, 61))}
        plan_chunks(
            BacktestSpec.from_dict({**spec.to_dict(), "params": big, "memory_budget_bytes": 4096}),
            4,
            260,
        )
    with pytest.raises(BacktestInputError, match="no bars"):
        run_backtest(
            bars,
            SYMBOLS,
            TS,
            BacktestSpec.from_dict({**spec.to_dict(), "start": 0, "end": 5}),
            backend="cpu",
        )


def test_indicator_block_sums_are_chunk_invariant(bars):
    """An SMA computed from any later chunk start (with lead) equals the full-range one bit for bit."""
    plan = compile_grid("zscore", {"window": [7, 13], "entry_z": [1.0], "exit_z": [0.0]})
    close = np.ascontiguousarray(bars["close"])
    full = compute_indicators(plan, {"close": close}, 0, 0, new_carry(np, plan, 4), "cpu")
    for start in (14, 50, 101):
        base = start - plan.lead
        part = compute_indicators(
            plan,
            {"close": np.ascontiguousarray(close[:, base:])},
            base,
            plan.lead,
            new_carry(np, plan, 4),
            "cpu",
        )
        np.testing.assert_array_equal(part[:, :, plan.lead :], full[:, :, start:])


@pytest.mark.parametrize("strategy", ["ma_cross", "breakout", "zscore"])
def test_enough_symbols_take_the_fused_path_and_match_the_reference(strategy):
    """With enough symbols (``FUSED_MIN_SYMBOLS``) and short indicator rows the CPU engine runs the
    fused loop; its stats equal the pandas reference's."""
    from mystocks_gpu.gpu_ops.backtest.sim_cpu import FUSED_MIN_SYMBOLS, fused_fits

    n = FUSED_MIN_SYMBOLS + 2
    prices = random_bars(seed=11, n_symbols=n)
    names = [f"S{i:02d}" for i in range(n)]
    plan = compile_grid(strategy, GRIDS[strategy])
    assert fused_fits(plan.code, n) and not fused_fits(plan.code, 4) and not fused_fits(compile_grid("rsi", GRIDS["rsi"]).code, n)
    spec = _spec(strategy, "long_short", MONEY[0])
    out = run_backtest(prices, names, TS, spec, backend="cpu")
    ref, _ = ref_backtest(prices, names, strategy, GRIDS[strategy], direction="long_short", execution="next_open",
                          fee=MONEY[0][3], fixed_fee=MONEY[0][4], slip=MONEY[0][5], sizing="fraction", size=1.0)
    _assert_stats_close(out.stats, ref)
    assert out.stats["n_trades"].sum() > 0


@pytest.mark.parametrize("strategy", ["ma_cross", "breakout", "zscore"])
@pytest.mark.parametrize("big", [False, True])
def test_fused_kernel_equals_the_indicator_stack_and_simulate_cpu(bars, strategy, big):
    """The fused CPU loop (indicators per symbol inside the parallel loop) leaves the same state,
    bit for bit, as the stack-then-simulate path that the GPU kernel transcribes; from a later
    chunk start (lead bars, base offset), and with more cells per symbol than one work item holds
    (``big``: several items per symbol, each building only the rows its cells read)."""
    from mystocks_gpu.gpu_ops.backtest.engine import _sim_params
    from mystocks_gpu.gpu_ops.backtest.signals import compute_indicators_cpu
    from mystocks_gpu.gpu_ops.backtest.sim_cpu import GROUP_CELLS, simulate_cpu, simulate_fused_cpu
    from mystocks_gpu.gpu_ops.backtest.state import F_CASH, F_EQ, F_PEAK, init_state

    grid = {"ma_cross": {"fast": list(range(2, 30, 2)) if big else [3, 8], "slow": [31, 40, 55, 70, 90, 110] if big
                         else [8, 21, 34]},
            "breakout": {"window": list(range(3, 150, 2)) if big else [5, 20]},
            "zscore": {"window": list(range(5, 60, 3)) if big else [10, 25], "entry_z": [1.0, 1.8, 2.5] if big
                       else [1.0, 1.8], "exit_z": [0.0, 0.5] if big else [0.0]}}[strategy]
    spec = BacktestSpec(
        strategy=strategy, params=grid, direction="long_short", sizing="fixed", size=40_000.0, fees=0.002,
        fixed_fees=1.5, slippage=0.001)
    plan = compile_grid(spec.strategy, spec.params)
    assert (plan.n_par > GROUP_CELLS) == big
    sim = _sim_params(spec, plan)
    flags = (sim.code, sim.long_short, sim.next_open, sim.fixed_sizing, sim.size, sim.fee, sim.fixed_fee, sim.slip)
    start = max(130, plan.lead + 40)
    base = start - plan.lead
    data = {k: np.ascontiguousarray(v[:, base:]) for k, v in bars.items()}
    n_cells = len(SYMBOLS) * plan.n_par
    cells = np.arange(n_cells, dtype=np.int64)
    sf0, si0 = init_state(np, n_cells, 100_000.0)
    for f in (F_CASH, F_EQ, F_PEAK):  # a state carried in from earlier bars: unequal cash
        sf0[f] += np.linspace(0.0, 5_000.0, n_cells)
    want_f, want_i = sf0.copy(), si0.copy()
    ind = compute_indicators_cpu(plan, data, base, plan.lead, new_carry(np, plan, len(SYMBOLS)))
    none = np.empty((1, 1))
    simulate_cpu(*flags, data["open"], data["close"], ind, plan.pidx, plan.pval, plan.lead, cells, plan.n_par,
                 want_f, want_i, False, none, none)
    got_f, got_i = sf0.copy(), si0.copy()
    simulate_fused_cpu(*flags, data["open"], data["close"], data["high"], data["low"], plan.ind_windows, base,
                       plan.n_ind, plan.pidx, plan.pval, plan.lead, cells, plan.n_par, got_f, got_i)
    np.testing.assert_array_equal(got_f, want_f)
    np.testing.assert_array_equal(got_i, want_i)
    assert int(want_i.sum()) > 0  # cells traded and counted: the comparison saw real work
    with pytest.raises(ValueError, match="no fused"):
        simulate_fused_cpu(99, *flags[1:], data["open"], data["close"], data["high"], data["low"], plan.ind_windows,
                           base, plan.n_ind, plan.pidx, plan.pval, plan.lead, cells, plan.n_par, got_f, got_i)


# ---------------------------------------------------------------------------------------------
# GPU twins
# ---------------------------------------------------------------------------------------------

_GPU_OK, _GPU_WHY = gpu_available()
gpu = pytest.mark.skipif(not _GPU_OK, reason=f"no GPU: {_GPU_WHY}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("strategy", sorted(GRIDS))
@pytest.mark.parametrize("direction", ["long_only", "long_short"])
@pytest.mark.parametrize(
    "money", MONEY, ids=["fraction-next_open", "fixed-next_open", "fraction-close"]
)
def test_gpu_matches_cpu(bars, strategy, direction, money):
    spec = _spec(strategy, direction, money)
    cpu = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    gpu_out = run_backtest(bars, SYMBOLS, TS, spec, backend="gpu")
    assert gpu_out.backend == "gpu"
    _assert_stats_close(gpu_out.stats, cpu.stats)
    for col in ("n_trades", "max_drawdown_duration"):
        np.testing.assert_array_equal(gpu_out.stats[col], cpu.stats[col])
    for a, b in zip(gpu_out.curves, cpu.curves, strict=True):
        assert (a.symbol, a.params) == (b.symbol, b.params)
        np.testing.assert_allclose(a.equity, b.equity, rtol=1e-12)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("strategy", sorted(GRIDS))
def test_gpu_indicators_equal_cpu(bars, strategy):
    import cupy as cp

    plan = compile_grid(strategy, GRIDS[strategy])
    host = {k: np.ascontiguousarray(v) for k, v in bars.items()}
    dev = {k: cp.asarray(v) for k, v in host.items()}
    for base, lead in ((0, 0), (60, plan.lead)):
        h = {k: np.ascontiguousarray(v[:, base - lead if base else 0 :]) for k, v in host.items()}
        d = {k: cp.ascontiguousarray(v[:, base - lead if base else 0 :]) for k, v in dev.items()}
        c_cpu, c_gpu = new_carry(np, plan, 4), new_carry(cp, plan, 4)
        a = compute_indicators(plan, h, base - lead if base else 0, lead, c_cpu, "cpu")
        b = compute_indicators(plan, d, base - lead if base else 0, lead, c_gpu, "gpu")
        np.testing.assert_array_equal(cp.asnumpy(b), a)
        np.testing.assert_array_equal(cp.asnumpy(c_gpu), c_cpu)


@pytest.mark.gpu
@gpu
def test_gpu_chunked_equals_cpu(bars):
    spec = _tiny_budget_spec("rsi", "long_short")
    cpu = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    gpu_out = run_backtest(bars, SYMBOLS, TS, spec, backend="gpu")
    assert gpu_out.n_chunks > 2
    _assert_stats_close(gpu_out.stats, cpu.stats)


# ---------------------------------------------------------------------------------------------
# parameter-range chunking and streamed windows
# ---------------------------------------------------------------------------------------------

BIG_GRIDS = {
    "ma_cross": {"fast": list(range(2, 22)), "slow": list(range(10, 50, 3))},
    "rsi": {"period": [3, 5, 7, 14], "lower": [10.0, 20.0, 30.0, 40.0], "upper": [60.0, 70.0, 80.0]},
    "breakout": {"window": list(range(2, 60))},
}


@pytest.mark.parametrize("strategy", sorted(BIG_GRIDS))
def test_grid_larger_than_the_budget_is_split_into_parameter_ranges(bars, strategy):
    """A budget below one symbol's whole grid: parameter ranges (each compiled with only its
    indicator rows), same stats as the independent reference and as an unchunked run."""
    grid = BIG_GRIDS[strategy]
    spec = BacktestSpec(strategy=strategy, params=grid, direction="long_short")
    plan = compile_grid(strategy, grid)
    budget = chunk_bytes(plan, 1, len(TS)) // 6  # one symbol's whole grid does not fit
    small = BacktestSpec.from_dict({**spec.to_dict(), "memory_budget_bytes": budget})
    chunks = plan_chunks(small, len(SYMBOLS), len(TS))
    assert len({(c.par_start, c.par_stop) for c in chunks}) > 1, chunks[:3]
    for c in chunks:
        sub = c.params(plan)
        assert chunk_bytes(sub, c.n_symbols, c.n_bars + c.lead) <= budget
    out = run_backtest(bars, SYMBOLS, TS, small, backend="cpu")
    whole = run_backtest(bars, SYMBOLS, TS, spec, backend="cpu")
    pd.testing.assert_frame_equal(out.stats, whole.stats, check_exact=True)
    ref, _ = ref_backtest(bars, SYMBOLS, strategy, grid, direction="long_short")
    _assert_stats_close(out.stats, ref)
    for a, b in zip(out.curves, whole.curves, strict=True):
        np.testing.assert_array_equal(a.equity, b.equity)


@pytest.mark.parametrize("strategy", sorted(GRIDS))
@pytest.mark.parametrize("window", [1, 17, 260])
def test_streamed_windows_equal_the_whole_run(bars, strategy, window):
    """Bars fed window by window (any width, with a budget forcing chunks) give the same stats and
    curves as run_backtest on the whole arrays, bit for bit."""
    from mystocks_gpu.gpu_ops.backtest.stream import CurvePass, GridStream

    for s in (_spec(strategy, "long_short", MONEY[1]), _tiny_budget_spec(strategy, "long_short")):
        whole = run_backtest(bars, SYMBOLS, TS, BacktestSpec.from_dict({**s.to_dict(), "memory_budget_bytes": 1 << 30}),
                             backend="cpu")
        gs = GridStream(s, SYMBOLS, window, "cpu")
        for a in range(0, len(TS), window):
            gs.feed({k: v[:, a:a + window] for k, v in bars.items()}, TS[a:a + window])
        stats = gs.finish()
        pd.testing.assert_frame_equal(stats, whole.stats, check_exact=True)
        cells = best_cells(stats, s.metric, 5)
        cp = CurvePass(gs, cells)
        for a in range(0, len(TS), window):
            cp.feed({k: v[:, a:a + window] for k, v in bars.items()}, len(TS[a:a + window]))
        eq, dd = cp.result()
        for i, c in enumerate(whole.curves):
            np.testing.assert_array_equal(eq[i], c.equity)
            np.testing.assert_array_equal(dd[i], c.drawdown)
    with pytest.raises(BacktestInputError, match="ascending"):
        gs.feed({k: v[:, :3] for k, v in bars.items()}, TS[:3])


def test_curve_stride_keeps_block_ends_and_worst_drawdown(bars):
    from mystocks_gpu.gpu_ops.backtest.engine import CurveRecorder

    spec = _spec("ma_cross", "long_only", MONEY[0])
    plan = compile_grid(spec.strategy, spec.params)
    cells = [(0, 0), (2, 3)]
    full = CurveRecorder(plan, spec, cells, len(TS), "cpu")
    full.feed(bars, 0, len(TS))
    strided = CurveRecorder(plan, spec, cells, len(TS), "cpu", stride=7)
    strided.feed(bars, 0, len(TS))
    eq, dd = full.result()
    eq7, dd7 = strided.result()
    blocks = np.arange(len(TS)) // 7
    want_eq = pd.DataFrame(eq.T).groupby(blocks).last().to_numpy().T
    want_dd = pd.DataFrame(dd.T).groupby(blocks).max().to_numpy().T
    np.testing.assert_array_equal(eq7, want_eq)
    np.testing.assert_array_equal(dd7, want_dd)


def test_count_valid_equals_the_expanded_grid():
    from mystocks_gpu.gpu_ops.backtest.strategies import count_valid, expand_grid

    rng = np.random.default_rng(3)
    for _ in range(30):
        grids = {
            "ma_cross": {"fast": rng.integers(1, 30, 6).tolist(), "slow": rng.integers(2, 30, 5).tolist()},
            "zscore": {"window": [5, 9], "entry_z": rng.uniform(0.1, 3, 4).round(1).tolist(),
                       "exit_z": rng.uniform(-1, 3, 4).round(1).tolist()},
            "rsi": {"period": [3], "lower": rng.uniform(0, 100, 5).round().tolist(),
                    "upper": rng.uniform(0, 100, 4).round().tolist()},
            "signal": {"threshold_long": rng.normal(0, 1, 4).round(1).tolist(),
                       "threshold_exit": rng.normal(0, 1, 4).round(1).tolist()},
            "breakout": {"window": rng.integers(1, 50, 5).tolist()},
        }
        for name, grid in grids.items():
            try:
                n = len(expand_grid(name, grid))
            except BacktestInputError:
                n = 0
            assert count_valid(name, grid) == n, (name, grid)


def test_many_cells_per_symbol_match_the_reference_in_any_cell_order(bars):
    """More parameter sets per symbol than one parallel work item holds (``GROUP_CELLS``), over
    several time blocks (``TIME_BLOCK``): stats and best curves equal the reference; the kernel
    gives every cell the same state whatever the order of ``cell_ids`` (work items then mix
    symbols and break runs)."""
    from mystocks_gpu.gpu_ops.backtest.engine import _sim_params, _simulate
    from mystocks_gpu.gpu_ops.backtest.sim_cpu import GROUP_CELLS, TIME_BLOCK
    from mystocks_gpu.gpu_ops.backtest.state import init_state

    grid = {"fast": list(range(2, 13)), "slow": list(range(13, 23))}  # 110 pairs
    assert 11 * 10 > GROUP_CELLS and len(TS) > 2 * TIME_BLOCK
    spec = BacktestSpec(strategy="ma_cross", params=grid, direction="long_short", fees=0.001, slippage=0.0005)
    sub = {k: v[:2] for k, v in bars.items()}
    out = run_backtest(sub, SYMBOLS[:2], TS, spec, backend="cpu")
    ref, ref_curves = ref_backtest(sub, SYMBOLS[:2], "ma_cross", grid, direction="long_short",
                                   execution="next_open", fee=0.001, fixed_fee=0.0, slip=0.0005,
                                   sizing="fraction", size=1.0)
    _assert_stats_close(out.stats, ref)
    for c in out.curves:
        pid = next(i for i, p in enumerate(ref["params"][:110]) if dict(p) == c.params)
        np.testing.assert_allclose(c.equity, ref_curves[(c.symbol, pid)][0], rtol=1e-12)

    plan = compile_grid("ma_cross", grid)
    data = {k: np.ascontiguousarray(sub[k]) for k in ("open", "close")}
    ind = compute_indicators(plan, data, 0, 0, new_carry(np, plan, 2), "cpu")
    sim = _sim_params(spec, plan)
    n = 2 * plan.n_par
    states = []
    for ids in (np.arange(n), np.random.default_rng(3).permutation(n)):
        sf, si = init_state(np, n, sim.init_cash)
        eq, dd = np.zeros((n, len(TS))), np.zeros((n, len(TS)))
        _simulate(sim, plan, data, ind, 0, ids.astype(np.int64), sf, si, "cpu", eq, dd)
        back = np.argsort(ids)
        states.append((sf[:, back], si[:, back], eq[back], dd[back]))
    for a, b in zip(states[0], states[1], strict=True):
        np.testing.assert_array_equal(a, b)
