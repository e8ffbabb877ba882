"""Model records on the registry topic: a model larger than a record is cut into parts and joined
back byte for byte (checked against the original bytes and hashlib); missing parts, altered bytes,
bad metadata, undecodable records and tombstones are handled; a real model survives the round
trip and loads with its hash checked."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.models import ModelIntegrityError, load_model, make_model
from mystocks_gpu.processors.training.model_registry import Assembler, part_key, split_model
from mystocks_gpu.schemas import AvroCodec

CODEC = AvroCodec()


def _records(name: str, version: int, blob: bytes, chunk: int, meta: dict | None = None) -> list[tuple[bytes, bytes]]:
    return [(k, CODEC.encode("mystocks.ml.ModelRecord", r))
            for k, r in split_model(name, version, blob, meta or {"features": ["a"]}, 1_700_000_000 * 10**9, chunk)]


def _feed(asm: Assembler, recs: list[tuple[bytes, bytes | None]], first_offset: int = 0) -> list:
    out = []
    for i, (k, v) in enumerate(recs):
        out += asm.feed(k, v, first_offset + i)
    return out


@pytest.mark.parametrize("size, chunk, parts", [(0, 10, 1), (1, 10, 1), (10, 10, 1), (11, 10, 2), (1000, 7, 143),
                                                (3 << 20, 1 << 20, 3)])
def test_parts_join_back_to_the_same_bytes(size: int, chunk: int, parts: int) -> None:
    blob = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    recs = _records("m.x", 4, blob, chunk, {"features": ["a", "b"], "note": "ü"})
    assert len(recs) == parts
    assert recs[-1][0] == b"m.x" and all(k == f"m.x#v4#{i}".encode() for i, (k, _) in enumerate(recs[:-1]))
    decoded = [CODEC.decode(v) for _, v in recs]
    assert all(len(d["data"]) <= chunk for d in decoded) and [d["part"] for d in decoded] == list(range(parts))
    assert all(d["metadata_json"] == "" for d in decoded[:-1])
    asm = Assembler()
    got = _feed(asm, recs)
    assert len(got) == 1
    mv = got[0]
    assert mv.ok and mv.blob == blob and mv.content_sha256 == hashlib.sha256(blob).hexdigest()
    assert (mv.name, mv.version, mv.offset, len(mv.raw)) == ("m.x", 4, parts - 1, parts)
    assert mv.metadata == {"features": ["a", "b"], "note": "ü"}


def test_interleaved_models_and_versions_assemble_independently() -> None:
    a1, a2, b1 = b"A" * 25, b"a" * 31, b"B" * 9
    ra1, ra2, rb1 = _records("a", 1, a1, 10), _records("a", 2, a2, 10), _records("b", 1, b1, 4)
    order = [ra1[0], rb1[0], ra2[0], ra1[1], rb1[1], ra2[1], ra2[2], rb1[2], ra1[2], ra2[3]]
    got = _feed(Assembler(), order)
    assert [(m.name, m.version, m.blob) for m in got] == [("b", 1, b1), ("a", 1, a1), ("a", 2, a2)]
    assert all(m.ok for m in got)


def test_missing_part_altered_bytes_bad_metadata_and_garbage_are_errors() -> None:
    blob = bytes(range(256)) * 4
    recs = _records("m", 1, blob, 300)
    miss = _feed(Assembler(), [recs[0], recs[2], recs[3]])
    assert len(miss) == 1 and not miss[0].ok and "part(s) [1] of 4 missing" in (miss[0].error or "")
    rec = CODEC.decode(recs[1][1])
    rec["data"] = bytes(b ^ 1 for b in rec["data"])
    altered = _feed(Assembler(), [recs[0], (recs[1][0], CODEC.encode("mystocks.ml.ModelRecord", rec)), *recs[2:]])
    assert not altered[0].ok and "content hash mismatch" in (altered[0].error or "")
    last = CODEC.decode(recs[-1][1])
    last["metadata_json"] = "{not json"
    bad_meta = _feed(Assembler(), [*recs[:-1], (recs[-1][0], CODEC.encode("mystocks.ml.ModelRecord", last))])
    assert not bad_meta[0].ok and "metadata is not JSON" in (bad_meta[0].error or "")
    garbage = Assembler().feed(b"m", b"\x00\x00\x00\x00\x0bjunk", 17)
    assert len(garbage) == 1 and not garbage[0].ok and garbage[0].name == "m" and garbage[0].raw[0][2] == 17


def test_tombstones_forget_buffered_parts() -> None:
    recs = _records("m", 3, b"x" * 30, 10)
    asm = Assembler()
    _feed(asm, recs[:2])
    assert asm.feed(part_key("m", 3, 0, 3), None, 5) == []
    got = asm.feed(recs[2][0], recs[2][1], 6)
    assert not got[0].ok and "part(s) [0] of 3 missing" in (got[0].error or "")
    assert asm.feed(b"m", None, 7) == []  # a tombstone of the name key is ignored


def test_a_real_model_round_trips_and_loads_hash_checked() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 5))
    y = X @ rng.standard_normal(5)
    model = make_model("gbdt", {"n_estimators": 30, "max_depth": 4}, backend="cpu").fit(X, y)
    blob = model.to_bytes()
    mv = _feed(Assembler(), _records("g", 1, blob, 4096, {"features": list("abcde")}))[0]
    assert mv.ok and mv.content_sha256 == model.content_hash()
    loaded = load_model(mv.blob, backend="cpu", expected_sha256=mv.content_sha256)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    with pytest.raises(ModelIntegrityError):
        load_model(mv.blob[:-1], backend="cpu")
    assert json.loads(json.dumps(mv.metadata)) == {"features": list("abcde")}
