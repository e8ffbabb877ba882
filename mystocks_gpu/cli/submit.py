"""``mystocks-gpu submit | jobs | job | cancel``: submit jobs and follow them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mystocks_gpu.cli.jobs_common import control_url, jobs_config
from mystocks_gpu.exceptions import ConfigError, MyStocksError
from mystocks_gpu.infra.config import Settings


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


class _KindHelp(argparse.Action):
    """``submit KIND --help``: the command's help, then the KIND's spec documentation."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.print_help()
        name = getattr(namespace, "kind", None)
        if name:
            from mystocks_gpu.jobs.kinds import get_kind

            try:
                doc = get_kind(name).spec_cls.describe()
            except MyStocksError as exc:
                doc = str(exc)
            print(f"\n{doc}" if doc else f"\n(job kind {name} documents no spec)")
        parser.exit()


def cmd_submit(args: argparse.Namespace, s: Settings) -> int:
    from tqdm import tqdm

    from mystocks_gpu.jobs.client import produce_command, validate, wait_for
    from mystocks_gpu.jobs.kinds import get_kind
    from mystocks_gpu.jobs.protocol import make_command, new_job_id

    if args.print_schema:
        schema = get_kind(args.kind).spec_cls.json_schema()
        if schema is None:
            raise ConfigError(f"job kind {args.kind} has no JSON schema")
        print(json.dumps(schema, indent=2))
        return 0
    cfg = jobs_config(args, s)
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
        final = wait_for(s, cfg, cmd, args.timeout, on_status, accept_timeout_s=args.accept_timeout or None,
                         on_wait=lambda line: tqdm.write(f"mystocks-gpu: {line}", file=sys.stderr))
    finally:
        bar.close()
    result = final.get("result")
    kind = get_kind(args.kind)
    if isinstance(result, dict) and final.get("state") == "succeeded":
        if kind.summarize is not None and not args.json:
            print(kind.summarize(result))
        if args.report:
            if kind.report is None:
                print(f"(no report for job kind {args.kind})", file=sys.stderr)
            else:
                print(f"report: {kind.report(result, Path(args.report), s, cmd['job_id'])}", file=sys.stderr)
        final = {**final, "result": {k: v for k, v in result.items() if k not in kind.bulky_keys}}
    if not args.json:
        print(_summary(final))
    return EXIT.get(final.get("state", ""), 1)


# ---- jobs / job / cancel --------------------------------------------------------------------
def cmd_jobs(args: argparse.Namespace, s: Settings) -> int:
    from urllib.parse import urlencode

    from mystocks_gpu.jobs.client import http_ok

    if args.limit is not None and args.limit < 1:  # before any request (0 was dropped as "no limit")
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    q = {k: v for k, v in (("state", args.state), ("kind", args.kind), ("limit", args.limit)) if v}
    data = http_ok("GET", f"{control_url(args, s)}/jobs" + (f"?{urlencode(q)}" if q else ""), api=s.api)
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

    from mystocks_gpu.jobs.client import http_ok

    print(json.dumps(http_ok("GET", f"{control_url(args, s)}/jobs/{quote(args.job_id)}", api=s.api), indent=None if args.json else 2))
    return 0


def cmd_cancel(args: argparse.Namespace, s: Settings) -> int:
    from urllib.parse import quote

    from mystocks_gpu.jobs.client import http_ok

    http_ok("DELETE", f"{control_url(args, s)}/jobs/{quote(args.job_id)}", api=s.api)
    print(f"cancel requested for {args.job_id}")
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    def ns(p: argparse.ArgumentParser) -> None:
        p.add_argument("--namespace", help="Redis key prefix shared by control app and workers (default: jobs.namespace)")

    p = sub.add_parser("submit", help="submit a job", add_help=False,
                       description="Produce a SUBMIT command to cmd.jobs. `submit KIND --help` also documents "
                                   "KIND's spec; `submit KIND --print-schema` prints its JSON schema.")
    p.add_argument("-h", "--help", action=_KindHelp, nargs=0, help="show this help (and KIND's spec) and exit")
    p.add_argument("kind", help="job kind (backtest, sleep, echo, ...)")
    p.add_argument("--print-schema", action="store_true", help="print the JSON schema of KIND's spec and exit")
    p.add_argument("--spec", help="spec JSON file ('-' = stdin, or inline JSON)")
    p.add_argument("--wait", action="store_true", help="follow job.status with a progress bar until the job ends")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--deadline", type=float, default=None, help="fail the job after this many seconds")
    p.add_argument("--no-cache", action="store_true", help="bypass the result cache")
    p.add_argument("--job-id", help="job id (default: random)")
    p.add_argument("--requester", default="cli", help="who submits (default cli)")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds (exit 3)")
    p.add_argument("--accept-timeout", type=float, default=30.0,
                   help="with --wait: give up (exit 3) when no control app took the job within this many seconds "
                        "(default 30; 0 = wait forever)")
    p.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print JSON (with --wait: every status, one per line)")
    p.add_argument("--report", metavar="DIR", help="with --wait: write the job kind's report (PNG plots + index.html) to DIR")
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
        p.add_argument("--url", help="control app URL (default: http://jobs.web_host:jobs.web_port)")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.set_defaults(func=func)

