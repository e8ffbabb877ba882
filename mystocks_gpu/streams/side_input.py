"""A broadcast side input: a (compacted) table topic that every worker of a processor reads whole,
applied to partition state between micro-batches, exactly-once and deterministically.

Why: some processors need a second stream that is not co-partitioned with their input (the risk
processor consumes prices keyed by symbol and needs every account's positions, keyed by account).
Kafka Streams' answer is a *global table*; this is the same idea inside this runtime, without
touching the commit protocol's order:

- The worker owns one extra consumer, manually assigned to EVERY partition of the side topic
  (no consumer group, nothing committed to Kafka, ``read_committed``).
- How far a partition's state has read the side topic is part of that state: the processor reports
  it with :meth:`Processor.side_offsets` (``{side partition: next offset}``) and serialises it in
  its changelog. So the side position commits atomically with the outputs, the changelog and the
  input offsets, in the same transaction; an abort or a restore rewinds it with the state.
- Before each micro-batch the worker calls :meth:`SideInput.read` with the smallest position of
  the states it owns; the reader seeks back when a state went backwards (abort, restore,
  assignment) and returns every record from there up to the end of the topic as observed now (the
  high watermark, re-read at most every ``sync_interval_s``; in between, what the consumer has
  already fetched). The processor applies to each state only the records at or past that state's
  own position (:meth:`Processor.apply_side`), so re-read records are never applied twice.
- Side records that fail decoding go to the side topic's DLQ in the batch's transaction, once:
  only records no owned state had read before.

Determinism is the processor's job: it must apply a side record at a point defined by the data
(the risk processor applies positions at their event time in the price stream), not at the
wall-clock moment it was read. Reading to the end before every batch guarantees that a side record
produced before an input record is seen before that input record is processed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.streams.broker_watch import BrokerWatch, nudged_consumer, watched_consumer
from mystocks_gpu.streams.exceptions import FatalRuntimeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SideRecord:
    """One record of the side topic (``value`` None = tombstone)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class SideInput:
    """Reader of a whole side topic (module docstring). ``sync_interval_s``: how often the end of
    the topic is re-read from the broker (0 = before every batch); ``max_wait_s``: how long one
    read waits for records up to that end (an open transaction can hold them back) before it
    returns what it has."""

    def __init__(self, kafka: KafkaConfig, topic: str, sync_interval_s: float = 0.0,
                 max_wait_s: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.kafka, self.topic, self.clock = kafka, topic, clock
        self.sync_interval_s, self.max_wait_s = sync_interval_s, max_wait_s
        self.consumer: Any = None
        #: an unassigned consumer for end-offset queries: the reading consumer's connection is held
        #: by fetch long-polls (a ListOffsets request queued behind one waits up to fetch.wait.max.ms)
        self.probe: Any = None
        #: the probe's broker watch (librdkafka#5301: ``streams/broker_watch.py``), nudged when a query fails
        self.probe_watch: BrokerWatch | None = None
        self.partitions: list[int] = []
        #: next offset this reader will return per partition (None = not positioned yet)
        self.position: dict[int, int | None] = {}
        self._ends: dict[int, int] = {}
        self._synced_at = -1e18

    def open(self) -> None:
        """Create the consumer and learn the side topic's partitions."""
        group = f"mystocks-side-{uuid.uuid4().hex[:8]}"
        conf: dict[str, Any] = {"log_level": 3, "fetch.wait.max.ms": 50}
        self.consumer = watched_consumer(self.kafka, group, f"side input {self.topic}", clock=self.clock,
                                         route_logs=False, **conf)
        self.probe, self.probe_watch = nudged_consumer(self.kafka, group + "-probe", f"side input {self.topic} probe",
                                                       clock=self.clock, route_logs=False, **{"log_level": 3})
        md = self.consumer.list_topics(self.topic, timeout=self.kafka.connect_timeout_s).topics.get(self.topic)
        if md is None or md.error is not None:
            raise FatalRuntimeError(f"side input topic {self.topic} does not exist; run: mystocks-gpu topics create")
        self.partitions = sorted(md.partitions)
        self.position = {p: None for p in self.partitions}

    def close(self) -> None:
        for c in (self.consumer, self.probe):
            if c is not None:
                c.close()
        self.consumer = self.probe = None

    def _seek(self, wants: dict[int, int]) -> None:
        tps = [TopicPartition(self.topic, p, wants.get(p, 0) if wants.get(p, 0) > 0 else OFFSET_BEGINNING)
               for p in self.partitions]
        self.consumer.assign(tps)
        for p in self.partitions:
            self.position[p] = max(0, wants.get(p, 0))
        self._synced_at = -1e18  # a rewind re-reads the end too

    def _sync_ends(self) -> None:
        """The end of every partition in one ListOffsets request (timestamp -1 = latest; with
        ``read_committed`` that is the last stable offset, so it is always reachable)."""
        try:
            tps = self.probe.offsets_for_times([TopicPartition(self.topic, p, -1) for p in self.partitions],
                                               timeout=self.kafka.connect_timeout_s)
        except KafkaException as exc:
            log.warning("side input: end offsets unknown", extra={"fields": {"error": exc.args[0].str()}})
            if self.probe_watch is not None:
                self.probe_watch.nudge()
            return
        for tp in tps:
            if tp.error is None and tp.offset >= 0:
                self._ends[tp.partition] = tp.offset
        self._synced_at = self.clock.monotonic()

    def read(self, wants: dict[int, int]) -> list[SideRecord]:
        """Records from ``wants`` (``{partition: first offset}``; missing = 0) to the end of the
        topic; seeks back first where a wanted offset is behind this reader's position."""
        if self.consumer is None:
            self.open()
        if any(self.position[p] is None or wants.get(p, 0) < (self.position[p] or 0) for p in self.partitions):
            self._seek(wants)
        if self.clock.monotonic() - self._synced_at >= self.sync_interval_s:
            self._sync_ends()
        out: list[SideRecord] = []
        deadline = self.clock.monotonic() + self.max_wait_s
        behind = {p for p in self.partitions if (self.position[p] or 0) < self._ends.get(p, 0)}
        while True:
            msgs = self.consumer.consume(10_000, timeout=0.05 if behind else 0)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise FatalRuntimeError(f"side input {self.topic}: {err.str()}")
                    log.warning("side input: consumer error", extra={"fields": {"error": err.str()}})
                    continue
                p, o = m.partition(), m.offset()
                self.position[p] = o + 1
                out.append(SideRecord(p, o, m.key(), m.value(), m.timestamp()[1]))
            if behind:
                # transaction markers and compacted gaps move the position without a record
                for tp in self.consumer.position([TopicPartition(self.topic, p) for p in behind]):
                    if tp.offset >= 0:
                        self.position[tp.partition] = max(self.position[tp.partition] or 0, tp.offset)
                behind = {p for p in behind if (self.position[p] or 0) < self._ends.get(p, 0)}
            if not behind and not msgs:
                return out
            if self.clock.monotonic() > deadline:
                if behind:
                    log.warning("side input: end not reached in time (an open transaction?)",
                                extra={"fields": {"partitions": sorted(behind)}})
                return out
