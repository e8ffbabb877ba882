"""Benchmark: real-time tick features end to end (Kafka in -> features -> Kafka out), ours vs Quix
Streams, faust-streaming and a naive pandas recompute, then tick->feature latency at a fixed load.

Same input for every throughput contender: ``--n`` synthetic ticks (``--symbols`` symbols, Zipf
activity, 30 % trades) in ``--partitions`` partitions, produced once; each contender reads it from
the beginning in a fresh group and writes one ``FeatureVector`` (Confluent-framed Avro) per tick to
its own topic. Before the first timed contender, an untimed exactly-once pass of ours over the
first ``--warm-up`` ticks warms the broker (a freshly started broker's first transactions ran
several times slower, and only the first contender paid for them). Same features for everyone,
per symbol, trades update / quotes repeat the last values: ``ret``, ``ema_10``, ``ema_50`` (pandas
``ewm(span, adjust=False)``), ``roll_mean``, ``roll_std`` (last 20 trades, ddof=1, NaN until 20
trades), ``vwap_session`` (cumulative since the symbol's first trade).

- ours EOS / ALO: ``StreamWorker`` + ``TickFeaturesProcessor(FeaturesProcessorConfig(
  features=FeatureConfig(features=("ret", "ema", "roll_mean", "roll_std", "vwap_session")),
  bar_intervals_ns=()))`` (no bars), exactly-once / at-least-once, ``RuntimeConfig`` defaults
  otherwise (``--batch`` records per batch; linger and commit interval are printed). Numba
  compilation is paid before timing. The default runtime commits every 1 s instead of 100 ms while
  the worker is behind (catch-up commits), which a backlog like this input is; row ``eosnc`` runs
  ours EOS again with them off (``catch_up_commit_interval_ms=0``: a commit every 100 ms
  throughout; JSON ``ours_eos_no_catch_up_tps``, ``ratio_vs_quix_no_catch_up``).
  With ``--repeat R`` ours runs R rounds of the three (each run in a fresh group, to an output topic
  of its own, checked like the peers); each headline is its run with the median rate, every rate is
  in ``ours_*_tps_runs``: one run of ours takes 2-4 s and its rate moved by 2x between runs on the
  2-core VM, where the peers' long runs (30-45 s) vary by a few per cent, so they run once.
- Quix Streams: ``StreamingDataFrame.apply(stateful=True)`` with the per-symbol state in its
  RocksDB store (changelog on), exactly-once (``--quix-guarantee``), 5 s commit interval (Quix
  default); values in/out with fastavro behind custom (de)serializers.
- faust-streaming: an agent over ``stream.take(--batch, within=0.02 s)`` with a faust ``Table``
  (``store='memory://'``, ``use_partitioner=True``) holding each symbol's state, written once per
  touched symbol per batch; outputs with ``Topic.send_soon``; producer tuned like ours
  (``producer_linger=0.02``, ``producer_max_batch_size=1 MB``; faust's defaults are 0 s / 16 kB and
  were slower); at-least-once (faust default); runs as a subprocess of this script and is stopped
  once it has processed the input (or its wall cap).
- pandas: confluent-kafka ``consume(--batch)``, fastavro decode, append to one history frame and
  recompute ``groupby(symbol)`` pct_change / ewm / rolling / cumsum over the whole history every
  batch, forward-fill quotes, emit the batch's rows (fastavro + produce).

The three peers run the same per-tick Python function (:func:`step`) as the reference of the
correctness check. Peers are capped at ``--cap-s`` seconds of processing; the table states the
count each one processed. Throughput = ticks processed / (last commit or flush - first record).

Correctness: the committed output count of each topic, and the last feature vector of every
symbol compared with the reference at that symbol's ``seq`` (max relative difference, NaN
positions must agree).

Latency (ours, at-least-once then exactly-once): a producer subprocess offers ``--rate`` ticks/s for
``--ramp-s`` + ``--latency-s`` s with ``ts_event = time.time_ns()`` at produce time (one
``produce_batch`` per paced chunk; ``--feed-producer``: by default not idempotent, one request in
flight, see ``FEED_PRODUCERS`` in ``bench/_features_latency.py`` for why); the ticks of the first
``--ramp-s`` s (the switch from an idle pipeline to full rate) are not counted. Before the first measured
run, an untimed run per guarantee (``--lat-warm-up-s`` s at ``--rate``) warms the broker's JIT for a
live feed's small requests (JSON ``lat_warm_up_runs``). Our worker runs in another
subprocess; this process consumes the output (read_committed) and takes, per feature vector,
latency = receive wall time - ``ts_event``. p50/p99/p99.9 in ms, and the worker processes' CPU per
1,000 offered ticks (``/proc``; ``worker_cpu_ms_per_1k``), and per batch the worker thread's wall
and CPU time in decode+process+produce (``batch_wall_us``, ``batch_cpu_us``: its
``mystocks_stream_batch_seconds`` and ``mystocks_stream_batch_cpu_seconds``; set against
``bench/batch_overhead.py``'s quiet-machine cost, what sharing the cores adds), and the commits
that waited for the previous commit's acknowledgements, of all commits (``commit_waits``,
``commits``; column "commit waits"), and where the machine's CPU went over the window, in cores: the
worker(s), the broker, the load producer, this process (the reader) and the machine's busy total
(``cpu_cores``; the floors' runs carry it too, with the relay in the worker's place).
``--worker-cpus`` / ``--broker-cpus`` pin our worker(s) (and the floor's relay) and the running
local broker to CPU lists for the latency phase (``run --cpus``, ``stack.kafka_cpus``;
``mystocks_gpu/infra/cpu_affinity.py``). ``--low-rate`` repeats both at a
lower load that this machine sustains. The floor: the same producer at the same rates into a topic
that this process consumes directly (Kafka alone, one hop, no worker); the goals table prints its quantile
beside each latency goal (``p99_ms_floor``, ``p99_ms_floor_low_rate`` in the JSON). The two-hop
floor (``p99_ms_floor_2hops``, ``p99_ms_floor_2hops_low_rate``, ``floor_2hops``): a plain
confluent-kafka relay with the worker's at-least-once client settings copies the input to an output
topic that this process reads, the pipeline's shape with no work in it. The exactly-once
floor (Kafka transactions alone, ``p99_ms_floor_eos``, ``floor_eos``): the relay copies in
transactions committed by the worker's rule at ``--commit-interval-ms``, and
this process reads that output read_committed: what the commit wait costs with no work at all.
The floor runs once in each round of ``--repeat``, right after ours (and the ``--ab-tree`` run) at
the same guarantee and rate, so both sample the same phase of a shared machine (whose Kafka hops
swung 5-8x between phases on the 2-core VM); the goals table uses its run with the median p99, and
every floor run is in ``floor_runs``.

    python bench/features_e2e.py --n 1000000 --symbols 500 --json bench/out/features_e2e.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _features_latency as L  # noqa: E402
import _latency_floor as LF  # noqa: E402
from _features_goals import goals  # noqa: E402
from _features_reference import (  # noqa: E402
    FCFG,
    FV,
    NAMES,
    NWIN,
    TICK,
    RefIndex,
    new_state,
    step_tick,
    vector_of,
)

from mystocks_gpu.data.live_feed import StampedTicks, paced_feed  # noqa: E402
from mystocks_gpu.exceptions import ConfigError  # noqa: E402
from mystocks_gpu.infra.cpu_affinity import parse_cpu_list  # noqa: E402
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor  # noqa: E402
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE, RuntimeConfig  # noqa: E402

QuixGuarantee = Literal["at-least-once", "exactly-once"]  # Quix Application's processing_guarantee
LEFTOVER_PARTITIONS = 200  # more on the broker than a run needs: the header says so (see bench/HISTORY.md, 2026-12-06)
CONTENDERS = frozenset({"eos", "eosnc", "alo", "quix", "faust", "pandas", "latency", "floor", "floor2"})  # --skip names
SCRIPT = Path(__file__).resolve()


# ---- contenders ----------------------------------------------------------------------------------
def make_processor(out: str, backend: str) -> TickFeaturesProcessor:
    return TickFeaturesProcessor(FeaturesProcessorConfig(features=FCFG, bar_intervals_ns=(), output_topic=out,
                                                         backend=backend))


def run_ours(s: Any, topic: str, out: str, group: str, guarantee: str, n: int, batch: int, backend: str,
             cols: dict[str, np.ndarray], names: list[str], catch_up_ms: float | None = None,
             record_io: str = "auto") -> dict[str, Any]:
    C.warm_processor(make_processor(out, backend), cols, names)
    proc = make_processor(out, backend)
    rt = RuntimeConfig(guarantee=guarantee, max_records=batch, catch_up_commit_interval_ms=catch_up_ms,
                       record_io=record_io)
    w = C.TimedWorker(proc, s.kafka, rt, group=group, worker_id="w0", input_topic=topic)
    sm = w.run(idle_exit_s=30.0, max_records=n)
    return {**C.summary_dict(sm), "runtime": {"max_records": rt.max_records, "linger_ms": rt.linger_ms,
                                              "commit_interval_ms": rt.commit_interval_ms,
                                              "catch_up_commit_interval_ms": rt.catch_up_ms},
            "processed": sm.records_in, "busy_s": w.busy_s, "tps": sm.records_in / w.busy_s,
            "backend": proc.backend, "batch_s_sum": C.metric(w, "mystocks_stream_batch_seconds_sum"),
            "commit_s_sum": C.metric(w, "mystocks_stream_commit_seconds_sum")}


def run_quix(s: Any, topic: str, out: str, group: str, n: int, cap_s: float, guarantee: str) -> dict[str, Any]:
    from quixstreams import Application

    deser, ser = C.quix_serdes(TICK, FV)
    done = {"n": 0, "stopped": False}
    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(broker_address=s.kafka.bootstrap_servers, consumer_group=group,
                          auto_offset_reset="earliest", processing_guarantee=cast(QuixGuarantee, guarantee),
                          state_dir=state_dir, loglevel="WARNING", use_changelog_topics=True)
        t_in = app.topic(topic, value_deserializer=deser, key_deserializer="bytes")
        t_out = app.topic(out, value_serializer=ser, key_serializer="bytes")

        def feat(v: dict[str, Any], state: Any) -> dict[str, Any]:
            st = state.get("s") or new_state()
            res = step_tick(st, v)
            state.set("s", st)
            done["n"] += 1
            if not done["stopped"] and time.perf_counter() - (type(deser).t_first or 0) > cap_s:
                done["stopped"] = True
                app.stop()
            return vector_of(v, res, time.time_ns())

        app.dataframe(t_in).apply(feat, stateful=True).to_topic(t_out)
        timing = C.time_quix_commit(app)
        type(deser).t_first = None
        app.run(count=n, collect=False)
        if "t_end" not in timing or type(deser).t_first is None:
            raise RuntimeError("Quix run ended without a final commit or without consuming")
        busy = timing["t_end"] - type(deser).t_first
    return {"processed": done["n"], "busy_s": busy, "tps": done["n"] / busy, "capped": done["stopped"],
            "guarantee": guarantee}


def run_faust(s: Any, topic: str, out: str, tag: str, n: int, cap_s: float, batch: int, partitions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-faust-") as tmp:
        res_path = Path(tmp) / "result.json"
        cfg = {"app_id": f"bench-fe-faust-{tag}", "broker": f"kafka://{s.kafka.bootstrap_servers}", "topic": topic,
               "out": out, "n": n, "cap_s": cap_s, "take": batch, "within": 0.02, "partitions": partitions,
               "result": str(res_path), "datadir": tmp}
        t0, t0_mono = time.perf_counter(), time.monotonic()
        p = subprocess.Popen([sys.executable, str(SCRIPT), "--_role", "faust", "--_cfg", json.dumps(cfg)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(C.ROOT))
        r: dict[str, Any] | None = None
        waited = ""
        try:
            deadline = t0 + 120 + cap_s
            while not res_path.exists() and p.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.2)
            if res_path.exists():
                time.sleep(0.2)
                r = json.loads(res_path.read_text())
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            else:
                waited = (f"killed after {time.perf_counter() - t0:.0f} s" if p.poll() is None
                          else f"exit {p.returncode}")
        finally:
            if p.poll() is None:
                p.kill()
            log = p.communicate()[0] if p.stdout else ""
    if r is None:
        raise RuntimeError(f"faust worker produced no result ({waited}); its output:\n{log[-2000:]}")
    if "error" in r:
        raise RuntimeError(f"{r['error']}\n{log[-1500:]}")
    r["startup_s"] = r.pop("t_first_mono") - t0_mono  # process start -> first record (not timed)
    return r


def faust_worker(cfg: dict[str, Any]) -> None:
    """The faust app (runs in its own process: ``--_role faust``)."""
    import faust
    from faust.transport.producer import ProducerBuffer

    # faust's buffer of pending sends (send_soon, table changelog writes) holds at most 100 messages
    # before the agent stops to flush it; a batch here queues take + touched symbols (~5,500), and on
    # a fast machine that flush stalled for good ("producer buffer full", no output for minutes)
    ProducerBuffer.max_messages = 4 * cfg["take"]
    dec, enc = C.avro_reader(TICK), C.avro_writer(FV)
    app = faust.App(cfg["app_id"], broker=cfg["broker"], store="memory://", web_enabled=False,
                    datadir=cfg["datadir"], topic_partitions=cfg["partitions"], topic_replication_factor=1,
                    producer_linger=0.02, producer_max_batch_size=1_000_000)
    src = app.topic(cfg["topic"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    dst = app.topic(cfg["out"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    table = app.Table("feat", default=None, partitions=cfg["partitions"], use_partitioner=True)
    st_run: dict[str, Any] = {"n": 0, "t_first": None, "done": False}
    res_path = Path(cfg["result"])

    @app.agent(src)
    async def features(stream: Any) -> None:
        async for values in stream.take(cfg["take"], within=cfg["within"]):
            if st_run["done"]:
                continue
            if st_run["t_first"] is None:
                st_run["t_first"], st_run["t_first_mono"] = time.perf_counter(), time.monotonic()
            ingest, t_b = time.time_ns(), time.perf_counter()
            local: dict[str, list[Any]] = {}
            for raw in values:
                v = dec(raw)
                sym = v["symbol"]
                st = local.get(sym)
                if st is None:
                    st = table.get(sym) or new_state()
                    local[sym] = st
                val = enc(vector_of(v, step_tick(st, v), ingest))
                dst.send_soon(key=sym.encode(), value=val)  # buffered produce (faster than await send here)
            for sym, st in local.items():
                table[sym] = st
            st_run["n"] += len(values)
            st_run["batches"] = st_run.get("batches", 0) + 1
            st_run["proc_s"] = st_run.get("proc_s", 0.0) + time.perf_counter() - t_b
            if st_run["n"] >= cfg["n"] or time.perf_counter() - st_run["t_first"] > cfg["cap_s"]:
                await app.producer.flush()
                t_end = time.perf_counter()
                st_run["done"] = True
                busy = t_end - st_run["t_first"]
                res_path.write_text(json.dumps({"processed": st_run["n"], "busy_s": busy, "tps": st_run["n"] / busy,
                                                "t_first_mono": st_run["t_first_mono"], "batches": st_run["batches"],
                                                "proc_s": st_run["proc_s"],
                                                "capped": st_run["n"] < cfg["n"], "guarantee": "at_least_once"}))
                os.kill(os.getpid(), signal.SIGTERM)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    try:
        app.main()
    except SystemExit:
        pass
    except Exception as exc:  # noqa: BLE001 - hand the error to the parent
        if not res_path.exists():
            res_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


def run_pandas(s: Any, topic: str, out: str, group: str, n: int, cap_s: float, batch: int) -> dict[str, Any]:
    import pandas as pd

    from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer

    dec, enc = C.avro_reader(TICK), C.avro_writer(FV)
    cons = make_consumer(s.kafka, group)
    prod = make_producer(s.kafka)
    cons.subscribe([topic])
    hist = pd.DataFrame(columns=["symbol", "ts_event", "seq", "kind", "price", "size"])
    done, t_first, batches = 0, None, 0
    try:
        while done < n:
            msgs = [m for m in cons.consume(batch, timeout=0.05) if m.error() is None]
            if not msgs:
                if t_first is not None and time.perf_counter() - t_first > cap_s:
                    break
                continue
            if t_first is None:
                t_first = time.perf_counter()
            ingest = time.time_ns()
            recs = [dec(m.value()) for m in msgs]
            df = pd.DataFrame.from_records(recs, columns=["symbol", "ts_event", "seq", "kind", "price", "size"])
            hist = df if hist.empty else pd.concat([hist, df], ignore_index=True)
            trade = hist["kind"] == "TRADE"
            tr = hist[trade]
            g = tr.groupby("symbol", sort=False)
            feats = pd.DataFrame(index=tr.index)
            feats["ret"] = g["price"].pct_change()
            for span in (10, 50):
                feats[f"ema_{span}"] = g["price"].ewm(span=span, adjust=False).mean().reset_index(level=0, drop=True)
            roll = g["price"].rolling(NWIN)
            feats["roll_mean"] = roll.mean().reset_index(level=0, drop=True)
            feats["roll_std"] = roll.std().reset_index(level=0, drop=True)
            pv = (tr["price"] * tr["size"]).groupby(tr["symbol"], sort=False).cumsum()
            feats["vwap_session"] = pv / g["size"].cumsum()
            full = feats.reindex(hist.index)
            full = full.groupby(hist["symbol"], sort=False).ffill()  # quotes repeat the last trade's values
            new = full.iloc[-len(df):][list(NAMES)].to_numpy()
            for i, r in enumerate(recs):
                val = enc({"symbol": r["symbol"], "ts_event": r["ts_event"], "seq": r["seq"], "ts_ingest": ingest,
                           "values": dict(zip(NAMES, new[i].tolist(), strict=True))})
                while True:
                    try:
                        prod.produce(out, val, r["symbol"].encode(), timestamp=r["ts_event"] // 1_000_000)
                        break
                    except BufferError:
                        prod.poll(0.05)
            prod.poll(0)
            done += len(msgs)
            batches += 1
            if time.perf_counter() - t_first > cap_s:
                break
        prod.flush(60)
        cons.commit(asynchronous=False)
        busy = time.perf_counter() - (t_first or time.perf_counter())
    finally:
        cons.close()
    return {"processed": done, "busy_s": busy, "tps": done / busy if busy else None, "capped": done < n,
            "batches": batches, "history_rows": len(hist)}


# ---- latency (see bench/_features_latency.py) ----------------------------------------------------
def worker_role(cfg: dict[str, Any]) -> None:
    """Our worker as its own process (``--_role worker``): serves its Prometheus metrics on
    ``metrics_port``; SIGTERM finishes the batch and commits."""
    from mystocks_gpu.streams.stream_metrics import RuntimeMetrics

    s = C.settings()
    cols, names = C.synthetic(3000, cfg["symbols"])
    C.warm_processor(make_processor(cfg["out"], cfg["backend"]), cols, names)
    proc = make_processor(cfg["out"], cfg["backend"])
    metrics = RuntimeMetrics(proc.name)
    metrics.serve(int(cfg.get("metrics_port") or 0))
    rt = RuntimeConfig(guarantee=cfg["guarantee"], max_records=cfg["batch"], linger_ms=cfg["linger_ms"],
                       batching=cfg.get("batching", "adaptive"),
                       commit_interval_ms=float(cfg.get("commit_interval_ms", 100.0)),
                       catch_up_commit_interval_ms=cfg.get("catch_up_ms"), record_io=cfg.get("record_io", "auto"),
                       producer_linger_ms=cfg.get("output_linger_ms"), **L.fetch_settings(cfg),
                       cpu_affinity=parse_cpu_list(cfg.get("cpus") or ""))
    w = C.TimedWorker(proc, s.kafka, rt, group=cfg["group"], worker_id=cfg.get("worker_id", "lat0"),
                      input_topic=cfg["topic"], metrics=metrics)
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    sm = w.run(idle_exit_s=120.0)
    print(json.dumps(C.summary_dict(sm)), flush=True)


class _LoadWindow:
    """The load producer's measured window: it opens ``ramp_s`` after the feed's clock starts
    (:meth:`start`, announced on stdout); ``counted`` = ticks stamped inside it."""

    def __init__(self, ramp_s: float) -> None:
        self.ramp_s, self.count_from, self.counted, self.t0 = ramp_s, 0, 0, 0.0

    def start(self) -> None:
        self.count_from = time.time_ns() + int(self.ramp_s * 1e9)
        print(json.dumps({"count_from": self.count_from}), flush=True)
        self.t0 = time.perf_counter()

    def sent(self, ticks: int, stamp_ns: int) -> None:
        self.counted += ticks if stamp_ns >= self.count_from else 0


def producer_role(cfg: dict[str, Any]) -> None:
    """Offer ``rate`` ticks/s for ``seconds`` with ts_event = wall clock at produce (``--_role producer``):
    the package's paced feed (``live_feed.paced_feed``), each due chunk through the C ``produce_many``."""
    from mystocks_gpu.infra.kafka_clients import make_producer
    from mystocks_gpu.schemas.batch_codec import BatchEncoder

    s = C.settings()
    rate, n = float(cfg["rate"]), int(cfg["rate"] * cfg["seconds"])
    cols, names = C.synthetic(n, cfg["symbols"], seed=11)
    enc = BatchEncoder(TICK)
    spliced = StampedTicks(enc, {k: v[:256] for k, v in cols.items()}, names, time.time_ns()).exact
    prod = make_producer(s.kafka, **L.FEED_PRODUCERS[cfg["feed"]])
    if cfg.get("probe_ts") is not None:
        # connect, fetch metadata (and an idempotent feed's producer id) before the clock starts: one tick stamped
        # just before the load window (the measuring consumer skips it), flushed; otherwise the first
        # ticks of the window wait in this producer for its connection and count as pipeline latency
        probe = {k: v[:1] for k, v in cols.items()}
        probe["ts"] = np.full(1, int(cfg["probe_ts"]), np.int64)
        prod.produce(cfg["topic"], enc.encode(probe, names)[0], names[int(cols["sym"][0])].encode(),
                     timestamp=int(cfg["probe_ts"]) // 1_000_000)
        if prod.flush(30) != 0:
            raise SystemExit("the latency producer could not deliver its probe tick")
    C.freeze_heap()
    window = _LoadWindow(float(cfg.get("ramp_s", 0.0)))

    def send(values: list[bytes], keys: list[bytes], ts_ms: int) -> None:
        # one C call per due chunk (the generator shares the cores with the broker and the worker)
        L.produce_chunk(prod, cfg["topic"], values, keys, ts_ms, "the latency producer", 0.01)
        prod.poll(0)

    paced_feed([cols], names, enc, rate, send, on_chunk=window.sent, on_start=window.start)
    t_send = time.perf_counter() - window.t0
    prod.flush(60)
    print(json.dumps({"produced": n, "send_s": t_send, "offered_rate": n / t_send, "counted": window.counted,
                      "ts_spliced": spliced}), flush=True)


# ---- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000,
                    help="input ticks for the throughput runs (default 1000000: 100k ticks were 0.3-1 s of our worker's "
                         "time, and the ratio to Quix swung 2.6-10.8 between runs on one machine)")
    ap.add_argument("--warm-up", type=int, default=300_000,
                    help="before the timed contenders, one untimed exactly-once pass of ours over the first N input "
                         "ticks into a throwaway topic, so the first timed contender does not pay for the broker's "
                         "cold transaction and fetch paths (default 300000; 0 = none)")
    ap.add_argument("--symbols", type=int, default=500, help="distinct symbols (default 500)")
    ap.add_argument("--partitions", type=int, default=4,
                    help="input and output partitions of the throughput and scale-out runs (default 4)")
    ap.add_argument("--lat-partitions", type=int, default=None,
                    help="input and output partitions of the one-worker latency runs and of Kafka's floors beside "
                         "them (default --partitions). Each partition costs every hop a share of its time: on the "
                         "2-core VM, 1 partition against 4 halved the at-least-once p99 (bench/HISTORY.md, "
                         "2026-12-07 23:05); the scale-out runs need one partition per worker and keep --partitions")
    ap.add_argument("--record-io", choices=["auto", "columnar", "messages"], default="auto",
                    help="our workers' RuntimeConfig.record_io (default auto: columnar when the C extension is built)")
    ap.add_argument("--batch", type=int, default=5000, help="micro-batch size: ours max_records, faust take, pandas consume (default 5000)")
    ap.add_argument("--cap-s", type=float, default=45.0, help="wall cap per peer (Quix, faust, pandas) in s (default 45)")
    ap.add_argument("--backend", default="auto", help="our array backend: auto|cpu|gpu (default auto)")
    ap.add_argument("--quix-guarantee", default="exactly-once", choices=["exactly-once", "at-least-once"])
    ap.add_argument("--rate", type=float, default=50_000.0, help="offered load of the latency runs, ticks/s (default 50000)")
    ap.add_argument("--latency-s", type=float, default=6.0, help="seconds of offered load per latency run (default 6)")
    ap.add_argument("--ramp-s", type=float, default=1.0,
                    help="seconds of offered load before each latency window, not counted: the switch from an idle "
                         "pipeline to the full rate (default 1; 0 counts from the first tick)")
    ap.add_argument("--lat-batch", type=int, default=5000, help="latency phase: max records per batch (default 5000)")
    ap.add_argument("--lat-batching", default="adaptive", choices=["adaptive", "linger"],
                    help="latency phase: batching of our worker (default adaptive)")
    ap.add_argument("--lat-linger-ms", type=float, default=2.0, help="latency phase: batch linger in linger mode, ms (default 2)")
    ap.add_argument("--feed-producer", default="ordered", choices=sorted(L.FEED_PRODUCERS),
                    help="the latency load producer's delivery settings (the Kafka-alone floor's too): ordered (not "
                         "idempotent, one request in flight per connection) or idempotent (the project's producer "
                         "defaults, whose librdkafka broker thread spins while the broker is slow); see FEED_PRODUCERS "
                         "in bench/_features_latency.py (default ordered: until 2026-12-05 the feed was idempotent)")
    ap.add_argument("--output-linger-ms", type=float, default=None,
                    help="latency phase: our worker's RuntimeConfig.producer_linger_ms (default: the runtime's, "
                         "0.5 ms at-least-once, 5 ms exactly-once)")
    ap.add_argument("--fetch-min-bytes", type=int, default=None,
                    help="latency phase: our worker's (and the at-least-once relay's) RuntimeConfig.fetch_min_bytes "
                         "(default: the runtime's, 1: the first record answers a fetch)")
    ap.add_argument("--fetch-wait-max-ms", type=int, default=None,
                    help="latency phase: their RuntimeConfig.fetch_wait_max_ms (default: the runtime's, 100 ms); "
                         "with --fetch-min-bytes over 1 a fetch waits this long for them")
    ap.add_argument("--worker-cpus", default="", metavar="LIST",
                    help="latency phase: run our worker(s), and the floor's relay, on these CPUs (run --cpus; "
                         "as taskset -c: 1, 2-3); default: wherever the scheduler puts them")
    ap.add_argument("--broker-cpus", default="", metavar="LIST",
                    help="latency phase: pin the running local broker's threads to these CPUs for the phase "
                         "(stack.kafka_cpus does it from the start), then give it back every CPU; default: not pinned")
    ap.add_argument("--lat-warm-up-s", type=float, default=30.0,
                    help="latency phase: before the first measured run, an untimed run per guarantee with this many "
                         "seconds of load at --rate warms the broker's JIT for the small requests of a live feed "
                         "(a fresh broker's compiler took 3-4 s of CPU in each of the first latency runs; default 30; "
                         "0 = off)")
    ap.add_argument("--commit-interval-ms", type=float, default=100.0,
                    help="latency phase: our commit interval, ms (default 100; exactly-once goal = this + 10 ms)")
    ap.add_argument("--lat-catch-up-ms", type=float, default=None,
                    help="latency phase: our catch-up commit interval while behind, ms (default: the runtime's, "
                         "1000; 0 = off)")
    ap.add_argument("--low-rate", type=float, default=10_000.0,
                    help="also measure latency at this lower offered load, ticks/s (default 10000; 0 = skip)")
    ap.add_argument("--guarantees", default="at_least_once,exactly_once",
                    help="latency runs: comma list of the guarantees to measure, at_least_once and/or exactly_once "
                         "(hyphens accepted)")
    ap.add_argument("--ab-tree", type=Path, default=None,
                    help="also run each latency scenario with the worker of this checkout (e.g. the previous commit: "
                         "git archive HEAD~1 | tar -x -C DIR), alternating old and new under the same load")
    ap.add_argument("--repeat", type=int, default=1, help="runs of ours: throughput rounds of eos, eosnc and alo "
                    "(the headline is the run with the median rate; every rate is in '*_tps_runs'), and latency runs per "
                    "scenario (alternating with --ab-tree; the goals and the JSON's headline fields use the run with the "
                    "median p99, every run is in 'latency_runs'). The peers run once")
    ap.add_argument("--workers", default=None, help="scale-out: comma list of worker counts in one consumer group "
                    "(throughput of --n ticks and exactly-once latency at --rate per count); default 1,2,4 "
                    "(--quick: skip; '' skips)")
    ap.add_argument("--quick", action="store_true", help="small and short: --n 20000, 2 s latency runs (at the goal "
                    "rates --rate / --low-rate, so p99_ms stays the 50k ticks/s headline), no faust")
    ap.add_argument("--skip", default="", help="comma list of contenders to leave out: eos,eosnc,alo,quix,faust,pandas,latency,floor,"
                         "floor2 (floor: Kafka alone at the latency rates, one hop and two through a relay; for exactly-once, "
                         "a transactional relay; floor2: only the at-least-once two-hop relay)")
    ap.add_argument("--dump-records", type=Path, default=None, metavar="DIR",
                    help="latency runs: also write every measured vector's event time, end-to-end latency and its "
                         "three hops (ns) to DIR/latency-<run>.npz, for a look at the tail (each run's JSON has "
                         "'tail_episodes' either way)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--_role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_cfg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._role:
        {"faust": faust_worker, "worker": worker_role, "producer": producer_role, "relay": LF.relay_role}[args._role](json.loads(args._cfg))
        return 0
    if args.lat_catch_up_ms is not None and not (args.lat_catch_up_ms == 0 or args.lat_catch_up_ms >= args.commit_interval_ms):
        ap.error(f"--lat-catch-up-ms must be 0 (off) or >= --commit-interval-ms (got {args.lat_catch_up_ms})")
    if not (args.ramp_s >= 0 and math.isfinite(args.ramp_s)) or not (args.latency_s > 0 and math.isfinite(args.latency_s)):
        ap.error(f"--ramp-s must be >= 0 and --latency-s > 0 (got {args.ramp_s}, {args.latency_s})")
    if not (0 <= args.lat_warm_up_s <= 600):
        ap.error(f"--lat-warm-up-s must be within 0..600 (got {args.lat_warm_up_s})")
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1 (got {args.repeat})")
    try:
        L.fetch_label(args)
    except ConfigError as exc:
        ap.error(f"--fetch-min-bytes / --fetch-wait-max-ms: {exc}")
    if args.lat_partitions is None:
        args.lat_partitions = args.partitions
    if args.partitions < 1 or args.lat_partitions < 1:
        ap.error(f"--partitions and --lat-partitions must be >= 1 (got {args.partitions}, {args.lat_partitions})")
    if args.n < 1 or args.warm_up < 0:
        ap.error(f"--n must be >= 1 and --warm-up >= 0 (got {args.n}, {args.warm_up})")
    if args.quick:
        args.n, args.latency_s = min(args.n, 20_000), min(args.latency_s, 2.0)
        args.lat_warm_up_s = min(args.lat_warm_up_s, 2.0)
        args.skip = ",".join(filter(None, [args.skip, "faust"]))
    if args.workers is None:
        args.workers = "" if args.quick else "1,2,4"
    skip = set(filter(None, args.skip.split(",")))
    if skip - CONTENDERS:
        ap.error(f"--skip: unknown {', '.join(sorted(skip - CONTENDERS))} (choose from {', '.join(sorted(CONTENDERS))})")
    guarantees = [g.replace("-", "_") for g in args.guarantees.split(",") if g]
    if not guarantees or set(guarantees) - {AT_LEAST_ONCE, EXACTLY_ONCE}:
        ap.error(f"--guarantees: comma list of {AT_LEAST_ONCE} and {EXACTLY_ONCE} (got {args.guarantees!r})")
    s, tag, n = C.settings(), C.new_tag(), args.n
    t_script = time.perf_counter()
    m0 = {**C.machine(), "broker_partitions": C.broker_partitions(s)}
    topic = f"bench.fe.in.{tag}"
    outs = {k: f"bench.fe.out.{k}.{tag}" for k in ("warm", "eos", "eosnc", "alo", "quix", "faust", "pandas")}
    print(f"features e2e bench: n={n:,} ticks, {args.symbols} symbols, {args.partitions} partitions, batch {args.batch}, "
          f"peer cap {args.cap_s:.0f} s, latency {args.rate:,.0f} ticks/s x {args.latency_s:.0f} s; features {NAMES}; "
          f"tag {tag}; {m0['cores']} cores, load {m0['loadavg_1min']}; the broker holds {m0['broker_partitions']:,} partitions")
    if m0["broker_partitions"] > LEFTOVER_PARTITIONS:
        print(f"  (over {LEFTOVER_PARTITIONS} partitions, most of them leftovers of earlier runs or tests: a broker with "
              "~1,100 measured slower at 50k ticks/s; `mystocks-gpu stack down --wipe` empties the stack's broker)")
    res: dict[str, Any] = {}
    warm_runs: list[dict[str, Any]] = []  # the latency phase's broker warm-up (L.warm_broker)
    pinned: int | None = None  # the broker pinned for the latency phase (--broker-cpus)
    checks: dict[str, Any] = {}
    notes: list[str] = []
    lat: dict[str, Any] = {}
    ab: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    floors: dict[tuple[str, float, int], list[dict[str, Any]]] = {}  # every floor run, by (guarantee, rate, hops)
    try:
        C.create_topics(s, [(topic, TICK, args.partitions), (topic + ".dlq", None, 1)]
                        + [(o, FV, args.partitions) for o in outs.values()])
        cols, names = C.synthetic(n, args.symbols)
        print(f"  produced {n:,} ticks in {C.produce_ticks(s, topic, cols, names):.1f} s "
              f"({int((cols['kind'] == 0).sum()):,} trades)")
        ref = RefIndex(cols, names)
        if args.warm_up > 0 and CONTENDERS - {"latency", "floor", "floor2"} - skip:
            t_w = time.perf_counter()
            w = run_ours(s, topic, outs["warm"], f"bench-fe-warm-{tag}", EXACTLY_ONCE, min(n, args.warm_up),
                         args.batch, args.backend, cols, names, record_io=args.record_io)
            print(f"  warm-up (untimed): ours EOS over {w['processed']:,} ticks in {time.perf_counter() - t_w:.1f} s")

        def attempt(key: str, fn: Any, *a: Any) -> None:
            try:
                res[key] = fn(*a)
                checks[key] = ref.check(s, outs[key])
                r = res[key]
                print(f"  {key}: {r['tps']:,.0f} ticks/s ({r['processed']:,} ticks in {r['busy_s']:.1f} s) "
                      f"check: {checks[key]}")
            except Exception as exc:  # noqa: BLE001 - report and go on
                notes.append(f"{key} failed: {type(exc).__name__}: {str(exc)[:1500]}")
                print(f"  {notes[-1]}")

        # ours, --repeat rounds of the three (a round in that order): each run reads the input in a
        # fresh group into an output topic of its own; the headline is the run with the median rate
        ours = [(k, gu, cu) for k, gu, cu in (("eos", EXACTLY_ONCE, None), ("eosnc", EXACTLY_ONCE, 0.0),
                                               ("alo", AT_LEAST_ONCE, None)) if k not in skip]
        ours_runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.repeat if ours else 0):
            for key, gu, cu in ours:
                out = outs[key] if rep == 0 else f"bench.fe.out.{key}{rep}.{tag}"
                try:
                    if rep:
                        C.create_topics(s, [(out, FV, args.partitions)])
                    r = run_ours(s, topic, out, f"bench-fe-{key}{rep}-{tag}", gu, n, args.batch, args.backend,
                                 cols, names, cu, args.record_io)
                    r["check"] = ref.check(s, out)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    notes.append(f"{key} (round {rep + 1}) failed: {type(exc).__name__}: {str(exc)[:1500]}")
                    print(f"  {notes[-1]}")
                    continue
                runs_k = ours_runs.setdefault(key, [])
                runs_k.append(r)
                res[key] = {**C.median_run(runs_k, "tps"), "runs": runs_k, "tps_runs": [x["tps"] for x in runs_k]}
                # a run whose output is wrong fails the check, whichever run is the headline
                checks[key] = next((x["check"] for x in runs_k if not x["check"]["ok"]), res[key]["check"])
                print(f"  {key} (round {rep + 1}): {r['tps']:,.0f} ticks/s ({r['processed']:,} ticks in "
                      f"{r['busy_s']:.1f} s) check: {r['check']}")
        if "quix" not in skip:
            attempt("quix", run_quix, s, topic, outs["quix"], f"bench-fe-quix-{tag}", n, args.cap_s, args.quix_guarantee)
        if "faust" not in skip:
            attempt("faust", run_faust, s, topic, outs["faust"], tag, n, args.cap_s, args.batch, args.partitions)
        if "pandas" not in skip:
            attempt("pandas", run_pandas, s, topic, outs["pandas"], f"bench-fe-pandas-{tag}", n, args.cap_s, args.batch)
        # the latency and scale-out phases: the broker on --broker-cpus (given back every CPU after)
        pinned = L.pin_broker(s, args.broker_cpus)
        if "latency" not in skip:
            runs = [(gu, args.rate) for gu in guarantees] + ([(gu, args.low_rate) for gu in guarantees] if args.low_rate else [])
            warm_runs = L.warm_broker(s, tag, guarantees, args, notes)
            for gu, rate in runs:
                key = gu if rate == args.rate else f"{gu}@{int(rate)}"
                mine: list[dict[str, Any]] = []
                for rep in range(args.repeat):
                    trees: list[Path | None] = [None] if args.ab_tree is None else (
                        [None, args.ab_tree] if rep % 2 == 0 else [args.ab_tree, None])
                    for tree in trees:
                        label = "new" if tree is None else "old"
                        try:
                            r = L.run_latency(s, tag, gu, rate, args, tree=tree, label=label)
                        except Exception as exc:  # noqa: BLE001 - report and go on
                            notes.append(f"latency {label} {gu} @ {rate:,.0f}/s failed: {type(exc).__name__}: "
                                         f"{str(exc)[:1500]}")
                            print(f"  {notes[-1]}")
                            continue
                        ab.append(r)
                        if tree is None and r["p99_ms"] is not None:
                            mine.append(r)
                            # the headline of a scenario: its run with the median p99 (--repeat > 1)
                            lat[key] = C.median_run(mine, "p99_ms")
                        print(f"  latency [{label}] {gu} @ {rate:,.0f}/s: p50 {C.fmt(r['p50_ms'])} ms, p99 "
                              f"{C.fmt(r['p99_ms'])} ms, p99.9 {C.fmt(r['p999_ms'])} ms ({r['received']:,}/"
                              f"{r['offered']:,} received, offered {r['offered_rate'] or 0:,.0f}/s, out "
                              f"{r['out_rate'] or 0:,.0f}/s, load {r['loadavg_1min']})")
                        L.print_breakdown(r)
                    if "floor" not in skip:  # in each round, so ours and the floor share the VM's phase
                        # at-least-once: one hop (producer -> consumer) and the pipeline's two (a relay)
                        for relay in (([False] + ([] if "floor2" in skip else [True])) if gu == AT_LEAST_ONCE else [True]):
                            fl = LF.floor_round(s, tag, gu, rate, args, notes, relay=relay)
                            if fl is not None:
                                floors.setdefault((gu, rate, fl["hops"]), []).append(fl)
        for nw in [int(x) for x in args.workers.split(",") if x]:
            try:
                tp = L.run_throughput(s, tag, args, nw, n)
                lt = L.run_latency(s, tag, EXACTLY_ONCE, args.rate, args, workers=nw, label=f"w{nw}")
                scale.append({**tp, "latency": lt})
                print(f"  scale-out {nw} worker(s): {C.fmt(tp['tps'])} ticks/s EOS ({tp['received']:,} of {n:,}); "
                      f"EOS latency @ {args.rate:,.0f}/s p50 {C.fmt(lt['p50_ms'])} / p99 {C.fmt(lt['p99_ms'])} ms "
                      f"(out {lt['out_rate'] or 0:,.0f}/s)")
            except Exception as exc:  # noqa: BLE001 - report and go on
                notes.append(f"scale-out {nw} workers failed: {type(exc).__name__}: {str(exc)[:1500]}")
                print(f"  {notes[-1]}")
    finally:
        L.unpin_broker(pinned)
        deleted = C.cleanup(s, tag)

    def g(key: str, f: str) -> Any:
        return res.get(key, {}).get(f)

    eos_tps = g("eos", "tps")
    labels = {"eos": "ours EOS (StreamWorker + TickFeaturesProcessor)",
              "eosnc": "ours EOS, catch-up commits off (a commit every 100 ms throughout)", "alo": "ours ALO (StreamWorker + TickFeaturesProcessor)",
              "quix": f"Quix Streams {args.quix_guarantee} (stateful apply)", "faust": "faust-streaming ALO (take + Table)",
              "pandas": "pandas recompute per micro-batch"}
    rows = []
    for k, label in labels.items():
        c = checks.get(k, {})
        chk = "-" if not c else ("ok" if c["ok"] else "FAIL") + f" out={c['outputs']:,} rel={c['max_rel_diff']:.1e}"
        rows.append((label, g(k, "tps"), g(k, "processed"), g(k, "busy_s"), C.ratio(eos_tps, g(k, "tps")), chk))
    print(f"\nfeatures {', '.join(NAMES)}; {n:,} ticks, {args.symbols} symbols, {args.partitions} partitions; "
          f"ours on backend {g('eos', 'backend') or '-'}; peers capped at {args.cap_s:.0f} s "
          f"(load avg {m0['loadavg_1min']} -> {C.machine()['loadavg_1min']} on {m0['cores']} cores)")
    C.print_table(["contender", "ticks/s", "ticks", "seconds", "ours EOS / x", "check (last vector per symbol)"], rows)
    if "eos" in res:
        print(f"ours: RuntimeConfig {res['eos']['runtime']}; Quix: commit_interval 5 s (default); "
              f"faust: take({args.batch}, within=0.02 s), send_soon, producer_linger 20 ms, "
              f"producer_max_batch_size 1 MB")
    if ab:
        print(f"\ntick -> feature latency, {args.latency_s:.0f} s of offered load per row after a {args.ramp_s:g} s ramp "
              f"(producer, worker(s), broker and "
              f"this consumer on this machine; {args.lat_batching} batching, commit interval {args.commit_interval_ms:g} ms, "
              f"{args.feed_producer} load producer, output linger "
              f"{'default' if args.output_linger_ms is None else f'{args.output_linger_ms:g} ms'}, fetch "
              f"{L.fetch_label(args)}, worker on CPUs {args.worker_cpus or 'any'}, broker on {args.broker_cpus or 'any'})"
              + ("; 'old' = the worker of " + str(args.ab_tree) if args.ab_tree else ""))
        C.print_table(["code", "guarantee", "offered/s", "achieved in/s", "output/s", "p50 ms", "p99 ms", "p99.9 ms",
                       "max ms", "to worker p50", "worker CPU ms/1k ticks", "rec/batch", "batch wall us",
                       "batch CPU us", "commit waits", "load"],
                      [(x["label"], x["guarantee"], x["rate"], x["offered_rate"], x["out_rate"], x["p50_ms"], x["p99_ms"],
                        x["p999_ms"], x["max_ms"], x["parts"]["to_worker"]["p50_ms"], x.get("worker_cpu_ms_per_1k"),
                        x.get("records_per_batch"), x.get("batch_wall_us"), x.get("batch_cpu_us"),
                        f"{x['commit_waits']}/{x['commits']}" if "commits" in x else None,
                        x["loadavg_1min"]) for x in ab])
    if scale:
        print("\nscale-out (one consumer group, exactly-once; all processes share this machine's cores)")
        C.print_table(["workers", "ticks/s", "x 1 worker", f"EOS p50 ms @ {args.rate:,.0f}/s", "p99 ms", "output/s", "load"],
                      [(x["workers"], x["tps"], C.ratio(x["tps"], scale[0]["tps"]), x["latency"]["p50_ms"],
                        x["latency"]["p99_ms"], x["latency"]["out_rate"], x["loadavg_1min"]) for x in scale])
    r_quix = C.ratio(eos_tps, g("quix", "tps"))
    r_quix_nc = C.ratio(g("eosnc", "tps"), g("quix", "tps"))
    print(f"ratio ours EOS / Quix: {C.fmt(r_quix)}" + (f"; catch-up commits off: {C.fmt(r_quix_nc)}" if r_quix_nc else ""))
    # the floor of a scenario: its run with the median p99, as for ours (floor_eos: Kafka transactions alone)
    floor, floor2, floor_eos = ({rate: C.median_run(fls, "p99_ms") for (gu, rate, hops), fls in floors.items()
                                 if (gu, hops) == want}
                                for want in ((AT_LEAST_ONCE, 1), (AT_LEAST_ONCE, 2), (EXACTLY_ONCE, 2)))
    goal_rows = goals(args, lat, r_quix, floor, floor_eos, floor2)
    if goal_rows:
        print(f"\ngoals vs measured (load avg {C.machine()['loadavg_1min']} on {m0['cores']} cores: goals assume a quiet machine; "
              f"one-worker latency runs and floors on {args.lat_partitions} partition(s); "
              "Kafka 1 hop = the same quantile of producer -> broker -> consumer with no worker, at the goal's rate; "
              "Kafka 2 hops = through a relay that copies the records with no work (the pipeline's shape; "
              "for exactly-once, transactions committed at the same interval); worker hop = the same "
              "quantile of the run's ingest -> output append hop, what the worker itself adds)")
        C.print_table(["goal", "target", "measured", "met", "Kafka 1 hop", "Kafka 2 hops", "worker hop"], goal_rows)
    for note in notes:
        print(f"NOTE: {note}")
    total = time.perf_counter() - t_script
    print(f"total {total:.0f} s; deleted {len(deleted)} topics")
    la, le = lat.get(AT_LEAST_ONCE, {}), lat.get(EXACTLY_ONCE, {})
    ll = lat.get(f"{AT_LEAST_ONCE}@{int(args.low_rate)}", {})
    C.write_json(args.json, {
        "machine": m0, "loadavg_1min_end": C.machine()["loadavg_1min"], "n": n, "warm_up": args.warm_up, "symbols": args.symbols,
        "partitions": args.partitions, "lat_partitions": args.lat_partitions, "batch": args.batch, "cap_s": args.cap_s, "features": list(NAMES),
        "ours_eos_tps": eos_tps, "ours_eos_no_catch_up_tps": g("eosnc", "tps"), "ratio_vs_quix_no_catch_up": r_quix_nc,
        "ours_alo_tps": g("alo", "tps"), "quix_tps": g("quix", "tps"),
        **{f"ours_{k}_tps_runs": g(k, "tps_runs") for k in ("eos", "eosnc", "alo")},
        "faust_tps": g("faust", "tps"), "pandas_tps": g("pandas", "tps"), "ratio_vs_quix": r_quix,
        "processed": {k: g(k, "processed") for k in labels},
        "p50_ms": la.get("p50_ms"), "p99_ms": la.get("p99_ms"), "p999_ms": la.get("p999_ms"),
        "p99_ms_eos": le.get("p99_ms"), "p50_ms_eos": le.get("p50_ms"), "latency_rate": args.rate,
        "p99_ms_low_rate": ll.get("p99_ms"), "low_rate": args.low_rate, "quick": args.quick,
        "scale_out_tps": {x["workers"]: x["tps"] for x in scale},
        "scale_out_p99_ms_eos": {x["workers"]: x["latency"]["p99_ms"] for x in scale},
        "latency_s": args.latency_s, "ramp_s": args.ramp_s, "commit_interval_ms": args.commit_interval_ms, "lat_batching": args.lat_batching,
        "feed_producer": args.feed_producer, "output_linger_ms": args.output_linger_ms,
        "worker_cpus": args.worker_cpus, "broker_cpus": args.broker_cpus,
        "lat_warm_up_s": args.lat_warm_up_s, "lat_warm_up_runs": warm_runs,
        "fetch_min_bytes": args.fetch_min_bytes, "fetch_wait_max_ms": args.fetch_wait_max_ms,
        "p99_ms_floor": floor.get(args.rate, {}).get("p99_ms"),
        "p99_ms_floor_low_rate": floor.get(args.low_rate, {}).get("p99_ms"),
        "p99_ms_floor_2hops": floor2.get(args.rate, {}).get("p99_ms"),
        "p99_ms_floor_2hops_low_rate": floor2.get(args.low_rate, {}).get("p99_ms"),
        "goals": [dict(zip(("goal", "target", "measured", "met", "kafka_alone", "kafka_2hops", "worker_hop"), r,
                           strict=True))
                  for r in goal_rows],
        "p99_ms_floor_eos": floor_eos.get(args.rate, {}).get("p99_ms"),
        "floor": {str(int(k)): v for k, v in floor.items()},
        "floor_2hops": {str(int(k)): v for k, v in floor2.items()},
        "floor_eos": {str(int(k)): v for k, v in floor_eos.items()},
        "floor_runs": [{"guarantee": gu, "rate": rate, **fl} for (gu, rate, _), fls in floors.items() for fl in fls],
        "latency": lat, "latency_runs": ab, "scale_out": scale, "checks": checks, "details": res, "notes": notes,
        "total_s": total})
    ok = all(c.get("ok") for c in checks.values())
    return 0 if ok and not notes else 1


if __name__ == "__main__":
    raise SystemExit(main())
