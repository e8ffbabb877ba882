"""Per-symbol market parameters (:class:`MarketParams`, :class:`VolumeProfile`) and the constants
the schedulers precompute from them (:class:`SymbolModel`, :func:`prepare`).

Units: prices and spreads in currency per share; ``sigma`` is the daily standard deviation of
log returns (a fraction); ``adv`` is shares per trading day of ``config.day_seconds`` seconds.
The model constants are converted explicitly in :func:`derive_constants`:

* ``eps``      = spread / 2 (currency / share): the fixed cost of crossing half the spread;
* ``eta``      (currency * s / share^2): temporary impact, cost per share = eta * trade rate
  (shares / s);
* ``gamma``    (currency / share^2): permanent impact, price move per share traded;
* ``sig2``     = (sigma * price)^2 / day_seconds (currency^2 / share^2 / s): the variance rate
  of the arithmetic price (Almgren-Chriss ``sigma^2``);
* ``adv_rate`` = adv / day_seconds (shares / s), the flat expected volume rate;
* ``sqrt_coef`` = Y * sigma * price (currency / share): square-root impact per share at Q = ADV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.execution.exceptions import ExecutionInputError
from mystocks_gpu.gpu_ops.execution.execution_config import ExecutionConfig

SECONDS_PER_DAY = 86_400.0
_EMPTY = np.zeros(0, dtype=np.float64)
_EMPTY.setflags(write=False)  # read-only like VolumeProfile.cum: one numba specialisation


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class VolumeProfile:
    """Expected intraday volume distribution, as fractions of daily volume per time bucket.

    Attributes:
        fractions: share of the day's volume in each consecutive bucket (normalised to sum 1;
            non-negative, finite).
        bucket_seconds: length of one bucket in seconds (> 0); ``len(fractions) * bucket_seconds``
            must fit in a day (86 400 s).
        open_offset_s: start of the first bucket, seconds after UTC midnight, in [0, 86 400);
            e.g. 14.5 h = 52 200 for a 09:30 New York open in summer.

    Outside the buckets the expected volume is zero. ``cum`` holds the cumulative fractions
    (length ``len(fractions) + 1``, from 0 to exactly 1), the form the schedulers interpolate
    linearly within a bucket.
    """

    fractions: tuple[float, ...]
    bucket_seconds: float
    open_offset_s: float = 0.0
    cum: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.fractions)
        if not fr or any(not math.isfinite(f) or f < 0 for f in fr):
            raise ExecutionInputError("profile.fractions", "must be a non-empty list of finite values >= 0")
        total = math.fsum(fr)
        if total <= 0:
            raise ExecutionInputError("profile.fractions", "sum to 0: no expected volume at all")
        if not (_finite(self.bucket_seconds) and self.bucket_seconds > 0):
            raise ExecutionInputError("profile.bucket_seconds", f"must be > 0, got {self.bucket_seconds!r}")
        if len(fr) * float(self.bucket_seconds) > SECONDS_PER_DAY:
            raise ExecutionInputError("profile.bucket_seconds",
                                      f"{len(fr)} buckets of {self.bucket_seconds} s exceed one day")
        if not (_finite(self.open_offset_s) and 0 <= self.open_offset_s < SECONDS_PER_DAY):
            raise ExecutionInputError("profile.open_offset_s", f"must be in [0, 86400), got {self.open_offset_s!r}")
        cum = np.empty(len(fr) + 1, dtype=np.float64)
        cum[0] = 0.0
        acc = 0.0
        for i, f in enumerate(fr):
            acc += f / total
            cum[i + 1] = acc
        cum[-1] = 1.0
        cum.setflags(write=False)
        object.__setattr__(self, "fractions", tuple(f / total for f in fr))
        object.__setattr__(self, "bucket_seconds", float(self.bucket_seconds))
        object.__setattr__(self, "open_offset_s", float(self.open_offset_s))
        object.__setattr__(self, "cum", cum)


@dataclass(frozen=True)
class MarketParams:
    """Market parameters of one symbol (see the module docstring for units).

    Attributes:
        symbol: the symbol name.
        price: reference (arrival) price, currency per share, > 0.
        sigma: daily volatility of log returns (fraction, e.g. 0.02), > 0.
        adv: average daily volume, shares per trading day, > 0.
        spread: quoted bid-ask spread, currency, >= 0.
        lot_size: round-lot size in shares (child slices are multiples of it), >= 1; default 100.
        eta: temporary impact override (currency * s / share^2); ``None``: calibrated from the
            spread and ADV (``ExecutionConfig.eta_participation``).
        gamma: permanent impact override (currency / share^2); ``None``: calibrated
            (``ExecutionConfig.gamma_fraction``).
        profile: intraday volume profile; ``None``: volume flows at a flat ``adv / day_seconds``.

    Raises :class:`ExecutionInputError` naming the field when a value is missing, NaN or out of
    range.
    """

    symbol: str
    price: float
    sigma: float
    adv: float
    spread: float
    lot_size: int = 100
    eta: float | None = None
    gamma: float | None = None
    profile: VolumeProfile | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol:
            raise ExecutionInputError("symbol", f"must be a non-empty string, got {self.symbol!r}")
        for name in ("price", "sigma", "adv"):
            v = getattr(self, name)
            if not (_finite(v) and v > 0):
                raise ExecutionInputError(name, f"market parameter of {self.symbol} must be finite and > 0, got {v!r}")
        if not (_finite(self.spread) and self.spread >= 0):
            raise ExecutionInputError("spread", f"market parameter of {self.symbol} must be finite and >= 0, "
                                                f"got {self.spread!r}")
        if isinstance(self.lot_size, bool) or not isinstance(self.lot_size, (int, np.integer)) or self.lot_size < 1:
            raise ExecutionInputError("lot_size", f"must be an int >= 1, got {self.lot_size!r}")
        if self.eta is not None and not (_finite(self.eta) and self.eta > 0):
            raise ExecutionInputError("eta", f"must be finite and > 0 (or None), got {self.eta!r}")
        if self.gamma is not None and not (_finite(self.gamma) and self.gamma >= 0):
            raise ExecutionInputError("gamma", f"must be finite and >= 0 (or None), got {self.gamma!r}")
        for name in ("price", "sigma", "adv", "spread"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "lot_size", int(self.lot_size))


def derive_constants(price: Any, sigma: Any, adv: Any, spread: Any,
                     config: ExecutionConfig) -> tuple[Any, Any, Any, Any, Any, Any]:
    """``(eps, eta, gamma, sig2, adv_rate, sqrt_coef)`` from market parameters (floats or arrays
    of any array module; the same operations in the same order either way, so the single-order
    and batched schedulers agree bit for bit). ``eta``/``gamma`` are the calibrated values."""
    d = config.day_seconds
    eps = spread * 0.5
    eta = spread * d / (config.eta_participation * adv)
    gamma = spread / (config.gamma_fraction * adv)
    s = sigma * price
    sig2 = s * s / d
    adv_rate = adv / d
    sqrt_coef = config.sqrt_impact_y * sigma * price
    return eps, eta, gamma, sig2, adv_rate, sqrt_coef


@dataclass(frozen=True, slots=True)
class SymbolModel:
    """The precomputed constants of one symbol under one config (build with :func:`prepare`).

    Pass it to :func:`~mystocks_gpu.gpu_ops.execution.schedule_api.schedule` instead of the
    :class:`MarketParams` to skip the per-call preparation (the low-latency path).
    """

    params: MarketParams
    config: ExecutionConfig
    symbol: str
    price: float
    sigma: float
    adv: float
    lot: int
    eps: float
    eta: float
    gamma: float
    sig2: float
    adv_rate: float
    sqrt_coef: float
    prof_cum: np.ndarray
    prof_bucket_s: float
    prof_open_s: float


def prepare(params: MarketParams, config: ExecutionConfig | None = None) -> SymbolModel:
    """Precompute the model constants of ``params`` under ``config`` (default settings)."""
    if not isinstance(params, MarketParams):
        raise ExecutionInputError("params", f"expected MarketParams, got {type(params).__name__}")
    cfg = config or ExecutionConfig()
    eps, eta, gamma, sig2, adv_rate, sqrt_coef = derive_constants(
        params.price, params.sigma, params.adv, params.spread, cfg)
    if params.eta is not None:
        eta = float(params.eta)
    if params.gamma is not None:
        gamma = float(params.gamma)
    prof = params.profile
    return SymbolModel(
        params=params, config=cfg, symbol=params.symbol, price=params.price, sigma=params.sigma,
        adv=params.adv, lot=params.lot_size, eps=eps, eta=eta, gamma=gamma, sig2=sig2,
        adv_rate=adv_rate, sqrt_coef=sqrt_coef,
        prof_cum=prof.cum if prof is not None else _EMPTY,
        prof_bucket_s=prof.bucket_seconds if prof is not None else 1.0,
        prof_open_s=prof.open_offset_s if prof is not None else 0.0,
    )
