"""``bench/_features_latency.CpuWindow``: a latency run's CPU by role, in cores, against the
process's own CPU clock (``time.process_time``: the kernel's per-process clock, not ``/proc``'s
tick counts that the window reads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _features_latency as L  # noqa: E402


def test_a_busy_role_reads_its_own_cores_and_the_machine_counts_it() -> None:
    window = L.CpuWindow({"reader": [os.getpid()], "broker": [None]})  # a broker not on this machine: left out
    c0, t0 = time.process_time(), time.monotonic()
    x = 0
    while time.process_time() - c0 < 0.6:  # about 0.6 s of CPU, one thread
        x += 1
    cpu = window.stop()
    expected = (time.process_time() - c0) / (time.monotonic() - t0)
    assert "broker" not in cpu and cpu["cores"] == os.cpu_count()
    # /proc/PID/stat counts in clock ticks (10 ms): 0.6 s of CPU is exact to ~2 %
    assert abs(cpu["reader"] - expected) < 0.05 + 0.02 / 0.6, (cpu, expected)
    assert cpu["machine"] >= cpu["reader"] - 0.05 and cpu["machine"] <= cpu["cores"]
    assert cpu["other"] >= 0.0
    assert "reader" in L.cpu_line(cpu) and "machine busy" in L.cpu_line(cpu) and L.cpu_line(None) == ""


def test_an_idle_role_reads_about_zero() -> None:
    window = L.CpuWindow({"reader": [os.getpid()]})
    time.sleep(0.3)  # the thing measured: a role that does nothing for the window
    cpu = window.stop()
    assert cpu["reader"] < 0.1, cpu


def test_a_process_that_exits_inside_the_window_keeps_its_cpu() -> None:
    """The load producer exits once its load is offered, before the window ends: its CPU counts up
    to the last sample that saw it (here against what the child measured of itself)."""
    child = subprocess.Popen([sys.executable, "-c", (
        "import time\nc0 = time.process_time()\nwhile time.process_time() - c0 < 0.5: pass\n"
        "print(time.process_time())")], stdout=subprocess.PIPE, text=True)
    window = L.CpuWindow({"feed": [child.pid]}, every_s=0.02)
    while child.poll() is None:
        window.sample()
        time.sleep(0.01)  # the sampling period of this test, not a wait for a condition
    own = float(child.stdout.read()) if child.stdout else 0.0  # the child's whole CPU, start-up included
    child.wait()
    t_wall = time.monotonic() - window.t0
    cpu = window.stop()  # the child is reaped: /proc has nothing for it any more
    assert cpu["feed"] > 0
    # what the window saw (from its first reading, after the interpreter's start-up) is most of the
    # child's own total and never more: at most its start-up and the last 20 ms are missed
    seen = cpu["feed"] * t_wall
    assert 0.5 - 0.05 <= seen <= own + 0.02, (seen, own, cpu)
