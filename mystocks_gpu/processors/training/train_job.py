"""Job kind ``train``: walk-forward training on topics replayed from Kafka, a long-short backtest
of the out-of-sample predictions, and the final model published to the registry.

``mystocks-gpu submit train --spec SPEC.json --wait [--report DIR]`` (or a ``JobCommand`` with
``kind="train"`` on ``cmd.jobs``; spec: :class:`~.train_spec.TrainSpec`). Placement policy
``training`` (the device with the most free memory). A run:

1. replays ``inputs`` over ``[start, end)`` into the labelled panel
   (:func:`~.training_data.load_training_data`; progress 0-10 %);
2. walk-forward (:func:`~mystocks_gpu.gpu_ops.models.run_walk_forward`): a fresh model per split
   fitted on its training dates (purged by the label horizon, embargoed after earlier test
   windows), scored on its test dates; progress per split and per unit (boosting round, epoch,
   tree round, sweep) 10-70 %; a cancel stops within one unit;
3. long-short backtest of the pooled out-of-sample predictions through the backtest engine's
   ``signal`` strategy (:mod:`.ls_backtest`; 70-75 %);
4. the final model fitted on every row (75-95 %), serialised, hashed and, with ``publish``,
   published as the next version of ``name`` on ``models`` (``signals.<name>`` is created).

The result (a JSON object, self-describing; the ``TrainingService`` API reads it as is)::

    {"schema": "mystocks.train.result/1",
     "model": {"name", "version" (None when not published), "content_sha256", "family",
               "params", "features", "bytes", "published", "registry_topic", "signals_topic",
               "library_versions", "fit": {engine, backend, rows, units, converged, seconds}},
     "data": {"inputs", "start", "end", "frequency", "step_ns", "label": {column, horizon,
              horizon_unit, horizon_steps, kind}, "records": {topic: n}, "rows_rejected":
              {topic: n}, "panel_rows", "rows_used", "rows_dropped": {"label_undefined",
              "nonfinite_features"}, "nan_policy", "symbols", "dates", "first_date",
              "last_date"},
     "walk_forward": {n_splits, test_dates, label_horizon, purge_dates, embargo_dates, scheme,
                      train_dates, min_train_dates},
     "splits": [{"index", "train_first", "train_last", "test_first", "test_last", "n_train",
                 "n_test", "metrics": {n_rows, n_dates, n_ic_dates, mse, r2, ic_mean,
                 rank_ic_mean, icir, rank_icir, hit_rate}, "fit": {...}}, ...],
     "overall": {the same metrics over every out-of-sample prediction},
     "long_short": {total_return, cagr, ann_volatility, sharpe, max_drawdown, n_trades,
                    fees_paid, exposure, symbols, bars, threshold, quantile, ...} or None,
     "ic_series": {"dates", "ic", "rank_ic", "n", "bucket"},      # <= 600 points
     "equity_curve": {"ts", "equity", "bucket"},                  # <= 600 points
     "backend": "cpu"|"gpu", "seconds": wall time}

Dates and times are ns since the epoch; NaN metrics are ``null``. ``ic_series`` and
``equity_curve`` keep at most ``MAX_POINTS`` points: longer series are bucketed (``bucket`` =
dates per point; IC = bucket mean, equity = the bucket's last value).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.infra.clock import SYSTEM_CLOCK
from mystocks_gpu.processors.exceptions import JobStopped
from mystocks_gpu.processors.job_kind import JobKind, ProgressCb, current_run
from mystocks_gpu.processors.training.train_spec import TrainSpec

RESULT_SCHEMA = "mystocks.train.result/1"
MAX_POINTS = 600


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, NumPy scalars -> Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _bucket(n: int) -> int:
    return max(1, math.ceil(n / MAX_POINTS))


def ic_series(daily: Any) -> dict[str, Any]:
    """The daily IC series, bucket-averaged to at most ``MAX_POINTS`` points."""
    k = _bucket(daily.dates.size)
    if k == 1:
        return {"dates": daily.dates, "ic": daily.ic, "rank_ic": daily.rank_ic, "n": daily.n, "bucket": 1}
    idx = np.arange(daily.dates.size) // k
    df = pd.DataFrame({"g": idx, "d": daily.dates, "ic": daily.ic, "ric": daily.rank_ic, "n": daily.n})
    g = df.groupby("g")
    return {"dates": g["d"].first().to_numpy(), "ic": g["ic"].mean().to_numpy(), "rank_ic": g["ric"].mean().to_numpy(),
            "n": g["n"].sum().to_numpy(), "bucket": k}


def _fit_info(info: Any) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"engine": info.engine, "backend": info.backend, "rows": info.n_rows, "features": info.n_features,
            "unit": info.unit, "units": info.units_done, "converged": info.converged, "seconds": round(info.seconds, 4)}


def _progress_mapper(progress: ProgressCb, n_splits: int) -> Callable[[Any], None]:
    def on(ev: Any) -> None:
        e = ev.event
        frac = (ev.split + (e.done / e.total if e.total else 1.0)) / ev.n_splits
        loss = f", loss {e.loss:.4g}" if e.loss is not None else ""
        progress(0.10 + 0.60 * frac, f"split {ev.split + 1}/{ev.n_splits}: {e.unit} {e.done}/{e.total}{loss}")
    return on


def run_train(spec: TrainSpec, progress: ProgressCb, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Run a train job (see the module docstring); returns the result dict.

    In a worker, settings, schema store and backend come from the run's context: the device the
    scheduler granted (``training`` policy) decides CPU or GPU, and a granted GPU's CUDA ordinal is
    passed to the model (XGBoost ``cuda:N``, torch ``cuda:N``); called directly, from
    :func:`load_settings` and the settings' backend."""
    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.infra.config import load_settings
    from mystocks_gpu.schemas import schema_store

    ctx = current_run()
    settings = ctx.settings if ctx is not None and ctx.settings is not None else load_settings()
    store = ctx.store if ctx is not None and ctx.store is not None else schema_store(settings)
    backend = ctx.backend if ctx is not None else select(settings.backend)
    devices = (ctx.cuda_device,) if ctx is not None and ctx.cuda_device is not None and backend == "gpu" else ()
    return train(spec, settings.kafka, progress, should_stop, backend=backend, store=store, devices=devices)


def train(spec: TrainSpec, kafka: Any, progress: ProgressCb, should_stop: Callable[[], bool],
          backend: str | None = None, store: Any = None, devices: tuple[int, ...] = ()) -> dict[str, Any]:
    """The runner's work with an explicit Kafka config (benchmarks and tests call it directly).
    ``backend``: auto/cpu/gpu (None = auto); ``store``: the process's schema store (default the
    manifest); ``devices``: CUDA ordinals granted (GPU backend; () = the current device)."""
    from mystocks_gpu.gpu_ops.backend import select
    from mystocks_gpu.gpu_ops.models import (
        TrainingCancelled,
        content_hash,
        make_model,
        params_to_dict,
        run_walk_forward,
    )
    from mystocks_gpu.processors.training.ls_backtest import long_short_backtest
    from mystocks_gpu.processors.training.training_data import load_training_data

    t0 = time.monotonic()
    be = select(backend)
    devs = tuple(devices) if be == "gpu" else ()
    data = load_training_data(spec, kafka, progress, should_stop, store)
    cfg = spec.wf_config()
    progress(0.10, f"walk-forward: {cfg.n_splits} splits over {data.counts['dates']} dates, {data.X.shape[0]:,} rows")
    try:
        wf = run_walk_forward(spec.family, spec.params, data.X, data.y, data.dates, cfg, label_end=data.label_end,
                              backend=be, devices=devs, progress=_progress_mapper(progress, cfg.n_splits), should_stop=should_stop)
        if should_stop():
            raise JobStopped("stopped after the walk-forward")
        ls = None
        if spec.backtest:
            progress(0.70, "long-short backtest of the out-of-sample predictions")
            oos = pd.DataFrame({"sym": data.sym[wf.oos_rows], "date": data.dates[wf.oos_rows], "pred": wf.oos_pred})
            ls = long_short_backtest(oos, data.price, data.symbols, quantile=spec.ls_quantile, fees=spec.fees,
                                     slippage=spec.slippage, step_ns=data.step_ns, backend=be)
        progress(0.75, f"fitting the final model on {data.X.shape[0]:,} rows")

        def on_final(ev: Any) -> None:
            progress(0.75 + 0.20 * (ev.done / ev.total if ev.total else 1.0), f"final model: {ev.unit} {ev.done}/{ev.total}")

        model = make_model(spec.family, spec.params, backend=be, devices=devs).fit(data.X, data.y, progress=on_final,
                                                                     should_stop=should_stop)
    except TrainingCancelled as exc:
        raise JobStopped(str(exc)) from None
    blob = model.to_bytes()
    sha = content_hash(blob)
    splits = [{"index": s.index, "train_first": s.train_first, "train_last": s.train_last, "test_first": s.test_first,
               "test_last": s.test_last, "n_train": s.n_train, "n_test": s.n_test, "metrics": s.metrics.as_dict(),
               "fit": _fit_info(s.fit_info)} for s in wf.splits]
    c = data.counts
    result: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "model": {"name": spec.name, "version": None, "content_sha256": sha, "family": spec.family,
                  "params": params_to_dict(model.params), "features": data.columns, "bytes": len(blob),
                  "published": False, "registry_topic": None, "signals_topic": None,
                  "library_versions": model.library_versions(), "fit": _fit_info(model.fit_info)},
        "data": {"inputs": list(spec.inputs), "start": spec.start, "end": spec.end, "frequency": spec.frequency,
                 "step_ns": data.step_ns, "universe": spec.universe,
                 "label": {"column": spec.label_column, "horizon": spec.horizon, "horizon_unit": spec.horizon_unit,
                           "horizon_steps": spec.horizon_steps(), "kind": spec.label_kind},
                 "nan_policy": spec.nan_policy, **c},
        "walk_forward": dataclasses.asdict(cfg),
        "splits": splits,
        "overall": wf.overall.as_dict(),
        "long_short": ls.stats if ls is not None else None,
        "ic_series": ic_series(wf.daily),
        "equity_curve": _equity(ls),
        "backend": be,
        "devices": list(devs),
    }
    if spec.publish:
        progress(0.96, f"publishing {spec.name} to the models topic")
        result["model"].update(_publish(spec, kafka, blob, result, data, store))
    result["seconds"] = round(time.monotonic() - t0, 3)
    progress(1.0, f"trained {spec.name}: rank IC {wf.overall.rank_ic_mean:.4f}")
    return _clean(result)


def _equity(ls: Any) -> dict[str, Any] | None:
    if ls is None:
        return None
    k = _bucket(ls.ts.size)
    sel = np.r_[np.arange(k - 1, ls.ts.size, k), ls.ts.size - 1] if k > 1 else np.arange(ls.ts.size)
    sel = np.unique(sel)
    return {"ts": ls.ts[sel], "equity": ls.equity[sel], "bucket": k}


def _publish(spec: TrainSpec, kafka: Any, blob: bytes, result: dict[str, Any], data: Any,
             store: Any = None) -> dict[str, Any]:
    from mystocks_gpu.processors.training.model_registry import (
        METADATA_VERSION,
        MODELS_TOPIC,
        ensure_signals_topic,
        publish_model,
    )
    from mystocks_gpu.schemas.schema_store import default_store

    run = current_run()
    schemas = {}
    for topic in sorted(set(data.feature_inputs.values())):
        from mystocks_gpu.processors.training.train_spec import catalog_schema

        name = spec.input_schema(topic) or catalog_schema(topic) or "mystocks.features.FeatureVector"
        try:
            fp = (store or default_store()).by_name(name).fingerprint
        except Exception:  # noqa: BLE001 - the fingerprint is informative
            fp = ""
        schemas[topic] = {"schema": name, "fingerprint": fp}
    m = result["model"]
    meta = {"metadata_version": METADATA_VERSION, "family": spec.family, "params": m["params"],
            "features": data.columns, "feature_inputs": data.feature_inputs, "feature_schemas": schemas,
            "n_features": len(data.columns), "label": result["data"]["label"],
            "training_range": {"start": spec.start, "end": spec.end, "first_date": data.counts["first_date"],
                               "last_date": data.counts["last_date"], "frequency": spec.frequency},
            "metrics": {"overall": result["overall"], "splits": [{k: s[k] for k in ("index", "test_first", "test_last",
                                                                               "metrics")} for s in result["splits"]]},
            "long_short": result["long_short"], "library_versions": m["library_versions"],
            "content_sha256": m["content_sha256"], "bytes": len(blob), "job_id": run.job_id if run else None,
            "created_ns": SYSTEM_CLOCK.now_ns(), "spec": spec.to_dict()}
    version = publish_model(kafka, spec.name, blob, _clean(meta), store=store)
    return {"version": version, "published": True, "registry_topic": MODELS_TOPIC,
            "signals_topic": ensure_signals_topic(kafka, spec.name)}


def _summarize(result: dict[str, Any]) -> str:
    from mystocks_gpu.processors.training.train_report import format_metrics

    return format_metrics(result)


def _report(result: dict[str, Any], directory: Any, settings: Any, job_id: str) -> Any:
    from mystocks_gpu.processors.training.train_report import write_report

    return write_report(result, directory)


KIND = JobKind("train", TrainSpec, run_train, policy="training", devices="any",
               description="walk-forward model training on replayed topics; model published to models",
               summarize=_summarize, report=_report, bulky_keys=("splits", "ic_series", "equity_curve"))
