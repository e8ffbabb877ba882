"""The factor library shipped as data: ``alpha158.toml`` and ``classic.toml`` (see their headers).

:func:`load_library` returns ``name -> expression`` in file order; :func:`available` lists the
library names. TOML is read with ``tomllib`` (Python >= 3.11) or ``tomli``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import resources
from typing import Any

from mystocks_gpu.gpu_ops.factors.exceptions import FactorConfigError
from mystocks_gpu.gpu_ops.factors.ops import DEFAULT_FIELDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - py3.10
    import tomli as tomllib


def available() -> list[str]:
    """Names of the shipped libraries (``alpha158``, ``classic``)."""
    files = resources.files(__name__)
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _expand(group: str, body: dict[str, Any], fields: frozenset[str]) -> dict[str, str]:
    req = body.get("requires", [])
    unless = body.get("unless", [])
    if req and not set(req) <= fields:
        return {}
    if unless and set(unless) <= fields:
        return {}
    out: dict[str, str] = {}
    if "templates" in body:
        windows = body.get("windows")
        if not isinstance(windows, list) or not all(isinstance(w, int) for w in windows):
            raise FactorConfigError(f"group [{group}]: templates need an integer list `windows`")
        for name, tpl in body["templates"].items():
            for w in windows:
                out[f"{name}{w}"] = str(tpl).replace("{d}", str(w))
    for k, v in body.items():
        if k in ("requires", "unless", "windows", "templates"):
            continue
        if not isinstance(v, str):
            raise FactorConfigError(f"group [{group}]: {k} must be an expression string")
        out[k] = v
    return out


def load_library(name: str = "alpha158", fields: Iterable[str] = DEFAULT_FIELDS) -> dict[str, str]:
    """``factor name -> expression`` of a shipped library, in file order.

    Args:
        name: ``alpha158`` or ``classic`` (or another ``*.toml`` in this folder).
        fields: the fields the panel carries; selects ``requires``/``unless`` groups (e.g.
            ``classic``'s turnover uses ``$shares`` when present, else a volume proxy).
    """
    try:
        text = resources.files(__name__).joinpath(f"{name}.toml").read_text()
    except FileNotFoundError:
        raise FactorConfigError(
            f"unknown factor library {name!r}; available: {', '.join(available())}") from None
    data = tomllib.loads(text)
    fset = frozenset(fields)
    out: dict[str, str] = {}
    for group, body in data.items():
        if group == "meta" or not isinstance(body, dict):
            continue
        for k, v in _expand(group, body, fset).items():
            if k in out:
                raise FactorConfigError(f"library {name!r}: factor {k} defined twice")
            out[k] = v
    return out
