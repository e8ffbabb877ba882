"""Result messages encoded from the stats table equal fastavro's encoding of the same record, byte
for byte, and decode with fastavro to the table's values."""

from __future__ import annotations

import io
import math

import fastavro
import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.gpu_ops.backtest import STAT_COLUMNS, run_backtest
from mystocks_gpu.processors.backtest.rows_codec import RESULT_SCHEMA, RowsEncoder
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.codec import PREFIX
from tests.unit.reference_backtest import random_bars

INTS = {"max_drawdown_duration", "n_trades"}


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, list[dict[str, float]]]:
    bars = random_bars(seed=3)
    names = ["AAPL", "BRK.B", "Nestlé", "7203.T"]  # one non-ASCII name
    spec = BacktestSpec(strategy="ma_cross", params={"fast": [3, 5], "slow": [8, 300]})  # 300: never trades
    out = run_backtest(bars, names, np.arange(260, dtype=np.int64) * 86_400 * 10**9, spec, backend="cpu")
    params = [{"fast": 3.0, "slow": 8.0}, {"fast": 3.0, "slow": 300.0}, {"fast": 5.0, "slow": 8.0},
              {"fast": 5.0, "slow": 300.0}]
    return out.stats, params


def _reference(codec: AvroCodec, head: dict, stats: pd.DataFrame, index: np.ndarray, params: list) -> bytes:
    """fastavro's own encoding, rows built from the frame with pandas."""
    rows = []
    for _, r in stats.iloc[index].iterrows():
        row = {"symbol": r["symbol"], "params": params[int(r["param_id"])]}
        row.update({c: int(r[c]) if c in INTS else float(r[c]) for c in STAT_COLUMNS})
        rows.append(row)
    info = codec.store.by_name(RESULT_SCHEMA)
    buf = io.BytesIO()
    buf.write(PREFIX.pack(0, info.id))
    fastavro.schemaless_writer(buf, info.parsed, {**head, "rows": rows})
    return buf.getvalue()


@pytest.mark.parametrize("which", ["all", "reversed", "one", "none"])
def test_rows_encode_as_fastavro_does(table, which: str) -> None:
    stats, params = table
    assert stats["win_rate"].isna().any()  # NaN statistics (no closed trade) travel as they are
    index = {"all": np.arange(len(stats)), "reversed": np.arange(len(stats))[::-1], "one": np.array([5]),
             "none": np.zeros(0, np.int64)}[which]
    codec = AvroCodec()
    head = {"job_id": "job-ü-1", "ts_event": 1_777_000_000_123_456_789, "chunk_index": 1, "chunk_count": 3,
            "curves": [{"symbol": "AAPL", "params": params[0], "ts": [1, 2], "equity": [1.0, 1.5],
                        "drawdown": [0.0, 0.0]}] if which != "one" else []}
    got = RowsEncoder(codec).encode(head, stats, index, params)
    assert got == _reference(codec, head, stats, index, params)
    back = codec.decode(got)
    assert len(back["rows"]) == len(index) and back["curves"] == head["curves"]
    for row, i in zip(back["rows"], index, strict=True):
        want = stats.iloc[int(i)]
        assert row["symbol"] == want["symbol"] and row["params"] == params[int(want["param_id"])]
        for c in STAT_COLUMNS:
            assert (math.isnan(row[c]) and math.isnan(want[c])) or row[c] == want[c], c
