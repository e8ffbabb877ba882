"""Synthetic data for the ML tests: a daily panel whose feature ``f1`` predicts the next bar's
return, as feature vectors (``FeatureVector``) and OHLC bars (``Bar``), framed for Kafka."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mystocks_gpu.schemas import AvroCodec

DAY = 86_400 * 10**9


@dataclass
class Panel:
    """``frame``: one row per (symbol, date): symbol, ts (ns), f1, f2, f3, close, open, high, low."""

    frame: pd.DataFrame
    symbols: list[str]

    def feature_records(self, nan_rows: int = 0, seed: int = 0) -> list[tuple[bytes, bytes, int]]:
        """(key, FeatureVector value, ts_ms) per row; ``nan_rows`` rows get a NaN ``f2``."""
        codec = AvroCodec()
        rng = np.random.default_rng(seed)
        bad = set(rng.choice(len(self.frame), nan_rows, replace=False).tolist()) if nan_rows else set()
        out = []
        for i, r in enumerate(self.frame.itertuples(index=False)):
            vals = {"f1": r.f1, "f2": float("nan") if i in bad else r.f2, "f3": r.f3, "last_price": r.close}
            out.append((r.symbol.encode(), codec.encode("mystocks.features.FeatureVector", {
                "symbol": r.symbol, "ts_event": int(r.ts), "seq": i, "ts_ingest": int(r.ts), "values": vals}),
                int(r.ts) // 1_000_000))
        return out

    def bar_records(self) -> list[tuple[bytes, bytes, int]]:
        codec = AvroCodec()
        return [(r.symbol.encode(), codec.encode("mystocks.md.Bar", {
            "symbol": r.symbol, "ts_event": int(r.ts), "interval_ns": DAY, "open": r.open, "high": r.high,
            "low": r.low, "close": r.close, "volume": 1000.0, "vwap": r.close, "trades": 10}), int(r.ts) // 1_000_000)
            for r in self.frame.itertuples(index=False)]


def make_panel(n_symbols: int = 12, n_dates: int = 160, seed: int = 3, tag: str = "ML",
               start: str | None = "2022-01-03", strength: float = 0.35, end: str | None = None) -> Panel:
    """Daily bars on business days from ``start`` (or up to ``end``); ``f1`` at date t predicts
    log(close[t+1] / close[t])."""
    rng = np.random.default_rng(seed)
    rng_days = pd.bdate_range(end=end, periods=n_dates, tz="UTC") if end else \
        pd.bdate_range(start, periods=n_dates, tz="UTC")
    days = rng_days.as_unit("ns").asi8
    frames = []
    syms = [f"{tag}{k:03d}" for k in range(n_symbols)]
    for s in syms:
        f1 = rng.standard_normal(n_dates)
        f2 = rng.standard_normal(n_dates)
        f3 = 0.5 * f1 + rng.standard_normal(n_dates)
        r = 0.01 * (strength * np.r_[0.0, f1[:-1]] + rng.standard_normal(n_dates))
        close = 50.0 * np.exp(np.cumsum(r))
        opn = close * np.exp(rng.normal(0, 0.002, n_dates))
        frames.append(pd.DataFrame({"symbol": s, "ts": days, "f1": f1, "f2": f2, "f3": f3, "close": close,
                                    "open": opn, "high": np.maximum(opn, close) * 1.001,
                                    "low": np.minimum(opn, close) * 0.999}))
    return Panel(pd.concat(frames, ignore_index=True), syms)


def load_panel(kafka: Any, prefix: str, n_symbols: int, n_dates: int, seed: int, partitions: int,
               nan_rows: int = 0, nan_seed: int = 0) -> tuple[Panel, str]:
    """A panel ending yesterday (symbols unique to the call) loaded on the broker: its feature
    vectors on a topic of their own (``t.<prefix>.<tag>``, ``nan_rows`` with a NaN ``f2``) and its
    bars on ``md.bars.1d``; returns ``(panel, feature topic)``. The dates end yesterday so the range
    reaches the latest event time of the shared bar topic."""
    import uuid

    from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
    from mystocks_gpu.topics import TopicSpec
    from mystocks_gpu.topics.admin import TopicAdmin

    tag = prefix.upper() + uuid.uuid4().hex[:5].upper()
    yesterday = (pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    panel = make_panel(n_symbols=n_symbols, n_dates=n_dates, seed=seed, tag=tag, start=None, end=yesterday)
    topic = f"t.{prefix.lower()}.{tag.lower()}"
    TopicAdmin(kafka).create([TopicSpec(topic, "symbol", "mystocks.features.FeatureVector", partitions=partitions,
                                        dlq=False)])
    produce_all(make_producer(kafka), topic, iter(panel.feature_records(nan_rows=nan_rows, seed=nan_seed)))
    produce_all(make_producer(kafka), "md.bars.1d", iter(panel.bar_records()))
    return panel, topic
