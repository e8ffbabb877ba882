"""Errors of the model layer (``gpu_ops.models``): training, inference and model serialisation."""

from __future__ import annotations

from mystocks_gpu.exceptions import MyStocksError


class ModelError(MyStocksError):
    """Root of the model layer's errors."""

    exit_code = 2


class UnknownModelFamily(ModelError, ValueError):
    """A model family name that is not one of :data:`FAMILIES`."""


class ModelParamError(ModelError, ValueError):
    """A hyper-parameter (or placement setting) is unknown, of the wrong type or out of range.

    The message names the family and the parameter."""


class MissingLibraryError(ModelError, ImportError):
    """The library a model family needs is not installed; the message names the pip extra."""


class TrainingDataError(ModelError, ValueError):
    """Training / inference input is unusable: empty, wrong shape or dtype, NaN/inf values,
    a horizon longer than the data, or too few dates for the requested walk-forward splits."""


class NotFittedError(ModelError, RuntimeError):
    """``predict`` / ``to_bytes`` was called on a model that was never fitted."""


class TrainingCancelled(ModelError):
    """``should_stop()`` returned true: training stopped after ``done`` of ``total`` units
    (boosting rounds, epochs, tree rounds or coordinate-descent sweeps)."""

    exit_code = 1

    def __init__(self, family: str, unit: str, done: int, total: int) -> None:
        super().__init__(f"{family} training cancelled after {done} of {total} {unit}s")
        self.family = family
        self.unit = unit
        self.done = done
        self.total = total


class ModelIntegrityError(ModelError, ValueError):
    """A serialised model is corrupt, truncated, of an unknown format, or its content hash does
    not match (the bytes were altered, or are not the model the metadata names)."""
