"""Market parameters for the execution workload: estimated from replayed market data, published
where the execution processor reads them, and read back.

* :func:`load_ticks` / :func:`load_bar_frame`: a replayed time range of ``md.ticks`` / a bar
  topic as a pandas frame (the deterministic :class:`~mystocks_gpu.streams.replay.ReplaySource`);
* :func:`bars_from_ticks`: time bars (close = last trade, volume = traded shares, spread = mean
  quoted spread) per symbol from ticks;
* :func:`estimate` (:class:`EstimateSpec`): :func:`~mystocks_gpu.gpu_ops.execution.estimate_params`
  per symbol (sigma, ADV, spread, optional intraday volume profile) over those bars;
* :func:`publish`: one ``MarketParams`` record per symbol to EVERY partition of ``orders.parent``
  (key = symbol, explicit partition) and to the compacted ``execution.params``, in one Kafka
  transaction (all partitions see the new parameters, or none);
* :func:`read_params`: the latest parameters per symbol from ``execution.params``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.gpu_ops.execution import (
    ExecutionConfig,
    ExecutionInputError,
    MarketParams,
    Tape,
    estimate_params,
    estimate_profile,
)
from mystocks_gpu.gpu_ops.tick_columns import QUOTE, TRADE
from mystocks_gpu.infra.config import KafkaConfig
from mystocks_gpu.processors.exceptions import InvalidSpec
from mystocks_gpu.processors.execution.order_records import (
    MARKET_PARAMS,
    params_from_record,
    params_to_record,
)
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.schema_store import SchemaStore

ORDERS_TOPIC = "orders.parent"
PARAMS_TOPIC = "execution.params"
TICK_COLUMNS = ("sym", "ts", "kind", "price", "size", "bid", "ask")


# ---- reading market data ------------------------------------------------------------------------
def load_ticks(kafka: KafkaConfig, topic: str, start_ns: int | None, end_ns: int | None,
               symbols: Sequence[str] | None = None, store: SchemaStore | None = None) -> pd.DataFrame:
    """Ticks of ``topic`` with ``start <= ts < end`` (ns) as a frame ``symbol, ts, kind, price,
    size, bid, ask``, rows in log order (optionally only ``symbols``); undecodable records are skipped."""
    from mystocks_gpu.schemas.batch_codec import TickDecoder
    from mystocks_gpu.schemas.symbols import SymbolTable
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    table = SymbolTable()
    dec = TickDecoder(store, symbols=table)
    frames = []
    for batch in ReplaySource(kafka, topic, ReplayRange(start_ns, end_ns), max_records=50_000).batches():
        c = dec.decode(batch.values).columns
        frames.append(pd.DataFrame({k: c[k] for k in TICK_COLUMNS}))
    if not frames:
        return pd.DataFrame({"symbol": pd.Series(dtype=object), **{k: pd.Series(dtype="float64") for k in TICK_COLUMNS[1:]}})
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "symbol", np.asarray(table.symbols, dtype=object)[df.pop("sym").to_numpy()])
    if start_ns is not None:
        df = df[df["ts"] >= start_ns]
    if end_ns is not None:
        df = df[df["ts"] < end_ns]
    if symbols is not None:
        df = df[df["symbol"].isin(set(symbols))]
    return df.reset_index(drop=True)


def load_bar_frame(kafka: KafkaConfig, topic: str, start_ns: int | None, end_ns: int | None) -> pd.DataFrame:
    """Bars of ``topic`` over ``[start, end)`` as ``symbol, ts, close, volume`` (replayed)."""
    from mystocks_gpu.processors.backtest.job import load_bars

    df = load_bars(kafka, topic, start_ns, end_ns)
    return df[["symbol", "ts", "close", "volume"]].reset_index(drop=True)


def bars_from_ticks(ticks: pd.DataFrame, bar_ns: int) -> pd.DataFrame:
    """Per symbol and bar of ``bar_ns``: ``ts`` (bar open), ``close`` (last trade price),
    ``volume`` (sum of trade sizes) and ``spread`` (mean ``ask - bid`` of the rows with a valid
    quote, NaN if none); bars without a trade are dropped."""
    if ticks.empty:
        return pd.DataFrame(columns=["symbol", "ts", "close", "volume", "spread"])
    t = ticks.assign(bar=(ticks["ts"] // bar_ns) * bar_ns)
    trades = t[t["kind"] == TRADE]
    agg = trades.groupby(["symbol", "bar"], sort=True).agg(close=("price", "last"), volume=("size", "sum"))
    quoted = t[np.isfinite(t["bid"]) & np.isfinite(t["ask"]) & (t["bid"] > 0) & (t["ask"] >= t["bid"])]
    spr = (quoted["ask"] - quoted["bid"]).groupby([quoted["symbol"], quoted["bar"]]).mean().rename("spread")
    out = agg.join(spr, how="left").reset_index().rename(columns={"bar": "ts"})
    return out[["symbol", "ts", "close", "volume", "spread"]]


def tapes_from_ticks(ticks: pd.DataFrame) -> dict[str, Tape]:
    """One :class:`Tape` per symbol (the rules of ``Tape.from_ticks``: TRADE rows are trades,
    any row with a finite ``0 < bid <= ask`` is a quote), rows stably sorted by time."""
    out = {}
    for sym, g in ticks.groupby("symbol", sort=True):
        g = g.sort_values("ts", kind="stable")
        tr = g[g["kind"] == TRADE]
        q = g[((g["kind"] == QUOTE) | (g["kind"] == TRADE)) & np.isfinite(g["bid"]) & np.isfinite(g["ask"])
              & (g["bid"] > 0) & (g["ask"] >= g["bid"])]
        out[str(sym)] = Tape(tr["ts"].to_numpy(np.int64), tr["price"].to_numpy(np.float64),
                             tr["size"].to_numpy(np.float64), q["ts"].to_numpy(np.int64),
                             q["bid"].to_numpy(np.float64), q["ask"].to_numpy(np.float64))
    return out


# ---- estimation -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EstimateSpec:
    """What :func:`estimate` reads and how.

    Attributes:
        source_topic: a tick topic (bars of ``bar_seconds`` are built from trades, spreads from
            quotes; default ``md.ticks``) or a bar topic (``md.bars.*``; spreads need ``spread_bps``).
        source_kind: ``ticks`` or ``bars``; None = from the name (``md.bars.*`` -> bars, else ticks).
        start_ns, end_ns: the replayed range ``[start, end)`` (None = unbounded).
        symbols: only these symbols (None = every symbol in the range).
        bar_seconds: bar length when the source is ticks, seconds (default 60).
        spread_bps: spread fallback in basis points of the price, for symbols with no quote
            (required for a bar source); None = no fallback.
        lot_size: round lot written with every symbol (default 100).
        session_offset_s: where a trading day starts, seconds after UTC midnight (day rule of
            ``estimate_params``; default 0).
        min_days: days needed for daily sigma / ADV (else the intraday fallback; default 3).
        profile_bucket_s, profile_buckets, profile_open_offset_s: estimate an intraday volume
            profile of ``profile_buckets`` buckets of ``profile_bucket_s`` seconds from the open
            at ``profile_open_offset_s`` (seconds after UTC midnight); 0 buckets = none (flat).
    """

    source_topic: str = "md.ticks"
    start_ns: int | None = None
    end_ns: int | None = None
    symbols: tuple[str, ...] | None = None
    bar_seconds: float = 60.0
    spread_bps: float | None = None
    lot_size: int = 100
    session_offset_s: float = 0.0
    min_days: int = 3
    profile_bucket_s: float = 300.0
    profile_buckets: int = 0
    profile_open_offset_s: float = 0.0
    source_kind: str | None = None

    def __post_init__(self) -> None:
        if not self.source_topic:
            raise InvalidSpec("source topic must be a topic name")
        if self.source_kind is None:
            object.__setattr__(self, "source_kind", "bars" if self.source_topic.startswith("md.bars.") else "ticks")
        if self.source_kind not in ("ticks", "bars"):
            raise InvalidSpec(f"source kind must be ticks or bars, got {self.source_kind!r}")
        if not self.bar_seconds > 0:
            raise InvalidSpec(f"bar_seconds must be > 0, got {self.bar_seconds}")
        if self.spread_bps is not None and not self.spread_bps >= 0:
            raise InvalidSpec(f"spread_bps must be >= 0, got {self.spread_bps}")
        if self.lot_size < 1 or self.min_days < 2 or self.profile_buckets < 0 or not self.profile_bucket_s > 0:
            raise InvalidSpec("lot_size must be >= 1, min_days >= 2, profile_buckets >= 0, profile_bucket_s > 0")
        if self.start_ns is not None and self.end_ns is not None and self.end_ns <= self.start_ns:
            raise InvalidSpec(f"the range is empty: start {self.start_ns} >= end {self.end_ns}")


def estimate_from_bars(bars: pd.DataFrame, spec: EstimateSpec, config: ExecutionConfig | None = None
                       ) -> tuple[dict[str, MarketParams], dict[str, str]]:
    """:func:`estimate_params` per symbol of ``bars`` (``symbol, ts, close, volume`` and optional
    ``spread``); returns parameters by symbol and the reason for each symbol that failed."""
    out: dict[str, MarketParams] = {}
    errors: dict[str, str] = {}
    for sym, g in bars.groupby("symbol", sort=True):
        g = g.sort_values("ts", kind="stable")
        ts = g["ts"].to_numpy(np.int64)
        vol = g["volume"].to_numpy(np.float64)
        profile = None
        try:
            if spec.profile_buckets:
                profile = estimate_profile(ts, vol, bucket_seconds=spec.profile_bucket_s,
                                           n_buckets=spec.profile_buckets, open_offset_s=spec.profile_open_offset_s)
            spread = g["spread"].to_numpy(np.float64) if "spread" in g else None
            out[str(sym)] = estimate_params(
                str(sym), ts, g["close"].to_numpy(np.float64), vol, spread=spread, lot_size=spec.lot_size,
                session_offset_s=spec.session_offset_s, min_days=spec.min_days,
                fallback_spread_bps=spec.spread_bps, profile=profile, config=config)
        except ExecutionInputError as exc:
            errors[str(sym)] = str(exc)
    return out, errors


def estimate(kafka: KafkaConfig, spec: EstimateSpec, config: ExecutionConfig | None = None,
             store: SchemaStore | None = None) -> tuple[dict[str, MarketParams], dict[str, str], int]:
    """Replay ``spec.source_topic`` over the range and estimate parameters per symbol. Returns
    ``(params, errors, as_of_ns)``, ``as_of_ns`` = the last event time read (0 if nothing)."""
    if spec.source_kind == "ticks":
        ticks = load_ticks(kafka, spec.source_topic, spec.start_ns, spec.end_ns, spec.symbols, store)
        bars = bars_from_ticks(ticks, int(spec.bar_seconds * 1e9))
        as_of = int(ticks["ts"].max()) if len(ticks) else 0
    else:
        bars = load_bar_frame(kafka, spec.source_topic, spec.start_ns, spec.end_ns)
        if spec.symbols is not None:
            bars = bars[bars["symbol"].isin(set(spec.symbols))]
        as_of = int(bars["ts"].max()) if len(bars) else 0
    params, errors = estimate_from_bars(bars, spec, config)
    if spec.symbols is not None:
        for s in spec.symbols:
            if s not in params and s not in errors:
                errors[s] = f"symbol: no data for {s!r} in {spec.source_topic} over the range"
    return params, errors, as_of


# ---- publishing and reading -----------------------------------------------------------------------
def publish(kafka: KafkaConfig, params: Mapping[str, MarketParams], ts_event: int, source: str = "",
            orders_topic: str = ORDERS_TOPIC, table_topic: str | None = PARAMS_TOPIC,
            store: SchemaStore | None = None, timeout_s: float = 30.0) -> int:
    """Write each symbol's parameters to every partition of ``orders_topic`` (key = symbol) and
    to ``table_topic`` (compacted; None = skip) in one transaction. Returns the partition count."""
    from confluent_kafka import KafkaException

    from mystocks_gpu.infra.kafka_clients import ensure_broker, make_producer

    if not params:
        raise InvalidSpec("no parameters to publish")
    ensure_broker(kafka)
    codec = AvroCodec(store)
    producer = make_producer(kafka, **{"transactional.id": f"mystocks-params-{uuid.uuid4().hex[:12]}"})
    md = producer.list_topics(orders_topic, timeout=kafka.connect_timeout_s).topics.get(orders_topic)
    if md is None or md.error is not None:
        raise InvalidSpec(f"topic {orders_topic} does not exist; run: mystocks-gpu topics create")
    parts = sorted(md.partitions)
    ts_ms = int(ts_event) // 1_000_000
    try:
        producer.init_transactions(timeout_s)
        producer.begin_transaction()
        for sym in sorted(params):
            value = codec.encode(MARKET_PARAMS, params_to_record(params[sym], ts_event, source))
            for p in parts:
                producer.produce(orders_topic, value, sym.encode(), partition=p, timestamp=ts_ms)
            if table_topic:
                producer.produce(table_topic, value, sym.encode(), timestamp=ts_ms)
            producer.poll(0)
        producer.commit_transaction(timeout_s)
    except KafkaException as exc:
        raise InvalidSpec(f"publishing parameters failed: {exc.args[0].str()}") from None
    return len(parts)


def read_params(kafka: KafkaConfig, topic: str = PARAMS_TOPIC, store: SchemaStore | None = None,
                symbols: Sequence[str] | None = None) -> tuple[dict[str, MarketParams], dict[str, str]]:
    """The latest parameters per symbol on ``topic`` (and the reason for records that are not
    valid parameters)."""
    from mystocks_gpu.data.topic_reader import read_topic

    latest: dict[str, Any] = {}
    for rec in read_topic(kafka, topic, max_records=10_000_000, idle_timeout_s=2.0, decode=False):
        if rec.key is not None:
            latest[rec.key] = rec.raw
    codec = AvroCodec(store)
    out: dict[str, MarketParams] = {}
    errors: dict[str, str] = {}
    for sym, raw in latest.items():
        if symbols is not None and sym not in symbols:
            continue
        try:
            out[sym] = params_from_record(codec.decode(raw, expect=MARKET_PARAMS))
        except Exception as exc:  # noqa: BLE001 - any bad record is reported with its reason
            errors[sym] = str(exc)
    return out, errors
