"""The features pipeline on the real broker, exactly-once: every consumed feature vector equals the
pandas reference, also when the worker is SIGKILLed mid-stream and restarted (state restored)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.features_config import FeatureConfig
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import ROOT, wait_until
from tests.integration.stream_helpers import (
    committed_total,
    finish,
    kill9,
    read_outputs,
    start_paced,
    tick_items,
)
from tests.unit.reference_features import reference_features


def _worker(inp: str, out: str, group: str, backend: str = "cpu") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", "run", "features", "--group", group,
                             "--worker-id", "f1", "--input-topic", inp, "--output-topic", out, "--idle-exit", "8",
                             "--batch-records", "400", "--linger-ms", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "MYSTOCKS_BACKEND": backend})


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not gpu_available()[0], reason=f"GPU features path needs a CUDA device: {gpu_available()[1]}")])])
def test_features_exactly_once_with_sigkill_restart(settings: Settings, unique: str, backend: str) -> None:
    """On the CPU backend everywhere, and on the GPU backend (state resident on the device, restored
    into device arrays) where a CUDA device exists: the same pandas reference either way."""
    inp, out, group = f"t.fin.{unique}", f"t.fout.{unique}", f"g.f.{unique}"
    TopicAdmin(settings.kafka).create([
        TopicSpec(inp, "symbol", "mystocks.md.Tick", partitions=4, dlq=False),
        TopicSpec(inp + ".dlq", "symbol", None, partitions=1, dlq=False),
        TopicSpec(out, "symbol", "mystocks.features.FeatureVector", partitions=4, dlq=False),
    ])
    n, s = 40_000, 30
    cols = generate(SyntheticMarket(n_symbols=s, seed=21, events_per_s=500.0), n)
    names = symbol_names(s, 21)
    # the first 4000 ticks before the worker starts; the rest paced (10k ticks/s) from a
    # thread once transactions have committed, so the kill below falls mid-stream however fast the
    # worker is: after commits (the restart restores their state from the changelog and must not
    # repeat their outputs) and before the input is all committed
    head = 4000
    items = tick_items(cols, names)
    produce_all(make_producer(settings.kafka), inp, iter(items[:head]))
    w = _worker(inp, out, group, backend)
    wait_until(lambda: w.poll() is not None or committed_total(settings, group, inp, 4) >= 2000,
               90, "the worker to commit 2000 inputs")
    assert w.poll() is None, "worker exited before the paced input began"
    pacer = start_paced(settings, inp, items[head:], 10_000.0)
    wait_until(lambda: w.poll() is not None or committed_total(settings, group, inp, 4) >= head + 2000,
               90, "the worker to commit paced inputs")
    assert w.poll() is None, "worker exited before the kill"
    kill9(w)
    assert committed_total(settings, group, inp, 4) < n, "everything was committed before the kill"
    assert pacer.result(120) == n - head
    finish(_worker(inp, out, group, backend), timeout=300)
    got = read_outputs(settings, out)
    assert len(got) == n and not got.duplicated(["symbol", "seq"]).any()
    df = pd.DataFrame({k: cols[k] for k in ("sym", "ts", "kind", "price", "size", "side", "bid", "ask",
                                            "bid_size", "ask_size", "seq")})
    ref = reference_features(df, FeatureConfig())
    key = pd.MultiIndex.from_arrays([np.asarray(names)[cols["sym"]], cols["seq"]])
    got = got.set_index(["symbol", "seq"]).loc[key]
    for name, want in ref.items():
        vals = np.array([v[name] for v in got["values"]])
        np.testing.assert_allclose(vals, want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
