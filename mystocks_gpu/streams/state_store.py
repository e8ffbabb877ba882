"""Per-partition state with a compacted, co-partitioned changelog topic.

Changelog records for input partition ``p`` go to changelog partition ``p``, written inside the
same transaction as the outputs and the consumer offsets. On assignment a partition's state is
rebuilt by reading its changelog partition from the beginning up to the end (read_committed, so
aborted batches never come back), keeping the latest value per key.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import consume_ready, make_consumer, watermarks
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.processor import Processor
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.topics.admin import TopicAdmin
from mystocks_gpu.topics.catalog import changelog_topic

log = logging.getLogger(__name__)


def ensure_changelog(cfg: KafkaConfig, processor: str, group: str, input_topic: str) -> str:
    """Create the changelog topic (as many partitions as the input) if missing; returns its name.

    A changelog that exists with another segment size (one created before the catalog's
    ``CHANGELOG_SEGMENT_BYTES``, in the broker's 64 MiB segments) is moved to the catalog's size in
    place: its next segments roll at the new size, so the log cleaner works in small pieces there too.
    Where the broker refuses that (a principal without ``ALTER_CONFIGS``), a warning names the admin
    command and the changelog is used as it is."""
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
    else:
        want = spec.extra["segment.bytes"]
        have = admin.config_value(spec.name, "segment.bytes")
        if have != want:
            try:
                admin.set_configs(spec.name, {"segment.bytes": want})
                log.info("changelog segment size set", extra={"fields": {"topic": spec.name, "was": have, "now": want}})
            except KafkaException as exc:  # e.g. a principal without ALTER_CONFIGS: the changelog works as it is
                log.warning("changelog segment size left as it is; as an admin: kafka-configs --alter --entity-type "
                            f"topics --entity-name {spec.name} --add-config segment.bytes={want}",
                            extra={"fields": {"topic": spec.name, "segment_bytes": have,
                                              "error": exc.args[0].str() if exc.args else str(exc)}})
    return spec.name


def read_changelog(cfg: KafkaConfig, topic: str, partition: int, timeout_s: float = 60.0) -> dict[bytes, bytes]:
    """Latest value per key of one changelog partition (committed records only; tombstones delete)."""
    return read_changelogs(cfg, topic, [partition], timeout_s)[partition]


def _watermarks(consumer: Any, topic: str, partitions: list[int], cfg: KafkaConfig,
                attempts: int, clock: Clock) -> dict[int, tuple[int, int]]:
    """Low/high watermarks, retrying while a just-created partition has no leader yet."""
    out: dict[int, tuple[int, int]] = {}
    for p in partitions:
        for attempt in range(attempts):
            try:
                out[p] = watermarks(consumer, TopicPartition(topic, p), cfg.connect_timeout_s)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal() or attempt == attempts - 1:
                    raise FatalRuntimeError(f"restoring {topic}[{p}]: {err.str()}") from None
                log.info("changelog not ready, retrying", extra={"fields": {"partition": p, "error": err.str()}})
                clock.sleep(min(0.2 * 2**attempt, 3.0))
    return out


def read_changelogs(cfg: KafkaConfig, topic: str, partitions: list[int], timeout_s: float = 60.0,
                    attempts: int = 10, clock: Clock = SYSTEM_CLOCK) -> dict[int, dict[bytes, bytes]]:
    """Latest value per key of several changelog partitions, read with ONE consumer (committed
    records only; tombstones delete). Watermark lookups are retried while a leader is not ready.

    A partition is read to its high watermark, not only to its last stable offset: a transaction
    left open by a writer that died (SIGKILL) holds the last stable offset back, and the records
    that its successor committed after it are then invisible to a ``read_committed`` reader until
    the coordinator aborts the open one (after its ``transaction.timeout.ms``). Stopping at the
    last stable offset would restore a state older than the committed input offsets (counts that
    miss what the successor added); so the read waits, within ``timeout_s``, until that abort."""
    latest: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
    if not partitions:
        return latest
    nonce = uuid.uuid4().hex[:8]
    consumer = make_consumer(cfg, f"mystocks-restore-{nonce}", **{"enable.partition.eof": True})
    # a read_committed consumer's watermark lookup answers the last stable offset: the high watermark
    # (open transactions' records included) comes from a read_uncommitted one
    peek = make_consumer(cfg, f"mystocks-restore-hw-{nonce}", **{"isolation.level": "read_uncommitted"})
    try:
        marks = _watermarks(peek, topic, partitions, cfg, attempts, clock)
        todo = {p for p, (low, high) in marks.items() if high > low}
        if not todo:
            return latest
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(todo)])
        deadline = clock.monotonic() + timeout_s
        waiting: set[int] = set()
        while todo:
            if clock.monotonic() > deadline:
                raise FatalRuntimeError(
                    f"restoring {topic}{sorted(todo)} took longer than {timeout_s:.0f} s"
                    + (f" (partitions {sorted(waiting & todo)} wait for an open transaction to end)"
                       if waiting & todo else ""))
            for m in consume_ready(consumer, 10_000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        p = m.partition()
                        if m.offset() >= marks[p][1]:
                            todo.discard(p)
                        elif p not in waiting:  # an open transaction holds the stable offset back
                            waiting.add(p)
                            log.info("restore: waiting for an open transaction on the changelog",
                                     extra={"fields": {"partition": p, "stable": m.offset(),
                                                       "high": marks[p][1]}})
                        continue
                    if err.retriable() or not err.fatal():
                        log.info("restore: transient error", extra={"fields": {"error": err.str()}})
                        continue
                    raise FatalRuntimeError(f"restoring {topic}[{m.partition()}]: {err.str()}")
                store = latest[m.partition()]
                key = m.key() or b""
                if m.value() is None:
                    store.pop(key, None)
                else:
                    store[key] = m.value()
        return latest
    finally:
        consumer.close()
        peek.close()


class PartitionStates:
    """The states of the partitions a worker owns, restored from the changelog on assignment.

    ``mirror[p]`` is the latest COMMITTED changelog value per key of partition ``p``: read on
    assignment and updated by the commit protocol after each commit, so an abort restores state
    from memory (:meth:`restore_from_mirror`) instead of re-reading Kafka.
    """

    def __init__(self, processor: Processor[Any], cfg: KafkaConfig, changelog: str, symbols: SymbolTable,
                 rt: RuntimeConfig | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.processor = processor
        self.cfg = cfg
        self.changelog = changelog
        self.symbols = symbols
        self.rt = rt or RuntimeConfig()
        self.clock = clock
        self.states: dict[int, Any] = {}
        self.mirror: dict[int, dict[bytes, bytes]] = {}
        self.last_restore_s = 0.0

    def restore(self, partition: int) -> float:
        """(Re)build one partition's state from its changelog; returns seconds taken."""
        return self.restore_many([partition])

    def restore_many(self, partitions: list[int]) -> float:
        """(Re)build the states of ``partitions`` from the changelog with one consumer; returns seconds."""
        t0 = self.clock.monotonic()
        entries = read_changelogs(self.cfg, self.changelog, partitions, attempts=self.rt.restore_attempts,
                                  clock=self.clock)
        for p, kv in entries.items():
            self.mirror[p] = kv
            self.states[p] = self.processor.restore(kv.items(), self.symbols)
        dt = self.clock.monotonic() - t0
        self.last_restore_s = dt
        log.info("state restored", extra={"fields": {"partitions": partitions,
                                                      "keys": sum(len(v) for v in entries.values()), "seconds": round(dt, 3)}})
        return dt

    def restore_from_mirror(self, partition: int) -> None:
        """Rebuild a partition's state from the last committed changelog values (no Kafka read)."""
        self.states[partition] = self.processor.restore(self.mirror.get(partition, {}).items(), self.symbols)

    def drop(self, partitions: list[int]) -> None:
        """Forget partitions handed to another worker."""
        for p in partitions:
            self.states.pop(p, None)
            self.mirror.pop(p, None)
