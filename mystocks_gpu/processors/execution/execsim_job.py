"""Job kind ``execsim``: simulate parent orders against a replayed tape, per strategy.

``mystocks-gpu submit execsim --spec SPEC.json --wait [--report DIR]``:

1. the spec (:class:`ExecSimSpec`) lists parent orders (each with a start time: the decision
   time) and the strategies to compare (default AC, TWAP, VWAP, POV);
2. the run replays ``tick_topic`` over ``[earliest start - lookback_s, latest end)`` with the
   runtime's deterministic replay source and builds one tape per symbol (trades; quotes from
   every row with a valid bid/ask);
3. market parameters come from the spec (``params``: symbol -> fields of ``MarketParams``) or,
   for symbols it does not give, from the latest record on ``params_topic``
   (``execution.params``, written by ``mystocks-gpu execution params``);
4. every order is scheduled with each strategy by the single-order API and its child slices are
   filled against the tape with the impact model (the fill rule of
   :mod:`mystocks_gpu.gpu_ops.execution.exec_simulator`); realised implementation shortfall is
   measured against the arrival price and compared with the pre-trade estimate E[IS];
5. all (order, strategy) rows go to ``results.execsim`` (key = job id); the job's result holds
   the per-strategy summary, the first ``max_rows`` rows, the fill curves of the first
   ``n_fill_curves`` orders and the orders that could not be simulated (with the reason).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.execution import (
    STRATEGIES,
    ExecutionConfig,
    ExecutionConfigError,
    ExecutionInputError,
    MarketParams,
    ParentOrder,
    SimReport,
    SimulationStopped,
    run_simulation,
)
from mystocks_gpu.gpu_ops.execution.parent_orders import slice_times
from mystocks_gpu.processors.backtest.spec import to_ns
from mystocks_gpu.processors.exceptions import InvalidSpec, JobSpecError, JobStopped
from mystocks_gpu.processors.execution.order_records import params_from_record
from mystocks_gpu.processors.job_kind import JobKind, JobSpec, ProgressCb, current_run

RESULTS_TOPIC = "results.execsim"
RESULT_SCHEMA = "mystocks.execution.ExecSimResult"
ROWS_PER_MESSAGE = 5_000
MAX_ORDERS = 100_000
ROW_FIELDS = ("order_id", "symbol", "strategy", "side", "quantity", "executed_qty", "unfilled_qty", "arrival_price",
              "avg_price", "realised_is", "realised_is_bps", "expected_is", "expected_is_bps", "timing_risk",
              "z_score")
_ORDER_FIELDS = {"order_id", "symbol", "side", "quantity", "start", "end", "horizon_s", "risk_aversion",
                 "max_participation", "pov_rate", "limit_price"}
_MODEL_FIELDS = set(ExecutionConfig.__dataclass_fields__) - {"kernel"}


def parse_order(d: Any, i: int) -> ParentOrder:
    """One spec order -> :class:`ParentOrder` (``start`` required; ``end`` or ``horizon_s``)."""
    if not isinstance(d, dict):
        raise JobSpecError(f"orders[{i}] must be an object, got {d!r}")
    unknown = sorted(set(d) - _ORDER_FIELDS)
    if unknown:
        raise JobSpecError(f"orders[{i}]: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_ORDER_FIELDS))})")
    for k in ("order_id", "symbol", "side", "quantity", "start"):
        if k not in d:
            raise JobSpecError(f"orders[{i}]: field {k!r} is required")
    try:
        start = to_ns(d["start"], f"orders[{i}].start")
        end = to_ns(d.get("end"), f"orders[{i}].end")
    except InvalidSpec as exc:
        raise JobSpecError(str(exc)) from None
    assert start is not None
    if (end is None) == (d.get("horizon_s") is None):
        raise JobSpecError(f"orders[{i}]: give end or horizon_s (one of them)")
    if end is None:
        h = d["horizon_s"]
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise JobSpecError(f"orders[{i}].horizon_s must be a number > 0, got {h!r}")
        end = start + int(round(h * 1e9))
    side = d["side"]
    if side not in ("buy", "sell", "BUY", "SELL", 1, -1):
        raise JobSpecError(f"orders[{i}].side must be buy or sell, got {side!r}")
    q = d["quantity"]
    if isinstance(q, bool) or not isinstance(q, int):
        raise JobSpecError(f"orders[{i}].quantity must be an integer number of shares, got {q!r}")
    if start <= 0:
        raise JobSpecError(f"orders[{i}].start must be a time after the epoch, got {start}")
    opt = {}
    for k in ("risk_aversion", "max_participation", "pov_rate", "limit_price"):
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise JobSpecError(f"orders[{i}].{k} must be a number or null, got {v!r}")
        opt[k] = None if v is None else float(v)
    return ParentOrder(str(d["order_id"]), str(d["symbol"]), side.lower() if isinstance(side, str) else side, q, end,
                       start, "ac", **opt)


def params_from_spec(sym: str, d: Any) -> MarketParams:
    """``params[sym]`` of a spec (the fields of the ``MarketParams`` Avro record, symbol optional)."""
    if not isinstance(d, dict):
        raise JobSpecError(f"params[{sym!r}] must be an object, got {d!r}")
    try:
        return params_from_record({**d, "symbol": sym})
    except KeyError as exc:
        raise JobSpecError(f"params[{sym!r}]: field {exc.args[0]!r} is required") from None
    except (ExecutionInputError, TypeError, ValueError) as exc:
        raise JobSpecError(f"params[{sym!r}]: {exc}") from None


@dataclass(frozen=True)
class ExecSimSpec(JobSpec):
    """An execsim job.

    Attributes:
        orders: parent orders: ``order_id``, ``symbol``, ``side`` (buy|sell), ``quantity``
            (shares), ``start`` (ns or ISO time: the decision time), ``end`` (ns or ISO) or
            ``horizon_s``, and optional ``risk_aversion``, ``max_participation``, ``pov_rate``,
            ``limit_price`` (at most 100 000 orders).
        strategies: strategies to simulate each order with (default all: ac, twap, vwap, pov).
        tick_topic: the tape (default ``md.ticks``).
        params: symbol -> market parameters (``price``, ``sigma``, ``adv``, ``spread`` and
            optional ``lot_size``, ``eta``, ``gamma``, ``profile_fractions``,
            ``profile_bucket_s``, ``profile_open_offset_s``); symbols not given are read from
            ``params_topic``.
        params_topic: compacted parameters topic (default ``execution.params``).
        model: :class:`ExecutionConfig` overrides (``slice_ns``, ``max_slices``,
            ``risk_aversion``, ``max_participation``, ``pov_rate``, ``sqrt_impact_y``,
            ``eta_participation``, ``gamma_fraction``, ``day_seconds``).
        lookback_s: ticks read before the earliest start, for arrival prices (default 300 s).
        max_rows: (order, strategy) rows kept in the job result (all go to results.execsim).
        n_fill_curves: orders whose per-slice fills are kept for the report plots (default 4).
    """

    orders: list[Any] = field(default_factory=list)
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    tick_topic: str = "md.ticks"
    params: dict[str, Any] | None = None
    params_topic: str = "execution.params"
    model: dict[str, Any] = field(default_factory=dict)
    lookback_s: float = 300.0
    max_rows: int = 200
    n_fill_curves: int = 4

    def validate(self) -> None:
        if not self.orders:
            raise JobSpecError("orders: give at least one parent order")
        if len(self.orders) > MAX_ORDERS:
            raise JobSpecError(f"orders: {len(self.orders)} orders, over the limit of {MAX_ORDERS}")
        ids = [parse_order(d, i).order_id for i, d in enumerate(self.orders)]
        if len(set(ids)) != len(ids):
            raise JobSpecError("orders: order_id values must be unique")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise JobSpecError(f"strategies must be distinct names among {', '.join(STRATEGIES)}, got {self.strategies}")
        if not self.tick_topic or not self.params_topic:
            raise JobSpecError("tick_topic and params_topic must be topic names")
        self.config()
        for sym, d in (self.params or {}).items():
            params_from_spec(sym, d)
        if not (math.isfinite(self.lookback_s) and self.lookback_s >= 0):
            raise JobSpecError(f"lookback_s must be >= 0, got {self.lookback_s}")
        if self.max_rows < 0 or self.n_fill_curves < 0:
            raise JobSpecError("max_rows and n_fill_curves must be >= 0")

    def config(self) -> ExecutionConfig:
        """The models' settings (defaults + ``model`` overrides)."""
        unknown = sorted(set(self.model) - _MODEL_FIELDS)
        if unknown:
            raise JobSpecError(f"model: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(_MODEL_FIELDS))})")
        try:
            return ExecutionConfig(**self.model)
        except (ExecutionConfigError, TypeError) as exc:
            raise JobSpecError(f"model: {exc}") from None

    def parent_orders(self) -> list[ParentOrder]:
        return [parse_order(d, i) for i, d in enumerate(self.orders)]

    def window(self) -> tuple[int, int]:
        """``[earliest start - lookback, latest end)`` in ns."""
        orders = self.parent_orders()
        return (min(o.start_ns for o in orders) - int(self.lookback_s * 1e9), max(o.end_ns for o in orders))

    def data_range(self) -> dict[str, Any]:
        lo, hi = self.window()
        return {"topic": self.tick_topic, "start": lo, "end": hi, "params_topic": self.params_topic,
                "symbols": sorted({o.symbol for o in self.parent_orders()})}


def _num(v: Any) -> Any:
    """JSON-safe scalar (NaN/inf -> None, NumPy -> Python)."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def strategy_summary(report: SimReport) -> list[dict[str, Any]]:
    """Per strategy (in run order): orders, fill rate, mean realised / expected shortfall (bps),
    their difference, mean z-score, total realised / expected shortfall (currency)."""
    out = []
    for s in dict.fromkeys(r.strategy for r in report.results):
        rs = [r for r in report.results if r.strategy == s]
        real = np.array([r.realised_is_bps for r in rs])
        exp = np.array([r.expected_is_bps for r in rs])
        z = np.array([r.z_score for r in rs])
        q = sum(r.quantity for r in rs)
        out.append({"strategy": s, "orders": len(rs), "fill_rate": _num(sum(r.executed_qty for r in rs) / q if q else math.nan),
                    "realised_is_bps": _num(np.nanmean(real) if np.isfinite(real).any() else math.nan),
                    "expected_is_bps": _num(np.nanmean(exp) if np.isfinite(exp).any() else math.nan),
                    "z_score": _num(np.nanmean(z) if np.isfinite(z).any() else math.nan),
                    "realised_is": _num(sum(r.realised_is for r in rs)),
                    "expected_is": _num(sum(r.expected_is for r in rs))})
    return out


def _fill_curves(report: SimReport, orders: list[ParentOrder], n: int) -> list[dict[str, Any]]:
    keep = [o for o in orders if o.order_id not in report.errors][:n]
    by_id = {o.order_id: o for o in keep}
    out = []
    for r in report.results:
        o = by_id.get(r.order_id)
        if o is None:
            continue
        times = slice_times(o.start_ns, o.end_ns - o.start_ns, len(r.fill_qty))
        out.append({"order_id": r.order_id, "symbol": r.symbol, "strategy": r.strategy, "side": r.side,
                    "quantity": r.quantity, "ts": times.tolist(), "fill_qty": r.fill_qty.tolist(),
                    "fill_px": [_num(x) for x in r.fill_px.tolist()]})
    return out


def run_execsim(spec: ExecSimSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Replay the tape, gather parameters, simulate every order x strategy, publish the rows."""
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.processors.execution.market_params_feed import (
        load_ticks,
        read_params,
        tapes_from_ticks,
    )

    settings = load_settings()
    t0 = time.monotonic()
    cfg = spec.config()
    orders = spec.parent_orders()
    symbols = sorted({o.symbol for o in orders})
    lo, hi = spec.window()
    progress(0.02, f"replaying {spec.tick_topic}")
    ticks = load_ticks(settings.kafka, spec.tick_topic, lo, hi, symbols)
    if should_stop():
        raise JobStopped("stopped after the replay")
    tapes = tapes_from_ticks(ticks)
    params: dict[str, MarketParams] = {s: params_from_spec(s, d) for s, d in (spec.params or {}).items()}
    missing = [s for s in symbols if s not in params]
    param_errors: dict[str, str] = {}
    if missing:
        progress(0.25, f"reading parameters of {len(missing)} symbol(s) from {spec.params_topic}")
        got, param_errors = read_params(settings.kafka, spec.params_topic, symbols=missing)
        params.update(got)
    progress(0.3, f"simulating {len(orders)} orders x {len(spec.strategies)} strategies")

    def on_progress(frac: float, msg: str) -> None:
        progress(0.3 + 0.6 * frac, msg)

    try:
        report = run_simulation(orders, params, tapes, cfg, spec.strategies, progress=on_progress,
                                should_stop=should_stop)
    except SimulationStopped as exc:
        raise JobStopped(str(exc)) from None
    for o in orders:
        if o.order_id in report.errors and o.symbol in param_errors:
            report.errors[o.order_id] += f" ({param_errors[o.symbol]})"
    rows = [{f: _num(getattr(r, f)) for f in ROW_FIELDS} for r in report.results]
    progress(0.92, f"publishing {len(rows)} rows to {RESULTS_TOPIC}")
    messages = publish_rows(settings, rows)
    return {"orders": len(orders), "strategies": list(spec.strategies), "symbols": len(symbols),
            "ticks": int(len(ticks)), "window": [lo, hi], "simulated": len(report.results),
            "summary": strategy_summary(report), "rows": rows[: spec.max_rows], "rows_total": len(rows),
            "errors": dict(report.errors), "fills": _fill_curves(report, orders, spec.n_fill_curves),
            "results_topic": RESULTS_TOPIC, "messages": messages, "seconds": round(time.monotonic() - t0, 3)}


def publish_rows(settings: Any, rows: list[dict[str, Any]]) -> int:
    """Every row to ``results.execsim`` keyed by job id (parts named by headers); returns messages."""
    from mystocks_gpu.infra.clock import SYSTEM_CLOCK
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec

    run = current_run()
    job_id = run.job_id if run else "direct"
    codec = AvroCodec()
    now = SYSTEM_CLOCK.now_ns()
    parts = max(1, math.ceil(len(rows) / ROWS_PER_MESSAGE))
    avro_rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
    producer = make_producer(settings.kafka)
    for part in range(parts):
        value = codec.encode(RESULT_SCHEMA, {"job_id": job_id, "ts_event": now,
                                             "rows": avro_rows[part * ROWS_PER_MESSAGE:(part + 1) * ROWS_PER_MESSAGE]})
        producer.produce(RESULTS_TOPIC, value, job_id.encode(), timestamp=now // 1_000_000,
                         headers=[("mystocks.part", str(part).encode()), ("mystocks.parts", str(parts).encode())])
    produce_all(producer, RESULTS_TOPIC, iter(()))  # flush and check delivery
    return parts


def _summarize(result: dict[str, Any]) -> str:
    from mystocks_gpu.processors.execution.execsim_report import format_summary

    return format_summary(result)


def _report(result: dict[str, Any], directory: Any, settings: Any, job_id: str) -> Any:
    from mystocks_gpu.processors.execution.execsim_report import write_report

    return write_report(result, directory)


KIND = JobKind("execsim", ExecSimSpec, run_execsim, policy="batch", devices="any",
               description="simulate parent orders per strategy (AC/TWAP/VWAP/POV) against a replayed tape: "
                           "realised vs expected implementation shortfall (rows on results.execsim)",
               summarize=_summarize, report=_report, bulky_keys=("rows", "fills", "summary", "errors"))
