"""The pure core of a ``train`` job: walk-forward fit + predict + metrics on in-memory arrays.

The job runner (phase 2) replays the feature / bar topics into arrays, computes labels with
``forward_returns``, applies the row policy (``drop_nonfinite``), then calls
:func:`run_walk_forward`; it owns Kafka, status and the model registry, this module none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import to_host
from mystocks_gpu.gpu_ops.models.model_base import FitInfo, ProgressEvent, StopFn
from mystocks_gpu.gpu_ops.models.model_factory import make_model
from mystocks_gpu.gpu_ops.models.prediction_metrics import DailyIC, PredictionMetrics, evaluate
from mystocks_gpu.gpu_ops.models.walk_forward import WalkForwardConfig, walk_forward_splits


@dataclass(frozen=True)
class SplitProgress:
    """A model's progress event inside walk-forward split ``split`` (0-based) of ``n_splits``."""

    split: int
    n_splits: int
    event: ProgressEvent


@dataclass(frozen=True)
class SplitResult:
    """One split: its date ranges, row counts, metrics on its test rows and how the fit ran."""

    index: int
    train_first: int
    train_last: int
    test_first: int
    test_last: int
    n_train: int
    n_test: int
    metrics: PredictionMetrics
    fit_info: FitInfo | None


@dataclass(frozen=True)
class WalkForwardResult:
    """Per-split results, the metrics of all out-of-sample predictions pooled (``overall``), the
    daily IC series of the pooled predictions, and the predictions themselves: ``oos_rows`` (m,)
    indices into the input rows (split order, rows sorted within a split) and ``oos_pred`` (m,)."""

    splits: list[SplitResult]
    overall: PredictionMetrics
    daily: DailyIC
    oos_rows: np.ndarray
    oos_pred: np.ndarray


def _take(a: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a NumPy or CuPy array (indices moved to the array's device)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return a[cupy.asarray(idx)]
    return a[idx]


def run_walk_forward(family: str, params: Mapping[str, Any] | Any, X: Any, y: Any, dates: Any,
                     cfg: WalkForwardConfig, *, label_end: Any = None, backend: str = "auto",
                     n_threads: int | None = None, devices: tuple[int, ...] = (),
                     progress: Callable[[SplitProgress], None] | None = None,
                     should_stop: StopFn | None = None) -> WalkForwardResult:
    """Fit a fresh ``family`` model per split on its training rows, score its test rows, and
    compute the metrics. ``X`` (n, p), ``y`` (n,) finite; ``dates`` (n,) int64 (the
    cross-section each row belongs to); ``label_end`` (n,) for the exact purge. ``should_stop``
    cancels within one unit of the running fit (:class:`TrainingCancelled` propagates)."""
    dates_h = np.asarray(to_host(dates))
    splits = walk_forward_splits(dates_h, cfg, None if label_end is None else to_host(label_end))
    results: list[SplitResult] = []
    rows: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    for sp in splits:
        def forward(ev: ProgressEvent, k: int = sp.index) -> None:
            if progress is not None:
                progress(SplitProgress(k, len(splits), ev))

        model = make_model(family, params, backend=backend, n_threads=n_threads, devices=devices)
        model.fit(_take(X, sp.train), _take(y, sp.train), progress=forward, should_stop=should_stop)
        pred = model.predict(_take(X, sp.test))
        y_test = np.asarray(to_host(_take(y, sp.test)), dtype=np.float64)
        m, _ = evaluate(y_test, pred, dates_h[sp.test])
        results.append(SplitResult(sp.index, sp.train_first, sp.train_last, sp.test_first,
                                   sp.test_last, int(sp.train.size), int(sp.test.size), m,
                                   model.fit_info))
        rows.append(sp.test)
        preds.append(pred)
    oos_rows = np.concatenate(rows)
    oos_pred = np.concatenate(preds)
    y_oos = np.asarray(to_host(_take(y, oos_rows)), dtype=np.float64)
    overall, daily = evaluate(y_oos, oos_pred, dates_h[oos_rows])
    return WalkForwardResult(results, overall, daily, oos_rows, oos_pred)
