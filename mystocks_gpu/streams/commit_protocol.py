"""The commit protocol of the stream worker, in one place.

Commit (per transaction; exactly-once)::

    begin -> outputs + dead letters (as batches are handled) -> changelog entries of the state
    touched since the last commit -> send_offsets_to_transaction -> commit_transaction

Abort (any abortable Kafka error, and any exception while a transaction is open)::

    abort_transaction -> drop ALL buffered input (the forming batch and the messages fetched but
    not yet batched) -> seek EVERY assigned partition back to its committed offset -> restore the
    state of every partition touched since the last commit from the in-memory changelog mirror

At-least-once uses the same order with an offset commit in place of the transaction: the changelog
entries are produced, the offsets are snapshotted, and the offset commit is sent once every record
produced before the snapshot is acknowledged. The loop does not wait for that: the commit stays
*unsettled* (:class:`Unsettled`) until a later loop turn finds its records acknowledged
(:meth:`CommitProtocol.settle`): per output partition, by the delivery of a *fence*, the last
record of each batch to each partition (``streams/delivery_fences.py``), or an empty producer
queue. Only the next commit falling due with one still unsettled waits, for that commit's fences
(not for the records produced since). An offset commit that has not landed when the worker dies
only means re-processing, which at-least-once allows; failures are logged by :meth:`on_commit_result`. On
revoke and at shutdown the commit is synchronous (flush, then wait for the offset commit: the next
owner starts from it). An abort restores the state of the partitions of an unsettled commit too.
The loop, the rebalance callbacks (revoke commits a clean cut unless the protocol has failed; lost
partitions abort) and shutdown all go through this class; nothing else produces, commits, seeks or
touches partition state.

The changelog mirror: the latest committed changelog value per key of every owned partition
(read once on assignment, updated after each successful commit with the entries it carried). An
abort rebuilds state from it without reading Kafka, so recovery costs milliseconds, not a consumer
per partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.streams.batching import RawBatch
from mystocks_gpu.streams.columnar_io import columnar_producer, load_extension
from mystocks_gpu.streams.commit_head_start import CommitHeadStart, record_age_s
from mystocks_gpu.streams.dead_letters import dlq_headers, dlq_topic, fit_dead_letter
from mystocks_gpu.streams.delivery_fences import DeliveryFences, FenceCut, KeyPartitioner
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.output_sending import OutputSending
from mystocks_gpu.streams.processor import Outputs, Processor
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.send_pipeline import SendPipeline
from mystocks_gpu.streams.state_store import PartitionStates
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics
from mystocks_gpu.streams.topic_changes import (
    GONE_RECHECK_EVERY_S,
    GONE_RECHECK_S,
    MISSING_TOPIC_CODES,
    OutputPartitionWatch,
    missing_topics,
    topics_gone_error,
)

log = logging.getLogger(__name__)

#: bytes kept free below a topic's max.message.bytes for the record-batch framing (61 B header + record overhead)
RECORD_OVERHEAD = 128


@dataclass
class Tally:
    """Counters the protocol keeps for the run summary."""

    records_out: int = 0
    dlq: int = 0
    aborts: int = 0
    oversized: int = 0
    commits: int = 0
    #: at-least-once loop commits that waited for acknowledgements (the previous one still unsettled)
    commit_waits: int = 0
    producer_recoveries: int = 0
    assignments: int = 0
    restores: int = 0
    #: input records skipped by :meth:`CommitProtocol.unread` (read again below what was handled)
    reread: int = 0
    abort_reasons: list[str] = field(default_factory=list)




@dataclass
class Unsettled:
    """An at-least-once commit whose changelog entries are sent and whose offsets wait for every
    earlier record's acknowledgement: ``offsets`` (partition -> next offset), ``written`` (the
    changelog entries it carried, for the mirror), ``touched`` (partitions an abort must restore),
    ``t0`` (monotonic s when it was cut, for the commit latency), ``cut`` (the delivery fences it
    waits for)."""

    offsets: dict[int, int]
    written: dict[int, dict[bytes, bytes]]
    touched: set[int]
    t0: float
    cut: FenceCut


class CommitProtocol(OutputSending):
    """Owner of transactions, offsets, changelog writes, rewinds and partition state (see module doc).

    ``drop_input()`` is called on every abort: the worker must discard its forming batch and every
    message it fetched but did not process. ``max_bytes``: topic -> largest value+key accepted (bytes).
    ``partition_counts``: topic -> partitions, of the topics produced to by key (at-least-once places
    each record by it, see ``streams/delivery_fences.py``; a topic missing here settles on an empty
    queue).
    """

    def __init__(self, *, producer: Any, consumer: Any, topic: str, processor: Processor[Any],
                 states: PartitionStates, rt: RuntimeConfig, metrics: RuntimeMetrics, clock: Clock,
                 drop_input: Callable[[], None], transactional_id: str, max_bytes: dict[str, int],
                 partition_counts: dict[str, int] | None = None) -> None:
        self.producer, self.consumer, self.topic = producer, consumer, topic
        self.processor, self.states, self.rt, self.metrics, self.clock = processor, states, rt, metrics, clock
        #: the C extension's column producer (``streams/columnar_io.py``), or None: ``produce()`` calls
        self._produce_many = columnar_producer(rt.record_io)
        #: and its one-pass size bound (``_rdbatch.size_bound``), with it
        ext = load_extension()[0] if self._produce_many is not None else None
        self._c_size_bound = ext.size_bound if ext is not None else None
        #: exactly-once with the column producer: outputs are produced on a thread of their own (the
        #: extension's ``Sender``), drained before the offsets join the transaction
        #: (``streams/send_pipeline.py``); the pipeline of the current producer, made when first needed
        self._sender_type = ext.Sender if ext is not None and rt.exactly_once else None
        self._sends: SendPipeline | None = None
        #: at-least-once: the delivery fences, and each keyed record's partition (C when columnar)
        self.fences = None if rt.exactly_once else DeliveryFences()
        self._partitioner = KeyPartitioner(ext.partitions_of if ext is not None else None)
        self.partition_counts = dict(partition_counts or {})
        self._null_turn = 0
        self.drop_input = drop_input
        self.transactional_id = transactional_id
        self.max_bytes = max_bytes
        self.dlq = dlq_topic(topic)
        self.tally = Tally()
        self.in_txn = False
        #: exactly-once: an ``abort_transaction`` that did not finish (it timed out, or its retries ran
        #: out): librdkafka keeps it in progress and refuses any other transactional call ("Conflicting
        #: abort_transaction API call is already in progress", retriable) until it is called again and
        #: finishes, so :meth:`begin` (and the next abort) resume it first
        self.abort_unfinished = False
        #: set when an exception escaped with a transaction open: callbacks must not commit after it
        self.failed = False
        self.pending_offsets: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.touched: set[int] = set()
        self.dirty: dict[int, list[np.ndarray]] = {}
        #: at-least-once: the commit waiting for its outputs' acknowledgements (see :meth:`settle`)
        self.unsettled: Unsettled | None = None
        self.last_commit = clock.monotonic()
        #: the worker's last batch closed full (more input was waiting): the catch-up interval applies
        self.behind = False
        #: the commit interval and the catch-up interval in effect (the commit interval when off), s
        self.interval_s = rt.commit_interval_ms / 1000.0
        self.catch_up_s = (rt.catch_up_ms or rt.commit_interval_ms) / 1000.0
        #: exactly-once: the mean commit time, by which :meth:`due_in_s` starts the next commit early
        #: (``streams/commit_head_start.py``)
        self.head_start = CommitHeadStart()
        #: exactly-once: the smallest Kafka timestamp (ms) of the input handled since the last commit
        #: cut (None: none, or none stamped), by which :meth:`due_in_s` may start the commit earlier
        self.oldest_ms: int | None = None
        #: test hook: ``fault(stage)`` may raise to inject a failure at a named stage of the protocol
        self.fault: Callable[[str], None] | None = None
        #: called when the producer is fenced: returns a fresh, initialised producer when the fence was
        #: self-inflicted (the coordinator timed our transaction out, e.g. during a broker outage), or
        #: None when another live worker holds our transactional id (then we stop)
        self.replace_producer: Callable[[], Any] | None = None
        #: ``nudge("producer" | "consumer")`` after a call of that client timed out: the worker's
        #: broker watch gives it the bootstrap servers back (``streams/broker_watch.py``)
        self.nudge: Callable[[str], object] | None = None
        #: at-least-once: the worker's output partition watch (``streams/topic_changes.py``), whose
        #: ``gone`` names outputs deleted under the worker
        self.output_watch: OutputPartitionWatch | None = None

    # ---- producing -------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a transaction (exactly-once) if none is open; an abort that did not finish is resumed
        first (raises ``KafkaException`` when it still cannot: the caller aborts and rewinds again)."""
        if self.rt.exactly_once and not self.in_txn:
            self.inject("begin")
            if self.abort_unfinished:
                self._abort_call()
                self.abort_unfinished = False
                log.info("the unfinished abort finished")
            self.producer.begin_transaction()
            self.in_txn = True

    def inject(self, stage: str) -> None:
        """Run the fault hook (tests) for ``stage``; may raise."""
        if self.fault is not None:
            self.fault(stage)

    def produce(self, batch: RawBatch, out: Outputs, on_last_delivered: Callable[..., None] | None = None) -> None:
        """Produce one batch's outputs and dead letters inside the open transaction.

        An output over its topic's size limit cannot ever be produced: it is replaced by a dead
        letter naming the output topic and size (the input record when the processor says which
        one produced it), and the rest of the batch goes on. ``on_last_delivered(err, msg)``: the
        delivery callback of the batch's last output record (the runtime's latency breakdown).

        The outputs of a topic are produced by :meth:`send_many` (one tight loop, no per-record
        Python beyond the ``produce()`` call); the per-record size check runs only when the
        batch's largest record could exceed the topic's limit."""
        self.begin()
        self.inject("produce")
        topics = list(out.records)
        for topic in topics:
            keys, values, ts = out.records[topic]
            limit = self.max_bytes.get(topic, 1 << 20) - RECORD_OVERHEAD
            sources = out.sources.get(topic)
            if values and self._size_bound(values, keys) > limit:
                keep = []
                for j, (k, v, t) in enumerate(zip(keys, values, ts, strict=True)):
                    size = len(v) + (len(k) if k else 0)
                    if size > limit:
                        self._oversized(batch, topic, k, v, t, size, limit, int(sources[j]) if sources is not None else None)
                    else:
                        keep.append(j)
                keys, values, ts = [keys[j] for j in keep], [values[j] for j in keep], [ts[j] for j in keep]
            last = on_last_delivered if topic == topics[-1] else None
            self.send_many(topic, keys, values, ts, headers=out.headers.get(topic), on_last_delivered=last)
            self.tally.records_out += len(values)
            self.metrics.records_out.inc(len(values))
        self.producer.poll(0)
        for rej in out.rejected:
            i = rej.index
            self.dead_letter(batch.keys[i], batch.values[i], batch.timestamps_ms[i],
                             dlq_headers(rej.error_class, rej.message, self.topic, batch.partitions[i],
                                         batch.offsets[i], self.processor.name))

    def dead_letter(self, key: bytes | None, value: bytes | None, ts_ms: int, headers: list[tuple[str, bytes]],
                    dlq: str | None = None) -> None:
        """One record to the input's DLQ, or to ``dlq`` (a side input's DLQ), inside the open
        transaction (its value truncated, with a header saying so, if too large)."""
        topic = dlq or self.dlq
        self.begin()
        key, value, headers = fit_dead_letter(key, value, headers, self.max_bytes.get(topic, 1 << 20) - RECORD_OVERHEAD)
        if self.fences is not None:
            self._send_fenced(topic, [key], [value], [ts_ms], headers, None, None)
        else:
            self.send(topic, key, value, ts_ms, headers=headers)
        self.tally.dlq += 1
        self.metrics.dlq.inc()

    def _oversized(self, batch: RawBatch, topic: str, key: bytes | None, value: bytes, ts: int, size: int,
                   limit: int, source: int | None) -> None:
        self.tally.oversized += 1
        msg = f"output record for {topic} is {size} bytes, over the topic's limit of {limit} bytes"
        if source is not None:
            self.dead_letter(batch.keys[source], batch.values[source], batch.timestamps_ms[source],
                             dlq_headers("RecordTooLarge", msg, self.topic, batch.partitions[source],
                                         batch.offsets[source], self.processor.name))
        else:
            self.dead_letter(key, value, ts, dlq_headers("RecordTooLarge", msg, self.topic, -1, -1, self.processor.name)
                             + [("mystocks.output.topic", topic.encode())])

    def touch(self, partition: int, codes: np.ndarray) -> None:
        """A partition's state was replaced (``codes``: symbol codes touched, for the changelog).
        Called the moment the state changes, so any later failure restores it."""
        self.dirty.setdefault(partition, []).append(codes)
        self.touched.add(partition)

    def handled_up_to(self, partition: int) -> int:
        """The offset below which every record of ``partition`` is handled: the last handled + 1
        since the last commit cut, else the last committed (or a rewind's target), else -1 (not known:
        just assigned). A record below it is one read again."""
        o = self.pending_offsets.get(partition)
        if o is None and self.unsettled is not None:
            o = self.unsettled.offsets.get(partition)
        return self.committed.get(partition, -1) if o is None else o

    def unread(self, batch: RawBatch, partition: int, idx: list[int]) -> list[int]:
        """The records ``idx`` of ``partition`` in ``batch`` (offsets ascending) not handled yet.
        Offsets never go back without a rewind, which moves :meth:`handled_up_to` back with them;
        records below it would be handled twice, so they are skipped, counted and logged as an
        error (no code path is known to deliver them: a guard, as cheap as one comparison a
        partition a batch while none comes)."""
        bound = self.handled_up_to(partition)
        offsets = batch.offsets
        if offsets[idx[0]] >= bound:
            return idx
        keep = [i for i in idx if offsets[i] >= bound]
        n = len(idx) - len(keep)
        self.tally.reread += n
        self.metrics.reread.inc(n)
        log.error("input records read again below the handled offset: skipped", extra={"fields": {
            "partition": partition, "first_offset": offsets[idx[0]], "handled_up_to": bound, "skipped": n}})
        return keep

    def processed(self, batch: RawBatch) -> None:
        """``batch`` was handled: its offsets join the transaction (exactly-once: and its oldest
        record's timestamp, for :meth:`due_in_s`); an offset never moves back (:meth:`unread`)."""
        for p, o in batch.next_offsets().items():
            # only a partition whose records unread() all skipped can end below the mark: none before the first skip
            if p in self.states.states and (not self.tally.reread or o > self.handled_up_to(p)):
                self.pending_offsets[p] = o
                self.touched.add(p)
        if self.rt.exactly_once and len(batch):
            ts = batch.timestamps_array()
            m = int(ts.min())
            if m <= 0:  # -1: a record without a timestamp (rare: only then a masked copy)
                stamped = ts[ts > 0]
                if not stamped.size:
                    return
                m = int(stamped.min())
            self.oldest_ms = m if self.oldest_ms is None else min(self.oldest_ms, m)

    # ---- committing -------------------------------------------------------------------------
    def due(self) -> bool:
        """True when there is something to commit and the commit interval has passed."""
        return self.due_in_s() <= 0.0

    def due_in_s(self) -> float:
        """Seconds until :meth:`due` (0 when due now; inf with nothing to commit). The interval is
        ``commit_interval_ms``, or ``RuntimeConfig.catch_up_ms`` while :attr:`behind` (unless off),
        counted from the start of the last commit. Exactly-once, not behind: less the mean commit
        time, and earlier still when the transaction's oldest record (:attr:`oldest_ms`) would
        otherwise be visible more than the interval after its timestamp, within a bound
        (:attr:`head_start`, ``streams/commit_head_start.py``): a record is visible about one
        interval after it was stamped, not the interval after it arrived, plus a commit."""
        if not self.pending_offsets and not self.in_txn and not self.dirty:
            return float("inf")
        since = self.clock.monotonic() - self.last_commit
        if self.behind:
            return max(0.0, self.catch_up_s - since)
        if not self.rt.exactly_once:
            return max(0.0, self.interval_s - since)
        age = record_age_s(self.oldest_ms, self.clock.now_ns() / 1e9)
        return max(0.0, self.head_start.wait_s(self.interval_s, since, age))

    def _changelog(self) -> dict[int, dict[bytes, bytes]]:
        """Produce changelog entries (co-partitioned) for the state touched since the last commit."""
        written: dict[int, dict[bytes, bytes]] = {}
        ts_ms = self.clock.now_ns() // 1_000_000
        for partition, chunks in self.dirty.items():
            state = self.states.states.get(partition)
            if state is None:
                continue
            codes = np.unique(np.concatenate(chunks))
            entries = written.setdefault(partition, {})
            limit = self.max_bytes.get(self.states.changelog, 1 << 20) - RECORD_OVERHEAD
            pairs = self.processor.changelog_entries(state, codes, self.states.symbols)
            for key, value in pairs:
                if len(key) + len(value) > limit:
                    self.failed = True
                    raise FatalRuntimeError(
                        f"changelog entry of {self.processor.name} is {len(key) + len(value)} bytes, over the limit of "
                        f"{self.states.changelog} ({limit} bytes): raise its max.message.bytes or split the state by key")
            if pairs:
                # one entry per touched symbol: at a few thousand ticks per commit that is as many records
                # as the outputs, so they go through send_many's C loop as well
                keys, values = (list(col) for col in zip(*pairs, strict=True))
                self.send_many(self.states.changelog, keys, values, [ts_ms] * len(pairs), partition=partition)
                entries.update(pairs)
        return written

    def commit(self, sync: bool = False) -> bool:
        """Commit everything handled since the last commit; on an abortable error abort and rewind.
        Returns True when committed, sent (at-least-once: see :meth:`settle`) or nothing to do, False
        when it aborted. ``sync``: at-least-once waits for the acknowledgements and the offset commit
        (revoke, shutdown); otherwise the offsets are committed without waiting once acknowledged."""
        if not self.rt.exactly_once and not (self.settle() and (sync or self._await_unsettled())):
            return False
        if not self.open:
            return True
        self.inject("slow_commit")  # tests: a commit held up (a slow broker, a paused host)
        t0 = self.clock.monotonic()
        offsets = self._tps(self.pending_offsets)
        try:
            if self.rt.exactly_once:
                self.begin()
            written = self._changelog()
            self._settle_sends()  # every output and changelog record queued before the offsets join
            self.inject("offsets")
            if self.rt.exactly_once:
                if offsets:
                    self._txn_call("send_offsets_to_transaction", lambda: self.producer.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), self.rt.commit_timeout_s))
                self.inject("commit")
                self._txn_call("commit_transaction", lambda: self.producer.commit_transaction(self.rt.commit_timeout_s))
                self.in_txn = False
            elif not sync:
                # cut here; the offsets go out when everything produced so far is acknowledged
                assert self.fences is not None and self.unsettled is None
                self.unsettled = Unsettled(dict(self.pending_offsets), written, self._open_partitions(), t0,
                                           self.fences.cut())
                self._close_interval(t0)
                return self.settle()
            else:
                remaining = self.producer.flush(self.rt.commit_timeout_s)
                if remaining:
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} output record(s) not acknowledged"))
                u = self.unsettled
                if u is not None:  # acknowledged now: this commit carries its offsets too
                    offsets = self._tps({**u.offsets, **self.pending_offsets})
                    for p, entries in written.items():
                        u.written.setdefault(p, {}).update(entries)
                    written, t0 = u.written, u.t0
                if offsets:
                    self._retry(lambda: self.consumer.commit(offsets=offsets, asynchronous=not sync))
                self.unsettled = None  # (kept until here: a failed commit's abort restores its partitions)
        except KafkaException as exc:
            self.recover(exc.args[0], "commit")
            return False
        self._close_interval(t0)
        self._committed(offsets, written, t0)
        return True

    def _tps(self, offsets: dict[int, int]) -> list[TopicPartition]:
        """``offsets`` (partition -> next offset) of the input topic, by partition."""
        return [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]

    def _open_partitions(self) -> set[int]:
        """Partitions with state or offsets handled since the last commit was cut."""
        return self.touched | set(self.pending_offsets) | set(self.dirty)

    def _close_interval(self, t0: float) -> None:
        """What the commit cut at ``t0`` carries is no longer open; the next interval runs from ``t0``
        (the start of this commit, as Kafka Streams counts it)."""
        self.pending_offsets.clear()
        self.touched.clear()
        self.dirty.clear()
        self.oldest_ms = None
        self.last_commit = t0

    def settle(self) -> bool:
        """At-least-once: send the offset commit of the unsettled commit once the producer's queue is
        empty (every record produced before the cut, outputs and changelog entries, acknowledged).
        Cheap when there is none or the queue is not empty yet. Returns False when the offset commit
        failed and the protocol aborted."""
        u = self.unsettled
        if u is None:
            return True
        try:
            self.producer.poll(0)  # always: a fatal producer error (a failed output) raises here
        except KafkaException as exc:
            self.recover(exc.args[0], "commit")
            return False
        try:
            assert self.fences is not None
            if not self.fences.settled(u.cut, len(self.producer)):
                return True
        except KafkaException as exc:  # a fence failed: the producer stopped (see DeliveryFences.settled)
            self.recover(exc.args[0], "commit")
            return False
        self.unsettled = None
        offsets = self._tps(u.offsets)
        try:
            if offsets:
                self._retry(lambda: self.consumer.commit(offsets=offsets, asynchronous=True))
        except KafkaException as exc:
            self.unsettled = u  # its partitions are restored by the abort
            self.recover(exc.args[0], "commit")
            return False
        self._committed(offsets, u.written, u.t0)
        return True

    def _await_unsettled(self) -> bool:
        """A commit fell due with the previous one unsettled: wait (serving delivery reports) for that
        one's fences, not for what was produced after it, within ``commit_timeout_s``. Returns False
        when it aborted (a timeout, a failed offset commit)."""
        if self.unsettled is None:
            return True
        self.tally.commit_waits += 1
        self.metrics.commit_waits.inc()
        deadline = self.clock.monotonic() + self.rt.commit_timeout_s
        while self.unsettled is not None:
            if self.clock.monotonic() > deadline:
                self.recover(KafkaError(KafkaError._TIMED_OUT, "the previous commit's outputs were not acknowledged "
                                        f"within {self.rt.commit_timeout_s:.0f} s"), "commit")
                return False
            gone = self.output_watch.gone if self.output_watch is not None else ()
            if gone:  # their records never settle (nor fail: at-least-once never times a record out)
                self.failed = True
                raise topics_gone_error("commit", "the previous commit's outputs are not acknowledged", gone)
            self.producer.poll(0.005)
            if not self.settle():
                return False
        return True

    def _committed(self, offsets: list[TopicPartition], written: dict[int, dict[bytes, bytes]], t0: float) -> None:
        """Book a commit that went out: committed offsets, the changelog mirror, counters, metrics."""
        for tp in offsets:
            self.committed[tp.partition] = tp.offset
        for p, entries in written.items():
            self.states.mirror.setdefault(p, {}).update(entries)
        self.tally.commits += 1
        took = self.clock.monotonic() - t0
        self.metrics.commit_latency.observe(took)
        if self.rt.exactly_once:
            self.head_start.observe(took)
        self.metrics.set_committed(self.committed)

    def _retry(self, op: Callable[[], Any], attempts: int = 8) -> None:
        """Run ``op``, retrying retriable (not abort-requiring) errors with backoff."""
        for i in range(attempts):
            try:
                op()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.txn_requires_abort() and i < attempts - 1:
                    if self.nudge is not None:
                        self.nudge("producer")
                    # serve delivery reports while backing off: librdkafka's commit/abort wait for them
                    self.producer.poll(min(0.25 * 2**i, 5.0))
                    continue
                raise

    def _txn_call(self, name: str, op: Callable[[], Any]) -> None:
        """A transactional call of the commit (``_retry``'s retries). One still failing with a
        retriable error when they run out stays in progress in librdkafka, which then refuses every
        other transactional call, the abort included, until that same call finishes: the commit's
        outcome is unknown, so the worker stops (``FatalRuntimeError``); a restart fences the
        transaction and resumes from what the coordinator committed."""
        try:
            self._retry(op)
        except KafkaException as exc:
            err = exc.args[0]
            if err.retriable() and not err.txn_requires_abort() and not err.fatal():
                self.failed = True
                raise FatalRuntimeError(f"{name} did not finish ({err.str()}) after its retries; stopping: its "
                                        "outcome is unknown, and a restart resumes from the committed offsets") from None
            raise

    @staticmethod
    def _fenced(err: KafkaError) -> bool:
        """Fatal errors that a fresh producer (new epoch) clears: fenced, or the coordinator no longer
        knows our transaction (it timed it out: INVALID_TXN_STATE, librdkafka issue #3297)."""
        return err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                              KafkaError.INVALID_TXN_STATE)

    def _recover_producer(self, err: KafkaError) -> bool:
        """After a fence: install a fresh producer if the fence was self-inflicted (see
        :attr:`replace_producer`); the old transaction is already aborted by the coordinator."""
        if not self._fenced(err) or self.replace_producer is None:
            return False
        fresh = self.replace_producer()
        if fresh is None:
            return False
        self.producer = fresh
        self.in_txn = False
        self.abort_unfinished = False  # the fresh producer's epoch fenced the old transaction
        self.tally.producer_recoveries += 1
        log.warning("producer fenced by a transaction timeout; re-initialised", extra={"fields": {"error": err.str()}})
        return True

    def recover(self, err: KafkaError, where: str) -> None:
        """A produce or commit failed: stop when it names a topic or partition unknown and the broker
        says an output or the changelog is gone (whichever error reported it first: a failed
        produce, the transaction's commit, an at-least-once fence), stop on other fatal errors
        (e.g. fenced by another live worker), otherwise abort and rewind."""
        self.drop_sends()  # before the producer may be replaced
        if err.code() in MISSING_TOPIC_CODES:  # fatal or not (an at-least-once fence's failed output is fatal)
            self._stop_if_topics_gone(where, err)
        if err.fatal() and self._recover_producer(err):
            self.abort(f"{where}: {err.str()} (producer re-initialised)")
            return
        if err.fatal():
            self.failed = True
            if not self.rt.exactly_once:  # the producer stopped: an output could not be delivered
                raise FatalRuntimeError(
                    f"{where} failed with a fatal producer error ({err.str()}); stopping without committing the "
                    "input of any output not acknowledged: a restart reprocesses it")
            raise FatalRuntimeError(
                f"{where} failed with a fatal error ({err.str()}); stopping. If the producer was fenced, "
                f"another worker with transactional id {self.transactional_id} is running")
        self.abort(f"{where}: {err.str()}")

    def _stop_if_topics_gone(self, where: str, err: KafkaError) -> None:
        """A topic or partition unknown to the producer: if the broker says an output or the
        changelog is gone (deleted under the worker), stop instead of aborting and failing again
        (``streams/topic_changes.py``); otherwise (metadata still propagating) abort as usual. A
        fatal error stops the worker whatever the answer, so the broker is asked again for up to
        :data:`GONE_RECHECK_S` until it agrees with the producer, and the stop names the topic."""
        expected = dict(self.partition_counts)
        if self.states is not None:
            expected.setdefault(self.states.changelog, 1)
        until = self.clock.monotonic() + (GONE_RECHECK_S if err.fatal() else 0.0)
        while not (gone := missing_topics(self.consumer, expected, self.rt.commit_timeout_s)):
            if self.clock.monotonic() >= until:
                return
            self.clock.sleep(GONE_RECHECK_EVERY_S)
        self.failed = True
        raise topics_gone_error(where, err.str(), gone)

    # ---- aborting ----------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """Abort the open transaction, drop all buffered input, rewind every assigned partition to
        its committed offset and restore the state touched since the last commit."""
        log.warning("aborting transaction and rewinding", extra={"fields": {"reason": reason}})
        self.drop_sends()
        self.tally.aborts += 1
        self.tally.abort_reasons.append(reason[:200])
        self.metrics.aborts.inc()
        if self.rt.exactly_once:
            self.abort_transaction()  # leaves no transaction open (in_txn False), finished or not
        # at-least-once: what is queued is left to be delivered (a replay repeats it: duplicates are
        # allowed, with the same values); purging it would fail its records, which the producer's
        # gap-less guarantee turns into a fatal error (see StreamWorker._setup)
        self.drop_input()
        touched = sorted(self._open_partitions() | (self.unsettled.touched if self.unsettled is not None else set()))
        self.unsettled = None
        self.pending_offsets.clear()
        self.dirty.clear()
        self.touched.clear()
        self.oldest_ms = None
        self._rewind()
        for p in touched:
            if p in self.states.states:
                self.states.restore_from_mirror(p)
        self.last_commit = self.clock.monotonic()

    def abort_transaction(self) -> bool:
        """Exactly-once: abort the open transaction (or resume an abort that did not finish); True
        when none is left open. An abort that fails without a fatal error (its retries spent while the
        broker is away) stays unfinished (:attr:`abort_unfinished`), for :meth:`begin` to resume; a
        resumed abort that fails with an error that is not retriable stops the worker, as a fatal
        error does unless it re-initialises a producer fenced by a transaction timeout."""
        if not (self.in_txn or self.abort_unfinished):
            return True
        try:
            # Let every in-flight produce finish first: librdkafka (2.12-2.16) against Kafka 4.x
            # can fail EndTxn(abort) with a FATAL INVALID_TXN_STATE when produce requests of the
            # transaction are still in flight (librdkafka issue #4849). The flushed records are
            # aborted with the transaction; a flush that times out (broker down) still aborts.
            self.producer.flush(self.rt.commit_timeout_s)
            self._abort_call()
            self.abort_unfinished = False
        except KafkaException as exc:
            if exc.args[0].fatal() and self._recover_producer(exc.args[0]):
                pass  # the coordinator already aborted that transaction
            elif exc.args[0].fatal():
                self.failed = True
                raise FatalRuntimeError(
                    f"abort failed with a fatal error ({exc.args[0].str()}); stopping. If the producer was "
                    f"fenced, another worker with transactional id {self.transactional_id} is running") from None
            elif self.abort_unfinished and not exc.args[0].retriable():  # a resumed abort refused: no way on
                self.failed = True
                raise FatalRuntimeError(f"an unfinished abort cannot finish ({exc.args[0].str()}); stopping: a "
                                        "restart fences the transaction and resumes from the committed offsets") from None
            else:
                self.abort_unfinished = True
                log.warning("abort not finished; it is resumed before the next transaction",
                            extra={"fields": {"error": exc.args[0].str()}})
        finally:
            self.in_txn = False
        return not self.abort_unfinished

    def _abort_call(self) -> None:
        """librdkafka's ``abort_transaction`` with ``_retry``'s retries (raises what is left)."""
        self._retry(lambda: self.producer.abort_transaction(self.rt.commit_timeout_s))

    def learn_committed(self, partitions: list[int], timeout_s: float) -> None:
        """Ask the broker for the committed offsets of ``partitions`` (one request, ``timeout_s``
        seconds at most; raises ``KafkaException``) and keep them in :attr:`committed`; a partition
        with none committed is kept as ``OFFSET_BEGINNING``, where the worker reads it from."""
        for tp in self.consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=timeout_s):
            self.committed[tp.partition] = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING

    def _rewind(self) -> None:
        """Seek every assigned partition to its committed offset (from the broker when unknown)."""
        try:
            assigned = [tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic]
        except KafkaException:
            assigned = list(self.states.states)
        unknown = [p for p in assigned if p not in self.committed]
        for attempt in range(10):
            try:
                if unknown:
                    self.learn_committed(unknown, self.rt.commit_timeout_s)
                    unknown = []
                for p in assigned:
                    self.consumer.seek(TopicPartition(self.topic, p, self.committed[p]))
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal() or attempt == 9:
                    self.failed = True
                    raise FatalRuntimeError(f"cannot rewind after abort: {err.str()}") from None
                if self.nudge is not None:
                    self.nudge("consumer")
                self.clock.sleep(min(0.2 * 2**attempt, 2.0))

    # ---- rebalance and shutdown -------------------------------------------------------------
    def on_assign(self, partitions: Iterable[int]) -> None:
        """New partitions: restore their state (one consumer for all of them); committed offsets
        become known at the first rewind or commit."""
        parts = sorted(partitions)
        if parts:
            self.tally.assignments += 1
            seconds = self.states.restore_many(parts)
            self.tally.restores += 1
            self.metrics.restore_seconds.observe(seconds)
        for p in parts:
            self.committed.pop(p, None)

    def on_revoke(self, partitions: Iterable[int]) -> None:
        """Partitions handed to another worker: commit a clean cut first (unless the protocol has
        failed: then abort), then forget them."""
        revoked = set(partitions)
        if self.failed:
            self._drop(revoked)
            return
        if self.open:
            self.commit(sync=True)
        self._drop(revoked)

    def on_commit_result(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit`` callback: an asynchronous offset commit that failed is logged
        (the next commit carries newer offsets; a crash before then re-processes, at least once)."""
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed", extra={"fields": {
                "error": err.str() if err is not None else failed[0].error.str(),
                "partitions": sorted(tp.partition for tp in partitions)}})

    def on_lost(self, partitions: Iterable[int]) -> None:
        """Partitions lost (session timeout): nothing of them may be committed; abort and forget."""
        lost = set(partitions)
        if not self.failed and self.open:
            self.abort("partitions lost")
        self._drop(lost)

    @property
    def open(self) -> bool:
        """True while something handled is not committed (a transaction, offsets, dirty state, or an
        unsettled at-least-once commit)."""
        return bool(self.in_txn or self.pending_offsets or self.dirty or self.unsettled is not None)

    def _drop(self, parts: set[int]) -> None:
        self.states.drop(sorted(parts))
        if self.unsettled is not None:
            for p in parts:
                self.unsettled.offsets.pop(p, None)
                self.unsettled.written.pop(p, None)
                self.unsettled.touched.discard(p)
        for p in parts:
            self.pending_offsets.pop(p, None)
            self.dirty.pop(p, None)
            self.touched.discard(p)
            self.committed.pop(p, None)
        self.metrics.forget_partitions(parts)

    def fail(self, exc: BaseException) -> None:
        """An exception escaped while processing: abort what is open (best effort) and refuse any
        later commit (the revoke callback fired by ``consumer.close()`` must not commit)."""
        if self.failed:
            return
        try:
            if self.open:
                self.abort(f"{type(exc).__name__}: {exc}")
        except Exception as inner:  # noqa: BLE001 - the original exception is what matters
            log.warning("abort after failure failed", extra={"fields": {"error": repr(inner)}})
        self.failed = True
