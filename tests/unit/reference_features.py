"""Independent pandas reference of the tick features and time bars (tests only).

Written with plain pandas ``groupby`` + ``rolling`` / ``ewm`` / ``resample`` from the
documented semantics in ``mystocks_gpu.gpu_ops.features`` and ``bars``, without looking at
the kernels' arithmetic. Also holds the random tick generator the tests share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.features_config import NS_PER_DAY, FeatureConfig
from mystocks_gpu.gpu_ops.tick_columns import COLUMN_DTYPES, TickColumns

# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def random_ticks(
    seed: int = 0,
    n: int = 3000,
    n_symbols: int = 8,
    *,
    mean_gap_ns: int = 30_000_000,
    late_symbol: bool = True,
) -> pd.DataFrame:
    """Random interleaved trades/quotes in arrival order, per symbol ts non-decreasing.

    Symbols alternate price levels ~1e2 and ~1e4; symbol 1 has tiny variance around 1e4
    (steps of 1e-4), symbol 2 trades on a 0.01 grid with frequent repeats (constant
    windows), the last symbol has only 3 ticks, and (``late_symbol``) symbol
    ``n_symbols-2`` first appears in the second half of the stream. Arrival order is a
    random interleaving of per-symbol streams, so ts is not globally sorted.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, n_symbols)
    weights[-1] = 0.0
    sym = rng.choice(n_symbols, size=n - 3, p=weights / weights.sum())
    if late_symbol and n_symbols >= 3:
        late = n_symbols - 2
        first_half = np.arange(n - 3) < (n - 3) // 2
        sym[first_half & (sym == late)] = 0
    pos = np.sort(rng.choice(n, 3, replace=False))
    full = np.empty(n, dtype=np.int64)
    mask = np.ones(n, bool)
    mask[pos] = False
    full[mask] = sym
    full[pos] = n_symbols - 1
    sym = full

    kind = (rng.random(n) < 0.4).astype(np.int8)  # ~60% trades
    ts = np.zeros(n, dtype=np.int64)
    price = np.zeros(n)
    t0 = 1_700_000_000 * 10**9 + rng.integers(0, 10**9, n_symbols)
    level = np.where(np.arange(n_symbols) % 2 == 0, 100.0, 10_000.0)
    for s in range(n_symbols):
        idx = np.flatnonzero(sym == s)
        k = idx.size
        gaps = rng.exponential(mean_gap_ns, k).astype(np.int64)
        gaps[rng.random(k) < 0.1] = 0  # equal timestamps
        ts[idx] = t0[s] + np.cumsum(gaps)
        if s == 1:
            steps = rng.standard_normal(k) * 1e-4
        elif s == 2:
            steps = rng.choice([-0.01, 0.0, 0.0, 0.0, 0.01], k)
        else:
            steps = rng.standard_normal(k) * level[s] * 1e-3
        px = level[s] + np.cumsum(steps)
        if s == 2:
            px = np.round(px, 2)
        price[idx] = px
    half = np.abs(rng.standard_normal(n)) * price * 1e-4 + 1e-6
    bid = price - half
    ask = price + half
    bid_size = rng.integers(0, 1000, n).astype(float)
    ask_size = rng.integers(0, 1000, n).astype(float)
    zero_book = rng.random(n) < 0.01
    bid_size[zero_book] = 0.0
    ask_size[zero_book] = 0.0
    size = np.where(kind == 0, rng.integers(1, 500, n), 0).astype(float)
    size[(kind == 0) & (rng.random(n) < 0.02)] = 0.0  # a few zero-size trades
    side = np.where(kind == 0, rng.choice([-1, 0, 1], n, p=[0.45, 0.1, 0.45]), 0)
    return pd.DataFrame(
        {
            "sym": sym.astype(np.int32),
            "ts": ts,
            "kind": kind,
            "price": price,
            "size": size,
            "side": side.astype(np.int8),
            "bid": bid,
            "ask": ask,
            "bid_size": bid_size,
            "ask_size": ask_size,
        }
    )


def to_columns(df: pd.DataFrame) -> TickColumns:
    """The frame as a host :class:`TickColumns`."""
    return TickColumns.from_numpy(**{k: df[k].to_numpy() for k in COLUMN_DTYPES})


# --------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------


def _std1(w: np.ndarray) -> float:
    # numpy's two-pass std: pandas' online rolling var loses ~1e-5 relative for prices
    # ~1e4 with ~1e-4 variation, so the reference uses the exact definition per window
    return float(np.std(w, ddof=1)) if len(w) > 1 else np.nan


def _rolling(series: pd.Series, by: pd.Series, fn) -> pd.Series:
    return series.groupby(by, sort=False).transform(fn)


def _rsi_one(x: pd.Series, period: int) -> pd.Series:
    out = pd.Series(np.nan, index=x.index)
    delta = x.diff()
    if len(x) <= period:
        return out
    gain = delta.clip(lower=0.0)
    loss = (-delta).clip(lower=0.0)
    g = gain.iloc[period:].copy()
    lo = loss.iloc[period:].copy()
    g.iloc[0] = gain.iloc[1 : period + 1].mean()
    lo.iloc[0] = loss.iloc[1 : period + 1].mean()
    ag = g.ewm(alpha=1.0 / period, adjust=False).mean()
    al = lo.ewm(alpha=1.0 / period, adjust=False).mean()
    rs = ag / al
    rsi = 100.0 - 100.0 / (1.0 + rs)
    rsi[(ag == 0) & (al == 0)] = 50.0
    out.iloc[period:] = rsi.to_numpy()
    return out


def _time_window(g: pd.DataFrame, window_ns: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    ts = g["ts"].to_numpy()
    px = g["price"].to_numpy()
    ser = pd.Series(px, index=pd.DatetimeIndex(ts.astype("datetime64[ns]")))
    roll = ser.rolling(pd.Timedelta(window_ns, unit="ns"))
    mean = roll.mean().to_numpy().copy()
    std = roll.apply(_std1, raw=True).to_numpy().copy()
    start = np.searchsorted(ts, ts - window_ns, side="right")
    capped = np.flatnonzero(np.arange(len(ts)) - start + 1 > cap)
    for i in capped:  # the window holds more than `cap` trades: keep the newest `cap`
        w = px[i - cap + 1 : i + 1]
        mean[i] = w.mean()
        std[i] = w.std(ddof=1)
    return mean, std


def reference_features(df: pd.DataFrame, cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """Every output of ``cfg`` for every row of ``df`` (arrival order), as float64 arrays."""
    N = cfg.window_ticks
    tr = df[df["kind"] == 0].copy()
    by = tr["sym"]
    p = tr["price"]
    prev = p.groupby(by, sort=False).shift(1)
    res = pd.DataFrame(index=tr.index)
    res["last_price"] = p
    res["ret"] = p / prev - 1.0
    res["log_ret"] = np.log(p / prev)

    # session VWAP
    if cfg.session_offset_ns is None:
        sess = pd.Series(0, index=tr.index)
    else:
        sess = (tr["ts"] - cfg.session_offset_ns) // NS_PER_DAY
    pv = p * tr["size"]
    cum = pd.DataFrame({"pv": pv, "v": tr["size"]}).groupby([by, sess], sort=False).cumsum()
    res["vwap_session"] = (cum["pv"] / cum["v"]).where(cum["v"] != 0)

    def roll(series, how):
        return _rolling(series, by, lambda x: getattr(x.rolling(N, min_periods=N), how)())

    spv = roll(pv, "sum")
    sv = roll(tr["size"], "sum")
    res["vwap_roll"] = (spv / sv).where(sv != 0)
    for s in cfg.ema_spans:
        res[f"ema_{s}"] = _rolling(p, by, lambda x, s=s: x.ewm(span=s, adjust=False).mean())
    mean = roll(p, "mean")
    std = _rolling(p, by, lambda x: x.rolling(N, min_periods=N).apply(_std1, raw=True))
    res["roll_mean"] = mean
    res["roll_std"] = std
    res["roll_z"] = ((p - mean) / std).where(std != 0)
    res["boll_upper"] = mean + cfg.bollinger_k * std
    res["boll_lower"] = mean - cfg.bollinger_k * std

    tmean = pd.Series(np.nan, index=tr.index)
    tstd = pd.Series(np.nan, index=tr.index)
    for _, g in tr.groupby("sym", sort=False):
        m, sd = _time_window(g, cfg.window_ns, cfg.max_window_ticks)
        tmean[g.index] = m
        tstd[g.index] = sd
    res["time_mean"] = tmean
    res["time_std"] = tstd

    res["rsi"] = _rolling(p, by, lambda x: _rsi_one(x, cfg.rsi_period))
    fast, slow, sig = cfg.macd
    ema_f = _rolling(p, by, lambda x: x.ewm(span=fast, adjust=False).mean())
    ema_s = _rolling(p, by, lambda x: x.ewm(span=slow, adjust=False).mean())
    macd = ema_f - ema_s
    signal = _rolling(macd, by, lambda x: x.ewm(span=sig, adjust=False).mean())
    res["macd"] = macd
    res["macd_signal"] = signal
    res["macd_hist"] = macd - signal

    sq = roll(res["log_ret"] ** 2, "sum")
    res["rvol"] = np.sqrt(cfg.rvol_scale() * sq)
    flow = roll(tr["side"].astype(float) * tr["size"], "sum")
    res["flow_imb"] = (flow / sv).where(sv != 0)

    # carry each trade row's values onto the following quote rows of the same symbol
    rows = np.arange(len(df), dtype=float)
    last_trade = (
        pd.Series(np.where(df["kind"].to_numpy() == 0, rows, np.nan), index=df.index)
        .groupby(df["sym"].to_numpy(), sort=False)
        .ffill()
        .to_numpy()
    )
    have = ~np.isnan(last_trade)
    src = df.index.to_numpy()[last_trade[have].astype(np.int64)]

    out: dict[str, np.ndarray] = {}
    spread = (df["ask"] - df["bid"]).to_numpy()
    mid = ((df["ask"] + df["bid"]) / 2).to_numpy()
    den = (df["bid_size"] + df["ask_size"]).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        quote_feats = {
            "spread": spread,
            "rel_spread": np.where(mid != 0, spread / mid, np.nan),
            "book_imb": np.where(
                den != 0, (df["bid_size"] - df["ask_size"]).to_numpy() / den, np.nan
            ),
        }
    for name in cfg.output_names():
        if name in quote_feats:
            out[name] = quote_feats[name].astype(np.float64)
            continue
        col = np.full(len(df), np.nan)
        col[have] = res.loc[src, name].to_numpy()
        out[name] = col
    return out


# --------------------------------------------------------------------------------------
# bars
# --------------------------------------------------------------------------------------


def reference_late_mask(df: pd.DataFrame, interval_ns: int, lateness_ns: int) -> np.ndarray:
    """Late trades by definition: the bar's window closed (start + I + L <= the symbol's
    max ts seen before this row, over trades and quotes)."""
    wm: dict[int, int] = {}
    late = np.zeros(len(df), dtype=bool)
    for i, (s, t, k) in enumerate(zip(df["sym"], df["ts"], df["kind"], strict=True)):
        w = wm.get(s)
        t0 = (t // interval_ns) * interval_ns
        if k == 0 and w is not None and t0 + interval_ns + lateness_ns <= w:
            late[i] = True
        wm[s] = t if w is None else max(w, t)
    return late


def reference_bars(
    df: pd.DataFrame, interval_ns: int, late: np.ndarray | None = None
) -> pd.DataFrame:
    """OHLCV/VWAP/count bars of the (non-late) trades, via ``resample`` per symbol on trades
    stably sorted by ts, sorted by (sym, ts_open); bars without trades are dropped."""
    tr = df[(df["kind"] == 0).to_numpy() & (~late if late is not None else True)]
    frames = []
    for s, g in tr.groupby("sym"):
        g = g.sort_values("ts", kind="stable")  # event-time order, arrival order on ties
        x = pd.DataFrame(
            {"price": g["price"].to_numpy(), "size": g["size"].to_numpy()},
            index=pd.DatetimeIndex(g["ts"].to_numpy().astype("datetime64[ns]")),
        )
        x["pv"] = x["price"] * x["size"]
        r = x.resample(pd.Timedelta(interval_ns, unit="ns"), origin="epoch")
        b = pd.DataFrame(
            {
                "open": r["price"].first(),
                "high": r["price"].max(),
                "low": r["price"].min(),
                "close": r["price"].last(),
                "volume": r["size"].sum(),
                "pv": r["pv"].sum(),
                "trades": r["price"].count(),
            }
        )
        b = b[b["trades"] > 0]
        b["vwap"] = (b["pv"] / b["volume"]).where(b["volume"] != 0)
        b["sym"] = s
        b["ts_open"] = b.index.asi8
        frames.append(b.drop(columns="pv").reset_index(drop=True))
    if not frames:
        return pd.DataFrame(
            columns=["sym", "ts_open", "open", "high", "low", "close", "volume", "vwap", "trades"]
        )
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["sym", "ts_open"], kind="stable").reset_index(drop=True)
