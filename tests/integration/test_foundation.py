"""Foundation against the real broker: produce/consume, kcat, topic idempotence and drift, errors."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names, to_records
from mystocks_gpu.data.topic_reader import read_topic
from mystocks_gpu.infra.config import Settings, StackConfig
from mystocks_gpu.infra.kafka_clients import make_producer, produce_all
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.schemas import AvroCodec, frame
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin, make_admin
from tests.conftest import ROOT, run_cli, wait_until

CODEC = AvroCodec()


def _make_topic(settings: Settings, name: str, partitions: int = 4) -> TopicSpec:
    spec = TopicSpec(name, "symbol", "mystocks.md.Tick", partitions=partitions, dlq=False)
    assert TopicAdmin(settings.kafka).create([spec])[0].status == "created"
    return spec


def _ticks(n: int, symbols: int = 20, seed: int = 3) -> list[dict]:
    names = symbol_names(symbols, seed)
    return list(to_records(generate(SyntheticMarket(n_symbols=symbols, seed=seed), n), names))


def test_produce_consume_exact_and_per_key_order(settings: Settings, unique: str) -> None:
    spec = _make_topic(settings, f"t.roundtrip.{unique}")
    recs = _ticks(5000)
    items = [(r["symbol"].encode(), CODEC.encode("Tick", r), r["ts_event"] // 1_000_000) for r in recs]
    assert produce_all(make_producer(settings.kafka), spec.name, iter(items)) == len(recs)
    got = list(read_topic(settings.kafka, spec.name, max_records=len(recs), idle_timeout_s=10))
    assert len(got) == len(recs)
    assert sorted((g.value["symbol"], g.value["seq"]) for g in got) == sorted((r["symbol"], r["seq"]) for r in recs)
    by_key_sent: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_key_sent[r["symbol"]].append(r)
    by_key_got: dict[str, list[dict]] = defaultdict(list)
    part_of_key: dict[str, set[int]] = defaultdict(set)
    for g in sorted(got, key=lambda g: (g.partition, g.offset)):
        by_key_got[g.key].append(g.value)
        part_of_key[g.key].add(g.partition)
        assert g.timestamp_ms == g.value["ts_event"] // 1_000_000  # record timestamp = event time
    assert by_key_got == by_key_sent  # identical records, per-key order preserved
    assert all(len(p) == 1 for p in part_of_key.values())  # one key -> one partition


def test_reading_to_the_end_waits_for_a_committed_transactions_markers(settings: Settings, unique: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that stops at the end (``read_topic(stop_at_end=True)``) and starts while a
    transaction's markers are not yet written (the broker answers the commit first) must read its
    records: it waits until the last stable offsets reach the high watermarks it found. Here the
    transaction commits only once the reader has seen the gap and is waiting; a transaction that
    never commits is left out after ``settle_s``, and the reader returns."""
    spec = _make_topic(settings, f"t.settle.{unique}", partitions=3)
    recs = _ticks(300)
    tx = make_producer(settings.kafka, **{"transactional.id": f"tx.settle.{unique}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for r in recs:
        tx.produce(spec.name, CODEC.encode("Tick", r), r["symbol"].encode(), timestamp=r["ts_event"] // 1_000_000)
    assert tx.flush(30) == 0
    from mystocks_gpu.data import topic_reader
    waiting = threading.Event()
    real_sleep = time.sleep

    def sleep(s: float) -> None:  # the reader polls the offsets: it has seen the open transaction
        waiting.set()
        real_sleep(s)

    monkeypatch.setattr(topic_reader.time, "sleep", sleep)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(read_topic(settings.kafka, spec.name, stop_at_end=True,
                                                                   idle_timeout_s=30, settle_s=60)))
    reader.start()
    assert waiting.wait(30), "the reader did not wait for the open transaction"
    tx.commit_transaction(30)
    reader.join(90)
    assert not reader.is_alive()
    assert sorted((g.value["symbol"], g.value["seq"]) for g in got) == sorted((r["symbol"], r["seq"]) for r in recs)

    tx.begin_transaction()  # left open: the reader gives up waiting after settle_s and reads what is committed
    tx.produce(spec.name, CODEC.encode("Tick", recs[0]), recs[0]["symbol"].encode())
    assert tx.flush(30) == 0
    t0 = time.monotonic()
    again = list(read_topic(settings.kafka, spec.name, stop_at_end=True, idle_timeout_s=30, settle_s=1.0))
    assert len(again) == len(recs) and time.monotonic() - t0 < 20
    tx.abort_transaction(30)


def test_kcat_sees_magic_byte_and_manifest_schema_id(settings: Settings, unique: str) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by `make install` (Debian package kcat)"
    spec = _make_topic(settings, f"t.kcat.{unique}", partitions=2)
    recs = _ticks(300)
    items = [(r["symbol"].encode(), CODEC.encode("Tick", r), r["ts_event"] // 1_000_000) for r in recs]
    produce_all(make_producer(settings.kafka), spec.name, iter(items))
    out = subprocess.run([kcat, "-b", settings.kafka.bootstrap_servers, "-C", "-t", spec.name, "-o", "beginning",
                          "-e", "-q", "-f", "%R%s"], capture_output=True, timeout=60, check=True).stdout
    values = []
    pos = 0
    while pos < len(out):
        (n,) = struct.unpack_from(">I", out, pos)
        values.append(out[pos + 4:pos + 4 + n])
        pos += 4 + n
    assert len(values) == len(recs)
    tick_id = CODEC.store.by_name("Tick").id
    for v in values:
        assert v[0] == 0 and struct.unpack(">I", v[1:5])[0] == tick_id
    assert sorted(CODEC.decode(v)["seq"] for v in values) == sorted(r["seq"] for r in recs)


def test_topics_create_is_idempotent_then_reports_drift(settings: Settings, unique: str) -> None:
    r1 = run_cli("topics", "create")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli("topics", "create")
    assert r2.returncode == 0, r2.stderr
    assert "0 created" in r2.stdout and "0 drifted" in r2.stdout
    spec = _make_topic(settings, f"t.drift.{unique}", partitions=2)
    admin = TopicAdmin(settings.kafka)
    assert admin.create([spec])[0].status == "exists"
    admin.add_partitions(spec.name, 3)
    wait_until(lambda: admin.existing().get(spec.name) == 3, 20, "the broker to report 3 partitions")
    rep = admin.create([spec])[0]
    assert rep.status == "drift" and "partitions 3 != wanted 2" in rep.details



def test_topics_create_sizes_named_topics_with_partitions(settings: Settings, unique: str) -> None:
    """``topics create NAME --partitions N``: the broker holds N partitions; asked again with
    another count (or the catalog's) it reports drift and exits 4, never altering the topic."""
    name = f"signals.t{unique}"  # a catalog name (signals.<model>) no other test uses
    r = run_cli("topics", "create", name, "--partitions", "1")
    assert r.returncode == 0, r.stderr
    assert f"{name:<22} created" in r.stdout
    assert TopicAdmin(settings.kafka).existing()[name] == 1
    again = run_cli("topics", "create", name, "--partitions", "1")
    assert again.returncode == 0 and f"{name:<22} exists" in again.stdout, again.stdout + again.stderr
    for argv, want in ((("--partitions", "2"), 2), ((), 4)):
        d = run_cli("topics", "create", name, *argv)
        assert d.returncode == 4, d.stdout + d.stderr
        assert f"partitions 1 != wanted {want}" in d.stdout
    assert TopicAdmin(settings.kafka).existing()[name] == 1
    for argv, message in (((), "name the topics it sizes"), ((name, "--partitions", "0"), "within 1..10000, got 0")):
        bad = run_cli("topics", "create", *argv, *(("--partitions", "3") if not argv else ()))
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_created_topics_are_visible_to_other_clients_when_create_returns(settings: Settings, unique: str) -> None:
    """A create is answered once the controller has the topics; the broker applies them a moment
    later, and a client asking in between was told "unknown topic" (CI, 2026-12-07: a worker's check
    of its outputs right after the test created them). ``create`` returns once the broker shows them."""
    specs = [TopicSpec(f"t.visible.{unique}.{i}", "symbol", "mystocks.md.Tick", partitions=4, dlq=False) for i in range(8)]
    assert [r.status for r in TopicAdmin(settings.kafka).create(specs)] == ["created"] * len(specs)
    other = make_admin(settings.kafka)  # another client, with its own metadata: asks the broker
    for spec in specs:
        md = other.list_topics(spec.name, timeout=10).topics[spec.name]
        assert md.error is None, (spec.name, md.error)
        assert sorted(md.partitions) == [0, 1, 2, 3] and all(p.leader >= 0 for p in md.partitions.values())
    admin = TopicAdmin(settings.kafka)
    t0 = time.monotonic()
    assert admin.await_visible([f"t.never.{unique}", specs[0].name], 0.5) == [f"t.never.{unique}"]
    assert 0.5 <= time.monotonic() - t0 < 5  # bounded: a topic that never shows up is reported, not waited on


def test_a_created_topic_still_missing_from_the_metadata_is_reported_and_logged(
        settings: Settings, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    """``create`` stops waiting for the broker's metadata after 3 x ``connect_timeout_s``; a topic
    it created that was still not shown is named in its report and in a warning (before: the wait's
    answer was dropped). The seam is our own wait, shortened to see nothing; the broker is real."""

    class Hasty(TopicAdmin):
        def await_visible(self, names: list[str], timeout_s: float) -> list[str]:
            self.waited = timeout_s
            return names[:1]  # as if the broker had not applied the first one yet

    specs = [TopicSpec(f"t.late.{unique}.{i}", "symbol", "mystocks.md.Tick", partitions=2, dlq=False) for i in range(2)]
    admin = Hasty(settings.kafka)
    with caplog.at_level("WARNING", logger="mystocks_gpu.topics.admin"):
        reps = admin.create(specs)
    assert admin.waited == 3 * settings.kafka.connect_timeout_s
    assert [r.status for r in reps] == ["created", "created"]
    wait = f"{3 * settings.kafka.connect_timeout_s:g} s"
    assert reps[0].details == f"not in the broker's metadata after {wait}" and reps[1].details == ""
    warned = [r.getMessage() for r in caplog.records if "not yet in the broker's metadata" in r.getMessage()]
    assert len(warned) == 1 and specs[0].name in warned[0], warned
    assert specs[1].name not in warned[0]
    assert [r.status for r in TopicAdmin(settings.kafka).create(specs)] == ["exists", "exists"]


def test_unreachable_broker_fails_fast_with_message() -> None:
    t0 = time.monotonic()
    r = run_cli("topics", "create", env={"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                         "MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": "5"}, timeout=60)
    assert time.monotonic() - t0 < 15
    assert r.returncode == 1
    assert "no Kafka broker answered at 127.0.0.1:1" in r.stderr
    r = run_cli("produce", "ticks", "--synthetic", "--count", "10",
                env={"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": "5"})
    assert r.returncode == 1 and "no Kafka broker answered" in r.stderr


def test_cli_produce_then_consume_json_and_unknown_schema_id(settings: Settings, unique: str) -> None:
    spec = _make_topic(settings, f"t.cli.{unique}", partitions=1)
    r = run_cli("produce", "ticks", "--synthetic", "--symbols", "5", "--count", "200", "--seed", "11",
                "--topic", "md.ticks")
    assert r.returncode == 0 and "produced 200 ticks" in r.stdout, r.stderr
    # a record with a schema id nobody knows
    p = make_producer(settings.kafka)
    good = CODEC.encode("Tick", _ticks(1)[0])
    p.produce(spec.name, key=b"X", value=frame(4242, good[5:]))
    p.flush(10)
    got = list(read_topic(settings.kafka, spec.name, max_records=1, idle_timeout_s=10))
    assert got[0].value is None and "unknown schema id 4242" in (got[0].error or "")


def test_stack_status_and_idempotent_up(stack: LocalStack) -> None:
    states = {c.name: c.state for c in stack.status()}
    assert states == {"kafka": "running", "redis": "running"}
    r = run_cli("stack", "up", timeout=180)
    assert r.returncode == 0 and "stack up" in r.stdout
    r = run_cli("stack", "status")
    assert r.returncode == 0 and "kafka  running" in r.stdout


def test_broker_gc_fits_two_shared_cores(stack: LocalStack, settings: Settings) -> None:
    """The stack's broker keeps its garbage collector out of the clients' way on a small machine.

    - A small log-cleaner dedupe buffer. Kafka's default (128 MiB) is allocated once and lives in the
      old generation: in the stack's 512 MiB heap it kept G1 above its marking threshold, so under
      load a concurrent mark cycle (one of two cores for 120-350 ms, remark pauses up to 92 ms) ran
      every few seconds. Asked from the running broker (DescribeConfigs): the template's setting
      takes effect.
    - One parallel GC thread: two workers on two cores shared with the clients stalled whole young
      pauses on one preempted worker (106 and 174 ms, where one worker copies ~5 MB in 6 ms). Read
      from the running broker's command line.
    - Young survivors promoted at once: under load the broker's survivors are objects that live for
      seconds, which G1's default tenuring copied again in every young pause (16 ms; 5-7 ms when
      they are promoted on their first copy). Read from the same command line.
    - A young generation of ``stack.kafka_young_mb`` (640 MB) in a heap committed whole: a young
      pause every 6-30 s under load instead of every 1-4 s (``bench/HISTORY.md``, 2026-12-08 01:45).
      From the command line, and from the JVM itself: its collector log gives the heap's size."""
    admin = make_admin(settings.kafka)
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    entries = admin.describe_configs([res])[res].result(timeout=30)
    dedupe = int(entries["log.cleaner.dedupe.buffer.size"].value)
    assert dedupe == 16 << 20
    assert dedupe <= (settings.stack.kafka_heap_mb << 20) // 16  # the default was a quarter of the heap
    pid = stack.pid("kafka")
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-XX:ParallelGCThreads=1" in argv and b"-XX:ConcGCThreads=1" in argv and b"kafka.Kafka" in argv
    assert b"-XX:MaxTenuringThreshold=0" in argv
    young, heap = settings.stack.kafka_young_mb, settings.stack.kafka_heap_mb
    assert young > 0 and f"-Xmn{young}m".encode() in argv and f"-Xms{heap}m".encode() in argv
    pauses = _young_pauses(stack)  # "... Pause Young (...) 67M->9M(1024M) 19.288ms": after, (committed)
    assert all(ln.rsplit(" ", 1)[0].endswith(f"({heap}M)") for ln in pauses), pauses[:3]


def _young_pauses(stack: LocalStack) -> list[str]:
    """The young-pause lines of the broker's collector log (``kafka/gc.log``), once it has one: any
    broker has collected by the time the session's tests run (class loading starts a cycle)."""
    log = stack.kafka_dir / "gc.log"
    wait_until(lambda: log.exists() and "Pause Young" in log.read_text(), 60, f"a young pause in {log}")
    return [ln for ln in log.read_text().splitlines() if "Pause Young" in ln]


def test_broker_writes_its_collector_log_with_wall_clock_times(stack: LocalStack) -> None:
    """The stack's broker logs its collector's pauses and concurrent cycles to ``kafka/gc.log`` with
    wall-clock times, so a latency stall (``bench/features_e2e.py`` records each run's window start)
    can be lined up with them. Any broker has collected by the time the session's tests run."""
    first = _young_pauses(stack)[0]
    stamp = datetime.strptime(first[1:24], "%Y-%m-%dT%H:%M:%S.%f")  # [2026-12-06T04:55:51.939+0000][0.289s] ...
    assert abs((datetime.now(timezone.utc).replace(tzinfo=None) - stamp).days) < 2


def test_broker_request_threads_fit_two_shared_cores(stack: LocalStack, settings: Settings) -> None:
    """The stack's broker runs one network thread and two request handlers, not Kafka's defaults for a
    dedicated host (3 and 8): on two cores shared with the clients the extra threads only added
    wake-ups (at-least-once p99 at 50k ticks/s 20.2 -> 16.9 ms, A/B in bench/HISTORY.md). Asked from
    the running broker (DescribeConfigs), so the template's settings are the ones in effect."""
    admin = make_admin(settings.kafka)
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    entries = admin.describe_configs([res])[res].result(timeout=30)
    assert int(entries["num.network.threads"].value) == 1
    assert int(entries["num.io.threads"].value) == 2


def test_session_stack_is_private_and_subprocesses_follow_it(stack: LocalStack, settings: Settings,
                                                             pytestconfig: pytest.Config) -> None:
    """`make test` runs on its own stack: not the demo stack's home or ports (so it never stops a
    stack `make demo` started, and two checkouts do not collide), and CLIs started by tests reach it."""
    if pytestconfig.getoption("--stack") == "own":  # --stack=env: the stack the MYSTOCKS_* settings name
        demo = StackConfig()
        assert stack.home != Path(demo.home).resolve() and stack.home.parent == ROOT / ".stack"
        assert {settings.stack.kafka_port, settings.stack.controller_port, settings.stack.redis_port}.isdisjoint(
            {demo.kafka_port, demo.controller_port, demo.redis_port})
    assert settings.kafka.bootstrap_servers == stack.bootstrap and settings.redis.url == stack.redis_url
    shown = json.loads(run_cli("config", "show").stdout)
    assert shown["kafka"]["bootstrap_servers"] == stack.bootstrap
    assert shown["stack"]["home"] == str(stack.home)
    r = run_cli("stack", "status")
    assert r.returncode == 0 and f"kafka  running  pid={stack.pid('kafka')} {stack.bootstrap}" in r.stdout
