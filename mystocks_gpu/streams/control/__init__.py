"""The job control plane: the Faust control app (job table, scheduling, status), its web and
WebSocket server, the worker process and the client helpers.

Public names: :class:`JobsConfig`, :class:`ControlCore`, :class:`ControlApp` (lazy),
:class:`JobWorker` (lazy).
"""

from mystocks_gpu.streams.control.config import JobsConfig
from mystocks_gpu.streams.control.state import ControlCore, Effects

__all__ = ["ControlCore", "Effects", "JobsConfig"]
