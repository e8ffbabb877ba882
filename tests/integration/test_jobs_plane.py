"""The job control plane end to end against the real broker and Redis: one control app (Faust)
and two CPU workers as subprocesses, shared by the tests of this module."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import websockets

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer
from mystocks_gpu.jobs.protocol import COMMAND_SCHEMA, FINAL, make_command
from mystocks_gpu.jobs.result_cache import ResultStore
from mystocks_gpu.schemas import AvroCodec
from tests.conftest import run_cli
from tests.integration.jobs_plane import Plane, collect, http, states, wait_until

#: the control app's per-client WebSocket queue bound in this module (small: drops are easy to cause)
WS_QUEUE = 50


def strict_loads(frame: str | bytes) -> Any:
    """Parse a WebSocket frame as strict JSON: NaN/Infinity raise, as in a browser's JSON.parse."""
    def bad(const: str) -> Any:
        raise ValueError(f"frame is not JSON: bare {const} in {frame[:200]!r}")
    return json.loads(frame, parse_constant=bad)


def ws_url(plane: Plane) -> str:
    return plane.url.replace("http://", "ws://") + "/ws"


def tick(symbol: str, seq: int, price: float, **over: Any) -> dict[str, Any]:
    """A valid md.ticks record (override fields with ``over``)."""
    return {"symbol": symbol, "ts_event": time.time_ns(), "seq": seq, "kind": "TRADE", "price": price, "size": 10.0,
            "side": 1, "bid": price - 0.01, "ask": price + 0.01, "bid_size": 1.0, "ask_size": 1.0, **over}


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    p = Plane(settings, uuid.uuid4().hex[:8])
    try:
        p.start_control("--ws-queue", str(WS_QUEUE))
        p.start_worker("wa")
        p.start_worker("wb")
        p.warm_up()
        yield p
    finally:
        p.close()


async def _ws_statuses(url: str, job_id: str, submit: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Subscribe to task_status of ``job_id`` over a real WebSocket, call ``submit``, collect to final."""
    out: list[dict[str, Any]] = []
    async with websockets.connect(url.replace("http://", "ws://") + "/ws") as ws:
        hello = strict_loads(await ws.recv())
        assert hello["type"] == "hello" and "task_status" in hello["types"] and hello["queue_max"] == WS_QUEUE
        await ws.send(json.dumps({"action": "subscribe", "types": ["task_status"], "job_ids": [job_id]}))
        ack = strict_loads(await ws.recv())
        assert ack == {"type": "subscribed", "types": ["task_status"], "symbols": [], "job_ids": [job_id],
                       "severities": []}
        await asyncio.get_running_loop().run_in_executor(None, submit)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = strict_loads(await asyncio.wait_for(ws.recv(), timeout=end - time.monotonic()))
            assert msg["type"] == "task_status" and msg["job_id"] == job_id and msg["seq"] == len(out) + 1
            out.append(msg["data"])
            if msg["data"]["state"] in FINAL:
                return out
    raise AssertionError(f"no final status over the WebSocket: {out}")


def _assert_run(seq: list[dict[str, Any]], job_id: str) -> None:
    assert states(seq) == ["queued", "running", "succeeded"], states(seq)
    assert all(s["job_id"] == job_id and s["kind"] == "sleep" for s in seq)
    running = [s["progress"] for s in seq if s["state"] == "running"]
    assert running == sorted(running), running
    assert len({p for p in running if 0 < p < 1}) >= 3, running  # progress rises in steps
    final = seq[-1]
    assert final["progress"] == 1.0 and final["cached"] is False and final["error"] is None
    assert final["result"] == {"slept_s": 1.5, "steps": 6, "chunks": 1, "tag": job_id}
    assert final["worker"] in ("wa/cpu0", "wb/cpu0")


def test_submit_runs_queued_running_succeeded_on_topic_and_websocket(plane: Plane) -> None:
    job_id = f"seq-{uuid.uuid4().hex[:8]}"
    follower = plane.follower()
    try:
        def submit() -> None:
            assert plane.submit("sleep", {"seconds": 1.5, "steps": 6, "tag": job_id}, job_id=job_id) == job_id

        ws_seq = asyncio.run(_ws_statuses(plane.url, job_id, submit))
        topic_seq = collect(follower, job_id)
    finally:
        follower.close()
    _assert_run(topic_seq, job_id)
    _assert_run(ws_seq, job_id)
    assert [s["state"] for s in ws_seq] == [s["state"] for s in topic_seq]
    assert sum(s["state"] == "succeeded" for s in topic_seq) == 1
    job = plane.job(job_id)
    assert job["state"] == "succeeded" and job["chunks"][0]["attempt"] == 1 and job["started_ns"] <= job["finished_ns"]


def test_identical_resubmit_is_served_from_the_cache(plane: Plane) -> None:
    spec = {"message": f"cache {uuid.uuid4().hex}", "payload": {"x": [1, 2]}}
    first = plane.wait(plane.submit("echo", spec), FINAL)
    assert first["state"] == "succeeded" and first["cached"] is False
    follower = plane.follower()
    try:
        t0 = time.monotonic()
        again = plane.submit("echo", {"payload": {"x": [1, 2]}, "message": spec["message"], "memory_mb": 16})
        seq = collect(follower, again, timeout=10)
        took = time.monotonic() - t0
    finally:
        follower.close()
    assert [(s["state"], s["cached"]) for s in seq] == [("succeeded", True)]  # no queued/running: at once
    assert seq[0]["result"] == first["result"] == {"message": spec["message"], "payload": {"x": [1, 2]}}
    assert took < 5
    bypass = plane.wait(plane.submit("echo", spec, bypass_cache=True), FINAL)
    assert bypass["state"] == "succeeded" and bypass["cached"] is False and bypass["chunks"][0]["attempt"] == 1


def test_invalid_command_on_the_topic_is_rejected_with_a_reason(plane: Plane, settings: Settings) -> None:
    follower = plane.follower()
    jobs_before = http("GET", f"{plane.url}/jobs")[1]["count"]
    producer = make_producer(settings.kafka)
    bad = {"bad-spec": make_command("SUBMIT", f"bad-{uuid.uuid4().hex[:6]}", "sleep", {"seconds": "soon"}),
           "bad-kind": make_command("SUBMIT", f"bad-{uuid.uuid4().hex[:6]}", "teleport", {}),
           "bad-json": make_command("SUBMIT", f"bad-{uuid.uuid4().hex[:6]}", "echo", "{not json")}
    for cmd in bad.values():
        producer.produce("cmd.jobs", key=cmd["job_id"].encode(), value=AvroCodec().encode(COMMAND_SCHEMA, cmd))
    producer.flush(10)
    try:
        got = {name: collect(follower, cmd["job_id"], timeout=15) for name, cmd in bad.items()}
    finally:
        follower.close()
    for name, seq in got.items():
        assert [s["state"] for s in seq] == ["rejected"], (name, seq)
    assert got["bad-spec"][0]["error"] == "spec field 'seconds' must be a number, got 'soon'"
    assert got["bad-kind"][0]["error"].startswith("unknown job kind 'teleport'; known kinds:")
    assert got["bad-json"][0]["error"].startswith("spec is not valid JSON")
    job = plane.job(bad["bad-spec"]["job_id"])
    assert job["state"] == "rejected" and job["chunks"] == []
    assert http("GET", f"{plane.url}/jobs")[1]["count"] == jobs_before + 3
    assert not [j for j in http("GET", f"{plane.url}/jobs?state=queued,running")[1]["jobs"]]


def test_malformed_commands_land_in_the_dlq_with_the_stream_headers(plane: Plane, settings: Settings) -> None:
    """Dead letters of the control app carry the stream runtime's header convention."""
    tag = uuid.uuid4().hex[:8]
    producer = make_producer(settings.kafka)
    no_id = make_command("SUBMIT", "placeholder", "echo", {})
    no_id["job_id"] = ""
    offsets: dict[str, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        offsets[msg.key().decode()] = msg.offset()

    producer.produce("cmd.jobs", key=f"garbage-{tag}".encode(), value=b"not avro at all", on_delivery=delivered)
    producer.produce("cmd.jobs", key=f"noid-{tag}".encode(), value=AvroCodec().encode(COMMAND_SCHEMA, no_id),
                     on_delivery=delivered)
    producer.flush(10)
    assert len(offsets) == 2
    letters: dict[str, Any] = {}

    def both_dead_lettered() -> bool:
        for r in read_topic(settings.kafka, "cmd.jobs.dlq", idle_timeout_s=1, decode=False):
            if r.key in offsets:
                letters[r.key] = r
        return len(letters) == 2

    wait_until(both_dead_lettered, 30, "two dead letters on cmd.jobs.dlq")
    for key, cls, msg in ((f"garbage-{tag}", "DecodeError", "bad magic byte 110 (expected 0): not Confluent-framed Avro"), (f"noid-{tag}", "InvalidCommand",
                                                                     "command has an empty job_id")):
        h = letters[key].headers
        assert set(h) == {"mystocks.error.class", "mystocks.error.message", "mystocks.source.topic",
                          "mystocks.source.partition", "mystocks.source.offset", "mystocks.processor"}, h
        assert h["mystocks.error.class"] == cls and (msg is None or h["mystocks.error.message"] == msg)
        assert (h["mystocks.source.topic"], h["mystocks.source.partition"]) == ("cmd.jobs", "0")
        assert h["mystocks.source.offset"] == str(offsets[key]) and h["mystocks.processor"] == f"test-ctl-{plane.ns}"
    assert letters[f"garbage-{tag}"].raw == b"not avro at all"  # the original bytes, untouched


def test_cancel_stops_a_running_job(plane: Plane, settings: Settings) -> None:
    follower = plane.follower()
    job_id = plane.submit("sleep", {"seconds": 60, "steps": 120})
    try:
        running = plane.wait(job_id, {"running"}, timeout=20)
        worker = running["chunks"][0]["worker"]
        status, body = http("DELETE", f"{plane.url}/jobs/{job_id}")
        assert (status, body) == (202, {"job_id": job_id, "cancel": "requested"})
        seq = collect(follower, job_id, timeout=15)
    finally:
        follower.close()
    assert states(seq)[-1] == "cancelled" and seq[-1]["message"].startswith("cancelled by http:")
    assert states(seq) == ["queued", "running", "cancelled"]
    # the worker really stops: its heartbeat stops listing the chunk, and no result is ever written
    wait_until(lambda: not _runs(plane, worker, job_id), 5, f"{worker} stops running {job_id}")
    store = ResultStore(redis.Redis.from_url(settings.redis.url), plane.ns)
    assert store.count(job_id) == 0 and store.runs(job_id, 0) == 1
    assert plane.job(job_id)["state"] == "cancelled"
    assert http("DELETE", f"{plane.url}/jobs/{job_id}")[0] == 409


def _runs(plane: Plane, worker: str, job_id: str) -> bool:
    """True while ``worker``'s heartbeat lists a chunk of ``job_id``."""
    return any(r.startswith(job_id) for r in {w["worker_id"]: w for w in plane.workers()}[worker]["running"])


def test_deadline_fails_the_job_and_raises_an_alert(plane: Plane, settings: Settings) -> None:
    t0 = time.time() * 1000
    job_id = plane.submit("sleep", {"seconds": 60, "steps": 60}, deadline_s=2.0)
    running = plane.wait(job_id, {"running"}, timeout=20)
    final = plane.wait(job_id, FINAL, timeout=20)
    assert final["state"] == "failed" and final["error"].startswith("deadline exceeded by")
    worker = running["chunks"][0]["worker"]
    wait_until(lambda: not _runs(plane, worker, job_id), 5, f"{worker} stops running {job_id}")  # told to stop
    alerts = [r.value for r in read_topic(settings.kafka, "alerts", idle_timeout_s=2)
              if r.value and r.timestamp_ms >= t0 - 1000 and r.value["kind"] == "JOB_TIMEOUT"]
    assert [a["source"] for a in alerts] == [job_id] and alerts[0]["labels"]["kind"] == "sleep"
    _, metrics = http_text(f"{plane.url}/metrics")
    assert 'mystocks_jobs_timeout_total{kind="sleep"}' in metrics


def http_text(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def test_http_endpoints_json_and_clear_4xx(plane: Plane) -> None:
    url = plane.url
    job_id = plane.submit("echo", {"message": "http"}, priority=5, requester="tester", bypass_cache=True)
    job = plane.wait(job_id, FINAL)
    assert {k: job[k] for k in ("job_id", "kind", "state", "priority", "requester", "result", "progress")} == {
        "job_id": job_id, "kind": "echo", "state": "succeeded", "priority": 5, "requester": "tester",
        "result": {"message": "http", "payload": {}}, "progress": 1.0}
    listed = http("GET", f"{url}/jobs?state=succeeded&kind=echo")[1]
    assert job_id in [j["job_id"] for j in listed["jobs"]] and all(j["state"] == "succeeded" for j in listed["jobs"])
    assert listed["count"] == len(listed["jobs"])
    assert http("GET", f"{url}/jobs?state=running")[1]["jobs"] == []
    cases: list[tuple[str, str, Any, bytes | None, int, str]] = [
        ("POST", "/jobs", None, b"not json", 400, "body must be a JSON object"),
        ("POST", "/jobs", [1], None, 400, "body must be a JSON object"),
        ("POST", "/jobs", {"spec": {}}, None, 400, "field 'kind' (string) is required"),
        ("POST", "/jobs", {"kind": "warp"}, None, 400, "unknown job kind 'warp'"),
        ("POST", "/jobs", {"kind": "sleep", "spec": {"steps": -1}}, None, 400, "sleep.steps must be within 1..10000"),
        ("POST", "/jobs", {"kind": "sleep", "spec": []}, None, 400, "field 'spec' must be a JSON object"),
        ("POST", "/jobs", {"kind": "sleep", "priority": "high"}, None, 400, "field 'priority' has the wrong type"),
        ("POST", "/jobs", {"kind": "sleep", "colour": 1}, None, 400, "unknown field(s): colour"),
        ("POST", "/jobs", {"kind": "sleep", "deadline_s": -1}, None, 400, "deadline_s must be > 0"),
        ("POST", "/jobs", {"kind": "echo", "job_id": job_id}, None, 409, f"job {job_id} already exists"),
        ("GET", "/jobs/nope", None, None, 404, "no job 'nope'"),
        ("DELETE", "/jobs/nope", None, None, 404, "no job 'nope'"),
        ("DELETE", f"/jobs/{job_id}", None, None, 409, f"job {job_id} is already succeeded"),
        ("GET", "/jobs?state=done", None, None, 400, "unknown state(s) done"),
        ("GET", "/jobs?limit=0", None, None, 400, "limit must be a positive integer"),
        ("PUT", "/jobs", None, None, 405, "Method Not Allowed"),
        ("GET", "/nothing", None, None, 404, "Not Found"),
    ]
    for method, path, body, raw, code, msg in cases:
        status, payload = http(method, url + path, body, raw)
        assert status == code and msg in payload["error"], (method, path, status, payload)
    workers = http("GET", f"{url}/workers")[1]
    assert workers["count"] == 2 and [w["worker_id"] for w in workers["workers"]] == ["wa", "wb"]
    dev = workers["workers"][0]["devices"][0]
    assert dev["id"] == "cpu0" and dev["kind"] == "cpu" and dev["total_bytes"] > dev["free_bytes"] > 0
    assert set(workers["workers"][0]["kinds"]) >= {"sleep", "echo"}
    health = http("GET", f"{url}/health")[1]
    assert health["ready"] is True and health["workers"] == 2
    _, metrics = http_text(f"{url}/metrics")
    assert 'mystocks_jobs_submitted_total{kind="echo"}' in metrics and "mystocks_workers_alive 2.0" in metrics


def test_websocket_streams_valid_market_data_by_symbol_and_rejects_bad_messages(plane: Plane, settings: Settings) -> None:
    sym = f"T{uuid.uuid4().hex[:5].upper()}"

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(plane)) as ws:
            await ws.recv()
            await ws.send("{nope")
            assert strict_loads(await ws.recv()) == {"type": "error", "error": "messages must be JSON objects"}
            await ws.send(json.dumps({"action": "subscribe", "types": ["quotes"]}))
            assert strict_loads(await ws.recv())["type"] == "error"
            # the ack comes once the feed is positioned at the topic's end: no sleep needed
            await ws.send(json.dumps({"action": "subscribe", "types": ["market_data", "alert"], "symbols": [sym]}))
            assert strict_loads(await ws.recv())["types"] == ["alert", "market_data"]
            producer = make_producer(settings.kafka)
            codec = AvroCodec()
            ticks = [tick(sym, 1, 101.5), tick("OTHER", 2, 1.0),
                     tick(sym, 3, -5.0),  # valid Avro, invalid tick (negative price): never forwarded
                     tick(sym, 4, 100.0, bid=100.5, ask=99.5),  # crossed quote: invalid
                     tick(sym, 5, 102.0)]
            for t in ticks:
                producer.produce("md.ticks", key=t["symbol"].encode(), value=codec.encode("mystocks.md.Tick", t))
            producer.flush(10)
            got: list[dict[str, Any]] = []
            while not got or got[-1]["data"]["seq"] != 5:
                msg = strict_loads(await asyncio.wait_for(ws.recv(), timeout=15))
                if msg["type"] == "market_data":
                    got.append(msg)
            return got

    _, before = http_text(f"{plane.url}/metrics")
    got = asyncio.run(run())
    assert [(m["symbol"], m["data"]["seq"], m["data"]["price"]) for m in got] == [(sym, 1, 101.5), (sym, 5, 102.0)]
    assert [m["seq"] for m in got] == [1, 2]
    _, after = http_text(f"{plane.url}/metrics")
    assert _metric(after, 'mystocks_ws_invalid_records_total{type="market_data"}') - \
        _metric(before, 'mystocks_ws_invalid_records_total{type="market_data"}') == 2


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_calc_result_feed_sends_strict_json_with_nan_as_null(plane: Plane, settings: Settings) -> None:
    sym = f"F{uuid.uuid4().hex[:5].upper()}"
    nan, inf = float("nan"), float("inf")

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(plane)) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "subscribe", "types": ["calc_result"], "symbols": [sym]}))
            assert strict_loads(await ws.recv()) == {"type": "subscribed", "types": ["calc_result"], "symbols": [sym],
                                                     "job_ids": [], "severities": []}
            producer = make_producer(settings.kafka)
            codec = AvroCodec()
            for seq, values in ((1, {"ret_1": nan, "mid": 101.5, "vol_20": nan}),
                                (2, {"ret_1": 0.0025, "mid": 101.75, "vol_20": inf})):
                fv = {"symbol": sym, "ts_event": time.time_ns(), "seq": seq, "ts_ingest": time.time_ns(), "values": values}
                producer.produce("features.ticks", key=sym.encode(),
                                 value=codec.encode("mystocks.features.FeatureVector", fv))
            producer.flush(10)
            got: list[dict[str, Any]] = []
            while len(got) < 2:
                frame = await asyncio.wait_for(ws.recv(), timeout=15)
                assert "NaN" not in frame and "Infinity" not in frame
                got.append(strict_loads(frame))
            return got

    got = asyncio.run(run())
    assert [(m["type"], m["symbol"], m["seq"]) for m in got] == [("calc_result", sym, 1), ("calc_result", sym, 2)]
    assert got[0]["data"]["values"] == {"ret_1": None, "mid": 101.5, "vol_20": None}
    assert got[1]["data"]["values"] == {"ret_1": 0.0025, "mid": 101.75, "vol_20": None}
    assert [m["data"]["seq"] for m in got] == [1, 2]


def test_a_slow_websocket_client_is_told_what_it_lost(plane: Plane, settings: Settings) -> None:
    """A client that does not read while 3000 ticks arrive loses the oldest queued ones; every loss
    is signalled: ``dropped`` notices count them and ``seq`` gaps show where they were."""
    sym = f"S{uuid.uuid4().hex[:5].upper()}"
    n = 3000

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(plane), max_queue=4) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "subscribe", "types": ["market_data"], "symbols": [sym]}))
            assert strict_loads(await ws.recv())["type"] == "subscribed"
            producer = make_producer(settings.kafka)
            codec = AvroCodec()
            for i in range(1, n + 1):  # produced while the client reads nothing
                producer.produce("md.ticks", key=sym.encode(), value=codec.encode("mystocks.md.Tick", tick(sym, i, 100.0)))
                producer.poll(0)
            producer.flush(10)
            frames: list[dict[str, Any]] = []
            # drop-oldest keeps the newest: the last tick always arrives
            while not frames or frames[-1].get("data", {}).get("seq") != n:
                frames.append(strict_loads(await asyncio.wait_for(ws.recv(), timeout=30)))
            return frames

    frames = asyncio.run(run())
    data = [f for f in frames if f["type"] == "market_data"]
    notices = [f for f in frames if f["type"] == "dropped"]
    assert {f["type"] for f in frames} <= {"market_data", "dropped"}
    dropped = sum(x["count"] for x in notices)
    assert dropped > 0 and len(data) + dropped == n  # every tick either delivered or counted as dropped
    assert notices[-1]["dropped_total"] == dropped
    seqs = [f["seq"] for f in data]
    assert seqs == sorted(seqs) and seqs[-1] == n
    assert sum(b - a - 1 for a, b in zip([0, *seqs], seqs, strict=False)) == dropped  # the gaps are the drops
    assert [f["data"]["seq"] for f in data] == seqs  # delivered ticks in order, seq = the i-th tick
    # each notice comes right before the first message after its gap
    for i, f in enumerate(frames):
        if f["type"] == "dropped":
            nxt = frames[i + 1]
            prev = next((g["seq"] for g in reversed(frames[:i]) if g["type"] == "market_data"), 0)
            assert nxt["type"] == "market_data" and nxt["seq"] - prev - 1 >= f["count"] > 0


def test_cli_submit_wait_jobs_job_cancel(plane: Plane, tmp_path: Any) -> None:
    spec = tmp_path / "sleep.json"
    tag = uuid.uuid4().hex[:8]
    spec.write_text(json.dumps({"seconds": 1.0, "steps": 4, "tag": tag}))
    r = run_cli("submit", "sleep", "--spec", str(spec), "--wait", "--timeout", "60", "--namespace", plane.ns, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "succeeded" in r.stdout and f'"tag": "{tag}"' in r.stdout and "slept_s" in r.stdout
    job_id = r.stdout.split()[1].rstrip(":")
    r = run_cli("job", job_id, "--url", plane.url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "succeeded"
    r = run_cli("jobs", "--state", "succeeded", "--url", plane.url)
    assert r.returncode == 0 and job_id in r.stdout
    r = run_cli("submit", "sleep", "--spec", str(spec), "--wait", "--json", "--namespace", plane.ns, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["cached"] is True
    r = run_cli("cancel", job_id, "--url", plane.url)
    assert r.returncode == 2 and "is already succeeded" in r.stderr
    r = run_cli("submit", "sleep", "--spec", '{"seconds": "x"}')
    assert r.returncode == 2 and "spec field 'seconds' must be a number" in r.stderr
    r = run_cli("job", "nope", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "no control app at" in r.stderr
