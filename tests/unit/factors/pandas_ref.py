"""An independent pandas implementation of the factor language (wide frames: index dates, columns
symbols, so ``rolling`` runs per symbol), used as the reference in the tests and as the pandas
baseline of ``bench/factors.py``. It walks the parsed tree; identical subexpressions are computed
once (``memo``), as Qlib's expression cache does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.factors.expr import CONST, FIELD, Node


def _bad(df: pd.DataFrame, w: int) -> pd.DataFrame:
    """True where the window holds a non-finite value (our kernels treat ±inf as missing)."""
    nf = (~np.isfinite(df)).astype(float)
    return nf.rolling(w, min_periods=1).sum() > 0


def _roll(df: pd.DataFrame, w: int) -> Any:
    return df.rolling(w, min_periods=w)


def _windows(df: pd.DataFrame, w: int, fn: Any) -> pd.DataFrame:
    """``fn`` over every trailing window of ``w`` rows, vectorised (NumPy's sliding windows; pandas
    has no native rolling argmax / weighted mean, and ``rolling.apply`` calls Python per window).
    NaN for the first ``w - 1`` rows and, like ``rolling(w, min_periods=w)``, where the window
    holds a NaN."""
    from numpy.lib.stride_tricks import sliding_window_view

    a = df.to_numpy(dtype=float)
    out = np.full(a.shape, np.nan)
    if len(a) >= w:
        out[w - 1:] = fn(sliding_window_view(a, w, axis=0))
    res = pd.DataFrame(out, index=df.index, columns=df.columns)
    return res.mask(df.isna().astype(float).rolling(w, min_periods=1).sum() > 0)


def _slope_parts(df: pd.DataFrame, w: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    t = pd.DataFrame(np.repeat(np.arange(len(df), dtype=float)[:, None], df.shape[1], axis=1),
                     index=df.index, columns=df.columns)
    cov = _roll(df, w).cov(t)
    var_t = w * (w + 1) / 12.0  # rolling var (ddof=1) of w consecutive integers
    slope = cov / var_t
    return slope, cov, t


def ts_op(op: str, args: list[pd.DataFrame], params: tuple[float, ...]) -> pd.DataFrame:
    x = args[0]
    w = int(params[0])
    if op == "Ref":
        return x.shift(w)
    if op == "Delta":
        return x - x.shift(w)
    if op == "Mean":
        return _roll(x, w).mean()
    if op == "Sum":
        return _roll(x, w).sum()
    if op == "Std":
        return _roll(x, w).std()
    if op == "Var":
        return _roll(x, w).var()
    if op == "Min":
        return _roll(x, w).min()
    if op == "Max":
        return _roll(x, w).max()
    if op == "Skew":
        return _roll(x, w).skew()
    if op == "Kurt":
        return _roll(x, w).kurt()
    if op == "Quantile":
        return _roll(x, w).quantile(float(params[1]), interpolation="linear")
    if op == "TsRank":
        return _roll(x, w).rank(pct=True)
    if op == "EMA":
        return x.ewm(span=w, adjust=False, min_periods=w).mean()
    if op == "IdxMax":
        return _windows(x, w, lambda win: np.argmax(win, axis=-1) + 1.0)
    if op == "IdxMin":
        return _windows(x, w, lambda win: np.argmin(win, axis=-1) + 1.0)
    if op == "WMA":
        wt = np.arange(1, w + 1, dtype=float)
        return _windows(x, w, lambda win: (win * wt).sum(axis=-1) / wt.sum())
    if op in ("Slope", "Rsquare", "Resi"):
        slope, _, t = _slope_parts(x, w)
        if op == "Slope":
            return slope
        if op == "Rsquare":
            return _roll(x, w).corr(t) ** 2
        mean = _roll(x, w).mean()
        return x - (mean + slope * (w - 1) / 2.0)
    if op in ("Corr", "Cov"):
        y = args[1]
        both = x.notna() & y.notna()
        xm, ym = x.where(both), y.where(both)
        return _roll(xm, w).corr(ym) if op == "Corr" else _roll(xm, w).cov(ym)
    raise KeyError(op)


def cs_op(op: str, x: pd.DataFrame) -> pd.DataFrame:
    if op == "Rank":
        return x.rank(axis=1, pct=True)
    if op == "Demean":
        return x.sub(x.mean(axis=1), axis=0)
    if op == "ZScore":
        return x.sub(x.mean(axis=1), axis=0).div(x.std(axis=1), axis=0)
    raise KeyError(op)


def elem_op(op: str, a: list[Any]) -> Any:
    with np.errstate(all="ignore"):
        if op == "Add":
            return a[0] + a[1]
        if op == "Sub":
            return a[0] - a[1]
        if op == "Mul":
            return a[0] * a[1]
        if op == "Div":
            return a[0] / a[1]
        if op == "Neg":
            return -a[0]
        if op == "Abs":
            return a[0].abs()
        if op == "Log":
            return np.log(a[0])
        if op == "Sign":
            return np.sign(a[0])
        if op == "Power":
            return a[0] ** a[1]
        if op in ("Greater", "Less"):
            x, y = a
            both = x.notna() & (y.notna() if isinstance(y, pd.DataFrame) else True)
            res = np.maximum(x, y) if op == "Greater" else np.minimum(x, y)
            return res.where(both)
        if op in ("Gt", "Ge", "Lt", "Le", "Eq", "Ne"):
            x, y = a
            f = {"Gt": x.gt, "Ge": x.ge, "Lt": x.lt, "Le": x.le, "Eq": x.eq, "Ne": x.ne}[op]
            res = f(y).astype(float)
            ok = x.notna() & (y.notna() if isinstance(y, pd.DataFrame) else True)
            return res.where(ok)
        if op == "If":
            c, x, y = a
            return x.where(c != 0, y).where(c.notna())
    raise KeyError(op)


def evaluate(node: Node, frames: dict[str, pd.DataFrame], memo: dict[str, Any] | None = None) -> Any:
    """Value of ``node`` on wide frames (a DataFrame, or a float for a constant)."""
    memo = {} if memo is None else memo
    if node.key in memo:
        return memo[node.key]
    if node.op == FIELD:
        res: Any = frames[node.name]
    elif node.op == CONST:
        res = node.value
    else:
        args = [evaluate(a, frames, memo) for a in node.args]
        from mystocks_gpu.gpu_ops.factors.ops import CS, OPS, TS

        kind = OPS[node.op].kind
        if kind == TS:
            args = [a if isinstance(a, pd.DataFrame) else
                    pd.DataFrame(a, index=frames["close"].index, columns=frames["close"].columns)
                    for a in args]
            raw = [a.where(np.isfinite(a)) for a in args]
            res = ts_op(node.op, raw, node.params)
            if node.op not in ("Ref", "Delta", "EMA"):
                bad = _bad(args[0], int(node.params[0]))
                if len(args) > 1:
                    bad |= _bad(args[1], int(node.params[0]))
                res = res.mask(bad)
        elif kind == CS:
            res = cs_op(node.op, args[0])
        else:
            res = elem_op(node.op, args)
    memo[node.key] = res
    return res


def frames_of(fields: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    """Wide frames of ``(n_dates, n_symbols)`` arrays."""
    return {k: pd.DataFrame(v) for k, v in fields.items()}


def ic_table(f: pd.DataFrame, fwd: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Pearson and Spearman IC per date (rows with both finite), vectorised pandas."""
    ok = np.isfinite(f) & np.isfinite(fwd)
    fm, rm = f.where(ok), fwd.where(ok)
    ic = fm.corrwith(rm, axis=1)
    ric = fm.rank(axis=1).corrwith(rm.rank(axis=1), axis=1)
    return ic, ric


def binnable_dates(f: pd.DataFrame, quantiles: int = 5) -> pd.Series:
    """Per date, True where ``pd.qcut(row, quantiles)`` of the row's non-NaN values has unique
    edges: the dates Alphalens keeps (``get_clean_factor``'s ``quantize_factor`` gives NaN
    quantiles on a date whose edges repeat, and ``dropna`` then removes the date from every
    metric). The edges are the row quantiles at ``np.linspace(0, 1, quantiles + 1)``, linear
    interpolation, as ``qcut`` computes them."""
    edges = f.quantile(np.linspace(0.0, 1.0, quantiles + 1), axis=1)  # (quantiles + 1, n_dates)
    return (edges.diff().iloc[1:] != 0).all(axis=0)
