"""Job kind ``backtest``: a grid backtest over bars replayed from a Kafka topic.

``mystocks-gpu submit backtest --spec SPEC.json --wait`` (or a ``JobCommand`` on ``cmd.jobs``):

1. the spec is a :class:`~mystocks_gpu.processors.backtest.spec.BacktestSpec` (invalid ones are
   rejected with the reason); the scheduler splits the job into chunks by symbol range
   (``policy="chunked"``: one per free device), each chunk a run of this kind;
2. a run replays ``spec.bar_topic`` over ``[start, end)`` with the deterministic replay source of
   the streaming runtime, pivots the bars to ``(symbols x bars)`` matrices (NaN where a symbol has no
   bar), keeps its symbol range, and runs :func:`~mystocks_gpu.gpu_ops.backtest.run_backtest` on the
   active backend (chunked further by ``memory_budget_bytes``); progress goes to ``job.status``;
3. every (symbol, parameter set) row is published to ``results.backtest`` (Avro ``BacktestResult``,
   key = job id, ``chunk_index``/``chunk_count`` = the job chunk; a chunk too large for one message
   is split into parts named by headers ``mystocks.part``/``mystocks.parts``). Consumers identify a
   message by (job id, chunk, part): a chunk re-run after a worker crash re-publishes the same parts;
4. the run's result (top-N rows, best-N curves, counts) is stored once per job/chunk and chunk
   results are merged by :func:`combine_results`; the merged result is cached in Redis by content
   hash of (kind, normalised spec, data range).

The ``signal`` strategy reads ``spec.signal_topic`` (feature vectors or bars) and aligns the
``signal_column`` to each bar with the last value at or before the bar's time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.infra.clock import SYSTEM_CLOCK
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from mystocks_gpu.processors.exceptions import InvalidSpec, JobSpecError, JobStopped
from mystocks_gpu.processors.job_kind import (
    MIB,
    JobKind,
    JobSpec,
    ProgressCb,
    current_run,
)
from mystocks_gpu.schemas.schema_store import SchemaStore

RESULTS_TOPIC = "results.backtest"
#: rows per results.backtest message (each row ~ 150 bytes of Avro: well under the topic's 8 MiB)
ROWS_PER_MESSAGE = 20_000
#: rows of the top table kept in the job result (the full table is on results.backtest)
TOP_ROWS = 20


@dataclass(frozen=True)
class BacktestJobSpec(JobSpec):
    """A backtest job, or one chunk of it (symbol range ``chunk_index`` of ``chunk_count``)."""

    spec: BacktestSpec
    chunk_index: int = 0
    chunk_count: int = 1

    @classmethod
    def from_dict(cls, data: Any) -> BacktestJobSpec:
        if not isinstance(data, dict):
            raise JobSpecError(f"spec must be a JSON object, got {type(data).__name__}")
        d = dict(data)
        chunk = d.pop("_chunk", None) or {}
        try:
            spec = BacktestSpec.from_dict(d)
        except InvalidSpec as exc:
            raise JobSpecError(str(exc)) from None
        idx, count = int(chunk.get("index", 0)), int(chunk.get("count", 1))
        if not (count >= 1 and 0 <= idx < count):
            raise JobSpecError(f"bad chunk {idx} of {count}")
        return cls(spec, idx, count)

    def to_dict(self) -> dict[str, Any]:
        d = self.spec.to_dict()
        if self.chunk_count > 1:
            d["_chunk"] = {"index": self.chunk_index, "count": self.chunk_count}
        return d

    def memory_bytes(self) -> int:
        """Device memory of one chunk: the engine keeps within ``memory_budget_bytes``."""
        return max(64 * MIB, min(int(self.spec.memory_budget_bytes), 8 << 30))

    def data_range(self) -> dict[str, Any]:
        s = self.spec
        return {"topic": s.bar_topic, "start": s.start, "end": s.end, "universe": s.universe,
                "signal_topic": s.signal_topic, "signal_column": s.signal_column}


def split_by_symbols(job: BacktestJobSpec, n_devices: int) -> list[BacktestJobSpec]:
    """One chunk per device (at most one per universe symbol), each a contiguous symbol range."""
    n = n_devices
    if isinstance(job.spec.universe, tuple):
        n = min(n, len(job.spec.universe))
    return [dataclasses.replace(job, chunk_index=i, chunk_count=max(n, 1)) for i in range(max(n, 1))]


# ---- reading history from Kafka --------------------------------------------------------------
def load_bars(kafka: Any, topic: str, start: int | None, end: int | None,
              store: SchemaStore | None = None) -> pd.DataFrame:
    """Bars of ``topic`` in ``[start, end)`` (ns) as a frame ``symbol, ts, open, high, low, close,
    volume`` via the deterministic replay source; undecodable records are skipped and counted.
    ``store``: the process's schema ids (default the manifest)."""
    from mystocks_gpu.schemas.batch_codec import BatchDecoder
    from mystocks_gpu.schemas.symbols import SymbolTable
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    table = SymbolTable()
    dec = BatchDecoder("mystocks.md.Bar", store, symbols=table)
    frames = []
    for batch in ReplaySource(kafka, topic, ReplayRange(start, end), max_records=50_000).batches():
        d = dec.decode(batch.values)
        c = d.columns
        frames.append(pd.DataFrame({"sym": c["symbol"], "ts": c["ts_event"], "open": c["open"], "high": c["high"],
                                    "low": c["low"], "close": c["close"], "volume": c["volume"]}))
    if not frames:
        return pd.DataFrame(columns=["symbol", "ts", "open", "high", "low", "close", "volume"])
    df = pd.concat(frames, ignore_index=True)
    df["symbol"] = np.asarray(table.symbols, dtype=object)[df["sym"].to_numpy()]
    if start is not None:
        df = df[df["ts"] >= start]
    if end is not None:
        df = df[df["ts"] < end]
    return df.drop(columns="sym")


def load_signal(kafka: Any, topic: str, column: str, start: int | None, end: int | None,
                store: SchemaStore | None = None) -> pd.DataFrame:
    """``symbol, ts, signal`` from a feature topic (``values[column]``) or a bar topic (``column``)."""
    from mystocks_gpu.schemas import AvroCodec
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    codec = AvroCodec(store)
    rows = []
    for batch in ReplaySource(kafka, topic, ReplayRange(start, end)).batches():
        for v in batch.values:
            try:
                r = codec.decode(v)
            except Exception:  # noqa: BLE001 - a bad record is skipped, like a DLQ'd one
                continue
            val = r.get("values", {}).get(column) if "values" in r else r.get(column)
            if val is not None:
                rows.append((r["symbol"], r["ts_event"], float(val)))
    return pd.DataFrame(rows, columns=["symbol", "ts", "signal"])


def to_matrices(df: pd.DataFrame, symbols: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pivot bars to ``(len(symbols), n_bars)`` float64 matrices over the union of bar times."""
    df = df[df["symbol"].isin(symbols)].drop_duplicates(["symbol", "ts"], keep="last")
    ts = np.sort(df["ts"].unique()).astype(np.int64)
    out = {}
    for col in ("open", "high", "low", "close"):
        wide = df.pivot(index="symbol", columns="ts", values=col).reindex(index=symbols, columns=ts)
        out[col] = np.ascontiguousarray(wide.to_numpy(np.float64))
    return out, ts


def _align_signal(sig: pd.DataFrame, symbols: list[str], ts: np.ndarray) -> np.ndarray:
    out = np.full((len(symbols), ts.size), np.nan)
    grid = pd.DataFrame({"ts": ts})
    for i, s in enumerate(symbols):
        g = sig[sig["symbol"] == s].sort_values("ts")
        if len(g):
            out[i] = pd.merge_asof(grid, g[["ts", "signal"]], on="ts", direction="backward")["signal"].to_numpy()
    return out


# ---- the run -----------------------------------------------------------------------------------
def run_backtest_job(job: BacktestJobSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Replay bars, run the grid on this chunk's symbols, publish rows, return a compact result.

    In a worker, settings, schema store and backend come from the run's context (the worker's
    ``Settings``; the backend of the granted device); called directly, from :func:`load_settings`."""
    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.gpu_ops.backtest import run_backtest
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.schemas import schema_store

    spec = job.spec
    ctx = current_run()
    settings = ctx.settings if ctx is not None and ctx.settings is not None else load_settings()
    store = ctx.store if ctx is not None and ctx.store is not None else schema_store(settings)
    backend = ctx.backend if ctx is not None else select(settings.backend)
    t0 = time.monotonic()
    progress(0.01, f"replaying {spec.bar_topic}")
    bars = load_bars(settings.kafka, spec.bar_topic, spec.start, spec.end, store)
    universe = sorted(bars["symbol"].unique()) if spec.universe == "all" else \
        [s for s in spec.universe if s in set(bars["symbol"])]
    if not universe:
        raise JobSpecError(f"no bars for the universe in {spec.bar_topic} over the time range")
    lo = len(universe) * job.chunk_index // job.chunk_count
    hi = len(universe) * (job.chunk_index + 1) // job.chunk_count
    symbols = universe[lo:hi]
    if not symbols:
        return {"symbols": 0, "cells": 0, "top": [], "curves": [], "chunk": job.chunk_index}
    prices, ts = to_matrices(bars, symbols)
    if spec.strategy == "signal":
        progress(0.05, f"replaying signals from {spec.signal_topic}")
        sig = load_signal(settings.kafka, spec.signal_topic or "", spec.signal_column or "", spec.start, spec.end, store)
        prices["signal"] = _align_signal(sig, symbols, ts)
    progress(0.1, f"simulating {len(symbols)} symbols x {ts.size} bars")

    def on_chunk(frac: float) -> None:
        if should_stop():
            raise JobStopped("stopped")
        progress(0.1 + 0.8 * frac, "simulating")

    run_spec = dataclasses.replace(spec, universe=tuple(symbols)) if spec.universe != "all" else spec
    out = run_backtest(prices, symbols, ts, run_spec, backend=backend, progress_cb=on_chunk)
    progress(0.92, f"publishing {len(out.stats)} rows to {RESULTS_TOPIC}")
    n_msgs = publish_results(settings, out, job, store)
    n_top = min(TOP_ROWS, spec.top_n or TOP_ROWS)
    return {"chunk": job.chunk_index, "symbols": len(symbols), "bars": int(ts.size), "param_sets": spec.n_param_sets,
            "cells": int(out.n_cells), "engine_chunks": int(out.n_chunks), "backend": backend, "metric": spec.metric,
            "seconds": round(time.monotonic() - t0, 3), "results_topic": RESULTS_TOPIC, "messages": n_msgs,
            "top": _jsonable(out.rows(n_top)), "curves": _jsonable(out.curve_rows())}


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None so results are strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def publish_results(settings: Any, out: Any, job: BacktestJobSpec, store: SchemaStore | None = None) -> int:
    """Every row (and the best curves) to ``results.backtest`` keyed by job id; returns messages sent.

    Every message's delivery is checked: a record the broker rejects (too large, topic gone...) or
    does not acknowledge in time raises :class:`~mystocks_gpu.infra.exceptions.DeliveryFailed`
    with the broker's reason, so the job fails instead of reporting results nobody can read."""
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec

    run = current_run()
    job_id = run.job_id if run else f"direct-{job.spec.cache_key()[:16]}"
    rows = out.rows(len(out.stats))  # every (symbol, parameter set), best first
    parts = max(1, math.ceil(len(rows) / ROWS_PER_MESSAGE))
    codec = AvroCodec(store)
    producer = make_producer(settings.kafka)
    now = SYSTEM_CLOCK.now_ns()
    items = []
    for part in range(parts):
        rec = {"job_id": job_id, "ts_event": now, "chunk_index": job.chunk_index, "chunk_count": job.chunk_count,
               "rows": rows[part * ROWS_PER_MESSAGE:(part + 1) * ROWS_PER_MESSAGE],
               "curves": out.curve_rows() if part == 0 else []}
        items.append((job_id.encode(), codec.encode("mystocks.backtest.BacktestResult", rec), now // 1_000_000,
                      [("mystocks.part", str(part).encode()), ("mystocks.parts", str(parts).encode())]))
    produce_all(producer, RESULTS_TOPIC, iter(items), flush_timeout_s=settings.kafka.connect_timeout_s * 3)
    return parts


def combine_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge chunk results: counts add up; the top table and the curves are re-ranked by the metric."""
    from mystocks_gpu.gpu_ops.backtest.stats import HIGHER_IS_BETTER

    if len(results) == 1:
        return results[0]
    metric: str = next((str(r["metric"]) for r in results if r.get("metric")), "sharpe")
    higher = HIGHER_IS_BETTER.get(metric, True)

    def rank(row: dict[str, Any]) -> float:
        v = row.get(metric)
        if v is None:
            return math.inf
        return -v if higher else v

    top = sorted((row for r in results for row in r.get("top", [])), key=rank)
    n_top = max((len(r.get("top", [])) for r in results), default=0)
    curves = [c for r in results for c in r.get("curves", [])]
    n_curves = max((len(r.get("curves", [])) for r in results), default=0)
    by_key = {(row["symbol"], json.dumps(row["params"], sort_keys=True)): rank(row) for r in results for row in r.get("top", [])}
    curves.sort(key=lambda c: by_key.get((c["symbol"], json.dumps(c["params"], sort_keys=True)), math.inf))
    return {"chunks": len(results), "symbols": sum(r.get("symbols", 0) for r in results),
            "bars": max((r.get("bars", 0) for r in results), default=0),
            "param_sets": max((r.get("param_sets", 0) for r in results), default=0),
            "cells": sum(r.get("cells", 0) for r in results), "metric": metric,
            "engine_chunks": sum(r.get("engine_chunks", 0) for r in results),
            "seconds": max((r.get("seconds", 0.0) for r in results), default=0.0),
            "results_topic": RESULTS_TOPIC, "messages": sum(r.get("messages", 0) for r in results),
            "top": top[:n_top], "curves": curves[:n_curves]}


def _summarize(result: dict[str, Any]) -> str:
    from mystocks_gpu.processors.backtest.report import format_top

    return format_top(result) if "top" in result else ""


def _report(result: dict[str, Any], directory: Any, settings: Any, job_id: str) -> Any:
    from mystocks_gpu.processors.backtest.report import write_report

    return write_report(result, directory)


KIND = JobKind("backtest", BacktestJobSpec, run_backtest_job, chunker=split_by_symbols, combiner=combine_results,
               policy="chunked", devices="any",
               description="grid backtest over bars replayed from a topic (results on results.backtest)",
               summarize=_summarize, report=_report, bulky_keys=("top", "curves"))
