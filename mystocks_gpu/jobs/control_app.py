"""The control app on faust-streaming.

One agent consumes ``cmd.jobs`` (client commands) and ``jobs.events`` (worker reports); a timer
reads worker heartbeats from Redis and runs the scheduler, the lost-worker check and the deadline
watcher; another timer watches dead-letter topics. All of them change the job table (a Faust
table, changelog-backed, in-memory store) only through :class:`ControlCore` under one asyncio
lock, and publish ``job.status`` / dispatch / ``alerts`` records with Faust's producer.

The web server (REST + WebSocket) is aiohttp started as an app task (Faust's own web server is
disabled: it has no WebSocket support we could use cleanly); see :mod:`.web`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import faust
import redis.asyncio as aredis

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.exceptions import BrokerUnreachable
from mystocks_gpu.jobs import job_metrics as m
from mystocks_gpu.jobs.alerts import ALERT_SCHEMA, AlertMonitor, make_alert
from mystocks_gpu.jobs.control_state import ControlCore, Effects, submit_cache_key
from mystocks_gpu.jobs.faust_security import faust_credentials
from mystocks_gpu.jobs.heartbeat import read_workers_async
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.protocol import (
    COMMAND_SCHEMA,
    STATUS_SCHEMA,
    check_submit,
    parse_headers,
    status_to_json,
)
from mystocks_gpu.jobs.result_cache import DataVersions, ResultCache
from mystocks_gpu.jobs.scheduler import WorkerInfo
from mystocks_gpu.jobs.ws_hub import Hub
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.schemas import AvroCodec, DecodeError, schema_store
from mystocks_gpu.streams.dead_letters import dlq_headers, dlq_topic

log = logging.getLogger(__name__)
#: consumer group session timeout of the control app, s: a SIGKILLed control app's partitions are
#: reassigned this long after its death. 6 s is the lowest value a broker accepts by default
#: (``group.min.session.timeout.ms``); Faust's default (60 s) made a restart after a crash take ~60 s
SESSION_TIMEOUT_S = 6.0
#: group heartbeat interval (< a third of the session timeout), s
HEARTBEAT_INTERVAL_S = 1.0
#: how long a rebalance waits for members to rejoin, s
REBALANCE_TIMEOUT_S = 15.0
#: result-cache writes kept while Redis is down (oldest dropped beyond this)
CACHE_PENDING_MAX = 10_000


class Publisher:
    """librdkafka producer used for every record the control app publishes (statuses, dispatches,
    alerts, commands, dead letters). Faust's aiokafka producer only writes the table changelog:
    sending to many, newly created per-worker topics through aiokafka narrows its metadata to
    the last topic and can spin in a metadata loop, stalling every other send."""

    def __init__(self, settings: Settings) -> None:
        from mystocks_gpu.streams.broker_watch import watched_producer

        # polled all the time below, so the broker watch's statistics never pile up (librdkafka#5301)
        conf: dict[str, Any] = {"linger.ms": 1, "compression.type": "none"}
        self.producer = watched_producer(settings.kafka, "control publisher", **conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="control-publisher", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def send(self, topic: str, key: bytes | None, value: bytes | None, *, timestamp_ns: int | None = None,
             headers: list[tuple[str, bytes]] | None = None, on_delivery: Any = None) -> None:
        """Queue one record (non-blocking; retries while librdkafka's queue is full)."""
        kw: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": on_delivery}
        if timestamp_ns:
            kw["timestamp"] = timestamp_ns // 1_000_000
        while True:
            try:
                self.producer.produce(topic, **kw)
                return
            except BufferError:
                time.sleep(0.01)

    async def send_and_wait(self, topic: str, key: bytes, value: bytes, timestamp_ns: int | None = None) -> None:
        """Queue one record and wait for the broker's ack (:class:`BrokerUnreachable` on failure)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done(err: Any, msg: Any) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if err is not None:
                    fut.set_exception(BrokerUnreachable(f"{topic}: {err.str()}"))
                else:
                    fut.set_result(None)
            loop.call_soon_threadsafe(settle)

        self.send(topic, key, value, timestamp_ns=timestamp_ns, on_delivery=done)
        await fut

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, stop polling."""
        self._stop.set()
        self.producer.flush(timeout_s)


class ControlApp:
    """Builds the Faust app and holds what the agent, timers and web handlers share."""

    def __init__(self, settings: Settings, cfg: JobsConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.settings, self.cfg = settings, cfg
        self.codec = AvroCodec(schema_store(settings))
        (Path(tempfile.gettempdir()) / "mystocks-faust").mkdir(parents=True, exist_ok=True)
        broker = ";".join(f"kafka://{s.strip()}" for s in settings.kafka.bootstrap_servers.split(","))
        self.app = faust.App(
            cfg.app_id, broker=broker, broker_credentials=faust_credentials(settings.kafka), store="memory://", topic_partitions=1, web_enabled=False,
            consumer_auto_offset_reset="latest", processing_guarantee="at_least_once", broker_commit_every=1,
            broker_commit_interval=1.0, producer_linger_ms=1, table_cleanup_interval=60.0,
            datadir=str(Path(tempfile.gettempdir()) / "mystocks-faust" / cfg.app_id), autodiscover=False,
            topic_allow_declare=True,
            # a restart after a crash waits for the dead member's session to expire before the
            # group rebalances: Faust's 60 s default made that ~60 s (see SESSION_TIMEOUT_S)
            broker_session_timeout=SESSION_TIMEOUT_S, broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
            broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
        )
        self.table = self.app.Table("jobs", default=None, partitions=1, use_partitioner=True,
                                    schema=faust.Schema(key_serializer="json", value_serializer="json"),
                                    help="job id -> job record")
        # one changelog partition: name it, so a write never needs the producer's topic metadata
        # (eager partitioning fails while a broker restarts and metadata is momentarily empty)
        self.table.partition_for_key = lambda key: 0  # type: ignore[method-assign]
        self.source = self.app.topic(cfg.commands_topic, cfg.events_topic, key_serializer="raw",
                                     value_serializer="raw", acks=True)
        self.publisher: Publisher | None = None
        self.core = ControlCore(self.table, cfg.scheduler(), clock, cfg.reject_unfit_after_s)
        self.monitor = AlertMonitor(cfg.thresholds(), clock)
        self.hub = Hub(clock, cfg.ws_queue_max)
        #: the workers of the last successful heartbeat read (``/workers``, ``/health``)
        self.workers: list[WorkerInfo] = []
        #: worker id -> (its last heartbeat, monotonic time it was last read from Redis)
        self._seen: dict[str, tuple[WorkerInfo, float]] = {}
        self.redis: aredis.Redis | None = None
        self.cache: ResultCache | None = None
        self.versions: DataVersions | None = None
        #: cache writes that failed (Redis down): retried every tick until stored
        self._cache_pending: dict[str, dict[str, Any]] = {}
        self._lock: asyncio.Lock | None = None
        self.ready = False
        #: False from the first failed Redis call until a heartbeat read succeeds again
        self.redis_ok = False
        self._redis_checked = False
        self._redis_down_since: float | None = None
        self._redis_up_since = clock.monotonic()
        self.web_port: int = 0  # the bound port, once the web server listens
        self.started = clock.monotonic()
        self._wire()

    # ---- wiring ------------------------------------------------------------------------
    def _wire(self) -> None:
        app = self.app

        @app.agent(self.source, name="control")
        async def control(stream: Any) -> None:
            async for event in stream.events():
                await self._guarded(self._on_event, event)

        @app.timer(self.cfg.tick_interval_s, name="control-tick")
        async def tick() -> None:
            self._ensure_redis()
            alerts = await self._poll_workers()  # Redis I/O outside the lock: an outage never stalls events
            await self._guarded(self._tick, alerts)
            await self._flush_cache()

        @app.timer(self.cfg.dlq_check_interval_s, name="dlq-watch")
        async def dlq_watch() -> None:
            await self._dlq_check()

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def close_publisher(app: Any, **kwargs: Any) -> None:
            if self.publisher is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.publisher.close)

        @app.task
        async def web() -> None:
            from mystocks_gpu.jobs.web import serve

            await serve(self)

    @property
    def pub(self) -> Publisher:
        """The librdkafka publisher (created on first use, inside the running app)."""
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        return self.publisher

    @property
    def lock(self) -> asyncio.Lock:
        """The lock that serialises every job-table transition."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _ensure_redis(self) -> None:
        if self.redis is None:
            t = self.cfg.redis_timeout_s
            self.redis = aredis.Redis.from_url(self.settings.redis.url, socket_timeout=t, socket_connect_timeout=t,
                                               retry_on_timeout=False)
            self.cache = ResultCache(self.redis, self.cfg.namespace, self.cfg.cache_ttl_s)

    def not_ready_reasons(self) -> list[str]:
        """Why the app cannot take and run jobs now (empty when ready): ``/health``."""
        out = []
        if not self.ready:
            out.append("starting: job table not recovered or partitions not assigned yet")
        if not self.redis_ok:
            down = "" if self._redis_down_since is None else \
                f" for {self.clock.monotonic() - self._redis_down_since:.0f} s"
            out.append(f"Redis unavailable{down}: worker heartbeats and results cannot be read")
        return out

    async def _guarded(self, fn: Any, *args: Any) -> None:
        async with self.lock:
            self._ensure_redis()
            if not self.core._indexed and self._recovered():
                self.core.reindex()
            try:
                await fn(*args)
            except Exception:  # one bad event must not stop the control loop
                log.exception("control step %s failed", getattr(fn, "__name__", fn))

    def _recovered(self) -> bool:
        """True once Faust has restored the job table from its changelog."""
        return bool(self.app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]

    # ---- events ------------------------------------------------------------------------
    async def _on_event(self, event: Any) -> None:
        topic = event.message.topic
        raw = event.value
        if topic == self.cfg.commands_topic:
            try:
                cmd = self.codec.decode(raw, expect=COMMAND_SCHEMA)
            except DecodeError as exc:
                await self._dead_letter(event, type(exc).__name__, str(exc))
                return
            if not cmd.get("job_id"):
                await self._dead_letter(event, "InvalidCommand", "command has an empty job_id")
                return
            if cmd["action"] == "CANCEL":
                await self.apply(self.core.cancel(cmd["job_id"], cmd.get("requester", "")))
                return
            cached = None
            version = await self._data_version(cmd)
            key, _ = submit_cache_key(cmd, version) if version is not None else (None, None)
            if key and not cmd.get("bypass_cache") and self.cache is not None and self.redis_ok \
                    and cmd["job_id"] not in self.table:
                try:
                    cached = await self.cache.get(key)
                except Exception as exc:
                    log.warning("result cache lookup failed: %s", exc)
            live = self.live_workers()
            n_dev = sum(len(w.devices) for w in live) or 1
            eff = self.core.submit(cmd, cached=cached, n_devices=n_dev, data_version=version,
                                   cacheable=version is not None)
            await self.apply(eff.extend(self.core.schedule(live)))
        elif topic == self.cfg.events_topic:
            try:
                st = self.codec.decode(raw, expect=STATUS_SCHEMA)
            except DecodeError as exc:
                log.warning("undecodable worker report at %s: %s", event.message.offset, exc)
                return
            eff = self.core.report(st, parse_headers(event.headers or {}))
            if any(s["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for s in eff.statuses):
                eff.extend(self.core.schedule(self.live_workers()))
            await self.apply(eff)

    async def _data_version(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The version of the data a SUBMIT reads (``result_cache.DataVersions``), read off the event
        loop; ``{}`` for an invalid submit (it is rejected anyway), None when it cannot be read."""
        try:
            spec = check_submit(cmd)
        except JobSpecError:
            return {}
        if self.versions is None:
            self.versions = DataVersions(self.settings.kafka)
        return await asyncio.get_running_loop().run_in_executor(None, self.versions.of, spec.data_range())


    def live_workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat was read from Redis within the heartbeat TTL: the only ones
        dispatched to (while Redis is down, the last-read heartbeats go stale and dispatching stops)."""
        now = self.clock.monotonic()
        return sorted((w for w, seen in self._seen.values() if now - seen <= self.cfg.heartbeat_ttl_s),
                      key=lambda w: w.worker_id)

    async def _poll_workers(self) -> list[dict[str, Any]]:
        """Read the heartbeats; track Redis availability (edge-triggered REDIS_UNAVAILABLE alerts)."""
        assert self.redis is not None
        now = self.clock.monotonic()
        try:
            workers = await asyncio.wait_for(read_workers_async(self.redis, self.cfg.namespace),
                                             timeout=self.cfg.redis_timeout_s * 2)
        except Exception as exc:
            m.REDIS_UP.set(0)
            if self.redis_ok or not self._redis_checked:
                self.redis_ok, self._redis_checked, self._redis_down_since = False, True, now
                log.error("Redis unavailable (%s): not ready; dispatching stops once heartbeats are %.0f s old",
                          exc or type(exc).__name__, self.cfg.heartbeat_ttl_s)
                return [make_alert("REDIS_UNAVAILABLE", "CRITICAL", "redis",
                                   f"control app {self.cfg.app_id} cannot reach Redis: {exc or type(exc).__name__}",
                                   labels={"app_id": self.cfg.app_id}, clock=self.clock)]
            return []
        alerts = []
        m.REDIS_UP.set(1)
        if not self.redis_ok:
            if self._redis_down_since is not None:
                outage = now - self._redis_down_since
                log.warning("Redis reachable again after %.1f s", outage)
                alerts.append(make_alert("REDIS_UNAVAILABLE", "INFO", "redis",
                                         f"Redis reachable again after {outage:.1f} s", outage,
                                         labels={"app_id": self.cfg.app_id, "resolved": "true"}, clock=self.clock))
            self.redis_ok, self._redis_checked, self._redis_down_since, self._redis_up_since = True, True, None, now
        gone = set(self._seen) - {w.worker_id for w in workers}
        for w in workers:
            self._seen[w.worker_id] = (w, now)
        for wid in gone:
            del self._seen[wid]
        if gone:
            self.monitor.forget_workers(gone)  # no gauges of lost workers kept forever
        self.workers = workers
        return alerts

    async def _tick(self, alerts: list[dict[str, Any]]) -> None:
        eff = Effects(alerts=list(alerts))
        if self._recovered():
            live = self.live_workers()
            eff.alerts += self.monitor.check_devices(live)
            # lost workers are judged only on a fresh read, and not within the grace after a Redis outage
            # (keys expired meanwhile; workers re-beat within their interval plus a Redis timeout)
            grace = self.cfg.heartbeat_ttl_s + self.cfg.redis_timeout_s
            if self.redis_ok and self.clock.monotonic() - self._redis_up_since >= grace:
                eff.extend(self.core.check_workers(live))
            eff.extend(self.core.check_deadlines())
            eff.extend(self.core.schedule(live))
        await self.apply(eff)
        if not self.ready and self._recovered() and self.redis_ok and self.app.consumer.assignment():
            self.ready = True
            log.info("control app %s ready (web port %s)", self.cfg.app_id, self.web_port)

    async def _flush_cache(self) -> None:
        """Retry the result-cache writes that failed while Redis was down."""
        if not self._cache_pending or not self.redis_ok or self.cache is None:
            return
        for key, result in list(self._cache_pending.items()):
            try:
                await self.cache.put(key, result)
            except Exception as exc:
                log.info("result cache write still failing: %s", exc)
                return
            self._cache_pending.pop(key, None)

    async def _dlq_check(self) -> None:
        from mystocks_gpu.topics.catalog import all_specs

        names = [s.name for s in all_specs() if s.name.endswith(".dlq")]
        try:
            levels = await asyncio.get_running_loop().run_in_executor(None, _dlq_levels, self.settings, names)
        except Exception as exc:
            log.warning("DLQ check failed: %s", exc)
            return
        alerts = self.monitor.check_dlq(levels)
        if alerts:
            await self.apply(Effects(alerts=alerts))

    async def _dead_letter(self, event: Any, error_class: str, error: str) -> None:
        """Send a command to ``<topic>.dlq`` with the stream DLQ headers (``mystocks.error.*``,
        ``mystocks.source.*``, ``mystocks.processor`` = the app id)."""
        msg = event.message
        log.warning("command at %s:%s dead-lettered: %s", msg.partition, msg.offset, error)
        headers = dlq_headers(error_class, error, msg.topic, msg.partition, msg.offset, self.cfg.app_id)
        self.pub.send(dlq_topic(msg.topic), event.key, event.value, headers=headers)

    # ---- effects -----------------------------------------------------------------------
    async def apply(self, eff: Effects) -> None:
        """Publish statuses, dispatches and alerts; write cache entries."""
        for st in eff.statuses:
            self.pub.send(self.cfg.status_topic, st["job_id"].encode(), self.codec.encode(STATUS_SCHEMA, st),
                          timestamp_ns=st["ts_event"])
            self.hub.publish("task_status", status_to_json(st), job_id=st["job_id"])
        for worker, msg in eff.dispatch:
            self.pub.send(self.cfg.dispatch_topic(worker), msg["job_id"].encode(), json.dumps(msg).encode())
        for al in eff.alerts:
            log.warning("alert %s %s: %s", al["kind"], al["source"], al["message"])
            self.pub.send(self.cfg.alerts_topic, al["source"].encode(), self.codec.encode(ALERT_SCHEMA, al),
                          timestamp_ns=al["ts_event"])
            self.hub.publish("alert", al, job_id=al["labels"].get("job_id"), severity=al["severity"])
        for key, result in eff.cache_puts:
            if self.cache is None or not self.redis_ok:
                self._keep_for_cache(key, result)
                continue
            try:
                await self.cache.put(key, result)
            except Exception as exc:
                log.warning("result cache write failed (retried when Redis answers): %s", exc)
                self._keep_for_cache(key, result)

    def _keep_for_cache(self, key: str, result: dict[str, Any]) -> None:
        if len(self._cache_pending) >= CACHE_PENDING_MAX:  # bounded: drop the oldest (a cache miss later)
            self._cache_pending.pop(next(iter(self._cache_pending)))
        self._cache_pending[key] = result

    async def produce_command(self, cmd: dict[str, Any]) -> None:
        """Produce a JobCommand to ``cmd.jobs`` and wait for the broker's ack (web handlers)."""
        await self.pub.send_and_wait(self.cfg.commands_topic, cmd["job_id"].encode(),
                                     self.codec.encode(COMMAND_SCHEMA, cmd), cmd["ts_event"])


def _dlq_levels(settings: Settings, names: list[str]) -> dict[str, int]:
    """Records currently in each existing DLQ topic (high - low watermark, summed over partitions)."""
    from confluent_kafka import TopicPartition

    from mystocks_gpu.infra.kafka_clients import make_consumer, watermarks

    c = make_consumer(settings.kafka, "mystocks-dlq-watch")
    try:
        md = c.list_topics(timeout=settings.kafka.connect_timeout_s)
        out = {}
        for n in names:
            if n not in md.topics or md.topics[n].error is not None:
                continue
            total = 0
            for p in md.topics[n].partitions:
                lo, hi = watermarks(c, TopicPartition(n, p), 5)
                total += max(0, hi - lo)
            out[n] = total
        return out
    finally:
        c.close()


def _ensure_topics(settings: Settings, cfg: JobsConfig) -> None:
    """Create the catalog topics the control app reads and writes (idempotent) before Faust starts:
    Faust ignores a subscribed topic that is missing at assignment time."""
    import dataclasses

    from mystocks_gpu.topics import get
    from mystocks_gpu.topics.admin import TopicAdmin

    default = JobsConfig()
    specs = []
    for f in ("commands_topic", "status_topic", "events_topic", "alerts_topic"):  # renamed in [jobs]: same contract
        spec = dataclasses.replace(get(getattr(default, f)), name=getattr(cfg, f))
        specs += [spec, *([spec.dlq_spec()] if spec.dlq_spec() is not None else [])]
    TopicAdmin(settings.kafka).create([s for s in specs if s is not None])


def run_control(settings: Settings, cfg: JobsConfig) -> int:
    """Run the control app until SIGINT/SIGTERM; returns the exit code."""
    from aiokafka import codec

    if not (codec.has_lz4() and codec.has_snappy() and codec.has_zstd()):
        raise ConfigError("the control app reads lz4/snappy/zstd-compressed batches (the project's producers use lz4): "
                          "install cramjam (pip install 'cramjam>=2.8'), which aiokafka needs for them")
    _ensure_topics(settings, cfg)
    ctl = ControlApp(settings, cfg)
    worker = faust.Worker(ctl.app, loglevel=settings.log.level.upper(), override_logging=False,
                          redirect_stdouts=False, console_port=0)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
