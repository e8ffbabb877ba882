"""Numeric columns of a replayed topic of bars or feature vectors, decoded in batches.

The readers of history that take "a column of a topic" (the ``train`` job's inputs, a backtest's
``signal`` strategy, an optimisation's expected returns from a signal topic) accept either schema:

- ``mystocks.md.Bar``: every column of :data:`BAR_COLUMNS` (float64), by the Bar batch codec;
- ``mystocks.features.FeatureVector``: the ``values`` map projected onto the wanted keys (float64;
  NaN where a record lacks a key) by :class:`~.feature_vectors.FeatureVectorDecoder`;
- any other flat record with ``symbol`` (string) and ``ts_event`` (long), e.g. ``mystocks.ml.Signal``
  (``score``): its numeric fields (long, int, double, float) but ``ts_event``, by the batch codec.

A topic's schema is the one its first framed record names (:func:`schema_of`); records of another
schema, undecodable records and tombstones are counted as bad, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mystocks_gpu.schemas.exceptions import SchemaError
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable

BAR_SCHEMA = "mystocks.md.Bar"
FEATURE_SCHEMA = "mystocks.features.FeatureVector"
#: the schemas this decoder reads, and what their rows are
NUMERIC_SCHEMAS: dict[str, str] = {BAR_SCHEMA: "bars", FEATURE_SCHEMA: "feature vectors"}
#: numeric columns of a Bar record
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "trades")
#: field kinds of a flat record read as numeric (float64) columns
NUMERIC_KINDS = ("long", "int", "double", "float")


def schema_of(value: bytes | None, store: SchemaStore | None = None) -> str | None:
    """The schema name a framed value's id points at (None when unframed or unknown)."""
    from mystocks_gpu.schemas.schema_store import default_store

    if value is None or len(value) < 5 or value[0] != 0:
        return None
    try:
        return (store or default_store()).by_id(int.from_bytes(value[1:5], "big")).name
    except (SchemaError, KeyError):
        return None


@dataclass
class NumericColumns:
    """One decoded batch: ``sym`` int32 codes, ``ts`` int64 event times (ns) and ``columns`` float64,
    all ``(n_ok,)`` for the good rows; ``n_bad`` rows were undecodable or of another schema;
    ``present`` bool ``(len(columns),)``: whether each column appeared in at least one good row."""

    sym: np.ndarray
    ts: np.ndarray
    columns: dict[str, np.ndarray]
    n_bad: int
    present: np.ndarray


class NumericColumnsDecoder:
    """Decode values of ``schema`` into :class:`NumericColumns` (``columns``: the feature keys of a
    feature-vector topic; a bar topic gives every Bar column). Symbols are interned in ``symbols``."""

    def __init__(self, schema: str, columns: Sequence[str], symbols: SymbolTable,
                 store: SchemaStore | None = None) -> None:
        self.schema = schema
        if schema == BAR_SCHEMA:
            from mystocks_gpu.schemas.batch_codec import BatchDecoder

            self.columns = list(BAR_COLUMNS)
            self._flat = BatchDecoder(BAR_SCHEMA, store, symbols=symbols)
        elif schema == FEATURE_SCHEMA:
            from mystocks_gpu.schemas.batch_codec.feature_vectors import FeatureVectorDecoder

            self.columns = list(columns)
            self._fv = FeatureVectorDecoder(self.columns, store, symbols=symbols)
        else:
            from mystocks_gpu.schemas.batch_codec import BatchDecoder

            try:
                self._flat = BatchDecoder(schema, store, symbols=symbols)
            except (SchemaError, KeyError) as exc:
                raise SchemaError(f"cannot read {schema} records as numeric columns ({exc}); the topic must "
                                  f"carry {', '.join(sorted(NUMERIC_SCHEMAS))} or a flat record") from None
            kinds = {p.name: p.kind for p in self._flat.plans}
            if kinds.get("symbol") != "string" or kinds.get("ts_event") != "long":
                raise SchemaError(f"cannot read {schema} records as numeric columns: they need a string "
                                  "'symbol' and a long 'ts_event'")
            self.columns = [n for n, k in kinds.items() if k in NUMERIC_KINDS and n != "ts_event"]
        #: whether each column appeared in a good row of any batch so far
        self.present = np.zeros(len(self.columns), bool)

    def decode(self, values: Sequence[bytes | None]) -> NumericColumns:
        """Decode one batch (a list, or the replay's ``RecordValues``)."""
        if self.schema != FEATURE_SCHEMA:
            d = self._flat.decode(values)  # type: ignore[arg-type]  # read-only sequence of bytes
            c = d.columns
            cols = {k: np.asarray(c[k], np.float64) for k in self.columns}
            present = np.full(len(self.columns), len(c["ts_event"]) > 0)
            self.present |= present
            return NumericColumns(c["symbol"], c["ts_event"], cols, d.n_bad, present)
        f = self._fv.decode(values)
        self.present |= f.present
        return NumericColumns(f.columns["sym"], f.columns["ts"], {k: f.X[:, j] for j, k in enumerate(self.columns)},
                              int(f.status.size - f.index.size), f.present)


__all__ = ["BAR_COLUMNS", "BAR_SCHEMA", "FEATURE_SCHEMA", "NUMERIC_SCHEMAS", "NumericColumns", "NumericColumnsDecoder",
           "schema_of"]
