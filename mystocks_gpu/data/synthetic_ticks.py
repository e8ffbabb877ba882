"""A realistic, deterministic synthetic market: trades and top-of-book quotes, interleaved.

- per-symbol geometric Brownian motion mid (annualised drift ``mu``, volatility 15-60 %);
- spread of 1-20 bps per symbol, prices on a 0.01 tick grid, bid < ask always;
- Zipf-distributed symbol activity (a few names trade most);
- Poisson event arrivals at ``events_per_s`` of exchange time, so event time increases per symbol;
- trades hit the bid or lift the offer (side -1/+1) with log-normal sizes in round lots; trades
  carry the prevailing quote; quotes carry mid in ``price`` and size 0.

Same ``seed`` -> same ticks, bit for bit. The tape is drawn a chunk at a time (:class:`SyntheticTape`;
:func:`generate` and :func:`chunks` draw :data:`GEN_CHUNK` ticks a chunk), each chunk going on from
the last, so a feed of any length holds one chunk in memory.
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


#: ticks generated per draw: :func:`generate` and :func:`chunks` draw the tape this many ticks at a
#: time, so a tape of any length holds at most one chunk's columns (~70 MB) and the same seed gives
#: the same ticks whichever of the two makes them
GEN_CHUNK = 1_000_000


class SyntheticTape:
    """The tape of one :class:`SyntheticMarket`, drawn a chunk at a time: each :meth:`next` continues
    where the last one ended (event time, each symbol's mid along its GBM path and its ``seq``), so a
    feed can run for as long as wanted in bounded memory. The per-symbol parameters are drawn once,
    then every chunk draws its columns from the same random stream in a fixed order."""

    def __init__(self, market: SyntheticMarket) -> None:
        self.market = market
        self.rng = rng = np.random.default_rng(market.seed)
        S = market.n_symbols
        # static per-symbol parameters
        self.p0 = np.exp(rng.uniform(np.log(10), np.log(500), S))
        self.vol = rng.uniform(0.15, 0.60, S)
        self.spread_bps = rng.uniform(1, 20, S)
        ranks = rng.permutation(S) + 1
        w = 1.0 / ranks ** market.zipf_s
        self.weights = w / w.sum()
        #: per symbol: log mid and event time (ns, -1 before its first tick) of its last tick, next seq
        self.log_mid = np.log(self.p0)
        self.last_ts = np.full(S, -1, np.int64)
        self.next_seq = np.zeros(S, np.int64)
        #: event time of the tape's last tick so far (ns)
        self.t_end = market.start_ns
        #: ticks drawn so far
        self.drawn = 0

    def next(self, count: int) -> dict[str, np.ndarray]:
        """The next ``count`` ticks as columns: sym (int32 code), ts (int64 ns), seq (int64), kind
        (int8), price, size, bid, ask, bid_size, ask_size (float64), side (int8)."""
        m, rng, S = self.market, self.rng, self.market.n_symbols
        # event stream
        sym = rng.choice(S, size=count, p=self.weights).astype(np.int32)
        gaps = rng.exponential(1e9 / m.events_per_s, count)
        ts = self.t_end + np.cumsum(gaps).astype(np.int64)
        ts = np.maximum.accumulate(ts)
        # per-symbol GBM along each symbol's own event times, from where each symbol's path stands
        order = np.argsort(sym, kind="stable")
        s_sorted = sym[order]
        t_sorted = ts[order]
        first = np.ones(count, bool)
        first[1:] = s_sorted[1:] != s_sorted[:-1]
        starts = np.flatnonzero(first)
        lens = np.diff(np.append(starts, count))
        s_first = s_sorted[starts]
        prev_t = self.last_ts[s_first]
        seen = prev_t >= 0  # symbols with a tick in an earlier chunk go on from it
        dt = np.diff(t_sorted, prepend=t_sorted[:1]).astype(np.float64) / 1e9 / SECONDS_PER_YEAR
        dt[starts] = np.where(seen, (t_sorted[starts] - prev_t).astype(np.float64) / 1e9 / SECONDS_PER_YEAR, 0.0)
        sig = self.vol[s_sorted]
        z = rng.standard_normal(count)
        inc = (m.mu - 0.5 * sig**2) * dt + sig * np.sqrt(dt) * z
        inc[starts] = np.where(seen, inc[starts], 0.0)
        csum = np.cumsum(inc)
        base = np.repeat(csum[starts] - inc[starts], lens)
        log_mid = np.repeat(self.log_mid[s_first], lens) + (csum - base)
        mid_sorted = np.exp(log_mid)
        seq_sorted = np.arange(count) - np.repeat(starts, lens) + np.repeat(self.next_seq[s_first], lens)
        ends = starts + lens - 1
        self.log_mid[s_first] = log_mid[ends]
        self.last_ts[s_first] = t_sorted[ends]
        self.next_seq[s_first] += lens
        if count:
            self.t_end = int(ts[-1])
        self.drawn += count
        mid = np.empty(count)
        mid[order] = mid_sorted
        seq = np.empty(count, np.int64)
        seq[order] = seq_sorted
        # book on a 0.01 grid
        half = mid * self.spread_bps[sym] / 2e4
        bid = np.maximum(np.floor((mid - half) * 100.0) / 100.0, 0.01)
        ask = np.maximum(np.ceil((mid + half) * 100.0) / 100.0, bid + 0.01)
        ask = np.round(ask, 2)
        bid = np.round(bid, 2)
        bid_size = 100.0 * rng.geometric(0.3, count)
        ask_size = 100.0 * rng.geometric(0.3, count)
        kind = np.where(rng.random(count) < m.trade_fraction, TRADE, QUOTE).astype(np.int8)
        buy = rng.random(count) < 0.5
        side = np.where(kind == TRADE, np.where(buy, 1, -1), 0).astype(np.int8)
        trade_px = np.where(buy, ask, bid)
        lots = np.maximum(1.0, np.round(rng.lognormal(0.0, 1.0, count)))
        price = np.where(kind == TRADE, trade_px, np.round((bid + ask) / 2.0, 4))
        size = np.where(kind == TRADE, 100.0 * lots, 0.0)
        return {"sym": sym, "ts": ts, "seq": seq, "kind": kind, "price": price, "size": size, "side": side,
                "bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size}


def chunks(market: SyntheticMarket, count: int | None, chunk: int = GEN_CHUNK) -> Iterator[dict[str, np.ndarray]]:
    """The market's tape as columns of at most ``chunk`` ticks each, ``count`` ticks in all (``None``:
    without end). The ticks are :func:`generate`'s for the same ``count`` when ``chunk`` is
    :data:`GEN_CHUNK`."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    tape = SyntheticTape(market)
    while count is None or tape.drawn < count:
        yield tape.next(chunk if count is None else min(chunk, count - tape.drawn))


def generate(market: SyntheticMarket, count: int) -> dict[str, np.ndarray]:
    """``count`` ticks as columns (see :meth:`SyntheticTape.next`), drawn :data:`GEN_CHUNK` at a time."""
    if count <= GEN_CHUNK:
        return SyntheticTape(market).next(count)
    parts = list(chunks(market, count, GEN_CHUNK))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
