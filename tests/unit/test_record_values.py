"""RecordValues (one buffer of record values, as the raw replay reader makes them): a sequence of
bytes/None equal to the list it stands for, decoded by the batch decoders exactly like that list."""

from __future__ import annotations

import io

import fastavro
import numpy as np

from mystocks_gpu.schemas.batch_codec import BatchDecoder, gather_values
from mystocks_gpu.schemas.batch_codec.record_values import RecordValues
from mystocks_gpu.schemas.codec import AvroCodec
from mystocks_gpu.schemas.schema_store import default_store


def _bars(n: int) -> list[bytes | None]:
    codec = AvroCodec()
    out: list[bytes | None] = []
    for i in range(n):
        out.append(codec.encode("mystocks.md.Bar", {
            "symbol": f"S{i % 7}", "ts_event": 1_700_000_000_000_000_000 + i, "interval_ns": 60_000_000_000,
            "open": 1.0 + i, "high": 2.0 + i, "low": 0.5 + i, "close": 1.5 + i, "volume": float(i),
            "trades": i, "vwap": 1.25 + i}) if i % 11 else None)
    out.append(b"\x00garbage")
    return out


def test_sequence_equals_the_list() -> None:
    vals = _bars(50)
    rv = RecordValues.of(vals)
    assert len(rv) == len(vals) and list(rv) == vals
    assert [rv[i] for i in range(len(vals))] == vals
    assert list(rv[10:20]) == vals[10:20] and isinstance(rv[10:20], RecordValues)
    assert not rv.buffer.flags.writeable


def test_decoders_read_it_like_the_list() -> None:
    vals = _bars(200)
    rv = RecordValues.of(vals)
    buf, st, en, nulls = gather_values(rv)
    assert [None if (nulls is not None and i in nulls) else buf[s:e].tobytes()
            for i, (s, e) in enumerate(zip(st, en, strict=True))] == vals
    a = BatchDecoder("mystocks.md.Bar", default_store()).decode(vals)
    b = BatchDecoder("mystocks.md.Bar", default_store()).decode(rv)
    np.testing.assert_array_equal(a.status, b.status)
    for k in ("open", "close", "ts_event", "trades"):
        np.testing.assert_array_equal(a.columns[k], b.columns[k])
    # and against fastavro, record by record (an independent decoder)
    schema = default_store().by_name("mystocks.md.Bar").parsed
    good = [v for v in vals[:-1] if v is not None]  # the last one is garbage
    ref = [fastavro.schemaless_reader(io.BytesIO(v[5:]), schema) for v in good]
    np.testing.assert_array_equal(b.columns["close"], [r["close"] for r in ref])
