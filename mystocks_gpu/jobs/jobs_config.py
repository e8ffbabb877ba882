"""The job plane's configuration: the ``[jobs]`` section of the settings.

:class:`~mystocks_gpu.infra.config.JobsConfig` lives with the other frozen settings (so TOML, the
environment and ``config show`` cover it); command-line flags override it with :func:`with_overrides`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mystocks_gpu.infra.config import JobsConfig


def with_overrides(cfg: JobsConfig, **overrides: Any) -> JobsConfig:
    """``cfg`` with the given fields replaced (``None`` values ignored), validated again."""
    over = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **over) if over else cfg


__all__ = ["JobsConfig", "with_overrides"]
