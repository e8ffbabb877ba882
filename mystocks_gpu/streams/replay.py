"""Replay a time range of a topic, deterministically, losing nothing whatever the record order.

Bounds are captured once, when the source first needs them (:meth:`ReplaySource.bounds`, "at job
start"), per partition:

- **end**: the partition's high watermark as a ``read_committed`` consumer sees it (the last stable
  offset while a transaction is open). The replay reads every record below it and nothing that
  arrives later, so a replay is a fixed snapshot. The end is *never* found with
  ``offsets_for_times(end)``: that assumes event times rise within a partition, which per-ticker
  loads (ticker A's whole history, then ticker B's) or files sorted by ticker break — every record
  of B before the end time would sit after A's first late record and be lost.
- **start**: ``offsets_for_times(start)``, which Kafka defines as the *earliest* offset whose
  timestamp is >= ``start``; every record before it is therefore older than ``start`` whatever the
  order, so skipping them loses nothing. Without a start, the low watermark.

Records are then filtered by time (``start`` inclusive, ``end`` exclusive). Time bounds use Kafka
record timestamps (ms, = event time for this project's topics, as the loader writes them);
:meth:`ReplaySource.chunks` leaves the filter to the caller, who filters on the decoded event time
(ns), exactly. Partitions are replayed one after another in ascending order and cut into batches
by record count or by event-time window, so the same range always gives the same batches.
Positions come from the records themselves, never from offset arithmetic (transaction markers
take offsets). A replay that makes no progress for ``stall_timeout_s`` fails instead of hanging.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, TopicPartition

from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import consume_ready, ensure_broker, make_consumer, watermarks
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.batching import RawBatch
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.kafka_wire import RawFetchError
from mystocks_gpu.streams.prefetch import prefetched
from mystocks_gpu.streams.processor import Outputs, Processor, Rejected, process_isolating
from mystocks_gpu.streams.raw_replay import leader_address, raw_allowed, read_partition

log = logging.getLogger(__name__)

#: librdkafka settings of a replay consumer: large fetches (a replay reads whole partitions), no CRC
#: checks (the broker checks on write), partition EOF events (the end of a bounded read)
REPLAY_CONSUMER: dict[str, Any] = {
    "enable.partition.eof": True,
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 16 << 20,
    "queued.min.messages": 100_000,
    "queued.max.messages.kbytes": 65_536,
    "check.crcs": False,
    # a fetch at the end of the data returns at once (the broker's default holds it 500 ms for more;
    # a bounded replay reads each partition up to a known end and must not wait at every partition)
    "fetch.wait.max.ms": 10,
}


@dataclass(frozen=True)
class ReplayRange:
    """``[start_ns, end_ns)`` of event time; None = from the beginning / to the end captured at start."""

    start_ns: int | None = None
    end_ns: int | None = None

    def __post_init__(self) -> None:
        if self.start_ns is not None and self.end_ns is not None and self.end_ns <= self.start_ns:
            raise FatalRuntimeError(f"replay range is empty or inverted: start {self.start_ns} >= end {self.end_ns}")


@dataclass(frozen=True)
class PartitionBound:
    """Offsets ``[start, end)`` of one partition read by a replay (``end``: captured at start)."""

    partition: int
    start: int
    end: int

    @property
    def records(self) -> int:
        """Upper bound of the records read (transaction markers take offsets too)."""
        return max(0, self.end - self.start)


@dataclass
class ValueChunk:
    """Values of consecutive records of one partition (offsets ``first``..``last``), unfiltered by
    time; ``offsets`` int64 ``(n,)`` is each record's offset (transaction markers take offsets, so
    they are not ``first + i``)."""

    partition: int
    values: Sequence[bytes | None]  # a list (confluent-kafka) or RecordValues (the raw reader)
    first: int
    last: int
    offsets: np.ndarray


class ReplaySource:
    """Deterministic batches of a topic's records over a :class:`ReplayRange`.

    Args:
        cfg: Kafka connection.
        topic: the topic to replay.
        rng: the event-time range.
        max_records: records per batch of :meth:`batches` (when ``window_ns`` is None).
        window_ns: cut :meth:`batches` at event-time window boundaries (``ts // window_ns``) instead.
        stall_timeout_s: fail when a partition yields nothing for this long before its end.
        raw: read :meth:`chunks` with the raw Fetch client (:mod:`~mystocks_gpu.streams.raw_replay`:
            record batches parsed by numba into one buffer, no per-record Python objects), falling
            back to confluent-kafka on any error; None = wherever allowed (PLAINTEXT listeners).
    """

    def __init__(self, cfg: KafkaConfig, topic: str, rng: ReplayRange = ReplayRange(),
                 max_records: int = 10_000, window_ns: int | None = None, *,
                 stall_timeout_s: float = 120.0, raw: bool | None = None) -> None:
        self.cfg, self.topic, self.rng = cfg, topic, rng
        self.raw = raw_allowed(cfg) if raw is None else raw
        self.stats = {"raw_fallbacks": 0}
        self.max_records, self.window_ns = max_records, window_ns
        self.stall_timeout_s = stall_timeout_s
        self._bounds: list[PartitionBound] | None = None

    # ---- bounds ------------------------------------------------------------------------------
    def _consumer(self) -> Any:
        return make_consumer(self.cfg, f"mystocks-replay-{uuid.uuid4().hex[:8]}", **REPLAY_CONSUMER)

    def bounds(self) -> list[PartitionBound]:
        """Per-partition ``[start, end)`` offsets, captured on the first call and fixed after (see
        the module doc); the replay reads exactly these."""
        if self._bounds is None:
            ensure_broker(self.cfg)
            consumer = self._consumer()
            try:
                self._bounds = self._capture(consumer)
            finally:
                consumer.close()
        return list(self._bounds)

    def _capture(self, consumer: Any) -> list[PartitionBound]:
        t = self.cfg.connect_timeout_s
        md = consumer.list_topics(self.topic, timeout=t).topics.get(self.topic)
        if md is None or md.error is not None:
            raise FatalRuntimeError(f"topic {self.topic} does not exist (create it with: mystocks-gpu topics create)")
        out = []
        for p in sorted(md.partitions):
            low, high = watermarks(consumer, TopicPartition(self.topic, p), t)
            start = low
            if self.rng.start_ns is not None and high > low:
                tp = consumer.offsets_for_times([TopicPartition(self.topic, p, self.rng.start_ns // 1_000_000)],
                                                timeout=t)[0]
                start = tp.offset if tp.offset >= 0 else high
            out.append(PartitionBound(p, max(start, low), high))
        return out

    def data_version(self) -> dict[str, list[list[int]]]:
        """The captured bounds as JSON-able data: ``{topic: [[partition, start, end], ...]}``
        (new records change it, so results keyed on it never go stale)."""
        return {self.topic: [[b.partition, b.start, b.end] for b in self.bounds()]}

    # ---- reading -----------------------------------------------------------------------------
    def _messages(self, consumer: Any, b: PartitionBound) -> Iterator[list[Any]]:
        """Lists of messages of partition ``b`` with offsets in ``[b.start, b.end)``, in order."""
        consumer.assign([TopicPartition(self.topic, b.partition, b.start)])
        last_progress = time.monotonic()
        next_offset = b.start
        try:
            while True:
                # what is already fetched, up to what is left (+1: the EOF event); waits only for the
                # first record (``consume(n, t)`` would wait for n records or the whole timeout)
                msgs = consume_ready(consumer, max(1, min(20_000, b.end - next_offset + 1)), 0.1)
                if not msgs:
                    if time.monotonic() - last_progress > self.stall_timeout_s:
                        raise FatalRuntimeError(f"replay of {self.topic}[{b.partition}] stalled for "
                                                f"{self.stall_timeout_s:.0f} s before offset {b.end}")
                    continue
                last_progress = time.monotonic()
                done = False
                for i, m in enumerate(msgs):
                    err = m.error()
                    if err is None:
                        continue
                    if err.code() == KafkaError._PARTITION_EOF:
                        msgs, done = msgs[:i], True
                        break
                    raise FatalRuntimeError(f"replay of {self.topic}[{b.partition}]: {err.str()}")
                if msgs and msgs[-1].offset() >= b.end - 1:
                    done = True
                    if msgs[-1].offset() >= b.end:  # records that arrived after the start: not ours
                        lo, hi = 0, len(msgs)
                        while lo < hi:
                            mid = (lo + hi) // 2
                            if msgs[mid].offset() < b.end:
                                lo = mid + 1
                            else:
                                hi = mid
                        msgs = msgs[:lo]
                if msgs:
                    next_offset = msgs[-1].offset() + 1
                    yield msgs
                if done:
                    return
        finally:
            consumer.unassign()

    def chunks(self, prefetch: int = 2) -> Iterator[ValueChunk]:
        """The fast path: values of every record in the captured bounds, one partition after
        another, in offset order, *not* filtered by time (the caller filters on the decoded event
        time). Null values (tombstones) are kept as None.

        ``prefetch``: chunks read ahead on a background thread while the caller works on the
        current one (:func:`~mystocks_gpu.streams.prefetch.prefetched`; 0 = read in the caller's
        thread). The bounds are captured here, in the caller's thread."""
        bounds = self.bounds()
        return prefetched(lambda: self._chunks(bounds), prefetch, name=f"replay-{self.topic}")

    def _chunks(self, bounds: list[PartitionBound]) -> Iterator[ValueChunk]:
        consumer = self._consumer()
        try:
            for b in bounds:
                if b.start >= b.end:
                    continue
                if self.raw:
                    try:
                        address = leader_address(consumer, self.topic, b.partition, self.cfg.connect_timeout_s)
                        for values, offsets in read_partition(address, self.topic, b.partition, b.start, b.end,
                                                              self.cfg.connect_timeout_s, self.stall_timeout_s):
                            yield ValueChunk(b.partition, values, int(offsets[0]), int(offsets[-1]), offsets)
                        continue
                    except RawFetchError as exc:  # go on from where it stopped with confluent-kafka
                        pos = getattr(exc, "position", b.start)
                        log.warning("raw replay of %s[%d] stopped at offset %d (%s); reading on with the "
                                    "Kafka client", self.topic, b.partition, pos, exc)
                        self.stats["raw_fallbacks"] += 1
                        b = PartitionBound(b.partition, pos, b.end)
                        if b.start >= b.end:
                            continue
                for msgs in self._messages(consumer, b):
                    offs = np.fromiter((m.offset() for m in msgs), np.int64, len(msgs))
                    yield ValueChunk(b.partition, [m.value() for m in msgs], int(offs[0]), int(offs[-1]), offs)
        finally:
            consumer.close()

    def batches(self) -> Iterator[RawBatch]:
        """Batches of one partition at a time, partitions in ascending order, filtered by time."""
        bounds = self.bounds()
        consumer = self._consumer()
        try:
            for b in bounds:
                if b.start >= b.end:
                    continue
                yield from self._partition(consumer, b)
        finally:
            consumer.close()

    def _partition(self, consumer: Any, b: PartitionBound) -> Iterator[RawBatch]:
        lo_ms = None if self.rng.start_ns is None else self.rng.start_ns // 1_000_000
        hi_ms = None if self.rng.end_ns is None else -(-self.rng.end_ns // 1_000_000)
        p = b.partition
        batch, window = RawBatch(topic=self.topic), None
        for msgs in self._messages(consumer, b):
            for m in msgs:
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
        processor.begin_batch()
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
