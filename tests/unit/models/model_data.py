"""Synthetic data shared by the model tests (seeded; no expected values live here)."""

from __future__ import annotations

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.backend import gpu_available


def regression_data(n: int = 400, p: int = 8, seed: int = 12345, dtype: type = np.float64,
                    intercept: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Correlated Gaussian features (non-zero means), a sparse linear signal, a mild
    non-linearity and noise: ``X`` (n, p) of ``dtype``, ``y`` (n,) float64."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + rng.normal(size=p)
    X[:, 1] += 0.6 * X[:, 0]
    w = rng.normal(size=p)
    w[::3] = 0.0
    y = X @ w + intercept + 0.3 * np.tanh(X[:, 2] * X[:, 3]) + rng.normal(scale=0.5, size=n)
    return X.astype(dtype), y


def panel(n_dates: int, n_symbols: int, seed: int = 12345) -> dict[str, np.ndarray]:
    """A long-format bar panel, rows shuffled: ``sym`` int32, ``ts`` int64 (one bar per date,
    10 % of bars missing), ``close`` (GBM), ``date`` (= ts)."""
    rng = np.random.default_rng(seed)
    sym = np.repeat(np.arange(n_symbols, dtype=np.int32), n_dates)
    ts = np.tile(np.arange(n_dates, dtype=np.int64) * 86_400_000_000_000, n_symbols)
    close = np.exp(np.cumsum(rng.normal(0, 0.02, (n_symbols, n_dates)), axis=1)).ravel() * 100
    keep = rng.random(sym.size) > 0.1
    order = rng.permutation(int(keep.sum()))
    return {"sym": sym[keep][order], "ts": ts[keep][order], "close": close[keep][order],
            "date": ts[keep][order]}


GPU_OK, GPU_WHY = gpu_available()
needs_gpu = pytest.mark.skipif(not GPU_OK, reason=f"no CUDA device: {GPU_WHY}")
