"""The platform against the SECURE stack (TLS, SCRAM-SHA-512, ACLs per principal, Redis TLS + ACL
users): the features pipeline, a backtest job and the control plane (Faust over SASL_SSL, HTTPS with
bearer tokens) each run as their own principal; clients without credentials, with a wrong password
or without an ACL are refused with a clear error; a wrong Redis password fails fast."""

from __future__ import annotations

import json
import os
import re
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.infra.config import load_settings
from mystocks_gpu.infra.stack_secure import SecureStack
from mystocks_gpu.schemas import schema_store
from mystocks_gpu.streams.dead_letters import H_ERROR_CLASS, H_ERROR_MESSAGE
from tests.conftest import ROOT, run_cli, wait_until
from tests.integration.stream_helpers import read_finished
from tests.integration.test_backtest_job import _key, _published

DAY = 86_400 * 10**9


def as_principal(st: SecureStack, name: str, **extra: str) -> dict[str, str]:
    """Environment of a subprocess connecting as ``name`` (and nothing of the plain test stack)."""
    return {**st.env(name), **extra}


def _settings(st: SecureStack, name: str) -> Any:
    return load_settings(environ=as_principal(st, name))


# ---- refusals ------------------------------------------------------------------------------


def test_clients_without_credentials_or_acls_are_refused_with_a_clear_error(secure_stack: SecureStack) -> None:
    from mystocks_gpu.infra.config import KafkaConfig
    from mystocks_gpu.infra.exceptions import BrokerAuthFailed, DeliveryFailed
    from mystocks_gpu.infra.kafka_clients import ensure_broker, make_producer, produce_all

    boot = secure_stack.bootstrap
    # no credentials at all (PLAINTEXT): the TLS listener drops the first request
    with pytest.raises(BrokerAuthFailed, match="dropped the client's first request: it expects another security "
                                               "protocol than security.protocol=PLAINTEXT"):
        ensure_broker(KafkaConfig(bootstrap_servers=boot, connect_timeout_s=5))
    # TLS right, an unknown user / a wrong password: refused at once, never the password in the message
    for user, pw in (("nobody", "x-secret-1"), ("client", "x-secret-2")):
        t0 = time.monotonic()
        with pytest.raises(BrokerAuthFailed) as exc:
            ensure_broker(KafkaConfig(bootstrap_servers=boot, security=secure_stack.kafka_security(user, pw),
                                      connect_timeout_s=20))
        assert time.monotonic() - t0 < 15
        msg = str(exc.value)
        assert "refused the client's credentials" in msg and "invalid credentials with SASL mechanism SCRAM-SHA-512" \
            in msg and f"sasl.username={user}" in msg and pw not in msg
    # the CLI says the same in one line (exit 2)
    env = as_principal(secure_stack, "client", MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD="wrong-password")
    r = run_cli("consume", "job.status", "--max", "1", env=env, timeout=60)
    assert r.returncode == 2 and "refused the client's credentials" in r.stderr, r.stderr
    assert "wrong-password" not in r.stderr + r.stdout and "Traceback" not in r.stderr
    # `client` may submit jobs and read results, never write market data: nobody but `ingest` does
    client = _settings(secure_stack, "client").kafka
    with pytest.raises(DeliveryFailed, match="md.ticks: Broker: Topic authorization failed"):
        produce_all(make_producer(client), "md.ticks", [(b"K", b"x", 0)], flush_timeout_s=30)
    # nor may a stream worker write job commands
    with pytest.raises(DeliveryFailed, match="cmd.jobs: Broker: Topic authorization failed"):
        produce_all(make_producer(_settings(secure_stack, "stream").kafka), "cmd.jobs", [(b"K", b"x", 0)],
                    flush_timeout_s=30)


def test_wrong_redis_password_fails_fast(secure_stack: SecureStack) -> None:
    import redis

    from mystocks_gpu.infra.exceptions import RedisAuthFailed
    from mystocks_gpu.infra.redis_clients import check_redis

    p = secure_stack.principal("jobworker")
    url = secure_stack.redis_user_url("jobworker", p.redis_password + "x")
    with pytest.raises(RedisAuthFailed, match="refused the credentials .*invalid username-password pair"):
        check_redis(redis.Redis.from_url(url, socket_timeout=5), url)
    check_redis(redis.Redis.from_url(secure_stack.redis_user_url("jobworker", p.redis_password)), url)  # right one
    # a worker started with it stops at once with that line (exit 2), the password masked
    t0 = time.monotonic()
    r = run_cli("worker", "--id", "wrongpw", "--namespace", f"t{uuid.uuid4().hex[:6]}",
                env=as_principal(secure_stack, "jobworker", MYSTOCKS_REDIS__URL=url), timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    assert "refused the credentials (invalid username-password pair" in r.stderr, r.stderr
    assert p.redis_password not in r.stderr and "rediss://jobworker:***@" in r.stderr
    assert took < 30, f"took {took:.1f} s"


# ---- the features pipeline -----------------------------------------------------------------


def _bad_frames(store: Any) -> dict[str, tuple[bytes, str]]:
    """One malformed md.ticks value per failure class -> (value, the DLQ reason it must get)."""
    tick_id = store.by_name("mystocks.md.Tick").id
    good_prefix = b"\x00" + struct.pack(">I", tick_id)
    return {
        "truncated": (good_prefix + b"\x06AB", "truncated record"),  # symbol length 3, 2 bytes present
        "unknown-id": (b"\x00" + struct.pack(">I", 999_999) + b"\x02A", "unknown schema id"),
        "utf8": (good_prefix + b"\x04\xff\xfe", "not valid UTF-8"),  # a 2-byte symbol that is not UTF-8
        "varint": (good_prefix + b"\x02A" + b"\xff" * 11, "varint overflow"),  # ts_event over 64 bits
        "too-large": (good_prefix + b"\x00" * 70_000, "max_record_bytes"),  # over --max-record-bytes 65536
    }


def _ticks(n: int, tag: str) -> list[tuple[bytes, dict[str, Any]]]:
    """``n`` valid ticks over 12 symbols (seq per symbol from 0), with their keys."""
    rng = np.random.default_rng(5)
    seqs: dict[str, int] = {}
    out = []
    t0 = time.time_ns() - 10**9
    for i in range(n):
        sym = f"S{tag}{i % 12}"
        seq = seqs[sym] = seqs.get(sym, -1) + 1
        mid = 100 + float(rng.normal())
        trade = i % 3 == 0
        out.append((sym.encode(), {"symbol": sym, "ts_event": t0 + i * 1000, "seq": seq,
                                   "kind": "TRADE" if trade else "QUOTE", "price": mid, "size": 5.0 if trade else 0.0,
                                   "side": 1 if trade else 0, "bid": mid - 0.01, "ask": mid + 0.01, "bid_size": 9.0,
                                   "ask_size": 9.0}))
    return out


def test_features_pipeline_as_principals(secure_stack: SecureStack) -> None:
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec

    u = uuid.uuid4().hex[:6].upper()
    ingest = _settings(secure_stack, "ingest")
    store = schema_store(ingest)
    codec = AvroCodec(store)
    ticks = _ticks(1500, u)
    bad = _bad_frames(store)
    items = [(k, codec.encode("mystocks.md.Tick", rec), rec["ts_event"] // 10**6) for k, rec in ticks]
    items += [(f"BAD{u}-{name}".encode(), value, 0) for name, (value, _) in bad.items()]
    assert produce_all(make_producer(ingest.kafka), "md.ticks", items) == len(items)  # as `ingest`

    r = run_cli("run", "features", "--group", f"mystocks.sec-{u}", "--idle-exit", "3", "--max-record-bytes",
                "65536", env=as_principal(secure_stack, "stream", MYSTOCKS_BACKEND="cpu"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["records_in"] == len(items) and summary["dlq"] == len(bad)
    admin = _settings(secure_stack, "admin")
    feats = list(read_finished(admin.kafka, "features.ticks"))
    dlq = list(read_finished(admin.kafka, "md.ticks.dlq", decode=False))
    # every good tick has exactly one feature vector (by symbol + seq), nothing else came out
    want = sorted((k.decode(), rec["seq"]) for k, rec in ticks)
    assert sorted((m.key, m.value["seq"]) for m in feats) == want
    # every bad record is in the DLQ with a reason naming its failure
    reasons = {str(m.key).split("-", 1)[1]: m.headers[H_ERROR_MESSAGE] for m in dlq}
    assert set(reasons) == set(bad) and len(dlq) == len(bad)
    for case, (_, want_reason) in bad.items():
        assert want_reason in reasons[case], (case, reasons[case])
    assert {m.headers[H_ERROR_CLASS] for m in dlq} >= {"RecordTooLarge", "UnknownSchemaId", "DecodeError"}


def test_a_stream_principal_uses_an_old_changelog_it_may_not_alter(secure_stack: SecureStack,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A changelog made in 64 MiB segments (before the 8 MiB ones) is used as it is by a principal
    without ALTER_CONFIGS on it (the stream role): a warning names the admin command, no failure."""
    from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

    from mystocks_gpu.streams.state_store import ensure_changelog
    from mystocks_gpu.topics.admin import make_admin

    u = uuid.uuid4().hex[:6]
    group, name = f"mystocks.sec-{u}", f"mystocks.sec-{u}.features.changelog"
    admin = make_admin(_settings(secure_stack, "admin").kafka)
    parts = len(admin.list_topics("md.ticks", timeout=30).topics["md.ticks"].partitions)
    admin.create_topics([NewTopic(name, num_partitions=parts, replication_factor=1, config={
        "cleanup.policy": "compact", "segment.bytes": str(64 << 20)})])[name].result(timeout=30)
    wait_until(lambda: admin.list_topics(name, timeout=10).topics[name].error is None, 30, "the changelog to be visible")
    with caplog.at_level("WARNING", logger="mystocks_gpu.streams.state_store"):
        got = ensure_changelog(_settings(secure_stack, "stream").kafka, "features", group, "md.ticks")
    res = ConfigResource(ResourceType.TOPIC, name)
    seg = admin.describe_configs([res])[res].result(timeout=30)["segment.bytes"].value
    assert got == name
    assert any("segment size left as it is" in r.getMessage() and name in r.getMessage() for r in caplog.records)
    assert seg == str(64 << 20)


# ---- the control plane and a backtest job ------------------------------------------------


class SecurePlane:
    """Control app (principal ``control``, HTTPS with bearer tokens) + one job worker (``jobworker``)."""

    def __init__(self, st: SecureStack, tmp: Path) -> None:
        self.st = st
        self.u = uuid.uuid4().hex[:6]
        self.ns = f"s{self.u}"
        self.port = 0  # the control app binds a port of the kernel's choice (never a clash); read from its log
        self.auth_file = tmp / "tokens.json"
        self.tokens: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = tmp
        pki = st.pki
        self.api_env = {"MYSTOCKS_API__AUTH_FILE": str(self.auth_file), "MYSTOCKS_API__TLS_CERT_FILE": str(pki.cert),
                        "MYSTOCKS_API__TLS_KEY_FILE": str(pki.key), "MYSTOCKS_API__SUBMIT_BURST": "50",
                        "MYSTOCKS_API__ALLOWED_ORIGINS": "https://dash.example"}
        self.ctx = ssl.create_default_context(cafile=str(pki.ca))

    def add_token(self, name: str, roles: str) -> str:
        r = run_cli("auth", "add", name, "--roles", roles, "--file", str(self.auth_file))
        assert r.returncode == 0, r.stderr
        self.tokens[name] = r.stdout.strip()
        return self.tokens[name]

    def spawn(self, name: str, principal: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MYSTOCKS_BACKEND": "cpu", **as_principal(self.st, principal),
               **extra}
        p = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *args], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, env=env)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def req(self, method: str, path: str, token: str | None = None, body: Any = None, raw: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
             **(headers or {})}
        rq = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(rq, timeout=10, context=self.ctx) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def start(self) -> None:
        self.spawn("control", "control", "control", "--port", "0", "--namespace", self.ns, "--app-id",
                   f"mystocks-sec-{self.u}", "--heartbeat-ttl", "3", "--tick", "0.25", **self.api_env)

        def ready() -> bool:
            assert self.procs["control"].poll() is None, self.log("control")
            if not self.port:
                bound = re.search(r"control web server on https://[^ ]+:(\d+)", self.log("control"))
                if bound is None:
                    return False
                self.port = int(bound.group(1))
            try:
                return bool(self.req("GET", "/health")[1].get("ready"))
            except OSError:
                return False

        wait_until(ready, 120, lambda: f"control app ready:\n{self.log('control')}")  # type: ignore[arg-type]
        self.spawn("worker", "jobworker", "worker", "--id", f"w{self.u}", "--namespace", self.ns, "--kinds",
                   "backtest,echo", "--heartbeat-ttl", "3", "--heartbeat-interval", "0.5")
        admin = self.tokens["root"]

        def beating() -> bool:
            assert self.procs["worker"].poll() is None, self.log("worker")
            return self.req("GET", "/workers", admin)[1]["count"] >= 1

        wait_until(beating, 60, lambda: f"worker heart-beating:\n{self.log('worker')}")  # type: ignore[arg-type]

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def plane(secure_stack: SecureStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurePlane]:
    p = SecurePlane(secure_stack, tmp_path_factory.mktemp("secure-plane"))
    p.add_token("root", "admin")
    p.add_token("alice", "submit,read")
    p.add_token("carol", "submit,read")
    p.add_token("viewer", "read")
    try:
        p.start()
        yield p
    finally:
        p.close()


def _direct(bars: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """The engine run in-process on matrices built here by a pandas pivot of the rows loaded."""
    from mystocks_gpu.gpu_ops.backtest import run_backtest
    from mystocks_gpu.processors.backtest.spec import BacktestSpec

    syms = sorted(bars["symbol"].unique())
    ts = np.sort(bars["ts"].unique()).astype(np.int64)
    mats = {c: bars.pivot(index="symbol", columns="ts", values=c).reindex(index=syms, columns=ts).to_numpy(np.float64)
            for c in ("open", "high", "low", "close")}
    out = run_backtest(mats, syms, ts, BacktestSpec.from_dict(spec), backend="cpu")
    return pd.DataFrame(out.rows(len(out.stats)))


def _load_bars(st: SecureStack) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    tag = uuid.uuid4().hex[:5].upper()
    days = pd.bdate_range("2022-01-03", periods=300, tz="UTC")
    frames = []
    for k in range(4):
        close = 40 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, days.size)))
        opn = close * np.exp(rng.normal(0, 0.005, days.size))
        frames.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "ticker": f"SB{tag}{k}", "open": opn.round(4),
                                    "high": (np.maximum(opn, close) * 1.004).round(4),
                                    "low": (np.minimum(opn, close) * 0.996).round(4), "close": close.round(4),
                                    "volume": rng.integers(1e5, 1e6, days.size)}))
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec

    df = pd.concat(frames, ignore_index=True)
    df["ts"] = pd.to_datetime(df["date"], utc=True).dt.as_unit("ns").astype("int64")
    df["symbol"] = df["ticker"]
    ingest = _settings(st, "ingest")
    codec = AvroCodec(schema_store(ingest))
    items = [(r.symbol.encode(), codec.encode("mystocks.md.Bar", {
        "symbol": r.symbol, "ts_event": int(r.ts), "interval_ns": DAY, "open": r.open, "high": r.high, "low": r.low,
        "close": r.close, "volume": float(r.volume), "vwap": r.close, "trades": 1}), int(r.ts) // 10**6)
        for r in df.itertuples()]
    assert produce_all(make_producer(ingest.kafka), "md.bars.1d", items) == len(df)  # history, as `ingest`
    return df


def test_backtest_job_through_the_secure_control_plane(plane: SecurePlane, secure_stack: SecureStack) -> None:
    bars = _load_bars(secure_stack)
    spec = {"universe": sorted(bars["symbol"].unique()), "start": int(bars["ts"].min()),
            "end": int(bars["ts"].max()) + DAY, "strategy": "ma_cross",
            "params": {"fast": [5, 10], "slow": [30, 60]}, "fees": 0.001, "slippage": 0.0005, "top_n": 3,
            "n_curves": 1}
    # the CLI as principal `client`: command on cmd.jobs, statuses from job.status (its ACLs)
    r = run_cli("submit", "backtest", "--spec", json.dumps(spec), "--wait", "--json", "--timeout", "240",
                env=as_principal(secure_stack, "client"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:] + plane.log("control")[-2000:] + plane.log("worker")[-2000:]
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["state"] == "succeeded"
    # the rows on results.backtest, read as `client`, equal the engine run directly
    got = _published(_settings(secure_stack, "client"), final["job_id"])
    want = _direct(bars, spec)
    assert len(got) == len(want) == 4 * 4
    pd.testing.assert_frame_equal(_key(got), _key(want), check_exact=False, rtol=1e-12)


def test_https_api_tokens_roles_and_ownership(plane: SecurePlane) -> None:
    t = plane.tokens
    assert plane.req("GET", "/health")[0] == 200  # public
    for path in ("/jobs", "/workers", "/metrics"):
        assert plane.req("GET", path)[0] == 401
    status, body = plane.req("POST", "/jobs", None, {"kind": "echo", "spec": {"message": "x"}})
    assert status == 401 and "bearer token" in body["error"]
    status, body = plane.req("POST", "/jobs", t["viewer"], {"kind": "echo", "spec": {"message": "x"}})
    assert status == 403 and "'submit' role" in body["error"]
    status, body = plane.req("POST", "/jobs", t["alice"], {"kind": "echo", "spec": {"message": "hi"},
                                                            "requester": "mallory"})
    assert status == 202, body
    jid = body["job_id"]
    job = wait_until(lambda: (lambda s, b: b if s == 200 and b["state"] == "succeeded" else None)(
        *plane.req("GET", f"/jobs/{jid}", t["alice"])), 60, "alice's echo job")
    assert job["requester"] == "alice"  # a non-admin token cannot submit in another's name
    assert plane.req("GET", f"/jobs/{jid}", t["carol"])[0] == 404  # others' jobs are not visible
    assert plane.req("GET", f"/jobs/{jid}", t["root"])[0] == 200  # the admin sees all
    assert jid in {j["job_id"] for j in plane.req("GET", "/jobs", t["alice"])[1]["jobs"]}
    assert jid not in {j["job_id"] for j in plane.req("GET", "/jobs", t["carol"])[1]["jobs"]}
    # cross-site: text/plain from a foreign origin refused; WebSocket from a foreign origin refused
    status, body = plane.req("POST", "/jobs", t["alice"], raw=b'{"kind": "echo"}',
                             headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert status == 403 and "evil.example" in body["error"]
    status, _ = plane.req("GET", "/ws", t["alice"], headers={"Origin": "http://evil.example", "Connection": "Upgrade",
                                                              "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 403
    # the CLI with a token over https
    env = {"MYSTOCKS_API__TOKEN": t["alice"], "MYSTOCKS_API__TLS_CA_FILE": str(plane.st.pki.ca),
           "MYSTOCKS_JOBS__WEB_PORT": str(plane.port)}
    r = run_cli("job", jid, "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["job_id"] == jid, r.stderr
    r = run_cli("jobs", "--json", env={**env, "MYSTOCKS_API__TOKEN": "mst_wrong"})
    assert r.returncode == 2 and "401" in r.stderr and "bearer token" in r.stderr
