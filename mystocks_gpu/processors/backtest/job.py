"""Job kind ``backtest``: a grid backtest over bars replayed from a Kafka topic.

``mystocks-gpu submit backtest --spec SPEC.json --wait`` (or a ``JobCommand`` on ``cmd.jobs``):

1. the spec is a :class:`~mystocks_gpu.processors.backtest.spec.BacktestSpec` (invalid ones are
   rejected with the reason, huge grids before anything is expanded); the scheduler splits the job
   into chunks by symbol range (``policy="chunked"``: one per free device), each chunk a run of
   this kind;
2. a run replays ``spec.bar_topic`` over ``[start, end)`` into a time-bucketed spill on local disk
   (:mod:`~mystocks_gpu.processors.backtest.history`: every partition up to the end offset captured
   at the start, whatever the order of the records), then streams it window by window in time order
   through the grid engine (:class:`~mystocks_gpu.gpu_ops.backtest.stream.GridStream`) for its symbol
   range, so memory does not grow with the history; the bar times are those of the whole universe
   (NaN where a symbol has no bar: before its listing, on halts);
3. every (symbol, parameter set) row and the equity curves of the best cells go to
   ``results.backtest`` (:mod:`~mystocks_gpu.processors.backtest.results`); the job's own result
   stays small (counts, the top rows, warnings, where the rows are), and ``--report DIR`` builds the
   report by reading the rows and curves back from the topic;
4. chunk results are merged by :func:`combine_results`; the control app caches the merged result
   under a key that includes the bar topic's end offsets at submit time, so new bars invalidate it.

Universe symbols with no bar in the range are reported (``missing_symbols`` and a warning); a job
none of whose symbols has a bar fails. The ``signal`` strategy reads ``spec.signal_topic`` (feature
vectors or bars) and aligns ``signal_column`` to each bar with the last value at or before its time.
Cancel, deadline and shutdown are checked between replay chunks, engine chunks (about a second of
work each) and published messages.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from mystocks_gpu.processors.backtest.results import MAX_CURVE_POINTS, RESULTS_TOPIC
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

    @classmethod
    def describe(cls) -> str:
        """The spec's documentation (``submit backtest --help``)."""
        from mystocks_gpu.processors.backtest.spec_doc import SPEC_HELP

        return SPEC_HELP

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of the spec (``submit backtest --print-schema``)."""
        from mystocks_gpu.processors.backtest.spec_doc import json_schema

        return json_schema()

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


def load_bars(kafka: Any, topic: str, start: int | None, end: int | None,
              store: SchemaStore | None = None) -> pd.DataFrame:
    """Bars of ``topic`` with ``start <= ts_event < end`` (ns) as one frame ``symbol, ts, open,
    high, low, close, volume`` (in memory: for small ranges; the backtest job itself streams through
    :class:`~mystocks_gpu.processors.backtest.history.BarHistory`). Every partition is read to the end
    offset captured at the start, whatever the record order; undecodable records are skipped."""
    import pandas as pd

    from mystocks_gpu.schemas.batch_codec import BatchDecoder
    from mystocks_gpu.schemas.symbols import SymbolTable
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    table = SymbolTable()
    dec = BatchDecoder("mystocks.md.Bar", store, symbols=table)
    lo = -(2**63) if start is None else int(start)
    hi = 2**63 - 1 if end is None else int(end)
    frames = []
    for chunk in ReplaySource(kafka, topic, ReplayRange(start, end)).chunks():
        c = dec.decode(chunk.values).columns
        keep = (c["ts_event"] >= lo) & (c["ts_event"] < hi)
        frames.append(pd.DataFrame({"sym": c["symbol"][keep], "ts": c["ts_event"][keep],
                                    **{k: c[k][keep] for k in ("open", "high", "low", "close", "volume")}}))
    cols = ["symbol", "ts", "open", "high", "low", "close", "volume"]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    df["symbol"] = np.asarray(table.symbols, dtype=object)[df["sym"].to_numpy()]
    return df[cols]


def load_signal(kafka: Any, topic: str, column: str, start: int | None, end: int | None,
                store: SchemaStore | None = None) -> pd.DataFrame:
    """``symbol, ts, signal`` rows with ``start <= ts < end`` (ns) from a feature topic
    (``values[column]``) or a bar topic (``column``); every partition is read to the end offset
    captured at the start, whatever the record order; records without a value of the column and
    undecodable ones are skipped (:func:`~mystocks_gpu.processors.backtest.history.signal_chunks`)."""
    import pandas as pd

    from mystocks_gpu.processors.backtest.history import ScanStats, signal_chunks

    names, codes, times, vals = None, [], [], []
    for symbols, sym, ts, val in signal_chunks(kafka, topic, column, start, end, ScanStats(), store=store):
        names = symbols
        codes.append(sym)
        times.append(ts)
        vals.append(val)
    if names is None or not codes:
        return pd.DataFrame({"symbol": pd.Series([], dtype=object), "ts": pd.Series([], dtype=np.int64),
                             "signal": pd.Series([], dtype=np.float64)})
    table = np.asarray(list(names.symbols), dtype=object)
    return pd.DataFrame({"symbol": table[np.concatenate(codes)] if len(table) else np.empty(0, object),
                         "ts": np.concatenate(times), "signal": np.concatenate(vals)})


# ---- the run -----------------------------------------------------------------------------------
class _Progress:
    """Maps the run's phases onto 0..1 and checks ``should_stop`` at every report."""

    PHASES = {"replay": (0.01, 0.40), "signal": (0.40, 0.45), "engine": (0.45, 0.85), "curves": (0.85, 0.90),
              "publish": (0.90, 0.99)}

    def __init__(self, progress: ProgressCb, should_stop: Callable[[], bool]) -> None:
        self.progress, self.should_stop = progress, should_stop

    def __call__(self, phase: str, frac: float, message: str) -> None:
        if self.should_stop():
            raise JobStopped("stopped")
        lo, hi = self.PHASES[phase]
        self.progress(lo + (hi - lo) * max(0.0, min(1.0, frac)), message)


def resident_bytes() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def engine_budget_bytes(budget: int, resident: int | None = None) -> int:
    """The engine's share of the job's ``memory_budget_bytes``: what the process's resident size
    (``resident``, default measured now, after the replay) leaves of it, so the job's peak RSS stays
    near the budget; never less than a quarter of the budget (a budget below the process's own
    baseline cannot be met; the engine then still runs, in small windows)."""
    resident = resident_bytes() if resident is None else resident
    return max(budget // 4, budget - resident)


def run_backtest_job(job: BacktestJobSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Replay bars, run the grid on this chunk's symbols, publish rows and curves, return a compact result.

    In a worker, settings, schema store and backend come from the run's context (the worker's
    ``Settings``; the backend of the granted device); called directly, from :func:`load_settings`."""
    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.gpu_ops.backtest.engine import best_cells, strategy_keys
    from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError
    from mystocks_gpu.gpu_ops.backtest.strategies import compile_grid
    from mystocks_gpu.gpu_ops.backtest.stream import CurvePass, GridStream
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.processors.backtest.history import BarHistory
    from mystocks_gpu.processors.backtest.results import publish, ranked, stats_rows
    from mystocks_gpu.schemas import schema_store

    spec = job.spec
    ctx = current_run()
    settings = ctx.settings if ctx is not None and ctx.settings is not None else load_settings()
    store = ctx.store if ctx is not None and ctx.store is not None else schema_store(settings)
    backend = ctx.backend if ctx is not None else select(settings.backend)
    step = _Progress(progress, should_stop)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    step("replay", 0.0, f"replaying {spec.bar_topic}")

    def replay_tick(done: int, total: int) -> None:
        step("replay", done / max(total, 1), f"replayed {done:,} of {total:,} records")

    with BarHistory.scan(settings.kafka, spec.bar_topic, spec.start, spec.end, spec.universe, replay_tick,
                          store=store) as hist:
        timings["replay_s"] = round(time.monotonic() - t0, 3)
        present = hist.symbols()
        missing = [] if spec.universe == "all" else [s for s in spec.universe if s not in set(present)]
        universe = present
        if not universe:
            raise JobSpecError(
                f"no bars for the universe in {spec.bar_topic} over the time range "
                f"({hist.stats.records:,} records read, {hist.stats.out_of_range:,} outside the range, "
                f"{hist.stats.outside_universe:,} of other symbols); load bars with: mystocks-gpu load FILE "
                f"--topic {spec.bar_topic}")
        lo = len(universe) * job.chunk_index // job.chunk_count
        hi = len(universe) * (job.chunk_index + 1) // job.chunk_count
        symbols = universe[lo:hi]
        base: dict[str, Any] = {"chunk": job.chunk_index, "metric": spec.metric, "n_curves": spec.n_curves, "results_topic": RESULTS_TOPIC,
                "missing_symbols": missing, "warnings": _warnings(spec, missing, hist),
                "records_read": hist.stats.records, "records_skipped": hist.stats.undecodable,
                "duplicate_bars": 0, "data_version": hist.stats.data_version}
        if not symbols:
            return {**base, "symbols": 0, "bars": 0, "bar_records": 0, "cells": 0, "top": [], "messages": 0}
        if spec.strategy == "signal":
            step("signal", 0.0, f"replaying signals from {spec.signal_topic}")
            sst = hist.scan_signal(settings.kafka, spec.signal_topic or "", spec.signal_column or "", spec.start,
                                   spec.end, lambda d, t: step("signal", d / max(t, 1), "replaying signals"),
                                   store=store)
            base["data_version"] = {**base["data_version"], **sst.data_version}
            base["signal_records_skipped"] = sst.undecodable
        plan = compile_grid(spec.strategy, spec.params)
        engine_budget = engine_budget_bytes(int(spec.memory_budget_bytes))
        max_rows = max(1 << 14, engine_budget // 512)
        n_bars = hist.bar_times(universe, max_rows)
        n_cells = plan.n_par * len(symbols) * n_bars
        if n_cells > int(spec.max_cells):
            raise JobSpecError(f"{plan.n_par} parameter sets x {len(symbols)} symbols x {n_bars} bars = "
                               f"{n_cells:,} cells exceeds max_cells={spec.max_cells:,}")
        keys = strategy_keys(spec.strategy)
        window_bars = max(256, max_rows // max(1, len(universe)))
        run_spec = dataclasses.replace(spec, memory_budget_bytes=engine_budget)
        if spec.universe != "all":
            run_spec = dataclasses.replace(run_spec, universe=tuple(symbols))
        t1 = time.monotonic()
        try:
            stream = GridStream(run_spec, symbols, window_bars, backend, plan,
                                on_chunk=lambda b: step("engine", b / max(n_bars, 1),
                                                        f"simulating {len(symbols)} symbols x {n_bars} bars"))
            for mats, ts in hist.windows(symbols, universe, keys, max_rows):
                stream.feed(mats, ts)
            stats = stream.finish()
            duplicates = hist.duplicates
            timings["engine_s"] = round(time.monotonic() - t1, 3)
            step("curves", 0.0, "equity curves of the best cells")
            cells = best_cells(stats, spec.metric, int(spec.n_curves))
            stride = max(1, math.ceil(n_bars / MAX_CURVE_POINTS))
            cpass = CurvePass(stream, cells, stride)
            block_ts = np.zeros(math.ceil(n_bars / stride), np.int64)
            pos = 0
            rows = [symbols[int(i)] for i in cpass.rows]  # only the best cells' symbols are read
            for mats, ts in (hist.windows(rows, universe, keys, max_rows) if cells else ()):
                cpass.feed(mats, ts.size)
                block_ts[np.arange(pos, pos + ts.size) // stride] = ts  # each block's last bar time
                pos += ts.size
                step("curves", pos / max(n_bars, 1), "equity curves of the best cells")
            eq, dd = cpass.result() if cells else (np.empty((0, 0)), np.empty((0, 0)))
        except BacktestInputError as exc:
            raise JobSpecError(str(exc)) from None
        codes = {s: int(hist.table.get(s) or 0) for s in symbols}
        first = {s: int(hist.first[c]) for s, c in codes.items()}
        curves = _curve_rows(plan, symbols, cells, eq, dd, block_ts, first)
        bar_records = int(sum(int(hist.count[c]) for c in codes.values()))
        base["duplicate_bars"] = duplicates
    job_id = ctx.job_id if ctx is not None else f"direct-{spec.cache_key()[:16]}"
    params = [{k: float(v) for k, v in p.items()} for p in plan.params]
    t2 = time.monotonic()
    n_msgs, first_offset = publish(settings, job_id, job.chunk_index, job.chunk_count, stats, spec.metric, params,
                                   curves, lambda d, t: step("publish", d / t, f"publishing to {RESULTS_TOPIC}"),
                                   store=store)
    timings["publish_s"] = round(time.monotonic() - t2, 3)
    n_top = min(TOP_ROWS, spec.top_n or TOP_ROWS)
    top = stats_rows(stats, ranked(stats, spec.metric)[:n_top], params)
    return {**base, "symbols": len(symbols), "bars": int(n_bars), "bar_records": bar_records,
            "param_sets": plan.n_par, "cells": int(n_cells), "engine_chunks": int(stream.n_chunks),
            "backend": backend, "seconds": round(time.monotonic() - t0, 3), **timings,
            "messages": n_msgs, "results_offset": first_offset, "curves": len(curves), "top_n": n_top,
            "top": _jsonable(top)}


def _warnings(spec: BacktestSpec, missing: list[str], hist: Any) -> list[str]:
    out = []
    if missing:
        out.append(f"{len(missing)} universe symbol(s) have no bars in {spec.bar_topic} over the time range: "
                   f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if hist.stats.undecodable:
        out.append(f"{hist.stats.undecodable:,} record(s) of {spec.bar_topic} could not be decoded and were skipped")
    return out


def _curve_rows(plan: Any, symbols: list[str], cells: list[tuple[int, int]], eq: np.ndarray, dd: np.ndarray,
                block_ts: np.ndarray, first: dict[str, int]) -> list[dict[str, Any]]:
    """``EquityCurve`` dicts, each starting at its symbol's first bar (no flat pre-listing stretch)."""
    out = []
    for i, (s, p) in enumerate(cells):
        sym = symbols[s]
        k = int(np.searchsorted(block_ts, first[sym], side="left"))
        out.append({"symbol": sym, "params": {n: float(v) for n, v in plan.params[p].items()},
                    "ts": block_ts[k:].tolist(), "equity": eq[i, k:].tolist(),
                    "drawdown": np.maximum(dd[i, k:], 0.0).tolist()})
    return out


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None so results are strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def combine_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge chunk results: counts add up; the top table is re-ranked by the metric; warnings once."""
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
    # the rows asked for (each chunk returns its own best top_n): not the longest chunk's table
    n_top = max((int(r.get("top_n", len(r.get("top", [])))) for r in results), default=0)
    offsets = [r["results_offset"] for r in results if r.get("results_offset", -1) >= 0]
    first = results[0]
    return {"chunks": len(results), "symbols": sum(r.get("symbols", 0) for r in results),
            "bars": max((r.get("bars", 0) for r in results), default=0),
            "bar_records": sum(r.get("bar_records", 0) for r in results),
            "param_sets": max((r.get("param_sets", 0) for r in results), default=0),
            "cells": sum(r.get("cells", 0) for r in results), "metric": metric, "n_curves": first.get("n_curves", 5),
            "engine_chunks": sum(r.get("engine_chunks", 0) for r in results),
            "seconds": max((r.get("seconds", 0.0) for r in results), default=0.0),
            "results_topic": RESULTS_TOPIC, "messages": sum(r.get("messages", 0) for r in results),
            "results_offset": min(offsets, default=-1),
            # each chunk publishes its own best n_curves; the job's best n_curves are among them
            "curves": min(sum(r.get("curves", 0) for r in results), int(first.get("n_curves", 5))),
            "missing_symbols": first.get("missing_symbols", []), "warnings": first.get("warnings", []),
            "records_read": first.get("records_read", 0), "records_skipped": first.get("records_skipped", 0),
            "duplicate_bars": first.get("duplicate_bars", 0), "data_version": first.get("data_version", {}),
            "top": top[:n_top]}


def _summarize(result: dict[str, Any]) -> str:
    from mystocks_gpu.processors.backtest.report import format_top

    return format_top(result) if "top" in result else ""


def _report(result: dict[str, Any], directory: Any, settings: Any, job_id: str) -> Any:
    from mystocks_gpu.processors.backtest.report import write_report

    return write_report(result, directory, settings, job_id)


KIND = JobKind("backtest", BacktestJobSpec, run_backtest_job, chunker=split_by_symbols, combiner=combine_results,
               policy="chunked", devices="any",
               description="grid backtest over bars replayed from a topic (results on results.backtest)",
               summarize=_summarize, report=_report, bulky_keys=("top", "data_version", "warnings"))
