"""``mystocks-gpu produce ticks --synthetic --live`` and ``mystocks-gpu consume TOPIC --latency`` on the
real broker. References: fastavro decodes of what arrived, the generator's ticks for the same seed,
and latencies known by construction (records stamped ``ts_event = T0 - k``)."""

from __future__ import annotations

import io
import json
import re
import signal
import struct
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import fastavro
import numpy as np
import pytest
from confluent_kafka import TopicPartition

from mystocks_gpu.data.live_feed import LIVE_CHUNK
from mystocks_gpu.data.synthetic_ticks import (
    GEN_CHUNK,
    SyntheticMarket,
    SyntheticTape,
    generate,
    symbol_names,
    to_records,
)
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer, watermarks
from mystocks_gpu.schemas import schema_store
from mystocks_gpu.topics.admin import TopicAdmin
from mystocks_gpu.topics.catalog import signals_topic
from tests.conftest import ROOT, run_cli, wait_until

AVSC = Path(__file__).resolve().parents[2] / "mystocks_gpu" / "schemas" / "avsc"


def _parsed(file: str) -> object:
    return fastavro.parse_schema(json.loads((AVSC / file).read_text()))


def _read_from(settings: Settings, topic: str, starts: dict[int, int], n: int) -> list[tuple[int, int, int, bytes]]:
    """(partition, offset, kafka timestamp ms, value) of the next ``n`` records after ``starts``."""
    c = make_consumer(settings.kafka, f"test-live-{time.monotonic_ns()}")
    c.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    got: list[tuple[int, int, int, bytes]] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                got.append((m.partition(), m.offset(), m.timestamp()[1], m.value()))
        extra = [m for m in c.consume(1000, timeout=2.0) if m.error() is None]
    finally:
        c.close()
    assert not extra, f"{len(extra)} record(s) more than the {n} produced"
    return got


def test_a_live_feed_stamps_each_tick_with_its_send_time_and_paces_to_the_rate(settings: Settings) -> None:
    run_cli("topics", "create")
    c = make_consumer(settings.kafka, "test-live-wm")
    parts = sorted(c.list_topics("md.ticks", timeout=10).topics["md.ticks"].partitions)
    starts = {p: watermarks(c, TopicPartition("md.ticks", p), 10)[1] for p in parts}
    c.close()
    n, rate = 1_500, 2_000.0
    t_a = time.time_ns()
    r = run_cli("produce", "ticks", "--synthetic", "--live", "--rate", f"{rate:g}", "--count", str(n),
                "--symbols", "20", "--seed", "5")
    t_b = time.time_ns()
    assert r.returncode == 0 and f"produced {n} live ticks" in r.stdout, r.stderr
    got = _read_from(settings, "md.ticks", starts, n)
    schema = _parsed("tick.avsc")
    recs = [(p, off, ts_ms, fastavro.schemaless_reader(io.BytesIO(v[5:]), schema, None)) for p, off, ts_ms, v in got]
    # the same ticks as the generator's for that seed (every field but the event time), each once
    want = {(w["symbol"], w["seq"]): w for w in to_records(generate(SyntheticMarket(n_symbols=20, seed=5), n),
                                                         symbol_names(20, 5))}
    assert sorted((x["symbol"], x["seq"]) for *_, x in recs) == sorted(want)
    for *_, x in recs:
        assert {k: v for k, v in x.items() if k != "ts_event"} == \
            {k: v for k, v in want[(x["symbol"], x["seq"])].items() if k != "ts_event"}
    # event time = the wall clock at send: inside the command's run, the Kafka timestamp its ms
    ts = np.array([x["ts_event"] for *_, x in recs], np.int64)
    assert t_a <= ts.min() and ts.max() <= t_b
    assert [ts_ms for _, _, ts_ms, _ in recs] == (ts // 1_000_000).tolist()
    # sent in order: each partition's event times never go back, each symbol's seq rises
    by_part: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for p, off, _, x in recs:
        by_part[p].append((off, x["ts_event"]))
    for rows in by_part.values():
        stamps = [t for _, t in sorted(rows)]
        assert stamps == sorted(stamps)
    by_sym: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for _, _, _, x in recs:
        by_sym[x["symbol"]].append((x["ts_event"], x["seq"]))
    for rows in by_sym.values():
        seqs = [s for _, s in sorted(rows)]
        assert seqs == sorted(seqs)
    # paced, not as fast as possible: the last tick goes out (n - 1) / rate after the first, within
    # the pacer's 1-ms slack (a slower machine only spreads them further)
    assert (ts.max() - ts.min()) / 1e9 >= (n - 1) / rate - 0.002


def test_consume_latency_reports_receive_time_minus_event_time(settings: Settings, unique: str) -> None:
    spec = signals_topic(f"lat{unique}", partitions=3)
    TopicAdmin(settings.kafka).create([spec])
    parsed = _parsed("signal.avsc")
    schema_id = schema_store(settings).by_name("mystocks.ml.Signal").id
    rng = np.random.default_rng(7)
    # latencies known by construction: each record's event time is T0 minus 0..1000 s
    back_ms = np.sort(rng.uniform(0, 1_000_000, 999))
    p = make_producer(settings.kafka)
    t0 = time.time_ns()
    for j, k in enumerate(back_ms.tolist()):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, {"symbol": f"S{j % 17}", "ts_event": t0 - int(k * 1e6), "seq": j,
                                                 "model_version": 1, "score": 0.5})
        p.produce(spec.name, b"\x00" + struct.pack(">I", schema_id) + buf.getvalue(), f"S{j % 17}".encode())
    p.produce(spec.name, b"not avro", b"junk")  # unreadable: skipped and counted, not fatal
    assert p.flush(30) == 0
    t_a = time.time_ns()
    r = run_cli("consume", spec.name, "--from-beginning", "--latency", "3600", "--max", "1000", "--json",
                "--timeout", "10")
    t_b = time.time_ns()
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    total = [x for x in lines if x["window"] == "total"]
    assert len(total) == 1 and total[0]["count"] == 999
    assert "999 record(s)" in r.stderr and "1 not readable (skipped)" in r.stderr
    # latency_i = (receive_i - T0) + back_i, with every receive time between t_a and t_b
    lo, hi = (t_a - t0) / 1e6, (t_b - t0) / 1e6
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999), ("max_ms", 1.0)):
        ref = float(np.quantile(back_ms, q))
        assert ref + lo - 1 <= total[0][key] <= ref + hi + 1, (key, total[0][key], ref, lo, hi)


@pytest.mark.parametrize("live,sig", [(True, signal.SIGINT), (False, signal.SIGTERM)])
def test_an_endless_feed_runs_until_a_signal_and_loses_nothing(settings: Settings, live: bool, sig: int) -> None:
    """``--count 0``: no end; drawn a chunk at a time (past the first chunk here), stopped by Ctrl-C or
    SIGTERM with what it sent flushed and counted: the topic holds exactly the ticks it reports, each
    symbol's seq runs 0, 1, 2, ... with no gap or repeat, and the ticks are the tape's."""
    run_cli("topics", "create")
    c = make_consumer(settings.kafka, "test-live-endless-wm")
    parts = sorted(c.list_topics("md.ticks", timeout=10).topics["md.ticks"].partitions)

    def ends() -> dict[int, int]:
        return {p: watermarks(c, TopicPartition("md.ticks", p), 10)[1] for p in parts}

    starts = ends()
    cmd = [sys.executable, "-m", "mystocks_gpu.cli", "produce", "ticks", "--synthetic", "--count", "0", "--rate",
           "20000", "--symbols", "30", "--seed", "9", *(["--live"] if live else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        past = LIVE_CHUNK + 2_000
        wait_until(lambda: sum(ends().values()) - sum(starts.values()) >= past, 60,
                   lambda: f"{past} ticks from the endless feed (rc {proc.poll()})")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        c.close()
    assert proc.returncode == 0, err
    m = re.search(r"produced (\d+) (live )?ticks for 30 symbols to md.ticks .*; stopped by a signal", out)
    assert m, out + err
    n = int(m.group(1))
    assert n >= past
    got = _read_from(settings, "md.ticks", starts, n)
    recs = [fastavro.schemaless_reader(io.BytesIO(v[5:]), _parsed("tick.avsc"), None) for *_, v in got]
    by_sym: dict[str, list[int]] = defaultdict(list)
    for x in recs:
        by_sym[x["symbol"]].append(x["seq"])
    assert all(sorted(s) == list(range(len(s))) for s in by_sym.values())
    # the tape drawn a chunk at a time as the feed draws it (GEN_CHUNK, or LIVE_CHUNK when live), cut at n
    chunk = LIVE_CHUNK if live else GEN_CHUNK
    draw = SyntheticTape(SyntheticMarket(n_symbols=30, seed=9))
    parts = [draw.next(chunk) for _ in range(-(-n // chunk))]
    tape = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    want = {(w["symbol"], w["seq"]): w for w in to_records(tape, symbol_names(30, 9))}
    assert sorted((x["symbol"], x["seq"]) for x in recs) == sorted(want)
    for x in recs:  # a live tick's event time is its send time, the rest is the tape's
        assert x == (dict(want[(x["symbol"], x["seq"])], ts_event=x["ts_event"]) if live else want[(x["symbol"], x["seq"])])


@pytest.mark.parametrize("columnar", [True, False])
def test_the_latency_reader_takes_every_value_once_with_or_without_the_c_ingest(
        settings: Settings, unique: str, columnar: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``consume --latency``'s reader (``cli.data._value_chunks``) through the columnar C ingest and,
    as where the extension is not built, through confluent-kafka: every value produced, once, each
    partition's in order; ``max_records`` cuts exactly."""
    from mystocks_gpu.cli.data import _value_chunks
    from mystocks_gpu.streams import columnar_io

    if not columnar:
        monkeypatch.setattr(columnar_io, "_loaded", (None, "switched off by the test"))
    elif columnar_io.load_extension()[0] is None:
        pytest.fail(f"the C extension is part of the install: {columnar_io.load_extension()[1]}")
    spec = signals_topic(f"rd{unique}", partitions=3)
    TopicAdmin(settings.kafka).create([spec])
    p = make_producer(settings.kafka)
    sent = [(f"S{j % 7}".encode(), f"value-{j}".encode()) for j in range(5_000)]
    for key, value in sent:
        p.produce(spec.name, value, key)
    assert p.flush(30) == 0
    got = [v for chunk in _value_chunks(settings, spec.name, True, None, 3.0) for v in chunk]
    assert sorted(got) == sorted(v for _, v in sent)
    for k in {k for k, _ in sent}:  # one key, one partition: in the order sent
        mine = [v for kk, v in sent if kk == k]
        assert [v for v in got if v in set(mine)] == mine
    cut = [len(chunk) for chunk in _value_chunks(settings, spec.name, True, 1_234, 3.0)]
    assert sum(cut) == 1_234
