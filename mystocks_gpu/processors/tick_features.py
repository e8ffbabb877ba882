"""Workload 2: real-time tick features. ``md.ticks`` -> ``features.ticks`` (one feature vector per
tick) + ``md.bars.<interval>`` (OHLCV bars emitted when they close by event time).

Runs :class:`~mystocks_gpu.gpu_ops.features.TickFeatureEngine` and
:class:`~mystocks_gpu.gpu_ops.bars.BarBuilder` on the active backend (GPU when present), with the
per-symbol state resident on that backend between micro-batches. Which features are computed, their
windows, the bar intervals, the allowed lateness and how far a trade may be stamped out of order are
:class:`FeaturesProcessorConfig` (built from the ``[features]`` settings by :func:`config_from_settings`).

Recorded with the output: every ``features.ticks`` record carries the header
``mystocks.features.config`` and every bar the header ``mystocks.bars.config`` (compact JSON of the
settings that shaped it: windows, spans, periods, interval, lateness, disorder bound), so a consumer
knows what it reads; the feature names are the keys of each vector's ``values`` map.

Changelog: one entry per symbol touched by a batch (key = the symbol, value = that symbol's rows
of the feature and bar state arrays), so a commit writes O(symbols in the batch) bytes, not the
whole state. Memory per symbol: ``state_bytes_per_symbol(cfg)`` (9 120 B with the defaults) plus
``80 B + 16 B`` per open-bar slot per interval; a worker owning S symbols holds about S x 9.5 kB.

Dead letters (the input tick, raw, to ``md.ticks.dlq``):

- ``late``: a trade whose bar of some interval had already closed (its window's end + the allowed
  lateness was behind the symbol's event time, or the bar was flushed on idle/stop). The message
  names each interval that rejected it, the bar's window and the allowed lateness; the trade still
  gets its feature vector and is still counted in the bars of the other intervals.
- ``out_of_order``: a trade stamped more than ``max_disorder_ns`` behind its symbol's last trade;
  it gets no feature vector and changes no feature state (bars judge it by their own lateness).

Closing the last bars: ``Processor.flush`` emits every open bar of a partition (the runtime calls it
after ``[features] idle_close_s`` of event-time idleness and on a graceful stop when
``close_on_stop``; see ``streams/stream_worker.py``); those windows then count as closed, so a later
trade in one of them is ``late``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import chain
from typing import Any

import numpy as np

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.backend import CPU, select, to_host, xp
from mystocks_gpu.gpu_ops.bars import BarBuilder, BarState
from mystocks_gpu.gpu_ops.features import FeatureState, TickFeatureEngine
from mystocks_gpu.gpu_ops.features_config import ALL_FEATURES, FeatureConfig
from mystocks_gpu.gpu_ops.tick_columns import COLUMN_DTYPES, TickColumns
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.processors.features_changelog import FeaturesChangelogCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder, DecoderCache, TickDecoder, status_message
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

NS = 10**9
_UNITS = ((86_400 * NS, "d"), (3600 * NS, "h"), (60 * NS, "m"), (NS, "s"), (10**6, "ms"))
FEATURES_HEADER = "mystocks.features.config"
#: the decoded tick columns a batch carries to :meth:`TickFeaturesProcessor.process`
_TICK_FIELDS = ("sym", "ts", "seq", "kind", "price", "size", "side", "bid", "ask", "bid_size", "ask_size")
#: the columns the feature and bar kernels read
_KERNEL_FIELDS = ("sym", "ts", "kind", "price", "size", "side", "bid", "ask", "bid_size", "ask_size")
BARS_HEADER = "mystocks.bars.config"


def _kernel_columns(c: Mapping[str, np.ndarray]) -> TickColumns:
    """The kernels' :class:`TickColumns` of a decoded partition: its views as they are when every
    column already has the canonical dtype (the decode path's, see :meth:`TickFeaturesProcessor._decode_split`),
    else cast and checked by ``TickColumns.from_numpy``. Saves ten conversions a partition."""
    if all(c[k].dtype is dt for k, dt in COLUMN_DTYPES.items()):  # NumPy's builtin dtypes are singletons
        return TickColumns(*(c[k] for k in COLUMN_DTYPES))
    return TickColumns.from_numpy(**{k: c[k] for k in _KERNEL_FIELDS})


def interval_label(interval_ns: int) -> str:
    """``1s``, ``1m``, ``5m``, ``1h``, ``1d``, ``250ms``: the largest unit that divides the interval."""
    for unit, name in _UNITS:
        if interval_ns % unit == 0:
            return f"{interval_ns // unit}{name}"
    raise ConfigError(f"bar interval {interval_ns} ns is not a whole number of milliseconds")


def seconds_to_ns(seconds: float, what: str) -> int:
    """Seconds (as written in settings, e.g. 1.5 or 0.001) to integer ns, exactly for decimal inputs."""
    ns = Decimal(repr(float(seconds))) * NS
    if ns != ns.to_integral_value():
        raise ConfigError(f"{what} = {seconds} s is finer than a nanosecond")
    return int(ns)


def _fmt_ns(ns: int) -> str:
    return f"{Decimal(ns) / NS:f}".rstrip("0").rstrip(".") + " s" if ns else "0 s"


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns")) + "Z"


@dataclass(frozen=True)
class FeaturesProcessorConfig:
    """Features processor settings: feature selection and windows (``features``, which holds the
    disorder bound too), bar intervals (ns), allowed lateness of bars (ns)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    bar_intervals_ns: tuple[int, ...] = (10**9, 60 * 10**9)
    allowed_lateness_ns: int = 0
    output_topic: str = "features.ticks"
    backend: str = "auto"

    def __post_init__(self) -> None:
        ivs = tuple(int(i) for i in self.bar_intervals_ns)
        object.__setattr__(self, "bar_intervals_ns", ivs)
        if len(set(ivs)) != len(ivs):
            raise ConfigError(f"features.bar_intervals_s has duplicates: {[_fmt_ns(i) for i in ivs]}")
        for i in ivs:
            if i <= 0:
                raise ConfigError(f"features.bar_intervals_s must be > 0, got {_fmt_ns(i)}")
            interval_label(i)
        if self.allowed_lateness_ns < 0:
            raise ConfigError(f"features.allowed_lateness_s must be >= 0, got {_fmt_ns(self.allowed_lateness_ns)}")

    def bar_topic(self, interval_ns: int) -> str:
        """Topic of a bar interval: ``md.bars.<label>`` (md.bars.1s, md.bars.1m, md.bars.5m, ...)."""
        return f"md.bars.{interval_label(interval_ns)}"

    def features_header(self) -> bytes:
        """The ``mystocks.features.config`` header: the settings that shape every feature value."""
        f = self.features
        return json.dumps({"window_ticks": f.window_ticks, "window_ns": f.window_ns,
                           "max_window_ticks": f.max_window_ticks, "ema_spans": list(f.ema_spans),
                           "rsi_period": f.rsi_period, "macd": list(f.macd), "bollinger_k": f.bollinger_k,
                           "rvol_annualization": f.rvol_annualization, "session_offset_ns": f.session_offset_ns,
                           "max_disorder_ns": f.max_disorder_ns}, separators=(",", ":")).encode()

    def bars_header(self, interval_ns: int) -> bytes:
        """The ``mystocks.bars.config`` header of one interval's bars."""
        return json.dumps({"interval_ns": interval_ns, "allowed_lateness_ns": self.allowed_lateness_ns},
                          separators=(",", ":")).encode()


def config_from_settings(fs: Any, output_topic: str | None = None, backend: str = "auto") -> FeaturesProcessorConfig:
    """The processor config of the ``[features]`` settings (``infra.config.FeaturesConfig``);
    :class:`ConfigError` (one line) on invalid values. Seconds become exact integer ns."""
    try:
        return _config_from_settings(fs, output_topic, backend)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("features.") else f"[features] {msg}") from None


def _config_from_settings(fs: Any, output_topic: str | None, backend: str) -> FeaturesProcessorConfig:
    feats = tuple(fs.features)
    if feats == ("all",):
        feats = ALL_FEATURES
    for x in fs.bar_intervals_s:
        if seconds_to_ns(x, "features.bar_intervals_s") % 10**6:
            raise ConfigError(f"features.bar_intervals_s: {x} s is not a whole number of milliseconds")
    cfg = FeatureConfig(
        features=feats, ema_spans=tuple(fs.ema_spans), window_ticks=fs.window_ticks,
        window_ns=seconds_to_ns(fs.window_s, "features.window_s"), max_window_ticks=fs.max_window_ticks,
        rsi_period=fs.rsi_period, macd=tuple(fs.macd), bollinger_k=fs.bollinger_k,
        rvol_annualization=fs.rvol_annualization,
        session_offset_ns=None if fs.session_offset_s is None else seconds_to_ns(fs.session_offset_s,
                                                                                   "features.session_offset_s"),
        max_disorder_ns=seconds_to_ns(fs.max_disorder_s, "features.max_disorder_s"))
    return FeaturesProcessorConfig(
        cfg, tuple(seconds_to_ns(x, "features.bar_intervals_s") for x in fs.bar_intervals_s),
        seconds_to_ns(fs.allowed_lateness_s, "features.allowed_lateness_s"),
        output_topic or "features.ticks", backend)


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
                 store: SchemaStore | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        """``store``: schema ids of inputs and outputs (the process's store; default the manifest);
        ``clock``: times the encode stage for the runtime's latency breakdown."""
        self.store = store
        self.clock = clock
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
        self._decoder = DecoderCache(lambda symbols: TickDecoder(self.store, symbols=symbols))
        self._fv_headers = [(FEATURES_HEADER, self.cfg.features_header())]
        self._bar_headers = {i: [(BARS_HEADER, self.cfg.bars_header(i))] for i in self.cfg.bar_intervals_ns}
        self._changelog_codec: FeaturesChangelogCodec | None = None

    # ---- warm-up -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the whole batch path once on throwaway data (see :meth:`Processor.warm_up`): 64
        synthetic ticks (trades and quotes, 20 a second of event time, so bars close inside the
        batch) of two symbols in two partitions are encoded, decoded, processed (the one-pass and,
        per partition, the single-partition path), flushed and written to changelog entries, on a
        throwaway symbol table and fresh states: the decoder, the feature and bar kernels, both
        encoders and the changelog gather are compiled or loaded. The table's decoder and cached
        keys are dropped afterwards; nothing else is kept."""
        from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names

        cols = generate(SyntheticMarket(n_symbols=2, seed=1, events_per_s=20.0), 64)
        values: list[bytes | None] = [*BatchEncoder("mystocks.md.Tick", self.store).encode(cols, symbol_names(2, 1))]
        symbols = SymbolTable()
        parts = {p: np.flatnonzero(cols["sym"] == p).tolist() for p in (0, 1)}
        try:
            decoded = self.decode_partitions(values, parts, symbols, 0)
            batches = {p: d.columns for p, d in decoded.items()}
            _, states = self.process_partitions(batches, {p: self.initial_state() for p in batches})
            for p, batch in batches.items():
                self.process(batch, self.initial_state())
                self.changelog_entries(states[p], np.unique(batch.columns["sym"]), symbols)
                self.flush(states[p], symbols, p)
        finally:
            self.forget_symbols(symbols)

    def forget_symbols(self, symbols: SymbolTable) -> None:
        super().forget_symbols(symbols)
        self._decoder.drop(symbols)

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable,
               partition: int, ingest_ns: int) -> Decoded:
        return self._decode_split(values, np.asarray(index, np.int64), {partition: len(values)}, symbols,
                                  ingest_ns)[partition]

    def decode_partitions(self, values: Sequence[bytes | None], parts: Mapping[int, list[int]],
                          symbols: SymbolTable, ingest_ns: int) -> dict[int, Decoded]:
        """Every partition's rows in ONE decoder call (decoding keeps no state across rows), then split
        into per-partition views: a call costs ~70 µs whatever its size, which at a few dozen ticks
        per partition and batch was most of the decode time. Same result as :meth:`decode` per
        partition (symbols are interned in the same order: the partitions' rows in turn)."""
        index = np.fromiter(chain.from_iterable(parts.values()), np.int64)
        return self._decode_split(list(map(values.__getitem__, index.tolist())), index,
                                  {p: len(rows) for p, rows in parts.items()}, symbols, ingest_ns)

    def _decode_split(self, values: list[bytes | None], index: np.ndarray, sizes: dict[int, int],
                      symbols: SymbolTable, ingest_ns: int) -> dict[int, Decoded]:
        """Decode ``values`` (batch rows ``index``) in one call; ``sizes`` = partition -> how many of
        the values, in turn, are its rows. Per partition: its good rows as column views, its rejects."""
        d = self._decoder(symbols).decode(values, validate=True)
        # the kernels' dtype once per batch (validated to -1..1 above), so each partition's TickColumns
        # is built from the decoded views as they are (the schema's int decodes to int32)
        d.columns["side"] = d.columns["side"].astype(np.int8)
        if len(sizes) == 1:  # one partition (the common case at low rates): no search for the cuts
            bounds, cuts = [0, len(values)], [0, len(d.index)]
        else:
            bounds = np.cumsum([0, *sizes.values()]).tolist()
            cuts = np.searchsorted(d.index, bounds).tolist()  # the good rows of each partition
        good = index[d.index]
        out = {}
        for j, partition in enumerate(sizes):
            a, b, lo, hi = cuts[j], cuts[j + 1], bounds[j], bounds[j + 1]
            cols = {k: d.columns[k][a:b] for k in _TICK_FIELDS}
            out[partition] = Decoded(Columns(cols, symbols, good[a:b], partition, ingest_ns),
                                     decode_errors_to_rejected(index[lo:hi], d.status[lo:hi], status_message))
        return out

    # ---- state -------------------------------------------------------------------------------
    def initial_state(self) -> FeaturesState:
        return FeaturesState(self.engine.initial_state(0), [b.initial_state(0) for b in self.builders])

    def process(self, batch: Columns, state: FeaturesState) -> tuple[Outputs, FeaturesState]:
        """Features and bars of one partition's batch. The state is updated in place (no copy of
        every symbol's rows per batch); if anything raises, the rows of the batch's symbols are
        put back from an undo log first, so ``state`` is as it was (the processor contract)."""
        out, (new,) = self._process_all([batch], [state])
        return out, new

    def process_partitions(self, batches: Mapping[int, Columns],
                           states: Mapping[int, FeaturesState]) -> tuple[Outputs, dict[int, FeaturesState]]:
        """Every partition of a micro-batch in one pass: the feature and bar kernels run per partition
        (each has its own state), but the feature vectors of all partitions are encoded in one codec
        call and the per-call set-up is shared. That per-call cost (~100 µs of ~20 NumPy and codec
        calls) was most of the CPU of a batch of a few ticks per partition (``bench/batch_overhead.py``,
        2026-12-06: 305 against 460 µs a 30-tick batch over 4 partitions). Same outputs as
        :meth:`process` per partition; if any record fails, every state is put back and the base class
        redoes the batch partition by partition, bisecting."""
        if len(batches) < 2 or len({id(b.symbols) for b in batches.values()}) > 1:
            return super().process_partitions(batches, states)
        parts = list(batches)
        try:
            out, new = self._process_all([batches[p] for p in parts], [states[p] for p in parts])
        except Exception:  # a poison record: the states are as they were; isolate it per partition
            return super().process_partitions(batches, states)
        return out, dict(zip(parts, new, strict=True))

    def _process_all(self, batches: list[Columns], states: list[FeaturesState]) -> tuple[Outputs, list[FeaturesState]]:
        """:meth:`process` of one or more partitions' batches (sharing one symbol table): every state's
        touched rows are saved before any is changed and put back if anything raises."""
        undo: list[tuple[FeaturesState, dict[str, Any], list[dict[str, np.ndarray]]]] = []
        ticks = []
        try:
            for batch, state in zip(batches, states, strict=True):
                ticks.append(_kernel_columns(batch.columns))
                codes = batch.columns["sym"]  # repeats saved twice and put back twice: the same row, cheaper than unique
                undo.append((state, self.engine.snapshot_rows(state.features, codes),
                             [b.snapshot_rows(bs, codes) for b, bs in zip(self.builders, state.bars, strict=True)]))
            return self._process(batches, ticks, states)
        except BaseException:
            for state, undo_f, undo_b in undo:
                self.engine.restore_rows(state.features, undo_f)
                for b, bs, snap in zip(self.builders, state.bars, undo_b, strict=True):
                    b.restore_rows(bs, snap)
            raise

    def _process(self, batches: list[Columns], ticks: list[TickColumns],
                 states: list[FeaturesState]) -> tuple[Outputs, list[FeaturesState]]:
        out = Outputs()
        fv: list[tuple[Columns, np.ndarray, np.ndarray | None]] = []  # (batch, (n, K) features, kept rows)
        bars_out: list[tuple[int, dict[str, Any], SymbolTable]] = []
        new_states = []
        for batch, tk, state in zip(batches, ticks, states, strict=True):
            feats, disorder, fstate = self.engine.process_host_matrix(tk, state.features, inplace=True)
            out_of_order = np.count_nonzero(disorder)
            fv.append((batch, feats.T, ~disorder if out_of_order else None))  # feats.T: self.names order
            new_bars = []
            late_by: list[tuple[int, np.ndarray]] = []
            for builder, bstate in zip(self.builders, state.bars, strict=True):
                bars, late, bstate = builder.process(tk, bstate, inplace=True)
                new_bars.append(bstate)
                late = to_host(late)
                if np.count_nonzero(late):
                    late_by.append((builder.interval_ns, late))
                if len(bars["sym"]):
                    bars_out.append((builder.interval_ns, bars, batch.symbols))
            if late_by or out_of_order:
                self._reject(out, batch, len(batch), late_by, disorder)
            new_states.append(FeaturesState(fstate, new_bars))
        t_enc = self.clock.monotonic()
        self._emit_vectors(out, fv)
        for interval_ns, bars, symbols in bars_out:  # per bar topic: the partitions' bars in turn
            self._emit_bars(out, interval_ns, {k: to_host(v) for k, v in bars.items()}, symbols)
        out.stage_s["encode"] = self.clock.monotonic() - t_enc
        return out, new_states

    def _emit_vectors(self, out: Outputs, fv: list[tuple[Columns, np.ndarray, np.ndarray | None]]) -> None:
        """One feature vector per kept tick of every batch in ``fv``, in turn, in one encoder call."""
        parts = []
        for batch, mat, keep in fv:
            c = batch.columns
            rows = (c["sym"], c["ts"], c["seq"], mat, batch.index)
            parts.append(rows if keep is None else tuple(a[keep] for a in rows))
        sym, ts, seq, mat, index = parts[0] if len(parts) == 1 else map(np.concatenate, zip(*parts, strict=True))
        ingest = {b.ingest_ns for b, _, _ in fv}
        ts_ingest = (np.full(sym.size, ingest.pop(), np.int64) if len(ingest) == 1 else
                     np.concatenate([np.full(p[0].size, b.ingest_ns, np.int64) for p, (b, _, _) in zip(parts, fv, strict=True)]))
        symbols = fv[0][0].symbols
        values = self._fv.encode({"symbol": sym, "ts_event": ts, "seq": seq, "ts_ingest": ts_ingest, "values": mat},
                                 symbols, map_keys=self.names)
        out.add(self.cfg.output_topic, self.key_bytes(sym, symbols), values, (ts // 1_000_000).tolist(),
                sources=index, headers=self._fv_headers)

    def _reject(self, out: Outputs, batch: Columns, n: int, late_by: list[tuple[int, np.ndarray]],
                disorder: np.ndarray) -> None:
        """Dead letters naming why: each bar interval that found the trade late, or the disorder bound."""
        c = batch.columns
        L = self.cfg.allowed_lateness_ns
        any_late = np.zeros(n, bool)
        for _, late in late_by:
            any_late |= late
        for i in np.flatnonzero(any_late | disorder).tolist():
            t = int(c["ts"][i])
            if disorder[i]:
                msg = (f"out_of_order: trade stamped {_iso(t)} is more than the allowed disorder of "
                       f"{_fmt_ns(self.cfg.features.max_disorder_ns)} behind its symbol's last trade; not used for "
                       "the features (no feature vector)")
                out.rejected.append(Rejected(int(batch.index[i]), "out_of_order", msg))
                continue
            hit = [ivl for ivl, late in late_by if late[i]]
            parts = [f"{interval_label(ivl)} bar [{_iso(t // ivl * ivl)}, +{interval_label(ivl)}) had already closed"
                     for ivl in hit]
            others = [interval_label(ivl) for ivl in self.cfg.bar_intervals_ns if ivl not in hit]
            msg = (f"late for the {'; the '.join(parts)} (allowed lateness {_fmt_ns(L)}); not counted in "
                   f"{'that bar' if len(hit) == 1 else 'those bars'}"
                   + (f", still counted in the {', '.join(others)} bars" if others else "")
                   + "; the feature vector was produced")
            out.rejected.append(Rejected(int(batch.index[i]), "late", msg))

    def flush(self, state: FeaturesState, symbols: SymbolTable, partition: int) -> tuple[Outputs, FeaturesState]:
        out = Outputs()
        new_bars = []
        touched: list[np.ndarray] = []
        for builder, bstate in zip(self.builders, state.bars, strict=True):
            bars, bstate = builder.flush(bstate)
            new_bars.append(bstate)
            host = {k: to_host(v) for k, v in bars.items()}
            touched.append(np.asarray(host["sym"], np.int32))
            self._emit_bars(out, builder.interval_ns, host, symbols)
        out.touched = np.unique(np.concatenate(touched)) if touched else np.zeros(0, np.int32)
        return out, FeaturesState(state.features, new_bars)

    def _emit_bars(self, out: Outputs, interval_ns: int, bars: dict[str, np.ndarray], symbols: SymbolTable) -> None:
        if not len(bars["sym"]):
            return
        values = self._bar.encode({"symbol": bars["sym"], "ts_event": bars["ts_open"],
                                   "interval_ns": bars["interval_ns"], "open": bars["open"], "high": bars["high"],
                                   "low": bars["low"], "close": bars["close"], "volume": bars["volume"],
                                   "vwap": bars["vwap"], "trades": bars["trades"]}, symbols)
        out.add(self.cfg.bar_topic(interval_ns), self.key_bytes(bars["sym"], symbols), values,
                (bars["ts_open"] // 1_000_000).tolist(), headers=self._bar_headers[interval_ns])

    # ---- changelog: per-symbol rows ----------------------------------------------------------
    def _codec(self) -> FeaturesChangelogCodec:
        """The changelog value codec: the per-symbol row layout (part, array, dtype, row shape) in
        value order (the feature state's arrays, then each bar builder's, names sorted)."""
        if self._changelog_codec is None:
            one_f = self.engine.initial_state(1)
            parts = [("f", {k: to_host(v) for k, v in one_f.arrays.items()})]
            parts += [(f"b{j}", {k: to_host(v) for k, v in b.initial_state(1).arrays.items()})
                      for j, b in enumerate(self.builders)]
            layout = [(part, k, arrs[k].dtype, arrs[k].shape[1:]) for part, arrs in parts for k in sorted(arrs)]
            self._changelog_codec = FeaturesChangelogCodec(layout, self.cfg.features.window_ns)
        return self._changelog_codec

    def _arrays(self, state: FeaturesState) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"f": state.features.arrays}
        out.update({f"b{j}": b.arrays for j, b in enumerate(state.bars)})
        return out

    def changelog_entries(self, state: FeaturesState, codes: np.ndarray, symbols: SymbolTable) -> list[tuple[bytes, bytes]]:
        """One value per symbol of ``codes`` (``features_changelog``: compact when the time window is
        on, only the trades a later window can still count)."""
        codes = np.asarray(codes, np.int64)
        if not codes.size:
            return []
        codec = self._codec()
        arrays = self._arrays(state)
        dev_codes = xp(self.backend).asarray(codes)  # gather on the device, copy only the touched rows
        rows = {(part, k): to_host(arrays[part][k][dev_codes]) if part == "f" else arrays[part][k][codes]
                for part, k, _, _ in codec.layout}
        return list(zip(self.key_bytes(codes, symbols), codec.encode(rows, codes.size), strict=True))

    def restore(self, entries: Iterable[tuple[bytes, bytes]], symbols: SymbolTable) -> FeaturesState:
        entries = list(entries)
        codec = self._codec()
        keys, values = [k for k, _ in entries], [v for _, v in entries]
        split = codec.split(keys, values)  # every value checked before any symbol is added
        for key in keys:
            symbols.code(key.decode())
        cap = len(symbols)
        host: dict[str, dict[str, np.ndarray]] = {"f": {k: to_host(v).copy() for k, v in
                                                        self.engine.initial_state(cap).arrays.items()}}
        host.update({f"b{j}": {k: v.copy() for k, v in b.initial_state(cap).arrays.items()}
                     for j, b in enumerate(self.builders)})
        if entries:
            codes = np.fromiter((symbols.code(k.decode()) for k in keys), np.int64, len(keys))
            codec.decode_into(keys, values, codes, host, split)
        arr = xp(self.backend)
        fstate = FeatureState(self.backend, cap, {k: arr.asarray(v) for k, v in host["f"].items()})
        bars = [BarState(cap, host[f"b{j}"]) for j in range(len(self.builders))]
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


__all__ = ["BARS_HEADER", "FEATURES_HEADER", "FeaturesProcessorConfig", "FeaturesState", "TickFeaturesProcessor",
           "config_from_settings", "interval_label", "CPU"]
