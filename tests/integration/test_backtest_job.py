"""Backtests as jobs: daily bars loaded into Kafka with the CLI, a grid backtest submitted through
the control plane, progress on job.status, rows on results.backtest equal to running the engine
directly; the cache on resubmit and its invalidation by new bars; memory-budget chunking; rejected
bad specs; real-shaped data (one file per ticker, different listing dates) replayed identically in
any load order with an end date; missing symbols reported; reports from results.backtest; cancel
stops the worker promptly; consume and load as a new user meets them."""

from __future__ import annotations

import json
import time
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
from mystocks_gpu.processors.backtest.results import read_results
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from tests.conftest import run_cli, wait_until
from tests.integration.jobs_plane import Plane, collect, http, states

DAY = 86_400 * 10**9


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    p = Plane(settings, uuid.uuid4().hex[:8])
    try:
        p.start_control(timeout=180)  # generous: the suite may run on a loaded machine
        p.start_worker("bta", "--kinds", "backtest,echo", timeout=120)
        p.start_worker("btb", "--kinds", "backtest,echo", timeout=120)
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
    statuses = collect(follower, job_id, timeout=300)  # the first job of the module may compile (numba)
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
    assert result["curves"] == 2 and result["missing_symbols"] == [] and result["warnings"] == []

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


# ---- real-shaped data, loaded as a user does ----------------------------------------------------
LISTINGS = {"A": ("2019-01-02", "2021-12-31"), "C": ("2020-03-02", "2021-12-31"), "D": ("2019-01-02", "2021-06-30")}


def _ticker_frames(seed: int = 3) -> dict[str, pd.DataFrame]:
    """Daily OHLCV per ticker: different listing dates, overlapping ranges, one delisted early."""
    rng = np.random.default_rng(seed)
    out = {}
    for t, (a, b) in LISTINGS.items():
        days = pd.bdate_range(a, b, tz="UTC")
        close = 30 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, days.size)))
        opn = close * np.exp(rng.normal(0, 0.005, days.size))
        out[t] = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": opn.round(4),
                               "high": (np.maximum(opn, close) * 1.01).round(4),
                               "low": (np.minimum(opn, close) * 0.99).round(4), "close": close.round(4),
                               "volume": rng.integers(1e5, 1e6, days.size)})
    return out


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory, stack: Any) -> dict[str, Any]:
    """The same tickers loaded twice under two prefixes: one CSV per ticker (newest-first rows),
    loaded one after another (so tickers share partitions, each ticker's history before the
    next's), and one interleaved file sorted by date."""
    tag = uuid.uuid4().hex[:5].upper()
    frames = _ticker_frames()
    d = tmp_path_factory.mktemp("listed")
    for t, f in frames.items():  # per ticker, newest first
        path = d / f"P{tag}{t}.csv"
        f.assign(ticker=f"P{tag}{t}").iloc[::-1].to_csv(path, index=False)
        r = run_cli("load", str(path), "--topic", "md.bars.1d", timeout=300)
        assert r.returncode == 0 and "loaded in time order" in r.stdout, r.stdout + r.stderr
        assert "rec/s" not in r.stderr and "%|" not in r.stderr  # no progress bar off a terminal
    inter = pd.concat([f.assign(ticker=f"I{tag}{t}") for t, f in frames.items()]).sort_values(["date", "ticker"])
    r = run_cli("load", str(_write(d / "interleaved.csv", inter)), "--topic", "md.bars.1d", timeout=300)
    assert r.returncode == 0 and "note:" not in r.stdout, r.stdout + r.stderr
    long = pd.concat([f.assign(symbol=t) for t, f in frames.items()], ignore_index=True)
    long["ts"] = pd.to_datetime(long["date"], utc=True).dt.as_unit("ns").astype("int64")
    return {"tag": tag, "bars": long}


def _write(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def _listed_spec(prefix: str, **kw: Any) -> dict[str, Any]:
    return {"universe": [f"{prefix}{t}" for t in LISTINGS], "start": "2019-06-01", "end": "2021-03-01",
            "strategy": "ma_cross", "params": {"fast": [5, 10], "slow": [30, 60]}, "n_curves": 20, **kw}


def _by_ticker(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return _key(df.assign(symbol=[s[len(prefix):] for s in df["symbol"]]))


def test_per_ticker_and_interleaved_loads_replay_identically_with_an_end_date(
        plane: Plane, listed: dict[str, Any], settings: Settings) -> None:
    """Tickers loaded one file after another share partitions with each other's whole history in
    front: an end date must not cut the later tickers (every symbol is there), and the result equals
    the interleaved load's and the engine run on a pandas pivot of the same rows."""
    tag, bars = listed["tag"], listed["bars"]
    results, tables, ids = {}, {}, {}
    for prefix in (f"P{tag}", f"I{tag}"):
        job_id = plane.submit("backtest", _listed_spec(prefix) | {"universe": [f"{prefix}{t}" for t in LISTINGS]
                                                               + [f"{prefix}NOPE"]}, bypass_cache=True)
        final = plane.wait(job_id, {"succeeded", "failed"}, timeout=240)
        assert final["state"] == "succeeded", final
        results[prefix], ids[prefix] = final["result"], job_id
        tables[prefix] = _published(settings, job_id)
        assert final["result"]["missing_symbols"] == [f"{prefix}NOPE"]
        assert any(f"{prefix}NOPE" in w for w in final["result"]["warnings"])
    p, i = results[f"P{tag}"], results[f"I{tag}"]
    assert p["symbols"] == i["symbols"] == len(LISTINGS) and p["bars"] == i["bars"] and p["bar_records"] == i["bar_records"]
    pd.testing.assert_frame_equal(_by_ticker(tables[f"P{tag}"], f"P{tag}"), _by_ticker(tables[f"I{tag}"], f"I{tag}"),
                                  check_exact=True)
    # the engine on a pandas pivot of the rows the test wrote, restricted to the range
    spec = BacktestSpec.from_dict(_listed_spec(""))
    sub = bars[(bars["ts"] >= spec.start) & (bars["ts"] < spec.end)]
    syms = sorted(LISTINGS)
    ts = np.sort(sub["ts"].unique())
    mats = {c: sub.pivot(index="symbol", columns="ts", values=c).reindex(index=syms, columns=ts).to_numpy(np.float64)
            for c in ("open", "high", "low", "close")}
    assert p["bars"] == ts.size and p["bar_records"] == len(sub)
    want = run_backtest(mats, syms, ts, BacktestSpec.from_dict({**spec.to_dict(), "universe": syms}), backend="cpu")
    pd.testing.assert_frame_equal(_by_ticker(tables[f"P{tag}"], f"P{tag}"), _key(pd.DataFrame(want.rows(len(want.stats)))),
                                  check_exact=False, rtol=1e-12)
    # every curve starts at its symbol's first bar in the range, not flat from the range's start
    out = read_results(settings, ids[f"P{tag}"], p["results_offset"])
    assert out.complete
    curves = out.curves
    first = sub.groupby("symbol")["ts"].min()
    assert {c["symbol"][len(f"P{tag}"):] for c in curves} == set(LISTINGS)
    for c in curves:
        assert c["ts"][0] == first[c["symbol"][len(f"P{tag}"):]], c["symbol"]


def test_new_bars_invalidate_the_cached_result(plane: Plane, tmp_path: Path) -> None:
    """An open-ended job is cached; loading later bars changes the key (the bar topic's offsets),
    so the next identical submit runs again and sees them."""
    sym = f"N{uuid.uuid4().hex[:6].upper()}"
    f = _ticker_frames(seed=9)["A"].assign(ticker=sym)
    early, late = f[f["date"] < "2021-01-01"], f[f["date"] >= "2021-01-01"]
    assert run_cli("load", str(_write(tmp_path / "early.csv", early)), "--topic", "md.bars.1d").returncode == 0
    spec = {"universe": [sym], "strategy": "ma_cross", "params": {"fast": [5], "slow": [20]}}
    first = plane.wait(plane.submit("backtest", spec), {"succeeded", "failed"}, timeout=180)
    assert first["state"] == "succeeded" and first["cached"] is False and first["result"]["bars"] == len(early)
    again = plane.wait(plane.submit("backtest", spec), {"succeeded", "failed"}, timeout=60)
    assert again["cached"] is True and again["result"]["bars"] == len(early)
    assert run_cli("load", str(_write(tmp_path / "late.csv", late)), "--topic", "md.bars.1d").returncode == 0
    fresh = plane.wait(plane.submit("backtest", spec), {"succeeded", "failed"}, timeout=180)
    assert fresh["state"] == "succeeded" and fresh["cached"] is False and fresh["result"]["bars"] == len(f)


def test_cli_wait_with_default_curves_prints_warnings_table_and_report_from_the_topic(
        plane: Plane, listed: dict[str, Any], tmp_path: Path) -> None:
    """Five default curves over years of bars: the job result stays small (never truncated), the
    table and the missing-symbol warning print, the report is built from results.backtest."""
    tag = listed["tag"]
    spec = {k: v for k, v in _listed_spec(f"P{tag}").items() if k != "n_curves"}
    spec["universe"] = [*spec["universe"], f"P{tag}ZZZ"]
    spec_file = _write_json(tmp_path / "spec.json", spec)
    report = tmp_path / "report"
    job_id = uuid.uuid4().hex
    r = run_cli("submit", "backtest", "--spec", str(spec_file), "--wait", "--timeout", "240", "--no-cache",
                "--namespace", plane.ns, "--report", str(report), "--job-id", job_id, timeout=300)
    assert r.returncode == 0, r.stderr
    final = plane.job(job_id)
    assert final["state"] == "succeeded" and "truncated" not in final["result"]
    # the best 5 cells' curves are among the chunks' (each chunk publishes its own best 5)
    assert len(json.dumps(final["result"])) < 64 * 1024 and final["result"]["curves"] == 5
    assert f"warning: 1 universe symbol(s) have no bars in md.bars.1d over the time range: P{tag}ZZZ" in r.stdout
    assert f"top {len(LISTINGS) * 4} by sharpe" in r.stdout and "equity curves are on results.backtest" in r.stdout
    page = (report / "index.html").read_text()
    assert f"{len(LISTINGS) * 4} rows read from results.backtest" in page and f"P{tag}ZZZ" in page
    assert (report / "equity.png").stat().st_size > 10_000  # five curves drawn, not an empty frame


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_cancel_stops_the_worker_promptly(plane: Plane, bars: pd.DataFrame) -> None:
    """A long grid (49k parameter sets): cancelled while simulating, the worker drops it within
    seconds (engine chunks are bounded), and nothing is published for it."""
    spec = _spec(bars, params={"fast": list(range(2, 102)), "slow": list(range(102, 592))}, max_grid=100_000)
    job_id = plane.submit("backtest", spec, bypass_cache=True)

    def simulating() -> bool:
        st = plane.job(job_id)
        assert st["state"] in ("queued", "running"), st
        return st["progress"] >= 0.45

    wait_until(simulating, 240, "the job to reach the engine")
    assert http("DELETE", f"{plane.url}/jobs/{job_id}")[0] in (200, 202)
    t0 = time.monotonic()
    wait_until(lambda: not any(r.startswith(job_id) for w in plane.workers() for r in w["running"]), 30,
               "the worker to drop the cancelled job")
    assert time.monotonic() - t0 < 30
    assert plane.job(job_id)["state"] == "cancelled"


def test_consume_reads_past_1001_records_and_result_topics_from_the_beginning(bars: pd.DataFrame,
                                                                            settings: Settings) -> None:
    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.schemas import AvroCodec, schema_store

    rec = {"job_id": "consume-test", "ts_event": 0, "chunk_index": 0, "chunk_count": 1, "rows": [], "curves": []}
    produce_all(make_producer(settings.kafka), "results.backtest",  # a result written before consume starts
                iter([(b"consume-test", AvroCodec(schema_store(settings)).encode("mystocks.backtest.BacktestResult", rec), 0)]))
    r = run_cli("consume", "md.bars.1d", "--from-beginning", "--timeout", "3", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) >= len(bars) > 1001
    r = run_cli("consume", "results.backtest", "--max", "1", "--timeout", "20", timeout=120)
    assert r.returncode == 0 and r.stderr.splitlines()[0].startswith("reading results.backtest from the beginning")
    assert len(r.stdout.splitlines()) == 1  # a result written before this command started
    r = run_cli("consume", "md.bars.1d", "--timeout", "1", timeout=60)
    assert r.returncode == 0 and "from the end" in r.stderr.splitlines()[0] and "--from-beginning" in r.stderr


def test_load_before_topics_create_says_what_to_run(tmp_path: Path, settings: Settings) -> None:
    from mystocks_gpu.topics import all_specs
    from mystocks_gpu.topics.admin import TopicAdmin

    admin = TopicAdmin(settings.kafka)
    admin.delete(["md.bars.1s"])
    wait_until(lambda: "md.bars.1s" not in admin.existing(), 30, "md.bars.1s to be deleted")
    try:
        f = _write(tmp_path / "s.csv", pd.DataFrame({"date": ["2021-01-04T14:30:00"], "ticker": ["X"], "open": [1.0],
                                                     "high": [1.0], "low": [1.0], "close": [1.0], "volume": [1]}))
        r = run_cli("load", str(f), "--topic", "md.bars.1s", timeout=60)
        # checked before producing: not the 30 s delivery timeout and "undelivered records" of before
        assert r.returncode == 2 and "topic md.bars.1s does not exist" in r.stderr
        assert "mystocks-gpu topics create" in r.stderr and "deliver" not in r.stderr
    finally:
        admin.create([s for s in all_specs() if s.name == "md.bars.1s"])
        wait_until(lambda: "md.bars.1s" in admin.existing(), 30, "md.bars.1s to exist again")


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
    # restored for the other tests: the broker applies a config change when the controller's metadata
    # record reaches it, so a describe right after the alter can still show the old value
    wait_until(lambda: admin.describe_configs([res])[res].result(timeout=30)["max.message.bytes"].value == before.value,
               30, f"results.backtest max.message.bytes back to {before.value}")
