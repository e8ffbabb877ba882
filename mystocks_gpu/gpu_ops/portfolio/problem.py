"""Portfolio problems: one (:class:`PortfolioProblem`) and a stack of same-shaped ones
(:class:`ProblemBatch`), validated, with the objective conventions.

Objectives (``w`` = weights, ``Sigma`` = covariance per period, ``mu`` = expected returns per
period; the reported ``objective`` is the minimised value in these units):

- ``min_variance``: minimise ``w'Sigma w``.
- ``mean_variance``: with ``target_return`` None, minimise ``risk_aversion / 2 * w'Sigma w -
  mu'w`` (the quadratic utility of PyPortfolioOpt, negated); with a target, minimise ``w'Sigma w``
  subject to ``mu'w >= target_return``.
- ``max_sharpe``: maximise ``(mu - risk_free)'w / sqrt(w'Sigma w)``; objective = ``-Sharpe``.
  Solved as the homogenised QP ``min y'Sigma y`` s.t. ``(mu - rf)'y = 1``, ``sum y = budget *
  kappa``, bounds and group bounds multiplied by ``kappa >= 0``; ``w = y / kappa``. Leverage and
  turnover constraints are not homogeneous in this form and are rejected for it.
- ``risk_parity``: equal (or ``risk_budget``) risk contributions ``w_i (Sigma w)_i / w'Sigma w
  = b_i``, long-only, ``sum w = 1``; objective = ``w'Sigma w``. Other constraints are rejected.
- ``min_cvar``: minimise the CVaR at level ``cvar_beta`` of the loss ``-r_s'w`` over equally
  likely ``scenarios`` ``(S, n)`` (Rockafellar-Uryasev LP); an optional ``target_return`` adds
  ``mu'w >= target`` (``mu`` defaults to the scenario mean).

Constraints (all optional): ``budget`` (``sum w == budget``, default 1), per-asset ``lower`` /
``upper`` bounds (scalars or ``(n,)``; ``long_only`` (default True) sets ``lower = max(lower,
0)``), ``max_weight`` (``|w_i| <= max_weight``), ``leverage`` (``sum |w| <= L``), ``turnover``
(``sum |w - current_weights| <= T``), group bounds (``groups (g, n)`` coefficient matrix, e.g.
0/1 sector membership, with ``group_lower`` / ``group_upper`` ``(g,)``, named by ``group_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.portfolio.exceptions import PortfolioInputError

OBJECTIVES = ("min_variance", "mean_variance", "max_sharpe", "risk_parity", "min_cvar")


def _arr(v: Any, shape: tuple[int, ...], name: str, default: float) -> np.ndarray:
    if v is None:
        return np.full(shape, default, dtype=np.float64)
    a = np.asarray(v, dtype=np.float64)
    try:
        a = np.broadcast_to(a, shape).copy()
    except ValueError as exc:
        raise PortfolioInputError(f"{name} has shape {a.shape}, expected {shape} or a scalar") from exc
    if np.isnan(a).any():
        raise PortfolioInputError(f"{name} contains NaN")
    return a


@dataclass(frozen=True)
class PortfolioProblem:
    """One optimisation problem (see the module docstring for every field's meaning)."""

    objective: str
    cov: Any = None
    mu: Any = None
    scenarios: Any = None
    risk_aversion: float = 1.0
    target_return: float | None = None
    risk_free: float = 0.0
    cvar_beta: float = 0.95
    risk_budget: Any = None
    current_weights: Any = None
    budget: float | None = 1.0
    long_only: bool = True
    lower: Any = None
    upper: Any = None
    max_weight: float | None = None
    leverage: float | None = None
    turnover: float | None = None
    groups: Any = None
    group_lower: Any = None
    group_upper: Any = None
    group_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise PortfolioInputError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.turnover is not None and self.current_weights is None:
            raise PortfolioInputError("turnover needs current_weights")

    @property
    def n_assets(self) -> int:
        for v in (self.cov, self.mu, self.scenarios):
            if v is not None:
                return int(np.shape(v)[-1])
        raise PortfolioInputError("a problem needs cov, mu or scenarios to know its assets")


@dataclass(frozen=True)
class ProblemBatch:
    """``B`` problems with one objective and one constraint structure, as stacked arrays (leading
    axis ``B``). ``lower``/``upper`` are final per-asset bounds (``long_only``/``max_weight``
    already applied); absent constraints are None. Build with :func:`stack_problems` or directly
    (the bench and the rebalancing backtest do)."""

    objective: str
    lower: np.ndarray  # (B, n)
    upper: np.ndarray  # (B, n)
    cov: np.ndarray | None = None  # (B, n, n)
    mu: np.ndarray | None = None  # (B, n)
    scenarios: np.ndarray | None = None  # (B, S, n)
    risk_aversion: np.ndarray | None = None  # (B,)
    target_return: np.ndarray | None = None  # (B,)
    risk_free: np.ndarray | None = None  # (B,)
    cvar_beta: np.ndarray | None = None  # (B,)
    risk_budget: np.ndarray | None = None  # (B, n)
    current_weights: np.ndarray | None = None  # (B, n)
    budget: np.ndarray | None = None  # (B,)
    leverage: np.ndarray | None = None  # (B,)
    turnover: np.ndarray | None = None  # (B,)
    groups: np.ndarray | None = None  # (B, g, n)
    group_lower: np.ndarray | None = None  # (B, g)
    group_upper: np.ndarray | None = None  # (B, g)
    group_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        o = self.objective
        if o not in OBJECTIVES:
            raise PortfolioInputError(f"objective must be one of {OBJECTIVES}, got {o!r}")
        if self.lower.ndim != 2 or self.upper.shape != self.lower.shape:
            raise PortfolioInputError("lower/upper must both have shape (B, n)")
        B, n = self.lower.shape
        need = {"min_variance": ("cov",), "mean_variance": ("cov", "mu"),
                "max_sharpe": ("cov", "mu"), "risk_parity": ("cov",), "min_cvar": ("scenarios",)}
        for name in need[o]:
            if getattr(self, name) is None:
                raise PortfolioInputError(f"objective {o!r} needs {name}")
        shapes = {"cov": (B, n, n), "mu": (B, n), "risk_aversion": (B,), "target_return": (B,),
                  "risk_free": (B,), "cvar_beta": (B,), "risk_budget": (B, n),
                  "current_weights": (B, n), "budget": (B,), "leverage": (B,), "turnover": (B,)}
        for name, shp in shapes.items():
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != shp:
                raise PortfolioInputError(f"{name} has shape {tuple(v.shape)}, expected {shp}")
            if v is not None and name != "cov" and not np.all(np.isfinite(v)):
                bad = np.argwhere(~np.isfinite(v))[0].tolist()
                raise PortfolioInputError(f"{name} is not finite at index {bad}")
        defaults = {"risk_aversion": 1.0, "risk_free": 0.0, "cvar_beta": 0.95}
        for name, val in defaults.items():  # scalar parameters the objectives read
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(B, val))
        if self.scenarios is not None and (self.scenarios.ndim != 3 or self.scenarios.shape[0] != B
                                           or self.scenarios.shape[2] != n):
            raise PortfolioInputError(f"scenarios must have shape (B, S, n) = ({B}, S, {n})")
        if self.turnover is not None and self.current_weights is None:
            raise PortfolioInputError("turnover needs current_weights")
        if self.groups is not None:
            g = self.groups.shape[1]
            if self.groups.shape != (B, g, n):
                raise PortfolioInputError(f"groups must have shape (B, g, n), got {self.groups.shape}")
            for name in ("group_lower", "group_upper"):
                v = getattr(self, name)
                if v is None or v.shape != (B, g):
                    raise PortfolioInputError(f"{name} must have shape ({B}, {g}) with groups")
            if len(self.group_names) not in (0, g):
                raise PortfolioInputError(f"group_names must have {g} names")
            if not self.group_names:
                object.__setattr__(self, "group_names", tuple(f"group{k}" for k in range(g)))
        if o == "max_sharpe" and (self.leverage is not None or self.turnover is not None):
            raise PortfolioInputError("max_sharpe supports budget, bounds and group bounds only "
                                      "(leverage/turnover are not homogeneous); use mean_variance")
        if o == "max_sharpe" and self.budget is None:
            raise PortfolioInputError("max_sharpe needs a budget (the weights' scale)")
        if o == "risk_parity":
            extra = [k for k in ("leverage", "turnover", "groups", "target_return")
                     if getattr(self, k) is not None]
            if extra or self.budget is None or not np.allclose(self.budget, 1.0):
                raise PortfolioInputError(f"risk_parity is long-only with sum(w) = 1; remove {extra}")
        if o == "min_cvar" and self.cvar_beta is not None and not np.all(
                (self.cvar_beta > 0) & (self.cvar_beta < 1)):
            raise PortfolioInputError("cvar_beta must be in (0, 1)")

    @property
    def n_problems(self) -> int:
        return int(self.lower.shape[0])

    @property
    def n_assets(self) -> int:
        return int(self.lower.shape[1])

    def take(self, idx: np.ndarray) -> ProblemBatch:
        kw: dict[str, Any] = {}
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            kw[f] = v[idx] if isinstance(v, np.ndarray) else v
        return ProblemBatch(**kw)

    def signature(self) -> tuple[Any, ...]:
        return _signature_of(self)


def _signature_of(p: Any) -> tuple[Any, ...]:
    g = None if p.groups is None else np.shape(p.groups)[-2]
    s = None if p.scenarios is None else np.shape(p.scenarios)[-2]
    return (p.objective, p.n_assets, p.budget is None, p.target_return is None, p.leverage is None,
            p.turnover is None, g, s, p.risk_budget is None, p.mu is None,
            p.current_weights is None)


def _bounds(p: PortfolioProblem, n: int) -> tuple[np.ndarray, np.ndarray]:
    lo = _arr(p.lower, (n,), "lower", 0.0 if p.long_only else -np.inf)
    hi = _arr(p.upper, (n,), "upper", np.inf)
    if p.long_only:
        lo = np.maximum(lo, 0.0)
    if p.max_weight is not None:
        if not p.max_weight > 0:
            raise PortfolioInputError(f"max_weight must be > 0, got {p.max_weight}")
        lo, hi = np.maximum(lo, -p.max_weight), np.minimum(hi, p.max_weight)
    return lo, hi


def stack_problems(problems: Sequence[PortfolioProblem]) -> list[tuple[np.ndarray, ProblemBatch]]:
    """Group ``problems`` by objective and constraint structure; returns ``(indices, batch)``
    pairs covering every problem once. Errors name the offending problem's index."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, p in enumerate(problems):
        try:
            groups.setdefault(_signature_of(p), []).append(i)
        except PortfolioInputError as exc:
            raise PortfolioInputError(f"problem {i}: {exc}") from exc
    out = []
    for idx in groups.values():
        try:
            out.append((np.asarray(idx), _stack([problems[i] for i in idx])))
        except PortfolioInputError as exc:
            raise PortfolioInputError(f"problems {idx[:5]}...: {exc}") from exc
    return out


def _stack(ps: list[PortfolioProblem]) -> ProblemBatch:
    p0 = ps[0]
    n = p0.n_assets

    def col(name: str, shape: tuple[int, ...], default: float | None = None) -> np.ndarray | None:
        vals = [getattr(p, name) for p in ps]
        if all(v is None for v in vals) and default is None:
            return None
        return np.stack([_arr(v, shape, name, np.nan if default is None else default) for v in vals])

    bounds = [_bounds(p, n) for p in ps]
    cov = None if p0.cov is None else np.stack([np.asarray(p.cov, dtype=np.float64) for p in ps])
    if cov is not None and cov.shape[1:] != (n, n):
        raise PortfolioInputError(f"cov has shape {cov.shape[1:]}, expected ({n}, {n})")
    scen = None if p0.scenarios is None else np.stack(
        [np.asarray(p.scenarios, dtype=np.float64) for p in ps])
    mu = col("mu", (n,))
    if p0.objective == "min_cvar" and scen is not None and mu is None and p0.target_return is not None:
        mu = scen.mean(axis=1)
    g = None if p0.groups is None else np.shape(p0.groups)[0]
    return ProblemBatch(
        objective=p0.objective,
        lower=np.stack([b[0] for b in bounds]),
        upper=np.stack([b[1] for b in bounds]),
        cov=cov,
        mu=mu,
        scenarios=scen,
        risk_aversion=col("risk_aversion", (), 1.0),
        target_return=col("target_return", ()),
        risk_free=col("risk_free", (), 0.0),
        cvar_beta=col("cvar_beta", (), 0.95),
        risk_budget=col("risk_budget", (n,)),
        current_weights=col("current_weights", (n,)),
        budget=col("budget", ()),
        leverage=col("leverage", ()),
        turnover=col("turnover", ()),
        groups=None if g is None else np.stack([_arr(p.groups, (g, n), "groups", 0.0) for p in ps]),
        group_lower=None if g is None else col("group_lower", (g,), -np.inf),
        group_upper=None if g is None else col("group_upper", (g,), np.inf),
        group_names=tuple(p0.group_names or (f"group{k}" for k in range(g or 0))),
    )
