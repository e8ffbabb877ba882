"""Factor metrics as array programs over ``xp`` (CuPy on the GPU, NumPy in tests): the twin of
``metrics_cpu`` with the same inputs and outputs, vectorised over dates."""

from __future__ import annotations

from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.factors.cross_section import avg_rank_rows_xp


def _pearson_rows(xp: Any, a: Any, b: Any, mask: Any) -> Any:
    n = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a0 = xp.where(mask, a, 0.0)
        b0 = xp.where(mask, b, 0.0)
        ma = a0.sum(axis=1) / n
        mb = b0.sum(axis=1) / n
        da = xp.where(mask, a - ma[:, None], 0.0)
        db = xp.where(mask, b - mb[:, None], 0.0)
        sab = (da * db).sum(axis=1)
        saa = (da * da).sum(axis=1)
        sbb = (db * db).sum(axis=1)
        r = sab / xp.sqrt(saa * sbb)
    return xp.where((n >= 2) & (saa > 0) & (sbb > 0), r, np.nan)


def factor_metrics_xp(
    xp: Any, f: Any, fwd: Any, qfrac: np.ndarray, drop_unbinnable: bool
) -> tuple[Any, Any, Any, Any, Any]:
    """Same as ``metrics_cpu.factor_metrics`` (without the presorted order)."""
    h_n, t_n, s_n = fwd.shape
    nq = len(qfrac) - 1
    mask = xp.isfinite(f) & xp.all(xp.isfinite(fwd), axis=0)
    n = mask.sum(axis=1)
    rank, _ = avg_rank_rows_xp(xp, f, mask)
    sv = xp.sort(xp.where(mask, f, np.inf), axis=1)
    qf = xp.asarray(qfrac)
    vi = (n[:, None] - 1) * qf[None, :]
    lo = xp.floor(vi).astype(np.int64)
    lo = xp.clip(lo, 0, s_n - 1)
    hi = xp.minimum(lo + 1, xp.maximum(n[:, None] - 1, 0))
    a = xp.take_along_axis(sv, lo, axis=1)
    b = xp.take_along_axis(sv, hi, axis=1)
    g = vi - lo
    with np.errstate(invalid="ignore"):
        d = b - a
        edges = xp.where(g >= 0.5, b - d * (1.0 - g), a + d * g)
    binnable = xp.all(edges[:, 1:] != edges[:, :-1], axis=1) & (n > 0)
    if drop_unbinnable:
        mask = mask & binnable[:, None]
        rank = xp.where(mask, rank, np.nan)
    cnt = xp.zeros((t_n, s_n), dtype=np.int64)
    for k in range(nq + 1):
        cnt += edges[:, k : k + 1] < f
    cnt = xp.where(f == edges[:, :1], 1, cnt)
    ok = mask & binnable[:, None] & (cnt >= 1) & (cnt <= nq)
    label = xp.where(ok, cnt, 0).astype(np.int8)
    ic = xp.full((h_n, t_n), np.nan)
    ric = xp.full((h_n, t_n), np.nan)
    qret = xp.full((h_n, t_n, nq), np.nan)
    for h in range(h_n):
        r = fwd[h]
        rr, _ = avg_rank_rows_xp(xp, r, mask)
        ic[h] = _pearson_rows(xp, f, r, mask)
        ric[h] = _pearson_rows(xp, rank, rr, mask)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = xp.where(mask, r, 0.0).sum(axis=1) / mask.sum(axis=1)
            dm = r - mean[:, None]
            for q in range(nq):
                m = label == q + 1
                c = m.sum(axis=1)
                qret[h, :, q] = xp.where(c > 0, xp.where(m, dm, 0.0).sum(axis=1) / c, np.nan)
    return ic, ric, qret, rank, label


def lag_metrics_xp(xp: Any, rank: Any, label: Any, lags: np.ndarray, nq: int) -> tuple[Any, Any]:
    """Same as ``metrics_cpu.lag_metrics``."""
    t_n, s_n = rank.shape
    ac = xp.full((len(lags), t_n), np.nan)
    to = xp.full((len(lags), t_n, nq), np.nan)
    for li, p in enumerate(int(v) for v in lags):
        if p >= t_n:
            continue
        a, b = rank[p:], rank[:-p]
        m = ~xp.isnan(a) & ~xp.isnan(b)
        ac[li, p:] = _pearson_rows(xp, a, b, m)
        l1, l0 = label[p:], label[:-p]
        for q in range(1, nq + 1):
            now = (l1 == q).sum(axis=1)
            before = (l0 == q).sum(axis=1)
            new = ((l1 == q) & (l0 != q)).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                to[li, p:, q - 1] = xp.where((now > 0) & (before > 0), new / now, np.nan)
    return ac, to
