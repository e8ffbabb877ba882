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
from tests.harness import cut, run_batches
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
    df, values, names = _data()
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu"))
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


def test_bars_equal_pandas_resample_after_flush() -> None:
    df, values, names = _data(n=3000, symbols=6, seed=4)
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend="cpu"))
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
