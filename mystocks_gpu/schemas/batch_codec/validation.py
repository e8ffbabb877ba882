"""Vectorised validation of decoded Tick columns (codes 32-43 of :class:`Status`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numba
import numpy as np

from mystocks_gpu.schemas.symbols import SymbolTable
from mystocks_gpu.schemas.validate import MAX_FUTURE_NS, MIN_TS_NS


@numba.njit(cache=True, nogil=True)
def _validate_ticks(ts, nonempty, price, size, bid, ask, bid_size, ask_size, side, kind, hi_ts, out):  # pragma: no cover
    for i in range(ts.size):
        c = 0
        if ts[i] < MIN_TS_NS:
            c = 32
        elif ts[i] > hi_ts:
            c = 33
        elif not nonempty[i]:
            c = 34
        elif not (np.isfinite(price[i]) and price[i] > 0):
            c = 35
        elif not (np.isfinite(size[i]) and size[i] >= 0):
            c = 36
        elif not (np.isfinite(bid[i]) and bid[i] > 0):
            c = 37
        elif not (np.isfinite(ask[i]) and ask[i] > 0):
            c = 38
        elif not (np.isfinite(bid_size[i]) and bid_size[i] >= 0):
            c = 39
        elif not (np.isfinite(ask_size[i]) and ask_size[i] >= 0):
            c = 40
        elif bid[i] > ask[i]:
            c = 41
        elif side[i] < -1 or side[i] > 1:
            c = 42
        elif kind[i] == 0 and size[i] <= 0:
            c = 43
        out[i] = c


def validate_ticks(columns: Mapping[str, np.ndarray], now_ns: int | None = None,
                   symbols: SymbolTable | Sequence[str] | None = None) -> np.ndarray:
    """int8 ``(n,)`` status codes (0 or 32-43) by the rules of ``validate.validate_tick``, first
    failing rule first. Columns as :class:`TickDecoder` gives them (``ts``/``ts_event``, ``kind`` 0 =
    TRADE, ...). Empty symbols come from ``sym_len``/``symbol_len``, or, without them, from the code of
    ``""`` in ``symbols``."""

    def col(*names: str) -> np.ndarray:
        for nm in names:
            if nm in columns:
                return np.asarray(columns[nm])
        raise KeyError(f"validate_ticks needs a column {names[0]!r}")

    ts = col("ts", "ts_event").astype(np.int64, copy=False)
    if "sym_len" in columns or "symbol_len" in columns:
        nonempty = col("sym_len", "symbol_len") > 0
    elif symbols is not None:
        empty = symbols.get("") if isinstance(symbols, SymbolTable) else \
            (list(symbols).index("") if "" in symbols else None)
        nonempty = col("sym", "symbol") != (-1 if empty is None else empty)
    else:
        raise ValueError("validate_ticks needs sym_len or a symbol table to see empty symbols")
    f = [col(k).astype(np.float64, copy=False) for k in ("price", "size", "bid", "ask", "bid_size", "ask_size")]
    side = col("side").astype(np.int64, copy=False)
    kind = col("kind").astype(np.int64, copy=False)
    now = time.time_ns() if now_ns is None else int(now_ns)
    out = np.empty(ts.size, np.int8)
    hi = np.int64(min(now + MAX_FUTURE_NS, 2**63 - 1))
    _validate_ticks(ts, nonempty, *f, side, kind, hi, out)  # type: ignore[call-arg]
    return out
