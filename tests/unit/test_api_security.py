"""API security of the control app's web server, on a real aiohttp server over a stand-in control
app (no broker): bearer tokens for every endpoint kind, roles, job ownership, Origin allow-list
(HTTP and WebSocket), JSON content type, size limits, the submission rate limit, tokens hashed at
rest and compared in constant time, the exposure warning, and fuzzed request bodies."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mystocks_gpu.infra import api_tokens
from mystocks_gpu.infra.api_tokens import RateLimiter, TokenStore, parse_bearer
from mystocks_gpu.infra.clock import SYSTEM_CLOCK
from mystocks_gpu.infra.config import ApiConfig, JobsConfig, Settings, load_settings
from mystocks_gpu.jobs.web import Api, build_web_app
from mystocks_gpu.jobs.web_security import exposure_warning
from mystocks_gpu.jobs.ws_hub import Hub

ORIGIN = "https://dash.example"


class FakeControl:
    """What the web server reads of the control app; commands land in the table at once."""

    def __init__(self, api: ApiConfig) -> None:
        self.ready, self.redis_ok = True, True
        self.cfg = JobsConfig()
        self.settings = Settings(api=api)
        self.table: dict[str, Any] = {}
        self.core = type("Core", (), {"active": {}})()
        self.workers: list[Any] = []
        self.hub = Hub(SYSTEM_CLOCK)
        self.redis = None
        self.codec = None
        self.started = 0.0
        self.clock = SYSTEM_CLOCK
        self.web_port = 0
        self.commands: list[dict[str, Any]] = []

    async def produce_command(self, cmd: dict[str, Any]) -> None:
        self.commands.append(cmd)
        if cmd["action"] == "SUBMIT":
            self.table[cmd["job_id"]] = {"job_id": cmd["job_id"], "kind": cmd["kind"], "state": "queued",
                                         "requester": cmd["requester"], "chunks": []}

    def not_ready_reasons(self) -> list[str]:
        return []

    def live_workers(self) -> list[Any]:
        return []


@pytest.fixture()
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    store = TokenStore()
    toks = {"root": store.add("root", ["admin"]), "alice": store.add("alice", ["submit", "read"]),
            "carol": store.add("carol", ["submit", "read"]), "viewer": store.add("viewer", ["read"])}
    f = tmp_path / "tokens.json"
    store.save(f)
    return f, toks


Call = Callable[..., Awaitable[tuple[int, Any, Any]]]


def serve(api: ApiConfig, test: Callable[[Call, str, FakeControl], Awaitable[None]]) -> FakeControl:
    """Run ``test(call, base_url, ctl)`` against a live server on a free loopback port."""
    ctl = FakeControl(api)

    async def main() -> None:
        runner = web.AppRunner(build_web_app(ctl, Api(ctl)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async def call(method: str, path: str, token: str | None = None, body: Any = None,
                           data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
                h = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
                if body is not None:
                    data = json.dumps(body).encode()
                    h.setdefault("Content-Type", "application/json")
                async with session.request(method, base + path, data=data, headers=h) as r:
                    text = await r.text()
                    try:
                        return r.status, json.loads(text), r.headers
                    except ValueError:
                        return r.status, text, r.headers
            try:
                await test(call, base, ctl)
            finally:
                await runner.cleanup()

    asyncio.run(main())
    return ctl


def test_every_endpoint_kind_needs_a_token_with_the_right_role(tokens: tuple[Path, dict[str, str]]) -> None:
    f, t = tokens
    api = ApiConfig(auth_file=str(f))

    async def test(call: Call, base: str, ctl: FakeControl) -> None:
        assert (await call("GET", "/health"))[0] == 200  # public: liveness/readiness probes
        endpoints = [("GET", "/jobs", None), ("GET", "/jobs/x", None), ("DELETE", "/jobs/x", None),
                     ("GET", "/workers", None), ("GET", "/metrics", None), ("GET", "/ws", None),
                     ("POST", "/jobs", {"kind": "echo", "spec": {"message": "m"}})]
        for method, path, body in endpoints:
            for token in (None, "mst_not-a-token", t["alice"] + "x", t["alice"][:-1]):
                status, payload, headers = await call(method, path, token, body)
                assert status == 401, (method, path, token, payload)
                assert "bearer token" in payload["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        # read-only token: reads yes, submit/cancel no
        assert (await call("GET", "/jobs", t["viewer"]))[0] == 200
        assert (await call("GET", "/workers", t["viewer"]))[0] == 200
        assert (await call("GET", "/metrics", t["viewer"]))[0] == 200
        status, payload, _ = await call("POST", "/jobs", t["viewer"], {"kind": "echo", "spec": {"message": "m"}})
        assert status == 403 and payload["error"] == "token 'viewer' lacks the 'submit' role"
        assert (await call("DELETE", "/jobs/x", t["viewer"]))[0] == 403
        status, payload, _ = await call("POST", "/jobs", t["alice"], {"kind": "echo", "spec": {"message": "m"}})
        assert status == 202, payload
        assert (await call("GET", "/jobs", t["root"]))[0] == 200

    ctl = serve(api, test)
    assert [c["requester"] for c in ctl.commands] == ["alice"]


def test_non_admins_see_and_cancel_only_their_own_jobs(tokens: tuple[Path, dict[str, str]]) -> None:
    f, t = tokens

    async def test(call: Call, base: str, ctl: FakeControl) -> None:
        _, a, _ = await call("POST", "/jobs", t["alice"], {"kind": "echo", "spec": {}, "requester": "carol"})
        _, c, _ = await call("POST", "/jobs", t["carol"], {"kind": "echo", "spec": {}})
        ja, jc = a["job_id"], c["job_id"]
        assert ctl.table[ja]["requester"] == "alice"  # a non-admin cannot submit in another's name
        assert {j["job_id"] for j in (await call("GET", "/jobs", t["alice"]))[1]["jobs"]} == {ja}
        assert {j["job_id"] for j in (await call("GET", "/jobs", t["root"]))[1]["jobs"]} == {ja, jc}
        assert (await call("GET", f"/jobs/{jc}", t["alice"]))[0] == 404
        assert (await call("GET", f"/jobs/{jc}", t["root"]))[0] == 200
        assert (await call("DELETE", f"/jobs/{jc}", t["alice"]))[0] == 404
        assert (await call("DELETE", f"/jobs/{ja}", t["alice"]))[0] == 202
        assert (await call("DELETE", f"/jobs/{jc}", t["root"]))[0] == 202  # admin cancels others' jobs

    ctl = serve(ApiConfig(auth_file=str(f)), test)
    cancels = [(c["job_id"], c["requester"]) for c in ctl.commands if c["action"] == "CANCEL"]
    assert [r for _, r in cancels] == ["alice", "root"]


def test_cross_site_requests_are_refused() -> None:
    """Without tokens (loopback dev set-up) a cross-site page still cannot submit, cancel or subscribe."""
    api = ApiConfig(allowed_origins=ORIGIN)

    async def test(call: Call, base: str, ctl: FakeControl) -> None:
        body = json.dumps({"kind": "echo", "spec": {"message": "pwned"}}).encode()
        status, payload, _ = await call("POST", "/jobs", data=body,
                                        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert status == 403 and "'http://evil.example' is not allowed" in payload["error"]
        status, payload, _ = await call("DELETE", "/jobs/x", headers={"Origin": "http://evil.example"})
        assert status == 403
        # no Origin (CLI, curl): a text/plain body is still not read as a command
        status, payload, _ = await call("POST", "/jobs", data=body, headers={"Content-Type": "text/plain"})
        assert status == 415 and "application/json" in payload["error"]
        status, payload, _ = await call("POST", "/jobs", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415
        # an allowed origin with JSON works
        status, payload, _ = await call("POST", "/jobs", data=body, headers={"Content-Type": "application/json",
                                                                             "Origin": ORIGIN})
        assert status == 202, payload
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(base + "/ws", origin="http://evil.example")
            assert exc.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(base + "/ws", origin="null")  # sandboxed iframes / file:// pages
            ws = await s.ws_connect(base + "/ws", origin=ORIGIN)
            hello = json.loads((await ws.receive()).data)
            assert hello["type"] == "hello"
            await ws.close()

    ctl = serve(api, test)
    assert [c["spec_json"] for c in ctl.commands] == [json.dumps({"message": "pwned"})]  # only the allowed one


def test_websocket_needs_a_token_and_non_admins_get_only_their_jobs(tokens: tuple[Path, dict[str, str]]) -> None:
    f, t = tokens

    async def test(call: Call, base: str, ctl: FakeControl) -> None:
        ctl.table["ja"] = {"job_id": "ja", "requester": "alice", "state": "running"}
        ctl.table["jc"] = {"job_id": "jc", "requester": "carol", "state": "running"}
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(base + "/ws")
            assert exc.value.status == 401
            socks = {}
            for who in ("alice", "root"):
                ws = await s.ws_connect(base + "/ws", headers={"Authorization": f"Bearer {t[who]}"})
                assert json.loads((await ws.receive()).data)["type"] == "hello"
                await ws.send_str(json.dumps({"action": "subscribe", "types": ["task_status"]}))
                assert json.loads((await ws.receive()).data)["type"] == "subscribed"
                socks[who] = ws
            for jid in ("jc", "ja"):
                ctl.hub.publish("task_status", {"job_id": jid}, job_id=jid)
            got_alice = json.loads((await socks["alice"].receive(timeout=5)).data)
            assert got_alice["job_id"] == "ja"  # carol's job skipped
            got_root = [json.loads((await socks["root"].receive(timeout=5)).data)["job_id"] for _ in range(2)]
            assert got_root == ["jc", "ja"]
            # a client message over api.max_ws_message_bytes closes the socket (1009)
            await socks["alice"].send_str(json.dumps({"action": "subscribe", "symbols": ["x" * 3000]}))
            msg = await socks["alice"].receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert socks["alice"].close_code == 1009
            for ws in socks.values():
                await ws.close()

    serve(ApiConfig(auth_file=str(f), max_ws_message_bytes=2048), test)


def test_request_size_limit_and_rate_limit(tokens: tuple[Path, dict[str, str]]) -> None:
    f, t = tokens

    async def test(call: Call, base: str, ctl: FakeControl) -> None:
        big = json.dumps({"kind": "echo", "spec": {"message": "x" * 5000}}).encode()
        status, payload, _ = await call("POST", "/jobs", t["alice"], data=big,
                                        headers={"Content-Type": "application/json"})
        assert status == 413 and "4096" in payload["error"]
        results = [(await call("POST", "/jobs", t["alice"], {"kind": "echo", "spec": {}}))[:3:2] for _ in range(4)]
        assert [s for s, _ in results] == [202, 202, 202, 429]
        assert int(results[-1][1]["Retry-After"]) >= 1
        # the bucket is per token: carol is not limited by alice's submissions
        assert (await call("POST", "/jobs", t["carol"], {"kind": "echo", "spec": {}}))[0] == 202

    serve(ApiConfig(auth_file=str(f), max_body_bytes=4096, submit_rate_per_s=0.01, submit_burst=3), test)


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=2, monotonic=lambda: now[0])
    assert [rl.take("a"), rl.take("a")] == [0.0, 0.0]
    assert rl.take("a") == pytest.approx(0.5)
    now[0] = 0.5  # one token back after 1/rate seconds
    assert rl.take("a") == 0.0 and rl.take("a") > 0


def test_tokens_are_hashed_at_rest_and_compared_in_constant_time(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = TokenStore()
    tok = [store.add(f"u{k}", ["read"]) for k in range(5)]
    f = tmp_path / "t.json"
    store.save(f)
    text = f.read_text()
    assert all(t not in text for t in tok)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    stored = {e["name"]: e["sha256"] for e in json.loads(text)["tokens"]}
    assert stored["u2"] == hashlib.sha256(tok[2].encode()).hexdigest()  # independent digest
    assert all(len(t) >= 40 and t.startswith("mst_") for t in tok) and len(set(tok)) == 5
    loaded = TokenStore.load(f)
    calls: list[int] = []
    real = hmac.compare_digest
    monkeypatch.setattr(api_tokens.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert loaded.authenticate(tok[0]).name == "u0"  # type: ignore[union-attr]
    assert len(calls) == 5  # every stored digest compared, even after the first matched
    calls.clear()
    assert loaded.authenticate("mst_nope") is None and len(calls) == 5
    assert parse_bearer("Bearer abc") == "abc" and parse_bearer("Basic abc") is None and parse_bearer(None) is None


def test_auth_cli_prints_the_token_once_and_stores_its_digest(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    f = tmp_path / "tok.json"
    r = run_cli("auth", "add", "alice", "--roles", "submit,read", "--file", str(f))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert TokenStore.load(f).authenticate(token).name == "alice"  # type: ignore[union-attr]
    assert token not in f.read_text()
    r = run_cli("auth", "add", "bob", "--roles", "superuser", "--file", str(f))
    assert r.returncode == 2 and "roles must be a non-empty subset of submit, read, admin" in r.stderr
    r = run_cli("auth", "list", "--file", str(f))
    assert r.stdout.split() == ["alice", "read,submit"]


def test_exposure_warning_and_config_masking(tmp_path: Path) -> None:
    assert exposure_warning("127.0.0.1", ApiConfig()) is None and exposure_warning("::1", ApiConfig()) is None
    w = exposure_warning("0.0.0.0", ApiConfig())
    assert w is not None and "TLS" in w and "bearer tokens" in w
    assert exposure_warning("0.0.0.0", ApiConfig(auth_file="x", tls_cert_file="c", tls_key_file="k")) is None
    s = load_settings(environ={"MYSTOCKS_API__TOKEN": "mst_secret", "MYSTOCKS_API__ALLOWED_ORIGINS": ORIGIN})
    assert s.api.token == "mst_secret" and s.masked()["api"]["token"] == "***"
    assert s.api.origins() == (ORIGIN,)
    from mystocks_gpu.exceptions import ConfigError

    with pytest.raises(ConfigError, match="not an origin"):
        ApiConfig(allowed_origins="evil.example")
    with pytest.raises(ConfigError, match="go together"):
        ApiConfig(tls_cert_file="c")


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.one_of(st.binary(max_size=300), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False)),
    lambda i: st.one_of(st.lists(i, max_size=4), st.dictionaries(st.sampled_from(
        ["kind", "spec", "priority", "deadline_s", "deadline_ns", "requester", "bypass_cache", "job_id", "x"]), i,
        max_size=6)), max_leaves=12).map(lambda v: json.dumps(v).encode())), min_size=1, max_size=8))
def test_fuzzed_bodies_never_crash_the_server(bodies: list[bytes]) -> None:
    async def test(call: Call, base: str, ctl: FakeControl) -> None:
        for b in bodies:
            status, payload, _ = await call("POST", "/jobs", data=b, headers={"Content-Type": "application/json"})
            assert status in (202, 400, 409), (b, status, payload)
            assert isinstance(payload, dict) and (status == 202 or payload.get("error"))

    serve(ApiConfig(submit_burst=1000), test)
