"""The one clock: wall time (ns since the epoch) and monotonic time (s), injected into every
component that stamps, schedules or times out, so tests can drive time instead of sleeping.

Components take ``clock: Clock = SYSTEM_CLOCK``; pure functions take ``now_ns: int`` arguments.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """The real clock."""

    def now_ns(self) -> int:
        """Wall-clock time, int64 nanoseconds since the Unix epoch."""
        return time.time_ns()

    def monotonic(self) -> float:
        """Monotonic seconds (for durations and deadlines within a process)."""
        return time.monotonic()

    def thread_cpu_s(self) -> float:
        """CPU seconds the calling thread has used (``time.thread_time``): what a piece of work
        cost, without the time its thread waited for a core (compare with :meth:`monotonic`)."""
        return time.thread_time()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        if seconds > 0:
            time.sleep(seconds)


class ManualClock(Clock):
    """A clock that moves only when told to (``advance``); ``sleep`` advances it at once."""

    def __init__(self, now_ns: int = 1_700_000_000_000_000_000, monotonic_s: float = 1000.0) -> None:
        self._now_ns = now_ns
        self._mono = monotonic_s
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        with self._lock:
            self._now_ns += int(round(seconds * 1e9))
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


#: the process-wide real clock (the default everywhere)
SYSTEM_CLOCK = Clock()
