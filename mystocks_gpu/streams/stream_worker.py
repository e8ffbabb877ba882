"""The stream worker: batch consume -> decode -> process -> hand to the commit protocol.

The loop fetches messages, cuts them into micro-batches (:class:`BatchAccumulator`), decodes and
processes each batch per partition, and gives the outputs to :class:`CommitProtocol`, which owns
every transaction, offset commit, changelog write, rewind and state restore (see
``streams/commit_protocol.py`` for the order). Exactly-once is the default; at-least-once is a setting.

The transactional id is ``<group>.<processor>.<worker_id>``: a restarted worker with the same id
fences its dead predecessor at once; a different id waits at most ``transaction_timeout_ms``.
SIGTERM/SIGINT (via :meth:`StreamWorker.stop`) finish the current batch, commit, and return.

Backpressure: while the producer holds more than ``max_buffered_records`` unacknowledged records
(a slow or stalled sink), every assigned partition is paused (the consumer keeps polling, so it stays
in the group) and resumed once the producer has drained below half of that.

Latency: with adaptive batching (the default) the loop blocks only while nothing has arrived; then it
takes everything the consumer holds, closes the batch and processes it, so no record waits for a
linger deadline and batches grow with the load. Blocking waits end in time for the next commit and
the next idle flush. Every stage a record passes is timed into ``mystocks_stream_stage_seconds``
(``streams/stream_metrics.py``). Clients are tuned for latency: TCP_NODELAY on every broker
socket, ``fetch.wait.max.ms`` / producer ``linger.ms`` from :class:`RuntimeConfig`.

Idle flush: a processor's open state (e.g. bars) of a partition is flushed when the partition's event
time (its records' Kafka timestamps) has not advanced for ``idle_flush_s`` seconds of wall time, and of
every partition on a graceful stop when ``flush_on_stop``. The flush's outputs and changed state go
through the commit protocol like a batch's: they commit atomically with the input offsets, so a
restarted worker resumes from the flushed state (and never re-emits what was flushed), and an abort
undoes the flush with the rest of the transaction.
"""

from __future__ import annotations

import gc
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.infra.cpu_affinity import check_cpus, pin_process
from mystocks_gpu.infra.kafka_clients import caught_up, ensure_broker
from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.streams.batching import BatchAccumulator, RawBatch
from mystocks_gpu.streams.broker_watch import BrokerWatch, watched_consumer, watched_producer
from mystocks_gpu.streams.columnar_io import (
    COLUMNAR,
    MESSAGES,
    ColumnarIngest,
    ColumnChunk,
    resolve_mode,
)
from mystocks_gpu.streams.commit_protocol import RECORD_OVERHEAD, CommitProtocol
from mystocks_gpu.streams.consumer_lag import ConsumerLag
from mystocks_gpu.streams.dead_letters import dlq_headers, dlq_topic
from mystocks_gpu.streams.delivery_fences import FENCED_PRODUCER
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.fault_injection import FaultPlan
from mystocks_gpu.streams.fencing import CLIENT_NONCE_SEP, await_membership, twins_once_settled
from mystocks_gpu.streams.processor import Decoded, Outputs, Processor, Rejected
from mystocks_gpu.streams.rebalance_callbacks import RebalanceCallbacks
from mystocks_gpu.streams.runtime_config import ADAPTIVE, RuntimeConfig
from mystocks_gpu.streams.side_input import SideInput
from mystocks_gpu.streams.state_store import PartitionStates, ensure_changelog
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics
from mystocks_gpu.streams.topic_changes import METADATA_REFRESH_MS as MD_REFRESH_MS
from mystocks_gpu.streams.topic_changes import (
    MISSING_TOPIC_CODES,
    OutputPartitionWatch,
    input_gone_error,
    missing_topics,
)

log = logging.getLogger(__name__)
#: client-side record cap of the worker's producer (bytes); each topic's own limit is checked first
PRODUCER_MAX_BYTES = 64 << 20


@dataclass
class RunSummary:
    """What a worker did before it returned."""

    records_in: int = 0
    records_out: int = 0
    dlq: int = 0
    batches: int = 0
    aborts: int = 0
    commits: int = 0
    #: at-least-once commits that stalled the loop waiting for acknowledgements
    commit_waits: int = 0
    oversized: int = 0
    pauses: int = 0
    idle_flushes: int = 0
    producer_recoveries: int = 0
    assignments: int = 0
    restores: int = 0
    #: input records skipped as read again below what was handled (never expected; logged as errors)
    reread: int = 0
    seconds: float = 0.0
    #: how the consumer's records were read: "columnar" (the C extension) or "messages" (``Message`` objects)
    record_io: str = ""
    #: seconds :meth:`Processor.warm_up` took before the worker joined its group
    warm_up_s: float = 0.0
    abort_reasons: list[str] = field(default_factory=list)


class StreamWorker(RebalanceCallbacks):
    """One consume-process-produce loop for one processor in one consumer group (its rebalance
    callbacks: ``streams/rebalance_callbacks.py``)."""

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
        self._lag = ConsumerLag(self.topic, self.metrics, clock, self.rt.lag_interval_s)
        self.symbols = SymbolTable()
        self._summary = RunSummary()
        #: "consumer" / "producer" -> the client's broker watch (streams/broker_watch.py)
        self._watches: dict[str, BrokerWatch] = {}
        self._stopping = False
        self._acc = BatchAccumulator(self.rt.max_records, self.rt.max_bytes, self.rt.linger_ms / 1000.0,
                                     adaptive=self.rt.batching == ADAPTIVE)
        #: records fetched but not yet in a batch (dropped with the forming batch on every abort):
        #: ``Message`` objects, or one :class:`ColumnChunk` from the columnar ingest
        self._pending: list[Any] | ColumnChunk = []
        #: the columnar ingest of the consumer's partitions (``streams/columnar_io.py``), if in use
        self._ingest: ColumnarIngest | None = None
        self._paused = False
        self._recoveries = 0
        #: the librdkafka settings the worker gave its producer / consumer (beyond the defaults)
        self._pconf: dict[str, Any] = {}
        self._cconf: dict[str, Any] = {}
        #: monotonic time idleness counts from at the earliest (an assignment, a loss of partitions,
        #: a rewind: waiting for input then is not idleness)
        self._idle_from = 0.0
        #: whether the worker holds, or has held since it last lost its partitions, an assignment
        self._ever_assigned = False
        #: the input topic's partition count when the worker started (its changelog has as many)
        self._input_partitions = 0
        #: partition -> [largest record timestamp seen (ms), monotonic time it last advanced, flushed]
        self._event_clock: dict[int, list[Any]] = {}
        #: (records, monotonic end of produce) of batches whose outputs are not yet visible (exactly-once)
        self._awaiting: list[tuple[int, float]] = []
        self.consumer: Any = None
        self.producer: Any = None
        self.states: PartitionStates | None = None
        self._watch: OutputPartitionWatch | None = None
        self.protocol: CommitProtocol | None = None
        #: the processor's broadcast side input (``streams/side_input.py``), if it has one
        self.side: SideInput | None = None

    @property
    def summary(self) -> RunSummary:
        """What the worker has done so far (live while it runs)."""
        self._fill_summary()
        return self._summary

    @property
    def transactional_id(self) -> str:
        """``<group>.<processor>.<worker_id>``."""
        return f"{self.group}.{self.processor.name}.{self.worker_id}"

    # ---- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and return (safe from a signal handler)."""
        self._stopping = True

    def _drop_input(self) -> None:
        """Discard everything fetched but not committed (called by the protocol on abort); an
        aborted flush is undone with its transaction, so partitions may flush again."""
        self._acc.take()
        self._pending = []
        self._awaiting.clear()
        for clock in self._event_clock.values():
            clock[2] = False
        self._idle_from = self.clock.monotonic()  # the input is read again: waiting for it is not idleness

    def _setup(self) -> None:
        if self.rt.cpu_affinity:  # before any client starts its threads: they inherit the mask
            check_cpus(self.rt.cpu_affinity, "cpu_affinity")
            pin_process(0, self.rt.cpu_affinity)
        ensure_broker(self.kafka)
        changelog = ensure_changelog(self.kafka, self.processor.name, self.group, self.topic)
        from mystocks_gpu.topics.admin import TopicAdmin

        admin = TopicAdmin(self.kafka)
        live = admin.existing()
        self._input_partitions = live.get(self.topic, 0)
        limit = self.processor.max_input_partitions
        if limit is not None and self._input_partitions > limit:
            raise FatalRuntimeError(
                f"{self.processor.name} needs its whole input in at most {limit} partition(s) and {self.topic} has "
                f"{live[self.topic]}: use a topic with {limit} partition(s) (see the processor's documentation)")
        side = self.processor.side_topic
        outputs = (*self.processor.output_topics, dlq_topic(self.topic), *((side, dlq_topic(side)) if side else ()))
        missing = [t for t in outputs if t not in live]
        if missing:
            raise FatalRuntimeError(f"output topic(s) {', '.join(missing)} do not exist; "
                                    "run: mystocks-gpu topics create")
        max_bytes = admin.max_message_bytes([*outputs, changelog], producer_max=PRODUCER_MAX_BYTES)
        self.states = PartitionStates(self.processor, self.kafka, changelog, self.symbols, self.rt)
        extra: dict[str, Any] = {
            "session.timeout.ms": self.rt.session_timeout_ms,
            "max.poll.interval.ms": self.rt.max_poll_interval_ms,
            "isolation.level": "read_committed",
            "queued.max.messages.kbytes": 65536,
        }
        if self.rt.group_protocol == "consumer":
            extra = {"group.protocol": "consumer", "max.poll.interval.ms": self.rt.max_poll_interval_ms,
                     "isolation.level": "read_committed"}
        else:
            extra["partition.assignment.strategy"] = "cooperative-sticky"
        # latency: a fetch with less than fetch.min.bytes of data waits at most fetch.wait.max.ms at the broker
        # (by default the first new record answers it); no Nagle delay on the broker sockets (a fetch queue
        # over its bound retries in 10 ms: make_consumer's default)
        extra.update({"fetch.wait.max.ms": self.rt.fetch_wait_max_ms, "fetch.min.bytes": self.rt.fetch_min_bytes,
                      "socket.nagle.disable": True})
        # partitions added to the input: noticed within this, then fatal (streams/topic_changes.py)
        extra["topic.metadata.refresh.interval.ms"] = MD_REFRESH_MS
        self._cconf = extra
        # client.id = transactional id + this process's nonce: on a fence, the group tells whether another
        # worker uses the id. Our own stale member (a session that expired in a broker outage, rejoined
        # under a new member id) carries our nonce and is not mistaken for a zombie.
        self._client_id = f"{self.transactional_id}{CLIENT_NONCE_SEP}{uuid.uuid4().hex[:12]}"
        if not self.rt.exactly_once:
            extra["on_commit"] = self._on_commit_result  # asynchronous offset commits report here
        # the processor's kernels and codecs compiled or loaded before joining the group, not by the
        # first batch after a start or a rebalance (its records would wait for them)
        t_warm = self.clock.monotonic()
        self.processor.warm_up()
        self._summary.warm_up_s = self.clock.monotonic() - t_warm
        log.info("processor warmed up", extra={"fields": {"seconds": round(self._summary.warm_up_s, 3)}})
        # watched: a client left with no broker gets the bootstrap servers back (librdkafka#5301)
        self.consumer = watched_consumer(self.kafka, self.group, "consumer", clock=self.clock, keep=self._watches,
                                         route_logs=False,
                                         **{"log_level": 3, "client.id": self._client_id, **extra})
        columnar, why_not = resolve_mode(self.rt.record_io, live.get(self.topic, 0))
        if columnar:
            self._ingest = ColumnarIngest(self.consumer, self.topic)
        elif self.rt.record_io != MESSAGES:
            log.warning("columnar ingest unavailable, reading Message objects", extra={"fields": {"reason": why_not}})
        self._summary.record_io = COLUMNAR if columnar else MESSAGES
        # the protocol checks each record against its topic's own limit; the client-side cap is above all
        # and a record batch never exceeds the smallest topic limit (the broker rejects a whole batch)
        pconf: dict[str, Any] = {"linger.ms": self.rt.output_linger_ms, "message.max.bytes": PRODUCER_MAX_BYTES,
                                 "socket.nagle.disable": True, "topic.metadata.refresh.interval.ms": MD_REFRESH_MS,
                                 "batch.size": max(64, min(1_000_000, *max_bytes.values()) - RECORD_OVERHEAD)}
        if self.rt.exactly_once:
            # no success reports: nothing reads them in exactly-once (a failed send fails the transaction),
            # and serving one per record in poll() cost about 60 ns a record of the worker's thread
            pconf.update({"transactional.id": self.transactional_id,
                          "transaction.timeout.ms": self.rt.transaction_timeout_ms,
                          "delivery.report.only.error": True})
        else:
            # at-least-once commits offsets once a later delivery fence of each partition a cut wrote is
            # acknowledged (streams/delivery_fences.py), or the producer's queue is empty; the records
            # between fences report no delivery to Python: one that failed would leave the queue like an
            # acknowledged one, and the offsets past its input would be committed (the output lost). So no
            # record may fail quietly: none times out (a broker outage makes the commit's bounded wait time
            # out: abort and rewind), and any other failure that would leave a gap is a fatal producer
            # error (the worker stops, uncommitted); idempotence keeps each partition's records in order
            pconf.update(FENCED_PRODUCER)
        self._pconf = pconf
        # join the group BEFORE taking the transactional id: init_transactions fences any older instance,
        # and a fenced instance judges by the group whether a live twin exists (_replace_fenced_producer).
        # A successor that fenced it but had not joined yet would be invisible, and the zombie would
        # re-initialise and fence the successor in turn. (The rebalance callbacks run only in poll(),
        # i.e. in run(), after the protocol exists.)
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        if self.rt.exactly_once:
            await_membership(self._group_describer(), self._client_id, self.clock)
        self.producer = self._make_producer()
        self.protocol = CommitProtocol(
            producer=self.producer, consumer=self.consumer, topic=self.topic, processor=self.processor,
            states=self.states, rt=self.rt, metrics=self.metrics, clock=self.clock, drop_input=self._drop_input,
            transactional_id=self.transactional_id, max_bytes=max_bytes,
            partition_counts={t: live[t] for t in outputs})
        if side:
            self.side = SideInput(self.kafka, side, clock=self.clock)
            self.side.open()
        if not self.rt.exactly_once:  # outputs placed by the worker: follow their partition counts
            self._watch = OutputPartitionWatch(self.consumer, self.protocol.partition_counts)
            self._watch.start()
            self.protocol.output_watch = self._watch
        self.protocol.fault = FaultPlan.parse(self.rt.fault_injection).hook()
        self.protocol.replace_producer = self._replace_fenced_producer
        self.protocol.nudge = lambda client: self._watches[client].nudge()

    def _on_commit_result(self, err: Any, partitions: list[TopicPartition]) -> None:
        if self.protocol is not None:
            self.protocol.on_commit_result(err, partitions)

    def _group_describer(self) -> Callable[[], Any]:
        """A call returning this worker's ``ConsumerGroupDescription`` (one admin client per use)."""
        from mystocks_gpu.topics.admin import make_admin

        admin = make_admin(self.kafka)
        return lambda: admin.describe_consumer_groups([self.group], request_timeout=10)[self.group].result(15)

    def _make_producer(self, attempts: int = 3) -> Any:
        """A producer with the worker's settings; exactly-once: initialised for transactions. An
        ``init_transactions`` that times out (retriable: the broker restarting, its coordinator still
        loading) is called again, as librdkafka asks, up to ``attempts`` times, each waiting
        ``max(30, 3 x transaction timeout)`` s: a fenced worker replaces its producer in the middle of
        an outage, and a broker restart has taken 24-45 s on the 2-core VM."""
        producer = watched_producer(self.kafka, "producer", clock=self.clock, keep=self._watches, route_logs=False,
                                    **{"log_level": 3, **self._pconf})
        if self.rt.exactly_once:
            for attempt in range(attempts):
                try:
                    producer.init_transactions(max(30.0, self.rt.transaction_timeout_ms / 1000 * 3))
                    break
                except KafkaException as exc:
                    if not exc.args[0].retriable() or attempt == attempts - 1:
                        raise
                    log.warning("init_transactions did not finish; calling it again",
                                extra={"fields": {"error": exc.args[0].str(), "attempt": attempt + 1}})
        return producer

    def _replace_fenced_producer(self) -> Any:
        """A fresh producer after a fence, unless another live group member uses our transactional
        id (a real duplicate or zombie: then None, and the worker stops). A fence with no such member
        is self-inflicted: the coordinator aborted our transaction after ``transaction_timeout_ms``
        (a broker outage, a long pause). At most ``max_producer_recoveries`` per worker run."""
        if self._recoveries >= self.rt.max_producer_recoveries:
            log.error("producer fenced again; not re-initialising", extra={"fields": {"recoveries": self._recoveries}})
            return None
        twins = twins_once_settled(self._group_describer(), self.transactional_id, self._client_id, self.clock)
        if twins is None:
            log.error("fenced, and the group cannot be described: stopping")
            return None
        if twins:
            log.error("fenced by another live worker with this transactional id",
                      extra={"fields": {"members": [f"{m.member_id}@{m.host}" for m in twins]}})
            return None
        self._recoveries += 1
        self.producer = self._make_producer()
        return self.producer

    def _add_pending(self, now: float) -> None:
        """Move fetched records into the forming batch (what does not fit stays pending)."""
        if isinstance(self._pending, ColumnChunk):
            self._pending = self._acc.add_columns(self._pending, now, self.clock.now_ns(), topic=self.topic)
        else:
            self._pending = self._acc.add_messages(self._pending, now, self.clock.now_ns())

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, idle_exit_s: float | None = None, max_records: int | None = None) -> RunSummary:
        """Run until :meth:`stop`, ``idle_exit_s`` without input (and nothing left to commit), or
        ``max_records`` consumed. Returns a :class:`RunSummary`.

        Idleness counts from the last input, commit (one held up by a broker outage is not idle
        time), assignment, loss of partitions or rewind (an abort). A worker that is caught up
        exits after ``idle_exit_s``; one that is not (a transactional input's end marker) after
        three times that; one never assigned a partition, or without
        partitions since it lost them (its session expired, e.g. in a broker outage), after
        ``idle_exit_s`` plus two session timeouts (a predecessor that died holds its partitions
        until its session expires, then the group rebalances), or three times ``idle_exit_s`` if
        longer."""
        t_start = self.clock.monotonic()
        self._setup()
        assert self.protocol is not None
        protocol = self.protocol
        # long-lived objects of the set-up (clients, codecs, compiled kernels) leave the collector's
        # view: full collections then scan only what the loop allocates (shorter GC pauses)
        gc.collect()
        gc.freeze()
        last_input = self.clock.monotonic()
        adaptive = self._acc.adaptive
        try:
            while not self._stopping:
                now = self.clock.monotonic()
                self._backpressure()
                drained = False
                if not self._pending:
                    want = max(1, min(self.rt.max_records - len(self._acc.batch), 10_000))
                    if adaptive:
                        msgs = self._fetch(want, self._wait_s(now, last_input))
                        drained = len(msgs) < want
                    else:
                        # consume() blocks until `want` records or the timeout: with an empty batch and
                        # a live stream, wait only briefly so the linger clock starts at the first record
                        idle_for = now - last_input
                        timeout = min(self._acc.remaining_s(now), 0.002 if idle_for < 1.0 else 0.1,
                                      protocol.due_in_s())
                        msgs = self._fetch(want, timeout, wait_all=True)
                    if len(msgs) < want:
                        protocol.behind = False  # the input is drained: back to the commit interval
                    self._pending = self._filter_errors(msgs)
                    if self._pending:
                        last_input = self.clock.monotonic()
                now = self.clock.monotonic()
                self._add_pending(now)
                if self._acc.ready(now, drained=drained):
                    protocol.behind = self._acc.full()  # more input was waiting: catch-up commit interval
                    self._handle(self._acc.take())
                    last_input = self.clock.monotonic()  # processing time is not idle time
                elif protocol.due():
                    self._commit()
                elif protocol.unsettled is not None and not protocol.settle():
                    continue  # the offset commit failed: aborted and rewound
                if self.rt.idle_flush_s > 0:
                    self._idle_flush()
                if self._idle_from > last_input:
                    last_input = self._idle_from  # waiting for an assignment, a re-read or a commit is not idleness
                idle = self.clock.monotonic() - last_input
                if (idle_exit_s is not None and idle > idle_exit_s and not len(self._acc.batch)
                        and not self._pending
                        and (caught_up(self.consumer) or idle > self._idle_bound_s(idle_exit_s))):
                    break  # (a transactional input's end marker can keep position < high: bounded wait)
                if max_records is not None and self._summary.records_in >= max_records:
                    break
                self._lag.refresh(self.consumer, protocol)
            # graceful stop: finish the batch at hand, close open state if asked, commit
            if self._pending:
                self._add_pending(self.clock.monotonic())
            if len(self._acc.batch):
                self._handle(self._acc.take())
            if self.rt.flush_on_stop and not protocol.failed:
                for partition in sorted(self.states.states if self.states else ()):
                    self._flush(partition)
            self._commit(sync=True)
        except BaseException as exc:
            protocol.fail(exc)
            raise
        finally:
            gc.unfreeze()
            self._close()
            self._fill_summary()
        self._summary.seconds = self.clock.monotonic() - t_start
        return self.summary

    def _wait_s(self, now: float, last_input: float) -> float:
        """How long an empty loop may block for input: until the next commit or idle flush is due,
        at most 2 ms while an at-least-once commit is unsettled, else 100 ms (0 while a batch is forming)."""
        assert self.protocol is not None
        if len(self._acc.batch):
            return 0.0
        # an unsettled at-least-once commit lands at the first turn after its outputs are acknowledged
        cap = 0.1 if self.protocol.unsettled is None else 0.002
        if self.rt.idle_flush_s > 0:
            for clock in self._event_clock.values():
                if not clock[2]:
                    cap = min(cap, max(0.0, clock[1] + self.rt.idle_flush_s - now))
        return min(cap, self.protocol.due_in_s())

    def _fetch(self, want: int, timeout: float, wait_all: bool = False) -> list[Any] | ColumnChunk:
        """Block up to ``timeout`` s for the first record (paused: serve callbacks only), then take
        whatever else has arrived, up to ``want`` records, without waiting (``wait_all``: wait for
        ``want`` records or the timeout, the linger mode). ``Message`` objects (error events
        included), or a :class:`ColumnChunk` from the columnar ingest."""
        if self._paused:
            self.consumer.poll(timeout)  # paused partitions return nothing; keeps the member alive
            return []
        if self._ingest is not None:
            # the consumer queue first: rebalance and commit callbacks run here (never inside the
            # ingest), and it holds any record fetched before its partition was attached
            msgs = self.consumer.consume(want, timeout=0)
            if msgs:
                return msgs
            if self._ingest.active:
                chunk, events = self._ingest.consume(want, timeout, wait_all)
                for ev in events:
                    self._consumer_error(ev.code, ev.reason, fatal=False, partition=ev.partition)
                return chunk
            wait_all = False  # nothing attached yet: wait on the consumer queue for the first
        if wait_all:
            return self.consumer.consume(want, timeout=timeout)
        first = self.consumer.poll(timeout) if timeout > 0 else None
        if first is None:
            return self.consumer.consume(want, timeout=0) if timeout <= 0 else []
        if want == 1:
            return [first]
        return [first, *self.consumer.consume(want - 1, timeout=0)]

    def _fill_summary(self) -> None:
        if self.protocol is None:
            return
        t = self.protocol.tally
        s = self._summary
        s.records_out, s.dlq, s.aborts, s.commits, s.oversized = t.records_out, t.dlq, t.aborts, t.commits, t.oversized
        s.commit_waits = t.commit_waits
        s.assignments, s.restores, s.producer_recoveries, s.reread = t.assignments, t.restores, t.producer_recoveries, t.reread
        s.abort_reasons = list(t.abort_reasons)

    def _close(self) -> None:
        if self._watch is not None:
            self._watch.stop()  # its requests use the consumer
        if self._ingest is not None and self.consumer is not None:
            # before the consumer: its queues must not outlive the handle. Dropped first, so a
            # rebalance delivered during consumer.close() (an assignment too) leaves it alone
            ingest, self._ingest = self._ingest, None
            ingest.close()
        try:
            if self.consumer is not None:
                self.consumer.close()  # fires on_revoke: commits a clean cut unless the protocol failed
        except KafkaException:
            pass
        if self.protocol is not None:
            self.protocol.close()  # after the revoke's commit: its background sends are drained
        if self.producer is not None and not self.rt.exactly_once:
            if self.protocol is not None and self.protocol.failed:  # no commit follows: a restart
                self.producer.purge()  # reprocesses what is queued (a deleted topic's records never leave)
                self.producer.poll(0)
            else:
                self.producer.flush(30)
        if self.side is not None:
            self.side.close()
        try:
            self.processor.close()
        except Exception as exc:  # noqa: BLE001 - the outputs are committed; a stop must not fail on a release
            log.warning("closing the processor failed: %s: %s", type(exc).__name__, exc)

    def _idle_bound_s(self, idle_exit_s: float) -> float:
        """How long (s) a worker that is not caught up waits before an idle exit (see :meth:`run`)."""
        if self._ever_assigned:
            return 3 * idle_exit_s
        return max(3 * idle_exit_s, idle_exit_s + 2 * self.rt.session_timeout_ms / 1000)

    # ---- the hot path ------------------------------------------------------------------------
    def _filter_errors(self, msgs: list[Any] | ColumnChunk) -> list[Any] | ColumnChunk:
        if not msgs or isinstance(msgs, ColumnChunk):  # the columnar ingest reports its events itself
            return msgs
        errors = list(map(type(msgs[0]).error, msgs))  # from C, as in BatchAccumulator.add_messages
        if not any(errors):
            return msgs
        out = []
        for m, err in zip(msgs, errors, strict=True):
            if err is None:
                out.append(m)
            else:
                self._consumer_error(err.code(), err.str(), err.fatal(), m.partition())
        return out

    def _consumer_error(self, code: int, reason: str, fatal: bool, partition: int | None = None) -> None:
        """An error event from the consumer (a ``Message`` or the columnar ingest): partition EOF
        is none, a fatal one stops the worker, so does the input topic found deleted, any other
        is logged."""
        if code == KafkaError._PARTITION_EOF:
            return
        if fatal:
            raise FatalRuntimeError(f"consumer fatal error: {reason}")
        if code in MISSING_TOPIC_CODES and missing_topics(self.consumer, {self.topic: 1}, self.rt.commit_timeout_s):
            raise input_gone_error(self.topic, self.group)
        log.warning("consumer error", extra={"fields": {"error": reason, "code": code, "partition": partition}})

    def _handle(self, batch: RawBatch) -> None:
        """Decode, process and produce one batch (inside the open transaction in EOS mode), timing
        each stage per record (``streams/stream_metrics.py``)."""
        assert self.states is not None and self.protocol is not None
        t0, cpu0 = self.clock.monotonic(), self.clock.thread_cpu_s()
        close_ns = ingest_ns = self.clock.now_ns()
        n = len(batch)
        stages = self.metrics.stages
        self._observe_wait(batch, close_ns)
        out = Outputs()
        side_rejects = self._apply_side() if self.side is not None else []
        ts_ms = batch.timestamps_array()
        parts: dict[int, list[int]] = {}
        for partition, idx_list in batch.by_partition().items():
            if partition not in self.states.states:
                continue  # revoked while the batch was forming
            idx_list = self._drop_oversized(batch, self.protocol.unread(batch, partition, idx_list), out)
            if idx_list:
                part_ts = ts_ms if len(idx_list) == len(ts_ms) else ts_ms[idx_list]  # one partition: all rows
                self._advance_event_clock(partition, int(part_ts.max()), t0)
                parts[partition] = idx_list
        t_dec = self.clock.monotonic()
        decoded_parts: dict[int, Decoded] = {}
        if parts:
            self.processor.begin_batch()
            decoded_parts = self.processor.decode_partitions(batch.values, parts, self.symbols, ingest_ns)
        t_proc = self.clock.monotonic()
        decode_s = t_proc - t_dec
        batches = {}
        for partition, decoded in decoded_parts.items():
            out.rejected.extend(decoded.rejected)
            if len(decoded.columns):
                batches[partition] = decoded.columns
                # recorded before the state changes: whatever fails after, an abort restores this partition
                self.protocol.touch(partition, decoded.columns.columns["sym"])
        if batches:
            states = self.states.states
            part_out, new_states = self.processor.process_partitions(batches, {p: states[p] for p in batches})
            states.update(new_states)
            out.extend(part_out)
        process_s = self.clock.monotonic() - t_proc
        self.protocol.processed(batch)
        self.protocol.inject("crash")  # tests: an unexpected exception after states were replaced
        t_prod = self.clock.monotonic()
        try:
            self.protocol.produce(batch, out, on_last_delivered=None if self.rt.exactly_once else self._delivered(n, t_prod))
            for rec, rej in side_rejects:
                self.protocol.dead_letter(rec.key, rec.value, rec.timestamp_ms,
                                          dlq_headers(rej.error_class, rej.message, self.processor.side_topic,
                                                      rec.partition, rec.offset, self.processor.name),
                                          dlq=dlq_topic(self.processor.side_topic))
        except KafkaException as exc:
            self.protocol.recover(exc.args[0], "produce")
            return
        t_end, cpu_s = self.clock.monotonic(), self.clock.thread_cpu_s() - cpu0
        encode_s = min(out.stage_s.get("encode", 0.0), process_s)
        for stage, sec in (("decode", decode_s), ("compute", process_s - encode_s), ("encode", encode_s),
                           ("produce", t_end - t_prod)):
            stages.observe(stage, sec, n)
        if self.rt.exactly_once:
            self._awaiting.append((n, t_end))
        self.protocol.inject("stall")  # tests: frozen inside an open transaction (records already sent)
        self._summary.batches += 1
        self._summary.records_in += n
        self.metrics.records_in.inc(n)
        self.metrics.batch_size.observe(n)
        self.metrics.batch_latency.observe(t_end - t0)
        self.metrics.batch_cpu.inc(cpu_s)
        # judged right after producing (the queue's high point), not only at the next loop turn: a commit
        # that falls due now flushes the queue before the loop would have seen it
        self._backpressure()
        if self.protocol.due():
            self._commit()

    def _observe_wait(self, batch: RawBatch, close_ns: int) -> None:
        """Stages ``poll`` (record timestamp -> consume(); live records only) and ``batch`` (consume()
        -> batch close) of every record of ``batch``."""
        stages = self.metrics.stages
        for count, polled in batch.poll_marks:
            if polled:
                stages.observe("batch", max(0, close_ns - polled) / 1e9, count)
        stages.observe_feed("poll", batch.timestamps_array(), batch.poll_marks)

    def _delivered(self, n: int, t_prod: float) -> Any:
        """Delivery callback of a batch's last output (at-least-once): stage ``deliver``."""
        def done(err: Any, _msg: Any) -> None:
            if err is None:
                self.metrics.stages.observe("deliver", self.clock.monotonic() - t_prod, n)
        return done

    def _commit(self, sync: bool = False) -> bool:
        """Commit through the protocol (``sync``: see :meth:`CommitProtocol.commit`); on success the
        batches waiting for it become visible (exactly-once: stage ``commit``)."""
        assert self.protocol is not None
        ok = self.protocol.commit(sync)
        now = self._idle_from = self.clock.monotonic()  # committing is work, not idleness (a broker outage holds it)
        if ok and self._awaiting:
            for n, t_end in self._awaiting:
                self.metrics.stages.observe("commit", now - t_end, n)
        self._awaiting.clear()
        return ok

    # ---- idle flush -----------------------------------------------------------------------------
    def _advance_event_clock(self, partition: int, ts_ms: int, now: float) -> None:
        clock = self._event_clock.get(partition)
        if clock is None:
            self._event_clock[partition] = [ts_ms, now, False]
        elif ts_ms > clock[0]:
            clock[0], clock[1], clock[2] = ts_ms, now, False

    def _idle_flush(self) -> None:
        """Flush every owned partition whose event time has not advanced for ``idle_flush_s``."""
        now = self.clock.monotonic()
        for partition, clock in list(self._event_clock.items()):
            if not clock[2] and now - clock[1] >= self.rt.idle_flush_s:
                if len(self._acc.batch) or self._pending:
                    return  # records of it may be waiting: process them first
                self._flush(partition)

    def _flush(self, partition: int) -> None:
        """Emit a partition's open state (``Processor.flush``) inside the transaction; its changed
        state goes to the changelog with the next commit (see the module docstring)."""
        assert self.states is not None and self.protocol is not None
        clock = self._event_clock.get(partition)
        if clock is not None:
            clock[2] = True
        state = self.states.states.get(partition)
        if state is None:
            return
        out, new_state = self.processor.flush(state, self.symbols, partition)
        if not out.count() and out.touched is None:
            return
        self.states.states[partition] = new_state
        self.protocol.touch(partition, out.touched if out.touched is not None else np.zeros(0, np.int32))
        try:
            self.protocol.produce(RawBatch(topic=self.topic), out)
        except KafkaException as exc:
            self.protocol.recover(exc.args[0], "produce")
            return
        self._summary.idle_flushes += 1
        self.metrics.idle_flushes.inc()
        log.info("flushed open state", extra={"fields": {"partition": partition, "records": out.count()}})

    def _drop_oversized(self, batch: RawBatch, idx_list: list[int], out: Outputs) -> list[int]:
        """Rows of ``idx_list`` within ``max_record_bytes`` (key + value); the others are rejected
        (DLQ, ``RecordTooLarge``) before they reach a decoder."""
        limit = self.rt.max_record_bytes
        if 0 <= batch.max_record_bytes <= limit:
            return idx_list  # no record of the batch can exceed the limit
        keep = []
        for i in idx_list:
            v, k = batch.values[i], batch.keys[i]
            size = (len(v) if v is not None else 0) + (len(k) if k is not None else 0)
            if size > limit:
                out.rejected.append(Rejected(i, "RecordTooLarge", f"record of {size} bytes exceeds the "
                                                                  f"{limit}-byte limit (max_record_bytes)"))
            else:
                keep.append(i)
        return keep

    def _apply_side(self) -> list[tuple[Any, Any]]:
        """Read the side input from the oldest position of the owned states to its end and apply it
        to every owned state (each skips what it has already read). Returns ``(record, Rejected)``
        for the undecodable records that no owned state had read before (dead-lettered once)."""
        assert self.side is not None and self.states is not None and self.protocol is not None
        owned = self.states.states
        if not owned:
            return []
        positions = [self.processor.side_offsets(st) for st in owned.values()]
        wants = {p: min(pos.get(p, 0) for pos in positions) for p in self.side.partitions}
        newest = {p: max(pos.get(p, 0) for pos in positions) for p in self.side.partitions}
        records = self.side.read(wants)
        if not records:
            return []
        decoded, rejected = self.processor.decode_side(records, self.symbols)
        read_to: dict[int, int] = {}
        for r in records:
            read_to[r.partition] = max(read_to.get(r.partition, 0), r.offset + 1)
        for partition in list(owned):
            owned[partition] = self.processor.apply_side(decoded, owned[partition], self.symbols, read_to)
            self.protocol.touch(partition, np.empty(0, np.int32))  # its changelog carries the side position
        return [(records[r.index], r) for r in rejected
                if records[r.index].offset >= newest.get(records[r.index].partition, 0)]

    def _backpressure(self) -> None:
        """Pause every assigned partition while the producer holds too many unacknowledged records
        (its polls serve delivery reports: a fatal producer error found there goes to the protocol)."""
        try:
            self._backpressure_poll()
        except KafkaException as exc:
            assert self.protocol is not None
            self.protocol.recover(exc.args[0], "produce")

    def _backpressure_poll(self) -> None:
        queued = len(self.producer)
        limit = self.rt.max_buffered_records
        if not self._paused and queued > limit:
            self._paused = True
            self._summary.pauses += 1
            self.consumer.pause(self.consumer.assignment())
            self.metrics.paused.set(1)
            log.info("backpressure: partitions paused", extra={"fields": {"queued_outputs": queued}})
        elif self._paused:
            self.producer.poll(0.01)
            if len(self.producer) <= limit // 2:
                self._paused = False
                self.consumer.resume(self.consumer.assignment())
                self.metrics.paused.set(0)
                log.info("backpressure: partitions resumed", extra={"fields": {"queued_outputs": len(self.producer)}})
        else:
            self.producer.poll(0)
