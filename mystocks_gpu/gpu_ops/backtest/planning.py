"""Chunk planning for the backtest engine: symbol ranges x parameter ranges x time windows.

A chunk's working set (:func:`chunk_bytes`) stays within ``memory_budget_bytes`` on the device and
on the host, and its work (cells x bars) within :data:`MAX_CHUNK_WORK`, so a run reports progress
and can be stopped between chunks at least every second or so. The layout (:func:`layout`) is, in
order of preference:

1. whole histories of as many symbols as fit, with the whole grid;
2. time windows (each reading ``lead`` bars before it) when one symbol's history does not fit;
3. parameter ranges when one symbol's whole grid does not fit even with short windows: each range
   is compiled into its own plan (only the indicator rows it uses), so a grid of any size runs
   within any budget that holds one parameter set of one symbol over ``lead + MIN_WINDOW`` bars.

Every (symbol range, parameter range) pair carries its own per-cell state through its time chunks;
chunked runs equal an unchunked run bit for bit (see ``engine.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError
from mystocks_gpu.gpu_ops.backtest.state import STATE_BYTES_PER_CELL
from mystocks_gpu.gpu_ops.backtest.strategies import RSI, GridPlan, compile_grid

#: cells x bars of one chunk at most (about a second of one CPU core): bounds the time between
#: progress reports and stop checks
MAX_CHUNK_WORK = 200_000_000
#: fewest bars of a time window (after its lead) the planner accepts
MIN_WINDOW = 16


class EngineSpec(Protocol):
    """What the engine reads from a spec (``processors.backtest_spec.BacktestSpec`` has it all)."""

    @property
    def universe(self) -> Any: ...

    @property
    def start(self) -> int | None: ...

    @property
    def end(self) -> int | None: ...

    @property
    def strategy(self) -> str: ...

    @property
    def params(self) -> Mapping[str, Sequence[float]]: ...

    @property
    def initial_cash(self) -> float: ...

    @property
    def sizing(self) -> str: ...

    @property
    def size(self) -> float | None: ...

    @property
    def fees(self) -> float: ...

    @property
    def fixed_fees(self) -> float: ...

    @property
    def slippage(self) -> float: ...

    @property
    def direction(self) -> str: ...

    @property
    def execution(self) -> str: ...

    @property
    def bars_per_year(self) -> float: ...

    @property
    def metric(self) -> str: ...

    @property
    def top_n(self) -> int | None: ...

    @property
    def n_curves(self) -> int: ...

    @property
    def max_cells(self) -> int: ...

    @property
    def memory_budget_bytes(self) -> int: ...


@dataclass(frozen=True)
class Chunk:
    """One unit of work: symbols ``[sym_start, sym_stop)`` x bars ``[bar_start, bar_stop)`` x
    parameter sets ``[par_start, par_stop)`` (``par_stop = -1``: to the end of the grid), reading
    ``lead`` bars of history before ``bar_start``. ``group`` numbers the (symbol range, parameter
    range) pair; a group's time chunks must run in order, carrying ``ChunkState``."""

    index: int
    group: int
    sym_start: int
    sym_stop: int
    bar_start: int
    bar_stop: int
    lead: int
    par_start: int = 0
    par_stop: int = -1

    @property
    def n_symbols(self) -> int:
        return self.sym_stop - self.sym_start

    @property
    def n_bars(self) -> int:
        return self.bar_stop - self.bar_start

    def params(self, plan: GridPlan) -> GridPlan:
        """The plan of this chunk's parameter range."""
        return plan.subset(self.par_start, plan.n_par if self.par_stop < 0 else self.par_stop)


def chunk_bytes(plan: GridPlan, n_s: int, n_cols: int) -> int:
    """Working set of one chunk (bytes, per memory space): 5 price/signal arrays and ``n_ind``
    indicator rows of ``n_s x n_cols`` float64, plus per-cell state + cell id and RSI carry."""
    carry = n_s * len(plan.ind_windows) * 24 if plan.code == RSI else 0
    return (
        n_s * n_cols * 8 * (5 + plan.n_ind) + n_s * plan.n_par * (STATE_BYTES_PER_CELL + 8) + carry
    )


def _range_bytes(plan: GridPlan, p0: int, p1: int, n_cols: int) -> int:
    """:func:`chunk_bytes` of one symbol with parameter sets ``[p0, p1)`` (their indicator rows)."""
    rows = np.unique(plan.pidx[p0:p1]).size if plan.n_ind > 1 else plan.n_ind
    carry = rows * 24 if plan.code == RSI else 0
    return n_cols * 8 * (5 + rows) + (p1 - p0) * (STATE_BYTES_PER_CELL + 8) + carry


def _param_ranges(plan: GridPlan, n_cols: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive parameter ranges, each as long as fits ``budget`` for one symbol (binary search)."""
    out: list[tuple[int, int]] = []
    p0 = 0
    cap = max(1, MAX_CHUNK_WORK // max(1, n_cols))
    while p0 < plan.n_par:
        lo, hi = p0 + 1, min(plan.n_par, p0 + cap)
        if _range_bytes(plan, p0, lo, n_cols) > budget:
            raise BacktestInputError(
                f"memory_budget_bytes={budget} is too small: one symbol with one parameter set over "
                f"{n_cols} bars needs {_range_bytes(plan, p0, lo, n_cols)} bytes per chunk")
        while lo < hi:  # largest p1 in [lo, hi] that fits
            mid = (lo + hi + 1) // 2
            if _range_bytes(plan, p0, mid, n_cols) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out.append((p0, lo))
        p0 = lo
    return out


def layout(plan: GridPlan, n_symbols: int, n_bars: int, budget: int) -> tuple[int, int, list[tuple[int, int]]]:
    """``(symbols per chunk, bars per time chunk, parameter ranges)`` within ``budget`` bytes and
    :data:`MAX_CHUNK_WORK` (see the module doc). Raises :class:`BacktestInputError` when one symbol
    with one parameter set over ``lead + MIN_WINDOW`` bars does not fit."""
    lead = plan.lead
    whole = [(0, plan.n_par)]
    work_cap = max(1, MAX_CHUNK_WORK // max(1, plan.n_par))  # symbol-bars per chunk with the whole grid
    per_sym_full = chunk_bytes(plan, 1, n_bars)
    if per_sym_full <= budget and n_bars <= work_cap:
        n_s = max(1, min(n_symbols, budget // per_sym_full, work_cap // max(1, n_bars)))
        return n_s, n_bars, whole
    min_cols = lead + min(n_bars, MIN_WINDOW)
    if chunk_bytes(plan, 1, min_cols) <= budget and min(n_bars, MIN_WINDOW) <= work_cap:
        # time chunks with the whole grid: keep windows well above the lead so the overlap stays small
        target = chunk_bytes(plan, 1, 17 * lead + 256)
        n_s = max(1, min(n_symbols, budget // target))
        while True:
            fixed = chunk_bytes(plan, n_s, 0)
            per_col = chunk_bytes(plan, n_s, 1) - fixed
            t_len = (budget - fixed) // per_col - lead if budget > fixed else 0
            t_len = min(t_len, work_cap // n_s)
            if t_len >= min(n_bars, MIN_WINDOW) or n_s == 1:
                break
            n_s = max(1, n_s // 2)
        return n_s, int(max(1, min(t_len, n_bars))), whole
    # parameter ranges, one symbol per chunk
    t_len = min(n_bars, 17 * lead + 256)
    while True:
        try:
            return 1, t_len, _param_ranges(plan, lead + t_len, budget)
        except BacktestInputError:
            if t_len <= min(n_bars, MIN_WINDOW):
                need = _range_bytes(plan, 0, 1, lead + min(n_bars, MIN_WINDOW))
                raise BacktestInputError(
                    f"memory_budget_bytes={budget} is too small: one symbol with one of the {plan.n_par} "
                    f"parameter sets needs at least {need} bytes per chunk ({lead} bars of lead + "
                    f"{min(n_bars, MIN_WINDOW)} bars)") from None
            t_len = max(min(n_bars, MIN_WINDOW), t_len // 2)


def plan_chunks(
    spec: EngineSpec, n_symbols: int, n_bars: int, plan: GridPlan | None = None
) -> list[Chunk]:
    """Chunks covering ``n_symbols x n_bars x n_par`` within ``spec.memory_budget_bytes``, ordered
    by symbol range, then parameter range, then time. Raises :class:`BacktestInputError` when the
    smallest chunk does not fit (see :func:`layout`)."""
    plan = plan or compile_grid(spec.strategy, spec.params)
    if n_symbols < 1 or n_bars < 1:
        raise BacktestInputError(f"nothing to backtest: {n_symbols} symbols x {n_bars} bars")
    n_s, t_len, ranges = layout(plan, n_symbols, n_bars, int(spec.memory_budget_bytes))
    chunks: list[Chunk] = []
    group = 0
    for s0 in range(0, n_symbols, n_s):
        s1 = min(n_symbols, s0 + n_s)
        for p0, p1 in ranges:
            for b0 in range(0, n_bars, t_len):
                b1 = min(n_bars, b0 + t_len)
                chunks.append(Chunk(len(chunks), group, s0, s1, b0, b1, min(b0, plan.lead),
                                    p0, -1 if p1 >= plan.n_par else p1))
            group += 1
    return chunks


__all__ = ["MAX_CHUNK_WORK", "MIN_WINDOW", "Chunk", "EngineSpec", "chunk_bytes", "layout", "plan_chunks"]
