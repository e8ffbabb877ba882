"""``streams/broker_watch.py`` with real librdkafka clients and the real broker: the statistics that
librdkafka itself emits are read right (its bootstrap broker is ``configured``, the broker it learns
``learned``), and the extension's ``add_brokers`` gives a client that cannot reach any broker the
bootstrap servers: a producer started against a port where nothing listens delivers a record once
the watch saw no serving broker, and a consumer reads it back. (The wedge itself, a Metadata answer
that lists no broker while the broker is fenced at wake-up, is a race of the broker's; the outage
test of ``test_runtime_eos.py`` meets it, see bench/HISTORY.md 2026-12-07 13:17.)"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer
from mystocks_gpu.streams.broker_watch import BrokerWatch, broker_watch, serving_brokers
from mystocks_gpu.streams.columnar_io import load_extension
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import _free_ports
from tests.integration.stream_helpers import read_finished


def _poll_stats(client: Producer, got: list[str], n: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        client.poll(0.05)
    assert len(got) >= n, f"{len(got)} statistics documents in {timeout_s} s"


def test_a_producer_that_reaches_no_broker_delivers_once_the_watch_adds_the_bootstrap_servers(
        settings: Settings, unique: str) -> None:
    ext, why = load_extension()
    assert ext is not None, why  # make install builds it; the worker's watch needs it
    topic = f"t.bw.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "symbol", None, partitions=1, dlq=False)])
    dead = dataclasses.replace(settings.kafka, bootstrap_servers=f"127.0.0.1:{_free_ports('127.0.0.1', 1)[0]}",
                               rebootstrap_s=0.2)
    docs: list[str] = []
    seen: list[int | None] = []

    class Recording(BrokerWatch):
        def on_stats(self, stats_json: str) -> None:
            docs.append(stats_json)
            seen.append(serving_brokers(stats_json))

    probe = Recording(dead, None, "probe")
    producer = probe.attach(make_producer(dead, **{**probe.config(), "message.timeout.ms": 60_000}))
    producer.produce(topic, b"after the watch", b"k", timestamp=1_700_000_000_123)
    _poll_stats(producer, docs, 2)
    doc: dict[str, Any] = json.loads(docs[-1])
    sources = sorted(b["source"] for b in doc["brokers"].values())
    assert sources == ["configured"], sources  # the unreachable bootstrap broker (the internal one is not listed)
    assert seen[-1] == 1
    assert len(producer) == 1  # nothing reachable: the record waits

    # the watch proper, told what the wedge looks like: it adds the (real) bootstrap servers
    watch = BrokerWatch(settings.kafka, ext.add_brokers, "producer")
    watch.attach(producer)
    watch.on_stats(json.dumps({"brokers": {"TxnCoordinator": {"source": "logical"}}}))
    assert watch.readded == 1
    assert producer.flush(30) == 0  # delivered through the added broker
    got = read_finished(settings.kafka, topic, decode=False)
    assert [(r.key, r.raw, r.timestamp_ms) for r in got] == [("k", b"after the watch", 1_700_000_000_123)]
    n = len(docs)
    _poll_stats(producer, docs, n + 1)
    assert (serving_brokers(docs[-1]) or 0) >= 1
    assert any(b["source"] == "learned" for b in json.loads(docs[-1])["brokers"].values())


def test_the_worker_clients_are_watched_with_the_extension(settings: Settings) -> None:
    watch = broker_watch(settings.kafka, "producer")
    assert watch.add_brokers is not None
    with pytest.raises(TypeError):
        watch.add_brokers(object(), settings.kafka.bootstrap_servers)  # only confluent-kafka clients
