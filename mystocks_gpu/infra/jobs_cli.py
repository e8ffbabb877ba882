"""``mystocks-gpu`` subcommands of the job control plane (loaded by ``cli.py``):
``control``, ``worker``, ``submit``, ``jobs``, ``job``, ``cancel``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def _jobs_config(args: argparse.Namespace, **extra: Any) -> Any:
    from mystocks_gpu.streams.control.config import JobsConfig

    over = {k: v for k, v in {"namespace": getattr(args, "namespace", None),
                              "heartbeat_ttl_s": getattr(args, "heartbeat_ttl", None),
                              "heartbeat_interval_s": getattr(args, "heartbeat_interval", None), **extra}.items()
            if v is not None}
    return JobsConfig(**over)


def _url(args: argparse.Namespace) -> str:
    return (args.url or "http://127.0.0.1:6066").rstrip("/")


# ---- control / worker ---------------------------------------------------------------------
def cmd_control(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.kafka_clients import ensure_broker
    from mystocks_gpu.streams.control.app import run_control

    cfg = _jobs_config(args, web_host=args.host, web_port=args.port, app_id=args.app_id, cache_ttl_s=args.cache_ttl,
                       tick_interval_s=args.tick)
    ensure_broker(s.kafka)
    print(f"control app {cfg.app_id}: web http://{cfg.web_host}:{cfg.web_port} namespace={cfg.namespace}",
          file=sys.stderr, flush=True)
    return run_control(s, cfg)


def cmd_worker(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.devices import parse_fake_inventory
    from mystocks_gpu.streams.control.worker import (
        JobWorker,
        WorkerOptions,
        default_worker_id,
        parse_reserve,
    )

    kinds = tuple(k.strip() for k in (args.kinds or "").split(",") if k.strip())
    fake = tuple(parse_fake_inventory(args.fake_devices)) if args.fake_devices else None
    opts = WorkerOptions(args.id or default_worker_id(), kinds, fake, parse_reserve(args.reserve or []), args.device)
    worker = JobWorker(s, _jobs_config(args), opts)

    def _stop(signum: int, frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"worker {opts.worker_id}: kinds={','.join(worker.kinds)} dispatch={worker.topic}", file=sys.stderr, flush=True)
    worker.run()
    return 0


# ---- submit ---------------------------------------------------------------------------------
def _read_spec(arg: str | None) -> Any:
    if arg is None:
        return {}
    if arg == "-":
        text = sys.stdin.read()
    elif arg.lstrip().startswith("{"):
        text = arg
    else:
        try:
            text = Path(arg).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read spec file {arg}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"spec {arg} is not valid JSON: {exc}") from None


def _summary(st: dict[str, Any]) -> str:
    lines = [f"job {st['job_id']}: {st['state']}" + (" (cached)" if st.get("cached") else "")]
    if st.get("worker"):
        lines.append(f"  worker:  {st['worker']}")
    if st.get("message"):
        lines.append(f"  message: {st['message']}")
    if st.get("error"):
        lines.append(f"  error:   {st['error']}")
    if st.get("result") is not None:
        lines.append("  result:  " + json.dumps(st["result"], sort_keys=True))
    return "\n".join(lines)


EXIT = {"succeeded": 0, "failed": 1, "cancelled": 1, "rejected": 2}


def cmd_submit(args: argparse.Namespace, s: Settings) -> int:
    from tqdm import tqdm

    from mystocks_gpu.streams.control.client import produce_command, validate, wait_for
    from mystocks_gpu.streams.control.protocol import make_command, new_job_id

    cfg = _jobs_config(args)
    deadline = time.time_ns() + int(args.deadline * 1e9) if args.deadline else None
    cmd = make_command("SUBMIT", args.job_id or new_job_id(), args.kind, _read_spec(args.spec), priority=args.priority,
                       deadline_ns=deadline, requester=args.requester, bypass_cache=args.no_cache)
    if not args.no_validate:
        validate(cmd)
    if not args.wait:
        produce_command(s, cfg, cmd)
        print(json.dumps({"job_id": cmd["job_id"]}) if args.json else cmd["job_id"])
        return 0
    bar = tqdm(total=100, desc=f"{args.kind} {cmd['job_id'][:12]}", unit="%", file=sys.stderr,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}", disable=args.json or None)
    states: list[str] = []

    def on_status(st: dict[str, Any]) -> None:
        states.append(st["state"])
        bar.n = round(100 * float(st.get("progress") or 0.0))
        bar.set_postfix_str(f"{st['state']} {st.get('message', '')}"[:60], refresh=True)
        if args.json:
            print(json.dumps(st), flush=True)

    try:
        final = wait_for(s, cfg, cmd, args.timeout, on_status)
    finally:
        bar.close()
    result = final.get("result")
    if args.kind == "backtest" and isinstance(result, dict) and "top" in result:
        from mystocks_gpu.processors.backtest_report import format_top, write_report

        if not args.json:
            print(format_top(result))
        if args.report:
            print(f"report: {write_report(result, args.report)}", file=sys.stderr)
        final = {**final, "result": {k: v for k, v in result.items() if k not in ("top", "curves")}}
    if not args.json:
        print(_summary(final))
    return EXIT.get(final.get("state", ""), 1)


# ---- jobs / job / cancel --------------------------------------------------------------------
def cmd_jobs(args: argparse.Namespace, s: Settings) -> int:
    from urllib.parse import urlencode

    from mystocks_gpu.streams.control.client import http_ok

    q = {k: v for k, v in (("state", args.state), ("kind", args.kind), ("limit", args.limit)) if v}
    data = http_ok("GET", f"{_url(args)}/jobs" + (f"?{urlencode(q)}" if q else ""))
    if args.json:
        print(json.dumps(data))
        return 0
    print(f"{'JOB ID':<34} {'KIND':<10} {'STATE':<10} {'PROG':>5}  MESSAGE")
    for j in data["jobs"]:
        print(f"{j['job_id']:<34} {j['kind']:<10} {j['state']:<10} {100 * (j['progress'] or 0):>4.0f}%  {j['message'] or ''}")
    print(f"{data['count']} job(s)", file=sys.stderr)
    return 0


def cmd_job(args: argparse.Namespace, s: Settings) -> int:
    from urllib.parse import quote

    from mystocks_gpu.streams.control.client import http_ok

    print(json.dumps(http_ok("GET", f"{_url(args)}/jobs/{quote(args.job_id)}"), indent=None if args.json else 2))
    return 0


def cmd_cancel(args: argparse.Namespace, s: Settings) -> int:
    from urllib.parse import quote

    from mystocks_gpu.streams.control.client import http_ok

    http_ok("DELETE", f"{_url(args)}/jobs/{quote(args.job_id)}")
    print(f"cancel requested for {args.job_id}")
    return 0


# ---- parser ---------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """Register the control-plane subcommands on the ``mystocks-gpu`` subparsers."""
    def ns(p: argparse.ArgumentParser) -> None:
        p.add_argument("--namespace", help="Redis key prefix shared by control app and workers (default mystocks)")

    p = sub.add_parser("control", help="run the job control app (Faust agent + REST/WebSocket server)",
                       description="Consumes cmd.jobs, keeps the job table, schedules, publishes job.status.")
    p.add_argument("--host", default=None, help="web server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="web server port (default 6066; 0 = any free port)")
    p.add_argument("--app-id", default=None, help="Faust app id = consumer group (default mystocks-control)")
    p.add_argument("--cache-ttl", type=float, default=None, help="result cache TTL in seconds (default 86400)")
    p.add_argument("--heartbeat-ttl", type=float, default=None, help="must match the workers' (default 5)")
    p.add_argument("--tick", type=float, default=None, help="scheduler/watchdog period in seconds (default 0.5)")
    ns(p)
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("worker", help="run a job worker", description="Runs dispatched job chunks on this machine's devices.")
    p.add_argument("--kinds", help="comma-separated job kinds to serve (default: all registered)")
    p.add_argument("--id", help="worker id (default <host>-<pid>); names its dispatch topic")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto", help="device discovery (default auto)")
    p.add_argument("--reserve", action="append", metavar="DEVICE[=NAME]",
                   help="dedicate a device to a real-time processor: batch jobs never get it (repeatable)")
    p.add_argument("--fake-devices", metavar="JSON|@FILE", help="fake device inventory (tests)")
    p.add_argument("--heartbeat-ttl", type=float, default=None, help="heartbeat TTL in seconds (default 5)")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="seconds between heartbeats (default 1)")
    ns(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a job", description="Produce a SUBMIT command to cmd.jobs.")
    p.add_argument("kind", help="job kind (sleep, echo, ...)")
    p.add_argument("--spec", help="spec JSON file ('-' = stdin, or inline JSON)")
    p.add_argument("--wait", action="store_true", help="follow job.status with a progress bar until the job ends")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--deadline", type=float, default=None, help="fail the job after this many seconds")
    p.add_argument("--no-cache", action="store_true", help="bypass the result cache")
    p.add_argument("--job-id", help="job id (default: random)")
    p.add_argument("--requester", default="cli", help="who submits (default cli)")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds (exit 3)")
    p.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print JSON (with --wait: every status, one per line)")
    p.add_argument("--report", metavar="DIR", help="backtest with --wait: write equity/drawdown PNGs and index.html to DIR")
    ns(p)
    p.set_defaults(func=cmd_submit)

    for name, func, hlp in (("jobs", cmd_jobs, "list jobs"), ("job", cmd_job, "show one job"),
                            ("cancel", cmd_cancel, "cancel a job")):
        p = sub.add_parser(name, help=hlp + " (via the control app's HTTP API)")
        if name != "jobs":
            p.add_argument("job_id")
        else:
            p.add_argument("--state", help="comma-separated states: queued,running,succeeded,failed,cancelled,rejected")
            p.add_argument("--kind", help="only this kind")
            p.add_argument("--limit", type=int, default=None, help="at most N jobs (newest first)")
        p.add_argument("--url", help="control app URL (default http://127.0.0.1:6066)")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.set_defaults(func=func)
