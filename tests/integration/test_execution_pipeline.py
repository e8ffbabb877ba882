"""The execution processor on the real broker: parameters published with the CLI, parent orders
(good and bad) through ``mystocks-gpu run execution`` killed with SIGKILL mid-stream, then every
good order has exactly one schedule and one score equal to the single-order API, and every bad
one is in the DLQ once, with its reason in the headers and its original bytes."""

from __future__ import annotations

import collections
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.gpu_ops.execution import MarketParams, ParentOrder, schedule
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.processors.execution.order_records import (
    PARENT_ORDER,
    order_to_record,
    params_to_record,
)
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import ROOT, run_cli
from tests.integration.stream_helpers import (
    committed_total,
    finish,
    kill9,
    output_high_watermark,
    read_finished,
    wait_for,
)

NS = 1_000_000_000
T0 = 1_699_972_200 * NS
CODEC = AvroCodec()


def _topics(settings: Settings, unique: str) -> dict[str, str]:
    t = {"input": f"t.ex.{unique}.parent", "schedule": f"t.ex.{unique}.schedule", "scored": f"t.ex.{unique}.scored",
         "dlq": f"t.ex.{unique}.parent.dlq", "group": f"g.ex.{unique}"}
    TopicAdmin(settings.kafka).create([
        TopicSpec(t["input"], "order_id", "mystocks.execution.ParentOrder", partitions=4, dlq=False),
        TopicSpec(t["schedule"], "order_id", "mystocks.execution.OrderSchedule", partitions=4, dlq=False),
        TopicSpec(t["scored"], "order_id", "mystocks.execution.OrderScore", partitions=4, dlq=False),
        TopicSpec(t["dlq"], "order_id", None, partitions=1, dlq=False),
    ])
    return t


def _worker(t: dict[str, str], log: Path, *extra: str, idle_exit: float = 4.0) -> subprocess.Popen[str]:
    """A worker whose JSON log (INFO: assignments, restores, aborts) goes to ``log``, for a failure
    message; its stdout (the summary) stays a pipe."""
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "--log-format", "json", "--log-level", "INFO", "run", "execution",
           "--group", t["group"], "--worker-id", "x1", "--input-topic", t["input"], "--output-topic", t["scored"],
           "--idle-exit", str(idle_exit), *extra]
    with log.open("w") as err:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True, env={**os.environ, "MYSTOCKS_BACKEND": "cpu"})


def _log_story(logs: list[Path]) -> str:
    """The lines of each worker's log that tell what happened to partitions: assignments,
    revocations, restores (keys per partition), aborts, losses, warnings and errors."""
    lines = []
    for k, path in enumerate(logs):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                lines.append(f"w{k} {line[:300]}")
                continue
            msg = str(rec.get("msg") or rec.get("message") or "")
            if rec.get("level") in ("WARNING", "ERROR", "CRITICAL") or msg in ("assigned", "revoked", "state restored"):
                extra = {k2: v for k2, v in rec.items() if k2 not in ("ts", "time", "logger", "level", "msg", "message")}
                lines.append(f"w{k} {rec.get('level')} {msg} {extra}"[:400])
    return "\n".join(lines[-60:])


def _explain_missing(settings: Settings, t: dict[str, str], missing: set[str], summary: dict[str, object],
                     logs: list[Path]) -> str:
    """For a failure message: where the orders without a score sit in the input (partition, offsets),
    what the DLQ holds by error class, the group's committed offsets, the last worker's summary and
    what every worker's log says about partitions (:func:`_log_story`)."""
    src = {r.key: (r.partition, r.offset) for r in read_finished(settings.kafka, t["input"], decode=False)}
    where = collections.Counter(src[k][0] for k in missing if k in src)
    offs = sorted(src[k][1] for k in missing if k in src)
    dlq = list(read_finished(settings.kafka, t["dlq"], decode=False))
    classes = collections.Counter(r.headers.get("mystocks.error.class") for r in dlq)
    return (f"missing by input partition {dict(where)}, offsets {offs[:3]}..{offs[-3:]}; DLQ {len(dlq)} {dict(classes)}, "
            f"last messages {[r.headers.get('mystocks.error.message') for r in dlq[-2:]]}; committed "
            f"{committed_total(settings, t['group'], t['input'])} of {output_high_watermark(settings, t['input'])} "
            f"input records; last worker {summary}\nworker logs:\n{_log_story(logs)}")


def _params(rng: np.random.Generator, n: int) -> dict[str, MarketParams]:
    return {f"EX{i}": MarketParams(f"EX{i}", float(rng.uniform(10, 300)), float(rng.uniform(0.01, 0.04)),
                                   float(10 ** rng.uniform(5.5, 7)), float(rng.uniform(0.01, 0.08)),
                                   int(rng.choice([1, 100]))) for i in range(n)}


def _bad(rec: dict[str, Any], k: int) -> tuple[bytes | None, str, str]:
    """A bad variant of a good order record: (value, error class, text in the message)."""
    variants: list[tuple[dict[str, Any] | bytes, str, str]] = [
        ({"quantity": 0}, "InvalidOrder", "quantity: must be > 0"),
        ({"end_ns": rec["ts_event"] - NS}, "InvalidOrder", "horizon is in the past"),
        ({"end_ns": rec["ts_event"] + 10 * NS}, "InvalidOrder", "shorter than one slice"),
        ({"symbol": "NOPARAMS"}, "MissingMarketParams", "no market parameters for 'NOPARAMS'"),
        ({"risk_aversion": math.nan}, "InvalidOrder", "risk_aversion: is NaN"),
        ({"max_participation": 2.0}, "InvalidOrder", "max_participation"),
        (b"\x00\x00\x00\x30\x39 not a record", "UnknownSchemaId", "12345"),
        (b"garbage", "DecodeError", "magic"),
    ]
    v, cls, text = variants[k % len(variants)]
    value = v if isinstance(v, bytes) else CODEC.encode(PARENT_ORDER, {**rec, **v, "horizon_ns": 0})
    return value, cls, text


def test_execution_processor_is_exactly_once_under_sigkill_and_dead_letters_bad_orders(
        settings: Settings, unique: str, tmp_path: Path) -> None:
    t = _topics(settings, unique)
    rng = np.random.default_rng(21)
    params = _params(rng, 16)
    pfile = tmp_path / "params.json"
    pfile.write_text(json.dumps({s: {k: v for k, v in params_to_record(p, T0).items() if k != "symbol"}
                                 for s, p in params.items()}))
    r = run_cli("execution", "params", "--file", str(pfile), "--orders-topic", t["input"], "--params-topic", "")
    assert r.returncode == 0 and f"published 16 symbol(s) to 4 partition(s) of {t['input']}" in r.stdout, r.stderr

    n = 3_000
    syms = sorted(params)
    good: dict[str, tuple[ParentOrder, int]] = {}
    bad: dict[int, tuple[bytes | None, str, str]] = {}  # produce index -> (value, class, text)
    items = []
    for i in range(n):
        p = params[syms[int(rng.integers(len(syms)))]]
        ts = T0 + i * 100_000_000  # one order every 100 ms of event time
        o = ParentOrder(f"{unique}-{i}", p.symbol, ("buy", "sell")[i % 2], int(rng.integers(1, int(0.02 * p.adv))),
                        ts + int(rng.integers(5, 180)) * 60 * NS, 0, ("ac", "twap", "vwap", "pov")[i % 4],
                        risk_aversion=float(10 ** rng.uniform(-8, -5)) if i % 3 else None,
                        max_participation=float(rng.uniform(0.05, 0.5)) if i % 5 else None)
        rec = order_to_record(o, ts)
        if i % 61 == 5:
            value, cls, text = _bad(rec, len(bad))
            bad[i] = (value, cls, text)
        else:
            value = CODEC.encode(PARENT_ORDER, rec)
            good[o.order_id] = (o, ts)
        items.append((o.order_id.encode(), value, ts // 1_000_000))
    assert produce_all(make_producer(settings.kafka), t["input"], iter(items)) == n

    kills = 0
    args = ("--batch-records", "25", "--linger-ms", "5", "--commit-interval-ms", "0")  # a transaction per batch: seconds of work
    prng = random.Random(5)
    logs: list[Path] = []
    while kills < 3:
        # progress = a transaction of THIS worker committed input offsets (the output's high watermark
        # is no sign: the abort markers of the predecessor's open transaction raise it at start-up)
        before = committed_total(settings, t["group"], t["input"], partitions=4)
        logs.append(tmp_path / f"worker{len(logs)}.log")
        w = _worker(t, logs[-1], *args)
        assert wait_for(lambda b=before, w=w: committed_total(settings, t["group"], t["input"], partitions=4) > b
                        or w.poll() is not None, 120), "the worker made no progress within 120 s"
        time.sleep(prng.uniform(0.2, 1.5))
        if w.poll() is not None:
            break
        kill9(w)
        kills += 1
    assert kills == 3, "the worker finished before it could be killed 3 times; raise n"
    logs.append(tmp_path / f"worker{len(logs)}.log")
    out = finish(_worker(t, logs[-1], *args))
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["processor"] == "execution"

    scored = [rec for rec in read_finished(settings.kafka, t["scored"]) if rec.value is not None]
    sched = [rec for rec in read_finished(settings.kafka, t["schedule"]) if rec.value is not None]
    ids = [r.key for r in scored]
    assert len(ids) == len(set(ids)) == len(good), (f"{len(ids)} scores ({len(set(ids))} distinct) for {len(good)} orders; "
                                                    + _explain_missing(settings, t, set(good) - set(ids), summary, logs))
    assert sorted(r.key for r in sched) == sorted(good)
    by_sched = {r.key: r.value for r in sched}
    for rec in scored:
        o, ts = good[rec.key or ""]
        want = schedule(o, params[o.symbol], now_ns=ts)
        v, s = rec.value or {}, by_sched[rec.key]
        assert s is not None and s["slice_qty"] == want.quantities.tolist() and s["slice_ts"] == want.times_ns.tolist()
        for k in ("expected_shortfall", "variance", "timing_risk", "temporary_impact", "permanent_impact",
                  "spread_cost", "objective", "kappa", "max_participation"):
            assert v[k] == getattr(want.score, k), (rec.key, k)
        assert (v["executed_qty"], v["unfilled_qty"], v["capped"]) == \
            (want.score.executed_qty, want.score.unfilled_qty, want.score.unfilled_qty > 0)
        assert rec.timestamp_ms == ts // 1_000_000

    dlq = list(read_finished(settings.kafka, t["dlq"], decode=False))
    assert len(dlq) == len(bad) and len(ids) + len(dlq) == n  # every input: one score or one dead letter
    by_key = {d.key: d for d in dlq}
    for i, (value, cls, text) in bad.items():
        d = by_key[f"{unique}-{i}"]
        assert d.headers["mystocks.error.class"] == cls and text in d.headers["mystocks.error.message"], d.headers
        assert d.headers["mystocks.source.topic"] == t["input"] and d.headers["mystocks.processor"] == "execution"
        assert int(d.headers["mystocks.source.offset"]) >= 0
        assert d.raw == value  # the original bytes


def test_params_estimated_from_a_tick_topic_are_broadcast_and_readable(settings: Settings, unique: str) -> None:
    """`execution params --from TICKS`: the estimate equals estimate_params on 1-minute bars built
    here by hand from the produced ticks; one copy lands in every partition of the orders topic and
    the latest per symbol on the compacted table, where read_params finds it."""
    from mystocks_gpu.gpu_ops.execution import estimate_params
    from mystocks_gpu.processors.execution.market_params_feed import read_params
    from mystocks_gpu.processors.execution.order_records import params_from_record

    ticks_t, orders_t, table_t = f"t.exp.{unique}.ticks", f"t.exp.{unique}.parent", f"t.exp.{unique}.params"
    TopicAdmin(settings.kafka).create([
        TopicSpec(ticks_t, "symbol", "mystocks.md.Tick", partitions=2, dlq=False),
        TopicSpec(orders_t, "order_id", "mystocks.execution.ParentOrder", partitions=3, dlq=False),
        TopicSpec(table_t, "symbol", "mystocks.execution.MarketParams", partitions=1, cleanup="compact", dlq=False)])
    rng = np.random.default_rng(8)
    rows = []
    for sym in ("PA", "PB"):
        mid = 30.0
        for k in range(1200):  # 20 minutes: a quote and a trade every second
            t = T0 + k * NS
            mid *= math.exp(rng.normal(0, 0.0005))
            half = float(rng.choice([0.01, 0.02]))
            rows.append({"symbol": sym, "ts_event": t, "seq": 2 * k, "kind": "QUOTE", "price": mid, "size": 0.0,
                         "side": 0, "bid": mid - half, "ask": mid + half, "bid_size": 100.0, "ask_size": 100.0})
            rows.append({"symbol": sym, "ts_event": t + 500_000_000, "seq": 2 * k + 1, "kind": "TRADE",
                         "price": mid + half, "size": float(rng.integers(1, 20) * 100), "side": 1,
                         "bid": mid - half, "ask": mid + half, "bid_size": 100.0, "ask_size": 100.0})
    produce_all(make_producer(settings.kafka), ticks_t,
                iter([(r["symbol"].encode(), CODEC.encode("mystocks.md.Tick", r), r["ts_event"] // 1_000_000)
                      for r in rows]))
    r = run_cli("execution", "params", "--from", ticks_t, "--kind", "ticks", "--bar-s", "60", "--lot-size", "10",
                "--orders-topic", orders_t, "--params-topic", table_t, timeout=240)
    assert r.returncode == 0 and "published 2 symbol(s) to 3 partition(s)" in r.stdout, r.stderr
    got, errors = read_params(settings.kafka, table_t)
    assert not errors and sorted(got) == ["PA", "PB"]
    for sym in ("PA", "PB"):
        df = [x for x in rows if x["symbol"] == sym]
        bars: dict[int, dict[str, float]] = {}
        spreads: dict[int, list[float]] = {}
        for x in df:
            b = x["ts_event"] // (60 * NS) * (60 * NS)
            spreads.setdefault(b, []).append(x["ask"] - x["bid"])
            if x["kind"] == "TRADE":
                bars.setdefault(b, {"close": 0.0, "volume": 0.0})
                bars[b]["close"] = x["price"]
                bars[b]["volume"] += x["size"]
        ts = sorted(bars)
        want = estimate_params(sym, ts, [bars[b]["close"] for b in ts], [bars[b]["volume"] for b in ts],
                               spread=[float(np.mean(spreads[b])) for b in ts], lot_size=10)
        g = got[sym]
        assert (g.symbol, g.lot_size, g.profile, g.price) == (want.symbol, 10, None, want.price)
        for f in ("sigma", "adv", "spread"):
            assert getattr(g, f) == pytest.approx(getattr(want, f), rel=1e-12), f
    per_partition: dict[int, list[str]] = {}
    for rec in read_topic(settings.kafka, orders_t, max_records=100, idle_timeout_s=3):
        per_partition.setdefault(rec.partition, []).append(params_from_record(rec.value or {}).symbol)
    assert {p: sorted(v) for p, v in per_partition.items()} == {p: ["PA", "PB"] for p in range(3)}
