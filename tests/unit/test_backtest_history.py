"""The backtest job's history path without a broker: rows spilled in any order come back as the
same windows, equal to a pandas pivot; duplicates keep the last record; the signal is aligned as
pandas ``merge_asof`` does; streamed through the engine they give run_backtest's results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.backtest import run_backtest
from mystocks_gpu.gpu_ops.backtest.engine import best_cells
from mystocks_gpu.gpu_ops.backtest.stream import CurvePass, GridStream
from mystocks_gpu.processors.backtest.history import (
    BAR_ROW,
    SIGNAL_ROW,
    BarHistory,
    bar_interval_ns,
)
from mystocks_gpu.processors.backtest.spec import BacktestSpec

DAY = 86_400 * 10**9


def real_shaped(seed: int = 11) -> pd.DataFrame:
    """Five tickers with different listing dates and overlapping ranges (one delisted early), a
    few missing sessions (halts), daily OHLC."""
    rng = np.random.default_rng(seed)
    spans = {"AAA": ("2019-01-02", "2021-12-31"), "BBB": ("2019-07-01", "2021-12-31"),
             "CCC": ("2020-03-02", "2021-12-31"), "DDD": ("2019-01-02", "2020-09-30"),
             "EEE": ("2020-06-15", "2021-12-31")}
    frames = []
    for sym, (a, b) in spans.items():
        days = pd.bdate_range(a, b, tz="UTC")
        days = days[rng.random(days.size) > 0.01]  # halts
        close = 40 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, days.size)))
        opn = close * np.exp(rng.normal(0, 0.005, days.size))
        frames.append(pd.DataFrame({"symbol": sym, "ts": days.as_unit("ns").asi8, "open": opn,
                                    "high": np.maximum(opn, close) * 1.01, "low": np.minimum(opn, close) * 0.99,
                                    "close": close}))
    return pd.concat(frames, ignore_index=True)


def _history(df: pd.DataFrame, chunk: int = 97) -> BarHistory:
    """A history filled the way a scan fills it: consecutive chunks of rows in ``df``'s order."""
    hist = BarHistory(64 * DAY)
    codes = hist.table.codes(df["symbol"].tolist())
    for a in range(0, len(df), chunk):
        rows = np.empty(min(chunk, len(df) - a), BAR_ROW)
        rows["sym"] = codes[a:a + chunk]
        for k in ("ts", "open", "high", "low", "close"):
            rows[k] = df[k].to_numpy()[a:a + chunk]
        hist._account(rows)
        hist.bars.add(rows)
    return hist


def _pivot(df: pd.DataFrame, symbols: list[str], universe: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    ts = np.sort(df[df["symbol"].isin(universe)]["ts"].unique())
    d = df.drop_duplicates(["symbol", "ts"], keep="last")
    return {k: d.pivot(index="symbol", columns="ts", values=k).reindex(index=symbols, columns=ts).to_numpy(np.float64)
            for k in ("open", "high", "low", "close")}, ts


def _collect(hist: BarHistory, symbols: list[str], universe: list[str], max_rows: int
             ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    parts, times, n = [], [], 0
    for mats, ts in hist.windows(symbols, universe, ("open", "high", "low", "close"), max_rows):
        parts.append(mats)
        times.append(ts)
        n += 1
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}, np.concatenate(times), n


ORDERS = {
    "per_ticker": lambda df: df.sort_values(["symbol", "ts"], kind="stable"),
    "interleaved": lambda df: df.sort_values(["ts", "symbol"], kind="stable"),
    "newest_first": lambda df: df.sort_values(["symbol", "ts"], ascending=[True, False], kind="stable"),
    "shuffled": lambda df: df.sample(frac=1.0, random_state=5),
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_any_load_order_gives_the_pandas_pivot(order: str) -> None:
    df = real_shaped()
    symbols = ["BBB", "CCC", "EEE"]
    universe = sorted(df["symbol"].unique())
    want, ts_want = _pivot(df, symbols, universe)
    with _history(ORDERS[order](df)) as hist:
        assert hist.symbols() == universe
        assert hist.bar_times(universe) == ts_want.size
        got, ts, n_windows = _collect(hist, symbols, universe, max_rows=700)
        assert n_windows > 3  # several windows, each several buckets at most
        np.testing.assert_array_equal(ts, ts_want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        first = {s: int(hist.first[hist.table.get(s)]) for s in universe}
        assert first == df.groupby("symbol")["ts"].min().to_dict()
        assert hist.duplicates == 0


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_a_few_symbols_read_only_their_segments_and_equal_the_pivot(order: str) -> None:
    """Windows of a few symbols of a wide universe (the curve pass) equal the pandas pivot in any
    load order; loaded ticker by ticker, they read a small part of the spill."""
    rng = np.random.default_rng(4)
    days = pd.bdate_range("2020-01-01", "2021-12-31", tz="UTC").as_unit("ns").asi8
    frames = []
    for i in range(40):
        d = days[rng.integers(0, 200):]
        close = 30 * np.exp(np.cumsum(rng.normal(0, 0.02, d.size)))
        frames.append(pd.DataFrame({"symbol": f"T{i:02d}", "ts": d, "open": close * 1.001, "high": close * 1.02,
                                    "low": close * 0.98, "close": close}))
    df = ORDERS[order](pd.concat(frames, ignore_index=True))
    universe = sorted(df["symbol"].unique())
    symbols = ["T07", "T31"]
    want, ts_want = _pivot(df, symbols, universe)
    with _history(df, chunk=500) as hist:
        got, ts, _ = _collect(hist, symbols, universe, max_rows=4000)
        np.testing.assert_array_equal(ts, ts_want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        ids, _ = hist.bars.buckets()
        codes = np.sort(hist._codes(symbols))
        read = sum(hist.bars.read(int(b), int(b), codes).size for b in ids)
        assert sum(hist.bars.read(int(b), int(b)).size for b in ids) == len(df)
        if order == "per_ticker":
            assert read < len(df) // 5, (read, len(df))


def test_duplicates_keep_the_record_read_last() -> None:
    df = real_shaped().sort_values(["ts", "symbol"], kind="stable")
    again = df[df["symbol"] == "CCC"].iloc[10:20].assign(close=lambda d: d["close"] + 1.0)
    both = pd.concat([df, again], ignore_index=True)
    want, _ = _pivot(both, ["CCC"], ["CCC"])
    with _history(both) as hist:
        got, _, _ = _collect(hist, ["CCC"], ["CCC"], max_rows=10**6)
        np.testing.assert_array_equal(got["close"], want["close"])
        assert hist.duplicates == 10


def test_signal_aligned_as_merge_asof() -> None:
    df = real_shaped()
    rng = np.random.default_rng(2)
    sig = df[["symbol", "ts"]].sample(frac=0.6, random_state=1).copy()
    sig["ts"] = sig["ts"] - rng.integers(0, 3 * DAY, len(sig))  # computed before the bar, irregularly
    sig["signal"] = rng.normal(0, 1, len(sig))
    symbols = sorted(df["symbol"].unique())
    with _history(df) as hist:
        hist.signal = type(hist.bars)(SIGNAL_ROW, hist.bars.bucket_ns)
        rows = np.empty(len(sig), SIGNAL_ROW)
        rows["sym"] = [hist.table.get(s) for s in sig["symbol"]]
        rows["ts"], rows["signal"] = sig["ts"].to_numpy(), sig["signal"].to_numpy()
        hist.signal.add(rows[::-1].copy())  # any arrival order
        parts = list(hist.windows(symbols, symbols, ("close", "signal"), max_rows=500))
        got = np.concatenate([m["signal"] for m, _ in parts], axis=1)
        ts = np.concatenate([t for _, t in parts])
    grid = pd.DataFrame({"ts": ts})
    for i, s in enumerate(symbols):
        g = sig[sig["symbol"] == s].sort_values("ts", kind="stable")
        want = pd.merge_asof(grid, g[["ts", "signal"]], on="ts", direction="backward")["signal"].to_numpy()
        np.testing.assert_array_equal(got[i], want, err_msg=s)


def test_streamed_history_equals_run_backtest_on_the_pivot() -> None:
    """The job's path (spill -> windows -> GridStream -> CurvePass) equals run_backtest on a
    pandas pivot of the same rows, for a file loaded per ticker."""
    df = real_shaped()
    universe = sorted(df["symbol"].unique())
    spec = BacktestSpec(strategy="ma_cross", params={"fast": [3, 8], "slow": [20, 40]}, n_curves=4,
                        memory_budget_bytes=60_000)
    mats, ts = _pivot(df, universe, universe)
    want = run_backtest(mats, universe, ts, spec, backend="cpu")
    with _history(ORDERS["per_ticker"](df)) as hist:
        gs = GridStream(spec, universe, 256, "cpu")
        for m, t in hist.windows(universe, universe, ("open", "high", "low", "close"), 600):
            gs.feed(m, t)
        stats = gs.finish()
        pd.testing.assert_frame_equal(stats, want.stats, check_exact=True)
        cp = CurvePass(gs, best_cells(stats, spec.metric, 4))
        assert 0 < cp.rows.size < len(universe)  # the best cells' symbols only, as the job reads them
        rows = [universe[int(i)] for i in cp.rows]
        for m, t in hist.windows(rows, universe, ("open", "high", "low", "close"), 600):
            cp.feed(m, t.size)
        eq, _ = cp.result()
    for i, c in enumerate(want.curves):
        np.testing.assert_array_equal(eq[i], c.equity)


def test_bar_interval_from_the_topic_name() -> None:
    assert bar_interval_ns("md.bars.1d") == DAY
    assert bar_interval_ns("md.bars.5m") == 300 * 10**9
    assert bar_interval_ns("md.bars.1s") == 10**9
    assert bar_interval_ns("md.bars.1m.bench42") == 60 * 10**9  # a dataset suffix keeps the interval


def test_engine_budget_is_what_the_process_leaves_of_the_job_budget() -> None:
    from mystocks_gpu.processors.backtest.job import engine_budget_bytes, resident_bytes

    mib = 1 << 20
    assert engine_budget_bytes(512 * mib, resident=300 * mib) == 212 * mib
    assert engine_budget_bytes(512 * mib, resident=500 * mib) == 128 * mib  # at least a quarter
    assert engine_budget_bytes(4096, resident=300 * mib) == 1024
    rss = resident_bytes()
    with open("/proc/self/status") as f:  # the kernel's own figure, independently
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(rss - vm) <= 0.1 * vm


@pytest.mark.parametrize("span", [40, 10**9])
def test_bucket_order_is_a_stable_sort(span: int) -> None:
    """Counting sort (ids within about 2n) and merge sort (wide ids) both equal NumPy's stable sort."""
    from mystocks_gpu.processors.backtest.history import _bucket_order

    b = np.random.default_rng(span % 97).integers(-span, span, 500)
    np.testing.assert_array_equal(_bucket_order(b), np.argsort(b, kind="stable"))


def test_time_set_holds_the_distinct_times() -> None:
    """Distinct bar times across chunks (growing the table several times), including the extreme
    int64 values, equal np.unique."""
    from mystocks_gpu.processors.backtest.history import _TimeSet

    rng = np.random.default_rng(4)
    ts = _TimeSet()
    seen = []
    for _ in range(30):
        chunk = rng.integers(0, 5_000, 700) * DAY
        chunk[:3] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0]
        ts.add(chunk)
        seen.append(chunk)
    np.testing.assert_array_equal(ts.sorted(), np.unique(np.concatenate(seen)))


@pytest.mark.parametrize("universe", ["all", "some"])
def test_select_rows_equals_masks_and_a_stable_sort(universe: str) -> None:
    """The scan's one-pass selection equals NumPy: rows in ``[lo, hi)`` and in the universe, stably
    sorted by ``ts // bucket_ns`` (negative times floor), with both drop counts."""
    from mystocks_gpu.processors.backtest.history import _select_rows

    rng = np.random.default_rng(8)
    n, bucket = 4_000, 7 * DAY
    sym = rng.integers(0, 50, n).astype(np.int32)
    ts = rng.integers(-300, 300, n) * DAY + rng.integers(0, DAY, n)
    o, h, lw, c = (rng.normal(size=n) for _ in range(4))
    lo, hi = -200 * DAY, 250 * DAY
    member = rng.random(50) < 0.6
    use_all = universe == "all"
    rows, b, n_range, n_outside = _select_rows(sym, ts, o, h, lw, c, lo, hi, member, use_all, bucket)
    in_range = (ts >= lo) & (ts < hi)
    keep = in_range & (True if use_all else member[sym])
    sel = np.flatnonzero(keep)
    sel = sel[np.argsort(ts[sel] // bucket, kind="stable")]
    assert (n_range, n_outside) == (int((~in_range).sum()), int((in_range & ~keep).sum()))
    assert rows.dtype == BAR_ROW and rows.size == sel.size
    np.testing.assert_array_equal(b, ts[sel] // bucket)
    for name, col in (("sym", sym), ("ts", ts), ("open", o), ("high", h), ("low", lw), ("close", c)):
        np.testing.assert_array_equal(rows[name], col[sel])
    # an already ordered chunk keeps its order; an empty selection is empty
    srt = np.argsort(ts, kind="stable")
    rows2, _, _, _ = _select_rows(sym[srt], ts[srt], o[srt], h[srt], lw[srt], c[srt], lo, hi, member, True, bucket)
    np.testing.assert_array_equal(rows2["ts"], ts[srt][(ts[srt] >= lo) & (ts[srt] < hi)])
    assert _select_rows(sym, ts, o, h, lw, c, 0, 0, member, True, bucket)[0].size == 0
