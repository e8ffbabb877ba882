"""Metrics of predictions against labels: pooled MSE / R^2 / hit rate and per-date
(cross-sectional) IC / rank IC with their means and ICIRs.

Definitions (n rows, rows grouped by their date):

* ``mse`` = mean((y - f)^2); ``r2`` = 1 - SS_res / SS_tot with SS_tot about mean(y)
  (scikit-learn's ``r2_score``: 1.0 if both are 0, 0.0 if only SS_tot is).
* ``ic`` per date = Pearson correlation of f and y across that date's rows; ``rank_ic`` per date =
  Spearman correlation (Pearson of average ranks, ties averaged: ``scipy.stats.spearmanr``).
  A date with fewer than 2 rows or a constant side has NaN IC and is left out of the summaries.
* ``ic_mean`` / ``rank_ic_mean``: mean over the dates with a finite IC; ``icir`` /
  ``rank_icir`` = mean / standard deviation (ddof 1) of the daily series, not annualised
  (NaN with fewer than 2 such dates or zero deviation).
* ``hit_rate`` = share of rows where sign(f) == sign(y) (a zero matches only a zero).

Written once against the array module of the inputs (NumPy or CuPy): per-date sums are
``bincount`` reductions over the dense date index, ranks come from one ``lexsort``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import to_host
from mystocks_gpu.gpu_ops.models.exceptions import TrainingDataError


@dataclass(frozen=True)
class DailyIC:
    """Per-date series: ``dates`` (D,) sorted, ``ic`` and ``rank_ic`` (D,) float64 (NaN where
    undefined), ``n`` (D,) rows per date. Host arrays."""

    dates: np.ndarray
    ic: np.ndarray
    rank_ic: np.ndarray
    n: np.ndarray


@dataclass(frozen=True)
class PredictionMetrics:
    """Summary metrics (see the module docstring); ``n_ic_dates`` counts dates with a finite IC."""

    n_rows: int
    n_dates: int
    n_ic_dates: int
    mse: float
    r2: float
    ic_mean: float
    rank_ic_mean: float
    icir: float
    rank_icir: float
    hit_rate: float

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _xp(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _group_pearson(a: Any, b: Any, inv: Any, cnt: Any, xp: Any) -> Any:
    """Pearson correlation of a and b within each group (two-pass, centred sums)."""
    d = cnt.shape[0]
    ma = xp.bincount(inv, weights=a, minlength=d) / cnt
    mb = xp.bincount(inv, weights=b, minlength=d) / cnt
    da = a - ma[inv]
    db = b - mb[inv]
    sab = xp.bincount(inv, weights=da * db, minlength=d)
    saa = xp.bincount(inv, weights=da * da, minlength=d)
    sbb = xp.bincount(inv, weights=db * db, minlength=d)
    ok = (cnt >= 2) & (saa > 0) & (sbb > 0)
    den = xp.sqrt(xp.where(ok, saa * sbb, 1.0))
    return xp.where(ok, sab / den, xp.nan)


def group_ranks(v: Any, inv: Any, xp: Any = np) -> Any:
    """1-based average ranks of ``v`` within each group ``inv`` (ties share their mean rank)."""
    n = v.shape[0]
    order = xp.lexsort(xp.stack([v, inv.astype(v.dtype)]))
    g, vs = inv[order], v[order]
    idx = xp.arange(n)
    new_group = xp.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    new_run = new_group.copy()
    new_run[1:] |= vs[1:] != vs[:-1]
    group_start = idx[new_group][xp.cumsum(new_group) - 1]
    run_id = xp.cumsum(new_run) - 1
    run_start = idx[new_run]
    run_end = xp.concatenate([run_start[1:], xp.asarray([n], dtype=run_start.dtype)]) - 1
    avg = (run_start[run_id] + run_end[run_id]) / 2.0 - group_start + 1.0
    ranks = xp.empty(n, dtype=xp.float64)
    ranks[order] = avg
    return ranks


def _check(y_true: Any, y_pred: Any, dates: Any) -> None:
    n = y_true.shape[0]
    if y_true.ndim != 1 or y_pred.shape != (n,) or dates.shape != (n,):
        raise TrainingDataError(f"y_true, y_pred and dates must be 1-D of equal length; got "
                                f"{tuple(y_true.shape)}, {tuple(y_pred.shape)}, {tuple(dates.shape)}")
    if n == 0:
        raise TrainingDataError("no rows to evaluate")


def ic_by_date(y_true: Any, y_pred: Any, dates: Any) -> DailyIC:
    """Per-date Pearson IC and Spearman rank IC of ``y_pred`` vs ``y_true`` (all (n,))."""
    xp = _xp(y_true)
    _check(y_true, y_pred, dates)
    yt = y_true.astype(xp.float64)
    yp = y_pred.astype(xp.float64)
    u, inv = xp.unique(dates, return_inverse=True)
    inv = inv.reshape(-1)
    cnt = xp.bincount(inv, minlength=u.shape[0]).astype(xp.float64)
    ic = _group_pearson(yp, yt, inv, cnt, xp)
    ric = _group_pearson(group_ranks(yp, inv, xp), group_ranks(yt, inv, xp), inv, cnt, xp)
    return DailyIC(to_host(u), to_host(ic), to_host(ric), to_host(cnt).astype(np.int64))


def _mean_ir(series: np.ndarray) -> tuple[float, float, int]:
    s = series[np.isfinite(series)]
    if s.size == 0:
        return float("nan"), float("nan"), 0
    mean = float(s.mean())
    sd = float(s.std(ddof=1)) if s.size > 1 else 0.0
    return mean, (mean / sd if sd > 0 else float("nan")), int(s.size)


def evaluate(y_true: Any, y_pred: Any, dates: Any) -> tuple[PredictionMetrics, DailyIC]:
    """All metrics of ``y_pred`` against ``y_true`` with rows dated ``dates`` (all (n,))."""
    xp = _xp(y_true)
    daily = ic_by_date(y_true, y_pred, dates)
    yt = y_true.astype(xp.float64)
    yp = y_pred.astype(xp.float64)
    res = yt - yp
    ss_res = float(res @ res)
    dev = yt - yt.mean()
    ss_tot = float(dev @ dev)
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0 else 0.0
    n = int(yt.shape[0])
    hit = float((xp.sign(yp) == xp.sign(yt)).mean())
    ic_m, icir, n_ic = _mean_ir(daily.ic)
    ric_m, ricir, _ = _mean_ir(daily.rank_ic)
    m = PredictionMetrics(n, int(daily.dates.shape[0]), n_ic, ss_res / n, r2, ic_m, ric_m, icir,
                          ricir, hit)
    return m, daily
