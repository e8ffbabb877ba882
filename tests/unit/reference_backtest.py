"""Independent reference backtest for the tests: plain pandas indicators and a Python loop per cell.

Written from the rules documented in ``mystocks_gpu.gpu_ops.backtest.engine`` / ``strategies`` /
``stats``, without the engine's kernels: pandas ``rolling`` for windows, a dict-based broker with one
function per order, and statistics from the full equity series with NumPy.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: small parameter grids per strategy, shared by the engine and vectorbt tests
GRIDS = {
    "ma_cross": {"fast": [3, 8], "slow": [8, 21, 34]},
    "breakout": {"window": [5, 20]},
    "zscore": {"window": [10, 25], "entry_z": [1.0, 1.8], "exit_z": [0.0]},
    "rsi": {"period": [6, 14], "lower": [30.0, 40.0], "upper": [60.0]},
    "signal": {"threshold_long": [0.2, 0.5], "threshold_exit": [-0.1, 0.1]},
}


def ref_grid(strategy: str, grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """Cartesian product (names sorted, values sorted) minus combinations breaking the rules."""
    strategy = {"bollinger": "zscore"}.get(strategy, strategy)
    names = sorted(grid)
    out = []
    for combo in itertools.product(*(sorted(set(grid[n])) for n in names)):
        p = dict(zip(names, combo, strict=True))
        if strategy == "ma_cross" and not p["fast"] < p["slow"]:
            continue
        if strategy == "zscore" and not p["exit_z"] <= p["entry_z"]:
            continue
        if strategy == "rsi" and not p["lower"] <= p["upper"]:
            continue
        if strategy == "signal" and not p["threshold_exit"] <= p["threshold_long"]:
            continue
        out.append(p)
    return out


def wilder_rsi(close: np.ndarray, period: int) -> np.ndarray:
    """Wilder RSI with SMA seeding; a non-finite close restarts the warm-up."""
    out = np.full(close.shape[0], np.nan)
    gains: list[float] = []
    losses: list[float] = []
    avg_g = avg_l = None
    for t in range(1, close.shape[0]):
        if not (math.isfinite(close[t]) and math.isfinite(close[t - 1])):
            gains, losses, avg_g, avg_l = [], [], None, None
            continue
        d = close[t] - close[t - 1]
        g, lo = max(d, 0.0), max(-d, 0.0)
        if avg_g is None:
            gains.append(g)
            losses.append(lo)
            if len(gains) == period:
                avg_g, avg_l = sum(gains) / period, sum(losses) / period
        else:
            avg_g = (avg_g * (period - 1) + g) / period
            avg_l = (avg_l * (period - 1) + lo) / period
        if avg_g is not None:
            out[t] = 50.0 if avg_g + avg_l == 0 else 100.0 * avg_g / (avg_g + avg_l)
    return out


def ref_signals(
    strategy: str,
    p: dict[str, float],
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    sig: np.ndarray | None,
    long_short: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EL, XL, ES, XS boolean arrays over the bars of one symbol for one parameter set."""
    strategy = {"bollinger": "zscore"}.get(strategy, strategy)
    cs, hs, ls = pd.Series(c), pd.Series(h), pd.Series(lo)
    if strategy == "ma_cross":
        f = cs.rolling(int(p["fast"])).mean()
        s = cs.rolling(int(p["slow"])).mean()
        up = (f > s) & (f.shift(1) <= s.shift(1))
        dn = (f < s) & (f.shift(1) >= s.shift(1))
        el, xl, es, xs = up, dn, dn, up
    elif strategy == "breakout":
        w = int(p["window"])
        hh = hs.rolling(w).max().shift(1)
        ll = ls.rolling(w).min().shift(1)
        up, dn = cs > hh, cs < ll
        el, xl, es, xs = up, dn, dn, up
    elif strategy == "zscore":
        w = int(p["window"])
        m = cs.rolling(w).mean()
        sd = cs.rolling(w).std(ddof=0)
        z = (cs - m) / sd
        z[~(sd > 1e-12 * m.abs())] = np.nan
        e, x = p["entry_z"], p["exit_z"]
        el, xl, es, xs = z < -e, z > -x, z > e, z < x
    elif strategy == "rsi":
        r = pd.Series(wilder_rsi(c, int(p["period"])))
        el, xl, es, xs = r < p["lower"], r > p["upper"], r > p["upper"], r < p["lower"]
    elif strategy == "signal":
        v = pd.Series(sig)
        tl, te = p["threshold_long"], p["threshold_exit"]
        el, xl, es, xs = v > tl, v < te, v < -tl, v > -te
    else:
        raise ValueError(strategy)
    valid = np.isfinite(o) & np.isfinite(c)
    arrs = [np.asarray(a, dtype=bool) & valid for a in (el, xl, es, xs)]
    if not long_short:
        arrs[2] = np.zeros_like(valid)
        arrs[3] = np.zeros_like(valid)
    return arrs[0], arrs[1], arrs[2], arrs[3]


@dataclass
class Broker:
    """Cash, position and trade book of one cell."""

    cash: float
    fee: float
    fixed_fee: float
    slip: float
    sizing: str
    size: float
    units: float = 0.0
    entry_flow: float = 0.0
    fees_paid: float = 0.0
    trade_pnls: list[float] = field(default_factory=list)

    def _budget_units(self, budget: float, fill: float) -> tuple[float, float] | None:
        """(units, fee) when the whole budget pays notional + fee; None if it cannot cover the fixed fee."""
        if budget - self.fixed_fee <= 0:
            return None
        notional = (budget - self.fixed_fee) / (1 + self.fee)
        return notional / fill, budget - notional

    def buy_open(self, px: float) -> None:
        fill = px * (1 + self.slip)
        if self.sizing == "fixed":
            units = self.size / px
            notional = units * fill
            fee = notional * self.fee + self.fixed_fee
            if notional + fee <= self.cash:
                self.units, self.cash = units, self.cash - (notional + fee)
                self.fees_paid += fee
                self.entry_flow = notional + fee
                return
            budget = self.cash
        else:
            budget = self.size * self.cash
        got = self._budget_units(budget, fill)
        if got is None:
            return
        self.units = got[0]
        self.fees_paid += got[1]
        self.cash -= budget
        self.entry_flow = budget

    def sell_short(self, px: float) -> None:
        fill = px * (1 - self.slip)
        if self.sizing == "fixed":
            units = self.size / px
        else:
            got = self._budget_units(self.size * self.cash, fill)
            if got is None:
                return
            units = got[0]
        proceeds = units * fill
        fee = proceeds * self.fee + self.fixed_fee
        if proceeds - fee < 0:
            return
        self.units = -units
        self.cash += proceeds - fee
        self.fees_paid += fee
        self.entry_flow = proceeds - fee

    def sell_close(self, px: float) -> bool:
        proceeds = self.units * px * (1 - self.slip)
        fee = proceeds * self.fee + self.fixed_fee
        if proceeds - fee < 0:
            return False
        self.cash += proceeds - fee
        self.fees_paid += fee
        self.trade_pnls.append((proceeds - fee) - self.entry_flow)
        self.units = 0.0
        return True

    def buy_cover(self, px: float) -> None:
        cost = -self.units * px * (1 + self.slip)
        fee = cost * self.fee + self.fixed_fee
        self.cash -= cost + fee
        self.fees_paid += fee
        self.trade_pnls.append(self.entry_flow - (cost + fee))
        self.units = 0.0

    def act(self, el: bool, xl: bool, es: bool, xs: bool, px: float) -> None:
        if el and xl:
            el = xl = False
        if es and xs:
            es = xs = False
        if el and es:
            el = es = False
        if self.units > 0:
            if es:
                if self.sell_close(px):
                    self.sell_short(px)
            elif xl:
                self.sell_close(px)
        elif self.units < 0:
            if el:
                self.buy_cover(px)
                self.buy_open(px)
            elif xs:
                self.buy_cover(px)
        elif el:
            self.buy_open(px)
        elif es:
            self.sell_short(px)


def ref_cell(
    o: np.ndarray,
    c: np.ndarray,
    sigs: tuple[np.ndarray, ...],
    *,
    init_cash: float,
    fee: float,
    fixed_fee: float,
    slip: float,
    sizing: str,
    size: float,
    execution: str,
    bars_per_year: float,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Simulate one cell; return (stats, equity per bar, drawdown per bar)."""
    b = Broker(init_cash, fee, fixed_fee, slip, sizing, size)
    n = c.shape[0]
    eq_bar = np.empty(n)
    valid_eq: list[float] = []
    exposed = 0
    pending: tuple[bool, bool, bool, bool] | None = None
    last = init_cash
    for t in range(n):
        if not (math.isfinite(o[t]) and math.isfinite(c[t])):
            pending = None
            eq_bar[t] = last
            continue
        if execution == "next_open" and pending is not None:
            b.act(*pending, o[t])
        pending = None
        s = (bool(sigs[0][t]), bool(sigs[1][t]), bool(sigs[2][t]), bool(sigs[3][t]))
        if execution == "close":
            b.act(*s, c[t])
        else:
            pending = s
        last = b.cash + b.units * c[t]
        eq_bar[t] = last
        valid_eq.append(last)
        exposed += b.units != 0
    eqs = np.array(valid_eq)
    prev = np.concatenate([[init_cash], eqs[:-1]])
    r = np.where(prev > 0, eqs / np.where(prev > 0, prev, 1.0) - 1.0, 0.0)
    nv = len(eqs)
    peak_v = np.maximum.accumulate(np.concatenate([[init_cash], eqs]))[1:]
    under = eqs < peak_v
    longest = run = 0
    for u in under:
        run = run + 1 if u else 0
        longest = max(longest, run)
    ann = math.sqrt(bars_per_year)
    final = eqs[-1] if nv else init_cash
    st: dict[str, float] = {"total_return": final / init_cash - 1}
    if nv == 0:
        st["cagr"] = math.nan
    elif final <= 0:
        st["cagr"] = -1.0
    else:
        st["cagr"] = (final / init_cash) ** (bars_per_year / nv) - 1
    if nv >= 2:
        sd = float(np.std(r, ddof=1))
        mu = float(np.mean(r))
        st["ann_volatility"] = sd * ann
        st["sharpe"] = mu / sd * ann if sd > 0 else 0.0
        down = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
        st["sortino"] = mu / down * ann if down > 0 else (math.inf if mu > 0 else 0.0)
    else:
        st["ann_volatility"] = st["sharpe"] = st["sortino"] = math.nan
    st["max_drawdown"] = float(np.max(np.where(under, 1 - eqs / peak_v, 0.0))) if nv else 0.0
    st["max_drawdown_duration"] = longest
    pnls = b.trade_pnls
    st["win_rate"] = sum(x > 0 for x in pnls) / len(pnls) if pnls else math.nan
    st["n_trades"] = len(pnls)
    st["exposure"] = exposed / nv if nv else math.nan
    st["fees_paid"] = b.fees_paid
    peak_bar = np.maximum.accumulate(np.concatenate([[init_cash], eq_bar]))[1:]
    dd_bar = np.where(eq_bar < peak_bar, 1 - eq_bar / peak_bar, 0.0)
    return st, eq_bar, dd_bar


def ref_backtest(
    prices: dict[str, np.ndarray],
    symbols: list[str],
    strategy: str,
    grid: dict[str, list[float]],
    *,
    direction: str = "long_only",
    execution: str = "next_open",
    init_cash: float = 100_000.0,
    fee: float = 0.001,
    fixed_fee: float = 0.0,
    slip: float = 0.0,
    sizing: str = "fraction",
    size: float = 1.0,
    bars_per_year: float = 252.0,
) -> tuple[pd.DataFrame, dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]]:
    """Stats table (symbol-major, like the engine) and curves keyed by (symbol, param_id)."""
    rows: list[dict[str, Any]] = []
    curves = {}
    params = ref_grid(strategy, grid)
    for si, sym in enumerate(symbols):
        o, h, lo, c = (prices[k][si] for k in ("open", "high", "low", "close"))
        sig = prices["signal"][si] if "signal" in prices else None
        for pi, p in enumerate(params):
            sigs = ref_signals(strategy, p, o, h, lo, c, sig, direction == "long_short")
            st, eq, dd = ref_cell(
                o,
                c,
                sigs,
                init_cash=init_cash,
                fee=fee,
                fixed_fee=fixed_fee,
                slip=slip,
                sizing=sizing,
                size=size,
                execution=execution,
                bars_per_year=bars_per_year,
            )
            rows.append({"symbol": sym, "param_id": pi, "params": p, **st})
            curves[(sym, pi)] = (eq, dd)
    return pd.DataFrame(rows), curves


def random_bars(
    seed: int = 0, n_symbols: int = 4, n_bars: int = 260, *, gaps: bool = True
) -> dict[str, np.ndarray]:
    """GBM-like OHLC + a random signal, float64 ``(n_symbols, n_bars)``.

    With ``gaps``: symbol 1 starts late (leading NaN bars), symbol 2 has a whole-bar hole, symbol 3
    one bar with only the open missing; the last bar of every symbol is valid.
    """
    rng = np.random.default_rng(seed)
    ret = rng.normal(0.0003, 0.02, (n_symbols, n_bars))
    close = 50.0 * np.exp(np.cumsum(ret, axis=1)) * rng.uniform(0.5, 2.0, (n_symbols, 1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1) * np.exp(
        rng.normal(0, 0.006, (n_symbols, n_bars))
    )
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, (n_symbols, n_bars))))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, (n_symbols, n_bars))))
    signal = np.tanh(np.cumsum(rng.normal(0, 0.4, (n_symbols, n_bars)), axis=1) / 3.0)
    out = {"open": open_, "high": high, "low": low, "close": close, "signal": signal}
    if gaps and n_symbols >= 4 and n_bars >= 120:
        for a in out.values():
            a[1, :37] = np.nan
            a[2, 70:74] = np.nan
        out["open"][3, 90] = np.nan
    return out
