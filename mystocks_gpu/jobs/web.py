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
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mystocks_gpu.infra.clock import Clock
from mystocks_gpu.jobs.heartbeat import read_workers_async
from mystocks_gpu.jobs.protocol import (
    FINAL,
    STATES,
    check_submit,
    job_view,
    make_command,
    new_job_id,
)
from mystocks_gpu.jobs.ws_hub import TYPES, Client
from mystocks_gpu.processors.exceptions import JobSpecError


class ControlView(Protocol):
    """What the web server reads of the control app (``jobs.control_app.ControlView`` provides it)."""

    ready: bool
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

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
#: how long POST /jobs waits for the control agent to take a command in before answering
ACCEPT_WAIT_S = 5.0


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
        self.feeds: dict[str, threading.Thread] = {}

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ctl.ready, "app_id": self.ctl.cfg.app_id,
                                  "jobs": len(self.ctl.table), "active": len(self.ctl.core.active),
                                  "workers": len(self.ctl.workers), "ws_clients": len(self.ctl.hub.clients),
                                  "uptime_s": round(self.ctl.clock.monotonic() - self.ctl.started, 1)})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def submit(self, request: web.Request) -> web.Response:
        if request.content_length and request.content_length > MAX_BODY:
            return _err(413, f"body over {MAX_BODY} bytes")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
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
        cmd = make_command("SUBMIT", job_id, body["kind"], spec, priority=body.get("priority", 0), deadline_ns=deadline,
                           requester=body.get("requester") or f"http:{request.remote}",
                           bypass_cache=body.get("bypass_cache", False))
        try:
            check_submit(cmd)
        except JobSpecError as exc:
            return _err(400, str(exc))
        if self.ctl.table.get(job_id):
            return _err(409, f"job {job_id} already exists")
        await self.ctl.produce_command(cmd)
        # answer once the control agent has taken the command in, so GET /jobs/{id} finds it
        end = time.monotonic() + ACCEPT_WAIT_S
        while not self.ctl.table.get(job_id) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        job = self.ctl.table.get(job_id)
        return web.json_response({"job_id": job_id, "status_url": f"/jobs/{job_id}",
                                  "state": job["state"] if job else "submitted"}, status=202)

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.ctl.table.get(job_id)
        if not job:
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
                if v and (not states or v["state"] in states) and (not kind or v["kind"] == kind)]
        jobs.sort(key=lambda j: j.get("submitted_ns") or 0, reverse=True)
        return web.json_response({"jobs": jobs[:limit], "count": len(jobs)})

    async def cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.ctl.table.get(job_id)
        if not job:
            return _err(404, f"no job {job_id!r}")
        if job["state"] in FINAL:
            return _err(409, f"job {job_id} is already {job['state']}")
        await self.ctl.produce_command(make_command("CANCEL", job_id, job["kind"], requester=f"http:{request.remote}",
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
        sock = web.WebSocketResponse(heartbeat=20)
        await sock.prepare(request)
        client = self.ctl.hub.connect()
        sender = asyncio.ensure_future(self._pump(sock, client))
        try:
            await sock.send_json({"type": "hello", "types": list(TYPES), "client_id": client.id})
            async for msg in sock:
                if msg.type != WSMsgType.TEXT:
                    continue
                await sock.send_json(self._control_message(client, msg.data))
        finally:
            sender.cancel()
            self.ctl.hub.disconnect(client)
        return sock

    def _control_message(self, client: Client, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            return {"type": "error", "error": "messages must be JSON objects"}
        action = req.get("action")
        types = req.get("types") or list(TYPES)
        if not isinstance(types, list) or any(t not in TYPES for t in types):
            return {"type": "error", "error": f"types must be a list of {', '.join(TYPES)}"}
        if action == "subscribe":
            for name in ("symbols", "job_ids"):
                if not isinstance(req.get(name, []), list):
                    return {"type": "error", "error": f"{name} must be a list"}
            client.types = set(types)
            client.symbols = {str(s) for s in req.get("symbols", [])}
            client.job_ids = {str(j) for j in req.get("job_ids", [])}
            for t in ("market_data", "calc_result"):
                if t in client.types:
                    self._ensure_feed(t)
            return {"type": "subscribed", "types": sorted(client.types), "symbols": sorted(client.symbols),
                    "job_ids": sorted(client.job_ids)}
        if action == "unsubscribe":
            client.types -= set(types)
            return {"type": "subscribed", "types": sorted(client.types), "symbols": sorted(client.symbols),
                    "job_ids": sorted(client.job_ids)}
        return {"type": "error", "error": "action must be subscribe or unsubscribe"}

    async def _pump(self, sock: web.WebSocketResponse, client: Client) -> None:
        try:
            while True:
                msg = await client.queue.get()
                if sock.closed:
                    return
                await sock.send_str(json.dumps(msg, default=str))
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            return

    def _ensure_feed(self, mtype: str) -> None:
        """Start (once) a thread that tails the topic behind ``market_data`` / ``calc_result``."""
        t = self.feeds.get(mtype)
        if t is not None and t.is_alive():
            return
        topic = self.ctl.cfg.market_data_topic if mtype == "market_data" else self.ctl.cfg.calc_result_topic
        loop = asyncio.get_running_loop()
        t = threading.Thread(target=_tail, args=(self.ctl, mtype, topic, loop), daemon=True, name=f"feed-{mtype}")
        self.feeds[mtype] = t
        t.start()


def _tail(ctl: ControlView, mtype: str, topic: str, loop: asyncio.AbstractEventLoop) -> None:
    """Tail ``topic`` from its end, decode, hand to the hub; stops when nobody subscribes."""
    import uuid

    from confluent_kafka import OFFSET_END, TopicPartition

    from mystocks_gpu.infra.kafka_clients import make_consumer

    c = make_consumer(ctl.settings.kafka, f"mystocks-ws-{mtype}-{uuid.uuid4().hex[:6]}",
                      **{"isolation.level": "read_uncommitted"})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            log.warning("WebSocket feed %s: topic %s does not exist", mtype, topic)
            return
        c.assign([TopicPartition(topic, p, OFFSET_END) for p in md.topics[topic].partitions])
        idle = 0.0
        while True:
            msgs = c.consume(500, timeout=0.2)
            if not ctl.hub.wants(mtype):
                idle += 0.2
                if idle > 5:
                    return
                continue
            idle = 0.0
            for m in msgs:
                if m.error() or m.value() is None:
                    continue
                try:
                    rec = ctl.codec.decode(m.value())
                except Exception:
                    continue
                sym = m.key().decode(errors="replace") if m.key() else rec.get("symbol")
                loop.call_soon_threadsafe(_publish, ctl, mtype, rec, sym)
    except Exception as exc:
        log.warning("WebSocket feed %s stopped: %s", mtype, exc)
    finally:
        c.close()


def _publish(ctl: ControlView, mtype: str, rec: dict[str, Any], symbol: str | None) -> None:
    ctl.hub.publish(mtype, rec, symbol=symbol)


def build_web_app(ctl: ControlView) -> web.Application:
    """The aiohttp application of the control app."""
    api = Api(ctl)
    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY)
    app.add_routes([
        web.get("/health", api.health), web.get("/metrics", api.metrics),
        web.post("/jobs", api.submit), web.get("/jobs", api.list_jobs),
        web.get("/jobs/{job_id}", api.get_job), web.delete("/jobs/{job_id}", api.cancel),
        web.get("/workers", api.workers), web.get("/ws", api.ws),
    ])
    return app


async def serve(ctl: ControlView) -> None:
    """Serve until cancelled (an app task)."""
    runner = web.AppRunner(build_web_app(ctl), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ctl.cfg.web_host, ctl.cfg.web_port)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    ctl.web_port = sockets[0].getsockname()[1] if sockets else ctl.cfg.web_port
    log.info("control web server on http://%s:%s", ctl.cfg.web_host, ctl.web_port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
