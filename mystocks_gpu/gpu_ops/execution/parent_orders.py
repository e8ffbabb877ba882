"""Parent orders in, schedules and scores out: :class:`ParentOrder`, :class:`Schedule`,
:class:`Score`, and the codes shared by every scheduler implementation.

A schedule has ``N`` equal slices covering the effective horizon ``[start, end)`` with
``start = max(order.start_ns, now)``; slice ``k`` (0-based) begins at
``start + floor(k * H / N)`` ns (integer arithmetic, ``H = end - start``) and trades
``quantities[k]`` shares during ``[t_k, t_{k+1})``. Quantities are non-negative; the side is a
separate field (+1 buy, -1 sell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUY = 1
SELL = -1
#: strategy codes (the int8 ``strategy`` column of the batched API)
AC, TWAP, VWAP, POV = 0, 1, 2, 3
STRATEGIES: tuple[str, ...] = ("ac", "twap", "vwap", "pov")
STRATEGY_CODES: dict[str, int] = {name: i for i, name in enumerate(STRATEGIES)}
SIDE_CODES: dict[object, int] = {1: BUY, -1: SELL, "buy": BUY, "sell": SELL, "BUY": BUY, "SELL": SELL}
#: targets are scaled by this before largest-remainder rounding so that floating-point error can
#: never make the floors overshoot the parent quantity (valid for N <= 10 000, lots <= MAX_LOTS)
DEFLATE = 1.0 - 1e-11
#: most lots one parent order may have (the rounding guarantee needs lots * 1e-11 < 1)
MAX_LOTS = 10**10


@dataclass(frozen=True, slots=True)
class ParentOrder:
    """One parent order to schedule.

    Attributes:
        order_id: the caller's id (the Kafka key of ``orders.parent`` later).
        symbol: symbol name; must match the market parameters passed with it.
        side: ``1``/``"buy"`` or ``-1``/``"sell"``.
        quantity: shares to trade, an int > 0 (odd lots allowed: see :class:`Schedule`).
        end_ns: end of the horizon, ns since the Unix epoch; must be in the future.
        start_ns: earliest start, ns since the epoch; default 0 = now. A start in the past
            starts now.
        strategy: ``ac`` (Almgren-Chriss optimal, default), ``twap``, ``vwap`` or ``pov``.
        risk_aversion: Almgren-Chriss lambda (1 / currency, >= 0); ``None``: config default.
            Also used for every strategy's ``objective`` score.
        max_participation: cap on each slice's share of its expected market volume, in (0, 1];
            ``None``: config default.
        pov_rate: target participation of the ``pov`` strategy, in (0, 1] (capped by
            ``max_participation``); ``None``: config default.
        limit_price: worst acceptable price (currency / share) or ``None``; carried on the
            schedule and enforced by the simulator, not by the planner.
    """

    order_id: str
    symbol: str
    side: int | str
    quantity: int
    end_ns: int
    start_ns: int = 0
    strategy: str = "ac"
    risk_aversion: float | None = None
    max_participation: float | None = None
    pov_rate: float | None = None
    limit_price: float | None = None


@dataclass(slots=True)
class Score:
    """Pre-trade scores of a schedule under the Almgren-Chriss cost model (currency unless said).

    Attributes:
        expected_shortfall: E[IS] = permanent + temporary impact + spread cost.
        expected_shortfall_bps: E[IS] / (quantity * price) * 1e4.
        variance: V[IS] = sigma_abs^2 * tau * sum_k x_k^2 (currency^2), x_k the shares still to
            trade after slice k.
        timing_risk: sqrt(V[IS]), one standard deviation of the shortfall.
        permanent_impact: gamma * sum_k x_k n_k.
        temporary_impact: eta / tau * sum_k n_k^2.
        spread_cost: eps * executed shares.
        sqrt_impact_cost: square-root model estimate for the whole parent,
            Y * sigma * sqrt(Q / ADV) * price * Q.
        objective: E[IS] + lambda * V[IS].
        executed_qty: shares scheduled; unfilled_qty: quantity - executed_qty (> 0 when the
            participation cap cannot fill the order within the horizon; the schedule is capped).
        max_participation: largest quantities[k] / expected_volume[k] (inf when a slice trades
            with zero expected volume).
        risk_aversion: the lambda used; kappa: the AC urgency (1 / s; 0 for other strategies).
    """

    expected_shortfall: float
    expected_shortfall_bps: float
    variance: float
    timing_risk: float
    permanent_impact: float
    temporary_impact: float
    spread_cost: float
    sqrt_impact_cost: float
    objective: float
    executed_qty: int
    unfilled_qty: int
    max_participation: float
    risk_aversion: float
    kappa: float

    @property
    def impact_cost(self) -> float:
        """Permanent + temporary impact (currency), the spread excluded."""
        return self.permanent_impact + self.temporary_impact

    @property
    def capped(self) -> bool:
        """True when the participation cap left part of the order unfilled."""
        return self.unfilled_qty > 0


@dataclass(slots=True)
class Schedule:
    """A parent order's child slices (treat as read-only).

    Attributes:
        order_id, symbol, side (+1 / -1), strategy: copied from the order.
        start_ns, end_ns: the effective horizon (start clipped to now).
        n_slices: N; tau_s: slice length in seconds, ``(end - start) / N / 1e9``.
        quantities: int64 (N,), shares per slice, >= 0, summing to ``score.executed_qty``
            (= the order quantity unless capped). All are multiples of the lot size except the
            last trading slice, which carries the odd lot (``quantity % lot_size``); the
            participation cap is enforced in whole lots.
        expected_volume: float64 (N,), expected market volume per slice (shares).
        limit_price: from the order (None = none).
        score: the pre-trade :class:`Score`.
    """

    order_id: str
    symbol: str
    side: int
    strategy: str
    start_ns: int
    end_ns: int
    n_slices: int
    tau_s: float
    quantities: np.ndarray
    expected_volume: np.ndarray
    limit_price: float | None
    score: Score

    @property
    def times_ns(self) -> np.ndarray:
        """int64 (N,): start of each slice, ``start + floor(k * H / N)``."""
        return slice_times(self.start_ns, self.end_ns - self.start_ns, self.n_slices)

    @property
    def participation(self) -> np.ndarray:
        """float64 (N,): quantities / expected volume (0 where nothing trades, inf where a
        slice trades with no expected volume)."""
        q = self.quantities.astype(np.float64)
        v = self.expected_volume
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(q > 0, q / np.where(v > 0, v, 0.0), 0.0)

    @property
    def signed_quantities(self) -> np.ndarray:
        """int64 (N,): quantities * side (negative for a sell)."""
        return self.quantities * self.side


def slice_times(start_ns: int, horizon_ns: int, n: int) -> np.ndarray:
    """int64 (n,): ``start + k * (H // n) + (k * (H % n)) // n``, i.e. ``start + floor(k H / n)``
    without int64 overflow."""
    k = np.arange(n, dtype=np.int64)
    return start_ns + k * (horizon_ns // n) + (k * (horizon_ns % n)) // n
