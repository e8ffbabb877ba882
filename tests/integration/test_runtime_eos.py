"""Exactly-once on the real broker: SIGKILL crashes, a rebalance, a broker restart, poison records,
replay determinism. Every check compares against an uninterrupted reference computed with pandas."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import numpy as np

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.streams.replay import ReplayRange, ReplaySource, replay
from tests.integration.stream_helpers import (
    EVERY_INTERVAL,
    assert_exactly_once_equal,
    finish,
    finish_with_log,
    kill9,
    make_topics,
    output_high_watermark,
    produce_ticks,
    read_finished,
    read_outputs,
    reference,
    start_paced,
    start_worker,
    synthetic,
    tick_items,
    wait_for,
)

CODEC = AvroCodec()


def test_crash_sigkill_many_times_is_exactly_once(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(200_000, symbols=64, seed=11)
    assert produce_ticks(settings, t.input, cols, names) == 200_000
    rng = random.Random(7)
    kills = 0
    # small batches stretch the run so the kills land mid-stream; a commit every 100 ms throughout
    # (with catch-up commits the kills, a few thousand records apart, would all land in the first
    # transaction of every incarnation)
    args = ("--batch-records", "500", "--linger-ms", "5", *EVERY_INTERVAL)
    while kills < 6:
        # kill once this incarnation has produced a random number of records (committed or not):
        # kill points spread over the stream whatever the machine's speed, and six incarnations
        # never get through the whole input (each sees at most ~8k records plus one probe's worth)
        target = output_high_watermark(settings, t.output) + rng.randint(500, 8_000)
        w = start_worker(t, "w1", *args)
        progressed = wait_for(lambda g=target, w=w: output_high_watermark(settings, t.output) >= g
                              or w.poll() is not None, 60, every=0.05)
        assert progressed, "worker made no progress within 60 s"
        if w.poll() is not None:
            break
        kill9(w)
        kills += 1
    assert kills >= 5, "the worker finished before it could be killed 5 times; raise the input size"
    finish(start_worker(t, "w1", *args))
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_rebalance_survivor_takes_over(settings: Settings, unique: str) -> None:
    import socket
    import urllib.request

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def owned(port: int) -> set[str]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return set()
        return {ln.split('partition="')[1].split('"')[0] for ln in text.splitlines()
                if ln.startswith("mystocks_stream_consumer_lag{")}

    t = make_topics(settings, unique, partitions=4)
    # 10,000 ticks up front, the other 110,000 paced at 5k ticks/s from a thread (22 s), so the kill
    # lands mid-stream and the dead member's partitions hold work the survivor must take over, however
    # the two start. With the whole input produced up front, a member that joined first could finish
    # every partition before the other joined; the survivor, caught up on partitions with nothing
    # left, then exited idle before the dead member's session expired (CI, 2026-12-07: assignments 1,
    # records_in 0).
    n, head = 120_000, 10_000
    cols, names = synthetic(n, symbols=48, seed=12)
    items = tick_items(cols, names)
    produce_all(make_producer(settings.kafka), t.input, iter(items[:head]))
    args = ("--batch-records", "500", "--linger-ms", "5")
    pa, pb = free_port(), free_port()
    a = start_worker(t, "wa", *args, "--metrics-port", str(pa), idle_exit=12)
    b = start_worker(t, "wb", *args, "--metrics-port", str(pb), idle_exit=12)
    # the second member really took partitions (not just "it had time to")
    assert wait_for(lambda: len(owned(pb)) >= 1 and len(owned(pa)) >= 1 or a.poll() is not None or b.poll() is not None, 120), \
        (owned(pa), owned(pb))
    pacer = start_paced(settings, t.input, items[head:], 5_000.0)
    assert wait_for(lambda: pacer.done() or output_high_watermark(settings, t.output) > head + 1_000, 60)
    assert a.poll() is None and b.poll() is None
    assert not pacer.done(), "the paced input ended before the kill"
    kill9(b)
    assert pacer.result(120) == n - head
    out, log = finish_with_log(a, timeout=300)
    summary = json.loads(out.strip().splitlines()[-1])
    # the survivor was assigned the dead member's partitions
    assert summary["assignments"] >= 2, f"{summary}\n{log[-8000:]}"
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_broker_restart_mid_stream(settings: Settings, unique: str, stack: LocalStack) -> None:
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(60_000, symbols=40, seed=13)
    produce_ticks(settings, t.input, cols, names)
    w = start_worker(t, "wr", "--batch-records", "500", "--linger-ms", "5", idle_exit=10)
    assert wait_for(lambda: output_high_watermark(settings, t.output) > 2000 or w.poll() is not None, 240)  # the first batch waits for imports and compiles; slow on a loaded machine
    assert w.poll() is None
    t0 = time.monotonic()
    stack.restart_kafka(hard=True)  # a crash, not a polite shutdown
    t1 = time.monotonic()
    out = finish(w, timeout=300)
    print(f"broker restart {t1 - t0:.1f} s, worker finished {time.monotonic() - t1:.1f} s later: {out}")
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_an_outage_past_the_session_and_the_idle_exit_is_waited_out(settings: Settings, unique: str,
                                                                     stack: LocalStack) -> None:
    """The broker frozen (SIGSTOP) for 14 s mid-stream: longer than the worker's session (6 s) and
    three idle exits (3 s each). The worker loses its partitions; it must not count the outage, nor
    the wait for its partitions to come back, as idleness (it exited with all its work uncommitted:
    commits 0, no output, when a slow broker restart took 24-45 s), but rejoin and finish exactly
    once."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(60_000, symbols=40, seed=17)
    produce_ticks(settings, t.input, cols, names)
    w = start_worker(t, "wo", "--batch-records", "500", "--linger-ms", "5", idle_exit=3)
    assert wait_for(lambda: output_high_watermark(settings, t.output) > 2000 or w.poll() is not None, 240)
    assert w.poll() is None
    kafka_pid = stack.pid("kafka")
    assert kafka_pid
    os.kill(kafka_pid, signal.SIGSTOP)
    try:
        time.sleep(14.0)  # the length of the outage (the fault itself)
    finally:
        os.kill(kafka_pid, signal.SIGCONT)
    summary = json.loads(finish(w, timeout=300).strip().splitlines()[-1])
    assert summary["commits"] >= 1 and summary["assignments"] >= 2, summary  # lost, given back, committed
    assert_exactly_once_equal(read_outputs(settings, t.output), reference(cols, names))


def test_a_commit_held_up_is_not_idleness(settings: Settings, unique: str) -> None:
    """Every commit held up 10 s at its start (fault stage ``slow_commit``: a broker slow to answer,
    a host paused there; the transaction timeout of 60 s outlasts it), longer than a worker that is
    not caught up waits before an idle exit (three idle exits, 9 s). The first half of the input is
    processed, its commit is held up, and the second half arrives meanwhile. Waiting for a commit
    is not idleness: the worker exited the moment that commit returned, the second half unread
    (first seen as 50,500 of 60,000 records processed after a broker freeze held up a commit,
    2026-12-07)."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(40_000, symbols=40, seed=19)
    items = tick_items(cols, names)
    half = len(items) // 2
    produce_all(make_producer(settings.kafka), t.input, iter(items[:half]))
    w = start_worker(t, "wh", "--batch-records", "500", "--linger-ms", "5", "--transaction-timeout-ms", "60000",
                     "--inject-faults", "slow_commit=1.0;stall_s=10", idle_exit=3)
    # every output of the first half written (read_uncommitted): the worker is in the commit after it
    assert wait_for(lambda: output_high_watermark(settings, t.output) >= half or w.poll() is not None, 240)
    assert w.poll() is None
    produce_all(make_producer(settings.kafka), t.input, iter(items[half:]))
    out, log = finish_with_log(w, timeout=300)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["records_in"] == len(items), f"{summary}\n{log[-4000:]}"
    assert_exactly_once_equal(read_outputs(settings, t.output), reference(cols, names))


def test_poison_records_go_to_dlq_with_headers(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=2)
    cols, names = synthetic(5_000, symbols=10, seed=14)
    values = BatchEncoder("mystocks.md.Tick").encode(cols, names)
    n = len(values)
    rng = np.random.default_rng(3)
    bad = sorted(rng.choice(n, 40, replace=False).tolist())
    kinds = {}
    for j, i in enumerate(bad):
        rec = CODEC.decode(values[i])
        k = j % 5
        if k == 0:
            values[i] = b"\xde\xad\xbe\xef garbage"
        elif k == 1:
            values[i] = b"\x00\x00\x00\x30\x39" + values[i][5:]  # schema id 12345
        elif k == 2:
            values[i] = CODEC.encode("Tick", dict(rec, price=float("nan")))
        elif k == 3:
            values[i] = CODEC.encode("Tick", dict(rec, price=-1.0))
        else:
            values[i] = CODEC.encode("Tick", dict(rec, ts_event=rec["ts_event"] + 10**9 * 86_400 * 3650))
        kinds[(names[cols["sym"][i]], int(cols["seq"][i]))] = k
    produce_ticks(settings, t.input, cols, names, values=values)
    finish(start_worker(t, "wp", idle_exit=5))
    keep = np.ones(n, bool)
    keep[bad] = False
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names, keep))
    dlq = list(read_finished(settings.kafka, t.dlq, decode=False))
    assert len(dlq) == len(bad) and len(got) + len(dlq) == n  # outputs + DLQ = inputs, exactly
    by_offset = {(d.headers["mystocks.source.partition"], d.headers["mystocks.source.offset"]): d for d in dlq}
    assert len(by_offset) == len(bad)
    expected_class = {0: "DecodeError", 1: "UnknownSchemaId", 2: "ValidationError", 3: "ValidationError",
                      4: "ValidationError"}
    seen = {}
    for d in dlq:
        assert d.headers["mystocks.source.topic"] == t.input and d.headers["mystocks.processor"] == "aggregate"
        assert d.headers["mystocks.error.message"]
        seen.setdefault(d.headers["mystocks.error.class"], 0)
        seen[d.headers["mystocks.error.class"]] += 1
    want: dict[str, int] = {}
    for k in kinds.values():
        want[expected_class[k]] = want.get(expected_class[k], 0) + 1
    assert seen == want
    raw = {bytes(d.raw or b"") for d in dlq}
    assert raw == {bytes(values[i]) for i in bad}  # the original bytes, untouched


def test_replay_same_range_twice_is_byte_identical(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=3)
    cols, names = synthetic(30_000, symbols=30, seed=15)
    produce_ticks(settings, t.input, cols, names)
    ts = cols["ts"]
    rng = ReplayRange(int(np.quantile(ts, 0.2)), int(np.quantile(ts, 0.8)))
    runs = []
    for _ in range(2):
        src = ReplaySource(settings.kafka, t.input, rng, max_records=1234)
        res = replay(RunningAggregateProcessor(output_topic=t.output), src)
        runs.append(res)
    a, b = (r.outputs.records[t.output] for r in runs)
    assert a[1] == b[1] and a[0] == b[0] and a[2] == b[2]  # values, keys, timestamps: byte-identical
    lo_ms, hi_ms = rng.start_ns // 1_000_000, -(-rng.end_ns // 1_000_000)
    inside = (ts // 1_000_000 >= lo_ms) & (ts // 1_000_000 < hi_ms)
    assert runs[0].records == int(inside.sum())
    # the replayed running values equal a reference over exactly the records inside the range
    got = [CODEC.decode(v) for v in a[1]]
    import pandas as pd

    ref = reference({k: v[inside] for k, v in cols.items()}, names)
    assert_exactly_once_equal(pd.DataFrame(got), ref)


def test_sigterm_finishes_the_batch_commits_and_exits_zero_with_metrics(settings: Settings, unique: str) -> None:
    import signal
    import socket
    import urllib.request

    t = make_topics(settings, unique, partitions=2)
    # 10,000 ticks before the worker starts, the other 50,000 paced at 10k ticks/s from a thread, so
    # the SIGTERM lands mid-stream however fast the worker is (a 200,000-tick backlog produced up front
    # was all consumed before the SIGTERM on CI once a backlog committed once a second)
    n, head = 60_000, 10_000
    cols, names = synthetic(n, symbols=20, seed=16)
    items = tick_items(cols, names)
    produce_all(make_producer(settings.kafka), t.input, iter(items[:head]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    before = output_high_watermark(settings, t.output)
    w = start_worker(t, "wt", "--batch-records", "500", "--linger-ms", "5", "--metrics-port", str(port), idle_exit=30)
    assert wait_for(lambda: output_high_watermark(settings, t.output) > before + 2000 or w.poll() is not None, 90)
    assert w.poll() is None
    pacer = start_paced(settings, t.input, items[head:], 10_000.0)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    consumed = sum(float(ln.split()[-1]) for ln in metrics.splitlines()
                   if ln.startswith("mystocks_stream_records_in_total"))
    assert consumed > 0 and "mystocks_stream_batch_seconds_bucket" in metrics and "mystocks_stream_consumer_lag" in metrics
    import os

    assert not pacer.done(), "the paced input ended before the SIGTERM"
    os.killpg(w.pid, signal.SIGTERM)
    out = finish(w, timeout=60)  # exit code 0, summary printed
    first = json.loads(out.strip().splitlines()[-1])
    assert 0 < first["records_in"] < n
    assert pacer.result(120) == n - head
    second = json.loads(finish(start_worker(t, "wt", idle_exit=6)).strip().splitlines()[-1])
    assert first["records_in"] + second["records_in"] == n  # nothing re-read: the stop committed
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))
