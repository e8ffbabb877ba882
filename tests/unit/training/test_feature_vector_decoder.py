"""The FeatureVector batch decoder equals fastavro (AvroCodec) record by record: values, keys in
any order, block forms fastavro never writes (negative counts, several blocks), duplicate keys,
and every corruption flagged instead of raised."""

from __future__ import annotations

import io
import math

import fastavro
import numpy as np
import pytest

from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import Status
from mystocks_gpu.schemas.batch_codec.feature_vectors import FeatureVectorDecoder
from mystocks_gpu.schemas.codec import frame

CODEC = AvroCodec()
FV = "mystocks.features.FeatureVector"


def _rec(i: int, rng: np.random.Generator, keys: list[str]) -> dict:
    order = list(rng.permutation(keys))[: rng.integers(0, len(keys) + 1)]
    return {"symbol": f"S{i % 7}é" if i % 5 == 0 else f"S{i % 7}", "ts_event": int(rng.integers(-2**62, 2**62)),
            "seq": i, "ts_ingest": int(rng.integers(0, 2**40)),
            "values": {k: float(rng.standard_normal()) for k in order}}


def _reference(values: list[bytes | None], keys: list[str]) -> list[tuple[str, int, int, int, list[float]] | None]:
    out = []
    for v in values:
        try:
            r = CODEC.decode(v, expect=FV)
        except Exception:  # noqa: BLE001 - the reference: whatever fastavro refuses
            out.append(None)
            continue
        out.append((r["symbol"], r["ts_event"], r["seq"], r["ts_ingest"], [r["values"].get(k, math.nan) for k in keys]))
    return out


def _check(values: list[bytes | None], keys: list[str]) -> None:
    ref = _reference(values, keys)
    dec = FeatureVectorDecoder(keys)
    got = dec.decode(values)
    good = [i for i, r in enumerate(ref) if r is not None]
    assert got.index.tolist() == good
    assert (got.status[good] == 0).all() and (got.status[[i for i, r in enumerate(ref) if r is None]] != 0).all()
    for row, i in enumerate(good):
        sym, ts, seq, ti, vals = ref[i]  # type: ignore[misc]
        assert dec.symbols.symbol(int(got.columns["sym"][row])) == sym
        assert (got.columns["ts"][row], got.columns["seq"][row], got.columns["ts_ingest"][row]) == (ts, seq, ti)
        np.testing.assert_array_equal(got.X[row], np.asarray(vals))  # bit-identical, NaN where absent
    seen = {k for i in good for k, v in zip(keys, ref[i][4], strict=True) if not math.isnan(v)}  # type: ignore[index]
    assert [k for k, p in zip(keys, got.present, strict=True) if p] == [k for k in keys if k in seen]


def test_random_records_in_any_key_order_equal_fastavro() -> None:
    rng = np.random.default_rng(11)
    keys = ["ret", "ema_10", "rsi", "spread", "book_imb", "x"]
    values: list[bytes | None] = [CODEC.encode(FV, _rec(i, rng, keys + ["other", "ünï"])) for i in range(400)]
    _check(values, keys[:4] + ["never_there"])
    _check(values, ["ünï"])


def _body(parts: list[bytes]) -> bytes:
    return frame(CODEC.schema_id(FV), b"".join(parts))


def _long(v: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, {"type": "long"}, v)
    return buf.getvalue()


def _entry(k: str, x: float) -> bytes:
    kb = k.encode()
    return _long(len(kb)) + kb + np.float64(x).tobytes()


def test_block_forms_and_duplicate_keys_equal_fastavro() -> None:
    head = [_long(3), b"ABC", _long(10), _long(1), _long(2)]
    e = [_entry("a", 1.5), _entry("b", -2.0), _entry("a", 7.0)]
    values: list[bytes | None] = [
        _body(head + [_long(-2), _long(len(e[0]) + len(e[1])), e[0], e[1], _long(0)]),  # negative count + size
        _body(head + [_long(1), e[0], _long(1), e[1], _long(0)]),                      # two blocks
        _body(head + [_long(3), e[0], e[1], e[2], _long(0)]),                          # duplicate: last wins
        _body(head + [_long(0)]),                                                      # empty map
    ]
    _check(values, ["a", "b"])


def test_every_truncation_and_corruption_is_flagged_not_raised() -> None:
    good = CODEC.encode(FV, {"symbol": "AAPL", "ts_event": 123, "seq": 4, "ts_ingest": 5,
                             "values": {"a": 1.0, "bb": 2.0}})
    values: list[bytes | None] = [good[:n] for n in range(len(good))]
    values += [good + b"\x00", b"\x01" + good[1:], None, frame(999_999, good[5:]),
               frame(CODEC.schema_id("Tick"), good[5:])]
    bad_utf8 = bytearray(good)
    bad_utf8[6] = 0xFF  # first byte of the symbol
    values.append(bytes(bad_utf8))
    _check(values, ["a", "bb"])
    st = FeatureVectorDecoder(["a"]).decode(values).status
    assert st[len(good)] == Status.TRAILING_BYTES and st[len(good) + 1] == Status.BAD_MAGIC
    assert st[len(good) + 2] == Status.NULL_VALUE and st[len(good) + 3] == Status.UNKNOWN_SCHEMA_ID
    assert st[len(good) + 4] == Status.WRONG_SCHEMA and st[-1] == Status.INVALID_UTF8


def test_duplicate_wanted_keys_are_refused() -> None:
    from mystocks_gpu.schemas.exceptions import SchemaError

    with pytest.raises(SchemaError, match="duplicate"):
        FeatureVectorDecoder(["a", "a"])
