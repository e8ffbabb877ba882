"""Pure placement logic for the job control plane (no I/O).

Inputs are the live worker inventories (from heartbeats), the memory already committed to placed
chunks, and the queued chunk requests in priority order. Rules:

* **real-time reservation** -- a device with ``reserved_for`` set (a real-time processor holds it)
  or holding a running ``realtime`` chunk is never given to any other job;
* ``realtime`` -- a whole, idle GPU (nothing committed), most free memory first; held exclusively;
* ``training`` -- the eligible device with the most available memory (GPUs before the CPU);
* ``chunked`` / ``batch`` -- chunks spread over the least-loaded devices (fewest active chunks,
  counting the ones placed in this pass), GPUs before the CPU, then most available memory;
* **no over-commit** -- ``available = min(free reported, total * (1 - headroom) - committed)``; a
  chunk is placed only where ``memory_bytes <= available``, and the ledger is updated in the pass.

A chunk that fits nowhere stays queued; :func:`place` reports why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.infra.config import SchedulerConfig
from mystocks_gpu.infra.devices import Device


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker: the kinds it runs and its devices."""

    worker_id: str
    kinds: tuple[str, ...]
    devices: tuple[Device, ...]
    ts_ns: int = 0
    running: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"worker_id": self.worker_id, "kinds": list(self.kinds), "devices": [d.to_dict() for d in self.devices],
                "ts_ns": self.ts_ns, "running": list(self.running), **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerInfo:
        """Inverse of :meth:`to_dict` (unknown keys are kept in ``extra``)."""
        known = {"worker_id", "kinds", "devices", "ts_ns", "running"}
        return cls(str(d["worker_id"]), tuple(d.get("kinds", ())), tuple(Device.from_dict(x) for x in d.get("devices", ())),
                   int(d.get("ts_ns", 0)), tuple(d.get("running", ())), {k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class Commitment:
    """Memory held by a chunk already placed (dispatched or running) on a device."""

    worker_id: str
    device_id: str
    memory_bytes: int
    exclusive: bool = False


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk waiting for a device. ``memory_bytes`` is its estimate."""

    job_id: str
    chunk: int
    kind: str
    memory_bytes: int
    policy: str = "batch"
    devices: str = "any"


@dataclass(frozen=True)
class Placement:
    """Where a chunk goes."""

    job_id: str
    chunk: int
    worker_id: str
    device_id: str
    memory_bytes: int


@dataclass
class _Slot:
    worker: WorkerInfo
    device: Device
    committed: int = 0
    count: int = 0
    exclusive: bool = False

    def available(self, headroom: float) -> int:
        cap = int(self.device.total_bytes * (1.0 - headroom)) - self.committed
        return max(0, min(self.device.free_bytes, cap))


@dataclass
class PlacementResult:
    """Placements made in one pass and, for chunks left queued, the reason."""

    placements: list[Placement] = field(default_factory=list)
    waiting: dict[tuple[str, int], str] = field(default_factory=dict)


def _ledger(workers: Iterable[WorkerInfo], commitments: Iterable[Commitment]) -> dict[tuple[str, str], _Slot]:
    slots = {(w.worker_id, d.id): _Slot(w, d) for w in workers for d in w.devices}
    for c in commitments:
        s = slots.get((c.worker_id, c.device_id))
        if s is None:  # worker gone: its commitments free nothing and block nothing
            continue
        s.committed += c.memory_bytes
        s.count += 1
        s.exclusive = s.exclusive or c.exclusive
    return slots


def _eligible(s: _Slot, req: ChunkRequest, cfg: SchedulerConfig) -> str | None:
    """None when ``req`` may go to slot ``s``, else why not."""
    if req.kind not in s.worker.kinds:
        return "kind not served"
    if s.device.reserved_for:
        return f"reserved for real-time {s.device.reserved_for}"
    if s.exclusive:
        return "held by a real-time job"
    if req.devices != "any" and s.device.kind != req.devices:
        return f"needs a {req.devices} device"
    if req.policy == "realtime":
        if not s.device.is_gpu:
            return "real-time needs a GPU"
        if s.count:
            return "real-time needs an idle GPU"
    if cfg.max_chunks_per_device and s.count >= cfg.max_chunks_per_device:
        return "device busy"
    if req.memory_bytes > s.available(cfg.memory_headroom):
        return "not enough free memory"
    return None


def _order(req: ChunkRequest, s: _Slot, cfg: SchedulerConfig) -> tuple[Any, ...]:
    avail = s.available(cfg.memory_headroom)
    tie = (s.worker.worker_id, s.device.id)
    if req.policy in ("training", "realtime"):
        return (not s.device.is_gpu, -avail, s.count, *tie)
    return (s.count, not s.device.is_gpu, -avail, *tie)


def place(requests: Sequence[ChunkRequest], workers: Iterable[WorkerInfo],
          commitments: Iterable[Commitment] = (), cfg: SchedulerConfig | None = None) -> PlacementResult:
    """Place ``requests`` (highest priority first) on ``workers``' devices without over-committing.

    Later requests may use devices an earlier, larger request could not (backfill). Pure: the
    inputs are not modified.
    """
    cfg = cfg or SchedulerConfig()
    slots = _ledger(list(workers), commitments)
    out = PlacementResult()
    for req in requests:
        if req.memory_bytes < 0:
            out.waiting[(req.job_id, req.chunk)] = "negative memory estimate"
            continue
        reasons: dict[str, int] = {}
        best: _Slot | None = None
        best_key: tuple[Any, ...] | None = None
        for s in slots.values():
            why = _eligible(s, req, cfg)
            if why is not None:
                reasons[why] = reasons.get(why, 0) + 1
                continue
            key = _order(req, s, cfg)
            if best_key is None or key < best_key:
                best, best_key = s, key
        if best is None:
            if not slots:
                out.waiting[(req.job_id, req.chunk)] = "no live worker"
            else:
                detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
                out.waiting[(req.job_id, req.chunk)] = f"no device fits {req.memory_bytes / 2**20:.0f} MiB ({detail})"
            continue
        best.committed += req.memory_bytes
        best.count += 1
        best.exclusive = best.exclusive or req.policy == "realtime"
        out.placements.append(Placement(req.job_id, req.chunk, best.worker.worker_id, best.device.id, req.memory_bytes))
    return out


def never_fits(req: ChunkRequest, workers: Iterable[WorkerInfo], cfg: SchedulerConfig | None = None) -> str | None:
    """Why ``req`` can never be placed on the live workers that serve its kind, or None.

    Only what no amount of waiting changes counts: the device kind, a real-time reservation, the
    real-time policy's need of a GPU, and the device's usable memory (``total * (1 - headroom)``,
    ignoring what is in use now). With no live worker serving the kind, the answer is None (a
    worker may still start); the control app rejects a job with a reason otherwise.
    """
    cfg = cfg or SchedulerConfig()
    serving = [w for w in workers if req.kind in w.kinds]
    if not serving:
        return None
    best = 0
    why: dict[str, int] = {}
    for w in serving:
        for d in w.devices:
            if d.reserved_for:
                why[f"reserved for real-time {d.reserved_for}"] = why.get(f"reserved for real-time {d.reserved_for}", 0) + 1
            elif req.devices != "any" and d.kind != req.devices:
                why[f"not a {req.devices} device"] = why.get(f"not a {req.devices} device", 0) + 1
            elif req.policy == "realtime" and not d.is_gpu:
                why["real-time needs a GPU"] = why.get("real-time needs a GPU", 0) + 1
            else:
                usable = int(d.total_bytes * (1.0 - cfg.memory_headroom))
                if req.memory_bytes <= usable:
                    return None
                best = max(best, usable)
                why["too small"] = why.get("too small", 0) + 1
    n = sum(len(w.devices) for w in serving)
    detail = ", ".join(f"{k} {v}" for k, v in sorted(why.items(), key=lambda kv: -kv[1]))
    largest = f"; the largest usable device has {best / 2**20:.0f} MiB" if best else ""
    return (f"no device of the {len(serving)} live worker(s) serving {req.kind} can ever fit a chunk of "
            f"{req.memory_bytes / 2**20:.0f} MiB ({n} device(s): {detail}){largest}")
