"""The raw replay reader (Fetch v4 + numba record-batch parser) on the real broker: every
compression codec, tombstones, committed and aborted transactions interleaved, a start inside a
batch, records written after the bounds were captured, and the fall-back to confluent-kafka when
the raw path fails. The reference is a plain confluent-kafka ``read_committed`` consumer."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer, TopicPartition

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_consumer
from mystocks_gpu.streams import raw_replay
from mystocks_gpu.streams.replay import ReplaySource
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _producer(settings: Settings, **extra: Any) -> Producer:
    return Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 20, **extra})


def _produce(p: Producer, topic: str, items: list[tuple[int, bytes | None]]) -> None:
    for part, value in items:
        p.produce(topic, value=value, key=b"k", partition=part, headers=[("h", b"x")])
    p.flush(30)


def _load(settings: Settings, topic: str) -> set[bytes]:
    """Produce every codec, tombstones, and transactions (committed and aborted, interleaved);
    returns the values a read_committed reader must see."""
    want: set[bytes] = set()
    for codec in CODECS:
        p = _producer(settings, **{"compression.type": codec})
        items: list[tuple[int, bytes | None]] = [(i % 2, f"{codec}-{i}".encode() * (1 + i % 7)) for i in range(3000)]
        items += [(0, None), (1, None)]  # tombstones
        _produce(p, topic, items)
        want |= {v for _, v in items if v is not None}
    good = _producer(settings, **{"transactional.id": f"{topic}-good", "compression.type": "lz4"})
    bad = _producer(settings, **{"transactional.id": f"{topic}-bad"})
    for t in (good, bad):
        t.init_transactions(30)
    for round_ in range(3):
        good.begin_transaction()
        bad.begin_transaction()
        for i in range(500):
            g, b = f"commit-{round_}-{i}".encode(), f"ABORT-{round_}-{i}".encode()
            good.produce(topic, value=g, partition=i % 2)
            bad.produce(topic, value=b, partition=i % 2)
            want.add(g)
            if i % 100 == 0:
                good.flush(30)
                bad.flush(30)
        bad.abort_transaction(30)
        good.commit_transaction(30)
    tail: list[tuple[int, bytes | None]] = [(i % 2, f"tail-{i}".encode()) for i in range(100)]
    _produce(_producer(settings), topic, tail)
    return want | {v for _, v in tail if v is not None}


def _reference(settings: Settings, topic: str, bounds: list[Any]) -> dict[int, list[tuple[int, bytes | None]]]:
    """Per partition ``(offset, value)`` of ``[start, end)`` by a plain read_committed consumer."""
    c = make_consumer(settings.kafka, f"ref-{topic}", **{"enable.partition.eof": True})
    out: dict[int, list[tuple[int, bytes | None]]] = {}
    try:
        for b in bounds:
            rows: list[tuple[int, bytes | None]] = []
            c.assign([TopicPartition(topic, b.partition, b.start)])
            while True:
                m = c.poll(10)
                assert m is not None, "reference consumer stalled"
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    break
                if m.offset() < b.end:
                    rows.append((m.offset(), m.value()))
                if m.offset() >= b.end - 1:
                    break
            out[b.partition] = rows
    finally:
        c.close()
    return out


def _read(src: ReplaySource) -> dict[int, list[tuple[int, bytes | None]]]:
    out: dict[int, list[tuple[int, bytes | None]]] = {}
    for ch in src.chunks():
        assert len(ch.values) > 0
        rows = out.setdefault(ch.partition, [])
        vals = list(ch.values)
        offs = ch.offsets.tolist()
        assert offs[0] == ch.first and offs[-1] == ch.last
        rows.extend(zip(offs, vals, strict=True))
    return out


@pytest.fixture
def loaded(settings: Settings, unique: str) -> tuple[str, set[bytes]]:
    topic = f"raw.replay.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "symbol", None, partitions=2, dlq=False)])
    return topic, _load(settings, topic)


def test_raw_reader_equals_the_kafka_client_on_every_codec_and_transactions(settings: Settings,
                                                                              loaded: tuple[str, set[bytes]]) -> None:
    topic, want = loaded
    raw = ReplaySource(settings.kafka, topic, raw=True)
    bounds = raw.bounds()
    ref = _reference(settings, topic, bounds)
    got = _read(raw)
    assert raw.stats["raw_fallbacks"] == 0  # the raw path read everything
    assert got == ref
    values = [v for rows in got.values() for _, v in rows]
    assert sum(v is None for v in values) == 2 * len(CODECS)  # the tombstones, as None
    assert {v for v in values if v is not None} == want  # committed in, aborted out
    assert not any(v.startswith(b"ABORT") for v in values if v is not None)
    # the client path of ReplaySource gives the same too
    assert _read(ReplaySource(settings.kafka, topic, raw=False)) == ref


def test_raw_reader_starts_inside_a_batch_and_stops_at_the_captured_end(settings: Settings,
                                                                          loaded: tuple[str, set[bytes]]) -> None:
    topic, _ = loaded
    src = ReplaySource(settings.kafka, topic, raw=True)
    bounds = src.bounds()
    b = bounds[0]
    full = _reference(settings, topic, bounds)
    ref = full[b.partition]
    c = make_consumer(settings.kafka, f"addr-{topic}")
    try:
        address = raw_replay.leader_address(c, topic, b.partition, 10)
    finally:
        c.close()
    # start mid-way through the lz4 producer's batches, end before the transactions
    start, end = ref[len(ref) // 3][0], ref[2 * len(ref) // 3][0]
    rows = [(int(o), v) for vals, offs in raw_replay.read_partition(address, topic, b.partition, start, end, 10, 30)
            for o, v in zip(offs, vals, strict=True)]
    assert rows == [r for r in ref if start <= r[0] < end]
    # records written after the bounds were captured are not part of the replay
    _produce(_producer(settings), topic, [(0, b"late"), (1, b"late")])
    got = _read(src)
    assert got == full
    assert all(v != b"late" for rows_ in got.values() for _, v in rows_)


def test_raw_failure_falls_back_to_the_client_and_loses_nothing(settings: Settings, loaded: tuple[str, set[bytes]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    topic, _ = loaded
    src = ReplaySource(settings.kafka, topic, raw=True)
    ref = _reference(settings, topic, src.bounds())
    # fault: the leader's address refuses connections (a closed port)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    monkeypatch.setattr("mystocks_gpu.streams.replay.leader_address", lambda *a, **k: ("127.0.0.1", dead))
    assert _read(src) == ref
    assert src.stats["raw_fallbacks"] == 2  # each partition fell back, from its start


def test_bar_topics_store_uncompressed_batches_that_are_parsed_in_place(settings: Settings, unique: str) -> None:
    """The catalog's bar topics set ``compression.type=uncompressed``: an lz4 producer's batches
    are stored uncompressed (the batch attributes say codec 0), the raw reader parses them where
    they lie in the fetch response (no copy), reads from inside a batch, skips an aborted
    transaction, and equals a plain read_committed consumer; the next fetch offset read from the
    headers alone equals the parser's."""
    import dataclasses
    import struct

    import numpy as np

    from mystocks_gpu.streams.kafka_wire import FetchConnection
    from mystocks_gpu.streams.record_batches import HEADER_LEN, next_position, parse_fetched
    from mystocks_gpu.topics import get

    topic = f"md.bars.1d.raw{unique.replace('.', '')[-10:]}"
    spec = dataclasses.replace(get("md.bars.1d"), name=topic, partitions=1, dlq=False)
    assert spec.config()["compression.type"] == "uncompressed"
    TopicAdmin(settings.kafka).create([spec])
    _produce(_producer(settings, **{"compression.type": "lz4"}),
             topic, [(0, f"bar-{i}".encode() * 20) for i in range(4000)])
    bad = _producer(settings, **{"transactional.id": f"{topic}-bad", "compression.type": "lz4"})
    bad.init_transactions(30)
    bad.begin_transaction()
    for i in range(300):
        bad.produce(topic, value=f"ABORT-{i}".encode(), partition=0)
    bad.abort_transaction(30)
    _produce(_producer(settings, **{"compression.type": "lz4"}), topic, [(0, f"after-{i}".encode()) for i in range(500)])

    src = ReplaySource(settings.kafka, topic, raw=True)
    bounds = src.bounds()
    ref = _reference(settings, topic, bounds)
    assert _read(src) == ref and src.stats["raw_fallbacks"] == 0
    assert not any(v.startswith(b"ABORT") for _, v in ref[0] if v is not None)

    c = make_consumer(settings.kafka, f"addr-{topic}")
    try:
        address = raw_replay.leader_address(c, topic, 0, 10)
    finally:
        c.close()
    conn = FetchConnection(address[0], address[1], 10)
    try:
        fp = conn.fetch(topic, 0, 0, 8 << 20)
        data, p, codecs = fp.records, 0, set()
        while p + HEADER_LEN <= len(data):
            _base, blen = struct.unpack_from(">qi", data, p)
            if p + 12 + blen > len(data):
                break
            codecs.add(struct.unpack_from(">h", data, p + 21)[0] & 0x07)
            p += 12 + blen
        assert codecs == {0}  # stored uncompressed although produced with lz4
        for pos in (0, 1, 1234, 4100, bounds[0].end - 1):
            values, offsets, nxt = parse_fetched(fp, pos)
            assert next_position(fp, pos) == nxt
            assert np.shares_memory(values.buffer, np.frombuffer(data, np.uint8))  # parsed in place
            assert [(int(o), v) for o, v in zip(offsets, values, strict=True)] == [r for r in ref[0] if r[0] >= pos]
    finally:
        conn.close()
    mid = ref[0][len(ref[0]) // 2][0]
    rows = [(int(o), v) for vals, offs in raw_replay.read_partition(address, topic, 0, mid, bounds[0].end, 10, 30)
            for o, v in zip(offs, vals, strict=True)]
    assert rows == [r for r in ref[0] if r[0] >= mid]
