"""Errors of the portfolio optimiser (gpu_ops.portfolio)."""

from mystocks_gpu.exceptions import ConfigError, MyStocksError


class PortfolioInputError(MyStocksError):
    """A problem's inputs are unusable: wrong shapes, non-finite values, contradictory settings
    (e.g. turnover without current weights), or a constraint the objective does not support. The
    message names the field and, for batches, the problem index."""

    exit_code = 2


class SolverConfigError(ConfigError, ValueError):
    """A :class:`~mystocks_gpu.gpu_ops.portfolio.config.SolverConfig` field is out of range."""
