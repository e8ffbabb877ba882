"""Batch codec vs fastavro: byte-identical encoding, equal decoding, per-record rejects, symbols."""

from __future__ import annotations

import io
import struct
import time
import zlib

import fastavro
import numpy as np
import pytest

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names, to_records
from mystocks_gpu.schemas.batch_codec import (
    STATUS_MESSAGES,
    BatchDecoder,
    BatchEncoder,
    Status,
    TickDecoder,
    decoder_source,
    gather_values,
    plan_schema,
    split_values,
    status_message,
    validate_ticks,
)
from mystocks_gpu.schemas.codec import AvroCodec, frame
from mystocks_gpu.schemas.exceptions import DecodeError, SchemaError, ValidationError
from mystocks_gpu.schemas.schema_store import default_store
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.schemas.validate import MAX_FUTURE_NS, MAX_SYMBOL_BYTES, MIN_TS_NS, validate_tick

N = 3000
STORE = default_store()
CODEC = AvroCodec(STORE)

# a schema with every primitive the compiler supports (not in the catalog: explicit id)
ALL_ID = 4242
ALL_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "AllPrims", "namespace": "test",
    "fields": [
        {"name": "symbol", "type": "string"},
        {"name": "l", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "d", "type": "double"},
        {"name": "f", "type": "float"},
        {"name": "b", "type": "boolean"},
        {"name": "e", "type": {"type": "enum", "name": "Small", "symbols": ["A", "B", "C"]}},
        {"name": "big", "type": {"type": "enum", "name": "Big", "symbols": [f"S{k}" for k in range(200)]}},
        {"name": "note", "type": "string"},
        {"name": "e_again", "type": "test.Small"},
    ],
})

EXTREME_LONGS = [0, 1, -1, 63, -64, 64, -65, 2**31 - 1, -2**31, 2**31, 2**62, -2**62, 2**63 - 1, -2**63]
EXTREME_INTS = [0, 1, -1, 63, -64, 64, -65, 2**31 - 1, -2**31, 2**15, -2**15]
EXTREME_DOUBLES = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, -5e-324, 1.7976931348623157e308,
                   2.2250738585072014e-308, 1.0, -1.5]
EXTREME_FLOATS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 3.4028235e38, 1e-45, -1.0]


def rand_strings(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct strings: empty, ASCII, NUL, Latin, CJK, emoji, and long ones (two-byte length
    varints, up to the decoder's interning limit of MAX_SYMBOL_BYTES UTF-8 bytes, which is
    reached exactly; longer symbols are rejected: tests/unit/test_runtime_parts.py)."""
    pieces = ["a", "Z", "0", "\x00", "é", "ü", "ß", "中", "文", "😀", "𝄞", " ", "-", "\u07ff", "\uffff"]
    out, seen = ["", "A", "AA", "A\x00", "é" * (MAX_SYMBOL_BYTES // 2)], set()
    while len(out) < n:
        k = int(rng.choice([1, 3, 5, 12, 60]))
        s = "".join(pieces[j] for j in rng.integers(0, len(pieces), k))
        if s not in seen and len(s.encode()) <= MAX_SYMBOL_BYTES:
            seen.add(s)
            out.append(s)
    return list(dict.fromkeys(out))[:n]


def rand_col(rng: np.random.Generator, kind: str, n: int, nsym: int = 0) -> np.ndarray:
    """A column of ``kind`` with extremes at the front and random values after."""
    if kind == "long":
        v = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64, endpoint=True) >> rng.integers(0, 64, n)
        v[:len(EXTREME_LONGS)] = EXTREME_LONGS
        return v
    if kind == "int":
        v = (rng.integers(-2**31, 2**31, n, dtype=np.int64) >> rng.integers(0, 32, n)).astype(np.int32)
        v[:len(EXTREME_INTS)] = EXTREME_INTS
        return v
    if kind == "double":
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
        v[:len(EXTREME_DOUBLES)] = EXTREME_DOUBLES
        v[rng.random(n) < 0.02] = np.nan
        return v
    if kind == "float":
        v = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
        v[:len(EXTREME_FLOATS)] = EXTREME_FLOATS
        return v
    if kind == "boolean":
        return rng.random(n) < 0.5
    if kind in ("enum", "string"):
        v = rng.integers(0, nsym, n).astype(np.int32)
        v[:nsym] = np.arange(nsym)[: min(nsym, n)]  # every symbol at least once
        return v
    raise AssertionError(kind)


def rand_columns(schema: dict, rng: np.random.Generator, n: int, syms: list[str]) -> dict[str, np.ndarray]:
    cols = {}
    for p in plan_schema(schema):
        if p.kind == "map_double":
            continue
        cols[p.name] = rand_col(rng, p.kind, n, len(p.symbols) if p.kind == "enum" else len(syms))
    return cols


def records(schema: dict, cols: dict[str, np.ndarray], syms: list[str]) -> list[dict]:
    plans = plan_schema(schema)
    lists = {k: v.tolist() for k, v in cols.items()}
    n = len(next(iter(lists.values())))
    out = []
    for r in range(n):
        rec = {}
        for p in plans:
            v = lists[p.name][r]
            rec[p.name] = syms[v] if p.kind == "string" else p.symbols[v] if p.kind == "enum" else v
        out.append(rec)
    return out


def fastavro_value(schema: dict, sid: int, rec: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, rec)
    return frame(sid, buf.getvalue())


def assert_decoded_equal(schema: dict, batch, rows: list[int], values: list[bytes], k0: int = 0) -> None:
    """Columns of ``batch`` (good rows ``k0..``) equal fastavro's reading of ``values[rows]``."""
    plans = plan_schema(schema)
    strs = {p.name: batch.strings(p.name) for p in plans if p.kind == "string"}
    for k, r in enumerate(rows, start=k0):
        rec = fastavro.schemaless_reader(io.BytesIO(values[r][5:]), schema, None)
        for p in plans:
            want = rec[p.name]
            if p.kind == "string":
                assert strs[p.name][k] == want
                if p.name in batch.tables:
                    assert batch.tables[p.name].symbol(int(batch.columns[p.name][k])) == want
                continue
            got = batch.columns[p.name][k]
            if p.kind == "double":
                assert got.tobytes() == struct.pack("<d", want), (p.name, got, want)
            elif p.kind == "float":
                assert got.tobytes() == struct.pack("<f", want), (p.name, got, want)
            elif p.kind == "enum":
                assert p.symbols[int(got)] == want
            else:
                assert got == want and type(want) is (bool if p.kind == "boolean" else int)


CATALOG = ["Tick", "Bar", "Quote", "Trade", "RunningAggregate"]


@pytest.mark.parametrize("name", CATALOG + ["AllPrims"])
def test_random_records_roundtrip_byte_identical(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across runs (hash() is salted per process)
    if name == "AllPrims":
        schema, sid = ALL_SCHEMA, ALL_ID
        enc, dec = BatchEncoder(schema, schema_id=sid), BatchDecoder(schema, schema_id=sid, intern=("symbol",))
    else:
        info = STORE.by_name(name)
        schema, sid = info.parsed, info.id
        enc, dec = BatchEncoder(name), BatchDecoder(name)
    syms = rand_strings(rng, 300)
    cols = rand_columns(schema, rng, N, syms)
    recs = records(schema, cols, syms)
    ref = [fastavro_value(schema, sid, r) for r in recs]
    if name != "AllPrims":
        assert ref[:50] == [CODEC.encode(name, r) for r in recs[:50]]
    # list of str and SymbolTable symbol sources give the same bytes
    ours = enc.encode(cols, syms if "note" not in cols else {"symbol": syms, "note": SymbolTable(syms)})
    assert ours == ref
    assert split_values(*enc.encode_buffer(cols, syms)) == ref
    batch = dec.decode(ref)
    assert (batch.status == 0).all() and len(batch) == N
    assert_decoded_equal(schema, batch, list(range(N)), ref)
    if "symbol" in cols:
        assert batch.symbols is not None
        assert batch.symbols.decode(batch.columns["symbol"]) == [syms[c] for c in cols["symbol"]]
    for p in plan_schema(schema):
        if p.kind in ("long", "int", "boolean"):
            np.testing.assert_array_equal(batch.columns[p.name], cols[p.name])
    # re-encoding the decoded columns gives the same bytes again
    again = dict(batch.columns)
    for f in [p.name for p in plan_schema(schema) if p.kind == "string"]:
        if f not in batch.tables:
            t = SymbolTable()
            again[f] = t.intern_slices(batch.buffer, batch.columns[f + "_off"], batch.columns[f + "_len"])
            again[f + "_table"] = t
    tables = {f: again.pop(f + "_table", None) or batch.tables[f] for f in
              [p.name for p in plan_schema(schema) if p.kind == "string"]}
    assert enc.encode(again, tables) == ref


def test_decoded_dtypes_and_layout() -> None:
    batch = BatchDecoder(ALL_SCHEMA, schema_id=ALL_ID, intern=("symbol",)).decode([])
    dt = {k: v.dtype for k, v in batch.columns.items()}
    assert dt == {"symbol_off": np.int64, "symbol_len": np.int32, "symbol": np.int32, "l": np.int64,
                  "i": np.int32, "d": np.float64, "f": np.float32, "b": np.bool_, "e": np.int8,
                  "big": np.int32, "note_off": np.int64, "note_len": np.int32, "e_again": np.int8}
    assert batch.status.dtype == np.int8 and batch.status.shape == (0,) and len(batch) == 0
    t = TickDecoder().decode([])
    assert sorted(t.columns) == sorted(["sym", "sym_off", "sym_len", "ts", "seq", "kind", "price", "size", "side",
                                        "bid", "ask", "bid_size", "ask_size"])


def test_tick_generator_roundtrip() -> None:
    market = SyntheticMarket(n_symbols=50, seed=3)
    cols = generate(market, 5000)
    names = symbol_names(50, market.seed)
    values = BatchEncoder("Tick").encode(cols, names)
    assert values == [CODEC.encode("Tick", r) for r in to_records(cols, names)]
    table = SymbolTable(names)  # pre-seeded: codes equal the generator's
    batch = TickDecoder(symbols=table).decode(values)
    assert batch.symbols is table and (batch.status == 0).all()
    for k in ("sym", "ts", "seq", "kind", "price", "size", "side", "bid", "ask", "bid_size", "ask_size"):
        np.testing.assert_array_equal(batch.columns[k], cols[k])
    assert (validate_ticks(batch.columns, now_ns=market.start_ns) == 0).all()


def test_feature_vector_map_encoding() -> None:
    rng = np.random.default_rng(5)
    info = STORE.by_name("FeatureVector")
    enc = BatchEncoder("FeatureVector")
    syms = rand_strings(rng, 50)
    for keys in [("ret_1", "vol_20", "zscore_50"), (), ("ü", ""), tuple(f"feature_{j}" for j in range(40))]:
        n = 700
        cols = {"symbol": rng.integers(0, len(syms), n), "ts_event": rand_col(rng, "long", n),
                "seq": rand_col(rng, "long", n), "ts_ingest": rand_col(rng, "long", n)}
        vals = rng.standard_normal((n, len(keys)))
        vals[rng.random(vals.shape) < 0.1] = np.nan
        if keys:
            vals[0, :] = EXTREME_DOUBLES[: len(keys)] + [0.5] * max(0, len(keys) - len(EXTREME_DOUBLES))
        cols["values"] = vals
        recs = [{"symbol": syms[cols["symbol"][r]], "ts_event": int(cols["ts_event"][r]), "seq": int(cols["seq"][r]),
                 "ts_ingest": int(cols["ts_ingest"][r]), "values": dict(zip(keys, vals[r].tolist(), strict=True))}
                for r in range(n)]
        ref = [CODEC.encode("FeatureVector", r) for r in recs]
        assert enc.encode(cols, syms, map_keys=keys) == ref, keys
        # one column per feature name works too
        per_key = {k: v for k, v in cols.items() if k != "values"} | {k: vals[:, j] for j, k in enumerate(keys)}
        if keys:
            assert enc.encode(per_key, syms, map_keys=keys) == ref
        back = [fastavro.schemaless_reader(io.BytesIO(v[5:]), info.parsed, None) for v in ref[:3]]
        assert [list(b["values"]) for b in back] == [list(keys)] * 3
    with pytest.raises(ValueError, match="duplicate"):
        enc.encode(cols, syms, map_keys=("a", "a"))
    with pytest.raises(SchemaError):
        BatchDecoder("FeatureVector")


def good_ticks(n: int, seed: int = 11) -> tuple[list[bytes], list[dict]]:
    market = SyntheticMarket(n_symbols=20, seed=seed)
    cols = generate(market, n)
    names = symbol_names(20, market.seed)
    names[3] = "ÅBC中"  # non-ASCII symbol
    return BatchEncoder("Tick").encode(cols, names), list(to_records(cols, names))


def tick_body(rec: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, STORE.by_name("Tick").parsed, rec)
    return buf.getvalue()


def test_corrupt_records_flagged_good_rows_intact() -> None:
    good, recs = good_ticks(400)
    tid = STORE.by_name("Tick").id
    bar = CODEC.encode("Bar", {"symbol": "X", "ts_event": MIN_TS_NS, "interval_ns": 1, "open": 1.0, "high": 1.0,
                               "low": 1.0, "close": 1.0, "volume": 0.0, "vwap": float("nan"), "trades": 0})
    body = tick_body(recs[0])
    sym_len = len(recs[0]["symbol"].encode())
    after_sym = body[1 + sym_len:]
    side_at = len(tick_body({**recs[0], "side": 0})) - 4 * 8 - 1  # side precedes bid/ask/bid_size/ask_size

    def with_side(varint: bytes) -> bytes:
        b = tick_body({**recs[0], "side": 0})
        return frame(tid, b[:side_at] + varint + b[side_at + 1:])

    bad: list[tuple[bytes | None, int]] = [
        (b"", Status.TRUNCATED),
        (b"\x00\x00", Status.TRUNCATED),
        (b"\x01" + good[0][1:], Status.BAD_MAGIC),
        (b"garbage!garbage!garbage!", Status.BAD_MAGIC),
        (frame(9999, body), Status.UNKNOWN_SCHEMA_ID),
        (bar, Status.WRONG_SCHEMA),
        (good[1][:-1], Status.TRUNCATED),
        (good[1][:6], Status.TRUNCATED),
        (good[2] + b"\x00", Status.TRAILING_BYTES),
        (None, Status.NULL_VALUE),
        (frame(tid, b"\x01" + after_sym), Status.NEGATIVE_LENGTH),  # zig-zag -1
        (frame(tid, b"\xff" * 10 + b"\x7f" + after_sym), Status.VARINT_OVERFLOW),
        (frame(tid, b"\xff" * 9 + b"\x02" + after_sym), Status.VARINT_OVERFLOW),  # 10th byte > 1
        (frame(tid, bytes([2 * 2]) + b"\xff\xfe" + after_sym), Status.INVALID_UTF8),
        (frame(tid, bytes([2 * 3]) + "中".encode()[:2] + b"A" + after_sym), Status.INVALID_UTF8),
        (frame(tid, bytes([2 * 3]) + b"\xed\xa0\x80" + after_sym), Status.INVALID_UTF8),  # surrogate
        (frame(tid, bytes([2 * 2]) + b"\xc0\x80" + after_sym), Status.INVALID_UTF8),  # overlong NUL
        (frame(tid, bytes([2 * 50]) + b"x"), Status.TRUNCATED),
        (with_side(b"\x80\x80\x80\x80\x80\x01"), Status.VARINT_OVERFLOW),  # int beyond 32 bits
    ]
    # enum index 2 (TickKind has 2 symbols) and -1: after symbol, the varints ts and seq, then kind
    head, rest = body[: 1 + sym_len], body[1 + sym_len:]
    p = 0
    for _ in range(2):
        while rest[p] & 0x80:
            p += 1
        p += 1
    for idx_byte in (b"\x04", b"\x01"):
        bad.append((frame(tid, head + rest[:p] + idx_byte + rest[p + 1:]), Status.BAD_ENUM))
    values: list[bytes | None] = []
    expect: list[int] = []
    good_rows: list[int] = []
    for j, (v, code) in enumerate(bad):
        values.append(good[10 + j])
        good_rows.append(len(values) - 1)
        expect.append(0)
        values.append(v)
        expect.append(int(code))
    values += good[100:]
    good_rows += list(range(len(expect), len(values)))
    expect += [0] * (len(values) - len(expect))
    batch = TickDecoder().decode(values)
    assert batch.status.tolist() == expect
    assert batch.index.tolist() == good_rows and len(batch) == len(good_rows)
    assert batch.n_bad == len(bad)
    assert [r for r, _ in batch.rejects()] == [r for r, c in enumerate(expect) if c]
    assert all(m == status_message(c) for (_, m), c in zip(batch.rejects(), [c for c in expect if c], strict=True))
    cols = batch.columns
    want = [recs[10 + j] for j in range(len(bad))] + recs[100:]
    assert batch.symbols is not None
    assert batch.symbols.decode(cols["sym"]) == [r["symbol"] for r in want]
    assert cols["ts"].tolist() == [r["ts_event"] for r in want]
    assert cols["price"].tolist() == [r["price"] for r in want]
    assert cols["side"].tolist() == [r["side"] for r in want]
    # every rejected record is one AvroCodec also refuses (it has no codes: only accept/refuse), but
    # for two that fastavro lets through: an int beyond 32 bits and a negative enum index
    lenient = {with_side(b"\x80\x80\x80\x80\x80\x01"): ("side", 2**34), bad[-1][0]: ("kind", "QUOTE")}
    for v, c in zip(values, expect, strict=True):
        if c and v in lenient:
            k, want_v = lenient[v]
            assert CODEC.decode(v, expect="Tick")[k] == want_v
        elif c:
            with pytest.raises(DecodeError):
                CODEC.decode(v, expect="Tick")


def test_fuzzed_records_agree_with_avrocodec() -> None:
    """Random byte flips, inserts, deletes: accepted by us iff AvroCodec accepts, same values."""
    rng = np.random.default_rng(99)
    good, _ = good_ticks(3000, seed=5)
    values = []
    for v in good:
        b = bytearray(v)
        op = rng.integers(0, 4)
        pos = int(rng.integers(0, len(b)))
        if op == 0:
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            b.insert(pos, int(rng.integers(0, 256)))
        elif op == 2:
            del b[pos]
        else:
            b[pos] = int(rng.integers(0, 256))
        values.append(bytes(b))
    batch = TickDecoder().decode(values)
    k = n_ok = lenient = 0
    for r, v in enumerate(values):
        try:
            rec = CODEC.decode(v, expect="Tick")
        except DecodeError:
            rec = None
        code = int(batch.status[r])
        if rec is None:
            assert code != 0, (r, v)
            continue
        if code in (Status.VARINT_OVERFLOW, Status.BAD_ENUM):
            # stricter than fastavro, which wraps varints past 64 bits, reads an int past 32 bits as
            # a Python int and takes enum index -1 as the last symbol
            lenient += 1
            continue
        assert code == 0, (r, v, status_message(code))
        assert batch.symbols is not None
        assert batch.symbols.symbol(int(batch.columns["sym"][k])) == rec["symbol"]
        assert int(batch.columns["ts"][k]) == rec["ts_event"] and int(batch.columns["seq"][k]) == rec["seq"]
        assert int(batch.columns["side"][k]) == rec["side"]
        for f in ("price", "size", "bid", "ask", "bid_size", "ask_size"):
            assert batch.columns[f][k].tobytes() == struct.pack("<d", rec[f])
        k += 1
        n_ok += 1
    assert k == len(batch) and 0 < n_ok < len(values) and lenient < len(values) // 50


def test_gather_values_paths() -> None:
    good, _ = good_ticks(50)
    base = TickDecoder().decode(good)
    for variant in ([bytearray(v) for v in good], [memoryview(v) for v in good], tuple(good)):
        b = TickDecoder().decode(variant)  # type: ignore[arg-type]
        assert (b.status == 0).all()
        for k in base.columns:
            if not k.endswith("_off"):
                np.testing.assert_array_equal(b.columns[k], base.columns[k])
    buf, starts, ends, nulls = gather_values([b"ab", None, b"", b"x" * 300, None])
    assert [buf[s:e].tobytes() for s, e in zip(starts, ends, strict=True)] == [b"ab", b"", b"", b"x" * 300, b""]
    assert nulls.tolist() == [1, 4]
    buf, starts, ends, nulls = gather_values([])
    assert starts.size == 0 and nulls is None


def test_schema_id_classification_and_cache() -> None:
    d1, d2 = BatchDecoder("Bar"), BatchDecoder("Bar", intern=())
    assert d1._fn is d2._fn  # compiled once per schema fingerprint
    assert "symbol" in d1.decode([]).columns and "symbol" not in d2.decode([]).columns
    tick = CODEC.encode("Tick", good_ticks(1)[1][0])
    out = d1.decode([tick, frame(0, b""), frame(2**32 - 1, b"")])
    assert out.status.tolist() == [Status.WRONG_SCHEMA, Status.UNKNOWN_SCHEMA_ID, Status.UNKNOWN_SCHEMA_ID]
    assert "_decode(buf, starts, ends" in decoder_source(plan_schema(STORE.by_name("Bar").parsed))
    with pytest.raises(SchemaError):
        BatchDecoder("JobCommand")  # union field
    with pytest.raises(SchemaError):
        BatchDecoder(ALL_SCHEMA)  # parsed schema without an id


def test_encoder_rejects_values_the_schema_cannot_hold() -> None:
    enc = BatchEncoder(ALL_SCHEMA, schema_id=ALL_ID)
    rng = np.random.default_rng(1)
    syms = ["a", "b"]
    cols = {k: v[:10] for k, v in rand_columns(ALL_SCHEMA, rng, 300, syms).items()}
    enc.encode(cols, syms)
    for col, bad in [("i", np.full(10, 2**31)), ("e", np.full(10, 3)), ("big", np.full(10, -1)),
                     ("symbol", np.full(10, 2)), ("l", np.zeros(9, np.int64)), ("l", np.zeros(10))]:
        with pytest.raises(ValueError):
            enc.encode({**cols, col: bad}, syms)
    with pytest.raises(ValueError, match="needs symbols"):
        enc.encode(cols)
    with pytest.raises(KeyError):
        enc.encode({k: v for k, v in cols.items() if k != "d"}, syms)
    assert enc.encode({k: v[:0] for k, v in cols.items()}, syms) == []


# ---- SymbolTable ------------------------------------------------------------------------------
def test_symbol_table_basics_and_roundtrip() -> None:
    t = SymbolTable(["AAPL", "MSFT"])
    assert t.code("MSFT") == 1 and t.code("中文") == 2 and t.code("") == 3 and len(t) == 4
    assert t.get("nope") is None and len(t) == 4 and "AAPL" in t
    assert t.codes(["", "AAPL", "new", "new"]).tolist() == [3, 0, 4, 4]
    assert t.symbols == ("AAPL", "MSFT", "中文", "", "new") and t.symbol(2) == "中文"
    data = t.to_bytes()
    t2 = SymbolTable.from_bytes(data)
    assert t2 == t and t2.symbols == t.symbols and t2.to_bytes() == data
    assert t2.code("next") == 5 and t.code("next") == 5  # both keep growing the same way
    for broken in (b"", b"XXXX\x01\x00\x00\x00\x00", data[:-1], data + b"!"):
        with pytest.raises(ValueError):
            SymbolTable.from_bytes(broken)
    dup = SymbolTable(["x", "y"]).to_bytes().replace(b"xy", b"xx")
    with pytest.raises(ValueError, match="duplicate"):
        SymbolTable.from_bytes(dup)
    with pytest.raises(IndexError):
        t.symbol(-1)
    before = t.to_bytes()
    raw = np.frombuffer(b"okAB\xff\xfe", np.uint8)
    with pytest.raises(ValueError, match="slice 1 is not valid UTF-8"):
        t.intern_slices(raw, np.array([0, 4]), np.array([2, 2]))
    assert t.to_bytes() == before  # nothing was added
    assert t.intern_slices(raw, np.array([0, 2, 0]), np.array([2, 2, 4])).tolist() == [6, 7, 8]
    assert t.symbols[6:] == ("ok", "AB", "okAB")
    # runs of one symbol, and neighbours of the same length that differ (the run shortcut)
    names = ["AAPL", "AAPL", "AAPX", "AAPX", "AAPL", "MSFT", "AAPL", "ok", "ok"]
    raw = np.frombuffer("".join(names).encode(), np.uint8)
    lens = np.array([len(n) for n in names])
    codes = t.intern_slices(raw, np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    assert [t.symbols[c] for c in codes] == names


@pytest.mark.parametrize("mask", [0, 1, 0xF, 2**64 - 1])
def test_symbol_table_collision_safety(mask: int) -> None:
    """Narrowed hashes force full-hash collisions: codes stay one per distinct symbol."""
    rng = np.random.default_rng(mask % 1000)
    strs = rand_strings(rng, 1500 if mask < 2**16 else 20000)
    t = SymbolTable(hash_mask=mask)
    ref: dict[str, int] = {}
    for chunk in range(0, len(strs), 500):
        part = [strs[int(j)] for j in rng.integers(0, min(len(strs), chunk + 500), 700)]
        codes = t.codes(part).tolist()
        for s, c in zip(part, codes, strict=True):
            assert ref.setdefault(s, c) == c
    assert len(set(ref.values())) == len(ref) == len(t)
    assert sorted(ref.values()) == list(range(len(t)))
    assert all(t.symbol(c) == s for s, c in ref.items())
    assert SymbolTable.from_bytes(t.to_bytes()).symbols == t.symbols


def test_symbol_codes_stable_across_batches() -> None:
    table = SymbolTable()
    dec = TickDecoder(symbols=table)
    good, recs = good_ticks(300)
    first = dec.decode(good[:100])
    second = dec.decode(good[100:])
    assert table.decode(np.concatenate([first.columns["sym"], second.columns["sym"]])) == [r["symbol"] for r in recs]
    restored = TickDecoder(symbols=SymbolTable.from_bytes(table.to_bytes())).decode(good[100:])
    np.testing.assert_array_equal(restored.columns["sym"], second.columns["sym"])


# ---- validation ----------------------------------------------------------------------------------
def _expected_code(rec: dict) -> int:
    try:
        validate_tick(rec)
        return 0
    except ValidationError as exc:
        msg = str(exc)
    if "before 2000" in msg:
        return Status.TS_TOO_OLD
    if "in the future" in msg:
        return Status.TS_IN_FUTURE
    if "symbol is empty" in msg:
        return Status.EMPTY_SYMBOL
    if "crossed quote" in msg:
        return Status.CROSSED_QUOTE
    if msg.startswith("side must"):
        return Status.BAD_SIDE
    if "TRADE" in msg:
        return Status.TRADE_ZERO_SIZE
    name = msg.split(" must")[0]
    return {"price": Status.BAD_PRICE, "size": Status.BAD_SIZE, "bid": Status.BAD_BID, "ask": Status.BAD_ASK,
            "bid_size": Status.BAD_BID_SIZE, "ask_size": Status.BAD_ASK_SIZE}[name]


def test_validate_ticks_agrees_with_validate_tick() -> None:
    rng = np.random.default_rng(2024)
    now = time.time_ns()
    _, recs = good_ticks(4000, seed=8)
    bad_vals = [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -1e-300]
    out = []
    for r in recs:
        r = dict(r)
        r["ts_event"] = now - int(rng.integers(0, 10**12))
        for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):
            what = rng.integers(0, 9)
            if what == 0:
                r["ts_event"] = int(rng.choice([MIN_TS_NS - 1, 0, -2**63, MIN_TS_NS + 1,
                                                now + MAX_FUTURE_NS + 3_600 * 10**9, 2**63 - 1]))
            elif what == 1:
                r["symbol"] = ""
            elif what in (2, 3):
                k = str(rng.choice(["price", "size", "bid", "ask", "bid_size", "ask_size"]))
                r[k] = float(rng.choice(bad_vals))
            elif what == 4:
                r["bid"], r["ask"] = r["ask"] + 0.01, r["bid"]
            elif what == 5:
                r["side"] = int(rng.choice([2, -2, 2**31 - 1, -2**31, 1, 0, -1]))
            elif what == 6:
                r["kind"], r["size"] = "TRADE", float(rng.choice([0.0, -0.0, 100.0]))
            elif what == 7:
                r["kind"] = str(rng.choice(["TRADE", "QUOTE"]))
            else:
                r["bid"] = r["ask"]  # equal is not crossed
        out.append(r)
    values = [CODEC.encode("Tick", r) for r in out]
    expected = [_expected_code(r) for r in out]
    assert len(set(expected)) == 13  # every rule (and ok) is exercised
    dec = TickDecoder()
    batch = dec.decode(values)
    codes = validate_ticks(batch.columns, now_ns=now)
    assert codes.dtype == np.int8 and codes.tolist() == expected
    no_len = {k: v for k, v in batch.columns.items() if not k.startswith("sym_")}
    assert validate_ticks(no_len, now_ns=now, symbols=batch.symbols).tolist() == expected
    checked = dec.decode(values, validate=True, now_ns=now)
    assert checked.status.tolist() == expected
    assert checked.index.tolist() == [r for r, c in enumerate(expected) if c == 0]
    assert checked.columns["seq"].tolist() == [out[r]["seq"] for r in checked.index.tolist()]
    assert all(status_message(c) == STATUS_MESSAGES[c] for c in set(expected))


def test_status_messages_cover_every_code() -> None:
    assert set(STATUS_MESSAGES) == {int(s) for s in Status}
    assert all(status_message(s) and status_message(s) != "ok" for s in Status if s)
    assert "unknown" in status_message(99)


# an array of records with every primitive kind (and an enum), plus a map, after scalar fields
ARR_ID = 4343
ARR_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "WithArrays", "namespace": "test",
    "fields": [
        {"name": "key", "type": "string"},
        {"name": "items", "type": {"type": "array", "items": {
            "type": "record", "name": "Item", "fields": [
                {"name": "s", "type": "string"}, {"name": "l", "type": "long"}, {"name": "i", "type": "int"},
                {"name": "d", "type": "double"}, {"name": "f", "type": "float"}, {"name": "b", "type": "boolean"},
                {"name": "e", "type": {"type": "enum", "name": "Col", "symbols": ["R", "G", "B"]}}]}}},
        {"name": "x", "type": "double"},
        {"name": "fixed", "type": {"type": "array", "items": {
            "type": "record", "name": "Pair", "fields": [{"name": "u", "type": "double"},
                                                          {"name": "v", "type": "boolean"}]}}},
        {"name": "m", "type": {"type": "map", "values": "double"}},
        {"name": "again", "type": {"type": "array", "items": "test.Pair"}},
    ],
})


def test_array_of_records_encoding_matches_fastavro() -> None:
    """Arrays of records (empty ones, one-element, 200-element: two-byte count varints) with NaN,
    inf, extreme ints and unicode strings: the same bytes as fastavro's writer, and fastavro reads
    them back to the input values."""
    rng = np.random.default_rng(17)
    syms = rand_strings(rng, 40)
    enc = BatchEncoder(ARR_SCHEMA, schema_id=ARR_ID)
    n = 500
    counts = rng.integers(0, 6, n)
    counts[:4] = [0, 1, 200, 0]
    pairs = rng.integers(0, 3, n)
    again = rng.integers(0, 2, n)
    tot = int(counts.sum())
    cols: dict[str, np.ndarray] = {"key": rng.integers(0, len(syms), n), "x": rand_col(rng, "double", n),
                                   "items": counts, "fixed": pairs, "again": again,
                                   "fixed.u": rand_col(rng, "double", int(pairs.sum())),
                                   "fixed.v": rand_col(rng, "boolean", int(pairs.sum())),
                                   "again.u": rand_col(rng, "double", int(again.sum())),
                                   "again.v": rand_col(rng, "boolean", int(again.sum())),
                                   "m": rng.standard_normal((n, 2))}
    for k, kind in (("l", "long"), ("i", "int"), ("d", "double"), ("f", "float"), ("b", "boolean")):
        cols[f"items.{k}"] = rand_col(rng, kind, tot)
    cols["items.s"] = rng.integers(0, len(syms), tot)
    cols["items.e"] = rng.integers(0, 3, tot)
    tables = {"key": syms, "items.s": syms}
    got = enc.encode(cols, tables, map_keys={"m": ["ü", "b"]})
    L = {k: v.tolist() for k, v in cols.items() if k != "m"}
    st = np.concatenate([[0], np.cumsum(counts)]).tolist()
    sp = np.concatenate([[0], np.cumsum(pairs)]).tolist()
    sa = np.concatenate([[0], np.cumsum(again)]).tolist()
    recs = [{"key": syms[L["key"][r]], "x": L["x"][r],
             "items": [{"s": syms[L["items.s"][e]], "l": L["items.l"][e], "i": L["items.i"][e], "d": L["items.d"][e],
                        "f": L["items.f"][e], "b": L["items.b"][e], "e": "RGB"[L["items.e"][e]]}
                       for e in range(st[r], st[r + 1])],
             "fixed": [{"u": L["fixed.u"][e], "v": L["fixed.v"][e]} for e in range(sp[r], sp[r + 1])],
             "m": {"ü": float(cols["m"][r, 0]), "b": float(cols["m"][r, 1])},
             "again": [{"u": L["again.u"][e], "v": L["again.v"][e]} for e in range(sa[r], sa[r + 1])]}
            for r in range(n)]
    assert got == [fastavro_value(ARR_SCHEMA, ARR_ID, r) for r in recs]
    back = fastavro.schemaless_reader(io.BytesIO(got[2][5:]), ARR_SCHEMA, None)
    assert len(back["items"]) == 200 and back["items"][0]["s"] == syms[L["items.s"][st[2]]]
    assert fastavro.schemaless_reader(io.BytesIO(got[0][5:]), ARR_SCHEMA, None)["items"] == []
    with pytest.raises(ValueError, match="counts sum"):
        enc.encode({**cols, "items": counts + 1}, tables, map_keys={"m": ["ü", "b"]})
    with pytest.raises(ValueError, match="negative"):
        enc.encode({**cols, "items": -counts}, tables, map_keys={"m": ["ü", "b"]})
    with pytest.raises(SchemaError):
        BatchDecoder(ARR_SCHEMA, schema_id=ARR_ID)
