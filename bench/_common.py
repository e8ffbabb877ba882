"""Shared helpers of the streaming benchmarks (``bench/runtime.py``, ``bench/features_e2e.py``).

Everything here talks to the local stack (``mystocks-gpu stack up``): unique topic / group names
per run (a random tag in every name, so :func:`cleanup` deletes exactly what a run created),
synthetic tick input, a :class:`TimedWorker` that measures records/s from the first consumed
record to the final commit, fastavro serdes for the peer libraries (Quix Streams, faust) and table
printing. Not a public API.
"""

from __future__ import annotations

import gc
import io
import json
import os
import platform
import re
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import KafkaException  # noqa: E402

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names  # noqa: E402
from mystocks_gpu.infra.config import Settings, load_settings  # noqa: E402
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer, produce_all  # noqa: E402
from mystocks_gpu.schemas.batch_codec import BatchEncoder  # noqa: E402
from mystocks_gpu.schemas.codec import PREFIX_LEN, frame  # noqa: E402
from mystocks_gpu.schemas.schema_store import default_store  # noqa: E402
from mystocks_gpu.schemas.symbols import SymbolTable  # noqa: E402
from mystocks_gpu.streams.columnar_io import ColumnChunk  # noqa: E402
from mystocks_gpu.streams.processor import Processor  # noqa: E402
from mystocks_gpu.streams.stream_worker import RunSummary, StreamWorker  # noqa: E402
from mystocks_gpu.topics import TopicSpec  # noqa: E402
from mystocks_gpu.topics.admin import TopicAdmin  # noqa: E402


# ---- run context -----------------------------------------------------------------------------
def new_tag() -> str:
    """A short random tag put in every topic / group name of one run."""
    return uuid.uuid4().hex[:10]


def settings() -> Settings:
    """The effective settings (``mystocks.toml`` / ``MYSTOCKS_*`` environment, else defaults)."""
    return load_settings()


def freeze_heap() -> None:
    """Collect once and move every surviving object out of the cyclic collector's view
    (``gc.freeze``), as ``StreamWorker.run`` does for our worker: later full collections scan only
    what the caller allocates afterwards. Called by every process of a latency measurement (the
    measuring consumer, the load producer, the transactional relay) before its timed loop: on the
    bench process's heap (pandas, Quix Streams, faust imported) a full collection took 50-110 ms and
    ran every 1-2 s of the measured window, and a pause of the measuring consumer counts as latency
    of the pipeline it measures."""
    gc.collect()
    gc.freeze()


def machine() -> dict[str, Any]:
    """Machine facts for the JSON (cores, 1-minute load average)."""
    return {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def broker_partitions(s: Settings) -> int:
    """Partitions the broker holds, every topic's (internal ones included): leftovers of earlier runs
    and tests cost the broker at high rates (bench/HISTORY.md, 2026-12-06), so runs report it."""
    return sum(TopicAdmin(s.kafka).existing().values())


def create_topics(s: Settings, specs: Sequence[tuple[str, str | None, int]]) -> None:
    """Create ``(name, schema full name or None, partitions)`` topics."""
    TopicAdmin(s.kafka).create([TopicSpec(n, "symbol", sch, partitions=p, dlq=False) for n, sch, p in specs])


def cleanup(s: Settings, tag: str) -> list[str]:
    """Delete every topic and consumer group whose name contains ``tag`` (ours, Quix's and faust's
    internal topics included); returns the deleted topic names."""
    admin = TopicAdmin(s.kafka)
    names = sorted(n for n in admin.existing() if tag in n)
    try:
        admin.delete(names)
    except KafkaException as exc:
        print(f"  (cleanup: {exc})")
    try:
        groups = [g.group_id for g in admin.admin.list_consumer_groups(request_timeout=10).result(timeout=15).valid
                  if tag in g.group_id]
        if groups:
            for fut in admin.admin.delete_consumer_groups(groups, request_timeout=15).values():
                try:
                    fut.result(timeout=20)
                except KafkaException:
                    pass
    except Exception as exc:  # noqa: BLE001 - best effort: a left-over empty group is harmless
        print(f"  (cleanup groups: {type(exc).__name__}: {exc})")
    return names


def synthetic(n: int, symbols: int, seed: int = 7) -> tuple[dict[str, np.ndarray], list[str]]:
    """``n`` synthetic ticks over ``symbols`` symbols (columns) and the symbol names."""
    market = SyntheticMarket(n_symbols=symbols, seed=seed)
    return generate(market, n), symbol_names(symbols, seed)


def produce_ticks(s: Settings, topic: str, cols: dict[str, np.ndarray], names: list[str],
                  transactional_id: str | None = None) -> float:
    """Produce tick columns keyed by symbol (timestamps = event time); returns seconds taken.

    ``transactional_id``: all ticks in one transaction, so read_committed consumers see none of them
    until it commits and then all at once (a throughput run that does not time the feed)."""
    t0 = time.perf_counter()
    values = BatchEncoder("mystocks.md.Tick").encode(cols, names)
    keys = [names[i].encode() for i in cols["sym"].tolist()]
    ts = (cols["ts"] // 1_000_000).tolist()
    if transactional_id is None:
        producer = make_producer(s.kafka)
    else:
        producer = make_producer(s.kafka, **{"transactional.id": transactional_id, "transaction.timeout.ms": 300_000})
        producer.init_transactions(30)
        producer.begin_transaction()
    n = produce_all(producer, topic, zip(keys, values, ts, strict=True))
    if n != len(values):
        raise SystemExit(f"produced {n} of {len(values)} ticks")
    if transactional_id is not None:
        producer.commit_transaction(60)
    return time.perf_counter() - t0


def warm_processor(processor: Processor[Any], cols: dict[str, np.ndarray], names: list[str], n: int = 2000) -> None:
    """Decode + process a throwaway batch so numba compilation / cache loading is not timed.

    Pass a throwaway processor instance: a processor caches key bytes per symbol code and
    assumes one :class:`SymbolTable` for its lifetime (the worker's)."""
    part = {k: v[:n] for k, v in cols.items()}
    values: list[bytes | None] = [*BatchEncoder("mystocks.md.Tick").encode(part, names)]
    symbols = SymbolTable()
    d = processor.decode(values, np.arange(len(values), dtype=np.int64), symbols, 0, time.time_ns())
    out, state = processor.process(d.columns, processor.initial_state())
    try:
        processor.changelog_entries(state, np.unique(d.columns.columns["sym"]), symbols)
    except TypeError:  # older signature (state, batch)
        processor.changelog_entries(state, d.columns)  # type: ignore[call-arg, arg-type]


def count_topic(s: Settings, topic: str, idle_s: float = 3.0, last_per_key: bool = False,
                max_wait_s: float = 120.0) -> tuple[int, dict[bytes, bytes]]:
    """Committed records of ``topic`` (read_committed, from the beginning) and, with
    ``last_per_key``, the last value per key."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    c = make_consumer(s.kafka, f"bench-count-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        n, last, eof = 0, {}, set()
        t_last = t0 = time.monotonic()
        while time.monotonic() - t_last < idle_s and time.monotonic() - t0 < max_wait_s:
            msgs = c.consume(10_000, timeout=0.5)
            for m in msgs:
                err = m.error()
                if err is not None:
                    eof.add(m.partition())
                    continue
                n += 1
                if last_per_key:
                    last[m.key()] = m.value()
            if any(m.error() is None for m in msgs):
                t_last = time.monotonic()
                eof.clear()
            elif len(eof) >= len(parts):
                break
        return n, last
    finally:
        c.close()


# ---- our worker, timed -------------------------------------------------------------------------
class TimedWorker(StreamWorker):
    """A :class:`StreamWorker` that records when the first record arrived and when the final
    commit returned (``t_first``, ``t_end``, perf_counter seconds); nothing else changes."""

    t_first: float | None = None
    t_end: float | None = None
    #: a ``cProfile.Profile`` to enable from the first record to the final commit (setup excluded)
    profiler: Any = None

    def _filter_errors(self, msgs: list[Any] | ColumnChunk) -> list[Any] | ColumnChunk:
        out = super()._filter_errors(msgs)
        if out and self.t_first is None:
            self.t_first = time.perf_counter()
            if self.profiler is not None:
                self.profiler.enable()
        return out

    def _close(self) -> None:
        self.t_end = time.perf_counter()  # run() calls _close right after its final commit
        if self.profiler is not None and self.t_first is not None:
            self.profiler.disable()
        super()._close()

    @property
    def busy_s(self) -> float:
        """Seconds from the first consumed record to the final commit."""
        if self.t_first is None or self.t_end is None:
            return float("nan")
        return self.t_end - self.t_first


#: a worker's batch cost: (key, Prometheus sample) - batches, their wall seconds and their thread's
#: CPU seconds in decode+process+produce (``bench/batch_overhead.py --worker``, the latency runs)
BATCH_COST = (("batches", "mystocks_stream_batch_seconds_count"), ("wall_s", "mystocks_stream_batch_seconds_sum"),
              ("cpu_s", "mystocks_stream_batch_cpu_seconds_total"))


def metric(worker: StreamWorker, name: str) -> float:
    """A sample of the worker's Prometheus registry (e.g. ``mystocks_stream_batch_seconds_sum``)."""
    v = worker.metrics.registry.get_sample_value(name, {"processor": worker.processor.name})
    return float(v or 0.0)


def summary_dict(s: RunSummary) -> dict[str, Any]:
    return {"records_in": s.records_in, "records_out": s.records_out, "dlq": s.dlq, "batches": s.batches,
            "aborts": s.aborts, "commits": s.commits, "commit_waits": s.commit_waits}


# ---- fastavro serdes (the peers' decode / encode) ----------------------------------------------
def avro_reader(schema: str) -> Any:
    """``decode(bytes) -> dict``: skip the 5-byte Confluent prefix, fastavro the body."""
    import fastavro

    parsed = default_store().by_name(schema).parsed
    reader = fastavro.schemaless_reader
    BytesIO = io.BytesIO

    def decode(value: bytes) -> dict[str, Any]:
        return cast(dict[str, Any], reader(BytesIO(value[PREFIX_LEN:]), parsed, None))

    return decode


def avro_writer(schema: str) -> Any:
    """``encode(dict) -> bytes``: Confluent prefix + fastavro body (what our encoder writes)."""
    import fastavro

    info = default_store().by_name(schema)
    parsed, prefix = info.parsed, frame(info.id, b"")
    writer = fastavro.schemaless_writer
    BytesIO = io.BytesIO

    def encode(record: dict[str, Any]) -> bytes:
        bio = BytesIO()
        bio.write(prefix)
        writer(bio, parsed, record)
        return bio.getvalue()

    return encode


def quix_serdes(in_schema: str, out_schema: str) -> tuple[Any, Any]:
    """A Quix Streams value deserializer (Confluent-framed Avro -> dict, via fastavro) and a value
    serializer (dict -> Confluent-framed Avro) for the given schemas."""
    from quixstreams.models.serializers import Deserializer, Serializer

    dec, enc = avro_reader(in_schema), avro_writer(out_schema)

    class AvroIn(Deserializer):  # type: ignore[misc]
        t_first: float | None = None

        def __call__(self, value: bytes, ctx: Any) -> Any:
            if AvroIn.t_first is None:
                AvroIn.t_first = time.perf_counter()
            return dec(value)

    class AvroOut(Serializer):  # type: ignore[misc]
        def __call__(self, value: Any, ctx: Any) -> bytes:
            return enc(value)  # type: ignore[no-any-return]

    return AvroIn(), AvroOut()


def time_quix_commit(app: Any) -> dict[str, float]:
    """Record when Quix's final forced checkpoint commit returns (``out['t_end']``)."""
    pc = app._processing_context
    orig = pc.commit_checkpoint
    out: dict[str, float] = {}

    def wrapped(force: bool = False, revoking: bool = False) -> None:
        orig(force=force, revoking=revoking)
        if force:
            out.setdefault("t_end", time.perf_counter())

    pc.commit_checkpoint = wrapped
    return out


# ---- Kafka's consumer perf test ----------------------------------------------------------------
def consumer_perf(s: Settings, topic: str, n: int, group: str) -> dict[str, Any]:
    """Run ``org.apache.kafka.tools.ConsumerPerformance`` on ``topic`` for ``n`` messages; returns
    its CSV fields (``nMsg.sec`` includes the group join, ``fetch.nMsg.sec`` excludes it)."""
    from mystocks_gpu.infra.stack import LocalStack

    t0 = time.perf_counter()
    cp = LocalStack(s.stack).kafka_tool(
        "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", s.kafka.bootstrap_servers,
        "--topic", topic, "--messages", str(n), "--group", group, "--timeout", "30000", timeout=300)
    wall = time.perf_counter() - t0
    keys = ["start.time", "end.time", "data.consumed.in.MB", "MB.sec", "data.consumed.in.nMsg", "nMsg.sec",
            "rebalance.time.ms", "fetch.time.ms", "fetch.MB.sec", "fetch.nMsg.sec"]
    # the result row; the tool's INFO log lines share stdout with it
    data = [ln for ln in cp.stdout.splitlines()
            if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d+, ", ln) and ln.count(",") == len(keys) - 1]
    if cp.returncode != 0 or not data:
        raise RuntimeError(f"ConsumerPerformance failed (rc {cp.returncode}): {cp.stdout[-800:]} {cp.stderr[-800:]}")
    row: dict[str, Any] = dict(zip(keys, (v.strip() for v in data[-1].split(",")), strict=True))
    row["wall_s_incl_jvm_start"] = wall
    return row


# ---- output --------------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for r in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    def clean(o: Any) -> Any:
        if isinstance(o, float) and o != o:
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2, default=str) + "\n")
    print(f"wrote {path}")


def ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b or a != a or b != b:
        return None
    return a / b


def median_run(runs: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """The run whose ``field`` is the median of ``runs`` (the lower one of an even count; None sorts
    as 0): the headline of repeated runs, itself a real run rather than an average."""
    return sorted(runs, key=lambda r: r[field] or 0.0)[(len(runs) - 1) // 2]
