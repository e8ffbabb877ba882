"""RealTimeService: market data and features straight from the topics.

**Streams and flow control.** Every ``SubscribeMarketData`` / ``StreamFeatureCalculation`` call gets
its own Kafka consumer (no consumer group offsets: assigned partitions, positioned as the request
says) in a thread, which hands decoded batches to the call through a bounded queue of
``gateway.stream_queue_max`` batches (each at most ``max_batch`` records). When the client reads
slower than the topic grows, gRPC's HTTP/2 flow control stops the handler, the queue fills and the
consumer thread *waits*: the backlog stays in Kafka, never in the gateway (memory per stream is
bounded by the queue plus librdkafka's prefetch, ``gateway.stream_prefetch_kbytes``). Nothing is
dropped and order per partition (so per symbol) is kept. A stream ends when the client cancels,
its deadline passes, or ``max_records`` were sent.

**Positioning.** The first message of every stream is an empty ``MarketData`` / ``FeatureResponse``:
it says the consumer is positioned (for ``START_FROM_LATEST``, everything produced after it
arrives is delivered).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from mystocks_gpu.api.grpc_errors import InvalidArgument, Unavailable, mapped
from mystocks_gpu.api.protos import realtime_pb2, realtime_pb2_grpc
from mystocks_gpu.api.tick_wire import KindTable, encode_ticks, topic_field
from mystocks_gpu.api.topic_scan import read_until
from mystocks_gpu.infra.config import GatewayConfig, Settings
from mystocks_gpu.infra.kafka_clients import consume_ready, make_consumer, watermarks
from mystocks_gpu.schemas import AvroCodec, DecodeError, schema_store
from mystocks_gpu.schemas.batch_codec import TickDecoder
from mystocks_gpu.streams.broker_watch import watched_consumer

MARKET_TOPICS = ("md.ticks", "md.bars.1s", "md.bars.1m", "md.bars.1d")


def _keyed(msgs: list[Any], keys: frozenset[bytes]) -> list[Any]:
    """The messages whose key is one of ``keys`` (all of them when ``keys`` is empty)."""
    return [m for m in msgs if m.key() in keys] if keys else msgs


def per_record(convert: Callable[[Any], Any | None], symbols: set[str]) -> Callable[[list[Any]], list[Any]]:
    """A batch converter from a one-message converter (None = skip), keeping ``symbols``' keys."""
    keys = frozenset(s.encode() for s in symbols)

    def batch(msgs: list[Any]) -> list[Any]:
        return [x for x in map(convert, _keyed(msgs, keys)) if x is not None]
    return batch


class TickBatch:
    """A batch of ticks already in a ``MarketData`` message (``len`` = ticks; slicing keeps the
    first ones, for ``max_records``)."""

    def __init__(self, md: Any) -> None:
        self.md = md

    def __len__(self) -> int:
        return len(self.md.ticks)

    def __getitem__(self, part: slice) -> TickBatch:
        md = realtime_pb2.MarketData()
        md.CopyFrom(self.md)
        del md.ticks[part.stop:]
        return TickBatch(md)


def tick_converter(settings: Settings, symbols: set[str]) -> Callable[[list[Any]], Any]:
    """Batch converter of ``md.ticks`` messages to a :class:`TickBatch`: one :class:`TickDecoder`
    call per batch (columnar Avro decode, the stream worker's), the ``Tick``s written in protobuf
    wire format by :func:`~mystocks_gpu.api.tick_wire.encode_ticks` and parsed once; records that
    do not decode are skipped, as the per-record path does."""
    decoder = TickDecoder(schema_store(settings))  # its own symbol table: codes are per stream
    keys = frozenset(s.encode() for s in symbols)
    kinds = KindTable(next(list(p.symbols) for p in decoder.plans if p.name == "kind"))
    head = topic_field("md.ticks")

    def batch(msgs: list[Any]) -> Any:
        msgs = _keyed(msgs, keys)
        if not msgs:
            return []
        b = decoder.decode([m.value() for m in msgs])
        if not len(b):
            return []
        rows = b.index.tolist()
        part = np.fromiter((msgs[i].partition() for i in rows), np.int64, len(rows))
        off = np.fromiter((msgs[i].offset() for i in rows), np.int64, len(rows))
        return TickBatch(realtime_pb2.MarketData.FromString(head + encode_ticks(b.buffer, b.columns, kinds, part, off)))
    return batch


class StreamStats:
    """Counters of the gateway's streams (what the flow-control test measures)."""

    def __init__(self) -> None:
        self.streams = 0
        self.max_queued_batches = 0
        #: records read from Kafka (every symbol of the topic), records of the streams' symbols
        #: handed to their queues, records sent to clients
        self.records_read = 0
        self.records_queued = 0
        self.records_sent = 0


class TopicStream:
    """One stream's consumer thread and bounded queue (see the module docstring)."""

    def __init__(self, settings: Settings, gw: GatewayConfig, topic: str, start: int, start_time_ns: int,
                 start_offset: int, convert: Callable[[list[Any]], Any], loop: asyncio.AbstractEventLoop,
                 stats: StreamStats, max_batch: int) -> None:
        self.settings, self.gw, self.topic, self.convert, self.loop, self.stats = settings, gw, topic, convert, loop, stats
        self.start, self.start_time_ns, self.start_offset, self.max_batch = start, start_time_ns, start_offset, max_batch
        self.queue: asyncio.Queue[Any] = asyncio.Queue(gw.stream_queue_max)  # batches (list | TickBatch) or an error
        self.ready = asyncio.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"gateway-stream-{topic}")

    def _put(self, item: Any) -> bool:
        """Blocking put from the thread (backpressure); False when stopped meanwhile."""
        fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while not self.stop.is_set():
            try:
                fut.result(timeout=0.2)
                self.stats.max_queued_batches = max(self.stats.max_queued_batches, self.queue.qsize())
                return True
            except TimeoutError:
                continue
            except Exception:  # the loop is closing
                return False
        fut.cancel()
        return False

    def _positions(self, c: Any) -> list[TopicPartition]:
        md = c.list_topics(self.topic, timeout=self.settings.kafka.connect_timeout_s)
        if self.topic not in md.topics or md.topics[self.topic].error is not None:
            raise Unavailable(f"topic {self.topic} does not exist or the broker is unavailable")
        parts = sorted(md.topics[self.topic].partitions)
        if self.start == realtime_pb2.START_FROM_TIME:
            tps = c.offsets_for_times([TopicPartition(self.topic, p, self.start_time_ns // 1_000_000) for p in parts],
                                      timeout=10)
            return [TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in tps]
        if self.start == realtime_pb2.START_FROM_EARLIEST:
            return [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts]
        if self.start == realtime_pb2.START_FROM_OFFSET:
            return [TopicPartition(self.topic, p, self.start_offset) for p in parts]
        out = []  # latest: explicit end offsets, so nothing after `ready` is missed
        for p in parts:
            _, hi = watermarks(c, TopicPartition(self.topic, p), 10)
            out.append(TopicPartition(self.topic, p, hi))
        return out

    def _run(self) -> None:
        conf: dict[str, Any] = {"isolation.level": "read_committed",
                                "queued.max.messages.kbytes": self.gw.stream_prefetch_kbytes,
                                "fetch.max.bytes": max(1024, self.gw.stream_prefetch_kbytes) * 1024}
        c = watched_consumer(self.settings.kafka, f"mystocks-gateway-stream-{uuid.uuid4().hex[:8]}",
                             f"gateway stream {self.topic}",  # polled below: librdkafka#5301's watch is served
                             **conf)
        try:
            c.assign(self._positions(c))
            self.loop.call_soon_threadsafe(self.ready.set)
            while not self.stop.is_set():
                msgs = consume_ready(c, self.max_batch, 0.2)
                if not msgs:
                    continue
                self.stats.records_read += len(msgs)
                batch = self.convert([m for m in msgs if not m.error() and m.value() is not None])
                if batch:
                    if not self._put(batch):
                        return
                    self.stats.records_queued += len(batch)
        except BaseException as exc:
            self._put(exc)
            self.loop.call_soon_threadsafe(self.ready.set)
        finally:
            c.close()


class RealTimeServicer(realtime_pb2_grpc.RealTimeServiceServicer):
    """SubscribeMarketData, ProcessFeatureCalculation, StreamFeatureCalculation."""

    def __init__(self, settings: Settings, gw: GatewayConfig, stats: StreamStats | None = None) -> None:
        self.settings, self.gw = settings, gw
        self.codec = AvroCodec(schema_store(settings))
        self.stats = stats or StreamStats()

    # ---- market data -----------------------------------------------------------------------
    def _market_converter(self, topic: str, symbols: set[str]) -> Callable[[list[Any]], Any]:
        if topic == "md.ticks":
            return tick_converter(self.settings, symbols)
        decode = self.codec.decode

        def convert(m: Any) -> Any | None:
            try:
                r = decode(m.value())
            except DecodeError:
                return None
            return realtime_pb2.Bar(symbol=r["symbol"], ts_event_ns=r["ts_event"], interval_ns=r["interval_ns"],
                                    open=r["open"], high=r["high"], low=r["low"], close=r["close"], volume=r["volume"],
                                    vwap=r["vwap"], trades=r["trades"], partition=m.partition(), offset=m.offset())
        return per_record(convert, symbols)

    def _limits(self, max_batch: int) -> int:
        if max_batch < 0 or max_batch > 10_000:
            raise InvalidArgument("max_batch must be within 1..10000 (0 = 1000)")
        return max_batch or 1000

    async def _run_stream(self, stream: TopicStream, context: grpc.aio.ServicerContext, max_records: int,
                          wrap: Callable[[list[Any]], Any]) -> AsyncIterator[Any]:
        self.stats.streams += 1
        stream.thread.start()
        try:
            await stream.ready.wait()
            if not stream.queue.empty() and isinstance(stream.queue._queue[0], BaseException):  # type: ignore[attr-defined]
                raise stream.queue.get_nowait()  # type: ignore[misc]
            yield wrap([])  # positioned
            sent = 0
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if max_records and sent + len(item) > max_records:
                    item = item[: max_records - sent]
                sent += len(item)
                self.stats.records_sent += len(item)
                yield wrap(item)
                if max_records and sent >= max_records:
                    return
        finally:
            stream.stop.set()

    @mapped
    async def SubscribeMarketData(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        topic = request.topic or "md.ticks"
        if topic not in MARKET_TOPICS:
            raise InvalidArgument(f"topic must be one of {', '.join(MARKET_TOPICS)}, got {topic!r}")
        if request.max_records < 0:
            raise InvalidArgument("max_records must be >= 0")
        stream = TopicStream(self.settings, self.gw, topic, request.start, request.start_time_ns, request.start_offset,
                             self._market_converter(topic, set(request.symbols)), asyncio.get_running_loop(),
                             self.stats, self._limits(request.max_batch))
        tick = topic == "md.ticks"

        def wrap(batch: Any) -> Any:
            if isinstance(batch, TickBatch):
                return batch.md
            return realtime_pb2.MarketData(topic=topic, ticks=batch) if tick else realtime_pb2.MarketData(topic=topic, bars=batch)

        async for msg in self._run_stream(stream, context, request.max_records, wrap):
            yield msg

    # ---- features --------------------------------------------------------------------------
    def _vector(self, m: Any, r: dict[str, Any], names: set[str]) -> Any:
        vals = {k: v for k, v in r["values"].items() if not names or k in names}
        return realtime_pb2.FeatureVector(symbol=r["symbol"], ts_event_ns=r["ts_event"], seq=r["seq"], values=vals,
                                          partition=m.partition(), offset=m.offset())

    @mapped
    async def ProcessFeatureCalculation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if not request.symbols:
            raise InvalidArgument("symbols is required (the symbols whose latest feature vectors to return)")
        left = context.time_remaining()
        timeout = self.settings.kafka.connect_timeout_s if left is None else max(0.5, left - 0.2)
        found = await asyncio.get_running_loop().run_in_executor(None, self._latest, list(request.symbols),
                                                                 set(request.features), timeout)
        return realtime_pb2.FeatureResponse(vectors=[found[s] for s in request.symbols if s in found],
                                            missing=[s for s in request.symbols if s not in found])

    def _latest(self, symbols: list[str], names: set[str], timeout_s: float) -> dict[str, Any]:
        """Scan features.ticks backwards in growing windows until every symbol's newest vector is
        found or the topic's start is reached."""
        topic = self.gw.features_topic
        c = make_consumer(self.settings.kafka, f"mystocks-gateway-latest-{uuid.uuid4().hex[:8]}",
                          **{"isolation.level": "read_committed"})
        try:
            md = c.list_topics(topic, timeout=timeout_s)
            if topic not in md.topics or md.topics[topic].error is not None:
                raise Unavailable(f"topic {topic} does not exist or the broker is unavailable")
            marks = {p: watermarks(c, TopicPartition(topic, p), timeout_s)
                     for p in md.topics[topic].partitions}
            want: set[str] = set(symbols)
            found: dict[str, Any] = {}
            window = 2_000
            hi_done = {p: hi for p, (lo, hi) in marks.items()}
            while want - set(found):
                starts = {p: max(lo, hi_done[p] - window) for p, (lo, _hi) in marks.items() if hi_done[p] > lo}
                if not starts:
                    break
                newest: dict[str, tuple[Any, dict[str, Any]]] = {}

                def on_msg(m: Any, newest: dict[str, tuple[Any, dict[str, Any]]] = newest) -> None:
                    if m.value() is not None and m.key() is not None:
                        sym = m.key().decode(errors="replace")
                        if sym in want and sym not in found:
                            newest[sym] = (m, self.codec.decode(m.value()))

                if not read_until(c, topic, starts, {p: hi_done[p] for p in starts}, on_msg, timeout_s):
                    raise Unavailable(f"could not read {topic} within {timeout_s:.1f} s")
                for sym, (m, r) in newest.items():
                    found[sym] = self._vector(m, r, names)
                hi_done.update(starts)
                window *= 4
            return found
        finally:
            c.close()

    @mapped
    async def StreamFeatureCalculation(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        symbols, names = set(request.symbols), set(request.features)
        decode = self.codec.decode

        def convert(m: Any) -> Any | None:
            try:
                return self._vector(m, decode(m.value()), names)
            except DecodeError:
                return None

        stream = TopicStream(self.settings, self.gw, self.gw.features_topic, request.start, request.start_time_ns, 0,
                             per_record(convert, symbols), asyncio.get_running_loop(), self.stats, 1000)
        async for msg in self._run_stream(stream, context, request.max_records,
                                          lambda b: realtime_pb2.FeatureResponse(vectors=b)):
            yield msg
