"""Hyper-parameters of each model family: one frozen, validated dataclass per family.

Every field is a hyper-parameter that changes the fitted model (each is tested to have an
effect), is written into the serialised model's header, and is checked in ``__post_init__``
for type and range: a wrong one raises :class:`ModelParamError` naming the family and the field.
``bool`` is never accepted where an ``int`` or ``float`` is expected; an ``int`` is accepted
for a ``float``.

Conventions follow scikit-learn where a family has a scikit-learn twin:

* ``ridge``: minimise ``||y - Xw - b||^2 + alpha ||w||^2`` (``sklearn.linear_model.Ridge``).
* ``lasso`` / ``elastic_net``: minimise ``1/(2n) ||y - Xw - b||^2 + alpha l1_ratio ||w||_1
  + alpha (1 - l1_ratio) / 2 ||w||^2`` (``sklearn.linear_model.ElasticNet``; lasso is
  ``l1_ratio = 1``); ``tol`` is scikit-learn's: sweeps stop when the largest coefficient update
  is below ``tol`` times the largest coefficient and the duality gap is below ``tol ||y - ȳ||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from mystocks_gpu.gpu_ops.models.exceptions import ModelParamError

MIXED_PRECISION = ("auto", "bf16", "off")


def _int(family: str, name: str, v: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ModelParamError(f"{family} parameter {name!r} must be an int, got {type(v).__name__} {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ModelParamError(f"{family} parameter {name!r} must be {rng}, got {v}")


def _float(family: str, name: str, v: Any, lo: float, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ModelParamError(f"{family} parameter {name!r} must be a number, got {type(v).__name__} {v!r}")
    f = float(v)
    bad = (not math.isfinite(f) or f < lo or (lo_open and f == lo)
           or (hi is not None and (f > hi or (hi_open and f == hi))))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"in {lb}{lo}, {hi}{rb}" if hi is not None else (f"> {lo}" if lo_open else f">= {lo}")
        raise ModelParamError(f"{family} parameter {name!r} must be finite and {rng}, got {v!r}")


def _bool(family: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ModelParamError(f"{family} parameter {name!r} must be true or false, got {type(v).__name__} {v!r}")


def _choice(family: str, name: str, v: Any, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise ModelParamError(f"{family} parameter {name!r} must be one of {', '.join(choices)}; got {v!r}")


@dataclass(frozen=True)
class RidgeParams:
    """``alpha`` >= 0: L2 penalty (scikit-learn ``Ridge`` scaling, not divided by n);
    ``fit_intercept``: centre X and y and fit an intercept (default true)."""

    alpha: float = 1.0
    fit_intercept: bool = True

    def __post_init__(self) -> None:
        _float("ridge", "alpha", self.alpha, 0.0)
        _bool("ridge", "fit_intercept", self.fit_intercept)


def _check_cd(family: str, p: Any) -> None:
    _float(family, "alpha", p.alpha, 0.0)
    _bool(family, "fit_intercept", p.fit_intercept)
    _int(family, "max_iter", p.max_iter, 1)
    _float(family, "tol", p.tol, 0.0, lo_open=True)


@dataclass(frozen=True)
class ElasticNetParams:
    """``alpha`` >= 0 (overall penalty), ``l1_ratio`` in [0, 1] (L1 share), ``fit_intercept``,
    ``max_iter`` >= 1 (coordinate-descent sweeps), ``tol`` > 0 (see the module docstring)."""

    alpha: float = 1.0
    l1_ratio: float = 0.5
    fit_intercept: bool = True
    max_iter: int = 1000
    tol: float = 1e-4

    def __post_init__(self) -> None:
        _float("elastic_net", "l1_ratio", self.l1_ratio, 0.0, 1.0)
        _check_cd("elastic_net", self)


@dataclass(frozen=True)
class LassoParams:
    """As :class:`ElasticNetParams` with ``l1_ratio`` fixed at 1."""

    alpha: float = 1.0
    fit_intercept: bool = True
    max_iter: int = 1000
    tol: float = 1e-4

    def __post_init__(self) -> None:
        _check_cd("lasso", self)

    @property
    def l1_ratio(self) -> float:
        return 1.0


@dataclass(frozen=True)
class RandomForestParams:
    """``n_estimators`` >= 1 trees; ``max_depth`` (None = grow until leaves are pure or hold
    ``min_samples_leaf`` rows); ``min_samples_leaf`` >= 1; ``max_features`` in (0, 1]: share of
    features tried per split; ``bootstrap``: sample rows with replacement per tree; ``seed``."""

    n_estimators: int = 100
    max_depth: int | None = None
    min_samples_leaf: int = 1
    max_features: float = 1.0
    bootstrap: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        f = "random_forest"
        _int(f, "n_estimators", self.n_estimators, 1)
        if self.max_depth is not None:
            _int(f, "max_depth", self.max_depth, 1)
        _int(f, "min_samples_leaf", self.min_samples_leaf, 1)
        _float(f, "max_features", self.max_features, 0.0, 1.0, lo_open=True)
        _bool(f, "bootstrap", self.bootstrap)
        _int(f, "seed", self.seed, 0, 2**32 - 1)


@dataclass(frozen=True)
class GbdtParams:
    """XGBoost ``reg:squarederror`` with the ``hist`` tree method. ``n_estimators`` >= 1 boosting
    rounds; ``max_depth`` >= 1; ``learning_rate`` in (0, 1]; ``subsample`` and
    ``colsample_bytree`` in (0, 1]; ``min_child_weight`` >= 0; ``reg_lambda`` / ``reg_alpha`` >= 0
    (L2 / L1 on leaf weights); ``max_bin`` >= 2 histogram bins; ``seed``."""

    n_estimators: int = 200
    max_depth: int = 6
    learning_rate: float = 0.1
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    reg_alpha: float = 0.0
    max_bin: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        f = "gbdt"
        _int(f, "n_estimators", self.n_estimators, 1)
        _int(f, "max_depth", self.max_depth, 1, 64)
        _float(f, "learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        _float(f, "subsample", self.subsample, 0.0, 1.0, lo_open=True)
        _float(f, "colsample_bytree", self.colsample_bytree, 0.0, 1.0, lo_open=True)
        _float(f, "min_child_weight", self.min_child_weight, 0.0)
        _float(f, "reg_lambda", self.reg_lambda, 0.0)
        _float(f, "reg_alpha", self.reg_alpha, 0.0)
        _int(f, "max_bin", self.max_bin, 2, 65536)
        _int(f, "seed", self.seed, 0, 2**31 - 1)


def _check_nn(family: str, p: Any) -> None:
    _int(family, "epochs", p.epochs, 1)
    _int(family, "batch_size", p.batch_size, 1)
    _int(family, "accum_steps", p.accum_steps, 1)
    _float(family, "learning_rate", p.learning_rate, 0.0, lo_open=True)
    _float(family, "weight_decay", p.weight_decay, 0.0)
    _float(family, "dropout", p.dropout, 0.0, 1.0, hi_open=True)
    _choice(family, "mixed_precision", p.mixed_precision, MIXED_PRECISION)
    _int(family, "seed", p.seed, 0, 2**63 - 1)


@dataclass(frozen=True)
class MlpParams:
    """Feed-forward net ``n_features -> hidden_sizes... -> 1`` (ReLU, dropout after each hidden
    layer), MSE loss, Adam. ``epochs`` >= 1; ``batch_size`` >= 1 rows per micro-batch;
    ``accum_steps`` >= 1 micro-batches per optimiser step (gradient accumulation: an effective
    batch of ``batch_size * accum_steps`` rows); ``learning_rate`` > 0; ``weight_decay`` >= 0;
    ``dropout`` in [0, 1); ``mixed_precision``: ``auto`` (bfloat16 autocast on a GPU, off on the
    CPU), ``bf16`` (autocast on either device) or ``off``; ``seed`` (weights and shuffling)."""

    hidden_sizes: tuple[int, ...] = (64, 32)
    epochs: int = 20
    batch_size: int = 256
    accum_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    mixed_precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        hs = self.hidden_sizes
        if isinstance(hs, list):
            object.__setattr__(self, "hidden_sizes", tuple(hs))
            hs = self.hidden_sizes
        if not isinstance(hs, tuple) or not hs:
            raise ModelParamError(f"mlp parameter 'hidden_sizes' must be a non-empty list of ints, got {hs!r}")
        for i, h in enumerate(hs):
            _int("mlp", f"hidden_sizes[{i}]", h, 1)
        _check_nn("mlp", self)


@dataclass(frozen=True)
class GruParams:
    """GRU sequence model. A row of X holds ``seq_len`` consecutive steps of
    ``n_features / seq_len`` features each, oldest step first (see :func:`stack_lags`); the last
    hidden state feeds a linear head. ``seq_len`` >= 1; ``hidden_size`` >= 1; ``num_layers`` >= 1;
    the training settings are those of :class:`MlpParams`."""

    seq_len: int = 8
    hidden_size: int = 32
    num_layers: int = 1
    epochs: int = 20
    batch_size: int = 256
    accum_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    mixed_precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _int("gru", "seq_len", self.seq_len, 1)
        _int("gru", "hidden_size", self.hidden_size, 1)
        _int("gru", "num_layers", self.num_layers, 1)
        _check_nn("gru", self)


ModelParams = (RidgeParams | LassoParams | ElasticNetParams | RandomForestParams | GbdtParams
               | MlpParams | GruParams)


def params_from_mapping(family: str, cls: type[Any], values: Mapping[str, Any] | None) -> Any:
    """Build ``cls`` from a mapping (a job spec's ``params``); unknown keys raise
    :class:`ModelParamError` listing the valid ones. Lists become tuples (JSON has no tuples)."""
    values = dict(values or {})
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ModelParamError(f"{family} has no parameter {', '.join(map(repr, unknown))}; "
                              f"valid: {', '.join(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def params_to_dict(params: Any) -> dict[str, Any]:
    """JSON-ready dict of a params dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}
