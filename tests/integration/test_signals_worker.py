"""Live inference on the real broker: ``mystocks-gpu run signals --model NAME`` scores feature
vectors with the newest model version, hot-swaps when a new version (published in parts) lands
on ``models``, survives a SIGKILL mid-stream across the swap with nothing lost or duplicated,
and keeps its model when a corrupt version arrives (alert on ``alerts``, parts on ``models.dlq``)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.gpu_ops.models import Model, make_model
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.processors.training.model_registry import publish_model, split_model
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import ROOT, wait_until
from tests.integration.stream_helpers import committed_total, read_finished

CODEC = AvroCodec()
FEATS = ["f1", "f2", "f3"]


def _model(seed: int) -> Model:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((500, 3))
    return make_model("ridge", {"alpha": 1.0 + seed}, backend="cpu").fit(X, X @ rng.standard_normal(3))


def _meta() -> dict[str, Any]:
    return {"features": FEATS, "feature_inputs": dict.fromkeys(FEATS, "features.ticks"),
            "feature_schemas": {"features.ticks": {"schema": "mystocks.features.FeatureVector"}}}


def _vectors(first_seq: int, n: int, seed: int) -> tuple[list[tuple[bytes, bytes, int]], dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    items, rows = [], {}
    for i in range(first_seq, first_seq + n):
        x = rng.standard_normal(3)
        if i % 97 == 0:
            x[1] = np.nan
        sym = f"V{i % 13}"
        ts = 1_700_000_000 * 10**9 + i * 10**6
        items.append((sym.encode(), CODEC.encode("mystocks.features.FeatureVector", {
            "symbol": sym, "ts_event": ts, "seq": i, "ts_ingest": ts,
            "values": {"f3": x[2], "f1": x[0], "f2": x[1], "extra": 0.5}}), ts // 10**6))
        rows[i] = x
    return items, rows


def _worker(name: str, topic: str, group: str, idle_exit: float) -> subprocess.Popen[bytes]:
    """A signals worker that exits after ``idle_exit`` s without input (the first one is killed before:
    a long idle exit keeps it up while v2 and part B are published on a busy machine)."""
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "run", "signals", "--model", name, "--input-topic", topic,
           "--group", group, "--worker-id", "w1", "--batch-records", "100", "--commit-interval-ms", "0",
           "--idle-exit", str(idle_exit)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ})


def test_sigkill_mid_stream_across_a_hot_swap_then_a_corrupt_version(settings: Settings, unique: str) -> None:
    name, topic, group = f"sig-{unique}", f"t.sig.{unique}", f"g.sig.{unique}"
    spec = TopicSpec(topic, "symbol", "mystocks.features.FeatureVector", partitions=3)
    TopicAdmin(settings.kafka).create([spec, spec.dlq_spec()])  # type: ignore[list-item]
    m1, m2 = _model(1), _model(2)
    assert publish_model(settings.kafka, name, m1.to_bytes(), _meta()) == 1
    n_a, n_b, n_c = 1500, 12_000, 1500
    items_a, rows = _vectors(0, n_a, 1)
    produce_all(make_producer(settings.kafka), topic, iter(items_a))
    w = _worker(name, topic, group, 60)
    try:
        wait_until(lambda: committed_total(settings, group, topic) >= n_a or w.poll() is not None, 120, "part A committed")
        assert w.poll() is None, w.stderr.read().decode()[-3000:] if w.stderr else ""
        # v2, published in 5 parts (the registry splits models larger than a record)
        assert publish_model(settings.kafka, name, m2.to_bytes(), _meta(), chunk_bytes=180) == 2
        items_b, rows_b = _vectors(n_a, n_b, 2)
        rows.update(rows_b)
        produce_all(make_producer(settings.kafka), topic, iter(items_b))
        wait_until(lambda: committed_total(settings, group, topic) >= n_a + 1500 or w.poll() is not None, 120,
                   "progress into part B")
        time.sleep(random.Random(5).uniform(0.0, 0.5))
        assert w.poll() is None, "the worker finished part B before it could be killed: raise n_b"
        os.killpg(w.pid, signal.SIGKILL)
        w.wait(30)
        killed_at = committed_total(settings, group, topic)
        assert killed_at < n_a + n_b
        w = _worker(name, topic, group, 6)
        wait_until(lambda: committed_total(settings, group, topic) > killed_at, 120, "progress after the restart")
        # v3: its parts join to bytes that do not match their hash
        blob = _model(3).to_bytes()
        recs = split_model(name, 3, blob, {**_meta(), "model": name, "version": 3}, time.time_ns(), 200)
        recs[1][1]["data"] = bytes(b ^ 0xFF for b in recs[1][1]["data"])
        produce_all(make_producer(settings.kafka), "models",
                    iter([(k, CODEC.encode("mystocks.ml.ModelRecord", r), time.time_ns() // 10**6) for k, r in recs]))
        items_c, rows_c = _vectors(n_a + n_b, n_c, 3)
        rows.update(rows_c)
        produce_all(make_producer(settings.kafka), topic, iter(items_c))
        out, err = w.communicate(timeout=240)
        assert w.returncode == 0, err.decode()[-3000:]
    finally:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
    total = n_a + n_b + n_c
    got = pd.DataFrame([dict(r.value) for r in read_finished(settings.kafka, f"signals.{name}")])
    # exactly once: one output per input vector
    assert len(got) == total and got["seq"].is_unique and set(got["seq"]) == set(range(total))
    # every score is the predict of the version it names, bit for bit (NaN where a feature is NaN)
    models = {1: m1, 2: m2}
    for v, g in got.groupby("model_version"):
        X = np.vstack([rows[s] for s in g["seq"]])
        ok = np.isfinite(X).all(axis=1)
        np.testing.assert_array_equal(g["score"].to_numpy()[ok], models[int(v)].predict(X[ok]))
        assert np.isnan(g["score"].to_numpy()[~ok]).all()
    ver = got.set_index("seq")["model_version"]
    assert set(ver) == {1, 2}
    assert (ver.loc[range(n_a)] == 1).all()  # v2 was published after part A was committed
    assert (ver.loc[range(n_a + n_b, total)] == 2).all()  # the corrupt v3 never scored
    # per input partition, versions never decrease in offset order: one cut
    src = [(r.partition, r.offset, r.value["seq"]) for r in read_finished(settings.kafka, topic)]
    for p in {s[0] for s in src}:
        seqs = [s[2] for s in sorted(x for x in src if x[0] == p)]
        assert np.all(np.diff(ver.loc[seqs].to_numpy()) >= 0), f"partition {p}: the version went back"
    # the corrupt version: alert + every part dead-lettered, with the reason
    offsets = _dlq_offsets(settings, name)
    assert len(offsets) == len(recs), offsets
    alerts = [r.value for r in read_topic(settings.kafka, "alerts", idle_timeout_s=2)
              if r.value and r.value["labels"].get("model") == name]
    assert alerts and alerts[0]["severity"] == "CRITICAL" and alerts[0]["labels"]["version"] == "3"
    assert "hash mismatch" in alerts[0]["message"] and alerts[0]["alert_id"] == f"model-integrity:{name}:{max(offsets)}"
    assert hashlib.sha256(blob).hexdigest() in alerts[0]["message"]  # the hash the record claimed


def _dlq_offsets(settings: Settings, name: str) -> list[int]:
    out = []
    for r in read_topic(settings.kafka, "models.dlq", idle_timeout_s=2, decode=False):
        if r.key and r.key.split("#")[0] == name:
            assert "hash mismatch" in r.headers["mystocks.error.message"]
            assert r.headers["mystocks.source.topic"] == "models"
            out.append(int(r.headers["mystocks.source.offset"]))
    return sorted(out)



def _swap_run(settings: Settings, name: str, topic: str, model_load: str | None, new: Model) -> tuple[Any, pd.DataFrame]:
    """``run signals --model NAME [--model-load X]`` as the CLI builds it (``create``), in this
    process: the processor loads the newest version at its start, then ``new`` is published (and
    read by the processor's model source, not yet installed), then one worker runs over the whole
    input. Returns the processor and its outputs by ``seq``."""
    from mystocks_gpu.processors.stream_processors import create
    from mystocks_gpu.streams.runtime_config import RuntimeConfig
    from mystocks_gpu.streams.stream_worker import StreamWorker

    out = f"signals.{name}.{model_load or 'default'}"
    TopicAdmin(settings.kafka).create([TopicSpec(out, "symbol", "mystocks.ml.Signal", partitions=1)])
    proc = create("signals", model=name, kafka=settings.kafka, backend="cpu", output_topic=out,
                  **({"model_load": model_load} if model_load else {}))
    assert proc.cfg.background_load is (model_load != "in-batch")  # type: ignore[attr-defined]
    publish_model(settings.kafka, name, new.to_bytes(), _meta())
    proc.source._backfill(60)  # type: ignore[attr-defined]  # noqa: SLF001 - the new version waits in the source
    StreamWorker(proc, settings.kafka, RuntimeConfig(max_records=5000, commit_interval_ms=0),
                 group=f"g.{out}", worker_id="w", input_topic=topic).run(idle_exit_s=3)
    got = pd.DataFrame([dict(r.value) for r in read_finished(settings.kafka, out)])
    return proc, got.set_index("seq").sort_index()


def test_model_load_setting_takes_effect_and_the_stopped_worker_closes_the_processor(settings: Settings,
                                                                                       unique: str) -> None:
    """``--model-load``: a version that arrives after the processor started is loaded by the first
    batch that sees it when ``in-batch`` (every vector is scored by it), and in the background by
    default (the first batch is scored by the version the processor had). A bad value, or the
    setting on another processor, is a ConfigError. A stopped worker closes its processor: the
    model loader is gone and the model source's consumer is closed."""
    from mystocks_gpu.exceptions import ConfigError
    from mystocks_gpu.processors.stream_processors import create

    name, topic = f"ml-{unique}", f"t.ml.{unique}"
    spec = TopicSpec(topic, "symbol", "mystocks.features.FeatureVector", partitions=1)
    TopicAdmin(settings.kafka).create([spec, spec.dlq_spec()])  # type: ignore[list-item]
    models = {v: _model(v) for v in (1, 2, 3)}
    assert publish_model(settings.kafka, name, models[1].to_bytes(), _meta()) == 1
    items, rows = _vectors(1, 300, 7)
    produce_all(make_producer(settings.kafka), topic, iter(items))
    with pytest.raises(ConfigError, match="model-load"):
        create("signals", model=name, kafka=settings.kafka, model_load="later")
    with pytest.raises(ConfigError, match="takes no --model-load"):
        create("aggregate", model_load="in-batch")
    results = {"in-batch": _swap_run(settings, name, topic, "in-batch", models[2]),  # starts on v1, v2 arrives
               "default": _swap_run(settings, name, topic, None, models[3])}  # starts on v2, v3 arrives
    X = np.vstack([rows[s] for s in range(1, 301)])
    ok = np.isfinite(X).all(axis=1)
    for mode, (proc, got) in results.items():
        assert list(got.index) == list(range(1, 301)), mode
        assert proc._loader is None and proc._closed, mode  # noqa: SLF001
        with pytest.raises(RuntimeError):
            proc.source.consumer.poll(0)  # closed
        ver = got["model_version"].to_numpy()
        assert np.all(np.diff(ver) >= 0), mode  # one partition: the version never goes back
        for v, model in models.items():
            sel = ver == v
            np.testing.assert_array_equal(got["score"].to_numpy()[sel & ok], model.predict(X[sel & ok]))
    assert set(results["in-batch"][1]["model_version"]) == {2}
    assert results["default"][1]["model_version"].iloc[0] == 2  # the first batch did not wait for v3
