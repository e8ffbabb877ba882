"""Confluent-framed Avro codec: round-trips, byte identity with fastavro, ids, errors."""

from __future__ import annotations

import io
import json
import math
import random
import struct
import zlib

import fastavro
import pytest

from mystocks_gpu.schemas import AvroCodec, DecodeError, SchemaStore, UnknownSchemaId, frame
from mystocks_gpu.schemas.schema_store import local_schemas, read_manifest
from tests.avro_random import random_value

STORE = SchemaStore()
CODEC = AvroCodec(STORE)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("name", sorted(local_schemas()))
def test_round_trip_and_fastavro_identity(name: str) -> None:
    info = STORE.by_name(name)
    rng = random.Random(zlib.crc32(name.encode()))  # stable across runs (hash() is salted per process)
    for _ in range(2000):
        rec = random_value(json.loads(json.dumps(info.raw)), rng, {})
        data = CODEC.encode(name, rec)
        assert data[0] == 0
        assert struct.unpack(">I", data[1:5])[0] == info.id
        ref = io.BytesIO()
        fastavro.schemaless_writer(ref, fastavro.parse_schema(info.raw), rec)  # independent parse
        assert data[5:] == ref.getvalue()
        back = CODEC.decode(data, expect=name)
        assert _same(back, rec), (rec, back)


def test_manifest_matches_files_and_ids_are_unique() -> None:
    manifest = read_manifest()
    ids = [e["id"] for e in manifest["schemas"]]
    assert len(ids) == len(set(ids))
    current = {e["name"]: e for e in manifest["schemas"]}
    for name, (_, _, fp) in local_schemas().items():
        assert any(e["name"] == name and e["fingerprint"] == fp for e in manifest["schemas"]), (
            f"{name} changed without a new manifest id: run python -m mystocks_gpu.schemas.schema_store --update")
        assert name in current
    for name in ("Tick", "Trade", "Quote", "Bar", "FeatureVector", "JobCommand", "TaskStatus", "Alert", "BacktestResult"):
        info = STORE.by_name(name)
        fields = [f["name"] for f in info.raw["fields"]]
        assert "ts_event" in fields and next(f for f in info.raw["fields"] if f["name"] == "ts_event")["type"] == "long"


def test_unknown_schema_id_is_rejected_clearly() -> None:
    body = CODEC.encode("Tick", {"symbol": "A", "ts_event": 1, "seq": 0, "kind": "TRADE", "price": 1.0, "size": 1.0,
                                 "side": 1, "bid": 1.0, "ask": 1.0, "bid_size": 1.0, "ask_size": 1.0})[5:]
    with pytest.raises(UnknownSchemaId, match="unknown schema id 9999"):
        CODEC.decode(frame(9999, body))


@pytest.mark.parametrize("data, fragment", [
    (b"", "shorter than the 5-byte"),
    (b"\x01\x00\x00\x00\x01abc", "bad magic byte 1"),
    (None, "tombstone"),
])
def test_malformed_frames(data: bytes | None, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        CODEC.decode(data)


def test_corrupt_body_and_trailing_bytes() -> None:
    tick_id = STORE.by_name("Tick").id
    with pytest.raises(DecodeError, match="corrupt Avro body"):
        CODEC.decode(frame(tick_id, b"\x02"))
    good = CODEC.encode("Bar", {"symbol": "A", "ts_event": 5, "interval_ns": 1, "open": 1.0, "high": 1.0,
                                "low": 1.0, "close": 1.0, "volume": 0.0, "vwap": math.nan, "trades": 0})
    with pytest.raises(DecodeError, match="trailing bytes"):
        CODEC.decode(good + b"\x00")
    with pytest.raises(DecodeError, match="expected mystocks.md.Tick"):
        CODEC.decode(good, expect="Tick")
