"""The ``execsim`` job through the job plane (control app + worker, real Kafka + Redis): a small
hand-made tape produced to a topic, two parent orders submitted with ``submit execsim --wait
--report``; the realised shortfall of every (order, strategy) equals a pandas computation of the
documented fill rule on the same ticks, rows land on results.execsim, the table and the plots are
written; bad specs are rejected with the reason."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.gpu_ops.execution import (
    ExecutionConfig,
    MarketParams,
    ParentOrder,
    VolumeProfile,
    schedule,
)
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import run_cli
from tests.integration.jobs_plane import Plane, http

NS = 1_000_000_000
T0 = 1_699_972_200 * NS
SLICE_NS = 60 * NS


@pytest.fixture(scope="module")
def plane(settings: Settings, stack: Any) -> Iterator[Plane]:
    p = Plane(settings, uuid.uuid4().hex[:8])
    try:
        p.start_control()
        p.start_worker("exa", "--kinds", "execsim,echo")
        p.warm_up()
        yield p
    finally:
        p.close()


def _tape(sym: str, seed: int = 9) -> pd.DataFrame:
    """20 minutes of one symbol: a quote every 2 s (random-walk mid, 1-3 cent spread) and a trade
    every 1.5 s (100-1500 shares at the bid or ask), as Tick rows."""
    rng = np.random.default_rng(seed)
    rows = []
    mid = 50.0
    for k in range(600):
        t = T0 + k * 2 * NS
        mid += rng.normal(0, 0.01)
        half = rng.choice([0.005, 0.01, 0.015])
        rows.append((t, 1, round(mid, 4), 0.0, 0, round(mid - half, 4), round(mid + half, 4)))
        if k % 3 != 2:
            side = int(rng.choice([1, -1]))
            px = round(mid + side * half, 4)
            rows.append((t + 700_000_000 + (k % 3) * 300_000_000, 0, px, float(rng.integers(1, 16) * 100), side,
                         round(mid - half, 4), round(mid + half, 4)))
    df = pd.DataFrame(rows, columns=["ts", "kind", "price", "size", "side", "bid", "ask"])
    df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    df.insert(0, "symbol", sym)
    df["seq"] = np.arange(len(df))
    return df


def _produce_tape(settings: Settings, topic: str, df: pd.DataFrame) -> None:
    codec = AvroCodec()
    items = []
    for r in df.itertuples(index=False):
        rec = {"symbol": r.symbol, "ts_event": int(r.ts), "seq": int(r.seq), "kind": "TRADE" if r.kind == 0 else "QUOTE",
               "price": float(r.price), "size": float(r.size), "side": int(r.side), "bid": float(r.bid),
               "ask": float(r.ask), "bid_size": 500.0, "ask_size": 500.0}
        items.append((r.symbol.encode(), codec.encode("mystocks.md.Tick", rec), int(r.ts) // 1_000_000))
    assert produce_all(make_producer(settings.kafka), topic, iter(items)) == len(items)


def _pandas_shortfall(df: pd.DataFrame, o: ParentOrder, p: MarketParams, strategy: str,
                      cfg: ExecutionConfig) -> dict[str, float]:
    """The documented fill rule, computed here with pandas on the tape rows: per slice window
    [t_k, t_k+1): reference = mid of the first quote in it, volume = traded shares in it; fill
    = wanted (slice + carry) or the lots that fit cap * volume; price = mid + side * (half
    spread + eta * fill / tau + gamma * filled before); a limit that the price crosses fills
    nothing; IS = side * sum fill * (price - arrival mid)."""
    o2 = ParentOrder(o.order_id, o.symbol, o.side, o.quantity, o.end_ns, o.start_ns, strategy, o.risk_aversion,
                     o.max_participation, o.pov_rate, o.limit_price)
    sched = schedule(o2, p, cfg, now_ns=o.start_ns)
    side = 1 if o.side == "buy" else -1
    eta = p.spread * cfg.day_seconds / (cfg.eta_participation * p.adv)  # the AC (2000) rule of thumb
    gamma = p.spread / (cfg.gamma_fraction * p.adv)
    cap = o.max_participation if o.max_participation is not None else cfg.max_participation
    quotes = df[df["bid"] > 0]
    trades = df[df["kind"] == 0]
    s0_row = quotes[quotes["ts"] <= o.start_ns].iloc[-1]
    s0 = (s0_row["bid"] + s0_row["ask"]) / 2
    edges = list(sched.times_ns) + [sched.end_ns]
    carry, done, cost, executed = 0, 0, 0.0, 0
    for k in range(sched.n_slices):
        want = int(sched.quantities[k]) + carry
        carry = want
        q = quotes[(quotes["ts"] >= edges[k]) & (quotes["ts"] < edges[k + 1])]
        vol = trades[(trades["ts"] >= edges[k]) & (trades["ts"] < edges[k + 1])]["size"].sum()
        if want <= 0 or q.empty:
            continue
        avail = int(np.floor(cap * vol))
        fill = want if want <= avail else (avail // p.lot_size) * p.lot_size
        if fill <= 0:
            continue
        first = q.iloc[0]
        px = (first["bid"] + first["ask"]) / 2 + side * ((first["ask"] - first["bid"]) / 2 + eta * fill / sched.tau_s
                                                          + gamma * done)
        if o.limit_price is not None and side * (px - o.limit_price) > 0:
            continue
        cost += side * fill * (px - s0)
        done += fill
        executed += fill
        carry = want - fill
    return {"realised_is": cost, "executed_qty": executed, "arrival_price": s0,
            "expected_is": sched.score.expected_shortfall}


def test_execsim_job_shortfall_equals_a_pandas_computation(plane: Plane, settings: Settings, unique: str,
                                                          tmp_path: Path) -> None:
    topic = f"t.exticks.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "symbol", "mystocks.md.Tick", partitions=2, dlq=False)])
    sym = f"SIM{unique[:6].upper()}"
    tape = _tape(sym)
    _produce_tape(settings, topic, tape)
    # a volume profile over the first 30 minutes (T0 = 14:30 UTC) so VWAP differs from TWAP
    pdict = {"price": 50.0, "sigma": 0.02, "adv": 4e6, "spread": 0.02, "lot_size": 100,
             "profile_fractions": [4.0, 1.0, 1.0, 1.0, 2.0, 3.0], "profile_bucket_s": 300.0,
             "profile_open_offset_s": 52_200.0}
    p = MarketParams(sym, 50.0, 0.02, 4e6, 0.02, 100, profile=VolumeProfile((4.0, 1.0, 1.0, 1.0, 2.0, 3.0), 300.0,
                                                                            52_200.0))
    orders = [
        {"order_id": "buy1", "symbol": sym, "side": "buy", "quantity": 20_000, "start": T0 + 120 * NS,
         "horizon_s": 600, "max_participation": 0.3, "risk_aversion": 1e-4},
        # the limit binds for POV (big early slices: impact pushes the price through it), not the others
        {"order_id": "sell1", "symbol": sym, "side": "sell", "quantity": 6_050, "start": T0 + 300 * NS,
         "end": T0 + 900 * NS, "max_participation": 0.25, "risk_aversion": 1e-5, "pov_rate": 0.2,
         "limit_price": 49.75},
    ]
    spec = {"orders": orders, "tick_topic": topic, "params": {sym: pdict}, "model": {"slice_ns": SLICE_NS},
            "lookback_s": 60, "n_fill_curves": 2}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    report = tmp_path / "report"
    job_id = f"execsim-{unique}"
    r = run_cli("submit", "execsim", "--spec", str(spec_file), "--wait", "--timeout", "180", "--no-cache",
                "--namespace", plane.ns, "--report", str(report), "--job-id", job_id, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "implementation shortfall by strategy" in r.stdout and "succeeded" in r.stdout
    for s in ("ac", "twap", "vwap", "pov"):
        assert any(ln.split()[:1] == [s] for ln in r.stdout.splitlines()), r.stdout
    result = plane.job(job_id)["result"]
    assert result["orders"] == 2 and result["simulated"] == 8 and not result["errors"]
    assert result["ticks"] == int(((tape["ts"] >= T0 + 60 * NS) & (tape["ts"] < T0 + 900 * NS)).sum())
    cfg = ExecutionConfig(slice_ns=SLICE_NS)
    rows = {(row["order_id"], row["strategy"]): row for row in result["rows"]}
    assert len(rows) == 8
    limited = 0
    for od in orders:
        end = od.get("end") or od["start"] + od["horizon_s"] * NS
        o = ParentOrder(od["order_id"], sym, od["side"], od["quantity"], end, od["start"], "ac",
                        od.get("risk_aversion"), od.get("max_participation"), None, od.get("limit_price"))
        for s in ("ac", "twap", "vwap", "pov"):
            want = _pandas_shortfall(tape, o, p, s, cfg)
            got = rows[(o.order_id, s)]
            assert got["executed_qty"] == want["executed_qty"], (o.order_id, s)
            assert got["arrival_price"] == pytest.approx(want["arrival_price"], rel=1e-12)
            assert got["realised_is"] == pytest.approx(want["realised_is"], rel=1e-9, abs=1e-9), (o.order_id, s)
            assert got["expected_is"] == pytest.approx(want["expected_is"], rel=1e-12)
            if want["executed_qty"]:
                assert got["realised_is_bps"] == pytest.approx(
                    want["realised_is"] / (want["arrival_price"] * want["executed_qty"]) * 1e4, rel=1e-9)
            else:
                assert got["realised_is_bps"] is None  # nothing filled: no bps (NaN -> null in JSON)
            limited += got["executed_qty"] < o.quantity
    assert 0 < limited < 8  # caps / the limit bind for some rows, not all: the tape exercises the fill rule
    assert len({round(rows[("buy1", s)]["realised_is"], 6) for s in ("ac", "twap", "vwap", "pov")}) == 4
    # every row is also on results.execsim under the job id
    published = [row for rec in read_topic(settings.kafka, "results.execsim", idle_timeout_s=4)
                 if rec.key == job_id and rec.value for row in rec.value["rows"]]
    assert sorted((x["order_id"], x["strategy"]) for x in published) == sorted(rows)
    page = (report / "index.html").read_text()
    assert "<table>" in page and "buy1" in page
    for png in ("shortfall_by_strategy.png", "realised_vs_expected.png", "fills.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("patch, reason", [
    ({"orders": []}, "at least one parent order"),
    ({"strategies": ["ac", "moon"]}, "strategies"),
    ({"model": {"slice_ns": -5}}, "slice_ns"),
    ({"orders": [{"order_id": "a", "symbol": "X", "side": "buy", "quantity": 10, "start": T0}]}, "end or horizon_s"),
    ({"params": {"X": {"price": 1.0, "sigma": -0.02, "adv": 1e6, "spread": 0.01}}}, "sigma"),
])
def test_bad_execsim_specs_are_rejected_with_a_reason(plane: Plane, patch: dict[str, Any], reason: str) -> None:
    spec = {"orders": [{"order_id": "a", "symbol": "X", "side": "buy", "quantity": 100, "start": T0, "horizon_s": 600}],
            **patch}
    status, body = http("POST", f"{plane.url}/jobs", {"kind": "execsim", "spec": json.loads(json.dumps(spec))})
    if status == 202:
        body = plane.wait(body["job_id"], {"rejected"}, timeout=30)
        text = body.get("error") or ""
    else:
        assert 400 <= status < 500
        text = json.dumps(body)
    assert reason in text, text
