"""The features processor's changelog values (``processors/features_changelog.py``): compact values hold
only the trades a later time window can count, a restore from them (or from full values written
before, or a mix) continues exactly as the independent pandas reference says, and values of another
configuration are refused before anything is restored."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.features_config import IS_NTRADES, FeatureConfig
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.symbols import SymbolTable
from tests.harness import cut, run_batches
from tests.unit.reference_features import reference_features

CODEC = AvroCodec()
TIME = FeatureConfig(window_ns=50_000_000, max_window_ticks=8)  # 50 ms, at most 8 trades: rings fill and go stale


def _data(n: int, symbols: int = 10, seed: int = 21, rate: float = 400.0) -> tuple[pd.DataFrame, list[bytes]]:
    cols = generate(SyntheticMarket(n_symbols=symbols, seed=seed, events_per_s=rate), n)
    values = BatchEncoder("mystocks.md.Tick").encode(cols, symbol_names(symbols, seed))
    df = pd.DataFrame({k: cols[k] for k in ("sym", "ts", "kind", "price", "size", "side", "bid", "ask",
                                            "bid_size", "ask_size")})
    return df, list(values)


def _proc(features: FeatureConfig) -> TickFeaturesProcessor:
    return TickFeaturesProcessor(FeaturesProcessorConfig(features=features, bar_intervals_ns=(), backend="cpu"))


def _assert_reference(vals: list[bytes], df: pd.DataFrame, features: FeatureConfig) -> None:
    recs = [CODEC.decode(v) for v in vals]
    assert len(recs) == len(df)
    for name, want in reference_features(df, features).items():
        got = np.array([r["values"][name] for r in recs])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("features", [TIME, FeatureConfig()], ids=["50ms-8", "defaults"])
def test_compact_values_hold_the_trades_a_later_window_can_count(features: FeatureConfig) -> None:
    df, values = _data(3000)
    proc = _proc(features)
    res = run_batches(proc, cut(values, [500] * 6))
    entries = dict(proc.changelog_entries(res.state, np.arange(len(res.symbols)), res.symbols))
    full = _full_width(proc)
    trades = df[df["kind"] == 0]
    for name in res.symbols.symbols:
        ts = trades.loc[trades["sym"] == symbol_names(10, 21).index(name), "ts"].to_numpy()
        # the reference: this symbol's trades after its last trade time - W, at most M of them
        k = min(int(np.count_nonzero(ts > ts[-1] - features.window_ns)), features.max_window_ticks) if ts.size else 0
        assert len(entries[name.encode()]) == full - 16 * features.max_window_ticks + 20 + 16 * k, name
    assert max(len(v) for v in entries.values()) < full  # every value is smaller than the full row


def _full_width(proc: TickFeaturesProcessor) -> int:
    """Bytes of a full value, from the state arrays' row sizes (the documented format)."""
    arrays = proc.initial_state().features.arrays
    return sum(int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize for a in arrays.values())


def _full_values(proc: TickFeaturesProcessor, state: object, names: list[str]) -> list[tuple[bytes, bytes]]:
    """Full (pre-compact) values built here from the state arrays: every array's row, names sorted."""
    arrays = state.features.arrays  # type: ignore[attr-defined]
    return [(n.encode(), b"".join(np.ascontiguousarray(arrays[k][c]).tobytes() for k in sorted(arrays)))
            for c, n in enumerate(names)]


@pytest.mark.parametrize("mix", ["compact", "full", "half"])
def test_a_restore_from_compact_full_or_mixed_values_continues_as_the_reference(mix: str) -> None:
    df, values = _data(4000)
    first, second = values[:2000], values[2000:]
    proc = _proc(TIME)
    res = run_batches(proc, cut(first, [250] * 8))
    names = list(res.symbols.symbols)
    compact = proc.changelog_entries(res.state, np.arange(len(names)), res.symbols)
    full = _full_values(proc, res.state, names)
    chosen = {"compact": compact, "full": full,
              "half": [c if j % 2 else f for j, (c, f) in enumerate(zip(compact, full, strict=True))]}[mix]
    fresh = _proc(TIME)
    symbols = SymbolTable()
    state = fresh.restore(chosen, symbols)
    assert list(symbols.symbols) == names
    idx = np.arange(2000, 4000, dtype=np.int64)
    dec = fresh.decode(second, idx, symbols, 0, 0)
    out, _ = fresh.process(dec.columns, state)
    vals = res.outputs.records["features.ticks"][1] + out.records["features.ticks"][1]
    _assert_reference(vals, df, TIME)


def test_every_batch_restored_from_compact_values_equals_the_reference() -> None:
    df, values = _data(3000, rate=2000.0)  # dense: most rings full of live trades, others stale
    res = run_batches(_proc(TIME), cut(values, [1, 7, 97, 500, 3] * 20), roundtrip_state=True)
    _assert_reference(res.outputs.records["features.ticks"][1], df, TIME)


def test_values_without_a_time_window_are_full_rows() -> None:
    cfg = FeatureConfig(features=("ret", "ema", "roll_mean"))
    df, values = _data(1500)
    proc = _proc(cfg)
    res = run_batches(proc, cut(values, [300] * 5), roundtrip_state=True)
    _assert_reference(res.outputs.records["features.ticks"][1], df, cfg)
    entries = proc.changelog_entries(res.state, np.arange(len(res.symbols)), res.symbols)
    assert {len(v) for _, v in entries} == {_full_width(proc)}


def test_values_of_another_configuration_or_corrupt_ones_are_refused_before_any_restore() -> None:
    _, values = _data(150)  # a few trades per symbol
    proc = _proc(TIME)
    res = run_batches(proc, cut(values, [150]))
    entries = proc.changelog_entries(res.state, np.arange(len(res.symbols)), res.symbols)
    symbols = SymbolTable()
    with pytest.raises(ConfigError, match=r"changelog entry of 'ODD' has 5 bytes.*use a new consumer group"):
        _proc(TIME).restore([*entries, (b"ODD", b"12345")], symbols)
    assert len(symbols) == 0  # every value is checked before any symbol is added
    for other in (FeatureConfig(window_ns=50_000_000, max_window_ticks=16), FeatureConfig(window_ns=60_000_000,
                                                                                       max_window_ticks=8)):
        with pytest.raises(ConfigError, match="feature windows or bar settings changed"):  # another M, another W
            _proc(other).restore(entries, SymbolTable())
    # a compact value that claims more recent trades than its symbol has seen
    seen = res.state.features.arrays["ist"][:, IS_NTRADES]
    code = int(np.flatnonzero((seen >= 1) & (seen < 6))[0])
    key, good = entries[code]
    fw = _fixed_width(good, proc)
    fmt, m, c, w = struct.unpack_from("<IIIq", good, fw)  # the documented header
    assert (fmt, m, w) == (1, 8, 50_000_000)
    k = int(seen[code]) + 2
    ts, price = good[fw + 20:fw + 20 + 8 * c], good[fw + 20 + 8 * c:]
    bad = good[:fw] + struct.pack("<IIIq", fmt, m, k, w) + ts + bytes(8 * (k - c)) + price + bytes(8 * (k - c))
    with pytest.raises(ConfigError, match=f"holds {k} recent trades of the {int(seen[code])} it has seen: corrupt"):
        _proc(TIME).restore([(key, bad)], SymbolTable())


def _fixed_width(value: bytes, proc: TickFeaturesProcessor) -> int:
    """Bytes before a compact value's header: a full row less the two rings (8 + 8 bytes a slot)."""
    return _full_width(proc) - 16 * TIME.max_window_ticks
