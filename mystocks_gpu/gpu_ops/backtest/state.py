"""Per-cell simulation state: the layout shared by the CPU and GPU kernels and the stats reducer.

A *cell* is one (parameter set, symbol) pair; within a chunk of ``n_s`` symbols and ``n_par``
parameter sets, cell id ``= s_local * n_par + p``. State is struct-of-arrays so GPU threads read it
coalesced: ``sf`` float64 ``(NF, n_cells)`` and ``si`` int64 ``(NI, n_cells)``. Carrying both arrays
from one time chunk to the next reproduces an unchunked run exactly (the kernels only ever add to
them in bar order).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

# float64 fields (sf rows)
F_CASH = 0  # cash, account currency
F_UNITS = 1  # position in units (> 0 long, < 0 short, 0 flat); fractional units allowed
F_ENTRY = (
    2  # cash out-flow of the open long's entry (cost + fee) / net in-flow of the open short's entry
)
F_EQ = 3  # equity at the last valid bar's close (init_cash before the first valid bar)
F_PEAK = 4  # running peak of equity (starts at init_cash)
F_S1 = 5  # sum of per-bar returns
F_S2 = 6  # sum of squared per-bar returns
F_SN2 = 7  # sum of squared negative per-bar returns
F_MAXDD = 8  # max drawdown so far, as a positive fraction of the peak
F_FEES = 9  # fees paid so far (proportional + fixed)
NF = 10

# int64 fields (si rows)
I_NVALID = 0  # valid bars seen (bars with finite open and close) = number of per-bar returns
I_NEXP = 1  # valid bars whose close found a position
I_NCLOSED = 2  # closed round trips
I_NWINS = 3  # closed round trips with pnl > 0 after fees
I_RUN = 4  # current run of consecutive valid bars below the peak
I_MAXRUN = 5  # longest such run (max drawdown duration, bars)
I_PENDING = 6  # action decided at the last valid bar, to execute at the next bar's open
NI = 7

STATE_BYTES_PER_CELL = 8 * (NF + NI)

# signal flag bits
EL = 1
XL = 2
ES = 4
XS = 8

# actions
A_NONE = 0
A_OPEN_LONG = 1
A_CLOSE_LONG = 2
A_OPEN_SHORT = 3
A_CLOSE_SHORT = 4
A_REV_TO_SHORT = 5  # close the long, then open a short (two orders)
A_REV_TO_LONG = 6  # cover the short, then open a long (two orders)


def init_state(xp: ModuleType, n_cells: int, init_cash: float) -> tuple[Any, Any]:
    """Fresh state for ``n_cells`` cells on the array module ``xp`` (numpy or cupy)."""
    sf = xp.zeros((NF, n_cells), dtype=xp.float64)
    si = xp.zeros((NI, n_cells), dtype=xp.int64)
    sf[F_CASH] = init_cash
    sf[F_EQ] = init_cash
    sf[F_PEAK] = init_cash
    return sf, si

ZSCORE_FLAT_REL = 1e-12  # sd <= this * |mean| -> flat window, z undefined
DD_MARGIN = 1e-12  # absolute margin of the max-drawdown pre-check (exact: see sim_cpu.simulate_cpu)
