"""Prometheus metrics of the job control plane (the same conditions the ``alerts`` topic carries)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_SUBMITTED = Counter("mystocks_jobs_submitted_total", "Job submit commands accepted", ["kind"])
JOBS_FINISHED = Counter("mystocks_jobs_finished_total", "Jobs that reached a final state", ["kind", "state"])
JOBS_REJECTED = Counter("mystocks_jobs_rejected_total", "Invalid job commands")
JOBS_CACHED = Counter("mystocks_jobs_cache_hits_total", "Submits answered from the result cache", ["kind"])
JOBS_REQUEUED = Counter("mystocks_jobs_requeued_total", "Chunks re-queued after their worker was lost", ["kind"])
JOBS_TIMEOUT = Counter("mystocks_jobs_timeout_total", "Jobs failed for passing their deadline", ["kind"])
JOBS_ACTIVE = Gauge("mystocks_jobs_active", "Jobs queued or running", ["state"])
JOBS_BY_KIND = Gauge("mystocks_jobs_active_by_kind", "Jobs queued or running, by state and kind", ["state", "kind"])
JOB_SECONDS = Histogram("mystocks_job_duration_seconds", "Submit-to-finish time of jobs", ["kind"],
                        buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 7200))
WORKERS_ALIVE = Gauge("mystocks_workers_alive", "Workers with a live heartbeat")
WORKERS_LOST = Counter("mystocks_workers_lost_total", "Workers whose heartbeat expired with work assigned")
DEVICE_UTIL = Gauge("mystocks_device_utilization_ratio", "Device utilisation 0..1", ["worker", "device"])
DEVICE_MEM = Gauge("mystocks_device_memory_used_ratio", "Device memory used / total", ["worker", "device"])
GPU_OVERLOADED = Gauge("mystocks_gpu_overloaded", "1 while a GPU is above the utilisation threshold", ["worker", "device"])
GPU_MEMORY_HIGH = Gauge("mystocks_gpu_memory_high", "1 while a GPU is above the memory threshold", ["worker", "device"])
DLQ_RECORDS = Gauge("mystocks_dlq_records", "Records in a dead-letter topic (high watermark sum)", ["topic"])
ALERTS = Counter("mystocks_alerts_total", "Alerts published", ["kind", "severity"])
REDIS_UP = Gauge("mystocks_control_redis_up", "1 while the control app reaches Redis")
WS_DROPPED = Counter("mystocks_ws_dropped_total", "WebSocket messages dropped for slow clients (signalled to them)")
WS_INVALID = Counter("mystocks_ws_invalid_records_total", "Feed records not forwarded (undecodable or invalid)", ["type"])


def set_jobs_by_kind(counts: dict[tuple[str, str], int]) -> None:
    """Set :data:`JOBS_BY_KIND` from ``{(state, kind): n}``; pairs seen before and absent now go to 0."""
    for labels in list(_SEEN_BY_KIND - set(counts)):
        JOBS_BY_KIND.labels(*labels).set(0)
    for labels, n in counts.items():
        JOBS_BY_KIND.labels(*labels).set(n)
    _SEEN_BY_KIND.update(counts)


_SEEN_BY_KIND: set[tuple[str, str]] = set()
