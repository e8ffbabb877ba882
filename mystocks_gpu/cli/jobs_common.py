"""Options shared by the job-plane commands."""

from __future__ import annotations

import argparse
from typing import Any

from mystocks_gpu.infra.config import JobsConfig, Settings


def jobs_config(args: argparse.Namespace, s: Settings, **extra: Any) -> JobsConfig:
    """The ``[jobs]`` settings with this command's flags (those given) on top, validated."""
    from mystocks_gpu.jobs.jobs_config import with_overrides

    return with_overrides(s.jobs, namespace=getattr(args, "namespace", None),
                          heartbeat_ttl_s=getattr(args, "heartbeat_ttl", None),
                          heartbeat_interval_s=getattr(args, "heartbeat_interval", None), **extra)


def control_url(args: argparse.Namespace, s: Settings) -> str:
    """``--url``, else the control app of the ``[jobs]`` settings (``http://web_host:web_port``)."""
    return str(args.url or s.jobs.url).rstrip("/")
