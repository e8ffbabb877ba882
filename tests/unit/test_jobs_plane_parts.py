"""Job-plane parts without a broker: strict JSON and drop signalling of the WebSocket hub, its
thread safety, rejection of jobs no device can ever hold, the Redis retry policy on the injected
clock, and removal of a lost worker's gauges."""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.clock import ManualClock
from mystocks_gpu.infra.devices import Device
from mystocks_gpu.jobs.alerts import AlertMonitor
from mystocks_gpu.jobs.control_state import ControlCore
from mystocks_gpu.jobs.exceptions import RedisUnavailable
from mystocks_gpu.jobs.job_worker import RETRY_FIRST_S, RETRY_MAX_S, retry_redis
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.protocol import make_command
from mystocks_gpu.jobs.scheduler import ChunkRequest, SchedulerConfig, WorkerInfo, never_fits
from mystocks_gpu.jobs.ws_hub import Hub, dumps

GIB = 1 << 30
MIB = 1 << 20


def strict_loads(text: str) -> Any:
    """``json.loads`` that fails on NaN/Infinity, as a browser's ``JSON.parse`` does."""
    def bad(const: str) -> Any:
        raise ValueError(f"non-JSON constant {const}")
    return json.loads(text, parse_constant=bad)


# ---- WebSocket hub ---------------------------------------------------------------------------
def test_frames_are_strict_json_with_non_finite_numbers_as_null() -> None:
    msg = {"type": "calc_result", "data": {"values": {"ret_1": float("nan"), "vol": float("inf"), "z": -math.inf,
                                                       "mid": 101.25}, "seq": 7, "list": [1.0, float("nan")]}}
    assert "NaN" in json.dumps(msg)  # what the old code sent
    assert strict_loads(dumps(msg)) == {"type": "calc_result", "data": {
        "values": {"ret_1": None, "vol": None, "z": None, "mid": 101.25}, "seq": 7, "list": [1.0, None]}}


def test_slow_client_drops_oldest_with_seq_gaps_and_a_dropped_notice() -> None:
    hub = Hub(ManualClock(), queue_max=3)
    c = hub.connect()
    hub.subscribe(c, ["market_data"], ["AAPL"], [])
    for i in range(10):
        assert hub.publish("market_data", {"i": i}, symbol="AAPL") == 1
    got = [c.queue.get_nowait() for _ in range(c.queue.qsize())]
    # the 3 newest survive; 7 dropped, and seq numbers show the gap
    assert [(m["seq"], m["data"]["i"]) for m in got] == [(8, 7), (9, 8), (10, 9)]
    assert c.drop_notice() == {"type": "dropped", "count": 7, "dropped_total": 7}
    assert c.drop_notice() is None
    hub.publish("market_data", {"i": 10}, symbol="AAPL")
    assert c.queue.get_nowait()["seq"] == 11 and c.drop_notice() is None


def test_queue_bound_setting_reaches_the_hub() -> None:
    assert Hub(queue_max=7).connect().queue.maxsize == 7
    with pytest.raises(ConfigError, match="ws_queue_max"):
        JobsConfig(ws_queue_max=0)


def test_wants_is_safe_while_clients_come_and_go_on_another_thread() -> None:
    """The feed thread calls ``wants`` while the event loop connects and disconnects clients; the
    old hub iterated its dict unguarded ("dictionary changed size during iteration")."""
    hub = Hub()
    for _ in range(2000):
        hub.connect().types = {"task_status"}
    errors: list[BaseException] = []
    stop = threading.Event()
    calls = [0]

    def feed() -> None:
        try:
            while not stop.is_set():
                hub.wants("market_data")
                calls[0] += 1
        except BaseException as exc:  # noqa: BLE001 - any error fails the test
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=feed)
    t.start()
    try:
        for _ in range(20_000):
            hub.disconnect(hub.connect())
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert errors == [] and calls[0] > 0


# ---- jobs that no device can ever hold -------------------------------------------------------
def _gpu(i: int, total_gib: float, reserved: str | None = None) -> Device:
    return Device(f"gpu{i}", "gpu", "fake", int(total_gib * GIB), int(total_gib * GIB), 0.1, reserved)


def test_never_fits_judges_only_what_waiting_cannot_change() -> None:
    cfg = SchedulerConfig(memory_headroom=0.1)
    w = WorkerInfo("w", ("sleep",), (_gpu(0, 16), _gpu(1, 80, reserved="rt")))
    big = ChunkRequest("j", 0, "sleep", 20 * GIB)
    why = never_fits(big, [w], cfg)
    assert why is not None and "can ever fit a chunk of 20480 MiB" in why
    assert "reserved for real-time rt 1" in why and "too small 1" in why
    assert f"largest usable device has {int(16 * GIB * 0.9) / MIB:.0f} MiB" in why
    assert never_fits(ChunkRequest("j", 0, "sleep", 14 * GIB), [w], cfg) is None  # fits 16 GiB * 0.9
    busy = WorkerInfo("w", ("sleep",), (Device("gpu0", "gpu", "fake", 16 * GIB, 0, 1.0),))
    assert never_fits(ChunkRequest("j", 0, "sleep", 14 * GIB), [busy], cfg) is None  # full now, fits later
    assert never_fits(big, [], cfg) is None  # no worker yet: keep waiting
    assert never_fits(big, [WorkerInfo("x", ("echo",), (_gpu(0, 1),))], cfg) is None  # none serves the kind
    cpu_only = WorkerInfo("c", ("sleep",), (Device("cpu0", "cpu", "cpu", 64 * GIB, 64 * GIB),))
    assert "not a gpu device 1" in (never_fits(ChunkRequest("j", 0, "sleep", GIB, devices="gpu"), [cpu_only]) or "")
    assert "real-time needs a GPU 1" in (never_fits(ChunkRequest("j", 0, "sleep", GIB, "realtime"), [cpu_only]) or "")


def test_a_job_no_live_worker_can_ever_hold_is_rejected_after_the_grace() -> None:
    clock = ManualClock()
    c = ControlCore({}, SchedulerConfig(0.0, 4), clock, reject_unfit_after_s=10.0)
    c.reindex()
    w = WorkerInfo("w1", ("sleep",), (_gpu(0, 16),))
    assert [s["state"] for s in c.submit(make_command("SUBMIT", "big", "sleep", {"memory_mb": 20480})).statuses] == \
        ["QUEUED"]
    assert [s["message"] for s in c.schedule([]).statuses] == ["waiting: no live worker"]  # it just waits
    clock.advance(60)
    eff = c.schedule([w])  # a worker that can never hold it: the grace starts, the message says why
    assert [s["state"] for s in eff.statuses] == ["QUEUED"] and eff.dispatch == []
    assert c.table["big"]["message"].startswith("waiting: no device of the 1 live worker(s) serving sleep can ever "
                                                "fit a chunk of 20480 MiB (1 device(s): too small 1)")
    assert c.table["big"]["message"].endswith("(rejected after 10 s unless a worker that can hold it joins)")
    clock.advance(9.9)
    assert c.schedule([w]).statuses == []  # unchanged, nothing published again
    clock.advance(0.1)
    eff = c.schedule([w])
    assert [(s["state"], s["message"]) for s in eff.statuses] == [("REJECTED", "rejected")]
    assert c.table["big"]["error"].startswith("no device of the 1 live worker(s) serving sleep can ever fit")
    assert "big" not in c.active
    # a bigger worker joining within the grace saves the job
    c.submit(make_command("SUBMIT", "big2", "sleep", {"memory_mb": 20480}))
    c.schedule([w])
    clock.advance(5)
    eff = c.schedule([w, WorkerInfo("w2", ("sleep",), (_gpu(0, 40),))])
    assert [d[0] for d in eff.dispatch] == ["w2"] and c.table["big2"]["chunks"][0]["state"] == "dispatched"
    with pytest.raises(ConfigError, match="reject_unfit_after_s"):
        JobsConfig(reject_unfit_after_s=-1)


# ---- Redis retry policy ----------------------------------------------------------------------
def test_redis_retry_backs_off_on_the_clock_and_gives_up_after_the_bound() -> None:
    clock = ManualClock()
    t0 = clock.monotonic()
    calls: list[float] = []

    def down() -> None:
        calls.append(clock.monotonic() - t0)
        raise redis.ConnectionError("Connection refused")

    retries: list[int] = []
    with pytest.raises(RedisUnavailable, match=r"Redis store failed for 10\.0 s: Connection refused"):
        retry_redis("store", down, clock, 10.0, on_retry=lambda: retries.append(1))
    gaps = [round(b - a, 6) for a, b in zip(calls, calls[1:], strict=False)]
    want = [RETRY_FIRST_S * 2**i for i in range(5)]  # 0.1 0.2 0.4 0.8 1.6, then capped
    assert gaps[:5] == pytest.approx(want) and max(gaps) == pytest.approx(RETRY_MAX_S)
    assert calls[-1] == pytest.approx(10.0) and len(retries) == len(calls) - 1


def test_redis_retry_returns_once_redis_answers_and_stops_early_when_asked() -> None:
    clock = ManualClock()
    n = [0]

    def flaky() -> str:
        n[0] += 1
        if n[0] < 4:
            raise redis.TimeoutError("Timeout reading from socket")
        return "OK"

    first: list[int] = []
    assert retry_redis("start", flaky, clock, 300.0, on_first_failure=lambda: first.append(1)) == "OK"
    assert n[0] == 4 and first == [1]
    def refused() -> None:
        raise redis.ConnectionError("Connection refused")

    with pytest.raises(RedisUnavailable, match="Redis start failed for 0.0 s"):
        retry_redis("start", refused, clock, 300.0, should_stop=lambda: True)
    with pytest.raises(ConfigError, match="redis_retry_s"):
        JobsConfig(redis_retry_s=-1)


# ---- gauges of lost workers ------------------------------------------------------------------
def test_gauges_of_a_lost_worker_are_removed() -> None:
    mon = AlertMonitor()
    a = WorkerInfo("gone-w", ("sleep",), (Device("gpu0", "gpu", "g", 100, 1, 0.99),))
    b = WorkerInfo("kept-w", ("sleep",), (Device("gpu0", "gpu", "g", 100, 90, 0.1),))
    assert {x["kind"] for x in mon.check_devices([a, b])} == {"GPU_OVERLOAD", "GPU_MEMORY"}

    def series(worker: str) -> list[str]:
        return [s.name for metric in REGISTRY.collect() for s in metric.samples
                if s.labels.get("worker") == worker and s.name.startswith(("mystocks_device", "mystocks_gpu"))]

    assert len(series("gone-w")) == 4 and len(series("kept-w")) == 4
    mon.forget_workers({"gone-w"})
    assert series("gone-w") == [] and len(series("kept-w")) == 4
    # it comes back hot: a new edge, so a new alert
    assert {x["kind"] for x in mon.check_devices([a])} == {"GPU_OVERLOAD", "GPU_MEMORY"}
