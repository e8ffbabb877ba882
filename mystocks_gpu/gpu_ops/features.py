"""Stateful per-symbol tick features over micro-batches: :class:`TickFeatureEngine`.

``engine.process(cols, state) -> (out, state')`` takes a :class:`TickColumns` batch and
returns one float64 value per input row for every configured feature (same row order), plus
the new state. Cutting a stream into batches anywhere gives the same values as one pass.

Semantics (N = ``window_ticks``, W = ``window_ns``, p = price, v = size; every window is
per symbol and counts that symbol's TRADE rows only):

* Price-based features update on TRADE rows only; on QUOTE rows they repeat the symbol's
  values after its last trade (NaN before its first trade, and a NaN after the last trade
  is repeated as NaN). ``spread``, ``rel_spread`` and ``book_imb`` are computed on every row
  from that row's ``bid``/``ask``/``bid_size``/``ask_size`` (trades carry the prevailing quote).
* ``last_price``: p of the last trade.
* ``ret`` = p_t / p_{t-1} - 1, ``log_ret`` = log(p_t / p_{t-1}), trade to trade; NaN on the
  first trade.
* ``vwap_session`` = sum(p v) / sum(v) since the symbol's first trade, or since the last
  session boundary ``k * 1 day + session_offset_ns`` (UTC) when that is set; NaN while
  sum(v) == 0.
* ``vwap_roll`` = sum(p v) / sum(v) over the last N trades.
* ``ema_<s>``: pandas ``ewm(span=s, adjust=False).mean()`` of trade prices (valid from the
  first trade, pandas' default ``min_periods=0``).
* ``roll_mean``, ``roll_std`` (ddof=1), over the last N trades; ``roll_z`` =
  (p - roll_mean) / roll_std, NaN when roll_std == 0.
* ``boll_upper``/``boll_lower`` = roll_mean +/- bollinger_k * roll_std.
* ``time_mean``, ``time_std`` (ddof=1) over the trades in (t - W, t], as pandas
  ``rolling(W)`` on a time index (min_periods=1: the mean is valid from one trade, the std
  from two). At most ``max_window_ticks`` (M) most recent trades are held per symbol; if
  more than M trades fall in the window, the statistic is over the most recent M only.
* ``rsi``: Wilder RSI of period P on trade-to-trade price changes: the first average
  gain/loss is the simple mean of the first P changes, then avg = (avg (P-1) + x) / P;
  rsi = 100 G / (G + L), 50 when G + L == 0; valid from the P-th change (trade P+1).
* ``macd`` = EMA_fast - EMA_slow, ``macd_signal`` = EMA_signal(macd), ``macd_hist`` =
  macd - signal (all pandas ``ewm(span, adjust=False)``, valid from the first trade).
* ``rvol`` = sqrt(A * sum of the last N squared log returns), A = ``rvol_annualization``
  or 1; valid from trade N+1.
* ``flow_imb`` = sum(side v) / sum(v) over the last N trades (side 0 counts in the
  denominator only).
* ``spread`` = ask - bid, ``rel_spread`` = spread / ((ask + bid) / 2),
  ``book_imb`` = (bid_size - ask_size) / (bid_size + ask_size); NaN on zero denominators.

Event time going backwards (per symbol, trades): a trade stamped before the symbol's trade
clock (the time of its last accepted trade) by at most ``max_disorder_ns`` is used in
arrival order as if stamped at the clock (the time window and the VWAP session see it at the
clock's time; the trade-count windows, returns and EMAs take trades in arrival order anyway);
a trade stamped further back is rejected: it changes no state and its row repeats the
symbol's current values, flagged in the ``rejected`` mask of :meth:`process_host_full` (the
features processor sends it to the DLQ). Quotes carry no time-dependent state.

Windowed statistics are NaN until the window holds N trades (pandas ``min_periods=N``).
Rolling mean/std are recomputed from the per-symbol ring buffer on every trade with a
shifted two-pass algorithm (no running sum of squares), so they stay exact to rounding for
prices around 1e4 with tiny variance.

Selection: ``FeatureConfig.features`` picks the outputs. The O(1) recursions (returns,
VWAP sums, EMAs, MACD, RSI) and the trade rings are always updated; the O(N) trade-window
statistics run only when one of them is selected and the time-window buffer exists only
when ``time_mean``/``time_std`` are selected. Serialised state loads into an engine whose
config differs at most in the selection, with the same two "needs" flags.

State: :class:`FeatureState`, per-symbol arrays (see ``features_cpu``) of
``8 * (F + C + 3 + 4 N) + 16 M`` bytes per symbol (F = 21 + n_spans slots, C = 8 + n_spans
scalars; M term only when ``time_mean``/``time_std`` are selected): 9 120 bytes with the
defaults. ``process`` never mutates the state passed in (it works on a copy) unless called
with ``inplace=True``, so a runtime may drop the returned state and re-run the batch.
Symbol codes at or beyond the capacity grow the state (new symbols start empty).

CPU and GPU agree to rtol 1e-9, atol 1e-12 (the tested tolerance; plus 64 ulps of the price
on ``macd``, ``macd_signal``, ``macd_hist`` for batches over 65,536 rows): inside a batch of at
most 65,536 rows the GPU replays the CPU's arithmetic in the same order without fused
multiply-adds, so only ``log`` rounding may differ; a larger batch is cut into row blocks whose
per-symbol entry states come from composed affine maps, a few ulps away (``features_gpu``).
Measured on an H200, 20M ticks x 4000 symbols: max absolute difference 5.5e-11 (``macd_hist`` at
prices around 1e4), identical NaN positions.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.backend import CPU, GPU, select, to_host, xp
from mystocks_gpu.gpu_ops.features_config import (
    IS_SESSION,
    N_IST,
    SC_PREV,
    SESSION_NONE,
    FeatureConfig,
)
from mystocks_gpu.gpu_ops.tick_columns import (
    COLUMN_DTYPES,
    TickColumns,
    TickColumnsError,
    code_range,
)

STATE_FORMAT = "mystocks-tick-features"
#: 2: ``ist`` gained the trade clock column (event time going backwards)
STATE_VERSION = 2
#: names of the per-symbol state arrays, in serialisation order
STATE_ARRAYS = ("feat", "sc", "ist", "r_price", "r_size", "r_flow", "r_ret", "t_ts", "t_price")


class FeatureStateError(MyStocksError, ValueError):
    """Serialised feature state is corrupt or was written under an incompatible config."""


@dataclass(frozen=True)
class FeatureState:
    """Per-symbol state of a :class:`TickFeatureEngine` on one backend.

    ``arrays`` maps each name of :data:`STATE_ARRAYS` to a NumPy (cpu) or CuPy (gpu) array
    whose first axis is the symbol code (``capacity`` rows). Treat as immutable.
    """

    backend: str
    capacity: int
    arrays: dict[str, Any]

    @property
    def nbytes(self) -> int:
        """Bytes held by the state arrays."""
        return int(sum(a.nbytes for a in self.arrays.values()))


def state_bytes_per_symbol(cfg: FeatureConfig) -> int:
    """Bytes of state per symbol: ``8 (F + C + 3 + 4 N) + 16 M`` (M = 0 without time window)."""
    m = cfg.max_window_ticks if cfg.needs_time_window else 0
    return 8 * (cfg.n_slots + cfg.n_scalars + N_IST + 4 * cfg.window_ticks) + 16 * m


class TickFeatureEngine:
    """Stateful per-symbol tick features on the CPU (numba) or GPU (CuPy) backend.

    Args:
        cfg: the feature configuration.
        backend: ``cpu``, ``gpu`` or ``auto`` (resolved with :func:`backend.select`).
    """

    def __init__(self, cfg: FeatureConfig | None = None, backend: str = CPU) -> None:
        self.cfg = cfg or FeatureConfig()
        self.backend = select(backend)
        self.output_names = self.cfg.output_names()
        self._xp = xp(self.backend)
        self._col_idx_host = self.cfg.column_index()
        self._params = {
            "n_win": self.cfg.window_ticks,
            "window_ns": self.cfg.window_ns,
            "cap": self.cfg.max_window_ticks if self.cfg.needs_time_window else 1,
            "rsi_p": self.cfg.rsi_period,
            "sess_on": int(self.cfg.session_offset_ns is not None),
            "sess_off": self.cfg.session_offset_ns or 0,
            "do_time": int(self.cfg.needs_time_window),
            "do_roll": int(self.cfg.needs_tick_window),
            "boll_k": float(self.cfg.bollinger_k),
            "rvol_scale": self.cfg.rvol_scale(),
            "max_disorder": int(self.cfg.max_disorder_ns),
        }
        self._ema_alpha = self._xp.asarray(self.cfg.ema_alphas())
        self._macd_alpha = self._xp.asarray(self.cfg.macd_alphas())
        self._col_idx = self._xp.asarray(self._col_idx_host)
        p = self._params
        #: the CPU kernel's arguments after the state arrays, in its order (built once, not per batch)
        self._cpu_tail: tuple[Any, ...] = (self._ema_alpha, self._macd_alpha, p["n_win"], p["window_ns"], p["cap"], p["rsi_p"],
                          p["sess_on"], p["sess_off"], p["do_time"], p["do_roll"], p["boll_k"], p["rvol_scale"],
                          p["max_disorder"], self._col_idx)
        self._stager: Any = None  # GPU pinned staging, created on first process_host

    # ---- state ---------------------------------------------------------------------------

    def _shapes(self, capacity: int) -> dict[str, tuple[tuple[int, ...], Any, float]]:
        cfg, S = self.cfg, capacity
        N, M = cfg.window_ticks, cfg.max_window_ticks if cfg.needs_time_window else 0
        return {
            "feat": ((S, cfg.n_slots), np.float64, np.nan),
            "sc": ((S, cfg.n_scalars), np.float64, 0.0),
            "ist": ((S, N_IST), np.int64, 0),
            "r_price": ((S, N), np.float64, 0.0),
            "r_size": ((S, N), np.float64, 0.0),
            "r_flow": ((S, N), np.float64, 0.0),
            "r_ret": ((S, N), np.float64, 0.0),
            "t_ts": ((S, M), np.int64, 0),
            "t_price": ((S, M), np.float64, 0.0),
        }

    def _blank_host(self, capacity: int) -> dict[str, np.ndarray]:
        arrays = {
            name: np.full(shape, fill, dtype=dt)
            for name, (shape, dt, fill) in self._shapes(capacity).items()
        }
        arrays["sc"][:, SC_PREV] = np.nan
        arrays["ist"][:, IS_SESSION] = SESSION_NONE if self._params["sess_on"] else 0
        return arrays

    def initial_state(self, n_symbols: int = 0) -> FeatureState:
        """Empty state with room for symbol codes ``0 .. n_symbols-1`` (grows on demand)."""
        if n_symbols < 0:
            raise FeatureStateError(f"n_symbols must be >= 0, got {n_symbols}")
        host = self._blank_host(n_symbols)
        return FeatureState(self.backend, n_symbols, {k: self._xp.asarray(v) for k, v in host.items()})

    def _grown(self, state: FeatureState, need: int) -> FeatureState:
        """A copy of ``state`` with capacity >= ``need`` (new rows blank)."""
        cap = max(need, 2 * state.capacity, 16)
        blank = self._blank_host(cap)
        arrays = {}
        for name, old in state.arrays.items():
            new = self._xp.asarray(blank[name])
            new[: state.capacity] = old
            arrays[name] = new
        return FeatureState(self.backend, cap, arrays)

    def _check_state(self, state: FeatureState) -> None:
        if state.backend != self.backend:
            raise FeatureStateError(
                f"state is on backend {state.backend!r}, engine on {self.backend!r}; "
                "round-trip it through state_to_bytes/state_from_bytes"
            )

    # ---- processing ----------------------------------------------------------------------

    def process(
        self, cols: TickColumns, state: FeatureState, *, inplace: bool = False
    ) -> tuple[dict[str, Any], FeatureState]:
        """Compute the features of one batch.

        Args:
            cols: n ticks (moved to the engine's backend if needed).
            state: the state after the previous batch; left untouched unless ``inplace``.
            inplace: update ``state``'s arrays directly (saves a copy; ``state`` is then the
                new state and can no longer be used to re-run the batch).

        Returns:
            ``(out, new_state)``: ``out[name]`` is a float64 (n,) array on the engine's
            backend for each of :attr:`output_names` (rows of one (K, n) C-contiguous
            matrix), in input row order.
        """
        mat, _, state = self._process(cols, state, inplace=inplace)
        return self._as_dict(mat), state

    def _as_dict(self, mat: Any) -> dict[str, Any]:
        return {name: mat[k] for k, name in enumerate(self.output_names)}

    def _process(
        self, cols: TickColumns, state: FeatureState, *, inplace: bool, max_sym: int | None = None
    ) -> tuple[Any, Any, FeatureState]:
        self._check_state(state)
        cols = cols.to(self.backend)
        n = len(cols)
        if n and max_sym is None:
            if self.backend == CPU:
                lo, hi = code_range(cols.sym)
            else:
                lo, hi = int(cols.sym.min()), int(cols.sym.max())
            if lo < 0:
                raise TickColumnsError("symbol codes must be >= 0")
            max_sym = int(hi)
        if n and max_sym is not None and max_sym >= state.capacity:
            state = self._grown(state, max_sym + 1)  # a copy: the caller's state is untouched
        elif not inplace:
            state = FeatureState(
                self.backend, state.capacity, {k: v.copy() for k, v in state.arrays.items()}
            )
        K = len(self.output_names)
        st = state.arrays
        if self.backend == GPU:
            from mystocks_gpu.gpu_ops.features_gpu import process_batch_gpu

            mat, rej = process_batch_gpu(
                cols, st, self._ema_alpha, self._macd_alpha, self._params, self._col_idx_host, K
            )
        else:
            from mystocks_gpu.gpu_ops.features_cpu import process_batch

            mat = np.empty((K, n), dtype=np.float64)
            rej = np.zeros(n, dtype=np.int8)
            if n:
                process_batch(  # type: ignore[call-arg]  # mypy: a star argument to numba's Dispatcher
                    cols.sym, cols.ts, cols.kind, cols.price, cols.size, cols.side, cols.bid,
                    cols.ask, cols.bid_size, cols.ask_size,
                    st["feat"], st["sc"], st["ist"], st["r_price"], st["r_size"], st["r_flow"],
                    st["r_ret"], st["t_ts"], st["t_price"], *self._cpu_tail, mat, rej,
                )
        return mat, rej, state

    def process_host(
        self, cols: TickColumns, state: FeatureState, *, inplace: bool = False
    ) -> tuple[dict[str, np.ndarray], FeatureState]:
        """Like :meth:`process`, for a host (NumPy) batch, returning host NumPy outputs.

        On the GPU backend the columns are packed into a reusable pinned host buffer, copied
        to the device with one asynchronous copy on the engine's stream, processed there,
        and the (K, n) outputs come back through a pinned buffer; the state stays on the
        device. On the CPU backend this is :meth:`process`.
        """
        out, _, state = self.process_host_full(cols, state, inplace=inplace)
        return out, state

    def process_host_full(
        self, cols: TickColumns, state: FeatureState, *, inplace: bool = False
    ) -> tuple[dict[str, np.ndarray], np.ndarray, FeatureState]:
        """:meth:`process_host` plus the ``rejected`` mask: bool (n,) host array, True for trades
        stamped too far behind their symbol's trade clock (see the module docstring)."""
        mat, rej, state = self.process_host_matrix(cols, state, inplace=inplace)
        return self._as_dict(mat), rej, state

    def process_host_matrix(
        self, cols: TickColumns, state: FeatureState, *, inplace: bool = False
    ) -> tuple[np.ndarray, np.ndarray, FeatureState]:
        """:meth:`process_host_full` with the outputs as one host float64 (K, n) C-contiguous
        matrix, row ``k`` = feature ``output_names[k]`` (no per-feature views)."""
        if self.backend == CPU:
            mat, rej, state = self._process(cols.to(CPU), state, inplace=inplace)
            return mat, rej.view(np.bool_), state  # int8 0/1: the same bytes as bool
        from mystocks_gpu.gpu_ops.features_gpu import PinnedStager

        if self._stager is None:
            self._stager = PinnedStager()
        host = cols.to(CPU)
        max_sym = None
        if len(host):
            if int(host.sym.min()) < 0:
                raise TickColumnsError("symbol codes must be >= 0")
            max_sym = int(host.sym.max())
        stream = self._stager.stream
        with stream:
            dev = self._stager.upload(host)
            mat, rej, state = self._process(dev, state, inplace=inplace, max_sym=max_sym)
            res = self._stager.download(mat)
            rej_host = rej.get(stream=stream) if len(host) else np.zeros(0, np.int8)
            stream.synchronize()
        return res, rej_host.astype(bool), state

    def snapshot_rows(self, state: FeatureState, codes: np.ndarray) -> dict[str, Any]:
        """Copies of the state rows of symbol ``codes`` (host int array; codes beyond the capacity
        are skipped): with :meth:`restore_rows`, an undo log for ``process(..., inplace=True)``
        that costs O(touched symbols) instead of a copy of the whole state."""
        codes = np.asarray(codes, np.int64)
        codes = codes[codes < state.capacity]
        idx = self._xp.asarray(codes)
        # take: half of v[idx]; an array with no columns (the time window when unused) has nothing to save
        return {"codes": idx, **{k: v.take(idx, axis=0) for k, v in state.arrays.items() if v.shape[1]}}

    def restore_rows(self, state: FeatureState, snap: dict[str, Any]) -> None:
        """Put back the rows saved by :meth:`snapshot_rows` (in place)."""
        idx = snap["codes"]
        for k, v in state.arrays.items():
            if k in snap:
                v[idx] = snap[k]

    # ---- serialisation -------------------------------------------------------------------

    def state_to_bytes(self, state: FeatureState) -> bytes:
        """Serialise ``state`` (either backend) to bytes.

        Format: an uncompressed NumPy ``.npz`` archive holding ``meta`` (uint8 UTF-8 JSON:
        ``format``, ``version``, ``capacity``, ``config`` = :meth:`FeatureConfig.fingerprint`)
        and one array per name of :data:`STATE_ARRAYS`, copied bit for bit from the backend.
        """
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "capacity": state.capacity,
            "config": self.cfg.fingerprint(),
        }
        buf = io.BytesIO()
        payload: dict[str, Any] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        payload.update((k, to_host(v)) for k, v in state.arrays.items())
        np.savez(buf, **payload)
        return buf.getvalue()

    def state_from_bytes(self, blob: bytes) -> FeatureState:
        """Load state written by :meth:`state_to_bytes` (by any backend) onto this backend.

        Raises :class:`FeatureStateError` when the blob is not such state or was written
        under a config with a different state shape or semantics.
        """
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: np.array(z[k]) for k in STATE_ARRAYS}
        except FeatureStateError:
            raise
        except Exception as exc:
            raise FeatureStateError(f"not serialised tick-feature state: {exc}") from exc
        if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
            raise FeatureStateError(f"unsupported state format {meta.get('format')!r} "
                                    f"version {meta.get('version')!r}")
        if meta.get("config") != self.cfg.fingerprint():
            raise FeatureStateError(
                "state was written under a different feature config: "
                f"{meta.get('config')} != {self.cfg.fingerprint()}"
            )
        cap = int(meta["capacity"])
        for name, (shape, dt, _) in self._shapes(cap).items():
            a = arrays[name]
            if a.shape != shape or a.dtype != np.dtype(dt):
                raise FeatureStateError(
                    f"state array {name!r} has {a.shape} {a.dtype}, expected {shape} {np.dtype(dt)}"
                )
        return FeatureState(self.backend, cap, {k: self._xp.asarray(v) for k, v in arrays.items()})


__all__ = [
    "COLUMN_DTYPES",
    "FeatureState",
    "FeatureStateError",
    "TickFeatureEngine",
    "state_bytes_per_symbol",
]
