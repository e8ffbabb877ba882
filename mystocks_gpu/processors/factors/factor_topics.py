"""The factor jobs' two output topics: writers and readers.

``factors.values`` -- factor values, **Arrow IPC frames** (:mod:`mystocks_gpu.schemas.arrow_frames`)
-------------------------------------------------------------------------------------------------
One Kafka message per (job, date, factor batch[, row part]); key = job id; record timestamp = the
date (its ``ts_event``, ms), so a time-range replay (``offsets_for_times``) selects dates, like on
any event-time topic. The value is one Arrow table, one row per symbol that has a bar on that date:

    symbol: utf8 | ts_event: int64 (ns) | <factor 1>: float64 | ... | <factor k>: float64

NaN = no value (warm-up, missing bar, undefined). Metadata: ``job_id``, ``kind``, ``batch`` (the
factor batch: a job evaluates its factors in batches that fit its memory budget, so a date's
factors may span several messages, one per batch), ``ts_event``, ``row_part``/``row_parts`` (a
date too large for one message is split by rows, ~4 MiB each). Headers repeat ``mystocks.job``,
``mystocks.batch`` and the content type ``application/vnd.apache.arrow.stream``.

Why Arrow and not Avro rows: factor values are a dense float matrix, dates x symbols x factors,
and their consumers (the ``train`` job, notebooks, cuDF) want it as a matrix. An Arrow frame is
8 bytes a value, column names once per message, decoded zero-copy into NumPy / pandas / cuDF;
Avro rows would repeat every factor name in every row (a ``map<string, double>``: 158 names x
~10 bytes next to 158 x 8 bytes of values) and decode one record at a time in Python, and the set
of factors (the schema) changes with every job, which Avro would need registered per job. The cost:
Avro-only tools (Kafka Connect's Avro converter) cannot read this topic; they read the metrics on
``results.factors`` (Avro), and the ByteArray converter passes frames through unchanged.

(date, symbol) -> factor values: :func:`read_factor_values` returns a DataFrame indexed by
``(ts_event, symbol)`` with one float64 column per factor (the batches joined), over a time range;
any Arrow reader can do the same with the layout above.

``results.factors`` -- metrics, Avro ``mystocks.factors.FactorResult`` (``factor_result.avsc``)
-----------------------------------------------------------------------------------------------
Key = job id; parts numbered from 0; every part may carry metrics rows and per-date series; the
last part has ``parts`` = the count and carries the dates, the correlation matrix, the
combination weights and the mined set. :func:`read_factor_results` reassembles a job's parts
(last message per part wins: a re-run publishes the same parts again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.infra.clock import SYSTEM_CLOCK

VALUES_TOPIC = "factors.values"
RESULTS_TOPIC = "results.factors"
RESULT_SCHEMA = "mystocks.factors.FactorResult"
#: target size of one frame / one results part (the topics accept 8 MiB)
MAX_MESSAGE_BYTES = 4 << 20


def ensure_topics(settings: Any) -> None:
    """Create ``factors.values`` and ``results.factors`` if they are missing (idempotent)."""
    from mystocks_gpu.topics import get
    from mystocks_gpu.topics.admin import TopicAdmin

    TopicAdmin(settings.kafka).create([get(VALUES_TOPIC), get(RESULTS_TOPIC)])


class ValuesWriter:
    """Publishes factor values to ``factors.values`` (see the module docstring).

    Args:
        settings: the process's settings (Kafka); job_id: message key; kind: job kind;
        dates: ``(T,)`` int64 ns; symbols: ``(N,)`` names; present: ``(T, N)`` True where a
        symbol has a bar (the rows of each date's frame).
    """

    def __init__(self, settings: Any, job_id: str, kind: str, dates: np.ndarray, symbols: Sequence[str],
                 present: np.ndarray) -> None:
        import pyarrow as pa

        from mystocks_gpu.infra.kafka_clients import make_producer

        self.settings, self.job_id, self.kind = settings, job_id, kind
        self.dates = np.asarray(dates, dtype=np.int64)
        # rows of every frame, date-major: (date t, symbol s) where s has a bar on t
        self.t_idx, self.s_idx = np.nonzero(np.asarray(present, dtype=bool))
        self.bounds = np.searchsorted(self.t_idx, np.arange(self.dates.size + 1))
        self.symbol_col = pa.array(list(symbols), type=pa.string()).take(pa.array(self.s_idx))
        self.ts_col = pa.array(self.dates[self.t_idx])
        self.producer = make_producer(settings.kafka)
        self.messages = 0
        self.batches = 0

    def write(self, values: dict[str, np.ndarray], should_stop: Any = None) -> int:
        """Publish one factor batch (``name -> (T, N)``); returns the messages sent. Delivery of
        every message is checked (:class:`~mystocks_gpu.infra.exceptions.DeliveryFailed`)."""
        from mystocks_gpu.infra.kafka_clients import produce_all
        from mystocks_gpu.schemas.arrow_frames import make_table

        names = list(values)
        if not names:
            return 0
        batch = self.batches
        self.batches += 1
        cols: dict[str, Any] = {"symbol": self.symbol_col, "ts_event": self.ts_col}
        for k in names:
            cols[k] = np.asarray(values[k], dtype=np.float64)[self.t_idx, self.s_idx]
        table = make_table(cols)
        per_row = 8 * (len(names) + 1) + 16
        n = produce_all(self.producer, VALUES_TOPIC, self._items(table, batch, per_row, should_stop),
                        flush_timeout_s=self.settings.kafka.connect_timeout_s * 3)
        self.messages += n
        return n

    def _items(self, table: Any, batch: int, per_row: int, should_stop: Any) -> Iterable[Any]:
        from mystocks_gpu.schemas.arrow_frames import CONTENT_TYPE, encode_table

        headers = [("mystocks.job", self.job_id.encode()), ("mystocks.batch", str(batch).encode()),
                   ("mystocks.content-type", CONTENT_TYPE.encode())]
        for t in range(self.dates.size):
            lo, hi = int(self.bounds[t]), int(self.bounds[t + 1])
            if hi == lo:
                continue
            if should_stop is not None and t % 64 == 0 and should_stop():
                from mystocks_gpu.processors.exceptions import JobStopped

                raise JobStopped("stopped while publishing factor values")
            ts = int(self.dates[t])
            n_parts = max(1, math.ceil((hi - lo) * per_row / MAX_MESSAGE_BYTES))
            for part in range(n_parts):
                a = lo + part * (hi - lo) // n_parts
                b = lo + (part + 1) * (hi - lo) // n_parts
                meta = {"job_id": self.job_id, "kind": self.kind, "batch": str(batch), "ts_event": str(ts),
                        "row_part": str(part), "row_parts": str(n_parts)}
                yield self.job_id.encode(), encode_table(table.slice(a, b - a), meta), ts // 1_000_000, headers


class ResultsWriter:
    """Publishes a job's results to ``results.factors`` in parts (see the module docstring)."""

    def __init__(self, settings: Any, store: Any, job_id: str, kind: str) -> None:
        from mystocks_gpu.infra.kafka_clients import make_producer
        from mystocks_gpu.schemas import AvroCodec

        self.settings, self.job_id, self.kind = settings, job_id, kind
        self.codec = AvroCodec(store)
        self.producer = make_producer(settings.kafka)
        self.part = 0
        self._metrics: list[dict[str, Any]] = []
        self._series: list[dict[str, Any]] = []
        self._bytes = 0

    def add_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self._metrics.append(r)
            self._bytes += 200 + 8 * len(r.get("quantile_returns", ())) + len(r.get("expression", ""))
        self._flush_if_full()

    def add_series(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self._series.append(r)
            self._bytes += 64 + 9 * (len(r["ic"]) + len(r["rank_ic"]) + len(r["spread"]))
        self._flush_if_full()

    def _flush_if_full(self) -> None:
        if self._bytes >= MAX_MESSAGE_BYTES:
            self._send(last=False)

    def _send(self, last: bool, **extra: Any) -> None:
        from mystocks_gpu.infra.kafka_clients import produce_all

        now = SYSTEM_CLOCK.now_ns()
        rec = {"job_id": self.job_id, "ts_event": now, "kind": self.kind, "part": self.part,
               "parts": self.part + 1 if last else 0, "dates": [], "metrics": self._metrics,
               "series": self._series, "correlation": None, "weights": [], "mined": [], **extra}
        value = self.codec.encode(RESULT_SCHEMA, rec)
        headers = [("mystocks.part", str(self.part).encode())]
        if last:
            headers.append(("mystocks.parts", str(self.part + 1).encode()))
        produce_all(self.producer, RESULTS_TOPIC, iter([(self.job_id.encode(), value, now // 1_000_000, headers)]),
                    flush_timeout_s=self.settings.kafka.connect_timeout_s * 3)
        self.part += 1
        self._metrics, self._series, self._bytes = [], [], 0

    def finish(self, dates: np.ndarray, correlation: dict[str, Any] | None = None,
               weights: Sequence[dict[str, Any]] = (), mined: Sequence[dict[str, Any]] = ()) -> int:
        """Send what is buffered and the last part; returns the number of parts."""
        self._send(last=True, dates=[int(d) for d in np.asarray(dates)], correlation=correlation,
                   weights=list(weights), mined=list(mined))
        return self.part


# ---- readers -----------------------------------------------------------------------------------
def read_factor_results(settings: Any, job_id: str, store: Any = None, idle_timeout_s: float = 5.0) -> dict[str, Any]:
    """A job's results reassembled from ``results.factors``: ``metrics`` (DataFrame, one row per
    factor x horizon), ``series`` (``{(factor, horizon): {"ic", "rank_ic", "spread"}}`` arrays),
    ``dates`` (int64 ns), ``correlation`` (DataFrame or None), ``weights`` (list), ``mined``
    (list), ``complete`` (every part read). Stops once the job's last part and all parts before it
    are read, or after ``idle_timeout_s`` without a new record."""
    from mystocks_gpu.data.topic_reader import read_topic
    from mystocks_gpu.schemas import AvroCodec

    parts: dict[int, dict[str, Any]] = {}
    n_parts = None
    for rec in read_topic(settings.kafka, RESULTS_TOPIC, idle_timeout_s=idle_timeout_s, codec=AvroCodec(store)):
        if rec.key != job_id or rec.value is None:
            continue
        v = rec.value
        parts[int(v["part"])] = v
        if int(v["parts"]) > 0:
            n_parts = int(v["parts"])
        if n_parts is not None and all(p in parts for p in range(n_parts)):
            break
    complete = n_parts is not None and all(p in parts for p in range(n_parts))
    order = sorted(p for p in parts if n_parts is None or p < n_parts)
    metrics = pd.DataFrame([m for p in order for m in parts[p]["metrics"]])
    series = {(s["factor"], int(s["horizon"])): {k: np.asarray(s[k], dtype=np.float64) for k in ("ic", "rank_ic", "spread")}
              for p in order for s in parts[p]["series"]}
    last = parts.get(n_parts - 1) if n_parts is not None else None
    corr = None
    if last is not None and last.get("correlation"):
        names = list(last["correlation"]["factors"])
        corr = pd.DataFrame(np.asarray(last["correlation"]["values"], dtype=np.float64).reshape(len(names), len(names)),
                            index=names, columns=names)
    return {"metrics": metrics, "series": series, "complete": complete, "parts": len(order),
            "dates": np.asarray(last["dates"] if last else [], dtype=np.int64), "correlation": corr,
            "weights": list(last["weights"]) if last else [], "mined": list(last["mined"]) if last else []}


def read_factor_values(settings: Any, job_id: str, start: int | None = None, end: int | None = None,
                       factors: Sequence[str] | None = None) -> pd.DataFrame:
    """Factor values of job ``job_id`` from ``factors.values``: a DataFrame indexed by
    ``(ts_event, symbol)`` (sorted), one float64 column per factor (``factors``: only these), over
    ``[start, end)`` ns of event time. Frames of other jobs are skipped; a (date, symbol) published
    twice (a re-run) keeps the last."""
    from mystocks_gpu.schemas.arrow_frames import decode_frame
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    key = job_id.encode()
    by_batch: dict[str, list[Any]] = {}
    for batch in ReplaySource(settings.kafka, VALUES_TOPIC, ReplayRange(start, end), max_records=2_000).batches():
        for k, v in zip(batch.keys, batch.values, strict=True):
            if k != key:
                continue
            table, meta = decode_frame(v)
            if factors is not None:
                keep = ["symbol", "ts_event"] + [c for c in table.column_names if c in set(factors)]
                table = table.select(keep)
            by_batch.setdefault(meta.get("batch", "0"), []).append(table)
    frames = []
    for b in sorted(by_batch, key=int):
        import pyarrow as pa

        df = pa.concat_tables(by_batch[b]).to_pandas()
        df = df.drop_duplicates(["ts_event", "symbol"], keep="last").set_index(["ts_event", "symbol"])
        if len(df.columns):
            frames.append(df)
    if not frames:
        return pd.DataFrame(index=pd.MultiIndex.from_arrays([[], []], names=["ts_event", "symbol"]))
    out = frames[0] if len(frames) == 1 else pd.concat(frames, axis=1, join="outer")
    return out.sort_index()
