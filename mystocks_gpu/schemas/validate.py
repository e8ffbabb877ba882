"""Value checks for decoded records: what a topic accepts beyond "it parsed".

A record failing these goes to the topic's DLQ with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from mystocks_gpu.schemas.exceptions import ValidationError

#: event times before this (2000-01-01) are rejected as nonsense, ns
MIN_TS_NS = 946_684_800 * 10**9
#: event times further than this ahead of the wall clock are rejected, ns (1 day)
MAX_FUTURE_NS = 86_400 * 10**9
#: longest symbol accepted (UTF-8 bytes): a key, interned in every worker's symbol table
MAX_SYMBOL_BYTES = 256


def check_ts(ts_event: int, now_ns: int | None = None, max_future_ns: int = MAX_FUTURE_NS) -> None:
    """Reject event times before 2000 or more than ``max_future_ns`` past the wall clock."""
    now = time.time_ns() if now_ns is None else now_ns
    if ts_event < MIN_TS_NS:
        raise ValidationError(f"ts_event {ts_event} is before 2000-01-01")
    if ts_event > now + max_future_ns:
        raise ValidationError(f"ts_event {ts_event} is {(ts_event - now) / 1e9:.0f} s in the future")


def _positive(name: str, v: float) -> None:
    if not (math.isfinite(v) and v > 0):
        raise ValidationError(f"{name} must be finite and > 0, got {v}")


def _non_negative(name: str, v: float) -> None:
    if not (math.isfinite(v) and v >= 0):
        raise ValidationError(f"{name} must be finite and >= 0, got {v}")


def validate_tick(r: dict[str, Any]) -> None:
    """md.ticks contract: prices finite and > 0, sizes >= 0, bid <= ask, side in {-1, 0, 1}."""
    check_ts(r["ts_event"])
    if not r["symbol"]:
        raise ValidationError("symbol is empty")
    if len(r["symbol"].encode()) > MAX_SYMBOL_BYTES:
        raise ValidationError(f"symbol is longer than {MAX_SYMBOL_BYTES} bytes (UTF-8)")
    _positive("price", r["price"])
    _non_negative("size", r["size"])
    for k in ("bid", "ask"):
        _positive(k, r[k])
    for k in ("bid_size", "ask_size"):
        _non_negative(k, r[k])
    if r["bid"] > r["ask"]:
        raise ValidationError(f"crossed quote: bid {r['bid']} > ask {r['ask']}")
    if r["side"] not in (-1, 0, 1):
        raise ValidationError(f"side must be -1, 0 or 1, got {r['side']}")
    if r["kind"] == "TRADE" and r["size"] <= 0:
        raise ValidationError("a TRADE must have size > 0")


def validate_bar(r: dict[str, Any]) -> None:
    """OHLCV contract: low <= open, close <= high; volume >= 0; interval > 0."""
    check_ts(r["ts_event"])
    for k in ("open", "high", "low", "close"):
        _positive(k, r[k])
    if not (r["low"] <= min(r["open"], r["close"]) and max(r["open"], r["close"]) <= r["high"]):
        raise ValidationError(f"bar not consistent: O={r['open']} H={r['high']} L={r['low']} C={r['close']}")
    _non_negative("volume", r["volume"])
    if r["interval_ns"] <= 0:
        raise ValidationError("interval_ns must be > 0")


VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "mystocks.md.Tick": validate_tick,
    "mystocks.md.Bar": validate_bar,
}


def validate(schema_name: str, record: dict[str, Any]) -> None:
    """Run the schema's validator if it has one; raises :class:`ValidationError`."""
    fn = VALIDATORS.get(schema_name)
    if fn is not None:
        fn(record)
