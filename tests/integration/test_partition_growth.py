"""Partitions added to a running worker group's input (``streams/partition_growth.py``), on the real
broker: the group stops with a clear error, nothing of the new partitions is read or committed,
every committed input has exactly one output (pandas reference), and a restart refuses too.

Before this, a grown input went unnoticed until librdkafka's metadata refresh (5 min by
default); then the member handed a new partition retried restoring a changelog partition that
does not exist and failed about two minutes later with "restoring <changelog>[3]: Failed to get
watermark offsets: Local: Unknown partition", which does not say what happened (this test, with
the check removed and the 10-s refresh kept, failed on that message after 128 s)."""

from __future__ import annotations

import pandas as pd
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from mystocks_gpu.infra.config import Settings
from tests.integration.stream_helpers import (
    assert_exactly_once_equal,
    make_topics,
    output_high_watermark,
    produce_ticks,
    read_finished,
    read_outputs,
    start_worker,
    synthetic,
    wait_for,
)
from tests.running_reference import running_aggregate

GROWN_MESSAGE = "grew from 2 partition(s) while this worker ran"


def test_partitions_added_to_the_input_stop_the_group_and_lose_nothing(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=2)
    cols, names = synthetic(4_000, symbols=40)
    produce_ticks(settings, t.input, cols, names)
    workers = [start_worker(t, f"w{i}", idle_exit=90) for i in (1, 2)]
    try:
        assert wait_for(lambda: output_high_watermark(settings, t.output) >= 4_000, 90), "workers never caught up"
        admin = AdminClient(settings.kafka.client_config())
        for fut in admin.create_partitions([NewPartitions(t.input, 4)]).values():
            fut.result(30)
        more, _ = synthetic(4_000, symbols=40, seed=2)
        more["seq"] = more["seq"] + 1_000_000  # (symbol, seq) stays unique across both inputs
        produce_ticks(settings, t.input, more, names)  # keys now spread over 4 partitions
        errors = []
        for w in workers:
            _, err = w.communicate(timeout=120)  # the metadata refresh (10 s), a rebalance or two
            errors.append(err)
            assert w.returncode != 0, f"worker exited {w.returncode}:\n{err[-2000:]}"
        for err in errors:  # each member is handed a new partition in turn, and refuses it
            assert GROWN_MESSAGE in err, err[-2000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(30)
    committed = _committed(settings, t.group, t.input, 4)
    assert committed[2] is None and committed[3] is None, committed  # the new partitions: not read
    inputs = pd.DataFrame([dict(r.value, _p=r.partition, _o=r.offset) for r in read_finished(settings.kafka, t.input)])
    assert (inputs["_p"] >= 2).sum() > 0  # there was something to refuse
    kept = inputs[[(o < (committed[p] or 0)) for p, o in zip(inputs["_p"], inputs["_o"], strict=True)]]
    kept = kept.sort_values(["_p", "_o"])  # a symbol lives in one of the first two partitions: its order
    ref = running_aggregate(kept["symbol"].to_numpy(), kept["seq"].to_numpy(), kept["price"].to_numpy())
    assert len(ref) >= 4_000
    assert_exactly_once_equal(read_outputs(settings, t.output), ref)
    # a restart refuses the changelog, which still has the old count
    again = start_worker(t, "w3", idle_exit=5)
    _, err = again.communicate(timeout=120)
    assert again.returncode != 0 and "must be co-partitioned" in err, err[-2000:]


def _committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offset per partition (None: never committed)."""
    c = Consumer(settings.kafka.client_config(**{
        "group.id": group, "enable.auto.commit": False, "isolation.level": "read_uncommitted"}))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got}
    finally:
        c.close()
