"""The gRPC gateway and the WebSocket protocol on the real broker: a control app + one worker
(subprocesses), the gateway in this process (so its stream counters can be measured), clients built
from the generated stubs, grpcio's reflection client, a ``websockets`` client on ``/ws``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from mystocks_gpu.api.gateway_server import Gateway
from mystocks_gpu.api.protos import common_pb2, realtime_pb2, realtime_pb2_grpc
from mystocks_gpu.client import GatewayClient, open_channel, state_name
from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate
from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.api_tokens import TokenStore
from mystocks_gpu.infra.config import ApiConfig, GatewayConfig, KafkaConfig, Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.jobs.ws_schemas import MESSAGE_SCHEMAS
from mystocks_gpu.schemas import schema_store
from tests.conftest import run_cli
from tests.integration.jobs_plane import ROOT, Plane, free_port, wait_until
from tests.integration.stream_helpers import produce_ticks
from tests.ml_data import DAY, load_panel


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A token file: alice (submit, read), bob (read), admin, and old (expired)."""
    store = TokenStore()
    toks = {n: store.add(n, roles, now_ns=0) for n, roles in
            (("alice", ["submit", "read"]), ("bob", ["read"]), ("admin", ["admin"]), ("old", ["submit", "read"]))}
    path = tmp_path_factory.mktemp("auth") / "tokens.json"
    store.save(path)
    data = json.loads(path.read_text())
    for t in data["tokens"]:
        if t["name"] == "old":
            t["expires_ns"] = time.time_ns() - 10**9
    path.write_text(json.dumps(data))
    return {"file": str(path), **toks}


class AuthPlane(Plane):
    """A :class:`Plane` whose control app needs bearer tokens (its HTTP calls send the admin's)."""

    token = ""

    def workers(self) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"{self.url}/workers", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["workers"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any, tokens: dict[str, Any]) -> Iterator[Plane]:
    """Control app (with the token file: WebSocket auth) + one worker serving backtest, echo, sleep, train."""
    p = AuthPlane(settings, uuid.uuid4().hex[:8])
    p.token = tokens["admin"]
    try:
        os.environ["MYSTOCKS_API__AUTH_FILE"] = tokens["file"]
        try:
            p.spawn_control()
        finally:
            os.environ.pop("MYSTOCKS_API__AUTH_FILE", None)
        wait_until(lambda: p.health()[1].get("ready"), 180, lambda: f"control ready:\n{p.log('control')}")
        p.start_worker("gw1", "--kinds", "backtest,echo,sleep,train", timeout=180)
        yield p
    finally:
        p.close()


class GatewayThread:
    """A :class:`Gateway` on its own event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gw = self.run(self._make(settings))
        self.port = self.run(self.gw.start())
        self.target = f"127.0.0.1:{self.port}"

    async def _make(self, settings: Settings) -> Gateway:
        return Gateway(settings)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.gw.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def gateway(settings: Settings, plane: Plane, tokens: dict[str, Any]) -> Iterator[GatewayThread]:
    s = dataclasses.replace(settings, api=ApiConfig(auth_file=tokens["file"]),
                            gateway=GatewayConfig(port=0, stream_queue_max=4, stream_prefetch_kbytes=256,
                                                  factor_kind="echo", risk_kind="sleep", execution_kind="nokind"))
    g = GatewayThread(s)
    try:
        assert g.run(g.gw.wait_ready(60)), g.gw.view.error
        yield g
    finally:
        g.close()


def client(g: GatewayThread, tokens: dict[str, Any], who: str = "alice") -> GatewayClient:
    return GatewayClient(g.target, token=tokens[who])


@pytest.fixture(scope="module")
def bars(stack: Any) -> pd.DataFrame:
    """Daily OHLCV of 4 symbols over 160 sessions, loaded into md.bars.1d with the CLI."""
    rng = np.random.default_rng(7)
    tag = uuid.uuid4().hex[:5].upper()
    days = pd.bdate_range("2022-01-03", periods=160, tz="UTC")
    frames = []
    for k in range(4):
        close = 40 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, days.size)))
        opn = close * np.exp(rng.normal(0, 0.005, days.size))
        frames.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "ticker": f"GW{tag}{k}", "open": opn.round(4),
                                    "high": (np.maximum(opn, close) * 1.004).round(4),
                                    "low": (np.minimum(opn, close) * 0.996).round(4), "close": close.round(4),
                                    "volume": rng.integers(1e5, 1e6, days.size)}))
    df = pd.concat(frames, ignore_index=True)
    f = Path(f"/tmp/gw-bars-{tag}.csv")
    df.to_csv(f, index=False)
    r = run_cli("load", str(f), "--topic", "md.bars.1d", timeout=300)
    assert r.returncode == 0, r.stderr
    df["ts"] = pd.to_datetime(df["date"], utc=True).dt.as_unit("ns").astype("int64")
    return df


def _spec(bars: pd.DataFrame) -> dict[str, Any]:
    return {"universe": sorted(bars["ticker"].unique()), "start": int(bars["ts"].min()),
            "end": int(bars["ts"].max()) + DAY, "strategy": "ma_cross", "params": {"fast": [5, 10], "slow": [20, 40]},
            "fees": 0.001, "slippage": 0.0005, "top_n": 3, "n_curves": 1}


def _code(exc_info: Any) -> grpc.StatusCode:
    return exc_info.value.code()  # type: ignore[no-any-return]


# ---- health, reflection, auth -------------------------------------------------------------------
def test_health_serving_and_reflection_by_an_independent_client(gateway: GatewayThread, tokens: dict[str, Any]) -> None:
    with grpc.insecure_channel(gateway.target) as ch:  # health needs no token
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="mystocks.v1.BacktestService"), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    # grpcio's reflection client discovers the API and calls it with messages built from the
    # descriptors it fetched (no generated code of ours)
    ch = open_channel(gateway.target, tokens["alice"])
    db = ProtoReflectionDescriptorDatabase(ch)
    services = set(db.get_services())
    assert {f"mystocks.v1.{s}" for s in ("BacktestService", "RealTimeService", "TrainingService", "FactorService",
                                         "RiskService", "ExecutionService")} <= services
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("mystocks.v1.BacktestService")
    assert {m.name for m in svc.methods} >= {"SubmitBacktestTask", "QueryBacktestResult", "GetBacktestHistory",
                                             "WatchTask"}
    method = svc.methods_by_name["QueryBacktestResult"]
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    call = ch.unary_unary("/mystocks.v1.BacktestService/QueryBacktestResult",
                          request_serializer=lambda m: m.SerializeToString(), response_deserializer=resp_cls.FromString)
    with pytest.raises(grpc.RpcError) as ei:
        call(req_cls(job_id=f"nope-{uuid.uuid4().hex}"), timeout=20)
    assert _code(ei) is grpc.StatusCode.NOT_FOUND and "no job" in ei.value.details()
    ch.close()


def test_auth_no_wrong_expired_token_and_roles(gateway: GatewayThread, tokens: dict[str, Any]) -> None:
    req = common_pb2.QueryRequest(job_id="x")
    for tok, why in ((None, "required"), ("mst_not-a-token", "not valid"), (tokens["old"], "expired")):
        with GatewayClient(gateway.target, token=tok) as gc:
            with pytest.raises(grpc.RpcError) as ei:
                gc.backtest.QueryBacktestResult(req, timeout=10)
            assert _code(ei) is grpc.StatusCode.UNAUTHENTICATED and why in ei.value.details()
            with pytest.raises(grpc.RpcError) as ei:  # streams too
                list(gc.backtest.WatchTask(common_pb2.WatchRequest(job_id="x"), timeout=10))
            assert _code(ei) is grpc.StatusCode.UNAUTHENTICATED
    with client(gateway, tokens, "bob") as gc:  # read-only token cannot submit
        with pytest.raises(grpc.RpcError) as ei:
            gc.submit_backtest({})
        assert _code(ei) is grpc.StatusCode.PERMISSION_DENIED and "submit" in ei.value.details()


# ---- jobs ---------------------------------------------------------------------------------------
def test_backtest_submit_watch_query_equal_the_cli(gateway: GatewayThread, tokens: dict[str, Any],
                                                   bars: pd.DataFrame, settings: Settings) -> None:
    spec = _spec(bars)
    with client(gateway, tokens) as gc:
        job_id = gc.submit_backtest(spec, bypass_cache=True)
        watched = list(gc.watch(job_id, timeout_s=600))  # the first backtest compiles the engine (numba)
        # every state change, in order, equal to the job.status records of the job on the topic
        topic = [r.value for r in read_topic(settings.kafka, "job.status", max_records=None, idle_timeout_s=2)
                 if r.value and r.value["job_id"] == job_id]
        assert [(state_name(s.state), round(s.progress, 9)) for s in watched] == \
               [(r["state"].lower(), round(r["progress"], 9)) for r in topic]
        assert state_name(watched[0].state) == "queued" and state_name(watched[-1].state) == "succeeded"
        assert "running" in [state_name(s.state) for s in watched] and watched[-1].final
        res = gc.backtest.QueryBacktestResult(common_pb2.QueryRequest(job_id=job_id), timeout=20)
        assert state_name(res.status.state) == "succeeded"
        grpc_result = json.loads(res.status.result_json)
        rows = list(gc.backtest.StreamBacktestResults(common_pb2.QueryRequest(job_id=job_id), timeout=60))
    # the same spec through the CLI (a separate job): the same result
    r = run_cli("submit", "backtest", "--spec", json.dumps(spec), "--wait", "--no-cache", "--json", timeout=180,
                env={"MYSTOCKS_API__TOKEN": tokens["alice"]})
    assert r.returncode == 0, r.stderr
    cli_final = json.loads(r.stdout.strip().splitlines()[-1])
    assert cli_final["state"] == "succeeded"
    # timings differ between runs, and each job's rows sit at its own offset of results.backtest
    drop = {"seconds", "replay_s", "engine_s", "publish_s", "results_offset"}
    assert {k: v for k, v in grpc_result.items() if k not in drop} == \
           {k: v for k, v in cli_final["result"].items() if k not in drop}
    # the results stream equals the job's records on results.backtest
    ref = [r for r in read_topic(settings.kafka, "results.backtest", max_records=None, idle_timeout_s=2)
           if r.key == job_id]
    assert len(rows) == len(ref) == grpc_result["messages"] > 0
    assert [json.loads(x.json) for x in rows] == [json.loads(json.dumps(r.value, default=str)) for r in ref]


def test_errors_invalid_spec_unknown_job_missing_kind(gateway: GatewayThread, tokens: dict[str, Any],
                                                      bars: pd.DataFrame) -> None:
    with client(gateway, tokens) as gc:
        with pytest.raises(grpc.RpcError) as ei:
            gc.submit_backtest({**_spec(bars), "fees": -1})
        assert _code(ei) is grpc.StatusCode.INVALID_ARGUMENT and "fees" in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:
            gc.submit_backtest("{not json")
        assert _code(ei) is grpc.StatusCode.INVALID_ARGUMENT and "spec_json" in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:
            gc.status(f"unknown-{uuid.uuid4().hex}")
        assert _code(ei) is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as ei:
            gc.schedule_order({"anything": 1})  # execution kind not installed in this gateway
        assert _code(ei) is grpc.StatusCode.FAILED_PRECONDITION and "nokind" in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:  # deadlines are honoured
            list(gc.backtest.WatchTask(common_pb2.WatchRequest(job_id=gc.submit_backtest(_spec(bars))), timeout=0.001))
        assert _code(ei) is grpc.StatusCode.DEADLINE_EXCEEDED


def test_history_paged_per_requester_and_generic_services(gateway: GatewayThread,
                                                          tokens: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:6]
    with client(gateway, tokens, "admin") as gc:
        ids = [gc.factors.SubmitFactorJob(common_pb2.JobRequest(spec_json=json.dumps({"message": f"{tag}-{i}"})),
                                          timeout=20).job_id for i in range(5)]
        pages, token = [], ""
        while True:
            page = gc.backtest.GetBacktestHistory(common_pb2.HistoryRequest(requester="admin", kind="echo", page_size=2,
                                                                            page_token=token), timeout=20)
            pages.append([j.job_id for j in page.jobs])
            token = page.next_page_token
            if not token:
                break
        got = [j for p in pages for j in p]
        assert all(len(p) <= 2 for p in pages) and set(ids) <= set(got)
        assert [j for j in got if j in ids] == ids[::-1]  # newest first
        for jid in ids:  # the factor service (kind "echo" here) runs the job; its result is the echo
            final = gc.wait(jid, timeout_s=60)
            assert state_name(final.state) == "succeeded"
            q = gc.factors.QueryFactorJob(common_pb2.QueryRequest(job_id=jid), timeout=20)
            assert json.loads(q.status.result_json)["message"].startswith(tag)
    with client(gateway, tokens, "bob") as gc:  # someone else's jobs and history
        with pytest.raises(grpc.RpcError) as ei:
            gc.backtest.GetBacktestHistory(common_pb2.HistoryRequest(requester="admin"), timeout=20)
        assert _code(ei) is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as ei:
            gc.status(ids[0])
        assert _code(ei) is grpc.StatusCode.PERMISSION_DENIED


def test_training_service_submit_progress_metrics_equal_the_cli(gateway: GatewayThread, plane: Plane,
                                                                 settings: Settings, tokens: dict[str, Any]) -> None:
    """A ridge walk-forward submitted with SubmitTrainingJob, followed with QueryTrainingProgress and
    read with GetModelMetrics, equals the same spec run by ``submit train --wait`` (same model bytes,
    the same out-of-sample metrics); bad specs and unknown or unfinished jobs map to status codes."""
    panel, topic = load_panel(settings.kafka, "gwm", n_symbols=6, n_dates=120, seed=4, partitions=2)
    tag = panel.symbols[0][:-3]  # the panel's unique tag (symbols are <tag><nnn>)
    f = panel.frame
    spec = {"name": f"gw-{tag.lower()}", "inputs": [topic, "md.bars.1d"], "features": ["f1", "f2", "f3"],
            "frequency": "1d", "label_column": "md.bars.1d:close", "universe": panel.symbols,
            "start": int(f["ts"].min()), "end": int(f["ts"].max()) + DAY, "family": "ridge", "params": {"alpha": 1.0},
            "walk_forward": {"n_splits": 2, "test_dates": 25, "embargo_dates": 2}}
    with client(gateway, tokens) as gc:
        jid = gc.submit_training(spec)
        with pytest.raises(grpc.RpcError) as ei:  # no metrics before it succeeds
            gc.model_metrics(jid)
        assert _code(ei) in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
        final = gc.wait(jid, timeout_s=600)
        assert state_name(final.state) == "succeeded", final.error
        progress = gc.training.QueryTrainingProgress(common_pb2.QueryRequest(job_id=jid), timeout=20)
        assert state_name(progress.state) == "succeeded" and progress.job_id == jid and progress.kind == "train"
        mm = gc.model_metrics(jid)
        with pytest.raises(grpc.RpcError) as ei:
            gc.model_metrics(f"nojob-{uuid.uuid4().hex}")
        assert _code(ei) is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as ei:
            gc.submit_training({"name": "x"})  # the train kind validates its spec
        assert _code(ei) is grpc.StatusCode.INVALID_ARGUMENT
    spec_file = Path(f"/tmp/gw-train-{tag}.json")
    spec_file.write_text(json.dumps(spec))
    cli_id = f"gwtrain-{uuid.uuid4().hex[:10]}"
    r = run_cli("submit", "train", "--spec", str(spec_file), "--wait", "--timeout", "600", "--namespace", plane.ns,
                "--job-id", cli_id, "--no-cache", timeout=660)
    assert r.returncode == 0, r.stderr[-3000:]
    with client(gateway, tokens, "admin") as gc:  # the CLI's job, read as the admin
        cli = json.loads(gc.training.QueryTrainingProgress(common_pb2.QueryRequest(job_id=cli_id), timeout=20).result_json)
    assert (mm.model, mm.version) == (spec["name"], 1) and cli["model"]["version"] == 2
    assert json.loads(mm.result_json)["model"]["content_sha256"] == cli["model"]["content_sha256"]
    for k in ("mse", "ic_mean", "rank_ic_mean"):
        assert mm.metrics[k] == pytest.approx(cli["overall"][k], rel=1e-12), k
    assert mm.metrics["long_short.sharpe"] == pytest.approx(cli["long_short"]["sharpe"], rel=1e-12)
    assert f"model {spec['name']} v2" in r.stdout and "rank_ic_mean" in r.stdout


# ---- market data --------------------------------------------------------------------------------
def _ticks(n: int, tag: str, symbols: int = 3, seed: int = 5) -> tuple[dict[str, np.ndarray], list[str]]:
    cols = generate(SyntheticMarket(n_symbols=symbols, seed=seed), n)
    cols["ts"] = cols["ts"] - cols["ts"].min() + time.time_ns()
    return cols, [f"GWT{tag}{i}" for i in range(symbols)]


def test_subscribe_market_data_delivers_every_tick_in_order(gateway: GatewayThread, settings: Settings,
                                                            tokens: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:6]
    cols, names = _ticks(3000, tag)
    with client(gateway, tokens) as gc:
        req = realtime_pb2.SubscriptionRequest(symbols=names[:2], start=realtime_pb2.START_FROM_LATEST, max_batch=500)
        stream = gc.realtime.SubscribeMarketData(req, timeout=180)
        first = next(stream)
        assert not first.ticks  # positioned
        # a record that is not a Tick, keyed as a subscribed symbol, ahead of the good ones: skipped
        produce_all(make_producer(settings.kafka), "md.ticks",
                    iter([(names[0].encode(), b"\x00\x00\x00\x7f\x01not avro", int(cols["ts"].min()) // 10**6)]))
        produce_ticks(settings, "md.ticks", cols, names)
        want = {names[i]: cols["seq"][cols["sym"] == i].tolist() for i in range(2)}
        got: dict[str, list[int]] = {s: [] for s in want}
        fields: dict[str, list[tuple[Any, ...]]] = {s: [] for s in want}
        total = sum(len(v) for v in want.values())
        n = 0
        for md in stream:
            for t in md.ticks:
                assert t.symbol in want  # the symbol filter
                got[t.symbol].append(t.seq)
                fields[t.symbol].append((t.ts_event_ns, t.kind, t.price, t.size, t.side, t.bid, t.ask, t.bid_size,
                                         t.ask_size))
                n += 1
            if n >= total:
                break
        stream.cancel()
    assert got == want  # every tick, in order per symbol
    kinds = next(f["type"]["symbols"] for f in schema_store(settings).by_name("mystocks.md.Tick").raw["fields"]
                 if f["name"] == "kind")
    for i in range(2):  # every field equals what was produced
        m = cols["sym"] == i
        ref = list(zip(cols["ts"][m].tolist(), [kinds[k] for k in cols["kind"][m].tolist()], cols["price"][m].tolist(),
                       cols["size"][m].tolist(), cols["side"][m].tolist(), cols["bid"][m].tolist(),
                       cols["ask"][m].tolist(), cols["bid_size"][m].tolist(), cols["ask_size"][m].tolist(), strict=True))
        assert fields[names[i]] == ref
    # from a time: the same ticks again (bounded by max_records)
    with client(gateway, tokens) as gc:
        again = [t.seq for md in gc.market_data([names[0]], start="time", start_time_ns=int(cols["ts"].min()),
                                                max_records=len(want[names[0]]), timeout_s=60) for t in md.ticks]
    assert again == want[names[0]]


def test_slow_subscriber_bounded_then_complete(gateway: GatewayThread, settings: Settings, tokens: dict[str, Any]) -> None:
    """A client that stops reading: the gateway's stream holds at most its queue bound (records
    read from Kafka minus records the client got stays bounded while 40k ticks wait in Kafka);
    once it reads again, every tick arrives, in order."""
    tag = uuid.uuid4().hex[:6]
    cols, names = _ticks(40_000, tag, symbols=1, seed=9)
    stats = gateway.gw.stats
    ch = open_channel(gateway.target, tokens["alice"], options=[("grpc.http2.bdp_probe", 0)])  # no window growth
    stub = realtime_pb2_grpc.RealTimeServiceStub(ch)
    # the stream's own ticks (md.ticks is shared: tests beside this one may produce other symbols)
    queued0, sent0 = stats.records_queued, stats.records_sent
    stream = stub.SubscribeMarketData(realtime_pb2.SubscriptionRequest(symbols=names, max_batch=100), timeout=120)
    next(stream)
    produce_ticks(settings, "md.ticks", cols, names)
    got = [t.seq for t in next(stream).ticks]
    bound = gateway.gw.gw.stream_queue_max
    wait_until(lambda: stats.max_queued_batches >= bound, 30, "the stream's queue to fill (client not reading)")
    held = (stats.records_queued - queued0) - len(got)
    # what the gateway holds for this client: its queue (4 batches of 100), one batch being put,
    # and what gRPC/HTTP-2 buffers within the 64 KiB flow-control window (~100 B a tick)
    assert held <= (bound + 2) * 100 + 2_000, f"gateway holds {held} ticks for a client that does not read"
    assert stats.records_queued - queued0 < len(cols["seq"]) / 4  # the backlog stayed in Kafka
    for md in stream:
        got.extend(t.seq for t in md.ticks)
        if len(got) >= len(cols["seq"]):
            break
    stream.cancel()
    ch.close()
    assert got == cols["seq"].tolist()
    assert stats.records_sent - sent0 >= len(got)


# ---- the CLI command ------------------------------------------------------------------------------
def test_gateway_command_serves_health(settings: Settings, stack: Any) -> None:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", "gateway", "--port", str(port)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            def serving() -> bool:
                assert p.poll() is None, p.stdout.read() if p.stdout else ""
                try:
                    return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    return False

            wait_until(serving, 60, "gateway command SERVING")
            gc = GatewayClient(f"127.0.0.1:{port}")  # no auth file: anonymous on loopback
            with pytest.raises(grpc.RpcError) as ei:
                gc.status(f"none-{uuid.uuid4().hex}")
            assert _code(ei) is grpc.StatusCode.NOT_FOUND
            gc.close()
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    assert f"gRPC gateway on 127.0.0.1:{port}" in out


def test_broker_down_is_unavailable(settings: Settings, stack: Any) -> None:
    dead = dataclasses.replace(settings, kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}",
                                                           connect_timeout_s=1.0),
                               gateway=GatewayConfig(port=0))
    g = GatewayThread(dead)
    try:
        with GatewayClient(g.target) as gc:
            with pytest.raises(grpc.RpcError) as ei:
                gc.submit_backtest({"universe": ["A"], "start": 0, "end": DAY, "strategy": "ma_cross",
                                    "params": {"fast": [5], "slow": [20]}})
            assert _code(ei) is grpc.StatusCode.UNAVAILABLE and "broker" in ei.value.details()
            with pytest.raises(grpc.RpcError) as ei:
                gc.status("any")
            assert _code(ei) is grpc.StatusCode.UNAVAILABLE
            ch = gc.channel
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        g.close()


# ---- WebSocket ----------------------------------------------------------------------------------
def test_websocket_four_message_types_with_schema(plane: Plane, gateway: GatewayThread,
                                                  settings: Settings, tokens: dict[str, Any]) -> None:
    import websockets
    import websockets.exceptions

    validators = {t: fastjsonschema.compile(s) for t, s in MESSAGE_SCHEMAS.items()}
    tag = uuid.uuid4().hex[:6]
    cols, names = _ticks(50, tag, symbols=1, seed=11)
    url = plane.url.replace("http", "ws") + "/ws"

    async def run() -> dict[str, dict[str, Any]]:
        with pytest.raises(websockets.exceptions.InvalidStatus):  # no token: refused
            async with websockets.connect(url):
                pass
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {tokens['admin']}"}) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello"
            await ws.send(json.dumps({"action": "subscribe", "types": list(MESSAGE_SCHEMAS), "symbols": names,
                                      "severities": ["WARNING", "CRITICAL"]}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ack["type"] == "subscribed" and ack["severities"] == ["CRITICAL", "WARNING"]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, produce_ticks, settings, "md.ticks", cols, names)
            await loop.run_in_executor(None, _produce_feature, settings, names[0])
            with client(gateway, tokens, "admin") as gc:  # a job that passes its deadline: status + JOB_TIMEOUT alert
                await loop.run_in_executor(None, lambda: gc.risk.SubmitRiskJob(
                    common_pb2.JobRequest(spec_json=json.dumps({"seconds": 30}), deadline_s=1.0), timeout=20))
            seen: dict[str, dict[str, Any]] = {}
            end = time.monotonic() + 60
            while len(seen) < 4 and time.monotonic() < end:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if msg["type"] in validators:
                    validators[msg["type"]](msg)  # the documented schema
                    seen.setdefault(msg["type"], msg)
            return seen

    seen = asyncio.run(run())
    assert set(seen) == {"market_data", "calc_result", "task_status", "alert"}, sorted(seen)
    assert seen["market_data"]["symbol"] == names[0] and seen["calc_result"]["symbol"] == names[0]
    assert seen["alert"]["data"]["kind"] == "JOB_TIMEOUT"


def _produce_feature(settings: Settings, symbol: str) -> None:
    from mystocks_gpu.infra.kafka_clients import make_producer
    from mystocks_gpu.schemas import AvroCodec, schema_store

    codec = AvroCodec(schema_store(settings))
    p = make_producer(settings.kafka)
    now = time.time_ns()
    p.produce("features.ticks", key=symbol.encode(),
              value=codec.encode("mystocks.features.FeatureVector", {"symbol": symbol, "ts_event": now, "seq": 1,
                                                                     "ts_ingest": now,
                                                                     "values": {"ret": 0.01, "rsi": float("nan")}}),
              timestamp=now // 1_000_000)
    assert p.flush(10) == 0



def test_the_command_producer_is_watched_while_the_gateway_is_idle(settings: Settings, stack: Any,
                                                                  served_stats: dict[str, list[str]]) -> None:
    """librdkafka#5301: the command producer's statistics (its broker watch's input) are served
    while no command is submitted; before, nothing polled it between two submits."""
    s = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, rebootstrap_s=0.1),
                            gateway=GatewayConfig(port=0))
    g = GatewayThread(s)
    try:
        assert g.run(g.gw.wait_ready(60)), g.gw.view.error
        wait_until(lambda: len(served_stats.get("gateway commands", ())) >= 5, 30, "the command producer's statistics served")
        with GatewayClient(g.target) as gc:  # and it still delivers (polled beside the submit's flush)
            r = gc.submit_backtest({"universe": ["A"], "start": 0, "end": DAY, "strategy": "ma_cross",
                                    "params": {"fast": [5], "slow": [20]}})
        assert r  # the job id, once the broker acknowledged the command
    finally:
        g.close()
