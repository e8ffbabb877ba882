"""Shared data and an in-process run of the risk processor (positions side input + prices), for
the unit tests (no broker) and as the uninterrupted reference of the integration tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.processors.risk.positions import encode_positions
from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import process_isolating
from mystocks_gpu.streams.side_input import SideRecord

CODEC = AvroCodec()
S = 1_000_000_000


@dataclass
class RiskData:
    """Ticks (framed values, keys, timestamps ms) and positions records (key, value, ts ms)."""

    names: list[str]
    cols: dict[str, np.ndarray]
    ticks: list[bytes]
    positions: list[tuple[bytes, bytes | None, int]]
    t0: int


def make_data(n_ticks: int = 30_000, n_symbols: int = 24, n_accounts: int = 12, seed: int = 5,
              events_per_s: float = 1_000.0) -> RiskData:
    """Synthetic ticks and positions: every account holds 6 symbols from the first tick on; two
    accounts change holdings a third of the way in (applied at that event time), one closes
    (tombstone) two thirds in; account acc000 has a small VaR limit (it breaches)."""
    names = symbol_names(n_symbols, seed)
    cols = generate(SyntheticMarket(n_symbols=n_symbols, seed=seed, events_per_s=events_per_s), n_ticks)
    ticks = BatchEncoder("mystocks.md.Tick").encode(cols, names)
    t0, t1 = int(cols["ts"][0]), int(cols["ts"][-1])
    rng = np.random.default_rng(seed)
    pos: list[tuple[bytes, bytes | None, int]] = []
    for a in range(n_accounts):
        acct = f"acc{a:03d}"
        held = rng.choice(n_symbols, 6, replace=False)
        hold = [(names[j], float(rng.integers(-300, 600) or 100), float(rng.uniform(20, 200))) for j in held]
        lim = {"var": 5.0} if a == 0 else {"concentration": 0.9} if a == 1 else None
        pos.append((acct.encode(), encode_positions(acct, t0, hold, limits=lim), t0 // 1_000_000))
    mid = t0 + (t1 - t0) // 3
    for a in (2, 3):
        acct = f"acc{a:03d}"
        held = rng.choice(n_symbols, 8, replace=False)
        hold = [(names[j], float(rng.integers(50, 500)), float(rng.uniform(20, 200))) for j in held]
        pos.append((acct.encode(), encode_positions(acct, mid, hold, capital=1e6), mid // 1_000_000))
    late = t0 + 2 * (t1 - t0) // 3
    pos.append((b"acc004", None, late // 1_000_000))
    return RiskData(names, cols, ticks, pos, t0)


def side_records(positions: Sequence[tuple[bytes, bytes | None, int]], partition_of: Any = None
                 ) -> list[SideRecord]:
    """Positions as side records, all in partition 0 (offsets in order) unless ``partition_of``."""
    out, nxt = [], {}
    for k, v, ts in positions:
        p = 0 if partition_of is None else partition_of(k)
        o = nxt.get(p, 0)
        nxt[p] = o + 1
        out.append(SideRecord(p, o, k, v, ts))
    return out


@dataclass
class InProcess:
    metrics: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    rejected: list[Any]
    side_rejected: list[Any]
    state: Any
    symbols: SymbolTable


def run_in_process(proc: RiskProcessor, ticks: Sequence[bytes | None], positions: list[SideRecord],
                   sizes: Sequence[int] | None = None, roundtrip: bool = False, ingest_ns: int = 0) -> InProcess:
    """Apply every positions record first, then the ticks in batches of ``sizes`` (default: one
    batch), optionally restoring the state from its changelog after every batch."""
    sy = SymbolTable()
    st = proc.initial_state()
    dec, side_rej = proc.decode_side(positions, sy)
    read_to: dict[int, int] = {}
    for r in positions:
        read_to[r.partition] = max(read_to.get(r.partition, 0), r.offset + 1)
    st = proc.apply_side(dec, st, sy, read_to)
    changelog: dict[bytes, bytes] = {}
    metrics, alerts, rejected = [], [], []
    bounds = [0, *np.cumsum(list(sizes or [len(ticks)])).tolist()]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        vals = list(ticks[lo:hi])
        if not vals:
            break
        d = proc.decode(vals, np.arange(lo, lo + len(vals)), sy, 0, ingest_ns)
        rejected += d.rejected
        if len(d.columns):
            out, st = process_isolating(proc, d.columns, st)
            rejected += out.rejected
            for topic, (_k, v, _t) in out.records.items():
                dst = metrics if topic == proc.cfg.output_topic else alerts
                dst += [CODEC.decode(x) for x in v]
        if roundtrip:
            changelog.update(proc.changelog_entries(st, np.zeros(0, np.int32), sy))
            st = proc.restore(changelog.items(), sy)
    return InProcess(metrics, alerts, rejected, side_rej, st, sy)


def same(x: Any, y: Any) -> bool:
    """Deep equality with NaN == NaN."""
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(same(a, b) for a, b in zip(x, y, strict=True))
    return bool(x == y)
