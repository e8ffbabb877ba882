"""The real-time features path on the real broker: the last bars emitted on idle and on a graceful
stop without breaking exactly-once (SIGKILL after an idle close, restart, a trade for a closed
window goes to the DLQ naming the interval); the worker's latency breakdown and adaptive batching;
``consume --json`` printing strict JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
from prometheus_client import generate_latest

from mystocks_gpu.gpu_ops.features_config import FeatureConfig
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, RuntimeConfig
from mystocks_gpu.streams.stream_metrics import STAGES, RuntimeMetrics
from mystocks_gpu.streams.stream_worker import StreamWorker
from mystocks_gpu.topics import TopicSpec, get
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import ROOT, run_cli, wait_until
from tests.integration.stream_helpers import finish, kill9, produce_ticks, read_finished
from tests.unit.reference_features import random_ticks, reference_bars

CODEC = AvroCodec()
SEC = 10**9
IVL = 7 * SEC  # a bar interval no other test uses: md.bars.7s holds only this test's bars


def _ticks(unique: str) -> tuple[pd.DataFrame, list[str]]:
    df = random_ticks(seed=5, n=900, n_symbols=4, mean_gap_ns=80_000_000, late_symbol=False)
    df = df.assign(size=np.where((df["kind"] == 0) & (df["size"] <= 0), 1.0, df["size"]))
    return df, [f"B{unique}{i}" for i in range(4)]


def _cols(df: pd.DataFrame, seq0: int) -> dict[str, np.ndarray]:
    cols = {k: df[k].to_numpy() for k in ("sym", "ts", "kind", "price", "size", "side", "bid", "ask", "bid_size",
                                          "ask_size")}
    cols["side"] = cols["side"].astype(np.int32)
    cols["seq"] = np.arange(seq0, seq0 + len(df), dtype=np.int64)
    return cols


def _worker(inp: str, out: str, group: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", "run", "features", "--group", group,
                             "--worker-id", "f1", "--input-topic", inp, "--output-topic", out,
                             "--bar-intervals-s", "7", "--max-disorder-s", "100", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "MYSTOCKS_BACKEND": "cpu"})


def _live_topics(settings: Settings, inp: str, out: str) -> tuple[str, str]:
    """Create a 2-partition tick topic ``inp`` (with its DLQ) and feature-vector topic ``out``."""
    TopicAdmin(settings.kafka).create([
        TopicSpec(inp, "symbol", "mystocks.md.Tick", partitions=2, dlq=False),
        TopicSpec(inp + ".dlq", "symbol", None, partitions=1, dlq=False),
        TopicSpec(out, "symbol", "mystocks.features.FeatureVector", partitions=2, dlq=False)])
    return inp, out


def _trickle(settings: Settings, inp: str, cols: dict[str, np.ndarray], names: list[str], seq0: int, n: int,
             gap_s: float) -> None:
    """The first ``n`` ticks of ``cols`` (seq from ``seq0``, stamped now) to ``inp``, one produce and
    flush every ``gap_s`` seconds: a quiet live feed."""
    prod = make_producer(settings.kafka)
    trickle = {k: v[:n].copy() for k, v in cols.items()}
    trickle["ts"] = time.time_ns() + np.arange(n)
    trickle["seq"] += seq0
    vals = BatchEncoder("mystocks.md.Tick").encode(trickle, names)
    for i, v in enumerate(vals):
        prod.produce(inp, v, names[int(trickle["sym"][i])].encode(), timestamp=time.time_ns() // 1_000_000)
        prod.flush(10)
        time.sleep(gap_s)


def _bars(settings: Settings, names: list[str]) -> pd.DataFrame:
    rows = [r.value for r in read_finished(settings.kafka, "md.bars.7s")
            if r.value is not None and r.value["symbol"] in names]
    return pd.DataFrame(rows, columns=["symbol", "ts_event", "open", "high", "low", "close", "volume", "trades"])


def test_last_bars_close_on_idle_and_on_stop_exactly_once(settings: Settings, unique: str) -> None:
    inp, out, group = f"t.rin.{unique}", f"t.rout.{unique}", f"g.r.{unique}"
    TopicAdmin(settings.kafka).create([
        TopicSpec(inp, "symbol", "mystocks.md.Tick", partitions=2, dlq=False),
        TopicSpec(inp + ".dlq", "symbol", None, partitions=1, dlq=False),
        TopicSpec(out, "symbol", "mystocks.features.FeatureVector", partitions=2, dlq=False),
        get("md.bars.7s")])
    df, names = _ticks(unique)
    first, second = df.iloc[:600].copy(), df.iloc[600:].copy()
    second["ts"] += 3 * IVL  # the second part starts in later windows: only the injected trade is late
    enc = BatchEncoder("mystocks.md.Tick")
    produce_ticks(settings, inp, _cols(first, 0), names, enc.encode(_cols(first, 0), names))
    want1 = reference_bars(first, IVL)
    # 1) idle close: the last bar of every symbol comes out once event time stops advancing
    w1 = _worker(inp, out, group, "--idle-close-s", "1", "--close-on-stop", "false")
    try:
        wait_until(lambda: len(_bars(settings, names)) >= len(want1) or w1.poll() is not None, 240,
                   f"{len(want1)} bars of the first part (closed by event time, then by the idle close)")
        assert w1.poll() is None, w1.communicate()[1][-2000:]
    finally:
        kill9(w1)  # after the committed flush: the restart must not emit those bars again
    # 2) a trade for symbol 0's last (flushed) window arrives after the restart: late for the 7s bar
    s0 = first[(first["sym"] == 0) & (first["kind"] == 0)].iloc[-1]
    late = s0.to_frame().T.astype(first.dtypes)
    late["ts"] = (int(s0["ts"]) // IVL) * IVL + 1  # in the flushed window, behind the last trade
    tail = pd.concat([late, second], ignore_index=True)
    produce_ticks(settings, inp, _cols(tail, 600), names, enc.encode(_cols(tail, 600), names))
    # 3) graceful stop (--idle-exit) closes the remaining open bars
    finish(_worker(inp, out, group, "--idle-exit", "6", "--idle-close-s", "0", "--close-on-stop", "true"),
           timeout=240)
    got = _bars(settings, names).assign(sym=lambda d: [names.index(x) for x in d["symbol"]])
    assert not got.duplicated(["symbol", "ts_event"]).any(), "a bar was emitted twice"
    want = reference_bars(pd.concat([first, second], ignore_index=True), IVL)
    got = got.sort_values(["sym", "ts_event"]).reset_index(drop=True)
    assert len(got) == len(want), f"{len(got)} bars, want {len(want)}"
    np.testing.assert_array_equal(got["ts_event"].to_numpy(), want["ts_open"].to_numpy())
    np.testing.assert_array_equal(got["trades"].to_numpy(), want["trades"].to_numpy())
    for c in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=1e-12, err_msg=c)
    dlq = [r for r in read_finished(settings.kafka, inp + ".dlq", decode=False)]
    assert len(dlq) == 1, [r.headers for r in dlq]
    h = dlq[0].headers
    assert h["mystocks.error.class"] == "late" and "late for the 7s bar" in h["mystocks.error.message"], h
    vectors = list(read_finished(settings.kafka, out))
    assert len(vectors) == len(df) + 1  # every tick got its vector, the late one too, none twice
    # every vector carries the one config header (produced as a dict of headers: the same on the wire)
    assert all(list(dict(v.headers)) == ["mystocks.features.config"]
               and json.loads(dict(v.headers)["mystocks.features.config"])["window_ticks"] == 20 for v in vectors)


def test_worker_records_stage_latencies_and_batches_follow_the_load(settings: Settings, unique: str) -> None:
    inp, out = _live_topics(settings, f"t.lin.{unique}", f"t.lout.{unique}")
    df, names = _ticks(unique)
    df = pd.concat([df] * 4, ignore_index=True)
    now = time.time_ns()
    df["ts"] = now + np.arange(len(df))  # live: stamped now, so the poll stage (feed -> worker) is measured
    cols = _cols(df, 0)
    produce_ticks(settings, inp, cols, names)  # a backlog: batches fill up to max_records
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(FeatureConfig(), bar_intervals_ns=(), backend="cpu"))
    metrics = RuntimeMetrics(proc.name)
    # linger_ms 300: a batcher that waited for it would hold each trickled tick ~150 ms on average and
    # bundle ~10 of them per batch; adaptive batching ignores it and closes when the input is drained
    rt = RuntimeConfig(max_records=400, linger_ms=300, commit_interval_ms=50, producer_linger_ms=3,
                       fetch_wait_max_ms=20)
    w = StreamWorker(proc, settings.kafka, rt, group=f"g.l.{unique}", worker_id="l1", input_topic=inp, metrics=metrics)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: w.summary.records_in >= len(df), 120, "the backlog to be processed")
        backlog_batches = w.summary.batches
        before = metrics.stages.snapshot()["batch"]
        # then a trickle: one tick every 30 ms; adaptive batching hands each over at once (no linger wait)
        _trickle(settings, inp, cols, names, len(df), 40, 0.03)
        wait_until(lambda: w.summary.records_in >= len(df) + 40, 60, "the trickle to be processed")
    finally:
        w.stop()
        t.join(60)
    assert backlog_batches <= math.ceil(len(df) / 400) + 8, f"{backlog_batches} batches for a backlog of {len(df)}"
    trickle_batches = w.summary.batches - backlog_batches
    # small batches when quiet (a loaded machine bundles a few ticks that arrive while a batch is processed)
    assert trickle_batches >= 5, f"the 40 trickled ticks came in only {trickle_batches} batches"
    after = metrics.stages.snapshot()["batch"]
    waited = (after[1] - before[1]) / max(1, int(after[0].sum() - before[0].sum()))
    assert waited < rt.linger_ms / 10 / 1e3, f"trickled ticks waited {waited * 1e3:.1f} ms on average for their batch"
    assert w._pconf["linger.ms"] == 3 and w._cconf["fetch.wait.max.ms"] == 20 and w._cconf["socket.nagle.disable"]
    snap = metrics.stages.snapshot()
    n = w.summary.records_in
    for stage in STAGES:
        count = int(snap[stage][0].sum())
        if stage == "deliver":
            assert count == 0, "exactly-once: outputs become visible at the commit, not on delivery"
        elif stage == "poll":  # live records only (stamped < 60 s before their poll): at least the trickle
            assert count >= 40, "live records: feed -> poll measured"
        else:
            assert count == n, f"stage {stage}: {count} observations for {n} records"
    text = generate_latest(metrics.registry).decode()
    assert 'mystocks_stream_stage_seconds_count{processor="features",stage="commit"}' in text


def test_fetch_min_bytes_bundles_a_quiet_input_into_fewer_batches(settings: Settings, unique: str) -> None:
    """``fetch_min_bytes`` takes effect: at 1 MB with a 300-ms ``fetch_wait_max_ms`` the broker holds
    each fetch until the wait ends, so 40 ticks trickled 15 ms apart (0.6 s) reach the worker in a
    few batches. With the default (1 byte) every tick answers a fetch and is a batch of its own (the
    test above: at least 5 batches for 40 ticks 30 ms apart; ~40 on a quiet machine)."""
    inp, out = _live_topics(settings, f"t.fmb.{unique}", f"t.fmbout.{unique}")
    df, names = _ticks(unique)
    cols = _cols(df, 0)
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(FeatureConfig(), bar_intervals_ns=(), backend="cpu",
                                                         output_topic=out))
    rt = RuntimeConfig(guarantee=AT_LEAST_ONCE, fetch_min_bytes=1_000_000, fetch_wait_max_ms=300)
    w = StreamWorker(proc, settings.kafka, rt, group=f"g.fmb.{unique}", worker_id="m1", input_topic=inp,
                     metrics=RuntimeMetrics(proc.name))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        _trickle(settings, inp, cols, names, 0, 1, 0.0)
        wait_until(lambda: w.summary.records_in >= 1, 120, "the worker to consume its first tick")
        first = w.summary.batches
        _trickle(settings, inp, {k: v[1:] for k, v in cols.items()}, names, 1, 40, 0.015)
        wait_until(lambda: w.summary.records_in >= 41, 60, "the trickle to be processed")
    finally:
        w.stop()
        t.join(60)
    batches = w.summary.batches - first
    assert 1 <= batches <= 8, f"40 ticks over 0.6 s came in {batches} batches: fetch_min_bytes had no effect"
    assert w._cconf["fetch.min.bytes"] == 1_000_000 and w._cconf["fetch.wait.max.ms"] == 300


def test_consume_json_prints_null_for_nan(settings: Settings, unique: str) -> None:
    topic = "md.bars.11s"
    TopicAdmin(settings.kafka).create([get(topic)])
    sym = f"J{unique}"
    bar = {"symbol": sym, "ts_event": 1_777_689_380 * SEC, "interval_ns": 11 * SEC, "open": 1.0, "high": 1.0,
           "low": 1.0, "close": 1.0, "volume": 0.0, "vwap": float("nan"), "trades": 1}
    prod = make_producer(settings.kafka)
    prod.produce(topic, CODEC.encode("mystocks.md.Bar", bar), sym.encode(), timestamp=bar["ts_event"] // 1_000_000)
    assert prod.flush(30) == 0
    r = run_cli("consume", topic, "--from-beginning", "--json", "--timeout", "4")
    assert r.returncode == 0, r.stderr

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-JSON token {name} in consume --json output")

    recs = [json.loads(line, parse_constant=no_constants) for line in r.stdout.splitlines() if line.strip()]
    ours = [x for x in recs if x["key"] == sym]
    assert len(ours) == 1 and ours[0]["value"]["vwap"] is None and ours[0]["value"]["close"] == 1.0


def test_the_worker_warms_its_processor_up_once_before_it_joins_its_group(settings: Settings, unique: str) -> None:
    """``Processor.warm_up`` runs in the worker's set-up before its consumer exists (so before it
    joins the group and is assigned anything), once; the run then processes every tick."""
    inp, out = _live_topics(settings, f"t.wu.{unique}", f"t.wuout.{unique}")
    df, names = _ticks(unique)
    produce_ticks(settings, inp, _cols(df, 0), names)
    seen: list[bool] = []

    class Recording(TickFeaturesProcessor):
        def warm_up(self) -> None:
            seen.append(w.consumer is None)
            super().warm_up()

    proc = Recording(FeaturesProcessorConfig(FeatureConfig(), bar_intervals_ns=(), backend="cpu", output_topic=out))
    w = StreamWorker(proc, settings.kafka, RuntimeConfig(guarantee=AT_LEAST_ONCE), group=f"g.wu.{unique}",
                     worker_id="wu1", input_topic=inp, metrics=RuntimeMetrics(proc.name))
    summary = w.run(idle_exit_s=3.0, max_records=len(df))
    assert seen == [True], seen
    assert summary.records_in == len(df) and summary.warm_up_s > 0, summary
