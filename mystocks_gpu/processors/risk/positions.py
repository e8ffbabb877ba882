"""Positions records (``positions`` topic, Avro ``mystocks.risk.Positions``): decoding and
validation for the risk processor, and an encoder for producers (tests, demo, clients).

A record replaces the account's holdings from its ``ts_event`` on. Rejected (to ``positions.dlq``
with the reason, nothing applied): an undecodable value, a key that is not the account, a
quantity that is NaN or infinite, a symbol outside the processor's universe (when it has a sector
map), a symbol held twice, a negative limit, a negative or non-finite capital. A null value (a
tombstone) closes the account at the record's Kafka timestamp. Limits left null take the
processor's ``default_limits`` (+inf = off unless configured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.risk import LIMIT_NAMES
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.streams.processor import Rejected

SCHEMA = "mystocks.risk.Positions"


@dataclass(frozen=True)
class PositionUpdate:
    """One decoded positions record. ``symbols`` None = close the account (tombstone); ``limits``
    in ``LIMIT_NAMES`` order with NaN = not set; ``raw`` the record's value (kept in the
    changelog while the update waits for its event time)."""

    account: str
    ts_event: int
    partition: int
    offset: int
    symbols: tuple[str, ...] | None
    qty: np.ndarray
    cost: np.ndarray
    limits: tuple[float, ...]
    capital: float | None
    raw: bytes | None

    @property
    def order(self) -> tuple[int, int, int]:
        """Application order: event time, then position in the topic."""
        return (self.ts_event, self.partition, self.offset)


def encode_positions(account: str, ts_event: int, holdings: Sequence[tuple[str, float, float]],
                     limits: Mapping[str, float | None] | None = None, capital: float | None = None,
                     store: SchemaStore | None = None, codec: AvroCodec | None = None) -> bytes:
    """A framed ``Positions`` value: ``holdings`` = ``(symbol, quantity, cost)``; ``limits`` by name
    (missing or None = not set)."""
    lim = dict(limits or {})
    bad = sorted(set(lim) - set(LIMIT_NAMES))
    if bad:
        raise ValueError(f"unknown limit(s) {bad}; known: {LIMIT_NAMES}")
    rec = {"account": account, "ts_event": int(ts_event),
           "holdings": [{"symbol": s, "quantity": float(q), "cost": float(c)} for s, q, c in holdings],
           "limits": {n: (None if lim.get(n) is None else float(lim[n])) for n in LIMIT_NAMES},  # type: ignore[arg-type]
           "capital": None if capital is None else float(capital)}
    return (codec or AvroCodec(store)).encode(SCHEMA, rec)


def decode_positions(records: Sequence[Any], codec: AvroCodec, universe: Mapping[str, str] | None
                     ) -> tuple[list[PositionUpdate], list[Rejected]]:
    """Decode side records (``SideRecord``-like: partition, offset, key, value, timestamp_ms);
    returns the good updates and the rejects (``Rejected.index`` = position in ``records``)."""
    good: list[PositionUpdate] = []
    bad: list[Rejected] = []
    for i, r in enumerate(records):
        try:
            good.append(_decode_one(r, codec, universe))
        except _Bad as exc:
            bad.append(Rejected(i, exc.kind, str(exc)))
    return good, bad


class _Bad(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _decode_one(r: Any, codec: AvroCodec, universe: Mapping[str, str] | None) -> PositionUpdate:
    key = r.key.decode("utf-8", "replace") if r.key is not None else None
    if r.value is None:
        if not key:
            raise _Bad("ValidationError", "a tombstone needs the account as its key")
        return PositionUpdate(key, int(r.timestamp_ms) * 1_000_000, r.partition, r.offset, None,
                              np.zeros(0), np.zeros(0), (math.nan,) * len(LIMIT_NAMES), None, None)
    try:
        rec = codec.decode(r.value, expect=SCHEMA)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a dead letter
        raise _Bad("DecodeError", f"not a {SCHEMA} record: {exc}") from None
    acct = rec["account"]
    if not acct:
        raise _Bad("ValidationError", "account is empty")
    if key is not None and key != acct:
        raise _Bad("ValidationError", f"key {key!r} is not the record's account {acct!r}")
    syms = [h["symbol"] for h in rec["holdings"]]
    qty = np.array([h["quantity"] for h in rec["holdings"]], dtype=np.float64)
    cost = np.array([h["cost"] for h in rec["holdings"]], dtype=np.float64)
    nonfinite = [s for s, q in zip(syms, qty.tolist(), strict=True) if not math.isfinite(q)]
    if nonfinite:
        raise _Bad("ValidationError", f"account {acct}: quantity is NaN or infinite for {', '.join(nonfinite[:10])}")
    if any(not s for s in syms):
        raise _Bad("ValidationError", f"account {acct}: a holding has an empty symbol")
    if len(set(syms)) != len(syms):
        dup = sorted({s for s in syms if syms.count(s) > 1})
        raise _Bad("ValidationError", f"account {acct}: symbol(s) held twice: {', '.join(dup[:10])}")
    if universe:
        unknown = [s for s in syms if s not in universe]
        if unknown:
            raise _Bad("UnknownSymbol", f"account {acct}: symbol(s) not in the risk universe (sector map): "
                                        f"{', '.join(unknown[:10])}")
    lim_rec = rec.get("limits") or {}
    limits = []
    for n in LIMIT_NAMES:
        v = lim_rec.get(n)
        if v is not None and not (v >= 0):
            raise _Bad("ValidationError", f"account {acct}: limit {n} must be >= 0, got {v}")
        limits.append(math.nan if v is None else float(v))
    cap = rec.get("capital")
    if cap is not None and not (math.isfinite(cap) and cap >= 0):
        raise _Bad("ValidationError", f"account {acct}: capital must be finite and >= 0, got {cap}")
    return PositionUpdate(acct, int(rec["ts_event"]), r.partition, r.offset, tuple(syms), qty, cost,
                          tuple(limits), cap, bytes(r.value))
