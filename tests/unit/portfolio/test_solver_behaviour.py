"""Infeasibility, covariance repair/rejection, every SolverConfig setting, cancellation, and the
GPU-structured program (run with xp = numpy) against the CPU twin."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.portfolio import ProblemBatch, SolverConfig
from mystocks_gpu.gpu_ops.portfolio.exceptions import PortfolioInputError, SolverConfigError
from mystocks_gpu.gpu_ops.portfolio.linalg_cpu import CpuOps
from mystocks_gpu.gpu_ops.portfolio.linalg_xp import XpOps
from mystocks_gpu.gpu_ops.portfolio.solve import solve_stacked

from .cvxpy_reference import random_covariances

CFG = SolverConfig(backend="cpu")
B, N = 4, 10


def _pb(objective: str = "min_variance", **kw: object) -> ProblemBatch:
    rng = np.random.default_rng(12345)
    f: dict[str, object] = {"objective": objective, "lower": np.zeros((B, N)),
                            "upper": np.full((B, N), 0.4), "cov": random_covariances(rng, B, N),
                            "budget": np.ones(B)}
    f.update(kw)
    return ProblemBatch(**f)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "names"), [
    ({"upper": np.full((B, N), 0.05)}, ("budget", "asset bounds")),
    ({"lower": np.full((B, N), 0.2)}, ("budget", "asset bounds")),
    ({"current_weights": np.full((B, N), 0.0), "turnover": np.full(B, 0.5)}, ("turnover", "budget")),
    ({"current_weights": np.full((B, N), 0.1), "turnover": np.full(B, 0.1),
      "upper": np.full((B, N), 0.4), "lower": np.r_[np.full(2, 0.2), np.zeros(N - 2)][None].repeat(B, 0)},
     ("turnover", "asset bounds")),
    ({"groups": np.ones((B, 1, N)), "group_lower": np.full((B, 1), 1.2), "group_upper": np.full((B, 1), 2.0)},
     ("group:group0", "budget")),
    ({"leverage": np.full(B, 0.8)}, ("leverage", "budget")),
])
def test_decidable_infeasibility_names_the_conflict(kw: dict[str, object], names: tuple[str, ...]) -> None:
    res = solve_stacked(_pb(**kw), CFG)
    assert list(res.status) == ["infeasible"] * B
    assert all(c == names for c in res.conflicts)
    assert np.isnan(res.weights).all()  # never weights for an infeasible problem


def _overlapping_groups() -> ProblemBatch:
    G = np.zeros((B, 2, N))
    G[:, 0, :6] = 1.0
    G[:, 1, 4:] = 1.0
    upper = np.full((B, N), 0.4)
    upper[:, 4:6] = 0.0  # the overlap cannot hold weight
    return _pb(groups=G, group_lower=np.full((B, 2), 0.7), group_upper=np.full((B, 2), 1.0),
               upper=upper)


def test_infeasibility_certificate_from_admm() -> None:
    """Two groups that overlap, each needing >= 0.7 of a budget of 1 while the shared assets are
    capped: only the ADMM certificate can tell. It names the rows involved."""
    res = solve_stacked(_overlapping_groups(), CFG)
    assert list(res.status) == ["infeasible"] * B
    for c in res.conflicts:
        assert "group:group0" in c and "group:group1" in c
    assert np.isnan(res.weights).all()


def test_target_return_above_the_reachable_is_infeasible() -> None:
    mu = np.tile(np.linspace(0.0, 1e-3, N), (B, 1))
    res = solve_stacked(_pb("mean_variance", mu=mu, target_return=np.full(B, 2e-3)), CFG)
    assert list(res.status) == ["infeasible"] * B
    assert res.conflicts[0][0] == "target_return"


def test_non_psd_covariance_is_clipped_or_rejected() -> None:
    pb = _pb()
    cov = pb.cov.copy()  # type: ignore[union-attr]
    lam, V = np.linalg.eigh(cov[0])
    lam[0] = -1e-4  # clearly indefinite
    cov[0] = (V * lam) @ V.T
    cov[0] = 0.5 * (cov[0] + cov[0].T)
    bad = dataclasses.replace(pb, cov=cov)
    res = solve_stacked(bad, CFG)
    assert res.covariance_repaired.tolist() == [True, False, False, False]
    assert res.status[0] == "optimal"
    # the repair = eigenvalues clipped to the floor: the reported variance uses that matrix
    floor = CFG.eig_floor * np.mean(np.diag(cov[0]))
    fixed = (V * np.maximum(lam, floor)) @ V.T
    w = res.weights[0]
    assert res.variance[0] == pytest.approx(w @ fixed @ w, rel=1e-9)
    rej = solve_stacked(bad, dataclasses.replace(CFG, psd_repair="reject"))
    assert rej.status[0] == "rejected" and "smallest eigenvalue" in rej.messages[0]
    assert list(rej.status[1:]) == ["optimal"] * 3


def test_singular_covariance_is_repaired_so_weights_are_unique() -> None:
    pb = _pb()
    cov = pb.cov.copy()  # type: ignore[union-attr]
    cov[1][:, 0] = cov[1][:, 1]
    cov[1][0, :] = cov[1][1, :]  # assets 0 and 1 identical: singular
    res = solve_stacked(dataclasses.replace(pb, cov=cov), CFG)
    assert res.covariance_repaired[1] and res.status[1] == "optimal"


def test_bad_covariances_are_rejected_with_the_reason() -> None:
    pb = _pb()
    cov = pb.cov.copy()  # type: ignore[union-attr]
    cov[0, 0, 1] += 1e-3  # asymmetric
    cov[1, 2, 2] = np.nan
    res = solve_stacked(dataclasses.replace(pb, cov=cov), CFG)
    assert res.status[0] == "rejected" and "not symmetric" in res.messages[0]
    assert res.status[1] == "rejected" and "non-finite" in res.messages[1]


def test_bad_inputs_raise_with_the_field_name() -> None:
    with pytest.raises(PortfolioInputError, match="turnover needs current_weights"):
        _pb(turnover=np.ones(B))
    with pytest.raises(PortfolioInputError, match="mu"):
        _pb("mean_variance")
    with pytest.raises(PortfolioInputError, match="max_sharpe supports"):
        _pb("max_sharpe", mu=np.ones((B, N)), leverage=np.ones(B))
    with pytest.raises(SolverConfigError, match="alpha"):
        SolverConfig(alpha=2.5)
    with pytest.raises(SolverConfigError, match="psd_repair"):
        SolverConfig(psd_repair="fix")


def _run(cfg: SolverConfig, pb: ProblemBatch | None = None) -> object:
    return solve_stacked(pb or _pb(current_weights=np.full((B, N), 0.1),
                                   turnover=np.full(B, 0.5)), cfg)


def test_every_solver_setting_takes_effect() -> None:
    base = _run(CFG)
    assert list(base.status) == ["optimal"] * B  # type: ignore[attr-defined]
    its = base.iterations  # type: ignore[attr-defined]
    # stopping / iteration settings
    assert (_run(dataclasses.replace(CFG, max_iter=1, polish=False)).status == "max_iter").all()  # type: ignore[attr-defined]
    nopol = _run(dataclasses.replace(CFG, polish=False))
    assert (nopol.status == "converged").all()  # type: ignore[attr-defined]
    loose = _run(dataclasses.replace(CFG, polish=False, eps_abs=1e-3, eps_rel=1e-3))
    assert (loose.iterations < nopol.iterations).all()  # type: ignore[attr-defined]
    assert np.max(loose.violation) > np.max(base.violation)  # type: ignore[attr-defined]
    changed = {
        "rho": 10.0, "sigma": 1e-2, "alpha": 1.0, "check_every": 1,
        "adaptive_rho_tolerance": 1.01, "ball_rho_factor": 1.0, "rho_quadratic": 10.0,
    }
    for name, value in changed.items():
        # adaptive rho acts from the first adaptation on: compare from a small initial rho, which
        # this small problem does not outrun; these min-variance problems (q = 0) start from
        # rho_quadratic unless it is None
        # (checked every 5 iterations: adaptation happens at a check, before this problem ends)
        rho0 = {"rho": 0.1, "check_every": 5} if name == "adaptive_rho_tolerance" \
            else {"rho_quadratic": None} if name == "rho" else {}
        ref = _run(dataclasses.replace(CFG, polish=False, **rho0)) if rho0 else nopol
        out = _run(dataclasses.replace(CFG, polish=False, **{name: value}, **rho0))
        assert not np.array_equal(out.iterations, ref.iterations) or not np.allclose(  # type: ignore[attr-defined]
            out.weights, ref.weights, rtol=0, atol=1e-12), name  # type: ignore[attr-defined]
    assert not np.array_equal(_run(dataclasses.replace(CFG, polish_from=1e-12)).iterations, its)  # type: ignore[attr-defined]
    # from a small initial rho, so that this problem is still running at the first adaptation
    eager = dataclasses.replace(CFG, polish=False, rho=0.1, adaptive_rho_tolerance=1.01,
                                check_every=5)
    a = _run(dataclasses.replace(eager, adaptive_rho_interval=5))
    b = _run(eager)
    assert not np.allclose(a.weights, b.weights, rtol=0, atol=1e-12)  # type: ignore[attr-defined]
    off = _run(dataclasses.replace(eager, adaptive_rho=False))
    assert not np.allclose(off.weights, b.weights, rtol=0, atol=1e-12)  # type: ignore[attr-defined]
    # polish internals: no correction rounds / no refinement / huge regularisation / strict tol
    assert (_run(dataclasses.replace(CFG, polish_delta=1.0, polish_refine_iter=0, max_iter=200)).status != "optimal").any()  # type: ignore[attr-defined]
    refined = _run(dataclasses.replace(CFG, polish_delta=1e-4, polish_refine_iter=3))
    assert (refined.status == "optimal").all()  # type: ignore[attr-defined]
    assert (_run(dataclasses.replace(CFG, polish_tol=1e-30, max_iter=200)).status != "optimal").all()  # type: ignore[attr-defined]
    f32 = _run(dataclasses.replace(CFG, factor_dtype="float32", polish=False))
    assert not np.array_equal(f32.weights, nopol.weights)  # type: ignore[attr-defined]
    # infeasibility threshold: with a huge threshold a plainly feasible run is unaffected,
    # with a tiny one the certificate test is never passed -> the infeasible case runs to max_iter
    assert (_run(dataclasses.replace(CFG, eps_prim_inf=1e-30, max_iter=300),
                 _overlapping_groups()).status == "max_iter").all()  # type: ignore[attr-defined]


def test_psd_floor_and_batch_size_and_backend_settings() -> None:
    pb = _pb()
    hi = solve_stacked(pb, dataclasses.replace(CFG, eig_floor=0.5))
    assert hi.covariance_repaired.all()  # a floor above the smallest eigenvalues repairs all
    small = solve_stacked(pb, dataclasses.replace(CFG, batch_size=1))
    base = solve_stacked(pb, CFG)
    np.testing.assert_allclose(small.weights, base.weights, atol=1e-9)
    calls: list[tuple[int, int]] = []
    solve_stacked(pb, dataclasses.replace(CFG, batch_size=3), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, B), (B, B)]
    if not gpu_available()[0]:
        from mystocks_gpu.gpu_ops.exceptions import BackendUnavailable

        with pytest.raises(BackendUnavailable):
            solve_stacked(pb, dataclasses.replace(CFG, backend="gpu"))
    rp = _pb("risk_parity", upper=np.full((B, N), np.inf))
    loose = solve_stacked(rp, dataclasses.replace(CFG, rp_tol=1e-2))
    tight = solve_stacked(rp, CFG)
    assert (loose.iterations < tight.iterations).all()
    assert (solve_stacked(rp, dataclasses.replace(CFG, rp_max_iter=1)).status == "max_iter").all()


def test_should_stop_cancels_without_weights() -> None:
    res = solve_stacked(_pb(), CFG, should_stop=lambda: True)
    assert list(res.status) == ["cancelled"] * B
    assert np.isnan(res.weights).all()


@pytest.mark.parametrize("objective", ["min_variance", "mean_variance", "max_sharpe", "min_cvar"])
def test_gpu_structured_program_equals_cpu_twin(objective: str) -> None:
    """The GPU path's array program (explicit inverse, padded KKT) run with xp = numpy gives the
    CPU twin's (numba Cholesky, per-problem KKT) solution."""
    rng = np.random.default_rng(12345)
    kw: dict[str, object] = {"current_weights": np.full((B, N), 0.1), "turnover": np.full(B, 0.6)}
    if objective in ("mean_variance", "max_sharpe"):
        kw["mu"] = np.abs(rng.normal(5e-4, 5e-4, (B, N)))
    if objective == "max_sharpe":
        kw = {"mu": kw["mu"]}
    if objective == "min_cvar":
        kw = {"scenarios": rng.normal(3e-4, 0.01, (B, 60, N)), "cov": None}
    pb = _pb(objective, **kw)
    cfg = dataclasses.replace(CFG, rho=1.0) if objective == "min_cvar" else CFG  # LP: larger rho
    cpu = solve_stacked(pb, cfg, ops=CpuOps())
    xpn = solve_stacked(pb, cfg, ops=XpOps(np))
    assert list(cpu.status) == list(xpn.status) == ["optimal"] * B
    np.testing.assert_allclose(xpn.weights, cpu.weights, atol=1e-7)
    np.testing.assert_allclose(xpn.objective, cpu.objective, rtol=1e-7)


_GPU, _WHY = gpu_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _GPU, reason=f"no GPU: {_WHY}")
@pytest.mark.parametrize("objective", ["min_variance", "mean_variance", "risk_parity"])
def test_gpu_equals_cpu(objective: str) -> None:
    rng = np.random.default_rng(12345)
    kw: dict[str, object] = {}
    if objective == "mean_variance":
        kw = {"mu": rng.normal(5e-4, 5e-4, (B, N)), "current_weights": np.full((B, N), 0.1),
              "turnover": np.full(B, 0.6)}
    if objective == "risk_parity":
        kw = {"upper": np.full((B, N), np.inf)}
    pb = _pb(objective, **kw)
    cpu = solve_stacked(pb, CFG)
    gpu = solve_stacked(pb, dataclasses.replace(CFG, backend="gpu"))
    assert list(gpu.status) == list(cpu.status)
    np.testing.assert_allclose(gpu.weights, cpu.weights, atol=1e-7)


def test_ball_rho_factor_same_optimum_fewer_iterations() -> None:
    """``ball_rho_factor``: turnover-bound mean-variance problems (most assets end at the ball's
    kinks, ``w_i = w0_i``) reach CVXPY + Clarabel's objective with the larger ball step and with
    a neutral one (1.0), and the larger step needs fewer ADMM iterations in total."""
    from .cvxpy_reference import reference

    rng = np.random.default_rng(2024)
    Bm, n = 8, 200
    pb = ProblemBatch("mean_variance", np.zeros((Bm, n)), np.full((Bm, n), 0.05),
                      cov=252.0 * random_covariances(rng, Bm, n, k=10),
                      mu=252.0 * rng.normal(5e-4, 5e-4, (Bm, n)), risk_aversion=np.full(Bm, 5.0),
                      current_weights=rng.dirichlet(np.ones(n), Bm), budget=np.ones(Bm),
                      turnover=np.full(Bm, 0.5))
    ref = np.array([reference(pb, b)[0] for b in range(Bm)])
    # ADMM alone decides the iteration count (the subspace IPM finishes both within ~10)
    base = dataclasses.replace(CFG, ipm_refine=False, polish_from=1e-3)
    runs = {f: solve_stacked(pb, dataclasses.replace(base, ball_rho_factor=f)) for f in (1.0, 10.0)}
    for f, res in runs.items():
        assert (res.status == "optimal").all(), f
        np.testing.assert_allclose(res.objective, ref, rtol=1e-6, atol=1e-9, err_msg=str(f))
    assert runs[10.0].iterations.sum() < runs[1.0].iterations.sum()
    with pytest.raises(SolverConfigError):
        SolverConfig(ball_rho_factor=0.0)


def test_rho_quadratic_same_optimum_fewer_iterations_only_where_q_is_zero() -> None:
    """``rho_quadratic``: turnover-bound min-variance problems (``q = 0``) reach CVXPY + Clarabel's
    objective from 0.1 and from ``rho`` (2.0), with fewer ADMM iterations from 0.1; a mean-variance
    batch (``q = -mu``) is untouched by the setting (same iterations and weights)."""
    from .cvxpy_reference import reference

    rng = np.random.default_rng(77)
    Bm, n = 8, 200
    common = {"lower": np.zeros((Bm, n)), "upper": np.full((Bm, n), 0.05),
              "cov": 252.0 * random_covariances(rng, Bm, n, k=10), "budget": np.ones(Bm),
              "current_weights": rng.dirichlet(np.ones(n), Bm), "turnover": np.full(Bm, 0.5)}
    pb = ProblemBatch("min_variance", **common)  # type: ignore[arg-type]
    ref = np.array([reference(pb, b)[0] for b in range(Bm)])
    # ADMM alone decides the iteration count (the subspace IPM would finish both at the first check)
    base = dataclasses.replace(CFG, ipm_refine=False, polish_from=1e-3)
    runs = {rq: solve_stacked(pb, dataclasses.replace(base, rho_quadratic=rq)) for rq in (0.1, None)}
    for rq, res in runs.items():
        assert (res.status == "optimal").all(), rq
        np.testing.assert_allclose(res.objective, ref, rtol=1e-6, atol=1e-12, err_msg=str(rq))
    assert runs[0.1].iterations.sum() < runs[None].iterations.sum()
    mv = ProblemBatch("mean_variance", mu=252.0 * rng.normal(5e-4, 5e-4, (Bm, n)),
                      risk_aversion=np.full(Bm, 5.0), **common)  # type: ignore[arg-type]
    a, b = (solve_stacked(mv, dataclasses.replace(base, rho_quadratic=rq)) for rq in (0.1, None))
    np.testing.assert_array_equal(a.iterations, b.iterations)
    np.testing.assert_array_equal(a.weights, b.weights)
    for bad in (0.0, float("nan"), float("inf"), -1.0):
        with pytest.raises(SolverConfigError, match="rho_quadratic"):
            SolverConfig(rho_quadratic=bad)
