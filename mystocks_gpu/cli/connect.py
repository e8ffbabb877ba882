"""``mystocks-gpu connect create|list|status|delete [NAME]``: Kafka Connect sinks of the result
topics, configs kept in ``deploy/connect/connectors`` (see README "Connect sinks")."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {p!r}")
        out[key] = value
    return out


def cmd_connect(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.connect_client import (
        ConnectClient,
        ConnectError,
        connector_config,
        known_connectors,
    )

    client = ConnectClient.from_settings(s)
    if args.action == "list":
        running = client.list()
        for name in sorted(set(running) | set(known_connectors())):
            where = "running" if name in running else "not created"
            print(f"{name:<20} {where}")
        return 0
    if not args.name:
        raise ConfigError(f"connect {args.action} needs a connector NAME (known: {', '.join(known_connectors())})")
    names = known_connectors() if args.name == "all" else [args.name]
    for name in names:
        if args.action == "create":
            client.put_config(name, connector_config(name, s, _overrides(args.set or [])))
            print(f"{name}: created (config deploy/connect/connectors/{name}.json)")
        elif args.action == "status":
            st = client.status(name)
            tasks = ", ".join(f"task {t['id']} {t['state']}" for t in st.get("tasks", []))
            print(f"{name}: connector {st['connector']['state']}; {tasks or 'no tasks'}")
            for t in st.get("tasks", []):
                if t.get("trace"):
                    print(json.dumps({"task": t["id"], "trace": t["trace"].splitlines()[:3]}))
            if st["connector"]["state"] != "RUNNING" or any(t["state"] != "RUNNING" for t in st.get("tasks", [])):
                return 3
        elif args.action == "delete":
            try:
                client.delete(name)
            except ConnectError as exc:
                if "404" not in str(exc):
                    raise
                print(f"{name}: not present")
                continue
            print(f"{name}: deleted")
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("connect", help="manage Kafka Connect sinks (create/list/status/delete)",
                        description="Kafka Connect connectors over the worker's REST API (services.connect_url; "
                                    "`stack up --with connect` starts one). Configs: deploy/connect/connectors/NAME.json.")
    sp.add_argument("action", choices=["create", "list", "status", "delete"])
    sp.add_argument("name", nargs="?", help="connector name (a config in deploy/connect/connectors), or 'all'")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="create: override a config key (repeatable)")
    sp.set_defaults(func=cmd_connect)
