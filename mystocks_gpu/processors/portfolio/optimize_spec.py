"""The spec of an ``optimize`` job (:class:`OptimizeSpec`): data, estimators, objective,
constraints, the batch to solve (one portfolio, an efficient frontier, or a rebalancing backtest),
and the solver settings. Strict: unknown fields, wrong types and inconsistent settings are
rejected with the reason before anything runs.

Units: prices and returns are per bar of ``bar_topic`` (daily bars: daily returns); the
covariance and expected returns are per bar; ``periods_per_year`` only annualises what is
printed and plotted (volatility, return, Sharpe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.processors.job_kind import MIB, JobSpec

MODES = ("single", "frontier", "rebalance", "accounts")
ESTIMATORS = ("sample", "ledoit_wolf", "ewma")
EXPECTED_RETURNS = ("historical", "signal")
_OBJECTIVES = ("min_variance", "mean_variance", "max_sharpe", "risk_parity", "min_cvar")


@dataclass(frozen=True)
class OptimizeSpec(JobSpec):
    """An ``optimize`` job.

    Data: closes of ``universe`` (>= 2 symbols) from ``bar_topic`` over ``[start, end)`` (ns,
    either may be None). Price gaps (stale price policy): a symbol without a bar at a bar time
    keeps its last close (a zero return for it in that period); bar times before every symbol has
    had a bar are dropped. ``lookback`` (bars of returns, None = all) ends at the last bar
    (``single``/``frontier``) or at each rebalance date (``rebalance``, required there).

    Estimates: covariance by ``estimator`` (``sample``, ``ledoit_wolf`` = scikit-learn's, or
    ``ewma`` with decay ``ewma_lambda``); expected returns ``historical`` (mean of the window) or
    ``signal``: ``signal_scale`` x the last value of ``signal_column`` at or before the last bar,
    per symbol, read from ``signal_topic`` (feature vectors or bars, e.g. a ``signals.*`` topic);
    a symbol without a signal value is an error. ``min_cvar`` uses the window's returns as
    equally likely scenarios.

    Objective (``gpu_ops.portfolio.problem`` conventions): ``objective`` with ``risk_aversion``,
    ``target_return`` (per bar), ``risk_free`` (per bar), ``cvar_beta``.

    Constraints: ``budget`` (sum of weights), ``long_only``, per-asset ``lower`` / ``upper``,
    ``max_weight`` (|w_i|), ``leverage`` (sum |w_i|), ``turnover`` (sum |w - current|, with
    ``current_weights`` {symbol: weight}, missing symbols 0), sector bounds: ``sectors``
    {symbol: sector} and ``sector_bounds`` {sector: [lower, upper]}.

    Batch (``mode``): ``single`` = one portfolio; ``frontier`` = ``frontier_points`` mean-variance
    portfolios with risk aversions spaced geometrically over ``frontier_risk_aversion`` [lo, hi],
    solved as one batch; ``rebalance`` = the optimiser at every ``rebalance_every``-th bar from
    ``lookback`` on, the portfolio simulated between dates with ``cost_rate`` x traded value as
    cost (dates are solved as one batch unless ``turnover`` links them); ``accounts`` = one
    portfolio per account of ``positions_topic`` (``accounts``, or every open account when None)
    as of the last bar, solved as one batch, each against its own current weights (``turnover``)
    and limits, with the trades that reach it (:mod:`~mystocks_gpu.processors.portfolio.accounts`).

    ``solver``: :class:`~mystocks_gpu.gpu_ops.portfolio.SolverConfig` fields (tolerances,
    iterations, ``psd_repair`` "clip"/"reject"...; ``backend`` comes from the worker's device).
    ``top_weights``: weights per portfolio printed by ``submit --wait``.
    """

    universe: list[str]
    mode: str = "single"
    bar_topic: str = "md.bars.1d"
    start: int | None = None
    end: int | None = None
    objective: str = "min_variance"
    estimator: str = "ledoit_wolf"
    ewma_lambda: float = 0.94
    lookback: int | None = None
    expected_returns: str = "historical"
    signal_topic: str | None = None
    signal_column: str | None = None
    signal_scale: float = 1.0
    risk_aversion: float = 1.0
    target_return: float | None = None
    risk_free: float = 0.0
    cvar_beta: float = 0.95
    budget: float = 1.0
    long_only: bool = True
    lower: float | None = None
    upper: float | None = None
    max_weight: float | None = None
    leverage: float | None = None
    turnover: float | None = None
    current_weights: dict[str, float] | None = None
    sectors: dict[str, str] | None = None
    sector_bounds: dict[str, list[float]] | None = None
    frontier_points: int = 20
    frontier_risk_aversion: list[float] = field(default_factory=lambda: [0.5, 500.0])
    rebalance_every: int = 20
    positions_topic: str = "positions"
    accounts: list[str] | None = None
    cost_rate: float = 0.001
    periods_per_year: float = 252.0
    solver: dict[str, Any] = field(default_factory=dict)
    top_weights: int = 10

    def validate(self) -> None:  # noqa: C901 - one check per field, each with its reason
        def bad(msg: str) -> JobSpecError:
            return JobSpecError(f"optimize: {msg}")

        if len(self.universe) < 2 or len(set(self.universe)) != len(self.universe):
            raise bad("universe must list at least 2 distinct symbols")
        if self.mode not in MODES:
            raise bad(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.objective not in _OBJECTIVES:
            raise bad(f"unknown objective {self.objective!r} (known: {', '.join(_OBJECTIVES)})")
        if self.estimator not in ESTIMATORS:
            raise bad(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.expected_returns not in EXPECTED_RETURNS:
            raise bad(f"expected_returns must be one of {EXPECTED_RETURNS}, got {self.expected_returns!r}")
        if self.expected_returns == "signal" and not (self.signal_topic and self.signal_column):
            raise bad("expected_returns 'signal' needs signal_topic and signal_column")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise bad(f"start ({self.start}) must be before end ({self.end})")
        if not 0 < self.ewma_lambda < 1:
            raise bad(f"ewma_lambda must be in (0, 1), got {self.ewma_lambda}")
        if self.lookback is not None and self.lookback < 2:
            raise bad(f"lookback must be >= 2 bars, got {self.lookback}")
        if self.mode == "rebalance" and self.lookback is None:
            raise bad("mode 'rebalance' needs a lookback (bars of returns per estimate)")
        if self.mode == "frontier":
            if self.objective != "mean_variance":
                raise bad("mode 'frontier' traces mean_variance portfolios: set objective 'mean_variance'")
            lo_hi = self.frontier_risk_aversion
            if len(lo_hi) != 2 or not 0 < lo_hi[0] < lo_hi[1] or not math.isfinite(lo_hi[1]):
                raise bad(f"frontier_risk_aversion must be [lo, hi] with 0 < lo < hi, got {lo_hi}")
            if not 2 <= self.frontier_points <= 10_000:
                raise bad(f"frontier_points must be in [2, 10000], got {self.frontier_points}")
        if self.rebalance_every < 1:
            raise bad(f"rebalance_every must be >= 1 bar, got {self.rebalance_every}")
        if not 0 <= self.cost_rate < 1:
            raise bad(f"cost_rate must be in [0, 1), got {self.cost_rate}")
        if not 0 < self.cvar_beta < 1:
            raise bad(f"cvar_beta must be in (0, 1), got {self.cvar_beta}")
        if self.risk_aversion <= 0 or self.periods_per_year <= 0 or self.top_weights < 0:
            raise bad("risk_aversion and periods_per_year must be > 0, top_weights >= 0")
        for name in ("max_weight", "leverage", "turnover"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise bad(f"{name} must be > 0, got {v}")
        if self.turnover is not None and self.mode not in ("rebalance", "accounts") and self.current_weights is None:
            raise bad("turnover needs current_weights (the rebalancing backtest uses its drifted weights, "
                      "mode 'accounts' each account's)")
        if self.mode == "accounts":
            if self.current_weights is not None:
                raise bad("mode 'accounts' takes each account's current weights from its positions: "
                          "drop current_weights")
            if self.accounts is not None and (not self.accounts or len(set(self.accounts)) != len(self.accounts)
                                              or not all(isinstance(a, str) and a for a in self.accounts)):
                raise bad("accounts must be a non-empty list of distinct account ids (or null = every account)")
            if not self.positions_topic:
                raise bad("positions_topic must not be empty")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
               for v in (self.current_weights or {}).values()):
            raise bad("current_weights must map symbols to finite numbers")
        unknown = sorted(set(self.current_weights or {}) - set(self.universe))
        if unknown:
            raise bad(f"current_weights name symbols outside the universe: {', '.join(unknown)}")
        if (self.sectors is None) != (self.sector_bounds is None):
            raise bad("sector bounds need both sectors {symbol: sector} and sector_bounds {sector: [lo, hi]}")
        if self.sectors is not None and self.sector_bounds is not None:
            missing = sorted(set(self.sector_bounds) - set(self.sectors.values()))
            if missing:
                raise bad(f"sector_bounds name sectors no symbol belongs to: {', '.join(missing)}")
            for sec, b in self.sector_bounds.items():
                if not (isinstance(b, (list, tuple)) and len(b) == 2
                        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b) and b[0] <= b[1]):
                    raise bad(f"sector_bounds[{sec!r}] must be [lower, upper] with lower <= upper, got {b}")
        if self.mode == "rebalance" and self.objective == "min_cvar":
            raise bad("mode 'rebalance' re-estimates covariance and mean only: min_cvar is supported in 'single'")
        if self.expected_returns == "signal" and self.mode == "rebalance":
            raise bad("a signal as expected returns is supported in modes 'single' and 'frontier'")
        self.solver_config()

    def solver_config(self, backend: str = "auto") -> Any:
        """The :class:`SolverConfig` of ``solver`` (its errors name the field) on ``backend``."""
        from mystocks_gpu.gpu_ops.portfolio import SolverConfig, SolverConfigError

        if "backend" in self.solver:
            raise JobSpecError("optimize: solver.backend is set by the worker's device, not the spec")
        try:
            return SolverConfig(**self.solver, backend=backend)
        except TypeError as exc:
            raise JobSpecError(f"optimize: solver: {exc}") from None
        except SolverConfigError as exc:
            raise JobSpecError(f"optimize: solver: {exc}") from None

    def n_problems(self) -> int:
        """Problems in the batch of ``single``/``frontier`` (rebalance: known after loading)."""
        if self.mode == "accounts":
            return len(self.accounts) if self.accounts else 1
        return self.frontier_points if self.mode == "frontier" else 1

    def memory_bytes(self) -> int:
        """Covariances of the batch (8 bytes x n^2 per problem) x 8 for the solver's work arrays."""
        n = len(self.universe)
        return max(64 * MIB, 8 * 8 * n * n * max(self.n_problems(), 1))

    def data_range(self) -> dict[str, Any]:
        return {"topic": self.bar_topic, "start": self.start, "end": self.end, "universe": list(self.universe),
                "signal_topic": self.signal_topic, "signal_column": self.signal_column,
                **({"positions_topic": self.positions_topic} if self.mode == "accounts" else {})}

    def group_matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]] | None:
        """``(groups (g, n), lower (g,), upper (g,), names)`` of the sector bounds, or None."""
        if self.sectors is None or self.sector_bounds is None:
            return None
        names = tuple(sorted(self.sector_bounds))
        g = np.array([[1.0 if self.sectors.get(s) == sec else 0.0 for s in self.universe] for sec in names])
        lo = np.array([float(self.sector_bounds[sec][0]) for sec in names])
        hi = np.array([float(self.sector_bounds[sec][1]) for sec in names])
        return g, lo, hi, tuple(f"sector:{sec}" for sec in names)
