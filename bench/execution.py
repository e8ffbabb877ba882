"""Benchmark: order-execution decision latency (workload 6) — ours vs a straightforward NumPy/scipy
implementation of the same model, in one run.

- **single-order latency**: ``schedule(order, SymbolModel)`` per parent order (validation, defaults,
  the planner core, all scores, the ``Schedule`` object), timed one call at a time with
  ``time.perf_counter_ns`` after a warm-up, the process pinned to one CPU core. Reported: p50,
  p99, p99.9 in microseconds over ``--orders`` orders (default 100k): the numba core (default),
  the pure-Python core (``kernel="python"``), and the naive NumPy/scipy implementation below
  (``np.arccosh`` / ``np.sinh`` trajectory, ``np.argsort`` rounding, NumPy scores). Objects
  made before timing are moved out of the garbage collector's reach (``gc.freeze``); collections
  of the objects each call makes still happen inside the timed calls.
  ``ratio_vs_naive`` = naive p50 / ours p50 (the median speed-up; tails on a shared machine are
  dominated by preemption, so the p99 ratio is reported beside it as ``ratio_vs_naive_p99``).
- **batched throughput**: ``schedule_batch`` over all orders at once (orders/s, best of 3, and
  orders per CPU-second, which other load on the machine does not distort), CPU numba (all cores) and the GPU-structured array program run with NumPy; ``--gpu``: CuPy on a
  CUDA device, batches of ``--gpu-batch`` (default 100k) orders, device-resident and end to end.
- **tail analysis**: the same single-order calls timed with wall and thread-CPU clocks and
  involuntary context switches, to say whether the p99 is work or preemption by other processes.
- **Kafka round trip** ``orders.parent`` -> ``orders.scored`` (``bench/_exec_kafka.py``, needs the
  local stack; skipped with a message otherwise, ``--no-kafka`` to leave it out): latency p50/p99
  exactly-once and at-least-once through ``mystocks-gpu run execution``, throughput of the
  processor (EOS, ALO) vs a naive consumer loop (fastavro + the NumPy model, per record).

Workload: ``--symbols`` symbols (half with a U-shaped intraday volume profile), random orders of
up to 2 % of ADV over 5-120 minutes (1-minute slices), 55 % AC / 15 % TWAP / 15 % VWAP / 15 % POV,
buy and sell, random risk aversion and participation caps.

    python bench/execution.py --json bench/out/execution.json
    python bench/execution.py --quick
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
sys.path.insert(0, os.path.abspath(os.path.dirname(__file__)))

from mystocks_gpu.gpu_ops.backend import gpu_available  # noqa: E402
from mystocks_gpu.gpu_ops.execution import (  # noqa: E402
    ExecutionConfig,
    ExecutionInputError,
    MarketParams,
    OrderColumns,
    ParamsTable,
    ParentOrder,
    VolumeProfile,
    prepare,
    schedule,
    schedule_batch,
)
from mystocks_gpu.gpu_ops.execution.schedule_batch import prepare_batch  # noqa: E402
from mystocks_gpu.gpu_ops.execution.schedule_xp import plan_batch_xp  # noqa: E402

NS = 1_000_000_000
NOW = 1_699_972_200 * NS  # a 14:30 UTC session open
OPEN_S = 14.5 * 3600.0


# ---- workload ------------------------------------------------------------------------------------
def universe(n_symbols: int, seed: int = 12345) -> list[MarketParams]:
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, 78)
    prof = VolumeProfile(tuple((1 + 2 * x * x).tolist()), 300.0, OPEN_S)
    return [MarketParams(f"S{i:04d}", float(rng.uniform(5, 500)), float(rng.uniform(0.008, 0.04)),
                         float(10 ** rng.uniform(5.5, 7.5)), float(rng.uniform(0.01, 0.1)),
                         int(rng.choice([1, 10, 100])), profile=prof if i % 2 else None)
            for i in range(n_symbols)]


def orders(ps: list[MarketParams], n: int, seed: int = 7) -> list[ParentOrder]:
    rng = np.random.default_rng(seed)
    strat = rng.choice(["ac", "twap", "vwap", "pov"], n, p=[0.55, 0.15, 0.15, 0.15])
    sym = rng.integers(0, len(ps), n)
    out = []
    for i in range(n):
        p = ps[int(sym[i])]
        out.append(ParentOrder(
            f"o{i}", p.symbol, "buy" if i % 2 else "sell", int(rng.uniform(0.0005, 0.02) * p.adv) + 1,
            NOW + int(rng.integers(5, 121)) * 60 * NS, 0, str(strat[i]),
            risk_aversion=float(10 ** rng.uniform(-8, -5)), max_participation=float(rng.uniform(0.1, 0.5))))
    return out


# ---- the naive baseline ------------------------------------------------------------------------------
def naive_schedule(o: ParentOrder, p: MarketParams, cfg: ExecutionConfig, now: int) -> dict[str, Any]:
    """The same model written the straightforward way with NumPy (one order at a time)."""
    side = {"buy": 1, "sell": -1}.get(o.side) if isinstance(o.side, str) else o.side  # type: ignore[call-overload]
    if side not in (1, -1):
        raise ExecutionInputError("side", "bad side")
    if o.strategy not in ("ac", "twap", "vwap", "pov"):
        raise ExecutionInputError("strategy", "bad strategy")
    if not isinstance(o.quantity, int) or o.quantity <= 0:
        raise ExecutionInputError("quantity", "must be > 0")
    if o.end_ns <= now:
        raise ExecutionInputError("end_ns", "in the past")
    start = max(o.start_ns, now)
    H = o.end_ns - start
    if H < cfg.slice_ns:
        raise ExecutionInputError("end_ns", "shorter than a slice")
    lam = cfg.risk_aversion if o.risk_aversion is None else o.risk_aversion
    cap = cfg.max_participation if o.max_participation is None else o.max_participation
    pov = cfg.pov_rate if o.pov_rate is None else o.pov_rate
    if not (np.isfinite(lam) and lam >= 0 and 0 < cap <= 1 and 0 < pov <= 1):
        raise ExecutionInputError("risk_aversion", "bad parameter")
    D = cfg.day_seconds
    sigma_abs = p.sigma * p.price / np.sqrt(D)
    eta = p.spread * D / (cfg.eta_participation * p.adv)
    gamma = p.spread / (cfg.gamma_fraction * p.adv)
    eps = p.spread / 2
    N = int(min(H // cfg.slice_ns, cfg.max_slices))
    tau = H / N / 1e9
    edges = start + (np.arange(N + 1, dtype=np.int64) * H) // N
    if p.profile is None:
        vol = np.full(N, p.adv / D * tau)
    else:
        d = edges / 1e9 - p.profile.open_offset_s
        day = np.floor(d / 86_400.0)
        grid = np.arange(len(p.profile.cum)) * p.profile.bucket_seconds
        F = day + np.interp(d - day * 86_400.0, grid, p.profile.cum)
        vol = p.adv * np.diff(F)
    lot = p.lot_size
    L, odd = divmod(o.quantity, lot)
    caps = np.floor(cap * vol / lot).astype(np.int64)
    unf = 0
    if o.strategy == "pov":
        target = np.minimum(np.floor(min(pov, cap) * np.cumsum(vol) / lot).astype(np.int64), L)
        lots = np.minimum(np.diff(np.concatenate([[0], target])), caps)
        if np.any(lots < np.diff(np.concatenate([[0], target]))):  # a slice cap bound: catch up later
            lots, done = np.zeros(N, dtype=np.int64), 0
            for k in range(N):
                lots[k] = min(target[k] - done, caps[k])
                done += lots[k]
        unf = L - int(lots.sum())
    else:
        if o.strategy == "ac":
            eta_t = eta - 0.5 * gamma * tau
            if eta_t <= 0:
                raise ExecutionInputError("eta", "no AC solution")
            kappa = np.arccosh(1 + lam * sigma_abs**2 * tau**2 / (2 * eta_t)) / tau
            t = np.arange(N + 1) * tau
            T = N * tau
            x = np.sinh(kappa * (T - t)) / np.sinh(kappa * T) if kappa > 0 else 1 - t / T
            w = -np.diff(x)
        elif o.strategy == "twap":
            w = np.ones(N)
        else:
            w = vol.copy()
        target = L * w / w.sum()
        lots = np.floor(target).astype(np.int64)
        R = L - int(lots.sum())
        lots[np.argsort(-(target - lots), kind="stable")[:R]] += 1
        if caps.sum() < L:
            lots, unf = caps, L - int(caps.sum())
        elif np.any(lots > caps):
            carry = 0
            for k in range(N):
                want = lots[k] + carry
                lots[k] = min(want, caps[k])
                carry = want - lots[k]
            for k in range(N - 1, -1, -1):
                add = min(caps[k] - lots[k], carry)
                lots[k] += add
                carry -= add
    shares = lots * lot
    if unf == 0:
        nz = np.flatnonzero(lots)
        shares[nz[-1] if len(nz) else 0] += odd
    n = shares.astype(float)
    X = n.sum()
    x_after = X - np.cumsum(n)
    perm, temp, spread = gamma * np.sum(x_after * n), eta / tau * np.sum(n * n), eps * X
    var = sigma_abs**2 * tau * np.sum(x_after**2)
    es = perm + temp + spread
    return {"shares": shares, "times": edges[:-1], "expected_shortfall": es, "variance": var,
            "timing_risk": np.sqrt(var),
            "sqrt_impact": cfg.sqrt_impact_y * p.sigma * np.sqrt(o.quantity / p.adv) * p.price * o.quantity,
            "unfilled": unf * lot + (odd if unf else 0),
            "participation": np.max(np.where(n > 0, n / vol, 0.0)), "objective": es + lam * var}


# ---- timing ------------------------------------------------------------------------------------------
def pin_one_core() -> int | None:
    try:
        core = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {core})
        return core
    except (AttributeError, OSError):
        return None


def latencies(call: Any, items: list[Any], warmup: int) -> np.ndarray:
    """Per-call wall nanoseconds (``time.perf_counter_ns``) after ``warmup`` untimed calls."""
    for it in items[:warmup]:
        call(it)
    gc.collect()
    gc.freeze()
    out = np.empty(len(items), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, it in enumerate(items):
        t0 = clock()
        call(it)
        out[i] = clock() - t0
    return out


def pct(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "p999_us": float(np.percentile(us, 99.9)), "mean_us": float(us.mean()), "n": int(len(us))}


def best_of(fn: Any, repeat: int) -> float:
    return best_of_cpu(fn, repeat)[0]


def best_of_cpu(fn: Any, repeat: int) -> tuple[float, float]:
    """(best wall seconds, best process CPU seconds) over ``repeat`` runs."""
    best, best_cpu = math.inf, math.inf
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def tail_analysis(call: Any, items: list[Any], warmup: int) -> dict[str, Any]:
    """Where the latency tail comes from: per call, wall ns and this thread's CPU ns
    (``CLOCK_THREAD_CPUTIME_ID``) and involuntary context switches (``getrusage(RUSAGE_THREAD)``).
    A tail call whose wall time is mostly not CPU time was preempted (another process ran); one
    whose CPU time is long did more work (a long schedule, a page fault, a GC pass)."""
    import resource

    for it in items[:warmup]:
        call(it)
    gc.collect()
    gc.freeze()
    n = len(items)
    wall = np.empty(n, np.int64)
    cpu = np.empty(n, np.int64)
    ivcs = np.empty(n, np.int64)
    clock, tclock = time.perf_counter_ns, time.thread_time_ns
    ru, who = resource.getrusage, resource.RUSAGE_THREAD
    for i, it in enumerate(items):
        c0 = ru(who).ru_nivcsw
        t0, u0 = clock(), tclock()
        call(it)
        u1, t1 = tclock(), clock()
        ivcs[i] = ru(who).ru_nivcsw - c0
        wall[i], cpu[i] = t1 - t0, u1 - u0
    p99 = np.percentile(wall, 99)
    tail = wall >= p99
    off_cpu = (wall - cpu) > 0.5 * wall
    return {"n": n, "wall_p50_us": float(np.percentile(wall, 50) / 1e3), "wall_p99_us": float(p99 / 1e3),
            "cpu_p50_us": float(np.percentile(cpu, 50) / 1e3), "cpu_p99_us": float(np.percentile(cpu, 99) / 1e3),
            "tail_calls": int(tail.sum()), "tail_preempted_fraction": float((tail & off_cpu).sum() / max(1, tail.sum())),
            "tail_with_context_switch_fraction": float(((ivcs > 0) & tail).sum() / max(1, tail.sum())),
            "calls_with_context_switch": int((ivcs > 0).sum())}


# ---- main --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000, help="orders timed one by one (default 100k)")
    ap.add_argument("--symbols", type=int, default=500, help="symbols (default 500)")
    ap.add_argument("--python-orders", type=int, default=20_000,
                    help="orders timed with the pure-Python core (default 20k)")
    ap.add_argument("--gpu", action="store_true", help="also time the CuPy batch path on a CUDA device")
    ap.add_argument("--gpu-batch", type=int, default=100_000, help="orders per GPU batch (default 100k)")
    ap.add_argument("--no-kafka", action="store_true", help="leave out the Kafka round trip / throughput")
    ap.add_argument("--kafka-orders", type=int, default=50_000, help="orders for the Kafka throughput (default 50k)")
    ap.add_argument("--kafka-rate", type=float, default=500.0, help="orders/s in the latency phase (default 500)")
    ap.add_argument("--kafka-seconds", type=float, default=8.0, help="length of each latency phase (default 8 s)")
    ap.add_argument("--kafka-batch", type=int, default=2000, help="max records per micro-batch, throughput (default 2000)")
    ap.add_argument("--quick", action="store_true", help="10k orders, 2k with the Python core, 5k Kafka orders")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this file")
    args = ap.parse_args()
    if args.quick:
        args.orders, args.python_orders, args.gpu_batch = 10_000, 2_000, 20_000
        args.kafka_orders, args.kafka_seconds = 5_000, 4.0
    load_start = os.getloadavg()[0]
    cfg = ExecutionConfig()
    ps = universe(args.symbols)
    by_sym = {p.symbol: p for p in ps}
    models = {p.symbol: prepare(p, cfg) for p in ps}
    pymodels = {p.symbol: prepare(p, ExecutionConfig(kernel="python")) for p in ps}
    ords = orders(ps, args.orders)
    print(f"{len(ords):,} orders over {len(ps)} symbols; "
          f"mean slices {np.mean([min((o.end_ns - NOW) // cfg.slice_ns, cfg.max_slices) for o in ords]):.1f}")

    # agreement ours vs naive (same model): schedules and scores
    same, max_rel = 0, 0.0
    sample = ords[: min(len(ords), 5000)]
    for o in sample:
        a = schedule(o, models[o.symbol], now_ns=NOW)
        b = naive_schedule(o, by_sym[o.symbol], cfg, NOW)
        same += int(np.array_equal(a.quantities, b["shares"]))
        if b["expected_shortfall"] > 0:
            max_rel = max(max_rel, abs(a.score.expected_shortfall - b["expected_shortfall"]) / b["expected_shortfall"])
    print(f"identical schedules ours vs naive: {same}/{len(sample)}; max rel. diff of E[IS]: {max_rel:.2e}")

    core = pin_one_core()
    print(f"single-order latency on core {core} (warm-up, then one call at a time):")
    ours = pct(latencies(lambda o: schedule(o, models[o.symbol], now_ns=NOW), ords, 5000))
    py = pct(latencies(lambda o: schedule(o, pymodels[o.symbol], now_ns=NOW), ords[: args.python_orders], 500))
    naive = pct(latencies(lambda o: naive_schedule(o, by_sym[o.symbol], cfg, NOW), ords, 2000))
    prep = pct(latencies(lambda o: schedule(o, by_sym[o.symbol], cfg, now_ns=NOW), ords[: args.python_orders], 500))
    tail = tail_analysis(lambda o: schedule(o, models[o.symbol], now_ns=NOW), ords[: max(len(ords) // 5, 2000)], 1000)
    if core is not None:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    rows = [("ours (numba core, SymbolModel)", ours), ("ours (numba core, MarketParams)", prep),
            ("ours (pure-Python core)", py), ("naive NumPy/scipy", naive)]
    w = max(len(r[0]) for r in rows)
    print(f"{'implementation':<{w}}  {'p50 us':>8}  {'p99 us':>8}  {'p99.9 us':>9}  {'n':>8}")
    for name, r in rows:
        print(f"{name:<{w}}  {r['p50_us']:8.2f}  {r['p99_us']:8.2f}  {r['p999_us']:9.2f}  {r['n']:8,}")
    ratio = naive["p50_us"] / ours["p50_us"]
    ratio99 = naive["p99_us"] / ours["p99_us"]
    print(f"ratio_vs_naive (p50): {ratio:.1f}x   (p99: {ratio99:.1f}x); "
          f"goal p99 <= 50 us: {'met' if ours['p99_us'] <= 50 else 'NOT met'} (load {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    print(f"tail analysis ({tail['n']:,} calls): wall p50 {tail['wall_p50_us']:.2f} / p99 {tail['wall_p99_us']:.2f} us, "
          f"thread CPU p50 {tail['cpu_p50_us']:.2f} / p99 {tail['cpu_p99_us']:.2f} us; of the calls >= p99, "
          f"{100 * tail['tail_preempted_fraction']:.0f}% spent most of their wall time off the CPU and "
          f"{100 * tail['tail_with_context_switch_fraction']:.0f}% saw an involuntary context switch")

    # batched throughput
    table, codes = ParamsTable.from_params(ps)
    batch_cols = OrderColumns.from_orders(ords, codes)
    schedule_batch(batch_cols, table, cfg, now_ns=NOW, backend="cpu")  # warm (JIT / cache load)
    t_cpu, cpu_s = best_of_cpu(lambda: schedule_batch(batch_cols, table, cfg, now_ns=NOW, backend="cpu"), 3)
    plan = prepare_batch(batch_cols, table, cfg, NOW, np)
    t_xp = best_of(lambda: plan_batch_xp(np, *plan.args), 1)
    print(f"batched, CPU numba ({os.cpu_count()} cores): {len(ords) / t_cpu:,.0f} orders/s "
          f"({t_cpu * 1e3:.1f} ms for {len(ords):,}; {len(ords) / cpu_s:,.0f} orders per CPU-second); "
          "GPU-structured program on NumPy: "
          f"{len(ords) / t_xp:,.0f} orders/s")
    gpu: dict[str, Any] | None = None
    if args.gpu:
        ok, why = gpu_available()
        if not ok:
            print(f"--gpu: no GPU ({why})")
        else:
            import cupy as cp

            sub = OrderColumns(**{k: getattr(batch_cols, k)[: args.gpu_batch] for k in batch_cols.__dataclass_fields__})
            dev = OrderColumns(**{k: cp.asarray(getattr(sub, k)) for k in sub.__dataclass_fields__})
            schedule_batch(dev, table, cfg, now_ns=NOW, backend="gpu")
            cp.cuda.Device().synchronize()

            def resident() -> None:
                schedule_batch(dev, table, cfg, now_ns=NOW, backend="gpu")
                cp.cuda.Device().synchronize()

            t_res = best_of(resident, 3)
            t_e2e = best_of(lambda: schedule_batch(sub, table, cfg, now_ns=NOW, backend="gpu").to_host(), 3)
            t_c = best_of(lambda: schedule_batch(sub, table, cfg, now_ns=NOW, backend="cpu"), 3)
            n = len(sub)
            gpu = {"device": why, "batch": n, "orders_per_s_resident": n / t_res, "orders_per_s_end_to_end": n / t_e2e,
                   "cpu_orders_per_s_same_batch": n / t_c}
            print(f"GPU {why}: batch {n:,}: {n / t_res:,.0f} orders/s device-resident, {n / t_e2e:,.0f} end to "
                  f"end; CPU same batch {n / t_c:,.0f}")
    kafka = None
    if not args.no_kafka:
        from _exec_kafka import kafka_round_trip

        print("Kafka: orders.parent -> orders.scored through the execution processor")
        kafka = kafka_round_trip(args.kafka_orders, args.kafka_rate, args.kafka_seconds, args.kafka_batch, 50,
                                 universe, naive_schedule)
    result = {
        "bench": "execution", "orders": len(ords), "symbols": len(ps), "pinned_core": core,
        "p50_us": ours["p50_us"], "p99_us": ours["p99_us"], "p999_us": ours["p999_us"], "ratio_vs_naive": ratio,
        "ratio_vs_naive_definition": "naive p50 / ours p50", "ratio_vs_naive_p99": ratio99,
        "single": {"numba_symbolmodel": ours, "numba_marketparams": prep, "python": py, "naive_numpy": naive},
        "tail_analysis": tail,
        "agreement": {"identical_schedules": same, "sample": len(sample), "max_rel_diff_expected_shortfall": max_rel},
        "batch_cpu_orders_per_s": len(ords) / t_cpu, "batch_cpu_orders_per_cpu_s": len(ords) / cpu_s, "batch_xp_numpy_orders_per_s": len(ords) / t_xp,
        "gpu": gpu, "kafka": kafka,
        "machine": {"cores": os.cpu_count(), "loadavg_1min_start": round(load_start, 2),
                    "loadavg_1min_end": round(os.getloadavg()[0], 2)},
    }
    if args.json is not None:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
