"""The one place the array backend is chosen: ``auto`` -> GPU when CuPy and a CUDA device are
present, else CPU. Overridable by config (``backend = "cpu"``) or ``MYSTOCKS_BACKEND``.

Every operator in ``gpu_ops`` has a GPU implementation (CuPy kernels) and a CPU twin (numba
``@njit``) with the same signature; :func:`select` tells callers which to use, and
:func:`xp` returns the matching array module (``cupy`` or ``numpy``).
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.exceptions import BackendUnavailable

CPU = "cpu"
GPU = "gpu"


@lru_cache(maxsize=1)
def gpu_available() -> tuple[bool, str]:
    """``(True, device name)`` when CuPy imports and sees a CUDA device, else ``(False, reason)``."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or CUDA libs missing
        return False, f"CuPy not importable: {type(exc).__name__}: {exc}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA runtime/driver: {exc}"
    if n < 1:
        return False, "no CUDA device"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return True, name


def select(requested: str | None = None) -> str:
    """Resolve ``auto``/``cpu``/``gpu`` (default: ``$MYSTOCKS_BACKEND`` or ``auto``) to ``cpu``/``gpu``.

    Raises :class:`BackendUnavailable` when ``gpu`` is asked for and cannot be had.
    """
    req = (requested or os.environ.get("MYSTOCKS_BACKEND") or "auto").lower()
    if req == CPU:
        return CPU
    ok, why = gpu_available()
    if req == GPU:
        if not ok:
            raise BackendUnavailable(f"backend 'gpu' requested but unavailable: {why}")
        return GPU
    if req != "auto":
        raise BackendUnavailable(f"unknown backend {req!r}; use auto, cpu or gpu")
    return GPU if ok else CPU


def xp(backend: str) -> ModuleType:
    """The array module for a resolved backend: ``cupy`` for ``gpu``, ``numpy`` for ``cpu``."""
    if backend == GPU:
        import cupy

        return cupy
    return np


def to_host(a: Any) -> np.ndarray:
    """Copy a NumPy or CuPy array to a NumPy array (no copy for NumPy input)."""
    if isinstance(a, np.ndarray):
        return a
    return a.get()


def xp_errstate(xp_mod: Any, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
    """``numpy.errstate(**kwargs)`` when ``xp_mod`` is NumPy; a no-op context on CuPy (which does
    not warn on floating-point errors), so array programs written once for both can silence them."""
    return np.errstate(**kwargs) if xp_mod is np else contextlib.nullcontext()
