"""Producing a worker's records: :class:`OutputSending`, the half of ``CommitProtocol`` that puts
records on the producer (``streams/commit_protocol.py`` owns when they are committed).

Three ways, by guarantee and record I/O (``RuntimeConfig``):

- at-least-once: each record to a known partition (its key's by Java's murmur2, or the one given),
  the last record of each partition of a call a *delivery fence* whose acknowledgement settles the
  cut (``streams/delivery_fences.py``); the records between fences through the C extension's
  ``produce_many`` (columnar) or ``map`` over ``produce()``;
- exactly-once with columnar record I/O: jobs for the extension's ``Sender`` thread
  (``streams/send_pipeline.py``), drained before the offsets join the transaction;
- otherwise: ``produce_many`` or ``map`` over ``produce()``, the partitioner picking by key.

A full producer queue waits (bounded by ``produce_block_timeout_s``) in :meth:`OutputSending.send`,
then the rest resume in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from operator import length_hint
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.streams.delivery_fences import (
    DeliveryFences,
    KeyPartitioner,
    OnDelivery,
    last_per_partition,
)
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.send_pipeline import SendJob, SendPipeline

Headers = list[tuple[str, bytes]] | dict[str, bytes]

#: ``send_many``'s constant positional arguments of ``Producer.produce`` (partition -1 =
#: ``RD_KAFKA_PARTITION_UA``, the partitioner picks by key; no ``on_delivery`` / ``callback``)
_UNASSIGNED, _NONE = repeat(-1), repeat(None)


def _as_list(seq: Any) -> list[Any]:
    """``seq`` itself when it is a list (the C extension takes lists), else a list of it."""
    return seq if type(seq) is list else list(seq)


def _drain(calls: Iterator[Any]) -> None:
    """Run an iterator to its end, keeping nothing (the C loop behind ``send_many``)."""
    deque(calls, maxlen=0)


def header_arg(headers: list[tuple[str, bytes]]) -> Headers:
    """The ``headers`` argument for ``produce()``: a dict when the names are distinct (the same
    headers on the wire, in the same order). confluent-kafka 2.12 converts a dict about 0.4 us per
    record faster than the equal list of pairs (measured with one 200-byte header: 0.88 against
    1.29 us per ``produce()`` call, 0.73 without headers), and the features worker puts its config
    header on every feature vector. A list with a repeated name stays a list."""
    names = {k for k, _ in headers}
    return dict(headers) if len(names) == len(headers) else headers


def _longest(items: Sequence[bytes | None]) -> int:
    try:
        return max(map(len, items), default=0)  # type: ignore[arg-type]
    except TypeError:  # a None (key)
        return max((len(x) for x in items if x is not None), default=0)


class OutputSending:
    """Producing records in order, waiting while the producer's queue is full (see module doc).
    Mixed into ``CommitProtocol``, which sets the attributes below in its ``__init__``."""

    producer: Any
    rt: RuntimeConfig
    clock: Clock
    #: at-least-once: the delivery fences (None exactly-once)
    fences: DeliveryFences | None
    #: the C extension's column producer (``streams/columnar_io.py``), or None: ``produce()`` calls
    _produce_many: Any
    _c_size_bound: Any
    _sender_type: Any
    _sends: SendPipeline | None
    _partitioner: KeyPartitioner
    #: topic -> partitions, of the topics at-least-once places records in by key
    partition_counts: dict[str, int]
    _null_turn: int

    def send(self, topic: str, key: bytes | None, value: bytes | None, ts_ms: int, *, partition: int | None = None,
             headers: Headers | None = None, on_delivery: Callable[..., None] | None = None) -> None:
        """Produce one record, waiting (bounded) while the producer queue is full."""
        kwargs: dict[str, Any] = {"timestamp": ts_ms}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        deadline = self.clock.monotonic() + self.rt.produce_block_timeout_s
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                if self.clock.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._QUEUE_FULL,
                                                    f"producer queue full for {self.rt.produce_block_timeout_s:.0f} s")) from None
                # exactly-once producers get no success reports, so nothing ends the wait early
                self.producer.poll(0.005 if self.rt.exactly_once else 0.05)

    def _size_bound(self, values: Sequence[bytes], keys: Sequence[bytes | None]) -> int:
        """The largest value's length plus the largest key's (None = 0), bytes: no record of the
        columns is larger. One C pass over lists on the columnar path (``max(map(len, ...))`` costs
        about 40 ns a record, a tenth of producing it)."""
        if self._c_size_bound is not None and type(values) is list and type(keys) is list:
            return int(self._c_size_bound(values, keys))
        return _longest(values) + _longest(keys)

    def send_many(self, topic: str, keys: list[bytes | None], values: list[bytes], ts_ms: list[int],
                  headers: list[tuple[str, bytes]] | None = None,
                  on_last_delivered: Callable[..., None] | None = None, partition: int | None = None) -> None:
        """Produce records in order (``headers`` on every one; the delivery callback on the last; all
        to ``partition`` when given, else the partitioner picks by key); a full producer queue waits
        as :meth:`send` does.

        With columnar record I/O (``RuntimeConfig.record_io``) all but the last record go through the
        C extension's ``produce_many`` (:meth:`_send_columns`). Otherwise one ``produce()`` call
        each, run from C: ``map`` over the argument columns, with the arguments positional
        (``topic, value, key, partition, on_delivery, callback, timestamp, headers``; headers as
        :func:`header_arg` makes them). A Python ``for`` loop passing ``timestamp=`` by keyword cost
        1.0 us per record on the 2-core AMD VM (a kwargs dict per call), this 0.4 us.
        ``Producer.produce_batch`` cannot carry per-record timestamps or headers in confluent-kafka
        2.12 (``NotImplementedError``), and output timestamps are event times. On ``BufferError``
        the records iterator's remaining length says which record did not fit: it is sent waiting
        for room, and the rest resume. The last record always goes through :meth:`send` (it may
        carry the delivery callback). At-least-once places the records and fences each partition's
        last one (:meth:`_send_fenced`)."""
        n = len(values)
        if not n:
            return
        if self.fences is not None:
            if partition is not None or topic in self.partition_counts:
                self._send_fenced(topic, keys, values, ts_ms, headers, on_last_delivered, partition)
                return
            self.fences.unplaced()  # nowhere known: the cut settles on an empty queue
        if self._sender_type is not None and on_last_delivered is None:
            job = SendJob(topic, _as_list(values), _as_list(keys), _as_list(ts_ms),
                          list(headers) if headers else None, -1 if partition is None else partition)
            if not self._pipeline().submit(job):
                self._settle_sends()
            return
        last = n - 1
        hdrs = header_arg(headers) if headers else None
        if self._produce_many is not None:
            if last:
                self._send_columns(topic, keys, values, ts_ms, headers, -1 if partition is None else partition, last)
        else:
            self._send_mapped(topic, keys, values, ts_ms, hdrs, partition, last)
        self.send(topic, keys[last], values[last], ts_ms[last], partition=partition, headers=hdrs,
                  on_delivery=on_last_delivered)

    def _send_fenced(self, topic: str, keys: list[bytes | None], values: Sequence[bytes | None], ts_ms: list[int],
                     headers: list[tuple[str, bytes]] | None, then: OnDelivery | None, partition: int | None) -> None:
        """At-least-once :meth:`send_many`: each record to a known partition (``partition``, else its
        key's, :class:`KeyPartitioner`), and the last record of each partition a fence
        (``streams/delivery_fences.py``); ``then`` runs on the last record's delivery."""
        assert self.fences is not None
        n = len(values)
        hdrs = header_arg(headers) if headers else None
        count = self.partition_counts[topic] if partition is None else None
        parts = None
        fences: Iterable[int] = (n - 1,)
        if count is not None:
            self._null_turn += 1  # records without a key: one partition per call, in turn (Java's sticky)
            parts = self._partitioner(keys, count, self._null_turn % count)
            fences = last_per_partition(parts).tolist()
        i = 0
        for f in fences:
            self._send_range(topic, keys, values, ts_ms, headers, hdrs, partition, parts, i, f)
            p = int(parts[f]) if parts is not None else partition
            assert p is not None
            fence = self.fences.fence(topic, p, then if f == n - 1 else None)
            self.send(topic, keys[f], values[f], ts_ms[f], partition=p, headers=hdrs, on_delivery=fence)
            self.fences.produced(fence)
            i = f + 1

    def _send_range(self, topic: str, keys: list[bytes | None], values: Sequence[bytes | None], ts_ms: list[int],
                    headers: list[tuple[str, bytes]] | None, hdrs: Headers | None, partition: int | None,
                    parts: np.ndarray | None, start: int, stop: int) -> None:
        """Records ``start..stop-1``, each to ``parts[i]`` when given, else to ``partition`` (None:
        the partitioner's choice)."""
        if stop <= start:
            return
        if self._produce_many is not None:
            self._send_columns(topic, keys, values, ts_ms, headers, -1 if partition is None else partition, stop,
                               start=start, parts=parts)
        else:
            self._send_mapped(topic, keys, values, ts_ms, hdrs, partition, stop, start=start, parts=parts)

    def _send_mapped(self, topic: str, keys: list[bytes | None], values: Sequence[bytes | None], ts_ms: list[int],
                     hdrs: Headers | None, partition: int | None, last: int, start: int = 0,
                     parts: np.ndarray | None = None) -> None:
        """Records ``start..last-1`` by ``map`` over ``produce()`` (see :meth:`send_many`), each to
        ``parts[i]`` when given."""
        i = start
        while i < last:
            vals = iter(values if i == 0 else values[i:last])
            ks, ts = (keys, ts_ms) if i == 0 else (keys[i:last], ts_ms[i:last])
            ps = (parts[i:last].tolist() if parts is not None else
                  _UNASSIGNED if partition is None else repeat(partition))
            try:
                _drain(map(self.producer.produce, repeat(topic, last - i), vals, ks, ps, _NONE, _NONE, ts, repeat(hdrs)))
                i = last
            except BufferError:
                sent = (len(values) if i == 0 else last) - i - length_hint(vals) - 1  # the failed one was taken
                i += sent
                self.send(topic, keys[i], values[i], ts_ms[i], partition=int(parts[i]) if parts is not None else partition,
                          headers=hdrs)
                i += 1

    def _send_columns(self, topic: str, keys: list[bytes | None], values: Sequence[bytes | None], ts_ms: list[int],
                      headers: list[tuple[str, bytes]] | None, partition: int, stop: int, start: int = 0,
                      parts: np.ndarray | None = None) -> None:
        """Records ``start..stop-1`` through the extension's ``produce_many`` (see :meth:`send_many`),
        each to ``parts[i]`` when given; a full queue: that record waits for room in :meth:`send`, then
        the rest resume; any other error raises ``KafkaException`` as ``produce()`` would."""
        assert self._produce_many is not None
        vals, ks, ts = _as_list(values), _as_list(keys), _as_list(ts_ms)
        hdr_list = list(headers) if headers else None
        i = start
        while i < stop:
            sent, code, reason = (self._produce_many(self.producer, topic, vals, ks, ts, hdr_list, partition, i, stop)
                                  if parts is None else
                                  self._produce_many(self.producer, topic, vals, ks, ts, hdr_list, partition, i, stop, parts))
            i += sent
            if code == 0:
                return
            if code != KafkaError._QUEUE_FULL:
                raise KafkaException(KafkaError(code, reason))
            p = int(parts[i]) if parts is not None else None if partition < 0 else partition
            self.send(topic, keys[i], values[i], ts_ms[i], partition=p, headers=header_arg(headers) if headers else None)
            i += 1

    def _pipeline(self) -> SendPipeline:
        """The send pipeline of the current producer (a new one after the producer was replaced)."""
        if self._sends is None or self._sends.producer is not self.producer:
            if self._sends is not None:
                self._sends.close()
            self._sends = SendPipeline(self._sender_type, self.producer)
        return self._sends

    def _settle_sends(self) -> None:
        """Wait for the background sends (exactly-once); send here, in order, what they could not (a
        full queue: waiting for room, as :meth:`send` does), and raise ``KafkaException`` for any
        other error, as ``produce()`` would."""
        if self._sends is None:
            return
        for u in self._sends.drain():
            if u.code not in (0, KafkaError._QUEUE_FULL):
                raise KafkaException(KafkaError(u.code, u.reason))
            j = u.job
            self._send_columns(j.topic, j.keys, j.values, j.timestamps_ms, j.headers, j.partition, len(j), start=u.sent)

    def drop_sends(self) -> None:
        """Wait for the background sends and forget what they could not send (before an abort or a
        new producer: the transaction they belong to does not commit)."""
        if self._sends is not None:
            self._sends.discard()

    def close(self) -> None:
        """Stop the background send thread (the worker is closing; an open transaction is not
        committed by this)."""
        if self._sends is not None:
            self._sends.close()
            self._sends = None
