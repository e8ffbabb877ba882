"""Serial C emulation of the GPU tick-feature kernels (``features_chunks.cu`` compiled as C).

:func:`emu_launcher` compiles the very CUDA source the GPU runs, without ``__CUDACC__``, into a
shared library whose ``fx_run`` calls a kernel once per thread index, one after another; the
returned :class:`~mystocks_gpu.gpu_ops.features_gpu.Launcher` lets the unit tests run the GPU
backend's host orchestration (``process_batch_gpu``) with NumPy arrays on a machine without a
GPU. Needs a C compiler (``cc``); the libraries are cached per source in a temporary folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from mystocks_gpu.gpu_ops.features_gpu import GROUP_KERNELS, KERNELS, Launcher, kernel_source

#: every kernel the driver can run: the fused grouping's (one thread per sub-block here), the rest
_NAMES = (*GROUP_KERNELS, *(name for name, _ in KERNELS))

_DRIVER = """
void fx_run(int which, long long threads, const long long* P) {
    for (emu_tid = 0; emu_tid < threads; ++emu_tid) {
        switch (which) {
%s
        }
    }
}
"""


@lru_cache(maxsize=16)
def _library(n_ema: int, n_win: int, col_idx: tuple[int, ...],
             tuning: tuple[tuple[str, int], ...]) -> ctypes.CDLL:
    cases = "\n".join(f"        case {i}: {name}(P); break;" for i, name in enumerate(_NAMES))
    src = kernel_source(n_ema, n_win, col_idx, tuning) + _DRIVER % cases
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "mystocks-features-emu"
    folder.mkdir(exist_ok=True)
    lib = folder / f"fx_{digest}.so"
    if not lib.exists():  # per-process names: parallel test workers may build it at once
        c_file = folder / f"fx_{digest}.{os.getpid()}.c"
        c_file.write_text(src)
        tmp = folder / f"fx_{digest}.{os.getpid()}.tmp.so"
        subprocess.run(
            ["cc", "-std=gnu99", "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
             "-Wall", "-Werror", "-Wno-unused-function", str(c_file), "-o", str(tmp), "-lm"],
            check=True, capture_output=True, text=True,
        )
        tmp.replace(lib)
    dll = ctypes.CDLL(str(lib))
    dll.fx_run.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_void_p]
    dll.fx_run.restype = None
    return dll


def emu_launcher(n_ema: int, n_win: int, col_idx: tuple[int, ...], fused: bool = True,
                 tuning: tuple[tuple[str, int], ...] = ()) -> Launcher:
    """A NumPy :class:`Launcher` running the kernels serially in C; ``fused``: group the rows
    with the fused grouping kernels (one thread per sub-block), else by the host's sort;
    ``tuning``: the source's tuning switches (``features_gpu.TUNING``)."""
    dll = _library(n_ema, n_win, tuple(int(c) for c in col_idx), tuple(tuning))
    index = {name: i for i, name in enumerate(_NAMES)}

    def launch(name: str, threads: int, params: np.ndarray) -> None:
        dll.fx_run(index[name], int(threads), params.ctypes.data)

    def blocks(name: str, n_blocks: int, threads: int, shared: int, params: np.ndarray) -> None:
        launch(name, n_blocks, params)

    return Launcher(np, lambda a: int(a.ctypes.data), launch, blocks if fused else None)
