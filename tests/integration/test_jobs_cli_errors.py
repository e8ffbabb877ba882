"""Errors a user can act on, from the job-plane commands on the real stack: a worker with Redis
down says so in one line; ``submit --wait`` with no control app says within ~2 s what it waits for
and gives up after its bound."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.stack import LocalStack
from tests.conftest import ROOT, run_cli
from tests.integration.jobs_plane import free_port


def test_worker_with_redis_down_prints_one_clear_line(settings: Settings, stack: LocalStack) -> None:
    port = free_port()  # nothing listens there
    r = run_cli("worker", "--id", "no-redis", timeout=60, env={"MYSTOCKS_REDIS__URL": f"redis://127.0.0.1:{port}/0"})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == [f"mystocks-gpu: error: Redis is not answering at redis://127.0.0.1:{port}/0 (Error 111 "
                     f"connecting to 127.0.0.1:{port}. Connection refused.); start it (mystocks-gpu stack up) or "
                     "set redis.url / MYSTOCKS_REDIS__URL"], r.stderr


def test_submit_wait_without_a_control_app_says_what_it_waits_for_and_gives_up(settings: Settings,
                                                                              stack: LocalStack) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", "submit", "echo", "--spec", '{"message": "x"}',
                             "--wait", "--accept-timeout", "8", "--namespace", f"t{uuid.uuid4().hex[:8]}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    rc = proc.wait(timeout=90)
    t_exit = time.monotonic()
    reader.join(timeout=10)
    text = "\n".join(line for _, line in lines)
    assert rc == 3, text
    assert len(lines) == 2, text
    (t_notice, notice), (_, error) = lines
    assert notice.startswith("mystocks-gpu: waiting for a control app to take job ") and notice.endswith(
        ": no status on job.status yet (is `mystocks-gpu control` running?); giving up after 8 s"), notice
    assert error.startswith("mystocks-gpu: error: no control app took job ") and " within 8 s " in error, error
    assert "start one with `mystocks-gpu control`" in error
    # the notice comes ~2 s into the 8 s wait: ~6 s before the exit
    assert 4.0 < t_exit - t_notice < 12.0, t_exit - t_notice


def test_jobs_limit_below_one_is_refused_before_any_request(settings: Settings, stack: LocalStack) -> None:
    """``jobs --limit 0`` was sent as no limit at all (every job listed); now any limit below 1 is
    refused before the control app is asked (none runs here: the old code said it found none)."""
    for bad in ("0", "-3"):
        r = run_cli("jobs", "--limit", bad, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"mystocks-gpu: error: --limit must be >= 1, got {bad}", r.stderr
