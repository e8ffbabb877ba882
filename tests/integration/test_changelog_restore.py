"""State changelogs on the real broker: how they are created, and restoring from one when a writer
died inside a transaction.

The dead writer's open transaction holds the partition's last stable offset back until the
transaction coordinator aborts it (after its ``transaction.timeout.ms``); the records its successor
committed after it stay invisible to a ``read_committed`` reader until then. A restore that stopped
at the last stable offset returned a state older than the successor's committed input offsets:
the group-churn fault test saw running counts a few hundred short."""

from __future__ import annotations

import time

from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer
from mystocks_gpu.streams.state_store import ensure_changelog, read_changelogs
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin, make_admin
from tests.conftest import wait_until


def test_restore_reads_what_was_committed_after_a_dead_writers_open_transaction(
        settings: Settings, unique: str) -> None:
    topic = f"t.changelog.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "key", None, partitions=1, cleanup="compact",
                                                 dlq=False)])

    def committed(tid: str, items: list[tuple[bytes, bytes]]) -> None:
        p = make_producer(settings.kafka, **{"transactional.id": tid})
        p.init_transactions(30)
        p.begin_transaction()
        for k, v in items:
            p.produce(topic, key=k, value=v)
        p.commit_transaction(30)

    committed(f"first.{unique}", [(b"a", b"1")])
    # the writer that dies: its transaction is written but never ended (no commit, no abort)
    dead = make_producer(settings.kafka, **{"transactional.id": f"dead.{unique}",
                                            "transaction.timeout.ms": 3000})
    dead.init_transactions(30)
    dead.begin_transaction()
    dead.produce(topic, key=b"a", value=b"never committed")
    dead.produce(topic, key=b"b", value=b"never committed")
    assert dead.flush(30) == 0
    # its successor commits after it (the state the input offsets it commits belong to)
    committed(f"next.{unique}", [(b"a", b"2"), (b"c", b"3")])

    t0 = time.monotonic()
    got = read_changelogs(settings.kafka, topic, [0], timeout_s=60)[0]
    waited = time.monotonic() - t0
    assert got == {b"a": b"2", b"c": b"3"}, f"restored {got} after {waited:.1f} s"
    del dead


def test_a_changelog_is_created_compacted_in_small_segments(settings: Settings, unique: str) -> None:
    """A state changelog is compacted in 8 MiB segments (the broker's default is 64 MiB), so the log
    cleaner compacts it in small pieces instead of a whole 64 MiB segment per partition at once.
    Read back from the broker."""
    source = f"t.changelog.in.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(source, "symbol", None, partitions=2, dlq=False)])
    name = ensure_changelog(settings.kafka, "features", f"g.{unique}", source)
    admin = make_admin(settings.kafka)
    res = ConfigResource(ResourceType.TOPIC, name)
    conf = {k: e.value for k, e in admin.describe_configs([res])[res].result(timeout=30).items()}
    assert conf["cleanup.policy"] == "compact"
    assert conf["segment.bytes"] == str(8 * 1024 * 1024)
    assert conf["min.compaction.lag.ms"] == "0"
    assert len(admin.list_topics(name, timeout=30).topics[name].partitions) == 2


def test_a_changelog_made_in_big_segments_is_moved_to_small_ones(settings: Settings, unique: str) -> None:
    """A changelog created before the 8 MiB segments (here by hand, in 64 MiB ones, as the broker's
    default made them) is set to 8 MiB when a worker next ensures it; its other settings and its
    records stay. Read back from the broker."""
    source = f"t.changelog.in.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(source, "symbol", None, partitions=2, dlq=False)])
    name = f"g.{unique}.features.changelog"
    admin = make_admin(settings.kafka)
    old = NewTopic(name, num_partitions=2, replication_factor=1,
                   config={"cleanup.policy": "compact", "segment.bytes": str(64 * 1024 * 1024)})
    admin.create_topics([old])[name].result(timeout=30)
    wait_until(lambda: admin.list_topics(name, timeout=10).topics[name].error is None, 30, "the changelog to be visible")
    prod = make_producer(settings.kafka)
    prod.produce(name, key=b"AAPL", value=b"state", partition=1)
    assert prod.flush(30) == 0
    assert ensure_changelog(settings.kafka, "features", f"g.{unique}", source) == name
    res = ConfigResource(ResourceType.TOPIC, name)
    conf = {k: e.value for k, e in admin.describe_configs([res])[res].result(timeout=30).items()}
    assert conf["segment.bytes"] == str(8 * 1024 * 1024)
    assert conf["cleanup.policy"] == "compact"
    assert read_changelogs(settings.kafka, name, [1])[1] == {b"AAPL": b"state"}
