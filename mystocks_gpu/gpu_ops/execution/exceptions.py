"""Errors of the execution models (gpu_ops.execution)."""

from __future__ import annotations

from typing import Any

from mystocks_gpu.exceptions import ConfigError, MyStocksError


class ExecutionConfigError(ConfigError, ValueError):
    """An invalid :class:`~mystocks_gpu.gpu_ops.execution.execution_config.ExecutionConfig`."""


class ExecutionInputError(MyStocksError, ValueError):
    """A parent order or its market parameters cannot be scheduled.

    ``field`` names the offending field (``quantity``, ``end_ns``, ``sigma``, ...), so a caller
    (or the stream processor's dead-letter record) can say exactly what to fix.
    """

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SimulationStopped(MyStocksError):
    """The simulator saw ``should_stop()`` turn true; ``partial`` holds the results so far."""

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial
