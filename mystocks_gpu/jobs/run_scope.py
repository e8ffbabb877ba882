"""Where a job chunk runs: the device the scheduler granted, applied around the runner.

The scheduler places each chunk on a device of a worker (``gpu0``, ``gpu1``, ``cpu0``); the worker
builds a :class:`~mystocks_gpu.processors.job_kind.RunContext` for it with :func:`run_context` and
runs the runner inside :func:`device_scope`, which

* publishes the context (``current_run()`` in the runner's thread), and
* when the chunk computes on the GPU, makes the granted GPU the current CUDA device
  (``cupy.cuda.Device(n)`` as a context), so CuPy allocations and kernels of the runner land there;
  nothing is selected for a CPU chunk.

A chunk computes on the GPU only when its device is a GPU *and* the worker's backend
(``Settings.backend``, resolved once at start) is ``gpu``; a fake GPU inventory on a CPU-only
machine therefore runs its chunks on the CPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from mystocks_gpu.gpu_ops.backend import CPU, GPU
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.devices import Device
from mystocks_gpu.processors.job_kind import RUN_CONTEXT, RunContext
from mystocks_gpu.schemas.schema_store import SchemaStore

_GPU_ID = re.compile(r"gpu(\d+)")


def cuda_ordinal(device_id: str) -> int | None:
    """The CUDA ordinal of a GPU device id (``gpu3`` -> 3; discovery names GPUs ``gpu<ordinal>``)."""
    m = _GPU_ID.fullmatch(device_id)
    return int(m.group(1)) if m else None


def run_context(job_id: str, chunk: int, device_id: str, devices: Mapping[str, Device], worker_backend: str,
                settings: Settings | None = None, store: SchemaStore | None = None) -> RunContext:
    """The context of one chunk granted ``device_id`` on a worker whose backend resolved to
    ``worker_backend`` (``gpu``/``cpu``). ``devices``: the worker's inventory by id."""
    dev = devices.get(device_id)
    is_gpu = dev.is_gpu if dev is not None else cuda_ordinal(device_id) is not None
    ordinal = cuda_ordinal(device_id) if is_gpu else None
    backend = GPU if is_gpu and worker_backend == GPU and ordinal is not None else CPU
    return RunContext(job_id, int(chunk), device_id, backend, ordinal, settings, store)


@contextmanager
def device_scope(ctx: RunContext) -> Iterator[RunContext]:
    """Run the body as ``ctx``'s chunk: context published, its GPU current when it computes on one."""
    token = RUN_CONTEXT.set(ctx)
    try:
        if ctx.backend == GPU and ctx.cuda_device is not None:
            import cupy

            with cupy.cuda.Device(ctx.cuda_device):
                yield ctx
        else:
            yield ctx
    finally:
        RUN_CONTEXT.reset(token)
