"""A Redis outage on the real stack (the stack's redis-server is SIGSTOPped mid-job, then resumed):
finished work is kept and stored once Redis is back, ``/health`` reports not-ready and ready
again, a REDIS_UNAVAILABLE alert is produced, dispatching to stale workers stops, and the worker's
Prometheus metrics show the heartbeat failures and retries."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid

import redis
from prometheus_client.parser import text_string_to_metric_families

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.jobs.protocol import FINAL
from mystocks_gpu.jobs.result_cache import ResultStore, result_key
from tests.integration.jobs_plane import Plane, free_port, wait_until


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` of a worker: {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def val(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value (KeyError names the series when absent)."""
    key = (name, frozenset({"worker": "w1", **labels}.items()))
    if key not in samples:
        raise KeyError(f"{name}{labels} not exposed; have {sorted(n for n, _ in samples)}")
    return samples[key]


def test_redis_outage_mid_job_keeps_the_result_alerts_and_reports_not_ready(settings: Settings,
                                                                            stack: LocalStack) -> None:
    plane = Plane(settings, uuid.uuid4().hex[:8])
    mport = free_port()
    redis_pid = stack.pid("redis")
    assert redis_pid is not None, "the stack's redis-server is not running"
    stopped = False
    t0_ms = time.time() * 1000
    try:
        plane.start_control()
        plane.start_worker("w1", "--metrics-port", str(mport))
        plane.warm_up()
        job = plane.submit("sleep", {"seconds": 3.0, "steps": 12, "tag": "outage"}, bypass_cache=True)
        plane.wait_job(job, lambda j: j["state"] == "running" and j["progress"] >= 0.25, 20, "running at >= 25 %")
        before = scrape(mport)
        assert val(before, "mystocks_worker_chunks_in_flight") == 1.0
        assert val(before, "mystocks_worker_heartbeat_failures_total") == 0.0

        os.kill(redis_pid, signal.SIGSTOP)  # Redis hangs: every call times out
        stopped = True
        status, health = wait_until(lambda: (h := plane.health())[0] == 503 and h, 30, "/health answers 503")
        assert health["ready"] is False and health["redis"] == "unavailable"
        assert any(r.startswith("Redis unavailable") for r in health["reasons"]), health
        # the chunk finished and keeps its result while it cannot store it
        plane.wait_job(job, lambda j: "storing the result (Redis unavailable" in (j["message"] or ""), 30,
                       "reports it waits to store its result")
        # heartbeats go stale: nothing is dispatched; a new job waits instead of failing at once
        wait_until(lambda: plane.health()[1].get("live_workers") == 0, 20, "no live worker while Redis is down")
        job2 = plane.submit("echo", {"message": "during the outage"}, bypass_cache=True)
        queued = plane.wait_job(job2, lambda j: (j["message"] or "").startswith("waiting: no live worker"), 20,
                                "waiting for a live worker")
        assert queued["state"] == "queued" and queued["chunks"][0]["attempt"] == 0
        assert plane.job(job)["state"] == "running"

        os.kill(redis_pid, signal.SIGCONT)
        stopped = False
        final = plane.wait(job, FINAL, timeout=60)
        assert final["state"] == "succeeded", final
        assert final["result"] == {"slept_s": 3.0, "steps": 12, "chunks": 1, "tag": "outage"}
        assert final["chunks"][0]["attempt"] == 1 and final["worker"] == "w1/cpu0"  # not re-run elsewhere
        r = redis.Redis.from_url(settings.redis.url)
        store = ResultStore(r, plane.ns)
        assert store.runs(job, 0) == 1 and store.count(job) == 1
        assert json.loads(r.get(result_key(plane.ns, job, 0)) or b"null") == {"slept_s": 3.0, "steps": 12,
                                                                               "tag": "outage#0"}
        late = plane.wait(job2, FINAL, timeout=30)
        assert late["state"] == "succeeded" and late["result"] == {"message": "during the outage", "payload": {}}
        status, health = wait_until(lambda: (h := plane.health())[0] == 200 and h, 30, "/health answers 200")
        assert health["ready"] is True and health["redis"] == "ok" and health["reasons"] == []

        alerts = [x.value for x in read_topic(settings.kafka, "alerts", idle_timeout_s=2)
                  if x.value is not None and x.timestamp_ms >= t0_ms - 1000]
        mine = [(a["kind"], a["severity"], a["labels"].get("resolved")) for a in alerts
                if a["labels"].get("app_id") == f"test-ctl-{plane.ns}"]
        assert mine == [("REDIS_UNAVAILABLE", "CRITICAL", None), ("REDIS_UNAVAILABLE", "INFO", "true")], mine
        assert not [a for a in alerts if a["kind"] == "WORKER_LOST" and a["source"] == "w1"]

        after = scrape(mport)
        assert val(after, "mystocks_worker_heartbeat_failures_total") >= 1
        assert val(after, "mystocks_worker_redis_retries_total", op="store") >= 1
        assert val(after, "mystocks_worker_chunks_run_total", kind="sleep") == 1
        assert val(after, "mystocks_worker_chunks_finished_total", kind="sleep", outcome="succeeded") == 1
        assert val(after, "mystocks_worker_chunks_run_total", kind="echo") == 2  # warm-up + job2
        assert val(after, "mystocks_worker_chunks_finished_total", kind="echo", outcome="succeeded") == 2
        assert val(after, "mystocks_worker_chunks_in_flight") == 0
        assert val(after, "mystocks_worker_chunk_run_seconds_count", kind="sleep") == 1
        assert val(after, "mystocks_worker_chunk_run_seconds_sum", kind="sleep") >= 3.0
        with urllib.request.urlopen(f"{plane.url}/metrics", timeout=10) as resp:
            assert "mystocks_control_redis_up 1.0" in resp.read().decode()
    finally:
        if stopped:
            os.kill(redis_pid, signal.SIGCONT)
        plane.close()


def test_redis_shut_down_and_restarted_mid_job_loses_no_result(settings: Settings, stack: LocalStack) -> None:
    """The other kind of outage: connections refused, then a fresh, empty Redis (no persistence)."""
    plane = Plane(settings, uuid.uuid4().hex[:8])
    redis_pid = stack.pid("redis")
    assert redis_pid is not None, "the stack's redis-server is not running"
    down = False
    try:
        plane.start_control()
        plane.start_worker("w1")
        plane.warm_up()
        job = plane.submit("sleep", {"seconds": 3.0, "steps": 12, "tag": "restart"}, bypass_cache=True)
        plane.wait_job(job, lambda j: j["state"] == "running" and j["progress"] >= 0.25, 20, "running at >= 25 %")
        os.kill(redis_pid, signal.SIGTERM)
        down = True
        wait_until(lambda: stack.pid("redis") is None, 20, "redis-server exited")
        wait_until(lambda: plane.health()[0] == 503, 30, "/health answers 503")
        plane.wait_job(job, lambda j: "storing the result (Redis unavailable" in (j["message"] or ""), 30,
                       "reports it waits to store its result")
        stack.start_redis()
        down = False
        final = plane.wait(job, FINAL, timeout=60)
        assert final["state"] == "succeeded" and final["chunks"][0]["attempt"] == 1, final
        assert final["result"] == {"slept_s": 3.0, "steps": 12, "chunks": 1, "tag": "restart"}
        r = redis.Redis.from_url(settings.redis.url)
        assert json.loads(r.get(result_key(plane.ns, job, 0)) or b"null") == {"slept_s": 3.0, "steps": 12,
                                                                               "tag": "restart#0"}
        wait_until(lambda: plane.health()[0] == 200, 30, "/health answers 200")
        wait_until(lambda: plane.health()[1].get("live_workers") == 1, 20, "w1 heart-beats into the new Redis")
        again = plane.wait(plane.submit("echo", {"message": "after restart"}, bypass_cache=True), FINAL, timeout=30)
        assert again["state"] == "succeeded"
    finally:
        if down:
            stack.start_redis()
        plane.close()
