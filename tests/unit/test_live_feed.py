"""The live feed's stamped ticks, the ``ts_event`` reader of ``consume --latency`` and its quantiles,
and the CLI's checks of ``produce --live`` / ``consume --latency`` (no broker: they fail first).
References: fastavro (the bytes a stamped tick decodes to, the records the reader reads), closed
forms (linear quantiles of 1..1000)."""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import fastavro
import fastavro.utils
import numpy as np
import pytest

from mystocks_gpu.data.live_feed import (
    LatencyDecodeError,
    LatencyWindow,
    StampedTicks,
    latency_fields,
    leading_longs,
    live_items,
)
from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names, to_records
from mystocks_gpu.infra.clock import ManualClock
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.schema_store import SchemaStore
from tests.conftest import run_cli

SCHEMAS = Path(__file__).resolve().parents[2] / "mystocks_gpu" / "schemas" / "avsc"


def _parsed(file: str) -> object:
    return fastavro.parse_schema(json.loads((SCHEMAS / file).read_text()))


def _fastavro_framed(schema: object, schema_id: int, rec: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, rec)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


def _ticks(n: int, seed: int = 3) -> tuple[dict[str, np.ndarray], list[str]]:
    names = symbol_names(12, seed)
    return generate(SyntheticMarket(n_symbols=12, seed=seed), n), names


def test_stamped_ticks_decode_to_the_generators_ticks_with_the_stamp_as_event_time() -> None:
    cols, names = _ticks(300)
    enc = BatchEncoder("mystocks.md.Tick", SchemaStore())
    stamped = StampedTicks(enc, cols, names, 1_780_000_000_000_000_000)
    assert stamped.exact and len(stamped) == 300
    schema = _parsed("tick.avsc")
    want = list(to_records(cols, names))
    # the last stamp is a short varint: those ticks are encoded again instead of spliced
    for i, j, ts in ((0, 1, 1_780_000_000_123_456_789), (5, 80, 1_790_000_000_000_000_001), (250, 300, 18_000_000_005)):
        got = [fastavro.schemaless_reader(io.BytesIO(v[5:]), schema, None) for v in stamped.values(i, j, ts)]
        assert got == [dict(w, ts_event=ts) for w in want[i:j]]


def test_live_items_stamp_each_tick_when_it_is_taken_chunk_after_chunk() -> None:
    cols, names = _ticks(5)
    clock = ManualClock(now_ns=1_780_000_000_000_000_000)
    schema = _parsed("tick.avsc")
    tape = ({k: v[lo:lo + 2] for k, v in cols.items()} for lo in range(0, 5, 2))
    items = live_items(BatchEncoder("mystocks.md.Tick", SchemaStore()), tape, names, clock)
    seen = []
    for step_s in (0.0, 0.0015, 0.25, 3.0, 0.0000004):
        clock.advance(step_s)
        key, value, ts_ms = next(items)
        rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        assert rec["ts_event"] == clock.now_ns() and ts_ms == clock.now_ns() // 1_000_000
        assert key == rec["symbol"].encode()
        seen.append(rec["seq"])
    assert seen == cols["seq"].tolist() and next(items, None) is None


@pytest.mark.parametrize("file,first", [("tick.avsc", "symbol"), ("feature_vector.avsc", "symbol"),
                                        ("signal.avsc", "symbol"), ("task_status.avsc", "job_id"),
                                        ("bar.avsc", "symbol")])
def test_leading_longs_read_ts_event_as_fastavro_does(file: str, first: str) -> None:
    schema = json.loads((SCHEMAS / file).read_text())
    parsed = fastavro.parse_schema(schema)
    rng = random.Random(file)
    base = next(iter(fastavro.utils.generate_many(parsed, 1)))
    for ts in (0, 1, -1, 63, 64, -65, 2**62, -(2**63), 2**63 - 1, *(rng.randrange(-(2**63), 2**63) for _ in range(50))):
        rec = dict(base, ts_event=ts, **{first: "".join(rng.choice("ABCé€") for _ in range(rng.randrange(0, 300)))})
        assert leading_longs(_fastavro_framed(parsed, 17, rec), 2)[1] == ts


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00\x00\x07", b"\x01\x00\x00\x00\x07\x02A\x02",
                                   b"\x00\x00\x00\x00\x07\x0aAB\x02",  # a string of 5 bytes with 2
                                   b"\x00\x00\x00\x00\x07\x02A\xff\xff"])  # a long cut short
def test_leading_longs_reject_what_is_not_a_framed_record(value: bytes) -> None:
    with pytest.raises(LatencyDecodeError):
        leading_longs(value, 2)


def test_latency_window_quantiles_are_the_linear_ones() -> None:
    w = LatencyWindow(0.0, [float(x) for x in random.Random(1).sample(range(1, 1001), 1000)])
    q = w.summary()
    # 1..1000: the linear quantile at p is 1 + p * 999
    assert q == {"count": 1000, "p50_ms": 500.5, "p99_ms": pytest.approx(990.01), "p999_ms": pytest.approx(999.001),
                 "max_ms": 1000.0}
    assert LatencyWindow(0.0).summary() == {"count": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None,
                                            "max_ms": None}


@pytest.mark.parametrize("args,says", [
    (("produce", "ticks", "--synthetic", "--live"), "--live needs --rate"),
    (("produce", "ticks", "--synthetic", "--live", "--rate", "100", "--start", "now"), "--start does not apply"),
    (("produce", "ticks", "--synthetic", "--rate", "0"), "--rate must be a number > 0"),
    (("produce", "ticks", "--synthetic", "--count", "0"), "--count 0 (no end, until Ctrl-C) needs --rate"),
    (("produce", "ticks", "--synthetic", "--count", "-3", "--rate", "10"), "--count must be >= 1 (or 0: no end)"),
    (("produce", "ticks", "--synthetic", "--live", "--rate", "nan"), "--rate must be a number > 0"),
    (("consume", "models", "--latency"), "the records of models (mystocks.ml.ModelRecord) do not start that way"),
    (("consume", "factors.values", "--latency"), "(raw bytes)"),
    (("consume", "md.ticks", "--latency", "0"), "--latency takes a reporting interval in seconds > 0"),
])
def test_cli_rejects_bad_live_and_latency_options_before_any_broker(args: tuple[str, ...], says: str) -> None:
    r = run_cli(*args, env={"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": "2"})
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "no Kafka broker" not in r.stderr


@pytest.mark.parametrize("file,ingest_at", [("feature_vector.avsc", 3), ("order_score.avsc", 2),
                                            ("order_schedule.avsc", 2), ("tick.avsc", None), ("signal.avsc", None)])
def test_leading_longs_read_ts_event_and_ts_ingest_as_fastavro_does(file: str, ingest_at: int | None) -> None:
    schema = json.loads((SCHEMAS / file).read_text())
    assert latency_fields(schema["fields"]) == (1, ingest_at)
    parsed = fastavro.parse_schema(schema)
    rng = random.Random(file)
    base = next(iter(fastavro.utils.generate_many(parsed, 1)))
    names = [f["name"] for f in schema["fields"]]
    for _ in range(40):
        rec = dict(base, ts_event=rng.randrange(-(2**63), 2**63),
                   **{names[0]: "".join(rng.choice("XYZ€") for _ in range(rng.randrange(0, 40)))})
        if ingest_at is not None:
            rec["ts_ingest"] = rng.randrange(-(2**63), 2**63)
        got = leading_longs(_fastavro_framed(parsed, 3, rec), 1 + (ingest_at or 1))
        assert got[0] == len(rec[names[0]].encode()) and got[1] == rec["ts_event"]
        if ingest_at is not None:
            assert got[ingest_at] == rec["ts_ingest"]


def test_latency_fields_refuse_records_that_do_not_start_with_a_string_and_ts_event() -> None:
    model = json.loads((SCHEMAS / "model_record.avsc").read_text())["fields"]
    assert latency_fields(model) is None
    assert latency_fields([{"name": "a", "type": "string"}, {"name": "ts_event", "type": "int"}]) is None
    # ts_ingest after a field that is not a varint does not count
    assert latency_fields([{"name": "a", "type": "string"}, {"name": "ts_event", "type": "long"},
                           {"name": "x", "type": "double"}, {"name": "ts_ingest", "type": "long"}]) == (1, None)


def test_latency_window_reports_the_hop_to_the_worker_when_records_carry_it() -> None:
    w = LatencyWindow(0.0, [1.0, 2.0, 3.0], [0.5, 1.5, 100.5])
    q = w.summary()
    # linear quantile of (0.5, 1.5, 100.5) at 0.99: position 1.98, so 1.5 + 0.98 * 99
    assert q["to_worker_p50_ms"] == 1.5 and q["to_worker_p99_ms"] == pytest.approx(1.5 + 0.98 * 99.0)
    assert "to_worker_p50_ms" not in LatencyWindow(0.0, [1.0]).summary()
