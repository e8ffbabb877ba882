"""Element-wise operators, one implementation for NumPy (CPU) and CuPy (GPU) via ``xp``.

IEEE semantics (``x / 0`` is ±inf, ``Log(0)`` is -inf, ``Log(-1)`` NaN), except: comparisons
(``Gt Ge Lt Le Eq Ne``) give 1.0 / 0.0 and NaN where either side is NaN; ``If(c, a, b)`` is ``a``
where ``c != 0``, ``b`` where ``c == 0`` and NaN where ``c`` is NaN; ``Greater``/``Less`` are
``maximum``/``minimum`` (NaN if either is NaN); ``Sign`` of NaN is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_CMP = {"Gt": "greater", "Ge": "greater_equal", "Lt": "less", "Le": "less_equal",
        "Eq": "equal", "Ne": "not_equal"}
_BIN = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Power": "power",
        "Greater": "maximum", "Less": "minimum"}
_UN = {"Abs": "abs", "Log": "log", "Sign": "sign", "Neg": "negative"}
#: binary operators that take a Python float for either argument (NumPy and CuPy broadcast it)
SCALAR_OK: frozenset[str] = frozenset(_BIN)


def apply_elementwise(xp: Any, op: str, args: Sequence[Any], out: Any = None) -> Any:
    """Apply element-wise operator ``op`` (see :data:`.ops.ELEM_OPS`) to equally shaped arrays
    (binary arithmetic also takes a Python float for either argument); into ``out`` (an array of
    the result's shape, returned) when given."""
    with np.errstate(all="ignore"):
        if op in _UN:
            return getattr(xp, _UN[op])(args[0], out=out)
        if op in _BIN:
            return getattr(xp, _BIN[op])(args[0], args[1], out=out)
        if op in _CMP:
            a, b = args
            res = getattr(xp, _CMP[op])(a, b).astype(np.float64)
            res[xp.isnan(a) | xp.isnan(b)] = np.nan
        elif op == "If":
            c, a, b = args
            res = xp.where(xp.isnan(c), np.nan, xp.where(c != 0, a, b))
        else:
            raise KeyError(f"not an element-wise operator: {op}")
    if out is None:
        return res
    out[...] = res
    return out
