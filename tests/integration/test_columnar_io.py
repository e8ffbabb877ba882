"""The columnar ingest (``streams/columnar_io.py``, the C extension ``_rdbatch``) on the real
broker. The reference is what the test produced (records of committed transactions, with the
offsets their delivery reports gave) and confluent-kafka's own ``Message`` path on the same topic:

- every committed record once, in offset order per partition, with its key, value (nulls and empty
  values included) and timestamp; records of an aborted transaction and transaction markers never;
- a seek back drops what was already queued (librdkafka's version barrier) and resumes at the
  sought offset; a detached partition's records come back through the consumer queue;
- a worker reading columnar and one reading ``Message`` objects write the same outputs, equal to
  the pandas reference, and each says which record I/O it used (the setting takes effect).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer
from mystocks_gpu.streams.columnar_io import ColumnarIngest, load_extension, resolve_mode
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.integration.stream_helpers import (
    assert_exactly_once_equal,
    finish,
    make_topics,
    produce_ticks,
    read_outputs,
    reference,
    start_worker,
    synthetic,
)

Rec = tuple[int, bytes | None, bytes | None, int]  # offset, key, value, timestamp ms


def test_the_extension_is_built_and_bound() -> None:
    ext, reason = load_extension()
    assert ext is not None, f"make install builds it (gcc + Python headers): {reason}"
    assert resolve_mode("auto") == (True, "")
    assert resolve_mode("messages")[0] is False


def _topic(settings: Settings, name: str, partitions: int = 4) -> str:
    TopicAdmin(settings.kafka).create([TopicSpec(name, "symbol", None, partitions=partitions, dlq=False)])
    return name


def _produce_transactions(settings: Settings, topic: str, rng: random.Random, partitions: int = 4
                          ) -> dict[int, list[Rec]]:
    """Three transactions (committed, aborted, committed) of 1,500 records each; returns the
    committed ones per partition, offsets from their delivery reports."""
    prod = make_producer(settings.kafka, **{"transactional.id": f"{topic}.tx", "linger.ms": 2})
    prod.init_transactions(30)
    committed: dict[int, list[Rec]] = {p: [] for p in range(partitions)}
    for txn in range(3):
        got: list[Any] = []
        prod.begin_transaction()
        for i in range(1_500):
            p = rng.randrange(partitions)
            key = None if i % 97 == 0 else f"k{rng.randrange(50)}".encode()
            value = None if i % 131 == 0 else (b"" if i % 89 == 0 else rng.randbytes(rng.randrange(1, 120)))
            ts = 1_700_000_000_000 + txn * 10_000_000 + i * 7

            def on_delivery(err: Any, msg: Any, key: Any = key, value: Any = value, ts: int = ts,
                            got: list[Any] = got) -> None:
                assert err is None, err
                got.append((msg.partition(), msg.offset(), key, value, ts))

            while True:
                try:
                    prod.produce(topic, value, key, partition=p, timestamp=ts, on_delivery=on_delivery)
                    break
                except BufferError:
                    prod.poll(0.05)
        prod.flush(30)
        if txn == 1:
            prod.abort_transaction(30)
        else:
            prod.commit_transaction(30)
            for p, off, key, value, ts in got:
                committed[p].append((off, key, value, ts))
    for recs in committed.values():
        recs.sort()
    return committed


def _read_columnar(ing: ColumnarIngest, consumer: Consumer, want: int) -> dict[int, list[Rec]]:
    out: dict[int, list[Rec]] = {}
    n, deadline = 0, time.monotonic() + 60
    while n < want and time.monotonic() < deadline:
        consumer.poll(0)  # the consumer queue: callbacks (none expected to carry records)
        chunk, events = ing.consume(1_000, 0.2)
        assert all(e.code == KafkaError._PARTITION_EOF for e in events), events
        if len(chunk):  # the sizes the ingest measured in C
            assert chunk.nbytes == sum(len(v or b"") for v in chunk.values)
            assert chunk.max_value == max(len(v or b"") for v in chunk.values)
            assert chunk.max_key == max(len(k or b"") for k in chunk.keys)
        for p, o, k, v, t in zip(chunk.partitions, chunk.offsets, chunk.keys, chunk.values, chunk.timestamps_ms,
                                 strict=True):
            out.setdefault(p, []).append((o, k, v, t))
        n += len(chunk)
    return out


def _read_messages(consumer: Consumer, want: int) -> dict[int, list[Rec]]:
    out: dict[int, list[Rec]] = {}
    n, deadline = 0, time.monotonic() + 60
    while n < want and time.monotonic() < deadline:
        for m in consumer.consume(1_000, timeout=0.2):
            if m.error() is None:
                out.setdefault(m.partition(), []).append((m.offset(), m.key(), m.value(), m.timestamp()[1]))
                n += 1
    return out


def _assigned(settings: Settings, group: str, topic: str, columnar: bool) -> tuple[Consumer, ColumnarIngest | None]:
    consumer = make_consumer(settings.kafka, group)
    ing = ColumnarIngest(consumer, topic) if columnar else None
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    if ing is not None:
        ing.attach(sorted(parts))  # before the assignment starts fetching
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    return consumer, ing


def test_every_committed_record_once_in_order_with_its_fields(settings: Settings, unique: str) -> None:
    topic = _topic(settings, f"t.ci.{unique}")
    committed = _produce_transactions(settings, topic, random.Random(5))
    total = sum(map(len, committed.values()))
    assert total == 3_000

    consumer, ing = _assigned(settings, f"g.ci.{unique}", topic, columnar=True)
    assert ing is not None and ing.attached() == [0, 1, 2, 3]
    try:
        got = _read_columnar(ing, consumer, total)
        extra, _ = ing.consume(1_000, 1.0)  # nothing more: the aborted transaction and markers are skipped
        assert len(extra) == 0
        # the application position advanced past the markers, as with Message objects
        pos = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in range(4)])}
    finally:
        ing.close()
        consumer.close()
    assert got == committed

    plain, _ = _assigned(settings, f"g.cm.{unique}", topic, columnar=False)
    try:
        by_messages = _read_messages(plain, total)
        assert not [m for m in plain.consume(1_000, timeout=1.0) if m.error() is None]
        pos_msg = {tp.partition: tp.offset for tp in plain.position([TopicPartition(topic, p) for p in range(4)])}
        high = {p: plain.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(4)}
    finally:
        plain.close()
    assert by_messages == got
    assert pos == pos_msg == high  # past the last commit marker: the application position advanced


def test_seek_drops_queued_records_and_detach_returns_a_partition(settings: Settings, unique: str) -> None:
    topic = _topic(settings, f"t.cs.{unique}", partitions=2)
    prod = make_producer(settings.kafka)
    for i in range(20_000):
        prod.produce(topic, b"v%d" % i, b"k", partition=i % 2, timestamp=1_700_000_000_000 + i)
        if i % 5_000 == 0:
            prod.poll(0)
    prod.flush(30)

    consumer, ing = _assigned(settings, f"g.cs.{unique}", topic, columnar=True)
    assert ing is not None
    try:
        first: list[int] = []
        deadline = time.monotonic() + 30
        while len(first) < 500 and time.monotonic() < deadline:
            chunk, _ = ing.consume(500 - len(first), 0.5)
            first += [o for p, o in zip(chunk.partitions, chunk.offsets, strict=True) if p == 0]
        assert first == list(range(len(first))) and first
        deadline = time.monotonic() + 30
        while ing.queued() < 1_000 and time.monotonic() < deadline:
            time.sleep(0.02)  # a condition, polled: librdkafka's fetcher fills the queue
        assert ing.queued() >= 1_000, "records should be queued ahead of the seek"
        consumer.seek(TopicPartition(topic, 0, 100))
        after: list[int] = []
        deadline = time.monotonic() + 30
        while len(after) < 300 and time.monotonic() < deadline:
            chunk, _ = ing.consume(1_000, 0.5)
            after += [o for p, o in zip(chunk.partitions, chunk.offsets, strict=True) if p == 0]
        # the queued records of partition 0 beyond the first batch were dropped: it resumes at 100
        assert after[:300] == list(range(100, 400))

        # (the worker detaches only revoked partitions, whose queued records the revocation drops;
        # here partition 1 is read to its end first, so nothing of it is queued)
        last1, deadline = -1, time.monotonic() + 30
        while last1 < 9_999 and time.monotonic() < deadline:
            chunk, _ = ing.consume(10_000, 0.5)
            last1 = max([last1, *(o for p, o in zip(chunk.partitions, chunk.offsets, strict=True) if p == 1)])
        assert consumer.position([TopicPartition(topic, 1)])[0].offset == 10_000
        ing.detach([1])
        assert ing.attached() == [0]
        delivered: list[Any] = []
        prod.produce(topic, b"late", b"k", partition=1, on_delivery=lambda err, _m: delivered.append(err))
        prod.flush(30)
        assert delivered == [None]
        seen_late, deadline = False, time.monotonic() + 30
        while not seen_late and time.monotonic() < deadline:
            seen_late = any(m.error() is None and m.value() == b"late" for m in consumer.consume(10_000, timeout=0.2))
            chunk, _ = ing.consume(10_000, 0)
            assert b"late" not in chunk.values
        assert seen_late, "a detached partition's records come through the consumer queue"
    finally:
        ing.close()
        consumer.close()


def test_columnar_and_messages_workers_write_the_same_outputs(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(30_000, symbols=32, seed=4)
    assert produce_ticks(settings, t.input, cols, names) == 30_000
    ref = reference(cols, names)
    summaries = {}
    for mode in ("columnar", "messages"):
        out_topic = f"{t.output}.{mode}"
        TopicAdmin(settings.kafka).create([TopicSpec(out_topic, "symbol", "mystocks.streams.RunningAggregate",
                                                     partitions=4, dlq=False)])
        t_mode = dataclasses.replace(t, output=out_topic, group=f"{t.group}.{mode}")
        out = finish(start_worker(t_mode, "w1", "--record-io", mode, "--batch-records", "700"))
        summaries[mode] = json.loads(out.strip().splitlines()[-1])
        assert_exactly_once_equal(read_outputs(settings, out_topic), ref)
    assert summaries["columnar"]["record_io"] == "columnar"
    assert summaries["messages"]["record_io"] == "messages"
    assert summaries["columnar"]["records_in"] == summaries["messages"]["records_in"] == 30_000


_UNCLOSED = """
import sys
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from mystocks_gpu.infra.kafka_clients import make_consumer
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.streams.columnar_io import ColumnarIngest
cfg = KafkaConfig(bootstrap_servers=sys.argv[1])
c = make_consumer(cfg, sys.argv[3])
ing = ColumnarIngest(c, sys.argv[2])
ing.attach([0, 1])
c.assign([TopicPartition(sys.argv[2], p, OFFSET_BEGINNING) for p in (0, 1)])
chunk, _ = ing.consume(10, 10.0)
print(len(chunk), ing.queued() > 0, flush=True)
"""


def test_an_ingest_left_open_is_closed_when_collected(settings: Settings, unique: str, tmp_path: Any) -> None:
    """A process that never closes its ingest (nor its consumer) still exits: the ingest closes
    itself before its consumer is destroyed (librdkafka's destroy would wait for the queued records
    forever)."""
    import subprocess
    import sys

    topic = _topic(settings, f"t.cu.{unique}", partitions=2)
    prod = make_producer(settings.kafka)
    for i in range(5_000):
        prod.produce(topic, b"v", b"k", partition=i % 2)
    prod.flush(30)
    script = tmp_path / "unclosed.py"
    script.write_text(_UNCLOSED)
    r = subprocess.run([sys.executable, str(script), settings.kafka.bootstrap_servers, topic, f"g.cu.{unique}"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["10", "True"]  # records were still queued in the ingest at exit


def test_a_partition_error_comes_as_an_event_not_a_record(settings: Settings, unique: str) -> None:
    """An offset beyond the end with ``auto.offset.reset=error``: librdkafka puts the partition's
    error on its fetch queue; the ingest returns it as an event with a readable reason, no record."""
    topic = _topic(settings, f"t.ce.{unique}", partitions=1)
    prod = make_producer(settings.kafka)
    prod.produce(topic, b"v", b"k", partition=0)
    prod.flush(30)
    consumer = make_consumer(settings.kafka, f"g.ce.{unique}", **{"auto.offset.reset": "error"})
    ing = ColumnarIngest(consumer, topic)
    ing.attach([0])
    consumer.assign([TopicPartition(topic, 0, 1_000_000)])
    try:
        events, records, deadline = [], 0, time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            consumer.poll(0)
            chunk, events = ing.consume(100, 0.5)
            records += len(chunk)
        assert records == 0
        assert events, "no error event within 30 s"
        ev = events[0]
        assert (ev.partition, ev.code) == (0, KafkaError._AUTO_OFFSET_RESET)
        assert "offset" in ev.reason.lower() and isinstance(ev.reason, str)
    finally:
        ing.close()
        consumer.close()
