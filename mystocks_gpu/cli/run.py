"""``mystocks-gpu run PROCESSOR``: a stream worker with graceful shutdown and Prometheus metrics."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import textwrap
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings, with_section
from mystocks_gpu.infra.cpu_affinity import check_cpus, parse_cpu_list
from mystocks_gpu.infra.devices import discover
from mystocks_gpu.infra.gpu_metrics import register_gpu_metrics
from mystocks_gpu.infra.logs import set_process_fields
from mystocks_gpu.streams.runtime_config import (
    ADAPTIVE,
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    LINGER,
    RuntimeConfig,
)
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics
from mystocks_gpu.streams.stream_worker import StreamWorker

#: the defaults of the flags that set a RuntimeConfig field
RT = RuntimeConfig()

#: ``run features`` flags -> ``[features]`` keys (values parsed like MYSTOCKS_FEATURES__* variables)
FEATURE_FLAGS = {"features": "features", "ema_spans": "ema_spans", "window_ticks": "window_ticks",
                 "window_s": "window_s", "bar_intervals_s": "bar_intervals_s",
                 "allowed_lateness_s": "allowed_lateness_s", "max_disorder_s": "max_disorder_s",
                 "idle_close_s": "idle_close_s", "close_on_stop": "close_on_stop"}


def features_settings(args: argparse.Namespace, s: Settings) -> Settings:
    """``s`` with the ``[features]`` keys given on the command line (they win over TOML and env)."""
    given = {key: str(getattr(args, flag)) for flag, key in FEATURE_FLAGS.items() if getattr(args, flag) is not None}
    if given and args.processor != "features":
        raise ConfigError(f"--{next(iter(given)).replace('_', '-')} applies to `run features` only")
    return with_section(s, "features", given) if given else s


def ensure_bar_topics(s: Settings, topics: list[str]) -> None:
    """Create the bar topics of the configured intervals that do not exist yet (md.bars.<label>)."""
    from mystocks_gpu.topics import get
    from mystocks_gpu.topics.admin import TopicAdmin

    admin = TopicAdmin(s.kafka)
    live = admin.existing()
    specs = [get(t) for t in topics if t.startswith("md.bars.") and t not in live]
    if specs:
        admin.create([x for sp in specs for x in (sp, sp.dlq_spec()) if x is not None])


def runtime_config(args: argparse.Namespace, s: Settings, cpus: tuple[int, ...] = ()) -> RuntimeConfig:
    """The worker's :class:`RuntimeConfig` from ``run``'s flags (``cpus``: ``--cpus`` parsed); the
    bar-closing settings come from ``s.features`` for ``run features`` (no effect elsewhere)."""
    features = args.processor == "features"
    return RuntimeConfig(max_records=args.batch_records, max_bytes=args.batch_bytes, linger_ms=args.linger_ms,
                         max_record_bytes=args.max_record_bytes,
                         guarantee=AT_LEAST_ONCE if args.at_least_once else EXACTLY_ONCE,
                         commit_interval_ms=args.commit_interval_ms, group_protocol=args.group_protocol,
                         catch_up_commit_interval_ms=args.catch_up_commit_interval_ms,
                         max_buffered_records=args.max_buffered_records, fault_injection=args.inject_faults or "",
                         transaction_timeout_ms=args.transaction_timeout_ms, batching=args.batching,
                         session_timeout_ms=args.session_timeout_ms,
                         fetch_wait_max_ms=args.fetch_wait_max_ms, fetch_min_bytes=args.fetch_min_bytes,
                         producer_linger_ms=args.producer_linger_ms,
                         produce_block_timeout_s=args.produce_block_timeout_s,
                         commit_timeout_s=args.commit_timeout_s, lag_interval_s=args.lag_interval_s,
                         max_producer_recoveries=args.max_producer_recoveries,
                         max_poll_interval_ms=args.max_poll_interval_ms, restore_attempts=args.restore_attempts,
                         idle_flush_s=s.features.idle_close_s if features else 0.0,
                         flush_on_stop=s.features.close_on_stop if features else False,
                         record_io=args.record_io, cpu_affinity=cpus)


def cmd_run(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.stream_processors import create
    from mystocks_gpu.schemas import schema_store

    s = features_settings(args, s)
    cpus = parse_cpu_list(args.cpus, "--cpus")
    check_cpus(cpus, "--cpus")  # before the processor loads: a bad list fails at once
    extra: dict[str, Any] = {"features": s.features} if args.processor == "features" else {}
    if args.model_load is not None:
        extra["model_load"] = args.model_load
    processor = create(args.processor, output_topic=args.output_topic, backend=s.backend, model=args.model,
                       kafka=s.kafka, store=schema_store(s), config_file=args.processor_config,
                       **extra)
    rt = runtime_config(args, s, cpus)
    if args.processor == "features" and not args.output_topic:
        ensure_bar_topics(s, list(processor.output_topics))
    metrics = RuntimeMetrics(processor.name)
    register_gpu_metrics(metrics.registry, lambda: discover("cpu" if s.backend == "cpu" else "auto"))
    port = args.metrics_port if args.metrics_port is not None else s.metrics.port
    metrics.serve(port, s.metrics.host)
    worker = StreamWorker(processor, s.kafka, rt, group=args.group, worker_id=args.worker_id,
                          input_topic=args.input_topic, metrics=metrics)
    set_process_fields(processor=processor.name, group=worker.group, worker=args.worker_id)

    def _graceful(signum: int, _frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    summary = worker.run(idle_exit_s=args.idle_exit, max_records=args.max_records)
    print(json.dumps({"processor": processor.name, "group": worker.group, "backend": getattr(processor, "backend", "cpu"),
                      **{k: v for k, v in dataclasses.asdict(summary).items() if k != "abort_reasons"},
                      "seconds": round(summary.seconds, 3)}), flush=True)
    return 0


def features_epilog(width: int = 100) -> str:
    """The feature list of ``run features --help``: name, unit, definition, then the rules."""
    from mystocks_gpu.gpu_ops.features_config import FEATURE_RULES, feature_docs

    lines = ["features (run features; default all 23, [features] features = [...] or --features to choose):"]
    for name, unit, text in feature_docs():
        lines += textwrap.wrap(f"{name} [{unit}]: {text}", width, initial_indent="  ", subsequent_indent="      ")
    lines.append("")
    lines += textwrap.wrap(FEATURE_RULES, width)
    lines.append("")
    lines += textwrap.wrap(
        "Settings: [features] in the TOML config, MYSTOCKS_FEATURES__<KEY> variables, or the flags above "
        "(flags win); `mystocks-gpu config show` prints the effective values. Each output record carries "
        "them in the header mystocks.features.config (bars: mystocks.bars.config).", width)
    return "\n".join(lines)


def add_commands(sub: Any) -> None:
    """Register ``run`` on the top-level parser."""
    sp = sub.add_parser("run", help="run a stream processor (exactly-once by default)",
                        description="Run a stream processor: batch consume -> process -> produce. "
                                    "SIGTERM/SIGINT finish the current batch, commit, and exit 0.",
                        epilog=features_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("processor", help="processor name (aggregate, features, signals, risk, execution)")
    sp.add_argument("--model", help="signals: the model to score with (a name on the models topic; its newest "
                                    "version, hot-swapped when a new one is published)")
    sp.add_argument("--model-load", choices=["background", "in-batch"], default=None,
                    help="signals: where a new model version is loaded: background (default: the batches go on "
                         "scoring with the version they have, the new one applies from the first batch after its "
                         "load) or in-batch (the batch that first sees it waits for the load: seconds for a "
                         "family whose library is imported then)")
    sp.add_argument("--processor-config", metavar="FILE", default=None,
                    help="the processor's own settings, TOML or JSON (risk: maths, emit window, price policies, "
                         "sector map, default limits; see the README)")
    sp.add_argument("--group", help="consumer group (default mystocks.PROCESSOR)")
    sp.add_argument("--worker-id", help="stable id of this worker: a restart with the same id fences its predecessor "
                                        "(default HOSTNAME-0)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--eos", action="store_true", default=True, help="exactly-once (default)")
    g.add_argument("--at-least-once", action="store_true", help="at-least-once: lowest latency, duplicates possible after a crash")
    sp.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0 = off)")
    sp.add_argument("--input-topic", help="override the processor's input topic")
    sp.add_argument("--output-topic", help="override the processor's output topic")
    sp.add_argument("--batch-records", type=int, default=RT.max_records, help="max records per micro-batch (default %(default)s)")
    sp.add_argument("--batch-bytes", type=int, default=RT.max_bytes, help="max bytes per micro-batch (default 4 MiB)")
    sp.add_argument("--batching", choices=[ADAPTIVE, LINGER], default=RT.batching,
                    help="adaptive: close a batch as soon as the input is drained (size follows the load; default); "
                         "linger: close it --linger-ms after its first record")
    sp.add_argument("--linger-ms", type=float, default=RT.linger_ms,
                    help="linger batching: close a batch this long after its first record (default %(default)s)")
    sp.add_argument("--max-record-bytes", type=int, default=RT.max_record_bytes,
                    help="a record (key + value) over this many bytes goes to the DLQ before decoding (default 1 MiB)")
    sp.add_argument("--commit-interval-ms", type=float, default=RT.commit_interval_ms,
                    help="commit (end the transaction) every N ms; 0 = after every batch (default %(default)s). Exactly-once "
                         "outputs become visible at the commit; a commit starts early by the mean time of "
                         "recent commits (at most N/4), and sooner when the transaction's oldest record "
                         "would otherwise be visible over N ms after its timestamp (commits stay at least "
                         "N/2 apart), so their latency is about N ms")
    sp.add_argument("--catch-up-commit-interval-ms", type=float, default=RT.catch_up_commit_interval_ms,
                    help="while the worker is behind (its batches close full), commit every N ms instead of "
                         "--commit-interval-ms: a backlog drains with fewer transactions, and a worker that keeps "
                         "up is not affected; 0 = off (default: exactly-once 1000, at most half of "
                         "--transaction-timeout-ms, when longer than --commit-interval-ms; off with "
                         "--commit-interval-ms 0 and with --at-least-once)")
    sp.add_argument("--fetch-wait-max-ms", type=int, default=RT.fetch_wait_max_ms,
                    help="consumer fetch.wait.max.ms: how long the broker holds a fetch with less than "
                         "--fetch-min-bytes of new data (default %(default)s)")
    sp.add_argument("--fetch-min-bytes", type=int, default=RT.fetch_min_bytes,
                    help="consumer fetch.min.bytes: the bytes of new records that answer a fetch; 1 = the first "
                         "record (lowest latency, default); larger values bundle a quiet input into fewer fetches "
                         "and batches (less CPU) at up to --fetch-wait-max-ms more latency")
    sp.add_argument("--producer-linger-ms", type=float, default=RT.producer_linger_ms,
                    help="producer linger.ms for outputs (default 0.5 at-least-once, 5 exactly-once)")
    sp.add_argument("--cpus", default="", metavar="LIST",
                    help="run the worker, every thread of it, on these CPUs only (as taskset -c: 1, 0,2, 2-3; "
                         "default: wherever the scheduler puts it). On a small machine shared with the broker, "
                         "give the worker cores of its own and the broker others ([stack] kafka_cpus): it cuts "
                         "the latency tail (README: See the latency yourself)")
    sp.add_argument("--group-protocol", choices=["classic", "consumer"], default=RT.group_protocol,
                    help="classic (cooperative-sticky) or consumer (KIP-848)")
    sp.add_argument("--record-io", choices=["auto", "columnar", "messages"], default=RT.record_io,
                    help="how records are read and written: columnar (librdkafka to and from per-field lists by the "
                         "C extension: consuming about 3x the records/s of Message objects; fails to start when it is "
                         "not built), messages (confluent-kafka Message objects and produce() calls), auto (columnar "
                         "when built; default)")
    sp.add_argument("--max-buffered-records", type=int, default=RT.max_buffered_records,
                    help="backpressure: pause the input while the producer holds more unacknowledged outputs (default %(default)s)")
    sp.add_argument("--commit-timeout-s", type=float, default=RT.commit_timeout_s,
                    help="timeout of one transactional call (send offsets, commit, abort), s; retriable errors are "
                         "retried with back-off until it passes (default %(default)s)")
    sp.add_argument("--produce-block-timeout-s", type=float, default=RT.produce_block_timeout_s,
                    help="how long producing may wait for room in a full producer queue before the batch aborts "
                         "and is retried, s (default %(default)s)")
    sp.add_argument("--max-producer-recoveries", type=int, default=RT.max_producer_recoveries,
                    help="exactly-once: how many times a run re-initialises its producer after the coordinator "
                         "aborted its transaction (a broker outage longer than --transaction-timeout-ms) before it "
                         "fails (default %(default)s)")
    sp.add_argument("--max-poll-interval-ms", type=int, default=RT.max_poll_interval_ms,
                    help="consumer max.poll.interval.ms: a worker whose loop stalls longer leaves the group "
                         "(default %(default)s, so a broker restart on a small machine does not evict it)")
    sp.add_argument("--restore-attempts", type=int, default=RT.restore_attempts,
                    help="attempts to restore a partition's state from its changelog while the changelog's leader "
                         "is not ready (default %(default)s)")
    sp.add_argument("--lag-interval-s", type=float, default=RT.lag_interval_s,
                    help="refresh the mystocks_stream_consumer_lag gauges every S seconds (default %(default)s)")
    sp.add_argument("--transaction-timeout-ms", type=int, default=RT.transaction_timeout_ms,
                    help="exactly-once: the coordinator aborts (and fences) a transaction open longer than this; "
                         "a dead worker's open transaction blocks read_committed readers this long (default %(default)s)")
    sp.add_argument("--inject-faults", metavar="PLAN", default=None,
                    help="testing only: raise abortable errors at protocol stages, e.g. 'produce=0.02,commit=0.05;seed=7' "
                         "(stages: begin, produce, offsets, commit, crash, stall, slow_commit)")
    sp.add_argument("--session-timeout-ms", type=int, default=RT.session_timeout_ms,
                    help="consumer group session timeout: a worker that dies holds its partitions this long "
                         "(classic protocol; within the broker's group.min/max.session.timeout.ms; default %(default)s)")
    sp.add_argument("--idle-exit", type=float, default=None,
                    help="exit after this many seconds without input (a worker not yet assigned any partition waits "
                         "this plus two session timeouts for one)")
    sp.add_argument("--max-records", type=int, default=None, help="exit after consuming about this many records")
    f = sp.add_argument_group("features settings (run features; override [features] / MYSTOCKS_FEATURES__*)")
    f.add_argument("--features", default=None, metavar="NAMES", help="comma list of feature names, or all")
    f.add_argument("--ema-spans", default=None, metavar="SPANS", help="comma list of EMA spans (default 10,50)")
    f.add_argument("--window-ticks", default=None, metavar="N", help="trade-count window N (default 20)")
    f.add_argument("--window-s", default=None, metavar="S", help="time window W of time_mean/time_std, s (default 1)")
    f.add_argument("--bar-intervals-s", default=None, metavar="S,S", help="bar intervals, s (default 1,60)")
    f.add_argument("--allowed-lateness-s", default=None, metavar="S",
                   help="bars close this long after their end in event time (default 0)")
    f.add_argument("--max-disorder-s", default=None, metavar="S",
                   help="a trade up to this far behind its symbol's last trade is still used (default 0)")
    f.add_argument("--idle-close-s", default=None, metavar="S",
                   help="close open bars after this long without event-time progress, wall clock (default 0 = never)")
    f.add_argument("--close-on-stop", default=None, choices=["true", "false"],
                   help="close open bars on a graceful stop (default true)")
    sp.set_defaults(func=cmd_run)
