"""The model registry: trained models on the compacted ``models`` topic (Avro
``mystocks.ml.ModelRecord``).

Layout of one model version (``version`` = 1, 2, ... per model name; the publisher takes the
highest version on the topic + 1):

* the serialised model (``Model.to_bytes()``: the hashed envelope of ``gpu_ops.models``) is cut
  into ``parts`` pieces of at most ``chunk_bytes`` (default 1 MiB, under the topic's
  ``max.message.bytes`` of 2 MiB), written in order on the topic's single partition;
* parts ``0 .. parts-2`` are keyed ``<name>#v<version>#<part>``; the **last part is keyed by the
  model name** and carries the metadata JSON, so compaction keeps, per name, the latest version's
  completing record, and a reader never sees a version before all its parts are written;
* after publishing version ``v`` the publisher writes tombstones for the part keys of versions
  ``<= v - 2`` (their completing record is compacted away under the name key, so the parts would
  be orphans).

A reader (:class:`Assembler`) joins the parts when the last one arrives and checks them: every
part present (a compacted or never-written part is an error), ``sha256(joined) ==
content_sha256``, the metadata parses; a failed check yields the version with ``error`` set (the
``signals`` worker dead-letters it and alerts, ``models show`` reports it).

Metadata (JSON, ``METADATA_VERSION`` 1): ``model``, ``version``, ``family``, ``params``,
``features`` (column names in model input order), ``feature_inputs`` (column -> topic),
``feature_schemas`` (topic -> schema name and fingerprint), ``label``, ``training_range``
(``start``/``end`` of the spec, first/last panel date), ``metrics`` (``overall`` and per split),
``long_short``, ``library_versions``, ``content_sha256``, ``bytes``, ``n_features``, ``job_id``,
``created_ns``, ``spec``.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.processors.exceptions import InvalidSpec
from mystocks_gpu.schemas.schema_store import SchemaStore

MODELS_TOPIC = "models"
RECORD_SCHEMA = "mystocks.ml.ModelRecord"
METADATA_VERSION = 1
DEFAULT_CHUNK_BYTES = 1 << 20


class ModelNotFound(InvalidSpec):
    """No (complete, valid) version of the named model is on the registry topic."""


def part_key(name: str, version: int, part: int, parts: int) -> bytes:
    """Kafka key of a part: the model name for the last part, ``<name>#v<version>#<part>`` else."""
    return name.encode() if part == parts - 1 else f"{name}#v{version}#{part}".encode()


def split_model(name: str, version: int, blob: bytes, metadata: Mapping[str, Any], ts_ns: int,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[bytes, dict[str, Any]]]:
    """The ``(key, ModelRecord)`` pairs of one version, in publishing order."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    parts = max(1, math.ceil(len(blob) / chunk_bytes))
    sha = hashlib.sha256(blob).hexdigest()
    meta = json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"), default=_json_default)
    out = []
    for i in range(parts):
        rec = {"model": name, "version": int(version), "ts_event": int(ts_ns), "part": i, "parts": parts,
               "content_sha256": sha, "metadata_json": meta if i == parts - 1 else "",
               "data": blob[i * chunk_bytes:(i + 1) * chunk_bytes]}
        out.append((part_key(name, version, i, parts), rec))
    return out


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


@dataclass
class ModelVersion:
    """A complete (or failed) version read back from the topic. ``error`` is None when every check
    passed; ``raw`` holds the ``(key, value, offset)`` of every part (for dead-lettering)."""

    name: str
    version: int
    content_sha256: str
    metadata: dict[str, Any]
    blob: bytes
    ts_ns: int
    offset: int
    error: str | None = None
    raw: list[tuple[bytes | None, bytes | None, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class Assembler:
    """Feeds ``models`` records in topic order and yields versions as their last part arrives."""

    def __init__(self, store: SchemaStore | None = None) -> None:
        """``store``: the process's schema ids (default the manifest)."""
        from mystocks_gpu.schemas import AvroCodec

        self.codec = AvroCodec(store)
        self._parts: dict[tuple[str, int], dict[int, tuple[dict[str, Any], bytes | None, bytes | None, int]]] = {}

    def feed(self, key: bytes | None, value: bytes | None, offset: int) -> list[ModelVersion]:
        """One record; returns the versions it completes (zero or one)."""
        kname = (key or b"").decode(errors="replace")
        if value is None:  # a tombstone: forget a buffered part
            name, _, rest = kname.partition("#v")
            ver_s, _, part_s = rest.partition("#")
            if ver_s.isdigit() and part_s.isdigit():
                self._parts.get((name, int(ver_s)), {}).pop(int(part_s), None)
            return []
        try:
            rec = self.codec.decode(value, expect=RECORD_SCHEMA)
        except Exception as exc:  # noqa: BLE001 - any undecodable value is a bad record
            name = kname.partition("#v")[0]
            return [ModelVersion(name, -1, "", {}, b"", 0, offset, f"undecodable model record: {exc}",
                                 [(key, value, offset)])]
        name, version, part, parts = rec["model"], int(rec["version"]), int(rec["part"]), int(rec["parts"])
        buf = self._parts.setdefault((name, version), {})
        buf[part] = (rec, key, value, offset)
        if part != parts - 1:
            return []
        del self._parts[(name, version)]
        raw = [(k, v, o) for _, (_, k, v, o) in sorted(buf.items())]
        missing = [i for i in range(parts) if i not in buf]
        blob = b"".join(bytes(buf[i][0]["data"]) for i in range(parts) if i in buf)
        mv = ModelVersion(name, version, str(rec["content_sha256"]), {}, blob, int(rec["ts_event"]), offset, None, raw)
        if missing:
            mv.error = f"model {name} v{version}: part(s) {missing} of {parts} missing (compacted or never written)"
        elif hashlib.sha256(blob).hexdigest() != mv.content_sha256:
            mv.error = (f"model {name} v{version}: content hash mismatch: the parts join to sha256 "
                        f"{hashlib.sha256(blob).hexdigest()}, the record says {mv.content_sha256}")
        try:
            mv.metadata = json.loads(rec["metadata_json"] or "{}")
        except ValueError as exc:
            mv.error = mv.error or f"model {name} v{version}: metadata is not JSON ({exc})"
        return [mv]


def _read_all(kafka: Any, topic: str) -> Iterator[tuple[bytes | None, bytes | None, int]]:
    """Every record of ``topic`` (read_committed) up to the end captured at the start."""
    from confluent_kafka import KafkaError, TopicPartition

    from mystocks_gpu.infra.kafka_clients import (
        consume_ready,
        ensure_broker,
        make_consumer,
        watermarks,
    )

    ensure_broker(kafka)
    consumer = make_consumer(kafka, f"mystocks-models-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    try:
        md = consumer.list_topics(topic, timeout=kafka.connect_timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            raise ModelNotFound(f"topic {topic} does not exist; run: mystocks-gpu topics create")
        for p in sorted(md.partitions):
            low, high = watermarks(consumer, TopicPartition(topic, p), kafka.connect_timeout_s)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            done = False
            while not done:
                msgs = consume_ready(consumer, 1000, 2.0)
                if not msgs:
                    pos = consumer.position([TopicPartition(topic, p)])[0].offset
                    if pos >= high or pos < 0:
                        break
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            break
                        continue
                    yield m.key(), m.value(), m.offset()
                    if m.offset() + 1 >= high:
                        done = True
                        break
    finally:
        consumer.close()


def read_models(kafka: Any, topic: str = MODELS_TOPIC, name: str | None = None,
                store: SchemaStore | None = None) -> dict[str, dict[int, ModelVersion]]:
    """name -> version -> :class:`ModelVersion` of everything complete on the topic (failed
    versions included, with ``error`` set); only ``name`` when given."""
    asm = Assembler(store)
    out: dict[str, dict[int, ModelVersion]] = {}
    for key, value, offset in _read_all(kafka, topic):
        for mv in asm.feed(key, value, offset):
            if name is None or mv.name == name:
                out.setdefault(mv.name, {})[mv.version] = mv
    return out


def get_model(kafka: Any, name: str, version: int | None = None, topic: str = MODELS_TOPIC,
              store: SchemaStore | None = None) -> ModelVersion:
    """The latest valid version of ``name`` (or ``version``); :class:`ModelNotFound` otherwise."""
    versions = read_models(kafka, topic, name, store).get(name, {})
    if version is not None:
        mv = versions.get(version)
        if mv is None:
            have = ", ".join(str(v) for v in sorted(versions)) or "none"
            raise ModelNotFound(f"model {name} has no version {version} on {topic} (versions: {have})")
        return mv
    good = [v for v in sorted(versions) if versions[v].ok]
    if not good:
        why = "" if not versions else f" ({len(versions)} version(s), all failing their checks)"
        raise ModelNotFound(f"no model named {name!r} on {topic}{why}; train one: mystocks-gpu submit train ...")
    return versions[good[-1]]


def publish_model(kafka: Any, name: str, blob: bytes, metadata: Mapping[str, Any], *, topic: str = MODELS_TOPIC,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, clock: Clock = SYSTEM_CLOCK,
                  store: SchemaStore | None = None) -> int:
    """Publish ``blob`` as the next version of ``name`` (parts, then tombstones of versions two or
    more behind); returns the version. Raises when a part is not acknowledged."""
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all

    existing = read_models(kafka, topic, name, store).get(name, {})
    version = max(existing, default=0) + 1
    meta = {**dict(metadata), "model": name, "version": version}
    now = clock.now_ns()
    items: list[tuple[bytes, bytes | None, int]] = [(k, _encode(rec, store), now // 1_000_000) for k, rec in split_model(name, version, blob, meta, now, chunk_bytes)]
    for v, mv in existing.items():
        if v <= version - 2:
            parts = int(len(mv.raw))
            items += [(part_key(name, v, i, parts), None, now // 1_000_000) for i in range(parts - 1)]
    produce_all(make_producer(kafka, **{"compression.type": "zstd"}), topic, iter(items))
    return version


def _encode(rec: dict[str, Any], store: SchemaStore | None = None) -> bytes:
    from mystocks_gpu.schemas import AvroCodec

    return AvroCodec(store).encode(RECORD_SCHEMA, rec)


def ensure_signals_topic(kafka: Any, name: str) -> str:
    """Create ``signals.<name>`` when missing (idempotent); returns its name."""
    from mystocks_gpu.topics.admin import TopicAdmin
    from mystocks_gpu.topics.catalog import signals_topic

    spec = signals_topic(name)
    TopicAdmin(kafka).create([spec])
    return spec.name
