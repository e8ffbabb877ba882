"""Operating the pipeline, on the real servers of the local stack (`stack up --with connect,prometheus`):

- Connect sinks: a backtest job's results (results.backtest) become rows of PostgreSQL table
  ``results_backtest`` equal to the topic records (decoded here by the Python codec, an
  implementation independent of the Java converter); the Connect worker SIGKILLed mid-stream and
  restarted re-delivers the records after its last committed offset, and the upsert leaves exactly
  one row per key, every record present. The sink's throughput (rows/s) is printed.
- Prometheus: a real server scrapes a stream worker, the control app and a job worker (fake GPU
  inventory) every second for the whole module (more than 30 s: the scrape runs while the Connect
  tests do); its HTTP API gives records counted == records produced, consumer lag back to 0, the
  GPU gauges of the inventory, finished jobs and a cache hit; every query of the Grafana dashboard
  returns data; the alert rules are loaded and evaluate.

The servers start once for the module (and stop after it): the Connect JVM is spawned first and
comes up while Prometheus, the job plane and the stream worker start; nothing here is skipped: a
server that cannot start fails the tests with its reason.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.connect_client import ConnectClient
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.infra.stack_connect import ConnectWorker
from mystocks_gpu.infra.stack_postgres import PostgresServer
from mystocks_gpu.infra.stack_prometheus import PrometheusServer
from mystocks_gpu.schemas import AvroCodec, schema_store
from tests.conftest import ROOT, run_cli, wait_until
from tests.integration.jobs_plane import Plane, free_port
from tests.integration.stream_helpers import (
    Topics,
    committed_total,
    make_topics,
    produce_ticks,
    synthetic,
)

DAY = 86_400 * 10**9
SINK = "results-backtest"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mystocks-gpu.json"
FAKE_GPUS = [{"id": "gpu0", "kind": "gpu", "name": "FakeH200", "total_mb": 16384, "free_mb": 12288,
              "utilization": 0.42, "temperature_c": 57}]


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    """Control app + one job worker (a fake GPU, metrics served)."""
    p = Plane(settings, uuid.uuid4().hex[:8])
    p.worker_metrics = free_port()  # type: ignore[attr-defined]
    try:
        # no worker-loss test here: a 20 s heartbeat TTL (the last flag wins) keeps a chunk on its worker
        # while a loaded 2-core box stalls it (a 3 s TTL re-queued the chunk again and again)
        p.start_control("--heartbeat-ttl", "20", timeout=180)  # starts take long under load
        p.start_worker("ops", "--heartbeat-ttl", "20", "--kinds", "backtest,echo", "--fake-devices", json.dumps(FAKE_GPUS),
                       "--metrics-port", str(p.worker_metrics), timeout=180)  # type: ignore[attr-defined]
        p.warm_up()
        yield p
    finally:
        p.close()


@dataclass
class Scrape:
    """What Prometheus scrapes for the module: a stream worker (``run aggregate``) on topics of
    its own, with the control app and the job worker; ``t0`` = when scraping began."""

    topics: Topics
    instance: str
    worker: subprocess.Popen[bytes]
    log: Path
    t0: float
    produced: int = 0
    waves: list[dict[str, np.ndarray]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _stream_worker(t: Topics, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``mystocks-gpu run aggregate`` with ``/metrics`` on ``port``, output to ``log`` (a pipe
    nobody reads would fill up over the module and block the worker)."""
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "--log-level", "INFO", "run", "aggregate", "--group", t.group,
           "--worker-id", "w0", "--input-topic", t.input, "--output-topic", t.output, "--idle-exit", "1800",
           "--metrics-port", str(port)]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ})


@pytest.fixture(scope="module", autouse=True)
def scrape(connect_spawned: ConnectWorker, prometheus: PrometheusServer, plane: Plane, settings: Settings,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """Every test of the module runs under the scrape (requested in this order: the Connect JVM
    spawned first, then Prometheus, the job plane, the stream worker); the first wave of ticks is
    produced at once, the others by the Prometheus test."""
    tag = uuid.uuid4().hex[:10]
    t = make_topics(settings, tag, partitions=2)
    port = free_port()
    log = tmp_path_factory.mktemp("scrape") / "stream-worker.log"
    worker = _stream_worker(t, port, log)
    try:
        inst = f"127.0.0.1:{port}"
        prometheus.add_targets(f"ops-{tag}", [inst, f"127.0.0.1:{plane.port}", f"127.0.0.1:{plane.worker_metrics}"],  # type: ignore[attr-defined]
                               {"test": tag})
        wait_until(lambda: (worker.poll() is None or pytest.fail(log.read_text()[-3000:]))
                   and _value(prometheus, f'up{{instance="{inst}"}}') == 1, 120, "the stream worker scraped")
        cols, names = synthetic(9000, symbols=32, seed=3)
        sc = Scrape(t, inst, worker, log, time.monotonic(), names=names,
                    waves=[{k: v[w * 3000:(w + 1) * 3000] for k, v in cols.items()} for w in range(3)])
        sc.produced += produce_ticks(settings, t.input, sc.waves[0], names)
        yield sc
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory, stack: Any) -> pd.DataFrame:
    """Daily bars of 4 symbols over 250 sessions, loaded into md.bars.1d with the CLI."""
    rng = np.random.default_rng(7)
    tag = uuid.uuid4().hex[:5].upper()
    days = pd.bdate_range("2022-01-03", periods=250, tz="UTC")
    frames = []
    for k in range(4):
        close = 40 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, days.size)))
        frames.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "ticker": f"OPS{tag}{k}", "open": close.round(4),
                                    "high": (close * 1.01).round(4), "low": (close * 0.99).round(4),
                                    "close": close.round(4), "volume": rng.integers(1e5, 1e6, days.size)}))
    df = pd.concat(frames, ignore_index=True)
    f = tmp_path_factory.mktemp("bars") / "daily.csv"
    df.to_csv(f, index=False)
    r = run_cli("load", str(f), "--topic", "md.bars.1d", timeout=300)
    assert r.returncode == 0, r.stderr
    df["ts"] = pd.to_datetime(df["date"], utc=True).dt.as_unit("ns").astype("int64")
    df["symbol"] = df["ticker"]
    return df


def _spec(bars: pd.DataFrame, fast: list[int]) -> dict[str, Any]:
    return {"universe": sorted(bars["symbol"].unique()), "start": int(bars["ts"].min()), "end": int(bars["ts"].max()) + DAY,
            "strategy": "ma_cross", "params": {"fast": fast, "slow": [30, 60]}, "top_n": 3, "n_curves": 2}


def _finite(obj: Any) -> Any:
    """NaN/inf -> None (the converter writes non-finite doubles as JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _rows(pg: PostgresServer, where: str) -> dict[tuple[str, int, int], dict[str, Any]]:
    if not pg.table_exists("results_backtest"):
        return {}
    got = pg.query(f"SELECT * FROM results_backtest WHERE {where}")
    return {(r["job_id"], r["chunk_index"], r["part"]): r for r in got}


def _assert_row_equals_record(row: dict[str, Any], value: dict[str, Any]) -> None:
    assert row["ts_event"] == value["ts_event"] and row["chunk_count"] == value["chunk_count"]
    assert json.loads(row["rows"]) == _finite(value["rows"])
    assert json.loads(row["curves"]) == _finite(value["curves"])


def _sink(settings: Settings) -> ConnectClient:
    client = ConnectClient.from_settings(settings)
    r = run_cli("connect", "create", SINK)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: run_cli("connect", "status", SINK).returncode == 0, 90, f"{SINK} connector and task RUNNING")
    return client


def test_backtest_results_become_postgres_rows_equal_to_the_topic_records(
        plane: Plane, bars: pd.DataFrame, settings: Settings, connect_worker: ConnectWorker,
        postgres: PostgresServer) -> None:
    _sink(settings)
    job_id = plane.submit("backtest", _spec(bars, [5, 10, 20]), bypass_cache=True)
    assert plane.wait(job_id, {"succeeded", "failed"}, timeout=600)["state"] == "succeeded"  # cold numba: minutes
    records = {(r.key, r.value["chunk_index"], int(r.headers.get("mystocks.part", "0"))): r.value
               for r in read_topic(settings.kafka, "results.backtest", idle_timeout_s=5)
               if r.key == job_id and r.value is not None}
    assert records and sum(len(v["rows"]) for v in records.values()) == 4 * 3 * 2
    rows = wait_until(lambda: (got := _rows(postgres, f"job_id = '{job_id}'")) and len(got) >= len(records) and got,
                      120, f"{len(records)} rows of {job_id} in PostgreSQL")
    assert set(rows) == set(records)
    for key, value in records.items():
        _assert_row_equals_record(rows[key], value)


def _end_offset(settings: Settings) -> int:
    c = Consumer(settings.kafka.client_config(**{"group.id": f"probe-{uuid.uuid4().hex[:6]}"}))
    try:
        return int(c.get_watermark_offsets(TopicPartition("results.backtest", 0), timeout=10)[1])
    finally:
        c.close()


def test_connect_worker_killed_mid_stream_leaves_one_row_per_key(
        settings: Settings, connect_worker: ConnectWorker, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    client = _sink(settings)
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    n, codec = 20_000, AvroCodec(schema_store(settings))
    now = time.time_ns()
    values = {}
    items = []
    for i in range(n):
        key = (f"{tag}-{i // 50}", i % 50 // 2, i % 2)  # (job id, chunk, part): 2 parts per chunk
        v = {"job_id": key[0], "ts_event": now + i, "chunk_index": key[1], "chunk_count": 25,
             "rows": [{"symbol": f"S{i % 97}", "params": {"fast": float(i % 7), "slow": 30.0}, "total_return": i / n,
                       "cagr": 0.01 * (i % 13), "ann_volatility": 0.2, "sharpe": float("nan") if i % 11 == 0 else i / 1000,
                       "sortino": 1.5, "max_drawdown": -0.1, "max_drawdown_duration": i % 40, "win_rate": 0.5,
                       "n_trades": i % 9, "exposure": 0.3, "fees_paid": 0.25}], "curves": []}
        values[key] = v
        items.append((key[0].encode(), codec.encode("mystocks.backtest.BacktestResult", v), now // 1_000_000 + i // 1000,
                      [("mystocks.part", str(key[2]).encode())]))
    client.request("PUT", f"/connectors/{SINK}/pause")
    wait_until(lambda: client.status(SINK)["connector"]["state"] == "PAUSED", 30, "connector paused")
    base = _end_offset(settings)
    produce_all(make_producer(settings.kafka), "results.backtest", iter(items))
    where = f"job_id LIKE '{tag}-%'"

    def count() -> int:
        if not postgres.table_exists("results_backtest"):
            return 0
        return int(postgres.query(f"SELECT count(*) AS n FROM results_backtest WHERE {where}")[0]["n"])

    t0 = time.monotonic()
    client.request("PUT", f"/connectors/{SINK}/resume")
    first = wait_until(lambda: (c := count()) >= n // 5 and c, 180, "a fifth of the rows written", every_s=0.05)
    rate = first / (time.monotonic() - t0)
    group = f"connect-{SINK}"
    for _attempt in range(3):  # kill while rows are written past the committed offset (commits come every 1 s)
        wait_until(lambda: (w := count()) - (committed_total(settings, group, "results.backtest", 1) - base) >= 50 and w < n * 0.9, 120,
                   "rows written past the committed offset", every_s=0.02)
        connect_worker.stop(hard=True)  # SIGKILL: no offset commit, no clean shutdown
        written, committed = count(), committed_total(settings, group, "results.backtest", 1) - base
        if committed < written < n:
            break
        connect_worker.start()  # a commit slipped in before the kill: try again
    assert committed < written < n, (committed, written)  # the rows past the committed offset come again
    connect_worker.start()
    rows = wait_until(lambda: (got := _rows(postgres, where)) and len(got) == n and got, 240, f"all {n} rows after restart")
    assert set(rows) == set(values)  # exactly one row per key, none missing
    for key, value in values.items():
        _assert_row_equals_record(rows[key], value)
    assert client.status(SINK)["tasks"][0]["state"] == "RUNNING"
    with capsys.disabled():
        print(f"\nJDBC sink: {first} rows in {first / rate:.1f} s = {rate:.0f} rows/s; killed with "
              f"{written - committed} rows past the committed offset (re-delivered, upserted)")


# ---- Prometheus -----------------------------------------------------------------------------

def _value(prom: PrometheusServer, q: str) -> float | None:
    res = prom.query(q)
    return float(res[0]["value"][1]) if res else None


def test_prometheus_scrapes_the_running_pipeline(
        scrape: Scrape, plane: Plane, bars: pd.DataFrame, settings: Settings, prometheus: PrometheusServer) -> None:
    inst = scrape.instance
    assert scrape.worker.poll() is None, scrape.log.read_text()[-3000:]
    scrape.produced += produce_ticks(settings, scrape.topics.input, scrape.waves[1], scrape.names)
    # the spec of the Connect test's job: from the result cache when that test ran (its result was
    # stored), computed otherwise; the second submission is a cache hit either way
    spec = _spec(bars, [5, 10, 20])
    first = plane.submit("backtest", spec)
    assert plane.wait(first, {"succeeded", "failed"}, timeout=600)["state"] == "succeeded"
    again = plane.submit("backtest", spec)
    assert plane.wait(again, {"succeeded"}, timeout=60)["cached"] is True
    scrape.produced += produce_ticks(settings, scrape.topics.input, scrape.waves[2], scrape.names)
    assert scrape.produced == 9000
    sel = f'processor="aggregate",instance="{inst}"'
    wait_until(lambda: _value(prometheus, f"sum(mystocks_stream_records_in_total{{{sel}}})") == scrape.produced, 90,
               f"records_in == {scrape.produced} in Prometheus")
    assert _value(prometheus, f"sum(mystocks_stream_records_out_total{{{sel}}})") == scrape.produced
    wait_until(lambda: _value(prometheus, f"max(mystocks_stream_consumer_lag{{{sel}}})") == 0, 60, "lag back to 0")
    assert len(prometheus.query(f"mystocks_stream_consumer_lag{{{sel}}}")) == 2  # one series per partition
    stages = {r["metric"]["stage"] for r in prometheus.query(f"mystocks_stream_stage_seconds_count{{{sel}}}")}
    assert {"batch", "decode", "compute", "encode", "produce", "commit"} <= stages  # per-record stages (issue 18)
    # scraped every second for over 30 s (the Connect tests ran meanwhile; alone, this waits)
    wait_until(lambda: time.monotonic() - scrape.t0 >= 31, 40, "31 s of scraping", every_s=0.5)
    samples = _value(prometheus, f'count_over_time(up{{instance="{inst}"}}[5m])')
    assert samples is not None and samples >= 30
    # the GPU gauges are the fake inventory's, through the job worker's /metrics
    wi = f'instance="127.0.0.1:{plane.worker_metrics}",device="gpu0"'  # type: ignore[attr-defined]
    assert _value(prometheus, f"mystocks_gpu_utilization_ratio{{{wi}}}") == pytest.approx(0.42)
    assert _value(prometheus, f"mystocks_gpu_memory_total_bytes{{{wi}}}") == 16384 * 2**20
    assert _value(prometheus, f"mystocks_gpu_memory_used_bytes{{{wi}}}") == 4096 * 2**20
    assert _value(prometheus, f"mystocks_gpu_temperature_celsius{{{wi}}}") == 57
    ci = f'instance="127.0.0.1:{plane.port}"'
    wait_until(lambda: (_value(prometheus, f'sum(mystocks_jobs_finished_total{{{ci},kind="backtest",state="succeeded"}})')
                        or 0) >= 2, 30, "two finished backtests scraped")
    wait_until(lambda: (_value(prometheus, f'sum(mystocks_jobs_cache_hits_total{{{ci},kind="backtest"}})') or 0) >= 1,
               30, "a cache hit scraped")
    _every_dashboard_query_returns_data(prometheus)
    rules = prometheus.api("rules")["groups"]
    assert len(rules[0]["rules"]) == 11 and all(r["health"] == "ok" for r in rules[0]["rules"]), rules


def _every_dashboard_query_returns_data(prometheus: PrometheusServer) -> None:
    dash = json.loads(Path(DASHBOARD).read_text())
    exprs = [t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]
    assert len(exprs) >= 18

    def empty() -> list[str]:
        return [e for e in exprs if not prometheus.query(e)]

    # rate()/increase() need two samples of a series: a counter born at the last scrape (the cache
    # hit) has data one scrape interval (1 s) later
    end = time.monotonic() + 30
    while (missing := empty()) and time.monotonic() < end:
        time.sleep(0.5)  # polled with a deadline
    assert not missing, f"dashboard queries without data: {missing}"
