"""``RiskConfig``: the frozen, validated settings of the risk engine, and the limit defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mystocks_gpu.gpu_ops.risk.exceptions import RiskConfigError

NS_PER_DAY = 86_400_000_000_000
#: limit kinds, in the column order of every limit / breach array
LIMIT_NAMES: tuple[str, ...] = ("var", "gross_exposure", "concentration", "drawdown")
#: defaults for limits an account does not set: +inf = never breached
DEFAULT_LIMITS: tuple[float, ...] = (math.inf, math.inf, math.inf, math.inf)


@dataclass(frozen=True)
class RiskConfig:
    """Settings of :func:`~mystocks_gpu.gpu_ops.risk.step.risk_step` (each one is tested):

    - ``lam`` (0.94): RiskMetrics EWMA decay per return interval.
    - ``demean`` (False): zero-mean RiskMetrics recursion, or pandas' demeaned ``ewm().cov()``.
    - ``confidences`` ((0.95, 0.99)): VaR/CVaR levels reported (``var_95``, ``cvar_99``, ...).
    - ``horizon`` (1.0): VaR horizon in return intervals (scaled by ``sqrt(horizon)``).
    - ``window`` (250): return vectors kept for historical VaR/CVaR.
    - ``returns`` ("simple"): "simple" ``p1/p0 - 1`` or "log" ``ln(p1/p0)``.
    - ``interval_ns`` (1 day): a return is taken each time a price's ``ts // interval_ns``
      advances (from the previous interval's last prices; a symbol without a new price in the
      interval has a zero return: stale prices are carried forward).
    - ``day_ns`` (1 day): day boundaries for the day P&L (reference = the last price of the
      previous day).
    - ``min_obs`` (2): EWMA updates needed before parametric VaR is reported (NaN before).
    - ``limit_confidence`` (0.99) and ``limit_var`` ("parametric" or "historical"): the VaR that
      the ``var`` limit is checked against.
    - ``n_sectors`` (16): sector codes ``0..n_sectors-1`` reported in ``by_sector``.
    """

    lam: float = 0.94
    demean: bool = False
    confidences: tuple[float, ...] = (0.95, 0.99)
    horizon: float = 1.0
    window: int = 250
    returns: str = "simple"
    interval_ns: int = NS_PER_DAY
    day_ns: int = NS_PER_DAY
    min_obs: int = 2
    limit_confidence: float = 0.99
    limit_var: str = "parametric"
    n_sectors: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.lam < 1:
            raise RiskConfigError(f"RiskConfig.lam must be in (0, 1), got {self.lam!r}")
        if not self.confidences or not all(0.5 <= c < 1 for c in self.confidences):
            raise RiskConfigError("RiskConfig.confidences must be levels in [0.5, 1)")
        if not 0.5 <= self.limit_confidence < 1:
            raise RiskConfigError("RiskConfig.limit_confidence must be in [0.5, 1)")
        if not (self.horizon > 0 and math.isfinite(self.horizon)):
            raise RiskConfigError("RiskConfig.horizon must be > 0")
        for name in ("window", "interval_ns", "day_ns", "min_obs", "n_sectors"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise RiskConfigError(f"RiskConfig.{name} must be an int >= 1, got {v!r}")
        if self.returns not in ("simple", "log"):
            raise RiskConfigError("RiskConfig.returns must be 'simple' or 'log'")
        if self.limit_var not in ("parametric", "historical"):
            raise RiskConfigError("RiskConfig.limit_var must be 'parametric' or 'historical'")
        if not isinstance(self.demean, bool):
            raise RiskConfigError("RiskConfig.demean must be a bool")
