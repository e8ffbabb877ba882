"""The one model interface every family implements: :class:`Model`.

``fit(X, y, progress=None, should_stop=None) -> self``, ``predict(X) -> float64 (n_rows,)``,
``to_bytes() -> bytes``, ``Model.from_bytes(blob) -> Model``, ``family``, ``params``,
``library_versions()``. X is float32 or float64 ``(n_rows, n_features)`` (NumPy, or CuPy on the
GPU backend), y is ``(n_rows,)``; both must be finite (apply
:func:`~mystocks_gpu.gpu_ops.models.training_rows.drop_nonfinite` first).

Progress and cancellation: ``progress(ProgressEvent)`` is called after each unit of training
(a boosting round, an epoch, a round of trees, a coordinate-descent sweep, or one closed-form
solve), and ``should_stop()`` right after it (and once before the first unit); when it returns
true, ``fit`` raises :class:`TrainingCancelled` and the model stays unfitted.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, select, to_host
from mystocks_gpu.gpu_ops.models.exceptions import (
    MissingLibraryError,
    ModelIntegrityError,
    ModelParamError,
    NotFittedError,
    TrainingCancelled,
    TrainingDataError,
    UnknownModelFamily,
)
from mystocks_gpu.gpu_ops.models.model_codec import content_hash, pack, unpack
from mystocks_gpu.gpu_ops.models.model_params import params_from_mapping, params_to_dict

M = TypeVar("M", bound="Model")


@dataclass(frozen=True)
class ProgressEvent:
    """One unit of training done: ``done`` of ``total`` ``unit``s (``round``, ``epoch``,
    ``trees``, ``sweep`` or ``solve``); ``loss`` is the mean training loss of the unit where the
    family computes one (epochs: mean squared error), else None."""

    family: str
    unit: str
    done: int
    total: int
    loss: float | None = None


ProgressFn = Callable[[ProgressEvent], None]
StopFn = Callable[[], bool]


@dataclass(frozen=True)
class FitInfo:
    """How the last ``fit`` ran: ``engine`` (e.g. ``numba-cd``, ``cupy-cd``, ``xgboost-cuda``,
    ``sklearn``, ``cuml``, ``torch-cpu``), backend, rows, features, units done, whether an
    iterative solver converged (None where not applicable) and wall seconds."""

    engine: str
    backend: str
    n_rows: int
    n_features: int
    unit: str
    units_done: int
    converged: bool | None
    seconds: float


class Reporter:
    """Forwards progress and polls ``should_stop`` for one ``fit``."""

    def __init__(self, family: str, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        self.family = family
        self._progress = progress
        self._should_stop = should_stop
        self.unit = "solve"
        self.total = 1
        self.done = 0

    def start(self, unit: str, total: int) -> None:
        """Declare the unit and count; cancels before any work if a stop is already asked."""
        self.unit, self.total, self.done = unit, int(total), 0
        self.check()

    def step(self, done: int, loss: float | None = None) -> None:
        """Unit ``done`` finished: report it, then cancel if ``should_stop()``."""
        self.done = int(done)
        if self._progress is not None:
            self._progress(ProgressEvent(self.family, self.unit, self.done, self.total, loss))
        self.check()

    def check(self) -> None:
        if self._should_stop is not None and self._should_stop():
            raise TrainingCancelled(self.family, self.unit, self.done, self.total)


def _missing(module: str, family: str, pip_name: str, extra: str, why: str) -> MissingLibraryError:
    return MissingLibraryError(
        f"model family {family!r} needs {module}, which is not importable ({why}); install it: "
        f"pip install {pip_name}   (or the package's extra: pip install -e \".[{extra}]\")")


def require(module: str, family: str, pip_name: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingLibraryError` naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module, family, pip_name, extra, str(exc)) from exc


def require_installed(module: str, family: str, pip_name: str, extra: str) -> None:
    """Like :func:`require` without importing (for libraries slow to import, e.g. skops)."""
    if sys.modules.get(module, False) is None:  # blocked import (tests do this)
        raise _missing(module, family, pip_name, extra, "import blocked")
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as exc:
        raise _missing(module, family, pip_name, extra, str(exc)) from exc
    if not found:
        raise _missing(module, family, pip_name, extra, f"no module named {module!r}")


def module_version(module: str) -> str:
    """``module.__version__`` when importable, else ``"not installed"``."""
    try:
        mod = sys.modules.get(module) or importlib.import_module(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "unknown"))


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def check_matrix(X: Any, what: str = "X", finite: bool = True) -> Any:
    """Validate a feature matrix: 2-D, float32/float64, at least one column, finite values (unless
    ``finite`` is False)."""
    if not hasattr(X, "ndim") or not hasattr(X, "dtype"):
        X = np.asarray(X)
    if X.ndim != 2:
        raise TrainingDataError(f"{what} must be 2-D (n_rows, n_features); got shape {tuple(X.shape)}")
    if X.dtype not in (np.float32, np.float64):
        raise TrainingDataError(f"{what} must be float32 or float64, got {X.dtype} (cast it first)")
    if X.shape[1] < 1:
        raise TrainingDataError(f"{what} has no feature columns (shape {tuple(X.shape)})")
    if finite:
        _check_finite(X, what)
    return X


def _check_finite(a: Any, what: str) -> None:
    if a.dtype.kind != "f":
        return
    xp = importlib.import_module("cupy") if _is_cupy(a) else np
    if not bool(xp.isfinite(a).all()):
        host = to_host(a)
        bad = ~np.isfinite(host) if host.ndim == 1 else ~np.isfinite(host).all(axis=1)
        idx = np.flatnonzero(bad)
        raise TrainingDataError(
            f"{what} has {idx.size} row(s) with NaN/inf (first at row {int(idx[0])}); drop them with "
            "drop_nonfinite() before fit/predict")


def check_training_data(X: Any, y: Any, family: str) -> tuple[Any, Any]:
    """Validate ``fit`` input: non-empty X (see :func:`check_matrix`) and a finite ``y`` of
    length ``n_rows`` (any real dtype, returned as float64)."""
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if len(X.shape) >= 1 and X.shape[0] == 0:
        raise TrainingDataError(f"empty training set: {family} got 0 rows")
    X = check_matrix(X)
    if not hasattr(y, "ndim"):
        y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise TrainingDataError(f"y must be 1-D with {X.shape[0]} rows (one per row of X); got shape {tuple(y.shape)}")
    if y.dtype.kind not in "fiu":
        raise TrainingDataError(f"y must be numeric, got {y.dtype}")
    y = y.astype(np.float64, copy=False)
    _check_finite(y, "y")
    return X, y


class Model(ABC):
    """Base of every model family (see the module docstring for the contract).

    Args:
        params: the family's params dataclass, a mapping of its fields (a job spec), or None for
            the defaults.
        backend: ``auto`` / ``cpu`` / ``gpu`` (resolved by :func:`backend.select`).
        n_threads: CPU threads for libraries that take a count (XGBoost, scikit-learn, torch);
            None = the library's default. The model does not depend on it.
        devices: CUDA device ordinals granted by the scheduler (GPU backend only; () = the
            current device). Families that train data-parallel (mlp, gru) use all of them; the
            others use the first.
    """

    family: ClassVar[str]
    params_type: ClassVar[type[Any]]
    payload_format: ClassVar[str]
    _families: ClassVar[dict[str, type[Model]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            Model._families[cls.family] = cls

    def __init__(self, params: Any = None, *, backend: str = "auto", n_threads: int | None = None,
                 devices: tuple[int, ...] | list[int] = ()) -> None:
        if params is None or isinstance(params, Mapping):
            params = params_from_mapping(self.family, self.params_type, params)
        elif not isinstance(params, self.params_type):
            raise ModelParamError(f"{self.family} params must be {self.params_type.__name__} or a mapping, "
                                  f"got {type(params).__name__}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int)
                                      or n_threads < 1):
            raise ModelParamError(f"{self.family} setting 'n_threads' must be None or an int >= 1, got {n_threads!r}")
        devs = tuple(devices)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devs) or len(set(devs)) != len(devs):
            raise ModelParamError(f"{self.family} setting 'devices' must be distinct CUDA ordinals >= 0, got {devices!r}")
        self._params = params
        self._backend = select(backend)
        if devs and self._backend != GPU:
            raise ModelParamError(f"{self.family} setting 'devices' {devs} needs the gpu backend "
                                  f"(backend is {self._backend})")
        self.n_threads = n_threads
        self.devices = devs
        self._n_features: int | None = None
        self.fit_info: FitInfo | None = None
        self._check_library()

    # -- identity -------------------------------------------------------------------------------
    @property
    def params(self) -> Any:
        """The family's frozen params dataclass."""
        return self._params

    @property
    def backend(self) -> str:
        """``cpu`` or ``gpu``."""
        return self._backend

    @property
    def n_features(self) -> int | None:
        """Feature count the model was fitted with (None before ``fit``)."""
        return self._n_features

    @property
    def is_fitted(self) -> bool:
        return self._n_features is not None

    def library_versions(self) -> dict[str, str]:
        """Versions of the libraries this family trains and predicts with (for the registry)."""
        mods = ["numpy", *self._libraries()]
        if self._backend == GPU:
            mods.append("cupy")
        return {m: module_version(m) for m in sorted(set(mods))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params!r}, backend={self._backend!r})"

    # -- training / inference ------------------------------------------------------------------
    def fit(self: M, X: Any, y: Any, progress: ProgressFn | None = None,
            should_stop: StopFn | None = None) -> M:
        """Fit on ``X`` (n_rows, n_features) and ``y`` (n_rows,); returns self. Raises
        :class:`TrainingDataError` on empty / malformed / non-finite input and
        :class:`TrainingCancelled` when ``should_stop()`` turns true."""
        X, y = check_training_data(X, y, self.family)
        rep = Reporter(self.family, progress, should_stop)
        t0 = time.perf_counter()
        self._n_features = None
        engine, converged = self._fit(X, y, rep)
        self._n_features = int(X.shape[1])
        self.fit_info = FitInfo(engine, self._backend, int(X.shape[0]), int(X.shape[1]), rep.unit,
                                rep.done, converged, time.perf_counter() - t0)
        return self

    def predict(self, X: Any, *, assume_finite: bool = False) -> np.ndarray:
        """Scores for the rows of ``X`` (n_rows, n_features): float64 NumPy ``(n_rows,)``.

        ``assume_finite``: the caller has already checked every value is finite (skips that pass
        over ``X``; shape and dtype are still checked)."""
        if self._n_features is None:
            raise NotFittedError(f"{self.family} model is not fitted: call fit() or load one with from_bytes()")
        X = check_matrix(X, finite=not assume_finite)
        if X.shape[1] != self._n_features:
            raise TrainingDataError(f"X has {X.shape[1]} features, the {self.family} model was fitted "
                                    f"with {self._n_features}")
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(to_host(self._predict(X)), dtype=np.float64).reshape(-1)

    # -- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The model in its native format inside the hashed envelope (see ``model_codec``)."""
        if self._n_features is None:
            raise NotFittedError(f"{self.family} model is not fitted: nothing to serialise")
        payload, extra = self._payload()
        return pack(self.family, params_to_dict(self._params), self._n_features, self.payload_format,
                    payload, extra)

    def content_hash(self) -> str:
        """sha256 (hex) of :meth:`to_bytes`."""
        return content_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, blob: bytes, *, backend: str = "auto", expected_sha256: str | None = None,
                   n_threads: int | None = None, devices: tuple[int, ...] = ()) -> Model:
        """Rebuild a model from :meth:`to_bytes` output, checking its hashes. Called on
        :class:`Model` it returns the family the blob holds; on a family class, that family or
        :class:`ModelIntegrityError`."""
        env = unpack(blob, expected_sha256)
        target = Model._families.get(env.family)
        if target is None:
            raise UnknownModelFamily(f"serialised model has unknown family {env.family!r}")
        if cls is not Model and target is not cls:
            raise ModelIntegrityError(f"blob holds a {env.family!r} model, not {cls.family!r}")
        if env.payload_format != target.payload_format:
            raise ModelIntegrityError(f"{env.family} payload format {env.payload_format!r}, expected "
                                      f"{target.payload_format!r}")
        model = target(env.params, backend=backend, n_threads=n_threads, devices=devices)
        model._load_payload(env.payload, env.n_features, env.extra)
        model._n_features = env.n_features
        return model

    # -- what a family implements --------------------------------------------------------------
    def _check_library(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise :class:`MissingLibraryError` if the family's library is missing (default: none)."""

    @abstractmethod
    def _libraries(self) -> list[str]:
        """Module names whose versions ``library_versions`` reports (besides numpy / cupy)."""

    @abstractmethod
    def _fit(self, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        """Train; call ``rep.start`` once and ``rep.step`` per unit. Returns (engine, converged)."""

    @abstractmethod
    def _predict(self, X: Any) -> Any:
        """Scores (NumPy or CuPy), any float dtype; X is validated."""

    @abstractmethod
    def _payload(self) -> tuple[bytes, dict[str, Any]]:
        """(native payload bytes, extra header fields), deterministic."""

    @abstractmethod
    def _load_payload(self, payload: bytes, n_features: int, extra: dict[str, Any]) -> None:
        """Restore the fitted state from :meth:`_payload` output."""


def family_class(family: str) -> type[Model]:
    """The class registered for ``family`` (families register on import of their module)."""
    try:
        return Model._families[family]
    except KeyError:
        raise UnknownModelFamily(f"unknown model family {family!r}; known: "
                                 f"{', '.join(sorted(Model._families))}") from None
