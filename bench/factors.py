"""Benchmark: Alpha158 (158 factors) x symbols x days, expression evaluation + Alphalens metrics —
ours (CPU numba; GPU CuPy with --gpu) vs Alphalens and vs a pandas implementation of the same
expressions; then mining throughput (candidates evaluated per second).

Same synthetic data for everyone (GBM closes, OHLC around them, lognormal volume, 1 % missing
bars), JIT compilation excluded (a warm-up on tiny data first).

- ours: ``run_factors``: parse, evaluate all 158 expressions as one program per batch, and the full
  metrics at horizons 1, 5, 20 (IC, rank IC, IR, t-stat, 5-quantile returns, spread, turnover,
  rank autocorrelation; no pairwise correlation).
- Alphalens (alphalens-reloaded) per factor, given the factor values (expression evaluation not
  timed for it): ``get_clean_factor_and_forward_returns`` + ``factor_information_coefficient`` +
  ``mean_return_by_quantile(by_date=True)`` + ``quantile_turnover`` (top, bottom) and
  ``factor_rank_autocorrelation`` at each horizon. Timed on ``--alphalens-factors`` factors and
  extrapolated to 158 (``alphalens_extrapolated: true`` in the JSON).
  ``ratio_vs_alphalens`` = extrapolated Alphalens seconds / ours.
- pandas: the reference evaluator of the tests (``tests/unit/factors/pandas_ref.py``: wide frames,
  rolling per symbol, shared subexpressions cached as Qlib does; NumPy sliding windows where pandas
  has no native rolling op: IdxMax, IdxMin, WMA) + per-date IC and rank IC with ``corrwith`` on the
  same sample (fewer metrics than ours), after Alphalens's date-drop rule (a date whose 5-quantile
  ``qcut`` edges repeat has no metrics: ``pandas_ref.binnable_dates``, one row-wise
  ``DataFrame.quantile`` per factor, timed inside ``pandas_s`` and also on its own as
  ``pandas_drop_rule_s``). ``ratio_vs_pandas`` = pandas seconds / ours
  (``ratio_vs_pandas_without_drop_rule`` leaves the rule's seconds out).
- ``max_abs_diff_ic``: max |rank IC ours - Alphalens| over the timed factors, dates and horizons;
  ``max_abs_diff_ic_vs_pandas`` likewise against the pandas version (all factors, where both are
  defined); ``rank_ic_defined_on_one_side_only_vs_pandas`` counts (factor, horizon, date) cells
  that are NaN on one side only (0 = same dates).

    python bench/factors.py --quick --json bench/out/factors_quick.json
    python bench/factors.py --json bench/out/factors.json            # 500 symbols x 2,520 days
    python bench/factors.py --gpu --json bench/out/factors_gpu.json  # + 3,000 symbols on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from mystocks_gpu.gpu_ops.backend import gpu_available  # noqa: E402
from mystocks_gpu.gpu_ops.factors import (  # noqa: E402
    EngineConfig,
    EvalConfig,
    MiningConfig,
    Panel,
    load_library,
    mine,
    parse_many,
    run_factors,
)
from tests.unit.factors import pandas_ref  # noqa: E402

HORIZONS = (1, 5, 20)
QUANTILES = 5


def synthetic(n_symbols: int, n_days: int, seed: int = 42) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(2e-4, 0.02, (n_days, n_symbols)), axis=0))
    o = c * np.exp(rng.normal(0, 0.005, c.shape))
    hi = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.005, c.shape)))
    lo = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.005, c.shape)))
    v = rng.lognormal(13, 0.8, c.shape)
    out = {"open": o, "high": hi, "low": lo, "close": c, "volume": v, "vwap": (o + hi + lo + c) / 4}
    holes = rng.random(c.shape) < 0.01
    return {k: np.where(holes, np.nan, a) for k, a in out.items()}


def run_ours(fields: dict[str, np.ndarray], exprs: dict[str, str], backend: str,
             budget: int, keep: bool = False) -> tuple[float, Any, dict[str, np.ndarray]]:
    kept: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    rep = run_factors(exprs, Panel(fields), EngineConfig(backend=backend, memory_budget_bytes=budget),
                      EvalConfig(horizons=HORIZONS), correlation=False,
                      on_values=(lambda v: kept.update(v)) if keep else None)
    return time.perf_counter() - t0, rep, kept


def run_pandas(fields: dict[str, np.ndarray], exprs: dict[str, str]) -> tuple[float, float, np.ndarray]:
    """(seconds, of which the date-drop rule, rank IC (F, H, T)) of the pandas implementation."""
    nodes = parse_many(exprs)
    t0 = time.perf_counter()
    frames = pandas_ref.frames_of(fields)
    close = frames["close"].ffill()
    fwd = [close.pct_change(h, fill_method=None).shift(-h) for h in HORIZONS]
    ok_ret = np.logical_and.reduce([np.isfinite(f) for f in fwd])
    memo: dict[str, Any] = {}
    out = np.full((len(nodes), len(HORIZONS), len(close)), np.nan)
    drop_s = 0.0
    for i, node in enumerate(nodes.values()):
        f = pandas_ref.evaluate(node, frames, memo)
        if not isinstance(f, pd.DataFrame):
            continue
        f = f.where(ok_ret)
        t1 = time.perf_counter()
        keep = pandas_ref.binnable_dates(f, QUANTILES).to_numpy()
        f = f.where(np.broadcast_to(keep[:, None], f.shape))
        drop_s += time.perf_counter() - t1
        for hi, r in enumerate(fwd):
            _, ric = pandas_ref.ic_table(f, r)
            out[i, hi] = ric.to_numpy()
    return time.perf_counter() - t0, drop_s, out


def run_alphalens(fields: dict[str, np.ndarray], values: dict[str, np.ndarray],
                  names: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    """(seconds for ``names``, rank IC (H, T) per factor on our date positions)."""
    import alphalens as al

    t_n, s_n = fields["close"].shape
    dates = pd.bdate_range("2010-01-04", periods=t_n)
    syms = [f"S{i:04d}" for i in range(s_n)]
    prices = pd.DataFrame(fields["close"], index=dates, columns=syms)
    series = {}
    for k in names:
        s = pd.DataFrame(values[k], index=dates, columns=syms).stack()
        s.index.names = ["date", "asset"]
        series[k] = s
    ics: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for k in names:
            fd = al.utils.get_clean_factor_and_forward_returns(
                series[k], prices, periods=HORIZONS, quantiles=5, filter_zscore=None, max_loss=1.0)
            ic = al.performance.factor_information_coefficient(fd)
            al.performance.mean_return_by_quantile(fd, by_date=True)
            for p in HORIZONS:
                al.performance.quantile_turnover(fd["factor_quantile"], 5, period=p)
                al.performance.quantile_turnover(fd["factor_quantile"], 1, period=p)
                al.performance.factor_rank_autocorrelation(fd, period=p)
            ics[k] = ic.reindex(dates).to_numpy().T
    return time.perf_counter() - t0, ics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--days", type=int, default=2520)
    ap.add_argument("--quick", action="store_true", help="smoke size: 100 symbols x 400 days")
    ap.add_argument("--alphalens-factors", type=int, default=4,
                    help="factors Alphalens is timed on (extrapolated to all; default 4)")
    ap.add_argument("--mining", type=int, default=2000, help="mining candidates (default 2000)")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--budget-gib", type=float, default=4.0, help="memory budget (default 4)")
    ap.add_argument("--gpu", action="store_true", help="also 3,000 symbols on the GPU vs CPU")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.quick:
        args.symbols, args.days, args.alphalens_factors, args.mining = 100, 400, 2, 300
    budget = int(args.budget_gib * (1 << 30))
    exprs = load_library("alpha158")
    fields = synthetic(args.symbols, args.days)
    load0 = os.getloadavg()[0]

    run_ours(synthetic(8, 300, 1), exprs, "cpu", budget)  # warm-up: JIT / cache load
    ours_s, rep, values = run_ours(fields, exprs, "cpu", budget, keep=True)
    print(f"ours (CPU): {len(exprs)} factors x {args.symbols} symbols x {args.days} days in "
          f"{ours_s:.2f} s")

    pick = [list(exprs)[i] for i in np.linspace(0, len(exprs) - 1, args.alphalens_factors).astype(int)]
    al_s, al_ic = run_alphalens(fields, values, pick)
    al_per = al_s / len(pick)
    al_total = al_per * len(exprs)
    idx = {k: i for i, k in enumerate(rep.names)}
    diff_al = max(float(np.nanmax(np.abs(rep.rank_ic[idx[k]] - al_ic[k]))) for k in pick)
    print(f"alphalens: {al_per:.2f} s per factor -> {al_total:.1f} s for {len(exprs)} "
          f"(timed on {len(pick)}): ratio {al_total / ours_s:.1f}x; max |rank IC diff| {diff_al:.2e}")

    pd_s = pd_drop_s = diff_pd = None
    nan_mismatch_pd = None
    if not args.skip_pandas:
        pd_s, pd_drop_s, pd_ric = run_pandas(fields, exprs)
        ok = np.isfinite(rep.rank_ic) & np.isfinite(pd_ric)
        diff_pd = float(np.max(np.abs(rep.rank_ic[ok] - pd_ric[ok])))
        nan_mismatch_pd = int((np.isfinite(rep.rank_ic) != np.isfinite(pd_ric)).sum())
        print(f"pandas: {pd_s:.1f} s ({pd_drop_s:.1f} s of it the date-drop rule): ratio "
              f"{pd_s / ours_s:.1f}x ({(pd_s - pd_drop_s) / ours_s:.1f}x without the rule); "
              f"max |rank IC diff| {diff_pd:.2e}, {nan_mismatch_pd} (factor, horizon, date) "
              f"defined on one side only")

    panel = Panel(fields)
    mcfg = MiningConfig(seed=1, population=args.mining, generations=1, max_depth=4,
                        min_abs_rank_ic=0.02, min_abs_icir=0.1, max_kept=20)
    mine(Panel(synthetic(8, 300, 1)), MiningConfig(population=20, generations=1),
         EngineConfig(backend="cpu"), EvalConfig(horizons=HORIZONS))
    mres = mine(panel, mcfg, EngineConfig(backend="cpu", memory_budget_bytes=budget),
                EvalConfig(horizons=HORIZONS))
    print(f"mining (CPU): {mres.n_evaluated} candidates in {mres.seconds:.1f} s = "
          f"{mres.candidates_per_second:.1f}/s, kept {len(mres.kept)}")

    gpu_ok, gpu_name = gpu_available()
    gpu: dict[str, Any] = {"available": gpu_ok, "name": gpu_name}
    if args.gpu and gpu_ok:
        big = synthetic(3000, args.days, 3)
        run_ours(synthetic(8, 300, 1), exprs, "gpu", budget)
        g_s, g_rep, _ = run_ours(big, exprs, "gpu", 32 << 30)
        c_s, c_rep, _ = run_ours(big, exprs, "cpu", budget)
        ok = np.isfinite(g_rep.rank_ic) & np.isfinite(c_rep.rank_ic)
        gpu.update({"symbols": 3000, "days": args.days, "gpu_s": g_s, "cpu_s": c_s,
                    "ratio_gpu_vs_cpu": c_s / g_s,
                    "max_abs_diff_rank_ic_gpu_vs_cpu": float(np.max(np.abs(g_rep.rank_ic[ok] - c_rep.rank_ic[ok])))})
        gm = mine(Panel(big), mcfg, EngineConfig(backend="gpu", memory_budget_bytes=32 << 30),
                  EvalConfig(horizons=HORIZONS))
        gpu["mining_candidates_per_s_gpu"] = gm.candidates_per_second
        print(f"GPU: 3000 symbols {g_s:.2f} s vs CPU {c_s:.2f} s = {c_s / g_s:.1f}x")
    elif args.gpu:
        print(f"(no GPU: {gpu_name})")

    res = {
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_1min": {"start": load0, "end": os.getloadavg()[0]}},
        "factors": len(exprs), "symbols": args.symbols, "days": args.days, "horizons": HORIZONS,
        "ours_cpu_s": ours_s, "alphalens_s_per_factor": al_per, "alphalens_s_total": al_total,
        "alphalens_factors_timed": pick, "alphalens_extrapolated": True,
        "ratio_vs_alphalens": al_total / ours_s, "pandas_s": pd_s,
        "ratio_vs_pandas": (pd_s / ours_s) if pd_s else None,
        "pandas_drop_rule_s": pd_drop_s,
        "ratio_vs_pandas_without_drop_rule": ((pd_s - pd_drop_s) / ours_s) if pd_s and pd_drop_s is not None else None,
        "max_abs_diff_ic": diff_al, "max_abs_diff_ic_vs_pandas": diff_pd,
        "rank_ic_defined_on_one_side_only_vs_pandas": nan_mismatch_pd,
        "mining_candidates": mres.n_evaluated, "mining_s": mres.seconds,
        "mining_candidates_per_s_cpu": mres.candidates_per_second, "mining_kept": len(mres.kept),
        "gpu": gpu,
        "notes": "Alphalens timed on a subset and extrapolated per factor; ours includes expression "
                 "evaluation, Alphalens does not; pandas baseline computes IC/rank IC only.",
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=float)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
