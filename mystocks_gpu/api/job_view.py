"""The gateway's read model of the job plane: a thread tails ``cmd.jobs`` (who submitted which job)
and ``job.status`` (every state of every job) from their beginnings.

Everything here is derived from those two topics (the gateway holds no state the topics do not: a
restarted gateway rebuilds the same view). Per job it keeps the SUBMIT command's requester/kind/time
and the job's statuses in topic order (at most ``history_max``; the oldest progress-only records are
forgotten first, state changes are kept).

Watchers (``WatchTask``) register a bounded :class:`asyncio.Queue` per stream; the tail thread hands
each new status to the event loop, which offers it to the job's watchers. A watcher whose queue is
full is *closed* (its ``overflowed`` flag is set and it gets no more records): the stream then ends
with ``RESOURCE_EXHAUSTED`` and the client re-watches (the replay starts from the job's history),
so a slow watcher never makes the gateway buffer without bound and never silently misses a state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import consume_ready, watermarks
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.protocol import COMMAND_SCHEMA, FINAL, STATUS_SCHEMA, status_to_json
from mystocks_gpu.schemas import AvroCodec, DecodeError, schema_store
from mystocks_gpu.streams.broker_watch import BrokerWatch, nudged_consumer, watched_consumer

log = logging.getLogger(__name__)


@dataclass
class JobEntry:
    """What the topics say about one job."""

    job_id: str
    kind: str = ""
    requester: str = ""
    submitted_ns: int = 0
    #: statuses in topic order (client JSON form: lower-case ``state``, parsed ``result``)
    statuses: deque[dict[str, Any]] = field(default_factory=deque)

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.statuses[-1] if self.statuses else None


@dataclass
class Watcher:
    """One ``WatchTask`` stream: its bounded queue and whether it overflowed."""

    job_id: str
    queue: asyncio.Queue[dict[str, Any]]
    overflowed: bool = False


class JobView:
    """Tails ``cmd.jobs`` and ``job.status``; see the module docstring."""

    def __init__(self, settings: Settings, cfg: JobsConfig, *, history_max: int = 256, watch_queue_max: int = 1000,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings, self.cfg, self.clock = settings, cfg, clock
        self.history_max, self.watch_queue_max = history_max, watch_queue_max
        self.codec = AvroCodec(schema_store(settings))
        self.jobs: dict[str, JobEntry] = {}
        self.watchers: dict[str, list[Watcher]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: next offset to read per (topic, partition), updated by the tail thread
        self.positions: dict[tuple[str, int], int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error = ""
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gateway-jobview")
        self._meta: Any = None  # a consumer that only asks for watermarks (sync)
        self._meta_lock = threading.Lock()
        self._meta_watch: BrokerWatch | None = None  # its broker watch, nudged when a query fails

    # ---- life cycle ----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start tailing (``loop``: where watchers live)."""
        self.loop = loop
        self._thread.start()

    def stop(self) -> None:
        """Stop the tail thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._meta_lock:
            if self._meta is not None:
                self._meta.close()
                self._meta = None

    def _run(self) -> None:
        conf: dict[str, Any] = {"isolation.level": "read_uncommitted"}
        c = watched_consumer(self.settings.kafka, f"mystocks-gateway-{uuid.uuid4().hex[:8]}", "gateway job view",
                             **conf)  # librdkafka#5301 (streams/broker_watch.py)
        try:
            while not self._stop.is_set():
                try:
                    tps = []
                    for topic in (self.cfg.commands_topic, self.cfg.status_topic):
                        md = c.list_topics(topic, timeout=5)
                        if topic not in md.topics or md.topics[topic].error is not None:
                            raise RuntimeError(f"topic {topic} does not exist (run: mystocks-gpu topics create)")
                        for p in sorted(md.topics[topic].partitions):
                            tps.append(TopicPartition(topic, p, self.positions.get((topic, p), 0)))
                    c.assign(tps)
                    break
                except Exception as exc:  # broker not up yet: retry until stopped
                    self.error = str(exc)
                    self._stop.wait(1.0)
            self.error = ""
            self.ready.set()
            while not self._stop.is_set():
                msgs = consume_ready(c, 500, 0.2)
                for m in msgs:
                    if m.error():
                        continue
                    self.positions[(m.topic(), m.partition())] = m.offset() + 1
                    if m.value() is None:
                        continue
                    try:
                        if m.topic() == self.cfg.commands_topic:
                            self._on_command(self.codec.decode(m.value(), expect=COMMAND_SCHEMA))
                        else:
                            self._on_status(status_to_json(self.codec.decode(m.value(), expect=STATUS_SCHEMA)))
                    except DecodeError as exc:
                        log.warning("gateway: undecodable record at %s:%s:%s (%s)", m.topic(), m.partition(),
                                    m.offset(), exc)
        except Exception as exc:  # pragma: no cover - logged, the gateway reports not-ready
            self.error = str(exc)
            log.exception("gateway job view stopped")
        finally:
            self.ready.clear()
            c.close()

    def _on_command(self, cmd: dict[str, Any]) -> None:
        if cmd.get("action") != "SUBMIT":
            return
        with self._lock:
            e = self.jobs.setdefault(cmd["job_id"], JobEntry(cmd["job_id"]))
            if not e.submitted_ns:
                e.kind, e.requester, e.submitted_ns = cmd["kind"], cmd.get("requester", ""), int(cmd["ts_event"])

    def _on_status(self, st: dict[str, Any]) -> None:
        with self._lock:
            e = self.jobs.setdefault(st["job_id"], JobEntry(st["job_id"], kind=st.get("kind", "")))
            prev = e.latest
            if prev is not None and prev["state"] == st["state"] and e.statuses and len(e.statuses) >= self.history_max:
                e.statuses.pop()  # bounded history: a progress-only update replaces the previous one
            e.statuses.append(st)
            while len(e.statuses) > self.history_max:
                e.statuses.popleft()
            if not e.kind:
                e.kind = st.get("kind", "")
            watching = bool(self.watchers.get(st["job_id"]))
        if watching and self.loop is not None:
            self.loop.call_soon_threadsafe(self._deliver, st)

    def _deliver(self, st: dict[str, Any]) -> None:
        for w in list(self.watchers.get(st["job_id"], [])):
            if w.overflowed:
                continue
            if w.queue.full():
                w.overflowed = True  # closed: the stream ends with RESOURCE_EXHAUSTED
                w.queue.get_nowait()
                w.queue.put_nowait({"overflow": True})
                continue
            w.queue.put_nowait(st)

    # ---- reads (event loop) --------------------------------------------------------------
    def get(self, job_id: str) -> JobEntry | None:
        """The job's entry (a snapshot copy) or None."""
        with self._lock:
            e = self.jobs.get(job_id)
            return None if e is None else JobEntry(e.job_id, e.kind, e.requester, e.submitted_ns, deque(e.statuses))

    def watch(self, job_id: str) -> tuple[Watcher, list[dict[str, Any]]]:
        """Register a watcher; returns it with the job's statuses so far (no gap, no duplicate:
        the snapshot and the registration happen under one lock)."""
        w = Watcher(job_id, asyncio.Queue(self.watch_queue_max))
        with self._lock:
            e = self.jobs.get(job_id)
            history = list(e.statuses) if e is not None else []
            self.watchers.setdefault(job_id, []).append(w)
        return w, history

    def unwatch(self, w: Watcher) -> None:
        """Forget a watcher."""
        with self._lock:
            ws = self.watchers.get(w.job_id, [])
            if w in ws:
                ws.remove(w)
            if not ws:
                self.watchers.pop(w.job_id, None)

    def history(self, requester: str | None, kind: str | None) -> list[JobEntry]:
        """Jobs submitted by ``requester`` (None: anyone) of ``kind`` (None: any), newest first."""
        with self._lock:
            out = [JobEntry(e.job_id, e.kind, e.requester, e.submitted_ns, deque(e.statuses))
                   for e in self.jobs.values()
                   if e.submitted_ns and (requester is None or e.requester == requester) and (not kind or e.kind == kind)]
        out.sort(key=lambda e: (e.submitted_ns, e.job_id), reverse=True)
        return out

    async def sync(self, timeout_s: float) -> bool:
        """Wait until the view has read everything on both topics as of now; False on timeout or
        when the broker cannot be asked (the caller answers UNAVAILABLE)."""
        loop = asyncio.get_running_loop()
        try:
            ends = await loop.run_in_executor(None, self._end_offsets)
        except Exception:
            return False
        end = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < end:
            if all(self.positions.get(tp, 0) >= hi for tp, hi in ends.items()):
                return True
            await asyncio.sleep(0.005)
        return False

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        with self._meta_lock:
            if self._meta is None:
                self._meta, self._meta_watch = nudged_consumer(
                    self.settings.kafka, f"mystocks-gateway-meta-{uuid.uuid4().hex[:8]}", "gateway meta", clock=self.clock)
            try:
                return self._query_ends(self._meta)
            except KafkaException:
                if self._meta_watch is not None:
                    self._meta_watch.nudge()  # librdkafka#5301: a client that lost its broker gets it back
                raise

    def _query_ends(self, c: Any) -> dict[tuple[str, int], int]:
        """The end offset of every partition of the commands and status topics, asked of ``c``."""
        out = {}
        for topic in (self.cfg.commands_topic, self.cfg.status_topic):
            md = c.list_topics(topic, timeout=self.settings.kafka.connect_timeout_s)
            if topic not in md.topics or md.topics[topic].error is not None:
                raise RuntimeError(f"topic {topic} does not exist")
            for p in md.topics[topic].partitions:
                _, hi = watermarks(c, TopicPartition(topic, p), self.settings.kafka.connect_timeout_s)
                out[(topic, p)] = hi
        return out


def is_final(st: dict[str, Any]) -> bool:
    """True for a final state."""
    return st["state"] in FINAL
