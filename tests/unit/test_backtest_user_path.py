"""The backtest user path without a broker: cache keys that follow the data, the loader's order and
duplicate rules, clients that follow the local stack, the spec documented by ``--help`` and a JSON
schema, and reports built from results.backtest messages (never silently empty)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.history_loader import LoadError, LoadOptions, load_file, prepare_file
from mystocks_gpu.infra.config import load_settings
from mystocks_gpu.jobs.control_state import ControlCore, submit_cache_key
from mystocks_gpu.jobs.protocol import make_command
from mystocks_gpu.jobs.result_cache import cache_key, topics_of
from mystocks_gpu.jobs.scheduler import SchedulerConfig
from mystocks_gpu.processors.backtest.report import ReportError, format_top, write_report
from mystocks_gpu.processors.backtest.results import JobOutput, read_results
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.topics import get
from tests.conftest import ROOT, run_cli

CODEC = AvroCodec()
SPEC = {"universe": ["AAA"], "strategy": "ma_cross", "params": {"fast": [5], "slow": [20]}}


# ---- the result cache follows the data ---------------------------------------------------------
def test_cache_key_changes_when_the_input_topic_grows() -> None:
    cmd = make_command("SUBMIT", "j1", "backtest", SPEC)
    v1 = {"md.bars.1d": [[0, 100], [0, 80], [0, 0], [0, 7]]}
    v2 = {"md.bars.1d": [[0, 100], [0, 81], [0, 0], [0, 7]]}  # one bar loaded since
    k1, _ = submit_cache_key(cmd, v1)
    assert k1 == submit_cache_key(make_command("SUBMIT", "j2", "backtest", SPEC), v1)[0]  # same data: same key
    assert k1 != submit_cache_key(cmd, v2)[0]
    c = ControlCore({}, SchedulerConfig(0.0, 4))
    c.reindex()
    c.submit(cmd, data_version=v1)
    assert c.table["j1"]["cache_key"] == k1  # the key written on success is the one looked up
    c.submit(make_command("SUBMIT", "j3", "backtest", SPEC), data_version=None, cacheable=False)
    assert c.table["j3"]["cache_key"] is None  # version unknown: never cached
    assert cache_key("echo", {"m": 1}, None) == cache_key("echo", {"m": 1}, None, {})  # no topics: unchanged


def test_topics_named_by_a_data_range() -> None:
    assert topics_of({"topic": "md.bars.1d", "start": 1, "signal_topic": "features.ticks", "universe": "all"}) == \
        ["features.ticks", "md.bars.1d"]
    assert topics_of({"topics": ["a", "b"], "signal_topic": None}) == ["a", "b"]
    assert topics_of(None) == []


# ---- loader: order and duplicates --------------------------------------------------------------
def _bars_csv(tmp_path: Path, rows: list[tuple[str, str, float]], name: str = "bars.csv") -> Path:
    f = tmp_path / name
    pd.DataFrame([{"Date": d, "Ticker": t, "Open": c, "High": c + 1, "Low": c - 1, "Close": c, "Volume": 10}
                  for t, d, c in rows]).to_csv(f, index=False)
    return f


def test_newest_first_rows_are_loaded_in_time_order_with_a_note(tmp_path: Path) -> None:
    rows = [("AAA", d, float(i + 10)) for i, d in enumerate(["2020-01-06", "2020-01-03", "2020-01-02"])]
    f = _bars_csv(tmp_path, rows)
    prep = prepare_file(f, get("md.bars.1d"), CODEC, LoadOptions())
    recs = [CODEC.decode(v) for _, v, _ in prep.items]
    assert [r["close"] for r in recs] == [12.0, 11.0, 10.0]
    assert [r["ts_event"] for r in recs] == sorted(r["ts_event"] for r in recs)
    assert len(prep.notes) == 1 and "2 row(s) were earlier than the row before them" in prep.notes[0]
    in_order = prepare_file(_bars_csv(tmp_path, rows[::-1], "ok.csv"), get("md.bars.1d"), CODEC, LoadOptions())
    assert in_order.notes == []


def test_duplicate_rows_are_rejected_naming_both_lines_or_keep_last(tmp_path: Path) -> None:
    rows = [("AAA", "2020-01-02", 11.0), ("BBB", "2020-01-02", 5.0), ("AAA", "2020-01-03", 12.0),
            ("AAA", "2020-01-02", 9.0)]
    f = _bars_csv(tmp_path, rows)
    with pytest.raises(LoadError, match=rf"{f}:2 and {f}:5: duplicate \(symbol, ts_event\) AAA 2020-01-02"):
        list(load_file(f, get("md.bars.1d"), CODEC, LoadOptions()))
    prep = prepare_file(f, get("md.bars.1d"), CODEC, LoadOptions(duplicates="last"))
    recs = [CODEC.decode(v) for _, v, _ in prep.items]
    assert [(r["symbol"], r["close"]) for r in recs] == [("BBB", 5.0), ("AAA", 9.0), ("AAA", 12.0)]
    assert prep.notes[1:] == [f"{f}: 1 duplicate (symbol, ts_event) row(s) dropped (the last row of each kept)"]
    assert "1 row(s) were earlier than the row before them" in prep.notes[0]
    r = run_cli("load", str(f), "--topic", "md.bars.1d", env={"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert r.returncode == 2 and ":2 and" in r.stderr and "--duplicates last" in r.stderr


def test_ticks_at_the_same_time_are_not_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    t = 1_700_000_000
    pd.DataFrame({"ts": [t, t, t + 1], "symbol": ["X", "X", "X"], "price": [1.0, 2.0, 3.0],
                  "size": [100.0, 100.0, 100.0]}).to_csv(f, index=False)
    items = list(load_file(f, get("md.ticks"), CODEC, LoadOptions(ts_unit="s")))
    assert [CODEC.decode(v)["seq"] for _, v, _ in items] == [0, 1, 2]


# ---- clients follow the local stack ----------------------------------------------------------
def test_moving_the_stack_moves_its_clients(tmp_path: Path) -> None:
    s = load_settings(environ={"MYSTOCKS_STACK__KAFKA_PORT": "23456", "MYSTOCKS_STACK__REDIS_PORT": "23457"})
    assert s.kafka.bootstrap_servers == "127.0.0.1:23456" and s.redis.url == "redis://127.0.0.1:23457/0"
    toml = tmp_path / "m.toml"
    toml.write_text('[stack]\nhost = "127.0.0.2"\nkafka_port = 24000\ncontroller_port = 24001\n')
    s = load_settings(toml, environ={})
    assert s.kafka.bootstrap_servers == "127.0.0.2:24000" and s.redis.url == "redis://127.0.0.2:16379/0"
    # an explicit client address (a remote cluster) is kept
    s = load_settings(environ={"MYSTOCKS_STACK__KAFKA_PORT": "23456", "MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "b1:9093"})
    assert s.kafka.bootstrap_servers == "b1:9093" and s.stack.kafka_port == 23456
    assert load_settings(environ={}).kafka.bootstrap_servers == "127.0.0.1:19092"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSTOCKS_")}
    r = subprocess.run([sys.executable, "-m", "mystocks_gpu.cli", "config", "show"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env={**env, "MYSTOCKS_STACK__KAFKA_PORT": "23999"})
    assert r.returncode == 0 and "127.0.0.1:23999" in r.stdout, r.stderr


# ---- --help, --print-schema ------------------------------------------------------------------
def test_submit_backtest_help_documents_the_spec_and_prints_a_schema() -> None:
    r = run_cli("submit", "backtest", "--help")
    assert r.returncode == 0
    for word in ("ma_cross", "breakout", "zscore", "rsi", "signal", "fast, slow", "next_open", "fees", "slippage",
                 "sizing", "bars_per_year", "max_grid", "memory_budget_bytes", "results.backtest"):
        assert word in r.stdout, word
    generic = run_cli("submit", "--help")
    assert generic.returncode == 0 and "ma_cross" not in generic.stdout and "--print-schema" in generic.stdout
    r = run_cli("submit", "backtest", "--print-schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["properties"]["strategy"]["enum"] == ["bollinger", "breakout", "ma_cross", "rsi", "signal", "zscore"]
    assert run_cli("submit", "echo", "--print-schema").returncode == 2


# ---- reports from results.backtest -----------------------------------------------------------
def _rec(job: str, chunk: int, count: int, part: int, parts: int, rows: list[dict[str, Any]],
         curves: list[dict[str, Any]]) -> Any:
    return SimpleNamespace(key=job, headers={"mystocks.part": str(part), "mystocks.parts": str(parts)},
                           value={"chunk_index": chunk, "chunk_count": count, "rows": rows, "curves": curves})


def _row(sym: str, sharpe: float) -> dict[str, Any]:
    return {"symbol": sym, "params": {"fast": 5.0, "slow": 20.0}, "total_return": 0.1, "cagr": 0.1,
            "ann_volatility": 0.2, "sharpe": sharpe, "sortino": 1.0, "max_drawdown": 0.1,
            "max_drawdown_duration": 3, "win_rate": 0.5, "n_trades": 4, "exposure": 0.5, "fees_paid": 10.0}


def test_report_reads_rows_and_curves_back_and_is_never_silently_empty(tmp_path: Path) -> None:
    t0 = 1_600_000_000 * 10**9
    curve = {"symbol": "BBB", "params": {"fast": 5.0, "slow": 20.0}, "ts": [t0, t0 + 86_400 * 10**9],
             "equity": [1e5, 1.1e5], "drawdown": [0.0, 0.0]}
    records = [_rec("other", 0, 1, 0, 1, [_row("ZZZ", 9.0)], []),
               _rec("j", 1, 2, 0, 1, [_row("BBB", 2.0)], [curve]),
               _rec("j", 0, 2, 0, 2, [_row("AAA", 1.0)], []),
               _rec("j", 0, 2, 1, 2, [_row("CCC", 0.5)], []),
               _rec("j", 0, 2, 1, 2, [_row("CCC", 0.5)], [])]  # a re-run's duplicate part: read once
    out = read_results(None, "j", records=iter(records))
    assert out.complete and sorted(r["symbol"] for r in out.rows) == ["AAA", "BBB", "CCC"]
    result = {"metric": "sharpe", "symbols": 3, "bars": 2, "param_sets": 1, "cells": 6, "messages": 3, "curves": 1,
              "n_curves": 5, "top": [_row("BBB", 2.0)], "warnings": ["1 universe symbol(s) have no bars: NOPE"]}
    page = write_report(result, tmp_path / "r", None, "j", output=out)
    text = page.read_text()
    assert "BBB" in text and "3 rows read from results.backtest" in text and "NOPE" in text
    assert (tmp_path / "r" / "equity.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ReportError, match="no result rows of job j"):
        write_report(result, tmp_path / "e", None, "j", output=JobOutput())
    partial = read_results(None, "j", records=iter(records[1:3]))
    with pytest.raises(ReportError, match="incomplete"):
        write_report(result, tmp_path / "p", None, "j", output=partial)
    summary = format_top(result)
    assert summary.splitlines()[0] == "warning: 1 universe symbol(s) have no bars: NOPE"
    assert "3 rows and 1 equity curves are on results.backtest" in summary


def test_curves_start_at_each_symbols_first_bar() -> None:
    from mystocks_gpu.processors.backtest.job import _curve_rows

    plan = SimpleNamespace(params=[{"fast": 5, "slow": 20}])
    ts = np.arange(10, dtype=np.int64) * 100
    eq = np.vstack([np.full(10, 1e5), np.arange(10) + 1e5])
    rows = _curve_rows(plan, ["OLD", "NEW"], [(0, 0), (1, 0)], eq, np.zeros((2, 10)), ts, {"OLD": 0, "NEW": 650})
    assert rows[0]["ts"] == ts.tolist()
    assert rows[1]["ts"] == [700, 800, 900] and rows[1]["equity"] == [1e5 + 7, 1e5 + 8, 1e5 + 9]
