"""The execution topics' Avro records <-> the models' objects (``gpu_ops.execution``).

* ``orders.parent``: :data:`PARENT_ORDER` records (key = order id) and, interleaved,
  :data:`MARKET_PARAMS` records (key = symbol; one copy per partition);
* ``orders.schedule``: :data:`ORDER_SCHEDULE` (key = order id);
* ``orders.scored``: :data:`ORDER_SCORE` (key = order id);
* ``execution.params``: :data:`MARKET_PARAMS` (compacted, key = symbol).

Pure functions: no Kafka. Units follow ``gpu_ops.execution`` (ns since the epoch, shares,
currency per share).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mystocks_gpu.gpu_ops.execution import (
    ExecutionInputError,
    MarketParams,
    ParentOrder,
    Schedule,
    VolumeProfile,
)

PARENT_ORDER = "mystocks.execution.ParentOrder"
MARKET_PARAMS = "mystocks.execution.MarketParams"
ORDER_SCHEDULE = "mystocks.execution.OrderSchedule"
ORDER_SCORE = "mystocks.execution.OrderScore"

#: Avro enum symbols <-> the models' codes / names
SIDE_SYMBOLS = {1: "BUY", -1: "SELL"}
SIDE_OF_SYMBOL = {"BUY": 1, "SELL": -1}
STRATEGY_OF_SYMBOL = {"AC": "ac", "TWAP": "twap", "VWAP": "vwap", "POV": "pov"}
SYMBOL_OF_STRATEGY = {v: k for k, v in STRATEGY_OF_SYMBOL.items()}
#: the models' strategy codes (``parent_orders.STRATEGIES`` order) of the Avro enum symbols
STRATEGY_CODE_OF_SYMBOL = {"AC": 0, "TWAP": 1, "VWAP": 2, "POV": 3}
MAX_ID_BYTES = 256


# ---- market parameters -----------------------------------------------------------------------
def params_to_record(p: MarketParams, ts_event: int, source: str = "") -> dict[str, Any]:
    """The :data:`MARKET_PARAMS` record of ``p`` (estimated as of ``ts_event`` ns)."""
    prof = p.profile
    return {"symbol": p.symbol, "ts_event": int(ts_event), "price": p.price, "sigma": p.sigma, "adv": p.adv,
            "spread": p.spread, "lot_size": p.lot_size, "eta": p.eta, "gamma": p.gamma,
            "profile_fractions": list(prof.fractions) if prof is not None else [],
            "profile_bucket_s": prof.bucket_seconds if prof is not None else 0.0,
            "profile_open_offset_s": prof.open_offset_s if prof is not None else 0.0, "source": source}


def params_from_record(rec: Mapping[str, Any]) -> MarketParams:
    """:class:`MarketParams` of a decoded :data:`MARKET_PARAMS` record; :class:`ExecutionInputError`
    names the bad field (NaN, negative, an inconsistent profile...)."""
    fr = rec.get("profile_fractions") or []
    profile = None
    if fr:
        profile = VolumeProfile(tuple(fr), rec.get("profile_bucket_s", 0.0), rec.get("profile_open_offset_s", 0.0))
    sym = rec.get("symbol", "")
    if len(sym.encode()) > MAX_ID_BYTES:
        raise ExecutionInputError("symbol", f"longer than {MAX_ID_BYTES} bytes")
    return MarketParams(sym, rec["price"], rec["sigma"], rec["adv"], rec["spread"], int(rec.get("lot_size", 100)),
                        eta=rec.get("eta"), gamma=rec.get("gamma"), profile=profile)


# ---- parent orders -----------------------------------------------------------------------------
def order_to_record(o: ParentOrder, ts_event: int, horizon_ns: int = 0) -> dict[str, Any]:
    """The :data:`PARENT_ORDER` record of ``o`` submitted at ``ts_event`` ns. With ``horizon_ns``
    > 0 the record gives the horizon as a length (``end_ns`` 0) instead of ``o.end_ns``."""
    side = o.side if isinstance(o.side, int) else SIDE_OF_SYMBOL[str(o.side).upper()]
    return {"order_id": o.order_id, "ts_event": int(ts_event), "symbol": o.symbol, "side": SIDE_SYMBOLS[side],
            "quantity": int(o.quantity), "start_ns": int(o.start_ns), "end_ns": 0 if horizon_ns else int(o.end_ns),
            "horizon_ns": int(horizon_ns), "strategy": SYMBOL_OF_STRATEGY[o.strategy],
            "risk_aversion": o.risk_aversion, "max_participation": o.max_participation, "pov_rate": o.pov_rate,
            "limit_price": o.limit_price}


def resolve_end(rec: Mapping[str, Any], decision_ns: int) -> int:
    """End of a record's horizon: ``end_ns``, or ``max(start_ns, decision) + horizon_ns`` when
    ``end_ns`` is 0. :class:`ExecutionInputError` when both or neither are given or one is negative."""
    end, horizon = int(rec.get("end_ns", 0)), int(rec.get("horizon_ns", 0))
    if end < 0 or horizon < 0:
        raise ExecutionInputError("end_ns" if end < 0 else "horizon_ns", f"must be >= 0, got {min(end, horizon)}")
    if end > 0 and horizon > 0:
        raise ExecutionInputError("horizon_ns", f"give end_ns or horizon_ns, not both (end_ns={end}, "
                                                f"horizon_ns={horizon})")
    if end == 0 and horizon == 0:
        raise ExecutionInputError("end_ns", "no horizon: set end_ns (ns since the epoch) or horizon_ns (ns)")
    if end:
        return end
    return max(int(rec.get("start_ns", 0)), decision_ns) + horizon


def check_order_record(rec: Mapping[str, Any]) -> None:
    """Checks a decoded :data:`PARENT_ORDER` needs before it can be scheduled (ids and symbol)."""
    oid, sym = rec.get("order_id", ""), rec.get("symbol", "")
    if not oid or len(oid.encode()) > MAX_ID_BYTES:
        raise ExecutionInputError("order_id", f"must be 1..{MAX_ID_BYTES} bytes, got {len(oid.encode())}")
    if not sym or len(sym.encode()) > MAX_ID_BYTES:
        raise ExecutionInputError("symbol", f"must be 1..{MAX_ID_BYTES} bytes, got {len(sym.encode())}")


def order_from_record(rec: Mapping[str, Any], decision_ns: int) -> ParentOrder:
    """The :class:`ParentOrder` of a decoded record, its horizon resolved at ``decision_ns``."""
    return ParentOrder(rec["order_id"], rec["symbol"], SIDE_OF_SYMBOL[rec["side"]], int(rec["quantity"]),
                       resolve_end(rec, decision_ns), int(rec.get("start_ns", 0)),
                       STRATEGY_OF_SYMBOL[rec.get("strategy", "AC")], rec.get("risk_aversion"),
                       rec.get("max_participation"), rec.get("pov_rate"), rec.get("limit_price"))


# ---- outputs -----------------------------------------------------------------------------------
def schedule_record(s: Schedule, quantity: int, ts_event: int, ts_ingest: int) -> dict[str, Any]:
    """The :data:`ORDER_SCHEDULE` record of ``s`` (a parent of ``quantity`` shares)."""
    return {"order_id": s.order_id, "ts_event": int(ts_event), "ts_ingest": int(ts_ingest), "symbol": s.symbol,
            "side": SIDE_SYMBOLS[s.side], "strategy": SYMBOL_OF_STRATEGY[s.strategy], "quantity": int(quantity),
            "start_ns": int(s.start_ns), "end_ns": int(s.end_ns), "tau_s": float(s.tau_s),
            "limit_price": s.limit_price, "slice_ts": s.times_ns.tolist(), "slice_qty": s.quantities.tolist(),
            "expected_volume": s.expected_volume.tolist()}


def cap_warning(cap: float, executed: int, unfilled: int) -> str:
    """The score's warning when the participation cap left ``unfilled`` shares ("" if none)."""
    if unfilled <= 0:
        return ""
    return (f"participation cap {cap:g} cannot fill {unfilled:,} of {executed + unfilled:,} shares within the "
            f"horizon: schedule capped at {executed:,}")


def score_record(s: Schedule, quantity: int, price: float, ts_event: int, ts_ingest: int,
                 cap: float) -> dict[str, Any]:
    """The :data:`ORDER_SCORE` record of ``s`` (``price``: the parameters' reference price;
    ``cap``: the participation cap used, for the warning)."""
    sc = s.score
    return {"order_id": s.order_id, "ts_event": int(ts_event), "ts_ingest": int(ts_ingest), "symbol": s.symbol,
            "side": SIDE_SYMBOLS[s.side], "strategy": SYMBOL_OF_STRATEGY[s.strategy], "quantity": int(quantity),
            "price": float(price), "expected_shortfall": sc.expected_shortfall,
            "expected_shortfall_bps": sc.expected_shortfall_bps, "variance": sc.variance,
            "timing_risk": sc.timing_risk, "impact_cost": sc.impact_cost, "permanent_impact": sc.permanent_impact,
            "temporary_impact": sc.temporary_impact, "spread_cost": sc.spread_cost,
            "sqrt_impact_cost": sc.sqrt_impact_cost, "objective": sc.objective, "risk_aversion": sc.risk_aversion,
            "kappa": sc.kappa, "n_slices": int(s.n_slices), "executed_qty": int(sc.executed_qty),
            "unfilled_qty": int(sc.unfilled_qty), "capped": bool(sc.unfilled_qty > 0),
            "max_participation": sc.max_participation, "participation": s.participation.tolist(),
            "warning": cap_warning(cap, int(sc.executed_qty), int(sc.unfilled_qty))}
