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


def _features(output_topic: str | None = None, backend: str = "auto", store: SchemaStore | None = None,
              features: Any = None) -> Processor[Any]:
    """``features``: the ``[features]`` settings (``infra.config.FeaturesConfig``; default: the defaults)."""
    from mystocks_gpu.infra.config import FeaturesConfig
    from mystocks_gpu.processors.tick_features import TickFeaturesProcessor, config_from_settings

    cfg = config_from_settings(features or FeaturesConfig(), backend=backend)
    return TickFeaturesProcessor(cfg, output_topic=output_topic, store=store)


def _signals(output_topic: str | None = None, backend: str = "auto", model: str | None = None,
             kafka: Any = None, store: SchemaStore | None = None, model_load: str | None = None) -> Processor[Any]:
    """Live model scores (needs ``model``: a name on the models topic); ``model_load``: background
    (default) or in-batch (``--model-load``)."""
    from mystocks_gpu.processors.training.signals_processor import MODEL_LOADS, make_signals

    if model_load not in (None, *MODEL_LOADS):
        raise ConfigError(f"--model-load must be one of {', '.join(MODEL_LOADS)}, got {model_load!r}")
    return make_signals(model=model, output_topic=output_topic, backend=backend, kafka=kafka, store=store,
                        background_load=model_load != "in-batch")


def _execution(output_topic: str | None = None, backend: str = "auto", **kw: Any) -> Processor[Any]:
    """orders.parent -> orders.schedule + orders.scored (``--output-topic T``: scores to T, schedules
    to T with ``.scored`` replaced by ``.schedule``); ``kw``: ``store``, ``cfg``."""
    from mystocks_gpu.processors.execution.exec_processor import make

    return make(output_topic=output_topic, backend=backend, **kw)


def _risk(output_topic: str | None = None, backend: str = "auto", store: SchemaStore | None = None,
          config_file: str | None = None) -> Processor[Any]:
    """Streaming risk: prices + positions (side input) -> risk.metrics + alerts (``--processor-config``)."""
    from mystocks_gpu.processors.risk.risk_processor import make

    return make(output_topic, backend, store, config_file)


PROCESSORS: dict[str, Callable[..., Processor[Any]]] = {"aggregate": _aggregate, "features": _features,
                                                        "signals": _signals, "execution": _execution, "risk": _risk}
#: processors that take a ``--processor-config FILE`` (passed as ``config_file``)
CONFIGURABLE = {"risk"}


def register(name: str, factory: Callable[..., Processor[Any]]) -> None:
    """Make a processor available to ``mystocks-gpu run``."""
    PROCESSORS[name] = factory


def create(name: str, **kw: Any) -> Processor[Any]:
    """Instantiate a processor by name (keywords: ``output_topic``, ``backend`` = auto|cpu|gpu, ``store``:
    the process's :class:`SchemaStore`; ``model`` for ``signals``, which must be None for a factory that
    does not take it; ``kafka``, the connection settings, is passed to the factories that take it);
    :class:`ConfigError` lists the known ones."""
    try:
        factory = PROCESSORS[name]
    except KeyError:
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(sorted(PROCESSORS))}") from None
    if kw.get("config_file") is not None and name not in CONFIGURABLE:
        raise ConfigError(f"processor {name!r} takes no --processor-config (those that do: {', '.join(sorted(CONFIGURABLE))})")
    if kw.get("config_file") is None:
        kw.pop("config_file", None)
    import inspect

    params = inspect.signature(factory).parameters
    takes = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # ``**kw``: every keyword but the signals' / kafka
        takes |= {k for k in kw if k not in ("model", "model_load", "kafka")}
    extra = sorted(k for k, v in kw.items() if k not in takes and v is not None and k != "kafka")
    if extra:
        raise ConfigError(f"processor {name!r} takes no {', '.join('--' + k.replace('_', '-') for k in extra)}")
    return factory(**{k: v for k, v in kw.items() if k in takes})
