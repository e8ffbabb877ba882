"""Errors of the gpu_ops layer."""

from mystocks_gpu.exceptions import MyStocksError


class BackendUnavailable(MyStocksError):
    """The requested array backend (``gpu``) cannot be used here (no CuPy or no CUDA device)."""
