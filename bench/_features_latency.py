"""Tick -> feature latency of ``bench/features_e2e.py``: offered load, a per-stage breakdown, old vs
new code in one run, and scale-out over worker counts. Not a public API.

One latency run: a producer subprocess offers ``rate`` ticks/s for ``ramp_s + seconds`` with
``ts_event`` = wall clock at produce; only the ticks of the last ``seconds`` are measured (the ramp
is the switch from an idle pipeline to full rate, with its one-off stalls: broker, worker and
consumer all start working at once); ``workers`` worker subprocesses (one consumer group) compute
the features; this process consumes the output (read_committed) and takes, per feature vector,

- ``e2e`` = receive wall time - ``ts_event`` (the headline p50/p99/p99.9),
- ``to_worker`` = ``ts_ingest`` (the worker's batch close, carried in the vector) - ``ts_event``,
- ``in_worker`` = broker append time of the output (its topic uses LogAppendTime) - ``ts_ingest``,
- ``to_consumer`` = receive - append time (exactly-once: includes waiting for the commit),

(append times have millisecond resolution), and scrapes each worker's ``/metrics`` for the stage
histograms ``mystocks_stream_stage_seconds`` (poll, batch, decode, compute, encode, produce,
deliver/commit; see ``mystocks_gpu/streams/stream_metrics.py``), summed over workers. Stage means
add up (each stage is observed once per record), so ``mean(e2e) - sum(stage means)`` is the time
from visibility to the measuring consumer's receive (its fetch + the feed producer's queueing,
which the ``poll`` stage does not see when the input's record timestamp is taken at produce).

The measuring consumer (:class:`MeasuringConsumer`) reads its records in columns through the
runtime's C ingest (``streams/columnar_io.py``: values and append times as two lists, no ``Message``
object per record) and decodes each fetch's vectors in one batch (``FeatureVectorDecoder`` with no
feature keys: ts_event and ts_ingest only), so it takes little of the CPU that producer, broker and
worker share. It blocks for the first record and then drains without waiting (``consume(n,
timeout)`` waits for all n or the timeout: timing each batch of messages by its return would add up
to the timeout to every latency). The load producer hands each paced chunk to the runtime's C
``produce_many`` (:func:`produce_chunk`) in the same way.

Every process of a measurement (this one, the load producer, the relay; the worker does it in
``StreamWorker.run``) moves its start-up heap out of the cyclic collector's view before its timed
loop (``C.freeze_heap``): until 2026-12-03 this process's own full collections, 50-110 ms every 1-2 s,
were counted as pipeline latency. The load producer encodes its ticks once and splices each paced
chunk's ``ts_event`` into them (``mystocks_gpu.data.live_feed.StampedTicks``), so it takes a quarter of a core at 50k
ticks/s instead of most of one.

Each run also groups its records over p99 into episodes by event time (:func:`tail_episodes`: a
stall shows as one episode, with the hop that held it) and, with ``--dump-records DIR``, keeps every
measured vector's times in ``DIR/latency-<run>.npz``.

``tree``: run the worker from another checkout (e.g. ``git archive <commit> | tar -x -C DIR``) to
compare old and new code under the same load in one run; such a worker has no stage metrics.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as C
import numpy as np

from mystocks_gpu.data.live_feed import LIVE_PRODUCER
from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.cpu_affinity import check_cpus, parse_cpu_list, pin_process
from mystocks_gpu.infra.stack_process import proc_stat
from mystocks_gpu.schemas.batch_codec.feature_vectors import FeatureVectorDecoder
from mystocks_gpu.streams.columnar_io import ColumnarIngest, load_extension, take_ready
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_metrics import STAGE_BUCKETS, STAGES, histogram_quantile
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin

#: the load producer's delivery settings (``--feed-producer``), on top of ``PRODUCER_DEFAULTS``. The load
#: producer stands for an exchange feed handler upstream of the platform; it shares the two cores with
#: the broker and the worker it measures. ``ordered`` (default): ``mystocks-gpu produce --live``'s
#: producer (:data:`~mystocks_gpu.data.live_feed.LIVE_PRODUCER`: not idempotent, one request in flight
#: per connection, 1 ms linger, Nagle off), which waits in ``poll()``. ``idempotent``: the project's
#: default producer with the same linger and Nagle. librdkafka (2.12 here, unchanged in 2.15:
#: ``rd_kafka_toppar_producer_serve``) caps an idempotent producer at 5 in-flight *requests* per
#: partition minus the partition's in-flight *messages*, so once a request of 5 or more records is out
#: the next one waits for its acknowledgement; the waiting batch is already due, so the broker
#: thread's poll timeout stays 0 until then: it spins a core for the whole round trip, the longer the
#: slower the broker (open PR confluentinc/librdkafka#4989 is about the cap). The A/B that made
#: ``ordered`` the default: ``bench/HISTORY.md``, 2026-12-05 09:20.
FEED_PRODUCERS: dict[str, dict[str, Any]] = {
    "idempotent": {"linger.ms": 1, "socket.nagle.disable": True},
    "ordered": LIVE_PRODUCER,
}

TICK = "mystocks.md.Tick"
FV = "mystocks.features.FeatureVector"
HERE = Path(__file__).resolve()


#: the consumer settings a latency run can set for our worker and the at-least-once relay (bench args)
FETCH_SETTINGS = ("fetch_min_bytes", "fetch_wait_max_ms")


def fetch_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The :data:`FETCH_SETTINGS` given in ``cfg`` (a role's config), as RuntimeConfig keywords."""
    return {k: int(cfg[k]) for k in FETCH_SETTINGS if cfg.get(k) is not None}


def fetch_label(args: Any) -> str:
    """How the worker's consumer fetches, for the table's title."""
    rt = RuntimeConfig(**fetch_settings(vars(args)))
    return f"min {rt.fetch_min_bytes} B / wait {rt.fetch_wait_max_ms} ms"


def free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return int(so.getsockname()[1])


def scrape_worker(port: int) -> tuple[dict[str, tuple[np.ndarray, float]], dict[str, float]]:
    """From a worker's /metrics: stage -> (per-bucket counts incl. +Inf, sum of seconds), and its
    batches' cost: ``{"batches", "wall_s", "cpu_s"}`` (``mystocks_stream_batch_seconds`` count and
    sum, ``mystocks_stream_batch_cpu_seconds``: wall and thread-CPU seconds in decode+process+produce)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, tuple[np.ndarray, float]] = {}
    key_of = {name: key for key, name in C.BATCH_COST}
    cost = dict.fromkeys(key_of.values(), 0.0)
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name in key_of:
                cost[key_of[smp.name]] += smp.value
        if fam.name != "mystocks_stream_stage_seconds":
            continue
        cum: dict[str, list[tuple[float, float]]] = {}
        sums: dict[str, float] = {}
        for smp in fam.samples:
            stage = smp.labels.get("stage", "")
            if smp.name.endswith("_bucket"):
                le = float("inf") if smp.labels["le"] == "+Inf" else float(smp.labels["le"])
                cum.setdefault(stage, []).append((le, smp.value))
            elif smp.name.endswith("_sum"):
                sums[stage] = smp.value
        for stage, pts in cum.items():
            c = np.array([v for _, v in sorted(pts)], np.float64)
            out[stage] = (np.diff(np.concatenate([[0.0], c])).astype(np.int64), sums.get(stage, 0.0))
    return out, cost


def stage_table(per_worker: list[dict[str, tuple[np.ndarray, float]]]) -> dict[str, dict[str, float]]:
    """Sum the workers' stage histograms; p50/p99 (histogram_quantile, ms), mean (ms), count."""
    bounds = np.asarray(STAGE_BUCKETS)
    res: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        counts = np.zeros(bounds.size + 1, np.int64)
        total = 0.0
        for w in per_worker:
            if stage in w:
                counts += w[stage][0]
                total += w[stage][1]
        n = int(counts.sum())
        if n:
            res[stage] = {"p50_ms": histogram_quantile(0.5, bounds, counts) * 1e3,
                          "p99_ms": histogram_quantile(0.99, bounds, counts) * 1e3,
                          "mean_ms": total / n * 1e3, "count": n}
    return res


def group_stable(s: Any, group: str, members: int) -> bool:
    """True when ``group`` is Stable with ``members`` members, each holding partitions."""
    from confluent_kafka import ConsumerGroupState

    admin = TopicAdmin(s.kafka).admin
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return (desc.state == ConsumerGroupState.STABLE and len(desc.members) == members
            and all(m.assignment and m.assignment.topic_partitions for m in desc.members))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``; 0 where there is none)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0  # utime, stime


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores so far (``/proc/stat``; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - ticks[3] - ticks[4], total


class CpuWindow:
    """Where the machine's CPU went over a measured window: per role (the worker processes, the
    broker, the load producer, this process = the measuring consumer), in cores (CPU seconds per
    wall second), and the machine's busy cores of all of them (the rest: the system and anything
    else running). On two shared cores a latency goal needs headroom: a window whose machine is
    busy ~2 cores has every thread waiting for a core. ``roles``: name -> pids (None where unknown,
    e.g. a broker this benchmark did not start).

    A process that exits inside the window (the load producer, once its load is offered) counts
    until the last :meth:`sample` that saw it: call it every few hundred ms (``every_s``)."""

    def __init__(self, roles: dict[str, list[int | None]], every_s: float = 0.25) -> None:
        self.roles = {name: [p for p in pids if p] for name, pids in roles.items()}
        self.every_s = every_s
        self.cpu0 = {p: cpu_seconds(p) for pids in self.roles.values() for p in pids}
        self.last = dict(self.cpu0)
        self.t0, self.jiffies0 = time.monotonic(), machine_jiffies()
        self.sampled = self.t0

    def sample(self, force: bool = False) -> None:
        """Read each process's CPU so far (at most every ``every_s`` unless ``force``); a process
        that is gone keeps its last reading."""
        now = time.monotonic()
        if not force and now - self.sampled < self.every_s:
            return
        self.sampled = now
        for p in self.last:
            cpu = cpu_seconds(p)  # 0.0 once the process is gone
            if cpu > 0:
                self.last[p] = cpu

    def stop(self) -> dict[str, float]:
        """Cores per role and ``machine`` (busy cores of ``cores``) since the start; ``other`` = machine
        minus the roles (the kernel's softirqs, the stack's other servers, whatever else ran)."""
        self.sample(force=True)
        wall = max(time.monotonic() - self.t0, 1e-9)
        busy1, total1 = machine_jiffies()
        cores = os.cpu_count() or 1
        out = {name: round(sum(self.last[p] - self.cpu0[p] for p in pids) / wall, 3)
               for name, pids in self.roles.items() if pids}
        busy, total = busy1 - self.jiffies0[0], total1 - self.jiffies0[1]
        out["machine"] = round(cores * busy / total, 3) if total > 0 else 0.0
        out["other"] = round(max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine")), 3)
        out["cores"] = cores
        return out


def cpu_line(cpu: dict[str, float] | None) -> str:
    """One line for a run's :class:`CpuWindow` (empty without one)."""
    if not cpu:
        return ""
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k not in ("machine", "cores"))
    return (f"CPU over the window, in cores: {parts}; machine busy {cpu['machine']:.2f} of {cpu['cores']:g} "
            f"({100 * cpu['machine'] / cpu['cores']:.0f} %)")


def pin_broker(s: Any, cpus: str) -> int | None:
    """Pin every thread of the local stack's running broker to the CPU list ``cpus`` (``--broker-cpus``;
    threads it starts later inherit it); returns its pid, or None when ``cpus`` is empty."""
    if not cpus:
        return None
    want = parse_cpu_list(cpus, "--broker-cpus")
    check_cpus(want, "--broker-cpus")
    pid = broker_pid(s)
    if pid is None:
        raise ConfigError("--broker-cpus: the broker is not the local stack's (no pid to pin)")
    pin_process(pid, want)
    return pid


def unpin_broker(pid: int | None) -> None:
    """Give a broker pinned by :func:`pin_broker` every CPU this process may use again."""
    if pid is not None and proc_stat(pid):
        pin_process(pid, tuple(sorted(os.sched_getaffinity(0))))


def broker_pid(s: Any) -> int | None:
    """The local stack's broker process (None when the broker is not the stack's)."""
    from mystocks_gpu.infra.stack import LocalStack

    try:
        return LocalStack(s.stack).pid("kafka")
    except Exception:  # noqa: BLE001 - a broker elsewhere: its CPU is not on this machine's books
        return None


def quantiles(a_ms: np.ndarray) -> dict[str, float | None]:
    if not a_ms.size:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None, "mean_ms": None}
    return {"p50_ms": float(np.quantile(a_ms, 0.5)), "p99_ms": float(np.quantile(a_ms, 0.99)),
            "p999_ms": float(np.quantile(a_ms, 0.999)), "max_ms": float(a_ms.max()), "mean_ms": float(a_ms.mean())}


class MeasuringConsumer:
    """The measuring consumer: read_committed, assigned to every partition of ``topic`` from the
    beginning, fetches answered within 5 ms, no Nagle delay.

    :meth:`take` reads through the runtime's columnar ingest (:class:`ColumnarIngest`) when the C
    extension is built, not confluent-kafka's ``Message`` objects (each one's value and timestamp
    then read back in Python): at 50k records/s this process took 21 % of a core instead of 24 %
    (2026-12-06), CPU that the broker and the worker it measures share. Without the extension it
    reads ``Message`` objects, as before."""

    def __init__(self, s: Any, group: str, topic: str, partitions: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from mystocks_gpu.infra.kafka_clients import make_consumer

        self.cons = make_consumer(s.kafka, group, **{"fetch.wait.max.ms": 5, "socket.nagle.disable": True})
        self.ingest = ColumnarIngest(self.cons, topic) if load_extension()[0] is not None else None
        if self.ingest is not None:
            self.ingest.attach(list(range(partitions)))  # before librdkafka starts fetching them
        self.cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])

    def take(self, max_records: int, timeout_s: float) -> tuple[list[bytes | None], list[int]]:
        """The values and record timestamps (ms) of up to ``max_records`` records: blocks at most
        ``timeout_s`` for the first, then takes what else has arrived without waiting
        (``columnar_io.take_ready``; error events, none expected, are left out)."""
        return take_ready(self.cons, self.ingest, max_records, timeout_s)

    def close(self) -> None:
        """Release the ingest, then close the consumer (in that order: see :class:`ColumnarIngest`)."""
        if self.ingest is not None:
            self.ingest.close()
        self.cons.close()


def warm_up(s: Any, topic: str, cons: MeasuringConsumer, n: int, symbols: int, timeout_s: float, what: str) -> None:
    """Produce ``n`` ticks stamped now to ``topic`` and wait until ``cons`` has received ``n`` records
    (every partition fetched, every worker assigned and warm), before the clock starts."""
    wcols, wnames = C.synthetic(n, symbols, seed=3)
    wcols["ts"] = np.full(n, time.time_ns(), np.int64)
    C.produce_ticks(s, topic, wcols, wnames)
    seen, t0 = 0, time.monotonic()
    while seen < n and time.monotonic() - t0 < timeout_s:
        seen += len(cons.take(10_000, 0.2)[0])
    if seen < n:
        raise RuntimeError(f"warm-up: only {seen} of {n} {what} came back")


def start_load(topic: str, rate: float, seconds: float, symbols: int, ramp_s: float, feed: str
               ) -> tuple[subprocess.Popen[str], int]:
    """Start the producer subprocess offering ``rate`` ticks/s for ``ramp_s + seconds`` (ts_event =
    wall clock at produce) and wait until it is connected and about to send; returns it and the
    start (ns) of the measured window, ``ramp_s`` after its first tick: ticks stamped before it
    (the probe tick, the ramp) are not counted. Its last stdout line (JSON) says how many ticks it
    stamped inside the window (``counted``). ``feed``: the producer's delivery settings, see
    :data:`FEED_PRODUCERS`."""
    pcfg = {"topic": topic, "rate": rate, "seconds": seconds + ramp_s, "symbols": symbols,
            "probe_ts": time.time_ns(), "ramp_s": ramp_s, "feed": feed}
    producer, first = spawn_role("producer", pcfg, "the load producer")
    return producer, int(first["count_from"])  # printed just before its first tick


def spawn_role(role: str, cfg: dict[str, Any], what: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``features_e2e.py --_role role`` and wait for the first line it prints (JSON: it is
    ready); raises with its stderr if it exits first."""
    p = subprocess.Popen([sys.executable, str(C.ROOT / "bench" / "features_e2e.py"), "--_role", role,
                          "--_cfg", json.dumps(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(C.ROOT))
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} failed to start: {p.communicate()[1][-1500:]}")
    return p, dict(json.loads(line))


def produce_chunk(prod: Any, topic: str, values: list[bytes], keys: list[bytes], ts_ms: int, what: str,
                  poll_s: float) -> None:
    """Every record of a paced chunk (``values``/``keys``, all stamped ``ts_ms``), to the partitioner's
    partition, through the runtime's C ``produce_many`` (one C loop over the lists: no dict per record
    for ``produce_batch`` to read back), polling ``poll_s`` for room while the queue is full; any
    other error ends the process. Without the C extension: :func:`produce_batch_all`."""
    from confluent_kafka import KafkaError

    ext = load_extension()[0]
    if ext is None:
        produce_batch_all(prod, topic, [{"value": v, "key": k} for k, v in zip(keys, values, strict=True)], what, poll_s)
        return
    i, n, ts = 0, len(values), [ts_ms] * len(values)
    while i < n:
        sent, code, reason = ext.produce_many(prod, topic, values, keys, ts, None, -1, i, n)
        i += sent
        if code == 0:
            return
        if code != KafkaError._QUEUE_FULL:
            raise SystemExit(f"{what} could not queue a record: {reason}")
        prod.poll(poll_s)


def produce_batch_all(prod: Any, topic: str, batch: list[dict[str, Any]], what: str, poll_s: float) -> None:
    """``produce_batch`` every message of ``batch`` (dicts of value, key[, partition]), polling
    ``poll_s`` for room while the queue is full; any other per-message error ends the process."""
    from confluent_kafka import KafkaError

    while batch:
        prod.produce_batch(topic, batch)
        batch = [m for m in batch if "_error" in m]
        for m in batch:
            err = m.pop("_error")
            if err.code() != KafkaError._QUEUE_FULL:
                raise SystemExit(f"{what} could not queue a record: {err}")
        if batch:
            prod.poll(poll_s)


def load_report(producer: subprocess.Popen[str]) -> dict[str, Any] | None:
    """The load producer's JSON report once it has exited (``counted``: the ticks it stamped inside
    the measured window), None while it runs; raises if it failed. Call until it returns a report."""
    if producer.poll() is None:
        return None
    out, err = producer.communicate()
    if producer.returncode != 0:
        raise RuntimeError(f"the load producer failed: {err[-1500:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


#: the hops of a feature vector's latency, in order (see the module docstring)
HOPS = ("to_worker", "in_worker", "to_consumer")


def arrivals(cons: Any, producer: subprocess.Popen[str], counted: Callable[[], int], timeout_s: float,
             report: dict[str, Any]) -> Iterator[tuple[int, list[bytes | None], list[int]]]:
    """Each fetch of the measuring consumer ``cons`` while the load runs: ``(arrival ns, values,
    append ms)``, timed on arrival (``take`` blocks for the first record only). Ends once the load
    producer has reported and ``counted()`` (the caller's tally of measured records) reaches its
    count, or after ``timeout_s``; its report is then in ``report`` (empty if it never came)."""
    rep = None
    deadline = time.monotonic() + timeout_s
    while (rep is None or counted() < rep["counted"]) and time.monotonic() < deadline:
        rep = rep or load_report(producer)
        values, append_ms = cons.take(10_000, 0.05)
        if values:
            yield time.time_ns(), values, append_ms
    report.update(rep or load_report(producer) or {})


def tail_episodes(event_ns: np.ndarray, e2e_ns: np.ndarray, hops: dict[str, np.ndarray],
                  q: float = 99.0, gap_s: float = 0.2) -> list[dict[str, Any]]:
    """The records over the ``q``-th percentile of ``e2e_ns`` grouped into episodes by event time
    (a new episode after ``gap_s`` without such a record), each with the hop that held it.

    Args:
        event_ns: int64 (n,) event times (wall clock at produce), ns, any order.
        e2e_ns: int64 (n,) end-to-end latencies, ns; hops: name -> int64 (n,) part of it, ns.
    Returns one dict per episode, in time order: ``start_s`` (event time from the first record, s),
    ``length_s``, ``records`` (over the percentile), ``max_e2e_ms``, ``max_ms`` (hop -> its largest
    value among those records) and ``hop`` (the hop with the largest of them)."""
    if event_ns.size == 0:
        return []
    order = np.argsort(event_ns, kind="stable")
    t = (event_ns[order] - event_ns[order[0]]) / 1e9
    e = e2e_ns[order] / 1e6
    over = np.flatnonzero(e > np.percentile(e, q))
    out: list[dict[str, Any]] = []
    if over.size == 0:  # all at or under the percentile (e.g. every latency equal)
        return out
    by_time = {h: a[order] for h, a in hops.items()}
    for ep in np.split(over, np.flatnonzero(np.diff(t[over]) > gap_s) + 1):
        peaks = {h: float(a[ep].max() / 1e6) for h, a in by_time.items()}
        out.append({"start_s": float(t[ep[0]]), "length_s": float(t[ep[-1]] - t[ep[0]]), "records": int(ep.size),
                    "max_e2e_ms": float(e[ep].max()), "max_ms": peaks, "hop": max(peaks, key=lambda h: peaks[h])})
    return out


def run_latency(s: Any, tag: str, guarantee: str, rate: float, args: Any, *, workers: int = 1,
                tree: Path | None = None, label: str = "new", seconds: float | None = None) -> dict[str, Any]:
    """One latency run (see the module docstring)."""


    seconds = float(seconds or args.latency_s)
    parts = args.partitions if workers > 1 else args.lat_partitions  # scale-out: a partition per worker at least
    short = f"{'eos' if guarantee == 'exactly_once' else 'alo'}{int(rate)}w{workers}{label}{C.new_tag()[:4]}"
    topic, out = f"bench.fe.lat.in.{short}.{tag}", f"bench.fe.lat.out.{short}.{tag}"
    TopicAdmin(s.kafka).create([
        TopicSpec(topic, "symbol", TICK, partitions=parts, dlq=False),
        TopicSpec(topic + ".dlq", "symbol", None, partitions=1, dlq=False),
        TopicSpec(out, "symbol", FV, partitions=parts, dlq=False,
                  extra={"message.timestamp.type": "LogAppendTime"})])
    group = f"bench-fe-lat-{short}-{tag}"
    root = tree or C.ROOT
    script = root / "bench" / "features_e2e.py"
    ports = [free_port() for _ in range(workers)]
    procs = []
    for w in range(workers):
        cfg = {"topic": topic, "out": out, "group": group, "guarantee": guarantee, "batch": args.lat_batch,
               "linger_ms": args.lat_linger_ms, "backend": args.backend, "symbols": args.symbols,
               "worker_id": f"lat{w}", "metrics_port": ports[w], "batching": args.lat_batching,
               "commit_interval_ms": args.commit_interval_ms, "catch_up_ms": args.lat_catch_up_ms,
               "record_io": args.record_io, "output_linger_ms": args.output_linger_ms, "cpus": args.worker_cpus,
               **fetch_settings(vars(args))}
        procs.append(subprocess.Popen([sys.executable, str(script), "--_role", "worker", "--_cfg", json.dumps(cfg)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(root)))
    cons = MeasuringConsumer(s, f"bench-fe-latc-{short}-{tag}", out, parts)
    fvdec = FeatureVectorDecoder(())  # ts_event and ts_ingest only
    fvdec.decode([])  # compiled (or loaded from numba's cache) before the clock starts
    producer = None
    stages: list[dict[str, tuple[np.ndarray, float]]] = []
    costs: list[dict[str, float]] = []
    try:
        t0 = time.monotonic()
        while not group_stable(s, group, workers):
            if time.monotonic() - t0 > 240:
                raise RuntimeError(f"group {group} did not settle with {workers} member(s)")
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited: {p.stderr.read()[-1500:] if p.stderr else ''}")
            time.sleep(0.5)
        warm_up(s, topic, cons, 2000, args.symbols, 180, "feature vectors")
        C.freeze_heap()
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        producer, load_start = start_load(topic, rate, seconds, args.symbols, args.ramp_s, args.feed_producer)
        window = CpuWindow({"worker": [p.pid for p in procs], "broker": [broker_pid(s)], "feed": [producer.pid],
                            "reader": [os.getpid()]})
        pout: dict[str, Any] = {}
        e2e, to_worker, in_worker, to_cons, event = (np.empty(int(rate * seconds) + 10_000, np.int64) for _ in range(5))
        k = 0
        t_first = t_last = None
        # the tally as it grows: late binding wanted
        for now, values, append_ms in arrivals(cons, producer, lambda: k, 60 + 3 * (seconds + args.ramp_s), pout):  # noqa: B023
            fb = fvdec.decode(values)  # one numba pass per fetch, not Python per record
            app_ns = np.asarray(append_ms, np.int64)[fb.index] * 1_000_000
            ts, ingest = fb.columns["ts"], fb.columns["ts_ingest"]
            live = np.flatnonzero(ts >= load_start)[: e2e.size - k]
            ts, ingest, app_ns = ts[live], ingest[live], app_ns[live]
            j = k + ts.size
            e2e[k:j], to_worker[k:j], in_worker[k:j], to_cons[k:j] = now - ts, ingest - ts, app_ns - ingest, now - app_ns
            event[k:j] = ts
            k = j
            window.sample()
            if live.size:  # the output rate counts from the first measured vector
                t_last = time.perf_counter()
                if t_first is None:
                    t_first = t_last
        cpu = sum(cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True))
        cpu_cores = window.stop()
        if tree is None:
            for port in ports:
                try:
                    st, cost = scrape_worker(port)
                    stages.append(st)
                    costs.append(cost)
                except OSError as exc:
                    print(f"  (metrics of a worker not scraped: {exc})")
    finally:
        cons.close()
        if producer is not None and producer.poll() is None:
            producer.kill()
        outs = []
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                o, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                o, _ = p.communicate()
            outs.append((o.strip().splitlines() or ["{}"])[-1])
    hops = dict(zip(HOPS, (to_worker[:k], in_worker[:k], to_cons[:k]), strict=True))
    if getattr(args, "dump_records", None) is not None:  # every measured vector, for a look at the tail
        args.dump_records.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.dump_records / f"latency-{short}.npz", event_ns=event[:k], e2e_ns=e2e[:k],
                            to_worker=hops["to_worker"], in_worker=hops["in_worker"], to_consumer=hops["to_consumer"])
    ms = {name: np.sort(a.astype(np.float64) / 1e6) for name, a in {"e2e": e2e[:k], **hops}.items()}
    res: dict[str, Any] = {"label": label, "tree": str(tree) if tree else None, "guarantee": guarantee, "rate": rate,
                           "workers": workers, "offered": pout.get("counted"), "received": k, "seconds": seconds,
                           "ramp_s": args.ramp_s,
                           # wall clock (UTC) of the measured window's start: to line the run's
                           # tail_episodes (start_s) up with the broker's logs (.stack/kafka/gc.log)
                           "window_start": str(np.datetime64(int(load_start) // 10**6, "ms")) + "Z",
                           "offered_rate": pout.get("offered_rate"),
                           "out_rate": k / (t_last - t_first) if t_first and t_last and t_last > t_first else None,
                           **quantiles(ms["e2e"]),
                           "parts": {name: quantiles(a) for name, a in ms.items() if name != "e2e"},
                           "tail_episodes": tail_episodes(event[:k], e2e[:k], hops),
                           "worker_summaries": outs, "loadavg_1min": C.machine()["loadavg_1min"],
                           # the worker processes' CPU from the load's start to the last output received, per
                           # 1,000 offered ticks (ramp included): what a tick costs the worker, steadier than
                           # latency on a shared machine
                           "worker_cpu_ms_per_1k": 1e6 * cpu / (rate * (seconds + args.ramp_s)),
                           # the machine's cores by role over the same window (CpuWindow)
                           "cpu_cores": cpu_cores}
    done = [json.loads(o) for o in outs if o.startswith("{")]
    if done and all("commits" in x for x in done):
        # at-least-once loop commits that waited for the previous one's acknowledgements, of all commits
        res["commit_waits"] = sum(x.get("commit_waits", 0) for x in done)
        res["commits"] = sum(x["commits"] for x in done)
    if costs and sum(c["batches"] for c in costs):
        # the workers' thread time per batch (decode+process+produce; warm-up included): wall, and the
        # CPU of it; the difference is waiting for a core, on this machine the price of sharing 2 cores
        nb = sum(c["batches"] for c in costs)
        res["batch_wall_us"] = 1e6 * sum(c["wall_s"] for c in costs) / nb
        res["batch_cpu_us"] = 1e6 * sum(c["cpu_s"] for c in costs) / nb
        summaries = [json.loads(o) for o in outs if o.startswith("{")]
        if summaries and sum(x.get("batches", 0) for x in summaries):
            res["records_per_batch"] = sum(x.get("records_in", 0) for x in summaries) / sum(x["batches"] for x in summaries)
    if stages:
        tab = stage_table(stages)
        res["stages"] = tab
        res["stage_mean_sum_ms"] = sum(v["mean_ms"] for v in tab.values())
        if res["mean_ms"] is not None:
            res["after_visible_mean_ms"] = res["mean_ms"] - res["stage_mean_sum_ms"]
    return res


def warm_broker(s: Any, tag: str, guarantees: list[str], args: Any, notes: list[str]) -> list[dict[str, Any]]:
    """Untimed latency runs before the first measured one: per guarantee, ``args.lat_warm_up_s`` s of
    load at ``args.rate`` through our worker. A freshly started broker compiles (JIT) the code of a
    live feed's small produce and fetch requests during its first latency runs, which a throughput
    phase (large batches) does not warm: its C2 compiler thread took 3.8 and 3.1 s of CPU in the
    first two 50k-ticks/s runs after a start, 0.3-0.7 s from the fourth on, and the runs' p99 went
    177 -> 73 -> 38 -> 19 -> 16.5 ms (bench/HISTORY.md, 2026-12-06 07:13). Returns each run's
    quantiles (JSON ``lat_warm_up_runs``); a failed warm-up is a note, not an error."""
    out: list[dict[str, Any]] = []
    if args.lat_warm_up_s <= 0:
        return out
    for gu in guarantees:
        try:
            r = run_latency(s, tag, gu, args.rate, args, label="warm", seconds=args.lat_warm_up_s)
        except Exception as exc:  # noqa: BLE001 - report and go on
            notes.append(f"broker warm-up {gu} failed: {type(exc).__name__}: {str(exc)[:1500]}")
            print(f"  {notes[-1]}")
            continue
        out.append({k: r.get(k) for k in ("guarantee", "rate", "seconds", "window_start", "p50_ms", "p99_ms", "max_ms")})
        print(f"  broker warm-up (not counted) {gu} @ {args.rate:,.0f}/s for {args.lat_warm_up_s:g} s: "
              f"p50 {C.fmt(r['p50_ms'])} ms, p99 {C.fmt(r['p99_ms'])} ms")
    return out


def print_breakdown(r: dict[str, Any]) -> None:
    """The stage table of one run (worker histograms) and the consumer-side split."""
    parts = r.get("parts", {})
    print(f"    consumer side: to worker p50 {C.fmt(parts.get('to_worker', {}).get('p50_ms'))} / p99 "
          f"{C.fmt(parts.get('to_worker', {}).get('p99_ms'))} ms; in worker -> broker p50 "
          f"{C.fmt(parts.get('in_worker', {}).get('p50_ms'))} / p99 {C.fmt(parts.get('in_worker', {}).get('p99_ms'))} ms; "
          f"broker -> consumer p50 {C.fmt(parts.get('to_consumer', {}).get('p50_ms'))} / p99 "
          f"{C.fmt(parts.get('to_consumer', {}).get('p99_ms'))} ms (append times: 1 ms resolution)")
    if r.get("cpu_cores"):
        print(f"    {cpu_line(r['cpu_cores'])}")
    eps = r.get("tail_episodes") or []
    if eps:
        print(f"    over p99: {len(eps)} episode(s) by event time, each with the hop that held it: " + "; ".join(
            f"+{e['start_s']:.2f} s ({e['length_s'] * 1e3:.0f} ms, {e['records']} rec) {e['hop']} {e['max_ms'][e['hop']]:.0f} ms"
            for e in eps[:6]) + (" ..." if len(eps) > 6 else ""))
    st = r.get("stages")
    if not st:
        return
    rows = [(name, v["p50_ms"], v["p99_ms"], v["mean_ms"], v["count"]) for name, v in st.items()]
    rows.append(("(visible -> consumer, mean residual)", None, None, r.get("after_visible_mean_ms"), None))
    C.print_table(["stage (worker histograms)", "p50 ms", "p99 ms", "mean ms", "records"], rows)


def run_throughput(s: Any, tag: str, args: Any, workers: int, n: int) -> dict[str, Any]:
    """Scale-out throughput: ``workers`` workers (one group, exactly-once, adaptive batching) settle,
    then ``n`` ticks are produced in one transaction (invisible to the read_committed workers until it
    commits); throughput = ``n`` / (the measuring consumer's receive of the last output - the feed's
    commit), None if not all ``n`` outputs arrived. Producer, workers, broker and consumer
    share the machine's cores (on 2 cores the curve shows CPU contention, not the runtime's limit)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from mystocks_gpu.infra.kafka_clients import make_consumer

    short = f"tp{workers}{C.new_tag()[:4]}"
    topic, out = f"bench.fe.tp.in.{short}.{tag}", f"bench.fe.tp.out.{short}.{tag}"
    TopicAdmin(s.kafka).create([
        TopicSpec(topic, "symbol", TICK, partitions=args.partitions, dlq=False),
        TopicSpec(topic + ".dlq", "symbol", None, partitions=1, dlq=False),
        TopicSpec(out, "symbol", FV, partitions=args.partitions, dlq=False)])
    group = f"bench-fe-tp-{short}-{tag}"
    procs = []
    for w in range(workers):
        cfg = {"topic": topic, "out": out, "group": group, "guarantee": "exactly_once", "batch": args.batch,
               "linger_ms": 20.0, "backend": args.backend, "symbols": args.symbols, "worker_id": f"tp{w}",
               "metrics_port": 0, "batching": "adaptive", "commit_interval_ms": 100.0, "record_io": args.record_io}
        procs.append(subprocess.Popen([sys.executable, str(C.ROOT / "bench" / "features_e2e.py"), "--_role", "worker",
                                       "--_cfg", json.dumps(cfg)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(C.ROOT)))
    cons = make_consumer(s.kafka, f"bench-fe-tpc-{short}-{tag}", **{"fetch.wait.max.ms": 5})
    cons.assign([TopicPartition(out, p, OFFSET_BEGINNING) for p in range(args.partitions)])
    try:
        t0 = time.monotonic()
        while not group_stable(s, group, workers):
            if time.monotonic() - t0 > 240 or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"group {group} did not settle with {workers} member(s)")
            time.sleep(0.5)
        cols, names = C.synthetic(n, args.symbols, seed=5)
        # the whole input in one transaction: the settled workers see it all at once when it commits, so
        # neither this process's feed rate nor the commit bursts of the outputs shape the measured rate
        produce_s = C.produce_ticks(s, topic, cols, names, transactional_id=f"bench-feed-{short}-{tag}")
        t_open = time.perf_counter()
        got, t_last = 0, None
        deadline = time.monotonic() + 120 + n / 2000
        while got < n and time.monotonic() < deadline:
            first = cons.poll(0.1)
            if first is None:
                continue
            got += 1 + len(cons.consume(10_000, timeout=0))
            t_last = time.perf_counter()
    finally:
        cons.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    tps = got / (t_last - t_open) if t_last is not None and got == n else None
    return {"workers": workers, "n": n, "received": got, "tps": tps, "produce_s": produce_s,
            "loadavg_1min": C.machine()["loadavg_1min"]}
