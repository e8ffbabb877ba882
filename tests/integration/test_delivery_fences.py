"""At-least-once settling per output partition on the real broker (``streams/delivery_fences.py``).

A record produced after a cut that cannot be delivered (its topic does not exist, and the broker
does not create topics) keeps the producer's queue non-empty for as long as librdkafka waits for the
topic. The cut before it must still settle: its offsets are committed once its own records'
fences are acknowledged, and a commit falling due meanwhile waits only for those. The rule before
fences (an empty queue) commits nothing here until that record is gone."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer
from mystocks_gpu.streams.delivery_fences import FENCED_PRODUCER
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, RuntimeConfig
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.integration.stream_helpers import bare_protocol, committed_total, read_finished, wait_for


def test_a_cut_settles_on_its_fences_while_later_records_are_stuck(settings: Settings, unique: str) -> None:
    src, out, group = f"t.fin.{unique}", f"t.fout.{unique}", f"g.f.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(src, "symbol", None, partitions=2, dlq=False),
                                       TopicSpec(out, "symbol", None, partitions=4, dlq=False)])
    # the at-least-once worker's producer settings (StreamWorker._setup): no quiet failures
    producer: Producer = make_producer(settings.kafka, **FENCED_PRODUCER)
    consumer = make_consumer(settings.kafka, group)
    clock = Clock()
    proto = bare_protocol(producer, RuntimeConfig(guarantee=AT_LEAST_ONCE, record_io="columnar"), consumer=consumer,
                          topic=src, partition_counts={out: 4}, metrics=RuntimeMetrics("t"), clock=clock)
    keys = [f"S{i % 37}".encode() for i in range(2_000)]
    values = [b"v%d" % i for i in range(2_000)]
    ts = list(range(1_700_000_000_000, 1_700_000_002_000))
    try:
        # warm: the producer's idempotence PID, the group's coordinator (an offset commit sent before
        # it is known fails, and the next commit would carry the offsets: here there is none)
        producer.produce(out, b"warm", b"w", partition=0)
        assert producer.flush(30) == 0
        assert wait_for(lambda: _coordinator_known(consumer, src), 30)
        proto.send_many(out, keys[:1_000], values[:1_000], ts[:1_000])
        proto.pending_offsets.update({0: 600, 1: 400})
        assert proto.commit()  # cut 1: unsettled, the loop goes on
        producer.produce(f"t.missing.{unique}", b"stuck", b"k")  # after the cut; never deliverable here
        proto.send_many(out, keys[1_000:], values[1_000:], ts[1_000:])
        proto.pending_offsets.update({0: 1_100, 1: 900})
        t0 = clock.monotonic()
        assert proto.commit()  # cut 2 falls due: waits for cut 1's fences only (a flush would not return), then cuts
        waited = clock.monotonic() - t0
        assert wait_for(lambda: proto.settle() and proto.unsettled is None, 20), "cut 2 never settled"
        assert len(producer) >= 1  # the stuck record is still queued: an empty-queue rule would still wait
        assert wait_for(lambda: committed_total(settings, group, src, partitions=2) == 2_000, 20)
        assert proto.tally.commits == 2 and proto.tally.aborts == 0
        print(f"second commit waited {waited * 1000:.1f} ms; queue {len(producer)}")
    finally:
        producer.purge()
        producer.poll(0)
        consumer.close()
    got = read_finished(settings.kafka, out, decode=False)
    assert sorted(r.raw for r in got if r.raw != b"warm") == sorted(values)  # every record once


def _coordinator_known(consumer: Consumer, topic: str) -> bool:
    try:
        consumer.committed([TopicPartition(topic, 0)], timeout=5)
        return True
    except KafkaException:  # NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS while the group's coordinator loads
        return False
