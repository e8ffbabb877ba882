"""Replay a time range of a topic, deterministically.

Each partition is sought with ``offsets_for_times(start)``; the end is captured once at start
(``offsets_for_times(end)``, else the high watermark), so records arriving during the replay are
not read. Partitions are replayed one after another in ascending order and cut into batches by
record count or by event-time window, so the same range always gives the same batches. Positions
come from the records themselves, never from offset arithmetic (transaction markers use offsets).
Time bounds use Kafka record timestamps (ms, = event time for this project's topics): ``start``
inclusive, ``end`` exclusive.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, TopicPartition

from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import ensure_broker, make_consumer
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.batching import RawBatch
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.processor import Outputs, Processor, Rejected, process_isolating


@dataclass(frozen=True)
class ReplayRange:
    """``[start_ns, end_ns)`` of event time; None = from the beginning / to the end captured at start."""

    start_ns: int | None = None
    end_ns: int | None = None

    def __post_init__(self) -> None:
        if self.start_ns is not None and self.end_ns is not None and self.end_ns <= self.start_ns:
            raise FatalRuntimeError(f"replay range is empty or inverted: start {self.start_ns} >= end {self.end_ns}")


class ReplaySource:
    """Deterministic batches of a topic's records over a :class:`ReplayRange`."""

    def __init__(self, cfg: KafkaConfig, topic: str, rng: ReplayRange = ReplayRange(),
                 max_records: int = 10_000, window_ns: int | None = None) -> None:
        self.cfg, self.topic, self.rng = cfg, topic, rng
        self.max_records, self.window_ns = max_records, window_ns

    def _bounds(self, consumer: Any) -> list[tuple[int, int, int]]:
        md = consumer.list_topics(self.topic, timeout=self.cfg.connect_timeout_s).topics.get(self.topic)
        if md is None or md.error is not None:
            raise FatalRuntimeError(f"topic {self.topic} does not exist")
        out = []
        for p in sorted(md.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.cfg.connect_timeout_s)
            start, end = low, high
            if self.rng.start_ns is not None:
                tp = consumer.offsets_for_times([TopicPartition(self.topic, p, self.rng.start_ns // 1_000_000)],
                                                timeout=self.cfg.connect_timeout_s)[0]
                start = tp.offset if tp.offset >= 0 else high
            if self.rng.end_ns is not None:
                tp = consumer.offsets_for_times([TopicPartition(self.topic, p, -(-self.rng.end_ns // 1_000_000))],
                                                timeout=self.cfg.connect_timeout_s)[0]
                end = tp.offset if tp.offset >= 0 else high
            out.append((p, start, end))
        return out

    def batches(self) -> Iterator[RawBatch]:
        """Batches of one partition at a time, partitions in ascending order."""
        ensure_broker(self.cfg)
        consumer = make_consumer(self.cfg, f"mystocks-replay-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
        try:
            for p, start, end in self._bounds(consumer):
                if start >= end:
                    continue
                yield from self._partition(consumer, p, start, end)
        finally:
            consumer.close()

    def _partition(self, consumer: Any, p: int, start: int, end: int) -> Iterator[RawBatch]:
        lo_ms = None if self.rng.start_ns is None else self.rng.start_ns // 1_000_000
        hi_ms = None if self.rng.end_ns is None else -(-self.rng.end_ns // 1_000_000)
        consumer.assign([TopicPartition(self.topic, p, start)])
        batch, window = RawBatch(topic=self.topic), None
        done = False
        while not done:
            msgs = consumer.consume(10_000, timeout=1.0)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        break
                    raise FatalRuntimeError(f"replay of {self.topic}[{p}]: {err.str()}")
                if m.offset() >= end:
                    done = True
                    break
                ts = m.timestamp()[1]
                if (lo_ms is not None and ts < lo_ms) or (hi_ms is not None and ts >= hi_ms):
                    continue
                if self.window_ns is not None:
                    w = ts * 1_000_000 // self.window_ns
                    if window is not None and w != window and len(batch):
                        yield batch
                        batch = RawBatch(topic=self.topic)
                    window = w
                batch.values.append(m.value())
                batch.keys.append(m.key())
                batch.partitions.append(p)
                batch.offsets.append(m.offset())
                batch.timestamps_ms.append(ts)
                if self.window_ns is None and len(batch) >= self.max_records:
                    yield batch
                    batch = RawBatch(topic=self.topic)
                if m.offset() + 1 >= end:
                    done = True
                    break
        if len(batch):
            yield batch


@dataclass
class ReplayResult:
    """Outputs of a replay, in deterministic order, plus rejects and final per-partition states."""

    outputs: Outputs
    rejected: list[tuple[int, int, Rejected]]
    states: dict[int, Any]
    symbols: SymbolTable
    records: int = 0


def replay(processor: Processor[Any], source: ReplaySource, flush: bool = True) -> ReplayResult:
    """Run ``processor`` over ``source``'s batches (fresh state per partition; the batch's last record
    timestamp is its ``ingest_ns``, so outputs do not depend on the wall clock)."""
    symbols = SymbolTable()
    states: dict[int, Any] = {}
    out = Outputs()
    rejected: list[tuple[int, int, Rejected]] = []
    n = 0
    for batch in source.batches():
        p = batch.partitions[0]
        state = states.get(p)
        if state is None:
            state = processor.initial_state()
        idx = np.arange(len(batch), dtype=np.int64)
        ingest_ns = batch.timestamps_ms[-1] * 1_000_000
        dec = processor.decode(batch.values, idx, symbols, p, ingest_ns)
        rej = list(dec.rejected)
        if len(dec.columns):
            o, state = process_isolating(processor, dec.columns, state)
            out.extend(Outputs(o.records))
            rej.extend(o.rejected)
        rejected.extend((p, batch.offsets[r.index], r) for r in rej)
        states[p] = state
        n += len(batch)
    if flush:
        for p in sorted(states):
            o, states[p] = processor.flush(states[p], symbols, p)
            out.extend(o)
    return ReplayResult(out, rejected, states, symbols, n)
