"""Pieces of the runtime that need no broker: fault plans, dead-letter fitting, output provenance,
the symbol-size limit of the decoder, compile-cache keys, the manual clock, runtime settings."""

from __future__ import annotations

import functools
import importlib
import os
import time
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import KafkaError, KafkaException

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.clock import ManualClock
from mystocks_gpu.infra.kafka_clients import watermarks
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import Status, TickDecoder
from mystocks_gpu.streams.dead_letters import H_TRUNCATED, dlq_headers, fit_dead_letter
from mystocks_gpu.streams.fault_injection import FaultPlan
from mystocks_gpu.streams.output_sending import header_arg
from mystocks_gpu.streams.processor import Outputs
from mystocks_gpu.streams.runtime_config import RuntimeConfig

if TYPE_CHECKING:
    from mystocks_gpu.streams.commit_protocol import CommitProtocol

CODEC = AvroCodec()
TICK = {"symbol": "AAPL", "ts_event": 1_700_000_000_000_000_000, "seq": 1, "kind": "TRADE", "price": 10.0,
        "size": 5.0, "side": 1, "bid": 9.9, "ask": 10.1, "bid_size": 1.0, "ask_size": 2.0}


def test_fault_plan_parses_and_fires_with_its_probabilities() -> None:
    plan = FaultPlan.parse("produce=0.5, commit=1.0;seed=3")
    assert dict(plan.probabilities) == {"produce": 0.5, "commit": 1.0} and plan.seed == 3
    hook = plan.hook()
    assert hook is not None
    with pytest.raises(KafkaException) as exc:
        hook("commit")
    assert exc.value.args[0].txn_requires_abort()
    hook("begin")  # probability 0: never raises
    fired = 0
    for _ in range(2000):
        try:
            hook("produce")
        except KafkaException:
            fired += 1
    assert 900 < fired < 1100  # binomial(2000, 0.5): 5 sigma is +-112
    with pytest.raises(RuntimeError, match="injected crash"):
        FaultPlan.parse("crash=1").hook()("crash")  # type: ignore[misc]
    assert FaultPlan.parse("").hook() is None
    slow = FaultPlan.parse("slow_commit=1;stall_s=0.05").hook()
    assert slow is not None
    t0 = time.monotonic()
    slow("slow_commit")  # blocks stall_s, then the commit goes on: nothing raised
    assert time.monotonic() - t0 >= 0.05


@pytest.mark.parametrize("spec, words", [("explode=0.1", "unknown stage"), ("commit=2", "within 0..1"),
                                          ("commit=x", "must be a number"), ("commit=0.1;sed=3", "seed")])
def test_fault_plan_rejects_bad_specs(spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        FaultPlan.parse(spec)
    with pytest.raises(ConfigError):
        RuntimeConfig(fault_injection=spec)


def test_dead_letter_is_cut_to_the_limit_with_its_original_size() -> None:
    h = dlq_headers("ValidationError", "too big", "t", 0, 7, "p")
    key, value, headers = fit_dead_letter(b"k" * 10, b"v" * 5000, h, 1000)
    total = len(key or b"") + len(value or b"") + sum(len(a) + len(b) for a, b in headers)
    assert total <= 1000
    assert dict(headers)[H_TRUNCATED] == b"5000" and value == b"v" * len(value or b"")
    same = fit_dead_letter(b"k", b"small", h, 1000)
    assert same == (b"k", b"small", h)  # small letters are untouched


def test_outputs_track_sources_through_extend() -> None:
    a = Outputs()
    a.add("t", [b"k"], [b"v1"], [1])
    b = Outputs()
    b.add("t", [b"k", b"k"], [b"v2", b"v3"], [2, 3], sources=[4, 5])
    a.extend(b)
    a.add("t", [b"k"], [b"v4"], [4])
    assert a.records["t"][1] == [b"v1", b"v2", b"v3", b"v4"]
    assert a.sources["t"].tolist() == [-1, 4, 5, -1]
    c = Outputs()
    c.add("u", [None], [b"x"], [0])
    assert "u" not in c.sources  # no bookkeeping unless a processor gives provenance


def test_decoder_rejects_huge_symbols_before_interning() -> None:
    values = [CODEC.encode("Tick", TICK), CODEC.encode("Tick", dict(TICK, symbol="H" * 300)),
              CODEC.encode("Tick", dict(TICK, symbol="X" * 256))]
    dec = TickDecoder()
    d = dec.decode(values, validate=True, now_ns=TICK["ts_event"])
    assert d.status.tolist() == [0, int(Status.SYMBOL_TOO_LONG), 0]
    assert d.index.tolist() == [0, 2]
    assert sorted(dec.tables["symbol"].symbols) == ["AAPL", "X" * 256]  # the huge one was never interned
    assert "256" in Status.SYMBOL_TOO_LONG.message


def test_compile_cache_key_changes_with_any_source(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mystocks_gpu.infra import compile_cache as cc

    pkg = tmp_path / "mystocks_gpu"
    (pkg / "schemas").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "schemas" / "primitives.py").write_text("def f(): return 1\n")
    monkeypatch.setattr(cc, "_PKG", pkg)
    cc.code_fingerprint.cache_clear()
    first = cc.code_fingerprint()
    (pkg / "schemas" / "primitives.py").write_text("def f(): return 2\n")  # an inlined helper changes
    cc.code_fingerprint.cache_clear()
    second = cc.code_fingerprint()
    assert first != second and first.split("-")[0] == second.split("-")[0]  # same version, new key
    monkeypatch.setenv("MYSTOCKS_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("MYSTOCKS_CODEC_CACHE", raising=False)
    assert cc.codec_cache_dir() == tmp_path / "c" / "codecs" / second
    monkeypatch.setenv("MYSTOCKS_CODEC_CACHE", str(tmp_path / "legacy"))
    assert cc.codec_cache_dir() == tmp_path / "legacy" / second
    cc.code_fingerprint.cache_clear()
    importlib.reload(cc)


def test_cache_variables_are_not_mistaken_for_settings(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mystocks_gpu.infra.config import load_settings

    s = load_settings(environ={"MYSTOCKS_CODEC_CACHE": "/tmp/x", "MYSTOCKS_CACHE_DIR": "/tmp/y"})
    assert s.kafka.bootstrap_servers
    with pytest.raises(ConfigError, match="MYSTOCKS_CODECCACHE"):
        load_settings(environ={"MYSTOCKS_CODECCACHE": "/tmp/x"})


def test_manual_clock_moves_only_when_told() -> None:
    c = ManualClock(now_ns=10**18, monotonic_s=5.0)
    assert (c.now_ns(), c.monotonic()) == (10**18, 5.0)
    c.sleep(1.5)
    assert (c.now_ns(), c.monotonic()) == (10**18 + 1_500_000_000, 6.5)


@pytest.mark.parametrize("field, value", [("max_buffered_records", 0), ("commit_timeout_s", 0.0),
                                          ("produce_block_timeout_s", float("nan")), ("restore_attempts", 0),
                                          ("session_timeout_ms", 999), ("session_timeout_ms", 3_600_001),
                                          ("fetch_min_bytes", 0), ("fetch_min_bytes", 100_000_001)])
def test_runtime_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        RuntimeConfig(**{field: value})  # type: ignore[arg-type]


def test_fence_check_tells_another_worker_from_our_own_stale_member() -> None:
    """After a broker outage our expired member (same nonce) is still listed: not a zombie;
    a second process with the same transactional id (other nonce) is; other ids never are."""
    from mystocks_gpu.streams.fencing import is_twin

    tid, me = "g.x.aggregate.w~1", "g.x.aggregate.w~1~abc"
    assert not is_twin(me, tid, me)
    assert is_twin("g.x.aggregate.w~1~def", tid, me)
    assert not is_twin("g.x.aggregate.w~2~def", tid, me)
    assert not is_twin("g.x.aggregate.w~1", tid, me)  # an old-style id without a nonce is someone else's tid
    assert not is_twin("rdkafka", tid, me)


class _Leaderless:
    """Answers ``get_watermark_offsets`` with ``errors`` first, then (3, 9)."""

    def __init__(self, *errors: int) -> None:
        self.errors, self.calls = list(errors), 0

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 9


def test_watermarks_wait_out_a_leader_election_and_raise_other_errors() -> None:
    c = _Leaderless(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert watermarks(c, None, 10) == (3, 9) and c.calls == 3  # type: ignore[arg-type]
    c = _Leaderless(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        watermarks(c, None, 10)  # type: ignore[arg-type]
    assert c.calls == 1
    c = _Leaderless(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)
    with pytest.raises(KafkaException):  # still leaderless at the deadline
        watermarks(c, None, 0.3)  # type: ignore[arg-type]
    assert 2 <= c.calls < 10


def test_postgres_cluster_dir_reachability(tmp_path: object) -> None:
    """The stack puts PostgreSQL's cluster outside a home the ``postgres`` user cannot traverse
    (a checkout under a 0700 directory, e.g. /root)."""
    from pathlib import Path

    from mystocks_gpu.infra.stack_postgres import reachable

    base = Path(str(tmp_path))
    home = base / "private" / "checkout" / ".stack" / "test-1"
    home.mkdir(parents=True)
    (base / "private").chmod(0o700)
    other_uid, other_gid = 65534, 65534  # nobody: neither owner nor group of these directories
    assert os.stat(base / "private").st_uid != other_uid
    assert not reachable(home, other_uid, other_gid)
    assert not reachable(home / "not-yet-created", other_uid, other_gid)
    (base / "private").chmod(0o711)
    assert reachable(home, other_uid, other_gid) == all(
        os.stat(d).st_mode & 0o001 for d in [*Path(home).parents, home] if d.exists())
    st = os.stat(base / "private")
    (base / "private").chmod(0o700)
    assert reachable(home, st.st_uid, -1) == all(
        os.stat(d).st_mode & 0o001 or os.stat(d).st_uid == st.st_uid for d in [*Path(home).parents, home])


def _group(state: str, *client_ids: str) -> object:
    from types import SimpleNamespace

    from confluent_kafka import ConsumerGroupState

    members = [SimpleNamespace(member_id=f"m-{c}", client_id=c, host="h") for c in client_ids]
    return SimpleNamespace(state=getattr(ConsumerGroupState, state), members=members)


def test_fence_check_waits_for_the_group_to_settle_and_counts_every_twin_seen() -> None:
    """A woken zombie rejoining starts a rebalance: a description that misses the successor must not
    let it re-initialise (it would fence the live worker). Twins seen before the group settles count."""
    from mystocks_gpu.infra.clock import ManualClock
    from mystocks_gpu.streams.fencing import twins_once_settled

    tid, me, other = "g.x.a.w", "g.x.a.w~abc", "g.x.a.w~def"
    script = iter([_group("PREPARING_REBALANCING", me), _group("COMPLETING_REBALANCING", other, me),
                   _group("STABLE", me)])
    clock = ManualClock()
    twins = twins_once_settled(lambda: next(script), tid, me, clock)
    assert twins is not None and [m.client_id for m in twins] == [other]
    assert clock.monotonic() == pytest.approx(1001.0)  # two 0.5 s waits, then settled


def test_fence_check_judges_a_settled_group_at_once_and_stops_waiting_at_its_bound() -> None:
    from mystocks_gpu.infra.clock import ManualClock
    from mystocks_gpu.streams.fencing import twins_once_settled

    tid, me = "g.x.a.w", "g.x.a.w~abc"
    clock = ManualClock()
    assert twins_once_settled(lambda: _group("STABLE", me, "other.tid~x"), tid, me, clock) == []
    assert clock.monotonic() == 1000.0
    calls = []

    def rebalancing() -> object:
        calls.append(clock.monotonic())
        return _group("PREPARING_REBALANCING", me)

    assert twins_once_settled(rebalancing, tid, me, clock, settle_s=3.0) == []
    assert clock.monotonic() - 1000.0 <= 3.0 and len(calls) == 7  # every 0.5 s up to the bound


def test_fence_check_returns_none_when_the_group_cannot_be_described() -> None:
    from mystocks_gpu.infra.clock import ManualClock
    from mystocks_gpu.streams.fencing import twins_once_settled

    clock = ManualClock()

    def broken() -> object:
        raise RuntimeError("coordinator loading")

    assert twins_once_settled(broken, "t", "t~a", clock, settle_s=20.0) is None
    assert clock.monotonic() - 1000.0 <= 20.0


def test_worker_waits_to_be_listed_in_its_group_before_taking_its_transactional_id() -> None:
    from mystocks_gpu.infra.clock import ManualClock
    from mystocks_gpu.streams.fencing import await_membership

    clock, me = ManualClock(), "g.x.a.w~abc"
    script = iter([RuntimeError("coordinator loading"), _group("PREPARING_REBALANCING", "g.x.a.w~old"),
                   _group("PREPARING_REBALANCING", "g.x.a.w~old", me)])

    def describe() -> object:
        item = next(script)
        if isinstance(item, Exception):
            raise item
        return item

    assert await_membership(describe, me, clock, poll_s=0.05)
    assert clock.monotonic() == pytest.approx(1000.1)  # listed on the third description
    assert not await_membership(lambda: _group("STABLE", "g.x.a.w~old"), me, clock, timeout_s=1.0)
    assert clock.monotonic() == pytest.approx(1001.1)


def test_failed_asynchronous_offset_commit_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """At-least-once commits offsets asynchronously; a failure reported to on_commit is not lost."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, TopicPartition

    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.stream_metrics import RuntimeMetrics

    metrics = RuntimeMetrics("unit")
    fake = SimpleNamespace(metrics=metrics)
    ok = [TopicPartition("t", 0, 5), TopicPartition("t", 1, 7)]
    CommitProtocol.on_commit_result(fake, None, ok)  # type: ignore[arg-type]
    assert metrics.registry.get_sample_value("mystocks_stream_offset_commit_failures_total", {"processor": "unit"}) == 0
    with caplog.at_level("WARNING"):
        CommitProtocol.on_commit_result(fake, KafkaError(KafkaError.REBALANCE_IN_PROGRESS), ok)  # type: ignore[arg-type]
    assert metrics.registry.get_sample_value("mystocks_stream_offset_commit_failures_total", {"processor": "unit"}) == 1
    assert "offset commit failed" in caplog.text


def test_header_arg_is_a_dict_only_when_the_names_are_distinct() -> None:
    pairs = [("b.second", b"2"), ("a.first", b"1")]
    got = header_arg(pairs)
    assert isinstance(got, dict) and list(got.items()) == pairs  # same pairs, same order
    repeated = [("x", b"1"), ("x", b"2")]
    assert header_arg(repeated) == repeated  # a dict would drop the first one


def test_catch_up_commit_interval_applies_only_while_behind() -> None:
    """``due_in_s``: the commit interval, or the catch-up interval while the worker is behind (1 s
    unless set); and the setting's bounds (>= the commit interval, <= half the transaction timeout;
    0 = off) and default (1 s, or the commit interval when longer, within half the timeout)."""
    from mystocks_gpu.exceptions import ConfigError
    from mystocks_gpu.infra.clock import ManualClock
    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, RuntimeConfig

    def protocol(rt: RuntimeConfig, clock: ManualClock) -> CommitProtocol:
        p = CommitProtocol(producer=None, consumer=None, topic="t", processor=None, states=None,  # type: ignore[arg-type]
                           rt=rt, metrics=None, clock=clock, drop_input=lambda: None,  # type: ignore[arg-type]
                           transactional_id="x", max_bytes={})
        p.pending_offsets[0] = 5
        return p

    clock = ManualClock()
    on = protocol(RuntimeConfig(commit_interval_ms=100, catch_up_commit_interval_ms=1500), clock)
    off = protocol(RuntimeConfig(commit_interval_ms=100, catch_up_commit_interval_ms=0), clock)
    default = protocol(RuntimeConfig(commit_interval_ms=100), clock)
    on.behind = off.behind = default.behind = True
    clock.advance(0.1)
    assert off.due() and not on.due() and not default.due()
    assert abs(on.due_in_s() - 1.4) < 1e-9 and abs(default.due_in_s() - 0.9) < 1e-9
    default.behind = False
    assert default.due()
    on.behind = False  # the input is drained: the commit interval again
    assert on.due()
    on.behind = True
    clock.advance(1.4)
    assert on.due()
    for bad in (50.0, 5001.0, -1.0):
        with pytest.raises(ConfigError, match="catch_up_commit_interval_ms"):
            RuntimeConfig(commit_interval_ms=100, catch_up_commit_interval_ms=bad, transaction_timeout_ms=10_000)
    assert RuntimeConfig(catch_up_commit_interval_ms=5000, transaction_timeout_ms=10_000).catch_up_ms == 5000
    assert RuntimeConfig().catch_up_ms == 1000 and RuntimeConfig(catch_up_commit_interval_ms=0).catch_up_ms == 0
    assert RuntimeConfig(commit_interval_ms=250).catch_up_ms == 1000
    assert RuntimeConfig(commit_interval_ms=3000).catch_up_ms == 0  # not longer than the commit interval: off
    assert RuntimeConfig(transaction_timeout_ms=1200).catch_up_ms == 600  # half the transaction timeout
    assert RuntimeConfig(commit_interval_ms=700, transaction_timeout_ms=1200).catch_up_ms == 0
    assert RuntimeConfig(guarantee=AT_LEAST_ONCE).catch_up_ms == 0  # exactly-once only by default
    assert RuntimeConfig(commit_interval_ms=0).catch_up_ms == 0  # a transaction per batch was asked for
    assert RuntimeConfig(guarantee=AT_LEAST_ONCE, catch_up_commit_interval_ms=400).catch_up_ms == 400


def _timed_protocol(clock: ManualClock, took: dict[str, float], rt: RuntimeConfig) -> CommitProtocol:
    """A ``CommitProtocol`` (partition 0 assigned) over a fake transactional producer whose
    ``commit_transaction`` advances ``clock`` by ``took["s"]`` seconds (read at each commit)."""
    from types import SimpleNamespace

    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.stream_metrics import RuntimeMetrics

    class Producer:
        def begin_transaction(self) -> None: ...
        def send_offsets_to_transaction(self, *a: object) -> None: ...
        def commit_transaction(self, *a: object) -> None:
            clock.advance(took["s"])
        def poll(self, *a: object) -> int:
            return 0
        def __len__(self) -> int:
            return 0

    return CommitProtocol(producer=Producer(), consumer=SimpleNamespace(consumer_group_metadata=lambda: None),
                          topic="t", processor=None, states=SimpleNamespace(states={0: None}, mirror={}),  # type: ignore[arg-type]
                          rt=rt, metrics=RuntimeMetrics("t"), clock=clock, drop_input=lambda: None,
                          transactional_id="x", max_bytes={})


def test_exactly_once_commits_start_early_by_the_recent_commit_time() -> None:
    """Exactly-once: the next commit falls due ``commit_interval_ms`` after the last one started,
    less the mean time recent commits took (weight 0.2 for the latest, the first sets it, at most
    a quarter of the interval), so a record waits about the interval until visible, not interval + commit.
    At-least-once (its outputs are visible before the commit) and catch-up keep the plain interval."""
    from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE

    clock = ManualClock()
    took = {"s": 0.0}

    def protocol(rt: RuntimeConfig) -> CommitProtocol:
        return _timed_protocol(clock, took, rt)

    eos = protocol(RuntimeConfig(commit_interval_ms=100))

    def commit_taking(seconds: float) -> float:
        """One commit that takes ``seconds``; returns when it started."""
        eos.pending_offsets[0] = 1
        took["s"] = seconds
        start = clock.monotonic()
        assert eos.commit()
        eos.pending_offsets[0] = 2  # the next interval has something to commit
        return start

    start = commit_taking(0.020)
    assert abs(eos.due_in_s() - (start + 0.100 - 0.020 - clock.monotonic())) < 1e-9  # due 80 ms after the start
    clock.advance(0.080 - 0.020 - 0.001)
    assert not eos.due()
    clock.advance(0.001 + 1e-9)
    assert eos.due()
    start = commit_taking(0.035)  # mean 0.020 + 0.2 * (0.035 - 0.020) = 0.023: due 77 ms after the start
    assert abs(eos.due_in_s() - 0.042) < 1e-9
    for _ in range(30):  # commits of 60 ms: the mean nears 60 ms, the head start stops at 25
        start = commit_taking(0.060)
    assert abs(eos.due_in_s() - 0.015) < 1e-9
    eos.behind = True  # catch-up: the catch-up interval (1 s by default), as it is
    assert abs(eos.due_in_s() - (start + 1.0 - clock.monotonic())) < 1e-9

    alo = protocol(RuntimeConfig(commit_interval_ms=100, guarantee=AT_LEAST_ONCE))
    alo.head_start.observe(0.030)  # never done by at-least-once commits; and not used if it were
    alo.pending_offsets[0] = 1
    alo.last_commit = clock.monotonic()
    assert abs(alo.due_in_s() - 0.100) < 1e-9


def test_exactly_once_commit_falls_due_by_the_oldest_records_age() -> None:
    """Exactly-once: the next commit also falls due when the open transaction's oldest record (by
    Kafka timestamp) turns the interval less the mean commit time old, so it is visible about one
    interval after it was stamped even if it reached the worker late; never sooner than half the
    interval after the last commit's start; records stamped over ten intervals ago, stamped in the
    future or without a timestamp (-1) move nothing. At-least-once and catch-up ignore ages."""
    from mystocks_gpu.streams.batching import RawBatch
    from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE

    clock = ManualClock()

    def protocol(rt: RuntimeConfig) -> CommitProtocol:  # commits take 10 ms of the clock
        return _timed_protocol(clock, {"s": 0.010}, rt)

    offset = [0]

    def batch(*ages_s: float | None) -> RawBatch:
        """Records stamped ``ages_s`` seconds before the clock's wall time (None: no timestamp, -1)."""
        now_ms = clock.now_ns() // 1_000_000
        ts = [-1 if a is None else now_ms - round(a * 1000) for a in ages_s]
        offset[0] += len(ts)
        return RawBatch(topic="t", values=[b"v"] * len(ts), keys=[b"k"] * len(ts), partitions=[0] * len(ts),
                        offsets=list(range(offset[0] - len(ts), offset[0])), timestamps_ms=ts)

    eos = protocol(RuntimeConfig(commit_interval_ms=100))
    eos.processed(batch(0.0))
    assert eos.commit()  # took 10 ms: the mean commit time is 10 ms, the plain rule 90 ms after its start
    start = clock.monotonic() - 0.010

    def due_after_start() -> float:
        return clock.monotonic() + eos.due_in_s() - start

    eos.processed(batch(0.002, 0.001))  # on time: 2 ms old now, 90 ms old 88 ms from now (98 after the start)
    assert abs(due_after_start() - 0.090) < 1e-6  # the plain rule comes first: 90 ms after the start
    assert abs(eos.due_in_s() - 0.080) < 1e-6
    eos.processed(batch(0.030, 0.004))  # a late record: 30 ms old -> due 60 ms from now (70 after the start)
    assert abs(eos.due_in_s() - 0.060) < 1e-6
    clock.advance(0.059)
    assert not eos.due()
    clock.advance(0.001 + 1e-6)
    assert eos.due()
    assert eos.commit()
    start = clock.monotonic() - 0.010
    assert eos.oldest_ms is None  # the cut clears it
    eos.processed(batch(0.080))  # 80 ms old: would be due at once; not before 50 ms after the start
    assert abs(due_after_start() - 0.050) < 1e-6
    for stale in (5.0, -0.5, None):  # stamped 5 s ago (over 10 intervals), 0.5 s in the future, no stamp
        eos.oldest_ms = None
        eos.processed(batch(stale))
        assert abs(due_after_start() - 0.090) < 1e-6, stale
    eos.oldest_ms = None
    eos.processed(batch(0.030))
    eos.behind = True  # catch-up: the catch-up interval (1 s by default), ages ignored
    assert abs(due_after_start() - 1.0) < 1e-6

    alo = protocol(RuntimeConfig(commit_interval_ms=100, guarantee=AT_LEAST_ONCE))
    alo.processed(batch(0.030))
    assert alo.oldest_ms is None
    alo.last_commit = clock.monotonic()
    assert abs(alo.due_in_s() - 0.100) < 1e-9


def test_the_age_rule_plans_for_a_slow_commit() -> None:
    """Commit times that vary: the age rule starts the commit early by the exponentially weighted
    mean commit time (weight 0.2, pandas ``ewm(adjust=False)``) plus three exponentially weighted mean
    absolute deviations (each commit's distance from the mean before it), so the oldest record is
    visible by the interval even when the commit is slower than usual; the plain rule keeps the
    mean alone, and the half-interval floor holds."""
    import pandas as pd

    from mystocks_gpu.streams.commit_head_start import CommitHeadStart

    took = [0.010, 0.030, 0.010, 0.050, 0.012]
    hs = CommitHeadStart()
    for t in took:
        hs.observe(t)
    means = pd.Series(took).ewm(alpha=0.2, adjust=False).mean().to_list()
    dev = 0.0
    for before, t in zip(means[:-1], took[1:], strict=True):  # the deviation from the mean before each
        dev = 0.8 * dev + 0.2 * abs(t - before)
    mean = means[-1]
    assert hs.mean_s == pytest.approx(mean, abs=1e-12) and hs.dev_s == pytest.approx(dev, abs=1e-12)
    assert dev > 0.005  # the spread matters here: 3 x dev moves the commit by over 15 ms
    # 30 ms since the last commit's start, the oldest record 20 ms old: the age rule comes first
    assert hs.wait_s(0.100, 0.030, 0.020) == pytest.approx(0.100 - mean - 3 * dev - 0.020, abs=1e-12)
    assert hs.wait_s(0.100, 0.030, None) == pytest.approx(0.100 - mean - 0.030, abs=1e-12)  # plain: the mean
    assert hs.wait_s(0.100, 0.030, 0.060) == pytest.approx(0.050 - 0.030, abs=1e-12)  # never under half the interval


def test_an_unfinished_abort_is_resumed_and_a_refused_resume_stops_the_worker() -> None:
    """``abort_transaction`` over a producer whose aborts time out (retriable) and then, resumed,
    fail with an error that is not retriable: the first leaves the abort unfinished (no exception:
    the worker rewinds and goes on), the resume in ``begin`` raises for the caller to abort again, and
    that second abort, refused, stops the worker instead of looping. (The timed-out abort resumed by
    ``begin`` on the real broker: ``tests/integration/test_transaction_resume.py``.)"""
    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.exceptions import FatalRuntimeError

    calls: list[str] = []

    class Producer:
        errors = [KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)] * 2 + \
                 [KafkaError(KafkaError._STATE, "refused")] * 2

        def flush(self, timeout: float) -> int:
            return 0

        def poll(self, timeout: float) -> int:
            return 0

        def abort_transaction(self, timeout: float) -> None:
            calls.append("abort")
            raise KafkaException(self.errors.pop(0))

        def begin_transaction(self) -> None:
            calls.append("begin")

    rt = RuntimeConfig(guarantee="exactly_once")
    p = CommitProtocol(producer=Producer(), consumer=None, topic="t", processor=None, states=None,  # type: ignore[arg-type]
                       rt=rt, metrics=None, clock=ManualClock(), drop_input=lambda: None, transactional_id="x",
                       max_bytes={})
    p._retry = functools.partial(CommitProtocol._retry, p, attempts=2)  # type: ignore[method-assign]
    p.in_txn = True
    assert p.abort_transaction() is False and p.abort_unfinished and not p.in_txn and not p.failed
    with pytest.raises(KafkaException, match="refused"):
        p.begin()  # resumes first: refused, no new transaction
    assert calls == ["abort", "abort", "abort"] and p.abort_unfinished and not p.in_txn
    with pytest.raises(FatalRuntimeError, match="unfinished abort cannot finish"):
        p.abort_transaction()
    assert p.failed and calls == ["abort"] * 4


def test_a_commit_still_timing_out_after_its_retries_stops_the_worker() -> None:
    """``commit_transaction`` timing out (retriable) on every retry: librdkafka keeps it in progress
    and would refuse the abort, and the outcome is unknown, so the commit stops the worker with a
    FatalRuntimeError (before: an abort that could not run, then every batch rewound); an abortable
    commit error still aborts and rewinds (the fault-injection tests)."""
    from mystocks_gpu.streams.commit_protocol import CommitProtocol
    from mystocks_gpu.streams.exceptions import FatalRuntimeError

    calls: list[str] = []

    class Producer:
        def poll(self, timeout: float) -> int:
            return 0

        def commit_transaction(self, timeout: float) -> None:
            calls.append("commit")
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out, retry call to resume", retriable=True))

        def abort_transaction(self, timeout: float) -> None:
            calls.append("abort")

    p = CommitProtocol(producer=Producer(), consumer=None, topic="t", processor=None, states=None,  # type: ignore[arg-type]
                       rt=RuntimeConfig(guarantee="exactly_once"), metrics=None, clock=ManualClock(),  # type: ignore[arg-type]
                       drop_input=lambda: None, transactional_id="x", max_bytes={})
    p._retry = functools.partial(CommitProtocol._retry, p, attempts=3)  # type: ignore[method-assign]
    nudged: list[str] = []
    p.nudge = nudged.append  # the worker's broker watch (streams/broker_watch.py)
    with pytest.raises(FatalRuntimeError, match="commit_transaction did not finish"):
        p._txn_call("commit_transaction", lambda: p.producer.commit_transaction(1.0))
    assert p.failed and calls == ["commit"] * 3
    assert nudged == ["producer", "producer"]  # before each retry: the bootstrap servers back (librdkafka#5301)


def test_init_transactions_that_times_out_is_called_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's transactional producer: an ``init_transactions`` that times out (retriable) is
    called again, up to three times; one that fails otherwise, or a third time, raises."""
    from mystocks_gpu.infra.config import KafkaConfig
    from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
    from mystocks_gpu.streams import stream_worker

    timed_out = KafkaError(KafkaError._TIMED_OUT, "timed out, retry call to resume", retriable=True)

    class Producer:
        def __init__(self, errors: list[KafkaError]) -> None:
            self.errors, self.calls = errors, 0

        def init_transactions(self, timeout: float) -> None:
            self.calls += 1
            if self.errors:
                raise KafkaException(self.errors.pop(0))

    made: list[Producer] = []
    plans = [[timed_out], [timed_out] * 3, [KafkaError(KafkaError._FENCED, "fenced", fatal=True)]]
    monkeypatch.setattr(stream_worker, "watched_producer", lambda *a, **kw: made.append(Producer(plans.pop(0))) or made[-1])
    w = stream_worker.StreamWorker(RunningAggregateProcessor(output_topic="t.out"), KafkaConfig(),
                                   RuntimeConfig(guarantee="exactly_once"))
    w._pconf = {}
    assert w._make_producer() is made[0] and made[0].calls == 2  # timed out once, then initialised
    with pytest.raises(KafkaException, match="timed out"):
        w._make_producer()
    assert made[1].calls == 3
    with pytest.raises(KafkaException, match="fenced"):
        w._make_producer()
    assert made[2].calls == 1


def test_records_read_again_below_the_handled_offset_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A partition's offsets never go back without a rewind (which moves the handled offset back
    with them): records below the last handled + 1, or below the committed offset, are skipped,
    counted (run summary, metric) and logged as an error, and the offset to commit never moves back."""
    from mystocks_gpu.streams.batching import BatchAccumulator, RawBatch

    proto = _timed_protocol(ManualClock(), {"s": 0.0}, RuntimeConfig())

    def batch(offsets: list[int]) -> RawBatch:
        acc = BatchAccumulator(max_records=100, max_bytes=10**9, linger_s=1.0)
        for o in offsets:
            acc.add(b"v", None, 0, o, 1_700_000_000_000, now=0.0)
        return acc.take()

    def skipped() -> float | None:
        return proto.metrics.registry.get_sample_value("mystocks_stream_reread_records_total", {"processor": "t"})

    first = batch([10, 11, 12])
    assert proto.unread(first, 0, [0, 1, 2]) == [0, 1, 2]  # just assigned: nothing handled yet
    proto.processed(first)
    assert proto.pending_offsets[0] == 13
    again = batch([11, 12, 13, 14])  # 11 and 12 a second time
    assert proto.unread(again, 0, [0, 1, 2, 3]) == [2, 3]
    assert proto.tally.reread == 2 and skipped() == 2
    assert "read again below the handled offset" in caplog.text
    old = batch([5, 6])
    assert proto.unread(old, 0, [0, 1]) == []
    proto.processed(old)  # a batch of nothing new does not move the offset to commit back
    assert proto.pending_offsets[0] == 13 and proto.tally.reread == 4
    proto.pending_offsets.clear()
    proto.committed[0] = 13  # committed: the committed offset bounds it
    assert proto.unread(batch([12, 13]), 0, [0, 1]) == [1]
    proto.committed[0] = 5  # a rewind's target: what follows it is new again
    assert proto.unread(batch([5, 6]), 0, [0, 1]) == [0, 1] and proto.tally.reread == 5
