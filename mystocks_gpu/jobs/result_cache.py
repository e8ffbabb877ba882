"""Results in Redis.

* **Result cache** -- ``{ns}:cache:{sha256}`` where the hash covers (kind, normalised spec, input
  data range, *data version*); an identical submit is answered from it. TTL configurable;
  bypassable per job. The data version (:class:`DataVersions`) is the end offset (and start) of every
  partition of every topic the job's data range names, read at submit: new records on an input
  topic (bars loaded after the first run) change the key, so a cached result never outlives its
  data. When the version cannot be read the submit is neither answered from nor written to the cache.
* **Result store** -- ``{ns}:result:{job_id}:{chunk}``, written once with ``SET NX`` so a chunk
  re-run after a worker crash can never produce a second result: the first writer wins and every
  later run reads the winner's value.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aredis

if TYPE_CHECKING:
    from mystocks_gpu.streams.broker_watch import BrokerWatch


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats as repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(kind: str, spec: dict[str, Any], data_range: dict[str, Any] | None,
              data_version: dict[str, Any] | None = None) -> str:
    """Content hash (hex sha256) of (kind, normalised spec, input data range, data version)."""
    body: dict[str, Any] = {"kind": kind, "spec": spec, "data": data_range}
    if data_version:
        body["version"] = data_version
    blob = canonical_json(body)
    return hashlib.sha256(blob.encode()).hexdigest()


def topics_of(data_range: dict[str, Any] | None) -> list[str]:
    """Topic names a data range names: values of ``topic``, ``topics`` or any ``*_topic`` key."""
    out: set[str] = set()
    for k, v in (data_range or {}).items():
        if k == "topics" and isinstance(v, (list, tuple)):
            out.update(str(t) for t in v if t)
        elif (k == "topic" or k.endswith("_topic")) and isinstance(v, str) and v:
            out.add(v)
    return sorted(out)


class DataVersions:
    """Per-partition ``[low, high]`` watermark offsets of the topics a data range names (the data
    version in the cache key). One consumer, reused; call from one thread at a time."""

    def __init__(self, kafka: Any) -> None:
        self.kafka = kafka
        self._consumer: Any = None
        #: the consumer's broker watch (``streams/broker_watch.py``), nudged when a query fails
        self.watch: BrokerWatch | None = None

    def of(self, data_range: dict[str, Any] | None) -> dict[str, Any] | None:
        """``{topic: [[low, high], ...]}`` (partitions in order), ``{}`` when the range names no
        topic, None when a topic is missing or the broker does not answer."""
        from confluent_kafka import KafkaException, TopicPartition

        from mystocks_gpu.infra.kafka_clients import watermarks
        from mystocks_gpu.streams.broker_watch import nudged_consumer

        topics = topics_of(data_range)
        if not topics:
            return {}
        try:
            if self._consumer is None:
                self._consumer, self.watch = nudged_consumer(self.kafka, "mystocks-cache-version", "result cache versions")
            t = self.kafka.connect_timeout_s
            out: dict[str, Any] = {}
            for topic in topics:
                md = self._consumer.list_topics(topic, timeout=t).topics.get(topic)
                if md is None or md.error is not None or not md.partitions:
                    return None
                out[topic] = [list(watermarks(self._consumer, TopicPartition(topic, p), t))
                              for p in sorted(md.partitions)]
            return out
        except KafkaException:
            if self.watch is not None:
                self.watch.nudge()  # librdkafka#5301: a client that lost its broker gets it back
            return None

    def close(self) -> None:
        """Close the consumer."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class ResultCache:
    """Async result cache used by the control app."""

    def __init__(self, client: aredis.Redis, namespace: str, ttl_s: float) -> None:
        self.client, self.ns, self.ttl_s = client, namespace, ttl_s

    def _key(self, h: str) -> str:
        return f"{self.ns}:cache:{h}"

    async def get(self, h: str) -> dict[str, Any] | None:
        """The cached result for hash ``h``, or None."""
        raw = await self.client.get(self._key(h))
        return json.loads(raw) if raw is not None else None

    async def put(self, h: str, result: dict[str, Any]) -> None:
        """Cache ``result`` under ``h`` for ``ttl_s`` seconds (0 = no caching)."""
        if self.ttl_s > 0:
            await self.client.set(self._key(h), canonical_json(result), px=int(self.ttl_s * 1000))


def result_key(namespace: str, job_id: str, chunk: int) -> str:
    """Redis key of one chunk's result."""
    return f"{namespace}:result:{job_id}:{chunk}"


class ResultStore:
    """Write-once chunk results (sync client, used by workers)."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: float = 7 * 86400) -> None:
        self.client, self.ns, self.ttl_s = client, namespace, ttl_s

    def set_once(self, job_id: str, chunk: int, result: dict[str, Any]) -> bool:
        """Store ``result`` unless one exists (``SET NX``); True when this call stored it."""
        key = result_key(self.ns, job_id, chunk)
        return bool(self.client.set(key, canonical_json(result), nx=True, ex=max(1, int(self.ttl_s))))

    def put_once(self, job_id: str, chunk: int, result: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Store ``result`` unless one exists: ``(won, stored_result)``."""
        won = self.set_once(job_id, chunk, result)
        raw = self.client.get(result_key(self.ns, job_id, chunk))
        return won, (json.loads(raw) if raw is not None else result)

    def get(self, job_id: str, chunk: int) -> dict[str, Any] | None:
        """The stored result of a chunk, or None."""
        raw = self.client.get(result_key(self.ns, job_id, chunk))
        return json.loads(raw) if raw is not None else None

    def mark_run(self, job_id: str, chunk: int) -> int:
        """Count one run (attempt) of a chunk; returns the number of runs so far."""
        key = f"{self.ns}:runs:{job_id}:{chunk}"
        n = int(self.client.incr(key))
        self.client.expire(key, max(1, int(self.ttl_s)))
        return n

    def runs(self, job_id: str, chunk: int) -> int:
        """How many times a chunk was started."""
        return int(self.client.get(f"{self.ns}:runs:{job_id}:{chunk}") or 0)

    def count(self, job_id: str) -> int:
        """How many chunk results exist for ``job_id``."""
        return sum(1 for _ in self.client.scan_iter(match=f"{self.ns}:result:{job_id}:*", count=500))
