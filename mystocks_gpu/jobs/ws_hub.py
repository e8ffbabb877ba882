"""Fan-out of real-time protocol messages to WebSocket clients with per-client subscriptions.

Message types: ``market_data``, ``calc_result``, ``task_status``, ``alert``. Every message sent
to a client is ``{"type": T, "ts": <ns>, "data": {...}}`` (+ ``symbol`` / ``job_id`` when known).
A client subscribes with ``{"action": "subscribe", "types": [...], "symbols": [...],
"job_ids": [...]}`` (omitted or empty filters match everything of the subscribed types) and
``{"action": "unsubscribe", "types": [...]}``; each subscribe replaces that client's filters.
Slow clients lose their oldest queued messages (bounded queue), never block the control loop.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock

TYPES = ("market_data", "calc_result", "task_status", "alert")
QUEUE_MAX = 1000


@dataclass
class Client:
    """One WebSocket connection and its subscription."""

    id: int
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    types: set[str] = field(default_factory=set)
    symbols: set[str] = field(default_factory=set)
    job_ids: set[str] = field(default_factory=set)
    dropped: int = 0

    def matches(self, mtype: str, symbol: str | None, job_id: str | None) -> bool:
        """True when this client wants a message of ``mtype`` for ``symbol`` / ``job_id``."""
        if mtype not in self.types:
            return False
        if self.symbols and mtype in ("market_data", "calc_result") and symbol not in self.symbols:
            return False
        if self.job_ids and mtype == "task_status" and job_id not in self.job_ids:
            return False
        return True


class Hub:
    """The set of connected clients (used from the event loop thread only)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)
        self.published = 0

    def connect(self) -> Client:
        """Register a new client (no subscription yet)."""
        c = Client(next(self._ids))
        self.clients[c.id] = c
        return c

    def disconnect(self, c: Client) -> None:
        """Forget a client."""
        self.clients.pop(c.id, None)

    def wants(self, mtype: str) -> bool:
        """True when any client subscribes to ``mtype``."""
        return any(mtype in c.types for c in self.clients.values())

    def publish(self, mtype: str, data: dict[str, Any], *, symbol: str | None = None, job_id: str | None = None) -> int:
        """Queue a message for every matching client; returns how many got it."""
        msg: dict[str, Any] = {"type": mtype, "ts": self.clock.now_ns(), "data": data}
        if symbol is not None:
            msg["symbol"] = symbol
        if job_id is not None:
            msg["job_id"] = job_id
        n = 0
        for c in list(self.clients.values()):
            if not c.matches(mtype, symbol, job_id):
                continue
            if c.queue.full():
                c.queue.get_nowait()
                c.dropped += 1
            c.queue.put_nowait(msg)
            n += 1
        self.published += n
        return n
