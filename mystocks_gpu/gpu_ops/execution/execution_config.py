"""``ExecutionConfig``: the frozen, validated settings of the execution models.

Units used throughout :mod:`mystocks_gpu.gpu_ops.execution`:

* time: nanoseconds since the Unix epoch for instants (``start_ns``, ``end_ns``), seconds for
  durations inside the models (slice length ``tau``);
* prices and costs: currency per share / currency; quantities: shares (ints);
* volatility: :class:`~mystocks_gpu.gpu_ops.execution.market_params.MarketParams` stores
  ``sigma`` as the **daily** standard deviation of log returns (a fraction, 0.02 = 2 %); the
  Almgren-Chriss model uses the absolute price volatility per sqrt(second)
  ``sigma_abs = sigma * price / sqrt(day_seconds)`` (currency / share / sqrt(s)), converted
  explicitly in one place (``market_params.derive_constants``);
* a "day" is ``day_seconds`` of trading (default 6.5 h = 23 400 s), the period over which ADV
  trades and daily volatility accrues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mystocks_gpu.gpu_ops.execution.exceptions import ExecutionConfigError

NS_PER_SECOND = 1_000_000_000
#: largest number of child slices of one parent order (the rounding guarantee holds below it)
MAX_SLICES_LIMIT = 10_000
KERNELS = ("numba", "python")


@dataclass(frozen=True)
class ExecutionConfig:
    """Settings of the schedulers, the cost model and the simulator.

    Attributes:
        day_seconds: trading seconds per day (ADV and daily sigma accrue over them);
            default 23 400 (6.5 h).
        slice_ns: target child-slice length in ns; an order of horizon H gets
            ``N = min(H // slice_ns, max_slices)`` equal slices of ``H / N``; default 60 s.
            A horizon shorter than one slice is rejected.
        max_slices: cap on N (longer horizons get longer slices); default 390, at most 10 000.
        risk_aversion: default Almgren-Chriss lambda (1 / currency) for orders that give none;
            default 1e-6.
        max_participation: default cap on each slice's share of the expected market volume,
            in (0, 1]; default 0.25.
        pov_rate: default target participation of the POV strategy, in (0, 1] (capped by the
            order's max participation); default 0.10.
        sqrt_impact_y: Y of the square-root impact model
            ``cost per share = Y * sigma_daily * sqrt(Q / ADV) * price``; default 1.0.
        eta_participation: calibrates the temporary impact eta when a symbol gives none
            (Almgren-Chriss 2000): trading at ``eta_participation * ADV`` per day costs one
            bid-ask spread per share, ``eta = spread * day_seconds / (eta_participation * ADV)``
            (currency * s / share^2); default 0.01.
        gamma_fraction: calibrates the permanent impact gamma when a symbol gives none: trading
            ``gamma_fraction * ADV`` shares moves the price by one spread,
            ``gamma = spread / (gamma_fraction * ADV)`` (currency / share^2); default 0.10.
        kernel: the single-order core, ``numba`` (default, fastest) or ``python`` (pure Python,
            no JIT: for environments where numba compilation is unwanted). Both give identical
            schedules and scores.
    """

    day_seconds: float = 23_400.0
    slice_ns: int = 60 * NS_PER_SECOND
    max_slices: int = 390
    risk_aversion: float = 1e-6
    max_participation: float = 0.25
    pov_rate: float = 0.10
    sqrt_impact_y: float = 1.0
    eta_participation: float = 0.01
    gamma_fraction: float = 0.10
    kernel: str = "numba"

    def __post_init__(self) -> None:
        def positive(name: str, v: float) -> None:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ExecutionConfigError(f"ExecutionConfig.{name} must be finite and > 0, got {v!r}")

        positive("day_seconds", self.day_seconds)
        positive("sqrt_impact_y", self.sqrt_impact_y)
        positive("eta_participation", self.eta_participation)
        positive("gamma_fraction", self.gamma_fraction)
        if not isinstance(self.slice_ns, int) or self.slice_ns <= 0:
            raise ExecutionConfigError(f"ExecutionConfig.slice_ns must be an int > 0, got {self.slice_ns!r}")
        if not isinstance(self.max_slices, int) or not 1 <= self.max_slices <= MAX_SLICES_LIMIT:
            raise ExecutionConfigError(
                f"ExecutionConfig.max_slices must be an int in [1, {MAX_SLICES_LIMIT}], got {self.max_slices!r}")
        if not (math.isfinite(self.risk_aversion) and self.risk_aversion >= 0):
            raise ExecutionConfigError(
                f"ExecutionConfig.risk_aversion must be finite and >= 0, got {self.risk_aversion!r}")
        for name in ("max_participation", "pov_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 1):
                raise ExecutionConfigError(f"ExecutionConfig.{name} must be in (0, 1], got {v!r}")
        if self.kernel not in KERNELS:
            raise ExecutionConfigError(f"ExecutionConfig.kernel must be one of {KERNELS}, got {self.kernel!r}")
        object.__setattr__(self, "day_seconds", float(self.day_seconds))
