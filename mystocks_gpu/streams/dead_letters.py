"""Dead-letter records: the original key and bytes, with headers naming what went wrong."""

from __future__ import annotations

from mystocks_gpu.topics.catalog import DLQ_SUFFIX

H_ERROR_CLASS = "mystocks.error.class"
H_ERROR_MESSAGE = "mystocks.error.message"
H_SOURCE_TOPIC = "mystocks.source.topic"
H_SOURCE_PARTITION = "mystocks.source.partition"
H_SOURCE_OFFSET = "mystocks.source.offset"
H_PROCESSOR = "mystocks.processor"


def dlq_topic(source_topic: str) -> str:
    """The DLQ twin of a topic."""
    return source_topic + DLQ_SUFFIX


def dlq_headers(error_class: str, message: str, topic: str, partition: int, offset: int,
                processor: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter (all UTF-8 strings; messages capped at 1000 characters)."""
    return [(H_ERROR_CLASS, error_class.encode()), (H_ERROR_MESSAGE, message[:1000].encode()),
            (H_SOURCE_TOPIC, topic.encode()), (H_SOURCE_PARTITION, str(partition).encode()),
            (H_SOURCE_OFFSET, str(offset).encode()), (H_PROCESSOR, processor.encode())]

H_TRUNCATED = "mystocks.value.truncated_from"


def fit_dead_letter(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                    limit: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Make a dead letter fit ``limit`` bytes (key + value + headers): an oversized key or value is
    cut, and a header records the value's original size, so the DLQ never rejects a dead letter."""
    hsize = sum(len(k) + len(v) for k, v in headers) + 64
    budget = max(0, limit - hsize)
    if key is not None and len(key) > budget // 4:
        key = key[: budget // 4]
    room = budget - (len(key) if key else 0)
    if value is not None and len(value) > room:
        headers = [*headers, (H_TRUNCATED, str(len(value)).encode())]
        value = value[:max(0, room - 32)]
    return key, value, headers
