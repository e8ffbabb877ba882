"""Worker loss and placement against the real broker and Redis: a SIGKILLed worker's job is
re-queued to another worker and its result appears exactly once; a device reserved for a
real-time processor never gets batch jobs, and memory estimates never over-commit a device."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from typing import Any

import redis

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.jobs.protocol import FINAL
from mystocks_gpu.jobs.result_cache import ResultStore, result_key
from tests.integration.jobs_plane import Plane, collect, states


def test_sigkilled_worker_job_is_requeued_and_its_result_appears_once(settings: Settings, stack: Any) -> None:
    plane = Plane(settings, uuid.uuid4().hex[:8])
    try:
        plane.start_control()
        plane.start_worker("w1")
        plane.start_worker("w2")
        plane.warm_up()
        t0_ms = time.time() * 1000
        follower = plane.follower()
        try:
            job_id = plane.submit("sleep", {"seconds": 4.0, "steps": 16, "tag": "failover"})
            running = plane.wait(job_id, {"running"}, timeout=20)
            end = time.monotonic() + 10
            while plane.job(job_id)["progress"] < 0.2 and time.monotonic() < end:
                time.sleep(0.05)
            victim = running["chunks"][0]["worker"]
            survivor = {"w1": "w2", "w2": "w1"}[victim]
            plane.kill(victim)  # SIGKILL mid-job: no goodbye, the heartbeat just expires
            seq = collect(follower, job_id, timeout=60)
        finally:
            follower.close()
        assert states(seq) == ["queued", "running", "queued", "running", "succeeded"], states(seq)
        first_run = next(i for i, s in enumerate(seq) if s["state"] == "running")
        requeue = next(s for s in seq[first_run:] if s["state"] == "queued")
        assert f"worker {victim} lost" in requeue["message"]
        assert max(s["progress"] for s in seq[: seq.index(requeue)]) >= 0.2  # it was mid-job
        final = seq[-1]
        assert final["worker"] == f"{survivor}/cpu0" and final["result"] == {"slept_s": 4.0, "steps": 16, "chunks": 1,
                                                                             "tag": "failover"}
        # exactly once: one final status on job.status, one stored result, although the chunk ran twice
        assert sum(s["state"] == "succeeded" for s in seq) == 1
        r = redis.Redis.from_url(settings.redis.url)
        store = ResultStore(r, plane.ns)
        assert store.runs(job_id, 0) == 2 and store.count(job_id) == 1
        assert json.loads(r.get(result_key(plane.ns, job_id, 0)) or b"null") == {"slept_s": 4.0, "steps": 16, "tag": "failover#0"}
        job = plane.job(job_id)
        assert job["chunks"][0]["attempt"] == 2 and job["chunks"][0]["worker"] == survivor
        on_topic = [x.value for x in read_topic(settings.kafka, "job.status", idle_timeout_s=2)
                    if x.key == job_id and x.timestamp_ms >= t0_ms - 1000 and x.value is not None]
        assert sum(v["state"] == "SUCCEEDED" for v in on_topic) == 1
        lost = [x.value for x in read_topic(settings.kafka, "alerts", idle_timeout_s=2)
                if x.value is not None and x.timestamp_ms >= t0_ms - 1000 and x.value["kind"] == "WORKER_LOST"]
        assert [a["source"] for a in lost] == [victim] and lost[0]["severity"] == "CRITICAL"
        assert victim not in {w["worker_id"] for w in plane.workers()}
        # the job table is changelog-backed: a restarted control app (same app id) still knows the job
        plane.kill("control", signal.SIGTERM)
        plane.start_control()
        again = plane.job(job_id)
        assert again["state"] == "succeeded" and again["result"] == final["result"]
        assert again["chunks"][0]["attempt"] == 2
    finally:
        plane.close()


def test_realtime_reservation_and_memory_are_respected_across_two_workers(settings: Settings, stack: Any) -> None:
    plane = Plane(settings, uuid.uuid4().hex[:8])
    # rt-a/gpu1 is 95 % full (GPU_MEMORY alert); bt-b/gpu0 runs at 99 % utilisation (GPU_OVERLOAD alert)
    a_devs = json.dumps([{"id": "gpu0", "total_mb": 24576}, {"id": "gpu1", "total_mb": 4096, "free_mb": 200}])
    b_devs = json.dumps([{"id": "gpu0", "total_mb": 16384, "utilization": 0.99}])
    t0_ms = time.time() * 1000
    try:
        plane.start_control()
        plane.start_worker("rt-a", "--fake-devices", a_devs, "--reserve", "gpu0=tick-features")
        plane.start_worker("bt-b", "--fake-devices", b_devs)
        ws = {w["worker_id"]: w for w in plane.workers()}
        assert ws["rt-a"]["devices"][0]["reserved_for"] == "tick-features"
        assert ws["rt-a"]["devices"][1]["reserved_for"] is None
        # 10 GiB each: only bt-b/gpu0 (16 GiB) fits one -- rt-a/gpu0 (24 GiB) is reserved, rt-a/gpu1 too small
        ids = [plane.submit("sleep", {"seconds": 1.0, "steps": 4, "memory_mb": 10240, "tag": f"m{i}"}, bypass_cache=True)
               for i in range(3)]
        small = plane.submit("sleep", {"seconds": 0.5, "steps": 2, "memory_mb": 2048}, bypass_cache=True)
        seen_waiting = False
        end = time.monotonic() + 60
        while time.monotonic() < end:
            jobs = [plane.job(j) for j in ids]
            seen_waiting |= any("waiting: no device fits 10240 MiB" in (j["message"] or "") for j in jobs)
            running = [j for j in jobs if j["state"] == "running"]
            assert len(running) <= 1, "two 10 GiB jobs on a 16 GiB device"
            if all(j["state"] in FINAL for j in jobs):
                break
            time.sleep(0.05)
        jobs = [plane.job(j) for j in ids]
        assert [j["state"] for j in jobs] == ["succeeded"] * 3
        assert {j["worker"] for j in jobs} == {"bt-b/gpu0"}
        assert seen_waiting
        # the small job does not fit the nearly full rt-a/gpu1 and never goes to the reserved rt-a/gpu0
        s = plane.wait(small, FINAL, timeout=30)
        assert s["state"] == "succeeded" and s["worker"] == "bt-b/gpu0"
        alerts = {(a["kind"], a["source"]) for a in (x.value for x in read_topic(settings.kafka, "alerts", idle_timeout_s=2)
                                                      if x.timestamp_ms >= t0_ms - 1000) if a is not None}
        assert {("GPU_MEMORY", "rt-a/gpu1"), ("GPU_OVERLOAD", "bt-b/gpu0")} <= alerts
        assert not {a for a in alerts if a[1] == "rt-a/gpu0"}
        with urllib.request.urlopen(f"{plane.url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'mystocks_gpu_overloaded{device="gpu0",worker="bt-b"} 1.0' in metrics
        assert 'mystocks_gpu_memory_high{device="gpu1",worker="rt-a"} 1.0' in metrics
        # the runs never overlapped in time
        spans = sorted((j["started_ns"], j["finished_ns"]) for j in jobs)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
        history = [x.value for x in read_topic(settings.kafka, "job.status", idle_timeout_s=2)
                   if x.key in set(ids) | {small} and x.value is not None]
        assert history and not any((v["worker"] or "").startswith("rt-a/gpu0") for v in history)
    finally:
        plane.close()
