"""``mystocks-gpu gateway``: the gRPC gateway in front of the topics."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings


def cmd_gateway(args: argparse.Namespace, s: Settings) -> int:
    from mystocks_gpu.api.gateway_server import serve
    from mystocks_gpu.infra.kafka_clients import ensure_broker

    over = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if over:
        try:
            s = dataclasses.replace(s, gateway=dataclasses.replace(s.gateway, **over))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    ensure_broker(s.kafka)

    async def main() -> None:
        task = asyncio.ensure_future(serve(s))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(main())
    except OSError as exc:
        raise ConfigError(f"cannot serve the gateway on {s.gateway.host}:{s.gateway.port}: {exc}") from None
    print("gateway stopped", file=sys.stderr)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("gateway", help="run the gRPC gateway (Backtest/RealTime/Training/Factor/Risk/Execution services)",
                       description="Serves the gRPC API of mystocks_gpu/api/protos (package mystocks.v1) in front of "
                                   "the topics, with health checking and server reflection. Auth: api.auth_file "
                                   "(bearer tokens); TLS: api.tls_cert_file/api.tls_key_file.")
    p.add_argument("--host", default=None, help="address to bind (default: gateway.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: gateway.port, 50051; 0 = any free port)")
    p.set_defaults(func=cmd_gateway)
