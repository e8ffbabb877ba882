"""Read and decode any catalog topic (used by ``mystocks-gpu consume`` and tests)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, TopicPartition

from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import consume_ready, ensure_broker, make_consumer, watermarks
from mystocks_gpu.schemas import AvroCodec, DecodeError


@dataclass(frozen=True)
class ConsumedRecord:
    """One decoded record with its Kafka coordinates."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: dict[str, Any] | None
    headers: dict[str, str]
    raw: bytes | None
    error: str | None = None


def read_topic(cfg: KafkaConfig, topic: str, *, from_beginning: bool = True, max_records: int | None = None,
               idle_timeout_s: float = 5.0, codec: AvroCodec | None = None, decode: bool = True,
               isolation: str = "read_committed", start_offsets: dict[int, int] | None = None,
               stop_at_end: bool = False, settle_s: float = 10.0) -> Iterator[ConsumedRecord]:
    """Yield records of every partition of ``topic`` until ``max_records`` (None: no limit), or
    ``idle_timeout_s`` without a new record, or (``stop_at_end``) once every partition reached the
    end offset it had when reading started (see :func:`_end_offsets`; ``settle_s``: how long, in
    seconds, to wait for committed transactions' markers). ``start_offsets``: partition -> first
    offset (others start at the beginning or the end per ``from_beginning``). No consumer group
    offsets are committed."""
    ensure_broker(cfg)
    codec = codec or AvroCodec()
    consumer = make_consumer(cfg, f"mystocks-reader-{uuid.uuid4().hex[:8]}", **{"isolation.level": isolation,
                                                                              "enable.partition.eof": True})
    try:
        md = consumer.list_topics(topic, timeout=cfg.connect_timeout_s)
        parts = sorted(md.topics[topic].partitions)
        default = OFFSET_BEGINNING if from_beginning else OFFSET_END
        starts = {p: (start_offsets or {}).get(p, default) for p in parts}
        ends = _end_offsets(cfg, consumer, topic, parts, isolation, settle_s) if stop_at_end else {}
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in parts])
        pending = {p for p in parts if not stop_at_end or (ends[p] > 0 and starts[p] != OFFSET_END
                                                           and (starts[p] < 0 or starts[p] < ends[p]))}
        n = 0
        last = time.monotonic()
        while (max_records is None or n < max_records) and (pending or not stop_at_end):
            want = 1000 if max_records is None else max(1, min(1000, max_records - n))
            msgs = consume_ready(consumer, want, 0.2)
            if not msgs:
                if time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            for m in msgs:
                if m.error():
                    # (an end reached at an offset short of the one read at the start, e.g. before a
                    # committed transaction's markers were written, is not the end)
                    if stop_at_end and m.error().code() == KafkaError._PARTITION_EOF \
                            and m.offset() >= ends[m.partition()]:
                        pending.discard(m.partition())
                    continue
                if stop_at_end and m.offset() >= ends[m.partition()] - 1:
                    pending.discard(m.partition())
                    if m.offset() >= ends[m.partition()]:
                        continue
                value, err = None, None
                if decode and m.value() is not None:
                    try:
                        value = codec.decode(m.value())
                    except DecodeError as exc:
                        err = str(exc)
                headers = {k: (v.decode(errors="replace") if v is not None else "") for k, v in (m.headers() or [])}
                yield ConsumedRecord(m.topic(), m.partition(), m.offset(), m.timestamp()[1],
                                     m.key().decode(errors="replace") if m.key() is not None else None,
                                     value, headers, m.value(), err)
                n += 1
                if max_records is not None and n >= max_records:
                    return
    finally:
        consumer.close()


def _end_offsets(cfg: KafkaConfig, consumer: Any, topic: str, parts: list[int], isolation: str,
                 settle_s: float) -> dict[int, int]:
    """Partition -> the offset a reader that stops at the end reads up to.

    read_uncommitted: the high watermark. read_committed: the last stable offset, once it has caught
    up with the high watermark. The broker answers a transaction's commit as soon as the commit is
    decided and writes its markers afterwards: until a partition's marker is written, its last
    stable offset stays at the transaction's first record, so a reader started right after a
    writer's last commit would stop short of records that are committed. This waits (polling every
    50 ms, at most ``settle_s`` seconds) until no partition has such a gap; a transaction still open
    then (a writer killed mid-transaction, not yet fenced or timed out) is left out."""
    def ask(c: Any) -> dict[int, int]:
        return {p: watermarks(c, TopicPartition(topic, p), cfg.connect_timeout_s)[1] for p in parts}

    if isolation != "read_committed":
        return ask(consumer)
    high_reader = make_consumer(cfg, f"mystocks-reader-{uuid.uuid4().hex[:8]}", **{"isolation.level": "read_uncommitted"})
    try:
        high = ask(high_reader)
        deadline = time.monotonic() + settle_s
        while True:
            stable = ask(consumer)
            if all(stable[p] >= high[p] for p in parts) or time.monotonic() >= deadline:
                return stable
            time.sleep(0.05)
    finally:
        high_reader.close()
