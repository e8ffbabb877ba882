"""The risk processor on the real broker: positions as a side input, exactly-once across SIGKILLs
(the restored worker's risk.metrics and alerts equal an uninterrupted run's), dead letters for bad
positions and late prices, and ``run risk`` refusing a multi-partition price topic."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.processors.risk.config import load_processor_config
from mystocks_gpu.processors.risk.positions import encode_positions
from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import ROOT, run_cli
from tests.integration.stream_helpers import (
    EVERY_INTERVAL,
    finish,
    kill9,
    output_high_watermark,
    read_finished,
    wait_for,
)
from tests.risk_helpers import S, make_data, run_in_process, same, side_records

RISK = {"interval_ns": S, "window": 20, "min_obs": 2}


def _topics(settings: Settings, u: str, price_partitions: int = 1) -> dict[str, str]:
    t = {"prices": f"t.px.{u}", "positions": f"t.pos.{u}", "metrics": f"t.rm.{u}", "alerts": f"t.al.{u}"}
    specs = [TopicSpec(t["prices"], "symbol", "mystocks.md.Tick", partitions=price_partitions),
             TopicSpec(t["positions"], "account", "mystocks.risk.Positions", partitions=4, cleanup="compact"),
             TopicSpec(t["metrics"], "account", "mystocks.risk.RiskMetrics", partitions=4, dlq=False),
             TopicSpec(t["alerts"], "source", "mystocks.ops.Alert", partitions=1, dlq=False)]
    TopicAdmin(settings.kafka).create(specs + [s.dlq_spec() for s in specs[:2]])  # type: ignore[list-item]
    return t


def _config(tmp: Path, t: dict[str, str], **proc: object) -> tuple[Path, dict[str, object]]:
    data = {"risk": RISK, "processor": {"emit_interval_ns": 2 * S, "output_topic": t["metrics"],
                                        "alerts_topic": t["alerts"], "positions_topic": t["positions"], **proc}}
    path = tmp / "risk.json"
    path.write_text(json.dumps(data))
    return path, data


def _worker(t: dict[str, str], cfg: Path, group: str, *extra: str, idle_exit: float = 6.0) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "--log-level", "INFO", "run", "risk", "--group", group,
           "--worker-id", "w1", "--input-topic", t["prices"], "--processor-config", str(cfg),
           "--idle-exit", str(idle_exit), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ})


def _read(settings: Settings, topic: str) -> list[dict[str, object]]:
    return [r.value for r in read_finished(settings.kafka, topic)
            if r.value is not None]


def _produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes | None, int]]) -> None:
    produce_all(make_producer(settings.kafka), topic, iter(items))


def test_risk_restored_after_sigkill_equals_an_uninterrupted_run(settings: Settings, unique: str,
                                                                  tmp_path: Path) -> None:
    t = _topics(settings, unique)
    cfg_path, cfg_data = _config(tmp_path, t)
    data = make_data(n_ticks=25_000, n_symbols=24, n_accounts=12, seed=5)
    _produce(settings, t["positions"], data.positions)  # positions first: they apply from their event time
    keys = [data.names[i].encode() for i in data.cols["sym"].tolist()]
    _produce(settings, t["prices"], list(zip(keys, data.ticks, (data.cols["ts"] // 1_000_000).tolist(), strict=True)))

    rng = random.Random(3)
    # a commit every 50 ms throughout: the kill points below count transaction markers too
    args = ("--batch-records", "300", "--linger-ms", "5", "--commit-interval-ms", "50", *EVERY_INTERVAL)
    kills = 0
    while kills < 2:
        # kill once this incarnation has written a random number of records and markers (the whole
        # run writes ~140 metrics): kill points spread over the stream whatever the machine's speed
        target = output_high_watermark(settings, t["metrics"]) + rng.randint(3, 25)
        w = _worker(t, cfg_path, f"g.{unique}", *args, idle_exit=3.0)
        assert wait_for(lambda g=target, w=w: output_high_watermark(settings, t["metrics"]) >= g
                        or w.poll() is not None, 90, every=0.05), "the risk worker made no progress"
        if w.poll() is not None:
            break
        kill9(w)
        kills += 1
    assert kills >= 2, "the worker finished before it could be killed twice; raise the input size"
    finish(_worker(t, cfg_path, f"g.{unique}", *args, idle_exit=3.0))

    got_m, got_a = _read(settings, t["metrics"]), _read(settings, t["alerts"])
    # the uninterrupted reference: the same processor over the same records, positions read first
    proc = RiskProcessor(load_processor_config(data=cfg_data, backend="cpu"))
    ref = run_in_process(proc, data.ticks, side_records(data.positions))
    assert len(ref.metrics) > 50 and ref.alerts, "the scenario must produce metrics and alerts"

    def key(r: dict[str, object]) -> tuple[object, object]:
        return (r["account"], r["ts_event"])

    assert len({key(r) for r in got_m}) == len(got_m), "duplicated risk.metrics records"
    assert len(got_m) == len(ref.metrics)
    ref_by = {key(r): r for r in ref.metrics}
    for r in got_m:
        assert same(r, ref_by[key(r)]), f"risk.metrics differ for {key(r)}"
    assert sorted(a["alert_id"] for a in got_a) == sorted(a["alert_id"] for a in ref.alerts)
    assert all(same(a, b) for a, b in zip(sorted(got_a, key=lambda a: a["alert_id"]),
                                          sorted(ref.alerts, key=lambda a: a["alert_id"]), strict=True))
    # the mid-stream holdings change and the closed account are visible at their event times
    acc2 = sorted((r for r in got_m if r["account"] == "acc002"), key=lambda r: r["ts_event"])
    assert len({len(r["positions"]) for r in acc2}) == 2
    assert any(r["account"] == "acc004" for r in got_m)
    last_ts = max(r["ts_event"] for r in got_m)
    assert not any(r["account"] == "acc004" and r["ts_event"] == last_ts for r in got_m)


def test_bad_positions_and_late_prices_go_to_the_dlq(settings: Settings, unique: str, tmp_path: Path) -> None:
    t = _topics(settings, unique)
    sectors = tmp_path / "sectors.csv"
    data = make_data(n_ticks=4_000, n_symbols=8, n_accounts=2, seed=9)
    sectors.write_text("symbol,sector\n" + "".join(f"{s},{'tech' if i % 2 else 'energy'}\n"
                                                   for i, s in enumerate(data.names)))
    cfg_path, _ = _config(tmp_path, t, sectors_file=str(sectors), late_ns=S)
    t0 = data.t0
    good = [(n, 10.0, 50.0) for n in data.names[:3]]
    bad = [
        (b"bad-symbol", encode_positions("bad-symbol", t0, [(data.names[0], 1.0, 1.0), ("NOPE", 5.0, 1.0)])),
        (b"bad-nan", encode_positions("bad-nan", t0, [(data.names[1], float("nan"), 1.0)])),
        (b"bad-dup", encode_positions("bad-dup", t0, [(data.names[1], 1.0, 1.0), (data.names[1], 2.0, 1.0)])),
        (b"bad-limit", encode_positions("bad-limit", t0, good, limits={"var": -1.0})),
        (b"other-key", encode_positions("ok-acct", t0, good)),
        (b"garbage", b"\x00\x00\x00\x00\x01not avro"),
    ]
    _produce(settings, t["positions"], [(b"ok-acct", encode_positions("ok-acct", t0, good), t0 // 1_000_000)]
             + [(k, v, t0 // 1_000_000) for k, v in bad])
    keys = [data.names[i].encode() for i in data.cols["sym"].tolist()]
    ticks = list(zip(keys, data.ticks, (data.cols["ts"] // 1_000_000).tolist(), strict=True))
    # a price 30 s older than the stream: late beyond late_ns (1 s)
    old = dict(zip(("sym", "ts"), (data.cols["sym"][:1], data.cols["ts"][:1] - 30 * S), strict=True))
    from mystocks_gpu.schemas.batch_codec import BatchEncoder

    late_val = BatchEncoder("mystocks.md.Tick").encode({**{k: v[:1] for k, v in data.cols.items()}, **old}, data.names)[0]
    ticks.insert(2_000, (keys[0], late_val, int(old["ts"][0]) // 1_000_000))
    _produce(settings, t["prices"], ticks)
    finish(_worker(t, cfg_path, f"g.{unique}", "--batch-records", "500", idle_exit=3.0))

    dlq = list(read_finished(settings.kafka, t["positions"] + ".dlq", decode=False))
    by_key = {r.key: r.headers for r in dlq}
    assert len(dlq) == len(bad), [r.key for r in dlq]
    assert by_key["bad-symbol"]["mystocks.error.class"] == "UnknownSymbol"
    assert "NOPE" in by_key["bad-symbol"]["mystocks.error.message"]
    assert "NaN" in by_key["bad-nan"]["mystocks.error.message"]
    assert "twice" in by_key["bad-dup"]["mystocks.error.message"]
    assert "limit var" in by_key["bad-limit"]["mystocks.error.message"]
    assert "key" in by_key["other-key"]["mystocks.error.message"]
    assert by_key["garbage"]["mystocks.error.class"] == "DecodeError"
    assert all(h["mystocks.source.topic"] == t["positions"] for h in by_key.values())
    late = list(read_finished(settings.kafka, t["prices"] + ".dlq", decode=False))
    assert [r.headers["mystocks.error.class"] for r in late] == ["late"]
    assert late[0].raw == late_val
    metrics = _read(settings, t["metrics"])
    assert {r["account"] for r in metrics} == {"ok-acct"}
    last = max(metrics, key=lambda r: r["ts_event"])
    assert set(last["by_sector"]) == {"tech", "energy"}
    gross = sum(abs(p["exposure"]) for p in last["positions"])
    assert abs(last["gross"] - gross) <= 1e-9 * gross


def test_run_risk_refuses_a_multi_partition_price_topic(settings: Settings, unique: str, tmp_path: Path) -> None:
    t = _topics(settings, unique, price_partitions=4)
    cfg_path, _ = _config(tmp_path, t)
    res = run_cli("run", "risk", "--group", f"g.{unique}", "--input-topic", t["prices"], "--processor-config",
                  str(cfg_path), "--idle-exit", "2", timeout=120)
    assert res.returncode != 0
    assert "1 partition" in res.stderr and "traceback" not in res.stderr.lower(), res.stderr[-2000:]
