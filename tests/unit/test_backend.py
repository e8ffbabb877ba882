"""The array-backend helpers shared by the GPU/CPU twins."""

from __future__ import annotations

import pytest


def test_xp_errstate_silences_numpy_and_is_a_no_op_for_other_modules() -> None:
    import types
    import warnings

    import numpy as np

    from mystocks_gpu.gpu_ops.backend import xp_errstate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xp_errstate(np, divide="ignore", invalid="ignore"):
            assert np.isinf(np.array([1.0]) / 0.0).all() and np.isnan(np.array([0.0]) / 0.0).all()
    with pytest.warns(RuntimeWarning):
        _ = np.array([1.0]) / 0.0
    with xp_errstate(types.ModuleType("cupy_like"), divide="ignore"):
        pass
