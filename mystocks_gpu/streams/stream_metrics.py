"""Prometheus metrics of a streaming worker (one registry per worker).

Besides counters and per-batch histograms, :class:`StageHistogram` records where a record's
latency goes, per record and per stage (``mystocks_stream_stage_seconds{processor, stage}``):

=============  ===================================================================================
stage          seconds of each input record spent ...
=============  ===================================================================================
``poll``       from its Kafka timestamp to the ``consume()`` that returned it (the feed and broker
               delay; observed only for records stamped within a minute before the wall clock,
               i.e. live event-time records, not replayed history)
``batch``      from that ``consume()`` to the close of its micro-batch (waiting for the batch)
``decode``     decoding its batch (the batch's time, once per record of the batch)
``compute``    the processor's computation on its batch (``process`` minus its encode time)
``encode``     encoding the batch's outputs (reported by the processor, 0 when it does not say)
``produce``    handing the batch's outputs to the producer (``produce()`` calls; exactly-once
               with columnar record I/O: handing them to the send thread, whose queueing
               then counts in ``commit``, ``streams/send_pipeline.py``)
``deliver``    at-least-once: from the end of produce to the broker's acknowledgement of the
               batch's last output (its outputs are then visible)
``commit``     exactly-once: from the end of produce to the end of the transaction's commit (its
               outputs become visible to read_committed consumers then)
=============  ===================================================================================

Each stage is observed once per input record (a batch of n records adds n observations of its
batch-level stages), so the per-stage means add up to the mean time a record spends from the feed
to visibility; the end-to-end time to a consumer is measured by the consumer (``bench/features_e2e.py``).
Observations are added in bulk with NumPy (no per-record Python), under a lock shared with the
HTTP exposition thread.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator

import numpy as np
from numba import njit
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: stage names, in a record's order through the worker
STAGES = ("poll", "batch", "decode", "compute", "encode", "produce", "deliver", "commit")
#: upper bounds (s) of the stage buckets: 50 us .. 10 s, about 1-2-5 per decade (+Inf implied)
STAGE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
                 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


#: the ``poll`` stage counts records stamped at most this long before they were consumed (ns)
LIVE_WINDOW_NS = 60 * 10**9


@njit(cache=True)
def _add_feed(counts: np.ndarray, bounds: np.ndarray, ts_ms: np.ndarray, marks: np.ndarray,
              window_ns: int) -> float:  # pragma: no cover - compiled (tests call it through observe_feed)
    """Bin each record's seconds from its timestamp (``ts_ms`` int64 (n,), ms) to its consume()
    (``marks`` int64 (m, 2): record count, wall ns; records past the marks take the last mark's
    time) into ``counts`` (int64 (len(bounds) + 1,), bucket ``i``: ``bounds[i-1] < s <= bounds[i]``);
    records with no known consume time (ns 0) or outside ``[0, window_ns)`` are skipped. Returns
    the sum of the binned seconds."""
    total = 0.0
    i = 0
    n = ts_ms.size
    for m in range(marks.shape[0]):
        stop = n if m == marks.shape[0] - 1 else min(n, i + marks[m, 0])
        polled = marks[m, 1]
        while i < stop:
            feed = polled - ts_ms[i] * 1_000_000
            if polled > 0 and 0 <= feed < window_ns:
                sec = feed / 1e9
                counts[np.searchsorted(bounds, sec)] += 1  # side "left": the first bound >= sec
                total += sec
            i += 1
    return total


class StageHistogram(Collector):
    """``mystocks_stream_stage_seconds``: a Prometheus histogram per stage, filled in bulk.

    ``observe(stage, seconds, count)`` adds ``count`` observations of one value;
    ``observe_feed(stage, ts_ms, marks)`` adds each record's delay from its timestamp to its consume(),
    in one compiled pass.
    """

    name = "mystocks_stream_stage_seconds"

    def __init__(self, processor: str, buckets: Iterable[float] = STAGE_BUCKETS) -> None:
        self.processor = processor
        self.bounds = np.asarray(tuple(buckets), np.float64)
        self._bounds_list = self.bounds.tolist()
        self._lock = threading.Lock()
        self._counts = {s: np.zeros(self.bounds.size + 1, np.int64) for s in STAGES}
        self._sums = dict.fromkeys(STAGES, 0.0)
        # compile (or load from the cache) the poll-stage pass now, not in the first batch; the
        # runtime passes a read-only timestamp array, a type of its own to numba
        ts = np.zeros(0, np.int64)
        ts.flags.writeable = False
        _add_feed(np.zeros(self.bounds.size + 1, np.int64), self.bounds, ts, np.zeros((1, 2), np.int64), 1)

    def observe(self, stage: str, seconds: float, count: int = 1) -> None:
        """Add ``count`` observations of ``seconds`` to ``stage``."""
        if count <= 0:
            return
        i = bisect.bisect_left(self._bounds_list, seconds)
        with self._lock:
            self._counts[stage][i] += count
            self._sums[stage] += seconds * count

    def observe_feed(self, stage: str, ts_ms: np.ndarray, marks: list[tuple[int, int]]) -> None:
        """Add, per record, the seconds from its timestamp (``ts_ms`` int64 (n,), ms) to the wall
        clock (ns) of the ``consume()`` that returned it: ``marks`` = ``(records, ns)`` per
        consume, in record order (records past the marks: the last mark's time). Only live records
        count: a known consume time (ns > 0) and a delay within ``[0, 60 s)``. One compiled pass
        (about a dozen NumPy calls a batch before, most of a small batch's metrics cost)."""
        if not marks or not len(ts_ms):
            return
        m = np.array(marks, np.int64).reshape(-1, 2)
        with self._lock:
            self._sums[stage] += _add_feed(self._counts[stage], self.bounds, ts_ms, m, LIVE_WINDOW_NS)

    def snapshot(self) -> dict[str, tuple[np.ndarray, float]]:
        """stage -> (bucket counts incl. +Inf, not cumulative; sum of seconds)."""
        with self._lock:
            return {s: (c.copy(), self._sums[s]) for s, c in self._counts.items()}

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, "seconds each input record spends per stage of the worker "
                                    "(see streams/stream_metrics.py)", labels=["processor", "stage"])
        for stage, (counts, total) in self.snapshot().items():
            cum = np.cumsum(counts)
            buckets = [(_fmt(b), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
            buckets.append(("+Inf", float(cum[-1])))
            fam.add_metric([self.processor, stage], buckets, total)
        yield fam

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, "seconds each input record spends per stage of the worker",
                                    labels=["processor", "stage"])


def _fmt(b: float) -> str:
    return repr(float(b))


class RuntimeMetrics:
    """Counters, histograms and gauges named ``mystocks_stream_*`` with a ``processor`` label."""

    def __init__(self, processor: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, lbl = self.registry, ["processor"]
        self.records_in = Counter("mystocks_stream_records_in", "records consumed", lbl, registry=r).labels(processor)
        self.records_out = Counter("mystocks_stream_records_out", "records produced (outputs)", lbl, registry=r).labels(processor)
        self.dlq = Counter("mystocks_stream_dlq_records", "records sent to the DLQ", lbl, registry=r).labels(processor)
        self.aborts = Counter("mystocks_stream_transaction_aborts", "aborted transactions", lbl, registry=r).labels(processor)
        self.commit_failures = Counter("mystocks_stream_offset_commit_failures", "asynchronous offset commits "
                                       "(at-least-once) that failed", lbl, registry=r).labels(processor)
        self.commit_waits = Counter("mystocks_stream_commit_waits", "at-least-once commits that stalled the loop "
                                    "waiting for output acknowledgements (the previous commit was still unsettled)",
                                    lbl, registry=r).labels(processor)
        self.reread = Counter("mystocks_stream_reread_records", "input records skipped because their offset was "
                              "below what the worker had already handled of their partition (read again without a "
                              "rewind; never expected)", lbl, registry=r).labels(processor)
        self.rebalances = Counter("mystocks_stream_rebalances", "partition assignments and revocations", lbl, registry=r).labels(processor)
        self.idle_flushes = Counter("mystocks_stream_idle_flushes", "partitions flushed (open state emitted) "
                                    "after idling or on a graceful stop", lbl, registry=r).labels(processor)
        self.batch_size = Histogram("mystocks_stream_batch_records", "records per batch", lbl, buckets=_BATCH_BUCKETS, registry=r).labels(processor)
        self.batch_latency = Histogram("mystocks_stream_batch_seconds", "decode+process+produce time per batch", lbl, buckets=_LAT_BUCKETS, registry=r).labels(processor)
        self.batch_cpu = Counter("mystocks_stream_batch_cpu_seconds", "CPU seconds of the worker's thread in "
                                 "decode+process+produce of batches: mystocks_stream_batch_seconds_sum minus this is "
                                 "how long batches waited for a core (a busy or oversubscribed machine)",
                                 lbl, registry=r).labels(processor)
        self.commit_latency = Histogram("mystocks_stream_commit_seconds", "commit time (transaction or offsets)", lbl, buckets=_LAT_BUCKETS, registry=r).labels(processor)
        self.restore_seconds = Histogram("mystocks_stream_state_restore_seconds", "state restore time per partition", lbl, buckets=_LAT_BUCKETS, registry=r).labels(processor)
        self.stages = StageHistogram(processor)
        r.register(self.stages)
        self._lag = Gauge("mystocks_stream_consumer_lag",
                          "records between the log end and the committed offset of a partition", ["processor", "partition"], registry=r)
        self._committed = Gauge("mystocks_stream_committed_offset", "committed offset of an owned input partition",
                                ["processor", "partition"], registry=r)
        self.paused = Gauge("mystocks_stream_paused", "1 while backpressure pauses the input partitions", lbl, registry=r).labels(processor)
        self.processor = processor
        self._partitions: set[int] = set()

    def set_lag(self, partition: int, lag: int) -> None:
        """Record a partition's consumer lag (log end offset - committed offset)."""
        self._partitions.add(partition)
        self._lag.labels(self.processor, str(partition)).set(lag)

    def set_committed(self, committed: dict[int, int]) -> None:
        """Record the committed offset of each owned partition."""
        for p, o in committed.items():
            if o >= 0:
                self._partitions.add(p)
                self._committed.labels(self.processor, str(p)).set(o)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Remove the series of partitions this worker no longer owns (revoked or lost)."""
        for p in partitions & self._partitions:
            for g in (self._lag, self._committed):
                try:
                    g.remove(self.processor, str(p))
                except KeyError:
                    pass
        self._partitions -= partitions

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP (port 0 = off)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)


def histogram_quantile(q: float, bounds: np.ndarray, counts: np.ndarray) -> float:
    """Prometheus' ``histogram_quantile``: the ``q`` quantile (0..1) by linear interpolation inside
    the bucket that holds it; ``bounds`` = upper bounds, ``counts`` = per-bucket counts incl. +Inf.
    NaN without observations; the highest finite bound when the quantile falls in +Inf."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    cum = np.cumsum(counts)
    rank = q * total
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= bounds.size:
        return float(bounds[-1])
    lo = 0.0 if i == 0 else float(bounds[i - 1])
    below = 0 if i == 0 else int(cum[i - 1])
    inside = int(counts[i])
    return lo + (float(bounds[i]) - lo) * ((rank - below) / inside if inside else 0.0)
