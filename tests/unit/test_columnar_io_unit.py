"""The columnar ingest's pure parts: the ``ingest`` setting and the record chunks (the broker
side is tests/integration/test_columnar_io.py)."""

from __future__ import annotations

import logging
import random
import subprocess
import sys

import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.streams import columnar_io
from mystocks_gpu.streams.batching import BatchAccumulator
from mystocks_gpu.streams.columnar_io import ColumnChunk, resolve_mode
from mystocks_gpu.streams.runtime_config import RuntimeConfig


def test_required_columnar_without_the_extension_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columnar_io, "_loaded", (None, "not built (simulated)"))
    with pytest.raises(ConfigError, match="not built"):
        resolve_mode("columnar")
    assert resolve_mode("auto") == (False, "not built (simulated)")


def test_more_partitions_than_the_ingest_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeExt:
        MAX_PARTITIONS = 8

    monkeypatch.setattr(columnar_io, "_loaded", (FakeExt, ""))
    assert resolve_mode("auto", partitions=8) == (True, "")
    use, why = resolve_mode("auto", partitions=9)
    assert not use and "9 partitions" in why
    with pytest.raises(ConfigError, match="9 partitions"):
        resolve_mode("columnar", partitions=9)


def test_column_chunk_helpers() -> None:
    c = ColumnChunk([b"a", None, b"c"], [None, b"k", b"k"], [0, 1, 0], [5, 6, 7], [1, 2, 3])
    assert c.tail(1) == ColumnChunk([None, b"c"], [b"k", b"k"], [1, 0], [6, 7], [2, 3])
    assert c.without_partitions({1}) == ColumnChunk([b"a", b"c"], [None, b"k"], [0, 0], [5, 7], [1, 3])
    assert c.without_partitions({9}) is c


def test_record_io_setting_is_validated() -> None:
    assert RuntimeConfig().record_io == "auto"
    for mode in ("auto", "columnar", "messages"):
        assert RuntimeConfig(record_io=mode).record_io == mode
    with pytest.raises(ConfigError, match="record_io must be one of"):
        RuntimeConfig(record_io="fast")


class _Msg:
    def __init__(self, value: bytes | None, key: bytes | None, partition: int, offset: int, ts: int) -> None:
        self._v, self._k, self._p, self._o, self._t = value, key, partition, offset, ts

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, self._t)

    def topic(self) -> str:
        return "t"


@pytest.mark.parametrize("sized", [False, True])
@pytest.mark.parametrize("max_records,max_bytes", [(1000, 10**9), (7, 10**9), (1000, 40), (5, 33)])
def test_add_columns_cuts_like_add_messages(max_records: int, max_bytes: int, sized: bool) -> None:
    """The same records fed as messages and as columns, in the same uneven calls, make the same
    batches and leave the same records pending, whatever cuts the batch (records or bytes), with
    or without the sizes the ingest measures (computed here from the records)."""
    recs = [(None if i % 5 == 0 else bytes(range(i % 9)), b"k%d" % (i % 3) if i % 4 else None, i % 3, 100 + i,
             1_000 + i) for i in range(40)]
    calls = [recs[0:3], recs[3:17], recs[17:18], recs[18:40]]
    by_msg = BatchAccumulator(max_records, max_bytes, linger_s=10)
    by_col = BatchAccumulator(max_records, max_bytes, linger_s=10)
    for call in calls:
        rest_m = by_msg.add_messages([_Msg(*r) for r in call], now=1.0, polled_ns=7)
        chunk = ColumnChunk(*(list(col) for col in zip(*call, strict=True)))
        if sized:
            chunk.nbytes = sum(len(r[0] or b"") for r in call)
            chunk.max_value = max(len(r[0] or b"") for r in call)
            chunk.max_key = max(len(r[1] or b"") for r in call)
        rest_c = by_col.add_columns(chunk, now=1.0, polled_ns=7, topic="t")
        assert [(m.value(), m.key(), m.partition(), m.offset(), m.timestamp()[1]) for m in rest_m] == \
            list(zip(rest_c.values, rest_c.keys, rest_c.partitions, rest_c.offsets, rest_c.timestamps_ms, strict=True))
        if by_msg.full():
            bm, bc = by_msg.take(), by_col.take()
            assert bm == bc
    bm, bc = by_msg.take(), by_col.take()
    assert bm == bc


def test_an_assignment_during_the_consumer_close_leaves_the_closed_ingest_alone(caplog: pytest.LogCaptureFixture) -> None:
    """The worker closes its ingest before its consumer; a rebalance librdkafka delivers inside
    ``consumer.close()`` (an assignment still in flight) must not reach the closed ingest (it
    raised ``RuntimeError: closed`` in the assignment callback and the worker exited 1). The
    processor is closed last, and a close that fails is logged, not raised."""
    from confluent_kafka import TopicPartition

    from mystocks_gpu.infra.config import KafkaConfig
    from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
    from mystocks_gpu.streams.stream_worker import StreamWorker

    order: list[str] = []

    class Ingest:
        closed = False

        def attach(self, parts: list[int]) -> None:
            if self.closed:
                raise RuntimeError("closed")
            order.append(f"attach {parts}")

        def close(self) -> None:
            self.closed = True
            order.append("ingest closed")

    class Protocol:
        failed = False

        def on_assign(self, parts: object) -> None:
            order.append(f"assigned {list(parts)}")  # type: ignore[call-overload]

        def close(self) -> None:
            order.append("protocol closed")

    class Aggregate(RunningAggregateProcessor):
        def close(self) -> None:  # the processor's release, last; one that fails is logged, not raised
            order.append("processor closed")
            raise OSError("the model source's broker is gone")

    w = StreamWorker(Aggregate(output_topic="t.out"), KafkaConfig(), RuntimeConfig(guarantee="at_least_once"))

    class Consumer:
        def close(self) -> None:
            w._on_assign(self, [TopicPartition("t", 2)])
            order.append("consumer closed")

        def incremental_assign(self, parts: object) -> None:
            pass

    class Producer:
        def flush(self, timeout: float) -> int:
            return 0

    ingest = Ingest()
    w._ingest, w.consumer, w.producer, w.protocol = ingest, Consumer(), Producer(), Protocol()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, "mystocks_gpu.streams.stream_worker"):
        w._close()
    assert order == ["ingest closed", "assigned [2]", "consumer closed", "protocol closed", "processor closed"]
    assert "closing the processor failed: OSError: the model source's broker is gone" in caplog.text


def test_size_bound_is_the_largest_value_plus_the_largest_key() -> None:
    """The extension's one-pass bound (the produce path's size check) against plain Python."""
    ext, why_not = columnar_io.load_extension()
    if ext is None:
        pytest.skip(f"the C extension is not built: {why_not}")
    rng = random.Random(11)
    for n in (0, 1, 7, 500):
        values = [rng.randbytes(rng.randrange(0, 300)) for _ in range(n)]
        keys: list[bytes | None] = [rng.choice([None, rng.randbytes(rng.randrange(0, 40))]) for _ in range(n)]
        want = max((len(v) for v in values), default=0) + max((len(k) for k in keys if k is not None), default=0)
        assert ext.size_bound(values, keys) == want
    assert ext.size_bound([None, b"abc"], [b"k"]) == 4  # a tombstone value counts 0
    with pytest.raises(TypeError, match="key 1 must be bytes or None, not str"):
        ext.size_bound([b"a", b"b"], [b"k", "k"])


def test_the_extension_reads_handles_only_from_confluent_kafka_clients() -> None:
    """The extension reads a librdkafka handle out of the object it is given (the first field after
    the object header): anything but a confluent-kafka client of the right kind is refused with a
    TypeError before that read (it used to be read from any object), a closed one with a RuntimeError."""
    import confluent_kafka

    ext, why_not = columnar_io.load_extension()
    if ext is None:
        pytest.skip(f"the C extension is not built: {why_not}")
    # no broker is contacted: the clients are created and closed without a request
    producer = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:9"})
    consumer = confluent_kafka.Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "handle-check"})
    try:
        for wrong in (consumer, object(), b"\0" * 64, None):
            with pytest.raises(TypeError, match="expected a confluent-kafka cimpl.Producer, got "):
                ext.produce_many(wrong, "t", [b"v"], [None], [0], None, -1, 0, 1)
            with pytest.raises(TypeError, match="expected a confluent-kafka cimpl.Producer"):
                ext.Sender(wrong)
        for wrong in (producer, object(), 12):
            with pytest.raises(TypeError, match="expected a confluent-kafka cimpl.Consumer, got "):
                ext.Ingest(wrong, "t")
        with pytest.raises(RuntimeError, match="bound already"):
            ext.bind("/nonexistent", 0, confluent_kafka.Producer, confluent_kafka.Consumer)
        # the right kinds are accepted: a full check of produce/consume is tests/integration/test_columnar_io.py
        assert ext.produce_many(producer, "t", [b"v"], [None], [0], None, -1, 0, 0) == (0, 0, "")
    finally:
        consumer.close()
    with pytest.raises(RuntimeError, match="the consumer is closed"):
        ext.Ingest(consumer, "t")


_RACE = """
import threading
from mystocks_gpu.streams.columnar_io import load_extension
start = threading.Barrier(8)
got = []
def ask():
    start.wait()
    got.append(load_extension())
threads = [threading.Thread(target=ask) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert len(got) == 8 and len({id(m) for m, _ in got}) == 1 and got[0][0] is not None, got
"""


def test_threads_asking_for_the_extension_at_once_all_get_it_bound_once() -> None:
    """The gateway builds two watched clients on two threads at once: both bind the extension
    (``RuntimeError: librdkafka is bound already`` for the second, before the lock). A fresh
    interpreter each round, since binding happens once per process."""
    if columnar_io.load_extension()[0] is None:
        pytest.fail("the C extension is not built (make install builds it)")
    for _ in range(5):
        r = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
