"""Simulator core: fill a schedule's child slices against a replayed tape and measure the realised
implementation shortfall against the pre-trade estimate (pure; the ``execsim`` job wraps it).

Fill rule (slice k covers ``[t_k, t_{k+1})``, ``t_N`` = end of the horizon; ``side`` +1 buy,
-1 sell; ``carry`` = shares of earlier slices not filled yet):

1. Wanted: ``n_k + carry``.
2. Reference price: the mid ``(bid + ask) / 2`` of the first quote in ``[t_k, t_{k+1})`` when the
   tape has quotes (half spread ``(ask - bid) / 2`` of that quote), else the first trade price in
   the window (half spread ``eps`` of the parameters). No event in the window: nothing fills.
3. Volume limit: at most ``floor(cap * tape volume in the window)`` shares, ``cap`` the order's
   max participation; a partial fill is rounded down to whole lots (the full remainder, odd lot
   included, fills when it fits).
4. Price: ``p_k = ref + side * (half_spread + eta * fill / tau + gamma * filled_before)``: the
   temporary impact of the slice's own rate plus the permanent impact of our earlier fills (the
   tape does not contain them).
5. Limit: a buy does not fill at ``p_k > limit`` (a sell at ``p_k < limit``); the shares carry.
6. Whatever has not filled by the end is ``unfilled``.

Realised shortfall ``IS = side * sum_k fill_k (p_k - S_0)`` (currency; positive = cost) with the
arrival price ``S_0`` = the mid of the last quote at or before the start (else the last trade at
or before it, else the first event after it); in bps of ``S_0 * executed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mystocks_gpu.gpu_ops.execution.exceptions import ExecutionInputError, SimulationStopped
from mystocks_gpu.gpu_ops.execution.execution_config import ExecutionConfig
from mystocks_gpu.gpu_ops.execution.market_params import MarketParams, SymbolModel, prepare
from mystocks_gpu.gpu_ops.execution.parent_orders import STRATEGIES, ParentOrder, Schedule
from mystocks_gpu.gpu_ops.execution.schedule_api import schedule
from mystocks_gpu.gpu_ops.tick_columns import QUOTE, TRADE, TickColumns

ProgressCb = Callable[[float, str], None]


def _sorted(name: str, ts: np.ndarray) -> None:
    if ts.ndim != 1 or (len(ts) > 1 and np.any(np.diff(ts) < 0)):
        raise ExecutionInputError(name, "must be a 1-D array sorted by time")


@dataclass(frozen=True)
class Tape:
    """One symbol's market data over (at least) an order's window, as NumPy arrays.

    Attributes:
        trade_ts: int64 (T,) trade times, ns since the epoch, non-decreasing.
        trade_px: float64 (T,) trade prices; trade_sz: float64 (T,) trade sizes (shares).
        quote_ts: int64 (Q,) quote times or None; bid, ask: float64 (Q,) (None without quotes).
    """

    trade_ts: np.ndarray
    trade_px: np.ndarray
    trade_sz: np.ndarray
    quote_ts: np.ndarray | None = None
    bid: np.ndarray | None = None
    ask: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, dt in (("trade_ts", np.int64), ("trade_px", np.float64), ("trade_sz", np.float64),
                         ("quote_ts", np.int64), ("bid", np.float64), ("ask", np.float64)):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, np.ascontiguousarray(v, dtype=dt))
        if not len(self.trade_ts) == len(self.trade_px) == len(self.trade_sz):
            raise ExecutionInputError("tape", "trade_ts, trade_px and trade_sz differ in length")
        _sorted("trade_ts", self.trade_ts)
        if (self.quote_ts is None) != (self.bid is None) or (self.bid is None) != (self.ask is None):
            raise ExecutionInputError("tape", "give quote_ts, bid and ask together (or none)")
        if self.quote_ts is not None:
            assert self.bid is not None and self.ask is not None
            if not len(self.quote_ts) == len(self.bid) == len(self.ask):
                raise ExecutionInputError("tape", "quote_ts, bid and ask differ in length")
            _sorted("quote_ts", self.quote_ts)

    @property
    def has_quotes(self) -> bool:
        return self.quote_ts is not None and len(self.quote_ts) > 0

    @classmethod
    def from_ticks(cls, ticks: TickColumns, sym: int) -> Tape:
        """The tape of symbol code ``sym`` from a host :class:`TickColumns` batch (rows in time
        order): TRADE rows are trades; every row with a finite ``0 < bid <= ask`` is a quote."""
        mine = ticks.sym == sym
        tr = mine & (ticks.kind == TRADE)
        qt = mine & ((ticks.kind == QUOTE) | (ticks.kind == TRADE)) & np.isfinite(ticks.bid) \
            & np.isfinite(ticks.ask) & (ticks.bid > 0) & (ticks.ask >= ticks.bid)
        return cls(ticks.ts[tr], ticks.price[tr], ticks.size[tr], ticks.ts[qt], ticks.bid[qt], ticks.ask[qt])


@dataclass
class SimResult:
    """One schedule simulated against a tape (currency unless said; shares for quantities).

    ``fill_qty``/``fill_px`` are per slice (price NaN where nothing filled); ``z_score`` =
    (realised - expected) / timing risk."""

    order_id: str
    symbol: str
    strategy: str
    side: int
    quantity: int
    executed_qty: int
    unfilled_qty: int
    arrival_price: float
    avg_price: float
    realised_is: float
    realised_is_bps: float
    expected_is: float
    expected_is_bps: float
    timing_risk: float
    z_score: float
    fill_qty: np.ndarray = field(repr=False)
    fill_px: np.ndarray = field(repr=False)


def arrival_price(tape: Tape, t_ns: int) -> float:
    """S_0 at ``t_ns`` (see the module docstring); raises when the tape is empty."""
    if tape.has_quotes:
        assert tape.quote_ts is not None and tape.bid is not None and tape.ask is not None
        i = int(np.searchsorted(tape.quote_ts, t_ns, side="right")) - 1
        i = max(i, 0)
        return float((tape.bid[i] + tape.ask[i]) / 2.0)
    if len(tape.trade_ts) == 0:
        raise ExecutionInputError("tape", "no trades and no quotes: nothing to price against")
    i = max(int(np.searchsorted(tape.trade_ts, t_ns, side="right")) - 1, 0)
    return float(tape.trade_px[i])


def simulate(sched: Schedule, model: SymbolModel | MarketParams, tape: Tape, *,
             max_participation: float | None = None, quantity: int | None = None) -> SimResult:
    """Fill ``sched`` against ``tape`` with the rule of the module docstring.

    ``model`` gives the impact constants (eta, gamma, eps); ``max_participation`` caps each
    slice's fill at that share of the tape's volume in the slice (default: the config's);
    ``quantity`` is the parent quantity (default: the schedule's executed + unfilled shares)."""
    m = model if isinstance(model, SymbolModel) else prepare(model)
    cap = m.config.max_participation if max_participation is None else max_participation
    qty = sched.score.executed_qty + sched.score.unfilled_qty if quantity is None else quantity
    n = sched.n_slices
    edges = np.append(sched.times_ns, sched.end_ns)
    cs = np.concatenate([[0.0], np.cumsum(tape.trade_sz)])
    ti = np.searchsorted(tape.trade_ts, edges, side="left")
    window_vol = cs[ti[1:]] - cs[ti[:-1]]
    if tape.has_quotes:
        assert tape.quote_ts is not None and tape.bid is not None and tape.ask is not None
        qi = np.searchsorted(tape.quote_ts, edges, side="left")
        has_ref = qi[:-1] < qi[1:]
        j = np.minimum(qi[:-1], len(tape.quote_ts) - 1)
        ref = (tape.bid[j] + tape.ask[j]) / 2.0
        half = (tape.ask[j] - tape.bid[j]) / 2.0
    else:
        has_ref = ti[:-1] < ti[1:]
        j = np.minimum(ti[:-1], max(len(tape.trade_ts) - 1, 0))
        ref = tape.trade_px[j] if len(tape.trade_ts) else np.full(n, np.nan)
        half = np.full(n, m.eps)
    s0 = arrival_price(tape, sched.start_ns)
    side, lot, tau, limit = sched.side, m.lot, sched.tau_s, sched.limit_price
    fill_qty = np.zeros(n, dtype=np.int64)
    fill_px = np.full(n, np.nan)
    carry = 0
    done = 0
    for k in range(n):
        want = int(sched.quantities[k]) + carry
        carry = want
        if want <= 0 or not has_ref[k]:
            continue
        avail = math.floor(cap * window_vol[k])
        fill = want if want <= avail else (avail // lot) * lot
        if fill <= 0:
            continue
        px = ref[k] + side * (half[k] + m.eta * fill / tau + m.gamma * done)
        if limit is not None and side * (px - limit) > 0:
            continue
        fill_qty[k] = fill
        fill_px[k] = px
        done += fill
        carry = want - fill
    traded = fill_qty > 0
    executed = int(fill_qty.sum())
    cost = float(side * np.sum(fill_qty[traded] * (fill_px[traded] - s0)))
    sc = sched.score
    notional = s0 * executed
    return SimResult(
        order_id=sched.order_id, symbol=sched.symbol, strategy=sched.strategy, side=side, quantity=qty,
        executed_qty=executed, unfilled_qty=qty - executed, arrival_price=s0,
        avg_price=float(np.sum(fill_qty[traded] * fill_px[traded]) / executed) if executed else math.nan,
        realised_is=cost, realised_is_bps=cost / notional * 1e4 if executed else math.nan,
        expected_is=sc.expected_shortfall, expected_is_bps=sc.expected_shortfall_bps,
        timing_risk=sc.timing_risk,
        z_score=(cost - sc.expected_shortfall) / sc.timing_risk if sc.timing_risk > 0 else math.nan,
        fill_qty=fill_qty, fill_px=fill_px)


def simulate_order(order: ParentOrder, params: SymbolModel | MarketParams, tape: Tape,
                   config: ExecutionConfig | None = None,
                   strategies: Sequence[str] = STRATEGIES) -> list[SimResult]:
    """Schedule ``order`` with each strategy (the decision time is the order's start, or the
    tape's first event when ``start_ns`` is 0) and simulate each schedule against ``tape``."""
    m = params if isinstance(params, SymbolModel) else prepare(params, config)
    now = order.start_ns
    if now <= 0:
        firsts = [a[0] for a in (tape.trade_ts, tape.quote_ts) if a is not None and len(a)]
        if not firsts:
            raise ExecutionInputError("tape", "empty tape and no start_ns: no decision time")
        now = int(min(firsts))
    cap = order.max_participation
    out = []
    for s in strategies:
        o = ParentOrder(order.order_id, order.symbol, order.side, order.quantity, order.end_ns, now, s,
                        order.risk_aversion, order.max_participation, order.pov_rate, order.limit_price)
        out.append(simulate(schedule(o, m, now_ns=now), m, tape, max_participation=cap, quantity=order.quantity))
    return out


@dataclass
class SimReport:
    """Results of :func:`run_simulation`: one :class:`SimResult` per (order, strategy), and the
    orders that could not be simulated (order id -> ``"field: message"``)."""

    results: list[SimResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def table(self) -> dict[str, np.ndarray]:
        """The results as columns (every scalar field of :class:`SimResult`)."""
        names = [f for f in SimResult.__dataclass_fields__ if f not in ("fill_qty", "fill_px")]
        return {f: np.array([getattr(r, f) for r in self.results]) for f in names}

    def summary(self) -> dict[str, dict[str, float]]:
        """Per strategy: orders, mean realised / expected shortfall (bps) and mean z-score."""
        out: dict[str, dict[str, float]] = {}
        for s in dict.fromkeys(r.strategy for r in self.results):
            rs = [r for r in self.results if r.strategy == s]
            out[s] = {"orders": float(len(rs)),
                      "realised_is_bps": float(np.nanmean([r.realised_is_bps for r in rs])),
                      "expected_is_bps": float(np.nanmean([r.expected_is_bps for r in rs])),
                      "z_score": float(np.nanmean([r.z_score for r in rs]))}
        return out


def run_simulation(orders: Sequence[ParentOrder], params: Mapping[str, SymbolModel | MarketParams],
                   tapes: Mapping[str, Tape], config: ExecutionConfig | None = None,
                   strategies: Sequence[str] = STRATEGIES, *, progress: ProgressCb | None = None,
                   should_stop: Callable[[], bool] | None = None) -> SimReport:
    """Simulate every order with every strategy (the ``execsim`` job's core).

    ``progress(fraction, message)`` is called after each order; ``should_stop()`` is checked
    before each order and raises :class:`SimulationStopped` (with the partial report) when true.
    An order whose symbol has no parameters or tape, or that fails validation, is recorded in
    ``errors`` and the run goes on."""
    report = SimReport()
    models: dict[str, SymbolModel] = {}
    total = len(orders)
    for i, o in enumerate(orders):
        if should_stop is not None and should_stop():
            raise SimulationStopped(f"stopped after {i}/{total} orders", partial=report)
        try:
            if o.symbol not in params:
                raise ExecutionInputError("symbol", f"no market parameters for {o.symbol!r}")
            if o.symbol not in tapes:
                raise ExecutionInputError("symbol", f"no tape for {o.symbol!r}")
            if o.symbol not in models:
                p = params[o.symbol]
                models[o.symbol] = p if isinstance(p, SymbolModel) else prepare(p, config)
            report.results.extend(simulate_order(o, models[o.symbol], tapes[o.symbol], config, strategies))
        except ExecutionInputError as exc:
            report.errors[o.order_id] = str(exc)
        if progress is not None:
            progress((i + 1) / total, f"order {i + 1}/{total}")
    return report

