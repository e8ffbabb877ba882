"""Per-partition state with a compacted, co-partitioned changelog topic.

Changelog records for input partition ``p`` go to changelog partition ``p``, written inside the
same transaction as the outputs and the consumer offsets. On assignment a partition's state is
rebuilt by reading its changelog partition from the beginning up to the end (read_committed, so
aborted batches never come back), keeping the latest value per key.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import make_consumer
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.processor import Processor
from mystocks_gpu.topics.admin import TopicAdmin
from mystocks_gpu.topics.catalog import changelog_topic

log = logging.getLogger(__name__)


def ensure_changelog(cfg: KafkaConfig, processor: str, group: str, input_topic: str) -> str:
    """Create the changelog topic (as many partitions as the input) if missing; returns its name."""
    admin = TopicAdmin(cfg)
    live = admin.existing()
    if input_topic not in live:
        raise FatalRuntimeError(f"input topic {input_topic} does not exist; run: mystocks-gpu topics create")
    spec = changelog_topic(processor, group, live[input_topic])
    if spec.name not in live:
        admin.create([spec])
    elif live[spec.name] != live[input_topic]:
        raise FatalRuntimeError(f"changelog {spec.name} has {live[spec.name]} partitions but {input_topic} has "
                                f"{live[input_topic]}: they must be co-partitioned")
    return spec.name


def read_changelog(cfg: KafkaConfig, topic: str, partition: int, timeout_s: float = 60.0) -> dict[bytes, bytes]:
    """Latest value per key of one changelog partition (committed records only; tombstones delete)."""
    consumer = make_consumer(cfg, f"mystocks-restore-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    latest: dict[bytes, bytes] = {}
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=cfg.connect_timeout_s)
        if high <= low:
            return latest
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise FatalRuntimeError(f"restoring {topic}[{partition}] took longer than {timeout_s:.0f} s")
            for m in consumer.consume(10_000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return latest
                    raise FatalRuntimeError(f"restoring {topic}[{partition}]: {err.str()}")
                key = m.key() or b""
                if m.value() is None:
                    latest.pop(key, None)
                else:
                    latest[key] = m.value()
    finally:
        consumer.close()


class PartitionStates:
    """The states of the partitions a worker owns, restored from the changelog on assignment."""

    def __init__(self, processor: Processor[Any], cfg: KafkaConfig, changelog: str, symbols: SymbolTable) -> None:
        self.processor = processor
        self.cfg = cfg
        self.changelog = changelog
        self.symbols = symbols
        self.states: dict[int, Any] = {}
        self.last_restore_s = 0.0

    def restore(self, partition: int) -> float:
        """(Re)build one partition's state from its changelog; returns seconds taken."""
        t0 = time.monotonic()
        entries = read_changelog(self.cfg, self.changelog, partition)
        self.states[partition] = self.processor.restore(entries.items(), self.symbols)
        dt = time.monotonic() - t0
        self.last_restore_s = dt
        log.info("state restored", extra={"fields": {"partition": partition, "keys": len(entries), "seconds": round(dt, 3)}})
        return dt

    def drop(self, partitions: list[int]) -> None:
        """Forget partitions handed to another worker."""
        for p in partitions:
            self.states.pop(p, None)
