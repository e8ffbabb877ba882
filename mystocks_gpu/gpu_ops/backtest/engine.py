"""Backtest engine: parameter grid x symbols on the GPU (CuPy) or CPU (numba), chunked.

Entry points: :func:`run_backtest` (everything in one call), or for spreading work over devices
:func:`plan_chunks` -> :func:`run_chunk` (time chunks of one symbol range in order, passing the
returned :class:`ChunkState` on) -> :func:`collect_stats` over the final states of every symbol
range -> :func:`run_curves` for the best cells. ``spec`` is any object with the attributes of
``processors.backtest_spec.BacktestSpec`` (:class:`EngineSpec`).

Inputs: ``prices`` dict of float64 arrays ``(n_symbols, n_bars)``: ``open`` and ``close``, plus
``high`` and ``low`` for ``breakout`` and ``signal`` for the ``signal`` strategy
(:func:`strategy_keys`; other keys are ignored), NaN where a symbol has no bar; ``symbols``
``(n_symbols,)``; ``ts`` int64 ``(n_bars,)`` bar times in ns (ascending).

Fill and fee rules (per cell = one parameter set on one symbol, starting flat with
``initial_cash``):

- A bar is *valid* when its open and close are finite; invalid bars are skipped entirely (no
  signal, no fill, no return; an order due at one is dropped, equity carries over).
- Signals are evaluated at each valid bar's close (``strategies.py``), then resolved against the
  position: long entry and long exit together -> neither; short entry and short exit together ->
  neither; long entry and short entry together -> neither; long: short entry -> reverse to short,
  else long exit -> close; short: long entry -> reverse to long, else short exit -> close; flat:
  long entry -> open long, else short entry -> open short. Short signals exist only in
  ``long_short``. No pyramiding: entries while in a position of that side are ignored.
- ``execution="next_open"`` (default): the order decided at bar t's close executes at the open of
  bar t+1 (dropped if t+1 is invalid) — no look-ahead. ``"close"``: executes at bar t's close,
  which has look-ahead risk only if the signal itself uses that close (all built-ins do).
- Fill price: buy at ``px * (1 + slippage)``, sell at ``px * (1 - slippage)``, ``px`` the open
  (next_open) or close. Fee of an order = ``fees * notional + fixed_fees``, taken from cash;
  ``notional = units * fill``.
- Entry size. ``sizing="fraction"``: budget ``B = size * cash`` (size in (0, 1]; the position is
  flat so cash = equity); ``notional = (B - fixed_fees) / (1 + fees)``, units = notional / fill,
  fee = ``B - notional``: the budget pays notional and fee (vectorbt's ``size_type='percent'``).
  ``sizing="fixed"``: ``units = size / px`` (cash amount at the unslipped price, vectorbt's
  ``size_type='value'``), notional and fee on top; if that exceeds cash, the whole cash is the
  budget as above. An entry whose budget cannot cover ``fixed_fees`` is skipped. A short entry
  sizes the same way and receives ``notional - fee``. Fractional units are allowed.
- Exits sell/cover the whole position. A long exit whose proceeds cannot cover its fee is skipped
  (vectorbt rejects it). A short cover always fills, even when cash goes negative (no margin
  model). A reversal is two orders (close, then open), each paying ``fixed_fees``.
- Equity ``E = cash + units * close`` at every valid bar's close. A position still open at the end
  is marked to market and *not* closed (no exit fee); it is not a trade (``n_trades`` and
  ``win_rate`` count closed round trips; a trade's pnl includes entry and exit fees).
- Statistics: see ``stats.py``.

Convention mapping to ``vectorbt.Portfolio.from_signals`` (checked in
``tests/unit/test_backtest_vectorbt.py``): ``entries``/``exits`` (and ``short_entries``/
``short_exits`` for long_short) = our materialised signals (``signals.materialize_signals``),
shifted one bar forward (``vbt.fshift(1)``) with ``price=open`` for ``next_open``, unshifted with
the default price (close) for ``close``; ``close=close``; ``init_cash=initial_cash``;
``fees``, ``fixed_fees``, ``slippage`` as ours; fraction sizing -> ``size=fraction,
size_type='percent'``; fixed sizing -> ``size=amount, size_type='value'``; ``accumulate=False``,
``upon_long_conflict``/``upon_short_conflict``/``upon_dir_conflict='ignore'``,
``upon_opposite_entry='reverse'``; ``n_trades`` = ``pf.trades.closed.count()``;
``total_return`` = ``pf.total_return()``. Known differences: vectorbt reverses with one order (one
fixed fee, so ours differ by ``fixed_fees`` per reversal) and forbids percent sizing with
reversals; it partially covers a short when cash is short (ours covers fully); it compares cash
with a 1e-9 relative tolerance. The long_short comparison therefore uses fixed sizing with
``fixed_fees=0`` and enough cash. A bar missing in our data should be all-NaN in vectorbt's
(vectorbt ignores orders at a NaN price, as we drop them).

Chunking (``planning.py``): symbols are split into ranges, time into windows and, when one
symbol's whole grid does not fit, the grid into parameter ranges, so that one chunk's working set
(``chunk_bytes``) stays within ``memory_budget_bytes`` on the device and on the host. A time chunk
reads ``lead`` bars before it (windows are rebuilt exactly) and continues the per-cell state of the
previous one (cash, units, entry, running peak, accumulators, the pending order, RSI state), so
chunked results equal an unchunked run bit for bit. The bars may also be *streamed* in time order
(``run_chunk(..., col0=...)`` over windows that carry their lead; ``stream.py``), so a run's memory
does not grow with the length of the history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.backend import GPU, select, to_host, xp
from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError
from mystocks_gpu.gpu_ops.backtest.planning import (
    Chunk,
    EngineSpec,
    chunk_bytes,
    layout,
    plan_chunks,
)
from mystocks_gpu.gpu_ops.backtest.signals import compute_indicators_cpu, new_carry
from mystocks_gpu.gpu_ops.backtest.sim_cpu import fused_fits, simulate_cpu, simulate_fused_cpu
from mystocks_gpu.gpu_ops.backtest.state import NF, NI, init_state
from mystocks_gpu.gpu_ops.backtest.stats import (
    HIGHER_IS_BETTER,
    INT_STATS,
    STAT_COLUMNS,
    finalize_stats,
    rank_order,
)
from mystocks_gpu.gpu_ops.backtest.strategies import GridPlan, canonical_strategy, compile_grid


def compute_indicators(
    plan: GridPlan, data: dict[str, Any], base: int, j0: int, carry: Any, backend: str
) -> Any:
    """The indicator stack ``(n_ind, n_s, L)`` of a chunk on ``backend`` (see
    :func:`~mystocks_gpu.gpu_ops.backtest.signals.compute_indicators_cpu`; the GPU twin is
    :func:`~mystocks_gpu.gpu_ops.backtest.sim_gpu.compute_indicators_gpu`)."""
    if backend == GPU:
        from mystocks_gpu.gpu_ops.backtest.sim_gpu import compute_indicators_gpu

        return compute_indicators_gpu(plan, data, base, j0, carry)
    return compute_indicators_cpu(plan, data, base, j0, carry)


@dataclass
class ChunkState:
    """Per-cell state of a (symbol range, parameter range) after the bars ``[0, bar_stop)``:
    ``sf`` ``(NF, n_cells)``, ``si`` ``(NI, n_cells)`` (cell ``= s_local * n_par_range + p_local``),
    ``carry`` (RSI) ``(n_p, n_s, 3)``, arrays of ``backend``. ``par_stop = -1``: to the grid's end."""

    group: int
    sym_start: int
    sym_stop: int
    bar_stop: int
    sf: Any
    si: Any
    carry: Any
    backend: str
    par_start: int = 0
    par_stop: int = -1

    def to_host(self) -> ChunkState:
        """A copy with NumPy arrays (for merging or moving between devices)."""
        return replace(
            self, sf=to_host(self.sf), si=to_host(self.si), carry=to_host(self.carry), backend="cpu"
        )


@dataclass(frozen=True)
class EquityCurve:
    """Equity (currency) and drawdown (positive fraction of the running peak) per bar ``ts`` of
    one cell; invalid bars repeat the previous values."""

    symbol: str
    params: dict[str, float | int]
    ts: np.ndarray
    equity: np.ndarray
    drawdown: np.ndarray


@dataclass
class BacktestOutput:
    """Results: ``stats`` (one row per symbol x parameter set: ``symbol``, ``param_id``, ``params``
    dict, then ``STAT_COLUMNS``), ``curves`` of the best ``n_curves`` cells by ``metric``."""

    stats: pd.DataFrame
    curves: list[EquityCurve]
    metric: str
    top_n: int | None
    backend: str
    n_chunks: int
    n_cells: int
    elapsed_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int | None = None, metric: str | None = None) -> pd.DataFrame:
        """The best ``n`` rows (default ``top_n``, all when None) by ``metric`` (default the spec's);
        NaN ranks last."""
        m = metric or self.metric
        if m not in HIGHER_IS_BETTER:
            raise BacktestInputError(f"unknown metric {m!r}; choose from {', '.join(STAT_COLUMNS)}")
        order = rank_order(self.stats[m].to_numpy(dtype=np.float64), m)
        n = self.top_n if n is None else n
        if n is not None:
            order = order[:n]
        return self.stats.iloc[order].reset_index(drop=True)

    def rows(self, n: int | None = None) -> list[dict[str, Any]]:
        """``top(n)`` as dicts shaped like the ``BacktestRow`` Avro record (params as floats)."""
        out = []
        for rec in self.top(n).to_dict(orient="records"):
            row = {
                "symbol": rec["symbol"],
                "params": {k: float(v) for k, v in rec["params"].items()},
            }
            for c in STAT_COLUMNS:
                row[c] = int(rec[c]) if c in INT_STATS else float(rec[c])
            out.append(row)
        return out

    def curve_rows(self) -> list[dict[str, Any]]:
        """Curves as dicts shaped like the ``EquityCurve`` Avro record."""
        return [
            {
                "symbol": c.symbol,
                "params": {k: float(v) for k, v in c.params.items()},
                "ts": c.ts.astype(np.int64).tolist(),
                "equity": c.equity.tolist(),
                "drawdown": c.drawdown.tolist(),
            }
            for c in self.curves
        ]


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def strategy_keys(strategy: str) -> tuple[str, ...]:
    """The price keys ``strategy`` reads: ``open`` and ``close`` (fills, validity, marks), plus
    ``high``/``low`` for ``breakout`` (its channel) and ``signal`` for ``signal``."""
    name = canonical_strategy(strategy)
    return ("open",) + (("high", "low") if name == "breakout" else ()) + ("close",) + \
        (("signal",) if name == "signal" else ())


def prepare_inputs(
    prices: Mapping[str, Any], symbols: Sequence[str], ts: Any, spec: EngineSpec
) -> tuple[dict[str, np.ndarray], list[str], np.ndarray]:
    """Validate shapes and restrict the data to ``spec.universe`` and ``[spec.start, spec.end)`` (ns).

    Returns contiguous float64 price arrays, the kept symbols and bar times.
    """
    syms = [str(s) for s in symbols]
    ts_arr = np.asarray(ts, dtype=np.int64).reshape(-1)
    need = strategy_keys(spec.strategy)
    missing = [k for k in need if k not in prices]
    if missing:
        raise BacktestInputError(f"prices lack {missing}")
    shape = (len(syms), ts_arr.shape[0])
    arrs = {}
    for k in need:
        a = np.asarray(prices[k], dtype=np.float64)
        if a.shape != shape:
            raise BacktestInputError(
                f"prices[{k!r}] has shape {a.shape}, expected (n_symbols, n_bars) = {shape}"
            )
        arrs[k] = a
    if ts_arr.shape[0] > 1 and np.any(np.diff(ts_arr) <= 0):
        raise BacktestInputError("ts must be strictly ascending")
    if isinstance(spec.universe, str):
        rows = np.arange(len(syms))
    else:
        index = {s: i for i, s in enumerate(syms)}
        absent = [s for s in spec.universe if s not in index]
        if absent:
            raise BacktestInputError(
                f"symbols not in the data: {absent[:10]}{' ...' if len(absent) > 10 else ''}"
            )
        rows = np.array([index[s] for s in spec.universe], dtype=np.int64)
    lo = -(2**63) if spec.start is None else int(spec.start)
    hi = 2**63 - 1 if spec.end is None else int(spec.end)
    cols = np.nonzero((ts_arr >= lo) & (ts_arr < hi))[0]
    if cols.size == 0 or rows.size == 0:
        raise BacktestInputError("no bars in the requested universe and time range")
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    out = {k: np.ascontiguousarray(a[rows][:, c0:c1]) for k, a in arrs.items()}
    return out, [syms[i] for i in rows], ts_arr[c0:c1].copy()


@dataclass(frozen=True)
class _Sim:
    code: int
    long_short: bool
    next_open: bool
    fixed_sizing: bool
    size: float
    fee: float
    fixed_fee: float
    slip: float
    init_cash: float

    def flags(self) -> tuple[int, bool, bool, bool, float, float, float, float]:
        """The simulation kernels' first eight arguments (strategy code, switches, money rules)."""
        return (self.code, self.long_short, self.next_open, self.fixed_sizing, self.size, self.fee, self.fixed_fee,
                self.slip)


def _sim_params(spec: EngineSpec, plan: GridPlan) -> _Sim:
    checks = {
        "direction": (spec.direction, ("long_only", "long_short")),
        "execution": (spec.execution, ("next_open", "close")),
        "sizing": (spec.sizing, ("fraction", "fixed")),
    }
    for name, (v, ok) in checks.items():
        if v not in ok:
            raise BacktestInputError(f"{name}={v!r}; expected one of {ok}")
    return _Sim(
        code=plan.code,
        long_short=spec.direction == "long_short",
        next_open=spec.execution == "next_open",
        fixed_sizing=spec.sizing == "fixed",
        size=float(spec.size if spec.size is not None else 1.0),
        fee=float(spec.fees),
        fixed_fee=float(spec.fixed_fees),
        slip=float(spec.slippage),
        init_cash=float(spec.initial_cash),
    )


def _slice(
    prices: Mapping[str, np.ndarray], keys: Sequence[str], rows: Any, c0: int, c1: int, backend: str
) -> dict[str, Any]:
    mod = xp(backend)
    out = {}
    for k in keys:
        a = prices[k]
        host = np.ascontiguousarray(
            a[rows, c0:c1] if isinstance(rows, slice) else a[rows][:, c0:c1], dtype=np.float64
        )
        out[k] = mod.asarray(host) if backend == GPU else host
    return out


def _simulate(
    sim: _Sim,
    plan: GridPlan,
    data: dict[str, Any],
    ind: Any,
    j0: int,
    cell_ids: Any,
    sf: Any,
    si: Any,
    backend: str,
    eq_out: Any = None,
    dd_out: Any = None,
) -> None:
    args = sim.flags()
    if backend == GPU:
        import cupy as cp

        from mystocks_gpu.gpu_ops.backtest.sim_gpu import simulate_gpu

        simulate_gpu(
            *args,
            data["open"],
            data["close"],
            ind,
            cp.asarray(plan.pidx),
            cp.asarray(plan.pval),
            j0,
            cell_ids,
            plan.n_par,
            sf,
            si,
            eq_out is not None,
            eq_out,
            dd_out,
        )
        return
    rec = eq_out is not None
    if not rec:
        eq_out = dd_out = np.empty((1, 1), dtype=np.float64)
    simulate_cpu(
        *args,
        data["open"],
        data["close"],
        ind,
        plan.pidx,
        plan.pval,
        j0,
        cell_ids,
        plan.n_par,
        sf,
        si,
        rec,
        eq_out,
        dd_out,
    )


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def run_chunk(
    chunk: Chunk,
    prices: Mapping[str, np.ndarray],
    spec: EngineSpec,
    backend: str | None = None,
    state: ChunkState | None = None,
    plan: GridPlan | None = None,
    col0: int = 0,
) -> ChunkState:
    """Run one chunk on ``backend`` and return the state after ``chunk.bar_stop``.

    ``prices``: arrays holding at least the chunk's bars and its lead; column ``j`` of them is the
    run's bar ``col0 + j`` (``col0 = 0``: the full prepared arrays the chunks were planned on; a
    streamed window passes its first bar). ``state``: the state returned by the previous time chunk
    of the same (symbol range, parameter range) (None for the first); it is not modified.
    """
    be = select(backend)
    mod = xp(be)
    plan = plan or compile_grid(spec.strategy, spec.params)
    sub = chunk.params(plan)
    sim = _sim_params(spec, sub)
    n_s = chunk.n_symbols
    n_cells = n_s * sub.n_par
    if chunk.bar_start == 0:
        if state is not None:
            raise BacktestInputError("the first time chunk of a symbol range takes no state")
        sf, si = init_state(mod, n_cells, sim.init_cash)
        carry = new_carry(mod, sub, n_s)
    else:
        if (
            state is None
            or state.bar_stop != chunk.bar_start
            or (state.sym_start, state.sym_stop) != (chunk.sym_start, chunk.sym_stop)
            or (state.par_start, state.par_stop) != (chunk.par_start, chunk.par_stop)
        ):
            raise BacktestInputError(
                f"chunk {chunk.index} (symbols {chunk.sym_start}:{chunk.sym_stop}, bars from {chunk.bar_start}) "
                "needs the state of the previous time chunk of the same symbol range"
            )
        sf = mod.array(mod.asarray(state.sf), copy=True)
        si = mod.array(mod.asarray(state.si), copy=True)
        carry = mod.array(mod.asarray(state.carry), copy=True)
    c0 = chunk.bar_start - chunk.lead
    if c0 < col0:
        raise BacktestInputError(f"chunk {chunk.index} reads bar {c0}; the prices given start at bar {col0}")
    data = _slice(
        prices,
        strategy_keys(plan.strategy),
        slice(chunk.sym_start, chunk.sym_stop),
        c0 - col0,
        chunk.bar_stop - col0,
        be,
    )
    cell_ids = mod.arange(n_cells, dtype=mod.int64)
    if be != GPU and fused_fits(sub.code, n_s):  # indicators per symbol, in the loop
        simulate_fused_cpu(*sim.flags(), data["open"], data["close"], data.get("high", data["close"]),
                           data.get("low", data["close"]), sub.ind_windows, c0, sub.n_ind, sub.pidx, sub.pval,
                           chunk.lead, cell_ids, sub.n_par, sf, si)
    else:
        ind = compute_indicators(sub, data, c0, chunk.lead, carry, be)
        _simulate(sim, sub, data, ind, chunk.lead, cell_ids, sf, si, be)
    return ChunkState(
        chunk.group, chunk.sym_start, chunk.sym_stop, chunk.bar_stop, sf, si, carry, be,
        chunk.par_start, chunk.par_stop,
    )


def _dict_array(params: Sequence[Mapping[str, Any]]) -> np.ndarray:
    out = np.empty(len(params), dtype=object)
    for i, p in enumerate(params):
        out[i] = dict(p)
    return out


def collect_stats(
    states: Sequence[ChunkState],
    symbols: Sequence[str],
    n_bars: int,
    spec: EngineSpec,
    plan: GridPlan | None = None,
) -> pd.DataFrame:
    """Merge the final states of every (symbol range, parameter range) into the stats table (rows
    symbol-major, parameter sets in grid order)."""
    plan = plan or compile_grid(spec.strategy, spec.params)
    n_par = plan.n_par
    by_range: dict[tuple[int, int], list[ChunkState]] = {}
    for state in states:
        by_range.setdefault((state.sym_start, state.sym_stop), []).append(state)
    pos = 0
    sf_parts, si_parts = [], []
    for (s0, s1), group in sorted(by_range.items()):
        group.sort(key=lambda g: g.par_start)
        ranges = [(g.par_start, n_par if g.par_stop < 0 else g.par_stop) for g in group]
        if s0 != pos or any(g.bar_stop != n_bars for g in group) or ranges[0][0] != 0 \
                or ranges[-1][1] != n_par or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:], strict=False)):
            raise BacktestInputError(
                f"states do not tile the run: range {s0}:{s1} after {pos}, parameter ranges {ranges}, "
                f"bar_stop {[g.bar_stop for g in group]} of {n_bars}"
            )
        pos = s1
        n_s = s1 - s0
        if len(group) == 1:
            sf_parts.append(to_host(group[0].sf))
            si_parts.append(to_host(group[0].si))
            continue
        # (NF, n_s * P_r) per parameter range -> (NF, n_s, n_par) -> symbol-major cells
        sf_parts.append(np.concatenate([to_host(g.sf).reshape(NF, n_s, -1) for g in group], axis=2)
                        .reshape(NF, n_s * n_par))
        si_parts.append(np.concatenate([to_host(g.si).reshape(NI, n_s, -1) for g in group], axis=2)
                        .reshape(NI, n_s * n_par))
    if pos != len(symbols):
        raise BacktestInputError(f"states cover {pos} of {len(symbols)} symbols")
    sf = np.concatenate(sf_parts, axis=1)
    si = np.concatenate(si_parts, axis=1)
    st = finalize_stats(sf, si, float(spec.initial_cash), float(spec.bars_per_year))
    sym_idx = np.repeat(np.arange(len(symbols)), n_par)
    par_idx = np.tile(np.arange(n_par), len(symbols))
    # the symbols converted once (to the string dtype pandas infers), then taken per cell: converting
    # a cells-long object column costs ~10x more
    names = pd.Series(np.asarray(symbols, dtype=object)).array
    df = pd.DataFrame(
        {
            "symbol": names.take(sym_idx),
            "param_id": par_idx,
            "params": np.tile(_dict_array(plan.params), len(symbols)),
            **st,
        }
    )
    return df


def run_curves(
    prices: Mapping[str, np.ndarray],
    symbols: Sequence[str],
    ts: np.ndarray,
    spec: EngineSpec,
    cells: Sequence[tuple[int, int]],
    backend: str | None = None,
    plan: GridPlan | None = None,
) -> list[EquityCurve]:
    """Equity and drawdown curves of ``cells`` = (symbol index, param_id) pairs (a second pass over
    only those cells and the indicator rows they use, time-chunked within the memory budget)."""
    if not cells:
        return []
    be = select(backend)
    plan = plan or compile_grid(spec.strategy, spec.params)
    rec = CurveRecorder(plan, spec, cells, len(ts), be)
    rec.feed(prices, 0, len(ts))
    eq, dd = rec.result()
    return [
        EquityCurve(
            str(symbols[s]),
            dict(plan.params[p]),
            np.asarray(ts, dtype=np.int64).copy(),
            eq[i],
            dd[i],
        )
        for i, (s, p) in enumerate(cells)
    ]


class CurveRecorder:
    """Records equity and drawdown of selected cells over bars fed in time order (whole arrays or
    streamed windows): the second pass of a run, over only those cells' parameter sets.

    ``stride`` > 1 keeps one point per block of ``stride`` bars (bar ``b`` is in block
    ``b // stride``): the equity at the block's last bar and the largest drawdown within it, so
    curves of long histories stay small (``ceil(n_bars / stride)`` points)."""

    def __init__(self, plan: GridPlan, spec: EngineSpec, cells: Sequence[tuple[int, int]], n_bars: int,
                 backend: str, stride: int = 1) -> None:
        self.be, self.mod = backend, xp(backend)
        pids = sorted({int(p) for _, p in cells})
        self.plan = plan.take(pids)
        self.keys = strategy_keys(plan.strategy)
        self.sim = _sim_params(spec, self.plan)
        local_p = {p: i for i, p in enumerate(pids)}
        self.rows = np.array(sorted({int(s) for s, _ in cells}), dtype=np.int64)
        local_s = {int(s): i for i, s in enumerate(self.rows)}
        n_run = len(cells)
        self.cell_ids = self.mod.asarray(np.array(
            [local_s[int(s)] * self.plan.n_par + local_p[int(p)] for s, p in cells], dtype=np.int64))
        self.stride = max(1, int(stride))
        n_out = -(-n_bars // self.stride)
        budget = int(spec.memory_budget_bytes)
        _, self.t_len, _ = layout(self.plan, len(self.rows), n_bars,
                                  max(budget - 16 * n_run * min(n_bars, 1 << 16), budget // 2))
        self.sf, self.si = init_state(self.mod, n_run, self.sim.init_cash)
        self.carry = new_carry(self.mod, self.plan, len(self.rows))
        self.eq = np.empty((n_run, n_out))
        self.dd = np.full((n_run, n_out), -np.inf)

    def feed(self, prices: Mapping[str, np.ndarray], col0: int, stop: int, start: int | None = None) -> None:
        """Record bars ``[start, stop)`` (default: from ``col0``), in order across calls; ``prices``
        column ``j`` is bar ``col0 + j`` and must hold the ``plan.lead`` bars before ``start``."""
        start = col0 if start is None else start
        for b0 in range(start, stop, self.t_len):
            b1 = min(stop, b0 + self.t_len)
            lead = min(b0, self.plan.lead)
            if b0 - lead < col0:
                raise BacktestInputError(f"curves of bars from {b0} need bars from {b0 - lead}; given from {col0}")
            data = _slice(prices, self.keys, self.rows, b0 - lead - col0, b1 - col0, self.be)
            ind = compute_indicators(self.plan, data, b0 - lead, lead, self.carry, self.be)
            e_out = self.mod.empty((len(self.eq), b1 - b0), dtype=self.mod.float64)
            d_out = self.mod.empty((len(self.eq), b1 - b0), dtype=self.mod.float64)
            _simulate(self.sim, self.plan, data, ind, lead, self.cell_ids, self.sf, self.si, self.be, e_out, d_out)
            e, d = to_host(e_out), to_host(d_out)
            if self.stride == 1:
                self.eq[:, b0:b1] = e
                self.dd[:, b0:b1] = d
                continue
            blocks = np.arange(b0, b1) // self.stride
            last = np.flatnonzero(np.append(blocks[1:] != blocks[:-1], True))  # each block's last bar here
            self.eq[:, blocks[last]] = e[:, last]
            first = np.append(0, last[:-1] + 1)
            self.dd[:, blocks[last]] = np.maximum(self.dd[:, blocks[last]], np.maximum.reduceat(d, first, axis=1))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Equity and drawdown ``(n_cells, ceil(n_bars / stride))``."""
        return self.eq, self.dd


def best_cells(stats: pd.DataFrame, metric: str, n: int) -> list[tuple[int, int]]:
    """(symbol index, param_id) of the best ``n`` rows of a stats table (rows symbol-major)."""
    if n <= 0 or len(stats) == 0:
        return []
    order = rank_order(stats[metric].to_numpy(dtype=np.float64), metric)[:n]
    n_par = int(stats["param_id"].max()) + 1
    return [(int(i) // n_par, int(i) % n_par) for i in order]


def run_backtest(
    prices: Mapping[str, Any],
    symbols: Sequence[str],
    ts: Any,
    spec: EngineSpec,
    backend: str | None = None,
    progress_cb: Callable[[float], None] | None = None,
) -> BacktestOutput:
    """Run the whole backtest: every parameter set of ``spec.params`` on every symbol.

    Args:
        prices: ``open``/``high``/``low``/``close`` (+ ``signal``) float64 ``(n_symbols, n_bars)``.
        symbols: ``(n_symbols,)`` names; ts: int64 ``(n_bars,)`` bar times, ns, ascending.
        spec: an :class:`EngineSpec` (e.g. ``BacktestSpec``); universe and time range are applied.
        backend: ``auto`` (default) / ``cpu`` / ``gpu``.
        progress_cb: called with the fraction of cells x bars done after every chunk.

    Returns a :class:`BacktestOutput` whose ``stats`` rows are symbol-major (symbols in data order
    for ``universe="all"``, else in the spec's sorted universe order; parameter sets in grid order,
    ``param_id``), with the curves of the best ``spec.n_curves`` cells by ``spec.metric``.
    Raises :class:`BacktestInputError` for unusable inputs and ``BackendUnavailable`` when ``gpu``
    is asked for without one.
    """
    t_start = time.perf_counter()
    be = select(backend)
    plan = compile_grid(spec.strategy, spec.params)
    data, syms, ts_k = prepare_inputs(prices, symbols, ts, spec)
    n_sym, n_bars = len(syms), len(ts_k)
    n_cells = plan.n_par * n_sym * n_bars
    if n_cells > int(spec.max_cells):
        raise BacktestInputError(
            f"{plan.n_par} parameter sets x {n_sym} symbols x {n_bars} bars = {n_cells} cells exceeds max_cells={spec.max_cells}"
        )
    chunks = plan_chunks(spec, n_sym, n_bars, plan)
    finals: list[ChunkState] = []
    state: ChunkState | None = None
    done = 0
    for ch in chunks:
        state = run_chunk(ch, data, spec, be, state if ch.bar_start > 0 else None, plan)
        if ch.bar_stop == n_bars:
            finals.append(state.to_host())
            state = None
        done += ch.n_symbols * ch.n_bars * ch.params(plan).n_par
        if progress_cb is not None:
            progress_cb(done / n_cells if n_cells else 1.0)
    stats = collect_stats(finals, syms, n_bars, spec, plan)
    curves = run_curves(
        data, syms, ts_k, spec, best_cells(stats, spec.metric, int(spec.n_curves)), be, plan
    )
    return BacktestOutput(
        stats=stats,
        curves=curves,
        metric=spec.metric,
        top_n=spec.top_n,
        backend=be,
        n_chunks=len(chunks),
        n_cells=n_cells,
        elapsed_s=time.perf_counter() - t_start,
        meta={
            "strategy": plan.strategy,
            "n_params": plan.n_par,
            "n_symbols": n_sym,
            "n_bars": n_bars,
        },
    )


__all__ = [
    "BacktestOutput",
    "CurveRecorder",
    "Chunk",
    "ChunkState",
    "EngineSpec",
    "EquityCurve",
    "best_cells",
    "chunk_bytes",
    "collect_stats",
    "plan_chunks",
    "prepare_inputs",
    "run_backtest",
    "run_chunk",
    "run_curves",
]
