"""The consumer-lag gauges (``streams/consumer_lag.py``) on the real broker.

A worker that owns partitions which never receive a record used to ask the broker for their
committed offsets at every lag refresh (one blocking request per partition, 2 s each when no broker
answers); and a partition whose records were all deleted showed them as lag for ever. Here a
4-partition input holds the ticks of one symbol (one partition), 30 records deleted with
``DeleteRecords`` in another and nothing in the other two; the worker refreshes its lag every 50 ms.
librdkafka's own statistics (its per-broker count of OffsetFetch requests) say how often the worker's
consumer asked; the gauges are compared with what a separate client reads from the broker."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_worker import StreamWorker
from tests.integration.stream_helpers import make_topics, produce_ticks, synthetic, wait_for

DELETED = 30


def _offset_fetches(stats_json: str) -> int:
    """OffsetFetch requests a client has sent, over all its brokers (librdkafka's ``req`` counters)."""
    return sum(int(b.get("req", {}).get("OffsetFetch", 0)) for b in json.loads(stats_json)["brokers"].values())


def test_lag_asks_once_for_partitions_without_commits_and_counts_from_the_log_start(
        settings: Settings, unique: str, served_stats: dict[str, list[str]]) -> None:
    t = make_topics(settings, unique, partitions=4)
    n = 2_000
    cols, names = synthetic(n, symbols=1, seed=5)
    produce_ticks(settings, t.input, cols, names)
    probe = Consumer(settings.kafka.client_config(**{"group.id": t.group, "enable.auto.commit": False}))
    try:
        parts = sorted(probe.list_topics(t.input, timeout=10).topics[t.input].partitions)
        with_ticks = [p for p in parts if probe.get_watermark_offsets(TopicPartition(t.input, p), timeout=10)[1] > 0]
        assert len(with_ticks) == 1
        deleted = next(p for p in parts if p not in with_ticks)
        prod = Producer(settings.kafka.client_config())
        for i in range(DELETED):
            prod.produce(t.input, value=b"never read %d" % i, partition=deleted)
        assert prod.flush(30) == 0
        admin = AdminClient(settings.kafka.client_config())  # kept: its requests die with it
        (fut,) = admin.delete_records([TopicPartition(t.input, deleted, DELETED)], request_timeout=30).values()
        assert fut.result(30).low_watermark == DELETED  # the partition's new log start

        stats = served_stats
        kafka = dataclasses.replace(settings.kafka, rebootstrap_s=0.2)  # statistics every 200 ms
        proc = RunningAggregateProcessor(t.output)
        w = StreamWorker(proc, kafka, RuntimeConfig(guarantee="at_least_once", lag_interval_s=0.05),
                         group=t.group, worker_id="lag", input_topic=t.input)
        gauge = w.metrics.registry.get_sample_value
        seen: dict[str, float] = {}

        def all_read() -> bool:  # the gauges, while the worker runs (its close forgets them)
            got = {str(p): gauge("mystocks_stream_consumer_lag", {"processor": proc.name, "partition": str(p)})
                   for p in parts}
            if any(v is None for v in got.values()) or got[str(with_ticks[0])] != 0:
                return False
            seen.update(got)  # type: ignore[arg-type]
            return True

        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(w.run, idle_exit_s=3.0)
            assert wait_for(all_read, 60)
            sm = run.result(120)
        assert sm.records_in == n

        # ~60 refreshes over the idle 3 s alone; before, each asked again for the three partitions
        # without a commit (≥ 180 requests). Now: librdkafka's own fetch at the assignment, the lag's
        # one request, and the idle exit's check that every partition is read to its end
        assert len(stats["consumer"]) >= 5
        assert _offset_fetches(stats["consumer"][-1]) <= 3, _offset_fetches(stats["consumer"][-1])

        # the gauges against the broker: log end - committed, or - log start where none is committed
        committed = {tp.partition: tp.offset for tp in probe.committed(
            [TopicPartition(t.input, p) for p in parts], timeout=10)}
        want: dict[str, Any] = {}
        for p in parts:
            low, high = probe.get_watermark_offsets(TopicPartition(t.input, p), timeout=10)
            want[str(p)] = float(high - (committed[p] if committed[p] >= 0 else low))
        assert seen == want == {str(p): 0.0 for p in parts}
        assert committed[with_ticks[0]] == n and committed[deleted] < 0
    finally:
        probe.close()
