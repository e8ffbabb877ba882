"""Signal columns read back from a topic (backtest ``signal`` strategy, optimise from a signal topic):
batch-decoded values equal the rows written, with the skip rules counted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.processors.backtest.history import ScanStats, signal_chunks
from mystocks_gpu.processors.backtest.job import load_signal
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin

DAY = 86_400 * 10**9


def _topic(settings: Settings, name: str, schema: str) -> None:
    TopicAdmin(settings.kafka).create([TopicSpec(name, "symbol", schema, partitions=3, dlq=False)])


def test_feature_signal_rows_equal_what_was_written_and_skips_are_counted(settings: Settings, unique: str) -> None:
    topic = f"t.sigread.{unique}"
    _topic(settings, topic, "mystocks.features.FeatureVector")
    rng = np.random.default_rng(12345)
    codec = AvroCodec()
    written, items = [], []
    skipped = 0
    for i in range(3000):
        sym = f"S{int(rng.integers(0, 40)):02d}"
        ts = int(rng.integers(0, 400)) * DAY
        kind = rng.random()
        values = {"other": 1.0}
        if kind < 0.05:
            skipped += 1  # no value of the column
        elif kind < 0.08:
            values["momo"] = float("nan")
            skipped += 1
        else:
            values["momo"] = float(rng.normal())
            written.append((sym, ts, values["momo"]))
        items.append((sym.encode(), codec.encode("FeatureVector", {"symbol": sym, "ts_event": ts, "seq": i,
                                                                    "ts_ingest": ts, "values": values}), ts // 10**6))
        if i % 500 == 7:
            items.append((sym.encode(), b"\x00garbage", ts // 10**6))  # undecodable
            skipped += 1
    assert produce_all(make_producer(settings.kafka), topic, iter(items)) == len(items)
    lo, hi = 100 * DAY, 300 * DAY
    want = pd.DataFrame(written, columns=["symbol", "ts", "signal"])
    in_range = want[(want["ts"] >= lo) & (want["ts"] < hi)]
    got = load_signal(settings.kafka, topic, "momo", lo, hi)
    key = ["symbol", "ts", "signal"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  in_range.sort_values(key).reset_index(drop=True), check_exact=True)
    st = ScanStats()  # from the start of the topic: every record is replayed (a start skips those before it)
    n = sum(len(ts) for _, _, ts, _ in signal_chunks(settings.kafka, topic, "momo", None, hi, st))
    below = int((want["ts"] < hi).sum())
    assert (st.records, st.undecodable, n, st.out_of_range) == (len(items), skipped, below, len(want) - below)


def test_bar_topic_column_as_a_signal_and_an_unknown_column(settings: Settings, unique: str) -> None:
    topic = f"t.sigbars.{unique}"
    _topic(settings, topic, "mystocks.md.Bar")
    codec = AvroCodec()
    rows = [(f"B{i % 7}", (i // 7) * DAY, 10.0 + i) for i in range(210)]
    items = [(s.encode(), codec.encode("Bar", {"symbol": s, "ts_event": t, "interval_ns": DAY, "open": c, "high": c, "low": c,
                                               "close": c, "volume": 1.0, "vwap": c + 0.5, "trades": 3}), t // 10**6)
             for s, t, c in rows]
    assert produce_all(make_producer(settings.kafka), topic, iter(items)) == len(items)
    got = load_signal(settings.kafka, topic, "vwap", None, None)
    want = pd.DataFrame([(s, t, c + 0.5) for s, t, c in rows], columns=["symbol", "ts", "signal"])
    key = ["symbol", "ts"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  want.sort_values(key).reset_index(drop=True), check_exact=True)
    st = ScanStats()
    assert not list(signal_chunks(settings.kafka, topic, "no_such_column", None, None, st))
    assert (st.records, st.undecodable) == (len(items), len(items))
    assert load_signal(settings.kafka, topic, "no_such_column", None, None).empty


def test_model_signal_topic_score_column(settings: Settings, unique: str) -> None:
    """A model's ``signals.<name>`` topic (``mystocks.ml.Signal``): ``score``, NaN scores skipped."""
    topic = f"t.sigml.{unique}"
    _topic(settings, topic, "mystocks.ml.Signal")
    rng = np.random.default_rng(12345)
    codec = AvroCodec()
    rows = [(f"M{i % 5}", i * DAY, float("nan") if i % 11 == 0 else float(rng.normal())) for i in range(300)]
    items = [(s.encode(), codec.encode("Signal", {"symbol": s, "ts_event": t, "seq": i, "model_version": 1, "score": v}),
              t // 10**6) for i, (s, t, v) in enumerate(rows)]
    assert produce_all(make_producer(settings.kafka), topic, iter(items)) == len(items)
    got = load_signal(settings.kafka, topic, "score", None, None)
    want = pd.DataFrame([r for r in rows if not np.isnan(r[2])], columns=["symbol", "ts", "signal"])
    pd.testing.assert_frame_equal(got.sort_values("ts").reset_index(drop=True), want, check_exact=True)
