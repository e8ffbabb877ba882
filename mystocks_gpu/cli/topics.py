"""``mystocks-gpu topics``: the topic catalog on the broker."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings

#: the most partitions ``topics create --partitions`` makes a topic
MAX_PARTITIONS = 10_000


def cmd_topics(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.topics import all_specs, get
    from mystocks_gpu.topics.admin import TopicAdmin

    if args.action == "list":
        for spec in all_specs():
            print(f"{spec.name:<22} key={spec.key:<8} partitions={spec.partitions:<3} {spec.cleanup:<8} "
                  f"retention_ms={spec.retention_ms:<11} schema={spec.schema or 'bytes'}")
        return 0
    if args.partitions is not None and (args.action != "create" or not args.names):
        raise ConfigError("--partitions applies to `topics create NAME...` only: name the topics it sizes")
    if args.partitions is not None and not 1 <= args.partitions <= MAX_PARTITIONS:
        raise ConfigError(f"--partitions must be within 1..{MAX_PARTITIONS}, got {args.partitions}")
    admin = TopicAdmin(s.kafka)
    if args.action == "create":
        specs = [get(n) for n in args.names] if args.names else all_specs()
        if args.partitions is not None:
            specs = [dataclasses.replace(sp, partitions=args.partitions) for sp in specs]
        reports = admin.create(specs)
        drift = [r for r in reports if r.status == "drift"]
        for r in reports:
            print(f"{r.name:<22} {r.status}" + (f": {r.details}" if r.details else ""))
        print(f"{sum(r.status == 'created' for r in reports)} created, {sum(r.status == 'exists' for r in reports)} "
              f"already present, {len(drift)} drifted")
        return 4 if drift else 0
    if args.action == "describe":
        names = args.names or [sp.name for sp in all_specs()]
        for n in names:
            get(n)
            print(json.dumps(admin.describe(n), default=str))
        return 0
    return 2


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("topics", help="create/list/describe catalog topics",
                        description="Topic catalog. `create` is idempotent and reports drift (exit 4).")
    sp.add_argument("action", choices=["create", "list", "describe"])
    sp.add_argument("names", nargs="*", help="topics (default: the whole catalog, DLQ twins included)")
    sp.add_argument("--partitions", type=int, default=None, metavar="N",
                    help="create: the named topics with N partitions instead of the catalog's (an existing topic "
                         "with another count is reported as drift, never altered). A topic's partitions bound how "
                         "many workers share it, and each costs every hop a share of its time: on a small machine "
                         "with one worker, `topics create md.ticks features.ticks --partitions 1` gives the lowest "
                         "latency (README: A small machine)")
    sp.set_defaults(func=cmd_topics)
