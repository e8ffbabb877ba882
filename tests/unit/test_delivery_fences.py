"""Delivery fences (``streams/delivery_fences.py``): the key partitioner against Kafka's own murmur2
test vectors (``UtilsTest.testMurmur2`` of the Java client), its C and Python twins against each
other, the fence positions against pandas, and the settle rule on hand-driven delivery reports.
(On the real broker: ``tests/integration/test_send_many.py`` checks every placed record's partition
against librdkafka's ``murmur2_random``, and ``test_delivery_fences.py`` the settle.)"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import KafkaError, KafkaException

from mystocks_gpu.streams.columnar_io import load_extension
from mystocks_gpu.streams.delivery_fences import (
    DeliveryFences,
    KeyPartitioner,
    key_partition,
    last_per_partition,
    murmur2,
)

#: org.apache.kafka.common.utils.UtilsTest.testMurmur2
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _c_partitions_of():  # type: ignore[no-untyped-def]
    ext, why = load_extension()
    assert ext is not None, f"the C extension is part of the install: {why}"
    return ext.partitions_of


def test_murmur2_matches_the_java_clients_test_vectors() -> None:
    for key, want in JAVA_MURMUR2.items():
        assert murmur2(key) == want, key
        assert key_partition(key, 7) == (want & 0x7FFFFFFF) % 7  # Utils.toPositive(murmur2) % partitions
    c = np.frombuffer(_c_partitions_of()(list(JAVA_MURMUR2), 0x7FFFFFFF, 0), np.int32)
    assert c.tolist() == [(v & 0x7FFFFFFF) % 0x7FFFFFFF for v in JAVA_MURMUR2.values()]


@pytest.mark.parametrize("n", [1, 3, 7, 12, 64])
def test_c_and_python_partitioners_agree(n: int) -> None:
    rng = random.Random(n)
    keys: list[bytes | None] = [rng.randbytes(rng.randrange(0, 41)) for _ in range(3_000)]
    keys += [f"SYM{i}".encode() for i in range(500)] + [None, b""]
    null = n - 1
    c = KeyPartitioner(_c_partitions_of())(keys, n, null)
    py = KeyPartitioner(None)(keys, n, null)
    assert c.dtype == py.dtype == np.int32
    np.testing.assert_array_equal(c, py)
    assert c[-2] == null and 0 <= c.min() and c.max() < n
    # the Python twin's per-key cache starts over past its bound, with the same answers
    small = KeyPartitioner(None, cache_keys=10)
    np.testing.assert_array_equal(small(keys, n, null), py)
    np.testing.assert_array_equal(small(keys[::-1], n, null), py[::-1])


def test_partitioner_rejects_bad_counts_and_keys() -> None:
    for part in (KeyPartitioner(_c_partitions_of()), KeyPartitioner(None)):
        with pytest.raises(ValueError, match="partitions >= 1"):
            part([b"a"], 0)
        with pytest.raises(ValueError, match="null_partition"):
            part([b"a"], 4, 4)
    with pytest.raises(TypeError, match="key 1 must be bytes"):
        KeyPartitioner(_c_partitions_of())([b"a", "str"], 4)  # type: ignore[list-item]


def test_last_per_partition_matches_pandas() -> None:
    rng = np.random.default_rng(5)
    for n, p in ((1, 1), (50, 4), (1_000, 12), (7, 30)):
        parts = rng.integers(0, p, n).astype(np.int32)
        want = pd.Series(np.arange(n)).groupby(parts).last().sort_values().to_numpy()
        np.testing.assert_array_equal(last_per_partition(parts), want)
    assert last_per_partition(np.empty(0, np.int32)).size == 0


class _Msg:
    def value(self) -> bytes:
        return b"v"


def _queued(f: DeliveryFences, topic: str, partition: int, then=None):  # type: ignore[no-untyped-def]
    """A fence whose record the producer took (what ``OutputSending._send_fenced`` does)."""
    fence = f.fence(topic, partition, then)
    f.produced(fence)
    return fence


def test_a_cut_settles_when_a_later_fence_of_each_of_its_partitions_is_acknowledged() -> None:
    f = DeliveryFences()
    a0, a1 = _queued(f, "out", 0), _queued(f, "out", 1)
    cl = _queued(f, "changelog", 3)
    cut = f.cut()
    assert set(cut.fences) == {("out", 0), ("out", 1), ("changelog", 3)} and not cut.needs_empty_queue
    later0 = _queued(f, "out", 0)  # produced after the cut, same partition
    b2 = _queued(f, "out", 2)  # after the cut, a partition the cut never wrote
    assert not f.settled(cut, queue_len=10)
    b2(None, _Msg())
    a1(None, _Msg())
    cl(None, _Msg())
    assert not f.settled(cut, queue_len=10)  # out/0 still open
    later0(None, _Msg())  # a later fence of out/0 covers the cut's record there
    assert f.settled(cut, queue_len=10)
    a0(None, _Msg())  # a late report of an older fence changes nothing
    assert f.settled(cut, queue_len=10)
    assert f.cut().fences == {}  # nothing waits now
    seen: list[bytes] = []
    _queued(f, "out", 0, then=lambda err, msg: seen.append(msg.value()))(None, _Msg())
    assert seen == [b"v"]  # the runtime's own callback rides on the fence
    f.fence("out", 5)  # its produce() raised: never queued, so nothing waits for it
    assert f.cut().fences == {} and ("out", 5) not in f.fenced_partitions


def test_unplaced_records_settle_only_on_an_empty_queue_and_a_failed_fence_is_fatal() -> None:
    f = DeliveryFences()
    f.unplaced()
    cut = f.cut()
    assert cut.needs_empty_queue and not f.settled(cut, queue_len=1) and f.settled(cut, queue_len=0)
    assert not f.cut().needs_empty_queue  # the flag belongs to the cut that carried the record
    fence = _queued(f, "out", 0)
    cut = f.cut()
    fence(KafkaError(KafkaError._MSG_TIMED_OUT, "gone"), _Msg())
    with pytest.raises(KafkaException) as exc:
        f.settled(cut, queue_len=0)
    err = exc.value.args[0]
    assert err.fatal() and err.code() == KafkaError._MSG_TIMED_OUT and "not delivered" in err.str()
