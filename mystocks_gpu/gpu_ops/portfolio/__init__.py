"""Batched portfolio optimisation: many problems solved at once as array programs, CPU (numba /
NumPy) or GPU (CuPy), with results equal to a convex solver (CVXPY + Clarabel).

Public API (what a job runner calls)::

    solve_batch(problems: Sequence[PortfolioProblem], config: SolverConfig | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> list[PortfolioResult]
    solve_stacked(batch: ProblemBatch, config=None, progress=None, should_stop=None) -> BatchResult

``solve_batch`` groups problems by objective and constraint structure and solves each group as
one batch (chunks of ``config.batch_size``); ``progress(done, total)`` is called after each chunk;
``should_stop()`` is polled at every ADMM check and between chunks (unfinished problems come back
``cancelled``). Results come back in input order. Nothing here does I/O or Kafka.

- Problems and objective conventions: ``problem.py`` (min-variance, mean-variance with risk
  aversion or target return, max-Sharpe, risk parity / budgeting, min-CVaR; budget, bounds /
  long-only, max weight, leverage, turnover, group bounds).
- Results: ``result.py`` (status ``optimal`` = a verified KKT point; ``infeasible`` with the
  conflicting constraints and never weights; ``rejected`` for a bad covariance).
- Solver: ``qp.py`` (canonical batched QP), ``admm.py`` (batched ADMM, stopping rule, adaptive
  rho, infeasibility certificate), ``polish.py`` (active-set KKT polish), ``subspace_ipm.py``
  (polish's active set from an exact interior-point solve on the uncertain coordinates;
  ``restricted_ipm.py`` the batched interior-point method),
  ``linalg_cpu.py`` /
  ``linalg_xp.py`` (CPU twin / GPU array programs), ``l1.py`` (L1-ball projection),
  ``risk_parity.py`` (batched Newton), ``feasibility.py`` (decidable infeasibility), ``psd.py``
  (covariance checks and eigenvalue-clipping repair), ``config.py`` (``SolverConfig``).
- Estimators: ``estimators.py`` (sample, Ledoit-Wolf == scikit-learn, EWMA, historical mean).
- Rebalancing backtest core: ``rebalance.py`` (``run_rebalance(prices, rebalance_idx,
  RebalanceSpec, config) -> RebalanceResult`` with weights per date, equity, turnover, costs).
"""

from mystocks_gpu.gpu_ops.portfolio.config import SolverConfig
from mystocks_gpu.gpu_ops.portfolio.exceptions import PortfolioInputError, SolverConfigError
from mystocks_gpu.gpu_ops.portfolio.problem import (
    OBJECTIVES,
    PortfolioProblem,
    ProblemBatch,
    stack_problems,
)
from mystocks_gpu.gpu_ops.portfolio.rebalance import RebalanceResult, RebalanceSpec, run_rebalance
from mystocks_gpu.gpu_ops.portfolio.result import BatchResult, PortfolioResult
from mystocks_gpu.gpu_ops.portfolio.solve import solve_batch, solve_stacked

__all__ = ["OBJECTIVES", "BatchResult", "PortfolioInputError",
           "PortfolioProblem", "PortfolioResult", "ProblemBatch", "RebalanceResult",
           "RebalanceSpec", "SolverConfig", "SolverConfigError", "run_rebalance", "solve_batch",
           "solve_stacked", "stack_problems"]
