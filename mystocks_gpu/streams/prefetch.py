"""Run an iterator one step ahead on a background thread, so its I/O overlaps the caller's work.

A replay spends its time in two places that can overlap: librdkafka fetching records and
confluent-kafka building its ``Message`` objects (the reader), and the caller decoding them (numba
kernels that release the GIL). :func:`prefetched` runs the reader on a thread with a bounded queue
of ``depth`` items between the two, so memory stays bounded (at most ``depth`` items wait, plus one
being built and one being used).

Errors of the reader are raised in the caller, at the item where they happened. When the caller
stops early (``break``, an exception, ``close()``), the reader is told to stop at its next item and
its iterator is closed on its own thread (so a consumer it owns is closed where it was used).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(make: Callable[[], Iterator[T]], depth: int = 2, name: str = "prefetch") -> Iterator[T]:
    """The items of ``make()``, produced on a daemon thread up to ``depth`` items ahead.

    ``depth`` < 1 runs ``make()`` in the caller's thread (no thread, no queue)."""
    if depth < 1:
        yield from make()
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        it = make()
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            put(_Failure(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=30)
