"""prefetched(): items in order, errors raised at their item, bounded read-ahead, early stop closes
the reader's iterator on its own thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from mystocks_gpu.streams.prefetch import prefetched
from tests.conftest import wait_until


def test_items_in_order_and_depth_zero_is_inline() -> None:
    assert list(prefetched(lambda: iter(range(1000)), depth=3)) == list(range(1000))
    seen: list[str] = []

    def gen() -> Iterator[int]:
        seen.append(threading.current_thread().name)
        yield 1

    assert list(prefetched(gen, depth=0)) == [1] and seen == [threading.current_thread().name]
    assert list(prefetched(gen, depth=1, name="reader-x")) == [1] and seen[-1] == "reader-x"


def test_error_is_raised_after_the_items_before_it() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("broken at 3")

    it = prefetched(gen, depth=2)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="broken at 3"):
        next(it)


def test_read_ahead_is_bounded_and_early_stop_closes_the_reader() -> None:
    made: list[int] = []
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            for i in range(10_000):
                made.append(i)
                yield i
        finally:
            closed.set()

    it = prefetched(gen, depth=2)
    assert next(it) == 0
    wait_until(lambda: len(made) >= 3, 10, "the reader to fill the queue")
    assert len(made) <= 4  # one taken, two queued, one being put
    it.close()
    assert closed.wait(10)  # the reader's iterator was closed (a consumer it owns would be closed)
    assert len(made) <= 5
