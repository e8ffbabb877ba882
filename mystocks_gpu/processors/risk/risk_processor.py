"""Workload 5, streaming half: ``mystocks-gpu run risk``. Prices (``risk.prices``: ticks or bars)
in, positions (``positions``) as a broadcast side input, ``risk.metrics`` + ``alerts`` out.

**How positions reach the processor (design).** Prices are keyed by symbol and positions by
account, so the two are not co-partitioned, and an account's risk needs the prices of all its
symbols together (one covariance). So:

- the processor's input is ONE partition of prices (``max_input_partitions = 1``; the catalog's
  ``risk.prices`` has one, holding ticks and/or bars), and its partition state holds every
  account (:class:`~mystocks_gpu.processors.risk.book.RiskBook`);
- ``positions`` (compacted, key = account) is a broadcast side input (``streams/side_input.py``):
  before each micro-batch the worker reads it to its end and the processor adds new records to a
  pending list in its state; the offsets read are part of the state, hence of its changelog, hence
  committed in the same transaction as the outputs and the price offsets (exactly-once; an abort
  or a restore rewinds them with the state, and the reader re-reads from there);
- a positions record takes effect at its ``ts_event`` *in the price stream*: before the first
  price with event time >= ``ts_event`` (and before a snapshot whose window ends after it). The
  point of application is a function of the data, not of when the record was read, so a restored
  worker applies the same holdings at the same points as one that never stopped. (A record read
  only after the price stream has passed its ``ts_event`` is late: it applies before the next
  price; producing positions before the prices they should affect avoids that.)

Scaling out: run one group per account shard only if you shard the positions topic yourself; one
worker holds every account of its input (memory ``8 (K^2 + W K)`` bytes per account of ``K``
symbols, ``W`` = ``risk.window``).

**Per batch** (prices in arrival order; policies in :class:`RiskProcessorConfig`): late prices
(older than the newest by more than ``late_ns``) go to the DLQ; the others are applied at
``max(ts, newest)`` with :func:`~mystocks_gpu.gpu_ops.risk.risk_step` (EWMA covariance of the held
symbols' returns, return window, P&L references, drawdown) segment by segment, cut where a
pending positions update or an emit boundary falls. Snapshots (exposures, P&L, parametric and
historical VaR/CVaR at every confidence, marginal/component VaR, max drawdown, limit checks)
are emitted per account at every emit boundary (``emit = "interval"``) or batch end
(``"batch"``); a limit that newly breaches at a snapshot raises one ``RISK_LIMIT`` alert with
the value and the limit (no repeat until it is back within the limit).

Stale prices: a symbol without a new price keeps its last one (a zero return); snapshots flag it
``stale`` after ``stale_after_ns``. Newly held symbols start at the symbol's latest price.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import select, xp
from mystocks_gpu.gpu_ops.risk import PriceBatch, risk_step
from mystocks_gpu.processors.risk import book as bk
from mystocks_gpu.processors.risk.config import RiskProcessorConfig
from mystocks_gpu.processors.risk.output import (
    ALERT_SCHEMA,
    METRICS_SCHEMA,
    alert_records,
    encode_all,
    encode_metrics,
)
from mystocks_gpu.processors.risk.positions import PositionUpdate, decode_positions
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import (
    BatchDecoder,
    BatchEncoder,
    DecoderCache,
    TickDecoder,
    status_message,
)
from mystocks_gpu.schemas.schema_store import SchemaStore, default_store
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import (
    Columns,
    Decoded,
    Outputs,
    Processor,
    Rejected,
    decode_errors_to_rejected,
)
from mystocks_gpu.streams.side_input import SideRecord

RiskBook = bk.RiskBook


class RiskProcessor(Processor[RiskBook]):
    """``risk.prices`` (+ ``positions`` side input) -> ``risk.metrics`` + ``alerts`` (module doc)."""

    name = "risk"
    input_topic = "risk.prices"
    max_input_partitions = 1

    def __init__(self, cfg: RiskProcessorConfig | None = None, store: SchemaStore | None = None) -> None:
        self.cfg = cfg or RiskProcessorConfig()
        self.store = store
        self.backend = select(self.cfg.backend)
        self.xp = xp(self.backend)
        self.side_topic = self.cfg.positions_topic
        self.output_topics = (self.cfg.output_topic, self.cfg.alerts_topic)
        self.codec = AvroCodec(store)
        s = store or default_store()
        self._tick_id = s.by_name("mystocks.md.Tick").id
        self._bar_id = s.by_name("mystocks.md.Bar").id
        self._ticks = DecoderCache(lambda symbols: TickDecoder(self.store, symbols=symbols))
        self._bars = DecoderCache(lambda symbols: BatchDecoder("mystocks.md.Bar", self.store, symbols=symbols))
        self._metrics_enc: BatchEncoder | None = None  # compiled (or loaded from the cache) at the first emit

    # ---- warm-up -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run an account through the whole path on throwaway data (see :meth:`Processor.warm_up`):
        a positions record (two symbols: the first two of ``sectors`` when set, so they are in the
        universe), then 24 bars a risk interval apart and 16 ticks, through the side input, decode
        (both price decoders), :meth:`process` (risk step, snapshots, metrics encoder, limit
        checks) and the changelog, on a throwaway symbol table and a fresh book."""
        from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate
        from mystocks_gpu.processors.risk.positions import encode_positions

        names = list(self.cfg.sectors)[:2] if len(self.cfg.sectors) >= 2 else ["WARM0", "WARM1"]
        step, t0 = self.cfg.risk.interval_ns, 1_767_571_200 * 10**9
        n = 24
        sym = np.tile(np.arange(2, dtype=np.int32), n)
        close = 50.0 * np.exp(np.cumsum(np.random.default_rng(1).normal(0.0, 0.01, 2 * n)))
        bars = {"symbol": sym, "ts_event": t0 + np.repeat(np.arange(n, dtype=np.int64), 2) * step,
                "interval_ns": np.full(2 * n, step), "open": close, "high": close, "low": close, "close": close,
                "volume": np.ones(2 * n), "vwap": close, "trades": np.ones(2 * n, np.int64)}
        end = t0 + n * step
        ticks = generate(SyntheticMarket(n_symbols=2, seed=1, start_ns=end), 16)
        values: list[bytes | None] = [*BatchEncoder("mystocks.md.Bar", self.store).encode(bars, names),
                                      *BatchEncoder("mystocks.md.Tick", self.store).encode(ticks, names)]
        pos = encode_positions("warm", t0, [(names[0], 10.0, 50.0), (names[1], -5.0, 50.0)], store=self.store,
                               codec=self.codec)
        symbols = SymbolTable()
        try:
            side, _ = self.decode_side([SideRecord(0, 0, b"warm", pos, t0 // 1_000_000)], symbols)
            book = self.apply_side(side, self.initial_state(), symbols, {0: 1})
            dec = self.decode(values, np.arange(len(values), dtype=np.int64), symbols, 0, end)
            _, book = self.process(dec.columns, book)
            self.changelog_entries(book, np.zeros(0, np.int32), symbols)
        finally:
            self.forget_symbols(symbols)

    def forget_symbols(self, symbols: SymbolTable) -> None:
        super().forget_symbols(symbols)
        self._ticks.drop(symbols)
        self._bars.drop(symbols)

    # ---- prices ------------------------------------------------------------------------------
    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable,
               partition: int, ingest_ns: int) -> Decoded:
        """Ticks (price = trade price or quote mid, validated like ``md.ticks``) and bars (price =
        close at the bar's last nanosecond, ``ts_event + interval_ns - 1``), by schema id."""
        ids = np.fromiter((int.from_bytes(v[1:5], "big") if v is not None and len(v) >= 5 else -1 for v in values),
                          np.int64, len(values))
        is_bar = ids == self._bar_id
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        rejected: list[Rejected] = []
        if (~is_bar).any():
            rows = np.flatnonzero(~is_bar)
            d = self._ticks(symbols).decode([values[i] for i in rows], validate=True, now_ns=ingest_ns or None)
            rejected += decode_errors_to_rejected(index[rows], d.status, status_message)
            c = d.columns
            parts.append((rows[d.index], c["sym"], c["ts"], c["price"]))
        if is_bar.any():
            rows = np.flatnonzero(is_bar)
            d = self._bars(symbols).decode([values[i] for i in rows])
            rejected += decode_errors_to_rejected(index[rows], d.status, status_message)
            c = d.columns
            ok = np.isfinite(c["close"]) & (c["close"] > 0) & (c["interval_ns"] > 0)
            for r in rows[d.index[~ok]]:
                rejected.append(Rejected(int(index[r]), "ValidationError",
                                         "bar close must be finite and > 0 and interval_ns > 0"))
            parts.append((rows[d.index[ok]], c["symbol"][ok], c["ts_event"][ok] + c["interval_ns"][ok] - 1,
                          c["close"][ok]))
        row = np.concatenate([p[0] for p in parts]).astype(np.int64)
        order = np.argsort(row, kind="stable")  # arrival order
        cols: dict[str, np.ndarray] = {
            "sym": np.concatenate([p[1] for p in parts]).astype(np.int32)[order],
            "ts": np.concatenate([p[2] for p in parts]).astype(np.int64)[order],
            "px": np.concatenate([p[3] for p in parts]).astype(np.float64)[order]}
        return Decoded(Columns(cols, symbols, index[row[order]], partition, ingest_ns), rejected)

    # ---- state -------------------------------------------------------------------------------
    def initial_state(self) -> RiskBook:
        return RiskBook()

    def process(self, batch: Columns, state: RiskBook) -> tuple[Outputs, RiskBook]:
        book = state.copy()
        out = Outputs()
        c = batch.columns
        sym, ts, px = c["sym"], c["ts"], c["px"]
        # late prices and effective (clamped) event times
        run = np.maximum.accumulate(np.maximum(ts, book.watermark)) if ts.size else ts
        before = np.concatenate([[book.watermark], run[:-1]]) if ts.size else ts
        late = (before >= 0) & (ts < before - self.cfg.late_ns)
        for i in np.flatnonzero(late):
            out.rejected.append(Rejected(int(batch.index[i]), "late",
                                         f"late: price time {int(ts[i])} is more than {self.cfg.late_ns} ns older "
                                         f"than the newest applied ({int(before[i])})"))
        keep = ~late
        sym, px, teff = sym[keep], px[keep], np.maximum(ts[keep], before[keep])
        book.grow_prices(len(batch.symbols))
        self._advance(book, sym, teff, px, out, batch.symbols)
        if self.cfg.emit == "batch" and sym.size:
            self._emit(book, int(book.watermark) + 1, out, batch.symbols)
        return out, book

    def _advance(self, book: RiskBook, sym: np.ndarray, teff: np.ndarray, px: np.ndarray, out: Outputs,
                 symbols: SymbolTable) -> None:
        """Apply prices segment by segment; emit at window boundaries; apply positions when due."""
        E = self.cfg.emit_interval_ns
        i, n = 0, sym.size
        while i < n:
            t0 = int(teff[i])
            w = t0 // E
            if book.window >= 0 and w > book.window:
                end = (book.window + 1) * E
                self._apply_due(book, end - 1, symbols)
                if self.cfg.emit == "interval":
                    self._emit(book, end, out, symbols)
            book.window = max(book.window, w)
            self._apply_due(book, t0, symbols)
            # segment: same window, up to the next pending update's time
            stop = int(np.searchsorted(teff, (w + 1) * E, side="left"))
            if book.pending:
                stop = min(stop, int(np.searchsorted(teff, book.pending[0].ts_event, side="left")))
            stop = max(stop, i + 1)
            self._step(book, sym[i:stop], teff[i:stop], px[i:stop])
            book.watermark = max(book.watermark, int(teff[stop - 1]))
            i = stop

    def _apply_due(self, book: RiskBook, t: int, symbols: SymbolTable) -> None:
        due = [u for u in book.pending if u.ts_event <= t]
        if due:
            book.pending = [u for u in book.pending if u.ts_event > t]
            bk.apply_updates(book, due, self.cfg, symbols, self.xp)
            book.dirty_book = True

    def _step(self, book: RiskBook, sym: np.ndarray, ts: np.ndarray, px: np.ndarray) -> None:
        """One segment: the latest price per symbol, then the accounts' states."""
        np.maximum.at(book.px_ts, sym, ts)
        last = np.full(book.px_last.shape[0], -1, np.int64)
        np.maximum.at(last, sym, np.arange(sym.size))
        hit = last >= 0
        book.px_last[hit] = px[last[hit]]
        book.dirty_book = True
        if book.stack is None:
            return
        old = book.stack
        _m, new, _b = risk_step(PriceBatch(sym, ts, px), old, self.cfg.risk, self.xp, with_metrics=False)
        book.stack = new
        self._mark_dirty(book, old, new)

    def _mark_dirty(self, book: RiskBook, old: Any, new: Any) -> None:
        x = self.xp
        slow = (old.interval != new.interval) | (old.day != new.day) | x.any(old.breached != new.breached, axis=1) \
            | x.any(x.isnan(old.day_ref) != x.isnan(new.day_ref), axis=1)
        moved = x.any((old.last_px != new.last_px) & ~(x.isnan(old.last_px) & x.isnan(new.last_px)), axis=1)
        slow_h = np.asarray(slow.get() if hasattr(slow, "get") else slow)
        moved_h = np.asarray(moved.get() if hasattr(moved, "get") else moved)
        names = book.names
        book.dirty_full.update(names[i] for i in np.flatnonzero(slow_h))
        book.dirty_px.update(names[i] for i in np.flatnonzero(moved_h))

    def _emit(self, book: RiskBook, ts_event: int, out: Outputs, symbols: SymbolTable) -> None:
        """A snapshot of every account as of ``ts_event`` (+ alerts for new breaches)."""
        if book.stack is None:
            return
        old = book.stack
        # at an emit boundary the intervals that ended by then close first (their returns count)
        until = ts_event if self.cfg.emit == "interval" else None
        metrics, new, breaches = risk_step(PriceBatch(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0)),
                                           old, self.cfg.risk, self.xp, close_until=until)
        book.stack = new
        self._mark_dirty(book, old, new)
        if self._metrics_enc is None:
            self._metrics_enc = BatchEncoder(METRICS_SCHEMA, self.store)
        keys, values = encode_metrics(self._metrics_enc, metrics, new, book.names, ts_event, book.px_ts,
                                      symbols, self.cfg)
        ts_ms = ts_event // 1_000_000
        out.add(self.cfg.output_topic, keys, values, [ts_ms] * len(values))
        alerts = alert_records(breaches, book.names, ts_event)
        out.add(self.cfg.alerts_topic, [a["source"].encode() for a in alerts],
                encode_all(self.codec, ALERT_SCHEMA, alerts), [ts_ms] * len(alerts))

    # ---- positions (side input) ------------------------------------------------------------
    def decode_side(self, records: Sequence[Any], symbols: SymbolTable) -> tuple[Any, list[Rejected]]:
        return decode_positions(records, self.codec, self.cfg.sectors)

    def apply_side(self, decoded: Any, state: RiskBook, symbols: SymbolTable, read_to: dict[int, int]) -> RiskBook:
        updates: list[PositionUpdate] = decoded
        new = [u for u in updates if u.offset >= state.side_next.get(u.partition, 0)]
        moved = {p: o for p, o in read_to.items() if o > state.side_next.get(p, 0)}
        if not new and not moved:
            return state
        book = state.copy()
        book.side_next.update(moved)
        book.pending = sorted([*book.pending, *new], key=lambda u: u.order)
        book.dirty_book = True
        return book

    def side_offsets(self, state: RiskBook) -> dict[int, int]:
        return dict(state.side_next)

    def _decode_pending(self, rows: list[tuple[int, int, bytes, bytes | None, int]]) -> list[PositionUpdate]:
        recs = [SideRecord(p, o, k, v, t) for p, o, k, v, t in rows]
        good, _bad = decode_positions(recs, self.codec, None)
        return sorted(good, key=lambda u: u.order)

    # ---- changelog ---------------------------------------------------------------------------
    def changelog_entries(self, state: RiskBook, codes: np.ndarray, symbols: SymbolTable) -> list[tuple[bytes, bytes]]:
        return bk.changelog_entries(state, symbols)

    def restore(self, entries: Iterable[tuple[bytes, bytes]], symbols: SymbolTable) -> RiskBook:
        return bk.restore_book(entries, symbols, self.cfg, self.xp, self._decode_pending)

    def state_to_bytes(self, state: RiskBook, symbols: SymbolTable) -> bytes:
        import struct

        st = state.copy()
        st.dirty_full = set(st.names)
        st.dirty_px = set(st.names)
        entries = bk.changelog_entries(st, symbols)
        parts = [struct.pack("<I", len(entries))]
        for k, v in entries:
            parts += [struct.pack("<II", len(k), len(v)), k, v]
        return b"".join(parts)

    def state_from_bytes(self, blob: bytes, symbols: SymbolTable) -> RiskBook:
        import struct

        (n,), pos, entries = struct.unpack_from("<I", blob, 0), 4, []
        for _ in range(n):
            lk, lv = struct.unpack_from("<II", blob, pos)
            pos += 8
            entries.append((blob[pos:pos + lk], blob[pos + lk:pos + lk + lv]))
            pos += lk + lv
        return self.restore(entries, symbols)


def make(output_topic: str | None = None, backend: str = "auto", store: SchemaStore | None = None,
         config_file: str | None = None) -> RiskProcessor:
    """Factory for ``mystocks-gpu run risk`` (``--processor-config FILE`` -> ``config_file``)."""
    from mystocks_gpu.processors.risk.config import load_processor_config

    over: dict[str, Any] = {"backend": backend}
    if output_topic:
        over["output_topic"] = output_topic
    return RiskProcessor(load_processor_config(config_file, **over), store=store)
