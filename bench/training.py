"""Benchmark: model training and batched inference (workload 3), ours vs the libraries called
directly on a pandas frame, in one run.

In-memory parts (this phase):

- training throughput (rows/s) of every family: ours (``make_model(...).fit`` on NumPy arrays:
  numba / CuPy coordinate descent, the scikit-learn forest grown in rounds, XGBoost through its
  native API, the PyTorch loop) vs the same library called directly on a ``pandas.DataFrame``
  (scikit-learn ``Ridge`` / ``Lasso`` / ``ElasticNet`` / ``RandomForestRegressor``,
  ``xgboost.XGBRegressor``, a plain PyTorch loop over ``torch.tensor(df.values)``), same
  hyper-parameters (linear families on float64 data on both sides, the others on float32);
  ``max_abs_diff_vs_sklearn`` = largest |coef / prediction difference| of the
  linear families against scikit-learn (both run to tol 1e-10);
- inference: batched ``predict`` (``--batch`` rows per call, p50 / p99 latency per batch, rows/s)
  vs a per-record ``predict`` loop (``ratio_vs_per_record``, goal >= 50) and vs the library's own
  ``predict`` on a DataFrame batch;
- ``--gpu``: ridge and gbdt on ``--gpu-rows`` (default 10M) x ``--gpu-features`` (100) rows,
  GPU vs CPU fit time and the largest prediction difference (skipped, with the reason, without a
  CUDA device).

Job and stream parts:

- ``signals``: the ``signals`` stream processor's ``process()`` on real decoded feature-vector
  batches (``--batch`` rows; output encoding included, decoding timed apart as ``with_decode``)
  vs a per-record ``predict`` loop (``ratio_vs_per_record``, goal >= 50: the JSON's top-level
  field is the smallest over the families) and vs the library's model on a pandas batch;
- ``replay``: the train job's data path (``ReplaySource`` over a feature topic -> batch decoder
  -> panel -> labels -> row policy) plus our fit, vs the same library fit on an in-memory
  DataFrame of the same rows (``overhead_vs_inmemory``, goal <= 1.3; headline: ``gbdt``, whose
  fit is not milliseconds; ridge is reported too). Needs the local stack (``stack up``);
  ``--no-replay`` skips it.

Warm-up fits on tiny data run first (numba compilation, torch / XGBoost initialisation are not
timed). Wall-clock ratios depend on other load: the JSON records the load average. On a machine
shared with other work, run with ``--threads 1``: OpenMP / torch thread pools that spin while
oversubscribed can slow both sides by 10x.

    python bench/training.py --quick --json bench/out/training.json
    python bench/training.py --rows 1000000 --features 64 --json out.json
    python bench/training.py --gpu --json out.json          # on a CUDA machine
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402

from mystocks_gpu.gpu_ops.backend import gpu_available  # noqa: E402
from mystocks_gpu.gpu_ops.models import FAMILIES, Model, make_model  # noqa: E402

LINEAR = ("ridge", "lasso", "elastic_net")
LIB = {"random_forest": "sklearn", "gbdt": "xgboost", "mlp": "torch", "gru": "torch"}


def family_params(family: str, quick: bool) -> dict[str, Any]:
    """Hyper-parameters used for both ours and the baseline."""
    table: dict[str, dict[str, Any]] = {
        "ridge": {"alpha": 1.0},
        "lasso": {"alpha": 1e-3, "tol": 1e-10, "max_iter": 10_000},
        "elastic_net": {"alpha": 1e-3, "l1_ratio": 0.5, "tol": 1e-10, "max_iter": 10_000},
        "random_forest": {"n_estimators": 16 if quick else 48, "max_depth": 10, "max_features": 0.5,
                          "seed": 0},
        "gbdt": {"n_estimators": 30 if quick else 100, "max_depth": 6, "learning_rate": 0.1, "seed": 0},
        "mlp": {"hidden_sizes": [64, 32], "epochs": 2, "batch_size": 1024, "seed": 0,
                "mixed_precision": "off"},
        "gru": {"seq_len": 4, "hidden_size": 32, "epochs": 1, "batch_size": 1024, "seed": 0,
                "mixed_precision": "off"},
    }
    return table[family]


def synthetic(n: int, p: int, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """float32 features (n, p), a linear + interaction signal with noise; y float64."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p), dtype=np.float32)
    w = rng.normal(size=p) * (rng.random(p) < 0.5)
    y = rng.normal(scale=1.0, size=n)
    for s in range(0, n, 1 << 20):  # chunked: no float64 copy of a 10M-row X
        part = X[s:s + (1 << 20)]
        y[s:s + part.shape[0]] += part.astype(np.float64) @ w + 0.5 * np.tanh(part[:, 0] * part[:, 1])
    return X, y


# ---- baselines: the library called directly on a DataFrame --------------------------------------
def baseline_estimator(family: str, p: dict[str, Any], threads: int) -> Any:
    if family in LINEAR:
        from sklearn.linear_model import ElasticNet, Lasso, Ridge

        if family == "ridge":
            return Ridge(alpha=p["alpha"])
        if family == "lasso":
            return Lasso(alpha=p["alpha"], tol=p["tol"], max_iter=p["max_iter"])
        return ElasticNet(alpha=p["alpha"], l1_ratio=p["l1_ratio"], tol=p["tol"], max_iter=p["max_iter"])
    if family == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                                     max_features=p["max_features"], random_state=p["seed"], n_jobs=threads)
    if family == "gbdt":
        import xgboost as xgb

        return xgb.XGBRegressor(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                                learning_rate=p["learning_rate"], random_state=p["seed"],
                                tree_method="hist", n_jobs=threads)
    return TorchBaseline(family, p)


class TorchBaseline:
    """A plain PyTorch training loop on ``torch.tensor(df.values)`` (Adam, MSE, shuffled batches)."""

    def __init__(self, family: str, p: dict[str, Any]) -> None:
        self.family, self.p = family, p
        self.net: Any = None

    def _net(self, n_in: int) -> Any:
        import torch

        p = self.p
        if self.family == "mlp":
            layers: list[Any] = []
            for h in p["hidden_sizes"]:
                layers += [torch.nn.Linear(n_in, h), torch.nn.ReLU()]
                n_in = h
            return torch.nn.Sequential(*layers, torch.nn.Linear(n_in, 1))
        steps, step = p["seq_len"], n_in // p["seq_len"]

        class Net(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.gru = torch.nn.GRU(step, p["hidden_size"], batch_first=True)
                self.head = torch.nn.Linear(p["hidden_size"], 1)

            def forward(self, x: Any) -> Any:
                out, _ = self.gru(x.reshape(x.shape[0], steps, step))
                return self.head(out[:, -1])

        return Net()

    def fit(self, df: pd.DataFrame, y: np.ndarray) -> TorchBaseline:
        import torch

        torch.manual_seed(self.p["seed"])
        X = torch.tensor(df.values, dtype=torch.float32)
        t = torch.tensor(y, dtype=torch.float32)
        self.net = self._net(X.shape[1])
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        bs = self.p["batch_size"]
        for _ in range(self.p["epochs"]):
            perm = torch.randperm(X.shape[0])
            for s in range(0, X.shape[0], bs):
                idx = perm[s:s + bs]
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(self.net(X[idx]).reshape(-1), t[idx])
                loss.backward()
                opt.step()
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.net(torch.tensor(df.values, dtype=torch.float32)).reshape(-1).numpy()


# ---- measurements --------------------------------------------------------------------------------
def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_training(family: str, X: np.ndarray, y: np.ndarray, quick: bool, threads: int) -> tuple[dict[str, Any], Model]:
    p = family_params(family, quick)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    Xw, yw = X[:512], y[:512]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_model(family, p, backend="cpu", n_threads=threads).fit(Xw, yw)  # warm-up
        baseline_estimator(family, p, threads).fit(df.iloc[:512], yw)
        ours_s, model = timed(lambda: make_model(family, p, backend="cpu", n_threads=threads).fit(X, y))
        base_s, est = timed(lambda: baseline_estimator(family, p, threads).fit(df, y))
    n = X.shape[0]
    row: dict[str, Any] = {
        "rows": n, "features": X.shape[1], "params": p, "engine": model.fit_info.engine if model.fit_info else None,
        "ours_s": ours_s, "baseline_s": base_s, "ours_rows_s": n / ours_s, "baseline_rows_s": n / base_s,
        "ratio_vs_baseline": base_s / ours_s,
        "baseline": type(est).__module__.split(".")[0] + "." + type(est).__name__ + " on DataFrame",
    }
    if family in LINEAR:
        coef_diff = float(np.abs(model.coef_ - est.coef_).max())  # type: ignore[attr-defined]
        pred_diff = float(np.abs(model.predict(X[:10_000]) - est.predict(df.iloc[:10_000])).max())
        row["max_abs_diff_vs_sklearn"] = max(coef_diff, pred_diff)
        row["coef_max_abs_diff"] = coef_diff
    row["_est"] = est
    return row, model


def bench_inference(family: str, model: Model, est: Any, X: np.ndarray, batch: int, n_batches: int,
                    per_record: int) -> dict[str, Any]:
    lat = []
    n_b = min(n_batches, max(1, X.shape[0] // batch))
    model.predict(X[:batch])  # warm-up
    for i in range(n_b):
        s, _ = timed(lambda i=i: model.predict(X[i * batch:(i + 1) * batch]))
        lat.append(s)
    lat_a = np.array(lat)
    batched_rows_s = batch * n_b / lat_a.sum()
    k = min(per_record, X.shape[0])
    t0 = time.perf_counter()
    for i in range(k):
        model.predict(X[i:i + 1])
    per_rec_rows_s = k / (time.perf_counter() - t0)
    df = pd.DataFrame(X[:batch], columns=[f"f{i}" for i in range(X.shape[1])])
    est.predict(df)
    lib_s = min(timed(lambda: est.predict(df))[0] for _ in range(3))
    return {
        "batch_rows": batch, "batches": n_b, "batched_rows_s": batched_rows_s,
        "p50_batch_ms": float(np.percentile(lat_a, 50) * 1e3),
        "p99_batch_ms": float(np.percentile(lat_a, 99) * 1e3),
        "per_record_rows_s": per_rec_rows_s, "per_record_n": k,
        "ratio_vs_per_record": batched_rows_s / per_rec_rows_s,
        "library_on_pandas_rows_s": batch / lib_s,
        "ratio_vs_library_on_pandas": batched_rows_s / (batch / lib_s),
    }


def bench_gpu(rows: int, features: int, rounds: int) -> dict[str, Any]:
    """ridge and gbdt GPU vs CPU on ``rows`` x ``features`` float32 (CuPy-resident input)."""
    ok, why = gpu_available()
    if not ok:
        return {"skipped": f"no CUDA device: {why}"}
    import cupy as cp

    X, y = synthetic(rows, features, seed=7)
    Xd, yd = cp.asarray(X), cp.asarray(y)
    out: dict[str, Any] = {"rows": rows, "features": features, "device": why}
    for family, p in (("ridge", {"alpha": 1.0}),
                      ("gbdt", {"n_estimators": rounds, "max_depth": 6, "learning_rate": 0.1, "seed": 0})):
        make_model(family, p, backend="gpu").fit(Xd[:10_000], yd[:10_000])  # warm-up
        cp.cuda.Device().synchronize()
        gpu_s, gm = timed(lambda f=family, p=p: make_model(f, p, backend="gpu").fit(Xd, yd))
        cpu_s, cm = timed(lambda f=family, p=p: make_model(f, p, backend="cpu").fit(X, y))
        sample = X[:1_000_000]
        gp, cpp = gm.predict(sample), cm.predict(sample)
        out[family] = {"gpu_fit_s": gpu_s, "cpu_fit_s": cpu_s, "speedup": cpu_s / gpu_s,
                       "gpu_rows_s": rows / gpu_s, "cpu_rows_s": rows / cpu_s,
                       "pred_max_abs_diff": float(np.abs(gp - cpp).max()),
                       "pred_corr": float(np.corrcoef(gp, cpp)[0, 1]),
                       "mse_gpu": float(np.mean((gp - y[:1_000_000]) ** 2)),
                       "mse_cpu": float(np.mean((cpp - y[:1_000_000]) ** 2))}
        if family == "ridge":
            out[family]["coef_max_abs_diff"] = float(np.abs(gm.coef_ - cm.coef_).max())  # type: ignore[attr-defined]
    return out


# ---- the replay path (phase 2): the train job's data path vs an in-memory frame -------------------
def replay_data(rows: int, p: int, symbols: int, seed: int = 99) -> tuple[dict[str, np.ndarray], list[str]]:
    """A daily panel: ``symbols`` x ``rows // symbols`` dates of ``p`` features and a price whose
    next log return is a linear + interaction function of today's features plus noise."""
    rng = np.random.default_rng(seed)
    d = rows // symbols
    X = rng.standard_normal((symbols, d, p))
    w = rng.normal(size=p) * (rng.random(p) < 0.5) * 0.002
    r = np.zeros((symbols, d))
    r[:, 1:] = X[:, :-1] @ w + 0.001 * np.tanh(X[:, :-1, 0] * X[:, :-1, 1]) + rng.normal(0, 0.01, (symbols, d - 1))
    price = 50.0 * np.exp(np.cumsum(r, axis=1))
    days = (np.datetime64("2001-01-01", "ns").astype(np.int64) + np.arange(d, dtype=np.int64) * 86_400 * 10**9)
    names = [f"B{i:04d}" for i in range(symbols)]
    return {"sym": np.repeat(np.arange(symbols), d), "ts": np.tile(days, symbols), "X": X.reshape(-1, p),
            "price": price.reshape(-1), "r_next": np.concatenate([r[:, 1:], np.full((symbols, 1), np.nan)], axis=1)
            .reshape(-1)}, names


def replay_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """The train job's data path (``ReplaySource`` over a feature topic -> FeatureVector batch
    decoder -> panel -> labels -> row policy, :func:`load_training_data`) plus our fit, against
    the library fed from an in-memory pandas frame of the same rows: ``overhead_vs_inmemory =
    (replay_s + fit_s) / library_fit_s`` per family; the headline is ``gbdt`` (the family whose
    fit is not milliseconds). Needs the local stack (``mystocks-gpu stack up``)."""
    from mystocks_gpu.exceptions import MyStocksError
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.infra.kafka_clients import ensure_broker, make_producer, produce_all
    from mystocks_gpu.processors.training.train_spec import TrainSpec
    from mystocks_gpu.processors.training.training_data import load_training_data
    from mystocks_gpu.schemas.batch_codec import BatchEncoder
    from mystocks_gpu.topics import TopicSpec
    from mystocks_gpu.topics.admin import TopicAdmin

    s = load_settings()
    try:
        ensure_broker(s.kafka)
    except MyStocksError as exc:
        return {"overhead_vs_inmemory": None, "status": f"skipped: {exc}"}
    cols, names = replay_data(args.replay_rows, args.features, args.replay_symbols)
    keys = [f"f{i}" for i in range(args.features)]
    tag = C.new_tag()
    topic = f"bench.train.{tag}"
    TopicAdmin(s.kafka).create([TopicSpec(topic, "symbol", "mystocks.features.FeatureVector", partitions=4, dlq=False)])
    vals = BatchEncoder("mystocks.features.FeatureVector").encode(
        {"symbol": cols["sym"], "ts_event": cols["ts"], "seq": np.arange(cols["ts"].size), "ts_ingest": cols["ts"],
         "values": np.column_stack([cols["X"], cols["price"]])}, names, map_keys=(*keys, "last_price"))
    items = zip([names[i].encode() for i in cols["sym"].tolist()], vals, (cols["ts"] // 10**6).tolist(), strict=True)
    produce_all(make_producer(s.kafka), topic, items)
    # the same rows in memory, in the job's order (symbol name, date), last date of each symbol unlabelled
    keep = np.isfinite(cols["r_next"])
    p_now = cols["price"]
    p_next = np.r_[p_now[1:], np.nan]
    X_mem, y_mem = cols["X"][keep], np.log(p_next / p_now)[keep]  # the job's label: log(p[t+1] / p[t])
    out: dict[str, Any] = {"rows": int(keep.sum()), "records": int(cols["ts"].size), "features": args.features,
                           "symbols": args.replay_symbols, "topic_partitions": 4, "families": {}}
    try:
        for fam in ("gbdt", "ridge"):
            if fam == "gbdt" and importlib.util.find_spec("xgboost") is None:
                out["families"][fam] = {"skipped": "xgboost not installed"}
                continue
            p = family_params(fam, args.quick)
            spec = cast(TrainSpec, TrainSpec.from_dict({"name": f"bench-{tag}", "inputs": [topic], "features": keys, "frequency": "1d",
                                        "label_column": "last_price", "family": fam, "params": p, "publish": False,
                                        "backtest": False, "walk_forward": {"n_splits": 1, "test_dates": 1}}))
            load_training_data(spec, s.kafka)  # warm-up: decoder compile, consumer start
            t0 = time.perf_counter()
            data = load_training_data(spec, s.kafka)
            t1 = time.perf_counter()
            model = make_model(fam, p, backend="cpu", n_threads=args.threads).fit(data.X, data.y)
            t2 = time.perf_counter()
            df = pd.DataFrame(X_mem, columns=keys)
            est = baseline_estimator(fam, p, args.threads)
            est.fit(df.iloc[:512], y_mem[:512])
            t3 = time.perf_counter()
            est.fit(df, y_mem)
            lib_s = time.perf_counter() - t3
            assert data.X.shape == X_mem.shape, (data.X.shape, X_mem.shape)
            ours_s = t2 - t0
            out["families"][fam] = {
                "replay_s": t1 - t0, "replay_rows_s": data.X.shape[0] / (t1 - t0), "fit_s": t2 - t1, "ours_total_s": ours_s,
                "library_inmemory_s": lib_s, "overhead_vs_inmemory": ours_s / lib_s,
                "same_rows": bool(np.array_equal(data.X, X_mem)),
                "label_max_abs_diff": float(np.abs(data.y - y_mem).max()),
                "pred_max_abs_diff": float(np.abs(model.predict(X_mem[:20_000]) - est.predict(df.iloc[:20_000])).max())}
    finally:
        C.cleanup(s, tag)
    head = out["families"].get("gbdt", {})
    out["overhead_vs_inmemory"] = head.get("overhead_vs_inmemory")
    out["status"] = "measured (headline: gbdt)"
    return out


# ---- the signals processor: process() on real batches vs a per-record predict loop ----------------
def signals_inference(args: argparse.Namespace, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """``SignalsProcessor.process`` on decoded FeatureVector batches of ``--batch`` rows (decode
    not timed; timed separately as ``with_decode``) vs a per-record ``Model.predict`` loop and vs
    the library's own model predicting a pandas DataFrame batch (scikit-learn ``Ridge``;
    ``xgboost.XGBRegressor``)."""
    import hashlib

    from mystocks_gpu.processors.training.model_registry import ModelVersion
    from mystocks_gpu.processors.training.model_source import InMemoryModelSource
    from mystocks_gpu.processors.training.signals_processor import SignalsConfig, SignalsProcessor
    from mystocks_gpu.schemas.batch_codec import BatchEncoder
    from mystocks_gpu.schemas.symbols import SymbolTable

    p = X.shape[1]
    keys = [f"f{i}" for i in range(p)]
    n_b = args.batches
    n = args.batch * n_b
    Xs = np.ascontiguousarray(np.resize(X, (n, p)), dtype=np.float64)  # rows repeated when X is shorter
    names = [f"S{i:03d}" for i in range(500)]
    enc = BatchEncoder("mystocks.features.FeatureVector")
    values: list[bytes | None] = list(enc.encode({"symbol": np.arange(n) % 500, "ts_event": np.arange(n, dtype=np.int64) * 1000,
                                                  "seq": np.arange(n), "ts_ingest": np.zeros(n, np.int64), "values": Xs},
                                                 names, map_keys=keys))
    out: dict[str, Any] = {}
    for fam in ("ridge", "gbdt"):
        if fam == "gbdt" and importlib.util.find_spec("xgboost") is None:
            continue
        prm = family_params(fam, args.quick)
        model = make_model(fam, prm, backend="cpu", n_threads=args.threads).fit(X[:50_000], y[:50_000])
        blob = model.to_bytes()
        mv = ModelVersion("bench", 1, hashlib.sha256(blob).hexdigest(), {"features": keys}, blob, 0, 0)
        proc = SignalsProcessor(SignalsConfig("bench", backend="cpu"), InMemoryModelSource([mv]))
        symbols = SymbolTable()
        proc.decode(values[:64], np.arange(64), SymbolTable(), 0, 0)  # warm-up (decoder compile / load)
        batches = []
        dec_s = []
        for b in range(n_b):
            idx = np.arange(b * args.batch, (b + 1) * args.batch)
            t0 = time.perf_counter()
            batches.append(proc.decode(values[b * args.batch:(b + 1) * args.batch], idx, symbols, 0, 0).columns)
            dec_s.append(time.perf_counter() - t0)
        state = proc.initial_state()
        proc.process(batches[0], state)  # warm-up
        model.predict(Xs[:1])
        # interleaved: each batch's process() then a slice of the per-record loop, so a machine whose
        # load changes during the run weighs on both sides alike
        k_b = max(1, min(args.per_record, n) // n_b)
        lat, rec_s, scores = [], 0.0, []
        for b, cols in enumerate(batches):
            t0 = time.perf_counter()
            o, state = proc.process(cols, state)
            lat.append(time.perf_counter() - t0)
            scores.append(o)
            base = b * args.batch
            t0 = time.perf_counter()
            for i in range(base, base + k_b):
                model.predict(Xs[i:i + 1])
            rec_s += time.perf_counter() - t0
        lat_a = np.asarray(lat)
        rows_s = n / lat_a.sum()
        k = k_b * n_b
        per_rec = k / rec_s
        est = baseline_estimator(fam, prm, args.threads).fit(pd.DataFrame(X[:50_000], columns=keys), y[:50_000])
        df = pd.DataFrame(Xs[:args.batch], columns=keys)
        est.predict(df)
        lib_s = min(timed(lambda est=est, df=df: est.predict(df))[0] for _ in range(5))
        from mystocks_gpu.schemas import AvroCodec

        got = [AvroCodec().decode(v)["score"] for v in scores[0].records["signals.bench"][1][:256]]
        out[fam] = {"batch_rows": args.batch, "batches": n_b, "rows_s": rows_s,
                    "p50_batch_ms": float(np.percentile(lat_a, 50) * 1e3),
                    "p99_batch_ms": float(np.percentile(lat_a, 99) * 1e3),
                    "with_decode_rows_s": n / (lat_a.sum() + sum(dec_s)),
                    "per_record_rows_s": per_rec, "per_record_n": k, "ratio_vs_per_record": rows_s / per_rec,
                    "library_on_pandas": type(est).__module__.split(".")[0] + "." + type(est).__name__,
                    "library_on_pandas_rows_s": args.batch / lib_s, "ratio_vs_library_on_pandas": rows_s / (args.batch / lib_s),
                    "scores_equal_predict": bool(np.array_equal(got, model.predict(Xs[:256])))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="training rows (default 200 000)")
    ap.add_argument("--features", type=int, default=32, help="features (default 32)")
    ap.add_argument("--forest-rows", type=int, default=50_000, help="rows for random_forest (default 50 000)")
    ap.add_argument("--nn-rows", type=int, default=100_000, help="rows for mlp / gru (default 100 000)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both sides")
    ap.add_argument("--batch", type=int, default=4096, help="rows per predict batch (default 4096)")
    ap.add_argument("--batches", type=int, default=50, help="timed predict batches (default 50)")
    ap.add_argument("--per-record", type=int, default=2000, help="records in the per-record loop")
    ap.add_argument("--quick", action="store_true", help="small sizes (20k rows x 16 features)")
    ap.add_argument("--gpu", action="store_true", help="also ridge + gbdt GPU vs CPU at --gpu-rows")
    ap.add_argument("--gpu-rows", type=int, default=10_000_000)
    ap.add_argument("--gpu-features", type=int, default=100)
    ap.add_argument("--gpu-rounds", type=int, default=50, help="gbdt boosting rounds in --gpu")
    ap.add_argument("--replay-rows", type=int, default=200_000, help="rows of the replay-path part (default 200 000)")
    ap.add_argument("--replay-symbols", type=int, default=200, help="symbols of the replay-path part (default 200)")
    ap.add_argument("--no-replay", action="store_true", help="skip the replay-path part (needs the local stack)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.features, args.forest_rows, args.nn_rows = 20_000, 16, 10_000, 10_000
        args.batches, args.per_record, args.replay_rows, args.replay_symbols = 20, 500, 50_000, 100
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")

    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(args.threads)  # both sides' torch work, predict included
    load_start = os.getloadavg()[0]
    X_all, y_all = synthetic(args.rows, args.features)
    res: dict[str, Any] = {"machine": C.machine(), "threads": args.threads, "training": {},
                           "inference": {}, "skipped": {}}
    for fam in families:
        lib = LIB.get(fam)
        if lib and importlib.util.find_spec(lib) is None:
            res["skipped"][fam] = f"{lib} not installed"
            continue
        n = {"random_forest": args.forest_rows, "mlp": args.nn_rows, "gru": args.nn_rows}.get(fam, args.rows)
        # linear models solve in float64 (ours always does; scikit-learn would stay in float32)
        X, y = (X_all[:n].astype(np.float64) if fam in LINEAR else X_all[:n]), y_all[:n]
        print(f"  {fam}: training on {n:,} x {args.features} ...", flush=True)
        row, model = bench_training(fam, X, y, args.quick, args.threads)
        est = row.pop("_est")
        res["training"][fam] = row
        res["inference"][fam] = bench_inference(fam, model, est, X_all.astype(X.dtype), args.batch,
                                                args.batches, args.per_record)
    if args.gpu:
        print(f"  gpu: ridge + gbdt on {args.gpu_rows:,} x {args.gpu_features} ...", flush=True)
        res["gpu"] = bench_gpu(args.gpu_rows, args.gpu_features, args.gpu_rounds)
    print("  signals processor: process() on decoded feature-vector batches ...", flush=True)
    res["signals"] = signals_inference(args, X_all, y_all)
    if args.no_replay:
        res["replay"] = {"overhead_vs_inmemory": None, "status": "skipped (--no-replay)"}
    else:
        print(f"  replay path: {args.replay_rows:,} rows x {args.features} features through a topic ...", flush=True)
        res["replay"] = replay_overhead(args)
    lin = [r["max_abs_diff_vs_sklearn"] for f, r in res["training"].items() if f in LINEAR]
    res["max_abs_diff_vs_sklearn"] = max(lin) if lin else None
    rpr = [r["ratio_vs_per_record"] for r in res["inference"].values()]
    res["predict_ratio_vs_per_record"] = min(rpr) if rpr else None
    spr = [r["ratio_vs_per_record"] for r in res["signals"].values()]
    res["ratio_vs_per_record"] = min(spr) if spr else None
    res["overhead_vs_inmemory"] = res["replay"]["overhead_vs_inmemory"]
    res["loadavg_1min"] = {"start": load_start, "end": os.getloadavg()[0]}

    print("\ntraining (rows/s; ratio = ours / library on pandas)")
    C.print_table(["family", "rows", "ours rows/s", "library rows/s", "ratio", "max|diff| vs sklearn"],
                  [[f, r["rows"], r["ours_rows_s"], r["baseline_rows_s"], r["ratio_vs_baseline"],
                    r.get("max_abs_diff_vs_sklearn")] for f, r in res["training"].items()])
    print(f"\ninference (batches of {args.batch} rows)")
    C.print_table(["family", "batched rows/s", "p50 ms", "p99 ms", "per-record rows/s", "ratio_vs_per_record",
                   "library rows/s", "ratio vs library"],
                  [[f, r["batched_rows_s"], r["p50_batch_ms"], r["p99_batch_ms"], r["per_record_rows_s"],
                    r["ratio_vs_per_record"], r["library_on_pandas_rows_s"], r["ratio_vs_library_on_pandas"]]
                   for f, r in res["inference"].items()])
    print(f"\nsignals processor (process() on batches of {args.batch} decoded feature vectors)")
    C.print_table(["family", "rows/s", "p50 ms", "p99 ms", "with decode rows/s", "per-record rows/s",
                   "ratio_vs_per_record", "library on pandas rows/s", "ratio vs library", "== predict"],
                  [[f, r["rows_s"], r["p50_batch_ms"], r["p99_batch_ms"], r["with_decode_rows_s"], r["per_record_rows_s"],
                    r["ratio_vs_per_record"], r["library_on_pandas_rows_s"], r["ratio_vs_library_on_pandas"],
                    r["scores_equal_predict"]] for f, r in res["signals"].items()])
    fams = res["replay"].get("families") or {}
    if fams:
        print(f"\nreplay path ({res['replay']['rows']:,} rows x {res['replay']['features']} features from a topic) "
              "vs the library on an in-memory DataFrame")
        C.print_table(["family", "replay s", "replay rows/s", "fit s", "ours total s", "library s",
                       "overhead_vs_inmemory", "same rows", "max|pred diff|"],
                      [[f, r.get("replay_s"), r.get("replay_rows_s"), r.get("fit_s"), r.get("ours_total_s"),
                        r.get("library_inmemory_s"), r.get("overhead_vs_inmemory"), r.get("same_rows"),
                        r.get("pred_max_abs_diff")] for f, r in fams.items()])
    if res["skipped"]:
        print(f"\nskipped: {res['skipped']}")
    if "gpu" in res:
        print(f"\ngpu: {res['gpu']}")
    print(f"\nmax_abs_diff_vs_sklearn = {C.fmt(res['max_abs_diff_vs_sklearn'])}   "
          f"ratio_vs_per_record (min) = {C.fmt(res['ratio_vs_per_record'])}   "
          f"overhead_vs_inmemory (gbdt) = {C.fmt(res['overhead_vs_inmemory'])} ({res['replay']['status']})")
    C.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
