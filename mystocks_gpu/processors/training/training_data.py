"""The data of a ``train`` job: its input topics replayed over the time range into a
(date x symbol) panel, labelled from the replayed prices, with the row policy applied.

Steps (:func:`load_training_data`):

1. **Replay** every input with :class:`~mystocks_gpu.streams.replay.ReplaySource` over
   ``[start, end)`` (deterministic batches; ``ts_event`` filtered exactly in ns). Records are
   decoded in batches by the decoder of their schema (:data:`INPUT_SCHEMAS`: the Bar batch codec,
   the FeatureVector map decoder); a topic outside the catalog is read with the schema its first
   record names. Undecodable records and records of another schema are skipped and counted
   (``rows_rejected``). Symbols share one table across inputs.
2. **Sample** each input onto the panel: with a ``frequency`` step, the last row (by event time,
   then replay order) per symbol and step; the panel date is the step's start. Without one, the
   rows' own times (bars), the last copy of a repeated (symbol, time) winning.
3. **Join** the inputs that give features on (symbol, date) (outer), keep the universe, sort by (symbol name, date):
   the row order, hence the fitted model, does not depend on how the replay interned symbols.
4. **Label** from the label input's own sampled prices, never from beyond the replayed window:
   ``bars``: :func:`~mystocks_gpu.gpu_ops.models.forward_returns` over the symbol's next
   ``horizon`` price rows; ``seconds``: the price at exactly ``date + horizon`` (NaN if that row
   is missing). ``label_end`` (when the label is known) drives the exact walk-forward purge.
5. **Row policy** (documented contract): rows whose label is undefined are dropped and counted
   (``label_undefined``); rows with a NaN/inf feature are dropped and counted
   (``nonfinite_features``, ``nan_policy="drop"``) or fail the job (``"reject"``).

Bad input raises :class:`~mystocks_gpu.gpu_ops.models.TrainingDataError` with the reason: no
record in the range (empty range), an unknown feature column (the message lists the columns the
topic carries), an ambiguous column, a horizon longer than the data, more rows than ``max_rows``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.models import TrainingDataError, forward_returns
from mystocks_gpu.gpu_ops.models.forward_labels import LABEL_END_UNKNOWN
from mystocks_gpu.processors.exceptions import JobStopped
from mystocks_gpu.processors.training.train_spec import (
    FEATURE_SCHEMA,
    INPUT_SCHEMAS,
    TrainSpec,
    step_ns,
)
from mystocks_gpu.schemas.batch_codec.numeric_columns import NumericColumnsDecoder, schema_of
from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]


@dataclass
class InputFrame:
    """One input topic's replayed rows: symbol codes, event times (ns), the decoded columns."""

    topic: str
    schema: str
    sym: np.ndarray
    ts: np.ndarray
    cols: dict[str, np.ndarray]
    records: int = 0
    rejected: int = 0
    available: tuple[str, ...] = ()


@dataclass
class TrainingData:
    """The labelled rows a model trains on (``m`` rows after the row policy, sorted by
    (symbol name, date)): ``X`` float64 ``(m, p)``, ``y`` ``(m,)``, ``dates`` / ``label_end``
    int64 ns ``(m,)``, ``sym`` int32 codes into ``symbols`` ``(m,)``; ``price`` the label input's
    sampled prices (columns ``sym``, ``date``, ``price``) for the long-short backtest."""

    X: np.ndarray
    y: np.ndarray
    dates: np.ndarray
    label_end: np.ndarray
    sym: np.ndarray
    symbols: list[str]
    features: list[str]
    columns: list[str]
    feature_inputs: dict[str, str]
    price: pd.DataFrame
    step_ns: int | None
    counts: dict[str, Any] = field(default_factory=dict)


def replay_input(kafka: Any, topic: str, columns: list[str], start: int | None, end: int | None,
                 symbols: SymbolTable, should_stop: StopFn | None = None,
                 on_batch: Callable[[int], None] | None = None, batch_records: int = 50_000,
                 store: SchemaStore | None = None) -> InputFrame:
    """Replay ``topic`` over ``[start, end)`` and decode it (``columns``: feature-map keys to
    extract from a feature topic; a bar topic gives every Bar column; ``store``: the process's
    schema ids, default the manifest)."""
    if store is None:
        from mystocks_gpu.schemas.schema_store import default_store

        store = default_store()
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    dec: NumericColumnsDecoder | None = None
    first_value: bytes | None = None
    syms: list[np.ndarray] = []
    tss: list[np.ndarray] = []
    parts: list[dict[str, np.ndarray]] = []
    records = rejected = 0
    src = ReplaySource(kafka, topic, ReplayRange(start, end), max_records=batch_records)
    # value chunks when the replay source offers them (no per-record batch bookkeeping; the event
    # time is filtered below, exactly), else its time-filtered batches
    stream = src.chunks() if hasattr(src, "chunks") else src.batches()
    for part in stream:
        if should_stop is not None and should_stop():
            raise JobStopped("stopped while replaying")
        values = part.values
        records += len(values)
        if dec is None:
            first = next((v for v in values if schema_of(v, store) in INPUT_SCHEMAS), None)
            if first is None:
                named = {str(schema_of(v, store)) for v in values if schema_of(v, store) is not None}
                raise TrainingDataError(f"topic {topic} holds no Bar or FeatureVector records "
                                        f"(its records are {sorted(named) or 'undecodable'})")
            first_value = first
            dec = NumericColumnsDecoder(schema_of(first, store) or "", columns, symbols, store)
        got = dec.decode(values)
        sym, ts, cols = got.sym, got.ts, got.columns
        rejected += got.n_bad
        keep = np.ones(ts.size, bool)
        if start is not None:
            keep &= ts >= start
        if end is not None:
            keep &= ts < end
        if keep.all():  # the usual case: no copy of every column
            syms.append(sym)
            tss.append(ts)
            parts.append(cols)
        else:
            syms.append(sym[keep])
            tss.append(ts[keep])
            parts.append({k: v[keep] for k, v in cols.items()})
        if on_batch is not None:
            on_batch(len(values))
    if dec is None or not sum(t.size for t in tss):
        rng = f"[{start}, {end})" if start is not None or end is not None else "(whole topic)"
        raise TrainingDataError(f"empty range: no record of topic {topic} in {rng} (ns); "
                                f"{records} record(s) replayed")
    cols = {k: np.concatenate([p[k] for p in parts]) for k in dec.columns}
    available = tuple(dec.columns)
    if dec.schema == FEATURE_SCHEMA:
        available = _feature_keys(first_value, store)
        cols = {k: v for k, v in cols.items() if dec.present[dec.columns.index(k)]}
    return InputFrame(topic, dec.schema, np.concatenate(syms), np.concatenate(tss), cols, records, rejected,
                      available)


def _feature_keys(value: bytes | None, store: SchemaStore | None = None) -> tuple[str, ...]:
    """The keys of a feature vector's ``values`` map (to name what a topic carries)."""
    from mystocks_gpu.schemas import AvroCodec

    try:
        return tuple(sorted(str(k) for k in AvroCodec(store).decode(value).get("values", {})))
    except Exception:  # noqa: BLE001 - only used for an error message
        return ()


def sample(frame: InputFrame, step: int | None) -> pd.DataFrame:
    """The input on the panel grid: columns ``sym``, ``date`` and its value columns; one row per
    (symbol, date): the last by event time, then replay order."""
    date = frame.ts if step is None else (frame.ts // step) * step
    arrival = np.arange(frame.ts.size)
    order = np.lexsort((arrival, frame.ts, date, frame.sym))
    s, d = frame.sym[order], date[order]
    last = np.ones(order.size, bool)
    last[:-1] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    rows = order[last]
    out = {"sym": frame.sym[rows].astype(np.int32), "date": date[rows].astype(np.int64)}
    out.update({f"{frame.topic}:{k}": v[rows] for k, v in frame.cols.items()})
    return pd.DataFrame(out)


def resolve_columns(spec: TrainSpec, frames: dict[str, InputFrame], refs: list[str]) -> list[str]:
    """Qualified ``topic:column`` names of ``refs``; unknown / ambiguous columns raise."""
    out = []
    for ref in refs:
        topic, col = spec.resolve(ref)
        where = [topic] if topic else [t for t in spec.inputs if col in frames[t].cols]
        if topic and col not in frames[topic].cols or not where:
            carried = "; ".join(f"{t} carries {', '.join(frames[t].available) or 'nothing'}"
                                for t in ([topic] if topic else spec.inputs))
            raise TrainingDataError(f"unknown feature column {col!r}: {carried}")
        if len(where) > 1:
            raise TrainingDataError(f"column {col!r} is in {', '.join(where)}: write it as 'topic:{col}'")
        out.append(f"{where[0]}:{col}")
    return out


def _labels(spec: TrainSpec, price: pd.DataFrame) -> pd.DataFrame:
    """``sym``, ``date``, ``label``, ``label_end`` from the label input's sampled prices."""
    sym, date = price["sym"].to_numpy(), price["date"].to_numpy(np.int64)
    p = price["price"].to_numpy(np.float64)
    if spec.horizon_unit == "bars":
        lab = forward_returns(sym, date, p, int(spec.horizon), spec.label_kind)
        return pd.DataFrame({"sym": sym, "date": date, "label": lab.label, "label_end": lab.label_end})
    h = int(spec.horizon) * 10**9
    span = int(date.max() - date.min()) if date.size else 0
    if h >= span:
        raise TrainingDataError(f"label horizon {spec.horizon} s is longer than the data: the replayed prices "
                                f"span {span / 1e9:g} s")
    ahead = price.rename(columns={"price": "p1"}).assign(date=price["date"] - h)
    m = price.merge(ahead, on=["sym", "date"], how="left")
    p0, p1 = m["price"].to_numpy(np.float64), m["p1"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(p0) & np.isfinite(p1) & (p0 > 0) & (p1 > 0)
        r = np.where(ok, np.log(p1 / p0) if spec.label_kind == "log" else p1 / p0 - 1.0, np.nan)
    end = np.where(ok, m["date"].to_numpy(np.int64) + h, LABEL_END_UNKNOWN)
    return pd.DataFrame({"sym": m["sym"].to_numpy(), "date": m["date"].to_numpy(np.int64), "label": r,
                         "label_end": end})


def _ns(v: int | str | None) -> int | None:
    """A spec time after validation (an int ns or None)."""
    assert v is None or isinstance(v, int)
    return v


def load_training_data(spec: TrainSpec, kafka: Any, progress: ProgressFn | None = None,
                       should_stop: StopFn | None = None, store: SchemaStore | None = None) -> TrainingData:
    """Replay, sample, join, label and filter (see the module docstring); ``store``: the process's
    schema ids (default the manifest)."""
    symbols = SymbolTable()
    frames: dict[str, InputFrame] = {}
    plain = [c for t, c in (spec.resolve(r) for r in [*spec.features, spec.label_column or ""]) if t is None]
    for k, topic in enumerate(spec.inputs):
        explicit = [c for t, c in (spec.resolve(r) for r in [*spec.features, spec.label_column or ""]) if t == topic]
        wanted = list(dict.fromkeys([*plain, *explicit]))
        seen = [0]

        def on_batch(n: int, topic: str = topic, k: int = k, seen: list[int] = seen) -> None:
            seen[0] += n
            if progress is not None:
                progress(0.01 + 0.07 * k / len(spec.inputs), f"replaying {topic}: {seen[0]:,} records")

        frames[topic] = replay_input(kafka, topic, wanted, _ns(spec.start), _ns(spec.end), symbols, should_stop,
                                     on_batch, store=store)
    return build_training_data(spec, frames, symbols)


def build_training_data(spec: TrainSpec, frames: dict[str, InputFrame], symbols: SymbolTable) -> TrainingData:
    """Steps 2-5 of the module docstring on replayed frames."""
    features = resolve_columns(spec, frames, list(spec.features))
    label_col = resolve_columns(spec, frames, [spec.label_column or ""])[0]
    step = spec.step()
    grid = step_ns(spec.frequency) if spec.frequency is not None else None
    panels = {t: sample(f, grid) for t, f in frames.items()}
    label_topic = label_col.partition(":")[0]
    price = panels[label_topic][["sym", "date", label_col]].rename(columns={label_col: "price"})
    panel: pd.DataFrame | None = None
    for t in spec.inputs:
        own = [c for c in features if c.partition(":")[0] == t]
        if not own:
            continue  # an input that only gives the label price does not add rows
        part = panels[t][["sym", "date", *own]]
        panel = part if panel is None else panel.merge(part, on=["sym", "date"], how="outer")
    assert panel is not None
    names = np.asarray(symbols.symbols, dtype=object)
    if spec.universe != "all":
        wanted = {symbols.code(s) for s in spec.universe}
        panel = panel[panel["sym"].isin(wanted)]
        price = price[price["sym"].isin(wanted)]
    if not len(panel):
        raise TrainingDataError(f"empty range: no rows of the universe in {', '.join(spec.inputs)}")
    if len(panel) > spec.max_rows:
        raise TrainingDataError(f"the panel has {len(panel):,} rows, more than max_rows={spec.max_rows:,}")
    labels = _labels(spec, price)
    labels["label_end"] = labels["label_end"].astype("Int64")  # nullable: ns must not pass through float
    panel = panel.merge(labels, on=["sym", "date"], how="left")
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(names.astype(str), kind="stable")] = np.arange(len(names))
    order = np.lexsort((panel["date"].to_numpy(np.int64), rank[panel["sym"].to_numpy()]))
    panel = panel.iloc[order].reset_index(drop=True)
    X = np.ascontiguousarray(panel[features].to_numpy(np.float64))
    y = panel["label"].to_numpy(np.float64)
    label_ok = np.isfinite(y)
    feat_ok = np.isfinite(X).all(axis=1)
    n_bad_features = int((label_ok & ~feat_ok).sum())
    if spec.nan_policy == "reject" and not feat_ok.all():
        i = int(np.flatnonzero(~feat_ok)[0])
        bad = [features[j] for j in np.flatnonzero(~np.isfinite(X[i]))]
        raise TrainingDataError(f"{int((~feat_ok).sum())} row(s) have NaN/inf features (nan_policy='reject'); first: "
                                f"symbol {names[panel['sym'].iat[i]]} at {int(panel['date'].iat[i])} ns, "
                                f"column(s) {', '.join(bad)}")
    keep = label_ok & feat_ok
    if not keep.any():
        raise TrainingDataError(f"no usable row: {int((~label_ok).sum())} without a label, {n_bad_features} with "
                                "NaN/inf features")
    le = panel["label_end"].to_numpy(dtype=np.int64, na_value=LABEL_END_UNKNOWN)
    counts = {
        "records": {t: f.records for t, f in frames.items()},
        "rows_rejected": {t: f.rejected for t, f in frames.items()},
        "panel_rows": int(len(panel)), "rows_used": int(keep.sum()),
        "rows_dropped": {"label_undefined": int((~label_ok).sum()), "nonfinite_features": n_bad_features},
        "symbols": int(panel["sym"].nunique()), "dates": int(panel["date"].nunique()),
        "first_date": int(panel["date"].min()), "last_date": int(panel["date"].max()),
    }
    return TrainingData(
        X=X[keep], y=y[keep], dates=panel["date"].to_numpy(np.int64)[keep],
        label_end=le[keep],
        sym=panel["sym"].to_numpy(np.int32)[keep], symbols=list(symbols.symbols), features=features,
        columns=[f.partition(":")[2] for f in features],
        feature_inputs={f.partition(":")[2]: f.partition(":")[0] for f in features},
        price=price.reset_index(drop=True), step_ns=step, counts=counts)
