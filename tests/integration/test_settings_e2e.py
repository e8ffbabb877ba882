"""Settings that take effect end to end on the real broker and Redis: a Schema Registry's ids through
`mystocks-gpu run` and the CLI, the granted device and the backend inside a job worker, and the
`[jobs]` section through the control app, a worker and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from confluent_kafka import TopicPartition

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings, load_settings
from mystocks_gpu.infra.devices import parse_fake_inventory
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer
from mystocks_gpu.jobs.builtin_kinds import EchoSpec
from mystocks_gpu.jobs.heartbeat import read_workers
from mystocks_gpu.jobs.job_worker import JobWorker, WorkerOptions
from mystocks_gpu.jobs.kinds import register_kind
from mystocks_gpu.jobs.protocol import STATUS_SCHEMA
from mystocks_gpu.jobs.scheduler import ChunkRequest, place
from mystocks_gpu.processors.job_kind import RunContext, current_run
from mystocks_gpu.schemas import AvroCodec, SchemaStore, schema_store
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.schema_store import read_manifest
from tests.conftest import ROOT, run_cli
from tests.integration.jobs_plane import free_port, http
from tests.integration.stream_helpers import (
    finish,
    make_topics,
    read_finished,
    reference,
    start_worker,
    synthetic,
)
from tests.registry_server import serve_registry


@pytest.fixture()
def registry() -> Iterator[str]:
    with serve_registry() as (url, _):
        yield url


def _frame_ids(values: list[bytes | None]) -> set[int]:
    return {int.from_bytes(v[1:5], "big") for v in values if v is not None}


# ---- schema_registry.* ----------------------------------------------------------------------------------
def test_run_aggregate_decodes_and_encodes_with_registry_ids(settings: Settings, registry: str, unique: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MYSTOCKS_SCHEMA_REGISTRY__URL": registry, "MYSTOCKS_SCHEMA_REGISTRY__REGISTER": "true"}
    store = schema_store(load_settings(environ={**{k: v for k, v in os.environ.items() if k.startswith("MYSTOCKS_")}, **env}))
    manifest = {e["name"]: e["id"] for e in read_manifest()["schemas"]}
    tick_id, agg_id = store.by_name("Tick").id, store.by_name("RunningAggregate").id
    assert tick_id != manifest["mystocks.md.Tick"] and agg_id != manifest["mystocks.streams.RunningAggregate"]

    t = make_topics(settings, unique, partitions=2)
    cols, names = synthetic(3_000, symbols=16, seed=5)
    values = BatchEncoder("mystocks.md.Tick", store).encode(cols, names)  # framed with the registry's Tick id
    assert _frame_ids(values) == {tick_id}
    p = make_producer(settings.kafka)
    for k, v, ts in zip([names[i].encode() for i in cols["sym"].tolist()], values, (cols["ts"] // 10**6).tolist(),
                        strict=True):
        p.produce(t.input, v, k, timestamp=ts)
    assert p.flush(30) == 0

    for k, v in env.items():  # the worker subprocess reads the registry from its environment
        monkeypatch.setenv(k, v)
    out = finish(start_worker(t, "reg-1", idle_exit=5.0))
    assert json.loads(out.strip().splitlines()[-1])["dlq"] == 0  # every registry-framed tick understood

    raw = list(read_finished(settings.kafka, t.output, decode=False))
    assert len(raw) == 3_000 and _frame_ids([r.raw for r in raw]) == {agg_id}  # outputs carry registry ids
    codec = AvroCodec(store)
    got = pd.DataFrame([codec.decode(r.raw) for r in raw])
    ref = reference(cols, names)
    a = got.set_index(["symbol", "seq"])[["count", "sum", "last"]].sort_index()
    b = ref.set_index(["symbol", "seq"])[["count", "sum", "last"]].sort_index()
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_dtype=False)


def test_cli_load_and_consume_use_the_registry(settings: Settings, registry: str, tmp_path: Path) -> None:
    env = {"MYSTOCKS_SCHEMA_REGISTRY__URL": registry, "MYSTOCKS_SCHEMA_REGISTRY__REGISTER": "true"}
    sym = f"REG{uuid.uuid4().hex[:6].upper()}"
    f = tmp_path / "bars.csv"
    f.write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,12,10,11.5,200\n")
    r = run_cli("load", str(f), "--topic", "md.bars.1d", "--symbol", sym, env=env)
    assert r.returncode == 0 and "loaded 2 records" in r.stdout, r.stderr
    r = run_cli("consume", "md.bars.1d", "--from-beginning", "--json", "--timeout", "5", env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    mine = [json.loads(ln) for ln in r.stdout.splitlines() if f'"{sym}"' in ln]
    assert [(m["value"]["close"], m["value"]["volume"]) for m in mine] == [(10.5, 100.0), (11.5, 200.0)]
    # read with the manifest instead, the same records name an id the manifest never gave
    bar_id = SchemaStore(load_settings(environ=env).schema_registry).by_name("Bar").id
    errs = [rec.error for rec in read_topic(settings.kafka, "md.bars.1d", idle_timeout_s=5, codec=AvroCodec(SchemaStore()))
            if rec.key == sym]
    assert errs and all(f"unknown schema id {bar_id}" in (e or "") for e in errs)


# ---- the granted device and the backend inside a job worker --------------------------------------------
SEEN: dict[str, RunContext] = {}


def _whereami(spec: EchoSpec, progress: Any, should_stop: Any) -> dict[str, Any]:
    ctx = current_run()
    assert ctx is not None
    SEEN[spec.message] = ctx
    return {"device": ctx.device_id, "cuda_device": ctx.cuda_device, "backend": ctx.backend}


def test_worker_runs_each_chunk_on_the_device_the_scheduler_granted(settings: Settings, tmp_path: Path) -> None:
    """A fake inventory where gpu0 is nearly full: the scheduler grants gpu1; the runner sees gpu1
    (ordinal 1), computes on the backend of the settings (cpu here: ``backend = "cpu"`` in the file)
    and gets the process's schema store."""
    register_kind("whereami", EchoSpec, _whereami, description="test kind: report the run context", replace=True)
    f = tmp_path / "w.toml"
    f.write_text(f'backend = "cpu"\n[jobs]\nnamespace = "tw{uuid.uuid4().hex[:6]}"\n')
    s = load_settings(f, environ={k: v for k, v in os.environ.items()
                                  if k.startswith("MYSTOCKS_") and k != "MYSTOCKS_BACKEND"})
    fake = tuple(parse_fake_inventory('[{"id": "gpu0", "total_mb": 16384, "free_mb": 10}, '
                                      '{"id": "gpu1", "total_mb": 16384, "free_mb": 16000}]'))
    worker = JobWorker(s, s.jobs, WorkerOptions(f"wd-{uuid.uuid4().hex[:6]}", ("whereami",), fake))
    th = threading.Thread(target=worker.run, daemon=True)
    th.start()
    events = make_consumer(s.kafka, f"t-events-{uuid.uuid4().hex[:6]}", **{"isolation.level": "read_uncommitted"})
    try:
        r = redis.Redis.from_url(s.redis.url)
        deadline = time.monotonic() + 60
        while not read_workers(r, s.jobs.namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
        (info,) = read_workers(r, s.jobs.namespace)
        parts = events.list_topics(s.jobs.events_topic, timeout=10).topics[s.jobs.events_topic].partitions
        events.assign([TopicPartition(s.jobs.events_topic, q, events.get_watermark_offsets(
            TopicPartition(s.jobs.events_topic, q), timeout=10)[1]) for q in parts])  # from now on
        plan = place([ChunkRequest("job-dev", 0, "whereami", 64 << 20)], [info])
        (pl,) = plan.placements
        assert (pl.worker_id, pl.device_id) == (worker.opts.worker_id, "gpu1")
        job_id = f"job-dev-{uuid.uuid4().hex[:6]}"
        p = make_producer(s.kafka)
        p.produce(worker.topic, json.dumps({"type": "run", "job_id": job_id, "chunk": 0, "attempt": 1,
                                            "device": pl.device_id, "memory_bytes": pl.memory_bytes, "kind": "whereami",
                                            "spec": {"message": job_id}}).encode(), job_id.encode())
        assert p.flush(10) == 0
        codec = AvroCodec(schema_store(s))
        final: dict[str, Any] = {}
        while time.monotonic() < deadline and final.get("state") not in ("SUCCEEDED", "FAILED"):
            for m in events.consume(100, timeout=0.2):
                if m.error() is None and m.key() == job_id.encode():
                    final = codec.decode(m.value(), expect=STATUS_SCHEMA)
        assert final.get("state") == "SUCCEEDED", final
        assert json.loads(final["result_json"]) == {"device": "gpu1", "cuda_device": 1, "backend": "cpu"}
        ctx = SEEN[job_id]
        assert ctx.settings is s and ctx.store is schema_store(s) and ctx.chunk == 0
    finally:
        worker.stop()
        th.join(30)
        events.close()


# ---- [jobs] through the CLI ---------------------------------------------------------------------------
def test_jobs_section_reaches_control_app_worker_and_cli(settings: Settings, tmp_path: Path) -> None:
    ns = f"tj{uuid.uuid4().hex[:6]}"
    port = free_port()
    f = tmp_path / "jobs.toml"
    f.write_text(f'[jobs]\nnamespace = "{ns}"\nweb_port = {port}\napp_id = "ctl-{ns}"\nheartbeat_interval_s = 0.5\n'
                 'heartbeat_ttl_s = 3.0\ntick_interval_s = 0.25\nmax_chunks_per_device = 1\n')
    procs = []
    try:
        for args in (("control",), ("worker", "--id", f"w-{ns}", "--kinds", "echo")):
            procs.append(subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", "--config", str(f), *args], cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"  # web_port from the file
        deadline = time.monotonic() + 90
        health: dict[str, Any] = {}
        workers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                health = http("GET", f"{url}/health")[1]
                workers = http("GET", f"{url}/workers")[1]["workers"]
                if health.get("ready") and workers:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert health["app_id"] == f"ctl-{ns}" and [w["worker_id"] for w in workers] == [f"w-{ns}"]
        r = redis.Redis.from_url(settings.redis.url)
        assert r.pttl(f"{ns}:worker:w-{ns}") <= 3000  # the namespace and the heartbeat TTL of the file
        r2 = run_cli("--config", str(f), "submit", "echo", "--spec", '{"message": "hi"}', "--wait", "--timeout", "60",
                     "--json", timeout=90)
        assert r2.returncode == 0, r2.stderr
        job_id = json.loads(r2.stdout.splitlines()[-1])["job_id"]
        r3 = run_cli("--config", str(f), "job", job_id, "--json")  # no --url: the [jobs] web address
        assert r3.returncode == 0 and json.loads(r3.stdout)["result"] == {"message": "hi", "payload": {}}, r3.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
