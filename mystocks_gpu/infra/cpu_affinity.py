"""CPU affinity: which cores a process (a worker, the local broker) may run on.

On a machine whose few cores the broker, the workers and the clients share, the scheduler moves
every thread to whichever core frees first, and the broker's request threads and a worker's loop
keep taking each other's core and cache. Pinning the broker to one core set and a worker to
another kept them apart: on the project's 2-core VM (the broker on CPU 0, the worker on CPU 1, the
feed and the reader free), at-least-once tick -> feature p99 at 50k ticks/s fell from a median of
20.5 to 16.0 ms, p99.9 from 28.7 to 21.8 ms, and p99 at 10k from 13.9 to 12.5 ms (8 alternating
rounds each, Mann-Whitney p <= 0.008: ``bench/HISTORY.md``, 2026-12-07 06:20); pinning the worker
alone was worse (34 ms). Off by default: on a machine with cores to spare, or with other work on
it, the scheduler's choice is the better one.

A CPU list is written as for ``taskset -c``: ``"1"``, ``"0,2"``, ``"2-3"``; ``""`` = no pinning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mystocks_gpu.exceptions import ConfigError


def parse_cpu_list(text: str, what: str = "cpu list") -> tuple[int, ...]:
    """``"0,2-3"`` -> ``(0, 2, 3)`` (sorted, no repeats); ``""`` -> ``()``. Raises :class:`ConfigError`
    naming ``what`` for anything else (a negative number, a reversed range, a stray character)."""
    text = text.strip()
    if not text:
        return ()
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ConfigError(f"{what} must be CPU numbers and ranges like 0,2-3; got {text!r}") from None
        if a < 0 or b < a:
            raise ConfigError(f"{what}: {part.strip()!r} is not a CPU number or an ascending range (in {text!r})")
        cpus.update(range(a, b + 1))
    return tuple(sorted(cpus))


def check_cpus(cpus: tuple[int, ...], what: str) -> None:
    """Raise :class:`ConfigError` unless every CPU of ``cpus`` is one this process may use."""
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise ConfigError(f"{what}: CPU(s) {outside} are not available here (this process may use "
                          f"{format_cpus(tuple(sorted(allowed)))})")


def format_cpus(cpus: tuple[int, ...]) -> str:
    """``(0, 2, 3)`` -> ``"0,2-3"`` (the form :func:`parse_cpu_list` reads)."""
    out: list[str] = []
    for c in cpus:
        if out and out[-1].split("-")[-1] == str(c - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def pin_process(pid: int, cpus: tuple[int, ...]) -> int:
    """Restrict every thread of process ``pid`` (0: this one) to ``cpus``; threads it starts later
    inherit the mask of the thread that starts them. Returns how many threads were set (a thread
    that ends meanwhile is skipped). ``cpus`` empty: nothing is changed."""
    if not cpus:
        return 0
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    n = 0
    for tid in sorted(int(t.name) for t in tasks.iterdir()):
        try:
            os.sched_setaffinity(tid, cpus)
            n += 1
        except ProcessLookupError:
            continue
    return n


def thread_cpus(pid: int) -> dict[int, tuple[int, ...]]:
    """Thread id -> the CPUs it may run on, for every thread of ``pid`` (for checks and reports;
    empty when there is no such process)."""
    out: dict[int, tuple[int, ...]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for t in tasks:
        try:
            out[int(t.name)] = tuple(sorted(os.sched_getaffinity(int(t.name))))
        except (ProcessLookupError, FileNotFoundError):
            continue
    return out


@contextmanager
def children_on(cpus: tuple[int, ...]) -> Iterator[None]:
    """Processes started inside the block run on ``cpus``, every thread of them: a started process
    inherits the mask of the thread that starts it, so the calling thread takes ``cpus`` for the
    block and gets its own mask back after (no ``preexec_fn``, which is unsafe with threads).
    ``cpus`` empty: nothing changes."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
