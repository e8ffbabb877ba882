"""The worker's per-stage latency histogram: the ``poll`` stage (record timestamp -> the consume()
that returned it), filled from a batch's poll marks in one compiled pass, equals pandas binning of
the same delays computed record by record here."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mystocks_gpu.streams.stream_metrics import STAGE_BUCKETS, StageHistogram


def _reference(ts_ms: np.ndarray, marks: list[tuple[int, int]]) -> tuple[np.ndarray, float]:
    polled = []
    for count, ns in marks:
        polled += [ns] * count
    polled += [marks[-1][1]] * (len(ts_ms) - len(polled))  # records past the marks: the last mark's time
    delay = np.array(polled[: len(ts_ms)], np.int64) - ts_ms * 1_000_000
    live = (np.array(polled[: len(ts_ms)]) > 0) & (delay >= 0) & (delay < 60 * 10**9)
    sec = pd.Series(delay[live] / 1e9)
    bins = pd.cut(sec, [-np.inf, *STAGE_BUCKETS, np.inf], right=True, labels=False)
    counts = np.bincount(bins.to_numpy(np.int64), minlength=len(STAGE_BUCKETS) + 1)
    return counts, float(sec.sum())


def test_poll_stage_equals_pandas_binning_of_each_records_delay() -> None:
    rng = np.random.default_rng(5)
    now_ns = 1_780_000_000_000_000_000
    delays_ms = np.concatenate([rng.exponential(8.0, 300), [0, 0.05, 0.1, 0.2, 59_999, 60_000, 90_000, -5, -1]])
    ts_ms = (now_ns // 1_000_000 - np.round(delays_ms)).astype(np.int64)
    ts_ms[::7] -= 3  # records of one batch arrive out of timestamp order
    marks = [(100, now_ns - 4_000_000), (1, 0), (150, now_ns - 1_500_000), (40, now_ns)]  # 18 records past the marks
    h = StageHistogram("p")
    h.observe_feed("poll", ts_ms, marks)
    h.observe_feed("poll", ts_ms[:50], [(50, now_ns + 2_000_000)])  # a second batch adds to the first
    counts, total = h.snapshot()["poll"]
    c1, s1 = _reference(ts_ms, marks)
    c2, s2 = _reference(ts_ms[:50], [(50, now_ns + 2_000_000)])
    np.testing.assert_array_equal(counts, c1 + c2)
    assert abs(total - (s1 + s2)) < 1e-9 * max(1.0, s1 + s2)
    assert counts.sum() < len(ts_ms) + 50  # the dead records (future, over a minute, no time) were left out


def test_nothing_to_observe_adds_nothing() -> None:
    h = StageHistogram("p")
    h.observe_feed("poll", np.zeros(0, np.int64), [(0, 5)])
    h.observe_feed("poll", np.arange(3, dtype=np.int64), [])
    h.observe_feed("poll", np.arange(3, dtype=np.int64), [(3, 0)])  # consume time unknown
    counts, total = h.snapshot()["poll"]
    assert counts.sum() == 0 and total == 0.0
