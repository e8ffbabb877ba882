"""Unit tests of the gateway's parts: generated code is current, auth (hashed tokens, expiry,
roles), error mapping, settings, the WebSocket severity filter and message schemas."""

from __future__ import annotations

import json
from pathlib import Path

import fastjsonschema
import grpc
import pytest

from mystocks_gpu.api import proto_codegen
from mystocks_gpu.api.grpc_auth import GatewayAuth, Unauthenticated, required_role
from mystocks_gpu.api.grpc_errors import NotFound, status_of
from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.api_tokens import TokenStore, token_digest
from mystocks_gpu.infra.clock import ManualClock
from mystocks_gpu.infra.config import ApiConfig, GatewayConfig, load_settings
from mystocks_gpu.infra.exceptions import BrokerUnreachable
from mystocks_gpu.jobs.ws_hub import Hub
from mystocks_gpu.jobs.ws_schemas import MESSAGE_SCHEMAS
from mystocks_gpu.processors.exceptions import JobSpecError


def test_generated_code_is_current() -> None:
    """grpcio-tools regenerates exactly the committed modules (modulo the generator's version lines)."""
    assert proto_codegen.stale() == []


def test_protos_are_one_versioned_package_with_documented_fields() -> None:
    for f in proto_codegen.PROTOS.glob("*.proto"):
        text = f.read_text()
        assert "package mystocks.v1;" in text, f
    from mystocks_gpu.api.protos import backtest_pb2, realtime_pb2, training_pb2, workloads_pb2

    names = {s.full_name for m in (backtest_pb2, realtime_pb2, training_pb2, workloads_pb2)
             for s in m.DESCRIPTOR.services_by_name.values()}
    assert names == {f"mystocks.v1.{n}" for n in ("BacktestService", "RealTimeService", "TrainingService",
                                                   "FactorService", "RiskService", "ExecutionService")}
    methods = {m.name for s in backtest_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert {"SubmitBacktestTask", "QueryBacktestResult", "GetBacktestHistory", "WatchTask"} <= methods
    assert workloads_pb2.DESCRIPTOR.services_by_name["ExecutionService"].methods_by_name["ScheduleOrder"].server_streaming is False


def _token_file(tmp_path: Path, **expires: int) -> tuple[Path, dict[str, str]]:
    store = TokenStore()
    toks = {"alice": store.add("alice", ["submit", "read"], now_ns=0), "bob": store.add("bob", ["read"], now_ns=0)}
    path = tmp_path / "tokens.json"
    store.save(path)
    data = json.loads(path.read_text())
    for t in data["tokens"]:
        if t["name"] in expires:
            t["expires_ns"] = expires[t["name"]]
    path.write_text(json.dumps(data))
    return path, toks


def test_tokens_hashed_at_rest_and_expiry(tmp_path: Path) -> None:
    path, toks = _token_file(tmp_path, bob=1_000)
    text = path.read_text()
    assert toks["alice"] not in text and token_digest(toks["alice"]) in text  # only the SHA-256 digest is stored
    clock = ManualClock(now_ns=500)
    auth = GatewayAuth(ApiConfig(auth_file=str(path)), clock)
    assert auth.identify([("authorization", f"Bearer {toks['alice']}")]).name == "alice"
    assert auth.identify([("authorization", f"Bearer {toks['bob']}")]).name == "bob"
    clock.advance(500e-9)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.identify([("authorization", f"Bearer {toks['bob']}")])
    with pytest.raises(Unauthenticated, match="required"):
        auth.identify([])
    with pytest.raises(Unauthenticated, match="not valid"):
        auth.identify([("authorization", "Bearer mst_wrong")])
    assert not GatewayAuth(ApiConfig()).enabled  # no auth_file: anonymous admin (loopback development)


def test_roles_per_method() -> None:
    assert required_role("/mystocks.v1.BacktestService/SubmitBacktestTask") == "submit"
    assert required_role("/mystocks.v1.ExecutionService/ScheduleOrder") == "submit"
    assert required_role("/mystocks.v1.BacktestService/WatchTask") == "read"
    assert required_role("/grpc.health.v1.Health/Check") is None


def test_error_mapping() -> None:
    assert status_of(JobSpecError("fees: must be >= 0"))[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert "fees" in status_of(JobSpecError("fees: must be >= 0"))[1]
    assert status_of(NotFound("no job 'x'"))[0] is grpc.StatusCode.NOT_FOUND
    assert status_of(BrokerUnreachable("down"))[0] is grpc.StatusCode.UNAVAILABLE
    assert status_of(RuntimeError("boom"))[0] is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("env,where", [({"MYSTOCKS_GATEWAY__PORT": "70000"}, "gateway.port"),
                                       ({"MYSTOCKS_GATEWAY__STREAM_QUEUE_MAX": "0"}, "gateway.stream_queue_max"),
                                       ({"MYSTOCKS_GATEWAY__FACTOR_KIND": "a b"}, "gateway.factor_kind")])
def test_gateway_settings_validated(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=where):
        load_settings(None)


def test_gateway_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSTOCKS_GATEWAY__PORT", "50999")
    monkeypatch.setenv("MYSTOCKS_GATEWAY__STREAM_QUEUE_MAX", "3")
    s = load_settings(None)
    assert s.gateway.port == 50999 and s.gateway.stream_queue_max == 3 and s.gateway.host == "127.0.0.1"
    assert GatewayConfig().host == "127.0.0.1"  # loopback by default


def test_ws_severity_filter_and_schemas() -> None:
    hub = Hub()
    c = hub.connect()
    hub.subscribe(c, ["alert"], [], [], ["critical"])
    alert = {"alert_id": "a", "ts_event": 1, "kind": "JOB_TIMEOUT", "severity": "WARNING", "source": "j",
             "message": "m", "value": 0.0, "threshold": 0.0, "labels": {}}
    assert hub.publish("alert", alert, severity="WARNING") == 0
    assert hub.publish("alert", {**alert, "severity": "CRITICAL"}, severity="CRITICAL") == 1
    msg = c.queue.get_nowait()
    fastjsonschema.compile(MESSAGE_SCHEMAS["alert"])(json.loads(json.dumps(msg)))
    with pytest.raises(fastjsonschema.JsonSchemaException):
        fastjsonschema.compile(MESSAGE_SCHEMAS["alert"])({**msg, "data": {**msg["data"], "severity": "LOUD"}})


def test_tick_wire_encoding_parses_to_the_ticks_protobuf_builds() -> None:
    """The numba wire encoder of SubscribeMarketData's ticks: parsed by protobuf's runtime, every
    field equals a Tick built field by field with the protobuf API (negative side, zeros, unicode
    and long symbols, 64-bit offsets and timestamps, NaN/inf/-0.0 prices), and a garbage record in
    the batch is skipped."""
    import math

    import numpy as np

    from mystocks_gpu.api.market_stream import tick_converter
    from mystocks_gpu.api.protos import realtime_pb2
    from mystocks_gpu.infra.config import Settings
    from mystocks_gpu.schemas import AvroCodec

    rng = np.random.default_rng(3)
    codec = AvroCodec()
    syms = ["A", "BRK.B", "Ünicode-€", "X" * 200]
    special = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300, 123.456]
    recs, want = [], []
    for i in range(400):
        sym = syms[i % len(syms)]
        px = special[i % len(special)] if i % 7 == 0 else float(rng.normal(100, 5))
        r = {"symbol": sym, "ts_event": int(rng.integers(0, 2**62)), "seq": int(rng.integers(0, 2**40)),
             "kind": ["TRADE", "QUOTE"][i % 2], "price": px, "size": float(rng.integers(0, 5)) * 100,
             "side": int(rng.integers(-1, 2)), "bid": px - 0.01, "ask": px + 0.01, "bid_size": 0.0,
             "ask_size": float(rng.integers(1, 10**6))}
        part, off = int(rng.integers(0, 64)), int(rng.integers(0, 2**50))
        recs.append((sym, codec.encode("mystocks.md.Tick", r), part, off))
        want.append(realtime_pb2.Tick(symbol=sym, ts_event_ns=r["ts_event"], seq=r["seq"], kind=r["kind"],
                                      price=px, size=r["size"], side=r["side"], bid=r["bid"], ask=r["ask"],
                                      bid_size=r["bid_size"], ask_size=r["ask_size"], partition=part, offset=off))
    recs.insert(17, ("A", b"\x00\x00\x00\x7fgarbage", 0, 1))

    class Msg:
        def __init__(self, key: str, value: bytes, part: int, off: int) -> None:
            self._k, self._v, self._p, self._o = key.encode(), value, part, off

        def key(self) -> bytes:
            return self._k

        def value(self) -> bytes:
            return self._v

        def partition(self) -> int:
            return self._p

        def offset(self) -> int:
            return self._o

    got = tick_converter(Settings(), set())([Msg(*r) for r in recs])
    assert len(got) == len(want) and got.md.topic == "md.ticks"
    for g, w in zip(got.md.ticks, want, strict=True):
        assert g.SerializeToString(deterministic=True) == w.SerializeToString(deterministic=True)
    only = tick_converter(Settings(), {"BRK.B"})([Msg(*r) for r in recs])
    assert [t.symbol for t in only.md.ticks] == ["BRK.B"] * 100
    assert len(got[:7]) == 7 and list(got[:7].md.ticks) == list(got.md.ticks)[:7]
