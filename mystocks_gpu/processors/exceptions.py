"""Errors of the processors layer."""

from mystocks_gpu.exceptions import MyStocksError


class InvalidSpec(MyStocksError):
    """A job spec (backtest, ...) failed validation; the message gives the reason."""

    exit_code = 2


class JobSpecError(MyStocksError):
    """A job command names an unknown kind or carries a spec that fails validation."""

    exit_code = 2


class JobStopped(MyStocksError):
    """Raised by a runner when ``should_stop()`` turned true (cancel, deadline, shutdown)."""
