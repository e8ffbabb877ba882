"""Device discovery for workers: CUDA GPUs via CuPy (and NVML for utilisation), else the CPU.

``discover()`` returns :class:`Device` records with total/free memory (bytes) and utilisation
(0..1). A GPU's utilisation comes from NVML (``nvidia-ml-py``, the ``pynvml`` module, an optional
dependency of the ``gpu`` extra); without NVML it is ``None`` -- unknown, never a made-up 0. Tests and dry runs install a fake inventory with
:func:`set_fake_inventory` (or the worker's ``--fake-devices`` option), which ``discover`` then
returns as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError


@dataclass(frozen=True)
class Device:
    """One compute device of a worker. Memory in bytes; ``utilization`` in 0..1, or None when it
    cannot be measured (a GPU without NVML; a fake device that does not give one)."""

    id: str
    kind: str  # "gpu" | "cpu"
    name: str = ""
    total_bytes: int = 0
    free_bytes: int = 0
    utilization: float | None = None
    #: name of the real-time processor that holds this device (never given to batch jobs)
    reserved_for: str | None = None
    #: GPU temperature, degrees Celsius (NVML), None when unknown
    temperature_c: float | None = None

    @property
    def is_gpu(self) -> bool:
        """True for a GPU."""
        return self.kind == "gpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (heartbeats, ``GET /workers``)."""
        return {"id": self.id, "kind": self.kind, "name": self.name, "total_bytes": self.total_bytes,
                "free_bytes": self.free_bytes, "utilization": self.utilization, "reserved_for": self.reserved_for,
                "temperature_c": self.temperature_c}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        """Inverse of :meth:`to_dict`."""
        util, temp = d.get("utilization"), d.get("temperature_c")
        return cls(str(d["id"]), str(d.get("kind", "cpu")), str(d.get("name", "")), int(d.get("total_bytes", 0)),
                   int(d.get("free_bytes", 0)), float(util) if util is not None else None, d.get("reserved_for"),
                   float(temp) if temp is not None else None)


_FAKE: tuple[Device, ...] | None = None


def set_fake_inventory(devices: Sequence[Device] | None) -> None:
    """Make :func:`discover` return ``devices`` (None restores real discovery)."""
    global _FAKE
    _FAKE = tuple(devices) if devices is not None else None


def parse_fake_inventory(text: str) -> list[Device]:
    """Devices from JSON (or ``@FILE``): a list of objects with ``id``, ``kind`` (gpu/cpu),
    ``total_mb``/``free_mb`` (or ``total_bytes``/``free_bytes``), ``utilization`` (0..1; absent =
    unknown), ``temperature_c`` (absent = unknown), ``name``."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read fake device inventory {text[1:]}: {exc}") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"fake device inventory is not valid JSON: {exc}") from None
    if not isinstance(items, list) or not items:
        raise ConfigError("fake device inventory must be a non-empty JSON list of devices")
    out: list[Device] = []
    for i, d in enumerate(items):
        if not isinstance(d, dict) or "id" not in d:
            raise ConfigError(f"fake device #{i} must be an object with an 'id'")
        kind = d.get("kind", "gpu")
        if kind not in ("gpu", "cpu"):
            raise ConfigError(f"fake device {d['id']}: kind must be gpu or cpu")
        total = int(d.get("total_bytes", int(d.get("total_mb", 16384)) << 20))
        free = int(d.get("free_bytes", int(d.get("free_mb", total >> 20)) << 20))
        util = d.get("utilization")
        if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 <= util <= 1):
            raise ConfigError(f"fake device {d['id']}: utilization must be a number within 0..1, got {util!r}")
        temp = d.get("temperature_c")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float))):
            raise ConfigError(f"fake device {d['id']}: temperature_c must be a number, got {temp!r}")
        out.append(Device(str(d["id"]), kind, str(d.get("name", f"fake-{kind}")), total, min(free, total),
                          float(util) if util is not None else None, d.get("reserved_for"),
                          float(temp) if temp is not None else None))
    if len({d.id for d in out}) != len(out):
        raise ConfigError("fake device ids must be unique")
    return out


def discover(prefer: str = "auto") -> list[Device]:
    """The devices of this machine. ``prefer``: ``auto`` (GPUs when present, else the CPU),
    ``gpu`` (GPUs required: :class:`ConfigError` when none) or ``cpu``."""
    if _FAKE is not None:
        return list(_FAKE)
    if prefer != "cpu":
        gpus = _cuda_devices()
        if gpus:
            return gpus
        if prefer == "gpu":
            raise ConfigError("backend gpu requested but no CUDA device was found (CuPy/NVML)")
    return [cpu_device()]


def _cuda_devices() -> list[Device]:
    """GPUs via CuPy (memory) and NVML (utilisation); NVML alone when CuPy is missing."""
    util = _nvml_utilization()
    try:
        import cupy  # type: ignore[import-not-found]

        n = cupy.cuda.runtime.getDeviceCount()
        out = []
        for i in range(n):
            with cupy.cuda.Device(i):
                free, total = cupy.cuda.runtime.memGetInfo()
            name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            out.append(Device(f"gpu{i}", "gpu", name, int(total), int(free), util.get(i)))
        return out
    except Exception:  # no CuPy, no driver, no device
        pass
    return _nvml_devices()


def _nvml() -> Any:
    """The initialised ``pynvml`` module (from ``nvidia-ml-py``); raises when absent or no driver."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    return pynvml


def _nvml_utilization() -> dict[int, float]:
    """GPU utilisation (0..1, NVML's busy fraction over its last sample period) by CUDA ordinal;
    empty when NVML is not installed or has no driver. NVML enumerates devices like CUDA with the
    default ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; without ``CUDA_VISIBLE_DEVICES`` remapping the indices agree."""
    try:
        nv = _nvml()
        return {i: nv.nvmlDeviceGetUtilizationRates(nv.nvmlDeviceGetHandleByIndex(i)).gpu / 100.0
                for i in range(nv.nvmlDeviceGetCount())}
    except Exception:  # no pynvml, no driver, a device that does not report utilisation
        return {}


def _nvml_devices() -> list[Device]:
    try:
        nv = _nvml()
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            name = nv.nvmlDeviceGetName(h)
            out.append(Device(f"gpu{i}", "gpu", name.decode() if isinstance(name, bytes) else str(name),
                              int(mem.total), int(mem.free), nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0))
        return out
    except Exception:
        return []


def cpu_device() -> Device:
    """The CPU as one device: RAM total/available (bytes), 1-minute load / cores as utilisation."""
    total = free = 0
    try:
        info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.split(":")[0] in ("MemTotal", "MemAvailable")}
        total, free = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    except (OSError, ValueError, IndexError):
        pass
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = free = 1 << 30
    try:
        util = min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        util = 0.0
    name = "cpu"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                name = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Device("cpu0", "cpu", f"{name} x{os.cpu_count() or 1}", int(total), int(free), float(util))
