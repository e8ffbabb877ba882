"""Wire formats of the job control plane.

* ``cmd.jobs`` -- Avro ``mystocks.jobs.JobCommand`` (clients -> control app), key = job id.
* ``job.status`` -- Avro ``mystocks.jobs.TaskStatus`` (control app -> everyone), key = job id,
  compacted: the latest record per job is its state.
* ``jobs.events`` -- Avro ``TaskStatus`` reports (workers -> control app) with headers
  ``attempt``, ``chunk``, ``worker``, ``device`` naming which run of which chunk reports.
* ``jobs.dispatch.<namespace>.<worker>`` -- JSON (control app -> one worker): ``{"type": "run", job_id,
  chunk, attempt, kind, spec, device, memory_bytes, deadline_ns}`` or ``{"type": "stop", job_id,
  reason}``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.jobs.kinds import get_kind
from mystocks_gpu.processors.exceptions import JobSpecError

COMMAND_SCHEMA = "mystocks.jobs.JobCommand"
STATUS_SCHEMA = "mystocks.jobs.TaskStatus"
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "rejected")
FINAL = frozenset({"succeeded", "failed", "cancelled", "rejected"})
JOB_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_RESULT_JSON = 256 * 1024


def new_job_id() -> str:
    """A fresh job id."""
    return uuid.uuid4().hex


def make_command(action: str, job_id: str, kind: str = "", spec: Any = None, *, priority: int = 0,
                 deadline_ns: int | None = None, requester: str = "", bypass_cache: bool = False,
                 clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """A JobCommand record (``spec`` may be a dict or a JSON string)."""
    spec_json = spec if isinstance(spec, str) else json.dumps(spec if spec is not None else {})
    return {"job_id": job_id, "ts_event": clock.now_ns(), "action": action.upper(), "kind": kind, "spec_json": spec_json,
            "priority": int(priority), "deadline_ns": deadline_ns, "requester": requester, "bypass_cache": bool(bypass_cache)}


def check_submit(cmd: Mapping[str, Any], now_ns: int | None = None) -> Any:
    """Validate a SUBMIT command; returns the parsed spec or raises :class:`JobSpecError`."""
    if not JOB_ID.fullmatch(str(cmd.get("job_id", ""))):
        raise JobSpecError("job_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    kind = get_kind(str(cmd.get("kind", "")))
    spec = kind.parse(cmd.get("spec_json") or "{}")
    prio = int(cmd.get("priority", 0))
    if not -1000 <= prio <= 1000:
        raise JobSpecError(f"priority must be within -1000..1000, got {prio}")
    deadline = cmd.get("deadline_ns")
    if deadline is not None and deadline <= (now_ns or SYSTEM_CLOCK.now_ns()):
        raise JobSpecError("deadline_ns is already in the past")
    return spec


def status_record(job: Mapping[str, Any], state: str | None = None, *, now_ns: int | None = None,
                  **over: Any) -> dict[str, Any]:
    """The TaskStatus record of a job (table) record; ``over`` replaces fields."""
    st = state or job["state"]
    result = job.get("result")
    result_json = None
    if result is not None and st == "succeeded":
        result_json = json.dumps(result, sort_keys=True, default=str)
        if len(result_json) > MAX_RESULT_JSON:
            result_json = json.dumps({"truncated": True, "result_keys": job.get("result_keys", [])})
    rec = {"job_id": job["job_id"], "ts_event": now_ns or SYSTEM_CLOCK.now_ns(), "kind": job.get("kind", ""), "state": st.upper(),
           "progress": float(job.get("progress", 0.0)), "message": str(job.get("message", "")),
           "error": job.get("error"), "worker": job.get("worker"), "cached": bool(job.get("cached", False)),
           "result_json": result_json}
    rec.update(over)
    return rec


def status_to_json(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A TaskStatus record as the JSON clients see (lower-case state, result parsed)."""
    out = dict(rec)
    out["state"] = str(rec["state"]).lower()
    rj = rec.get("result_json")
    out["result"] = json.loads(rj) if rj else None
    out.pop("result_json", None)
    return out


def report_headers(attempt: int, chunk: int, worker: str, device: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a worker report."""
    return [("attempt", str(attempt).encode()), ("chunk", str(chunk).encode()), ("worker", worker.encode()),
            ("device", device.encode())]


def parse_headers(headers: Any) -> dict[str, str]:
    """Headers (list of pairs or mapping, bytes values) -> str dict."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return {str(k): (v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)) for k, v in items}


def job_view(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job table record as the HTTP API returns it."""
    keys = ("job_id", "kind", "state", "progress", "message", "error", "worker", "cached", "result", "priority",
            "deadline_ns", "requester", "bypass_cache", "submitted_ns", "started_ns", "finished_ns", "spec")
    out = {k: job.get(k) for k in keys}
    out["chunks"] = [{k: c.get(k) for k in ("idx", "state", "worker", "device", "attempt", "progress", "memory_bytes")}
                     for c in job.get("chunks", [])]
    return out
