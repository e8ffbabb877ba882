"""Training labels: the forward return over a horizon of N bars, per symbol.

``label_i = log(p_j / p_i)`` (``kind="log"``, the default: additive over time and symmetric in
up / down moves) or ``p_j / p_i - 1`` (``kind="simple"``), where ``j`` is the row of the same
symbol ``horizon`` bars later in time (bars = that symbol's rows, in time order; a missing bar is
simply not counted). The label uses only prices inside the given data: a row whose horizon leaves
the data (the last ``horizon`` bars of each symbol) gets NaN, as does a row where either price is
non-finite or not positive; the row policy (``training_rows.drop_nonfinite``) then drops it. So a
label never looks past the end of the training window it was computed from.

``label_end`` is the time of bar ``j`` (when the label is known); the walk-forward splitter uses
it to purge training rows whose label reaches into a test window. It is ``LABEL_END_UNKNOWN``
(int64 max: conservatively "after everything") where the label is NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mystocks_gpu.gpu_ops.models.exceptions import TrainingDataError
from mystocks_gpu.gpu_ops.models.training_rows import symbol_order

LABEL_END_UNKNOWN = np.iinfo(np.int64).max
LABEL_KINDS = ("log", "simple")


class ForwardLabels(NamedTuple):
    """``label`` (n,) float64 (NaN where undefined) and ``label_end`` (n,) int64, in input row order."""

    label: np.ndarray
    label_end: np.ndarray


def forward_returns(sym: np.ndarray, ts: np.ndarray, price: np.ndarray, horizon: int,
                    kind: str = "log") -> ForwardLabels:
    """Forward return of each row over ``horizon`` bars of its symbol (see the module docstring).

    Args:
        sym: (n,) integer symbol codes.
        ts: (n,) int64 bar times (e.g. ``ts_event`` ns); unique per symbol; any row order.
        price: (n,) prices (e.g. bar close).
        horizon: bars ahead, >= 1 and shorter than the longest symbol history.
        kind: ``log`` or ``simple``.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise TrainingDataError(f"label horizon must be an int >= 1 bars, got {horizon!r}")
    if kind not in LABEL_KINDS:
        raise TrainingDataError(f"label kind must be one of {', '.join(LABEL_KINDS)}; got {kind!r}")
    price = np.asarray(price, dtype=np.float64)
    ts = np.asarray(ts)
    n = price.shape[0]
    if n == 0:
        raise TrainingDataError("no rows to label (empty range)")
    if price.shape != (n,) or np.asarray(sym).shape != (n,) or ts.shape != (n,):
        raise TrainingDataError("sym, ts and price must be 1-D arrays of equal length")
    order = symbol_order(sym, ts)
    s = np.asarray(sym)[order]
    longest = int(np.unique(s, return_counts=True)[1].max())
    if horizon >= longest:
        raise TrainingDataError(f"label horizon {horizon} bars is longer than the data: the longest "
                                f"symbol history has {longest} bars (need more than {horizon})")
    p = price[order]
    t = ts[order].astype(np.int64)
    label_s = np.full(n, np.nan)
    end_s = np.full(n, LABEL_END_UNKNOWN, dtype=np.int64)
    i = np.arange(n - horizon)
    j = i + horizon
    same = s[j] == s[i]
    i, j = i[same], j[same]
    ok = np.isfinite(p[i]) & np.isfinite(p[j]) & (p[i] > 0) & (p[j] > 0)
    i, j = i[ok], j[ok]
    label_s[i] = np.log(p[j] / p[i]) if kind == "log" else p[j] / p[i] - 1.0
    end_s[i] = t[j]
    label = np.empty(n)
    end = np.empty(n, dtype=np.int64)
    label[order] = label_s
    end[order] = end_s
    return ForwardLabels(label, end)
