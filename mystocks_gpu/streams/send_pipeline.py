"""Outputs produced on a thread of their own while the worker reads and computes the next batch.

With columnar record I/O the worker's outputs go to librdkafka through the C extension
(``streams/columnar_io.py``), which copies and queues each record: about 0.4 us a record on the
2-core AMD VM, a quarter of the exactly-once worker's time per record. :class:`SendPipeline` hands
those records to the extension's ``Sender``, a thread that never takes the GIL (``_rdsend.c``): the
worker's thread only gathers each job's record pointers (about 15 ns a record) and goes on with the
next batch, and jobs are sent one after another in the order they were submitted. On the 2-core
machine the second core was a fifth idle while the worker's thread was the bottleneck.

Exactly-once only (``CommitProtocol``): every record must be queued before the transaction
commits, so the protocol calls :meth:`SendPipeline.drain` before it sends the offsets, and
:meth:`SendPipeline.discard` before it aborts or replaces its producer. At-least-once keeps
producing in the worker's thread: the last record of each partition of a batch carries a delivery
callback (a fence, ``streams/delivery_fences.py``), and a cut's offsets are committed once its
fences are acknowledged, which records of jobs still waiting here would not be covered by.

Order: when a job cannot send all its records (a full producer queue, or an error), the thread
runs no later job until :meth:`drain` (not merely until a :meth:`submit` happens to collect it):
the records not sent, of that job and of every later one, are returned in order by :meth:`drain`,
for the caller to send in its own thread (a full queue: waiting for room, serving callbacks) or to
fail with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer


@dataclass(frozen=True)
class SendJob:
    """Every record of the columns to ``topic`` (``partition`` -1: the partitioner picks by key),
    each with ``headers``."""

    topic: str
    values: list[bytes]
    keys: list[bytes | None]
    timestamps_ms: list[int]
    headers: list[tuple[str, bytes]] | None
    partition: int

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Unsent:
    """The records ``sent..`` of ``job`` were not produced: ``code`` is librdkafka's error for record
    ``sent`` (``reason`` its text), or 0 when the job did not run because an earlier one stopped."""

    job: SendJob
    sent: int
    code: int
    reason: str


class SendPipeline:
    """Jobs sent by the extension's ``Sender`` thread, in submission order (see module doc), for one
    producer. ``max_pending``: jobs submitted and not yet finished; :meth:`submit` waits for the
    oldest beyond it, so the records held (and the memory) stay bounded."""

    def __init__(self, sender_type: Any, producer: Any, max_pending: int = 4) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if not isinstance(producer, Producer):  # the extension reads the handle of a confluent-kafka Producer
            raise TypeError(f"not a confluent_kafka.Producer: {type(producer).__name__}")
        self.producer = producer
        self.max_pending = max_pending
        self._sender = sender_type(producer)
        #: submitted and not yet collected, in order (the sender's own queue holds the same jobs)
        self._jobs: deque[SendJob] = deque()
        #: collected jobs that did not send all their records, in order, until :meth:`drain`
        self._unsent: list[Unsent] = []

    def __len__(self) -> int:
        """Jobs submitted and not yet collected."""
        return len(self._jobs)

    def submit(self, job: SendJob) -> bool:
        """Queue ``job`` behind the others. Returns False when a job stopped short: the caller must
        :meth:`drain` before anything else is sent in order after it."""
        self._sender.submit(job.topic, job.values, job.keys, job.timestamps_ms, job.headers, job.partition)
        self._jobs.append(job)
        self._collect(self.max_pending)
        return not self._unsent

    def _collect(self, keep: int) -> None:
        for n, sent, code, reason in self._sender.collect(keep):
            job = self._jobs.popleft()
            assert n == len(job), "the sender's queue and ours disagree"
            if sent < n:
                self._unsent.append(Unsent(job, sent, code, reason))

    def drain(self) -> list[Unsent]:
        """Wait for every submitted job; returns, in submission order, the jobs that did not send all
        their records (empty when all did)."""
        self._collect(0)
        unsent, self._unsent = self._unsent, []
        return unsent

    def discard(self) -> None:
        """Wait for every submitted job and forget them (an abort: what they sent is aborted)."""
        self.drain()

    def close(self) -> None:
        """Stop the thread (after the job it is sending) and forget every job."""
        self._sender.close()
        self._jobs.clear()
        self._unsent = []
