"""Client side of the job control plane: submit/cancel commands on ``cmd.jobs``, follow a job on
``job.status``, and call the control app's HTTP API."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import TopicPartition

from mystocks_gpu.infra.config import ApiConfig, Settings
from mystocks_gpu.infra.kafka_clients import (
    DeliveryTracker,
    consume_ready,
    ensure_broker,
    make_producer,
    watermarks,
)
from mystocks_gpu.jobs.exceptions import ControlError, ControlUnreachable, NoControlApp, WaitTimeout
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.protocol import (
    COMMAND_SCHEMA,
    FINAL,
    STATUS_SCHEMA,
    check_submit,
    status_to_json,
)
from mystocks_gpu.schemas import AvroCodec, DecodeError, schema_store
from mystocks_gpu.streams.broker_watch import watched_consumer

#: seconds without any status of a submitted job before the client says what it waits for
NOTICE_S = 2.0


def produce_command(settings: Settings, cfg: JobsConfig, cmd: dict[str, Any], producer: Any = None) -> None:
    """Produce one JobCommand and wait for the broker's ack (``producer``: a long-lived one to reuse;
    default a new one for this command)."""
    if producer is None:
        producer = make_producer(settings.kafka, **{"compression.type": "none"})  # tiny records
    tracker = DeliveryTracker()
    producer.produce(cfg.commands_topic, key=cmd["job_id"].encode(), value=AvroCodec(schema_store(settings)).encode(COMMAND_SCHEMA, cmd),
                     timestamp=cmd["ts_event"] // 1_000_000, on_delivery=tracker)
    left = producer.flush(settings.kafka.connect_timeout_s)
    if left:
        tracker.errors.append("command not delivered (broker unreachable?)")
    tracker.raise_errors()


def validate(cmd: dict[str, Any]) -> None:
    """Client-side validation of a SUBMIT (raises :class:`JobSpecError` with the reason)."""
    check_submit(cmd)


class StatusFollower:
    """Reads ``job.status`` from the offsets current at construction, so nothing after is missed."""

    def __init__(self, settings: Settings, cfg: JobsConfig) -> None:
        ensure_broker(settings.kafka)
        self.topic = cfg.status_topic
        self.codec = AvroCodec(schema_store(settings))
        conf: dict[str, Any] = {"isolation.level": "read_uncommitted"}
        self.consumer = watched_consumer(settings.kafka, f"mystocks-follow-{uuid.uuid4().hex[:8]}", "status follower",
                                         **conf)  # polled while following
        md = self.consumer.list_topics(self.topic, timeout=settings.kafka.connect_timeout_s)
        tps = []
        for p in sorted(md.topics[self.topic].partitions):
            _, hi = watermarks(self.consumer, TopicPartition(self.topic, p), 10)
            tps.append(TopicPartition(self.topic, p, hi))
        self.consumer.assign(tps)
        self._backlog: dict[str, list[dict[str, Any]]] = {}

    def statuses(self, job_id: str, timeout_s: float | None = None, *, notice_s: float = NOTICE_S,
                 accept_timeout_s: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the job's statuses (client JSON form) until a final one; :class:`WaitTimeout`.

        While no status of the job has come: after ``notice_s`` seconds ``on_wait`` gets a line
        saying what is awaited, and after ``accept_timeout_s`` :class:`NoControlApp` is raised
        (no control app took the command). Records of other jobs read meanwhile are kept."""
        t0 = time.monotonic()
        end = None if timeout_s is None else t0 + timeout_s
        seen = noticed = False
        while True:
            for st in self._backlog.pop(job_id, []):
                seen = True
                yield st
                if st["state"] in FINAL:
                    return
            now = time.monotonic()
            if not seen and not noticed and on_wait is not None and now - t0 >= notice_s:
                noticed = True
                limit = f"; giving up after {accept_timeout_s:.0f} s" if accept_timeout_s else ""
                on_wait(f"waiting for a control app to take job {job_id}: no status on {self.topic} yet "
                        f"(is `mystocks-gpu control` running?){limit}")
            if not seen and accept_timeout_s is not None and now - t0 > accept_timeout_s:
                raise NoControlApp(f"no control app took job {job_id} within {accept_timeout_s:.0f} s (no status on "
                                   f"{self.topic}); start one with `mystocks-gpu control` -- the command stays on "
                                   "cmd.jobs and runs when it starts")
            if end is not None and now > end:
                raise WaitTimeout(f"job {job_id} not final after {timeout_s:.0f} s")
            for m in consume_ready(self.consumer, 100, 0.2):
                if m.error() or m.key() is None or m.value() is None:
                    continue
                try:
                    st = status_to_json(self.codec.decode(m.value(), expect=STATUS_SCHEMA))
                except DecodeError:
                    continue
                self._backlog.setdefault(st["job_id"], []).append(st)

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


def wait_for(settings: Settings, cfg: JobsConfig, cmd: dict[str, Any], timeout_s: float | None,
             on_status: Callable[[dict[str, Any]], None], *, accept_timeout_s: float | None = None,
             on_wait: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Produce ``cmd`` and follow its job to a final status (which is returned); see
    :meth:`StatusFollower.statuses` for ``accept_timeout_s`` and ``on_wait``."""
    follower = StatusFollower(settings, cfg)
    try:
        produce_command(settings, cfg, cmd)
        last: dict[str, Any] = {}
        for st in follower.statuses(cmd["job_id"], timeout_s, accept_timeout_s=accept_timeout_s, on_wait=on_wait):
            on_status(st)
            last = st
        return last
    finally:
        follower.close()


def http(method: str, url: str, body: Any = None, timeout: float = 10.0, *, api: ApiConfig | None = None
         ) -> tuple[int, Any]:
    """Call the control app; returns ``(status, json)``; :class:`ControlUnreachable` when down.

    ``api``: the client side of ``[api]``: ``token`` is sent as ``Authorization: Bearer``,
    ``tls_ca_file`` verifies an https server."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    ctx = None
    if api is not None:
        if api.token:
            headers["Authorization"] = f"Bearer {api.token}"
        if api.tls_ca_file:
            ctx = ssl.create_default_context(cafile=api.tls_ca_file)
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"null")
        except ValueError:
            payload = {"error": exc.reason}
        return exc.code, payload
    except (urllib.error.URLError, OSError) as exc:
        raise ControlUnreachable(f"no control app at {url} ({getattr(exc, 'reason', exc)}); "
                                 "start one with: mystocks-gpu control") from None


def http_ok(method: str, url: str, body: Any = None, *, api: ApiConfig | None = None) -> Any:
    """Like :func:`http`, raising :class:`ControlError` with the server's message on a 4xx/5xx."""
    status, payload = http(method, url, body, api=api)
    if status >= 400:
        raise ControlError(f"{method} {url}: {status} {payload.get('error') if isinstance(payload, dict) else payload}")
    return payload
