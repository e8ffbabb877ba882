"""Cutting a record stream into micro-batches: size, bytes, linger since the first record, or
(adaptive batching) as soon as everything that has arrived is in the batch.

:class:`BatchAccumulator` is pure (no Kafka): feed it records with :meth:`add` /
:meth:`add_messages` and ask :meth:`ready` with the current time; it never relies on one
``consume()`` call filling a batch.

Adaptive batching (``adaptive=True``, the runtime's default): a batch closes when it is full or
when the consumer's queue has been drained (``ready(now, drained=True)``), never waiting for more
input. Its size then follows the arrival rate: while a batch is processed, the next one accumulates
(about rate x processing time), so batches are a few records when the feed is quiet (latency: no
linger) and grow up to ``max_records`` under load (throughput: per-batch costs are amortised).
``linger_s`` still bounds how long a forming batch may wait in the fixed (``adaptive=False``) mode.

Each batch also keeps *poll marks*, ``(records, wall ns)`` per ``consume()`` that fed it, so the
runtime can tell how long each record waited for its batch (``streams/stream_metrics.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from mystocks_gpu.streams.columnar_io import ColumnChunk

#: the timestamp out of a message's ``(type, timestamp ms)``
_SECOND = itemgetter(1)
#: what add_columns returns when everything fit (never mutated)
_EMPTY = ColumnChunk()


@dataclass
class RawBatch:
    """Records of one micro-batch, in arrival order, as parallel lists.

    ``values``/``keys`` are the raw bytes; ``partitions``/``offsets``/``timestamps_ms`` locate them.
    """

    topic: str = ""
    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    nbytes: int = 0
    first_at: float | None = None
    #: ``(records, wall-clock ns)`` per ``consume()`` that fed this batch, in order
    poll_marks: list[tuple[int, int]] = field(default_factory=list)
    #: an upper bound of any record's key + value bytes (the largest value + the largest key), kept by
    #: :meth:`BatchAccumulator.add_messages`, so a size check can skip its per-record pass when no
    #: record can exceed the limit; -1 = unknown (a batch built otherwise)
    max_record_bytes: int = -1
    #: ``(record count, result)`` of the last :meth:`by_partition` / :meth:`timestamps_array`.
    #: Records only ever join a batch at its end (and leave it through :meth:`drop_partitions`, which
    #: clears these), so an unchanged count means the result still holds: the runtime asks for both
    #: several times per batch, and each list -> array conversion costs about 20 ns per record
    _groups: tuple[int, dict[int, list[int]]] | None = field(default=None, repr=False, compare=False)
    _ts: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.values)

    def next_offsets(self) -> dict[int, int]:
        """partition -> offset to commit (last offset + 1) for the records in this batch."""
        out: dict[int, int] = {}
        for p, idx in self.by_partition().items():
            out[p] = self.offsets[idx[-1]] + 1
        return out

    def first_offsets(self) -> dict[int, int]:
        """partition -> first offset in this batch (where a rewind seeks to)."""
        out: dict[int, int] = {}
        for p, o in zip(self.partitions, self.offsets, strict=True):
            if p not in out or o < out[p]:
                out[p] = o
        return out

    def by_partition(self) -> dict[int, list[int]]:
        """partition -> indices of its records, in order (offsets grow within a partition).
        Computed once per batch content; the caller must not modify what it returns."""
        n = len(self.partitions)
        if self._groups is None or self._groups[0] != n:
            parts = np.asarray(self.partitions, np.int32)
            uniq = np.unique(parts)
            if uniq.size == 1:
                groups = {int(uniq[0]): list(range(n))}
            else:
                groups = {int(p): np.flatnonzero(parts == p).tolist() for p in uniq}
            self._groups = (n, groups)
        return self._groups[1]

    def timestamps_array(self) -> np.ndarray:
        """int64 (n,): the records' timestamps in ms (computed once per batch content; read only)."""
        n = len(self.timestamps_ms)
        if self._ts is None or self._ts[0] != n:
            ts = np.asarray(self.timestamps_ms, np.int64)
            ts.flags.writeable = False
            self._ts = (n, ts)
        return self._ts[1]

    def drop_partitions(self, revoked: set[int]) -> int:
        """Remove the records of revoked partitions (a new owner reprocesses them); returns count dropped."""
        keep = [i for i, p in enumerate(self.partitions) if p not in revoked]
        dropped = len(self.partitions) - len(keep)
        if dropped:
            self._groups = self._ts = None
            for name in ("values", "keys", "partitions", "offsets", "timestamps_ms"):
                col = getattr(self, name)
                setattr(self, name, [col[i] for i in keep])
            self.nbytes = sum(len(v or b"") for v in self.values)
            if not self.values:
                self.first_at = None
            self.poll_marks = [(len(self.values), self.poll_marks[-1][1])] if self.values and self.poll_marks else []
        return dropped


class BatchAccumulator:
    """Accumulates records until ``max_records``, ``max_bytes`` or ``linger_s`` after the first one."""

    def __init__(self, max_records: int, max_bytes: int, linger_s: float, adaptive: bool = False) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.adaptive = adaptive
        self.batch = RawBatch()

    def add(self, value: bytes | None, key: bytes | None, partition: int, offset: int, ts_ms: int,
            now: float, topic: str = "") -> bool:
        """Append one record; returns True when the batch is now full (records or bytes)."""
        b = self.batch
        if b.first_at is None:
            b.first_at = now
            b.topic = topic
        b.max_record_bytes = -1  # unknown from here on (the record-by-record path keeps no bound)
        b.values.append(value)
        b.keys.append(key)
        b.partitions.append(partition)
        b.offsets.append(offset)
        b.timestamps_ms.append(ts_ms)
        b.nbytes += len(value) if value is not None else 0
        return self.full()

    def add_messages(self, msgs: list[Any], now: float, polled_ns: int = 0) -> list[Any]:
        """Append confluent-kafka messages until full (records or bytes); returns the ones that
        did not fit. ``polled_ns``: wall-clock ns when ``consume()`` returned them (a poll mark).

        This is the consumer's hot path: each field is read with ``map`` over the message class's
        own accessor (``Message.value`` etc., called from C), about 0.25 us per record less than
        list comprehensions calling ``m.value()`` on the 2-core AMD VM. The messages of one
        ``consume()`` share a class; any class with the same methods works (tests use stand-ins)."""
        if not msgs:
            return []
        take = msgs[: max(self.max_records - len(self.batch), 0)]
        if not take:
            return msgs
        cls = type(take[0])
        chunk = ColumnChunk(list(map(cls.value, take)), list(map(cls.key, take)), list(map(cls.partition, take)),
                            list(map(cls.offset, take)), list(map(_SECOND, map(cls.timestamp, take))))
        rest = self.add_columns(chunk, now, polled_ns, topic=take[0].topic())
        return msgs[len(take) - len(rest):]

    def add_columns(self, chunk: ColumnChunk, now: float, polled_ns: int = 0, topic: str = "") -> ColumnChunk:
        """Append a columnar chunk's records until full (records or bytes); returns the records that
        did not fit. ``polled_ns``: as in :meth:`add_messages`; ``topic``: the records' topic. A
        chunk that fits whole and carries its sizes (the columnar ingest's) is taken without a pass
        over its records."""
        b = self.batch
        k = min(len(chunk), max(self.max_records - len(b), 0))
        if k == 0:
            return chunk
        if k == len(chunk) and chunk.nbytes >= 0 and b.nbytes + chunk.nbytes < self.max_bytes:
            values, keys, total, longest = chunk.values, chunk.keys, chunk.nbytes, chunk.max_value + chunk.max_key
        else:
            values = chunk.values if k == len(chunk) else chunk.values[:k]
            try:
                sizes = list(map(len, values))  # type: ignore[arg-type]
            except TypeError:  # a None value (tombstone)
                sizes = [len(v) if v is not None else 0 for v in values]
            total = sum(sizes)
            if b.nbytes + total >= self.max_bytes:
                acc, j = b.nbytes, 0
                for j, sz in enumerate(sizes):  # noqa: B007
                    acc += sz
                    if acc >= self.max_bytes:
                        break
                k, values, sizes, total = j + 1, values[:j + 1], sizes[:j + 1], acc - b.nbytes
            keys = chunk.keys if k == len(chunk) else chunk.keys[:k]
            longest = max(sizes, default=0) + max(map(len, filter(None, keys)), default=0)  # type: ignore[arg-type]
        whole = k == len(chunk)
        if b.first_at is None:
            b.first_at = now
            b.topic = topic
        if not b.values:
            b.max_record_bytes = 0
        if b.max_record_bytes >= 0:
            b.max_record_bytes = max(b.max_record_bytes, longest)
        b.values.extend(values)
        b.keys.extend(keys)
        b.partitions.extend(chunk.partitions if whole else chunk.partitions[:k])
        b.offsets.extend(chunk.offsets if whole else chunk.offsets[:k])
        b.timestamps_ms.extend(chunk.timestamps_ms if whole else chunk.timestamps_ms[:k])
        b.nbytes += total
        b.poll_marks.append((k, polled_ns))
        return _EMPTY if whole else chunk.tail(k)

    def full(self) -> bool:
        """Records or bytes limit reached."""
        return len(self.batch) >= self.max_records or self.batch.nbytes >= self.max_bytes

    def remaining_s(self, now: float) -> float:
        """Seconds until the linger deadline (inf with an empty batch)."""
        if self.batch.first_at is None:
            return float("inf")
        return max(0.0, self.batch.first_at + self.linger_s - now)

    def ready(self, now: float, drained: bool = False) -> bool:
        """The batch should close now: full, or non-empty and past its linger deadline, or (adaptive)
        non-empty and ``drained`` (nothing more has arrived)."""
        if not len(self.batch):
            return False
        return self.full() or (self.adaptive and drained) or self.remaining_s(now) <= 0.0

    def take(self) -> RawBatch:
        """Hand out the current batch and start a new one."""
        b, self.batch = self.batch, RawBatch()
        return b
