"""The job plane: command/status protocol, the Faust control app (job table, scheduling, status)
with its HTTP/WebSocket server, the job worker, the kind registry, result cache, heartbeats, alerts.

Public names: :class:`JobsConfig`, :class:`ControlCore`, :class:`ControlApp` (lazy),
:class:`JobWorker` (lazy).
"""

from mystocks_gpu.jobs.control_state import ControlCore, Effects
from mystocks_gpu.jobs.jobs_config import JobsConfig

__all__ = ["ControlCore", "Effects", "JobsConfig"]
