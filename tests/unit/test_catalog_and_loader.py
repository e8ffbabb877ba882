"""Topic catalog consistency and the history loader's conversions and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.history_loader import LoadError, LoadOptions, load_file
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.topics import CATALOG, UnknownTopic, all_specs, get
from tests.conftest import run_cli

CODEC = AvroCodec()


def test_every_topic_once_with_schema_and_dlq_twin() -> None:
    names = [s.name for s in all_specs()]
    assert len(names) == len(set(names))
    for spec in CATALOG:
        if spec.schema:
            CODEC.store.by_name(spec.schema)  # schema exists
        if spec.dlq:
            twin = get(spec.name + ".dlq")
            assert twin.schema is None and twin.key == spec.key
    assert get("job.status").config()["cleanup.policy"] == "compact"


def test_unknown_topic_lists_known_ones() -> None:
    with pytest.raises(UnknownTopic) as exc:
        get("md.tickz")
    assert "md.ticks" in str(exc.value) and "features.ticks" in str(exc.value)
    r = run_cli("consume", "md.tickz")
    assert r.returncode == 2 and "known topics: md.ticks" in r.stderr


def _decode_all(items: list[tuple[bytes, bytes, int]]) -> list[dict]:
    return [CODEC.decode(v) for _, v, _ in items]


def test_load_bars_csv_matches_pandas(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 50
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    df = pd.DataFrame({"Date": pd.date_range("2020-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
                       "Ticker": ["AAA"] * n, "Open": close, "High": close * 1.01, "Low": close * 0.99,
                       "Close": close, "Volume": rng.integers(1, 1000, n)})
    f = tmp_path / "bars.csv"
    df.to_csv(f, index=False)
    items = list(load_file(f, get("md.bars.1d"), CODEC, LoadOptions()))
    recs = _decode_all(items)
    assert len(recs) == n
    ts = pd.to_datetime(df["Date"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    assert [r["ts_event"] for r in recs] == ts.tolist()
    assert [t for _, _, t in items] == (ts // 1_000_000).tolist()  # Kafka timestamp = event time (ms)
    np.testing.assert_array_equal([r["close"] for r in recs], df["Close"].to_numpy())
    assert all(r["interval_ns"] == 86_400 * 10**9 and r["symbol"] == "AAA" for r in recs)


def test_load_ticks_parquet_with_mapping(tmp_path: Path) -> None:
    t0 = 1_700_000_000_000  # ms
    df = pd.DataFrame({"t": [t0, t0 + 1, t0 + 2], "px": [10.0, 10.5, 10.25], "qty": [100.0, 200.0, 50.0],
                       "sym": ["X", "Y", "X"]})
    f = tmp_path / "ticks.parquet"
    df.to_parquet(f)
    opts = LoadOptions(mapping={"ts_event": "t", "price": "px", "size": "qty", "symbol": "sym"}, ts_unit="ms")
    recs = _decode_all(list(load_file(f, get("md.ticks"), CODEC, opts)))
    assert [r["ts_event"] for r in recs] == [t0 * 10**6, (t0 + 1) * 10**6, (t0 + 2) * 10**6]
    assert [r["seq"] for r in recs] == [0, 0, 1]  # per-symbol sequence
    assert [r["price"] for r in recs] == [10.0, 10.5, 10.25] and all(r["kind"] == "TRADE" for r in recs)


@pytest.mark.parametrize("content, fragment", [
    ("Date,Ticker,Open,High,Low,Close,Volume\n2020-01-01,A,1,2,0.5,1.5,10\n2020-01-02,A,1,2,0.5,abc,10\n",
     "bad.csv:3: column close: 'abc' is not a number"),
    ("Date,Ticker,Open,High,Low,Close,Volume\n2020-01-01,A,1,2,0.5,1.5,10\n2020-01-02,A,1,2,0.5,1.5,10,99,7\n",
     "bad.csv: malformed CSV"),
    ("Date,Ticker,Open,High,Low,Close,Volume\n2020-01-01,A,1,2,0.5,1.5,10\nnot-a-date,A,1,2,0.5,1.5,10\n",
     "bad.csv:3: cannot parse time 'not-a-date'"),
    ("Date,Ticker,Open,High,Low,Close,Volume\n2020-01-01,A,1,2,0.5,3.5,10\n",
     "bad.csv:2: bar not consistent"),
    ("Date,Open,High,Low,Close,Volume\n2020-01-01,1,2,0.5,1.5,10\n", "no symbol column"),
])
def test_bad_csv_names_file_and_line(tmp_path: Path, content: str, fragment: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(LoadError) as exc:
        list(load_file(f, get("md.bars.1d"), CODEC, LoadOptions()))
    assert fragment in str(exc.value)


def test_cli_load_bad_row_exits_nonzero_before_any_broker_io(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("Date,Ticker,Open,High,Low,Close,Volume\n2020-01-01,A,1,2,0.5,x,10\n")
    r = run_cli("load", str(f), "--topic", "md.bars.1d", env={"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert r.returncode == 2
    assert f"{f}:2: column close: 'x' is not a number" in r.stderr
