"""Models for workload 3 (ML training and live inference): one interface, seven families, each
with a GPU and a CPU path, plus the pure training maths (labels, walk-forward splits, metrics).

Families (``make_model(family, params, backend=...)``; params: the dataclasses of
``model_params``, or a mapping of their fields as a job spec carries them):

=================  ==============================================  ================  ==========
family             GPU path / CPU path                              payload           extra
=================  ==============================================  ================  ==========
``ridge``          CuPy Gram + solve / NumPy Gram + solve           ``npz``           core
``lasso``          CuPy coordinate descent / numba CD               ``npz``           core
``elastic_net``    CuPy coordinate descent / numba CD               ``npz``           core
``random_forest``  cuML (when installed) / scikit-learn             ``skops``         ``ml``
``gbdt``           XGBoost ``device="cuda"`` / XGBoost ``hist``     ``xgboost-ubj``   ``ml``
``mlp``, ``gru``   PyTorch CUDA (bf16 autocast, DataParallel) / CPU  ``torch-state-dict``  ``dl``
=================  ==============================================  ================  ==========

API for the ``train`` job runner (phase 2)::

    lab = forward_returns(sym, ts, close, horizon=5)               # label + label_end, NaN at the end
    rows = drop_nonfinite(X, lab.label)                            # policy: drop, count reported
    res = run_walk_forward(family, params, rows.X, rows.y, dates[rows.keep],
                           WalkForwardConfig(n_splits=5, test_dates=20, label_horizon=5,
                                             embargo_dates=2),
                           label_end=lab.label_end[rows.keep], backend=backend,
                           devices=granted, progress=on_progress, should_stop=cancelled)
    # res.splits[k].metrics, res.overall, res.daily (IC series), res.oos_pred (for the backtest)
    model = make_model(family, params, backend=backend, devices=granted)
    model.fit(rows.X, rows.y, progress=..., should_stop=...)      # the model to publish
    blob = model.to_bytes(); meta = {"content_sha256": content_hash(blob),
                                     "library_versions": model.library_versions(),
                                     "family": model.family, "params": params_to_dict(model.params),
                                     "n_features": model.n_features, ...}

* ``progress`` receives :class:`SplitProgress` (split k of K + the model's
  :class:`ProgressEvent`: unit ``round`` / ``epoch`` / ``trees`` / ``sweep`` / ``solve``, done,
  total, loss); ``should_stop()`` is polled after every unit and cancels within one unit by
  raising :class:`TrainingCancelled` (the job marks itself cancelled; nothing is published).
* Errors are :class:`ModelError` subclasses (``MyStocksError``): unknown family, bad parameter
  (named), missing library (names ``pip install -e ".[ml]"`` / ``".[dl]"``), empty set, horizon
  longer than the data, too few dates for the splits, NaN input passed to ``fit``.

API for the ``signals`` stream processor (phase 2)::

    model = load_model(blob, backend=backend, expected_sha256=meta["content_sha256"])
    scores = model.predict(features)      # (n_rows, n_features) float32/64 -> float64 (n_rows,)

* ``load_model`` raises :class:`ModelIntegrityError` on a corrupt, truncated or hash-mismatched
  blob: the processor keeps its previous model and raises an alert.
* ``predict`` is batched (one call per micro-batch) and deterministic: the same bytes score the
  same rows bit-identically, so ``signals`` output equals the trained model's ``predict``. Rows
  with NaN/inf features must be dropped (``drop_nonfinite``) or they raise.

Nothing here does Kafka or file I/O; serialisation is to and from ``bytes``.
"""

from mystocks_gpu.gpu_ops.models.exceptions import (
    MissingLibraryError,
    ModelError,
    ModelIntegrityError,
    ModelParamError,
    NotFittedError,
    TrainingCancelled,
    TrainingDataError,
    UnknownModelFamily,
)
from mystocks_gpu.gpu_ops.models.forward_labels import ForwardLabels, forward_returns
from mystocks_gpu.gpu_ops.models.model_base import FitInfo, Model, ProgressEvent
from mystocks_gpu.gpu_ops.models.model_codec import content_hash
from mystocks_gpu.gpu_ops.models.model_factory import FAMILIES, FAMILY_EXTRA, load_model, make_model
from mystocks_gpu.gpu_ops.models.model_params import params_to_dict
from mystocks_gpu.gpu_ops.models.prediction_metrics import (
    DailyIC,
    PredictionMetrics,
    evaluate,
    ic_by_date,
)
from mystocks_gpu.gpu_ops.models.training_rows import FiniteRows, drop_nonfinite, stack_lags
from mystocks_gpu.gpu_ops.models.training_run import (
    SplitProgress,
    SplitResult,
    WalkForwardResult,
    run_walk_forward,
)
from mystocks_gpu.gpu_ops.models.walk_forward import Split, WalkForwardConfig, walk_forward_splits

__all__ = [
    "FAMILIES",
    "FAMILY_EXTRA",
    "DailyIC",
    "FiniteRows",
    "FitInfo",
    "ForwardLabels",
    "MissingLibraryError",
    "Model",
    "ModelError",
    "ModelIntegrityError",
    "ModelParamError",
    "NotFittedError",
    "PredictionMetrics",
    "ProgressEvent",
    "Split",
    "SplitProgress",
    "SplitResult",
    "TrainingCancelled",
    "TrainingDataError",
    "UnknownModelFamily",
    "WalkForwardConfig",
    "WalkForwardResult",
    "content_hash",
    "drop_nonfinite",
    "evaluate",
    "forward_returns",
    "ic_by_date",
    "load_model",
    "make_model",
    "params_to_dict",
    "run_walk_forward",
    "stack_lags",
    "walk_forward_splits",
]
