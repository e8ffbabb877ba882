"""The latency benchmark's own Kafka I/O on the real broker (``bench/_features_latency.py``): the load
producer's :func:`produce_chunk` (the runtime's C ``produce_many``) and the :class:`MeasuringConsumer`
(the runtime's columnar ingest). A benchmark that lost, duplicated, re-partitioned or re-stamped
records would measure the wrong thing; the reference is what the test sent and where
confluent-kafka's own ``produce()`` puts each key.
"""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _features_latency as L  # noqa: E402

PARTITIONS = 4


def _partition_by_key(settings: Settings, topic: str, keys: list[bytes]) -> dict[bytes, int]:
    """Where confluent-kafka's ``produce()`` (no partition given) puts each key: the reference."""
    prod = make_producer(settings.kafka)
    where: dict[bytes, int] = {}

    def on_delivery(err: object, msg: object) -> None:
        assert err is None, err
        where[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    for k in keys:
        prod.produce(topic, b"x", k, on_delivery=on_delivery)
    assert prod.flush(30) == 0
    return where


def test_load_producer_chunks_arrive_once_each_in_key_order_partitioned_and_stamped_as_sent(settings: Settings) -> None:
    rng = random.Random(18)
    topic, ref_topic = "test.bench.latio.in", "test.bench.latio.ref"
    TopicAdmin(settings.kafka).create([TopicSpec(t, "symbol", None, partitions=PARTITIONS, dlq=False)
                                       for t in (topic, ref_topic)])
    keys = [f"SYM{i}".encode() for i in range(40)]
    prod = make_producer(settings.kafka, **{"linger.ms": 1, **L.FEED_PRODUCERS["ordered"],
                                             "queue.buffering.max.messages": 500})  # a full queue on the way
    sent: list[tuple[bytes, bytes, int]] = []
    for chunk in range(60):
        n = rng.randrange(1, 120)
        ks = [rng.choice(keys) for _ in range(n)]
        vals = [f"{chunk}:{j}:".encode() + rng.randbytes(rng.randrange(0, 40)) for j in range(n)]
        ts_ms = 1_750_000_000_000 + chunk * 3
        L.produce_chunk(prod, topic, vals, ks, ts_ms, "the test producer", 0.01)
        sent += [(k, v, ts_ms) for k, v in zip(ks, vals, strict=True)]
    assert prod.flush(30) == 0

    cons = L.MeasuringConsumer(settings, "test-bench-latio", topic, PARTITIONS)
    got_values: list[bytes | None] = []
    got_ts: list[int] = []
    try:
        assert cons.ingest is not None, "the C extension is built by make install"
        for _ in range(400):
            values, ts = cons.take(10_000, 0.05)
            got_values += values
            got_ts += ts
            if len(got_values) >= len(sent):
                break
        assert cons.take(10_000, 0.5)[0] == []  # nothing more: no duplicates
    finally:
        cons.close()
    assert len(got_values) == len(sent)
    stamp = {v: t for _, v, t in sent}
    assert sorted(got_values) == sorted(v for _, v, _ in sent)  # type: ignore[type-var]
    assert [stamp[v] for v in got_values] == got_ts  # type: ignore[index]

    # per key: the order sent, and the partition confluent-kafka's produce() gives that key
    where = _partition_by_key(settings, ref_topic, keys)
    by_key_sent: dict[bytes, list[bytes]] = defaultdict(list)
    for k, v, _ in sent:
        by_key_sent[k].append(v)
    plain = make_consumer(settings.kafka, "test-bench-latio-plain")
    plain.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    by_key_got: dict[bytes, list[bytes]] = defaultdict(list)
    try:
        seen = 0
        for _ in range(400):
            for m in plain.consume(10_000, timeout=0.1):
                assert m.error() is None, m.error()
                assert m.partition() == where[m.key()], (m.key(), m.partition())
                by_key_got[m.key()].append(m.value())
                seen += 1
            if seen >= len(sent):
                break
    finally:
        plain.close()
    assert by_key_got == by_key_sent
