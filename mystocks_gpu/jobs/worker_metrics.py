"""Prometheus metrics of one job worker process (its own registry; ``worker --metrics-port P``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: chunk run times, seconds
_RUN_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 7200)


class WorkerMetrics:
    """``mystocks_worker_*`` series, labelled by ``worker`` (and ``kind`` where it applies)."""

    def __init__(self, worker_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.worker_id = worker_id
        self._run = Counter("mystocks_worker_chunks_run", "chunks started", ["worker", "kind"], registry=r)
        self._done = Counter("mystocks_worker_chunks_finished", "chunks ended, by outcome "
                             "(succeeded, failed, cancelled, requeued)", ["worker", "kind", "outcome"], registry=r)
        self._seconds = Histogram("mystocks_worker_chunk_run_seconds", "run time of a chunk, start to report, s",
                                  ["worker", "kind"], buckets=_RUN_BUCKETS, registry=r)
        self.in_flight = Gauge("mystocks_worker_chunks_in_flight", "chunks running now", ["worker"],
                               registry=r).labels(worker_id)
        self.heartbeat_failures = Counter("mystocks_worker_heartbeat_failures", "heartbeats that could not be "
                                          "written to Redis", ["worker"], registry=r).labels(worker_id)
        self._redis_retries = Counter("mystocks_worker_redis_retries", "Redis calls retried (outage), by operation",
                                      ["worker", "op"], registry=r)

    def started(self, kind: str) -> None:
        """A chunk of ``kind`` starts."""
        self._run.labels(self.worker_id, kind).inc()
        self.in_flight.inc()

    def finished(self, kind: str, outcome: str, seconds: float) -> None:
        """A chunk ended with ``outcome`` after ``seconds``."""
        self._done.labels(self.worker_id, kind, outcome).inc()
        self._seconds.labels(self.worker_id, kind).observe(seconds)
        self.in_flight.dec()

    def redis_retry(self, op: str) -> None:
        """One retried Redis call."""
        self._redis_retries.labels(self.worker_id, op).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP (port 0 = off)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
