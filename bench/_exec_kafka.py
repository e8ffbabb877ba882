"""The Kafka part of ``bench/execution.py``: ``orders.parent`` -> ``orders.scored`` through the
execution processor on the local stack (``mystocks-gpu stack up``), against a naive baseline.

- **round trip** (latency): a ``mystocks-gpu run execution`` worker process (``--linger-ms 1``;
  exactly-once with the default 100 ms commit interval, then at-least-once) on its own topic set
  (tagged, deleted afterwards); orders produced at ``rate``/s with ``ts_event`` = send time (the
  processor's decision time), a read_committed consumer of the scored topic records
  ``receive time - ts_event`` per order: p50 / p99 / max in ms. The worker is warmed first (probe
  orders until one comes back).
- **throughput**: ``n`` orders produced up front, then a :class:`TimedWorker` (in process) consumes
  them: orders/s from the first record consumed to the final commit, exactly-once and
  at-least-once (RuntimeConfig defaults, batches of ``batch``).
- **baseline**: the straightforward consumer loop one would write first (confluent-kafka
  consume -> fastavro decode -> the naive NumPy scheduler of ``bench/execution.py`` -> fastavro
  encode -> produce per order, offsets committed per poll batch, at-least-once), same input,
  orders/s from the first record to the last output acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import _common as C  # noqa: E402  (bench/ is on sys.path)
import numpy as np

from mystocks_gpu.gpu_ops.execution import ExecutionConfig, MarketParams, ParentOrder
from mystocks_gpu.infra.kafka_clients import (
    ensure_broker,
    make_consumer,
    make_producer,
    produce_all,
)
from mystocks_gpu.processors.execution.exec_processor import (
    ExecutionProcessor,
    ExecutionProcessorConfig,
)
from mystocks_gpu.processors.execution.market_params_feed import publish
from mystocks_gpu.processors.execution.order_records import (
    ORDER_SCORE,
    PARENT_ORDER,
    order_from_record,
    order_to_record,
)
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE, RuntimeConfig

NS = 1_000_000_000
#: 2023-11-14 14:30 UTC, a session open (the in-process bench's NOW): VWAP orders meet volume
T_OPEN = 1_699_972_200 * NS


def _topic_set(s: Any, tag: str, name: str) -> dict[str, str]:
    base = f"bench.exec.{name}.{tag}"
    t = {"input": f"{base}.parent", "schedule": f"{base}.schedule", "scored": f"{base}.scored",
         "dlq": f"{base}.parent.dlq"}
    C.create_topics(s, [(t["input"], "mystocks.execution.ParentOrder", 4), (t["schedule"], None, 4),
                        (t["scored"], "mystocks.execution.OrderScore", 4), (t["dlq"], None, 1)])
    return t


def _orders(ps: list[MarketParams], n: int, t0_ns: int, seed: int, prefix: str) -> list[tuple[ParentOrder, int]]:
    """``n`` orders ``(order, ts_event)`` over ``ps``: 5-120 minute horizons, mixed strategies."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = ps[int(rng.integers(len(ps)))]
        ts = t0_ns + i * 1_000
        o = ParentOrder(f"{prefix}{i}", p.symbol, ("buy", "sell")[i % 2], int(rng.uniform(0.0005, 0.02) * p.adv) + 1,
                        ts + int(rng.integers(5, 121)) * 60 * NS, 0, ("ac", "ac", "twap", "vwap", "pov")[i % 5],
                        risk_aversion=float(10 ** rng.uniform(-8, -5)), max_participation=float(rng.uniform(0.1, 0.5)))
        out.append((o, ts))
    return out


def _produce_orders(s: Any, topic: str, orders: list[tuple[ParentOrder, int]]) -> None:
    codec = AvroCodec()
    items = [(o.order_id.encode(), codec.encode(PARENT_ORDER, order_to_record(o, ts)), ts // 1_000_000)
             for o, ts in orders]
    produce_all(make_producer(s.kafka), topic, iter(items))


# ---- latency --------------------------------------------------------------------------------------
def _latency(s: Any, ps: list[MarketParams], tag: str, name: str, guarantee_args: list[str], rate: float,
             seconds: float) -> dict[str, Any]:
    t = _topic_set(s, tag, name)
    publish(s.kafka, {p.symbol: p for p in ps}, time.time_ns(), "bench", orders_topic=t["input"], table_topic=None)
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "--log-level", "WARNING", "run", "execution", "--group",
           f"bench-exec-{name}-{tag}", "--worker-id", "lat", "--input-topic", t["input"], "--output-topic",
           t["scored"], "--linger-ms", "1", *guarantee_args]
    w = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "MYSTOCKS_BACKEND": "cpu"})
    codec = AvroCodec()
    consumer = make_consumer(s.kafka, f"bench-exec-lat-{uuid.uuid4().hex[:6]}",
                             **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 5, "isolation.level": "read_committed"})
    consumer.subscribe([t["scored"]])
    producer = make_producer(s.kafka, **{"linger.ms": 0})
    try:
        deadline = time.monotonic() + 20
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
        # warm: probe orders until one comes back (worker up, assigned, numba loaded)
        deadline = time.monotonic() + 120
        warm = False
        k = 0
        while not warm and time.monotonic() < deadline:
            if w.poll() is not None:
                raise RuntimeError(f"worker exited: {w.stderr.read()[-2000:] if w.stderr else ''}")
            o, ts = _orders(ps, 1, time.time_ns(), k, f"probe-{name}-{k}-")[0]
            k += 1
            producer.produce(t["input"], codec.encode(PARENT_ORDER, order_to_record(o, ts)), o.order_id.encode(),
                             timestamp=ts // 1_000_000)
            producer.flush(5)
            t_probe = time.monotonic()
            while time.monotonic() - t_probe < 2.0 and not warm:
                warm = any(m.error() is None for m in consumer.consume(100, timeout=0.1))
        if not warm:
            raise RuntimeError("the execution worker did not answer a probe order within 120 s")
        n = int(rate * seconds)
        template = _orders(ps, n, 0, 99, f"lat-{name}-")
        first_id = template[0][0].order_id
        lat: list[float] = []
        seen: set[str] = set()
        C.freeze_heap()  # this process times the round trips: its own full collections are not the worker's

        def _produce() -> None:
            t_start = time.monotonic()
            for i, (o, ts0) in enumerate(template):
                wait = t_start + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                now = time.time_ns()
                o2 = ParentOrder(o.order_id, o.symbol, o.side, o.quantity, now + (o.end_ns - ts0), 0, o.strategy,
                                 o.risk_aversion, o.max_participation)
                producer.produce(t["input"], codec.encode(PARENT_ORDER, order_to_record(o2, now)),
                                 o.order_id.encode(), timestamp=now // 1_000_000)
                producer.poll(0)
            producer.flush(30)

        th = threading.Thread(target=_produce, daemon=True)
        th.start()
        deadline = time.monotonic() + seconds + 30
        while time.monotonic() < deadline and len(lat) < n:
            for m in consumer.consume(1000, timeout=0.002):
                if m.error() is None:
                    now = time.time_ns()
                    key = m.key().decode()
                    if key.startswith(first_id[:-1]) and key not in seen:
                        seen.add(key)
                        lat.append((now - codec.decode(m.value())["ts_event"]) / 1e6)
        th.join(5)
    finally:
        consumer.close()
        w.send_signal(signal.SIGTERM)
        try:
            w.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
    a = np.asarray(lat)
    return {"orders": n, "received": int(a.size), "rate_per_s": rate, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "worker_args": guarantee_args}


# ---- throughput -----------------------------------------------------------------------------------
def _throughput_ours(s: Any, ps: list[MarketParams], tag: str, name: str, guarantee: str, n: int,
                     batch: int) -> dict[str, Any]:
    t = _topic_set(s, tag, name)
    publish(s.kafka, {p.symbol: p for p in ps}, 0, "bench", orders_topic=t["input"], table_topic=None)
    orders = _orders(ps, n, T_OPEN, 5, f"{name}-")
    _produce_orders(s, t["input"], orders)
    cfg = ExecutionProcessorConfig(schedule_topic=t["schedule"], scored_topic=t["scored"], backend="cpu")
    rt = RuntimeConfig(guarantee=guarantee, max_records=batch)
    w = C.TimedWorker(ExecutionProcessor(cfg), s.kafka, rt, group=f"bench-exec-{name}-{tag}", worker_id="thr",
                      input_topic=t["input"])
    summary = w.run(idle_exit_s=10.0, max_records=n + len(ps) * 4)
    count, _ = C.count_topic(s, t["scored"])
    return {"orders": n, "records_in": summary.records_in, "records_out": summary.records_out, "dlq": summary.dlq,
            "scored_committed": count, "busy_s": w.busy_s, "orders_per_s": n / w.busy_s, "batch": batch,
            "commit_interval_ms": rt.commit_interval_ms, "ok": count == n and summary.dlq == 0}


def _throughput_naive(s: Any, ps: list[MarketParams], tag: str, n: int, naive_schedule: Any) -> dict[str, Any]:
    """The baseline consumer loop (see the module docstring)."""
    t = _topic_set(s, tag, "naive")
    orders = _orders(ps, n, T_OPEN, 5, "naive-")
    _produce_orders(s, t["input"], orders)
    dec, enc = C.avro_reader(PARENT_ORDER), C.avro_writer(ORDER_SCORE)
    by_sym = {p.symbol: p for p in ps}
    cfg = ExecutionConfig()
    consumer = make_consumer(s.kafka, f"bench-exec-naive-{tag}", **{"enable.auto.commit": False,
                                                                     "auto.offset.reset": "earliest"})
    producer = make_producer(s.kafka)
    consumer.subscribe([t["input"]])
    done, t_first = 0, None
    deadline = time.monotonic() + 600
    try:
        while done < n and time.monotonic() < deadline:
            msgs = consumer.consume(500, timeout=0.5)
            for m in msgs:
                if m.error() is not None:
                    continue
                if t_first is None:
                    t_first = time.perf_counter()
                rec = dec(m.value())
                o = order_from_record(rec, rec["ts_event"])
                r = naive_schedule(o, by_sym[o.symbol], cfg, rec["ts_event"])
                out = {"order_id": o.order_id, "ts_event": rec["ts_event"], "ts_ingest": time.time_ns(),
                       "symbol": o.symbol, "side": rec["side"], "strategy": rec["strategy"], "quantity": o.quantity,
                       "price": by_sym[o.symbol].price, "expected_shortfall": r["expected_shortfall"],
                       "expected_shortfall_bps": r["expected_shortfall"] / (o.quantity * by_sym[o.symbol].price) * 1e4,
                       "variance": r["variance"], "timing_risk": r["timing_risk"], "impact_cost": 0.0,
                       "permanent_impact": 0.0, "temporary_impact": 0.0, "spread_cost": 0.0,
                       "sqrt_impact_cost": r["sqrt_impact"], "objective": r["objective"],
                       "risk_aversion": o.risk_aversion or 0.0, "kappa": 0.0, "n_slices": len(r["shares"]),
                       "executed_qty": int(r["shares"].sum()), "unfilled_qty": int(r["unfilled"]),
                       "capped": bool(r["unfilled"]), "max_participation": float(r["participation"]),
                       "participation": [0.0] * len(r["shares"]), "warning": ""}
                while True:
                    try:
                        producer.produce(t["scored"], enc(out), m.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
                done += 1
            if msgs:
                producer.poll(0)
                consumer.commit(asynchronous=False)
        producer.flush(60)
        t_end = time.perf_counter()
    finally:
        consumer.close()
    busy = t_end - (t_first or t_end)
    return {"orders": n, "processed": done, "busy_s": busy, "orders_per_s": done / busy if busy > 0 else float("nan")}


def kafka_round_trip(n: int, rate: float, seconds: float, batch: int, n_symbols: int,
                     universe: Any, naive_schedule: Any) -> dict[str, Any] | None:
    """All of the above; None (with the reason printed) when no broker is reachable."""
    s = C.settings()
    try:
        ensure_broker(s.kafka)
    except Exception as exc:  # noqa: BLE001 - the in-process results stand on their own
        print(f"Kafka round trip: skipped, no broker ({exc}); start one with `mystocks-gpu stack up`")
        return None
    ps = universe(n_symbols)
    tag = C.new_tag()
    out: dict[str, Any] = {"tag": tag, "machine_before": C.machine()}
    try:
        for name, args in (("eos", []), ("alo", ["--at-least-once"])):
            r = _latency(s, ps, tag, f"lat{name}", args, rate, seconds)
            out[f"latency_{name}"] = r
            print(f"  round trip {name.upper()} ({r['orders']:,} orders at {rate:,.0f}/s, worker {' '.join(args) or '(EOS, commit 100 ms)'}"
                  f"): p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms ({r['received']:,} received)")
        for name, g in (("eos", EXACTLY_ONCE), ("alo", AT_LEAST_ONCE)):
            r = _throughput_ours(s, ps, tag, f"thr{name}", g, n, batch)
            out[f"throughput_{name}"] = r
            print(f"  throughput ours {name.upper()}: {r['orders_per_s']:,.0f} orders/s ({n:,} orders, batch {batch}, "
                  f"{r['busy_s']:.2f} s; committed scores {r['scored_committed']:,}{'' if r['ok'] else ' MISMATCH'})")
        r = _throughput_naive(s, ps, tag, min(n, 20_000), naive_schedule)
        out["throughput_naive"] = r
        print(f"  throughput naive consumer loop (fastavro + NumPy model, ALO): {r['orders_per_s']:,.0f} orders/s "
              f"({r['processed']:,} orders, {r['busy_s']:.2f} s)")
        out["ratio_throughput_eos_vs_naive"] = C.ratio(out["throughput_eos"]["orders_per_s"], r["orders_per_s"])
        out["ratio_throughput_alo_vs_naive"] = C.ratio(out["throughput_alo"]["orders_per_s"], r["orders_per_s"])
        print(f"  ratio ours/naive: EOS {out['ratio_throughput_eos_vs_naive']:.1f}x, "
              f"ALO {out['ratio_throughput_alo_vs_naive']:.1f}x")
    finally:
        C.cleanup(s, tag)
        out["machine_after"] = C.machine()
    return out
