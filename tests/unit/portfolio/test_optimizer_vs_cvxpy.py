"""Each objective / constraint set == CVXPY + Clarabel on random problems: objective within 1e-6
relative, weights within 1e-4, constraint violation <= 1e-7 (min-CVaR: see its test)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.portfolio import PortfolioProblem, ProblemBatch, SolverConfig, solve_batch
from mystocks_gpu.gpu_ops.portfolio.solve import solve_stacked

from .cvxpy_reference import random_covariances, reference

pytest.importorskip("cvxpy")

CFG = SolverConfig(backend="cpu")
B, N = 4, 12


def _base(rng: np.random.Generator, objective: str, **kw: object) -> ProblemBatch:
    cov = random_covariances(rng, B, N)
    fields: dict[str, object] = {
        "objective": objective,
        "lower": np.zeros((B, N)),
        "upper": np.full((B, N), 0.3),
        "cov": cov,
        "budget": np.ones(B),
    }
    fields.update(kw)
    return ProblemBatch(**fields)  # type: ignore[arg-type]


def _mu(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(5e-4, 6e-4, (B, N))


def _groups(rng: np.random.Generator, g: int = 3) -> np.ndarray:
    lab = rng.integers(0, g, N)
    lab[:g] = np.arange(g)
    G = (lab[None, :] == np.arange(g)[:, None]).astype(float)
    return np.broadcast_to(G, (B, g, N)).copy()


CASES: dict[str, Callable[[np.random.Generator], ProblemBatch]] = {
    "min_variance": lambda r: _base(r, "min_variance"),
    "min_variance+turnover": lambda r: _base(
        r, "min_variance", current_weights=r.dirichlet(np.ones(N), B), turnover=np.full(B, 0.4)),
    "mean_variance+turnover": lambda r: _base(
        r, "mean_variance", mu=_mu(r), risk_aversion=np.full(B, 4.0),
        current_weights=r.dirichlet(np.ones(N), B), turnover=np.full(B, 0.5)),
    "mean_variance_target+groups": lambda r: _base(
        r, "mean_variance", mu=np.abs(_mu(r)), target_return=np.full(B, 6e-4),
        groups=_groups(r), group_lower=np.full((B, 3), 0.1), group_upper=np.full((B, 3), 0.5)),
    "long_short+leverage": lambda r: _base(
        r, "mean_variance", mu=_mu(r), risk_aversion=np.full(B, 2.0), lower=np.full((B, N), -0.3),
        upper=np.full((B, N), 0.4), leverage=np.full(B, 1.6)),
    "all_constraints": lambda r: _base(
        r, "min_variance", lower=np.full((B, N), -0.1), upper=np.full((B, N), 0.25),
        groups=_groups(r), group_lower=np.full((B, 3), 0.15), group_upper=np.full((B, 3), 0.6),
        leverage=np.full(B, 1.3), current_weights=np.full((B, N), 1.0 / N), turnover=np.full(B, 0.6)),
    "max_sharpe": lambda r: _base(r, "max_sharpe", mu=np.abs(_mu(r)), risk_free=np.full(B, 1e-4)),
    "max_sharpe+groups": lambda r: _base(
        r, "max_sharpe", mu=np.abs(_mu(r)), risk_free=np.zeros(B), groups=_groups(r),
        group_lower=np.full((B, 3), 0.2), group_upper=np.full((B, 3), 0.5)),
    "risk_parity": lambda r: _base(r, "risk_parity", upper=np.full((B, N), np.inf)),
    "risk_budget": lambda r: _base(r, "risk_parity", upper=np.full((B, N), np.inf),
                                   risk_budget=r.uniform(0.5, 2.0, (B, N))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_cvxpy_clarabel(case: str) -> None:
    rng = np.random.default_rng(12345)
    pb = CASES[case](rng)
    res = solve_stacked(pb, CFG)
    for b in range(B):
        ref_obj, ref_w = reference(pb, b)
        assert res.status[b] == "optimal", (b, res.status[b], res.messages[b])
        assert abs(res.objective[b] - ref_obj) <= 1e-6 * abs(ref_obj), (b, res.objective[b], ref_obj)
        assert np.max(np.abs(res.weights[b] - ref_w)) <= 1e-4
        assert res.violation[b] <= 1e-7


def test_min_cvar_matches_clarabel() -> None:
    """Scenario LP: objective within 1e-6 relative and feasibility <= 1e-7. Weights of an LP need
    not be unique, so they are compared only through the objective."""
    rng = np.random.default_rng(12345)
    S = 120
    scen = rng.multivariate_normal(np.full(N, 4e-4), random_covariances(rng, 1, N)[0], (B, S))
    pb = ProblemBatch("min_cvar", np.zeros((B, N)), np.full((B, N), 0.25), scenarios=scen,
                      cvar_beta=np.full(B, 0.9), budget=np.ones(B))
    res = solve_stacked(pb, CFG)
    for b in range(B):
        ref_obj, _ = reference(pb, b)
        assert res.status[b] == "optimal", res.messages[b]
        assert abs(res.objective[b] - ref_obj) <= 1e-6 * abs(ref_obj)
        assert res.violation[b] <= 1e-7


def test_solve_batch_mixed_problems_in_input_order() -> None:
    """solve_batch groups problems by structure and returns them in input order."""
    rng = np.random.default_rng(12345)
    cov = random_covariances(rng, 3, N)
    mu = np.abs(_mu(rng))
    probs = [
        PortfolioProblem("min_variance", cov=cov[0], upper=0.3),
        PortfolioProblem("max_sharpe", cov=cov[1], mu=mu[1], upper=0.3),
        PortfolioProblem("min_variance", cov=cov[2], upper=0.3, max_weight=0.2),
    ]
    seen: list[tuple[int, int]] = []
    out = solve_batch(probs, CFG, progress=lambda d, t: seen.append((d, t)))
    assert [r.status for r in out] == ["optimal"] * 3
    assert seen[-1] == (3, 3)
    for i, p in enumerate(probs):
        from mystocks_gpu.gpu_ops.portfolio.problem import stack_problems

        [(_, pb)] = stack_problems([p])
        ref_obj, ref_w = reference(pb, 0)
        assert abs(out[i].objective - ref_obj) <= 1e-6 * abs(ref_obj)
        assert np.max(np.abs(out[i].weights - ref_w)) <= 1e-4  # type: ignore[operator]
    assert np.max(out[2].weights) <= 0.2 + 1e-9  # type: ignore[arg-type]


def test_skfolio_sp500_dataset_min_variance_and_mean_variance() -> None:
    """The S&P 500 dataset bundled in the skfolio wheel (20 stocks, daily prices; read offline
    from the installed package; skfolio is a dev dependency, so this never skips): Ledoit-Wolf
    covariance and mean of 500-day windows at 4 dates, min-variance and mean-variance with bounds
    and a turnover limit, == CVXPY + Clarabel."""
    from skfolio import datasets
    prices = datasets.load_sp500_dataset().to_numpy()
    rets = prices[1:] / prices[:-1] - 1.0
    ends = np.array([2000, 4000, 6000, 8000])
    win = np.stack([rets[e - 500:e] for e in ends])
    from mystocks_gpu.gpu_ops.portfolio.estimators import ledoit_wolf, mean_returns

    cov, _ = ledoit_wolf(win)
    mu = mean_returns(win)
    n = cov.shape[1]
    w0 = np.full((4, n), 1.0 / n)
    common = {"lower": np.zeros((4, n)), "upper": np.full((4, n), 0.15), "cov": cov,
              "budget": np.ones(4), "current_weights": w0, "turnover": np.full(4, 0.6)}
    for pb in (ProblemBatch("min_variance", **common),  # type: ignore[arg-type]
               ProblemBatch("mean_variance", mu=mu, risk_aversion=np.full(4, 3.0), **common)):  # type: ignore[arg-type]
        res = solve_stacked(pb, CFG)
        for b in range(4):
            ref_obj, ref_w = reference(pb, b)
            assert res.status[b] == "optimal"
            assert abs(res.objective[b] - ref_obj) <= 1e-6 * abs(ref_obj)
            assert np.max(np.abs(res.weights[b] - ref_w)) <= 1e-4
            assert res.violation[b] <= 1e-7
