"""Options shared by the job-plane commands."""

from __future__ import annotations

import argparse
from typing import Any


def jobs_config(args: argparse.Namespace, **extra: Any) -> Any:
    from mystocks_gpu.jobs.jobs_config import JobsConfig

    over = {k: v for k, v in {"namespace": getattr(args, "namespace", None),
                              "heartbeat_ttl_s": getattr(args, "heartbeat_ttl", None),
                              "heartbeat_interval_s": getattr(args, "heartbeat_interval", None), **extra}.items()
            if v is not None}
    return JobsConfig(**over)


def control_url(args: argparse.Namespace) -> str:
    return (args.url or "http://127.0.0.1:6066").rstrip("/")

