"""The batch decoder: a compiled loop per schema turns framed Avro values into NumPy columns."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numba
import numpy as np

from mystocks_gpu.schemas.batch_codec.code_cache import compiled
from mystocks_gpu.schemas.batch_codec.plan import FieldPlan, plan_schema, schema_fingerprint
from mystocks_gpu.schemas.batch_codec.record_values import RecordValues
from mystocks_gpu.schemas.batch_codec.status import Status, status_message
from mystocks_gpu.schemas.codec import MAGIC, PREFIX_LEN
from mystocks_gpu.schemas.exceptions import SchemaError
from mystocks_gpu.schemas.schema_store import SchemaStore, default_store
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.schemas.validate import MAX_SYMBOL_BYTES


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
            load = " | ".join(f"({ut}(buf[u + np.uint64({t})]) << {ut}({8 * t}))" for t in range(w))
            body.append(f"{I}if end - p < {w}:\n{_fail('S_TRUNCATED', I + '    ')}"
                        f"{I}u = np.uint64(p)\n{I}b{j}[k] = {load}\n{I}p += {w}\n")
        elif p.kind == "boolean":
            args.append(f"c{j}")
            body.append(f"{I}if end - p < 1:\n{_fail('S_TRUNCATED', I + '    ')}"
                        f"{I}if buf[np.uint64(p)] > 1:\n{_fail('S_INVALID_BOOLEAN', I + '    ')}"
                        f"{I}c{j}[k] = buf[np.uint64(p)] == 1\n{I}p += 1\n")
        else:
            raise SchemaError(f"field {p.name}: {p.kind} is not supported by the batch decoder")
    head = (
        f"def _decode(buf, starts, ends, expect_id, known_ids, status{''.join(', ' + a for a in args)}):\n"
        "    k = 0\n"
        "    for i in range(starts.size):\n"
        "        p = starts[i]\n"
        "        end = ends[i]\n"
        f"        if end > p and buf[np.uint64(p)] != {MAGIC}:\n{_fail('S_BAD_MAGIC', I + '    ')}"
        f"        if end - p < {PREFIX_LEN}:\n{_fail('S_TRUNCATED', I + '    ')}"
        "        u = np.uint64(p)\n"
        "        sid = (np.int64(buf[u + np.uint64(1)]) << 24) | (np.int64(buf[u + np.uint64(2)]) << 16)"
        " | (np.int64(buf[u + np.uint64(3)]) << 8) | np.int64(buf[u + np.uint64(4)])\n"
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
    if isinstance(values, RecordValues):  # already one buffer (the raw replay reader)
        return values.gathered()
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
        if not np.count_nonzero(codes):
            return self  # nothing rejected (the common case): no copy of every column
        keep = codes == 0
        status = self.status.copy()
        status[self.index[~keep]] = codes[~keep]
        cols = {k: v[keep] for k, v in self.columns.items()}
        return DecodedBatch(cols, status, self.index[keep], self.buffer, self.tables)


def resolve_schema(schema: str | Mapping[str, Any], store: SchemaStore | None,
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
    ``intern``: the string fields to map to int32 codes; ``rename``: output column names by field;
    an interned string longer than ``max_interned_bytes`` rejects its record (status 44) instead.
    """

    def __init__(self, schema: str | Mapping[str, Any], store: SchemaStore | None = None, *,
                 schema_id: int | None = None, symbols: SymbolTable | Mapping[str, SymbolTable] | None = None,
                 intern: Sequence[str] = ("symbol",), rename: Mapping[str, str] | None = None,
                 max_interned_bytes: int = MAX_SYMBOL_BYTES) -> None:
        self.max_interned_bytes = max_interned_bytes
        self.parsed, self.schema_id, self.known_ids = resolve_schema(schema, store, schema_id)
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
        self._fn = compiled("dec", self.fingerprint, lambda: decoder_source(self.plans), "_decode")
        # per field, in the compiled loop's argument order: (column name, dtype, view dtype for the
        # loop or None; a string field: ("<name>_off", int64, None) and ("<name>_len", int32, None))
        self._alloc: list[tuple[str, Any, Any]] = []
        for p in self.plans:
            c = self._col(p.name)
            if p.kind == "string":
                self._alloc += [(c + "_off", np.int64, None), (c + "_len", np.int32, None)]
            elif p.kind in ("double", "float"):
                self._alloc.append((c, np.float64, np.uint64) if p.kind == "double" else (c, np.float32, np.uint32))
            else:
                dt = {"long": np.int64, "int": np.int32, "boolean": np.bool_}.get(p.kind) or \
                    (np.int8 if len(p.symbols) <= 127 else np.int32)
                self._alloc.append((c, dt, None))

    def _col(self, name: str) -> str:
        return self.rename.get(name, name)

    def decode(self, values: Sequence[bytes | bytearray | memoryview | None]) -> DecodedBatch:
        """Decode ``values`` (framed records); bad ones are flagged in ``status``, never raised."""
        buf, starts, ends, nulls = gather_values(values)
        n = starts.size
        cols: dict[str, np.ndarray] = {}
        args: list[np.ndarray] = []
        for c, dt, view in self._alloc:
            a = cols[c] = np.empty(n, dt)
            args.append(a if view is None else a.view(view))
        status = np.empty(n, np.int8)
        k = int(self._fn(buf, starts, ends, self.schema_id, self.known_ids, status, *args))
        if nulls is not None:
            status[nulls] = Status.NULL_VALUE
        cols = {name: a[:k] for name, a in cols.items()}
        index = np.flatnonzero(status == 0) if k < n else np.arange(n, dtype=np.int64)
        long_rows = None
        for fname in self.tables:  # never intern a huge string: reject it before it reaches a table
            too_long = cols[self._col(fname) + "_len"] > self.max_interned_bytes
            long_rows = too_long if long_rows is None else (long_rows | too_long)
        if long_rows is not None and np.count_nonzero(long_rows):
            status[index[long_rows]] = Status.SYMBOL_TOO_LONG
            keep = ~long_rows
            cols = {name: a[keep] for name, a in cols.items()}
            index = index[keep]
        for fname, table in self.tables.items():
            c = self._col(fname)
            cols[c] = table.intern_slices(buf, cols[c + "_off"], cols[c + "_len"], check_utf8=False)
        return DecodedBatch(cols, status, index.astype(np.int64, copy=False), buf, dict(self.tables))


D = TypeVar("D", bound=BatchDecoder)


class DecoderCache(Generic[D]):
    """One decoder per symbol table, built on first use (``make(symbols)``) and kept: building one
    (schema lookup, field plans, fingerprint, compiled-loop lookup) costs about 26 µs, as much as
    decoding a small batch, so a processor must not build one per call."""

    def __init__(self, make: Callable[[SymbolTable], D]) -> None:
        self._make = make
        #: id(table) -> (table, its decoder): holding the table keeps its id from being reused
        self._by_table: dict[int, tuple[SymbolTable, D]] = {}

    def __call__(self, symbols: SymbolTable) -> D:
        got = self._by_table.get(id(symbols))
        if got is None:
            got = self._by_table[id(symbols)] = (symbols, self._make(symbols))
        return got[1]

    def drop(self, symbols: SymbolTable) -> None:
        """Forget ``symbols``' decoder (a throwaway table's, e.g. a warm-up's); no-op if none."""
        got = self._by_table.get(id(symbols))
        if got is not None and got[0] is symbols:
            del self._by_table[id(symbols)]
