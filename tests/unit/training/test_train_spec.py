"""The train job spec: every field the issue lists is validated with an error naming it; defaults
and normalisation; the missing-library case names the pip extra."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mystocks_gpu.jobs.kinds import get_kind
from mystocks_gpu.processors.exceptions import JobSpecError
from mystocks_gpu.processors.training.train_spec import TrainSpec

BASE: dict[str, Any] = {"name": "alpha-1", "inputs": ["features.ticks", "md.bars.1m"], "features": ["ret", "rsi"],
                        "frequency": "1m", "label_column": "md.bars.1m:close", "start": "2024-01-02",
                        "end": "2024-02-01", "walk_forward": {"n_splits": 3, "test_dates": 10, "embargo_dates": 2}}


def spec(**kw: Any) -> TrainSpec:
    d = {**BASE, **kw}
    return TrainSpec.from_dict({k: v for k, v in d.items() if v is not ...})


def test_defaults_and_normalisation() -> None:
    s = spec(universe=["B", "A", "B"], seed=5, family="gbdt", params={"n_estimators": 3})
    assert s.start == 1_704_153_600 * 10**9 and s.end == 1_706_745_600 * 10**9
    assert s.universe == ["A", "B"] and s.params == {"n_estimators": 3, "seed": 5}
    assert s.step() == 60 * 10**9 and s.horizon_steps() == 1
    cfg = s.wf_config()
    assert (cfg.n_splits, cfg.test_dates, cfg.embargo_dates, cfg.label_horizon, cfg.purge) == (3, 10, 2, 1, 1)
    d = TrainSpec.from_dict({"name": "b", "inputs": ["md.bars.1d"], "features": ["close", "volume"]})
    assert d.label_column == "md.bars.1d:close" and d.step() == 86_400 * 10**9 and d.family == "ridge"
    f = TrainSpec.from_dict({"name": "f", "inputs": ["features.ticks"], "features": ["ret"], "frequency": "5s",
                             "horizon": 30, "horizon_unit": "seconds"})
    assert f.label_column == "features.ticks:last_price" and f.horizon_steps() == 6
    assert TrainSpec.from_dict(s.to_dict()) == s  # what the control plane stores parses back equal
    assert get_kind("train").parse(BASE).name == "alpha-1"


@pytest.mark.parametrize("patch, reason", [
    ({"name": "bad name"}, "name:"),
    ({"name": "-x"}, "name:"),
    ({"inputs": []}, "inputs: give at least one"),
    ({"inputs": ["md.bars.1m", "md.bars.1m"]}, "names a topic twice"),
    ({"inputs": ["cmd.jobs"]}, "carries mystocks.jobs.JobCommand"),
    ({"inputs": ["md.ticks.dlq"]}, "is not a topic that can be replayed"),
    ({"features": []}, "features: give at least one"),
    ({"features": ["ret", "ret"]}, "names a column twice"),
    ({"inputs": ["md.bars.1d"], "frequency": ..., "label_column": ..., "features": ["close", "moon"]},
     "unknown feature column 'moon'"),
    ({"features": ["md.bars.1m:moon"]}, "unknown feature column 'moon'"),
    ({"features": ["nowhere:ret"]}, "not in inputs"),
    ({"start": "2024-02-01", "end": "2024-01-01"}, "empty or inverted time range"),
    ({"start": "2024-01-01", "end": "2024-01-01"}, "empty or inverted time range"),
    ({"start": "yesterday-ish"}, "start: cannot parse"),
    ({"universe": []}, "universe"),
    ({"universe": "some"}, "universe"),
    ({"frequency": ...}, "frequency: required with features.ticks"),
    ({"frequency": "3x"}, "frequency:"),
    ({"inputs": ["md.bars.1d", "md.bars.1m"], "frequency": ..., "features": ["close"],
      "label_column": "md.bars.1d:close"}, "different intervals"),
    ({"horizon": 0}, "horizon: 0 must be >= 1"),
    ({"horizon_unit": "ticks"}, "horizon_unit"),
    ({"horizon": 90, "horizon_unit": "seconds"}, "not a whole number of panel steps"),
    ({"label_kind": "excess"}, "label_kind"),
    ({"label_column": "md.bars.1m:moon"}, "label_column: unknown feature column 'moon'"),
    ({"family": "svm"}, "unknown model family 'svm'"),
    ({"family": "gbdt", "params": {"n_estimators": 0}}, "n_estimators"),
    ({"family": "ridge", "params": {"alpha": -1}}, "alpha"),
    ({"family": "lasso", "params": {"depth": 3}}, "has no parameter 'depth'"),
    ({"family": "gbdt", "seed": 1, "params": {"seed": 2}}, "seed: 1 differs"),
    ({"seed": -1, "family": "gbdt"}, "seed"),
    ({"walk_forward": {"n_splits": 0}}, "n_splits"),
    ({"walk_forward": {"purge_dates": 0}}, "purge_dates"),
    ({"walk_forward": {"embargo_dates": -1}}, "embargo_dates"),
    ({"walk_forward": {"scheme": "sliding"}}, "scheme"),
    ({"walk_forward": {"folds": 3}}, "unknown setting"),
    ({"horizon": 5, "walk_forward": {"purge_dates": 3}}, "purge_dates' (3) must be >= the label horizon (5)"),
    ({"nan_policy": "impute"}, "nan_policy"),
    ({"ls_quantile": 0.7}, "ls_quantile"),
    ({"fees": 1.5}, "fees"),
    ({"max_rows": 0}, "max_rows"),
    ({"horizon": "5"}, "horizon' must be an integer"),
    ({"bogus": 1}, "unknown spec field"),
])
def test_bad_specs_name_the_field(patch: dict[str, Any], reason: str) -> None:
    with pytest.raises(JobSpecError, match=None) as ei:
        spec(**patch)
    assert reason in str(ei.value), str(ei.value)


def test_missing_model_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # import blocked: as if not installed
    with pytest.raises(JobSpecError) as ei:
        spec(family="gbdt")
    assert 'pip install -e ".[ml]"' in str(ei.value) and "xgboost" in str(ei.value)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(JobSpecError, match=r'\.\[dl\]'):
        spec(family="mlp")


@pytest.mark.parametrize(("device", "backend", "cuda", "devices"), [("gpu1", "gpu", 1, (1,)), ("cpu0", "cpu", None, ())])
def test_runner_computes_on_the_device_the_scheduler_granted(monkeypatch: pytest.MonkeyPatch, device: str,
                                                             backend: str, cuda: int | None,
                                                             devices: tuple[int, ...]) -> None:
    """The kind asks for the ``training`` placement; its runner takes the backend, the CUDA ordinal,
    the settings and the schema store from the worker's run context (nothing re-detected)."""
    from mystocks_gpu.infra.config import Settings
    from mystocks_gpu.processors.job_kind import RUN_CONTEXT, RunContext
    from mystocks_gpu.processors.training import train_job

    kind = get_kind("train")
    assert (kind.policy, kind.devices) == ("training", "any")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(train_job, "train", lambda *a, **kw: seen.update(kafka=a[1], **kw) or {})
    settings, store = Settings(), object()
    token = RUN_CONTEXT.set(RunContext("j1", 0, device, backend, cuda, settings, store))  # type: ignore[arg-type]
    try:
        kind.runner(spec(), lambda f, m: None, lambda: False)
    finally:
        RUN_CONTEXT.reset(token)
    assert seen == {"kafka": settings.kafka, "backend": backend, "store": store, "devices": devices}
