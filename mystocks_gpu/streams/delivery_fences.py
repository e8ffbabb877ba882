"""At-least-once settling per output partition: delivery fences.

An at-least-once worker may commit the input offsets of a cut only once every record produced
before the cut (outputs, changelog entries, dead letters) is acknowledged. The first rule was "the
producer's queue is empty": cheap, but at a sustained rate the queue is rarely empty (the records
of the batches after the cut are in it), so the next commit found the previous one unsettled and
waited for *every* acknowledgement (``producer.flush``, about 22 ms each at 50k ticks/s on the
2-core VM, in 44 of 66 commits).

A fence is the last record a batch produces to one partition, produced with a delivery callback.
The producer is idempotent with the gap-less guarantee and no message timeout (see
``StreamWorker._setup``): the broker appends a partition's records in the order produced and a
record that failed stops the producer, so the fence's acknowledgement says every record produced
to that partition before it is acknowledged too. A cut is settled when, for every partition it
wrote, a fence at or after its last record there is acknowledged: the records produced after the
cut no longer matter.

To know each record's partition, keyed records get it explicitly from :class:`KeyPartitioner`
(Java's murmur2, the partition the Java client and librdkafka's ``murmur2_random`` choose; the C
extension's ``partitions_of``, or a Python twin with a per-key cache); a record without a key goes
to the batch's ``null_partition``. A record produced where no partition is known (a topic whose
partition count the worker does not know) marks the cut :attr:`FenceCut.needs_empty_queue`: it
settles by the old rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF

#: librdkafka settings an at-least-once producer needs for its fences to mean anything: no message
#: times out (a timed-out message is the one failure the gap-less guarantee does not cover), and any
#: other failure that would leave a gap in a partition is fatal (``StreamWorker._setup`` adds them;
#: tests that check fences or sends on the real broker use the same)
FENCED_PRODUCER: dict[str, Any] = {"message.timeout.ms": 0, "enable.gapless.guarantee": True}

#: a delivery callback: ``(err, msg)`` as confluent-kafka calls it
OnDelivery = Callable[[Any, Any], None]


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` of ``data`` (a signed 32-bit int): the hash of the Java producer's
    default partitioner (and of librdkafka's ``murmur2_random``)."""
    n = len(data)
    h = (0x9747B28C ^ n) & _MASK
    tail = n & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = n & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (``toPositive(murmur2(key)) % partitions``)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """Each key's partition by :func:`key_partition`, for a list of keys at once.

    ``c_partitions_of``: the C extension's ``partitions_of(keys, n, null_partition) -> bytes`` (about
    10 ns a key), or None for the Python twin, which caches each key's partition (up to
    ``cache_keys`` keys per partition count, then starts over): a stream's keys repeat (symbols)."""

    def __init__(self, c_partitions_of: Callable[[list[bytes | None], int, int], bytes] | None,
                 cache_keys: int = 1 << 16) -> None:
        self._c = c_partitions_of
        self.cache_keys = cache_keys
        self._cache: dict[int, dict[bytes, int]] = {}

    def __call__(self, keys: Sequence[bytes | None], partitions: int, null_partition: int = 0) -> np.ndarray:
        """int32 array (len(keys),): the partition of each key; ``null_partition`` for a None key."""
        if partitions < 1 or not 0 <= null_partition < partitions:
            raise ValueError(f"need partitions >= 1 and 0 <= null_partition < partitions, got {partitions}, {null_partition}")
        if self._c is not None:
            return np.frombuffer(self._c(keys if type(keys) is list else list(keys), partitions, null_partition), np.int32)
        cache = self._cache.setdefault(partitions, {})
        if len(cache) > self.cache_keys:
            cache.clear()
        out = np.empty(len(keys), np.int32)
        for i, k in enumerate(keys):
            if k is None:
                out[i] = null_partition
                continue
            p = cache.get(k)
            if p is None:
                p = cache[k] = key_partition(k, partitions)
            out[i] = p
        return out


def last_per_partition(parts: np.ndarray) -> np.ndarray:
    """Ascending indices of the last record of each partition in ``parts`` (int array, (n,))."""
    if not len(parts):
        return np.empty(0, np.int64)
    rev = parts[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    return np.sort(len(parts) - 1 - first_in_rev)


@dataclass(frozen=True)
class FenceCut:
    """What a cut waits for: ``fences`` ((topic, partition) -> the fence number that must be
    acknowledged), or, with ``needs_empty_queue``, an empty producer queue (a record of the cut went
    where no partition was known)."""

    fences: dict[tuple[str, int], int] = field(default_factory=dict)
    needs_empty_queue: bool = False


class Fence:
    """One fence's delivery callback (``(err, msg)``, as confluent-kafka calls it): its (topic,
    partition), its number, and a callback to run after it."""

    __slots__ = ("owner", "tp", "seq", "then")

    def __init__(self, owner: DeliveryFences, tp: tuple[str, int], seq: int, then: OnDelivery | None) -> None:
        self.owner, self.tp, self.seq, self.then = owner, tp, seq, then

    def __call__(self, err: Any, msg: Any) -> None:
        self.owner._delivered(self, err)
        if self.then is not None:
            self.then(err, msg)


class DeliveryFences:
    """Fences of one producer (see module doc). Not thread-safe: the worker's thread produces, and
    its ``producer.poll()`` calls run the callbacks."""

    def __init__(self) -> None:
        self._seq = 0
        #: (topic, partition) -> the number of the last fence produced there / acknowledged there
        self._produced: dict[tuple[str, int], int] = {}
        self._acked: dict[tuple[str, int], int] = {}
        self._unplaced = False
        #: the first delivery error a fence reported (the producer stops on it: no later fence lands)
        self.error: KafkaError | None = None

    def fence(self, topic: str, partition: int, then: OnDelivery | None = None) -> Fence:
        """The delivery callback of a fence: the record about to be produced to ``topic`` /
        ``partition``, after every record of the cut to that partition. ``then``: a callback to run
        as well (the runtime's latency breakdown). Counts once :meth:`produced` says it was queued."""
        self._seq += 1
        return Fence(self, (topic, partition), self._seq, then)

    def produced(self, fence: Fence) -> None:
        """``fence``'s record is in the producer's queue: the next cut waits for it (a ``produce()``
        that raised leaves nothing to wait for)."""
        if self._produced.get(fence.tp, 0) < fence.seq:
            self._produced[fence.tp] = fence.seq

    def _delivered(self, fence: Fence, err: Any) -> None:
        if err is not None:
            if self.error is None:
                self.error = err
        elif self._acked.get(fence.tp, 0) < fence.seq:
            self._acked[fence.tp] = fence.seq

    @property
    def fenced_partitions(self) -> set[tuple[str, int]]:
        """Every (topic, partition) a fence was produced to."""
        return set(self._produced)

    def unplaced(self) -> None:
        """A record was produced where its partition is not known: the next cut needs an empty queue."""
        self._unplaced = True

    def cut(self) -> FenceCut:
        """What the records produced so far need before their offsets may be committed."""
        acked = self._acked
        waiting = {tp: s for tp, s in self._produced.items() if acked.get(tp, 0) < s}
        cut = FenceCut(waiting, self._unplaced)
        self._unplaced = False
        return cut

    def settled(self, cut: FenceCut, queue_len: int) -> bool:
        """True when every record of ``cut`` is acknowledged (``queue_len``: the producer's
        ``len()``, for a cut that needs an empty queue). Raises ``KafkaException`` with the error a
        fence reported, as a fatal error: with the gap-less guarantee a failed record stops the
        producer, and no later record of its partition is delivered."""
        if self.error is not None:
            err = self.error
            raise KafkaException(KafkaError(err.code(), f"an output was not delivered: {err.str()}", fatal=True))
        if queue_len == 0:
            return True
        if cut.needs_empty_queue:
            return False
        acked = self._acked
        return all(acked.get(tp, 0) >= s for tp, s in cut.fences.items())
