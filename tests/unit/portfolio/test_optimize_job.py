"""The ``optimize`` job's computation (no broker): closes -> estimates -> batch -> solve, against
independent references (numpy covariance, scikit-learn Ledoit-Wolf, each problem written in CVXPY
and solved by Clarabel); spec validation; the stale price policy; infeasible jobs; the summary
and report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.jobs.kinds import get_kind
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.processors.portfolio.optimize_job import (
    PortfolioInfeasible,
    closes_matrix,
    optimize_closes,
)
from mystocks_gpu.processors.portfolio.optimize_report import format_summary, write_report
from mystocks_gpu.processors.portfolio.optimize_spec import OptimizeSpec
from tests.unit.portfolio.cvxpy_reference import CLARABEL_TIGHT

SYMS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
DAY = 86_400 * 10**9
SECTORS = {"AAA": "tech", "BBB": "tech", "CCC": "energy", "DDD": "energy", "EEE": "banks", "FFF": "banks"}


def _closes(T: int = 160, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((T, 2)) * 0.01
    B = rng.uniform(0.3, 1.2, (2, len(SYMS)))
    r = F @ B + rng.standard_normal((T, len(SYMS))) * rng.uniform(0.005, 0.02, len(SYMS)) + 0.0004
    return 50.0 * np.exp(np.cumsum(r, axis=0))


def _spec(**kw: Any) -> OptimizeSpec:
    return OptimizeSpec.from_dict({"universe": SYMS, **kw})  # type: ignore[return-value]


def _run(spec: OptimizeSpec, closes: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ts = np.arange(closes.shape[0], dtype=np.int64) * DAY
    return optimize_closes(spec, closes, ts, spec.solver_config("cpu"), lambda f, m: None, lambda: False)


def _returns(closes: np.ndarray, lookback: int | None) -> np.ndarray:
    r = pd.DataFrame(closes).pct_change().dropna().to_numpy()
    return r[-lookback:] if lookback else r


def _cvxpy(cov: np.ndarray, mu: np.ndarray | None, ra: float, w0: np.ndarray | None, turnover: float | None,
           max_weight: float | None, sector_bounds: dict[str, list[float]] | None) -> tuple[float, np.ndarray]:
    import cvxpy as cp

    n = cov.shape[0]
    w = cp.Variable(n)
    risk = cp.quad_form(w, cp.psd_wrap(cov))
    obj = risk if mu is None else ra / 2 * risk - mu @ w
    cons = [cp.sum(w) == 1, w >= 0]
    if max_weight is not None:
        cons.append(w <= max_weight)
    if turnover is not None and w0 is not None:
        cons.append(cp.norm1(w - w0) <= turnover)
    for sec, (lo, hi) in (sector_bounds or {}).items():
        m = np.array([1.0 if SECTORS[s] == sec else 0.0 for s in SYMS])
        cons += [m @ w >= lo, m @ w <= hi]
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    return float(prob.value), np.asarray(w.value)


def test_min_variance_with_sectors_and_turnover_equals_cvxpy_on_ledoit_wolf() -> None:
    from sklearn.covariance import LedoitWolf

    closes = _closes()
    w0 = {"AAA": 0.5, "CCC": 0.3, "EEE": 0.2}
    bounds = {"tech": [0.1, 0.3], "energy": [0.0, 0.5]}
    spec = _spec(lookback=120, estimator="ledoit_wolf", max_weight=0.35, turnover=0.6, current_weights=w0,
                 sectors=SECTORS, sector_bounds=bounds)
    rows, _ = _run(spec, closes)
    cov = LedoitWolf().fit(_returns(closes, 120)).covariance_
    f, w = _cvxpy(cov, None, 1.0, np.array([w0.get(s, 0.0) for s in SYMS]), 0.6, 0.35, bounds)
    [r] = rows
    assert r["status"] == "optimal"
    assert r["objective"] == pytest.approx(f, rel=1e-6)
    np.testing.assert_allclose(r["weights"], w, atol=1e-4)
    assert r["violation"] <= 1e-7


def test_frontier_points_equal_cvxpy_on_the_sample_covariance() -> None:
    closes = _closes()
    spec = _spec(mode="frontier", objective="mean_variance", estimator="sample", frontier_points=5,
                 frontier_risk_aversion=[1.0, 300.0], max_weight=0.6)
    rows, extra = _run(spec, closes)
    R = _returns(closes, None)
    cov, mu = np.cov(R, rowvar=False, ddof=1), R.mean(axis=0)
    ras = np.geomspace(300.0, 1.0, 5)
    assert [p["risk_aversion"] for p in extra["frontier"]] == pytest.approx(ras)
    for r, ra in zip(rows, ras, strict=True):
        f, w = _cvxpy(cov, mu, ra, None, None, 0.6, None)
        assert r["status"] == "optimal" and r["objective"] == pytest.approx(f, rel=1e-6)
        np.testing.assert_allclose(r["weights"], w, atol=1e-4)
    vol = [p["ann_volatility"] for p in extra["frontier"]]
    ret = [p["ann_return"] for p in extra["frontier"]]
    assert vol == sorted(vol) and ret == sorted(ret)  # risk and return rise as risk aversion falls


def test_rebalance_mode_reports_equity_turnover_and_costs() -> None:
    closes = _closes()
    spec = _spec(mode="rebalance", lookback=60, rebalance_every=25, estimator="sample", cost_rate=0.001)
    rows, extra = _run(spec, closes)
    dates = list(range(60, 160, 25))
    assert [r["label"].startswith("rebalance:") for r in rows] == [True] * len(dates)
    # the first rebalance trades from cash: turnover = sum of the weights = 1; cost = rate x turnover x 1
    assert rows[0]["turnover"] == pytest.approx(1.0, abs=1e-7) and rows[0]["cost"] == pytest.approx(0.001, rel=1e-6)
    # each date's weights = the min-variance portfolio of the trailing 60 returns (numpy cov + CVXPY)
    R = pd.DataFrame(closes).pct_change().to_numpy()
    for r, t in zip(rows, dates, strict=True):
        _f, w = _cvxpy(np.cov(R[t - 59:t + 1], rowvar=False), None, 1.0, None, None, None, None)
        np.testing.assert_allclose(r["weights"], w, atol=1e-4)
    reb = extra["rebalance"]
    assert reb["dates"] == len(dates) and reb["curve"]["equity"][0] == 1.0
    assert reb["stats"]["total_costs"] == pytest.approx(sum(r["cost"] for r in rows), rel=1e-12)


def test_infeasible_job_names_the_constraints_and_returns_no_weights() -> None:
    spec = _spec(max_weight=0.1)  # 6 assets x 0.1 < budget 1
    with pytest.raises(PortfolioInfeasible, match="infeasible") as exc:
        _run(spec, _closes())
    assert "budget" in str(exc.value)
    frontier = _spec(mode="frontier", objective="mean_variance", frontier_points=3, max_weight=0.1)
    with pytest.raises(PortfolioInfeasible):
        _run(frontier, _closes())


def test_non_psd_covariance_is_repaired_or_rejected_as_configured() -> None:
    closes = _closes(T=4)  # 3 returns of 6 assets: a singular sample covariance
    rows, _ = _run(_spec(estimator="sample", solver={"eig_floor": 1e-6}), closes)
    assert rows[0]["status"] == "optimal" and rows[0]["covariance_repaired"] is True
    with pytest.raises(PortfolioInfeasible, match="rejected"):
        _run(_spec(estimator="sample", solver={"psd_repair": "reject", "eig_floor": 1e-6}), closes)


def test_stale_prices_are_forward_filled_and_incomplete_leading_bars_dropped() -> None:
    rows = [("AAA", 1, 10.0), ("AAA", 2, 11.0), ("BBB", 2, 20.0), ("AAA", 3, 12.0), ("BBB", 4, 21.0),
            ("AAA", 4, 12.5)]
    bars = pd.DataFrame(rows, columns=["symbol", "ts", "close"])
    px, ts = closes_matrix(bars, ["AAA", "BBB"])
    assert ts.tolist() == [2, 3, 4]
    assert px.tolist() == [[11.0, 20.0], [12.0, 20.0], [12.5, 21.0]]
    with pytest.raises(JobSpecError, match="no bars for CCC"):
        closes_matrix(bars, ["AAA", "CCC"])


@pytest.mark.parametrize("patch, reason", [
    ({"universe": ["AAA"]}, "at least 2"),
    ({"objective": "max_fun"}, "unknown objective"),
    ({"mode": "frontier"}, "mean_variance"),
    ({"mode": "rebalance"}, "lookback"),
    ({"turnover": 0.5}, "current_weights"),
    ({"current_weights": {"ZZZ": 1.0}}, "outside the universe"),
    ({"sectors": SECTORS}, "sector_bounds"),
    ({"sectors": SECTORS, "sector_bounds": {"tech": [0.5, 0.1]}}, "lower <= upper"),
    ({"solver": {"max_iter": 0}}, "max_iter"),
    ({"solver": {"backend": "gpu"}}, "worker's device"),
    ({"expected_returns": "signal"}, "signal_topic"),
    ({"colour": "red"}, "unknown spec field"),
    ({"mode": "accounts", "current_weights": {"AAA": 1.0}}, "drop current_weights"),
    ({"mode": "accounts", "accounts": []}, "non-empty list"),
    ({"mode": "accounts", "accounts": ["a", "a"]}, "distinct"),
    ({"mode": "accounts", "positions_topic": ""}, "positions_topic"),
])
def test_bad_specs_are_rejected_with_the_reason(patch: dict[str, Any], reason: str) -> None:
    with pytest.raises(JobSpecError, match=reason):
        get_kind("optimize").parse({"universe": SYMS, **patch})


def test_every_spec_setting_reaches_the_solver() -> None:
    spec = _spec(solver={"max_iter": 7, "polish": False, "eps_abs": 1e-9, "eps_rel": 1e-9})
    cfg = spec.solver_config("cpu")
    assert (cfg.max_iter, cfg.polish, cfg.backend) == (7, False, "cpu")
    rows, _ = _run(spec, _closes())
    assert rows[0]["status"] == "max_iter" and rows[0]["iterations"] <= 7
    base = _run(_spec(), _closes())[0][0]
    for patch in ({"estimator": "ewma"}, {"lookback": 30}, {"max_weight": 0.2}, {"long_only": False, "lower": -0.2}):
        assert not np.allclose(_run(replace(_spec(), **patch), _closes())[0][0]["weights"], base["weights"]), patch


def test_summary_and_report(tmp_path: Path) -> None:
    spec = _spec(mode="frontier", objective="mean_variance", frontier_points=4, top_weights=3)
    rows, extra = _run(spec, _closes())
    result = {"mode": "frontier", "objective": "mean_variance", "estimator": "ledoit_wolf", "backend": "cpu",
              "symbols": SYMS, "bars": 160, "problems": 4, "statuses": {"optimal": 4}, "seconds": 0.1,
              "top_weights": 3, "portfolios": rows, **extra}
    text = format_summary(result)
    assert "4 problem(s) x 6 assets" in text and text.count("frontier:") == 4
    assert all(len(line.split("weights: ")[1].split()) == 3 for line in text.splitlines()[1:])
    page = write_report(result, tmp_path / "r")
    assert "<table>" in page.read_text()
    for png in ("weights.png", "frontier.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = [dict(rows[0], status="infeasible", weights=None, conflicts=["budget", "upper"], message="x")]
    assert "INFEASIBLE  conflicting constraints: budget, upper" in format_summary(dict(result, portfolios=bad))
