"""Benchmark: what a micro-batch costs the tick-features processor, by batch size, against a
per-record Python processor doing the same features (no Kafka: the CPU work of one worker).

At low rates the worker's adaptive batches are a few dozen ticks (about 27 at 10k ticks/s on the
2-core VM), and a batch's fixed cost - the decoder, validation, the feature kernel's call, the
encoder, the undo log, each a handful of NumPy calls - is most of what a tick costs. This prints,
per batch size, our decode + features + encode time per batch and per tick (Avro values in,
framed feature vectors out: ``TickFeaturesProcessor.decode_partitions`` + ``process_partitions``,
as ``StreamWorker._handle`` calls them), next to the per-record baseline: fastavro decode, the
same six features updated per tick in Python (``_features_reference.step``, what the faust peer runs),
fastavro encode. It fits ``time per batch = fixed + per_tick x size`` over the sizes and prints
both terms and the batch size from which ours is cheaper per tick than the baseline.

Each batch's ticks are spread over ``--partitions`` input partitions by symbol (4, as the worker's
input topic in ``bench/features_e2e.py``), and ours runs two ways in the same run, alternating, each
path's faster of two rounds counted: the one pass (``TickFeaturesProcessor.process_partitions``: the
kernels per partition, one encoder call and one set-up for the batch) and the per-partition path it
replaced (the base class's ``process_partitions``: ``process_isolating`` per partition); the column
"per-partition / ours" is their ratio.

Every size processes the same ticks from a fresh state, in time order; ours must emit one feature
vector per tick (checked).

``--worker``: also the whole worker per batch on the local broker (``StreamWorker`` at-least-once,
``max_records`` = each size, over a backlog of the same ticks in one partition, nothing else
running): its thread's wall and CPU seconds per batch in decode+process+produce, from its
``mystocks_stream_batch_seconds`` and ``mystocks_stream_batch_cpu_seconds`` - the quiet-machine
counterpart of the ``batch wall us`` / ``batch CPU us`` columns of ``bench/features_e2e.py``'s
latency runs.

    python bench/batch_overhead.py --json bench/out/batch_overhead.json
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _features_reference as R  # noqa: E402
import features_e2e as F  # noqa: E402

from mystocks_gpu.schemas.batch_codec import BatchEncoder  # noqa: E402
from mystocks_gpu.schemas.symbols import SymbolTable  # noqa: E402
from mystocks_gpu.streams.processor import Processor  # noqa: E402


def run_ours(values: list[bytes], part_of: np.ndarray, size: int, n: int, backend: str,
             one_pass: bool = True) -> dict[str, Any]:
    """Batches of ``size`` of the first ``n`` values through a fresh processor, each batch's rows in
    the partitions ``part_of`` gives them (a state per partition); seconds per batch. ``one_pass``:
    ``process_partitions`` of the processor (what the worker calls); else the base class's, which
    runs ``process_isolating`` per partition (the worker's path before 2026-12-06)."""
    proc = F.make_processor("bench.overhead.out", backend)
    symbols, out_n, part_count = SymbolTable(), 0, 0
    states: dict[int, Any] = {}
    run = proc.process_partitions if one_pass else partial(Processor.process_partitions, proc)
    batches = n // size
    t0 = time.perf_counter()
    for b in range(batches):
        parts: dict[int, list[int]] = {}
        for i, p in enumerate(part_of[b * size:(b + 1) * size].tolist(), start=b * size):
            parts.setdefault(p, []).append(i)
        part_count += len(parts)
        d = proc.decode_partitions(values, parts, symbols, time.time_ns())
        cols = {p: x.columns for p, x in d.items()}
        out, new = run(cols, {p: states[p] if p in states else proc.initial_state() for p in cols})
        states.update(new)
        out_n += len(out.records["bench.overhead.out"][1])
    dt = time.perf_counter() - t0
    if out_n != batches * size:
        raise AssertionError(f"batch {size}: {out_n} feature vectors for {batches * size} ticks")
    return {"size": size, "batches": batches, "ticks": batches * size, "seconds": dt,
            "us_per_batch": 1e6 * dt / batches, "us_per_tick": 1e6 * dt / (batches * size),
            "partitions_per_batch": part_count / batches}


def run_per_record(values: list[bytes], n: int) -> dict[str, Any]:
    """The per-record baseline over the first ``n`` values: decode, update, encode each tick."""
    dec, enc = C.avro_reader(R.TICK), C.avro_writer(R.FV)
    table: dict[str, list[Any]] = {}
    t0 = time.perf_counter()
    for raw in values[:n]:
        v = dec(raw)
        st = table.get(v["symbol"])
        if st is None:
            st = table[v["symbol"]] = R.new_state()
        enc(R.vector_of(v, R.step_tick(st, v), 0))
    dt = time.perf_counter() - t0
    return {"ticks": n, "seconds": dt, "us_per_tick": 1e6 * dt / n}


def run_worker(cols: dict[str, np.ndarray], names: list[str], size: int, n: int, backend: str) -> dict[str, Any]:
    """The first ``n`` ticks through a StreamWorker (at-least-once, batches of ``size``) on the local
    broker; its thread's wall and CPU microseconds per batch (decode+process+produce)."""
    from mystocks_gpu.streams.runtime_config import RuntimeConfig

    s, tag = C.settings(), C.new_tag()
    topic, out = f"bench.overhead.in.{tag}", f"bench.overhead.out.{tag}"
    try:
        C.create_topics(s, [(topic, R.TICK, 1), (topic + ".dlq", None, 1), (out, R.FV, 1)])
        C.produce_ticks(s, topic, {k: v[:n] for k, v in cols.items()}, names)
        w = C.TimedWorker(F.make_processor(out, backend), s.kafka,
                          RuntimeConfig(guarantee="at_least_once", max_records=size),
                          group=f"bench-overhead-{tag}", worker_id="w0", input_topic=topic)
        sm = w.run(idle_exit_s=5.0, max_records=n)
        cost = {key: C.metric(w, name) for key, name in C.BATCH_COST}
        nb = cost["batches"]
        if sm.records_in != n or not nb:
            raise AssertionError(f"worker, batch {size}: {sm.records_in} of {n} ticks in {nb:.0f} batches")
        return {"size": size, "batches": int(nb), "records_per_batch": n / nb,
                "wall_us_per_batch": 1e6 * cost["wall_s"] / nb, "cpu_us_per_batch": 1e6 * cost["cpu_s"] / nb}
    finally:
        C.cleanup(s, tag)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=120_000, help="ticks per batch size (default 120000)")
    ap.add_argument("--max-batches", type=int, default=4000,
                    help="at most this many batches per size: small sizes run fewer ticks (default 4000)")
    ap.add_argument("--sizes", default="1,3,10,30,100,300,1000,5000",
                    help="comma list of batch sizes, ticks (default 1,3,10,30,100,300,1000,5000)")
    ap.add_argument("--symbols", type=int, default=500, help="distinct symbols (default 500)")
    ap.add_argument("--baseline-ticks", type=int, default=50_000,
                    help="ticks for the per-record baseline (its cost per tick does not depend on batching; "
                         "default 50000)")
    ap.add_argument("--partitions", type=int, default=4,
                    help="input partitions a batch's ticks are spread over, by symbol, as in the worker's input "
                         "topic (default 4); each size also runs the per-partition path against the one pass")
    ap.add_argument("--backend", default="cpu", help="our array backend: cpu|gpu|auto (default cpu)")
    ap.add_argument("--worker", action="store_true",
                    help="also run the whole worker per size on the local broker (mystocks-gpu stack up; "
                         "--worker-ticks ticks each): its wall and CPU per batch")
    ap.add_argument("--worker-ticks", type=int, default=30_000, help="ticks per size for --worker (default 30000)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--sizes must be a comma list of integers, got {args.sizes!r}")
    if not sizes or sizes[0] < 1 or args.ticks < sizes[-1] or args.max_batches < 1 or args.baseline_ticks < 1:
        ap.error("--sizes must be >= 1 and <= --ticks; --max-batches and --baseline-ticks >= 1")
    if args.partitions < 1:
        ap.error(f"--partitions must be >= 1, got {args.partitions}")
    m0 = C.machine()
    cols, names = C.synthetic(max(args.ticks, args.baseline_ticks), args.symbols)
    order = np.argsort(cols["ts"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    values: list[bytes] = [*BatchEncoder(R.TICK).encode(cols, names)]
    part_of = cols["sym"].astype(np.int64) % args.partitions  # a symbol's ticks in one partition
    C.warm_processor(F.make_processor("bench.overhead.out", args.backend), cols, names)
    print(f"batch overhead bench: {args.ticks:,} ticks per size (at most {args.max_batches:,} batches), "
          f"{args.symbols} symbols in {args.partitions} partition(s), features {R.NAMES}, backend {args.backend}; "
          f"{m0['cores']} cores, "
          f"load {m0['loadavg_1min']}")
    base = run_per_record(values, args.baseline_ticks)
    rows = []
    for size in sizes:
        n = min(args.ticks, size * args.max_batches)
        # two rounds, alternating the two paths: each path's faster round counts
        runs = [run_ours(values, part_of, size, n, args.backend, one_pass=one) for _ in range(2) for one in (True, False)]
        r = min(runs[0::2], key=lambda x: x["us_per_batch"])
        r["ratio_vs_per_record"] = base["us_per_tick"] / r["us_per_tick"]
        r["per_partition_us_per_batch"] = min(x["us_per_batch"] for x in runs[1::2])
        r["ratio_vs_per_partition"] = r["per_partition_us_per_batch"] / r["us_per_batch"]
        rows.append(r)
    fixed, per_tick = np.polyfit([r["size"] for r in rows], [r["us_per_batch"] for r in rows], 1)[::-1]
    crossover = next((r["size"] for r in rows if r["ratio_vs_per_record"] >= 1.0), None)
    C.print_table(["batch size", "partitions/batch", "ours us/batch", "per-partition us/batch", "per-partition / ours",
                   "ours us/tick", "per-record us/tick", "per-record / ours"],
                  [(r["size"], r["partitions_per_batch"], r["us_per_batch"], r["per_partition_us_per_batch"],
                    r["ratio_vs_per_partition"], r["us_per_tick"], base["us_per_tick"], r["ratio_vs_per_record"])
                   for r in rows])
    print(f"fit over the sizes: ours = {fixed:,.1f} us per batch + {per_tick:.3f} us per tick; per-record baseline "
          f"{base['us_per_tick']:.2f} us per tick; ours is cheaper per tick from batches of "
          f"{crossover if crossover is not None else '(none measured)'}")
    workers = []
    if args.worker:
        for size in sizes:
            workers.append(run_worker(cols, names, size, min(args.worker_ticks, len(values)), args.backend))
        print("\nthe whole worker (StreamWorker at-least-once on the local broker, one partition, batches of "
              "max_records; decode+process+produce of its thread, from its metrics)")
        C.print_table(["batch size", "batches", "records/batch", "wall us/batch", "CPU us/batch"],
                      [(r["size"], r["batches"], r["records_per_batch"], r["wall_us_per_batch"], r["cpu_us_per_batch"])
                       for r in workers])
    res = {"machine": m0, "loadavg_1min_end": C.machine()["loadavg_1min"], "backend": args.backend,
           "symbols": args.symbols, "partitions": args.partitions, "features": list(R.NAMES), "baseline": base, "sizes": rows,
           "fixed_us_per_batch": float(fixed), "us_per_tick_marginal": float(per_tick), "crossover_size": crossover,
           "worker": workers}
    C.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
