"""Stream processors by name, for ``mystocks-gpu run NAME``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.streams.processor import Processor


def _aggregate(output_topic: str | None = None, backend: str = "auto", store: SchemaStore | None = None) -> Processor[Any]:
    """The running aggregate is a numba CPU kernel whatever the backend (it is the runtime's probe)."""
    from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor

    return RunningAggregateProcessor(**({"output_topic": output_topic} if output_topic else {}), store=store)


def _features(output_topic: str | None = None, backend: str = "auto", store: SchemaStore | None = None) -> Processor[Any]:
    from mystocks_gpu.processors.tick_features import FeaturesProcessorConfig, TickFeaturesProcessor

    return TickFeaturesProcessor(FeaturesProcessorConfig(backend=backend), output_topic=output_topic, store=store)


def _execution(output_topic: str | None = None, backend: str = "auto", **kw: Any) -> Processor[Any]:
    """orders.parent -> orders.schedule + orders.scored (``--output-topic T``: scores to T, schedules
    to T with ``.scored`` replaced by ``.schedule``); ``kw``: ``store``, ``cfg``."""
    from mystocks_gpu.processors.execution.exec_processor import make

    return make(output_topic=output_topic, backend=backend, **kw)


PROCESSORS: dict[str, Callable[..., Processor[Any]]] = {"aggregate": _aggregate, "features": _features,
                                                        "execution": _execution}


def register(name: str, factory: Callable[..., Processor[Any]]) -> None:
    """Make a processor available to ``mystocks-gpu run``."""
    PROCESSORS[name] = factory


def create(name: str, **kw: Any) -> Processor[Any]:
    """Instantiate a processor by name (keywords: ``output_topic``, ``backend`` = auto|cpu|gpu, ``store``:
    the process's :class:`SchemaStore`);
    :class:`ConfigError` lists the known ones."""
    try:
        factory = PROCESSORS[name]
    except KeyError:
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(sorted(PROCESSORS))}") from None
    return factory(**kw)
