"""``streams/broker_watch.py``: a client whose statistics show no configured or learned broker gets
the bootstrap servers back (librdkafka#5301), once per ``rebootstrap_s``. The statistics documents
follow librdkafka's STATISTICS.md (``brokers`` keyed by name, each with its ``source``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from mystocks_gpu.infra.clock import ManualClock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.streams.broker_watch import BrokerWatch, serving_brokers


def _stats(*sources: str) -> str:
    """A statistics document with one broker per source (names as librdkafka gives them)."""
    names = {"configured": "127.0.0.1:9092/bootstrap", "learned": "127.0.0.1:9092/1", "internal": ":0/internal",
             "logical": "TxnCoordinator"}
    brokers = {f"{names[s]}#{i}": {"name": names[s], "nodeid": -1 if s != "learned" else 1, "source": s,
                                   "state": "UP"} for i, s in enumerate(sources)}
    return json.dumps({"name": "rdkafka#producer-1", "type": "producer", "brokers": brokers, "topics": {}})


@pytest.mark.parametrize(("sources", "want"), [
    (("configured",), 1),
    (("learned", "internal", "logical"), 1),
    (("configured", "learned", "learned"), 3),
    (("logical",), 0),  # the wedge: only a coordinator's logical broker (statistics leave the internal one out)
    (("internal", "logical"), 0),
    ((), 0),
])
def test_serving_brokers_counts_configured_and_learned_ones(sources: tuple[str, ...], want: int) -> None:
    assert serving_brokers(_stats(*sources)) == want


@pytest.mark.parametrize("doc", ["not json", "[1, 2]", json.dumps({"name": "x"}), json.dumps({"brokers": []})])
def test_serving_brokers_is_none_for_what_is_not_a_statistics_document(doc: str) -> None:
    assert serving_brokers(doc) is None


class _Adder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    def __call__(self, client: Any, brokers: str) -> int:
        self.calls.append((client, brokers))
        return 1


def test_the_bootstrap_servers_go_back_once_per_rebootstrap_interval_while_no_broker_is_left() -> None:
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:19092,127.0.0.2:19093", rebootstrap_s=5.0)
    clock, add, client = ManualClock(), _Adder(), object()
    watch = BrokerWatch(kafka, add, "producer", clock)
    watch.on_stats(_stats("internal", "logical"))
    assert add.calls == []  # not attached yet: nothing to add to
    assert watch.attach(client) is client
    watch.on_stats(_stats("learned", "internal"))
    assert add.calls == []  # a learned broker: healthy
    watch.on_stats(_stats("internal", "logical"))
    assert add.calls == [(client, "127.0.0.1:19092,127.0.0.2:19093")] and watch.readded == 1
    clock.advance(4.9)
    watch.on_stats(_stats("internal", "logical"))
    assert len(add.calls) == 1  # within rebootstrap_s of the last
    clock.advance(0.2)
    watch.on_stats(_stats("internal", "logical"))
    assert len(add.calls) == 2 and watch.readded == 2
    watch.on_stats("garbage")
    assert len(add.calls) == 2
    clock.advance(10)
    watch.on_stats(_stats("learned").replace('"source": "learned"', '"source":"learned"'))  # librdkafka's spelling
    assert len(add.calls) == 2


def test_rebootstrap_s_sets_the_statistics_interval_that_feeds_the_watch() -> None:
    watch = BrokerWatch(KafkaConfig(rebootstrap_s=2.5), _Adder(), "consumer")
    conf = watch.config()
    assert conf["statistics.interval.ms"] == 2500 and conf["stats_cb"] == watch.on_stats
    assert BrokerWatch(KafkaConfig(rebootstrap_s=0.0004 + 0.0006), None, "c").config()["statistics.interval.ms"] == 1


def test_without_the_extension_the_watch_says_the_client_needs_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    watch = BrokerWatch(KafkaConfig(), None, "producer", ManualClock())
    watch.attach(object())
    with caplog.at_level(logging.WARNING, logger="mystocks_gpu.streams.broker_watch"):
        watch.on_stats(_stats("logical"))
    assert watch.readded == 0
    assert "recovers only when restarted" in caplog.text


def test_a_nudge_adds_the_bootstrap_servers_at_most_once_per_interval_whatever_the_statistics() -> None:
    clock, add = ManualClock(), _Adder()
    watch = BrokerWatch(KafkaConfig(rebootstrap_s=3.0), add, "producer", clock)
    assert watch.nudge() is False and add.calls == []  # no client yet
    watch.attach("client")
    assert watch.nudge() is True and len(add.calls) == 1
    assert watch.nudge() is False  # within rebootstrap_s
    watch.on_stats(_stats("logical"))
    assert len(add.calls) == 1  # the statistics share the interval
    clock.advance(3.0)
    assert watch.nudge() is True and watch.readded == 2


def test_a_rewind_whose_committed_offsets_time_out_nudges_the_consumer() -> None:
    """``CommitProtocol._rewind`` retries ``committed()``, which serves none of the consumer's
    statistics: a client with no broker left would time out all ten times. Each failed try nudges
    the consumer's watch; the rewind then seeks to the committed offset."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.runtime_config import RuntimeConfig

    seeks: list[tuple[int, int]] = []

    class Consumer:
        fails = 2

        def assignment(self) -> list[TopicPartition]:
            return [TopicPartition("t", 0), TopicPartition("other", 0)]

        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            if self.fails:
                self.fails -= 1
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
            return [TopicPartition("t", 0, 41)]

        def seek(self, tp: TopicPartition) -> None:
            seeks.append((tp.partition, tp.offset))

    p = CommitProtocol(producer=None, consumer=Consumer(), topic="t", processor=None, states=None,  # type: ignore[arg-type]
                       rt=RuntimeConfig(guarantee="exactly_once"), metrics=None, clock=ManualClock(),  # type: ignore[arg-type]
                       drop_input=lambda: None, transactional_id="x", max_bytes={})
    nudged: list[str] = []
    p.nudge = nudged.append
    p._rewind()
    assert nudged == ["consumer", "consumer"] and seeks == [(0, 41)]
