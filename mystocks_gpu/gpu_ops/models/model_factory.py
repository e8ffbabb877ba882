"""Model families by name: :data:`FAMILIES`, :func:`make_model`, :func:`load_model`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mystocks_gpu.gpu_ops.models.exceptions import UnknownModelFamily
from mystocks_gpu.gpu_ops.models.linear_models import ElasticNetModel, LassoModel, RidgeModel
from mystocks_gpu.gpu_ops.models.model_base import Model
from mystocks_gpu.gpu_ops.models.neural_models import GruModel, MlpModel
from mystocks_gpu.gpu_ops.models.tree_models import GbdtModel, RandomForestModel

_CLASSES: dict[str, type[Model]] = {
    c.family: c for c in (RidgeModel, LassoModel, ElasticNetModel, RandomForestModel, GbdtModel,
                          MlpModel, GruModel)
}
#: every family name, in documentation order
FAMILIES: tuple[str, ...] = tuple(_CLASSES)
#: the pip extra each family needs beyond the core install (None: core only)
FAMILY_EXTRA: dict[str, str | None] = {
    "ridge": None, "lasso": None, "elastic_net": None, "random_forest": "ml", "gbdt": "ml",
    "mlp": "dl", "gru": "dl",
}


def make_model(family: str, params: Mapping[str, Any] | Any = None, *, backend: str = "auto",
               n_threads: int | None = None, devices: tuple[int, ...] = ()) -> Model:
    """An unfitted model of ``family`` with ``params`` (a mapping of the family's fields, its
    params dataclass, or None for defaults). Raises :class:`UnknownModelFamily`,
    :class:`ModelParamError` (naming the parameter) or :class:`MissingLibraryError` (naming the
    extra to install)."""
    cls = _CLASSES.get(family) if isinstance(family, str) else None
    if cls is None:
        raise UnknownModelFamily(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return cls(params, backend=backend, n_threads=n_threads, devices=devices)


def load_model(blob: bytes, *, backend: str = "auto", expected_sha256: str | None = None,
               n_threads: int | None = None, devices: tuple[int, ...] = ()) -> Model:
    """The model serialised in ``blob`` (any family), its hashes checked
    (:class:`ModelIntegrityError` on mismatch or corruption)."""
    return Model.from_bytes(blob, backend=backend, expected_sha256=expected_sha256,
                            n_threads=n_threads, devices=devices)
