"""The features processor end to end without a broker: Avro ticks in, Avro feature vectors and
bars out, equal to the independent pandas reference for any batch cut and across a changelog
restore."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.gpu_ops.features_config import FeatureConfig
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from tests.harness import cut, fresh_interpreter_json, run_batches
from tests.unit.reference_features import reference_bars, reference_features

CODEC = AvroCodec()


def _data(n: int = 4000, symbols: int = 12, seed: int = 9) -> tuple[pd.DataFrame, list[bytes], list[str]]:
    cols = generate(SyntheticMarket(n_symbols=symbols, seed=seed, events_per_s=200.0), n)
    names = symbol_names(symbols, seed)
    values = BatchEncoder("mystocks.md.Tick").encode(cols, names)
    df = pd.DataFrame({k: cols[k] for k in ("sym", "ts", "kind", "price", "size", "side", "bid", "ask",
                                            "bid_size", "ask_size")})
    return df, values, names


@pytest.mark.parametrize("sizes", [[10**9], [1, 2, 3, 500, 7], [97] * 60])
@pytest.mark.parametrize("roundtrip", [False, True])
def test_feature_vectors_equal_pandas_reference(sizes: list[int], roundtrip: bool) -> None:
    _check_features(TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu")), sizes, roundtrip)


def _check_features(proc: TickFeaturesProcessor, sizes: list[int], roundtrip: bool) -> None:
    df, values, names = _data()
    res = run_batches(proc, cut(values, sizes), roundtrip_state=roundtrip, ingest_ns=123)
    keys, vals, ts = res.outputs.records["features.ticks"]
    assert len(vals) == len(df) and not res.rejected
    recs = [CODEC.decode(v) for v in vals]
    assert [r["seq"] for r in recs] == [int(x) for x in generate(SyntheticMarket(n_symbols=12, seed=9,
                                                                                  events_per_s=200.0), 4000)["seq"]]
    assert all(r["ts_ingest"] == 123 for r in recs)
    assert [k.decode() for k in keys] == [names[s] for s in df["sym"]]
    ref = reference_features(df, FeatureConfig())
    for name, want in ref.items():
        got = np.array([r["values"][name] for r in recs])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warmed-up"])
def test_bars_equal_pandas_resample_after_flush(warm: bool) -> None:
    df, values, names = _data(n=3000, symbols=6, seed=4)
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu"))
    if warm:  # the warm-up's throwaway bars and symbols leave no trace in what follows
        proc.warm_up()
    res = run_batches(proc, cut(values, [250] * 12), roundtrip_state=True, flush=True)
    for interval, topic in ((10**9, "md.bars.1s"), (60 * 10**9, "md.bars.1m")):
        _, vals, _ = res.outputs.records[topic]
        got = pd.DataFrame([CODEC.decode(v) for v in vals]).sort_values(["symbol", "ts_event"]).reset_index(drop=True)
        ref = reference_bars(df, interval)
        ref = ref.assign(symbol=[names[s] for s in ref["sym"]]).sort_values(["symbol", "ts_open"]).reset_index(drop=True)
        assert len(got) == len(ref)
        assert got["symbol"].tolist() == ref["symbol"].tolist()
        assert got["ts_event"].tolist() == ref["ts_open"].tolist()
        for col in ("open", "high", "low", "close", "volume", "vwap"):
            np.testing.assert_allclose(got[col], ref[col], rtol=1e-12, err_msg=col)
        assert got["trades"].tolist() == ref["trades"].tolist()


def test_a_warmed_up_processor_equals_the_pandas_reference_and_keeps_nothing_of_the_warm_up() -> None:
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu"))
    proc.warm_up()
    assert not proc.__dict__.get("_key_cache") and not proc._decoder._by_table  # the throwaway table is dropped
    _check_features(proc, [1, 2, 3, 500, 7], roundtrip=True)


_WARM_UP_SCRIPT = """
import json
from mystocks_gpu.gpu_ops import bars, features_cpu, tick_columns
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor
kernels = {"features": features_cpu.process_batch, "bars": bars.bars_batch, "code_range": tick_columns.code_range}
proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu"))
before = {k: len(d.signatures) for k, d in kernels.items()}
proc.warm_up()
print(json.dumps({"before": before, "after": {k: len(d.signatures) for k, d in kernels.items()}}))
"""


def test_warm_up_compiles_the_kernels_the_first_batch_needs() -> None:
    """In a fresh interpreter: no kernel of the batch path is compiled (or loaded from the cache)
    before ``warm_up``, each one is after it (numba dispatchers list their compiled signatures)."""
    got = fresh_interpreter_json(_WARM_UP_SCRIPT)
    assert got["before"] == {"features": 0, "bars": 0, "code_range": 0}, got
    assert all(n >= 1 for n in got["after"].values()), got


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("mystocks_gpu.gpu_ops.backend", fromlist=["x"]).gpu_available()[0],
                    reason="no CUDA device (CuPy missing or no GPU); the CPU cases above still run")
def test_gpu_processor_equals_cpu_processor_across_changelog_restores() -> None:
    df, values, names = _data(n=6000, symbols=40, seed=3)
    runs = {}
    for backend in ("cpu", "gpu"):
        proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend=backend))
        res = run_batches(proc, cut(values, [333] * 20), roundtrip_state=True, flush=True)
        runs[backend] = res.outputs.records
    assert runs["cpu"].keys() == runs["gpu"].keys()
    for topic in runs["cpu"]:
        a = [CODEC.decode(v) for v in runs["cpu"][topic][1]]
        b = [CODEC.decode(v) for v in runs["gpu"][topic][1]]
        assert len(a) == len(b)
        if topic == "features.ticks":
            for name in a[0]["values"]:
                np.testing.assert_allclose([r["values"][name] for r in b], [r["values"][name] for r in a],
                                           rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
        else:
            assert a == b


def test_decode_partitions_in_one_call_equals_decode_per_partition_and_fastavro() -> None:
    """The runtime decodes a batch's partitions in one call (``decode_partitions``); each partition's
    good rows, batch indices, rejects and the symbol codes must be what ``decode`` per partition
    gives, and the values what fastavro reads (bad rows spread over partitions, one all bad)."""
    from mystocks_gpu.schemas.symbols import SymbolTable

    _, values, names = _data(n=300, symbols=7, seed=5)
    batch: list[bytes | None] = list(values)
    bad_price = CODEC.encode("mystocks.md.Tick", {**CODEC.decode(values[3]), "price": float("nan")})
    for i, v in ((1, b"garbage"), (8, None), (20, b"\x00\x00\x00\x30\x39 x"), (41, bad_price)):
        batch[i] = v
    rng = np.random.default_rng(3)
    part_of = rng.integers(0, 3, len(batch))
    part_of[[60, 61, 62]] = 7  # partition 7: three rows, all bad
    for i in (60, 61, 62):
        batch[i] = b"\x01bad"
    parts = {int(p): np.flatnonzero(part_of == p).tolist() for p in np.unique(part_of)}

    one, per = (TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu")) for _ in range(2))
    s_one, s_per = SymbolTable(), SymbolTable()
    got = one.decode_partitions(batch, parts, s_one, 55)
    want = {p: per.decode([batch[i] for i in rows], np.asarray(rows, np.int64), s_per, p, 55) for p, rows in parts.items()}
    assert s_one.symbols == s_per.symbols and got.keys() == want.keys()
    for p in parts:
        g, w = got[p], want[p]
        assert g.columns.partition == p and g.columns.ingest_ns == 55
        np.testing.assert_array_equal(g.columns.index, w.columns.index)
        assert g.columns.columns.keys() == w.columns.columns.keys()
        for k in g.columns.columns:
            np.testing.assert_array_equal(g.columns.columns[k], w.columns.columns[k], err_msg=k)
        assert [(r.index, r.error_class, r.message) for r in g.rejected] == \
            [(r.index, r.error_class, r.message) for r in w.rejected]
        for j, i in enumerate(g.columns.index.tolist()):  # against fastavro, row by row
            rec = CODEC.decode(batch[i])
            assert (s_one.symbol(int(g.columns.columns["sym"][j])), int(g.columns.columns["ts"][j]),
                    float(g.columns.columns["price"][j])) == (rec["symbol"], rec["ts_event"], rec["price"])
    assert sorted(r.index for p in got for r in got[p].rejected) == [1, 8, 20, 41, 60, 61, 62]
    assert len(got[7].columns) == 0


def _run_partitioned(proc: TickFeaturesProcessor, values: list[bytes], part_of: np.ndarray,
                     sizes: list[int]) -> tuple[dict[str, list[bytes]], list, dict]:
    """Batches of ``sizes`` rows through ``decode_partitions`` + ``process_partitions`` (as the worker
    runs them), a state per partition; every partition flushed at the end. Returns per topic the
    values in output order, the rejects and the states."""
    from mystocks_gpu.schemas.symbols import SymbolTable

    symbols = SymbolTable()
    states = {int(p): proc.initial_state() for p in np.unique(part_of)}
    topics: dict[str, list[bytes]] = {}
    rejected = []
    base = 0
    for batch in cut(values, sizes):
        parts: dict[int, list[int]] = {}
        for j, p in enumerate(part_of[base:base + len(batch)].tolist()):
            parts.setdefault(p, []).append(j)
        decoded = proc.decode_partitions(list(batch), parts, symbols, 77)
        out, new = proc.process_partitions({p: d.columns for p, d in decoded.items()}, states)
        states.update(new)
        rejected += [(base + r.index, r.error_class) for r in out.rejected]
        for topic, (_, vals, _) in out.records.items():
            topics.setdefault(topic, []).extend(vals)
        base += len(batch)
    for p in sorted(states):
        out, states[p] = proc.flush(states[p], symbols, p)
        for topic, (_, vals, _) in out.records.items():
            topics.setdefault(topic, []).extend(vals)
    return topics, rejected, states


def _by_partition_order(part_of: np.ndarray, sizes: list[int], keep: np.ndarray) -> list[int]:
    """Row numbers in the order the worker writes them: batch by batch (``cut`` by ``sizes``), within
    a batch partition by partition (first seen first), rows in turn; only rows where ``keep``."""
    order = []
    for rows in cut(np.arange(part_of.size), sizes):
        rows = np.asarray(rows)
        for p in dict.fromkeys(part_of[rows].tolist()):
            order += [int(r) for r in rows[part_of[rows] == p] if keep[r]]
    return order


@pytest.mark.parametrize("sizes", [[1, 2, 3, 500, 7] * 3, [11] * 400, [97] * 50])
def test_partitions_in_one_pass_equal_pandas_reference(sizes: list[int]) -> None:
    """The worker's path: several partitions per batch in one ``process_partitions`` call (one
    encoder call for all of them). Every vector equals the pandas reference, in partition-by-partition
    order within each batch; bars after the flush equal pandas resample."""
    df, values, names = _data(n=4000, symbols=12, seed=9)
    seq = generate(SyntheticMarket(n_symbols=12, seed=9, events_per_s=200.0), 4000)["seq"]
    part_of = (df["sym"].to_numpy() * 7) % 3  # each symbol in one of 3 partitions
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu"))
    topics, rejected, _ = _run_partitioned(proc, values, part_of, sizes)
    assert not rejected
    order = _by_partition_order(part_of, sizes, np.ones(len(df), bool))
    recs = [CODEC.decode(v) for v in topics["features.ticks"]]
    assert [r["seq"] for r in recs] == seq[order].tolist()
    assert [r["symbol"] for r in recs] == [names[s] for s in df["sym"].to_numpy()[order]]
    assert all(r["ts_ingest"] == 77 for r in recs)
    ref = reference_features(df, FeatureConfig())
    for name, want in ref.items():
        got = np.array([r["values"][name] for r in recs])
        np.testing.assert_allclose(got, np.asarray(want)[order], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
    for interval, topic in ((10**9, "md.bars.1s"), (60 * 10**9, "md.bars.1m")):
        got = pd.DataFrame([CODEC.decode(v) for v in topics[topic]]).sort_values(["symbol", "ts_event"])
        want = reference_bars(df, interval)
        want = want.assign(symbol=[names[s] for s in want["sym"]]).sort_values(["symbol", "ts_open"])
        assert got["ts_event"].tolist() == want["ts_open"].tolist() and got["symbol"].tolist() == want["symbol"].tolist()
        np.testing.assert_allclose(got["vwap"], want["vwap"], rtol=1e-12)
        assert got["trades"].tolist() == want["trades"].tolist()


class _PoisonAfterKernels(TickFeaturesProcessor):
    """Raises for any batch holding the tick stamped ``poison_ts``, after the kernels changed the state
    (so only the undo log can put it back)."""

    poison_ts = -1

    def _emit_vectors(self, out, fv):  # type: ignore[no-untyped-def]
        if any((b.columns["ts"] == self.poison_ts).any() for b, _, _ in fv):
            raise ValueError("poison tick")
        super()._emit_vectors(out, fv)


@pytest.mark.parametrize("features", [None, ("ret", "ema", "roll_mean", "roll_std", "vwap_session")],
                         ids=["all", "no-time-window"])
def test_a_poison_tick_in_one_partition_is_isolated_and_the_others_are_unchanged(features: tuple[str, ...] | None) -> None:
    """A record failing in the one-pass path: the states of every partition are put back, the batch
    is redone partition by partition with bisection, the poison tick alone goes to the DLQ, and every
    other vector equals the pandas reference computed without that tick. Also with a feature set
    that keeps no time window (its state arrays have no columns and the undo log skips them)."""
    df, values, _ = _data(n=3000, symbols=9, seed=2)
    seq = generate(SyntheticMarket(n_symbols=9, seed=2, events_per_s=200.0), 3000)["seq"]
    ts = df["ts"].to_numpy()
    poison_row = next(i for i in range(1234, len(ts)) if (ts == ts[i]).sum() == 1)  # a tick with its own stamp
    part_of = (df["sym"].to_numpy() * 5) % 4
    sizes = [40] * 75
    fcfg = FeatureConfig() if features is None else FeatureConfig(features=features)
    proc = _PoisonAfterKernels(FeaturesProcessorConfig(fcfg, backend="cpu"))
    proc.poison_ts = int(ts[poison_row])
    topics, rejected, _ = _run_partitioned(proc, values, part_of, sizes)
    assert rejected == [(poison_row, "ValueError")]
    keep = np.ones(len(df), bool)
    keep[poison_row] = False
    order = _by_partition_order(part_of, sizes, keep)
    recs = [CODEC.decode(v) for v in topics["features.ticks"]]
    assert [r["seq"] for r in recs] == seq[order].tolist()
    ref = reference_features(df[keep].reset_index(drop=True), FeatureConfig())
    pos = np.cumsum(keep) - 1  # row -> its row in the reference without the poison tick
    names = list(recs[0]["values"])
    assert set(names) == (set(ref) if features is None else {"ret", "ema_10", "ema_50", "roll_mean", "roll_std", "vwap_session"})
    for name in names:
        got = np.array([r["values"][name] for r in recs])
        np.testing.assert_allclose(got, np.asarray(ref[name])[pos[order]], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   err_msg=name)


def test_kernel_columns_are_the_decoded_views_when_canonical_and_casts_otherwise() -> None:
    from mystocks_gpu.gpu_ops.tick_columns import COLUMN_DTYPES
    from mystocks_gpu.processors.tick_features import _kernel_columns

    rng = np.random.default_rng(3)
    canon = {k: rng.integers(0, 3, 7).astype(dt) for k, dt in COLUMN_DTYPES.items()}
    canon["seq"] = np.arange(7)  # decoded columns the kernels do not read are ignored
    tc = _kernel_columns(canon)
    assert all(getattr(tc, k) is canon[k] for k in COLUMN_DTYPES)  # no copy
    odd = {**canon, "sym": canon["sym"].astype(np.int64), "side": canon["side"].astype(np.int32)}
    tc = _kernel_columns(odd)
    for k, dt in COLUMN_DTYPES.items():
        assert getattr(tc, k).dtype == dt
        np.testing.assert_array_equal(getattr(tc, k), odd[k].astype(dt))
    assert tc.sym is not odd["sym"] and tc.side is not odd["side"]
