"""Job kinds: typed specs with validation and memory estimates, runners, chunkers.

Public names: :func:`register_kind`, :func:`get_kind`, :func:`kinds`, :class:`JobSpec`,
:class:`JobKind`, :class:`JobSpecError`, :class:`JobStopped`.
"""

from mystocks_gpu.processors.jobs.exceptions import JobSpecError, JobStopped
from mystocks_gpu.processors.jobs.registry import JobKind, JobSpec, get_kind, kinds, register_kind

__all__ = ["JobKind", "JobSpec", "JobSpecError", "JobStopped", "get_kind", "kinds", "register_kind"]
