"""Benchmark: MA-crossover parameter grid x symbols — ours (CPU numba, GPU CuPy) vs vectorbt.

Same synthetic data (GBM closes, opens gapping from the previous close), same grid (Cartesian
product of fast x slow windows, all fast < slow), same conventions (signal at bar t's close, fill
at bar t+1's open, fraction sizing 100 % of cash, fees 0.1 %, slippage 0.05 %), one timed run each
after a warm-up on tiny data (JIT compilation excluded for both). Cells = bars x parameter sets x
symbols.

- ours: ``run_backtest`` end to end: indicators, fused signal + simulation, all 11 statistics, and
  the best-5 equity curves.
- vectorbt: ``vbt.MA.run`` (fast and slow per pair) -> ``ma_crossed_above/below`` -> signals shifted
  one bar -> ``Portfolio.from_signals(price=open, size=1, size_type='percent')`` ->
  ``total_return()`` and ``trades.closed.count()`` only (fewer outputs than ours).

Correctness: max |total_return(ours) - total_return(vectorbt)| over all cells, and the number of
cells whose closed-trade counts differ (expected 0: the crossover definitions agree except on
exact SMA ties).

Each engine is timed ``--repeat`` times (default 3) and its best run kept. Wall-clock ratios are
sensitive to other load on the machine: the JSON also records the 1-minute
load average around the runs and ``cpu_time_s``, the process CPU seconds of each timed run (ours
is multi-threaded, vectorbt is not, so a CPU-time ratio understates our wall-clock advantage).

    python bench/backtest.py --params 300 --symbols 100 --bars 2500 --json bench/out/backtest.json
    python bench/backtest.py --quick        # 60 pairs x 40 symbols x 1000 bars
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from mystocks_gpu.gpu_ops.backend import gpu_available  # noqa: E402
from mystocks_gpu.gpu_ops.backtest import run_backtest  # noqa: E402
from mystocks_gpu.processors.backtest.spec import BacktestSpec  # noqa: E402

FEES = 0.001
SLIPPAGE = 0.0005
INIT_CASH = 100_000.0
CPU_TIME: dict[str, float] = {}  # process CPU seconds of the last timed run (robust to other load)


def synthetic(n_symbols: int, n_bars: int, seed: int = 42) -> dict[str, np.ndarray]:
    """GBM closes (daily drift 2e-4, vol 2 %), opens = previous close x exp(N(0, 0.5 %)); float64
    ``(n_symbols, n_bars)``."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(2e-4, 0.02, (n_symbols, n_bars)), axis=1))
    prev = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    open_ = prev * np.exp(rng.normal(0.0, 0.005, (n_symbols, n_bars)))
    high = np.maximum(open_, close) * 1.002
    low = np.minimum(open_, close) * 0.998
    return {"open": open_, "high": high, "low": low, "close": close}


def ma_grid(n_params: int) -> dict[str, list[int]]:
    """fast = 2, 4, ... and slow = 50, 60, ...: at least ``n_params`` pairs, all fast < slow."""
    n_slow = max(1, int(math.sqrt(n_params * 0.75)))
    n_fast = math.ceil(n_params / n_slow)
    return {
        "fast": [2 + 2 * i for i in range(n_fast)],
        "slow": [max(50, 2 * n_fast + 10) + 10 * i for i in range(n_slow)],
    }


def run_ours(
    data: dict[str, np.ndarray], grid: dict[str, list[int]], backend: str
) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds, total_return, n_trades) with cells ordered (symbol, param)."""
    n_s, n_b = data["close"].shape
    spec = BacktestSpec(
        strategy="ma_cross",
        params=grid,
        fees=FEES,
        slippage=SLIPPAGE,
        initial_cash=INIT_CASH,
        max_grid=10**6,
        n_curves=5,
        memory_budget_bytes=4 << 30,
    )
    syms = [f"S{i:04d}" for i in range(n_s)]
    ts = np.arange(n_b, dtype=np.int64) * 86_400_000_000_000
    t0, c0 = time.perf_counter(), time.process_time()
    out = run_backtest(data, syms, ts, spec, backend=backend)
    dt = time.perf_counter() - t0
    CPU_TIME[f"ours_{backend}"] = time.process_time() - c0
    return dt, out.stats["total_return"].to_numpy(), out.stats["n_trades"].to_numpy()


def run_vectorbt(
    data: dict[str, np.ndarray], grid: dict[str, list[int]]
) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds, total_return, n_trades) re-ordered to (symbol, param)."""
    import pandas as pd
    import vectorbt as vbt

    n_s, n_b = data["close"].shape
    pairs = [(f, s) for f in grid["fast"] for s in grid["slow"] if f < s]
    close_df = pd.DataFrame(data["close"].T, columns=[f"S{i:04d}" for i in range(n_s)])
    open_t = data["open"].T
    t0, c0 = time.perf_counter(), time.process_time()
    fast = vbt.MA.run(close_df, window=[p[0] for p in pairs], short_name="fast")
    slow = vbt.MA.run(close_df, window=[p[1] for p in pairs], short_name="slow")
    entries = fast.ma_crossed_above(slow).vbt.fshift(1, fill_value=False)
    exits = fast.ma_crossed_below(slow).vbt.fshift(1, fill_value=False)
    price = pd.DataFrame(
        np.tile(open_t, (1, len(pairs))), index=entries.index, columns=entries.columns
    )
    pf = vbt.Portfolio.from_signals(
        fast.close,
        entries,
        exits,
        price=price,
        size=1.0,
        size_type="percent",
        fees=FEES,
        slippage=SLIPPAGE,
        init_cash=INIT_CASH,
        direction="longonly",
        accumulate=False,
        freq="1D",
    )
    tr = np.asarray(pf.total_return(), dtype=np.float64)
    nt = np.asarray(pf.trades.closed.count(), dtype=np.int64)
    dt = time.perf_counter() - t0
    CPU_TIME["vectorbt"] = time.process_time() - c0
    # vectorbt columns: param-major (p * n_s + s) -> ours: symbol-major (s * n_par + p)
    order = (np.arange(n_s)[:, None] + n_s * np.arange(len(pairs))[None, :]).reshape(-1)
    return dt, tr[order], nt[order]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=int, default=300, help="MA parameter pairs (default 300)")
    ap.add_argument("--symbols", type=int, default=100, help="symbols (default 100)")
    ap.add_argument("--bars", type=int, default=2500, help="bars per symbol (default 2500)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--skip-vectorbt",
        action="store_true",
        help="only time ours (e.g. where vectorbt is missing)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3,
        help="timed runs of each engine, best kept (default 3: this machine's timings vary by ~30%%)",
    )
    ap.add_argument("--quick", action="store_true", help="small run: 60 pairs x 40 symbols x 1000 bars")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.params, args.symbols, args.bars = 60, 40, 1000

    grid = ma_grid(args.params)
    n_par = sum(1 for f in grid["fast"] for s in grid["slow"] if f < s)
    data = synthetic(args.symbols, args.bars, args.seed)
    cells = n_par * args.symbols * args.bars
    small = synthetic(3, 300, 1)
    small_grid = {"fast": grid["fast"][:2], "slow": grid["slow"][:2]}

    load_start = os.getloadavg()[0]
    run_ours(small, small_grid, "cpu")  # warm-up (JIT / cache load)
    cpu_s, cpu_tr, cpu_nt = min(
        (run_ours(data, grid, "cpu") for _ in range(max(1, args.repeat))), key=lambda r: r[0]
    )

    vbt_s = vbt_tr = vbt_nt = None
    if not args.skip_vectorbt:
        run_vectorbt(small, small_grid)
        gc.collect()
        vbt_s, vbt_tr, vbt_nt = min(
            (run_vectorbt(data, grid) for _ in range(max(1, args.repeat))), key=lambda r: r[0]
        )
        gc.collect()

    gpu_ok, gpu_name = gpu_available()
    gpu_s = gpu_tr = None
    if gpu_ok:
        run_ours(small, small_grid, "gpu")
        gpu_s, gpu_tr, _ = min(
            (run_ours(data, grid, "gpu") for _ in range(max(1, args.repeat))), key=lambda r: r[0]
        )

    res: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": gpu_name if gpu_ok else None,
        },
        "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "params": n_par,
        "symbols": args.symbols,
        "bars": args.bars,
        "cells": cells,
        "repeat": args.repeat,
        "ours_cpu_s": cpu_s,
        "ours_cpu_cells_per_s": cells / cpu_s,
        "vectorbt_s": vbt_s,
        "vectorbt_cells_per_s": cells / vbt_s if vbt_s else None,
        "ratio_cpu_vs_vectorbt": vbt_s / cpu_s if vbt_s else None,
        "ours_gpu_s": gpu_s,
        "ours_gpu_cells_per_s": cells / gpu_s if gpu_s else None,
        "ratio_gpu_vs_vectorbt": vbt_s / gpu_s if (gpu_s and vbt_s) else None,
        "cpu_time_s": dict(CPU_TIME),
        "max_abs_diff_total_return": float(np.max(np.abs(cpu_tr - vbt_tr)))
        if vbt_tr is not None
        else None,
        "trade_count_mismatches": int(np.sum(cpu_nt != vbt_nt)) if vbt_nt is not None else None,
        "max_abs_diff_total_return_gpu_vs_cpu": float(np.max(np.abs(gpu_tr - cpu_tr)))
        if gpu_tr is not None
        else None,
    }

    def fmt(v: float | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:,.3g}{unit}"

    print(
        f"MA crossover: {n_par} parameter sets x {args.symbols} symbols x {args.bars} bars = {cells:,} cells"
    )
    print(f"{'engine':<22}{'seconds':>10}{'cells/s':>14}{'vs vectorbt':>13}")
    print(
        f"{'ours (CPU, numba)':<22}{fmt(cpu_s):>10}{fmt(res['ours_cpu_cells_per_s']):>14}{fmt(res['ratio_cpu_vs_vectorbt'], 'x'):>13}"
    )
    print(
        f"{'vectorbt':<22}{fmt(vbt_s):>10}{fmt(res['vectorbt_cells_per_s']):>14}{'1x' if vbt_s else '-':>13}"
    )
    print(
        f"{'ours (GPU, CuPy)':<22}{fmt(gpu_s):>10}{fmt(res['ours_gpu_cells_per_s']):>14}{fmt(res['ratio_gpu_vs_vectorbt'], 'x'):>13}"
    )
    if not gpu_ok:
        print(f"  (no GPU: {gpu_name})")
    print(
        f"machine: {os.cpu_count()} CPUs, 1-min load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    if "vectorbt" in CPU_TIME:
        ours_c, vbt_c = CPU_TIME["ours_cpu"], CPU_TIME["vectorbt"]
        print(
            f"process CPU seconds: ours {ours_c:.3g}, vectorbt {vbt_c:.3g} ({vbt_c / ours_c:.3g}x)"
        )
    print(
        f"max |total_return ours - vectorbt| = {fmt(res['max_abs_diff_total_return'])}; "
        f"trade-count mismatches: {res['trade_count_mismatches']}"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
