"""The control plane's state machine over the job table (pure: no Kafka, no Redis).

Every input (a command, a worker report, a timer pass with the live workers) mutates job records
in ``table`` (a Faust table in the app, a dict in tests) and returns :class:`Effects`: the
``job.status`` records to publish, dispatch messages, alerts, cache writes. Only this module
writes job states, so ``job.status`` gets exactly one final record per job.

Job record: ``job_id, kind, spec, priority, deadline_ns, requester, bypass_cache, cache_key,
policy, devices, state, progress, message, error, worker, cached, result, submitted_ns,
started_ns, finished_ns, chunks=[{idx, spec, state, worker, device, attempt, progress,
memory_bytes, result}]``. Chunk states: pending, dispatched, running, done, failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.jobs import job_metrics as m
from mystocks_gpu.jobs.alerts import make_alert
from mystocks_gpu.jobs.kinds import get_kind
from mystocks_gpu.jobs.protocol import FINAL, check_submit, status_record
from mystocks_gpu.jobs.result_cache import cache_key
from mystocks_gpu.jobs.scheduler import (
    ChunkRequest,
    Commitment,
    SchedulerConfig,
    WorkerInfo,
    never_fits,
    place,
)
from mystocks_gpu.processors.exceptions import JobSpecError

log = logging.getLogger(__name__)
ACTIVE_CHUNK = ("dispatched", "running")


@dataclass
class Effects:
    """What one state transition asks the app to do."""

    statuses: list[dict[str, Any]] = field(default_factory=list)
    dispatch: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    cache_puts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def extend(self, other: Effects) -> Effects:
        """Append ``other``'s effects; returns self."""
        self.statuses += other.statuses
        self.dispatch += other.dispatch
        self.alerts += other.alerts
        self.cache_puts += other.cache_puts
        return self

    def __bool__(self) -> bool:
        return bool(self.statuses or self.dispatch or self.alerts or self.cache_puts)


def submit_cache_key(cmd: dict[str, Any], data_version: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """``(cache key, None)`` for a valid submit, ``(None, reason)`` for an invalid one. With a
    ``data_version`` (see ``result_cache.DataVersions``) the key changes when the input data does."""
    try:
        spec = check_submit(cmd)
    except JobSpecError as exc:
        return None, str(exc)
    return cache_key(str(cmd["kind"]), spec.to_dict(), spec.data_range(), data_version), None


class ControlCore:
    """Job table transitions. ``table`` maps job id -> job record (always re-assigned, never
    mutated in place, so a Faust table writes its changelog)."""

    def __init__(self, table: MutableMapping[str, Any], scheduler: SchedulerConfig | None = None,
                 clock: Clock = SYSTEM_CLOCK, reject_unfit_after_s: float = 10.0) -> None:
        self.table = table
        self.clock = clock
        self.sched = scheduler or SchedulerConfig()
        #: a queued job that no live worker serving its kind can ever hold is rejected after this long
        #: (s): a grace for workers still joining, so a partial view of the fleet rejects nothing
        self.reject_unfit_after_s = reject_unfit_after_s
        self._unfit_since: dict[str, int] = {}
        self.active: set[str] = set()
        self._lost_alerted: set[str] = set()
        self._indexed = False

    # ---- index -------------------------------------------------------------------------
    def reindex(self) -> None:
        """Rebuild the set of non-final jobs from the table (after changelog recovery)."""
        self.active = {k for k, v in self.table.items() if v and v.get("state") not in FINAL}
        self._indexed = True
        self._gauges()

    def _gauges(self) -> None:
        counts = {"queued": 0, "running": 0}
        by_kind: dict[tuple[str, str], int] = {}
        for jid in self.active:
            st, kind = self.table[jid]["state"], str(self.table[jid].get("kind", ""))
            counts[st] = counts.get(st, 0) + 1
            by_kind[(st, kind)] = by_kind.get((st, kind), 0) + 1
        for st, n in counts.items():
            m.JOBS_ACTIVE.labels(st).set(n)
        m.set_jobs_by_kind(by_kind)

    def _save(self, job: dict[str, Any]) -> None:
        job["updated_ns"] = self.clock.now_ns()
        self.table[job["job_id"]] = job
        if job["state"] in FINAL:
            self.active.discard(job["job_id"])
        else:
            self.active.add(job["job_id"])

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A copy of a job record, or None."""
        job = self.table.get(job_id)
        return json.loads(json.dumps(job)) if job else None

    # ---- commands ----------------------------------------------------------------------
    def submit(self, cmd: dict[str, Any], *, cached: dict[str, Any] | None = None, n_devices: int = 1,
               now_ns: int | None = None, data_version: dict[str, Any] | None = None,
               cacheable: bool = True) -> Effects:
        """Handle a SUBMIT: reject, answer from cache, or queue (a known job id is a no-op).
        ``data_version``: the input data's version in the cache key; ``cacheable=False``: the
        version could not be read, so the result is not cached."""
        now = now_ns or self.clock.now_ns()
        eff = Effects()
        job_id = str(cmd.get("job_id", ""))
        if job_id and self.table.get(job_id):
            log.info("duplicate submit of %s ignored", job_id)
            return eff
        base: dict[str, Any] = {"job_id": job_id, "kind": str(cmd.get("kind", "")), "priority": int(cmd.get("priority", 0)),
                "deadline_ns": cmd.get("deadline_ns"), "requester": str(cmd.get("requester", "")),
                "bypass_cache": bool(cmd.get("bypass_cache", False)), "submitted_ns": now, "started_ns": None,
                "finished_ns": None, "progress": 0.0, "message": "", "error": None, "worker": None, "cached": False,
                "result": None, "chunks": []}
        try:
            spec = check_submit(cmd, now)
            kind = get_kind(base["kind"])
            chunks = kind.chunks(spec, n_devices)
        except JobSpecError as exc:
            return self._reject(base, str(exc), now)
        base["spec"] = spec.to_dict()
        base["cache_key"] = cache_key(kind.name, base["spec"], spec.data_range(), data_version) if cacheable else None
        base["policy"], base["devices"] = kind.policy, kind.devices
        m.JOBS_SUBMITTED.labels(kind.name).inc()
        if cached is not None and not base["bypass_cache"]:
            m.JOBS_CACHED.labels(kind.name).inc()
            job = {**base, "state": "succeeded", "progress": 1.0, "cached": True, "result": cached,
                   "message": "served from the result cache", "finished_ns": now}
            self._save(job)
            self._finished(job)
            eff.statuses.append(status_record(job, now_ns=self.clock.now_ns()))
            return eff
        base["chunks"] = [{"idx": i, "spec": c.to_dict(), "state": "pending", "worker": None, "device": None,
                           "attempt": 0, "progress": 0.0, "memory_bytes": int(c.memory_bytes()), "result": None}
                          for i, c in enumerate(chunks)]
        job = {**base, "state": "queued", "message": f"queued ({len(chunks)} chunk{'s' * (len(chunks) > 1)})"}
        self._save(job)
        eff.statuses.append(status_record(job, now_ns=self.clock.now_ns()))
        return eff

    def _reject(self, base: dict[str, Any], reason: str, now: int) -> Effects:
        m.JOBS_REJECTED.inc()
        job = {**base, "state": "rejected", "error": reason, "message": "rejected", "finished_ns": now, "spec": None}
        log.info("job %s rejected: %s", base["job_id"], reason)
        eff = Effects()
        if not base["job_id"] or not isinstance(base["job_id"], str) or len(base["job_id"]) > 128:
            return eff  # no key to publish under; the app dead-letters the command
        self._save(job)
        eff.statuses.append(status_record(job, now_ns=self.clock.now_ns()))
        return eff

    def cancel(self, job_id: str, requester: str = "", now_ns: int | None = None) -> Effects:
        """Handle a CANCEL: a queued or running job becomes cancelled; its workers are told to stop."""
        job = self.get(job_id)
        eff = Effects()
        if job is None:
            m.JOBS_REJECTED.inc()
            eff.statuses.append({"job_id": job_id, "ts_event": self.clock.now_ns(), "kind": "", "state": "REJECTED",
                                 "progress": 0.0, "message": "rejected", "error": f"cancel: unknown job {job_id!r}",
                                 "worker": None, "cached": False, "result_json": None})
            return eff
        if job["state"] in FINAL:
            log.info("cancel of %s ignored: already %s", job_id, job["state"])
            return eff
        return self._finish(job, "cancelled", now_ns, message=f"cancelled{' by ' + requester if requester else ''}",
                            stop_reason="cancelled")

    def _finish(self, job: dict[str, Any], state: str, now_ns: int | None, *, message: str = "",
                error: str | None = None, stop_reason: str | None = None) -> Effects:
        eff = Effects()
        job.update(state=state, message=message, error=error, finished_ns=now_ns or self.clock.now_ns())
        if stop_reason:
            for c in job["chunks"]:
                if c["state"] in ACTIVE_CHUNK and c["worker"]:
                    eff.dispatch.append((c["worker"], {"type": "stop", "job_id": job["job_id"], "chunk": c["idx"],
                                                       "attempt": c["attempt"], "reason": stop_reason}))
        self._save(job)
        self._finished(job)
        eff.statuses.append(status_record(job, now_ns=self.clock.now_ns()))
        return eff

    def _finished(self, job: dict[str, Any]) -> None:
        m.JOBS_FINISHED.labels(job["kind"], job["state"]).inc()
        if job.get("finished_ns") and job.get("submitted_ns"):
            m.JOB_SECONDS.labels(job["kind"]).observe((job["finished_ns"] - job["submitted_ns"]) / 1e9)
        self._gauges()

    # ---- worker reports ----------------------------------------------------------------
    def report(self, st: dict[str, Any], headers: dict[str, str], now_ns: int | None = None) -> Effects:
        """Apply a worker's TaskStatus report for (job, chunk, attempt) named in ``headers``."""
        eff = Effects()
        job = self.get(str(st.get("job_id", "")))
        if job is None or job["state"] in FINAL:
            return eff
        try:
            idx, attempt = int(headers.get("chunk", "0")), int(headers.get("attempt", "0"))
            chunk = job["chunks"][idx]
        except (ValueError, IndexError):
            log.warning("report for %s with bad headers %s ignored", job["job_id"], headers)
            return eff
        state = str(st.get("state", "")).lower()
        if chunk["state"] in ("done", "failed"):
            return eff
        current = attempt == chunk["attempt"]
        where = f"{headers.get('worker', '?')}/{headers.get('device', '?')}"
        if state == "succeeded":
            if not current and chunk["state"] in ACTIVE_CHUNK and chunk["worker"]:
                eff.dispatch.append((chunk["worker"], {"type": "stop", "job_id": job["job_id"], "chunk": idx,
                                                       "attempt": chunk["attempt"], "reason": "superseded"}))
            result = json.loads(st["result_json"]) if st.get("result_json") else {}
            chunk.update(state="done", progress=1.0, result=result)
            if all(c["state"] == "done" for c in job["chunks"]):
                kind = get_kind(job["kind"])
                job["result"] = kind.combine([c["result"] for c in job["chunks"]])
                job["progress"] = 1.0
                for c in job["chunks"]:
                    c["result"] = None  # the combined result is kept once
                eff.extend(self._finish(job, "succeeded", now_ns, message=f"succeeded on {self._workers(job)}"))
                if job["cache_key"]:
                    eff.cache_puts.append((job["cache_key"], job["result"]))
                return eff
            return eff.extend(self._progress(job, f"chunk {idx} done on {where}"))
        if not current:
            return eff  # a stale run (re-queued elsewhere) keeps no say
        if state == "running":
            chunk.update(state="running", progress=max(0.0, min(1.0, float(st.get("progress", 0.0)))))
            return eff.extend(self._progress(job, str(st.get("message", "")) or "running"))
        if state == "failed":
            chunk["state"] = "failed"
            err = st.get("error") or "failed"
            return eff.extend(self._finish(job, "failed", now_ns, message=f"chunk {idx} failed on {where}",
                                           error=str(err), stop_reason="sibling chunk failed"))
        if state in ("queued", "cancelled"):  # the worker gave the chunk back (shutdown) or stopped it
            chunk.update(state="pending", worker=None, device=None, progress=0.0)
            return eff.extend(self._progress(job, f"chunk {idx} re-queued: {st.get('message') or 'given back by ' + where}"))
        return eff

    def _workers(self, job: dict[str, Any]) -> str:
        seen = []
        for c in job["chunks"]:
            w = f"{c['worker']}/{c['device']}" if c["worker"] else None
            if w and w not in seen:
                seen.append(w)
        return ",".join(seen) if seen else (job.get("worker") or "")

    def _progress(self, job: dict[str, Any], message: str) -> Effects:
        """Recompute a job's state/progress from its chunks, save, publish if anything changed."""
        chunks = job["chunks"]
        prog = sum(1.0 if c["state"] == "done" else c["progress"] for c in chunks) / max(1, len(chunks))
        running = any(c["state"] in ("running", "done") for c in chunks)
        state = "running" if running else "queued"
        if state == "running" and not job.get("started_ns"):
            job["started_ns"] = self.clock.now_ns()
        job.update(state=state, progress=round(prog, 6), message=message, worker=self._workers(job) or None)
        self._save(job)
        self._gauges()
        return Effects(statuses=[status_record(job, now_ns=self.clock.now_ns())])

    # ---- timer passes ------------------------------------------------------------------
    def commitments(self) -> list[Commitment]:
        """Memory held by dispatched/running chunks."""
        out = []
        for jid in self.active:
            job = self.table[jid]
            for c in job["chunks"]:
                if c["state"] in ACTIVE_CHUNK and c["worker"]:
                    out.append(Commitment(c["worker"], c["device"], c["memory_bytes"], job.get("policy") == "realtime"))
        return out

    @staticmethod
    def _request(job: dict[str, Any], c: dict[str, Any]) -> ChunkRequest:
        return ChunkRequest(job["job_id"], c["idx"], job["kind"], c["memory_bytes"], job.get("policy", "batch"),
                            job.get("devices", "any"))

    def schedule(self, workers: list[WorkerInfo], now_ns: int | None = None) -> Effects:
        """Place pending chunks (highest priority, then oldest first) and dispatch them. A queued job
        with a chunk that the live workers serving its kind can never hold (see
        :func:`~mystocks_gpu.jobs.scheduler.never_fits`) is rejected with the reason once that has
        held for ``reject_unfit_after_s``; meanwhile its message says so."""
        eff = Effects()
        now = now_ns or self.clock.now_ns()
        jobs = sorted((self.table[j] for j in self.active), key=lambda j: (-j["priority"], j["submitted_ns"], j["job_id"]))
        reqs = []
        for jid in [j for j in self._unfit_since if j not in self.active]:
            del self._unfit_since[jid]
        for j in jobs:
            pending = [self._request(j, c) for c in j["chunks"] if c["state"] == "pending"]
            why = next((w for w in (never_fits(r, workers, self.sched) for r in pending) if w), None)
            if why is None or j["state"] != "queued":
                self._unfit_since.pop(j["job_id"], None)
                reqs += pending
                continue
            since = self._unfit_since.setdefault(j["job_id"], now)
            job = self.get(j["job_id"])
            assert job is not None
            if (now - since) / 1e9 >= self.reject_unfit_after_s:
                del self._unfit_since[j["job_id"]]
                m.JOBS_REJECTED.inc()
                eff.extend(self._finish(job, "rejected", now, message="rejected", error=why))
            elif not job["message"].startswith("waiting: " + why):
                job["message"] = f"waiting: {why} (rejected after {self.reject_unfit_after_s:.0f} s unless a worker " \
                                 "that can hold it joins)"
                self._save(job)
                eff.statuses.append(status_record(job, now_ns=self.clock.now_ns()))
        if not reqs:
            return eff
        res = place(reqs, workers, self.commitments(), self.sched)
        by_job: dict[str, list[Any]] = {}
        for p in res.placements:
            by_job.setdefault(p.job_id, []).append(p)
        for job_id, placements in by_job.items():
            job = self.get(job_id)
            assert job is not None
            for p in placements:
                c = job["chunks"][p.chunk]
                c.update(state="dispatched", worker=p.worker_id, device=p.device_id, attempt=c["attempt"] + 1,
                         progress=0.0)
                eff.dispatch.append((p.worker_id, {"type": "run", "job_id": job_id, "chunk": p.chunk,
                                                   "attempt": c["attempt"], "kind": job["kind"], "spec": c["spec"],
                                                   "device": p.device_id, "memory_bytes": p.memory_bytes,
                                                   "deadline_ns": job.get("deadline_ns")}))
            where = ", ".join(f"{p.chunk}->{p.worker_id}/{p.device_id}" for p in placements)
            eff.extend(self._progress(job, f"dispatched chunk {where}"))
        waiting: dict[str, str] = {}
        for (job_id, _), why in res.waiting.items():
            waiting.setdefault(job_id, why)
        for job_id, why in waiting.items():
            job = self.get(job_id)
            if job is None or job_id in by_job:
                continue
            msg = f"waiting: {why}"
            if job["message"] != msg and job["state"] == "queued":
                job["message"] = msg
                self._save(job)
                eff.statuses.append(status_record(job, now_ns=self.clock.now_ns()))
        return eff

    def check_workers(self, workers: list[WorkerInfo], now_ns: int | None = None) -> Effects:
        """Re-queue chunks of workers whose heartbeat is gone; one WORKER_LOST alert per worker."""
        eff = Effects()
        alive = {w.worker_id for w in workers}
        self._lost_alerted &= {w for w in self._lost_alerted if w not in alive}
        m.WORKERS_ALIVE.set(len(alive))
        for jid in sorted(self.active):
            job = self.get(jid)
            assert job is not None
            lost = [c for c in job["chunks"] if c["state"] in ACTIVE_CHUNK and c["worker"] not in alive]
            if not lost:
                continue
            names = sorted({c["worker"] for c in lost})
            for c in lost:
                m.JOBS_REQUEUED.labels(job["kind"]).inc()
                c.update(state="pending", worker=None, device=None, progress=0.0)
            for w in names:
                if w not in self._lost_alerted:
                    self._lost_alerted.add(w)
                    m.WORKERS_LOST.inc()
                    eff.alerts.append(make_alert("WORKER_LOST", "CRITICAL", w,
                                                 f"worker {w} stopped heart-beating; its chunks were re-queued",
                                                 labels={"worker": w}, clock=self.clock))
            eff.extend(self._progress(job, f"re-queued {len(lost)} chunk(s): worker {', '.join(names)} lost"))
        return eff

    def check_deadlines(self, now_ns: int | None = None) -> Effects:
        """Fail jobs past their deadline and tell their workers to stop (JOB_TIMEOUT alerts)."""
        now = now_ns or self.clock.now_ns()
        eff = Effects()
        for jid in sorted(self.active):
            job = self.get(jid)
            assert job is not None
            dl = job.get("deadline_ns")
            if dl is None or now <= dl:
                continue
            m.JOBS_TIMEOUT.labels(job["kind"]).inc()
            late = (now - dl) / 1e9
            eff.extend(self._finish(job, "failed", now, message="deadline exceeded",
                                    error=f"deadline exceeded by {late:.1f} s (state was {job['state']})",
                                    stop_reason="deadline exceeded"))
            eff.alerts.append(make_alert("JOB_TIMEOUT", "WARNING", jid, f"job {jid} ({job['kind']}) passed its deadline",
                                         late, 0.0, {"job_id": jid, "kind": job["kind"]}, clock=self.clock))
        return eff
