"""``RiskProcessorConfig``: the frozen, validated settings of the streaming risk processor, and how
they are read from a TOML or JSON file (``mystocks-gpu run risk --processor-config FILE``).

File layout (every key optional; unknown keys are errors)::

    [risk]                      # RiskConfig (gpu_ops/risk/config.py): the maths
    lam = 0.94                  # EWMA decay per return interval
    confidences = [0.95, 0.99]
    horizon = 1.0               # VaR horizon in return intervals (sqrt scaling)
    window = 250                # return intervals kept for historical VaR
    interval_ns = 86400000000000
    limit_confidence = 0.99
    limit_var = "parametric"    # or "historical"

    [processor]
    emit = "interval"           # "interval" (deterministic) or "batch"
    emit_interval_ns = 1000000000
    late_ns = 5000000000
    stale_after_ns = 60000000000
    sectors_file = "sectors.csv"  # symbol,sector per line (or a JSON object); relative to the file

    [sectors]                   # the sector map inline (symbol = "sector"), instead of / besides the file
    AAPL = "tech"

    [default_limits]            # limits an account leaves null (unset here = +inf = never breached)
    concentration = 0.25
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.risk import DEFAULT_LIMITS, LIMIT_NAMES, RiskConfig, RiskConfigError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

EMIT_MODES = ("interval", "batch")


@dataclass(frozen=True)
class RiskProcessorConfig:
    """Settings of :class:`~mystocks_gpu.processors.risk.risk_processor.RiskProcessor` (each is tested):

    - ``risk``: the risk maths (:class:`RiskConfig`: EWMA decay, confidences, horizon, window,
      return interval, limit VaR). ``n_sectors`` is set from the sector map.
    - ``emit`` ("interval"): when ``risk.metrics`` records are produced. "interval": one record per
      account each time the price stream's event time crosses a multiple of ``emit_interval_ns``,
      covering every price before that boundary: the output depends only on the input sequence,
      never on how it was cut into micro-batches, so a restored worker reproduces it exactly.
      "batch": one record per account at the end of every micro-batch (lowest latency; the cut
      points, hence the records, depend on timing).
    - ``emit_interval_ns`` (1 s): the emit window.
    - ``late_ns`` (5 s): stale/late price policy. Prices are applied in arrival order; a price
      older than the newest one applied is applied *at* the newest time (its event time is clamped,
      so the order of the stream decides), unless it is more than ``late_ns`` older: then it goes
      to the DLQ (error class ``late``) and is not applied.
    - ``stale_after_ns`` (60 s): price gaps. A symbol without a new price keeps its last price (a
      zero return over the gap, ``gpu_ops/risk/step.py``); once its last price is older than this
      at a snapshot, the position is flagged ``stale`` in ``risk.metrics``.
    - ``sectors`` (empty): symbol -> sector name. With a non-empty map, the map is also the
      universe: positions in a symbol outside it go to the positions DLQ (``UnknownSymbol``);
      with none, any well-formed symbol is accepted and ``by_sector`` is empty.
    - ``default_limits`` (+inf each = off): the limit an account gets when its positions record
      leaves it null, in ``LIMIT_NAMES`` order (var, gross_exposure, concentration, drawdown).
    - ``backend`` ("auto"): where the account state lives and the maths run.
    - ``output_topic`` ("risk.metrics"), ``alerts_topic`` ("alerts"), ``positions_topic``
      ("positions").
    """

    risk: RiskConfig = field(default_factory=RiskConfig)
    emit: str = "interval"
    emit_interval_ns: int = 1_000_000_000
    late_ns: int = 5_000_000_000
    stale_after_ns: int = 60_000_000_000
    sectors: Mapping[str, str] = field(default_factory=dict)
    default_limits: tuple[float, ...] = DEFAULT_LIMITS
    backend: str = "auto"
    output_topic: str = "risk.metrics"
    alerts_topic: str = "alerts"
    positions_topic: str = "positions"

    def __post_init__(self) -> None:
        if self.emit not in EMIT_MODES:
            raise ConfigError(f"risk processor: emit must be one of {EMIT_MODES}, got {self.emit!r}")
        for name in ("emit_interval_ns", "late_ns", "stale_after_ns"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"risk processor: {name} must be an integer >= 1 (ns), got {v!r}")
        if len(self.default_limits) != len(LIMIT_NAMES) or not all(
                isinstance(x, (int, float)) and (x >= 0 or math.isnan(x)) for x in self.default_limits):
            raise ConfigError(f"risk processor: default_limits must be {len(LIMIT_NAMES)} numbers >= 0 "
                              f"({', '.join(LIMIT_NAMES)})")
        for k, v in self.sectors.items():
            if not (isinstance(k, str) and k and isinstance(v, str) and v):
                raise ConfigError(f"risk processor: bad sector map entry {k!r} -> {v!r}")
        if self.backend not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"risk processor: backend must be auto, cpu or gpu, got {self.backend!r}")
        want = max(1, len(self.sector_names))
        if self.risk.n_sectors != want:
            object.__setattr__(self, "risk", replace(self.risk, n_sectors=want))

    @property
    def sector_names(self) -> tuple[str, ...]:
        """Sector names in code order (sorted)."""
        return tuple(sorted(set(self.sectors.values())))


def _sector_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"sector map {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"sector map {path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"sector map {path}: expected an object symbol -> sector")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConfigError(f"sector map {path}:{n}: expected 'symbol,sector', got {line!r}")
        if parts[0].lower() == "symbol" and n == 1:
            continue  # a header line
        out[parts[0]] = parts[1]
    return out


def _typed(section: str, data: Mapping[str, Any], cls: type, allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"risk processor config [{section}]: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(allowed))})")
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data:
            v = data[f.name]
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return out


def load_processor_config(path: str | Path | None = None, data: Mapping[str, Any] | None = None,
                          **overrides: Any) -> RiskProcessorConfig:
    """The config from a TOML/JSON file or an equivalent mapping (module docstring); ``overrides``
    are :class:`RiskProcessorConfig` fields (e.g. ``backend``, ``output_topic``)."""
    base = Path(".")
    if path is not None:
        p = Path(path)
        base = p.parent
        try:
            raw = p.read_text()
        except OSError as exc:
            raise ConfigError(f"risk processor config {p}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw) if p.suffix.lower() == ".json" else tomllib.loads(raw)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"risk processor config {p}: {exc}") from None
    data = dict(data or {})
    unknown = sorted(set(data) - {"risk", "processor", "sectors", "default_limits"})
    if unknown:
        raise ConfigError(f"risk processor config: unknown section(s) {', '.join(unknown)}")
    risk_keys = {f.name for f in fields(RiskConfig)} - {"n_sectors"}
    try:
        risk = RiskConfig(**_typed("risk", data.get("risk", {}), RiskConfig, risk_keys))
    except (RiskConfigError, TypeError) as exc:
        raise ConfigError(f"risk processor config [risk]: {exc}") from None
    proc = dict(data.get("processor", {}))
    sectors: dict[str, str] = {}
    if "sectors_file" in proc:
        sectors.update(_sector_file(base / str(proc.pop("sectors_file"))))
    sectors.update({str(k): str(v) for k, v in dict(data.get("sectors", {})).items()})
    allowed = {"emit", "emit_interval_ns", "late_ns", "stale_after_ns", "backend", "output_topic",
               "alerts_topic", "positions_topic"}
    kw = _typed("processor", proc, RiskProcessorConfig, allowed)
    lim = dict(data.get("default_limits", {}))
    bad = sorted(set(lim) - set(LIMIT_NAMES))
    if bad:
        raise ConfigError(f"risk processor config [default_limits]: unknown limit(s) {', '.join(bad)} "
                          f"(known: {', '.join(LIMIT_NAMES)})")
    limits = tuple(float(lim.get(n, d)) for n, d in zip(LIMIT_NAMES, DEFAULT_LIMITS, strict=True))
    kw.update(overrides)
    return RiskProcessorConfig(risk=risk, sectors=sectors, default_limits=limits, **kw)
