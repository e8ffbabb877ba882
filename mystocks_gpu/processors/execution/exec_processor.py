"""Workload 6 as a stream processor: ``orders.parent`` -> ``orders.schedule`` + ``orders.scored``
(``mystocks-gpu run execution``), exactly-once by the runtime.

How market parameters arrive (and why)
--------------------------------------
The runtime gives a worker one input topic, and a processor's outputs must be a deterministic
function of that input log (a restarted or replayed worker produces the same records). So the
per-symbol parameters (sigma, ADV, spread, lot, volume profile) travel IN ``orders.parent``:
``mystocks-gpu execution params`` (module ``market_params_feed``) estimates them from replayed
bars or ticks and writes one ``MarketParams`` record (key = symbol) to EVERY partition of
``orders.parent`` and the latest per symbol to the compacted ``execution.params``, in one
transaction. Within a partition each order is priced with the parameters that precede it in the
log: deterministic, replayable, and independent of how batches are cut. The parameters are the
processor's state, one changelog entry per symbol (the record's own bytes), restored on
assignment; orders change no state.

Per batch (one partition), rows are handled in log order: a run of parameter records updates the
state, a run of orders is scheduled with :func:`~mystocks_gpu.gpu_ops.execution.schedule_batch`
(on the configured backend) and gives one ``OrderSchedule`` and one ``OrderScore`` per accepted
order (key = order id, record timestamp = the decision time). Row i equals the single-order API
``schedule(order_i, params, now_ns=decision_i)`` exactly.

Decision time (``ExecutionProcessorConfig.decision_time``): ``event`` (default) = the order's
``ts_event`` (deterministic: replays reproduce every schedule); ``ingest`` = the wall clock when
the worker received the batch (live trading when orders may queue).

Bad input goes to ``orders.parent.dlq`` with the reason in ``mystocks.error.message``:
undecodable bytes (``DecodeError``/``UnknownSchemaId``), a record of another schema
(``WrongSchema``), an order with a bad field (``InvalidOrder``: quantity <= 0, horizon in the past
or shorter than one slice, both or neither of end/horizon, NaN or out-of-range risk aversion /
participation / POV rate / limit price), an order for a symbol without parameters
(``MissingMarketParams``), parameters with a NaN or out-of-range field (``InvalidMarketParams``).
A participation cap that cannot fill the order within the horizon is not an error: the schedule
is capped and the score says so (``capped``, ``unfilled_qty``, ``warning``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.backend import select
from mystocks_gpu.gpu_ops.execution import (
    REJECTS,
    BatchSchedules,
    ExecutionConfig,
    ExecutionInputError,
    MarketParams,
    OrderColumns,
    ParamsTable,
    ParentOrder,
    VolumeProfile,
    schedule_batch,
)
from mystocks_gpu.gpu_ops.execution.schedule_batch import PARALLEL_MIN_ROWS
from mystocks_gpu.processors.execution.order_encoder import encode_outputs
from mystocks_gpu.processors.execution.order_records import (
    MARKET_PARAMS,
    ORDER_SCHEDULE,
    ORDER_SCORE,
    PARENT_ORDER,
    SIDE_OF_SYMBOL,
    STRATEGY_CODE_OF_SYMBOL,
    cap_warning,
    check_order_record,
    order_to_record,
    params_from_record,
    params_to_record,
    resolve_end,
)
from mystocks_gpu.schemas import AvroCodec, DecodeError, SchemaError, UnknownSchemaId
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import Columns, Decoded, Outputs, Processor, Rejected

DECISION_TIMES = ("event", "ingest")
#: reject codes of ``schedule_batch`` that mean "no parameters for the symbol"
_MISSING = (10, 11)
_OPTIONAL = ("risk_aversion", "max_participation", "pov_rate", "limit_price")


@dataclass(frozen=True)
class ExecutionProcessorConfig:
    """Settings of the execution processor.

    Attributes:
        model: the execution models' settings (slice length, max slices, default risk aversion,
            participation cap, POV rate, impact calibration); default :class:`ExecutionConfig()`.
        decision_time: ``event`` (the order's ``ts_event``; default) or ``ingest`` (wall clock
            at batch receipt).
        schedule_topic: where schedules go (default ``orders.schedule``).
        scored_topic: where scores go (default ``orders.scored``).
        backend: ``auto`` | ``cpu`` | ``gpu`` for :func:`schedule_batch`.
    """

    model: ExecutionConfig = field(default_factory=ExecutionConfig)
    decision_time: str = "event"
    schedule_topic: str = "orders.schedule"
    scored_topic: str = "orders.scored"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.model, ExecutionConfig):
            raise ConfigError(f"ExecutionProcessorConfig.model must be an ExecutionConfig, got {self.model!r}")
        if self.decision_time not in DECISION_TIMES:
            raise ConfigError(f"ExecutionProcessorConfig.decision_time must be one of {DECISION_TIMES}, "
                              f"got {self.decision_time!r}")
        if not self.schedule_topic or not self.scored_topic or self.schedule_topic == self.scored_topic:
            raise ConfigError("ExecutionProcessorConfig: schedule_topic and scored_topic must be two distinct names")
        if self.backend not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"ExecutionProcessorConfig.backend must be auto, cpu or gpu, got {self.backend!r}")

    def with_output(self, output_topic: str | None) -> ExecutionProcessorConfig:
        """``run execution --output-topic T``: scores to ``T``; schedules to ``T`` with its last
        ``.scored`` replaced by ``.schedule`` (else ``T.schedule``)."""
        if not output_topic:
            return self
        base = output_topic[: -len(".scored")] if output_topic.endswith(".scored") else output_topic
        return replace(self, scored_topic=output_topic, schedule_topic=f"{base}.schedule")


@dataclass
class ExecState:
    """One partition's parameters: by symbol code, the :class:`MarketParams` and the framed record
    they came from (the changelog value), and the :class:`ParamsTable` s built from them (one per
    volume-profile grid; ``group[code]`` = the table of a symbol, -1 = none)."""

    params: dict[int, tuple[MarketParams, bytes]] = field(default_factory=dict)
    tables: list[ParamsTable] = field(default_factory=list)
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def build(cls, params: dict[int, tuple[MarketParams, bytes]]) -> ExecState:
        """The state holding ``params`` (tables rebuilt; the argument is not modified)."""
        members: list[list[tuple[int, MarketParams]]] = []
        grid: list[tuple[float, float, int] | None] = []  # the profile grid of each table (None: flat only)
        group = np.full(max(params, default=-1) + 1, -1, np.int64)
        for code in sorted(params):
            p = params[code][0]
            prof = p.profile
            key = None if prof is None else (prof.bucket_seconds, prof.open_offset_s, len(prof.fractions))
            if key is None:
                g = 0 if members else -1
            else:
                g = next((j for j, k in enumerate(grid) if k == key), -1)
                if g < 0:
                    g = next((j for j, k in enumerate(grid) if k is None), -1)
                    if g >= 0:
                        grid[g] = key
            if g < 0:
                g = len(members)
                members.append([])
                grid.append(key)
            members[g].append((code, p))
            group[code] = g
        tables = [ParamsTable.from_items(m) for m in members]
        return cls(dict(params), tables, group)


class ExecutionProcessor(Processor[ExecState]):
    """``orders.parent`` -> ``orders.schedule`` + ``orders.scored`` (see the module docstring)."""

    name = "execution"
    input_topic = "orders.parent"

    def __init__(self, cfg: ExecutionProcessorConfig | None = None, store: SchemaStore | None = None) -> None:
        self.cfg = cfg or ExecutionProcessorConfig()
        self.backend = select(self.cfg.backend)
        self.output_topics = (self.cfg.schedule_topic, self.cfg.scored_topic)
        self.codec = AvroCodec(store)
        self._ids = (self.codec.schema_id(ORDER_SCHEDULE), self.codec.schema_id(ORDER_SCORE))

    # ---- warm-up -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Decode and schedule throwaway orders (see :meth:`Processor.warm_up`): parameters of two
        symbols, one with a volume profile, then one order per strategy and side on each, through
        decode, :meth:`process` and the changelog, on a throwaway symbol table and fresh states;
        once as a small batch and once repeated to ``PARALLEL_MIN_ROWS`` orders, so both batched
        planners (one thread, parallel) and the output encoder are compiled or loaded before the
        first real order."""
        t0 = 1_767_623_400 * 10**9  # a Monday 14:30 UTC: inside the profile's buckets
        prof = VolumeProfile((1.0, 2.0, 1.0), 3600.0, 52_200.0)
        params = [MarketParams("WARM0", 50.0, 0.02, 1e6, 0.02), MarketParams("WARM1", 20.0, 0.03, 5e5, 0.01,
                                                                             profile=prof)]
        values: list[bytes | None] = [self.codec.encode(MARKET_PARAMS, params_to_record(p, t0 - 1)) for p in params]
        for i, (sym, strategy, side) in enumerate((p.symbol, st, sd) for p in params
                                                  for st in ("ac", "twap", "vwap", "pov") for sd in ("buy", "sell")):
            order = ParentOrder(f"warm{i}", sym, side, 1000 + i, t0 + 3600 * 10**9, 0, strategy)
            values.append(self.codec.encode(PARENT_ORDER, order_to_record(order, t0)))
        # a stream's small batches take the one-thread planner, a burst of PARALLEL_MIN_ROWS orders the parallel one
        big = values[:2] + values[2:] * -(-PARALLEL_MIN_ROWS // (len(values) - 2))
        symbols = SymbolTable()
        try:
            for batch in (values, big):
                dec = self.decode(batch, np.arange(len(batch), dtype=np.int64), symbols, 0, t0)
                _, state = self.process(dec.columns, self.initial_state())
            self.changelog_entries(state, np.arange(len(symbols), dtype=np.int32), symbols)
        finally:
            self.forget_symbols(symbols)

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable,
               partition: int, ingest_ns: int) -> Decoded:
        """Decode orders and parameter records; undecodable or invalid ones are rejected."""
        n = len(values)
        keep = np.zeros(n, bool)
        sym = np.full(n, -1, np.int32)  # the symbol whose STATE a row changes (params rows), else -1
        osym = np.full(n, -1, np.int32)
        is_params = np.zeros(n, bool)
        ts = np.zeros(n, np.int64)
        now = np.zeros(n, np.int64)
        ints = {k: np.zeros(n, np.int64) for k in ("quantity", "start_ns", "end_ns")}
        side, strat = np.zeros(n, np.int8), np.zeros(n, np.int8)
        opt = {k: np.full(n, np.nan) for k in _OPTIONAL}
        recs = np.empty(n, dtype=object)
        rejected: list[Rejected] = []
        event = self.cfg.decision_time == "event"
        for i, v in enumerate(values):
            try:
                info, rec = self.codec.decode_with_info(v)
            except UnknownSchemaId as exc:
                rejected.append(Rejected(int(index[i]), "UnknownSchemaId", str(exc)))
                continue
            except (DecodeError, SchemaError) as exc:
                rejected.append(Rejected(int(index[i]), "DecodeError", str(exc)))
                continue
            try:
                if info.name == PARENT_ORDER:
                    check_order_record(rec)
                    for name in _OPTIONAL:
                        x = rec.get(name)
                        if x is not None and x != x:
                            raise ExecutionInputError(name, "is NaN (leave it null for the default)")
                        opt[name][i] = np.nan if x is None else x
                    decision = int(rec["ts_event"]) if event else ingest_ns
                    ints["end_ns"][i] = resolve_end(rec, decision)
                    ints["quantity"][i], ints["start_ns"][i] = rec["quantity"], rec.get("start_ns", 0)
                    side[i] = SIDE_OF_SYMBOL[rec["side"]]
                    strat[i] = STRATEGY_CODE_OF_SYMBOL[rec.get("strategy", "AC")]
                    osym[i] = symbols.code(rec["symbol"])
                    ts[i], now[i] = rec["ts_event"], decision
                    recs[i] = rec
                elif info.name == MARKET_PARAMS:
                    p = params_from_record(rec)
                    sym[i] = osym[i] = symbols.code(p.symbol)
                    is_params[i] = True
                    ts[i] = now[i] = rec["ts_event"]
                    recs[i] = (p, bytes(v or b""))
                else:
                    rejected.append(Rejected(int(index[i]), "WrongSchema",
                                             f"{info.name} is neither {PARENT_ORDER} nor {MARKET_PARAMS}"))
                    continue
            except ExecutionInputError as exc:
                cls = "InvalidMarketParams" if info.name == MARKET_PARAMS else "InvalidOrder"
                rejected.append(Rejected(int(index[i]), cls, str(exc)))
                continue
            keep[i] = True
        rows = np.flatnonzero(keep)
        cols = {"sym": sym[rows], "osym": osym[rows], "is_params": is_params[rows], "ts": ts[rows], "now": now[rows],
                "side": side[rows], "strategy": strat[rows], "rec": recs[rows],
                **{name: a[rows] for name, a in ints.items()}, **{name: a[rows] for name, a in opt.items()}}
        return Decoded(Columns(cols, symbols, index[rows], partition, ingest_ns), rejected)

    # ---- process -----------------------------------------------------------------------------
    def initial_state(self) -> ExecState:
        return ExecState()

    def process(self, batch: Columns, state: ExecState) -> tuple[Outputs, ExecState]:
        """Rows in log order: runs of parameter records update the state, runs of orders are
        scheduled with the parameters held at that point."""
        c = batch.columns
        n = len(batch)
        is_p = c["is_params"]
        out = Outputs()
        # run boundaries: where is_params changes
        cuts = np.flatnonzero(np.diff(is_p.astype(np.int8))) + 1
        starts = np.r_[0, cuts]
        ends = np.r_[cuts, n]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            if a >= b:
                continue
            if is_p[a]:
                state = self._update(batch, a, b, state, out)
            else:
                self._schedule(batch, np.arange(a, b), state, out)
        return out, state

    def _update(self, batch: Columns, a: int, b: int, state: ExecState, out: Outputs) -> ExecState:
        params = dict(state.params)
        for i in range(a, b):
            p, raw = batch.columns["rec"][i]
            params[int(batch.columns["sym"][i])] = (p, raw)
        return ExecState.build(params)

    def _schedule(self, batch: Columns, rows: np.ndarray, state: ExecState, out: Outputs) -> None:
        c = batch.columns
        osym = c["osym"][rows].astype(np.int64)
        known = (osym >= 0) & (osym < len(state.group))
        grp = np.full(len(rows), -1, np.int64)
        grp[known] = state.group[osym[known]]
        per_row: dict[int, tuple[bytes, bytes, bytes, int]] = {}
        for g in np.unique(grp).tolist():
            sel = rows[grp == g]
            table = state.tables[g] if g >= 0 else ParamsTable()
            cols = OrderColumns(sym=c["osym"][sel], side=c["side"][sel], quantity=c["quantity"][sel],
                                end_ns=c["end_ns"][sel], start_ns=c["start_ns"][sel], strategy=c["strategy"][sel],
                                risk_aversion=c["risk_aversion"][sel], max_participation=c["max_participation"][sel],
                                pov_rate=c["pov_rate"][sel], limit_price=c["limit_price"][sel])
            res = schedule_batch(cols, table, self.cfg.model, now_ns=c["now"][sel], backend=self.backend)
            if self.backend != "cpu":
                res = res.to_host()
            self._emit(batch, sel, res, table, per_row, out)
        sched_t, score_t = self.cfg.schedule_topic, self.cfg.scored_topic
        emitted = sorted(per_row)
        if emitted:
            keys, svs, cvs, ts = (list(col) for col in zip(*(per_row[i] for i in emitted), strict=True))
            src = np.asarray(batch.index)[emitted]
            out.add(sched_t, keys, svs, ts, sources=src)
            out.add(score_t, keys, cvs, ts, sources=src)

    def _emit(self, batch: Columns, sel: np.ndarray, res: BatchSchedules, table: ParamsTable,
              per_row: dict[int, tuple[bytes, bytes, bytes, int]], out: Outputs) -> None:
        c = batch.columns
        reject = np.asarray(res.reject)
        for j in np.flatnonzero(reject).tolist():
            i = int(sel[j])
            code = int(reject[j])
            cls = "MissingMarketParams" if code in _MISSING else "InvalidOrder"
            out.rejected.append(Rejected(int(batch.index[i]), cls, self._reason(code, c["rec"][i], c, i)))
        ok = np.flatnonzero(reject == 0)
        if not ok.size:
            return
        idx = sel[ok]
        recs = c["rec"][idx]
        ids = [r["order_id"].encode() for r in recs]
        syms = [r["symbol"].encode() for r in recs]
        cap = c["max_participation"][idx]
        cap = np.where(np.isnan(cap), self.cfg.model.max_participation, cap)
        unf = np.asarray(res.scores["unfilled_qty"])[ok].astype(np.int64)
        exe = np.asarray(res.scores["executed_qty"])[ok].astype(np.int64)
        warnings = [cap_warning(float(cap[k]), int(exe[k]), int(unf[k])).encode() if unf[k] > 0 else b""
                    for k in range(ok.size)]
        now = c["now"][idx]
        sv, cv = encode_outputs(res, ok, ids, syms, warnings, now, np.full(ok.size, batch.ingest_ns, np.int64),
                                c["quantity"][idx], table.price[c["osym"][idx]], self._ids[0], self._ids[1])
        ts_ms = (now // 1_000_000).tolist()
        for k, i in enumerate(idx.tolist()):
            per_row[i] = (ids[k], sv[k], cv[k], ts_ms[k])

    def _reason(self, code: int, rec: dict[str, Any], c: dict[str, np.ndarray], i: int) -> str:
        """``field: reason`` of a reject, with the offending value."""
        fld, why = REJECTS[code]
        now, end = int(c["now"][i]), int(c["end_ns"][i])
        if code in _MISSING:
            return (f"symbol: no market parameters for {rec['symbol']!r} "
                    "(publish them with `mystocks-gpu execution params`)")
        if code == 3:
            return f"quantity: must be > 0 shares, got {rec['quantity']}"
        if code == 4:
            return f"end_ns: horizon is in the past: end {end} <= decision time {now} (ns)"
        if code == 5:
            start = max(int(c["start_ns"][i]), now)
            return (f"end_ns: horizon {(end - start) / 1e9:g} s is shorter than one slice "
                    f"({self.cfg.model.slice_ns / 1e9:g} s)")
        if fld in _OPTIONAL:
            return f"{fld}: {why}, got {rec.get(fld)!r}"
        return f"{fld}: {why}"

    # ---- state -------------------------------------------------------------------------------
    def changelog_entries(self, state: ExecState, codes: np.ndarray,
                          symbols: SymbolTable) -> list[tuple[bytes, bytes]]:
        """One entry per symbol whose parameters changed: key = symbol, value = the params record."""
        out = []
        for code in np.asarray(codes).tolist():
            got = state.params.get(int(code))
            if got is not None:
                out.append((symbols.symbol(int(code)).encode(), got[1]))
        return out

    def restore(self, entries: Iterable[tuple[bytes, bytes]], symbols: SymbolTable) -> ExecState:
        params: dict[int, tuple[MarketParams, bytes]] = {}
        for key, value in entries:
            rec = self.codec.decode(value, expect=MARKET_PARAMS)
            p = params_from_record(rec)
            params[symbols.code(key.decode())] = (p, bytes(value))
        return ExecState.build(params)

    def state_to_bytes(self, state: ExecState, symbols: SymbolTable) -> bytes:
        entries = self.changelog_entries(state, np.asarray(sorted(state.params), np.int64), symbols)
        parts = [struct.pack("<I", len(entries))]
        for k, v in entries:
            parts += [struct.pack("<II", len(k), len(v)), k, v]
        return b"".join(parts)

    def state_from_bytes(self, blob: bytes, symbols: SymbolTable) -> ExecState:
        (n,), pos, entries = struct.unpack_from("<I", blob, 0), 4, []
        for _ in range(n):
            lk, lv = struct.unpack_from("<II", blob, pos)
            pos += 8
            entries.append((blob[pos:pos + lk], blob[pos + lk:pos + lk + lv]))
            pos += lk + lv
        return self.restore(entries, symbols)


def make(output_topic: str | None = None, backend: str = "auto", store: SchemaStore | None = None,
         cfg: ExecutionProcessorConfig | None = None) -> ExecutionProcessor:
    """Factory for ``mystocks-gpu run execution`` (see :meth:`ExecutionProcessorConfig.with_output`)."""
    base = cfg or ExecutionProcessorConfig(backend=backend)
    return ExecutionProcessor(base.with_output(output_topic), store=store)
