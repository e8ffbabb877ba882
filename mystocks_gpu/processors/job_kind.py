"""The job-kind contract: a typed spec dataclass + a runner (+ optional chunker and combiner).

A workload module declares its kind as a constant (the job plane's registry,
:mod:`mystocks_gpu.jobs.kinds`, collects them)::

    KIND = JobKind("backtest", BacktestSpec, run_backtest, chunker=split_by_symbols,
                   combiner=merge_chunks, policy="chunked", devices="gpu")

* ``spec_cls`` -- a frozen dataclass deriving :class:`JobSpec`; :meth:`JobSpec.from_dict` checks
  field names and types, then calls its ``validate()``; ``memory_bytes()`` is the job's (per-chunk)
  memory estimate in bytes; ``data_range()`` names the input data it reads (part of the cache key).
* ``runner(spec, progress_cb, should_stop) -> dict`` -- ``progress_cb(fraction 0..1, message)``;
  raise :class:`JobStopped` when ``should_stop()`` turns true. Results must be JSON-serialisable.
* ``chunker(spec, n_devices) -> list[spec]`` -- optional split by data chunk (backtests).
* ``combiner(list[result]) -> dict`` -- merges chunk results in chunk order (default
  ``{"chunks": [...]}``).
* ``policy`` -- placement rule for the scheduler: ``batch`` (least-loaded device), ``training``
  (most free memory), ``chunked`` (chunks spread over free devices), ``realtime`` (a dedicated GPU).
* ``devices`` -- ``any``, ``gpu`` or ``cpu``.

This module is pure: no Kafka, no Redis.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.schemas.schema_store import SchemaStore

ProgressCb = Callable[[float, str], None]
Runner = Callable[[Any, ProgressCb, Callable[[], bool]], dict[str, Any]]
#: ``summarize(result) -> text`` printed by ``submit --wait`` (a ranked table, metrics...)
Summarizer = Callable[[dict[str, Any]], str]
#: ``report(result, directory, settings, job_id) -> path of index.html`` for ``submit --wait --report DIR``
#: (may read the job's full output back from its results topic)
Reporter = Callable[[dict[str, Any], Any, Any, str], Any]
Chunker = Callable[[Any, int], list[Any]]
Combiner = Callable[[list[dict[str, Any]]], dict[str, Any]]



@dataclass(frozen=True)
class RunContext:
    """What the job worker tells a runner about the run in progress (read with :func:`current_run`).

    ``device_id`` is the device the scheduler granted (``gpu1``, ``cpu0``); ``cuda_device`` its CUDA
    ordinal when it is a GPU; ``backend`` (``gpu``/``cpu``) is what the runner must compute on: ``gpu``
    only when the device is a GPU and the worker's ``Settings.backend`` resolved to the GPU, and then
    the worker has made ``cuda_device`` the current CUDA device around the runner. ``settings`` and
    ``store`` are the worker's settings and schema store (the one store of the process).
    """

    job_id: str
    chunk: int
    device_id: str = "cpu0"
    backend: str = "cpu"
    cuda_device: int | None = None
    settings: Settings | None = None
    store: SchemaStore | None = None


#: the run in progress, set by the worker around ``runner`` (None outside a worker)
RUN_CONTEXT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("run_context", default=None)


def current_run() -> RunContext | None:
    """The :class:`RunContext` of the run in progress in this thread, or None outside a worker."""
    return RUN_CONTEXT.get()

POLICIES = ("batch", "training", "chunked", "realtime")
DEVICE_TYPES = ("any", "gpu", "cpu")
MIB = 1 << 20


@dataclass(frozen=True)
class JobSpec:
    """Base of every kind's spec: typed fields, strict parsing, a memory estimate."""

    #: cap on the JSON size of a spec (bytes)
    MAX_JSON: ClassVar[int] = 1 << 20

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """Build and validate a spec from decoded JSON; :class:`JobSpecError` names the fault."""
        if not isinstance(data, Mapping):
            raise JobSpecError(f"spec must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise JobSpecError(f"unknown spec field(s): {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise JobSpecError(f"spec field {name!r} is required")
                continue
            kwargs[name] = _check_type(name, data[name], hints[name])
        spec = cls(**kwargs)
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Parse a JSON spec (see :meth:`from_dict`)."""
        if len(text) > cls.MAX_JSON:
            raise JobSpecError(f"spec JSON is {len(text)} bytes, over the {cls.MAX_JSON} byte limit")
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise JobSpecError(f"spec is not valid JSON: {exc}") from None
        except RecursionError:  # a nesting bomb ("[[[[...")
            raise JobSpecError("spec JSON is nested too deeply") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        """Cross-field checks; raise :class:`JobSpecError`. Default: none."""

    @classmethod
    def describe(cls) -> str:
        """The spec's documentation, printed by ``submit KIND --help`` (default: the docstring)."""
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def json_schema(cls) -> dict[str, Any] | None:
        """The spec's JSON schema, printed by ``submit KIND --print-schema`` (default: None)."""
        return None

    def memory_bytes(self) -> int:
        """Estimated peak device memory of one run (one chunk), bytes. Default 64 MiB."""
        return 64 * MIB

    def data_range(self) -> dict[str, Any] | None:
        """The input data the job reads (topic, symbols, time range...), for the cache key."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec: every field, defaults filled in (JSON-serialisable)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint (int/float/str/bool/list/dict/Optional/Any)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(name, value, a)
            except JobSpecError as exc:
                errors.append(str(exc))
        raise JobSpecError(errors[0] if errors else f"spec field {name!r}: bad value {value!r}")
    base = origin or hint
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise JobSpecError(f"spec field {name!r} must be a number, got {value!r}")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise JobSpecError(f"spec field {name!r} must be an integer, got {value!r}")
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise JobSpecError(f"spec field {name!r} must be true or false, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise JobSpecError(f"spec field {name!r} must be a string, got {value!r}")
        return value
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise JobSpecError(f"spec field {name!r} must be a list, got {value!r}")
        args = typing.get_args(hint)
        items = [_check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if base is tuple else items
    if base in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise JobSpecError(f"spec field {name!r} must be an object, got {value!r}")
        return dict(value)
    return value


@dataclass(frozen=True)
class JobKind:
    """A registered kind (see module docstring)."""

    name: str
    spec_cls: type[JobSpec]
    runner: Runner
    chunker: Chunker | None = None
    combiner: Combiner | None = None
    policy: str = "batch"
    devices: str = "any"
    description: str = ""
    #: optional presentation for the CLI: a text summary of a result, and an HTML/PNG report writer
    summarize: Summarizer | None = None
    report: Reporter | None = None
    #: result keys too bulky to print in the final status line (e.g. curves, tables)
    bulky_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"job kind name must be alphanumeric (with - or _), got {self.name!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.devices not in DEVICE_TYPES:
            raise ValueError(f"devices must be one of {DEVICE_TYPES}, got {self.devices!r}")
        if not (isinstance(self.spec_cls, type) and issubclass(self.spec_cls, JobSpec)
                and dataclasses.is_dataclass(self.spec_cls)):
            raise ValueError("spec_cls must be a dataclass deriving JobSpec")

    def parse(self, spec: Any) -> JobSpec:
        """A validated spec from a dict or a JSON string."""
        if isinstance(spec, str):
            return self.spec_cls.from_json(spec)
        return self.spec_cls.from_dict(spec if spec is not None else {})

    def chunks(self, spec: JobSpec, n_devices: int) -> list[JobSpec]:
        """The spec split into chunks (one chunk when the kind has no chunker)."""
        if self.chunker is None:
            return [spec]
        parts = list(self.chunker(spec, max(1, n_devices)))
        if not parts:
            raise JobSpecError(f"{self.name}: the chunker produced no chunk")
        return parts

    def combine(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Merge chunk results (a single chunk's result is returned as is)."""
        if self.combiner is not None:
            return self.combiner(results)
        return results[0] if len(results) == 1 else {"chunks": results}
