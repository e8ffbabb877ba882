"""Load CSV/Parquet history into a catalog topic (ticks or bars), validated row by row.

Column mapping: ``{schema_field: file_column}``; unmapped schema fields are looked up by name, then
by common aliases (``timestamp``/``time``/``date`` -> ``ts_event``, ``ticker`` -> ``symbol``...), then
defaulted where the schema allows (e.g. a bar's ``interval_ns`` from the topic name). Event time
becomes the Kafka record timestamp (ms), so replays can seek with ``offsets_for_times``.
A bad row stops the load with the file name and line number; nothing partial is hidden.

Row order and duplicates (decided, and always reported — never silent):

- rows are loaded in event-time order: a file with dates newest-first (or otherwise out of order)
  is sorted by time (stable: rows at the same time keep their file order) and the load says how
  many rows were out of order;
- a repeated key — (symbol, ts_event) for bars, (symbol, ts_event, seq) for records with a ``seq``
  — is rejected by default, naming the file and both lines (``duplicates="reject"``), or with
  ``duplicates="last"`` the last row in the file wins and the load says how many were dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.schemas import AvroCodec, ValidationError, validate
from mystocks_gpu.topics import TopicSpec

ALIASES: dict[str, tuple[str, ...]] = {
    "ts_event": ("timestamp", "time", "datetime", "date", "ts", "Date", "Datetime", "Timestamp"),
    "symbol": ("ticker", "code", "instrument", "Symbol", "Ticker"),
    "open": ("Open", "o"), "high": ("High", "h"), "low": ("Low", "l"), "close": ("Close", "c"),
    "volume": ("Volume", "vol", "v"), "price": ("px", "last", "Price"), "size": ("qty", "quantity", "Size"),
}
INTERVALS_NS = {"1s": 10**9, "1m": 60 * 10**9, "1h": 3600 * 10**9, "1d": 86_400 * 10**9}


class LoadError(MyStocksError):
    """A history file could not be read or has a bad row (the message names file and line)."""

    exit_code = 2


@dataclass(frozen=True)
class LoadOptions:
    """How to map a file onto a topic's schema."""

    mapping: Mapping[str, str] = field(default_factory=dict)
    symbol: str | None = None  #: constant symbol when the file has no symbol column
    ts_unit: str = "auto"  #: auto | s | ms | us | ns | iso
    duplicates: str = "reject"  #: reject | last (see the module doc)

    def __post_init__(self) -> None:
        if self.duplicates not in ("reject", "last"):
            raise LoadError(f"duplicates must be 'reject' or 'last', got {self.duplicates!r}")


@dataclass
class PreparedFile:
    """A validated file: ``(key, framed value, timestamp_ms)`` per row in load order, and notes for
    the user (rows re-ordered, duplicates dropped)."""

    items: list[tuple[bytes, bytes, int]]
    notes: list[str]
    rows_in_file: int


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise LoadError(f"{path}: malformed CSV: {exc}") from None
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: cannot read: {exc}") from None


def _ts_ns(col: pd.Series, unit: str, path: Path) -> np.ndarray:
    """Event times as int64 ns. Numeric times are converted exactly from their decimal text
    (``1777689380.521`` s -> ``1777689380521000000``; ``1777689380521.5`` ms keeps its half ms); a
    value with digits below a nanosecond, or beyond int64, is an error naming the line."""
    num = pd.to_numeric(col, errors="coerce")
    if unit == "iso" or (unit == "auto" and num.isna().any()):
        ts = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
        bad = ts.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise LoadError(f"{path}:{i + 2}: cannot parse time {col.iloc[i]!r}")
        return ts.astype("int64").to_numpy() if ts.dt.unit == "ns" else ts.dt.as_unit("ns").astype("int64").to_numpy()
    if unit == "auto":
        vals = num.to_numpy(dtype=np.float64)
        mag = np.nanmax(np.abs(vals)) if len(vals) else 0
        unit = "ns" if mag > 1e17 else "us" if mag > 1e14 else "ms" if mag > 1e11 else "s"
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    return _exact_ns(col, scale, unit, path)


def _exact_ns(col: pd.Series, scale: int, unit: str, path: Path) -> np.ndarray:
    """``col`` (decimal strings, integers or floats) times ``scale``, exactly, as int64 ns."""
    if pd.api.types.is_integer_dtype(col.dtype):
        vals = col.to_numpy(np.int64)
        if len(vals) and int(np.abs(vals).max()) > (2**63 - 1) // scale:
            i = int(np.flatnonzero(np.abs(vals) > (2**63 - 1) // scale)[0])
            raise LoadError(f"{path}:{i + 2}: time {vals[i]} {unit} is beyond the int64 ns range")
        return vals * scale
    # floats: their shortest decimal text (what a writer meant: 1777689380.521, not ...520999908)
    texts = [repr(float(x)) for x in col] if pd.api.types.is_float_dtype(col.dtype) else [str(x).strip() for x in col]
    out = np.empty(len(texts), np.int64)
    for i, text in enumerate(texts):
        try:
            d = Decimal(text) * scale
        except InvalidOperation:
            raise LoadError(f"{path}:{i + 2}: cannot parse time {text!r}") from None
        if d != d.to_integral_value():
            raise LoadError(f"{path}:{i + 2}: time {text} {unit} has digits below a nanosecond")
        if not -(2**63) <= d < 2**63:
            raise LoadError(f"{path}:{i + 2}: time {text} {unit} is beyond the int64 ns range")
        out[i] = int(d)
    return out


def frame_to_records(df: pd.DataFrame, spec: TopicSpec, codec: AvroCodec, opts: LoadOptions,
                     path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Map, convert and validate every row; returns records and their 1-based file line numbers."""
    info = codec.store.by_name(spec.schema or "")
    fields = [f for f in info.raw["fields"]]
    cols: dict[str, Any] = {}
    n = len(df)
    lines = list(range(2, n + 2))  # header is line 1
    for f in fields:
        name = f["name"]
        src = opts.mapping.get(name)
        if src is None:
            src = name if name in df.columns else next((a for a in ALIASES.get(name, ()) if a in df.columns), None)
        elif src not in df.columns:
            raise LoadError(f"{path}: mapped column {src!r} for {name} not found; columns: {', '.join(map(str, df.columns))}")
        cols[name] = None if src is None else df[src]
    if cols.get("symbol") is None:
        if not opts.symbol:
            raise LoadError(f"{path}: no symbol column; pass --symbol SYM or --map symbol=COLUMN")
        cols["symbol"] = pd.Series([opts.symbol] * n)
    if cols.get("ts_event") is None:
        raise LoadError(f"{path}: no event-time column; pass --map ts_event=COLUMN")
    ts = _ts_ns(cols["ts_event"], opts.ts_unit, path)
    out: dict[str, np.ndarray | list[Any]] = {"ts_event": ts, "symbol": cols["symbol"].astype(str).tolist()}
    for f in fields:
        name, typ = f["name"], f["type"]
        if name in out:
            continue
        src = cols.get(name)
        if src is None:
            out[name] = _default(name, n, spec, out, path)
            continue
        if typ in ("double", "float"):
            vals = pd.to_numeric(src, errors="coerce")
            bad = vals.isna().to_numpy() & ~src.astype(str).str.lower().isin(["nan"]).to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LoadError(f"{path}:{lines[i]}: column {name}: {src.iloc[i]!r} is not a number")
            out[name] = vals.to_numpy(np.float64)
        elif typ in ("long", "int"):
            vals = pd.to_numeric(src, errors="coerce")
            bad = vals.isna().to_numpy() | (vals.to_numpy(np.float64) % 1 != 0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LoadError(f"{path}:{lines[i]}: column {name}: {src.iloc[i]!r} is not an integer")
            out[name] = vals.astype("int64").to_numpy()
        elif isinstance(typ, dict) and typ.get("type") == "enum":
            vals_s = src.astype(str).str.upper()
            bad = ~vals_s.isin(typ["symbols"]).to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LoadError(f"{path}:{lines[i]}: column {name}: {src.iloc[i]!r} not one of {typ['symbols']}")
            out[name] = vals_s.tolist()
        else:
            out[name] = src.astype(str).tolist()
    records = []
    names = [f["name"] for f in fields]
    columns = [v.tolist() if isinstance(v := out[k], np.ndarray) else v for k in names]
    for i, row in enumerate(zip(*columns, strict=True)):
        rec = dict(zip(names, row, strict=True))
        try:
            validate(info.name, rec)
        except ValidationError as exc:
            raise LoadError(f"{path}:{lines[i]}: {exc}") from None
        records.append(rec)
    return records, lines


def _default(name: str, n: int, spec: TopicSpec, out: Mapping[str, Any], path: Path) -> np.ndarray | list[Any]:
    if name == "interval_ns":
        suffix = spec.name.rsplit(".", 1)[-1]
        if suffix not in INTERVALS_NS:
            raise LoadError(f"{path}: cannot infer bar interval for topic {spec.name}; add an interval_ns column")
        return np.full(n, INTERVALS_NS[suffix], np.int64)
    if name == "seq":
        return pd.Series(out["symbol"]).groupby(pd.Series(out["symbol"])).cumcount().to_numpy(np.int64)
    if name == "kind":
        return ["TRADE"] * n
    if name in ("side", "trades"):
        return np.zeros(n, np.int64)
    if name in ("vwap",):
        return np.full(n, np.nan)
    if name in ("bid", "ask") and "price" in out:
        return np.asarray(out["price"], np.float64)
    if name in ("bid_size", "ask_size", "size", "volume"):
        return np.zeros(n)
    raise LoadError(f"{path}: required column {name!r} is missing (map one with --map {name}=COLUMN)")


def _order(records: list[dict[str, Any]], lines: list[int], p: Path, duplicates: str
           ) -> tuple[list[int], list[str]]:
    """Load order of the rows (time order, stable) and notes; rejects or drops duplicates."""
    n = len(records)
    ts = np.fromiter((int(r["ts_event"]) for r in records), np.int64, n)
    notes: list[str] = []
    order = np.argsort(ts, kind="stable")
    back = int(np.count_nonzero(np.diff(ts) < 0))
    if back:
        notes.append(f"{p}: {back} row(s) were earlier than the row before them (e.g. newest-first dates); "
                     "loaded in time order (rows at the same time keep their file order)")
    has_seq = bool(records) and "seq" in records[0]
    keys = pd.DataFrame({"symbol": [str(r["symbol"]) for r in records], "ts": ts,
                         **({"seq": [int(r["seq"]) for r in records]} if has_seq else {})})
    dup_last = keys.duplicated(keep="last").to_numpy()  # True for rows a later row repeats
    if dup_last.any():
        what = "(symbol, ts_event, seq)" if has_seq else "(symbol, ts_event)"
        if duplicates == "reject":
            dup_any = keys.duplicated(keep=False).to_numpy()
            i = int(np.flatnonzero(dup_last)[0])
            same = keys.iloc[i]
            j = int(np.flatnonzero(dup_any & (keys == same).all(axis=1).to_numpy())[-1])
            when = pd.Timestamp(int(ts[i]), tz="UTC").isoformat()
            raise LoadError(f"{p}:{lines[i]} and {p}:{lines[j]}: duplicate {what} {same['symbol']} {when} "
                            f"({int(dup_last.sum())} duplicate row(s) in the file); remove them, or pass "
                            "--duplicates last to keep the last row of each")
        notes.append(f"{p}: {int(dup_last.sum())} duplicate {what} row(s) dropped (the last row of each kept)")
        keep = ~dup_last[order]
        order = order[keep]
    return order.tolist(), notes


def prepare_file(path: str | Path, spec: TopicSpec, codec: AvroCodec, opts: LoadOptions) -> PreparedFile:
    """Validate the whole file, order it, apply the duplicate rule, encode every row."""
    p = Path(path)
    if spec.schema is None:
        raise LoadError(f"topic {spec.name} carries raw bytes; load targets a topic with a schema")
    df = _read(p)
    if df.empty:
        raise LoadError(f"{p}: no rows")
    records, lines = frame_to_records(df, spec, codec, opts, p)
    order, notes = _order(records, lines, p, opts.duplicates)
    name = spec.schema
    items = [(str(records[i]["symbol"]).encode(), codec.encode(name, records[i]), int(records[i]["ts_event"]) // 1_000_000)
             for i in order]
    return PreparedFile(items, notes, len(records))


def load_file(path: str | Path, spec: TopicSpec, codec: AvroCodec, opts: LoadOptions) -> Iterator[tuple[bytes, bytes, int]]:
    """Validate the whole file, then yield ``(key, framed value, timestamp_ms)`` per row in load
    order (see :func:`prepare_file` and the module doc)."""
    yield from prepare_file(path, spec, codec, opts).items


def count_rows(path: str | Path) -> int | None:
    """Cheap row count for progress bars (None for formats where it is not cheap)."""
    p = Path(path)
    if p.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        return pq.ParquetFile(p).metadata.num_rows
    with open(p, "rb") as f:
        return max(sum(1 for _ in f) - 1, 0)


ProgressFn = Callable[[int], None]
