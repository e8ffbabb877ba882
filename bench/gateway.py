"""Benchmark: the gRPC gateway's added cost, against talking to Kafka directly.

Needs the local stack (``mystocks-gpu stack up``). Starts ``mystocks-gpu control`` (private
namespace) and ``mystocks-gpu gateway`` (``gateway.backtest_kind = echo``, so a submission is cheap)
as subprocesses, then in one run, interleaved:

1. **Submit -> first task_status** (the control app's QUEUED status), ``--jobs`` times each way:
   - gRPC: ``SubmitBacktestTask`` (the gateway validates and produces the command, waiting for the
     broker's ack) then ``WatchTask`` until its first message;
   - direct: a :class:`~mystocks_gpu.jobs.client.StatusFollower` positioned on ``job.status``, the
     command produced to ``cmd.jobs`` by one long-lived producer (ack awaited), then its first
     status read.
   p50/p99 ms of both, and the gateway's added p50/p99.
2. **Market-data throughput** to one client: ``--ticks`` synthetic ticks of unique symbols produced
   to ``md.ticks`` with current timestamps, then read back from that time (a) through
   ``SubscribeMarketData`` (batches of ``--batch``, decoded protobuf ``Tick`` messages) and (b) by a
   plain confluent-kafka consumer decoding the same Avro records (``AvroCodec``) and filtering the
   same symbols. ``--rounds`` reads each way, alternating which side goes first (a cold broker or
   page cache must not fall on one side only); ``ratio_vs_kafka`` = median (a) / median (b) ticks/s
   (goal >= 0.5).

    python bench/gateway.py --json bench/out/gateway.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from confluent_kafka import TopicPartition  # noqa: E402

from mystocks_gpu.api.protos import common_pb2  # noqa: E402
from mystocks_gpu.client import GatewayClient  # noqa: E402
from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate  # noqa: E402
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer, produce_all  # noqa: E402
from mystocks_gpu.jobs.client import StatusFollower, produce_command  # noqa: E402
from mystocks_gpu.jobs.jobs_config import JobsConfig  # noqa: E402
from mystocks_gpu.jobs.protocol import make_command, new_job_id  # noqa: E402
from mystocks_gpu.schemas import AvroCodec, schema_store  # noqa: E402
from mystocks_gpu.schemas.batch_codec import BatchEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


def submit_latency(s: Any, target: str, cfg: JobsConfig, n: int) -> dict[str, Any]:
    grpc_ms, direct_ms = [], []
    follower = StatusFollower(s, cfg)
    # the direct path at its best: one long-lived producer (as the gateway has), ack awaited
    producer = make_producer(s.kafka, **{"compression.type": "none", "linger.ms": 0})
    with GatewayClient(target) as gc:
        for i in range(n + 2):  # the first two of each are warm-up
            t0 = time.perf_counter()
            jid = gc.submit_backtest({"message": f"bench {i}"}, bypass_cache=True)
            stream = gc.backtest.WatchTask(common_pb2.WatchRequest(job_id=jid), timeout=30)
            next(stream)
            dt_g = (time.perf_counter() - t0) * 1e3
            stream.cancel()
            cmd = make_command("SUBMIT", new_job_id(), "echo", {"message": f"bench direct {i}"}, bypass_cache=True)
            t0 = time.perf_counter()
            produce_command(s, cfg, cmd, producer)
            next(iter(follower.statuses(cmd["job_id"], 30)))
            dt_d = (time.perf_counter() - t0) * 1e3
            if i >= 2:
                grpc_ms.append(dt_g)
                direct_ms.append(dt_d)
    follower.close()
    return {"jobs": n, "grpc_p50_ms": _pct(grpc_ms, 50), "grpc_p99_ms": _pct(grpc_ms, 99),
            "kafka_p50_ms": _pct(direct_ms, 50), "kafka_p99_ms": _pct(direct_ms, 99),
            "added_p50_ms": round(_pct(grpc_ms, 50) - _pct(direct_ms, 50), 3),
            "added_p99_ms": round(_pct(grpc_ms, 99) - _pct(direct_ms, 99), 3)}


def throughput(s: Any, target: str, n: int, batch: int, rounds: int) -> dict[str, Any]:
    """``rounds`` reads of the same ``n`` ticks each way; ticks/s medians and their ratio."""
    tag = uuid.uuid4().hex[:6].upper()
    names = [f"GB{tag}{i}" for i in range(8)]
    cols = generate(SyntheticMarket(n_symbols=len(names), seed=3), n)
    t_start = time.time_ns() - 1_000_000_000
    cols["ts"] = cols["ts"] - cols["ts"].min() + t_start + 1_000_000_000
    vals = BatchEncoder("mystocks.md.Tick").encode(cols, names)
    keys = [names[i].encode() for i in cols["sym"].tolist()]
    produce_all(make_producer(s.kafka), "md.ticks", zip(keys, vals, (cols["ts"] // 1_000_000).tolist(), strict=True))
    wanted = set(names)

    def via_gateway() -> float:
        t0 = time.perf_counter()
        got = 0
        with GatewayClient(target) as gc:
            for md in gc.market_data(names, start="time", start_time_ns=t_start, max_records=n, max_batch=batch,
                                     timeout_s=600):
                for t in md.ticks:  # touch every decoded tick as a client would
                    got += t.seq >= 0
        dt = time.perf_counter() - t0
        assert got == n, (got, n)
        return n / dt

    def via_kafka() -> float:
        codec = AvroCodec(schema_store(s))
        t0 = time.perf_counter()
        c = make_consumer(s.kafka, f"bench-gw-{tag}", **{"isolation.level": "read_committed"})
        md_ = c.list_topics("md.ticks", timeout=10)
        parts = sorted(md_.topics["md.ticks"].partitions)
        c.assign(c.offsets_for_times([TopicPartition("md.ticks", p, t_start // 1_000_000) for p in parts], timeout=10))
        got = 0
        while got < n:
            for m in c.consume(batch, timeout=1.0):
                if m.error() or m.key() is None or m.key().decode() not in wanted:
                    continue
                r = codec.decode(m.value())
                got += r["seq"] >= 0
        dt = time.perf_counter() - t0
        c.close()
        return n / dt

    # Rounds alternate which side goes first, so a cold broker / page cache in the first read does not
    # fall on one side only; the ratio is of the two sides' medians.
    g_rates: list[float] = []
    k_rates: list[float] = []
    for r in range(rounds):
        order = (via_kafka, via_gateway) if r % 2 == 0 else (via_gateway, via_kafka)
        for fn in order:
            (k_rates if fn is via_kafka else g_rates).append(fn())
    g_rate, k_rate = float(np.median(g_rates)), float(np.median(k_rates))
    return {"ticks": n, "batch": batch, "rounds": rounds, "grpc_ticks_per_s": round(g_rate),
            "kafka_ticks_per_s": round(k_rate), "grpc_rounds": [round(x) for x in g_rates],
            "kafka_rounds": [round(x) for x in k_rates], "ratio_vs_kafka": round(g_rate / k_rate, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (20 jobs, 50k ticks)")
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="market-data reads each way, alternating which goes first (median reported)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.ticks = 20, 50_000
    s = C.settings()
    ns = f"bgw{uuid.uuid4().hex[:6]}"
    web, gport = _port(), _port()
    logs = Path(f"/tmp/bench-gateway-{ns}")
    logs.mkdir(parents=True, exist_ok=True)
    ctl = _spawn(["control", "--port", str(web), "--namespace", ns, "--app-id", f"bench-{ns}"], {}, logs / "control.log")
    gw = _spawn(["gateway", "--port", str(gport)], {"MYSTOCKS_GATEWAY__BACKTEST_KIND": "echo"}, logs / "gateway.log")
    try:
        _wait(lambda: "gRPC gateway on" in (logs / "gateway.log").read_text(errors="replace"), 300, "the gateway")
        import urllib.request

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/health", timeout=2) as r:
                    return bool(json.loads(r.read()).get("ready"))
            except OSError:
                return False

        _wait(ready, 300, "the control app")
        target = f"127.0.0.1:{gport}"
        lat = submit_latency(s, target, JobsConfig(namespace=ns), args.jobs)
        thr = throughput(s, target, args.ticks, args.batch, args.rounds)
    finally:
        for p in (gw, ctl):
            p.terminate()
        for p in (gw, ctl):
            p.wait(30)
    out = {"bench": "gateway", "quick": args.quick, "machine": C.machine(), "latency": lat, "throughput": thr,
           "submit_to_status_p99_ms": lat["grpc_p99_ms"], "ratio_vs_kafka": thr["ratio_vs_kafka"]}
    print(f"submit -> first task_status ({lat['jobs']} jobs): gRPC p50 {lat['grpc_p50_ms']} ms p99 {lat['grpc_p99_ms']} ms"
          f" | direct Kafka p50 {lat['kafka_p50_ms']} ms p99 {lat['kafka_p99_ms']} ms | added p50 {lat['added_p50_ms']} ms")
    print(f"SubscribeMarketData ({thr['ticks']:,} ticks): gRPC {thr['grpc_ticks_per_s']:,}/s vs plain Kafka consumer "
          f"{thr['kafka_ticks_per_s']:,}/s (medians of {thr['rounds']} rounds) -> ratio_vs_kafka {thr['ratio_vs_kafka']} (goal >= 0.5)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
