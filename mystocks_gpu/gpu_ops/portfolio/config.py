"""``SolverConfig``: the frozen, validated configuration of the batched portfolio optimiser.

Every field changes what :func:`~mystocks_gpu.gpu_ops.portfolio.solve.solve_batch` does; the
unit tests check each one. Residuals and tolerances are measured on the *scaled* problem (the
objective divided by the mean of the covariance diagonal, so its mean curvature is 1; each general
constraint row divided by its largest absolute coefficient), which makes them comparable across
problems whose variances differ by orders of magnitude. See ``admm.py`` for the stopping rule and
``polish.py`` for the acceptance test of a polished solution.
"""

from __future__ import annotations

from dataclasses import dataclass

from mystocks_gpu.gpu_ops.portfolio.exceptions import SolverConfigError

PSD_REPAIRS = ("clip", "reject")
FACTOR_DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class SolverConfig:
    """Settings of the batched ADMM solver, its polish step, the covariance check and batching.

    ADMM (OSQP-style, relaxed, per-problem adaptive rho):

    - ``eps_abs`` / ``eps_rel`` (1e-6 / 1e-6): stopping rule ``r_prim <= eps_abs + eps_rel *
      max(|Ax|, |z|)`` and ``r_dual <= eps_abs + eps_rel * max(|Px|, |A'y|, |q|)`` (inf-norms,
      scaled problem). A problem that meets it is polished once more and then stops.
    - ``eps_prim_inf`` (1e-6): primal infeasibility certificate threshold on ``dy = y_k - y_k-1``.
    - ``max_iter`` (10000): ADMM iterations per problem; then the status is ``max_iter`` (QPs
      are usually polished within 15-200 iterations; min-CVaR LPs can need thousands).
    - ``rho`` (2.0): initial step size (equality rows use ``1e3 * rho``).
    - ``rho_quadratic`` (0.1; None = ``rho``): the initial step size instead of ``rho`` for the
      problems of a batch with no linear objective term (``q = 0``: min-variance, max-Sharpe,
      target-return mean-variance). bench/portfolio.py, 500 min-variance problems of 200 assets:
      ADMM iterations p50/p99 30/40 at 2.0 -> 15/15 at 0.1, CPU time ~20% lower; mean-variance
      (``q = -mu``) needs the larger step (p50 ~200 at 2.0, ~630 at 0.1).
    - ``ball_rho_factor`` (10.0): the copies ``x - c`` of an L1 ball (turnover, leverage) use
      ``ball_rho_factor * rho``. At a turnover-constrained optimum most assets usually sit at
      the ball's kinks (``w_i = w0_i``), which behave like equalities; the larger step there
      makes ADMM identify them sooner (bench/portfolio.py mean-variance, 200 assets, rho 2:
      iterations p50 ~300 -> ~140 with 10 instead of 1).
    - ``sigma`` (1e-6): proximal regularisation of the x-update.
    - ``alpha`` (1.6): over-relaxation, in (0, 2).
    - ``adaptive_rho`` (True), ``adaptive_rho_interval`` (25 iterations),
      ``adaptive_rho_tolerance`` (5.0): rho is rescaled by ``sqrt(r_prim_rel / r_dual_rel)`` every
      interval and the problem's matrix refactored only when that changes rho by more than the
      tolerance factor.
    - ``check_every`` (10): iterations between termination / infeasibility / polish checks.
      With ``ipm_refine`` the first polish try comes at the first check, and ten ADMM
      iterations give a better active-set guess than five (bench/portfolio.py, 300 x 200, CPU
      ms/problem: mean-variance 7.6 -> 4.7, min-variance 4.3 -> 3.7).
    - ``factor_dtype`` ("float64"): precision of the x-update factor on the CPU; "float32" halves
      the memory traffic per iteration (the polish step is always float64).

    Polish (active-set KKT solve, refined by primal-dual active-set corrections):

    - ``polish`` (True): without it, a converged problem returns the ADMM iterate (status
      ``converged``) instead of an exact KKT point (status ``optimal``).
    - ``polish_from`` (0.1): polish is tried at every check once both scaled residuals are below
      this level (and always at convergence). With ``ipm_refine`` an early try pays: the
      subspace IPM turns a rough iterate into the right active set (bench/portfolio.py, 200
      assets: polished at the first check for ~95% of the problems; 1e-3 was the
      setting without it, where min-variance polished at ~15 and mean-variance at ~150).
    - ``polish_rounds`` (4): active-set corrections per polish attempt.
    - ``polish_refine_iter`` (3): iterative-refinement steps of the regularised KKT solve.
    - ``polish_delta`` (1e-10): KKT regularisation.
    - ``polish_tol`` (1e-9): acceptance: largest primal violation, dual-sign violation and
      stationarity residual of the polished point (scaled problem).

    Active-set refinement (``subspace_ipm.py``), for the problems whose polish from ADMM's own
    active-set guess fails:

    - ``ipm_refine`` (True): solve the problem restricted to its uncertain coordinates exactly by
      an interior-point method and polish from that solution's active set (off: ADMM must
      identify the active set itself; bench/portfolio.py mean-variance with turnover: iterations
      p50 ~150 -> 10, the first check).
    - ``ipm_extra`` (16): coordinates in the subspace besides those the guess leaves free (the
      least certain ones by their ADMM multiplier margins).
    - ``ipm_max_iter`` (30): predictor-corrector iterations per restricted solve (it stops at
      residuals <= ``polish_tol`` and complementarity <= ``1e-3 * polish_tol``, ~10-17).
    - ``ipm_rounds`` (3): restricted solves per attempt: after each, fixed coordinates whose
      multipliers are wrong (at most ``max(ipm_extra, 1)`` per problem) join the subspace.

    Covariance:

    - ``psd_repair`` ("clip"): a covariance whose smallest eigenvalue is below
      ``eig_floor * mean(diag)`` is repaired by clipping its eigenvalues to that floor ("clip"),
      or the problem is rejected with the eigenvalue ("reject"). Non-finite or asymmetric
      matrices are always rejected.
    - ``eig_floor`` (1e-10): the floor, relative to the mean variance.

    Risk parity (batched damped Newton on Spinu's convex problem):

    - ``rp_tol`` (1e-12): stop when the squared Newton decrement / 2 is below this.
    - ``rp_max_iter`` (100).

    Batching: ``batch_size`` (4096) problems at most per array program (memory bound);
    ``backend`` ("auto", "cpu" or "gpu") as in :func:`mystocks_gpu.gpu_ops.backend.select`.
    """

    eps_abs: float = 1e-6
    eps_rel: float = 1e-6
    eps_prim_inf: float = 1e-6
    max_iter: int = 10000
    rho: float = 2.0
    rho_quadratic: float | None = 0.1
    ball_rho_factor: float = 10.0
    sigma: float = 1e-6
    alpha: float = 1.6
    adaptive_rho: bool = True
    adaptive_rho_interval: int = 25
    adaptive_rho_tolerance: float = 5.0
    check_every: int = 10
    factor_dtype: str = "float64"
    polish: bool = True
    polish_from: float = 1e-1
    polish_rounds: int = 4
    polish_refine_iter: int = 3
    polish_delta: float = 1e-10
    polish_tol: float = 1e-9
    ipm_refine: bool = True
    ipm_extra: int = 16
    ipm_max_iter: int = 30
    ipm_rounds: int = 3
    psd_repair: str = "clip"
    eig_floor: float = 1e-10
    rp_tol: float = 1e-12
    rp_max_iter: int = 100
    batch_size: int = 4096
    backend: str = "auto"

    def __post_init__(self) -> None:
        positive = ("eps_prim_inf", "rho", "ball_rho_factor", "sigma", "adaptive_rho_tolerance", "polish_from",
                    "polish_delta", "polish_tol", "eig_floor", "rp_tol")
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
                raise SolverConfigError(f"SolverConfig.{name} must be a finite number > 0, got {v!r}")
        rq = self.rho_quadratic
        if rq is not None and not (isinstance(rq, (int, float)) and 0 < rq < float("inf")):
            raise SolverConfigError(f"SolverConfig.rho_quadratic must be None or a finite number > 0, got {rq!r}")
        for name in ("eps_abs", "eps_rel"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise SolverConfigError(f"SolverConfig.{name} must be in [0, 1), got {v!r}")
        if self.eps_abs == 0 and self.eps_rel == 0:
            raise SolverConfigError("SolverConfig: eps_abs and eps_rel cannot both be 0")
        for name in ("max_iter", "adaptive_rho_interval", "check_every", "rp_max_iter", "batch_size",
                     "ipm_max_iter", "ipm_rounds"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise SolverConfigError(f"SolverConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("polish_rounds", "polish_refine_iter", "ipm_extra"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise SolverConfigError(f"SolverConfig.{name} must be an int >= 0, got {v!r}")
        if not 0 < self.alpha < 2:
            raise SolverConfigError(f"SolverConfig.alpha must be in (0, 2), got {self.alpha!r}")
        if self.adaptive_rho_tolerance <= 1:
            raise SolverConfigError("SolverConfig.adaptive_rho_tolerance must be > 1")
        if self.psd_repair not in PSD_REPAIRS:
            raise SolverConfigError(f"SolverConfig.psd_repair must be one of {PSD_REPAIRS}, "
                                    f"got {self.psd_repair!r}")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise SolverConfigError(f"SolverConfig.factor_dtype must be one of {FACTOR_DTYPES}, "
                                    f"got {self.factor_dtype!r}")
        if self.backend not in ("auto", "cpu", "gpu"):
            raise SolverConfigError(f"SolverConfig.backend must be auto, cpu or gpu, got {self.backend!r}")
        for name in ("adaptive_rho", "polish", "ipm_refine"):
            if not isinstance(getattr(self, name), bool):
                raise SolverConfigError(f"SolverConfig.{name} must be a bool")
