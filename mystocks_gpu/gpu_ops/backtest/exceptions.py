"""Errors of the backtest engine (gpu_ops.backtest)."""

from mystocks_gpu.exceptions import MyStocksError


class BacktestInputError(MyStocksError):
    """The engine's inputs are unusable: bad strategy/grid, price arrays of the wrong shape, symbols
    missing from the data, an empty time range, a memory budget too small for one chunk, too many
    cells, or chunk states that do not fit together."""

    exit_code = 2
