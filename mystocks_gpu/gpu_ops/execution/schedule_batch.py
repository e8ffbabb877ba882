"""Batched scheduling, the stream processor's pure function:
``schedule_batch(orders as columns, per-symbol ParamsTable) -> BatchSchedules`` (schedules,
scores and per-row reject codes). Same results as :func:`schedule_api.schedule` per row.

Backends: ``cpu`` runs the numba core over the rows in parallel (``schedule_cpu``); ``gpu``
runs the array program of ``schedule_xp`` on CuPy. Validation and the per-row constants are one
array program for both (on the backend's array module).

Columns (:class:`OrderColumns`, all (B,)): ``sym`` int32 dense symbol code (index into the
:class:`ParamsTable`), ``side`` int8 (+1 / -1), ``quantity`` int64 shares, ``end_ns`` /
``start_ns`` int64 ns since the epoch (start 0 = now), ``strategy`` int8 (codes of
``parent_orders.STRATEGIES``), and float64 ``risk_aversion``, ``max_participation``,
``pov_rate``, ``limit_price`` where NaN means "not given" (config default / no limit).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, select, to_host, xp
from mystocks_gpu.gpu_ops.execution.exceptions import ExecutionInputError
from mystocks_gpu.gpu_ops.execution.execution_config import ExecutionConfig
from mystocks_gpu.gpu_ops.execution.market_params import MarketParams, derive_constants
from mystocks_gpu.gpu_ops.execution.parent_orders import (
    AC,
    MAX_LOTS,
    SIDE_CODES,
    STRATEGIES,
    STRATEGY_CODES,
    ParentOrder,
    Schedule,
    Score,
)
from mystocks_gpu.gpu_ops.execution.schedule_cpu import (
    ac_kappa_cpu,
    plan_batch_cpu,
    plan_batch_serial,
)
from mystocks_gpu.gpu_ops.execution.schedule_xp import plan_batch_xp

#: reject code -> (field, reason); 0 = accepted. Checked in this order, the first failure wins
#: (the order of ``schedule_api.schedule``'s checks).
REJECTS: dict[int, tuple[str, str]] = {
    1: ("side", "must be +1 (buy) or -1 (sell)"),
    2: ("strategy", f"unknown strategy code (known: {dict(enumerate(STRATEGIES))})"),
    3: ("quantity", "must be > 0 shares"),
    4: ("end_ns", "horizon is in the past"),
    5: ("end_ns", "horizon is shorter than one slice"),
    6: ("risk_aversion", "must be finite and >= 0"),
    7: ("max_participation", "must be in (0, 1]"),
    8: ("pov_rate", "must be in (0, 1]"),
    9: ("limit_price", "must be finite and > 0"),
    10: ("symbol", "unknown symbol code (no market parameters)"),
    11: ("params", "missing market parameters for the symbol"),
    12: ("quantity", f"more than {MAX_LOTS} lots"),
    13: ("eta", "eta - gamma*tau/2 <= 0: no Almgren-Chriss solution"),
}
#: CPU batches of at least this many orders run on numba's parallel thread pool; smaller ones (a
#: stream's micro-batches) on one thread, where the pool's wake-up would cost more than the work
PARALLEL_MIN_ROWS = 2048
#: score columns of :class:`BatchSchedules` (the fields of :class:`Score`)
SCORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Score))


@dataclass
class OrderColumns:
    """B parent orders as columns (see the module docstring for dtypes and meanings)."""

    sym: Any
    side: Any
    quantity: Any
    end_ns: Any
    start_ns: Any
    strategy: Any
    risk_aversion: Any
    max_participation: Any
    pov_rate: Any
    limit_price: Any

    def __len__(self) -> int:
        return int(self.sym.shape[0])

    @classmethod
    def from_orders(cls, orders: Sequence[ParentOrder], codes: Mapping[str, int]) -> OrderColumns:
        """Columns of ``orders``; ``codes`` maps symbol names to dense codes (unknown -> -1).
        Unknown sides / strategies get code 0 / -1 (rejected by :func:`schedule_batch`)."""
        def opt(v: float | None) -> float:
            return np.nan if v is None else float(v)

        return cls(
            sym=np.array([codes.get(o.symbol, -1) for o in orders], dtype=np.int32),
            side=np.array([SIDE_CODES.get(o.side, 0) for o in orders], dtype=np.int8),
            quantity=np.array([int(o.quantity) for o in orders], dtype=np.int64),
            end_ns=np.array([o.end_ns for o in orders], dtype=np.int64),
            start_ns=np.array([o.start_ns for o in orders], dtype=np.int64),
            strategy=np.array([STRATEGY_CODES.get(o.strategy, -1) for o in orders], dtype=np.int8),
            risk_aversion=np.array([opt(o.risk_aversion) for o in orders], dtype=np.float64),
            max_participation=np.array([opt(o.max_participation) for o in orders], dtype=np.float64),
            pov_rate=np.array([opt(o.pov_rate) for o in orders], dtype=np.float64),
            limit_price=np.array([opt(o.limit_price) for o in orders], dtype=np.float64),
        )


class ParamsTable:
    """Per-symbol market parameters as columns indexed by dense symbol code (the execution
    processor's state). Rows never set are missing (NaN price). Volume profiles of all symbols
    must share one bucket grid (``bucket_seconds``, ``open_offset_s``) and bucket count."""

    def __init__(self) -> None:
        self.symbols: list[str | None] = []
        self.price = np.zeros(0)
        self.sigma = np.zeros(0)
        self.adv = np.zeros(0)
        self.spread = np.zeros(0)
        self.lot = np.zeros(0, dtype=np.int64)
        self.eta = np.zeros(0)
        self.gamma = np.zeros(0)
        self.prof_row = np.zeros(0, dtype=np.int64)
        self.prof_cum = np.zeros((0, 1))
        self.prof_bucket_s = 1.0
        self.prof_open_s = 0.0

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def from_params(cls, params: Sequence[MarketParams]) -> tuple[ParamsTable, dict[str, int]]:
        """A table with ``params[i]`` at code ``i``, and the name -> code map."""
        t = cls()
        for i, p in enumerate(params):
            t.set(i, p)
        return t, {p.symbol: i for i, p in enumerate(params)}

    @classmethod
    def from_items(cls, items: Sequence[tuple[int, MarketParams]]) -> ParamsTable:
        """A table with ``params`` at each ``(code, params)`` of ``items``, built in one pass
        (O(symbols); repeated :meth:`set` copies the columns each time). Same rules as :meth:`set`."""
        t = cls()
        if not items:
            return t
        t._grow(max(c for c, _ in items) + 1)
        profiled = [(c, p) for c, p in items if p.profile is not None]
        for c, p in items:
            if c < 0:
                raise ExecutionInputError("symbol", f"symbol code must be >= 0, got {c}")
            t._set_scalars(c, p)
        if profiled:
            first = profiled[0][1].profile
            assert first is not None
            t.prof_bucket_s, t.prof_open_s = first.bucket_seconds, first.open_offset_s
            t.prof_cum = np.zeros((0, first.cum.shape[0]))
            for k, (c, p) in enumerate(profiled):
                t._check_grid(p)
                t.prof_row[c] = k
            t.prof_cum = np.stack([p.profile.cum for _, p in profiled])  # type: ignore[union-attr]
        return t

    def _set_scalars(self, code: int, p: MarketParams) -> None:
        self.symbols[code] = p.symbol
        self.price[code], self.sigma[code], self.adv[code] = p.price, p.sigma, p.adv
        self.spread[code], self.lot[code] = p.spread, p.lot_size
        self.eta[code] = np.nan if p.eta is None else p.eta
        self.gamma[code] = np.nan if p.gamma is None else p.gamma
        self.prof_row[code] = -1

    def _check_grid(self, p: MarketParams) -> None:
        prof = p.profile
        assert prof is not None
        if (prof.cum.shape[0] != self.prof_cum.shape[1] or prof.bucket_seconds != self.prof_bucket_s
                or prof.open_offset_s != self.prof_open_s):
            raise ExecutionInputError("profile", f"{p.symbol}: volume profile grid differs from the table's "
                                                 f"({self.prof_cum.shape[1] - 1} buckets of "
                                                 f"{self.prof_bucket_s} s from {self.prof_open_s} s)")

    def _grow(self, n: int) -> None:
        extra = n - len(self.symbols)
        if extra <= 0:
            return
        nan = np.full(extra, np.nan)
        self.symbols.extend([None] * extra)
        for name in ("price", "sigma", "adv", "spread", "eta", "gamma"):
            setattr(self, name, np.concatenate([getattr(self, name), nan]))
        self.lot = np.concatenate([self.lot, np.zeros(extra, dtype=np.int64)])
        self.prof_row = np.concatenate([self.prof_row, np.full(extra, -1, dtype=np.int64)])

    def set(self, code: int, p: MarketParams) -> None:
        """Store ``p`` (already validated by :class:`MarketParams`) at symbol ``code``."""
        if code < 0:
            raise ExecutionInputError("symbol", f"symbol code must be >= 0, got {code}")
        self._grow(code + 1)
        self._set_scalars(code, p)
        if p.profile is not None:
            prof = p.profile
            if self.prof_cum.shape[0] == 0:
                self.prof_cum = np.zeros((0, prof.cum.shape[0]))
                self.prof_bucket_s, self.prof_open_s = prof.bucket_seconds, prof.open_offset_s
            else:
                self._check_grid(p)
            self.prof_row[code] = self.prof_cum.shape[0]
            self.prof_cum = np.vstack([self.prof_cum, prof.cum[None, :]])


@dataclass
class BatchSchedules:
    """Result of :func:`schedule_batch` (arrays on the backend's module; :meth:`to_host`).

    Child slices are flat (CSR): row i's slices are ``[offsets[i], offsets[i+1])``.

    Attributes:
        reject: int8 (B,) reject code, 0 = scheduled (see :data:`REJECTS`).
        offsets: int64 (B+1,) slice offsets (a rejected row has no slices).
        shares: int64 (total,) shares per slice.
        expected_volume: float64 (total,) expected market volume per slice.
        n_slices, start_ns, end_ns: int64 (B,) the effective horizon and slice count.
        tau_s: float64 (B,) slice length in seconds.
        side, strategy: int8 (B,) copied from the orders.
        limit_price: float64 (B,) (NaN = none).
        scores: :data:`SCORE_COLUMNS` -> float64 (B,) (NaN for rejects).
    """

    reject: Any
    offsets: Any
    shares: Any
    expected_volume: Any
    n_slices: Any
    start_ns: Any
    end_ns: Any
    tau_s: Any
    side: Any
    strategy: Any
    limit_price: Any
    scores: dict[str, Any]

    def to_host(self) -> BatchSchedules:
        """A copy with NumPy arrays."""
        return BatchSchedules(**{f.name: to_host(getattr(self, f.name)) for f in fields(self) if f.name != "scores"},
                              scores={k: to_host(v) for k, v in self.scores.items()})

    def reject_message(self, i: int) -> str | None:
        """``"field: reason"`` for a rejected row ``i`` (None when it was scheduled)."""
        code = int(self.reject[i])
        if code == 0:
            return None
        fld, why = REJECTS[code]
        return f"{fld}: {why}"

    def row(self, i: int, order_id: str = "", symbol: str = "") -> Schedule:
        """Row ``i`` as a :class:`Schedule` (host arrays; the row must not be rejected)."""
        if int(self.reject[i]) != 0:
            raise ExecutionInputError("row", f"row {i} was rejected ({self.reject_message(i)})")
        n = int(self.n_slices[i])
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        sc: dict[str, Any] = {k: float(v[i]) for k, v in self.scores.items()}
        score = Score(**{**sc, "executed_qty": int(sc["executed_qty"]), "unfilled_qty": int(sc["unfilled_qty"])})
        lp = float(self.limit_price[i])
        return Schedule(order_id, symbol, int(self.side[i]), STRATEGIES[int(self.strategy[i])],
                        int(self.start_ns[i]), int(self.end_ns[i]), n, float(self.tau_s[i]),
                        to_host(self.shares[a:b]).copy(), to_host(self.expected_volume[a:b]).copy(),
                        None if lp != lp else lp, score)


@dataclass
class BatchPlan:
    """Validated per-row inputs of a batch (arrays of one array module): ``reject`` codes, the
    planner arguments ``args`` (the positional arguments of ``plan_batch_cpu`` /
    ``plan_batch_xp`` after ``xp``) and the columns the scores need."""

    reject: Any
    valid: Any
    args: tuple[Any, ...]
    cols: dict[str, Any]


def prepare_batch(orders: OrderColumns, table: ParamsTable, config: ExecutionConfig, now_ns: Any,
                  x: ModuleType) -> BatchPlan:
    """Validation, defaults and per-row constants of :func:`schedule_batch` on module ``x``
    (``now_ns``: an int, or an int64 (B,) array of per-row decision times)."""
    cfg, now = config, now_ns
    B = len(orders)
    col = {f.name: x.asarray(getattr(orders, f.name)) for f in fields(orders)}
    sym = col["sym"].astype(x.int64)
    known = (sym >= 0) & (sym < len(table))
    code = x.where(known, sym, 0)

    def gather(a: np.ndarray, fill: float | int) -> Any:
        if len(a) == 0:
            return x.full(B, fill)
        return x.where(known, x.asarray(a)[code], fill)

    price, sigma, adv = gather(table.price, np.nan), gather(table.sigma, np.nan), gather(table.adv, np.nan)
    spread, lot = gather(table.spread, np.nan), gather(table.lot, 0).astype(x.int64)
    eta_o, gamma_o = gather(table.eta, np.nan), gather(table.gamma, np.nan)
    prof_row = gather(table.prof_row, -1).astype(x.int64)
    have = (price > 0) & (lot > 0)  # NaN compares False: never set
    lot1 = x.where(have, lot, 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        eps, eta_c, gamma_c, sig2, adv_rate, sqrt_coef = derive_constants(price, sigma, adv, spread, cfg)
        eta = x.where(x.isnan(eta_o), eta_c, eta_o)
        gamma = x.where(x.isnan(gamma_o), gamma_c, gamma_o)
        side, strat, qty = col["side"], col["strategy"].astype(x.int64), col["quantity"].astype(x.int64)
        end = col["end_ns"].astype(x.int64)
        start = x.maximum(col["start_ns"].astype(x.int64), now)
        H = end - start
        N = x.minimum(x.maximum(H // cfg.slice_ns, 1), cfg.max_slices)
        tau = H / N / 1e9
        lam_in, cap_in, pov_in, limit = (col["risk_aversion"], col["max_participation"], col["pov_rate"],
                                         col["limit_price"])
        lam = x.where(x.isnan(lam_in), cfg.risk_aversion, lam_in)
        cap = x.where(x.isnan(cap_in), cfg.max_participation, cap_in)
        pov = x.where(x.isnan(pov_in), cfg.pov_rate, pov_in)
        L = qty // lot1
        odd = qty - L * lot1
        eta_t = eta - 0.5 * gamma * tau
        is_ac = strat == AC
        checks = [
            (side != 1) & (side != -1),
            (strat < 0) | (strat >= len(STRATEGIES)),
            qty <= 0,
            end <= now,
            H < cfg.slice_ns,
            ~((lam >= 0.0) & (lam < np.inf)),
            ~((cap > 0.0) & (cap <= 1.0)),
            ~((pov > 0.0) & (pov <= 1.0)),
            ~(x.isnan(limit) | ((limit > 0.0) & (limit < np.inf))),
            ~known,
            ~have,
            L > MAX_LOTS,
            is_ac & ~(eta_t > 0.0),
        ]
        reject = x.zeros(B, dtype=x.int8)
        for c in range(len(checks), 0, -1):
            reject = x.where(checks[c - 1], c, reject).astype(x.int8)
        valid = reject == 0
        et = x.where(valid & is_ac, eta_t, 1.0)
        u = lam * sig2 * tau * tau / (2.0 * et)
        q = 1.0 / (1.0 + u + x.sqrt(u * (2.0 + u)))
        q = x.where(valid & is_ac, q, 1.0)
    offsets = x.concatenate([x.zeros(1, dtype=x.int64), x.cumsum(x.where(valid, N, 0))])
    args = (strat, L, lot1, odd, N, H, start, q, cap, pov, adv, adv_rate, x.asarray(table.prof_cum),
            prof_row, table.prof_bucket_s, table.prof_open_s, eta, gamma, eps, sig2, valid, offsets)
    cols = {"qty": qty, "price": price, "adv": adv, "sqrt_coef": sqrt_coef, "lam": lam, "is_ac": is_ac,
            "q": q, "tau": tau, "N": N, "start": start, "end": end, "side": side,
            "strategy": col["strategy"], "limit": limit}
    return BatchPlan(reject, valid, args, cols)


def schedule_batch(orders: OrderColumns, table: ParamsTable, config: ExecutionConfig | None = None,
                   *, now_ns: Any = None, backend: str | None = None) -> BatchSchedules:
    """Plan and score B orders at once (pure: neither input is modified).

    Args:
        orders: the orders as columns (NumPy, or CuPy for the GPU backend).
        table: per-symbol market parameters; a symbol code outside it is rejected (code 10),
            a row never set is rejected as missing parameters (code 11).
        config: settings (default :class:`ExecutionConfig()`).
        now_ns: current time, ns since the epoch (default ``time.time_ns()``), or an int64 (B,)
            array giving each row its own decision time (a stream of orders priced as of their
            event times); row i then equals ``schedule(order_i, ..., now_ns=now_ns[i])``.
        backend: ``cpu``, ``gpu`` or ``auto`` (default: ``backend.select()``).
    """
    cfg = config or ExecutionConfig()
    be = select(backend)
    x = xp(be)
    now: Any
    if now_ns is None:
        now = time.time_ns()
    elif np.ndim(now_ns) == 0:
        now = int(now_ns)
    else:
        now = x.asarray(now_ns).astype(x.int64)
        if now.shape != (len(orders),):
            raise ExecutionInputError("now_ns", f"per-row decision times must have shape ({len(orders)},), "
                                                f"got {tuple(now.shape)}")
    plan = prepare_batch(orders, table, cfg, now, x)
    if be == GPU:
        shares, vol, sc = plan_batch_xp(x, *plan.args)
    elif len(orders) >= PARALLEL_MIN_ROWS:
        shares, vol, sc = plan_batch_cpu(*plan.args)
    else:
        shares, vol, sc = plan_batch_serial(*plan.args)
    c, valid = plan.cols, plan.valid
    qty, lam, q, tau = c["qty"], c["lam"], c["q"], c["tau"]
    unf, X, perm, temp, spr, var, maxp = (sc[:, j] for j in range(7))
    with np.errstate(divide="ignore", invalid="ignore"):
        if be == GPU:
            kappa = x.where(c["is_ac"], x.where(q > 0.0, -x.log(q) / tau, np.inf), 0.0)
        else:  # the C library's log, as the single-order API (see ac_kappa_cpu)
            kappa = ac_kappa_cpu(c["is_ac"], q, tau)
        es = perm + temp + spr
        scores = {
            "expected_shortfall": es,
            "expected_shortfall_bps": es / (qty * c["price"]) * 1e4,
            "variance": var,
            "timing_risk": x.sqrt(var),
            "permanent_impact": perm,
            "temporary_impact": temp,
            "spread_cost": spr,
            "sqrt_impact_cost": c["sqrt_coef"] * x.sqrt(qty / c["adv"]) * qty,
            "objective": es + lam * var,
            "executed_qty": X,
            "unfilled_qty": unf,
            "max_participation": maxp,
            "risk_aversion": lam,
            "kappa": kappa,
        }
    scores = {k: x.where(valid, v, np.nan) for k, v in scores.items()}
    zero = x.zeros(len(orders), dtype=x.int64)
    return BatchSchedules(
        reject=plan.reject, offsets=plan.args[-1], shares=shares, expected_volume=vol, n_slices=x.where(valid, c["N"], zero),
        start_ns=x.where(valid, c["start"], zero), end_ns=c["end"], tau_s=x.where(valid, tau, np.nan),
        side=c["side"], strategy=c["strategy"], limit_price=c["limit"], scores=scores)
