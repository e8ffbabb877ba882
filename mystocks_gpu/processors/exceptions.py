"""Errors of the processors layer."""

from mystocks_gpu.exceptions import MyStocksError


class InvalidSpec(MyStocksError):
    """A job spec (backtest, ...) failed validation; the message gives the reason."""

    exit_code = 2
