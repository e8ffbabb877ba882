"""The input of the factor engine: a :class:`Panel` of bar fields over dates x symbols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.factors.exceptions import PanelError


@dataclass(frozen=True)
class Panel:
    """Bar fields as float64 arrays shaped ``(n_dates, n_symbols)``, NaN where a symbol has no bar.

    Attributes:
        fields: ``name -> array (n_dates, n_symbols)`` (e.g. ``open high low close volume vwap``);
            converted to float64. All arrays must share one shape.
        dates: optional ``(n_dates,)`` labels (ascending; e.g. int64 ns or datetime64).
        symbols: optional ``(n_symbols,)`` names.
    """

    fields: Mapping[str, Any]
    dates: Any = None
    symbols: Sequence[str] | None = None
    _shape: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.fields:
            raise PanelError("panel has no fields")
        conv: dict[str, np.ndarray] = {}
        shape: tuple[int, ...] | None = None
        for name, arr in self.fields.items():
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim != 2:
                raise PanelError(f"field {name!r} must be 2-D (n_dates, n_symbols), got {a.shape}")
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise PanelError(f"field {name!r} has shape {a.shape}, expected {shape}")
            conv[name] = a
        assert shape is not None
        if shape[0] < 1 or shape[1] < 1:
            raise PanelError(f"panel is empty: shape {shape}")
        if self.dates is not None and len(self.dates) != shape[0]:
            raise PanelError(f"{len(self.dates)} dates for {shape[0]} rows")
        if self.symbols is not None and len(self.symbols) != shape[1]:
            raise PanelError(f"{len(self.symbols)} symbols for {shape[1]} columns")
        object.__setattr__(self, "fields", conv)
        object.__setattr__(self, "_shape", (int(shape[0]), int(shape[1])))

    @property
    def n_dates(self) -> int:
        return self._shape[0]

    @property
    def n_symbols(self) -> int:
        return self._shape[1]

    def field(self, name: str) -> np.ndarray:
        """The ``(n_dates, n_symbols)`` array of a field, or :class:`PanelError` naming it."""
        try:
            return self.fields[name]  # type: ignore[no-any-return]
        except KeyError:
            raise PanelError(
                f"expression uses ${name} but the panel has only: "
                + ", ".join("$" + k for k in self.fields)
            ) from None

    def select_symbols(self, idx: Sequence[int] | np.ndarray) -> Panel:
        """A panel of the given symbol columns."""
        ix = np.asarray(idx)
        syms = None if self.symbols is None else [self.symbols[i] for i in ix.tolist()]
        return Panel({k: v[:, ix] for k, v in self.fields.items()}, self.dates, syms)


def panel_from_frames(frames: Mapping[str, Any]) -> Panel:
    """A :class:`Panel` from wide pandas DataFrames (index dates, columns symbols), aligned on the
    first frame's index and columns."""
    first = next(iter(frames.values()))
    idx, cols = first.index, first.columns
    arrs = {k: f.reindex(index=idx, columns=cols).to_numpy(dtype=np.float64) for k, f in frames.items()}
    return Panel(arrs, np.asarray(idx), [str(c) for c in cols])
