"""``mystocks-gpu stack``: the local Kafka + Redis stack."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
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
    elif args.action == "fetch":
        from mystocks_gpu.infra.services_config import parse_with

        optional = parse_with(args.with_)
        t0 = time.monotonic()
        print(f"kafka jars  {stack.fetch_kafka()}")
        if "connect" in optional:
            from mystocks_gpu.infra.stack_connect import ConnectWorker

            worker = ConnectWorker(stack, s)
            print(f"jdbc sink   {worker.jdbc_plugin()}")
            print(f"converter   {worker.converter_plugin()}")
        print(f"fetched in {time.monotonic() - t0:.1f} s (Maven repository {Path(s.stack.cache_dir).expanduser() / 'm2'})")
    elif args.action == "classpath":
        stack.fetch_kafka()
        print(stack.classpath)
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("stack", help="start/stop/inspect the local Kafka + Redis stack",
                        description="Local stack: Apache Kafka (KRaft, jars from Maven Central) and redis-server on loopback.")
    sp.add_argument("action", choices=["up", "down", "status", "fetch", "classpath"],
                    help="fetch: resolve the Kafka jars with Maven into stack.cache_dir (no server starts); "
                         "with --with connect also the Connect plugins (Debezium's JDBC sink, the converter "
                         "built from deploy/connect/converter)")
    sp.add_argument("--with", dest="with_", default="", metavar="COMPONENTS",
                    help="up: also start optional servers, comma-separated: postgres, connect (brings postgres), "
                         "prometheus (settings in [services]); fetch: connect fetches its plugins")
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
