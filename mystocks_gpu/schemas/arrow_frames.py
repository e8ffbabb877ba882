"""Arrow IPC frames: the value format of internal batch topics (``factors.values``).

A frame is one Arrow IPC *stream* (schema message + record batches + end marker) holding one
table: named, typed columns of equal length. Column names and the metadata (a ``str -> str`` map
stored in the Arrow schema) travel with every frame, so a frame is self-describing: any Arrow
reader (pyarrow, Arrow C++/Java/Rust/Go, cuDF) opens it without a schema registry. Decoding is
zero-copy into Arrow buffers; numeric columns convert to NumPy without a copy.

    value = encode_frame({"symbol": syms, "ts_event": ts, "F1": f1}, {"job_id": "j1"})
    table, meta = decode_frame(value)       # pyarrow.Table, {"job_id": "j1"}

Every frame carries ``mystocks.format = arrow-ipc-stream/1`` in its metadata; :func:`decode_frame`
raises :class:`~mystocks_gpu.schemas.exceptions.DecodeError` for bytes that are not a frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from mystocks_gpu.schemas.exceptions import DecodeError

#: metadata key and value every frame carries
FORMAT_KEY = "mystocks.format"
FORMAT = "arrow-ipc-stream/1"
#: Kafka header naming the value format of a frame message
CONTENT_TYPE = "application/vnd.apache.arrow.stream"


def make_table(columns: Mapping[str, Any]) -> pa.Table:
    """An Arrow table of ``columns`` (name -> 1-D array or list, equal lengths; NumPy float/int
    arrays are taken without a copy, lists of str become utf8)."""
    arrays, names = [], []
    n: int | None = None
    for name, col in columns.items():
        arr = pa.array(col) if not isinstance(col, (pa.Array, pa.ChunkedArray)) else col
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"column {name!r} has {len(arr)} rows, expected {n}")
        arrays.append(arr)
        names.append(str(name))
    return pa.Table.from_arrays(arrays, names=names)


def encode_table(table: pa.Table, metadata: Mapping[str, str] | None = None) -> bytes:
    """One Arrow IPC stream of ``table`` (or a zero-copy ``table.slice``) with ``metadata``."""
    meta = {FORMAT_KEY: FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def encode_frame(columns: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """One Arrow IPC stream of ``columns`` (see :func:`make_table`) and ``metadata``."""
    return encode_table(make_table(columns), metadata)


def decode_frame(value: bytes | memoryview | None) -> tuple[pa.Table, dict[str, str]]:
    """``(table, metadata)`` of a frame; :class:`DecodeError` if ``value`` is not one."""
    if value is None:
        raise DecodeError("null value: not an Arrow IPC frame")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(value)).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DecodeError(f"not an Arrow IPC frame: {exc}") from None
    raw = table.schema.metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    if meta.get(FORMAT_KEY) != FORMAT:
        raise DecodeError(f"Arrow stream without {FORMAT_KEY}={FORMAT}: not a mystocks frame")
    return table, meta


def column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column of a decoded frame as a NumPy array (zero-copy when it has no nulls)."""
    return np.asarray(table.column(name).to_numpy())
