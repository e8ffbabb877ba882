"""``risk.metrics`` through the vectorised encoder (``output.encode_metrics``): the same bytes as
the per-record AvroCodec path, and fastavro (the independent reader) reads back the values the
snapshot must hold: unicode account ids, empty holdings, NaN prices and VaR, +inf limits."""

from __future__ import annotations

import io
import math

import fastavro
import numpy as np
import pytest

from mystocks_gpu.gpu_ops.risk import LIMIT_NAMES, PriceBatch, risk_step
from mystocks_gpu.processors.risk.config import load_processor_config
from mystocks_gpu.processors.risk.output import (
    METRICS_SCHEMA,
    encode_all,
    encode_metrics,
    metrics_records,
)
from mystocks_gpu.processors.risk.positions import encode_positions
from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.schema_store import default_store
from tests.risk_helpers import S, make_data, run_in_process, side_records

ACCOUNTS = ["acc-ü", "账户一", "empty", "😀 desk"]


@pytest.mark.parametrize("with_sectors", [True, False])
def test_metrics_bytes_equal_the_record_path_and_fastavro_reads_them(with_sectors: bool) -> None:
    data = make_data(n_ticks=3_000, n_symbols=12, n_accounts=0, seed=9)
    never = "ZZ_NOPRICE"  # held but never priced: NaN price, stale
    sectors = {s: ("tech" if j % 2 else "énergie") for j, s in enumerate([*data.names, never])} if with_sectors else {}
    cfg = load_processor_config(data={"risk": {"interval_ns": S, "window": 20},
                                      "processor": {"emit": "batch"}, "sectors": sectors}, backend="cpu")
    t0 = data.t0
    holds = {"acc-ü": [(data.names[0], 100.0, 50.0), (data.names[3], -40.0, 80.0)],
             "账户一": [(data.names[j], 10.0 * (j + 1), 30.0) for j in range(8)] + [(never, 5.0, 1.0)],
             "empty": [],
             "😀 desk": [(data.names[5], 1e9, 1e-3)]}
    pos = [(a.encode(), encode_positions(a, t0, holds[a], limits={"var": 1.0} if a == "acc-ü" else None),
            t0 // 1_000_000) for a in ACCOUNTS]
    proc = RiskProcessor(cfg)
    run = run_in_process(proc, data.ticks, side_records(pos), sizes=[1_000] * 3)
    book = run.state
    assert sorted(book.names) == sorted(ACCOUNTS)
    empty = np.zeros(0)
    metrics, stack, _ = risk_step(PriceBatch(np.zeros(0, np.int32), np.zeros(0, np.int64), empty), book.stack,
                                  cfg.risk, proc.xp)
    ts = int(book.watermark) + 1
    # specials the real data has not got: NaN / -inf / +inf in top-level and nested doubles
    metrics = dict(metrics)
    for k, v in (("gross", np.nan), ("net", -np.inf), ("max_drawdown", np.inf)):
        metrics[k] = np.array(metrics[k], np.float64)
        metrics[k][0] = v
    metrics["by_symbol"] = np.array(metrics["by_symbol"], np.float64)
    metrics["by_symbol"][1, 0] = -np.inf
    codec = AvroCodec()
    args = (metrics, stack, book.names, ts, book.px_ts, run.symbols, cfg)
    ref = encode_all(codec, METRICS_SCHEMA, metrics_records(*args))
    enc = BatchEncoder(METRICS_SCHEMA)
    keys, got = encode_metrics(enc, *args)
    assert got == ref
    assert keys == [a.encode() for a in book.names]
    # a subset of accounts: the same records, in the order asked
    sub = np.array([2, 0])
    assert encode_metrics(enc, *args, rows=sub)[1] == [ref[2], ref[0]]
    # fastavro, independently, reads what the snapshot must hold
    parsed = default_store().by_name(METRICS_SCHEMA).parsed
    recs = {r["account"]: r for r in (fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed, None) for v in got)}
    assert set(recs) == set(ACCOUNTS)
    assert recs["empty"]["positions"] == []
    assert [p["symbol"] for p in recs["账户一"]["positions"]] == [s for s, _, _ in holds["账户一"]]
    nopx = recs["账户一"]["positions"][-1]
    assert math.isnan(nopx["price"]) and nopx["stale"] is True
    assert all(p["stale"] is False for p in recs["账户一"]["positions"][:-1])
    assert [p["quantity"] for p in recs["😀 desk"]["positions"]] == [1e9]
    first = recs[book.names[0]]
    assert math.isnan(first["gross"]) and first["net"] == -math.inf and first["max_drawdown"] == math.inf
    second = recs[book.names[1]]["positions"]
    assert second == [] if book.names[1] == "empty" else second[0]["exposure"] == -math.inf
    for r in recs.values():
        assert [x["name"] for x in r["limits"]] == list(LIMIT_NAMES)
        assert [v["confidence"] for v in r["var"]] == [float(c) for c in cfg.risk.confidences]
        assert r["ts_event"] == ts and r["interval_ns"] == S
        assert list(r["by_sector"]) == (["tech", "énergie"] if with_sectors else [])
        want_sector = {s: sectors.get(s, "") for s in [*data.names, never]}
        assert all(p["sector"] == want_sector[p["symbol"]] for p in r["positions"])
    lim = {x["name"]: x for x in recs["acc-ü"]["limits"]}
    assert lim["var"]["limit"] == 1.0 and lim["gross_exposure"]["limit"] == math.inf
    # the processor emitted one record per account per batch (emit = "batch")
    assert len(run.metrics) == 3 * len(ACCOUNTS)
    assert {r["account"] for r in run.metrics} == set(ACCOUNTS)
