"""Backtest engine: strategy signals x parameter grid x symbols, simulated per cell on the GPU
(CuPy RawKernels) or the CPU (numba), with exact time/symbol chunking. See ``engine.py``."""

from mystocks_gpu.gpu_ops.backtest.engine import (
    BacktestOutput,
    Chunk,
    ChunkState,
    EquityCurve,
    collect_stats,
    plan_chunks,
    run_backtest,
    run_chunk,
    run_curves,
)
from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError
from mystocks_gpu.gpu_ops.backtest.signals import materialize_signals
from mystocks_gpu.gpu_ops.backtest.stats import STAT_COLUMNS
from mystocks_gpu.gpu_ops.backtest.strategies import STRATEGIES, compile_grid

__all__ = [
    "STAT_COLUMNS",
    "STRATEGIES",
    "BacktestInputError",
    "BacktestOutput",
    "Chunk",
    "ChunkState",
    "EquityCurve",
    "collect_stats",
    "compile_grid",
    "materialize_signals",
    "plan_chunks",
    "run_backtest",
    "run_chunk",
    "run_curves",
]
