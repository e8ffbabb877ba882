"""Backtests as jobs: daily bars loaded into Kafka with the CLI, a grid backtest submitted through
the control plane, progress on job.status, rows on results.backtest equal to running the engine
directly; the cache on resubmit; memory-budget chunking; rejected bad specs."""

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
from mystocks_gpu.gpu_ops.backtest import run_backtest
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from tests.conftest import run_cli
from tests.integration.jobs_plane import Plane, collect, http, states

DAY = 86_400 * 10**9


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    p = Plane(settings, uuid.uuid4().hex[:8])
    try:
        p.start_control()
        p.start_worker("bta", "--kinds", "backtest,echo")
        p.start_worker("btb", "--kinds", "backtest,echo")
        p.warm_up()
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory, stack: Any) -> pd.DataFrame:
    """Real-shaped daily OHLCV for 8 symbols over 600 sessions, loaded into md.bars.1d via the CLI."""
    rng = np.random.default_rng(42)
    tag = uuid.uuid4().hex[:5].upper()
    days = pd.bdate_range("2021-01-04", periods=600, tz="UTC")
    frames = []
    for k in range(8):
        close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, days.size)))
        opn = close * np.exp(rng.normal(0, 0.005, days.size))
        high = np.maximum(opn, close) * (1 + rng.uniform(0, 0.01, days.size))
        low = np.minimum(opn, close) * (1 - rng.uniform(0, 0.01, days.size))
        frames.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "ticker": f"BT{tag}{k}", "open": opn.round(4),
                                    "high": high.round(4), "low": low.round(4), "close": close.round(4),
                                    "volume": rng.integers(1e5, 1e6, days.size)}))
    df = pd.concat(frames, ignore_index=True)
    f = tmp_path_factory.mktemp("bars") / "daily.csv"
    df.to_csv(f, index=False)
    r = run_cli("load", str(f), "--topic", "md.bars.1d", timeout=300)
    assert r.returncode == 0 and f"loaded {len(df)} records" in r.stdout, r.stderr
    df["ts"] = pd.to_datetime(df["date"], utc=True).dt.as_unit("ns").astype("int64")
    df["symbol"] = df["ticker"]
    return df


def _spec(bars: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    base = {"universe": sorted(bars["symbol"].unique()), "start": int(bars["ts"].min()),
            "end": int(bars["ts"].max()) + DAY, "strategy": "ma_cross",
            "params": {"fast": [5, 10, 20], "slow": [30, 60, 90]}, "fees": 0.001, "slippage": 0.0005, "top_n": 5,
            "n_curves": 2}
    return base | kw


def _matrices(bars: pd.DataFrame, syms: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The engine's inputs built here from the rows the test loaded (not by the job's own
    ``to_matrices``): one row per symbol, one column per bar time, by a pandas pivot."""
    ts = np.sort(bars["ts"].unique()).astype(np.int64)
    mats = {c: bars.pivot(index="symbol", columns="ts", values=c).reindex(index=syms, columns=ts).to_numpy(np.float64)
            for c in ("open", "high", "low", "close")}
    assert all(m.shape == (len(syms), 600) and not np.isnan(m).any() for m in mats.values())
    return mats, ts


def _direct(bars: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    syms = sorted(bars["symbol"].unique())
    prices, ts = _matrices(bars, syms)
    out = run_backtest(prices, syms, ts, BacktestSpec.from_dict(spec), backend="cpu")
    return pd.DataFrame(out.rows(len(out.stats)))


def _published(settings: Settings, job_id: str) -> pd.DataFrame:
    seen: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for rec in read_topic(settings.kafka, "results.backtest", idle_timeout_s=6):
        if rec.key == job_id and rec.value is not None:
            seen[(rec.value["chunk_index"], rec.headers.get("mystocks.part", "0"))] = rec.value["rows"]
    return pd.DataFrame([row for k in sorted(seen) for row in seen[k]])


def _key(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(p=[json.dumps(p, sort_keys=True) for p in df["params"]]).drop(columns="params")
    return df.set_index(["symbol", "p"]).sort_index()


def test_grid_backtest_through_cmd_jobs_equals_engine(plane: Plane, bars: pd.DataFrame, settings: Settings) -> None:
    spec = _spec(bars)
    follower = plane.follower()
    job_id = plane.submit("backtest", spec)
    statuses = collect(follower, job_id, timeout=180)
    assert states(statuses)[0] == "queued" and states(statuses)[-1] == "succeeded", statuses[-1]
    prog = [s["progress"] for s in statuses if s["state"] == "running"]
    assert prog and prog == sorted(prog) and len(set(prog)) > 1  # progress reported and rising
    result = plane.job(job_id)["result"]
    assert result["symbols"] == 8 and result["bars"] == 600 and result["messages"] >= 1
    got = _published(settings, job_id)
    want = _direct(bars, spec)
    assert len(got) == len(want) == 8 * 9  # every (symbol, parameter set), once
    pd.testing.assert_frame_equal(_key(got), _key(want), check_exact=False, rtol=1e-12)
    top_want = want.sort_values("sharpe", ascending=False).head(5)
    assert [r["symbol"] for r in result["top"]] == top_want["symbol"].tolist()
    np.testing.assert_allclose([r["sharpe"] for r in result["top"]], top_want["sharpe"], rtol=1e-12)
    assert len(result["curves"]) == 2

    # an identical resubmit is served from the cache
    again = plane.submit("backtest", spec)
    final = plane.wait(again, {"succeeded"}, timeout=30)
    assert final["cached"] is True and final["result"]["top"] == result["top"]


def test_memory_budget_forces_chunks_with_identical_results(plane: Plane, bars: pd.DataFrame, settings: Settings) -> None:
    spec = _spec(bars, memory_budget_bytes=200_000)
    job_id = plane.submit("backtest", spec, bypass_cache=True)
    final = plane.wait(job_id, {"succeeded", "failed"}, timeout=180)
    assert final["state"] == "succeeded", final
    res = final["result"]
    assert res["engine_chunks"] > res.get("chunks", 1)  # the budget split each job chunk further
    got = _published(settings, job_id)
    want = _direct(bars, _spec(bars))
    pd.testing.assert_frame_equal(_key(got), _key(want), check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("patch, reason", [
    ({"strategy": "moon_phase"}, "unknown strategy"),
    ({"universe": []}, "universe"),
    ({"start": 2_000_000_000 * 10**9, "end": 1_000_000_000 * 10**9}, "start"),
    ({"params": {"fast": list(range(1, 60)), "slow": list(range(61, 300))}, "max_grid": 1000}, "max_grid"),
])
def test_bad_specs_are_rejected_with_a_reason(plane: Plane, bars: pd.DataFrame, patch: dict[str, Any],
                                              reason: str) -> None:
    status, body = http("POST", f"{plane.url}/jobs", {"kind": "backtest", "spec": _spec(bars, **patch)})
    if status == 202:
        body = plane.wait(body["job_id"], {"rejected"}, timeout=30)
        text = body.get("error") or ""
    else:
        assert 400 <= status < 500
        text = json.dumps(body)
    assert reason in text, text


def test_cli_submit_wait_prints_top_table_and_writes_report(plane: Plane, bars: pd.DataFrame, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec = _spec(bars, strategy="rsi", params={"period": [7, 14], "lower": [25, 30], "upper": [70]}, top_n=3)
    spec_file.write_text(json.dumps(spec))
    report = tmp_path / "report"
    r = run_cli("submit", "backtest", "--spec", str(spec_file), "--wait", "--timeout", "180", "--no-cache",
                "--namespace", plane.ns, "--report", str(report), timeout=240)
    assert r.returncode == 0, r.stderr
    assert "top 3 by sharpe" in r.stdout and "succeeded" in r.stdout
    want = _direct(bars, spec).sort_values("sharpe", ascending=False).head(3)
    table = [ln.split() for ln in r.stdout.splitlines() if ln.strip()[:2] in ("1 ", "2 ", "3 ")]
    assert [row[1] for row in table] == want["symbol"].tolist()
    page = (report / "index.html").read_text()
    assert "<table>" in page and want["symbol"].iloc[0] in page
    for png in ("equity.png", "drawdown.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_signal_strategy_reads_a_feature_topic(plane: Plane, bars: pd.DataFrame, settings: Settings,
                                               unique: str) -> None:
    """Backtest anything computed in the stream: a column of feature vectors on a topic, aligned
    to each bar with the last value at or before the bar."""
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec
    from mystocks_gpu.topics import TopicSpec
    from mystocks_gpu.topics.admin import TopicAdmin

    topic = f"t.sig.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "symbol", "mystocks.features.FeatureVector", partitions=2,
                                                 dlq=False)])
    rng = np.random.default_rng(5)
    sig = bars[["symbol", "ts"]].copy()
    sig["ts"] = sig["ts"] - 3_600 * 10**9  # computed an hour before each bar
    sig["signal"] = rng.normal(0, 1, len(sig)).round(6)
    codec = AvroCodec()
    items = [(s.encode(), codec.encode("FeatureVector", {"symbol": s, "ts_event": int(t), "seq": i, "ts_ingest": int(t),
                                                         "values": {"momo": float(v), "other": 1.0}}), int(t) // 10**6)
             for i, (s, t, v) in enumerate(sig.itertuples(index=False))]
    produce_all(make_producer(settings.kafka), topic, iter(items))
    spec = _spec(bars, strategy="signal", params={"threshold_long": [0.5, 1.0], "threshold_exit": [0.0]},
                 signal_topic=topic, signal_column="momo")
    spec["start"] -= 2 * 3_600 * 10**9
    job_id = plane.submit("backtest", spec, bypass_cache=True)
    final = plane.wait(job_id, {"succeeded", "failed"}, timeout=180)
    assert final["state"] == "succeeded", final
    syms = sorted(bars["symbol"].unique())
    prices, ts = _matrices(bars, syms)
    wide = sig.assign(ts=sig["ts"] + 3_600 * 10**9).pivot(index="symbol", columns="ts", values="signal")
    prices["signal"] = wide.reindex(index=syms, columns=ts).to_numpy(np.float64)  # as-of alignment, by hand
    out = run_backtest(prices, syms, ts, BacktestSpec.from_dict(spec), backend="cpu")
    want = pd.DataFrame(out.rows(len(out.stats)))
    got = _published(settings, job_id)
    assert len(got) == len(want) == 8 * 2
    pd.testing.assert_frame_equal(_key(got), _key(want), check_exact=False, rtol=1e-12)


def test_a_result_the_broker_rejects_fails_the_job_with_the_reason(plane: Plane, bars: pd.DataFrame,
                                                                   settings: Settings) -> None:
    """results.backtest temporarily accepts at most 64-byte record batches: the broker rejects the real
    result record, and the job must FAIL with the broker's reason (it used to report success)."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    admin = AdminClient(settings.kafka.client_config())
    res = ConfigResource(ResourceType.TOPIC, "results.backtest")

    def set_max(value: str | None) -> None:
        op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
        entry = ConfigEntry("max.message.bytes", value or "", incremental_operation=op)
        res_ = ConfigResource(ResourceType.TOPIC, "results.backtest", incremental_configs=[entry])
        admin.incremental_alter_configs([res_])[res_].result(timeout=30)

    before = admin.describe_configs([res])[res].result(timeout=30)["max.message.bytes"]
    set_max("64")
    try:
        job_id = plane.submit("backtest", _spec(bars, top_n=4), bypass_cache=True)
        final = plane.wait(job_id, {"succeeded", "failed"}, timeout=180)
    finally:
        set_max(None if before.is_default else before.value)
    assert final["state"] == "failed", final
    assert "DeliveryFailed" in final["error"] and "results.backtest" in final["error"], final["error"]
    assert "Message size too large" in final["error"], final["error"]
    after = admin.describe_configs([res])[res].result(timeout=30)["max.message.bytes"]
    assert after.value == before.value  # restored for the other tests
