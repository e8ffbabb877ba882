"""Per-problem solver statuses (int8 codes in arrays, names in results)."""

from __future__ import annotations

RUNNING = 0
OPTIMAL = 1  # polished: a verified KKT point (the tolerances of the tests hold)
CONVERGED = 2  # ADMM stopping rule met but not polished (polish off, or it failed)
INFEASIBLE = 3  # proven infeasible (pre-check or ADMM certificate); no weights
MAX_ITER = 4  # iteration limit reached; weights are the last iterate
CANCELLED = 5  # should_stop() returned True before the problem finished; no weights
REJECTED = 6  # bad input (covariance rejected); no weights
NUMERICAL = 7  # a factorisation failed; no weights

NAMES: dict[int, str] = {
    RUNNING: "running",
    OPTIMAL: "optimal",
    CONVERGED: "converged",
    INFEASIBLE: "infeasible",
    MAX_ITER: "max_iter",
    CANCELLED: "cancelled",
    REJECTED: "rejected",
    NUMERICAL: "numerical_error",
}

#: statuses whose weights are returned (others give NaN weights)
HAS_WEIGHTS = frozenset({OPTIMAL, CONVERGED, MAX_ITER})
