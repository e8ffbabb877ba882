"""Errors of the job control plane."""

from mystocks_gpu.exceptions import MyStocksError


class ControlError(MyStocksError):
    """The control app answered with an error (unknown job, job already final, bad request)."""

    exit_code = 2


class ControlUnreachable(MyStocksError):
    """No control app answered at the configured URL."""


class WaitTimeout(MyStocksError):
    """A job did not reach a final state within the wait timeout."""

    exit_code = 3


class RedisUnavailable(MyStocksError):
    """Redis (heartbeats, result store, cache) did not answer at the configured URL."""


class NoControlApp(WaitTimeout):
    """A submitted command got no status: no control app took it within the bound."""
