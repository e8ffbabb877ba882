"""`make demo`: the main pipeline end to end on the local stack, then a report of what it did.

1. create the catalog topics;
2. produce ~1M synthetic ticks for 500 symbols to md.ticks;
3. run the features processor (exactly-once) until it has caught up: throughput;
4. live phase: ``mystocks-gpu produce ticks --synthetic --live`` feeds ticks at a fixed rate with
   event time = the wall clock when sent; tick -> feature latency p50/p99 measured by a consumer of
   features.ticks, after a ramp that is not counted (the switch from an idle worker to the live
   rate, as in ``bench/features_e2e.py``); an exactly-once run, then an at-least-once one;
5. print a few decoded feature vectors and bars, and how to consume the topics;
6. train a model on the feature vectors of the bulk phase (the ``train`` job's runner: replay,
   walk-forward, long-short backtest, model published to ``models``), then score the newest
   feature vectors with it through the ``signals`` processor (exactly-once, ``signals.<model>``).
7. execution (workload 6): market parameters estimated from md.ticks and published, the
   in-process decision latency, parent orders through `mystocks-gpu run execution` (round trip),
   and an execsim of a few orders on the replayed tape (``step_execution``).
8. a backtest (workload 2): three tickers loaded from one CSV each, an MA grid replayed from
   md.bars.1d (``step_backtest``).
9. factors (workload 4): daily bars loaded into md.bars.1d, a ``factors`` job (classic library,
   ICIR + ridge combination) in process, its ranked table (``step_factors``).
10. portfolios (workload 5): an efficient frontier and a rebalancing backtest as ``optimize`` job
   runs (batched solves) on bars written to md.bars.1d (``step_portfolio``).
11. the gRPC API: ``mystocks-gpu gateway`` started, its health service, the bulk phase's ticks of
   three symbols streamed back with SubscribeMarketData, their newest features (``step_gateway``).
12. how to consume the topics yourself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np

from mystocks_gpu.data.live_feed import latency_fields, leading_longs_batch
from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.infra.config import load_settings
from mystocks_gpu.infra.kafka_clients import (
    ensure_broker,
    make_consumer,
    make_producer,
    produce_all,
)
from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor
from mystocks_gpu.schemas import AvroCodec, schema_store
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_worker import StreamWorker
from mystocks_gpu.topics import all_specs
from mystocks_gpu.topics.admin import TopicAdmin


def _items(cols: dict[str, np.ndarray], names: list[str], store):  # type: ignore[no-untyped-def]
    enc = BatchEncoder("mystocks.md.Tick", store)
    step = 100_000
    for lo in range(0, len(cols["ts"]), step):
        part = {k: v[lo:lo + step] for k, v in cols.items()}
        vals = enc.encode(part, names)
        keys = [names[i].encode() for i in part["sym"].tolist()]
        yield from zip(keys, vals, (part["ts"] // 1_000_000).tolist(), strict=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=1_000_000, help="ticks in the bulk phase (default 1M)")
    ap.add_argument("--symbols", type=int, default=500, help="symbols (default 500)")
    ap.add_argument("--live-rate", type=float, default=5_000.0, help="ticks/s in the latency phase (default 5000)")
    ap.add_argument("--live-guarantees", default="exactly-once,at-least-once",
                    help="the live phase's runs, comma-separated: exactly-once, at-least-once (default both)")
    ap.add_argument("--live-at-least-once", action="store_true", help="only the at-least-once live run")
    ap.add_argument("--live-seconds", type=float, default=8.0, help="length of the latency phase (default 8 s)")
    ap.add_argument("--live-ramp-s", type=float, default=1.0,
                    help="seconds of live ticks before the measured ones, not counted (default 1): the worker "
                         "and the broker switch from idle to the live rate")
    ap.add_argument("--config", help="TOML config file (default: $MYSTOCKS_CONFIG or ./mystocks.toml)")
    args = ap.parse_args()
    if args.live_rate <= 0 or args.live_seconds <= 0 or args.live_ramp_s < 0:
        ap.error("--live-rate and --live-seconds must be > 0, --live-ramp-s >= 0")
    guarantees = ["at-least-once"] if args.live_at_least_once else \
        [g.strip() for g in args.live_guarantees.split(",") if g.strip()]
    if not guarantees or set(guarantees) - {"exactly-once", "at-least-once"}:
        ap.error(f"--live-guarantees: exactly-once and/or at-least-once, got {args.live_guarantees!r}")
    s = load_settings(args.config)
    ensure_broker(s.kafka)
    store = schema_store(s)  # one schema store for every codec of the demo (manifest or Schema Registry)
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(backend=s.backend), store=store)
    # the backend printed is the one the processor computes on (Settings.backend resolved)
    print(f"== mystocks-gpu demo  (backend: {proc.backend}; GPU: {gpu_available()[1]})")

    reports = TopicAdmin(s.kafka).create(all_specs())
    print(f"1. topics: {sum(r.status == 'created' for r in reports)} created, "
          f"{sum(r.status != 'created' for r in reports)} already present ({len(reports)} in the catalog)")

    run_id = uuid.uuid4().hex[:6]
    seed = int(time.time()) % 100_000
    market = SyntheticMarket(n_symbols=args.symbols, seed=seed, start_ns=time.time_ns() - 3_600 * 10**9,
                             events_per_s=args.ticks / 3_000.0)  # the bulk phase spans the last hour
    names = symbol_names(args.symbols, seed)
    cols = generate(market, args.ticks)
    t0 = time.monotonic()
    n = produce_all(make_producer(s.kafka), "md.ticks", _items(cols, names, store))
    dt = time.monotonic() - t0
    print(f"2. produced {n:,} ticks ({int((cols['kind'] == 0).sum()):,} trades, {args.symbols} symbols, seed {seed}) "
          f"to md.ticks in {dt:.1f} s ({n / dt:,.0f} ticks/s)")

    group = f"demo.{run_id}"
    worker = StreamWorker(proc, s.kafka, RuntimeConfig(max_records=20_000, linger_ms=5), group=group,
                          worker_id="demo")
    done = threading.Event()
    summary_box: dict[str, object] = {}

    def _run() -> None:
        summary_box["s"] = worker.run()
        done.set()

    th = threading.Thread(target=_run, daemon=True)
    t0 = time.monotonic()
    th.start()
    total_in = _pending(s, group)  # md.ticks may hold earlier demos' ticks: the worker reads them all
    while not done.is_set() and worker.summary.records_in < total_in:
        time.sleep(0.2)
    dt = time.monotonic() - t0
    print(f"3. features processor (exactly-once) caught up: {worker.summary.records_in:,} ticks in {dt:.1f} s "
          f"({worker.summary.records_in / dt:,.0f} ticks/s incl. start-up), {worker.summary.records_out:,} records out "
          f"(feature vectors + bars), {worker.summary.dlq} dead letters, {worker.summary.batches} transactions")

    worker.stop()
    th.join(60)
    # live phase: the same group continues in its own process (`mystocks-gpu run features`), as in production,
    # once per guarantee asked for (exactly-once: the default; at-least-once: no commit interval to wait for)
    headed = False
    for guarantee in guarantees:
        proc_w = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *(["--config", args.config] if args.config else []),
                                   "--log-level", "WARNING", "run", "features",
                                   "--group", group, "--worker-id", "demo", "--linger-ms", "2", "--batch-records", "2000",
                                   *(["--at-least-once"] if guarantee == "at-least-once" else [])],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lat, split = _live_latency(s, names, seed, args.live_rate, args.live_seconds, args.live_ramp_s, args.config)
        finally:
            proc_w.send_signal(signal.SIGTERM)
            out, _ = proc_w.communicate(timeout=60)
        live_backend = _summary_backend(out)
        if live_backend is not None and live_backend != proc.backend:
            print(f"   warning: the live worker computed on {live_backend}, the bulk phase on {proc.backend}")
        if not lat.size:
            print(f"{'  ' if headed else '4.'} live ({guarantee}): no feature vector came back; worker exit "
                  f"{proc_w.returncode}")
            headed = True
            continue
        if not headed:
            headed = True
            print(f"4. live: {lat.size:,} ticks at {args.live_rate:,.0f}/s (after a {args.live_ramp_s:g}-s ramp, not counted) "
                  f"from `mystocks-gpu produce ticks --synthetic --live` through `mystocks-gpu run features`; "
                  f"tick->feature latency (produce -> consumed via the broker; `mystocks-gpu consume features.ticks "
                  f"--latency` measures it too):")
        label = "exactly-once, commit every 100 ms" if guarantee == "exactly-once" else "at-least-once"
        print(f"   {label}: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
              f"max {lat.max():.1f} ms; of which event -> the worker's batch received: p50 "
              f"{np.percentile(split, 50):.1f} ms, p99 {np.percentile(split, 99):.1f} ms; worker exit "
              f"{proc_w.returncode} after SIGTERM, backend {live_backend}")

    if headed:
        print("   (a broker started minutes ago: the JVM is still compiling the code of small requests, which costs "
              "the first tens of seconds of a live feed, exactly-once's commits most; once warm, the same run reads "
              "exactly-once p99 about the commit interval + 10-40 ms: README, \"See the latency yourself\")")
    codec = AvroCodec(store)
    print("5. a few feature vectors from features.ticks:")
    for rec in read_topic(s.kafka, "features.ticks", max_records=3, idle_timeout_s=5, codec=codec):
        v = rec.value or {}
        vals = v.get("values", {})
        shown = {k: round(vals[k], 4) for k in ("last_price", "ret", "ema_10", "roll_mean", "roll_std", "vwap_session",
                                                 "rsi", "spread", "book_imb") if k in vals}
        print(f"   {v.get('symbol')} seq={v.get('seq')} {shown} (+{len(vals) - len(shown)} more)")
    print("   a few 1-second bars from md.bars.1s:")
    for rec in read_topic(s.kafka, "md.bars.1s", max_records=3, idle_timeout_s=5, codec=codec):
        b = rec.value or {}
        print(f"   {b.get('symbol')} O={b.get('open')} H={b.get('high')} L={b.get('low')} C={b.get('close')} "
              f"V={b.get('volume')} VWAP={round(b.get('vwap') or 0, 4)} trades={b.get('trades')}")
    step_training(s, int(cols["ts"].min()), run_id)
    step_execution(s, cols, names, run_id)
    step_backtest(s, args.config)
    step_factors(s, store, run_id)
    step_portfolio(s, store)
    step_gateway(s, args.config, names[:3], int(cols["ts"].min()), int((np.isin(cols["sym"], [0, 1, 2])).sum()))
    print("12. consume the results yourself:\n"
          "   .venv/bin/mystocks-gpu consume features.ticks --from-beginning --max 5 --json\n"
          "   .venv/bin/mystocks-gpu consume md.bars.1m --from-beginning --max 5\n"
          "   .venv/bin/mystocks-gpu models list; .venv/bin/mystocks-gpu consume signals.demo-ridge --from-beginning --max 5\n"
          f"   kcat -b {s.kafka.bootstrap_servers} -C -t features.ticks -c 1 -f '%k %T\\n'\n"
          "   stop the stack: make stack-down")
    return 0


def step_gateway(s, config: str | None, symbols: list[str], start_ns: int, expected: int) -> None:  # type: ignore[no-untyped-def]
    """11. the gRPC API (~10 s): ``mystocks-gpu gateway`` on a free port; the health service, the
    bulk phase's ticks of three symbols streamed back with SubscribeMarketData (every one, in order
    per symbol) and their newest feature vectors with ProcessFeatureCalculation."""
    import socket

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mystocks_gpu.client import GatewayClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    t0 = time.monotonic()
    gw = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *(["--config", config] if config else []),
                           "--log-level", "WARNING", "gateway", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with GatewayClient(f"127.0.0.1:{port}", timeout_s=30) as gc:
            health = health_pb2_grpc.HealthStub(gc.channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    serving = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    break
                except Exception:
                    if gw.poll() is not None or time.monotonic() > deadline:
                        err = gw.stderr.read()[-2000:] if gw.stderr else ""
                        raise SystemExit(f"the gateway did not start: {err}") from None
                    time.sleep(0.2)
            up = time.monotonic() - t0
            t1 = time.monotonic()
            per: dict[str, list[tuple[int, int]]] = {x: [] for x in symbols}
            for md in gc.market_data(symbols, start="time", start_time_ns=start_ns, max_records=expected,
                                     max_batch=2000, timeout_s=120):
                for t in md.ticks:
                    per[t.symbol].append((t.partition, t.offset))
            dt = time.monotonic() - t1
            # per symbol, the topic's order: one partition, offsets rising (partitions are read in
            # parallel, so the max_records cut may fall in the live phase for one symbol before
            # another's bulk ticks are all in: the count is over the three symbols together)
            ordered = all(len({p for p, _ in v}) <= 1 and [o for _, o in v] == sorted(o for _, o in v)
                          for v in per.values())
            feats = gc.latest_features(symbols, ["last_price", "ema_10", "rsi"])
    finally:
        gw.terminate()
        gw.wait(30)
    got = sum(len(v) for v in per.values())
    print(f"11. gRPC gateway (`mystocks-gpu gateway`, up in {up:.1f} s, health "
          f"{health_pb2.HealthCheckResponse.ServingStatus.Name(serving)}): SubscribeMarketData streamed "
          f"{got:,} ticks of {len(symbols)} symbols from the bulk phase's start (max_records {expected:,}) in "
          f"{dt:.1f} s, filtered from every symbol's ticks ({'in topic order per symbol' if ordered else 'OUT OF ORDER'}); "
          "ProcessFeatureCalculation:")
    for v in feats.vectors:
        print(f"   {v.symbol} seq={v.seq} " + " ".join(f"{k}={v.values[k]:.4f}" for k in sorted(v.values)))
    print("   README: gRPC and WebSocket API (Python client, grpcurl, the four WebSocket messages)")


def step_backtest(s, config: str | None) -> None:  # type: ignore[no-untyped-def]
    """8. a backtest as a user runs it: one CSV per ticker (newest first) loaded with the CLI, then the
    ``backtest`` job's runner on an MA grid (replay from md.bars.1d -> engine -> results.backtest)."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from mystocks_gpu.processors.backtest.job import BacktestJobSpec, run_backtest_job
    from mystocks_gpu.processors.backtest.report import format_top

    if config:  # the runner reads the settings itself (as in a worker): the same file
        import os

        os.environ["MYSTOCKS_CONFIG"] = config
    tag = uuid.uuid4().hex[:4].upper()
    rng = np.random.default_rng(7)
    universe = []
    with tempfile.TemporaryDirectory() as d:
        for i, listed in enumerate(("2016-01-04", "2017-06-01", "2019-03-01")):
            days = pd.bdate_range(listed, "2024-12-31")
            close = 50 * np.exp(np.cumsum(rng.normal(3e-4, 0.018, days.size)))
            sym = f"DEMO{tag}{i}"
            universe.append(sym)
            path = Path(d) / f"{sym}.csv"
            pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "ticker": sym, "open": close * 0.999,
                          "high": close * 1.01, "low": close * 0.99, "close": close,
                          "volume": 1_000_000}).iloc[::-1].to_csv(path, index=False)
            subprocess.run([sys.executable, "-m", "mystocks_gpu.cli", *(["--config", config] if config else []),
                            "load", str(path), "--topic", "md.bars.1d"], check=True, capture_output=True)
    spec = {"universe": [*universe, f"DEMO{tag}X"], "start": "2018-01-01", "end": "2025-01-01",
            "strategy": "ma_cross", "params": {"fast": [5, 10, 20], "slow": [50, 100, 200]}, "top_n": 5}
    t0 = time.monotonic()
    res = run_backtest_job(BacktestJobSpec.from_dict(spec), lambda f, m: None, lambda: False)
    print(f"8. backtest: 3 tickers loaded one CSV each (`mystocks-gpu load`), {res['param_sets']} MA pairs x "
          f"{res['symbols']} symbols x {res['bars']} days in {time.monotonic() - t0:.1f} s (replay "
          f"{res.get('replay_s')} s, engine {res.get('engine_s')} s), {res['messages']} message(s) on "
          "results.backtest")
    print("   " + format_top(res).replace("\n", "\n   "))
    print("   with the job plane (README: Backtest your strategy): mystocks-gpu submit backtest --spec SPEC "
          "--wait --report DIR")


def step_factors(s, store, run_id: str, n_symbols: int = 60, n_days: int = 320) -> None:  # type: ignore[no-untyped-def]
    """Factors (workload 4), ~10 s: synthetic daily bars (returns planted to revert over 5 days) loaded
    into md.bars.1d, then a ``factors`` job (the classic library, ICIR + ridge combination) run in this
    process; values go to factors.values, metrics to results.factors; prints the ranked table."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from mystocks_gpu.data.history_loader import LoadOptions, load_file
    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.processors.factors.factor_job import KIND as FACTORS_KIND
    from mystocks_gpu.processors.factors.factor_report import format_result
    from mystocks_gpu.processors.job_kind import RUN_CONTEXT, RunContext
    from mystocks_gpu.topics import get

    t0 = time.monotonic()
    rng = np.random.default_rng(4)
    ret = np.zeros((n_days, n_symbols))
    for t in range(1, n_days):  # r_t = noise - 0.05 x (sum of the 5 previous returns): short-term reversal
        ret[t] = rng.normal(2e-4, 0.02, n_symbols) - 0.05 * ret[max(0, t - 5):t].sum(axis=0)
    close = 50 * np.exp(np.cumsum(ret, axis=0))
    opn = close * np.exp(rng.normal(0, 0.005, close.shape))
    high = np.maximum(opn, close) * (1 + rng.uniform(0, 0.01, close.shape))
    low = np.minimum(opn, close) * (1 - rng.uniform(0, 0.01, close.shape))
    days = pd.bdate_range("2021-01-04", periods=n_days, tz="UTC")
    syms = [f"DF{run_id.upper()}{i:02d}" for i in range(n_symbols)]
    df = pd.DataFrame({"date": np.repeat(days.strftime("%Y-%m-%d"), n_symbols), "symbol": syms * n_days,
                       "open": opn.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
                       "volume": rng.lognormal(13, 0.5, close.size).round(),
                       "vwap": ((opn + high + low + close) / 4).ravel()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "daily.parquet"
        df.to_parquet(path)
        n = produce_all(make_producer(s.kafka), "md.bars.1d",
                        load_file(path, get("md.bars.1d"), AvroCodec(store), LoadOptions()))
    spec = FACTORS_KIND.parse({"universe": syms, "start": str(days[0].date()), "library": "classic",
                               "expressions": {"RANK_RANGE": "Rank(($high - $low) / $close)"},
                               "horizons": [1, 5, 20], "combine": "both", "combine_top": 4,
                               "min_train_dates": 60, "correlation_factors": 12, "top_n": 8})
    job_id = f"demo-factors-{run_id}"
    token = RUN_CONTEXT.set(RunContext(job_id=job_id, chunk=0, backend=select(s.backend), settings=s, store=store))
    try:
        result = FACTORS_KIND.runner(spec, lambda f, m: None, lambda: False)
    finally:
        RUN_CONTEXT.reset(token)
    print(f"9. factors: {n:,} daily bars ({n_symbols} symbols x {n_days} days) loaded into md.bars.1d, then a "
          f"`factors` job ({job_id}) in {time.monotonic() - t0:.1f} s:")
    for line in format_result(result).splitlines():
        print("   " + line)
    print(f"   read back: .venv/bin/mystocks-gpu factors show {job_id}; "
          f".venv/bin/mystocks-gpu factors values {job_id} --out /tmp/{job_id}.parquet")



def step_training(s, start_ns: int, run_id: str, last: int = 40_000) -> None:  # type: ignore[no-untyped-def]
    """Workload 3: train ``demo-ridge`` on this run's feature vectors (10-second panel, label = the
    1-minute forward log return of ``last_price``), publish it, then run the ``signals`` processor
    over the newest ``last`` feature vectors of features.ticks."""
    from confluent_kafka import TopicPartition

    from mystocks_gpu.processors.training.signals_processor import make_signals
    from mystocks_gpu.processors.training.train_job import train
    from mystocks_gpu.processors.training.train_report import format_metrics
    from mystocks_gpu.processors.training.train_spec import TrainSpec

    spec = TrainSpec.from_dict({"name": "demo-ridge", "inputs": ["features.ticks"], "start": start_ns,
                                "features": ["ret", "roll_z", "rsi", "macd_hist", "book_imb", "flow_imb", "rel_spread"],
                                "frequency": "10s", "horizon": 6, "family": "ridge", "params": {"alpha": 10.0},
                                "walk_forward": {"n_splits": 3, "test_dates": 40, "embargo_dates": 2}})
    t0 = time.monotonic()
    res = train(spec, s.kafka, lambda f, m: None, lambda: False, backend=s.backend, store=schema_store(s))
    print(f"6. trained and published a model from features.ticks in {time.monotonic() - t0:.1f} s "
          "(the `train` job's runner; as a job: mystocks-gpu submit train --spec SPEC.json --wait --report DIR):")
    print("   " + format_metrics(res).replace("\n", "\n   "))
    group = f"demo.signals.{run_id}"
    c = make_consumer(s.kafka, group)
    try:  # start the signals group near the end of features.ticks: score only the newest vectors
        parts = c.list_topics("features.ticks", timeout=10).topics["features.ticks"].partitions
        tps = []
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition("features.ticks", p), timeout=10)
            tps.append(TopicPartition("features.ticks", p, max(lo, hi - last // len(parts))))
        c.commit(offsets=tps, asynchronous=False)
    finally:
        c.close()
    proc = make_signals(model="demo-ridge", kafka=s.kafka, backend=s.backend, store=schema_store(s))
    worker = StreamWorker(proc, s.kafka, RuntimeConfig(max_records=5000, linger_ms=5), group=group, worker_id="demo")
    t0 = time.monotonic()
    summary = worker.run(idle_exit_s=2.0)
    dt = time.monotonic() - t0
    print(f"   signals processor (exactly-once): {summary.records_in:,} feature vectors -> {summary.records_out:,} "
          f"scores on signals.demo-ridge with model version {proc.latest.version if proc.latest else '-'} in {dt:.1f} s "
          f"({proc.stats.unscored:,} not scored: NaN features during warm-up); live: "
          "mystocks-gpu run signals --model demo-ridge")


def step_portfolio(s, store) -> None:  # type: ignore[no-untyped-def]
    """Risk and portfolios (< 30 s): 300 daily bars of 12 synthetic symbols to md.bars.1d, then the
    ``optimize`` job's runner in this process (as a worker runs it): a 20-point efficient frontier
    solved as one batch, and a monthly min-variance rebalancing backtest with costs; every
    portfolio lands on results.portfolio."""
    from mystocks_gpu.processors.portfolio.optimize_job import KIND as OPTIMIZE
    from mystocks_gpu.processors.portfolio.optimize_report import format_summary

    rng = np.random.default_rng(2026)
    n, T = 12, 300
    tag = uuid.uuid4().hex[:4].upper()
    syms = [f"PF{tag}{k:02d}" for k in range(n)]
    day = 86_400 * 10**9
    t0 = (time.time_ns() // day - T) * day
    r = rng.standard_normal((T, 1)) * 0.01 * rng.uniform(0.5, 1.5, n) + rng.normal(3e-4, 0.012, (T, n))
    close = 50.0 * np.exp(np.cumsum(r, axis=0))
    c = close.reshape(-1)
    cols = {"symbol": np.tile(np.arange(n, dtype=np.int32), T), "ts_event": t0 + np.repeat(np.arange(T), n) * day,
            "interval_ns": np.full(T * n, day), "open": c, "high": c, "low": c, "close": c,
            "volume": np.ones(T * n), "vwap": c, "trades": np.ones(T * n, np.int64)}
    vals = BatchEncoder("mystocks.md.Bar", store).encode(cols, syms)
    keys = [syms[i].encode() for i in cols["symbol"].tolist()]
    produce_all(make_producer(s.kafka), "md.bars.1d", zip(keys, vals, (cols["ts_event"] // 1_000_000).tolist(),
                                                           strict=True))
    base = {"universe": syms, "start": int(t0), "end": int(t0 + T * day), "estimator": "ledoit_wolf",
            "max_weight": 0.25, "top_weights": 4}
    for extra in ({"mode": "frontier", "objective": "mean_variance", "frontier_points": 20},
                  {"mode": "rebalance", "lookback": 120, "rebalance_every": 21, "cost_rate": 0.0005}):
        spec = OPTIMIZE.parse({**base, **extra})
        t1 = time.monotonic()
        res = OPTIMIZE.runner(spec, lambda f, m: None, lambda: False)
        lines = format_summary(res).splitlines()
        print(f"10. optimize {extra['mode']}: {res['problems']} portfolio(s) x {n} assets in "
              f"{time.monotonic() - t1:.1f} s -> results.portfolio")
        for ln in [lines[0], *lines[1:-1][:: max(1, (len(lines) - 2) // 4)][:4], lines[-1]]:
            print(f"   {ln.strip()}")
    print("   as a job: mystocks-gpu submit optimize --spec SPEC.json --wait --report DIR (README: Risk and portfolios)")

def _summary_backend(out: str) -> str | None:
    """The ``backend`` of the JSON summary line that ``mystocks-gpu run`` prints on exit."""
    for line in reversed((out or "").splitlines()):
        try:
            return str(json.loads(line)["backend"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def step_execution(s, cols: dict[str, np.ndarray], names: list[str], run_id: str) -> None:  # type: ignore[no-untyped-def]
    """Workload 6: parameters estimated from the ticks just produced, parent orders through
    `mystocks-gpu run execution` (exactly-once) with the round trip measured, the in-process
    decision latency, and an execsim of a few orders against the replayed tape."""
    from mystocks_gpu.gpu_ops.execution import ParentOrder, prepare, schedule, warm_up
    from mystocks_gpu.processors.execution.execsim_job import ExecSimSpec, run_execsim
    from mystocks_gpu.processors.execution.execsim_report import format_summary
    from mystocks_gpu.processors.execution.market_params_feed import EstimateSpec, estimate, publish
    from mystocks_gpu.processors.execution.order_records import PARENT_ORDER, order_to_record

    ns = 10**9
    trades = cols["sym"][cols["kind"] == 0]
    top = [names[i] for i in np.argsort(-np.bincount(trades, minlength=len(names)))[:10]]
    t_end = int(cols["ts"].max()) + 1
    t_step = time.monotonic()
    params, errors, as_of = estimate(s.kafka, EstimateSpec("md.ticks", t_end - 300 * ns, t_end, tuple(top),
                                                           bar_seconds=10.0))
    publish(s.kafka, params, as_of, "demo: md.ticks, 10-second bars of the last 5 minutes of the bulk phase")
    p0 = params[top[0]]
    print(f"7. execution: parameters of {len(params)} symbols estimated from 10-second bars of md.ticks and published "
          f"to orders.parent + execution.params ({top[0]}: price {p0.price:.2f}, sigma {p0.sigma:.4f}/day, "
          f"ADV {p0.adv:,.0f}, spread {p0.spread:.4f}){'; not estimated: ' + ', '.join(errors) if errors else ''}")
    warm_up()
    models = {sym: prepare(p) for sym, p in params.items()}
    rng = np.random.default_rng(1)
    now = time.time_ns()
    orders = [ParentOrder(f"d{i}", top[i % len(top)], ("buy", "sell")[i % 2], int(rng.integers(100, 50_000)),
                          now + int(rng.integers(10, 120)) * 60 * ns, 0, ("ac", "twap", "vwap", "pov")[i % 4])
              for i in range(10_000)]
    lat = np.empty(len(orders))
    for i, o in enumerate(orders):
        t0 = time.perf_counter_ns()
        schedule(o, models[o.symbol], now_ns=now)
        lat[i] = (time.perf_counter_ns() - t0) / 1e3
    print(f"   in-process schedule(order, SymbolModel): p50 {np.percentile(lat, 50):.1f} us, p99 "
          f"{np.percentile(lat, 99):.1f} us over {len(orders):,} orders (load {os.getloadavg()[0]:.1f})")

    codec = AvroCodec()
    consumer = make_consumer(s.kafka, f"demo-exec-{run_id}", **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 5})
    consumer.subscribe(["orders.scored"])
    worker = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", "--log-level", "WARNING", "run", "execution",
                               "--group", f"demo.exec.{run_id}", "--worker-id", "demo", "--linger-ms", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    producer = make_producer(s.kafka, **{"linger.ms": 0})
    got: dict[str, dict[str, object]] = {}
    sent: dict[str, int] = {}

    def send(i: int) -> None:
        t = time.time_ns()
        o = ParentOrder(f"demo-{run_id}-{i}", top[i % len(top)], ("buy", "sell")[i % 2], int(rng.integers(1_000, 200_000)),
                        t + int(rng.integers(10, 60)) * 60 * ns, 0, ("ac", "twap", "vwap", "pov")[i % 4])
        producer.produce("orders.parent", codec.encode(PARENT_ORDER, order_to_record(o, t)), o.order_id.encode(),
                         timestamp=t // 1_000_000)
        producer.poll(0)
        sent[o.order_id] = t

    def receive(timeout: float) -> None:
        for m in consumer.consume(100, timeout=timeout):
            if m.error() is None and (m.key() or b"").decode() in sent:
                got[m.key().decode()] = {**codec.decode(m.value()), "_rx": time.time_ns()}

    t_live = time.monotonic()
    try:
        i = 0
        while not got and time.monotonic() - t_live < 120:  # probes until the worker answers (up, assigned, warm)
            send(i)
            i += 1
            t_probe = time.monotonic()
            while not got and time.monotonic() - t_probe < 1.5:
                receive(0.1)
        got.clear()
        first = i
        for k in range(300):  # ~200 orders/s
            send(first + k)
            receive(0.005)
        deadline = time.monotonic() + 10
        while len([k for k in got if int(k.rsplit("-", 1)[1]) >= first]) < 300 and time.monotonic() < deadline:
            receive(0.01)
        got = {k: v for k, v in got.items() if int(k.rsplit("-", 1)[1]) >= first}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
        consumer.close()
    rt = np.array([(v["_rx"] - sent[k]) / 1e6 for k, v in got.items()])  # type: ignore[operator]
    if rt.size:
        print(f"   `mystocks-gpu run execution` (exactly-once): {len(got)} orders.parent -> orders.scored, round trip "
              f"p50 {np.percentile(rt, 50):.0f} ms, p99 {np.percentile(rt, 99):.0f} ms (incl. the 100 ms commit interval)")
        for v in list(got.values())[1:4]:
            print(f"   {v['order_id']} {v['side']} {v['quantity']:,} {v['symbol']} {v['strategy']}: E[IS] "
                  f"{v['expected_shortfall_bps']:.1f} bps, timing risk {v['timing_risk']:,.0f}, {v['n_slices']} slices"
                  f"{', CAPPED: ' + str(v['warning']) if v['capped'] else ''}")
    start = t_end - 240 * ns
    spec = ExecSimSpec(orders=[{"order_id": f"sim{k}", "symbol": top[k], "side": ("buy", "sell")[k % 2],
                                "quantity": int(params[top[k]].adv * 0.0005) // 100 * 100 + 100, "start": start,
                                "horizon_s": 180, "risk_aversion": 1e-4} for k in range(4)], lookback_s=30,
                       model={"slice_ns": 20 * ns})
    res = run_execsim(spec, lambda f, m: None, lambda: False)
    print("   execsim (the job kind, run in process here) on the replayed tape:")
    print("   " + format_summary(res, max_rows=0).replace("\n", "\n   "))
    print("   as a job: mystocks-gpu submit execsim --spec SPEC.json --wait --report report/ (see README, Execution); "
          f"this step took {time.monotonic() - t_step:.0f} s")


def _pending(s, group: str) -> int:  # type: ignore[no-untyped-def]
    """Records in md.ticks that a new group (reading from the beginning) will consume."""
    from confluent_kafka import TopicPartition

    c = make_consumer(s.kafka, group + ".probe")
    try:
        parts = c.list_topics("md.ticks", timeout=10).topics["md.ticks"].partitions
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition("md.ticks", p), timeout=10)
                                           for p in parts))
    finally:
        c.close()


def _wait_for_worker(s, consumer, names: list[str], timeout_s: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    """Send probe ticks (event time = now) until one comes back as a feature vector: the worker
    process is up, assigned, restored and warm."""
    codec = AvroCodec(schema_store(s))
    producer = make_producer(s.kafka, **{"linger.ms": 0})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        probe = generate(SyntheticMarket(n_symbols=len(names), seed=1, start_ns=time.time_ns()), 1)
        sent = int(probe["ts"][0])
        for k, v, ts_ms in _items(probe, names, schema_store(s)):
            producer.produce("md.ticks", v, k, timestamp=ts_ms)
        producer.flush(10)
        t_probe = time.monotonic()
        while time.monotonic() - t_probe < 2.0:
            for m in consumer.consume(100, timeout=0.2):
                if m.error() is None and codec.decode(m.value())["ts_event"] >= sent:
                    return
    raise SystemExit("the features worker did not answer a probe tick within 90 s")


def _live_latency(s, names: list[str], seed: int, rate: float, seconds: float,  # type: ignore[no-untyped-def]
                  ramp_s: float, config: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``mystocks-gpu produce ticks --synthetic --live`` (event time = send time) for ``ramp_s +
    seconds``, as a user would; measure consume - event time of the ticks after the ramp (the feed's
    first ``ramp_s`` seconds are not counted)."""
    n = int(rate * (ramp_s + seconds))
    # read_committed outputs become fetchable when a commit marker lands; a short fetch wait sees them at once
    consumer = make_consumer(s.kafka, f"demo-latency-{uuid.uuid4().hex[:6]}",
                             **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 10})
    consumer.subscribe(["features.ticks"])
    t_end = time.monotonic() + 10
    while not consumer.assignment() and time.monotonic() < t_end:
        consumer.poll(0.1)
    _wait_for_worker(s, consumer, names)
    lat: list[float] = []
    split: list[float] = []  # event -> worker received the batch (the rest is processing + output path)
    t_feed = time.time_ns()  # vectors of earlier ticks (the probes) are not the feed's
    feed = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *(["--config", config] if config else []),
                             "--log-level", "WARNING", "produce", "ticks", "--synthetic", "--live", "--rate", f"{rate:g}",
                             "--count", str(n), "--symbols", str(len(names)), "--seed", str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # only ts_event and ts_ingest of each vector are read (the leading fields), not a whole Avro decode
    at = latency_fields(schema_store(s).by_name("mystocks.features.FeatureVector").raw["fields"])
    assert at is not None and at[1] is not None, "a FeatureVector starts with symbol, ts_event, seq, ts_ingest"
    (at_event, at_ingest) = at
    leading_longs_batch([b""], 2)  # the compiled reader loaded before the feed starts
    first_live: int | None = None  # the first measured event time: the feed's first tick + the ramp
    deadline = time.monotonic() + 60 + ramp_s + seconds
    last_seen = time.monotonic()
    while time.monotonic() < deadline and (feed.poll() is None or time.monotonic() - last_seen < 2.0):
        # consume() returns when it has `num` records or at the timeout: keep the wait short, or
        # the measurement itself adds up to the timeout to every latency
        values = [m.value() for m in consumer.consume(1000, timeout=0.002) if m.error() is None]
        if not values:
            continue
        now = time.time_ns()  # every record of the call had arrived
        last_seen = time.monotonic()
        head, ok = leading_longs_batch(values, at_ingest + 1)  # one compiled pass over the call's values
        ts, ingest = head[ok, at_event], head[ok, at_ingest]
        live = ts >= t_feed
        if first_live is None and live.any():
            first_live = int(ts[live][0]) + int(ramp_s * 1e9)
        if first_live is not None:
            keep = ts >= first_live
            lat.extend(((now - ts[keep]) / 1e6).tolist())
            split.extend(((ingest[keep] - ts[keep]) / 1e6).tolist())
    consumer.close()
    if feed.poll() is None:
        feed.kill()
    _, err = feed.communicate(timeout=30)
    if feed.returncode != 0:
        raise SystemExit(f"the live feed (mystocks-gpu produce --live) failed: {err.strip()[-1500:]}")
    return np.asarray(lat), np.asarray(split)


if __name__ == "__main__":
    sys.exit(main())
