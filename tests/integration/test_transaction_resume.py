"""An exactly-once abort that cannot finish while the broker is away must be resumed, on the real
broker. librdkafka keeps a timed-out ``abort_transaction`` in progress and answers every other
transactional call with a retriable ``_CONFLICT`` ("Conflicting abort_transaction API call is
already in progress") until the abort is called again and finishes. The protocol used to log
"abort failed" and then call ``begin_transaction``: every batch after that failed, was aborted
without an abort call, and rewound. The worker looped without committing anything, and the
rewinds kept its idle exit from ever firing (a CI run of the broker-outage test hung for 300 s)."""

from __future__ import annotations

import functools
import os
import signal

from confluent_kafka import KafkaException

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.kafka_clients import make_producer
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.streams.commit_protocol import CommitProtocol
from mystocks_gpu.streams.runtime_config import EXACTLY_ONCE, RuntimeConfig
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin
from tests.integration.stream_helpers import bare_protocol, read_finished


def test_an_abort_that_times_out_is_resumed_before_the_next_transaction(settings: Settings, unique: str,
                                                                        stack: LocalStack) -> None:
    """The broker frozen (SIGSTOP) while a transaction with one record aborts: each abort call times
    out (0.5 s), the retries run out, and the abort is left unfinished (librdkafka refuses a new
    transaction meanwhile: checked on the raw producer). Once the broker is back, ``begin`` resumes the
    abort and opens the next transaction: read_committed sees only the second transaction's record."""
    topic = f"t.txr.{unique}"
    TopicAdmin(settings.kafka).create([TopicSpec(topic, "symbol", None, partitions=1, dlq=False)])
    producer = make_producer(settings.kafka, **{"transactional.id": f"tx.txr.{unique}"})
    producer.init_transactions(30)
    proto = bare_protocol(producer, RuntimeConfig(guarantee=EXACTLY_ONCE, commit_timeout_s=0.5,
                                                record_io="messages"))  # produce() in this thread
    ts = 1_700_000_000_000
    proto.begin()
    proto.send_many(topic, [b"k"], [b"aborted"], [ts])
    assert producer.flush(30) == 0
    kafka_pid = stack.pid("kafka")
    assert kafka_pid
    proto._retry = functools.partial(CommitProtocol._retry, proto, attempts=2)  # type: ignore[method-assign]
    os.kill(kafka_pid, signal.SIGSTOP)
    try:
        assert proto.abort_transaction() is False  # timed out twice: still in progress in librdkafka
        assert proto.abort_unfinished and not proto.in_txn
        try:
            producer.begin_transaction()
            raise AssertionError("librdkafka began a transaction while an abort was in progress")
        except KafkaException as exc:
            assert "abort_transaction API call is already in progress" in exc.args[0].str()
    finally:
        os.kill(kafka_pid, signal.SIGCONT)
    del proto._retry  # back to the class's retries (8)
    proto.begin()  # resumes the abort, then begins (before the fix: _CONFLICT here, on every batch)
    assert proto.in_txn and not proto.abort_unfinished
    proto.send_many(topic, [b"k"], [b"committed"], [ts + 1])
    producer.commit_transaction(30)
    assert [r.raw for r in read_finished(settings.kafka, topic, decode=False)] == [b"committed"]
