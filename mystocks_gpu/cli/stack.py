"""``mystocks-gpu stack``: the local Kafka + Redis stack (``--secure``: TLS, SCRAM, ACLs)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def cmd_stack(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.stack_secure import SecureStack, open_stack

    stack = open_stack(s.stack, True if args.secure else None)
    if args.action in ("env", "add-principal") and not isinstance(stack, SecureStack):
        raise ConfigError(f"`stack {args.action}` is for the secure stack: use --secure (stack up --secure first)")
    if args.wipe and args.action != "down":
        raise ConfigError("--wipe goes with `stack down` only")
    if args.action == "up":
        from mystocks_gpu.infra.services_config import parse_with

        optional = parse_with(args.with_)  # unknown names fail before anything starts
        t0 = time.monotonic()
        for c in stack.up():
            print(f"{c.name:<6} {c.state:<8} pid={c.pid} {c.address}")
        print(f"stack up in {time.monotonic() - t0:.1f} s (kafka bootstrap {stack.bootstrap}, redis "
              f"{stack.cfg.host}:{stack.cfg.redis_port}{' TLS' if stack.secure else ''})")
        if isinstance(stack, SecureStack):
            d = stack.write_env_files()
            print(f"secure: SASL_SSL/SCRAM-SHA-512 + ACLs, Redis TLS + ACL users; CA {stack.pki.ca}")
            print(f"principals ({', '.join(p.name for p in stack.principals())}, admin): settings in {d}/NAME.env; "
                  "e.g. eval \"$(mystocks-gpu stack env stream --secure)\"")
        if optional:
            _services_up(stack, s, optional)
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing (no component of this stack was running)"))
        if args.wipe:
            wiped = stack.wipe_kafka()
            print(f"wiped: {f'the broker data in {wiped}' if wiped else 'nothing (no broker data)'}"
                  "; the next `stack up` starts an empty broker")
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
    elif args.action == "env":
        assert isinstance(stack, SecureStack)
        if not args.name:
            raise ConfigError("stack env needs a principal name (admin, stream, jobworker, control, client, ingest, ...)")
        for k, v in sorted(stack.env(args.name).items()):
            print(f"export {k}={shlex.quote(v)}")
    elif args.action == "add-principal":
        assert isinstance(stack, SecureStack)
        if not args.name or not args.role:
            raise ConfigError("stack add-principal needs NAME and --role ROLE")
        p = stack.add_principal(args.name, args.role)
        print(f"principal {p.name} (role {p.role}) added: settings in {stack.secure_dir / 'principals' / (p.name + '.env')}")
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    from mystocks_gpu.infra.stack_secure import ROLES

    sp = sub.add_parser("stack", help="start/stop/inspect the local Kafka + Redis stack",
                        description="Local stack: Apache Kafka (KRaft, jars from Maven Central) and redis-server on "
                                    "loopback. --secure: TLS everywhere, SCRAM-SHA-512 users, ACLs per principal, "
                                    "Redis TLS + ACL users (see README 'Security').")
    sp.add_argument("action", choices=["up", "down", "status", "fetch", "classpath", "env", "add-principal"],
                    help="env NAME: print the MYSTOCKS_* exports of a principal; add-principal NAME --role R; "
                         "fetch: resolve the Kafka jars with Maven into stack.cache_dir (no server starts); "
                         "with --with connect also the Connect plugins")
    sp.add_argument("name", nargs="?", help="principal name (env, add-principal)")
    sp.add_argument("--secure", action="store_true",
                    help="the secure stack (default: secure when the stack home already holds one)")
    sp.add_argument("--role", choices=sorted(ROLES), help="role of a new principal (add-principal)")
    sp.add_argument("--with", dest="with_", default="", metavar="COMPONENTS",
                    help="up: also start optional servers, comma-separated: postgres, connect (brings postgres), "
                         "prometheus (settings in [services]); fetch: connect fetches its plugins")
    sp.add_argument("--wipe", action="store_true",
                    help="down: also delete the broker's data (every topic, consumer group offset and transaction "
                         "state); the next up formats an empty broker. Redis keeps nothing on disk; PostgreSQL and "
                         "Prometheus data stay")
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
