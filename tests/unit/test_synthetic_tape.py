"""The synthetic tape drawn chunk by chunk (``SyntheticTape``, ``chunks``, ``generate``) against a
per-tick loop written from the generator's definition: the same random draws, each symbol's GBM
mid stepped tick by tick from its previous tick (whichever chunk that was in), ``seq`` counted per
symbol, event time running on from the last chunk's last tick."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mystocks_gpu.data import synthetic_ticks as st
from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, SyntheticTape, chunks, generate


def _reference(m: SyntheticMarket, sizes: list[int]) -> dict[str, np.ndarray]:
    """The tape of ``m`` drawn in chunks of ``sizes``, one tick at a time in plain Python."""
    rng = np.random.default_rng(m.seed)
    S = m.n_symbols
    p0 = np.exp(rng.uniform(np.log(10), np.log(500), S))
    vol = rng.uniform(0.15, 0.60, S)
    spread = rng.uniform(1, 20, S)
    w = 1.0 / (rng.permutation(S) + 1) ** m.zipf_s
    w /= w.sum()
    last: dict[int, tuple[int, float]] = {}  # symbol -> (event time, log mid) of its last tick
    seq: dict[int, int] = {}
    t_end = m.start_ns
    rows: list[dict[str, float]] = []
    for n in sizes:
        sym = rng.choice(S, size=n, p=w)
        ts = np.maximum.accumulate(t_end + np.cumsum(rng.exponential(1e9 / m.events_per_s, n)).astype(np.int64))
        z = np.empty(n)  # the chunk's normal draws go to its ticks grouped by symbol, in time order
        z[np.argsort(sym, kind="stable")] = rng.standard_normal(n)
        bsz, asz = 100.0 * rng.geometric(0.3, n), 100.0 * rng.geometric(0.3, n)
        u_kind, u_buy = rng.random(n), rng.random(n)
        lots = np.maximum(1.0, np.round(rng.lognormal(0.0, 1.0, n)))
        for i in range(n):
            s, t = int(sym[i]), int(ts[i])
            if s in last:
                dt = (t - last[s][0]) / 1e9 / st.SECONDS_PER_YEAR
                lm = last[s][1] + (m.mu - 0.5 * vol[s] ** 2) * dt + vol[s] * math.sqrt(dt) * z[i]
            else:
                lm = math.log(p0[s])
            last[s] = (t, lm)
            seq[s] = seq.get(s, -1) + 1
            mid = math.exp(lm)
            half = mid * spread[s] / 2e4
            bid = max(math.floor((mid - half) * 100.0) / 100.0, 0.01)
            ask = round(max(math.ceil((mid + half) * 100.0) / 100.0, bid + 0.01), 2)
            bid = round(bid, 2)
            trade, buy = u_kind[i] < m.trade_fraction, u_buy[i] < 0.5
            rows.append({"sym": s, "ts": t, "seq": seq[s], "kind": st.TRADE if trade else st.QUOTE,
                         "price": (ask if buy else bid) if trade else round((bid + ask) / 2.0, 4),
                         "size": 100.0 * lots[i] if trade else 0.0, "side": (1 if buy else -1) if trade else 0,
                         "bid": bid, "ask": ask, "bid_size": bsz[i], "ask_size": asz[i]})
        if n:
            t_end = int(ts[-1])
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _assert_tape(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for k in ("sym", "ts", "seq", "kind", "side", "size", "bid_size", "ask_size"):
        assert np.array_equal(got[k], want[k]), k
    for k in ("price", "bid", "ask"):  # prices on the grid from a mid summed in another order
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)


@pytest.mark.parametrize("sizes", [[1, 7, 300, 2, 1000], [500], [3, 0, 250, 250]])
def test_the_tape_goes_on_across_chunks_as_one_tick_at_a_time(sizes: list[int]) -> None:
    m = SyntheticMarket(n_symbols=9, seed=11, events_per_s=50.0)
    tape = SyntheticTape(m)
    parts = [tape.next(n) for n in sizes]
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _assert_tape(got, _reference(m, sizes))
    assert tape.drawn == sum(sizes)
    # each symbol's seq runs 0, 1, 2, ... across the chunks, and event time never goes back
    for s in np.unique(got["sym"]):
        assert got["seq"][got["sym"] == s].tolist() == list(range(int((got["sym"] == s).sum())))
    assert np.all(np.diff(got["ts"]) >= 0)


def test_chunks_bound_the_columns_held_and_end_or_not() -> None:
    m = SyntheticMarket(n_symbols=5, seed=2)
    sizes = [len(c["ts"]) for c in chunks(m, 1_050, chunk=200)]
    assert sizes == [200] * 5 + [50]
    endless = list(itertools.islice(chunks(m, None, chunk=64), 40))
    assert [len(c["ts"]) for c in endless] == [64] * 40
    _assert_tape({k: np.concatenate([c[k] for c in endless]) for k in endless[0]}, _reference(m, [64] * 40))
    with pytest.raises(ValueError, match="chunk"):
        next(chunks(m, 10, chunk=0))


def test_generate_draws_a_long_tape_in_gen_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "GEN_CHUNK", 120)
    m = SyntheticMarket(n_symbols=4, seed=8, events_per_s=30.0)
    _assert_tape(generate(m, 400), _reference(m, [120, 120, 120, 40]))
    _assert_tape(generate(m, 90), _reference(m, [90]))
