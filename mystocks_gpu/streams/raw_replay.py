"""Bounded reads of one partition through the raw Fetch client (no per-record Python objects).

:func:`read_partition` fetches ``[start, end)`` of a partition from its leader with
:class:`~mystocks_gpu.streams.kafka_wire.FetchConnection` and parses the record batches with
:func:`~mystocks_gpu.streams.record_batches.parse_fetched` (read_committed). It raises
:class:`~mystocks_gpu.streams.kafka_wire.RawFetchError` on anything unexpected, with the position
reached, so the caller (``ReplaySource``) goes on from there with confluent-kafka.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.schemas.batch_codec.record_values import RecordValues
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.kafka_wire import FetchConnection, RawFetchError
from mystocks_gpu.streams.record_batches import next_position, parse_fetched

#: bytes asked per fetch (one partition); the broker returns at least one whole batch even if larger
FETCH_MAX_BYTES = 2 << 20
#: broker-side wait for data at the end of what is there (a bounded read never needs to wait long)
FETCH_MAX_WAIT_MS = 10


def raw_allowed(cfg: KafkaConfig) -> bool:
    """Whether the raw reader may be used: only on a PLAINTEXT listener (TLS and SASL are left to
    librdkafka)."""
    return str(cfg.security.get("security.protocol", "PLAINTEXT")).upper() == "PLAINTEXT"


class RawPartitionError(RawFetchError):
    """A raw read stopped at ``position`` (every record before it was delivered)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


def leader_address(consumer: Any, topic: str, partition: int, timeout_s: float) -> tuple[str, int]:
    """``(host, port)`` of the partition's leader, from a confluent-kafka client's metadata."""
    md = consumer.list_topics(topic, timeout=timeout_s)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or partition not in tmd.partitions:
        raise RawFetchError(f"no metadata for {topic}[{partition}]")
    leader = tmd.partitions[partition].leader
    broker = md.brokers.get(leader)
    if broker is None:
        raise RawFetchError(f"{topic}[{partition}] has no leader in the metadata (leader id {leader})")
    return str(broker.host), int(broker.port)


def read_partition(address: tuple[str, int], topic: str, partition: int, start: int, end: int,
                   connect_timeout_s: float, stall_timeout_s: float
                   ) -> Iterator[tuple[RecordValues, np.ndarray]]:
    """``(values, offsets)`` of the records of ``topic[partition]`` with offsets in
    ``[start, end)``, in offset order, a fetch at a time; the next fetch is asked for (its offset
    read from the batch headers) before the current one is parsed and handed on."""
    pos = start
    conn: FetchConnection | None = None
    last_progress = time.monotonic()
    try:
        conn = c = FetchConnection(address[0], address[1], connect_timeout_s)

        def ask(offset: int) -> int:
            return c.send(topic, partition, offset, FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS)

        cid = ask(pos) if pos < end else -1
        while pos < end:
            fp = c.receive(cid, topic, partition)
            if fp.error_code != 0:
                raise RawPartitionError(f"{topic}[{partition}] fetch error code {fp.error_code}", pos)
            nxt = next_position(fp, pos)
            if nxt <= pos:
                if fp.records and len(fp.records) >= FETCH_MAX_BYTES:
                    raise RawPartitionError(f"{topic}[{partition}]: a batch at {pos} exceeds one fetch", pos)
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise FatalRuntimeError(f"replay of {topic}[{partition}] stalled for {stall_timeout_s:.0f} s "
                                            f"before offset {end}")
                cid = ask(pos)
                continue
            if nxt < end:  # the next fetch is served while this one is parsed
                cid = ask(nxt)
            values, offsets, _ = parse_fetched(fp, pos)
            last_progress = time.monotonic()
            if offsets.size and offsets[-1] >= end:  # records written after the bounds were captured
                k = int(np.searchsorted(offsets, end))
                values, offsets = values[:k], offsets[:k]
            pos = nxt
            if offsets.size:
                yield values, offsets
    except RawPartitionError:
        raise
    except RawFetchError as exc:
        raise RawPartitionError(str(exc), pos) from None
    finally:
        if conn is not None:
            conn.close()
