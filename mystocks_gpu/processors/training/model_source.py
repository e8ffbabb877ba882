"""Where the ``signals`` processor gets model versions from: a :class:`ModelSource`.

The processor is pure (no Kafka); it is given a source and calls :meth:`ModelSource.poll` (non-
blocking) once per micro-batch, and :meth:`ModelSource.reject` for a version it cannot use.

* :class:`KafkaModelSource` reads the ``models`` topic with its own consumer (assigned, from the
  beginning, read_committed): at construction it reads up to the end (so the versions published
  before the worker started are there for its first batch), then :meth:`poll` returns what has
  arrived since, assembled and hash-checked by :class:`~.model_registry.Assembler`.
  :meth:`reject` dead-letters every part of the bad version to ``models.dlq`` (original key and
  bytes; headers: error class and message, source topic / partition / offset, processor) and
  produces an alert on ``alerts`` (kind ``OTHER``, severity ``CRITICAL``, labels ``reason =
  model_integrity``, model, version, offset; ``alert_id`` = ``model-integrity:<name>:<offset>``,
  the same for every report of that record, so consumers can de-duplicate). A version already in
  ``models.dlq`` (a restarted worker re-reading the topic) is not reported again; two workers of
  one group may both report it (same ``alert_id``).
* :class:`InMemoryModelSource` is the same contract over a list (tests, benchmarks).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.kafka_clients import consume_ready
from mystocks_gpu.processors.training.model_registry import MODELS_TOPIC, Assembler, ModelVersion
from mystocks_gpu.schemas.schema_store import SchemaStore

log = logging.getLogger(__name__)
ALERTS_TOPIC = "alerts"
ALERT_SCHEMA = "mystocks.ops.Alert"


class ModelSource(Protocol):
    """Versions of models, in arrival order."""

    def poll(self) -> list[ModelVersion]:
        """Versions completed since the last call (non-blocking; may include failed ones)."""

    def reject(self, version: ModelVersion, error: str) -> None:
        """Report a version the processor will not use (dead letter + alert)."""

    def close(self) -> None:
        """Release the source's clients (the processor calls it once, when its worker stops)."""


class InMemoryModelSource:
    """A :class:`ModelSource` fed by :meth:`push`; rejected versions are kept in ``rejected``."""

    def __init__(self, versions: list[ModelVersion] | None = None) -> None:
        self._queue: list[ModelVersion] = list(versions or [])
        self.rejected: list[tuple[ModelVersion, str]] = []

    def push(self, version: ModelVersion) -> None:
        self._queue.append(version)

    def poll(self) -> list[ModelVersion]:
        out, self._queue = self._queue, []
        return out

    def reject(self, version: ModelVersion, error: str) -> None:
        self.rejected.append((version, error))

    def close(self) -> None:
        """Nothing to release."""


def model_alert(version: ModelVersion, error: str, processor: str, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """The ``alerts`` record of a rejected model version."""
    return {"alert_id": f"model-integrity:{version.name}:{version.offset}", "ts_event": clock.now_ns(),
            "kind": "OTHER", "severity": "CRITICAL", "source": f"{processor}/{version.name}",
            "message": f"model {version.name} v{version.version} rejected, keeping the previous version: {error}"[:2000],
            "value": float(version.version), "threshold": 0.0,
            "labels": {"reason": "model_integrity", "model": version.name, "version": str(version.version),
                       "offset": str(version.offset), "topic": MODELS_TOPIC}}


class KafkaModelSource:
    """The ``models`` topic as a :class:`ModelSource` (see the module docstring)."""

    def __init__(self, kafka: Any, topic: str = MODELS_TOPIC, processor: str = "signals",
                 clock: Clock = SYSTEM_CLOCK, backfill_timeout_s: float = 60.0,
                 store: SchemaStore | None = None) -> None:
        from confluent_kafka import TopicPartition

        from mystocks_gpu.infra.kafka_clients import ensure_broker
        from mystocks_gpu.streams.broker_watch import nudged_producer, watched_consumer

        ensure_broker(kafka)
        self.kafka, self.topic, self.processor, self.clock = kafka, topic, processor, clock
        self.store = store
        self.asm = Assembler(store)
        conf: dict[str, Any] = {"fetch.wait.max.ms": 50}
        self.consumer = watched_consumer(kafka, f"mystocks-models-src-{uuid.uuid4().hex[:8]}", "models source",
                                         clock=clock, route_logs=False, **conf)
        md = self.consumer.list_topics(topic, timeout=kafka.connect_timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            from mystocks_gpu.processors.training.model_registry import ModelNotFound

            raise ModelNotFound(f"topic {topic} does not exist; run: mystocks-gpu topics create")
        self.partitions = sorted(md.partitions)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in self.partitions])
        self.producer, self.producer_watch = nudged_producer(kafka, "models dead letters", clock=clock,
                                                             route_logs=False, **{"linger.ms": 0})
        self._reported = self._already_reported()
        self._ready: list[ModelVersion] = []
        self._backfill(backfill_timeout_s)

    def _backfill(self, timeout_s: float) -> None:
        from confluent_kafka import TopicPartition

        from mystocks_gpu.infra.kafka_clients import watermarks

        highs = {p: watermarks(self.consumer, TopicPartition(self.topic, p), 10)[1]
                 for p in self.partitions}
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            pos = {tp.partition: tp.offset for tp in self.consumer.position(
                [TopicPartition(self.topic, p) for p in self.partitions])}
            if all(pos.get(p, -1) >= h or h == 0 for p, h in highs.items()):
                return
            self._ready.extend(self._consume(0.5))
        log.warning("models backfill did not reach the end of %s within %.0f s", self.topic, timeout_s)

    def _already_reported(self) -> set[int]:
        """Offsets of ``models`` records already dead-lettered (read from ``models.dlq``)."""
        from mystocks_gpu.data.topic_reader import read_topic

        out: set[int] = set()
        try:
            for rec in read_topic(self.kafka, f"{self.topic}.dlq", idle_timeout_s=1.0, decode=False):
                off = rec.headers.get("mystocks.source.offset")
                if off and off.lstrip("-").isdigit():
                    out.add(int(off))
        except Exception as exc:  # noqa: BLE001 - a missing DLQ only means nothing was reported
            log.debug("cannot read %s.dlq: %s", self.topic, exc)
        return out

    def _consume(self, timeout: float) -> list[ModelVersion]:
        out: list[ModelVersion] = []
        for m in consume_ready(self.consumer, 500, timeout):
            if m.error() is not None:
                continue
            out.extend(self.asm.feed(m.key(), m.value(), m.offset()))
        return out

    def poll(self) -> list[ModelVersion]:
        out, self._ready = self._ready, []
        out.extend(self._consume(0))
        return out

    def reject(self, version: ModelVersion, error: str) -> None:
        from mystocks_gpu.schemas import AvroCodec
        from mystocks_gpu.streams.dead_letters import dlq_headers

        if version.offset in self._reported:
            return
        self._reported.add(version.offset)
        error_class = error.partition(":")[0] if ":" in error[:60] else "ModelRejected"
        for key, value, offset in version.raw:
            self.producer.produce(f"{self.topic}.dlq", value, key, headers=dlq_headers(
                error_class, error, self.topic, self.partitions[0], offset, self.processor))
        alert = model_alert(version, error, self.processor, self.clock)
        self.producer.produce(ALERTS_TOPIC, AvroCodec(self.store).encode(ALERT_SCHEMA, alert), alert["source"].encode())
        left = self.producer.flush(10)
        if left:
            self.producer_watch.nudge()
        log.error("rejected model version", extra={"fields": {"model": version.name, "version": version.version,
                                                              "error": error, "unflushed": left}})

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)
