"""Tree families: ``random_forest`` (cuML on the GPU when installed, scikit-learn otherwise) and
``gbdt`` (XGBoost, ``device="cuda"`` on the GPU, ``tree_method="hist"`` on both).

random_forest
    CPU (and GPU without cuML): ``sklearn.ensemble.RandomForestRegressor`` grown with
    ``warm_start`` in rounds of ``n_threads`` trees (all cores when None), so progress is reported
    and cancellation honoured per round; the forest equals one ``fit`` of the same estimator with
    the same ``random_state`` (scikit-learn draws the per-tree seeds in sequence). X is cast to
    float32 once (what scikit-learn's trees use). ``predict`` sums the trees' predictions in tree
    order (parallel over trees, sequential sum), equal bit for bit to scikit-learn's single-thread
    ``predict`` whatever the thread count. GPU with cuML: ``cuml.ensemble.RandomForestRegressor``
    in one call (progress once, at the end; ``max_depth=None`` becomes 32, cuML needs a bound),
    converted with ``as_sklearn()`` for serialisation. Payload: ``skops`` (made deterministic by
    ``model_codec.canonical_skops``); on load only scikit-learn's tree types are trusted.

gbdt
    ``xgboost.train`` on a ``QuantileDMatrix`` (``reg:squarederror``), one progress event and one
    ``should_stop`` poll per boosting round (a stop ends training after the current round). Payload:
    ``Booster.save_raw("ubj")``. ``predict`` uses ``inplace_predict`` (float32 scores, returned as
    float64). Histogram sums are threaded: a different ``n_threads`` may change the last bits.
"""

from __future__ import annotations

import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, to_host, xp
from mystocks_gpu.gpu_ops.models.exceptions import ModelIntegrityError, TrainingCancelled
from mystocks_gpu.gpu_ops.models.model_base import Model, Reporter, require, require_installed
from mystocks_gpu.gpu_ops.models.model_codec import canonical_skops
from mystocks_gpu.gpu_ops.models.model_params import GbdtParams, RandomForestParams

#: the only types a random_forest payload may hold beyond skops' defaults
_SKOPS_TRUSTED = ("sklearn.ensemble._forest.RandomForestRegressor",
                  "sklearn.tree._classes.DecisionTreeRegressor", "sklearn.tree._tree.Tree")
#: rows per predict chunk (bounds the per-tree prediction buffer of the forest)
_PREDICT_CHUNK = 1 << 16


def _cuml() -> Any | None:
    try:
        return importlib.import_module("cuml")
    except Exception:  # ImportError, or CUDA libraries missing
        return None


class RandomForestModel(Model):
    """``random_forest``: see the module docstring."""

    family = "random_forest"
    params_type = RandomForestParams
    payload_format = "skops"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimator_: Any = None  # a fitted sklearn RandomForestRegressor (CPU engine / loaded)
        self._gpu_est: Any = None  # a fitted cuML estimator (GPU engine)

    def _check_library(self) -> None:
        require_installed("sklearn", self.family, "scikit-learn", "ml")
        require_installed("skops", self.family, "skops", "ml")

    def _libraries(self) -> list[str]:
        return ["sklearn", "skops"] + (["cuml"] if self._gpu_est is not None else [])

    def _threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def _fit(self, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        p: RandomForestParams = self.params
        rep.start("trees", p.n_estimators)
        self.estimator_ = self._gpu_est = None
        cuml = _cuml() if self.backend == GPU else None
        if cuml is not None:
            return self._fit_cuml(cuml, X, y, rep)
        from sklearn.ensemble import RandomForestRegressor

        est = RandomForestRegressor(
            n_estimators=0, max_depth=p.max_depth, min_samples_leaf=p.min_samples_leaf,
            max_features=float(p.max_features), bootstrap=p.bootstrap, random_state=p.seed,
            n_jobs=self.n_threads, warm_start=True)
        Xh = np.ascontiguousarray(to_host(X), dtype=np.float32)
        yh = np.asarray(to_host(y), dtype=np.float64)
        per_round, done = self._threads(), 0
        while done < p.n_estimators:
            done = min(p.n_estimators, done + per_round)
            est.set_params(n_estimators=done)
            est.fit(Xh, yh)
            rep.step(done)
        est.set_params(n_jobs=None, warm_start=False)
        self.estimator_ = est
        return "sklearn", None

    def _fit_cuml(self, cuml: Any, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        p: RandomForestParams = self.params
        m = xp(GPU)
        est = cuml.ensemble.RandomForestRegressor(
            n_estimators=p.n_estimators, max_depth=p.max_depth or 32,
            min_samples_leaf=p.min_samples_leaf, max_features=float(p.max_features),
            bootstrap=p.bootstrap, random_state=p.seed, n_streams=1)
        est.fit(m.asarray(X, dtype=m.float32), m.asarray(y, dtype=m.float32))
        self._gpu_est = est
        rep.step(p.n_estimators)
        return "cuml", None

    def _predict(self, X: Any) -> Any:
        if self._gpu_est is not None:
            return self._gpu_est.predict(xp(GPU).asarray(X, dtype=np.float32))
        trees = self.estimator_.estimators_
        Xh = np.ascontiguousarray(to_host(X), dtype=np.float32)
        out = np.empty(Xh.shape[0], dtype=np.float64)
        with ThreadPoolExecutor(max_workers=min(self._threads(), len(trees))) as pool:
            for s in range(0, Xh.shape[0], _PREDICT_CHUNK):
                part = Xh[s:s + _PREDICT_CHUNK]
                preds = list(pool.map(lambda t, part=part: t.predict(part, check_input=False), trees))
                acc = np.zeros(part.shape[0], dtype=np.float64)
                for pr in preds:  # tree order: scikit-learn's single-thread sum
                    acc += pr
                acc /= len(trees)
                out[s:s + part.shape[0]] = acc
        return out

    def _payload(self) -> tuple[bytes, dict[str, Any]]:
        import skops.io as sio

        est = self.estimator_
        if est is None:
            if not hasattr(self._gpu_est, "as_sklearn"):
                raise ModelIntegrityError("this cuML has no as_sklearn(): cannot serialise a cuML forest; "
                                          "train random_forest on the cpu backend")
            est = self._gpu_est.as_sklearn()
        return canonical_skops(sio.dumps(est)), {}

    def _load_payload(self, payload: bytes, n_features: int, extra: dict[str, Any]) -> None:
        import skops.io as sio

        try:
            untrusted = set(sio.get_untrusted_types(data=payload))
            extra_types = untrusted - set(_SKOPS_TRUSTED)
            if extra_types:
                raise ModelIntegrityError(f"random_forest payload holds unexpected types {sorted(extra_types)}")
            est = sio.loads(payload, trusted=sorted(untrusted))
        except ModelIntegrityError:
            raise
        except Exception as exc:  # skops raises assorted errors on corrupt archives
            raise ModelIntegrityError(f"corrupt random_forest payload: {type(exc).__name__}: {exc}") from exc
        if type(est).__name__ != "RandomForestRegressor" or getattr(est, "n_features_in_", None) != n_features:
            raise ModelIntegrityError(f"random_forest payload is not a {n_features}-feature RandomForestRegressor")
        self.estimator_ = est
        cuml = _cuml() if self.backend == GPU else None
        if cuml is not None and hasattr(cuml.ensemble.RandomForestRegressor, "from_sklearn"):
            self._gpu_est = cuml.ensemble.RandomForestRegressor.from_sklearn(est)


def _round_callback(xgb: Any, rep: Reporter) -> Any:
    """An XGBoost ``TrainingCallback`` that reports each round and stops training when
    ``should_stop()`` turns true (keeping the :class:`TrainingCancelled` in ``.cancelled``)."""

    class RoundCallback(xgb.callback.TrainingCallback):  # type: ignore[misc,name-defined]
        cancelled: TrainingCancelled | None = None

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            try:
                rep.step(epoch + 1)
            except TrainingCancelled as exc:
                self.cancelled = exc
                return True
            return False

    return RoundCallback()


class GbdtModel(Model):
    """``gbdt``: see the module docstring."""

    family = "gbdt"
    params_type = GbdtParams
    payload_format = "xgboost-ubj"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.booster_: Any = None

    def _check_library(self) -> None:
        require("xgboost", self.family, "xgboost", "ml")

    def _libraries(self) -> list[str]:
        return ["xgboost"]

    def _device(self) -> str:
        if self.backend != GPU:
            return "cpu"
        return f"cuda:{self.devices[0]}" if self.devices else "cuda"

    def _xgb_params(self) -> dict[str, Any]:
        p: GbdtParams = self.params
        out: dict[str, Any] = {
            "objective": "reg:squarederror", "tree_method": "hist", "device": self._device(),
            "max_depth": p.max_depth, "eta": float(p.learning_rate), "subsample": float(p.subsample),
            "colsample_bytree": float(p.colsample_bytree),
            "min_child_weight": float(p.min_child_weight), "lambda": float(p.reg_lambda),
            "alpha": float(p.reg_alpha), "max_bin": p.max_bin, "seed": p.seed, "verbosity": 0,
        }
        if self.n_threads is not None:
            out["nthread"] = self.n_threads
        return out

    def _fit(self, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        import xgboost as xgb

        p: GbdtParams = self.params
        rep.start("round", p.n_estimators)
        m = xp(self.backend)
        dtrain = xgb.QuantileDMatrix(m.asarray(X), label=m.asarray(y), max_bin=p.max_bin,
                                     nthread=self.n_threads)
        cb = _round_callback(xgb, rep)
        booster = xgb.train(self._xgb_params(), dtrain, num_boost_round=p.n_estimators,
                            callbacks=[cb], verbose_eval=False)
        if cb.cancelled is not None:
            raise cb.cancelled
        self.booster_ = booster
        return ("xgboost-cuda" if self.backend == GPU else "xgboost-hist"), None

    def _predict(self, X: Any) -> Any:
        return self.booster_.inplace_predict(xp(self.backend).asarray(X))

    def _payload(self) -> tuple[bytes, dict[str, Any]]:
        return bytes(self.booster_.save_raw("ubj")), {}

    def _load_payload(self, payload: bytes, n_features: int, extra: dict[str, Any]) -> None:
        import xgboost as xgb

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(payload))
        except xgb.core.XGBoostError as exc:
            raise ModelIntegrityError(f"corrupt gbdt payload: {exc}") from exc
        if booster.num_features() != n_features:
            raise ModelIntegrityError(f"gbdt payload has {booster.num_features()} features, header says {n_features}")
        params: dict[str, Any] = {"device": self._device()}
        if self.n_threads is not None:
            params["nthread"] = self.n_threads
        booster.set_param(params)
        self.booster_ = booster
