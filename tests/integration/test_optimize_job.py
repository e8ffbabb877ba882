"""Portfolio optimisation as jobs on the real broker and Redis: daily bars loaded with the CLI, an
``optimize`` job through the control plane with progress, one ``results.portfolio`` record per
problem equal to CVXPY + Clarabel on the same closes (pivoted here from the loaded CSV), ``submit
optimize --wait --report`` printing weights and risk and writing the plots, a rebalancing
backtest, and an infeasible job failing with the conflicting constraints and no weights."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings
from tests.conftest import run_cli
from tests.integration.jobs_plane import Plane, collect, states
from tests.unit.portfolio.cvxpy_reference import CLARABEL_TIGHT

DAY = 86_400 * 10**9
N_DAYS = 200


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    p = Plane(settings, uuid.uuid4().hex[:8])
    try:
        p.start_control(timeout=120)  # a fresh broker's group coordinator can take a while on a loaded machine
        p.start_worker("opt", "--kinds", "optimize,echo", timeout=180)
        p.warm_up()
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory, stack: Any) -> pd.DataFrame:
    """Daily closes of 5 correlated symbols over 200 sessions, loaded into md.bars.1d via the CLI."""
    rng = np.random.default_rng(9)
    tag = uuid.uuid4().hex[:5].upper()
    days = pd.bdate_range("2022-01-03", periods=N_DAYS, tz="UTC")
    common = rng.normal(0.0003, 0.01, N_DAYS)
    frames = []
    for k in range(5):
        close = 40 * np.exp(np.cumsum(common * (0.4 + 0.2 * k) + rng.normal(0.0002 * k, 0.006 + 0.003 * k, N_DAYS)))
        frames.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "ticker": f"PO{tag}{k}", "open": close.round(4),
                                    "high": close.round(4), "low": close.round(4), "close": close.round(4),
                                    "volume": 1000}))
    df = pd.concat(frames, ignore_index=True)
    f = tmp_path_factory.mktemp("bars") / "daily.csv"
    df.to_csv(f, index=False)
    r = run_cli("load", str(f), "--topic", "md.bars.1d", timeout=300)
    assert r.returncode == 0 and f"loaded {len(df)} records" in r.stdout, r.stderr
    df["ts"] = pd.to_datetime(df["date"], utc=True).dt.as_unit("ns").astype("int64")
    df["symbol"] = df["ticker"]
    return df


def _spec(bars: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    return {"universe": sorted(bars["symbol"].unique()), "start": int(bars["ts"].min()),
            "end": int(bars["ts"].max()) + DAY, "estimator": "sample", **kw}


def _returns(bars: pd.DataFrame) -> np.ndarray:
    wide = bars.pivot(index="ts", columns="symbol", values="close").sort_index()
    return (wide.to_numpy() / wide.shift(1).to_numpy() - 1.0)[1:]


def _cvxpy_min_var(cov: np.ndarray, max_weight: float) -> tuple[float, np.ndarray]:
    import cvxpy as cp

    w = cp.Variable(cov.shape[0])
    prob = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(cov))), [cp.sum(w) == 1, w >= 0, w <= max_weight])
    prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    return float(prob.value), np.asarray(w.value)


def _published(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """The job's records by problem index (a chunk re-run after a lost worker re-publishes the same
    records: consumers identify them by (job id, index), so do we)."""
    out = {rec.value["index"]: rec.value for rec in read_topic(settings.kafka, "results.portfolio", idle_timeout_s=4)
           if rec.key == job_id and rec.value is not None}
    return [out[k] for k in sorted(out)]


def test_optimize_job_through_the_control_plane_equals_cvxpy(plane: Plane, bars: pd.DataFrame,
                                                             settings: Settings) -> None:
    follower = plane.follower()
    job_id = plane.submit("optimize", _spec(bars, max_weight=0.4), bypass_cache=True)
    statuses = collect(follower, job_id, timeout=300)  # the worker's first solve loads the numba kernels
    assert states(statuses)[-1] == "succeeded", statuses[-1]
    prog = [s["progress"] for s in statuses if s["state"] == "running"]
    assert prog == sorted(prog) and len(set(prog)) > 1
    f, w = _cvxpy_min_var(np.cov(_returns(bars), rowvar=False), 0.4)
    [rec] = _published(settings, job_id)
    assert rec["status"] == "optimal" and rec["symbols"] == sorted(bars["symbol"].unique())
    assert rec["objective"] == pytest.approx(f, rel=1e-6) and rec["violation"] <= 1e-7
    np.testing.assert_allclose(rec["weights"], w, atol=1e-4)
    result = plane.job(job_id)["result"]
    assert result["bars"] == N_DAYS and result["portfolios"][0]["weights"] == pytest.approx(rec["weights"])


def test_cli_frontier_prints_weights_and_risk_and_writes_the_report(plane: Plane, bars: pd.DataFrame,
                                                                    settings: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(bars, mode="frontier", objective="mean_variance", frontier_points=6,
                                     top_weights=2)))
    job_id = f"opt-{uuid.uuid4().hex[:10]}"
    report = tmp_path / "report"
    r = run_cli("submit", "optimize", "--spec", str(spec), "--wait", "--timeout", "240", "--no-cache",
                "--namespace", plane.ns, "--job-id", job_id, "--report", str(report), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "optimize frontier mean_variance" in r.stdout and "succeeded" in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if "frontier:" in ln]
    assert len(lines) == 6 and all("vol " in ln and "weights: " in ln for ln in lines)
    recs = _published(settings, job_id)
    assert [x["label"] for x in recs] == [f"frontier:{k}" for k in range(6)]
    var = [x["variance"] for x in recs]
    assert var == sorted(var)  # the frontier: risk rises as risk aversion falls
    for png in ("weights.png", "frontier.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in (report / "index.html").read_text()


def test_rebalancing_backtest_job(plane: Plane, bars: pd.DataFrame, settings: Settings) -> None:
    job_id = plane.submit("optimize", _spec(bars, mode="rebalance", lookback=60, rebalance_every=40, cost_rate=0.001),
                          bypass_cache=True)
    final = plane.wait(job_id, {"succeeded", "failed"}, timeout=120)
    assert final["state"] == "succeeded", final
    reb = final["result"]["rebalance"]
    assert reb["dates"] == len(range(60, N_DAYS, 40)) and len(_published(settings, job_id)) == reb["dates"]
    assert reb["stats"]["total_costs"] > 0 and reb["curve"]["equity"][0] == 1.0


def test_infeasible_job_fails_with_the_constraints_and_publishes_no_weights(plane: Plane, bars: pd.DataFrame,
                                                                            settings: Settings) -> None:
    job_id = plane.submit("optimize", _spec(bars, max_weight=0.1), bypass_cache=True)
    final = plane.wait(job_id, {"succeeded", "failed"}, timeout=120)
    assert final["state"] == "failed" and "infeasible" in final["error"] and "budget" in final["error"], final
    assert _published(settings, job_id) == []


def test_expected_returns_from_a_signal_topic(plane: Plane, bars: pd.DataFrame, settings: Settings,
                                              unique: str) -> None:
    """mu = signal_scale x the last signal value at or before the last bar (a later value is ignored)."""
    import cvxpy as cp

    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec
    from mystocks_gpu.topics import TopicSpec
    from mystocks_gpu.topics.admin import TopicAdmin

    topic = f"t.signals.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "symbol", "mystocks.features.FeatureVector", partitions=1,
                                                 dlq=False)])
    syms = sorted(bars["symbol"].unique())
    last = int(bars["ts"].max())
    want = {s: 0.001 * (k + 1) * (-1) ** k for k, s in enumerate(syms)}
    codec = AvroCodec()
    items = []
    for seq, (ts, vals) in enumerate(((last - DAY, {s: 9.0 for s in syms}), (last, want),
                                      (last + DAY, {s: -9.0 for s in syms}))):
        for s in syms:
            items.append((s.encode(), codec.encode("FeatureVector", {"symbol": s, "ts_event": ts, "seq": seq,
                                                                      "ts_ingest": ts, "values": {"alpha": vals[s]}}),
                          ts // 10**6))
    produce_all(make_producer(settings.kafka), topic, iter(items))
    spec = _spec(bars, objective="mean_variance", risk_aversion=50.0, expected_returns="signal", signal_topic=topic,
                 signal_column="alpha", signal_scale=0.5)
    job_id = plane.submit("optimize", spec, bypass_cache=True)
    final = plane.wait(job_id, {"succeeded", "failed"}, timeout=120)
    assert final["state"] == "succeeded", final
    mu = 0.5 * np.array([want[s] for s in syms])
    cov = np.cov(_returns(bars), rowvar=False)
    w = cp.Variable(len(syms))
    cp.Problem(cp.Minimize(25.0 * cp.quad_form(w, cp.psd_wrap(cov)) - mu @ w), [cp.sum(w) == 1, w >= 0]).solve(
        solver=cp.CLARABEL, **CLARABEL_TIGHT)
    [rec] = _published(settings, job_id)
    np.testing.assert_allclose(rec["weights"], w.value, atol=1e-4)
    assert rec["expected_return"] == pytest.approx(float(mu @ np.asarray(rec["weights"])), rel=1e-9)


def test_accounts_mode_solves_every_account_against_its_holdings_and_limits(plane: Plane, bars: pd.DataFrame,
                                                                            settings: Settings, unique: str) -> None:
    """Mode ``accounts``: the holdings at the last bar of each account on a positions topic (later
    records ignored, earlier ones superseded, a tombstone closes one, a malformed record counted),
    one min-variance problem per account in one batch: turnover against the account's own weights,
    its concentration limit as a max weight. Each equals CVXPY + Clarabel; the trades reach the
    CVXPY weights; bad accounts are rejected with the reason."""
    import cvxpy as cp

    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.processors.risk.positions import encode_positions
    from mystocks_gpu.topics import TopicSpec
    from mystocks_gpu.topics.admin import TopicAdmin

    topic = f"t.pos.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "account", "mystocks.risk.Positions", partitions=2,
                                                 cleanup="compact", dlq=False)])
    syms = sorted(bars["symbol"].unique())
    last_ts = int(bars["ts"].max())
    last_px = bars[bars["ts"] == last_ts].set_index("symbol").loc[syms, "close"].to_numpy()
    holdings = {"acct-a": {syms[0]: 300.0, syms[1]: 200.0, syms[2]: 100.0},
                "acct-b": {s: 50.0 + 10 * k for k, s in enumerate(syms)}}
    limits = {"acct-a": {"concentration": 0.35}, "acct-b": {}}

    def rec(acct: str, ts: int, held: dict[str, float], lim: dict[str, float] | None = None) -> tuple[bytes, bytes, int]:
        return (acct.encode(), encode_positions(acct, ts, [(s, q, 10.0) for s, q in held.items()], lim), ts // 10**6)

    items = [rec("acct-b", last_ts - 30 * DAY, {syms[0]: 1.0}),  # superseded
             rec("acct-a", last_ts - 5 * DAY, holdings["acct-a"], limits["acct-a"]),
             rec("acct-b", last_ts - DAY, holdings["acct-b"]),
             rec("acct-b", last_ts + DAY, {syms[4]: 9999.0}),  # after the last bar: ignored
             rec("acct-c", last_ts - DAY, {syms[0]: 10.0, "NOT-IN-UNIVERSE": 5.0}),
             rec("acct-d", last_ts - 9 * DAY, {syms[0]: 10.0}),
             (b"acct-d", None, (last_ts - 3 * DAY) // 10**6),  # closed
             rec("acct-e", last_ts - DAY, {syms[0]: -100.0, syms[1]: 10.0}),  # net value < 0
             (b"acct-x", b"\x00garbage", last_ts // 10**6)]
    produce_all(make_producer(settings.kafka), topic, iter(items))
    spec = _spec(bars, mode="accounts", positions_topic=topic, max_weight=0.5, turnover=0.6)
    job_id = plane.submit("optimize", spec, bypass_cache=True)
    final = plane.wait(job_id, {"succeeded", "failed"}, timeout=300)
    assert final["state"] == "succeeded", final
    res = final["result"]
    rows = {r["account"]: r for r in res["portfolios"]}
    assert set(rows) == {"acct-a", "acct-b", "acct-c", "acct-e"}  # acct-d is closed
    assert rows["acct-c"]["status"] == "rejected" and "NOT-IN-UNIVERSE" in rows["acct-c"]["message"]
    assert rows["acct-e"]["status"] == "rejected" and "net market value" in rows["acct-e"]["message"]
    assert res["accounts"]["solved"] == 2 and res["accounts"]["positions_records_rejected"] == 1
    cov = np.cov(_returns(bars), rowvar=False)
    for acct in ("acct-a", "acct-b"):
        q = np.array([holdings[acct].get(s, 0.0) for s in syms])
        value = float(q @ last_px)
        w0 = q * last_px / value
        cap = min(0.5, limits[acct].get("concentration", 1.0))
        w = cp.Variable(len(syms))
        prob = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(cov))),
                          [cp.sum(w) == 1, w >= 0, w <= cap, cp.norm1(w - w0) <= 0.6])
        prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
        row = rows[acct]
        assert row["status"] == "optimal", row
        assert row["value"] == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(row["current_weights"], w0, rtol=1e-12)
        assert row["objective"] == pytest.approx(prob.value, rel=1e-6) and row["violation"] <= 1e-7
        np.testing.assert_allclose(row["weights"], w.value, atol=1e-4)
        trades = np.array([row["trades"].get(s, 0.0) for s in syms])
        np.testing.assert_allclose((q + trades) * last_px / value, w.value, atol=1e-4)
    assert rows["acct-a"]["max_weight"] == pytest.approx(0.35)
    recs = _published(settings, job_id)
    assert sorted(r["label"] for r in recs) == [f"account:{a}" for a in ("acct-a", "acct-b", "acct-c", "acct-e")]
