"""Results of the optimiser: per batch (:class:`BatchResult`, arrays) and per problem
(:class:`PortfolioResult`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PortfolioResult:
    """One problem's outcome.

    ``status``: ``optimal`` (verified KKT point), ``converged`` (ADMM tolerance met, not
    polished), ``max_iter``, ``infeasible``, ``rejected``, ``cancelled`` or ``numerical_error``;
    ``weights`` is None unless the status is optimal, converged or max_iter. ``objective`` in
    the units of ``problem.py``'s conventions; ``variance`` = ``w'Sigma w`` and
    ``expected_return`` = ``mu'w`` per period (NaN where not defined); ``violation`` = largest
    constraint violation in the problem's units; ``conflicts`` = the constraints named by an
    infeasibility proof; ``message`` = a human-readable reason for non-optimal statuses;
    ``covariance_repaired`` = the covariance was clipped to PSD first."""

    status: str
    weights: np.ndarray | None
    objective: float
    variance: float
    expected_return: float
    iterations: int
    violation: float
    conflicts: tuple[str, ...]
    message: str
    covariance_repaired: bool


@dataclass(frozen=True)
class BatchResult:
    """The outcomes of ``B`` problems as arrays (host NumPy): ``weights (B, n)`` (NaN rows where
    there are none), ``status`` (B,) names, and the other fields of :class:`PortfolioResult`."""

    weights: np.ndarray
    status: np.ndarray  # (B,) str
    objective: np.ndarray
    variance: np.ndarray
    expected_return: np.ndarray
    iterations: np.ndarray
    violation: np.ndarray
    conflicts: list[tuple[str, ...]]
    messages: list[str]
    covariance_repaired: np.ndarray

    def __len__(self) -> int:
        return int(self.status.shape[0])

    def __getitem__(self, i: int) -> PortfolioResult:
        w = self.weights[i]
        return PortfolioResult(
            status=str(self.status[i]),
            weights=None if np.isnan(w).all() else w.copy(),
            objective=float(self.objective[i]),
            variance=float(self.variance[i]),
            expected_return=float(self.expected_return[i]),
            iterations=int(self.iterations[i]),
            violation=float(self.violation[i]),
            conflicts=self.conflicts[i],
            message=self.messages[i],
            covariance_repaired=bool(self.covariance_repaired[i]),
        )

    def results(self) -> list[PortfolioResult]:
        return [self[i] for i in range(len(self))]
