"""Kafka alone, the latency floor of ``bench/features_e2e.py``: the same load producer and measuring
consumer as :func:`_features_latency.run_latency`, with the worker replaced by nothing (one hop:
producer -> broker -> consumer) or by a relay that copies the records and does no work (two hops, the
pipeline's shape; for exactly-once in transactions committed at the worker's commit interval). What a
goal's measured value is compared with (``bench/_features_goals.py``). Split from
``_features_latency.py``, which runs the pipeline itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import _common as C
import numpy as np
from _features_latency import (
    TICK,
    CpuWindow,
    MeasuringConsumer,
    arrivals,
    broker_pid,
    cpu_line,
    fetch_settings,
    produce_batch_all,
    quantiles,
    spawn_role,
    start_load,
    warm_up,
)

from mystocks_gpu.infra.cpu_affinity import parse_cpu_list, pin_process
from mystocks_gpu.infra.kafka_clients import consume_ready
from mystocks_gpu.streams.commit_head_start import CommitHeadStart, record_age_s
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE, RuntimeConfig
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin


def start_relay(s: Any, tag: str, topic: str, out: str, partitions: int, commit_interval_ms: float,
                transactional: bool = True, linger_ms: float | None = None,
                fetch: dict[str, Any] | None = None, cpus: str = "") -> subprocess.Popen[str]:
    """Start :func:`relay_role` (``topic`` -> ``out``; ``transactional``: in transactions committed
    every ``commit_interval_ms``, else at-least-once with the offsets committed that often) and wait
    until it has its partitions (and its producer id). ``cpus``: where it runs (the worker's
    ``--worker-cpus``, so the floor has the worker's placement)."""
    cfg = {"topic": topic, "out": out, "partitions": partitions, "group": f"bench-fe-relay-{tag}",
           "commit_interval_ms": commit_interval_ms, "transactional": transactional, "linger_ms": linger_ms,
           "cpus": cpus, **(fetch or {})}
    return spawn_role("relay", cfg, "the relay")[0]  # {"ready": true}


def relay_role(cfg: dict[str, Any]) -> None:
    """Kafka alone through a relay (``--_role relay``): plain confluent-kafka clients copy every
    record of ``topic`` to ``out`` unchanged, one ``produce_batch`` per fetch. No decode, no state, no
    features: the two hops of our pipeline with no work between them. Runs until SIGTERM.

    ``transactional`` (exactly-once floor): inside transactions that also carry the input offsets,
    committed as our worker commits (``CommitHeadStart.wait_s``, ``streams/commit_head_start.py``):
    ``commit_interval_ms`` from the start of the previous commit less the mean commit time, or
    sooner when the transaction's oldest record would otherwise be visible more than the interval
    after its timestamp. Otherwise (at-least-once floor):
    the worker's at-least-once client settings (``PRODUCER_DEFAULTS``: an idempotent lz4 producer,
    with the worker's output ``linger.ms``, ``linger_ms`` or its default; the worker's consumer
    ``fetch.wait.max.ms`` and ``fetch.min.bytes``: :data:`FETCH_SETTINGS`), offsets committed
    asynchronously every ``commit_interval_ms``."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from mystocks_gpu.infra.kafka_clients import PRODUCER_DEFAULTS

    pin_process(0, parse_cpu_list(cfg.get("cpus") or ""))  # before the clients start their threads
    s = C.settings()
    eos = bool(cfg.get("transactional", True))
    alo = RuntimeConfig(guarantee=AT_LEAST_ONCE, producer_linger_ms=cfg.get("linger_ms"),
                        **fetch_settings(cfg))  # the worker's settings
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    cons = Consumer(s.kafka.client_config(**{
        "group.id": cfg["group"], "enable.auto.commit": False, "isolation.level": "read_committed",
        "fetch.wait.max.ms": 5 if eos else alo.fetch_wait_max_ms, "fetch.min.bytes": 1 if eos else alo.fetch_min_bytes,
        "socket.nagle.disable": True, "auto.offset.reset": "earliest"}))
    cons.assign([TopicPartition(cfg["topic"], p) for p in range(int(cfg["partitions"]))])
    prod = Producer(s.kafka.client_config(**(
        {"transactional.id": cfg["group"], "linger.ms": 5, "socket.nagle.disable": True} if eos else
        {**PRODUCER_DEFAULTS, "linger.ms": alo.output_linger_ms, "socket.nagle.disable": True})))
    if eos:
        prod.init_transactions(30)
        prod.begin_transaction()
    interval = float(cfg["commit_interval_ms"]) / 1e3
    out, started = cfg["out"], time.monotonic()
    head_start = CommitHeadStart()
    pos: dict[int, int] = {}  # partition -> next offset, since the last commit
    oldest_ms: int | None = None  # the smallest record timestamp since the last commit

    def wait_s() -> float:  # until the next commit is due (the worker's rule: CommitProtocol.due_in_s)
        since = time.monotonic() - started
        if not eos:
            return interval - since
        return head_start.wait_s(interval, since, record_age_s(oldest_ms, time.time()))

    C.freeze_heap()
    print(json.dumps({"ready": True}), flush=True)
    while not stop:
        wait = min(0.05, max(0.0, wait_s())) if pos else 0.05
        batch = []
        for m in consume_ready(cons, 10_000, wait):
            if m.error() is None:
                batch.append({"value": m.value(), "key": m.key(), "partition": m.partition()})
                pos[m.partition()] = m.offset() + 1
                ts = m.timestamp()[1]
                if ts > 0 and (oldest_ms is None or ts < oldest_ms):
                    oldest_ms = ts
        # one produce_batch per fetch (a produce() per record costs this relay 3x the CPU)
        produce_batch_all(prod, out, batch, "the relay", 0.005)
        prod.poll(0)
        if pos and wait_s() <= 0:
            started = time.monotonic()
            offsets = [TopicPartition(cfg["topic"], p, o) for p, o in pos.items()]
            if eos:
                prod.send_offsets_to_transaction(offsets, cons.consumer_group_metadata(), 30)
                prod.commit_transaction(30)
                head_start.observe(time.monotonic() - started)
                prod.begin_transaction()
            else:
                cons.commit(offsets=offsets, asynchronous=True)
            pos.clear()
            oldest_ms = None
    if eos:
        prod.abort_transaction(30)
    else:
        prod.flush(30)
    cons.close()


def run_floor(s: Any, tag: str, rate: float, args: Any, seconds: float | None = None,
              guarantee: str = AT_LEAST_ONCE, relay: bool | None = None) -> dict[str, Any]:
    """Kafka alone, the floor under any worker's latency: the same producer subprocess offers
    ``rate`` ticks/s to a fresh input topic and this process consumes that topic directly, with
    the measuring consumer's settings; latency = receive wall time - the tick's ``ts_event``
    (decoded from the record: exact to the ns). Our pipeline adds a consume, the work and a produce
    on top of this hop, on the same cores.

    ``relay`` (default: for exactly-once only): a :func:`relay_role` subprocess copies the input to
    an output topic that this process consumes instead: the pipeline's two hops with no work.
    ``guarantee="exactly_once"``: Kafka transactions alone; the relay commits transactions every
    ``args.commit_interval_ms`` and this process reads its output read_committed. At-least-once:
    the relay has the worker's at-least-once client settings (``args.output_linger_ms``)."""

    from mystocks_gpu.schemas.batch_codec import TickDecoder

    seconds = float(seconds or args.latency_s)
    eos = guarantee == EXACTLY_ONCE
    relay_on = eos if relay is None else relay
    short = f"floor{'e' if eos else 'r' if relay_on else ''}{int(rate)}{C.new_tag()[:4]}"
    topic = f"bench.fe.floor.in.{short}.{tag}"
    out = f"bench.fe.floor.out.{short}.{tag}"
    TopicAdmin(s.kafka).create([TopicSpec(t, "symbol", TICK, partitions=args.lat_partitions, dlq=False)
                                for t in ([topic, out] if relay_on else [topic])])
    relay_p = start_relay(s, short + tag, topic, out, args.lat_partitions, args.commit_interval_ms, transactional=eos,
                          linger_ms=args.output_linger_ms, fetch=fetch_settings(vars(args)),
                          cpus=args.worker_cpus) if relay_on else None
    cons = MeasuringConsumer(s, f"bench-fe-floorc-{short}-{tag}", out if relay_on else topic, args.lat_partitions)
    dec = TickDecoder()
    producer = None
    try:
        warm_up(s, topic, cons, 200, args.symbols, 60, "ticks")
        C.freeze_heap()
        producer, load_start = start_load(topic, rate, seconds, args.symbols, args.ramp_s, args.feed_producer)
        window = CpuWindow({"relay": [relay_p.pid if relay_p is not None else None], "broker": [broker_pid(s)],
                            "feed": [producer.pid], "reader": [os.getpid()]})
        rep: dict[str, Any] = {}
        lat = np.empty(int(rate * seconds) + 10_000, np.int64)
        k = 0
        # the tally as it grows: late binding wanted
        for now, values, _ in arrivals(cons, producer, lambda: k, 60 + 3 * (seconds + args.ramp_s), rep):  # noqa: B023
            ts = dec.decode(values).columns["ts"]
            ts = ts[ts >= load_start][: lat.size - k]
            lat[k:k + ts.size] = now - ts
            k += ts.size
            window.sample()
        cpu_cores = window.stop()
    finally:
        cons.close()
        if producer is not None and producer.poll() is None:
            producer.kill()
        if relay_p is not None:
            relay_p.terminate()  # aborts its open transaction (or flushes) and exits
            try:
                relay_p.wait(15)
            except subprocess.TimeoutExpired:
                relay_p.kill()
    return {"guarantee": guarantee, "rate": rate, "hops": 2 if relay_on else 1, "offered": rep.get("counted"), "received": k, "seconds": seconds,
            "ramp_s": args.ramp_s, **quantiles(np.sort(lat[:k].astype(np.float64) / 1e6)), "loadavg_1min": C.machine()["loadavg_1min"],
            "cpu_cores": cpu_cores}


def floor_round(s: Any, tag: str, guarantee: str, rate: float, args: Any, notes: list[str],
                relay: bool | None = None) -> dict[str, Any] | None:
    """One :func:`run_floor` at ``rate``, printed; a failure is added to ``notes`` (None returned)."""
    if guarantee == EXACTLY_ONCE:
        what = ("Kafka transactions alone: producer -> broker -> transactional relay (commit interval "
                f"{args.commit_interval_ms:g} ms, as the worker counts it) -> broker -> consumer")
    elif relay:
        what = "Kafka alone, two hops: producer -> broker -> relay (no work) -> broker -> consumer"
    else:
        what = "Kafka alone: producer -> broker -> consumer"
    try:
        fl = run_floor(s, tag, rate, args, guarantee=guarantee, relay=relay)
    except Exception as exc:  # noqa: BLE001 - report and go on
        notes.append(f"floor {guarantee}{' relay' if relay else ''} @ {rate:,.0f}/s failed: {type(exc).__name__}: "
                     f"{str(exc)[:1500]}")
        print(f"  {notes[-1]}")
        return None
    print(f"  floor ({what}) @ {rate:,.0f}/s: p50 {C.fmt(fl['p50_ms'])} ms, p99 {C.fmt(fl['p99_ms'])} ms, "
          f"p99.9 {C.fmt(fl['p999_ms'])} ms ({fl['received']:,}/{fl['offered']:,} received, load {fl['loadavg_1min']})")
    print(f"    {cpu_line(fl['cpu_cores'])}")
    return fl
