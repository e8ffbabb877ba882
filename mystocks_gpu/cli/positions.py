"""``mystocks-gpu positions``: publish an account's holdings and risk limits to the compacted
``positions`` topic (read by ``mystocks-gpu run risk``), or close an account (tombstone).

    mystocks-gpu positions set ACC1 --hold AAPL=100@150.5 --hold MSFT=-20@310 --limit var=5000 --capital 1e6
    mystocks-gpu positions close ACC1
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings

TOPIC = "positions"


def parse_holding(text: str) -> tuple[str, float, float]:
    """``SYMBOL=QTY[@COST]`` -> ``(symbol, quantity, cost)`` (cost NaN when omitted = unknown)."""
    sym, sep, rest = text.partition("=")
    qty_s, _, cost_s = rest.partition("@")
    try:
        qty = float(qty_s)
        cost = float(cost_s) if cost_s else math.nan
    except ValueError:
        qty = math.nan
        cost = 0.0
    if not sym or not sep or not math.isfinite(qty):
        raise ConfigError(f"--hold {text!r}: expected SYMBOL=QUANTITY[@COST] with a finite quantity")
    return sym, qty, cost


def parse_limit(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` with NAME one of the risk limits."""
    from mystocks_gpu.gpu_ops.risk import LIMIT_NAMES

    name, sep, val = text.partition("=")
    if not sep or name not in LIMIT_NAMES:
        raise ConfigError(f"--limit {text!r}: expected NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)}")
    try:
        v = float(val)
    except ValueError:
        raise ConfigError(f"--limit {text!r}: {val!r} is not a number") from None
    if not v >= 0:
        raise ConfigError(f"--limit {text!r}: limits are >= 0")
    return name, v


def cmd_positions(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.processors.risk.positions import encode_positions
    from mystocks_gpu.schemas import schema_store

    ts = int(args.ts) if args.ts is not None else time.time_ns()
    if args.action == "close":
        value = None
    else:
        holdings = [parse_holding(h) for h in args.hold or []]
        if not holdings:
            raise ConfigError("positions set: give at least one --hold SYMBOL=QUANTITY[@COST]")
        limits = dict(parse_limit(x) for x in args.limit or [])
        value = encode_positions(args.account, ts, holdings, limits=limits, capital=args.capital,
                                 store=schema_store(s))
    produce_all(make_producer(s.kafka), TOPIC, iter([(args.account.encode(), value, ts // 1_000_000)]))
    print(f"{args.account}: {'closed' if value is None else f'{len(args.hold)} holding(s)'} on {TOPIC} "
          f"from ts_event {ts}")
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("positions", help="publish an account's holdings and limits (for `run risk`)",
                        description="Publish an account's holdings and risk limits to the compacted `positions` "
                                    "topic (the whole record replaces the account's holdings from --ts on), or "
                                    "close the account. Limits not given use the risk processor's defaults.")
    sp.add_argument("action", choices=["set", "close"])
    sp.add_argument("account", help="account id (the record key)")
    sp.add_argument("--hold", action="append", metavar="SYM=QTY[@COST]",
                    help="a holding; repeat per symbol (negative quantity = short)")
    sp.add_argument("--limit", action="append", metavar="NAME=VALUE",
                    help="var (currency), gross_exposure (currency), concentration (fraction), drawdown (fraction)")
    sp.add_argument("--capital", type=float, default=None, help="equity base for drawdown (default: sum |qty x cost|)")
    sp.add_argument("--ts", type=int, default=None, help="event time (ns) from which the holdings hold (default now)")
    sp.set_defaults(func=cmd_positions)
