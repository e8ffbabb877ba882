"""The synchronous in-process API: :func:`schedule` (one parent order -> :class:`Schedule`).

Decision latency is this call: validation, resolution of defaults, the planner core (numba by
default) and the scores. Pass a :class:`SymbolModel` from :func:`prepare` (kept per symbol by the
caller) rather than a :class:`MarketParams` to skip the per-call preparation.

Checks, in this order (the first failure raises :class:`ExecutionInputError` with ``field``;
the batched API reports the same field per row, see ``schedule_batch.REJECT_FIELDS``):
side, strategy, quantity > 0, end in the future, horizon >= one slice, risk_aversion >= 0,
max_participation and pov_rate in (0, 1], limit_price > 0, symbol matches the parameters,
lots <= MAX_LOTS, and for ``ac`` a positive ``eta - gamma * tau / 2`` (Almgren-Chriss needs it).
"""

from __future__ import annotations

import math
import operator
import time

import numpy as np

from mystocks_gpu.gpu_ops.execution.exceptions import ExecutionInputError
from mystocks_gpu.gpu_ops.execution.execution_config import ExecutionConfig
from mystocks_gpu.gpu_ops.execution.market_params import MarketParams, SymbolModel, prepare
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
from mystocks_gpu.gpu_ops.execution.schedule_cpu import plan_core
from mystocks_gpu.gpu_ops.execution.schedule_py import plan_core_py

_INF = math.inf
_empty = np.empty
_I64 = np.int64
_F64 = np.float64


def _fraction(name: str, v: float | None, default: float) -> float:
    if v is None:
        return default
    if not 0.0 < v <= 1.0:  # NaN fails too
        raise ExecutionInputError(name, f"must be in (0, 1], got {v!r}")
    return float(v)


def ac_q(lam: float, sig2: float, eta: float, gamma: float, tau: float) -> float:
    """``q = exp(-kappa tau)`` of the discrete Almgren-Chriss solution, from
    ``cosh(kappa tau) = 1 + u``, ``u = lam sig2 tau^2 / (2 (eta - gamma tau / 2))``, as
    ``q = 1 / (1 + u + sqrt(u (2 + u)))`` (no exp/log: reproducible across backends).
    Raises when ``eta - gamma tau / 2 <= 0``."""
    eta_t = eta - 0.5 * gamma * tau
    if not eta_t > 0.0:
        raise ExecutionInputError(
            "eta", f"temporary impact eta - gamma*tau/2 = {eta_t:.6g} must be > 0 for Almgren-Chriss "
                   f"(eta={eta:.6g}, gamma={gamma:.6g}, tau={tau:.6g} s); set MarketParams.eta, "
                   "a non-zero spread, or shorter slices")
    u = lam * sig2 * tau * tau / (2.0 * eta_t)
    return 1.0 / (1.0 + u + math.sqrt(u * (2.0 + u)))


def schedule(order: ParentOrder, params: SymbolModel | MarketParams,
             config: ExecutionConfig | None = None, *, now_ns: int | None = None) -> Schedule:
    """Plan and score one parent order.

    Args:
        order: the parent order.
        params: the symbol's prepared constants (fast) or its :class:`MarketParams`.
        config: settings; must be ``None`` or the config ``params`` was prepared with when a
            :class:`SymbolModel` is given; default :class:`ExecutionConfig()`.
        now_ns: the current time, ns since the epoch (default ``time.time_ns()``; a replay
            passes event time). The horizon starts at ``max(order.start_ns, now_ns)``.

    Raises:
        ExecutionInputError: naming the field that is missing, NaN or out of range.
    """
    if type(params) is SymbolModel:
        m = params
        if config is not None and config is not m.config and config != m.config:
            raise ExecutionInputError("config", "differs from the config the SymbolModel was prepared with")
    else:
        m = prepare(params, config)  # type: ignore[arg-type]
    cfg = m.config
    side = SIDE_CODES.get(order.side)
    if side is None:
        raise ExecutionInputError("side", f"must be 'buy'/'sell' or 1/-1, got {order.side!r}")
    strat = STRATEGY_CODES.get(order.strategy)  # type: ignore[arg-type]
    if strat is None:
        raise ExecutionInputError("strategy", f"must be one of {STRATEGIES}, got {order.strategy!r}")
    qty = order.quantity
    if type(qty) is not int:
        try:
            qty = operator.index(qty)
        except TypeError:
            raise ExecutionInputError("quantity", f"must be an int number of shares, got {qty!r}") from None
    if qty <= 0:
        raise ExecutionInputError("quantity", f"must be > 0 shares, got {qty}")
    now = time.time_ns() if now_ns is None else now_ns
    end = order.end_ns
    if end <= now:
        raise ExecutionInputError("end_ns", f"horizon is in the past: end {end} <= now {now} (ns)")
    start = order.start_ns if order.start_ns > now else now
    H = end - start
    slice_ns = cfg.slice_ns
    if H < slice_ns:
        raise ExecutionInputError(
            "end_ns", f"horizon {H / 1e9:.6g} s is shorter than one slice ({slice_ns / 1e9:.6g} s)")
    N = H // slice_ns
    if N > cfg.max_slices:
        N = cfg.max_slices
    lam = order.risk_aversion
    if lam is None:
        lam = cfg.risk_aversion
    elif not 0.0 <= lam < _INF:
        raise ExecutionInputError("risk_aversion", f"must be finite and >= 0, got {lam!r}")
    cap = _fraction("max_participation", order.max_participation, cfg.max_participation)
    pov = _fraction("pov_rate", order.pov_rate, cfg.pov_rate)
    limit = order.limit_price
    if limit is not None and not 0.0 < limit < _INF:
        raise ExecutionInputError("limit_price", f"must be finite and > 0 (or None), got {limit!r}")
    if order.symbol != m.symbol:
        raise ExecutionInputError("symbol", f"order is for {order.symbol!r} but the parameters are for {m.symbol!r}")
    lot = m.lot
    L, odd = divmod(qty, lot)
    if L > MAX_LOTS:
        raise ExecutionInputError("quantity", f"{L} lots exceed the maximum of {MAX_LOTS}")
    tau = H / N / 1e9
    q = ac_q(lam, m.sig2, m.eta, m.gamma, tau) if strat == AC else 1.0
    core = plan_core if cfg.kernel == "numba" else plan_core_py
    shares = _empty(N, _I64)
    vol = _empty(N, _F64)
    unf, X, perm, temp, spread, var, maxp = core(
        strat, L, lot, odd, N, H, start, q, cap, pov, m.adv, m.adv_rate, m.prof_cum,
        m.prof_bucket_s, m.prof_open_s, m.eta, m.gamma, m.eps, m.sig2, shares, vol)
    es = perm + temp + spread
    if strat == AC:
        kappa = -math.log(q) / tau if q > 0.0 else _INF
    else:
        kappa = 0.0
    # positional (field order of Score): cheaper than keywords on the hot path
    score = Score(es, es / (qty * m.price) * 1e4, var, math.sqrt(var), perm, temp, spread,
                  m.sqrt_coef * math.sqrt(qty / m.adv) * qty, es + lam * var, int(X), unf, maxp,
                  lam, kappa)
    return Schedule(order.order_id, order.symbol, side, STRATEGIES[strat], start, end, N, tau,
                    shares, vol, limit, score)


def warm_up(config: ExecutionConfig | None = None) -> None:
    """Compile (or load from the on-disk cache) the numba core by scheduling a throwaway order
    with and without a volume profile, so that the first real order pays no JIT cost."""
    from mystocks_gpu.gpu_ops.execution.market_params import VolumeProfile

    t0 = 1_700_000_000 * 1_000_000_000
    for prof in (None, VolumeProfile((1.0, 2.0), 3600.0)):
        p = MarketParams("WARM", 10.0, 0.02, 1e6, 0.01, 100, profile=prof)
        schedule(ParentOrder("warm", "WARM", 1, 1000, t0 + 3_600_000_000_000), p, config, now_ns=t0)
