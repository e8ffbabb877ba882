"""Test harness for the job control plane: a control app and workers as real subprocesses of
``mystocks-gpu`` against the session's Kafka + Redis, with a private Redis namespace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.jobs.client import StatusFollower
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.protocol import FINAL
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["ROOT", "Plane", "collect", "free_port", "http", "states", "wait_until"]  # wait_until: re-exported
HB_TTL = "3"
HB_INTERVAL = "0.5"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Plane:
    """A control app + workers; :meth:`close` terminates every process it started."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.settings = settings
        self.ns = f"t{tag}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cfg = JobsConfig(namespace=self.ns)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = Path(f"/tmp/mystocks-test-{tag}")
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *args], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def start_control(self, *extra: str, timeout: float = 60) -> None:
        self.spawn_control(*extra)
        self.wait_ready(timeout)

    def spawn_control(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start the control app (same app id every time: a restart recovers the job table)."""
        return self._spawn("control", "control", "--port", str(self.port), "--namespace", self.ns, "--app-id",
                           f"test-ctl-{self.ns}", "--heartbeat-ttl", HB_TTL, "--tick", "0.25", *extra)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: (status, body); (0, {}) while nothing listens."""
        try:
            return http("GET", f"{self.url}/health")
        except OSError:
            return 0, {}

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.procs["control"].poll() is None, self.log("control")
            return bool(self.health()[1].get("ready"))

        wait_until(ready, timeout, lambda: f"control app ready:\n{self.log('control')}")

    def start_worker(self, wid: str, *extra: str, timeout: float = 30) -> subprocess.Popen[bytes]:
        p = self._spawn(wid, "worker", "--id", wid, "--namespace", self.ns, "--heartbeat-ttl", HB_TTL,
                        "--heartbeat-interval", HB_INTERVAL, *extra)

        def beating() -> bool:
            assert p.poll() is None, self.log(wid)
            return wid in {w["worker_id"] for w in self.workers()}

        wait_until(beating, timeout, lambda: f"worker {wid} heart-beating:\n{self.log(wid)}")
        return p

    def workers(self) -> list[dict[str, Any]]:
        return http("GET", f"{self.url}/workers")[1]["workers"]

    def warm_up(self) -> None:
        """One echo job end to end, so every consumer is positioned before the tests start."""
        jid = self.submit("echo", {"message": f"warm-up {uuid.uuid4().hex}"}, bypass_cache=True)
        self.wait(jid, FINAL, timeout=60)

    def submit(self, kind: str, spec: dict[str, Any], **kw: Any) -> str:
        status, body = http("POST", f"{self.url}/jobs", {"kind": kind, "spec": spec, **kw})
        assert status == 202, body
        return str(body["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = http("GET", f"{self.url}/jobs/{job_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def wait(self, job_id: str, states: set[str] | frozenset[str], timeout: float = 30) -> dict[str, Any]:
        return self.wait_job(job_id, lambda j: j["state"] in states, timeout, f"in {sorted(states)}")

    def wait_job(self, job_id: str, cond: Callable[[dict[str, Any]], bool], timeout: float = 30,
                 what: str = "condition") -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until ``cond(job)``; returns the job."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            status, body = http("GET", f"{self.url}/jobs/{job_id}")
            if status == 200:
                last.update(body)
                if cond(body):
                    return body
            return None

        return wait_until(check, timeout, lambda: f"job {job_id} {what}: {last}")

    def follower(self) -> StatusFollower:
        return StatusFollower(self.settings, self.cfg)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        p.send_signal(sig)
        p.wait(timeout=15)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def collect(follower: StatusFollower, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Every job.status record of ``job_id`` up to its final one."""
    return list(follower.statuses(job_id, timeout))


def states(statuses: list[dict[str, Any]]) -> list[str]:
    """The state sequence with repeats collapsed."""
    out: list[str] = []
    for s in statuses:
        if not out or out[-1] != s["state"]:
            out.append(s["state"])
    return out
