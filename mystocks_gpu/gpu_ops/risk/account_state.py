"""Per-account risk state: one account (:class:`AccountState`, host NumPy, serialisable) and a
padded stack of accounts (:class:`StateBatch`, on the active backend) that the risk step updates.

Byte format of :meth:`AccountState.to_bytes` (little-endian, no pickle; ``K`` = symbols held,
``W`` = window capacity)::

    header   <4s H H I I      magic b"MSRS", version 1, flags 0, K, W
    scalars  <q q q q d d d   win_pos, win_count, interval, day, peak, max_dd, capital
    arrays   <i4[K] symbols, <i4[K] sector, <f8[K] qty, cost, last_px, prev_close, day_ref,
             mean, <i8[K] n_obs, <f8[K*K] cov (row-major), <f8[W*K] window (row-major ring),
             <f8[4] limits, <u1[4] breached (0/1)

Field meanings: ``symbols`` dense int32 symbol codes; ``sector`` int32 codes (-1 = none);
``qty`` units held; ``cost`` average cost per unit (for P&L since inception); ``last_px`` latest
price (NaN before the first); ``prev_close`` price at the close of the last completed return
interval; ``day_ref`` last price of the previous day (day P&L); ``cov``/``mean``/``n_obs`` the
EWMA state (``ewma.py``); ``window`` ring of the last ``W`` return vectors, next write at
``win_pos``, ``win_count`` rows filled; ``interval``/``day`` the current interval / day index
(-1 = none yet); ``peak``/``max_dd`` running equity peak and max drawdown where equity =
``capital`` + P&L since inception; ``limits``/``breached`` in ``LIMIT_NAMES`` order.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields, replace
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.risk.config import DEFAULT_LIMITS, LIMIT_NAMES
from mystocks_gpu.gpu_ops.risk.exceptions import RiskInputError

MAGIC = b"MSRS"
VERSION = 1
_HEAD = struct.Struct("<4sHHII")
_SCAL = struct.Struct("<qqqqddd")
_VEC_F = ("qty", "cost", "last_px", "prev_close", "day_ref", "mean")
Array = Any


@dataclass
class AccountState:
    """One account's risk state (see the module docstring for every field)."""

    symbols: np.ndarray
    sector: np.ndarray
    qty: np.ndarray
    cost: np.ndarray
    last_px: np.ndarray
    prev_close: np.ndarray
    day_ref: np.ndarray
    mean: np.ndarray
    n_obs: np.ndarray
    cov: np.ndarray
    window: np.ndarray
    limits: np.ndarray
    breached: np.ndarray
    win_pos: int = 0
    win_count: int = 0
    interval: int = -1
    day: int = -1
    peak: float = -math.inf
    max_dd: float = 0.0
    capital: float = 0.0

    @classmethod
    def new(cls, symbols: Any, qty: Any, cost: Any, window: int, sector: Any = None,
            limits: Any = None, capital: float | None = None) -> AccountState:
        """A fresh state for holdings ``symbols``/``qty``/``cost`` (``capital`` defaults to the
        gross cost basis ``sum |qty * cost|``; missing limits default to +inf)."""
        sym = np.asarray(symbols, dtype=np.int32)
        K = sym.shape[0]
        q = np.asarray(qty, dtype=np.float64)
        c = np.asarray(cost, dtype=np.float64)
        if q.shape != (K,) or c.shape != (K,):
            raise RiskInputError(f"qty and cost must have shape ({K},) like symbols")
        if not np.all(np.isfinite(q)):
            raise RiskInputError(f"qty is not finite for symbol(s) {sym[~np.isfinite(q)].tolist()}")
        if np.any(sym < 0) or len(set(sym.tolist())) != K:
            raise RiskInputError("symbols must be distinct non-negative codes")
        lim = np.array(DEFAULT_LIMITS if limits is None else limits, dtype=np.float64)
        if lim.shape != (len(LIMIT_NAMES),):
            raise RiskInputError(f"limits must be {len(LIMIT_NAMES)} values {LIMIT_NAMES}")
        lim = np.where(np.isnan(lim), np.inf, lim)
        nan = np.full(K, np.nan)
        cap = float(np.sum(np.abs(q * np.where(np.isfinite(c), c, 0.0)))) if capital is None else capital
        return cls(sym, np.full(K, -1, np.int32) if sector is None else np.asarray(sector, np.int32),
                   q, c, nan.copy(), nan.copy(), nan.copy(), np.zeros(K), np.zeros(K, np.int64),
                   np.zeros((K, K)), np.full((window, K), np.nan), lim,
                   np.zeros(len(LIMIT_NAMES), bool), capital=cap)

    def with_positions(self, symbols: Any, qty: Any, cost: Any, sector: Any = None,
                       limits: Any = None, capital: float | None = None) -> AccountState:
        """New holdings, keeping the history (prices, EWMA, window, drawdown) of symbols still
        held; new symbols start without history (see ``ewma.py`` for how they are seeded)."""
        new = AccountState.new(symbols, qty, cost, self.window.shape[0], sector,
                               self.limits if limits is None else limits,
                               self.capital if capital is None else capital)
        old_pos = {int(s): i for i, s in enumerate(self.symbols.tolist())}
        src = np.array([old_pos.get(int(s), -1) for s in new.symbols.tolist()], dtype=np.int64)
        keep = src >= 0
        k_new, k_old = np.nonzero(keep)[0], src[keep]
        for f in ("last_px", "prev_close", "day_ref", "mean", "n_obs"):
            getattr(new, f)[k_new] = getattr(self, f)[k_old]
        new.cov[np.ix_(k_new, k_new)] = self.cov[np.ix_(k_old, k_old)]
        new.window[:, k_new] = self.window[:, k_old]
        return replace(new, win_pos=self.win_pos, win_count=self.win_count,
                       interval=self.interval, day=self.day, peak=self.peak, max_dd=self.max_dd,
                       breached=self.breached.copy())

    def to_bytes(self) -> bytes:
        K, W = self.symbols.shape[0], self.window.shape[0]
        parts = [_HEAD.pack(MAGIC, VERSION, 0, K, W),
                 _SCAL.pack(self.win_pos, self.win_count, self.interval, self.day, self.peak,
                            self.max_dd, self.capital),
                 self.symbols.astype("<i4").tobytes(), self.sector.astype("<i4").tobytes()]
        parts += [getattr(self, f).astype("<f8").tobytes() for f in _VEC_F]
        parts += [self.n_obs.astype("<i8").tobytes(), self.cov.astype("<f8").tobytes(),
                  self.window.astype("<f8").tobytes(), self.limits.astype("<f8").tobytes(),
                  self.breached.astype("u1").tobytes()]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> AccountState:
        if len(data) < _HEAD.size or data[:4] != MAGIC:
            raise RiskInputError("account state bytes: bad magic (not a risk state)")
        _m, ver, _flags, K, W = _HEAD.unpack_from(data, 0)
        if ver != VERSION:
            raise RiskInputError(f"account state bytes: unsupported version {ver}")
        L = len(LIMIT_NAMES)
        need = _HEAD.size + _SCAL.size + 8 * K + 8 * len(_VEC_F) * K + 8 * K + 8 * K * K + 8 * W * K + 8 * L + L
        if len(data) != need:
            raise RiskInputError(f"account state bytes: length {len(data)}, expected {need}")
        off = _HEAD.size
        scal = _SCAL.unpack_from(data, off)
        off += _SCAL.size

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal off
            a = np.frombuffer(data, dtype=dtype, count=count, offset=off).copy()
            off += a.nbytes
            return a

        sym, sec = take("<i4", K).astype(np.int32), take("<i4", K).astype(np.int32)
        vec = {f: take("<f8", K).astype(np.float64) for f in _VEC_F}
        n_obs = take("<i8", K).astype(np.int64)
        cov = take("<f8", K * K).astype(np.float64).reshape(K, K)
        win = take("<f8", W * K).astype(np.float64).reshape(W, K)
        lim = take("<f8", L).astype(np.float64)
        br = take("u1", L).astype(bool)
        return cls(sym, sec, vec["qty"], vec["cost"], vec["last_px"], vec["prev_close"],
                   vec["day_ref"], vec["mean"], n_obs, cov, win, lim, br, int(scal[0]),
                   int(scal[1]), int(scal[2]), int(scal[3]), float(scal[4]), float(scal[5]),
                   float(scal[6]))

    def equals(self, other: AccountState) -> bool:
        """Field-by-field equality (NaN == NaN)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif not (a == b or (a != a and b != b)):
                return False
        return True


_PER_SLOT = ("symbols", "sector", "qty", "cost", "last_px", "prev_close", "day_ref", "mean", "n_obs")
_PAD = {"symbols": -1, "sector": -1, "qty": 0.0, "cost": np.nan, "last_px": np.nan,
        "prev_close": np.nan, "day_ref": np.nan, "mean": 0.0, "n_obs": 0}
_SCALARS = ("win_pos", "win_count", "interval", "day", "peak", "max_dd", "capital")


@dataclass
class StateBatch:
    """``A`` accounts padded to ``K`` slots (empty slot: symbol -1, qty 0), arrays on one
    backend: per-slot ``(A, K)`` fields, ``cov (A, K, K)``, ``window (A, W, K)``, ``limits`` /
    ``breached (A, 4)``, scalars ``(A,)``."""

    arrays: dict[str, Array]

    def __getattr__(self, name: str) -> Array:
        try:
            return self.__dict__["arrays"][name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    @property
    def n_accounts(self) -> int:
        return int(self.arrays["qty"].shape[0])

    @classmethod
    def stack(cls, states: list[AccountState], xp: ModuleType = np) -> StateBatch:
        """Pad and stack (all states must have the same window capacity ``W``)."""
        if not states:
            raise RiskInputError("no account states to stack")
        W = states[0].window.shape[0]
        if any(s.window.shape[0] != W for s in states):
            raise RiskInputError("account states have different window capacities")
        K = max(1, max(s.symbols.shape[0] for s in states))
        A = len(states)
        out: dict[str, np.ndarray] = {}
        for f in _PER_SLOT:
            dt = getattr(states[0], f).dtype
            a = np.full((A, K), _PAD[f], dtype=dt)
            for i, s in enumerate(states):
                a[i, : s.symbols.shape[0]] = getattr(s, f)
            out[f] = a
        out["cov"] = np.zeros((A, K, K))
        out["window"] = np.full((A, W, K), np.nan)
        for i, s in enumerate(states):
            k = s.symbols.shape[0]
            out["cov"][i, :k, :k] = s.cov
            out["window"][i, :, :k] = s.window
        out["limits"] = np.stack([s.limits for s in states])
        out["breached"] = np.stack([s.breached for s in states])
        for f in _SCALARS:
            out[f] = np.array([getattr(s, f) for s in states])
        return cls({k: xp.asarray(v) for k, v in out.items()})

    def unstack(self) -> list[AccountState]:
        """Back to per-account states (host), dropping the padding."""
        h = {k: (v.get() if hasattr(v, "get") else np.asarray(v)) for k, v in self.arrays.items()}
        res = []
        for i in range(self.n_accounts):
            k = int(np.sum(h["symbols"][i] >= 0))
            kw: dict[str, Any] = {f: h[f][i, :k].copy() for f in _PER_SLOT}
            kw["cov"] = h["cov"][i, :k, :k].copy()
            kw["window"] = h["window"][i, :, :k].copy()
            kw["limits"] = h["limits"][i].copy()
            kw["breached"] = h["breached"][i].copy()
            for f in _SCALARS:
                v = h[f][i]
                kw[f] = int(v) if f in ("win_pos", "win_count", "interval", "day") else float(v)
            res.append(AccountState(**kw))
        return res

    def copy(self) -> StateBatch:
        return StateBatch({k: v.copy() for k, v in self.arrays.items()})
