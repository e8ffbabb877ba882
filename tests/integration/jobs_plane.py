"""Test harness for the job control plane: a control app and workers as real subprocesses of
``mystocks-gpu`` against the session's Kafka + Redis, with a private Redis namespace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.jobs.client import StatusFollower
from mystocks_gpu.jobs.jobs_config import JobsConfig
from mystocks_gpu.jobs.protocol import FINAL

ROOT = Path(__file__).resolve().parents[2]
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

    def start_control(self, timeout: float = 60) -> None:
        self._spawn("control", "control", "--port", str(self.port), "--namespace", self.ns, "--app-id",
                    f"test-ctl-{self.ns}", "--heartbeat-ttl", HB_TTL, "--tick", "0.25")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.procs["control"].poll() is None, self.log("control")
            try:
                if http("GET", f"{self.url}/health")[1].get("ready"):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"control app not ready after {timeout} s:\n{self.log('control')}")

    def start_worker(self, wid: str, *extra: str, timeout: float = 30) -> subprocess.Popen[bytes]:
        p = self._spawn(wid, "worker", "--id", wid, "--namespace", self.ns, "--heartbeat-ttl", HB_TTL,
                        "--heartbeat-interval", HB_INTERVAL, *extra)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert p.poll() is None, self.log(wid)
            if wid in {w["worker_id"] for w in self.workers()}:
                return p
            time.sleep(0.2)
        raise AssertionError(f"worker {wid} never heart-beat:\n{self.log(wid)}")

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
        end = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < end:
            status, body = http("GET", f"{self.url}/jobs/{job_id}")
            if status == 200:
                last = body
                if body["state"] in states:
                    return body
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not in {sorted(states)} after {timeout} s: {last}")

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
