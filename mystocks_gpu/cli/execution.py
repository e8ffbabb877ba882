"""``mystocks-gpu execution params | order | schedule``: market parameters and parent orders for
the execution processor (``mystocks-gpu run execution``), and one order scheduled in-process."""

from __future__ import annotations

import argparse
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ns|us|ms|s|m|h|d)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
            "d": 86_400 * 10**9}


def parse_duration_ns(text: str) -> int:
    """``"90s"``, ``"30m"``, ``"1.5h"`` (a bare number is seconds) -> ns."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"cannot parse duration {text!r} (examples: 90s, 30m, 1.5h)")
    return int(float(m.group(1)) * _UNIT_NS[m.group(2) or "s"])


def parse_time_ns(text: str | None) -> int | None:
    """An ISO date/time (naive = UTC) or integer ns since the epoch; None stays None."""
    if text is None:
        return None
    from mystocks_gpu.processors.backtest.spec import to_ns
    from mystocks_gpu.processors.exceptions import InvalidSpec

    try:
        return to_ns(int(text) if text.strip().lstrip("-").isdigit() else text, "time")
    except InvalidSpec as exc:
        raise ConfigError(str(exc)) from None


def _params_table(params: dict[str, Any]) -> str:
    head = f"{'symbol':<12} {'price':>10} {'sigma':>8} {'adv':>14} {'spread':>9} {'lot':>5} {'profile':>8}"
    lines = [head]
    for sym in sorted(params):
        p = params[sym]
        prof = f"{len(p.profile.fractions)}b" if p.profile is not None else "flat"
        lines.append(f"{sym:<12} {p.price:10.4f} {p.sigma:8.4f} {p.adv:14,.0f} {p.spread:9.4f} {p.lot_size:5d} {prof:>8}")
    return "\n".join(lines)


def cmd_params(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.execution.market_params_feed import EstimateSpec, estimate, publish
    from mystocks_gpu.processors.execution.order_records import params_from_record

    errors: dict[str, str] = {}
    if args.file:
        try:
            data = json.loads(Path(args.file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read parameters from {args.file}: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{args.file}: expected an object symbol -> {{price, sigma, adv, spread, ...}}")
        params = {}
        for sym, d in data.items():
            try:
                params[sym] = params_from_record({**d, "symbol": sym})
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{args.file}: {sym}: {exc}") from None
        as_of, source = time.time_ns(), f"file {args.file}"
    else:
        spec = EstimateSpec(source_topic=args.source, start_ns=parse_time_ns(args.start), end_ns=parse_time_ns(args.end),
                            symbols=tuple(args.symbols.split(",")) if args.symbols else None, bar_seconds=args.bar_s,
                            spread_bps=args.spread_bps, lot_size=args.lot_size, min_days=args.min_days,
                            session_offset_s=args.session_offset_s, profile_bucket_s=args.profile_bucket_s,
                            profile_buckets=args.profile_buckets, profile_open_offset_s=args.open_offset_s,
                            source_kind=args.kind)
        params, errors, as_of = estimate(s.kafka, spec)
        source = f"{args.source} [{args.start or '-'}, {args.end or '-'})"
    if params:
        print(_params_table(params))
    for sym, why in sorted(errors.items()):
        print(f"not estimated: {sym}: {why}")
    if not params:
        raise ConfigError("no parameters estimated (nothing to publish)")
    if args.dry_run:
        print(f"dry run: {len(params)} symbol(s) not published")
        return 0
    parts = publish(s.kafka, params, as_of, source, orders_topic=args.orders_topic,
                    table_topic=args.params_topic or None)
    print(f"published {len(params)} symbol(s) to {parts} partition(s) of {args.orders_topic}"
          + (f" and to {args.params_topic}" if args.params_topic else ""))
    return 1 if errors and args.strict else 0


def _order(args: argparse.Namespace, now: int) -> tuple[Any, int]:
    from mystocks_gpu.gpu_ops.execution import ParentOrder

    end = parse_time_ns(args.end)
    horizon = parse_duration_ns(args.horizon) if args.horizon else 0
    if (end is None) == (not horizon):
        raise ConfigError("give --end or --horizon (one of them)")
    start = parse_time_ns(args.start) or 0
    o = ParentOrder(args.id or f"o-{uuid.uuid4().hex[:12]}", args.symbol, args.side, args.quantity,
                    end if end is not None else max(start, now) + horizon, start, args.strategy,
                    args.risk_aversion, args.max_participation, args.pov_rate, args.limit)
    return o, horizon


def cmd_order(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.kafka_clients import ensure_broker, make_producer, produce_all
    from mystocks_gpu.processors.execution.order_records import PARENT_ORDER, order_to_record
    from mystocks_gpu.schemas import AvroCodec

    now = time.time_ns()
    o, horizon = _order(args, now)
    ensure_broker(s.kafka)
    value = AvroCodec().encode(PARENT_ORDER, order_to_record(o, now, horizon_ns=horizon))
    produce_all(make_producer(s.kafka), args.topic, iter([(o.order_id.encode(), value, now // 1_000_000)]))
    print(o.order_id)
    return 0


def cmd_schedule(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.gpu_ops.execution import schedule
    from mystocks_gpu.processors.execution.market_params_feed import read_params

    now = time.time_ns()
    o, _ = _order(args, now)
    params, errors = read_params(s.kafka, args.params_topic, symbols=[o.symbol])
    if o.symbol not in params:
        raise ConfigError(f"no market parameters for {o.symbol!r} on {args.params_topic}"
                          + (f": {errors[o.symbol]}" if o.symbol in errors else
                             " (publish them with `mystocks-gpu execution params`)"))
    t0 = time.perf_counter_ns()
    sched = schedule(o, params[o.symbol], now_ns=now)
    dt = (time.perf_counter_ns() - t0) / 1e3
    sc = sched.score
    out = {"order_id": o.order_id, "symbol": o.symbol, "strategy": sched.strategy, "n_slices": sched.n_slices,
           "tau_s": sched.tau_s, "slice_ts": sched.times_ns.tolist(), "slice_qty": sched.quantities.tolist(),
           "expected_shortfall": sc.expected_shortfall, "expected_shortfall_bps": sc.expected_shortfall_bps,
           "timing_risk": sc.timing_risk, "impact_cost": sc.impact_cost, "spread_cost": sc.spread_cost,
           "unfilled_qty": sc.unfilled_qty, "max_participation": sc.max_participation, "decision_us": round(dt, 1)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def _order_args(sp: Any) -> None:
    sp.add_argument("symbol")
    sp.add_argument("side", choices=["buy", "sell"])
    sp.add_argument("quantity", type=int, help="shares")
    sp.add_argument("--horizon", help="horizon from the start, e.g. 30m, 2h, 900s")
    sp.add_argument("--end", help="end of the horizon: ISO time (naive = UTC) or ns since the epoch")
    sp.add_argument("--start", help="earliest start (default: now)")
    sp.add_argument("--strategy", choices=["ac", "twap", "vwap", "pov"], default="ac", help="default ac (Almgren-Chriss)")
    sp.add_argument("--risk-aversion", type=float, help="Almgren-Chriss lambda, 1/currency (urgency)")
    sp.add_argument("--max-participation", type=float, help="cap per slice, fraction of expected volume")
    sp.add_argument("--pov-rate", type=float, help="POV target participation")
    sp.add_argument("--limit", type=float, help="limit price")
    sp.add_argument("--id", help="order id (default: random)")


def add_commands(sub: Any) -> None:
    """Register ``execution`` and its subcommands."""
    ex = sub.add_parser("execution", help="execution parameters and parent orders (workload 6)",
                        description="Market parameters and parent orders for `mystocks-gpu run execution`.")
    esub = ex.add_subparsers(dest="execution_command", metavar="SUBCOMMAND", required=True)

    sp = esub.add_parser("params", help="estimate market parameters and publish them to the execution processor",
                         description="Estimate sigma, ADV, spread (and optionally an intraday volume profile) per "
                                     "symbol from replayed ticks or bars, or read them from a JSON file, and publish "
                                     "them to every partition of orders.parent and to the compacted execution.params "
                                     "in one transaction.")
    sp.add_argument("--from", dest="source", default="md.ticks", help="a tick topic (default md.ticks) or a bar topic md.bars.*")
    sp.add_argument("--kind", choices=["ticks", "bars"], help="what --from holds (default: bars for md.bars.*, else ticks)")
    sp.add_argument("--file", help="JSON {symbol: {price, sigma, adv, spread, lot_size?, ...}} instead of estimating")
    sp.add_argument("--start", help="range start: ISO time or ns (default: the beginning)")
    sp.add_argument("--end", help="range end, exclusive (default: the end)")
    sp.add_argument("--symbols", help="comma-separated symbols (default: all in the range)")
    sp.add_argument("--bar-s", type=float, default=60.0, help="bar length when estimating from ticks (default 60)")
    sp.add_argument("--spread-bps", type=float, help="spread fallback in bps of the price (needed for bar topics)")
    sp.add_argument("--lot-size", type=int, default=100, help="round lot (default 100)")
    sp.add_argument("--min-days", type=int, default=3, help="days needed for daily sigma/ADV (default 3)")
    sp.add_argument("--session-offset-s", type=float, default=0.0, help="trading day start, s after UTC midnight")
    sp.add_argument("--profile-buckets", type=int, default=0, help="estimate a volume profile of N buckets (0 = flat)")
    sp.add_argument("--profile-bucket-s", type=float, default=300.0, help="profile bucket length, s (default 300)")
    sp.add_argument("--open-offset-s", type=float, default=0.0, help="first profile bucket, s after UTC midnight")
    sp.add_argument("--orders-topic", default="orders.parent", help="the execution processor's input (default orders.parent)")
    sp.add_argument("--params-topic", default="execution.params", help="compacted table ('' = skip)")
    sp.add_argument("--dry-run", action="store_true", help="estimate and print, publish nothing")
    sp.add_argument("--strict", action="store_true", help="exit 1 when any symbol could not be estimated")
    sp.set_defaults(func=cmd_params)

    sp = esub.add_parser("order", help="produce one parent order to orders.parent",
                         description="Produce one parent order (Avro ParentOrder, key = order id).")
    _order_args(sp)
    sp.add_argument("--topic", default="orders.parent", help="default orders.parent")
    sp.set_defaults(func=cmd_order)

    sp = esub.add_parser("schedule", help="schedule one order in-process with the parameters on execution.params",
                         description="Schedule and score one parent order in-process (no Kafka hop except reading "
                                     "the parameters) and print the child slices and scores.")
    _order_args(sp)
    sp.add_argument("--params-topic", default="execution.params", help="default execution.params")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp.set_defaults(func=cmd_schedule)
