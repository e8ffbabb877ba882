"""The factor job's steps in one call: parse -> evaluate in factor batches within the memory budget
-> metrics -> pairwise correlation (:func:`run_factors`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backend import select
from mystocks_gpu.gpu_ops.factors.config import EngineConfig, EvalConfig
from mystocks_gpu.gpu_ops.factors.evaluate import (
    Evaluator,
    FactorReport,
    MetricsCpu,
    MetricsXp,
    make_metrics,
    rank_correlation,
)
from mystocks_gpu.gpu_ops.factors.exceptions import EvaluationStopped, FactorConfigError
from mystocks_gpu.gpu_ops.factors.expr import Node, parse_many
from mystocks_gpu.gpu_ops.factors.factor_engine import (
    CpuOps,
    ProgressFn,
    StopFn,
    XpOps,
    evaluate_panel,
    make_ops,
)
from mystocks_gpu.gpu_ops.factors.panel import Panel

ValuesFn = Callable[[dict[str, np.ndarray]], None]


def as_nodes(exprs: Mapping[str, str | Node], fields: tuple[str, ...]) -> dict[str, Node]:
    """Parse the string entries of ``name -> expression | Node``."""
    texts = {k: v for k, v in exprs.items() if isinstance(v, str)}
    parsed = parse_many(texts, fields) if texts else {}
    return {k: (parsed[k] if isinstance(v, str) else v) for k, v in exprs.items()}


def batch_size(panel: Panel, engine_cfg: EngineConfig, eval_cfg: EvalConfig) -> int:
    """Factors per pass: ``EvalConfig.factor_batch`` or half the budget's worth of outputs."""
    if eval_cfg.factor_batch:
        return eval_cfg.factor_batch
    per = panel.n_dates * panel.n_symbols * 8
    return max(1, int(engine_cfg.memory_budget_bytes // 2 // per))


def evaluate_batched(
    nodes: Mapping[str, Node],
    panel: Panel,
    engine_cfg: EngineConfig,
    batch: int,
    ops: CpuOps | XpOps,
    consume: Callable[[dict[str, Any]], None],
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> None:
    """Evaluate ``nodes`` ``batch`` at a time and pass each batch's values to ``consume``; a batch
    over the budget is split in two until it fits (a single factor that does not fit raises)."""
    names = list(nodes)
    i = 0
    while i < len(names):
        if should_stop is not None and should_stop():
            raise EvaluationStopped("factor evaluation stopped on request")
        part = names[i : i + batch]
        try:
            vals = evaluate_panel({k: nodes[k] for k in part}, panel, engine_cfg,
                                  should_stop=should_stop, ops=ops)
        except FactorConfigError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            continue
        consume(vals)
        i += len(part)
        if progress is not None:
            progress(i / len(names), f"evaluated {i}/{len(names)} factors")


def run_factors(
    exprs: Mapping[str, str | Node],
    panel: Panel,
    engine_cfg: EngineConfig | None = None,
    eval_cfg: EvalConfig | None = None,
    *,
    correlation: bool = True,
    on_values: ValuesFn | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    ops: CpuOps | XpOps | None = None,
    metrics: MetricsCpu | MetricsXp | None = None,
) -> FactorReport:
    """Evaluate factors on a panel and measure them against its ``close``.

    Args:
        exprs: ``name -> expression`` (strings are parsed; errors name the factor and position).
        panel: the bars; must carry ``close`` (forward returns) and every field used.
        correlation: also compute the pairwise factor rank correlation (keeps float32 ranks,
            4 bytes x dates x symbols per factor, on the host).
        on_values: called with each batch's ``name -> (n_dates, n_symbols)`` values (e.g. to
            publish them); otherwise values are dropped after their metrics.
        progress: ``progress(fraction, message)``; should_stop: checked between chunks and
            batches (raises :class:`EvaluationStopped`).
        ops, metrics: implementation overrides (tests run the GPU code path with NumPy).

    Returns the :class:`FactorReport` (``summary`` one row per factor and horizon).
    """
    engine_cfg = engine_cfg or EngineConfig()
    eval_cfg = eval_cfg or EvalConfig()
    backend = select(engine_cfg.backend)
    ops = ops if ops is not None else make_ops(backend, engine_cfg.threads)
    metrics = metrics if metrics is not None else make_metrics(backend, engine_cfg.threads)
    nodes = as_nodes(exprs, engine_cfg.fields)
    ev = Evaluator(panel.field("close"), eval_cfg, impl=metrics)
    reports: list[FactorReport] = []

    def consume(vals: dict[str, Any]) -> None:
        if on_values is not None:
            on_values(vals)
        reports.append(ev.evaluate(vals, keep_ranks=correlation))

    def prog(frac: float, msg: str) -> None:
        if progress is not None:
            progress(0.95 * frac, msg)

    evaluate_batched(nodes, panel, engine_cfg, batch_size(panel, engine_cfg, eval_cfg), ops,
                     consume, prog, should_stop)
    rep = merge_reports(reports)
    if correlation and rep.ranks is not None and len(rep.names) > 0:
        rep.correlation = rank_correlation(rep.ranks, rep.ranks)
    if progress is not None:
        progress(1.0, f"evaluated {len(rep.names)} factors")
    return rep


def merge_reports(parts: list[FactorReport]) -> FactorReport:
    """Concatenate the reports of factor batches (same horizons and dates)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        raise FactorConfigError("no factors to evaluate")
    ranks = None
    if all(p.ranks is not None for p in parts):
        ranks = np.concatenate([p.ranks for p in parts if p.ranks is not None])
    return FactorReport(
        names=[n for p in parts for n in p.names],
        horizons=parts[0].horizons,
        summary=pd.concat([p.summary for p in parts], ignore_index=True),
        ic=np.concatenate([p.ic for p in parts]),
        rank_ic=np.concatenate([p.rank_ic for p in parts]),
        quantile_returns=np.concatenate([p.quantile_returns for p in parts]),
        turnover=np.concatenate([p.turnover for p in parts]),
        autocorr=np.concatenate([p.autocorr for p in parts]),
        status=[s for p in parts for s in p.status],
        ranks=ranks,
    )
