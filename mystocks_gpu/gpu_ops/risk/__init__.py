"""Streaming risk maths, batched over accounts, as array programs on NumPy (CPU) or CuPy (GPU).

Public API (what a stream processor calls; pure, no I/O)::

    risk_step(prices: PriceBatch, states: StateBatch, cfg: RiskConfig, xp=numpy)
        -> (metrics: dict[str, array over accounts], new_states: StateBatch, breaches: list[Breach])

The processor keeps one :class:`AccountState` per account key (changelog value:
``AccountState.to_bytes()``, restored with ``AccountState.from_bytes``; format in ``state.py``),
stacks the accounts of a partition with ``StateBatch.stack(states, xp)``, runs ``risk_step`` per
micro-batch of prices (symbols as dense int32 codes, ``ts`` in ns) and ``unstack()``s the result
to write the changed accounts. A new positions record becomes
``state.with_positions(symbols, qty, cost, sector, limits, capital)`` (history of retained symbols
kept) or ``AccountState.new(...)``.

- ``ewma.py``: RiskMetrics EWMA covariance (λ = 0.94), incremental; which pandas call equals it.
- ``measures.py``: exposures (gross / net / by symbol / by sector), mark-to-market P&L (day,
  since inception), parametric VaR / CVaR (normal, any confidence, sqrt(h) horizon), historical
  VaR / CVaR, marginal and component VaR (Euler), max drawdown.
- ``limits.py``: limit checks and "once per breach" alerts (pure function of previous flags).
- ``step.py``: the step, its stale-price / price-gap policy and the metric names.
- ``config.py``: ``RiskConfig`` and the limit defaults (missing limit = +inf = off).
"""

from mystocks_gpu.gpu_ops.risk.account_state import AccountState, StateBatch
from mystocks_gpu.gpu_ops.risk.config import DEFAULT_LIMITS, LIMIT_NAMES, RiskConfig
from mystocks_gpu.gpu_ops.risk.ewma import ewma_cov, ewma_cov_update
from mystocks_gpu.gpu_ops.risk.exceptions import RiskConfigError, RiskInputError
from mystocks_gpu.gpu_ops.risk.limits import Breach, alerts_once, breach_records, check_limits
from mystocks_gpu.gpu_ops.risk.measures import (
    euler_var,
    exposures,
    historical_var,
    historical_var_levels,
    max_drawdown,
    parametric_var,
    pnl,
)
from mystocks_gpu.gpu_ops.risk.step import PriceBatch, risk_step

__all__ = ["DEFAULT_LIMITS", "LIMIT_NAMES", "AccountState", "Breach", "PriceBatch", "RiskConfig",
           "RiskConfigError", "RiskInputError", "StateBatch", "alerts_once", "breach_records",
           "check_limits", "euler_var", "ewma_cov", "ewma_cov_update", "exposures",
           "historical_var", "historical_var_levels", "max_drawdown", "parametric_var", "pnl", "risk_step"]
