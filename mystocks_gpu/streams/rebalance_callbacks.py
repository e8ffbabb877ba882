"""The stream worker's rebalance callbacks: what happens to a worker's partitions, its forming
batch and its fetched records when the group assigns, revokes or loses partitions.

A mixin of :class:`~mystocks_gpu.streams.stream_worker.StreamWorker` (it holds the worker's
attributes it uses, declared below); every change of committed state goes through the worker's
:class:`~mystocks_gpu.streams.commit_protocol.CommitProtocol`. librdkafka calls these from
``poll``/``consume`` on the worker's thread only, after ``subscribe``; a set-up that failed after
joining the group (no protocol yet) only hands the partitions back.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import TopicPartition

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.streams.batching import BatchAccumulator
from mystocks_gpu.streams.columnar_io import ColumnarIngest, ColumnChunk
from mystocks_gpu.streams.commit_protocol import CommitProtocol
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics
from mystocks_gpu.streams.topic_changes import check_assigned

# the worker's logger: "assigned" / "revoked" / "partitions lost" stay where operators look for them
log = logging.getLogger("mystocks_gpu.streams.stream_worker")


class RebalanceCallbacks:
    """``on_assign`` / ``on_revoke`` / ``on_lost`` of the worker's consumer subscription."""

    # the worker's attributes these callbacks read and change (set in StreamWorker.__init__/_setup)
    protocol: CommitProtocol | None
    rt: RuntimeConfig
    topic: str
    group: str
    metrics: RuntimeMetrics
    clock: Clock
    _acc: BatchAccumulator
    _pending: list[Any] | ColumnChunk
    _ingest: ColumnarIngest | None
    _paused: bool
    _idle_from: float
    _ever_assigned: bool
    _input_partitions: int
    _awaiting: list[tuple[int, float]]
    _event_clock: dict[int, list[Any]]

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions given to this worker: checked against the input's partition count at start
        (``streams/topic_changes.py``), their state restored by the protocol, attached to the
        columnar ingest before librdkafka fetches them, paused if the worker is."""
        if self.protocol is None:  # the set-up failed after joining (served by close()): nothing to keep
            if self.rt.group_protocol == "classic":
                consumer.incremental_assign(partitions)
            return
        check_assigned(self.topic, self.group, self._input_partitions, (tp.partition for tp in partitions))
        self.metrics.rebalances.inc()
        self._idle_from = self.clock.monotonic()
        self._ever_assigned = True
        self.protocol.on_assign(tp.partition for tp in partitions)
        if self._ingest is not None:  # before librdkafka starts fetching them
            self._ingest.attach([tp.partition for tp in partitions])
        if self.rt.group_protocol == "classic":
            consumer.incremental_assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        log.info("assigned", extra={"fields": {"partitions": [tp.partition for tp in partitions]}})

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions taken away in an orderly rebalance: their part of the forming batch and of
        the fetched records is dropped, and the protocol commits a clean cut before they go."""
        if self.protocol is None:  # the set-up failed after joining (served by close()): nothing to keep
            if self.rt.group_protocol == "classic":
                consumer.incremental_unassign(partitions)
            return
        self.metrics.rebalances.inc()
        revoked = {tp.partition for tp in partitions}
        self._acc.batch.drop_partitions(revoked)
        self._drop_pending(revoked)
        self.protocol.on_revoke(revoked)
        self._awaiting.clear()
        for part in revoked:
            self._event_clock.pop(part, None)
        if self.rt.group_protocol == "classic":
            consumer.incremental_unassign(partitions)
        log.info("revoked", extra={"fields": {"partitions": sorted(revoked)}})

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a rebalance (the session expired): nothing of theirs may be
        committed; the protocol drops their state and uncommitted work."""
        if self.protocol is None:  # the set-up failed after joining (served by close()): nothing to keep
            if self.rt.group_protocol == "classic":
                consumer.incremental_unassign(partitions)
            return
        lost = {tp.partition for tp in partitions}
        # waiting for the group to give partitions back is not idleness, and may take as long as for
        # a first assignment (a broker back from an outage loads its group coordinator first)
        self._idle_from = self.clock.monotonic()
        self._ever_assigned = False
        self.protocol.on_lost(lost)
        for part in lost:
            self._event_clock.pop(part, None)
        self._acc.batch.drop_partitions(lost)
        self._drop_pending(lost)
        if self.rt.group_protocol == "classic":
            consumer.incremental_unassign(partitions)
        log.warning("partitions lost", extra={"fields": {"partitions": sorted(lost)}})

    def _drop_pending(self, gone: set[int]) -> None:
        """Forget the fetched records of revoked or lost partitions, and stop reading them."""
        if isinstance(self._pending, ColumnChunk):
            self._pending = self._pending.without_partitions(gone)
        else:
            self._pending = [m for m in self._pending if m.partition() not in gone]
        if self._ingest is not None:
            self._ingest.detach(sorted(gone))
