"""CPU affinity takes effect: ``run --cpus`` puts every thread of a worker on the CPUs given (and
the worker still works), ``stack.kafka_cpus`` every thread of the broker; a CPU the machine does
not have is refused before anything starts. Read back from ``/proc`` (each thread's mask)."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path

from mystocks_gpu.infra.config import Settings, StackConfig
from mystocks_gpu.infra.cpu_affinity import thread_cpus
from mystocks_gpu.infra.stack import LocalStack
from tests.conftest import run_cli, wait_until
from tests.integration.stream_helpers import (
    finish,
    make_topics,
    produce_ticks,
    start_worker,
    synthetic,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _consumed(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("mystocks_stream_records_in_total"))


def test_run_cpus_puts_every_worker_thread_there_and_the_worker_works(settings: Settings, unique: str) -> None:
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    t = make_topics(settings, unique, partitions=2)
    cols, names = synthetic(4_000, symbols=10, seed=21)
    produce_ticks(settings, t.input, cols, names)
    port = _free_port()
    w = start_worker(t, "wcpu", "--cpus", str(cpu), "--metrics-port", str(port), idle_exit=4)
    try:
        wait_until(lambda: _consumed(port) >= 4_000 or w.poll() is not None, 120, "the pinned worker to read its input")
        assert w.poll() is None
        masks = thread_cpus(w.pid)
        assert len(masks) > 3  # the loop, librdkafka's threads, the metrics server
        assert set(masks.values()) == {(cpu,)}, masks
    finally:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGTERM)
    summary = json.loads(finish(w).strip().splitlines()[-1])
    assert summary["records_in"] == 4_000 and summary["records_out"] >= 4_000
    # the control: a worker started the same way without --cpus may use every CPU this test may
    other = start_worker(t, "wfree", "--metrics-port", str(port := _free_port()), idle_exit=3)
    try:
        wait_until(lambda: len(thread_cpus(other.pid)) > 3 or other.poll() is not None, 60, "the worker's threads")
        assert set(thread_cpus(other.pid).values()) == {tuple(sorted(allowed))}
    finally:
        finish(other)


def test_a_cpu_the_machine_lacks_is_refused_at_once(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=1)
    missing = max(os.sched_getaffinity(0)) + 64
    r = run_cli("run", "aggregate", "--group", t.group, "--input-topic", t.input, "--output-topic", t.output,
                "--cpus", f"0,{missing}", "--idle-exit", "2")
    assert r.returncode == 2 and f"--cpus: CPU(s) [{missing}] are not available here" in r.stderr, r.stderr
    r = run_cli("run", "aggregate", "--group", t.group, "--input-topic", t.input, "--cpus", "2-1")
    assert r.returncode == 2 and "--cpus" in r.stderr and "ascending range" in r.stderr, r.stderr


def test_stack_kafka_cpus_puts_every_broker_thread_there(settings: Settings, tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    st = LocalStack(StackConfig(home=str(tmp_path / "stack"), kafka_port=_free_port(), controller_port=_free_port(),
                                redis_port=_free_port(), cache_dir=settings.stack.cache_dir,
                                kafka_version=settings.stack.kafka_version, kafka_cpus=str(cpu)))
    try:
        pid = st.start_kafka()  # returns once the broker answers
        masks = thread_cpus(pid)
        assert len(masks) > 20  # a JVM: GC, compiler, request and network threads
        assert set(masks.values()) == {(cpu,)}, masks
        assert os.sched_getaffinity(0) != {cpu} or len(os.sched_getaffinity(0)) == 1  # this process got its mask back
    finally:
        st.down()
