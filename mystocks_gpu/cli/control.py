"""``mystocks-gpu control | worker``: the job control app and job workers."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from mystocks_gpu.cli.jobs_common import jobs_config
from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def cmd_control(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.kafka_clients import ensure_broker
    from mystocks_gpu.jobs.control_app import run_control

    cfg = jobs_config(args, s, web_host=args.host, web_port=args.port, app_id=args.app_id, cache_ttl_s=args.cache_ttl,
                      tick_interval_s=args.tick, ws_queue_max=args.ws_queue)
    ensure_broker(s.kafka)
    from mystocks_gpu.infra.logs import set_process_fields

    set_process_fields(app=cfg.app_id)
    print(f"control app {cfg.app_id}: web http://{cfg.web_host}:{cfg.web_port} namespace={cfg.namespace}",
          file=sys.stderr, flush=True)
    return run_control(s, cfg)


def cmd_worker(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.devices import parse_fake_inventory
    from mystocks_gpu.jobs.job_worker import (
        JobWorker,
        WorkerOptions,
        default_worker_id,
        parse_reserve,
    )

    kinds = tuple(k.strip() for k in (args.kinds or "").split(",") if k.strip())
    fake = tuple(parse_fake_inventory(args.fake_devices)) if args.fake_devices else None
    opts = WorkerOptions(args.id or default_worker_id(), kinds, fake, parse_reserve(args.reserve or []),
                         args.device or s.backend)
    from mystocks_gpu.infra.gpu_metrics import register_gpu_metrics
    from mystocks_gpu.infra.logs import set_process_fields
    from mystocks_gpu.jobs.worker_metrics import WorkerMetrics

    metrics = WorkerMetrics(opts.worker_id)
    worker = JobWorker(s, jobs_config(args, s, redis_retry_s=args.redis_retry), opts, metrics=metrics)
    register_gpu_metrics(metrics.registry, worker.devices)
    set_process_fields(worker=opts.worker_id)
    worker._check_redis()  # one clear line when Redis is down, before anything starts
    port = args.metrics_port if args.metrics_port is not None else s.metrics.port
    try:
        metrics.serve(port, s.metrics.host)
    except OSError as exc:
        raise ConfigError(f"cannot serve worker metrics on {s.metrics.host}:{port}: {exc.strerror}") from None

    def _stop(signum: int, frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"worker {opts.worker_id}: kinds={','.join(worker.kinds)} dispatch={worker.topic}", file=sys.stderr, flush=True)
    worker.run()
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    def ns(p: argparse.ArgumentParser) -> None:
        p.add_argument("--namespace", help="Redis key prefix shared by control app and workers (default: jobs.namespace)")

    p = sub.add_parser("control", help="run the job control app (Faust agent + REST/WebSocket server)",
                       description="Consumes cmd.jobs, keeps the job table, schedules, publishes job.status.")
    p.add_argument("--host", default=None, help="web server address (default: jobs.web_host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="web server port (default: jobs.web_port, 6066; 0 = any free port)")
    p.add_argument("--app-id", default=None, help="Faust app id = consumer group (default: jobs.app_id)")
    p.add_argument("--cache-ttl", type=float, default=None, help="result cache TTL in seconds (default: jobs.cache_ttl_s)")
    p.add_argument("--heartbeat-ttl", type=float, default=None, help="must match the workers' (default: jobs.heartbeat_ttl_s)")
    p.add_argument("--tick", type=float, default=None, help="scheduler/watchdog period in seconds (default: jobs.tick_interval_s)")
    p.add_argument("--ws-queue", type=int, default=None,
                   help="messages queued per WebSocket client before the oldest are dropped (default: jobs.ws_queue_max)")
    ns(p)
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("worker", help="run a job worker", description="Runs dispatched job chunks on this machine's devices.")
    p.add_argument("--kinds", help="comma-separated job kinds to serve (default: all registered)")
    p.add_argument("--id", help="worker id (default <host>-<pid>); names its dispatch topic")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default=None,
                   help="device discovery (default: the backend setting, auto)")
    p.add_argument("--reserve", action="append", metavar="DEVICE[=NAME]",
                   help="dedicate a device to a real-time processor: batch jobs never get it (repeatable)")
    p.add_argument("--fake-devices", metavar="JSON|@FILE", help="fake device inventory (tests)")
    p.add_argument("--heartbeat-ttl", type=float, default=None, help="heartbeat TTL in seconds (default: jobs.heartbeat_ttl_s)")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="seconds between heartbeats (default: jobs.heartbeat_interval_s)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (default metrics.port; 0 = off)")
    p.add_argument("--redis-retry", type=float, default=None,
                   help="seconds to retry Redis when starting a chunk or storing its result (default: jobs.redis_retry_s)")
    ns(p)
    p.set_defaults(func=cmd_worker)
