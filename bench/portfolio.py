"""Benchmark: batched portfolio optimisation — ours (CPU numba / GPU CuPy) vs a CVXPY + Clarabel
loop and vs PyPortfolioOpt, with the same optimal objectives.

Problems (synthetic, seeded): factor-model covariances (10 factors + idiosyncratic variance)
and expected returns ``N(5e-4, 5e-4)`` per day, annualised (x 252, PyPortfolioOpt's convention),
long-only with ``w_i <= max_weight`` (default
0.05), ``sum w = 1`` and a turnover limit ``sum |w - w0| <= 0.5`` against random current weights
``w0``; half min-variance (``min w'Sigma w``), half mean-variance (``min ra/2 w'Sigma w - mu'w``,
``ra = 5``). Every problem has its own covariance.

- ours: :func:`solve_stacked` on the whole batch (one run per objective), end to end: covariance
  check, lowering, ADMM + polish, metrics. A warm-up on 4 problems excludes JIT compilation.
- CVXPY: one ``cp.Problem`` per problem (``quad_form`` with ``psd_wrap``, ``norm1`` turnover),
  Clarabel with gap/feasibility tolerances 1e-10 (at its defaults, 1e-8 absolute, its own
  objectives are only ~1e-6 relative accurate on these problems). It is timed on a subset (``--baseline-subset`` problems
  per objective) and extrapolated per problem (``cvxpy_extrapolated: true`` in the JSON).
- PyPortfolioOpt: ``EfficientFrontier(mu, S, weight_bounds=(0, max_weight))`` +
  ``add_constraint(norm1(w - w0) <= T)`` + ``min_volatility()`` / ``max_quadratic_utility(ra)``
  (solver Clarabel) on the same subset, extrapolated likewise.

``max_rel_objective_diff`` = max over the subset of ``|f(ours) - f(ref)| / |f(ref)|`` with ``f``
evaluated by the same formula at each solver's weights (ref = CVXPY and PyPortfolioOpt). Wall
clock on a shared machine is noisy: the JSON also has process CPU seconds.

    python bench/portfolio.py --json bench/out/portfolio.json            # 1,000 x 200, CPU
    python bench/portfolio.py --quick                                     # 100 x 50
    python bench/portfolio.py --gpu --json bench/out/portfolio_gpu.json  # + 10,000 x 500 on a GPU

Risk processor (``risk`` in the JSON): accounts x positions updated per second and p50/p99 batch
processing time at 10k ticks/s of event time (100 ms batches), in process (see :func:`bench_risk`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from mystocks_gpu.gpu_ops.backend import gpu_available  # noqa: E402
from mystocks_gpu.gpu_ops.portfolio import ProblemBatch, SolverConfig, solve_stacked  # noqa: E402
from mystocks_gpu.gpu_ops.portfolio.metrics import evaluate  # noqa: E402

RA = 5.0
TURNOVER = 0.5
#: the references are solved to tight tolerances so their objectives are comparable at 1e-6
CLARABEL_TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


def make_batch(objective: str, B: int, n: int, max_weight: float, seed: int, xp: Any = np
               ) -> ProblemBatch:
    """``B`` problems of ``n`` assets (module docstring); ``xp = cupy`` builds the covariances on
    the GPU (the rest stays on the host)."""
    rng = np.random.default_rng(seed)
    g = xp.random.default_rng(seed) if xp is not np else rng
    F = g.standard_normal((B, n, 10)) * 0.01
    d = g.uniform(1e-4, 4e-4, (B, n))
    cov = xp.matmul(F, xp.swapaxes(F, 1, 2))
    idx = xp.arange(n)
    cov[:, idx, idx] += d
    cov *= 252.0
    mu = 252.0 * rng.normal(5e-4, 5e-4, (B, n)) if objective == "mean_variance" else None
    return ProblemBatch(objective, np.zeros((B, n)), np.full((B, n), max_weight), cov=cov, mu=mu,
                        risk_aversion=np.full(B, RA), current_weights=rng.dirichlet(np.ones(n), B),
                        budget=np.ones(B), turnover=np.full(B, TURNOVER))


def run_ours(pb: ProblemBatch, cfg: SolverConfig) -> tuple[float, float, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    res = solve_stacked(pb, cfg)
    return time.perf_counter() - t0, time.process_time() - c0, res


def run_cvxpy(pb: ProblemBatch, idx: np.ndarray) -> tuple[float, np.ndarray]:
    import cvxpy as cp

    n = pb.n_assets
    W = np.full((len(idx), n), np.nan)
    t0 = time.perf_counter()
    for j, b in enumerate(idx):
        w = cp.Variable(n)
        cov = np.asarray(pb.cov[b])  # type: ignore[index]
        risk = cp.quad_form(w, cp.psd_wrap(cov))
        obj = risk if pb.objective == "min_variance" else RA / 2 * risk - pb.mu[b] @ w  # type: ignore[index]
        cons = [cp.sum(w) == 1, w >= pb.lower[b], w <= pb.upper[b],
                cp.norm1(w - pb.current_weights[b]) <= TURNOVER]  # type: ignore[index]
        cp.Problem(cp.Minimize(obj), cons).solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
        W[j] = w.value
    return time.perf_counter() - t0, W


def run_pypfopt(pb: ProblemBatch, idx: np.ndarray) -> tuple[float, np.ndarray] | None:
    try:
        import cvxpy as cp
        from pypfopt import EfficientFrontier
    except ImportError:
        return None
    n = pb.n_assets
    W = np.full((len(idx), n), np.nan)
    t0 = time.perf_counter()
    for j, b in enumerate(idx):
        mu = pb.mu[b] if pb.mu is not None else np.zeros(n)
        ef = EfficientFrontier(mu, np.asarray(pb.cov[b]), weight_bounds=(0, float(pb.upper[b, 0])),  # type: ignore[index]
                               solver="CLARABEL", solver_options=CLARABEL_TIGHT)
        w0 = pb.current_weights[b]  # type: ignore[index]
        ef.add_constraint(lambda w, w0=w0: cp.norm1(w - w0) <= TURNOVER)
        if pb.objective == "min_variance":
            ef.min_volatility()
        else:
            ef.max_quadratic_utility(risk_aversion=RA)
        W[j] = np.array(list(ef.clean_weights(cutoff=0, rounding=None).values()))
    return time.perf_counter() - t0, W


def rel_diff(pb: ProblemBatch, idx: np.ndarray, ours: np.ndarray, ref: np.ndarray) -> float:
    sub = pb.take(idx) if isinstance(pb.cov, np.ndarray) else None
    if sub is None:
        return float("nan")
    f_ours = evaluate(sub, ours)[0]
    f_ref = evaluate(sub, ref)[0]
    return float(np.max(np.abs(f_ours - f_ref) / np.abs(f_ref)))


def bench_cpu(args: argparse.Namespace) -> dict[str, Any]:
    B, n = (100, 50) if args.quick else (args.problems, args.assets)
    per = B // 2
    cfg = SolverConfig(backend="cpu")
    out: dict[str, Any] = {"problems": 2 * per, "assets": n, "max_weight": args.max_weight,
                           "turnover": TURNOVER, "risk_aversion": RA, "by_objective": {}}
    tot = {"ours_s": 0.0, "ours_cpu_s": 0.0, "cvxpy_s": 0.0, "pypfopt_s": 0.0}
    diffs: list[float] = []
    for k, objective in enumerate(("min_variance", "mean_variance")):
        pb = make_batch(objective, per, n, args.max_weight, args.seed + k)
        solve_stacked(pb.take(np.arange(4)), cfg)  # warm-up (JIT / cache load)
        wall, cpu, res = run_ours(pb, cfg)
        sub = np.arange(min(args.baseline_subset, per))
        cv_s, cv_w = run_cvxpy(pb, sub)
        pp = run_pypfopt(pb, sub)
        cv_per = cv_s / len(sub)
        row: dict[str, Any] = {"ours_s": wall, "ours_cpu_s": cpu, "ours_per_problem_ms": 1e3 * wall / per,
               "statuses": {s: int(np.sum(res.status == s)) for s in np.unique(res.status)},
               "iterations_p50_p90_max": [float(np.percentile(res.iterations, q)) for q in (50, 90, 100)],
               "iterations_p50_p99": [float(np.percentile(res.iterations, q)) for q in (50, 99)],
               "max_violation": float(np.nanmax(res.violation)),
               "cvxpy_per_problem_s": cv_per, "cvxpy_extrapolated_s": cv_per * per,
               "ratio_vs_cvxpy": cv_per * per / wall,
               "rel_objective_diff_vs_cvxpy": rel_diff(pb, sub, res.weights[sub], cv_w)}
        diffs.append(row["rel_objective_diff_vs_cvxpy"])
        tot["cvxpy_s"] += cv_per * per
        if pp is not None:
            pp_per = pp[0] / len(sub)
            row.update(pypfopt_per_problem_s=pp_per, pypfopt_extrapolated_s=pp_per * per,
                       ratio_vs_pypfopt=pp_per * per / wall,
                       rel_objective_diff_vs_pypfopt=rel_diff(pb, sub, res.weights[sub], pp[1]))
            diffs.append(row["rel_objective_diff_vs_pypfopt"])
            tot["pypfopt_s"] += pp_per * per
        tot["ours_s"] += wall
        tot["ours_cpu_s"] += cpu
        out["by_objective"][objective] = row
        print(f"{objective:14s} ours {wall:8.2f}s ({1e3 * wall / per:.2f} ms/problem, CPU {cpu:.1f}s)  "
              f"CVXPY {cv_per * 1e3:.1f} ms/problem -> x{row['ratio_vs_cvxpy']:.1f}"
              + (f"  PyPortfolioOpt x{row['ratio_vs_pypfopt']:.1f}" if pp is not None else "")
              + f"  rel obj diff vs CVXPY {row['rel_objective_diff_vs_cvxpy']:.1e}"
              + (f" vs PyPortfolioOpt {row['rel_objective_diff_vs_pypfopt']:.1e}" if pp is not None else "")
              + f"  iterations p50/p99 {row['iterations_p50_p99'][0]:.0f}/{row['iterations_p50_p99'][1]:.0f}"
              + f"  {row['statuses']}")
    out.update(cvxpy_tolerances=CLARABEL_TIGHT,
               ours_s=tot["ours_s"], ours_cpu_s=tot["ours_cpu_s"], cvxpy_extrapolated_s=tot["cvxpy_s"],
               cvxpy_extrapolated=True, cvxpy_subset_per_objective=int(min(args.baseline_subset, per)),
               ratio_vs_cvxpy=tot["cvxpy_s"] / tot["ours_s"],
               ratio_vs_pypfopt=tot["pypfopt_s"] / tot["ours_s"] if tot["pypfopt_s"] else None,
               max_rel_objective_diff=float(np.nanmax(diffs)))
    print(f"total: ours {tot['ours_s']:.2f}s vs CVXPY loop {tot['cvxpy_s']:.1f}s (extrapolated) "
          f"-> ratio_vs_cvxpy {out['ratio_vs_cvxpy']:.1f}; max_rel_objective_diff "
          f"{out['max_rel_objective_diff']:.2e}")
    return out


def bench_gpu(args: argparse.Namespace) -> dict[str, Any]:
    ok, why = gpu_available()
    if not ok:
        print(f"--gpu: no GPU ({why})")
        return {"gpu": None, "reason": why}
    import cupy

    B, n = (1000, 100) if args.quick else (args.gpu_problems, args.gpu_assets)
    per = B // 2
    gcfg = SolverConfig(backend="gpu", batch_size=args.gpu_batch)
    ccfg = SolverConfig(backend="cpu")
    res_out: dict[str, Any] = {"gpu": why, "problems": 2 * per, "assets": n, "by_objective": {}}
    g_tot = c_tot = 0.0
    for k, objective in enumerate(("min_variance", "mean_variance")):
        pb = make_batch(objective, per, n, args.max_weight, args.seed + k, cupy)
        assert pb.cov is not None  # make_batch always sets the covariances
        solve_stacked(replace(pb.take(np.arange(4)), cov=pb.cov[:4]), gcfg)
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        res = solve_stacked(pb, gcfg)
        cupy.cuda.Device().synchronize()
        g = time.perf_counter() - t0
        m = min(args.gpu_cpu_subset, per)
        sub = replace(pb.take(np.arange(m)), cov=cupy.asnumpy(pb.cov[:m]))
        solve_stacked(sub.take(np.arange(2)), ccfg)
        c_s, _, cres = run_ours(sub, ccfg)
        c_ext = c_s / m * per
        diff = float(np.nanmax(np.abs(res.objective[:m] - cres.objective) / np.abs(cres.objective)))
        res_out["by_objective"][objective] = {
            "gpu_s": g, "cpu_subset": m, "cpu_extrapolated_s": c_ext, "gpu_vs_cpu": c_ext / g,
            "statuses": {s: int(np.sum(res.status == s)) for s in np.unique(res.status)},
            "max_rel_objective_diff_gpu_vs_cpu": diff}
        g_tot += g
        c_tot += c_ext
        print(f"GPU {objective:14s} {per} x {n}: {g:.2f}s; CPU (extrapolated from {m}) {c_ext:.1f}s "
              f"-> x{c_ext / g:.1f}; rel obj diff GPU vs CPU {diff:.1e}")
    res_out["gpu_vs_cpu"] = c_tot / g_tot
    return res_out



def bench_risk(args: argparse.Namespace) -> dict[str, Any]:
    """The risk processor in process (decode + process, no broker): ``accounts`` accounts of
    ``positions`` symbols each over synthetic ticks at 10k ticks/s of event time, cut into batches
    of 100 ms (1,000 ticks), one snapshot of every account per batch (``emit = "batch"``).
    Reports account-position updates per second (accounts x positions x batches / processing
    time) and p50/p99 processing time per batch (the micro-batch latency the processor adds)."""
    from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
    from mystocks_gpu.processors.risk.config import load_processor_config
    from mystocks_gpu.processors.risk.positions import encode_positions
    from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
    from mystocks_gpu.schemas.batch_codec import BatchEncoder
    from mystocks_gpu.schemas.symbols import SymbolTable
    from mystocks_gpu.streams.processor import process_isolating
    from mystocks_gpu.streams.side_input import SideRecord

    A, K, n_sym, rate = (200, 10, 100, 10_000.0) if args.quick else (args.risk_accounts, args.risk_positions, 500, 10_000.0)
    batches = 30 if args.quick else 100
    per = int(rate * 0.1)
    names = symbol_names(n_sym, args.seed)
    cols = generate(SyntheticMarket(n_symbols=n_sym, seed=args.seed, events_per_s=rate), per * (batches + 5))
    ticks: list[bytes | None] = list(BatchEncoder("mystocks.md.Tick").encode(cols, names))
    t0 = int(cols["ts"][0])
    rng = np.random.default_rng(args.seed)
    side = []
    for a in range(A):
        held = rng.choice(n_sym, K, replace=False)
        val = encode_positions(f"acc{a:05d}", t0, [(names[j], float(rng.integers(10, 500)), 50.0) for j in held])
        side.append(SideRecord(0, a, f"acc{a:05d}".encode(), val, t0 // 1_000_000))
    cfg = load_processor_config(data={"risk": {"interval_ns": 1_000_000_000, "window": 100},
                                      "processor": {"emit": "batch"}}, backend="cpu")
    proc = RiskProcessor(cfg)
    sy = SymbolTable()
    st = proc.initial_state()
    dec, _rej = proc.decode_side(side, sy)
    st = proc.apply_side(dec, st, sy, {0: A})
    lat = []
    for b in range(batches + 5):
        vals = ticks[b * per:(b + 1) * per]
        t1 = time.perf_counter()
        d = proc.decode(vals, np.arange(b * per, b * per + len(vals)), sy, 0, 0)
        _out, st = process_isolating(proc, d.columns, st)
        if b >= 5:  # the first batches warm up (JIT, account state allocation)
            lat.append(time.perf_counter() - t1)
    lat_a = np.asarray(lat)
    out = {"accounts": A, "positions_per_account": K, "symbols": n_sym, "ticks_per_s_event_time": rate,
           "batch_ticks": per, "batches": batches,
           "account_positions_per_s": A * K * batches / float(lat_a.sum()),
           "ticks_per_s_processed": per * batches / float(lat_a.sum()),
           "batch_ms_p50": 1e3 * float(np.percentile(lat_a, 50)), "batch_ms_p99": 1e3 * float(np.percentile(lat_a, 99)),
           "keeps_up_at_10k_ticks_per_s": bool(np.percentile(lat_a, 99) < 0.1)}
    print(f"risk processor: {A} accounts x {K} positions, {per} ticks per 100 ms batch: "
          f"{out['account_positions_per_s']:,.0f} account-positions/s, {out['ticks_per_s_processed']:,.0f} ticks/s, "
          f"batch p50 {out['batch_ms_p50']:.1f} ms p99 {out['batch_ms_p99']:.1f} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=1000, help="problems, half of each objective")
    ap.add_argument("--assets", type=int, default=200)
    ap.add_argument("--max-weight", type=float, default=0.05)
    ap.add_argument("--baseline-subset", type=int, default=40,
                    help="problems per objective solved by CVXPY / PyPortfolioOpt (extrapolated)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="100 x 50 (and 1,000 x 100 with --gpu)")
    ap.add_argument("--gpu", action="store_true", help="also 10,000 x 500 on the GPU vs our CPU")
    ap.add_argument("--gpu-problems", type=int, default=10_000)
    ap.add_argument("--gpu-assets", type=int, default=500)
    ap.add_argument("--gpu-batch", type=int, default=2500, help="problems per GPU array program")
    ap.add_argument("--gpu-cpu-subset", type=int, default=100)
    ap.add_argument("--risk-accounts", type=int, default=2000, help="risk processor benchmark: accounts")
    ap.add_argument("--risk-positions", type=int, default=20, help="risk processor benchmark: positions per account")
    ap.add_argument("--no-risk", action="store_true", help="skip the risk processor benchmark")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    res: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                       "cores": os.cpu_count(), "python": platform.python_version()}}
    res["cpu"] = bench_cpu(args)
    res["ratio_vs_cvxpy"] = res["cpu"]["ratio_vs_cvxpy"]
    res["max_rel_objective_diff"] = res["cpu"]["max_rel_objective_diff"]
    res["cvxpy_extrapolated"] = True
    if not args.no_risk:
        res["risk"] = bench_risk(args)
    if args.gpu:
        res["gpu"] = bench_gpu(args)
    res["loadavg_1min"] = {"start": load0, "end": os.getloadavg()[0]}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=float)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
