"""``BacktestResult`` messages encoded straight from the stats table's columns.

A job publishes one ``BacktestRow`` per (symbol, parameter set): 30,000 rows for 3,000 symbols x 10
pairs. Building a dict per row and handing it to fastavro took about 10 µs a row; here the rows
array is written by one numba pass over the columns (each symbol name and each parameter map is
encoded once and copied), and fastavro encodes the rest of the record (job id, counters, curves)
with an empty rows array, which is then replaced. The bytes are those fastavro writes for the same
record (tested byte for byte), so readers are unaffected.

Avro binary encoding (spec 1.11): ``long``/``int`` as zig-zag varints, ``double`` as 8 bytes little
endian, ``string`` as a length then UTF-8 bytes, ``map``/``array`` as one block ``count, items``
then a ``0`` (nothing but the ``0`` when empty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
import pandas as pd

from mystocks_gpu.schemas.batch_codec.encoder import avro_long_bytes
from mystocks_gpu.schemas.batch_codec.primitives import _write_long
from mystocks_gpu.schemas.batch_codec.record_values import RecordValues
from mystocks_gpu.schemas.codec import MAGIC, PREFIX, AvroCodec

RESULT_SCHEMA = "mystocks.backtest.BacktestResult"
DOUBLE, LONG = 0, 1


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return avro_long_bytes(len(b)) + b


def _double_map(m: Mapping[str, float]) -> bytes:
    """A ``map<double>`` as fastavro writes it (one block, in the dict's order)."""
    if not m:
        return b"\x00"
    return avro_long_bytes(len(m)) + b"".join(_string(k) + np.asarray(v, "<f8").tobytes() for k, v in m.items()) + b"\x00"


@numba.njit(cache=True, nogil=True)
def _encode_rows(sym, par, sym_buf, sym_start, sym_end, par_buf, par_start, par_end, kinds, dbl, lng,
                 out):  # pragma: no cover - numba
    """Rows ``i``: symbol ``sym[i]``'s and parameter set ``par[i]``'s pre-encoded bytes (slices
    ``start..end`` of their buffers, as :class:`RecordValues` lays them out), then the
    fields in ``kinds`` order (DOUBLE from the next column of ``dbl`` uint64 bit patterns ``(n, nd)``,
    LONG from the next of ``lng`` int64 ``(n, nl)``). Returns the bytes written to ``out``."""
    p = 0
    for i in range(sym.size):
        s, q = sym[i], par[i]
        for t in range(sym_start[s], sym_end[s]):
            out[p] = sym_buf[t]
            p += 1
        for t in range(par_start[q], par_end[q]):
            out[p] = par_buf[t]
            p += 1
        di = 0
        li = 0
        for f in range(kinds.size):
            if kinds[f] == 0:
                u = dbl[i, di]
                for b in range(8):
                    out[p + b] = np.uint8((u >> np.uint64(8 * b)) & np.uint64(0xFF))
                p += 8
                di += 1
            else:
                p = _write_long(out, p, lng[i, li])
                li += 1
    return p


class RowsEncoder:
    """Encodes ``BacktestResult`` records whose rows come from a stats table (see the module doc).

    ``codec``: the process's codec (its schema store gives the schema id and the field order)."""

    SCHEMA = RESULT_SCHEMA

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec
        info = codec.store.by_name(self.SCHEMA)
        self.schema_id = info.id
        top = [f["name"] for f in info.parsed["fields"]]
        if top[:5] != ["job_id", "ts_event", "chunk_index", "chunk_count", "rows"]:
            raise ValueError(f"{self.SCHEMA}: unexpected field order {top}")
        row_fields = info.parsed["fields"][4]["type"]["items"]["fields"]
        if [f["name"] for f in row_fields[:2]] != ["symbol", "params"]:
            raise ValueError(f"{self.SCHEMA}: rows do not start with symbol, params")
        self.fields = [(f["name"], f["type"]) for f in row_fields[2:]]
        if any(t not in ("double", "long") for _, t in self.fields):
            raise ValueError(f"{self.SCHEMA}: row fields must be double or long: {self.fields}")
        self.kinds = np.array([DOUBLE if t == "double" else LONG for _, t in self.fields], np.int64)

    def encode(self, head: dict[str, Any], stats: pd.DataFrame, index: np.ndarray,
               params: Sequence[Mapping[str, float]]) -> bytes:
        """Framed bytes of ``head`` (``job_id``, ``ts_event``, ``chunk_index``, ``chunk_count``,
        ``curves``) with ``rows`` = the stats rows ``index`` (``params[param_id]`` as each row's map)."""
        sl = stats.iloc[np.asarray(index, np.int64)]
        base = self.codec.encode(self.SCHEMA, {**head, "rows": []})
        pos = PREFIX.size + len(_string(str(head["job_id"]))) + sum(
            len(avro_long_bytes(int(head[k]))) for k in ("ts_event", "chunk_index", "chunk_count"))
        if base[pos] != 0 or base[:PREFIX.size] != PREFIX.pack(MAGIC, self.schema_id):
            raise ValueError("unexpected encoding of the record head")  # the layout assumed above broke
        n = len(sl)
        if n == 0:
            return base
        names, sym = np.unique(sl["symbol"].to_numpy(dtype=object).astype(str), return_inverse=True)
        par = sl["param_id"].to_numpy(np.int64)
        syms = RecordValues.of([_string(str(s)) for s in names])
        pars = RecordValues.of([_double_map(p) for p in params])
        dbl = np.empty((n, int(np.count_nonzero(self.kinds == DOUBLE))), np.float64)
        lng = np.empty((n, int(np.count_nonzero(self.kinds == LONG))), np.int64)
        di = li = 0
        for name, kind in self.fields:
            if kind == "double":
                dbl[:, di] = sl[name].to_numpy(np.float64)
                di += 1
            else:
                lng[:, li] = sl[name].to_numpy(np.int64)
                li += 1
        bound = int((syms.ends - syms.starts).max()) + int((pars.ends - pars.starts).max()) \
            + 8 * dbl.shape[1] + 10 * lng.shape[1]
        out = np.empty(n * bound, np.uint8)
        size = _encode_rows(sym.astype(np.int64), par, syms.buffer, syms.starts, syms.ends, pars.buffer, pars.starts,
                            pars.ends, self.kinds, dbl.view(np.uint64), lng, out)
        return b"".join((base[:pos], avro_long_bytes(n), out[:size].tobytes(), b"\x00", base[pos + 1:]))
