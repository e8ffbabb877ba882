"""GPU gauges for Prometheus, read at each scrape: utilisation, memory used/total and temperature of
every GPU a process uses, from NVML (``nvidia-ml-py``, the ``gpu`` extra) or from the device records
it is given (a job worker's fake inventory in tests). No GPU, or no NVML: no series (unknown is
never reported as 0).

Series (label ``device`` = ``gpu<N>``, ``name`` = the model):
``mystocks_gpu_utilization_ratio`` (0..1), ``mystocks_gpu_memory_used_bytes``,
``mystocks_gpu_memory_total_bytes``, ``mystocks_gpu_temperature_celsius``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mystocks_gpu.infra.devices import Device


def nvml_temperatures() -> dict[int, float]:
    """GPU core temperature (degrees C) by NVML index; empty without NVML or a driver."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return {i: float(pynvml.nvmlDeviceGetTemperature(pynvml.nvmlDeviceGetHandleByIndex(i), pynvml.NVML_TEMPERATURE_GPU))
                for i in range(pynvml.nvmlDeviceGetCount())}
    except Exception:  # no pynvml, no driver, a device that does not report it
        return {}


class GpuCollector(Collector):
    """Yields the GPU gauges of ``devices()`` (called at each scrape) at collection time."""

    def __init__(self, devices: Callable[[], list[Device]]) -> None:
        self._devices = devices

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gpus = [d for d in self._devices() if d.is_gpu]
        labels = ["device", "name"]
        util = GaugeMetricFamily("mystocks_gpu_utilization_ratio", "GPU busy fraction over NVML's sample period, 0..1", labels=labels)
        used = GaugeMetricFamily("mystocks_gpu_memory_used_bytes", "GPU memory in use, bytes", labels=labels)
        total = GaugeMetricFamily("mystocks_gpu_memory_total_bytes", "GPU memory, bytes", labels=labels)
        temp = GaugeMetricFamily("mystocks_gpu_temperature_celsius", "GPU core temperature, degrees C", labels=labels)
        temps = nvml_temperatures() if any(d.temperature_c is None for d in gpus) else {}
        for d in gpus:
            lv = [d.id, d.name]
            if d.utilization is not None:
                util.add_metric(lv, d.utilization)
            if d.total_bytes:
                used.add_metric(lv, d.total_bytes - d.free_bytes)
                total.add_metric(lv, d.total_bytes)
            t = d.temperature_c
            if t is None and d.id.startswith("gpu") and d.id[3:].isdigit():
                t = temps.get(int(d.id[3:]))
            if t is not None:
                temp.add_metric(lv, t)
        yield from (util, used, total, temp)


def register_gpu_metrics(registry: CollectorRegistry, devices: Callable[[], list[Device]]) -> GpuCollector:
    """Add the GPU gauges of ``devices()`` to ``registry`` (a worker's own registry)."""
    collector = GpuCollector(devices)
    registry.register(collector)
    return collector
