"""The consumer-lag gauges of a stream worker, refreshed without holding up its loop.

A partition's lag is its log end offset minus its committed offset (not the fetch position, so a
worker that processes but cannot commit shows its backlog); with nothing committed, minus its log
start offset (where the worker starts reading: ``auto.offset.reset`` is ``earliest``), so records
deleted by retention or ``DeleteRecords`` are not counted as lag. Both watermarks are librdkafka's
cached ones (from the last fetch response: no request).

The committed offsets are the commit protocol's. Partitions it does not know yet (just assigned,
nothing committed since) are asked of the broker in **one** request for all of them with a short
timeout, and the answer is kept in the protocol (:meth:`CommitProtocol.learn_committed`: "none
committed" is kept as the offset the worker starts from, as a rewind keeps it; the protocol forgets
it at a re-assignment), so a partition that never receives a record is not asked again at every
refresh. A request that fails or times out (no broker) is tried again after a back-off that doubles
from the refresh interval up to :data:`MAX_BACKOFF_S`: during an outage the loop loses at most one
short timeout per back-off, where it used to wait 2 s per unknown partition at every refresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException, TopicPartition

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.infra.kafka_clients import read_start

if TYPE_CHECKING:
    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.stream_metrics import RuntimeMetrics

#: the longest wait (s) between two requests for unknown committed offsets while they fail
MAX_BACKOFF_S = 30.0
#: the timeout (s) of that request: the longest the worker's loop waits for it
QUERY_TIMEOUT_S = 0.5


class ConsumerLag:
    """Refreshes ``metrics``' lag gauge of every owned partition of ``topic`` at most every
    ``interval_s`` seconds (module docstring)."""

    def __init__(self, topic: str, metrics: RuntimeMetrics, clock: Clock, interval_s: float) -> None:
        self.topic, self.metrics, self.clock, self.interval_s = topic, metrics, clock, interval_s
        self._next = 0.0  # monotonic time of the next refresh
        self._next_query = 0.0  # ... and of the next request for unknown committed offsets
        self._backoff = interval_s
        #: requests for unknown committed offsets that failed
        self.failed_queries = 0

    def refresh(self, consumer: Any, protocol: CommitProtocol) -> None:
        """Set the gauges if ``interval_s`` has passed since the last refresh (else nothing)."""
        now = self.clock.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        try:
            owned = [tp.partition for tp in consumer.assignment() if tp.topic == self.topic]
        except KafkaException:
            return
        unknown = [p for p in owned if p not in protocol.committed]
        if unknown and now >= self._next_query:
            try:
                protocol.learn_committed(unknown, QUERY_TIMEOUT_S)
                self._backoff = self.interval_s
            except KafkaException:
                self.failed_queries += 1
                self._backoff = min(2 * self._backoff, MAX_BACKOFF_S)
            self._next_query = self.clock.monotonic() + self._backoff
        try:
            for p in owned:
                committed = protocol.committed.get(p)
                if committed is None:
                    continue  # not known (yet): no gauge rather than a wrong one
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
                if high >= 0:
                    self.metrics.set_lag(p, max(0, high - read_start(committed, low)))
        except KafkaException:
            return  # a partition librdkafka no longer knows: the next refresh sees the new assignment
