"""Prometheus metrics of a streaming worker (one registry per worker)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)
#: the stages of ``mystocks_stream_stage_seconds``
STAGES = ("decode", "process", "produce")
_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class RuntimeMetrics:
    """Counters, histograms and gauges named ``mystocks_stream_*`` with a ``processor`` label."""

    def __init__(self, processor: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, lbl = self.registry, ["processor"]
        self.records_in = Counter("mystocks_stream_records_in", "records consumed", lbl, registry=r).labels(processor)
        self.records_out = Counter("mystocks_stream_records_out", "records produced (outputs)", lbl, registry=r).labels(processor)
        self.dlq = Counter("mystocks_stream_dlq_records", "records sent to the DLQ", lbl, registry=r).labels(processor)
        self.aborts = Counter("mystocks_stream_transaction_aborts", "aborted transactions", lbl, registry=r).labels(processor)
        self.rebalances = Counter("mystocks_stream_rebalances", "partition assignments and revocations", lbl, registry=r).labels(processor)
        self.batch_size = Histogram("mystocks_stream_batch_records", "records per batch", lbl, buckets=_BATCH_BUCKETS, registry=r).labels(processor)
        self.batch_latency = Histogram("mystocks_stream_batch_seconds", "decode+process+produce time per batch", lbl, buckets=_LAT_BUCKETS, registry=r).labels(processor)
        self.commit_latency = Histogram("mystocks_stream_commit_seconds", "commit time (transaction or offsets)", lbl, buckets=_LAT_BUCKETS, registry=r).labels(processor)
        #: per-stage time of each batch (seconds): decode, process (the maths), produce (outputs
        #: + DLQ, up to the producer's queue); the commit is ``commit_seconds``
        self._stage = Histogram("mystocks_stream_stage_seconds", "time per batch in one stage (decode, process, produce)",
                                ["processor", "stage"], buckets=_LAT_BUCKETS, registry=r)
        self.stages = {st: self._stage.labels(processor, st) for st in STAGES}
        self.restore_seconds = Histogram("mystocks_stream_state_restore_seconds", "state restore time per partition", lbl, buckets=_LAT_BUCKETS, registry=r).labels(processor)
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
