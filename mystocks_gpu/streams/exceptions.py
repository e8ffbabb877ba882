"""Errors of the streaming runtime."""

from mystocks_gpu.exceptions import MyStocksError


class FatalRuntimeError(MyStocksError):
    """The worker cannot go on (fenced producer, fatal transaction error, lost state); it stops."""


class ProcessorError(MyStocksError):
    """A processor rejected a record while processing (it goes to the DLQ; the batch goes on)."""
