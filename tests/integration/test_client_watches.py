"""Every long-lived Kafka client has a broker watch (librdkafka#5301, ``streams/broker_watch.py``),
with the real broker.

- Clients polled in a loop (the side input's reader, the models source, the gateway's market-data
  streams, the WebSocket feeds, ``submit --follow``'s status follower) are built with statistics,
  and their loops serve them to the watch: each watch is seen served while its client idles.
  Before, these clients had no watch, and one that lost its only broker in a freeze stayed
  without one for good (the side input and the models source for the life of their worker).
- Clients kept for queries and never polled (the side input's end-offset probe, the gateway's
  job-view end offsets, the result cache's data versions) get no statistics (they would pile up
  in their queue); a failed query nudges their watch, which gives the client the bootstrap
  servers back (what ``test_broker_watch.py`` shows reviving a client), and a query that
  succeeds does not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaException

from mystocks_gpu.api.job_view import JobView
from mystocks_gpu.api.market_stream import StreamStats, TopicStream
from mystocks_gpu.api.protos import realtime_pb2
from mystocks_gpu.infra.clock import SYSTEM_CLOCK
from mystocks_gpu.infra.config import GatewayConfig, JobsConfig, Settings
from mystocks_gpu.jobs.client import StatusFollower
from mystocks_gpu.jobs.exceptions import WaitTimeout
from mystocks_gpu.jobs.result_cache import DataVersions
from mystocks_gpu.jobs.web import _Feed
from mystocks_gpu.processors.training.model_source import KafkaModelSource
from mystocks_gpu.streams.broker_watch import nudged_consumer
from mystocks_gpu.streams.side_input import SideInput
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import _free_ports, wait_until

#: statistics every 100 ms, so a watch is served several times in a second
FAST = 0.1


def _fast(settings: Settings) -> Settings:
    return dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, rebootstrap_s=FAST))


def _dead(settings: Settings) -> Settings:
    """Settings whose bootstrap server is a port where nothing listens; queries give up after 1 s."""
    kafka = dataclasses.replace(settings.kafka, bootstrap_servers=f"127.0.0.1:{_free_ports('127.0.0.1', 1)[0]}",
                                connect_timeout_s=1.0)
    return dataclasses.replace(settings, kafka=kafka)


def _topic(settings: Settings, name: str, dlq: bool = False) -> str:
    TopicAdmin(settings.kafka).create([TopicSpec(name, "symbol", None, partitions=2, dlq=dlq)])
    return name


def _served(stats: dict[str, list[str]], name: str, n: int = 3) -> bool:
    return len(stats.get(name, ())) >= n


def test_the_side_input_reader_and_the_models_source_serve_their_watches(
        settings: Settings, unique: str, served_stats: dict[str, list[str]]) -> None:
    s = _fast(settings)
    side = SideInput(s.kafka, _topic(s, f"t.cw.side.{unique}"), max_wait_s=0.05)
    models = KafkaModelSource(s.kafka, topic=_topic(s, f"t.cw.models.{unique}", dlq=True), backfill_timeout_s=5)
    try:
        def idle_reads() -> bool:
            assert side.read({}) == []
            assert models.poll() == []
            return _served(served_stats, f"side input {side.topic}") and _served(served_stats, "models source")

        wait_until(idle_reads, 30, lambda: f"watches served: {sorted((k, len(v)) for k, v in served_stats.items())}")
        # the query clients are never polled: no statistics, so none pile up in their queues
        assert f"side input {side.topic} probe" not in served_stats and "models dead letters" not in served_stats
        assert side.probe_watch is not None and side.probe_watch.readded == 0  # its queries succeeded
    finally:
        side.close()
        models.close()


def test_the_gateway_stream_the_websocket_feed_and_the_status_follower_serve_their_watches(
        settings: Settings, unique: str, served_stats: dict[str, list[str]]) -> None:
    s = _fast(settings)
    topic = _topic(s, f"t.cw.stream.{unique}")
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    stream = TopicStream(s, GatewayConfig(port=0), topic, realtime_pb2.START_FROM_EARLIEST, 0, 0,
                         lambda msgs: msgs, loop, StreamStats(), 100)
    ctl = SimpleNamespace(settings=s, clock=SYSTEM_CLOCK, hub=SimpleNamespace(wants=lambda _mtype: True))
    feed = _Feed(ctl, "bars", topic, loop)  # type: ignore[arg-type]
    status_topic = _topic(s, f"t.cw.status.{unique}")
    follower = StatusFollower(s, dataclasses.replace(JobsConfig(), status_topic=status_topic))
    try:
        stream.thread.start()
        feed.thread.start()
        with pytest.raises(WaitTimeout):  # no such job: it follows (polls) until the timeout
            for _ in follower.statuses("no-such-job", timeout_s=1.0, notice_s=60.0):
                pass
        assert _served(served_stats, "status follower")
        wait_until(lambda: _served(served_stats, f"gateway stream {topic}") and _served(served_stats, "websocket feed bars"),
                   30, lambda: f"watches served: {sorted((k, len(v)) for k, v in served_stats.items())}")
        assert not feed.error
    finally:
        stream.stop.set()
        feed.stop.set()
        stream.thread.join(10)
        feed.thread.join(10)
        follower.close()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)


def test_a_failed_query_nudges_the_watch_and_a_good_one_does_not(settings: Settings, unique: str) -> None:
    topic = _topic(settings, f"t.cw.query.{unique}")
    dead = _dead(settings)

    # the result cache's data versions
    live_versions, dead_versions = DataVersions(settings.kafka), DataVersions(dead.kafka)
    try:
        assert live_versions.of({"topic": topic}) == {topic: [[0, 0], [0, 0]]}
        assert live_versions.watch.readded == 0
        assert dead_versions.of({"topic": topic}) is None
        assert dead_versions.watch.readded == 1
    finally:
        live_versions.close()
        dead_versions.close()

    # the gateway job view's end offsets
    jobs = dataclasses.replace(JobsConfig(), commands_topic=topic, status_topic=topic)
    live_view, dead_view = JobView(settings, jobs), JobView(dead, jobs)
    try:
        assert set(live_view._end_offsets()) == {(topic, 0), (topic, 1)}
        assert live_view._meta_watch is not None and live_view._meta_watch.readded == 0
        with pytest.raises(KafkaException):
            dead_view._end_offsets()
        assert dead_view._meta_watch is not None and dead_view._meta_watch.readded == 1
    finally:
        live_view.stop()
        dead_view.stop()

    # the side input's end-offset probe
    side = SideInput(dead.kafka, topic)
    side.probe, side.probe_watch = nudged_consumer(dead.kafka, f"t-cw-{unique}", "probe")
    side.partitions = [0, 1]
    try:
        side._sync_ends()  # logs "end offsets unknown" and goes on
        assert side._ends == {}
        assert side.probe_watch.readded == 1
    finally:
        side.probe.close()
