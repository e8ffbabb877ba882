"""Frozen, validated configurations of the factor components: :class:`EngineConfig` (expression
evaluation), :class:`EvalConfig` (factor metrics), :class:`MiningConfig` (search) and
:class:`CombineConfig` (factor combination)."""

from __future__ import annotations

from dataclasses import dataclass

from mystocks_gpu.gpu_ops.factors.exceptions import FactorConfigError
from mystocks_gpu.gpu_ops.factors.ops import DEFAULT_FIELDS, OPS, TS

GIB = 1 << 30


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise FactorConfigError(msg)


@dataclass(frozen=True)
class EngineConfig:
    """Expression evaluation.

    Attributes:
        backend: ``auto`` (GPU when available), ``cpu`` or ``gpu``.
        memory_budget_bytes: peak bytes of factor arrays (outputs + intermediates) one
            :func:`evaluate_panel` call may hold on the device (default 2 GiB). Time-series work is
            split into symbol chunks to stay within it; chunking never changes a value.
        fields: bar field names the expressions may use (``$name``).
        threads: CPU threads the numba kernels run on (0 = one per CPU); results do not depend
            on it. Ignored on the GPU.
    """

    backend: str = "auto"
    memory_budget_bytes: int = 2 * GIB
    fields: tuple[str, ...] = DEFAULT_FIELDS
    threads: int = 0

    def __post_init__(self) -> None:
        _check(self.backend in ("auto", "cpu", "gpu"), f"backend must be auto/cpu/gpu, got {self.backend!r}")
        _check(self.memory_budget_bytes >= 1 << 16, "memory_budget_bytes must be >= 65536")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _check(len(self.fields) > 0 and all(f.isidentifier() for f in self.fields),
               f"fields must be identifiers, got {self.fields!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Factor metrics (Alphalens definitions; see :mod:`.evaluate`).

    Attributes:
        horizons: forward-return horizons in bars (default 1, 5, 20). A (date, symbol) enters the
            sample only when the factor and the forward returns at every horizon are finite.
        quantiles: number of equal-count factor buckets per date (default 5).
        drop_unbinnable_dates: a date whose quantile edges are not unique (ties) is dropped from
            every metric, as Alphalens does (default). False keeps it for IC, rank IC and
            autocorrelation and leaves only its quantile statistics out.
        factor_batch: factors evaluated per batch (values + metrics) in :func:`run_factors`;
            0 = as many as ``memory_budget_bytes`` of :class:`EngineConfig` allows.
    """

    horizons: tuple[int, ...] = (1, 5, 20)
    quantiles: int = 5
    drop_unbinnable_dates: bool = True
    factor_batch: int = 0

    def __post_init__(self) -> None:
        _check(len(self.horizons) > 0 and all(isinstance(h, int) and h >= 1 for h in self.horizons)
               and len(set(self.horizons)) == len(self.horizons),
               f"horizons must be distinct integers >= 1, got {self.horizons!r}")
        _check(2 <= self.quantiles <= 100, f"quantiles must be in [2, 100], got {self.quantiles}")
        _check(self.factor_batch >= 0, "factor_batch must be >= 0")


@dataclass(frozen=True)
class MiningConfig:
    """Factor search (see :mod:`.mining`).

    Attributes:
        seed: random seed; the same seed, data and config give the same kept set.
        population: candidates evaluated per generation (default 10,000).
        generations: generations (1 = random search only).
        max_depth: maximum tree depth of a candidate (a field is depth 1).
        windows: windows the generator draws for time-series operators.
        ops: operators the generator may use (default: all but the comparisons).
        horizon: forward-return horizon (bars) the selection uses; must be in the EvalConfig's.
        min_abs_rank_ic: keep a candidate only if |mean rank IC| >= this.
        min_abs_icir: ... and |rank-IC IR| >= this.
        max_corr: ... and |mean rank correlation| with every already-kept factor < this.
        max_kept: stop keeping after this many factors.
        elite: fraction of each generation (best |rank IC|) used as parents of the next.
        mutation_rate: probability that a child is a mutation rather than a crossover.
        batch: candidates evaluated per batched pass (0 = by memory budget).
    """

    seed: int = 0
    population: int = 10_000
    generations: int = 3
    max_depth: int = 4
    windows: tuple[int, ...] = (5, 10, 20, 30, 60)
    ops: tuple[str, ...] = tuple(k for k in OPS if k not in ("Gt", "Ge", "Lt", "Le", "Eq", "Ne", "If"))
    horizon: int = 1
    min_abs_rank_ic: float = 0.02
    min_abs_icir: float = 0.1
    max_corr: float = 0.7
    max_kept: int = 50
    elite: float = 0.1
    mutation_rate: float = 0.5
    batch: int = 0

    def __post_init__(self) -> None:
        _check(self.population >= 2, "population must be >= 2")
        _check(self.generations >= 1, "generations must be >= 1")
        _check(2 <= self.max_depth <= 12, "max_depth must be in [2, 12]")
        _check(len(self.windows) > 0 and all(isinstance(w, int) and w >= 2 for w in self.windows),
               "windows must be integers >= 2")
        unknown = [o for o in self.ops if o not in OPS]
        _check(not unknown, f"unknown operators in ops: {unknown}")
        _check(any(OPS[o].kind == TS for o in self.ops) or len(self.ops) > 0, "ops is empty")
        _check(self.horizon >= 1, "horizon must be >= 1")
        _check(self.min_abs_rank_ic >= 0 and self.min_abs_icir >= 0, "thresholds must be >= 0")
        _check(0 < self.max_corr <= 1, "max_corr must be in (0, 1]")
        _check(self.max_kept >= 1, "max_kept must be >= 1")
        _check(0 < self.elite <= 1, "elite must be in (0, 1]")
        _check(0 <= self.mutation_rate <= 1, "mutation_rate must be in [0, 1]")
        _check(self.batch >= 0, "batch must be >= 0")


@dataclass(frozen=True)
class CombineConfig:
    """Walk-forward combination of factors (see :mod:`.combine`).

    Attributes:
        method: ``icir`` (weights = trailing rank-IC IR) or ``ridge`` (ridge regression of the
            cross-sectionally z-scored forward return on the z-scored factors).
        horizon: forward-return horizon (bars) the weights are fitted to.
        refit_every: weights are refitted every this many dates (default 21).
        min_train_dates: no combined value before this many dates of usable history (default 60).
        ridge_alpha: L2 penalty of ``ridge`` (on sums over the training rows).
    """

    method: str = "icir"
    horizon: int = 1
    refit_every: int = 21
    min_train_dates: int = 60
    ridge_alpha: float = 1.0

    def __post_init__(self) -> None:
        _check(self.method in ("icir", "ridge"), f"method must be icir or ridge, got {self.method!r}")
        _check(self.horizon >= 1, "horizon must be >= 1")
        _check(self.refit_every >= 1, "refit_every must be >= 1")
        _check(self.min_train_dates >= 2, "min_train_dates must be >= 2")
        _check(self.ridge_alpha >= 0, "ridge_alpha must be >= 0")
