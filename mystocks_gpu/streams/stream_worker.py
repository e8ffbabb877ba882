"""The stream worker: batch consume -> decode -> process -> produce, exactly-once or at-least-once.

Exactly-once (default), per transaction (one batch, or the batches of ``commit_interval_ms``):
outputs + state changelog entries + dead letters are produced, then the consumed offsets are sent
with ``send_offsets_to_transaction`` (fresh group metadata) and the transaction commits. An
abortable error aborts it, seeks every partition of the transaction back to its committed offset
and rebuilds those partitions' state from the changelog, dropping the batch's state delta. A fatal
error (e.g. the producer was fenced by a newer instance) stops the worker with a clear message.

The transactional id is ``<group>.<processor>.<worker_id>``: a restarted worker with the same id
fences its dead predecessor at once; a different id waits at most ``transaction_timeout_ms``.
SIGTERM/SIGINT (via :meth:`StreamWorker.stop`) finish the current batch, commit, and return.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.kafka_clients import ensure_broker, make_consumer, make_producer
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.batching import BatchAccumulator, RawBatch
from mystocks_gpu.streams.dead_letters import dlq_headers, dlq_topic
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.processor import Columns, Outputs, Processor, Rejected
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.state_store import PartitionStates, ensure_changelog
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a worker did before it returned."""

    records_in: int = 0
    records_out: int = 0
    dlq: int = 0
    batches: int = 0
    aborts: int = 0
    seconds: float = 0.0


def process_isolating(processor: Processor[Any], cols: Columns, state: Any) -> tuple[Outputs, Any]:
    """Run ``processor.process``; if it raises, bisect the batch until the failing records are
    isolated, reject those (to the DLQ) and process the rest in order."""
    try:
        return processor.process(cols, state)
    except Exception as exc:  # a processor bug or a poison record: isolate it
        if len(cols) == 1:
            out = Outputs()
            out.rejected.append(Rejected(int(cols.index[0]), type(exc).__name__, str(exc) or repr(exc)))
            return out, state
    mid = len(cols) // 2
    out, state = process_isolating(processor, cols.take(slice(0, mid)), state)
    out2, state = process_isolating(processor, cols.take(slice(mid, None)), state)
    out.extend(out2)
    return out, state


class StreamWorker:
    """One consume-process-produce loop for one processor in one consumer group."""

    def __init__(self, processor: Processor[Any], kafka: KafkaConfig, runtime: RuntimeConfig | None = None,
                 group: str | None = None, worker_id: str | None = None, input_topic: str | None = None,
                 metrics: RuntimeMetrics | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.processor = processor
        self.kafka = kafka
        self.rt = runtime or RuntimeConfig()
        self.group = group or f"mystocks.{processor.name}"
        self.worker_id = worker_id or f"{socket.gethostname()}-0"
        self.topic = input_topic or processor.input_topic
        self.metrics = metrics or RuntimeMetrics(processor.name)
        self.clock = clock
        self.symbols = SymbolTable()
        self.summary = RunSummary()
        self._stopping = False
        self._in_txn = False
        self._txn_partitions: set[int] = set()
        self._pending_offsets: dict[int, int] = {}
        self._last_commit = time.monotonic()
        self._acc = BatchAccumulator(self.rt.max_records, self.rt.max_bytes, self.rt.linger_ms / 1000.0)
        self._paused: list[TopicPartition] = []
        self._last_lag = 0.0
        self._assigned_at = 0.0
        self._dirty: dict[int, list[np.ndarray]] = {}  # partition -> symbol codes touched since the last commit
        self.consumer: Any = None
        self.producer: Any = None
        self.states: PartitionStates | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and return (safe from a signal handler)."""
        self._stopping = True

    def _setup(self) -> None:
        ensure_broker(self.kafka)
        changelog = ensure_changelog(self.kafka, self.processor.name, self.group, self.topic)
        from mystocks_gpu.topics.admin import TopicAdmin

        live = TopicAdmin(self.kafka).existing()
        missing = [t for t in (*self.processor.output_topics, dlq_topic(self.topic)) if t not in live]
        if missing:
            raise FatalRuntimeError(f"output topic(s) {', '.join(missing)} do not exist; "
                                    "run: mystocks-gpu topics create")
        self.states = PartitionStates(self.processor, self.kafka, changelog, self.symbols)
        extra: dict[str, Any] = {
            "session.timeout.ms": self.rt.session_timeout_ms,
            "max.poll.interval.ms": self.rt.max_poll_interval_ms,
            "isolation.level": "read_committed",
            "fetch.min.bytes": 1,
            "queued.max.messages.kbytes": 65536,
        }
        if self.rt.group_protocol == "consumer":
            extra = {"group.protocol": "consumer", "max.poll.interval.ms": self.rt.max_poll_interval_ms,
                     "isolation.level": "read_committed"}
        else:
            extra["partition.assignment.strategy"] = "cooperative-sticky"
        self.consumer = make_consumer(self.kafka, self.group, route_logs=False, **{"log_level": 3, **extra})
        pconf: dict[str, Any] = {"linger.ms": 2 if self.rt.exactly_once else 1}
        if self.rt.exactly_once:
            pconf.update({"transactional.id": f"{self.group}.{self.processor.name}.{self.worker_id}",
                          "transaction.timeout.ms": self.rt.transaction_timeout_ms})
        self.producer = make_producer(self.kafka, route_logs=False, **{"log_level": 3, **pconf})
        if self.rt.exactly_once:
            self.producer.init_transactions(max(30.0, self.rt.transaction_timeout_ms / 1000 * 3))
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _caught_up(self) -> bool:
        """True when this worker owns partitions and its position is at the end of each of them."""
        try:
            assignment = self.consumer.assignment()
            if not assignment:
                return False
            for tp in self.consumer.position(assignment):
                _, high = self.consumer.get_watermark_offsets(tp, timeout=5)
                committed_or_pos = tp.offset
                if committed_or_pos < 0:
                    committed_or_pos = self.consumer.committed([tp], timeout=5)[0].offset
                    if committed_or_pos < 0 and high > 0:
                        return False
                if committed_or_pos >= 0 and committed_or_pos < high:
                    return False
            return True
        except KafkaException:
            return False

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        assert self.states is not None
        self.metrics.rebalances.inc()
        self._assigned_at = time.monotonic()
        for tp in partitions:
            self.metrics.restore_seconds.observe(self.states.restore(tp.partition))
        if self.rt.group_protocol == "classic":
            consumer.incremental_assign(partitions)
        log.info("assigned", extra={"fields": {"partitions": [tp.partition for tp in partitions]}})

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        assert self.states is not None
        self.metrics.rebalances.inc()
        revoked = {tp.partition for tp in partitions}
        if self._in_txn or self._pending_offsets:
            self._commit()  # hand over a clean cut: what was processed is committed, with its offsets
        self._acc.batch.drop_partitions(revoked)
        self.states.drop(list(revoked))
        if self.rt.group_protocol == "classic":
            consumer.incremental_unassign(partitions)
        log.info("revoked", extra={"fields": {"partitions": sorted(revoked)}})

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        assert self.states is not None
        lost = {tp.partition for tp in partitions}
        self._acc.batch.drop_partitions(lost)
        self.states.drop(list(lost))
        if self._in_txn:
            self._abort_and_rewind(reason="partitions lost")
        if self.rt.group_protocol == "classic":
            consumer.incremental_unassign(partitions)

    def run(self, idle_exit_s: float | None = None, max_records: int | None = None) -> RunSummary:
        """Run until :meth:`stop`, ``idle_exit_s`` without input (and nothing left to commit), or
        ``max_records`` consumed. Returns a :class:`RunSummary`."""
        t_start = time.monotonic()
        self._setup()
        last_input = time.monotonic()
        pending: list[Any] = []
        try:
            while not self._stopping:
                now = time.monotonic()
                if not pending:
                    want = max(1, min(self.rt.max_records - len(self._acc.batch), 10_000))
                    # consume() blocks until `want` records or the timeout: with an empty batch and a
                    # live stream, wait only briefly so the linger clock starts at the first record
                    idle_for = now - last_input
                    timeout = min(self._acc.remaining_s(now), 0.002 if idle_for < 1.0 else 0.1)
                    msgs = self.consumer.consume(want, timeout=timeout)
                    pending = self._filter_errors(msgs)
                    if pending:
                        last_input = time.monotonic()
                now = time.monotonic()
                pending = self._acc.add_messages(pending, now)
                if self._acc.ready(now):
                    self._handle(self._acc.take())
                    last_input = time.monotonic()  # processing time is not idle time
                elif self._due_commit():
                    self._commit()
                if self._assigned_at > last_input:
                    last_input = self._assigned_at  # waiting for an assignment is not idleness
                idle = time.monotonic() - last_input
                if (idle_exit_s is not None and idle > idle_exit_s and not len(self._acc.batch)
                        and (self._caught_up() or idle > 3 * idle_exit_s)):
                    break  # (a transactional input's end marker can keep position < high: bounded wait)
                if max_records is not None and self.summary.records_in >= max_records:
                    break
                self._update_lag()
            # graceful stop: finish the batch at hand and commit it
            if pending:
                self._acc.add_messages(pending, time.monotonic())
            if len(self._acc.batch):
                self._handle(self._acc.take())
            self._commit()
        finally:
            self._close()
        self.summary.seconds = time.monotonic() - t_start
        return self.summary

    def _close(self) -> None:
        try:
            if self.consumer is not None:
                self.consumer.close()
        except KafkaException:
            pass
        if self.producer is not None and not self.rt.exactly_once:
            self.producer.flush(30)

    # ---- the hot path ------------------------------------------------------------------------
    def _filter_errors(self, msgs: list[Any]) -> list[Any]:
        out = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise FatalRuntimeError(f"consumer fatal error: {err.str()}")
            else:
                log.warning("consumer error", extra={"fields": {"error": err.str()}})
        return out

    def _handle(self, batch: RawBatch) -> None:
        """Decode, process and produce one batch (inside the open transaction in EOS mode)."""
        assert self.states is not None
        t0 = time.perf_counter()
        ingest_ns = self.clock.now_ns()
        out = Outputs()
        for partition, idx_list in batch.by_partition().items():
            if partition not in self.states.states:
                continue  # revoked while the batch was forming
            idx = np.asarray(idx_list, np.int64)
            decoded = self.processor.decode([batch.values[i] for i in idx_list], idx, self.symbols, partition, ingest_ns)
            out.rejected.extend(decoded.rejected)
            if len(decoded.columns):
                part_out, new_state = process_isolating(self.processor, decoded.columns, self.states.states[partition])
                self.states.states[partition] = new_state
                out.extend(part_out)
                self._dirty.setdefault(partition, []).append(decoded.columns.columns["sym"])
                self._txn_partitions.add(partition)
        try:
            self._produce(batch, out)
        except KafkaException as exc:
            self._recover(exc.args[0], "produce")
            return
        for p, o in batch.next_offsets().items():
            if p in self.states.states:
                self._pending_offsets[p] = o
                self._txn_partitions.add(p)
        self.summary.batches += 1
        self.summary.records_in += len(batch)
        self.summary.dlq += len(out.rejected)
        self.metrics.records_in.inc(len(batch))
        self.metrics.dlq.inc(len(out.rejected))
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_latency.observe(time.perf_counter() - t0)
        if self._due_commit():
            self._commit()

    def _begin(self) -> None:
        if self.rt.exactly_once and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True

    def _produce(self, batch: RawBatch, out: Outputs) -> None:
        """Outputs (partitioned by key) and dead letters of one batch."""
        assert self.states is not None
        self._begin()
        for topic, (keys, values, ts) in out.records.items():
            self._send_many(topic, keys, values, ts)
            self.summary.records_out += len(values)
            self.metrics.records_out.inc(len(values))
        dlq = dlq_topic(self.topic)
        for rej in out.rejected:
            i = rej.index
            self._send(dlq, batch.keys[i], batch.values[i], batch.timestamps_ms[i],
                       headers=dlq_headers(rej.error_class, rej.message, self.topic, batch.partitions[i],
                                           batch.offsets[i], self.processor.name))

    def _send_many(self, topic: str, keys: list[bytes | None], values: list[bytes], ts: list[int]) -> None:
        produce = self.producer.produce
        for k, v, t in zip(keys, values, ts, strict=True):
            try:
                produce(topic, v, k, timestamp=t)
            except BufferError:
                self.producer.poll(0.05)
                produce(topic, v, k, timestamp=t)
        self.producer.poll(0)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, ts: int, partition: int | None = None,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        kwargs: dict[str, Any] = {"timestamp": ts}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    # ---- commit / abort ------------------------------------------------------------------------
    def _due_commit(self) -> bool:
        if not self._pending_offsets:
            return False
        return (time.monotonic() - self._last_commit) * 1000.0 >= self.rt.commit_interval_ms

    def _write_changelog(self) -> None:
        """Changelog entries (co-partitioned) for the symbols touched since the last commit."""
        assert self.states is not None
        ts_ms = self.clock.now_ns() // 1_000_000
        for partition, chunks in self._dirty.items():
            state = self.states.states.get(partition)
            if state is None:
                continue
            codes = np.unique(np.concatenate(chunks))
            for key, value in self.processor.changelog_entries(state, codes, self.symbols):
                self._send(self.states.changelog, key, value, ts_ms, partition=partition)
        self._dirty.clear()

    def _commit(self) -> None:
        if not self._pending_offsets and not self._in_txn:
            return
        t0 = time.perf_counter()
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(self._pending_offsets.items())]
        try:
            self._write_changelog()
            if self.rt.exactly_once:
                self._begin()
                if offsets:
                    self._retry(lambda: self.producer.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), 30))
                self._retry(lambda: self.producer.commit_transaction(60))
                self._in_txn = False
            else:
                remaining = self.producer.flush(60)
                if remaining:
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} output record(s) not acknowledged"))
                if offsets:
                    self._retry(lambda: self.consumer.commit(offsets=offsets, asynchronous=False))
        except KafkaException as exc:
            self._recover(exc.args[0], "commit")
            return
        self._pending_offsets.clear()
        self._txn_partitions.clear()
        self._last_commit = time.monotonic()
        self.metrics.commit_latency.observe(time.perf_counter() - t0)

    def _recover(self, err: KafkaError, where: str) -> None:
        """A produce or commit failed: stop on fatal errors, otherwise abort and rewind."""
        if err.fatal():
            raise FatalRuntimeError(
                f"{where} failed with a fatal error ({err.str()}); stopping. If the producer was fenced, "
                f"another worker with transactional id {self.group}.{self.processor.name}.{self.worker_id} is running")
        self._abort_and_rewind(reason=f"{where}: {err.str()}")

    def _retry(self, op: Callable[[], Any], attempts: int = 8) -> None:
        """Run ``op``, retrying retriable Kafka errors (e.g. a timeout while the broker restarts)."""
        for i in range(attempts):
            try:
                op()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.txn_requires_abort() and i < attempts - 1:
                    time.sleep(min(0.25 * 2**i, 5.0))
                    continue
                raise

    def _abort_and_rewind(self, reason: str) -> None:
        """Abort the open transaction, seek its partitions back to the committed offsets and
        rebuild their state from the changelog (the aborted batches' deltas are gone)."""
        assert self.states is not None
        log.warning("aborting transaction and rewinding", extra={"fields": {"reason": reason}})
        self.summary.aborts += 1
        self.metrics.aborts.inc()
        if self.rt.exactly_once:
            try:
                self._retry(lambda: self.producer.abort_transaction(60))
            except KafkaException as exc:
                if exc.args[0].fatal():
                    raise FatalRuntimeError(f"abort failed: {exc.args[0].str()}") from None
                log.warning("abort failed", extra={"fields": {"error": exc.args[0].str()}})
        else:
            self.producer.purge(in_queue=True, in_flight=False)
        self._in_txn = False
        self._dirty.clear()
        parts = sorted(self._txn_partitions | set(self._pending_offsets))
        self._pending_offsets.clear()
        self._txn_partitions.clear()
        self._acc.take()
        owned = [p for p in parts if p in self.states.states]
        if not owned:
            return
        for attempt in range(10):
            try:
                committed = self.consumer.committed([TopicPartition(self.topic, p) for p in owned], timeout=30)
                for tp in committed:
                    off = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    self.consumer.seek(TopicPartition(self.topic, tp.partition, off))
                    self.states.restore(tp.partition)
                return
            except KafkaException as exc:
                if exc.args[0].fatal() or attempt == 9:
                    raise FatalRuntimeError(f"cannot rewind after abort: {exc.args[0].str()}") from None
                time.sleep(1.0)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 2.0:
            return
        self._last_lag = now
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                if tp.offset >= 0:
                    _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                    if high >= 0:
                        self.metrics.set_lag(tp.partition, max(0, high - tp.offset))
        except KafkaException:
            pass
