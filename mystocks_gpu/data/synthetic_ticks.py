"""A realistic, deterministic synthetic market: trades and top-of-book quotes, interleaved.

- per-symbol geometric Brownian motion mid (annualised drift ``mu``, volatility 15-60 %);
- spread of 1-20 bps per symbol, prices on a 0.01 tick grid, bid < ask always;
- Zipf-distributed symbol activity (a few names trade most);
- Poisson event arrivals at ``events_per_s`` of exchange time, so event time increases per symbol;
- trades hit the bid or lift the offer (side -1/+1) with log-normal sizes in round lots; trades
  carry the prevailing quote; quotes carry mid in ``price`` and size 0.

Same ``seed`` -> same ticks, bit for bit.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

TRADE, QUOTE = 0, 1
KIND_NAMES = ("TRADE", "QUOTE")
#: 2026-01-05 14:30:00 UTC (a Monday's US open): the default start of synthetic event time, ns
DEFAULT_START_NS = 1_767_623_400 * 10**9
#: exchange seconds per trading year used to scale GBM steps
SECONDS_PER_YEAR = 252 * 6.5 * 3600


@dataclass(frozen=True)
class SyntheticMarket:
    """Parameters of the generator; all defaults give a plausible US-equity-like tape."""

    n_symbols: int = 100
    seed: int = 7
    start_ns: int = DEFAULT_START_NS
    events_per_s: float = 10_000.0
    trade_fraction: float = 0.3
    zipf_s: float = 1.1
    mu: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.n_symbols <= 200_000:
            raise ValueError("n_symbols must be 1..200000")
        if not 0 < self.trade_fraction <= 1:
            raise ValueError("trade_fraction must be in (0, 1]")
        if self.events_per_s <= 0:
            raise ValueError("events_per_s must be > 0")


def symbol_names(n: int, seed: int) -> list[str]:
    """``n`` distinct ticker-like names (3-5 capital letters), deterministic in ``seed``."""
    rng = np.random.default_rng(seed ^ 0x5EED)
    letters = np.array(list(string.ascii_uppercase))
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = int(rng.integers(3, 6))
        name = "".join(rng.choice(letters, k))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def generate(market: SyntheticMarket, count: int, offset: int = 0) -> dict[str, np.ndarray]:
    """``count`` ticks as columns: sym (int32 code), ts (int64 ns), seq (int64), kind (int8),
    price, size, bid, ask, bid_size, ask_size (float64), side (int8).

    ``offset`` is unused by the maths but kept for API symmetry with :func:`iter_chunks`.
    """
    rng = np.random.default_rng(market.seed)
    S = market.n_symbols
    # static per-symbol parameters
    p0 = np.exp(rng.uniform(np.log(10), np.log(500), S))
    vol = rng.uniform(0.15, 0.60, S)
    spread_bps = rng.uniform(1, 20, S)
    ranks = rng.permutation(S) + 1
    w = 1.0 / ranks ** market.zipf_s
    w /= w.sum()
    # event stream
    sym = rng.choice(S, size=count, p=w).astype(np.int32)
    gaps = rng.exponential(1e9 / market.events_per_s, count)
    ts = market.start_ns + np.cumsum(gaps).astype(np.int64)
    ts = np.maximum.accumulate(ts)
    # per-symbol GBM along each symbol's own event times
    order = np.argsort(sym, kind="stable")
    s_sorted = sym[order]
    t_sorted = ts[order]
    first = np.ones(count, bool)
    first[1:] = s_sorted[1:] != s_sorted[:-1]
    dt = np.diff(t_sorted, prepend=t_sorted[:1]).astype(np.float64) / 1e9 / SECONDS_PER_YEAR
    dt[first] = 0.0
    sig = vol[s_sorted]
    z = rng.standard_normal(count)
    inc = (market.mu - 0.5 * sig**2) * dt + sig * np.sqrt(dt) * z
    inc[first] = 0.0
    csum = np.cumsum(inc)
    starts = np.flatnonzero(first)
    base = np.repeat(csum[starts], np.diff(np.append(starts, count)))
    log_mid = np.log(p0[s_sorted]) + (csum - base)
    mid_sorted = np.exp(log_mid)
    seq_sorted = np.arange(count) - np.repeat(starts, np.diff(np.append(starts, count)))
    mid = np.empty(count)
    mid[order] = mid_sorted
    seq = np.empty(count, np.int64)
    seq[order] = seq_sorted
    # book on a 0.01 grid
    half = mid * spread_bps[sym] / 2e4
    bid = np.maximum(np.floor((mid - half) * 100.0) / 100.0, 0.01)
    ask = np.maximum(np.ceil((mid + half) * 100.0) / 100.0, bid + 0.01)
    ask = np.round(ask, 2)
    bid = np.round(bid, 2)
    bid_size = 100.0 * rng.geometric(0.3, count)
    ask_size = 100.0 * rng.geometric(0.3, count)
    kind = np.where(rng.random(count) < market.trade_fraction, TRADE, QUOTE).astype(np.int8)
    buy = rng.random(count) < 0.5
    side = np.where(kind == TRADE, np.where(buy, 1, -1), 0).astype(np.int8)
    trade_px = np.where(buy, ask, bid)
    lots = np.maximum(1.0, np.round(rng.lognormal(0.0, 1.0, count)))
    price = np.where(kind == TRADE, trade_px, np.round((bid + ask) / 2.0, 4))
    size = np.where(kind == TRADE, 100.0 * lots, 0.0)
    return {"sym": sym, "ts": ts, "seq": seq, "kind": kind, "price": price, "size": size, "side": side,
            "bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size}


def to_records(cols: dict[str, np.ndarray], names: list[str]) -> Iterator[dict[str, object]]:
    """Rows of :func:`generate` output as ``mystocks.md.Tick`` records (dicts)."""
    n = len(cols["ts"])
    sym, ts, seq, kind = cols["sym"].tolist(), cols["ts"].tolist(), cols["seq"].tolist(), cols["kind"].tolist()
    price, size, side = cols["price"].tolist(), cols["size"].tolist(), cols["side"].tolist()
    bid, ask, bsz, asz = (cols[k].tolist() for k in ("bid", "ask", "bid_size", "ask_size"))
    for i in range(n):
        yield {"symbol": names[sym[i]], "ts_event": ts[i], "seq": seq[i], "kind": KIND_NAMES[kind[i]],
               "price": price[i], "size": size[i], "side": side[i], "bid": bid[i], "ask": ask[i],
               "bid_size": bsz[i], "ask_size": asz[i]}
