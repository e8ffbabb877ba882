"""``mystocks-gpu factors list-library | check | mine | show | values``: the factor language, the
mining job and the factor jobs' outputs. Jobs run with ``mystocks-gpu submit factors`` /
``factors_mine``; ``factors mine`` is ``submit factors_mine`` with the search's main knobs as flags."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def cmd_list_library(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.gpu_ops.factors import available_libraries, load_library

    if not args.name:
        for name in available_libraries():
            print(f"{name:<10} {len(load_library(name))} factors")
        return 0
    lib = load_library(args.name)
    if args.json:
        print(json.dumps(lib, indent=2))
        return 0
    width = max(len(k) for k in lib)
    for k, v in lib.items():
        print(f"{k:<{width}}  {v}")
    print(f"{len(lib)} factors in {args.name}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.gpu_ops.factors import parse
    from mystocks_gpu.gpu_ops.factors.expr import FIELD, max_window
    from mystocks_gpu.gpu_ops.factors.ops import DEFAULT_FIELDS, OPS

    fields = tuple(args.fields.split(",")) if args.fields else DEFAULT_FIELDS
    out = []
    for text in args.expressions:
        node = parse(text, fields)  # a FactorError (position, caret) ends the command: exit 2
        nodes = list(node.walk())
        ops = sorted({n.op for n in nodes if n.op in OPS})
        info = {"expression": text, "canonical": node.to_string(), "depth": node.depth,
                "max_window": max_window(node), "fields": sorted({n.name for n in nodes if n.op == FIELD}),
                "operators": ops, "cross_sectional": any(OPS[o].kind == "cs" for o in ops)}
        out.append(info)
        if not args.json:
            print(f"ok  {info['canonical']}")
            print(f"    depth {info['depth']}, longest window {info['max_window']} bars, fields "
                  f"{' '.join('$' + f for f in info['fields']) or '-'}, operators {' '.join(ops) or '-'}"
                  + (" (cross-sectional: needs >= 2 symbols)" if info["cross_sectional"] else ""))
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    return 0


#: ``factors mine`` flags that override the spec's fields (flag dest -> spec field)
MINE_FLAGS = ("seed", "population", "generations", "max_depth", "min_abs_rank_ic", "min_abs_icir", "max_corr",
              "max_kept")


def cmd_mine(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.cli.submit import _read_spec, cmd_submit

    spec = _read_spec(args.spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"spec {args.spec} must be a JSON object (the factors_mine fields)")
    spec |= {k: getattr(args, k) for k in MINE_FLAGS if getattr(args, k) is not None}
    if args.universe:
        spec["universe"] = args.universe.split(",")
    sub = argparse.Namespace(kind="factors_mine", spec=json.dumps(spec), wait=args.wait, priority=args.priority,
                             deadline=None, no_cache=args.no_cache, job_id=args.job_id, requester="cli",
                             timeout=args.timeout, accept_timeout=args.accept_timeout, no_validate=False,
                             json=args.json, report=args.report, namespace=args.namespace, print_schema=False)
    return cmd_submit(sub, s)


def cmd_show(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.factors.factor_report import _table
    from mystocks_gpu.processors.factors.factor_topics import read_factor_results
    from mystocks_gpu.schemas import schema_store

    res = read_factor_results(s, args.job_id, schema_store(s), idle_timeout_s=args.idle_timeout)
    m = res["metrics"]
    if not len(m):
        raise ConfigError(f"no results for job {args.job_id!r} on results.factors")
    h = args.horizon if args.horizon is not None else int(m["horizon"].min())
    rows = m[m["horizon"] == h].sort_values("rank")
    if args.json:
        print(rows.to_json(orient="records"))
        return 0
    print(f"job {args.job_id}: {len(rows)} factors at horizon {h}"
          + ("" if res["complete"] else " (incomplete: not every part was read)"))
    for ln in _table(rows.head(args.top).to_dict("records")):
        print("  " + ln)
    return 0


def cmd_values(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.exceptions import InvalidSpec
    from mystocks_gpu.processors.factors.factor_spec import to_ns
    from mystocks_gpu.processors.factors.factor_topics import read_factor_values

    def as_time(v: str | None) -> int | str | None:
        return int(v) if v is not None and v.lstrip("-").isdigit() else v

    try:
        start, end = to_ns(as_time(args.start), "--start"), to_ns(as_time(args.end), "--end")
    except InvalidSpec as exc:
        raise ConfigError(str(exc)) from None
    names = args.factors.split(",") if args.factors else None
    df = read_factor_values(s, args.job_id, start, end, names)
    if not len(df):
        raise ConfigError(f"no values for job {args.job_id!r} on factors.values in that range")
    if args.out:
        if args.out.endswith(".parquet"):
            df.to_parquet(args.out)
        else:
            df.to_csv(args.out)
        print(f"wrote {len(df)} rows x {len(df.columns)} factors to {args.out}", file=sys.stderr)
    else:
        print(df.to_csv(), end="")
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    p = sub.add_parser("factors", help="factor language, mining and factor job outputs (list-library, check, mine, show, values)",
                       description="Inspect the factor library, check expressions, read factor job outputs. "
                                   "Run factor jobs with `mystocks-gpu submit factors` / `factors mine`.")
    fs = p.add_subparsers(dest="factors_command", metavar="ACTION", required=True)

    q = fs.add_parser("list-library", help="list the shipped libraries, or the factors of one")
    q.add_argument("name", nargs="?", help="library name (alpha158, classic)")
    q.add_argument("--json", action="store_true", help="name -> expression as JSON")
    q.set_defaults(func=cmd_list_library)

    q = fs.add_parser("check", help="parse and validate expressions (errors name the position)")
    q.add_argument("expressions", nargs="+", metavar="EXPR", help="e.g. 'Rank(Mean($close, 5) / $close)'")
    q.add_argument("--fields", help="comma-separated bar fields allowed (default open,high,low,close,volume,vwap)")
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=cmd_check)

    q = fs.add_parser("mine", help="submit a factor search (job kind factors_mine), optionally wait for the kept set",
                      description="Random + genetic search over operator trees, seeded: candidates are evaluated in "
                                  "batched passes, those passing |rank IC|, ICIR and correlation bounds are kept. "
                                  "Spec fields: see `submit factors_mine`; the flags below override them.")
    q.add_argument("--spec", help="factors_mine spec JSON file ('-' = stdin, or inline JSON; default {})")
    q.add_argument("--universe", help="comma-separated symbols (default: the spec's, else all)")
    for flag, typ, hlp in (("seed", int, "random seed (same seed + data = same kept set)"),
                           ("population", int, "candidates per generation"), ("generations", int, "generations"),
                           ("max-depth", int, "operator tree depth bound"),
                           ("min-abs-rank-ic", float, "keep: |mean rank IC| at least this"),
                           ("min-abs-icir", float, "keep: |rank ICIR| at least this"),
                           ("max-corr", float, "keep: |rank correlation| with kept factors below this"),
                           ("max-kept", int, "keep at most this many")):
        q.add_argument(f"--{flag}", type=typ, help=hlp)
    q.add_argument("--wait", action="store_true", help="follow the job with a progress bar; print the kept set")
    q.add_argument("--report", metavar="DIR", help="with --wait: write PNG plots + index.html to DIR")
    q.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 3)")
    q.add_argument("--accept-timeout", type=float, default=30.0,
                   help="with --wait: give up when no control app took the job within this many seconds (default 30)")
    q.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    q.add_argument("--no-cache", action="store_true", help="bypass the result cache")
    q.add_argument("--job-id", help="job id (default: random)")
    q.add_argument("--namespace", help="Redis key prefix shared by control app and workers (default: jobs.namespace)")
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=cmd_mine)

    q = fs.add_parser("show", help="the ranked metrics of a factor job, read from results.factors")
    q.add_argument("job_id")
    q.add_argument("--horizon", type=int, help="horizon to rank by (default the first)")
    q.add_argument("--top", type=int, default=30, help="rows to print (default 30)")
    q.add_argument("--idle-timeout", type=float, default=5.0, help="stop reading after this many idle seconds")
    q.add_argument("--json", action="store_true", help="JSON rows")
    q.set_defaults(func=cmd_show)

    q = fs.add_parser("values", help="a factor job's values from factors.values, (date, symbol) x factor")
    q.add_argument("job_id")
    q.add_argument("--start", help="first date (ISO or ns), inclusive")
    q.add_argument("--end", help="last date (ISO or ns), exclusive")
    q.add_argument("--factors", help="comma-separated factor names (default all)")
    q.add_argument("--out", help="write to FILE.parquet or FILE.csv (default CSV on stdout)")
    q.set_defaults(func=cmd_values)
