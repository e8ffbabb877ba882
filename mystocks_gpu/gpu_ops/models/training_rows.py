"""Row policy for training and scoring: drop rows with NaN/inf, and lag-stack features for the
sequence model.

Policy (documented contract): a row whose features or label hold NaN or +-inf is **dropped**, and
the count is returned so the job reports it (``rows_dropped``); models never see non-finite values
(``fit`` / ``predict`` reject them). Rows are never imputed. Labels are NaN wherever the forward
horizon leaves the data (see ``forward_labels``), so the same policy removes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mystocks_gpu.gpu_ops.models.exceptions import TrainingDataError


class FiniteRows(NamedTuple):
    """Rows kept by :func:`drop_nonfinite`: ``X`` (m, p), ``y`` (m,) or None, ``keep`` (n,) bool
    mask over the input rows, ``n_dropped`` = n - m."""

    X: Any
    y: Any
    keep: Any
    n_dropped: int


def _xp(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def drop_nonfinite(X: Any, y: Any = None) -> FiniteRows:
    """Keep the rows where every feature of ``X`` (n, p) and the label ``y`` (n,) (if given) are
    finite. Works on NumPy or CuPy arrays (the result stays on the same device)."""
    xp = _xp(X)
    if X.ndim != 2:
        raise TrainingDataError(f"X must be 2-D (n_rows, n_features); got shape {tuple(X.shape)}")
    keep = xp.isfinite(X).all(axis=1)
    if y is not None:
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise TrainingDataError(f"y must be 1-D with {X.shape[0]} rows; got shape {tuple(y.shape)}")
        keep &= xp.isfinite(y)
    n_dropped = int(X.shape[0] - int(keep.sum()))
    if n_dropped == 0:
        return FiniteRows(X, y, keep, 0)
    return FiniteRows(X[keep], None if y is None else y[keep], keep, n_dropped)


def symbol_order(sym: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order sorted by (symbol, time); raises on a repeated (symbol, time) pair."""
    sym, ts = np.asarray(sym), np.asarray(ts)
    if sym.shape != ts.shape or sym.ndim != 1:
        raise TrainingDataError(f"sym and ts must be 1-D of equal length; got {sym.shape} and {ts.shape}")
    order = np.lexsort((ts, sym))
    s, t = sym[order], ts[order]
    dup = (s[1:] == s[:-1]) & (t[1:] == t[:-1])
    if dup.any():
        i = int(order[1:][dup][0])
        raise TrainingDataError(f"row {i}: symbol {sym[i]} has two rows at time {ts[i]}; bars must be "
                                "unique per (symbol, time)")
    return order


def stack_lags(sym: np.ndarray, ts: np.ndarray, X: np.ndarray, seq_len: int) -> np.ndarray:
    """Sequence rows for the ``gru`` family: row i becomes the features of its symbol's
    ``seq_len`` most recent bars up to and including i, oldest first, shape (n, seq_len * p).
    Rows with fewer than ``seq_len`` bars of history are NaN (dropped by the row policy).

    ``sym`` (n,) symbol codes, ``ts`` (n,) times, ``X`` (n, p); any row order (output follows it).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise TrainingDataError(f"seq_len must be an int >= 1, got {seq_len!r}")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] != np.asarray(sym).shape[0]:
        raise TrainingDataError(f"X must be (n_rows, n_features) with one row per symbol/time; got {X.shape}")
    order = symbol_order(sym, ts)
    s = np.asarray(sym)[order]
    Xs = X[order]
    n, p = X.shape
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    out_sorted = np.full((n, seq_len * p), np.nan, dtype=dtype)
    idx = np.arange(n)
    for step in range(seq_len):  # step 0 = oldest = lag seq_len - 1
        lag = seq_len - 1 - step
        src = idx - lag
        ok = src >= 0
        ok[ok] = s[src[ok]] == s[idx[ok]]
        out_sorted[ok, step * p:(step + 1) * p] = Xs[src[ok]]
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out
