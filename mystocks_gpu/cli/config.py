"""``mystocks-gpu config show``: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mystocks_gpu.infra.config import Settings


def cmd_config(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.processors.tick_features import config_from_settings

    config_from_settings(s.features)  # [features] checked in full (names, windows, intervals): one line, exit 2
    print(json.dumps(s.masked(), indent=2, default=str))
    return 0


def add_commands(sub: Any) -> None:
    """Register this group's subcommands."""
    sp = sub.add_parser("config", help="show the effective configuration (secrets masked)")
    sp.add_argument("action", choices=["show"])
    sp.set_defaults(func=cmd_config)
