"""Per-cell statistics from the reduced simulation state, and ranking.

The kernels keep only running accumulators per cell (``state.py``); this module turns them into
statistics with vectorised NumPy on the host (one small ``(NF + NI) x n_cells`` copy per chunk), so
the CPU and GPU backends share one formula. With ``n`` = valid bars (finite open and close) and
``r_t = E_t / E_prev - 1`` the per-bar return of equity at each valid bar's close (``E_prev`` = the
previous valid bar's equity, ``init_cash`` before the first; ``r_t = 0`` once ``E_prev <= 0``),
and ``B`` = ``bars_per_year`` (default 252):

- ``total_return`` = ``E_last / init_cash - 1`` (an open position is marked at the last valid close,
  not closed: no exit fee).
- ``cagr`` = ``(E_last / init_cash) ** (B / n) - 1``; -1 when ``E_last <= 0``; NaN when ``n == 0``.
- ``ann_volatility`` = sample std of ``r`` (ddof=1) ``* sqrt(B)``; NaN when ``n < 2``.
- ``sharpe`` = ``mean(r) / std(r, ddof=1) * sqrt(B)`` (risk-free 0); 0 when the std is 0; NaN when
  ``n < 2``.
- ``sortino`` = ``mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(B)`` (downside deviation over all ``n``
  bars, as vectorbt/empyrical); +inf when there is no negative return and ``mean > 0``, 0 when
  there is none and ``mean <= 0``; NaN when ``n < 2``.
- ``max_drawdown`` = ``max_t (1 - E_t / peak_t)`` as a positive fraction (peak starts at init_cash).
- ``max_drawdown_duration`` = longest run of consecutive valid bars with ``E_t < peak_t`` (bars).
- ``win_rate`` = closed round trips with pnl > 0 after both fees / closed round trips; NaN if none.
- ``n_trades`` = closed round trips (an open position at the end is not counted).
- ``exposure`` = valid bars whose close found a position / ``n``; NaN when ``n == 0``.
- ``fees_paid`` = proportional + fixed fees of every order.
"""

from __future__ import annotations

import math

import numpy as np

from mystocks_gpu.gpu_ops.backtest.state import (
    F_EQ,
    F_FEES,
    F_MAXDD,
    F_S1,
    F_S2,
    F_SN2,
    I_MAXRUN,
    I_NCLOSED,
    I_NEXP,
    I_NVALID,
    I_NWINS,
)

STAT_COLUMNS: tuple[str, ...] = (
    "total_return",
    "cagr",
    "ann_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_duration",
    "win_rate",
    "n_trades",
    "exposure",
    "fees_paid",
)

# True: larger is better when ranking; False: smaller is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "total_return": True,
    "cagr": True,
    "ann_volatility": False,
    "sharpe": True,
    "sortino": True,
    "max_drawdown": False,
    "max_drawdown_duration": False,
    "win_rate": True,
    "n_trades": True,
    "exposure": True,
    "fees_paid": False,
}

INT_STATS = ("max_drawdown_duration", "n_trades")


def finalize_stats(
    sf: np.ndarray, si: np.ndarray, init_cash: float, bars_per_year: float
) -> dict[str, np.ndarray]:
    """Statistics per cell from host state ``sf`` ``(NF, n)`` / ``si`` ``(NI, n)``: a dict of
    ``STAT_COLUMNS`` -> array ``(n,)`` (float64, int64 for durations and trade counts)."""
    sf = np.asarray(sf, dtype=np.float64)
    si = np.asarray(si, dtype=np.int64)
    n = si[I_NVALID].astype(np.float64)
    e_last = sf[F_EQ]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        growth = e_last / init_cash
        total_return = growth - 1.0
        cagr = np.where(
            n > 0,
            np.where(
                growth > 0,
                np.power(np.where(growth > 0, growth, 1.0), bars_per_year / n) - 1.0,
                -1.0,
            ),
            np.nan,
        )
        s1, s2, sn2 = sf[F_S1], sf[F_S2], sf[F_SN2]
        mean = np.where(n > 0, s1 / n, np.nan)
        var = np.where(n > 1, np.maximum((s2 - s1 * s1 / n) / (n - 1.0), 0.0), np.nan)
        std = np.sqrt(var)
        ann = math.sqrt(bars_per_year)
        vol = std * ann
        sharpe = np.where(n > 1, np.where(std > 0, mean / std * ann, 0.0), np.nan)
        down = np.sqrt(np.where(n > 0, sn2 / n, np.nan))
        sortino = np.where(
            n > 1,
            np.where(down > 0, mean / down * ann, np.where(mean > 0, np.inf, 0.0)),
            np.nan,
        )
        closed = si[I_NCLOSED]
        win_rate = np.where(closed > 0, si[I_NWINS] / np.maximum(closed, 1), np.nan)
        exposure = np.where(n > 0, si[I_NEXP] / np.maximum(n, 1.0), np.nan)
    return {
        "total_return": total_return,
        "cagr": cagr,
        "ann_volatility": vol,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": sf[F_MAXDD].copy(),
        "max_drawdown_duration": si[I_MAXRUN].copy(),
        "win_rate": win_rate,
        "n_trades": closed.copy(),
        "exposure": exposure,
        "fees_paid": sf[F_FEES].copy(),
    }


def rank_order(values: np.ndarray, metric: str) -> np.ndarray:
    """Indices that sort ``values`` best first for ``metric`` (NaN last; ties keep input order)."""
    v = np.asarray(values, dtype=np.float64)
    key = -v if HIGHER_IS_BETTER[metric] else v.copy()
    key[np.isnan(v)] = np.inf
    # +inf of a higher-is-better metric is the best value: -inf sorts first, NaN (+inf) last
    return np.argsort(key, kind="stable")
