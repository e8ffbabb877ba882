"""Run a serial numba kernel (compiled ``nogil``) on contiguous blocks of rows in threads.

Cheaper to compile than numba ``parallel=True`` (no parfor lowering) and as fast on a few cores;
blocks are disjoint, so results do not depend on the thread count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")


def resolve_threads(threads: int) -> int:
    """``threads`` or, for 0, the number of CPUs."""
    return threads if threads > 0 else (os.cpu_count() or 1)


@lru_cache(maxsize=8)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="factors")


def blocks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (at most ``n``) contiguous ``[a, b)`` ranges covering ``range(n)``."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts) if edges[i + 1] > edges[i]]


def run_blocks(fn: Callable[[int, int], T], n: int, threads: int) -> list[T]:
    """``[fn(a, b) for (a, b) in blocks(n, threads)]``, the calls run in a thread pool."""
    bl = blocks(n, resolve_threads(threads))
    if len(bl) <= 1:
        return [fn(a, b) for a, b in bl]
    pool = _pool(len(bl))
    futs = [pool.submit(fn, a, b) for a, b in bl]
    return [f.result() for f in futs]
