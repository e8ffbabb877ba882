"""Vectorised batch codec: Confluent-framed Avro <-> NumPy columns, compiled from the schema.

A small compiler reads a parsed Avro record schema of primitive fields and generates Python source
for one loop over a whole batch, compiled with ``numba.njit`` and cached per schema fingerprint
(SHA-256 of the parsing canonical form). Output is byte-identical to ``fastavro`` (checked by
``tests/unit/test_batch_codec.py``); :class:`~mystocks_gpu.schemas.codec.AvroCodec` stays the
per-record codec for every other schema.

Public API
----------
``BatchDecoder(schema, store=None, *, schema_id=None, symbols=None, intern=("symbol",), rename=None)``
    ``.decode(values: list[bytes | None]) -> DecodedBatch``. ``schema``: a name known to ``store``
    (``"Tick"``, ``"mystocks.md.Tick"``) or a parsed schema dict (then ``schema_id`` is required).
``TickDecoder(store=None, symbols=None)``
    ``BatchDecoder`` for ``mystocks.md.Tick`` with the :func:`~mystocks_gpu.infra.synthetic_ticks.generate`
    column names; ``.decode(values, validate=False, now_ns=None)`` optionally applies
    :func:`validate_ticks`.
``DecodedBatch``: ``columns`` (good rows only), ``status`` int8 ``(n_in,)``, ``index`` int64
    ``(n_ok,)`` input row of each good row, ``buffer`` uint8 (what string offsets point into),
    ``tables`` ``{field: SymbolTable}``, ``symbols`` (the table of the first interned field);
    ``.rejects() -> list[(row, message)]``, ``.strings(field)``, ``.apply_validation(codes)``.
``BatchEncoder(schema, store=None, *, schema_id=None)``
    ``.encode(columns, symbols=None, map_keys=None) -> list[bytes]`` and ``.encode_buffer(...) ->
    (buffer uint8, offsets int64 (n+1,))``; :func:`split_values` turns the latter into bytes.
``validate_ticks(columns, now_ns=None, symbols=None) -> int8 (n,)`` and ``status_message(code)``.

Columns (decoder output; the encoder reads the same names, or ``sym``/``ts`` for ``symbol``/``ts_event``)
    long -> int64; int -> int32; double -> float64; float -> float32; boolean -> bool;
    enum -> int8 index (int32 when over 127 symbols); string ``f`` -> ``f_off`` int64 (into
    ``buffer``) and ``f_len`` int32, plus ``f`` int32 dense codes through a
    :class:`~mystocks_gpu.schemas.symbols.SymbolTable` when ``f`` is interned. The encoder takes
    string fields as int32 codes into ``symbols`` (a list of str or a SymbolTable, or a dict of
    those per field), int fields in any integer dtype (range-checked), and a ``map<string,double>``
    field as a float64 ``(n, len(map_keys))`` array (or one column per key).

Status codes (one per input record; :class:`Status`): 0 OK; 1 BAD_MAGIC; 2 UNKNOWN_SCHEMA_ID (id in
no manifest/registry entry); 3 WRONG_SCHEMA (a known id of another schema or version); 4 TRUNCATED;
5 VARINT_OVERFLOW (> 64 bits, or an int beyond 32 bits); 6 BAD_ENUM; 7 TRAILING_BYTES; 8
NEGATIVE_LENGTH; 9 INVALID_UTF8; 10 INVALID_BOOLEAN (byte not 0/1); 11 NULL_VALUE (tombstone);
value checks of :func:`validate_ticks` are 32..43 (see :data:`STATUS_MESSAGES`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable

import numba
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from mystocks_gpu.schemas.codec import MAGIC, PREFIX_LEN
from mystocks_gpu.schemas.exceptions import SchemaError
from mystocks_gpu.schemas.registry import SchemaStore, default_store
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.schemas.validate import MAX_FUTURE_NS, MIN_TS_NS

if sys.byteorder != "little":  # doubles are copied byte for byte (Avro is little-endian)
    raise ImportError("batch_codec needs a little-endian host")


class Status(IntEnum):
    """Per-record outcome of decoding (0-11) and of :func:`validate_ticks` (32-43)."""

    OK = 0
    BAD_MAGIC = 1
    UNKNOWN_SCHEMA_ID = 2
    WRONG_SCHEMA = 3
    TRUNCATED = 4
    VARINT_OVERFLOW = 5
    BAD_ENUM = 6
    TRAILING_BYTES = 7
    NEGATIVE_LENGTH = 8
    INVALID_UTF8 = 9
    INVALID_BOOLEAN = 10
    NULL_VALUE = 11
    TS_TOO_OLD = 32
    TS_IN_FUTURE = 33
    EMPTY_SYMBOL = 34
    BAD_PRICE = 35
    BAD_SIZE = 36
    BAD_BID = 37
    BAD_ASK = 38
    BAD_BID_SIZE = 39
    BAD_ASK_SIZE = 40
    CROSSED_QUOTE = 41
    BAD_SIDE = 42
    TRADE_ZERO_SIZE = 43


STATUS_MESSAGES: dict[int, str] = {
    0: "ok",
    1: "bad magic byte (expected 0): not Confluent-framed Avro",
    2: "unknown schema id",
    3: "schema id of another known schema (or an older version), not the expected one",
    4: "truncated record",
    5: "varint overflow (more than 64 bits, or an int beyond 32 bits)",
    6: "enum index out of range",
    7: "trailing bytes after the record",
    8: "negative string length",
    9: "string is not valid UTF-8",
    10: "boolean byte is not 0 or 1",
    11: "record has no value (tombstone)",
    32: "ts_event is before 2000-01-01",
    33: "ts_event is too far in the future",
    34: "symbol is empty",
    35: "price must be finite and > 0",
    36: "size must be finite and >= 0",
    37: "bid must be finite and > 0",
    38: "ask must be finite and > 0",
    39: "bid_size must be finite and >= 0",
    40: "ask_size must be finite and >= 0",
    41: "crossed quote: bid > ask",
    42: "side must be -1, 0 or 1",
    43: "a TRADE must have size > 0",
}


def status_message(code: int) -> str:
    """The DLQ reason string for a status code."""
    return STATUS_MESSAGES.get(int(code), f"unknown status code {int(code)}")


# ---- numba primitives (shared by every generated loop) ------------------------------------------
_TRUNC = int(Status.TRUNCATED)
_OVERFLOW = int(Status.VARINT_OVERFLOW)


@numba.njit(cache=True, inline="always")
def _read_varint(buf, p, end):  # pragma: no cover - numba
    """Unsigned LEB128 at ``buf[p:end]`` -> ``(uint64 value, next p, status)``."""
    u = np.uint64(0)
    shift = 0
    while True:
        if p >= end:
            return u, p, _TRUNC
        b = buf[p]
        p += 1
        if shift == 63 and b > 1:
            return u, p, _OVERFLOW
        u |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            return u, p, 0
        shift += 7


@numba.njit(cache=True, inline="always")
def _unzigzag(u):  # pragma: no cover - numba
    return np.int64((u >> np.uint64(1)) ^ (np.uint64(0) - (u & np.uint64(1))))


@numba.njit(cache=True, inline="always")
def _read_long(buf, p, end):  # pragma: no cover - numba
    u, p, err = _read_varint(buf, p, end)
    return _unzigzag(u), p, err


@numba.njit(cache=True, inline="always")
def _utf8_ok(buf, p, n):  # pragma: no cover - numba
    """Strict UTF-8 check of ``buf[p:p+n]`` (as Python's ``bytes.decode``)."""
    end = p + n
    while p < end:
        b = buf[p]
        if b < 0x80:
            p += 1
            continue
        if 0xC2 <= b <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif b == 0xE0:
            k, lo, hi = 2, 0xA0, 0xBF
        elif 0xE1 <= b <= 0xEF and b != 0xED:
            k, lo, hi = 2, 0x80, 0xBF
        elif b == 0xED:
            k, lo, hi = 2, 0x80, 0x9F
        elif b == 0xF0:
            k, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= b <= 0xF3:
            k, lo, hi = 3, 0x80, 0xBF
        elif b == 0xF4:
            k, lo, hi = 3, 0x80, 0x8F
        else:
            return False
        if p + k >= end:  # continuation bytes p+1..p+k must lie inside the string
            return False
        c = buf[p + 1]
        if c < lo or c > hi:
            return False
        for t in range(2, k + 1):
            c = buf[p + t]
            if c < 0x80 or c > 0xBF:
                return False
        p += k + 1
    return True


@numba.njit(cache=True, inline="always")
def _varint_len(u):  # pragma: no cover - numba
    n = 1
    while u >= np.uint64(0x80):
        u >>= np.uint64(7)
        n += 1
    return n


@numba.njit(cache=True, inline="always")
def _zigzag(v):  # pragma: no cover - numba
    v = np.int64(v)
    return np.uint64((v << np.int64(1)) ^ (v >> np.int64(63)))


@numba.njit(cache=True, inline="always")
def _long_len(v):  # pragma: no cover - numba
    return _varint_len(_zigzag(v))


@numba.njit(cache=True, inline="always")
def _write_varint(out, p, u):  # pragma: no cover - numba
    while u >= np.uint64(0x80):
        out[p] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        p += 1
    out[p] = np.uint8(u)
    return p + 1


@numba.njit(cache=True, inline="always")
def _write_long(out, p, v):  # pragma: no cover - numba
    return _write_varint(out, p, _zigzag(v))


_NB_GLOBALS: dict[str, Any] = {
    "np": np, "_read_varint": _read_varint, "_read_long": _read_long, "_utf8_ok": _utf8_ok,
    "_long_len": _long_len, "_write_long": _write_long, "_varint_len": _varint_len,
    **{f"S_{s.name}": int(s) for s in Status},
}

# ---- schema -> field plan --------------------------------------------------------------------
_PRIMS = ("string", "long", "int", "double", "float", "boolean")


@dataclass(frozen=True)
class FieldPlan:
    """One record field as the compiler sees it: ``kind`` in string/long/int/double/float/boolean/
    enum/map_double; ``symbols`` for enums."""

    name: str
    kind: str
    symbols: tuple[str, ...] = ()


def plan_schema(parsed: Mapping[str, Any]) -> list[FieldPlan]:
    """Field plans of a parsed record schema; :class:`SchemaError` for unsupported field types."""
    if not isinstance(parsed, Mapping) or parsed.get("type") != "record":
        raise SchemaError("batch codec needs a record schema")
    named = parsed.get("__named_schemas", {})
    plans = []
    for f in parsed["fields"]:
        t = f["type"]
        if isinstance(t, str) and t not in _PRIMS and t in named:
            t = named[t]
        if isinstance(t, Mapping) and "logicalType" not in t:
            tt = t.get("type")
            if tt in _PRIMS:
                t = tt
            elif tt == "enum":
                plans.append(FieldPlan(f["name"], "enum", tuple(t["symbols"])))
                continue
            elif tt == "map" and t.get("values") in ("double", {"type": "double"}):
                plans.append(FieldPlan(f["name"], "map_double"))
                continue
        if isinstance(t, str) and t in _PRIMS:
            plans.append(FieldPlan(f["name"], t))
            continue
        raise SchemaError(f"{parsed.get('name')}.{f['name']}: field type {t!r} is not supported by "
                          "the batch codec (primitives, enums and map<double> only)")
    return plans


def schema_fingerprint(parsed: Mapping[str, Any]) -> str:
    """SHA-256 of the parsing canonical form: the compile-cache key."""
    return fingerprint(to_parsing_canonical_form(parsed), "SHA-256")


def _enum_dtype(p: FieldPlan) -> type:
    return np.int8 if len(p.symbols) <= 127 else np.int32


_CACHE: dict[tuple[str, str], Callable[..., Any]] = {}
_CACHE_LOCK = threading.Lock()


def _compiled(kind: str, fp: str, build: Callable[[], str], fname: str) -> Callable[..., Any]:
    key = (kind, fp)
    with _CACHE_LOCK:
        fn = _CACHE.get(key)
        if fn is None:
            src = build()
            ns: dict[str, Any] = dict(_NB_GLOBALS)
            exec(compile(src, f"<batch_codec {kind} {fp[:12]}>", "exec"), ns)  # noqa: S102
            fn = numba.njit(nogil=True)(ns[fname])
            fn.__source__ = src  # type: ignore[attr-defined]
            _CACHE[key] = fn
    return fn


# ---- decoder compiler ----------------------------------------------------------------------------
def _fail(code: str, ind: str) -> str:
    return f"{ind}status[i] = {code}\n{ind}continue\n"


def decoder_source(plans: Sequence[FieldPlan]) -> str:
    """Python source of ``_decode(buf, offs, expect_id, known_ids, status, *cols) -> n_ok``."""
    args, body = [], []
    I = " " * 8  # noqa: E741
    for j, p in enumerate(plans):
        if p.kind == "string":
            args += [f"o{j}", f"l{j}"]
            body.append(
                f"{I}v, p, err = _read_long(buf, p, end)\n{I}if err != 0:\n{_fail('err', I + '    ')}"
                f"{I}if v < 0:\n{_fail('S_NEGATIVE_LENGTH', I + '    ')}"
                f"{I}if v > end - p:\n{_fail('S_TRUNCATED', I + '    ')}"
                f"{I}if not _utf8_ok(buf, p, v):\n{_fail('S_INVALID_UTF8', I + '    ')}"
                f"{I}o{j}[k] = p\n{I}l{j}[k] = v\n{I}p += v\n")
        elif p.kind in ("long", "int", "enum"):
            args.append(f"c{j}")
            chk = ""
            if p.kind == "int":
                chk = f"{I}if v < -2147483648 or v > 2147483647:\n{_fail('S_VARINT_OVERFLOW', I + '    ')}"
            elif p.kind == "enum":
                chk = f"{I}if v < 0 or v >= {len(p.symbols)}:\n{_fail('S_BAD_ENUM', I + '    ')}"
            body.append(f"{I}v, p, err = _read_long(buf, p, end)\n{I}if err != 0:\n{_fail('err', I + '    ')}"
                        f"{chk}{I}c{j}[k] = v\n")
        elif p.kind in ("double", "float"):
            w = 8 if p.kind == "double" else 4
            args.append(f"b{j}")
            body.append(f"{I}if end - p < {w}:\n{_fail('S_TRUNCATED', I + '    ')}"
                        f"{I}for t in range({w}):\n{I}    b{j}[k * {w} + t] = buf[p + t]\n{I}p += {w}\n")
        elif p.kind == "boolean":
            args.append(f"c{j}")
            body.append(f"{I}if end - p < 1:\n{_fail('S_TRUNCATED', I + '    ')}"
                        f"{I}if buf[p] > 1:\n{_fail('S_INVALID_BOOLEAN', I + '    ')}"
                        f"{I}c{j}[k] = buf[p] == 1\n{I}p += 1\n")
        else:
            raise SchemaError(f"field {p.name}: {p.kind} is not supported by the batch decoder")
    head = (
        f"def _decode(buf, offs, expect_id, known_ids, status{''.join(', ' + a for a in args)}):\n"
        "    k = 0\n"
        "    for i in range(offs.size - 1):\n"
        "        p = offs[i]\n"
        "        end = offs[i + 1]\n"
        f"        if end > p and buf[p] != {MAGIC}:\n{_fail('S_BAD_MAGIC', I + '    ')}"
        f"        if end - p < {PREFIX_LEN}:\n{_fail('S_TRUNCATED', I + '    ')}"
        "        sid = (np.int64(buf[p + 1]) << 24) | (np.int64(buf[p + 2]) << 16)"
        " | (np.int64(buf[p + 3]) << 8) | np.int64(buf[p + 4])\n"
        "        if sid != expect_id:\n"
        "            code = S_UNKNOWN_SCHEMA_ID\n"
        "            for t in range(known_ids.size):\n"
        "                if known_ids[t] == sid:\n"
        "                    code = S_WRONG_SCHEMA\n"
        f"{_fail('code', I + '    ')}"
        f"        p += {PREFIX_LEN}\n"
    )
    tail = f"        if p != end:\n{_fail('S_TRAILING_BYTES', I + '    ')}        status[i] = 0\n        k += 1\n    return k\n"
    return head + "".join(body) + tail


def join_values(values: Sequence[bytes | bytearray | memoryview | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(buffer uint8 (total,), offsets int64 (n+1,), null rows int64 or None)`` of framed values.

    ``None`` values (tombstones) become empty slices and are listed in the third item.
    """
    n = len(values)
    try:
        data = b"".join(values)  # type: ignore[arg-type]
        nulls = None
    except TypeError:
        nulls = np.fromiter((v is None for v in values), np.bool_, n).nonzero()[0]
        values = [b"" if v is None else v for v in values]
        data = b"".join(values)  # type: ignore[arg-type]
    offs = np.empty(n + 1, np.int64)
    offs[0] = 0
    if n:
        np.cumsum(np.fromiter(map(len, values), np.int64, n), out=offs[1:])
    return np.frombuffer(data, np.uint8), offs, nulls


@dataclass
class DecodedBatch:
    """A decoded batch. ``columns`` hold the good rows only (length ``n_ok``); ``status`` int8
    ``(n_in,)`` is 0 for those and a :class:`Status` code for the others; ``index`` int64 ``(n_ok,)``
    is the input row of each good row; string ``*_off`` columns index ``buffer`` (uint8)."""

    columns: dict[str, np.ndarray]
    status: np.ndarray
    index: np.ndarray
    buffer: np.ndarray
    tables: dict[str, SymbolTable] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def symbols(self) -> SymbolTable | None:
        """The symbol table of the first interned string field (``symbol`` for ticks)."""
        return next(iter(self.tables.values()), None)

    @property
    def n_bad(self) -> int:
        """Number of rejected input records."""
        return int(self.status.size - self.index.size)

    def rejects(self) -> list[tuple[int, str]]:
        """``(input row, reason)`` for every rejected record, for the dead-letter queue."""
        bad = np.flatnonzero(self.status)
        return [(int(r), status_message(c)) for r, c in zip(bad.tolist(), self.status[bad].tolist())]

    def strings(self, name: str) -> list[str]:
        """Python strings of string column ``name`` (slow path: one str per row)."""
        data = self.buffer.tobytes()
        off, ln = self.columns[name + "_off"].tolist(), self.columns[name + "_len"].tolist()
        return [data[o:o + n].decode("utf-8") for o, n in zip(off, ln)]

    def apply_validation(self, codes: np.ndarray) -> DecodedBatch:
        """Reject the good rows whose ``codes`` (int8 ``(n_ok,)``, e.g. :func:`validate_ticks`) != 0."""
        codes = np.asarray(codes)
        if codes.shape != self.index.shape:
            raise ValueError(f"validation codes of shape {codes.shape}, batch has {self.index.shape}")
        keep = codes == 0
        status = self.status.copy()
        status[self.index[~keep]] = codes[~keep]
        cols = {k: v[keep] for k, v in self.columns.items()}
        return DecodedBatch(cols, status, self.index[keep], self.buffer, self.tables)


def _resolve(schema: str | Mapping[str, Any], store: SchemaStore | None,
             schema_id: int | None) -> tuple[Mapping[str, Any], int, np.ndarray]:
    if isinstance(schema, str):
        store = store or default_store()
        info = store.by_name(schema)
        sid = info.id if schema_id is None else schema_id
        parsed: Mapping[str, Any] = info.parsed
    else:
        if schema_id is None:
            raise SchemaError("a parsed schema needs an explicit schema_id")
        parsed, sid = schema, schema_id
    known: list[int] = []
    if store is not None:
        known = sorted(i for i in getattr(store, "_by_id", {}) if i != sid)
    return parsed, sid, np.asarray(known, np.int64)


class BatchDecoder:
    """Decode batches of framed values of one schema into NumPy columns (see module docstring).

    ``symbols``: the SymbolTable of the interned string fields (one table, or a dict per field);
    ``intern``: the string fields to map to int32 codes; ``rename``: output column names by field.
    """

    def __init__(self, schema: str | Mapping[str, Any], store: SchemaStore | None = None, *,
                 schema_id: int | None = None, symbols: SymbolTable | Mapping[str, SymbolTable] | None = None,
                 intern: Sequence[str] = ("symbol",), rename: Mapping[str, str] | None = None) -> None:
        self.parsed, self.schema_id, self.known_ids = _resolve(schema, store, schema_id)
        self.plans = plan_schema(self.parsed)
        self.fingerprint = schema_fingerprint(self.parsed)
        self.rename = dict(rename or {})
        strings = [p.name for p in self.plans if p.kind == "string"]
        self.tables: dict[str, SymbolTable] = {}
        for name in (n for n in intern if n in strings):
            if isinstance(symbols, SymbolTable):
                self.tables[name] = symbols if not self.tables else SymbolTable()
            elif symbols is not None and name in symbols:
                self.tables[name] = symbols[name]
            else:
                self.tables[name] = SymbolTable()
        self._fn = _compiled("dec", self.fingerprint, lambda: decoder_source(self.plans), "_decode")

    def _col(self, name: str) -> str:
        return self.rename.get(name, name)

    def decode(self, values: Sequence[bytes | bytearray | memoryview | None]) -> DecodedBatch:
        """Decode ``values`` (framed records); bad ones are flagged in ``status``, never raised."""
        buf, offs, nulls = join_values(values)
        n = offs.size - 1
        cols: dict[str, np.ndarray] = {}
        args: list[np.ndarray] = []
        for p in self.plans:
            c = self._col(p.name)
            if p.kind == "string":
                cols[c + "_off"], cols[c + "_len"] = np.empty(n, np.int64), np.empty(n, np.int32)
                args += [cols[c + "_off"], cols[c + "_len"]]
            elif p.kind in ("double", "float"):
                cols[c] = np.empty(n, np.float64 if p.kind == "double" else np.float32)
                args.append(cols[c].view(np.uint8))
            else:
                dt = {"long": np.int64, "int": np.int32, "boolean": np.bool_}.get(p.kind) or _enum_dtype(p)
                cols[c] = np.empty(n, dt)
                args.append(cols[c])
        status = np.empty(n, np.int8)
        k = int(self._fn(buf, offs, self.schema_id, self.known_ids, status, *args))
        if nulls is not None:
            status[nulls] = Status.NULL_VALUE
        cols = {name: a[:k] for name, a in cols.items()}
        for fname, table in self.tables.items():
            c = self._col(fname)
            cols[c] = table.intern_slices(buf, cols[c + "_off"], cols[c + "_len"])
        index = np.flatnonzero(status == 0) if k < n else np.arange(n, dtype=np.int64)
        return DecodedBatch(cols, status, index.astype(np.int64, copy=False), buf, dict(self.tables))


#: the column names of :func:`mystocks_gpu.infra.synthetic_ticks.generate` for Tick fields
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


# ---- encoder compiler ----------------------------------------------------------------------------
def encoder_source(plans: Sequence[FieldPlan]) -> str:
    """Python source of ``_encode(n, prefix, *args) -> (buffer uint8, offsets int64 (n+1,))``."""
    args: list[str] = []
    size, write = [], []
    fixed = PREFIX_LEN
    I = " " * 8  # noqa: E741
    for j, p in enumerate(plans):
        if p.kind == "string":
            args += [f"c{j}", f"ar{j}", f"so{j}", f"sl{j}"]
            size.append(f"{I}q = sl{j}[c{j}[i]]\n{I}s += _long_len(q) + q\n")
            write.append(f"{I}q = sl{j}[c{j}[i]]\n{I}p = _write_long(out, p, q)\n{I}o = so{j}[c{j}[i]]\n"
                         f"{I}for t in range(q):\n{I}    out[p + t] = ar{j}[o + t]\n{I}p += q\n")
        elif p.kind in ("long", "int", "enum"):
            args.append(f"c{j}")
            size.append(f"{I}s += _long_len(c{j}[i])\n")
            write.append(f"{I}p = _write_long(out, p, c{j}[i])\n")
        elif p.kind in ("double", "float"):
            w = 8 if p.kind == "double" else 4
            args.append(f"b{j}")
            fixed += w
            write.append(f"{I}for t in range({w}):\n{I}    out[p + t] = b{j}[i * {w} + t]\n{I}p += {w}\n")
        elif p.kind == "boolean":
            args.append(f"c{j}")
            fixed += 1
            write.append(f"{I}out[p] = c{j}[i]\n{I}p += 1\n")
        elif p.kind == "map_double":
            # mk: [varint(K) | (varint len, key bytes) * K]; mo: (K+1,) offsets of each key's bytes
            # after the header (mo[0] = header length); mv: (n, K) float64 as uint8 (n, 8K)
            args += [f"mk{j}", f"mo{j}", f"mv{j}"]
            size.append(f"{I}s += mk{j}.size + 1 + (8 * (mo{j}.size - 1))\n")
            write.append(
                f"{I}K = mo{j}.size - 1\n"
                f"{I}if K > 0:\n"
                f"{I}    for t in range(mo{j}[0]):\n{I}        out[p + t] = mk{j}[t]\n{I}    p += mo{j}[0]\n"
                f"{I}    for e in range(K):\n"
                f"{I}        for t in range(mo{j}[e], mo{j}[e + 1]):\n{I}            out[p] = mk{j}[t]\n{I}            p += 1\n"
                f"{I}        for t in range(8):\n{I}            out[p + t] = mv{j}[i, 8 * e + t]\n{I}        p += 8\n"
                f"{I}out[p] = 0\n{I}p += 1\n")
        else:  # pragma: no cover - plan_schema rejects others
            raise SchemaError(p.kind)
    return (
        f"def _encode(n, prefix{''.join(', ' + a for a in args)}):\n"
        "    offs = np.empty(n + 1, np.int64)\n    offs[0] = 0\n    tot = 0\n"
        "    for i in range(n):\n"
        f"        s = {fixed}\n" + "".join(size) + "        tot += s\n        offs[i + 1] = tot\n"
        "    out = np.empty(tot, np.uint8)\n"
        "    for i in range(n):\n        p = offs[i]\n"
        f"        for t in range({PREFIX_LEN}):\n            out[p + t] = prefix[t]\n        p += {PREFIX_LEN}\n"
        + "".join(write) + "    return out, offs\n"
    )


def split_values(buf: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """Split ``buf`` (uint8) at ``offsets`` (int64 ``(n+1,)``) into ``n`` bytes objects."""
    data = buf.tobytes()
    o = offsets.tolist()
    return [data[a:b] for a, b in zip(o, o[1:])]


def _varint_bytes(v: int) -> bytes:
    u = (v << 1) ^ (v >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _symbol_arrays(symbols: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(symbols, SymbolTable):
        arena, off, ln = symbols.arrays()
        return arena, off, ln.astype(np.int64)
    enc = [s.encode("utf-8") for s in symbols]
    ln = np.fromiter(map(len, enc), np.int64, len(enc))
    off = np.zeros(len(enc), np.int64)
    if len(enc) > 1:
        np.cumsum(ln[:-1], out=off[1:])
    return np.frombuffer(b"".join(enc) or b"\0", np.uint8), off, ln


#: accepted alternative column names for fields (the synthetic generator's layout)
ALIASES = {"symbol": ("sym",), "ts_event": ("ts",)}


class BatchEncoder:
    """Encode NumPy columns into framed values of one schema, byte-identical to fastavro."""

    def __init__(self, schema: str | Mapping[str, Any], store: SchemaStore | None = None, *,
                 schema_id: int | None = None) -> None:
        self.parsed, self.schema_id, _ = _resolve(schema, store, schema_id)
        self.plans = plan_schema(self.parsed)
        self.fingerprint = schema_fingerprint(self.parsed)
        self.prefix = np.frombuffer(bytes([MAGIC]) + int(self.schema_id).to_bytes(4, "big"), np.uint8)
        self._fn = _compiled("enc", self.fingerprint, lambda: encoder_source(self.plans), "_encode")

    @staticmethod
    def _get(columns: Mapping[str, Any], name: str) -> Any:
        if name in columns:
            return columns[name]
        for alt in ALIASES.get(name, ()):
            if alt in columns:
                return columns[alt]
        raise KeyError(f"no column for field {name!r}")

    def encode_buffer(self, columns: Mapping[str, Any], symbols: Any = None,
                      map_keys: Sequence[str] | Mapping[str, Sequence[str]] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """``(buffer uint8, offsets int64 (n+1,))``: record ``i`` is ``buffer[offsets[i]:offsets[i+1]]``.

        Raises ValueError for values the schema cannot hold (int out of range, bad enum index,
        symbol code with no symbol, rows of different lengths).
        """
        args: list[Any] = []
        n: int | None = None

        def check_len(a: np.ndarray, name: str) -> None:
            nonlocal n
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise ValueError(f"column {name} has {a.shape[0]} rows, expected {n}")

        for p in self.plans:
            if p.kind == "map_double":
                keys = map_keys.get(p.name, ()) if isinstance(map_keys, Mapping) else (map_keys or ())
                keys = tuple(keys)
                if len(set(keys)) != len(keys):
                    raise ValueError(f"duplicate map keys for {p.name}: {keys}")
                if p.name in columns:
                    vals = np.asarray(columns[p.name], np.float64).reshape(-1, len(keys))
                else:
                    vals = np.stack([np.asarray(columns[k], np.float64) for k in keys], axis=1) if keys \
                        else np.empty((0, 0))
                vals = np.ascontiguousarray(vals)
                if keys:
                    check_len(vals, p.name)
                head = _varint_bytes(len(keys)) if keys else b""
                kb = [_varint_bytes(len(b)) + b for b in (k.encode("utf-8") for k in keys)]
                mo = np.cumsum([len(head)] + [len(b) for b in kb]).astype(np.int64)
                mk = np.frombuffer(head + b"".join(kb) + b"\0", np.uint8)[:-1]
                args += [mk, mo, vals.view(np.uint8).reshape(vals.shape[0], 8 * len(keys))]
                continue
            col = np.asarray(self._get(columns, p.name))
            check_len(col, p.name)
            if p.kind == "string":
                table = symbols.get(p.name) if isinstance(symbols, Mapping) else symbols
                if table is None:
                    raise ValueError(f"string field {p.name} needs symbols")
                arena, off, ln = _symbol_arrays(table)
                codes = np.ascontiguousarray(col, np.int64)
                if codes.size and (codes.min() < 0 or codes.max() >= ln.size):
                    raise ValueError(f"{p.name}: symbol code out of range 0..{ln.size - 1}")
                args += [codes, arena, off, ln]
            elif p.kind in ("double", "float"):
                args.append(np.ascontiguousarray(col, np.float64 if p.kind == "double" else np.float32)
                            .view(np.uint8))
            elif p.kind == "boolean":
                args.append(np.ascontiguousarray(col, np.bool_).view(np.uint8))
            else:
                if col.dtype.kind not in "iub":
                    raise ValueError(f"{p.name}: integer column expected, got {col.dtype}")
                c = np.ascontiguousarray(col, np.int64)
                lo, hi = {"int": (-2**31, 2**31 - 1), "enum": (0, len(p.symbols) - 1)}.get(p.kind, (None, None))
                if lo is not None and c.size and (c.min() < lo or c.max() > hi):
                    raise ValueError(f"{p.name}: value out of range {lo}..{hi}")
                args.append(c)
        return self._fn(n or 0, self.prefix, *args)

    def encode(self, columns: Mapping[str, Any], symbols: Any = None,
               map_keys: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> list[bytes]:
        """Framed values (list of bytes), one per row; see :meth:`encode_buffer`."""
        return split_values(*self.encode_buffer(columns, symbols, map_keys))


# ---- vectorised tick validation ------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _validate_ticks(ts, nonempty, price, size, bid, ask, bid_size, ask_size, side, kind, hi_ts, out):  # pragma: no cover
    for i in range(ts.size):
        c = 0
        if ts[i] < MIN_TS_NS:
            c = 32
        elif ts[i] > hi_ts:
            c = 33
        elif not nonempty[i]:
            c = 34
        elif not (np.isfinite(price[i]) and price[i] > 0):
            c = 35
        elif not (np.isfinite(size[i]) and size[i] >= 0):
            c = 36
        elif not (np.isfinite(bid[i]) and bid[i] > 0):
            c = 37
        elif not (np.isfinite(ask[i]) and ask[i] > 0):
            c = 38
        elif not (np.isfinite(bid_size[i]) and bid_size[i] >= 0):
            c = 39
        elif not (np.isfinite(ask_size[i]) and ask_size[i] >= 0):
            c = 40
        elif bid[i] > ask[i]:
            c = 41
        elif side[i] < -1 or side[i] > 1:
            c = 42
        elif kind[i] == 0 and size[i] <= 0:
            c = 43
        out[i] = c


def validate_ticks(columns: Mapping[str, np.ndarray], now_ns: int | None = None,
                   symbols: SymbolTable | Sequence[str] | None = None) -> np.ndarray:
    """int8 ``(n,)`` status codes (0 or 32-43) by the rules of ``validate.validate_tick``, first
    failing rule first. Columns as :class:`TickDecoder` gives them (``ts``/``ts_event``, ``kind`` 0 =
    TRADE, ...). Empty symbols come from ``sym_len``/``symbol_len``, or, without them, from the code of
    ``""`` in ``symbols``."""

    def col(*names: str) -> np.ndarray:
        for nm in names:
            if nm in columns:
                return np.asarray(columns[nm])
        raise KeyError(f"validate_ticks needs a column {names[0]!r}")

    ts = col("ts", "ts_event").astype(np.int64, copy=False)
    if "sym_len" in columns or "symbol_len" in columns:
        nonempty = col("sym_len", "symbol_len") > 0
    elif symbols is not None:
        empty = symbols.get("") if isinstance(symbols, SymbolTable) else \
            (list(symbols).index("") if "" in symbols else None)
        nonempty = col("sym", "symbol") != (-1 if empty is None else empty)
    else:
        raise ValueError("validate_ticks needs sym_len or a symbol table to see empty symbols")
    f = [col(k).astype(np.float64, copy=False) for k in ("price", "size", "bid", "ask", "bid_size", "ask_size")]
    side = col("side").astype(np.int64, copy=False)
    kind = col("kind").astype(np.int64, copy=False)
    now = time.time_ns() if now_ns is None else int(now_ns)
    out = np.empty(ts.size, np.int8)
    _validate_ticks(ts, nonempty, *f, side, kind, np.int64(min(now + MAX_FUTURE_NS, 2**63 - 1)), out)
    return out


__all__ = [
    "ALIASES", "BatchDecoder", "BatchEncoder", "DecodedBatch", "FieldPlan", "STATUS_MESSAGES", "Status",
    "TICK_RENAME", "TickDecoder", "decoder_source", "encoder_source", "join_values", "plan_schema",
    "schema_fingerprint", "split_values", "status_message", "validate_ticks",
]
