"""CPU twin of the backtest simulation: one numba ``prange`` iteration per cell, walking the bars.

Signals are evaluated inline from the shared indicator stack (fused signal + simulation, no
per-cell Python). The fill, fee and statistics rules are documented in ``engine.py``; the CUDA
kernel in ``sim_gpu.py`` is a line-by-line transcription of :func:`simulate_cpu` (same operations
in the same order, compiled without FMA contraction), so both give the same doubles.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from numba import njit, prange

from mystocks_gpu.gpu_ops.backtest.signals import indicator_row, resolve_action, signal_flags
from mystocks_gpu.gpu_ops.backtest.state import (
    A_CLOSE_LONG,
    A_CLOSE_SHORT,
    A_NONE,
    A_OPEN_LONG,
    A_OPEN_SHORT,
    A_REV_TO_LONG,
    A_REV_TO_SHORT,
    DD_MARGIN,
    F_CASH,
    F_ENTRY,
    F_EQ,
    F_FEES,
    F_MAXDD,
    F_PEAK,
    F_S1,
    F_S2,
    F_SN2,
    F_UNITS,
    I_MAXRUN,
    I_NCLOSED,
    I_NEXP,
    I_NVALID,
    I_NWINS,
    I_PENDING,
    I_RUN,
)
from mystocks_gpu.gpu_ops.backtest.strategies import BREAKOUT, MA_CROSS, ZSCORE


@njit(cache=True)
def execute_order(
    act: int,
    px: float,
    fixed_sizing: bool,
    size: float,
    fee: float,
    fixed_fee: float,
    slip: float,
    cash: float,
    units: float,
    entry: float,
    fees: float,
    nclosed: int,
    nwins: int,
) -> tuple[float, float, float, float, int, int]:
    """Apply action ``act`` at reference price ``px``; returns the new
    (cash, units, entry, fees, nclosed, nwins). Rules: see ``engine.py``."""
    # --- closing order ---
    if act == A_CLOSE_LONG or act == A_REV_TO_SHORT:
        fill = px * (1.0 - slip)
        proceeds = units * fill
        fp = proceeds * fee + fixed_fee
        net = proceeds - fp
        if net >= 0.0:
            cash = cash + net
            fees = fees + fp
            nclosed += 1
            if net - entry > 0.0:
                nwins += 1
            units = 0.0
        else:
            act = A_NONE  # proceeds cannot cover the fees: keep the position
    elif act == A_CLOSE_SHORT or act == A_REV_TO_LONG:
        fill = px * (1.0 + slip)
        cost = (-units) * fill
        fp = cost * fee + fixed_fee
        tot = cost + fp
        cash = cash - tot
        fees = fees + fp
        nclosed += 1
        if entry - tot > 0.0:
            nwins += 1
        units = 0.0
    # --- opening order ---
    if act == A_OPEN_LONG or act == A_REV_TO_LONG:
        fill = px * (1.0 + slip)
        budget = -1.0
        if fixed_sizing:
            u = size / px
            cost = u * fill
            fp = cost * fee + fixed_fee
            tot = cost + fp
            if tot <= cash:
                units = u
                cash = cash - tot
                fees = fees + fp
                entry = tot
            else:
                budget = cash
        else:
            budget = size * cash
        if budget - fixed_fee > 0.0:
            notional = (budget - fixed_fee) / (1.0 + fee)
            units = notional / fill
            fees = fees + (budget - notional)
            cash = cash - budget
            entry = budget
    elif act == A_OPEN_SHORT or act == A_REV_TO_SHORT:
        fill = px * (1.0 - slip)
        u = 0.0
        if fixed_sizing:
            u = size / px
        else:
            budget = size * cash
            if budget - fixed_fee > 0.0:
                u = ((budget - fixed_fee) / (1.0 + fee)) / fill
        if u > 0.0:
            proceeds = u * fill
            fp = proceeds * fee + fixed_fee
            net = proceeds - fp
            if net >= 0.0:
                units = -u
                cash = cash + net
                fees = fees + fp
                entry = net
    return cash, units, entry, fees, nclosed, nwins


@njit(cache=True)
def _advance_cell(
    k: int,
    code: int,
    long_short: bool,
    next_open: bool,
    fixed_sizing: bool,
    size: float,
    fee: float,
    fixed_fee: float,
    slip: float,
    open_: np.ndarray,
    close: np.ndarray,
    ind: np.ndarray,
    pidx: np.ndarray,
    pval: np.ndarray,
    j0: int,
    n: int,
    out0: int,
    cell_ids: np.ndarray,
    n_par: int,
    sf: np.ndarray,
    si: np.ndarray,
    record: bool,
    eq_out: np.ndarray,
    dd_out: np.ndarray,
    ind_s: int,
) -> None:
    """Advance state column ``k`` (cell ``cell_ids[k]``) over columns ``j0 .. n-1``; recorded
    columns go to ``eq_out[k, j - out0]``. Entering at any ``j0`` with the state left at ``j0``
    gives the same doubles as one pass (the drawdown and its threshold are recomputed from the
    stored equity, peak and max drawdown exactly as the loop computes them). ``ind_s``: the
    symbol's row in ``ind`` (-1: its row in the prices, a shared stack; 0: a one-symbol stack)."""
    cell = cell_ids[k]
    s = cell // n_par
    p = cell - s * n_par
    sx = s if ind_s < 0 else ind_s
    ia = pidx[p, 0]
    ib = pidx[p, 1]
    th0 = pval[p, 0]
    th1 = pval[p, 1]
    cash = sf[F_CASH, k]
    units = sf[F_UNITS, k]
    entry = sf[F_ENTRY, k]
    eq = sf[F_EQ, k]
    peak = sf[F_PEAK, k]
    s1 = sf[F_S1, k]
    s2 = sf[F_S2, k]
    sn2 = sf[F_SN2, k]
    maxdd = sf[F_MAXDD, k]
    fees = sf[F_FEES, k]
    nvalid = si[I_NVALID, k]
    nexp = si[I_NEXP, k]
    nclosed = si[I_NCLOSED, k]
    nwins = si[I_NWINS, k]
    run = si[I_RUN, k]
    maxrun = si[I_MAXRUN, k]
    pending = si[I_PENDING, k]
    dd = 1.0 - eq / peak if eq < peak else 0.0  # drawdown at the last valid bar
    thr = peak * (1.0 - maxdd + DD_MARGIN)  # equity below this may set a new max drawdown
    a_p = ind[ia, sx, j0 - 1] if j0 > 0 else np.nan
    b_p = ind[ib, sx, j0 - 1] if j0 > 0 else np.nan
    for j in range(j0, n):
        o = open_[s, j]
        c = close[s, j]
        a_t = ind[ia, sx, j]
        b_t = ind[ib, sx, j]
        if not (abs(o) < np.inf and abs(c) < np.inf):  # finite open and close
            pending = A_NONE  # an order due at a missing bar is dropped
            if record:
                eq_out[k, j - out0] = eq
                dd_out[k, j - out0] = dd
            a_p = a_t
            b_p = b_t
            continue
        if pending != A_NONE:  # next_open: the order decided at the previous valid bar
            cash, units, entry, fees, nclosed, nwins = execute_order(
                pending,
                o,
                fixed_sizing,
                size,
                fee,
                fixed_fee,
                slip,
                cash,
                units,
                entry,
                fees,
                nclosed,
                nwins,
            )
            pending = A_NONE
        flags = signal_flags(code, a_t, a_p, b_t, b_p, c, th0, th1)
        if flags != 0:
            act = resolve_action(flags, units, long_short)
            if act != A_NONE:
                if next_open:
                    pending = act
                else:
                    cash, units, entry, fees, nclosed, nwins = execute_order(
                        act,
                        c,
                        fixed_sizing,
                        size,
                        fee,
                        fixed_fee,
                        slip,
                        cash,
                        units,
                        entry,
                        fees,
                        nclosed,
                        nwins,
                    )
        # --- mark to market at the close ---
        e = cash + units * c
        # per-bar return r = e / eq - 1 (0 when equity is unchanged or eq <= 0): adding a zero
        # return leaves the sums unchanged, so only changed equity is accumulated
        if e != eq and eq > 0.0:
            r = e / eq - 1.0
            s1 = s1 + r
            s2 = s2 + r * r
            rn = r if r < 0.0 else 0.0  # branch-free: the sign of r is unpredictable
            sn2 = sn2 + rn * rn
        nvalid += 1
        if units != 0.0:
            nexp += 1
        if e > peak:
            peak = e
            run = 0
            dd = 0.0
            thr = peak * (1.0 - maxdd + DD_MARGIN)
        elif e < peak:
            run += 1
            if run > maxrun:
                maxrun = run
            # equity unchanged -> same drawdown as the last valid bar (already counted);
            # e >= thr -> 1 - e/peak < maxdd for sure: skip the division
            if e != eq and (record or e < thr):
                dd = 1.0 - e / peak
                if dd > maxdd:
                    maxdd = dd
                    thr = peak * (1.0 - maxdd + DD_MARGIN)
        else:
            run = 0
            dd = 0.0
        eq = e
        if record:
            eq_out[k, j - out0] = e
            dd_out[k, j - out0] = dd
        a_p = a_t
        b_p = b_t
    sf[F_CASH, k] = cash
    sf[F_UNITS, k] = units
    sf[F_ENTRY, k] = entry
    sf[F_EQ, k] = eq
    sf[F_PEAK, k] = peak
    sf[F_S1, k] = s1
    sf[F_S2, k] = s2
    sf[F_SN2, k] = sn2
    sf[F_MAXDD, k] = maxdd
    sf[F_FEES, k] = fees
    si[I_NVALID, k] = nvalid
    si[I_NEXP, k] = nexp
    si[I_NCLOSED, k] = nclosed
    si[I_NWINS, k] = nwins
    si[I_RUN, k] = run
    si[I_MAXRUN, k] = maxrun
    si[I_PENDING, k] = pending


#: bars per time block: a block of a symbol's indicator rows (~35 x 128 x 8 B for a 300-pair MA grid)
#: stays in the core's L1/L2 cache while every cell of the symbol walks it
TIME_BLOCK = 128
#: most cells of one symbol in one parallel work item (keeps threads busy when there are few symbols)
GROUP_CELLS = 64


@njit(cache=True)
def _symbol_groups(cell_ids: np.ndarray, n_par: int, cap: int = GROUP_CELLS) -> np.ndarray:
    """Boundaries ``(n_groups + 1,)`` of runs of consecutive state columns whose cells share a
    symbol (at most ``cap`` each)."""
    n_run = cell_ids.shape[0]
    cuts = np.empty(n_run + 1, np.int64)
    m = 0
    prev = -1
    size = 0
    for k in range(n_run):
        s = cell_ids[k] // n_par
        if s != prev or size == cap:
            cuts[m] = k
            m += 1
            prev = s
            size = 0
        size += 1
    cuts[m] = n_run
    return cuts[: m + 1]


def simulate_cpu(
    code: int,
    long_short: bool,
    next_open: bool,
    fixed_sizing: bool,
    size: float,
    fee: float,
    fixed_fee: float,
    slip: float,
    open_: np.ndarray,
    close: np.ndarray,
    ind: np.ndarray,
    pidx: np.ndarray,
    pval: np.ndarray,
    j0: int,
    cell_ids: np.ndarray,
    n_par: int,
    sf: np.ndarray,
    si: np.ndarray,
    record: bool,
    eq_out: np.ndarray,
    dd_out: np.ndarray,
) -> None:
    """Advance the state of ``cell_ids`` over columns ``j0 .. L-1`` of a chunk.

    Work items are runs of up to :data:`GROUP_CELLS` cells of one symbol; each walks the bars in
    blocks of :data:`TIME_BLOCK`, running every cell of the item over a block before the next, so
    the symbol's indicator rows are read from cache (about 1.4x faster than cell by cell over the
    whole history once the indicator stack outgrows the cache; results are the same doubles).
    The loop is compiled once per (strategy ``code``, ``record``): constants there, so the compiler
    drops the other strategies' signal code and the recording from the loop (about 1.15x more).

    Args:
        code: strategy code (``strategies.MA_CROSS`` ...).
        long_short / next_open / fixed_sizing: direction, execution and sizing switches.
        size: fraction of cash (fraction sizing, (0, 1]) or cash amount per entry (fixed sizing).
        fee: proportional fee (fraction of notional); fixed_fee: currency per order; slip: fraction.
        open_, close: float64 ``(n_s, L)`` prices of the chunk's symbols (columns < j0 are lead).
        ind: float64 ``(n_ind, n_s, L)`` indicator stack; pidx int64 ``(n_par, 2)`` rows a/b per
            parameter set; pval float64 ``(n_par, 2)`` thresholds.
        cell_ids: int64 ``(n_run,)`` cells to run (``cell = s * n_par + p``); state column k belongs
            to ``cell_ids[k]``.
        sf, si: state ``(NF, n_run)`` float64 / ``(NI, n_run)`` int64, updated in place.
        record: write equity and drawdown per column into ``eq_out`` / ``dd_out`` ``(n_run, L - j0)``.
    """
    _kernel(int(code), bool(record))(long_short, next_open, fixed_sizing, size, fee, fixed_fee, slip, open_,
                                      close, ind, pidx, pval, j0, cell_ids, n_par, sf, si, eq_out, dd_out)


@cache
def _kernel(code: int, record: bool) -> Any:
    """The parallel simulation loop with ``code`` and ``record`` compiled in (numba freezes closure
    variables as constants; each pair is compiled once and cached on disk under its values).

    The cell step (:func:`_advance_cell`, and the signal and order functions it calls) is an
    ordinary jitted function, not numba-IR-inlined (``inline="always"``) into the ``prange`` loop:
    it is still specialised per pair (its ``code``, ``record`` and ``ind_s`` arguments are typed as
    literals, so the other strategies' branches are pruned) and LLVM inlines what pays, but the
    parallel loop's compile no longer re-analyses the whole step. A strategy's first backtest in a
    cold cache (both ``record`` loops) compiled 27 s, now 6.5 s on the 2-core VM; simulation time
    unchanged (2026-12-06, ``bench/HISTORY.md``)."""

    @njit(cache=True, parallel=True, nogil=True)
    def kernel(long_short, next_open, fixed_sizing, size, fee, fixed_fee, slip, open_, close, ind, pidx, pval,
               j0, cell_ids, n_par, sf, si, eq_out, dd_out):  # pragma: no cover - numba
        cuts = _symbol_groups(cell_ids, n_par)
        n = close.shape[1]
        for g in prange(cuts.shape[0] - 1):
            for b0 in range(j0, n, TIME_BLOCK):
                b1 = min(b0 + TIME_BLOCK, n)
                for k in range(cuts[g], cuts[g + 1]):
                    _advance_cell(k, code, long_short, next_open, fixed_sizing, size, fee, fixed_fee, slip, open_,
                                  close, ind, pidx, pval, b0, b1, j0, cell_ids, n_par, sf, si, record, eq_out,
                                  dd_out, -1)

    return kernel


#: strategies whose indicators :func:`simulate_fused_cpu` computes inside the simulation loop
#: (stateless windows; RSI carries state across chunks and ``signal`` reads its input directly)
FUSED_CODES = (MA_CROSS, BREAKOUT, ZSCORE)
#: fused only with at least this many symbols: one work item per symbol, so enough items for the
#: threads (fewer symbols take the shared stack, whose work items split a symbol's cells)
FUSED_MIN_SYMBOLS = 16


def fused_fits(code: int, n_symbols: int) -> bool:
    """Whether :func:`simulate_fused_cpu` runs a chunk of ``n_symbols`` symbols with strategy
    ``code``. Its per-thread rows (``n_ind x L`` float64) never exceed the shared stack the chunk
    planner budgets for (``n_s x n_ind x L``). Measured, 300 MA pairs x 100 symbols x 2,500 bars:
    0.46-0.55 s fused against 0.49-0.60 s from the stack, interleaved runs."""
    return code in FUSED_CODES and n_symbols >= FUSED_MIN_SYMBOLS


def simulate_fused_cpu(
    code: int,
    long_short: bool,
    next_open: bool,
    fixed_sizing: bool,
    size: float,
    fee: float,
    fixed_fee: float,
    slip: float,
    open_: np.ndarray,
    close: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    windows: np.ndarray,
    base: int,
    n_ind: int,
    pidx: np.ndarray,
    pval: np.ndarray,
    j0: int,
    cell_ids: np.ndarray,
    n_par: int,
    sf: np.ndarray,
    si: np.ndarray,
) -> None:
    """:func:`simulate_cpu` (``record=False``) with the indicators computed per work item: each
    item (the cells of one symbol: a run of consecutive ``cell_ids``) first builds the rows of that
    symbol's indicator stack its cells read (``signals.indicator_row``: the same doubles as ``compute_indicators_cpu``) into a
    buffer of its own, ``(n_ind, 1, L)`` float64 (a few kB: it stays in the core's cache), then
    walks its cells over them. The stack ``(n_ind, n_s, L)`` of the whole chunk is never written
    to memory and read back, and the indicators run in the same parallel loop as the cells.

    Args: as :func:`simulate_cpu`; ``code`` in :data:`FUSED_CODES`; ``high``/``low`` ``(n_s, L)``
    (read by ``BREAKOUT`` only: pass ``close`` for the others); ``windows`` int64 ``(n_w,)`` the
    plan's indicator windows; ``base`` the absolute bar of column 0; ``n_ind`` the plan's rows.
    """
    if code not in FUSED_CODES:
        raise ValueError(f"strategy code {code} has no fused CPU kernel")
    _fused_kernel(int(code))(long_short, next_open, fixed_sizing, size, fee, fixed_fee, slip, open_, close, high,
                             low, windows, base, n_ind, pidx, pval, j0, cell_ids, n_par, sf, si)


@cache
def _fused_kernel(code: int) -> Any:
    """The fused loop with ``code`` compiled in (see :func:`_kernel`)."""

    @njit(cache=True, parallel=True, nogil=True)
    def kernel(long_short, next_open, fixed_sizing, size, fee, fixed_fee, slip, open_, close, high, low, windows,
               base, n_ind, pidx, pval, j0, cell_ids, n_par, sf, si):  # pragma: no cover - numba
        cuts = _symbol_groups(cell_ids, n_par, cell_ids.shape[0])  # one work item per symbol's run
        n = close.shape[1]
        none = np.empty((1, 1))
        for g in prange(cuts.shape[0] - 1):
            s = cell_ids[cuts[g]] // n_par
            rows = np.empty((n_ind, 1, n))
            tmp = np.empty(n)
            need = np.zeros(n_ind, np.bool_)
            for k in range(cuts[g], cuts[g + 1]):
                p = cell_ids[k] - s * n_par
                need[pidx[p, 0]] = True
                need[pidx[p, 1]] = True
            for r in range(n_ind):
                if need[r]:
                    indicator_row(code, r, s, close, high, low, windows, base, rows[r, 0], tmp)
            for b0 in range(j0, n, TIME_BLOCK):
                b1 = min(b0 + TIME_BLOCK, n)
                for k in range(cuts[g], cuts[g + 1]):
                    _advance_cell(k, code, long_short, next_open, fixed_sizing, size, fee, fixed_fee, slip, open_,
                                  close, rows, pidx, pval, b0, b1, j0, cell_ids, n_par, sf, si, False, none, none, 0)

    return kernel
