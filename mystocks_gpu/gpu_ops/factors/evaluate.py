"""Factor metrics with Alphalens's definitions (alphalens-reloaded 0.5), CPU (numba) and GPU
(CuPy) twins, plus the pairwise factor correlation.

Definitions (``f`` a factor ``(n_dates, n_symbols)``, ``c`` the close):

* forward return at horizon ``h``: ``c'[t + h] / c'[t] - 1`` with ``c'`` the close forward-filled
  per symbol (``prices.ffill().pct_change(h).shift(-h)``); NaN for the last ``h`` dates.
* sample of a date: the symbols whose factor value is finite and whose forward returns at *every*
  configured horizon are finite (Alphalens's ``get_clean_factor`` ``dropna``).
* quantiles: ``pd.qcut(f, Q, labels=False) + 1`` per date on the sample. A date whose edges are
  not unique is dropped from every metric (Alphalens, ``max_loss > 0``) unless
  ``EvalConfig.drop_unbinnable_dates`` is False.
* IC: Pearson correlation of the factor and the forward return over the date's sample; rank IC:
  Spearman (Pearson of average ranks, = Alphalens's ``factor_information_coefficient``).
  ``*_mean``, ``*_std`` (ddof=1) over dates with a finite value; IR = mean / std;
  t-stat = mean / (std / sqrt(n_dates)) (= ``scipy.stats.ttest_1samp``).
* quantile returns: per date, the mean over the quantile's names of the forward return demeaned by
  the date's sample mean (``mean_return_by_quantile(demeaned=True, by_date=True)``); ``q<i>`` is
  the mean over dates; ``spread`` the mean over dates of ``(q_top - q_bottom) / 2``
  (``compute_mean_returns_spread``: a 100 %-gross dollar-neutral book).
* turnover at lag ``p = h`` dates: share of the top (bottom) quantile's names on date t that were
  not in it on date t - p (``quantile_turnover``); mean over dates.
* rank autocorrelation at lag ``p = h``: Pearson correlation of date t's and date t - p's sample
  ranks over the symbols ranked on both (``factor_rank_autocorrelation``); mean over dates.
* factor correlation: mean over dates of the Pearson correlation of two factors' sample ranks over
  the symbols ranked by both (Spearman's rho when both rank the same symbols).

A factor with no finite value gets ``status = "all_nan"`` and NaN metrics (no error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backend import GPU, select, to_host, xp
from mystocks_gpu.gpu_ops.factors import metrics_cpu, metrics_xp
from mystocks_gpu.gpu_ops.factors.config import EvalConfig
from mystocks_gpu.gpu_ops.factors.threads import run_blocks


def qcut_fractions(q: int) -> np.ndarray:
    """The quantile fractions pandas' ``qcut(x, q)`` uses, after its ``percentile`` round trip."""
    qs = np.linspace(0, 1, q + 1)
    np.putmask(qs, q * qs != np.arange(q + 1), np.nextafter(qs, 1))
    return np.asarray(np.true_divide(qs * 100.0, 100.0), dtype=np.float64)


def forward_returns(close: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """``(H, n_dates, n_symbols)`` forward returns of a ``(n_dates, n_symbols)`` close (host)."""
    c = pd.DataFrame(np.asarray(close, dtype=np.float64)).ffill().to_numpy()
    t_n = c.shape[0]
    out = np.full((len(horizons),) + c.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, h in enumerate(horizons):
            if h < t_n:
                out[i, : t_n - h] = c[h:] / c[: t_n - h] - 1.0
    return out


class MetricsCpu:
    """numba metric kernels on host arrays, on blocks of dates in ``threads`` threads.

    ``prepare`` returns one :class:`.metrics_cpu.DateBlock` per block of dates: it holds the
    forward-return work shared by every factor, the return side of the last factor sample seen
    (factors with the same missing bars share it; :meth:`Evaluator.evaluate` passes them one after
    the other) and the sort buffers every factor reuses."""

    xp: Any = np

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def prepare(self, fwd: np.ndarray) -> Any:
        """Per date block: :class:`.metrics_cpu.DateBlock`."""
        return run_blocks(lambda a, b: metrics_cpu.DateBlock(a, b, fwd[:, a:b]), fwd.shape[1],
                          self.threads)

    def finite_counts(self, values: list[Any]) -> list[tuple[int, bytes]]:
        """Per factor: ``(finite values, key)``; the key (finite values per date) is equal for
        factors that miss the same bars (one shared by other masks only costs the shared work,
        which is checked). In threads (NumPy releases the GIL)."""
        def block(a: int, b: int) -> list[tuple[int, bytes]]:
            out = []
            for f in values[a:b]:
                per_date = np.isfinite(f).sum(axis=1)
                out.append((int(per_date.sum()), per_date.tobytes()))
            return out

        return [r for part in run_blocks(block, len(values), self.threads) for r in part]

    def per_date(self, f: Any, prep: Any, qfrac: np.ndarray, drop: bool) -> tuple[Any, ...]:
        t_n, s_n = f.shape
        rank = np.empty((t_n, s_n), dtype=np.float64)
        label = np.empty((t_n, s_n), dtype=np.int8)

        def block(k: int, _: int) -> tuple[Any, ...]:
            blk = prep[k]
            return blk.metrics(f[blk.a : blk.b], qfrac, drop, rank[blk.a : blk.b],  # type: ignore[no-any-return]
                               label[blk.a : blk.b])

        parts = run_blocks(block, len(prep), len(prep)) if len(prep) > 1 else [block(0, 1)]
        ic = np.concatenate([p[0] for p in parts], axis=1)
        ric = np.concatenate([p[1] for p in parts], axis=1)
        qret = np.concatenate([p[2] for p in parts], axis=1)
        return ic, ric, qret, rank, label

    def lagged(self, rank: Any, label: Any, lags: np.ndarray, nq: int) -> tuple[Any, Any]:
        parts = run_blocks(lambda a, b: (a, b, metrics_cpu.lag_metrics(rank, label, lags, nq, a, b)),
                           rank.shape[0], self.threads)
        ac = np.full((len(lags), rank.shape[0]), np.nan)
        to = np.full((len(lags), rank.shape[0], nq), np.nan)
        for a, b, (pac, pto) in parts:
            ac[:, a:b] = pac[:, a:b]
            to[:, a:b] = pto[:, a:b]
        return ac, to


class MetricsXp:
    """Array-program metrics over ``xp`` (CuPy on the GPU, NumPy in tests)."""

    def __init__(self, module: Any) -> None:
        self.xp = module

    def prepare(self, fwd: np.ndarray) -> tuple[Any, Any]:
        return self.xp.asarray(fwd), None

    def finite_counts(self, values: list[Any]) -> list[tuple[int, bytes]]:
        """Per factor: ``(finite values, b"")`` (no sample reuse: one group)."""
        # the values may be host arrays (a factor computed on the CPU): CuPy takes no NumPy input
        return [(int(self.xp.isfinite(self.xp.asarray(f)).sum()), b"") for f in values]

    def per_date(self, f: Any, prep: tuple[Any, Any], qfrac: np.ndarray, drop: bool) -> tuple[Any, ...]:
        return metrics_xp.factor_metrics_xp(self.xp, self.xp.asarray(f), prep[0], qfrac, drop)

    def lagged(self, rank: Any, label: Any, lags: np.ndarray, nq: int) -> tuple[Any, Any]:
        return metrics_xp.lag_metrics_xp(self.xp, rank, label, lags, nq)


def make_metrics(backend: str, threads: int = 0) -> MetricsCpu | MetricsXp:
    """The metric implementation of a resolved backend (``cpu`` -> numba, ``gpu`` -> CuPy)."""
    return MetricsXp(xp(GPU)) if backend == GPU else MetricsCpu(threads)


@dataclass
class FactorReport:
    """Metrics of F factors at H horizons over T dates (host arrays).

    ``summary``: one row per (factor, horizon), see :data:`SUMMARY_COLUMNS`. Time series:
    ``ic``/``rank_ic`` ``(F, H, T)``, ``quantile_returns`` ``(F, H, T, Q)``, ``turnover``
    ``(F, H, T, Q)`` (lag = horizon), ``autocorr`` ``(F, H, T)``. ``ranks`` ``(F, T, N)`` float32
    sample ranks (kept when asked, for correlations); ``correlation`` ``(F, F)`` or None.
    """

    names: list[str]
    horizons: tuple[int, ...]
    summary: pd.DataFrame
    ic: np.ndarray
    rank_ic: np.ndarray
    quantile_returns: np.ndarray
    turnover: np.ndarray
    autocorr: np.ndarray
    status: list[str]
    ranks: np.ndarray | None = None
    correlation: np.ndarray | None = None

    def correlation_frame(self) -> pd.DataFrame:
        """The factor correlation matrix as a DataFrame (names on both axes)."""
        if self.correlation is None:
            raise ValueError("correlation was not computed")
        return pd.DataFrame(self.correlation, index=self.names, columns=self.names)


def _ts_stats(x: np.ndarray) -> tuple[float, float, float, float, int]:
    v = x[np.isfinite(x)]
    n = int(v.size)
    if n == 0:
        return np.nan, np.nan, np.nan, np.nan, 0
    m = float(v.mean())
    s = float(v.std(ddof=1)) if n > 1 else np.nan
    ir = m / s if s and s == s else np.nan
    return m, s, ir, ir * np.sqrt(n) if ir == ir else np.nan, n


def _nanmean(x: np.ndarray) -> float:
    v = x[np.isfinite(x)]
    return float(v.mean()) if v.size else np.nan


def summarize(name: str, status: str, horizons: Sequence[int], coverage: float, ic: np.ndarray,
              ric: np.ndarray, qret: np.ndarray, to: np.ndarray, ac: np.ndarray) -> list[dict[str, Any]]:
    """Summary rows of one factor (see :class:`FactorReport`)."""
    rows = []
    nq = qret.shape[-1]
    for hi, h in enumerate(horizons):
        icm, ics, icir, ict, _ = _ts_stats(ic[hi])
        rm, rs, rir, rt, nd = _ts_stats(ric[hi])
        row: dict[str, Any] = {
            "factor": name, "horizon": h, "status": status, "n_dates": nd, "coverage": coverage,
            "ic_mean": icm, "ic_std": ics, "icir": icir, "ic_tstat": ict,
            "rank_ic_mean": rm, "rank_ic_std": rs, "rank_icir": rir, "rank_ic_tstat": rt,
        }
        for q in range(nq):
            row[f"q{q + 1}"] = _nanmean(qret[hi, :, q])
        sp = (qret[hi, :, nq - 1] - qret[hi, :, 0]) / 2.0
        row["spread"] = _nanmean(sp)
        row["turnover_top"] = _nanmean(to[hi, :, nq - 1])
        row["turnover_bottom"] = _nanmean(to[hi, :, 0])
        row["rank_autocorr"] = _nanmean(ac[hi])
        rows.append(row)
    return rows


class Evaluator:
    """Evaluates factors against one close panel: forward returns and their sort are computed once.

    Args:
        close: ``(n_dates, n_symbols)`` close prices (host).
        cfg: metric settings.
        backend: ``auto``/``cpu``/``gpu``; ``impl`` overrides it (tests: ``MetricsXp(numpy)``).
    """

    def __init__(self, close: np.ndarray, cfg: EvalConfig | None = None, backend: str = "auto",
                 impl: MetricsCpu | MetricsXp | None = None) -> None:
        self.cfg = cfg or EvalConfig()
        self.impl = impl if impl is not None else make_metrics(select(backend))
        self.fwd = forward_returns(close, self.cfg.horizons)
        self.prep = self.impl.prepare(self.fwd)
        self.qfrac = qcut_fractions(self.cfg.quantiles)
        self.lags = np.asarray(self.cfg.horizons, dtype=np.int64)
        self.shape = self.fwd.shape[1:]

    def per_factor(self, f: Any) -> tuple[np.ndarray, ...]:
        """``(ic, rank_ic, qret, turnover, autocorr, rank)`` host arrays of one ``(T, N)`` factor."""
        ic, ric, qret, rank, label = self.impl.per_date(f, self.prep, self.qfrac,
                                                        self.cfg.drop_unbinnable_dates)
        ac, to = self.impl.lagged(rank, label, self.lags, self.cfg.quantiles)
        return tuple(to_host(a) for a in (ic, ric, qret, to, ac, rank))

    def evaluate(self, values: Mapping[str, Any], keep_ranks: bool = False) -> FactorReport:
        """Metrics of ``name -> (n_dates, n_symbols)`` factor values, in the order of ``values``
        (factors that miss the same bars are measured one after the other: on the CPU they share
        the return side of their sample)."""
        names = list(values)
        f_n, h_n = len(names), len(self.cfg.horizons)
        t_n, s_n = self.shape
        nq = self.cfg.quantiles
        ic = np.full((f_n, h_n, t_n), np.nan)
        ric = np.full_like(ic, np.nan)
        ac = np.full_like(ic, np.nan)
        qret = np.full((f_n, h_n, t_n, nq), np.nan)
        to = np.full_like(qret, np.nan)
        ranks = np.full((f_n, t_n, s_n), np.nan, dtype=np.float32) if keep_ranks else None
        rows: list[list[dict[str, Any]]] = [[] for _ in names]
        status = ["" for _ in names]
        n_fin: list[int] = []
        groups: dict[bytes, list[int]] = {}
        for i, (n, key) in enumerate(self.impl.finite_counts([values[k] for k in names])):
            n_fin.append(n)
            groups.setdefault(key, []).append(i)
        # factors with the same missing bars one after the other (they share the return side)
        for i in (j for g in groups.values() for j in g):
            name = names[i]
            if n_fin[i] == 0:
                st = "all_nan"
            else:
                ic[i], ric[i], qret[i], to[i], ac[i], rk = self.per_factor(values[name])
                if ranks is not None:
                    ranks[i] = rk
                st = "ok" if np.isfinite(ric[i]).any() else "no_valid_dates"
            status[i] = st
            rows[i] = summarize(name, st, self.cfg.horizons, n_fin[i] / (t_n * s_n), ic[i], ric[i],
                                qret[i], to[i], ac[i])
        summary = pd.DataFrame([r for rs in rows for r in rs])
        return FactorReport(names, tuple(self.cfg.horizons), summary, ic, ric, qret, to, ac, status,
                            ranks)


def rank_correlation(ranks_a: Any, ranks_b: Any, xpm: Any = np, date_chunk: int = 256) -> np.ndarray:
    """Mean over dates of the Pearson correlation of sample ranks, for every pair of factors.

    ``ranks_a`` ``(A, T, N)``, ``ranks_b`` ``(B, T, N)`` (NaN = not ranked). Per date, a pair's
    correlation is over the symbols both rank; dates where it is undefined are skipped. Returns
    ``(A, B)``. Sums come from five batched matrix products per date chunk (CuPy or NumPy)."""
    a_n, t_n, _ = ranks_a.shape
    b_n = ranks_b.shape[0]
    tot = xpm.zeros((a_n, b_n))
    cnt = xpm.zeros((a_n, b_n))
    for t0 in range(0, t_n, date_chunk):
        ra = xpm.asarray(ranks_a[:, t0 : t0 + date_chunk], dtype=np.float64).transpose(1, 0, 2)
        rb = xpm.asarray(ranks_b[:, t0 : t0 + date_chunk], dtype=np.float64).transpose(1, 0, 2)
        ma, mb = (~xpm.isnan(ra)).astype(np.float64), (~xpm.isnan(rb)).astype(np.float64)
        xa, xb = xpm.nan_to_num(ra), xpm.nan_to_num(rb)
        tb = mb.transpose(0, 2, 1)
        n = ma @ tb
        sa = xa @ tb
        sb = (ma @ xb.transpose(0, 2, 1))
        saa = (xa * xa) @ tb
        sbb = ma @ (xb * xb).transpose(0, 2, 1)
        sab = xa @ xb.transpose(0, 2, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = sab - sa * sb / n
            va = saa - sa * sa / n
            vb = sbb - sb * sb / n
            r = cov / xpm.sqrt(va * vb)
        ok = (n >= 2) & (va > 1e-9 * saa) & (vb > 1e-9 * sbb)
        tot += xpm.where(ok, r, 0.0).sum(axis=0)
        cnt += ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return to_host(xpm.where(cnt > 0, tot / cnt, np.nan))
