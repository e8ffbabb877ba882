"""The control plane's state machine (ControlCore) on a dict table, the WebSocket hub and the
alert monitor: pure, no broker."""

from __future__ import annotations

import json
import time
from typing import Any

from mystocks_gpu.infra.devices import Device
from mystocks_gpu.jobs.alerts import AlertMonitor, AlertThresholds
from mystocks_gpu.jobs.control_state import ControlCore
from mystocks_gpu.jobs.protocol import make_command
from mystocks_gpu.jobs.scheduler import SchedulerConfig, WorkerInfo
from mystocks_gpu.jobs.ws_hub import Hub

GIB = 1 << 30
W1 = WorkerInfo("w1", ("sleep", "echo"), (Device("gpu0", "gpu", "g", 16 * GIB, 16 * GIB),))
W2 = WorkerInfo("w2", ("sleep", "echo"), (Device("gpu0", "gpu", "g", 16 * GIB, 16 * GIB),))


def core() -> ControlCore:
    c = ControlCore({}, SchedulerConfig(0.0, 4))
    c.reindex()
    return c


def report(c: ControlCore, job: str, state: str, attempt: int, progress: float = 0.0, chunk: int = 0,
           worker: str = "w1", result: Any = None, error: str | None = None):  # type: ignore[no-untyped-def]
    st = {"job_id": job, "state": state, "progress": progress, "message": "", "error": error,
          "result_json": json.dumps(result) if result is not None else None}
    return c.report(st, {"attempt": str(attempt), "chunk": str(chunk), "worker": worker, "device": "gpu0"})


def test_submit_schedule_run_succeed_publishes_one_final_status() -> None:
    c = core()
    eff = c.submit(make_command("SUBMIT", "j1", "sleep", {"seconds": 1}))
    assert [s["state"] for s in eff.statuses] == ["QUEUED"]
    eff = c.schedule([W1])
    assert eff.dispatch == [("w1", {"type": "run", "job_id": "j1", "chunk": 0, "attempt": 1, "kind": "sleep",
                                    "spec": c.table["j1"]["chunks"][0]["spec"], "device": "gpu0",
                                    "memory_bytes": 64 << 20, "deadline_ns": None})]
    assert c.schedule([W1]).dispatch == []  # already dispatched
    progress = [s["progress"] for p in (0.0, 0.5, 1.0) for s in report(c, "j1", "RUNNING", 1, p).statuses]
    assert progress == [0.0, 0.5, 1.0] and c.table["j1"]["state"] == "running"
    eff = report(c, "j1", "SUCCEEDED", 1, 1.0, result={"slept_s": 1.0, "steps": 10, "tag": ""})
    assert [s["state"] for s in eff.statuses] == ["SUCCEEDED"]
    assert json.loads(eff.statuses[0]["result_json"])["slept_s"] == 1.0
    assert eff.cache_puts and eff.cache_puts[0][0] == c.table["j1"]["cache_key"]
    # a late duplicate success (e.g. from a re-run) changes nothing
    assert not report(c, "j1", "SUCCEEDED", 2, 1.0, result={"slept_s": 1.0, "steps": 10, "tag": ""})
    assert "j1" not in c.active


def test_invalid_command_is_rejected_and_changes_nothing_else() -> None:
    c = core()
    c.submit(make_command("SUBMIT", "good", "sleep", {}))
    before = json.dumps(c.table["good"], sort_keys=True)
    eff = c.submit(make_command("SUBMIT", "bad", "sleep", {"seconds": "x"}))
    assert [(s["state"], s["error"]) for s in eff.statuses] == [("REJECTED", "spec field 'seconds' must be a number, got 'x'")]
    assert not eff.dispatch and not eff.alerts and not eff.cache_puts
    assert json.dumps(c.table["good"], sort_keys=True) == before and c.active == {"good"}
    # a re-sent submit of a known job id is a no-op, never a status
    assert not c.submit(make_command("SUBMIT", "good", "sleep", {"seconds": "x"}))
    assert c.cancel("nope").statuses[0]["state"] == "REJECTED"


def test_cached_result_answers_at_once() -> None:
    c = core()
    eff = c.submit(make_command("SUBMIT", "j", "echo", {"message": "m"}), cached={"message": "m", "payload": {}})
    assert [(s["state"], s["cached"]) for s in eff.statuses] == [("SUCCEEDED", True)]
    eff = c.submit(make_command("SUBMIT", "k", "echo", {"message": "m"}, bypass_cache=True), cached={"x": 1})
    assert [(s["state"], s["cached"]) for s in eff.statuses] == [("QUEUED", False)]


def test_cancel_running_job_stops_its_worker() -> None:
    c = core()
    c.submit(make_command("SUBMIT", "j", "sleep", {"seconds": 10}))
    c.schedule([W1])
    report(c, "j", "RUNNING", 1, 0.3)
    eff = c.cancel("j", "alice")
    assert [s["state"] for s in eff.statuses] == ["CANCELLED"] and eff.statuses[0]["message"] == "cancelled by alice"
    assert eff.dispatch == [("w1", {"type": "stop", "job_id": "j", "chunk": 0, "attempt": 1, "reason": "cancelled"})]
    assert not c.cancel("j") and not report(c, "j", "CANCELLED", 1)


def test_lost_worker_requeues_with_a_new_attempt_and_ignores_the_stale_run() -> None:
    c = core()
    c.submit(make_command("SUBMIT", "j", "sleep", {"seconds": 10}))
    c.schedule([W1])
    report(c, "j", "RUNNING", 1, 0.4)
    eff = c.check_workers([W2])  # w1's heartbeat is gone
    assert [a["kind"] for a in eff.alerts] == ["WORKER_LOST"] and eff.statuses[0]["state"] == "QUEUED"
    assert not c.check_workers([W2]).alerts  # one alert per lost worker
    eff = c.schedule([W2])
    assert eff.dispatch[0][0] == "w2" and eff.dispatch[0][1]["attempt"] == 2
    assert not report(c, "j", "RUNNING", 1, 0.9).statuses  # the zombie attempt has no say
    assert report(c, "j", "RUNNING", 2, 0.5, worker="w2").statuses[0]["progress"] == 0.5
    eff = report(c, "j", "SUCCEEDED", 2, 1.0, worker="w2", result={"slept_s": 10.0, "steps": 10, "tag": ""})
    assert [s["state"] for s in eff.statuses] == ["SUCCEEDED"]


def test_deadline_fails_the_job_stops_the_worker_and_alerts() -> None:
    c = core()
    c.submit(make_command("SUBMIT", "j", "sleep", {"seconds": 10}, deadline_ns=time.time_ns() + 10**9))
    c.schedule([W1])
    assert not c.check_deadlines()
    eff = c.check_deadlines(time.time_ns() + 2 * 10**9)
    assert eff.statuses[0]["state"] == "FAILED" and "deadline exceeded" in eff.statuses[0]["error"]
    assert eff.dispatch[0][1]["type"] == "stop" and eff.alerts[0]["kind"] == "JOB_TIMEOUT"


def test_chunked_job_spreads_and_combines() -> None:
    c = core()
    c.submit(make_command("SUBMIT", "j", "sleep", {"seconds": 2, "chunks": 2, "memory_mb": 10240}))
    eff = c.schedule([W1, W2])
    assert sorted(d[0] for d in eff.dispatch) == ["w1", "w2"]  # 10 GiB each: one per 16 GiB GPU
    report(c, "j", "SUCCEEDED", 1, chunk=0, result={"slept_s": 1.0, "steps": 10, "tag": "#0"})
    assert c.table["j"]["progress"] == 0.5
    eff = report(c, "j", "SUCCEEDED", 1, chunk=1, worker="w2", result={"slept_s": 1.0, "steps": 10, "tag": "#1"})
    assert json.loads(eff.statuses[-1]["result_json"]) == {"slept_s": 2.0, "steps": 20, "chunks": 2, "tag": ""}


def test_failed_chunk_fails_the_job() -> None:
    c = core()
    c.submit(make_command("SUBMIT", "j", "sleep", {}))
    c.schedule([W1])
    eff = report(c, "j", "FAILED", 1, error="RuntimeError: boom")
    assert eff.statuses[0]["state"] == "FAILED" and eff.statuses[0]["error"] == "RuntimeError: boom"


def test_hub_subscriptions_filter_by_type_symbol_and_job() -> None:
    hub = Hub()
    a, b = hub.connect(), hub.connect()
    a.types, a.job_ids = {"task_status"}, {"j1"}
    b.types, b.symbols = {"market_data", "alert"}, {"AAPL"}
    assert hub.publish("task_status", {}, job_id="j1") == 1 and hub.publish("task_status", {}, job_id="j2") == 0
    assert hub.publish("market_data", {}, symbol="AAPL") == 1 and hub.publish("market_data", {}, symbol="MSFT") == 0
    assert hub.publish("alert", {}) == 1 and hub.wants("market_data") and not hub.wants("calc_result")
    assert a.queue.get_nowait()["job_id"] == "j1"


def test_alert_monitor_is_edge_triggered() -> None:
    mon = AlertMonitor(AlertThresholds(gpu_utilization=0.9, gpu_memory=0.8, dlq_growth=10))
    hot = WorkerInfo("w", ("sleep",), (Device("gpu0", "gpu", "g", 100, 10, 0.97),))
    cool = WorkerInfo("w", ("sleep",), (Device("gpu0", "gpu", "g", 100, 90, 0.1),))
    assert sorted(a["kind"] for a in mon.check_devices([hot])) == ["GPU_MEMORY", "GPU_OVERLOAD"]
    assert mon.check_devices([hot]) == [] and mon.check_devices([cool]) == []
    assert len(mon.check_devices([hot])) == 2
    assert mon.check_dlq({"x.dlq": 5}) == [] and mon.check_dlq({"x.dlq": 9}) == []
    alerts = mon.check_dlq({"x.dlq": 30})
    assert [a["kind"] for a in alerts] == ["DLQ_GROWTH"] and alerts[0]["value"] == 21.0


def test_higher_priority_is_placed_first_and_memory_is_not_over_committed() -> None:
    c = core()
    for jid, prio in (("low", 0), ("high", 10), ("mid", 5)):
        c.submit(make_command("SUBMIT", jid, "sleep", {"memory_mb": 10240}, priority=prio))
    eff = c.schedule([W1])  # one 16 GiB GPU: room for one 10 GiB job
    assert [d[1]["job_id"] for d in eff.dispatch] == ["high"]
    waiting = {s["job_id"]: s["message"] for s in eff.statuses if s["job_id"] != "high"}
    assert all(m.startswith("waiting: no device fits 10240 MiB") for m in waiting.values())
    report(c, "high", "SUCCEEDED", 1, result={"slept_s": 1.0, "steps": 10, "tag": ""})
    assert [d[1]["job_id"] for d in c.schedule([W1]).dispatch] == ["mid"]
