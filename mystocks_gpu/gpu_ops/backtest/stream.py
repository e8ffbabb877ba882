"""The backtest grid over bars *streamed* in time order: memory independent of the history length.

A history too long to hold (minute bars over years) arrives as consecutive windows of columns
(``(n_symbols, w)`` arrays per price key, plus the windows' bar times). :class:`GridStream` runs every
(symbol range, parameter range) of the plan (``planning.layout``) over each window in turn,
carrying per-cell state, and keeps only the last ``plan.lead`` bars of the previous windows (the
lead that rebuilds indicators exactly). :class:`CurvePass` replays the same windows for the
equity curves of the best cells. Results equal :func:`~mystocks_gpu.gpu_ops.backtest.run_backtest`
on the concatenated arrays bit for bit (the engine's chunk invariance).

Memory: the windows given (one at a time), the lead, the chunk working set within
``spec.memory_budget_bytes``, and the per-cell state (``STATE_BYTES_PER_CELL + 8`` bytes per symbol x
parameter set) — none of it grows with the number of bars.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backend import select
from mystocks_gpu.gpu_ops.backtest.engine import (
    ChunkState,
    CurveRecorder,
    collect_stats,
    run_chunk,
    strategy_keys,
)
from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError
from mystocks_gpu.gpu_ops.backtest.planning import Chunk, EngineSpec, layout
from mystocks_gpu.gpu_ops.backtest.strategies import GridPlan, compile_grid


class _Lead:
    """The last ``n`` bars seen, prepended to the next window."""

    def __init__(self, keys: Sequence[str], n_sym: int, n: int) -> None:
        self.keys, self.n = tuple(keys), n
        self.arrays = {k: np.empty((n_sym, 0)) for k in self.keys}

    def extend(self, window: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``lead + window`` per key (C-contiguous float64); keeps the new lead."""
        out = {}
        for k in self.keys:
            w = np.asarray(window[k], dtype=np.float64)
            out[k] = np.ascontiguousarray(np.concatenate([self.arrays[k], w], axis=1)) if self.arrays[k].shape[1] \
                else np.ascontiguousarray(w)
            self.arrays[k] = out[k][:, max(0, out[k].shape[1] - self.n):].copy()
        return out

    @property
    def width(self) -> int:
        return int(self.arrays[self.keys[0]].shape[1])


class GridStream:
    """Run the grid of ``spec`` over windows fed in time order (see the module doc).

    Args:
        spec: the backtest spec (strategy, grid, money rules, memory budget).
        symbols: the rows of every window, ``(n_symbols,)``.
        window_bars: the most columns one :meth:`feed` call gives (larger windows are cut).
        backend: ``auto`` / ``cpu`` / ``gpu``.
        plan: the compiled grid (compiled from ``spec`` when None).
        on_chunk: called after every engine chunk with the bars done so far (progress, stop checks:
            raise to abandon the run).
    """

    def __init__(self, spec: EngineSpec, symbols: Sequence[str], window_bars: int, backend: str | None = None,
                 plan: GridPlan | None = None, on_chunk: Callable[[int], None] | None = None) -> None:
        if not symbols:
            raise BacktestInputError("nothing to backtest: no symbols")
        self.spec, self.symbols = spec, list(symbols)
        self.be = select(backend)
        self.plan = plan or compile_grid(spec.strategy, spec.params)
        self.keys = strategy_keys(self.plan.strategy)
        n_sym = len(self.symbols)
        n_s, self.t_len, ranges = layout(self.plan, n_sym, max(1, int(window_bars)), int(spec.memory_budget_bytes))
        self.units = [(s0, min(n_sym, s0 + n_s), p0, -1 if p1 >= self.plan.n_par else p1)
                      for s0 in range(0, n_sym, n_s) for p0, p1 in ranges]
        self.states: list[ChunkState | None] = [None] * len(self.units)
        self.lead = _Lead(self.keys, n_sym, self.plan.lead)
        self.on_chunk = on_chunk
        self.n_bars = 0
        self.n_chunks = 0
        self.ts_first: int | None = None
        self.ts_last: int | None = None

    def feed(self, window: Mapping[str, np.ndarray], ts: np.ndarray) -> None:
        """Advance every cell over the next bars: ``window[key]`` ``(n_symbols, w)`` float64 (NaN
        where a symbol has no bar), ``ts`` ``(w,)`` int64 ns, strictly after the bars fed before."""
        ts = np.asarray(ts, dtype=np.int64)
        w = ts.shape[0]
        if w == 0:
            return
        if (w > 1 and np.any(np.diff(ts) <= 0)) or (self.ts_last is not None and ts[0] <= self.ts_last):
            raise BacktestInputError("streamed bar times must be strictly ascending across windows")
        for k in self.keys:
            if np.shape(window[k]) != (len(self.symbols), w):
                raise BacktestInputError(f"window[{k!r}] has shape {np.shape(window[k])}, expected {(len(self.symbols), w)}")
        col0 = self.n_bars - self.lead.width
        arrays = self.lead.extend(window)
        stop = self.n_bars + w
        for b0 in range(self.n_bars, stop, self.t_len):
            b1 = min(stop, b0 + self.t_len)
            for u, (s0, s1, p0, p1) in enumerate(self.units):
                ch = Chunk(self.n_chunks, u, s0, s1, b0, b1, min(b0, self.plan.lead), p0, p1)
                self.states[u] = run_chunk(ch, arrays, self.spec, self.be, self.states[u], self.plan, col0)
                self.n_chunks += 1
                if self.on_chunk is not None:
                    self.on_chunk(b1)
        self.n_bars = stop
        self.ts_first = int(ts[0]) if self.ts_first is None else self.ts_first
        self.ts_last = int(ts[-1])

    def finish(self) -> pd.DataFrame:
        """The stats table (as ``run_backtest``'s ``stats``) after every bar fed."""
        if self.n_bars == 0:
            raise BacktestInputError("no bars in the requested universe and time range")
        finals = [st.to_host() for st in self.states if st is not None]
        return collect_stats(finals, self.symbols, self.n_bars, self.spec, self.plan)


class CurvePass:
    """Equity and drawdown of ``cells`` = (symbol index, param_id) over the same windows fed again
    (the second pass of a streamed run); ``stride`` keeps one point per ``stride`` bars.

    Only the cells' symbols are read: :attr:`rows` (sorted indices into the stream's symbols).
    :meth:`feed` takes windows of every symbol of the stream or of just those rows."""

    def __init__(self, stream: GridStream, cells: Sequence[tuple[int, int]], stride: int = 1) -> None:
        self.cells = list(cells)
        self.n_bars = stream.n_bars
        self.rows = np.array(sorted({int(s) for s, _ in self.cells}), dtype=np.int64)
        local = {int(s): i for i, s in enumerate(self.rows)}
        self.rec = CurveRecorder(stream.plan, stream.spec, [(local[int(s)], p) for s, p in self.cells],
                                 stream.n_bars, stream.be, stride) if self.cells else None
        self.lead = _Lead(stream.keys, self.rows.size, stream.plan.lead)
        self.pos = 0

    def feed(self, window: Mapping[str, np.ndarray], w: int) -> None:
        """The next ``w`` bars (the same windows, in the same order, as the first pass):
        ``window[key]`` ``(n_symbols, w)`` or ``(len(rows), w)``."""
        if self.rec is None or w == 0:
            self.pos += w
            return
        k0 = self.lead.keys[0]
        if np.shape(window[k0])[0] != self.rows.size:
            window = {k: np.asarray(window[k])[self.rows] for k in self.lead.keys}
        col0 = self.pos - self.lead.width
        arrays = self.lead.extend(window)
        self.rec.feed(arrays, col0, self.pos + w, start=self.pos)
        self.pos += w

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Equity and drawdown ``(n_cells, ceil(n_bars / stride))``."""
        if self.rec is None:
            return np.empty((0, 0)), np.empty((0, 0))
        if self.pos != self.n_bars:
            raise BacktestInputError(f"the curve pass saw {self.pos} of {self.n_bars} bars")
        return self.rec.result()


__all__ = ["CurvePass", "GridStream"]
