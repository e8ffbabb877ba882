"""Limit checks with "once per breach" alerting, as pure functions.

Limits per account, columns in :data:`~mystocks_gpu.gpu_ops.risk.config.LIMIT_NAMES` order:
``var`` (the VaR selected by ``RiskConfig.limit_var`` / ``limit_confidence``, currency),
``gross_exposure`` (currency), ``concentration`` (max ``|e_i| / gross``, a fraction) and
``drawdown`` (a fraction). A missing limit is ``+inf`` (never breached); a NaN value (e.g. VaR
before enough history) is not a breach.

Once per breach: an alert is raised when a limit goes from OK to breached; the flag stays set
(no repeat alerts) until the value is back within the limit, which re-arms it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.risk.config import LIMIT_NAMES

Array = Any


@dataclass(frozen=True)
class Breach:
    """One alert: the account (its index in the batch), the limit's name, the value and the limit."""

    account: int
    limit: str
    value: float
    threshold: float


def check_limits(values: Array, limits: Array, xp: ModuleType = np) -> Array:
    """``breached (A, L)``: ``value > limit`` (NaN values are not breaches)."""
    return xp.isfinite(values) & (values > limits)


def alerts_once(prev: Array, breached: Array) -> tuple[Array, Array]:
    """``(alert (A, L), flags (A, L))``: alert where a limit newly breaches; the returned flags
    (= ``breached``) are the next ``prev`` (a limit back within bounds re-arms)."""
    return breached & ~prev, breached.copy()


def breach_records(alert: np.ndarray, values: np.ndarray, limits: np.ndarray) -> list[Breach]:
    """The alerts as records (host arrays)."""
    return [Breach(int(a), LIMIT_NAMES[k], float(values[a, k]), float(limits[a, k]))
            for a, k in zip(*np.nonzero(alert), strict=True)]
