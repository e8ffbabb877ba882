"""Exactly-once under injected faults on the real broker.

Two kinds of fault: (1) the commit protocol's fault plan raises abortable errors at random stages
(begin/produce/offsets/commit), so the REAL transaction on the broker is aborted and every
partition rewound while batches are half-formed; (2) real broker faults: SIGSTOP/SIGCONT pauses of
the broker JVM and a second group member joining and leaving (rebalances, fenced epochs). The input
is shaped to expose partial rewinds: 24 partitions, one hot key, sparse keys, and partitions that
receive only poison records. Every check compares against an uninterrupted pandas reference: each
input's output exactly once, every running value equal, each poison record in the DLQ exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import pandas as pd
from confluent_kafka import KafkaException

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.integration.stream_helpers import (
    EVERY_INTERVAL,
    Topics,
    assert_at_least_once,
    assert_exactly_once_equal,
    committed_total,
    finish,
    kill9,
    make_topics,
    output_high_watermark,
    produce_ticks,
    read_finished,
    read_outputs,
    reference,
    start_worker,
    summaries,
    synthetic,
    tick_items,
    wait_for,
)

CODEC = AvroCodec()
PARTS = 24
POISON_ONLY = (20, 21, 22, 23)


@dataclass(frozen=True)
class SkewedInput:
    """``n`` ticks: half on one hot symbol, the rest on 60 sparse ones, each symbol pinned to one of
    partitions 0..19; every 97th tick is followed by a poison record, 4 of 5 of them on the
    poison-only partitions 20..23. ``poison`` is in production order."""

    cols: dict[str, np.ndarray]
    names: list[str]
    values: list[bytes]
    poison: list[bytes]

    def produce(self, settings: Settings, topic: str, lo: int = 0, hi: int | None = None) -> None:
        """Produce ticks ``lo..hi`` (and the poison records that follow them) to ``topic``."""
        part_of = {i: (i * 7) % 20 for i in range(61)}
        p = make_producer(settings.kafka)
        for i in range(lo, len(self.values) if hi is None else hi):
            s = int(self.cols["sym"][i])
            ts_ms = int(self.cols["ts"][i] // 1_000_000)
            p.produce(topic, self.values[i], self.names[s].encode(), partition=part_of[s], timestamp=ts_ms)
            if i % 97 == 0:
                k = i // 97
                part = POISON_ONLY[k % 4] if k % 5 else part_of[s]
                p.produce(topic, self.poison[k], b"poison", partition=part, timestamp=ts_ms)
            if i % 20_000 == 0:
                p.poll(0)
        assert p.flush(60) == 0


def skewed_input(n: int, seed: int) -> SkewedInput:
    """Shape ``n`` skewed ticks with their poison records (see :class:`SkewedInput`)."""
    cols, names = synthetic(n, symbols=61, seed=seed)
    rng = np.random.default_rng(seed)
    sym = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 61, n)).astype(cols["sym"].dtype)
    cols = dict(cols, sym=sym)
    # per-symbol sequence numbers must still rise: renumber in order of appearance
    cols["seq"] = pd.Series(np.arange(n)).groupby(sym).cumcount().to_numpy().astype(np.int64)
    prng = random.Random(seed)
    poison = [b"\xde\xad" + prng.randbytes(prng.randint(0, 40)) for _ in range(0, n, 97)]
    return SkewedInput(cols, names, BatchEncoder("mystocks.md.Tick").encode(cols, names), poison)


def assert_dlq_exactly(settings: Settings, t: Topics, poison: list[bytes]) -> None:
    dlq = list(read_finished(settings.kafka, t.dlq, decode=False))
    assert len(dlq) == len(poison), f"{len(dlq)} dead letters for {len(poison)} poison records"
    assert sorted(bytes(d.raw or b"") for d in dlq) == sorted(poison)
    locs = {(d.headers["mystocks.source.partition"], d.headers["mystocks.source.offset"]) for d in dlq}
    assert len(locs) == len(poison), "a dead letter was written twice"


def test_injected_aborts_with_forming_batches_lose_and_duplicate_nothing(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=PARTS)
    data = skewed_input(60_000, seed=21)
    data.produce(settings, t.input)
    # long linger + short commit interval, every interval: a half-formed batch is open at most commits
    args = ("--batch-records", "1500", "--linger-ms", "150", "--commit-interval-ms", "20", *EVERY_INTERVAL,
            "--inject-faults", "begin=0.05,produce=0.08,offsets=0.12,commit=0.2;seed=5")
    out = finish(start_worker(t, "wf", *args, idle_exit=8), timeout=400)
    s = summaries(out)[-1]
    got = read_outputs(settings, t.output)
    assert s["aborts"] >= 12, s  # many injected failures actually happened
    assert s["restores"] == s["assignments"], s  # aborts restore from memory, not from the changelog
    assert_exactly_once_equal(got, reference(data.cols, data.names))
    assert_dlq_exactly(settings, t, data.poison)
    print(f"injected aborts: {s['aborts']}, records checked: {60_000 + len(data.poison)}, lost 0, duplicated 0")


def test_crash_with_dirty_state_never_commits_it(settings: Settings, unique: str) -> None:
    """An exception after states were replaced: the protocol aborts, close() must not commit."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(30_000, symbols=40, seed=22)
    produce_ticks(settings, t.input, cols, names)
    crashes = 0
    for attempt in range(40):
        # a commit every 100 ms throughout: a crash every ~33 batches must often follow a commit
        w = start_worker(t, "wc", "--batch-records", "400", "--linger-ms", "5", *EVERY_INTERVAL,
                         "--inject-faults", f"crash=0.03;seed={attempt}", idle_exit=5)
        _, err = w.communicate(timeout=300)
        if w.returncode == 0:
            break
        assert "injected crash" in err, err[-2000:]
        crashes += 1
    assert crashes >= 3, "too few crashes to prove anything"
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_a_transaction_timed_out_by_the_coordinator_is_survived(settings: Settings, unique: str) -> None:
    """Frozen inside an open transaction longer than the transaction timeout: the coordinator aborts
    it and fences the producer. No other member uses the id, so the worker re-initialises its
    producer, rewinds, and goes on: exactly-once, no restart."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(20_000, symbols=30, seed=29)
    produce_ticks(settings, t.input, cols, names)
    out = finish(start_worker(t, "wt", "--batch-records", "500", "--linger-ms", "5", "--transaction-timeout-ms", "2000",
                              "--inject-faults", "stall=0.08;seed=4;stall_s=6", idle_exit=8), timeout=400)
    s = summaries(out)[-1]
    assert s["producer_recoveries"] >= 1 and s["aborts"] >= 1, s
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_broker_pauses_and_group_churn(settings: Settings, unique: str, stack: LocalStack) -> None:
    """Four rounds: a second member joins, the broker JVM is paused twice, the member leaves (SIGTERM
    or SIGKILL). The input arrives in slices, one before each pause, so every fault lands mid-stream
    however fast the machine is (a fast worker used to finish the whole input in the first round)."""
    rounds, n = 4, 80_000
    t = make_topics(settings, unique, partitions=PARTS)
    data = skewed_input(n, seed=23)
    bounds = [n * k // (2 * rounds + 1) for k in range(2 * rounds + 2)]
    data.produce(settings, t.input, bounds[0], bounds[1])
    args = ("--batch-records", "1000", "--linger-ms", "50", "--commit-interval-ms", "50")
    a = start_worker(t, "wa", *args, idle_exit=15)
    kafka_pid = stack.pid("kafka")
    assert kafka_pid
    rng = random.Random(9)
    pauses = 0
    out_b = ""
    for churn in range(rounds):
        assert a.poll() is None, "the first member exited before the input was complete"
        b = start_worker(t, f"wb{churn}", *args, idle_exit=15)
        for _ in range(2):
            pauses += 1
            data.produce(settings, t.input, bounds[pauses], bounds[pauses + 1])
            time.sleep(rng.uniform(0.1, 1.0))  # let the rebalance and some transactions happen
            os.kill(kafka_pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, 2.0))
            os.kill(kafka_pid, signal.SIGCONT)
        if churn % 2:
            kill9(b)
        else:
            os.killpg(b.pid, signal.SIGTERM)
            bo, _ = b.communicate(timeout=120)
            out_b += bo
    out = finish(a, timeout=400)
    aborts = sum(s["aborts"] for s in summaries(out) + summaries(out_b))
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(data.cols, data.names))
    assert_dlq_exactly(settings, t, data.poison)
    print(f"broker pauses {pauses}, members joined/left {rounds}, aborts seen {aborts}: lost 0, duplicated 0")


def test_zombie_with_the_same_transactional_id_is_fenced(settings: Settings, unique: str) -> None:
    """A worker frozen mid-stream (a long GC pause, a partitioned host) is replaced by a successor with
    the same transactional id; when the zombie wakes up, its producer is fenced and its transaction
    never becomes visible. The successor finishes; outputs are exactly-once."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(80_000, symbols=30, seed=24)
    produce_ticks(settings, t.input, cols, names)
    args = ("--batch-records", "200", "--linger-ms", "5", "--commit-interval-ms", "500")
    zombie = start_worker(t, "same-id", *args, idle_exit=20)
    assert wait_for(lambda: output_high_watermark(settings, t.output) > 3000 or zombie.poll() is not None, 90)
    assert zombie.poll() is None, "the worker finished before it could be frozen"
    os.killpg(zombie.pid, signal.SIGSTOP)  # frozen with an open transaction
    try:
        # init_transactions fences the zombie; the successor stays in the group (idle 30 s) until the zombie
        # has woken up
        successor = start_worker(t, "same-id", *args, idle_exit=30)
        before = output_high_watermark(settings, t.output)
        assert wait_for(lambda: output_high_watermark(settings, t.output) > before + 2000 or successor.poll() is not None, 120)
    finally:
        os.killpg(zombie.pid, signal.SIGCONT)
    _, zerr = zombie.communicate(timeout=240)
    # the zombie's open transaction was fenced (nothing it had produced becomes visible). It then stops
    # when the group lists the successor under the same transactional id, or, when the group does not
    # list it at that instant (a rebalance in progress), re-initialises as a fresh instance; either
    # way the outputs below are exactly-once. A freeze that lands between two transactions leaves the
    # zombie nothing to commit: it wakes to find its partitions lost, and never touches its producer
    assert "fenced" in zerr.lower() or "partitions lost" in zerr, zerr[-2000:]
    assert zombie.returncode == 0 or "another worker with transactional id" in zerr, zerr[-2000:]
    _, serr = successor.communicate(timeout=300)
    assert successor.returncode == 0, f"successor exit {successor.returncode}\n{serr[-3000:]}\n--- zombie\n{zerr[-3000:]}"
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_consumer_group_protocol_survives_sigkill(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(60_000, symbols=40, seed=25)
    produce_ticks(settings, t.input, cols, names)
    args = ("--group-protocol", "consumer", "--batch-records", "400", "--linger-ms", "5")
    rng = random.Random(3)
    kills = 0
    while kills < 3:
        before = output_high_watermark(settings, t.output)
        w = start_worker(t, "wk", *args)
        assert wait_for(lambda b=before, w=w: output_high_watermark(settings, t.output) > b or w.poll() is not None, 90)
        time.sleep(rng.uniform(0.0, 1.0))
        if w.poll() is not None:
            break
        kill9(w)
        kills += 1
    # a KIP-848 member's partitions move only after the broker-side session timeout (6 s on the
    # local stack): the last incarnation waits long enough to get them
    finish(start_worker(t, "wk", *args, idle_exit=20), timeout=300)
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))


def test_oversized_records_go_to_the_dlq_and_the_rest_goes_on(settings: Settings, unique: str) -> None:
    """A tick valid under the schema but with a 5 MB symbol, and one whose OUTPUT exceeds the output
    topic's limit: both end in the DLQ with the reason; no abort loop; everything else is processed."""
    t = Topics(f"t.in.{unique}", f"t.out.{unique}", f"t.in.{unique}.dlq", f"g.{unique}")
    TopicAdmin(settings.kafka).create([
        TopicSpec(t.input, "symbol", "mystocks.md.Tick", partitions=2, dlq=False,
                  extra={"max.message.bytes": str(8 << 20)}),
        TopicSpec(t.output, "symbol", "mystocks.streams.RunningAggregate", partitions=2, dlq=False,
                  extra={"max.message.bytes": "600"}),
        TopicSpec(t.dlq, "symbol", None, partitions=1, dlq=False, extra={"max.message.bytes": str(1 << 20)}),
    ])
    cols, names = synthetic(5_000, symbols=10, seed=26)
    values = BatchEncoder("mystocks.md.Tick").encode(cols, names)
    huge = CODEC.decode(values[100])
    huge_v = CODEC.encode("Tick", dict(huge, symbol="H" * (5 << 20)))  # over run --max-record-bytes (1 MiB)
    long_v = CODEC.encode("Tick", dict(huge, symbol="L" * 1000))  # under it, but a symbol over 256 bytes
    wide = CODEC.decode(values[200])
    wide_v = CODEC.encode("Tick", dict(wide, symbol="W" * 240))  # valid input, output > 600 bytes
    p = make_producer(settings.kafka, **{"message.max.bytes": 16 << 20})
    for i, v in enumerate(values):
        p.produce(t.input, v, names[cols["sym"][i]].encode(), timestamp=int(cols["ts"][i] // 1_000_000))
        if i == 2500:
            for key, bad in ((b"H", huge_v), (b"L", long_v), (b"W", wide_v)):
                p.produce(t.input, bad, key, timestamp=int(cols["ts"][i] // 1_000_000))
    assert p.flush(60) == 0
    out = finish(start_worker(t, "wo", idle_exit=6), timeout=200)
    s = summaries(out)[-1]
    assert s["aborts"] == 0 and s["records_in"] == len(values) + 3, s
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))
    dlq = list(read_finished(settings.kafka, t.dlq, decode=False))
    by_key = {d.key: d for d in dlq}
    assert len(dlq) == 3 and set(by_key) == {"H", "L", "W"}
    h, lng, w = by_key["H"], by_key["L"], by_key["W"]
    # the 5 MB input record: refused by size before decoding, value truncated to fit the DLQ
    assert h.headers["mystocks.error.class"] == "RecordTooLarge" and "max_record_bytes" in h.headers["mystocks.error.message"]
    assert int(h.headers["mystocks.value.truncated_from"]) == len(huge_v)
    # a valid-sized record whose symbol is over the decoder's field limit
    assert lng.headers["mystocks.error.class"] == "ValidationError" and "symbol" in lng.headers["mystocks.error.message"]
    assert bytes(lng.raw or b"") == long_v
    # valid input whose OUTPUT is over the output topic's limit: the input record itself, naming the topic
    assert w.headers["mystocks.error.class"] == "RecordTooLarge" and t.output in w.headers["mystocks.error.message"]
    assert bytes(w.raw or b"") == wide_v


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lag_counts_from_the_committed_offset_and_revoked_series_disappear(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(20_000, symbols=40, seed=27)
    produce_ticks(settings, t.input, cols, names)
    # every commit fails: the worker fetches and processes, but commits nothing -> lag stays at the total
    port = _free_port()
    stalled = start_worker(t, "ws", "--metrics-port", str(port), "--inject-faults", "commit=1.0", idle_exit=60)
    try:
        def lag_total() -> float:
            try:
                m = _metrics(port)
            except OSError:
                return -1.0
            return sum(v for k, v in m.items() if k.startswith("mystocks_stream_consumer_lag{"))
        assert wait_for(lambda: lag_total() == 20_000 and _metrics(port).get(
            'mystocks_stream_transaction_aborts_total{processor="aggregate"}', 0) >= 3, 90)
    finally:
        kill9(stalled)
    # a healthy worker: lag returns to 0; when a second member takes partitions, their series go
    pa, pb = _free_port(), _free_port()
    a = start_worker(t, "wa2", "--metrics-port", str(pa), idle_exit=60)
    b: subprocess.Popen[str] | None = None
    try:
        def parts(port: int) -> set[str]:
            try:
                return {k.split('partition="')[1].split('"')[0] for k in _metrics(port)
                        if k.startswith("mystocks_stream_consumer_lag{")}
            except OSError:
                return set()
        assert wait_for(lambda: parts(pa) == {"0", "1", "2", "3"} and all(
            v == 0 for k, v in _metrics(pa).items() if k.startswith("mystocks_stream_consumer_lag{")), 90)
        b = start_worker(t, "wb2", "--metrics-port", str(pb), idle_exit=60)
        assert wait_for(lambda: len(parts(pa)) == 2 and len(parts(pb)) == 2 and not parts(pa) & parts(pb), 90), \
            (parts(pa), parts(pb))
    finally:
        kill9(a)
        if b is not None:
            kill9(b)


def test_backpressure_pauses_partitions_and_the_setting_takes_effect(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=2)
    cols, names = synthetic(20_000, symbols=20, seed=28)
    produce_ticks(settings, t.input, cols, names)
    # at-least-once: outputs are acknowledged asynchronously, so the producer queue is what grows
    tight = summaries(finish(start_worker(t, "bp", "--at-least-once", "--max-buffered-records", "50",
                                          idle_exit=5), timeout=200))[-1]
    assert tight["pauses"] > 0, tight
    got = read_outputs(settings, t.output)
    assert_exactly_once_equal(got, reference(cols, names))
    t2 = make_topics(settings, unique + "b", partitions=2)
    produce_ticks(settings, t2.input, cols, names)
    loose = summaries(finish(start_worker(t2, "bp2", "--at-least-once", idle_exit=5), timeout=200))[-1]
    assert loose["pauses"] == 0, loose  # the default (50,000) is never reached by 20k inputs


def test_at_least_once_sigkill_loses_nothing(settings: Settings, unique: str) -> None:
    """At-least-once sends each offset commit without waiting, after the outputs were acknowledged. A
    worker SIGKILLed mid-stream and restarted loses no input: every (symbol, seq) has an output and
    the last running count per symbol is at least the reference's (a re-processed record may repeat)."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(40_000, symbols=30, seed=31)
    produce_ticks(settings, t.input, cols, names)
    args = ("--at-least-once", "--batch-records", "300", "--linger-ms", "5")
    kills = 0
    for _ in range(2):
        before = output_high_watermark(settings, t.output)
        w = start_worker(t, "wa", *args)
        assert wait_for(lambda b=before, w=w: output_high_watermark(settings, t.output) > b + 3000 or w.poll() is not None, 90)
        if w.poll() is not None:
            break
        kill9(w)
        kills += 1
    finish(start_worker(t, "wa", *args, idle_exit=8), timeout=300)
    assert kills >= 1, "the worker finished before it could be killed"
    assert_at_least_once(read_outputs(settings, t.output), reference(cols, names))


def test_at_least_once_broker_pauses_and_sigkills_lose_nothing(settings: Settings, unique: str, stack: LocalStack) -> None:
    """At-least-once commits settle on delivery fences (the last output of each partition of a batch,
    ``streams/delivery_fences.py``): a cut's offsets are committed once a later fence of each
    partition it wrote is acknowledged. Here the broker JVM is paused (SIGSTOP, 0.2-2 s) six times
    while the worker runs, the input arriving in slices, one before each pause, and as the broker
    resumes the worker is SIGKILLed and a new one takes over from the committed offsets. Twelve
    output partitions and commits every 20 ms put many fences in flight. A commit that settled
    before all its outputs were acknowledged would lose them at a kill: every input must have an
    output, and each symbol's last running count must be at least pandas' (re-processed records may
    repeat). A settle rule that commits without the acknowledgements (``DeliveryFences.settled``
    always true) fails here in two of three runs, losing 5,735 and 7,827 of the 48,000 outputs."""
    rounds, n = 6, 48_000
    t = make_topics(settings, unique, partitions=12)
    cols, names = synthetic(n, symbols=40, seed=41)
    bounds = [n * k // (rounds + 1) for k in range(rounds + 2)]

    def feed(k: int) -> None:
        produce_ticks(settings, t.input, {c: v[bounds[k]:bounds[k + 1]] for c, v in cols.items()}, names)

    args = ("--at-least-once", "--batch-records", "200", "--linger-ms", "5", "--commit-interval-ms", "20",
            "--session-timeout-ms", "6000")
    kafka_pid = stack.pid("kafka")
    assert kafka_pid
    rng = random.Random(41)
    feed(0)
    w = start_worker(t, "wp", *args, idle_exit=60)
    kills = pauses = 0
    try:
        for k in range(rounds):
            before = output_high_watermark(settings, t.output)
            feed(k + 1)
            # mid-stream: the worker is producing this slice's outputs
            assert wait_for(lambda b=before, w=w: output_high_watermark(settings, t.output) > b + 300
                            or w.poll() is not None, 90)
            assert w.poll() is None, w.communicate()[1][-3000:]
            os.kill(kafka_pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, 2.0))  # the length of the outage (the fault itself)
            os.kill(kafka_pid, signal.SIGCONT)
            pauses += 1
            kill9(w)  # as the broker resumes: outputs queued in the outage are being acknowledged now
            kills += 1
            w = start_worker(t, f"wp{k}", *args, idle_exit=60)
        kill9(w)
        w = start_worker(t, "wp-last", *args, idle_exit=8)
        s = summaries(finish(w, timeout=300))[-1]
    finally:
        os.kill(kafka_pid, signal.SIGCONT)
        if w.poll() is None:
            kill9(w)
    got = read_outputs(settings, t.output)
    assert_at_least_once(got, reference(cols, names))
    print(f"broker pauses {pauses}, SIGKILLs {kills + 1}, outputs {len(got)} for {n} inputs; last worker {s}")


def test_at_least_once_commits_do_not_wait_and_aborts_restore_unsettled_state(settings: Settings, unique: str) -> None:
    """At-least-once cuts a commit (changelog sent, offsets snapshotted) without waiting for the
    acknowledgements and sends the offsets at a later loop turn that finds the producer's queue
    empty (``commit_waits`` counts the loop commits that did wait). The input arrives in ten chunks;
    after each, the group's committed offsets must reach the end of the input while the worker
    runs on (the unsettled commit lands without a shutdown or another commit forcing it). Injected
    abortable errors at produce and at the offset commit abort while commits are unsettled: the
    abort must restore the state of those partitions too, or the replay would count records twice.
    Checked against the uninterrupted pandas reference: every input has an output, and EVERY
    output, duplicates included, carries the reference's running count / sum / last."""
    t = make_topics(settings, unique, partitions=12)  # small batches touch a few partitions each
    n, chunks = 30_000, 10
    cols, names = synthetic(n, symbols=30, seed=33)
    args = ("--at-least-once", "--batch-records", "50", "--linger-ms", "5", "--commit-interval-ms", "20",
            "--inject-faults", "produce=0.02,offsets=0.05;seed=9")

    def committed() -> int:
        try:
            return committed_total(settings, t.group, t.input, partitions=12)
        except KafkaException:  # the group's coordinator is not known yet
            return -1

    w = None
    try:
        for k in range(chunks):
            lo, hi = k * n // chunks, (k + 1) * n // chunks
            produce_ticks(settings, t.input, {c: v[lo:hi] for c, v in cols.items()}, names)
            w = w or start_worker(t, "wu", *args, idle_exit=60)
            assert wait_for(lambda hi=hi, w=w: committed() == hi or w.poll() is not None, 90), \
                f"chunk {k}: committed {committed()} of {hi}"
            assert w.poll() is None, w.communicate()[1][-3000:]
        w.send_signal(signal.SIGTERM)
        s = summaries(finish(w, timeout=120))[-1]
    finally:
        if w is not None and w.poll() is None:
            kill9(w)
    assert s["aborts"] >= 5, s  # many injected failures actually happened
    assert s["commit_waits"] < s["commits"], s  # commits that landed without stalling the loop
    got = read_outputs(settings, t.output)
    ref = reference(cols, names)
    missing = set(zip(ref["symbol"], ref["seq"], strict=True)) - set(zip(got["symbol"], got["seq"], strict=True))
    assert not missing, f"{len(missing)} inputs without an output"
    both = got.merge(ref, on=["symbol", "seq"], how="left", suffixes=("", "_ref"), validate="many_to_one")
    for col in ("count", "sum", "last"):
        bad = both[both[col] != both[f"{col}_ref"]]
        assert bad.empty, f"{len(bad)} outputs with a wrong {col}:\n{bad.head()}"
    print(f"aborts {s['aborts']}, commits {s['commits']} ({s['commit_waits']} waited), outputs {len(got)} for {len(ref)} inputs")


def test_an_idle_exit_waits_for_the_partitions_of_a_killed_predecessor(settings: Settings, unique: str) -> None:
    """A worker started right after its predecessor was SIGKILLed is assigned nothing until the dead
    member's session expires (12 s here, ``--session-timeout-ms``) and the group rebalances. Its idle
    exit must not fire in that wait, however short it is (1 s here: a worker never assigned a
    partition waits the idle exit plus two session timeouts), or the input that arrives after the
    kill is never processed. Before, it exited after three idle exits (3 s), unassigned."""
    t = make_topics(settings, unique, partitions=4)
    cols, names = synthetic(40_000, symbols=30, seed=41)
    items = tick_items(cols, names)
    produce_all(make_producer(settings.kafka), t.input, iter(items[:20_000]))
    args = ("--batch-records", "300", "--linger-ms", "5", "--session-timeout-ms", "12000")
    w = start_worker(t, "wi", *args)
    assert wait_for(lambda: output_high_watermark(settings, t.output) > 0 or w.poll() is not None, 90)
    assert w.poll() is None, "the worker exited before it could be killed"
    kill9(w)
    produce_all(make_producer(settings.kafka), t.input, iter(items[20_000:]))  # only the successor can read these
    b = start_worker(t, "wi", *args, idle_exit=1.0)
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err[-3000:]
    assert summaries(out)[-1]["records_in"] >= 20_000, f"the successor exited before it was assigned the input\n{err[-3000:]}"
    assert_exactly_once_equal(read_outputs(settings, t.output), reference(cols, names))
