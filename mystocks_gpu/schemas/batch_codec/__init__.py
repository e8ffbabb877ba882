"""Vectorised batch codec (package): Confluent-framed Avro <-> NumPy columns, compiled from the schema.

A small compiler turns a parsed Avro record schema of primitive fields into Python source for one
loop over a whole batch, ``numba.njit``-ed and cached per schema fingerprint (SHA-256 of the parsing
canonical form). Bytes are identical to ``fastavro`` (``tests/unit/test_batch_codec.py``);
:class:`~mystocks_gpu.schemas.codec.AvroCodec` stays the per-record codec for other schemas.

API
    ``BatchDecoder(schema, store=None, *, schema_id=None, symbols=None, intern=("symbol",),
    rename=None).decode(values: list[bytes | None]) -> DecodedBatch``; ``schema`` is a name in
    ``store`` (``"Tick"``) or a parsed schema (then ``schema_id`` is required).
    ``TickDecoder(store=None, symbols=None).decode(values, validate=False, now_ns=None)``: Tick with
    the ``synthetic_ticks.generate`` column names, optionally filtered by :func:`validate_ticks`.
    ``DecodedBatch``: ``columns`` (good rows only), ``status`` int8 ``(n_in,)``, ``index`` int64
    ``(n_ok,)`` (input row of each good row), ``buffer`` uint8 (string offsets point into it),
    ``tables``/``symbols`` (SymbolTables); ``rejects()``, ``strings(f)``, ``apply_validation(codes)``.
    ``DecoderCache(make)(symbols)``: one decoder per symbol table, built once (a processor's hot path).
    ``BatchEncoder(schema, store=None, *, schema_id=None).encode(columns, symbols=None,
    map_keys=None) -> list[bytes]``; ``encode_buffer(...) -> (uint8 buffer, int64 offsets (n+1,))``
    and :func:`split_values`. ``validate_ticks(columns, now_ns=None, symbols=None) -> int8 (n,)``;
    ``status_message(code) -> str``.

Columns (the encoder also accepts ``sym``/``ts`` for ``symbol``/``ts_event``)
    long -> int64; int -> int32; double -> float64; float -> float32; boolean -> bool; enum -> int8
    index (int32 over 127 symbols); string ``f`` -> ``f_off`` int64 (into ``buffer``), ``f_len``
    int32 and, when interned, ``f`` int32 codes of a :class:`~mystocks_gpu.schemas.symbols.SymbolTable`.
    The encoder takes string fields as int codes into ``symbols`` (list of str or SymbolTable, or a
    dict of those by field), ints in any integer dtype (range-checked), and ``map<string,double>`` as
    float64 ``(n, len(map_keys))`` (or one column per key), written as fastavro does: one block.
    Encoder only: an array of records of primitives/enums, field ``f``, takes ``f`` = element counts
    ``(n,)`` and one column ``"f.x"`` per item field ``x`` with every row's elements concatenated
    ``(sum counts,)`` (strings as codes into ``symbols["f.x"]``); written as one block, as fastavro.

Status (per input record, :class:`Status`): 0 OK, 1 BAD_MAGIC, 2 UNKNOWN_SCHEMA_ID, 3 WRONG_SCHEMA
(id of another current schema), 4 TRUNCATED, 5 VARINT_OVERFLOW (> 64 bits, or int beyond 32),
6 BAD_ENUM, 7 TRAILING_BYTES, 8 NEGATIVE_LENGTH, 9 INVALID_UTF8, 10 INVALID_BOOLEAN, 11 NULL_VALUE;
:func:`validate_ticks` gives 32-43 (:data:`STATUS_MESSAGES`).

Modules: :mod:`.status` (codes), :mod:`.plan` (schema -> field plans), :mod:`.primitives` (numba
varint helpers), :mod:`.code_cache` (compile cache), :mod:`.decoder`, :mod:`.encoder`,
:mod:`.validation` (tick checks), :mod:`.ticks` (the Tick decoder).
"""

import sys

if sys.byteorder != "little":  # doubles are copied byte for byte (Avro is little-endian)
    raise ImportError("batch_codec needs a little-endian host")

from mystocks_gpu.schemas.batch_codec.decoder import (  # noqa: E402
    BatchDecoder,
    DecodedBatch,
    DecoderCache,
    decoder_source,
    gather_values,
)
from mystocks_gpu.schemas.batch_codec.encoder import BatchEncoder, encoder_source, split_values  # noqa: E402
from mystocks_gpu.schemas.batch_codec.plan import FieldPlan, plan_schema, schema_fingerprint  # noqa: E402
from mystocks_gpu.schemas.batch_codec.status import STATUS_MESSAGES, Status, status_message  # noqa: E402
from mystocks_gpu.schemas.batch_codec.ticks import TICK_RENAME, TickDecoder  # noqa: E402
from mystocks_gpu.schemas.batch_codec.validation import validate_ticks  # noqa: E402

__all__ = ["STATUS_MESSAGES", "TICK_RENAME", "BatchDecoder", "BatchEncoder", "DecodedBatch", "DecoderCache", "FieldPlan", "Status",
           "TickDecoder", "decoder_source", "encoder_source", "gather_values", "plan_schema", "schema_fingerprint",
           "split_values", "status_message", "validate_ticks"]
