"""Event-time OHLCV bars per symbol with allowed lateness: :class:`BarBuilder`.

Bars are ``[t0, t0 + I)`` with ``t0`` a multiple of the interval ``I`` (ns since the Unix
epoch). They aggregate TRADE rows: open/close = price of the bar's trade with the earliest /
latest ``ts`` (ties: first / last to arrive, i.e. pandas ``resample`` on trades stably
sorted by time), high/low of price, volume = sum(size), vwap = sum(price size) / sum(size)
(NaN when the volume is 0) and the trade count.

Event time: each symbol's watermark is the largest ``ts`` seen for it (trades and quotes).
A bar is emitted by the row that moves the watermark to ``>= t0 + I + L`` (L =
``allowed_lateness_ns``); bars closed by the same row come out in ``t0`` order, and bars
come out in that arrival order across batches, so any cut of a stream into batches emits
the same bars in the same order. Bars with no trades are never emitted.

A trade is **late** when its bar's window had already closed before the trade arrived
(``t0 + I + L <= watermark`` before its row, or its bar was emitted by :meth:`flush`),
whether or not that bar had trades: it is flagged in ``late_mask`` (the runtime sends it to
the DLQ with reason ``late``) and not counted anywhere. Quotes are never late.

State per symbol: ``B = 2 + L // I`` open-bar slots (at most ``1 + ceil(L / I)`` bars can be
open at once) of 10 values each, a watermark and a flush floor: ``80 B + 16`` bytes per
symbol (176 with L < I). ``process`` works on a copy of the state unless ``inplace=True``.

Backends: bars always run on the CPU (numba) path. On the ``gpu`` backend a CuPy batch is
copied to the host, processed there, and the bars and ``late_mask`` are returned as CuPy
arrays; the bar state stays on the host (it is small).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from mystocks_gpu.exceptions import ConfigError, MyStocksError
from mystocks_gpu.gpu_ops.backend import CPU, GPU, select, xp
from mystocks_gpu.gpu_ops.tick_columns import TickColumns, TickColumnsError, code_range

NS_PER_SECOND = 1_000_000_000
#: default bar intervals: 1 s and 1 min
DEFAULT_BAR_INTERVALS_NS: tuple[int, ...] = (NS_PER_SECOND, 60 * NS_PER_SECOND)
NONE_TS = -(2**63)  # "nothing seen yet" watermark / "no floor" sentinel
BAR_COLUMNS = (
    "sym", "ts_open", "interval_ns", "open", "high", "low", "close", "volume", "vwap", "trades",
)
BAR_STATE_ARRAYS = ("b_t0", "b_cnt", "b_ots", "b_cts", "b_val", "wm", "floor")
BAR_STATE_FORMAT = "mystocks-bars"
BAR_STATE_VERSION = 1
# value columns of the (S, B, 6) open-bar array
_O, _H, _L, _C, _V, _PV = range(6)


class BarConfigError(ConfigError, ValueError):
    """Invalid bar interval or lateness."""


class BarStateError(MyStocksError, ValueError):
    """Serialised bar state is corrupt or was written for another interval / lateness."""


@dataclass(frozen=True)
class BarState:
    """Open bars and watermarks of a :class:`BarBuilder` (host NumPy arrays, first axis =
    symbol code): ``b_t0`` (S, B) i64, ``b_cnt`` (S, B) i64 (0 = free slot), ``b_ots`` /
    ``b_cts`` (S, B) i64 (ts of the open / close trade), ``b_val`` (S, B, 6) f64 (open, high,
    low, close, volume, sum p*v), ``wm`` (S,) i64 (watermark), ``floor`` (S,) i64 (bars
    starting before it were flushed). Treat as immutable."""

    capacity: int
    arrays: dict[str, np.ndarray]


@njit(cache=True, error_model="numpy")
def _emit_closed(s, t, ivl, L, b_t0, b_cnt, b_val, o_sym, o_t0, o_val, o_cnt, m):  # pragma: no cover
    B = b_t0.shape[1]
    while True:
        best = -1
        for k in range(B):
            if b_cnt[s, k] > 0 and b_t0[s, k] + ivl + L <= t:
                if best < 0 or b_t0[s, k] < b_t0[s, best]:
                    best = k
        if best < 0:
            return m
        o_sym[m] = s
        o_t0[m] = b_t0[s, best]
        for j in range(6):
            o_val[m, j] = b_val[s, best, j]
        o_cnt[m] = b_cnt[s, best]
        b_cnt[s, best] = 0
        m += 1


@njit(cache=True, error_model="numpy")
def bars_batch(
    sym, ts, kind, price, size, ivl, L, b_t0, b_cnt, b_ots, b_cts, b_val, wm, floor, late,
    o_sym, o_t0, o_val, o_cnt,
):  # pragma: no cover - compiled
    """One sequential pass: update open bars in place, flag ``late``, write emitted bars
    into ``o_*`` (capacity >= open bars + trades); returns the number of bars emitted."""
    B = b_t0.shape[1]
    m = 0
    for i in range(sym.shape[0]):
        s = sym[i]
        t = ts[i]
        w = wm[s]
        q = t // ivl
        t0 = q * ivl
        is_trade = kind[i] == 0
        if is_trade and ((w != NONE_TS and t0 + ivl + L <= w) or t0 < floor[s]):
            late[i] = True
            is_trade = False
        if w == NONE_TS or t > w:
            wm[s] = t
            m = _emit_closed(s, t, ivl, L, b_t0, b_cnt, b_val, o_sym, o_t0, o_val, o_cnt, m)
        if is_trade:
            k = q % B
            p = price[i]
            v = size[i]
            if b_cnt[s, k] == 0:
                b_t0[s, k] = t0
                b_ots[s, k] = t
                b_cts[s, k] = t
                b_val[s, k, _O] = p
                b_val[s, k, _H] = p
                b_val[s, k, _L] = p
                b_val[s, k, _C] = p
                b_val[s, k, _V] = 0.0
                b_val[s, k, _PV] = 0.0
            else:
                if p > b_val[s, k, _H]:
                    b_val[s, k, _H] = p
                if p < b_val[s, k, _L]:
                    b_val[s, k, _L] = p
                if t < b_ots[s, k]:
                    b_ots[s, k] = t
                    b_val[s, k, _O] = p
                if t >= b_cts[s, k]:
                    b_cts[s, k] = t
                    b_val[s, k, _C] = p
            b_val[s, k, _V] += v
            b_val[s, k, _PV] += p * v
            b_cnt[s, k] += 1
    return m


class BarBuilder:
    """Time bars of one interval per symbol, closed by event time with allowed lateness.

    Args:
        interval_ns: bar length I in ns (> 0); bars start at multiples of I since the epoch.
            Default 1 s (see :data:`DEFAULT_BAR_INTERVALS_NS` for the defaults 1 s, 1 min).
        allowed_lateness_ns: L >= 0; a bar is emitted once the symbol's watermark reaches
            ``t0 + I + L``. Default 0.
        backend: ``cpu``/``gpu``/``auto``; picks the array type of the outputs only.
    """

    def __init__(
        self, interval_ns: int = NS_PER_SECOND, allowed_lateness_ns: int = 0, backend: str = CPU
    ) -> None:
        if int(interval_ns) <= 0:
            raise BarConfigError(f"interval_ns must be > 0, got {interval_ns}")
        if int(allowed_lateness_ns) < 0:
            raise BarConfigError(f"allowed_lateness_ns must be >= 0, got {allowed_lateness_ns}")
        self.interval_ns = int(interval_ns)
        self.allowed_lateness_ns = int(allowed_lateness_ns)
        self.backend = select(backend)
        self.slots = 2 + self.allowed_lateness_ns // self.interval_ns
        self._no_bars: dict[str, Any] | None = None

    # ---- state ---------------------------------------------------------------------------

    def _blank(self, S: int) -> dict[str, np.ndarray]:
        B = self.slots
        return {
            "b_t0": np.zeros((S, B), np.int64),
            "b_cnt": np.zeros((S, B), np.int64),
            "b_ots": np.zeros((S, B), np.int64),
            "b_cts": np.zeros((S, B), np.int64),
            "b_val": np.zeros((S, B, 6), np.float64),
            "wm": np.full(S, NONE_TS, np.int64),
            "floor": np.full(S, NONE_TS, np.int64),
        }

    def initial_state(self, n_symbols: int = 0) -> BarState:
        """Empty state for codes ``0 .. n_symbols-1`` (grows when a larger code arrives)."""
        return BarState(int(n_symbols), self._blank(int(n_symbols)))

    def _copy(self, state: BarState, need: int) -> BarState:
        if need <= state.capacity:
            return BarState(state.capacity, {k: v.copy() for k, v in state.arrays.items()})
        cap = max(need, 2 * state.capacity, 16)
        arrays = self._blank(cap)
        for k, v in state.arrays.items():
            arrays[k][: state.capacity] = v
        return BarState(cap, arrays)

    # ---- processing ----------------------------------------------------------------------

    def _bars_dict(self, o_sym, o_t0, o_val, o_cnt) -> dict[str, Any]:
        vol = o_val[:, _V]
        with np.errstate(divide="ignore", invalid="ignore"):
            vwap = np.where(vol != 0, o_val[:, _PV] / np.where(vol != 0, vol, 1.0), np.nan)
        bars = {
            "sym": o_sym.astype(np.int32),
            "ts_open": o_t0.astype(np.int64),
            "interval_ns": np.full(o_sym.shape[0], self.interval_ns, np.int64),
            "open": o_val[:, _O].copy(),
            "high": o_val[:, _H].copy(),
            "low": o_val[:, _L].copy(),
            "close": o_val[:, _C].copy(),
            "volume": vol.copy(),
            "vwap": vwap,
            "trades": o_cnt.astype(np.int64),
        }
        return self._out(bars)

    def no_bars(self) -> dict[str, Any]:
        """The ``bars`` of a batch that closed none: each of :data:`BAR_COLUMNS` empty, with its dtype
        (a fresh dict of shared read-only arrays: most small batches close no bar)."""
        if self._no_bars is None:
            empty = self._bars_dict(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 6)),
                                    np.empty(0, np.int64))
            for v in empty.values():
                if isinstance(v, np.ndarray):
                    v.flags.writeable = False
            self._no_bars = empty
        return dict(self._no_bars)

    def _out(self, d: dict[str, Any]) -> dict[str, Any]:
        if self.backend == GPU:
            mod = xp(GPU)
            return {k: mod.asarray(v) for k, v in d.items()}
        return d

    def process(
        self, cols: TickColumns, state: BarState, *, inplace: bool = False
    ) -> tuple[dict[str, Any], Any, BarState]:
        """Aggregate one batch.

        Returns:
            ``(bars, late_mask, new_state)``: ``bars`` maps each of :data:`BAR_COLUMNS` to an
            array (m,) of the bars closed by this batch, in emission order (dtypes: sym
            int32; ts_open, interval_ns, trades int64; the rest float64); ``late_mask`` is
            bool (n,), True for late trades. Arrays are CuPy on the gpu backend.
        """
        host = cols.to(CPU)
        n = len(host)
        need = 0
        if n:
            lo, hi = code_range(host.sym)
            if lo < 0:
                raise TickColumnsError("symbol codes must be >= 0")
            need = int(hi) + 1
        if inplace and need <= state.capacity:
            new = state
        else:
            new = self._copy(state, need)
        a = new.arrays
        # emitted bars <= the batch's symbols' open slots + the slots its trades open: n * B + n
        # (a bound from the batch alone; counting the open bars would scan every symbol's slots)
        room = n * (self.slots + 1)
        o_sym = np.empty(room, np.int64)
        o_t0 = np.empty(room, np.int64)
        o_val = np.empty((room, 6), np.float64)
        o_cnt = np.empty(room, np.int64)
        late = np.zeros(n, dtype=np.bool_)
        m = 0
        if n:
            m = bars_batch(
                host.sym, host.ts, host.kind, host.price, host.size,
                self.interval_ns, self.allowed_lateness_ns,
                a["b_t0"], a["b_cnt"], a["b_ots"], a["b_cts"], a["b_val"], a["wm"], a["floor"],
                late,
                o_sym, o_t0, o_val, o_cnt,
            )
        bars = self._bars_dict(o_sym[:m], o_t0[:m], o_val[:m], o_cnt[:m]) if m else self.no_bars()
        late_out = xp(GPU).asarray(late) if self.backend == GPU else late
        return bars, late_out, new

    def snapshot_rows(self, state: BarState, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the state rows of symbol ``codes`` (beyond the capacity: skipped), the undo log
        of ``process(..., inplace=True)`` (see :meth:`restore_rows`)."""
        codes = np.asarray(codes, np.int64)
        codes = codes[codes < state.capacity]
        return {"codes": codes, **{k: v.take(codes, axis=0) for k, v in state.arrays.items()}}

    @staticmethod
    def restore_rows(state: BarState, snap: dict[str, np.ndarray]) -> None:
        """Put back the rows saved by :meth:`snapshot_rows` (in place)."""
        for k, v in state.arrays.items():
            v[snap["codes"]] = snap[k]

    def flush(self, state: BarState) -> tuple[dict[str, Any], BarState]:
        """Emit every open bar (end of a replay), sorted by (sym, ts_open).

        Returns ``(bars, new_state)``; in the new state those windows count as closed, so a
        later trade falling in one of them is late.
        """
        new = self._copy(state, 0)
        a = new.arrays
        s_idx, k_idx = np.nonzero(a["b_cnt"])
        t0 = a["b_t0"][s_idx, k_idx]
        order = np.lexsort((t0, s_idx))
        s_idx, k_idx, t0 = s_idx[order], k_idx[order], t0[order]
        bars = self._bars_dict(
            s_idx, t0, a["b_val"][s_idx, k_idx], a["b_cnt"][s_idx, k_idx]
        )
        if s_idx.size:
            np.maximum.at(a["floor"], s_idx, t0 + self.interval_ns)
        a["b_cnt"][:] = 0
        return bars, new

    # ---- serialisation -------------------------------------------------------------------

    def state_to_bytes(self, state: BarState) -> bytes:
        """Serialise: an uncompressed ``.npz`` with ``meta`` (uint8 UTF-8 JSON: format,
        version, capacity, interval_ns, allowed_lateness_ns, slots) and the state arrays."""
        meta = {
            "format": BAR_STATE_FORMAT,
            "version": BAR_STATE_VERSION,
            "capacity": state.capacity,
            "interval_ns": self.interval_ns,
            "allowed_lateness_ns": self.allowed_lateness_ns,
            "slots": self.slots,
        }
        buf = io.BytesIO()
        payload: dict[str, Any] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        payload.update(state.arrays)
        np.savez(buf, **payload)
        return buf.getvalue()

    def state_from_bytes(self, blob: bytes) -> BarState:
        """Load state written by :meth:`state_to_bytes` for the same interval and lateness."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: np.array(z[k]) for k in BAR_STATE_ARRAYS}
        except Exception as exc:
            raise BarStateError(f"not serialised bar state: {exc}") from exc
        want = (BAR_STATE_FORMAT, BAR_STATE_VERSION, self.interval_ns, self.allowed_lateness_ns)
        got = (meta.get("format"), meta.get("version"), meta.get("interval_ns"),
               meta.get("allowed_lateness_ns"))
        if got != want:
            raise BarStateError(f"bar state is for {got}, this builder is {want}")
        cap = int(meta["capacity"])
        for k, v in self._blank(cap).items():
            if arrays[k].shape != v.shape or arrays[k].dtype != v.dtype:
                raise BarStateError(f"bar state array {k!r} has shape {arrays[k].shape}")
        return BarState(cap, arrays)


__all__ = [
    "BAR_COLUMNS",
    "DEFAULT_BAR_INTERVALS_NS",
    "BarBuilder",
    "BarConfigError",
    "BarState",
    "BarStateError",
]
