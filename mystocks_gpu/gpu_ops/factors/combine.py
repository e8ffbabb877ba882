"""Walk-forward combination of factors: ICIR-weighted or ridge (:func:`combine`).

Each factor is z-scored per date across symbols (mean 0, std 1 over its finite values; a missing
value counts as 0, the cross-sectional mean). The combined factor on date t is
``sum_k w_k(t) z_k(t)``, NaN where every factor is missing, with weights refitted every
``refit_every`` dates from information available at t only: a forward return at horizon h from
date d is known at d + h, so a fit at t uses dates d <= t - h. No weights (NaN values) before
``min_train_dates`` such dates exist.

* ``icir``: ``w_k`` = mean / std (ddof=1) of factor k's per-date rank IC at horizon h over the
  training dates, normalised so that ``sum |w_k| = 1``.
* ``ridge``: ``w = (X'X + alpha I)^-1 X'y`` over the training rows (date, symbol) with a finite
  forward return, X the z-scores, y the forward return z-scored per date; no intercept (both
  sides are cross-sectionally centred). ``alpha`` is on sums, as scikit-learn's ``Ridge``.

Array code runs on NumPy (CPU) or CuPy (GPU) through ``xp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backend import select, to_host
from mystocks_gpu.gpu_ops.factors.config import CombineConfig, EvalConfig
from mystocks_gpu.gpu_ops.factors.evaluate import (
    Evaluator,
    FactorReport,
    MetricsCpu,
    MetricsXp,
    forward_returns,
    make_metrics,
)
from mystocks_gpu.gpu_ops.factors.exceptions import FactorConfigError


def zscore_dates(m: Any, x: Any) -> Any:
    """Per-row (date) z-score over finite values (std ddof=1); NaN where not finite."""
    fin = m.isfinite(x)
    n = fin.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = m.where(fin, x, 0.0).sum(axis=-1, keepdims=True) / n
        d = m.where(fin, x - mean, 0.0)
        sd = m.sqrt((d * d).sum(axis=-1, keepdims=True) / (n - 1))
        z = d / sd
    return m.where(fin & (sd > 0), z, np.nan)


@dataclass
class CombineResult:
    """``weights``: refit date index (date position) x factor; ``values`` the combined factor
    ``(n_dates, n_symbols)``; ``report`` its metrics (same definitions as any factor)."""

    weights: pd.DataFrame
    values: np.ndarray
    report: FactorReport

    @property
    def final_weights(self) -> pd.Series:
        return self.weights.iloc[-1] if len(self.weights) else pd.Series(dtype=float)


def combine(
    values: Mapping[str, np.ndarray],
    close: np.ndarray,
    cfg: CombineConfig | None = None,
    eval_cfg: EvalConfig | None = None,
    backend: str = "auto",
    metrics: MetricsCpu | MetricsXp | None = None,
    name: str = "COMBINED",
) -> CombineResult:
    """Combine ``name -> (n_dates, n_symbols)`` factors walk-forward (see the module docstring)."""
    cfg = cfg or CombineConfig()
    eval_cfg = eval_cfg or EvalConfig()
    if not values:
        raise FactorConfigError("no factors to combine")
    if cfg.horizon not in eval_cfg.horizons:
        eval_cfg = EvalConfig(horizons=tuple(sorted(set(eval_cfg.horizons) | {cfg.horizon})),
                              quantiles=eval_cfg.quantiles,
                              drop_unbinnable_dates=eval_cfg.drop_unbinnable_dates)
    metrics = metrics if metrics is not None else make_metrics(select(backend))
    m = metrics.xp
    names = list(values)
    k_n = len(names)
    t_n, s_n = np.asarray(close).shape
    h = cfg.horizon
    z = m.stack([zscore_dates(m, m.asarray(values[k], dtype=np.float64)) for k in names])  # K,T,N
    zf = m.nan_to_num(z)
    any_fin = m.isfinite(z).any(axis=0)
    if cfg.method == "icir":
        ev = Evaluator(close, eval_cfg, impl=metrics)
        hi = eval_cfg.horizons.index(h)
        ric = np.stack([ev.per_factor(values[k])[1][hi] for k in names])  # K, T
    else:
        y = zscore_dates(m, m.asarray(forward_returns(close, (h,))[0]))
        yf = m.isfinite(y)
        xr = zf.transpose(1, 2, 0) * yf[..., None]  # T, N, K (rows without a return -> 0)
        xtx_d = to_host(m.matmul(xr.transpose(0, 2, 1), xr))  # T, K, K
        xty_d = to_host(m.einsum("tnk,tn->tk", xr, m.where(yf, y, 0.0)))  # T, K
        usable = to_host(yf.any(axis=1))
    weights: list[np.ndarray] = []
    refit_at: list[int] = []
    w_now: np.ndarray | None = None
    combined = np.full((t_n, s_n), np.nan)
    for t in range(t_n):
        last = t - h  # last date whose forward return is known at t
        if t % cfg.refit_every == 0 or w_now is None:
            w_new = None
            if last >= 0:
                if cfg.method == "icir":
                    hist = ric[:, : last + 1]
                    ok = np.isfinite(hist)
                    if ok.sum(axis=1).min() >= cfg.min_train_dates:
                        mu = np.array([hist[i][ok[i]].mean() for i in range(k_n)])
                        sd = np.array([hist[i][ok[i]].std(ddof=1) for i in range(k_n)])
                        ir = np.where(sd > 0, mu / np.where(sd > 0, sd, 1.0), 0.0)
                        tot = np.abs(ir).sum()
                        w_new = ir / tot if tot > 0 else None
                elif usable[: last + 1].sum() >= cfg.min_train_dates:
                    a = xtx_d[: last + 1].sum(axis=0) + cfg.ridge_alpha * np.eye(k_n)
                    b = xty_d[: last + 1].sum(axis=0)
                    w_new = np.linalg.solve(a, b)
            if w_new is not None:
                w_now = w_new
                weights.append(w_now)
                refit_at.append(t)
        if w_now is not None:
            row = to_host(m.tensordot(m.asarray(w_now), zf[:, t, :], axes=1))
            combined[t] = np.where(to_host(any_fin[t]), row, np.nan)
    wdf = pd.DataFrame(np.array(weights).reshape(len(weights), k_n), index=pd.Index(refit_at, name="date_index"),
                       columns=names)
    ev2 = Evaluator(close, eval_cfg, impl=metrics)
    rep = ev2.evaluate({name: m.asarray(combined)})
    return CombineResult(wdf, combined, rep)
