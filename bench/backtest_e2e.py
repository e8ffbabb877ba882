"""Benchmark: a backtest as a user runs it, end to end from Kafka — ours vs vectorbt from Parquet.

Same synthetic daily history for both (GBM closes, ``bench/backtest.py``'s generator): ``--symbols``
symbols x ``--years`` years of business days. Same MA-crossover grid (``--params`` pairs), fees,
slippage and fill conventions as ``bench/backtest.py``.

- ours: the history is produced once (Avro ``Bar`` records, event time as the record timestamp) into
  a topic of its own, ``md.bars.1d.bench<tag>`` (deleted at the end); a child process then runs the
  ``backtest`` job's runner (``run_backtest_job``: replay every partition to its captured end offset,
  batch decode, time-bucketed spill, streamed windows through the grid engine, every row and the
  best curves to ``results.backtest``) and reports its wall time and peak RSS (``VmHWM``). The
  child warms numba up on a tiny in-memory grid and a tiny spilled history first (compilation is not
  timed, as for vectorbt).
- vectorbt: the same bars as one long Parquet file; timed: ``pd.read_parquet`` -> pivot open/close
  -> ``bench/backtest.py``'s vectorbt grid (``Portfolio.from_signals``; total return and closed
  trades only).

Also measured:

- ``replay_bars_per_s``: bars/s of the job's replay phase (replay + decode + spill), and of a plain
  replay + batch decode of the warm topic (``replay_decode_bars_per_s``), against the codec's own
  ceiling (``codec_bars_per_s``: ``BatchDecoder`` on the same values in memory). One core each.
- ``peak_rss_mb`` of the job at 1x, 4x and 16x the history length (``--rss-symbols`` symbols,
  ``252 x --years`` x scale hourly bars in ``md.bars.1h.rss<k>x<tag>``, one topic per scale: 16x ten
  years of daily bars would reach past today, and the broker rejects future timestamps) with ``memory_budget_bytes = --budget-mb``: the
  replay streams through time windows, so RSS should stay flat while the history grows 16x.
- ``--minute-gb G`` (default 0: skipped): the same job on a minute-bar history of about G GB of
  encoded records in ``md.bars.1m.bench<tag>`` (ours only; vectorbt is not run at that size).

Headline: each side runs ``--repeat`` times (default 3), alternating, and its best run is kept
(``ours_runs_s``, ``vectorbt_runs_s`` list them all).

Correctness: max |total_return(ours, read back from results.backtest) - total_return(vectorbt)|.

    python bench/backtest_e2e.py --json bench/out/backtest_e2e.json           # 3000 symbols x 10 y
    python bench/backtest_e2e.py --quick --json bench/out/backtest_e2e.json   # small, ~1-2 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import backtest as B  # noqa: E402

from mystocks_gpu.infra.kafka_clients import make_producer, produce_all  # noqa: E402
from mystocks_gpu.schemas import schema_store  # noqa: E402
from mystocks_gpu.schemas.batch_codec import BatchDecoder, BatchEncoder  # noqa: E402
from mystocks_gpu.schemas.symbols import SymbolTable  # noqa: E402
from mystocks_gpu.topics import get  # noqa: E402
from mystocks_gpu.topics.admin import TopicAdmin  # noqa: E402

DAY = 86_400 * 10**9
MINUTE = 60 * 10**9
HOUR = 3_600 * 10**9
T0 = int(np.datetime64("2000-01-03", "ns").astype(np.int64))
SCRIPT = Path(__file__).resolve()


def bar_times(n_bars: int, interval_ns: int) -> np.ndarray:
    """Bar open times from 2000-01-03: business days (daily) or consecutive bars of ``interval_ns``."""
    if interval_ns == DAY:
        days = np.arange(n_bars + n_bars // 5 * 2 + 7)  # from 2000-01-03, a Monday
        return (T0 + days[days % 7 < 5][:n_bars] * DAY).astype(np.int64)
    return (T0 + np.arange(n_bars, dtype=np.int64) * interval_ns).astype(np.int64)


def make_topic(s: Any, name: str, partitions: int) -> None:
    base = get("md.bars.1d")
    TopicAdmin(s.kafka).create([dataclasses.replace(base, name=name, partitions=partitions), get("results.backtest")])


def one_bar(interval_ns: int) -> dict[str, np.ndarray]:
    """The columns of one ``Bar`` record (symbol code 0, time 0, prices 1) for the encoder."""
    return {"symbol": np.zeros(1, np.int64), "ts_event": np.zeros(1, np.int64), "interval_ns": np.full(1, interval_ns),
            "open": np.ones(1), "high": np.ones(1), "low": np.ones(1), "close": np.ones(1), "volume": np.ones(1),
            "vwap": np.ones(1), "trades": np.ones(1, np.int64)}


def load_history(s: Any, topic: str, n_symbols: int, n_bars: int, interval_ns: int, seed: int) -> dict[str, Any]:
    """Produce the history into ``topic`` symbol by symbol (each symbol's bars in time order, so a
    partition holds one symbol's whole history before the next's); returns the frames and counts."""
    data = B.synthetic(n_symbols, n_bars, seed)
    ts = bar_times(n_bars, interval_ns)
    names = [f"S{i:05d}" for i in range(n_symbols)]
    enc = BatchEncoder("mystocks.md.Bar", schema_store(s))
    producer = make_producer(s.kafka)
    nbytes = 0
    t0 = time.perf_counter()

    def items() -> Any:
        nonlocal nbytes
        for i, name in enumerate(names):
            cols = {"symbol": np.full(n_bars, i, np.int64), "ts_event": ts, "interval_ns": np.full(n_bars, interval_ns),
                    "open": data["open"][i], "high": data["high"][i], "low": data["low"][i], "close": data["close"][i],
                    "volume": np.full(n_bars, 1e6), "vwap": data["close"][i], "trades": np.full(n_bars, 100)}
            values = enc.encode(cols, names)
            key = name.encode()
            for t, v in zip((ts // 1_000_000).tolist(), values, strict=True):
                nbytes += len(v)
                yield key, v, t
    n = produce_all(producer, topic, items(), flush_timeout_s=120)
    return {"data": data, "ts": ts, "names": names, "records": n, "bytes": nbytes,
            "load_s": time.perf_counter() - t0}


# ---- the job, in a child process (its own peak RSS) ----------------------------------------------
def _proc_status_mb(field: str) -> float:
    """``VmHWM`` (peak) / ``VmRSS`` of this process in MB from /proc/self/status. Not ``ru_maxrss``:
    Linux carries the parent's ``ru_maxrss`` into a child across fork + exec, so a child of a
    parent holding the history in memory would report the parent's peak; ``VmHWM`` belongs to the
    process's own address space and starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _warm_history() -> None:
    """Compile (or load from the cache) the replay, history and publish kernels: record-batch
    parser, row selection, spill, bar-time set, pivot, result rows."""
    from mystocks_gpu.gpu_ops.backtest.engine import strategy_keys
    from mystocks_gpu.processors.backtest.history import BAR_ROW, BarHistory, _select_rows
    from mystocks_gpu.processors.backtest.rows_codec import _encode_rows
    from mystocks_gpu.streams.record_batches import _parse_records

    z = np.zeros(0, np.int64)
    _encode_rows(z, z, np.zeros(0, np.uint8), z, z, np.zeros(0, np.uint8), z, z, z, np.zeros((0, 1), np.uint64),
                 np.zeros((0, 1), np.int64), np.zeros(0, np.uint8))
    for buf in (np.frombuffer(b"\0", np.uint8)[:0], np.empty(0, np.uint8)):  # joined / parsed in place
        _parse_records(buf, z, z, z, z, z.copy(), z.copy(), z.copy(), np.zeros(0, np.bool_))
    f = np.zeros(0)
    for use_all in (True, False):
        _select_rows(np.zeros(0, np.int32), z, f, f, f, f, 0, 1, np.zeros(0, np.bool_), use_all, DAY)

    with BarHistory(4 * DAY) as hist:
        codes = hist.table.codes(["W0", "W1"])
        rows = np.zeros(8, BAR_ROW)
        rows["sym"] = np.repeat(codes, 4)
        rows["ts"] = np.tile(np.arange(4, 0, -1) * DAY, 2)
        hist._account(rows)
        hist.bars.add(rows)
        for _ in hist.windows(["W0", "W1"], ["W0", "W1"], strategy_keys("ma_cross"), 4):  # the job's keys
            pass


def child(args: argparse.Namespace) -> int:
    """Warm up, run the backtest job's runner once, print one JSON line."""
    from mystocks_gpu.gpu_ops.backtest import run_backtest
    from mystocks_gpu.gpu_ops.backtest.sim_cpu import FUSED_MIN_SYMBOLS
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.processors.backtest.job import BacktestJobSpec, run_backtest_job
    from mystocks_gpu.processors.backtest.spec import BacktestSpec
    from mystocks_gpu.streams.replay import ReplaySource

    spec = json.loads(args.child)
    n_warm = FUSED_MIN_SYMBOLS  # enough symbols for the engine's fused CPU loop, as in the job
    warm = B.synthetic(n_warm, 300, 1)
    run_backtest(warm, [f"W{i}" for i in range(n_warm)], bar_times(300, DAY),
                 BacktestSpec(strategy="ma_cross", params=spec["params"], n_curves=2), backend="cpu")
    s = load_settings()
    enc = BatchEncoder("mystocks.md.Bar", schema_store(s))  # codec warm-up (numba, as the engine's)
    BatchDecoder("mystocks.md.Bar", schema_store(s), symbols=SymbolTable()).decode(enc.encode(one_bar(1), ["W"]))
    _warm_history()
    rss0 = _proc_status_mb("VmHWM")
    job = BacktestJobSpec.from_dict(spec)
    t0 = time.perf_counter()
    res = run_backtest_job(job, lambda f, m: None, lambda: False)
    wall = time.perf_counter() - t0
    peak = _proc_status_mb("VmHWM")
    out: dict[str, Any] = {"wall_s": wall, "peak_rss_mb": peak, "rss_after_warmup_mb": rss0, "result": res}
    if args.replay_rate:  # plain replay + batch decode of the (now warm) topic, then the codec alone
        dec = BatchDecoder("mystocks.md.Bar", schema_store(s), symbols=SymbolTable())
        kept: list[Sequence[bytes | None]] = []
        budget = 2_000_000
        t1 = time.perf_counter()
        n = 0
        for ch in ReplaySource(s.kafka, spec["bar_topic"]).chunks():
            dec.decode(ch.values)
            n += len(ch.values)
            if budget > 0:
                kept.append(ch.values)
                budget -= len(ch.values)
        out["replay_decode_bars_per_s"] = n / (time.perf_counter() - t1)
        m = sum(len(v) for v in kept)
        t2 = time.perf_counter()
        for v in kept:
            dec.decode(v)
        out["codec_bars_per_s"] = m / (time.perf_counter() - t2)
    if args.read_back:
        from mystocks_gpu.processors.backtest.results import read_results

        got = read_results(s, f"direct-{job.spec.cache_key()[:16]}", res["results_offset"])
        out["rows"] = [(r["symbol"], r["params"]["fast"], r["params"]["slow"], r["total_return"]) for r in got.rows]
    print("RESULT " + json.dumps(out))
    return 0


def run_child(spec: dict[str, Any], replay_rate: bool = False, read_back: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(SCRIPT), "--child", json.dumps(spec)] + (["--replay-rate"] if replay_rate else []) \
        + (["--read-back"] if read_back else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"job child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dict(json.loads(line[7:]))


def job_spec(topic: str, grid: dict[str, list[int]], budget_mb: int) -> dict[str, Any]:
    return {"bar_topic": topic, "universe": "all", "strategy": "ma_cross", "params": grid, "fees": B.FEES,
            "slippage": B.SLIPPAGE, "initial_cash": B.INIT_CASH, "n_curves": 5, "max_grid": 10**6,
            "max_cells": 10**13, "memory_budget_bytes": budget_mb << 20}


# ---- vectorbt from Parquet -------------------------------------------------------------------------
def vectorbt_from_parquet(path: Path, grid: dict[str, list[int]]) -> tuple[float, np.ndarray, list[str]]:
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_parquet(path)
    wide = {c: df.pivot(index="symbol", columns="ts", values=c) for c in ("open", "close")}
    syms = wide["close"].index.tolist()
    data = {c: np.ascontiguousarray(w.to_numpy(np.float64)) for c, w in wide.items()}
    prep = time.perf_counter() - t0
    vbt_s, tr, _ = B.run_vectorbt(data, grid)
    return prep + vbt_s, tr, syms


def write_parquet(h: dict[str, Any], path: Path) -> None:
    import pandas as pd

    n_s, n_b = h["data"]["close"].shape
    pd.DataFrame({"symbol": np.repeat(h["names"], n_b), "ts": np.tile(h["ts"], n_s),
                  **{c: h["data"][c].reshape(-1) for c in ("open", "high", "low", "close")}}).to_parquet(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=3000, help="symbols of the headline history (default 3000)")
    ap.add_argument("--years", type=float, default=10, help="years of daily bars (252 a year; default 10)")
    ap.add_argument("--params", type=int, default=10, help="MA parameter pairs (default 10)")
    ap.add_argument("--rss-symbols", type=int, default=300, help="symbols of the RSS sweep (default 300)")
    ap.add_argument("--scales", default="1,4,16", help="history-length multiples of the RSS sweep")
    ap.add_argument("--budget-mb", type=int, default=512, help="the job's memory_budget_bytes, MiB (default 512)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3, help="headline runs of each side, best kept (default 3)")
    ap.add_argument("--minute-gb", type=float, default=0.0, help="also run a minute-bar history of this many GB")
    ap.add_argument("--quick", action="store_true", help="small sizes (100 symbols, 5 years, 5 pairs, sweep of 10)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--replay-rate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--read-back", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.symbols, args.years, args.params, args.rss_symbols = 100, 5, 5, 10
    s = C.settings()
    tag = C.new_tag()
    grid = B.ma_grid(args.params)
    n_pairs = sum(1 for f in grid["fast"] for w in grid["slow"] if f < w)
    n_bars = int(252 * args.years)
    res: dict[str, Any] = {"benchmark": "backtest_e2e", "machine": C.machine(), "symbols": args.symbols,
                           "bars_per_symbol": n_bars, "param_sets": n_pairs, "budget_mb": args.budget_mb}
    try:
        # headline: the user path vs vectorbt from Parquet
        topic = f"md.bars.1d.bench{tag}"
        make_topic(s, topic, args.partitions)
        h = load_history(s, topic, args.symbols, n_bars, DAY, args.seed)
        print(f"loaded {h['records']:,} daily bars ({h['bytes'] / 1e6:.0f} MB) into {topic} in {h['load_s']:.1f} s")
        # each side --repeat times, alternating, best kept (this machine's speed drifts by ~1.5x
        # over minutes; alternating keeps one side from getting only the slow spells)
        with tempfile.TemporaryDirectory() as d:
            pq = Path(d) / "bars.parquet"
            write_parquet(h, pq)
            # the load wrote ~0.6 GB of log segments and the Parquet file: flush them to disk before
            # timing, or the first runs of both sides share the machine with the kernel's writeback
            # (measured: 2.8 s / 33 s for the first pair against 1.7 s / 14 s for the second)
            os.sync()
            B.run_vectorbt(B.synthetic(4, 300, 1), grid)  # warm-up (numba)
            runs, vbt_runs = [], []
            for i in range(max(1, args.repeat)):
                runs.append(run_child(job_spec(topic, grid, args.budget_mb), replay_rate=i == 0, read_back=i == 0))
                vbt_runs.append(vectorbt_from_parquet(pq, grid))
        ours = {**min(runs, key=lambda o: o["wall_s"]),
                **{k: runs[0][k] for k in ("rows", "replay_decode_bars_per_s", "codec_bars_per_s")}}
        r = ours["result"]
        vbt_s, vbt_tr, syms = min(vbt_runs, key=lambda v: v[0])
        pairs = [(f, w) for f in grid["fast"] for w in grid["slow"] if f < w]
        want = {(syms[i], float(p[0]), float(p[1])): vbt_tr[i * len(pairs) + j]
                for i in range(len(syms)) for j, p in enumerate(pairs)}
        diffs = [abs(tr - want[(sym, f, w)]) for sym, f, w, tr in ours["rows"]]
        res.update({
            "repeat": args.repeat, "ours_runs_s": [round(o["wall_s"], 3) for o in runs],
            "vectorbt_runs_s": [round(v[0], 3) for v in vbt_runs],
            "ours_e2e_s": ours["wall_s"], "vectorbt_parquet_s": vbt_s, "ratio_vs_vectorbt": vbt_s / ours["wall_s"],
            "ours_phases_s": {k: r.get(k) for k in ("replay_s", "engine_s", "publish_s")},
            "replay_bars_per_s": r["records_read"] / r["replay_s"] if r.get("replay_s") else None,
            "replay_decode_bars_per_s": ours["replay_decode_bars_per_s"], "codec_bars_per_s": ours["codec_bars_per_s"],
            "headline_peak_rss_mb": ours["peak_rss_mb"], "rows_compared": len(diffs),
            "max_abs_total_return_diff": max(diffs) if diffs else None,
            "rows_match": len(diffs) == len(want),
        })
        C.cleanup(s, tag)
        # peak RSS against history length
        rss: dict[str, Any] = {}
        for k in (int(x) for x in args.scales.split(",")):
            t = f"md.bars.1h.rss{k}x{tag}"  # hourly bars: 16x ten years of bars still ends before today
            make_topic(s, t, args.partitions)
            hk = load_history(s, t, args.rss_symbols, n_bars * k, HOUR, args.seed + k)
            o = run_child(job_spec(t, grid, args.budget_mb))
            rss[f"{k}x"] = {"bars": hk["records"], "peak_rss_mb": round(o["peak_rss_mb"], 1),
                            "rss_after_warmup_mb": round(o["rss_after_warmup_mb"], 1), "wall_s": round(o["wall_s"], 2),
                            "engine_chunks": o["result"].get("engine_chunks")}
            TopicAdmin(s.kafka).delete([t])
        res["peak_rss_mb"] = rss
        if args.minute_gb > 0:
            t = f"md.bars.1m.bench{tag}"
            make_topic(s, t, args.partitions)
            per_rec = len(BatchEncoder("mystocks.md.Bar", schema_store(s)).encode(one_bar(MINUTE), ["S00000"])[0])
            n_min = math.ceil(args.minute_gb * 1e9 / per_rec / args.rss_symbols)  # >= G GB of encoded values
            hm = load_history(s, t, args.rss_symbols, n_min, MINUTE, args.seed)
            o = run_child(job_spec(t, grid, args.budget_mb))
            res["minute"] = {"bytes": hm["bytes"], "bars": hm["records"], "wall_s": o["wall_s"],
                             "peak_rss_mb": o["peak_rss_mb"],
                             "replay_bars_per_s": o["result"]["records_read"] / o["result"]["replay_s"]}
    finally:
        C.cleanup(s, tag)
    res["machine"]["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    print(f"\n{args.symbols} symbols x {n_bars} daily bars x {n_pairs} MA pairs "
          f"(load {res['machine']['loadavg_1min']} -> {res['machine']['loadavg_1min_after']})")
    C.print_table(["", "seconds", "ratio"], [
        ["ours: Kafka replay -> engine -> results.backtest", res["ours_e2e_s"], res["ratio_vs_vectorbt"]],
        ["vectorbt: Parquet -> pandas -> vectorbt", res["vectorbt_parquet_s"], 1.0]])
    print(f"phases {res['ours_phases_s']}; max |total_return diff| {res['max_abs_total_return_diff']:.2e} over "
          f"{res['rows_compared']} rows")
    print(f"replay {res['replay_bars_per_s']:,.0f} bars/s in the job (replay+decode+spill); plain replay+decode "
          f"{res['replay_decode_bars_per_s']:,.0f} bars/s; codec ceiling {res['codec_bars_per_s']:,.0f} bars/s")
    C.print_table(["history", "bars", "peak RSS MB", "after warm-up MB", "seconds"],
                  [[k, v["bars"], v["peak_rss_mb"], v["rss_after_warmup_mb"], v["wall_s"]]
                   for k, v in res["peak_rss_mb"].items()])
    if "minute" in res:
        print(f"minute bars: {res['minute']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
