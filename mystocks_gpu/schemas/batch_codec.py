"""Vectorised batch codec: Confluent-framed Avro <-> NumPy columns, compiled from the schema.

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

Status (per input record, :class:`Status`): 0 OK, 1 BAD_MAGIC, 2 UNKNOWN_SCHEMA_ID, 3 WRONG_SCHEMA
(id of another current schema), 4 TRUNCATED, 5 VARINT_OVERFLOW (> 64 bits, or int beyond 32),
6 BAD_ENUM, 7 TRAILING_BYTES, 8 NEGATIVE_LENGTH, 9 INVALID_UTF8, 10 INVALID_BOOLEAN, 11 NULL_VALUE;
:func:`validate_ticks` gives 32-43 (:data:`STATUS_MESSAGES`).
"""
from __future__ import annotations

import io
import pickle
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numba
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from mystocks_gpu.schemas.codec import MAGIC, PREFIX_LEN
from mystocks_gpu.schemas.exceptions import SchemaError
from mystocks_gpu.schemas.registry import SchemaStore, default_store
from mystocks_gpu.schemas.symbols import SymbolTable, symbol_arrays, utf8_ok
from mystocks_gpu.schemas.validate import MAX_FUTURE_NS, MIN_TS_NS

if sys.byteorder != "little":  # doubles are copied byte for byte (Avro is little-endian)
    raise ImportError("batch_codec needs a little-endian host")


class Status(IntEnum):
    """Per-record outcome: decoding 0-11, :func:`validate_ticks` 32-43; ``.message``: DLQ reason."""

    message: str

    def __new__(cls, code: int, message: str) -> Status:
        obj = int.__new__(cls, code)
        obj._value_ = code
        obj.message = message
        return obj

    OK = 0, "ok"
    BAD_MAGIC = 1, "bad magic byte (expected 0): not Confluent-framed Avro"
    UNKNOWN_SCHEMA_ID = 2, "unknown schema id"
    WRONG_SCHEMA = 3, "schema id of another known schema (or an older version), not the expected one"
    TRUNCATED = 4, "truncated record"
    VARINT_OVERFLOW = 5, "varint overflow (more than 64 bits, or an int beyond 32 bits)"
    BAD_ENUM = 6, "enum index out of range"
    TRAILING_BYTES = 7, "trailing bytes after the record"
    NEGATIVE_LENGTH = 8, "negative string length"
    INVALID_UTF8 = 9, "string is not valid UTF-8"
    INVALID_BOOLEAN = 10, "boolean byte is not 0 or 1"
    NULL_VALUE = 11, "record has no value (tombstone)"
    TS_TOO_OLD = 32, "ts_event is before 2000-01-01"
    TS_IN_FUTURE = 33, "ts_event is too far in the future"
    EMPTY_SYMBOL = 34, "symbol is empty"
    BAD_PRICE = 35, "price must be finite and > 0"
    BAD_SIZE = 36, "size must be finite and >= 0"
    BAD_BID = 37, "bid must be finite and > 0"
    BAD_ASK = 38, "ask must be finite and > 0"
    BAD_BID_SIZE = 39, "bid_size must be finite and >= 0"
    BAD_ASK_SIZE = 40, "ask_size must be finite and >= 0"
    CROSSED_QUOTE = 41, "crossed quote: bid > ask"
    BAD_SIDE = 42, "side must be -1, 0 or 1"
    TRADE_ZERO_SIZE = 43, "a TRADE must have size > 0"


#: DLQ reason per status code
STATUS_MESSAGES: dict[int, str] = {int(s): s.message for s in Status}


def status_message(code: int) -> str:
    """The DLQ reason string for a status code."""
    return STATUS_MESSAGES.get(int(code), f"unknown status code {int(code)}")


# ---- numba primitives (shared by every generated loop) ------------------------------------------
_TRUNC = int(Status.TRUNCATED)
_OVERFLOW = int(Status.VARINT_OVERFLOW)


@numba.njit(cache=True, inline="always")
def _read_long(buf, p, end):  # pragma: no cover - numba
    """Zig-zag LEB128 at ``buf[p:end]`` -> ``(int64 value, next p, status)``."""
    u = np.uint64(0)
    shift = 0
    while True:
        if p >= end:
            return np.int64(0), p, _TRUNC
        b = buf[p]
        p += 1
        if shift == 63 and b > 1:  # a 10th byte may only hold bit 63
            return np.int64(0), p, _OVERFLOW
        u |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            return np.int64((u >> np.uint64(1)) ^ (np.uint64(0) - (u & np.uint64(1)))), p, 0
        shift += 7


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
def _write_long(out, p, v):  # pragma: no cover - numba
    """Write ``v`` as a zig-zag varint at ``out[p:]``; returns the next position."""
    u = _zigzag(v)
    while u >= np.uint64(0x80):
        out[p] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        p += 1
    out[p] = np.uint8(u)
    return p + 1


_NB_GLOBALS: dict[str, Any] = {
    "np": np, "_read_long": _read_long, "_utf8_ok": utf8_ok,
    "_zigzag": _zigzag, "_write_long": _write_long, "_varint_len": _varint_len,
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
    return fingerprint(to_parsing_canonical_form(dict(parsed)), "SHA-256")


_CACHE: dict[tuple[str, str], Callable[..., Any]] = {}
_CACHE_LOCK = threading.Lock()


def _compiled(kind: str, fp: str, build: Callable[[], str], fname: str) -> Callable[..., Any]:
    """The numba function for generated source, compiled once per schema fingerprint.

    The source is written to a module file under ``$MYSTOCKS_CODEC_CACHE`` (default
    ``~/.cache/mystocks-gpu/codecs``) and jitted with ``cache=True``, so later processes load the
    machine code from numba's cache instead of recompiling (seconds per codec). Falls back to an
    in-memory compile when the directory is not writable.
    """
    key = (kind, fp)
    with _CACHE_LOCK:
        fn = _CACHE.get(key)
        if fn is None:
            src = build()
            fn = _load_cached_module(kind, fp, src, fname)
            if fn is None:
                ns: dict[str, Any] = dict(_NB_GLOBALS)
                exec(compile(src, f"<batch_codec {kind} {fp[:12]}>", "exec"), ns)  # noqa: S102
                fn = numba.njit(nogil=True)(ns[fname])
            fn.__source__ = src  # type: ignore[attr-defined]
            _CACHE[key] = fn
    return fn


def _load_cached_module(kind: str, fp: str, src: str, fname: str) -> Callable[..., Any] | None:
    import hashlib
    import importlib.util
    import os
    from pathlib import Path

    root = Path(os.environ.get("MYSTOCKS_CODEC_CACHE", "~/.cache/mystocks-gpu/codecs")).expanduser()
    header = ("# generated by mystocks_gpu.schemas.batch_codec; safe to delete\n"
              "import numba\nfrom mystocks_gpu.schemas.batch_codec import _NB_GLOBALS as _G\n"
              "globals().update(_G)\n\n")
    body = header + src + f"\n\n{fname} = numba.njit(nogil=True, cache=True)({fname})\n"
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    path = root / f"codec_{kind}_{fp[:16]}_{digest}.py"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(body)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            return None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod  # numba's cache re-imports the module by name
        spec.loader.exec_module(mod)
        return getattr(mod, fname)  # type: ignore[no-any-return]
    except OSError:
        return None


# ---- decoder compiler ----------------------------------------------------------------------------
def _fail(code: str, ind: str) -> str:
    return f"{ind}status[i] = {code}\n{ind}continue\n"


def decoder_source(plans: Sequence[FieldPlan]) -> str:
    """Python source of ``_decode(buf, starts, ends, expect_id, known_ids, status, *cols) -> n_ok``:
    record ``i`` is ``buf[starts[i]:ends[i]]``; good rows are written compacted at ``k = 0, 1, ...``."""
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
            ut = "np.uint64" if w == 8 else "np.uint32"
            load = " | ".join(f"({ut}(buf[p + {t}]) << {ut}({8 * t}))" for t in range(w))
            body.append(f"{I}if end - p < {w}:\n{_fail('S_TRUNCATED', I + '    ')}"
                        f"{I}b{j}[k] = {load}\n{I}p += {w}\n")
        elif p.kind == "boolean":
            args.append(f"c{j}")
            body.append(f"{I}if end - p < 1:\n{_fail('S_TRUNCATED', I + '    ')}"
                        f"{I}if buf[p] > 1:\n{_fail('S_INVALID_BOOLEAN', I + '    ')}"
                        f"{I}c{j}[k] = buf[p] == 1\n{I}p += 1\n")
        else:
            raise SchemaError(f"field {p.name}: {p.kind} is not supported by the batch decoder")
    head = (
        f"def _decode(buf, starts, ends, expect_id, known_ids, status{''.join(', ' + a for a in args)}):\n"
        "    k = 0\n"
        "    for i in range(starts.size):\n"
        "        p = starts[i]\n"
        "        end = ends[i]\n"
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


@numba.njit(cache=True, nogil=True)
def _scan_pickle(buf, starts, ends, null):  # pragma: no cover - numba
    """Record slices of a fast-mode pickle of a list of bytes/None; False on anything else."""
    n, size, i, p = starts.size, buf.size, 0, 2
    if size < 3 or buf[0] != 0x80:
        return False
    while p < size:
        op = buf[p]
        if op == 0x95:  # FRAME + 8-byte length: frames are transparent
            p += 9
        elif op == 0x5D or op == 0x28 or op == 0x65 or op == 0x61 or op == 0x94:  # ] ( e a MEMOIZE
            p += 1
        elif op == 0x2E:  # STOP
            return i == n and p == size - 1
        elif (op == 0x43 or op == 0x42 or op == 0x8E or op == 0x4E) and i < n:  # C B BINBYTES8 None
            w = 1 if op == 0x43 else (4 if op == 0x42 else (8 if op == 0x8E else 0))
            ln = np.int64(0)
            if p + 1 + w > size:
                return False
            for t in range(w):
                ln |= np.int64(buf[p + 1 + t]) << (8 * t)
            p += 1 + w
            if ln < 0 or p + ln > size:
                return False
            null[i] = op == 0x4E
            starts[i], ends[i] = p, p + ln
            p += ln
            i += 1
        else:
            return False
    return False


def gather_values(values: Sequence[bytes | bytearray | memoryview | None]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(buffer uint8, starts int64 (n,), ends int64 (n,), null rows int64 or None)``: value ``i``
    is ``buffer[starts[i]:ends[i]]``; ``None`` values (tombstones) are empty and listed last.

    Fast path: a fast-mode (no memo) pickle writes every value with its length in one C pass and a
    numba pass finds the slices (~2x ``b"".join`` + ``len`` per value); bytearray, memoryview etc.
    fall back to ``b"".join``. Nothing is ever unpickled."""
    n = len(values)
    starts, ends, null = np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n, np.bool_)
    try:
        f = io.BytesIO()
        pk = pickle.Pickler(f, protocol=5)
        pk.fast = True  # no memo: values are written as they come
        pk.dump(values if type(values) is list else list(values))
        buf = np.frombuffer(f.getbuffer(), np.uint8)
        ok = _scan_pickle(buf, starts, ends, null)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        ok = False
    if not ok:
        null = np.fromiter((v is None for v in values), np.bool_, n)
        vals = [b"" if v is None else v for v in values] if null.any() else values
        buf = np.frombuffer(b"".join(vals), np.uint8)  # type: ignore[arg-type]
        np.cumsum(np.fromiter(map(len, vals), np.int64, n), out=ends)  # type: ignore[arg-type]
        starts[:1], starts[1:] = 0, ends[:-1]
    buf.flags.writeable = False  # one numba specialisation for both paths
    nz = np.flatnonzero(null)
    return buf, starts, ends, (nz if nz.size else None)


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
        return [(int(r), status_message(c)) for r, c in zip(bad.tolist(), self.status[bad].tolist(), strict=True)]

    def strings(self, name: str) -> list[str]:
        """Python strings of string column ``name`` (slow path: one str per row)."""
        data = self.buffer.tobytes()
        off, ln = self.columns[name + "_off"].tolist(), self.columns[name + "_len"].tolist()
        return [data[o:o + n].decode("utf-8") for o, n in zip(off, ln, strict=True)]

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
    known = sorted({store.by_name(nm).id for nm in store.names()} - {sid}) if store is not None else []
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
        buf, starts, ends, nulls = gather_values(values)
        n = starts.size
        cols: dict[str, np.ndarray] = {}
        args: list[np.ndarray] = []
        for p in self.plans:
            c = self._col(p.name)
            if p.kind == "string":
                cols[c + "_off"], cols[c + "_len"] = np.empty(n, np.int64), np.empty(n, np.int32)
                args += [cols[c + "_off"], cols[c + "_len"]]
            elif p.kind in ("double", "float"):
                cols[c] = np.empty(n, np.float64 if p.kind == "double" else np.float32)
                args.append(cols[c].view(np.uint64 if p.kind == "double" else np.uint32))
            else:
                dt = {"long": np.int64, "int": np.int32, "boolean": np.bool_}.get(p.kind) or \
                    (np.int8 if len(p.symbols) <= 127 else np.int32)
                cols[c] = np.empty(n, dt)
                args.append(cols[c])
        status = np.empty(n, np.int8)
        k = int(self._fn(buf, starts, ends, self.schema_id, self.known_ids, status, *args))
        if nulls is not None:
            status[nulls] = Status.NULL_VALUE
        cols = {name: a[:k] for name, a in cols.items()}
        for fname, table in self.tables.items():
            c = self._col(fname)
            cols[c] = table.intern_slices(buf, cols[c + "_off"], cols[c + "_len"], check_utf8=False)
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
    """Python source of ``_encode(n, prefix, pk, *args) -> (buffer uint8, offsets int64 (n+1,))``.

    With ``pk`` the buffer is a pickle (protocol 4) of the list of values: ``PROTO 4, EMPTY_LIST,
    MARK``, each value as ``SHORT_BINBYTES``/``BINBYTES`` with its length, ``APPENDS, STOP``, so
    ``pickle.loads`` builds all the ``bytes`` objects in one C loop (the offsets then include the
    2- or 5-byte opcode before each value)."""
    args: list[str] = []
    size, write = [], []
    fixed = PREFIX_LEN
    I = " " * 8  # noqa: E741
    for j, p in enumerate(plans):
        if p.kind == "string":
            args += [f"c{j}", f"ar{j}", f"so{j}", f"sl{j}"]
            size.append(f"{I}q = sl{j}[c{j}[i]]\n{I}s += _varint_len(_zigzag(q)) + q\n")
            write.append(f"{I}q = sl{j}[c{j}[i]]\n{I}p = _write_long(out, p, q)\n{I}o = so{j}[c{j}[i]]\n"
                         f"{I}for t in range(q):\n{I}    out[p + t] = ar{j}[o + t]\n{I}p += q\n")
        elif p.kind in ("long", "int", "enum"):
            args.append(f"c{j}")
            size.append(f"{I}s += _varint_len(_zigzag(c{j}[i]))\n")
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
        f"def _encode(n, prefix, pk{''.join(', ' + a for a in args)}):\n"
        "    offs = np.empty(n + 1, np.int64)\n    tot = 4 if pk else 0\n    offs[0] = tot\n"
        "    for i in range(n):\n"
        f"        s = {fixed}\n" + "".join(size) +
        "        if pk:\n            s += 2 if s < 256 else 5\n"
        "        tot += s\n        offs[i + 1] = tot\n"
        "    out = np.empty(tot + 2 if pk else tot, np.uint8)\n"
        "    if pk:\n"
        "        out[0] = 0x80\n        out[1] = 4\n        out[2] = 0x5D\n        out[3] = 0x28\n"
        "        out[tot] = 0x65\n        out[tot + 1] = 0x2E\n"
        "    for i in range(n):\n        p = offs[i]\n"
        "        if pk:\n"
        "            r = offs[i + 1] - p\n"
        "            if r < 258:\n                out[p] = 0x43\n                out[p + 1] = r - 2\n                p += 2\n"
        "            else:\n                r -= 5\n                out[p] = 0x42\n"
        "                for t in range(4):\n                    out[p + 1 + t] = (r >> (8 * t)) & 0xFF\n"
        "                p += 5\n"
        f"        for t in range({PREFIX_LEN}):\n            out[p + t] = prefix[t]\n        p += {PREFIX_LEN}\n"
        + "".join(write) + "    return out, offs\n"
    )


def split_values(buf: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """Split ``buf`` (uint8) at ``offsets`` (int64 ``(n+1,)``) into ``n`` bytes objects."""
    data = buf.tobytes()
    o = offsets.tolist()
    return [data[a:b] for a, b in zip(o, o[1:], strict=False)]


def _varint_bytes(v: int) -> bytes:
    u = (v << 1) ^ (v >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


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
                      map_keys: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                      pickled: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(buffer uint8, offsets int64 (n+1,))``: record ``i`` is ``buffer[offsets[i]:offsets[i+1]]``.

        Raises ValueError for values the schema cannot hold (int out of range, bad enum index,
        symbol code with no symbol, rows of different lengths). ``pickled``: see :func:`encoder_source`.
        """
        args: list[Any] = []
        rows: set[int] = set()
        for p in self.plans:
            if p.kind == "map_double":
                keys = tuple(map_keys.get(p.name, ()) if isinstance(map_keys, Mapping) else (map_keys or ()))
                if len(set(keys)) != len(keys):
                    raise ValueError(f"duplicate map keys for {p.name}: {keys}")
                if not keys:
                    vals = np.empty((0, 0))
                elif p.name in columns:
                    vals = np.asarray(columns[p.name], np.float64).reshape(-1, len(keys))
                else:
                    vals = np.stack([np.asarray(columns[k], np.float64) for k in keys], axis=1)
                vals = np.ascontiguousarray(vals)
                rows.update([vals.shape[0]] if keys else [])
                head = _varint_bytes(len(keys)) if keys else b""
                kb = [_varint_bytes(len(b)) + b for b in (k.encode("utf-8") for k in keys)]
                mo = np.cumsum([len(head)] + [len(b) for b in kb]).astype(np.int64)
                mk = np.frombuffer(head + b"".join(kb) + b"\0", np.uint8)[:-1]
                args += [mk, mo, vals.view(np.uint8).reshape(vals.shape[0], 8 * len(keys))]
                continue
            col = np.asarray(self._get(columns, p.name))
            rows.add(col.shape[0])
            if p.kind in ("double", "float"):
                args.append(np.ascontiguousarray(col, np.float64 if p.kind == "double" else np.float32)
                            .view(np.uint8))
                continue
            if col.dtype.kind not in "iub":
                raise ValueError(f"{p.name}: integer (or code) column expected, got {col.dtype}")
            c = np.ascontiguousarray(col, np.uint8 if p.kind == "boolean" else np.int64)
            if p.kind == "string":
                table = symbols.get(p.name) if isinstance(symbols, Mapping) else symbols
                if table is None:
                    raise ValueError(f"string field {p.name} needs symbols")
                arena, off, ln = symbol_arrays(table)
                lo, hi = 0, ln.size - 1
                args += [c, arena, off, ln]
            else:
                lo, hi = {"int": (-2**31, 2**31 - 1), "enum": (0, len(p.symbols) - 1),
                          "boolean": (0, 1)}.get(p.kind, (-2**63, 2**63 - 1))
                args.append(c)
            if c.size and (c.min() < lo or c.max() > hi):
                raise ValueError(f"{p.name}: value out of range {lo}..{hi}")
        if len(rows) > 1:
            raise ValueError(f"columns of different lengths: {sorted(rows)}")
        for j, a in enumerate(args):  # read-only views: one numba specialisation whatever the input
            args[j] = a.view()
            args[j].flags.writeable = False
        return self._fn(rows.pop() if rows else 0, self.prefix, pickled, *args)

    def encode(self, columns: Mapping[str, Any], symbols: Any = None,
               map_keys: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> list[bytes]:
        """Framed values (list of bytes), one per row; see :meth:`encode_buffer`.

        The values come from ``pickle.loads`` of a stream this encoder wrote itself (no outside input
        is unpickled): one C loop, about 1.6x faster than slicing a buffer per value."""
        buf, _ = self.encode_buffer(columns, symbols, map_keys, pickled=True)
        return pickle.loads(buf.data)  # noqa: S301 - our own stream of bytes opcodes only


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
    hi = np.int64(min(now + MAX_FUTURE_NS, 2**63 - 1))
    _validate_ticks(ts, nonempty, *f, side, kind, hi, out)  # type: ignore[call-arg]
    return out


__all__ = [
    "ALIASES", "BatchDecoder", "BatchEncoder", "DecodedBatch", "FieldPlan", "STATUS_MESSAGES", "Status",
    "TICK_RENAME", "TickDecoder", "decoder_source", "encoder_source", "gather_values", "plan_schema",
    "schema_fingerprint", "split_values", "status_message", "validate_ticks",
]
