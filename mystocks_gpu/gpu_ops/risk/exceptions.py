"""Errors of the risk engine (gpu_ops.risk)."""

from mystocks_gpu.exceptions import ConfigError, MyStocksError


class RiskInputError(MyStocksError):
    """Risk inputs are unusable: arrays of the wrong shape, a NaN quantity, a symbol code out of
    range, or account state bytes that do not decode. The message names the field / account."""

    exit_code = 2


class RiskConfigError(ConfigError, ValueError):
    """A :class:`~mystocks_gpu.gpu_ops.risk.config.RiskConfig` field is out of range."""
