"""Benchmark: the stream runtime on its built-in workload (per-symbol running count / sum / last of
tick prices) vs Quix Streams doing the same, with Kafka's own consumer as the ceiling.

One run, one broker, one input topic (``--n`` synthetic ticks over ``--symbols`` symbols in
``--partitions`` partitions, produced once before any contender starts); an untimed exactly-once
pass of ours over the first ``--warm-up`` ticks warms the broker first (a freshly started broker's
first transactions ran several times slower, and only the first row paid for them); each contender
reads the input from the beginning in a fresh consumer group:

- ours EOS / ours ALO: ``StreamWorker(RunningAggregateProcessor)`` with exactly-once /
  at-least-once (``RuntimeConfig`` defaults otherwise, ``--batch`` records per batch; the
  linger and commit interval used are printed), output Avro to its own topic. records/s = input count /
  (final commit - first consumed record); numba compilation is paid before timing.
- Quix Streams: ``StreamingDataFrame.apply(stateful=True)`` keeping ``[count, sum, last]`` per key
  in its RocksDB state (changelog on), ``processing_guarantee="exactly-once"`` (Quix defaults
  otherwise: 5 s commit interval), values decoded from Confluent-framed Avro with fastavro
  (``schemaless_reader`` after the 5-byte prefix, a custom ``Deserializer``) and written as
  Confluent-framed ``RunningAggregate`` Avro (fastavro, a custom ``Serializer``) with ``to_topic``.
  records/s = input count / (final forced checkpoint commit - first deserialised record).
- ceiling: ``org.apache.kafka.tools.ConsumerPerformance --messages N`` (consume only, JVM);
  ``fetch.nMsg.sec`` (excludes the group join) is the ceiling, ``nMsg.sec`` is printed too. It
  includes the JVM's JIT warm-up: on the 2-core AMD VM it read 0.63M records/s over 300k ticks and
  1.3-1.9M over 1M (2026-12-03 13:45), hence the 1M default. A second, informational row: the
  Python confluent-kafka consumer that our worker uses, consuming only (``python_consume_rps``,
  ``ratio_vs_python_consume``; no goal), and the same consumer read through the worker's columnar
  ingest (``columnar_consume_rps``).
- ours EOS with ``record_io=messages`` (confluent-kafka ``Message`` objects, the path before the
  columnar ingest), side by side: ``ratio_vs_messages_ingest``.

Correctness: every contender's output topic holds exactly ``n`` committed records and the last
record per symbol equals the reference (count, sum, last over the whole input, sequential sums).
Profile: where our EOS time goes, from the worker's Prometheus histograms (decode+process+produce
per batch vs transaction commit, changelog writes included) and from cProfile on a ``--profile-n``
run (first record to final commit).

    python bench/runtime.py --n 1000000 --partitions 4 --symbols 500 --json bench/out/runtime.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor  # noqa: E402
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE, RuntimeConfig  # noqa: E402

AGG = "mystocks.streams.RunningAggregate"
TICK = "mystocks.md.Tick"


def reference(cols: dict[str, np.ndarray], names: list[str]) -> dict[bytes, tuple[int, float, float]]:
    """Final (count, sum, last) per symbol, summed in input order like every contender."""
    ref: dict[int, list[Any]] = {}
    for s, p in zip(cols["sym"].tolist(), cols["price"].tolist(), strict=True):
        r = ref.get(s)
        if r is None:
            ref[s] = [1, p, p]
        else:
            r[0] += 1
            r[1] += p
            r[2] = p
    return {names[k].encode(): (v[0], v[1], v[2]) for k, v in ref.items()}


def check_output(s: Any, topic: str, n: int, ref: dict[bytes, tuple[int, float, float]]) -> str:
    """``ok`` when the topic holds ``n`` committed records and the last one per key matches ``ref``."""
    count, last = C.count_topic(s, topic, last_per_key=True)
    dec = C.avro_reader(AGG)
    bad = 0
    for k, (c, sm, lp) in ref.items():
        v = last.get(k)
        rec = dec(v) if v is not None else None
        if rec is None or rec["count"] != c or rec["sum"] != sm or rec["last"] != lp:
            bad += 1
    if count != n or bad:
        return f"FAIL ({count} outputs for {n} inputs, {bad} symbols differ)"
    return "ok"


def run_ours(s: Any, topic: str, out: str, tag: str, name: str, guarantee: str, n: int, batch: int,
             cols: dict[str, np.ndarray], names: list[str], profile: bool = False,
             record_io: str = "auto") -> tuple[dict[str, Any], Any]:
    proc = RunningAggregateProcessor(output_topic=out)
    C.warm_processor(RunningAggregateProcessor(output_topic=out), cols, names)
    rt = RuntimeConfig(guarantee=guarantee, max_records=batch, record_io=record_io)
    w = C.TimedWorker(proc, s.kafka, rt, group=f"bench-rt-{name}-{tag}", worker_id="w0", input_topic=topic)
    prof = w.profiler = cProfile.Profile() if profile else None
    summary = w.run(idle_exit_s=30.0, max_records=n)
    res = {"runtime": {"max_records": rt.max_records, "linger_ms": rt.linger_ms,
                       "commit_interval_ms": rt.commit_interval_ms, "catch_up_commit_interval_ms": rt.catch_up_ms},
           "record_io": summary.record_io, "records_in": summary.records_in, "records_out": summary.records_out, "dlq": summary.dlq,
           "batches": summary.batches, "aborts": summary.aborts, "busy_s": w.busy_s,
           "rps": summary.records_in / w.busy_s,
           "batch_s_sum": C.metric(w, "mystocks_stream_batch_seconds_sum"),
           "commit_s_sum": C.metric(w, "mystocks_stream_commit_seconds_sum"),
           "commits": C.metric(w, "mystocks_stream_commit_seconds_count")}
    return res, prof


def run_quix(s: Any, topic: str, out: str, tag: str, n: int) -> dict[str, Any]:
    from quixstreams import Application

    deser, ser = C.quix_serdes(TICK, AGG)
    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(broker_address=s.kafka.bootstrap_servers, consumer_group=f"bench-rt-quix-{tag}",
                          auto_offset_reset="earliest", processing_guarantee="exactly-once",
                          state_dir=state_dir, loglevel="WARNING", use_changelog_topics=True)
        t_in = app.topic(topic, value_deserializer=deser, key_deserializer="bytes")
        t_out = app.topic(out, value_serializer=ser, key_serializer="bytes")

        def agg(v: dict[str, Any], state: Any) -> dict[str, Any]:
            p = v["price"]
            a = state.get("a")
            a = [1, p, p] if a is None else [a[0] + 1, a[1] + p, p]
            state.set("a", a)
            return {"symbol": v["symbol"], "ts_event": v["ts_event"], "seq": v["seq"], "count": a[0],
                    "sum": a[1], "last": p}

        sdf = app.dataframe(t_in)
        sdf = sdf.apply(agg, stateful=True)
        sdf.to_topic(t_out)
        timing = C.time_quix_commit(app)
        type(deser).t_first = None
        app.run(count=n, collect=False)
        t_first, t_end = type(deser).t_first, timing.get("t_end")
    busy = (t_end - t_first) if t_first and t_end else float("nan")
    return {"busy_s": busy, "rps": n / busy, "commit_interval_s": 5.0}


#: throughput must not regress (issue 18): ours EOS vs Quix EOS, and vs Kafka's own consumer
GOAL_RATIO_QUIX, GOAL_RATIO_CEILING = 10.0, 0.6


def run_python_consume(s: Any, topic: str, tag: str, n: int, columnar: bool = False) -> dict[str, Any]:
    """A second, informational ceiling: the confluent-kafka consumer that our worker uses, reading
    ``topic`` from the beginning in a fresh group with ``consume(10000)`` and doing nothing else
    (no decode, no produce, no commit; the worker's fetch settings); ``columnar``: the same consumer
    read through the worker's columnar ingest (``streams/columnar_io.py``) instead.
    records/s = records read / (last fetch - first record)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from mystocks_gpu.infra.kafka_clients import make_consumer
    from mystocks_gpu.streams.columnar_io import ColumnarIngest

    # the worker's fetch settings (StreamWorker._setup; fetch.queue.backoff.ms 10 is make_consumer's default)
    cons = make_consumer(s.kafka, f"bench-rt-pyc-{tag}", **{
        "queued.max.messages.kbytes": 65536, "fetch.wait.max.ms": 100, "socket.nagle.disable": True})
    try:
        parts = cons.list_topics(topic, timeout=10).topics[topic].partitions
        ing = ColumnarIngest(cons, topic) if columnar else None
        if ing is not None:
            ing.attach(list(parts))
        cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got, t_first, deadline = 0, None, time.monotonic() + 120
        while got < n and time.monotonic() < deadline:
            if ing is not None:
                k = len(ing.consume(10_000, 0.1, wait_all=True)[0])
            else:
                msgs = cons.consume(10_000, timeout=0.1)
                k = sum(1 for m in msgs if m.error() is None)
            if k and t_first is None:
                t_first = time.perf_counter()
            got += k
        t_last = time.perf_counter()
    finally:
        if ing is not None:
            ing.close()
        cons.close()
    busy = t_last - t_first if t_first is not None else None
    return {"records": got, "busy_s": busy, "rps": got / busy if busy else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000,
                    help="input ticks (default 1000000: the JVM ceiling's JIT warm-up and our worker's first "
                         "batches are a small part of it; at 300000 the ceiling read about a third of its "
                         "steady rate)")
    ap.add_argument("--warm-up", type=int, default=150_000,
                    help="before any timed contender, one untimed exactly-once pass of ours over the first N input "
                         "ticks into a throwaway topic, so the first timed row does not pay for the broker's cold "
                         "transaction and fetch paths (default 150000; 0 = none)")
    ap.add_argument("--partitions", type=int, default=4, help="input partitions (default 4)")
    ap.add_argument("--symbols", type=int, default=500, help="distinct symbols (default 500)")
    ap.add_argument("--batch", type=int, default=5000, help="our RuntimeConfig.max_records (default 5000)")
    ap.add_argument("--profile-n", type=int, default=50_000, help="ticks for the cProfile run (default 50000; 0 = skip)")
    ap.add_argument("--skip-quix", action="store_true", help="leave Quix Streams out")
    ap.add_argument("--skip-ceiling", action="store_true", help="leave Kafka's ConsumerPerformance out")
    ap.add_argument("--record-io", choices=["auto", "columnar", "messages"], default="auto",
                    help="our worker's RuntimeConfig.record_io for the EOS/ALO rows (default auto); a row of ours EOS "
                         "reading and writing Message objects (record_io=messages) runs too, unless --skip-messages")
    ap.add_argument("--skip-messages", action="store_true", help="leave out the row of ours EOS with record_io=messages")
    ap.add_argument("--quick", action="store_true", help="small and short: --n 50000, no cProfile run")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.n < 1 or args.warm_up < 0:
        ap.error(f"--n must be >= 1 and --warm-up >= 0 (got {args.n}, {args.warm_up})")
    if args.quick:
        args.n, args.profile_n = min(args.n, 50_000), 0
    s, tag, n = C.settings(), C.new_tag(), args.n
    t_script = time.perf_counter()
    m0 = C.machine()
    topic = f"bench.rt.in.{tag}"
    outs = {k: f"bench.rt.out.{k}.{tag}" for k in ("warm", "eos", "alo", "eosmsg", "quix", "prof")}
    print(f"runtime bench: n={n:,} ticks, {args.symbols} symbols, {args.partitions} partitions, batch {args.batch}, "
          f"profile n={args.profile_n:,}; tag {tag}; {m0['cores']} cores, load {m0['loadavg_1min']}")
    results: dict[str, Any] = {}
    checks: dict[str, str] = {}
    notes: list[str] = []
    try:
        C.create_topics(s, [(topic, TICK, args.partitions), (topic + ".dlq", None, 1)]
                        + [(o, AGG, args.partitions) for o in outs.values()])
        cols, names = C.synthetic(n, args.symbols)
        print(f"  produced {n:,} ticks in {C.produce_ticks(s, topic, cols, names):.1f} s")
        ref = reference(cols, names)
        if args.warm_up > 0:
            t_w = time.perf_counter()
            r, _ = run_ours(s, topic, outs["warm"], tag, "warm", EXACTLY_ONCE, min(n, args.warm_up), args.batch,
                            cols, names)
            print(f"  warm-up (untimed): ours EOS over {r['records_in']:,} ticks in {time.perf_counter() - t_w:.1f} s")

        if not args.skip_ceiling:
            try:
                cp = C.consumer_perf(s, topic, n, f"bench-rt-cperf-{tag}")
                results["ceiling"] = cp
                print(f"  ConsumerPerformance: fetch.nMsg.sec={cp.get('fetch.nMsg.sec')} nMsg.sec={cp.get('nMsg.sec')} "
                      f"rebalance.time.ms={cp.get('rebalance.time.ms')}")
            except Exception as exc:  # noqa: BLE001 - report and go on
                notes.append(f"ConsumerPerformance failed: {exc}")
                print(f"  {notes[-1]}")

        if not args.skip_ceiling:
            results["python_consume"] = pc = run_python_consume(s, topic, tag, n)
            print(f"  confluent-kafka consume only (Python): {C.fmt(pc['rps'])} rec/s ({pc['records']:,} records)")

            if args.record_io != "messages":
                results["python_consume_columnar"] = pcc = run_python_consume(s, topic, tag, n, columnar=True)
                print(f"  columnar ingest consume only (C extension): {C.fmt(pcc['rps'])} rec/s "
                      f"({pcc['records']:,} records)")

        contenders = [("eos", EXACTLY_ONCE, args.record_io), ("alo", AT_LEAST_ONCE, args.record_io)]
        if not args.skip_messages and args.record_io != "messages":
            contenders.append(("eosmsg", EXACTLY_ONCE, "messages"))
        for name, g, record_io in contenders:
            r, _ = run_ours(s, topic, outs[name], tag, name, g, n, args.batch, cols, names, record_io=record_io)
            results[f"ours_{name}"] = r
            ok = r["records_in"] == n and r["records_out"] == n and r["dlq"] == 0
            checks[f"ours_{name}"] = check_output(s, outs[name], n, ref) if ok else f"FAIL summary {r}"
            print(f"  ours {name.upper()} (record_io {r['record_io']}): {r['rps']:,.0f} rec/s ({r['busy_s']:.2f} s, "
                  f"{r['batches']} batches) check {checks[f'ours_{name}']}")

        if not args.skip_quix:
            try:
                results["quix_eos"] = run_quix(s, topic, outs["quix"], tag, n)
                checks["quix_eos"] = check_output(s, outs["quix"], n, ref)
                print(f"  Quix EOS: {results['quix_eos']['rps']:,.0f} rec/s ({results['quix_eos']['busy_s']:.2f} s) "
                      f"check {checks['quix_eos']}")
            except Exception as exc:  # noqa: BLE001 - report and go on
                notes.append(f"Quix Streams failed: {type(exc).__name__}: {exc}")
                print(f"  {notes[-1]}")

        prof_text = ""
        if args.profile_n:
            pn = min(args.profile_n, n)
            r, prof = run_ours(s, topic, outs["prof"], tag, "prof", EXACTLY_ONCE, pn, args.batch, cols, names,
                               profile=True, record_io=args.record_io)
            results["profile_run"] = r
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.strip_dirs().sort_stats("cumulative").print_stats(15)
            buf.write("\n--- top 10 by own time (tottime) ---\n")
            st.sort_stats("tottime").print_stats(10)
            prof_text = buf.getvalue()
    finally:
        deleted = C.cleanup(s, tag)

    eos, alo, qx = results.get("ours_eos", {}), results.get("ours_alo", {}), results.get("quix_eos", {})
    ceil, pyc = results.get("ceiling", {}), results.get("python_consume", {})
    eosmsg, pcc = results.get("ours_eosmsg", {}), results.get("python_consume_columnar", {})
    ceil_rps = float(ceil["fetch.nMsg.sec"]) if ceil.get("fetch.nMsg.sec") else None
    rows = [
        (f"ours EOS (StreamWorker, record_io {eos.get('record_io')})", eos.get("rps"), eos.get("busy_s"),
         C.ratio(eos.get("rps"), ceil_rps), checks.get("ours_eos")),
        (f"ours ALO (StreamWorker, record_io {alo.get('record_io')})", alo.get("rps"), alo.get("busy_s"),
         C.ratio(alo.get("rps"), ceil_rps), checks.get("ours_alo")),
        ("ours EOS (StreamWorker, record_io messages)", eosmsg.get("rps"), eosmsg.get("busy_s"),
         C.ratio(eosmsg.get("rps"), ceil_rps), checks.get("ours_eosmsg", "-")),
        ("Quix Streams EOS", qx.get("rps"), qx.get("busy_s"), C.ratio(qx.get("rps"), ceil_rps), checks.get("quix_eos")),
        ("Kafka ConsumerPerformance (consume only)", ceil_rps,
         float(ceil["fetch.time.ms"]) / 1000 if ceil.get("fetch.time.ms") else None, 1.0 if ceil_rps else None, "-"),
        ("confluent-kafka consume only (Python, ours' client)", pyc.get("rps"), pyc.get("busy_s"),
         C.ratio(pyc.get("rps"), ceil_rps), "-"),
        ("columnar ingest consume only (C extension)", pcc.get("rps"), pcc.get("busy_s"),
         C.ratio(pcc.get("rps"), ceil_rps), "-"),
    ]
    print(f"\nper-key running count/sum/last, {n:,} ticks, {args.symbols} symbols, {args.partitions} partitions "
          f"(load avg {m0['loadavg_1min']} -> {C.machine()['loadavg_1min']} on {m0['cores']} cores)")
    C.print_table(["contender", "records/s", "seconds", "x ceiling", "check"], rows)
    r_quix, r_ceil = C.ratio(eos.get("rps"), qx.get("rps")), C.ratio(eos.get("rps"), ceil_rps)
    if eos:
        print(f"ours: RuntimeConfig {eos['runtime']}; Quix: commit_interval 5 s (default)")
    r_pyc = C.ratio(eos.get("rps"), pyc.get("rps"))
    r_msg = C.ratio(eos.get("rps"), eosmsg.get("rps"))
    print(f"ratio ours EOS / Quix EOS: {C.fmt(r_quix)}   ours EOS / consumer ceiling: {C.fmt(r_ceil)}   "
          f"ours EOS / Python consume only: {C.fmt(r_pyc)}   ours EOS / ours EOS reading Message objects: "
          f"{C.fmt(r_msg)}")
    goal_rows = [(name, target, got, "-" if got is None else ("yes" if got >= target else "NO"))
                 for name, target, got in (("throughput ours EOS / Quix EOS", GOAL_RATIO_QUIX, r_quix),
                                           ("throughput ours EOS / consumer ceiling", GOAL_RATIO_CEILING, r_ceil))]
    print(f"\ngoals vs measured (load avg {C.machine()['loadavg_1min']} on {m0['cores']} cores: goals assume a quiet "
          "machine)")
    C.print_table(["goal", "target", "measured", "met"], goal_rows)

    if eos:
        other = eos["busy_s"] - eos["batch_s_sum"] - eos["commit_s_sum"]
        print(f"\nwhere ours EOS time goes ({eos['busy_s']:.2f} s, {eos['batches']} batches, {eos['commits']:.0f} commits):")
        C.print_table(["part", "seconds", "share %"], [
            ("decode+process+produce (batch_seconds)", eos["batch_s_sum"], 100 * eos["batch_s_sum"] / eos["busy_s"]),
            ("transaction commit (commit_seconds)", eos["commit_s_sum"], 100 * eos["commit_s_sum"] / eos["busy_s"]),
            ("consume, batching, rest", other, 100 * other / eos["busy_s"])])
    if prof_text:
        print(f"\ncProfile of ours EOS on {min(args.profile_n, n):,} ticks, first record to final commit "
              f"(setup excluded; {results['profile_run']['rps']:,.0f} rec/s under the profiler), top 15 cumulative:")
        print("\n".join(ln for ln in prof_text.splitlines() if ln.strip() and not ln.startswith("   Ordered by")))
    for note in notes:
        print(f"NOTE: {note}")
    total = time.perf_counter() - t_script
    print(f"\ntotal {total:.0f} s; deleted {len(deleted)} topics")

    C.write_json(args.json, {
        "machine": m0, "loadavg_1min_end": C.machine()["loadavg_1min"], "n": n, "warm_up": args.warm_up, "symbols": args.symbols,
        "partitions": args.partitions, "batch": args.batch, "profile_n": args.profile_n,
        "ours_eos_rps": eos.get("rps"), "ours_alo_rps": alo.get("rps"), "quix_eos_rps": qx.get("rps"),
        "kafka_consumer_ceiling_rps": ceil_rps, "ratio_vs_quix": r_quix, "ratio_vs_ceiling": r_ceil,
        "python_consume_rps": pyc.get("rps"), "ratio_vs_python_consume": r_pyc,
        "record_io": args.record_io, "ours_eos_messages_rps": eosmsg.get("rps"), "ratio_vs_messages_ingest": r_msg,
        "columnar_consume_rps": pcc.get("rps"),
        "goals": [dict(zip(("goal", "target", "measured", "met"), r, strict=True)) for r in goal_rows],
        "quick": args.quick,
        "checks": checks, "details": {k: v for k, v in results.items()}, "notes": notes,
        "quix_value_codec": "fastavro schemaless_reader/writer behind custom Quix Deserializer/Serializer",
        "total_s": total})
    return 0 if all(v == "ok" for v in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
