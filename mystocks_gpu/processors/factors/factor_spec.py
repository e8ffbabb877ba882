"""Specs of the factor job kinds: :class:`FactorsJobSpec` (``factors``: evaluate a library or a
list of expressions) and :class:`MineJobSpec` (``factors_mine``: search for new factors). Both
share :class:`FactorDataSpec` (the bars, the metrics, the memory budget, the combination).

Fields (defaults in brackets); every violation rejects the job at submit with the reason:

Data and metrics (both kinds)
  ``universe`` symbols or ``"all"`` [all]; ``start``/``end`` ns or ISO date (``start <= ts < end``)
  [unbounded]; ``bar_topic`` [``md.bars.1d``]; ``horizons`` forward-return horizons in bars
  [1, 5, 20]; ``quantiles`` [5]; ``drop_unbinnable_dates`` [true] (Alphalens); ``rank_horizon``
  the horizon the table is ranked by [first horizon]; ``top_n`` rows of the ranked table kept in
  the job result [20]; ``correlation_factors`` factors (best first) in the correlation matrix [30,
  0 = none].
Execution
  ``memory_budget_bytes`` [1 GiB]: factor values are evaluated in batches of factors and chunks of
  symbols that fit it (results do not depend on it); ``factor_batch`` factors per batch [0 = by
  budget]; ``publish_values`` write values to ``factors.values`` [true].
Combination
  ``combine`` ``icir`` | ``ridge`` | ``both`` [none]: walk-forward combination of
  ``combine_factors`` [the ``combine_top`` (10) best by |rank IC|], fitted at ``combine_horizon``
  [rank horizon], refitted every ``refit_every`` [21] dates after ``min_train_dates`` [60];
  ``ridge_alpha`` [1.0].
``factors``
  ``library`` ``alpha158`` | ``classic`` or a list of them; ``expressions`` ``{name: expression}``
  or a list of expressions (named by themselves). At least one factor; names unique.
``factors_mine``
  ``seed`` [0]; ``population`` candidates per generation [10,000]; ``generations`` [3];
  ``max_depth`` [4]; ``windows`` [5, 10, 20, 30, 60]; ``ops`` [all but comparisons/If];
  ``horizon`` the selection horizon [1] (must be in ``horizons``); ``min_abs_rank_ic`` [0.02];
  ``min_abs_icir`` [0.1]; ``max_corr`` [0.7]; ``max_kept`` [20]; ``elite`` [0.1];
  ``mutation_rate`` [0.5]; ``batch`` candidates per batched pass [0 = by budget].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.gpu_ops.factors import (
    CombineConfig,
    EngineConfig,
    EvalConfig,
    FactorError,
    MiningConfig,
    load_library,
    parse_many,
)
from mystocks_gpu.gpu_ops.factors.ops import DEFAULT_FIELDS
from mystocks_gpu.processors.backtest.spec import to_ns
from mystocks_gpu.processors.exceptions import InvalidSpec, JobSpecError
from mystocks_gpu.processors.job_kind import MIB, JobSpec

_BAR_TOPIC = re.compile(r"^md\.bars\.[1-9][0-9]*[smhd]$")
#: the smallest budget a spec may ask for (the engine's floor; one factor over a small panel)
MIN_MEMORY_BUDGET = 64 * 1024
#: the largest correlation matrix a job publishes (factors x factors)
MAX_CORRELATION_FACTORS = 300
COMBINE_METHODS = {"icir": ("icir",), "ridge": ("ridge",), "both": ("icir", "ridge")}


def _fail(msg: str) -> None:
    raise JobSpecError(msg)


@dataclass(frozen=True)
class FactorDataSpec(JobSpec):
    """Fields shared by both factor kinds (see the module docstring)."""

    universe: list[str] | str = "all"
    start: int | str | None = None
    end: int | str | None = None
    bar_topic: str = "md.bars.1d"
    horizons: list[int] = field(default_factory=lambda: [1, 5, 20])
    quantiles: int = 5
    drop_unbinnable_dates: bool = True
    rank_horizon: int | None = None
    top_n: int = 20
    correlation_factors: int = 30
    memory_budget_bytes: int = 1 << 30
    factor_batch: int = 0
    publish_values: bool = True
    combine: str | None = None
    combine_factors: list[str] | None = None
    combine_top: int = 10
    combine_horizon: int | None = None
    refit_every: int = 21
    min_train_dates: int = 60
    ridge_alpha: float = 1.0

    def validate(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.universe, str):
            if self.universe != "all":
                _fail(f"universe: {self.universe!r}; give a list of symbols or 'all'")
        else:
            if not self.universe:
                _fail("universe: empty; give a non-empty list of symbols or 'all'")
            bad = [s for s in self.universe if not s.strip()]
            if bad:
                _fail(f"universe: invalid symbol(s) {bad[:5]!r}")
            set_(self, "universe", sorted(set(self.universe)))
        try:
            start, end = to_ns(self.start, "start"), to_ns(self.end, "end")
        except InvalidSpec as exc:
            raise JobSpecError(str(exc)) from None
        if start is not None and end is not None and start >= end:
            _fail(f"inverted or empty time range: start={start} >= end={end} (ns)")
        set_(self, "start", start)
        set_(self, "end", end)
        if not _BAR_TOPIC.match(self.bar_topic):
            _fail(f"bar_topic: {self.bar_topic!r}; expected md.bars.<n><s|m|h|d>, e.g. md.bars.1d")
        if self.rank_horizon is not None and self.rank_horizon not in self.horizons:
            _fail(f"rank_horizon {self.rank_horizon} is not one of horizons {self.horizons}")
        if self.correlation_factors > MAX_CORRELATION_FACTORS:
            _fail(f"correlation_factors: {self.correlation_factors} is above the maximum {MAX_CORRELATION_FACTORS}")
        for name, lo in (("top_n", 1), ("correlation_factors", 0), ("combine_top", 2),
                         ("refit_every", 1), ("min_train_dates", 2), ("factor_batch", 0)):
            if getattr(self, name) < lo:
                _fail(f"{name}: {getattr(self, name)} is below the minimum {lo}")
        if self.memory_budget_bytes < MIN_MEMORY_BUDGET:
            _fail(f"memory_budget_bytes: {self.memory_budget_bytes} is below the minimum {MIN_MEMORY_BUDGET}")
        if self.combine is not None and self.combine not in COMBINE_METHODS:
            _fail(f"combine: {self.combine!r} is not one of {', '.join(COMBINE_METHODS)}")
        if self.combine is None and (self.combine_factors is not None or self.combine_horizon is not None):
            _fail("combine_factors / combine_horizon need combine (icir, ridge or both)")
        if self.combine_horizon is not None and self.combine_horizon not in self.horizons:
            _fail(f"combine_horizon {self.combine_horizon} is not one of horizons {self.horizons}")
        if self.combine_factors is not None and len(set(self.combine_factors)) < 2:
            _fail("combine_factors: name at least two distinct factors")
        try:
            self.eval_config()
            self.combine_configs()
            self.engine_config("cpu")
        except FactorError as exc:
            raise JobSpecError(str(exc)) from None

    # ---- derived configs ----------------------------------------------------------------------
    @property
    def ranked_horizon(self) -> int:
        """The horizon the ranked table uses."""
        return int(self.rank_horizon if self.rank_horizon is not None else self.horizons[0])

    def eval_config(self) -> EvalConfig:
        return EvalConfig(horizons=tuple(self.horizons), quantiles=self.quantiles,
                          drop_unbinnable_dates=self.drop_unbinnable_dates, factor_batch=self.factor_batch)

    def engine_config(self, backend: str, threads: int = 0) -> EngineConfig:
        return EngineConfig(backend=backend, memory_budget_bytes=self.memory_budget_bytes,
                            fields=DEFAULT_FIELDS, threads=threads)

    def combine_configs(self) -> list[tuple[str, CombineConfig]]:
        """``(combined factor name, config)`` per requested method (none without ``combine``)."""
        if self.combine is None:
            return []
        h = self.combine_horizon if self.combine_horizon is not None else self.ranked_horizon
        return [(f"COMBINED_{m.upper()}", CombineConfig(method=m, horizon=int(h), refit_every=self.refit_every,
                                                         min_train_dates=self.min_train_dates,
                                                         ridge_alpha=self.ridge_alpha))
                for m in COMBINE_METHODS[self.combine]]

    def memory_bytes(self) -> int:
        """Peak memory of the run: the engine keeps its factor arrays within the budget."""
        return max(64 * MIB, min(int(self.memory_budget_bytes), 8 << 30))

    def data_range(self) -> dict[str, Any]:
        return {"topic": self.bar_topic, "start": self.start, "end": self.end, "universe": self.universe}


@dataclass(frozen=True)
class FactorsJobSpec(FactorDataSpec):
    """``factors``: evaluate a library and/or expressions (see the module docstring)."""

    library: list[str] | str | None = None
    expressions: dict[str, str] | list[str] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        exprs = self.expression_map()
        if not exprs:
            _fail("no factors: give library (alpha158, classic) and/or expressions")
        try:
            parse_many(exprs, DEFAULT_FIELDS)
        except FactorError as exc:
            raise JobSpecError(str(exc)) from None
        if self.combine_factors is not None:
            unknown = [n for n in self.combine_factors if n not in exprs]
            if unknown:
                _fail(f"combine_factors: unknown factor(s) {unknown[:5]}")

    def libraries(self) -> list[str]:
        if self.library is None:
            return []
        return [self.library] if isinstance(self.library, str) else list(self.library)

    def expression_map(self) -> dict[str, str]:
        """``name -> expression``: the libraries' factors in file order, then ``expressions``."""
        out: dict[str, str] = {}
        for lib in self.libraries():
            try:
                items = load_library(lib, DEFAULT_FIELDS)
            except FactorError as exc:
                raise JobSpecError(str(exc)) from None
            for k, v in items.items():
                if k in out:
                    _fail(f"factor {k!r} is defined twice (libraries {self.libraries()})")
                out[k] = v
        extra = self.expressions if isinstance(self.expressions, dict) else {e: e for e in self.expressions}
        for k, v in extra.items():
            if not isinstance(v, str) or not str(k).strip():
                _fail(f"expressions: {k!r} must map a name to an expression string")
            if k in out:
                _fail(f"expressions: factor {k!r} is already defined (by a library or twice)")
            out[str(k)] = v
        return out


@dataclass(frozen=True)
class MineJobSpec(FactorDataSpec):
    """``factors_mine``: a seeded random + genetic search (see the module docstring)."""

    seed: int = 0
    population: int = 10_000
    generations: int = 3
    max_depth: int = 4
    windows: list[int] = field(default_factory=lambda: [5, 10, 20, 30, 60])
    ops: list[str] | None = None
    horizon: int = 1
    min_abs_rank_ic: float = 0.02
    min_abs_icir: float = 0.1
    max_corr: float = 0.7
    max_kept: int = 20
    elite: float = 0.1
    mutation_rate: float = 0.5
    batch: int = 0

    def validate(self) -> None:
        super().validate()
        if self.horizon not in self.horizons:
            _fail(f"horizon {self.horizon} (the selection horizon) is not one of horizons {self.horizons}")
        try:
            self.mining_config()
        except FactorError as exc:
            raise JobSpecError(str(exc)) from None
        if self.combine_factors is not None:
            _fail("combine_factors: a mining job combines the factors it keeps (use combine_top)")

    def mining_config(self) -> MiningConfig:
        kw: dict[str, Any] = {}
        if self.ops is not None:
            kw["ops"] = tuple(self.ops)
        return MiningConfig(seed=self.seed, population=self.population, generations=self.generations,
                            max_depth=self.max_depth, windows=tuple(self.windows), horizon=self.horizon,
                            min_abs_rank_ic=self.min_abs_rank_ic, min_abs_icir=self.min_abs_icir,
                            max_corr=self.max_corr, max_kept=self.max_kept, elite=self.elite,
                            mutation_rate=self.mutation_rate, batch=self.batch, **kw)
