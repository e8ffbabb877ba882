"""The Tick decoder: the batch decoder of ``mystocks.md.Tick`` with the runtime's column names
and optional validation."""

from __future__ import annotations

from collections.abc import Sequence

from mystocks_gpu.schemas.batch_codec.decoder import BatchDecoder, DecodedBatch
from mystocks_gpu.schemas.batch_codec.validation import validate_ticks
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable

#: the column names of :func:`mystocks_gpu.data.synthetic_ticks.generate` for Tick fields
TICK_RENAME = {"symbol": "sym", "ts_event": "ts"}


class TickDecoder(BatchDecoder):
    """``BatchDecoder("mystocks.md.Tick")`` with columns ``sym`` (int32 code), ``sym_off``, ``sym_len``,
    ``ts``, ``seq`` (int64), ``kind`` (int8: 0 TRADE, 1 QUOTE), ``price``, ``size``, ``bid``, ``ask``,
    ``bid_size``, ``ask_size`` (float64), ``side`` (int32)."""

    def __init__(self, store: SchemaStore | None = None, symbols: SymbolTable | None = None) -> None:
        super().__init__("mystocks.md.Tick", store, symbols=symbols, intern=("symbol",), rename=TICK_RENAME)

    def decode(self, values: Sequence[bytes | bytearray | memoryview | None], validate: bool = False,
               now_ns: int | None = None) -> DecodedBatch:
        """Decode; with ``validate``, also reject rows failing :func:`validate_ticks`."""
        batch = super().decode(values)
        if validate:
            batch = batch.apply_validation(validate_ticks(batch.columns, now_ns))
        return batch
