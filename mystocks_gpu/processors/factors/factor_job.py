"""Job kinds ``factors`` and ``factors_mine``: formulaic factors over bars replayed from a topic.

``mystocks-gpu submit factors --spec SPEC.json --wait`` (or a ``JobCommand`` on ``cmd.jobs``):

1. the spec (:mod:`.factor_spec`) is validated at submit: an expression that does not parse is
   rejected with the factor's name and the position, an unknown field or operator likewise;
2. a run replays ``bar_topic`` over ``[start, end)`` into a dates x symbols panel
   (:mod:`.factor_bars`), then evaluates the factors in batches of factors (and chunks of symbols)
   that fit ``memory_budget_bytes`` -- a job larger than its budget is chunked, never failed for
   it -- measuring each batch with the Alphalens definitions (``gpu_ops.factors``); progress per
   batch on ``job.status``; cancel / deadline are checked between chunks;
3. each batch's values go to ``factors.values`` (Arrow IPC frames) and its per-date series to
   ``results.factors`` (:mod:`.factor_topics`); at the end the metrics of every factor x horizon
   (ranked by |mean rank IC|), the rank correlation of the best ``correlation_factors`` and the
   optional walk-forward combination (ICIR-weighted / ridge: weights, values, metrics) follow;
4. the job's result stays small: counts, the ranked top rows, the factors that had no value
   (``all_nan``: reported, not an error), where the rest is.

Errors that depend on the data fail the run with the reason: a window longer than the data, a
cross-sectional operator (Rank, ZScore, Demean) on a one-symbol universe, a budget too small for
even one factor (the message gives the minimum).

``factors_mine`` runs :func:`~mystocks_gpu.gpu_ops.factors.mine` (random + genetic search, seeded,
``population`` candidates per generation in batched passes within the budget; progress per batch
and generation), then evaluates the kept set exactly like a ``factors`` job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mystocks_gpu.processors.exceptions import JobSpecError, JobStopped
from mystocks_gpu.processors.factors.factor_spec import FactorDataSpec, FactorsJobSpec, MineJobSpec
from mystocks_gpu.processors.job_kind import JobKind, ProgressCb, current_run

StopFn = Callable[[], bool]
#: factors whose names the result lists when they have no value at all
MAX_LISTED = 50


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None, NumPy scalars -> Python, so results are strict JSON."""
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _context(spec: FactorDataSpec) -> tuple[Any, Any, str, str]:
    """``(settings, schema store, backend, job id)`` of the run (the worker's, or defaults)."""
    import hashlib
    import json

    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.schemas import schema_store

    ctx = current_run()
    settings = ctx.settings if ctx is not None and ctx.settings is not None else load_settings()
    store = ctx.store if ctx is not None and ctx.store is not None else schema_store(settings)
    backend = ctx.backend if ctx is not None else select(settings.backend)
    job_id = ctx.job_id if ctx is not None else \
        "direct-" + hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return settings, store, backend, job_id


class FactorRun:
    """One evaluation of named factors on a replayed panel, publishing as it goes."""

    def __init__(self, spec: FactorDataSpec, bars: Any, kind: str, progress: ProgressCb, should_stop: StopFn) -> None:
        from mystocks_gpu.gpu_ops.factors.evaluate import Evaluator, make_metrics
        from mystocks_gpu.gpu_ops.factors.factor_engine import make_ops

        self.spec, self.bars, self.kind = spec, bars, kind
        self.progress, self.should_stop = progress, should_stop
        self.settings, self.store, self.backend, self.job_id = _context(spec)
        self.panel = bars.panel
        self.engine_cfg = spec.engine_config(self.backend)
        self.eval_cfg = spec.eval_config()
        self.ops = make_ops(self.backend, self.engine_cfg.threads)
        self.metrics = make_metrics(self.backend, self.engine_cfg.threads)
        self.ev = Evaluator(self.panel.field("close"), self.eval_cfg, impl=self.metrics)
        self.rows: list[dict[str, Any]] = []
        self.expressions: dict[str, str] = {}
        self.batches = 0
        cell = self.panel.n_dates * self.panel.n_symbols * 4
        #: factors whose ranks are held for the correlation matrix (a quarter of the budget at most)
        self.k_corr = int(min(spec.correlation_factors, spec.memory_budget_bytes // 4 // max(cell, 1)))
        self.held: list[tuple[float, str, np.ndarray]] = []
        self.values_writer: Any = None
        self.results_writer: Any = None
        self.combined: set[str] = set()
        #: the smallest symbol chunk the engine used (the panel's symbols when nothing was split)
        self.symbols_per_chunk = self.panel.n_symbols

    # ---- publishing ------------------------------------------------------------------------
    def open_writers(self) -> None:
        from mystocks_gpu.processors.factors.factor_topics import (
            ResultsWriter,
            ValuesWriter,
            ensure_topics,
        )

        ensure_topics(self.settings)
        if self.spec.publish_values:
            present = np.isfinite(self.panel.field("close"))
            self.values_writer = ValuesWriter(self.settings, self.job_id, self.kind, self.bars.dates,
                                              self.bars.symbols, present)
        self.results_writer = ResultsWriter(self.settings, self.store, self.job_id, self.kind)

    def _stop_check(self) -> None:
        if self.should_stop():
            raise JobStopped("stopped on request")

    def _series_rows(self, rep: Any, i: int) -> list[dict[str, Any]]:
        q = rep.quantile_returns.shape[-1]
        out = []
        for hi, h in enumerate(rep.horizons):
            spread = (rep.quantile_returns[i, hi, :, q - 1] - rep.quantile_returns[i, hi, :, 0]) / 2.0
            out.append({"factor": rep.names[i], "horizon": int(h), "ic": rep.ic[i, hi].tolist(),
                        "rank_ic": rep.rank_ic[i, hi].tolist(), "spread": spread.tolist()})
        return out

    def _hold(self, name: str, score: float, ranks: np.ndarray) -> None:
        """Keep the ranks of the ``k_corr`` best factors by |rank IC| (ties by name)."""
        if self.k_corr <= 0 or not math.isfinite(score):
            return
        self.held.append((score, name, ranks.astype(np.float32, copy=False)))
        self.held.sort(key=lambda x: (-x[0], x[1]))
        del self.held[self.k_corr:]

    def consume_report(self, rep: Any, exprs: dict[str, str]) -> None:
        """Series, summary rows and held ranks of one evaluated batch."""
        hi = rep.horizons.index(self.spec.ranked_horizon)
        series: list[dict[str, Any]] = []
        for i, name in enumerate(rep.names):
            series += self._series_rows(rep, i)
            if rep.ranks is not None and rep.status[i] == "ok":
                self._hold(name, abs(float(np.nanmean(rep.rank_ic[i, hi]))) if np.isfinite(rep.rank_ic[i, hi]).any()
                           else math.nan, rep.ranks[i])
        assert self.results_writer is not None
        self.results_writer.add_series(series)
        for row in rep.summary.to_dict("records"):
            row["expression"] = exprs.get(row["factor"], row["factor"])
            self.rows.append(row)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, exprs: dict[str, str], lo: float, hi: float) -> None:
        """Evaluate ``name -> expression`` in budget-sized batches; progress in ``[lo, hi]``."""
        from mystocks_gpu.gpu_ops.factors import EvaluationStopped, compile_program, parse_many
        from mystocks_gpu.gpu_ops.factors.factor_engine import plan_chunk_symbols
        from mystocks_gpu.gpu_ops.factors.pipeline import batch_size, evaluate_batched

        nodes = parse_many(exprs, self.engine_cfg.fields)
        self.expressions.update(exprs)
        batch = batch_size(self.panel, self.engine_cfg, self.eval_cfg)

        def consume(vals: dict[str, Any]) -> None:
            self._stop_check()
            prog = compile_program({k: nodes[k] for k in vals})
            self.symbols_per_chunk = min(self.symbols_per_chunk, plan_chunk_symbols(
                prog, self.panel, self.ops, self.engine_cfg.memory_budget_bytes))
            if self.values_writer is not None:
                self.values_writer.write(vals, self.should_stop)
            self.consume_report(self.ev.evaluate(vals, keep_ranks=self.k_corr > 0), exprs)
            self.batches += 1

        def prog(frac: float, msg: str) -> None:
            self.progress(lo + (hi - lo) * frac, f"batch {self.batches + 1}: {msg}")

        try:
            evaluate_batched(nodes, self.panel, self.engine_cfg, batch, self.ops, consume, prog, self.should_stop)
        except EvaluationStopped as exc:
            raise JobStopped(str(exc)) from None

    def correlation(self) -> dict[str, Any] | None:
        from mystocks_gpu.gpu_ops.factors import rank_correlation

        if len(self.held) < 2:
            return None
        ranks = np.stack([h[2] for h in self.held])
        corr = rank_correlation(ranks, ranks)
        return {"factors": [h[1] for h in self.held], "values": [float(v) for v in corr.ravel()]}

    def ranked(self) -> list[dict[str, Any]]:
        """Summary rows with ``rank`` per horizon (1 = largest |mean rank IC|; NaN last, then name);
        combined factors are ranked among themselves (they are not candidates of their own)."""
        by_h: dict[tuple[int, bool], list[dict[str, Any]]] = {}
        for r in self.rows:
            by_h.setdefault((int(r["horizon"]), r["factor"] in self.combined), []).append(r)
        for rows in by_h.values():
            rows.sort(key=lambda r: (-abs(r["rank_ic_mean"]) if r["rank_ic_mean"] == r["rank_ic_mean"]
                                     else math.inf, r["factor"]))
            for k, r in enumerate(rows):
                r["rank"] = k + 1
        return self.rows

    def best(self, n: int) -> list[str]:
        """The ``n`` best factors with status ok at the ranked horizon."""
        rows = [r for r in self.ranked() if r["horizon"] == self.spec.ranked_horizon and r["status"] == "ok"]
        return [r["factor"] for r in sorted(rows, key=lambda r: r["rank"])[:n]]

    def combine(self, names: list[str]) -> list[dict[str, Any]]:
        """Walk-forward combinations of ``names`` (each configured method): metrics, series and
        values published like any factor; returns the weight records."""
        from mystocks_gpu.gpu_ops.factors import combine, evaluate_panel, parse_many

        vals = evaluate_panel(parse_many({k: self.expressions[k] for k in names}, self.engine_cfg.fields),
                              self.panel, self.engine_cfg, should_stop=self.should_stop, ops=self.ops)
        out = []
        dates = self.bars.dates
        for cname, cfg in self.spec.combine_configs():
            self._stop_check()
            self.combined.add(cname)
            res = combine(vals, self.panel.field("close"), cfg, self.eval_cfg, metrics=self.metrics, name=cname)
            expr = f"{cfg.method}[h={cfg.horizon}]({', '.join(names)})"
            self.consume_report(res.report, {cname: expr})
            if self.values_writer is not None:
                self.values_writer.write({cname: res.values}, self.should_stop)
            idx = res.weights.index.to_numpy(dtype=np.int64)
            out.append({"name": cname, "method": cfg.method, "horizon": int(cfg.horizon), "factors": list(names),
                        "refit_dates": [int(dates[i]) for i in idx],
                        "values": [float(v) for v in res.weights.to_numpy(dtype=np.float64).ravel()]})
        return out

    # ---- the end ------------------------------------------------------------------------------
    def metric_records(self) -> list[dict[str, Any]]:
        q = self.spec.quantiles
        recs = []
        for r in self.ranked():
            recs.append({"factor": r["factor"], "expression": r["expression"], "horizon": int(r["horizon"]),
                         "status": r["status"], "rank": int(r["rank"]), "n_dates": int(r["n_dates"]),
                         "coverage": float(r["coverage"]),
                         **{k: float(r[k]) for k in ("ic_mean", "ic_std", "icir", "ic_tstat", "rank_ic_mean",
                                                     "rank_ic_std", "rank_icir", "rank_ic_tstat", "spread",
                                                     "turnover_top", "turnover_bottom", "rank_autocorr")},
                         "quantile_returns": [float(r[f"q{i + 1}"]) for i in range(q)]})
        return recs

    def finish(self, weights: list[dict[str, Any]], mined: list[dict[str, Any]], t0: float) -> dict[str, Any]:
        """Publish the last parts; the job's small result."""
        self.progress(0.96, "computing the factor correlation")
        corr = self.correlation()
        recs = self.metric_records()
        assert self.results_writer is not None
        self.results_writer.add_metrics(recs)
        parts = self.results_writer.finish(self.bars.dates, corr, weights, mined)
        h = self.spec.ranked_horizon
        combined = {w["name"] for w in weights}
        top = [r for r in recs if r["horizon"] == h and r["factor"] not in combined]
        top.sort(key=lambda r: r["rank"])
        status: dict[str, int] = {}
        for r in recs:
            if r["horizon"] == h:
                status[r["status"]] = status.get(r["status"], 0) + 1
        all_nan = sorted({r["factor"] for r in recs if r["status"] == "all_nan"})
        warnings = []
        if self.bars.missing:
            warnings.append(f"{len(self.bars.missing)} universe symbol(s) have no bar in the range: "
                            f"{', '.join(self.bars.missing[:10])}")
        if all_nan:
            warnings.append(f"{len(all_nan)} factor(s) have no finite value (all NaN): {', '.join(all_nan[:10])}")
        if self.bars.rejected:
            warnings.append(f"{self.bars.rejected} bar record(s) could not be decoded and were skipped")
        if 0 < self.k_corr < self.spec.correlation_factors:
            warnings.append(f"correlation limited to the best {self.k_corr} factors by the memory budget")
        dates = self.bars.dates
        return _jsonable({
            "kind": self.kind, "factors": len(self.expressions), "symbols": self.panel.n_symbols,
            "dates": self.panel.n_dates, "first_date": int(dates[0]), "last_date": int(dates[-1]),
            "horizons": list(self.spec.horizons), "rank_horizon": h, "backend": self.backend,
            "factor_batches": self.batches, "symbols_per_chunk": self.symbols_per_chunk,
            "memory_budget_bytes": self.spec.memory_budget_bytes,
            "status_counts": status, "all_nan": all_nan[:MAX_LISTED],
            "top": top[: self.spec.top_n],
            "combination": [{"name": w["name"], "method": w["method"], "horizon": w["horizon"],
                             "final_weights": dict(zip(w["factors"], w["values"][-len(w["factors"]):], strict=True)),
                             "metrics": next((r for r in recs if r["factor"] == w["name"] and r["horizon"] == h), None)}
                            for w in weights],
            "correlation_factors": len(corr["factors"]) if corr else 0,
            "values_topic": "factors.values" if self.values_writer is not None else None,
            "values_messages": self.values_writer.messages if self.values_writer is not None else 0,
            "results_topic": "results.factors", "results_parts": parts,
            "seconds": round(time.monotonic() - t0, 3), "warnings": warnings,
        })


def _load(spec: FactorDataSpec, settings_store: tuple[Any, Any], progress: ProgressCb, should_stop: StopFn) -> Any:
    from mystocks_gpu.processors.factors.factor_bars import load_panel

    settings, store = settings_store
    progress(0.01, f"replaying {spec.bar_topic}")
    start, end = (None if v is None else int(v) for v in (spec.start, spec.end))  # ns after validate()
    bars = load_panel(settings.kafka, spec.bar_topic, start, end, spec.universe, store, should_stop)
    progress(0.05, f"{bars.panel.n_symbols} symbols x {bars.panel.n_dates} dates from {bars.records} bars")
    return bars


def _combine_names(run: FactorRun, spec: FactorDataSpec) -> list[str]:
    names = list(spec.combine_factors) if spec.combine_factors is not None else run.best(spec.combine_top)
    if len(names) < 2:
        raise JobSpecError(f"combine: fewer than 2 usable factors to combine ({names})")
    return names


def run_factors_job(spec: FactorsJobSpec, progress: ProgressCb, should_stop: StopFn) -> dict[str, Any]:
    """Runner of ``factors`` (see the module docstring)."""
    t0 = time.monotonic()
    settings, store, _, _ = _context(spec)
    bars = _load(spec, (settings, store), progress, should_stop)
    run = FactorRun(spec, bars, "factors", progress, should_stop)
    run.open_writers()
    exprs = spec.expression_map()
    progress(0.06, f"evaluating {len(exprs)} factors")
    run.evaluate(exprs, 0.06, 0.88)
    weights = run.combine(_combine_names(run, spec)) if spec.combine else []
    return run.finish(weights, [], t0)


def run_mine_job(spec: MineJobSpec, progress: ProgressCb, should_stop: StopFn) -> dict[str, Any]:
    """Runner of ``factors_mine``: the search, then the kept set evaluated as a ``factors`` job."""
    from mystocks_gpu.gpu_ops.factors import EvaluationStopped, mine

    t0 = time.monotonic()
    settings, store, _, _ = _context(spec)
    bars = _load(spec, (settings, store), progress, should_stop)
    run = FactorRun(spec, bars, "factors_mine", progress, should_stop)
    try:
        res = mine(bars.panel, spec.mining_config(), run.engine_cfg, run.eval_cfg,
                   progress=lambda f, m: progress(0.05 + 0.75 * f, m), should_stop=should_stop,
                   ops=run.ops, metrics=run.metrics)
    except EvaluationStopped as exc:
        raise JobStopped(str(exc)) from None
    run.open_writers()
    mined = [{"name": r["name"], "expression": r["expression"], "generation": int(r["generation"]),
              "rank_ic": float(r["rank_ic"]), "rank_icir": float(r["rank_icir"]), "ic": float(r["ic"])}
             for r in res.kept_table.to_dict("records")]
    weights: list[dict[str, Any]] = []
    if res.kept:
        progress(0.8, f"evaluating the {len(res.kept)} kept factors")
        run.evaluate(dict(res.kept), 0.8, 0.92)
        if spec.combine and len(res.kept) >= 2:
            weights = run.combine(run.best(spec.combine_top))
    out = run.finish(weights, mined, t0)
    out.update(_jsonable({
        "seed": spec.seed, "candidates_evaluated": res.n_evaluated, "mining_seconds": round(res.seconds, 3),
        "candidates_per_s": res.candidates_per_second, "kept": mined,
        "history": res.history.to_dict("records")}))
    if not res.kept:
        out["warnings"].append("no candidate passed the thresholds (min_abs_rank_ic, min_abs_icir, max_corr)")
    return out  # type: ignore[no-any-return]


def _summarize(result: dict[str, Any]) -> str:
    from mystocks_gpu.processors.factors.factor_report import format_result

    return format_result(result)


def _report(result: dict[str, Any], directory: Any, settings: Any, job_id: str) -> Any:
    from mystocks_gpu.processors.factors.factor_report import write_report

    return write_report(result, directory, settings, job_id)


_BULKY = ("top", "all_nan", "kept", "history", "combination", "status_counts", "warnings")
KIND = JobKind("factors", FactorsJobSpec, run_factors_job, policy="batch", devices="any",
               description="evaluate formulaic factors (a library or expressions) over replayed bars "
                           "(values on factors.values, metrics on results.factors)",
               summarize=_summarize, report=_report, bulky_keys=_BULKY)
MINE_KIND = JobKind("factors_mine", MineJobSpec, run_mine_job, policy="training", devices="any",
                    description="search for factors (seeded random + genetic), keep the good and diverse ones "
                                "(values on factors.values, metrics on results.factors)",
                    summarize=_summarize, report=_report, bulky_keys=_BULKY)
