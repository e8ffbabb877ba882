"""The job-kind registry: every kind the job plane can run, by name.

Kinds are declared by the workloads (``processors/*``, as :class:`JobKind` constants) and listed
here statically; :func:`register_kind` adds one at run time (tests, extensions).
"""

from __future__ import annotations

from mystocks_gpu.jobs import builtin_kinds
from mystocks_gpu.processors.backtest.job import KIND as BACKTEST
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.processors.execution.execsim_job import KIND as EXECSIM
from mystocks_gpu.processors.job_kind import Chunker, Combiner, JobKind, JobSpec, Runner

_KINDS: dict[str, JobKind] = {k.name: k for k in (builtin_kinds.SLEEP, builtin_kinds.ECHO, BACKTEST, EXECSIM)}


def register_kind(name: str, spec_cls: type[JobSpec], runner: Runner, *, chunker: Chunker | None = None,
                  combiner: Combiner | None = None, policy: str = "batch", devices: str = "any",
                  description: str = "", replace: bool = False) -> JobKind:
    """Register a job kind; :class:`ValueError` on a duplicate name (unless ``replace``) or bad policy."""
    kind = JobKind(name, spec_cls, runner, chunker, combiner, policy, devices, description)
    if name in _KINDS and not replace:
        raise ValueError(f"job kind {name!r} is already registered")
    _KINDS[name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    """The registered kind ``name``; :class:`JobSpecError` lists the known kinds."""
    try:
        return _KINDS[name]
    except KeyError:
        raise JobSpecError(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}") from None


def kinds() -> dict[str, JobKind]:
    """Every registered kind by name."""
    return dict(_KINDS)
