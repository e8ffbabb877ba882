"""The built-in stateful processor: per-key running count, sum and last value of tick prices.

``md.ticks`` -> ``agg.running``: one :class:`RunningAggregate` record per input tick, keyed by
symbol. Small on purpose: it proves the runtime's exactly-once and state-restore guarantees (every
output depends on every earlier tick of its key) before the workloads land, and it is the
runtime benchmark's workload.

State of a partition: three arrays indexed by symbol code (count int64, sum float64, last float64);
changelog: the whole state, symbols by name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numba
import numpy as np

from mystocks_gpu.schemas.batch_codec import BatchEncoder, DecoderCache, TickDecoder, status_message
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.processor import (
    Columns,
    Decoded,
    Outputs,
    Processor,
    decode_errors_to_rejected,
)


@dataclass
class AggState:
    """count/sum/last per symbol code (arrays grow with the symbol table)."""

    count: np.ndarray
    total: np.ndarray
    last: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> AggState:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.float64), np.full(n, np.nan))

    def grown(self, n: int) -> AggState:
        """A copy with room for ``n`` codes (the old state is left untouched)."""
        m = max(n, self.count.size)
        out = AggState.empty(m)
        k = self.count.size
        out.count[:k], out.total[:k], out.last[:k] = self.count, self.total, self.last
        return out


@numba.njit(cache=True)
def _accumulate(sym, price, count, total, last, out_count, out_sum, out_last):  # pragma: no cover - numba
    for i in range(sym.size):
        k = sym[i]
        count[k] += 1
        total[k] += price[i]
        last[k] = price[i]
        out_count[i] = count[k]
        out_sum[i] = total[k]
        out_last[i] = last[k]


class RunningAggregateProcessor(Processor[AggState]):
    """Per-symbol running count / sum / last of tick prices (see module docstring)."""

    name = "aggregate"
    input_topic = "md.ticks"
    output_topics = ("agg.running",)

    def __init__(self, output_topic: str = "agg.running", store: SchemaStore | None = None) -> None:
        """``store``: schema ids of inputs and outputs (the process's store; default the manifest)."""
        self.output_topic = output_topic
        self.output_topics = (output_topic,)
        self.store = store
        self._decoder = DecoderCache(lambda symbols: TickDecoder(self.store, symbols=symbols))
        self._encoder = BatchEncoder("mystocks.streams.RunningAggregate", store)

    def warm_up(self) -> None:
        """Run the batch path once on throwaway data (see :meth:`Processor.warm_up`): 16 synthetic
        ticks of two symbols are encoded, decoded, processed and written to a changelog entry and read
        back, on a throwaway symbol table: the tick decoder, the accumulate kernel and the encoder are
        compiled or loaded (in a fresh process the first batch also paid numba's own start-up, about
        0.4 s on the 2-core VM). The table's decoder and cached keys are dropped afterwards."""
        from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names

        cols = generate(SyntheticMarket(n_symbols=2, seed=1), 16)
        values: list[bytes | None] = [*BatchEncoder("mystocks.md.Tick", self.store).encode(cols, symbol_names(2, 1))]
        self.warm_batch(values, SymbolTable())

    def forget_symbols(self, symbols: SymbolTable) -> None:
        super().forget_symbols(symbols)
        self._decoder.drop(symbols)

    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable,
               partition: int, ingest_ns: int) -> Decoded:
        d = self._decoder(symbols).decode(values, validate=True)
        rejected = decode_errors_to_rejected(index, d.status, status_message)
        cols = {k: d.columns[k] for k in ("sym", "ts", "seq", "price")}
        return Decoded(Columns(cols, symbols, index[d.index], partition, ingest_ns), rejected)

    def initial_state(self) -> AggState:
        return AggState.empty()

    def process(self, batch: Columns, state: AggState) -> tuple[Outputs, AggState]:
        c = batch.columns
        n = len(batch)
        new = state.grown(len(batch.symbols))
        oc, os_, ol = np.empty(n, np.int64), np.empty(n, np.float64), np.empty(n, np.float64)
        _accumulate(c["sym"], c["price"], new.count, new.total, new.last, oc, os_, ol)
        values = self._encoder.encode({"symbol": c["sym"], "ts_event": c["ts"], "seq": c["seq"],
                                       "count": oc, "sum": os_, "last": ol}, batch.symbols)
        out = Outputs()
        out.add(self.output_topic, self.key_bytes(c["sym"], batch.symbols), values, (c["ts"] // 1_000_000).tolist(),
                sources=batch.index)
        return out, new


    def state_to_bytes(self, state: AggState, symbols: SymbolTable) -> bytes:
        live = np.flatnonzero(state.count > 0)
        names = SymbolTable([symbols.symbol(int(i)) for i in live]).to_bytes()
        return (struct.pack("<II", len(names), live.size) + names + state.count[live].tobytes()
                + state.total[live].tobytes() + state.last[live].tobytes())

    def state_from_bytes(self, blob: bytes, symbols: SymbolTable) -> AggState:
        ln, n = struct.unpack_from("<II", blob, 0)
        names = SymbolTable.from_bytes(blob[8:8 + ln]).symbols
        pos = 8 + ln
        count = np.frombuffer(blob, np.int64, n, pos)
        total = np.frombuffer(blob, np.float64, n, pos + 8 * n)
        last = np.frombuffer(blob, np.float64, n, pos + 16 * n)
        codes = symbols.codes(list(names)) if n else np.empty(0, np.int32)
        st = AggState.empty(len(symbols))
        st.count[codes], st.total[codes], st.last[codes] = count, total, last
        return st
