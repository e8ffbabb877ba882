"""``mystocks-gpu produce | load | consume``: market data into and out of topics."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def _progress(total: int | None, desc: str, unit: str = "rec") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not sys.stderr.isatty(),
                file=sys.stderr, mininterval=0.5)


def cmd_produce(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.data.live_feed import LIVE_CHUNK
    from mystocks_gpu.data.synthetic_ticks import GEN_CHUNK, SyntheticMarket, chunks, symbol_names
    from mystocks_gpu.infra.kafka_clients import ensure_broker, make_producer, produce_chunks
    from mystocks_gpu.schemas import AvroCodec, schema_store
    from mystocks_gpu.topics import get

    if not args.synthetic:
        raise ConfigError("only --synthetic generation is built in; load files with `mystocks-gpu load FILE --topic T`")
    spec = get(args.topic)
    if spec.schema != "mystocks.md.Tick":
        raise ConfigError(f"produce ticks writes mystocks.md.Tick; topic {spec.name} carries {spec.schema}")
    if args.count < 0 or args.symbols < 1:
        raise ConfigError("--count must be >= 1 (or 0: no end) and --symbols >= 1")
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise ConfigError(f"--rate must be a number > 0 (ticks/s), got {args.rate:g}")
    if args.count == 0 and args.rate is None:
        raise ConfigError("--count 0 (no end, until Ctrl-C) needs --rate: an endless feed is paced (e.g. --rate 10000)")
    if args.live and args.rate is None:
        raise ConfigError("--live needs --rate: a live feed is paced to the wall clock (e.g. --rate 10000)")
    if args.live and args.start is not None:
        raise ConfigError("--live stamps each tick with the wall clock when it is sent; --start does not apply")
    ensure_broker(s.kafka)
    market = SyntheticMarket(n_symbols=args.symbols, seed=args.seed,
                             **({"start_ns": time.time_ns()} if args.start == "now" else {}))
    names = symbol_names(args.symbols, args.seed)
    count = args.count or None
    codec = AvroCodec(schema_store(s))
    t0 = time.monotonic()
    with _until_signal() as stopped, _progress(count, f"produce {spec.name}") as bar:
        if args.live:
            n = _live_feed(s, spec.name, chunks(market, count, LIVE_CHUNK), names, codec, args.rate, stopped, bar.update)
        else:  # paced in chunks of ~5 ms of records when a rate is set
            step = 200_000 if args.rate is None else max(1, min(200_000, int(args.rate / 200)))
            n = produce_chunks(make_producer(s.kafka), spec.name,
                               _encode_ticks(chunks(market, count, GEN_CHUNK), names, codec, step), bar.update,
                               rate=args.rate, stopped=stopped)
    dt = time.monotonic() - t0
    print(f"produced {n} {'live ' if args.live else ''}ticks for {args.symbols} symbols to {spec.name} in {dt:.1f} s "
          f"({n / max(dt, 1e-9):,.0f}/s), seed={args.seed}" + ("; stopped by a signal" if stopped() else ""))
    return 0


def _live_feed(s: Settings, topic: str, tape: Iterable[dict[str, Any]], names: list[str], codec: Any, rate: float,
               stopped: Callable[[], bool], progress: Callable[[int], Any]) -> int:
    """``produce --live``: the tape paced to ``rate`` (``live_feed.paced_feed``: each due chunk stamped
    with one wall time) through the live producer, every record's delivery counted; returns the
    delivered count (``DeliveryFailed`` if any was not). Stops at ``stopped()`` or the first failed
    delivery."""
    from mystocks_gpu.data.live_feed import LIVE_PRODUCER, paced_feed
    from mystocks_gpu.infra.kafka_clients import DeliveryTracker, produce_records
    from mystocks_gpu.schemas.batch_codec import BatchEncoder
    from mystocks_gpu.streams.broker_watch import watched_producer

    # watched: a feed outliving a broker freeze keeps a broker to send to (librdkafka#5301)
    producer = watched_producer(s.kafka, "live producer", **LIVE_PRODUCER)
    tracker = DeliveryTracker()

    def sent(k: int, _stamp_ns: int) -> None:
        progress(k)
        producer.poll(0)  # delivery reports

    paced_feed(tape, names, BatchEncoder("mystocks.md.Tick", codec.store), rate,
               lambda values, keys, ts_ms: produce_records(producer, topic, values, keys, ts_ms, tracker),
               stopped=lambda: stopped() or bool(tracker.errors), on_chunk=sent)
    return tracker.settle(producer)


@contextlib.contextmanager
def _until_signal() -> Iterator[Callable[[], bool]]:
    """The first SIGINT (Ctrl-C) or SIGTERM sets a flag instead of interrupting: the caller stops
    taking items, flushes what it sent and reports. A second one interrupts as usual (the handlers
    before are back from the first on), e.g. a flush waiting for a broker that is gone. Yields
    ``stopped() -> bool``; the handlers are put back at the end in any case."""
    hit: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    before: dict[int, Any] = {}

    def first(signum: int, _frame: Any) -> None:
        hit.append(signum)
        for sig, handler in before.items():
            signal.signal(sig, handler)

    before.update({sig: signal.signal(sig, first) for sig in sigs})
    try:
        yield lambda: bool(hit)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _encode_ticks(tape: Iterable[dict[str, Any]], names: list[str], codec: Any, step: int = 200_000
                  ) -> Iterator[tuple[list[bytes], list[bytes], list[int]]]:
    """(keys, values, timestamps_ms) of ``tape`` (column chunks) in chunks of at most ``step`` ticks,
    encoded by the vectorised encoder with ``codec``'s schema ids (200,000 ticks an encoder call)."""
    from mystocks_gpu.schemas.batch_codec import BatchEncoder

    keys = [n.encode() for n in names]
    enc = BatchEncoder("mystocks.md.Tick", codec.store)
    for cols in tape:
        for lo in range(0, len(cols["ts"]), 200_000):
            part = {k: v[lo:lo + 200_000] for k, v in cols.items()}
            values = enc.encode(part, names)
            sym, ts = part["sym"].tolist(), (part["ts"] // 1_000_000).tolist()
            for a in range(0, len(values), step):
                yield [keys[c] for c in sym[a:a + step]], values[a:a + step], ts[a:a + step]


def _require_topic(s: Settings, name: str) -> None:
    """Fail at once, saying what to run, when ``name`` does not exist on the broker."""
    from mystocks_gpu.data.history_loader import LoadError
    from mystocks_gpu.infra.kafka_clients import ensure_broker
    from mystocks_gpu.topics.admin import TopicAdmin

    ensure_broker(s.kafka)
    if name not in TopicAdmin(s.kafka).existing():
        raise LoadError(f"topic {name} does not exist on {s.kafka.bootstrap_servers}; create the catalog's topics "
                        "first: mystocks-gpu topics create")


def cmd_load(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.data.history_loader import LoadOptions, prepare_file
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec, schema_store
    from mystocks_gpu.topics import get

    spec = get(args.topic)
    mapping = {}
    for m in args.map or []:
        if "=" not in m:
            raise ConfigError(f"--map expects FIELD=COLUMN, got {m!r}")
        field, col = m.split("=", 1)
        mapping[field.strip()] = col.strip()
    opts = LoadOptions(mapping=mapping, symbol=args.symbol, ts_unit=args.ts_unit, duplicates=args.duplicates)
    prepared = prepare_file(args.file, spec, AvroCodec(schema_store(s)), opts)  # validates every row first
    for note in prepared.notes:
        print(f"note: {note}")
    _require_topic(s, spec.name)
    t0 = time.monotonic()
    with _progress(len(prepared.items), f"load {spec.name}") as bar:
        n = produce_all(make_producer(s.kafka), spec.name, iter(prepared.items), bar.update)
    print(f"loaded {n} records from {args.file} into {spec.name} in {time.monotonic() - t0:.1f} s")
    return 0


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, +-Infinity) replaced by ``None``, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def strict_json(obj: Any) -> str:
    """Strict JSON (RFC 8259) text of ``obj``: non-finite numbers as ``null``, never a bare ``NaN``."""
    return json.dumps(_finite(obj), default=str, allow_nan=False)


def cmd_consume(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.data.topic_reader import read_topic
    from mystocks_gpu.schemas import AvroCodec, schema_store
    from mystocks_gpu.topics import get

    spec = get(args.topic)
    if args.max is not None and args.max < 1:
        raise ConfigError("--max must be >= 1")
    # results and compacted topics hold what a user wants to see (finished results, latest states):
    # read them from the beginning; streams (ticks, bars, features) from the end unless asked
    if args.from_beginning or args.from_end:
        beginning = bool(args.from_beginning)
    else:
        beginning = spec.cleanup == "compact" or spec.name.startswith("results.")
    where = ("from the beginning" if beginning else
             "from the end: only records produced from now on (--from-beginning for the history)")
    print(f"reading {spec.name} {where}; stops after {args.timeout:g} s without a record"
          + (f" or {args.max} record(s)" if args.max else ""), file=sys.stderr)
    if args.latency is not None:
        return _consume_latency(args, s, spec, beginning)
    n = 0
    for rec in read_topic(s.kafka, spec.name, from_beginning=beginning, max_records=args.max,
                          idle_timeout_s=args.timeout, decode=spec.schema is not None,
                          codec=AvroCodec(schema_store(s)) if spec.schema is not None else None):
        n += 1
        if args.json:  # strict JSON (RFC 8259): NaN and +-Infinity (e.g. unfilled feature windows) print as null
            print(strict_json({"partition": rec.partition, "offset": rec.offset, "timestamp_ms": rec.timestamp_ms,
                              "key": rec.key, "value": rec.value, "headers": rec.headers or None,
                              "error": rec.error, **({"raw_len": len(rec.raw or b"")} if rec.value is None else {})}))
        else:
            body = rec.value if rec.value is not None else (rec.error or f"<{len(rec.raw or b'')} raw bytes> {rec.headers}")
            print(f"[{rec.partition}:{rec.offset}] {rec.key}: {body}")
    print(f"{n} record(s) from {spec.name}", file=sys.stderr)
    return 0


def _consume_latency(args: argparse.Namespace, s: Settings, spec: Any, beginning: bool) -> int:
    """``consume TOPIC --latency [EVERY_S]``: per window of EVERY_S seconds and for the whole read,
    the quantiles of receive time - ``ts_event`` (ms) of the records received, and of ``ts_ingest -
    ts_event`` (the hop to the worker) where the records carry it; one line each (a JSON object each
    with ``--json``). Only the leading fields up to those times are decoded from each value."""
    from mystocks_gpu.data.live_feed import LatencyWindow, latency_fields, leading_longs_batch
    from mystocks_gpu.schemas import schema_store

    every = float(args.latency)
    if not (math.isfinite(every) and every > 0):
        raise ConfigError(f"--latency takes a reporting interval in seconds > 0, got {args.latency:g}")
    where = latency_fields(schema_store(s).by_name(spec.schema).raw["fields"]) if spec.schema else None
    if where is None:
        raise ConfigError(f"--latency reads ts_event, a record's second field after a string; the records of "
                          f"{spec.name} ({spec.schema or 'raw bytes'}) do not start that way")
    total, bad, windows = LatencyWindow(time.monotonic()), 0, 0
    window_from, window_s = 0, total.started_s  # the current window: total's records from this index, this time

    def report(w: LatencyWindow, what: str) -> None:
        q = w.summary()
        if args.json:
            print(strict_json({"window": what, "seconds": round(time.monotonic() - w.started_s, 3), **q}), flush=True)
        elif q["count"]:
            print(f"{what:>6}  {q['count']:>9,} records  p50 {q['p50_ms']:9.2f} ms  p99 {q['p99_ms']:9.2f} ms  "
                  f"p99.9 {q['p999_ms']:9.2f} ms  max {q['max_ms']:9.2f} ms"
                  + (f"  | to the worker p50 {q['to_worker_p50_ms']:.2f} ms  p99 {q['to_worker_p99_ms']:.2f} ms"
                     if "to_worker_p50_ms" in q else ""), flush=True)
        else:
            print(f"{what:>6}  no records", flush=True)

    leading_longs_batch([b""], 2)  # the compiled reader loaded (or compiled) before the clock starts
    try:
        for values in _value_chunks(s, spec.name, beginning, args.max, args.timeout):
            now_ns = time.time_ns()  # the chunk's receive time: every record of it had arrived
            head, ok = leading_longs_batch(values, 1 + (where[1] or where[0]))
            if not ok.all():
                bad += int(ok.size - ok.sum())
                head = head[ok]
            if not len(head):
                continue
            if not total.ms:  # the clocks start at the first record, not while waiting for one
                total.started_s = window_s = time.monotonic()
            total.ms.extend(((now_ns - head[:, where[0]]) / 1e6).tolist())
            if where[1] is not None:
                total.ingest_ms.extend(((head[:, where[1]] - head[:, where[0]]) / 1e6).tolist())
            if time.monotonic() - window_s >= every:
                report(total.since(window_from, window_s), "window")
                window_from, window_s, windows = len(total.ms), time.monotonic(), windows + 1
    except KeyboardInterrupt:
        pass
    if len(total.ms) > window_from and windows:  # the last, partial window (the only one: the total says it)
        report(total.since(window_from, window_s), "window")
    report(total, "total")
    print(f"{len(total.ms)} record(s) from {spec.name}: latency = receive wall time - ts_event"
          + (f"; {bad} not readable (skipped)" if bad else ""), file=sys.stderr)
    return 0


def _value_chunks(s: Settings, topic: str, beginning: bool, max_records: int | None,
                  idle_timeout_s: float) -> Iterator[list[bytes | None]]:
    """The raw values of every partition of ``topic`` (read_committed, from the beginning or the
    end), as they arrive, a list per fetch, until ``max_records`` or ``idle_timeout_s`` without a
    record. Through the runtime's columnar C ingest when it is built (no ``Message`` object per
    record: at 50k records/s the reader shares the cores with what it measures), else confluent-kafka."""
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    from mystocks_gpu.infra.kafka_clients import ensure_broker, make_consumer
    from mystocks_gpu.streams.columnar_io import ColumnarIngest, load_extension, take_ready

    ensure_broker(s.kafka)
    consumer = make_consumer(s.kafka, f"mystocks-latency-{uuid.uuid4().hex[:8]}",
                             **{"isolation.level": "read_committed", "fetch.wait.max.ms": 5, "socket.nagle.disable": True})
    ingest = None
    try:
        parts = sorted(consumer.list_topics(topic, timeout=s.kafka.connect_timeout_s).topics[topic].partitions)
        if load_extension()[0] is not None:
            ingest = ColumnarIngest(consumer, topic)
            ingest.attach(parts)  # before librdkafka starts fetching them
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING if beginning else OFFSET_END) for p in parts])
        n, last = 0, time.monotonic()
        while max_records is None or n < max_records:
            want = 10_000 if max_records is None else min(10_000, max_records - n)
            values, _ts = take_ready(consumer, ingest, want, 0.2)
            if not values:
                if time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            n += len(values)
            yield values
    finally:
        if ingest is not None:
            ingest.close()  # before the consumer: see ColumnarIngest
        consumer.close()


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("produce", help="produce synthetic market data",
                        description="Produce a realistic synthetic tape (GBM mids, spreads, Zipf activity).")
    sp.add_argument("what", choices=["ticks"])
    sp.add_argument("--synthetic", action="store_true", help="generate ticks (required)")
    sp.add_argument("--symbols", type=int, default=100, help="number of symbols (default 100)")
    sp.add_argument("--count", type=int, default=100_000,
                    help="number of ticks (default 100000); 0: no end, with --rate, until Ctrl-C or SIGTERM (which "
                         "stop it cleanly: what was sent is flushed and counted). Drawn a chunk at a time, so a feed "
                         "of any length holds one chunk in memory")
    sp.add_argument("--rate", type=float, default=None, help="throttle to about R ticks/s (default: as fast as possible)")
    sp.add_argument("--seed", type=int, default=7, help="RNG seed; same seed -> same ticks (default 7)")
    sp.add_argument("--start", choices=["fixed", "now"], default=None,
                    help="event time starts at a fixed date (deterministic; the default) or now, and advances by "
                         "the generator's own clock")
    sp.add_argument("--live", action="store_true",
                    help="a live feed: needs --rate; each tick's event time (ts_event, and the record's Kafka "
                         "timestamp) is the wall clock when it is sent, so `consume TOPIC --latency` downstream "
                         "reads the latency of everything in between. Producer: not idempotent, one request in "
                         "flight (ordered), 1 ms linger")
    sp.add_argument("--topic", default="md.ticks", help="target topic (default md.ticks)")
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser("load", help="load CSV/Parquet history into a topic",
                        description="Load ticks or OHLCV bars from CSV/Parquet. Every row is validated before anything is sent.")
    sp.add_argument("file")
    sp.add_argument("--topic", required=True, help="catalog topic, e.g. md.ticks or md.bars.1d")
    sp.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="map a schema field to a file column (repeatable)")
    sp.add_argument("--symbol", help="constant symbol for files without a symbol column")
    sp.add_argument("--ts-unit", default="auto", choices=["auto", "s", "ms", "us", "ns", "iso"],
                    help="unit of numeric event times, or iso for date strings (default auto)")
    sp.add_argument("--duplicates", default="reject", choices=["reject", "last"],
                    help="a repeated (symbol, time) row: reject the file naming both lines (default), or keep "
                         "the last row and report how many were dropped. Rows out of time order (newest-first "
                         "files) are always loaded sorted by time, with a note")
    sp.set_defaults(func=cmd_load)

    sp = sub.add_parser("consume", help="decode and print a topic", description="Decode and print records of any catalog topic.")
    sp.add_argument("topic")
    start = sp.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true",
                       help="start at the earliest offset (the default for results.* and compacted topics)")
    start.add_argument("--from-end", action="store_true",
                       help="only records produced from now on (the default for market-data and feature topics)")
    sp.add_argument("--max", type=int, default=None, help="stop after N records")
    sp.add_argument("--json", action="store_true", help="one strict JSON object per line (NaN and Infinity as null)")
    sp.add_argument("--timeout", type=float, default=5.0, help="stop after this many seconds without a record (default 5)")
    sp.add_argument("--latency", type=float, nargs="?", const=5.0, default=None, metavar="EVERY_S",
                    help="print latency instead of records: receive wall time - ts_event of each record, as "
                         "p50/p99/p99.9/max ms every EVERY_S seconds (default 5) and for the whole read (Ctrl-C "
                         "ends it). With `produce ticks --synthetic --live` upstream, on features.ticks: the tick "
                         "-> feature latency; on md.ticks: the feed's own hop")
    sp.set_defaults(func=cmd_consume)
