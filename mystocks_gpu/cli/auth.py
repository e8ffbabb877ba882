"""``mystocks-gpu auth``: bearer tokens of the HTTP/WebSocket API (``api.auth_file``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def _file(args: argparse.Namespace, s: Settings) -> Path:
    path = args.file or s.api.auth_file
    if not path:
        raise ConfigError("no token file: give --file PATH or set api.auth_file (MYSTOCKS_API__AUTH_FILE)")
    return Path(path)


def cmd_auth(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.infra.api_tokens import ROLES, TokenStore

    path = _file(args, s)
    store = TokenStore.load(path) if path.exists() else TokenStore()
    if args.action == "add":
        if not args.name:
            raise ConfigError("auth add needs a NAME")
        roles = [r.strip() for r in (args.roles or "").split(",") if r.strip()]
        if not roles:
            raise ConfigError(f"auth add needs --roles (comma-separated: {', '.join(ROLES)})")
        token = store.add(args.name, roles)
        store.save(path)
        print(f"token for {args.name} ({','.join(sorted(roles))}) stored as a SHA-256 digest in {path}; "
              "it is shown once, here:", file=sys.stderr)
        print(token)
    elif args.action == "remove":
        if not args.name or not store.remove(args.name):
            raise ConfigError(f"no token named {args.name!r} in {path}")
        store.save(path)
        print(f"token of {args.name} revoked (a running control app reads {path} at start: restart it)")
    else:
        for e in store.entries:
            print(f"{e.name:<24} {','.join(sorted(e.roles))}")
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    p = sub.add_parser("auth", help="manage API bearer tokens (add / remove / list)",
                       description="Bearer tokens of the control app's HTTP/WebSocket API. Only SHA-256 digests are "
                                   "stored (api.auth_file, mode 0600); `add` prints the new token once.")
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("name", nargs="?", help="token name (the identity that owns the jobs it submits)")
    p.add_argument("--roles", help="comma-separated roles: submit, read, admin (add)")
    p.add_argument("--file", help="token file (default: api.auth_file)")
    p.set_defaults(func=cmd_auth)
