"""A backtest's full output on ``results.backtest``: written by the job, read back by the report.

Messages are Avro ``BacktestResult`` records keyed by the job id: ``chunk_index``/``chunk_count``
name the job chunk (a symbol range), headers ``mystocks.part``/``mystocks.parts`` the part of it
(:data:`ROWS_PER_MESSAGE` rows each, best first by the job's metric). Part 0 also carries the
equity curves of the chunk's best cells (at most :data:`MAX_CURVE_POINTS` points each, starting at
the symbol's first bar). A chunk re-run after a worker crash publishes the same parts again, so a
reader keeps one message per (chunk, part): :func:`read_results`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backtest.stats import INT_STATS, STAT_COLUMNS, rank_order
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.processors.backtest.rows_codec import RowsEncoder
from mystocks_gpu.schemas.schema_store import SchemaStore

RESULTS_TOPIC = "results.backtest"
#: rows per results.backtest message (each row ~ 150 bytes of Avro: well under the topic's 8 MiB)
ROWS_PER_MESSAGE = 20_000
#: points per published equity curve (longer histories keep one point per block of bars)
MAX_CURVE_POINTS = 4096


def stats_rows(stats: pd.DataFrame, index: np.ndarray, params: list[dict[str, float]]) -> list[dict[str, Any]]:
    """``BacktestRow`` dicts of the stats rows ``index`` (``params`` per ``param_id``, as floats)."""
    sl = stats.iloc[index]
    cols = {c: sl[c].to_numpy().tolist() for c in STAT_COLUMNS}
    out = []
    syms = sl["symbol"].tolist()
    pids = sl["param_id"].to_numpy().tolist()
    for i in range(len(syms)):
        row: dict[str, Any] = {"symbol": syms[i], "params": params[pids[i]]}
        for c in STAT_COLUMNS:
            v = cols[c][i]
            row[c] = int(v) if c in INT_STATS else float(v)
        out.append(row)
    return out


def ranked(stats: pd.DataFrame, metric: str) -> np.ndarray:
    """Row indices best first by ``metric`` (NaN last)."""
    return rank_order(stats[metric].to_numpy(dtype=np.float64), metric)


def publish(settings: Any, job_id: str, chunk_index: int, chunk_count: int, stats: pd.DataFrame, metric: str,
            params: list[dict[str, float]], curves: list[dict[str, Any]],
            tick: Callable[[int, int], None] | None = None, clock: Clock = SYSTEM_CLOCK,
            store: SchemaStore | None = None) -> tuple[int, int]:
    """Every row of ``stats`` (best first) and ``curves`` to :data:`RESULTS_TOPIC`; rows are encoded
    from the table's columns one message at a time (:mod:`~mystocks_gpu.processors.backtest.rows_codec`). ``tick(parts done, parts)`` after each (raise to stop).
    Returns ``(messages, offset of the first)`` (-1 when unknown).

    Every message's delivery is checked: a record the broker rejects (too large, topic gone...) or
    does not acknowledge in time raises :class:`~mystocks_gpu.infra.exceptions.DeliveryFailed`
    with the broker's reason, so the job fails instead of reporting results nobody can read."""
    from mystocks_gpu.infra.kafka_clients import DeliveryTracker, make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec

    order = ranked(stats, metric)
    parts = max(1, math.ceil(len(order) / ROWS_PER_MESSAGE))
    encoder = RowsEncoder(AvroCodec(store))
    producer = make_producer(settings.kafka)
    now = clock.now_ns()
    offsets: list[int] = []
    tracker = DeliveryTracker()

    def delivered(err: Any, msg: Any) -> None:
        tracker(err, msg)
        if err is None:
            offsets.append(msg.offset())
    for part in range(parts):
        head = {"job_id": job_id, "ts_event": now, "chunk_index": chunk_index, "chunk_count": chunk_count,
                "curves": curves if part == 0 else []}
        value = encoder.encode(head, stats, order[part * ROWS_PER_MESSAGE:(part + 1) * ROWS_PER_MESSAGE], params)
        while True:
            try:
                producer.produce(RESULTS_TOPIC, value, job_id.encode(), timestamp=now // 1_000_000,
                                 on_delivery=delivered, headers=[("mystocks.part", str(part).encode()),
                                          ("mystocks.parts", str(parts).encode())])
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if tick is not None:
            tick(part + 1, parts)
    produce_all(producer, RESULTS_TOPIC, iter(()), flush_timeout_s=settings.kafka.connect_timeout_s * 3)  # flush
    if len(offsets) < parts and not tracker.errors:
        tracker.errors.append(f"{RESULTS_TOPIC}: {parts - len(offsets)} message(s) not acknowledged in time")
    tracker.raise_errors()
    return parts, min(offsets, default=-1)


@dataclass
class JobOutput:
    """What a job published: rows (best first per chunk), curves, and the parts seen per chunk."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)  # chunk -> (parts seen, parts)
    chunk_count: int = 0

    @property
    def complete(self) -> bool:
        """Every part of every chunk was read."""
        return self.chunk_count > 0 and len(self.parts) == self.chunk_count and \
            all(seen == n for seen, n in self.parts.values())


def read_results(settings: Any, job_id: str, from_offset: int = -1, idle_timeout_s: float = 3.0,
                 records: Iterator[Any] | None = None) -> JobOutput:
    """The job's messages on :data:`RESULTS_TOPIC` from ``from_offset`` (the earliest a job's result
    names; -1: the beginning), one per (chunk, part) (the last one read wins)."""
    from mystocks_gpu.data.topic_reader import read_topic

    seen: dict[tuple[int, int], dict[str, Any]] = {}
    parts: dict[int, int] = {}
    out = JobOutput()
    it = records if records is not None else read_topic(
        settings.kafka, RESULTS_TOPIC, from_beginning=True, idle_timeout_s=idle_timeout_s,
        start_offsets={0: from_offset} if from_offset >= 0 else None, stop_at_end=True)
    for rec in it:
        if rec.key != job_id or rec.value is None:
            continue
        v = rec.value
        chunk, part = int(v["chunk_index"]), int(rec.headers.get("mystocks.part", "0"))
        seen[(chunk, part)] = v
        parts[chunk] = int(rec.headers.get("mystocks.parts", "1"))
        out.chunk_count = int(v["chunk_count"])
    for _key, v in sorted(seen.items()):
        out.rows.extend(v["rows"])
        out.curves.extend(v.get("curves") or [])
    for chunk, n in parts.items():
        out.parts[chunk] = (sum(1 for c, _ in seen if c == chunk), n)
    return out
