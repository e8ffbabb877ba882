"""Topics that change under a running worker: partitions added, topics deleted.

**Input: noticed at the next rebalance, and fatal.** A topic that grows moves keys: Kafka's
partitioner maps a key by the partition count, so a key's later records land in another partition
than its earlier ones, its state and its changelog partition (the changelog has as many partitions
as the input had). Per-key state and per-key order would split; like Kafka Streams, the worker
refuses. The group leader's consumer notices the new partitions at its next metadata refresh
(:data:`METADATA_REFRESH_MS`) and the group rebalances; the member handed a new partition stops
before reading it (:func:`check_assigned`), its leaving hands the partition to the next member,
which stops too. A restart then refuses the changelog's partition count
(``state_store.ensure_changelog``).

**Outputs: followed.** At-least-once places each keyed output itself (``delivery_fences.py``) by
the output topic's partition count. :class:`OutputPartitionWatch` re-reads the counts every
:data:`METADATA_REFRESH_MS` on a thread of its own (a metadata request, not on the worker's
thread) and raises them in the dict the sending code reads, so from the next batch keys are placed
as any Kafka producer places them after a growth (each key's order holds within each side of the
change, as for every producer). Exactly-once uses librdkafka's partitioner, which follows its own
metadata refresh (the worker sets it to the same interval).

**Input deleted: fatal.** The consumer reports the subscribed topic unknown; once the broker
confirms it is gone the worker stops (:func:`input_gone_error`) instead of waiting, assigned
nothing, for a topic that may never return (Kafka Streams stops on a missing source topic too).

**Outputs deleted: fatal.** A produce to a topic that is gone fails with "Unknown topic" (or
partition, or the transaction's "N message(s) failed delivery"), an abortable error: the
transaction aborted, the input rewound, the same records failed again, several times a second
for as long as the worker ran. :func:`missing_topics`
tells such a failure from a passing one (metadata not yet propagated) by asking the broker, and
the commit protocol stops with the topics' names (nothing of the failed input committed: a
restart after ``mystocks-gpu topics create`` reprocesses it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from mystocks_gpu.streams.exceptions import FatalRuntimeError

log = logging.getLogger(__name__)

#: the worker clients' ``topic.metadata.refresh.interval.ms``, and the output watch's period: how
#: soon partitions added to a topic are noticed (librdkafka's default is 5 min)
METADATA_REFRESH_MS = 10_000


#: errors after which the worker asks the broker whether its topics are still there: a topic or
#: partition unknown (a produce, adding a partition to the transaction), and a transaction whose
#: records failed delivery (librdkafka's ``_INCONSISTENT``: "N message(s) failed delivery")
MISSING_TOPIC_CODES = frozenset({KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART,
                                 KafkaError._UNKNOWN_PARTITION, KafkaError._INCONSISTENT})


#: how long (s) a worker stopping on a fatal error that names an unknown topic or partition keeps
#: asking the broker whether its topics are gone, so that the stop names them: the producer learnt
#: it from metadata the broker asked may not have applied yet (a deletion still propagating, or
#: another broker's view in a cluster)
GONE_RECHECK_S = 2.0
#: the pause (s) between two of those questions
GONE_RECHECK_EVERY_S = 0.1


def topics_gone_error(where: str, reason: str, gone: Iterable[str]) -> FatalRuntimeError:
    """The error that stops a worker whose output or changelog topics are gone."""
    return FatalRuntimeError(
        f"{where} failed ({reason}): topic(s) {', '.join(sorted(gone))} no longer exist or lost partitions (deleted "
        "while the worker ran?); stopping without committing the input of the failed outputs. Recreate them "
        "(mystocks-gpu topics create) and restart: the input is reprocessed from the last commit")


def input_gone_error(topic: str, group: str) -> FatalRuntimeError:
    """The error that stops a worker whose input topic is gone (the consumer reported it unknown
    and the broker confirms it)."""
    return FatalRuntimeError(
        f"input topic {topic} no longer exists (deleted while the worker ran?); stopping. Group {group} keeps its "
        "committed offsets and its changelog: a topic created again under the same name starts from offset 0, "
        "below them, so reset the group's offsets or run under a new group")


def live_partitions(client: Any, topic: str, timeout_s: float) -> int | None:
    """``topic``'s partition count as the broker states it, 0 when it says the topic does not exist,
    None when it does not answer within ``timeout_s`` seconds or reports another error (a leader
    election, say: nothing proven). ``client``: any confluent-kafka client."""
    try:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException:
        return None
    if meta is None:
        return 0
    if meta.error is not None:
        return 0 if meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART else None
    return len(meta.partitions)


def missing_topics(client: Any, expected: Mapping[str, int], timeout_s: float) -> list[str]:
    """The topics of ``expected`` (topic -> partitions written to) that the broker says are gone
    or have fewer partitions (:func:`live_partitions`; an unanswered one is not counted)."""
    counts = {name: live_partitions(client, name, timeout_s) for name in expected}
    return [name for name, n in counts.items() if n is not None and n < expected[name]]


def check_assigned(topic: str, group: str, started_with: int, partitions: Iterable[int]) -> None:
    """Raise :class:`FatalRuntimeError` if any assigned partition number is ``>= started_with``
    (the input's partition count when the worker started; 0: not known, nothing checked)."""
    grown = sorted(p for p in partitions if p >= started_with) if started_with > 0 else []
    if grown:
        raise FatalRuntimeError(
            f"input topic {topic} grew from {started_with} partition(s) while this worker ran (assigned "
            f"partition(s) {grown}): a key's records now go to another partition than its state, so per-key "
            f"state and order would split. The worker stops without reading them. To change the partition "
            f"count, stop every worker of group {group}, write the input to a new topic with the count wanted, "
            f"and run on that topic (a new changelog is made for it)")


class OutputPartitionWatch:
    """Raise ``counts[topic]`` (topic -> partitions, the dict the sending code reads) when an
    output topic grows; a daemon thread asks ``client`` (any confluent-kafka client: its
    ``list_topics`` is thread-safe) every ``interval_s`` seconds. Counts only grow (Kafka cannot
    remove partitions); a failed request is retried at the next period. A topic the broker says
    does not exist lands in :attr:`gone` (at-least-once records to it never settle: the commit
    protocol stops on it instead of waiting for them, ``CommitProtocol._await_unsettled``)."""

    def __init__(self, client: Any, counts: dict[str, int], interval_s: float = METADATA_REFRESH_MS / 1000) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.client = client
        self.counts = counts
        self.interval_s = interval_s
        #: topics found deleted at the last round (replaced whole, read by the worker's thread)
        self.gone: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> dict[str, tuple[int, int]]:
        """One round: ``{topic: (old, new)}`` of the topics that grew (their counts raised)."""
        grown: dict[str, tuple[int, int]] = {}
        gone: set[str] = set()
        for topic in list(self.counts):
            new = live_partitions(self.client, topic, 5.0)
            if new == 0:
                gone.add(topic)
            if not new:
                continue
            old = self.counts[topic]
            if new > old:
                self.counts[topic] = new  # one store: the sending thread reads old or new, both valid
                grown[topic] = (old, new)
                log.warning("output topic grew: keys are placed by the new partition count from the next batch",
                            extra={"fields": {"topic": topic, "partitions_before": old, "partitions": new}})
        self.gone = frozenset(gone)
        return grown

    def start(self) -> None:
        """Start the watching thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="output-partition-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for its current request (at most its 5-s timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()
