"""Fan-out of real-time protocol messages to WebSocket clients with per-client subscriptions.

Protocol (every frame is strict JSON, RFC 8259):

* Message types: ``market_data``, ``calc_result``, ``task_status``, ``alert``. Every message sent to
  a client is ``{"type": T, "seq": N, "ts": <ns>, "data": {...}}`` (+ ``symbol`` / ``job_id`` when
  known). ``seq`` counts the messages queued for this client (1, 2, 3, ...): a gap means messages
  were dropped.
* **Non-finite numbers**: JSON has no NaN/Infinity, so every NaN, +inf and -inf in ``data`` is sent
  as ``null`` (a feature whose window has not filled yet is ``null``, never a bare ``NaN``).
* **Bounded per-client queue, drop-oldest**: each client has a queue of ``queue_max`` messages
  (``jobs.ws_queue_max``, default 1000). A client that reads slower than messages arrive loses its
  *oldest* queued messages, never blocking the control loop or other clients. Drops are signalled:
  before the next message after a drop the client receives ``{"type": "dropped", "count": N,
  "dropped_total": T}`` (N messages lost since the previous notice, T since connecting), and the
  ``seq`` numbers of the lost messages are missing from the stream.
* A client subscribes with ``{"action": "subscribe", "types": [...], "symbols": [...],
  "job_ids": [...]}`` (omitted or empty filters match everything of the subscribed types) and
  ``{"action": "unsubscribe", "types": [...]}``; each subscribe replaces that client's filters.

Threads: the hub lives on the event loop; the topic feeds run in threads and only call
:meth:`Hub.wants` (guarded by a lock) and hand records over with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock

TYPES = ("market_data", "calc_result", "task_status", "alert")
#: default bound of each client's queue (messages)
QUEUE_MAX = 1000


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +inf, -inf) replaced by ``None``, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(msg: Any) -> str:
    """Strict JSON text of a message (non-finite numbers as ``null``; never a bare ``NaN``)."""
    return json.dumps(json_safe(msg), default=str, allow_nan=False)


@dataclass
class Client:
    """One WebSocket connection, its subscription and its bounded queue."""

    id: int
    queue_max: int = QUEUE_MAX
    queue: asyncio.Queue[dict[str, Any]] = field(init=False)
    types: set[str] = field(default_factory=set)
    symbols: set[str] = field(default_factory=set)
    job_ids: set[str] = field(default_factory=set)
    #: messages queued for this client so far (the last ``seq`` given)
    seq: int = 0
    #: messages dropped since connecting / since the last ``dropped`` notice
    dropped: int = 0
    unreported_drops: int = 0

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.queue_max)

    def matches(self, mtype: str, symbol: str | None, job_id: str | None) -> bool:
        """True when this client wants a message of ``mtype`` for ``symbol`` / ``job_id``."""
        if mtype not in self.types:
            return False
        if self.symbols and mtype in ("market_data", "calc_result") and symbol not in self.symbols:
            return False
        if self.job_ids and mtype == "task_status" and job_id not in self.job_ids:
            return False
        return True

    def offer(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` with the next ``seq``; when full, drop the oldest queued message first."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            self.unreported_drops += 1
        self.seq += 1
        self.queue.put_nowait({**msg, "seq": self.seq})

    def drop_notice(self) -> dict[str, Any] | None:
        """The ``dropped`` notice owed to the client (and reset the count), or None."""
        if not self.unreported_drops:
            return None
        n, self.unreported_drops = self.unreported_drops, 0
        return {"type": "dropped", "count": n, "dropped_total": self.dropped}


class Hub:
    """The set of connected clients. Mutated on the event loop; :meth:`wants` may be called from
    any thread (the client set and subscriptions are guarded by a lock)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, queue_max: int = QUEUE_MAX) -> None:
        if queue_max < 1:
            raise ValueError("the WebSocket queue bound must be >= 1")
        self.clock = clock
        self.queue_max = queue_max
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.published = 0

    def connect(self) -> Client:
        """Register a new client (no subscription yet)."""
        c = Client(next(self._ids), self.queue_max)
        with self._lock:
            self.clients[c.id] = c
        return c

    def disconnect(self, c: Client) -> None:
        """Forget a client."""
        with self._lock:
            self.clients.pop(c.id, None)

    def subscribe(self, c: Client, types: Iterable[str], symbols: Iterable[str], job_ids: Iterable[str]) -> None:
        """Replace a client's subscription."""
        with self._lock:
            c.types, c.symbols, c.job_ids = set(types), set(symbols), set(job_ids)

    def unsubscribe(self, c: Client, types: Iterable[str]) -> None:
        """Remove message types from a client's subscription."""
        with self._lock:
            c.types = c.types - set(types)

    def count(self) -> int:
        """Connected clients."""
        with self._lock:
            return len(self.clients)

    def wants(self, mtype: str) -> bool:
        """True when any client subscribes to ``mtype`` (thread-safe)."""
        with self._lock:
            return any(mtype in c.types for c in self.clients.values())

    def publish(self, mtype: str, data: dict[str, Any], *, symbol: str | None = None, job_id: str | None = None) -> int:
        """Queue a message for every matching client (event loop only); returns how many got it."""
        msg: dict[str, Any] = {"type": mtype, "ts": self.clock.now_ns(), "data": data}
        if symbol is not None:
            msg["symbol"] = symbol
        if job_id is not None:
            msg["job_id"] = job_id
        with self._lock:
            targets = [c for c in self.clients.values() if c.matches(mtype, symbol, job_id)]
        for c in targets:
            c.offer(msg)
        self.published += len(targets)
        return len(targets)
