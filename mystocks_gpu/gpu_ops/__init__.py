"""Array kernels on columnar data: a GPU implementation (CuPy) and a CPU twin (numba) per operator."""

from mystocks_gpu.gpu_ops.backend import CPU, GPU, gpu_available, select, to_host, xp

__all__ = ["CPU", "GPU", "gpu_available", "select", "to_host", "xp"]
