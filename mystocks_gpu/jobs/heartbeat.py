"""Worker heartbeats in Redis: ``{namespace}:worker:{id}`` holds the worker's inventory as JSON
with a TTL; a worker that stops beating disappears when the key expires.

:class:`HeartbeatPublisher` runs in a worker (a daemon thread, sync client); :func:`read_workers`
and :func:`read_workers_async` are used by the control app and the CLI.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import redis
import redis.asyncio as aredis

from mystocks_gpu.jobs.scheduler import WorkerInfo

log = logging.getLogger(__name__)


def worker_key(namespace: str, worker_id: str) -> str:
    """Redis key of one worker's heartbeat."""
    return f"{namespace}:worker:{worker_id}"


def _parse(raw: bytes | str | None) -> WorkerInfo | None:
    if raw is None:
        return None
    try:
        return WorkerInfo.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


class HeartbeatPublisher:
    """Publish ``snapshot()`` every ``interval_s`` with a TTL of ``ttl_s`` seconds (a thread)."""

    def __init__(self, client: redis.Redis, namespace: str, worker_id: str, snapshot: Callable[[], WorkerInfo],
                 interval_s: float = 1.0, ttl_s: float = 5.0, on_failure: Callable[[], None] | None = None) -> None:
        if ttl_s <= interval_s:
            raise ValueError("heartbeat ttl must exceed the interval")
        self.client, self.key, self.snapshot = client, worker_key(namespace, worker_id), snapshot
        self.interval_s, self.ttl_s = interval_s, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{worker_id}", daemon=True)
        self.beats = 0
        self.failures = 0
        self._streak = 0
        self._on_failure = on_failure

    def beat(self) -> None:
        """Publish one heartbeat now."""
        self.client.set(self.key, json.dumps(self.snapshot().to_dict()), px=int(self.ttl_s * 1000))
        self.beats += 1

    def start(self) -> None:
        """First beat synchronously (raises if Redis is down), then beat in the background."""
        self.beat()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                self.failures += 1
                self._streak += 1
                if self._on_failure is not None:
                    self._on_failure()
                if self._streak == 1 or self._streak % 30 == 0:
                    log.warning("heartbeat failed (%d in a row): %s", self._streak, exc or type(exc).__name__)
                continue
            if self._streak:
                log.info("heartbeat written again after %d failures", self._streak)
                self._streak = 0

    def stop(self, remove: bool = True) -> None:
        """Stop beating; ``remove`` deletes the key so the worker is gone at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 1)
        if remove:
            try:
                self.client.delete(self.key)
            except redis.RedisError:
                pass


def read_workers(client: redis.Redis, namespace: str) -> list[WorkerInfo]:
    """Every live worker (sorted by id)."""
    keys = sorted(client.scan_iter(match=f"{namespace}:worker:*", count=500))
    vals = client.mget(keys) if keys else []
    return sorted((w for w in map(_parse, vals) if w is not None), key=lambda w: w.worker_id)


async def read_workers_async(client: aredis.Redis, namespace: str) -> list[WorkerInfo]:
    """Every live worker (sorted by id), asyncio client."""
    keys = sorted([k async for k in client.scan_iter(match=f"{namespace}:worker:*", count=500)])
    vals = await client.mget(keys) if keys else []
    return sorted((w for w in map(_parse, vals) if w is not None), key=lambda w: w.worker_id)
