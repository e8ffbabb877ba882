"""``mystocks-gpu run PROCESSOR``: a stream worker with graceful shutdown and Prometheus metrics."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
from typing import Any

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.devices import discover
from mystocks_gpu.infra.gpu_metrics import register_gpu_metrics
from mystocks_gpu.infra.logs import set_process_fields
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE, RuntimeConfig
from mystocks_gpu.streams.stream_metrics import RuntimeMetrics
from mystocks_gpu.streams.stream_worker import StreamWorker


def cmd_run(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.stream_processors import create
    from mystocks_gpu.schemas import schema_store

    processor = create(args.processor, output_topic=args.output_topic, backend=s.backend, store=schema_store(s))
    rt = RuntimeConfig(max_records=args.batch_records, max_bytes=args.batch_bytes, linger_ms=args.linger_ms,
                       guarantee=AT_LEAST_ONCE if args.at_least_once else EXACTLY_ONCE,
                       commit_interval_ms=args.commit_interval_ms, group_protocol=args.group_protocol,
                       max_buffered_records=args.max_buffered_records, fault_injection=args.inject_faults or "",
                       transaction_timeout_ms=args.transaction_timeout_ms)
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


def add_commands(sub: Any) -> None:
    """Register ``run`` on the top-level parser."""
    sp = sub.add_parser("run", help="run a stream processor (exactly-once by default)",
                        description="Run a stream processor: batch consume -> process -> produce. "
                                    "SIGTERM/SIGINT finish the current batch, commit, and exit 0.")
    sp.add_argument("processor", help="processor name (aggregate, features, ...)")
    sp.add_argument("--group", help="consumer group (default mystocks.PROCESSOR)")
    sp.add_argument("--worker-id", help="stable id of this worker: a restart with the same id fences its predecessor "
                                        "(default HOSTNAME-0)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--eos", action="store_true", default=True, help="exactly-once (default)")
    g.add_argument("--at-least-once", action="store_true", help="at-least-once: lowest latency, duplicates possible after a crash")
    sp.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0 = off)")
    sp.add_argument("--input-topic", help="override the processor's input topic")
    sp.add_argument("--output-topic", help="override the processor's output topic")
    sp.add_argument("--batch-records", type=int, default=5000, help="max records per micro-batch (default 5000)")
    sp.add_argument("--batch-bytes", type=int, default=4 * 1024 * 1024, help="max bytes per micro-batch (default 4 MiB)")
    sp.add_argument("--linger-ms", type=float, default=20.0, help="close a batch this long after its first record (default 20)")
    sp.add_argument("--commit-interval-ms", type=float, default=100.0,
                    help="commit (end the transaction) every N ms; 0 = after every batch (default 100)")
    sp.add_argument("--group-protocol", choices=["classic", "consumer"], default="classic",
                    help="classic (cooperative-sticky) or consumer (KIP-848)")
    sp.add_argument("--max-buffered-records", type=int, default=50_000,
                    help="backpressure: pause the input while the producer holds more unacknowledged outputs (default 50000)")
    sp.add_argument("--transaction-timeout-ms", type=int, default=10_000,
                    help="exactly-once: the coordinator aborts (and fences) a transaction open longer than this; "
                         "a dead worker's open transaction blocks read_committed readers this long (default 10000)")
    sp.add_argument("--inject-faults", metavar="PLAN", default=None,
                    help="testing only: raise abortable errors at protocol stages, e.g. 'produce=0.02,commit=0.05;seed=7' "
                         "(stages: begin, produce, offsets, commit, crash, stall)")
    sp.add_argument("--idle-exit", type=float, default=None, help="exit after this many seconds without input")
    sp.add_argument("--max-records", type=int, default=None, help="exit after consuming about this many records")
    sp.set_defaults(func=cmd_run)
