"""Bars replayed from a bar topic, as the factor engine's :class:`~mystocks_gpu.gpu_ops.factors.Panel`.

The replay is the streaming runtime's deterministic :class:`~mystocks_gpu.streams.replay.ReplaySource`
over ``[start, end)`` (event time); records are decoded in batches (``mystocks.md.Bar``), records
that do not decode are counted and skipped. Dates are the sorted union of the bars' ``ts_event``;
a symbol without a bar on a date is NaN there (the engine's missing value). A (symbol, date) loaded
twice keeps the record read last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.factors import Panel
from mystocks_gpu.processors.exceptions import JobSpecError, JobStopped

#: bar fields the panel carries (the expression language's ``$open`` ... ``$vwap``)
BAR_FIELDS = ("open", "high", "low", "close", "volume", "vwap")


@dataclass
class BarPanel:
    """The panel (fields ``(n_dates, n_symbols)``, ``dates`` int64 ns, ``symbols``), the records
    read and rejected, and the universe symbols that had no bar in the range."""

    panel: Panel
    records: int
    rejected: int
    missing: list[str] = field(default_factory=list)

    @property
    def dates(self) -> np.ndarray:
        return np.asarray(self.panel.dates, dtype=np.int64)

    @property
    def symbols(self) -> list[str]:
        return list(self.panel.symbols or [])


def load_panel(kafka: Any, topic: str, start: int | None, end: int | None, universe: Sequence[str] | str,
               store: Any = None, should_stop: Callable[[], bool] | None = None) -> BarPanel:
    """Replay ``topic`` over ``[start, end)`` into a :class:`BarPanel` of ``universe`` (``"all"`` =
    every symbol seen). :class:`JobSpecError` when no bar of the universe is in the range."""
    from mystocks_gpu.schemas.batch_codec import BatchDecoder
    from mystocks_gpu.schemas.symbols import SymbolTable
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    table = SymbolTable()
    dec = BatchDecoder("mystocks.md.Bar", store, symbols=table)
    codes, stamps, values = [], [], []
    records = rejected = 0
    for batch in ReplaySource(kafka, topic, ReplayRange(start, end), max_records=50_000).batches():
        if should_stop is not None and should_stop():
            raise JobStopped("stopped while replaying bars")
        d = dec.decode(batch.values)
        records += len(batch)
        rejected += d.n_bad
        c = d.columns
        codes.append(c["symbol"])
        stamps.append(c["ts_event"])
        values.append(np.column_stack([c[f] for f in BAR_FIELDS]))
    if not codes:
        raise JobSpecError(f"no bars in {topic} over the time range")
    code = np.concatenate(codes)
    ts = np.concatenate(stamps)
    vals = np.concatenate(values)
    keep = np.ones(ts.size, dtype=bool)
    if start is not None:
        keep &= ts >= start
    if end is not None:
        keep &= ts < end
    names = np.asarray(table.symbols, dtype=object)
    if isinstance(universe, str):
        wanted = sorted({str(s) for s in names[np.unique(code[keep])]}) if keep.any() else []
    else:
        wanted = sorted(universe)
    present_codes = np.array([table.get(s) if table.get(s) is not None else -1 for s in wanted], dtype=np.int64)
    in_universe = np.zeros(len(names) + 1, dtype=bool)
    in_universe[present_codes[present_codes >= 0]] = True
    keep &= in_universe[code]
    seen = {str(s) for s in names[np.unique(code[keep])]} if keep.any() else set()
    symbols = [s for s in wanted if s in seen]
    missing = [s for s in wanted if s not in seen]
    if not symbols:
        raise JobSpecError(f"no bars for the universe in {topic} over the time range")
    code, ts, vals = code[keep], ts[keep], vals[keep]
    col_of = np.full(len(names), -1, dtype=np.int64)
    col_of[[table.code(s) for s in symbols]] = np.arange(len(symbols))
    cols = col_of[code]
    dates = np.unique(ts)
    rows = np.searchsorted(dates, ts)
    flat = rows * len(symbols) + cols
    # the last record of each (date, symbol) wins: unique over the reversed order
    _, last_rev = np.unique(flat[::-1], return_index=True)
    pick = flat.size - 1 - last_rev
    fields = {}
    for j, f in enumerate(BAR_FIELDS):
        arr = np.full(dates.size * len(symbols), np.nan)
        arr[flat[pick]] = vals[pick, j]
        fields[f] = arr.reshape(dates.size, len(symbols))
    return BarPanel(Panel(fields, dates.astype(np.int64), symbols), records, rejected, missing)
