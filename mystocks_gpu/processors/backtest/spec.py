"""The backtest job spec: one frozen, validated object (:class:`BacktestSpec`).

A client submits it as JSON (``JobCommand.spec_json`` with ``kind="backtest"``); :meth:`BacktestSpec.from_dict`
parses and validates it, :meth:`BacktestSpec.to_dict` gives it back, and :meth:`BacktestSpec.normalised`
is the canonical form (sorted keys, sorted symbols, sorted de-duplicated grid values, canonical
strategy name) from which :meth:`BacktestSpec.cache_key` hashes the result-cache key.

Fields (defaults in brackets):

- ``universe``: list of symbols or ``"all"`` [``"all"``]; stored sorted and de-duplicated.
- ``start`` / ``end``: ns since the epoch (UTC) or an ISO-8601 date/time string (naive = UTC); the
  run covers bars with ``start <= ts_event < end`` [unbounded]. ``"2021-01-01"`` as ``end``
  therefore includes all of 2020.
- ``bar_topic``: bar source, ``md.bars.<n><s|m|h|d>``, optionally with a ``.<dataset>`` suffix for a
  separate history (``md.bars.1d.sp500``, created by the user) [``md.bars.1d``].
- ``strategy``: ``ma_cross`` | ``breakout`` | ``zscore`` (alias ``bollinger``) | ``rsi`` | ``signal``
  [``ma_cross``]; ``params``: parameter -> list of values, the grid is their Cartesian product; see
  ``gpu_ops.backtest.strategies`` for parameters and rules (combinations such as ``fast >= slow``
  are dropped from the grid; a grid with none left is rejected).
- ``initial_cash`` [100_000]; ``sizing``: ``fraction`` (of cash/equity, ``size`` in (0, 1], default
  1.0) | ``fixed`` (cash amount per entry, ``size`` required).
- ``fees`` (fraction of notional, [0.001]), ``fixed_fees`` (per order, [0]), ``slippage`` (fraction, [0]).
- ``direction``: ``long_only`` | ``long_short`` [``long_only``]; ``execution``: ``next_open`` (signal
  at bar t's close fills at bar t+1's open: no look-ahead) | ``close`` (fills at bar t's close;
  look-ahead risk when the signal uses that close) [``next_open``].
- ``bars_per_year`` for annualisation [252]; ``metric`` to rank by [``sharpe``]; ``top_n`` rows of
  the job result's top table [20, at most 20; every row always goes to ``results.backtest``];
  ``n_curves`` equity curves of the best cells, published on ``results.backtest`` [5].
- ``signal_topic`` / ``signal_column``: where the ``signal`` strategy's matrix comes from (required
  for it, rejected otherwise).
- Limits: ``max_grid`` parameter sets [10_000; at most 1_000_000 (``MAX_PARAM_SETS``), checked on
  the product of the value counts before anything is expanded], ``max_cells`` = parameter sets x
  symbols x bars [10**12] (checked once the data is known, before simulating),
  ``memory_budget_bytes`` per chunk [1 GiB]: the engine's working set, the window of history it
  reads at a time; larger histories and grids are chunked, not refused.

Every violation raises :class:`~mystocks_gpu.processors.exceptions.InvalidSpec` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd

from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError
from mystocks_gpu.gpu_ops.backtest.stats import STAT_COLUMNS
from mystocks_gpu.gpu_ops.backtest.strategies import (
    canonical_grid,
    canonical_strategy,
    count_valid,
    grid_size,
)
from mystocks_gpu.processors.exceptions import InvalidSpec

_BAR_TOPIC = re.compile(r"^md\.bars\.[1-9][0-9]*[smhd](\.[A-Za-z0-9_-]+)?$")
_LIMIT_FIELDS = ("max_grid", "max_cells", "memory_budget_bytes")
MIN_MEMORY_BUDGET = 4096
#: the most parameter sets one job may have (``max_grid`` cannot be raised above it): every
#: (symbol, parameter set) is a published row (~150 bytes) and 144 bytes of state
MAX_PARAM_SETS = 1_000_000


def to_ns(value: Any, name: str) -> int | None:
    """ns since the epoch from an int (ns) or an ISO-8601 string (naive = UTC); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidSpec(f"{name}: {value!r} is not a time")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError) as exc:
            raise InvalidSpec(
                f"{name}: cannot parse {value!r} as an ISO date/time ({exc})"
            ) from None
        if ts is pd.NaT:
            raise InvalidSpec(f"{name}: {value!r} is not a time")
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return int(ts.value)
    raise InvalidSpec(
        f"{name}: expected ns (int) or an ISO date string, got {type(value).__name__}"
    )


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidSpec(f"{name}: {value!r} is not finite")
    return v


def _int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise InvalidSpec(f"{name}: expected an integer, got {value!r}")
    if int(value) < lo:
        raise InvalidSpec(f"{name}: {int(value)} is below the minimum {lo}")
    return int(value)


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidSpec(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


class FrozenGrid(Mapping[str, tuple[float | int, ...]]):
    """Read-only parameter grid (name -> sorted tuple of values); picklable."""

    def __init__(self, data: Mapping[str, Sequence[float | int]]) -> None:
        self._d = {k: tuple(v) for k, v in data.items()}

    def __getitem__(self, key: str) -> tuple[float | int, ...]:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"FrozenGrid({self._d!r})"

    def __reduce__(self) -> tuple[type, tuple[dict[str, tuple[float | int, ...]]]]:
        return FrozenGrid, (self._d,)


@dataclass(frozen=True)
class BacktestSpec:
    """A validated backtest job (see the module doc for fields, defaults and rules)."""

    universe: tuple[str, ...] | str = "all"
    start: int | None = None
    end: int | None = None
    bar_topic: str = "md.bars.1d"
    strategy: str = "ma_cross"
    params: Mapping[str, Sequence[float | int]] = field(default_factory=dict)
    initial_cash: float = 100_000.0
    sizing: str = "fraction"
    size: float | None = None
    fees: float = 0.001
    fixed_fees: float = 0.0
    slippage: float = 0.0
    direction: str = "long_only"
    execution: str = "next_open"
    bars_per_year: float = 252.0
    metric: str = "sharpe"
    top_n: int | None = None
    n_curves: int = 5
    signal_topic: str | None = None
    signal_column: str | None = None
    max_grid: int = 10_000
    max_cells: int = 10**12
    memory_budget_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        # universe
        u = self.universe
        if isinstance(u, str):
            if u != "all":
                raise InvalidSpec(f"universe: {u!r}; give a list of symbols or 'all'")
        else:
            if not isinstance(u, (list, tuple)) or not u:
                raise InvalidSpec("universe: empty; give a non-empty list of symbols or 'all'")
            bad = [s for s in u if not isinstance(s, str) or not s.strip()]
            if bad:
                raise InvalidSpec(f"universe: invalid symbol(s) {bad[:5]!r}")
            set_(self, "universe", tuple(sorted(set(u))))
        # time range
        start, end = to_ns(self.start, "start"), to_ns(self.end, "end")
        if start is not None and end is not None and start >= end:
            raise InvalidSpec(f"inverted or empty time range: start={start} >= end={end} (ns)")
        set_(self, "start", start)
        set_(self, "end", end)
        if not isinstance(self.bar_topic, str) or not _BAR_TOPIC.match(self.bar_topic):
            raise InvalidSpec(
                f"bar_topic: {self.bar_topic!r}; expected md.bars.<n><s|m|h|d>[.<dataset>], e.g. md.bars.1d"
            )
        # strategy + grid
        try:
            strat = canonical_strategy(self.strategy)
            grid = canonical_grid(strat, self.params)
        except BacktestInputError as exc:
            raise InvalidSpec(str(exc)) from None
        set_(self, "strategy", strat)
        max_grid = _int(self.max_grid, "max_grid", 1)
        if max_grid > MAX_PARAM_SETS:
            raise InvalidSpec(f"max_grid: {max_grid:,} is above the ceiling of {MAX_PARAM_SETS:,} parameter "
                              "sets per job; split the grid into several jobs")
        n = grid_size(grid)  # the product of the value counts: nothing is expanded before this check
        if n > max_grid:
            per_symbol_mb = n * 300 / 1e6
            raise InvalidSpec(
                f"params: the grid has {n:,} parameter sets, more than max_grid={max_grid:,} "
                f"(each symbol would publish up to {n:,} result rows, ~{per_symbol_mb:,.0f} MB, and hold "
                f"~{n * 144 / 1e6:,.0f} MB of state); narrow the value lists or split the grid into jobs"
                + (f" (max_grid can be raised up to {MAX_PARAM_SETS:,})" if n <= MAX_PARAM_SETS else "")
            )
        try:
            n_valid = count_valid(strat, grid)
        except BacktestInputError as exc:
            raise InvalidSpec(str(exc)) from None
        if n_valid == 0:
            rule = {"ma_cross": "fast < slow", "zscore": "exit_z <= entry_z", "rsi": "lower <= upper",
                    "signal": "threshold_exit <= threshold_long"}.get(strat, "")
            raise InvalidSpec(f"no valid parameter combination for {strat!r}: every combination breaks {rule}")
        object.__setattr__(self, "_n_valid", n_valid)
        set_(self, "params", FrozenGrid(grid))
        # money
        cash = _num(self.initial_cash, "initial_cash")
        if cash <= 0:
            raise InvalidSpec(f"initial_cash: {cash} must be > 0")
        set_(self, "initial_cash", cash)
        sizing = _choice(self.sizing, "sizing", ("fraction", "fixed"))
        if self.size is None:
            if sizing == "fixed":
                raise InvalidSpec("size: sizing='fixed' needs size (cash amount per entry)")
            size = 1.0
        else:
            size = _num(self.size, "size")
        if sizing == "fraction" and not 0 < size <= 1:
            raise InvalidSpec(f"size: fraction {size} must be in (0, 1]")
        if sizing == "fixed" and size <= 0:
            raise InvalidSpec(f"size: fixed amount {size} must be > 0")
        set_(self, "size", size)
        for name, hi in (("fees", 1.0), ("fixed_fees", math.inf), ("slippage", 1.0)):
            v = _num(getattr(self, name), name)
            if v < 0:
                raise InvalidSpec(f"{name}: {v} is negative")
            if v >= hi:
                raise InvalidSpec(f"{name}: {v} must be < {hi}")
            set_(self, name, v)
        _choice(self.direction, "direction", ("long_only", "long_short"))
        _choice(self.execution, "execution", ("next_open", "close"))
        bpy = _num(self.bars_per_year, "bars_per_year")
        if bpy <= 0:
            raise InvalidSpec(f"bars_per_year: {bpy} must be > 0")
        set_(self, "bars_per_year", bpy)
        _choice(self.metric, "metric", STAT_COLUMNS)
        if self.top_n is not None:
            set_(self, "top_n", _int(self.top_n, "top_n", 1))
        set_(self, "n_curves", _int(self.n_curves, "n_curves", 0))
        # signal source
        if strat == "signal":
            for name in ("signal_topic", "signal_column"):
                v = getattr(self, name)
                if not isinstance(v, str) or not v.strip():
                    raise InvalidSpec(f"{name}: required for strategy 'signal'")
        else:
            for name in ("signal_topic", "signal_column"):
                if getattr(self, name) is not None:
                    raise InvalidSpec(
                        f"{name}: only valid with strategy 'signal' (strategy is {strat!r})"
                    )
        set_(self, "max_grid", max_grid)
        set_(self, "max_cells", _int(self.max_cells, "max_cells", 1))
        set_(
            self,
            "memory_budget_bytes",
            _int(self.memory_budget_bytes, "memory_budget_bytes", MIN_MEMORY_BUDGET),
        )

    def __hash__(self) -> int:
        return hash(json.dumps(self.normalised(), sort_keys=True))

    @property
    def n_param_sets(self) -> int:
        """Parameter sets that will run (the grid after dropping invalid combinations; counted,
        never expanded)."""
        return int(getattr(self, "_n_valid", 0)) or count_valid(self.strategy, self.params)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BacktestSpec:
        """Parse a JSON-like mapping; unknown keys are rejected."""
        if not isinstance(d, Mapping):
            raise InvalidSpec(f"backtest spec must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidSpec(f"unknown field(s) {unknown}; known: {sorted(names)}")
        kw = dict(d)
        if isinstance(kw.get("universe"), list):
            kw["universe"] = tuple(kw["universe"])
        if "params" in kw and not isinstance(kw["params"], Mapping):
            raise InvalidSpec("params: expected an object of parameter -> list of values")
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> BacktestSpec:
        """Parse ``JobCommand.spec_json``."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSpec(f"spec_json is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal spec."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "universe":
                v = v if isinstance(v, str) else list(v)
            elif f.name == "params":
                v = {k: list(vals) for k, vals in v.items()}
            out[f.name] = v
        return out

    def to_json(self) -> str:
        """Canonical JSON of :meth:`normalised`."""
        return json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))

    def normalised(self) -> dict[str, Any]:
        """Canonical JSON-able dict: keys sorted, symbols and grid values sorted and de-duplicated,
        canonical strategy name, numbers as float/int. Equal for specs that differ only in key or
        value order (or in strategy alias)."""
        d = self.to_dict()
        d["params"] = {k: sorted(v) for k, v in sorted(d["params"].items())}
        return {k: d[k] for k in sorted(d)}

    def cache_key(self) -> str:
        """sha256 hex of the normalised spec without the execution limits (max_grid, max_cells,
        memory_budget_bytes), which do not change results."""
        d = {k: v for k, v in self.normalised().items() if k not in _LIMIT_FIELDS}
        return hashlib.sha256(
            json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BacktestSpec):
            return NotImplemented
        return self.normalised() == other.normalised()
