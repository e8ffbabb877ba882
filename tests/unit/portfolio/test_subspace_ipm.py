"""The subspace interior-point refinement (``subspace_ipm.py``): its restricted QP solve against
CVXPY + Clarabel (CPU twin and the GPU-structured program with xp = numpy), and its settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.portfolio import ProblemBatch, SolverConfig
from mystocks_gpu.gpu_ops.portfolio.exceptions import SolverConfigError
from mystocks_gpu.gpu_ops.portfolio.linalg_cpu import CpuOps
from mystocks_gpu.gpu_ops.portfolio.linalg_xp import XpOps
from mystocks_gpu.gpu_ops.portfolio.restricted_ipm import solve_restricted_qp
from mystocks_gpu.gpu_ops.portfolio.solve import solve_stacked

from .cvxpy_reference import CLARABEL_TIGHT, random_covariances, reference

cp = pytest.importorskip("cvxpy")

CFG = SolverConfig(backend="cpu")


def _restricted_qps(rng: np.random.Generator, B: int, k: int) -> dict[str, np.ndarray]:
    """Random restricted QPs of the kind the refinement builds: bounds (two coordinates without
    a lower bound, one off the ball), an L1 ball, one equality and one two-sided row."""
    F = rng.standard_normal((B, k, 3))
    H = F @ F.transpose(0, 2, 1) + 0.1 * np.eye(k)[None]
    lb = np.zeros((B, k))
    lb[:, :2] = -np.inf
    mb = np.ones((B, k), dtype=bool)
    mb[:, -1] = False
    A = np.stack([np.ones((B, k)), rng.uniform(-1, 1, (B, k))], axis=1)
    return {"H": H, "f": rng.normal(0, 1, (B, k)), "lb": lb, "ub": np.full((B, k), 0.4),
            "c": rng.dirichlet(np.ones(k), B), "mb": mb, "m5": np.ones(B, dtype=bool),
            "r5": np.full(B, 0.6), "A": A, "lr": np.stack([np.ones(B), np.full(B, -0.05)], 1),
            "ur": np.stack([np.ones(B), np.full(B, 0.05)], 1),
            "is_eq": np.array([[True, False]] * B)}


def _clarabel(p: dict[str, np.ndarray], b: int) -> tuple[float, np.ndarray]:
    k = p["f"].shape[1]
    x = cp.Variable(k)
    mb = p["mb"][b]
    cons = [x <= p["ub"][b], p["A"][b][0] @ x == p["lr"][b][0],
            p["A"][b][1] @ x >= p["lr"][b][1], p["A"][b][1] @ x <= p["ur"][b][1],
            cp.norm1(x[mb] - p["c"][b][mb]) <= p["r5"][b]]
    fin = np.isfinite(p["lb"][b])
    cons.append(x[fin] >= p["lb"][b][fin])
    obj = 0.5 * cp.quad_form(x, cp.psd_wrap(p["H"][b])) + p["f"][b] @ x
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    return float(prob.value), np.asarray(x.value)


@pytest.mark.parametrize("ops", [CpuOps(), XpOps(np)], ids=["cpu", "xp-numpy"])
def test_restricted_ipm_matches_clarabel(ops: object) -> None:
    rng = np.random.default_rng(12345)
    B, k = 4, 12
    p = _restricted_qps(rng, B, k)
    x0 = np.full((B, k), 1.0 / k)
    sol = solve_restricted_qp(p["H"], p["f"], p["lb"], p["ub"], p["c"], p["mb"], p["m5"], p["r5"], p["A"],
                              p["lr"], p["ur"], p["is_eq"], x0, 40, 1e-9, ops)
    assert sol["ok"].all()
    x = sol["x"]
    for b in range(B):
        ref_obj, ref_x = _clarabel(p, b)
        obj = 0.5 * x[b] @ p["H"][b] @ x[b] + p["f"][b] @ x[b]
        assert abs(obj - ref_obj) <= 1e-8 * max(1.0, abs(ref_obj)), b
        np.testing.assert_allclose(x[b], ref_x, atol=1e-6)
        # t is the L1 ball's split: |x - c| on the ball coordinates, within the radius
        dev = np.abs(x[b] - p["c"][b])[p["mb"][b]]
        assert dev.sum() <= p["r5"][b] + 1e-9


def _turnover_batch() -> ProblemBatch:
    rng = np.random.default_rng(2024)
    Bm, n = 8, 200
    return ProblemBatch("mean_variance", np.zeros((Bm, n)), np.full((Bm, n), 0.05),
                        cov=252.0 * random_covariances(rng, Bm, n, k=10),
                        mu=252.0 * rng.normal(5e-4, 5e-4, (Bm, n)),
                        risk_aversion=np.full(Bm, 5.0),
                        current_weights=rng.dirichlet(np.ones(n), Bm), budget=np.ones(Bm),
                        turnover=np.full(Bm, 0.5))


def test_ipm_settings_take_effect_and_keep_the_optimum() -> None:
    """Mean-variance with a turnover limit (200 assets, most at the ball's kinks): with the
    refinement polish succeeds within a few ADMM iterations; without it, or with a starved IPM
    (too few iterations, rounds or extra coordinates), ADMM needs many more. Every run reaches
    CVXPY + Clarabel's optimum."""
    pb = _turnover_batch()
    ref = np.array([reference(pb, b)[0] for b in range(pb.n_problems)])
    ref_w = np.stack([reference(pb, b)[1] for b in range(pb.n_problems)])
    configs: dict[str, dict[str, Any]] = {
        "default": {}, "off": {"ipm_refine": False}, "max_iter": {"ipm_max_iter": 3},
        "rounds": {"ipm_rounds": 1}, "extra": {"ipm_extra": 0}}
    runs = {name: solve_stacked(pb, dataclasses.replace(CFG, **kw)) for name, kw in configs.items()}
    for name, res in runs.items():
        assert (res.status == "optimal").all(), name
        np.testing.assert_allclose(res.objective, ref, rtol=1e-6, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(res.weights, ref_w, atol=1e-4, err_msg=name)
        assert np.max(res.violation) <= 1e-7, name
    fast = runs["default"].iterations.sum()
    assert np.max(runs["default"].iterations) <= 15
    for name in ("off", "max_iter", "rounds", "extra"):
        assert runs[name].iterations.sum() > fast, name


@pytest.mark.parametrize(("field", "value"), [("ipm_refine", 1), ("ipm_extra", -1),
                                              ("ipm_max_iter", 0), ("ipm_rounds", 0)])
def test_ipm_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(SolverConfigError, match=field):
        SolverConfig(**{field: value})  # type: ignore[arg-type]


def test_kink_next_to_a_bound_is_resolved() -> None:
    """Current weights of ~1e-8 put the turnover ball's kink next to the lower bound (closer
    than the IPM resolves). Half of those assets stay at the kink, half (a very low expected
    return) are sold to the bound: polish tries the kink, then the bound, and the problems end
    ``optimal`` within a few checks at CVXPY + Clarabel's optimum."""
    rng = np.random.default_rng(7)
    Bm, n = 6, 120
    w0 = rng.dirichlet(np.ones(n), Bm)
    w0[:, :12] = rng.uniform(1e-8, 5e-8, (Bm, 12))
    w0 /= w0.sum(axis=1, keepdims=True)
    mu = 252.0 * rng.normal(5e-4, 5e-4, (Bm, n))
    mu[:, :6] = -0.5
    pb = ProblemBatch("mean_variance", np.zeros((Bm, n)), np.full((Bm, n), 0.05),
                      cov=252.0 * random_covariances(rng, Bm, n, k=10),
                      mu=mu, risk_aversion=np.full(Bm, 5.0),
                      current_weights=w0, budget=np.ones(Bm), turnover=np.full(Bm, 0.5))
    res = solve_stacked(pb, CFG)
    assert (res.status == "optimal").all()
    assert np.max(res.iterations) <= 30
    for b in range(Bm):
        ref_obj, ref_w = reference(pb, b)
        assert abs(res.objective[b] - ref_obj) <= 1e-6 * abs(ref_obj)
        np.testing.assert_allclose(res.weights[b], ref_w, atol=1e-4)
