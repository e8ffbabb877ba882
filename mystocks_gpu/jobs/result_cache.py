"""Results in Redis.

* **Result cache** -- ``{ns}:cache:{sha256}`` where the hash covers (kind, normalised spec, input
  data range); an identical submit is answered from it. TTL configurable; bypassable per job.
* **Result store** -- ``{ns}:result:{job_id}:{chunk}``, written once with ``SET NX`` so a chunk
  re-run after a worker crash can never produce a second result: the first writer wins and every
  later run reads the winner's value.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis
import redis.asyncio as aredis


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats as repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(kind: str, spec: dict[str, Any], data_range: dict[str, Any] | None) -> str:
    """Content hash (hex sha256) of (kind, normalised spec, input data range)."""
    blob = canonical_json({"kind": kind, "spec": spec, "data": data_range})
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """Async result cache used by the control app."""

    def __init__(self, client: aredis.Redis, namespace: str, ttl_s: float) -> None:
        self.client, self.ns, self.ttl_s = client, namespace, ttl_s

    def _key(self, h: str) -> str:
        return f"{self.ns}:cache:{h}"

    async def get(self, h: str) -> dict[str, Any] | None:
        """The cached result for hash ``h``, or None."""
        raw = await self.client.get(self._key(h))
        return json.loads(raw) if raw is not None else None

    async def put(self, h: str, result: dict[str, Any]) -> None:
        """Cache ``result`` under ``h`` for ``ttl_s`` seconds (0 = no caching)."""
        if self.ttl_s > 0:
            await self.client.set(self._key(h), canonical_json(result), px=int(self.ttl_s * 1000))


def result_key(namespace: str, job_id: str, chunk: int) -> str:
    """Redis key of one chunk's result."""
    return f"{namespace}:result:{job_id}:{chunk}"


class ResultStore:
    """Write-once chunk results (sync client, used by workers)."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: float = 7 * 86400) -> None:
        self.client, self.ns, self.ttl_s = client, namespace, ttl_s

    def set_once(self, job_id: str, chunk: int, result: dict[str, Any]) -> bool:
        """Store ``result`` unless one exists (``SET NX``); True when this call stored it."""
        key = result_key(self.ns, job_id, chunk)
        return bool(self.client.set(key, canonical_json(result), nx=True, ex=max(1, int(self.ttl_s))))

    def put_once(self, job_id: str, chunk: int, result: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Store ``result`` unless one exists: ``(won, stored_result)``."""
        won = self.set_once(job_id, chunk, result)
        raw = self.client.get(result_key(self.ns, job_id, chunk))
        return won, (json.loads(raw) if raw is not None else result)

    def get(self, job_id: str, chunk: int) -> dict[str, Any] | None:
        """The stored result of a chunk, or None."""
        raw = self.client.get(result_key(self.ns, job_id, chunk))
        return json.loads(raw) if raw is not None else None

    def mark_run(self, job_id: str, chunk: int) -> int:
        """Count one run (attempt) of a chunk; returns the number of runs so far."""
        key = f"{self.ns}:runs:{job_id}:{chunk}"
        n = int(self.client.incr(key))
        self.client.expire(key, max(1, int(self.ttl_s)))
        return n

    def runs(self, job_id: str, chunk: int) -> int:
        """How many times a chunk was started."""
        return int(self.client.get(f"{self.ns}:runs:{job_id}:{chunk}") or 0)

    def count(self, job_id: str) -> int:
        """How many chunk results exist for ``job_id``."""
        return sum(1 for _ in self.client.scan_iter(match=f"{self.ns}:result:{job_id}:*", count=500))
