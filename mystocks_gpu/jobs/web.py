"""The control app's web server (aiohttp): REST for jobs and workers, ``/ws`` real-time stream.

Routes (JSON everywhere; errors are ``{"error": "..."}`` with a 4xx status):

* ``POST /jobs`` -- body ``{"kind", "spec", "priority"?, "deadline_s"? (relative, seconds) |
  "deadline_ns"? (absolute), "requester"?, "bypass_cache"?, "job_id"?}``; validates, produces a
  SUBMIT command, answers 202 ``{"job_id", "status_url", "state"}`` once the agent has it.
* ``GET /jobs/{id}`` -- the job record; ``GET /jobs?state=queued,running&kind=...&limit=N``.
* ``DELETE /jobs/{id}`` -- produces a CANCEL command (202); 404 unknown, 409 already final.
* ``GET /workers`` -- live workers and their devices (heartbeats).
* ``GET /health``, ``GET /metrics`` (Prometheus text).
* ``GET /ws`` -- WebSocket, see :mod:`.hub` for the protocol.

Security (:mod:`.web_security`, settings ``[api]``): Origin allow-list, JSON content type, body and
WebSocket message limits, bearer tokens with roles when ``api.auth_file`` is set, a submission rate
limit per token, TLS when ``api.tls_cert_file`` is set. Non-admin tokens see and cancel only the
jobs they submitted (their name is the job's ``requester``); others' jobs are "not found".
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.jobs import job_metrics as m
from mystocks_gpu.jobs.heartbeat import read_workers_async
from mystocks_gpu.jobs.protocol import (
    FINAL,
    STATES,
    check_submit,
    job_view,
    make_command,
    new_job_id,
)
from mystocks_gpu.jobs.web_security import (
    WebSecurity,
    exposure_warning,
    identity,
    server_ssl_context,
)
from mystocks_gpu.jobs.ws_hub import TYPES, Client, dumps
from mystocks_gpu.jobs.ws_schemas import SEVERITIES
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.schemas.validate import validate


class ControlView(Protocol):
    """What the web server reads of the control app (``jobs.control_app.ControlApp`` provides it)."""

    ready: bool
    redis_ok: bool
    cfg: Any
    settings: Any
    table: Any
    core: Any
    workers: Any
    hub: Any
    redis: Any
    codec: Any
    started: float
    clock: Clock
    web_port: int

    async def produce_command(self, cmd: dict[str, Any]) -> None:
        """Produce a command record to ``cmd.jobs``."""

    def not_ready_reasons(self) -> list[str]:
        """Why the app is not ready (empty when it is)."""

    def live_workers(self) -> list[Any]:
        """Workers with a fresh heartbeat (the ones dispatched to)."""

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
#: how long POST /jobs waits for the control agent to take a command in before answering
ACCEPT_WAIT_S = 5.0
#: how long a subscribe waits for its topic feed to be positioned, s
FEED_START_S = 15.0
#: a feed nobody subscribes to stops after this many seconds
FEED_IDLE_S = 5.0


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _err(exc.status, exc.reason or "error")
        raise


class Api:
    """Request handlers bound to one control app (:class:`ControlView`)."""

    def __init__(self, ctl: ControlView) -> None:
        self.ctl = ctl
        self.security = WebSecurity(ctl.settings.api)
        self.feeds: dict[str, _Feed] = {}
        self.sockets: set[web.WebSocketResponse] = set()

    async def health(self, request: web.Request) -> web.Response:
        """200 ``{"ready": true, ...}`` when the app can take and run jobs; 503 with ``reasons`` when
        not (still recovering the job table, or Redis unavailable)."""
        reasons = self.ctl.not_ready_reasons()
        body = {"ready": not reasons, "reasons": reasons, "app_id": self.ctl.cfg.app_id,
                "redis": "ok" if self.ctl.redis_ok else "unavailable", "jobs": len(self.ctl.table),
                "active": len(self.ctl.core.active), "workers": len(self.ctl.workers),
                "live_workers": len(self.ctl.live_workers()),
                "ws_clients": self.ctl.hub.count(),
                "uptime_s": round(self.ctl.clock.monotonic() - self.ctl.started, 1)}
        return web.json_response(body, status=503 if reasons else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _visible(self, request: web.Request, job: Any) -> bool:
        """Whether the caller may see ``job``: admins (and anonymous callers) see every job, others
        only those they submitted."""
        who = identity(request)
        return who.admin or (job or {}).get("requester") == who.name

    async def submit(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return _err(400, "body must be a JSON object")
        if not isinstance(body, dict):
            return _err(400, "body must be a JSON object")
        allowed = {"kind", "spec", "priority", "deadline_s", "deadline_ns", "requester", "bypass_cache", "job_id"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return _err(400, f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        if not isinstance(body.get("kind"), str) or not body["kind"]:
            return _err(400, "field 'kind' (string) is required")
        spec = body.get("spec", {})
        if not isinstance(spec, dict):
            return _err(400, "field 'spec' must be a JSON object")
        for name, typ in (("priority", int), ("deadline_s", (int, float)), ("deadline_ns", int), ("requester", str),
                          ("bypass_cache", bool), ("job_id", str)):
            if name in body and (not isinstance(body[name], typ) or (typ is int and isinstance(body[name], bool))):
                return _err(400, f"field {name!r} has the wrong type")
        if "deadline_s" in body and "deadline_ns" in body:
            return _err(400, "give deadline_s or deadline_ns, not both")
        deadline = body.get("deadline_ns")
        if "deadline_s" in body:
            if body["deadline_s"] <= 0:
                return _err(400, "deadline_s must be > 0")
            deadline = self.ctl.clock.now_ns() + int(body["deadline_s"] * 1e9)
        job_id = body.get("job_id") or new_job_id()
        who = identity(request)
        requester = (body.get("requester") or f"http:{request.remote}") if who.admin else who.name
        cmd = make_command("SUBMIT", job_id, body["kind"], spec, priority=body.get("priority", 0), deadline_ns=deadline,
                           requester=requester,
                           bypass_cache=body.get("bypass_cache", False))
        try:
            check_submit(cmd)
        except JobSpecError as exc:
            return _err(400, str(exc))
        if self.ctl.table.get(job_id):
            return _err(409, f"job {job_id} already exists")
        await self.ctl.produce_command(cmd)
        # answer once the control agent has taken the command in, so GET /jobs/{id} finds it
        end = self.ctl.clock.monotonic() + ACCEPT_WAIT_S
        while not self.ctl.table.get(job_id) and self.ctl.clock.monotonic() < end:
            await asyncio.sleep(0.01)
        job = self.ctl.table.get(job_id)
        return web.json_response({"job_id": job_id, "status_url": f"/jobs/{job_id}",
                                  "state": job["state"] if job else "submitted"}, status=202)

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.ctl.table.get(job_id)
        if not job or not self._visible(request, job):
            return _err(404, f"no job {job_id!r}")
        return web.json_response(job_view(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        states = {s for s in request.query.get("state", "").split(",") if s}
        bad = sorted(states - set(STATES))
        if bad:
            return _err(400, f"unknown state(s) {', '.join(bad)}; states: {', '.join(STATES)}")
        kind = request.query.get("kind")
        try:
            limit = int(request.query.get("limit", "1000"))
            if limit < 1:
                raise ValueError
        except ValueError:
            return _err(400, "limit must be a positive integer")
        jobs = [job_view(v) for v in self.ctl.table.values()
                if v and self._visible(request, v) and (not states or v["state"] in states) and (not kind or v["kind"] == kind)]
        jobs.sort(key=lambda j: j.get("submitted_ns") or 0, reverse=True)
        return web.json_response({"jobs": jobs[:limit], "count": len(jobs)})

    async def cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.ctl.table.get(job_id)
        if not job or not self._visible(request, job):
            return _err(404, f"no job {job_id!r}")
        if job["state"] in FINAL:
            return _err(409, f"job {job_id} is already {job['state']}")
        await self.ctl.produce_command(make_command("CANCEL", job_id, job["kind"],
                                                    requester=identity(request).name if self.security.store is not None
                                                    else f"http:{request.remote}",
                                                    clock=self.ctl.clock))
        return web.json_response({"job_id": job_id, "cancel": "requested"}, status=202)

    async def workers(self, request: web.Request) -> web.Response:
        try:
            ws = await read_workers_async(self.ctl.redis, self.ctl.cfg.namespace) if self.ctl.redis else self.ctl.workers
        except Exception as exc:
            return _err(503, f"cannot read heartbeats from Redis: {exc}")
        return web.json_response({"workers": [w.to_dict() for w in ws], "count": len(ws)})

    # ---- websocket ---------------------------------------------------------------------
    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(heartbeat=20, max_msg_size=self.ctl.settings.api.max_ws_message_bytes)
        await sock.prepare(request)
        client = self.ctl.hub.connect()
        who = identity(request)
        if not who.admin:  # task statuses and job alerts of its own jobs only
            client.allow_job = lambda job_id: self._visible_id(job_id, who.name)
        self.sockets.add(sock)
        sender = asyncio.ensure_future(self._pump(sock, client))
        try:
            await sock.send_str(dumps({"type": "hello", "types": list(TYPES), "client_id": client.id,
                                       "queue_max": client.queue_max}))
            async for msg in sock:
                if msg.type != WSMsgType.TEXT:
                    continue
                await sock.send_str(dumps(await self._control_message(client, msg.data)))
        finally:
            sender.cancel()
            self.sockets.discard(sock)
            self.ctl.hub.disconnect(client)
        return sock

    def _visible_id(self, job_id: str | None, name: str) -> bool:
        job = self.ctl.table.get(job_id) if job_id else None
        return job is not None and bool(job) and job.get("requester") == name

    async def _control_message(self, client: Client, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            return {"type": "error", "error": "messages must be JSON objects"}
        action = req.get("action")
        types = req.get("types") or list(TYPES)
        if not isinstance(types, list) or any(t not in TYPES for t in types):
            return {"type": "error", "error": f"types must be a list of {', '.join(TYPES)}"}
        if action == "subscribe":
            for name in ("symbols", "job_ids", "severities"):
                if not isinstance(req.get(name, []), list):
                    return {"type": "error", "error": f"{name} must be a list"}
            bad = sorted({str(v).upper() for v in req.get("severities", [])} - set(SEVERITIES))
            if bad:
                return {"type": "error", "error": f"unknown severities {bad}; severities: {', '.join(SEVERITIES)}"}
            # a feed is positioned at its topic's end before the ack: what is produced after the
            # ack reaches the client
            for t in ("market_data", "calc_result"):
                if t in types:
                    err = await self._ensure_feed(t)
                    if err is not None:
                        return {"type": "error", "error": err}
            self.ctl.hub.subscribe(client, types, (str(s) for s in req.get("symbols", [])),
                                   (str(j) for j in req.get("job_ids", [])), (str(v) for v in req.get("severities", [])))
        elif action == "unsubscribe":
            self.ctl.hub.unsubscribe(client, types)
        else:
            return {"type": "error", "error": "action must be subscribe or unsubscribe"}
        return {"type": "subscribed", "types": sorted(client.types), "symbols": sorted(client.symbols),
                "job_ids": sorted(client.job_ids), "severities": sorted(client.severities)}

    async def _pump(self, sock: web.WebSocketResponse, client: Client) -> None:
        try:
            while True:
                msg = await client.queue.get()
                if sock.closed:
                    return
                notice = client.drop_notice()
                if notice is not None:
                    m.WS_DROPPED.inc(notice["count"])
                    await sock.send_str(dumps(notice))
                await sock.send_str(dumps(msg))
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            return

    async def _ensure_feed(self, mtype: str) -> str | None:
        """Start (once) the thread that tails the topic behind ``market_data`` / ``calc_result`` and
        wait until it is positioned; returns an error message when it cannot start."""
        feed = self.feeds.get(mtype)
        if feed is None or not feed.thread.is_alive():
            topic = self.ctl.cfg.market_data_topic if mtype == "market_data" else self.ctl.cfg.calc_result_topic
            feed = _Feed(self.ctl, mtype, topic, asyncio.get_running_loop())
            self.feeds[mtype] = feed
            feed.thread.start()
        # a feed about to stop for lack of subscribers must not stop before this subscription lands
        feed.keep_until = self.ctl.clock.monotonic() + 2 * FEED_START_S
        end = self.ctl.clock.monotonic() + FEED_START_S
        while not feed.ready.is_set() and feed.thread.is_alive() and self.ctl.clock.monotonic() < end:
            await asyncio.sleep(0.02)
        if feed.ready.is_set():
            return None
        return f"{mtype} feed unavailable: {feed.error or f'not positioned within {FEED_START_S:.0f} s'}"

    async def close_sockets(self) -> None:
        """Close every WebSocket with 1001 (going away): the server is shutting down."""
        socks = list(self.sockets)
        if socks:
            await asyncio.wait([asyncio.ensure_future(s.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"))
                                for s in socks], timeout=2.0)
        for f in self.feeds.values():
            f.stop.set()


class _Feed:
    """A thread tailing ``topic`` from its end: decodes, validates (``schemas.validate``), hands
    each record to the hub on the event loop; exits when nobody subscribes for a while."""

    def __init__(self, ctl: ControlView, mtype: str, topic: str, loop: asyncio.AbstractEventLoop) -> None:
        self.ctl, self.mtype, self.topic, self.loop = ctl, mtype, topic, loop
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error = ""
        self.invalid = 0
        #: monotonic time before which the feed never stops for lack of subscribers
        self.keep_until = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"feed-{mtype}")

    def _run(self) -> None:
        import uuid

        from confluent_kafka import TopicPartition

        from mystocks_gpu.infra.kafka_clients import consume_ready, watermarks
        from mystocks_gpu.streams.broker_watch import watched_consumer

        ctl = self.ctl
        conf: dict[str, Any] = {"isolation.level": "read_uncommitted"}
        c = watched_consumer(ctl.settings.kafka, f"mystocks-ws-{self.mtype}-{uuid.uuid4().hex[:6]}",
                             f"websocket feed {self.mtype}",  # polled below: librdkafka#5301's watch is served
                             **conf)
        try:
            md = c.list_topics(self.topic, timeout=10)
            if self.topic not in md.topics or md.topics[self.topic].error is not None:
                self.error = f"topic {self.topic} does not exist"
                log.warning("WebSocket feed %s: %s", self.mtype, self.error)
                return
            tps = []
            for p in md.topics[self.topic].partitions:  # explicit end offsets: nothing after `ready` is missed
                _, hi = watermarks(c, TopicPartition(self.topic, p), 10)
                tps.append(TopicPartition(self.topic, p, hi))
            c.assign(tps)
            self.ready.set()
            idle_since: float | None = None
            while not self.stop.is_set():
                msgs = consume_ready(c, 500, 0.2)
                if not ctl.hub.wants(self.mtype):
                    now = ctl.clock.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since > FEED_IDLE_S and now > self.keep_until:
                        return
                    continue
                idle_since = None
                batch = [x for x in (self._record(m) for m in msgs) if x is not None]
                if batch:
                    self.loop.call_soon_threadsafe(_publish, ctl, self.mtype, batch)
        except Exception as exc:
            self.error = str(exc)
            log.warning("WebSocket feed %s stopped: %s", self.mtype, exc)
        finally:
            self.ready.clear()
            c.close()

    def _record(self, m: Any) -> tuple[dict[str, Any], str | None] | None:
        if m.error() or m.value() is None:
            return None
        try:
            info, rec = self.ctl.codec.decode_with_info(m.value())
            validate(info.name, rec)
        except Exception as exc:  # undecodable or invalid: never forwarded as data
            self.invalid += 1
            m_ws_invalid(self.mtype)
            if self.invalid <= 3 or self.invalid % 1000 == 0:
                log.warning("WebSocket feed %s: record at %s:%s not forwarded (%s; %d so far)", self.mtype,
                            m.partition(), m.offset(), exc, self.invalid)
            return None
        sym = m.key().decode(errors="replace") if m.key() else rec.get("symbol")
        return rec, sym


def m_ws_invalid(mtype: str) -> None:
    """Count a feed record that was not forwarded."""
    m.WS_INVALID.labels(mtype).inc()


def _publish(ctl: ControlView, mtype: str, batch: list[tuple[dict[str, Any], str | None]]) -> None:
    for rec, symbol in batch:
        ctl.hub.publish(mtype, rec, symbol=symbol)


def build_web_app(ctl: ControlView, api: Api | None = None) -> web.Application:
    """The aiohttp application of the control app."""
    api = api or Api(ctl)
    app = web.Application(middlewares=[api.security.middleware, _json_errors],
                          client_max_size=ctl.settings.api.max_body_bytes)
    app.add_routes([
        web.get("/health", api.health), web.get("/metrics", api.metrics),
        web.post("/jobs", api.submit), web.get("/jobs", api.list_jobs),
        web.get("/jobs/{job_id}", api.get_job), web.delete("/jobs/{job_id}", api.cancel),
        web.get("/workers", api.workers), web.get("/ws", api.ws),
    ])
    return app


async def serve(ctl: ControlView) -> None:
    """Serve until cancelled (an app task)."""
    api = Api(ctl)
    runner = web.AppRunner(build_web_app(ctl, api), access_log=None)
    await runner.setup()
    warning = exposure_warning(ctl.cfg.web_host, ctl.settings.api)
    if warning:
        log.warning(warning)
    tls = server_ssl_context(ctl.settings.api)
    site = web.TCPSite(runner, ctl.cfg.web_host, ctl.cfg.web_port, ssl_context=tls)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    ctl.web_port = sockets[0].getsockname()[1] if sockets else ctl.cfg.web_port
    log.info("control web server on %s://%s:%s%s", "https" if tls else "http", ctl.cfg.web_host, ctl.web_port,
             " (bearer tokens required)" if api.security.store is not None else "")
    try:
        await asyncio.Event().wait()
    finally:
        await api.close_sockets()
        await runner.cleanup()
