"""Workload 2: real-time tick features. ``md.ticks`` -> ``features.ticks`` (one feature vector per
tick) + ``md.bars.1s`` / ``md.bars.1m`` (OHLCV bars emitted when they close by event time).

Runs :class:`~mystocks_gpu.gpu_ops.features.TickFeatureEngine` and
:class:`~mystocks_gpu.gpu_ops.bars.BarBuilder` on the active backend (GPU when present), with the
per-symbol state resident on that backend between micro-batches. Which features are computed is
:class:`~mystocks_gpu.gpu_ops.FeatureConfig`; bar intervals and lateness are
:class:`FeaturesProcessorConfig`.

Changelog: one entry per symbol touched by a batch (key = the symbol, value = that symbol's rows
of the feature and bar state arrays), so a commit writes O(symbols in the batch) bytes, not the
whole state. Memory per symbol: ``state_bytes_per_symbol(cfg)`` (9 112 B with the defaults) plus
176 B per bar interval; a worker owning S symbols holds about S x 9.5 kB.

Late ticks (their bar already closed beyond ``allowed_lateness_ns``) still get their feature
vector, are not counted in bars, and are copied to the DLQ with error class ``late``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import CPU, select, to_host, xp
from mystocks_gpu.gpu_ops.bars import BarBuilder, BarState
from mystocks_gpu.gpu_ops.features import FeatureState, TickFeatureEngine
from mystocks_gpu.gpu_ops.features_config import FeatureConfig
from mystocks_gpu.gpu_ops.tick_columns import TickColumns
from mystocks_gpu.schemas.batch_codec import BatchEncoder, TickDecoder, status_message
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import (
    Columns,
    Decoded,
    Outputs,
    Processor,
    Rejected,
    decode_errors_to_rejected,
)

_BAR_TOPICS = {10**9: "md.bars.1s", 60 * 10**9: "md.bars.1m"}


@dataclass(frozen=True)
class FeaturesProcessorConfig:
    """Features processor settings: feature selection, bar intervals (ns) and allowed lateness (ns)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    bar_intervals_ns: tuple[int, ...] = (10**9, 60 * 10**9)
    allowed_lateness_ns: int = 0
    output_topic: str = "features.ticks"
    backend: str = "auto"

    def bar_topic(self, interval_ns: int) -> str:
        """Topic of a bar interval (md.bars.1s, md.bars.1m, else md.bars.<seconds>s)."""
        return _BAR_TOPICS.get(interval_ns, f"md.bars.{interval_ns // 10**9}s")


@dataclass
class FeaturesState:
    """Feature engine state + one bar state per interval, for one partition."""

    features: FeatureState
    bars: list[BarState]


class TickFeaturesProcessor(Processor[FeaturesState]):
    """``md.ticks`` -> ``features.ticks`` + bars (see module docstring)."""

    name = "features"
    input_topic = "md.ticks"

    def __init__(self, cfg: FeaturesProcessorConfig | None = None, output_topic: str | None = None,
                 store: SchemaStore | None = None) -> None:
        """``store``: schema ids of inputs and outputs (the process's store; default the manifest)."""
        self.store = store
        self.cfg = cfg or FeaturesProcessorConfig()
        if output_topic:
            self.cfg = FeaturesProcessorConfig(self.cfg.features, self.cfg.bar_intervals_ns,
                                               self.cfg.allowed_lateness_ns, output_topic, self.cfg.backend)
        self.backend = select(self.cfg.backend)
        self.engine = TickFeatureEngine(self.cfg.features, self.backend)
        self.builders = [BarBuilder(i, self.cfg.allowed_lateness_ns, self.backend) for i in self.cfg.bar_intervals_ns]
        self.output_topics = (self.cfg.output_topic, *(self.cfg.bar_topic(i) for i in self.cfg.bar_intervals_ns))
        self.names = tuple(self.engine.output_names)
        self._fv = BatchEncoder("mystocks.features.FeatureVector", store)
        self._bar = BatchEncoder("mystocks.md.Bar", store)
        self._decoders: dict[int, TickDecoder] = {}

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable,
               partition: int, ingest_ns: int) -> Decoded:
        dec = self._decoders.setdefault(id(symbols), TickDecoder(self.store, symbols=symbols))
        d = dec.decode(values, validate=True)
        cols = {k: d.columns[k] for k in ("sym", "ts", "seq", "kind", "price", "size", "side", "bid", "ask",
                                         "bid_size", "ask_size")}
        return Decoded(Columns(cols, symbols, index[d.index], partition, ingest_ns),
                       decode_errors_to_rejected(index, d.status, status_message))

    # ---- state -------------------------------------------------------------------------------
    def initial_state(self) -> FeaturesState:
        return FeaturesState(self.engine.initial_state(0), [b.initial_state(0) for b in self.builders])

    def process(self, batch: Columns, state: FeaturesState) -> tuple[Outputs, FeaturesState]:
        c = batch.columns
        ticks = TickColumns.from_numpy(**{k: c[k] for k in ("sym", "ts", "kind", "price", "size", "side", "bid",
                                                            "ask", "bid_size", "ask_size")})
        feats, fstate = self.engine.process_host(ticks, state.features)
        out = Outputs()
        n = len(batch)
        keys: list[bytes | None] = [*self.key_bytes(c["sym"], batch.symbols)]
        values = self._fv.encode({"symbol": c["sym"], "ts_event": c["ts"], "seq": c["seq"],
                                  "ts_ingest": np.full(n, batch.ingest_ns, np.int64),
                                  "values": np.stack([np.asarray(feats[k], np.float64) for k in self.names], axis=1)},
                                 batch.symbols, map_keys=self.names)
        out.add(self.cfg.output_topic, keys, values, (c["ts"] // 1_000_000).tolist(), sources=batch.index.tolist())
        new_bars = []
        late_any = np.zeros(n, bool)
        for builder, bstate in zip(self.builders, state.bars, strict=True):
            bars, late, bstate = builder.process(ticks, bstate)
            new_bars.append(bstate)
            late_any |= to_host(late)
            self._emit_bars(out, builder.interval_ns, {k: to_host(v) for k, v in bars.items()}, batch.symbols)
        for i in np.flatnonzero(late_any):
            out.rejected.append(Rejected(int(batch.index[i]), "late",
                                         "late: the tick's bar already closed beyond the allowed lateness"))
        return out, FeaturesState(fstate, new_bars)

    def flush(self, state: FeaturesState, symbols: SymbolTable, partition: int) -> tuple[Outputs, FeaturesState]:
        out = Outputs()
        new_bars = []
        for builder, bstate in zip(self.builders, state.bars, strict=True):
            bars, bstate = builder.flush(bstate)
            new_bars.append(bstate)
            self._emit_bars(out, builder.interval_ns, {k: to_host(v) for k, v in bars.items()}, symbols)
        return out, FeaturesState(state.features, new_bars)

    def _emit_bars(self, out: Outputs, interval_ns: int, bars: dict[str, np.ndarray], symbols: SymbolTable) -> None:
        if not len(bars["sym"]):
            return
        values = self._bar.encode({"symbol": bars["sym"], "ts_event": bars["ts_open"],
                                   "interval_ns": bars["interval_ns"], "open": bars["open"], "high": bars["high"],
                                   "low": bars["low"], "close": bars["close"], "volume": bars["volume"],
                                   "vwap": bars["vwap"], "trades": bars["trades"]}, symbols)
        out.add(self.cfg.bar_topic(interval_ns), [*self.key_bytes(bars["sym"], symbols)], values,
                (bars["ts_open"] // 1_000_000).tolist())


    # ---- changelog: per-symbol rows ----------------------------------------------------------
    def _templates(self) -> list[dict[str, np.ndarray]]:
        one_f = self.engine.initial_state(1)
        out = [{k: to_host(v) for k, v in one_f.arrays.items()}]
        out += [{k: to_host(v) for k, v in b.initial_state(1).arrays.items()} for b in self.builders]
        return out

    def changelog_entries(self, state: FeaturesState, codes: np.ndarray, symbols: SymbolTable) -> list[tuple[bytes, bytes]]:
        codes = np.asarray(codes, np.int64)
        dev_codes = xp(self.backend).asarray(codes)  # gather on the device, copy only the touched rows
        parts = [{k: to_host(v[dev_codes]) for k, v in state.features.arrays.items()}]
        parts += [{k: to_host(v[codes]) for k, v in b.arrays.items()} for b in state.bars]
        entries = []
        for j, code in enumerate(codes.tolist()):
            blob = b"".join(np.ascontiguousarray(p[k][j]).tobytes() for p in parts for k in sorted(p))
            entries.append((symbols.symbol(code).encode(), blob))
        return entries

    def restore(self, entries: Iterable[tuple[bytes, bytes]], symbols: SymbolTable) -> FeaturesState:
        entries = list(entries)
        for key, _ in entries:
            symbols.code(key.decode())
        cap = len(symbols)
        f0 = self.engine.initial_state(cap)
        host = [{k: to_host(v).copy() for k, v in f0.arrays.items()}]
        host += [{k: to_host(v).copy() for k, v in b.initial_state(cap).arrays.items()} for b in self.builders]
        templates = self._templates()
        for key, blob in entries:
            code = symbols.code(key.decode())
            pos = 0
            for part, tmpl in zip(host, templates, strict=True):
                for k in sorted(tmpl):
                    row = tmpl[k][0]
                    nb = row.nbytes
                    part[k][code] = np.frombuffer(blob, row.dtype, row.size, pos).reshape(row.shape)
                    pos += nb
        arr = xp(self.backend)
        fstate = FeatureState(f0.backend, cap, {k: arr.asarray(v) for k, v in host[0].items()})
        bars = [BarState(cap, h) for h in host[1:]]
        return FeaturesState(fstate, bars)

    def state_to_bytes(self, state: FeaturesState, symbols: SymbolTable) -> bytes:
        entries = self.changelog_entries(state, np.arange(state.features.capacity), symbols)
        parts = [struct.pack("<I", len(entries))]
        for k, v in entries:
            parts += [struct.pack("<II", len(k), len(v)), k, v]
        return b"".join(parts)

    def state_from_bytes(self, blob: bytes, symbols: SymbolTable) -> FeaturesState:
        (n,), pos, entries = struct.unpack_from("<I", blob, 0), 4, []
        for _ in range(n):
            lk, lv = struct.unpack_from("<II", blob, pos)
            pos += 8
            entries.append((blob[pos:pos + lk], blob[pos + lk:pos + lk + lv]))
            pos += lk + lv
        return self.restore(entries, symbols)


def make(**kw: Any) -> TickFeaturesProcessor:
    """Factory for the processor registry (``mystocks-gpu run features``)."""
    return TickFeaturesProcessor(**kw)


__all__ = ["FeaturesProcessorConfig", "FeaturesState", "TickFeaturesProcessor", "CPU"]
