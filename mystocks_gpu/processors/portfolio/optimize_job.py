"""Job kind ``optimize``: batched portfolio optimisation over bars replayed from a Kafka topic.

``mystocks-gpu submit optimize --spec SPEC.json --wait [--report DIR]`` (or a ``JobCommand``):

1. the spec is an :class:`~mystocks_gpu.processors.portfolio.optimize_spec.OptimizeSpec`
   (invalid ones are rejected with the reason);
2. the run replays ``spec.bar_topic`` over ``[start, end)`` with the deterministic replay source,
   pivots the closes of the universe to ``(T, n)`` (stale price policy: forward fill, leading
   incomplete bars dropped), estimates covariance / expected returns, and builds the batch:
   one problem, an efficient frontier (one problem per risk aversion), one problem per
   rebalance date, or one problem per account of the ``positions`` topic; the batch is solved at once by the batched ADMM solver of
   :mod:`mystocks_gpu.gpu_ops.portfolio` on the worker's device (GPU or its CPU twin);
3. every problem's outcome goes to ``results.portfolio`` (Avro ``PortfolioResult``, key = job id,
   one record per problem; a re-run after a worker crash re-publishes the same records, which
   consumers identify by (job id, index));
4. the job's result (per problem: status, objective, risk, return, weights; frontier points;
   the rebalancing backtest's equity, turnover, costs and stats) is stored and cached like
   every job's.

Bad input: a covariance that is not PSD is repaired by clipping its eigenvalues (or the problem
rejected with the eigenvalue, ``solver.psd_repair = "reject"``); an infeasible constraint set
gives status ``infeasible`` with the conflicting constraints and no weights; when no problem of
the job has a solution the job FAILS with those reasons (:class:`PortfolioInfeasible`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.portfolio.exceptions import PortfolioInputError
from mystocks_gpu.infra.clock import SYSTEM_CLOCK
from mystocks_gpu.processors.exceptions import JobSpecError, JobStopped
from mystocks_gpu.processors.job_kind import JobKind, ProgressCb, current_run
from mystocks_gpu.processors.portfolio.accounts import (
    AccountBook,
    AccountProblem,
    account_problems,
    account_row_extra,
    read_positions,
)
from mystocks_gpu.processors.portfolio.optimize_spec import OptimizeSpec
from mystocks_gpu.schemas.schema_store import SchemaStore

RESULTS_TOPIC = "results.portfolio"
#: statuses that carry weights
SOLVED = ("optimal", "converged", "max_iter")
#: points of the equity curve kept in the job result (the curve is downsampled to this)
CURVE_POINTS = 500


class PortfolioInfeasible(MyStocksError):
    """No problem of an optimize job has a solution; the message names the conflicting constraints."""

    exit_code = 2


# ---- data --------------------------------------------------------------------------------------
def closes_matrix(bars: pd.DataFrame, universe: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(closes (T, n), ts (T,))`` of ``universe`` from a bar frame (``symbol, ts, close``).

    Stale price policy: a symbol without a bar at a bar time keeps its last close; bar times
    before every symbol has had a bar are dropped. :class:`JobSpecError` names symbols without
    any bar."""
    missing = sorted(set(universe) - set(bars["symbol"]))
    if missing:
        raise JobSpecError(f"optimize: no bars for {', '.join(missing)} in the time range")
    df = bars[bars["symbol"].isin(universe)].drop_duplicates(["symbol", "ts"], keep="last")
    wide = df.pivot(index="ts", columns="symbol", values="close").reindex(columns=universe).sort_index()
    wide = wide.ffill().dropna(how="any")
    px = wide.to_numpy(np.float64)
    if not np.all(px > 0):
        raise JobSpecError("optimize: closes must be positive")
    return px, wide.index.to_numpy(np.int64)


def _estimate(window: np.ndarray, spec: OptimizeSpec) -> tuple[np.ndarray, np.ndarray]:
    from mystocks_gpu.gpu_ops.portfolio.problem import PortfolioProblem
    from mystocks_gpu.gpu_ops.portfolio.rebalance import RebalanceSpec, estimate

    rs = RebalanceSpec(PortfolioProblem("min_variance", cov=np.eye(window.shape[1])), lookback=max(2, window.shape[0]),
                       estimator=spec.estimator, ewma_lambda=spec.ewma_lambda)
    cov, mu = estimate(window[None], rs)
    return cov[0], mu[0]


def template(spec: OptimizeSpec, cov: np.ndarray | None, mu: np.ndarray | None,
             scenarios: np.ndarray | None = None, **over: Any) -> Any:
    """The :class:`PortfolioProblem` of ``spec`` with these estimates (``over`` replaces fields)."""
    from mystocks_gpu.gpu_ops.portfolio import PortfolioProblem

    groups = spec.group_matrix()
    cw = None
    if spec.current_weights is not None:
        cw = np.array([float(spec.current_weights.get(s, 0.0)) for s in spec.universe])
    needs_mu = spec.objective in ("mean_variance", "max_sharpe") or (
        spec.objective == "min_cvar" and spec.target_return is not None)
    kw: dict[str, Any] = dict(
        objective=spec.objective, cov=None if spec.objective == "min_cvar" else cov,
        mu=mu if needs_mu else None, scenarios=scenarios if spec.objective == "min_cvar" else None,
        risk_aversion=spec.risk_aversion, target_return=spec.target_return, risk_free=spec.risk_free,
        cvar_beta=spec.cvar_beta, current_weights=cw, budget=spec.budget, long_only=spec.long_only,
        lower=spec.lower, upper=spec.upper, max_weight=spec.max_weight, leverage=spec.leverage,
        turnover=spec.turnover)
    if groups is not None:
        g, lo, hi, names = groups
        kw.update(groups=g, group_lower=lo, group_upper=hi, group_names=names)
    kw.update(over)
    return PortfolioProblem(**kw)


def frontier_aversions(spec: OptimizeSpec) -> np.ndarray:
    """The frontier's risk aversions: ``frontier_points`` spaced geometrically, high to low (min
    risk first)."""
    lo, hi = spec.frontier_risk_aversion
    return np.geomspace(hi, lo, spec.frontier_points)


def build_problems(spec: OptimizeSpec, closes: np.ndarray, signal_mu: np.ndarray | None = None,
                   accounts: list[AccountProblem] | None = None) -> tuple[list[Any], list[str]]:
    """The ``single``/``frontier``/``accounts`` batch and a label per problem (``single``,
    ``frontier:<k>``, ``account:<id>``)."""
    from mystocks_gpu.gpu_ops.portfolio.rebalance import simple_returns

    r = simple_returns(closes)
    window = r[-spec.lookback:] if spec.lookback else r
    if window.shape[0] < 2:
        raise JobSpecError(f"optimize: {window.shape[0]} returns in the window; at least 2 are needed")
    cov, mu = _estimate(window, spec)
    if signal_mu is not None:
        mu = signal_mu
    if spec.mode == "single":
        return [template(spec, cov, mu, window)], ["single"]
    if spec.mode == "accounts":
        return ([template(spec, cov, mu, window, current_weights=a.w0, max_weight=a.max_weight, leverage=a.leverage)
                 for a in accounts or []], [f"account:{a.account}" for a in accounts or []])
    return ([template(spec, cov, mu, window, risk_aversion=float(ra)) for ra in frontier_aversions(spec)],
            [f"frontier:{k}" for k in range(spec.frontier_points)])


def signal_returns(kafka: Any, spec: OptimizeSpec, end_ts: int, store: SchemaStore | None) -> np.ndarray:
    """``signal_scale`` x the last ``signal_column`` value at or before ``end_ts`` per symbol."""
    from mystocks_gpu.processors.backtest.job import load_signal

    sig = load_signal(kafka, spec.signal_topic or "", spec.signal_column or "", None, end_ts + 1, store)
    sig = sig[sig["ts"] <= end_ts].sort_values("ts").drop_duplicates("symbol", keep="last").set_index("symbol")
    missing = sorted(set(spec.universe) - set(sig.index))
    if missing:
        raise JobSpecError(f"optimize: no value of {spec.signal_column!r} on {spec.signal_topic} at or before the "
                           f"last bar for {', '.join(missing)}")
    return spec.signal_scale * sig.loc[list(spec.universe), "signal"].to_numpy(np.float64)


# ---- the run -----------------------------------------------------------------------------------
def _row(res: Any, label: str, spec: OptimizeSpec, index: int, ts: int) -> dict[str, Any]:
    """One problem's outcome as a JSON-able row (annualised vol/return/Sharpe for display)."""
    ppy = spec.periods_per_year
    w = None if res.weights is None or res.status not in SOLVED else [float(x) for x in res.weights]
    var, ret = res.variance, res.expected_return
    vol = math.sqrt(var * ppy) if w is not None and math.isfinite(var) and var >= 0 else None
    ann = ret * ppy if w is not None and math.isfinite(ret) else None
    return {"index": index, "label": label, "ts": ts, "status": res.status, "objective": _num(res.objective),
            "variance": _num(var), "expected_return": _num(ret), "ann_volatility": vol, "ann_return": ann,
            "sharpe": (ann - spec.risk_free * ppy) / vol if vol and ann is not None else None,
            "iterations": int(res.iterations), "violation": _num(res.violation), "conflicts": list(res.conflicts),
            "message": res.message, "covariance_repaired": bool(res.covariance_repaired), "weights": w}


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def optimize_closes(spec: OptimizeSpec, closes: np.ndarray, ts: np.ndarray, cfg: Any, progress: ProgressCb,
                    should_stop: Callable[[], bool], signal_mu: np.ndarray | None = None,
                    book: AccountBook | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job's computation on closes ``(T, n)`` at bar times ``ts (T,)``: ``(rows, extra)`` with
    one row per problem (:func:`_row`) and the frontier / rebalancing / accounts extras (mode
    ``accounts`` needs ``book``, the positions at the last bar). Raises
    :class:`JobStopped` when stopped, :class:`PortfolioInfeasible` when no problem has a solution."""
    from mystocks_gpu.gpu_ops.portfolio import solve_batch
    from mystocks_gpu.gpu_ops.portfolio.result import PortfolioResult

    extra: dict[str, Any] = {}
    if spec.mode == "rebalance":
        progress(0.1, f"rebalancing backtest over {closes.shape[0]} bars")
        rows, extra = _rebalance(spec, closes, ts, cfg)
    else:
        accts, rejected = account_problems(spec, book, closes[-1]) if book is not None else ([], {})
        problems, labels = build_problems(spec, closes, signal_mu, accts)
        progress(0.1, f"solving {len(problems)} problem(s) of {len(spec.universe)} assets on {cfg.backend}")

        def on_progress(done: int, total: int) -> None:
            progress(0.1 + 0.8 * done / max(total, 1), f"solved {done}/{total}")

        try:
            results = solve_batch(problems, cfg, on_progress, should_stop) if problems else []
        except PortfolioInputError as exc:
            raise JobSpecError(f"optimize: {exc}") from None
        if any(r.status == "cancelled" for r in results):
            raise JobStopped("stopped")
        rows = [_row(r, lab, spec, i, int(ts[-1])) for i, (r, lab) in enumerate(zip(results, labels, strict=True))]
        if book is not None:
            for row, acct in zip(rows, accts, strict=True):
                row.update(account_row_extra(acct, row["weights"], closes[-1], list(spec.universe)))
            for name, why in rejected.items():
                res = PortfolioResult("rejected", None, math.nan, math.nan, math.nan, 0, math.nan, (), why, False)
                rows.append({**_row(res, f"account:{name}", spec, len(rows), int(ts[-1])), "account": name})
            extra["accounts"] = {"solved": len(accts), "rejected": rejected,
                                 "positions_records_rejected": book.n_rejected,
                                 "positions_rejections": book.rejected_records}
        if spec.mode == "frontier":
            extra["frontier"] = [{"risk_aversion": float(ra), "ann_volatility": r["ann_volatility"],
                                  "ann_return": r["ann_return"], "status": r["status"]}
                                 for ra, r in zip(frontier_aversions(spec), rows, strict=True)]
    if not any(r["status"] in SOLVED for r in rows):
        first = rows[0] if rows else {"status": "none", "conflicts": [], "message": "no problem"}
        raise PortfolioInfeasible(
            f"{first['status']}: no portfolio of the job has a solution; conflicting constraints: "
            f"{', '.join(first['conflicts']) or 'none named'}; {first['message']}")
    return rows, extra


def run_optimize_job(spec: OptimizeSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Load closes, build the batch, solve it at once, publish every problem, return the result."""
    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.processors.backtest.job import load_bars
    from mystocks_gpu.schemas import schema_store

    ctx = current_run()
    settings = ctx.settings if ctx is not None and ctx.settings is not None else load_settings()
    store = ctx.store if ctx is not None and ctx.store is not None else schema_store(settings)
    backend = ctx.backend if ctx is not None else select(settings.backend)
    cfg = spec.solver_config(backend)
    t0 = time.monotonic()
    progress(0.01, f"replaying {spec.bar_topic}")
    bars = load_bars(settings.kafka, spec.bar_topic, spec.start, spec.end, store)
    closes, ts = closes_matrix(bars, list(spec.universe))
    if closes.shape[0] < 3:
        raise JobSpecError(f"optimize: {closes.shape[0]} complete bars for the universe; at least 3 are needed")
    if should_stop():
        raise JobStopped("stopped")
    mu_sig = signal_returns(settings.kafka, spec, int(ts[-1]), store) if spec.expected_returns == "signal" else None
    book = None
    if spec.mode == "accounts":
        progress(0.05, f"reading the accounts on {spec.positions_topic}")
        book = read_positions(settings.kafka, spec.positions_topic, int(ts[-1]), store)
    rows, extra = optimize_closes(spec, closes, ts, cfg, progress, should_stop, mu_sig, book)
    progress(0.92, f"publishing {len(rows)} portfolio(s) to {RESULTS_TOPIC}")
    n_msgs = publish_portfolios(settings, rows, spec, store)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"mode": spec.mode, "objective": spec.objective, "estimator": spec.estimator, "backend": backend,
            "symbols": list(spec.universe), "bars": int(closes.shape[0]), "problems": len(rows),
            "statuses": statuses, "seconds": round(time.monotonic() - t0, 3), "results_topic": RESULTS_TOPIC,
            "messages": n_msgs, "top_weights": spec.top_weights, "portfolios": rows, **extra}


def _rebalance(spec: OptimizeSpec, closes: np.ndarray, ts: np.ndarray, cfg: Any
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the rebalancing backtest; rows per date + equity/turnover/costs/stats."""
    from mystocks_gpu.gpu_ops.portfolio import RebalanceSpec, run_rebalance
    from mystocks_gpu.gpu_ops.portfolio.result import PortfolioResult

    lb = int(spec.lookback or 2)
    idx = np.arange(lb, closes.shape[0], spec.rebalance_every)
    if idx.size == 0:
        raise JobSpecError(f"optimize: {closes.shape[0]} bars leave no rebalance date after a lookback of {lb}")
    n = closes.shape[1]
    tpl = template(spec, np.eye(n), np.zeros(n), np.zeros((2, n)),
                   current_weights=np.zeros(n) if spec.turnover is not None else None)
    try:
        out = run_rebalance(closes, idx, RebalanceSpec(tpl, lookback=lb, estimator=spec.estimator,
                                                       ewma_lambda=spec.ewma_lambda, cost_rate=spec.cost_rate), cfg)
    except PortfolioInputError as exc:
        raise JobSpecError(f"optimize: {exc}") from None
    rows = []
    for k, t in enumerate(idx.tolist()):
        w = out.weights[k]
        ok = bool(np.all(np.isfinite(w)))
        res = PortfolioResult(str(out.status[k]), w if ok else None, math.nan, math.nan, math.nan, 0, math.nan,
                              (), "" if ok else "no solution: the portfolio kept its drifted weights", False)
        row = _row(res, f"rebalance:{pd.Timestamp(int(ts[t]), tz='UTC').isoformat()}", spec, k, int(ts[t]))
        row.update(turnover=float(out.turnover[k]), cost=float(out.costs[k]))
        rows.append(row)
    step = max(1, math.ceil(len(ts) / CURVE_POINTS))
    keep = np.unique(np.r_[np.arange(0, len(ts), step), len(ts) - 1])
    return rows, {"rebalance": {"dates": int(idx.size), "stats": {k: _num(v) for k, v in out.stats.items()},
                                "total_turnover": float(out.turnover.sum()),
                                "curve": {"ts": ts[keep].tolist(), "equity": out.equity[keep].tolist()}}}


def publish_portfolios(settings: Any, rows: list[dict[str, Any]], spec: OptimizeSpec,
                       store: SchemaStore | None = None) -> int:
    """One ``PortfolioResult`` per problem to ``results.portfolio`` keyed by job id; returns the
    count. Delivery is checked (:func:`produce_all`): a rejected record fails the job."""
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec

    run = current_run()
    job_id = run.job_id if run else f"direct-{SYSTEM_CLOCK.now_ns()}"
    codec = AvroCodec(store)
    now = SYSTEM_CLOCK.now_ns()
    items = []
    for r in rows:
        rec = {"job_id": job_id, "ts_event": int(r["ts"]), "index": int(r["index"]), "label": r["label"],
               "objective_name": spec.objective, "status": r["status"],
               "objective": _nan(r["objective"]), "variance": _nan(r["variance"]),
               "expected_return": _nan(r["expected_return"]), "iterations": int(r["iterations"]),
               "violation": _nan(r["violation"]), "conflicts": list(r["conflicts"]), "message": r["message"],
               "symbols": list(spec.universe) if r["weights"] is not None else [],
               "weights": list(r["weights"] or [])}
        items.append((job_id.encode(), codec.encode("mystocks.portfolio.PortfolioResult", rec), now // 1_000_000))
    produce_all(make_producer(settings.kafka), RESULTS_TOPIC, iter(items),
                flush_timeout_s=settings.kafka.connect_timeout_s * 3)
    return len(items)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _summarize(result: dict[str, Any]) -> str:
    from mystocks_gpu.processors.portfolio.optimize_report import format_summary

    return format_summary(result)


def _report(result: dict[str, Any], directory: Any, settings: Any, job_id: str) -> Any:
    from mystocks_gpu.processors.portfolio.optimize_report import write_report

    return write_report(result, directory)


KIND = JobKind("optimize", OptimizeSpec, run_optimize_job, policy="batch", devices="any",
               description="batched portfolio optimisation over replayed bars: one portfolio, an efficient "
                           "frontier or a rebalancing backtest (results on results.portfolio)",
               summarize=_summarize, report=_report, bulky_keys=("portfolios", "frontier", "rebalance", "symbols"))
