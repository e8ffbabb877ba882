"""A job worker process: consumes its dispatch topic, runs job chunks, reports, heart-beats.

* Dispatch topic ``jobs.dispatch.<namespace>.<worker_id>`` (created on start) is read in consumer
  group ``mystocks-worker.<namespace>.<worker_id>``; ``run`` messages start a chunk in a thread, ``stop`` messages
  stop one. The control app only dispatches to workers with a live heartbeat and re-queues the
  chunks of a worker whose heartbeat expires, so a dead worker's jobs go to another worker.
* Reports are TaskStatus records on ``jobs.events`` with ``attempt``/``chunk`` headers.
* Results are written once per (job, chunk) with Redis ``SET NX``: a re-run after a crash reads
  the first result instead of writing a second one.
* Redis outages: every Redis call of a chunk is retried with exponential backoff (0.1 s doubling
  to 2 s, on the injected clock) for up to ``jobs.redis_retry_s``. A finished result is kept in
  memory meanwhile (the chunk reports ``running`` at progress 1.0 "storing the result"); if it still
  cannot be stored (bound passed, or the worker stops) the result is reported anyway -- the
  control app's changelog-backed job table then holds it -- so finished work is never lost. A
  chunk that cannot even start is handed back (``queued``).
* Metrics: ``--metrics-port`` serves :class:`~.worker_metrics.WorkerMetrics`.
* The heartbeat (Redis key with TTL) carries the device inventory, the kinds served and the
  running chunks. On SIGTERM running chunks are stopped and handed back (reported ``queued``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import redis
from confluent_kafka import KafkaError, Message

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.backend import select
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.devices import Device, discover
from mystocks_gpu.infra.kafka_clients import ensure_broker
from mystocks_gpu.infra.logs import log_context
from mystocks_gpu.jobs.exceptions import RedisUnavailable
from mystocks_gpu.jobs.heartbeat import HeartbeatPublisher
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.kinds import get_kind, kinds
from mystocks_gpu.jobs.protocol import STATUS_SCHEMA, report_headers
from mystocks_gpu.jobs.result_cache import ResultStore
from mystocks_gpu.jobs.run_scope import device_scope, run_context
from mystocks_gpu.jobs.scheduler import WorkerInfo
from mystocks_gpu.jobs.worker_metrics import WorkerMetrics
from mystocks_gpu.processors.exceptions import JobStopped
from mystocks_gpu.schemas import AvroCodec, schema_store
from mystocks_gpu.streams.broker_watch import watched_consumer, watched_producer
from mystocks_gpu.topics.catalog import DAY_MS, TopicSpec

log = logging.getLogger(__name__)
SHUTDOWN = "worker shutting down"
#: first and longest pause between Redis retries, s
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 2.0
T = TypeVar("T")
#: a chunk's last report -> its outcome in the worker metrics
OUTCOMES = {"SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELLED": "cancelled", "QUEUED": "requeued"}
#: exception class names of a chunk that ran out of memory (CuPy/PyTorch device memory, host memory):
#: counted as outcome "oom" (alert MystocksChunkOutOfMemory)
OOM_ERRORS = frozenset({"OutOfMemoryError", "MemoryError"})


def default_worker_id() -> str:
    """``<host>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """One worker's identity and resources.

    ``kinds``: job kinds served (empty = every registered kind); ``fake_devices``: a fake inventory
    instead of discovery (tests); ``reserve``: device id -> real-time processor holding it (never
    given to batch jobs); ``prefer``: ``auto``/``gpu``/``cpu`` discovery (the CLI passes
    ``Settings.backend`` unless ``--device`` says otherwise).
    """

    worker_id: str = field(default_factory=default_worker_id)
    kinds: tuple[str, ...] = ()
    fake_devices: tuple[Device, ...] | None = None
    reserve: Mapping[str, str] = field(default_factory=dict)
    prefer: str = "auto"

    def __post_init__(self) -> None:
        from mystocks_gpu.jobs.protocol import JOB_ID

        if not JOB_ID.fullmatch(self.worker_id) or ":" in self.worker_id:
            raise ConfigError("worker id must be 1-128 characters of A-Z a-z 0-9 . _ -")
        known = kinds()
        bad = [k for k in self.kinds if k not in known]
        if bad:
            raise ConfigError(f"unknown job kind(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")


@dataclass
class _Run:
    job_id: str
    chunk: int
    attempt: int
    device: str
    memory_bytes: int
    stop: threading.Event
    reason: str = ""
    thread: threading.Thread | None = None
    last_state: str = ""
    #: class name of the exception a failed run raised ("" when none)
    error_class: str = ""


class JobWorker:
    """Runs dispatched chunks until :meth:`stop` (see module docstring)."""

    def __init__(self, settings: Settings, cfg: JobsConfig, opts: WorkerOptions, clock: Clock = SYSTEM_CLOCK,
                 metrics: WorkerMetrics | None = None) -> None:
        self.clock = clock
        self.settings, self.cfg, self.opts = settings, cfg, opts
        self.metrics = metrics or WorkerMetrics(opts.worker_id)
        self.kinds = opts.kinds or tuple(sorted(kinds()))
        self.topic = cfg.dispatch_topic(opts.worker_id)
        #: the backend chunks on a GPU compute on (``Settings.backend`` resolved; ``gpu`` without one is an error)
        self.backend = select(settings.backend)
        self.schemas = schema_store(settings)
        self.codec = AvroCodec(self.schemas)
        self.redis = redis.Redis.from_url(settings.redis.url, socket_timeout=cfg.redis_timeout_s,
                                          socket_connect_timeout=cfg.redis_timeout_s, retry_on_timeout=False)
        self.store = ResultStore(self.redis, cfg.namespace, cfg.result_ttl_s)
        pconf: dict[str, Any] = {"linger.ms": 2, "compression.type": "none"}
        self.producer = watched_producer(settings.kafka, "jobs producer", clock=clock, **pconf)
        self.runs: dict[tuple[str, int], _Run] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.started_ns = clock.now_ns()
        self.heartbeat = HeartbeatPublisher(self.redis, cfg.namespace, opts.worker_id, self.snapshot,
                                            cfg.heartbeat_interval_s, cfg.heartbeat_ttl_s,
                                            on_failure=self.metrics.heartbeat_failures.inc)

    # ---- inventory ---------------------------------------------------------------------
    def devices(self) -> list[Device]:
        """Current devices; fake ones lose the memory of running chunks; reservations applied."""
        if self.opts.fake_devices is not None:
            with self._lock:
                used: dict[str, int] = {}
                for r in self.runs.values():
                    used[r.device] = used.get(r.device, 0) + r.memory_bytes
            devs = [replace(d, free_bytes=max(0, d.free_bytes - used.get(d.id, 0))) for d in self.opts.fake_devices]
        else:
            devs = discover(self.opts.prefer)
        return [replace(d, reserved_for=self.opts.reserve.get(d.id, d.reserved_for)) for d in devs]

    def snapshot(self) -> WorkerInfo:
        """The heartbeat payload."""
        with self._lock:
            running = tuple(f"{r.job_id}:{r.chunk}#{r.attempt}" for r in self.runs.values())
        return WorkerInfo(self.opts.worker_id, self.kinds, tuple(self.devices()), self.clock.now_ns(), running,
                          {"pid": os.getpid(), "host": socket.gethostname(), "dispatch_topic": self.topic,
                           "started_ns": self.started_ns})

    # ---- main loop ---------------------------------------------------------------------
    def _ensure_topic(self) -> None:
        from mystocks_gpu.topics.admin import TopicAdmin

        spec = TopicSpec(self.topic, "job_id", None, partitions=1, retention_ms=DAY_MS, dlq=False,
                         description=f"dispatch to worker {self.opts.worker_id}")
        TopicAdmin(self.settings.kafka).create([spec])

    def run(self) -> None:
        """Serve until :meth:`stop`; then stop and hand back running chunks."""
        ensure_broker(self.settings.kafka)
        self._check_redis()
        unknown = [d for d in self.opts.reserve if d not in {x.id for x in self.devices()}]
        if unknown:
            raise ConfigError(f"--reserve names unknown device(s) {', '.join(unknown)}")
        self._ensure_topic()
        assigned = threading.Event()
        cconf: dict[str, Any] = {"enable.auto.commit": True, "auto.commit.interval.ms": 500,
                                 "isolation.level": "read_uncommitted", "fetch.wait.max.ms": 50}
        consumer = watched_consumer(self.settings.kafka, f"mystocks-worker.{self.cfg.namespace}.{self.opts.worker_id}",
                                    "jobs consumer", clock=self.clock, **cconf)
        end = time.monotonic() + self.settings.kafka.connect_timeout_s
        while time.monotonic() < end:  # a just-created topic must be in metadata before subscribing
            md = consumer.list_topics(self.topic, timeout=5)
            if md.topics.get(self.topic) is not None and md.topics[self.topic].partitions:
                break
            time.sleep(0.1)

        def on_assign(c: Any, parts: list[Any]) -> None:
            if parts:
                assigned.set()

        consumer.subscribe([self.topic], on_assign=on_assign)
        try:
            while not assigned.is_set() and not self._stop.is_set():
                self._handle(consumer.poll(0.1))
            try:
                self.heartbeat.start()
            except redis.RedisError as exc:
                raise RedisUnavailable(self._redis_down(exc)) from None
            log.info("worker %s serving %s on %s", self.opts.worker_id, ",".join(self.kinds),
                     ",".join(f"{d.id}({d.kind})" for d in self.devices()))
            while not self._stop.is_set():
                self._handle(consumer.poll(0.1))
                self.producer.poll(0)
                self._reap()
        finally:
            self._shutdown(consumer)

    def _redis_down(self, exc: BaseException) -> str:
        from mystocks_gpu.infra.config import mask_url

        return (f"Redis is not answering at {mask_url(self.settings.redis.url)} ({exc or type(exc).__name__}); "
                "start it (mystocks-gpu stack up) or set redis.url / MYSTOCKS_REDIS__URL")

    def _check_redis(self) -> None:
        """One clear error when Redis is down at start (the worker needs it to heart-beat), or at once
        when it refuses the credentials (:class:`RedisAuthFailed`)."""
        from mystocks_gpu.infra.redis_clients import check_redis

        try:
            check_redis(self.redis, self.settings.redis.url)
        except redis.RedisError as exc:
            raise RedisUnavailable(self._redis_down(exc)) from None

    def _redis(self, op: str, fn: Callable[[], T], run: _Run | None = None,
               on_first_failure: Callable[[], None] | None = None) -> T:
        """``fn()`` through :func:`retry_redis` with this worker's bound, clock and metrics; gives up
        early when ``run`` is asked to stop."""
        return retry_redis(op, fn, self.clock, self.cfg.redis_retry_s,
                           should_stop=(lambda: run.stop.is_set()) if run is not None else None,
                           on_retry=lambda: self.metrics.redis_retry(op), on_first_failure=on_first_failure)

    def stop(self) -> None:
        """Ask :meth:`run` to return (signal-safe)."""
        self._stop.set()

    def _shutdown(self, consumer: Any) -> None:
        with self._lock:
            runs = list(self.runs.values())
        for r in runs:
            r.reason = SHUTDOWN
            r.stop.set()
        for r in runs:
            if r.thread is not None:
                r.thread.join(timeout=10)
        self.heartbeat.stop(remove=True)
        try:
            consumer.close()
        finally:
            self.producer.flush(10)
        log.info("worker %s stopped", self.opts.worker_id)

    def _reap(self) -> None:
        with self._lock:
            for key in [k for k, r in self.runs.items() if r.thread is not None and not r.thread.is_alive()]:
                del self.runs[key]

    def _handle(self, msg: Message | None) -> None:
        if msg is None:
            return
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("dispatch consumer: %s", msg.error().str())
            return
        try:
            cmd = json.loads(msg.value())
        except (ValueError, TypeError):
            log.warning("undecodable dispatch message at offset %s skipped", msg.offset())
            return
        ts_ms = msg.timestamp()[1]
        if cmd.get("type") == "run":
            if ts_ms and ts_ms * 1_000_000 < self.started_ns - int(self.cfg.heartbeat_ttl_s * 1e9):
                log.info("skipping run of %s:%s dispatched before this worker started", cmd.get("job_id"), cmd.get("chunk"))
                return
            self._start(cmd)
        elif cmd.get("type") == "stop":
            with self._lock:
                for r in self.runs.values():
                    if r.job_id == cmd.get("job_id") and cmd.get("chunk") in (None, r.chunk) \
                            and cmd.get("attempt") in (None, r.attempt):
                        r.reason = str(cmd.get("reason") or "stopped")
                        r.stop.set()

    def _start(self, cmd: dict[str, Any]) -> None:
        key = (str(cmd["job_id"]), int(cmd["chunk"]))
        with self._lock:
            old = self.runs.get(key)
            if old is not None and old.attempt >= int(cmd["attempt"]):
                return
            if old is not None:
                old.reason = "superseded"
                old.stop.set()
            run = _Run(key[0], key[1], int(cmd["attempt"]), str(cmd["device"]), int(cmd.get("memory_bytes", 0)),
                       threading.Event())
            run.thread = threading.Thread(target=self._run_metered, args=(run, cmd), daemon=True,
                                          name=f"job-{key[0][:8]}-{key[1]}")
            self.runs[key] = run
        run.thread.start()

    # ---- one chunk ---------------------------------------------------------------------
    def _report(self, run: _Run, kind: str, state: str, progress: float = 0.0, message: str = "",
                error: str | None = None, result: dict[str, Any] | None = None, flush: bool = False) -> None:
        rec = {"job_id": run.job_id, "ts_event": self.clock.now_ns(), "kind": kind, "state": state, "progress": float(progress),
               "message": message, "error": error, "worker": f"{self.opts.worker_id}/{run.device}", "cached": False,
               "result_json": json.dumps(result, sort_keys=True, default=str) if result is not None else None}
        value = self.codec.encode(STATUS_SCHEMA, rec)
        run.last_state = state
        while True:
            try:
                self.producer.produce(self.cfg.events_topic, value=value, key=run.job_id.encode(),
                                      headers=report_headers(run.attempt, run.chunk, self.opts.worker_id, run.device))
                break
            except BufferError:
                self.producer.poll(0.05)
        if flush:
            self.producer.flush(10)

    def _run_metered(self, run: _Run, cmd: dict[str, Any]) -> None:
        """:meth:`_run_chunk` counted in the worker metrics (outcome = the run's last report)."""
        kind_name = str(cmd.get("kind", ""))
        t0 = self.clock.monotonic()
        self.metrics.started(kind_name)
        try:
            with log_context(job_id=run.job_id, chunk=run.chunk, kind=kind_name, device=run.device):
                self._run_chunk(run, cmd)
        finally:
            outcome = OUTCOMES.get(run.last_state, "failed")
            if outcome == "failed" and run.error_class in OOM_ERRORS:
                outcome = "oom"
            self.metrics.finished(kind_name, outcome, self.clock.monotonic() - t0)

    def _run_chunk(self, run: _Run, cmd: dict[str, Any]) -> None:
        kind_name = str(cmd.get("kind", ""))
        where = f"{self.opts.worker_id}/{run.device}"
        deadline = cmd.get("deadline_ns")
        try:
            n = self._redis("start", lambda: self.store.mark_run(run.job_id, run.chunk), run)
            prior = self._redis("start", lambda: self.store.get(run.job_id, run.chunk), run)
            if prior is not None:  # an earlier run finished: report its result, never a second one
                self._report(run, kind_name, "SUCCEEDED", 1.0, f"result already stored (run #{n} on {where})",
                             result=prior, flush=True)
                return
            kind = get_kind(kind_name)
            spec = kind.parse(cmd.get("spec") or {})
            self._report(run, kind_name, "RUNNING", 0.0, f"started on {where} (run #{n})", flush=True)
            last = [0.0]

            def progress(frac: float, message: str = "") -> None:
                now = time.monotonic()
                if frac < 1.0 and now - last[0] < self.cfg.progress_interval_s:
                    return
                last[0] = now
                self._report(run, kind_name, "RUNNING", max(0.0, min(1.0, frac)), message)

            def should_stop() -> bool:
                if deadline is not None and self.clock.now_ns() > deadline:
                    run.reason = run.reason or "deadline exceeded"
                    return True
                return run.stop.is_set()

            ctx = run_context(run.job_id, run.chunk, run.device, {d.id: d for d in self.devices()}, self.backend,
                              self.settings, self.schemas)
            with device_scope(ctx):  # the granted device: the current CUDA device when the chunk runs on a GPU
                result = kind.runner(spec, progress, should_stop)
            if should_stop():
                raise JobStopped(run.reason)
            self._report_result(run, kind_name, n, result, where)
        except JobStopped as exc:
            reason = run.reason or str(exc)
            if reason == SHUTDOWN:
                self._report(run, kind_name, "QUEUED", 0.0, f"{SHUTDOWN}: {self.opts.worker_id}", flush=True)
            else:
                self._report(run, kind_name, "CANCELLED", 0.0, f"stopped on {where}: {reason}", flush=True)
        except RedisUnavailable as exc:  # cannot even start: hand the chunk back (the control app re-queues it)
            if run.stop.is_set() and (run.reason or SHUTDOWN) != SHUTDOWN:
                self._report(run, kind_name, "CANCELLED", 0.0, f"stopped on {where}: {run.reason}", flush=True)
            else:
                self._report(run, kind_name, "QUEUED", 0.0, f"given back by {where}: {exc}", flush=True)
        except Exception as exc:  # a failing job must not kill the worker
            run.error_class = type(exc).__name__
            log.warning("job %s chunk %s failed: %s", run.job_id, run.chunk, exc)
            self._report(run, kind_name, "FAILED", 0.0, f"failed on {where}", error=f"{type(exc).__name__}: {exc}",
                         flush=True)

    def _report_result(self, run: _Run, kind_name: str, n: int, result: dict[str, Any], where: str) -> None:
        """Store a finished chunk's result once (retrying through a Redis outage) and report it. The
        result is kept until stored; if it cannot be (bound passed, or the worker stops), it is
        reported anyway: the job's outcome never depends on Redis being up."""
        def waiting() -> None:
            self._report(run, kind_name, "RUNNING", 1.0, f"finished on {where}; storing the result "
                         f"(Redis unavailable, retrying for up to {self.cfg.redis_retry_s:.0f} s)", flush=True)

        try:
            won = self._redis("store", lambda: self.store.set_once(run.job_id, run.chunk, result), run, waiting)
            stored = self._redis("store", lambda: self.store.get(run.job_id, run.chunk), run) if not won else result
        except RedisUnavailable as exc:
            log.error("job %s chunk %s: result not stored (%s); reported with the status", run.job_id, run.chunk, exc)
            self._report(run, kind_name, "SUCCEEDED", 1.0, f"result of {where} not stored in Redis ({exc})",
                         result=result, flush=True)
            return
        msg = f"result stored by {where}" if won else f"result already stored by an earlier run (run #{n})"
        self._report(run, kind_name, "SUCCEEDED", 1.0, msg, result=stored if stored is not None else result, flush=True)


def retry_redis(op: str, fn: Callable[[], T], clock: Clock, bound_s: float, *,
                should_stop: Callable[[], bool] | None = None, on_retry: Callable[[], None] | None = None,
                on_first_failure: Callable[[], None] | None = None) -> T:
    """``fn()``, retried on Redis errors with exponential backoff (``RETRY_FIRST_S`` doubling up to
    ``RETRY_MAX_S``, slept on ``clock``) for up to ``bound_s`` seconds; then, or as soon as
    ``should_stop()`` is true, :class:`RedisUnavailable` naming ``op`` and the time waited."""
    start = clock.monotonic()
    delay, failures = RETRY_FIRST_S, 0
    while True:
        try:
            result = fn()
        except redis.RedisError as exc:
            waited = clock.monotonic() - start
            if waited >= bound_s or (should_stop is not None and should_stop()):
                raise RedisUnavailable(f"Redis {op} failed for {waited:.1f} s: {exc or type(exc).__name__}") from None
            failures += 1
            if on_retry is not None:
                on_retry()
            if failures == 1:
                log.warning("Redis %s failed (%s); retrying for up to %.0f s", op, exc or type(exc).__name__, bound_s)
                if on_first_failure is not None:
                    on_first_failure()
            clock.sleep(min(delay, max(0.0, bound_s - waited)))
            delay = min(delay * 2, RETRY_MAX_S)
            continue
        if failures:
            log.info("Redis %s succeeded after %d retries (%.1f s)", op, failures, clock.monotonic() - start)
        return result


def parse_reserve(items: Sequence[str]) -> dict[str, str]:
    """``DEVICE[=NAME]`` items -> {device: holder name} (default holder ``realtime``)."""
    out = {}
    for it in items:
        dev, _, name = it.partition("=")
        if not dev:
            raise ConfigError(f"--reserve expects DEVICE[=NAME], got {it!r}")
        out[dev.strip()] = name.strip() or "realtime"
    return out
