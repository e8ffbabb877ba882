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
    LatencyWindow,
    StampedTicks,
    latency_fields,
    leading_longs_batch,
    paced_feed,
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


def _paced(n: int, rate: float, slow_send_s: float, stop_after: int | None = None
           ) -> tuple[list[tuple[float, list[bytes], list[bytes], int]], int, dict[str, np.ndarray], list[str], ManualClock]:
    """A paced feed of ``n`` ticks (tape chunks of 7) on a manual clock; each send takes ``slow_send_s``.
    Returns the sends (clock time since the start, values, keys, ts_ms) and the count returned."""
    cols, names = _ticks(n)
    clock = ManualClock(now_ns=1_780_000_000_000_000_000)
    t0 = clock.monotonic()
    sends: list[tuple[float, list[bytes], list[bytes], int]] = []

    def send(values: list[bytes], keys: list[bytes], ts_ms: int) -> None:
        sends.append((clock.monotonic() - t0, values, keys, ts_ms))
        clock.advance(slow_send_s)

    tape = ({k: v[lo:lo + 7] for k, v in cols.items()} for lo in range(0, n, 7))
    got = paced_feed(tape, names, BatchEncoder("mystocks.md.Tick", SchemaStore()), rate, send, clock=clock,
                     stopped=lambda: stop_after is not None and len(sends) >= stop_after)
    return sends, got, cols, names, clock


@pytest.mark.parametrize("slow_send_s", [0.0, 0.0031])
def test_a_paced_feed_sends_what_is_due_stamped_with_its_send_time(slow_send_s: float) -> None:
    rate, n = 2_000.0, 60
    sends, got, cols, names, _ = _paced(n, rate, slow_send_s)
    schema = _parsed("tick.avsc")
    want = list(to_records(cols, names))
    assert got == n == sum(len(v) for _, v, _, _ in sends)
    done = 0
    for t, values, keys, ts_ms in sends:
        # what is due at t: rate x t + 1 ticks in all, none early, none held back (within a tape chunk)
        assert done < int(t * rate) + 1 and len(values) <= int(t * rate) + 1 - done
        recs = [fastavro.schemaless_reader(io.BytesIO(v[5:]), schema, None) for v in values]
        stamp = recs[0]["ts_event"]
        assert recs == [dict(w, ts_event=stamp) for w in want[done:done + len(values)]]  # in tape order
        assert ts_ms == stamp // 1_000_000 and keys == [r["symbol"].encode() for r in recs]
        assert stamp == 1_780_000_000_000_000_000 + round(t * 1e9)  # the clock's time at the send
        done += len(values)
    if slow_send_s:  # a send of 3.1 ms leaves 6-7 ticks due: one call for them, not one each
        assert max(len(v) for _, v, _, _ in sends) >= 6 and len(sends) < n / 3


def test_a_paced_feed_stops_when_asked() -> None:
    sends, got, *_ = _paced(60, 2_000.0, 0.0, stop_after=5)
    assert len(sends) == 5 and got == sum(len(v) for _, v, _, _ in sends) == 5


@pytest.mark.parametrize("file,first", [("tick.avsc", "symbol"), ("feature_vector.avsc", "symbol"),
                                        ("signal.avsc", "symbol"), ("task_status.avsc", "job_id"),
                                        ("bar.avsc", "symbol")])
def test_leading_longs_read_ts_event_as_fastavro_does(file: str, first: str) -> None:
    schema = json.loads((SCHEMAS / file).read_text())
    parsed = fastavro.parse_schema(schema)
    rng = random.Random(file)
    base = next(iter(fastavro.utils.generate_many(parsed, 1)))
    stamps = (0, 1, -1, 63, 64, -65, 2**62, -(2**63), 2**63 - 1, *(rng.randrange(-(2**63), 2**63) for _ in range(50)))
    values = []
    for ts in stamps:
        rec = dict(base, ts_event=ts, **{first: "".join(rng.choice("ABCé€") for _ in range(rng.randrange(0, 300)))})
        values.append(_fastavro_framed(parsed, 17, rec))
    out, ok = leading_longs_batch([*values, None], 2)  # a null value last
    assert ok.tolist() == [True] * len(stamps) + [False] and out[:-1, 1].tolist() == list(stamps)


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00\x00\x07", b"\x01\x00\x00\x00\x07\x02A\x02",
                                   b"\x00\x00\x00\x00\x07\x0aAB\x02",  # a string of 5 bytes with 2
                                   b"\x00\x00\x00\x00\x07\x02A\xff\xff",  # a long cut short
                                   b"\x00\x00\x00\x00\x07\x02A" + b"\xff" * 9 + b"\x03",  # bits past the 64th
                                   b"\x00\x00\x00\x00\x07\x01A\x02"])  # a negative string length
def test_leading_longs_reject_what_is_not_a_framed_record(value: bytes) -> None:
    good = b"\x00\x00\x00\x00\x07\x02A\x02"  # "A", then the long 1
    out, ok = leading_longs_batch([good, value, good], 2)
    assert ok.tolist() == [True, False, True] and out[[0, 2]].tolist() == [[1, 1], [1, 1]]


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
    recs, values = [], []
    for _ in range(40):
        rec = dict(base, ts_event=rng.randrange(-(2**63), 2**63),
                   **{names[0]: "".join(rng.choice("XYZ€") for _ in range(rng.randrange(0, 40)))})
        if ingest_at is not None:
            rec["ts_ingest"] = rng.randrange(-(2**63), 2**63)
        recs.append(rec)
        values.append(_fastavro_framed(parsed, 3, rec))
    batch, ok = leading_longs_batch(values, 1 + (ingest_at or 1))
    assert ok.all()
    for rec, got in zip(recs, batch.tolist(), strict=True):
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


def test_the_first_signal_asks_the_feed_to_stop_and_a_second_one_interrupts() -> None:
    import os
    import signal

    from mystocks_gpu.cli.data import _until_signal

    # Python's own SIGINT handler, whatever pytest was started with (a job put in the background by
    # a shell without job control starts with SIGINT ignored, and Python keeps that)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt), _until_signal() as stopped:
            assert not stopped()
            os.kill(os.getpid(), signal.SIGTERM)  # the first: a flag, no exception (SIGTERM would end the process)
            assert stopped()
            os.kill(os.getpid(), signal.SIGINT)  # the second: Python's own handler, KeyboardInterrupt
            pytest.fail("the second signal did not interrupt")
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # put back
    finally:
        signal.signal(signal.SIGINT, inherited)

