"""Benchmark the tick-feature engine (and bars): GPU (CuPy) vs CPU (numba), side by side.

On a CUDA machine: builds ``--ticks`` synthetic ticks over ``--symbols`` symbols, times the
whole engine and each feature group on the CPU and on the GPU (device-resident input, CUDA
events), checks the GPU outputs against the CPU ones (max abs / rel difference, NaN
positions), measures pinned / pageable host-to-device, device-to-host and device-to-device
copy bandwidth, reports the kernel's achieved GB/s ((input column bytes + output bytes) /
time) against those (``roofline_fraction`` = achieved / D2D copy GB/s, the HBM roofline; goal
>= 0.30), the end-to-end ``process_host`` time (pinned staging included), and prints GPU/CPU
ratios. Without a GPU it runs the CPU side only (smaller default size) and
says that the GPU part was skipped.

    python bench/gpu_ops.py --help
    python bench/gpu_ops.py --ticks 200000 --symbols 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mystocks_gpu.gpu_ops.backend import gpu_available  # noqa: E402
from mystocks_gpu.gpu_ops.bars import BarBuilder  # noqa: E402
from mystocks_gpu.gpu_ops.features import TickFeatureEngine  # noqa: E402
from mystocks_gpu.gpu_ops.features_config import ALL_FEATURES, FeatureConfig  # noqa: E402
from mystocks_gpu.gpu_ops.tick_columns import ROW_BYTES, TickColumns  # noqa: E402

GROUPS: dict[str, tuple[str, ...]] = {
    "all": ALL_FEATURES,
    "returns": ("last_price", "ret", "log_ret"),
    "vwap": ("vwap_session", "vwap_roll"),
    "ema_macd": ("ema", "macd", "macd_signal", "macd_hist"),
    "rolling_ticks": ("roll_mean", "roll_std", "roll_z", "boll_upper", "boll_lower", "rvol",
                      "flow_imb"),
    "time_window": ("time_mean", "time_std"),
    "rsi": ("rsi",),
    "microstructure": ("spread", "rel_spread", "book_imb"),
}


#: issue 18: the tick-feature kernel should move >= 30 % of the measured HBM roofline (D2D copy GB/s)
GOAL_ROOFLINE = 0.30


def make_ticks(n: int, n_symbols: int, trades_per_window: float, window_ns: int,
               seed: int = 0) -> TickColumns:
    """Synthetic host ticks: ts globally increasing (so per symbol too), ~60% trades,
    per-symbol random-walk prices around 1e2 / 1e4, about ``trades_per_window`` trades per
    symbol inside each time window."""
    rng = np.random.default_rng(seed)
    sym = rng.integers(0, n_symbols, n).astype(np.int32)
    kind = (rng.random(n) < 0.4).astype(np.int8)
    rate = n_symbols * trades_per_window / 0.6 / window_ns  # ticks per ns, all symbols
    gaps = rng.exponential(1.0 / rate, n).astype(np.int64)
    ts = 1_700_000_000 * 10**9 + np.cumsum(gaps)
    level = np.where(np.arange(n_symbols) % 2 == 0, 100.0, 10_000.0)
    steps = rng.standard_normal(n) * 1e-4
    order = np.argsort(sym, kind="stable")
    walk = np.cumsum(steps[order])
    counts = np.bincount(sym, minlength=n_symbols)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    walk -= np.repeat(np.where(counts > 0, walk[starts] - steps[order][starts], 0), counts)
    price = np.empty(n)
    price[order] = level[sym[order]] * np.exp(walk)
    half = price * 5e-5
    return TickColumns.from_numpy(
        sym=sym, ts=ts, kind=kind, price=price,
        size=np.where(kind == 0, rng.integers(1, 1000, n), 0).astype(float),
        side=np.where(kind == 0, rng.choice([-1, 1], n), 0).astype(np.int8),
        bid=price - half, ask=price + half,
        bid_size=rng.integers(1, 5000, n).astype(float),
        ask_size=rng.integers(1, 5000, n).astype(float),
    )


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _gpu_time(fn, repeat: int) -> float:
    import cupy as cp

    best = float("inf")
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def copy_bandwidth(nbytes: int) -> dict[str, float]:
    """GB/s of pinned and pageable H2D, pinned D2H and D2D copies of ``nbytes``."""
    import cupy as cp

    mem = cp.cuda.alloc_pinned_memory(nbytes)
    pinned = np.frombuffer(mem, np.uint8, nbytes)
    pinned[:] = 1
    pageable = np.ones(nbytes, np.uint8)
    dev = cp.empty(nbytes, cp.uint8)
    dev2 = cp.empty(nbytes, cp.uint8)
    stream = cp.cuda.Stream(non_blocking=True)
    res = {}
    with stream:
        res["h2d_pinned_GBps"] = nbytes / _gpu_time(lambda: dev.set(pinned, stream=stream), 5) / 1e9
        res["h2d_pageable_GBps"] = nbytes / _gpu_time(lambda: dev.set(pageable), 3) / 1e9
        res["d2h_pinned_GBps"] = nbytes / _gpu_time(
            lambda: dev.get(stream=stream, out=pinned), 5) / 1e9
        # read + write bytes, as HBM traffic
        res["d2d_GBps"] = 2 * nbytes / _gpu_time(lambda: dev2.__setitem__(Ellipsis, dev), 5) / 1e9
    return res


def diff_stats(cpu: dict[str, np.ndarray], gpu: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max abs / rel difference over all outputs, and NaN-position mismatches."""
    max_abs = max_rel = 0.0
    nan_mismatch = 0
    worst = ""
    for k, a in cpu.items():
        b = gpu[k]
        na, nb = np.isnan(a), np.isnan(b)
        nan_mismatch += int((na != nb).sum())
        m = ~na & ~nb
        if m.any():
            d = np.abs(a[m] - b[m])
            r = d / np.maximum(np.abs(a[m]), 1e-300)
            if r.max() > max_rel:
                worst = k
            max_abs = max(max_abs, float(d.max()))
            max_rel = max(max_rel, float(r.max()))
    return {"max_abs": max_abs, "max_rel": max_rel, "nan_mismatch": nan_mismatch,
            "worst_feature": worst}


def bench_group(g: str, cols: TickColumns, dev_cols: Any, S: int, args: argparse.Namespace,
                bw: dict[str, float] | None) -> tuple[dict[str, Any], str]:
    """Time one feature group on the CPU (and the GPU when ``dev_cols`` is given)."""
    n = len(cols)
    cfg = FeatureConfig(features=GROUPS[g])
    K = len(cfg.output_names())
    cpu = TickFeatureEngine(cfg, "cpu")
    cpu.process(cols.take(slice(0, 1000)), cpu.initial_state(S))  # JIT / cache load
    st_cpu = cpu.initial_state(S)  # process() copies it: every repeat starts fresh
    out_cpu: dict[str, np.ndarray] = {}
    t_cpu = _best(lambda: out_cpu.update(cpu.process(cols, st_cpu)[0]), args.cpu_repeat)
    row: dict[str, Any] = {"outputs": K, "cpu_s": t_cpu, "cpu_Mticks_s": n / t_cpu / 1e6}
    line = f"{g:15s} K={K:2d}  cpu {t_cpu * 1e3:9.1f} ms ({n / t_cpu / 1e6:6.1f} Mticks/s)"
    if dev_cols is None or bw is None:
        return row, line
    import cupy as cp

    from mystocks_gpu.gpu_ops.features_gpu import ROW_BLOCK_LOG2, group_chunks

    gpu = TickFeatureEngine(cfg, "gpu")
    st_gpu = gpu.initial_state(S)
    gpu.process(dev_cols.take(slice(0, 1000)), st_gpu)  # compile
    holder: dict[str, Any] = {}
    t_gpu = _gpu_time(lambda: holder.update(out=gpu.process(dev_cols, st_gpu)[0]), args.repeat)
    t_group = _gpu_time(lambda: group_chunks(cp, dev_cols.sym, S, ROW_BLOCK_LOG2), args.repeat)
    gpu_host = {k: v.get() for k, v in holder.pop("out").items()}
    cp.get_default_memory_pool().free_all_blocks()
    d = diff_stats(out_cpu, gpu_host)
    nbytes = n * ROW_BYTES + K * n * 8
    gbps = nbytes / t_gpu / 1e9
    t_host = _best(lambda: gpu.process_host(cols, st_gpu), 2)  # 1st grows pinned buffers
    row.update(gpu_s=t_gpu, gpu_grouping_s=t_group, gpu_Mticks_s=n / t_gpu / 1e6,
               speedup=t_cpu / t_gpu, gpu_GBps=gbps,
               gpu_vs_h2d_pinned=gbps / bw["h2d_pinned_GBps"], gpu_vs_d2d=gbps / bw["d2d_GBps"],
               roofline_fraction=gbps / bw["d2d_GBps"],
               process_host_s=t_host, process_host_speedup=t_cpu / t_host, agreement=d)
    line += (f" | gpu {t_gpu * 1e3:8.1f} ms (sort grouping {t_group * 1e3:5.1f}) x{t_cpu / t_gpu:6.1f},"
             f" {gbps:6.1f} GB/s ({gbps / bw['h2d_pinned_GBps']:.2f} of pinned H2D, "
             f"{gbps / bw['d2d_GBps']:.3f} of D2D) | host e2e {t_host * 1e3:8.1f} ms "
             f"x{t_cpu / t_host:5.1f} | max abs {d['max_abs']:.1e} rel {d['max_rel']:.1e} "
             f"({d['worst_feature']}) nan-mismatch {d['nan_mismatch']}")
    return row, line


def profile_passes(dev_cols: Any, S: int, variants: list[tuple[int | None, int, int, Any]],
                   repeat: int, d2d_gbps: float) -> list[dict[str, Any]]:
    """Time each kernel pass of the GPU engine (CUDA events) for every (register cap, block size,
    log2 row block, tuning switches) variant, all 23 features; one row per variant: per-pass ms
    (kernels by name; the array-module work between them as ``host:<label>``; launch gaps as
    ``gaps``), total ms, roofline, and how far its outputs are from the first variant's."""
    from dataclasses import replace

    import cupy as cp

    from mystocks_gpu.gpu_ops import features_gpu as fg

    eng = TickFeatureEngine(FeatureConfig(), "gpu")
    st0 = eng.initial_state(S)
    n, K = len(dev_cols), len(eng.output_names)
    rows = []
    first = None
    for max_reg, block, log_r, tuning in variants:
        base = fg.gpu_launcher(len(eng.cfg.ema_spans), eng.cfg.window_ticks,
                               tuple(eng.cfg.column_index()), block=block, max_registers=max_reg,
                               tuning=tuning)
        # one timeline of events per run: (label of the stretch that starts there, event)
        timeline: list[tuple[str, Any]] = []

        def event(label: str, tl: list = timeline) -> None:
            e = cp.cuda.Event()
            e.record()
            tl.append((label, e))

        def timed(name: str, fn: Any, *a: Any) -> None:
            event(name)
            fn(*a)
            event("gaps")

        assert base.blocks is not None

        def launch(name: str, t: int, p: Any, b: Any = base) -> None:
            timed(name, b.launch, name, t, p)

        def blocks(name: str, nb: int, t: int, sh: int, p: Any, b: Any = base) -> None:
            timed(name, b.blocks, name, nb, t, sh, p)

        L = replace(base, launch=launch, blocks=blocks, mark=lambda label: event(f"host:{label}"))
        totals, runs = [], []
        for _ in range(repeat + 1):  # the first run compiles
            arrays = {k: v.copy() for k, v in st0.arrays.items()}
            timeline.clear()
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record()
            out, _ = fg.process_batch_gpu(dev_cols, arrays, eng._ema_alpha, eng._macd_alpha,
                                          eng._params, eng._col_idx_host, K, log_r=log_r,
                                          launcher=L)
            e1.record()
            e1.synchronize()
            totals.append(cp.cuda.get_elapsed_time(e0, e1))
            spans: dict[str, float] = {}
            marks = [*timeline, ("end", e1)]
            for (label, a), (_, b) in pairwise(marks):
                spans[label] = spans.get(label, 0.0) + cp.cuda.get_elapsed_time(a, b)
            runs.append(spans)
        passes = {k: min(r[k] for r in runs[1:]) for k in runs[-1]}
        # every variant must compute what the first one did (exactly: the row block aside, the
        # arithmetic is the same)
        if first is None:
            first = out
            same = {"max_abs": 0.0, "nan_mismatch": 0}
        else:
            nan_a, nan_b = cp.isnan(first), cp.isnan(out)
            both = ~nan_a & ~nan_b
            same = {"max_abs": float(cp.abs(cp.where(both, first - out, 0.0)).max()),
                    "nan_mismatch": int((nan_a != nan_b).sum())}
        del out
        total = min(totals[1:])
        gbps = (n * ROW_BYTES + K * n * 8) / (total / 1e3) / 1e9
        rows.append({"max_registers": max_reg, "block": block, "log_r": log_r,
                     "tuning": dict(tuning), "total_ms": total, "vs_first": same,
                     "passes_ms": passes, "GBps": gbps, "roofline_fraction": gbps / d2d_gbps})
        print(f"passes regs={max_reg} block={block} log_r={log_r} {dict(tuning)}: "
              f"total {total:.2f} ms, "
              f"{gbps:.0f} GB/s ({gbps / d2d_gbps:.1%} of D2D) | "
              + ", ".join(f"{k} {v:.2f}" for k, v in passes.items())
              + f" | vs the first variant: max abs {same['max_abs']:.1e}, "
                f"nan-mismatch {same['nan_mismatch']}", flush=True)
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def main(argv: list[str] | None = None) -> int:
    ok, why = gpu_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=None,
                    help="ticks (default 20_000_000 with a GPU, 1_000_000 without)")
    ap.add_argument("--symbols", type=int, default=None,
                    help="symbols (default 4000 with a GPU, 200 without)")
    ap.add_argument("--window-trades", type=float, default=20.0,
                    help="mean trades per symbol in the 1 s time window (default 20)")
    ap.add_argument("--groups", default=",".join(GROUPS),
                    help=f"comma-separated feature groups to time (default all: {','.join(GROUPS)})")
    ap.add_argument("--repeat", type=int, default=3, help="GPU repeats, best taken (default 3)")
    ap.add_argument("--cpu-repeat", type=int, default=1, help="CPU repeats (default 1)")
    ap.add_argument("--batch", type=int, default=0,
                    help="also time process_host over batches of this many ticks (0: skip)")
    ap.add_argument("--no-gpu", action="store_true", help="run the CPU side only")
    ap.add_argument("--profile", default="",
                    help="GPU: time each kernel pass for these comma-separated variants "
                         "REGS:BLOCK[:LOGR[:SWITCHES]] (REGS a register cap or 'none', LOGR log2 "
                         "of the row block, default 16; SWITCHES NAME=V/NAME=V of the kernels' "
                         "tuning switches, features_gpu.TUNING), e.g. "
                         "none:128,128:256,none:256:18:FX_META_ARRAY=1")
    ap.add_argument("--quick", action="store_true",
                    help="small and short: 2M ticks with a GPU (200k without), the 'all' group only")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    use_gpu = ok and not args.no_gpu
    if args.quick:
        args.ticks = args.ticks or (2_000_000 if use_gpu else 200_000)
        args.groups = "all"
    n = args.ticks or (20_000_000 if use_gpu else 1_000_000)
    S = args.symbols or (4000 if use_gpu else 200)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")

    t0 = time.perf_counter()
    cols = make_ticks(n, S, args.window_trades, 1_000_000_000)
    print(f"data: {n:,} ticks x {S:,} symbols, {cols.nbytes() / 1e6:.0f} MB of columns "
          f"({ROW_BYTES} B/tick), built in {time.perf_counter() - t0:.1f} s")
    res: dict[str, Any] = {"ticks": n, "symbols": S, "gpu": why if ok else None,
                           "groups": {}, "gpu_skipped": None}
    if not use_gpu:
        res["gpu_skipped"] = "--no-gpu" if ok else why
        print(f"GPU part skipped: {res['gpu_skipped']}")
    dev_cols = cols.to("gpu") if use_gpu else None
    if use_gpu:
        res["copy_bandwidth"] = bw = copy_bandwidth(min(cols.nbytes(), 1 << 30))
        print("copies: " + ", ".join(f"{k} {v:.1f}" for k, v in bw.items()))

    for g in groups:
        row, line = bench_group(g, cols, dev_cols, S, args, res.get("copy_bandwidth"))
        res["groups"][g] = row
        print(line, flush=True)

    if use_gpu and args.profile:
        from mystocks_gpu.gpu_ops.features_gpu import ROW_BLOCK_LOG2 as fg_log_r

        variants = []
        for v in args.profile.split(","):
            regs, block, log_r, sw = (v.split(":") + ["", "", ""])[:4]
            tuning = tuple((k, int(x)) for k, _, x in (t.partition("=") for t in sw.split("/") if t))
            variants.append((None if regs == "none" else int(regs), int(block or 128),
                             int(log_r or fg_log_r), tuning))
        res["passes"] = profile_passes(dev_cols, S, variants, args.repeat,
                                       res["copy_bandwidth"]["d2d_GBps"])

    if use_gpu and "all" in res["groups"]:
        frac = res["roofline_fraction"] = res["groups"]["all"]["roofline_fraction"]
        print(f"goal: all 23 features at >= {GOAL_ROOFLINE:.0%} of the HBM roofline (measured D2D copy "
              f"{res['copy_bandwidth']['d2d_GBps']:.0f} GB/s): measured {frac:.1%} "
              f"({'met' if frac >= GOAL_ROOFLINE else 'NOT met'})")
    res["roofline_goal"] = GOAL_ROOFLINE

    if args.batch and use_gpu:
        cfg = FeatureConfig()
        gpu = TickFeatureEngine(cfg, "gpu")
        st = gpu.initial_state(S)
        nb = min(n // args.batch, 200)
        lat = []
        for i in range(nb):
            b = cols.take(slice(i * args.batch, (i + 1) * args.batch))
            t = time.perf_counter()
            _, st = gpu.process_host(b, st, inplace=True)
            lat.append(time.perf_counter() - t)
        lat_ms = np.array(lat[1:] or lat) * 1e3
        res["batches"] = {"batch": args.batch, "count": nb, "p50_ms": float(np.median(lat_ms)),
                          "p99_ms": float(np.percentile(lat_ms, 99))}
        print(f"process_host batches of {args.batch}: p50 {res['batches']['p50_ms']:.2f} ms, "
              f"p99 {res['batches']['p99_ms']:.2f} ms")

    bars = BarBuilder(1_000_000_000, 0, "cpu")
    bars.process(cols.take(slice(0, 1000)), bars.initial_state(S))
    t_bars = _best(lambda: bars.process(cols, bars.initial_state(S)), 1)
    res["bars_cpu_s"] = t_bars
    print(f"bars 1s (cpu numba, both backends): {t_bars * 1e3:.1f} ms "
          f"({n / t_bars / 1e6:.1f} Mticks/s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
