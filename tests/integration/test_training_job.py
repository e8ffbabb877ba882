"""Training as a job on the real broker: ``submit train --wait`` replays a feature topic and a
bar topic, prints the metrics table and writes the report; the metrics equal a walk-forward run
with scikit-learn and SciPy on a pandas panel built here; the same job replayed twice gives the
same model hash; the registry CLI lists, shows and exports it; bad input fails with the reason;
a cancel stops training within one boosting round."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge

from mystocks_gpu.gpu_ops.models import WalkForwardConfig, load_model, walk_forward_splits
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.training.model_registry import read_models
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import run_cli, wait_until
from tests.integration.jobs_plane import Plane, http
from tests.ml_data import DAY, Panel, load_panel

WF = {"n_splits": 3, "test_dates": 30, "embargo_dates": 2}


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    p = Plane(settings, uuid.uuid4().hex[:8])
    try:
        p.start_control()
        p.start_worker("mla", "--kinds", "train,backtest,echo", timeout=120)  # imports numba, xgboost, sklearn
        p.warm_up()
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def data(settings: Settings, stack: Any) -> tuple[Panel, str]:
    """Daily feature vectors on a topic of their own and bars on md.bars.1d (symbols unique to
    this run); six vectors have a NaN feature. The dates end yesterday: a replay's end bound is
    the first offset at or after ``end`` (``offsets_for_times``), so the range must be the latest
    event time in the shared bar topic (older bars appended after it are fine)."""
    return load_panel(settings.kafka, "mlf", n_symbols=12, n_dates=160, seed=21, partitions=3, nan_rows=6, nan_seed=2)


def _spec(panel: Panel, topic: str, name: str, **kw: Any) -> dict[str, Any]:
    f = panel.frame
    return {"name": name, "inputs": [topic, "md.bars.1d"], "features": ["f1", "f2", "f3"], "frequency": "1d",
            "label_column": "md.bars.1d:close", "universe": panel.symbols, "start": int(f["ts"].min()),
            "end": int(f["ts"].max()) + DAY, "family": "ridge", "params": {"alpha": 1.0}, "walk_forward": WF} | kw


def _reference(panel: Panel, nan_seqs: set[int]) -> dict[str, Any]:
    """The walk-forward redone with scikit-learn Ridge and per-date correlations from SciPy."""
    f = panel.frame.assign(seq=np.arange(len(panel.frame))).sort_values(["symbol", "ts"]).reset_index(drop=True)
    f["label"] = np.log(f.groupby("symbol")["close"].shift(-1) / f["close"])
    f["label_end"] = f.groupby("symbol")["ts"].shift(-1)
    f.loc[f["seq"].isin(nan_seqs), "f2"] = np.nan
    n_nan = int((f["label"].notna() & f["f2"].isna()).sum())
    f = f.dropna(subset=["f1", "f2", "f3", "label"]).reset_index(drop=True)
    X, y, d = f[["f1", "f2", "f3"]].to_numpy(), f["label"].to_numpy(), f["ts"].to_numpy()
    splits = walk_forward_splits(d, WalkForwardConfig(label_horizon=1, **WF), f["label_end"].to_numpy(np.int64))
    out = []
    for sp in splits:
        pred = Ridge(alpha=1.0).fit(X[sp.train], y[sp.train]).predict(X[sp.test])
        t = pd.DataFrame({"d": d[sp.test], "p": pred, "y": y[sp.test]})
        ic = t.groupby("d").apply(lambda g: np.corrcoef(g["p"], g["y"])[0, 1], include_groups=False)
        ric = t.groupby("d").apply(lambda g: spearmanr(g["p"], g["y"]).statistic, include_groups=False)
        out.append({"n_train": sp.train.size, "n_test": sp.test.size, "mse": float(np.mean((pred - y[sp.test]) ** 2)),
                    "ic_mean": float(ic.mean()), "rank_ic_mean": float(ric.mean())})
    return {"splits": out, "rows": len(f), "nonfinite": n_nan, "X": X, "y": y,
            "final": Ridge(alpha=1.0).fit(X, y)}


def test_submit_train_wait_prints_metrics_writes_report_and_replays_to_the_same_model(
        plane: Plane, data: tuple[Panel, str], settings: Settings, tmp_path: Path) -> None:
    panel, topic = data
    name = f"ml-{uuid.uuid4().hex[:8]}"
    spec_file = tmp_path / "train.json"
    spec_file.write_text(json.dumps(_spec(panel, topic, name)))
    jid = f"train-{uuid.uuid4().hex[:10]}"
    report = tmp_path / "report"
    r = run_cli("submit", "train", "--spec", str(spec_file), "--wait", "--timeout", "600", "--namespace", plane.ns,
                "--job-id", jid, "--report", str(report), timeout=660)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert f"model {name} v1  ridge" in out and "succeeded" in out and "rank_ic_mean" in out
    assert "long-short backtest of the out-of-sample predictions" in out and f"--model {name}" in out
    for png in ("ic.png", "equity.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert name in (report / "index.html").read_text()

    res = plane.job(jid)["result"]
    nan_seqs = {i for i, (_, v, _) in enumerate(panel.feature_records(nan_rows=6, seed=2)) if b"\x00\x00\x00\x00\x00\x00\xf8\x7f" in v}
    ref = _reference(panel, nan_seqs)
    assert res["data"]["rows_used"] == ref["rows"]
    assert res["data"]["rows_dropped"] == {"label_undefined": 12, "nonfinite_features": ref["nonfinite"]}
    assert ref["nonfinite"] > 0
    for got, want in zip(res["splits"], ref["splits"], strict=True):
        assert (got["n_train"], got["n_test"]) == (want["n_train"], want["n_test"])
        for k in ("mse", "ic_mean", "rank_ic_mean"):
            assert got["metrics"][k] == pytest.approx(want[k], rel=1e-7), k
    assert res["model"]["published"] and res["model"]["version"] == 1 and res["long_short"]["symbols"] == 12
    # a line of the printed table per split, plus "all"
    rows = [ln.split() for ln in out.splitlines() if ln.strip()[:2] in ("0 ", "1 ", "2 ", "al")]
    assert len(rows) == 4 and rows[-1][0] == "all"

    # the same job replayed again (cache bypassed): the same model bytes, published as v2
    again = plane.submit("train", _spec(panel, topic, name), bypass_cache=True)
    final = plane.wait(again, {"succeeded", "failed"}, timeout=600)
    assert final["state"] == "succeeded", final
    assert final["result"]["model"]["content_sha256"] == res["model"]["content_sha256"]
    assert final["result"]["model"]["version"] == 2

    # the registry CLI
    lst = run_cli("models", "list", "--json")
    assert lst.returncode == 0, lst.stderr
    row = next(x for x in json.loads(lst.stdout) if x["model"] == name)
    assert row["version"] == 2 and row["versions"] == 2 and row["sha256"] == res["model"]["content_sha256"]
    show = json.loads(run_cli("models", "show", name, "--version", "1", "--json").stdout)
    meta = show["metadata"]
    assert meta["features"] == ["f1", "f2", "f3"] and meta["feature_inputs"]["f1"] == topic
    assert meta["metrics"]["overall"]["rank_ic_mean"] == pytest.approx(res["overall"]["rank_ic_mean"], rel=1e-12)
    assert "numpy" in meta["library_versions"] and meta["training_range"]["start"] == int(panel.frame["ts"].min())
    assert meta["job_id"] == jid and meta["content_sha256"] == res["model"]["content_sha256"]
    path = tmp_path / "m.model"
    ex = run_cli("models", "export", name, "--out", str(path))
    assert ex.returncode == 0, ex.stderr
    blob = path.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == res["model"]["content_sha256"]
    model = load_model(blob, backend="cpu", expected_sha256=res["model"]["content_sha256"])
    np.testing.assert_allclose(model.predict(ref["X"]), ref["final"].predict(ref["X"]), rtol=1e-8, atol=1e-12)
    miss = run_cli("models", "show", "no-such-model")
    assert miss.returncode == 2 and "no model named 'no-such-model'" in miss.stderr


def test_bad_input_fails_with_the_reason(plane: Plane, data: tuple[Panel, str], tmp_path: Path) -> None:
    panel, topic = data
    cases = {
        "unknown feature column 'nope': " + topic + " carries f1, f2, f3, last_price":
            _spec(panel, topic, "bad1", features=["f1", "nope"]),
        "empty range: no record of topic " + topic: _spec(panel, topic, "bad2", start="2010-01-01", end="2010-02-01"),
        "label horizon 400 bars is longer than the data": _spec(panel, topic, "bad3", horizon=400),
    }
    jobs = {reason: plane.submit("train", spec, bypass_cache=True) for reason, spec in cases.items()}
    for reason, jid in jobs.items():
        final = plane.wait(jid, {"succeeded", "failed"}, timeout=240)
        assert final["state"] == "failed" and reason in (final.get("error") or ""), final
    # rejected at submit: a family whose library is missing (the CLI's interpreter blocks the import)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text("import sys\nsys.modules['xgboost'] = None\n")
    spec_file = tmp_path / "gbdt.json"
    spec_file.write_text(json.dumps(_spec(panel, topic, "bad4", family="gbdt", params={})))
    r = run_cli("submit", "train", "--spec", str(spec_file), "--namespace", plane.ns, env={"PYTHONPATH": str(fake)})
    assert r.returncode == 2 and 'pip install -e ".[ml]"' in r.stderr and "Traceback" not in r.stderr, r.stderr
    status, body = http("POST", f"{plane.url}/jobs", {"kind": "train", "spec": _spec(panel, topic, "bad5",
                                                                                      features=["f1", "f1"])})
    assert status == 400 and "names a column twice" in json.dumps(body)


def test_cancel_stops_within_one_boosting_round(plane: Plane, data: tuple[Panel, str], settings: Settings) -> None:
    panel, topic = data
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    jid = plane.submit("train", _spec(panel, topic, name, family="gbdt", seed=3,
                                      params={"n_estimators": 200_000, "max_depth": 2, "learning_rate": 0.001}),
                       bypass_cache=True)
    plane.wait(jid, {"running"}, timeout=120)
    end = wait_until(lambda: (j := plane.job(jid)) and "round" in (j.get("message") or "") and j, 120,
                     "a boosting round reported")
    assert "split 1/3: round" in end["message"]
    status, _ = http("DELETE", f"{plane.url}/jobs/{jid}")
    assert status in (200, 202)
    final = plane.wait(jid, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert final["state"] == "cancelled", final
    assert name not in read_models(settings.kafka, name=name)  # nothing published


def test_end_to_end_ticks_features_train_signals_backtest(plane: Plane, settings: Settings, unique: str) -> None:
    """(Deadlines of 600 s: a busy shared machine; a quiet one takes seconds.)
    Ticks -> ``run features`` -> ``train`` on the feature vectors with the 1-second bars as the
    label price -> ``run signals`` -> a ``backtest`` job with the ``signal`` strategy on the scores.
    The scores equal the published model's predict on the replayed vectors; the backtest equals the
    engine run on bars and scores aligned here with pandas."""
    from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
    from mystocks_gpu.gpu_ops.backtest import run_backtest
    from mystocks_gpu.processors.backtest.spec import BacktestSpec
    from mystocks_gpu.processors.training.model_registry import get_model
    from tests.integration.stream_helpers import produce_ticks, read_finished

    seed = 4000 + int(unique[:4], 16) % 1000
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=20)).value  # the latest event times (see `data`)
    names = symbol_names(16, seed)
    cols = generate(SyntheticMarket(n_symbols=16, seed=seed, start_ns=start, events_per_s=120.0, zipf_s=0.3), 20_000)
    ticks, feats = f"t.e2e.ticks.{unique}", f"t.e2e.feat.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(ticks, "symbol", "mystocks.md.Tick", partitions=2),
                                       TopicSpec(f"{ticks}.dlq", "symbol", None, partitions=1, dlq=False),
                                       TopicSpec(feats, "symbol", "mystocks.features.FeatureVector", partitions=2),
                                       TopicSpec(f"{feats}.dlq", "symbol", None, partitions=1, dlq=False)])
    assert produce_ticks(settings, ticks, cols, names) == 20_000
    r = run_cli("run", "features", "--input-topic", ticks, "--output-topic", feats, "--group", f"g.f.{unique}",
                "--idle-exit", "4", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    t0, t1 = int(cols["ts"].min()), int(cols["ts"].max()) + 1
    # no `end`: the replay's end bound (offsets_for_times) would stop at the first transaction marker
    # of md.bars.1s stamped after `end` (markers carry the commit's wall-clock time); the universe and
    # `start` isolate this test's rows, and the signal run has written every row before the replays
    name = f"e2e-{unique}"
    spec = {"name": name, "inputs": [feats, "md.bars.1s"], "features": ["ret", "roll_z", "rsi", "book_imb", "flow_imb"],
            "frequency": "1s", "label_column": "md.bars.1s:close", "horizon": 5, "universe": names, "start": t0,
            "family": "ridge", "params": {"alpha": 10.0},
            "walk_forward": {"n_splits": 2, "test_dates": 50, "embargo_dates": 2}}
    final = plane.wait(plane.submit("train", spec, bypass_cache=True), {"succeeded", "failed"}, timeout=600)
    assert final["state"] == "succeeded", final
    res = final["result"]
    assert res["data"]["symbols"] == 16 and res["data"]["dates"] > 150 and res["model"]["signals_topic"] == f"signals.{name}"
    r = run_cli("run", "signals", "--model", name, "--input-topic", feats, "--group", f"g.s.{unique}",
                "--idle-exit", "4", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    vectors = [x.value for x in read_finished(settings.kafka, feats)]
    sig = pd.DataFrame([x.value for x in read_finished(settings.kafka, f"signals.{name}")])
    assert len(sig) == len(vectors) == 20_000 and set(sig["model_version"]) == {1}
    assert not sig.duplicated(["symbol", "seq"]).any()  # a tick's seq is per symbol
    mv = get_model(settings.kafka, name)
    model = load_model(mv.blob, backend="cpu", expected_sha256=mv.content_sha256)
    by_key = {(v["symbol"], v["seq"]): [v["values"][f] for f in spec["features"]] for v in vectors}
    X = np.array([by_key[k] for k in zip(sig["symbol"], sig["seq"], strict=True)])
    ok = np.isfinite(X).all(axis=1)
    assert ok.sum() > 15_000
    np.testing.assert_array_equal(sig["score"].to_numpy()[ok], model.predict(X[ok]))
    assert np.isnan(sig["score"].to_numpy()[~ok]).all()

    bt = {"universe": names, "start": t0, "bar_topic": "md.bars.1s", "strategy": "signal",
          "params": {"threshold_long": [0.0], "threshold_exit": [0.0]}, "direction": "long_short",
          "signal_topic": f"signals.{name}", "signal_column": "score", "fees": 0.0, "n_curves": 1}
    done = plane.wait(plane.submit("backtest", bt, bypass_cache=True), {"succeeded", "failed"}, timeout=600)
    assert done["state"] == "succeeded", done
    bars = pd.DataFrame([x.value for x in read_finished(settings.kafka, "md.bars.1s")
                         if x.value and x.value["symbol"] in set(names) and t0 <= x.value["ts_event"] < t1])
    bars = bars.drop_duplicates(["symbol", "ts_event"], keep="last")
    ts = np.sort(bars["ts_event"].unique())
    mats = {c: bars.pivot(index="symbol", columns="ts_event", values=c).reindex(index=names, columns=ts).to_numpy()
            for c in ("open", "high", "low", "close")}
    s = sig.rename(columns={"ts_event": "ts"}).sort_values("ts")
    aligned = np.full((len(names), ts.size), np.nan)
    for i, n in enumerate(names):
        g = s[s["symbol"] == n][["ts", "score"]]
        aligned[i] = pd.merge_asof(pd.DataFrame({"ts": ts}), g, on="ts", direction="backward")["score"].to_numpy()
    mats["signal"] = aligned
    want = run_backtest(mats, names, ts, BacktestSpec.from_dict(bt), backend="cpu")
    top = done["result"]["top"]
    want_rows = {r["symbol"]: r for r in want.rows(len(want.stats))}
    assert len(top) == min(len(names), 20)
    for row in top:
        assert row["total_return"] == pytest.approx(want_rows[row["symbol"]]["total_return"], rel=1e-9, abs=1e-12)
        assert row["n_trades"] == want_rows[row["symbol"]]["n_trades"]
