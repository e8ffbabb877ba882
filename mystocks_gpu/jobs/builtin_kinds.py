"""Trivial job kinds that prove the control plane: ``sleep`` (progress, cancel, chunks) and ``echo``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mystocks_gpu.processors.exceptions import JobSpecError, JobStopped
from mystocks_gpu.processors.job_kind import MIB, JobKind, JobSpec, ProgressCb


@dataclass(frozen=True)
class SleepSpec(JobSpec):
    """Sleep ``seconds`` in ``steps`` steps, reporting progress after each step.

    ``memory_mb`` is the memory estimate per chunk (MiB); ``chunks`` > 1 splits the job into that
    many chunks of ``seconds / chunks`` each (spread across devices like a backtest); ``fail_at``
    in (0, 1] makes the run raise once progress reaches it (to test failures).
    """

    seconds: float = 1.0
    steps: int = 10
    memory_mb: int = 64
    chunks: int = 1
    fail_at: float | None = None
    tag: str = ""

    def validate(self) -> None:
        if not 0 <= self.seconds <= 3600:
            raise JobSpecError(f"sleep.seconds must be within 0..3600, got {self.seconds}")
        if not 1 <= self.steps <= 10_000:
            raise JobSpecError(f"sleep.steps must be within 1..10000, got {self.steps}")
        if not 0 <= self.memory_mb <= 1 << 24:
            raise JobSpecError(f"sleep.memory_mb must be within 0..16777216, got {self.memory_mb}")
        if not 1 <= self.chunks <= 256:
            raise JobSpecError(f"sleep.chunks must be within 1..256, got {self.chunks}")
        if self.fail_at is not None and not 0 < self.fail_at <= 1:
            raise JobSpecError(f"sleep.fail_at must be within (0, 1], got {self.fail_at}")

    def memory_bytes(self) -> int:
        return self.memory_mb * MIB


def run_sleep(spec: SleepSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Sleep in steps; raises :class:`JobStopped` within one step of ``should_stop()``."""
    step = spec.seconds / spec.steps
    t0 = time.monotonic()
    for i in range(1, spec.steps + 1):
        deadline = t0 + i * step
        while (left := deadline - time.monotonic()) > 0:
            if should_stop():
                raise JobStopped(f"stopped at step {i - 1}/{spec.steps}")
            time.sleep(min(left, 0.05))
        if should_stop():
            raise JobStopped(f"stopped at step {i}/{spec.steps}")
        frac = i / spec.steps
        if spec.fail_at is not None and frac >= spec.fail_at:
            raise RuntimeError(f"sleep failed on purpose at progress {frac:.2f}")
        progress(frac, f"step {i}/{spec.steps}")
    return {"slept_s": spec.seconds, "steps": spec.steps, "tag": spec.tag}


def chunk_sleep(spec: SleepSpec, n_devices: int) -> list[SleepSpec]:
    """``spec.chunks`` equal chunks (independent of the device count)."""
    n = spec.chunks
    return [replace(spec, seconds=spec.seconds / n, chunks=1, tag=f"{spec.tag}#{i}") for i in range(n)]


def combine_sleep(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Total sleep over chunks."""
    return {"slept_s": sum(r["slept_s"] for r in results), "steps": sum(r["steps"] for r in results),
            "chunks": len(results), "tag": results[0]["tag"].split("#")[0] if results else ""}


@dataclass(frozen=True)
class EchoSpec(JobSpec):
    """Return ``payload`` unchanged (and ``message``); ``memory_mb`` is the memory estimate."""

    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    memory_mb: int = 16

    def validate(self) -> None:
        if len(self.message) > 10_000:
            raise JobSpecError("echo.message must be at most 10000 characters")
        if not 0 <= self.memory_mb <= 1 << 24:
            raise JobSpecError(f"echo.memory_mb must be within 0..16777216, got {self.memory_mb}")

    def memory_bytes(self) -> int:
        return self.memory_mb * MIB


def run_echo(spec: EchoSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Echo the spec back."""
    if should_stop():
        raise JobStopped("stopped before start")
    progress(1.0, "echoed")
    return {"message": spec.message, "payload": spec.payload}


SLEEP = JobKind("sleep", SleepSpec, run_sleep, chunker=chunk_sleep, combiner=combine_sleep, policy="batch",
                description="sleep N seconds with progress (test kind)")
ECHO = JobKind("echo", EchoSpec, run_echo, policy="batch", description="echo the spec back (test kind)")
