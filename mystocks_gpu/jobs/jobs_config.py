"""Frozen configuration of the job control plane (control app, workers, CLI client)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.jobs.alerts import AlertThresholds
from mystocks_gpu.jobs.scheduler import SchedulerConfig

_NAME = re.compile(r"[A-Za-z0-9._\-]{1,100}")


@dataclass(frozen=True)
class JobsConfig:
    """Settings shared by the control app, workers and clients.

    Times in seconds. ``namespace`` prefixes every Redis key (heartbeats, cache, results).
    ``redis_timeout_s``: socket timeout of every Redis call of the control app and workers;
    ``redis_retry_s``: how long a worker retries Redis (with backoff) to start a chunk or store its
    result before giving up (a finished result is then still reported, never lost);
    ``ws_queue_max``: bound of each WebSocket client's queue, messages (drop-oldest, signalled);
    ``reject_unfit_after_s``: a queued job that no live worker serving its kind can ever hold is
    rejected (with the reason) after this long.
    """

    namespace: str = "mystocks"
    app_id: str = "mystocks-control"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    commands_topic: str = "cmd.jobs"
    status_topic: str = "job.status"
    events_topic: str = "jobs.events"
    alerts_topic: str = "alerts"
    dispatch_prefix: str = "jobs.dispatch."
    market_data_topic: str = "md.ticks"
    calc_result_topic: str = "features.ticks"
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    tick_interval_s: float = 0.5
    cache_ttl_s: float = 86_400.0
    result_ttl_s: float = 7 * 86_400.0
    progress_interval_s: float = 0.2
    dlq_check_interval_s: float = 30.0
    gpu_utilization_alert: float = 0.95
    gpu_memory_alert: float = 0.90
    dlq_growth_alert: int = 100
    memory_headroom: float = 0.05
    max_chunks_per_device: int = 4
    redis_timeout_s: float = 2.0
    redis_retry_s: float = 300.0
    ws_queue_max: int = 1000
    reject_unfit_after_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("namespace", "app_id"):
            if not _NAME.fullmatch(getattr(self, name)):
                raise ConfigError(f"jobs.{name} must be 1-100 characters of A-Z a-z 0-9 . _ -")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError(f"jobs.web_port must be 0..65535, got {self.web_port}")
        if self.heartbeat_interval_s <= 0 or self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError("jobs.heartbeat_ttl_s must exceed jobs.heartbeat_interval_s > 0")
        if self.tick_interval_s <= 0 or self.progress_interval_s < 0 or self.dlq_check_interval_s <= 0:
            raise ConfigError("jobs tick/progress/dlq intervals must be > 0")
        if self.cache_ttl_s < 0 or self.result_ttl_s <= 0:
            raise ConfigError("jobs.cache_ttl_s must be >= 0 and jobs.result_ttl_s > 0")
        if not 0 < self.redis_timeout_s <= 60 or not 0 <= self.redis_retry_s <= 86_400:
            raise ConfigError("jobs.redis_timeout_s must be within (0, 60] and jobs.redis_retry_s within 0..86400")
        if not 0 <= self.reject_unfit_after_s <= 86_400:
            raise ConfigError(f"jobs.reject_unfit_after_s must be within 0..86400, got {self.reject_unfit_after_s}")
        if self.ws_queue_max < 1:
            raise ConfigError(f"jobs.ws_queue_max must be >= 1, got {self.ws_queue_max}")
        self.scheduler()
        self.thresholds()

    def scheduler(self) -> SchedulerConfig:
        """The scheduler's knobs."""
        return SchedulerConfig(self.memory_headroom, self.max_chunks_per_device)

    def thresholds(self) -> AlertThresholds:
        """Alert thresholds."""
        return AlertThresholds(self.gpu_utilization_alert, self.gpu_memory_alert, self.dlq_growth_alert)

    def dispatch_topic(self, worker_id: str) -> str:
        """The dispatch topic a worker consumes: ``jobs.dispatch.<namespace>.<worker_id>``."""
        return f"{self.dispatch_prefix}{self.namespace}.{worker_id}"

    @property
    def url(self) -> str:
        """Base URL of the control app's web server."""
        return f"http://{self.web_host}:{self.web_port}"
