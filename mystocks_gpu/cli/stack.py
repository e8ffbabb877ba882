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
        from mystocks_gpu.infra.services_config import parse_with

        optional = parse_with(args.with_)  # unknown names fail before anything starts
        t0 = time.monotonic()
        for c in stack.up():
            print(f"{c.name:<6} {c.state:<8} pid={c.pid} {c.address}")
        print(f"stack up in {time.monotonic() - t0:.1f} s (kafka bootstrap {stack.bootstrap}, redis {stack.redis_url})")
        if optional:
            _services_up(stack, s, optional)
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing (no component of this stack was running)"))
    elif args.action == "status":
        states = stack.status()
        for c in states:
            print(f"{c.name:<6} {c.state:<8} pid={c.pid or '-'} {c.address} {c.detail}".rstrip())
        _services_status(stack, s)
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
    sp.add_argument("--with", dest="with_", default="", metavar="COMPONENTS",
                    help="up: also start optional servers, comma-separated: postgres, connect (brings postgres), "
                         "prometheus (settings in [services])")
    sp.set_defaults(func=cmd_stack)


def _services_up(stack: Any, s: Settings, optional: tuple[str, ...]) -> None:
    """``stack up --with ...``: start the optional servers (stack_services)."""
    from mystocks_gpu.infra.stack_services import start_services

    t0 = time.monotonic()
    for c in start_services(stack, s, optional):
        if c.state != "off":
            print(f"{c.name:<10} {c.state:<8} pid={c.pid} {c.address}")
    print(f"optional servers up in {time.monotonic() - t0:.1f} s")


def _services_status(stack: Any, s: Settings) -> None:
    from mystocks_gpu.infra.stack_services import services_status

    for c in services_status(stack, s):
        if c.state != "off":
            print(f"{c.name:<10} {c.state:<8} pid={c.pid or '-'} {c.address}")
