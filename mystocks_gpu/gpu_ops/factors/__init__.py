"""Formulaic factors: expression language, batched evaluation (numba CPU / CuPy GPU), Alphalens
metrics, mining and combination.

Public API (what a job runner calls; every step takes ``progress(fraction, message)`` and
``should_stop()`` where it runs long, and raises :class:`EvaluationStopped` when asked to stop)::

    from mystocks_gpu.gpu_ops import factors as fx

    exprs = fx.load_library("alpha158")                  # name -> expression (TOML data)
    nodes = fx.parse_many(exprs)                         # parse once (errors name the position)
    panel = fx.Panel({"open": o, "high": h, "low": l, "close": c, "volume": v, "vwap": w})
    values = fx.evaluate_panel(nodes, panel, fx.EngineConfig(backend="auto"))  # name -> (T, N)
    report = fx.run_factors(exprs, panel, fx.EngineConfig(), fx.EvalConfig(),
                            on_values=publish, progress=cb, should_stop=stop)
    report.summary            # one row per (factor, horizon): IC, rank IC, IR, t, q1..q5, spread,
                              # turnover, autocorrelation, status ("ok" / "all_nan" / ...)
    report.correlation_frame()  # mean cross-sectional rank correlation, factor x factor
    mined = fx.mine(panel, fx.MiningConfig(seed=7), progress=cb, should_stop=stop)
    combo = fx.combine(values_of_kept, c, fx.CombineConfig(method="ridge"))  # weights + report

Data: a :class:`Panel` holds ``(n_dates, n_symbols)`` float64 arrays per field, NaN = no bar.
Dates are positions: ``Ref($close, 1)`` is the previous row of the panel for that symbol.

Expression semantics (per symbol along dates for time-series operators, per date across symbols
for cross-sectional ones; ``d`` a window in bars):

* Warm-up and missing values: a windowed operator is NaN until ``d`` bars exist and wherever its
  window holds a NaN or ±inf (pandas ``rolling(d, min_periods=d)`` per symbol, as Qlib) — one
  missing bar blanks the next ``d`` outputs. ``Ref(x, d)`` / ``Delta(x, d)`` are NaN for the
  first ``d`` bars and propagate NaN. ``EMA(x, d)`` is ``ewm(span=d, adjust=False,
  min_periods=d)`` (missing bars carry the average forward and decay the old weight).
* Time series: Ref, Delta, Mean, Sum (on the CPU bit for bit pandas' rolling sum / mean, so
  exact ties such as ``Sum(Greater(dx, 0), d) / Sum(Abs(dx), d)`` = 1.0 rank as in pandas; the
  GPU sums each window afresh, equal to rounding), Std/Var (ddof=1; exactly 0 on a constant
  window), Min, Max, IdxMax/IdxMin (1-based position of the first extreme, 1 = oldest), TsRank
  (percentile of the last value in its window), EMA, WMA (weights 1..d, newest d),
  Slope/Rsquare/Resi (OLS on 1..d; Resi = last residual), Quantile(x, d, q) (linear), Corr/Cov
  (pairs with both finite; Corr NaN on a constant window), Skew/Kurt (pandas' bias-corrected;
  NaN on a constant window).
* Cross-sectional (need >= 2 symbols, else :class:`PanelError`): Rank (percentile, average ties),
  ZScore (std ddof=1), Demean; over the date's non-NaN values.
* Element-wise: + - * / (IEEE), unary -, Abs, Log, Sign, Power, Greater/Less (max/min),
  comparisons > >= < <= == != (1.0/0.0, NaN if an input is NaN), If(c, a, b).

Chunking: ``EngineConfig.memory_budget_bytes`` bounds one pass; time-series work is split by
symbol and :func:`run_factors` / :func:`mine` evaluate factors in batches; results never depend
on the chunking. Metrics definitions: :mod:`.evaluate`. Mining: :mod:`.mining`. Combination:
:mod:`.combine`. CPU and GPU twins: ``ts_cpu``/``ts_cpu_window`` vs ``ts_xp``, ``cs_cpu`` vs
``cs_xp``, ``metrics_cpu`` vs ``metrics_xp`` (the ``xp`` code runs with NumPy in the tests).
"""

from mystocks_gpu.gpu_ops.factors.combine import CombineResult, combine
from mystocks_gpu.gpu_ops.factors.config import (
    CombineConfig,
    EngineConfig,
    EvalConfig,
    MiningConfig,
)
from mystocks_gpu.gpu_ops.factors.evaluate import Evaluator, FactorReport, rank_correlation
from mystocks_gpu.gpu_ops.factors.exceptions import (
    EvaluationStopped,
    ExpressionError,
    ExpressionSyntaxError,
    FactorConfigError,
    FactorError,
    PanelError,
)
from mystocks_gpu.gpu_ops.factors.expr import Node, parse, parse_many
from mystocks_gpu.gpu_ops.factors.factor_engine import compile_program, evaluate_panel
from mystocks_gpu.gpu_ops.factors.library import available as available_libraries
from mystocks_gpu.gpu_ops.factors.library import load_library
from mystocks_gpu.gpu_ops.factors.mining import MiningResult, mine
from mystocks_gpu.gpu_ops.factors.panel import Panel, panel_from_frames
from mystocks_gpu.gpu_ops.factors.pipeline import run_factors

__all__ = [
    "CombineConfig", "CombineResult", "EngineConfig", "EvalConfig", "EvaluationStopped",
    "Evaluator", "ExpressionError", "ExpressionSyntaxError", "FactorConfigError", "FactorError",
    "FactorReport", "MiningConfig", "MiningResult", "Node", "Panel", "PanelError",
    "available_libraries", "combine", "compile_program", "evaluate_panel", "load_library", "mine",
    "panel_from_frames", "parse", "parse_many", "rank_correlation", "run_factors",
]
