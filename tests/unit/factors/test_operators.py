"""Every operator against pandas (per symbol / per date) on random panels with NaNs; the GPU code
path (array programs, run with NumPy) against the numba CPU twin; chunking and threads never change
a value; bad input gives clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.factors import (
    EngineConfig,
    EvaluationStopped,
    ExpressionError,
    FactorConfigError,
    Panel,
    PanelError,
    compile_program,
    evaluate_panel,
    parse_many,
)
from mystocks_gpu.gpu_ops.factors.factor_engine import CpuOps, XpOps, plan_chunk_symbols
from tests.unit.factors import pandas_ref
from tests.unit.factors.conftest_data import random_fields

CPU = EngineConfig(backend="cpu")

# every operator at least once; windows short enough for small panels
OPERATOR_EXPRS = {
    "ref": "Ref($close, 3)", "delta": "Delta($close, 2)", "mean": "Mean($close, 5)",
    "sum": "Sum($volume, 4)", "std": "Std($close, 6)", "var": "Var($open, 3)",
    "min": "Min($low, 5)", "max": "Max($high, 7)", "idxmax": "IdxMax($high, 5)",
    "idxmin": "IdxMin($low, 6)", "tsrank": "TsRank($close, 5)", "ema": "EMA($close, 6)",
    "wma": "WMA($close, 5)", "slope": "Slope($close, 8)", "rsquare": "Rsquare($close, 8)",
    "resi": "Resi($close, 8)", "skew": "Skew($close, 7)", "kurt": "Kurt($close, 9)",
    "q80": "Quantile($close, 7, 0.8)", "q25": "Quantile($close, 6, 0.25)",
    "corr": "Corr($close, Log($volume + 1), 10)", "cov": "Cov($close, $volume, 6)",
    "rank": "Rank($close / $open)", "zscore": "ZScore(Delta($close, 1))",
    "demean": "Demean($volume)", "abs": "Abs($close - $open)", "log": "Log($volume)",
    "sign": "Sign($close - $open)", "power": "Power($close / $open, 2)",
    "if": "If($close > $open, $high, -$low)", "greater": "Greater($open, $close)",
    "less": "Less($open, $close)", "cmp": "($close >= $open) + ($close < $low) * 2",
    "eqne": "($close == $close) + ($open != $close)", "arith": "($high - $low) / ($close + 1) * 3",
    "nested": "Mean(Rank(Delta($close, 1)), 5) - Corr(Rank($close), Rank($volume), 6)",
}


@pytest.fixture(scope="module")
def fields() -> dict[str, np.ndarray]:
    return random_fields(n_dates=90, n_symbols=9)


@pytest.fixture(scope="module")
def ours(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return evaluate_panel(parse_many(OPERATOR_EXPRS), Panel(fields), CPU)


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-8, what: str = "") -> None:
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    assert np.array_equal(nan_a, nan_b), \
        f"{what}: NaN positions differ at (date, symbol) {np.argwhere(nan_a != nan_b)[:5].tolist()}"
    scale = np.nanmax(np.abs(b)) if np.isfinite(b).any() else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-10 * max(scale, 1.0), equal_nan=True, err_msg=what)


@pytest.mark.parametrize("name", list(OPERATOR_EXPRS))
def test_operator_matches_pandas(name: str, fields: dict[str, np.ndarray],
                                 ours: dict[str, np.ndarray]) -> None:
    node = parse_many({name: OPERATOR_EXPRS[name]})[name]
    ref = pandas_ref.evaluate(node, pandas_ref.frames_of(fields)).to_numpy()
    assert np.isfinite(ours[name]).sum() > 0.3 * ours[name].size  # the test compares something
    _close(ours[name], ref, what=name)


def test_gpu_code_path_matches_cpu_twin(fields: dict[str, np.ndarray],
                                        ours: dict[str, np.ndarray]) -> None:
    xp_vals = evaluate_panel(parse_many(OPERATOR_EXPRS), Panel(fields), CPU, ops=XpOps(np))
    for k in OPERATOR_EXPRS:
        _close(xp_vals[k], ours[k], rtol=1e-9, what=k)


def test_chunking_and_threads_do_not_change_values(fields: dict[str, np.ndarray],
                                                   ours: dict[str, np.ndarray]) -> None:
    nodes = parse_many(OPERATOR_EXPRS)
    prog = compile_program(nodes)
    n_full = len(prog.fields()) + sum(prog.keep)
    per_symbol = 90 * 8 * (prog.peak_transient + CpuOps().scratch(prog.nodes[0]) + 1)
    budget = n_full * 9 * 90 * 8 + 3 * per_symbol  # full arrays + a 3-symbol chunk
    assert plan_chunk_symbols(prog, Panel(fields), CpuOps(), budget) == 3
    seen: list[str] = []
    small = evaluate_panel(nodes, Panel(fields), EngineConfig(
        backend="cpu", memory_budget_bytes=budget, threads=1), progress=lambda f, m: seen.append(m))
    assert any(m.startswith("evaluated symbols 6-8") for m in seen)  # three chunks ran
    with pytest.raises(FactorConfigError, match="memory budget .* too small"):
        evaluate_panel(nodes, Panel(fields), EngineConfig(backend="cpu", memory_budget_bytes=budget // 2))
    two = evaluate_panel(nodes, Panel(fields), EngineConfig(backend="cpu", threads=3))
    for k in nodes:
        assert np.array_equal(small[k], ours[k], equal_nan=True), k
        assert np.array_equal(two[k], ours[k], equal_nan=True), k


def test_nan_inside_window_blanks_the_next_outputs() -> None:
    x = np.arange(1.0, 21.0)[:, None] * np.ones((1, 2))
    x[7, 0] = np.nan
    out = evaluate_panel(parse_many({"m": "Mean($close, 3)"}), Panel({"close": x}), CPU)["m"]
    assert np.isnan(out[:2]).all()
    assert np.isnan(out[7:10, 0]).all() and np.isfinite(out[10:, 0]).all()
    assert out[9, 1] == pytest.approx(9.0)
    # constant window: Std exactly 0, Corr NaN
    c = np.full((10, 2), 5.0)
    res = evaluate_panel(parse_many({"s": "Std($close, 4)", "r": "Corr($close, $open, 4)"}),
                         Panel({"close": c, "open": np.arange(20.0).reshape(10, 2)}), CPU)
    assert (res["s"][3:] == 0).all() and np.isnan(res["r"]).all()


def test_bad_input_errors() -> None:
    p = Panel(random_fields(n_dates=30, n_symbols=4))
    with pytest.raises(ExpressionError, match="window 60 of Mean .* longer than the data \\(30"):
        evaluate_panel(parse_many({"long": "Mean($close, 60)"}), p, CPU)
    one = Panel({"close": np.ones((30, 1))})
    with pytest.raises(PanelError, match="'r' uses the cross-sectional operator Rank.*universe has 1"):
        evaluate_panel(parse_many({"r": "Rank($close)"}), one, CPU)
    # time-series ops on a single symbol are fine
    assert np.isfinite(evaluate_panel(parse_many({"m": "Mean($close, 3)"}), one, CPU)["m"][2:]).all()
    with pytest.raises(PanelError, match="uses \\$vwap but the panel has only"):
        evaluate_panel(parse_many({"v": "$vwap"}), Panel({"close": np.ones((5, 2))}), CPU)
    with pytest.raises(PanelError, match="shape"):
        Panel({"close": np.ones((5, 2)), "open": np.ones((5, 3))})
    with pytest.raises(EvaluationStopped):
        evaluate_panel(parse_many({"m": "Mean($close, 3)"}), p, CPU, should_stop=lambda: True)


@pytest.mark.gpu
def test_gpu_backend_matches_cpu(fields: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> None:
    from mystocks_gpu.gpu_ops.backend import gpu_available
    from mystocks_gpu.gpu_ops.factors import EvalConfig, run_factors

    ok, why = gpu_available()
    if not ok:
        pytest.skip(f"no GPU: {why}")
    gpu = evaluate_panel(parse_many(OPERATOR_EXPRS), Panel(fields), EngineConfig(backend="gpu"))
    for k in OPERATOR_EXPRS:
        _close(gpu[k], ours[k], rtol=1e-9, what=f"{k} = {OPERATOR_EXPRS[k]}")
    exprs = {"a": "Delta($close, 5)", "b": "Corr($close, $volume, 10)"}
    g = run_factors(exprs, Panel(fields), EngineConfig(backend="gpu"), EvalConfig())
    c = run_factors(exprs, Panel(fields), EngineConfig(backend="cpu"), EvalConfig())
    np.testing.assert_allclose(g.rank_ic, c.rank_ic, rtol=1e-10, atol=1e-12, equal_nan=True, err_msg="rank_ic")
    np.testing.assert_allclose(g.turnover, c.turnover, rtol=1e-12, equal_nan=True, err_msg="turnover")
