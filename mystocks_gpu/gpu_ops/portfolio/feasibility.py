"""Infeasibility that can be decided before solving, with the constraints that conflict.

Each test is a necessary condition for feasibility (vectorised over the batch, NumPy):

- ``lower > upper`` for an asset -> ``asset bounds``.
- ``sum(lower) > budget`` or ``sum(upper) < budget`` -> ``budget`` vs ``asset bounds``.
- group ``k``: the range of ``G_k w`` over the bounds misses ``[group_lower_k, group_upper_k]``
  -> ``group:<name>`` vs ``asset bounds``; when the groups are 0/1 and partition the assets,
  ``sum(group_lower) > budget`` or ``sum(group_upper) < budget`` -> group bounds vs ``budget``.
- leverage ``L < |budget|`` -> ``leverage`` vs ``budget``; ``sum_i dist(0, [l_i, u_i]) > L`` ->
  ``leverage`` vs ``asset bounds``.
- turnover ``T < |budget - sum(w0)|`` -> ``turnover`` vs ``budget``; ``sum_i dist(w0_i, [l_i,
  u_i]) > T`` -> ``turnover`` vs ``asset bounds``.
- target return above the largest ``mu'w`` over bounds and budget (a fractional knapsack) ->
  ``target_return`` vs ``budget``, ``asset bounds``; max-Sharpe with no feasible portfolio of
  positive excess return -> ``excess_return`` vs ``budget``, ``asset bounds``.

Everything else is left to the solver's infeasibility certificate.
"""

from __future__ import annotations

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.problem import ProblemBatch

TOL = 1e-9


def _max_linear(c: np.ndarray, lo: np.ndarray, hi: np.ndarray, budget: np.ndarray | None) -> np.ndarray:
    """``max c'w`` over ``lo <= w <= hi`` (and ``sum w = budget``): greedy fill by descending
    ``c`` starting from ``lo`` (bounds must be finite where a budget is given)."""
    if budget is None:
        with np.errstate(invalid="ignore"):
            return np.sum(np.where(c > 0, c * hi, np.where(c < 0, c * lo, 0.0)), axis=1)
    order = np.argsort(-c, axis=1)
    cs = np.take_along_axis(c, order, axis=1)
    ls = np.take_along_axis(lo, order, axis=1)
    hs = np.take_along_axis(hi, order, axis=1)
    room = hs - ls
    rest = (budget - ls.sum(axis=1))[:, None]
    before = np.cumsum(room, axis=1) - room
    add = np.clip(rest - before, 0.0, room)
    with np.errstate(invalid="ignore"):
        return np.sum(cs * ls, axis=1) + np.nansum(cs * add, axis=1)


def precheck(pb: ProblemBatch) -> tuple[np.ndarray, list[tuple[str, ...]], list[str]]:
    """``(infeasible (B,), conflicts, messages)`` for the decidable cases above."""
    B = pb.n_problems
    lo, hi = pb.lower, pb.upper
    bad = np.zeros(B, dtype=bool)
    conflicts: list[tuple[str, ...]] = [() for _ in range(B)]
    msgs = ["" for _ in range(B)]

    def flag(mask: np.ndarray, names: tuple[str, ...], text: str) -> None:
        for b in np.nonzero(mask & ~bad)[0]:
            conflicts[b] = names
            msgs[b] = text
        bad[:] = bad | mask

    cross = lo > hi + TOL
    if cross.any():
        for b in np.nonzero(cross.any(axis=1))[0]:
            i = int(np.argmax(cross[b]))
            conflicts[b] = ("asset bounds",)
            msgs[b] = f"asset {i}: lower bound {lo[b, i]:g} > upper bound {hi[b, i]:g}"
        bad |= cross.any(axis=1)
    with np.errstate(invalid="ignore"):
        if pb.budget is not None:
            bud = pb.budget
            flag(lo.sum(axis=1) > bud + TOL, ("budget", "asset bounds"),
                 "the lower bounds sum to more than the budget")
            flag(hi.sum(axis=1) < bud - TOL, ("budget", "asset bounds"),
                 "the upper bounds sum to less than the budget")
        if pb.groups is not None:
            assert pb.group_lower is not None and pb.group_upper is not None
            G = pb.groups
            gmin = np.einsum("bgn,bgn->bg", G, np.where(G > 0, lo[:, None, :], hi[:, None, :]))
            gmax = np.einsum("bgn,bgn->bg", G, np.where(G > 0, hi[:, None, :], lo[:, None, :]))
            for k, name in enumerate(pb.group_names):
                flag((gmin[:, k] > pb.group_upper[:, k] + TOL) | (gmax[:, k] < pb.group_lower[:, k] - TOL),
                     (f"group:{name}", "asset bounds"),
                     f"group {name!r} bounds cannot be met within the asset bounds")
            part = np.all(np.isin(G, (0.0, 1.0)), axis=(1, 2)) & np.all(G.sum(axis=1) == 1, axis=1)
            if pb.budget is not None:
                names = tuple(f"group:{n}" for n in pb.group_names) + ("budget",)
                flag(part & (pb.group_lower.sum(axis=1) > pb.budget + TOL), names,
                     "the group lower bounds sum to more than the budget")
                flag(part & (pb.group_upper.sum(axis=1) < pb.budget - TOL), names,
                     "the group upper bounds sum to less than the budget")
        dist0 = np.maximum(lo, 0.0) - np.minimum(hi, 0.0)
        if pb.leverage is not None:
            if pb.budget is not None:
                flag(pb.leverage < np.abs(pb.budget) - TOL, ("leverage", "budget"),
                     "leverage limit is below |budget|")
            flag(dist0.sum(axis=1) > pb.leverage + TOL, ("leverage", "asset bounds"),
                 "the asset bounds force more gross exposure than the leverage limit")
        if pb.turnover is not None:
            w0 = pb.current_weights
            assert w0 is not None
            if pb.budget is not None:
                flag(pb.turnover < np.abs(pb.budget - w0.sum(axis=1)) - TOL, ("turnover", "budget"),
                     "reaching the budget from the current weights needs more turnover than allowed")
            need = np.maximum(lo - w0, 0.0) + np.maximum(w0 - hi, 0.0)
            flag(need.sum(axis=1) > pb.turnover + TOL, ("turnover", "asset bounds"),
                 "reaching the asset bounds from the current weights needs more turnover than allowed")
        finite_box = np.all(np.isfinite(lo) & np.isfinite(hi), axis=1)
        if pb.target_return is not None and pb.mu is not None:
            best = _max_linear(pb.mu, np.where(np.isfinite(lo), lo, 0), np.where(np.isfinite(hi), hi, 0),
                               pb.budget)
            ok_test = finite_box if pb.budget is not None else np.ones(B, dtype=bool)
            flag(ok_test & (best < pb.target_return - TOL),
                 ("target_return", "budget", "asset bounds"),
                 "the target return is above the best return the budget and bounds allow")
        if pb.objective == "max_sharpe":
            assert pb.mu is not None and pb.risk_free is not None and pb.budget is not None
            ex = pb.mu - pb.risk_free[:, None]
            best = _max_linear(ex, np.where(np.isfinite(lo), lo, 0), np.where(np.isfinite(hi), hi, 0),
                               pb.budget)
            flag(finite_box & (best <= TOL), ("excess_return", "budget", "asset bounds"),
                 "no portfolio within the budget and bounds has a positive excess return")
    return bad, conflicts, msgs
