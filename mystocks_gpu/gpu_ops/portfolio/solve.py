"""``solve_batch`` / ``solve_stacked``: the optimiser's entry points.

Pipeline per :class:`ProblemBatch`: decidable infeasibility (``feasibility.py``) -> covariance
check / repair (``psd.py``) -> per chunk of ``batch_size`` problems: risk parity by batched Newton
(``risk_parity.py``), every other objective lowered to a QP (``lowering.py``), scaled and solved
by batched ADMM + polish (``admm.py``, ``polish.py``) -> weights, objective, risk and constraint
violation measured on the host in the problem's own units (``metrics.py``).

``progress(done, total)`` is called after each chunk; ``should_stop()`` is polled at every ADMM
check and between chunks, and unfinished problems come back ``cancelled`` (no weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, select, to_host
from mystocks_gpu.gpu_ops.backend import xp as array_module
from mystocks_gpu.gpu_ops.portfolio import solve_status as S
from mystocks_gpu.gpu_ops.portfolio.admm import run_admm
from mystocks_gpu.gpu_ops.portfolio.config import SolverConfig
from mystocks_gpu.gpu_ops.portfolio.feasibility import precheck
from mystocks_gpu.gpu_ops.portfolio.linalg_cpu import CpuOps
from mystocks_gpu.gpu_ops.portfolio.linalg_xp import XpOps
from mystocks_gpu.gpu_ops.portfolio.lowering import lower
from mystocks_gpu.gpu_ops.portfolio.metrics import evaluate
from mystocks_gpu.gpu_ops.portfolio.problem import PortfolioProblem, ProblemBatch, stack_problems
from mystocks_gpu.gpu_ops.portfolio.psd import check_and_repair
from mystocks_gpu.gpu_ops.portfolio.qp import scale
from mystocks_gpu.gpu_ops.portfolio.result import BatchResult, PortfolioResult
from mystocks_gpu.gpu_ops.portfolio.risk_parity import risk_parity

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


def make_ops(backend: str, config: SolverConfig) -> Any:
    """The kernel set for a resolved backend: numba (``cpu``) or CuPy array programs (``gpu``)."""
    if backend == GPU:
        return XpOps(array_module(GPU), config.factor_dtype)
    return CpuOps(config.factor_dtype)


def solve_batch(problems: Sequence[PortfolioProblem], config: SolverConfig | None = None,
                progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                ) -> list[PortfolioResult]:
    """Solve many problems (any mix of objectives and sizes); results in input order.

    Problems of the same objective and constraint structure are solved together as one batch."""
    cfg = config or SolverConfig()
    groups = stack_problems(problems)
    out: list[PortfolioResult | None] = [None] * len(problems)
    total = len(problems)
    done_before = 0
    for idx, pb in groups:
        def prog(done: int, _tot: int, base: int = done_before) -> None:
            if progress is not None:
                progress(base + done, total)

        res = solve_stacked(pb, cfg, prog, should_stop)
        for j, i in enumerate(idx.tolist()):
            out[i] = res[j]
        done_before += len(idx)
    return [r for r in out if r is not None]


def solve_stacked(pb: ProblemBatch, config: SolverConfig | None = None,
                  progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                  *, ops: Any = None) -> BatchResult:
    """Solve a stacked batch (module docstring). ``ops`` overrides the backend's kernel set (the
    tests pass ``XpOps(numpy)`` to run the GPU-structured program on the CPU)."""
    cfg = config or SolverConfig()
    if ops is None:
        ops = make_ops(select(None if cfg.backend == "auto" else cfg.backend), cfg)
    xp = ops.xp
    B, n = pb.n_problems, pb.n_assets
    status = np.full(B, S.RUNNING, dtype=np.int8)
    weights = np.full((B, n), np.nan)
    iters = np.zeros(B, dtype=np.int64)
    bad, conflicts, messages = precheck(pb)
    status[bad] = S.INFEASIBLE
    repaired = np.zeros(B, dtype=bool)
    cov_dev = None
    if pb.cov is not None:
        rep = check_and_repair(xp.asarray(pb.cov), cfg.psd_repair, cfg.eig_floor, ops)
        rej = rep.rejected & (status == S.RUNNING)
        status[rej] = S.REJECTED
        for b in np.nonzero(rej)[0]:
            messages[b] = rep.messages[b]
        repaired = rep.repaired
        cov_dev = rep.cov
    todo = np.nonzero(status == S.RUNNING)[0]
    done = B - len(todo)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        if should_stop is not None and should_stop():
            status[todo[start:]] = S.CANCELLED
            break
        if len(chunk) == B:  # the whole batch: no copies of the covariances
            sub = pb if cov_dev is None else replace(pb, cov=cov_dev)
        else:
            sub = pb.take(chunk)
            if cov_dev is not None:
                sub = replace(sub, cov=cov_dev[xp.asarray(chunk)])
        if pb.objective == "risk_parity":
            assert sub.cov is not None
            budgets = xp.asarray(sub.risk_budget) if sub.risk_budget is not None else xp.ones((len(chunk), n))
            w, st, it = risk_parity(sub.cov, budgets, cfg.rp_tol, cfg.rp_max_iter, ops)
            w, st, it = to_host(w), to_host(st), to_host(it)
        else:
            low = lower(sub, xp)
            res = run_admm(scale(low.qp), cfg, ops, should_stop)
            w = to_host(low.weights(res.x, xp))
            st, it = to_host(res.status), to_host(res.iterations)
            for j, names in enumerate(res.conflicts):
                if names:
                    conflicts[chunk[j]] = names
        for j, b in enumerate(chunk.tolist()):
            status[b] = st[j]
            iters[b] = it[j]
            if st[j] in S.HAS_WEIGHTS:
                weights[b] = w[j]
            elif st[j] == S.INFEASIBLE:
                messages[b] = "primal infeasibility certificate: " + ", ".join(conflicts[b])
        done += len(chunk)
        if progress is not None:
            progress(done, B)
    for b in np.nonzero(status == S.MAX_ITER)[0]:
        messages[b] = f"iteration limit ({cfg.max_iter}) reached before the stopping rule"
    for b in np.nonzero(status == S.CONVERGED)[0]:
        messages[b] = "ADMM tolerance met; not polished" if not cfg.polish else \
            "ADMM tolerance met; polish could not verify a KKT point"
    for b in np.nonzero(status == S.CANCELLED)[0]:
        messages[b] = "cancelled"
    variance = None
    if cov_dev is not None:  # w'Sigma w where the covariances are (no copy back from a GPU)
        wd = xp.asarray(np.nan_to_num(weights))
        variance = to_host(xp.einsum("bi,bij,bj->b", wd, cov_dev, wd))
    obj, var, ret, viol = evaluate(pb, weights, variance)
    return BatchResult(weights, np.array([S.NAMES[int(s)] for s in status]), obj, var, ret, iters,
                       viol, conflicts, messages, repaired)
