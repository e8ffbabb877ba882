"""``mystocks-gpu stack``: the local Kafka + Redis stack (``--secure``: TLS, SCRAM, ACLs)."""

from __future__ import annotations

import argparse
import shlex
import time
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def cmd_stack(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.stack_secure import SecureStack, open_stack

    stack = open_stack(s.stack, True if args.secure else None)
    if args.action in ("env", "add-principal") and not isinstance(stack, SecureStack):
        raise ConfigError(f"`stack {args.action}` is for the secure stack: use --secure (stack up --secure first)")
    if args.action == "up":
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
    sp.add_argument("action", choices=["up", "down", "status", "classpath", "env", "add-principal"],
                    help="env NAME: print the MYSTOCKS_* exports of a principal; add-principal NAME --role R")
    sp.add_argument("name", nargs="?", help="principal name (env, add-principal)")
    sp.add_argument("--secure", action="store_true",
                    help="the secure stack (default: secure when the stack home already holds one)")
    sp.add_argument("--role", choices=sorted(ROLES), help="role of a new principal (add-principal)")
    sp.set_defaults(func=cmd_stack)
