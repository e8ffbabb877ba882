"""The ``mystocks-gpu`` command. Thin: parses arguments, loads settings, calls into the layers.

Every :class:`~mystocks_gpu.exceptions.MyStocksError` becomes one clear line on stderr and a
non-zero exit code (2 for bad input/config, 1 otherwise); there are no tracebacks for user errors.
With ``--log-format json`` that line is a JSON log record too, so every stderr line parses.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mystocks_gpu import __version__
from mystocks_gpu.cli import config, connect, control, data, execution, run, stack, submit, topics
from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.infra.config import load_settings
from mystocks_gpu.infra.logs import kv, setup_logging

log = logging.getLogger("mystocks_gpu.cli")
#: command groups, in the order ``--help`` lists them; each module has ``add_commands(subparsers)``
GROUPS = (stack, topics, data, run, control, submit, execution, config, connect)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mystocks-gpu", description="GPU-accelerated quant computing on Apache Kafka.")
    p.add_argument("--version", action="version", version=f"mystocks-gpu {__version__}")
    p.add_argument("--config", help="TOML config file (default: $MYSTOCKS_CONFIG or ./mystocks.toml)")
    p.add_argument("--log-format", choices=["text", "json"], help="log format (default from config: text)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mystocks-gpu`` console script."""
    args = build_parser().parse_args(argv)
    json_logs = False
    try:
        overrides: dict[str, Any] = {}
        if args.log_format or args.log_level:
            overrides["log"] = {k: v for k, v in (("format", args.log_format), ("level", args.log_level)) if v}
        settings = load_settings(args.config, overrides=overrides)
        setup_logging(settings.log)
        json_logs = settings.log.format == "json"
        log.debug("settings", extra=kv(**{"settings": settings.masked()}))
        return int(args.func(args, settings) or 0)
    except MyStocksError as exc:
        _final(f"mystocks-gpu: error: {exc}", json_logs, error=type(exc).__name__, exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        _final("mystocks-gpu: interrupted", json_logs, exit_code=130)
        return 130


def _final(line: str, json_logs: bool, **fields: Any) -> None:
    """The last word of a failed command: one plain stderr line, or one JSON record in json mode."""
    if json_logs:
        log.error(line, extra=kv(**fields))
    else:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
