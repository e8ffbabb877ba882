"""Operational alerts: records for the ``alerts`` topic (Avro ``mystocks.ops.Alert``) and the
edge-triggered checks that raise them (GPU overload, GPU memory, DLQ growth). Job timeouts and
lost workers are raised by the control app through :func:`make_alert`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import AlertThresholds
from mystocks_gpu.jobs import job_metrics as m
from mystocks_gpu.jobs.scheduler import WorkerInfo

ALERT_SCHEMA = "mystocks.ops.Alert"
KINDS = ("GPU_OVERLOAD", "GPU_MEMORY", "JOB_TIMEOUT", "WORKER_LOST", "DLQ_GROWTH", "RISK_LIMIT", "OTHER",
         "REDIS_UNAVAILABLE")


def make_alert(kind: str, severity: str, source: str, message: str, value: float = 0.0, threshold: float = 0.0,
               labels: Mapping[str, str] | None = None, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """An Alert record (counted in ``mystocks_alerts_total``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind}")
    m.ALERTS.labels(kind, severity).inc()
    return {"alert_id": uuid.uuid4().hex, "ts_event": clock.now_ns(), "kind": kind, "severity": severity,
            "source": source, "message": message, "value": float(value), "threshold": float(threshold),
            "labels": {k: str(v) for k, v in (labels or {}).items()}}


def _unset(gauge: Any, *labels: str) -> None:
    """Remove one labelled series of ``gauge`` (no-op when it does not exist)."""
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


class AlertMonitor:
    """Edge-triggered checks: an alert when a condition starts, none while it lasts."""

    def __init__(self, thresholds: AlertThresholds | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.t = thresholds or AlertThresholds()
        self.clock = clock
        self._active: set[tuple[str, str, str]] = set()
        self._dlq: dict[str, int] = {}

    def _edge(self, key: tuple[str, str, str], on: bool) -> bool:
        if on and key not in self._active:
            self._active.add(key)
            return True
        if not on:
            self._active.discard(key)
        return False

    def check_devices(self, workers: Iterable[WorkerInfo]) -> list[dict[str, Any]]:
        """GPU_OVERLOAD / GPU_MEMORY alerts for devices that crossed a threshold; sets the gauges."""
        out = []
        for w in workers:
            for d in w.devices:
                used = (1.0 - d.free_bytes / d.total_bytes) if d.total_bytes else 0.0
                if d.utilization is not None:
                    m.DEVICE_UTIL.labels(w.worker_id, d.id).set(d.utilization)
                else:  # unknown (no NVML): no series rather than a made-up 0
                    _unset(m.DEVICE_UTIL, w.worker_id, d.id)
                m.DEVICE_MEM.labels(w.worker_id, d.id).set(used)
                if not d.is_gpu:
                    continue
                src = f"{w.worker_id}/{d.id}"
                hot = d.utilization is not None and d.utilization > self.t.gpu_utilization
                full = used > self.t.gpu_memory
                if d.utilization is not None:
                    m.GPU_OVERLOADED.labels(w.worker_id, d.id).set(int(hot))
                else:
                    _unset(m.GPU_OVERLOADED, w.worker_id, d.id)
                m.GPU_MEMORY_HIGH.labels(w.worker_id, d.id).set(int(full))
                if self._edge(("util", w.worker_id, d.id), hot) and d.utilization is not None:
                    out.append(make_alert("GPU_OVERLOAD", "WARNING", src,
                                          f"GPU {src} utilisation {d.utilization:.0%} above {self.t.gpu_utilization:.0%}",
                                          d.utilization, self.t.gpu_utilization, {"worker": w.worker_id, "device": d.id}, self.clock))
                if self._edge(("mem", w.worker_id, d.id), full):
                    out.append(make_alert("GPU_MEMORY", "WARNING", src,
                                          f"GPU {src} memory {used:.0%} used, above {self.t.gpu_memory:.0%}",
                                          used, self.t.gpu_memory, {"worker": w.worker_id, "device": d.id}, self.clock))
        return out

    def forget_workers(self, worker_ids: Iterable[str]) -> None:
        """Remove the device gauges and edge states of workers that are gone (left or lost), so a
        dead worker's series do not stay in ``/metrics`` forever."""
        gone = set(worker_ids)
        for gauge in (m.DEVICE_UTIL, m.DEVICE_MEM, m.GPU_OVERLOADED, m.GPU_MEMORY_HIGH):
            for labels in [s.labels for metric in gauge.collect() for s in metric.samples]:
                if labels.get("worker") in gone:
                    try:
                        gauge.remove(labels["worker"], labels["device"])
                    except KeyError:
                        pass
        self._active = {k for k in self._active if k[1] not in gone}

    def check_dlq(self, levels: Mapping[str, int]) -> list[dict[str, Any]]:
        """DLQ_GROWTH alerts for dead-letter topics that grew by >= the threshold since the last
        check (the first check only records a baseline). ``levels``: topic -> record count."""
        out = []
        for topic, n in levels.items():
            m.DLQ_RECORDS.labels(topic).set(n)
            prev = self._dlq.get(topic)
            self._dlq[topic] = n
            if prev is not None and n - prev >= self.t.dlq_growth:
                out.append(make_alert("DLQ_GROWTH", "WARNING", topic, f"dead-letter topic {topic} grew by {n - prev} records",
                                      float(n - prev), float(self.t.dlq_growth), {"topic": topic}, self.clock))
        return out
