"""Kafka client factories with the project's defaults (murmur2 partitioning, idempotence,
librdkafka logs routed to Python logging) and broker reachability checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.exceptions import BrokerUnreachable

RDKAFKA_LOG = logging.getLogger("librdkafka")

PRODUCER_DEFAULTS: dict[str, Any] = {
    # Java-compatible key -> partition mapping (Kafka Streams, Connect, Java producers agree)
    "partitioner": "murmur2_random",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "message.max.bytes": 8_388_608,
}


def _base(cfg: KafkaConfig, extra: dict[str, Any]) -> dict[str, Any]:
    conf = cfg.client_config(**{"socket.connection.setup.timeout.ms": int(cfg.connect_timeout_s * 1000)})
    if extra.pop("route_logs", True):
        conf["logger"] = RDKAFKA_LOG
    conf.update(extra)
    return conf


def make_producer(cfg: KafkaConfig, **extra: Any) -> Producer:
    """A producer with :data:`PRODUCER_DEFAULTS` (overridable by ``extra`` librdkafka settings).

    ``route_logs=False`` leaves librdkafka's logs on stderr instead of Python logging (long-running
    workers: a log callback must never run while Python is unwinding an exception)."""
    return Producer(_base(cfg, {**PRODUCER_DEFAULTS, **extra}))


def make_consumer(cfg: KafkaConfig, group_id: str, **extra: Any) -> Consumer:
    """A consumer in ``group_id`` (read_committed, manual commits unless ``extra`` says otherwise)."""
    defaults = {"group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "isolation.level": "read_committed", "enable.partition.eof": False}
    return Consumer(_base(cfg, {**defaults, **extra}))


def ensure_broker(cfg: KafkaConfig) -> None:
    """Raise :class:`BrokerUnreachable` within ``cfg.connect_timeout_s`` when no broker answers."""
    admin = AdminClient(_base(cfg, {}))
    try:
        md = admin.list_topics(timeout=cfg.connect_timeout_s)
        if not md.brokers:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no brokers in metadata"))
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        raise BrokerUnreachable(
            f"no Kafka broker answered at {cfg.bootstrap_servers} within {cfg.connect_timeout_s:.0f} s "
            f"({err.str() if hasattr(err, 'str') else err}); is the stack up? try: mystocks-gpu stack up"
        ) from None


class DeliveryTracker:
    """Counts acknowledged and failed deliveries; ``raise_errors`` after flush."""

    def __init__(self) -> None:
        self.delivered = 0
        self.errors: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")
        else:
            self.delivered += 1

    def raise_errors(self) -> None:
        """Raise :class:`BrokerUnreachable` summarising failed deliveries, if any."""
        if self.errors:
            raise BrokerUnreachable(f"{len(self.errors)} record(s) not delivered; first: {self.errors[0]}")


def produce_all(producer: Producer, topic: str, items: Any, on_progress: Callable[[int], None] | None = None,
                rate: float | None = None, flush_timeout_s: float = 60.0) -> int:
    """Produce ``(key: bytes, value: bytes, timestamp_ms: int)`` items; returns the delivered count.

    ``rate`` throttles to about that many records per second (wall clock). Waits for every
    delivery report; raises :class:`BrokerUnreachable` if any record was not delivered.
    """
    tracker = DeliveryTracker()
    t0 = time.monotonic()
    n = 0
    for key, value, ts_ms in items:
        while True:
            try:
                producer.produce(topic, value=value, key=key, timestamp=ts_ms, on_delivery=tracker)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
            if on_progress:
                on_progress(10_000)
            if tracker.errors:
                break
        if rate:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0.001:
                time.sleep(ahead)
    remaining = producer.flush(flush_timeout_s)
    if on_progress:
        on_progress(n % 10_000)
    if remaining:
        tracker.errors.append(f"{remaining} record(s) still queued after {flush_timeout_s:.0f} s (broker unreachable?)")
    tracker.raise_errors()
    return tracker.delivered
