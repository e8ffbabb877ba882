"""``mystocks-gpu stack``: the local Kafka + Redis stack."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mystocks_gpu.infra.config import Settings


def cmd_stack(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.stack import LocalStack

    stack = LocalStack(s.stack)
    if args.action == "up":
        t0 = time.monotonic()
        for c in stack.up():
            print(f"{c.name:<6} {c.state:<8} pid={c.pid} {c.address}")
        print(f"stack up in {time.monotonic() - t0:.1f} s (kafka bootstrap {stack.bootstrap}, redis {stack.redis_url})")
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing (no component of this stack was running)"))
    elif args.action == "status":
        states = stack.status()
        for c in states:
            print(f"{c.name:<6} {c.state:<8} pid={c.pid or '-'} {c.address} {c.detail}".rstrip())
        return 0 if all(c.state == "running" for c in states) else 3
    elif args.action == "classpath":
        stack.fetch_kafka()
        print(stack.classpath)
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("stack", help="start/stop/inspect the local Kafka + Redis stack",
                        description="Local stack: Apache Kafka (KRaft, jars from Maven Central) and redis-server on loopback.")
    sp.add_argument("action", choices=["up", "down", "status", "classpath"])
    sp.set_defaults(func=cmd_stack)
